"""SuperWeights against the issue's targets, from the pipeline's own metrics.

    python benchmarks/superweights_targets.py            # kedro run --pipelines=superweights
    python benchmarks/superweights_targets.py --no-run   # read data/08_reporting/superweights
    python benchmarks/superweights_targets.py --env gpu  # the --env gpu run (on the GPU box)

Targets (Teterwak et al., supplement Tables 3 and 5), means over the seeds:

1. the deep ensemble (DE, 4 members) beats one member;
2. at ~1/4 of DE's parameters, SWN-HE beats BatchEnsemble and a single model and comes
   within 0.5 points of the deep ensemble;
3. at ~0.8 of DE's parameters, SWN matches or beats DE;
4. learned clusters beat one SuperWeight per layer at the smallest budget both can build.

Writes ``benchmarks/results/superweights_<env><tag>.json`` and copies tables and plots.
Nothing is tuned here.
"""

from __future__ import annotations

from pipeline_targets import Row, main

PLOTS = ("anytime", "sensitivity", "interpolation", "clusters")


def _budgets(m: dict, prefix: str) -> list[str]:
    """Budget names that have ``<prefix>_<budget>_acc``, smallest fraction first."""
    names = {k[len(prefix) + 1 :].split("_")[0] for k in m if k.startswith(prefix + "_q")}
    return sorted(n for n in names if f"{prefix}_{n}_acc" in m)


def targets(m: dict) -> list[Row]:
    """(name, measured, goal, met) rows."""
    pts = lambda k: 100 * m[k]  # noqa: E731
    rows: list[Row] = []
    gap = pts("de_acc") - pts("single_acc")
    rows.append(("DE acc - single acc (points)", gap, "> 0", gap > 0))
    for kind in ("he_width", "he_depth_width"):
        if f"swn_{kind}_q25_acc" not in m:
            continue
        acc = pts(f"swn_{kind}_q25_acc")
        de = pts(f"de_{kind}_acc")
        ok = acc > pts("be_acc") and acc > pts("single_acc") and acc >= de - 0.5
        goal = f"> BE {pts('be_acc'):.2f}, > single {pts('single_acc'):.2f}, >= DE {de:.2f}-0.5"
        rows.append((f"SWN-{kind} q25 acc (%)", acc, goal, ok))
    for kind in ("ho", "he_width", "he_depth_width"):
        if f"swn_{kind}_q80_acc" in m:
            acc, de = pts(f"swn_{kind}_q80_acc"), pts(f"de_{kind}_acc")
            rows.append((f"SWN-{kind} q80 acc (%)", acc, f">= DE-{kind} {de:.2f}", acc >= de))
    shared = [b for b in _budgets(m, "swn_one_sw") if f"swn_ho_{b}_acc" in m]
    if shared:
        b = shared[0]
        learned, one = pts(f"swn_ho_{b}_acc"), pts(f"swn_one_sw_{b}_acc")
        rows.append((f"SWN-HO learned clusters, {b} (%)", learned,
                     f"> one SW per layer {one:.2f}", learned > one))  # fmt: skip
    return rows


if __name__ == "__main__":
    main("superweights", __doc__, targets, ["tables.md", *(f"{p}.png" for p in PLOTS)])
