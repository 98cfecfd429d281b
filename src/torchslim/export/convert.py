"""``torchslim export``: turn a checkpoint into a deployable artifact.

Formats: ``torch`` (plain safetensors checkpoint with its spec), ``onnx`` (fp32,
dynamic batch axis), ``onnx-int8`` (ONNX Runtime int8: static QDQ calibrated on
the task's data, or dynamic), ``packed`` (weights quantized to ``bits`` and
bit-packed). Every export is loaded back and its metric measured on the task's
test split, so the command reports what the artifact really scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from torchslim.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from torchslim.errors import CheckpointError, ConfigError
from torchslim.task import Task

FORMATS = ("torch", "onnx", "onnx-int8", "packed")
SUFFIXES = {
    "torch": ".safetensors",
    "onnx": ".onnx",
    "onnx-int8": ".int8.onnx",
    "packed": ".packed.safetensors",
}


@dataclass
class Exported:
    """An exported artifact: where it is, its bytes and its measured metric."""

    format: str
    path: Path
    artifact_bytes: int
    metric: float
    source_metric: float


def load_source(
    path: str | Path, task_ref: str | None, data_dir: str | None
) -> tuple[nn.Module, Task]:
    """Load a checkpoint (plain, sparse, channel-pruned or factorized) and its task."""
    from torchslim import tasks

    _, spec = read_checkpoint(path)
    if spec.get("format", "").startswith("torchslim.packed"):
        raise CheckpointError(
            f"{path} is a packed artifact (final form); export from the float checkpoint instead"
        )
    reference = task_ref or spec.get("task")
    if not reference:
        raise CheckpointError(f"checkpoint {path} does not name its task; pass --task")
    task = tasks.get(reference, data_dir=data_dir)
    model, _ = load_checkpoint(path, model=None if "arch" in spec else task.build_model())
    return model, task


def export_artifact(
    model: nn.Module, task: Task, fmt: str, out: str | Path, bits: int = 8, mode: str = "static"
) -> Exported:
    """Write ``model`` as ``fmt`` to ``out``, reload it, and measure its metric."""
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is unknown; use one of {FORMATS}")
    if mode not in ("static", "dynamic"):
        raise ConfigError(f"mode {mode!r} is unknown; use static or dynamic")
    out = Path(out)
    source_metric = task.evaluate(model)
    if fmt == "torch":
        save_checkpoint(model, out, task.spec())
        reloaded, _ = load_checkpoint(out, model=None if task.arch else task.build_model())
    elif fmt == "onnx":
        from torchslim.export.onnx import OrtModule, export_onnx

        reloaded = OrtModule(export_onnx(model, task.inputs(2), out))
    elif fmt == "onnx-int8":
        from torchslim.export.onnx import export_ort_int8

        reloaded = export_ort_int8(model, task, out, mode=mode)
    else:
        from torchslim.export.packed import load_packed, save_packed
        from torchslim.techniques import CONFIGS, apply

        quantized = apply(model, CONFIGS["static_quant"](bits=bits), task)
        save_packed(quantized, out, task.spec())
        reloaded = load_packed(out, quantized)
    return Exported(fmt, out, out.stat().st_size, task.evaluate(reloaded), source_metric)


def default_output(source: str | Path, fmt: str) -> Path:
    """``model.safetensors`` → ``model.int8.onnx`` etc., next to the source."""
    source = Path(source)
    stem = source.name.split(".")[0]
    return source.with_name(stem + SUFFIXES[fmt])
