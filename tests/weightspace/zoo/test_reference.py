"""The per-model reference trainer's stop callback (the time-to-accuracy kernel)."""

from __future__ import annotations

import itertools

import pytest
import torch

from weightspace.data.base import Split
from weightspace.errors import InvalidParameterError
from weightspace.nets.registry import build_model
from weightspace.zoo.reference import train_one

pytestmark = pytest.mark.usefixtures("one_thread")


def _split(n: int = 80) -> Split:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 4, 4, generator=g)
    return Split(x, (x.flatten(1)[:, 0] > 0).long())


def _train(epochs: int, **kwargs) -> torch.nn.Module:
    model = build_model("mlp", {"hidden": [6]}, (1, 4, 4), 2)
    return train_one(model, _split(), 3, 0.05, 0.0, epochs, 16, optimizer="sgd", **kwargs)


def test_callback_sees_every_epoch_and_growing_training_time():
    calls = []
    _train(4, on_epoch_end=lambda e, m, s: calls.append((e, s, m.training)) or False)
    assert [c[0] for c in calls] == [1, 2, 3, 4]
    seconds = [c[1] for c in calls]
    assert seconds[0] > 0 and all(b > a for a, b in itertools.pairwise(seconds))
    assert all(training for *_, training in calls)


def test_stopping_after_k_epochs_equals_training_k_epochs():
    stopped = _train(5, on_epoch_end=lambda e, m, s: e == 2)
    two = _train(2)
    five = _train(5)
    for k, v in two.state_dict().items():
        assert torch.equal(stopped.state_dict()[k], v)
    assert not torch.equal(five.state_dict()["1.weight"], two.state_dict()["1.weight"])


def test_unknown_optimizer_comes_from_the_one_factory():
    model = build_model("mlp", {"hidden": [6]}, (1, 4, 4), 2)
    with pytest.raises(InvalidParameterError, match="unknown optimizer 'lbfgs'"):
        train_one(model, _split(), 0, 0.1, 0.0, 1, 16, optimizer="lbfgs")
