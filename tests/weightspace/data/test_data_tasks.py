"""Tasks: relabelling, transforms per split, names, class-subset sampling."""

import dataclasses
import math

import pytest
import torch

from weightspace.data import (
    Split,
    SplitDataset,
    TaskSpec,
    feature_permutation,
    make_task,
    sample_class_subsets,
)
from weightspace.errors import InvalidParameterError, UnknownDatasetError


def _toy(n_per_class: int = 2, n_classes: int = 4) -> SplitDataset:
    """Sample i of every split has x filled with its index and label i % n_classes."""

    def split(offset: int) -> Split:
        n = n_per_class * n_classes
        x = (torch.arange(n, dtype=torch.float32) + offset)[:, None, None].expand(n, 1, 3)
        return Split(x.contiguous() / 100, torch.arange(n) % n_classes)

    return SplitDataset(
        name="toy",
        train=split(0),
        val=split(10),
        test=split(20),
        n_classes=n_classes,
        input_shape=(1, 3),
        class_names=tuple("abcdefgh"[:n_classes]),
    )


def test_relabel_hand_case():
    task = make_task(_toy(), TaskSpec("toy", classes=(3, 1)))
    assert task.name == "toy[3,1]"
    assert task.n_classes == 2 and task.class_names == ("d", "b")
    # train labels were [0,1,2,3,0,1,2,3]; keep indices 1,3,5,7 (classes 1,3,1,3)
    assert task.train.y.tolist() == [1, 0, 1, 0]
    assert (task.train.x[:, 0, 0] * 100).round().tolist() == [1, 3, 5, 7]
    assert task.val.y.tolist() == [1, 0, 1, 0]
    assert (task.test.x[:, 0, 0] * 100).round().tolist() == [21, 23, 25, 27]


def test_all_classes_keeps_labels():
    base = _toy()
    task = make_task(base, TaskSpec("toy"))
    assert task.name == "toy" and task.n_classes == 4
    assert torch.equal(task.train.x, base.train.x) and torch.equal(task.train.y, base.train.y)


def test_names_are_canonical():
    assert TaskSpec("digits").name == "digits"
    assert TaskSpec("digits", classes=[0, 3, 5, 7, 9]).name == "digits[0,3,5,7,9]"
    assert TaskSpec("mnist1d", transform="noise", transform_param=0.1).name == (
        "mnist1d|noise(0.1)#0"
    )
    spec = TaskSpec("digits", (1, 2), "rotate", 90, 2)
    assert spec.name == "digits[1,2]|rotate(90)#2"


def test_dict_round_trip():
    spec = TaskSpec("digits", (4, 2, 7), "permute", 0.0, 11)
    data = spec.to_dict()
    assert data == {
        "dataset": "digits",
        "classes": [4, 2, 7],
        "transform": "permute",
        "transform_param": 0.0,
        "transform_seed": 11,
    }
    assert TaskSpec.from_dict(data) == spec
    assert TaskSpec.from_dict({"dataset": "digits"}) == TaskSpec("digits")
    with pytest.raises(InvalidParameterError, match="Unknown TaskSpec keys"):
        TaskSpec.from_dict({"dataset": "digits", "clases": [1, 2]})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"classes": (1, 1, 2)}, InvalidParameterError, "duplicate"),
        ({"classes": (3,)}, InvalidParameterError, "at least 2"),
        ({"classes": (-1, 2)}, InvalidParameterError, "non-negative"),
        ({"classes": (1.5, 2)}, InvalidParameterError, "non-negative integers"),
        ({"transform": "blur"}, UnknownDatasetError, "rotate"),
        ({"transform_param": 0.5}, InvalidParameterError, "transform is None"),
    ],
)
def test_spec_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        TaskSpec("toy", **kwargs)


def test_make_task_errors():
    with pytest.raises(InvalidParameterError, match="out of range"):
        make_task(_toy(), TaskSpec("toy", classes=(1, 4)))
    with pytest.raises(InvalidParameterError, match="defined on dataset 'digits'"):
        make_task(_toy(), TaskSpec("digits", classes=(1, 2)))


