"""The copy rule of the memorization audit (weight space) and the averaged-copy baseline.

A synthetic zoo: ``N_GROUPS`` groups (tasks), each a random center plus ``RUNS``
independent runs scattered around it, far apart from each other compared with the
perturbations a copying generator applies.
"""

from __future__ import annotations

import math

import pytest
import torch

from weightspace.data.base import Split
from weightspace.errors import (
    EmptyZooError,
    InvalidParameterError,
    NonFiniteWeightsError,
    ShapeError,
)
from weightspace.evaluation.memorization import (
    CopyRule,
    averaged_copy_agreement,
    copy_audit,
    memorization_audit,
    nearest_rows,
    reference_distances,
)
from weightspace.nets import build_model
from weightspace.zoo.tasks import TaskStack

N_GROUPS, RUNS, P, RUN_STD = 20, 5, 64, 0.3


def _runs(centers: torch.Tensor, runs: int, gen: torch.Generator) -> torch.Tensor:
    """``runs`` independent runs per center: (len(centers) * runs, P), grouped by center."""
    c = centers.repeat_interleave(runs, 0)
    return c + RUN_STD * torch.randn(c.shape, generator=gen)


@pytest.fixture(scope="module")
def zoo() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(N_GROUPS, P, generator=gen)
    vectors = _runs(centers, RUNS, gen)
    group = torch.arange(N_GROUPS).repeat_interleave(RUNS)
    return vectors, group, centers


def test_verbatim_copier_is_flagged_everywhere(zoo):
    vectors, group, _ = zoo
    rows = torch.arange(len(vectors)).flip(0)
    audit = copy_audit(vectors[rows], vectors, group)
    assert audit.copy_share == 1.0 and bool(audit.is_copy.all())
    assert torch.equal(audit.nearest_index, rows)
    assert float(audit.nearest_distance.max()) == 0.0  # pairwise float64: exactly 0
    assert audit.n_reference == len(vectors)


def test_five_percent_jitter_copier_is_flagged_everywhere(zoo):
    vectors, group, _ = zoo
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(vectors.shape, generator=gen)
    noise *= 0.05 * vectors.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True)
    audit = copy_audit(vectors + noise, vectors, group)
    assert audit.copy_share == 1.0
    assert torch.equal(audit.nearest_index, torch.arange(len(vectors)))
    # The jitter is real (not a verbatim copy) and inside the margin.
    d = audit.nearest_distance
    assert float(d.min()) > 0.0 and float(d.max()) < audit.threshold


def test_fresh_independent_runs_are_not_copies(zoo):
    vectors, group, centers = zoo
    fresh = _runs(centers, RUNS, torch.Generator().manual_seed(2))
    audit = copy_audit(fresh, vectors, group)
    assert audit.copy_share < 0.1
    metrics = audit.to_metrics("seen_")
    # A new run is about as far from the zoo as the zoo's runs are from each other.
    assert 0.7 < metrics["seen_copy_relative_distance_median"] < 1.3
    assert metrics["seen_copy_share"] == audit.copy_share
    assert metrics["seen_copy_threshold"] == pytest.approx(0.5 * audit.reference_distance)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


def test_threshold_is_ratio_times_reference(zoo):
    """Samples at 0.4 x reference from a zoo row are copies, at 0.6 x they are not;
    ``distance_ratio=0.7`` moves the second batch across the line."""
    vectors, group, _ = zoo
    ref = copy_audit(vectors[:1], vectors, group).reference_distance
    gen = torch.Generator().manual_seed(3)
    step = torch.randn(vectors.shape, generator=gen)
    step /= step.norm(dim=1, keepdim=True)
    near, far = vectors + 0.4 * ref * step, vectors + 0.6 * ref * step
    assert copy_audit(near, vectors, group).copy_share == 1.0
    assert copy_audit(far, vectors, group).copy_share == 0.0
    assert copy_audit(far, vectors, group, CopyRule(distance_ratio=0.7)).copy_share == 1.0


def _tiny() -> tuple[torch.Tensor, torch.Tensor]:
    """Five 2-D zoo vectors: groups 7 {a, b}, 3 {d} (a singleton next to a), 9 {e, f}."""
    zoo = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.1], [5.0, 5.0], [5.0, 8.0]])
    return zoo.double(), torch.tensor([7, 7, 3, 9, 9])


def test_reference_distance_hand_computed():
    """a-b = 1, b-a = 1, e-f = 3, f-e = 3 (d has no other run: skipped; a's nearest
    *same-group* run is b, not d); median of [1, 1, 3, 3] = 2; threshold 0.5 x 2 = 1."""
    zoo, group = _tiny()
    assert torch.equal(reference_distances(zoo, group), torch.tensor([1.0, 1.0, 3.0, 3.0]).double())
    generated = torch.tensor([[0.0, 0.09], [5.0, 6.6], [5.0, 5.9], [0.0, 2.0]]).double()
    audit = copy_audit(generated, zoo, group)
    assert audit.reference_distance == 2.0 and audit.threshold == 1.0
    assert audit.n_reference == 4
    # Nearest among ALL rows: the first sample's nearest is the singleton d (0.01 away).
    assert audit.nearest_index.tolist() == [2, 4, 3, 1]
    assert audit.nearest_distance.tolist() == pytest.approx([0.01, 1.4, 0.9, 1.0])
    # "Below" the threshold is strict: the last sample, exactly 1.0 from b, is no copy.
    assert audit.is_copy.tolist() == [True, False, True, False]
    assert audit.copy_share == 0.5


