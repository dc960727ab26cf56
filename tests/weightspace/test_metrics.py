"""Tests of weightspace.metrics and weightspace.reporting.reliability."""

from __future__ import annotations

import io
import logging
import math

import pytest
import torch
from matplotlib.figure import Figure

from weightspace import metrics as M
from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.reporting.reliability import reliability_diagram


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_task(lead=(3, 2), n=40, c=5, seed=0, dtype=torch.float64):
    g = _gen(seed)
    logits = 2.0 * torch.randn(*lead, n, c, generator=g, dtype=dtype)
    labels = torch.randint(0, c, (*lead, n), generator=g)
    return logits, labels


# ---------------------------------------------------------------------- hand-computed cases
# Six samples, four classes, n_bins=5 -> bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1].
#   sample  probs                       conf  pred label correct  bin
#   0       [.25, .25, .25, .25]        .25   0    0     yes      1
#   1       [.2,  .4,  .2,  .2 ]        .40   1    3     no       1  (upper edge -> bin 1)
#   2       [.6,  .2,  .1,  .1 ]        .60   0    0     yes      2  (upper edge -> bin 2)
#   3       [.1,  .9,  0,   0  ]        .90   1    1     yes      4
#   4       [.05, .05, .85, .05]        .85   2    0     no       4
#   5       [1.,  0,   0,   0  ]       1.00   0    0     yes      4  (1.0 -> last bin)
# bin 1: n=2, conf (.25+.4)/2=.325, acc 1/2 -> |B|/N |acc-conf| = 2/6 * .175  = .35/6
# bin 2: n=1, conf .6,            acc 1   -> 1/6 * .4                     = .40/6
# bin 4: n=3, conf 2.75/3,        acc 2/3 -> 3/6 * |2/3 - 2.75/3|         = .75/6
# ECE = 1.5 / 6 = 0.25.  With [lo, hi) bins sample 1 would move to bin 2 and ECE would be
# (.75 + 0 + .75)/6 instead, so the test pins the edge convention.
HAND_PROBS = torch.tensor(
    [
        [0.25, 0.25, 0.25, 0.25],
        [0.2, 0.4, 0.2, 0.2],
        [0.6, 0.2, 0.1, 0.1],
        [0.1, 0.9, 0.0, 0.0],
        [0.05, 0.05, 0.85, 0.05],
        [1.0, 0.0, 0.0, 0.0],
    ],
    dtype=torch.float64,
)
HAND_LABELS = torch.tensor([0, 3, 0, 1, 0, 0])


def test_ece_hand_computed():
    value = M.ece(HAND_PROBS, HAND_LABELS, n_bins=5)
    assert value.shape == ()
    assert value.item() == pytest.approx(0.25, abs=1e-12)


def test_reliability_bins_hand_computed():
    bins = M.reliability_bins(HAND_PROBS, HAND_LABELS, n_bins=5)
    assert bins.count.tolist() == [0, 2, 1, 0, 3]
    torch.testing.assert_close(
        bins.confidence, torch.tensor([0.0, 0.325, 0.6, 0.0, 2.75 / 3], dtype=torch.float64)
    )
    torch.testing.assert_close(
        bins.accuracy, torch.tensor([0.0, 0.5, 1.0, 0.0, 2 / 3], dtype=torch.float64)
    )
    # ECE recomputed from the bins equals ece(): one binning implementation.
    n = bins.count.sum()
    from_bins = (bins.count / n * (bins.accuracy - bins.confidence).abs()).sum()
    assert from_bins.item() == pytest.approx(M.ece(HAND_PROBS, HAND_LABELS, 5).item())


def test_ece_default_fifteen_bins_and_perfect_calibration():
    # Every sample has confidence 0.5 and half are right -> calibrated, ECE 0.
    probs = torch.tensor([[0.5, 0.5]] * 4)
    labels = torch.tensor([0, 1, 0, 1])
    assert M.ece(probs, labels).item() == pytest.approx(0.0, abs=1e-7)
    # All confident and all wrong -> ECE equals the confidence.
    probs = torch.tensor([[0.9, 0.1]] * 3)
    assert M.ece(probs, torch.ones(3, dtype=torch.long)).item() == pytest.approx(0.9)


def test_accuracy_hand_top_k():
    logits = torch.tensor(
        [
            [2.0, 1.0, 0.0],  # label 0: rank 0
            [0.0, 3.0, 1.0],  # label 2: rank 1
            [1.0, 1.0, 0.0],  # label 1: tie with class 0, lower index wins -> rank 1
            [0.0, 1.0, 2.0],  # label 0: rank 2
        ]
    )
    labels = torch.tensor([0, 2, 1, 0])
    assert M.accuracy(logits, labels).item() == pytest.approx(0.25)
    assert M.accuracy(logits, labels, k=2).item() == pytest.approx(0.75)
    assert M.accuracy(logits, labels, k=3).item() == pytest.approx(1.0)


