"""Model fusion: vanilla averaging, OTFusion (Singh & Jaggi 2020) and CLAFusion
(Nguyen et al. 2021).

Public entry points: :func:`otfusion` (same depth, any widths), :func:`clafusion`
(different depths), :func:`cross_layer_alignment` (Algorithm 1 on a user's cost matrix),
:func:`vanilla_average`, and the building blocks (CKA, layer balancing, structure).
"""

from __future__ import annotations

from weightspace.fusion.alignment import cross_layer_alignment
from weightspace.fusion.balance import add_identity_layer, balance_by_adding
from weightspace.fusion.cka import cka_cost_matrix, linear_cka
from weightspace.fusion.clafusion import CLAFusionConfig, CLAFusionResult, clafusion
from weightspace.fusion.inputs import check_fusion_inputs
from weightspace.fusion.merge import balance_by_merging, merge_hidden_layer, relu_mask_estimate
from weightspace.fusion.otfusion import (
    OTFusionConfig,
    TransportNotConvergedError,
    align_models,
    otfusion,
    transport_map,
    vanilla_average,
)
from weightspace.fusion.structure import describe

__all__ = [
    "CLAFusionConfig",
    "CLAFusionResult",
    "OTFusionConfig",
    "TransportNotConvergedError",
    "add_identity_layer",
    "align_models",
    "balance_by_adding",
    "balance_by_merging",
    "check_fusion_inputs",
    "cka_cost_matrix",
    "clafusion",
    "cross_layer_alignment",
    "describe",
    "linear_cka",
    "merge_hidden_layer",
    "otfusion",
    "relu_mask_estimate",
    "transport_map",
    "vanilla_average",
]
