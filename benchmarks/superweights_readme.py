"""Write the README's SuperWeights tables from the benchmark results (never by hand).

    python benchmarks/superweights_readme.py            # rewrite the block in README.md
    python benchmarks/superweights_readme.py --print    # print it only

Reads ``benchmarks/results/superweights_base.json`` (``superweights_targets.py`` on this
CPU) and ``benchmarks/results/superweights_gpu_h200.json`` (``--env gpu --tag _h200`` on
the GPU box) and replaces the text between ``<!-- superweights:begin -->`` and
``<!-- superweights:end -->`` in README.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- superweights:begin -->", "<!-- superweights:end -->"
RUNS = (("CPU, 2 cores", "superweights_base.json"), ("", "superweights_gpu_h200.json"))
KIND = {"ho": "SWN-HO", "he_width": "SWN-HE multi-width", "he_depth_width": "SWN-HE depth/width"}


def _rows() -> list[tuple[str, str]]:
    """(label, metric prefix) of every table row."""
    budgets, halves = ("q25", "q50", "q80"), ("q50", "q80")
    rows = [("Single model", "single"), ("BatchEnsemble (4)", "be")]
    rows += [(f"Deep ensemble, {k}", f"de_{k}") for k in KIND]
    rows += [(f"{name} ({b})", f"swn_{k}_{b}") for k, name in KIND.items() for b in budgets]
    rows += [(f"SWN-HO, one SuperWeight per layer ({b})", f"swn_one_sw_{b}") for b in halves]
    pairs = (("NPAS: one net in a bank", "npas"), ("narrower net", "narrow"))
    rows += [(f"{what} ({b} of one net)", f"{p}_{b}") for b in halves for what, p in pairs]
    return rows


def _cell(m: dict, prefix: str) -> str:
    if f"{prefix}_acc" not in m:
        return "- | - | -"
    acc, std = 100 * m[f"{prefix}_acc"], 100 * m.get(f"{prefix}_acc_std", 0.0)
    return f"{acc:.2f} ± {std:.2f} | {m[f'{prefix}_nll']:.3f} / {100 * m[f'{prefix}_ece']:.1f} | {m[f'{prefix}_params']:,.0f}"  # noqa: E501


def block() -> str:
    """The markdown between the markers."""
    loaded = [(label, json.loads((RESULTS / name).read_text())) for label, name in RUNS]
    heads = [label or d["device"] for label, d in loaded]
    lines = [
        "| method | " + " | ".join(f"{h}: ACC (%) | NLL / ECE (%) | params" for h in heads) + " |",
        "|---|" + "---|---|---|" * len(loaded),
    ]
    for label, prefix in _rows():
        cells = " | ".join(_cell(d["metrics"], prefix) for _, d in loaded)
        lines.append(f"| {label} | {cells} |")
    lines += ["", "| target | " + " | ".join(heads) + " |", "|---|" + "---|" * len(loaded)]
    names = [t["name"] for t in loaded[0][1]["targets"]]
    for name in names:
        cells = []
        for _, d in loaded:
            t = next((t for t in d["targets"] if t["name"] == name), None)
            cells.append(
                "-" if t is None
                else f"{t['measured']:.2f} ({t['goal']}): {'met' if t['met'] else '**missed**'}"
            )  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print, do not edit README.md")
    args = parser.parse_args()
    text = block()
    if args.print:
        print(text)
        return
    readme = ROOT / "README.md"
    old = readme.read_text()
    if BEGIN not in old or END not in old:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block; add the two markers")
    head, rest = old.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(f"rewrote the SuperWeights block of {readme}")


if __name__ == "__main__":
    main()
