"""Keep the cross-method report of a run beside the other benchmark results.

    python benchmarks/report_results.py        # after `dvc repro` (every pipeline + report)
    python benchmarks/report_results.py --env gpu --tag _h200

Copies ``<data_root>/08_reporting/report/{comparison.md, comparison.csv, *.png}`` to
``benchmarks/results/report_<env><tag>_*`` and writes ``report_<env><tag>.json`` (device,
commit of the code, the report's metrics). Runs nothing: the report is only as current as
the method outputs it read (each row names its commit).
"""

from __future__ import annotations

import argparse
import json

from pipeline_targets import data_root, write_results

COPIES = ("comparison.md", "comparison.csv", "accuracy_vs_obtain_cost.png",
          "accuracy_vs_inference_cost.png")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="base")
    parser.add_argument("--tag", default="", help="suffix of the result files, e.g. _h200")
    args = parser.parse_args()
    folder = data_root(args.env) / "08_reporting" / "report"
    if not (folder / "comparison.csv").exists():
        raise SystemExit(
            f"{folder}/comparison.csv is missing: run `dvc repro` (or every method "
            "pipeline, then `kedro run --pipelines=report`) first"
        )
    metrics = json.loads((folder / "metrics.json").read_text())
    write_results("report", args.env, args.tag, [], metrics, COPIES)


if __name__ == "__main__":
    main()
