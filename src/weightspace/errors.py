"""Errors raised by Weightspace.

Every error says what was wrong and how to fix it. Each class also derives from the
closest built-in exception (``ValueError``, ``KeyError``, ``FileNotFoundError``) so that
generic ``except`` clauses in user code keep working.
"""

from __future__ import annotations


class WeightspaceError(Exception):
    """Base class of every error raised by the library."""


class InvalidParameterError(WeightspaceError, ValueError):
    """A configuration value is out of range or of the wrong type."""


class UnknownArchitectureError(WeightspaceError, KeyError):
    """An architecture name is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class UnknownDatasetError(WeightspaceError, KeyError):
    """A dataset (or transform) name is not known."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(WeightspaceError, FileNotFoundError):
    """A dataset that must be read from disk is not where the user said it is."""


class CheckpointMismatchError(WeightspaceError, ValueError):
    """A checkpoint does not match the parameter spec or architecture it is loaded into."""


class CorruptCheckpointError(WeightspaceError, ValueError):
    """A checkpoint's content does not match its recorded sha256, or cannot be parsed."""


class NonFiniteWeightsError(WeightspaceError, ValueError):
    """Weights contain NaN or infinity."""


class EmptyZooError(WeightspaceError, ValueError):
    """A zoo (or a selection from it) has no models."""


class ShapeError(WeightspaceError, ValueError):
    """A tensor has the wrong shape for the operation."""


class GateError(WeightspaceError, RuntimeError):
    """A quality gate between pipeline stages failed (e.g. the D2NWG VAE reconstruction)."""


class UnsupportedLayerError(WeightspaceError, TypeError):
    """A model contains a layer type an algorithm cannot handle (the message names it)."""


class ArchitectureMismatchError(WeightspaceError, ValueError):
    """Models that must share an architecture family, input or output size do not."""


class TransportNotConvergedError(WeightspaceError, RuntimeError):
    """The exact OT solver stopped at its iteration limit: its plan is not optimal."""


class NonFiniteCheckpointError(NonFiniteWeightsError, CorruptCheckpointError):
    """A saved checkpoint holds NaN or inf.

    Both a :class:`NonFiniteWeightsError` and a :class:`CorruptCheckpointError`, so that
    ``zoo.run.on_corrupt: retrain`` retrains its member like any other damaged checkpoint.
    """


class ZooLockedError(WeightspaceError, RuntimeError):
    """Another process is writing the same zoo folder."""


class ZooFolderNotWritableError(WeightspaceError, PermissionError):
    """The zoo folder cannot be written by this process."""


class DatasetFormatError(DatasetNotFoundError):
    """A dataset file is present but is not a readable file in the official format."""


class UnsafeDatasetFileError(DatasetFormatError):
    """A dataset pickle references a global that no official dataset file contains."""


class MissingPipelineOutputError(WeightspaceError, FileNotFoundError):
    """An output that another pipeline writes is absent; the message names the command
    that writes it (e.g. ``kedro run --pipelines=distill``)."""


class MetricsKeyError(WeightspaceError, KeyError):
    """A pipeline's ``metrics.json`` lacks a key a reader relies on (the keys drifted)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
