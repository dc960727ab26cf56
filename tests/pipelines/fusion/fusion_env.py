"""Parameters of an environment as ``kedro run --env <env>`` reads them."""

from __future__ import annotations

from pathlib import Path

from kedro.config import OmegaConfigLoader

from weightspace_kedro.settings import CONFIG_LOADER_ARGS

ROOT = Path(__file__).resolve().parents[3]


def load_env_params(env: str) -> dict:
    """conf/base soft-merged with conf/<env> (the project's config loader settings)."""
    args = {k: v for k, v in CONFIG_LOADER_ARGS.items() if k != "default_run_env"}
    return OmegaConfigLoader(str(ROOT / "conf"), env=env, **args)["parameters"]
