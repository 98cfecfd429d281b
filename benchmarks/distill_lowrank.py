"""KD vs no-KD students on mnist1d-cnn (on the train set and on a transfer set the teacher
did not train on: its validation split), and SVD of digits-mlp before/after recovery.

Writes benchmarks/results/distill_lowrank.json. Run: .venv/bin/python benchmarks/distill_lowrank.py
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

import torchslim as ts
from torchslim.models import build_model
from torchslim.techniques import ApplyContext, apply
from torchslim.techniques.distillation import distill
from torchslim.techniques.lowrank import SVDFactorization

OUT = Path(__file__).parent / "results" / "distill_lowrank.json"


def students(epochs: int = 60, seeds: tuple[int, ...] = (0, 1)) -> list[dict]:
    task = ts.tasks.get("mnist1d-cnn")
    teacher = task.baseline(progress=False)
    transfer = dataclasses.replace(task, train=task.val)  # data the teacher did not train on
    rows = []
    for seed in seeds:
        torch.manual_seed(seed)
        plain = build_model("mnist1d_cnn", channels=10)
        kd, hint = copy.deepcopy(plain), copy.deepcopy(plain)
        plain_t, kd_t = copy.deepcopy(plain), copy.deepcopy(plain)
        transfer.fit(plain_t, epochs=100, progress=False)
        distill(kd_t, teacher, transfer, epochs=100, temperature=2.0, alpha=0.5)
        task.fit(plain, epochs=epochs, progress=False)
        distill(kd, teacher, task, epochs=epochs, temperature=1.0, alpha=0.5)
        distill(hint, teacher, task, epochs=epochs, temperature=1.0, alpha=0.5,
                features=[("features.5", "features.5")])  # fmt: skip
        rows.append(
            {
                "seed": seed,
                "teacher_acc": task.evaluate(teacher),
                "teacher_params": ts.count_parameters(teacher),
                "student_params": ts.count_parameters(plain),
                "no_kd_acc": task.evaluate(plain),
                "kd_acc": task.evaluate(kd),
                "feature_kd_acc": task.evaluate(hint),
                "epochs": epochs,
                "transfer_no_kd_acc": task.evaluate(plain_t),
                "transfer_kd_acc": task.evaluate(kd_t),
            }
        )
        print(rows[-1], flush=True)
    return rows


def svd_mlp(ratios: tuple[float, ...] = (0.5, 0.3, 0.2, 0.1), epochs: int = 20) -> list[dict]:
    task = ts.tasks.get("digits-mlp")
    base = task.baseline(progress=False)
    fc = ts.count_parameters(base)
    rows = []
    for ratio in ratios:
        context = ApplyContext(task=task)
        model = apply(base, SVDFactorization(ratio=ratio), task, context=context)
        before = task.evaluate(model)
        distill(model, base, task, epochs=epochs, temperature=1.0, alpha=0.5)
        rows.append(
            {
                "ratio": ratio,
                "baseline_acc": task.evaluate(base),
                "params_before": fc,
                "params_after": ts.count_parameters(model),
                "acc_before_recovery": before,
                "acc_after_recovery": task.evaluate(model),
                "recovery_epochs": epochs,
                "layers": context.notes["lowrank"],
            }
        )
        print({k: v for k, v in rows[-1].items() if k != "layers"}, flush=True)
    return rows


if __name__ == "__main__":
    torch.set_num_threads(1)
    start = time.time()
    results = {"svd_digits_mlp": svd_mlp(), "students_mnist1d": students()}
    results["seconds"] = round(time.time() - start, 1)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print("wrote", OUT)
