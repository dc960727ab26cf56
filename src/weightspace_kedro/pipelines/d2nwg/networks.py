"""Nodes of D2NWG scenario (b): whole networks over related datasets (model retrieval).

One generator learns the zoo of whole MLPs trained on several datasets of one input
shape (digits and transformed digits, each a separate 10-class dataset) and generates a
network per seen dataset from a 5-shot-per-class support set of it (flattened raw inputs
as features). MNIST-1D is not part of this scenario: its inputs are ``(1, 40)``, so its
MLP is another architecture, and one whole-network generator produces one architecture
(MNIST-1D is covered by scenario (a), where heads over a shared feature space are
generated). Every metric of this scenario is prefixed ``networks_``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from weightspace.data import TaskSpec, load_dataset, make_task
from weightspace.data.features import ClassFeatureBank
from weightspace.device import resolve_device
from weightspace.evaluation.fewshot import accuracy_on
from weightspace.evaluation.memorization import memorization_audit
from weightspace.evaluation.retrieval import (
    check_shared_architecture,
    evaluate_retrieval,
    flatten_sets,
)
from weightspace.generators.d2nwg import (
    D2NWG,
    D2NWGConfig,
    check_vae_gate,
    fit_alignment,
    fit_diffusion,
    fit_vae,
    reconstruct,
)
from weightspace.reporting.d2nwg_plots import retrieval_figure
from weightspace.weights import ParameterSpec, WeightSet
from weightspace.zoo import (
    MemberSpec,
    Zoo,
    ZooRunOptions,
    expand_tasks,
    expand_train_configs,
    train_zoo,
)
from weightspace.zoo.grid import expand_seeds
from weightspace.zoo.tasks import TaskStack

PER_DATASET = {
    "zoo_mean": "zoo_mean_acc",
    "sampled_mean": "sampled_mean_acc",
    "sampled_best": "sampled_best_acc",
    "retrieval": "retrieval_accuracy",
}


def task_slug(spec: TaskSpec) -> str:
    """Metric-key name of a task: ``digits``, ``digits_rotate90``, ``digits_permute_seed1``."""
    parts = [spec.dataset]
    if spec.classes is not None:
        parts.append("c" + "-".join(str(c) for c in spec.classes))
    if spec.transform is not None:
        p = spec.transform_param
        parts.append(spec.transform + (f"{p:g}".replace(".", "p") if p else ""))
        if spec.transform_seed:
            parts.append(f"seed{spec.transform_seed}")
    return "_".join(parts)


def build_tasks(params: dict[str, Any]) -> dict[str, Any]:
    """The seen datasets: grid task entries of the base datasets, one architecture."""
    net = params["networks"]
    base = {
        name: load_dataset(name, seed=params["seed"], **dict(kw or {}))
        for name, kw in net["datasets"].items()
    }
    specs = expand_tasks(net["tasks"], {n: d.n_classes for n, d in base.items()})
    datasets = [make_task(base[s.dataset], s) for s in specs]
    input_shape, n_classes = check_shared_architecture(datasets)
    return {
        "specs": specs,
        "datasets": datasets,
        "base": base,
        "names": [task_slug(s) for s in specs],
        "input_shape": input_shape,
        "n_classes": n_classes,
    }


def train_networks(tasks: dict, previous: Zoo, params: dict[str, Any]) -> Zoo:
    """The zoo of whole networks: dataset x seed x training config (grid semantics); resumes."""
    net = params["networks"]
    members = [
        MemberSpec(net["arch"]["name"], spec, seed, train, arch_config=net["arch"]["config"])
        for spec in tasks["specs"]
        for seed in expand_seeds(net["seeds"])
        for train in expand_train_configs(net["train"])
    ]
    options = ZooRunOptions(device=params["device"], progress=net.get("progress", True))
    zoo, _ = train_zoo(members, tasks["base"], previous, options)
    return zoo


def vectorize_networks(zoo: Zoo, tasks: dict, params: dict[str, Any]) -> dict[str, Any]:
    """Weight set (chunks, normalization) of the networks and each one's dataset index."""
    ids = zoo.model_ids
    spec = ParameterSpec.from_module(zoo.arch_spec(ids[0]).build())
    ws = WeightSet.build(
        zoo.stack(ids),
        spec,
        ids,
        zoo.row(ids[0])["arch_key"],
        chunk_size=params["networks"]["generator"]["chunk_size"],
    )
    pos = {s.name: i for i, s in enumerate(tasks["specs"])}
    return {
        "weight_set": ws,
        "task_of_row": torch.tensor([pos[t] for t in zoo.index["task"]]),
        "template": zoo.arch_spec(ids[0]).build(),
    }


