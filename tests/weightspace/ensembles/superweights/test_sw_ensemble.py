"""SuperWeightEnsemble: sharing by width, parameter counts, budgets, errors, refinement."""

from __future__ import annotations

import pytest
import torch
from sw_members import resnet1d, shared_weight_count, vgg1d
from torch import nn

from weightspace.ensembles.superweights import (
    ParameterBudget,
    SuperWeightEnsemble,
    interpolate,
    minimum_parameters,
)
from weightspace.errors import (
    ArchitectureMismatchError,
    InvalidParameterError,
    ShapeError,
    UnsupportedLayerError,
)
from weightspace.nets.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _mixed_members():
    """Three widths of one ResNet and a deeper one: mixed widths and depths."""
    return [resnet1d(8, 1, 0), resnet1d(4, 1, 1), resnet1d(6, 1, 2), resnet1d(4, 2, 3)]


def test_narrow_member_weight_is_top_left_block_of_wide():
    ens = SuperWeightEnsemble([vgg1d([4, 8, 8]), vgg1d([4, 5, 3], 1)], 0.9)
    wide, narrow = ens.members[0], ens.members[1]
    for path in ("features.3", "features.6"):
        w_wide = wide.get_submodule(path).composed_weight()
        w_narrow = narrow.get_submodule(path).composed_weight()
        o, i = w_narrow.shape[:2]
        assert w_wide.shape[:2] != w_narrow.shape[:2]
        assert torch.equal(w_narrow, w_wide[:o, :i])  # extra out on dim 0, extra in on dim 1
    # width slices: the narrow member never touches the wide member's extra slice
    out = narrow(torch.randn(2, 1, 16)).sum()
    grads = torch.autograd.grad(out, list(ens.bank.banks), allow_unused=True)
    for (_, level), g in zip(ens.allocation.bank_keys, grads, strict=True):
        if level > 0:
            assert g is None or torch.count_nonzero(g) == 0
        else:
            assert g is not None and torch.count_nonzero(g) > 0


def test_unique_parameters_are_bank_coefficients_and_per_member_parameters():
    members = _mixed_members()
    ens = SuperWeightEnsemble(members, 0.7)
    bank = sum(b.numel() for b in ens.bank.banks)
    coefs = sum(a.numel() for a in ens.bank.coefficients)
    # per member: everything but the replaced weights (stem, classifier, BatchNorm, biases)
    per_member = sum(
        sum(p.numel() for p in m.parameters()) - shared_weight_count(m) for m in members
    )
    assert ens.unique_parameter_count() == bank + coefs + per_member
    by_identity = {id(p): p.numel() for p in ens.parameters()}
    assert ens.unique_parameter_count() == sum(by_identity.values())
    # the bank fits the budget, and the budget is 0.7 of the deep ensemble
    deep = sum(p.numel() for m in members for p in m.parameters())
    assert ens.budget == int(0.7 * deep)
    assert ens.unique_parameter_count() <= ens.budget
    assert ens.parameter_breakdown()["total"] == ens.unique_parameter_count()
    # every member reads the same bank tensors
    bank_ids = {id(b) for b in ens.bank.banks}
    for i in range(4):
        assert bank_ids <= {id(p) for p in ens.member(i).parameters()}


def test_param_groups_exclude_coefficients_from_weight_decay():
    ens = SuperWeightEnsemble(_mixed_members(), 0.7)
    groups = ens.param_groups(5e-4)
    coef_ids = {id(a) for a in ens.bank.coefficients}
    seen = []
    for g in groups:
        for p in g["params"]:
            seen.append(id(p))
            assert g["weight_decay"] == (0.0 if id(p) in coef_ids else 5e-4)
    assert sorted(seen) == sorted(id(p) for p in ens.parameters())  # each exactly once


def test_budget_below_the_smallest_bank_states_the_minimum():
    members = _mixed_members()
    ens = SuperWeightEnsemble(members, 0.7)
    need = minimum_parameters(ens.plan, ens.fixed_parameters, reserve_unsharing=True)
    with pytest.raises(InvalidParameterError, match=f"at least {need}"):
        SuperWeightEnsemble(members, need - 1)
    small = SuperWeightEnsemble(members, need)
    assert small.unique_parameter_count() <= need
    with pytest.raises(InvalidParameterError):
        ParameterBudget(total=100, fraction=0.5)
    with pytest.raises(InvalidParameterError):
        ParameterBudget(fraction=-0.1)


def test_member_views_agree_with_member_logits():
    members = _mixed_members()
    ens = SuperWeightEnsemble(members, 0.6).eval()
    x = torch.randn(5, 1, 16)
    with torch.no_grad():
        logits = ens.member_logits(x)
        assert logits.shape == (4, 5, 3)
        for i in range(4):
            assert torch.equal(ens.member(i)(x), logits[i])
            plain = ens.export_member(i).eval()
            assert not any(hasattr(m, "bank") for m in plain.modules())
            assert torch.allclose(plain(x), logits[i], atol=1e-6)
            # the exported member loads into a freshly built registry model
            fresh = resnet1d(8 if i == 0 else 4 if i in (1, 3) else 6, 2 if i == 3 else 1, 9)
            fresh.load_state_dict(plain.state_dict())
            assert torch.allclose(fresh.eval()(x), logits[i], atol=1e-6)
    with pytest.raises(InvalidParameterError):
        ens.member(4)


