"""torchslim: compress PyTorch models and measure them honestly.

The public API is re-exported here; see README.md and docs/ for the concepts.
"""

from __future__ import annotations

from torchslim import tasks

# `techniques` and the `torchslim.hf` technique modules are imported here so that every
# technique config is registered whatever module is imported first (the hf ones: linear_int8,
# embedding_quant, head_pruning, ffn_pruning, layer_drop, embedding_distill; they import
# `transformers` only when used). techniques/__init__ cannot import them: that is a cycle.
from torchslim import techniques as _techniques  # noqa: F401
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

# every module that registers an artifact format (torchslim.artifacts), so recipes, the
# pipeline and `torchslim export` see the whole list whatever module is imported first
# (checkpoint registers `torch`, hf.loading `hf`; reload registers the structure records)
from torchslim.export import onnx as _onnx_formats  # noqa: F401
from torchslim.export import packed as _packed_format  # noqa: F401
from torchslim.export import sparse as _sparse_format  # noqa: F401
from torchslim.hf import distill as _hf_distill  # noqa: F401
from torchslim.hf import layerdrop as _hf_layerdrop  # noqa: F401
from torchslim.hf import structure as _hf_structure  # noqa: F401
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
from torchslim.reload import load
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
    "load",
    "load_checkpoint",
    "measure",
    "measure_many",
    "read_checkpoint",
    "save_checkpoint",
    "tasks",
]
