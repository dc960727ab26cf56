"""Shared fixtures: the repository root and the test parameters of each pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The project root (holds pyproject.toml, conf/, src/)."""
    return ROOT


def load_params(env: str, pipeline: str) -> dict:
    """Parameters of ``conf/<env>/parameters_<pipeline>.yml``."""
    with open(ROOT / "conf" / env / f"parameters_{pipeline}.yml") as fh:
        return yaml.safe_load(fh)
