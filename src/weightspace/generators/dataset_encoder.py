"""D2NWG's set-based dataset encoder: per-class feature sets -> one dataset embedding.

D2NWG conditions weight generation on the dataset a model is meant for. For image
datasets the authors describe (OpenReview discussion of Section 3.3):

    *"We use CLIP to extract 512-dimensional features from images, grouped by class. Our
    Set Transformer processes these features (e.g., shape (1,10,5,512) for CIFAR-10 with
    5 images per class) to create fixed-size outputs while handling variable inputs. [...]
    This approach ensures consistent class-aware representations regardless of dataset
    size while maintaining permutation invariance."*

    *"For image datasets, we employ a Set Transformer to capture inter- and intra-class
    relationships."*

:class:`SetDatasetEncoder` implements that encoder with the blocks of
:mod:`weightspace.generators.set_transformer` (Lee et al., 2019) in two stages:

1. **Intra-class.** Each class's set of ``S`` feature vectors goes through ``depth``
   ISABs and a ``PMA_1``: one embedding per class, ``(B, K, S, d) -> (B, K, dim)``,
   invariant to the order of the samples within a class and independent of ``S``.
2. **Inter-class.** ``class_pooling`` picks how the ``K`` class embeddings become one
   vector ``(B, out_dim)``:

   * ``"ordered"`` (default): a learned embedding of the class slot ``k`` is added to
     class ``k``, a SAB mixes the classes, and the ``max_classes`` slots (absent ones
     zeroed) are flattened and mapped by a linear layer. The embedding depends on which
     class sits in which slot, which is what a generator of classifier heads needs:
     output unit ``j`` of the generated head belongs to class ``j``, so swapping two
     classes must change the condition.
   * ``"invariant"``: a SAB and a ``PMA_1`` over the classes, then a linear layer; the
     embedding does not depend on the order of the classes (use it when the generated
     weights do not have class-indexed outputs).

Variable numbers of samples per class use ``mask (B, K, S)`` and variable numbers of
classes (up to ``max_classes``) use ``class_mask (B, K)``; padded entries have no
influence on the embedding. The encoder is trained by contrastive alignment to the
frozen VAE latents (:mod:`weightspace.generators.alignment`) and then frozen: *"during
diffusion, only a single dense linear layer adapting the Set Transformer and the
diffusion model are optimized"*.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.generators.set_transformer import ISAB, PMA, SAB

__all__ = ["CLASS_POOLINGS", "DatasetEncoderConfig", "SetDatasetEncoder"]

CLASS_POOLINGS = ("ordered", "invariant")


@dataclass(frozen=True)
class DatasetEncoderConfig:
    """Hyper-parameters of :class:`SetDatasetEncoder`.

    Attributes
    ----------
    feature_dim : int
        ``d``, width of the per-sample features (512 for CLIP ViT-B/32 in D2NWG); 0 = "set
        from the data by the owner" (:class:`~weightspace.generators.d2nwg.D2NWG`), and no
        encoder can be built until it is set.
    dim : int
        Hidden width of the Set Transformer blocks; a multiple of ``heads``.
    heads : int
        Attention heads of every block.
    n_inducing : int
        Inducing points of each ISAB.
    depth : int
        Number of ISABs applied to each class's set before pooling.
    out_dim : int
        Width of the dataset embedding.
    class_pooling : str
        ``"ordered"`` (class-slot aware) or ``"invariant"`` (class-order invariant).
    max_classes : int
        Largest number of classes ``K`` a dataset may have.
    """

    feature_dim: int = 0
    dim: int = 64
    heads: int = 4
    n_inducing: int = 16
    depth: int = 2
    out_dim: int = 64
    class_pooling: str = "ordered"
    max_classes: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.feature_dim, bool) or not isinstance(self.feature_dim, int):
            raise InvalidParameterError(f"feature_dim must be an int, got {self.feature_dim!r}")
        if self.feature_dim < 0:
            raise InvalidParameterError(f"feature_dim must be >= 0, got {self.feature_dim}")
        for name in (
            "dim",
            "heads",
            "n_inducing",
            "depth",
            "out_dim",
            "max_classes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(
                    f"invalid dataset encoder parameter: {name} must be a positive integer, "
                    f"got {value!r}"
                )
        if self.dim % self.heads:
            raise InvalidParameterError(
                f"invalid dataset encoder parameter: dim={self.dim} must be a multiple of "
                f"heads={self.heads}"
            )
        if self.class_pooling not in CLASS_POOLINGS:
            raise InvalidParameterError(
                f"invalid dataset encoder parameter: class_pooling must be one of "
                f"{CLASS_POOLINGS}, got {self.class_pooling!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetEncoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidParameterError(
                f"unknown dataset encoder parameter(s) {sorted(unknown)}; valid keys are "
                f"{sorted(cls.__dataclass_fields__)}"
            )
        return cls(**dict(data))


class SetDatasetEncoder(nn.Module):
    """Set Transformer encoder of a dataset given as per-class feature sets.

    Parameters
    ----------
    config : DatasetEncoderConfig
        Architecture; kept as ``self.config``.
    """

    def __init__(self, config: DatasetEncoderConfig) -> None:
        super().__init__()
        if config.feature_dim < 1:
            raise InvalidParameterError(
                "DatasetEncoderConfig.feature_dim is not set (0): give the width of the "
                "per-sample features"
            )
        self.config = config
        c = config
        self.intra = nn.ModuleList(
            ISAB(c.feature_dim if i == 0 else c.dim, c.dim, c.heads, c.n_inducing)
            for i in range(c.depth)
        )
        self.intra_pool = PMA(c.dim, c.heads, 1)
        self.inter = SAB(c.dim, c.dim, c.heads)
        if c.class_pooling == "ordered":
            self.slot_embedding = nn.Parameter(torch.randn(c.max_classes, c.dim) * 0.02)
            self.out = nn.Linear(c.max_classes * c.dim, c.out_dim)
        else:
            self.inter_pool = PMA(c.dim, c.heads, 1)
            self.out = nn.Linear(c.dim, c.out_dim)

    @property
    def out_dim(self) -> int:
        """Width of the dataset embedding."""
        return self.config.out_dim

    def _check_inputs(
        self, x: torch.Tensor, mask: torch.Tensor | None, class_mask: torch.Tensor | None
    ) -> None:
        c = self.config
        if x.ndim != 4:
            raise ShapeError(
                "dataset encoder input must be per-class feature sets of shape (B, K, S, d), "
                f"e.g. (1, 10, 5, {c.feature_dim}); got {tuple(x.shape)}"
            )
        B, K, S, d = x.shape
        if d != c.feature_dim:
            raise ShapeError(
                f"dataset encoder expects features of width feature_dim={c.feature_dim}, got "
                f"{d}; set DatasetEncoderConfig.feature_dim to the feature extractor's width"
            )
        if c.max_classes < K:
            raise InvalidParameterError(
                f"dataset has K={K} classes but the encoder was built for max_classes="
                f"{c.max_classes}; set DatasetEncoderConfig.max_classes >= {K}"
            )
        if K == 0 or S == 0:
            raise InvalidParameterError(
                f"dataset encoder needs at least one class and one sample per class, got "
                f"K={K}, S={S}"
            )
        for name, m, shape in (("mask", mask, (B, K, S)), ("class_mask", class_mask, (B, K))):
            if m is None:
                continue
            if m.dtype != torch.bool or tuple(m.shape) != shape:
                raise ShapeError(
                    f"{name} must be a bool tensor of shape {shape} (True = real), got "
                    f"{m.dtype} {tuple(m.shape)}"
                )
        if class_mask is not None and not bool(class_mask.any(dim=1).all()):
            bad = (~class_mask.any(dim=1)).nonzero().flatten().tolist()
            raise InvalidParameterError(
                f"dataset(s) {bad} of the batch have no real class in class_mask; every "
                "dataset needs at least one class"
            )
        if mask is not None:
            real = class_mask if class_mask is not None else torch.ones_like(mask[..., 0])
            empty = real & ~mask.any(dim=2)
            if bool(empty.any()):
                b, k = empty.nonzero()[0].tolist()
                raise InvalidParameterError(
                    f"class {k} of dataset {b} in the batch has no samples (its mask row is "
                    "all False); give every real class at least one sample or mark the class "
                    "absent with class_mask[b, k] = False"
                )

    def encode_classes(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Stage 1: one embedding per class, invariant to the order of its samples.

        Parameters
        ----------
        x : Tensor, shape (B, K, S, d)
            Per-class feature sets.
        mask : Tensor of bool, shape (B, K, S), optional
            ``True`` for real samples; a class may have any number ``>= 1`` of them.

        Returns
        -------
        Tensor, shape (B, K, dim)
        """
        B, K, S, d = x.shape
        flat = x.reshape(B * K, S, d)
        m = None if mask is None else mask.reshape(B * K, S)
        if m is not None:
            flat = flat.masked_fill(~m[..., None], 0.0)
        h = flat
        for block in self.intra:
            h = block(h, m)
        return self.intra_pool(h, m).reshape(B, K, self.config.dim)

    def pool_classes(
        self, class_emb: torch.Tensor, class_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Stage 2: class embeddings -> dataset embedding.

        Parameters
        ----------
        class_emb : Tensor, shape (B, K, dim)
            Output of :meth:`encode_classes`; ``K <= max_classes``.
        class_mask : Tensor of bool, shape (B, K), optional
            ``True`` for real classes; absent classes have no influence.

        Returns
        -------
        Tensor, shape (B, out_dim)
            Depends on the class order in ``"ordered"`` mode, not in ``"invariant"`` mode.
        """
        c = self.config
        B, K, _ = class_emb.shape
        if c.max_classes < K:
            raise InvalidParameterError(
                f"got K={K} classes, more than max_classes={c.max_classes}; set "
                f"DatasetEncoderConfig.max_classes >= {K}"
            )
        if class_mask is not None:
            class_emb = class_emb.masked_fill(~class_mask[..., None], 0.0)
        if c.class_pooling == "ordered":
            h = self.inter(class_emb + self.slot_embedding[:K], class_mask)  # zero where absent
            slots = h.new_zeros(B, c.max_classes, c.dim)
            slots[:, :K] = h
            return self.out(slots.reshape(B, c.max_classes * c.dim))
        h = self.inter(class_emb, class_mask)
        return self.out(self.inter_pool(h, class_mask)[:, 0])

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        class_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed a batch of datasets.

        Parameters
        ----------
        x : Tensor, shape (B, K, S, d)
            ``S`` feature vectors (e.g. CLIP image features) of each of ``K`` classes.
            Class ``k`` is slot ``k``; keep the class order of the generated classifier
            heads in ``"ordered"`` mode.
        mask : Tensor of bool, shape (B, K, S), optional
            ``True`` for real samples (variable shots per class); ``None`` = all real.
        class_mask : Tensor of bool, shape (B, K), optional
            ``True`` for real classes (variable class counts up to ``max_classes``);
            ``None`` = all real.

        Returns
        -------
        Tensor, shape (B, out_dim)

        Raises
        ------
        ShapeError
            Wrong rank, feature width or mask shapes.
        InvalidParameterError
            ``K > max_classes``, or a real class without any real sample.
        """
        self._check_inputs(x, mask, class_mask)
        # Absent classes may have all-False sample masks: their all-padded attention is
        # NaN-free and their embeddings are dropped in stage 2.
        return self.pool_classes(self.encode_classes(x, mask), class_mask)
