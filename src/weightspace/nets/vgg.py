"""VGG-style CNN: stages of 3x3 ``conv -> [BN] -> ReLU`` separated by 2x max pooling.

The convolutional stages live in ``features`` and the classifier in ``classifier`` (both
:class:`torch.nn.Sequential`), as in torchvision's VGG, so fusion code treats channels as
neurons and the max-pooling layers as the group boundaries used by CLAFusion.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from weightspace.errors import InvalidParameterError
from weightspace.nets.conv import (
    batch_norm,
    check_norm,
    conv,
    global_avg_pool,
    is_positive_int,
    max_pool,
    spatial_dims,
)


def _is_nested_positive(stages: object) -> bool:
    return (
        isinstance(stages, Sequence)
        and len(stages) > 0
        and all(
            isinstance(s, Sequence) and len(s) > 0 and all(is_positive_int(c) for c in s)
            for s in stages
        )
    )


class VGG(nn.Module):
    """VGG-style classifier.

    Parameters
    ----------
    input_shape : sequence of int
        ``(C, L)`` or ``(C, H, W)``.
    n_classes : int
        Number of logits.
    stages : sequence of sequence of int
        Output channels of each conv in each stage; a 2x max pool follows every stage
        while the spatial size allows it (>= 2), then global average pooling.
    hidden : sequence of int
        Widths of hidden linear layers in the classifier head.
    norm : {"none", "batch"}
        Whether each conv is followed by BatchNorm.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        stages: Sequence[Sequence[int]] = ((8,), (16,)),
        hidden: Sequence[int] = (),
        norm: str = "none",
    ) -> None:
        super().__init__()
        nd = spatial_dims(input_shape)
        check_norm(norm)
        if not _is_nested_positive(stages):
            raise InvalidParameterError(
                f"vgg stages must be non-empty lists of positive channel counts, got "
                f"{stages!r}; e.g. stages: [[8], [16, 16]]"
            )
        if not all(is_positive_int(w) for w in hidden):
            raise InvalidParameterError(
                f"vgg hidden widths must be positive integers, got {hidden!r}"
            )
        layers: list[nn.Module] = []
        c_prev, size = int(input_shape[0]), min(int(s) for s in input_shape[1:])
        for stage in stages:
            for c in stage:
                layers.append(conv(nd, c_prev, int(c), bias=norm == "none"))
                if norm == "batch":
                    layers.append(batch_norm(nd, int(c)))
                layers.append(nn.ReLU())
                c_prev = int(c)
            if size >= 2:
                layers.append(max_pool(nd))
                size //= 2
        layers.append(global_avg_pool(nd))
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            head += [nn.Linear(c_prev, int(width)), nn.ReLU()]
            c_prev = int(width)
        head.append(nn.Linear(c_prev, n_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_classes)`` of inputs ``(N, *input_shape)``."""
        return self.classifier(self.features(x))
