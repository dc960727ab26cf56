"""What D2NWG's few-shot heads are compared with: baselines, ablations, fine-tuning, audit.

The review of ``d2nwg_diffusion_weight_generation_review_discussion.txt`` asks for
"comparisons with simpler baselines", an unconditional generator (p-diff) and ablations
of the dataset encoding; the "generalization or memorization" critique of weight
generators asks whether samples are copies of their training checkpoints. Everything
here runs on the same support sets, validation and test splits as the generator
(:func:`weightspace.evaluation.d2nwg_protocol.fewshot_groups`), with the same selection
rules:

- **training-free baselines** (:mod:`weightspace.evaluation.fewshot_baselines`): the
  prototype head of the support set; the per-class row look-up from the zoo (unseen
  tasks: their classes are in the zoo); the nearest zoo member by dataset embedding with
  its rows matched to the query's classes;
- **linear probe** on the support set, for as many steps as fine-tuning and for
  ``probe_converged_steps``, its learning rate chosen on validation;
- **ablations**: any other sampler (unconditional, without alignment, the whole-head
  generator) scored exactly as the method (mean over ``n_candidates``);
- **the zoo's own best-of-K** on validation for seen tasks: ``zoo_best_of`` members (the
  exact expectation over subsets when the zoo trained more seeds per task), and of all;
- **fine-tuning** from every initialisation with one learning rate per initialisation,
  chosen on validation from ``lr_grid`` and, with ``keep_init``, rate 0 (no fine-tuning:
  chosen when the initialisation is already at least as good on validation), never on
  test;
- **the copy rule** (:func:`weightspace.evaluation.memorization.copy_audit`) on class rows
  of the sampled heads, against the zoo's rows grouped by pool class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from weightspace.evaluation import fewshot_baselines as fb
from weightspace.evaluation.fewshot import GroupData, finetune_curves
from weightspace.evaluation.memorization import CopyRule, copy_audit
from weightspace.generators.class_rows import centre_rows, head_names, to_rows
from weightspace.generators.d2nwg_stages import Sampler
from weightspace.zoo.evaluate import stack_accuracy
from weightspace.zoo.init import init_stack

FEW_SHOT = ("unseen", "novel")


@dataclass(frozen=True)
class ComparisonSettings:
    """How the comparisons are run (the fine-tuning steps come from the protocol)."""

    lr_grid: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1)
    probe_converged_steps: int = 300
    copy_ratio: float = 0.5
    random_seed: int = 10_000
    keep_init: bool = True
    zoo_best_of: int = 4


@dataclass(frozen=True)
class FinetuneResult:
    """Query accuracy ``(T, 1 + len(steps))`` per initialisation and its chosen rate."""

    steps: tuple[int, ...]
    curves: dict[str, torch.Tensor]
    lr: dict[str, float]


def _mean(acc: torch.Tensor) -> float:
    return float(acc.float().mean())


def _per_task(acc: torch.Tensor, n_tasks: int) -> torch.Tensor:
    """Mean over candidates: ``(T * K,)`` -> ``(T,)``."""
    return acc.view(n_tasks, -1).float().mean(1)


def support_choice(
    template: nn.Module, stacked: Mapping[str, torch.Tensor], group: GroupData, k: int
) -> dict[str, torch.Tensor]:
    """Of ``k`` candidates per task, the one with the best support accuracy ``(T, ...)``."""
    n = len(group.datasets)
    idx = torch.arange(n).repeat_interleave(k)
    sel = stack_accuracy(template, stacked, idx, group.support).view(n, k).argmax(1)
    return {name: v.view(n, k, *v.shape[1:])[torch.arange(n), sel] for name, v in stacked.items()}


def baseline_heads(
    template: nn.Module,
    groups: Mapping[str, GroupData],
    task_classes: Mapping[str, Sequence[tuple[int, ...]]],
    zoo_stacked: Mapping[str, torch.Tensor],
    zoo_task: torch.Tensor,
    embed: Callable[[torch.Tensor], torch.Tensor],
    steps: int,
    settings: ComparisonSettings,
) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """Baseline heads ``group -> name -> stacked (T, ...)`` for seen, unseen, novel.

    ``prototype`` everywhere; ``lookup`` where every class is in the zoo; ``nearest
    member`` (rows matched) on unseen and novel; ``probe`` (``steps``) and ``probe
    (converged)`` on unseen and novel, their rates chosen on validation.
    """
    way = groups["zoo"].support_sets.shape[1]
    names = head_names(zoo_stacked)
    zoo_classes = list(task_classes["zoo"])
    proto_z = groups["zoo"].support_sets.mean(2)
    emb_z = embed(groups["zoo"].support_sets)
    out: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for g in ("seen", *FEW_SHOT):
        grp = groups[g]
        heads = {"prototype": fb.prototype_heads(grp.support, way, names)}
        query = list(task_classes[g])
        if bool(fb.lookup_coverage(zoo_classes, zoo_task, query).all()):
            heads["lookup"] = fb.row_lookup_heads(zoo_stacked, zoo_classes, zoo_task, query)
        if g in FEW_SHOT:
            heads["nearest member"] = fb.nearest_member_matched(
                embed(grp.support_sets), emb_z, zoo_stacked, zoo_task,
                grp.support_sets.mean(2), proto_z,
            )  # fmt: skip
            for label, n_steps in (
                ("probe", steps),
                ("probe (converged)", settings.probe_converged_steps),
            ):
                zero = {k: torch.zeros_like(v[:1]).expand(len(grp.datasets), *v.shape[1:])
                        for k, v in zoo_stacked.items()}  # fmt: skip
                lr, _ = fb.select_lr(
                    template, zero, torch.arange(len(grp.datasets)), grp.support, grp.val,
                    n_steps, settings.lr_grid,
                )  # fmt: skip
                heads[label] = fb.probe_heads(template, grp.support, way, n_steps, lr)
        out[g] = heads
    return out


def score_heads(
    template: nn.Module, heads: Mapping[str, Mapping[str, torch.Tensor]], group: GroupData
) -> dict[str, float]:
    """Mean test accuracy of each named head stack ``(T, ...)`` on the group's tasks."""
    idx = torch.arange(len(group.datasets))
    return {name: _mean(stack_accuracy(template, h, idx, group.test)) for name, h in heads.items()}


