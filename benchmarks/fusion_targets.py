"""Fusion against the issue's targets: OT speed, then the pipeline's own metrics.

    python benchmarks/fusion_targets.py            # timing + kedro run --pipelines=fusion + table
    python benchmarks/fusion_targets.py --no-run   # timing + read data/08_reporting/fusion

1. Times exact-OT fusion of two MLPs with 512-wide hidden layers (64-512-512-10, 200
   samples; activation- and weight-based; median of 5 after one warm-up) next to one
   training epoch of the same MLP on digits with a per-model loop.
2. Reads ``data/08_reporting/fusion/metrics.json`` (every experiment) and prints one row
   per target: measured figure, target, met or missed.

Writes ``benchmarks/results/fusion_<env><tag>.json`` with copies of ``tables.md`` and
``accuracy_vs_k.png``. Nothing is tuned here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline_targets import pipeline_metrics, print_targets, write_results
from weightspace.fusion import OTFusionConfig, otfusion
from weightspace.nets.registry import build_model


def time_ot_512(repeats: int = 5) -> dict[str, float]:
    """Median seconds of exact-OT fusion of two random-init 64-512-512-10 MLPs."""
    torch.manual_seed(0)
    a, b = (build_model("mlp", {"hidden": [512, 512]}, (1, 8, 8), 10) for _ in range(2))
    x = torch.randn(200, 1, 8, 8)
    out = {}
    for metric in ("activation", "weight"):
        config = OTFusionConfig(ground_metric=metric)
        otfusion([a, b], x, config=config)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            otfusion([a, b], x, config=config)
            times.append(time.perf_counter() - start)
        out[f"ot512_{metric}_seconds"] = statistics.median(times)
    return out


def targets(exp: str, m: dict) -> list[tuple[str, float, str, bool]]:
    """(name, measured, target text, met) rows of one experiment. Fine-tuned CLAFusion is
    compared with the better fine-tuned parent of each pair (the mean of the per-pair
    differences, and whether its 95% t-interval lies above 0: beyond the spread)."""
    n = int(m.get("n_pairs", 0))
    diff, low = m["ft_clafusion_vs_best_parent_mean"], m["ft_clafusion_vs_best_parent_ci_low"]
    bound = "" if m.get("fusion_cost_reached", 1.0) else ">= "
    return [
        (f"{exp}: one-shot OTFusion - vanilla avg (same depth)",
         m["otfusion_acc"] - m["vanilla_avg_acc"], "far above 0 (> 0.3)",
         m["otfusion_acc"] - m["vanilla_avg_acc"] > 0.3),
        (f"{exp}: CLAFusion+FT - best FT parent of the pair, mean of {n}", diff, ">= 0",
         diff >= 0),
        (f"{exp}: same, lower end of the 95% interval", low, "> 0 (beyond the spread)",
         low > 0),
        (f"{exp}: training to fused acc / fusion time ({bound}ratio)", m["fusion_cost_ratio"],
         ">= 50x", m["fusion_cost_ratio"] >= 50),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="base")
    parser.add_argument("--no-run", action="store_true")
    parser.add_argument("--tag", default="", help="suffix of the result files, e.g. _h200")
    args = parser.parse_args()
    timing = time_ot_512()
    metrics = pipeline_metrics("fusion", args.env, run=not args.no_run)
    experiments = sorted({k.split(".", 1)[0] for k in metrics if k.endswith(".clafusion_acc")})
    rows = [
        ("exact-OT fusion of two 512-wide MLPs, activation cost (s)",
         timing["ot512_activation_seconds"], "< 1 s", timing["ot512_activation_seconds"] < 1),
        ("exact-OT fusion of two 512-wide MLPs, weight cost (s)",
         timing["ot512_weight_seconds"], "< 1 s", timing["ot512_weight_seconds"] < 1),
    ]  # fmt: skip
    for exp in experiments:
        m = {k.split(".", 1)[1]: v for k, v in metrics.items() if k.startswith(exp + ".")}
        rows += targets(exp, m)
    print_targets(rows)
    copies = ("tables.md", "accuracy_vs_k.png")
    write_results("fusion", args.env, args.tag, rows, metrics, copies, {"timing": timing})


if __name__ == "__main__":
    main()
