"""Tests of weightspace.generators.ema: LitEma-style averaging with warm-up."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightspace.errors import CheckpointMismatchError
from weightspace.generators import EMA


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[2].bias.requires_grad_(False)  # a frozen parameter: copied, not averaged
    return model


def perturb(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
        model[1].running_mean.add_(1.0)
        model[1].num_batches_tracked.add_(3)


def test_update_matches_closed_form_with_warmup() -> None:
    model = net()
    ema = EMA(model, decay=0.9)
    s0 = {k: v.clone() for k, v in model.state_dict().items()}
    perturb(model, 1)
    p1 = {k: v.clone() for k, v in model.state_dict().items()}
    ema.update(model)
    d1 = min(0.9, 2 / 11)  # LitEma: n = 1 after the first update
    perturb(model, 2)
    p2 = {k: v.clone() for k, v in model.state_dict().items()}
    assert ema.current_decay() == pytest.approx(min(0.9, 3 / 12))
    ema.update(model)
    d2 = 3 / 12
    assert ema.num_updates == 2
    for k in ema.shadow:
        s1 = d1 * s0[k] + (1 - d1) * p1[k]
        expected = d2 * s1 + (1 - d2) * p2[k]
        assert torch.allclose(ema.shadow[k], expected, atol=1e-6), k
    assert set(ema.shadow) == {"0.weight", "0.bias", "1.weight", "1.bias", "2.weight"}
    for k in ("2.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(ema.copied[k], p2[k]), k  # copied as they are


def test_no_warmup_uses_decay() -> None:
    model = net()
    ema = EMA(model, decay=0.5, use_warmup=False)
    before = model[0].weight.detach().clone()
    perturb(model, 3)
    ema.update(model)
    assert torch.allclose(ema.shadow["0.weight"], 0.5 * before + 0.5 * model[0].weight)
    for _ in range(100):
        ema.update(model)
    assert EMA(model, decay=0.999).current_decay() == pytest.approx(2 / 11)
    ema_long = EMA(model, decay=0.999)
    ema_long.num_updates = 10**6
    assert ema_long.current_decay() == 0.999


def test_copy_to_then_outputs_equal_shadow() -> None:
    model = net()
    ema = EMA(model, decay=0.8)
    for s in range(3):
        perturb(model, s + 10)
        ema.update(model)
    perturb(model, 99)  # the live model moves away from the average
    target = net(5)
    ema.copy_to(target)
    for k, v in target.state_dict().items():
        ref = ema.shadow.get(k, ema.copied.get(k))
        assert torch.equal(v, ref), k
    x = torch.randn(8, 3)
    manual = net(7)
    with torch.no_grad():
        for k, p in manual.named_parameters():
            p.copy_(ema.shadow.get(k, ema.copied.get(k)))
        for k, b in manual.named_buffers():
            b.copy_(ema.copied[k])
    target.eval(), manual.eval(), model.eval()
    assert torch.equal(target(x), manual(x))
    assert not torch.allclose(target(x), model(x))
    live = model(x)
    with ema.average_parameters(model):
        assert torch.equal(model(x), target(x))
    assert torch.equal(model(x), live)  # parameters and buffers restored


def test_state_dict_roundtrip_and_mismatch() -> None:
    model = net()
    ema = EMA(model, decay=0.95)
    for s in range(4):
        perturb(model, s)
        ema.update(model)
    state = ema.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    fresh = EMA(net(3), decay=0.1)
    fresh.load_state_dict(state)
    assert fresh.num_updates == 4 and fresh.decay == pytest.approx(0.95)
    for k in ema.shadow:
        assert torch.equal(fresh.shadow[k], ema.shadow[k])
    perturb(model, 50)
    ema.update(model), fresh.update(model)
    for k in ema.shadow:
        assert torch.equal(fresh.shadow[k], ema.shadow[k])
    other = nn.Linear(3, 2)
    with pytest.raises(CheckpointMismatchError):
        ema.update(other)
    with pytest.raises(CheckpointMismatchError):
        EMA(other).load_state_dict(state)


def test_update_equals_per_parameter_lerp_bitwise() -> None:
    """The multi-tensor update is the per-parameter ``lerp_`` it replaced, bit for bit."""
    model = net()
    ema = EMA(model, decay=0.97)
    for seed in range(5):
        perturb(model, 10 + seed)
        want = {k: s.clone() for k, s in ema.shadow.items()}
        params = dict(model.named_parameters())
        w = 1.0 - ema.current_decay()
        for k in want:
            want[k].lerp_(params[k].detach(), w)
        ema.update(model)
        for k in want:
            assert torch.equal(ema.shadow[k], want[k]), k
