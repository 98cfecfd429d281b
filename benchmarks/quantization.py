"""Quantization benchmark: fp32 vs dynamic / static int8 / QAT int8 / 4-bit codebook.

For each task: the metric (simulated and deployed side by side), artifact bytes,
and latency at batch 1 and 64 on ONNX Runtime and on PyTorch, each candidate
against its own fp32 baseline on the same runtime, interleaved in one run. Side
by side: ONNX Runtime's own default ``quantize_static`` and torchao's default
int8 config on the same model.

    .venv/bin/python benchmarks/quantization.py --tasks mnist1d-cnn digits32-vgg

Writes benchmarks/results/quantization.json (``--json PATH`` for another file) and prints a
markdown table. ``--skip dynamic codebook torchao`` leaves out the slow rows that do not
bear on the static-int8 comparison.

Besides the usual interleaved latency table (``benchmark_latency``: rounds of A, B, C in a
fixed order), the static int8 models are timed head to head against ONNX Runtime's
default ``quantize_static`` output (``head_to_head``): every round calls each model once
in a shuffled order, the sessions are built twice in opposite orders, and the result is
the median per-call time and the median of the per-round time ratios against ORT's
default. That cancels most of the load of a shared machine and the small advantage a
session gets from being created first.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import torchslim as ts
from torchslim.export.onnx import OrtModule, export_onnx, export_ort_int8, onnx_io
from torchslim.export.packed import packed_io
from torchslim.export.torchao_int8 import torchao_io
from torchslim.measure import artifact_bytes, benchmark_latency, checkpoint_io, threads_fixed
from torchslim.techniques import apply
from torchslim.techniques.codebook import CodebookQuant
from torchslim.techniques.quantization import (
    QAT,
    DynamicQuant,
    StaticQuant,
    TorchaoInt8,
    calibration_inputs,
)

RESULTS = Path(__file__).parent / "results" / "quantization.json"


def ort_default_static(model: torch.nn.Module, task: ts.Task, path: Path) -> OrtModule:
    """ONNX Runtime's quantize_static with its defaults (QDQ, per-tensor, MinMax)."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    batches = calibration_inputs(task, 8, "ort default")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": b.numpy()} for b in batches])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, task.inputs(2), Path(tmp) / "fp32.onnx")
        quantize_static(str(fp32), str(path), Reader())
    return OrtModule(path)


def latency(models: list[torch.nn.Module], task: ts.Task, runtime: str) -> list[dict[str, float]]:
    """Median ms at batch 1 and 64, all models interleaved."""
    out: list[dict[str, float]] = [{} for _ in models]
    for key, size in (("batch_1", 1), ("batch_64", 64)):
        stats = benchmark_latency(models, task.inputs(size), runtime=runtime, target_seconds=0.5)
        for row, stat in zip(out, stats, strict=True):
            row[key] = round(stat.median_ms, 4)
    return out


