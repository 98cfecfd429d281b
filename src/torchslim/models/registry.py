"""Name → builder registry for the reference architectures.

A checkpoint stores ``{"name": ..., "kwargs": {...}}`` and rebuilds the architecture with
:func:`build_model`, so every builder takes only JSON-serializable keyword arguments (ints,
floats, bools, strings and lists of them).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from torchslim.errors import ConfigError

ModelBuilder = Callable[..., nn.Module]
_B = TypeVar("_B", bound=ModelBuilder)

MODELS: dict[str, ModelBuilder] = {}
"""Registered builders by name; fill it with :func:`register_model`."""


def register_model(name: str) -> Callable[[_B], _B]:
    """Register a model class or factory under ``name``.

    Args:
        name: Registry key, e.g. ``"mnist1d_cnn"``; must be unique.

    Returns:
        A decorator that records the builder and returns it unchanged.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model name must be a non-empty string, got {name!r}; pass a name")

    def decorator(builder: _B) -> _B:
        if name in MODELS and MODELS[name] is not builder:
            raise ConfigError(
                f"model name {name!r} is already registered; pick another name for {builder!r}"
            )
        MODELS[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(MODELS)


def _option_names(builder: ModelBuilder) -> list[str]:
    """Keyword options a builder accepts (constructor parameters for a class)."""
    params = inspect.signature(builder).parameters.values()
    return [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered architecture from its name and JSON-serializable options.

    Args:
        name: A name from :func:`list_models`.
        **kwargs: Constructor options of that model; omitted ones take their defaults.

    Returns:
        A freshly initialised model (training mode).

    Raises:
        ConfigError: Unknown name, unknown or non-JSON option, or an invalid option value.
    """
    builder = MODELS.get(name) if isinstance(name, str) else None
    if builder is None:
        raise ConfigError(
            f"unknown model {name!r}; use one of: {', '.join(list_models()) or '(none registered)'}"
        )
    signature = inspect.signature(builder)
    takes_var_kwargs = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )
    options = _option_names(builder)
    if not takes_var_kwargs:
        for key in kwargs:
            if key not in options:
                raise ConfigError(
                    f"model {name!r} has no option {key!r}; "
                    f"use one of: {', '.join(options) or '(no options)'}"
                )
    for key, value in kwargs.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ConfigError(
                f"option {key!r} of model {name!r} must be a plain JSON value "
                f"(int, float, bool, str or list of them), got {type(value).__name__}; "
                "convert it, e.g. with int() or .tolist()"
            ) from None
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad options for model {name!r}: {exc}; check the keywords") from None
    return builder(**kwargs)
