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


SEED_KEY = "d2nwg_networks.settings.seed"
DATA_SEED_KEY = "zoo_d2nwg_networks.data.seed"


def check_data_seed(s: NetworksSettings, data_seed: int) -> None:
    """The scenario's seed and its zoo's data seed (the split) must be one seed.

    ``conf/base`` derives ``zoo_d2nwg_networks.data.seed`` from
    ``d2nwg_networks.settings.seed`` (``--params d2nwg_networks.settings.seed=N`` is merged
    before that interpolation, so it sets both). An override of one seed alone in another
    environment's file (conf/test, conf/gpu, conf/local), or ``--params`` on the data seed,
    would keep one seed's split under the other seed's name (a run "with another seed"
    that reuses the old networks); it fails instead.

    Raises
    ------
    InvalidParameterError
        Naming both keys and their values.
    """
    if int(data_seed) != s.seed:
        raise InvalidParameterError(
            f"{SEED_KEY} ({s.seed}) and {DATA_SEED_KEY} ({int(data_seed)}) differ: the "
            "networks scenario uses one seed for its split and its generator. Set both to "
            "the same value in conf/<env>/parameters_d2nwg.yml (conf/base derives "
            f"{DATA_SEED_KEY} from {SEED_KEY}, and --params {SEED_KEY}=N sets both; an "
            "override in conf/test, conf/gpu or conf/local must set both)"
        )


def build_settings(params: dict[str, Any], data: dict[str, Any] | None = None) -> NetworksSettings:
    """Validate ``d2nwg_networks.settings`` once, before any work.

    With ``data`` (the ``zoo_d2nwg_networks.data`` block) its seed is checked against the
    settings' seed here too (:func:`check_data_seed`), before the zoo is trained.
    """
    s = typed_settings(NetworksSettings, params, "d2nwg_networks.settings", "d2nwg")
    if data is not None:
        check_data_seed(s, int(data.get("seed", 0)))
    return s


def zoo_tasks(
    members: list[MemberSpec], datasets: dict[str, SplitDataset], s: NetworksSettings
) -> ZooTasks:
    """The zoo's datasets in grid order, conditioned on flattened raw inputs.

    The members come from the zoo template's grid and carry the zoo's data seed
    (``zoo_d2nwg_networks.data.seed``, part of each member id): another split trains
    other networks instead of reusing ones that saw this split's test data. That seed
    must be the scenario's seed (:func:`check_data_seed`).
    """
    seeds = sorted({m.data_seed for m in members})
    if len(seeds) > 1:
        raise InvalidParameterError(
            f"zoo_d2nwg_networks members were trained on splits of data seeds {seeds}; one "
            f"zoo must use one split (set {DATA_SEED_KEY})"
        )
    if seeds:
        check_data_seed(s, seeds[0])
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
