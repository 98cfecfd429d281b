"""Checkpoints: safetensors for the tensors, a small JSON spec for the architecture.

One file holds both: the spec travels in the safetensors header's metadata under
the key ``torchslim``. Loading never unpickles anything: safetensors reads raw
tensors, and plain ``.pt`` state dicts are read with ``torch.load(weights_only=True)``.
Writes are atomic (temporary file in the same folder, then ``os.replace``).

This module registers the ``torch`` artifact format (:func:`checkpoint_io`). It imports no
technique: what a file records about a compressed model's structure is computed and rebuilt
by functions ``torchslim.reload`` registers in :mod:`torchslim.artifacts`, and formats that
store tensors encoded (sparse) decode them through the same registry.
"""

from __future__ import annotations

import contextvars
import copy
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from torchslim.artifacts import (
    ArtifactFormat,
    ArtifactIO,
    ExportOptions,
    artifact_spec,
    decoders,
    reader_of,
    register_format,
    structure_records,
)
from torchslim.errors import CheckpointError
from torchslim.fileio import atomic_path
from torchslim.hardware import spec_record
from torchslim.spec import check_shapes, parse_spec_text, validate_spec

if TYPE_CHECKING:
    from torchslim.task import Task

FORMAT = "torchslim.checkpoint/1"
SPEC_KEY = "torchslim"
CONVERT_HINT = (
    "convert a state dict of tensors with `torchslim convert FILE` (it reads with "
    "torch.load(weights_only=True)); a whole model you trust: load it in your own code and "
    "call torchslim.save_checkpoint(model, 'model.safetensors')"
)


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous tensors that do not share storage (safetensors needs that).

    Pruning masks (``weight_orig`` + ``weight_mask``) are folded into plain ``weight`` tensors.
    """
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    raw = model.state_dict()
    for name, tensor in raw.items():
        if name.endswith("_mask") and name[: -len("_mask")] + "_orig" in raw:
            continue  # a torch.nn.utils.prune mask: folded into its weight below
        if name.endswith("_orig") and name[: -len("_orig")] + "_mask" in raw:
            base = name[: -len("_orig")]
            tensor, name = tensor * raw[base + "_mask"], base
        tensor = tensor.detach()
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else -1
        if ptr in seen or not tensor.is_contiguous():
            tensor = tensor.contiguous().clone()
        seen.add(ptr)
        state[name] = tensor
    return state


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    spec: dict[str, Any] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> int:
    """Save ``model`` (or explicit ``tensors``) with its JSON ``spec``; return the file's bytes.

    Args:
        model: the module whose state dict is saved (ignored when ``tensors`` is given).
        path: the file to write (``.safetensors``); written atomically.
        spec: JSON-serializable description of the architecture and provenance.
        tensors: tensors to store instead of the state dict (e.g. a packed encoding).
    """
    payload = dict(spec or {})
    payload.setdefault("format", FORMAT)
    payload.setdefault("hardware", spec_record())
    if isinstance(payload.get("arch"), dict):  # record how the model differs from its arch
        record = structure_records().arch_record(model, payload["arch"])
        payload.update({k: v for k, v in record.items() if k not in payload})
    try:
        metadata = {SPEC_KEY: json.dumps(payload, sort_keys=True)}
    except TypeError as exc:
        raise CheckpointError(
            f"checkpoint spec is not JSON-serializable ({exc}); keep spec values to "
            "str/int/float/bool/list/dict"
        ) from exc
    state = tensors if tensors is not None else plain_state(model)
    # what a reader accepts: refuse to write less
    data_bytes = sum(t.numel() * t.element_size() for t in state.values())
    validate_spec(
        json.loads(metadata[SPEC_KEY]),
        f"spec for {path}",
        data_bytes,
        list(state),
        fix="a reader would refuse it: keep to the keys in docs/architecture.md",
    )
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path).stat().st_size


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; pass the .safetensors file")


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint's tensors and spec without building a model.

    ``.safetensors`` files are read with safetensors; ``.pt``/``.pth``/``.bin`` state
    dicts with ``torch.load(weights_only=True)`` (their spec is empty).
    """
    path = Path(path)
    _check_file(path)
    if path.suffix in {".pt", ".pth", ".bin"}:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
            raise CheckpointError(
                f"checkpoint {path} cannot be read as a weights-only state dict "
                f"({type(exc).__name__}: it holds objects torchslim never unpickles); "
                f"{CONVERT_HINT}"
            ) from exc
        if (
            isinstance(state, dict)
            and "state_dict" in state
            and isinstance(state["state_dict"], dict)
        ):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise CheckpointError(
                f"checkpoint {path} does not hold a state dict of tensors; "
                "save it with torch.save(model.state_dict(), path)"
            )
        return dict(state), {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = list(handle.keys())
            spec = _checked_spec(metadata, path, names)  # before any tensor is read
            state = {key: handle.get_tensor(key) for key in names}
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on bad files
        raise _corrupt(path, exc) from exc
    for fmt in decoders():  # e.g. a sparse artifact: decode to dense tensors
        if fmt.decodes in spec and fmt.decode is not None:
            state = fmt.decode(state, spec[fmt.decodes])
    return state, spec


def _corrupt(path: Path, exc: BaseException) -> CheckpointError:
    text = str(exc).strip()
    first = text.splitlines()[0][:200] if text else type(exc).__name__
    if "pickle" in text.lower() or _looks_pickled(path):
        return CheckpointError(
            f"{path} is not a safetensors file (it looks pickled, which torchslim never loads); "
            f"{CONVERT_HINT}"
        )
    return CheckpointError(
        f"checkpoint {path} is corrupt or truncated ({first}); re-create it with "
        "`torchslim train` or restore the file"
    )


def _looks_pickled(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except OSError:
        return False
    return head[:1] == b"\x80" or head == b"PK"  # a pickle protocol byte or torch's zip file


def _checked_spec(metadata: dict[str, str], path: Path, names: list[str]) -> dict[str, Any]:
    where = f"checkpoint {path}"
    spec = parse_spec_text(metadata[SPEC_KEY], where) if SPEC_KEY in metadata else {}
    return validate_spec(spec, where, path.stat().st_size, names)


def read_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read only the JSON spec of a ``.safetensors`` checkpoint (cheap: header only)."""
    path = Path(path)
    _check_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = list(handle.keys())
    except Exception as exc:  # noqa: BLE001
        raise _corrupt(path, exc) from exc
    return _checked_spec(metadata, path, names)


def load_state_into(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint"
) -> nn.Module:
    """Copy ``state`` into ``model`` after checking every key and shape; name the first mismatch."""
    check_shapes(model.state_dict(), state, source)
    model.load_state_dict(state, strict=True)
    return model


ModelBuilder = Callable[[dict[str, Any]], nn.Module]
_LOADING: contextvars.ContextVar[tuple[dict[str, torch.Tensor], str] | None] = (
    contextvars.ContextVar("torchslim_loading", default=None)
)


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    build: ModelBuilder | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint into ``model``, or rebuild the architecture from its spec.

    Args:
        path: checkpoint file.
        model: a module of the right architecture to load into (modified in place).
        build: function from spec to an empty module, used when ``model`` is None; by
            default the reference-architecture registry (``spec["arch"]``).

    Returns:
        The loaded model in eval mode and the checkpoint's spec.
    """
    state, spec = read_checkpoint(path)
    if model is None and build is None:
        model = build_from_spec(spec, state, str(path))
    elif model is None and build is not None:
        token = _LOADING.set((state, str(path)))  # build_from_spec inside `build` checks too
        try:
            model = build(spec)
        finally:
            _LOADING.reset(token)
    assert model is not None  # one of the branches above built it
    load_state_into(model, state, source=f"checkpoint {path}")
    return model.eval(), spec


def build_from_spec(
    spec: dict[str, Any], state: dict[str, torch.Tensor] | None = None, source: str = "checkpoint"
) -> nn.Module:
    """Build an empty model from ``spec["arch"] = {"name": ..., "kwargs": {...}}``.

    Modules listed in ``spec["structure"]`` (pruned widths) are replaced by empty modules of
    the recorded shapes, so a channel-pruned checkpoint loads without pickling. With the
    file's ``state``, the model is first built on the meta device (no memory) and compared
    with the file's tensors, so a spec cannot make torchslim allocate more than the file holds.
    """
    if state is None and _LOADING.get() is not None:  # called by a builder in load_checkpoint
        state, source = _LOADING.get()  # type: ignore[misc]
    if state is not None:
        with torch.device("meta"):
            shell = _build_from_spec(spec, source)
        check_shapes(shell.state_dict(), state, f"checkpoint {source}")
    return _build_from_spec(spec, source)


def _build_from_spec(spec: dict[str, Any], source: str) -> nn.Module:
    try:
        return _build_unchecked(spec)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"{source}: the architecture its spec describes cannot be built "
            f"({type(exc).__name__}: {first}); re-create the checkpoint"
        ) from exc


def _build_unchecked(spec: dict[str, Any]) -> nn.Module:
    from torchslim.models import build_model

    arch = spec.get("arch")
    if not isinstance(arch, dict) or "name" not in arch:
        raise CheckpointError(
            "checkpoint has no architecture spec (it holds weights only); load it with "
            "the task it was trained for, e.g. `torchslim measure TASK --checkpoint FILE`"
        )
    return structure_records().rebuild(build_model(arch["name"], **arch.get("kwargs", {})), spec)


def convert_state_dict(
    source: str | os.PathLike[str], out: str | os.PathLike[str]
) -> tuple[int, int]:
    """Rewrite a PyTorch state dict (any suffix) as ``.safetensors``; return (tensors, bytes).

    The file is read with ``torch.load(weights_only=True)``: only tensors and plain
    containers load, nothing in it runs. A ``{"state_dict": {...}}`` wrapper is unwrapped.

    Raises:
        CheckpointError: the source holds other objects, or ``out`` is the source.
    """
    source, out = Path(source), Path(out)
    _check_file(source)
    if out.exists() and out.resolve() == source.resolve():
        raise CheckpointError(f"--out {out} is the input file; choose another path")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not weights-only
        raise CheckpointError(
            f"{source} is not a weights-only state dict ({type(exc).__name__}: it holds objects "
            "torchslim never unpickles); load the model in your own code if you trust it and "
            "call torchslim.save_checkpoint(model, 'model.safetensors')"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"{source} does not hold a state dict of named tensors; save one with "
            "torch.save(model.state_dict(), path)"
        )
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp))
    return len(tensors), out.stat().st_size


