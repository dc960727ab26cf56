"""Training-free and cheap baselines for the few-shot head protocol (D2NWG Table 1).

``d2nwg_diffusion_weight_generation_review_discussion.txt`` §4 compares generated heads
with heads that need no generator. A sampled head is only interesting if it beats what
one gets almost for free from the same support set or the same zoo:

- :func:`prototype_heads` — the nearest-class-mean classifier of the support set, written
  as ``Linear(d, k)`` heads (no training at all);
- :func:`probe_heads` — a linear probe trained on the support set (full-batch Adam
  through :func:`weightspace.zoo.train.train_stack`);
- :func:`row_lookup_heads` — each query class's row averaged over every zoo head that
  contains that class (only for classes the zoo has seen);
- :func:`nearest_member_matched` — the nearest zoo member (as
  :func:`weightspace.evaluation.d2nwg_protocol.nearest_member_init`) with its rows
  reordered to the query's classes by an optimal one-to-one matching of class prototypes;
- :func:`zoo_best_of_k` — per zoo task, the test accuracy of its best-validation member
  among ``k`` members (exact expectation over the ``k``-subsets of its members);
- :func:`select_lr` — one fine-tuning learning rate per initialisation family, chosen on
  validation accuracy so that test data never steers fine-tuning.

A head here is the project's ``HEAD`` (:data:`weightspace.data.class_pool.HEAD`): a
registry MLP with no hidden layer, whose stacked state is ``"1.weight"`` ``(T, k, d)`` and
``"1.bias"`` ``(T, k)``. Functions that reorder or average rows treat axis 1 of every
stacked tensor as the class axis, which is exactly the case for such a head.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from weightspace.errors import EmptyZooError, InvalidParameterError, ShapeError
from weightspace.evaluation.fewshot import finetune_curves
from weightspace.zoo.evaluate import stack_accuracy
from weightspace.zoo.init import init_stack
from weightspace.zoo.tasks import TaskStack
from weightspace.zoo.train import StackHParams, train_stack

HEAD_WEIGHT = "1.weight"
"""Stacked-state name of a ``HEAD``'s weight ``(T, k, d)``."""
HEAD_BIAS = "1.bias"
"""Stacked-state name of a ``HEAD``'s bias ``(T, k)``."""


def _class_means(support: TaskStack, n_classes: int) -> torch.Tensor:
    """Mean support feature of every class of every task, ``(T, n_classes, d)``."""
    t, n_max = support.y.shape
    x = support.x.reshape(t, n_max, -1)
    real = torch.arange(n_max, device=support.y.device)[None, :] < support.n[:, None]
    y = support.y
    bad = real & ((y < 0) | (y >= n_classes))
    if bool(bad.any()):
        raise InvalidParameterError(
            f"support labels must lie in [0, {n_classes}), got {sorted(set(y[bad].tolist()))}; "
            "pass the tasks' number of classes as n_classes"
        )
    onehot = F.one_hot(y.clamp(0, n_classes - 1), n_classes).to(x.dtype) * real[..., None]
    counts = onehot.sum(1)  # (T, k)
    empty = (counts == 0).nonzero().tolist()
    if empty:
        raise InvalidParameterError(
            f"(task, class) pairs {empty[:5]} have no support sample, so their class mean is "
            "undefined; give every task at least one support sample per class"
        )
    return onehot.transpose(1, 2) @ x / counts[..., None]


