"""Sharing plan: which member layers share weight templates and which share coefficients.

The bookkeeping of a SuperWeight ensemble (supplement Sec. 1.1 and 2; main paper Sec. 2):

- a member's *shared layers* are its ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` layers
  except the stem (the first such layer) and the classifier (the last), which stay per
  member as in the authors' code;
- members whose shared layers have the same kinds and kernels in the same order (the same
  *skeleton*: same depth, any widths) form a *family*; their ``j``-th layers form *slot*
  ``j`` of the family. A slot composes one weight of the elementwise largest shape of
  its layers; a narrower member uses its top-left block (extra output channels on dim 0,
  extra input channels on dim 1), so its weight is a crop of the wider member's;
- the distinct layer shapes of a slot, smallest first, are its *width levels*; level
  ``w`` owns the positions of its block not in a smaller level's block. Each SuperWeight
  cluster has one flat bank per width level (*width slice*), so the narrowest member's
  weights draw only on slice 0;
- every slot belongs to one SuperWeight cluster (depth bins at first, see
  :mod:`~weightspace.ensembles.superweights.clusters`); all slots of a cluster draw their
  templates from the cluster's banks;
- every member layer reads one *coefficient set* ``alpha`` of its slot. With
  ``coefficient_sharing="width"`` (default) members of different widths at a slot share
  one set (so a narrow member's weight is exactly the top-left block of the wide one's
  until Eq. 3 un-shares them) while members of the same shape get their own (else they
  would be identical); ``"none"`` gives every layer its own set ("Not shared" of Fig. 4a)
  and ``"all"`` one set per slot ("Shared").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from weightspace.ensembles.superweights.clusters import depth_bins
from weightspace.errors import InvalidParameterError

__all__ = ["LayerRef", "SharingPlan", "Slot", "build_plan", "shared_layers"]

_KINDS = (nn.Linear, nn.Conv1d, nn.Conv2d)
COEFFICIENT_SHARING = ("width", "none", "all")
INITIAL_CLUSTERS = ("depth", "layer", "one")


def weight_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` of ``module`` in module order."""
    return [(p, m) for p, m in module.named_modules() if isinstance(m, _KINDS)]


