"""Parameter bank, weight templates and SuperWeights (main paper Sec. 2.1; supplement Sec. 1-2).

A SuperWeight cluster owns one flat trainable vector per width slice, its *parameter
bank*. A layer's **weight templates** ``T_1 .. T_K`` are windows of its cluster's banks:
template ``k`` of a slot takes, for each width level ``w`` of the slot, the ``R_w``
elements ``bank_w[o_{w,k} : o_{w,k} + R_w]`` (``R_w`` = the level's region size, see
:func:`~weightspace.ensembles.superweights.plan.slot_regions`), and the regions are
assembled into the weight's shape. The layer's weight, its **SuperWeight**, is

.. math::

    W = \\sum_{k=1}^{K} \\alpha_k T_k ,

with learned coefficients ``alpha`` (``K <= 8``). The windows of all slots drawing on a
bank are interleaved and spread evenly over it (:func:`window_offsets`); one slot's
windows are distinct, so at any position its ``K`` template values are distinct bank
entries.

Initialisation. The entries of bank ``b`` are i.i.d. uniform with standard deviation
``s_b``, the mean ``1 / sqrt(3 fan_in)`` of the layers drawing on it, and each
coefficient vector is a random direction of norm ``(1 / sqrt(3 fan_in)) / s_b``, so
``Var W = |alpha|^2 s_b^2 = 1 / (3 fan_in)``: every composed layer starts at the scale of
PyTorch's default Linear/Conv init (kaiming-uniform with ``a = sqrt 5``, bound
``1 / sqrt(fan_in)``) for its own fan-in, and the templates live at the scale of the
weights they replace, which is what Adam's absolute step size assumes (with unit-variance
banks and ``|alpha| = 1 / sqrt(3 fan_in)`` the members trained several times slower).
(The authors' code gives every bank one standard deviation, about 0.47, whatever the
layers' fan-ins.)
Coefficients get no weight decay (supplement Sec. 1, "weight decay ... on all parameters
except weight coefficients"): see :meth:`ParameterBank.param_groups`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from weightspace.ensembles.superweights.budget import BankAllocation
from weightspace.ensembles.superweights.plan import SharingPlan, slot_regions
from weightspace.errors import InvalidParameterError

__all__ = ["ParameterBank", "Region", "window_offsets"]


def window_offsets(
    bank_size: int, window: int, k: int, slot: int = 0, n_slots: int = 1
) -> tuple[int, ...]:
    """Starts of the ``k`` windows of one slot, interleaved with the other slots' windows.

    The ``n_slots * k`` windows of the slots that share a bank are spread evenly over it,
    window ``j`` of slot ``q`` being number ``j * n_slots + q``; so slots take different
    parts of the bank when it is large, and overlapping, shifted windows when it is not.

    Parameters
    ----------
    bank_size, window, k : int
        ``window <= bank_size``; ``k = 1`` or ``k <= bank_size - window`` (then the
        windows of one slot are at least one element apart, hence distinct).
    slot, n_slots : int
        This slot's index among the ``n_slots`` slots drawing on the bank.

    Returns
    -------
    tuple of int, length k
        ``round((j n_slots + slot) (bank_size - window) / (k n_slots - 1))``; ``(0,)``
        when ``k n_slots = 1``.
    """
    span = bank_size - window
    if not 1 <= window <= bank_size or not (k == 1 or 1 <= k <= span):
        raise InvalidParameterError(
            f"cannot place {k} distinct windows of {window} elements in a bank of {bank_size}"
        )
    total = k * n_slots
    if total == 1:
        return (0,)
    return tuple(round((j * n_slots + slot) * span / (total - 1)) for j in range(k))


class Region:
    """The windows of one width level of a slot: bank index, size and ``K`` offsets."""

    __slots__ = ("bank", "offsets", "size")

    def __init__(self, bank: int, size: int, offsets: tuple[int, ...]) -> None:
        self.bank, self.size, self.offsets = bank, size, offsets

    def __repr__(self) -> str:
        return f"Region(bank={self.bank}, size={self.size}, offsets={self.offsets})"


class ParameterBank(nn.Module):
    """The banks and coefficients of a SuperWeight ensemble, and SuperWeight composition.

    Parameters
    ----------
    plan : SharingPlan
        Slots, clusters and coefficient sets.
    allocation : BankAllocation
        Bank sizes and template counts
        (:func:`~weightspace.ensembles.superweights.budget.allocate`).
    generator : torch.Generator, optional
        Randomness of the initialisation.

    Attributes
    ----------
    banks : nn.ParameterList
        One flat vector per ``allocation.bank_keys[i] = (cluster, width slice)``.
    coefficients : nn.ParameterList
        One ``alpha`` of shape ``(K_slot,)`` per coefficient set.
    regions : list of list of Region
        Per slot, its width levels' windows.
    """

    def __init__(
        self,
        plan: SharingPlan,
        allocation: BankAllocation,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.plan = plan
        self.allocation = allocation
        index = {key: i for i, key in enumerate(allocation.bank_keys)}
        self.banks = nn.ParameterList([nn.Parameter(torch.empty(n)) for n in allocation.bank_sizes])
        self.coefficients = nn.ParameterList(
            [nn.Parameter(torch.empty(allocation.templates[s])) for s in plan.coef_slot]
        )
        self.regions: list[list[Region]] = []
        self.shapes: list[tuple[int, ...]] = []
        users: dict[int, list[int]] = {}  # bank -> slots drawing on it
        all_sizes = [slot_regions(slot) for slot in plan.slots]
        for i, slot in enumerate(plan.slots):
            for w in range(len(all_sizes[i][0])):
                users.setdefault(index[(slot.cluster, w)], []).append(i)
        for i, slot in enumerate(plan.slots):
            sizes, perm = all_sizes[i]
            k = allocation.templates[i]
            regs = []
            for w, size in enumerate(sizes):
                b = index[(slot.cluster, w)]
                offsets = window_offsets(
                    allocation.bank_sizes[b], size, k, users[b].index(i), len(users[b])
                )
                regs.append(Region(b, size, offsets))
            self.regions.append(regs)
            self.shapes.append(slot.shape)
            self.register_buffer(f"index_{i}", self._gather_index(regs, perm), persistent=False)
        self._pass: dict | None = None
        # each bank at the weight scale of the layers drawing on it (mean of their
        # 1 / sqrt(3 fan_in)), so Adam moves templates at the rate it moves plain weights
        self.bank_scale = [
            sum(1.0 / math.sqrt(3.0 * plan.slots[i].fan_in) for i in users[b]) / len(users[b])
            if users.get(b)
            else 1.0
            for b in range(len(allocation.bank_sizes))
        ]
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Banks uniform with std ``s_b`` (their users' mean ``1 / sqrt(3 fan_in)``);
        ``|alpha| = (1 / sqrt(3 fan_in)) / s_b`` in a random direction, so every composed
        weight starts at its own fan-in scale and templates and plain weights share one
        scale (Adam's step is in absolute units: unit-variance banks would train ~10x
        slower than the network they replace).

        ``fan_in`` is that of the slot's full composed weight (its widest member); ``s_b``
        that of the bank its widest level draws on.
        """
        for bank, scale in zip(self.banks, self.bank_scale, strict=True):
            u = torch.rand(bank.shape, generator=generator, dtype=torch.float64)
            bank.copy_((2 * u - 1) * math.sqrt(3.0) * scale)
        for c, alpha in enumerate(self.coefficients):
            i = self.plan.coef_slot[c]
            slot = self.plan.slots[i]
            direction = torch.randn(alpha.shape, generator=generator, dtype=torch.float64)
            direction /= direction.norm().clamp_min(1e-12)
            scale = self.bank_scale[self.regions[i][0].bank]
            alpha.copy_(direction / math.sqrt(3.0 * slot.fan_in) / scale)

    def n_templates(self, slot: int) -> int:
        """Number of templates ``K`` of a slot."""
        return len(self.regions[slot][0].offsets)

    def _gather_index(self, regions: list[Region], perm: list[int] | None) -> Tensor:
        """Positions in ``cat(banks)`` of a slot's templates, shape ``(K, numel)``.

        Row ``k`` holds, level by level, ``start_b + o_{w,k} + arange(R_w)``, permuted to
        the weight's row-major order: one gather then builds all ``K`` templates.
        """
        starts = [0]
        for n in self.allocation.bank_sizes:
            starts.append(starts[-1] + n)
        parts = [
            starts[reg.bank]
            + torch.tensor(reg.offsets, dtype=torch.long)[:, None]
            + torch.arange(reg.size, dtype=torch.long)[None, :]
            for reg in regions
        ]
        index = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if perm is not None:
            index = index[:, torch.tensor(perm, dtype=torch.long)]
        return index.contiguous()

    @contextmanager
    def shared_pass(self) -> Iterator[None]:
        """Build each slot's templates and each (slot, coefficient set)'s SuperWeight once
        inside the block, however many layers read them (one forward pass of all members:
        the block must not span an optimizer step)."""
        outer = self._pass is None
        if outer:
            self._pass = {"flat": None, "templates": {}, "composed": {}}
        try:
            yield
        finally:
            if outer:
                self._pass = None

    def _flat(self) -> Tensor:
        if self._pass is None:
            return torch.cat(list(self.banks))
        if self._pass["flat"] is None:
            self._pass["flat"] = torch.cat(list(self.banks))
        return self._pass["flat"]

    def templates(self, slot: int) -> Tensor:
        """The weight templates of a slot, stacked.

        Parameters
        ----------
        slot : int

        Returns
        -------
        Tensor, shape (K, out, in, *kernel)
            ``out[k]`` assembles the ``k``-th window of each width slice; with one width
            level, ``out[k].flatten()`` is exactly ``bank[o_k : o_k + numel]``.
        """
        cache = None if self._pass is None else self._pass["templates"]
        if cache is not None and slot in cache:
            return cache[slot]
        index = getattr(self, f"index_{slot}")
        out = self._flat().index_select(0, index.flatten())
        out = out.view(index.shape[0], *self.shapes[slot])
        if cache is not None:
            cache[slot] = out
        return out

    def compose(self, slot: int, coef: int, templates: Tensor | None = None) -> Tensor:
        """The SuperWeight ``W = sum_k alpha_k T_k`` of a slot with coefficient set ``coef``.

        Parameters
        ----------
        slot, coef : int
        templates : Tensor, shape (K, out, in, *kernel), optional
            :meth:`templates` of the slot, when already computed.

        Returns
        -------
        Tensor, shape (out, in, *kernel)
            The slot's full weight (members crop their top-left block).
        """
        cache = None if self._pass is None else self._pass["composed"]
        if cache is not None and (slot, coef) in cache:
            return cache[(slot, coef)]
        t = self.templates(slot) if templates is None else templates
        out = torch.tensordot(self.coefficients[coef], t, dims=1)
        if cache is not None:
            cache[(slot, coef)] = out
        return out

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer groups: banks with ``weight_decay``, coefficients without.

        Returns
        -------
        list of dict
            ``[{"params": banks, "weight_decay": weight_decay},
            {"params": coefficients, "weight_decay": 0.0}]``.
        """
        return [
            {"params": list(self.banks), "weight_decay": float(weight_decay)},
            {"params": list(self.coefficients), "weight_decay": 0.0},
        ]

    def extra_repr(self) -> str:
        return (
            f"banks={list(self.allocation.bank_sizes)}, "
            f"coefficient_sets={len(self.coefficients)}, "
            f"templates={list(self.allocation.templates)}"
        )
