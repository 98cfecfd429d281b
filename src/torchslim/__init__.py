"""torchslim: compress PyTorch models and measure them honestly.

The public API (``import torchslim as ts``; README.md and docs/ use only these names):

* tasks: ``ts.tasks.get(name)``, ``ts.Task``, ``ts.TrainConfig``, metrics;
* techniques: ``ts.apply(model, config, task)`` with any technique config by its class name
  (``ts.MagnitudePruning``, ``ts.ChannelPruning``, ``ts.StaticQuant``, ...), ``ts.Scope``;
* recipes and runs: ``ts.Recipe``, ``ts.run`` / ``ts.compress`` (the pipeline behind
  ``torchslim compress``, the demo and the optimizer), ``ts.optimize``;
* measuring: ``ts.measure``, ``ts.measure_many``, ``ts.compare``, ``ts.count_macs``, ...;
* files: ``ts.save`` / ``ts.load`` (artifacts), ``ts.export_artifact``, checkpoints.

The transformer techniques (``ts.LinearInt8``, ``ts.EmbeddingQuant``, ``ts.HeadPruning``,
``ts.FFNPruning``, ``ts.LayerDrop``, ``ts.EmbeddingDistill``) are importable without
``transformers``, which is imported only when a Hugging Face model is loaded.
"""

from torchslim import tasks
from torchslim._version import __version__
from torchslim.api import compress, run, save
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
from torchslim.export.convert import export_artifact

# The transformer-encoder technique modules register their configs here, whatever module is
# imported first; techniques/__init__ cannot import them (they import techniques.base).
from torchslim.hf.distill import EmbeddingDistill
from torchslim.hf.layerdrop import LayerDrop
from torchslim.hf.structure import FFNPruning, HeadPruning
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
from torchslim.pipeline import RecipeRun
from torchslim.recipe import Export, Recipe
from torchslim.reload import load
from torchslim.report import Candidate, Report
from torchslim.search.budget import Budget
from torchslim.search.optimize import OptimizeResult, optimize
from torchslim.search.options import OptimizeOptions
from torchslim.task import Task, TrainConfig, TrainResult
from torchslim.techniques import (
    CONFIGS,
    ApplyContext,
    Scope,
    TechniqueConfig,
    apply,
    config_from_dict,
    config_to_dict,
    register_config,
    register_handler,
)
from torchslim.techniques.channels import ChannelPruning
from torchslim.techniques.codebook import CodebookQuant
from torchslim.techniques.distillation import Distill, Student
from torchslim.techniques.dynamic import EarlyExit, GatedSkip
from torchslim.techniques.embedding_quant import EmbeddingQuant
from torchslim.techniques.int8_linear import LinearInt8
from torchslim.techniques.lowrank import SpatialSVD, SVDFactorization, TuckerFactorization
from torchslim.techniques.nas import StudentSearch
from torchslim.techniques.pruning import (
    GradientPruning,
    MagnitudePruning,
    NMSparsity,
    RandomPruning,
    TaylorPruning,
    make_permanent,
)
from torchslim.techniques.quantization import QAT, DynamicQuant, StaticQuant, TorchaoInt8
from torchslim.techniques.recovery import FineTune
from torchslim.techniques.schedules import (
    GradualPruning,
    IterativeChannelPruning,
    IterativePruning,
)

__all__ = [
    "CONFIGS",
    "QAT",
    "Accuracy",
    "ApplyContext",
    "Budget",
    "CallableMetric",
    "Candidate",
    "ChannelPruning",
    "CheckpointError",
    "CodebookQuant",
    "Comparison",
    "ConfigError",
    "CosineFidelity",
    "DataError",
    "Distill",
    "DynamicQuant",
    "EarlyExit",
    "EmbeddingDistill",
    "EmbeddingQuant",
    "Export",
    "FFNPruning",
    "FineTune",
    "Footprint",
    "GatedSkip",
    "GradientPruning",
    "GradualPruning",
    "HeadPruning",
    "IterativeChannelPruning",
    "IterativePruning",
    "LayerDrop",
    "LinearInt8",
    "MagnitudePruning",
    "NMSparsity",
    "OptimizeOptions",
    "OptimizeResult",
    "RandomPruning",
    "Recipe",
    "RecipeRun",
    "Report",
    "SVDFactorization",
    "Scope",
    "ShapeError",
    "SpatialSVD",
    "StaticQuant",
    "Student",
    "StudentSearch",
    "Task",
    "TaskError",
    "TaylorPruning",
    "TechniqueConfig",
    "TorchaoInt8",
    "TorchslimError",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "TuckerFactorization",
    "UnsupportedError",
    "__version__",
    "apply",
    "benchmark_latency",
    "compare",
    "compress",
    "config_from_dict",
    "config_to_dict",
    "count_macs",
    "count_nonzero",
    "count_parameters",
    "export_artifact",
    "load",
    "load_checkpoint",
    "make_permanent",
    "measure",
    "measure_many",
    "optimize",
    "read_checkpoint",
    "register_config",
    "register_handler",
    "run",
    "save",
    "save_checkpoint",
    "tasks",
]
