"""Exact properties of the input transforms."""

import pytest
import torch

from weightspace.data import (
    TRANSFORMS,
    apply_transform,
    feature_permutation,
    invert,
    noise,
    permute,
    rotate,
    shift,
)
from weightspace.data.transforms import _rotate_resample, value_range
from weightspace.errors import InvalidParameterError, ShapeError, UnknownDatasetError


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(5, 2, 6, 6, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def signals() -> torch.Tensor:
    return torch.randn(7, 1, 40, generator=torch.Generator().manual_seed(1))


def test_rotate_quarter_turns_are_exact(images):
    turns = [images]
    for _ in range(4):
        turns.append(rotate(turns[-1], 90.0, seed=0))
    assert torch.equal(turns[4], images)
    assert not any(torch.equal(turn, images) for turn in turns[1:4])
    assert torch.equal(rotate(images, 360, 0), images)
    assert torch.equal(rotate(images, -90, 0), rotate(images, 270, 0))
    assert torch.equal(rotate(images, 180, 0), images.flip(-1).flip(-2))


def test_rotate_is_counter_clockwise():
    x = torch.tensor([[0.0, 1.0], [0.0, 0.0]])[None, None]  # top-right pixel lit
    assert rotate(x, 90, 0)[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]  # now top-left


def test_rotate_resampling_agrees_with_rot90():
    square = torch.rand(3, 1, 5, 5)
    assert torch.allclose(_rotate_resample(square, 90.0), rotate(square, 90, 0), atol=1e-5)
    wide = torch.rand(3, 1, 4, 6)  # the aspect-ratio correction matters here
    assert torch.allclose(_rotate_resample(wide, 180.0), rotate(wide, 180, 0), atol=1e-5)


def test_rotate_other_angles(images):
    odd = torch.rand(2, 1, 7, 7)
    out = rotate(odd, 30.0, 0)
    assert out.shape == odd.shape
    assert torch.allclose(out[:, :, 3, 3], odd[:, :, 3, 3], atol=1e-6)  # centre stays put
    assert not torch.allclose(out, odd)
    corner = rotate(torch.ones(1, 1, 8, 8), 45.0, 0)[0, 0, 0, 0]
    assert corner == 0.0  # zero padding


def test_rotate_rejects_1d_and_suggests_shift(signals):
    with pytest.raises(InvalidParameterError, match="shift"):
        rotate(signals, 90, 0)


def test_shift_round_trip_and_hand_case(signals):
    assert torch.equal(shift(shift(signals, 5, 0), -5, 0), signals)
    assert torch.equal(shift(signals, 40, 0), signals)
    x = torch.arange(5.0)[None, None]
    assert shift(x, 1.0, 0)[0, 0].tolist() == [4.0, 0.0, 1.0, 2.0, 3.0]
    with pytest.raises(InvalidParameterError, match="integer"):
        shift(x, 1.5, 0)


def test_permute_is_a_fixed_bijection(images):
    n = 2 * 6 * 6
    ids = torch.arange(n, dtype=torch.float32).reshape(1, 2, 6, 6)
    perm = permute(ids, 0.0, seed=4).flatten().long()
    assert torch.equal(torch.sort(perm).values, torch.arange(n))  # a bijection
    assert torch.equal(perm, feature_permutation(n, 4))
    assert not torch.equal(perm, feature_permutation(n, 5))
    out = permute(images, 0.0, seed=4)
    assert torch.equal(out.flatten(1), images.flatten(1)[:, perm])  # same for every sample
    inverse = torch.argsort(perm)
    assert torch.equal(out.flatten(1)[:, inverse].reshape(images.shape), images)
    with pytest.raises(InvalidParameterError, match="no parameter"):
        permute(images, 1.0, 0)


def test_noise_reproducible_and_seed_dependent(signals):
    a, b, c = noise(signals, 0.1, 3), noise(signals, 0.1, 3), noise(signals, 0.1, 4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    big = torch.zeros(200, 1, 500)
    assert abs(float(noise(big, 0.5, 0).std()) - 0.5) < 0.01
    assert torch.equal(noise(signals, 0.0, 0), signals)
    with pytest.raises(InvalidParameterError, match=">= 0"):
        noise(signals, -1.0, 0)


def test_invert_unit_range_and_involution(images, signals):
    assert torch.allclose(invert(images), 1 - images)
    assert torch.allclose(invert(invert(images)), images)
    low, high = value_range(signals)
    assert low.shape == high.shape == (1, 40)
    out = invert(signals)
    assert torch.allclose(out.amin(0), low) and torch.allclose(out.amax(0), high)
    assert torch.allclose(invert(out), signals, atol=1e-6)
    bounds = value_range(signals[:3])
    assert torch.allclose(invert(signals, bounds=bounds), bounds[0] + bounds[1] - signals)


def test_transforms_do_not_modify_input(images):
    before = images.clone()
    for name in ("rotate", "permute", "noise", "invert"):
        param = {"rotate": 33.0, "noise": 0.2}.get(name, 0.0)
        apply_transform(name, images, param, 1)
    shift(images, 2, 0)
    assert torch.equal(images, before)


def test_registry_and_unknown_name(images):
    assert set(TRANSFORMS) == {"rotate", "shift", "permute", "noise", "invert"}
    assert torch.equal(apply_transform("shift", images, 2, 0), shift(images, 2, 0))
    with pytest.raises(UnknownDatasetError, match="invert, noise, permute, rotate, shift"):
        apply_transform("blur", images, 1.0, 0)


def test_bad_batch_shape():
    with pytest.raises(ShapeError, match="N, \\*input_shape"):
        shift(torch.zeros(5), 1, 0)
