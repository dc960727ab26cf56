"""Class-wise D2NWG: class rows, the metric-prototype anchor, equivariance, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weightspace.data.features import ClassFeatureBank
from weightspace.errors import CheckpointMismatchError, InvalidParameterError, ShapeError
from weightspace.evaluation.fewshot_baselines import prototype_heads
from weightspace.generators.class_rows import (
    centre_rows,
    class_means,
    from_rows,
    head_names,
    metric_rows,
    to_rows,
    within_class_metric,
)
from weightspace.generators.classwise import (
    ClassDenoiserConfig,
    ClassWiseConfig,
    ClassWiseD2NWG,
    anchor_sampler,
    classwise_sampler,
)
from weightspace.generators.classwise_training import fit_anchor, fit_classwise
from weightspace.generators.d2nwg import AlignTraining, DiffusionTraining, SamplingConfig
from weightspace.zoo.tasks import TaskStack

NAMES = ("1.weight", "1.bias")


def _logits(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, N, K)`` of heads given as rows ``(B, K, d + 1)`` on inputs ``(N, d)``."""
    return x @ rows[..., :-1].transpose(1, 2) + rows[..., -1].unsqueeze(1)


def test_rows_round_trip_and_bad_stacks():
    stacked = {"1.weight": torch.randn(3, 4, 5), "1.bias": torch.randn(3, 4)}
    names = head_names(stacked)
    assert names == NAMES
    rows = to_rows(stacked, names)
    assert rows.shape == (3, 4, 6)
    back = from_rows(rows, names)
    assert all(torch.equal(back[n], stacked[n]) for n in NAMES)
    with pytest.raises(ShapeError, match="Linear"):
        head_names({"a.weight": torch.randn(3, 4, 5), "b.weight": torch.randn(3, 5, 4)})


def test_centring_rows_changes_no_prediction():
    rows, x = torch.randn(4, 5, 7), torch.randn(30, 6)
    a, b = _logits(rows, x), _logits(centre_rows(rows), x)
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    torch.testing.assert_close(a.softmax(-1), b.softmax(-1))
    assert centre_rows(rows).sum(1).abs().max() < 1e-5


def test_identity_metric_rows_are_the_prototype_heads():
    sets = torch.randn(2, 3, 4, 5)
    support = TaskStack(
        sets.flatten(1, 2), torch.arange(3).repeat_interleave(4).expand(2, -1).clone(),
        torch.full((2,), 12),
    )  # fmt: skip
    proto = prototype_heads(support, 3)
    rows = metric_rows(class_means(sets), torch.eye(5))
    torch.testing.assert_close(from_rows(rows, NAMES)["1.weight"], proto["1.weight"])
    torch.testing.assert_close(from_rows(rows, NAMES)["1.bias"], proto["1.bias"])


def test_metric_rows_argmax_is_the_nearest_mean_under_the_metric():
    gen = torch.Generator().manual_seed(0)
    d, k = 4, 5
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    metric = a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)
    means = torch.randn(1, k, d, generator=gen, dtype=torch.float64)
    x = torch.randn(200, d, generator=gen, dtype=torch.float64)
    pred = _logits(metric_rows(means, metric), x)[0].argmax(-1)
    diff = x[:, None, :] - means[0][None]  # (N, K, d)
    maha = torch.einsum("nkd,de,nke->nk", diff, metric, diff)
    assert torch.equal(pred, maha.argmin(-1))


def test_within_class_metric_against_numpy():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(60, 3, generator=gen, dtype=torch.float64)
    y = torch.arange(3).repeat(20)
    xn, yn = x.numpy(), y.numpy()
    centred = np.concatenate([xn[yn == c] - xn[yn == c].mean(0) for c in range(3)])
    cov = centred.T @ centred / (60 - 3)
    s = 0.3
    want = np.linalg.inv((1 - s) * cov + s * np.trace(cov) / 3 * np.eye(3))
    got = within_class_metric(x, y, s)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    iso = within_class_metric(x, y, 1.0)  # full shrinkage: a multiple of the identity
    np.testing.assert_allclose(iso.numpy(), np.eye(3) * 3 / np.trace(cov), rtol=1e-10)
    with pytest.raises(InvalidParameterError, match="shrinkage"):
        within_class_metric(x, y, 0.0)


