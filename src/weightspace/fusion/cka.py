"""Linear centred kernel alignment (CKA) between layer representations.

CLAFusion [1]_ (Section 3.1, "Layer representation", Eq. 2-3 of
``papers/clafusion_cross_layer_alignment_fusion.txt``) compares hidden layers of two
networks through their pre-activation matrices ``X`` (t, p_a) and ``Y`` (t, p_b) computed
on the *same* ``t`` samples, with the linear CKA of Kornblith et al. [2]_:

    CKA(X, Y) = ‖Ŷᵀ X̂‖_F² / (‖X̂ᵀ X̂‖_F ‖Ŷᵀ Ŷ‖_F),

where ``X̂ = H X`` and ``Ŷ = H Y`` are centred over the samples with
``H = I_t - 1 1ᵀ / t`` (every column, i.e. every neuron, has zero mean over the
samples). The paper prints the centring matrix on the feature side (``X H_{p_A}``) with a
``1/n`` factor; that is a typo, and we follow Kornblith et al.'s definition, which the
paper cites. The layer dissimilarity of Eq. 3 is ``1 - CKA``
(:func:`cka_cost_matrix`).

With linear kernels ``K = X̂ X̂ᵀ`` and ``L = Ŷ Ŷᵀ`` (t, t) the numerator equals
``<K, L>_F`` and the denominator ``‖K‖_F ‖L‖_F`` (HSIC form), which is the cheaper
form when ``t < p_a + p_b``; :func:`linear_cka` picks whichever form is cheaper.

Everything is computed in float64. A constant representation (zero after centring)
has CKA 0 by convention, never NaN. Results are clamped to ``[0, 1]`` (the exact value
lies there because ``K`` and ``L`` are positive semi-definite; clamping only removes
rounding noise).

References
----------
.. [1] Q. Nguyen, T. Le, H. Nguyen, N. Ho. "Model Fusion of Heterogeneous Neural
   Networks via Cross-Layer Alignment" (CLAFusion), 2021, Section 3.1.
.. [2] S. Kornblith, M. Norouzi, H. Lee, G. Hinton. "Similarity of Neural Network
   Representations Revisited", ICML 2019.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from weightspace.errors import InvalidParameterError, ShapeError

__all__ = ["cka_cost_matrix", "linear_cka"]


def _as_matrix(x: torch.Tensor, name: str) -> torch.Tensor:
    """Validate a representation and flatten it to a float64 matrix.

    Parameters
    ----------
    x : torch.Tensor
        Representation of shape ``(t, *)``: ``t`` samples, any trailing feature dims.
    name : str
        Argument name used in error messages.

    Returns
    -------
    torch.Tensor
        Float64 tensor of shape ``(t, p)`` with ``p`` the product of the trailing dims
        (``p = 1`` for a 1-D input).

    Raises
    ------
    ShapeError
        If ``x`` is 0-dimensional or has no samples.
    InvalidParameterError
        If ``x`` contains NaN or infinity.
    """
    x = torch.as_tensor(x)
    if x.dim() == 0 or x.shape[0] == 0:
        raise ShapeError(
            f"{name} must have shape (t, *) with at least one sample t >= 1; "
            f"got shape {tuple(x.shape)}. Pass one row per sample."
        )
    if x.is_floating_point() or x.is_complex():
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            first = tuple(int(i) for i in torch.nonzero(~finite)[0])
            raise InvalidParameterError(
                f"{name} contains NaN or infinity (first at index {first}); "
                "CKA needs finite representations. Check the model's activations."
            )
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _centre(x: torch.Tensor) -> torch.Tensor | None:
    """Centre the columns of ``x`` over the samples and rescale to unit max-abs.

    CKA is invariant to isotropic scaling, so the rescaling (by the largest absolute
    entry, before and after centring) changes nothing mathematically but avoids
    overflow and underflow. Subtracting the first row before taking column means does
    not change the centred matrix either, but makes a constant column *exactly* zero.

    Parameters
    ----------
    x : torch.Tensor
        Float64 matrix of shape ``(t, p)``.

    Returns
    -------
    torch.Tensor or None
        The centred, rescaled matrix ``(t, p)``, or ``None`` when the representation is
        constant over the samples (zero after centring).
    """
    scale = x.abs().max() if x.numel() else x.new_zeros(())
    if scale == 0:
        return None
    x = x / scale
    x = x - x[:1]
    x = x - x.mean(dim=0, keepdim=True)
    scale = x.abs().max()
    if scale == 0:
        return None
    return x / scale


def _normalised_gram(x: torch.Tensor) -> torch.Tensor:
    """Centred linear Gram matrix of ``x`` with unit Frobenius norm.

    Parameters
    ----------
    x : torch.Tensor
        Representation of shape ``(t, *)`` (already validated by :func:`_as_matrix`).

    Returns
    -------
    torch.Tensor
        Float64 ``(t, t)`` matrix ``K / ‖K‖_F`` with ``K = X̂ X̂ᵀ``; all zeros for a
        constant representation.
    """
    xc = _centre(x)
    t = x.shape[0]
    if xc is None:
        return x.new_zeros((t, t))
    gram = xc @ xc.T
    return gram / torch.linalg.matrix_norm(gram)


def _cka_centred(xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
    """Linear CKA of two centred matrices, using the cheaper of the two forms.

    Parameters
    ----------
    xc : torch.Tensor
        Centred float64 matrix ``(t, p_a)``, not identically zero.
    yc : torch.Tensor
        Centred float64 matrix ``(t, p_b)``, not identically zero.

    Returns
    -------
    torch.Tensor
        0-d float64 tensor in ``[0, 1]``.
    """
    t, p_a = xc.shape
    p_b = yc.shape[1]
    if t < p_a + p_b:  # Gram (HSIC) form: O(t² (p_a + p_b)).
        k = xc @ xc.T
        l_ = yc @ yc.T
        num = (k * l_).sum()
        den = torch.linalg.matrix_norm(k) * torch.linalg.matrix_norm(l_)
    else:  # Feature form: O(t (p_a + p_b)²).
        num = torch.linalg.matrix_norm(yc.T @ xc) ** 2
        den = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    return (num / den).clamp(0.0, 1.0)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA between two representations of the same samples (Eq. 2 of [1]_).

    Parameters
    ----------
    x : torch.Tensor
        Representation of shape ``(t, *)``: ``t`` samples; trailing dims are flattened
        to ``p_a`` features (a 1-D input is one feature).
    y : torch.Tensor
        Representation of shape ``(t, *)`` of the same ``t`` samples, flattened to
        ``p_b`` features. It is moved to ``x``'s device.

    Returns
    -------
    torch.Tensor
        0-d float64 tensor in ``[0, 1]`` on ``x``'s device. It is 0 when either
        representation is constant over the samples.

    Raises
    ------
    ShapeError
        If the sample counts differ (the message names both shapes), or an input has
        no sample dimension.
    InvalidParameterError
        If ``x`` or ``y`` contains NaN or infinity (the message names which).

    Notes
    -----
    Computed as ``<K, L>_F / (‖K‖_F ‖L‖_F)`` with ``K = X̂X̂ᵀ``, ``L = ŶŶᵀ`` (t, t) when
    ``t < p_a + p_b``, otherwise as ``‖ŶᵀX̂‖_F² / (‖X̂ᵀX̂‖_F ‖ŶᵀŶ‖_F)``.
    """
    xm = _as_matrix(x, "x")
    ym = _as_matrix(y, "y").to(xm.device)
    if xm.shape[0] != ym.shape[0]:
        raise ShapeError(
            f"x and y must hold the same number of samples t (first dim); got x of shape "
            f"{tuple(torch.as_tensor(x).shape)} and y of shape "
            f"{tuple(torch.as_tensor(y).shape)}. Compute both on the same inputs."
        )
    xc = _centre(xm)
    yc = _centre(ym)
    if xc is None or yc is None:
        return xm.new_zeros(())
    return _cka_centred(xc, yc)


