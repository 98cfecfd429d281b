"""Student architecture search on mnist1d-cnn: NSGA-II and TPE vs random search, same trials.

Every sampler gets the same number of trials and the same training budget per trial
(``epochs`` of distillation from the cached baseline, T = 1, α = 0.5), over the default
space derived from ``mnist1d_cnn`` (width multiplier 0.25–1.0 and depth 1–2 per stage,
kernel 3/5/7: 1,536 architectures). Each run's Pareto front of (validation accuracy,
parameters) is scored by its hypervolume against the reference point (accuracy 0,
parameters of the largest architecture in the space), with parameters divided by that
reference (so the hypervolume is in [0, 1], higher is better). TPE is single-objective:
it maximizes accuracy within a parameter budget (``--budget``, default the 4×-smaller
student's 1,302) with the median pruner on; its front is computed from its completed
trials the same way.

Writes benchmarks/results/nas.json.
Run: TORCHSLIM_PROGRESS=0 .venv/bin/python benchmarks/nas.py [--trials 16] [--epochs 10] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import torchslim as ts
from torchslim.models import build_model
from torchslim.techniques.nas import SearchSpace, hypervolume, pareto_front, search_student

OUT = Path(__file__).parent / "results" / "nas.json"


def largest_params(space: SearchSpace) -> int:
    choice = {
        "widths": [max(space.widths)] * 3,
        "depths": [max(space.depths)] * 3,
        "kernel": max(space.kernels),
    }
    arch = space.arch(choice)
    return ts.count_parameters(build_model(arch["name"], **arch["kwargs"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--samplers", nargs="+", default=["nsga2", "random", "tpe"])
    parser.add_argument("--budget", type=float, default=1302)
    parser.add_argument("--json", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = ts.tasks.get("mnist1d-cnn")
    teacher = task.baseline(progress=False)
    space = SearchSpace()
    ref = largest_params(space)
    runs = []
    start = time.time()
    for seed in args.seeds:
        for sampler in args.samplers:
            began = time.time()
            result = search_student(
                task, teacher, space, trials=args.trials, epochs=args.epochs,
                objective="params", sampler=sampler, seed=seed,
                budget=args.budget if sampler == "tpe" else None,
            )  # fmt: skip
            front = pareto_front(result.trials, "params")
            points = [(c.params / ref, c.metric) for c in front]
            within = [c for c in result.trials if c.state == "complete" and c.params <= args.budget]
            best = max(within, key=lambda c: c.metric, default=None)
            run = {
                "sampler": sampler,
                "seed": seed,
                "trials": args.trials,
                "samples": len(result.trials),
                "completed": sum(c.state == "complete" for c in result.trials),
                "pruned": sum(c.state == "pruned" for c in result.trials),
                "over_budget": sum(c.state == "over_budget" for c in result.trials),
                "hypervolume": round(hypervolume(points, 1.0, 0.0), 4),
                "front": [
                    {
                        "params": c.params,
                        "macs": c.macs,
                        "val_acc": c.metric,
                        "test_acc": task.evaluate(c.model) if c.model is not None else None,
                        "arch": c.arch["kwargs"]["stages"],
                    }
                    for c in front
                ],
                "best_within_budget": None
                if best is None
                else {
                    "params": best.params,
                    "val_acc": best.metric,
                    "arch": best.arch["kwargs"]["stages"],
                },
                "seconds": round(time.time() - began, 1),
            }
            runs.append(run)
            print({k: v for k, v in run.items() if k != "front"}, flush=True)
    result = {
        "task": "mnist1d-cnn",
        "teacher_params": ts.count_parameters(teacher),
        "teacher_test_acc": task.evaluate(teacher),
        "reference_params": ref,
        "epochs_per_trial": args.epochs,
        "budget": args.budget,
        "runs": runs,
        "seconds": round(time.time() - start, 1),
        "command": f"python benchmarks/nas.py --trials {args.trials} --epochs {args.epochs} "
        f"--seeds {' '.join(map(str, args.seeds))} --samplers {' '.join(args.samplers)}",
    }
    if args.json.exists():  # keep the runs of other (sampler, seed) pairs from the file
        done = {(r["sampler"], r["seed"]) for r in runs}
        previous = json.loads(args.json.read_text())
        old = previous.get("runs", [])
        result["runs"] = [r for r in old if (r["sampler"], r["seed"]) not in done] + runs
        commands = previous.get("commands") or [previous.get("command")]
        result["commands"] = [c for c in commands if c and c != result["command"]] + [
            result["command"]
        ]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print("wrote", args.json)


if __name__ == "__main__":
    main()
