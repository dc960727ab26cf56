"""SuperWeight ensembles (Teterwak et al., "Learning to Compose SuperWeights for Neural
Parameter Allocation Search"; supplement:
``papers/superweights_parameter_allocation_search_supplementary.txt``).

Members of any widths and depths share a parameter bank through weight templates: each
shared layer's weight is a SuperWeight ``W = sum_k alpha_k T_k`` of templates that are
windows of its cluster's bank. Modules, one concept each:

- :mod:`~weightspace.ensembles.superweights.bank`: parameter banks, templates, composition,
  initialisation at each layer's fan-in scale;
- :mod:`~weightspace.ensembles.superweights.layers`: SuperWeight Linear / Conv1d / Conv2d;
- :mod:`~weightspace.ensembles.superweights.plan`: slots, width levels, clusters and
  coefficient sets of an ensemble;
- :mod:`~weightspace.ensembles.superweights.clusters`: depth bins and Algorithm 1
  (gradient-similarity grouping with ``tau`` and ``beta``);
- :mod:`~weightspace.ensembles.superweights.budget`: the parameter budget, bank sizes and
  template counts;
- :mod:`~weightspace.ensembles.superweights.checks`: validation of the members;
- :mod:`~weightspace.ensembles.superweights.ensemble`: :class:`SuperWeightEnsemble`,
  refinement, un-sharing, :func:`interpolate`;
- :mod:`~weightspace.ensembles.superweights.anytime`: every member subset by FLOPs;
- :mod:`~weightspace.ensembles.superweights.train`: joint training.
"""

from weightspace.ensembles.superweights.anytime import (
    SubsetScore,
    anytime_probs,
    anytime_scores,
    member_flops,
    member_subsets,
)
from weightspace.ensembles.superweights.bank import ParameterBank, Region, window_offsets
from weightspace.ensembles.superweights.budget import (
    BankAllocation,
    ParameterBudget,
    allocate,
    minimum_parameters,
)
from weightspace.ensembles.superweights.checks import check_members
from weightspace.ensembles.superweights.clusters import (
    check_threshold,
    cropped_cosine,
    depth_bins,
    group_pairs,
)
from weightspace.ensembles.superweights.ensemble import (
    SuperWeightEnsemble,
    SuperWeightMember,
    interpolate,
)
from weightspace.ensembles.superweights.layers import (
    SuperWeightLayer,
    SWConv1d,
    SWConv2d,
    SWLinear,
    superweight_layer,
)
from weightspace.ensembles.superweights.plan import LayerRef, SharingPlan, Slot, build_plan
from weightspace.ensembles.superweights.train import SuperWeightTrainConfig, train_superweights

__all__ = [
    "BankAllocation",
    "LayerRef",
    "ParameterBank",
    "ParameterBudget",
    "Region",
    "SWConv1d",
    "SWConv2d",
    "SWLinear",
    "SharingPlan",
    "Slot",
    "SubsetScore",
    "SuperWeightEnsemble",
    "SuperWeightLayer",
    "SuperWeightMember",
    "SuperWeightTrainConfig",
    "allocate",
    "anytime_probs",
    "anytime_scores",
    "build_plan",
    "check_members",
    "check_threshold",
    "cropped_cosine",
    "depth_bins",
    "group_pairs",
    "interpolate",
    "member_flops",
    "member_subsets",
    "minimum_parameters",
    "superweight_layer",
    "train_superweights",
    "window_offsets",
]