def test_different_inputs_or_outputs_are_rejected():
    with pytest.raises(ArchitectureMismatchError, match="inputs of different sizes"):
        SuperWeightEnsemble([vgg1d([4, 4, 4]), build_model("vgg", {}, (1, 8, 8), 3)], 0.9)
    two_channel = build_model("vgg", {"stages": [[4], [4], [4]]}, (2, 16), 3)
    with pytest.raises(ArchitectureMismatchError, match="inputs of different sizes"):
        SuperWeightEnsemble([vgg1d([4, 4, 4]), two_channel], 0.9)
    with pytest.raises(ArchitectureMismatchError, match="different numbers of outputs"):
        SuperWeightEnsemble([vgg1d([4, 4, 4]), vgg1d([4, 4, 4], n_classes=5)], 0.9)


def test_unsupported_layers_are_named():
    class WithConv3d(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = vgg1d([4, 4, 4])
            self.extra = nn.Conv3d(1, 1, 1)

    with pytest.raises(UnsupportedLayerError, match="Conv3d"):
        SuperWeightEnsemble([WithConv3d()], 0.9)
    grouped = vgg1d([4, 4, 4])
    grouped.features[2] = nn.Conv1d(4, 4, 3, padding=1, groups=2)
    with pytest.raises(UnsupportedLayerError, match="groups=2"):
        SuperWeightEnsemble([grouped], 0.9)
    with pytest.raises(InvalidParameterError, match="at least one more"):
        SuperWeightEnsemble([build_model("mlp", {"hidden": [4]}, (1, 16), 3)], 0.9)
    with pytest.raises(InvalidParameterError, match="non-empty"):
        SuperWeightEnsemble([], 0.9)


def test_unsharing_keeps_the_function_and_the_budget():
    members = [resnet1d(4, 1, s) for s in range(3)]
    ens = SuperWeightEnsemble(members, 0.7, coefficient_sharing="all").eval()
    x = torch.randn(6, 1, 16)
    ens.start_recording()
    ens(x).logsumexp(-1).sum().backward()
    ens.stop_recording()
    with torch.no_grad():
        before = ens(x)
    n_layers = len(ens.plan.layers)
    assert ens.plan.n_coefficient_sets == n_layers // 3
    with pytest.raises(InvalidParameterError, match="beta"):
        ens.unshare_coefficients(1.5)
    ens.unshare_coefficients(1.0)  # no similarity exceeds 1: every layer its own set
    assert ens.plan.n_coefficient_sets == n_layers
    with torch.no_grad():
        assert torch.equal(ens(x), before)
    assert ens.unique_parameter_count() <= ens.budget
    ens.unshare_coefficients(-1.0)  # nothing is shared any more: unchanged
    assert ens.plan.n_coefficient_sets == n_layers


def test_refinement_splits_clusters_by_gradient_similarity():
    members = [vgg1d([6, 6, 6, 6, 6], s) for s in range(2)]
    ens = SuperWeightEnsemble(members, 0.95, clusters="one", coefficient_sharing="none")
    assert ens.plan.n_clusters == 1
    paths = ["features.3", "features.6", "features.9", "features.12"]  # four shared convs
    g = torch.randn(6, 6, 3)
    grads = {}
    for m in range(2):
        grads[(m, paths[0])] = g
        grads[(m, paths[1])] = 2 * g + 0.01 * torch.randn(6, 6, 3)
        grads[(m, paths[2])] = -g
        grads[(m, paths[3])] = torch.randn(6, 6, 3) + 3 * g  # close to 0 and 1, not to 2
    with pytest.raises(InvalidParameterError, match="tau"):
        ens.refine_clusters(-2.0, grads)
    plan = ens.refine_clusters(0.5, grads)
    cluster = {r.path: plan.slots[r.slot].cluster for r in plan.layers}
    assert cluster[paths[0]] == cluster[paths[1]] == cluster[paths[3]] != cluster[paths[2]]
    assert plan.n_clusters == 2
    assert ens.unique_parameter_count() <= ens.budget
    with pytest.raises(InvalidParameterError, match="no accumulated gradient"):
        ens.refine_clusters(0.5, {})
    with pytest.raises(ShapeError, match=r"features\.3"):
        ens.refine_clusters(0.5, {**grads, (0, paths[0]): torch.ones(2, 2, 3)})


def test_interpolation_endpoints_and_midpoint():
    ens = SuperWeightEnsemble([resnet1d(4, 1, 0), resnet1d(4, 1, 1)], 0.9)
    a, b = ens.export_member(0).state_dict(), ens.export_member(1).state_dict()
    for t, ref in ((0.0, a), (1.0, b)):
        got = interpolate(ens, 0, 1, t)
        assert all(torch.allclose(got[k].float(), ref[k].float()) for k in ref)
    mid = interpolate(ens, 0, 1, 0.5)
    layer = "layers.0.conv1"
    w0 = ens.members[0].get_submodule(layer).composed_weight().detach()
    w1 = ens.members[1].get_submodule(layer).composed_weight().detach()
    assert torch.allclose(mid[f"{layer}.weight"], 0.5 * (w0 + w1), atol=1e-7)
    mixed = SuperWeightEnsemble([resnet1d(4, 1, 0), resnet1d(6, 1, 1)], 0.9)
    with pytest.raises(ArchitectureMismatchError):
        interpolate(mixed, 0, 1, 0.5)


def test_2d_vgg_and_initial_clusters():
    members = [build_model("vgg", {"stages": [[4], [8, 8], [8]]}, (1, 8, 8), 3) for _ in range(2)]
    ens = SuperWeightEnsemble(members, 0.8, seed=1)
    assert ens(torch.randn(2, 1, 8, 8)).shape == (2, 2, 3)
    # 3 shared convs (3x3) of one depth: bins 0, 1, 2 of 4 -> 3 clusters
    assert ens.plan.n_clusters == 3
    rows = ens.cluster_membership()
    assert len(rows) == 6 and {r["member"] for r in rows} == {0, 1}
    one = SuperWeightEnsemble(members, 0.8, clusters="layer")
    assert one.plan.n_clusters == 3
