"""Structured compression of a sentence encoder: FFN / head pruning, layer drop, distillation.

On a local sentence-transformers folder (e.g. a 6-layer, 384-wide MiniLM):

* variants: FFN-neuron pruning and attention-head pruning (Taylor or magnitude importance)
  at several ratios, with and without embedding-distillation recovery
  (``embedding_distill``: cosine + relative MSE on the embeddings + hidden states), and a
  layer-dropped student (keep 3 of 6 layers, distilled);
* fidelity to the original model over held-out texts: mean and minimum cosine,
  nearest-neighbour agreement (the built-in texts are split in two: the even lines train
  the distillation — with word-span, word-drop and concatenation augmentations — and the
  odd lines, never trained on, measure fidelity);
* parameters, fp32 artifact bytes (``save_artifact``), batch-1 latency at 128 tokens on
  PyTorch eager and ONNX Runtime (fp32, and ORT's default dynamic int8 per-channel), each
  against its own fp32 baseline, interleaved, 1 thread.

    .venv/bin/python benchmarks/hf_structure.py --model-dir DIR

Writes benchmarks/results/transformers_struct.json (``--json PATH``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import torchslim.hf.layerdrop  # noqa: E402, F401 - registers layer_drop
from torchslim.hf.distill import EmbeddingDistill  # noqa: E402
from torchslim.hf.loading import load_encoder, load_tokenizer, save_artifact  # noqa: E402
from torchslim.hf.metrics import EmbeddingFidelity, embed, fidelity_stats  # noqa: E402
from torchslim.hf.structure import encoder_layers  # noqa: E402 - registers head/ffn_pruning
from torchslim.hf.tasks import TokenizedTexts, latency_inputs, tokenize  # noqa: E402
from torchslim.hf.texts import builtin_texts  # noqa: E402
from torchslim.measure import benchmark_latency  # noqa: E402
from torchslim.task import Task, TrainConfig  # noqa: E402
from torchslim.techniques.base import ApplyContext, apply, config_from_dict  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "transformers_struct.json"

VARIANTS: dict[str, list[dict[str, Any]]] = {
    # name: list of steps; a step is a technique config dict, or {"distill": True}
    "ffn25": [{"type": "ffn_pruning", "ratio": 0.25, "importance": "taylor", "multiple": 16}],
    "ffn50": [{"type": "ffn_pruning", "ratio": 0.5, "importance": "taylor", "multiple": 16}],
    "ffn50-mag": [{"type": "ffn_pruning", "ratio": 0.5, "importance": "magnitude", "multiple": 16}],
    "ffn75": [{"type": "ffn_pruning", "ratio": 0.75, "importance": "taylor", "multiple": 16}],
    "ffn25-act": [
        {"type": "ffn_pruning", "ratio": 0.25, "importance": "activation", "multiple": 16}
    ],
    "ffn50-act": [
        {"type": "ffn_pruning", "ratio": 0.5, "importance": "activation", "multiple": 16}
    ],
    "heads25": [{"type": "head_pruning", "ratio": 0.25, "importance": "activation"}],
    "heads50": [{"type": "head_pruning", "ratio": 0.5, "importance": "activation"}],
    "heads50-taylor": [{"type": "head_pruning", "ratio": 0.5, "importance": "taylor"}],
    "heads50-mag": [{"type": "head_pruning", "ratio": 0.5, "importance": "magnitude"}],
    "ffn10": [{"type": "ffn_pruning", "ratio": 0.1, "importance": "taylor", "multiple": 16}],
    "heads1": [{"type": "head_pruning", "ratio": 1 / 12, "importance": "activation"}],
    "ffn10+kd": [{"ref": "ffn10"}, {"distill": True}],
    "heads1+kd": [{"ref": "heads1"}, {"distill": True}],
    "ffn25+kd": [{"ref": "ffn25"}, {"distill": True}],
    "ffn50+kd": [{"ref": "ffn50"}, {"distill": True}],
    "ffn75+kd": [{"ref": "ffn75"}, {"distill": True}],
    "heads50+kd": [{"ref": "heads50"}, {"distill": True}],
    "ffn50+heads25+kd": [
        {"ref": "ffn50"},
        {"type": "head_pruning", "ratio": 0.25, "importance": "activation"},
        {"distill": True},
    ],
    "drop3": [{"type": "layer_drop", "keep": 3}],
    "drop3+kd": [{"ref": "drop3"}, {"distill": True}],
}
DEFAULT = [
    "ffn25", "ffn50", "ffn50-mag", "ffn75", "heads25", "heads50", "heads50-taylor",
    "ffn25+kd", "ffn50+kd", "ffn50+heads25+kd", "drop3+kd",
]  # fmt: skip


def augment(texts: list[str], seed: int = 0, copies: int = 3) -> list[str]:
    """The texts plus word spans, word-dropped versions and concatenations of two texts."""
    rng = random.Random(seed)
    out = list(texts)
    for _ in range(copies):
        for text in texts:
            words = text.split()
            kind = rng.random()
            if kind < 0.34 and len(words) > 4:
                size = rng.randint(max(3, len(words) // 2), len(words) - 1)
                start = rng.randint(0, len(words) - size)
                out.append(" ".join(words[start : start + size]))
            elif kind < 0.67 and len(words) > 4:
                out.append(" ".join(w for w in words if rng.random() > 0.2) or text)
            else:
                out.append(text + " " + rng.choice(texts))
    return out


def pad_collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad a list of variable-length tokenized samples to the longest (dynamic padding)."""
    longest = max(int(item["attention_mask"].sum()) for item in items)
    return {key: torch.stack([item[key][:longest] for item in items]) for key in items[0]}


