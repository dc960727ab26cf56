"""The fusion protocol on small synthetic data: score dataclasses, the relations they
must show (OTFusion of a model and its permuted copy is the model, vanilla averaging of
the same pair is not; function-preserving depth alignment), and the guards."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from conftest import eval_outputs
from weightspace.data.base import Split, SplitDataset
from weightspace.ensembles.kd import KDConfig
from weightspace.errors import InvalidParameterError
from weightspace.evaluation import fusion_protocol as fp
from weightspace.evaluation.fusion_scores import (
    FINETUNE_INITS,
    KD_INITS,
    FinetuneScores,
    OneShotScores,
    PairScores,
    TeacherStudentScores,
)
from weightspace.fusion import CLAFusionConfig, OTFusionConfig, clafusion, otfusion
from weightspace.nets.registry import build_model
from weightspace.weights.stacking import stack_state_dicts
from weightspace.zoo.evaluate import module_accuracy
from weightspace.zoo.reference import train_one

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 4, 4)
CLA = CLAFusionConfig(ot=OTFusionConfig(n_samples=64))


def _blobs(n: int, seed: int) -> Split:
    """4 Gaussian classes in 16 dimensions (fixed means, seeded noise)."""
    means = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)) * 1.5
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    return Split((means[y] + torch.randn(n, 16, generator=g)).reshape(n, *SHAPE), y)


@pytest.fixture(scope="module")
def dataset() -> SplitDataset:
    names = ("a", "b", "c", "d")
    return SplitDataset("blobs", _blobs(400, 1), _blobs(120, 2), _blobs(120, 3), 4, SHAPE, names)


def _trained(hidden: list[int], seed: int, dataset: SplitDataset) -> nn.Module:
    model = build_model("mlp", {"hidden": hidden}, SHAPE, 4)
    return train_one(model, dataset.train, seed, 0.01, 0.0, 6, 32).eval()


def _permuted(model: nn.Sequential, seed: int) -> nn.Module:
    """The same function with the hidden units of every hidden Linear permuted."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    linears = [n for n, m in model.named_children() if isinstance(m, nn.Linear)]
    g = torch.Generator().manual_seed(seed)
    for name, nxt in itertools.pairwise(linears):
        p = torch.randperm(state[f"{name}.weight"].shape[0], generator=g)
        for key in (f"{name}.weight", f"{name}.bias"):
            state[key] = state[key][p]
        state[f"{nxt}.weight"] = state[f"{nxt}.weight"][:, p]
    out = build_model("mlp", {"hidden": [24, 16]}, SHAPE, 4)
    out.load_state_dict(state)
    return out.eval()


@pytest.fixture(scope="module")
def parents(dataset):
    """deep = [A, A permuted] (same function), shallow = two trained shallow MLPs."""
    a = _trained([24, 16], 0, dataset)
    return [a, _permuted(a, 7)], [_trained([24], 2, dataset), _trained([24], 3, dataset)]


@pytest.fixture(scope="module")
def shot(parents, dataset) -> fp.OneShotResult:
    return fp.one_shot(*parents, dataset, CLA, ks=(2, 4))


def test_one_shot_returns_score_dataclasses(shot):
    scores = shot.scores
    assert isinstance(scores, OneShotScores) and len(scores.pairs) == 2
    assert [f.name for f in dataclasses.fields(PairScores)] == [
        "model_a_acc", "model_b_acc", "ensemble_acc", "vanilla_avg_acc", "otfusion_acc",
        "otfusion_seconds", "same_depth_ensemble_acc", "clafusion_acc", "clafusion_val_acc",
        "depth_aligned_b_acc", "fusion_seconds", "mapping",
    ]  # fmt: skip
    pair = scores.pairs[0]
    assert pair.mapping == ((0,),)  # the shallow model's one layer -> the first deep layer
    assert all(0 <= getattr(pair, f) <= 1 for f in ("model_a_acc", "clafusion_acc"))
    assert pair.fusion_seconds > 0 and pair.otfusion_seconds > 0
    mean_b = np.mean([p.model_b_acc for p in scores.pairs])
    assert scores.mean("model_b_acc") == pytest.approx(mean_b)
    assert [r.k for r in scores.k_rows] == [2, 4] and len(scores.k_rows[1].member_accs) == 4
    assert scores.k_rows[0].fused_acc == pair.clafusion_acc  # K = 2 is the first pair
    assert set(shot.k_fused) == {2, 4} and len(shot.fused) == len(shot.depth_aligned) == 2


