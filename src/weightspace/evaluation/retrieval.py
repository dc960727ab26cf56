"""Model retrieval with D2NWG: whole networks generated per seen dataset, compared with the zoo.

D2NWG's model-retrieval setting (``d2nwg_diffusion_weight_generation_review_discussion.txt``,
Section 4, "Sampling from optimal parameters latent space for known task
(In-distribution)"): "a single D2NWG model can encode 30 datasets and generate
dataset-specific parameters that achieve performance on par with or surpassing
conventional pre-trained models". One generator is trained on the zoo of several related
datasets; conditioned on a support set of one of them it should return a network *for
that dataset*.

For every seen dataset :func:`evaluate_retrieval` samples ``K`` whole networks
conditioned on per-class support sets and reports

* the sampled networks' test accuracy (mean over the ``K`` candidates) and best-of-K
  (the candidate with the best *validation* accuracy, scored on test), next to the zoo's
  mean test accuracy on that dataset and the zoo's best-of (also selected on validation);
* **retrieval**: the nearest zoo member of every sample, in function (highest prediction
  agreement on the conditioning dataset's test inputs, :func:`nearest_by_agreement`) and
  in weight space (L2, :func:`nearest_by_l2`); the retrieval accuracy is the fraction of
  samples whose nearest zoo member was trained on the conditioning dataset. A generator
  that ignores its condition (or returns one dataset's networks for every condition)
  scores ``1 / n_datasets`` at chance level.

Everything is batched over models; only datasets are looped over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from weightspace.data.base import SplitDataset
from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.evaluation.d2nwg_protocol import score_group
from weightspace.evaluation.fewshot import group_data
from weightspace.generators.d2nwg_stages import Sampler
from weightspace.weights import ParameterSpec, vectorize
from weightspace.zoo.evaluate import stack_accuracy
from weightspace.zoo.tasks import TaskStack
from weightspace.zoo.train import predict_stack

__all__ = [
    "RetrievalScores",
    "check_shared_architecture",
    "evaluate_retrieval",
    "flatten_sets",
    "nearest_by_agreement",
    "nearest_by_l2",
    "retrieval_matrix",
]


@dataclass(frozen=True)
class RetrievalScores:
    """What :func:`evaluate_retrieval` measured (shapes in its docstring)."""

    zoo_mean: torch.Tensor
    zoo_best: torch.Tensor
    sampled_mean: torch.Tensor
    sampled_best: torch.Tensor
    retrieval: torch.Tensor
    retrieval_l2: torch.Tensor
    sampled_test: torch.Tensor
    sample_task: torch.Tensor
    nearest: torch.Tensor
    agreement: torch.Tensor
    confusion: torch.Tensor
    confusion_l2: torch.Tensor
    stacked: dict[str, torch.Tensor]
    seconds_per_model: float
    n_candidates: int


def check_shared_architecture(datasets: Sequence[SplitDataset]) -> tuple[tuple[int, ...], int]:
    """``(input_shape, n_classes)`` shared by all ``datasets``; raise if they differ.

    A whole-network generator produces one architecture, so every dataset it is
    conditioned on must have the same input shape and class count (an MLP for inputs of
    another size has another first layer; e.g. MNIST-1D ``(1, 40)`` cannot join digits
    ``(1, 8, 8)``).
    """
    if not datasets:
        raise InvalidParameterError("no datasets given: list at least one seen dataset")
    shapes = {(tuple(ds.input_shape), int(ds.n_classes)) for ds in datasets}
    if len(shapes) != 1:
        found = {ds.name: (tuple(ds.input_shape), ds.n_classes) for ds in datasets}
        raise InvalidParameterError(
            "a whole-network generator makes one architecture, so its datasets must share "
            f"the input shape and class count; got (input_shape, n_classes) = {found}. "
            "Keep datasets of one shape (e.g. digits and its transforms) in one generator"
        )
    return shapes.pop()


def flatten_sets(sets: torch.Tensor) -> torch.Tensor:
    """Per-class sets of raw inputs ``(B, K, S, *input_shape)`` -> features ``(B, K, S, d)``.

    The conditioning features of scenario (b): flattened raw inputs (the datasets share
    one input shape, so every sample is a vector of the same size).
    """
    if sets.ndim < 4:
        raise ShapeError(f"sets must be (B, K, S, *input_shape), got {tuple(sets.shape)}")
    return sets.flatten(3)


@torch.no_grad()
def _predictions(
    template: nn.Module, stacked: Mapping[str, torch.Tensor], task: int, data: TaskStack
) -> torch.Tensor:
    """Predicted labels ``(B, n_task)`` of every model on task ``task``'s real samples."""
    b = next(iter(stacked.values())).shape[0]
    index = torch.full((b,), task, dtype=torch.long)
    logits = predict_stack(template, dict(stacked), index, data)
    return logits[:, : int(data.n[task])].argmax(-1).cpu()


