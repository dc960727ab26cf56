"""Datasets, splits and tasks for weight-space learning.

Load a dataset by name, derive tasks from it, summarize it::

    from weightspace.data import TaskSpec, dataset_card, load_dataset, make_task

    base = load_dataset("digits", seed=0)                 # (N, 1, 8, 8) in [0, 1]
    task = make_task(base, TaskSpec("digits", classes=(0, 3, 5, 7, 9)))
    card = dataset_card(task)                             # name, sizes, sha256, ...

Nothing here downloads data or chooses a file path: datasets read from disk take the
folder as ``root``.
"""

from weightspace.data.base import SPLITS, Split, SplitDataset
from weightspace.data.cards import content_hash, dataset_card
from weightspace.data.embedded import clear_cache, load_digits, load_mnist1d
from weightspace.data.registry import DATASETS, DatasetEntry, load_dataset, register_dataset
from weightspace.data.splitting import stratified_split
from weightspace.data.tasks import TaskSpec, make_task, sample_class_subsets
from weightspace.data.torchvision_sets import (
    TORCHVISION_DATASETS,
    expected_files,
    load_torchvision_dataset,
)
from weightspace.data.transforms import (
    TRANSFORMS,
    apply_transform,
    feature_permutation,
    invert,
    noise,
    permute,
    rotate,
    shift,
)

__all__ = [
    "DATASETS",
    "SPLITS",
    "TORCHVISION_DATASETS",
    "TRANSFORMS",
    "DatasetEntry",
    "Split",
    "SplitDataset",
    "TaskSpec",
    "apply_transform",
    "clear_cache",
    "content_hash",
    "dataset_card",
    "expected_files",
    "feature_permutation",
    "invert",
    "load_dataset",
    "load_digits",
    "load_mnist1d",
    "load_torchvision_dataset",
    "make_task",
    "noise",
    "permute",
    "register_dataset",
    "rotate",
    "sample_class_subsets",
    "shift",
    "stratified_split",
]
