"""Shared fixtures: the repository root and the test parameters of each pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The project root (holds pyproject.toml, conf/, src/)."""
    return ROOT


def load_params(env: str, pipeline: str) -> dict:
    """Parameters of ``conf/<env>/parameters_<pipeline>.yml``."""
    with open(ROOT / "conf" / env / f"parameters_{pipeline}.yml") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest (and steadiest on a busy 2-core box) on one thread.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def eval_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A model's outputs on ``x`` in eval mode, without gradients."""
    model.eval()
    with torch.no_grad():
        return model(x)


def max_abs_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference between two models' eval-mode outputs on ``x``."""
    return (eval_outputs(a, x) - eval_outputs(b, x)).abs().max().item()


def merged_params(env: str) -> dict:
    """Every parameter as ``kedro run --env <env>`` sees it (conf/base soft-merged with
    the environment's overrides, as ``settings.py`` configures the loader)."""
    from kedro.config import OmegaConfigLoader

    loader = OmegaConfigLoader(
        conf_source=str(ROOT / "conf"),
        base_env="base",
        default_run_env=env,
        merge_strategy={"parameters": "soft"},
    )
    return loader["parameters"]


def pipeline_catalog(method: str, params: dict):
    """The project catalog entries of ``<method>.*`` and the zoo patterns, plus the
    parameters of ``zoo_<method>`` (if it has a zoo) and every ``<method>.<block>``
    (settings, data): what a SequentialRunner test of one method pipeline needs (paths
    relative to the working directory)."""
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog, MemoryDataset

    conf = OmegaConfigLoader(str(ROOT / "conf"), env="base", base_env="base")["catalog"]
    keep = {k: v for k, v in conf.items() if k.startswith((f"{method}.", "{ns}.", "{default}"))}
    catalog = DataCatalog.from_config(keep)
    for block in ("data", "grid", "run") if f"zoo_{method}" in params else ():
        catalog[f"params:zoo_{method}.{block}"] = MemoryDataset(params[f"zoo_{method}"][block])
    for block, value in params[method].items():  # settings, and data where a method has it
        catalog[f"params:{method}.{block}"] = MemoryDataset(value)
    return catalog
