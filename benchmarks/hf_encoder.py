"""Transformer-encoder benchmark: a sentence-transformers model, fp32 vs int8 variants.

For a local sentence-embedding folder (e.g. all-MiniLM-L6-v2, 6 layers, 384 wide):

* fp32 -- the model as given (PyTorch eager and ONNX Runtime fp32);
* peer -- ONNX Runtime's default ``quantize_dynamic(per_channel=True)`` of the fp32 ONNX file;
* int8 -- torchslim ``linear_int8`` (per-channel int8 Linear weights), deployed as ONNX Runtime
  dynamic int8 MatMuls (embedding tables fp32);
* int8 + emb8 / int8 + emb4 -- plus ``embedding_quant`` of the word-embedding table (packed);
* int8 smooth -- ``linear_int8`` with ``smooth`` (SmoothQuant, ``--smooth`` alpha, calibrated on
  the task's train split), alone and with 8-bit / 4-bit group-32 embedding tables;
* with ``torchslim.hf.structure`` importable: int8 + emb4 + FFN pruning (``ffn_pruning``,
  Taylor importance) recovered by embedding distillation (``--ffn-ratio``, ``--recovery-epochs``);
* optimized -- ``torchslim.optimize`` with its transformer defaults (``linear_int8`` per Linear
  layer, ``embedding_quant`` bits), size objective, ``--max-drop`` points of mean cosine, no
  training (``--no-optimize`` skips it); its recipe is re-run here and deployed like the rest.

Reported per variant: artifact bytes (the deployed ``.onnx`` file; our safetensors artifact
too), cosine fidelity to fp32 over the built-in texts (mean, min, nearest-neighbour
agreement) measured on the deployed ONNX Runtime model, and batch-1 / batch-32 latency at
128 tokens on ONNX Runtime (every variant against ONNX Runtime fp32, interleaved, 1 thread).
PyTorch eager fp32 is timed too (as the reference for "x faster than PyTorch").

    .venv/bin/python benchmarks/hf_encoder.py --model-dir /path/to/all-MiniLM-L6-v2

Writes benchmarks/results/transformers.json (``--json PATH``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCHSLIM_PROGRESS", "0")

from torchslim import tasks  # noqa: E402
from torchslim.batches import (
    calibration_batches,  # noqa: E402
    threads_fixed,  # noqa: E402
)
from torchslim.hf.export import (  # noqa: E402
    OrtEncoder,
    export_onnx,
    export_ort_int8,
    export_ort_nbits,
    ort_default_int8,
)
from torchslim.hf.loading import save_artifact  # noqa: E402
from torchslim.hf.metrics import embed, fidelity_stats  # noqa: E402
from torchslim.measure import benchmark_latency  # noqa: E402
from torchslim.techniques import apply  # noqa: E402
from torchslim.techniques.embedding_quant import EmbeddingQuant  # noqa: E402
from torchslim.techniques.int8_linear import LinearInt8, smooth_linears  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "transformers.json"


def _ffn_pruned(model: torch.nn.Module, task: Any, ratio: float, epochs: int) -> Any:
    try:
        from torchslim.hf.structure import FFNPruning
    except Exception as exc:  # noqa: BLE001 - optional, written in parallel
        print(f"skipping FFN pruning: torchslim.hf.structure not importable ({exc})")
        return None
    pruned = apply(model, FFNPruning(ratio=ratio, importance="taylor", multiple=16), task)
    before = task.evaluate(pruned)
    start = time.perf_counter()
    if epochs:
        task.fit(pruned, epochs=epochs, progress=False)
    print(
        f"ffn pruning {ratio}: fidelity {before:.4f} -> {task.evaluate(pruned):.4f} after "
        f"{epochs} distillation epochs ({time.perf_counter() - start:.0f}s)"
    )
    return pruned


def _optimized(task: Any, fp32: torch.nn.Module, max_drop: float) -> Any:
    """The optimizer's answer at ``max_drop`` points (size objective, its default knobs for a
    transformer, no training), re-built from its recipe; None when it finds nothing."""
    from torchslim.pipeline import apply_recipe
    from torchslim.search.optimize import optimize

    with tempfile.TemporaryDirectory(prefix="torchslim-bench-opt-") as out:
        result = optimize(
            task,
            max_drop=max_drop,
            objective="size",
            trials=12,
            recovery_epochs=0,
            sensitivity_epochs=0,
            out=Path(out),
            progress=False,
            latency=False,
        )
    if result.recipe is None:
        return None
    model = apply_recipe(result.recipe, task, fp32, "test").model
    summary = {
        "met": result.met,
        "seconds": round(result.seconds, 1),
        "candidates": len(result.records),
        "steps": [step.name for step in result.recipe.steps],
        "recipe": result.recipe.to_dict(),
    }
    print(f"optimizer: {summary['steps']} in {summary['seconds']} s, met={result.met}")
    return model.eval(), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--texts", help="texts file (default: the built-in set)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--ffn-ratio", type=float, default=0.5)
    parser.add_argument("--recovery-epochs", type=int, default=2)
    parser.add_argument("--no-ffn", action="store_true", help="skip the FFN-pruning variant")
    parser.add_argument("--target-seconds", type=float, default=1.0)
    parser.add_argument("--emb-group", type=int, default=32, help="4-bit embedding group size")
    parser.add_argument("--torchao", action="store_true", help="also time torchao int8 (inductor)")
    parser.add_argument("--smooth", type=float, default=0.7, help="SmoothQuant alpha (int8 rows)")
    parser.add_argument(
        "--smooth-4bit", type=float, default=0.5, help="SmoothQuant alpha before 4-bit weights"
    )
    parser.add_argument("--max-drop", type=float, default=1.0, help="optimizer budget, points")
    parser.add_argument("--no-optimize", action="store_true", help="skip the optimizer row")
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args()
    sizes = [int(v) for v in args.batch_sizes.split(",")]
    torch.set_num_threads(1)
    started = time.perf_counter()
    task = tasks.get(
        "text-embedding",
        model_dir=args.model_dir,
        texts=args.texts,
        seq_len=args.seq_len,
        batch_sizes=sizes,
    )
    fp32 = task.build_model().eval()
    int8 = apply(fp32, LinearInt8(), task)
    variants_emb4g = apply(int8, EmbeddingQuant(bits=4, group_size=args.emb_group), task)
    smooth = apply(fp32, LinearInt8(smooth=args.smooth), task)
    smooth_name = f"int8 smooth{args.smooth}"
    variants: dict[str, torch.nn.Module] = {
        "int8": int8,
        "int8 + emb8": apply(int8, EmbeddingQuant(bits=8), task),
        "int8 + emb4": apply(int8, EmbeddingQuant(bits=4), task),
        f"int8 + emb4g{args.emb_group}": variants_emb4g,
        smooth_name: smooth,
        f"{smooth_name} + emb8": apply(smooth, EmbeddingQuant(bits=8), task),
        f"{smooth_name} + emb4g{args.emb_group}": apply(
            smooth, EmbeddingQuant(bits=4, group_size=args.emb_group), task
        ),
    }
    if not args.no_ffn:
        with threads_fixed(1):
            pruned = _ffn_pruned(fp32, task, args.ffn_ratio, args.recovery_epochs)
        if pruned is not None:
            pruned_int8 = apply(pruned, LinearInt8(), task)
            variants[f"int8 + emb4 + ffn{int(args.ffn_ratio * 100)}%"] = apply(
                pruned_int8, EmbeddingQuant(bits=4), task
            )
    optimized: dict[str, Any] = {}
    optimized_name = f"optimized ({args.max_drop:g}-point budget)"
    if not args.no_optimize:
        found = _optimized(task, fp32, args.max_drop)
        if found is not None:
            variants[optimized_name], optimized = found
    # block-wise weight quantization (ONNX Runtime MatMulNBits, int8 activation blocks):
    # the torch model keeps float Linear layers; the embedding table is quantized here
    block_variants: dict[str, tuple[torch.nn.Module, dict[str, Any]]] = {
        "nbits8-b128 + emb8": (
            apply(fp32, EmbeddingQuant(bits=8), task),
            {"bits": 8, "block_size": 128},
        ),
        f"nbits8-b32 + emb4g{args.emb_group}": (
            apply(fp32, EmbeddingQuant(bits=4, group_size=args.emb_group), task),
            {"bits": 8, "block_size": 32},
        ),
        "nbits4-b32 + emb4 (all tables)": (
            apply(fp32, EmbeddingQuant(bits=4, tables="all"), task),
            {"bits": 4, "block_size": 32, "symmetric": False},
        ),
        f"smooth{args.smooth_4bit} + nbits4-b32 + emb4 (all tables)": (
            apply(
                smooth_linears(
                    fp32, calibration_batches(task, 8, "smoothing"), alpha=args.smooth_4bit
                ),
                EmbeddingQuant(bits=4, tables="all"),
                task,
            ),
            {"bits": 4, "block_size": 32, "symmetric": False},
        ),
    }
    loader = task.loader("test")
    reference = embed(fp32, loader)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="torchslim-bench-hf-") as tmp:
        tmp_path = Path(tmp)
        example = task.inputs(2)
        fp32_onnx = export_onnx(fp32, example, tmp_path / "fp32.onnx")
        onnx_files = {"fp32": fp32_onnx}
        onnx_files["peer: ORT default dynamic int8"] = ort_default_int8(
            fp32_onnx, tmp_path / "peer.onnx"
        )
        artifacts = {"fp32": save_artifact(fp32, tmp_path / "fp32.safetensors")}
        for index, (name, model) in enumerate(variants.items()):
            onnx_files[name] = export_ort_int8(model, example, tmp_path / f"v{index}.onnx")
            artifacts[name] = save_artifact(model, tmp_path / f"v{index}.safetensors")
        for index, (name, (model, options)) in enumerate(block_variants.items()):
            onnx_files[name] = export_ort_nbits(
                model, example, tmp_path / f"n{index}.onnx", **options
            )
        sessions = {name: OrtEncoder(path) for name, path in onnx_files.items()}
        for name, session in sessions.items():
            stats = fidelity_stats(embed(session, loader), reference)
            row = {
                "variant": name,
                "onnx_bytes": os.path.getsize(onnx_files[name]),
                "artifact_bytes": artifacts.get(name),
                **{k: round(v, 5) for k, v in stats.items()},
            }
            if name in variants:
                torch_stats = fidelity_stats(embed(variants[name], loader), reference)
                row["torch_mean_cosine"] = round(torch_stats["mean_cosine"], 5)
            rows.append(row)
            print(row)
        latency: dict[str, Any] = {}
        for batch in sizes:
            inputs = task.inputs(batch)
            names = list(sessions)
            stats = benchmark_latency(
                [sessions[n] for n in names],
                inputs,
                runtime="onnxruntime-hf",
                threads=1,
                target_seconds=args.target_seconds,
            )
            torch_stats = benchmark_latency(
                [fp32], inputs, runtime="torch", threads=1, target_seconds=args.target_seconds
            )
            latency[f"b{batch}"] = {
                "torch_fp32_ms": round(torch_stats[0].median_ms, 3),
                **{n: round(s.median_ms, 3) for n, s in zip(names, stats, strict=True)},
            }
            print(f"batch {batch}: {latency[f'b{batch}']}")
    torchao: dict[str, Any] = {}
    if args.torchao:
        from torchslim.hf.export import torchao_model

        sources = {"torchao int8": int8, f"torchao int8 + emb4g{args.emb_group}": variants_emb4g}
        if optimized:
            sources[f"torchao {optimized_name}"] = variants[optimized_name]
        tao_models = {name: torchao_model(source) for name, source in sources.items()}
        with tempfile.TemporaryDirectory(prefix="torchslim-bench-hf-") as tmp:
            for index, (name, source) in enumerate(sources.items()):
                torchao[name] = {
                    "artifact_bytes": save_artifact(source, Path(tmp) / f"t{index}.safetensors"),
                    **{
                        k: round(v, 5)
                        for k, v in fidelity_stats(
                            embed(tao_models[name], loader), reference
                        ).items()
                    },
                }
        for batch in sizes:
            timed = benchmark_latency(
                [fp32, *tao_models.values()],
                task.inputs(batch),
                runtime="inductor",
                threads=1,
                target_seconds=args.target_seconds,
            )
            torchao[f"b{batch}_inductor_fp32_ms"] = round(timed[0].median_ms, 3)
            for name, stat in zip(tao_models, timed[1:], strict=True):
                torchao[name][f"b{batch}_ms"] = round(stat.median_ms, 3)
                torchao[name][f"b{batch}_x_faster_than_inductor_fp32"] = round(
                    timed[0].median_ms / stat.median_ms, 2
                )
                torchao[name][f"b{batch}_x_faster_than_ort_fp32"] = round(
                    latency[f"b{batch}"]["fp32"] / stat.median_ms, 2
                )
        print(f"torchao int8 (PyTorch, inductor) vs inductor fp32: {json.dumps(torchao)}")
    base = rows[0]
    for row in rows:
        row["x_smaller_onnx"] = round(base["onnx_bytes"] / row["onnx_bytes"], 2)
        for batch in sizes:
            times = latency[f"b{batch}"]
            row[f"b{batch}_ms"] = times[row["variant"]]
            row[f"b{batch}_x_faster_than_ort_fp32"] = round(
                times["fp32"] / times[row["variant"]], 2
            )
            row[f"b{batch}_x_faster_than_torch_fp32"] = round(
                times["torch_fp32_ms"] / times[row["variant"]], 2
            )
    result = {
        "command": ".venv/bin/python benchmarks/hf_encoder.py " + " ".join(sys.argv[1:]),
        "model_dir": args.model_dir,
        "texts": len(task.texts),
        "seq_len": args.seq_len,
        "threads": 1,
        "torch": torch.__version__,
        "rows": rows,
        "latency_ms": latency,
        "torchao": torchao,
        "optimizer": optimized,
        "seconds": round(time.perf_counter() - started, 1),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    header = (
        "| variant | ONNX bytes | x smaller | mean cos | min cos | NN agree | "
        + " | ".join(f"b{b} ms (x vs ORT fp32)" for b in sizes)
        + " |"
    )
    print(header)
    print("|" + "---|" * (6 + len(sizes)))
    for row in rows:
        cells = [
            row["variant"],
            f"{row['onnx_bytes']:,}",
            f"{row['x_smaller_onnx']:.2f}",
            f"{row['mean_cosine']:.4f}",
            f"{row['min_cosine']:.4f}",
            f"{row['nn_agreement']:.3f}",
            *[f"{row[f'b{b}_ms']:.1f} ({row[f'b{b}_x_faster_than_ort_fp32']:.2f}x)" for b in sizes],
        ]
        print("| " + " | ".join(cells) + " |")
    torch_times = ", ".join(f"b{b} {latency['b' + str(b)]['torch_fp32_ms']:.1f} ms" for b in sizes)
    print(f"PyTorch eager fp32: {torch_times}")
    print(f"wrote {args.json} in {result['seconds']} s")


if __name__ == "__main__":
    main()
