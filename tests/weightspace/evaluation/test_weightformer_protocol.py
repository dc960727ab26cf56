"""WeightFormer's protocol: the checkpoint split, held-out sets, scores against the metric
kernels, the teacher-number configurations, and the report's keys."""

from __future__ import annotations

import math

import pytest
import torch

from weightspace.ensembles import KDConfig
from weightspace.errors import InvalidParameterError
from weightspace.evaluation import weightformer_protocol as wp
from weightspace.generators.weight_tokens import TokenLayout
from weightspace.generators.weightformer import LayerMLP
from weightspace.generators.weightformer_training import FitConfig
from weightspace.metrics import accuracy
from weightspace.nets.registry import build_model
from weightspace.reporting import weightformer_report as wr
from weightspace.weights.stacking import stack_state_dicts

pytestmark = pytest.mark.usefixtures("one_thread")


def test_split_pool_is_disjoint_seeded_and_checked():
    ids = [f"m{i:02d}" for i in range(12)]
    train, held = wp.split_pool(ids, 9, seed=0)
    assert len(train) == 9 and len(held) == 3 and not set(train) & set(held)
    assert sorted(train + held) == sorted(ids)
    assert wp.split_pool(ids, 9, seed=0) == (train, held)
    assert wp.split_pool(ids, 9, seed=1) != (train, held)
    with pytest.raises(InvalidParameterError, match="at least one must be held out"):
        wp.split_pool(ids, 12, seed=0)
    with pytest.raises(InvalidParameterError, match="ids repeat"):
        wp.split_pool(["a", "a", "b"], 1, seed=0)


def test_heldout_sets_have_distinct_members():
    protocol = wp.WeightFormerProtocol(n_sets=20, fit=FitConfig(n_teachers=3))
    sets = wp.heldout_sets(5, protocol)
    assert sets.shape == (20, 3)
    assert all(len(set(s.tolist())) == 3 and max(s.tolist()) < 5 for s in sets)
    with pytest.raises(InvalidParameterError, match="cannot form sets of 3"):
        wp.heldout_sets(2, protocol)


def test_score_logits_matches_the_kernels_and_skips_acc5_below_ten_classes():
    torch.manual_seed(0)
    logits, y = torch.randn(50, 10), torch.randint(0, 10, (50,))
    s = wp.score_logits(logits, y)
    assert s.acc == pytest.approx(float(accuracy(logits, y)))
    assert s.acc5 == pytest.approx(float(accuracy(logits, y, k=5)))
    assert math.isnan(wp.score_logits(logits[:, :4], y % 4).acc5)


def _pool(n: int = 5):
    torch.manual_seed(0)
    models = [build_model("vgg", {"stages": [[4], [6]]}, (1, 40), 10) for _ in range(n)]
    layout = TokenLayout.from_module(models[0])
    return models, layout, stack_state_dicts([m.state_dict() for m in models], layout.spec)


def test_evaluate_sets_single_and_ensemble_by_hand_and_mean_generator():
    from weightspace.data.embedded import load_mnist1d

    models, layout, pool = _pool()
    data = load_mnist1d(seed=0, n_samples=200)
    protocol = wp.WeightFormerProtocol(
        n_sets=2, fit=FitConfig(n_teachers=3), kd=KDConfig(epochs=1, batch_size=64)
    )
    gens = {"mean": LayerMLP(layout, 3)}  # untrained: the teachers' element-wise mean
    result = wp.evaluate_sets(models[0], pool, data, gens, protocol)
    sets = wp.heldout_sets(5, protocol)
    x, y = data.test.x, data.test.y
    with torch.no_grad():
        logits = torch.stack([m.eval()(x) for m in models])
    for r, idx in enumerate(sets):
        single = sum(float(accuracy(logits[i], y)) for i in idx) / 3
        assert result["scores"]["single"][r].acc == pytest.approx(single)
        ens = float(accuracy(logits[idx].mean(0), y))
        assert result["scores"]["ensemble"][r].acc == pytest.approx(ens)
        first = float(accuracy(logits[idx[0]], y))
        assert result["scores"]["teacher0"][r].acc == pytest.approx(first)
        # the weight average of the set, run as a network
        avg = build_model("vgg", {"stages": [[4], [6]]}, (1, 40), 10)
        avg.load_state_dict({k: v[idx].mean(0) for k, v in pool.items()})
        with torch.no_grad():
            expect = float(accuracy(avg.eval()(x), y))
        assert result["scores"]["mean"][r].acc == pytest.approx(expect)
    assert len(result["seconds"]["kd"]) == 2 and len(result["seconds"]["mean"]) == 2


def test_kd_from_teacher_zero_that_never_improves_returns_teacher_zero():
    """With a vanishing learning rate the best validation epoch is epoch 0 (ties go to the
    earliest), so the KD-from-teacher-0 row equals teacher 0's own scores exactly, and the
    pre-training targets are teacher 0's weights."""
    from weightspace.data.embedded import load_mnist1d

    models, _layout, pool = _pool()
    data = load_mnist1d(seed=0, n_samples=200)
    still = KDConfig(epochs=1, batch_size=64, lr=1e-30)
    protocol = wp.WeightFormerProtocol(
        n_sets=2, fit=FitConfig(n_teachers=3), kd=KDConfig(epochs=1), kd_from_teacher=still
    )
    result = wp.evaluate_sets(models[0], pool, data, {}, protocol)
    for r, idx in enumerate(wp.heldout_sets(5, protocol)):
        with torch.no_grad():
            first = wp.score_logits(models[int(idx[0])].eval()(data.test.x), data.test.y)
        assert result["scores"]["kd_t0"][r] == first
    assert len(result["seconds"]["kd_t0"]) == 2
    sets = torch.tensor([[2, 0, 1], [4, 3, 0]])
    targets = wp.kd_targets(models[0], pool, sets, data, protocol)
    for target, idx in zip(targets, sets, strict=True):
        for k, v in target.items():
            torch.testing.assert_close(v, pool[k][idx[0]], rtol=0, atol=0)


def test_report_keys_gap_closed_and_two_sigma():
    rows = {
        "single": [wp.Scores(0.90, 0.99, 0.02, 0.3), wp.Scores(0.92, 0.99, 0.02, 0.3)],
        "ensemble": [wp.Scores(0.94, 1.0, 0.01, 0.2), wp.Scores(0.96, 1.0, 0.01, 0.2)],
        "wf": [wp.Scores(0.93, 1.0, 0.01, 0.25), wp.Scores(0.95, 1.0, 0.01, 0.25)],
        "kd": [wp.Scores(0.92, 1.0, 0.01, 0.25)] * 2,
    }
    result = {"scores": rows, "seconds": {"wf": [0.01, 0.03], "kd": [4.0, 6.0]}}
    m = wr.flat_metrics(result, {"concatenate": [(1, 0.9), (2, 0.93)], "heuristic": []})
    assert m["gap_closed"] == pytest.approx((0.94 - 0.91) / (0.95 - 0.91))
    assert m["single_acc_2sigma"] == pytest.approx(2 * (0.02**2 / 2) ** 0.5)
    assert m["kd_vs_wf_cost_ratio"] == pytest.approx(5.0 / 0.02)
    assert m["curve_concatenate_2_acc"] == 0.93
    _, tables, fig = wr.assemble_report(result, {"concatenate": [(1, 0.9)]})
    assert "| ACC-1 |" in tables and len(fig.axes) == 1