def test_accuracy_top1_matches_argmax_and_constant_output_is_not_perfect():
    logits, labels = _random_task(lead=(4,), n=200, c=7)
    logits = logits.round()  # create ties
    expected = (logits.argmax(-1) == labels).double().mean(-1)
    torch.testing.assert_close(M.accuracy(logits, labels), expected)
    const = torch.zeros(10, 3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    assert M.accuracy(const, labels).item() == pytest.approx(0.4)


def test_nll_hand_value():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    expected = (-math.log(0.75) + math.log(2.0)) / 2
    assert M.nll(logits, labels).item() == pytest.approx(expected, rel=1e-12)
    assert M.nll(logits, torch.tensor([1, 1])).item() == pytest.approx(
        (-math.log(0.25) + math.log(2.0)) / 2, rel=1e-12
    )


def test_brier_hand_value():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    # (.09 + .04 + .01) = .14 and (.25 + .25 + 1) = 1.5 -> mean .82
    assert M.brier(probs, labels).item() == pytest.approx(0.82, rel=1e-12)


# ---------------------------------------------------------------------- batched == looped
def _per_model(fn, *tensors):
    """Apply fn to each leading index of (3, 2, ...) tensors, stack to (3, 2)."""
    return torch.stack(
        [torch.stack([fn(*(t[i, j] for t in tensors)) for j in range(2)]) for i in range(3)]
    )


@pytest.mark.parametrize(
    "fn",
    [
        lambda z, y: M.accuracy(z, y),
        lambda z, y: M.accuracy(z, y, k=2),
        lambda z, y: M.nll(z, y),
        lambda z, y: M.ece(torch.softmax(z, -1), y),
        lambda z, y: M.brier(torch.softmax(z, -1), y),
        lambda z, y: M.temperature_scale(z, y),
        lambda z, y: M.calibrated_nll(z[..., :20, :], y[..., :20], z[..., 20:, :], y[..., 20:]),
        lambda z, y: M.calibrated_ece(z[..., :20, :], y[..., :20], z[..., 20:, :], y[..., 20:]),
        lambda z, y: M.disagreement(z, z.flip(-2)),
        lambda z, y: M.normalized_diversity(z.flip(-1), z, y),
    ],
    ids=["acc", "acc@2", "nll", "ece", "brier", "T", "cnll", "cece", "dis", "normdiv"],
)
def test_batched_equals_looped(fn):
    logits, labels = _random_task(lead=(3, 2))
    batched = fn(logits, labels)
    assert batched.shape == (3, 2)
    torch.testing.assert_close(batched, _per_model(fn, logits, labels))


def test_shared_labels_broadcast_over_models():
    logits, labels = _random_task(lead=(3,))
    shared = labels[0]
    expected = torch.stack([M.nll(logits[i], shared) for i in range(3)])
    torch.testing.assert_close(M.nll(logits, shared), expected)


def test_reliability_bins_batched_equals_looped():
    logits, labels = _random_task(lead=(3, 2))
    probs = torch.softmax(logits, -1)
    batched = M.reliability_bins(probs, labels, n_bins=7)
    for i in range(3):
        for j in range(2):
            single = M.reliability_bins(probs[i, j], labels[i, j], n_bins=7)
            for b, s in zip(batched, single, strict=True):
                torch.testing.assert_close(b[i, j], s)


def test_pairwise_batched_equals_looped():
    logits, _ = _random_task(lead=(2, 4))  # 2 groups of 4 members
    batched = M.pairwise_disagreement(logits)
    assert batched.shape == (2, 4, 4)
    for g in range(2):
        torch.testing.assert_close(batched[g], M.pairwise_disagreement(logits[g]))


# ---------------------------------------------------------------------- masks
@pytest.mark.parametrize(
    "fn",
    [
        lambda z, y, m: M.accuracy(z, y, mask=m),
        lambda z, y, m: M.accuracy(z, y, k=3, mask=m),
        lambda z, y, m: M.nll(z, y, mask=m),
        lambda z, y, m: M.ece(torch.softmax(z, -1), y, mask=m),
        lambda z, y, m: M.brier(torch.softmax(z, -1), y, mask=m),
        lambda z, y, m: M.temperature_scale(z, y, mask=m),
        lambda z, y, m: M.disagreement(z, z.roll(1, -1), mask=m),
    ],
    ids=["acc", "acc@3", "nll", "ece", "brier", "T", "dis"],
)
def test_mask_equals_dropping_samples(fn):
    logits, labels = _random_task(lead=(3,), n=30)
    mask = torch.rand(3, 30, generator=_gen(1)) < 0.6
    # Garbage where masked: it must count nowhere and not trip validation.
    logits = torch.where(mask[..., None], logits, torch.nan)
    labels = torch.where(mask, labels, -1)
    batched = fn(logits, labels, mask)
    for i in range(3):
        kept = fn(logits[i][mask[i]], labels[i][mask[i]], None)
        torch.testing.assert_close(batched[i], kept)


def test_calibrated_metrics_with_masks_equal_dropping():
    logits, labels = _random_task(lead=(2,), n=60)
    mask = torch.rand(2, 60, generator=_gen(2)) < 0.7
    test_z, val_z = logits[:, :30], logits[:, 30:]
    test_y, val_y = labels[:, :30], labels[:, 30:]
    test_m, val_m = mask[:, :30], mask[:, 30:]
    for fn in (M.calibrated_nll, M.calibrated_ece):
        batched = fn(test_z, test_y, val_z, val_y, test_mask=test_m, val_mask=val_m)
        for i in range(2):
            kept = fn(
                test_z[i][test_m[i]], test_y[i][test_m[i]], val_z[i][val_m[i]], val_y[i][val_m[i]]
            )
            torch.testing.assert_close(batched[i], kept)


def test_fully_masked_row_raises():
    logits, labels = _random_task(lead=(2,), n=5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(InvalidParameterError, match="no sample"):
        M.nll(logits, labels, mask=mask)


# ---------------------------------------------------------------------- temperature scaling
def _calibration_task(t_true, n=20_000, c=5, seed=0):
    """Logits z and labels drawn from softmax(z / T_true): the best temperature is T_true."""
    g = _gen(seed)
    t_true = torch.as_tensor(t_true, dtype=torch.float64)
    z = 3.0 * torch.randn(*t_true.shape, n, c, generator=g, dtype=torch.float64)
    p = torch.softmax(z / t_true[..., None, None], -1)
    y = torch.multinomial(p.reshape(-1, c), 1, generator=g).reshape(*t_true.shape, n)
    return z, y


def test_temperature_scale_recovers_true_temperature():
    t_true = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    z, y = _calibration_task(t_true)
    t_fit = M.temperature_scale(z, y)
    assert t_fit.shape == (3,)
    torch.testing.assert_close(t_fit, t_true, rtol=0.05, atol=0.0)


def test_temperature_scale_is_stationary_point_and_deterministic():
    z, y = _calibration_task(torch.tensor([1.7, 0.3]), n=3000, seed=3)
    t_fit = M.temperature_scale(z, y)
    torch.testing.assert_close(M.temperature_scale(z, y), t_fit, rtol=0, atol=0)
    t = t_fit.clone().requires_grad_(True)
    loss = M.nll(z / t[:, None, None], y).sum()
    (grad,) = torch.autograd.grad(loss, t)
    assert grad.abs().max().item() < 1e-8
    for factor in (1 - 1e-3, 1 + 1e-3):  # a minimum, not a maximum
        assert (
            M.nll(z / (t_fit * factor)[:, None, None], y) > M.nll(z / t_fit[:, None, None], y)
        ).all()


def test_calibrated_nll_not_worse_on_validation_set():
    logits, labels = _random_task(lead=(4,), n=300)
    logits = 5 * logits  # overconfident
    cnll = M.calibrated_nll(logits, labels, logits, labels)
    assert (cnll <= M.nll(logits, labels) + 1e-12).all()
    assert (cnll < M.nll(logits, labels) - 0.1).all()


def test_calibrated_ece_matches_manual_scaling():
    logits, labels = _random_task(lead=(2,), n=100)
    t = M.temperature_scale(logits[:, 50:], labels[:, 50:])
    expected = M.ece(torch.softmax(logits[:, :50] / t[:, None, None], -1), labels[:, :50])
    got = M.calibrated_ece(logits[:, :50], labels[:, :50], logits[:, 50:], labels[:, 50:])
    torch.testing.assert_close(got, expected)


def test_temperature_scale_edge_cases(caplog):
    # Perfectly separated data: NLL decreases as T -> 0, so T is clipped to the bound; the
    # margin is large enough that softmax saturates (the slope underflows to exactly 0).
    z = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    with caplog.at_level(logging.WARNING, logger="weightspace.metrics"):
        t = M.temperature_scale(z, torch.tensor([0, 1]))
    assert t.item() == pytest.approx(1e-2, rel=1e-6)
    assert "outside bounds" in caplog.text
    t = M.temperature_scale(z / 10, torch.tensor([0, 1]), bounds=(0.05, 20.0))
    assert t.item() == pytest.approx(0.05, rel=1e-6)
    # Constant logits: the NLL does not depend on T; T = 1 by convention.
    assert M.temperature_scale(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])).item() == 1.0
    with pytest.raises(InvalidParameterError, match="bounds"):
        M.temperature_scale(z, torch.tensor([0, 1]), bounds=(2.0, 1.0))


