"""Module shapes as JSON, so that a structurally pruned model reloads without pickling.

Channel pruning changes layer widths; other techniques replace layers by modules of their
own. A checkpoint stores, under ``spec["structure"]``, the constructor arguments of every
module whose shape or type differs from the original architecture; loading builds that
architecture and swaps in empty modules of the recorded shapes before the weights are read.

torch's layers are described here; a technique registers its own module types
(:func:`register_module_type`: a describe and a build function) in its own module, so this
module imports no technique.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchslim.errors import CheckpointError

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_TYPES: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (
        *_CONV,
        *_BN,
        nn.Linear,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.Embedding,
        nn.MultiheadAttention,
    )
}


_SIMPLE: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (nn.Identity, nn.Flatten, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
}


@dataclass(frozen=True)
class ModuleType:
    """How a technique's own module type is written to JSON and rebuilt (empty) from it.

    Attributes:
        cls: the module class (matched with ``isinstance``, in registration order).
        describe: ``module -> constructor arguments`` as JSON values, without ``"type"``
            (None: this instance cannot be described, e.g. its inner layer cannot).
        build: ``arguments -> an empty module`` of that shape (weights are loaded after);
            a KeyError / TypeError / ValueError becomes a CheckpointError.
        replaces: the module replaces one of another type (head pruning replaces
            ``nn.MultiheadAttention``): :func:`structure_diff` records it.
    """

    cls: type[nn.Module]
    describe: Callable[[nn.Module], dict[str, Any] | None]
    build: Callable[[dict[str, Any]], nn.Module]
    replaces: bool = False


MODULE_TYPES: dict[str, ModuleType] = {}
"""Module types registered by techniques, by their JSON ``"type"`` name."""


def register_module_type(
    cls: type[nn.Module],
    describe: Callable[[nn.Module], dict[str, Any] | None],
    build: Callable[[dict[str, Any]], nn.Module],
    *,
    name: str | None = None,
    replaces: bool = False,
) -> None:
    """Let checkpoints record and rebuild a technique's module type (called at import).

    Args:
        cls: the module class; name: its JSON ``"type"`` (default: the class name).
        describe, build, replaces: see :class:`ModuleType`.
    """
    key = name or cls.__name__
    if key in _TYPES or key in _SIMPLE:
        raise TypeError(f"module type {key!r} is built into torchslim.structure")
    MODULE_TYPES[key] = ModuleType(cls, describe, build, replaces)


def register_self_describing(cls: Any) -> Any:
    """Class decorator for a module that describes itself (``describe() -> dict`` with its
    ``"type"``) and is rebuilt empty by ``cls.build(description)`` (``Int8Linear``,
    ``QuantEmbedding``): registered as a type that replaces the layer it quantizes."""
    register_module_type(
        cls,
        lambda module: {k: v for k, v in module.describe().items() if k != "type"},
        cls.build,
        replaces=True,
    )
    return cls


def _registered(module: nn.Module) -> tuple[str, ModuleType] | None:
    for key, entry in MODULE_TYPES.items():
        if isinstance(module, entry.cls):
            return key, entry
    return None


def _describe_simple(module: nn.Module) -> dict[str, Any] | None:
    """Parameter-free layers (a folded BatchNorm's Identity, flatten, pooling), or None."""
    if type(module) in _SIMPLE.values():
        description: dict[str, Any] = {"type": type(module).__name__}
        if isinstance(module, nn.Flatten):
            description.update(start_dim=module.start_dim, end_dim=module.end_dim)
        elif not isinstance(module, nn.Identity):
            size = module.output_size  # type: ignore[attr-defined]
            description["output_size"] = list(size) if isinstance(size, tuple) else size
        return description
    return None


def _build_simple(kind: str, args: dict[str, Any]) -> nn.Module:
    cls = _SIMPLE[kind]
    if "output_size" in args and isinstance(args["output_size"], list):
        args["output_size"] = tuple(args["output_size"])
    return cls(**args)


def describe_module(module: nn.Module) -> dict[str, Any] | None:
    """Constructor arguments of a supported module as JSON values (None if unsupported).

    Supported: the registered module types (:func:`register_module_type`), torch's
    Conv / Linear / norm / Embedding / MultiheadAttention layers and parameter-free layers.
    """
    registered = _registered(module)
    if registered is not None:
        key, entry = registered
        args = entry.describe(module)
        return None if args is None else {"type": key, **args}
    simple = _describe_simple(module)
    if simple is not None:
        return simple
    kinds = [name for name, cls in _TYPES.items() if isinstance(module, cls)]
    if not kinds:
        return None
    kind = kinds[0]  # subclasses (e.g. MultiheadAttention's out_proj) rebuild as the base type
    if isinstance(module, _CONV):
        return {
            "type": kind,
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "kernel_size": list(module.kernel_size),
            "stride": list(module.stride),
            "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
            "dilation": list(module.dilation),
            "groups": module.groups,
            "bias": module.bias is not None,
            "padding_mode": module.padding_mode,
        }
    if isinstance(module, nn.Linear):
        return {
            "type": kind,
            "in_features": module.in_features,
            "out_features": module.out_features,
            "bias": module.bias is not None,
        }
    if isinstance(module, _BN):
        return {
            "type": kind,
            "num_features": module.num_features,
            "eps": module.eps,
            "momentum": module.momentum,
            "affine": module.affine,
            "track_running_stats": module.track_running_stats,
        }
    if isinstance(module, nn.LayerNorm):
        return {
            "type": kind,
            "normalized_shape": list(module.normalized_shape),
            "eps": module.eps,
            "elementwise_affine": module.elementwise_affine,
            "bias": getattr(module, "bias", None) is not None,
        }
    if isinstance(module, nn.GroupNorm):
        return {
            "type": kind,
            "num_groups": module.num_groups,
            "num_channels": module.num_channels,
            "eps": module.eps,
            "affine": module.affine,
        }
    if isinstance(module, nn.Embedding):
        return {
            "type": kind,
            "num_embeddings": module.num_embeddings,
            "embedding_dim": module.embedding_dim,
            "padding_idx": module.padding_idx,
        }
    return {  # MultiheadAttention
        "type": kind,
        "embed_dim": module.embed_dim,
        "num_heads": module.num_heads,
        "bias": module.in_proj_bias is not None,
        "add_bias_kv": module.bias_k is not None,
        "kdim": module.kdim,
        "vdim": module.vdim,
        "batch_first": module.batch_first,
    }


def build_module(description: dict[str, Any]) -> nn.Module:
    """An empty module from :func:`describe_module`'s output."""
    args = dict(description)
    kind = args.pop("type", None)
    if kind in MODULE_TYPES or kind in _SIMPLE:
        try:
            if kind in _SIMPLE:
                return _build_simple(str(kind), args)
            return MODULE_TYPES[str(kind)].build(args)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint structure describes a {kind} it cannot build ({exc}); "
                "re-create the file"
            ) from exc
    if kind not in _TYPES:
        raise CheckpointError(
            f"checkpoint structure names module type {kind!r}, which cannot be rebuilt; "
            f"supported: {', '.join(sorted([*_TYPES, *_SIMPLE, *MODULE_TYPES]))}"
        )
    if kind == "MultiheadAttention":
        embed_dim = args["embed_dim"]
        module = nn.MultiheadAttention(
            embed_dim,
            args["num_heads"],
            bias=args["bias"],
            add_bias_kv=args["add_bias_kv"],
            kdim=args["kdim"],
            vdim=args["vdim"],
            batch_first=args["batch_first"],
        )
        return module
    for key in ("kernel_size", "stride", "dilation", "normalized_shape"):
        if key in args:
            args[key] = tuple(args[key])
    if isinstance(args.get("padding"), list):
        args["padding"] = tuple(args["padding"])
    return _TYPES[kind](**args)


