"""Students vs teacher (no KD, Hinton KD, feature KD at equal budget) on mnist1d-cnn and
digits32-vgg, and SVD of digits-mlp before/after recovery.

Writes benchmarks/results/distill_lowrank.json (the parts not run are kept from the file).
Run: TORCHSLIM_PROGRESS=0 .venv/bin/python benchmarks/distill_lowrank.py [--parts svd students students_vgg]
"""

from __future__ import annotations

import copy
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


STUDENTS = {
    # same topology as the teacher, 10 channels: 1,190 params (4.4x smaller)
    "mnist1d_cnn(channels=10)": ("mnist1d_cnn", {"channels": 10}),
    # depthwise-separable, stride-1 stem, global average pool: 1,270 params (4.1x smaller)
    "mnist1d_separable": ("mnist1d_separable", {}),
}
# (label, distill kwargs or None for plain training); equal budget: same epochs, seed, loop
MODES = {
    "no_kd": None,
    "kd_T4_a0.7": {"temperature": 4.0, "alpha": 0.7},
    "kd_T1_a0.5": {"temperature": 1.0, "alpha": 0.5},
    "feature_kd_T4_a0.7": {"temperature": 4.0, "alpha": 0.7, "features": "hint"},
}
HINTS = {  # (student layer, teacher layer): the last ReLU of each trunk
    "mnist1d_cnn": [("features.5", "features.5")],
    "mnist1d_separable": [("features.7", "features.5")],
    "vgg_cifar": [("features.26", "features.26")],
}


def train_students(
    task_name: str,
    students: dict[str, tuple[str, dict]],
    epochs: int,
    seeds: tuple[int, ...],
) -> list[dict]:
    """Each student x seed x mode, same epochs, seed and training loop (the task's)."""
    task = ts.tasks.get(task_name)
    teacher = task.baseline(progress=False)
    teacher_acc, teacher_params = task.evaluate(teacher), ts.count_parameters(teacher)
    rows = []
    for label, (name, kwargs) in students.items():
        for seed in seeds:
            torch.manual_seed(seed)
            init = build_model(name, **kwargs)
            for mode, settings in MODES.items():
                student = copy.deepcopy(init)
                start = time.time()
                if settings is None:
                    task.fit(student, epochs=epochs, progress=False)
                else:
                    settings = dict(settings)
                    if settings.pop("features", None):
                        settings["features"] = HINTS[name]
                    distill(student, teacher, task, epochs=epochs, **settings)
                rows.append(
                    {
                        "task": task_name,
                        "student": label,
                        "seed": seed,
                        "mode": mode,
                        "epochs": epochs,
                        "teacher_acc": teacher_acc,
                        "teacher_params": teacher_params,
                        "student_params": ts.count_parameters(student),
                        "acc": task.evaluate(student),
                        "val_acc": task.evaluate(student, "val"),
                        "seconds": round(time.time() - start, 1),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def students(
    epochs: int = 60,
    seeds: tuple[int, ...] = (0, 1, 2),
    which: tuple[str, ...] = ("mnist1d_separable",),
) -> list[dict]:
    return train_students("mnist1d-cnn", {k: STUDENTS[k] for k in which}, epochs, seeds)


def students_vgg(epochs: int = 5, seeds: tuple[int, ...] = (0,)) -> list[dict]:
    small = {"vgg_cifar(width_mult=0.125, fc_width=64)": (
        "vgg_cifar", {"width_mult": 0.125, "fc_width": 64})}  # fmt: skip
    return train_students("digits32-vgg", small, epochs, seeds)


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


PARTS = {"svd": ("svd_digits_mlp", svd_mlp), "students": ("students_mnist1d", students),
         "students_vgg": ("students_digits32_vgg", students_vgg)}  # fmt: skip

if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="distillation and SVD benchmarks")
    parser.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=sorted(PARTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = json.loads(OUT.read_text()) if OUT.exists() else {}  # parts not run are kept
    results.pop("seconds", None)  # the old whole-run total; each part now has its own
    for part in args.parts:
        key, run = PARTS[part]
        start = time.time()
        results[key] = run()
        results[f"{key}_seconds"] = round(time.time() - start, 1)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print("wrote", OUT)
