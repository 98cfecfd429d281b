"""Fashion-MNIST baselines: accuracy, training time and footprint of the fashion-* tasks.

Usage:
    python benchmarks/fashion.py [--tasks fashion-resnet fashion-lenet5] [--data-dir DIR]

Trains (or loads from the cache) each task's baseline with its default settings (one
pinned thread), measures it with ``torchslim.measure`` on torch eager and ONNX Runtime
(1 thread, batch 1 and 64) and writes ``benchmarks/results/fashion.json`` and
``benchmarks/results/fashion.md``. Needs the four IDX files (Debian package
``dataset-fashion-mnist``). Training time depends on what else runs on the machine: the
load average over the run is recorded next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

import torchslim as ts
from torchslim.fileio import write_text_atomic

RESULTS = Path(__file__).parent / "results"
DEFAULT_TASKS = ["fashion-lenet5", "fashion-resnet"]


def cpu_name() -> str:
    """The CPU model name as ``lscpu`` reports it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    parser.add_argument("--data-dir", help="folder of the IDX files (default: Debian's)")
    args = parser.parse_args()
    rows = []
    for name in args.tasks:
        task = ts.tasks.get(name, data_dir=args.data_dir)
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        model = task.baseline()
        ready = time.perf_counter() - start
        info = task.baseline_info()
        row = {
            "task": name,
            "epochs": task.train_config.epochs,
            "train_threads": task.train_config.threads,
            "train_seconds": info.get("train_seconds"),
            "ready_seconds": round(ready, 2),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }
        for runtime in ("torch", "onnxruntime"):
            footprint = ts.measure(model, task, threads=1, batch_n=64, runtime=runtime)
            row[runtime] = footprint.to_dict(per_layer=False)
        rows.append(row)
        fp = row["torch"]
        print(f"{name}: {fp['metric']:.4f} {fp['params']} params {fp['macs']} MACs", flush=True)
    payload = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "torch": torch.__version__,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "fashion.json", json.dumps(payload, indent=2))
    lines = [
        f"CPU: {payload['machine']['cpu']}, {payload['machine']['cores']} cores; "
        "latency at 1 thread, train at the task's pinned thread count",
        "",
        "| task | epochs | test accuracy | params | MACs | train s | load avg | "
        "torch b1 / b64 ms | ORT b1 / b64 ms |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        fp, ort = row["torch"], row["onnxruntime"]
        lines.append(
            f"| {row['task']} | {row['epochs']} | {fp['metric']:.4f} | {fp['params']:,} | "
            f"{fp['macs']:,} | {row['train_seconds']} | {row['load_average']} | "
            f"{fp['latency_ms']['batch_1']:.3f} / {fp['latency_ms']['batch_N']:.2f} | "
            f"{ort['latency_ms']['batch_1']:.3f} / {ort['latency_ms']['batch_N']:.2f} |"
        )
    table = "\n".join(lines) + "\n"
    write_text_atomic(RESULTS / "fashion.md", table)
    print(table)


if __name__ == "__main__":
    main()
