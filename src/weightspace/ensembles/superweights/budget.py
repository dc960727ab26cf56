"""Parameter budget: how large the banks are and how many templates each layer mixes.

In Neural Parameter Allocation Search (Plummer et al., ICLR 2022) and SuperWeights
(supplement Sec. 3.6, "Performance under severe parameter constraint", Table 3) the
parameter count is decoupled from the architecture: a budget fixes the number of trainable
parameters and the method spreads them over the layers. Here the budget counts every
unique trainable parameter of the ensemble,

    budget >= fixed + coefficients + bank,

where ``fixed`` are the per-member parameters (stem, classifier, BatchNorm, biases),
``coefficients`` the ``alpha`` vectors and ``bank`` the flat parameter banks, one per
(SuperWeight cluster, width slice). A bank must hold at least the largest region it
serves (one weight template as a window of it); the rest of the budget is spread over
the banks in proportion to the number of weight elements each one serves. A layer mixes
as many templates as its bank has room for distinct, shifted windows, ``K <= bank -
region`` (a single template when the bank is no larger than the region), at most
``max_templates = 8`` as in the authors' code, and at most what the budget leaves for
coefficients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from weightspace.ensembles.superweights.plan import SharingPlan, slot_regions
from weightspace.errors import InvalidParameterError

__all__ = ["BankAllocation", "ParameterBudget", "allocate", "minimum_parameters"]


@dataclass(frozen=True)
class ParameterBudget:
    """A budget of unique trainable parameters: an absolute count or a fraction.

    Parameters
    ----------
    total : int, optional
        Absolute number of parameters.
    fraction : float, optional
        Fraction of a reference count (the deep ensemble's parameters, i.e. the members'
        own parameter counts summed), e.g. 0.25, 0.5 and 0.8 for the budgets of Table 3.
        Exactly one of ``total`` and ``fraction`` is given.
    """

    total: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.total is None) == (self.fraction is None):
            raise InvalidParameterError(
                "give a parameter budget as exactly one of total= (a count) or fraction= "
                f"(of the deep ensemble's parameters), got total={self.total!r}, "
                f"fraction={self.fraction!r}"
            )
        if self.total is not None and (
            isinstance(self.total, bool) or not isinstance(self.total, int) or self.total < 1
        ):
            raise InvalidParameterError(
                f"budget total must be a positive integer, got {self.total!r}"
            )
        if self.fraction is not None and (
            isinstance(self.fraction, bool)
            or not isinstance(self.fraction, int | float)
            or not math.isfinite(self.fraction)
            or self.fraction <= 0
        ):
            raise InvalidParameterError(
                f"budget fraction must be a positive number, got {self.fraction!r}; "
                "e.g. 0.25 for a quarter of the deep ensemble's parameters"
            )

    @classmethod
    def of(cls, value: ParameterBudget | int | float) -> ParameterBudget:
        """A budget from an int (count), a float (fraction) or a budget."""
        if isinstance(value, ParameterBudget):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(total=value)
        if isinstance(value, float):
            return cls(fraction=value)
        raise InvalidParameterError(
            f"a budget is a ParameterBudget, an int (count) or a float (fraction), "
            f"got {type(value).__name__}"
        )

    def resolve(self, reference: int) -> int:
        """The budget as a count, ``total`` or ``floor(fraction * reference)``."""
        if self.total is not None:
            return self.total
        return math.floor(self.fraction * reference)


@dataclass(frozen=True)
class BankAllocation:
    """Bank sizes and template counts chosen for a plan under a budget.

    Attributes
    ----------
    bank_keys : tuple of (cluster, slice)
        One flat bank per key.
    bank_sizes : tuple of int
        Elements of each bank.
    templates : tuple of int
        Number of templates ``K`` of each slot (its coefficient sets have ``K`` entries).
    budget, fixed : int
        The budget and the per-member parameters it includes.
    """

    bank_keys: tuple[tuple[int, int], ...]
    bank_sizes: tuple[int, ...]
    templates: tuple[int, ...]
    budget: int
    fixed: int

    @property
    def bank_parameters(self) -> int:
        """Elements of all banks together."""
        return sum(self.bank_sizes)

    def coefficient_parameters(self, plan: SharingPlan) -> int:
        """Elements of all coefficient vectors of ``plan``."""
        return sum(self.templates[s] for s in plan.coef_slot)

    def total_parameters(self, plan: SharingPlan) -> int:
        """``fixed + coefficients + bank``, at most :attr:`budget`."""
        return self.fixed + self.coefficient_parameters(plan) + self.bank_parameters


def _bank_demands(plan: SharingPlan) -> dict[tuple[int, int], tuple[int, int]]:
    """``(cluster, slice) -> (minimum size, weight elements served)``."""
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for slot in plan.slots:
        sizes, _ = slot_regions(slot)
        for w, size in enumerate(sizes):
            lo, total = out.get((slot.cluster, w), (0, 0))
            out[(slot.cluster, w)] = (max(lo, size), total + size)
    return dict(sorted(out.items()))


def _coefficient_vectors(plan: SharingPlan, reserve_unsharing: bool) -> list[int]:
    """Slot of every coefficient vector the budget pays for: one per set, or, reserving
    room for Eq. 3's un-sharing, one per member layer."""
    if reserve_unsharing:
        return [ref.slot for ref in plan.layers]
    return list(plan.coef_slot)