def cka_cost_matrix(reps_a: Sequence[torch.Tensor], reps_b: Sequence[torch.Tensor]) -> torch.Tensor:
    """CLA cost matrix ``1 - CKA`` between two lists of layer representations (Eq. 3).

    Each representation's centred Gram matrix is computed (and normalised) once; the
    ``m * n`` CKA values are then one matrix product of the flattened Grams, so the
    pairwise part costs ``O(m n t²)`` with no recomputation.

    Parameters
    ----------
    reps_a : Sequence[torch.Tensor]
        ``m`` representations of model A's layers, each of shape ``(t, *)``.
    reps_b : Sequence[torch.Tensor]
        ``n`` representations of model B's layers, each of shape ``(t, *)`` (the same
        ``t`` samples as ``reps_a``).

    Returns
    -------
    torch.Tensor
        Float64 tensor of shape ``(m, n)`` with entry ``(i, j) = 1 - linear_cka(
        reps_a[i], reps_b[j])``, on the device of the first representation (CPU when
        both sequences are empty).

    Raises
    ------
    ShapeError
        If the representations do not all share the same number of samples ``t``.
    InvalidParameterError
        If a representation contains NaN or infinity (the message names which).
    """
    mats_a = [_as_matrix(r, f"reps_a[{i}]") for i, r in enumerate(reps_a)]
    mats_b = [_as_matrix(r, f"reps_b[{j}]") for j, r in enumerate(reps_b)]
    named = [(f"reps_a[{i}]", r) for i, r in enumerate(mats_a)]
    named += [(f"reps_b[{j}]", r) for j, r in enumerate(mats_b)]
    if not named:
        return torch.zeros((0, 0), dtype=torch.float64)
    first_name, first = named[0]
    for name, mat in named[1:]:
        if mat.shape[0] != first.shape[0]:
            raise ShapeError(
                f"All representations must hold the same number of samples t; "
                f"{first_name} has t={first.shape[0]} (shape {tuple(first.shape)} after "
                f"flattening) but {name} has t={mat.shape[0]} (shape {tuple(mat.shape)})."
            )
    device = first.device
    t = first.shape[0]
    grams_a = _stack_grams(mats_a, t, device)  # (m, t*t)
    grams_b = _stack_grams(mats_b, t, device)  # (n, t*t)
    cka = (grams_a @ grams_b.T).clamp(0.0, 1.0)  # (m, n)
    return 1.0 - cka


def _stack_grams(mats: list[torch.Tensor], t: int, device: torch.device) -> torch.Tensor:
    """Flattened unit-norm centred Gram matrices, one row per representation.

    Parameters
    ----------
    mats : list[torch.Tensor]
        ``k`` float64 matrices of shape ``(t, p_i)``.
    t : int
        Number of samples.
    device : torch.device
        Device to compute on.

    Returns
    -------
    torch.Tensor
        Float64 tensor of shape ``(k, t * t)``.
    """
    if not mats:
        return torch.zeros((0, t * t), dtype=torch.float64, device=device)
    return torch.stack([_normalised_gram(m.to(device)).reshape(-1) for m in mats])