def shared_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers that become SuperWeights: :func:`weight_layers` minus the first and last."""
    return weight_layers(module)[1:-1]


def _signature(layer: nn.Module) -> tuple:
    """What two layers must agree on to share a slot (kind, kernel, stride, padding...)."""
    if isinstance(layer, nn.Linear):
        return ("linear",)
    return (type(layer).__name__, layer.kernel_size, layer.stride, layer.padding, layer.dilation)


@dataclass(frozen=True)
class LayerRef:
    """One shared layer of one member.

    Attributes
    ----------
    member : int
    path : str
        Its name in the member (``named_modules``).
    slot : int
        Index into :attr:`SharingPlan.slots`.
    shape : tuple of int
        Its weight shape ``(out, in, *kernel)``.
    coef : int
        Its coefficient set.
    """

    member: int
    path: str
    slot: int
    shape: tuple[int, ...]
    coef: int


@dataclass(frozen=True)
class Slot:
    """Layer position ``position`` of family ``family``, shared by the family's members.

    Attributes
    ----------
    family, position, depth : int, int, int
        ``depth`` is the number of shared layers of the family (``position < depth``).
    shape : tuple of int
        Elementwise largest weight shape of its layers ``(out, in, *kernel)``.
    levels : tuple of tuple of int
        Distinct layer shapes, by number of elements (the width levels).
    cluster : int
        SuperWeight cluster.
    """

    family: int
    position: int
    depth: int
    shape: tuple[int, ...]
    levels: tuple[tuple[int, ...], ...]
    cluster: int

    @property
    def kernel_numel(self) -> int:
        """Kernel elements (1 for a Linear layer)."""
        return math.prod(self.shape[2:])

    @property
    def fan_in(self) -> int:
        """Fan-in of the full composed weight, ``in * prod(kernel)``."""
        return math.prod(self.shape[1:])


@dataclass(frozen=True)
class SharingPlan:
    """Slots, their clusters, and the coefficient set of every shared member layer.

    Attributes
    ----------
    slots : tuple of Slot
    layers : tuple of LayerRef
        Member by member, in module order.
    coef_slot : tuple of int
        Slot of each coefficient set.
    """

    slots: tuple[Slot, ...]
    layers: tuple[LayerRef, ...]
    coef_slot: tuple[int, ...]

    @property
    def n_clusters(self) -> int:
        """Number of SuperWeight clusters."""
        return 1 + max(s.cluster for s in self.slots)

    @property
    def n_coefficient_sets(self) -> int:
        """Number of coefficient vectors ``alpha``."""
        return len(self.coef_slot)

    def cluster_slots(self, cluster: int) -> list[int]:
        """Slots of ``cluster``."""
        return [i for i, s in enumerate(self.slots) if s.cluster == cluster]

    def coef_users(self, coef: int) -> list[LayerRef]:
        """Member layers that read coefficient set ``coef``."""
        return [ref for ref in self.layers if ref.coef == coef]

    def with_clusters(self, cluster_of_slot: Sequence[int]) -> SharingPlan:
        """The plan with new cluster labels (renumbered by first appearance)."""
        relabel: dict[int, int] = {}
        slots = tuple(
            replace(s, cluster=relabel.setdefault(int(c), len(relabel)))
            for s, c in zip(self.slots, cluster_of_slot, strict=True)
        )
        return replace(self, slots=slots)

    def with_coefficient_sets(self, coef_of_layer: Sequence[int]) -> SharingPlan:
        """The plan with new coefficient sets (renumbered by first appearance)."""
        relabel: dict[int, int] = {}
        layers = tuple(
            replace(ref, coef=relabel.setdefault(int(c), len(relabel)))
            for ref, c in zip(self.layers, coef_of_layer, strict=True)
        )
        coef_slot = [0] * len(relabel)
        for ref in layers:
            coef_slot[ref.coef] = ref.slot
        for c in relabel.values():
            slots = {ref.slot for ref in layers if ref.coef == c}
            if len(slots) != 1:
                raise InvalidParameterError(
                    f"coefficient set {c} would be read by layers of slots {sorted(slots)}; "
                    "a coefficient set belongs to one slot (its template count)"
                )
        return replace(self, layers=layers, coef_slot=tuple(coef_slot))


def _check_choice(value: object, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise InvalidParameterError(f"{name} must be one of {choices}, got {value!r}")
    return value  # type: ignore[return-value]


def build_plan(
    members: Sequence[nn.Module],
    n_bins: int = 4,
    clusters: str = "depth",
    coefficient_sharing: str = "width",
) -> SharingPlan:
    """The initial sharing plan of an ensemble.

    Parameters
    ----------
    members : sequence of nn.Module
        Validated members (see :func:`weightspace.ensembles.superweights.ensemble.check_members`).
    n_bins : int
        Depth bins per network for ``clusters="depth"``.
    clusters : {"depth", "layer", "one"}
        Initial SuperWeight clusters: depth bins with 1x1 and 3x3 kernels apart
        (the paper), one cluster per slot (one SuperWeight per layer), or one cluster per
        kernel size.
    coefficient_sharing : {"width", "none", "all"}
        Initial coefficient sets (see the module docstring).

    Returns
    -------
    SharingPlan
    """
    _check_choice(clusters, INITIAL_CLUSTERS, "clusters")
    _check_choice(coefficient_sharing, COEFFICIENT_SHARING, "coefficient_sharing")
    per_member = [shared_layers(m) for m in members]
    families: dict[tuple, int] = {}
    family_of = [
        families.setdefault(tuple(_signature(layer) for _, layer in lays), len(families))
        for lays in per_member
    ]
    # Slots, family by family.
    slot_index: dict[tuple[int, int], int] = {}
    slot_shapes: list[list[tuple[int, ...]]] = []
    slot_meta: list[tuple[int, int, int]] = []
    for m, lays in enumerate(per_member):
        for j, (_, layer) in enumerate(lays):
            key = (family_of[m], j)
            if key not in slot_index:
                slot_index[key] = len(slot_shapes)
                slot_shapes.append([])
                slot_meta.append((family_of[m], j, len(lays)))
            slot_shapes[slot_index[key]].append(tuple(layer.weight.shape))
    slot_cluster_key: list[tuple] = []
    for i, (fam, j, _) in enumerate(slot_meta):
        numel = math.prod(slot_shapes[i][0][2:])
        if clusters == "depth":
            kernels = [
                math.prod(lay.weight.shape[2:]) for _, lay in per_member[family_of.index(fam)]
            ]
            slot_cluster_key.append(depth_bins(kernels, n_bins)[j])
        elif clusters == "layer":
            slot_cluster_key.append((fam, j))
        else:
            slot_cluster_key.append((0, numel))
    cluster_ids = {k: c for c, k in enumerate(sorted(set(slot_cluster_key)))}
    slots = []
    for i, (fam, j, depth) in enumerate(slot_meta):
        shapes = slot_shapes[i]
        full = tuple(max(s[d] for s in shapes) for d in range(len(shapes[0])))
        levels = tuple(sorted(set(shapes), key=lambda s: (math.prod(s), s)))
        slots.append(Slot(fam, j, depth, full, levels, cluster_ids[slot_cluster_key[i]]))
    # Coefficient sets.
    layers: list[LayerRef] = []
    coef_key: dict[tuple, int] = {}
    seen: dict[tuple[int, tuple[int, ...]], int] = {}
    for m, lays in enumerate(per_member):
        for j, (path, layer) in enumerate(lays):
            slot = slot_index[(family_of[m], j)]
            shape = tuple(layer.weight.shape)
            if coefficient_sharing == "all":
                key: tuple = (slot,)
            elif coefficient_sharing == "none":
                key = (slot, m)
            else:  # the k-th member of a given shape at this slot joins set k
                k = seen.get((slot, shape), 0)
                seen[(slot, shape)] = k + 1
                key = (slot, "w", k)
            coef = coef_key.setdefault(key, len(coef_key))
            layers.append(LayerRef(m, path, slot, shape, coef))
    coef_slot = [0] * len(coef_key)
    for ref in layers:
        coef_slot[ref.coef] = ref.slot
    plan = SharingPlan(tuple(slots), tuple(layers), tuple(coef_slot))
    return plan.with_clusters([s.cluster for s in slots])


def slot_regions(slot: Slot) -> tuple[list[int], list[int] | None]:
    """Split a slot's weight into its width levels' regions.

    Level ``w`` owns the positions of its top-left block that no smaller level's block
    holds (positions in no level's block, possible only when the shapes are not nested,
    go to the last level). Composing a weight region by region and then permuting to
    row-major order gives the full weight.

    Parameters
    ----------
    slot : Slot

    Returns
    -------
    sizes : list of int
        Number of weight elements of each level's region (all positive).
    perm : list of int or None
        ``full.flatten() = cat(regions)[perm]``; None when the slot has one level (the
        regions are then the row-major weight itself).
    """
    if len(slot.levels) == 1:
        return [math.prod(slot.shape)], None
    level = torch.full(slot.shape, len(slot.levels) - 1, dtype=torch.long)
    owned = torch.zeros(slot.shape, dtype=torch.bool)
    for w, shape in enumerate(slot.levels):
        block = tuple(slice(0, d) for d in shape)
        new = ~owned[block]
        level[block] = torch.where(new, torch.tensor(w), level[block])
        owned[block] = True
    flat = level.flatten()
    sizes = [int((flat == w).sum()) for w in range(len(slot.levels))]
    order = torch.argsort(flat, stable=True)
    perm = torch.argsort(order)
    return sizes, perm.tolist()
