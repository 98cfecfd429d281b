"""Tucker-2 of digits32-vgg's convolutions: parameter / MAC ratio vs accuracy, before
and after recovery fine-tuning by distillation from the uncompressed model.

Every 3×3 conv (the first one too: its input rank is 1) is factorized to
1×1 → 3×3 core → 1×1 at a target kept-parameter ratio per layer; the classifier stays
as it is. Recovery: ``distill`` (T = 1, α = 0.5) from the cached baseline for a few
epochs with the task's SGD loop at a tenth of its learning rate.

Writes benchmarks/results/tucker_vgg.json.
Run: TORCHSLIM_PROGRESS=0 .venv/bin/python benchmarks/tucker_vgg.py [--ratios 0.5 0.25 0.1] [--epochs 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch import nn

import torchslim as ts
from torchslim.measure import count_macs
from torchslim.techniques import ApplyContext, apply
from torchslim.techniques.distillation import distill
from torchslim.techniques.lowrank import TuckerFactorization

OUT = Path(__file__).parent / "results" / "tucker_vgg.json"


def conv_params(model: nn.Module) -> int:
    return sum(
        p.numel()
        for name, m in model.named_modules()
        if name.startswith("features")
        for p in m.parameters(recurse=False)
        if isinstance(m, nn.Conv2d)
    )


def run(ratios: list[float], epochs: int, lr_scale: float) -> dict:
    task = ts.tasks.get("digits32-vgg")
    base = task.baseline(progress=False)
    one = task.inputs(1)
    base_acc = task.evaluate(base)
    base_params, base_conv = ts.count_parameters(base), conv_params(base)
    base_macs = count_macs(base, one).macs
    rows = []
    for ratio in ratios:
        context = ApplyContext(task=task)
        model = apply(copy.deepcopy(base), TuckerFactorization(ratio=ratio), task, context=context)
        before = task.evaluate(model)
        start = time.time()
        distill(model, base, task, epochs=epochs, lr=task.train_config.lr * lr_scale,
                temperature=1.0, alpha=0.5)  # fmt: skip
        seconds = time.time() - start
        row = {
            "ratio": ratio,
            "params": ts.count_parameters(model),
            "conv_params": conv_params(model),
            "macs": count_macs(model, one).macs,
            "acc_before_recovery": before,
            "acc_after_recovery": task.evaluate(model),
            "recovery_epochs": epochs,
            "recovery_seconds": round(seconds, 1),
            "layers": context.notes["lowrank"],
        }
        row["params_reduction"] = round(base_params / row["params"], 3)
        row["conv_params_reduction"] = round(base_conv / row["conv_params"], 3)
        row["macs_reduction"] = round(base_macs / row["macs"], 3)
        rows.append(row)
        print({k: v for k, v in row.items() if k != "layers"}, flush=True)
    return {
        "task": "digits32-vgg",
        "baseline_acc": base_acc,
        "baseline_params": base_params,
        "baseline_conv_params": base_conv,
        "baseline_macs": base_macs,
        "recovery_lr": task.train_config.lr * lr_scale,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr-scale", type=float, default=0.1)
    parser.add_argument("--json", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    result = run(args.ratios, args.epochs, args.lr_scale)
    result["seconds"] = round(time.time() - start, 1)
    result["command"] = (
        "python benchmarks/tucker_vgg.py --ratios "
        + " ".join(str(r) for r in args.ratios)
        + f" --epochs {args.epochs} --lr-scale {args.lr_scale}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print("wrote", args.json)


if __name__ == "__main__":
    main()
