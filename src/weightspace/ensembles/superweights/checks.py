"""Validation of the members of a SuperWeight ensemble (supplement Sec. 1.1).

Members read the same batch and are averaged class by class, so they must agree on the
input (stem) and the number of outputs (classifier); every parametrised layer must have a
SuperWeight form (Linear, Conv1d, Conv2d) or stay per member (BatchNorm, LayerNorm,
GroupNorm).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from weightspace.ensembles.superweights.plan import weight_layers
from weightspace.errors import (
    ArchitectureMismatchError,
    InvalidParameterError,
    UnsupportedLayerError,
)

__all__ = ["check_members"]

_NORMS = nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm


def _describe(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear):
        return f"nn.Linear with {layer.in_features} input features"
    return f"nn.{type(layer).__name__} with {layer.in_channels} input channels"


def check_members(members: Sequence[nn.Module]) -> None:
    """Raise unless ``members`` can form one SuperWeight ensemble.

    Raises
    ------
    InvalidParameterError
        No members, a non-module, or a member with fewer than three weight layers (a stem,
        at least one shared layer, a classifier).
    UnsupportedLayerError
        A parametrised layer other than Linear/Conv1d/Conv2d/BatchNorm/LayerNorm/GroupNorm
        (its path and type are named), or a grouped / non-zero-padded shared convolution.
    ArchitectureMismatchError
        Members whose stems take different inputs or whose classifiers give different
        numbers of outputs.
    """
    if not isinstance(members, Sequence) or len(members) == 0:
        raise InvalidParameterError("a SuperWeight ensemble needs a non-empty list of members")
    for m, member in enumerate(members):
        if not isinstance(member, nn.Module):
            raise InvalidParameterError(
                f"member {m} is a {type(member).__name__}, not an nn.Module"
            )
        for path, mod in member.named_modules():
            if isinstance(mod, nn.Linear | nn.Conv1d | nn.Conv2d | _NORMS):
                continue
            if any(True for _ in mod.parameters(recurse=False)):
                raise UnsupportedLayerError(
                    f"member {m}, layer {path or '<root>'!r}: {type(mod).__name__} has "
                    "parameters but no SuperWeight form; supported: nn.Linear, nn.Conv1d, "
                    "nn.Conv2d (composed from templates) and BatchNorm/LayerNorm/GroupNorm "
                    "(per member)"
                )
        layers = weight_layers(member)
        if len(layers) < 3:
            raise InvalidParameterError(
                f"member {m} has {len(layers)} Linear/Conv layers; SuperWeights keep the first "
                "(stem) and the last (classifier) per member and need at least one more to "
                "share. Use deeper members (e.g. resnet, or vgg with two stages)"
            )
        for path, layer in layers[1:-1]:
            if isinstance(layer, nn.Conv1d | nn.Conv2d) and (
                layer.groups != 1 or layer.padding_mode != "zeros"
            ):
                raise UnsupportedLayerError(
                    f"member {m}, layer {path!r}: {type(layer).__name__} with groups="
                    f"{layer.groups}, padding_mode={layer.padding_mode!r} is not supported; "
                    "only groups=1 convolutions with zero padding are composed from templates"
                )
    stems = [weight_layers(member)[0] for member in members]
    heads = [weight_layers(member)[-1] for member in members]
    for m in range(1, len(members)):
        (p0, s0), (pm, sm) = stems[0], stems[m]
        in0 = s0.in_features if isinstance(s0, nn.Linear) else s0.in_channels
        inm = sm.in_features if isinstance(sm, nn.Linear) else sm.in_channels
        if type(s0) is not type(sm) or in0 != inm:
            raise ArchitectureMismatchError(
                f"members take inputs of different sizes: member 0's stem {p0!r} is an "
                f"{_describe(s0)}, member {m}'s stem {pm!r} an {_describe(sm)}; all members "
                "of an ensemble read the same batch, so build them for one input_shape"
            )
        out0, outm = heads[0][1].weight.shape[0], heads[m][1].weight.shape[0]
        if out0 != outm:
            raise ArchitectureMismatchError(
                f"members give different numbers of outputs: member 0's classifier "
                f"{heads[0][0]!r} has {out0}, member {m}'s {heads[m][0]!r} has {outm}; "
                "build every member with the same n_classes"
            )
