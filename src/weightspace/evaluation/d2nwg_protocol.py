"""The few-shot-head evaluation protocol of D2NWG (the paper's Table 1 setting).

``d2nwg_diffusion_weight_generation_review_discussion.txt`` §4 (few-shot learning): heads
for k-way tasks are generated from a support set of ``shots`` samples per class. Three
groups of tasks are scored — *seen* (zoo tasks), *unseen* (new combinations of seen
classes) and *novel* (classes held out of the zoo and of the feature extractors):

- sampled heads with no training: the mean over ``n_candidates`` candidates, and the
  best-of-K chosen on data the setting allows (validation for seen tasks, the support set
  for few-shot tasks) — :func:`score_groups`;
- an oracle head per task trained on its full training split through the zoo code
  (:func:`oracle_scores`);
- fine-tuning on the support set from the sampled, a random and the nearest zoo member's
  initialisation (:func:`finetune_scores`);
- the memorization audit on seen tasks and the generation speed (:func:`speed_report`).

The method enters only as callables: a :data:`Sampler` (support sets -> weight stacks)
and an embedder (support sets -> dataset embeddings, for the nearest zoo member), so any
generator can be evaluated the same way. Everything returns dataclasses of scores;
naming them and drawing them is :mod:`weightspace.reporting.d2nwg_report`'s job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from weightspace.data import SplitDataset, TaskSpec
from weightspace.data.class_pool import HEAD, pool_dataset
from weightspace.device import resolve_device
from weightspace.evaluation.d2nwg_comparisons import ComparisonScores, ComparisonSettings, compare
from weightspace.evaluation.fewshot import GroupData, finetune_curves, group_data, task_datasets
from weightspace.evaluation.memorization import memorization_audit
from weightspace.evaluation.speed import generation_throughput, seconds_to_match
from weightspace.generators.d2nwg_stages import Sampler
from weightspace.zoo import MemberSpec, TrainConfig, ZooRunOptions, train_zoo
from weightspace.zoo.evaluate import stack_accuracy
from weightspace.zoo.init import init_stack

GROUPS = ("seen", "unseen", "novel")


@dataclass(frozen=True)
class FewShotProtocol:
    """What the few-shot protocol measures and how.

    Attributes
    ----------
    shots : int
        Support samples per class.
    n_seen : int
        Zoo tasks re-evaluated as "seen" (the first ``n_seen``).
    n_candidates : int
        Heads sampled per task (best-of-K).
    finetune_steps : tuple of int
        Full-batch steps on the support set after which query accuracy is recorded.
    throughput_candidates : int
        Heads per unseen task in the timed batched generation.
    oracle_seeds : tuple of int
        Seeds of the oracle heads trained per unseen / novel task.
    random_seed : int
        Seed of the random-initialisation baseline heads.
    """

    shots: int = 5
    n_seen: int = 20
    n_candidates: int = 10
    finetune_steps: tuple[int, ...] = (1, 2, 5, 10, 20)
    throughput_candidates: int = 50
    oracle_seeds: tuple[int, ...] = (0, 1)
    random_seed: int = 10_000


@dataclass(frozen=True)
class HeadZoo:
    """The zoo of heads the generator learned from: weights, task of each row, accuracy."""

    stacked: Mapping[str, torch.Tensor]
    task_of_row: torch.Tensor
    test_accuracy: torch.Tensor
    train: TrainConfig
    val_accuracy: torch.Tensor | None = None


@dataclass(frozen=True)
class GroupScores:
    """Sampled heads of one task group; ``test`` is ``(T * K,)``, ``best`` ``(T,)``."""

    stacked: dict[str, torch.Tensor]
    task_index: torch.Tensor
    test: torch.Tensor
    best: torch.Tensor
    seconds_per_model: float


@dataclass(frozen=True)
class FinetuneCurves:
    """Query accuracy ``(T, 1 + len(steps))`` per initialisation, plus random heads'."""

    steps: tuple[int, ...]
    curves: dict[str, torch.Tensor]
    random_init_acc: torch.Tensor


@dataclass(frozen=True)
class SpeedReport:
    """Batched generation against per-model training to the sampled accuracy."""

    models_per_second: float
    train_seconds: float
    train_epochs: int


@dataclass(frozen=True)
class FewShotScores:
    """Everything the protocol measured."""

    groups: dict[str, GroupScores]
    n_tasks: dict[str, int]
    oracle: dict[str, float]
    finetune: FinetuneCurves
    speed: SpeedReport
    audit: dict[str, float]
    zoo_seen_acc: torch.Tensor
    n_zoo: int
    n_candidates: int
    extra: dict[str, float] = field(default_factory=dict)
    comparisons: ComparisonScores | None = None


