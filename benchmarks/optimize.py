"""Optimizer benchmark: the most compressed model within a 1-point budget.

Parts (each writes ``benchmarks/results/optimize_<part>.json``):

* ``digits-mlp``: LeNet-300-100-shaped MLP, objective size (artifact bytes ratio against
  the fp32 baseline file; Deep Compression's anchor is 40x).
* ``mnist1d-cnn``: the ~5K-parameter CNN, objective size, reported as is.
* ``vgg-size`` / ``vgg-latency``: digits32-vgg, objective size / latency at batch 1 on
  ONNX Runtime (speedup over ONNX Runtime fp32).
* ``vgg-macs``: digits32-vgg, objective MACs: the optimizer's per-layer allocation
  against a uniform channel ratio with at least as many MACs removed.

Usage: ``python benchmarks/optimize.py --part digits-mlp [--strategy greedy] [--trials N]``.
Wall time to the final answer is recorded (2 cores, 1 intra-op thread).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from torchslim import tasks
from torchslim.checkpoint import write_text_atomic
from torchslim.search import optimize

RESULTS = Path(__file__).parent / "results"
PARTS: dict[str, dict[str, Any]] = {
    "digits-mlp": {"task": "digits-mlp", "objective": "size"},
    "mnist1d-cnn": {"task": "mnist1d-cnn", "objective": "size"},
    "vgg-size": {"task": "digits32-vgg", "objective": "size"},
    "vgg-latency": {"task": "digits32-vgg", "objective": "latency", "runtime": "onnxruntime"},
    "vgg-macs": {"task": "digits32-vgg", "objective": "macs"},
}


def run_part(part: str, strategy: str, trials: int | None, techniques: list[str] | None) -> dict:
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
    )
    report = result.report
    found = result.best_found
    summary: dict[str, Any] = {
        "part": part,
        "task": spec["task"],
        "objective": spec["objective"],
        "strategy": strategy,
        "met": result.met,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "baseline_train_seconds": round(baseline_seconds, 1),
        "baseline_metric": report.baseline.metric,
        "baseline_bytes": report.baseline.artifact_bytes,
        "candidates_evaluated": len(result.records),
        "pareto": report.pareto,
        "notes": report.notes,
    }
    if found is not None:
        summary.update(
            best_metric=found.footprint.metric,
            best_bytes=found.footprint.artifact_bytes,
            size_ratio=report.baseline.artifact_bytes / max(1, found.footprint.artifact_bytes),
            macs_ratio=report.baseline.macs / max(1, found.footprint.macs),
            recipe=found.recipe,
        )
    return summary


def main() -> None:
    """Parse arguments, run the parts, write the JSON files, print a summary line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="digits-mlp", choices=[*PARTS, "all"])
    parser.add_argument("--strategy", default="greedy", choices=("greedy", "optuna", "auto"))
    parser.add_argument("--trials", type=int)
    parser.add_argument("--techniques", help="comma list (default by objective)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    techniques = args.techniques.split(",") if args.techniques else None
    parts = list(PARTS) if args.part == "all" else [args.part]
    RESULTS.mkdir(parents=True, exist_ok=True)
    for part in parts:
        summary = run_part(part, args.strategy, args.trials, techniques)
        path = RESULTS / f"optimize_{part.replace('-', '_')}.json"
        write_text_atomic(path, json.dumps(summary, indent=2))
        print(
            f"{part}: met={summary['met']} size x{summary.get('size_ratio', 0):.1f} "
            f"macs x{summary.get('macs_ratio', 0):.2f} metric {summary.get('best_metric')} "
            f"(baseline {summary['baseline_metric']:.4f}) in {summary['wall_seconds']}s -> {path}"
        )


if __name__ == "__main__":
    main()
