"""Nodes of the D2NWG pipeline (few-shot classifier heads): thin calls into the library."""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from weightspace.data import TaskSpec, load_dataset
from weightspace.data.base import SplitDataset
from weightspace.data.class_pool import ClassPool, build_class_pool, few_shot_task_sets
from weightspace.data.features import ClassFeatureBank, FrozenFeatureExtractor
from weightspace.device import resolve_device
from weightspace.evaluation.d2nwg_fewshot import HEAD, evaluate_fewshot, pool_dataset, pool_name
from weightspace.evaluation.fewshot import accuracy_on, task_datasets
from weightspace.generators.d2nwg import (
    D2NWG,
    D2NWGConfig,
    check_vae_gate,
    fit_alignment,
    fit_diffusion,
    fit_vae,
    reconstruct,
)
from weightspace.nets import build_model
from weightspace.weights import ParameterSpec, WeightSet
from weightspace.zoo import MemberSpec, TrainConfig, Zoo, ZooRunOptions, train_zoo
from weightspace.zoo.tasks import TaskStack


def train_backbones(
    params: dict[str, Any],
) -> tuple[dict[str, FrozenFeatureExtractor], dict[str, SplitDataset], dict]:
    """Train one feature extractor per domain on its seen classes only."""
    datasets, extractors, report = {}, {}, {}
    opts = ZooRunOptions(device=params["device"], progress=False)
    for name, spec in params["domains"].items():
        ds = load_dataset(name, seed=params["seed"])
        seen = tuple(c for c in range(ds.n_classes) if c not in set(spec["novel"]))
        bb = params["backbone"]
        member = MemberSpec(
            bb["name"],
            TaskSpec(name, classes=seen),
            params["seed"],
            TrainConfig(**bb["train"]),
            arch_config=bb["config"],
        )
        zoo, _ = train_zoo([member], {name: ds}, options=opts)
        extractors[name] = FrozenFeatureExtractor(zoo.module(member.member_id))
        datasets[name] = ds
        report[f"backbone_{name}_seen_test_acc"] = float(zoo.index["test_accuracy"].iloc[0])
    return extractors, datasets, report


def build_pool(datasets, extractors, params: dict[str, Any]) -> tuple[ClassPool, dict]:
    """Features of every class in one pool and the zoo / unseen / novel task sets."""
    novel = {name: spec["novel"] for name, spec in params["domains"].items()}
    pool = build_class_pool(datasets, extractors, novel)
    ts = params["tasks"]
    tasks = few_shot_task_sets(
        pool, ts["way"], ts["n_zoo"], ts["n_unseen"], ts["n_novel"], params["seed"]
    )
    return pool, tasks


def train_heads(pool: ClassPool, tasks: dict, previous: Zoo, params: dict[str, Any]) -> Zoo:
    """The zoo of heads: one per (zoo task, seed, hyper-parameters); resumes."""
    name = pool_name(pool)
    data = pool_dataset(pool)
    hz = params["heads_zoo"]
    members = [
        MemberSpec(
            HEAD["name"],
            TaskSpec(name, classes=tuple(c)),
            seed,
            TrainConfig(**hz["train"]),
            arch_config=HEAD["config"],
        )
        for c in tasks["zoo"]
        for seed in range(hz["seeds"])
    ]
    zoo, _ = train_zoo(
        members,
        {name: data},
        previous,
        ZooRunOptions(device=params["device"], progress=hz.get("progress", True)),
    )
    return zoo


def vectorize_heads(
    zoo: Zoo, pool: ClassPool, tasks: dict, params: dict[str, Any]
) -> dict[str, Any]:
    """Weight set of the heads (chunks, normalization) and each head's zoo-task index."""
    ids = zoo.model_ids
    spec = ParameterSpec.from_module(zoo.arch_spec(ids[0]).build())
    ws = WeightSet.build(
        zoo.stack(ids),
        spec,
        ids,
        zoo.row(ids[0])["arch_key"],
        chunk_size=params["generator"]["chunk_size"],
    )
    task_pos = {tuple(c): i for i, c in enumerate(tasks["zoo"])}
    classes = [tuple(TaskSpec.from_dict(json.loads(s)).classes) for s in zoo.index["task_spec"]]
    return {"weight_set": ws, "task_of_row": torch.tensor([task_pos[c] for c in classes])}


