"""Compression techniques: configs + handlers behind one ``apply``."""

# Importing the technique modules registers their configs and handlers.
# Transformer-encoder techniques (linear_int8, embedding_quant, head_pruning, ffn_pruning,
# layer_drop, embedding_distill); these modules import `transformers` only when used.
from torchslim.hf import distill as _hf_distill  # noqa: E402, F401
from torchslim.hf import layerdrop as _hf_layerdrop  # noqa: E402, F401
from torchslim.hf import quant as _hf_quant  # noqa: E402, F401
from torchslim.hf import structure as _hf_structure  # noqa: E402, F401
from torchslim.techniques import (  # noqa: F401
    channels,
    codebook,
    distillation,
    dynamic,
    lowrank,
    nas,
    pruning,
    quantization,
    recovery,
    schedules,
)
from torchslim.techniques.base import (
    CONFIGS,
    HANDLERS,
    ApplyContext,
    Scope,
    TechniqueConfig,
    apply,
    config_from_dict,
    config_to_dict,
    register_config,
    register_handler,
)

__all__ = [
    "CONFIGS",
    "HANDLERS",
    "ApplyContext",
    "Scope",
    "TechniqueConfig",
    "apply",
    "config_from_dict",
    "config_to_dict",
    "register_config",
    "register_handler",
]
