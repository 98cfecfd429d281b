"""Argument validation shared by the architectures; every failure is a one-line ConfigError."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torchslim.errors import ConfigError


def positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1 (bools rejected), else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}; pass an int >= 1")
    return value


def positive_float(name: str, value: Any) -> float:
    """Return ``value`` as float if it is a finite number > 0, else raise ConfigError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}; pass e.g. 1.0")
    return float(value)


def probability(name: str, value: Any) -> float:
    """Return ``value`` as float if it lies in [0, 1), else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}; pass e.g. 0.5")
    return float(value)


def positive_int_list(name: str, value: Any, length: int | None = None) -> list[int]:
    """Return ``value`` as a list of positive ints (optionally of a fixed length)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigError(f"{name} must be a list of positive ints, got {value!r}; pass a list")
    if length is not None and len(value) != length:
        raise ConfigError(
            f"{name} must have {length} entries, got {len(value)}; pass a list of {length} ints"
        )
    if len(value) == 0:
        raise ConfigError(f"{name} must not be empty; pass at least one positive int")
    return [positive_int(f"{name}[{i}]", v) for i, v in enumerate(value)]


def scale_width(width: int, width_mult: float) -> int:
    """Scale a channel count by ``width_mult``, rounded, never below 1."""
    return max(1, round(width * width_mult))
