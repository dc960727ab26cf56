"""Dataset cards and the dataset registry."""

import dataclasses
import hashlib
import json

import pytest
import torch

import weightspace.data.registry as registry
from weightspace.data import (
    DATASETS,
    Split,
    SplitDataset,
    content_hash,
    dataset_card,
    load_dataset,
    load_digits,
    register_dataset,
)
from weightspace.errors import InvalidParameterError, UnknownDatasetError

PINNED_SHA256 = "5a49e41594dccfebd8ebcfaeef8a6ffc0750abb297602b34f7d624e755f4ea1b"


def _pinned() -> SplitDataset:
    x = torch.arange(24, dtype=torch.float32).reshape(6, 1, 4) / 24
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    train, val, test = Split(x[:3], y[:3]), Split(x[3:4], y[3:4]), Split(x[4:], y[4:])
    return SplitDataset("pin", train, val, test, 2, (1, 4), ("a", "b"))


def test_card_fields_and_json():
    card = dataset_card(_pinned())
    assert card == {
        "name": "pin",
        "n_train": 3,
        "n_val": 1,
        "n_test": 2,
        "n_classes": 2,
        "input_shape": [1, 4],
        "class_names": ["a", "b"],
        "sha256": PINNED_SHA256,
    }
    assert json.loads(json.dumps(card)) == card


def test_hash_is_pinned_and_matches_its_definition():
    ds = _pinned()
    digest = hashlib.sha256()
    for name in ("train", "val", "test"):
        split = ds.split(name)
        for part, tensor, dtype in (("x", split.x, "<f4"), ("y", split.y, "<i8")):
            digest.update(f"{name}.{part}:{dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.numpy().tobytes())
    assert content_hash(ds) == digest.hexdigest() == PINNED_SHA256


def test_hash_sees_values_labels_and_split_membership():
    ds = _pinned()
    changed_x = dataclasses.replace(ds, test=Split(ds.test.x + 1e-6, ds.test.y))
    changed_y = dataclasses.replace(ds, train=Split(ds.train.x, torch.tensor([1, 1, 0])))
    x = torch.cat([ds.train.x, ds.val.x])
    y = torch.cat([ds.train.y, ds.val.y])
    moved = dataclasses.replace(ds, train=Split(x[:2], y[:2]), val=Split(x[2:], y[2:]))
    hashes = {content_hash(d) for d in (ds, changed_x, changed_y, moved)}
    assert len(hashes) == 4
    renamed = dataclasses.replace(ds, name="other")
    assert content_hash(renamed) == content_hash(ds)  # content, not metadata


def test_registry_names_and_dispatch():
    assert set(DATASETS) >= {"digits", "mnist1d", "mnist", "fashion_mnist", "cifar10", "cifar100"}
    a = load_dataset("digits", seed=3, val_fraction=0.1)
    assert dataset_card(a) == dataset_card(load_digits(seed=3, val_fraction=0.1))


def test_unknown_dataset_lists_names_and_how_to_add():
    with pytest.raises(UnknownDatasetError) as info:
        load_dataset("imagenet")
    message = str(info.value)
    for name in ("digits", "mnist1d", "mnist", "fashion_mnist", "cifar10", "cifar100"):
        assert name in message
    assert "register_dataset" in message


def test_root_required_for_disk_datasets():
    with pytest.raises(InvalidParameterError, match="root="):
        load_dataset("cifar10")


def test_bad_keyword_is_reported():
    with pytest.raises(InvalidParameterError, match="n_samples"):
        load_dataset("mnist1d", n_sample=100)


def test_register_dataset(monkeypatch):
    monkeypatch.setattr(registry, "DATASETS", dict(registry.DATASETS))

    def load_pin(seed: int = 0) -> SplitDataset:
        return _pinned()

    register_dataset("pin", load_pin, description="pinned toy")
    assert registry.load_dataset("pin").name == "pin"
    with pytest.raises(InvalidParameterError, match="already registered"):
        register_dataset("pin", load_pin)
    assert "pin" not in DATASETS  # the patched copy was registered into, not the original
