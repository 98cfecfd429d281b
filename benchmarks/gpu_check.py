"""GPU check: train, compress, export on the accelerator; reload on a CPU-only process.

Run on a machine with a GPU (CUDA torch build):

    .venv/bin/python benchmarks/gpu_check.py                      # digits32-vgg, cuda
    .venv/bin/python benchmarks/gpu_check.py --task mnist1d-cnn --no-optimize

What it does, each part timed and named by device:

1. one epoch of the task's training from the same initial weights on the CPU and on the
   device (seconds, val metric);
2. the baseline trained on the device (a private cache, so nothing trained on the CPU is
   reused), then one recipe (AGP pruning with training, distillation, static int8) run on
   the device, its artifact written to disk;
3. the artifact reloaded and scored by ``torchslim measure`` in a separate process that
   cannot see any GPU (``CUDA_VISIBLE_DEVICES=""``): its test metric must equal the
   device-side metric within float noise (``--tolerance``, default 0.005);
4. the same recipe on the CPU: the metric difference is the run-to-run cost of training
   on another device (reported, not asserted);
5. (unless ``--no-optimize``) one optimizer run (1-point size budget, ``--trials``) on
   the device and on the CPU: wall time to the answer and the answer's ratio.

Writes benchmarks/results/gpu_check.json (``--json PATH``) and exits 1 when a check fails.
``--device cpu`` runs the whole script on the CPU (a smoke test of the script itself).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "gpu_check.json"
RECIPE = """
name: gpu-check{suffix}
steps:
  - gradual_pruning:
      sparsity: 0.5
      epochs: {epochs}
  - distill:
      epochs: {epochs}
{quant}"""
INT8 = """  - static_quant:
      bits: 8
"""
ORT_SCORE = """
import json, sys
import torchslim as ts
from torchslim.export.onnx import OrtModule
task = ts.tasks.get(sys.argv[2])
print(json.dumps({"test": task.evaluate(OrtModule(sys.argv[1]), "test")}))
"""


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def on(task, device: str):
    """A copy of the task whose training and statistics run on ``device``."""
    copy = dataclasses.replace(task)
    copy.train_config = dataclasses.replace(task.train_config, device=device)
    return copy


def one_epoch(task, device: str) -> dict:
    import torchslim as ts  # noqa: F401

    run = on(task, device)
    model = run.build_model()  # seeded: the same initial weights on both devices
    start = time.perf_counter()
    run.fit(model, epochs=1, progress=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"device": device, "seconds": round(seconds, 3), "val": run.evaluate(model, "val")}


def compress(task, device: str, epochs: int, out: Path, int8: bool) -> dict:
    from torchslim.pipeline import run_recipe
    from torchslim.recipe import Recipe

    run = on(task, device)
    recipe_file = out / f"recipe{'-int8' if int8 else ''}.yaml"
    suffix, quant = ("-int8", INT8) if int8 else ("", "")
    recipe_file.write_text(RECIPE.format(epochs=epochs, suffix=suffix, quant=quant))
    recipe = Recipe.from_yaml(recipe_file)
    start = time.perf_counter()
    base = run.baseline(progress=False)
    result = run_recipe(recipe, run, baseline=base, out=out, latency=False)
    seconds = time.perf_counter() - start
    on_device = [t.device.type for t in result.model.state_dict().values()]
    return {
        "device": device,
        "seconds": round(seconds, 2),
        "test": result.candidate.footprint.metric,
        "artifact": str(result.artifact or result.candidate.footprint.artifact),
        "artifact_bytes": result.candidate.footprint.artifact_bytes,
        "deployed": None
        if result.candidate.deployed is None
        else {
            "artifact": result.candidate.deployed.artifact,
            "test": result.candidate.deployed.metric,
        },
        "model_on_cpu_after": all(kind == "cpu" for kind in on_device),
    }


def reload_on_cpu(artifact: str, task_name: str, onnx: bool = False) -> dict:
    """Score an artifact in a fresh process that sees no GPU."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TORCHSLIM_PROGRESS": "0"}
    if onnx:
        command = [sys.executable, "-c", ORT_SCORE, artifact, task_name]
    else:
        command = [sys.executable, "-m", "torchslim", "measure", artifact, "--task", task_name]
        command += ["--json", "--no-latency"]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if run.returncode != 0:
        return {"error": run.stderr.strip()[-500:]}
    data = json.loads(run.stdout.strip().splitlines()[-1] if onnx else run.stdout)
    if onnx:
        return data
    return {
        "test": data["footprint"]["metric"],
        "artifact_bytes": data["footprint"]["artifact_bytes"],
    }


