"""Model cards: one markdown page per method, from its comparison rows and provenance.

A card says what the method is, the data and zoo it used, every variant's numbers with
where each came from (a ``metrics.json`` key or a fact by construction), which metrics the
pipeline does not measure, and the commit and config hash of the run that produced them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from weightspace.reporting.comparison import HEADERS, MISSING, NUMERIC, ComparisonRow, fmt
from weightspace.reporting.markdown import markdown_table

DESCRIPTIONS: dict[str, str] = {
    "d2nwg": (
        "D2NWG (dataset-conditioned latent diffusion over weights): a chunk beta-VAE "
        "encodes zoo weights, a Set Transformer embeds a task's few shots, and latent "
        "diffusion conditioned on that embedding samples new weights; best-of-k is "
        "selected on validation. Scenario (a) generates classifier heads for seen, unseen "
        "and novel-class tasks; scenario (b) whole MLPs for several related datasets "
        "(../shared/papers/d2nwg_diffusion_weight_generation_review_discussion.txt)."
    ),
    "fusion": (
        "OTFusion and CLAFusion: layer-wise optimal-transport fusion of models, with "
        "cross-layer alignment (CKA cost, dynamic programming) and layer balancing for "
        "models of different depth; then fine-tuning, and fusion as a student "
        "initialisation for KD (../shared/papers/clafusion_cross_layer_alignment_fusion.txt)."
    ),
    "distill": (
        "Ensemble distillation: a deep ensemble of teachers distilled into a KD student, a "
        "BatchEnsemble (one-to-one KD) and LatentBE, the BatchEnsemble averaged into one "
        "network, with ODS / ConfODS / TDiv-SDiv perturbations "
        "(../shared/papers/latentbe_ensemble_distillation_weight_averaging.txt)."
    ),
    "weightformer": (
        "WeightFormer (meta-ensemble parameter learning): a Transformer reads the weights "
        "of several teachers (tokens = output rows of each layer) and writes one student "
        "in a forward pass, against single teachers, their ensemble, KD and an MLP "
        "generator (../shared/papers/weightformer_meta_ensemble_parameter_learning.txt)."
    ),
    "superweights": (
        "SuperWeight ensembles: members (same or different widths/depths) share parameter "
        "banks through weight templates grouped by gradient similarity, at a fraction of a "
        "deep ensemble's parameters, against a single model, deep ensembles and "
        "BatchEnsemble (../shared/papers/superweights_parameter_allocation_search_"
        "supplementary.txt)."
    ),
}

UNKNOWN = "unknown (rerun the pipeline)"


def _zoo_lines(params: Mapping[str, Any] | None, zoos: Sequence[str]) -> list[str]:
    """Architectures, seeds and epochs of each zoo, as the run's parameters stated them."""
    lines = []
    for zoo in zoos:
        grid = (params or {}).get(f"{zoo}.grid")
        if not isinstance(grid, Mapping):
            continue
        archs = [
            f"{a.get('name')} {json.dumps(a.get('config', {}), sort_keys=True)}"
            for a in grid.get("architectures", [])
        ]
        train = grid.get("train", {}) or {}
        lines.append(
            f"- `{zoo}`: {'; '.join(archs) or '?'}; seeds {grid.get('seeds', '?')}; "
            f"epochs {train.get('epochs', '?')}, lr {train.get('lr', '?')}"
        )
    return lines


def _provenance_lines(provenance: Mapping[str, Any] | None) -> list[str]:
    if not provenance:
        return [f"- git commit: {UNKNOWN}", f"- config hash: {UNKNOWN}"]
    dirty = provenance.get("git_dirty")
    commit = provenance.get("git_commit") or "unknown (not run from a git checkout)"
    versions = provenance.get("versions", {}) or {}
    keys = ", ".join(f"`{k}`" for k in provenance.get("params", [])) or "none"
    return [
        f"- git commit: `{commit}`" + (" (with uncommitted changes)" if dirty else ""),
        f"- config hash: `{provenance.get('config_hash', UNKNOWN)}` (sha256 of the "
        f"parameters its nodes read: {keys})",
        f"- kedro env: `{provenance.get('kedro_env', '?')}`"
        + (" (a partial run: filtered nodes)" if provenance.get("partial_run") else ""),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
    ]


def model_card(
    method: str,
    rows: Sequence[ComparisonRow],
    provenance: Mapping[str, Any] | None,
    params: Mapping[str, Any] | None = None,
) -> str:
    """The markdown card of one method.

    Parameters
    ----------
    rows
        The method's rows (:func:`~weightspace.reporting.comparison.extract`).
    provenance
        Its ``provenance.json`` record, or ``None`` when the run predates provenance.
    params
        The parameters its run read (from the provenance), for the zoo description.
    """
    header = ["variant", "zoo · task", *HEADERS.values()]
    body = [[r.variant, r.comparable_group, *(fmt(n, getattr(r, n)) for n in NUMERIC)]
            for r in rows]  # fmt: skip
    unmeasured = [HEADERS[n] for n in NUMERIC if all(getattr(r, n) is None for r in rows)]
    zoos = list(dict.fromkeys(r.zoo for r in rows))
    parts = [
        f"# Model card: {method}\n",
        "## What it is\n",
        DESCRIPTIONS.get(method, method) + "\n",
        "## Data and zoo\n",
        *[f"- {label}" for label in dict.fromkeys(r.comparable_group for r in rows)],
        *_zoo_lines(params, zoos),
        "" if params else f"- parameters of the run: {UNKNOWN}",
        "\n## Results\n",
        "Test split; accuracy in %. Headline variant in the comparison: "
        + ", ".join(f"**{r.variant}**" for r in rows if r.headline)
        + ".\n",
        markdown_table(header, body),
        "",
    ]
    if unmeasured:
        parts.append(
            f"Not measured by the {method} pipeline ({MISSING} above): "
            + ", ".join(unmeasured) + ".\n"
        )  # fmt: skip
    sources = []
    for r in rows:
        src = "; ".join(f"{HEADERS[k]} = {v}" for k, v in r.sources.items())
        sources.append(f"- {r.comparable_group} / {r.variant}: {src}"
                       + (f" ({r.note})" if r.note else ""))  # fmt: skip
    parts += ["## Where each number comes from\n", *sources, "", "## Provenance\n"]
    parts += _provenance_lines(provenance)
    return "\n".join(parts) + "\n"


__all__ = ["DESCRIPTIONS", "UNKNOWN", "model_card"]
