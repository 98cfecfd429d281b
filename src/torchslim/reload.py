"""Rebuild a compressed model from its file plus the user's original architecture.

A compressed model is the original architecture with some modules changed. The file's JSON
spec records every change, compared with the model the task was built from (a built-in
architecture or the user's own ``nn.Module`` / factory), so no class is ever pickled:

* ``structure``: modules whose constructor arguments changed (channel pruning's widths,
  head-pruned attention) or that were replaced by a wrapper torchslim knows (fake-quantized
  and codebook layers, a folded BatchNorm's ``Identity``): ``{module: description}``;
* ``factorized``: low-rank layers (``{module: {"kind", "layers": [descriptions]}}``);
* ``resized``: parameters / buffers of other modules whose shape changed (a class token,
  a position embedding, a layer scale cut with the embedding width): ``{tensor: shape}``;
* ``attributes``: ``num_heads`` / ``head_dim`` of fused-qkv attention after pruning;
* ``early_exit``: the exit points, threshold and exit heads of an early-exit model;
* ``original_shapes``: the original's shapes of every tensor the records above replace, so
  that loading into another architecture is refused, naming the first such tensor;
* ``gated``: blocks a gate may skip (``gated_skip``): ``{block: {"channels", "branches"}}``,
  each branch ``"original"`` (the block itself) or a module description (``Identity``).

:func:`load` (``torchslim.load``) applies them to a copy of the original, first on the meta
device (no memory) to compare with the file's tensor shapes, then loads the weights.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchslim.artifacts import StructureRecords, register_structure_records
from torchslim.errors import CheckpointError
from torchslim.structure import apply_structure, build_module, describe_module

if TYPE_CHECKING:
    from torchslim.task import Task

ATTRIBUTES = ("num_heads", "head_dim")
"""Integer attributes recorded when they change (fused-qkv attention after pruning)."""

RECORD_KEYS = (
    "structure",
    "factorized",
    "resized",
    "attributes",
    "early_exit",
    "gated",
    "original_shapes",
)
"""Spec keys that describe how a compressed model differs from its original."""

Original = nn.Module | Callable[[], nn.Module]


# ------------------------------------------------------------------ recording


def _named(model: nn.Module, reference: nn.Module) -> list[tuple[str, nn.Module]]:
    """``model``'s modules named as in ``reference`` (an early-exit model's trunk renamed)."""
    from torchslim.techniques.dynamic import EarlyExitModel

    if not isinstance(model, EarlyExitModel):
        return list(model.named_modules())
    rename = _segment_names(reference, model.exits)
    named = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if len(parts) >= 3 and parts[0] == "segments":
            base = rename.get((int(parts[1]), int(parts[2])))
            if base is not None:
                named.append((".".join([base, *parts[3:]]), module))
    return named


def _gated(
    named: list[tuple[str, nn.Module]], reference: dict[str, nn.Module]
) -> tuple[list[tuple[str, nn.Module]], dict[str, Any]]:
    """Gated blocks' records, and ``named`` with each gated block's original branch renamed
    to the block's own name (its gate and other branches left out: they are recorded)."""
    from torchslim.techniques.dynamic import GatedBranches

    gated: dict[str, Any] = {}
    kept: dict[str, str] = {}  # "block.branches.k" -> "block"
    for name, module in named:
        if not isinstance(module, GatedBranches):
            continue
        other = reference.get(name)
        kind = type(other).__qualname__ if other is not None else None  # (a class re-imported
        original = next(  # from the same task file is another object of the same name)
            (i for i, b in enumerate(module.branches) if type(b).__qualname__ == kind), None
        )
        if original is None:
            raise CheckpointError(
                f"gated block {name} holds no branch of the original's type; save it with the "
                "model it was gated from"
            )
        branches = [
            "original" if i == original else describe_module(branch)
            for i, branch in enumerate(module.branches)
        ]
        if any(branch is None for branch in branches):
            raise CheckpointError(f"gated block {name} holds a branch with no description")
        gated[name] = {"channels": int(module.gate.in_features), "branches": branches}
        kept[f"{name}.branches.{original}" if name else f"branches.{original}"] = name
    if not gated:
        return named, {}
    renamed = []
    for name, module in named:
        block = next((b for b in gated if name == b or name.startswith(f"{b}.")), None)
        if block is None:
            renamed.append((name, module))
            continue
        prefix = next((k for k in kept if name == k or name.startswith(f"{k}.")), None)
        if prefix is not None:  # inside the original branch: the original's own names
            renamed.append((kept[prefix] + name[len(prefix) :], module))
    return renamed, gated