def test_permutation_shared_across_splits():
    base = _toy()
    base = dataclasses.replace(base, train=Split(torch.rand(8, 1, 3), base.train.y))
    task = make_task(base, TaskSpec("toy", (0, 1), "permute", 0, 5))
    perm = feature_permutation(3, 5)
    for name in ("train", "val", "test"):
        kept = make_task(base, TaskSpec("toy", (0, 1))).split(name).x
        assert torch.equal(task.split(name).x.flatten(1), kept.flatten(1)[:, perm])


def test_noise_independent_per_split_but_deterministic():
    base = _toy(n_per_class=5)
    spec = TaskSpec("toy", transform="noise", transform_param=1.0, transform_seed=3)
    a, b = make_task(base, spec), make_task(base, spec)
    residual = {n: a.split(n).x - base.split(n).x for n in ("train", "val", "test")}
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.x, b.test.x)
    assert not torch.allclose(residual["train"], residual["val"])
    assert not torch.allclose(residual["val"], residual["test"])
    other = make_task(base, TaskSpec("toy", transform="noise", transform_param=1.0))
    assert not torch.allclose(other.train.x, a.train.x)
    assert a.name == "toy|noise(1)#3"


def test_invert_uses_training_range_for_every_split():
    base = _toy()
    train_x = base.train.x * 3 - 1  # outside [0, 1]: per-feature reflection
    base = dataclasses.replace(base, train=Split(train_x, base.train.y))
    task = make_task(base, TaskSpec("toy", transform="invert"))
    low, high = train_x.amin(0), train_x.amax(0)
    assert torch.allclose(task.val.x, low + high - base.val.x)
    assert torch.allclose(task.train.x, low + high - train_x)


def test_rotation_task_on_images():
    x = torch.rand(4, 1, 3, 5)
    split = Split(x, torch.tensor([0, 1, 0, 1]))
    base = SplitDataset("img", split, split, split, 2, (1, 3, 5), ("a", "b"))
    task = make_task(base, TaskSpec("img", transform="rotate", transform_param=90))
    assert task.input_shape == (1, 5, 3)
    assert torch.equal(task.test.x, torch.rot90(x, 1, dims=(-2, -1)))


def test_subsets_deterministic_distinct_sorted():
    subsets = sample_class_subsets(10, 3, 50, seed=0)
    assert subsets == sample_class_subsets(10, 3, 50, seed=0)
    assert subsets != sample_class_subsets(10, 3, 50, seed=1)
    assert len(set(subsets)) == 50
    assert all(len(s) == 3 and list(s) == sorted(s) for s in subsets)
    every = sample_class_subsets(5, 2, 10, seed=0)
    assert sorted(every) == [(i, j) for i in range(5) for j in range(i + 1, 5)]


def test_subsets_exclude_novel_classes():
    subsets = sample_class_subsets(10, 4, 30, seed=2, exclude=(0, 7))
    assert all(0 not in s and 7 not in s for s in subsets)
    with pytest.raises(InvalidParameterError, match="only 1 exist"):
        sample_class_subsets(5, 4, 2, seed=0, exclude=[4])


def test_subsets_large_space_uses_rejection_sampling():
    assert math.comb(40, 10) > 200_000
    subsets = sample_class_subsets(40, 10, 100, seed=0)
    assert len(set(subsets)) == 100 and subsets == sample_class_subsets(40, 10, 100, seed=0)
    assert all(len(set(s)) == 10 for s in subsets)


@pytest.mark.parametrize(
    ("args", "match"),
    [((10, 1, 1, 0), "between 2"), ((10, 11, 1, 0), "between 2"), ((4, 2, 7, 0), "only 6")],
)
def test_subset_errors(args, match):
    with pytest.raises(InvalidParameterError, match=match):
        sample_class_subsets(*args)
