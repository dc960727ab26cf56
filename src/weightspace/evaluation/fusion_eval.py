"""The fusion experiment protocol of CLAFusion §4 on one dataset and one model family.

Given ``S`` trained deep models ``A_i`` and ``S`` shallow models ``B_i``:

- **one shot** (Table 1, left): accuracy of ``A_i``, ``B_i``, their prediction ensemble,
  vanilla averaging and OTFusion of the same-depth pair ``(A_i, A_{i+1})``, and
  CLAFusion of ``(A_i, B_i)``; K = 2, 4, 6 models alternating deep and shallow (Table 2);
- **fine-tuning** (Table 1, right): the same epochs from the fused model, from each
  parent, from the depth-aligned shallow model (NET2NET-like) and from a random
  initialisation of the fused architecture;
- **cost**: fusion wall time against the time a per-model training loop needs to bring
  the fused architecture, from a random initialisation, to the one-shot fused accuracy;
- **teacher–student** (Tables 4–5): the deep model as teacher, the student initialised
  randomly, from the pre-trained shallow model, from its depth-aligned version, or from
  CLAFusion with the student's widths, then knowledge distillation.

Everything returns flat numbers (means over the ``S`` pairs) plus the per-pair records
the report turns into tables and plots.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from weightspace.data.base import Split, SplitDataset
from weightspace.ensembles.kd import KDConfig, kd_sweep
from weightspace.errors import InvalidParameterError
from weightspace.fusion.clafusion import CLAFusionConfig, clafusion
from weightspace.fusion.otfusion import otfusion, vanilla_average
from weightspace.zoo.finetune import finetune_stack
from weightspace.zoo.init import init_stack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    """Retraining settings shared by every initialisation (same epochs for all)."""

    epochs: int = 10
    lr: float = 0.001
    optimizer: str = "adam"
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass(frozen=True)
class CostConfig:
    """How the fused architecture is trained from scratch for the cost comparison."""

    optimizer: str = "adam"
    lr: float = 0.01
    batch_size: int = 32
    max_epochs: int = 30
    seed: int = 0


@dataclass(frozen=True)
class FusionProtocol:
    """What to run for one experiment."""

    cla: CLAFusionConfig = field(default_factory=CLAFusionConfig)
    ks: tuple[int, ...] = (2, 4, 6)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    kd: KDConfig | None = None
    kd_temperatures: tuple[float, ...] = (2.0, 4.0)
    kd_alphas: tuple[float, ...] = (0.5, 0.9)
    cost: CostConfig = field(default_factory=CostConfig)


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, C)`` on the CPU of a model in eval mode (mode restored), run on the
    model's device."""
    was = model.training
    model.eval()
    tensor = next(iter(model.parameters()), next(iter(model.buffers()), None))
    out = model(x if tensor is None else x.to(tensor.device)).cpu()
    model.train(was)
    return out


def accuracy_of(model: nn.Module, split: Split) -> float:
    """Top-1 accuracy of one model on a split."""
    return float((logits_of(model, split.x).argmax(-1) == split.y).float().mean())


def ensemble_accuracy(models: Sequence[nn.Module], split: Split) -> float:
    """Accuracy of the prediction ensemble (mean of the members' probabilities)."""
    probs = torch.stack([logits_of(m, split.x).softmax(-1) for m in models]).mean(0)
    return float((probs.argmax(-1) == split.y).float().mean())


