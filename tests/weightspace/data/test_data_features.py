"""Frozen feature extractors and per-class feature sets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightspace.data.features import FrozenFeatureExtractor, class_feature_sets, penultimate
from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.nets import ARCHITECTURES, build_model


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 40)])
def test_penultimate_composed_with_the_classifier_is_the_model(name, shape):
    torch.manual_seed(0)
    model = build_model(name, {}, shape, 7).eval()
    body = penultimate(model)
    head = list(model.modules())[-1]
    assert isinstance(head, nn.Linear)
    x = torch.rand(5, *shape)
    with torch.no_grad():
        torch.testing.assert_close(head(torch.flatten(body(x), 1)), model(x))


def test_extractor_is_frozen_and_shares_weights():
    model = build_model("vgg", {"norm": "batch"}, (1, 8, 8), 4)
    ext = FrozenFeatureExtractor(model)
    ext.train()
    assert not ext.training and not any(p.requires_grad for p in ext.parameters())
    x = torch.rand(300, 1, 8, 8)
    feats = ext.extract(x, batch_size=128)
    assert feats.shape == (300, ext.feature_dim((1, 8, 8)))
    torch.testing.assert_close(feats, ext(x))
    with torch.no_grad():
        model.classifier[-1].weight.mul_(0)  # the extractor does not use the classifier
    torch.testing.assert_close(ext(x), feats)


def test_penultimate_rejects_unknown_modules():
    with pytest.raises(InvalidParameterError, match="classifier"):
        penultimate(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))


def test_class_feature_sets_order_shots_and_determinism():
    labels = torch.arange(30) % 3
    features = torch.stack([labels.float(), torch.arange(30).float()], 1)
    sets = class_feature_sets(features, labels, classes=[2, 0], shots=4, seed=1)
    assert sets.shape == (2, 4, 2)
    assert torch.equal(sets[0, :, 0], torch.full((4,), 2.0))  # slot 0 holds class 2
    assert torch.equal(sets[1, :, 0], torch.zeros(4))
    assert len(set(sets[0, :, 1].tolist())) == 4  # without replacement
    assert torch.equal(sets, class_feature_sets(features, labels, [2, 0], 4, seed=1))
    assert not torch.equal(sets, class_feature_sets(features, labels, [2, 0], 4, seed=2))


def test_class_feature_sets_errors():
    labels = torch.tensor([0, 0, 1])
    with pytest.raises(InvalidParameterError, match="class 1 has 1 samples"):
        class_feature_sets(torch.zeros(3, 2), labels, [0, 1], shots=2, seed=0)
    with pytest.raises(ShapeError):
        class_feature_sets(torch.zeros(3), labels, [0], shots=1, seed=0)
    with pytest.raises(InvalidParameterError, match="shots"):
        class_feature_sets(torch.zeros(3, 2), labels, [0], shots=0, seed=0)
