"""torchslim: compress PyTorch models and measure them honestly.

The public API is re-exported here; see README.md and docs/ for the concepts.
"""

from __future__ import annotations

from torchslim import tasks
from torchslim._version import __version__
from torchslim.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from torchslim.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ShapeError,
    TaskError,
    TorchslimError,
    TrainingError,
    UnsupportedError,
)
from torchslim.measure import (
    Comparison,
    Footprint,
    benchmark_latency,
    compare,
    count_macs,
    count_nonzero,
    count_parameters,
    measure,
    measure_many,
)
from torchslim.metrics import Accuracy, CallableMetric, CosineFidelity
from torchslim.task import Task, TrainConfig, TrainResult

__all__ = [
    "Accuracy",
    "CallableMetric",
    "CheckpointError",
    "Comparison",
    "ConfigError",
    "CosineFidelity",
    "DataError",
    "Footprint",
    "ShapeError",
    "Task",
    "TaskError",
    "TorchslimError",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "UnsupportedError",
    "__version__",
    "benchmark_latency",
    "compare",
    "count_macs",
    "count_nonzero",
    "count_parameters",
    "load_checkpoint",
    "measure",
    "measure_many",
    "read_checkpoint",
    "save_checkpoint",
    "tasks",
]