def _model(**changes) -> ClassWiseD2NWG:
    cfg = ClassWiseConfig(
        denoiser=ClassDenoiserConfig(width=16, depth=1, heads=2),
        align=AlignTraining(epochs=2, batch_size=8),
        diffusion=DiffusionTraining(timesteps=20, steps=6, batch_size=4),
        sampling=SamplingConfig(steps=4),
        sets_per_task=3,
        shots=3,
    )
    from dataclasses import replace

    return ClassWiseD2NWG(replace(cfg, **changes), 6, seed=0)


def test_denoiser_and_condition_are_permutation_equivariant():
    model = _model().eval()
    torch.nn.init.normal_(model.denoiser.out_proj.weight)  # zero-initialised otherwise
    perm = torch.tensor([2, 0, 3, 1])
    x, t = torch.randn(3, 4, 7), torch.tensor([0, 7, 19])
    cond = torch.randn(3, 4, model.cond_dim)
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        out = model.denoiser(x, t, cond, drop)
        out_p = model.denoiser(x[:, perm], t, cond[:, perm], drop)
        sets = torch.randn(2, 4, 3, 6)
        c, c_p = model.condition(sets), model.condition(sets[:, perm])
        a, a_p = model.anchor_rows(sets), model.anchor_rows(sets[:, perm])
    torch.testing.assert_close(out[:, perm], out_p, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(c[:, perm], c_p, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a[:, perm], a_p)
    with pytest.raises(ShapeError, match="cond"):
        model.denoiser(x, t, cond[:, :3])


def _synthetic_zoo(scale: float = 3.0):
    """Two 3-way tasks over 4 classes; heads = scale x the centred LDA anchor of the
    tasks' full class means (exactly in the anchor family)."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 6, generator=gen) * 3
    classes = torch.tensor([[0, 1, 2], [1, 2, 3]])
    feats = centres[classes][:, :, None, :] + torch.randn(2, 3, 20, 6, generator=gen)
    bank = ClassFeatureBank(feats, torch.full((2, 3), 20))
    task_of_row = torch.tensor([0, 0, 1, 1])
    return bank, classes, task_of_row


def test_fit_anchor_recovers_the_scale_of_heads_in_the_anchor_family():
    bank, classes, task_of_row = _synthetic_zoo()
    model = _model()
    from weightspace.generators.classwise_training import (
        _unique_class_samples,
        bank_class_means,
    )

    feats, labels = _unique_class_samples(bank, classes)
    metric = within_class_metric(feats, labels, 0.1)
    rows = 3.0 * centre_rows(metric_rows(bank_class_means(bank)[task_of_row], metric))
    report = fit_anchor(model, bank, task_of_row, rows, classes)
    assert report["anchor_scale"] == pytest.approx(3.0, rel=1e-4)
    assert report["anchor_row_r2"] == pytest.approx(1.0, abs=1e-4)


def test_training_sampling_and_bundle_round_trip(tmp_path):
    bank, classes, task_of_row = _synthetic_zoo()
    rows = torch.randn(4, 3, 7)
    model = _model()
    report = fit_classwise(model, bank, task_of_row, rows, classes, seed=0)
    assert len(report["align_losses"]) == 2 and report["diffusion_losses"]
    sets = bank.sample(torch.tensor([0, 1]), 3, torch.Generator().manual_seed(1))
    heads = classwise_sampler(model, NAMES, seed=5)(sets, 4)
    assert heads["1.weight"].shape == (8, 3, 6) and heads["1.bias"].shape == (8, 3)
    again = ClassWiseD2NWG.from_bundle(model.to_bundle("spec"), "spec")
    heads2 = classwise_sampler(again, NAMES, seed=5)(sets, 4)
    assert all(torch.equal(heads[n], heads2[n]) for n in NAMES)
    with pytest.raises(CheckpointMismatchError, match="another parameter spec"):
        ClassWiseD2NWG.from_bundle(model.to_bundle("spec"), "other")
    anchors = anchor_sampler(model, NAMES)(sets, 2)
    assert torch.equal(anchors["1.weight"][0], anchors["1.weight"][1])  # n copies


def test_centred_coordinates_keep_every_prediction():
    """Rows for features centred at feat_mean and back: the same softmax on raw inputs."""
    model = _model()
    model.feat_mean.copy_(torch.randn(6) * 10)
    rows, x = torch.randn(2, 4, 7), torch.randn(9, 6) * 3 + 10
    back = model.raw_rows(model.centred_rows(rows))
    torch.testing.assert_close(_logits(back, x).softmax(-1), _logits(rows, x).softmax(-1))
    # in centred coordinates the same head reads centred features
    centred = model.centred_rows(rows)
    torch.testing.assert_close(
        _logits(centred, x - model.feat_mean).softmax(-1), _logits(rows, x).softmax(-1)
    )


def test_anchor_heads_are_the_scaled_metric_prototype_classifier():
    bank, classes, task_of_row = _synthetic_zoo()
    model = _model()
    fit_anchor(model, bank, task_of_row, torch.randn(4, 3, 7), classes)
    sets = bank.sample(torch.tensor([0, 1]), 3, torch.Generator().manual_seed(2))
    x = torch.randn(11, 6) * 3
    want = model.anchor_scale * _logits(metric_rows(class_means(sets), model.metric), x)
    got = _logits(model.anchor_rows(sets), x)
    torch.testing.assert_close(got.softmax(-1), want.softmax(-1), atol=1e-5, rtol=1e-4)


def test_tasks_of_unknown_classes_get_exactly_their_anchor_heads():
    bank, classes, task_of_row = _synthetic_zoo()
    model = _model(novelty_quantile=0.99)
    report = fit_classwise(model, bank, task_of_row, torch.randn(4, 3, 7), classes, seed=0)
    assert report["anchor"]["known_classes"] == 4 and report["anchor"]["novelty_tau"] > 0
    gen = torch.Generator().manual_seed(1)
    sets = bank.sample(torch.tensor([0, 1]), 3, gen)
    far = sets.clone()
    far[1, 0] += 50.0  # one class of task 1 is no class of the zoo
    assert model.known(far).tolist() == [True, False]
    rows = model.sample(far, 3, torch.Generator().manual_seed(0))
    anchor = model.anchor_rows(far)
    torch.testing.assert_close(rows[3:], anchor[1:].expand(3, -1, -1))
    assert not torch.allclose(rows[:3], anchor[:1].expand(3, -1, -1), atol=1e-3)
    # without the fallback the same random stream gives the diffusion's rows for task 1
    raw = model.sample(far, 3, torch.Generator().manual_seed(0), fallback=False)
    torch.testing.assert_close(raw[:3], rows[:3])
    assert not torch.allclose(raw[3:], rows[3:], atol=1e-3)
    # temperature 0: the n candidates of a set coincide
    cold = model.sample(sets, 3, torch.Generator().manual_seed(0), temperature=0.0)
    torch.testing.assert_close(cold[:3], cold[:1].expand(3, -1, -1))
    # the test is off with novelty_quantile=None
    off = _model(novelty_quantile=None)
    fit_classwise(off, bank, task_of_row, torch.randn(4, 3, 7), classes, seed=0)
    assert off.known(far).all() and off.known_centres.shape == (0, 6)


def test_known_tasks_are_sampled_from_their_identified_classes_centres():
    bank, classes, task_of_row = _synthetic_zoo()
    model = _model(novelty_quantile=0.99)
    fit_classwise(model, bank, task_of_row, torch.randn(4, 3, 7), classes, seed=0)
    sets = bank.sample(torch.tensor([0, 1]), 3, torch.Generator().manual_seed(1))
    known, match = model.match(sets)
    assert known.tolist() == [True, True]
    assert torch.equal(match, classes)  # known classes 0..3 in pool-id order
    ident = model.identified(sets, match)
    torch.testing.assert_close(class_means(ident), model.known_centres[classes] + model.feat_mean)
    torch.testing.assert_close(  # the spread of the shots is kept
        ident - class_means(ident)[:, :, None], sets - class_means(sets)[:, :, None]
    )
    rows = model.sample(sets, 3, torch.Generator().manual_seed(0))
    want = model.sample(ident, 3, torch.Generator().manual_seed(0), identify=False)
    plain = model.sample(sets, 3, torch.Generator().manual_seed(0), identify=False)
    torch.testing.assert_close(rows, want)
    assert not torch.allclose(rows, plain, atol=1e-3)
    # an unknown task is not identified: its rows do not depend on the option
    far = sets.clone()
    far[1, 0] += 50.0
    assert model.match(far)[1][1].tolist() == [-1, -1, -1]
    on = model.sample(far, 3, torch.Generator().manual_seed(0), fallback=False)
    off = model.sample(far, 3, torch.Generator().manual_seed(0), fallback=False, identify=False)
    torch.testing.assert_close(on[3:], off[3:])
    assert not torch.allclose(on[:3], off[:3], atol=1e-3)
    # no test, no identification
    no_test = _model(novelty_quantile=None)
    fit_classwise(no_test, bank, task_of_row, torch.randn(4, 3, 7), classes, seed=0)
    assert bool((no_test.match(sets)[1] == -1).all())


def test_sampling_rules_do_not_change_the_diffusion_checkpoint(tmp_path):
    """The known-class test, identification and DDIM settings are read only when sampling:
    changing them reuses the training checkpoint; a training setting does not."""
    from dataclasses import replace

    from weightspace.generators.training_checkpoint import CheckpointPolicy

    bank, classes, task_of_row = _synthetic_zoo()
    rows = torch.randn(4, 3, 7)
    policy = CheckpointPolicy(str(tmp_path), 3)

    def run(**changes):
        model = _model(**changes)
        fit_classwise(model, bank, task_of_row, rows, classes, seed=0, checkpoint=policy)
        return sorted(p.name for p in tmp_path.iterdir())

    first = run(novelty_quantile=0.99)
    assert len(first) == 1
    again = run(novelty_quantile=0.5, identify=False,
                sampling=SamplingConfig(steps=2, temperature=0.3))  # fmt: skip
    assert again == first
    trained = run(diffusion=replace(_model().config.diffusion, lr=1e-3))
    assert len(trained) == 2


def test_unconditional_ablation_has_no_condition_and_no_anchor():
    bank, classes, task_of_row = _synthetic_zoo()
    model = _model(conditional=False, anchor="none")
    report = fit_classwise(model, bank, task_of_row, torch.randn(4, 3, 7), classes, seed=0)
    assert report["align_losses"] == [] and report["anchor"]["anchor_scale"] == 0.0
    sets = bank.sample(torch.tensor([0]), 3, torch.Generator().manual_seed(1))
    assert model.condition(sets) is None
    assert torch.equal(model.anchor_rows(sets), torch.zeros(1, 3, 7))
    assert model.sample(sets, 2, torch.Generator().manual_seed(0)).shape == (2, 3, 7)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"anchor": "mean"}, "anchor"),
        ({"shrinkage": 0.0}, "shrinkage"),
        ({"shots": 0}, "shots"),
        ({"novelty_quantile": 1.0}, "novelty_quantile"),
        ({"novelty_quantile": True}, "novelty_quantile"),
        ({"sampling": {"temperature": -1.0}}, "temperature"),
        ({"identify": "yes"}, "identify"),
    ],
)
def test_config_rejects_bad_values(changes, match):
    with pytest.raises(InvalidParameterError, match=match):
        ClassWiseConfig.from_dict(changes)
