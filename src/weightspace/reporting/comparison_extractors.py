"""Per-method extractors: each pipeline's flat ``metrics.json`` -> comparable row specs.

One extractor per method (:data:`EXTRACTORS`) names, for each variant the method reports
(the method itself, its baselines, its ablations), which ``metrics.json`` key holds its
accuracy, NLL, ECE, cECE, parameter count, forward passes per prediction, seconds to
obtain the model and memorization score, and the comparable group (task and zoo) it was
measured on, read from the run's parameters. A field the pipeline does not measure is
``None``; a value known by construction (one network = one forward pass) is a
:class:`~weightspace.reporting.comparison_rows.Fixed` with its reason; nothing is
estimated. Everything method-specific lives here; resolving the specs against the
metrics (:func:`weightspace.reporting.comparison.extract`) and the tables do not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from weightspace.errors import MetricsKeyError
from weightspace.reporting.comparison_rows import Extracted, Fixed, Group, RowSpec, Source

METHODS: tuple[str, ...] = ("d2nwg", "fusion", "distill", "weightformer", "superweights")
"""The methods that have an extractor, in table order."""

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
            f"`kedro run --pipelines={method}` or update "
            "weightspace.reporting.comparison_extractors"
        )
    return found


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
        RowSpec("sampled (best of k, support set)", "unseen_sampled_best_acc", headline=True,
                forward_passes=ONE_NETWORK, seconds_to_obtain=k, memorization=mem,
                note="seconds: k samples; the choice on the support set is not timed"),
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
        RowSpec("sampled (best of k, support set)", "novel_sampled_best_acc",
                forward_passes=ONE_NETWORK, seconds_to_obtain=k),
        RowSpec("oracle (trained on the task)", "novel_oracle_acc", forward_passes=ONE_NETWORK),
    ]  # fmt: skip
    # Baselines and ablations on the same support / val / test data (runs since the
    # class-wise method; older metrics files have none of these keys and get no rows).
    one_net = dict(forward_passes=ONE_NETWORK)
    extra = {
        "seen": [("zoo heads, best of k on val", "seen_zoo_best_of_k_acc"),
                 ("prototype head (support means)", "seen_prototype_acc"),
                 ("row look-up from the zoo", "seen_lookup_acc"),
                 ("ablation: anchor only (no diffusion)", "seen_anchor_only_acc"),
                 ("whole-head D2NWG (paper's chunk VAE)", "seen_whole_head_acc")],
        "unseen": [("prototype head (support means)", "unseen_prototype_acc"),
                   ("row look-up from the zoo", "unseen_lookup_acc"),
                   ("nearest zoo member, rows matched", "unseen_nearest_member_acc"),
                   ("linear probe, converged", "unseen_probe_converged_acc"),
                   ("ablation: anchor only (no diffusion)", "unseen_anchor_only_acc"),
                   ("ablation: unconditional", "unseen_unconditional_acc"),
                   ("whole-head D2NWG (paper's chunk VAE)", "unseen_whole_head_acc"),
                   ("row look-up + fine-tuned", "unseen_finetune_lookup_acc")],
        "novel": [("prototype head (support means)", "novel_prototype_acc"),
                  ("linear probe, converged", "novel_probe_converged_acc"),
                  ("ablation: anchor only (no diffusion)", "novel_anchor_only_acc"),
                  ("ablation: unconditional", "novel_unconditional_acc"),
                  ("whole-head D2NWG (paper's chunk VAE)", "novel_whole_head_acc")],
    }  # fmt: skip
    for rows, group in ((seen, "seen"), (unseen, "unseen"), (novel, "novel")):
        rows += [RowSpec(v, k, **one_net) for v, k in extra[group] if k in m]
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


__all__ = ["EXTRACTORS", "METHODS", "ONE_NETWORK", "SW_KINDS"]
