"""Cross-layer alignment (CLA) between a deeper and a shallower network.

CLAFusion [1]_ (Section 3.1 of ``papers/clafusion_cross_layer_alignment_fusion.txt``,
Definition 1) aligns the ``n`` hidden layers of the shallower model B with the ``m >= n``
hidden layers of the deeper model A. Given a cost matrix ``C`` (m, n) with
``C[i, j] = d(L_A^(i), L_B^(j))``, the optimal CLA is a strictly increasing mapping ``a``
from B's layers to A's layers with ``a(first) = first`` and ``a(last) = last`` that
minimises ``sum_j C[a(j), j]``. When ``n == 1`` only the first-layer constraint is kept
(the paper "prioritise[s] the first layer over the last layer").

Algorithm 1 of the paper solves this with an ``O(mn)`` dynamic programme,
``S(i, j) = min(S(i, j-1), S(i-1, j-1) + C[j, i])`` in its 1-based indexing
(``i`` over B's layers, ``j`` over A's). Its printed initialisation (the ``S(i, i)``
diagonal) and backtracking (which fixes ``a(1) = 1``, ``a(n) = m`` only *after* running
the unconstrained recursion) are loose, so :func:`cross_layer_alignment` runs the same
recursion on the constrained sub-problem instead: B's middle layers ``1..n-2`` are
matched, strictly increasingly, into A's middle layers ``1..m-2`` (0-based), and the
first/last pairs are added afterwards. :func:`brute_force_alignment` is the exponential
reference it is tested against.

All indices here are 0-based: ``a[0] == 0`` and ``a[n-1] == m-1``.

References
----------
.. [1] Q. Nguyen, T. Le, H. Nguyen, N. Ho. "Model Fusion of Heterogeneous Neural
   Networks via Cross-Layer Alignment" (CLAFusion), 2021, Section 3.1.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from weightspace.errors import InvalidParameterError

__all__ = [
    "alignment_cost",
    "brute_force_alignment",
    "cost_from_widths",
    "cross_layer_alignment",
]


def _as_cost(cost: Any) -> np.ndarray:
    """Validate a CLA cost matrix and convert it to float64 NumPy.

    Parameters
    ----------
    cost : array-like
        NumPy array, torch tensor or nested list of shape ``(m, n)``.

    Returns
    -------
    np.ndarray
        Float64 array of shape ``(m, n)`` with ``m >= n >= 1`` and finite entries.

    Raises
    ------
    InvalidParameterError
        If ``cost`` is not numeric, not 2-D, empty, has fewer rows than columns, or
        contains NaN or infinity.
    """
    if isinstance(cost, torch.Tensor):
        cost = cost.detach().cpu().to(torch.float64).numpy()
    try:
        arr = np.asarray(cost, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(
            f"cost must be a numeric (m, n) matrix (NumPy array, torch tensor or nested "
            f"list of equal-length rows); could not convert it: {exc}"
        ) from exc
    if arr.ndim != 2:
        raise InvalidParameterError(
            f"cost must be a 2-D (m, n) matrix (rows: the deeper model's hidden layers, "
            f"columns: the shallower model's); got {arr.ndim}-D shape {arr.shape}."
        )
    m, n = arr.shape
    if m == 0 or n == 0:
        raise InvalidParameterError(
            f"cost must have at least one row and one column (each model needs at least "
            f"one hidden layer); got shape {arr.shape}."
        )
    if m < n:
        raise InvalidParameterError(
            f"cost has fewer rows ({m}) than columns ({n}); pass the cost with the deeper "
            f"model's layers as rows; transpose it."
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        raise InvalidParameterError(
            f"cost contains {int(bad.sum())} non-finite entr{'y' if bad.sum() == 1 else 'ies'}"
            f" (first at index ({i}, {j}): {arr[i, j]}); replace NaN/inf costs with finite "
            f"values."
        )
    return arr


def _middle_dp(sub: list[list[float]]) -> list[int]:
    """Optimal strictly increasing assignment of all columns of ``sub`` to its rows.

    The recursion of Algorithm 1 (0-based, ``D[i][j]``: best cost of the first ``i``
    columns in the first ``j`` rows)::

        D[0][j] = 0,  D[i][i] = D[i-1][i-1] + sub[i-1][i-1],
        D[i][j] = min(D[i][j-1], D[i-1][j-1] + sub[j-1][i-1])   (j > i)

    Row ``j-1`` is *taken* for column ``i-1`` only when that is strictly cheaper than
    skipping it, and backtracking from ``(k, r)`` follows the recorded choices.

    Parameters
    ----------
    sub : list[list[float]]
        Cost matrix of shape ``(r, k)`` with ``r >= k >= 1``.

    Returns
    -------
    list[int]
        ``k`` strictly increasing row indices into ``sub``.
    """
    r, k = len(sub), len(sub[0])
    take = [[False] * (r + 1) for _ in range(k + 1)]
    prev = [0.0] * (r + 1)  # D[i-1][.]
    for i in range(1, k + 1):
        cur = [math.inf] * (r + 1)
        cur[i] = prev[i - 1] + sub[i - 1][i - 1]
        take[i][i] = True
        for j in range(i + 1, r - k + i + 1):  # later rows must leave room for the rest
            use = prev[j - 1] + sub[j - 1][i - 1]
            if use < cur[j - 1]:
                cur[j], take[i][j] = use, True
            else:
                cur[j] = cur[j - 1]
        prev = cur
    rows: list[int] = []
    i, j = k, r
    while i > 0:
        while not take[i][j]:
            j -= 1
        rows.append(j - 1)
        i, j = i - 1, j - 1
    return rows[::-1]


def cross_layer_alignment(cost: Any) -> list[int]:
    """Optimal cross-layer alignment (Definition 1, Algorithm 1 of CLAFusion [1]_).

    Parameters
    ----------
    cost : array-like
        Cost matrix of shape ``(m, n)``, ``m >= n >= 1`` (NumPy array, torch tensor or
        nested list): ``cost[i, j]`` is the dissimilarity between hidden layer ``i`` of
        the deeper model (rows) and hidden layer ``j`` of the shallower model (columns).

    Returns
    -------
    list[int]
        Strictly increasing list ``a`` of ``n`` 0-based row indices, ``a[j]`` being the
        deeper model's layer aligned with the shallower model's layer ``j``. ``a[0] == 0``
        and, when ``n >= 2``, ``a[n-1] == m-1``; the middle layers map into rows
        ``1..m-2``. ``a`` minimises ``sum_j cost[a[j], j]`` under these constraints.

    Raises
    ------
    InvalidParameterError
        If ``cost`` is not a 2-D numeric matrix, is empty, has fewer rows than columns
        (transpose it), or contains NaN or infinity.

    Notes
    -----
    Runs in ``O(mn)`` time and memory. The optimum need not be unique; ties are broken
    deterministically as the paper's backtracking does: going from the last middle layer
    backwards, each layer is assigned the *earliest* row that keeps the total optimal.
    Equivalently, among all optimal mappings the one returned has the smallest
    ``a[n-2]``, then (among those) the smallest ``a[n-3]``, and so on. Ties are exact
    float comparisons of partial sums.
    """
    arr = _as_cost(cost)
    m, n = arr.shape
    if n == 1:
        return [0]
    if n == 2:
        return [0, m - 1]
    sub = arr[1 : m - 1, 1 : n - 1].tolist()  # (m-2, n-2)
    return [0, *(1 + r for r in _middle_dp(sub)), m - 1]


def alignment_cost(cost: Any, mapping: Sequence[int]) -> float:
    """Total cost ``sum_j cost[mapping[j], j]`` of a cross-layer mapping.

    Parameters
    ----------
    cost : array-like
        Cost matrix of shape ``(m, n)``, ``m >= n >= 1``.
    mapping : Sequence[int]
        ``n`` row indices, one per column.

    Returns
    -------
    float
        The summed cost (columns added in order).

    Raises
    ------
    InvalidParameterError
        If ``cost`` is invalid (see :func:`cross_layer_alignment`), ``mapping`` does not
        have one entry per column, or an entry is not a row index.
    """
    arr = _as_cost(cost)
    m, n = arr.shape
    if len(mapping) != n:
        raise InvalidParameterError(
            f"mapping must have one row index per column of cost ({n}); got {len(mapping)} entries."
        )
    for j, i in enumerate(mapping):
        if not 0 <= int(i) < m:
            raise InvalidParameterError(
                f"mapping[{j}] = {i} is not a row index of cost (0..{m - 1})."
            )
    return float(sum(arr[int(i), j] for j, i in enumerate(mapping)))


def brute_force_alignment(cost: Any) -> list[int]:
    """Optimal cross-layer alignment by exhaustive enumeration (reference only).

    Enumerates every ``itertools.combinations(range(1, m - 1), n - 2)`` choice of middle
    rows: ``C(m-2, n-2)`` candidates, exponential in general. Use it in tests and for
    tiny problems only; use :func:`cross_layer_alignment` otherwise.

    Parameters
    ----------
    cost : array-like
        Cost matrix of shape ``(m, n)``, ``m >= n >= 1``.

    Returns
    -------
    list[int]
        An optimal mapping satisfying the same constraints as
        :func:`cross_layer_alignment`. Among candidates with the same total (computed by
        :func:`alignment_cost`, so exact ties only), the one with the smallest
        ``a[n-2]``, then ``a[n-3]``, ... is returned, the same rule as the DP.

    Raises
    ------
    InvalidParameterError
        As :func:`cross_layer_alignment`.
    """
    arr = _as_cost(cost)
    m, n = arr.shape
    if n == 1:
        return [0]
    candidates = ([0, *middle, m - 1] for middle in itertools.combinations(range(1, m - 1), n - 2))
    best = min(candidates, key=lambda a: (alignment_cost(arr, a), a[::-1]))
    return best


def cost_from_widths(widths_a: Sequence[int], widths_b: Sequence[int]) -> np.ndarray:
    """Squared difference of layer widths (the toy cost of Figure 2 in [1]_).

    Parameters
    ----------
    widths_a : Sequence[int]
        Neuron counts of model A's ``m`` hidden layers.
    widths_b : Sequence[int]
        Neuron counts of model B's ``n`` hidden layers.

    Returns
    -------
    np.ndarray
        Float64 array of shape ``(m, n)`` with entry ``(i, j) = (widths_a[i] -
        widths_b[j]) ** 2``.

    Raises
    ------
    InvalidParameterError
        If either argument is not a 1-D sequence of numbers.
    """
    a = np.asarray(widths_a, dtype=np.float64)
    b = np.asarray(widths_b, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1:
        raise InvalidParameterError(
            f"widths_a and widths_b must be 1-D sequences of layer widths; got shapes "
            f"{a.shape} and {b.shape}."
        )
    return (a[:, None] - b[None, :]) ** 2
