"""The top-level verbs of ``import torchslim as ts``: run a recipe, compress, save.

``ts.run(recipe, task)`` is the pipeline (:func:`torchslim.pipeline.run_recipe`): the one
way a candidate is run and measured, shared by ``torchslim compress``, the demo and the
optimizer. ``ts.compress`` is what ``torchslim compress`` does, from Python: it also takes
a recipe file, one technique config or a list of them, and writes the report files.
``ts.save`` writes a model in the artifact format the pipeline would choose for it
(``ts.load`` reads it back).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from torchslim.errors import ConfigError, TaskError
from torchslim.pipeline import RecipeRun, artifact_io, choose_format, run_recipe
from torchslim.recipe import Recipe
from torchslim.task import Task
from torchslim.techniques.base import TechniqueConfig


def run(recipe: Recipe, task: Task, **options: Any) -> RecipeRun:
    """Apply every step of ``recipe`` to ``task``'s baseline and measure the result.

    The options are :func:`torchslim.pipeline.run_recipe`'s (``out``, ``latency``,
    ``runtime``, ``threads``, ``batch_n``, ``baseline``, ...). Returns the
    :class:`~torchslim.pipeline.RecipeRun`: ``.model``, ``.candidate`` (footprint, history,
    ratios via ``ts.compare``), ``.baseline_footprint``, ``.artifact``.
    """
    if not isinstance(recipe, Recipe):
        raise ConfigError(
            f"ts.run needs a ts.Recipe, got {type(recipe).__name__}; use ts.compress for a "
            "recipe file or a list of technique configs"
        )
    return run_recipe(recipe, task, **options)


def as_recipe(
    recipe: Recipe | str | os.PathLike[str] | TechniqueConfig | Sequence[TechniqueConfig],
    name: str = "recipe",
) -> Recipe:
    """A Recipe from a Recipe, a YAML file, one technique config or a list of configs."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (str, os.PathLike)):
        return Recipe.from_yaml(recipe)
    steps = [recipe] if isinstance(recipe, TechniqueConfig) else list(recipe)
    bad = [type(step).__name__ for step in steps if not isinstance(step, TechniqueConfig)]
    if bad:
        raise ConfigError(
            f"a recipe step must be a technique config (e.g. ts.MagnitudePruning(...)), got {bad[0]}"
        )
    return Recipe(steps=steps, name=name)


def compress(
    recipe: Recipe | str | os.PathLike[str] | TechniqueConfig | Sequence[TechniqueConfig],
    task: Task | str | None = None,
    *,
    out: str | Path | None = None,
    threads: int = 1,
    **options: Any,
) -> RecipeRun:
    """``torchslim compress`` from Python: run a recipe on a task, optionally write the files.

    Args:
        recipe: a :class:`Recipe`, a YAML recipe file, one technique config or a list.
        task: a :class:`Task`, a task name (``ts.tasks.get``), or None for the task the
            recipe names (a built-in name only: a recipe never makes torchslim import code).
        out: a folder: writes ``results.json``, ``report.html``, ``recipe.yaml`` and the
            artifact there, as the CLI does.
        threads: intra-op threads while timing.
        **options: further :func:`torchslim.pipeline.run_recipe` options (``latency``,
            ``runtime``, ``batch_n``, ...).
    """
    from torchslim import tasks
    from torchslim.hardware import machine_record
    from torchslim.report import Report
    from torchslim.tasks import resolve_task

    recipe = as_recipe(recipe)
    if task is None:
        if not recipe.task:
            raise TaskError(f"recipe {recipe.name!r} names no task; pass task=")
        task = resolve_task({"task": recipe.task}, None, f"recipe {recipe.name!r}")
    elif isinstance(task, str):
        task = tasks.get(task)
    assert not isinstance(task, str)
    run = run_recipe(recipe, task, out=out, threads=threads, **options)
    if out is not None:
        report = Report(
            task=task.name,
            metric_name=task.metric_name,
            baseline=run.baseline_footprint,
            candidates=[run.candidate],
            best=run.candidate.name,
            hardware=machine_record(threads),
        )
        report.save(out)
        recipe.save(Path(out) / "recipe.yaml")
    return run


def save(model: nn.Module, path: str | Path, task: Task, format: str | None = None) -> Path:
    """Write ``model`` as the artifact the pipeline would write, and return the path.

    The format is ``format`` (``torch``, ``sparse``, ``packed``) or chosen by the model's
    state: packed for quantized models, sparse for pruned ones, else a plain checkpoint
    (transformer encoders as their own artifact). The file records what compression
    changed, so ``ts.load(path, model=original)`` rebuilds the model. Written atomically.
    """
    if format in ("onnx", "onnx-int8"):
        raise ConfigError(
            f"ts.save writes torch, sparse or packed files; for {format} use "
            f"ts.export_artifact(model, task, {format!r}, path)"
        )
    io = artifact_io(model, task, choose_format(model, format))
    path = Path(path)
    io.save(model, path)
    return path
