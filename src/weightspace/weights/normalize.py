r"""Per-layer normalization of weight matrices.

Weights of different layers live on very different scales (a BatchNorm
``running_var`` near 1, a late conv kernel near 1e-2), so a generator trained on raw
vectors spends its capacity on the large layers. D2NWG's VAE is trained on chunks that
mix layers (Section 3.2, layer-/model-wise chunking), so every layer is first mapped to
zero mean and unit variance with statistics fitted on the training zoo:

.. math::

    \tilde w_{i,j} = (w_{i,j} - \mu_{\ell(j)}) / \sigma_{\ell(j)}

where ``l(j)`` is the layer of column ``j`` and the statistics are taken over all models
and all elements of the layer (``mode="layer"``), or per column over the models
(``mode="element"``). Degenerate statistics (``sigma <= eps``, e.g. a zoo of one model
or a constant layer) use ``sigma = 1`` so the map only centres and never divides by zero.

Statistics are computed and applied in float64, so ``invert(apply(x))`` equals ``x`` up
to the rounding of the output dtype (a few float32 ulps of ``x - mu``), while
vectorization and chunking are bit-exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from weightspace.errors import (
    CheckpointMismatchError,
    EmptyZooError,
    InvalidParameterError,
    NonFiniteWeightsError,
    ShapeError,
)
from weightspace.weights.spec import ParameterSpec

MODES = ("layer", "element")


@dataclass(frozen=True, eq=False)
class LayerNormalizer:
    """Fitted per-layer (or per-element) affine normalization of ``(N, D)`` matrices.

    Build it with :meth:`fit`.

    Attributes
    ----------
    spec_fingerprint : str
        Fingerprint of the spec the statistics belong to.
    mode : str
        ``"layer"``: one mean/std per layer; ``"element"``: one per column.
    mean : Tensor, float64, shape (L,) or (D,)
    std : Tensor, float64, shape (L,) or (D,)
        Population standard deviation as fitted (before the ``eps`` rule).
    layer_numel : tuple of int
        Elements of each layer in vector order (``L`` layers, summing to ``D``).
    eps : float
        Standard deviations ``<= eps`` are replaced by 1 when scaling.
    """

    spec_fingerprint: str
    mode: str
    mean: torch.Tensor
    std: torch.Tensor
    layer_numel: tuple[int, ...]
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidParameterError(f"mode must be one of {MODES}, got {self.mode!r}")
        object.__setattr__(self, "layer_numel", tuple(int(n) for n in self.layer_numel))
        size = len(self.layer_numel) if self.mode == "layer" else sum(self.layer_numel)
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (size,):
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise ShapeError(
                    f"LayerNormalizer.{name} must have shape ({size},) for mode={self.mode!r}, "
                    f"got {got}"
                )
            object.__setattr__(self, name, value.detach().to(torch.float64))
        if not (float(self.eps) >= 0.0):
            raise InvalidParameterError(f"eps must be >= 0, got {self.eps!r}")
        object.__setattr__(self, "eps", float(self.eps))

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        matrix: torch.Tensor,
        spec: ParameterSpec,
        eps: float = 1e-8,
        mode: str = "layer",
    ) -> LayerNormalizer:
        """Fit the statistics on a zoo.

        Parameters
        ----------
        matrix : Tensor, shape (N, D)
            Model-wise vectors of the training models.
        spec : ParameterSpec
        eps : float
            Standard deviations ``<= eps`` count as zero (scale 1).
        mode : {"layer", "element"}

        Returns
        -------
        LayerNormalizer
        """
        if mode not in MODES:
            raise InvalidParameterError(f"mode must be one of {MODES}, got {mode!r}")
        _check(matrix, spec.numel)
        if matrix.shape[0] == 0:
            raise EmptyZooError("cannot fit normalization statistics on 0 models")
        finite = bool(torch.isfinite(matrix.sum())) or bool(torch.isfinite(matrix).all())
        if not finite:
            raise NonFiniteWeightsError(
                "the matrix to fit normalization statistics on contains NaN or inf; run "
                "vectorize (which names the offending parameter and model) and drop those "
                "models first"
            )
        layer_numel = tuple(spec.layer_numel(layer) for layer in spec.layers)
        if mode == "element":
            var, mean = torch.var_mean(matrix.detach().to(torch.float64), dim=0, correction=0)
            std = var.sqrt()
        else:
            means, stds = [], []
            for layer in spec.layers:
                block = matrix[:, spec.layer_slices[layer]].detach().to(torch.float64)
                if block.numel() == 0:
                    means.append(block.new_zeros(()))
                    stds.append(block.new_zeros(()))
                    continue
                var, mu = torch.var_mean(block, correction=0)
                means.append(mu)
                stds.append(var.sqrt())
            mean = torch.stack(means)
            std = torch.stack(stds)
        return cls(spec.fingerprint, mode, mean.cpu(), std.cpu(), layer_numel, eps)

    # ------------------------------------------------------------------ maps
    @property
    def scale(self) -> torch.Tensor:
        """Divisor actually used: ``std`` where ``std > eps``, else 1 (float64)."""
        return torch.where(self.std > self.eps, self.std, torch.ones_like(self.std))

    @property
    def total_numel(self) -> int:
        """``D``."""
        return sum(self.layer_numel)

    def apply(self, matrix: torch.Tensor) -> torch.Tensor:
        """Normalize: ``(x - mean) / scale``.

        Parameters
        ----------
        matrix : Tensor, shape (N, D)

        Returns
        -------
        Tensor, shape (N, D)
            Same dtype and device as ``matrix``.
        """
        return self._affine(matrix, forward=True)

    def invert(self, matrix: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`apply`: ``x * scale + mean``.

        Parameters
        ----------
        matrix : Tensor, shape (N, D)

        Returns
        -------
        Tensor, shape (N, D)
            Same dtype and device as ``matrix``.
        """
        return self._affine(matrix, forward=False)

    def _affine(self, matrix: torch.Tensor, forward: bool) -> torch.Tensor:
        _check(matrix, self.total_numel)
        mean = self.mean.to(matrix.device)
        scale = self.scale.to(matrix.device)
        if self.mode == "element":
            return _affine_(matrix.to(torch.float64, copy=True), mean, scale, forward).to(
                matrix.dtype
            )
        out = torch.empty_like(matrix)
        stop = 0
        for i, n in enumerate(self.layer_numel):
            start, stop = stop, stop + n
            x = matrix[:, start:stop].to(torch.float64, copy=True)
            out[:, start:stop] = _affine_(x, mean[i], scale[i], forward)
        return out

    def check_spec(self, spec: ParameterSpec) -> None:
        """Raise :class:`CheckpointMismatchError` unless fitted for ``spec``."""
        if spec.fingerprint != self.spec_fingerprint:
            raise CheckpointMismatchError(
                f"normalization statistics were fitted for parameter spec "
                f"{self.spec_fingerprint[:12]}..., not for {spec.fingerprint[:12]}...: refit "
                "them with LayerNormalizer.fit on a zoo of this architecture"
            )

    # ------------------------------------------------------------------ storage
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-ready).

        Keys: ``mean``, ``std`` (float64), ``layer_numel`` (int64, (L,)), ``eps``
        (float64, ()), ``per_element`` (bool, ()), ``spec_fingerprint`` (uint8, (32,):
        the SHA-256 digest bytes).
        """
        return {
            "mean": self.mean.clone(),
            "std": self.std.clone(),
            "layer_numel": torch.tensor(self.layer_numel, dtype=torch.int64),
            "eps": torch.tensor(self.eps, dtype=torch.float64),
            "per_element": torch.tensor(self.mode == "element"),
            "spec_fingerprint": torch.tensor(
                list(bytes.fromhex(self.spec_fingerprint)), dtype=torch.uint8
            ),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> LayerNormalizer:
        """Inverse of :meth:`state_dict`."""
        keys = ("mean", "std", "layer_numel", "eps", "per_element", "spec_fingerprint")
        missing = [k for k in keys if k not in state]
        if missing:
            raise CheckpointMismatchError(
                f"normalization state lacks {missing}; it was not written by "
                "LayerNormalizer.state_dict"
            )
        return cls(
            spec_fingerprint=bytes(state["spec_fingerprint"].to(torch.uint8).tolist()).hex(),
            mode="element" if bool(state["per_element"]) else "layer",
            mean=state["mean"],
            std=state["std"],
            layer_numel=tuple(int(n) for n in state["layer_numel"].tolist()),
            eps=float(state["eps"]),
        )


def _affine_(
    x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, forward: bool
) -> torch.Tensor:
    """In place on a float64 copy: ``(x - mean) / scale`` or ``x * scale + mean``."""
    return x.sub_(mean).div_(scale) if forward else x.mul_(scale).add_(mean)


def _check(matrix: torch.Tensor, width: int) -> None:
    if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2 or matrix.shape[1] != width:
        got = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__
        raise ShapeError(f"expected a matrix of shape (N, {width}), got {got}")
    if not matrix.is_floating_point():
        raise ShapeError(f"expected a floating-point matrix, got {matrix.dtype}")
