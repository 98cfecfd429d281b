"""The demo: every technique family on the default task, measured side by side in one run.

``torchslim demo`` trains (or loads) the baseline of ``mnist1d-cnn``, applies one
recipe per technique family, measures every artifact together with the baseline
(latencies interleaved in one run), measures quantized models' deployed ONNX
Runtime int8 artifacts against fp32 ONNX Runtime, and writes ``results.json``,
``report.html`` and the artifacts.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from torchslim import tasks
from torchslim.hardware import machine_record
from torchslim.measure import checkpoint_io, compare, measure_many
from torchslim.pipeline import (
    Applied,
    apply_recipe,
    artifact_io,
    choose_format,
    deploy_onnx,
    has_int_grid,
    safe_name,
)
from torchslim.progress import console as progress_console
from torchslim.recipe import Export, Recipe
from torchslim.report import Candidate, Report, results_table
from torchslim.task import Task
from torchslim.techniques import CONFIGS

BUDGET: dict[str, Any] = {"max_drop": 0.01, "drop_type": "absolute"}  # one accuracy point


def demo_recipes(quick: bool = False) -> list[Recipe]:
    """One recipe per technique family (fewer epochs with ``quick``)."""
    scale = 0.25 if quick else 1.0

    def epochs(count: int) -> int:
        return max(1, int(round(count * scale)))

    def recipe(name: str, *steps: tuple[str, dict], export: str | None = None) -> Recipe:
        configs = [CONFIGS[kind](**fields) for kind, fields in steps]
        return Recipe(steps=configs, name=name, export=Export(export) if export else None)

    return [
        recipe(
            "magnitude 80% (AGP)",
            ("gradual_pruning", {"sparsity": 0.8, "epochs": epochs(100), "lr": 1e-2}),
        ),
        recipe(
            "taylor 50% + finetune",
            ("taylor_pruning", {"sparsity": 0.5, "batches": 8}),
            ("finetune", {"epochs": epochs(30), "lr": 3e-3}),
        ),
        recipe(
            "channels 50% + finetune",
            ("channel_pruning", {"ratio": 0.5}),
            ("finetune", {"epochs": epochs(60), "lr": 1e-2}),
        ),
        recipe("dynamic int8", ("dynamic_quant", {"bits": 8})),
        recipe("static int8", ("static_quant", {"bits": 8})),
        recipe("QAT 4-bit", ("qat", {"bits": 4, "epochs": epochs(10)})),
        recipe("codebook 4-bit", ("codebook_quant", {"bits": 4, "epochs": epochs(8)})),
        recipe(
            "student 4x (KD)",
            (
                "student",
                {
                    "model": "mnist1d_separable",
                    "epochs": epochs(60),
                    "temperature": 1.0,
                    "alpha": 0.5,
                },
            ),
        ),
        recipe(
            "low-rank 50% + finetune",
            ("tucker2", {"ratio": 0.5}),
            ("finetune", {"epochs": epochs(60), "lr": 1e-2}),
        ),
        recipe("early exit", ("early_exit", {"threshold": 0.9, "epochs": epochs(10)})),
        recipe(
            "combined: AGP 80% + int8",
            ("gradual_pruning", {"sparsity": 0.8, "epochs": epochs(100), "lr": 1e-2}),
            ("static_quant", {"bits": 8}),
        ),
    ]


def _optimized_recipe(task: Task, quick: bool) -> Recipe:
    """The optimizer's answer (greedy, smallest artifact within the 1-point budget) as a recipe."""
    from torchslim.search import optimize

    progress_console.print("  optimizing: smallest artifact within a 1-point budget (greedy) ...")
    result = optimize(
        task,
        max_drop=BUDGET["max_drop"] * 100,
        objective="size",
        strategy="greedy",
        latency=False,
        progress=False,
        recovery_epochs=2 if quick else None,
        codebook_epochs=2 if quick else None,
        sensitivity_epochs=0 if quick else None,
        trials=6 if quick else None,
    )
    chosen = result.best or result.best_found
    assert chosen is not None  # the baseline itself is always found
    recipe = Recipe.from_dict(chosen.recipe)
    return dataclasses.replace(recipe, name="optimized (1-point budget)")