def make_task(encoder, tokenizer, train_texts, eval_texts, args) -> Task:
    train = TokenizedTexts(tokenize(tokenizer, train_texts, 128, pad_to_length=True))
    loader = DataLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        collate_fn=pad_collate,
    )
    test = TokenizedTexts(tokenize(tokenizer, eval_texts, 128))
    return Task(
        name="minilm-struct",
        model=encoder,
        train=loader,
        test=test,
        metric=EmbeddingFidelity(encoder),
        train_config=TrainConfig(
            optimizer="adamw", lr=args.lr, epochs=0, batch_size=args.batch_size, threads=1, seed=0
        ),
    )


_REFERENCE: dict[str, torch.Tensor] = {}


def fidelity(model, teacher, datasets: dict[str, TokenizedTexts]) -> dict[str, Any]:
    out = {}
    for name, data in datasets.items():
        loader = DataLoader(data, batch_size=64)
        if name not in _REFERENCE:
            _REFERENCE[name] = embed(teacher, loader)
        out[name] = fidelity_stats(embed(model, loader), _REFERENCE[name])
    return out


def export_ort(model, inputs: tuple, folder: Path, name: str) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = folder / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            copy.deepcopy(model).eval(),
            inputs,
            str(fp32),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "embedding": {0: "batch"},
            },
            opset_version=17,
            do_constant_folding=True,
        )
    int8 = folder / f"{name}.int8.onnx"
    quantize_dynamic(str(fp32), str(int8), per_channel=True, weight_type=QuantType.QInt8)
    return {"fp32": fp32, "int8": int8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--variants", nargs="*", default=DEFAULT, choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=4, help="distillation epochs")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden-weight", type=float, default=1.0)
    parser.add_argument("--copies", type=int, default=3, help="augmented copies of train texts")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--latency-seconds", type=float, default=2.0)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("TORCHSLIM_PROGRESS", "0")
    torch.set_num_threads(1)

    teacher = load_encoder(args.model_dir)
    tokenizer = load_tokenizer(args.model_dir)
    texts = builtin_texts()
    train_texts = augment(texts[0::2], copies=args.copies)
    eval_texts = texts[1::2]
    task = make_task(teacher, tokenizer, train_texts, eval_texts, args)
    datasets = {
        "held_out": TokenizedTexts(tokenize(tokenizer, eval_texts, 128)),
        "all_builtin": TokenizedTexts(tokenize(tokenizer, texts, 128)),
    }
    distill = EmbeddingDistill(
        epochs=args.epochs, lr=args.lr, hidden_weight=args.hidden_weight, cosine_weight=1.0,
        mse_weight=1.0,
    )  # fmt: skip
    params0 = sum(p.numel() for p in teacher.parameters())
    built: dict[str, torch.nn.Module] = {}
    rows: list[dict[str, Any]] = []
    wanted = list(dict.fromkeys(args.variants))
    for name in wanted:
        for step in VARIANTS[name]:
            if "ref" in step and step["ref"] not in wanted:
                wanted.insert(wanted.index(name), step["ref"])
    for name in wanted:
        start = time.perf_counter()
        model, notes = teacher, {}
        for step in VARIANTS[name]:
            if "ref" in step:
                model = built[step["ref"]]
            elif step.get("distill"):
                context = ApplyContext(task=task, teacher=teacher)
                model = apply(model, distill, context=context)
                notes["distill"] = context.notes["distill"]
            else:
                context = ApplyContext(task=task)
                model = apply(model, config_from_dict(step), context=context)
                notes.update(context.notes)
        built[name] = model
        row = {
            "variant": name,
            "steps": VARIANTS[name],
            "params": sum(p.numel() for p in model.parameters()),
            "params_ratio": params0 / sum(p.numel() for p in model.parameters()),
            "encoder_params": sum(
                p.numel() for e in encoder_layers(model) for p in e.layer.parameters()
            ),
            "shape": [(e.num_heads, e.intermediate) for e in encoder_layers(model)],
            "fidelity": fidelity(model, teacher, datasets),
            "seconds": round(time.perf_counter() - start, 1),
            "notes": notes,
        }
        rows.append(row)
        partial = args.json.with_suffix(".partial.json")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(rows, indent=2, default=str) + "\n", encoding="utf-8")
        f = row["fidelity"]["held_out"]
        print(
            f"{name:18s} params x{row['params_ratio']:.2f}  mean {f['mean_cosine']:.4f} "
            f"min {f['min_cosine']:.4f} nn {f['nn_agreement']:.3f}  ({row['seconds']} s)",
            flush=True,
        )
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            path = Path(tmp) / f"{row['variant']}.safetensors"
            row["artifact_bytes"] = save_artifact(built[row["variant"]], path)
        base_bytes = save_artifact(teacher, Path(tmp) / "fp32.safetensors")
        if not args.no_latency:
            measure_latency(teacher, rows, built, tokenizer, texts, Path(tmp), args)
    result = {
        "model_dir": str(args.model_dir),
        "params": params0,
        "artifact_bytes": base_bytes,
        "train_texts": len(train_texts),
        "eval_texts": len(eval_texts),
        "distill": distill.to_dict(),
        "batch_size": args.batch_size,
        "threads": 1,
        "seq_len": 128,
        "machine_note": "2-core machine shared with other jobs; ratios are interleaved medians",
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    args.json.with_suffix(".partial.json").unlink(missing_ok=True)
    print(table(result))


def measure_latency(teacher, rows, built, tokenizer, texts, folder: Path, args) -> None:
    from torchslim.export.onnx import OrtModule

    inputs = latency_inputs(tokenizer, [" ".join(texts[:12])], 128, 1)
    args_tuple = (inputs["input_ids"], inputs["attention_mask"])
    names = ["fp32"] + [row["variant"] for row in rows]
    models = {"fp32": teacher, **built}
    eager = benchmark_latency(
        [models[n] for n in names], args_tuple, "torch", threads=1,
        target_seconds=args.latency_seconds,
    )  # fmt: skip
    onnx = {n: export_ort(models[n], args_tuple, folder, n.replace("+", "_")) for n in names}
    ort_models = [OrtModule(onnx[n][kind], threads=1) for n in names for kind in ("fp32", "int8")]
    ort = benchmark_latency(ort_models, args_tuple, "torch", threads=1,
                            target_seconds=args.latency_seconds)  # fmt: skip
    base_eager, base_ort, base_int8 = eager[0].median_ms, ort[0].median_ms, ort[1].median_ms
    fp32_bytes = onnx["fp32"]["fp32"].stat().st_size
    for index, row in enumerate(rows, start=1):
        row["torch_b1_ms"] = eager[index].median_ms
        row["torch_speedup"] = base_eager / eager[index].median_ms
        row["ort_fp32_b1_ms"] = ort[2 * index].median_ms
        row["ort_fp32_speedup"] = base_ort / ort[2 * index].median_ms
        row["ort_int8_b1_ms"] = ort[2 * index + 1].median_ms
        row["ort_int8_speedup_vs_ort_fp32"] = base_ort / ort[2 * index + 1].median_ms
        row["onnx_int8_bytes"] = onnx[row["variant"]]["int8"].stat().st_size
        row["onnx_int8_smaller_vs_fp32"] = fp32_bytes / row["onnx_int8_bytes"]
    rows.insert(
        0,
        {
            "variant": "fp32",
            "params": sum(p.numel() for p in teacher.parameters()),
            "params_ratio": 1.0,
            "torch_b1_ms": base_eager,
            "ort_fp32_b1_ms": base_ort,
            "ort_int8_b1_ms": base_int8,
            "ort_int8_speedup_vs_ort_fp32": base_ort / base_int8,
            "onnx_fp32_bytes": fp32_bytes,
            "onnx_int8_bytes": onnx["fp32"]["int8"].stat().st_size,
            "onnx_int8_smaller_vs_fp32": fp32_bytes / onnx["fp32"]["int8"].stat().st_size,
        },
    )


def table(result: dict[str, Any]) -> str:
    lines = [
        "| variant | params | mean cos | min cos | NN agree | torch b1 | ORT fp32 b1 | "
        "ORT int8 b1 (vs ORT fp32) | int8 .onnx smaller |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        f = row.get("fidelity", {}).get("held_out")
        fid = (
            f"{f['mean_cosine']:.4f} | {f['min_cosine']:.4f} | {f['nn_agreement']:.3f}"
            if f
            else "1 | 1 | 1"
        )
        lat = (
            f"{row['torch_b1_ms']:.1f} ms ({row.get('torch_speedup', 1):.2f}x) | "
            f"{row['ort_fp32_b1_ms']:.1f} ms ({row.get('ort_fp32_speedup', 1):.2f}x) | "
            f"{row['ort_int8_b1_ms']:.1f} ms ({row['ort_int8_speedup_vs_ort_fp32']:.2f}x) | "
            f"{row['onnx_int8_smaller_vs_fp32']:.2f}x"
            if "torch_b1_ms" in row
            else "- | - | - | -"
        )
        lines.append(
            f"| {row['variant']} | {row['params'] / 1e6:.2f}M (/{row['params_ratio']:.2f}) | "
            f"{fid} | {lat} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