def _stack(models: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    states = [m.state_dict() for m in models]
    return {
        k: torch.stack([s[k] for s in states])
        for k, v in states[0].items()
        if v.is_floating_point()
    }


def one_shot(
    deep: Sequence[nn.Module],
    shallow: Sequence[nn.Module],
    dataset: SplitDataset,
    protocol: FusionProtocol,
) -> dict[str, Any]:
    """One-shot accuracies of the parents, baselines and fusions (means over pairs).

    Returns
    -------
    dict
        ``metrics`` (flat floats), ``fused`` (CLAFusion of each pair, deep widths),
        ``depth_aligned`` (each shallow model after balancing), ``k_fused`` (K -> fused
        model of the first K alternating models) and ``pairs`` (per-pair records).
    """
    s = len(deep)
    if s < 2 or len(shallow) != s:
        raise InvalidParameterError(
            f"the fusion protocol needs >= 2 deep and as many shallow models, got {s} and "
            f"{len(shallow)}; raise zoo seeds"
        )
    test, x = dataset.test, dataset.train.x
    ot_kwargs = _ot_kwargs(protocol.cla)
    pairs, fused, aligned, seconds = [], [], [], []
    for i in range(s):
        a, b, a2 = deep[i], shallow[i], deep[(i + 1) % s]
        result = clafusion([a, b], x, protocol.cla)
        seconds.append(result.seconds)
        fused.append(result.fused)
        aligned.append(result.depth_aligned[1])
        start = time.perf_counter()
        ot_model = otfusion([a, a2], x, **ot_kwargs)
        ot_seconds = time.perf_counter() - start
        pairs.append(
            {
                "model_a_acc": accuracy_of(a, test),
                "model_b_acc": accuracy_of(b, test),
                "ensemble_acc": ensemble_accuracy([a, b], test),
                "vanilla_avg_acc": accuracy_of(vanilla_average([a, a2]), test),
                "otfusion_acc": accuracy_of(ot_model, test),
                "otfusion_seconds": ot_seconds,
                "same_depth_ensemble_acc": ensemble_accuracy([a, a2], test),
                "clafusion_acc": accuracy_of(result.fused, test),
                "clafusion_val_acc": accuracy_of(result.fused, dataset.val),
                "depth_aligned_b_acc": accuracy_of(result.depth_aligned[1], test),
                "fusion_seconds": result.seconds,
                "mapping": result.mappings[1],
            }
        )
    metrics = {k: float(np.mean([p[k] for p in pairs])) for k in pairs[0] if k != "mapping"}
    k_fused, k_rows = {}, []
    for k in protocol.ks:
        if k > 2 * s:
            raise InvalidParameterError(
                f"K={k} needs {k // 2 + k % 2} deep models; the zoo has {s}"
            )
        members = [deep[j // 2] if j % 2 == 0 else shallow[j // 2] for j in range(int(k))]
        result = fused[0] if k == 2 else clafusion(members, x, protocol.cla).fused
        k_fused[int(k)] = result
        k_rows.append(
            {
                "k": int(k),
                "member_accs": [accuracy_of(m, test) for m in members],
                "ensemble_acc": ensemble_accuracy(members, test),
                "fused_acc": accuracy_of(result, test),
            }
        )
    return {
        "metrics": metrics,
        "fused": fused,
        "depth_aligned": aligned,
        "k_fused": k_fused,
        "k_rows": k_rows,
        "pairs": pairs,
    }


def _ot_kwargs(cla: CLAFusionConfig) -> dict[str, Any]:
    o = cla.ot
    return {
        "ground_metric": o.ground_metric,
        "solver": o.solver,
        "reg": o.reg,
        "distance": o.distance,
        "n_samples": o.n_samples,
        "recompute_bn_stats": o.recompute_bn_stats,
    }


def _finetune(
    models: Sequence[nn.Module],
    dataset: SplitDataset,
    cfg: FinetuneConfig,
    seed: int,
    from_scratch: bool = False,
    device: torch.device | str = "cpu",
):
    """Fine-tune a stack of ``models`` (or, ``from_scratch``, train their architecture
    from seeded random initialisations) with the shared settings, on ``device``."""
    return finetune_stack(
        copy.deepcopy(models[0]).to(device), dataset, cfg.epochs, cfg.lr, cfg.batch_size,
        init=None if from_scratch else _stack(models),
        seeds=torch.arange(len(models)) + seed, optimizer=cfg.optimizer,
        momentum=cfg.momentum, weight_decay=cfg.weight_decay,
    )  # fmt: skip


def finetune_comparison(
    deep: Sequence[nn.Module],
    shallow: Sequence[nn.Module],
    shot: Mapping[str, Any],
    dataset: SplitDataset,
    cfg: FinetuneConfig,
    seed: int = 1000,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Retrain every initialisation for the same epochs (Table 1, right; Table 2), as
    stacks on ``device``.

    Returns
    -------
    dict
        ``metrics`` (test accuracy at the best validation epoch, mean over pairs) and
        ``curves`` (name -> mean validation accuracy per epoch, epoch 0 first).
    """
    runs = {
        "parent_a": _finetune(deep, dataset, cfg, seed, device=device),
        "parent_b": _finetune(shallow, dataset, cfg, seed, device=device),
        "clafusion": _finetune(shot["fused"], dataset, cfg, seed, device=device),
        "depth_aligned_b": _finetune(shot["depth_aligned"], dataset, cfg, seed, device=device),
    }
    runs["random_init"] = _finetune(
        shot["fused"], dataset, cfg, seed + 7919, from_scratch=True, device=device
    )
    metrics = {f"{n}_finetuned_acc": float(r.best_test_accuracy.mean()) for n, r in runs.items()}
    # K = 2 in Table 2 is the first pair (the K > 2 rows fuse the first K models).
    metrics["k2_finetuned_acc"] = float(runs["clafusion"].best_test_accuracy[0])
    for k, model in shot["k_fused"].items():
        if k > 2:
            r = _finetune([model], dataset, cfg, seed, device=device)
            metrics[f"k{k}_finetuned_acc"] = float(r.best_test_accuracy.mean())
    curves = {n: r.val_accuracy.mean(0).tolist() for n, r in runs.items()}
    return {"metrics": metrics, "curves": curves, "runs": runs}


def time_to_accuracy(
    template: nn.Module,
    dataset: SplitDataset,
    target_val_acc: float,
    cfg: CostConfig,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Train ``template``'s architecture from a seeded random init with a plain per-model
    loop until its validation accuracy reaches ``target_val_acc``.

    Only the training steps are timed (the per-epoch validation is not).

    Returns
    -------
    dict
        ``seconds`` (training wall time until reached, or for ``max_epochs``),
        ``epochs`` and ``reached`` (1.0 or 0.0).
    """
    device = torch.device(device)
    model = copy.deepcopy(template).to(device)
    init = init_stack(model, torch.tensor([cfg.seed]), 1.0, device=device)
    model.load_state_dict({k: v[0] for k, v in init.items()}, strict=False)
    opt_cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}.get(cfg.optimizer)
    if opt_cls is None:
        raise InvalidParameterError(
            f"cost optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}"
        )
    opt = opt_cls(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y = dataset.train.x.to(device), dataset.train.y.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    seconds = 0.0
    for epoch in range(1, int(cfg.max_epochs) + 1):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(y), generator=gen).to(device)
        for i in range(0, len(y), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()
        seconds += time.perf_counter() - start
        if accuracy_of(model, dataset.val) >= target_val_acc:
            return {"seconds": seconds, "epochs": float(epoch), "reached": 1.0}
    return {"seconds": seconds, "epochs": float(cfg.max_epochs), "reached": 0.0}


def fusion_cost_ratio(
    fused_val_acc: float,
    fused_template: nn.Module,
    dataset: SplitDataset,
    fusion_seconds: float,
    cfg: CostConfig,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """How much cheaper fusion is than training the fused architecture to its accuracy.

    The fused architecture is trained from scratch (:func:`time_to_accuracy`, the zoo's
    usual optimiser) until it matches the one-shot fused model's validation accuracy;
    the ratio is that training time over the fusion's wall time. When training does not
    get there within ``max_epochs`` the ratio is a lower bound
    (``fusion_cost_reached`` = 0).
    """
    run = time_to_accuracy(fused_template, dataset, fused_val_acc, cfg, device)
    return {
        "train_to_fused_acc_epochs": run["epochs"],
        "train_to_fused_acc_seconds": run["seconds"],
        "fusion_cost_ratio": run["seconds"] / max(fusion_seconds, 1e-9),
        "fusion_cost_reached": run["reached"],
    }


def teacher_student(
    teachers: Sequence[nn.Module],
    students: Sequence[nn.Module],
    dataset: SplitDataset,
    protocol: FusionProtocol,
    n_pairs: int = 2,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Distil a large (deep, wide) teacher into differently initialised students (§4.2,
    Tables 4–5).

    Student initialisations: ``random_b`` (shallow architecture), ``pretrained_b``,
    ``depth_aligned_b``, ``fused`` (CLAFusion with the student's widths and the teacher's
    depth) and ``random_fused`` (that architecture, random). For each, the best (by
    validation) test accuracy over the temperature x alpha sweep and the mean over
    temperatures, averaged over ``n_pairs`` teacher–student pairs.
    """
    if protocol.kd is None:
        return {}
    out: dict[str, list[float]] = {}
    x = dataset.train.x
    for i in range(min(n_pairs, len(teachers), len(students))):
        teacher = copy.deepcopy(teachers[i]).to(device)
        student = copy.deepcopy(students[i]).to(device)
        result = clafusion([teacher, student], x, protocol.cla, target=1)
        fused = result.fused
        random_b = _reinit(student, seed=10_000 + i)
        random_f = _reinit(fused, seed=20_000 + i)
        inits = {
            "random_b": random_b,
            "pretrained_b": student,
            "depth_aligned_b": result.depth_aligned[1],
            "fused": fused,
            "random_fused": random_f,
        }
        out.setdefault("fused_student_oneshot_acc", []).append(accuracy_of(fused, dataset.test))
        out.setdefault("teacher_acc", []).append(accuracy_of(teacher, dataset.test))
        out.setdefault("kd_pretrained_b_student_acc", []).append(accuracy_of(student, dataset.test))
        for name, init in inits.items():
            sweep = kd_sweep(
                init, teacher, dataset.train, dataset.val, dataset.test, protocol.kd,
                protocol.kd_temperatures, protocol.kd_alphas,
            )  # fmt: skip
            out.setdefault(f"kd_{name}_best_acc", []).append(sweep["best_test_accuracy"])
            out.setdefault(f"kd_{name}_mean_acc", []).append(sweep["mean_best_over_temperatures"])
        out.setdefault("n_params_teacher", []).append(_n_params(teacher))
        out.setdefault("n_params_student", []).append(_n_params(student))
        out.setdefault("n_params_fused_student", []).append(_n_params(fused))
    return {k: float(np.mean(v)) for k, v in out.items()}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _reinit(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with freshly initialised parameters (seeded)."""
    fresh = copy.deepcopy(model)
    state = init_stack(fresh, torch.tensor([seed]), torch.ones(1))
    fresh.load_state_dict({k: v[0] for k, v in state.items()}, strict=False)
    return fresh
