"""SuperWeight clusters: depth-binned initial clusters and gradient-similarity grouping.

Which layers share weight templates (a *SuperWeight cluster*) and which layers share
coefficients is learned from gradients, following Sec. 2 of the supplement
(``papers/superweights_parameter_allocation_search_supplementary.txt``, "Priority-Queue
Weight Template Assignment", Algorithm 1) and Sec. 1.1 (the settings of the heterogeneous
ensembles):

- clusters start as **depth bins**: each network is cut into ``n_bins = 4`` equal parts
  by relative depth, and layers of different kernel sizes (1x1 vs 3x3) are kept apart
  (:func:`depth_bins`);
- a cluster is **refined** by the cosine similarity ``psi_ij`` of its layers' weight
  gradients accumulated over an epoch, cropped to their common top-left block (Eq. 2 of
  the main paper, threshold ``tau``; :func:`cropped_cosine`);
- coefficients that a cluster shares are **un-shared** where the similarity of their
  accumulated gradients is below ``beta`` (Eq. 3, threshold ``beta``).

Both steps run Algorithm 1 (:func:`group_pairs`) with ``epsilon = tau`` or ``beta``: pairs
above the threshold *merge* their groups, every other item stays alone. Algorithm 1 pops
pairs from a priority queue and merges the two groups each pair touches, so its result
is the connected components of the graph whose edges are the pairs with
``psi > epsilon``. It is implemented as such (union-find), which makes the partition
independent of the order in which pairs are listed, transitive (``psi_ab = 0.8``,
``psi_bc = 0.9``, ``epsilon = 0.5`` gives ``{a, b, c}`` even though ``psi_ac`` is unknown)
and monotone: lowering the threshold only adds edges, so it never increases the number of
groups. (The authors' code assigns ``groups[j] = groups[i]`` pair by pair instead, which
is neither transitive nor order independent.)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence

from torch import Tensor

from weightspace.errors import InvalidParameterError, ShapeError

__all__ = ["check_threshold", "cropped_cosine", "depth_bins", "group_pairs", "pairwise_pairs"]


def check_threshold(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a cosine-similarity threshold in ``[-1, 1]``.

    Parameters
    ----------
    value : object
        The threshold (``tau`` for clusters, ``beta`` for coefficients).
    name : str
        Its name, for the message.

    Raises
    ------
    InvalidParameterError
        If ``value`` is not a real number in ``[-1, 1]``.
    """
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or not -1.0 <= float(value) <= 1.0:
        raise InvalidParameterError(
            f"{name} is a threshold on a cosine similarity and must be a number in "
            f"[-1, 1], got {value!r}; the supplement uses tau = 0.1 and beta in 0.5-0.95"
        )
    return float(value)


def group_pairs(
    items: Sequence[Hashable],
    pairs: Iterable[tuple[float, Hashable, Hashable]],
    threshold: float,
    name: str = "threshold",
) -> list[frozenset]:
    """Algorithm 1 of the supplement: merge groups along pairs more similar than a threshold.

    Parameters
    ----------
    items : sequence of hashable
        Every item to place (a layer, a slot, a coefficient user); items in no pair with
        ``psi > threshold`` end up alone.
    pairs : iterable of (psi, a, b)
        Similarities between two items; the order does not matter, and a pair may be
        missing (it simply adds no edge).
    threshold : float
        ``epsilon`` of Algorithm 1, in ``[-1, 1]``: a pair joins its groups when
        ``psi > threshold`` (strictly).
    name : str
        Name of the threshold for error messages (``"tau"`` or ``"beta"``).

    Returns
    -------
    list of frozenset
        The partition of ``items``: connected components of the graph with edges
        ``{(a, b): psi_ab > threshold}``, ordered by the position of their first item in
        ``items``.

    Raises
    ------
    InvalidParameterError
        If the threshold is outside ``[-1, 1]``, a similarity is not finite, or a pair
        names an unknown item.
    """
    threshold = check_threshold(threshold, name)
    index = {item: i for i, item in enumerate(items)}
    if len(index) != len(items):
        raise InvalidParameterError(f"group_pairs got duplicate items in {list(items)!r}")
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for psi, a, b in pairs:
        if a not in index or b not in index:
            missing = a if a not in index else b
            raise InvalidParameterError(f"a pair names {missing!r}, which is not among the items")
        if not math.isfinite(float(psi)):
            raise InvalidParameterError(
                f"similarity of ({a!r}, {b!r}) is {psi!r}; gradients must be finite"
            )
        if float(psi) > threshold:
            ra, rb = find(index[a]), find(index[b])
            if ra != rb:  # the smaller root wins: the result does not depend on order
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[Hashable]] = {}
    for i, item in enumerate(items):
        groups.setdefault(find(i), []).append(item)
    return [frozenset(g) for g in groups.values()]