def _segment_names(reference: nn.Module, exits: list[str]) -> dict[tuple[int, int], str]:
    """(segment, position) -> the trunk module's name in the original model."""
    from torchslim.techniques.dynamic import chain_of

    names = [name for name, _ in chain_of(reference)]
    missing = [point for point in exits if point not in names]
    if missing:
        raise CheckpointError(
            f"early-exit point {missing[0]!r} is not a layer of the original model; load it "
            "with the architecture it was saved from"
        )
    bounds = [0, *sorted(names.index(point) + 1 for point in set(exits)), len(names)]
    mapping = {}
    for segment, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        for position in range(end - start):
            mapping[(segment, position)] = names[start + position]
    return mapping


def structure_record(model: nn.Module, reference: nn.Module | None) -> dict[str, Any]:
    """The spec entries (:data:`RECORD_KEYS`) that rebuild ``model`` from ``reference``.

    Raises:
        CheckpointError: a changed module whose shape cannot be described.
    """
    if reference is None:
        return {}
    from torchslim.techniques.dynamic import EarlyExitModel
    from torchslim.techniques.lowrank import Factorized

    reference_modules = dict(reference.named_modules())
    named, gated = _gated(_named(model, reference), reference_modules)
    structure: dict[str, Any] = {}
    factorized: dict[str, Any] = {}
    resized: dict[str, list[int]] = {}
    attributes: dict[str, dict[str, int]] = {}
    for name, module in named:
        other = reference_modules.get(name)
        if other is None:
            continue
        if isinstance(module, Factorized) and not isinstance(other, Factorized):
            layers = [describe_module(layer) for layer in module]
            if any(layer is None for layer in layers):
                raise CheckpointError(f"factorized layer {name} holds a module with no description")
            factorized[name] = {"kind": module.kind, "layers": layers}
            continue
        mine = describe_module(module)
        if type(other) is not type(module):
            if name and mine is not None:
                structure[name] = mine
            continue
        if mine is not None:
            if name and mine != describe_module(other):
                structure[name] = mine
            continue
        _record_tensors(name, module, other, resized)
        changed = {
            key: int(getattr(module, key))
            for key in ATTRIBUTES
            if isinstance(getattr(module, key, None), int)
            and isinstance(getattr(other, key, None), int)
            and getattr(module, key) != getattr(other, key)
        }
        if changed:
            attributes[name] = changed
    record: dict[str, Any] = {}
    for key, value in (
        ("structure", structure),
        ("factorized", factorized),
        ("resized", resized),
        ("attributes", attributes),
        ("gated", gated),
    ):
        if value:
            record[key] = value
    replaced = [*structure, *factorized]
    if replaced or resized:
        reference_state = reference.state_dict()
        record["original_shapes"] = {
            key: list(tensor.shape)
            for key, tensor in reference_state.items()
            if key in resized or any(key.startswith(f"{name}.") for name in replaced)
        }
    if isinstance(model, EarlyExitModel):
        heads = [
            [describe_module(layer) for layer in head.children()] for head in model.heads.children()
        ]
        if any(layer is None for head in heads for layer in head):
            raise CheckpointError("an early-exit head holds a module with no description")
        record["early_exit"] = {
            "exits": list(model.exits),
            "threshold": float(model.threshold),
            "heads": heads,
        }
    return record


