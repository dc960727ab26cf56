"""One-to-one distillation into a BatchEnsemble: the shared loop, the fast-weight rules,
perturbations plugged in, and bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightspace.data import Split
from weightspace.data.embedded import load_digits
from weightspace.ensembles import KDConfig, distill
from weightspace.ensembles.batchensemble import BatchEnsemble
from weightspace.ensembles.kd.one_to_one import (
    PerturbConfig,
    _fast_weight_rule,
    distill_one_to_one,
    member_teacher_probs,
    one_to_one_task,
)
from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.metrics import accuracy, ensemble_probs
from weightspace.nets import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(seed: int, hidden=(16,)) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", {"hidden": list(hidden)}, input_shape=(1, 8, 8), n_classes=10)


@pytest.fixture(scope="module")
def digits():
    d = load_digits(seed=0)
    return d


@pytest.fixture(scope="module")
def teachers(digits):
    """Three MLPs trained briefly with cross-entropy from different seeds."""
    out = []
    x, y = digits.train.x, digits.train.y
    for seed in range(3):
        model = _mlp(100 + seed, hidden=(32,))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(seed)
        for _ in range(5):
            order = torch.randperm(len(y), generator=g)
            for s in range(0, len(y), 64):
                idx = order[s : s + 64]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        out.append(model.eval())
    return out


def _cfg(**kw) -> KDConfig:
    base = {"epochs": 2, "lr": 0.01, "batch_size": 64, "optimizer": "sgd", "temperature": 4.0}
    return KDConfig(**{**base, **kw})


def test_m1_with_frozen_fast_weights_equals_plain_kd(digits, teachers):
    student = _mlp(7)
    cfg = _cfg(alpha=0.7, weight_decay=1e-3)
    plain = distill(student, teachers[0], digits.train, cfg, digits.val)
    be = BatchEnsemble(student, 1)
    for p in be.fast_parameters():
        p.requires_grad_(False)
    res = distill_one_to_one(be, [teachers[0]], digits.train, cfg, digits.val)
    merged = res.model.member(0)
    sa, sb = plain.model.state_dict(), merged.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6)
    assert res.history["train_loss"] == pytest.approx(plain.history["train_loss"], abs=1e-6)
    assert res.best_epoch == plain.best_epoch


def test_one_to_one_loss_is_the_mean_of_member_kd_losses(digits, teachers):
    be = BatchEnsemble(_mlp(3), 3)
    with torch.no_grad():
        for p in be.fast_parameters():
            p.uniform_(0.5, 1.5)
    x, y = digits.train.x, digits.train.y
    probs = member_teacher_probs(teachers, x, 4.0)
    task = one_to_one_task(be, teachers, (x, y, probs), _cfg(alpha=1.0), PerturbConfig())
    idx = torch.arange(10)
    logits = be.member_logits(x[idx])
    by_hand = 0.0
    for m in range(3):
        log_q = F.log_softmax(logits[m] / 4.0, -1)
        p = probs[m, idx]
        by_hand += 16.0 * (p * (p.log() - log_q)).sum(-1).mean() / 3
    torch.testing.assert_close(task.batch_loss(idx), by_hand, rtol=1e-5, atol=1e-6)


def test_fast_weight_rule_scales_gradients_by_m_and_pulls_towards_one():
    be = BatchEnsemble(_mlp(0), 4)
    fast = be.fast_parameters()
    with torch.no_grad():
        for p in fast:
            p.fill_(1.5)
    for p in fast:
        p.grad = torch.full_like(p, 0.2)
    _fast_weight_rule(be, weight_decay=0.1)()
    for p in fast:
        # 4 * 0.2 + (0.1 / 4) * (1.5 - 1)
        torch.testing.assert_close(p.grad, torch.full_like(p, 0.8 + 0.0125))


def test_one_to_one_distillation_learns_and_members_differ(digits, teachers):
    be = BatchEnsemble(_mlp(5), 3)
    cfg = _cfg(epochs=5, optimizer="adam", lr=0.01, alpha=1.0)
    res = distill_one_to_one(be, teachers, digits.train, cfg, digits.val)
    logits = res.model.member_logits(digits.test.x).detach()
    assert float(accuracy(ensemble_probs(logits), digits.test.y)) > 0.8
    # members follow different teachers, so their fast weights move apart
    r = next(m.r for m in res.model.modules() if hasattr(m, "r"))
    assert float((r[0] - r[1]).detach().abs().max()) > 1e-3
    assert len(res.history["val_accuracy"]) == 6


@pytest.mark.parametrize("kind", ["ods", "confods", "tdiv_sdiv"])
def test_perturbed_distillation_runs_and_is_deterministic(digits, teachers, kind):
    small = Split(digits.train.x[:256], digits.train.y[:256])
    be = BatchEnsemble(_mlp(5), 3)
    cfg = _cfg(epochs=1, alpha=1.0)
    pert = PerturbConfig(kind=kind, step=0.05, seed=3)
    a = distill_one_to_one(be, teachers, small, cfg, perturbation=pert)
    b = distill_one_to_one(be, teachers, small, cfg, perturbation=pert)
    plain = distill_one_to_one(be, teachers, small, cfg)
    for (k, va), vb in zip(
        a.model.state_dict().items(),
        b.model.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(va, vb), k
    assert any(
        not torch.equal(va, vp)
        for va, vp in zip(
            a.model.state_dict().values(), plain.model.state_dict().values(), strict=True
        )
    )


def test_bad_input(digits, teachers):
    be = BatchEnsemble(_mlp(0), 2)
    with pytest.raises(ShapeError, match="one teacher per member: 3 teachers"):
        distill_one_to_one(be, teachers, digits.train, _cfg())
    with pytest.raises(InvalidParameterError, match="must be a BatchEnsemble"):
        distill_one_to_one(_mlp(0), teachers, digits.train, _cfg())
    with pytest.raises(InvalidParameterError, match="perturbation kind"):
        PerturbConfig(kind="fgsm")
    with pytest.raises(InvalidParameterError, match="step must be a finite number > 0"):
        PerturbConfig(step=0.0)
    wrong = build_model("mlp", {"hidden": [8]}, input_shape=(1, 8, 8), n_classes=5)
    with pytest.raises(ShapeError, match="same classes"):
        distill_one_to_one(BatchEnsemble(wrong, 3), teachers, digits.train, _cfg())


def test_nan_inputs_are_reported(digits, teachers):
    small = Split(digits.train.x[:64].clone(), digits.train.y[:64])
    small.x[3, 0, 0, 0] = float("nan")
    be = BatchEnsemble(_mlp(0), 3)
    with pytest.raises(Exception, match="NaN"):
        distill_one_to_one(be, teachers, small, _cfg(epochs=1), perturbation=PerturbConfig("ods"))
