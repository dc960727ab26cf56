"""Knowledge distillation: the loss against hand computations, and the training loop."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightspace.data import Split
from weightspace.data.embedded import load_digits
from weightspace.ensembles import KDConfig, KDResult, distill, kd_loss, kd_sweep, teacher_probs
from weightspace.errors import InvalidParameterError, NonFiniteWeightsError, ShapeError
from weightspace.metrics import accuracy
from weightspace.nets import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- fixtures
def _mlp(seed: int, hidden=(32,), n_classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", {"hidden": list(hidden)}, input_shape=(1, 8, 8), n_classes=n_classes)


def _acc(model: nn.Module, split: Split) -> float:
    model.eval()
    with torch.no_grad():
        return float(accuracy(model(split.x), split.y))


def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def teacher(digits):
    """An MLP trained with cross-entropy on digits (test accuracy ~0.95)."""
    model = _mlp(123, hidden=(64,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    x, y = digits.train.x, digits.train.y
    model.train()
    for _ in range(10):
        order = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), 64):
            idx = order[s : s + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    assert _acc(model, digits.test) > 0.85
    return model


# ------------------------------------------------------------------------------ kd_loss
def _softmax(z, t=1.0):
    e = [math.exp(v / t) for v in z]
    s = sum(e)
    return [v / s for v in e]


def test_kd_loss_matches_hand_computation():
    zs = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    zt = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    labels = [1, 2]
    T, alpha = 2.0, 0.3
    kl, ce = 0.0, 0.0
    for s, t, y in zip(zs, zt, labels, strict=True):
        p, q = _softmax(t, T), _softmax(s, T)
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
        ce += -math.log(_softmax(s)[y])
    expected = alpha * T**2 * kl / 2 + (1 - alpha) * ce / 2

    probs = torch.tensor([_softmax(t, T) for t in zt])
    got = kd_loss(torch.tensor(zs), probs, torch.tensor(labels), T, alpha)
    assert got.shape == ()
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_kd_loss_alpha_zero_is_cross_entropy_exactly():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 4, generator=g)
    p = torch.softmax(torch.randn(5, 4, generator=g), -1)
    y = torch.tensor([0, 3, 1, 2, 2])
    assert torch.equal(kd_loss(z, p, y, 3.0, 0.0), F.cross_entropy(z, y))


def test_kd_loss_zero_when_student_equals_teacher():
    z = torch.tensor([[1.0, -2.0, 0.5], [4.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([2, 0])
    for T in (1.0, 4.0, 20.0):
        loss = kd_loss(z, torch.softmax(z / T, -1), y, T, 1.0)
        assert float(loss) == pytest.approx(0.0, abs=1e-12)


def test_kd_loss_has_t_squared_factor():
    """With alpha=1: loss = T^2 KL and d loss / d z = T (softmax(z/T) - p) / B."""
    zs = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    zt = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([0, 0])
    for T in (1.0, 4.0):
        p = torch.softmax(zt / T, -1)
        z = zs.clone().requires_grad_(True)
        loss = kd_loss(z, p, y, T, 1.0)
        loss.backward()
        q = torch.softmax(zs / T, -1)
        kl = float((p * (p.log() - q.log())).sum() / 2)
        assert loss.item() == pytest.approx(T**2 * kl, rel=1e-5)
        assert torch.allclose(z.grad, T * (q - p) / 2, atol=1e-6)


def test_kd_loss_validates():
    z, p, y = torch.zeros(2, 3), torch.full((2, 3), 1 / 3), torch.tensor([0, 1])
    with pytest.raises(InvalidParameterError, match=r"temperature.*> 0.*0"):
        kd_loss(z, p, y, 0.0, 0.5)
    with pytest.raises(InvalidParameterError, match=r"alpha.*\[0, 1\].*1.5"):
        kd_loss(z, p, y, 1.0, 1.5)
    with pytest.raises(ShapeError, match="same number of classes"):
        kd_loss(z, torch.full((2, 4), 0.25), y, 1.0, 0.5)


# ------------------------------------------------------------------------- teacher_probs
def test_teacher_probs_mean_of_softmaxes_and_modes_restored():
    a, b = _mlp(1), _mlp(2)
    a.train()
    x = torch.rand(50, 1, 8, 8)
    T = 3.0
    got = teacher_probs([a, b], x, T, batch_size=16)
    with torch.no_grad():
        a.eval()
        expected = (torch.softmax(a(x) / T, -1) + torch.softmax(b(x) / T, -1)) / 2
        a.train()
    assert got.shape == (50, 10)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(50), atol=1e-5)
    assert a.training and not got.requires_grad
    assert torch.allclose(teacher_probs(b, x, T), torch.softmax(b(x) / T, -1), atol=1e-6)


def test_teacher_probs_class_disagreement():
    with pytest.raises(ShapeError, match=r"10.*5"):
        teacher_probs([_mlp(1), _mlp(2, n_classes=5)], torch.rand(4, 1, 8, 8), 1.0)


# ------------------------------------------------------------------------------- distill
FAST = KDConfig(epochs=4, lr=0.05, batch_size=64, temperature=4.0, alpha=0.7, seed=3)


def test_distill_random_student_learns_and_input_unchanged(digits, teacher):
    student = _mlp(7)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    student.train()
    res = distill(student, teacher, digits.train, FAST, val=digits.val)
    assert isinstance(res, KDResult)
    assert res.model is not student and not res.model.training
    assert student.training
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())
    assert _acc(res.model, digits.test) > 0.7  # chance is 0.1
    assert len(res.history["train_loss"]) == FAST.epochs
    assert len(res.history["val_accuracy"]) == FAST.epochs + 1
    assert res.history["train_loss"][-1] < res.history["train_loss"][0]
    assert res.seconds > 0


def test_distill_is_deterministic(digits, teacher):
    cfg = KDConfig(epochs=2, lr=0.05, seed=11)
    r1 = distill(_mlp(7), teacher, digits.train, cfg, val=digits.val)
    r2 = distill(_mlp(7), teacher, digits.train, cfg, val=digits.val)
    assert _states_equal(r1.model, r2.model)
    assert r1.history == r2.history and r1.best_epoch == r2.best_epoch
    r3 = distill(_mlp(7), teacher, digits.train, KDConfig(epochs=2, lr=0.05, seed=12))
    assert not _states_equal(r1.model, r3.model)


def test_distill_returns_best_val_epoch(digits, teacher):
    # A high learning rate makes validation accuracy bumpy, so the best epoch matters.
    cfg = KDConfig(epochs=6, lr=0.3, seed=0, alpha=0.5)
    res = distill(_mlp(7), teacher, digits.train, cfg, val=digits.val)
    accs = res.history["val_accuracy"]
    assert res.best_epoch == accs.index(max(accs))  # earliest maximum
    assert _acc(res.model, digits.val) == pytest.approx(accs[res.best_epoch], abs=1e-6)


def test_distill_ties_keep_the_earliest_epoch(digits, teacher):
    # The teacher as its own student at T=1, alpha=1 has (numerically) zero loss and
    # gradient, so every epoch ties with epoch 0, which must be the one returned.
    cfg = KDConfig(epochs=2, lr=1e-3, temperature=1.0, alpha=1.0)
    res = distill(teacher, teacher, digits.train, cfg, val=digits.val)
    assert len(set(res.history["val_accuracy"])) == 1
    assert res.best_epoch == 0
    assert _states_equal(res.model, teacher)


def test_distill_without_val_returns_last_epoch(digits, teacher):
    res = distill(_mlp(7), [teacher, teacher], digits.train, KDConfig(epochs=2))
    assert res.best_epoch == 2 and set(res.history) == {"train_loss"}


def test_distill_diverging_lr_raises(digits, teacher):
    cfg = KDConfig(epochs=3, lr=1e12)
    with pytest.raises(NonFiniteWeightsError, match=r"epoch 1.*lower the learning rate"):
        distill(_mlp(7), teacher, digits.train, cfg)


class _NaNTeacher(nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 10), float("nan"))


def test_distill_nan_teacher_raises(digits):
    with pytest.raises(NonFiniteWeightsError, match="teacher"):
        distill(_mlp(7), _NaNTeacher(), digits.train, KDConfig(epochs=1))


def test_distill_class_count_mismatch(digits, teacher):
    with pytest.raises(ShapeError, match=r"teachers output 10 classes but the student outputs 5"):
        distill(_mlp(7, n_classes=5), teacher, digits.train, KDConfig(epochs=1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"temperature": 0.0}, "temperature"),
        ({"alpha": -0.1}, "alpha"),
        ({"seed": -1}, "seed"),
        ({"epochs": True}, "epochs"),
    ],
)
def test_kdconfig_validates(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        KDConfig(**kwargs)


def test_distill_adam(digits, teacher):
    cfg = KDConfig(epochs=3, lr=1e-2, optimizer="adam")
    res = distill(_mlp(7), teacher, digits.train, cfg, val=digits.val)
    assert max(res.history["val_accuracy"]) > 0.7


# ------------------------------------------------------------------------------ kd_sweep
def test_kd_sweep_selects_on_validation(digits, teacher):
    cfg = KDConfig(epochs=2, lr=0.05)
    out = kd_sweep(
        _mlp(7), teacher, digits.train, digits.val, digits.test, cfg, (1.0, 4.0), (0.1, 0.9)
    )
    assert {
        "runs",
        "best_test_accuracy",
        "mean_best_over_temperatures",
        "std_best_over_temperatures",
    } <= set(out)
    runs = out["runs"]
    assert [(r["temperature"], r["alpha"]) for r in runs] == [
        (1.0, 0.1),
        (1.0, 0.9),
        (4.0, 0.1),
        (4.0, 0.9),
    ]
    for r in runs:
        assert set(r) == {"temperature", "alpha", "val_accuracy", "test_accuracy", "best_epoch"}
    vals = [r["val_accuracy"] for r in runs]
    assert out["best_test_accuracy"] == runs[vals.index(max(vals))]["test_accuracy"]
    per_t = [max(runs[i : i + 2], key=lambda r: r["val_accuracy"]) for i in (0, 2)]
    tests = [r["test_accuracy"] for r in per_t]
    mean = sum(tests) / 2
    assert out["mean_best_over_temperatures"] == pytest.approx(mean)
    assert out["std_best_over_temperatures"] == pytest.approx(abs(tests[0] - tests[1]) / 2)
    # Each run is the same as a direct distill call.
    direct = distill(
        _mlp(7),
        teacher,
        digits.train,
        KDConfig(epochs=2, lr=0.05, temperature=4.0, alpha=0.9),
        val=digits.val,
    )
    assert runs[3]["test_accuracy"] == pytest.approx(_acc(direct.model, digits.test))


def test_kd_sweep_validates(digits, teacher):
    cfg = KDConfig(epochs=1)
    with pytest.raises(InvalidParameterError, match="temperatures is empty"):
        kd_sweep(_mlp(7), teacher, digits.train, digits.val, digits.test, cfg, [], [0.5])
    with pytest.raises(InvalidParameterError, match="duplicates"):
        kd_sweep(_mlp(7), teacher, digits.train, digits.val, digits.test, cfg, [1.0], [0.5, 0.5])
