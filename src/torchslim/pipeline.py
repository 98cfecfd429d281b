"""Run a recipe on a task: apply each step, record its footprint, measure the artifact.

The pipeline is where techniques meet measurement: after every step it records the
metric and sizes (the history), then saves the final model in the artifact format
that fits it (packed for quantized models, sparse for pruned ones, a plain
checkpoint otherwise, or what the recipe's ``export`` step asks for), measures
that artifact against the baseline, and for quantized models also the deployed
ONNX Runtime int8 artifact against fp32 on the same runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from torchslim.errors import ConfigError
from torchslim.measure import (
    ArtifactIO,
    Footprint,
    checkpoint_io,
    count_macs,
    count_nonzero,
    count_parameters,
    effective_parameters,
    measure_many,
)
from torchslim.recipe import Recipe
from torchslim.report.results import Candidate
from torchslim.task import Task
from torchslim.techniques.base import ApplyContext, apply

SPARSE_THRESHOLD = 0.3  # weight sparsity from which the sparse format is chosen automatically


@dataclass
class RecipeRun:
    """A finished recipe: the compressed model, its report candidate and the step notes."""

    model: nn.Module
    candidate: Candidate
    baseline_footprint: Footprint
    notes: dict[str, Any] = field(default_factory=dict)
    artifact: Path | None = None
    deployed: nn.Module | None = None
    """The deployed ONNX Runtime model (an ``OrtModule``) when the recipe was deployed."""


def weight_sparsity(model: nn.Module) -> float:
    """Share of zero values among weight matrices / kernels (dim >= 2)."""
    total = zeros = 0
    for _, tensor in effective_parameters(model):
        if tensor.dim() >= 2:
            total += tensor.numel()
            zeros += int((tensor == 0).sum())
    return zeros / total if total else 0.0


def _is_quantized(model: nn.Module) -> bool:
    from torchslim.techniques.codebook import CodebookLayer
    from torchslim.techniques.fake_quant import QuantizedLayer

    return any(isinstance(m, (QuantizedLayer, CodebookLayer)) for m in model.modules())


def has_int_grid(model: nn.Module) -> bool:
    """Whether the model has uniform-grid quantized layers (what ONNX Runtime int8 runs)."""
    from torchslim.techniques.fake_quant import QuantizedLayer

    return any(isinstance(m, QuantizedLayer) for m in model.modules())


def choose_format(model: nn.Module, requested: str | None = None) -> str:
    """The artifact format: the requested one, else packed / sparse / torch by the model's state."""
    if requested and requested not in ("onnx", "onnx-int8"):
        return requested
    if _is_quantized(model):
        return "packed"
    return "sparse" if weight_sparsity(model) >= SPARSE_THRESHOLD else "torch"


def artifact_io(model: nn.Module, task: Task, fmt: str) -> ArtifactIO:
    """The ArtifactIO writing ``model`` in format ``fmt`` (torch, sparse, packed).

    A Hugging Face encoder / classifier is written as a transformer artifact
    (``torchslim.hf.loading.save_artifact``: it rebuilds from the file alone) in place of
    ``torch`` and ``sparse``.
    """
    from torchslim.hf.loading import _Wrapper  # imports no transformers

    if isinstance(model, _Wrapper) and fmt in ("torch", "sparse"):
        from torchslim.hf.loading import artifact_io as hf_artifact_io

        return hf_artifact_io(task.spec())
    if fmt == "packed":
        from torchslim.export.packed import packed_io
        from torchslim.reload import artifact_spec

        return packed_io(model, artifact_spec(task, model, task.spec()))
    if fmt == "sparse":
        from torchslim.export.sparse import sparse_io

        return sparse_io(task, model)
    if fmt == "torch":
        from torchslim.techniques.dynamic import EarlyExitModel

        if isinstance(model, EarlyExitModel):  # a wrapper the spec cannot rebuild: load into a copy
            spec = {k: v for k, v in task.spec().items() if k != "arch"}
            return checkpoint_io(task, model, spec=spec)
        if _is_quantized(model):
            raise ConfigError(
                "a quantized model is saved as 'packed' (or exported to onnx-int8), not 'torch'"
            )
        return checkpoint_io(task, model)
    raise ConfigError(
        f"artifact format {fmt!r} is unknown; use torch, sparse, packed, onnx or onnx-int8"
    )


