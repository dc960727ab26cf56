"""Write the README's result tables from the benchmark results (never by hand).

    python benchmarks/readme_tables.py                  # rewrite every block in README.md
    python benchmarks/readme_tables.py fusion distill   # only these blocks
    python benchmarks/readme_tables.py --print fusion   # print a block, edit nothing

Each method's block sits between ``<!-- <method>:begin -->`` and ``<!-- <method>:end -->``
in README.md and is made only from ``benchmarks/results/`` — the ``*.json`` written by
``benchmarks/<method>_targets.py`` (device, commit of the code, targets, metrics) and the
``*_tables.md`` copied there from the same pipeline run. Every block names the device and
the commit of each run, so a figure from older code is visible as such.
``tests/test_readme_tables.py`` fails when a block differs from what this script writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))

from weightspace.reporting.fusion_report import paired_table, table1  # noqa: E402


@dataclass(frozen=True)
class Run:
    """One result file: ``benchmarks/results/<stem>.json`` (+ ``<stem>_tables.md``)."""

    stem: str
    label: str = ""  # default: the device the JSON names

    def load(self) -> dict:
        return json.loads((RESULTS / f"{self.stem}.json").read_text())

    def heading(self) -> str:
        data = self.load()
        device = data.get("device") or "device not recorded"
        label = self.label or ("CPU, 2 cores" if device == "cpu" else device)
        return f"**{label}** (`benchmarks/results/{self.stem}.json`, {_commit(data)})"

    def section(self, title: str) -> str:
        """The markdown table under the ``## <title>...`` heading of ``<stem>_tables.md``."""
        text = (RESULTS / f"{self.stem}_tables.md").read_text()
        for part in text.split("\n## "):
            head, _, body = part.removeprefix("## ").partition("\n")
            if head.startswith(title):
                lines = [line.rstrip() for line in body.strip().splitlines()]
                return "\n".join(x for i, x in enumerate(lines) if x or lines[i - 1])
        raise SystemExit(f"{self.stem}_tables.md has no section starting with {title!r}")


def _name(target: dict) -> str:
    return target.get("name") or target.get("target", "?")


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 1 else (
        f"{value:.2f}")  # fmt: skip


def targets_table(runs: Sequence[Run]) -> str:
    """One row per target (in the first run's order, then any others), one column per run."""
    loaded = [r.load() for r in runs]
    names: list[str] = []
    for data in loaded:
        names += [n for n in map(_name, data["targets"]) if n not in names]
    heads = [r.heading().split("** (")[0].strip("*") for r in runs]
    lines = ["| target | " + " | ".join(heads) + " |", "|---|" + "---|" * len(runs)]
    for name in names:
        cells = []
        for data in loaded:
            t = next((t for t in data["targets"] if _name(t) == name), None)
            cells.append(
                "-" if t is None else
                f"{_number(t['measured'])} ({t['goal']}): {'met' if t['met'] else '**missed**'}"
            )  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sections_block(runs: Sequence[Run], titles: Sequence[str]) -> str:
    """Per run: its heading, then the named sections of its ``tables.md``; then targets."""
    parts = []
    for run in runs:
        parts.append(run.heading() + (":" if titles else ""))
        parts += [run.section(t) for t in titles]
    parts.append("Targets:")
    parts.append(targets_table(runs))
    return "\n\n".join(parts)


def fusion_block() -> str:
    """Table 1 (mean ± std over parent pairs) and the paired comparison from each run's
    metrics (the same functions as the pipeline's report), then the targets."""
    runs = (Run("fusion_base"), Run("fusion_gpu_h200"))
    parts = []
    for run in runs:
        metrics = run.load()["metrics"]
        experiments = sorted({k.split(".")[0] for k in metrics if k.endswith(".clafusion_acc")})
        per_exp = {
            e: {k.split(".", 1)[1]: v for k, v in metrics.items() if k.startswith(e + ".")}
            for e in experiments
        }
        parts += [run.heading() + ":", table1(per_exp)]
        if any("ft_clafusion_vs_best_parent_mean" in m for m in per_exp.values()):
            parts.append(paired_table(per_exp))
        else:
            parts.append("(no per-pair spread recorded in this run)")
    parts += ["Targets:", targets_table(runs)]
    return "\n\n".join(parts)


