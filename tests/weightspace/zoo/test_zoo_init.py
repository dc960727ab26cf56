"""Batch-independent initialisation: bounds, BatchNorm values, determinism, distribution."""

import math

import pytest
import torch
from torch import nn

from weightspace.errors import InvalidParameterError
from weightspace.nets import build_model, float_buffers
from weightspace.zoo.init import init_stack
from weightspace.zoo.rng import STREAM_INIT, uniform

CNN = ("resnet", {"stem_channels": 4, "stages": [[4, 1], [6, 1]]})


def _layers(template: nn.Module):
    """(state name, module, attribute) of every parameter and float buffer."""
    out = []
    for mod_name, mod in template.named_modules():
        for attr, _ in list(mod.named_parameters(recurse=False)) + list(
            mod.named_buffers(recurse=False)
        ):
            out.append((f"{mod_name}.{attr}" if mod_name else attr, mod, attr))
    return out


@pytest.mark.parametrize(
    ("name", "config"),
    [("mlp", {"hidden": [16, 8]}), ("vgg", {"stages": [[4], [6]], "norm": "batch"}), CNN],
)
def test_bounds_and_batchnorm_values(name, config):
    template = build_model(name, config, (1, 8, 8), 10)
    scale = torch.tensor([1.0, 0.5, 3.0])
    state = init_stack(template, torch.tensor([0, 1, 2]), scale)
    names = [n for n, _ in template.named_parameters()] + list(float_buffers(template))
    assert list(state) == names
    checked = 0
    for full, mod, attr in _layers(template):
        if full not in state:
            continue
        t = state[full]
        assert t.shape == (3, *getattr(mod, attr).shape)
        assert t.dtype == torch.float32
        if isinstance(mod, nn.Linear | nn.Conv1d | nn.Conv2d):
            bound = 1 / math.sqrt(math.prod(mod.weight.shape[1:]))
            for b in range(3):
                limit = bound * (float(scale[b]) if attr == "weight" else 1.0)
                assert float(t[b].abs().max()) <= limit * (1 + 1e-6)
                if t[b].numel() >= 64:  # a large sample comes close to the bound
                    assert float(t[b].abs().max()) > 0.8 * limit
            checked += 1
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            fill = 1.0 if attr in ("weight", "running_var") else 0.0
            assert torch.equal(t, torch.full_like(t, fill))
            checked += 1
    assert checked == len(state)


def test_exact_values_from_the_counter_based_generator():
    template = nn.Sequential(nn.Linear(3, 2))
    state = init_stack(template, torch.tensor([11]), 2.0)
    bound = 1 / math.sqrt(3)
    u_w = uniform(11, STREAM_INIT, 0, torch.arange(6)).double()
    u_b = uniform(11, STREAM_INIT, 1, torch.arange(2)).double()
    expected_w = ((2 * u_w - 1) * bound * 2.0).reshape(2, 3)
    expected_b = (2 * u_b - 1) * bound
    torch.testing.assert_close(state["0.weight"][0].double(), expected_w, atol=1e-7, rtol=0)
    torch.testing.assert_close(state["0.bias"][0].double(), expected_b, atol=1e-7, rtol=0)


def test_same_seed_same_tensors_alone_or_in_a_batch():
    template = build_model(*CNN, (1, 8, 8), 10)
    alone = init_stack(template, torch.tensor([5]), 1.5)
    batch = init_stack(template, torch.tensor([9, 5, 0, 123]), torch.tensor([1.0, 1.5, 2.0, 1.0]))
    for name in alone:
        assert torch.equal(alone[name][0], batch[name][1]), name


def test_different_seeds_differ_and_scale_is_exact():
    template = build_model("mlp", {"hidden": [8]}, (1, 8, 8), 10)
    state = init_stack(template, torch.tensor([0, 1, 0]), torch.tensor([1.0, 1.0, 2.0]))
    for name in ("1.weight", "1.bias", "3.weight", "3.bias"):
        assert not torch.equal(state[name][0], state[name][1])
    # init_scale multiplies weights (exactly, by a power of two) but not biases.
    assert torch.equal(state["1.weight"][2], 2 * state["1.weight"][0])
    assert torch.equal(state["1.bias"][2], state["1.bias"][0])
    # Different parameter tensors of one model use different streams.
    assert not torch.equal(state["1.bias"][0], state["3.bias"][0, :8])


def test_empirical_std_matches_uniform_bound():
    template = nn.Linear(256, 512)
    w = init_stack(template, torch.tensor([3]))["weight"][0]
    bound = 1 / math.sqrt(256)
    assert abs(float(w.std()) / (bound / math.sqrt(3)) - 1) < 0.02
    assert abs(float(w.mean())) < 0.02 * bound
    # Same distribution as PyTorch's own default initialisation.
    torch.manual_seed(0)
    ref = nn.Linear(256, 512).weight.detach()
    assert abs(float(w.std()) / float(ref.std()) - 1) < 0.03


def test_device_argument_and_default():
    template = build_model("mlp", {"hidden": [4]}, (1, 8, 8), 3)
    a = init_stack(template, torch.tensor([1, 2]), device="cpu")
    b = init_stack(template, torch.tensor([1, 2]))
    for name in a:
        assert a[name].device.type == "cpu"
        assert torch.equal(a[name], b[name])


def test_unsupported_layer_raises():
    template = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2))
    with pytest.raises(InvalidParameterError, match="Embedding"):
        init_stack(template, torch.tensor([0]))
