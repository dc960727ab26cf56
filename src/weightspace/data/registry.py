"""Dataset registry: one name, one loader returning a :class:`SplitDataset`.

=================  ===========  ==========================================================
name               needs root   loader
=================  ===========  ==========================================================
digits             no           :func:`weightspace.data.embedded.load_digits`
mnist1d            no           :func:`weightspace.data.embedded.load_mnist1d`
mnist              yes          :func:`weightspace.data.torchvision_sets.load_torchvision_dataset`
fashion_mnist      yes          (same)
cifar10            yes          (same)
cifar100           yes          (same)
=================  ===========  ==========================================================

New datasets are added with :func:`register_dataset`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from weightspace.data.base import SplitDataset
from weightspace.data.embedded import load_digits, load_mnist1d
from weightspace.data.torchvision_sets import TORCHVISION_DATASETS, load_torchvision_dataset
from weightspace.errors import InvalidParameterError, UnknownDatasetError

logger = logging.getLogger(__name__)

Loader = Callable[..., SplitDataset]


@dataclass(frozen=True)
class DatasetEntry:
    """How to load one registered dataset.

    Parameters
    ----------
    loader : callable
        Called as ``loader(seed=seed, **kwargs)``, plus ``root=root`` when
        ``needs_root``; returns a :class:`SplitDataset`.
    needs_root : bool
        Whether the data is read from a user-given folder.
    description : str
        One line shown in error messages.
    """

    loader: Loader
    needs_root: bool
    description: str


DATASETS: dict[str, DatasetEntry] = {
    "digits": DatasetEntry(load_digits, False, "scikit-learn 8x8 digits, embedded"),
    "mnist1d": DatasetEntry(load_mnist1d, False, "MNIST-1D, generated offline"),
    **{
        name: DatasetEntry(
            functools.partial(load_torchvision_dataset, name),
            True,
            f"torchvision {name}, read from root",
        )
        for name in TORCHVISION_DATASETS
    },
}
"""Registered datasets by name (``tuple(DATASETS)`` lists the names)."""


def register_dataset(
    name: str, loader: Loader, *, needs_root: bool = False, description: str = ""
) -> None:
    """Register a new dataset loader under ``name``.

    Parameters
    ----------
    name : str
        New, unused name.
    loader : callable
        ``loader(seed=..., **kwargs) -> SplitDataset`` (and ``root=...`` if
        ``needs_root``). The returned dataset should be named ``name``.
    needs_root : bool
        Whether :func:`load_dataset` must be given a folder.
    description : str
        One line for error messages.

    Raises
    ------
    InvalidParameterError
        If ``name`` is already registered.
    """
    if name in DATASETS:
        raise InvalidParameterError(f"Dataset {name!r} is already registered.")
    DATASETS[name] = DatasetEntry(loader, needs_root, description or name)


def _known() -> str:
    return "\n".join(
        f"  {name:<14} {entry.description}" + (" (needs root)" if entry.needs_root else "")
        for name, entry in DATASETS.items()
    )


def load_dataset(
    name: str, root: str | os.PathLike | None = None, seed: int = 0, **kwargs
) -> SplitDataset:
    """Load the registered dataset ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`.
    root : str or PathLike, optional
        Folder with the files, required by datasets read from disk (mnist,
        fashion_mnist, cifar10, cifar100); ignored by embedded ones.
    seed : int
        Seed of the train/val(/test) split.
    **kwargs
        Further arguments of the loader, e.g. ``val_fraction`` or ``n_samples``.

    Returns
    -------
    SplitDataset

    Raises
    ------
    UnknownDatasetError
        If ``name`` is not registered; the message lists the known names.
    InvalidParameterError
        If ``root`` is missing where needed, or a keyword is not accepted by the loader.
    DatasetNotFoundError
        If the files are not found under ``root``.
    """
    if name not in DATASETS:
        raise UnknownDatasetError(
            f"Unknown dataset {name!r}. Known datasets:\n{_known()}\nTo add one, write a "
            f"loader returning a weightspace.data.SplitDataset and call "
            f"weightspace.data.register_dataset({name!r}, loader)."
        )
    entry = DATASETS[name]
    call_kwargs = {"seed": seed, **kwargs}
    if entry.needs_root:
        if root is None:
            raise InvalidParameterError(
                f"Dataset {name!r} is read from disk: pass root=<folder holding it> "
                f"(nothing is downloaded)."
            )
        call_kwargs["root"] = root
    elif root is not None:
        logger.debug("Dataset %r is embedded; ignoring root=%s", name, root)
    try:
        inspect.signature(entry.loader).bind(**call_kwargs)
    except TypeError as err:
        accepted = [p for p in inspect.signature(entry.loader).parameters if p != "root"]
        raise InvalidParameterError(
            f"Invalid arguments for dataset {name!r}: {err}. Accepted: {', '.join(accepted)}."
        ) from err
    return entry.loader(**call_kwargs)