def train_networks_vae(
    networks: dict, tasks: dict, zoo: Zoo, params: dict[str, Any]
) -> tuple[D2NWG, dict]:
    """Stage 1 + the VAE gate on whole networks: decoded zoo networks keep their accuracy."""
    gen_p, dev = params["networks"]["generator"], resolve_device(params["device"])
    ws: WeightSet = networks["weight_set"]
    cfg = D2NWGConfig.from_dict(gen_p["d2nwg"])
    feature_dim = math.prod(tasks["input_shape"])
    model = D2NWG(cfg, ws.layout, feature_dim, tasks["n_classes"], seed=params["seed"]).to(dev)
    start = time.perf_counter()
    losses = fit_vae(model, ws.chunks.to(dev), params["seed"], progress=False)
    recon = ws.decode(reconstruct(model, ws.chunks.to(dev)).cpu())
    test = TaskStack.from_splits([d.test for d in tasks["datasets"]])
    rows, template = networks["task_of_row"], networks["template"]
    acc_rec = accuracy_on(template, recon, rows, test)
    acc_orig = accuracy_on(template, zoo.stack(zoo.model_ids), rows, test)
    ratio = check_vae_gate(acc_rec, acc_orig, gen_p["vae_gate"])
    return model, {
        "networks_vae_recon_acc_ratio": ratio,
        "networks_vae_recon_mean_acc": float(acc_rec.mean()),
        "networks_vae_final_loss": losses[-1],
        "networks_vae_seconds": time.perf_counter() - start,
    }


def align_networks_encoder(
    model: D2NWG, networks: dict, tasks: dict, params: dict[str, Any]
) -> tuple[D2NWG, dict, ClassFeatureBank]:
    """Stage 2: the dataset encoder (flattened raw inputs per class) aligned to the latents."""
    dev = resolve_device(params["device"])
    bank = ClassFeatureBank.from_splits(
        [(d.train.x.flatten(1), d.train.y) for d in tasks["datasets"]], tasks["n_classes"]
    )
    start = time.perf_counter()
    losses = fit_alignment(
        model, bank, networks["task_of_row"], networks["weight_set"].chunks.to(dev),
        params["seed"],
    )  # fmt: skip
    report = {
        "networks_align_final_loss": losses[-1],
        "networks_align_seconds": time.perf_counter() - start,
    }
    return model, report, bank


def train_networks_diffusion(
    model: D2NWG, networks: dict, bank: ClassFeatureBank, params: dict[str, Any]
) -> tuple[D2NWG, dict, dict]:
    """Stage 3: latent diffusion over whole networks; returns the checkpoint too."""
    dev = resolve_device(params["device"])
    ws: WeightSet = networks["weight_set"]
    start = time.perf_counter()
    losses = fit_diffusion(
        model, bank, networks["task_of_row"], ws.chunks.to(dev), params["seed"],
        progress=params["networks"]["generator"].get("progress", True),
    )  # fmt: skip
    report = {
        "networks_diffusion_final_loss": sum(losses[-5:]) / len(losses[-5:]),
        "networks_diffusion_seconds": time.perf_counter() - start,
    }
    return model, report, model.to_bundle(ws.spec.fingerprint)


def evaluate_networks(
    model: D2NWG,
    networks: dict,
    zoo: Zoo,
    tasks: dict,
    vae_report: dict,
    align_report: dict,
    diffusion_report: dict,
    params: dict[str, Any],
):
    """Sampled vs zoo accuracy per seen dataset, retrieval, memorization; metrics + plot."""
    ev_p, dev = params["networks"]["evaluation"], resolve_device(params["device"])
    ws: WeightSet = networks["weight_set"]
    template, zoo_task = networks["template"], networks["task_of_row"]
    gen = torch.Generator(device=dev).manual_seed(params["seed"])

    def sampler(sets: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        return ws.decode(model.sample(flatten_sets(sets).to(dev), n, gen).cpu())

    zoo_stack = zoo.stack(zoo.model_ids)
    k = ev_p["n_candidates"]
    res = evaluate_retrieval(
        template, sampler, tasks["datasets"], zoo_stack, zoo_task, k, ev_p["shots"],
        params["seed"],
    )  # fmt: skip
    audit = memorization_audit(
        template, res["stacked"], res["sample_task"], zoo_stack, zoo_task,
        TaskStack.from_splits([d.test for d in tasks["datasets"]]),
    )  # fmt: skip
    names = tasks["names"]
    metrics = {
        "networks_zoo_mean_acc": float(res["zoo_mean"].mean()),
        "networks_zoo_best_acc": float(res["zoo_best"].mean()),
        "networks_sampled_mean_acc": float(res["sampled_mean"].mean()),
        "networks_sampled_best_acc": float(res["sampled_best"].mean()),
        "networks_retrieval_accuracy": float(res["retrieval"].mean()),
        "networks_retrieval_accuracy_l2": float(res["retrieval_l2"].mean()),
        "networks_retrieval_chance": 1.0 / len(names),
        "networks_nearest_agreement": float(res["agreement"].mean()),
        "networks_sample_seconds_per_model": float(res["seconds_per_model"]),
        "networks_n_datasets": float(len(names)),
        "networks_n_zoo": float(len(zoo)),
        "networks_n_candidates": float(k),
        "networks_n_params": float(ws.spec.numel),
        **{f"networks_{key}": v for key, v in audit.items()},
        **vae_report,
        **align_report,
        **diffusion_report,
    }
    for i, name in enumerate(names):
        for key, suffix in PER_DATASET.items():
            metrics[f"networks_{name}_{suffix}"] = float(res[key][i])
    figure = retrieval_figure(
        names,
        {
            "zoo": res["zoo_mean"].numpy(),
            f"sampled, mean of {k}": res["sampled_mean"].numpy(),
            f"sampled, best of {k} (val)": res["sampled_best"].numpy(),
        },
        res["confusion"].numpy(),
        f"D2NWG model retrieval: one generator, {len(names)} datasets, whole MLPs",
    )
    return metrics, figure