def fewshot_groups(
    pool: SplitDataset, tasks: Mapping[str, list], protocol: FewShotProtocol, seed: int
) -> dict[str, GroupData]:
    """Support / validation / test stacks of the seen, unseen and novel groups, and of
    every zoo task (``"zoo"``, for the nearest-member baseline)."""
    lists = {
        "seen": tasks["zoo"][: protocol.n_seen],
        "unseen": tasks["unseen"],
        "novel": tasks["novel"],
        "zoo": tasks["zoo"],
    }
    return {g: group_data(task_datasets(pool, c), protocol.shots, seed) for g, c in lists.items()}


def _best_of(acc_select: torch.Tensor, acc_test: torch.Tensor, k: int) -> torch.Tensor:
    """Test accuracy of the candidate with the best selection accuracy, per task."""
    sel = acc_select.view(-1, k).argmax(1)
    return acc_test.view(-1, k)[torch.arange(len(sel)), sel]


def score_group(
    template: nn.Module, sampler: Sampler, group: GroupData, k: int, select_on: str
) -> GroupScores:
    """Sample ``k`` heads per task; score them on test and pick the best on
    ``select_on`` (``"val"`` or ``"support"``)."""
    start = time.perf_counter()
    stacked = sampler(group.support_sets, k)
    seconds = time.perf_counter() - start
    task_index = torch.arange(len(group.datasets)).repeat_interleave(k)
    test = stack_accuracy(template, stacked, task_index, group.test)
    chosen = group.val if select_on == "val" else group.support
    select = stack_accuracy(template, stacked, task_index, chosen)
    return GroupScores(
        stacked, task_index, test, _best_of(select, test, k), seconds / len(task_index)
    )


def score_groups(
    template: nn.Module, sampler: Sampler, groups: Mapping[str, GroupData], k: int
) -> dict[str, GroupScores]:
    """:func:`score_group` for seen (selected on validation), unseen and novel tasks."""
    return {
        g: score_group(template, sampler, groups[g], k, "val" if g == "seen" else "support")
        for g in GROUPS
    }


