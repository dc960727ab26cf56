"""Every method side by side: each pipeline's flat ``metrics.json`` -> comparable rows.

One extractor per method (:data:`EXTRACTORS`) names, for each variant the method reports
(the method itself, its baselines, its ablations), which ``metrics.json`` key holds its
accuracy, NLL, ECE, cECE, parameter count, forward passes per prediction, seconds to
obtain the model and memorization score. A field the pipeline does not measure is
``None`` (shown "—"); a value known by construction (one network = one forward pass) is a
:class:`Fixed` with its reason; nothing is estimated. An expected key that is absent
raises :class:`~weightspace.errors.MetricsKeyError` naming the method and the key, so a
renamed metric fails here instead of vanishing from the table. Timing keys are the one
exception: they are not in the golden files (they vary run to run), so a missing timing
key becomes "—" unless ``strict_timing=True``.

Rows carry their task and zoo; rows that share both form a *comparable group*. The table
lists rows group by group with the group in a column, so numbers from different zoos or
tasks are never read as if they were side by side.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure

from weightspace.errors import InvalidParameterError, MetricsKeyError
from weightspace.reporting.markdown import markdown_table

MISSING = "—"
"""What the markdown table shows for a value the pipeline does not measure."""

METHODS: tuple[str, ...] = ("d2nwg", "fusion", "distill", "weightformer", "superweights")


@dataclass(frozen=True)
class Fixed:
    """A value known by construction (not measured), with the reason shown in the card."""

    value: float
    why: str


Source = str | Fixed | tuple[str, str] | None
"""A ``metrics.json`` key; a :class:`Fixed` value; ``(key, factor_key)`` for the product of
two keys (e.g. best-of-k sampling time = k x one sample's time); ``None``: not measured."""


@dataclass(frozen=True)
class RowSpec:
    """Where one variant's numbers live in a method's ``metrics.json``."""

    variant: str
    accuracy: str
    nll: Source = None
    ece: Source = None
    cece: Source = None
    n_parameters: Source = None
    forward_passes: Source = None
    seconds_to_obtain: Source = None
    memorization: Source = None
    note: str = ""
    headline: bool = False


@dataclass(frozen=True)
class Group:
    """The task (data) and zoo a set of rows was measured on."""

    task: str
    zoo: str

    @property
    def label(self) -> str:
        return f"{self.zoo} · {self.task}"


@dataclass(frozen=True)
class ComparisonRow:
    """One variant of one method; ``None`` = not measured by that pipeline."""

    method: str
    variant: str
    task: str
    zoo: str
    accuracy: float | None
    nll: float | None
    ece: float | None
    cece: float | None
    n_parameters: float | None
    forward_passes_per_prediction: float | None
    seconds_to_obtain: float | None
    memorization: float | None
    comparable_group: str = ""
    git_commit: str | None = None
    config_hash: str | None = None
    headline: bool = False
    note: str = ""
    sources: Mapping[str, str] = field(default_factory=dict)
    """Field -> where its value came from (a metrics key, or the reason of a fixed value)."""

    @property
    def inference_cost(self) -> float | None:
        """Forward passes x parameters (parameters alone when passes are unknown)."""
        if self.n_parameters is None:
            return None
        return self.n_parameters * (self.forward_passes_per_prediction or 1.0)


NUMERIC = (
    "accuracy", "nll", "ece", "cece", "n_parameters", "forward_passes_per_prediction",
    "seconds_to_obtain", "memorization",
)  # fmt: skip
TIMING = ("seconds_to_obtain",)
SPEC_FIELD = {"forward_passes_per_prediction": "forward_passes"}
ONE_NETWORK = Fixed(1.0, "one network")


def _get(params: Mapping[str, Any] | None, path: str, default: Any = None) -> Any:
    """``params["a.b"]["c"]`` for ``path="a.b/c"`` (``/`` separates nested keys)."""
    if not params:
        return default
    head, *rest = path.split("/")
    node: Any = params.get(head)
    for key in rest:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return default if node is None else node


def _members(params: Mapping[str, Any] | None, path: str, what: str) -> Fixed | None:
    """The configured ensemble size as forward passes (``None`` without parameters)."""
    n = _get(params, path)
    return Fixed(float(n), f"{what} ({path.replace('/', '.')} = {n})") if n else None


def _matches(metrics: Mapping[str, float], pattern: str) -> list[str]:
    """First capture group of every key matching ``pattern``, in key order, unique."""
    rx = re.compile(pattern)
    found = [m.group(1) for k in metrics if (m := rx.fullmatch(k))]
    return list(dict.fromkeys(found))


def _listed(params: Mapping[str, Any] | None, path: str, found: list[str]) -> list[str]:
    """The names the run's parameters list at ``path`` (then a missing key of a listed
    variant is an error, not a silently dropped row); without them, the discovered ones."""
    listed = _get(params, path)
    if isinstance(listed, Mapping):
        listed = list(listed)
    return [str(x) for x in listed] if listed else found


def _need(method: str, metrics: Mapping[str, float], found: list[str], what: str) -> list[str]:
    if not found:
        raise MetricsKeyError(
            f"{method} metrics.json has no {what} key; its report changed its keys: rerun "
            f"`kedro run --pipelines={method}` or update weightspace.reporting.comparison"
        )
    return found


Extracted = list[tuple[Group, list[RowSpec]]]


def _d2nwg(m: Mapping[str, float], p: Mapping[str, Any] | None) -> Extracted:
    domains = [d.get("name", "?") for d in _get(p, "d2nwg_heads.settings/pool/domains", [])]
    way = _get(p, "d2nwg_heads.settings/pool/way")
    data = f"{way or '?'}-way heads over {'+'.join(domains) or '?'} features"
    k = ("sample_seconds_per_model", "n_candidates")
    heads, one = "zoo_d2nwg_heads", "sample_seconds_per_model"
    mem = "memorization_similarity"
    seen = [
        RowSpec("zoo heads (trained)", "seen_zoo_mean_acc", forward_passes=ONE_NETWORK),
        RowSpec("sampled (mean)", "seen_sampled_mean_acc", forward_passes=ONE_NETWORK,
                seconds_to_obtain=one, memorization=mem),
        RowSpec("sampled (best of k, val)", "seen_sampled_best_acc", forward_passes=ONE_NETWORK,
                seconds_to_obtain=k, memorization=mem,
                note="seconds: k samples; the choice on validation is not timed"),
    ]  # fmt: skip
    unseen = [
        RowSpec("sampled (mean)", "unseen_sampled_mean_acc", forward_passes=ONE_NETWORK,
                seconds_to_obtain=one, memorization=mem),
        RowSpec("sampled (best of k, val)", "unseen_sampled_best_acc", headline=True,
                forward_passes=ONE_NETWORK, seconds_to_obtain=k, memorization=mem,
                note="seconds: k samples; the choice on validation is not timed"),
        RowSpec("oracle (trained on the task)", "unseen_oracle_acc", forward_passes=ONE_NETWORK),
        RowSpec("random init", "unseen_random_init_acc", forward_passes=ONE_NETWORK),
        RowSpec("sampled + fine-tuned", "unseen_finetune_sampled_acc", forward_passes=ONE_NETWORK),
        RowSpec("random + fine-tuned", "unseen_finetune_random_acc", forward_passes=ONE_NETWORK),
        RowSpec("nearest zoo head + fine-tuned", "unseen_finetune_nearest_acc",
                forward_passes=ONE_NETWORK),
    ]  # fmt: skip
    novel = [
        RowSpec("sampled (mean)", "novel_sampled_mean_acc", forward_passes=ONE_NETWORK,
                seconds_to_obtain=one),
        RowSpec("sampled (best of k, val)", "novel_sampled_best_acc", forward_passes=ONE_NETWORK,
                seconds_to_obtain=k),
        RowSpec("oracle (trained on the task)", "novel_oracle_acc", forward_passes=ONE_NETWORK),
    ]  # fmt: skip
    names = _matches(m, r"networks_(.+)_zoo_mean_acc")
    nk = ("networks_sample_seconds_per_model", "networks_n_candidates")
    net = dict(forward_passes=ONE_NETWORK, n_parameters="networks_n_params")
    networks = [
        RowSpec("zoo networks (mean)", "networks_zoo_mean_acc", **net),
        RowSpec("zoo networks (best)", "networks_zoo_best_acc", **net),
        RowSpec("sampled (mean)", "networks_sampled_mean_acc", **net,
                seconds_to_obtain="networks_sample_seconds_per_model",
                memorization="networks_memorization_similarity"),
        RowSpec("sampled (best of k, val)", "networks_sampled_best_acc", **net,
                seconds_to_obtain=nk, memorization="networks_memorization_similarity",
                note="seconds: k samples; the choice on validation is not timed"),
    ]  # fmt: skip
    return [
        (Group(f"{data}, seen tasks", heads), seen),
        (Group(f"{data}, unseen tasks", heads), unseen),
        (Group(f"{data}, novel-class tasks", heads), novel),
        (Group(f"whole MLPs on {', '.join(names) or '?'}", "zoo_d2nwg_networks"), networks),
    ]


def _fusion(m: Mapping[str, float], p: Mapping[str, Any] | None) -> Extracted:
    datasets = {e.get("name"): e.get("dataset") for e in _get(p, "fusion.settings/experiments", [])}
    headline = _get(p, "fusion.settings/headline")
    found = _matches(m, r"(\w+)\.(?:model_a_acc|clafusion_acc|clafusion_finetuned_acc)")
    exps = [e.get("name") for e in _get(p, "fusion.settings/experiments", [])] or found
    exps = _need("fusion", m, exps, "'<experiment>.clafusion_acc'")
    out: Extracted = []
    for i, e in enumerate(exps):
        pair = Fixed(2.0, "two parents")
        rows = [
            RowSpec("parent M_A (deep)", f"{e}.model_a_acc", forward_passes=ONE_NETWORK),
            RowSpec("parent M_B (shallow)", f"{e}.model_b_acc", forward_passes=ONE_NETWORK),
            RowSpec("ensemble (M_A, M_B)", f"{e}.ensemble_acc", forward_passes=pair),
            RowSpec("vanilla averaging (A, A')", f"{e}.vanilla_avg_acc",
                    forward_passes=ONE_NETWORK),
            RowSpec("OTFusion (A, A')", f"{e}.otfusion_acc", forward_passes=ONE_NETWORK,
                    seconds_to_obtain=f"{e}.otfusion_seconds"),
            RowSpec("CLAFusion one shot", f"{e}.clafusion_acc", forward_passes=ONE_NETWORK,
                    seconds_to_obtain=f"{e}.fusion_seconds",
                    headline=e == headline or (headline not in exps and i == 0)),
            RowSpec("fine-tuned M_A", f"{e}.parent_a_finetuned_acc", forward_passes=ONE_NETWORK),
            RowSpec("fine-tuned M_B", f"{e}.parent_b_finetuned_acc", forward_passes=ONE_NETWORK),
            RowSpec("CLAFusion + fine-tuning", f"{e}.clafusion_finetuned_acc",
                    forward_passes=ONE_NETWORK),
            RowSpec("random init + fine-tuning", f"{e}.random_init_finetuned_acc",
                    forward_passes=ONE_NETWORK),
        ]  # fmt: skip
        out.append((Group(f"{e} ({datasets.get(e) or '?'})", "zoo_fusion"), rows))
    found = _matches(m, r"(\w+)\.(?:teacher_acc|fused_student_oneshot_acc|kd_fused_best_acc)")
    if _get(p, "fusion.settings/kd") is not None:
        kd = _get(p, "fusion.settings/kd")
        found = [kd["name"]] if kd.get("enabled", True) and kd.get("name") else []
    for ts in found:
        rows = [
            RowSpec("teacher", f"{ts}.teacher_acc", n_parameters=f"{ts}.n_params_teacher",
                    forward_passes=ONE_NETWORK),
            RowSpec("fused student, one shot", f"{ts}.fused_student_oneshot_acc",
                    n_parameters=f"{ts}.n_params_fused_student", forward_passes=ONE_NETWORK),
            RowSpec("KD into fused student (best)", f"{ts}.kd_fused_best_acc",
                    n_parameters=f"{ts}.n_params_fused_student", forward_passes=ONE_NETWORK),
            RowSpec("KD into pre-trained student (best)", f"{ts}.kd_pretrained_b_best_acc",
                    n_parameters=f"{ts}.n_params_student", forward_passes=ONE_NETWORK),
            RowSpec("KD into random student (best)", f"{ts}.kd_random_b_best_acc",
                    n_parameters=f"{ts}.n_params_student", forward_passes=ONE_NETWORK),
        ]  # fmt: skip
        dataset = _get(p, "fusion.settings/kd/dataset", "?")
        out.append((Group(f"{ts} ({dataset})", "zoo_fusion"), rows))
    return out


def _distill(m: Mapping[str, float], p: Mapping[str, Any] | None) -> Extracted:
    def row(name: str, variant: str, cost: str, seconds: Source, **kw: Any) -> RowSpec:
        return RowSpec(
            variant, f"{name}_acc", nll=f"{name}_nll", ece=f"{name}_ece", cece=f"{name}_cece",
            n_parameters=f"{cost}_params", forward_passes=f"{cost}_forward_passes",
            seconds_to_obtain=seconds, **kw,
        )  # fmt: skip

    rows = [
        row("de", "deep ensemble (teachers)", "de", None),
        row("single", "single teacher (mean of members)", "single", None),
        row("kd", "KD student", "kd", "kd_train_seconds"),
        row("be", "BatchEnsemble one-to-one", "be", "be_train_seconds"),
        row("latentbe", "KD + LatentBE", "latentbe", "be_train_seconds", headline=True,
            note="seconds: its BatchEnsemble's training (merging is not timed)"),
    ]  # fmt: skip
    found = _matches(m, r"(?:latentbe|be)_([a-z_]+?)_(?:acc|nll)")
    for pert in _listed(p, "distill.settings/protocol/perturbations", found):
        rows.append(
            row(f"latentbe_{pert}", f"KD + LatentBE + {pert}", "latentbe",
                f"be_{pert}_train_seconds",
                note="seconds: its BatchEnsemble's training (merging is not timed)")
        )  # fmt: skip
    dataset = _get(p, "distill.settings/dataset", "?")
    return [(Group(dataset, "zoo_distill"), rows)]


def _weightformer(m: Mapping[str, float], p: Mapping[str, Any] | None) -> Extracted:
    def row(name: str, variant: str, seconds: Source = None, **kw: Any) -> RowSpec:
        passes = kw.pop("forward_passes", ONE_NETWORK)
        return RowSpec(variant, f"{name}_acc", nll=f"{name}_nll", ece=f"{name}_ece",
                       forward_passes=passes, seconds_to_obtain=seconds, **kw)  # fmt: skip

    teachers = _members(p, "weightformer.settings/protocol/fit/n_teachers", "teachers")
    rows = [
        row("single", "single teacher (mean)"),
        row("ensemble", "ensemble of the teachers", forward_passes=teachers),
        row("kd", "KD from a random start", "kd_seconds_per_student"),
        row("kd_t0", "KD from teacher 0", "kd_t0_seconds_per_student"),
        row("mlp", "MLP generator", "mlp_seconds_per_student"),
        row("wf", "WeightFormer", "wf_seconds_per_student", headline=True,
            note="seconds: one generator pass per student (its training is amortised)"),
        row("wf_star", "WeightFormer* (fine-tuned)", "wf_star_seconds_per_student"),
    ]  # fmt: skip
    found = _matches(m, r"wf_(no_[a-z_]+?)_(?:acc|nll)")
    for ab in _listed(p, "weightformer.settings/ablations", found):
        rows.append(row(f"wf_{ab}", f"WeightFormer, {ab.replace('_', ' ')}",
                        f"wf_{ab}_seconds_per_student"))  # fmt: skip
    dataset = _get(p, "weightformer.settings/dataset", "?")
    return [(Group(f"{dataset}, held-out teacher sets", "zoo_weightformer"), rows)]


SW_KINDS = ("ho", "he_width", "he_depth_width")


def _superweights(m: Mapping[str, float], p: Mapping[str, Any] | None) -> Extracted:
    members = _members(p, "superweights.settings/protocol/n_members", "members")

    def row(name: str, variant: str, passes: Source, **kw: Any) -> RowSpec:
        return RowSpec(
            variant, f"{name}_acc", nll=f"{name}_nll", ece=f"{name}_ece",
            n_parameters=f"{name}_params", forward_passes=passes,
            seconds_to_obtain=f"{name}_train_seconds", **kw,
        )  # fmt: skip

    found = [k for k in SW_KINDS if any(f"{x}_{k}_" in key for key in m for x in ("de", "swn"))]
    kinds = _need("superweights", m, _listed(p, "superweights.settings/protocol/kinds", found),
                  "'de_<kind>_acc'")  # fmt: skip
    budgets = _listed(p, "superweights.settings/protocol/budgets", [])
    rows = [row("single", "single model", ONE_NETWORK), row("be", "BatchEnsemble", members)]
    rows += [row(f"de_{k}", f"deep ensemble ({k})", members) for k in kinds]
    swn = [(k, q) for k in kinds
           for q in budgets or _matches(m, rf"swn_{k}_(q\d+)_(?:acc|nll|params)")]  # fmt: skip
    _need("superweights", m, [f"{k}_{q}" for k, q in swn], "'swn_<kind>_<budget>_acc'")
    pick = ("he_width", "q50") if ("he_width", "q50") in swn else swn[0]
    for k, q in swn:
        rows.append(
            row(f"swn_{k}_{q}", f"SuperWeights ({k}, {q})", members, headline=(k, q) == pick)
        )
    dataset = _get(p, "superweights.settings/dataset", "?")
    return [(Group(dataset, "own ensembles (no zoo)"), rows)]


EXTRACTORS: dict[str, Callable[[Mapping[str, float], Mapping[str, Any] | None], Extracted]] = {
    "d2nwg": _d2nwg,
    "fusion": _fusion,
    "distill": _distill,
    "weightformer": _weightformer,
    "superweights": _superweights,
}
"""Method name -> extractor of its ``(group, row specs)`` from metrics and parameters."""


def _resolve(
    method: str, spec: RowSpec, name: str, metrics: Mapping[str, float], strict_timing: bool
) -> tuple[float | None, str]:
    src = getattr(spec, SPEC_FIELD.get(name, name))
    if src is None:
        return None, ""
    if isinstance(src, Fixed):
        return float(src.value), f"{src.value:g}: {src.why}"
    keys = src if isinstance(src, tuple) else (src,)
    missing = [k for k in keys if k not in metrics]
    if missing and name in TIMING and not strict_timing:
        return None, f"{' x '.join(keys)} (absent: not timed in this run)"
    if missing:
        raise MetricsKeyError(
            f"{method} metrics.json has no key {missing[0]!r} (the {name} of its "
            f"'{spec.variant}' row); its report changed its keys: rerun `kedro run "
            f"--pipelines={method}` or update weightspace.reporting.comparison._{method}"
        )
    return math.prod(float(metrics[k]) for k in keys), " x ".join(keys)


def extract(
    method: str,
    metrics: Mapping[str, float],
    params: Mapping[str, Any] | None = None,
    strict_timing: bool = False,
) -> list[ComparisonRow]:
    """The comparable rows of one method.

    Parameters
    ----------
    method
        One of :data:`METHODS`.
    metrics
        The method pipeline's flat ``metrics.json``.
    params
        The parameters the method's run read (``"distill.settings" -> {...}``, from its
        provenance), used for the task/zoo description and ensemble sizes; ``None``: those
        show "?" and ensemble passes are not stated.
    strict_timing
        Raise on a missing timing key too (timing keys are not in the golden files).

    Raises
    ------
    MetricsKeyError
        An expected key is absent (names the method, the key and the row).
    """
    if method not in EXTRACTORS:
        raise InvalidParameterError(f"no extractor for method {method!r}; known: {list(METHODS)}")
    rows = []
    for group, specs in EXTRACTORS[method](metrics, params):
        for spec in specs:
            values, sources = {}, {}
            for name in NUMERIC:
                values[name], sources[name] = _resolve(method, spec, name, metrics, strict_timing)
            rows.append(
                ComparisonRow(
                    method=method, variant=spec.variant, task=group.task, zoo=group.zoo,
                    comparable_group=group.label, headline=spec.headline, note=spec.note,
                    sources={k: v for k, v in sources.items() if v}, **values,
                )
            )  # fmt: skip
    return rows


def with_provenance(
    rows: Iterable[ComparisonRow], commit: str | None, config_hash: str | None
) -> list[ComparisonRow]:
    """The rows stamped with the commit and config hash their run came from."""
    return [replace(r, git_commit=commit, config_hash=config_hash) for r in rows]


def not_run_row(method: str, command: str) -> ComparisonRow:
    """A placeholder row for a method whose outputs are absent (``require_all: false``)."""
    return ComparisonRow(
        method=method, variant="not run", task=MISSING, zoo=MISSING,
        comparable_group="not run", note=f"run `{command}` first", **dict.fromkeys(NUMERIC),
    )  # fmt: skip


def group_ids(rows: Sequence[ComparisonRow]) -> dict[str, str]:
    """Comparable group label -> ``G1``, ``G2``, ... in order of first appearance."""
    labels = dict.fromkeys(r.comparable_group for r in rows)
    return {label: f"G{i + 1}" for i, label in enumerate(labels)}


def ordered(rows: Sequence[ComparisonRow]) -> list[ComparisonRow]:
    """Rows grouped by comparable group (groups in order of first appearance), stable."""
    ids = group_ids(rows)
    return sorted(rows, key=lambda r: int(ids[r.comparable_group][1:]))


FORMATS: dict[str, Callable[[float], str]] = {
    "accuracy": lambda v: f"{100 * v:.2f}",
    "nll": lambda v: f"{v:.3f}",
    "ece": lambda v: f"{v:.3f}",
    "cece": lambda v: f"{v:.3f}",
    "n_parameters": lambda v: f"{v:,.0f}",
    "forward_passes_per_prediction": lambda v: f"{v:g}",
    "seconds_to_obtain": lambda v: f"{v:.3g}",
    "memorization": lambda v: f"{v:.3f}",
}
HEADERS = {
    "accuracy": "acc (%)", "nll": "NLL", "ece": "ECE", "cece": "cECE",
    "n_parameters": "params", "forward_passes_per_prediction": "forward passes",
    "seconds_to_obtain": "seconds to obtain", "memorization": "memorization",
}  # fmt: skip


def fmt(name: str, value: float | None) -> str:
    """One cell of the markdown table (``MISSING`` for ``None``)."""
    return MISSING if value is None else FORMATS[name](value)


def short(value: str | None, n: int) -> str:
    return "unknown" if value is None else value[:n]


CSV_COLUMNS = (
    "group", "comparable_group", "method", "variant", "task", "zoo", *NUMERIC,
    "inference_cost", "headline", "git_commit", "config_hash", "note",
)  # fmt: skip


def comparison_csv(rows: Sequence[ComparisonRow]) -> str:
    """Every row, full precision; empty cells where a value is not measured."""
    ids, buf = group_ids(rows), io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in ordered(rows):
        cells = {f.name: getattr(r, f.name) for f in fields(r)}
        cells |= {"group": ids[r.comparable_group], "inference_cost": r.inference_cost}
        writer.writerow(["" if cells[c] is None else cells[c] for c in CSV_COLUMNS])
    return buf.getvalue()


def comparison_markdown(rows: Sequence[ComparisonRow], missing: Sequence[str] = ()) -> str:
    """The comparison table grouped by comparable group, its legend and the caveats."""
    ids = group_ids(rows)
    header = ["group", "method", "variant", *HEADERS.values(), "commit", "config hash"]
    body = []
    for r in ordered(rows):
        name = f"**{r.variant}**" if r.headline else r.variant
        cells = [fmt(n, getattr(r, n)) for n in NUMERIC]
        prov = [short(r.git_commit, 10), short(r.config_hash, 12)]
        if r.variant == "not run":
            prov = [MISSING, MISSING]
        body.append([ids[r.comparable_group], r.method, name, *cells, *prov])
    legend = []
    for label, gid in ids.items():
        methods = dict.fromkeys(r.method for r in rows if r.comparable_group == label)
        legend.append([gid, label, ", ".join(methods)])
    commits = {r.git_commit for r in rows if r.variant != "not run"}
    parts = [
        "# Cross-method comparison\n",
        "Rows are grouped by **comparable group**: rows of one group share the zoo and the "
        "task, so their numbers can be read side by side; numbers of different groups come "
        "from different data or models and are not comparable. **Bold**: each method's "
        f"headline variant. {MISSING}: not measured by that pipeline (see its model card).\n",
        markdown_table(header, body),
        "\n## Comparable groups\n",
        markdown_table(["group", "zoo · task", "methods"], legend),
        "\n## Notes\n",
        "- accuracy: test split; D2NWG rows are means over tasks, others as each method's "
        "report defines (model cards give the details).",
        "- seconds to obtain: wall time to produce the model once its inputs exist "
        "(sampling, fusion, distillation, training of the ensemble); zoo training is not "
        "included; methods timed on different machines or loads are not comparable.",
        "- forward passes: per prediction; inference cost in the plot = forward passes x "
        "parameters (stored parameters; for ensembles the total over members).",
    ]
    if len(commits) > 1:
        shown = ", ".join(sorted(short(c, 10) for c in commits))
        parts.append(f"- the methods ran at different commits ({shown}): rerun them for one.")
    if missing:
        cmds = "; ".join(f"`kedro run --pipelines={m}`" for m in missing)
        parts.append(f"- not run: {', '.join(missing)} ({cmds}).")
    return "\n".join(parts) + "\n"


def _scatter(rows: Sequence[ComparisonRow], x: Callable[[ComparisonRow], float | None],
             xlabel: str, title: str) -> Figure:  # fmt: skip
    fig = Figure(figsize=(7.0, 4.6))
    ax = fig.subplots()
    markers = "osD^vP*X"
    skipped = []
    for i, method in enumerate(dict.fromkeys(r.method for r in rows)):
        mine = [r for r in rows if r.method == method and r.accuracy is not None]
        pts = [(x(r), 100 * r.accuracy, r) for r in mine if x(r) is not None and x(r) > 0]
        if not pts:
            skipped.append(method)
            continue
        color = f"C{i}"
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)],
                   color=color, alpha=0.35, s=22)  # fmt: skip
        head = [p for p in pts if p[2].headline] or pts[:1]
        for px, py, r in head:
            ax.scatter([px], [py], marker=markers[i % len(markers)], color=color, s=80,
                       edgecolor="black", label=f"{method}: {r.variant}")  # fmt: skip
            ax.annotate(method, (px, py), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title + (f"\n(no value for: {', '.join(skipped)})" if skipped else ""), fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plots(rows: Sequence[ComparisonRow]) -> dict[str, Figure]:
    """Accuracy vs seconds to obtain, and vs inference cost: every row with a value,
    one marker per method, each method's headline variant large and labelled. Groups
    differ in task, so compare positions within a method more than across methods."""
    return {
        "accuracy_vs_obtain_cost": _scatter(
            rows, lambda r: r.seconds_to_obtain, "seconds to obtain the model (log)",
            "accuracy vs cost to obtain (rows of different groups: different tasks)",
        ),
        "accuracy_vs_inference_cost": _scatter(
            rows, lambda r: r.inference_cost, "forward passes x parameters (log)",
            "accuracy vs inference cost (rows of different groups: different tasks)",
        ),
    }  # fmt: skip


__all__ = [
    "EXTRACTORS",
    "METHODS",
    "MISSING",
    "ComparisonRow",
    "Fixed",
    "Group",
    "RowSpec",
    "comparison_csv",
    "comparison_markdown",
    "extract",
    "fmt",
    "group_ids",
    "not_run_row",
    "ordered",
    "plots",
    "with_provenance",
]
