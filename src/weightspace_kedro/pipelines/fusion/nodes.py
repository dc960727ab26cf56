"""Nodes of the fusion pipeline: typed settings, then one call into
:mod:`weightspace.evaluation.fusion_protocol` per stage (CLAFusion §4), then the report
(:mod:`weightspace.reporting.fusion_report`). No node times itself: stage wall times come
from the project hook (``fusion.node_seconds``)."""

from __future__ import annotations

import json
from typing import Any

import torch
from matplotlib.figure import Figure

from weightspace.data import SplitDataset
from weightspace.device import resolve_device
from weightspace.errors import EmptyZooError, InvalidParameterError
from weightspace.evaluation import fusion_protocol as fp
from weightspace.evaluation.fusion_scores import CostScores, FinetuneScores, TeacherStudentScores
from weightspace.reporting import fusion_report as fr
from weightspace.zoo import Zoo
from weightspace.zoo.grid import ArchEntry
from weightspace_kedro.pipelines.fusion.settings import (
    GRID,
    KEY,
    FusionSettings,
    resolve_architectures,
)
from weightspace_kedro.typed import typed_settings

Archs = dict[str, ArchEntry]


def build_settings(params: dict[str, Any], grid: dict[str, Any]) -> tuple[FusionSettings, Archs]:
    """``fusion.settings`` typed and validated, and the ``zoo_fusion.grid`` architectures
    it names: the pipeline's first node, so a bad value fails in well under a second,
    before the zoo is trained.

    Raises
    ------
    InvalidParameterError
        Naming the key (under ``fusion.settings``), the value, what is allowed and the
        parameters file (``conf/base/parameters_fusion.yml`` or the ``--env`` override).
    """
    try:
        settings = typed_settings(FusionSettings, params, KEY, "fusion")
    except InvalidParameterError as exc:
        if KEY in str(exc):
            raise
        # a library config's own check names its field relative to fusion.settings
        raise InvalidParameterError(f"{KEY}: {exc}") from exc
    try:
        return settings, resolve_architectures(settings, grid)
    except InvalidParameterError as exc:  # a rule across fusion.settings and the zoo grid
        if "parameters_fusion.yml" in str(exc):
            raise
        raise InvalidParameterError(
            f"{exc} (in conf/<env>/parameters_fusion.yml; conf/base holds the defaults)"
        ) from exc


def _members(zoo: Zoo, dataset: str, arch: ArchEntry) -> list[torch.nn.Module]:
    """The final checkpoints of one grid architecture on ``dataset``, ordered by seed."""
    members = zoo.final_modules(dataset, arch.name, arch.config)
    if not members:
        raise EmptyZooError(
            f"the fusion zoo has no {arch.key!r} ({arch.name} {json.dumps(arch.config)}) "
            f"models on {dataset!r}; train the zoo with that entry of {GRID}"
        )
    return members


def collect_parents(
    zoo: Zoo, datasets: dict[str, SplitDataset], settings: FusionSettings, archs: Archs
) -> dict[str, dict[str, Any]]:
    """Per experiment: the deep and shallow parents (ordered by seed) and the dataset."""
    return {
        e.name: {
            "deep": _members(zoo, e.dataset, archs[e.deep]),
            "shallow": _members(zoo, e.dataset, archs[e.shallow]),
            "dataset": datasets[e.dataset],
        }
        for e in settings.experiments
    }


def fuse(parents: dict[str, dict[str, Any]], settings: FusionSettings) -> dict[str, Any]:
    """One-shot fusion of every pair and of K alternating models (Tables 1-2, left)."""
    out = {}
    for name, p in parents.items():
        out[name] = fp.one_shot(
            p["deep"], p["shallow"], p["dataset"], settings.cla, settings.ks,
            progress=settings.progress, desc=name,
        )  # fmt: skip
    return out


def finetune(
    parents: dict[str, dict[str, Any]], shots: dict[str, Any], settings: FusionSettings
) -> dict[str, FinetuneScores]:
    """Retrain fused models, parents, depth-aligned and random inits for the same epochs."""
    device = resolve_device(settings.device)
    out = {}
    for name, p in parents.items():
        cfg = settings.finetune_for(name)
        out[name] = fp.finetune_comparison(
            p["deep"], p["shallow"], shots[name], p["dataset"], cfg, device=device,
            progress=settings.progress, desc=name,
        )  # fmt: skip
    return out


def cost(
    parents: dict[str, dict[str, Any]], shots: dict[str, Any], settings: FusionSettings
) -> dict[str, CostScores]:
    """Training the fused architecture from scratch to the one-shot fused accuracy."""
    device = resolve_device(settings.device)
    out = {}
    for name, shot in shots.items():
        val_acc, seconds = shot.scores.mean("clafusion_val_acc"), shot.scores.mean("fusion_seconds")
        out[name] = fp.fusion_cost(
            val_acc, shot.fused[0], parents[name]["dataset"], seconds, settings.cost, device,
            progress=settings.progress, desc=name,
        )  # fmt: skip
    return out


def collect_teacher_student(
    zoo: Zoo, datasets: dict[str, SplitDataset], settings: FusionSettings, archs: Archs
) -> dict[str, Any]:
    """Teachers and students of the teacher-student experiment (empty when disabled)."""
    kd = settings.kd
    if not kd.enabled:
        return {}
    return {
        "teachers": _members(zoo, kd.dataset, archs[kd.teacher]),
        "students": _members(zoo, kd.dataset, archs[kd.student]),
        "dataset": datasets[kd.dataset],
    }


def distill(pairs: dict[str, Any], settings: FusionSettings) -> dict[str, TeacherStudentScores]:
    """Teacher-student: KD into random / pre-trained / depth-aligned / fused students."""
    if not pairs:
        return {}
    scores = fp.teacher_student(
        pairs["teachers"], pairs["students"], pairs["dataset"], settings.cla, settings.kd,
        resolve_device(settings.device), progress=settings.progress, desc=settings.kd.name,
    )  # fmt: skip
    return {settings.kd.name: scores}


def fused_bundle(shots: dict[str, Any]) -> dict[str, Any]:
    """The one-shot CLAFusion models of every pair, as one tensor bundle (06_models)."""
    tensors, meta = {}, {}
    for name, shot in shots.items():
        for i, (model, pair) in enumerate(zip(shot.fused, shot.scores.pairs, strict=True)):
            for k, v in model.state_dict().items():
                tensors[f"{name}/{i}/{k}"] = v.detach().cpu().contiguous()
            mapping = [list(group) for group in pair.mapping]
            meta[f"{name}/{i}"] = {"mapping": mapping, "class": type(model).__name__}
    return {"tensors": tensors, "metadata": meta}


def report(
    shots: dict[str, Any],
    finetuned: dict[str, FinetuneScores],
    costs: dict[str, CostScores],
    distilled: dict[str, TeacherStudentScores],
    settings: FusionSettings,
    node_seconds: dict[str, float],
) -> tuple[dict[str, float], str, str, Figure, Figure]:
    """metrics.json (headline experiment's keys unprefixed), tables, details, plots."""
    scores = {name: shot.scores for name, shot in shots.items()}
    return fr.assemble_report(scores, finetuned, costs, distilled, settings.headline, node_seconds)
