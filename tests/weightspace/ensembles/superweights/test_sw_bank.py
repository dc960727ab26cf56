"""Templates and SuperWeight composition: exact windows, linear mixing, autograd."""

from __future__ import annotations

import math

import pytest
import torch
from sw_members import vgg1d

from weightspace.ensembles.superweights import SuperWeightEnsemble, window_offsets
from weightspace.errors import InvalidParameterError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_template_alpha_one_is_the_bank_window_exactly():
    ens = SuperWeightEnsemble([vgg1d([4, 6, 6])], 10_000, max_templates=1, clusters="layer")
    bank = ens.bank
    for slot, regions in enumerate(bank.regions):
        assert bank.n_templates(slot) == 1 and len(regions) == 1
        (reg,) = regions
        with torch.no_grad():
            bank.coefficients[ens.plan.coef_slot.index(slot)].fill_(1.0)
        w = bank.compose(slot, ens.plan.coef_slot.index(slot))
        window = bank.banks[reg.bank][reg.offsets[0] : reg.offsets[0] + reg.size]
        assert torch.equal(w.flatten(), window)
        assert w.shape == bank.plan.slots[slot].shape


def test_k_templates_compose_linearly():
    ens = SuperWeightEnsemble([vgg1d([4, 6, 6]), vgg1d([4, 6, 6], 1)], 20_000, max_templates=5)
    bank = ens.bank
    checked = 0
    for ref in ens.plan.layers:
        t = bank.templates(ref.slot).double()
        alpha = bank.coefficients[ref.coef].double()
        assert t.shape[0] == alpha.shape[0] == 5
        expected = sum(alpha[k] * t[k] for k in range(t.shape[0]))
        got = bank.compose(ref.slot, ref.coef).double()
        assert torch.allclose(got, expected, atol=1e-7, rtol=0)
        # each template is a window of the bank at its offset
        (reg,) = bank.regions[ref.slot]
        for k, o in enumerate(reg.offsets):
            assert torch.equal(t[k].flatten().float(), bank.banks[reg.bank][o : o + reg.size])
        checked += 1
    assert checked == 4


def test_autograd_matches_template_and_coefficient_formulas():
    """dL/dalpha_k = <dL/dW_m, T_k>; dL/dbank sums alpha_{m,k} dL/dW_m over windows and members."""
    torch.manual_seed(0)
    ens = SuperWeightEnsemble(
        [vgg1d([4, 6, 6]), vgg1d([4, 6, 6], 1)],
        20_000,
        max_templates=3,
        coefficient_sharing="none",
        clusters="one",
    )
    layers = ens.superweight_layers()
    weights = [layer.composed_weight() for layer in layers]
    targets = [torch.randn_like(w) for w in weights]
    loss = sum(
        ((w - t) ** 2 * (i + 1)).sum()
        for i, (w, t) in enumerate(zip(weights, targets, strict=True))
    )
    params = list(ens.bank.banks) + list(ens.bank.coefficients)
    grads = torch.autograd.grad(loss, weights + params)
    g_w = grads[: len(weights)]
    g_bank = grads[len(weights) : len(weights) + len(ens.bank.banks)]
    g_alpha = grads[len(weights) + len(ens.bank.banks) :]
    expected_bank = [torch.zeros_like(b, dtype=torch.float64) for b in ens.bank.banks]
    for ref, gw in zip(ens.plan.layers, g_w, strict=True):
        t = ens.bank.templates(ref.slot).detach()
        alpha = ens.bank.coefficients[ref.coef].detach()
        # dL/dalpha_k = <dL/dW, T_k>
        manual = (t * gw).flatten(1).sum(1)
        assert torch.allclose(g_alpha[ref.coef], manual, atol=1e-5, rtol=1e-5)
        # dL/dT_k = alpha_k dL/dW, scattered into the bank window of T_k
        (reg,) = ens.bank.regions[ref.slot]
        for k, o in enumerate(reg.offsets):
            expected_bank[reg.bank][o : o + reg.size] += (alpha[k] * gw).flatten().double()
    # two members share every slot's templates: their contributions add up
    assert all(len({r.member for r in ens.plan.layers if r.slot == s}) == 2 for s in range(2))
    for got, exp in zip(g_bank, expected_bank, strict=True):
        assert torch.allclose(got.double(), exp, atol=1e-5, rtol=1e-5)
    assert any(exp.abs().sum() > 0 for exp in expected_bank)


