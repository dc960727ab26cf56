"""Kedro glue for Weightspace: settings, pipelines, datasets and hooks."""

__version__ = "0.1.0"
