"""Fusion against the issue's targets: OT speed, then the pipeline's own metrics.

    python benchmarks/fusion_targets.py            # timing + kedro run --pipelines=fusion + table
    python benchmarks/fusion_targets.py --no-run   # timing + read data/08_reporting/fusion

1. Times exact-OT fusion of two MLPs with 512-wide hidden layers (64-512-512-10, 200
   samples; activation- and weight-based; median of 5 after one warm-up) next to one
   training epoch of the same MLP on digits with a per-model loop.
2. Reads ``data/08_reporting/fusion/metrics.json`` (every experiment) and prints one row
   per target: measured figure, target, met or missed.

Writes ``benchmarks/results/fusion_<env>.json``. Nothing is tuned here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from pipeline_targets import ROOT, pipeline_metrics, print_targets
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
    """(name, measured, target text, met) rows of one experiment."""
    best_parent = max(m["parent_a_finetuned_acc"], m["parent_b_finetuned_acc"])
    bound = "" if m.get("fusion_cost_reached", 1.0) else ">= "
    return [
        (f"{exp}: one-shot OTFusion - vanilla avg (same depth)",
         m["otfusion_acc"] - m["vanilla_avg_acc"], "far above 0 (> 0.3)",
         m["otfusion_acc"] - m["vanilla_avg_acc"] > 0.3),
        (f"{exp}: CLAFusion+FT - best FT parent", m["clafusion_finetuned_acc"] - best_parent,
         ">= 0", m["clafusion_finetuned_acc"] >= best_parent),
        (f"{exp}: training to fused acc / fusion time ({bound}ratio)", m["fusion_cost_ratio"],
         ">= 50x", m["fusion_cost_ratio"] >= 50),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="base")
    parser.add_argument("--no-run", action="store_true")
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
    out = ROOT / "benchmarks/results" / f"fusion_{args.env}.json"
    out.write_text(
        json.dumps(
            {
                "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
                "timing": timing,
                "targets": [
                    {"name": n, "measured": v, "goal": g, "met": bool(ok)} for n, v, g, ok in rows
                ],
                "metrics": metrics,
            },
            indent=2,
        )
    )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
