"""Module shapes as JSON, so that a structurally pruned model reloads without pickling.

Channel pruning changes layer widths. A checkpoint stores, under ``spec["structure"]``,
the constructor arguments of every module whose shape differs from the architecture that
``spec["arch"]`` builds; loading builds that architecture and swaps in empty modules of the
recorded shapes before the weights are read.
"""

from __future__ import annotations

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


def _head_pruned() -> type[nn.Module]:
    from torchslim.techniques.heads import HeadPrunedAttention  # lazy: avoids an import cycle

    return HeadPrunedAttention


_SIMPLE: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (nn.Identity, nn.Flatten, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
}


def _describe_wrapper(module: nn.Module) -> dict[str, Any] | None:
    """Quantization wrappers (fake-quant, codebook) and parameter-free layers, or None."""
    from torchslim.techniques.codebook import CodebookLayer  # lazy: avoids an import cycle
    from torchslim.techniques.fake_quant import QuantizedLayer

    if isinstance(module, QuantizedLayer):
        inner = describe_module(module.module)
        if inner is None:
            return None
        wq, iq = module.weight_quant, module.input_quant
        return {
            "type": "QuantizedLayer",
            "module": inner,
            "enabled": bool(module.enabled),
            "weight": {
                "bits": wq.bits,
                "symmetric": bool(wq.symmetric),
                "per_channel": wq.axis == 0,
                "channels": int(wq.scale.numel()),
                "observer": wq.observer,
                "percentile": float(wq.percentile),
                "reduce_range": bool(wq.reduce_range),
            },
            "input": None
            if iq is None
            else {
                "bits": iq.bits,
                "symmetric": bool(iq.symmetric),
                "observer": iq.observer_name,
                "percentile": float(iq.percentile),
                "mode": iq.mode,
            },
        }
    if isinstance(module, CodebookLayer):
        inner = describe_module(module.module)
        if inner is None:
            return None
        return {
            "type": "CodebookLayer",
            "module": inner,
            "bits": int(module.bits),
            "centroids": int(module.centroids.numel()),
        }
    if type(module) in _SIMPLE.values():
        description: dict[str, Any] = {"type": type(module).__name__}
        if isinstance(module, nn.Flatten):
            description.update(start_dim=module.start_dim, end_dim=module.end_dim)
        elif not isinstance(module, nn.Identity):
            size = module.output_size  # type: ignore[attr-defined]
            description["output_size"] = list(size) if isinstance(size, tuple) else size
        return description
    return None


def _build_wrapper(kind: str, args: dict[str, Any]) -> nn.Module:
    from torchslim.techniques.codebook import CodebookLayer
    from torchslim.techniques.fake_quant import ActQuantizer, QuantizedLayer, WeightQuantizer

    if kind == "CodebookLayer":
        inner = build_module(args["module"])
        shape = tuple(inner.weight.shape)  # type: ignore[union-attr]
        count = int(args["centroids"])
        return CodebookLayer(
            inner, torch.zeros(count), torch.zeros(shape, dtype=torch.uint8), int(args["bits"])
        )
    if kind == "QuantizedLayer":
        inner = build_module(args["module"])
        w = args["weight"]
        weight_quant = WeightQuantizer(
            int(w["bits"]),
            bool(w["symmetric"]),
            bool(w["per_channel"]),
            int(w["channels"]),
            observer=str(w["observer"]),
            percentile=float(w["percentile"]),
            reduce_range=bool(w["reduce_range"]),
        )
        i = args.get("input")
        input_quant = None
        if i is not None:
            mode = str(i["mode"])
            if mode not in ("off", "calibrate", "qat", "quant", "dynamic"):
                raise CheckpointError(f"checkpoint structure names quantizer mode {mode!r}")
            input_quant = ActQuantizer(
                int(i["bits"]),
                bool(i["symmetric"]),
                observer=str(i["observer"]),
                percentile=float(i["percentile"]),
                dynamic=mode == "dynamic",
            )
            input_quant.mode = mode
        layer = QuantizedLayer(inner, weight_quant, input_quant)
        layer.enabled = bool(args.get("enabled", True))
        return layer
    cls = _SIMPLE[kind]
    if "output_size" in args and isinstance(args["output_size"], list):
        args["output_size"] = tuple(args["output_size"])
    return cls(**args)


def describe_module(module: nn.Module) -> dict[str, Any] | None:
    """Constructor arguments of a supported module as JSON values (None if unsupported)."""
    wrapped = _describe_wrapper(module)
    if wrapped is not None:
        return wrapped
    if isinstance(module, _head_pruned()):
        return {
            "type": "HeadPrunedAttention",
            "embed_dim": module.embed_dim,
            "num_heads": module.num_heads,
            "head_dim": module.head_dim,
            "bias": module.has_bias,
            "batch_first": module.batch_first,
            "dropout": module.dropout,
        }
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
    if kind == "HeadPrunedAttention":
        return _head_pruned()(**args)
    if kind in ("QuantizedLayer", "CodebookLayer", *_SIMPLE):
        try:
            return _build_wrapper(str(kind), args)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint structure describes a {kind} it cannot build ({exc}); "
                "re-create the file"
            ) from exc
    if kind not in _TYPES:
        raise CheckpointError(
            f"checkpoint structure names module type {kind!r}, which cannot be rebuilt; "
            f"supported: {', '.join(sorted([*_TYPES, *_SIMPLE]))}, QuantizedLayer, CodebookLayer"
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
            if isinstance(module, _head_pruned()):  # head pruning replaced the module
                changed[name] = mine  # type: ignore[assignment]
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