def score_samplers(
    template: nn.Module,
    samplers: Mapping[str, Sampler],
    groups: Mapping[str, GroupData],
    k: int,
) -> dict[str, dict[str, float]]:
    """``group -> sampler name -> mean test accuracy over k candidates per task``."""
    out: dict[str, dict[str, float]] = {}
    for g in ("seen", *FEW_SHOT):
        grp = groups[g]
        idx = torch.arange(len(grp.datasets)).repeat_interleave(k)
        out[g] = {
            name: _mean(stack_accuracy(template, sample(grp.support_sets, k), idx, grp.test))
            for name, sample in samplers.items()
        }
    return out


def finetune_from(
    template: nn.Module,
    inits: Mapping[str, Mapping[str, torch.Tensor]],
    group: GroupData,
    steps: Sequence[int],
    settings: ComparisonSettings,
) -> FinetuneResult:
    """Fine-tuning curves on the support sets from each initialisation ``(T, ...)``, the
    learning rate of each chosen on validation after ``max(steps)`` steps (with
    ``settings.keep_init``, rate 0, no fine-tuning, is a candidate too)."""
    idx = torch.arange(len(group.datasets))
    curves, lrs = {}, {}
    for name, init in inits.items():
        lr, _ = fb.select_lr(template, init, idx, group.support, group.val, max(steps),
                             settings.lr_grid, keep_init=settings.keep_init)  # fmt: skip
        lrs[name] = lr
        curves[name] = finetune_curves(template, init, idx, group.support, group.test, steps, lr)
    return FinetuneResult(tuple(steps), curves, lrs)


