"""D2NWG against the issue's targets: runs the pipeline (or reads its last metrics).

    python benchmarks/d2nwg_targets.py                 # kedro run --pipelines=d2nwg, then the table
    python benchmarks/d2nwg_targets.py --env gpu --tag _h200  # on the GPU box
    python benchmarks/d2nwg_targets.py --no-run        # only read data/08_reporting/d2nwg

Prints one row per target (measured figure, target, pass/miss) and writes
``benchmarks/results/d2nwg_<env><tag>.json`` (device, commit, targets, metrics). Nothing
is tuned here: the figures are the pipeline's own metrics.
"""

from __future__ import annotations

from pipeline_targets import main


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


if __name__ == "__main__":
    main("d2nwg", __doc__, targets, copies=())
