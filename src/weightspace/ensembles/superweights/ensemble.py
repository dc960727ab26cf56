"""SuperWeight ensembles: members of any widths and depths sharing one parameter bank.

``SuperWeightEnsemble(members, budget)`` turns registry networks (``vgg``, ``resnet``,
``mlp``; 1-D or 2-D; mixed widths and depths) into a SuperWeight Network (main paper
Sec. 2; supplement Sec. 1.1): every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` weight
except the stem (first such layer) and the classifier (last) is composed from weight
templates of a shared :class:`~weightspace.ensembles.superweights.bank.ParameterBank`;
stems, classifiers, biases and BatchNorm stay per member. The budget (supplement Sec. 3.6)
fixes the bank size. Clusters start as depth bins and are refined from accumulated weight
gradients (:meth:`SuperWeightEnsemble.refine_clusters`, threshold ``tau``); coefficients
shared between members are un-shared where their gradients disagree
(:meth:`SuperWeightEnsemble.unshare_coefficients`, threshold ``beta``), both through
Algorithm 1 (:func:`~weightspace.ensembles.superweights.clusters.group_pairs`).
:func:`interpolate` gives the weights on the line between two members (Figure 3).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from weightspace.ensembles.superweights.bank import ParameterBank
from weightspace.ensembles.superweights.budget import (
    BankAllocation,
    ParameterBudget,
    allocate,
    minimum_parameters,
)
from weightspace.ensembles.superweights.checks import check_members
from weightspace.ensembles.superweights.clusters import (
    check_threshold,
    group_pairs,
    pairwise_pairs,
)
from weightspace.ensembles.superweights.layers import SuperWeightLayer, superweight_layer
from weightspace.ensembles.superweights.plan import SharingPlan, build_plan
from weightspace.errors import (
    ArchitectureMismatchError,
    InvalidParameterError,
    ShapeError,
)

__all__ = ["SuperWeightEnsemble", "SuperWeightMember", "interpolate"]

logger = logging.getLogger(__name__)

LayerKey = tuple[int, str]
"""``(member index, layer path)`` of a shared layer."""


class SuperWeightMember(nn.Module):
    """One member as a stand-alone module: its network plus the shared bank.

    ``parameters()`` holds what the member trains (its own stem, classifier, norms and
    biases, and the shared banks and coefficients); the tensors are the ensemble's, not
    copies. ``forward(x)`` of shape ``(B, *input_shape)`` gives logits ``(B, C)``.
    """

    def __init__(self, net: nn.Module, bank: ParameterBank) -> None:
        super().__init__()
        self.net = net
        self.bank = bank

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, C)`` of inputs ``(B, *input_shape)``."""
        return self.net(x)


