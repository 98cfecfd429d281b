"""Early exit on digits32-vgg: accuracy vs average MACs per sample and batch-1 latency.

Exit heads go after the first three pooling stages of the cached baseline; they are
trained by distillation from the final head with the trunk frozen (so the final head's
accuracy is the baseline's), then a confidence-threshold sweep measures accuracy, the
fraction of samples leaving at each exit, average MACs (each path's MACs measured with
``count_macs`` on the forced path, weighted by the exit fractions) and batch-1 latency
(test samples one at a time, interleaved with the baseline, 1 thread). The operating
threshold is chosen on the validation split (the lowest within 1 point of the baseline's
validation accuracy) and its test row is reported.

Writes benchmarks/results/early_exit.json.
Run: TORCHSLIM_PROGRESS=0 .venv/bin/python benchmarks/early_exit.py [--epochs 6] [--head-pool 4]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import torchslim as ts
from torchslim.techniques.dynamic import build_early_exit, sweep_thresholds, train_exits

OUT = Path(__file__).parent / "results" / "early_exit.json"
THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 0.9999, 0.99999, 1.01)


def run(
    task_name: str, epochs: int, head_pool: int, mode: str, latency_samples: int, seed: int = 0
) -> dict:
    task = ts.tasks.get(task_name)
    baseline = task.baseline(progress=False)
    torch.manual_seed(seed)  # the heads' initialization
    model = build_early_exit(copy.deepcopy(baseline), task.inputs(2), head_pool=head_pool)
    start = time.time()
    train_exits(model, task, epochs=epochs, mode=mode)
    train_seconds = time.time() - start
    rows = sweep_thresholds(
        model, task, THRESHOLDS, baseline=baseline, latency_samples=latency_samples
    )
    # pick the threshold on the validation split: the lowest within 1 point of the baseline
    val_rows = sweep_thresholds(model, task, THRESHOLDS, baseline=baseline, split="val",
                                latency=False)  # fmt: skip
    base_val = task.evaluate(baseline, "val")
    chosen = next(r["threshold"] for r in val_rows if r[task.metric_name] >= base_val - 0.01)
    base_acc = task.evaluate(baseline)
    for row in rows:
        row["drop_points"] = round(100 * (base_acc - row[task.metric_name]), 2)
        print({k: v for k, v in row.items() if k != "path_macs"}, flush=True)
    return {
        "task": task_name,
        "baseline_acc": base_acc,
        "exits": model.exits,
        "head_pool": head_pool,
        "mode": mode,
        "seed": seed,
        "epochs": epochs,
        "train_seconds": round(train_seconds, 1),
        "head_params": sum(p.numel() for p in model.heads.parameters()),
        "latency_samples": latency_samples,
        "baseline_val_acc": base_val,
        "val_rows": val_rows,
        "chosen_threshold_on_val": chosen,
        "chosen_test_row": next(r for r in rows if r["threshold"] == chosen),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits32-vgg")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--head-pool", type=int, default=4)
    parser.add_argument("--mode", default="distill", choices=("distill", "joint"))
    parser.add_argument("--latency-samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    result = run(args.task, args.epochs, args.head_pool, args.mode, args.latency_samples, args.seed)
    result["seconds"] = round(time.time() - start, 1)
    result["command"] = (
        f"python benchmarks/early_exit.py --task {args.task} --epochs {args.epochs} "
        f"--head-pool {args.head_pool} --mode {args.mode} --seed {args.seed}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print("wrote", args.json)


if __name__ == "__main__":
    main()
