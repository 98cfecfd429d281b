"""Compression techniques: configs + handlers behind one ``apply``."""

# Importing the technique modules registers their configs and handlers. The
# transformer-encoder techniques (torchslim.hf) are registered by torchslim/__init__.py:
# importing them here would be an import cycle (they import torchslim.techniques.base).
from torchslim.techniques import (  # noqa: F401
    channels,
    channels_knob,
    codebook,
    distillation,
    dynamic,
    embedding_quant,
    int8_linear,
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
