"""One optimizer study run by 1 worker, then by 2 workers, against PostgreSQL.

Each worker is ``torchslim optimize`` in its own process with one thread
(``OMP_NUM_THREADS=1``); both share the study and the output folder. Measured: wall time
from the start of the workers to the answer (every worker exited), the answer's size
ratio and test metric, and the trials per worker.

    .venv/bin/python benchmarks/workers.py --task digits32-vgg --trials 12
    .venv/bin/python benchmarks/workers.py --storage postgresql://user:pw@host/db

Without ``--storage`` it starts a private PostgreSQL cluster (as the tests do, from
``tests/pg_helpers.py``). The task's baseline is trained once before the timed runs.
Writes benchmarks/results/workers_<task>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def cpu_name() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def run(task: str, workers: int, url: str, trials: int, extra: list[str]) -> dict:
    study = f"bench-{task}-{workers}w-{os.getpid()}"
    out = Path(tempfile.mkdtemp(prefix=f"torchslim-{workers}w-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHSLIM_PROGRESS": "0"}
    command = [sys.executable, "-m", "torchslim", "optimize", task, "--max-drop", "1"]
    command += ["--trials", str(trials), "--storage", url, "--study", study]
    command += ["--out", str(out), "--no-latency", *extra]
    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(workers)
    ]
    errors = []
    for process in processes:
        _, stderr = process.communicate()
        if process.returncode != 0:
            errors.append(stderr.strip()[-500:])
    seconds = time.perf_counter() - start
    if errors:
        return {"workers": workers, "errors": errors}
    report = json.loads((out / "results.json").read_text())
    best = next((c for c in report["candidates"] if c["name"] == report["best"]), None)
    best = best or report["candidates"][-1]
    note = next(n for n in report["notes"] if n.startswith("trials per worker"))
    return {
        "workers": workers,
        "seconds": round(seconds, 1),
        "met": report["best"] is not None,
        "size_ratio": round(best["size_ratio"], 2),  # baseline bytes / answer bytes
        "test_metric": best["metric"],
        "baseline_metric": report["baseline"]["metric"],
        "trials_per_worker": note,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits32-vgg")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--storage", help="a PostgreSQL URL (default: a private cluster)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="optimize options")
    args = parser.parse_args()

    import torch

    import torchslim as ts

    torch.set_num_threads(1)
    ts.tasks.get(args.task).baseline(progress=False)  # trained once, outside the timing
    cluster = None
    url = args.storage
    if url is None:
        from pg_helpers import start_cluster, stop_cluster

        cluster = start_cluster()
        if isinstance(cluster, str):
            print(f"cannot start PostgreSQL: {cluster}")
            return 1
        url = cluster.url
    try:
        rows = [run(args.task, n, url, args.trials, args.extra) for n in (1, 2)]
    finally:
        if cluster is not None:
            stop_cluster(cluster)
    result = {
        "task": args.task,
        "trials": args.trials,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads_per_worker": 1,
        "load_average_after": os.getloadavg(),
        "runs": rows,
    }
    if all("seconds" in r for r in rows):
        result["speedup"] = round(rows[0]["seconds"] / rows[1]["seconds"], 2)
    path = Path(__file__).parent / "results" / f"workers_{args.task.replace('-', '_')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