def _as_block(t: Tensor) -> Tensor:
    """A weight or its gradient ``(out, in, *kernel)`` as ``(out, in, prod(kernel))``."""
    if t.ndim < 2:
        raise ShapeError(f"expected a weight (out, in, *kernel), got shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], t.shape[1], -1)


def cropped_cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two weight gradients on their common top-left block.

    Parameters
    ----------
    a, b : Tensor, shape (out_a, in_a, *kernel) and (out_b, in_b, *kernel)
        Accumulated gradients; the kernels must have the same number of elements (a
        Linear weight counts as a 1x1 kernel).

    Returns
    -------
    float
        ``<a', b'> / (|a'| |b'|)`` with ``a' = a[:o, :i]``, ``b' = b[:o, :i]``,
        ``o = min(out_a, out_b)``, ``i = min(in_a, in_b)``; 0 when either crop is zero.

    Raises
    ------
    ShapeError
        If the kernels differ in size.
    """
    a3, b3 = _as_block(a), _as_block(b)
    if a3.shape[2] != b3.shape[2]:
        raise ShapeError(
            f"cannot compare gradients of kernels of {a3.shape[2]} and {b3.shape[2]} "
            "elements; layers with different kernel sizes are never in one cluster"
        )
    o, i = min(a3.shape[0], b3.shape[0]), min(a3.shape[1], b3.shape[1])
    va = a3[:o, :i].reshape(-1).double()
    vb = b3[:o, :i].reshape(-1).double()
    denom = va.norm() * vb.norm()
    if denom == 0:
        return 0.0
    return float((va @ vb) / denom)


def pairwise_pairs(
    keys: Sequence[Hashable], vectors: Sequence[Tensor]
) -> list[tuple[float, Hashable, Hashable]]:
    """All pairs ``(psi, a, b)`` of ``keys`` with ``psi`` the :func:`cropped_cosine` of
    their vectors (weight gradients ``(out, in, *kernel)`` or coefficient gradients
    ``(K,)``, the latter compared as they are)."""
    out = []
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            a, b = vectors[i], vectors[j]
            if a.ndim == 1:
                a, b = a.reshape(1, -1, 1), b.reshape(1, -1, 1)
            out.append((cropped_cosine(a, b), keys[i], keys[j]))
    return out


def depth_bins(kernel_numels: Sequence[int], n_bins: int = 4) -> list[tuple[int, int]]:
    """Initial SuperWeight cluster key of each layer of one network.

    Parameters
    ----------
    kernel_numels : sequence of int, length L
        Number of kernel elements of each shared layer in forward order (1 for a 1x1
        convolution or a Linear layer, 9 for 3x3, 3 for a 1-D kernel of 3).
    n_bins : int
        Depth bins per network (4 in the supplement).

    Returns
    -------
    list of (bin, kernel_numel), length L
        Layer ``j`` goes to bin ``floor(n_bins * j / L)``; layers of different kernel
        sizes in one bin get different keys. Networks of different depths use the same
        keys, so their bins ``b`` share one cluster.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise InvalidParameterError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    n = len(kernel_numels)
    return [(min(n_bins - 1, n_bins * j // n), int(k)) for j, k in enumerate(kernel_numels)]