def optimize_once(task, device: str, trials: int, out: Path) -> dict:
    from torchslim.search.optimize import optimize

    start = time.perf_counter()
    result = optimize(
        on(task, device), max_drop=1.0, trials=trials, out=out, progress=False, latency=False
    )
    best = result.best_found
    return {
        "device": device,
        "seconds": round(time.perf_counter() - start, 1),
        "met": result.met,
        "size_ratio": None
        if best is None
        else result.report.baseline.artifact_bytes / max(1, best.footprint.artifact_bytes),
        "test": None if best is None else best.footprint.metric,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits32-vgg")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each recipe step")
    parser.add_argument("--trials", type=int, default=12, help="optimizer trials")
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--no-optimize", action="store_true")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()

    cache = tempfile.mkdtemp(prefix="torchslim-gpu-check-")
    os.environ["TORCHSLIM_CACHE"] = cache  # baselines trained here, on the device
    os.environ.setdefault("TORCHSLIM_PROGRESS", "0")
    import torchslim as ts
    from torchslim.device import resolve_device

    device = str(resolve_device(args.device))  # a one-line error without the accelerator
    task = ts.tasks.get(args.task)
    accelerator = torch.cuda.get_device_name(0) if device.startswith("cuda") else device
    report = {
        "task": args.task,
        "device": device,
        "accelerator": accelerator,
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "checks": {},
    }
    print(f"{args.task}: {accelerator} against {report['cpu']} ({report['cpu_threads']} threads)")

    report["epoch"] = [one_epoch(task, "cpu"), one_epoch(task, device)]
    print("one epoch:", report["epoch"])

    work = Path(tempfile.mkdtemp(prefix="torchslim-gpu-check-out-"))
    checks = report["checks"]
    for int8 in (False, True):
        label = "int8" if int8 else "float"
        for side in ("device", "cpu"):
            (work / label / side).mkdir(parents=True)
        on_dev = compress(task, device, args.epochs, work / label / "device", int8)
        on_cpu = compress(task, "cpu", args.epochs, work / label / "cpu", int8)
        part = {
            "device": on_dev,
            "cpu": on_cpu,
            "device_vs_cpu_test_diff": on_dev["test"] - on_cpu["test"],
        }
        checks[f"{label}: model back on the CPU after the recipe"] = on_dev["model_on_cpu_after"]
        if not int8:  # the sparse float artifact, reloaded by `torchslim measure`
            reloaded = reload_on_cpu(on_dev["artifact"], args.task)
            ok = "error" not in reloaded
            checks["float: artifact reloads in a CPU-only process"] = ok
            if ok:
                checks["float: reloaded metric equals the device metric"] = (
                    abs(reloaded["test"] - on_dev["test"]) <= args.tolerance
                )
                checks["float: reloaded bytes equal the artifact's"] = (
                    reloaded["artifact_bytes"] == on_dev["artifact_bytes"]
                )
        else:  # the deployed ONNX Runtime int8 file, scored in a CPU-only process
            deployed = on_dev["deployed"]
            reloaded = (
                reload_on_cpu(deployed["artifact"], args.task, onnx=True)
                if deployed
                else {"error": "no deployed ONNX file"}
            )
            ok = "error" not in reloaded
            checks["int8: ONNX file loads in a CPU-only process"] = ok
            if ok:
                checks["int8: ORT metric equals the deployed metric"] = (
                    abs(reloaded["test"] - deployed["test"]) <= args.tolerance
                )
                checks["int8: ORT int8 within 2 points of the device's fake-quant"] = (
                    abs(reloaded["test"] - on_dev["test"]) <= 0.02
                )
        part["reloaded_on_cpu"] = reloaded
        report[f"compress_{label}"] = part
        print(f"compress ({label}):", part)

    if not args.no_optimize:
        report["optimize"] = [
            optimize_once(task, device, args.trials, work / "opt-device"),
            optimize_once(task, "cpu", args.trials, work / "opt-cpu"),
        ]
        print("optimize:", report["optimize"])

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    failed = [name for name, ok in checks.items() if not ok]
    print("checks:", "all passed" if not failed else f"FAILED: {failed}")
    print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
