"""Exact checks of the training-free / cheap few-shot baselines.

Every baseline is compared with an answer computed independently: by hand, by brute force
(nearest centroid, all permutations) or by the function it is built on.
"""

from __future__ import annotations

import inspect
import itertools

import pytest
import torch

from weightspace.data.base import Split
from weightspace.data.class_pool import HEAD
from weightspace.errors import EmptyZooError, InvalidParameterError, ShapeError
from weightspace.evaluation import fewshot_baselines as fb
from weightspace.evaluation.fewshot import finetune_curves
from weightspace.nets import build_model
from weightspace.zoo.evaluate import stack_accuracy
from weightspace.zoo.init import init_stack
from weightspace.zoo.tasks import TaskStack
from weightspace.zoo.train import predict_stack

pytestmark = pytest.mark.usefixtures("one_thread")

W, B = fb.HEAD_WEIGHT, fb.HEAD_BIAS


def _head(d: int, k: int) -> torch.nn.Module:
    return build_model(HEAD["name"], HEAD["config"], (d,), k)


def _clusters(means: torch.Tensor, shots: list[int], noise: float, seed: int) -> TaskStack:
    """Task ``t`` draws ``shots[t]`` samples per class around ``means[t]`` ``(T, k, d)``."""
    gen = torch.Generator().manual_seed(seed)
    splits = []
    for t, n in enumerate(shots):
        y = torch.arange(means.shape[1]).repeat_interleave(n)
        x = means[t, y] + noise * torch.randn(len(y), means.shape[2], generator=gen)
        splits.append(Split(x, y))
    return TaskStack.from_splits(splits)


