"""Embedded datasets: scikit-learn digits and MNIST-1D (offline)."""

import random
import socket
import urllib.request

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_load_digits

from weightspace.data import clear_cache, dataset_card, load_digits, load_mnist1d
from weightspace.errors import InvalidParameterError

SMALL = 300  # MNIST-1D signals used by the tests (generation is ~0.6 ms per signal)


def _rows(x: torch.Tensor) -> list[bytes]:
    return sorted(row.numpy().tobytes() for row in x.reshape(len(x), -1))


def test_digits_shapes_ranges_and_sizes():
    ds = load_digits()
    assert ds.name == "digits" and ds.n_classes == 10 and ds.input_shape == (1, 8, 8)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1078, 360, 359)
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.min() >= 0 and split.x.max() <= 1
    assert ds.train.x.max() == 1.0


def test_digits_splits_partition_the_full_set():
    ds = load_digits(seed=5)
    bunch = sk_load_digits()
    full = torch.from_numpy((bunch.images / 16.0).astype(np.float32))
    together = torch.cat([ds.train.x, ds.val.x, ds.test.x])
    assert _rows(together) == _rows(full)  # same multiset: disjoint and complete
    labels = torch.cat([ds.train.y, ds.val.y, ds.test.y])
    assert torch.equal(torch.bincount(labels), torch.from_numpy(np.bincount(bunch.target)))


def test_digits_split_is_stratified():
    ds = load_digits()
    total = torch.bincount(torch.cat([ds.train.y, ds.val.y, ds.test.y])).double()
    for split, fraction in ((ds.val, 0.2), (ds.test, 0.2), (ds.train, 0.6)):
        counts = torch.bincount(split.y, minlength=10).double()
        assert torch.all((counts - fraction * total).abs() <= 2)


def test_digits_deterministic_and_seed_dependent():
    a, b, c = load_digits(seed=1), load_digits(seed=1), load_digits(seed=2)
    assert dataset_card(a)["sha256"] == dataset_card(b)["sha256"]
    assert dataset_card(a)["sha256"] != dataset_card(c)["sha256"]


def test_digits_custom_fractions_and_errors():
    ds = load_digits(val_fraction=0.1, test_fraction=0.3)
    assert (len(ds.val), len(ds.test)) == (180, 539)
    with pytest.raises(InvalidParameterError, match="leave training data"):
        load_digits(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(InvalidParameterError, match="val_fraction"):
        load_digits(val_fraction=0)


def test_returned_tensors_can_be_mutated_without_touching_the_cache():
    first = load_digits()
    first.train.x.fill_(7.0)
    assert load_digits().train.x.max() == 1.0


def _no_network(*args, **kwargs):
    raise AssertionError("MNIST-1D tried to use the network")


def test_mnist1d_built_offline_without_files(monkeypatch, tmp_path):
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    monkeypatch.chdir(tmp_path)
    clear_cache()
    ds = load_mnist1d(n_samples=SMALL, generation_seed=7)
    assert list(tmp_path.iterdir()) == []  # mnist1d's get_dataset would write a pickle
    assert ds.name == "mnist1d" and ds.input_shape == (1, 40) and ds.n_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (192, 48, 60)
    assert ds.train.x.dtype == torch.float32
    together = torch.cat([ds.train.x, ds.val.x, ds.test.x])
    assert abs(float(together.mean())) < 1e-4 and abs(float(together.std()) - 1) < 1e-2


def test_mnist1d_uses_package_split_and_is_deterministic():
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = SMALL, 7
    raw = make_dataset(args)
    ds = load_mnist1d(n_samples=SMALL, generation_seed=7)
    assert torch.equal(ds.test.x[:, 0], torch.from_numpy(raw["x_test"].astype(np.float32)))
    assert torch.equal(ds.test.y, torch.from_numpy(raw["y_test"]))
    train_val = torch.cat([ds.train.x, ds.val.x])[:, 0]
    assert _rows(train_val) == _rows(torch.from_numpy(raw["x"].astype(np.float32)))
    again = load_mnist1d(n_samples=SMALL, generation_seed=7)
    assert dataset_card(again) == dataset_card(ds)
    other_val = load_mnist1d(seed=1, n_samples=SMALL, generation_seed=7)
    assert not torch.equal(other_val.val.x, ds.val.x)
    assert torch.equal(other_val.test.x, ds.test.x)


def test_mnist1d_leaves_global_random_state_alone():
    clear_cache()
    np.random.seed(123)
    random.seed(123)
    expected = (np.random.rand(), random.random())
    np.random.seed(123)
    random.seed(123)
    load_mnist1d(n_samples=20, generation_seed=3)
    assert (np.random.rand(), random.random()) == expected


@pytest.mark.parametrize("n_samples", [15, 105, 0])
def test_mnist1d_rejects_bad_sample_counts(n_samples):
    with pytest.raises(InvalidParameterError, match="multiple of 10"):
        load_mnist1d(n_samples=n_samples)
