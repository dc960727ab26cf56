"""Input transformations that turn one dataset into related datasets.

Weight-space methods are trained and evaluated on zoos fitted to *many related tasks*
(D2NWG, Sect. 4.1: classifier heads over many dataset subsets, evaluated on unseen ones).
Besides class subsets (:mod:`weightspace.data.tasks`), a controlled way to make related
tasks is to transform the inputs. Every transform here is a pure function

    ``f(x: Tensor (N, *input_shape), param: float, seed: int) -> Tensor (N, *input_shape')``

that never modifies ``x`` and is deterministic in ``(x, param, seed)``:

=========  ===================================  =========================================
name       ``param``                            ``seed``
=========  ===================================  =========================================
rotate     angle in degrees, counter-clockwise  unused
shift      integer number of positions          unused
permute    unused (must be 0)                   draws the feature permutation
noise      standard deviation (>= 0)            draws the noise
invert     unused (must be 0)                   unused
=========  ===================================  =========================================

:data:`TRANSFORMS` maps names to functions; :func:`apply_transform` looks one up.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from weightspace.errors import InvalidParameterError, ShapeError, UnknownDatasetError

Transform = Callable[..., Tensor]


def _check_batch(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim < 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ShapeError(f"{name} expects x of shape (N, *input_shape), got {shape}.")


def _no_param(name: str, param: float) -> None:
    if float(param) != 0.0:
        raise InvalidParameterError(
            f"transform {name!r} takes no parameter; set transform_param to 0 (got {param})."
        )


def rotate(x: Tensor, param: float, seed: int = 0) -> Tensor:
    """Rotate 2-D images counter-clockwise by ``param`` degrees about their centre.

    Multiples of 90 degrees are exact (``torch.rot90``; for non-square images a quarter
    turn swaps height and width). Other angles resample with bilinear interpolation and
    zero padding, keeping the shape; corners that come from outside the image become 0.

    Parameters
    ----------
    x : Tensor, shape (N, C, H, W)
        Images.
    param : float
        Angle in degrees; positive turns counter-clockwise as the image is displayed
        (row 0 at the top).
    seed : int
        Unused.

    Returns
    -------
    Tensor, shape (N, C, H, W), or (N, C, W, H) for odd quarter turns
    """
    del seed
    _check_batch("rotate", x)
    if x.ndim != 4:
        raise InvalidParameterError(
            f"rotate needs 2-D images of shape (N, C, H, W), got shape {tuple(x.shape)}; "
            f"for 1-D signals use the 'shift' transform instead."
        )
    angle = float(param)
    if not math.isfinite(angle):
        raise InvalidParameterError(f"rotate angle must be finite, got {param}.")
    if angle % 90.0 == 0.0:
        return torch.rot90(x, int(angle // 90.0) % 4, dims=(-2, -1)).contiguous()
    return _rotate_resample(x, angle)


def _rotate_resample(x: Tensor, angle: float) -> Tensor:
    """Bilinear rotation by ``angle`` degrees; exact on pixel centres for quarter turns.

    ``affine_grid`` maps each output location p (normalized to [-1, 1] per axis) to the
    input location R p it samples. In pixel units (``u = x W / 2``, ``v = y H / 2``) a
    counter-clockwise turn by ``a`` is ``u_in = cos a u - sin a v``,
    ``v_in = sin a u + cos a v``; back in normalized units this gives the matrix below.
    """
    height, width = x.shape[-2], x.shape[-1]
    rad = math.radians(angle)
    cos, sin = math.cos(rad), math.sin(rad)
    theta = torch.tensor(
        [[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]],
        dtype=x.dtype,
        device=x.device,
    ).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def shift(x: Tensor, param: float, seed: int = 0) -> Tensor:
    """Shift every sample circularly along its last axis by ``param`` positions.

    Parameters
    ----------
    x : Tensor, shape (N, *input_shape)
    param : float
        Integer shift (a float with no fractional part is accepted); positive moves
        values towards higher indices. ``shift(shift(x, k), -k) == x``.
    seed : int
        Unused.

    Returns
    -------
    Tensor, shape (N, *input_shape)
    """
    del seed
    _check_batch("shift", x)
    steps = float(param)
    if not steps.is_integer():
        raise InvalidParameterError(f"shift needs an integer number of positions, got {param}.")
    return torch.roll(x, shifts=int(steps), dims=-1)


def feature_permutation(n_features: int, seed: int) -> Tensor:
    """The permutation :func:`permute` applies for ``seed``.

    Parameters
    ----------
    n_features : int
        Number of features per sample, ``prod(input_shape)``.
    seed : int
        Seed of a CPU ``torch.Generator``; same seed, same permutation.

    Returns
    -------
    Tensor, shape (n_features,), int64
        ``perm`` such that output feature ``i`` is input feature ``perm[i]``; its inverse
        is ``torch.argsort(perm)``.
    """
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(int(n_features), generator=generator)


def permute(x: Tensor, param: float = 0.0, seed: int = 0) -> Tensor:
    """Apply one fixed permutation of the features (pixels) to every sample.

    Parameters
    ----------
    x : Tensor, shape (N, *input_shape)
    param : float
        Unused; must be 0.
    seed : int
        Selects the permutation, see :func:`feature_permutation`.

    Returns
    -------
    Tensor, shape (N, *input_shape)
        ``out.flatten(1) == x.flatten(1)[:, perm]``.
    """
    _check_batch("permute", x)
    _no_param("permute", param)
    flat = x.reshape(x.shape[0], -1)
    perm = feature_permutation(flat.shape[1], seed).to(x.device)
    return flat[:, perm].reshape(x.shape)


def noise(x: Tensor, param: float, seed: int = 0) -> Tensor:
    """Add Gaussian noise of standard deviation ``param``, drawn from ``seed``.

    Parameters
    ----------
    x : Tensor, shape (N, *input_shape)
    param : float
        Standard deviation, >= 0 (0 returns a copy of ``x``).
    seed : int
        Seed of a CPU ``torch.Generator``; the noise depends only on ``seed`` and
        ``x.shape``, not on the device.

    Returns
    -------
    Tensor, shape (N, *input_shape)
        ``x + param * eps`` with ``eps ~ N(0, 1)``; no clipping.
    """
    _check_batch("noise", x)
    std = float(param)
    if not math.isfinite(std) or std < 0:
        raise InvalidParameterError(f"noise std must be a finite number >= 0, got {param}.")
    generator = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x + std * eps.to(x.device)


def value_range(x: Tensor) -> tuple[Tensor, Tensor]:
    """The range :func:`invert` reflects ``x`` in when none is given.

    Parameters
    ----------
    x : Tensor, shape (N, *input_shape)

    Returns
    -------
    low, high : Tensor, shape () or input_shape
        ``(0, 1)`` as scalars if every value of ``x`` lies in [0, 1]; otherwise the
        per-feature minimum and maximum over the samples.
    """
    _check_batch("invert", x)
    if x.numel() == 0 or (bool((x >= 0).all()) and bool((x <= 1).all())):
        return torch.zeros((), dtype=x.dtype), torch.ones((), dtype=x.dtype)
    return x.amin(dim=0), x.amax(dim=0)


def invert(
    x: Tensor,
    param: float = 0.0,
    seed: int = 0,
    *,
    bounds: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Reflect values within their range: ``x -> low + high - x``.

    For data in [0, 1] (images) this is the photographic negative ``1 - x``. For other
    data (e.g. standardized MNIST-1D) each feature is reflected within its own range
    ``[min, max]`` over the samples, which maps that range onto itself. Reflection is an
    involution: inverting twice with the same bounds returns ``x``.

    Parameters
    ----------
    x : Tensor, shape (N, *input_shape)
    param : float
        Unused; must be 0.
    seed : int
        Unused.
    bounds : (Tensor, Tensor), optional
        ``(low, high)`` broadcastable to ``input_shape``; defaults to
        :func:`value_range` of ``x``. :func:`weightspace.data.make_task` passes the
        training split's range so that all three splits are reflected identically.

    Returns
    -------
    Tensor, shape (N, *input_shape)
    """
    del seed
    _check_batch("invert", x)
    _no_param("invert", param)
    low, high = value_range(x) if bounds is None else bounds
    return (low.to(x) + high.to(x)) - x


