"""Nodes of the zoo pipeline: thin calls into :mod:`weightspace.zoo`."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from weightspace.data import SplitDataset, dataset_card, load_dataset
from weightspace.errors import InvalidParameterError
from weightspace.reporting.zoo_plots import zoo_accuracy_figure
from weightspace.zoo import MemberSpec, Zoo, ZooRunOptions, expand_grid, train_zoo
from weightspace.zoo.build import materialize_tasks
from weightspace_kedro.runner import node_world


def load_datasets(data: dict[str, Any]) -> dict[str, SplitDataset]:
    """Load the base datasets named under ``data.datasets`` (name -> loader kwargs)."""
    datasets = data.get("datasets") or {}
    if not datasets:
        raise InvalidParameterError("zoo data.datasets is empty; name at least one dataset")
    seed, root = int(data.get("seed", 0)), data.get("root")
    return {
        name: load_dataset(name, root=root, seed=seed, **dict(kwargs or {}))
        for name, kwargs in datasets.items()
    }


def plan_members(
    datasets: dict[str, SplitDataset], grid: dict[str, Any], data: dict[str, Any]
) -> list[MemberSpec]:
    """Expand the grid into the list of members."""
    n_classes = {name: ds.n_classes for name, ds in datasets.items()}
    return expand_grid(grid, n_classes, data_seed=int(data.get("seed", 0)))


def describe_data(datasets: dict[str, SplitDataset], members: list[MemberSpec]) -> dict[str, Any]:
    """Dataset cards of the base datasets and of every task the zoo trains on."""
    tasks = materialize_tasks(members, datasets)
    return {
        "datasets": [dataset_card(ds) for ds in datasets.values()],
        "tasks": [dataset_card(ds) for ds in tasks.values()],
    }


def train(
    members: list[MemberSpec],
    datasets: dict[str, SplitDataset],
    previous: Zoo,
    run: dict[str, Any],
) -> tuple[Zoo, dict[str, Any]]:
    """Train every member not already in ``previous``; return the zoo and a run report.

    When ``previous`` is rooted in the zoo folder (the catalog's ``zoo_previous``), the
    library writes each stack there as soon as it is trained (locked, resumable); the
    catalog's save of ``zoo_models`` then has nothing left to write. Under torchrun the
    members are shared between the ranks (:mod:`weightspace.zoo.sharded`).
    """
    options = ZooRunOptions(**run)
    world = node_world(options.device)
    zoo, report = train_zoo(members, datasets, previous, options, root=previous.root, world=world)
    return zoo, {
        "n_members": report.n_members,
        "n_trained": report.n_trained,
        "n_reused": report.n_reused,
        "n_dropped": report.n_dropped,
        "train_seconds": report.train_seconds,
        "models_per_second": report.models_per_second,
    }


def report(zoo: Zoo, run_report: dict[str, Any]) -> tuple[dict[str, float], Figure]:
    """Flat metrics of the zoo and its accuracy figure."""
    final = zoo.index[zoo.index["is_final"].astype(bool)]
    # Training cost of the zoo as it stands, resumed members included: each stack's wall
    # time (training only) counted once.
    train_seconds = float(zoo.index.drop_duplicates("stack_id")["stack_seconds"].sum())
    metrics: dict[str, float] = {
        "n_models": len(final),
        "n_checkpoints": len(zoo.index),
        "n_architectures": int(final["arch"].nunique()),
        "n_architecture_instances": int(final["arch_key"].nunique()),
        "n_tasks": int(final["task"].nunique()),
        "mean_test_accuracy": float(final["test_accuracy"].mean()),
        "mean_test_nll": float(final["test_nll"].mean()),
        "mean_test_ece": float(final["test_ece"].mean()),
        "train_seconds": train_seconds,
        "models_per_second": len(final) / train_seconds if train_seconds > 0 else 0.0,
        **{f"run_{k}": float(v) for k, v in run_report.items()},
    }
    for arch, group in final.groupby("arch"):
        metrics[f"mean_test_accuracy_{arch}"] = float(group["test_accuracy"].mean())
    return metrics, zoo_accuracy_figure(final)
