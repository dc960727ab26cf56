"""Nodes of D2NWG scenario (a), few-shot classifier heads over a class pool.

Classes of digits and MNIST-1D share one feature space through frozen per-domain
feature extractors (their zoo is ``zoo_d2nwg_backbones``); 5-way heads over pool classes
form the zoo the generator learns (``zoo_d2nwg_heads``); seen / unseen / novel tasks are
scored by :mod:`weightspace.evaluation.d2nwg_protocol`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from matplotlib.figure import Figure

from weightspace.data import SplitDataset, TaskSpec, load_dataset
from weightspace.data.class_pool import (
    HEAD,
    ClassPool,
    build_class_pool,
    few_shot_task_sets,
    pool_dataset,
)
from weightspace.data.features import FrozenFeatureExtractor
from weightspace.device import resolve_device
from weightspace.distributed import SINGLE
from weightspace.evaluation import d2nwg_protocol as proto
from weightspace.evaluation.fewshot import task_datasets
from weightspace.generators.class_rows import head_names, to_rows
from weightspace.generators.classwise import (
    ClassWiseD2NWG,
    anchor_sampler,
    classwise_embedder,
    classwise_sampler,
)
from weightspace.generators.classwise_training import fit_classwise
from weightspace.generators.d2nwg import D2NWG
from weightspace.generators.d2nwg_stages import (
    VAEGateReport,
    ZooTasks,
    ZooWeights,
    feature_bank,
    weight_sampler,
)
from weightspace.reporting import d2nwg_report as rep
from weightspace.zoo import MemberSpec, Zoo
from weightspace_kedro.pipelines.d2nwg.settings import HeadsSettings
from weightspace_kedro.pipelines.d2nwg.stages import checkpoint_policy
from weightspace_kedro.runner import node_world
from weightspace_kedro.typed import typed_settings


def build_settings(params: dict[str, Any]) -> HeadsSettings:
    """Validate ``d2nwg_heads.settings`` once, before any work."""
    return typed_settings(HeadsSettings, params, "d2nwg_heads.settings", "d2nwg")


def plan_backbones(s: HeadsSettings) -> tuple[list[MemberSpec], dict[str, SplitDataset]]:
    """One feature extractor per domain, trained on its seen classes only (the split's
    seed ``s.seed`` is each member's ``data_seed``)."""
    datasets = {d.name: load_dataset(d.name, seed=s.seed) for d in s.pool.domains}
    members = [
        MemberSpec(
            s.backbone.name,
            TaskSpec(d.name, classes=tuple(c for c in range(datasets[d.name].n_classes)
                                           if c not in d.novel)),
            s.seed, s.backbone.train, arch_config=dict(s.backbone.config), data_seed=s.seed,
        )
        for d in s.pool.domains
    ]  # fmt: skip
    return members, datasets


def build_pool(
    backbones: Zoo, members: list[MemberSpec], datasets: dict[str, SplitDataset], s: HeadsSettings
) -> tuple[ClassPool, dict, dict[str, float]]:
    """Features of every class in one pool; zoo / unseen / novel task sets; extractors'
    seen-class test accuracy."""
    extractors = {
        m.task.dataset: FrozenFeatureExtractor(backbones.module(m.member_id)) for m in members
    }
    pool = build_class_pool(datasets, extractors, {d.name: d.novel for d in s.pool.domains})
    p = s.pool
    tasks = few_shot_task_sets(pool, p.way, p.n_zoo, p.n_unseen, p.n_novel, s.seed)
    acc = backbones.index.set_index("model_id")["test_accuracy"]
    report = {f"backbone_{m.task.dataset}_seen_test_acc": float(acc[m.member_id]) for m in members}
    return pool, tasks, report


def plan_heads(
    pool: ClassPool, tasks: dict, s: HeadsSettings
) -> tuple[list[MemberSpec], dict[str, SplitDataset]]:
    """The zoo of heads: one per (zoo task, seed); members carry the data seed (the split
    of the pool's datasets), so another split never reuses heads trained on this one."""
    base = pool_dataset(pool.dataset)
    members = [
        MemberSpec(HEAD["name"], TaskSpec(base.name, classes=tuple(c)), seed, s.heads.train,
                   arch_config=HEAD["config"], data_seed=s.seed)
        for c in tasks["zoo"]
        for seed in range(s.heads.seeds)
    ]  # fmt: skip
    return members, {base.name: base}


def zoo_tasks(pool: ClassPool, tasks: dict, s: HeadsSettings) -> ZooTasks:
    """The zoo tasks in order, conditioned on pool features (``way`` classes each)."""
    base = pool_dataset(pool.dataset)
    datasets = task_datasets(base, tasks["zoo"])
    return ZooTasks(
        names=tuple(TaskSpec(base.name, classes=tuple(c)).name for c in tasks["zoo"]),
        datasets=tuple(datasets),
        bank=feature_bank(datasets, s.pool.way, flatten=False),
        feature_dim=int(base.input_shape[0]),
        n_classes=s.pool.way,
    )


def oracle(pool: ClassPool, tasks: dict, s: HeadsSettings) -> dict[str, float]:
    """Heads trained on each unseen / novel task's full training split (the upper bound)."""
    return proto.oracle_scores(pool.dataset, tasks, s.heads.train, s.evaluation, s.device)


def _fit(
    s: HeadsSettings, weights: ZooWeights, zt: ZooTasks, tasks: dict, **changes: Any
) -> tuple[ClassWiseD2NWG, dict[str, Any]]:
    """One class-wise generator on the zoo's heads (``changes``: config overrides;
    ``align=False`` skips stage 2)."""
    align = changes.pop("align", True)
    world = changes.pop("world", SINGLE)
    cfg = replace(s.classwise.config, **changes)
    device = world.device if world.active else resolve_device(s.device)
    model = ClassWiseD2NWG(cfg, zt.feature_dim, seed=s.seed).to(device)
    rows = to_rows(weights.stacked, head_names(weights.stacked))
    report = fit_classwise(
        model, zt.bank, weights.task_of_row, rows, torch.tensor([list(c) for c in tasks["zoo"]]),
        s.seed, align=align, progress=s.generator.progress, checkpoint=checkpoint_policy(s),
        world=world,
    )  # fmt: skip
    return model, report


def fit_classwise_generator(
    weights: ZooWeights, zt: ZooTasks, tasks: dict, s: HeadsSettings
) -> tuple[ClassWiseD2NWG, dict[str, Any], dict[str, Any]]:
    """The method: class-wise D2NWG (anchor, aligned encoder, per-class diffusion); its
    training report and its checkpoint. Under torchrun its diffusion stage trains
    data-parallel over the ranks."""
    model, report = _fit(s, weights, zt, tasks, world=node_world(s.device))
    return model, report, model.to_bundle(weights.weight_set.spec.fingerprint)


ABLATION_CHANGES: dict[str, dict[str, Any]] = {
    "unconditional": {"conditional": False, "anchor": "none"},
    "no_alignment": {"align": False},
}


def fit_classwise_ablations(
    weights: ZooWeights, zt: ZooTasks, tasks: dict, s: HeadsSettings
) -> dict[str, ClassWiseD2NWG]:
    """The ablations of ``classwise.ablations``, same budget and data as the method."""
    return {a: _fit(s, weights, zt, tasks, **ABLATION_CHANGES[a])[0] for a in s.classwise.ablations}


def evaluate(
    model: ClassWiseD2NWG,
    ablations: dict[str, ClassWiseD2NWG],
    whole_head: D2NWG,
    weights: ZooWeights,
    zoo: Zoo,
    pool: ClassPool,
    tasks: dict,
    oracle_acc: dict[str, float],
    s: HeadsSettings,
) -> proto.FewShotScores:
    """The few-shot protocol with the class-wise generator as the method; its ablations,
    the whole-head (paper) generator and the baselines beside it."""
    groups = proto.fewshot_groups(pool.dataset, tasks, s.evaluation, s.seed)
    heads = proto.HeadZoo(
        weights.stacked, weights.task_of_row,
        torch.tensor(zoo.index["test_accuracy"].to_numpy()), s.heads.train,
        val_accuracy=torch.tensor(zoo.index["val_accuracy"].to_numpy()),
    )  # fmt: skip
    names = head_names(weights.stacked)
    others = {a: classwise_sampler(m, names, s.seed) for a, m in ablations.items()}
    others["whole_head"] = weight_sampler(whole_head, weights.weight_set, s.seed)
    if model.config.anchor != "none":
        others["anchor_only"] = anchor_sampler(model, names)
    # The method's sampler without its sampling rules: temperature 1, no fallback to the
    # anchor, no identification of known classes.
    others["plain_sampling"] = classwise_sampler(
        model, names, s.seed, temperature=1.0, fallback=False, identify=False
    )
    # ... and without identification only: conditioned on the support sets' own 5-shot means.
    others["no_identification"] = classwise_sampler(model, names, s.seed, identify=False)
    scores = proto.evaluate_fewshot(
        lambda: zoo.arch_spec(zoo.model_ids[0]).build(), classwise_sampler(model, names, s.seed),
        classwise_embedder(model), groups, oracle_acc, heads, s.evaluation,
        resolve_device(s.device), task_classes=tasks, ablations=others,
        comparisons=s.comparisons,
    )  # fmt: skip
    device = model.metric.device
    for g in proto.GROUPS:  # share of tasks the generator samples (the rest: anchor heads)
        known = model.known(groups[g].support_sets.to(device))
        scores.extra[f"{g}_known_task_share"] = float(known.float().mean())
    return scores


def report(
    scores: proto.FewShotScores,
    model: D2NWG,
    weights: ZooWeights,
    pool: ClassPool,
    tasks: dict,
    gate: VAEGateReport,
    align_losses: list[float],
    diffusion_losses: list[float],
    classwise_report: dict[str, Any],
    backbone_report: dict[str, float],
    node_seconds: dict[str, float],
    s: HeadsSettings,
) -> tuple[dict[str, float], Figure, Figure, Figure, Figure]:
    """Scenario (a)'s metrics (unprefixed) and its four figures; the whole-head
    generator's VAE latents picture the zoo."""
    with torch.no_grad():
        chunks = weights.weight_set.chunks.to(model.vae.latent_scale.device)
        latents = model.vae.to_latent(chunks).flatten(1).cpu()
    names, way = pool.dataset.class_names, s.pool.way
    mix = [
        sum(names[c].startswith("digits") for c in tasks["zoo"][int(t)])
        for t in weights.task_of_row
    ]
    labels = [f"{m} digits + {way - m} mnist1d classes" for m in mix]
    figs = rep.fewshot_figures(scores, latents, labels, way)
    metrics = {
        **rep.fewshot_metrics(scores),
        **backbone_report,
        **rep.stage_metrics(gate, align_losses, diffusion_losses, node_seconds),
        **rep.classwise_metrics(classwise_report),
    }
    return (metrics, figs["accuracy_hist"], figs["finetune_curves"], figs["latents"],
            rep.baselines_figure(scores))  # fmt: skip
