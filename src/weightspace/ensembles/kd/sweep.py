"""Distillation over a grid of temperatures and loss weights (CLAFusion [1]_, Table 5).

:func:`kd_sweep` runs :func:`~weightspace.ensembles.kd.distill` for every
``(temperature, alpha)`` and reports the "Best" and "Average" numbers of Table 5 of
CLAFusion (Sec. 4.2.1, "Knowledge distillation"; there, ``T in {20, 10, 8, 4, 1}`` and
``alpha in {0.05, 0.1, 0.5, 0.7, 0.95, 0.99}``, following Singh & Jaggi's OTFusion,
Appendix S12).

References
----------
.. [1] D. Nguyen, T. Nguyen, K. Nguyen, D. Phung, H. Bui, N. Ho. "On Cross-Layer Alignment
   for Model Fusion of Heterogeneous Neural Networks" (CLAFusion), Sec. 4.2.1 and
   Table 5 (``papers/clafusion_cross_layer_alignment_fusion.txt``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from weightspace.data.base import Split
from weightspace.ensembles.kd.config import (
    KDConfig,
    _check_config,
    _check_split,
    _check_student,
    _eval_batch_size,
)
from weightspace.ensembles.kd.loop import split_accuracy
from weightspace.ensembles.kd.loss import _check_alpha, _check_temperature, teacher_probs
from weightspace.ensembles.kd.trainer import _distill_with_probs
from weightspace.errors import InvalidParameterError

__all__ = ["kd_sweep"]

logger = logging.getLogger(__name__)


def _check_grid(
    temperatures: Sequence[float], alphas: Sequence[float]
) -> tuple[list[float], list[float]]:
    """Validated, non-empty, duplicate-free temperature and alpha lists."""
    temps = [_check_temperature(t) for t in temperatures]
    alps = [_check_alpha(a) for a in alphas]
    for name, values in (("temperatures", temps), ("alphas", alps)):
        if not values:
            raise InvalidParameterError(f"{name} is empty; give at least one value")
        if len(set(values)) != len(values):
            raise InvalidParameterError(f"{name} has duplicates: {values}")
    return temps, alps


def _best_by_val(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the highest ``"val_accuracy"`` (ties: the first)."""
    best = runs[0]
    for run in runs[1:]:
        if run["val_accuracy"] > best["val_accuracy"]:
            best = run
    return best


def _sweep_alphas(
    student: nn.Module,
    probs: Tensor,
    splits: tuple[Split, Split, Split],
    config: KDConfig,
    temperature: float,
    alphas: list[float],
) -> list[dict[str, Any]]:
    """One :func:`distill` run per alpha at ``temperature``; ``splits = (train, val, test)``."""
    train, val, test = splits
    runs = []
    for alpha in alphas:
        cfg = dataclasses.replace(config, temperature=temperature, alpha=alpha)
        res = _distill_with_probs(student, probs, train, cfg, val, progress=False)
        run = {
            "temperature": temperature,
            "alpha": alpha,
            "val_accuracy": res.history["val_accuracy"][res.best_epoch],
            "test_accuracy": split_accuracy(res.model, res.model, test),
            "best_epoch": res.best_epoch,
        }
        logger.info(
            "kd_sweep T=%g alpha=%g: val %.4f, test %.4f (epoch %d)",
            temperature,
            alpha,
            run["val_accuracy"],
            run["test_accuracy"],
            run["best_epoch"],
        )
        runs.append(run)
    return runs


def kd_sweep(
    student: nn.Module,
    teachers: nn.Module | Sequence[nn.Module],
    train: Split,
    val: Split,
    test: Split,
    config: KDConfig,
    temperatures: Sequence[float],
    alphas: Sequence[float],
) -> dict[str, Any]:
    """Distil for every ``(temperature, alpha)`` and summarise as in CLAFusion Table 5.

    Each run starts from the same ``student`` with ``config`` (its ``temperature`` and
    ``alpha`` replaced) and keeps its best-validation epoch. Selection always uses
    validation accuracy; test accuracy is only reported.

    Parameters
    ----------
    student, teachers, train, config
        As in :func:`distill`.
    val : Split
        Validation split: selects the epoch of each run and the run of each temperature.
    test : Split
        Test split on which every returned model is scored.
    temperatures : sequence of float
        Distinct temperatures ``T > 0``, e.g. ``(20, 10, 8, 4, 1)``.
    alphas : sequence of float
        Distinct loss-weight factors in ``[0, 1]``, e.g. ``(0.05, 0.1, 0.5, 0.7, 0.95, 0.99)``.

    Returns
    -------
    dict
        ``"runs"``: one dict per run, temperatures outer and alphas inner, with keys
        ``"temperature"``, ``"alpha"``, ``"val_accuracy"`` (at the best epoch),
        ``"test_accuracy"``, ``"best_epoch"``.
        ``"best_test_accuracy"``: test accuracy of the run with the highest validation
        accuracy (ties: the first run) -- Table 5's "Best".
        ``"best_run"``: that run's dict.
        ``"best_per_temperature"``: for each temperature, the run of its best-validation
        alpha.
        ``"mean_best_over_temperatures"``, ``"std_best_over_temperatures"``: mean and
        population standard deviation (ddof = 0) over temperatures of the test accuracy of
        each temperature's best-validation alpha -- Table 5's "Average".

    Raises
    ------
    InvalidParameterError
        If ``temperatures`` or ``alphas`` is empty, has duplicates or invalid values.
    """
    config = _check_config(config)
    temps, alps = _check_grid(temperatures, alphas)
    splits = (_check_split(train, "train"), _check_split(val, "val"), _check_split(test, "test"))
    _check_student(student)
    runs: list[dict[str, Any]] = []
    best_per_temperature: list[dict[str, Any]] = []
    for temperature in temps:
        probs = teacher_probs(teachers, splits[0].x, temperature, _eval_batch_size(config))
        runs_here = _sweep_alphas(student, probs, splits, config, temperature, alps)
        runs.extend(runs_here)
        best_per_temperature.append(_best_by_val(runs_here))
    best_run = _best_by_val(runs)
    per_t = torch.tensor([r["test_accuracy"] for r in best_per_temperature], dtype=torch.float64)
    return {
        "runs": runs,
        "best_test_accuracy": best_run["test_accuracy"],
        "best_run": best_run,
        "best_per_temperature": best_per_temperature,
        "mean_best_over_temperatures": float(per_t.mean()),
        "std_best_over_temperatures": float(per_t.std(correction=0)),
    }
