"""D2NWG's report: score dataclasses -> the flat ``metrics.json`` keys and the figures.

Scenario (a), few-shot heads (:class:`~weightspace.evaluation.d2nwg_protocol.FewShotScores`),
writes its keys unprefixed; scenario (b), whole networks
(:class:`~weightspace.evaluation.retrieval.RetrievalScores`), writes them with the prefix
``networks_``. Stage reports (the VAE gate, the feature extractors) and node wall times
join them here, so the one ``metrics.json`` keeps the keys it always had.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from matplotlib.figure import Figure

from weightspace.evaluation.d2nwg_comparisons import ComparisonScores
from weightspace.evaluation.d2nwg_protocol import FewShotScores
from weightspace.evaluation.retrieval import RetrievalScores
from weightspace.generators.d2nwg_stages import VAEGateReport
from weightspace.reporting import d2nwg_plots as plots
from weightspace.reporting.spread import paired_difference

STAGE_SECONDS = {
    "fit_weight_vae": "vae_seconds",
    "align_dataset_encoder": "align_seconds",
    "train_latent_diffusion": "diffusion_seconds",
    "train_classwise_generator": "classwise_seconds",
    "train_classwise_ablations": "classwise_ablations_seconds",
}
"""Node short name -> metric key of its wall time (recorded by the project hook)."""

PER_DATASET = {
    "zoo_mean": "zoo_mean_acc",
    "sampled_mean": "sampled_mean_acc",
    "sampled_best": "sampled_best_acc",
    "retrieval": "retrieval_accuracy",
}


def stage_metrics(
    gate: VAEGateReport,
    align_losses: Sequence[float],
    diffusion_losses: Sequence[float],
    node_seconds: Mapping[str, float],
) -> dict[str, float]:
    """The training stages' keys: VAE gate, last losses, wall time of each stage."""
    out = {
        "vae_recon_acc_ratio": gate.recon_acc_ratio,
        "vae_final_loss": gate.final_loss,
        "vae_recon_mean_acc": gate.recon_mean_acc,
        "zoo_mean_acc": gate.zoo_mean_acc,
        "align_final_loss": float(align_losses[-1]),
        "diffusion_final_loss": float(sum(diffusion_losses[-5:]) / len(diffusion_losses[-5:])),
    }
    for node, key in STAGE_SECONDS.items():
        if node in node_seconds:
            out[key] = float(node_seconds[node])
    return out


def fewshot_metrics(s: FewShotScores) -> dict[str, float]:
    """Scenario (a)'s flat metrics (the keys of ``metrics.json`` since the first release)."""
    g, ft = s.groups, s.finetune.curves
    return {
        "generated_models_per_second": s.speed.models_per_second,
        "train_seconds_to_sampled_acc": s.speed.train_seconds,
        "train_epochs_to_sampled_acc": float(s.speed.train_epochs),
        "generation_speedup_vs_training": s.speed.train_seconds * s.speed.models_per_second,
        "seen_zoo_mean_acc": float(s.zoo_seen_acc.mean()),
        "seen_sampled_mean_acc": float(g["seen"].test.mean()),
        "seen_sampled_best_acc": float(g["seen"].best.mean()),
        "unseen_oracle_acc": s.oracle["unseen"],
        "unseen_sampled_mean_acc": float(g["unseen"].test.mean()),
        "unseen_sampled_best_acc": float(g["unseen"].best.mean()),
        "unseen_random_init_acc": float(s.finetune.random_init_acc.mean()),
        "unseen_finetune_sampled_acc": float(ft["sampled"][:, -1].mean()),
        "unseen_finetune_random_acc": float(ft["random"][:, -1].mean()),
        "unseen_finetune_nearest_acc": float(
            ft["nearest member" if "nearest member" in ft else "nearest zoo member"][:, -1].mean()
        ),
        "finetune_steps": float(max(s.finetune.steps)),
        "novel_oracle_acc": s.oracle["novel"],
        "novel_sampled_mean_acc": float(g["novel"].test.mean()),
        "novel_sampled_best_acc": float(g["novel"].best.mean()),
        "sample_seconds_per_model": float(g["seen"].seconds_per_model),
        "n_zoo_heads": float(s.n_zoo),
        "n_seen_eval_tasks": float(s.n_tasks["seen"]),
        "n_unseen_tasks": float(s.n_tasks["unseen"]),
        "n_novel_tasks": float(s.n_tasks["novel"]),
        "n_candidates": float(s.n_candidates),
        **s.audit,
        **(comparison_metrics(s.comparisons) if s.comparisons is not None else {}),
        **seen_best_paired(s),
        **s.extra,
    }