def prototype_heads(
    support: TaskStack,
    n_classes: int,
    names: tuple[str, str] = (HEAD_WEIGHT, HEAD_BIAS),
) -> dict[str, torch.Tensor]:
    """Nearest-class-mean classifiers of the support sets, as linear heads.

    With ``mu_c`` the mean support feature of class ``c``, the head has
    ``W_c = 2 mu_c`` and ``b_c = -||mu_c||^2``, so its logit is
    ``||x||^2 - ||x - mu_c||^2`` and its argmax is ``argmin_c ||x - mu_c||^2``.

    Parameters
    ----------
    support : TaskStack
        Support sets: x ``(T, N_max, *input_shape)`` (flattened to ``d`` features),
        y ``(T, N_max)``; positions ``>= n[t]`` are padding and are ignored.
    n_classes : int
        ``k``, the classes of every task (labels ``0 .. k-1``).
    names : (str, str)
        Names of the weight and bias in the returned state (default: ``HEAD``'s).

    Returns
    -------
    dict name -> Tensor
        Weight ``(T, k, d)`` and bias ``(T, k)``, in the dtype of ``support.x``.

    Raises
    ------
    InvalidParameterError
        If ``n_classes < 1``, a label is out of range or a task lacks a class.
    """
    if n_classes < 1:
        raise InvalidParameterError(f"n_classes must be >= 1, got {n_classes}")
    mu = _class_means(support, n_classes)
    return {names[0]: 2 * mu, names[1]: -(mu**2).sum(-1)}


def _head_outputs(template: nn.Module, support: TaskStack) -> int:
    """Number of logits of ``template`` on one sample of the support sets' shape."""
    x = torch.zeros(1, *support.x.shape[2:], dtype=torch.float32)
    device = next(template.parameters()).device
    with torch.no_grad():
        return int(template.eval()(x.to(device)).shape[-1])


def probe_heads(
    template: nn.Module,
    support: TaskStack,
    n_classes: int,
    steps: int,
    lr: float,
    seed: int = 0,
    init_scale: float = 0.0,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
) -> dict[str, torch.Tensor]:
    """Linear probes trained on the support sets (``steps`` full-batch steps per task).

    One probe per task, trained together by :func:`weightspace.zoo.train.train_stack`
    with the batch size set to the padded support size, so every step sees a task's whole
    support set. There is no separate "to convergence" routine: pass a large ``steps``
    (e.g. 500). On a linearly separable support set the unregularised loss has no
    minimiser (the weights grow forever), so a loss-tolerance stop would be arbitrary;
    set ``weight_decay > 0`` for a regularised probe with a unique optimum.

    Parameters
    ----------
    template : nn.Module
        The head architecture with ``n_classes`` outputs (e.g. ``HEAD``), on the device
        of ``support``.
    support : TaskStack
        Support sets ``(T, N_max, *input_shape)``.
    n_classes : int
        ``k``; must equal the template's number of outputs.
    steps : int
        Full-batch optimiser steps (>= 1).
    lr : float
        Learning rate (> 0).
    seed : int
        Task ``t`` uses seed ``seed + t`` (batch order; initial weights if
        ``init_scale > 0``).
    init_scale : float
        ``0`` starts from all-zero parameters (deterministic, the default); ``> 0`` from
        the seeded zoo initialisation with the weight bound scaled by ``init_scale``.
    weight_decay : float
        Passed to the optimiser.
    optimizer : {"adam", "adamw", "sgd"}

    Returns
    -------
    dict name -> Tensor (T, *shape)
        The trained heads, on the CPU.
    """
    if steps < 1:
        raise InvalidParameterError(f"probe steps must be >= 1, got {steps}")
    if not lr > 0:
        raise InvalidParameterError(f"probe lr must be > 0, got {lr}")
    if init_scale < 0:
        raise InvalidParameterError(f"init_scale must be >= 0, got {init_scale}")
    outputs = _head_outputs(template, support)
    if outputs != n_classes:
        raise ShapeError(
            f"the template has {outputs} outputs but the tasks have n_classes={n_classes}; "
            "build the head with as many outputs as classes per task"
        )
    t = int(support.x.shape[0])
    seeds = torch.arange(t) + int(seed)
    init = init_stack(template, seeds, init_scale if init_scale > 0 else 1.0)
    if init_scale == 0:
        init = {k: torch.zeros_like(v) for k, v in init.items()}
    hp = StackHParams(
        seeds=seeds,
        lr=torch.full((t,), float(lr)),
        weight_decay=torch.full((t,), float(weight_decay)),
        epochs=torch.full((t,), int(steps)),
        init_scale=torch.ones(t),
    )
    result = train_stack(
        template, hp, torch.arange(t), support, support.n_max, optimizer=optimizer, init=init
    )
    return result.final