SW_KIND = {"ho": "SWN-HO", "he_width": "SWN-HE multi-width", "he_depth_width": "SWN-HE depth/width"}


def _sw_rows() -> list[tuple[str, str]]:
    """(label, metric prefix) of every SuperWeights table row."""
    budgets, halves = ("q25", "q50", "q80"), ("q50", "q80")
    rows = [("Single model", "single"), ("BatchEnsemble (4)", "be")]
    rows += [(f"Deep ensemble, {k}", f"de_{k}") for k in SW_KIND]
    rows += [(f"{name} ({b})", f"swn_{k}_{b}") for k, name in SW_KIND.items() for b in budgets]
    rows += [(f"SWN-HO, one SuperWeight per layer ({b})", f"swn_one_sw_{b}") for b in halves]
    pairs = (("NPAS: one net in a bank", "npas"), ("narrower net", "narrow"))
    rows += [(f"{what} ({b} of one net)", f"{p}_{b}") for b in halves for what, p in pairs]
    return rows


def _sw_cell(m: dict, prefix: str) -> str:
    if f"{prefix}_acc" not in m:
        return "- | - | -"
    acc, std = 100 * m[f"{prefix}_acc"], 100 * m.get(f"{prefix}_acc_std", 0.0)
    nll, ece = m[f"{prefix}_nll"], 100 * m[f"{prefix}_ece"]
    return f"{acc:.2f} ± {std:.2f} | {nll:.3f} / {ece:.1f} | {m[f'{prefix}_params']:,.0f}"


def superweights_block() -> str:
    """Table 5 / budgets / NPAS rows side by side for the CPU and GPU runs, then targets."""
    runs = (Run("superweights_base"),)
    loaded = [r.load() for r in runs]
    heads = [r.heading().split("** (")[0].strip("*") for r in runs]
    lines = [" ; ".join(r.heading() for r in runs), ""]
    lines += [
        "| method | " + " | ".join(f"{h}: ACC (%) | NLL / ECE (%) | params" for h in heads) + " |",
        "|---|" + "---|---|---|" * len(runs),
    ]
    for label, prefix in _sw_rows():
        cells = " | ".join(_sw_cell(d["metrics"], prefix) for d in loaded)
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines) + "\n\nTargets:\n\n" + targets_table(runs)


def _commit(data: dict) -> str:
    """``commit abc1234`` (``+ uncommitted changes``), or that none was recorded."""
    commit = data.get("commit")
    text = "commit not recorded (older code)" if not commit else f"commit {commit[:7]}"
    return text + (" + uncommitted changes" if data.get("dirty") else "")


def zoo_block() -> str:
    """Batched zoo training against the per-model loop (``benchmarks/zoo_throughput.py``),
    one row per result file."""
    lines = [
        "| machine | batched | per-model loop | speedup | same accuracy (max diff) | results |",
        "|---|---|---|---|---|---|",
    ]
    for stem in ("zoo_throughput_cpu", "zoo_throughput_cuda_16k", "zoo_throughput_cuda_64k"):
        d = json.loads((RESULTS / f"{stem}.json").read_text())
        machine = (f"CPU, {d['cpu_threads']} threads" if d["device"] == "cpu"
                   else d["device_name"])  # fmt: skip
        lines.append(
            f"| {machine}, {d['n_batched']:,} models | {d['batched_models_per_second']:,.1f} "
            f"models/s = {d['batched_models_per_minute']:,.0f} models/min | "
            f"{d['loop_models_per_second']:.2f} models/s ({d['n_loop']} models) | "
            f"**{d['speedup']:,.1f}x** | {d['max_abs_test_accuracy_diff_batched_vs_loop']:.4f} "
            f"| `benchmarks/results/{stem}.json` (torch {d['torch']}, {_commit(d)}) |"
        )
    return "\n".join(lines)