def minimum_parameters(plan: SharingPlan, fixed: int, reserve_unsharing: bool = False) -> int:
    """The smallest budget that ``plan`` fits: one template per layer, banks as small as
    their largest region, ``fixed`` per-member parameters (and, with
    ``reserve_unsharing``, one coefficient per member layer instead of per set)."""
    n_vectors = len(_coefficient_vectors(plan, reserve_unsharing))
    return fixed + n_vectors + sum(lo for lo, _ in _bank_demands(plan).values())


def _spread(demands: dict, total: int) -> dict[tuple[int, int], int]:
    """Split ``total`` bank elements: each bank its minimum, the rest by elements served."""
    keys = list(demands)
    lo = {k: demands[k][0] for k in keys}
    extra = total - sum(lo.values())
    weight = {k: demands[k][1] for k in keys}
    w_sum = sum(weight.values())
    sizes = {k: lo[k] + extra * weight[k] // w_sum for k in keys}
    rest = total - sum(sizes.values())
    for k in sorted(keys, key=lambda k: (-weight[k], k))[:rest]:
        sizes[k] += 1
    return sizes


def allocate(
    plan: SharingPlan,
    budget: int,
    fixed: int,
    max_templates: int = 8,
    reserve_unsharing: bool = False,
) -> BankAllocation:
    """Bank sizes and template counts for ``plan`` within ``budget`` parameters.

    Parameters
    ----------
    plan : SharingPlan
    budget : int
        Unique trainable parameters allowed, per-member ones included.
    fixed : int
        Per-member parameters (stem, classifier, BatchNorm, biases).
    max_templates : int
        Largest number of templates per layer.
    reserve_unsharing : bool
        Pay for one coefficient vector per member layer, so that un-sharing coefficients
        later (Eq. 3) keeps the ensemble within the budget without shrinking the banks.

    Returns
    -------
    BankAllocation
        With ``fixed + coefficients + bank <= budget``: the largest template cap that
        still leaves the minimum bank is used, then the banks take what is left.

    Raises
    ------
    InvalidParameterError
        If the budget is below :func:`minimum_parameters` (the message states it), or
        ``max_templates < 1``.
    """
    if isinstance(max_templates, bool) or not isinstance(max_templates, int) or max_templates < 1:
        raise InvalidParameterError(f"max_templates must be an integer >= 1, got {max_templates!r}")
    vectors = _coefficient_vectors(plan, reserve_unsharing)
    n_sets = len(vectors)
    need = minimum_parameters(plan, fixed, reserve_unsharing)
    if budget < need:
        raise InvalidParameterError(
            f"a parameter budget of {budget} is smaller than the smallest possible "
            f"SuperWeight ensemble of these members: {need} parameters ({fixed} per-member "
            f"stem/classifier/BatchNorm/bias, {n_sets} coefficients and a "
            f"bank of {need - fixed - n_sets}); raise the budget to at least "
            f"{need}, or use fewer SuperWeight clusters or narrower members"
        )
    demands = _bank_demands(plan)
    min_bank = sum(lo for lo, _ in demands.values())
    cap = max(c for c in range(1, max_templates + 1) if budget - fixed - n_sets * c >= min_bank)
    regions = [slot_regions(s)[0] for s in plan.slots]

    def counts(sizes: dict) -> list[int]:
        out = []
        for slot, regs in zip(plan.slots, regions, strict=True):
            keys = [(slot.cluster, w) for w in range(len(regs))]
            spare = min(sizes[k] - r for k, r in zip(keys, regs, strict=True))
            out.append(max(1, min(cap, spare)))
        return out

    sizes = _spread(demands, budget - fixed - n_sets * cap)
    templates = counts(sizes)
    coefs = sum(templates[s] for s in vectors)
    sizes = _spread(demands, budget - fixed - coefs)  # give the unused coefficients back
    templates = [min(a, b) for a, b in zip(templates, counts(sizes), strict=True)]
    return BankAllocation(
        bank_keys=tuple(sizes),
        bank_sizes=tuple(sizes.values()),
        templates=tuple(templates),
        budget=int(budget),
        fixed=int(fixed),
    )
