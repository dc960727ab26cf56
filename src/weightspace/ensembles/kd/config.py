"""Hyper-parameters and outcome of knowledge distillation, and the argument checks.

:class:`KDConfig` is the frozen configuration of :func:`~weightspace.ensembles.kd.distill`
(the loss-weight factor ``alpha`` is gamma of CLAFusion Sec. 4.2.1); :class:`KDResult`
its outcome.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from weightspace.data.base import Split
from weightspace.device import module_device
from weightspace.ensembles.kd.loss import _check_alpha, _check_temperature
from weightspace.errors import InvalidParameterError, ShapeError

__all__ = ["KDConfig", "KDResult"]

_OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


@dataclass(frozen=True)
class KDConfig:
    """Hyper-parameters of :func:`distill`.

    Parameters
    ----------
    epochs : int
        Training epochs, ``>= 1``.
    lr : float
        Learning rate, ``> 0``.
    batch_size : int
        Minibatch size, ``>= 1``.
    optimizer : str
        ``"sgd"`` (with ``momentum``) or ``"adam"``.
    momentum : float
        SGD momentum in ``[0, 1)``; ignored by Adam.
    weight_decay : float
        L2 penalty, ``>= 0``.
    temperature : float
        Distillation temperature ``T > 0``.
    alpha : float
        Weight of the distillation term in ``[0, 1]`` (the loss-weight factor gamma of
        CLAFusion Sec. 4.2.1).
    seed : int
        Seed of the minibatch order (and of any randomness inside the student, e.g.
        dropout), ``>= 0``.
    """

    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    temperature: float = 4.0
    alpha: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: object) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.epochs) or self.epochs < 1:
            raise InvalidParameterError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not is_num(self.lr) or self.lr <= 0:
            raise InvalidParameterError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise InvalidParameterError(
                f"batch_size must be an integer >= 1, got {self.batch_size!r}"
            )
        if self.optimizer not in _OPTIMIZERS:
            raise InvalidParameterError(
                f"optimizer must be one of {list(_OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if not is_num(self.momentum) or not 0.0 <= self.momentum < 1.0:
            raise InvalidParameterError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        if not is_num(self.weight_decay) or self.weight_decay < 0:
            raise InvalidParameterError(
                f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}"
            )
        _check_temperature(self.temperature)
        _check_alpha(self.alpha)
        if not is_int(self.seed) or self.seed < 0:
            raise InvalidParameterError(f"seed must be an integer >= 0, got {self.seed!r}")


@dataclass
class KDResult:
    """Outcome of :func:`distill`.

    Attributes
    ----------
    model : nn.Module
        The student (a copy) at the best validation epoch, or after the last epoch when no
        validation split was given; in eval mode.
    history : dict of str to list of float
        ``"train_loss"``: mean KD loss of each epoch (``epochs`` entries).
        ``"val_accuracy"`` (only with a validation split): accuracy before training
        (index 0) and after each epoch (``epochs + 1`` entries).
    best_epoch : int
        Epoch of ``model``: 0 means the initial student, ``epochs`` the last one.
    seconds : float
        Wall-clock time of the whole call.
    """

    model: nn.Module
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    seconds: float = 0.0


def _check_config(config: object) -> KDConfig:
    """Return ``config`` if it is a :class:`KDConfig`, else raise."""
    if not isinstance(config, KDConfig):
        raise InvalidParameterError(f"config must be a KDConfig, got {type(config).__name__}")
    return config


def _check_split(split: object, name: str) -> Split:
    """Return ``split`` if it is a non-empty :class:`Split`, else raise."""
    if not isinstance(split, Split):
        raise InvalidParameterError(f"{name} must be a Split, got {type(split).__name__}")
    if len(split) == 0:
        raise ShapeError(f"{name} split is empty; distillation needs at least one sample")
    return split


def _check_student(student: object) -> torch.device:
    """Device of ``student``'s parameters; raise unless it is a module with parameters."""
    if not isinstance(student, nn.Module):
        raise InvalidParameterError(f"student must be an nn.Module, got {type(student).__name__}")
    if next(student.parameters(), None) is None:
        raise InvalidParameterError("student has no parameters to train")
    return module_device(student)


def _eval_batch_size(config: KDConfig) -> int:
    """Samples per forward pass when scoring or querying teachers: ``max(batch_size, 1024)``."""
    return max(config.batch_size, 1024)
