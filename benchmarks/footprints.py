"""Baseline footprints of the built-in tasks: accuracy, parameters, bytes, MACs, latency.

Usage:
    python benchmarks/footprints.py [--tasks mnist1d-cnn digits-mlp ...] [--data-dir DIR]

Trains (or loads from the cache) each task's baseline, measures it with
``torchslim.measure`` (torch eager, 1 thread, batch 1 and 64) and writes
``benchmarks/results/footprints.json`` and ``benchmarks/results/footprints.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import torchslim as ts
from torchslim.fileio import write_text_atomic

RESULTS = Path(__file__).parent / "results"
DEFAULT_TASKS = [
    "mnist1d-cnn",
    "digits-mlp",
    "digits32-vgg",
    "digits32-resnet",
    "digits32-mobilenet",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    parser.add_argument("--data-dir", help="CIFAR-10 batches, adds cifar10-vgg")
    args = parser.parse_args()
    names = list(args.tasks) + (["cifar10-vgg"] if args.data_dir else [])
    rows = []
    for name in names:
        task = ts.tasks.get(name, data_dir=args.data_dir)
        start = time.perf_counter()
        model = task.baseline()
        ready = time.perf_counter() - start
        footprint = ts.measure(model, task, threads=1, batch_n=64)
        info = task.baseline_info()
        rows.append(
            {
                "task": name,
                "train_seconds": info.get("train_seconds"),
                "ready_seconds": round(ready, 2),
                "footprint": footprint.to_dict(per_layer=False),
            }
        )
        print(f"{name}: {footprint.metric:.4f} {footprint.params} params {footprint.macs} MACs")
    payload = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": torch.get_num_threads(),
        },
        "torch": torch.__version__,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "footprints.json", json.dumps(payload, indent=2))
    lines = [
        "| task | test accuracy | params | artifact bytes | MACs | batch-1 ms | batch-64 ms | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        fp = row["footprint"]
        lines.append(
            f"| {row['task']} | {fp['metric']:.4f} | {fp['params']:,} | {fp['artifact_bytes']:,} | "
            f"{fp['macs']:,} | {fp['latency_ms']['batch_1']:.3f} | {fp['latency_ms']['batch_N']:.3f} | "
            f"{row['train_seconds']} |"
        )
    table = "\n".join(lines) + "\n"
    write_text_atomic(RESULTS / "footprints.md", table)
    print(table)


if __name__ == "__main__":
    main()
