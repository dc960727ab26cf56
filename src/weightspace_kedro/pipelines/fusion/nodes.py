"""Nodes of the fusion pipeline: thin calls into :mod:`weightspace.fusion` and
:mod:`weightspace.evaluation.fusion_eval` (CLAFusion §4 protocol)."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import torch
from matplotlib.figure import Figure

from weightspace.data import SplitDataset
from weightspace.device import resolve_device
from weightspace.ensembles.kd import KDConfig
from weightspace.errors import EmptyZooError
from weightspace.evaluation import fusion_eval as fe
from weightspace.fusion import CLAFusionConfig, OTFusionConfig
from weightspace.reporting import fusion_report as fr
from weightspace.zoo import Zoo

log = logging.getLogger(__name__)


def protocol_from(settings: dict[str, Any]) -> fe.FusionProtocol:
    """The library's frozen configs from ``fusion.settings``."""
    ot = OTFusionConfig(**settings.get("ot", {}))
    cla = CLAFusionConfig(ot=ot, **settings.get("cla", {}))
    kd = settings.get("kd") or {}
    return fe.FusionProtocol(
        cla=cla,
        ks=tuple(int(k) for k in settings.get("ks", (2, 4, 6))),
        finetune=fe.FinetuneConfig(**settings.get("finetune", {})),
        kd=KDConfig(**kd["train"]) if kd.get("enabled", False) else None,
        kd_temperatures=tuple(float(t) for t in kd.get("temperatures", (2.0, 4.0))),
        kd_alphas=tuple(float(a) for a in kd.get("alphas", (0.5, 0.9))),
        cost=fe.CostConfig(**settings.get("cost", {})),
    )


def _device(settings: dict[str, Any]) -> torch.device:
    """Where fine-tuning, distillation and the cost runs train (fusion stays on the CPU)."""
    return resolve_device(settings.get("device", "auto"))


def _models(zoo: Zoo, dataset: str, arch: dict[str, Any]) -> list[torch.nn.Module]:
    index = zoo.index[zoo.index["is_final"].astype(bool)]
    config = json.dumps(arch.get("config", {}), sort_keys=True, separators=(",", ":"))
    same = index["arch_config"].map(
        lambda c: json.dumps(json.loads(c), sort_keys=True, separators=(",", ":"))
    )
    rows = index[(index["task"] == dataset) & (index["arch"] == arch["name"]) & (same == config)]
    if rows.empty:
        raise EmptyZooError(
            f"the fusion zoo has no {arch['name']} {config} models on {dataset!r}; add the "
            "architecture and dataset to zoo_fusion.grid in parameters_fusion.yml"
        )
    return [zoo.module(m) for m in rows.sort_values("seed")["model_id"]]


def collect_parents(
    zoo: Zoo, datasets: dict[str, SplitDataset], settings: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Per experiment: the deep and shallow parents (ordered by seed) and the dataset."""
    out = {}
    for exp in settings["experiments"]:
        out[exp["name"]] = {
            "deep": _models(zoo, exp["dataset"], exp["deep"]),
            "shallow": _models(zoo, exp["dataset"], exp["shallow"]),
            "dataset": datasets[exp["dataset"]],
        }
    return out


def fuse(parents: dict[str, dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """One-shot fusion of every pair and of K alternating models (Tables 1-2, left)."""
    protocol = protocol_from(settings)
    return {
        name: fe.one_shot(p["deep"], p["shallow"], p["dataset"], protocol)
        for name, p in parents.items()
    }


def finetune(
    parents: dict[str, dict[str, Any]], shots: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    """Retrain fused models, parents, depth-aligned and random inits for the same epochs."""
    protocol = protocol_from(settings)
    overrides = {e["name"]: e.get("finetune") or {} for e in settings["experiments"]}
    out = {}
    for name, p in parents.items():
        shot = shots[name]
        cfg = dataclasses.replace(protocol.finetune, **overrides.get(name, {}))
        res = fe.finetune_comparison(
            p["deep"], p["shallow"], shot, p["dataset"], cfg, device=_device(settings)
        )
        cost = fe.fusion_cost_ratio(
            shot["metrics"]["clafusion_val_acc"], shot["fused"][0], p["dataset"],
            shot["metrics"]["fusion_seconds"], protocol.cost, _device(settings),
        )  # fmt: skip
        out[name] = {"metrics": {**res["metrics"], **cost}, "curves": res["curves"]}
    return out


def collect_teacher_student(
    zoo: Zoo, datasets: dict[str, SplitDataset], settings: dict[str, Any]
) -> dict[str, Any]:
    """Teachers and students of the teacher-student experiment (empty when disabled)."""
    kd = settings.get("kd") or {}
    if not kd.get("enabled", False):
        return {}
    return {
        "name": kd.get("name", "teacher_student"),
        "teachers": _models(zoo, kd["dataset"], kd["teacher"]),
        "students": _models(zoo, kd["dataset"], kd["student"]),
        "dataset": datasets[kd["dataset"]],
    }


def distill(pairs: dict[str, Any], settings: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Teacher-student: KD into random / pre-trained / depth-aligned / fused students."""
    if not pairs:
        return {}
    protocol = protocol_from(settings)
    n_pairs = int(settings["kd"].get("n_pairs", 1))
    return {
        pairs["name"]: fe.teacher_student(
            pairs["teachers"],
            pairs["students"],
            pairs["dataset"],
            protocol,
            n_pairs,
            _device(settings),
        )
    }


def fused_bundle(shots: dict[str, Any]) -> dict[str, Any]:
    """The one-shot CLAFusion models of every pair, as one tensor bundle (06_models)."""
    tensors, meta = {}, {}
    for name, shot in shots.items():
        for i, model in enumerate(shot["fused"]):
            for k, v in model.state_dict().items():
                tensors[f"{name}/{i}/{k}"] = v.detach().cpu().contiguous()
            meta[f"{name}/{i}"] = {
                "mapping": shot["pairs"][i]["mapping"],
                "class": type(model).__name__,
            }
    return {"tensors": tensors, "metadata": meta}


def report(
    shots: dict[str, Any],
    finetuned: dict[str, Any],
    distilled: dict[str, dict[str, float]],
    settings: dict[str, Any],
) -> tuple[dict[str, float], str, str, Figure, Figure]:
    """metrics.json (headline experiment's keys unprefixed), tables, details, plots."""
    return fr.assemble_report(shots, finetuned, distilled, settings.get("headline"))