def reference_model(arch: dict[str, Any]) -> nn.Module:
    """The architecture ``spec["arch"]`` names, built on the meta device (no memory, no init)."""
    from torchslim.models import build_model

    with torch.device("meta"):
        return build_model(arch["name"], **arch.get("kwargs", {}))


def structure_diff(model: nn.Module, reference: nn.Module) -> dict[str, dict[str, Any]]:
    """Descriptions of ``model``'s modules whose shape differs from ``reference``'s.

    Raises:
        CheckpointError: a module changed shape but its type cannot be described.
    """
    reference_modules = dict(reference.named_modules())
    changed: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        other = reference_modules.get(name)
        if not name or other is None:
            continue
        mine, theirs = describe_module(module), describe_module(other)
        if type(other) is not type(module):
            registered = _registered(module)
            if registered is not None and registered[1].replaces and mine is not None:
                changed[name] = mine  # e.g. head pruning replaced the attention module
            continue
        if mine is None:
            shapes = [tuple(p.shape) for p in module.parameters(recurse=False)]
            if shapes != [tuple(p.shape) for p in other.parameters(recurse=False)]:
                raise CheckpointError(
                    f"module {name} ({type(module).__name__}) changed shape and cannot be "
                    "recorded in the checkpoint spec; prune only Conv/Linear/norm layers"
                )
            continue
        if mine != theirs:
            changed[name] = mine
    return changed


def apply_structure(model: nn.Module, structure: dict[str, dict[str, Any]]) -> nn.Module:
    """Replace ``model``'s modules named in ``structure`` with empty ones of those shapes."""
    for name, description in structure.items():
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError as exc:
            raise CheckpointError(
                f"checkpoint structure names module {name}, which the architecture lacks; "
                "load it with the architecture it was saved from"
            ) from exc
        if not hasattr(parent, child):
            raise CheckpointError(
                f"checkpoint structure names module {name}, which the architecture lacks; "
                "load it with the architecture it was saved from"
            )
        setattr(parent, child, build_module(description))
    return model