def report_block() -> str:
    """The headline variant of every method from the last base run's comparison table."""
    import csv

    run = Run("report_base")
    with open(RESULTS / "report_base_comparison.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["headline"] == "True"]

    def num(value: str, fmt: str, scale: float = 1.0) -> str:
        return "—" if value == "" else format(scale * float(value), fmt)

    lines = [
        run.heading(),
        "",
        "| method | variant | zoo · task | acc (%) | NLL | ECE | params | forward passes "
        "| seconds to obtain | commit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['variant']} | {r['comparable_group']} | "
            f"{num(r['accuracy'], '.2f', 100)} | {num(r['nll'], '.3f')} | "
            f"{num(r['ece'], '.3f')} | {num(r['n_parameters'], ',.0f')} | "
            f"{num(r['forward_passes_per_prediction'], '.0f')} | "
            f"{num(r['seconds_to_obtain'], '.3g')} | {r['git_commit'][:7] or 'unknown'} |"
        )
    return "\n".join(lines)


def reliability_block() -> str:
    """Kill and rerun the base zoo (``benchmarks/zoo_kill_resume.py``): one row per kill."""
    d = json.loads((RESULTS / "zoo_kill_resume.json").read_text())
    ref = d["reference"]
    n, stacks = ref["n_members"], ref["stack_sizes"]
    lines = [
        f"`benchmarks/results/zoo_kill_resume.json` ({_commit(d)}): the base zoo, {n} members in "
        f"{len(stacks)} stacks of at most {max(stacks)}, {ref['train_seconds']:.0f} s "
        f"of training; worst rerun retrained **{d['headline_members_retrained_per_stack']:.2f} "
        f"stack** (target {d['target']}: {'met' if d['ok'] else '**missed**'}).",
        "",
        "| kill | seconds into the run | members finished before | rerun reused | rerun "
        "trained | retrained (lost) | lost / largest stack | .tmp left |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in d["kill_points"]:
        lines.append(
            f"| {k['kill']} | {k['seconds_into_run']:.1f} | {k['members_finished_before_kill']} "
            f"| {k['rerun_reused']} | {k['rerun_trained']} | {k['members_retrained']} | "
            f"{k['retrained_per_stack']:.2f} | {k['tmp_files_left_by_kill']} |"
        )
    return "\n".join(lines)


def d2nwg_block() -> str:
    """Per run (CPU, H200): the method beside its baselines and ablations, fine-tuning and
    the copy audit over seeds (``benchmarks/d2nwg_targets.py``); then the targets, mean
    over seeds with the worst seed."""
    from d2nwg_targets import audit_table, comparison_table, finetune_table

    runs = (Run("d2nwg_base"), Run("d2nwg_gpu_h200"))
    parts = []
    for run in runs:
        data = run.load()
        seeds = ", ".join(str(s) for s in data.get("seeds", []))
        parts += [
            f"{run.heading()}, seeds {seeds}; cells: mean ± std over seeds (worst seed):",
            comparison_table(data["per_seed"]),
            finetune_table(data["per_seed"]),
            audit_table(data["per_seed"]),
        ]
    lines = ["| target | goal | " + " | ".join(
        ("CPU, 2 cores" if r.load()["device"] == "cpu" else r.load()["device"])
        + " mean (worst seed)" for r in runs) + " |", "|---|---|" + "---|" * len(runs)]  # fmt: skip
    rows = [{t["name"]: t for t in r.load()["seed_targets"]} for r in runs]
    names = list(dict.fromkeys(n for run_rows in rows for n in run_rows))
    for name in names:
        cells, goal = [], next(r[name]["goal"] for r in rows if name in r)
        for run_rows in rows:
            r = run_rows.get(name)
            if r is None:
                cells.append("— (not measured in this run)")
                continue
            ok = "met" if r["met"] else "**missed**"
            every = "" if r["met_every_seed"] == r["met"] else " (not every seed)"
            cells.append(f"{_number(r['measured'])} ({_number(r['worst_seed'])}): {ok}{every}")
        lines.append(f"| {name} | {goal} | " + " | ".join(cells) + " |")
    parts += ["Targets:", "\n".join(lines)]
    return "\n\n".join(parts)


def scaleout_block() -> str:
    """Zoo throughput and diffusion step time on N processes vs 1 (``benchmarks/scaleout.py``)
    and the multi-process CUDA checks (``benchmarks/gpu_distributed_checks.py``)."""
    lines = [
        "| machine | measurement | processes | time | rate | speed-up vs N=1 (efficiency) "
        "| results |",
        "|---|---|---|---|---|---|---|",
    ]
    for stem in ("scaleout_cpu", "scaleout_gpu_h200"):
        data = json.loads((RESULTS / f"{stem}.json").read_text())
        where = f"`benchmarks/results/{stem}.json` ({_commit(data['code_version'])})"
        for what, recs in data["results"].items():
            for r in recs:
                machine = "CPU, 2 cores (gloo)" if r["device"] == "cpu" else r["device"]
                if what == "zoo":
                    job = f"zoo: {r['members']:,} MLPs 64-32-10, {r['epochs']} epochs"
                    rate = f"{r['models_per_second']:,.0f} models/s"
                else:
                    job = (f"D2NWG diffusion: {r['steps']} steps, batch {r['batch_size']}, "
                           f"latents {r['latent_shape'][0]}x{r['latent_shape'][1]}")  # fmt: skip
                    rate = f"{1000 * r['seconds_per_step']:.1f} ms/step"
                n = f"{r['ranks']} (torchrun)" if r["launch"] == "torchrun" else "1 (plain)"
                lines.append(
                    f"| {machine} | {job} | {n} | {r['seconds']:.1f} s | {rate} | "
                    f"{r['speedup']:.2f}x ({r['efficiency']:.2f}) | {where} |"
                )
    checks = json.loads((RESULTS / "gpu_distributed_checks_h200.json").read_text())
    zoo = ", ".join(
        f"{arch} {c['bitwise_equal_share']:.0%} bitwise equal (max diff {c['max_abs_diff']:.1g})"
        for arch, c in checks["zoo"].items()
    )
    lines += [
        "",
        f"Multi-process CUDA checks on the {checks['device']} ({checks['ranks']} ranks, "
        f"{checks['backend']}, sharing {checks['gpus']} GPU; "
        "`benchmarks/results/gpu_distributed_checks_h200.json`, commit recorded in the "
        f"scale-out file above): sharded zoo vs one process: {zoo}; DDP diffusion vs one "
        f"process, 10 steps: max diff {checks['diffusion']['max_abs_diff']:.1e} "
        f"(target 1e-5: {'met' if checks['diffusion']['within_1e-5'] else 'missed'}).",
    ]
    return "\n".join(lines)


BLOCKS: dict[str, Callable[[], str]] = {
    "reliability": reliability_block,
    "report": report_block,
    "zoo": zoo_block,
    "d2nwg": d2nwg_block,
    "fusion": fusion_block,
    "distill": lambda: sections_block((Run("distill_base"), Run("distill_gpu_h200")), ["Results"]),
    "weightformer": lambda: sections_block(
        (Run("weightformer_base"), Run("weightformer_gpu_h200")), ["Table 1", "Table 4"]
    ),
    "superweights": superweights_block,
    "scaleout": scaleout_block,
}
"""Every README block, by method: the function that writes it."""


def markers(method: str) -> tuple[str, str]:
    return f"<!-- {method}:begin -->", f"<!-- {method}:end -->"


def blocks_in(readme: str, method: str) -> str:
    """The text between a method's markers in ``readme`` (without the marker lines)."""
    begin, end = markers(method)
    if begin not in readme or end not in readme:
        raise SystemExit(f"README.md has no {begin} ... {end} block; add the two markers")
    return readme.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def rewrite(readme: str, method: str, text: str) -> str:
    """``readme`` with the block of ``method`` replaced by ``text``."""
    blocks_in(readme, method)  # the markers exist
    begin, end = markers(method)
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{text}\n{end}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", help=f"any of {', '.join(BLOCKS)} (default: all)")
    parser.add_argument("--print", action="store_true", help="print, do not edit README.md")
    args = parser.parse_args()
    unknown = [m for m in args.methods if m not in BLOCKS]
    if unknown:
        parser.error(f"no README block for {unknown}; blocks: {', '.join(BLOCKS)}")
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    for method in args.methods or list(BLOCKS):
        text = BLOCKS[method]()
        if args.print:
            print(text)
            continue
        readme = rewrite(readme, method, text)
        print(f"rewrote the {method} block of README.md")
    if not args.print:
        readme_path.write_text(readme)


if __name__ == "__main__":
    main()
