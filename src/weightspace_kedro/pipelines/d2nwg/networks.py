"""Nodes of D2NWG scenario (b): whole networks over related datasets (model retrieval).

One generator learns the zoo ``zoo_d2nwg_networks`` of whole MLPs trained on several
datasets of one input shape (digits and transformed digits, each a separate 10-class
dataset; the zoo template's grid) and generates a network per seen dataset from a
5-shot-per-class support set of it (flattened raw inputs as features). MNIST-1D is not
part of this scenario: its inputs are ``(1, 40)``, so its MLP is another architecture,
and one whole-network generator produces one architecture. Every metric of this
scenario is prefixed ``networks_``.
"""

from __future__ import annotations

import math
from typing import Any

from matplotlib.figure import Figure

from weightspace.data import SplitDataset, make_task
from weightspace.errors import InvalidParameterError
from weightspace.evaluation.memorization import memorization_audit
from weightspace.evaluation.retrieval import (
    RetrievalScores,
    check_shared_architecture,
    evaluate_retrieval,
    flatten_sets,
)
from weightspace.generators.d2nwg import D2NWG
from weightspace.generators.d2nwg_stages import (
    VAEGateReport,
    ZooTasks,
    ZooWeights,
    feature_bank,
    weight_sampler,
)
from weightspace.reporting import d2nwg_report as rep
from weightspace.zoo import MemberSpec, Zoo
from weightspace_kedro.pipelines.d2nwg.settings import NetworksSettings
from weightspace_kedro.typed import typed_settings


def task_slug(spec: Any) -> str:
    """Metric-key name of a task: ``digits``, ``digits_rotate90``, ``digits_permute_seed1``."""
    parts = [spec.dataset]
    if spec.classes is not None:
        parts.append("c" + "-".join(str(c) for c in spec.classes))
    if spec.transform is not None:
        p = spec.transform_param
        parts.append(spec.transform + (f"{p:g}".replace(".", "p") if p else ""))
        if spec.transform_seed:
            parts.append(f"seed{spec.transform_seed}")
    return "_".join(parts)


def build_settings(params: dict[str, Any]) -> NetworksSettings:
    """Validate ``d2nwg_networks.settings`` once, before any work."""
    return typed_settings(NetworksSettings, params, "d2nwg_networks.settings", "d2nwg")


def zoo_tasks(
    members: list[MemberSpec], datasets: dict[str, SplitDataset], s: NetworksSettings
) -> ZooTasks:
    """The zoo's datasets in grid order, conditioned on flattened raw inputs.

    The members come from the zoo template's grid and carry the zoo's data seed
    (``zoo_d2nwg_networks.data.seed``, part of each member id): another split trains
    other networks instead of reusing ones that saw this split's test data.
    """
    seeds = sorted({m.data_seed for m in members})
    if len(seeds) > 1:
        raise InvalidParameterError(
            f"zoo_d2nwg_networks members were trained on splits of data seeds {seeds}; one "
            "zoo must use one split (set zoo_d2nwg_networks.data.seed)"
        )
    specs = list(dict.fromkeys(m.task for m in members))
    tasks = [make_task(datasets[t.dataset], t) for t in specs]
    input_shape, n_classes = check_shared_architecture(tasks)
    return ZooTasks(
        names=tuple(t.name for t in specs),
        datasets=tuple(tasks),
        bank=feature_bank(tasks, n_classes, flatten=True),
        feature_dim=math.prod(input_shape),
        n_classes=n_classes,
    )


def evaluate(
    model: D2NWG, weights: ZooWeights, tasks: ZooTasks, s: NetworksSettings
) -> tuple[RetrievalScores, dict[str, float]]:
    """Sampled vs zoo accuracy per seen dataset, retrieval, and the memorization audit."""
    ev = s.evaluation
    sampler = weight_sampler(model, weights.weight_set, s.seed, features=flatten_sets)
    scores = evaluate_retrieval(
        weights.template, sampler, list(tasks.datasets), weights.stacked, weights.task_of_row,
        ev.n_candidates, ev.shots, s.seed,
    )  # fmt: skip
    audit = memorization_audit(
        weights.template, scores.stacked, scores.sample_task, weights.stacked,
        weights.task_of_row, tasks.test_stack(),
    )  # fmt: skip
    return scores, audit


def report(
    evaluation: tuple[RetrievalScores, dict[str, float]],
    members: list[MemberSpec],
    zoo: Zoo,
    weights: ZooWeights,
    gate: VAEGateReport,
    align_losses: list[float],
    diffusion_losses: list[float],
    node_seconds: dict[str, float],
) -> tuple[dict[str, float], Figure]:
    """Scenario (b)'s metrics (prefixed ``networks_``) and its retrieval figure."""
    scores, audit = evaluation
    names = [task_slug(t) for t in dict.fromkeys(m.task for m in members)]
    stages = rep.stage_metrics(gate, align_losses, diffusion_losses, node_seconds)
    stages.pop("zoo_mean_acc")
    retrieval = rep.retrieval_metrics(scores, names, audit, weights.weight_set.spec.numel, len(zoo))
    metrics = rep.prefixed({**stages, **retrieval}, "networks_")
    return metrics, rep.retrieval_figures(scores, names)["networks_accuracy"]
