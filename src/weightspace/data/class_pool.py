"""A pool of classes from several domains, in one shared feature space.

D2NWG's few-shot setting (its Table 1, mini-ImageNet 5-way) needs many classes, split into
classes the weight zoo sees and *novel* classes held out of it entirely. Weightspace builds
such a pool offline from the embedded datasets: class ``c`` of domain ``D`` (digits,
MNIST-1D) becomes pool class ``(D, c)``; every sample is mapped into a common feature space
by its domain's frozen feature extractor, so a k-way task may draw classes from either
domain and a classifier head is always ``Linear(d, k)``.

A pool is named by its provenance (:func:`pool_provenance`), not by the bytes of its
features: the source data of every domain (its splits, so the split seed), its held-out
classes and its extractor's weights. The name enters the member ids of the heads trained
on the pool, so float rounding in the feature computation (the torch thread count, the
CPU's vector unit, the device) can never change which zoo of heads is trained from the
same backbone checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from weightspace.data.base import Split, SplitDataset
from weightspace.data.cards import content_hash
from weightspace.data.features import FrozenFeatureExtractor
from weightspace.data.tasks import sample_class_subsets
from weightspace.errors import InvalidParameterError


@dataclass(frozen=True)
class ClassPool:
    """Features of every pool class and the seen / novel partition.

    Attributes
    ----------
    dataset : SplitDataset
        Named ``pool-<10 hex digits of provenance>``; label ``i`` is pool class
        ``class_names[i]``; x is ``(N, d)``.
    seen : tuple of int
        Pool classes the zoo (and the feature extractors) are trained on.
    novel : tuple of int
        Pool classes held out of everything until evaluation.
    provenance : str
        sha256 (hex) of what the features were computed from (:func:`pool_provenance`);
        ``dataset.name`` is ``pool-<its first 10 hex digits>``.
    """

    dataset: SplitDataset
    seen: tuple[int, ...]
    novel: tuple[int, ...]
    provenance: str


POOL_VERSION = 1
"""Bump when the feature computation changes (:func:`~weightspace.data.features.penultimate`,
the pool layout): pools, and the heads trained on them, then get new names."""

_POOL_NAME = re.compile(r"^pool-[0-9a-f]{10}$")


def pool_provenance(
    domains: Mapping[str, SplitDataset],
    extractor_ids: Mapping[str, str],
    novel: Mapping[str, Sequence[int]],
) -> str:
    """sha256 (hex) of what a pool's features are computed from.

    Covers :data:`POOL_VERSION` and, per domain in order: its name, the content hash of
    its splits (:func:`~weightspace.data.cards.content_hash`: inputs, labels and their
    assignment to splits, hence the split seed), its class count, its held-out classes
    and the identity of its extractor. Never the features themselves: their last bits
    depend on the thread count and the hardware.

    Parameters
    ----------
    domains : mapping name -> SplitDataset
    extractor_ids : mapping name -> str
        What identifies each domain's extractor
        (:meth:`~weightspace.data.features.FrozenFeatureExtractor.fingerprint`).
    novel : mapping name -> sequence of int
    """
    payload = {
        "format": POOL_VERSION,
        "domains": [
            {
                "name": name,
                "data": content_hash(ds),
                "n_classes": ds.n_classes,
                "novel": sorted(int(c) for c in novel.get(name, ())),
                "extractor": str(extractor_ids[name]),
            }
            for name, ds in domains.items()
        ],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


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

    Returns
    -------
    ClassPool
        Its dataset is named ``pool-<first 10 hex digits of its provenance>``
        (:func:`pool_provenance` over the domains, their novel classes and each
        extractor's :meth:`~FrozenFeatureExtractor.fingerprint`).
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
    ids = {name: extractors[name].fingerprint() for name in domains}
    provenance = pool_provenance(domains, ids, novel)
    merged = {
        k: Split(torch.cat([x for x, _ in v]), torch.cat([y for _, y in v]))
        for k, v in splits.items()
    }
    dataset = SplitDataset(
        f"pool-{provenance[:10]}",
        merged["train"],
        merged["val"],
        merged["test"],
        len(names),
        (d,),
        tuple(names),
    )
    return ClassPool(dataset, tuple(seen), tuple(held), provenance)


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
    """Dataset name of a pool, the ``dataset`` of the heads trained on it.

    The provenance name :func:`build_class_pool` gave it (``pool-<10 hex digits>``), kept
    as is; a pool built otherwise (another name) is named by its content hash.
    """
    if _POOL_NAME.match(pool.name):
        return pool.name
    return f"pool-{content_hash(pool)[:10]}"


def pool_dataset(pool: SplitDataset) -> SplitDataset:
    """The pool's dataset (``ClassPool.dataset``) under its name (:func:`pool_name`)."""
    name = pool_name(pool)
    if name == pool.name:
        return pool
    return SplitDataset(
        name,
        pool.train,
        pool.val,
        pool.test,
        pool.n_classes,
        pool.input_shape,
        pool.class_names,
    )