class SuperWeightEnsemble(nn.Module):
    """An ensemble of networks whose shared layers are SuperWeights over one bank.

    Parameters
    ----------
    members : sequence of nn.Module
        The member architectures and their per-member initial parameters (stem,
        classifier, norms, biases are copied; shared weights are re-initialised from the
        bank). Not modified. Any mix of widths and depths of registry ``vgg`` /
        ``resnet`` / ``mlp`` networks built for the same input shape and classes.
    budget : ParameterBudget, int or float
        Unique trainable parameters of the whole ensemble: a count (int) or a fraction
        (float) of the deep ensemble's parameters (the members' counts summed).
    n_bins : int
        Depth bins of the initial clusters (4 in the supplement).
    clusters : {"depth", "layer", "one"}
        Initial clusters: depth bins (1x1 and 3x3 apart), one SuperWeight per layer, or
        one cluster per kernel size.
    coefficient_sharing : {"width", "none", "all"}
        Initial coefficient sets (see :mod:`~weightspace.ensembles.superweights.plan`).
    max_templates : int
        Templates per layer at most (8 in the authors' code).
    seed : int
        Seed of the bank and coefficient initialisation.

    Attributes
    ----------
    members : nn.ModuleList
        The member networks with :class:`SuperWeightLayer` s in place of shared layers.
    bank : ParameterBank
    budget : int
        The budget as a count.
    reference_parameters : int
        Parameters of the deep ensemble of ``members``.

    Raises
    ------
    InvalidParameterError
        Bad options, or a budget below the smallest possible bank (the minimum is stated).
    UnsupportedLayerError, ArchitectureMismatchError
        See :func:`check_members`.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        budget: ParameterBudget | int | float,
        *,
        n_bins: int = 4,
        clusters: str = "depth",
        coefficient_sharing: str = "width",
        max_templates: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_members(members)
        self.reference_parameters = sum(
            p.numel() for member in members for p in member.parameters() if p.requires_grad
        )
        self.budget = ParameterBudget.of(budget).resolve(self.reference_parameters)
        self.max_templates = max_templates
        plan = build_plan(members, n_bins, clusters, coefficient_sharing)
        nets = []
        for m, member in enumerate(members):
            net = copy.deepcopy(member)
            for ref in plan.layers:
                if ref.member == m:
                    parent, _, name = ref.path.rpartition(".")
                    owner = net.get_submodule(parent)
                    setattr(
                        owner, name, superweight_layer(getattr(owner, name), ref.slot, ref.coef)
                    )
            nets.append(net)
        self.members = nn.ModuleList(nets)
        # the members' own parameters and buffers as built, for reset_members()
        self._initial_members = copy.deepcopy(self.members.state_dict())
        self.fixed_parameters = sum(p.numel() for p in self.members.parameters() if p.requires_grad)
        self._generator = torch.Generator().manual_seed(int(seed))
        self._install(plan)

    # ------------------------------------------------------------------ structure
    def _install(self, plan: SharingPlan) -> None:
        """A freshly initialised bank for ``plan``, bound to every SuperWeight layer."""
        alloc = allocate(
            plan, self.budget, self.fixed_parameters, self.max_templates, reserve_unsharing=True
        )
        ref = next(self.members.parameters())
        bank = ParameterBank(plan, alloc, self._generator).to(ref.device, ref.dtype)
        self.bank = bank
        self._bind()

    def _bind(self) -> None:
        for ref, layer in zip(self.plan.layers, self.superweight_layers(), strict=True):
            layer.bind(self.bank, ref.slot, ref.coef)

    @property
    def plan(self) -> SharingPlan:
        """The current sharing plan (slots, clusters, coefficient sets)."""
        return self.bank.plan

    @property
    def allocation(self) -> BankAllocation:
        """Bank sizes and template counts."""
        return self.bank.allocation

    @property
    def n_members(self) -> int:
        """Number of members ``N``."""
        return len(self.members)

    def superweight_layers(self) -> list[SuperWeightLayer]:
        """The SuperWeight layers, in the order of ``plan.layers``."""
        return [self.members[r.member].get_submodule(r.path) for r in self.plan.layers]

    def cluster_membership(self) -> list[dict]:
        """One row per shared layer: member, path, slot, cluster, coefficient set (Fig. 5)."""
        return [
            {
                "member": r.member,
                "path": r.path,
                "slot": r.slot,
                "position": self.plan.slots[r.slot].position,
                "cluster": self.plan.slots[r.slot].cluster,
                "coef": r.coef,
            }
            for r in self.plan.layers
        ]

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        """Every member's logits, see :meth:`member_logits`."""
        return self.member_logits(x)

    def member_logits(self, x: Tensor) -> Tensor:
        """Every member's logits on the same batch.

        Parameters
        ----------
        x : Tensor, shape (B, *input_shape)

        Returns
        -------
        Tensor, shape (N, B, C)
            ``out[i]`` are member ``i``'s logits.
        """
        with self.bank.shared_pass():
            return torch.stack([net(x) for net in self.members])

    def _check_index(self, i: object) -> int:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n_members:
            raise InvalidParameterError(
                f"member index must be an integer in [0, {self.n_members}), got {i!r}"
            )
        return i

    def member(self, i: int) -> SuperWeightMember:
        """Member ``i`` as a module sharing this ensemble's tensors (trainable)."""
        return SuperWeightMember(self.members[self._check_index(i)], self.bank)

    def export_member(self, i: int) -> nn.Module:
        """Member ``i`` as a plain network of its original architecture (copies).

        Each SuperWeight layer becomes the plain layer holding its composed weight; the
        state-dict keys are those of the original member, so the result also loads into a
        freshly built registry model.
        """
        # the memo keeps the layers' reference to the shared bank instead of copying it
        net = copy.deepcopy(self.members[self._check_index(i)], {id(self.bank): self.bank})
        for path, mod in list(net.named_modules()):
            if isinstance(mod, SuperWeightLayer):
                parent, _, name = path.rpartition(".")
                setattr(net.get_submodule(parent), name, mod.to_plain())
        return net

    # ------------------------------------------------------------------ parameters
    def unique_parameter_count(self) -> int:
        """Trainable parameters counted once per tensor (shared banks counted once)."""
        seen: dict[int, int] = {}
        for p in self.parameters():
            if p.requires_grad:
                seen[id(p)] = p.numel()
        return sum(seen.values())

    def parameter_breakdown(self) -> dict[str, int]:
        """``bank``, ``coefficients``, ``per_member`` (stem/classifier/norms/biases), ``total``."""
        bank = sum(p.numel() for p in self.bank.banks)
        coefs = sum(p.numel() for p in self.bank.coefficients)
        per_member = sum(p.numel() for p in self.members.parameters() if p.requires_grad)
        return {
            "bank": bank,
            "coefficients": coefs,
            "per_member": per_member,
            "total": bank + coefs + per_member,
        }

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer groups: coefficients without weight decay, everything else with it."""
        groups = self.bank.param_groups(weight_decay)
        own = [p for p in self.members.parameters() if p.requires_grad]
        return [*groups, {"params": own, "weight_decay": float(weight_decay)}]

    def reset_members(self) -> None:
        """Put every member's own parameters and buffers (stems, classifiers, norms,
        biases) back to their values at construction; the bank is left as it is."""
        self.members.load_state_dict(self._initial_members)

    # ------------------------------------------------------------------ gradients
    def start_recording(self) -> None:
        """Zero and start accumulating every shared layer's ``dL/dW`` and ``dL/dalpha``."""
        for layer in self.superweight_layers():
            layer.start_recording()

    def stop_recording(self) -> None:
        """Stop accumulating gradients (what was accumulated stays readable)."""
        for layer in self.superweight_layers():
            layer.stop_recording()

    def recorded_gradients(self) -> tuple[dict[LayerKey, Tensor], dict[LayerKey, Tensor]]:
        """Accumulated gradients since :meth:`start_recording`.

        Returns
        -------
        weight : dict (member, path) -> Tensor, shape (out, in, *kernel)
        alpha : dict (member, path) -> Tensor, shape (K,)
            Layers that saw no backward pass are missing.
        """
        weight, alpha = {}, {}
        for ref, layer in zip(self.plan.layers, self.superweight_layers(), strict=True):
            if layer.grad_weight is not None:
                weight[(ref.member, ref.path)] = layer.grad_weight
                alpha[(ref.member, ref.path)] = layer.grad_alpha
        return weight, alpha

    def _grads_for(self, given: Mapping[LayerKey, Tensor] | None, which: int) -> Mapping:
        grads = self.recorded_gradients()[which] if given is None else given
        missing = [(r.member, r.path) for r in self.plan.layers if (r.member, r.path) not in grads]
        if missing:
            raise InvalidParameterError(
                f"no accumulated gradient for shared layers {missing[:3]}"
                f"{' ...' if len(missing) > 3 else ''}; call start_recording(), train for an "
                "epoch, then refine (or pass the gradients explicitly)"
            )
        for r in self.plan.layers:
            g = grads[(r.member, r.path)]
            want = r.shape if which == 0 else (self.bank.n_templates(r.slot),)
            if tuple(g.shape) != tuple(want):
                raise ShapeError(
                    f"the gradient given for member {r.member}'s layer {r.path!r} has shape "
                    f"{tuple(g.shape)}, expected {tuple(want)}"
                )
        return grads

    def refine_clusters(
        self, tau: float, weight_grads: Mapping[LayerKey, Tensor] | None = None
    ) -> SharingPlan:
        """Split SuperWeight clusters by gradient similarity (Eq. 2, Algorithm 1, ``tau``).

        Each slot's gradient is the sum of its members' accumulated ``dL/dW`` placed in
        its top-left block; within each cluster, slots whose cropped gradients have cosine
        similarity ``> tau`` are merged (connected components), the rest split off. If the
        refined clusters need a larger minimum bank than the budget allows, the most
        similar remaining pairs are merged back until it fits (logged). The banks and
        coefficients are then re-allocated and re-initialised for the new clusters;
        per-member parameters are kept.

        Parameters
        ----------
        tau : float
            Threshold in ``[-1, 1]``.
        weight_grads : mapping (member, path) -> Tensor (out, in, *kernel), optional
            Accumulated weight gradients; default: :meth:`recorded_gradients`.

        Returns
        -------
        SharingPlan
            The new plan (also installed).
        """
        tau = check_threshold(tau, "tau")
        grads = self._grads_for(weight_grads, 0)
        plan = self.plan
        slot_grad = [torch.zeros(s.shape, dtype=torch.float64) for s in plan.slots]
        for r in plan.layers:
            g = grads[(r.member, r.path)].detach().to("cpu", torch.float64)
            slot_grad[r.slot][tuple(slice(0, d) for d in g.shape)] += g
        labels = [0] * len(plan.slots)
        below: list[tuple[float, int, int]] = []
        pairs_all: list[tuple[float, int, int]] = []
        for c in range(plan.n_clusters):
            slots = plan.cluster_slots(c)
            pairs = pairwise_pairs(slots, [slot_grad[s] for s in slots])
            pairs_all += pairs
            below += [p for p in pairs if p[0] <= tau]
        edges = [(a, b) for psi, a, b in pairs_all if psi > tau]
        items = list(range(len(plan.slots)))

        def partition(extra: list[tuple[int, int]]) -> SharingPlan:
            groups = group_pairs(items, [(1.0, a, b) for a, b in edges + extra], 0.0)
            for g, members in enumerate(groups):
                for s in members:
                    labels[s] = g
            return plan.with_clusters(labels)

        extra: list[tuple[int, int]] = []
        new = partition(extra)
        below.sort(key=lambda p: (-p[0], p[1], p[2]))
        for _, a, b in below:
            if minimum_parameters(new, self.fixed_parameters, True) <= self.budget:
                break
            extra.append((a, b))
            new = partition(extra)
        if extra:
            logger.warning(
                "tau=%s gave clusters whose minimum bank exceeds the budget of %d; merged "
                "%d more pairs (most similar first) to fit",
                tau,
                self.budget,
                len(extra),
            )
        logger.info("refined %d SuperWeight clusters into %d", plan.n_clusters, new.n_clusters)
        self._install(new)
        return new

    def unshare_coefficients(
        self, beta: float, alpha_grads: Mapping[LayerKey, Tensor] | None = None
    ) -> SharingPlan:
        """Un-share coefficients whose users' gradients disagree (Eq. 3, Algorithm 1, ``beta``).

        For every coefficient set read by several member layers, the layers' accumulated
        ``dL/dalpha`` are compared pairwise; layers joined by similarities ``> beta``
        keep one set (connected components), each other group gets its own copy of the
        current values. Banks are untouched, so the ensemble computes the same function
        right after un-sharing, and the budget (which reserves one coefficient vector per
        layer) still holds.

        Parameters
        ----------
        beta : float
            Threshold in ``[-1, 1]``.
        alpha_grads : mapping (member, path) -> Tensor (K,), optional
            Accumulated coefficient gradients; default: :meth:`recorded_gradients`.

        Returns
        -------
        SharingPlan
            The new plan (also installed).
        """
        beta = check_threshold(beta, "beta")
        grads = self._grads_for(alpha_grads, 1)
        plan = self.plan
        labels = [0] * len(plan.layers)
        sources: list[int] = []
        for c in range(plan.n_coefficient_sets):
            users = [i for i, r in enumerate(plan.layers) if r.coef == c]
            keys = [(plan.layers[i].member, plan.layers[i].path) for i in users]
            vecs = [grads[k].detach().to("cpu", torch.float64) for k in keys]
            for group in group_pairs(users, pairwise_pairs(users, vecs), beta, "beta"):
                for i in group:
                    labels[i] = len(sources)
                sources.append(c)
        new = plan.with_coefficient_sets(labels)
        # with_coefficient_sets renumbers by first appearance over layers
        first: dict[int, int] = {}
        for i, r in enumerate(new.layers):
            first.setdefault(r.coef, sources[labels[i]])
        old = self.bank.coefficients
        self.bank.coefficients = nn.ParameterList(
            [nn.Parameter(old[first[c]].detach().clone()) for c in range(new.n_coefficient_sets)]
        )
        self.bank.plan = new
        self._bind()
        logger.info(
            "un-shared %d coefficient sets into %d", plan.n_coefficient_sets, new.n_coefficient_sets
        )
        return new


