"""Weightspace: weight-space learning library (pure torch / numpy / POT, no kedro)."""

__version__ = "0.1.0"
