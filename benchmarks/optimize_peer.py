"""The optimizer's latency answer against the peers' off-the-shelf combination.

Peer: Torch-Pruning's uniform ``MagnitudePruner`` (L2 group norm, classifier kept) at a
channel ratio, fine-tuned with the task loss (same epochs as the optimizer's recovery, the
task's lr, fixed seed), then ONNX Runtime's default ``quantize_static`` (QDQ, per-tensor,
MinMax, 8 calibration batches). Peers are built at the optimizer answer's MACs (channel
ratio bisected to remove at least as many MACs) and at each ``--peer-ratios`` value (the
issue quotes 50 % and 75 %).

A last row is ONNX Runtime's default int8 alone (``quantize_static`` on the unpruned
baseline). Every ONNX file (the baseline's fp32 export, the answer's int8 file, each peer's
int8 file, the default int8 file)
is timed in one interleaved head-to-head at batch 1 and batch 64 (1 thread, shuffled order
per round, two session build orders; median per-round ratio against ONNX Runtime fp32) and
scored on the held-out test split in ONNX Runtime.

Usage: ``python benchmarks/optimize_peer.py [--task digits32-vgg]
[--results benchmarks/results/optimize_vgg_latency.json]
[--answer out/bench-optimize/vgg-latency/best/...onnx] [--peer-ratios 0.5,0.75]``.
Results: ``benchmarks/results/optimize_vgg_peer.json`` (``--out``). Fashion-MNIST:
``python benchmarks/optimize_peer.py --task fashion-resnet --results
benchmarks/results/fashion_optimize_latency.json --out
benchmarks/results/fashion_peer.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from fashion import cpu_name  # noqa: E402
from pruning import torch_pruning_uniform, tp_ratio_for_macs  # noqa: E402
from quantization import head_to_head, ort_default_static  # noqa: E402

import torchslim as ts  # noqa: E402
from torchslim.export.onnx import OrtModule, export_onnx  # noqa: E402
from torchslim.fileio import write_text_atomic  # noqa: E402
from torchslim.measure import count_macs  # noqa: E402
from torchslim.techniques import apply  # noqa: E402
from torchslim.techniques.recovery import FineTune  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def peer(task: ts.Task, base: torch.nn.Module, ratio: float, epochs: int, folder: Path) -> dict:
    """Build, fine-tune, quantize (ORT default) and score one peer model."""
    start = time.perf_counter()
    inputs = task.inputs(1)
    pruned = torch_pruning_uniform(base, task, ratio)
    tuned = apply(pruned, FineTune(epochs=epochs, lr=task.train_config.lr), task=task)
    path = folder / f"peer-{ratio:.4f}.onnx"
    module = ort_default_static(tuned, task, path)
    return {
        "model": f"Torch-Pruning uniform {ratio:.4f} + finetune {epochs} + ORT default int8",
        "ratio": ratio,
        "macs_ratio": count_macs(base, inputs).macs / count_macs(tuned, inputs).macs,
        "torch_test_metric": task.evaluate(tuned, "test"),
        "test_metric": task.evaluate(module, "test"),
        "val_metric": task.evaluate(module, "val"),
        "bytes": path.stat().st_size,
        "onnx": str(path),
        "conv_widths": [m.out_channels for m in tuned.modules() if isinstance(m, torch.nn.Conv2d)],
        "seconds": round(time.perf_counter() - start, 1),
    }


def answer_from_record(record: dict) -> dict:
    """The answer's ONNX file, MACs ratio and recovery epochs from a fashion_optimize.py record."""
    folder = Path(record["command"].split("--out ")[1].split()[0])
    onnx = sorted((folder / "best").glob("*.onnx")) or sorted(folder.rglob("best*.onnx"))
    if not onnx:
        raise SystemExit(f"no ONNX answer under {folder}; run benchmarks/fashion_optimize.py")
    epochs = None
    for note in record.get("notes", []):
        if note.startswith("strategy:") and "recovery:" in note:
            epochs = int(note.split("recovery:")[1].split()[1])
    return {
        "best_artifact": str(onnx[0]),
        "macs_ratio": record["best"]["macs_ratio"],
        "recipe": record["best"].get("recipe"),
        "settings": {"recovery_epochs": epochs},
    }