def interpolate(ensemble: SuperWeightEnsemble, i: int, j: int, t: float) -> dict[str, Tensor]:
    """Weights on the line between members ``i`` and ``j`` (supplement Figure 3).

    Parameters
    ----------
    ensemble : SuperWeightEnsemble
    i, j : int
        Members of the same architecture (same parameter names and shapes).
    t : float
        Position; 0 gives member ``i``, 1 member ``j``.

    Returns
    -------
    dict str -> Tensor
        The state dict of the plain architecture (:meth:`SuperWeightEnsemble.export_member`
        keys) with every floating-point entry ``(1 - t) P_i + t P_j``: composed weights
        ``(1 - t) W_i + t W_j``, stems, classifiers, biases, BatchNorm affines and running
        statistics. Evaluate it with BatchNorm in train mode, as in the supplement.

    Raises
    ------
    ArchitectureMismatchError
        If the two members' parameters differ in names or shapes.
    """
    if (
        not isinstance(t, int | float)
        or isinstance(t, bool)
        or not torch.isfinite(torch.tensor(float(t)))
    ):
        raise InvalidParameterError(f"t must be a finite number, got {t!r}")
    a = ensemble.export_member(i).state_dict()
    b = ensemble.export_member(j).state_dict()
    diff = [k for k in a.keys() | b.keys() if k not in a or k not in b or a[k].shape != b[k].shape]
    if diff:
        raise ArchitectureMismatchError(
            f"members {i} and {j} have different architectures (e.g. {sorted(diff)[:3]}); "
            "interpolate between members of the same architecture"
        )
    return {k: (1 - t) * a[k] + t * b[k] if a[k].is_floating_point() else a[k].clone() for k in a}
