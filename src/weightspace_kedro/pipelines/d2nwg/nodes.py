"""Nodes of the D2NWG pipeline (few-shot classifier heads): thin calls into the library."""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from weightspace.data import TaskSpec, dataset_card, load_dataset
from weightspace.data.base import SplitDataset
from weightspace.data.class_pool import ClassPool, build_class_pool, few_shot_task_sets
from weightspace.data.features import ClassFeatureBank, FrozenFeatureExtractor
from weightspace.device import resolve_device
from weightspace.evaluation import d2nwg_eval as ev
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
from weightspace.reporting import d2nwg_plots as plots
from weightspace.weights import ParameterSpec, WeightSet
from weightspace.zoo import MemberSpec, TrainConfig, Zoo, ZooRunOptions, train_zoo
from weightspace.zoo.tasks import TaskStack

HEAD = {"name": "mlp", "config": {"hidden": []}}


def _pool_name(pool: ClassPool) -> str:
    return f"pool-{dataset_card(pool.dataset)['sha256'][:10]}"


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
    name = _pool_name(pool)
    data = SplitDataset(
        name,
        pool.dataset.train,
        pool.dataset.val,
        pool.dataset.test,
        pool.dataset.n_classes,
        pool.dataset.input_shape,
        pool.dataset.class_names,
    )
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
    model = D2NWG(cfg, ws.layout, pool.dataset.input_shape[0], params["tasks"]["way"]).to(dev)
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
    """Seen / unseen / novel evaluation, fine-tuning curves, memorization audit."""
    ev_p, dev = params["evaluation"], _device(params)
    ws: WeightSet = heads["weight_set"]
    way = params["tasks"]["way"]
    template = build_model(HEAD["name"], HEAD["config"], pool.dataset.input_shape, way)
    gen = torch.Generator(device=dev).manual_seed(params["seed"])

    def sampler(sets: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        chunks = model.sample(sets.to(dev), n, gen).cpu()
        return ws.decode(chunks)

    groups = {
        "seen": task_datasets(pool.dataset, tasks["zoo"][: ev_p["n_seen"]]),
        "unseen": task_datasets(pool.dataset, tasks["unseen"]),
        "novel": task_datasets(pool.dataset, tasks["novel"]),
    }
    data = {g: ev.group_data(d, ev_p["shots"], params["seed"]) for g, d in groups.items()}
    k = ev_p["n_candidates"]
    res = {
        g: ev.evaluate_group(template, sampler, data[g], k, "val" if g == "seen" else "support")
        for g in groups
    }
    # Oracle heads: trained on each task's full training split, zoo hyper-parameters.
    oracle = {}
    for g in ("unseen", "novel"):
        name = _pool_name(pool)
        members = [
            MemberSpec(
                HEAD["name"],
                TaskSpec(name, classes=tuple(c)),
                s,
                TrainConfig(**params["heads_zoo"]["train"]),
                arch_config=HEAD["config"],
            )
            for c in tasks[g]
            for s in range(2)
        ]
        base = SplitDataset(
            name,
            pool.dataset.train,
            pool.dataset.val,
            pool.dataset.test,
            pool.dataset.n_classes,
            pool.dataset.input_shape,
            pool.dataset.class_names,
        )
        oz, _ = train_zoo(
            members, {name: base}, options=ZooRunOptions(device="cpu", progress=False)
        )
        oracle[g] = float(oz.index["test_accuracy"].mean())
    seen_n = ev_p["n_seen"] * params["heads_zoo"]["seeds"]
    zoo_ids = zoo.model_ids
    zoo_stack = zoo.stack(zoo_ids)
    zoo_task = heads["task_of_row"]
    seen_mask = zoo_task < ev_p["n_seen"]
    zoo_seen_acc = torch.tensor(zoo.index["test_accuracy"].to_numpy())[seen_mask]
    # Fine-tuning on the unseen tasks' support sets from three initialisations.
    u = data["unseen"]
    best = res["unseen"]["best"]
    n_u = len(groups["unseen"])
    cand = res["unseen"]["stacked"]
    sel = accuracy_on(template, cand, res["unseen"]["task_index"], u.support).view(n_u, k).argmax(1)
    sampled_init = {
        n_: v.view(n_u, k, *v.shape[1:])[torch.arange(n_u), sel] for n_, v in cand.items()
    }
    with torch.no_grad():
        emb_u = model.encoder(u.support_sets.to(dev)).cpu()
        seen_sets = data["seen"].support_sets
        emb_zoo_tasks = model.encoder(
            ev.group_data(
                task_datasets(pool.dataset, tasks["zoo"]), ev_p["shots"], params["seed"]
            ).support_sets.to(dev)
        ).cpu()
    nearest_task = (
        torch.nn.functional.normalize(emb_u, dim=1)
        @ torch.nn.functional.normalize(emb_zoo_tasks, dim=1).T
    )
    nearest_task = nearest_task.argmax(1)
    first_member = {int(t): i for i, t in reversed(list(enumerate(zoo_task.tolist())))}
    near_rows = torch.tensor([first_member[int(t)] for t in nearest_task])
    nearest_init = {n_: v[near_rows] for n_, v in zoo_stack.items()}
    random_init = ev.random_heads(template, n_u, seed=10_000)
    steps = ev_p["finetune_steps"]
    curves = ev.finetune_comparison(
        template,
        u,
        {"sampled": sampled_init, "random": random_init, "nearest zoo member": nearest_init},
        steps,
        params["heads_zoo"]["train"]["lr"],
    )
    audit = ev.memorization_audit(
        template,
        res["seen"]["stacked"],
        res["seen"]["task_index"],
        {n_: v[seen_mask] for n_, v in zoo_stack.items()},
        zoo_task[seen_mask],
        data["seen"].test,
    )
    random_acc = accuracy_on(template, random_init, torch.arange(n_u), u.test)
    # Speed: batched generation, and the per-model loop training to the sampled accuracy.
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    gen_n = ev_p.get("throughput_candidates", 50)
    models_per_s = ev.generation_throughput(sampler, u.support_sets, gen_n, sync)
    target = float(res["unseen"]["test"].view(n_u, k).mean(1)[0])
    train_s, train_epochs = ev.seconds_to_match(
        lambda: build_model(HEAD["name"], HEAD["config"], pool.dataset.input_shape, way),
        groups["unseen"][0], target, params["heads_zoo"]["train"]["lr"],
        params["heads_zoo"]["train"]["batch_size"], device=dev,
    )  # fmt: skip
    metrics = {
        "generated_models_per_second": models_per_s,
        "train_seconds_to_sampled_acc": train_s,
        "train_epochs_to_sampled_acc": float(train_epochs),
        "generation_speedup_vs_training": train_s * models_per_s,
        "seen_zoo_mean_acc": float(zoo_seen_acc.mean()),
        "seen_sampled_mean_acc": float(res["seen"]["test"].mean()),
        "seen_sampled_best_acc": float(res["seen"]["best"].mean()),
        "unseen_oracle_acc": oracle["unseen"],
        "unseen_sampled_mean_acc": float(res["unseen"]["test"].mean()),
        "unseen_sampled_best_acc": float(best.mean()),
        "unseen_random_init_acc": float(random_acc.mean()),
        "unseen_finetune_sampled_acc": float(curves["sampled"][:, -1].mean()),
        "unseen_finetune_random_acc": float(curves["random"][:, -1].mean()),
        "unseen_finetune_nearest_acc": float(curves["nearest zoo member"][:, -1].mean()),
        "finetune_steps": float(max(steps)),
        "novel_oracle_acc": oracle["novel"],
        "novel_sampled_mean_acc": float(res["novel"]["test"].mean()),
        "novel_sampled_best_acc": float(res["novel"]["best"].mean()),
        "sample_seconds_per_model": float(res["seen"]["seconds_per_model"]),
        "n_zoo_heads": float(len(zoo_ids)),
        "n_seen_eval_tasks": float(len(groups["seen"])),
        "n_unseen_tasks": float(n_u),
        "n_novel_tasks": float(len(groups["novel"])),
        "n_candidates": float(k),
        **audit,
    }
    del seen_n, seen_sets
    with torch.no_grad():
        latents = model.vae.to_latent(ws.chunks.to(dev)).flatten(1).cpu()
    names = pool.dataset.class_names
    mix = [sum(names[c].startswith("digits") for c in tasks["zoo"][int(t)]) for t in zoo_task]
    domains = [f"{m} digits + {way - m} mnist1d classes" for m in mix]
    figures = {
        "accuracy_hist": plots.accuracy_histogram(
            {
                "zoo heads (seen tasks)": zoo_seen_acc.numpy(),
                "sampled (seen)": res["seen"]["test"].numpy(),
                "sampled (unseen)": res["unseen"]["test"].numpy(),
                "sampled (novel)": res["novel"]["test"].numpy(),
            },
            f"D2NWG {way}-way heads: zero-shot test accuracy",
        ),
        "finetune_curves": plots.finetune_curves_figure(
            steps, curves, "unseen tasks: fine-tuning on the 5-shot support set"
        ),
        "latents": plots.latent_projection(
            latents,
            domains,
            "VAE latents of the zoo heads (PCA)",
        ),
    }
    return {"metrics": metrics, "figures": figures}


def report(
    evaluation: dict,
    backbone_report: dict,
    vae_report: dict,
    align_report: dict,
    diffusion_report: dict,
):
    """Flat metrics.json and the three figures."""
    metrics = {
        **evaluation["metrics"],
        **backbone_report,
        **vae_report,
        **align_report,
        **diffusion_report,
    }
    f = evaluation["figures"]
    return metrics, f["accuracy_hist"], f["finetune_curves"], f["latents"]
