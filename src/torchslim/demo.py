"""The demo: every technique family on the default task, measured side by side in one run.

``torchslim demo`` trains (or loads) the baseline of ``mnist1d-cnn`` and runs one
recipe per technique family through the pipeline every command uses
(:func:`torchslim.pipeline.run_recipes`: the same steps, artifacts and MACs as
``torchslim compress`` of each recipe; every artifact measured together with the
baseline, latencies interleaved in one run; quantized models' deployed ONNX Runtime
int8 artifacts against fp32 ONNX Runtime), then writes ``results.json``,
``report.html``, the artifacts and the recipes. The demo keeps its table and report,
not a pipeline of its own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rich.console import Console

from torchslim import tasks
from torchslim.hardware import machine_record
from torchslim.measure import compare
from torchslim.pipeline import run_recipes, safe_name
from torchslim.progress import console as progress_console
from torchslim.recipe import Export, Recipe
from torchslim.report import Report, results_table
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
    from torchslim.search.optimize import optimize

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
    progress_console.print(
        "  applying each recipe, then measuring every artifact (latencies interleaved in one run) ..."
    )
    runs = run_recipes(
        recipes,
        task,
        baseline=base,
        baseline_artifact=out / "baseline.safetensors",
        out=out,
        threads=1,
        batch_n=batch_n,
        latency_seconds=0.1 if quick else 1.0,
        on_apply=lambda recipe: progress_console.print(f"  applying {recipe.name} ..."),
    )
    candidates = [run.candidate for run in runs]
    report = Report(
        task=task.name,
        metric_name=task.metric_name,
        baseline=runs[0].baseline_footprint,
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
        "timing: torch eager, 1 thread, all models interleaved in one run"
    )
    report.save(out)
    for recipe in recipes:
        recipe.save(out / "recipes" / f"{safe_name(recipe.name)}.yaml")
    console.print(results_table(report))
    console.print(f"wrote {out / 'results.json'}, {out / 'report.html'} and the artifacts in {out}")
    return report
