"""``torchslim export``: turn a checkpoint into a deployable artifact.

Formats: the registered artifact formats with a writer of their own
(:func:`torchslim.artifacts.format_names` with ``export=True``): ``torch`` (plain
safetensors checkpoint with its spec), ``onnx`` (fp32, dynamic batch axis), ``onnx-int8``
(ONNX Runtime int8: static QDQ calibrated on the task's data, or dynamic), ``packed``
(weights quantized to ``bits`` and bit-packed). Every export is loaded back and its metric
measured on the task's test split, so the command reports what the artifact really scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from torchslim.artifacts import ExportOptions, format_names, get_format
from torchslim.batches import preserved_modes
from torchslim.checkpoint import read_checkpoint
from torchslim.errors import CheckpointError, ConfigError
from torchslim.task import Task


@dataclass
class Exported:
    """An exported artifact: where it is, its bytes and its measured metric."""

    format: str
    path: Path
    artifact_bytes: int
    metric: float
    source_metric: float


def load_source(
    path: str | Path,
    task_ref: str | None,
    data_dir: str | None,
    trust_task: bool = False,
    fmt: str | None = None,
) -> tuple[nn.Module, Task]:
    """Load a checkpoint (plain, sparse, channel-pruned, factorized, any model) and its task.

    ``task_ref`` is the user's ``--task``; without it the checkpoint's own task is used when
    it is a built-in name (a ``.py`` file named by the file needs ``trust_task``). A packed
    artifact is a final form: it is only exported to ``onnx`` (``fmt``; its dequantized
    weights).
    """
    from torchslim.tasks import resolve_task

    _, spec = read_checkpoint(path)
    if spec.get("format", "").startswith("torchslim.packed") and fmt != "onnx":
        raise CheckpointError(
            f"{path} is a packed artifact (final form); export it to onnx, or export from the "
            "float checkpoint instead"
        )
    task = resolve_task(spec, task_ref, f"checkpoint {path}", trust=trust_task, data_dir=data_dir)
    from torchslim.reload import load

    model = load(path, model=None if "arch" in spec else task.build_model())
    return model, task


def export_artifact(
    model: nn.Module, task: Task, fmt: str, out: str | Path, bits: int = 8, mode: str = "static"
) -> Exported:
    """Write ``model`` as ``fmt`` to ``out``, reload it, and measure its metric."""
    writer = get_format(fmt, allowed=format_names(export=True))
    if mode not in ("static", "dynamic"):
        raise ConfigError(f"mode {mode!r} is unknown; use static or dynamic")
    out = Path(out)
    with preserved_modes(model):  # exporters put the model in eval mode: modes come back
        source_metric = task.evaluate(model)
        reloaded = writer.write(model, task, out, ExportOptions(bits=bits, mode=mode))
    return Exported(fmt, out, out.stat().st_size, task.evaluate(reloaded), source_metric)


_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def default_output(source: str | Path, fmt: str) -> Path:
    """``model.safetensors`` -> ``model.int8.onnx`` etc., next to the source.

    Only the checkpoint suffix is dropped (``model.pruned.safetensors`` ->
    ``model.pruned.onnx``); ``torch`` exports are named ``*.export.safetensors``.

    Raises:
        ConfigError: that file exists already (never replace a file the user did not name).
    """
    source = Path(source)
    stem = source.name
    for suffix in _CHECKPOINT_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    writer = get_format(fmt, allowed=format_names(export=True))
    out = source.with_name(stem + (writer.export_suffix or writer.suffix))
    if out.exists() or out.is_symlink():
        raise ConfigError(
            f"the default output {out} exists already; pass --out PATH to choose the file "
            "(torchslim never replaces a file you did not name)"
        )
    return out


def check_output(out: str | Path, source: str | Path) -> Path:
    """Refuse an ``--out`` that is the input, a folder, under a file, or a link into its folder.

    Raises:
        ConfigError: naming the problem.
    """
    out, source = Path(out), Path(source)
    if out.exists() and out.resolve() == source.resolve():
        raise ConfigError(
            f"--out {out} is the input file; choose another path (inputs are never overwritten)"
        )
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; pass a file path, e.g. {out / 'model.onnx'}")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {out}: {parent} is a file, not a folder; choose another path")
    real_parent = out.parent.resolve()
    through_link = out.is_symlink() or real_parent != out.parent.absolute()
    if through_link and (real_parent / out.name).resolve().parent == source.resolve().parent:
        raise ConfigError(
            f"--out {out} leads through a symbolic link into the input's folder "
            f"{source.resolve().parent}; pass a plain path there if you mean it"
        )
    return out