def random_heads(template: nn.Module, n: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` randomly initialised heads (the zoo's initialisation, seeds ``seed + t``)."""
    return init_stack(template, torch.arange(n) + seed, 1.0)


def row_copy_audit(
    generated: Mapping[str, torch.Tensor],
    zoo_stacked: Mapping[str, torch.Tensor],
    zoo_row_class: torch.Tensor,
    ratio: float,
) -> dict[str, float]:
    """The copy rule on class rows: each generated class row (centred over its head's
    classes) against every zoo row, reference distances between zoo rows of one pool
    class from different heads. ``zoo_row_class`` is ``(Z, K)``."""
    names = head_names(zoo_stacked)
    gen = centre_rows(to_rows(generated, names)).flatten(0, 1)
    zoo = centre_rows(to_rows(zoo_stacked, names)).flatten(0, 1)
    audit = copy_audit(gen, zoo, zoo_row_class.flatten(), CopyRule(ratio))
    return audit.to_metrics()


def head_copy_audit(
    generated: Mapping[str, torch.Tensor],
    zoo_stacked: Mapping[str, torch.Tensor],
    zoo_task: torch.Tensor,
    ratio: float,
) -> dict[str, float]:
    """The copy rule on whole heads (centred rows, flattened), groups = zoo tasks."""
    names = head_names(zoo_stacked)
    gen = centre_rows(to_rows(generated, names)).flatten(1)
    zoo = centre_rows(to_rows(zoo_stacked, names)).flatten(1)
    return copy_audit(gen, zoo, zoo_task, CopyRule(ratio)).to_metrics()


@dataclass(frozen=True)
class ComparisonScores:
    """Everything the method is compared with, per task group.

    Attributes
    ----------
    baselines, ablations : dict
        ``group -> name -> mean test accuracy``.
    zoo_best_of_k : float
        Seen tasks: test accuracy of the best-validation member among
        ``settings.zoo_best_of`` of the task's zoo members (expected over which), mean.
    zoo_best_of_all : float
        The same among all the task's members (more than ``zoo_best_of`` when the zoo
        trained more seeds per task: 8 in the GPU config).
    zoo_best_per_task : Tensor (T,), optional
        ``zoo_best_of_k`` per seen task, for the paired comparison with the method's. : dict
        ``group -> FinetuneResult`` (unseen, novel).
    audit : dict
        ``variant -> group -> copy-rule metrics`` (``"method"``: class rows; the
        ablations' whole heads on seen tasks).
    """

    baselines: dict[str, dict[str, float]]
    ablations: dict[str, dict[str, float]]
    zoo_best_of_k: float
    zoo_best_of_all: float
    finetune: dict[str, FinetuneResult]
    audit: dict[str, dict[str, dict[str, float]]]
    zoo_best_per_task: torch.Tensor | None = None


def compare(
    template: nn.Module,
    method: Mapping[str, Mapping[str, torch.Tensor]],
    ablations: Mapping[str, Sampler],
    groups: Mapping[str, GroupData],
    task_classes: Mapping[str, Sequence[tuple[int, ...]]],
    zoo: Any,
    embed: Callable[[torch.Tensor], torch.Tensor],
    n_candidates: int,
    finetune_steps: Sequence[int],
    settings: ComparisonSettings,
) -> ComparisonScores:
    """Baselines, ablations, the zoo's best-of-K, fine-tuning and the copy audit.

    Parameters
    ----------
    method : mapping group -> stacked heads ``(T * n_candidates, ...)``
        The method's sampled heads of seen, unseen and novel tasks (candidate-major
        within each task, as :func:`~weightspace.evaluation.d2nwg_protocol.score_group`).
    ablations : mapping name -> Sampler
    zoo : HeadZoo
        With ``val_accuracy``; ``task_classes["zoo"]`` lists its tasks' pool classes.
    """
    k = n_candidates
    heads = baseline_heads(template, groups, task_classes, zoo.stacked, zoo.task_of_row,
                           embed, max(finetune_steps), settings)  # fmt: skip
    baselines = {g: score_heads(template, heads[g], groups[g]) for g in heads}
    abl: dict[str, dict[str, float]] = {}
    audit: dict[str, dict[str, dict[str, float]]] = {"method": {}}
    for name, sample in ablations.items():
        for g in ("seen", *FEW_SHOT):
            grp = groups[g]
            stacked = sample(grp.support_sets, k)
            idx = torch.arange(len(grp.datasets)).repeat_interleave(k)
            abl.setdefault(g, {})[name] = _mean(stack_accuracy(template, stacked, idx, grp.test))
            if g == "seen":
                audit[name] = {"seen": head_copy_audit(
                    stacked, zoo.stacked, zoo.task_of_row, settings.copy_ratio)}  # fmt: skip
    n_seen = len(groups["seen"].datasets)
    seen_tasks = torch.arange(n_seen)
    best = fb.zoo_best_of_k(zoo.val_accuracy, zoo.test_accuracy, zoo.task_of_row,
                            seen_tasks, settings.zoo_best_of)  # fmt: skip
    best_all = fb.zoo_best_of_k(zoo.val_accuracy, zoo.test_accuracy, zoo.task_of_row,
                                seen_tasks)  # fmt: skip
    finetune = {}
    for g in FEW_SHOT:
        grp = groups[g]
        inits = {
            "sampled": support_choice(template, method[g], grp, k),
            "random": random_heads(template, len(grp.datasets), settings.random_seed),
            **{n: heads[g][n] for n in ("nearest member", "prototype", "lookup") if n in heads[g]},
        }
        finetune[g] = finetune_from(template, inits, grp, finetune_steps, settings)
    row_class = torch.tensor([list(c) for c in task_classes["zoo"]])[zoo.task_of_row]
    for g in ("seen", *FEW_SHOT):
        audit["method"][g] = row_copy_audit(method[g], zoo.stacked, row_class, settings.copy_ratio)
    return ComparisonScores(
        baselines, abl, _mean(best), _mean(best_all), finetune, audit, best.float()
    )


__all__ = [
    "FEW_SHOT",
    "ComparisonScores",
    "ComparisonSettings",
    "FinetuneResult",
    "baseline_heads",
    "compare",
    "finetune_from",
    "head_copy_audit",
    "random_heads",
    "row_copy_audit",
    "score_heads",
    "score_samplers",
    "support_choice",
]
