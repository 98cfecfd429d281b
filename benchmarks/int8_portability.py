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
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from quantization import ort_default_static  # benchmarks/quantization.py, beside this file

import torchslim as ts
from torchslim.export.onnx import export_ort_int8
from torchslim.hardware import machine_record, run_onnx_files
from torchslim.measure import threads_fixed
from torchslim.techniques import apply
from torchslim.techniques.quant_math import sqnr
from torchslim.techniques.quantization import QAT, DynamicQuant, StaticQuant

RESULTS = Path(__file__).parent / "results" / "int8_portability.json"


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


def run_encoder(model_dir: str, folder: Path, texts: int, seq_len: int) -> list[dict]:
    """all-MiniLM-style encoder: SmoothQuant int8 (act='tensor') + 4-bit table, portable and
    full range, and ONNX Runtime's default dynamic int8; mean cosine / NN agreement to fp32
    on ``texts`` held-out texts, natively and under AVX2 emulation; latency b1 vs ORT fp32."""
    from torchslim.hf.export import OrtEncoder, export_onnx, ort_default_int8
    from torchslim.hf.export import export_ort_int8 as export_hf_int8
    from torchslim.hf.metrics import fidelity_stats
    from torchslim.measure import benchmark_latency
    from torchslim.techniques.embedding_quant import EmbeddingQuant
    from torchslim.techniques.int8_linear import LinearInt8

    task = ts.tasks.get("text-embedding", model_dir=model_dir, seq_len=seq_len)
    fp32 = task.build_model().eval()
    from torchslim.batches import split_batch

    batches = [split_batch(b)[0] for b in task.loader("test")]
    inputs = {k: torch.cat([b[k] for b in batches])[:texts] for k in batches[0]}
    with torch.no_grad():
        reference = fp32(**inputs)
    files, simulated = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for portable in (True, False):
            key = f"smooth0.7-int8-emb4g32-{'portable' if portable else 'full'}"
            int8 = apply(fp32, LinearInt8(act="tensor", smooth=0.7, reduce_range=portable), task)
            model = apply(int8, EmbeddingQuant(bits=4, group_size=32), task)
            files[key] = export_hf_int8(
                model, task.inputs(2), folder / f"{key}.onnx", portable=portable
            )
            with torch.no_grad():
                simulated[key] = model(**inputs)
        fp32_file = export_onnx(fp32, task.inputs(2), folder / "encoder-fp32.onnx")
        files["ort-default-dynamic"] = ort_default_int8(fp32_file, folder / "ort-default.onnx")
        simulated["ort-default-dynamic"] = reference
    jobs = {k: (path, OrtEncoder(path).feeds(inputs)) for k, path in files.items()}
    native, native_exact = run_onnx_files(jobs, folder / "enc-native")
    start = time.perf_counter()
    emulated, emulated_exact = run_onnx_files(jobs, folder / "enc-emulated", emulated=True)
    seconds = time.perf_counter() - start
    sessions = [OrtEncoder(fp32_file)] + [OrtEncoder(files[k]) for k in files]
    stats = benchmark_latency(
        sessions, task.inputs(1), runtime="onnxruntime-hf", target_seconds=1.0
    )
    rows = []
    for index, key in enumerate(files):
        sim = fidelity_stats(simulated[key], reference)
        here = fidelity_stats(torch.from_numpy(native[key]), reference)
        avx2 = fidelity_stats(torch.from_numpy(emulated[key]), reference)
        rows.append(
            {
                "task": "text-embedding",
                "file": key,
                "texts": texts,
                "simulated_cosine": sim["mean_cosine"],
                "native_cosine": here["mean_cosine"],
                "emulated_cosine": avx2["mean_cosine"],
                "native_nn": here["nn_agreement"],
                "emulated_nn": avx2["nn_agreement"],
                "speedup_b1_vs_ort_fp32": stats[0].median_ms / stats[index + 1].median_ms,
                "native_u8s8_exact": native_exact,
                "emulated_u8s8_exact": emulated_exact,
                "emulation_seconds": round(seconds, 1),
            }
        )
    return rows


