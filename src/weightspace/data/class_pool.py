"""A pool of classes from several domains, in one shared feature space.

D2NWG's few-shot setting (its Table 1, mini-ImageNet 5-way) needs many classes, split into
classes the weight zoo sees and *novel* classes held out of it entirely. Weightspace builds
such a pool offline from the embedded datasets: class ``c`` of domain ``D`` (digits,
MNIST-1D) becomes pool class ``(D, c)``; every sample is mapped into a common feature space
by its domain's frozen feature extractor, so a k-way task may draw classes from either
domain and a classifier head is always ``Linear(d, k)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from weightspace.data.base import Split, SplitDataset
from weightspace.data.cards import dataset_card
from weightspace.data.features import FrozenFeatureExtractor
from weightspace.data.tasks import sample_class_subsets
from weightspace.errors import InvalidParameterError


@dataclass(frozen=True)
class ClassPool:
    """Features of every pool class and the seen / novel partition.

    Attributes
    ----------
    dataset : SplitDataset
        Named ``"pool"``; label ``i`` is pool class ``names[i]``; x is ``(N, d)``.
    seen : tuple of int
        Pool classes the zoo (and the feature extractors) are trained on.
    novel : tuple of int
        Pool classes held out of everything until evaluation.
    """

    dataset: SplitDataset
    seen: tuple[int, ...]
    novel: tuple[int, ...]


def build_class_pool(
    domains: Mapping[str, SplitDataset],
    extractors: Mapping[str, FrozenFeatureExtractor],
    novel: Mapping[str, Sequence[int]],
) -> ClassPool:
    """Map every domain's splits to features and merge their classes into one pool.

    Parameters
    ----------
    domains : mapping name -> SplitDataset
    extractors : mapping name -> FrozenFeatureExtractor
        Trained on that domain's seen classes only.
    novel : mapping name -> sequence of int
        Classes of each domain held out as novel.
    """
    names: list[str] = []
    seen: list[int] = []
    held: list[int] = []
    splits: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {
        "train": [],
        "val": [],
        "test": [],
    }
    dims = set()
    for name, ds in domains.items():
        if name not in extractors:
            raise InvalidParameterError(f"no feature extractor for domain {name!r}")
        offset = len(names)
        names += [f"{name}:{c}" for c in ds.class_names]
        bad = [c for c in novel.get(name, ()) if not 0 <= int(c) < ds.n_classes]
        if bad:
            raise InvalidParameterError(f"novel classes {bad} do not exist in {name!r}")
        for c in range(ds.n_classes):
            (held if c in set(novel.get(name, ())) else seen).append(offset + c)
        for split in splits:
            part = ds.split(split)
            feats = extractors[name].extract(part.x).cpu()
            dims.add(feats.shape[1])
            splits[split].append((feats, part.y + offset))
    if len(dims) != 1:
        raise InvalidParameterError(
            f"feature extractors disagree on the feature size {sorted(dims)}; give every "
            "domain's backbone the same penultimate width"
        )
    d = dims.pop()
    merged = {
        k: Split(torch.cat([x for x, _ in v]), torch.cat([y for _, y in v]))
        for k, v in splits.items()
    }
    dataset = SplitDataset(
        "pool", merged["train"], merged["val"], merged["test"], len(names), (d,), tuple(names)
    )
    return ClassPool(dataset, tuple(seen), tuple(held))


def few_shot_task_sets(
    pool: ClassPool, way: int, n_zoo: int, n_unseen: int, n_novel: int, seed: int
) -> dict[str, list[tuple[int, ...]]]:
    """Disjoint k-way class tuples: ``zoo`` and ``unseen`` (new combinations of seen classes)
    and ``novel`` (only novel classes).
    """
    n_classes = pool.dataset.n_classes
    combos = sample_class_subsets(n_classes, way, n_zoo + n_unseen, seed=seed, exclude=pool.novel)
    novel = sample_class_subsets(n_classes, way, n_novel, seed=seed + 1, exclude=pool.seen)
    return {"zoo": list(combos[:n_zoo]), "unseen": list(combos[n_zoo:]), "novel": list(novel)}


HEAD: dict = {"name": "mlp", "config": {"hidden": []}}
"""A classifier head over pool features is a registry MLP with no hidden layer:
``Linear(d, k)``."""


def pool_name(pool: SplitDataset) -> str:
    """Dataset name of a pool tied to its content (new features -> new heads)."""
    return f"pool-{dataset_card(pool)['sha256'][:10]}"


def pool_dataset(pool: SplitDataset) -> SplitDataset:
    """The pool's dataset (``ClassPool.dataset``) under its content-tied name."""
    return SplitDataset(
        pool_name(pool),
        pool.train,
        pool.val,
        pool.test,
        pool.n_classes,
        pool.input_shape,
        pool.class_names,
    )