def test_initial_composed_weights_have_their_fan_in_scale():
    torch.manual_seed(0)
    members = [vgg1d([16, 24, 64, 128], s) for s in range(2)]
    ens = SuperWeightEnsemble(members, 0.6, seed=3)
    stds = {}
    for layer in ens.superweight_layers():
        fan_in = math.prod(layer.shape[1:])
        target = 1 / math.sqrt(3 * fan_in)  # PyTorch's default Linear/Conv init
        std = layer.composed_weight().detach().std().item()
        assert 0.8 * target < std < 1.2 * target, (layer.shape, std, target)
        stds[fan_in] = std
    # not one fixed std for all layers: the scale follows the fan-in
    assert max(stds.values()) / min(stds.values()) > 1.5


def test_window_offsets_are_distinct_and_in_range():
    for bank, window, k, n in [(100, 40, 8, 1), (100, 40, 3, 4), (50, 49, 1, 3), (9, 4, 5, 2)]:
        for q in range(n):
            offs = window_offsets(bank, window, k, q, n)
            assert len(set(offs)) == k
            assert all(0 <= o <= bank - window for o in offs)
    with pytest.raises(InvalidParameterError):
        window_offsets(10, 11, 1)
    with pytest.raises(InvalidParameterError):
        window_offsets(10, 8, 3)


def test_gathered_templates_are_the_level_windows_in_row_major_order():
    """One gather per slot equals assembling each level's bank window by hand."""
    from weightspace.ensembles.superweights.plan import slot_regions

    ens = SuperWeightEnsemble([vgg1d([4, 8, 8]), vgg1d([4, 5, 3], 1), vgg1d([4, 6, 7], 2)], 0.8)
    bank = ens.bank
    multi = 0
    for slot, regions in enumerate(bank.regions):
        _, perm = slot_regions(bank.plan.slots[slot])
        multi += perm is not None
        got = bank.templates(slot)
        for k in range(bank.n_templates(slot)):
            parts = [bank.banks[r.bank][r.offsets[k] : r.offsets[k] + r.size] for r in regions]
            flat = torch.cat(parts)
            if perm is not None:
                flat = flat[torch.tensor(perm)]
            assert torch.equal(got[k], flat.view(bank.plan.slots[slot].shape))
    assert multi > 0  # the mixed widths exercise the multi-level permutation


def test_shared_pass_builds_once_and_changes_nothing():
    members = [vgg1d([4, 8, 8]), vgg1d([4, 5, 3], 1), vgg1d([4, 8, 8], 2)]
    ens = SuperWeightEnsemble(members, 0.8)
    x = torch.randn(3, 1, 16)
    plain_logits = torch.stack([net(x) for net in ens.members])  # no shared pass
    plain_grads = torch.autograd.grad(plain_logits.square().sum(), list(ens.bank.parameters()))
    logits = ens.member_logits(x)  # one shared pass
    grads = torch.autograd.grad(logits.square().sum(), list(ens.bank.parameters()))
    assert torch.equal(logits, plain_logits)
    for g, h in zip(grads, plain_grads, strict=True):
        assert torch.allclose(g, h, atol=1e-7)
    with ens.bank.shared_pass():
        assert ens.bank.templates(0) is ens.bank.templates(0)
        assert ens.bank.compose(0, 0) is ens.bank.compose(0, 0)
    assert ens.bank.templates(0) is not ens.bank.templates(0)  # no cache outside a pass
    assert ens.bank._pass is None
