"""Technique configs, their registry, one ``apply`` dispatcher, and scope selection.

A technique is a small frozen dataclass (typed fields, validated in
``__post_init__``) plus a handler registered for that config type, as in
torchao's ``quantize_(model, config)``. ``apply`` copies the model (the input is
never modified), finds the handler by the config's type and runs it.

Configs serialize to plain dicts ``{"type": name, "version": 1, ...fields}`` and
back through an allow-list (the registry): nothing else is ever instantiated.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from torch import nn

from torchslim.errors import ConfigError, UnsupportedError

if TYPE_CHECKING:
    from torchslim.task import Task

CONFIG_VERSION = 1

C = TypeVar("C", bound="TechniqueConfig")


@dataclass(frozen=True)
class TechniqueConfig:
    """Base class of every technique config.

    Subclasses set ``name`` (registry key, e.g. ``"magnitude_pruning"``) and
    ``family`` (``"pruning"``, ``"quantization"``, ...) and validate their fields in
    ``__post_init__``, raising :class:`ConfigError` with the allowed values. A step that
    trains a compressed model back towards its baseline (fine-tuning, distillation) sets
    ``role = "recovery"``: a search watches such steps' epochs and may stop them early.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    role: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """``{"type": name, "version": 1, **fields}`` with plain JSON/YAML values."""
        return config_to_dict(self)


@dataclass
class ApplyContext:
    """What a handler may use besides the model: the task (data, training loop) and notes.

    Handlers record what they did in ``notes`` (per-layer tables, skipped layers with
    the reason) so that reports can show it. ``teacher`` is the uncompressed model
    when a recipe runs, so a recovery step can distill from it.
    """

    task: Task | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    teacher: Any = None  # the uncompressed model, for distillation-based recovery
    # ``on_epoch(config, model, epoch)`` after each training epoch of a step (a search
    # watches recovery steps and stops hopeless candidates by raising from it)
    on_epoch: Callable[[Any, nn.Module, int], None] | None = None

    def epoch_hook(self, config: TechniqueConfig) -> Callable[[nn.Module, int], None] | None:
        """``after_epoch(model, epoch)`` for a training handler of ``config`` (None: unwatched)."""
        on_epoch = self.on_epoch
        if on_epoch is None:
            return None
        return lambda model, epoch: on_epoch(config, model, epoch)


def check_lr(owner: str, lr: float | None, optional: bool = True) -> None:
    """Raise unless ``lr`` is a positive finite number (or None, when ``optional``)."""
    if lr is None and optional:
        return
    if (
        isinstance(lr, bool)
        or not isinstance(lr, (int, float))
        or not (lr > 0 and math.isfinite(lr))
    ):
        default = " (or null for the default)" if optional else ""
        raise ConfigError(f"{owner}.lr must be a positive number{default}, got {lr!r}")


Handler = Callable[[nn.Module, Any, ApplyContext], nn.Module]

CONFIGS: dict[str, type[TechniqueConfig]] = {}
HANDLERS: dict[type[TechniqueConfig], Handler] = {}


def register_config(cls: type[C]) -> type[C]:
    """Class decorator: add a config class to the registry under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a class attribute name")
    if cls.name in CONFIGS and CONFIGS[cls.name] is not cls:
        raise TypeError(f"technique name {cls.name!r} is registered twice")
    CONFIGS[cls.name] = cls
    return cls


def register_handler(config_type: type[TechniqueConfig]) -> Callable[[Handler], Handler]:
    """Decorator: ``handler(model, config, context) -> model`` for one config type."""

    def decorator(handler: Handler) -> Handler:
        HANDLERS[config_type] = handler
        return handler

    return decorator


def apply(
    model: nn.Module,
    config: TechniqueConfig,
    task: Task | None = None,
    *,
    inplace: bool = False,
    context: ApplyContext | None = None,
) -> nn.Module:
    """Apply one technique config to a model and return the result.

    Args:
        model: the model; copied first unless ``inplace`` (the input is never modified).
        config: any registered technique config.
        task: the Task, for techniques that need data (calibration, gradients, fine-tuning).
        inplace: modify ``model`` itself instead of a copy.
        context: collects notes across several ``apply`` calls (e.g. a recipe).
    """
    handler = HANDLERS.get(type(config))
    if handler is None:
        raise UnsupportedError(
            f"no handler is registered for {type(config).__name__}; register one with "
            "@register_handler"
        )
    target = model if inplace else copy.deepcopy(model)
    context = context or ApplyContext(task=task)
    if context.task is None:
        context.task = task
    return handler(target, config, context)


# ------------------------------------------------------------------ serialization


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def config_to_dict(config: TechniqueConfig) -> dict[str, Any]:
    """Serialize a registered config to plain values (lists, dicts, str, numbers, None)."""
    data: dict[str, Any] = {"type": config.name, "version": CONFIG_VERSION}
    for item in dataclasses.fields(config):
        data[item.name] = _plain(getattr(config, item.name))
    return data


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin is tuple:
        return "a list"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against the field's declared type and convert YAML/JSON shapes.

    Lists become tuples, dicts become Scope, ints become floats where a float is
    declared. A value of the wrong type raises ConfigError naming the field and
    the expected type.
    """
    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{where} must be {_type_name(annotation)}, got {value!r}")
    if annotation is type(None):
        if value is None:
            return None
    elif origin is typing.Literal:
        if value in args:
            return value
    elif annotation is Scope:
        if isinstance(value, Scope):
            return value
        if isinstance(value, dict):
            return Scope.from_dict(value, where)
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
            if args and len(args) == len(value):
                return tuple(
                    _coerce(v, a, f"{where}[{i}]")
                    for i, (v, a) in enumerate(zip(value, args, strict=True))
                )
            if not args:
                return tuple(value)
    elif origin is dict:
        if isinstance(value, dict):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
    else:
        return value
    raise ConfigError(f"{where} must be {_type_name(annotation)}, got {value!r}")