SEEN_GAP = "seen_best_minus_zoo_best_of_k"
"""Prefix of the paired per-task comparison of best-of-K on seen tasks."""


def seen_best_paired(s: FewShotScores) -> dict[str, float]:
    """Seen tasks, per task: the method's best-of-K minus the zoo's best-of-k (both on
    validation), with the 95% Student-t interval of the mean over tasks
    (:func:`weightspace.reporting.spread.paired_difference`), tasks won and lost.

    Keys ``seen_best_minus_zoo_best_of_k_{mean,ci_low,ci_high,wins,losses,tasks}``; none
    without comparisons or seen tasks.
    """
    c = s.comparisons
    if c is None or c.zoo_best_per_task is None or len(c.zoo_best_per_task) == 0:
        return {}
    ours, zoo = s.groups["seen"].best.tolist(), c.zoo_best_per_task.tolist()
    d = paired_difference(ours, zoo)
    losses = sum(a < b for a, b in zip(ours, zoo, strict=True))
    return {
        f"{SEEN_GAP}_mean": d.mean, f"{SEEN_GAP}_ci_low": d.ci_low,
        f"{SEEN_GAP}_ci_high": d.ci_high, f"{SEEN_GAP}_wins": float(d.wins),
        f"{SEEN_GAP}_losses": float(losses), f"{SEEN_GAP}_tasks": float(d.n),
    }  # fmt: skip


def _slug(name: str) -> str:
    """Metric-key form of a variant name: ``"probe (converged)"`` -> ``probe_converged``."""
    return name.replace(" (", "_").replace(")", "").replace(" ", "_")


FINETUNE_KEYS = {"nearest member": "nearest", "lookup": "lookup", "prototype": "prototype",
                 "sampled": "sampled", "random": "random"}  # fmt: skip
"""Fine-tuning initialisation -> its metric-key name (``nearest`` kept from release 1)."""


def comparison_metrics(c: ComparisonScores) -> dict[str, float]:
    """Baselines, ablations, the zoo's best-of-K, fine-tuning and the copy audit.

    Keys: ``{group}_{baseline}_acc`` (prototype, lookup, nearest_member, probe,
    probe_converged), ``{group}_{ablation}_acc`` (unconditional, no_alignment,
    whole_head), ``seen_zoo_best_of_k_acc`` (``comparisons.zoo_best_of`` members) and
    ``seen_zoo_best_of_all_acc`` (every member), ``{group}_finetune_{init}_acc`` and
    ``_lr``, ``memorization_copy_share_{group}`` (and the rule's reference distance,
    threshold and median nearest distance), ``{ablation}_memorization_copy_share_seen``.
    """
    out: dict[str, float] = {
        "seen_zoo_best_of_k_acc": c.zoo_best_of_k,
        "seen_zoo_best_of_all_acc": c.zoo_best_of_all,
    }
    for table in (c.baselines, c.ablations):
        for g, row in table.items():
            out.update({f"{g}_{_slug(n)}_acc": float(v) for n, v in row.items()})
    for g, ft in c.finetune.items():
        for n, curve in ft.curves.items():
            out[f"{g}_finetune_{FINETUNE_KEYS.get(n, _slug(n))}_acc"] = float(curve[:, -1].mean())
            out[f"{g}_finetune_{FINETUNE_KEYS.get(n, _slug(n))}_lr"] = float(ft.lr[n])
    for variant, groups in c.audit.items():
        prefix = "" if variant == "method" else f"{_slug(variant)}_"
        for g, m in groups.items():
            out[f"{prefix}memorization_copy_share_{g}"] = float(m["copy_share"])
            for k in ("copy_reference_distance", "copy_threshold", "copy_nearest_distance_median"):
                out[f"{prefix}memorization_{k}_{g}"] = float(m[k])
    return out


def classwise_metrics(report: Mapping[str, object]) -> dict[str, float]:
    """The class-wise generator's training report: anchor fit and last losses."""
    anchor = dict(report["anchor"])  # type: ignore[arg-type]
    align = list(report["align_losses"])  # type: ignore[arg-type]
    diff = list(report["diffusion_losses"])  # type: ignore[arg-type]
    out = {f"classwise_{k}": float(v) for k, v in anchor.items()}
    if align:
        out["classwise_align_final_loss"] = float(align[-1])
    out["classwise_diffusion_final_loss"] = float(sum(diff[-5:]) / len(diff[-5:]))
    return out


