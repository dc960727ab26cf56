"""Validation of Split and SplitDataset."""

import pytest
import torch

from weightspace.data import Split, SplitDataset
from weightspace.errors import InvalidParameterError, ShapeError


def _split(n: int, n_classes: int = 3, shape: tuple[int, ...] = (1, 4)) -> Split:
    return Split(torch.rand(n, *shape), torch.arange(n) % n_classes)


def _dataset(**overrides) -> SplitDataset:
    kwargs = dict(
        name="toy",
        train=_split(9),
        val=_split(3),
        test=_split(6),
        n_classes=3,
        input_shape=(1, 4),
        class_names=("a", "b", "c"),
    )
    kwargs.update(overrides)
    return SplitDataset(**kwargs)


def test_valid_dataset_and_len():
    ds = _dataset(input_shape=[1, 4], class_names=["a", "b", "c"])
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 3, 6)
    assert ds.input_shape == (1, 4) and ds.class_names == ("a", "b", "c")
    assert ds.split("val") is ds.val


def test_clone_shares_no_memory():
    ds = _dataset()
    copy = ds.clone()
    copy.train.x.zero_()
    copy.train.y.zero_()
    assert ds.train.x.abs().sum() > 0
    assert ds.train.y.sum() > 0


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.rand(4, 2).double(), torch.zeros(4, dtype=torch.long), "float32"),
        (torch.rand(4, 2), torch.zeros(4, dtype=torch.int32), "int64"),
        (torch.rand(4), torch.zeros(4, dtype=torch.long), "at least 2"),
        (torch.rand(4, 2), torch.zeros(4, 1, dtype=torch.long), r"\(N,\)"),
        (torch.rand(4, 2), torch.zeros(3, dtype=torch.long), "4 samples"),
        (torch.full((4, 2), float("nan")), torch.zeros(4, dtype=torch.long), "NaN"),
    ],
)
def test_split_rejects_bad_tensors(x, y, match):
    with pytest.raises(ShapeError, match=match):
        Split(x, y)


def test_split_rejects_non_tensors():
    with pytest.raises(ShapeError, match="torch tensors"):
        Split([[0.0]], torch.zeros(1, dtype=torch.long))


def test_dataset_rejects_wrong_input_shape():
    with pytest.raises(ShapeError, match=r"val.x has input shape \(1, 5\)"):
        _dataset(val=_split(3, shape=(1, 5)))


def test_dataset_rejects_label_out_of_range():
    bad = Split(torch.rand(2, 1, 4), torch.tensor([0, 3]))
    with pytest.raises(ShapeError, match=r"test.y has labels in \[0, 3\]"):
        _dataset(test=bad)
    negative = Split(torch.rand(2, 1, 4), torch.tensor([-1, 0]))
    with pytest.raises(ShapeError, match="labels"):
        _dataset(train=negative)


def test_dataset_rejects_class_name_count():
    with pytest.raises(ShapeError, match="3 class names"):
        _dataset(n_classes=4)


def test_unknown_split_name():
    with pytest.raises(InvalidParameterError, match="train, val, test"):
        _dataset().split("validation")