def config_from_dict(data: dict[str, Any]) -> TechniqueConfig:
    """Build a config from a dict made by :func:`config_to_dict` (allow-listed types only)."""
    if not isinstance(data, dict) or "type" not in data:
        raise ConfigError("a technique needs a 'type' field naming the technique")
    name = data["type"]
    if name not in CONFIGS:
        raise ConfigError(f"unknown technique {name!r}; use one of {', '.join(sorted(CONFIGS))}")
    version = data.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError(
            f"technique {name!r} has config version {version}; this torchslim reads version "
            f"{CONFIG_VERSION}"
        )
    cls = CONFIGS[name]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("type", "version"):
            continue
        if key not in fields:
            raise ConfigError(
                f"technique {name!r} has no field {key!r}; fields: {', '.join(sorted(fields))}"
            )
        kwargs[key] = _coerce(value, hints.get(key, Any), f"{name}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"technique {name!r}: {exc}") from exc


# ------------------------------------------------------------------ scope selection


@dataclass(frozen=True)
class Scope:
    """Which modules a technique touches (NNCF's IgnoredScope, torchao's FqnToConfig).

    Each entry of ``include`` / ``exclude`` is a module name (``features.0``), a
    regular expression prefixed ``re:`` (``re:features\\.[0-3]``), or a module type
    name (``Conv2d``, ``Linear``). ``types`` restricts selection to module types.
    An empty ``include`` means every module of the technique's supported types.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for entry in (*self.include, *self.exclude):
            if not isinstance(entry, str) or not entry:
                raise ConfigError(f"scope entries must be non-empty strings, got {entry!r}")
            if entry.startswith("re:"):
                try:
                    re.compile(entry[3:])
                except re.error as exc:
                    raise ConfigError(
                        f"scope pattern {entry!r} is not a valid regex ({exc})"
                    ) from exc

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "scope") -> Scope:
        """Build from ``{"include": [...], "exclude": [...], "types": [...]}``."""
        unknown = set(data) - {"include", "exclude", "types"}
        if unknown:
            raise ConfigError(
                f"{where} has unknown keys {sorted(unknown)}; use include, exclude, types"
            )
        return cls(
            **{k: tuple(v) if isinstance(v, (list, tuple)) else (v,) for k, v in data.items()}
        )

    @staticmethod
    def matches(entry: str, name: str, module: nn.Module) -> bool:
        if entry.startswith("re:"):
            return re.fullmatch(entry[3:], name) is not None
        return entry == name or entry == type(module).__name__

    def select(
        self, model: nn.Module, supported: Iterable[type[nn.Module]] = (nn.Module,)
    ) -> list[tuple[str, nn.Module]]:
        """The (name, module) pairs in scope among modules of the ``supported`` types."""
        supported = tuple(supported)
        chosen = []
        for name, module in model.named_modules():
            if not name or not isinstance(module, supported):
                continue
            if self.types and type(module).__name__ not in self.types:
                continue
            if self.include and not any(self.matches(e, name, module) for e in self.include):
                continue
            if any(self.matches(e, name, module) for e in self.exclude):
                continue
            chosen.append((name, module))
        return chosen

    def check_known(self, model: nn.Module) -> None:
        """Raise if a plain name in include/exclude names no module (a typo guard)."""
        names = {name for name, _ in model.named_modules()}
        types = {type(m).__name__ for m in model.modules()}
        for entry in (*self.include, *self.exclude):
            if not entry.startswith("re:") and entry not in names and entry not in types:
                raise ConfigError(
                    f"scope entry {entry!r} names no module or module type of the model; "
                    f"module names look like {', '.join(sorted(names - {''})[:5])}"
                )
