"""int8 on every CPU: the same ONNX Runtime int8 files run natively and on an emulated CPU
without VNNI, scored on the task's test split next to their PyTorch simulation.

For each task: static int8 (QDQ, carried scales), QAT int8 and dynamic int8, each made
portable (torchslim's default: 7-bit weights, ``reduce_range``) and full range
(``reduce_range=False``, ``portable=False``), plus ONNX Runtime's own default
``quantize_static`` (full range). Every file is run natively and under
``qemu-x86_64 -cpu max`` (Debian's qemu-user 7.2: AVX2, no VNNI, no AVX-512), the kernel
path of AVX2-only CPUs such as AMD EPYC before Zen 4. Emulation gives the accuracy of that
path, not its speed.

    .venv/bin/python benchmarks/int8_portability.py --tasks mnist1d-cnn

Writes benchmarks/results/int8_portability.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import torchslim as ts
from torchslim.export.onnx import OrtModule, export_onnx, export_ort_int8
from torchslim.hardware import machine_record, run_onnx_files
from torchslim.measure import threads_fixed
from torchslim.techniques import apply
from torchslim.techniques.quant_math import sqnr
from torchslim.techniques.quantization import QAT, DynamicQuant, StaticQuant, calibration_inputs

RESULTS = Path(__file__).parent / "results" / "int8_portability.json"


def ort_default_static(model: torch.nn.Module, task: ts.Task, path: Path) -> OrtModule:
    """ONNX Runtime's quantize_static with its defaults (QDQ, per-tensor, full range)."""
    from onnxruntime.quantization import quantize_static

    from torchslim.export.onnx import _Reader

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, task.inputs(2), Path(tmp) / "fp32.onnx")
        batches = calibration_inputs(task, 8, "ORT default")
        quantize_static(str(fp32), str(path), _Reader(batches, ["input"]))
    return OrtModule(path)


def accuracy(logits: np.ndarray | torch.Tensor, labels: torch.Tensor) -> float:
    return float((torch.as_tensor(np.asarray(logits)).argmax(1) == labels).float().mean())


def run_task(name: str, folder: Path) -> list[dict]:
    task = ts.tasks.get(name)
    base = task.baseline()
    batches = list(task.loader("test"))
    x = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    variants = {
        "static": (StaticQuant(sqnr_samples=0), "static"),
        "qat": (QAT(epochs=3, sqnr_samples=0), "static"),
        "dynamic": (DynamicQuant(), "dynamic"),
    }
    jobs, simulated = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, (config, mode) in variants.items():
            for portable in (True, False):
                model = apply(base, dataclasses.replace(config, reduce_range=portable), task)
                key = f"{label}-{'portable' if portable else 'full'}"
                path = folder / f"{name}-{key}.onnx"
                deployed = export_ort_int8(model, task, path, mode=mode, portable=portable)
                jobs[key] = (path, deployed.feeds(x))
                with torch.no_grad():
                    simulated[key] = model(x)
        path = folder / f"{name}-ort-default.onnx"
        deployed = ort_default_static(base, task, path)
        jobs["ort-default-static"] = (path, deployed.feeds(x))
        with torch.no_grad():
            simulated["ort-default-static"] = base(x)  # no simulation: fp32 is the reference
    native, native_exact = run_onnx_files(jobs, folder / "native")
    start = time.perf_counter()
    emulated, emulated_exact = run_onnx_files(jobs, folder / "emulated", emulated=True)
    seconds = time.perf_counter() - start
    rows = []
    with torch.no_grad():
        fp32 = accuracy(base(x), labels)
    for key in jobs:
        rows.append(
            {
                "task": name,
                "file": key,
                "fp32": fp32,
                "simulated": accuracy(simulated[key], labels),
                "native": accuracy(native[key], labels),
                "emulated_avx2": accuracy(emulated[key], labels),
                "sqnr_native_db": sqnr(simulated[key], torch.from_numpy(native[key])),
                "sqnr_emulated_db": sqnr(simulated[key], torch.from_numpy(emulated[key])),
                "native_u8s8_exact": native_exact,
                "emulated_u8s8_exact": emulated_exact,
                "emulation_seconds": round(seconds, 1),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["mnist1d-cnn"])
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=Path("out/bench-int8-portability"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with threads_fixed(1):
        for name in args.tasks:
            rows += run_task(name, args.out)
    payload = {"machine": machine_record(1), "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2))
    print(f"machine: {payload['machine']['cpu']} {payload['machine']['int8_flags']}")
    print(
        "| task | file | fp32 | simulated | deployed here | deployed, AVX2 emulated | SQNR here / emulated (dB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['task']} | {r['file']} | {r['fp32']:.4f} | {r['simulated']:.4f} | "
            f"{r['native']:.4f} | {r['emulated_avx2']:.4f} | "
            f"{r['sqnr_native_db']:.1f} / {r['sqnr_emulated_db']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