# ------------------------------------------------------------------ the ``torch`` artifact


def load_into(path: str | os.PathLike[str], template: nn.Module) -> nn.Module:
    """Load a file into a copy of ``template``'s structure: a format that reads such files
    (packed) loads it, any other is a checkpoint (plain or sparse)."""
    fmt = reader_of(read_spec(path))
    if fmt is not None and fmt.load_into is not None:
        return fmt.load_into(Path(path), template)
    return load_checkpoint(path, model=copy.deepcopy(template))[0]


def checkpoint_io(
    task: Task | None = None,
    template: nn.Module | None = None,
    spec: dict[str, Any] | None = None,
) -> ArtifactIO:
    """The ``torch`` artifact: a safetensors checkpoint with a JSON spec (the task's by default).

    Loading rebuilds the architecture from the spec when it names a reference
    architecture, so the file alone is shown to be enough; otherwise it loads into a
    copy of ``template``.
    """
    if spec is None:
        spec = task.spec() if task is not None else {}
        arch = getattr(template, "torchslim_arch", None)
        if arch is not None:  # a model of another architecture than the task's (a student)
            spec = {**spec, "arch": arch}
    chosen: dict[str, Any] = spec

    def save(model: nn.Module, path: Path) -> None:
        save_checkpoint(
            model, path, artifact_spec(task, model, chosen) if "arch" not in chosen else chosen
        )

    def load(path: Path) -> nn.Module:
        def build(saved: dict[str, Any]) -> nn.Module:
            if "arch" in saved:
                return build_from_spec(saved)
            if template is None:
                raise CheckpointError(
                    f"checkpoint {path} names no architecture; pass template= to checkpoint_io"
                )
            return unmasked_copy(template)

        return load_checkpoint(path, build=build)[0]

    return ArtifactIO(save, load)


