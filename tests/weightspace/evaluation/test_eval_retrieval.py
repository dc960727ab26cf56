"""Model retrieval evaluation on hand-made datasets, zoos and samplers."""

from __future__ import annotations

import pytest
import torch

from weightspace.data.base import Split, SplitDataset
from weightspace.errors import InvalidParameterError
from weightspace.evaluation.memorization import memorization_audit
from weightspace.evaluation.retrieval import (
    check_shared_architecture,
    evaluate_retrieval,
    flatten_sets,
    nearest_by_agreement,
    nearest_by_l2,
    retrieval_matrix,
)
from weightspace.nets import build_model
from weightspace.zoo.tasks import TaskStack


def _dataset(name: str, coord: int, seed: int, d: int = 4) -> SplitDataset:
    """Two classes: the sign of input coordinate ``coord``."""
    gen = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        x = torch.rand(n, d, generator=gen) * 2 - 1
        return Split(x, (x[:, coord] > 0).long())

    return SplitDataset(name, split(60), split(40), split(50), 2, (d,), ("neg", "pos"))


def _members(coord: int, scales: list[float], seed: int) -> dict[str, torch.Tensor]:
    """Linear classifiers reading coordinate ``coord`` (plus small noise elsewhere)."""
    gen = torch.Generator().manual_seed(seed)
    b = len(scales)
    w = 0.01 * torch.randn(b, 2, 4, generator=gen)
    s = torch.tensor(scales)
    w[:, 0, coord], w[:, 1, coord] = -s, s
    return {"1.weight": w, "1.bias": torch.zeros(b, 2)}


@pytest.fixture()
def setting():
    datasets = [_dataset("A", 0, 1), _dataset("B", 1, 2)]
    za, zb = _members(0, [1.0, 2.0, 3.0], 3), _members(1, [1.5, 2.5, 3.5], 4)
    zoo = {k: torch.cat([za[k], zb[k]]) for k in za}
    zoo_task = torch.tensor([0, 0, 0, 1, 1, 1])
    template = build_model("mlp", {"hidden": []}, (4,), 2)
    return template, datasets, zoo, zoo_task


def _copies(zoo: dict[str, torch.Tensor], rows_of_task: list[torch.Tensor]):
    """A sampler returning, for condition ``t``, cycled copies of ``rows_of_task[t]``."""

    def sampler(sets: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        assert sets.shape[:3] == (2, 2, 3)
        rows = torch.cat([r[torch.arange(n) % len(r)] for r in rows_of_task[: sets.shape[0]]])
        return {k: v[rows].clone() for k, v in zoo.items()}

    return sampler


def test_samples_copying_dataset_a_are_retrieved_as_a(setting):
    template, datasets, zoo, zoo_task = setting
    a_rows = torch.tensor([0, 1, 2])
    # A generator that ignores its condition and always returns dataset A's networks.
    sampler = _copies(zoo, [a_rows, a_rows])
    res = evaluate_retrieval(template, sampler, datasets, zoo, zoo_task, 4, shots=3, seed=0)
    assert res.retrieval.tolist() == [1.0, 0.0]
    assert res.retrieval_l2.tolist() == [1.0, 0.0]
    assert torch.equal(res.confusion, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert res.zoo_mean.tolist() == [1.0, 1.0]  # each zoo member solves its dataset
    assert res.sampled_mean[0] == 1.0 and res.sampled_best[0] == 1.0
    assert res.sampled_mean[1] < 0.8  # A's networks on B: near chance
    assert (res.agreement[:4] == 1.0).all()


def test_condition_following_sampler_has_full_retrieval(setting):
    template, datasets, zoo, zoo_task = setting
    sampler = _copies(zoo, [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])])
    res = evaluate_retrieval(template, sampler, datasets, zoo, zoo_task, 3, shots=3, seed=0)
    assert res.retrieval.tolist() == [1.0, 1.0]
    assert res.retrieval_l2.tolist() == [1.0, 1.0]
    assert res.sampled_mean.tolist() == [1.0, 1.0]
    # The exact copies are their own nearest members in weight space.
    near, dist = nearest_by_l2(template, res.stacked, zoo)
    assert near.tolist() == [0, 1, 2, 3, 4, 5] and float(dist.max()) == 0.0
    assert res.sample_task.tolist() == [0, 0, 0, 1, 1, 1]


def test_best_of_k_is_selected_on_validation(setting):
    template, datasets, zoo, zoo_task = setting
    # Condition A gets one useless network (B's) and one good one (A's).
    sampler = _copies(zoo, [torch.tensor([3, 0]), torch.tensor([3, 4])])
    res = evaluate_retrieval(template, sampler, datasets, zoo, zoo_task, 2, shots=3, seed=0)
    assert res.sampled_best[0] == 1.0  # the A network wins on validation
    assert res.sampled_mean[0] < 1.0
    assert res.retrieval.tolist() == [0.5, 1.0]


def test_nearest_by_agreement_compares_on_the_samples_task(setting):
    template, datasets, zoo, zoo_task = setting
    test = TaskStack.from_splits([d.test for d in datasets])
    # Sign-flipped copy of A's member 0: disagrees with everything of A on A's data.
    flipped = {k: -v[:1] for k, v in zoo.items()}
    near, agree = nearest_by_agreement(template, flipped, torch.tensor([0]), zoo, test, 2)
    assert int(zoo_task[near[0]]) == 1  # B's members agree ~half the time, A's never
    assert 0.2 < float(agree[0]) < 0.8


def test_retrieval_matrix_hand_computed():
    m = retrieval_matrix(torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 0, 1, 1, 2, 2]), 3)
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    assert torch.equal(m, expected)


def test_flatten_sets_and_bad_input(setting):
    assert flatten_sets(torch.zeros(2, 10, 5, 1, 8, 8)).shape == (2, 10, 5, 64)
    template, datasets, zoo, _ = setting
    assert check_shared_architecture(datasets) == ((4,), 2)
    other = _dataset("C", 0, 5, d=6)
    with pytest.raises(InvalidParameterError, match="share the input shape"):
        check_shared_architecture([*datasets, other])
    with pytest.raises(InvalidParameterError, match="no zoo member"):
        evaluate_retrieval(
            template, _copies(zoo, []), datasets, zoo, torch.zeros(6, dtype=torch.long), 2, 3, 0
        )


def test_weight_space_comparisons_ignore_dict_order(setting):
    """A checkpoint read from disk lists tensors sorted, a decoded stack in parameter
    order: distances and the memorization audit must not depend on that order."""
    template, datasets, zoo, zoo_task = setting
    reordered = {k: zoo[k] for k in reversed(list(zoo))}
    near, dist = nearest_by_l2(template, zoo, reordered)
    assert near.tolist() == list(range(6)) and float(dist.max()) == 0.0
    test = TaskStack.from_splits([d.test for d in datasets])
    samples = {k: v[[0, 4]] + 0.01 for k, v in zoo.items()}
    task = torch.tensor([0, 1])
    a = memorization_audit(template, samples, task, zoo, zoo_task, test)
    b = memorization_audit(template, samples, task, reordered, zoo_task, test)
    assert a == b
    assert a["nearest_distance"] == pytest.approx(0.01 * 10**0.5, rel=1e-5)
