"""Cheap detection of NaN / inf weights, naming the parameter and the model."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from weightspace.errors import NonFiniteWeightsError
from weightspace.weights.spec import ParamEntry

logger = logging.getLogger(__name__)

_MAX_REPORTED = 10


def raise_if_nonfinite(matrix: torch.Tensor, entries: Sequence[ParamEntry], base: int = 0) -> None:
    """Raise :class:`NonFiniteWeightsError` if ``matrix`` holds NaN or inf.

    Parameters
    ----------
    matrix : Tensor, shape (N, W)
        Rows are models; columns ``e.offset - base : e.stop - base`` hold entry ``e``.
    entries : sequence of ParamEntry
        The entries covering the columns (``spec.entries`` for a full model matrix).
    base : int
        Flat-vector offset of column 0 (the layer start for a layer-wise block).

    Notes
    -----
    Cost: one sum over the whole matrix; the diagnosis runs only if it fails.

    NaN and inf propagate through a sum, so a finite sum proves every element finite
    (one reduction, no ``(N, D)`` boolean temporary). A non-finite sum is either a real
    NaN/inf or an overflow of the sum (possible in float16); the per-entry ``isfinite``
    diagnosis tells them apart and raises only in the first case.
    """
    if bool(torch.isfinite(matrix.sum())):
        return
    problems = []
    bad_models: set[int] = set()
    for e in entries:
        block = matrix[:, e.offset - base : e.stop - base]
        bad = ~torch.isfinite(block)
        models = bad.any(dim=1).nonzero().flatten().tolist()
        bad_models.update(models)
        for i in models:
            if len(problems) < _MAX_REPORTED:
                what = "NaN" if bool(torch.isnan(block[i]).any()) else "inf"
                problems.append(f"parameter {e.name!r} of model {i} ({what})")
    if not problems:
        return  # the sum overflowed; every element is finite
    logger.error("non-finite weights in %d model(s): %s", len(bad_models), problems)
    more = f" (first {_MAX_REPORTED} shown)" if len(problems) >= _MAX_REPORTED else ""
    raise NonFiniteWeightsError(
        f"non-finite weights: {'; '.join(problems)}{more}; models affected (0-based index): "
        f"{sorted(bad_models)[:50]}. Fix: drop or retrain those checkpoints (or, for sampled "
        "weights, resample / lower the sampling temperature); pass check_finite=False to "
        "process them anyway"
    )