def _class_axis_k(stacked: Mapping[str, torch.Tensor], what: str) -> int:
    """The shared size of axis 1 (the class axis) of every tensor of a head stack."""
    if not stacked:
        raise EmptyZooError(f"{what} holds no tensors")
    sizes = {n: tuple(v.shape) for n, v in stacked.items()}
    ks = {s[1] if len(s) > 1 else None for s in sizes.values()}
    if len(ks) != 1 or None in ks:
        raise ShapeError(
            f"every tensor of {what} must be (rows, k, ...) with the class axis at 1, got "
            f"{sizes}; only heads whose every tensor is indexed by class (Linear(d, k)) apply"
        )
    return int(ks.pop())


def _check_tuples(tuples: Sequence[tuple[int, ...]], k: int, what: str) -> torch.Tensor:
    """Class tuples as a LongTensor ``(len, k)``; every tuple must have ``k`` classes."""
    lengths = sorted({len(c) for c in tuples})
    if lengths != [k]:
        raise ShapeError(f"{what} must all have k={k} classes (the heads' rows), got {lengths}")
    return torch.tensor([list(c) for c in tuples], dtype=torch.int64)


def lookup_coverage(
    zoo_task_classes: Sequence[tuple[int, ...]],
    task_of_row: torch.Tensor,
    query_classes: Sequence[tuple[int, ...]],
) -> torch.Tensor:
    """Which query classes appear in at least one zoo head, ``(T, k)`` bool.

    :func:`row_lookup_heads` applies to the tasks whose row is all True (unseen
    combinations of seen classes), not to novel classes.
    """
    present = {c for t in set(task_of_row.tolist()) for c in zoo_task_classes[int(t)]}
    return torch.tensor([[c in present for c in q] for q in query_classes], dtype=torch.bool)


def row_lookup_heads(
    zoo_stacked: Mapping[str, torch.Tensor],
    zoo_task_classes: Sequence[tuple[int, ...]],
    task_of_row: torch.Tensor,
    query_classes: Sequence[tuple[int, ...]],
) -> dict[str, torch.Tensor]:
    """Compose heads for new class combinations from the rows of the zoo heads.

    Row ``j`` of query task ``t`` (its class ``c = query_classes[t][j]``) is the mean,
    over every zoo head (row of ``zoo_stacked``) whose task contains ``c``, of that head's
    row for ``c`` — the weight row and the bias entry alike (every tensor's axis 1).

    Parameters
    ----------
    zoo_stacked : mapping name -> Tensor (Z, k, ...)
        Zoo heads, e.g. weight ``(Z, k, d)`` and bias ``(Z, k)``.
    zoo_task_classes : sequence of tuple of int
        Pool classes of every zoo task (row ``i`` of a head of task ``s`` is class
        ``zoo_task_classes[s][i]``).
    task_of_row : LongTensor (Z,)
        Zoo task of every head.
    query_classes : sequence of tuple of int
        Pool classes of the ``T`` query tasks, ``k`` each.

    Returns
    -------
    dict name -> Tensor (T, k, ...)

    Raises
    ------
    InvalidParameterError
        If a query class appears in no zoo head (a novel class): the baseline is undefined
        there. :func:`lookup_coverage` tells which tasks it applies to.
    ShapeError
        If tuples and heads disagree on ``k`` or on the number of heads.
    """
    k = _class_axis_k(zoo_stacked, "zoo_stacked")
    z = len(task_of_row)
    if any(v.shape[0] != z for v in zoo_stacked.values()):
        raise ShapeError(f"zoo_stacked must have {z} rows, one per entry of task_of_row")
    if z == 0:
        raise EmptyZooError("the zoo has no heads to look class rows up in")
    if not query_classes:
        raise InvalidParameterError("no query tasks given")
    zoo_c = _check_tuples(zoo_task_classes, k, "zoo_task_classes")
    query_c = _check_tuples(query_classes, k, "query_classes")
    if int(task_of_row.min()) < 0 or int(task_of_row.max()) >= len(zoo_c):
        raise ShapeError(f"task_of_row must index the {len(zoo_c)} zoo tasks")
    if bool((zoo_c < 0).any()) or bool((query_c < 0).any()):
        raise InvalidParameterError("pool class ids must be >= 0")
    row_c = zoo_c[task_of_row.long().cpu()].flatten()  # (Z * k,) pool class of each head row
    n_ids = int(max(row_c.max(), query_c.max())) + 1
    counts = torch.zeros(n_ids).index_add_(0, row_c, torch.ones(len(row_c)))
    missing = (counts[query_c] == 0).nonzero().tolist()
    if missing:
        pairs = [(t, int(query_c[t, j])) for t, j in missing]
        raise InvalidParameterError(
            f"(query task, class) pairs {pairs[:5]} appear in no zoo head, so the row lookup "
            "is undefined (novel classes); restrict it to tasks where lookup_coverage is all "
            "True"
        )
    out = {}
    for name, v in zoo_stacked.items():
        rows = v.reshape(z * k, *v.shape[2:])
        sums = v.new_zeros(n_ids, *v.shape[2:]).index_add_(0, row_c.to(v.device), rows)
        mean = sums / counts.to(v).view(-1, *([1] * (v.dim() - 2)))
        out[name] = mean[query_c.to(v.device)]
    return out


