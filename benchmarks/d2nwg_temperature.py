"""Class-wise D2NWG's sampling temperature, swept on the seen tasks' VALIDATION split.

    python benchmarks/d2nwg_temperature.py                 # seeds 0 1 2, conf/base
    python benchmarks/d2nwg_temperature.py --seeds 0       # one seed

For each seed the heads scenario runs up to its trained class-wise generator (``kedro``
session, the seed's parameters; the zoos and the generator's final training checkpoint
are reused, so run ``benchmarks/d2nwg_targets.py`` first or it trains them). The same
generator then samples 10 heads per seen task at each temperature; the table gives their
mean validation accuracy, the share of samples below 0.8, best-of-10 on validation, and
the spread of the samples (mean pairwise L2 of the 10 heads of a task, rows centred over
the classes: the function's own coordinates) beside the zoo's own run-to-run spread (the
same for the zoo heads of a seen task). No
test split is read. Writes ``benchmarks/results/d2nwg_temperature_<env>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import torch

from pipeline_targets import ROOT

TEMPERATURES = (1.0, 0.85, 0.7, 0.5, 0.3, 0.0)
N = 10


def _inputs(seed: int, env: str) -> dict:
    """The seed's class-wise generator, zoo heads, pool, tasks and settings."""
    from kedro.framework.project import pipelines
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from kedro.pipeline import Node, Pipeline
    from kedro.runner import SequentialRunner

    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
    bootstrap_project(ROOT)
    names = ["d2nwg_heads.classwise_generator", "d2nwg_heads.weights", "d2nwg_heads.pool",
             "d2nwg_heads.tasks", "d2nwg_heads.settings", "zoo_d2nwg_heads.zoo_models"]  # fmt: skip
    got: dict = {}

    def keep(*values):
        keys = ("model", "weights", "pool", "tasks", "settings", "zoo")
        got.update(zip(keys, values, strict=True))

    params = {ns: {"settings": {"seed": seed}} for ns in ("d2nwg_heads", "d2nwg_networks")}
    with KedroSession.create(project_path=ROOT, env=env, runtime_params=params) as session:
        catalog = session.load_context().catalog
        body = pipelines["d2nwg"].only_nodes_with_tags("d2nwg_heads").to_outputs(*names)
        SequentialRunner().run(body + Pipeline([Node(keep, names, None, name="keep")]), catalog)
    if got["settings"].seed != seed:
        raise RuntimeError(f"the session ran seed {got['settings'].seed}, not {seed}")
    return got


def sweep(seed: int, env: str) -> list[dict]:
    """One row per temperature (and the zoo's spread) for one seed."""
    from weightspace.evaluation import d2nwg_protocol as proto
    from weightspace.generators.class_rows import centre_rows, head_names, to_rows
    from weightspace.generators.classwise import classwise_sampler
    from weightspace.zoo.evaluate import stack_accuracy

    got = _inputs(seed, env)
    s, model, weights = got["settings"], got["model"], got["weights"]
    seen = proto.fewshot_groups(got["pool"].dataset, got["tasks"], s.evaluation, s.seed)["seen"]
    template = got["zoo"].arch_spec(got["zoo"].model_ids[0]).build()
    names = head_names(weights.stacked)
    t = len(seen.datasets)
    idx = torch.arange(t).repeat_interleave(N)
    zoo_rows = centre_rows(to_rows(weights.stacked, names))
    zoo_spread = torch.stack(
        [_spread(zoo_rows[weights.task_of_row == i][None]) for i in range(t)]
    ).mean()
    rows = []
    for temp in TEMPERATURES:
        heads = classwise_sampler(model, names, s.seed, temperature=temp)(seen.support_sets, N)
        acc = stack_accuracy(template, heads, idx, seen.val)
        rows.append(
            {
                "seed": seed,
                "temperature": temp,
                "val_mean_acc": float(acc.mean()),
                "share_below_0.8": float((acc < 0.8).float().mean()),
                "val_best_of_10_acc": float(acc.view(t, N).max(1).values.mean()),
                "sample_spread": float(_spread(centre_rows(to_rows(heads, names)).view(t, N, -1))),
                "zoo_spread": float(zoo_spread),
            }
        )
    return rows


def _spread(rows: torch.Tensor) -> torch.Tensor:
    """Mean pairwise L2 between the heads of each task, ``(T, n, D)`` -> scalar."""
    flat = rows.flatten(2).double()
    n = flat.shape[1]
    d = torch.cdist(flat, flat)
    return d.sum((1, 2)).mean() / (n * (n - 1))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="base")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    rows = [r for seed in args.seeds for r in sweep(seed, args.env)]
    print("| seed | temperature | val mean | share < 0.8 | val best-of-10 | spread | zoo spread |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['temperature']} | {r['val_mean_acc']:.4f} | "
            f"{r['share_below_0.8']:.3f} | {r['val_best_of_10_acc']:.4f} | "
            f"{r['sample_spread']:.3f} | {r['zoo_spread']:.3f} |"
        )
    out = ROOT / "benchmarks/results" / f"d2nwg_temperature_{args.env}.json"
    out.write_text(json.dumps({"rows": rows}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
