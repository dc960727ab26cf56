"""Kedro project settings: OmegaConfigLoader with one parameters file per pipeline."""

from kedro.config import OmegaConfigLoader

from weightspace_kedro.hooks import WeightspaceHooks

HOOKS = (WeightspaceHooks(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # conf/test and conf/gpu state only what differs from conf/base: nested keys merge.
    "merge_strategy": {"parameters": "soft"},
}