def _device(params) -> torch.device:
    return resolve_device(params["device"])


def train_weight_vae(
    heads: dict, pool: ClassPool, tasks: dict, zoo: Zoo, params: dict[str, Any]
) -> tuple[D2NWG, dict]:
    """Stage 1 + the VAE gate: decoded zoo heads must keep their accuracy."""
    ws: WeightSet = heads["weight_set"]
    dev = _device(params)
    cfg = D2NWGConfig.from_dict(params["generator"]["d2nwg"])
    model = D2NWG(
        cfg, ws.layout, pool.dataset.input_shape[0], params["tasks"]["way"], seed=params["seed"]
    ).to(dev)
    start = time.perf_counter()
    losses = fit_vae(model, ws.chunks.to(dev), params["seed"], progress=False)
    recon = ws.decode(reconstruct(model, ws.chunks.to(dev)).cpu())
    template = build_model(
        HEAD["name"], HEAD["config"], pool.dataset.input_shape, params["tasks"]["way"]
    )
    test = TaskStack.from_splits([d.test for d in task_datasets(pool.dataset, tasks["zoo"])])
    acc_rec = accuracy_on(template, recon, heads["task_of_row"], test)
    acc_orig = accuracy_on(template, zoo.stack(zoo.model_ids), heads["task_of_row"], test)
    ratio = check_vae_gate(acc_rec, acc_orig, params["generator"]["vae_gate"])
    report = {
        "vae_recon_acc_ratio": ratio,
        "vae_final_loss": losses[-1],
        "vae_seconds": time.perf_counter() - start,
        "vae_recon_mean_acc": float(acc_rec.mean()),
        "zoo_mean_acc": float(acc_orig.mean()),
    }
    return model, report


def align_encoder(
    model: D2NWG, heads: dict, pool: ClassPool, tasks: dict, params: dict[str, Any]
) -> tuple[D2NWG, dict, ClassFeatureBank]:
    """Stage 2: dataset encoder aligned to the frozen latents (contrastive)."""
    dev = _device(params)
    bank = ClassFeatureBank.from_splits(
        [(d.train.x, d.train.y) for d in task_datasets(pool.dataset, tasks["zoo"])],
        params["tasks"]["way"],
    )
    start = time.perf_counter()
    losses = fit_alignment(
        model, bank, heads["task_of_row"], heads["weight_set"].chunks.to(dev), params["seed"]
    )
    return (
        model,
        {"align_final_loss": losses[-1], "align_seconds": time.perf_counter() - start},
        bank,
    )


def train_diffusion(
    model: D2NWG, heads: dict, bank: ClassFeatureBank, params: dict[str, Any]
) -> tuple[D2NWG, dict, dict]:
    """Stage 3: latent diffusion conditioned on the frozen encoder; returns the checkpoint."""
    dev = _device(params)
    start = time.perf_counter()
    losses = fit_diffusion(
        model,
        bank,
        heads["task_of_row"],
        heads["weight_set"].chunks.to(dev),
        params["seed"],
        progress=params["generator"].get("progress", True),
    )
    report = {
        "diffusion_final_loss": sum(losses[-5:]) / len(losses[-5:]),
        "diffusion_seconds": time.perf_counter() - start,
    }
    return model, report, model.to_bundle(heads["weight_set"].spec.fingerprint)


def evaluate(
    model: D2NWG, heads: dict, zoo: Zoo, pool: ClassPool, tasks: dict, params: dict[str, Any]
) -> dict:
    """Seen / unseen / novel evaluation (see :func:`evaluate_fewshot`)."""
    return evaluate_fewshot(model, heads, zoo, pool, tasks, params)


def report(
    evaluation: dict,
    backbone_report: dict,
    vae_report: dict,
    align_report: dict,
    diffusion_report: dict,
    networks_metrics: dict,
):
    """Flat metrics.json (scenario (a), then scenario (b)'s ``networks_*``) and 3 figures."""
    metrics = {
        **evaluation["metrics"],
        **backbone_report,
        **vae_report,
        **align_report,
        **diffusion_report,
        **networks_metrics,
    }
    f = evaluation["figures"]
    return metrics, f["accuracy_hist"], f["finetune_curves"], f["latents"]