def matched_permutation(proto_a: torch.Tensor, proto_b: torch.Tensor) -> torch.Tensor:
    """One-to-one matching of the classes of ``a`` to those of ``b`` per task.

    Maximises ``sum_j cos(proto_a[t, j], proto_b[t, perm[t, j]])`` (Hungarian algorithm,
    :func:`scipy.optimize.linear_sum_assignment`).

    Parameters
    ----------
    proto_a, proto_b : Tensor (T, k, d)
        Class prototypes (or any class descriptors) of paired tasks.

    Returns
    -------
    LongTensor (T, k)
        ``perm[t, j]``: the class of ``b`` matched to class ``j`` of ``a``.
    """
    if proto_a.dim() != 3 or proto_a.shape != proto_b.shape:
        raise ShapeError(
            f"prototypes must both be (T, k, d), got {tuple(proto_a.shape)} and "
            f"{tuple(proto_b.shape)}"
        )
    sim = F.normalize(proto_a.double(), dim=-1) @ F.normalize(proto_b.double(), dim=-1).mT
    perms = []
    for s in sim.cpu().numpy():
        rows, cols = linear_sum_assignment(s, maximize=True)
        perms.append(torch.as_tensor(cols[rows.argsort()], dtype=torch.int64))
    return torch.stack(perms)


