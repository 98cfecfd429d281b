"""Run a recipe on a task: apply each step, record its footprint, measure the artifact.

The pipeline is where techniques meet measurement: after every step it records the
metric and sizes (the history), then saves the final model in the artifact format
that claims it (:mod:`torchslim.artifacts`: packed for quantized models, sparse for
pruned ones, a plain checkpoint otherwise, or what the recipe's ``export`` step asks for), measures
that artifact against the baseline, and for quantized models also the deployed
ONNX Runtime int8 artifact against fp32 on the same runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from torchslim.artifacts import (
    ArtifactIO,
    ExportOptions,
    formats,
    get_format,
    resolve_format,
)
from torchslim.artifacts import choose_format as choose_registered
from torchslim.errors import ConfigError
from torchslim.measure import (
    Footprint,
    count_macs,
    count_nonzero,
    count_parameters,
    measure_many,
    model_macs,
)
from torchslim.recipe import Recipe
from torchslim.report.results import Candidate
from torchslim.task import Task
from torchslim.techniques.base import ApplyContext, apply


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


def has_int_grid(model: nn.Module) -> bool:
    """Whether a deployment format claims the model (uniform-grid quantized layers: ONNX
    Runtime int8 runs them), so the pipeline deploys it by default."""
    return any(f.deploy and f.claims is not None and f.claims(model) for f in formats())


def choose_format(model: nn.Module, requested: str | None = None) -> str:
    """The artifact format: the requested one, else the registered format that claims the
    model (packed for quantized models, sparse for pruned ones, torch otherwise)."""
    return choose_registered(model, requested)


def artifact_io(model: nn.Module, task: Task, fmt: str) -> ArtifactIO:
    """The ArtifactIO writing ``model`` in format ``fmt`` (torch, sparse, packed...).

    A format that claims the model may stand in for the one named (a Hugging Face encoder /
    classifier is written as a transformer artifact in place of ``torch`` and ``sparse``).
    """
    return resolve_format(model, fmt).make_io(task, model)


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
        "macs": model_macs(model, task, split).macs,
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

    The one way a candidate is run and measured: ``torchslim compress``, the optimizer's
    candidates and its answer, and the demo (:func:`run_recipes`) all come through here.

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
    return run_recipes(
        [recipe],
        task,
        baseline=baseline,
        baseline_footprint=baseline_footprint,
        out=out,
        names=[name],
        latency=latency,
        runtime=runtime,
        threads=threads,
        batch_n=batch_n,
        deploy=deploy,
        split=split,
        after_step=after_step,
        eager_latency=eager_latency,
        on_epoch=on_epoch,
    )[0]


def run_recipes(
    recipes: Sequence[Recipe],
    task: Task,
    *,
    baseline: nn.Module | None = None,
    baseline_footprint: Footprint | None = None,
    baseline_artifact: str | Path | None = None,
    out: str | Path | None = None,
    names: Sequence[str | None] | None = None,
    latency: bool = True,
    runtime: str = "torch",
    threads: int = 1,
    batch_n: int = 64,
    deploy: bool | None = None,
    split: str = "test",
    after_step: Callable[[dict[str, Any]], None] | None = None,
    eager_latency: bool = True,
    latency_seconds: float = 1.0,
    on_apply: Callable[[Recipe], None] | None = None,
    on_epoch: Callable[[Any, nn.Module, int], None] | None = None,
) -> list[RecipeRun]:
    """Several recipes against one baseline, their artifacts measured in one run.

    Every recipe is applied (:func:`apply_recipe`), then the baseline (unless
    ``baseline_footprint`` is given; its artifact kept at ``baseline_artifact`` when given)
    and every candidate are measured by one :func:`~torchslim.measure.measure_many`, so their
    latencies are interleaved round by round; quantized candidates are then deployed
    (:func:`deploy_onnx`). The other arguments are :func:`run_recipe`'s, for every recipe;
    ``names`` name the candidates (None: the recipe's name), ``latency_seconds`` is the
    timing budget per model and batch size, ``on_apply(recipe)`` is called before each
    recipe is applied (progress messages), ``on_epoch`` after each training epoch of a
    step (see :func:`apply_recipe`).
    """
    if names is not None and len(names) != len(recipes):
        raise ConfigError("run_recipes needs one name (or None) per recipe")
    labels = [(names[i] if names else None) or recipe.name for i, recipe in enumerate(recipes)]
    base = baseline if baseline is not None else task.baseline()
    applied: list[Applied] = []
    for recipe in recipes:
        if on_apply is not None:
            on_apply(recipe)
        applied.append(apply_recipe(recipe, task, base, split, after_step, on_epoch))
    requested = [recipe.export.format if recipe.export else None for recipe in recipes]
    ios = [
        artifact_io(item.model, task, choose_format(item.model, fmt))
        for item, fmt in zip(applied, requested, strict=True)
    ]
    artifacts = [
        Path(out) / f"{safe_name(label)}{io.suffix}" if out is not None else None
        for label, io in zip(labels, ios, strict=True)
    ]
    baseline_footprint, footprints = _measure(
        [item.model for item in applied],
        base,
        task,
        ios,
        artifacts,
        baseline_footprint,
        baseline_artifact,
        latency=latency and eager_latency,
        runtime=runtime,
        threads=threads,
        batch_n=batch_n,
        split=split,
        latency_seconds=latency_seconds,
    )
    runs = []
    for recipe, item, footprint, label, fmt, artifact in zip(
        recipes, applied, footprints, labels, requested, artifacts, strict=True
    ):
        model = item.model
        candidate = item.candidate(recipe, footprint, label)
        candidate.layers.update(_path_shares(model, task, split))
        wants_deploy = deploy if deploy is not None else (has_int_grid(model) or fmt == "onnx-int8")
        deployed = None
        if wants_deploy or fmt == "onnx":
            deployed = deploy_onnx(
                candidate, model, base, task, out, label, fmt, threads, batch_n, latency, split
            )
        runs.append(RecipeRun(model, candidate, baseline_footprint, item.notes, artifact, deployed))
    return runs


def _measure(
    models: list[nn.Module],
    base: nn.Module,
    task: Task,
    ios: list[ArtifactIO],
    artifacts: list[Path | None],
    baseline_footprint: Footprint | None,
    baseline_artifact: str | Path | None,
    **settings: Any,
) -> tuple[Footprint, list[Footprint]]:
    """(baseline, candidates) footprints; all timed in one interleaved run when needed."""
    from torchslim.techniques.fake_quant import is_simulated

    simulated = [is_simulated(model) for model in models]
    if baseline_footprint is None:
        footprints = measure_many(
            [base, *models],
            task,
            artifacts=[baseline_artifact, *artifacts],
            ios=[None, *ios],
            simulated=[False, *simulated],
            **settings,
        )
        return footprints[0], footprints[1:]
    footprints = measure_many(
        models, task, artifacts=artifacts, ios=ios, simulated=simulated, **settings
    )
    return baseline_footprint, footprints


def _path_shares(model: nn.Module, task: Task, split: str) -> dict[str, dict[str, float]]:
    """Per-exit rows ``{"exit i": {"exit share": s}}`` of a model that reports its exit
    shares on a split (``exit_shares(task, split)``: early exit), else nothing."""
    shares = getattr(model, "exit_shares", None)
    if not callable(shares):
        return {}
    return {f"exit {i}": {"exit share": share} for i, share in enumerate(shares(task, split))}


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

    fmt = get_format(requested) if requested else None
    if fmt is None or not fmt.deploy:
        fmt = next((f for f in formats() if f.deploy and f.claims and f.claims(model)), None)
        fmt = fmt or get_format("onnx-int8")  # asked to deploy a model no format claims
    fp32 = get_format("onnx")
    with tempfile.TemporaryDirectory(prefix="torchslim-deploy-") as tmp:
        folder = Path(out) if out is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{safe_name(label)}{fmt.suffix}"
        deployed = fmt.write(model, task, path, ExportOptions())
        reference_path = folder / "baseline.fp32.onnx"
        reference = fp32.write(base, task, reference_path, ExportOptions())
        keep = out is not None
        footprints = measure_many(
            [reference, deployed],
            task,
            ios=[fp32.make_io(), fmt.make_io()],
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
