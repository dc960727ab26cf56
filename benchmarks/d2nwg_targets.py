"""D2NWG against the issue's targets: runs the pipeline (or reads its last metrics).

    python benchmarks/d2nwg_targets.py                 # kedro run --pipelines=d2nwg, then the table
    python benchmarks/d2nwg_targets.py --env gpu       # on the GPU box
    python benchmarks/d2nwg_targets.py --no-run        # only read data/08_reporting/d2nwg

Prints one row per target (measured figure, target, pass/miss) and writes
``benchmarks/results/d2nwg_<env>.json``. Nothing is tuned here: the figures are the
pipeline's own metrics.
"""

from __future__ import annotations

import argparse
import json

from pipeline_targets import ROOT, pipeline_metrics, print_targets


def targets(m: dict) -> list[tuple[str, float, str, bool]]:
    """(name, measured, target text, met) rows."""
    r = lambda a, b: m[a] / m[b] if m[b] else float("nan")  # noqa: E731
    return [
        ("seen sampled mean / zoo mean", r("seen_sampled_mean_acc", "seen_zoo_mean_acc"), ">= 0.98",
         r("seen_sampled_mean_acc", "seen_zoo_mean_acc") >= 0.98),
        ("seen best-of-K - zoo mean", m["seen_sampled_best_acc"] - m["seen_zoo_mean_acc"], ">= 0",
         m["seen_sampled_best_acc"] >= m["seen_zoo_mean_acc"]),
        ("unseen sampled mean / oracle", r("unseen_sampled_mean_acc", "unseen_oracle_acc"),
         ">= 0.9", r("unseen_sampled_mean_acc", "unseen_oracle_acc") >= 0.9),
        ("unseen sampled - random init", m["unseen_sampled_mean_acc"] - m["unseen_random_init_acc"],
         "far above 0", m["unseen_sampled_mean_acc"] - m["unseen_random_init_acc"] > 0.3),
        ("novel sampled mean / oracle", r("novel_sampled_mean_acc", "novel_oracle_acc"), ">= 0.8",
         r("novel_sampled_mean_acc", "novel_oracle_acc") >= 0.8),
        ("fine-tuned: sampled - max(random, nearest)", m["unseen_finetune_sampled_acc"]
         - max(m["unseen_finetune_random_acc"], m["unseen_finetune_nearest_acc"]), "> 0",
         m["unseen_finetune_sampled_acc"] > max(m["unseen_finetune_random_acc"],
                                                m["unseen_finetune_nearest_acc"])),
        ("generated models / s", m["generated_models_per_second"], ">= 10,000 (GPU)",
         m["generated_models_per_second"] >= 10_000),
        ("generation speed-up vs training to the same accuracy",
         m["generation_speedup_vs_training"], ">= 100x",
         m["generation_speedup_vs_training"] >= 100),
        ("VAE decoded / original accuracy", m["vae_recon_acc_ratio"], ">= 0.95 (gate)",
         m["vae_recon_acc_ratio"] >= 0.95),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="base")
    parser.add_argument("--no-run", action="store_true")
    args = parser.parse_args()
    metrics = pipeline_metrics("d2nwg", args.env, run=not args.no_run)
    rows = targets(metrics)
    print_targets(rows)
    out = ROOT / "benchmarks" / "results" / f"d2nwg_{args.env}.json"
    out.write_text(json.dumps({"metrics": metrics, "targets": [
        {"target": n, "measured": v, "goal": g, "met": bool(ok)} for n, v, g, ok in rows
    ]}, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