# ---------------------------------------------------------------------- ensembles
def test_ensemble_probs_logits_and_log_probs():
    logits, _ = _random_task(lead=(3,), n=10, c=4)  # 3 members
    probs = M.ensemble_probs(logits)
    torch.testing.assert_close(probs, torch.softmax(logits, -1).mean(0))
    torch.testing.assert_close(M.ensemble_log_probs(logits).exp(), probs)
    torch.testing.assert_close(M.ensemble_logits(logits), logits.mean(0))
    # Averaging logits is not averaging probabilities.
    two = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]]])  # (M=2, N=1, C=2)
    p_mean = (torch.sigmoid(torch.tensor(2.0)) + 0.5) / 2
    assert M.ensemble_probs(two)[0, 0].item() == pytest.approx(p_mean.item(), rel=1e-6)
    assert torch.softmax(M.ensemble_logits(two), -1)[0, 0].item() == pytest.approx(
        torch.sigmoid(torch.tensor(1.0)).item(), rel=1e-6
    )


def test_ensemble_member_dim_and_stability():
    logits, _ = _random_task(lead=(2, 3), n=10, c=4)  # (B=2, M=3, N, C)
    torch.testing.assert_close(
        M.ensemble_probs(logits, dim=1), torch.stack([M.ensemble_probs(x) for x in logits])
    )
    torch.testing.assert_close(M.ensemble_probs(logits, dim=-3), M.ensemble_probs(logits, dim=1))
    extreme = torch.tensor([[[2000.0, 0.0]], [[1000.0, 0.0]]])
    assert torch.isfinite(M.ensemble_log_probs(extreme)).all()
    with pytest.raises(ShapeError, match="member dim"):
        M.ensemble_probs(logits, dim=2)
    with pytest.raises(ShapeError, match="member dim"):
        M.ensemble_logits(torch.zeros(5, 3))