def nearest_member_matched(
    embed_q: torch.Tensor,
    embed_z: torch.Tensor,
    zoo_stacked: Mapping[str, torch.Tensor],
    task_of_row: torch.Tensor,
    proto_q: torch.Tensor,
    proto_z: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The nearest zoo member, its rows reordered to the query's classes.

    For query task ``t``: the zoo task ``s`` with the most cosine-similar dataset
    embedding (among zoo tasks with at least one head; ties: the first), its first head
    (lowest row, as :func:`~weightspace.evaluation.d2nwg_protocol.nearest_member_init`),
    and row ``j`` of the result = that head's row ``perm[j]`` from
    :func:`matched_permutation` of ``proto_q[t]`` and ``proto_z[s]`` (weight rows and bias
    entries move together).

    Parameters
    ----------
    embed_q : Tensor (T, e)
        Dataset embeddings of the query tasks.
    embed_z : Tensor (Tz, e)
        Dataset embeddings of the zoo tasks.
    zoo_stacked : mapping name -> Tensor (Z, k, ...)
    task_of_row : LongTensor (Z,)
        Zoo task (index into ``embed_z``) of every head.
    proto_q : Tensor (T, k, d)
        Class prototypes of the query tasks (e.g. support class means).
    proto_z : Tensor (Tz, k, d)
        Class prototypes of the zoo tasks, in the order of their heads' rows.

    Returns
    -------
    dict name -> Tensor (T, k, ...)
    """
    k = _class_axis_k(zoo_stacked, "zoo_stacked")
    if embed_q.dim() != 2 or embed_z.dim() != 2 or embed_q.shape[1] != embed_z.shape[1]:
        raise ShapeError(
            f"embeddings must be (T, e) and (Tz, e), got {tuple(embed_q.shape)} and "
            f"{tuple(embed_z.shape)}"
        )
    if proto_q.shape[:2] != (embed_q.shape[0], k) or proto_z.shape[:2] != (embed_z.shape[0], k):
        raise ShapeError(
            f"prototypes must be (T, k={k}, d) and (Tz, k, d) matching the embeddings, got "
            f"{tuple(proto_q.shape)} and {tuple(proto_z.shape)}"
        )
    first: dict[int, int] = {}
    for row, task in enumerate(task_of_row.tolist()):
        first.setdefault(int(task), row)
    if not first:
        raise EmptyZooError("the zoo has no heads to take the nearest member from")
    if max(first) >= embed_z.shape[0] or min(first) < 0:
        raise ShapeError(f"task_of_row must index the {embed_z.shape[0]} zoo embeddings")
    sim = F.normalize(embed_q.double(), dim=1) @ F.normalize(embed_z.double(), dim=1).T
    has_head = torch.zeros(embed_z.shape[0], dtype=torch.bool)
    has_head[list(first)] = True
    sim[:, ~has_head.to(sim.device)] = -torch.inf
    nearest = sim.argmax(1).cpu()
    rows = torch.tensor([first[int(s)] for s in nearest])
    perm = matched_permutation(proto_q, proto_z[nearest.to(proto_z.device)])
    out = {}
    for name, v in zoo_stacked.items():
        head = v[rows.to(v.device)]
        idx = perm.to(v.device).view(*perm.shape, *([1] * (v.dim() - 2))).expand_as(head)
        out[name] = head.gather(1, idx)
    return out


def zoo_best_of_k(
    val_acc: torch.Tensor,
    test_acc: torch.Tensor,
    task_of_row: torch.Tensor,
    tasks: torch.Tensor,
    k: int | None = None,
) -> torch.Tensor:
    """Test accuracy of the best-validation member among ``k`` of each task's zoo members.

    With ``k`` below a task's ``n`` members it is the *expected* test accuracy of the
    best-validation member of ``k`` members drawn without replacement (every ``k``-subset
    equally likely), computed exactly: with the members ranked by validation accuracy
    (``i = 0`` the best; ties go to the lower row), member ``i`` is the best of a random
    ``k``-subset with probability ``C(n - 1 - i, k - 1) / C(n, k)`` (the subset holds it
    and ``k - 1`` of the ``n - 1 - i`` members ranked below it). This is "the zoo's
    best-of-k" whatever the zoo's seeds per task, without choosing which ``k`` count.

    Parameters
    ----------
    val_acc, test_acc : Tensor (Z,)
        Accuracy of every zoo member.
    task_of_row : LongTensor (Z,)
        Zoo task of every member.
    tasks : LongTensor (T,)
        Tasks to score.
    k : int, optional
        Members to choose from; default every member of the task (``k = n``: the test
        accuracy of its best-validation member).

    Returns
    -------
    Tensor (T,)

    Raises
    ------
    EmptyZooError
        If a task has no member.
    InvalidParameterError
        If ``k < 1`` or a task has fewer than ``k`` members.
    """
    if not val_acc.shape == test_acc.shape == task_of_row.shape or val_acc.dim() != 1:
        raise ShapeError(
            f"val_acc, test_acc and task_of_row must all be (Z,), got {tuple(val_acc.shape)}, "
            f"{tuple(test_acc.shape)}, {tuple(task_of_row.shape)}"
        )
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise InvalidParameterError(f"k must be an integer >= 1, got {k!r}")
    out = []
    for t in tasks.reshape(-1).tolist():
        rows = (task_of_row == t).nonzero().flatten()
        n = len(rows)
        if n == 0:
            raise EmptyZooError(f"zoo task {t} has no member; score only tasks in task_of_row")
        kk = n if k is None else k
        if kk > n:
            raise InvalidParameterError(
                f"zoo task {t} has {n} members, fewer than the best-of-{kk} asked for; lower "
                "the k (comparisons.zoo_best_of) or train more seeds per task"
            )
        order = torch.sort(-val_acc[rows].double(), stable=True).indices  # rows ascend
        ranked = test_acc[rows][order].double()
        weight = torch.tensor(
            [math.comb(n - 1 - i, kk - 1) / math.comb(n, kk) for i in range(n)],
            dtype=torch.float64, device=ranked.device,
        )  # fmt: skip
        out.append((weight * ranked).sum().to(test_acc.dtype))
    return torch.stack(out) if out else test_acc.new_zeros(0)


def select_lr(
    template: nn.Module,
    init: Mapping[str, torch.Tensor],
    task_index: torch.Tensor,
    support: TaskStack,
    val: TaskStack,
    steps: int,
    grid: Sequence[float],
    optimizer: str = "adam",
    seed: int = 0,
    keep_init: bool = False,
) -> tuple[float, torch.Tensor]:
    """One fine-tuning learning rate for an initialisation family, chosen on validation.

    Every rate of ``grid`` fine-tunes ``init`` for ``steps`` full-batch steps on the
    support sets (:func:`weightspace.evaluation.fewshot.finetune_curves`); the rate with
    the best mean validation accuracy wins (ties: the first in ``grid``). A rate whose
    fine-tuned heads give non-finite validation logits (divergence) scores NaN and is never
    chosen. No test split is an argument, so test data cannot steer the choice.

    Parameters
    ----------
    template : nn.Module
        The head architecture.
    init : mapping name -> Tensor (B, *shape)
        The initialisations of one family (sampled, random, nearest member, ...).
    task_index : LongTensor (B,)
        Task of each initialisation in ``support`` / ``val``.
    support, val : TaskStack
        Support sets (fine-tuned on) and validation splits (selected on).
    steps : int
        Fine-tuning steps (>= 1).
    grid : sequence of float
        Candidate learning rates, each > 0.
    optimizer : {"adam", "adamw", "sgd"}
    seed : int
        Batch-order seed of :func:`finetune_curves`.
    keep_init : bool
        Not fine-tuning at all (rate ``0``) is a candidate too, chosen when ``init``
        itself is at least as good on validation as every rate of ``grid`` (fine-tuning
        then cannot make a good initialisation worse on validation).

    Returns
    -------
    lr : float
        The chosen rate (``0.0``: keep the initialisation).
    table : Tensor (B, 1 + len(grid))
        Validation accuracy per member: column 0 of ``init`` itself (not fine-tuned),
        column ``1 + g`` after fine-tuning with ``grid[g]`` (NaN where it diverged); compare
        ``table[:, 0].mean()`` with the chosen column to see whether fine-tuning hurts.
    """
    if steps < 1:
        raise InvalidParameterError(f"fine-tuning steps must be >= 1, got {steps}")
    rates = [float(r) for r in grid]
    if not rates or any(not r > 0 for r in rates):
        raise InvalidParameterError(f"grid must hold learning rates > 0, got {list(grid)}")
    columns = [stack_accuracy(template, init, task_index, val)]
    failure: InvalidParameterError | None = None
    for r in rates:
        try:
            curve = finetune_curves(
                template, init, task_index, support, val, [steps], r, optimizer=optimizer,
                seed=seed,
            )  # fmt: skip
        except InvalidParameterError as err:  # non-finite logits: this rate diverged
            failure = err
            columns.append(torch.full_like(columns[0], float("nan")))
            continue
        columns.append(curve[:, 1])
    table = torch.stack(columns, 1)
    means = table[:, 1:].mean(0)
    if bool(means.isnan().all()):
        raise InvalidParameterError(
            f"fine-tuning failed at every learning rate of {rates} (diverged to non-finite "
            "weights, or the arguments are invalid: see the chained error); add smaller rates"
        ) from failure
    best = int(means.nan_to_num(nan=-torch.inf).argmax())
    if keep_init and float(table[:, 0].mean()) >= float(means[best]):
        return 0.0, table
    return rates[best], table


__all__ = [
    "HEAD_BIAS",
    "HEAD_WEIGHT",
    "lookup_coverage",
    "matched_permutation",
    "nearest_member_matched",
    "probe_heads",
    "prototype_heads",
    "row_lookup_heads",
    "select_lr",
    "zoo_best_of_k",
]
