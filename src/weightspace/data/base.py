"""Containers for classification datasets split into train / validation / test.

A :class:`Split` holds the inputs and labels of one split; a :class:`SplitDataset` holds
the three splits plus what a model needs to know about them (number of classes, input
shape, class names). Both are frozen dataclasses that validate their content on
construction, so every function downstream can rely on:

- ``x`` is ``float32`` of shape ``(N, *input_shape)`` and finite;
- ``y`` is ``int64`` of shape ``(N,)`` with ``0 <= y < n_classes``;
- the three splits share ``input_shape``.

Equality is identity (``eq=False``): comparing tensors elementwise inside ``__eq__`` is
ambiguous. Compare datasets through :func:`weightspace.data.dataset_card` hashes instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from weightspace.errors import InvalidParameterError, ShapeError

SPLITS: tuple[str, str, str] = ("train", "val", "test")
"""Names of the three splits, in the order they are stored."""


@dataclass(frozen=True, eq=False)
class Split:
    """Inputs and integer labels of one split.

    Parameters
    ----------
    x : Tensor, shape (N, *input_shape), float32
        Inputs. Must be finite.
    y : Tensor, shape (N,), int64
        Class labels.

    Raises
    ------
    ShapeError
        If a tensor has the wrong type, dtype, number of dimensions or length, or ``x``
        holds NaN or infinity.
    """

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.x, Tensor) or not isinstance(self.y, Tensor):
            raise ShapeError(
                f"Split needs torch tensors, got x={type(self.x).__name__}, "
                f"y={type(self.y).__name__}; convert with torch.as_tensor."
            )
        if self.x.dtype != torch.float32:
            raise ShapeError(
                f"Split.x must be float32, got {self.x.dtype}; convert with x.float()."
            )
        if self.y.dtype != torch.int64:
            raise ShapeError(f"Split.y must be int64, got {self.y.dtype}; convert with y.long().")
        if self.x.ndim < 2:
            raise ShapeError(
                f"Split.x must have shape (N, *input_shape) with at least 2 dimensions, "
                f"got shape {tuple(self.x.shape)}; add a feature axis with x.unsqueeze(1)."
            )
        if self.y.ndim != 1:
            raise ShapeError(f"Split.y must have shape (N,), got {tuple(self.y.shape)}.")
        if self.x.shape[0] != self.y.shape[0]:
            raise ShapeError(
                f"Split.x has {self.x.shape[0]} samples but Split.y has {self.y.shape[0]}."
            )
        if self.x.numel() and not bool(torch.isfinite(self.x).all()):
            raise ShapeError("Split.x contains NaN or infinity; clean the inputs first.")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def clone(self) -> Split:
        """Return a copy whose tensors share no memory with this split."""
        return Split(self.x.clone(), self.y.clone())


@dataclass(frozen=True, eq=False)
class SplitDataset:
    """A classification dataset with fixed train, validation and test splits.

    Parameters
    ----------
    name : str
        Canonical name, e.g. ``"digits"`` or a task name such as ``"digits[0,3,5]"``.
    train, val, test : Split
        The three splits; each ``x`` has shape ``(N_split, *input_shape)``.
    n_classes : int
        Number of classes; every label lies in ``[0, n_classes)``.
    input_shape : tuple of int
        Shape of one input, e.g. ``(1, 8, 8)`` for digits or ``(1, 40)`` for MNIST-1D.
    class_names : tuple of str
        One human-readable name per class, index ``i`` naming label ``i``.

    Raises
    ------
    ShapeError
        If the splits disagree with ``input_shape``, ``class_names`` has the wrong length,
        or a label is out of range.
    """

    name: str
    train: Split
    val: Split
    test: Split
    n_classes: int
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if not isinstance(self.name, str) or not self.name:
            raise ShapeError(f"SplitDataset.name must be a non-empty string, got {self.name!r}.")
        if int(self.n_classes) < 1:
            raise ShapeError(f"SplitDataset.n_classes must be >= 1, got {self.n_classes}.")
        if len(self.class_names) != self.n_classes:
            raise ShapeError(
                f"SplitDataset {self.name!r} has n_classes={self.n_classes} but "
                f"{len(self.class_names)} class names."
            )
        for split_name in SPLITS:
            split = getattr(self, split_name)
            if not isinstance(split, Split):
                raise ShapeError(
                    f"SplitDataset.{split_name} must be a Split, got {type(split).__name__}."
                )
            if tuple(split.x.shape[1:]) != self.input_shape:
                raise ShapeError(
                    f"SplitDataset {self.name!r}: {split_name}.x has input shape "
                    f"{tuple(split.x.shape[1:])}, expected {self.input_shape}."
                )
            if len(split) and (int(split.y.min()) < 0 or int(split.y.max()) >= self.n_classes):
                raise ShapeError(
                    f"SplitDataset {self.name!r}: {split_name}.y has labels in "
                    f"[{int(split.y.min())}, {int(split.y.max())}], expected "
                    f"[0, {self.n_classes - 1}]."
                )

    def split(self, name: str) -> Split:
        """Return the split called ``name`` (one of ``"train"``, ``"val"``, ``"test"``)."""
        if name not in SPLITS:
            raise InvalidParameterError(
                f"Unknown split {name!r}; choose one of {', '.join(SPLITS)}."
            )
        return getattr(self, name)

    def clone(self) -> SplitDataset:
        """Return a copy whose tensors share no memory with this dataset."""
        return dataclasses.replace(
            self, train=self.train.clone(), val=self.val.clone(), test=self.test.clone()
        )
