"""Compression techniques: configs + handlers behind one ``apply``."""

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