def run_demo(
    out: str | Path = "out/demo",
    quick: bool = False,
    task_name: str = tasks.DEFAULT_TASK,
    console: Console | None = None,
    batch_n: int = 64,
) -> Report:
    """Run every demo recipe, measure all artifacts in one run, write the report.

    Args:
        out: output folder (results.json, report.html, artifacts).
        quick: a quarter of the training epochs and shorter timing (smoke runs).
        task_name: the task (default ``mnist1d-cnn``).
        console: where the table goes (default stdout).
        batch_n: the larger batch size timed.
    """
    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task = tasks.get(task_name)
    console.print(
        f"[bold]torchslim demo[/bold] on {task.name}: baseline (trained once, then cached)"
    )
    base = task.baseline()
    recipes = demo_recipes(quick)
    recipes.append(_optimized_recipe(task, quick))
    applied: list[tuple[Recipe, Applied]] = []
    for recipe in recipes:
        progress_console.print(f"  applying {recipe.name} ...")
        applied.append((recipe, apply_recipe(recipe, task, base)))
    models = [base] + [item.model for _, item in applied]
    ios = [checkpoint_io(task, base)] + [
        artifact_io(
            item.model, task, choose_format(item.model, r.export.format if r.export else None)
        )
        for r, item in applied
    ]
    paths = [out / "baseline.safetensors"] + [
        out / f"{safe_name(r.name)}.safetensors" for r, _ in applied
    ]
    from torchslim.techniques.fake_quant import is_simulated

    progress_console.print("  measuring every artifact (latencies interleaved in one run) ...")
    start = time.perf_counter()
    footprints = measure_many(
        models,
        task,
        artifacts=paths,
        ios=ios,
        batch_n=batch_n,
        threads=1,
        simulated=[False] + [is_simulated(m) for m in models[1:]],
        latency_seconds=0.1 if quick else 1.0,
    )
    measure_seconds = time.perf_counter() - start
    candidates = []
    for (recipe, item), footprint in zip(applied, footprints[1:], strict=True):
        candidate = item.candidate(recipe, footprint)
        _early_exit_macs(candidate, item, task)
        if has_int_grid(item.model):
            progress_console.print(f"  deploying {recipe.name} to ONNX Runtime int8 ...")
            deploy_onnx(candidate, item.model, base, task, out, recipe.name, None, 1, batch_n, True)
        candidates.append(candidate)
    report = Report(
        task=task.name,
        metric_name=task.metric_name,
        baseline=footprints[0],
        candidates=candidates,
        budget=dict(BUDGET),
        hardware=machine_record(1),
    )
    report.pareto = report.size_front()
    within = [c for c in candidates if report.within_budget(c)]
    if within:
        report.best = max(
            within, key=lambda c: compare(report.baseline, c.footprint).size_ratio
        ).name
    report.notes.append(
        f"objective: smallest artifact within a {BUDGET['max_drop'] * 100:.0f}-point accuracy drop; "
        f"timing: torch eager, 1 thread, {measure_seconds:.0f} s for all models interleaved"
    )
    report.save(out)
    for recipe, _ in applied:
        recipe.save(out / "recipes" / f"{safe_name(recipe.name)}.yaml")
    console.print(results_table(report))
    console.print(f"wrote {out / 'results.json'}, {out / 'report.html'} and the artifacts in {out}")
    return report


def _early_exit_macs(candidate: Candidate, item: Applied, task: Task) -> None:
    """For an early-exit model, MACs are the average over test samples of the path taken."""
    from torchslim.techniques.dynamic import EarlyExitModel, sweep_thresholds

    model = item.model
    if not isinstance(model, EarlyExitModel):
        return
    row = sweep_thresholds(model, task, thresholds=(model.threshold,), latency=False)[0]
    candidate.footprint = dataclasses.replace(candidate.footprint, macs=int(round(row["avg_macs"])))
    candidate.layers = {
        f"exit {i}": {"exit share": share} for i, share in enumerate(row["exit_fractions"])
    }
    item.notes["early_exit_sweep"] = row
