"""Per-layer channel allocation against uniform at equal MACs on Fashion-MNIST (issue #3's question).

On fashion-resnet the target is the MACs reduction of the optimizer's answer
(``benchmarks/fashion_optimize.py --objective latency``, read from its record). Four
allocations reach it:

- ``uniform``: every group cut by the same ratio (torchslim's default = Torch-Pruning's
  uniform pruner), the ratio bisected to the target;
- ``global``: mean-normalized L2 scores ranked across groups (at most 90 % of a group);
- ``macs``: ranked per MAC saved (at most 90 % of a group);
- ``optimizer``: the channel-pruning steps of the optimizer's answer recipe, as found.

Each pruned model gets the same fine-tune (task loss, the task's lr, ``--epochs``) with
seeds 0, 1, 2; test and val accuracy per seed, their mean and spread (max - min) are
reported, whichever way they fall.

With ``--targets 2,4`` the optimizer's record is not read: uniform, global and macs are
compared at those MACs reductions instead (harder points than a latency answer's).

Usage: ``python benchmarks/fashion_allocation.py [--record
benchmarks/results/fashion_optimize_latency.json] [--targets 2,4] [--epochs 1]
[--seeds 0,1,2] [--out FILE]``. Results: ``benchmarks/results/fashion_allocation.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from fashion import cpu_name  # noqa: E402

import torchslim as ts  # noqa: E402
from torchslim.fileio import write_text_atomic  # noqa: E402
from torchslim.measure import count_macs  # noqa: E402
from torchslim.recipe import Recipe  # noqa: E402
from torchslim.techniques import apply  # noqa: E402
from torchslim.techniques.channels import ChannelPruning, ratio_for_macs  # noqa: E402
from torchslim.techniques.recovery import FineTune  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def optimizer_pruned(base: torch.nn.Module, task: ts.Task, record: dict) -> torch.nn.Module:
    """The optimizer answer's channel-pruning steps applied to the baseline."""
    recipe_text = record["best"]["recipe"]
    if isinstance(recipe_text, dict):
        recipe = Recipe.from_dict(recipe_text)
    else:
        recipe = Recipe.from_yaml("answer.yaml", text=recipe_text)
    model = base
    for step in recipe.steps:
        if step.name == "channel_pruning":
            model = apply(model, step, task=task)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="fashion-resnet")
    parser.add_argument("--record", default=str(RESULTS / "fashion_optimize_latency.json"))
    parser.add_argument("--targets", help="comma list of MACs reductions (no optimizer row)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=str(RESULTS / "fashion_allocation.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = ts.tasks.get(args.task)
    base = task.baseline(progress=False)
    inputs = task.inputs(1)
    base_macs = count_macs(base, inputs).macs
    variants = {
        "uniform": ChannelPruning(),
        "global": ChannelPruning(mode="global", max_ratio=0.9),
        "macs": ChannelPruning(mode="macs", max_ratio=0.9),
    }
    pruned: dict[tuple[float, str], torch.nn.Module] = {}
    if args.targets:
        targets = [float(t) for t in args.targets.split(",")]
    else:
        record = json.loads(Path(args.record).read_text())
        ours = optimizer_pruned(base, task, record)
        targets = [base_macs / count_macs(ours, inputs).macs]
        pruned[(targets[0], "optimizer")] = ours
    for target in targets:
        for label, config in variants.items():
            ratio = ratio_for_macs(base, config, task, target)
            pruned[(target, label)] = apply(base, replace(config, ratio=ratio), task=task)
    seeds = [int(s) for s in args.seeds.split(",")]
    original = task.train_config
    rows = []
    try:
        for (target, label), model in pruned.items():
            tests, vals, seconds = [], [], []
            for seed in seeds:
                task.train_config = dataclasses.replace(original, seed=seed)
                start = time.perf_counter()
                tuned = apply(model, FineTune(epochs=args.epochs, lr=original.lr), task=task)
                seconds.append(round(time.perf_counter() - start, 1))
                task.train_config = original
                tests.append(task.evaluate(tuned, "test"))
                vals.append(task.evaluate(tuned, "val"))
            rows.append(
                {
                    "target": target,
                    "allocation": label,
                    "macs_reduction": base_macs / count_macs(model, inputs).macs,
                    "params": sum(p.numel() for p in model.parameters()),
                    "conv_widths": [
                        m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)
                    ],
                    "seeds": seeds,
                    "test_accuracy": tests,
                    "val_accuracy": vals,
                    "mean_test": sum(tests) / len(tests),
                    "spread_test": max(tests) - min(tests),
                    "finetune_seconds": seconds,
                }
            )
            print(rows[-1], flush=True)
    finally:
        task.train_config = original
    summary = {
        "task": task.name,
        "cpu": cpu_name(),
        "target_macs_reductions": targets,
        "baseline_test_accuracy": task.evaluate(base, "test"),
        "finetune": f"FineTune(epochs={args.epochs}, lr={original.lr}) per seed",
        "rows": rows,
    }
    write_text_atomic(Path(args.out), json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
