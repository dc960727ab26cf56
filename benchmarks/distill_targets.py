"""Ensemble distillation against the issue's targets, from the pipeline's own metrics.

    python benchmarks/distill_targets.py             # kedro run --pipelines=distill + table
    python benchmarks/distill_targets.py --no-run    # read data/08_reporting/distill
    python benchmarks/distill_targets.py --env gpu   # the --env gpu run (on the GPU box)

Targets (LatentBE, Nam et al. ICML 2022):

1. the DE beats its average member by >= 2 points (the default experiment must leave
   something to distil);
2. KD + LatentBE + TDiv−SDiv beats plain KD in ACC and in NLL beyond the seeds' spread:
   the difference of the means exceeds the larger of the two standard deviations;
3. LatentBE's inference costs ~1/M of BE's: measured time ratio <= 1.5 / M;
4. the BE student trains no slower than M separate KD students (same epochs, data).

Writes ``benchmarks/results/distill_<env>.json`` (and copies the tables). Nothing is tuned
here.
"""

from __future__ import annotations

from pipeline_targets import Row, main


def beyond_spread(m: dict, a: str, b: str, metric: str, higher_better: bool) -> tuple[float, bool]:
    """``a - b`` of a metric's means, and whether it beats ``b`` by more than either std."""
    diff = m[f"{a}_{metric}"] - m[f"{b}_{metric}"]
    spread = max(m[f"{a}_{metric}_std"], m[f"{b}_{metric}_std"])
    gain = diff if higher_better else -diff
    return diff, gain > spread


def targets(m: dict) -> list[Row]:
    """(name, measured, goal, met) rows."""
    M = int(m["m"])
    de_gap = 100 * (m["de_acc"] - m["single_acc"])
    acc_diff, acc_ok = beyond_spread(m, "latentbe_tdiv_sdiv", "kd", "acc", True)
    nll_diff, nll_ok = beyond_spread(m, "latentbe_tdiv_sdiv", "kd", "nll", False)
    lat_diff, lat_ok = beyond_spread(m, "latentbe", "kd", "acc", True)
    ratio = m["latentbe_be_inference_ratio"]
    train = m["be_train_vs_m_kd"]
    tdiv_train = m["be_tdiv_sdiv_train_seconds"] / (M * m["kd_train_seconds"])
    return [
        ("DE acc - mean member acc (points)", de_gap, ">= 2", de_gap >= 2),
        ("LatentBE+TDiv-SDiv acc - KD acc (points)", 100 * acc_diff, "> 0, beyond std", acc_ok),
        ("LatentBE+TDiv-SDiv NLL - KD NLL", nll_diff, "< 0, beyond std", nll_ok),
        ("LatentBE acc - KD acc (points, no perturbation)", 100 * lat_diff, "> 0, beyond std",
         lat_ok),
        ("LatentBE / BE inference time per example", ratio, f"<= 1.5/M = {1.5 / M:.3f}",
         ratio <= 1.5 / M),
        ("BE train time / (M x KD train time)", train, "<= 1", train <= 1),
        ("BE+TDiv-SDiv train time / (M x KD train time)", tdiv_train, "(reported)", True),
    ]  # fmt: skip


if __name__ == "__main__":
    main("distill", __doc__, targets, ["tables.md", "reliability.png"])