def _logits(heads: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits ``(T, N, k)`` of linear heads on ``x`` ``(T, N, d)``."""
    return torch.einsum("tnd,tkd->tnk", x, heads[W]) + heads[B][:, None, :]


# --- prototype heads ----------------------------------------------------------------------


def test_prototype_heads_hand_computed_two_class_with_padding():
    a = Split(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 4.0]]),
              torch.tensor([0, 0, 1, 1]))  # fmt: skip
    # Task b is shorter: its padded 4th sample (0, 0) with label 0 must not count.
    b = Split(torch.tensor([[1.0, 1.0], [3.0, 3.0], [-1.0, -1.0]]), torch.tensor([0, 0, 1]))
    heads = fb.prototype_heads(TaskStack.from_splits([a, b]), 2)
    # a: mu0 = (1, 0), mu1 = (0, 3); b: mu0 = (2, 2), mu1 = (-1, -1).
    assert torch.equal(heads[W], torch.tensor([[[2.0, 0.0], [0.0, 6.0]],
                                               [[4.0, 4.0], [-2.0, -2.0]]]))  # fmt: skip
    assert torch.equal(heads[B], torch.tensor([[-1.0, -9.0], [-8.0, -2.0]]))


def test_prototype_argmax_is_brute_force_nearest_centroid():
    gen = torch.Generator().manual_seed(3)
    t, k, d = 5, 4, 7
    shots = [3, 1, 5, 2, 4]  # different sizes: padding in every task but one
    support = _clusters(torch.randn(t, k, d, generator=gen), shots, 1.0, 4)  # Split: float32
    support = TaskStack(support.x.double(), support.y, support.n)  # exact float64 sums
    heads = fb.prototype_heads(support, k)
    mu = torch.stack(
        [
            torch.stack([support.x[i, : support.n[i]][support.y[i, : support.n[i]] == c].mean(0)
                         for c in range(k)])
            for i in range(t)
        ]
    )  # fmt: skip
    query = 2 * torch.randn(t, 200, d, generator=gen, dtype=torch.float64)
    nearest = torch.cdist(query, mu).argmin(-1)
    assert torch.equal(_logits(heads, query).argmax(-1), nearest)
    # Through the project's HEAD module (float32): names and layout fit predict_stack.
    q32 = TaskStack(query.float(), nearest, torch.full((t,), 200))
    heads32 = {n: v.float() for n, v in heads.items()}
    assert torch.equal(stack_accuracy(_head(d, k), heads32, torch.arange(t), q32), torch.ones(t))


def test_prototype_heads_reject_missing_class_and_bad_labels():
    s = Split(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(InvalidParameterError, match="no support sample"):
        fb.prototype_heads(TaskStack.from_splits([s]), 3)
    with pytest.raises(InvalidParameterError, match="labels must lie"):
        fb.prototype_heads(TaskStack.from_splits([s]), 1)


# --- linear probe --------------------------------------------------------------------------


def test_probe_reaches_full_support_accuracy_on_separable_data():
    gen = torch.Generator().manual_seed(5)
    t, k, d = 3, 3, 6
    means = 4 * torch.nn.functional.normalize(torch.randn(t, k, d, generator=gen), dim=-1)
    support = _clusters(means, [5, 3, 4], 0.3, 6)
    centroid = fb.prototype_heads(support, k)  # separable: the centroids classify perfectly
    assert torch.equal(stack_accuracy(_head(d, k), centroid, torch.arange(t), support),
                       torch.ones(t))  # fmt: skip
    template = _head(d, k)
    zero = {n: torch.zeros_like(v) for n, v in centroid.items()}
    assert (stack_accuracy(template, zero, torch.arange(t), support) < 1).all()
    probe = fb.probe_heads(template, support, k, steps=100, lr=0.1)
    assert set(probe) == {W, B}
    assert torch.equal(stack_accuracy(template, probe, torch.arange(t), support), torch.ones(t))
    # One tiny step from zero is not enough: the check above can fail.
    weak = fb.probe_heads(template, support, k, steps=1, lr=1e-6)
    assert (stack_accuracy(template, weak, torch.arange(t), support) < 1).any()


def test_probe_rejects_wrong_n_classes_and_zero_steps():
    support = _clusters(torch.randn(2, 3, 4), [2, 2], 0.1, 0)
    with pytest.raises(ShapeError, match="outputs"):
        fb.probe_heads(_head(4, 3), support, 4, steps=5, lr=0.1)
    with pytest.raises(InvalidParameterError, match="steps"):
        fb.probe_heads(_head(4, 3), support, 3, steps=0, lr=0.1)


# --- row lookup ----------------------------------------------------------------------------


def _hand_zoo():
    """Three zoo tasks of two classes; task 0 has two heads. Row r, position i of the
    weight is ``[10 r + i, 1]``, its bias ``100 r + i``."""
    tasks = [(0, 1), (1, 2), (2, 3)]
    task_of_row = torch.tensor([0, 0, 1, 2])
    w = torch.tensor([[[10.0 * r + i, 1.0] for i in range(2)] for r in range(4)])
    b = torch.tensor([[100.0 * r + i for i in range(2)] for r in range(4)])
    return {W: w, B: b}, tasks, task_of_row


def test_row_lookup_hand_built():
    zoo, tasks, task_of_row = _hand_zoo()
    out = fb.row_lookup_heads(zoo, tasks, task_of_row, [(1, 0), (3, 2)])
    # class 1: rows 0 and 1 at position 1, row 2 at position 0 -> w0 = (1 + 11 + 20) / 3
    # class 0: rows 0 and 1 at position 0 -> w0 = (0 + 10) / 2
    # class 3: row 3 at position 1 -> 31;  class 2: row 2 pos 1, row 3 pos 0 -> (21 + 30) / 2
    assert torch.allclose(out[W], torch.tensor([[[32 / 3, 1.0], [5.0, 1.0]],
                                                [[31.0, 1.0], [25.5, 1.0]]]))  # fmt: skip
    assert torch.allclose(out[B], torch.tensor([[(1 + 101 + 200) / 3, 50.0],
                                                [301.0, (201 + 300) / 2]]))  # fmt: skip


def test_row_lookup_rejects_novel_classes_and_coverage_says_where():
    zoo, tasks, task_of_row = _hand_zoo()
    query = [(0, 2), (4, 1)]
    assert torch.equal(fb.lookup_coverage(tasks, task_of_row, query),
                       torch.tensor([[True, True], [False, True]]))  # fmt: skip
    with pytest.raises(InvalidParameterError, match=r"\(1, 4\)"):
        fb.row_lookup_heads(zoo, tasks, task_of_row, query)
    # A class only in a zoo task without heads is novel too.
    assert not fb.lookup_coverage([*tasks, (5, 6)], task_of_row, [(5, 0)])[0, 0]
    with pytest.raises(ShapeError, match="k=2"):
        fb.row_lookup_heads(zoo, tasks, task_of_row, [(0, 1, 2)])


# --- nearest member with matched rows ------------------------------------------------------


def _brute_force_perm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    sim = (
        torch.nn.functional.normalize(a.double(), dim=-1)
        @ torch.nn.functional.normalize(b.double(), dim=-1).T
    )
    k = len(a)
    best = max(itertools.permutations(range(k)), key=lambda p: float(sim[range(k), p].sum()))
    return torch.tensor(best)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_matched_permutation_equals_brute_force(k):
    gen = torch.Generator().manual_seed(k)
    a, b = torch.randn(2, 12, k, 6, generator=gen)
    perm = fb.matched_permutation(a, b)
    expected = torch.stack([_brute_force_perm(x, y) for x, y in zip(a, b, strict=True)])
    assert torch.equal(perm, expected)
    assert not torch.equal(perm, torch.arange(k).expand_as(perm))  # matching is not a no-op


def test_nearest_member_matched_undoes_a_class_permutation():
    gen = torch.Generator().manual_seed(7)
    tz, k, d, e = 5, 4, 6, 8
    proto_z = torch.randn(tz, k, d, generator=gen)
    embed_z = torch.randn(tz, e, generator=gen)
    task_of_row = torch.tensor([1, 0, 0, 2, 3, 1])  # zoo task 4 has no head
    zoo = {W: torch.randn(6, k, d, generator=gen), B: torch.randn(6, k, generator=gen)}
    p0, p1 = torch.tensor([2, 0, 3, 1]), torch.tensor([1, 0, 2, 3])
    proto_q = torch.stack([proto_z[0][p0], 3 * proto_z[1][p1], proto_z[4]])
    embed_q = torch.stack([2 * embed_z[0], embed_z[1], embed_z[4]])
    out = fb.nearest_member_matched(embed_q, embed_z, zoo, task_of_row, proto_q, proto_z)
    # Query 0 is zoo task 0 with classes reordered by p0: the first head of task 0 (row 1),
    # its rows reordered by p0; query 1 is task 1 (first head: row 0) reordered by p1.
    assert torch.equal(out[W][0], zoo[W][1][p0]) and torch.equal(out[B][0], zoo[B][1][p0])
    assert torch.equal(out[W][1], zoo[W][0][p1]) and torch.equal(out[B][1], zoo[B][0][p1])
    x = torch.randn(200, d, generator=gen)
    pred_zoo = (x @ zoo[W][1].T + zoo[B][1]).argmax(1)  # a zoo label
    pred_q = (x @ out[W][0].T + out[B][0]).argmax(1)  # a query label
    assert torch.equal(p0[pred_q], pred_zoo)  # the same class, named in each label space
    # Query 2 sits on zoo task 4, which has no head: the nearest task with heads is used.
    sims = torch.nn.functional.cosine_similarity(embed_z[:4], embed_z[4][None], dim=1)
    s = int(sims.argmax())
    first = int((task_of_row == s).nonzero()[0])
    perm = fb.matched_permutation(proto_q[2:], proto_z[s][None])[0]
    assert torch.equal(out[W][2], zoo[W][first][perm])


# --- zoo best-of-k -------------------------------------------------------------------------


def test_zoo_best_of_k_by_hand():
    val = torch.tensor([0.5, 0.3, 0.9, 0.9, 0.7])
    test = torch.tensor([0.1, 0.4, 0.3, 0.2, 0.5])
    task_of_row = torch.tensor([0, 1, 0, 0, 1])
    # task 0: rows 0, 2, 3 -> val tie between rows 2 and 3 -> first (row 2) -> 0.3
    # task 1: rows 1, 4 -> row 4 -> 0.5
    out = fb.zoo_best_of_k(val, test, task_of_row, torch.tensor([1, 0]))
    assert torch.equal(out, torch.tensor([0.5, 0.3]))
    with pytest.raises(EmptyZooError, match="task 2"):
        fb.zoo_best_of_k(val, test, task_of_row, torch.tensor([2]))


def _best_of_k_brute(val, test, rows, k):
    """Mean over every k-subset of the rows of its best-validation member's test accuracy
    (ties: the lower row), the definition ``zoo_best_of_k`` computes in closed form."""
    picks = []
    for sub in itertools.combinations(rows, k):
        best = max(sub, key=lambda r: (float(val[r]), -r))
        picks.append(float(test[best]))
    return sum(picks) / len(picks)


@pytest.mark.parametrize("seed", range(6))
def test_zoo_best_of_k_equals_the_mean_over_every_subset(seed):
    gen = torch.Generator().manual_seed(seed)
    n_tasks, n = 5, 7
    task_of_row = torch.arange(n_tasks).repeat(n)[torch.randperm(n_tasks * n, generator=gen)]
    # coarse validation accuracies: ties are common and must go to the lower row
    val = torch.randint(0, 4, (n_tasks * n,), generator=gen).float() / 4
    test = torch.rand(n_tasks * n, generator=gen, dtype=torch.float64)
    tasks = torch.arange(n_tasks)
    for k in range(1, n + 1):
        got = fb.zoo_best_of_k(val, test, task_of_row, tasks, k)
        for t in range(n_tasks):
            rows = (task_of_row == t).nonzero().flatten().tolist()
            assert float(got[t]) == pytest.approx(_best_of_k_brute(val, test, rows, k), abs=1e-12)
    # k = n is the best-validation member itself, as without k (bitwise)
    assert torch.equal(fb.zoo_best_of_k(val, test, task_of_row, tasks, n),
                       fb.zoo_best_of_k(val, test, task_of_row, tasks))  # fmt: skip
    # k = 1 is the mean member
    mean = torch.stack([test[task_of_row == t].mean() for t in range(n_tasks)])
    assert torch.allclose(fb.zoo_best_of_k(val, test, task_of_row, tasks, 1), mean)


def test_zoo_best_of_k_by_hand_with_fewer_than_all_members():
    val = torch.tensor([0.9, 0.8, 0.7])  # ranked: rows 0, 1, 2
    test = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    task_of_row = torch.zeros(3, dtype=torch.long)
    # pairs {0,1} -> 0.3, {0,2} -> 0.3, {1,2} -> 0.6: mean 0.4
    got = fb.zoo_best_of_k(val, test, task_of_row, torch.tensor([0]), 2)
    assert float(got[0]) == pytest.approx(0.4, abs=1e-15)
    with pytest.raises(InvalidParameterError, match="3 members, fewer than the best-of-4"):
        fb.zoo_best_of_k(val, test, task_of_row, torch.tensor([0]), 4)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(InvalidParameterError, match="k must be an integer"):
            fb.zoo_best_of_k(val, test, task_of_row, torch.tensor([0]), bad)


# --- learning-rate selection ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lr_setting():
    gen = torch.Generator().manual_seed(0)
    t, k, d = 4, 3, 8
    means = 2 * torch.nn.functional.normalize(torch.randn(t, k, d, generator=gen), dim=-1)
    support, val = _clusters(means, [5] * t, 0.7, 1), _clusters(means, [30] * t, 0.7, 2)
    template = _head(d, k)
    init = init_stack(template, torch.arange(t) + 100, 1.0)  # random heads: poor at first
    return template, init, torch.arange(t), support, val


def test_select_lr_skips_a_diverging_rate_and_picks_the_one_that_helps(lr_setting):
    template, init, idx, support, val = lr_setting
    lr, table = fb.select_lr(template, init, idx, support, val, 10, (1e38, 0.05))
    assert lr == 0.05
    assert table.shape == (4, 3) and table[:, 1].isnan().all()
    assert table[:, 2].mean() > table[:, 0].mean() + 0.3  # fine-tuning helps here
    # The tiny rate barely moves the random heads; the choice is not the grid order.
    for grid in [(0.05, 1e-6), (1e-6, 0.05)]:
        assert fb.select_lr(template, init, idx, support, val, 10, grid)[0] == 0.05
    with pytest.raises(InvalidParameterError, match="every learning rate"):
        fb.select_lr(template, init, idx, support, val, 10, (1e38,))


def test_select_lr_table_is_validation_accuracy_and_takes_no_test_split(lr_setting):
    template, init, idx, support, val = lr_setting
    grid = (0.5, 0.01)
    _, table = fb.select_lr(template, init, idx, support, val, 3, grid)
    for g, r in enumerate(grid):
        curve = finetune_curves(template, init, idx, support, val, [3], r)
        assert torch.equal(table[:, 0], curve[:, 0])
        assert torch.equal(table[:, 1 + g], curve[:, 1])
    # By construction, selection cannot read test data: no parameter takes a split besides
    # the support sets (fine-tuned on) and the validation splits (selected on).
    params = inspect.signature(fb.select_lr).parameters
    stacks = [n for n, p in params.items() if "TaskStack" in str(p.annotation)]
    assert stacks == ["support", "val"]
    with pytest.raises(InvalidParameterError, match="> 0"):
        fb.select_lr(template, init, idx, support, val, 3, (0.0, 0.1))


def test_select_lr_keeps_a_good_init_only_when_asked(lr_setting):
    template, _, idx, support, val = lr_setting
    # heads fine-tuned already: a large rate makes them worse on validation
    init = {k: v.clone() for k, v in _finetuned(template, lr_setting[1], idx, support).items()}
    lr, table = fb.select_lr(template, init, idx, support, val, 3, (5.0,), keep_init=True)
    assert table[:, 0].mean() >= table[:, 1].mean() and lr == 0.0
    assert fb.select_lr(template, init, idx, support, val, 3, (5.0,))[0] == 5.0
    # a random init: fine-tuning helps, and keep_init does not block it
    assert fb.select_lr(template, lr_setting[1], idx, support, val, 10, (0.05,),
                        keep_init=True)[0] == 0.05  # fmt: skip
    # rate 0 leaves the init unchanged at every step
    curve = finetune_curves(template, init, idx, support, val, [1, 3], 0.0)
    assert torch.equal(curve, table[:, :1].repeat(1, 3))


def _finetuned(template, init, idx, support):
    """The random heads fine-tuned for 30 steps (a good initialisation)."""
    from weightspace.zoo.train import StackHParams, train_stack

    b = len(idx)
    hp = StackHParams(seeds=torch.arange(b), lr=torch.full((b,), 0.05),
                      weight_decay=torch.zeros(b), epochs=torch.full((b,), 30),
                      init_scale=torch.ones(b))  # fmt: skip
    return train_stack(template, hp, idx, support, support.n_max, init=init).final


def test_predict_stack_agrees_with_hand_logits():
    """The hand logits used above are the HEAD module's logits (names and layout)."""
    gen = torch.Generator().manual_seed(9)
    heads = {W: torch.randn(2, 3, 4, generator=gen), B: torch.randn(2, 3, generator=gen)}
    data = TaskStack(torch.randn(2, 5, 4, generator=gen), torch.zeros(2, 5, dtype=torch.int64),
                     torch.full((2,), 5))  # fmt: skip
    got = predict_stack(_head(4, 3), heads, torch.arange(2), data)
    assert torch.allclose(got, _logits(heads, data.x), atol=1e-6)
