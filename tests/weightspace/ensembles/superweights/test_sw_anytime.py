"""Anytime inference: 2^N - 1 subsets, FLOPs from shapes, scores through weightspace.metrics."""

from __future__ import annotations

import pytest
import torch
from sw_members import resnet1d, vgg1d

from weightspace.ensembles.superweights import (
    SuperWeightEnsemble,
    anytime_probs,
    anytime_scores,
    member_flops,
    member_subsets,
)
from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.metrics import accuracy, ensemble_probs
from weightspace.nets.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_all_non_empty_subsets(n):
    subsets = member_subsets(n)
    assert len(subsets) == 2**n - 1 == len(set(subsets))
    assert all(len(s) >= 1 and list(s) == sorted(s) for s in subsets)
    with pytest.raises(InvalidParameterError):
        member_subsets(0)


def test_flops_of_linear_and_conv_layers_from_shapes():
    mlp = build_model("mlp", {"hidden": [8]}, (1, 4, 4), 3)
    assert member_flops(mlp, (1, 4, 4)) == 2 * (16 * 8 + 8 * 3)
    vgg = vgg1d([4, 6], length=8)  # conv(1->4) at L=8, pool, conv(4->6) at L=4, pool, gap, fc
    expected = 2 * (8 * 4 * 1 * 3) + 2 * (4 * 6 * 4 * 3) + 2 * (6 * 3)
    assert member_flops(vgg, (1, 8)) == expected
    ens = SuperWeightEnsemble([vgg1d([4, 6, 6], length=8)], 1.1)
    plain = vgg1d([4, 6, 6], length=8)
    assert member_flops(ens.members[0], (1, 8)) == member_flops(plain, (1, 8))


def test_anytime_scores_cover_every_subset_sorted_by_flops():
    members = [resnet1d(4, 1, 0), resnet1d(8, 1, 1), resnet1d(4, 2, 2)]
    ens = SuperWeightEnsemble(members, 0.9).eval()
    x, labels = torch.randn(40, 1, 16), torch.randint(0, 3, (40,))
    with torch.no_grad():
        logits = ens.member_logits(x)
    flops = [member_flops(m, (1, 16)) for m in ens.members]
    assert len(set(flops)) == 3
    scores = anytime_scores(logits, labels, flops)
    assert len(scores) == 7
    assert [s.flops for s in scores] == sorted(s.flops for s in scores)
    for s in scores:
        assert s.flops == sum(flops[i] for i in s.members)
        assert 0 <= s.acc <= 1 and s.nll > 0 and 0 <= s.ece <= 1
        if len(s.members) == 1:
            (i,) = s.members
            assert s.acc == pytest.approx(float(accuracy(logits[i], labels)), abs=0)
    full = next(s for s in scores if len(s.members) == 3)
    assert full.acc == pytest.approx(float(accuracy(ensemble_probs(logits), labels)), abs=0)
    probs = anytime_probs(logits, flops)
    assert len(probs) == 7 and all(p.shape == (40, 3) for _, _, p in probs)
    assert all(torch.allclose(p.sum(-1), torch.ones(40)) for _, _, p in probs)
    with pytest.raises(ShapeError):
        anytime_scores(logits[0], labels, flops)
    with pytest.raises(ShapeError):
        anytime_scores(logits, labels, flops[:2])
