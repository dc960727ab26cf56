"""Nodes of the weightformer pipeline: typed settings, the checkpoint split, one node per
trained generator (WF, the ablations, the MLP baseline, WF*), evaluation, the teacher-number
curve, report. Each is one call into the library; stage times come from the hook."""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import torch
from matplotlib.figure import Figure

from weightspace.config import to_mapping
from weightspace.data import SplitDataset
from weightspace.data.base import SPLITS, Split
from weightspace.device import resolve_device
from weightspace.distributed import SINGLE, World
from weightspace.errors import ArchitectureMismatchError, EmptyZooError
from weightspace.evaluation import weightformer_protocol as wp
from weightspace.generators.weight_tokens import TokenLayout
from weightspace.generators.weightformer import LayerMLP, WeightFormer
from weightspace.generators.weightformer_training import (
    FitConfig,
    fit_weightformer,
    pretrain_weightformer,
    sample_sets,
)
from weightspace.reporting import weightformer_report as wr
from weightspace.weights.stacking import stack_state_dicts
from weightspace.zoo import Zoo
from weightspace_kedro.pipelines.weightformer.settings import WeightFormerSettings
from weightspace_kedro.runner import node_world
from weightspace_kedro.typed import typed_settings

log = logging.getLogger(__name__)

Pools = dict[str, Any]


def build_settings(params: dict[str, Any]) -> WeightFormerSettings:
    """``weightformer.settings`` typed (a misspelled key fails here, naming key and file)."""
    return typed_settings(WeightFormerSettings, params, "weightformer.settings", "weightformer")


def split_checkpoints(
    zoo: Zoo, datasets: dict[str, SplitDataset], settings: WeightFormerSettings
) -> Pools:
    """Final checkpoints on the dataset, split by id into training and held-out stacks."""
    index = zoo.index[zoo.index["is_final"].astype(bool) & (zoo.index["task"] == settings.dataset)]
    if index.empty:
        raise EmptyZooError(f"the weightformer zoo has no models on {settings.dataset!r}")
    if index["arch_key"].nunique() != 1:
        raise ArchitectureMismatchError(
            f"the weightformer zoo holds {index['arch_key'].nunique()} architectures on "
            f"{settings.dataset!r}; WeightFormer's teachers share one (zoo_weightformer.grid)"
        )
    train_ids, held_ids = wp.split_pool(
        list(index["model_id"]), settings.protocol.n_train, settings.protocol.seed
    )
    template = zoo.module(train_ids[0])
    layout = TokenLayout.from_module(template)

    def stack(ids: list[str]) -> dict[str, torch.Tensor]:
        return stack_state_dicts([zoo.state(m) for m in ids], layout.spec)

    return {
        "template": template, "layout": layout, "data": datasets[settings.dataset],
        "train": stack(train_ids), "held": stack(held_ids),
        "train_ids": train_ids, "held_ids": held_ids,
    }  # fmt: skip


def _fit(
    pools: Pools, settings: WeightFormerSettings, variant: str = "wf", world: World = SINGLE
) -> torch.nn.Module:
    """Train WF (``variant="wf"``), an ablation (``"wf_no_*"``) or the MLP baseline."""
    cfg, fit = settings.model, settings.protocol.fit
    if variant == "wf_no_cross":
        cfg = dataclasses.replace(cfg, cross_layer=False)
    elif variant == "wf_no_cutoff":
        cfg = dataclasses.replace(cfg, cutoff=0.0)
    elif variant == "wf_no_residual":
        cfg = dataclasses.replace(cfg, residual=False)
    elif variant in ("wf_no_shift", "mlp"):
        fit = dataclasses.replace(fit, alpha=0.0)
    torch.manual_seed(settings.protocol.seed)
    protocol, data = settings.protocol, pools["data"]
    if variant == "mlp":
        init = "first" if cfg.residual else "mean"
        model = LayerMLP(pools["layout"], fit.n_teachers, protocol.mlp_hidden, init)
    else:
        model = WeightFormer(pools["layout"], cfg)
        if protocol.pretrain_sets and cfg.residual:
            gen = torch.Generator().manual_seed(protocol.seed + 2)
            n_pool = next(iter(pools["train"].values())).shape[0]
            sets = sample_sets(n_pool, fit.n_teachers, protocol.pretrain_sets, gen)
            targets = wp.kd_targets(pools["template"], pools["train"], sets, data, protocol)
            model = pretrain_weightformer(
                model, pools["train"], sets, targets, protocol.pretrain_steps, protocol.pretrain_lr
            )
    return _fit_on_device(model, pools, "train", fit, settings.device, world)


def _fit_on_device(
    model: torch.nn.Module,
    pools: Pools,
    pool: str,
    fit: FitConfig,
    device: str,
    world: World = SINGLE,
) -> torch.nn.Module:
    """``fit_weightformer`` on ``device`` (data-parallel over ``world``); the kept
    generator comes back on the CPU, carrying the step its validation peaked at
    (``best_step``, 0 = its start)."""
    dev = world.device if world.active else resolve_device(device)
    template = copy.deepcopy(pools["template"]).to(dev)
    data = pools["data"]
    start = copy.deepcopy(model).to(dev)
    result = fit_weightformer(start, template, pools[pool], data.train, data.val, fit, world=world)
    result.model.best_step = result.best_step
    return result.model.cpu()