def main() -> None:
    """Build the peers, time everything interleaved, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits32-vgg")
    parser.add_argument("--results", default=str(RESULTS / "optimize_vgg_latency.json"))
    parser.add_argument("--answer", help="the answer's ONNX file (default: from --results)")
    parser.add_argument("--peer-ratios", default="0.5,0.75")
    parser.add_argument("--epochs", type=int, help="peer fine-tune epochs (default: as --results)")
    parser.add_argument("--rounds", type=int, nargs=2, default=(600, 40), help="b1, b64 calls")
    parser.add_argument("--out", default=str(RESULTS / "optimize_vgg_peer.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = ts.tasks.get(args.task)
    base = task.baseline(progress=False)
    answer = json.loads(Path(args.results).read_text())
    if "best_artifact" not in answer and "best" in answer:  # fashion_optimize.py's record
        answer = answer_from_record(answer)
    onnx_file = args.answer or answer["best_artifact"]
    epochs = (
        args.epochs
        or answer["settings"].get("recovery_epochs")
        or max(1, task.train_config.epochs // 2)
    )
    folder = Path("out") / "bench-optimize" / f"peer-{task.name}"
    folder.mkdir(parents=True, exist_ok=True)
    ratios = [tp_ratio_for_macs(base, task, answer["macs_ratio"])]
    ratios += [float(v) for v in args.peer_ratios.split(",") if v]
    peers = [peer(task, base, ratio, epochs, folder) for ratio in ratios]
    for row in peers:
        print("peer:", row, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = OrtModule(export_onnx(base, task.inputs(2), Path(tmp) / "fp32.onnx"))
        ours = OrtModule(onnx_file)
        default_path = folder / "ort-default-int8.onnx"
        default_int8 = ort_default_static(base, task, default_path)
        default_row = {
            "model": "ONNX Runtime default int8 alone (quantize_static, unpruned)",
            "macs_ratio": 1.0,
            "test_metric": task.evaluate(default_int8, "test"),
            "val_metric": task.evaluate(default_int8, "val"),
            "bytes": default_path.stat().st_size,
            "onnx": str(default_path),
        }
        models = [fp32, ours, *(OrtModule(row["onnx"]) for row in peers), default_int8]
        timing = head_to_head(models, task, {1: args.rounds[0], 64: args.rounds[1]})
        base_row = {
            "model": "baseline fp32 (ONNX Runtime)",
            "test_metric": task.evaluate(fp32, "test"),
            "val_metric": task.evaluate(fp32, "val"),
            "bytes": Path(tmp, "fp32.onnx").stat().st_size,
        }
        ours_row = {
            "model": "torchslim optimize --objective latency --runtime onnxruntime",
            "recipe": answer.get("recipe"),
            "macs_ratio": answer["macs_ratio"],
            "test_metric": task.evaluate(ours, "test"),
            "val_metric": task.evaluate(ours, "val"),
            "bytes": Path(onnx_file).stat().st_size,
            "onnx": str(onnx_file),
        }
    rows = [base_row, ours_row, *peers, default_row]
    for row, times in zip(rows, timing, strict=True):
        for size in (1, 64):
            row[f"batch_{size}_ms"] = times[f"batch_{size}_ms"]
            ratio = times[f"batch_{size}_ratio_vs_ort_default"]  # vs models[0] = fp32
            row[f"batch_{size}_speedup_vs_ort_fp32"] = round(1 / ratio, 3)
    summary = {
        "task": task.name,
        "cpu": cpu_name(),
        "threads": 1,
        "epochs": epochs,
        "rounds": list(args.rounds),
        "rows": rows,
    }
    write_text_atomic(Path(args.out), json.dumps(summary, indent=2))
    for row in rows:
        print(
            f"{row['model']}: test {row['test_metric']:.4f} "
            f"b1 x{row['batch_1_speedup_vs_ort_fp32']} b64 x{row['batch_64_speedup_vs_ort_fp32']}"
        )


if __name__ == "__main__":
    main()