@torch.no_grad()
def nearest_by_agreement(
    template: nn.Module,
    samples: Mapping[str, torch.Tensor],
    sample_task: torch.Tensor,
    zoo: Mapping[str, torch.Tensor],
    data: TaskStack,
    n_classes: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest zoo member of every sample in function.

    The distance between a sample conditioned on task ``t`` and a zoo member is the
    fraction of task ``t``'s inputs (``data``, e.g. the test split) on which their
    predicted labels differ; every zoo member is compared, whatever it was trained on.

    Parameters
    ----------
    template : nn.Module
        Architecture shared by samples and zoo members.
    samples : mapping name -> Tensor (B, *shape)
    sample_task : LongTensor (B,)
        Task (index into ``data``) each sample was generated for.
    zoo : mapping name -> Tensor (N, *shape)
    data : TaskStack
        Inputs of every task.
    n_classes : int
        Output classes (for the one-hot agreement product).

    Returns
    -------
    nearest : LongTensor (B,)
        Row of the nearest zoo member.
    agreement : Tensor (B,)
        Its prediction agreement with the sample, in ``[0, 1]``.
    """
    b = len(sample_task)
    nearest = torch.empty(b, dtype=torch.long)
    agreement = torch.empty(b)
    for t in sample_task.unique().tolist():
        rows = (sample_task == t).nonzero().flatten()
        ps = _predictions(template, {k: v[rows] for k, v in samples.items()}, t, data)
        pz = _predictions(template, zoo, t, data)
        oh_s = nn.functional.one_hot(ps, n_classes).float()  # (b_t, n, C)
        oh_z = nn.functional.one_hot(pz, n_classes).float()  # (N, n, C)
        agree = torch.einsum("snc,znc->sz", oh_s, oh_z) / ps.shape[1]
        best, idx = agree.max(1)
        nearest[rows], agreement[rows] = idx, best
    return nearest, agreement


def nearest_by_l2(
    template: nn.Module, samples: Mapping[str, torch.Tensor], zoo: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest zoo member of every sample in weight space: ``(rows (B,), distances (B,))``.

    Both stacks are flattened through ``template``'s :class:`ParameterSpec`, so the order
    in which they list their tensors does not matter.
    """
    spec = ParameterSpec.from_module(template)
    dist = torch.cdist(vectorize(dict(samples), spec).double(), vectorize(dict(zoo), spec).double())
    d, idx = dist.min(1)
    return idx, d.float()


def retrieval_matrix(
    nearest_task: torch.Tensor, sample_task: torch.Tensor, n_tasks: int
) -> torch.Tensor:
    """Row-normalized confusion ``(T, T)``: entry ``[t, u]`` is the fraction of samples
    conditioned on task ``t`` whose nearest zoo member was trained on task ``u``."""
    counts = torch.zeros(n_tasks, n_tasks)
    counts.index_put_(
        (sample_task.long(), nearest_task.long()), torch.ones(len(sample_task)), accumulate=True
    )
    return counts / counts.sum(1, keepdim=True).clamp(min=1)


def evaluate_retrieval(
    template: nn.Module,
    sampler: Sampler,
    datasets: Sequence[SplitDataset],
    zoo: Mapping[str, torch.Tensor],
    zoo_task: torch.Tensor,
    n_candidates: int,
    shots: int,
    seed: int,
) -> RetrievalScores:
    """Sample ``n_candidates`` networks per seen dataset and compare them with the zoo.

    Parameters
    ----------
    template : nn.Module
        The (shared) architecture of the zoo and of the generated networks.
    sampler : callable
        ``sampler(sets (T, K, shots, *input_shape), n) -> {name: (T * n, *shape)}``,
        row ``t * n + i`` being candidate ``i`` for dataset ``t`` (see
        :data:`weightspace.generators.d2nwg_stages.Sampler`); it featurizes the raw sets.
    datasets : sequence of SplitDataset
        The seen datasets, in the order of the zoo's task ids.
    zoo : mapping name -> Tensor (N, *shape)
        Zoo members' weights.
    zoo_task : LongTensor (N,)
        Dataset (index into ``datasets``) each zoo member was trained on.
    n_candidates : int
        ``K``, networks sampled per dataset.
    shots : int
        Conditioning samples per class, drawn from each dataset's training split.
    seed : int
        Seed of the support-set draw.

    Returns
    -------
    RetrievalScores
        Per dataset ``(T,)``: ``zoo_mean``, ``zoo_best`` (zoo member best on validation,
        its test accuracy), ``sampled_mean``, ``sampled_best`` (best-of-K on validation),
        ``retrieval`` (function space), ``retrieval_l2`` (weight space). Per sample
        ``(T * K,)``: ``sampled_test``, ``sample_task``, ``nearest`` (zoo row, function
        space), ``agreement`` (with it). Also ``confusion`` ``(T, T)`` (function space),
        ``confusion_l2`` and the stacked samples under ``stacked``.
    """
    t = len(datasets)
    if n_candidates < 1:
        raise InvalidParameterError(f"n_candidates must be >= 1, got {n_candidates}")
    n_zoo = next(iter(zoo.values())).shape[0]
    if zoo_task.shape != (n_zoo,):
        raise ShapeError(f"zoo_task must be ({n_zoo},), got {tuple(zoo_task.shape)}")
    missing = sorted(set(range(t)) - set(zoo_task.tolist()))
    if missing:
        raise InvalidParameterError(
            f"datasets {missing} have no zoo member: every seen dataset needs zoo members "
            "to compare and retrieve against"
        )
    _, n_classes = check_shared_architecture(datasets)
    group = group_data(datasets, shots, seed)
    res = score_group(template, sampler, group, n_candidates, "val")
    samples, sample_task = res.stacked, res.task_index
    zoo_test = stack_accuracy(template, zoo, zoo_task, group.test)
    zoo_val = stack_accuracy(template, zoo, zoo_task, group.val)
    zoo_mean, zoo_best = torch.empty(t), torch.empty(t)
    for i in range(t):
        rows = (zoo_task == i).nonzero().flatten()
        zoo_mean[i] = zoo_test[rows].mean()
        zoo_best[i] = zoo_test[rows[zoo_val[rows].argmax()]]
    nearest, agreement = nearest_by_agreement(
        template, samples, sample_task, zoo, group.test, n_classes
    )
    nearest_l2, _ = nearest_by_l2(template, samples, zoo)
    hit = (zoo_task[nearest] == sample_task).float().view(t, n_candidates)
    hit_l2 = (zoo_task[nearest_l2] == sample_task).float().view(t, n_candidates)
    return RetrievalScores(
        zoo_mean=zoo_mean,
        zoo_best=zoo_best,
        sampled_mean=res.test.view(t, n_candidates).mean(1),
        sampled_best=res.best,
        retrieval=hit.mean(1),
        retrieval_l2=hit_l2.mean(1),
        sampled_test=res.test,
        sample_task=sample_task,
        nearest=nearest,
        agreement=agreement,
        confusion=retrieval_matrix(zoo_task[nearest], sample_task, t),
        confusion_l2=retrieval_matrix(zoo_task[nearest_l2], sample_task, t),
        stacked=samples,
        seconds_per_model=res.seconds_per_model,
        n_candidates=n_candidates,
    )