def snapshot(
    model: nn.Module, task: Task, step: str, seconds: float, split: str = "test"
) -> dict[str, Any]:
    """One history entry: the metric and sizes right after a step (no artifact, no timing)."""
    return {
        "step": step,
        "split": split,
        "metric": task.evaluate(model, split),
        "params": count_parameters(model),
        "nonzero_params": count_nonzero(model),
        "macs": count_macs(model, task.inputs(1)).macs,
        "seconds": round(seconds, 3),
    }


@dataclass
class Applied:
    """A recipe applied: the model, one history entry per step, the handlers' notes."""

    model: nn.Module
    history: list[dict[str, Any]]
    notes: dict[str, Any]
    seconds: float

    def candidate(self, recipe: Recipe, footprint: Footprint, name: str | None = None) -> Candidate:
        """The report candidate of this applied recipe, measured as ``footprint``."""
        return Candidate(
            name=name or recipe.name,
            techniques=[c.name for c in recipe.steps],
            footprint=footprint,
            recipe=recipe.to_dict(),
            train_seconds=self.seconds,
            history=self.history,
            layers=_layer_notes(self.notes),
        )


def apply_recipe(
    recipe: Recipe,
    task: Task,
    baseline: nn.Module,
    split: str = "test",
    after_step: Callable[[dict[str, Any]], None] | None = None,
    on_epoch: Callable[[Any, nn.Module, int], None] | None = None,
) -> Applied:
    """Apply each step to (a copy of) ``baseline``; record the metric on ``split`` after each.

    ``after_step(entry)`` sees each history entry as it is made (a search stops bad
    trials early by raising from it); ``on_epoch(config, model, epoch)`` after each
    training epoch of a step (see :class:`~torchslim.techniques.base.ApplyContext`).

    The uncompressed baseline is the teacher of distillation steps.
    """
    context = ApplyContext(task=task, teacher=baseline, on_epoch=on_epoch)
    model = baseline
    history: list[dict[str, Any]] = []
    total = 0.0
    for config in recipe.steps:
        start = time.perf_counter()
        model = apply(model, config, task, context=context)
        seconds = time.perf_counter() - start
        total += seconds
        history.append(snapshot(model, task, config.name, seconds, split))
        if after_step is not None:
            after_step(history[-1])
    return Applied(model, history, context.notes, total)


def run_recipe(
    recipe: Recipe,
    task: Task,
    *,
    baseline: nn.Module | None = None,
    baseline_footprint: Footprint | None = None,
    out: str | Path | None = None,
    name: str | None = None,
    latency: bool = True,
    runtime: str = "torch",
    threads: int = 1,
    batch_n: int = 64,
    deploy: bool | None = None,
    split: str = "test",
    after_step: Callable[[dict[str, Any]], None] | None = None,
    eager_latency: bool = True,
    on_epoch: Callable[[Any, nn.Module, int], None] | None = None,
) -> RecipeRun:
    """Apply every step of ``recipe`` to the task's baseline and measure the result.

    Args:
        recipe: the steps (validated already).
        task: the task whose baseline is compressed.
        baseline: the baseline model (default: ``task.baseline()``); never modified.
        baseline_footprint: the baseline's footprint when already measured (e.g. several
            recipes against one baseline); otherwise the baseline is measured here, its
            latency interleaved with the candidate's.
        out: folder for the artifact (``<name>.<ext>``); a temporary file otherwise.
        name: the candidate's name (default: the recipe's).
        latency: time the artifact.
        runtime, threads, batch_n: latency settings (see ``measure``).
        deploy: also export quantized models to ONNX Runtime int8 and measure that
            (default: when the recipe quantizes or asks for onnx-int8).
        split: the data split every metric is measured on (a search uses ``val``).
        after_step: called with each step's history entry (see :func:`apply_recipe`).
        eager_latency: with ``latency``, also time the in-memory model (False: only the
            deployed ONNX Runtime model is timed, e.g. when only that latency is compared).
        on_epoch: called after each training epoch of a step (see :func:`apply_recipe`).
    """
    base = baseline if baseline is not None else task.baseline()
    applied = apply_recipe(recipe, task, base, split, after_step, on_epoch)
    model = applied.model
    label = name or recipe.name
    requested = recipe.export.format if recipe.export else None
    fmt = choose_format(model, requested)
    io = artifact_io(model, task, fmt)
    artifact = Path(out) / f"{safe_name(label)}{io.suffix}" if out is not None else None
    baseline_footprint, footprint = _measure(
        model,
        base,
        task,
        io,
        artifact,
        baseline_footprint,
        latency and eager_latency,
        runtime,
        threads,
        batch_n,
        split,
    )
    candidate = applied.candidate(recipe, footprint, label)
    wants_deploy = (
        deploy if deploy is not None else (has_int_grid(model) or requested == "onnx-int8")
    )
    deployed = None
    if wants_deploy or requested == "onnx":
        deployed = deploy_onnx(
            candidate, model, base, task, out, label, requested, threads, batch_n, latency, split
        )
    return RecipeRun(model, candidate, baseline_footprint, applied.notes, artifact, deployed)


