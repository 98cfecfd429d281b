"""Optimizer benchmark: the most compressed model within a 1-point budget.

Parts (each writes ``benchmarks/results/optimize_<part>.json``):

* ``digits-mlp``: LeNet-300-100-shaped MLP, objective size (artifact bytes ratio against
  the fp32 baseline file; Deep Compression's anchor is 40x).
* ``mnist1d-cnn``: the ~5K-parameter CNN, objective size, reported as is.
* ``vgg-size`` / ``vgg-latency``: digits32-vgg, objective size / latency at batch 1 on
  ONNX Runtime (speedup over ONNX Runtime fp32).
* ``vgg-macs``: digits32-vgg, objective MACs: the optimizer's per-layer allocation
  against a uniform channel ratio with at least as many MACs removed (``ChannelPruning``
  in ``layer`` mode, ratio bisected by ``ratio_for_macs``, with the optimizer's L1
  importance and with the default L2), recovered by the same step (``--recovery``,
  ``--recovery-epochs``, ``--recovery-lr``); ``--uniform-targets 5,6`` adds uniform rows
  at larger reductions (MACs at equal accuracy).

Usage: ``python benchmarks/optimize.py --part digits-mlp [--strategy greedy] [--trials N]``.
Wall time to the final answer is recorded (2 cores, 1 intra-op thread). Besides the
answer, each part records every evaluated candidate (val and test metric, size ratio,
allocation), the packed artifact's fixed overhead (safetensors header + JSON spec) and,
for the small size parts, hand-written recipes run the same way for comparison
(``--no-hand`` skips them; they are not part of the optimizer's wall time).
"""

from __future__ import annotations

import argparse
import json
import struct
import time
from pathlib import Path
from typing import Any

import torch

from torchslim import tasks
from torchslim.fileio import write_text_atomic
from torchslim.search.optimize import optimize

RESULTS = Path(__file__).parent / "results"
PARTS: dict[str, dict[str, Any]] = {
    "digits-mlp": {"task": "digits-mlp", "objective": "size"},
    "mnist1d-cnn": {"task": "mnist1d-cnn", "objective": "size"},
    "vgg-size": {"task": "digits32-vgg", "objective": "size"},
    "vgg-latency": {"task": "digits32-vgg", "objective": "latency", "runtime": "onnxruntime"},
    "vgg-macs": {"task": "digits32-vgg", "objective": "macs"},
}


def hand_recipes(part: str) -> dict[str, list[Any]]:
    """Hand-written recipes to compare the optimizer's answer with (size parts only)."""
    from torchslim.techniques.base import Scope
    from torchslim.techniques.channels import ChannelPruning
    from torchslim.techniques.codebook import CodebookQuant
    from torchslim.techniques.distillation import Distill
    from torchslim.techniques.pruning import MagnitudePruning

    if part == "mnist1d-cnn":
        return {
            "codebook 4-bit (10 epochs)": [CodebookQuant(bits=4, epochs=10)],
            "magnitude 30% + distill 20 + codebook 4-bit": [
                MagnitudePruning(sparsity=0.3),
                Distill(epochs=20),
                CodebookQuant(bits=4, epochs=10),
            ],
        }
    if part == "digits-mlp":
        layers = ("layers.1", "layers.3", "layers.5")
        return {
            "channels 67/50% + distill + magnitude 70/70/30% + distill + codebook 4-bit": [
                ChannelPruning(
                    ratio=0.67,
                    mode="layer",
                    layer_ratios=(("layers.1", 0.67), ("layers.3", 0.5)),
                    scope=Scope(include=layers[:2]),
                ),
                Distill(epochs=20),
                MagnitudePruning(
                    sparsity=0.7,
                    mode="layer",
                    overrides=tuple(zip(layers, (0.7, 0.7, 0.3), strict=True)),
                    scope=Scope(include=layers),
                ),
                Distill(epochs=10),
                CodebookQuant(bits=4, epochs=10),
            ],
        }
    return {}


def run_hand(task: Any, part: str, baseline_bytes: int) -> list[dict[str, Any]]:
    """Each hand recipe's val / test metric and size ratio (same pipeline and artifact)."""
    from torchslim.pipeline import run_recipe
    from torchslim.recipe import Recipe

    rows = []
    base = task.baseline(progress=False)
    for name, steps in hand_recipes(part).items():
        run = run_recipe(
            Recipe(steps=steps, name="hand"), task, baseline=base, latency=False, split="val"
        )
        footprint = run.candidate.footprint
        rows.append(
            {
                "recipe": name,
                "val_metric": footprint.metric,
                "test_metric": task.evaluate(run.model, "test"),
                "bytes": footprint.artifact_bytes,
                "size_ratio": baseline_bytes / max(1, footprint.artifact_bytes),
            }
        )
    return rows


