"""Run the whole D2NWG few-shot-head evaluation (scenario (a)) from trained parts.

Glue between the generator, the heads zoo, the class pool and
:mod:`weightspace.evaluation.d2nwg_eval`: it builds the seen / unseen / novel task groups,
samples heads, trains oracle heads, runs the fine-tuning comparison, the memorization
audit and the speed measurements, and draws the figures.
"""

from __future__ import annotations

from typing import Any

import torch

from weightspace.data import SplitDataset, TaskSpec, dataset_card
from weightspace.data.class_pool import ClassPool
from weightspace.device import resolve_device
from weightspace.evaluation import d2nwg_eval as ev
from weightspace.evaluation.fewshot import accuracy_on, task_datasets
from weightspace.generators.d2nwg import D2NWG
from weightspace.nets import build_model
from weightspace.reporting import d2nwg_plots as plots
from weightspace.weights import WeightSet
from weightspace.zoo import MemberSpec, TrainConfig, Zoo, ZooRunOptions, train_zoo

HEAD = {"name": "mlp", "config": {"hidden": []}}
"""A classifier head is a registry MLP with no hidden layer: ``Linear(d, k)``."""


def pool_name(pool: ClassPool) -> str:
    """Dataset name of a pool, tied to its content (new features -> new heads)."""
    return f"pool-{dataset_card(pool.dataset)['sha256'][:10]}"


def pool_dataset(pool: ClassPool) -> SplitDataset:
    """The pool's dataset under its content-tied name."""
    d = pool.dataset
    return SplitDataset(
        pool_name(pool), d.train, d.val, d.test, d.n_classes, d.input_shape, d.class_names
    )


def _device(params: dict[str, Any]) -> torch.device:
    return resolve_device(params["device"])


def evaluate_fewshot(
    model: D2NWG, heads: dict, zoo: Zoo, pool: ClassPool, tasks: dict, params: dict[str, Any]
) -> dict:
    """Seen / unseen / novel evaluation, fine-tuning curves, memorization audit, speed.

    ``params`` is the ``d2nwg.settings`` block of ``parameters_d2nwg.yml`` (keys ``seed``,
    ``device``, ``tasks.way``, ``heads_zoo.train``, ``heads_zoo.seeds``, ``evaluation``).
    Returns ``{"metrics": flat dict, "figures": {name: Figure}}``.
    """
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
        name = pool_name(pool)
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
        base = pool_dataset(pool)
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
