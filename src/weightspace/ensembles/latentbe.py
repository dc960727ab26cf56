"""LatentBE (Nam et al. [1]_): a BatchEnsemble student collapsed into one network.

A BatchEnsemble student (:mod:`weightspace.ensembles.batchensemble`) distilled one-to-one
from a deep ensemble needs M forward passes (eq. 5 of [1]_). LatentBE averages the
members in weight space instead and runs a single network (eq. 6). Two forms of the
average are offered, for a layer with slow weight :math:`W` (``(out, in, *kernel)``),
bias :math:`b` and fast weights :math:`r_m` (``in``), :math:`s_m` (``out``):

``how="product_of_means"`` (default; what the authors' JAX code
``cs-giung/distill-latentbe`` does)
    :math:`W \\circ (\\bar s \\bar r^\\top)` with :math:`\\bar r = \\frac1M \\sum_m r_m`,
    :math:`\\bar s = \\frac1M \\sum_m s_m`, and bias :math:`b \\circ \\bar s`: the
    BatchEnsemble layer evaluated at the mean fast weights.
``how="mean_of_products"``
    :math:`W \\circ \\big(\\frac1M \\sum_m s_m r_m^\\top\\big)`, the paper's eq. 6 with
    the :math:`1/M` that keeps the scale, i.e. the average of the members' weights
    :math:`W \\circ (s_m r_m^\\top)`; bias :math:`b \\circ \\bar s`, the average of the
    members' biases :math:`b \\circ s_m`.

The two forms agree when all :math:`r_m` are equal or all :math:`s_m` are equal, and
differ otherwise. The reference evaluation notebook drops the :math:`\\bar s` on the bias
(it keeps :math:`b`); that is a bug, not reproduced here: both forms scale the bias.

Layers without fast weights are copied unchanged; in particular BatchNorm running
statistics are reused as they were estimated on the tiled batch of the BatchEnsemble.
Re-estimating them on the merged network is a variant left to the caller:
:func:`weightspace.fusion.otfusion.recompute_batchnorm_stats`.

References
----------
.. [1] G. Nam, H. Lee, B. Heo, J. Lee. "Improving Ensemble Distillation With Weight
   Averaging and Diversifying Perturbation." ICML 2022. arXiv:2206.15047.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from weightspace.ensembles.batchensemble import BatchEnsemble, collapse, effective_weights
from weightspace.errors import InvalidParameterError, ShapeError

__all__ = ["MERGE_METHODS", "merge", "merge_layer_weights"]

MERGE_METHODS = ("product_of_means", "mean_of_products")


def _check_how(how: object) -> str:
    if how not in MERGE_METHODS:
        raise InvalidParameterError(
            f"how must be one of {MERGE_METHODS}, got {how!r}; 'product_of_means' is the "
            "authors' code, 'mean_of_products' averages the members' weights (eq. 6)"
        )
    return str(how)


def merge_layer_weights(
    weight: Tensor, bias: Tensor | None, r: Tensor, s: Tensor, how: str = "product_of_means"
) -> tuple[Tensor, Tensor | None]:
    """Merge one BatchEnsemble layer's members into a plain layer's weight and bias.

    Parameters
    ----------
    weight : Tensor, shape (out, in, *kernel)
        Shared slow weight.
    bias : Tensor, shape (out,), or None
        Shared bias.
    r : Tensor, shape (M, in)
        Input-side fast weights.
    s : Tensor, shape (M, out)
        Output-side fast weights.
    how : {"product_of_means", "mean_of_products"}
        See the module docstring.

    Returns
    -------
    weight : Tensor, shape (out, in, *kernel)
    bias : Tensor, shape (out,), or None
        ``bias * s.mean(0)`` for both forms.

    Raises
    ------
    InvalidParameterError
        On an unknown ``how``.
    ShapeError
        If ``r`` and ``s`` are not ``(M, in)`` and ``(M, out)`` for the same ``M``.
    """
    how = _check_how(how)
    if (
        r.ndim != 2
        or s.ndim != 2
        or r.shape[0] != s.shape[0]
        or r.shape[0] == 0
        or weight.ndim < 2
        or r.shape[1] != weight.shape[1]
        or s.shape[1] != weight.shape[0]
    ):
        raise ShapeError(
            f"for a weight of shape {tuple(weight.shape)} (out, in, *kernel) the fast "
            f"weights must be r (M, {weight.shape[1] if weight.ndim > 1 else 'in'}) and "
            f"s (M, {weight.shape[0] if weight.ndim > 0 else 'out'}) with the same M >= 1, "
            f"got r {tuple(r.shape)} and s {tuple(s.shape)}"
        )
    s_bar = s.mean(dim=0)
    if how == "product_of_means":
        scale = torch.outer(s_bar, r.mean(dim=0))
    else:
        scale = torch.einsum("mo,mi->oi", s, r) / r.shape[0]
    return effective_weights(weight, bias, scale, s_bar)


def merge(be: BatchEnsemble, how: str = "product_of_means") -> nn.Module:
    """LatentBE: one plain network from a BatchEnsemble's members (one forward pass).

    Parameters
    ----------
    be : BatchEnsemble
        The trained BatchEnsemble student; not modified.
    how : {"product_of_means", "mean_of_products"}
        How fast weights are averaged (see the module docstring).

    Returns
    -------
    nn.Module
        A new network of the original architecture (plain nn.Linear / nn.Conv layers,
        other layers and BatchNorm running statistics copied unchanged), in eval mode.

    Raises
    ------
    InvalidParameterError
        If ``be`` is not a BatchEnsemble or ``how`` is unknown.
    """
    how = _check_how(how)
    if not isinstance(be, BatchEnsemble):
        raise InvalidParameterError(
            f"merge takes a BatchEnsemble, got {type(be).__name__}; LatentBE merges the "
            "members of a BatchEnsemble(module, m) student"
        )
    merged = collapse(
        be, lambda layer: merge_layer_weights(layer.weight, layer.bias, layer.r, layer.s, how)
    )
    return merged.eval()