def head_to_head(
    models: list[OrtModule], task: ts.Task, rounds: dict[int, int], seed: int = 0
) -> list[dict[str, float]]:
    """Per-call interleaved timing (shuffled order each round, two session build orders).

    Returns per model: median ms per call and median per-round ratio against
    ``models[0]``, at each batch size in ``rounds``.
    """
    rng = random.Random(seed)
    out: list[dict[str, float]] = [{} for _ in models]
    for size, count in rounds.items():
        inputs = task.inputs(size)
        samples: list[list[float]] = [[] for _ in models]
        for build_order in (list(range(len(models))), list(reversed(range(len(models))))):
            sessions: dict[int, Any] = {}
            for index in build_order:
                module = models[index].with_threads(1)
                sessions[index] = (module.session, module.feeds(inputs))
            for session, feeds in sessions.values():
                for _ in range(3):
                    session.run(None, feeds)
            for _ in range(count // 2):
                order = list(range(len(models)))
                rng.shuffle(order)
                for index in order:
                    session, feeds = sessions[index]
                    start = time.perf_counter()
                    session.run(None, feeds)
                    samples[index].append((time.perf_counter() - start) * 1e3)
        for index, times in enumerate(samples):
            ratios = [t / r for t, r in zip(times, samples[0], strict=True)]
            out[index][f"batch_{size}_ms"] = round(statistics.median(times), 4)
            out[index][f"batch_{size}_ratio_vs_ort_default"] = round(statistics.median(ratios), 4)
    return out


def bench_task(
    name: str,
    qat_epochs: int,
    codebook_epochs: int,
    out: Path,
    inductor: bool,
    skip: tuple[str, ...] = (),
    h2h_rounds: dict[int, int] | None = None,
) -> list[dict[str, Any]]:
    """All candidates of one task."""
    task = ts.tasks.get(name)
    base = task.baseline()
    fp32_metric = task.evaluate(base)
    rows: list[dict[str, Any]] = []
    out.mkdir(parents=True, exist_ok=True)

    def add(
        label: str,
        simulated: torch.nn.Module | None,
        deployed: torch.nn.Module,
        io: Any,
        seconds: float,
    ) -> None:
        io = io or checkpoint_io(task, deployed)
        size = artifact_bytes(deployed, out / f"{name}-{len(rows)}{io.suffix}", task.inputs(8), io)
        metric = task.evaluate(deployed)
        rows.append(
            {
                "task": name,
                "candidate": label,
                "simulated_metric": task.evaluate(simulated) if simulated is not None else None,
                "deployed_metric": metric,
                "metric_drop": round(fp32_metric - metric, 4),
                "artifact_bytes": size,
                "seconds_to_make": round(seconds, 2),
                "model": deployed,
            }
        )

    add("fp32 (torch)", None, base, None, 0.0)
    if "dynamic" not in skip:
        start = time.perf_counter()
        dynamic = apply(base, DynamicQuant())
        add(
            "dynamic int8 (ORT)",
            dynamic,
            export_ort_int8(base, task, out / f"{name}-dyn.onnx", mode="dynamic"),
            onnx_io(),
            time.perf_counter() - start,
        )
    start = time.perf_counter()
    add(
        "static int8 (ORT default quantize_static)",
        None,
        ort_default_static(base, task, out / f"{name}-ortdefault.onnx"),
        onnx_io(),
        time.perf_counter() - start,
    )
    # torchslim's own scales (calibrated / learned) are carried into the ORT graph.
    for label, per_channel in (("per-channel", True), ("per-tensor", False)):
        start = time.perf_counter()
        static = apply(base, StaticQuant(per_channel=per_channel), task)
        add(
            f"static int8 (ORT, torchslim, {label})",
            static,
            export_ort_int8(static, task, out / f"{name}-static-{label}.onnx"),
            onnx_io(),
            time.perf_counter() - start,
        )
    start = time.perf_counter()
    qat = apply(base, QAT(epochs=qat_epochs, lr=1e-3), task)
    add(
        "QAT int8 (ORT)",
        qat,
        export_ort_int8(qat, task, out / f"{name}-qat.onnx"),
        onnx_io(),
        time.perf_counter() - start,
    )
    if "qat-kd" not in skip:
        start = time.perf_counter()
        qat_kd = apply(base, QAT(epochs=qat_epochs, lr=1e-3, distill=True), task)
        add(
            "QAT int8 + KD from fp32 (ORT)",
            qat_kd,
            export_ort_int8(qat_kd, task, out / f"{name}-qat-kd.onnx"),
            onnx_io(),
            time.perf_counter() - start,
        )
    if "codebook" not in skip:
        start = time.perf_counter()
        codebook = apply(base, CodebookQuant(bits=4, epochs=codebook_epochs, lr=1e-3), task)
        add(
            "4-bit codebook + fine-tune (packed)",
            codebook,
            codebook,
            packed_io(template=codebook),
            time.perf_counter() - start,
        )
    try:
        if "torchao" in skip:
            raise ts.ConfigError("skipped by --skip torchao")
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torchao = apply(base, TorchaoInt8())
        add(
            "torchao int8 default (Linear only)",
            None,
            torchao,
            torchao_io(template=torchao),
            time.perf_counter() - start,
        )
    except ts.TorchslimError as exc:
        print(f"torchao skipped: {exc}")

    # Head to head: torchslim's static / QAT int8 against ORT's default quantize_static.
    by_label = {r["candidate"]: r for r in rows}
    contenders = [r for r in rows if r["candidate"].startswith(("static int8", "QAT int8"))]
    contenders.sort(key=lambda r: r is not by_label["static int8 (ORT default quantize_static)"])
    # noise control: a second session of ORT's default file, timed like the others
    control = contenders[0]["model"].with_threads(1)
    h2h = head_to_head(
        [r["model"] for r in contenders] + [control], task, h2h_rounds or {1: 2000, 64: 40}
    )
    for row, times in zip(contenders, h2h[:-1], strict=True):
        row["head_to_head"] = times
    rows[0]["head_to_head_noise_control"] = h2h[-1]
    # ONNX Runtime: fp32 exported baseline vs every ONNX artifact, interleaved.
    ort_rows = [r for r in rows if isinstance(r["model"], OrtModule)]
    with tempfile.TemporaryDirectory() as tmp:
        fp32_onnx = OrtModule(export_onnx(base, task.inputs(2), Path(tmp) / "fp32.onnx"))
    ort_times = latency([fp32_onnx] + [r["model"] for r in ort_rows], task, "onnxruntime")
    rows[0]["ort_latency_ms"] = ort_times[0]
    for row, times in zip(ort_rows, ort_times[1:], strict=True):
        row["ort_latency_ms"] = times
        row["ort_speedup_b1"] = round(ort_times[0]["batch_1"] / times["batch_1"], 2)
        row["ort_speedup_b64"] = round(ort_times[0]["batch_64"] / times["batch_64"], 2)
    # PyTorch eager: fp32 vs the models that run in PyTorch (codebook = float kernels).
    torch_rows = [r for r in rows if not isinstance(r["model"], OrtModule)]
    torch_times = latency([r["model"] for r in torch_rows], task, "torch")
    for row, times in zip(torch_rows, torch_times, strict=True):
        row["torch_latency_ms"] = times
        row["torch_speedup_b1"] = round(torch_times[0]["batch_1"] / times["batch_1"], 2)
        row["torch_speedup_b64"] = round(torch_times[0]["batch_64"] / times["batch_64"], 2)
    # torch.compile (inductor, freezing): fp32 vs torchao int8, interleaved.
    ao_rows = [r for r in rows if r["candidate"].startswith("torchao")]
    if inductor and ao_rows:
        times = latency([base, ao_rows[0]["model"]], task, "inductor")
        rows[0]["inductor_latency_ms"], ao_rows[0]["inductor_latency_ms"] = times
        ao_rows[0]["inductor_speedup_b1"] = round(times[0]["batch_1"] / times[1]["batch_1"], 2)
        ao_rows[0]["inductor_speedup_b64"] = round(times[0]["batch_64"] / times[1]["batch_64"], 2)
    for row in rows:
        row.pop("model")
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table."""
    head = (
        "| task | candidate | simulated metric | deployed metric | drop | bytes | "
        "ORT ms b1 / b64 (speedup) | torch ms b1 / b64 (speedup) |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        sim = f"{r['simulated_metric']:.4f}" if r["simulated_metric"] is not None else "-"
        ort = r.get("ort_latency_ms")
        ort_text = (
            f"{ort['batch_1']:.3f} / {ort['batch_64']:.3f} ({r.get('ort_speedup_b1', 1.0)}x / {r.get('ort_speedup_b64', 1.0)}x)"
            if ort
            else "-"
        )
        tor = r.get("torch_latency_ms")
        tor_text = (
            f"{tor['batch_1']:.3f} / {tor['batch_64']:.3f} ({r.get('torch_speedup_b1')}x / {r.get('torch_speedup_b64')}x)"
            if tor
            else "-"
        )
        ind = r.get("inductor_latency_ms")
        if ind:
            tor_text += f"; compiled {ind['batch_1']:.3f} / {ind['batch_64']:.3f}"
            if "inductor_speedup_b1" in r:
                tor_text += f" ({r['inductor_speedup_b1']}x / {r['inductor_speedup_b64']}x)"
        lines.append(
            f"| {r['task']} | {r['candidate']} | {sim} | {r['deployed_metric']:.4f} | "
            f"{r['metric_drop'] * 100:+.2f} pt | {r['artifact_bytes']:,} | {ort_text} | {tor_text} |"
        )
    return "\n".join(lines)


def head_to_head_markdown(rows: list[dict[str, Any]]) -> str:
    """The head-to-head timings as a markdown table."""
    lines = [
        "| task | candidate | b1 ms | b1 ratio vs ORT default | b64 ms | b64 ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        h = r.get("head_to_head")
        if "head_to_head_noise_control" in r:
            h = r["head_to_head_noise_control"]
            r = {**r, "candidate": "ORT default, second session (noise control)"}
        if h:
            lines.append(
                f"| {r['task']} | {r['candidate']} | {h['batch_1_ms']:.3f} | "
                f"{h['batch_1_ratio_vs_ort_default']:.3f} | {h['batch_64_ms']:.3f} | "
                f"{h['batch_64_ratio_vs_ort_default']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["mnist1d-cnn", "digits32-vgg"])
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--codebook-epochs", type=int, default=5)
    parser.add_argument("--no-inductor", dest="inductor", action="store_false")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["dynamic", "qat-kd", "codebook", "torchao"],
        help="rows to leave out (the static / ORT-default / QAT rows always run)",
    )
    parser.add_argument(
        "--h2h-rounds",
        nargs=2,
        type=int,
        default=[2000, 40],
        metavar=("B1", "B64"),
        help="head-to-head rounds at batch 1 and batch 64 (default 2000 40)",
    )
    parser.add_argument("--out", type=Path, default=Path("out/bench-quantization"))
    parser.add_argument(
        "--json", type=Path, default=RESULTS, help=f"results file (default {RESULTS})"
    )
    parser.add_argument(
        "--h2h-files",
        nargs="+",
        type=Path,
        help="only time these .onnx files head to head on the first task (ratios vs the first)",
    )
    args = parser.parse_args()
    if args.h2h_files:
        with threads_fixed(1):
            task = ts.tasks.get(args.tasks[0])
            times = head_to_head(
                [OrtModule(f) for f in args.h2h_files],
                task,
                {1: args.h2h_rounds[0], 64: args.h2h_rounds[1]},
            )
        for path, row in zip(args.h2h_files, times, strict=True):
            print(path, json.dumps(row))
        if args.json != RESULTS:  # never overwrite the full benchmark's results with a timing run
            rows = [{"file": str(f), **row} for f, row in zip(args.h2h_files, times, strict=True)]
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"head_to_head": rows, "threads": 1}, indent=2) + "\n")
        return
    rows: list[dict[str, Any]] = []
    with threads_fixed(1):
        for name in args.tasks:
            rows += bench_task(
                name,
                args.qat_epochs,
                args.codebook_epochs,
                args.out,
                args.inductor,
                tuple(args.skip),
                {1: args.h2h_rounds[0], 64: args.h2h_rounds[1]},
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    import onnxruntime

    meta = {
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": 1,
        "command": "python benchmarks/quantization.py " + " ".join(sys.argv[1:]),
        "note": "latency medians in ms, interleaved per runtime; head_to_head: per-call "
        "shuffled interleaving, ratio = median per-round time ratio vs ORT default",
    }
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(markdown(rows))
    print(head_to_head_markdown(rows))


if __name__ == "__main__":
    main()