def train_wf(pools: Pools, settings: WeightFormerSettings) -> torch.nn.Module:
    """WeightFormer on the training checkpoints (eq. 4).

    Under torchrun it trains data-parallel over the ranks when ``fit.sets_per_step``
    gives every rank a teacher set; with Algorithm 1's one set per step (the default)
    rank 0 trains it alone and the other ranks return a placeholder (their outputs are
    never saved, and no node of theirs reads it)."""
    world = node_world(settings.device)
    if world.active and settings.protocol.fit.sets_per_step < world.world_size:
        log.info(
            "WeightFormer: sets_per_step=%d < %d processes: rank 0 trains it alone "
            "(raise fit.sets_per_step to share it)",
            settings.protocol.fit.sets_per_step, world.world_size,
        )  # fmt: skip
        if not world.is_main:
            return torch.nn.Identity()  # Kedro saves no None, even in memory
        world = SINGLE
    return _fit(pools, settings, world=world)


def train_ablations(pools: Pools, settings: WeightFormerSettings) -> dict[str, torch.nn.Module]:
    """Table 4's variants, each trained like WF."""
    return {f"wf_{a}": _fit(pools, settings, f"wf_{a}") for a in settings.ablations}


def train_mlp(pools: Pools, settings: WeightFormerSettings) -> torch.nn.Module:
    """The MLP baseline, trained on the student loss like WF."""
    return _fit(pools, settings, "mlp")


def finetune_wf_star(
    wf: torch.nn.Module, pools: Pools, settings: WeightFormerSettings
) -> torch.nn.Module:
    """WF*: WF fine-tuned on sets of the held-out checkpoints (Sec. 4.2)."""
    return _fit_on_device(wf, pools, "held", settings.protocol.finetune, settings.device)


def collect_generators(
    wf: torch.nn.Module,
    wf_star: torch.nn.Module,
    mlp: torch.nn.Module,
    ablations: dict[str, torch.nn.Module],
) -> dict[str, torch.nn.Module]:
    """Every trained generator by report name (wf, wf_star, mlp, wf_no_*)."""
    return {"wf": wf, "wf_star": wf_star, "mlp": mlp, **ablations}


def evaluate(
    pools: Pools, generators: dict[str, torch.nn.Module], settings: WeightFormerSettings
) -> dict[str, Any]:
    """Every method on the held-out sets (Table 1, Table 4, cost)."""
    dev = resolve_device(settings.device)
    template, held, data = _on_device(pools, dev)
    on_dev = {k: copy.deepcopy(g).to(dev) for k, g in generators.items()}
    result = wp.evaluate_sets(template, held, data, on_dev, settings.protocol)
    result["best_step"] = {k: float(getattr(g, "best_step", -1)) for k, g in generators.items()}
    return result


def teacher_curve(pools: Pools, wf: torch.nn.Module, settings: WeightFormerSettings) -> dict:
    """Figure 3 (concatenate and heuristic)."""
    dev = resolve_device(settings.device)
    template, held, data = _on_device(pools, dev)
    gen = copy.deepcopy(wf).to(dev)
    return wp.teacher_number_curve(gen, template, held, data, settings.protocol)


def _on_device(
    pools: Pools, dev: torch.device
) -> tuple[torch.nn.Module, dict[str, torch.Tensor], SplitDataset]:
    """The template, the held-out stack and the data on ``dev`` (copies)."""
    data: SplitDataset = pools["data"]
    splits = {s: Split(getattr(data, s).x.to(dev), getattr(data, s).y.to(dev)) for s in SPLITS}
    held = {k: v.to(dev) for k, v in pools["held"].items()}
    return copy.deepcopy(pools["template"]).to(dev), held, dataclasses.replace(data, **splits)


def generators_bundle(
    pools: Pools, generators: dict[str, torch.nn.Module], settings: WeightFormerSettings
) -> dict[str, Any]:
    """Every trained generator (``<name>/<param>``) in one bundle, with what rebuilds it:
    the settings, the token layout's fingerprint, each generator's config and best step,
    and the checkpoint ids it was trained on and evaluated with."""
    gens = generators
    tensors = {f"{n}/{k}": v for n, g in gens.items() for k, v in g.state_dict().items()}
    configs = {n: to_mapping(g.config) for n, g in gens.items() if hasattr(g, "config")}
    metadata = {
        "settings": to_mapping(settings),
        "layout_fingerprint": pools["layout"].fingerprint,
        "configs": configs,
        "best_step": {n: int(getattr(g, "best_step", -1)) for n, g in gens.items()},
        "train_ids": pools["train_ids"],
        "held_ids": pools["held_ids"],
    }
    return {"tensors": tensors, "metadata": metadata}


def report(
    result: dict[str, Any], curve: dict, node_seconds: dict[str, float]
) -> tuple[dict[str, float], str, Figure]:
    """metrics.json, tables.md and the teacher-number plot."""
    return wr.assemble_report(result, curve, node_seconds)