KERNEL_FORMATS = {
    "u8s8 full range": {"weight_type": "QInt8", "reduce_range": False},
    "u8s8 7-bit (torchslim)": {"weight_type": "QInt8", "reduce_range": True},
    "u8u8": {"weight_type": "QUInt8", "reduce_range": False},
}


def kernel_speed(name: str, folder: Path) -> list[dict]:
    """Why 7-bit weights and not U8U8: the task's (untrained: timing does not depend on the
    weights) model as fp32 and as static QDQ int8 in each weight format, timed interleaved on
    ONNX Runtime at batch 1 and 64."""
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_static

    from torchslim.export.onnx import OrtModule, _Reader, export_onnx
    from torchslim.measure import benchmark_latency
    from torchslim.techniques.quantization import calibration_inputs

    task = ts.tasks.get(name)
    model = task.build_model().eval()
    fp32 = export_onnx(model, task.inputs(2), folder / f"{name}-kernel-fp32.onnx")
    source = folder / f"{name}-kernel-pre.onnx"
    quant_pre_process(str(fp32), str(source), skip_symbolic_shape=True)
    batches = calibration_inputs(task, 8, "kernel speed")
    files = {"fp32": fp32}
    for label, options in KERNEL_FORMATS.items():
        path = folder / f"{name}-kernel-{len(files)}.onnx"
        quantize_static(
            str(source),
            str(path),
            _Reader(batches, ["input"]),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=getattr(QuantType, options["weight_type"]),
            reduce_range=options["reduce_range"],
        )
        files[label] = path
    models = [OrtModule(path) for path in files.values()]
    rows = [{"task": name, "format": label} for label in files]
    for key, size in (("b1_ms", 1), ("b64_ms", 64)):
        stats = benchmark_latency(models, task.inputs(size), runtime="onnxruntime")
        for row, stat in zip(rows, stats, strict=True):
            row[key] = stat.median_ms
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=["mnist1d-cnn"])
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=Path("out/bench-int8-portability"))
    parser.add_argument("--model-dir", help="also a sentence-transformers folder (MiniLM)")
    parser.add_argument("--texts", type=int, default=60, help="held-out texts for --model-dir")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--kernel-speed", metavar="TASK", help="time the int8 weight formats")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with threads_fixed(1):
        for name in args.tasks:
            rows += run_task(name, args.out)
        if args.model_dir:
            rows += run_encoder(args.model_dir, args.out, args.texts, args.seq_len)
            for r in rows[-3:]:
                print(
                    f"| {r['file']} | {r['simulated_cosine']:.4f} | {r['native_cosine']:.4f} / "
                    f"{r['native_nn']:.3f} | {r['emulated_cosine']:.4f} / {r['emulated_nn']:.3f} "
                    f"| {r['speedup_b1_vs_ort_fp32']:.2f} |"
                )
        if args.kernel_speed:
            speed = kernel_speed(args.kernel_speed, args.out)
            rows += speed
            print("| format | b1 ms | b64 ms |\n|---|---:|---:|")
            for r in speed:
                print(f"| {r['format']} | {r['b1_ms']:.3f} | {r['b64_ms']:.1f} |")
    payload = {"machine": machine_record(1), "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2))
    print(f"machine: {payload['machine']['cpu']} {payload['machine']['int8_flags']}")
    print(
        "| task | file | fp32 | simulated | deployed here | deployed, AVX2 emulated | SQNR here / emulated (dB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in (r for r in rows if "fp32" in r):
        print(
            f"| {r['task']} | {r['file']} | {r['fp32']:.4f} | {r['simulated']:.4f} | "
            f"{r['native']:.4f} | {r['emulated_avx2']:.4f} | "
            f"{r['sqnr_native_db']:.1f} / {r['sqnr_emulated_db']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