def baselines_figure(s: FewShotScores) -> Figure:
    """Zero-shot test accuracy of the method, its baselines and ablations per group."""
    c = s.comparisons
    rows: dict[str, dict[str, float]] = {}
    for g in ("seen", "unseen", "novel"):
        rows.setdefault("class-wise D2NWG (method)", {})[g] = float(s.groups[g].test.mean())
        if c is not None:
            for table in (c.baselines, c.ablations):
                for n, v in table.get(g, {}).items():
                    rows.setdefault(n.replace("_", " "), {})[g] = float(v)
        rows.setdefault("oracle (full training split)", {})[g] = s.oracle.get(g, float("nan"))
    return plots.grouped_bars(
        rows,
        ["seen", "unseen", "novel"],
        "Few-shot heads: the method beside its baselines and ablations",
    )


def fewshot_figures(
    s: FewShotScores, latents: torch.Tensor, latent_labels: Sequence[str], way: int
) -> dict[str, Figure]:
    """Accuracy histogram, fine-tuning curves and the VAE latents of the zoo heads."""
    g = s.groups
    return {
        "accuracy_hist": plots.accuracy_histogram(
            {
                "zoo heads (seen tasks)": s.zoo_seen_acc.numpy(),
                "sampled (seen)": g["seen"].test.numpy(),
                "sampled (unseen)": g["unseen"].test.numpy(),
                "sampled (novel)": g["novel"].test.numpy(),
            },
            f"D2NWG {way}-way heads: zero-shot test accuracy",
        ),
        "finetune_curves": plots.finetune_curves_figure(
            list(s.finetune.steps),
            s.finetune.curves,
            "unseen tasks: fine-tuning on the 5-shot support set",
        ),
        "latents": plots.latent_projection(
            latents, list(latent_labels), "VAE latents of the zoo heads (PCA)"
        ),
    }


def retrieval_metrics(
    r: RetrievalScores,
    names: Sequence[str],
    audit: Mapping[str, float],
    n_params: int,
    n_zoo: int,
) -> dict[str, float]:
    """Scenario (b)'s metrics, without the ``networks_`` prefix (see :func:`prefixed`)."""
    out = {
        "zoo_mean_acc": float(r.zoo_mean.mean()),
        "zoo_best_acc": float(r.zoo_best.mean()),
        "sampled_mean_acc": float(r.sampled_mean.mean()),
        "sampled_best_acc": float(r.sampled_best.mean()),
        "retrieval_accuracy": float(r.retrieval.mean()),
        "retrieval_accuracy_l2": float(r.retrieval_l2.mean()),
        "retrieval_chance": 1.0 / len(names),
        "nearest_agreement": float(r.agreement.mean()),
        "sample_seconds_per_model": float(r.seconds_per_model),
        "n_datasets": float(len(names)),
        "n_zoo": float(n_zoo),
        "n_candidates": float(r.n_candidates),
        "n_params": float(n_params),
        **dict(audit),
    }
    for i, name in enumerate(names):
        for key, suffix in PER_DATASET.items():
            out[f"{name}_{suffix}"] = float(getattr(r, key)[i])
    return out


def retrieval_figures(r: RetrievalScores, names: Sequence[str]) -> dict[str, Figure]:
    """Per-dataset accuracies of zoo and samples, and the retrieval confusion."""
    k = r.n_candidates
    figure = plots.retrieval_figure(
        list(names),
        {
            "zoo": r.zoo_mean.numpy(),
            f"sampled, mean of {k}": r.sampled_mean.numpy(),
            f"sampled, best of {k} (val)": r.sampled_best.numpy(),
        },
        r.confusion.numpy(),
        f"D2NWG model retrieval: one generator, {len(names)} datasets, whole MLPs",
    )
    return {"networks_accuracy": figure}


def prefixed(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    """``{prefix + key: value}``."""
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()}


__all__ = [
    "SEEN_GAP",
    "STAGE_SECONDS",
    "fewshot_figures",
    "fewshot_metrics",
    "prefixed",
    "retrieval_figures",
    "retrieval_metrics",
    "seen_best_paired",
    "stage_metrics",
]
