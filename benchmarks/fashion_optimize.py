"""The optimizer on Fashion-MNIST with its DEFAULT settings: wall time and answer.

Runs ``torchslim optimize <task> --max-drop 1 --objective <objective> [--runtime
onnxruntime]`` exactly as a new user would (no tuning flags) in a subprocess, times it with
the baseline already cached (``benchmarks/fashion.py`` trains it once), and records the
wall time, the load average over the run, the CPU, and the answer read from its
results.json (metric, drop, size / MACs / latency ratios, recipe, the notes that state the
default training amounts).

Usage:
    python benchmarks/fashion_optimize.py --objective latency   # b1 on ONNX Runtime
    python benchmarks/fashion_optimize.py --objective size
Results: ``benchmarks/results/fashion_optimize_<objective>.json``; the answer's files
under ``out/bench-fashion/<objective>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fashion import cpu_name  # noqa: E402

from torchslim.fileio import write_text_atomic  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def summary(results: dict) -> dict:
    """The answer's row and the baseline's, from a results.json."""
    keys = ("metric", "artifact_bytes", "macs", "params", "latency_ms", "runtime")
    base = results["baseline"]
    best = next((c for c in results["candidates"] if c["name"] == results.get("best")), None)
    row: dict = {"baseline": {k: base.get(k) for k in keys}}
    if best is not None:
        row["best"] = {k: best.get(k) for k in keys}
        row["best"].update(
            name=best["name"],
            drop_points=round(100 * (base["metric"] - best["metric"]), 3),
            size_ratio=best.get("size_ratio"),
            macs_ratio=best.get("macs_ratio"),
            techniques=best.get("techniques"),
            recipe=best.get("recipe"),
        )
        deployed = best.get("deployed")
        if deployed:
            row["best"]["deployed"] = {k: deployed.get(k) for k in keys}
            row["best"]["deployed_speedup_vs_ort_fp32"] = best.get("deployed_speedup")
            reference = best.get("deployed_reference") or {}
            row["baseline"]["deployed_fp32"] = {k: reference.get(k) for k in keys}
    row["met"] = best is not None
    row["candidates_evaluated"] = len(results["candidates"])
    row["notes"] = results.get("notes", [])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="fashion-resnet")
    parser.add_argument("--objective", choices=("size", "latency", "macs"), default="latency")
    parser.add_argument("--out", type=Path, help="results file (default by objective)")
    parser.add_argument(
        "--summarize",
        type=Path,
        help="only summarize an existing results.json of such a run (no run, no timing)",
    )
    args = parser.parse_args()
    if args.summarize is not None:
        print(json.dumps(summary(json.loads(args.summarize.read_text())), indent=2))
        return
    folder = Path("out") / "bench-fashion" / args.objective
    command = [
        str(Path(sys.executable).parent / "torchslim"),
        "optimize",
        args.task,
        "--max-drop",
        "1",
        "--objective",
        args.objective,
        "--out",
        str(folder),
    ]
    if args.objective == "latency":
        command += ["--runtime", "onnxruntime"]
    env = dict(os.environ, TORCHSLIM_PROGRESS="0")
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_after = os.getloadavg()
    record = {
        "command": " ".join(["torchslim", *command[1:]]),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "load_average_before_after_1min": [load_before[0], load_after[0]],
        "load_average_after_15min": load_after[2],
        "exit_code": proc.returncode,
        "stdout_tail": proc.stdout[-3000:],
        "stderr_tail": proc.stderr[-2000:],
    }
    results_file = folder / "results.json"
    if proc.returncode == 0 and results_file.exists():
        record.update(summary(json.loads(results_file.read_text())))
    out = args.out or RESULTS / f"fashion_optimize_{args.objective}.json"
    write_text_atomic(out, json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if "tail" not in k}, indent=2))


if __name__ == "__main__":
    main()