def test_single_member_groups_are_skipped_and_all_singletons_raise():
    zoo, _ = _tiny()
    # Making {e, f} singletons too leaves the reference to a and b alone.
    assert copy_audit(zoo[:1], zoo, torch.tensor([7, 7, 3, 9, 8])).reference_distance == 1.0
    with pytest.raises(EmptyZooError, match="no group of the zoo has two members"):
        copy_audit(zoo[:1], zoo, torch.arange(5))


def test_chunked_and_unchunked_nearest_search_agree_exactly():
    gen = torch.Generator().manual_seed(4)
    zoo = torch.randn(53, 17, generator=gen)
    zoo[40] = zoo[10]  # a tie: the first row wins in every block layout
    generated = torch.cat([torch.randn(30, 17, generator=gen), zoo[[10, 3, 52, 0, 40, 7, 9]]])
    group = torch.arange(53) % 6
    full = torch.cdist(
        generated.double(), zoo.double(), compute_mode="donot_use_mm_for_euclid_dist"
    )
    d_full, i_full = full.min(1)
    for block in (1, 5 * 53, 10**9):
        d, i = nearest_rows(generated, zoo, max_block_distances=block)
        assert torch.equal(d, d_full) and torch.equal(i, i_full)
    assert int(i_full[30]) == 10 and int(i_full[34]) == 10
    audits = [copy_audit(generated, zoo, group, max_block_distances=b) for b in (1, 7, 10**9)]
    for a in audits[1:]:
        assert torch.equal(a.nearest_distance, audits[0].nearest_distance)
        assert torch.equal(a.nearest_index, audits[0].nearest_index)
        assert a.reference_distance == audits[0].reference_distance


def _averaging_setting():
    """Linear 2-class models on 2-D inputs; class 1 wins where its score is positive.

    Task 0: A (x0 > 0) and B (x1 > 0), average (x0 + x1 > 0). Task 1: C twice (x0 < 0).
    Task 2: a singleton. On the 5 points the average agrees with A on 3 (points 0, 2, 3)
    and with B on 4 (points 1-4); C's average is C itself.
    """
    x = torch.tensor([[1.0, -0.5], [-0.5, 1.0], [1.0, 1.0], [-1.0, -1.0], [0.2, -1.0]])
    split = Split(x, torch.zeros(5, dtype=torch.long))
    data = TaskStack.from_splits([split, split, split])

    def w(row: list[float]) -> torch.Tensor:
        return torch.tensor([[0.0, 0.0], row])

    weights = torch.stack([w([1, 0]), w([0, 1]), w([-1, 0]), w([-1, 0]), w([0, 1])])
    zoo = {"1.weight": weights, "1.bias": torch.zeros(5, 2)}
    template = build_model("mlp", {"hidden": []}, (2,), 2)
    return template, zoo, torch.tensor([0, 0, 1, 1, 2]), data


def test_averaged_copy_similarity_hand_made():
    template, zoo, task, data = _averaging_setting()
    agreement = averaged_copy_agreement(template, zoo, task, data)
    assert agreement.tolist() == pytest.approx([0.6, 0.8, 1.0, 1.0])
    generated = {k: v[[0, 1, 2, 4]].clone() for k, v in zoo.items()}
    audit = memorization_audit(template, generated, task[[0, 1, 2, 4]], zoo, task, data)
    assert audit["averaged_copy_similarity"] == pytest.approx(0.85)
    old = {"memorization_similarity", "noise_baseline_similarity", "zoo_pair_similarity"}
    assert old | {"nearest_distance", "noise_std"} <= set(audit)
    assert audit["memorization_similarity"] == 1.0 and audit["nearest_distance"] == 0.0
    assert audit["copy_share"] == 1.0  # verbatim copies of zoo members
    bare = memorization_audit(
        template, generated, task[[0, 1, 2, 4]], zoo, task, data, copy_rule=None
    )
    assert not [k for k in bare if k.startswith("copy_")]
    assert {k: v for k, v in audit.items() if not k.startswith("copy_")} == bare
    with pytest.raises(EmptyZooError, match="two members"):
        averaged_copy_agreement(template, zoo, torch.arange(5), data)


def test_bad_input_raises_clear_errors(zoo):
    vectors, group, _ = zoo
    for ratio in (0.0, 1.5, float("nan"), True):
        with pytest.raises(InvalidParameterError, match="distance_ratio"):
            CopyRule(distance_ratio=ratio)
    with pytest.raises(ShapeError, match="same P"):
        copy_audit(vectors[:, :3], vectors, group)
    with pytest.raises(ShapeError, match="zoo_group"):
        copy_audit(vectors, vectors, group.float())
    with pytest.raises(EmptyZooError, match="0 generated"):
        copy_audit(vectors[:0], vectors, group)
    bad = vectors.clone()
    bad[3, 5] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"rows \[3\]"):
        copy_audit(bad, vectors, group)