def header_bytes(path: str | Path | None) -> int | None:
    """Bytes of a safetensors file's header (8-byte length + JSON with the spec)."""
    if not path or not Path(path).is_file():
        return None
    with open(path, "rb") as handle:
        return 8 + struct.unpack("<Q", handle.read(8))[0]


def run_uniform(
    task: Any, evaluator_settings: dict[str, Any], macs_target: float
) -> list[dict[str, Any]]:
    """Uniform ``ChannelPruning(ratio=r)`` rows, r bisected to cut at least ``macs_target`` x.

    Each row is recovered exactly like the optimizer's candidates (same recovery step,
    epochs and lr) and measured by the same pipeline (val footprint, test metric).
    """
    from dataclasses import replace

    from torchslim.measure import count_macs
    from torchslim.pipeline import run_recipe
    from torchslim.recipe import Recipe
    from torchslim.techniques.channels import (
        ChannelPruning,
        example_inputs,
        ratio_for_macs,
    )
    from torchslim.techniques.channels_knob import SEARCH_IMPORTANCE
    from torchslim.techniques.distillation import Distill
    from torchslim.techniques.recovery import FineTune

    base = task.baseline(progress=False)
    inputs = example_inputs(base, task)
    base_macs = count_macs(base, inputs).macs
    epochs = evaluator_settings["recovery_epochs"]
    lr = evaluator_settings.get("recovery_lr")
    recovery = evaluator_settings.get("recovery", "distill")
    rows = []
    for importance in dict.fromkeys((SEARCH_IMPORTANCE, "l2")):
        config = ChannelPruning(importance=importance, mode="layer")
        ratio = ratio_for_macs(base, config, task, macs_target)
        step = (
            Distill(epochs=epochs, lr=lr)
            if recovery == "distill"
            else FineTune(epochs=epochs, lr=lr)
        )
        start = time.perf_counter()
        run = run_recipe(
            Recipe(steps=[replace(config, ratio=ratio), step], name="uniform"),
            task,
            baseline=base,
            latency=False,
            split="val",
        )
        model = run.model
        rows.append(
            {
                "config": f"ChannelPruning(ratio={ratio:.4f}, importance={importance!r}, "
                "mode='layer')",
                "importance": importance,
                "ratio": ratio,
                "macs_ratio": base_macs / max(1, count_macs(model, inputs).macs),
                "val_metric": run.candidate.footprint.metric,
                "test_metric": task.evaluate(model, "test"),
                "recovery": f"{recovery} {epochs} epoch(s), lr {lr}",
                "conv_widths": [
                    m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)
                ],
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print("uniform:", rows[-1], flush=True)
    return rows


def run_part(
    part: str,
    strategy: str,
    trials: int | None,
    techniques: list[str] | None,
    hand: bool = True,
    settings: dict[str, Any] | None = None,
    uniform_targets: tuple[float, ...] = (),
) -> dict:
    """Run one part and return its summary."""
    spec = PARTS[part]
    task = tasks.get(spec["task"])
    start = time.perf_counter()
    task.baseline()
    baseline_seconds = time.perf_counter() - start
    result = optimize(
        task,
        max_drop=1.0,
        objective=spec["objective"],
        runtime=spec.get("runtime", "torch"),
        strategy=strategy,
        techniques=techniques,
        trials=trials,
        out=Path("out") / "bench-optimize" / part,
        progress=False,
        **(settings or {}),
    )
    wall = round(time.perf_counter() - start, 1)
    report = result.report
    found = result.best_found
    summary: dict[str, Any] = {
        "part": part,
        "task": spec["task"],
        "objective": spec["objective"],
        "strategy": strategy,
        "settings": settings or {},
        "met": result.met,
        "wall_seconds": wall,
        "baseline_train_seconds": round(baseline_seconds, 1),
        "baseline_metric": report.baseline.metric,
        "baseline_bytes": report.baseline.artifact_bytes,
        "candidates_evaluated": len(result.records),
        "pareto": report.pareto,
        "notes": report.notes,
        "candidates": [
            {
                "name": r.name,
                "val_metric": r.val_metric,
                "test_metric": r.test_metric,
                "val_loss": r.val_loss,
                "size_ratio": 1 / max(r.ratio, 1e-12) if spec["objective"] == "size" else None,
                "cost_ratio": r.ratio,
                "allocation": r.allocation,
            }
            for r in result.records
        ],
    }
    if found is not None:
        summary.update(
            best_metric=found.footprint.metric,
            best_bytes=found.footprint.artifact_bytes,
            size_ratio=report.baseline.artifact_bytes / max(1, found.footprint.artifact_bytes),
            macs_ratio=report.baseline.macs / max(1, found.footprint.macs),
            recipe=found.recipe,
            artifact_header_bytes=header_bytes(found.footprint.artifact),
            best_artifact=str(found.footprint.artifact) if found.footprint.artifact else None,
        )
    if found is not None and spec["objective"] == "macs" and summary["macs_ratio"] > 1:
        summary["baseline_test_metric"] = task.evaluate(task.baseline(progress=False), "test")
        rounds = (settings or {}).get("recovery_epochs")
        if rounds is None:
            rounds = min(20, max(1, task.train_config.epochs // 2))
        uniform_settings = {
            "recovery_epochs": rounds,
            "recovery_lr": (settings or {}).get("recovery_lr"),
            "recovery": (settings or {}).get("recovery", "distill"),
        }
        summary["uniform"] = [
            row
            for target in (summary["macs_ratio"], *uniform_targets)
            for row in run_uniform(task, uniform_settings, target)
        ]
    if hand and spec["objective"] == "size" and hand_recipes(part):
        summary["hand_recipes"] = run_hand(task, part, report.baseline.artifact_bytes)
    return summary


def main() -> None:
    """Parse arguments, run the parts, write the JSON files, print a summary line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="digits-mlp", choices=[*PARTS, "all"])
    parser.add_argument("--strategy", default="greedy", choices=("greedy", "optuna", "auto"))
    parser.add_argument("--trials", type=int)
    parser.add_argument("--techniques", help="comma list (default by objective)")
    parser.add_argument("--no-hand", action="store_true", help="skip the hand-recipe rows")
    parser.add_argument("--suffix", help="results file suffix (optimize_<part>_<suffix>.json)")
    parser.add_argument("--recovery-epochs", type=int, help="default: half the task's epochs")
    parser.add_argument("--codebook-epochs", type=int)
    parser.add_argument("--sensitivity-epochs", type=int, help="default 1")
    parser.add_argument("--recovery", choices=("distill", "finetune"), help="default distill")
    parser.add_argument("--recovery-lr", type=float, help="default: the optimizer's")
    parser.add_argument(
        "--uniform-only",
        action="store_true",
        help="vgg-macs: only the uniform rows at --uniform-targets (no optimizer run)",
    )
    parser.add_argument(
        "--uniform-targets",
        default="",
        help="vgg-macs: extra MACs reductions for uniform rows, e.g. 5,6 (MACs at equal accuracy)",
    )
    parser.add_argument("--verbose", action="store_true", help="log each verified candidate")
    args = parser.parse_args()
    if args.verbose:
        import logging

        handler = logging.StreamHandler()  # torchslim's own messages only
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logger = logging.getLogger("torchslim")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    torch.set_num_threads(1)
    techniques = args.techniques.split(",") if args.techniques else None
    parts = list(PARTS) if args.part == "all" else [args.part]
    RESULTS.mkdir(parents=True, exist_ok=True)
    for part in parts:
        settings = {
            key: value
            for key, value in (
                ("recovery_epochs", args.recovery_epochs),
                ("codebook_epochs", args.codebook_epochs),
                ("sensitivity_epochs", args.sensitivity_epochs),
                ("recovery", args.recovery),
                ("recovery_lr", args.recovery_lr),
            )
            if value is not None
        }
        targets = tuple(float(v) for v in args.uniform_targets.split(",") if v)
        suffix = f"_{args.suffix}" if args.suffix else ""
        if args.uniform_only:
            if part != "vgg-macs" or not targets:
                parser.error("--uniform-only needs --part vgg-macs and --uniform-targets")
            task = tasks.get(PARTS[part]["task"])
            base = task.baseline(progress=False)
            uniform_settings = {
                "recovery": args.recovery or "distill",
                "recovery_epochs": args.recovery_epochs
                if args.recovery_epochs is not None
                else min(20, max(1, task.train_config.epochs // 2)),
                "recovery_lr": args.recovery_lr,
            }
            summary = {
                "part": part,
                "baseline_val_metric": task.evaluate(base, "val"),
                "baseline_test_metric": task.evaluate(base, "test"),
                "settings": uniform_settings,
                "uniform": [
                    row for target in targets for row in run_uniform(task, uniform_settings, target)
                ],
            }
            path = RESULTS / f"optimize_{part.replace('-', '_')}_uniform{suffix}.json"
            write_text_atomic(path, json.dumps(summary, indent=2))
            print(f"{part}: uniform rows -> {path}")
            continue
        summary = run_part(
            part, args.strategy, args.trials, techniques, not args.no_hand, settings, targets
        )
        path = RESULTS / f"optimize_{part.replace('-', '_')}{suffix}.json"
        write_text_atomic(path, json.dumps(summary, indent=2))
        print(
            f"{part}: met={summary['met']} size x{summary.get('size_ratio', 0):.1f} "
            f"macs x{summary.get('macs_ratio', 0):.2f} metric {summary.get('best_metric')} "
            f"(baseline {summary['baseline_metric']:.4f}) in {summary['wall_seconds']}s -> {path}"
        )


if __name__ == "__main__":
    main()