def unmasked_copy(template: nn.Module) -> nn.Module:
    """A copy of ``template`` with pruning masks folded in: a checkpoint stores the masked
    weights under their plain names (``weight``, not ``weight_orig`` + ``weight_mask``)."""
    from torch.nn.utils import prune

    model = copy.deepcopy(template)
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return model


def existing_file_io(source: str | Path, template: nn.Module) -> ArtifactIO:
    """An artifact that already exists: "saving" copies the file as is, loading reads it back."""

    def save(model: nn.Module, path: Path) -> None:
        if Path(path).resolve() != Path(source).resolve():
            with atomic_path(path) as tmp:
                shutil.copyfile(source, tmp)

    def load(path: Path) -> nn.Module:
        return load_into(path, template)

    return ArtifactIO(save, load, suffix=Path(source).suffix)


def _export_torch(model: nn.Module, task: Task, path: Path, options: ExportOptions) -> nn.Module:
    """``torchslim export --format torch``: the checkpoint, rebuilt from the task's original."""
    save_checkpoint(model, path, artifact_spec(task, model, task.spec()))
    return structure_records().load(path, None if task.arch else task.build_model())


TORCH_FORMAT = register_format(
    ArtifactFormat(
        name="torch",
        suffix=".safetensors",
        export_suffix=".export.safetensors",
        io=checkpoint_io,
        claims=lambda model: True,  # the fallback: any model
        priority=0,
        export=_export_torch,
        records=("structure", "factorized", "resized", "attributes", "early_exit"),
    )
)
