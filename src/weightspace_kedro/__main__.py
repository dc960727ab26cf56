"""``python -m weightspace_kedro [run] --pipeline=...`` runs the project like ``kedro run``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) it uses
:class:`weightspace_kedro.runner.DistributedRunner` unless ``--runner`` is given:
``torchrun --nproc_per_node=2 -m weightspace_kedro run --pipeline=zoo``.
"""

import os
import sys
from pathlib import Path

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project

RUNNER = "weightspace_kedro.runner.DistributedRunner"


def run_args(argv: list[str]) -> list[str]:
    """The ``kedro run`` options of ``argv`` (a leading ``run`` is dropped), with
    ``--runner=<distributed runner>`` added under torchrun when none is named."""
    argv = argv[1:] if argv[:1] == ["run"] else list(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    has_runner = any(a in ("--runner", "-r") or a.startswith("--runner=") for a in argv)
    if distributed and not has_runner:
        return [*argv, f"--runner={RUNNER}"]
    return argv


def main(*args, **kwargs) -> None:
    """Entry point."""
    package_name = Path(__file__).parent.name
    configure_project(package_name)
    run = find_run_command(package_name)
    if not args and "args" not in kwargs:
        kwargs["args"] = run_args(sys.argv[1:])
    run(*args, **kwargs)


if __name__ == "__main__":
    main()
