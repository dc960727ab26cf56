"""The layer structure that OTFusion and CLAFusion read off a model.

Fusion works on three architecture families (CLAFusion §3.1, "CLA for CNN"):

- ``"mlp"``: a plain :class:`torch.nn.Sequential` of ``[Flatten,] Linear, ReLU, ...,
  Linear`` (the registry's ``mlp`` or a user's own stack);
- ``"vgg"``: :class:`weightspace.nets.vgg.VGG` (channels are neurons, BatchNorm follows its
  conv, the max-pooling layers separate the groups that cross-layer alignment matches);
- ``"resnet"``: :class:`weightspace.nets.resnet.ResNet` (every layer that writes into a
  residual stream shares that stream's neuron group, so one alignment is applied along
  it; CLA aligns blocks within a stage).

:func:`describe` returns a :class:`Structure`: the weight layers in forward order with
the *neuron group* of their inputs and outputs (the unit OTFusion aligns with one
transport map), and the *alignment groups* (the hidden layers or blocks CLA matches, each
with the module whose output is its pre-activation representation).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from weightspace.errors import ArchitectureMismatchError, UnsupportedLayerError
from weightspace.nets.resnet import BasicBlock, ResNet
from weightspace.nets.vgg import VGG

OUTPUT = "output"
"""Neuron group of the class logits: never permuted (the output stays aligned to classes)."""

_CONV = (nn.Conv1d, nn.Conv2d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_POOL = (nn.MaxPool1d, nn.MaxPool2d)
_GAP = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)


@dataclass(frozen=True)
class NeuronLayer:
    """One weight layer (``Linear`` or ``Conv``) in forward order.

    Attributes
    ----------
    path : str
        Module path of the layer (``"3"``, ``"features.0"``, ``"layers.1.conv2"``).
    kind : {"linear", "conv"}
    in_group : str or None
        Neuron group of its inputs; ``None`` for the network input (never aligned).
    out_group : str
        Neuron group of its outputs; :data:`OUTPUT` for the logits.
    norm : str or None
        Path of the BatchNorm that normalises its output, if any.
    preact : str
        Path of the module whose output is the layer's pre-activation (the BatchNorm if
        present, else the layer itself).
    """

    path: str
    kind: str
    in_group: str | None
    out_group: str
    norm: str | None
    preact: str


@dataclass(frozen=True)
class AlignGroup:
    """Hidden layers (MLP, VGG) or blocks (ResNet) that cross-layer alignment matches.

    Attributes
    ----------
    kind : {"linear", "conv", "block"}
    units : tuple of str
        Module paths of the layers or blocks, in forward order.
    preacts : tuple of str
        For each unit, the module whose output is its representation (pre-activation of
        a layer; for a block, the output of its second conv's normalisation).
    """

    kind: str
    units: tuple[str, ...]
    preacts: tuple[str, ...]


@dataclass(frozen=True)
class Structure:
    """What fusion needs to know about one model."""

    family: str
    layers: tuple[NeuronLayer, ...]
    align_groups: tuple[AlignGroup, ...]

    @property
    def groups(self) -> tuple[str, ...]:
        """Hidden neuron groups in the order their first writer appears."""
        seen: dict[str, None] = {}
        for layer in self.layers:
            if layer.out_group != OUTPUT:
                seen.setdefault(layer.out_group)
        return tuple(seen)

    def writers(self, group: str) -> tuple[NeuronLayer, ...]:
        """Layers whose outputs live in ``group``."""
        return tuple(lay for lay in self.layers if lay.out_group == group)

    @property
    def depths(self) -> tuple[int, ...]:
        """Number of units in each alignment group."""
        return tuple(len(g.units) for g in self.align_groups)


def family_of(model: nn.Module) -> str:
    """``"mlp"``, ``"vgg"`` or ``"resnet"``; :class:`UnsupportedLayerError` otherwise."""
    if isinstance(model, VGG):
        return "vgg"
    if isinstance(model, ResNet):
        return "resnet"
    if isinstance(model, nn.Sequential):
        return "mlp"
    raise UnsupportedLayerError(
        f"cannot fuse a {type(model).__name__}: fusion takes plain nn.Sequential stacks of "
        "Flatten/Linear/ReLU and the registry's 'vgg' and 'resnet' architectures"
    )


def _unsupported(where: str, module: nn.Module, allowed: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"layer {where} is a {type(module).__name__}, which fusion does not support here; "
        f"allowed: {allowed}"
    )


def _linear_chain(
    seq: nn.Sequential, prefix: str, in_group: str | None, tag: str, allow_flatten: str
) -> tuple[list[NeuronLayer], list[str]]:
    """Layers of a ``[Flatten,] Linear, ReLU, ..., Linear`` chain; the last is the output."""
    allowed = f"{allow_flatten}Linear, ReLU (alternating, ending with Linear)"
    mods = list(seq.named_children())
    linears: list[str] = []
    expect_linear = True
    for i, (name, mod) in enumerate(mods):
        where = f"'{prefix}{name}'"
        if isinstance(mod, nn.Flatten) and i == 0 and allow_flatten:
            continue
        if isinstance(mod, nn.Linear) and expect_linear:
            linears.append(prefix + name)
            expect_linear = False
        elif isinstance(mod, nn.ReLU) and not expect_linear:
            expect_linear = True
        else:
            raise _unsupported(where, mod, allowed)
    if not linears or expect_linear:
        raise UnsupportedLayerError(
            f"the linear stack {prefix or 'model'} must end with a Linear output layer "
            f"(got {[type(m).__name__ for _, m in mods]})"
        )
    layers, group = [], in_group
    for j, path in enumerate(linears):
        out = OUTPUT if j == len(linears) - 1 else f"{tag}{j}"
        layers.append(NeuronLayer(path, "linear", group, out, None, path))
        group = out
    return layers, linears[:-1]


def _describe_mlp(model: nn.Sequential) -> Structure:
    layers, hidden = _linear_chain(model, "", None, "h", "Flatten (first), ")
    return Structure("mlp", tuple(layers), (AlignGroup("linear", tuple(hidden), tuple(hidden)),))


def _describe_vgg(model: VGG) -> Structure:
    layers: list[NeuronLayer] = []
    groups: list[AlignGroup] = []
    units: list[str] = []
    preacts: list[str] = []
    group: str | None = None
    mods = list(model.features.named_children())
    for i, (name, mod) in enumerate(mods):
        path = f"features.{name}"
        if isinstance(mod, _CONV):
            nxt = mods[i + 1][1] if i + 1 < len(mods) else None
            norm = f"features.{mods[i + 1][0]}" if isinstance(nxt, _BN) else None
            out = f"c{len(layers)}"
            layers.append(NeuronLayer(path, "conv", group, out, norm, norm or path))
            units.append(path)
            preacts.append(norm or path)
            group = out
        elif isinstance(mod, _POOL + _GAP):
            if units:
                groups.append(AlignGroup("conv", tuple(units), tuple(preacts)))
            units, preacts = [], []
        elif not isinstance(mod, (*_BN, nn.ReLU)):
            raise _unsupported(f"'{path}'", mod, "Conv, BatchNorm, ReLU, MaxPool, AvgPool")
    if units:
        groups.append(AlignGroup("conv", tuple(units), tuple(preacts)))
    head, hidden = _linear_chain(model.classifier, "classifier.", group, "f", "Flatten (first), ")
    groups.append(AlignGroup("linear", tuple(hidden), tuple(hidden)))
    return Structure("vgg", tuple(layers + head), tuple(groups))


def _norm_path(block: nn.Module, prefix: str, name: str) -> str | None:
    return f"{prefix}.{name}" if isinstance(getattr(block, name), _BN) else None


def _describe_resnet(model: ResNet) -> Structure:
    stem_conv, stem_norm = model.stem[0], model.stem[1]
    if not isinstance(stem_conv, _CONV):
        raise _unsupported("'stem.0'", stem_conv, "Conv")
    norm = "stem.1" if isinstance(stem_norm, _BN) else None
    layers = [NeuronLayer("stem.0", "conv", None, "s0", norm, norm or "stem.0")]
    stream, n_streams = "s0", 1
    groups: list[AlignGroup] = []
    units: list[str] = []
    for i, block in enumerate(model.layers):
        p = f"layers.{i}"
        if not isinstance(block, BasicBlock):
            raise _unsupported(f"'{p}'", block, "BasicBlock")
        projection = not isinstance(block.shortcut, nn.Identity)
        in_stream = stream
        if projection:
            if units:
                groups.append(_block_group(units))
            units = []
            stream = f"s{n_streams}"
            n_streams += 1
            sc_norm = f"{p}.shortcut.1" if isinstance(block.shortcut[1], _BN) else None
            sc = f"{p}.shortcut.0"
            layers.append(NeuronLayer(sc, "conv", in_stream, stream, sc_norm, sc_norm or sc))
        n1, n2 = _norm_path(block, p, "bn1"), _norm_path(block, p, "bn2")
        inner = f"{p}.conv1"
        layers.append(NeuronLayer(inner, "conv", in_stream, inner, n1, n1 or inner))
        layers.append(NeuronLayer(f"{p}.conv2", "conv", inner, stream, n2, n2 or f"{p}.conv2"))
        units.append(p)
    if units:
        groups.append(_block_group(units))
    layers.append(NeuronLayer("fc", "linear", stream, OUTPUT, None, "fc"))
    return Structure("resnet", tuple(layers), tuple(groups))


def _block_group(units: list[str]) -> AlignGroup:
    return AlignGroup("block", tuple(units), tuple(f"{u}.bn2" for u in units))


def describe(model: nn.Module) -> Structure:
    """The :class:`Structure` of ``model`` (validating its layer types)."""
    family = family_of(model)
    if family == "mlp":
        return _describe_mlp(model)
    if family == "vgg":
        return _describe_vgg(model)
    return _describe_resnet(model)


def io_sizes(model: nn.Module, structure: Structure) -> tuple[int, int]:
    """``(input features or channels, number of outputs)`` of a described model."""
    modules = dict(model.named_modules())
    first, last = modules[structure.layers[0].path], modules[structure.layers[-1].path]
    n_in = first.in_features if isinstance(first, nn.Linear) else first.in_channels
    return int(n_in), int(last.out_features)


def _layer_signature(model: nn.Module, layer: NeuronLayer) -> tuple:
    mod = dict(model.named_modules())[layer.path]
    extra = (tuple(mod.kernel_size), tuple(mod.stride)) if layer.kind == "conv" else ()
    return (layer.kind, layer.norm is not None, mod.bias is not None, *extra)


def check_compatible(models: list[nn.Module], same_depth: bool = True) -> list[Structure]:
    """Describe every model and check they can be fused together.

    Parameters
    ----------
    models : list of nn.Module
    same_depth : bool
        Also require the same layers (kinds, kernels, wiring) up to widths, as
        layer-wise OTFusion does; CLAFusion balances depths first and passes False.

    Raises
    ------
    ArchitectureMismatchError
        Different families, input or output sizes, or (``same_depth``) layer structure.
    UnsupportedLayerError
        A model contains a layer fusion cannot handle (named in the message).
    """
    if len(models) < 1:
        raise ArchitectureMismatchError("fusion needs at least one model")
    structures = []
    for k, m in enumerate(models):
        try:
            structures.append(describe(m))
        except UnsupportedLayerError as err:
            raise UnsupportedLayerError(f"model {k}: {err}") from None
    ref, ref_io = structures[0], io_sizes(models[0], structures[0])
    for k, (m, s) in enumerate(zip(models, structures, strict=True)):
        if s.family != ref.family:
            raise ArchitectureMismatchError(
                f"model {k} is a {s.family} but model 0 is a {ref.family}: fusion combines "
                "models of one architecture family"
            )
        io = io_sizes(m, s)
        if io != ref_io:
            raise ArchitectureMismatchError(
                f"model {k} maps {io[0]} inputs to {io[1]} outputs but model 0 maps "
                f"{ref_io[0]} to {ref_io[1]}: fused models must share input and output sizes"
            )
        if s.family == "vgg" and len(s.align_groups) != len(ref.align_groups):
            raise ArchitectureMismatchError(
                f"model {k} has {len(s.align_groups) - 1} pooling stages but model 0 has "
                f"{len(ref.align_groups) - 1}: VGG layers align within the groups between "
                "poolings, so both need the same number"
            )
        if s.family == "resnet" and len(s.align_groups) != len(ref.align_groups):
            raise ArchitectureMismatchError(
                f"model {k} has {len(s.align_groups)} stages but model 0 has "
                f"{len(ref.align_groups)}: ResNet blocks align within stages"
            )
        if same_depth:
            _check_same_layers(models[0], ref, m, s, k)
    return structures


def _check_same_layers(m0: nn.Module, s0: Structure, m: nn.Module, s: Structure, k: int) -> None:
    if len(s.layers) != len(s0.layers):
        raise ArchitectureMismatchError(
            f"model {k} has {len(s.layers)} weight layers but model 0 has {len(s0.layers)}; "
            "layer-wise OTFusion needs equal depths: use clafusion() for different depths"
        )
    for a, b in zip(s0.layers, s.layers, strict=True):
        if (a.path, a.in_group, a.out_group) != (b.path, b.in_group, b.out_group) or (
            _layer_signature(m0, a) != _layer_signature(m, b)
        ):
            raise ArchitectureMismatchError(
                f"model {k}'s layer '{b.path}' differs from model 0's '{a.path}' "
                f"({_layer_signature(m, b)} vs {_layer_signature(m0, a)}); only widths may "
                "differ between models fused layer by layer"
            )
