"""Typed errors. Every message is one line that names the problem and the fix.

The CLI prints ``str(error)`` for any :class:`TorchslimError` and exits with
status 1; anything else is a bug (or an unchecked input): one line too, exit status 3,
the traceback only with ``--verbose``.
"""

from __future__ import annotations


class TorchslimError(Exception):
    """Base class of every error torchslim raises on bad input."""


class ConfigError(TorchslimError, ValueError):
    """An invalid option, field or value (out of range, wrong type, unknown name)."""


class TaskError(TorchslimError):
    """An unknown task name or a user task file that does not give a Task."""


class DataError(TorchslimError):
    """Missing, corrupt or malformed data (directory, file, array shapes)."""


class CheckpointError(TorchslimError):
    """A checkpoint that is missing, corrupt, truncated or does not match its architecture."""


class ShapeError(TorchslimError):
    """Inputs whose shape the model rejects."""


class TrainingError(TorchslimError):
    """Training that cannot go on, e.g. a NaN or infinite loss."""


class UnsupportedError(TorchslimError):
    """A layer, model or runtime that an operation cannot handle."""