def _record_tensors(
    name: str, module: nn.Module, other: nn.Module, resized: dict[str, list[int]]
) -> None:
    theirs = dict(other.named_parameters(recurse=False)) | dict(other.named_buffers(recurse=False))
    mine = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
    for key, tensor in mine.items():
        if key in theirs and tuple(tensor.shape) != tuple(theirs[key].shape):
            resized[f"{name}.{key}" if name else key] = list(tensor.shape)


def reference_of(task: Task | None) -> nn.Module | None:
    """The original model a task compresses (built-in architecture on the meta device)."""
    if task is None:
        return None
    cached = task.__dict__.get("_torchslim_reference")
    if cached is not None:
        return cached
    if task.arch is not None:
        from torchslim.structure import reference_model

        reference = reference_model(task.arch)
    elif isinstance(task.model, nn.Module):
        reference = task.build_model()
    else:
        try:  # the caller's random state is left alone, as Task.build_model does
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                reference = task.model()
        except Exception:  # noqa: BLE001 - a factory that cannot run on meta: build it for real
            reference = task.build_model()
    task.__dict__["_torchslim_reference"] = reference
    return reference


def artifact_spec(task: Task | None, model: nn.Module, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` plus how ``model`` differs from the task's original (keys already set stay)."""
    record = structure_record(model, reference_of(task))
    return {**spec, **{k: v for k, v in record.items() if k not in spec}}


# ------------------------------------------------------------------ rebuilding


def rebuild(original: Original, spec: dict[str, Any]) -> nn.Module:
    """An empty compressed model: a copy of ``original`` with the spec's changes applied."""
    return apply_record(_instantiate(original), spec)


def _instantiate(original: Original) -> nn.Module:
    if isinstance(original, nn.Module):
        model = copy.deepcopy(original)
    elif callable(original):
        model = original()
        if not isinstance(model, nn.Module):
            raise CheckpointError(
                f"model= factory returned {type(model).__name__}, not an nn.Module; pass the "
                "original model or a zero-argument function that builds it"
            )
    else:
        raise CheckpointError(
            f"model= is a {type(original).__name__}; pass the original nn.Module or a "
            "zero-argument function that builds it"
        )
    return model


def apply_record(model: nn.Module, spec: dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Apply the spec's :data:`RECORD_KEYS` to ``model`` (modified; an early-exit model is new).

    Raises:
        CheckpointError: the record names layers the model lacks or cannot be built.
    """
    try:
        return _apply_record(model, spec)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"{source}: the structure its spec records cannot be built "
            f"({type(exc).__name__}: {first}); re-create the file"
        ) from exc


def _apply_record(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    if spec.get("structure"):
        apply_structure(model, spec["structure"])
    if spec.get("factorized"):
        from torchslim.techniques.lowrank import apply_factorized_structure

        apply_factorized_structure(model, spec["factorized"])
    for key, shape in (spec.get("resized") or {}).items():
        _resize(model, key, shape)
    for name, values in (spec.get("attributes") or {}).items():
        owner = _submodule(model, name, "names attention")
        for key, value in values.items():
            if key not in ATTRIBUTES or not hasattr(owner, key):
                raise CheckpointError(
                    f"checkpoint sets attribute {key!r} of {name or 'the model'}, which it lacks; "
                    "load it with the architecture it was saved from"
                )
            setattr(owner, key, int(value))
    if spec.get("gated"):
        model = _gate(model, spec["gated"])
    if spec.get("early_exit"):
        model = _early_exit(model, spec["early_exit"])
    return model


def _gate(model: nn.Module, entries: dict[str, Any]) -> nn.Module:
    """Wrap each recorded block in a gate with its recorded branches."""
    from torchslim.techniques.dynamic import GatedBranches

    for name, entry in entries.items():
        block = _submodule(model, name, "gates")
        branches = [
            block if branch == "original" else build_module(branch) for branch in entry["branches"]
        ]
        gated = GatedBranches(branches, int(entry["channels"]))
        if not name:
            return gated
        parent_name, _, child = name.rpartition(".")
        setattr(_submodule(model, parent_name, "gates"), child, gated)
    return model


def _submodule(model: nn.Module, name: str, what: str) -> nn.Module:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError as exc:
        raise CheckpointError(
            f"checkpoint {what} {name}, which the architecture lacks; load it with the "
            "architecture it was saved from"
        ) from exc


def _resize(model: nn.Module, key: str, shape: list[int]) -> None:
    owner_name, _, leaf = key.rpartition(".")
    owner = _submodule(model, owner_name, "resizes tensors of")
    if leaf in owner._parameters and owner._parameters[leaf] is not None:
        old = owner._parameters[leaf]
        owner._parameters[leaf] = nn.Parameter(
            torch.zeros(shape, dtype=old.dtype, device=old.device), old.requires_grad
        )
    elif leaf in owner._buffers and owner._buffers[leaf] is not None:
        old = owner._buffers[leaf]
        owner._buffers[leaf] = torch.zeros(shape, dtype=old.dtype, device=old.device)
    else:
        raise CheckpointError(
            f"checkpoint resizes tensor {key}, which the architecture lacks; load it with the "
            "architecture it was saved from"
        )


def _early_exit(trunk: nn.Module, entry: dict[str, Any]) -> nn.Module:
    from torchslim.techniques.dynamic import EarlyExitModel, chain_of

    exits = [str(point) for point in entry["exits"]]
    mapping = _segment_names(trunk, exits)
    modules = dict(chain_of(trunk))
    segments: list[list[nn.Module]] = [[] for _ in range(len(exits) + 1)]
    for (segment, _), name in sorted(mapping.items()):
        segments[segment].append(modules[name])
    heads = [nn.Sequential(*[build_module(d) for d in head]) for head in entry["heads"]]
    if len(heads) != len(exits):
        raise CheckpointError(
            f"checkpoint lists {len(exits)} early exits but {len(heads)} exit heads; re-create it"
        )
    return EarlyExitModel(
        [nn.Sequential(*parts) for parts in segments], heads, exits, float(entry["threshold"])
    )


# ------------------------------------------------------------------ loading


def is_packed(spec: dict[str, Any]) -> bool:
    """Whether a spec is a packed low-bit artifact's."""
    return str(spec.get("format", "")).startswith("torchslim.packed")


def load_into(path: str | os.PathLike[str], template: nn.Module) -> nn.Module:
    """Load a file (checkpoint, sparse or packed) into a copy of ``template``'s structure."""
    from torchslim.checkpoint import load_into as load_file_into

    return load_file_into(path, template)


def load(path: str | os.PathLike[str], model: Original | None = None) -> nn.Module:
    """Rebuild a compressed model from its file and the original, uncompressed architecture.

    Args:
        path: a file torchslim wrote (``compress``, ``optimize``, ``measure(..., artifact=)``,
            the demo): a checkpoint, a sparse or a packed artifact, or a transformer artifact.
        model: the original model the task compressed (an ``nn.Module``, not modified) or a
            zero-argument function building it. Not needed when the file names a built-in
            architecture or holds a transformer (``hf``) artifact.

    Returns:
        The compressed model in eval mode, with the file's weights.

    Raises:
        CheckpointError: the file is bad, or its recorded structure does not fit ``model``
            (the message names the first mismatching layer and both shapes).
    """
    from torchslim.checkpoint import read_checkpoint, read_spec

    path = Path(path)
    spec = read_spec(path) if path.suffix == ".safetensors" else read_checkpoint(path)[1]
    if "hf" in spec:
        from torchslim.hf.loading import load_artifact

        return load_artifact(path)[0]
    if model is None:
        if not isinstance(spec.get("arch"), dict):
            raise CheckpointError(
                f"{path} was compressed from a model of your own; pass it: "
                "torchslim.load(path, model=YourModel()) (or a function that builds it)"
            )
        model = _arch_builder(path, spec["arch"])
    _check_on_meta(path, model, spec)
    original = _instantiate(model)
    _check_original(path, original, spec.get("original_shapes") or {})
    compressed = apply_record(original, spec, f"checkpoint {path}")
    try:
        return load_into(path, compressed).eval()
    except CheckpointError as exc:
        raise CheckpointError(_with_student_hint(str(exc))) from exc


def _arch_builder(path: Path, arch: dict[str, Any]) -> Callable[[], nn.Module]:
    """A factory of the file's built-in architecture; a bad one is a CheckpointError."""
    from torchslim.errors import TorchslimError
    from torchslim.models import build_model

    def build() -> nn.Module:
        try:
            return build_model(arch["name"], **arch.get("kwargs", {}))
        except (TorchslimError, TypeError, ValueError, KeyError, RuntimeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(
                f"checkpoint {path}: the architecture its spec describes cannot be built "
                f"({type(exc).__name__}: {first}); re-create the checkpoint"
            ) from exc

    return build


def _check_on_meta(path: Path, original: Original, spec: dict[str, Any]) -> None:
    """Build the shell on the meta device and compare its tensors with the file's."""
    from safetensors import safe_open

    from torchslim.spec import allocation_limit, check_shapes

    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            if isinstance(original, nn.Module):
                bare = copy.deepcopy(original).to("meta")
            else:
                bare = _instantiate(original)
    except CheckpointError:
        raise
    except Exception:  # noqa: BLE001 - a factory that cannot run on meta: checked on load
        return
    with torch.device("meta"):
        shell = apply_record(bare, spec, f"checkpoint {path}")
    state = shell.state_dict()
    if is_packed(spec) or "sparse" in spec or path.suffix != ".safetensors":
        total = sum(t.numel() * t.element_size() for t in state.values())
        if total > allocation_limit(path.stat().st_size):
            raise CheckpointError(
                f"checkpoint {path} describes {total} bytes of tensors, more than the file "
                "could hold; the file is malformed or hostile: re-create it with torchslim"
            )
        return
    with safe_open(str(path), framework="pt") as handle:
        shapes = {key: _Shape(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    try:
        check_shapes(state, shapes, f"checkpoint {path}")
    except CheckpointError as exc:
        raise CheckpointError(_with_student_hint(str(exc))) from exc


def _check_original(path: Path, original: nn.Module, shapes: dict[str, list[int]]) -> None:
    """The tensors the records replace must have, in the model given, the shapes they had in
    the model the file was compressed from (else every layer the records rebuild would
    load, and the model given would silently stand for another architecture)."""
    for key, tensor in original.state_dict().items():  # in the model's order
        shape = shapes.get(key)
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(
                f"checkpoint {path} was compressed from another architecture: {key} has shape "
                f"{tuple(shape)} in the original it records but {tuple(tensor.shape)} in the "
                "model given; pass the model it was compressed from"
            )


class _Shape:
    def __init__(self, shape: Iterable[int]) -> None:
        self.shape = tuple(shape)


def _with_student_hint(message: str) -> str:
    if "missing" in message or "unexpected" in message:
        return message.replace(
            "load it with the task or model it was saved from",
            "load it with the model it was compressed from (a distilled student of another "
            "architecture: pass its own factory, torchslim.load(path, model=make_student))",
        )
    return message


def arch_record(model: nn.Module, arch: dict[str, Any]) -> dict[str, Any]:
    """How ``model`` differs from the built-in architecture ``arch`` (``{"name", "kwargs"}``)."""
    from torchslim.structure import reference_model

    return structure_record(model, reference_model(arch))


register_structure_records(
    StructureRecords(
        artifact_spec=artifact_spec, arch_record=arch_record, rebuild=rebuild, load=load
    )
)