def oracle_scores(
    pool: SplitDataset,
    tasks: Mapping[str, list],
    train: TrainConfig,
    protocol: FewShotProtocol,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Mean test accuracy of heads trained on each unseen / novel task's full training
    split (the zoo's hyper-parameters, ``protocol.oracle_seeds``), through the zoo code."""
    base = pool_dataset(pool)
    out = {}
    for g in ("unseen", "novel"):
        members = [
            MemberSpec(HEAD["name"], TaskSpec(base.name, classes=tuple(c)), s, train,
                       arch_config=HEAD["config"])
            for c in tasks[g]
            for s in protocol.oracle_seeds
        ]  # fmt: skip
        options = ZooRunOptions(device=str(resolve_device(device)), progress=False)
        zoo, _ = train_zoo(members, {base.name: base}, options=options)
        out[g] = float(zoo.index["test_accuracy"].mean())
    return out


def nearest_member_init(
    embed: Callable[[torch.Tensor], torch.Tensor],
    query: GroupData,
    zoo_tasks: GroupData,
    zoo: HeadZoo,
) -> dict[str, torch.Tensor]:
    """For each query task, the first zoo head of the zoo task whose dataset embedding
    is nearest (cosine) to the query's."""
    emb_q = F.normalize(embed(query.support_sets), dim=1)
    emb_z = F.normalize(embed(zoo_tasks.support_sets), dim=1)
    nearest_task = (emb_q @ emb_z.T).argmax(1)
    first = {int(t): i for i, t in reversed(list(enumerate(zoo.task_of_row.tolist())))}
    rows = torch.tensor([first[int(t)] for t in nearest_task])
    return {n: v[rows] for n, v in zoo.stacked.items()}


def finetune_scores(
    template: nn.Module,
    unseen: GroupData,
    sampled: GroupScores,
    nearest: Mapping[str, torch.Tensor],
    protocol: FewShotProtocol,
    lr: float,
) -> FinetuneCurves:
    """Fine-tuning curves on the unseen tasks' support sets from three initialisations:
    the sampled head chosen on the support set, a random head and the nearest member."""
    n, k = len(unseen.datasets), protocol.n_candidates
    sel = stack_accuracy(template, sampled.stacked, sampled.task_index, unseen.support)
    sel = sel.view(n, k).argmax(1)
    sampled_init = {
        name: v.view(n, k, *v.shape[1:])[torch.arange(n), sel]
        for name, v in sampled.stacked.items()
    }
    random_init = init_stack(template, torch.arange(n) + protocol.random_seed, 1.0)
    task_index = torch.arange(n)
    inits = {"sampled": sampled_init, "random": random_init, "nearest zoo member": nearest}
    curves = {
        name: finetune_curves(
            template, init, task_index, unseen.support, unseen.test, protocol.finetune_steps, lr
        )
        for name, init in inits.items()
    }
    random_acc = stack_accuracy(template, random_init, task_index, unseen.test)
    return FinetuneCurves(tuple(protocol.finetune_steps), curves, random_acc)


def speed_report(
    sampler: Sampler,
    template_fn: Callable[[], nn.Module],
    unseen: GroupData,
    sampled: GroupScores,
    protocol: FewShotProtocol,
    train: TrainConfig,
    device: torch.device,
) -> SpeedReport:
    """Generated heads per second (one batched call) and the per-model loop's time to
    reach the first unseen task's mean sampled accuracy."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    per_s = generation_throughput(
        sampler, unseen.support_sets, protocol.throughput_candidates, sync
    )
    target = float(sampled.test.view(len(unseen.datasets), -1).mean(1)[0])
    seconds, epochs = seconds_to_match(
        template_fn, unseen.datasets[0], target, train.lr, train.batch_size, device=device
    )
    return SpeedReport(per_s, seconds, epochs)


def evaluate_fewshot(
    template_fn: Callable[[], nn.Module],
    sampler: Sampler,
    embed: Callable[[torch.Tensor], torch.Tensor],
    groups: Mapping[str, GroupData],
    oracle: Mapping[str, float],
    zoo: HeadZoo,
    protocol: FewShotProtocol,
    device: torch.device,
    task_classes: Mapping[str, list] | None = None,
    ablations: Mapping[str, Sampler] | None = None,
    comparisons: ComparisonSettings | None = None,
) -> FewShotScores:
    """The whole protocol for one generator (``oracle`` from :func:`oracle_scores`).

    With ``task_classes`` (the pool classes of the zoo / seen / unseen / novel tasks) and
    ``comparisons``, the baselines, ``ablations`` (other samplers), fine-tuning with
    learning rates chosen on validation and the copy audit of
    :func:`weightspace.evaluation.d2nwg_comparisons.compare` are added, and the
    fine-tuning curves are theirs; without, the older three-initialisation comparison.
    """
    template = template_fn()
    scores = score_groups(template, sampler, groups, protocol.n_candidates)
    comp = None
    if comparisons is not None and task_classes is not None:
        classes = {"seen": task_classes["zoo"][: protocol.n_seen], **task_classes}
        comp = compare(
            template, {g: scores[g].stacked for g in GROUPS}, dict(ablations or {}), groups,
            classes, zoo, embed, protocol.n_candidates, protocol.finetune_steps, comparisons,
        )  # fmt: skip
        ft = comp.finetune["unseen"]
        n_unseen = len(groups["unseen"].datasets)
        curves = FinetuneCurves(
            ft.steps, ft.curves, ft.curves["random"][:, 0] if n_unseen else torch.zeros(0)
        )
    else:
        nearest = nearest_member_init(embed, groups["unseen"], groups["zoo"], zoo)
        curves = finetune_scores(
            template, groups["unseen"], scores["unseen"], nearest, protocol, zoo.train.lr
        )
    seen = zoo.task_of_row < protocol.n_seen
    audit = memorization_audit(
        template, scores["seen"].stacked, scores["seen"].task_index,
        {n: v[seen] for n, v in zoo.stacked.items()}, zoo.task_of_row[seen],
        groups["seen"].test,
    )  # fmt: skip
    speed = speed_report(
        sampler, template_fn, groups["unseen"], scores["unseen"], protocol, zoo.train, device
    )
    return FewShotScores(
        groups=scores,
        n_tasks={g: len(groups[g].datasets) for g in GROUPS},
        oracle=dict(oracle),
        finetune=curves,
        speed=speed,
        audit=audit,
        zoo_seen_acc=zoo.test_accuracy[seen],
        n_zoo=len(zoo.task_of_row),
        n_candidates=protocol.n_candidates,
        comparisons=comp,
    )


__all__ = [
    "GROUPS",
    "FewShotProtocol",
    "FewShotScores",
    "FinetuneCurves",
    "GroupScores",
    "HeadZoo",
    "SpeedReport",
    "evaluate_fewshot",
    "fewshot_groups",
    "finetune_scores",
    "nearest_member_init",
    "oracle_scores",
    "score_group",
    "score_groups",
    "speed_report",
]