def _measure(
    model: nn.Module,
    base: nn.Module,
    task: Task,
    io: ArtifactIO,
    artifact: Path | None,
    baseline_footprint: Footprint | None,
    latency: bool,
    runtime: str,
    threads: int,
    batch_n: int,
    split: str = "test",
) -> tuple[Footprint, Footprint]:
    """(baseline, candidate) footprints; both timed in one interleaved run when needed."""
    from torchslim.techniques.fake_quant import is_simulated

    simulated = is_simulated(model)
    settings = {
        "runtime": runtime,
        "threads": threads,
        "batch_n": batch_n,
        "latency": latency,
        "split": split,
    }
    if baseline_footprint is None:
        base_fp, footprint = measure_many(
            [base, model],
            task,
            artifacts=[None, artifact],
            ios=[None, io],
            simulated=[False, simulated],
            **settings,
        )
        return base_fp, footprint
    footprint = measure_many(
        [model], task, artifacts=[artifact], ios=[io], simulated=[simulated], **settings
    )[0]
    return baseline_footprint, footprint


def deploy_onnx(
    candidate: Candidate,
    model: nn.Module,
    base: nn.Module,
    task: Task,
    out: str | Path | None,
    label: str,
    requested: str | None,
    threads: int,
    batch_n: int,
    latency: bool,
    split: str = "test",
) -> nn.Module:
    """Export to ONNX Runtime (int8 for quantized models) and measure it against fp32 ORT;
    returns the deployed model (an ``OrtModule``).

    The deployed metric is measured on the deployed file itself: when it falls below the
    simulated one, the report shows both (``deployed_gap``) and budgets use the deployed one.

    ONNX Runtime sessions expose no parameters and the flop counter cannot see inside
    them, so the deployed footprints take params / MACs from the models they were
    exported from (an exported graph computes the same MACs).
    """
    import tempfile

    from torchslim.export.onnx import OrtModule, export_onnx, export_ort_int8, onnx_io

    with tempfile.TemporaryDirectory(prefix="torchslim-deploy-") as tmp:
        folder = Path(out) if out is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if requested == "onnx":
            path = export_onnx(model, task.inputs(2), folder / f"{safe_name(label)}.onnx")
            deployed = OrtModule(path)
        else:
            mode = "dynamic" if "dynamic_quant" in candidate.techniques else "static"
            path = folder / f"{safe_name(label)}.int8.onnx"
            deployed = export_ort_int8(model, task, path, mode=mode)
        reference_path = export_onnx(base, task.inputs(2), folder / "baseline.fp32.onnx")
        reference = OrtModule(reference_path)
        keep = out is not None
        footprints = measure_many(
            [reference, deployed],
            task,
            ios=[onnx_io(), onnx_io()],
            artifacts=[reference_path if keep else None, path if keep else None],
            runtime="onnxruntime",
            threads=threads,
            batch_n=batch_n,
            latency=latency,
            split=split,
        )
    reference_fp, deployed_fp = footprints
    for target, source_model in ((deployed_fp, model), (reference_fp, base)):
        target.params = count_parameters(source_model)
        target.nonzero_params = count_nonzero(source_model)
        macs = count_macs(source_model, task.inputs(1))
        target.macs, target.flops = macs.macs, macs.flops
    candidate.deployed_reference, candidate.deployed = reference_fp, deployed_fp
    return deployed


def _layer_notes(notes: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per-layer numbers that handlers left in the context notes (sparsity, bits, rank...)."""
    layers: dict[str, dict[str, float]] = {}
    for value in notes.values():
        rows = (
            value
            if isinstance(value, list)
            else value.get("layers")
            if isinstance(value, dict)
            else None
        )
        if not isinstance(rows, list):
            continue
        for row in rows:
            if isinstance(row, dict) and "name" in row:
                for key in ("sparsity", "bits", "rank", "channels_kept"):
                    if isinstance(row.get(key), (int, float)):
                        layers.setdefault(row["name"], {})[key] = float(row[key])
    return layers


def safe_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
