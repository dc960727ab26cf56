"""Multi-layer perceptron: ``Flatten -> (Linear -> ReLU) * depth -> Linear``.

Kept as a plain :class:`torch.nn.Sequential` so that fusion and weight-space code can
walk its layers in order: index ``0`` is the flatten and the linear layers sit at the
odd indices ``1, 3, 5, ...``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from weightspace.errors import InvalidParameterError


def build_mlp(
    input_shape: Sequence[int],
    n_classes: int,
    hidden: Sequence[int] = (32,),
    bias: bool = True,
) -> nn.Sequential:
    """Build an MLP classifier.

    Parameters
    ----------
    input_shape : sequence of int
        Shape of one input sample, e.g. ``(1, 8, 8)``; it is flattened.
    n_classes : int
        Number of output logits.
    hidden : sequence of int
        Widths of the hidden layers; ``()`` gives a linear classifier.
    bias : bool
        Whether linear layers carry a bias.

    Returns
    -------
    torch.nn.Sequential
        ``Flatten, Linear, ReLU, ..., Linear``; state-dict keys are ``"1.weight"``,
        ``"1.bias"``, ``"3.weight"``, ... (odd indices are linear layers).
    """
    widths = [int(w) for w in hidden]
    if any(w <= 0 for w in widths):
        raise InvalidParameterError(
            f"mlp hidden widths must be positive integers, got {list(hidden)}; "
            "set e.g. hidden: [64, 32]"
        )
    in_features = math.prod(int(s) for s in input_shape)
    layers: list[nn.Module] = [nn.Flatten()]
    prev = in_features
    for width in widths:
        layers += [nn.Linear(prev, width, bias=bias), nn.ReLU()]
        prev = width
    layers.append(nn.Linear(prev, n_classes, bias=bias))
    return nn.Sequential(*layers)