TRANSFORMS: dict[str, Transform] = {
    "rotate": rotate,
    "shift": shift,
    "permute": permute,
    "noise": noise,
    "invert": invert,
}
"""Registered transforms by name."""

PER_SPLIT_RANDOM: frozenset[str] = frozenset({"noise"})
"""Transforms whose randomness must be drawn independently for each split.

The others use the same seed for train, val and test (e.g. one permutation for all).
"""


def fit_transform_kwargs(name: str, x_train: Tensor) -> dict[str, object]:
    """Statistics a transform takes from the training split, as keyword arguments.

    Applying the transform with these to train, val and test transforms all three the
    same way (e.g. ``invert`` reflects every split within the *training* range).

    Parameters
    ----------
    name : str
        A key of :data:`TRANSFORMS`.
    x_train : Tensor, shape (N, *input_shape)
        Inputs of the training split.

    Returns
    -------
    dict
        Empty for transforms that need nothing; ``{"bounds": (low, high)}`` for
        ``invert``.
    """
    get_transform(name)
    if name == "invert":
        return {"bounds": value_range(x_train)}
    return {}


def get_transform(name: str) -> Transform:
    """Return the transform registered as ``name``.

    Raises
    ------
    UnknownDatasetError
        If ``name`` is not in :data:`TRANSFORMS`; the message lists the known names.
    """
    try:
        return TRANSFORMS[name]
    except (KeyError, TypeError):
        raise UnknownDatasetError(
            f"Unknown transform {name!r}; known transforms: {', '.join(sorted(TRANSFORMS))}. "
            f"To add one, write f(x, param, seed) -> Tensor in weightspace/data/transforms.py "
            f"and register it in TRANSFORMS."
        ) from None


def apply_transform(name: str, x: Tensor, param: float = 0.0, seed: int = 0, **kwargs) -> Tensor:
    """Apply the transform ``name`` to ``x``.

    Parameters
    ----------
    name : str
        A key of :data:`TRANSFORMS`.
    x : Tensor, shape (N, *input_shape)
    param : float
        The transform's parameter (see the module table).
    seed : int
        The transform's seed.
    **kwargs
        Extra keyword arguments of that transform (e.g. ``bounds`` for ``invert``).

    Returns
    -------
    Tensor, shape (N, *input_shape')
    """
    return get_transform(name)(x, param, seed, **kwargs)