# ---------------------------------------------------------------------- diversity
def _onehot_logits(preds, c=3):
    return torch.nn.functional.one_hot(torch.tensor(preds), c).double()


def test_disagreement_hand_case_and_broadcast():
    a = _onehot_logits([0, 1, 2, 0])
    b = _onehot_logits([0, 2, 2, 1])
    assert M.disagreement(a, b).item() == pytest.approx(0.5)
    members = torch.stack([b, a, _onehot_logits([1, 1, 2, 0])])
    torch.testing.assert_close(
        M.disagreement(members, a), torch.tensor([0.5, 0.0, 0.25], dtype=torch.float64)
    )


def test_pairwise_disagreement_hand_case():
    members = torch.stack(
        [_onehot_logits([0, 1, 2, 0]), _onehot_logits([0, 2, 2, 1]), _onehot_logits([1, 1, 2, 0])]
    )
    expected = torch.tensor(
        [[0.0, 0.5, 0.25], [0.5, 0.0, 0.75], [0.25, 0.75, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(M.pairwise_disagreement(members), expected)


def test_pairwise_disagreement_symmetric_zero_diagonal_matches_loop():
    logits, _ = _random_task(lead=(6,), n=50, c=3)
    mask = torch.rand(6, 50, generator=_gen(4)) < 0.8
    d = M.pairwise_disagreement(logits, mask=mask)
    assert d.shape == (6, 6)
    assert torch.equal(d, d.T)
    assert torch.equal(d.diagonal(), torch.zeros(6, dtype=d.dtype))
    for i in range(6):
        for j in range(6):
            expected = M.disagreement(logits[i], logits[j], mask=mask[i] & mask[j])
            torch.testing.assert_close(d[i, j], expected)


def test_normalized_diversity_hand_case():
    reference = _onehot_logits([0, 1, 2, 0])
    labels = torch.tensor([0, 1, 1, 1])  # reference right, right, wrong, wrong -> error .5
    members = torch.stack([_onehot_logits([0, 2, 2, 1]), _onehot_logits([1, 1, 2, 0])])
    # disagreements .5 and .25, divided by the error .5
    torch.testing.assert_close(
        M.normalized_diversity(members, reference, labels),
        torch.tensor([1.0, 0.5], dtype=torch.float64),
    )


def test_normalized_diversity_zero_error():
    reference = _onehot_logits([0, 1, 2])
    labels = torch.tensor([0, 1, 2])
    member = _onehot_logits([0, 0, 2])
    with pytest.raises(InvalidParameterError, match="no error"):
        M.normalized_diversity(member, reference, labels)
    both = torch.stack([reference, _onehot_logits([1, 1, 2])])  # errors 0 and 1/3
    out = M.normalized_diversity(member, both, labels, zero_error="nan")
    assert math.isnan(out[0].item())
    assert out[1].item() == pytest.approx((2 / 3) / (1 / 3))  # [0,0,2] vs [1,1,2]
    with pytest.raises(InvalidParameterError, match="zero_error"):
        M.normalized_diversity(member, reference, labels, zero_error="zero")


# ---------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    z = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ShapeError, match=r"\(\.\.\., N, C\)"):
        M.nll(torch.randn(3), torch.tensor([0]))
    with pytest.raises(ShapeError, match="labels of shape"):
        M.accuracy(z, torch.tensor([0, 1, 2]))
    with pytest.raises(ShapeError, match="labels of shape"):
        M.nll(torch.randn(2, 4, 3), torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(InvalidParameterError, match=r"\[0, 3\)"):
        M.nll(z, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(InvalidParameterError, match=r"\[0, 3\)"):
        M.accuracy(z, torch.tensor([0, -1, 2, 0]))
    with pytest.raises(InvalidParameterError, match="integer"):
        M.nll(z, y.float())
    bad = z.clone()
    bad[2, 1] = torch.nan
    with pytest.raises(InvalidParameterError, match="NaN or infinity"):
        M.nll(bad, y)
    bad[2, 1] = torch.inf
    with pytest.raises(InvalidParameterError, match="NaN or infinity"):
        M.accuracy(bad, y)
    with pytest.raises(InvalidParameterError, match="bool"):
        M.accuracy(z, y, mask=torch.ones(4))
    with pytest.raises(ShapeError, match="mask of shape"):
        M.accuracy(z, y, mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(InvalidParameterError, match="floating-point"):
        M.nll(torch.zeros(4, 3, dtype=torch.long), y)
    with pytest.raises(InvalidParameterError, match="k must"):
        M.accuracy(z, y, k=4)
    with pytest.raises(InvalidParameterError, match="softmax"):
        M.ece(z, y)  # logits passed as probabilities
    with pytest.raises(InvalidParameterError, match="softmax"):
        M.brier(torch.full((4, 3), 0.5), y)
    with pytest.raises(InvalidParameterError, match="n_bins"):
        M.ece(torch.softmax(z, -1), y, n_bins=0)
    with pytest.raises(ShapeError, match="class count"):
        M.calibrated_nll(z, y, torch.randn(4, 2), torch.tensor([0, 1, 1, 0]))
    with pytest.raises(ShapeError, match=r"\(N, C\)"):
        M.disagreement(z, torch.randn(5, 3))
    with pytest.raises(ShapeError, match=r"\(\.\.\., M, N, C\)"):
        M.pairwise_disagreement(z)


# ---------------------------------------------------------------------- reliability diagram
def test_reliability_diagram_figure():
    logits, labels = _random_task(lead=(), n=200, c=4)
    probs = torch.softmax(logits, -1)
    fig = reliability_diagram(probs, labels, n_bins=10, title="model")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    bars = {c.get_label(): c for c in ax.containers}
    assert len(bars["Accuracy"]) == 10
    assert len(bars["Gap"]) == 10
    bins = M.reliability_bins(probs, labels, 10)
    heights = torch.tensor([patch.get_height() for patch in bars["Accuracy"]], dtype=torch.float64)
    torch.testing.assert_close(heights, bins.accuracy)
    assert f"{100 * M.ece(probs, labels, 10).item():.2f}%" in ax.get_title()
    assert ax.get_title().startswith("model")
    fig.savefig(io.BytesIO(), format="png")  # renders without pyplot


def test_reliability_diagram_into_given_axes_and_rejects_batches():
    fig = Figure()
    ax = fig.add_subplot()
    probs = torch.softmax(torch.randn(30, 3, generator=_gen()), -1)
    labels = torch.randint(0, 3, (30,), generator=_gen())
    assert reliability_diagram(probs, labels, n_bins=5, ax=ax) is fig
    assert len(next(c for c in ax.containers if c.get_label() == "Accuracy")) == 5
    with pytest.raises(ShapeError, match="one model"):
        reliability_diagram(probs[None], labels)