def test_ot_recovers_a_permuted_copy_and_vanilla_averaging_does_not(shot, parents, dataset):
    (a, a_perm), _ = parents
    x = dataset.test.x
    assert torch.allclose(eval_outputs(a_perm, x), eval_outputs(a, x), atol=1e-5)
    fused = otfusion([a, a_perm], dataset.train.x, config=CLA.ot)
    assert torch.allclose(eval_outputs(fused, x), eval_outputs(a, x), atol=1e-4)
    for pair in shot.scores.pairs:
        assert pair.model_a_acc > 0.7
        assert pair.otfusion_acc == pair.model_a_acc == pair.same_depth_ensemble_acc
        assert pair.vanilla_avg_acc < pair.otfusion_acc - 0.1


def test_depth_alignment_preserves_the_shallow_model(shot):
    for pair in shot.scores.pairs:
        assert pair.depth_aligned_b_acc == pair.model_b_acc


def test_finetune_comparison_starts_from_the_one_shot_models(parents, shot, dataset):
    cfg = fp.FinetuneConfig(epochs=2, lr=0.01, batch_size=64)
    scores = fp.finetune_comparison(*parents, shot, dataset, cfg)
    assert isinstance(scores, FinetuneScores)
    assert tuple(scores.best_test_acc) == FINETUNE_INITS and set(scores.k_best_test_acc) == {2, 4}
    assert all(len(c) == cfg.epochs + 1 for c in scores.curves.values())
    # epoch 0 is the initialisation itself: the fused models' validation accuracy
    assert scores.curves["clafusion"][0] == pytest.approx(shot.scores.mean("clafusion_val_acc"))
    shallow_val = np.mean([module_accuracy(m, dataset.val) for m in parents[1]])
    assert scores.curves["parent_b"][0] == pytest.approx(shallow_val)


def test_stacked_initialisation_is_the_float_tensors_of_the_state_dicts():
    vgg = [
        build_model("vgg", {"stages": [[4], [6]], "norm": "batch"}, (1, 40), 10) for _ in range(2)
    ]
    states = [m.state_dict() for m in vgg]
    stacked = {k: v for k, v in stack_state_dicts(states).items() if v.is_floating_point()}
    floats = [k for k, v in states[0].items() if v.is_floating_point()]
    assert list(stacked) == floats and any("num_batches" in k for k in states[0])
    for k in floats:
        assert torch.equal(stacked[k], torch.stack([s[k] for s in states]))


def test_time_to_accuracy_and_cost(parents, dataset):
    template = parents[0][0]
    cfg = fp.CostConfig(max_epochs=3, batch_size=64)
    assert fp.time_to_accuracy(template, dataset, 0.0, cfg)[:1] == (1,)
    epochs, seconds, reached = fp.time_to_accuracy(template, dataset, 1.01, cfg)
    assert (epochs, reached) == (3, False) and seconds > 0
    cost = fp.fusion_cost(0.0, template, dataset, 0.5, cfg)
    assert cost.reached and cost.train_epochs == 1
    assert cost.ratio == pytest.approx(cost.train_seconds / 0.5)


def test_teacher_student_scores(parents, dataset):
    teacher, student = parents[0][0], parents[1][0]
    cfg = fp.TeacherStudentConfig(
        temperatures=(2.0,), alphas=(0.5,), train=KDConfig(epochs=1, batch_size=64)
    )
    scores = fp.teacher_student([teacher], [student], dataset, CLA, cfg)
    assert isinstance(scores, TeacherStudentScores)
    assert tuple(scores.kd_best_acc) == KD_INITS == tuple(scores.kd_mean_acc)
    fused = clafusion([teacher, student], dataset.train.x, CLA, target=1).fused
    assert scores.fused_student_oneshot_acc == module_accuracy(fused, dataset.test)
    assert scores.student_acc == module_accuracy(student, dataset.test)
    n_params = [sum(p.numel() for p in m.parameters()) for m in (teacher, student, fused)]
    counts = (scores.n_params_teacher, scores.n_params_student, scores.n_params_fused_student)
    assert list(counts) == n_params
    assert n_params[1] < n_params[2]  # the student's widths at the teacher's depth


def test_guards(parents, dataset):
    deep, shallow = parents
    with pytest.raises(InvalidParameterError, match="needs >= 2 deep"):
        fp.one_shot(deep[:1], shallow[:1], dataset, CLA)
    with pytest.raises(InvalidParameterError, match="K=6"):
        fp.one_shot(deep, shallow, dataset, CLA, ks=(2, 6))
    with pytest.raises(InvalidParameterError, match="cost optimizer"):
        fp.CostConfig(optimizer="lbfgs")
    with pytest.raises(InvalidParameterError, match="finetune: lr must be > 0"):
        fp.FinetuneConfig(epochs=0)
    with pytest.raises(InvalidParameterError, match="n_pairs"):
        fp.TeacherStudentConfig(n_pairs=0)
