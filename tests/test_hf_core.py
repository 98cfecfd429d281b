"""Transformer encoders: loading, tasks, int8 / embedding quantization, artifacts, ONNX export.

A tiny random BERT (2 layers, hidden 64, 4 heads, tiny WordPiece vocabulary) is built in
a temporary folder in the sentence-transformers layout; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest
import torch

pytest.importorskip("transformers")

from hf_helpers import (  # noqa: E402
    make_tiny_bert,
    tiny_embedding_task,
    write_classification_data,
    write_texts,
)
from torchslim import tasks  # noqa: E402
from torchslim.errors import ConfigError, DataError, UnsupportedError  # noqa: E402
from torchslim.hf.export import OrtEncoder, export_onnx, export_ort_int8, parity  # noqa: E402
from torchslim.hf.loading import (  # noqa: E402
    SentenceEncoder,
    load_artifact,
    load_encoder,
    read_folder,
    save_artifact,
)
from torchslim.measure import count_macs, count_parameters, layer_table  # noqa: E402
from torchslim.techniques.base import apply, config_from_dict  # noqa: E402
from torchslim.techniques.embedding_quant import (  # noqa: E402
    EmbeddingQuant,
    QuantEmbedding,
    expected_table_bytes,
)
from torchslim.techniques.int8_linear import Int8Linear, LinearInt8  # noqa: E402

SEQ = 24
pytestmark = pytest.mark.usefixtures("hf_offline")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder, task = tiny_embedding_task(tmp_path_factory.mktemp("hf"), seq_len=SEQ)
    return folder, task, task.baseline(progress=False)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _initializer_bytes(path: Path) -> int:
    import onnx
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(path)).graph.initializer)


def test_folder_layout_is_read(tiny, tmp_path):
    folder, task, model = tiny
    info = read_folder(folder)
    assert (info.sentence_transformers, info.pooling, info.normalize) == (True, "mean", True)
    assert isinstance(model, SentenceEncoder) and model.backbone.pooler is None
    out = model(**task.inputs(3))
    assert out.shape == (3, 64)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    cls_folder = make_tiny_bert(tmp_path, name="cls", pooling="cls", normalize=False)
    cls = load_encoder(cls_folder)
    inputs = task.inputs(2)
    hidden = cls.backbone(**inputs).last_hidden_state
    assert torch.allclose(cls(**inputs), hidden[:, 0], atol=1e-6)  # same seed: same weights


def test_recovery_never_trains_on_the_texts_it_is_scored_on(tiny):
    folder, task, model = tiny
    held = {tuple(row.tolist()) for row in task.test.encoded["input_ids"]}
    trained = {tuple(row.tolist()) for row in task.train.encoded["input_ids"]}
    assert len(task.test) == 24 and len(task.train) == 24  # holdout 0.5 of 48 texts
    assert task.val is task.test
    assert not held & trained  # disjoint: distillation cannot inflate the fidelity
    with torch.no_grad():  # the train targets are the original's embeddings of the train texts
        first = task.train[0]
        target = model(**{k: v[None] for k, v in first.items() if k != "labels"})
    assert torch.allclose(first["labels"], target[0], atol=1e-5)
    with pytest.raises(ConfigError, match="holdout"):
        tasks.get("text-embedding", model_dir=str(folder), holdout=0.0)


def test_task_metric_and_dynamic_int8_fidelity(tiny):
    folder, task, model = tiny
    assert task.metric_name == "cosine_fidelity"
    assert task.evaluate(model) == pytest.approx(1.0, abs=1e-6)
    assert task.latency == {"seq_len": SEQ, "batch_sizes": [1, 32]}
    assert task.inputs(32)["input_ids"].shape == (32, SEQ)
    int8 = apply(model, LinearInt8(), task)
    assert sum(isinstance(m, Int8Linear) for m in int8.modules()) == 12
    details = task.metric.details(int8, task.loader())
    assert details["mean_cosine"] >= 0.98
    assert 0.9 <= details["min_cosine"] <= details["mean_cosine"] < 1.0
    assert 0.0 <= details["nn_agreement"] <= 1.0
    # the generic simulated DynamicQuant gives the same quality on this model
    simulated = apply(
        model, config_from_dict({"type": "dynamic_quant", "scope": {"types": ["Linear"]}}), task
    )
    assert task.evaluate(simulated) >= 0.98
    assert task.evaluate(model) == pytest.approx(1.0, abs=1e-6)  # the baseline is untouched


def test_onnx_export_parity_dynamic_axes_and_modes_unchanged(tiny, tmp_path):
    folder, task, model = tiny
    inputs = task.inputs(2)
    other = {k: v[:, : SEQ // 2] for k, v in task.inputs(5).items()}  # other batch and length
    attention = model.backbone.config._attn_implementation
    assert attention == "sdpa"  # transformers' default: the export must not change it
    for training in (False, True):
        model.train(training)
        modes = [m.training for m in model.modules()]
        model.eval()
        with torch.no_grad():
            before = model(**inputs)
        model.train(training)
        path = export_onnx(model, inputs, tmp_path / f"m{training}.onnx")
        assert [m.training for m in model.modules()] == modes
        onnx_model = OrtEncoder(path)
        assert parity(model, onnx_model, inputs) < 1e-4
        # exported with plain attention (no per-layer IsNaN masking); the model keeps its own
        assert "IsNaN" not in {n.op_type for n in onnx.load(str(path)).graph.node}
        assert model.backbone.config._attn_implementation == attention
        assert parity(model, onnx_model, other) < 1e-4
        assert [m.training for m in model.modules()] == modes
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(**inputs), before)
    model.eval()


def test_onnxruntime_hf_runtime_times_torch_and_onnx_encoders(tiny, tmp_path):
    from torchslim.measure import benchmark_latency

    folder, task, model = tiny
    onnx_model = OrtEncoder(export_onnx(model, task.inputs(2), tmp_path / "m.onnx"))
    stats = benchmark_latency(
        [model, onnx_model], task.inputs(1), runtime="onnxruntime-hf", repeats=3
    )
    assert len(stats) == 2 and all(s.median_ms > 0 and s.batch_size == 1 for s in stats)


def test_ort_int8_is_smaller_and_faithful(tiny, tmp_path):
    folder, task, model = tiny
    int8 = apply(model, LinearInt8(), task)
    fp32 = export_onnx(model, task.inputs(2), tmp_path / "fp32.onnx")
    quant = export_ort_int8(int8, task.inputs(2), tmp_path / "int8.onnx")
    onnx_model = OrtEncoder(quant)
    assert task.evaluate(onnx_model) >= 0.98
    linear_weights = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)
    )
    saved = os.path.getsize(fp32) - os.path.getsize(quant)
    assert saved >= 0.7 * 3 * linear_weights  # int8 instead of fp32 weights (plus scales)


def test_ort_blockwise_int8_is_faithful(tiny, tmp_path):
    from torchslim.hf.export import export_ort_nbits

    folder, task, model = tiny
    path = export_ort_nbits(model, task.inputs(2), tmp_path / "nbits.onnx", bits=8, block_size=32)
    details = task.metric.details(OrtEncoder(path), task.loader())
    assert details["mean_cosine"] >= 0.995 and details["min_cosine"] >= 0.98
    with pytest.raises(ConfigError, match="bits must be 4 or 8"):
        export_ort_nbits(model, task.inputs(2), tmp_path / "bad.onnx", bits=3)


@pytest.mark.parametrize("bits", [8, 4])
def test_embedding_quant_artifact_shrinks_by_expected_bytes(tiny, tmp_path, bits):
    folder, task, model = tiny
    quantized = apply(model, EmbeddingQuant(bits=bits), task)
    table = quantized.backbone.embeddings.word_embeddings
    assert isinstance(table, QuantEmbedding) and table.bits == bits
    base = save_artifact(model, tmp_path / "fp32.safetensors")
    small = save_artifact(quantized, tmp_path / f"e{bits}.safetensors")
    num, dim = model.backbone.embeddings.word_embeddings.weight.shape
    expected = num * dim * 4 - expected_table_bytes(num, dim, bits)
    assert abs((base - small) - expected) <= 400  # safetensors header / spec text only
    loaded, spec = load_artifact(tmp_path / f"e{bits}.safetensors")
    inputs = task.inputs(4)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs), quantized(**inputs))
    assert task.evaluate(quantized) >= (0.99 if bits == 8 else 0.97)
    # the packed table also stays packed in ONNX: its weights shrink by the same bytes
    fp32 = export_onnx(model, inputs, tmp_path / "a.onnx")
    packed = export_onnx(quantized, inputs, tmp_path / "b.onnx")
    assert _initializer_bytes(fp32) - _initializer_bytes(packed) == expected
    assert parity(quantized, OrtEncoder(packed), inputs) < 1e-4


def test_quantized_layers_keep_their_parameter_count(tiny):
    """Int8Linear and QuantEmbedding keep their weights as integer codes in buffers; the
    parameter count (and a params ratio) must still see those weights: quantizing saves bytes,
    not parameters."""
    folder, task, model = tiny
    num, dim = model.backbone.embeddings.word_embeddings.weight.shape
    total = count_parameters(model)
    quantized = apply(apply(model, LinearInt8(), task), EmbeddingQuant(bits=4), task)
    assert count_parameters(quantized) == total
    rows = {row.name: row for row in layer_table(quantized, count_macs(quantized, task.inputs(1)))}
    assert rows["backbone.embeddings.word_embeddings"].params == num * dim
    query = rows["backbone.encoder.layer.0.attention.self.query"]
    assert query.type == "Int8Linear"
    assert query.params == 64 * 64 + 64 and query.macs == SEQ * 64 * 64


def test_macs_by_hand_include_attention_products(tiny):
    """2 layers, hidden 64, FFN 128, SEQ tokens: the six Linears per layer plus the attention
    score (Q K^T) and context (P V) products, which the CPU SDPA kernel runs and torch's flop
    table does not list; one row per attention module, the Linears keep their own rows."""
    folder, task, model = tiny
    per_layer_linear = SEQ * (4 * 64 * 64 + 2 * 64 * 128)
    attention = 2 * SEQ * SEQ * 64  # 4 heads x 16 dims = 64 per product
    counted = count_macs(model, task.inputs(1))
    assert counted.macs == 2 * (per_layer_linear + attention)
    rows = {row.name: row for row in layer_table(model, counted)}
    scores = rows["backbone.encoder.layer.1.attention.self"]
    assert (scores.macs, scores.params) == (attention, 0)
    assert rows["backbone.encoder.layer.1.intermediate.dense"].macs == SEQ * 64 * 128
    assert "backbone.encoder" not in rows  # the ModuleList of layers is looked through
    assert sum(row.macs for row in rows.values()) == counted.macs
    assert sum(row.params for row in rows.values()) == count_parameters(model)


def test_artifact_keeps_pruned_and_dropped_structure(tiny, tmp_path):
    """Shrunk FFN / heads and a dropped layer survive save and load (the hf-struct interface)."""
    import copy

    from torch import nn

    folder, task, model = tiny
    pruned = copy.deepcopy(model)
    layers = pruned.backbone.encoder.layer
    del layers[1]  # layer drop: keep 1 of 2
    layer = layers[0]
    with torch.no_grad():
        inter, out = layer.intermediate.dense, layer.output.dense
        small_inter, small_out = nn.Linear(64, 40), nn.Linear(40, 64)
        small_inter.weight.copy_(inter.weight[:40])
        small_inter.bias.copy_(inter.bias[:40])
        small_out.weight.copy_(out.weight[:, :40])
        small_out.bias.copy_(out.bias)
        layer.intermediate.dense, layer.output.dense = small_inter, small_out
        attention = layer.attention.self
        for name in ("query", "key", "value"):  # keep 2 of 4 heads (16 dims each)
            old = getattr(attention, name)
            new = nn.Linear(64, 32)
            new.weight.copy_(old.weight[:32])
            new.bias.copy_(old.bias[:32])
            setattr(attention, name, new)
        dense = layer.attention.output.dense
        new = nn.Linear(32, 64)
        new.weight.copy_(dense.weight[:, :32])
        new.bias.copy_(dense.bias)
        layer.attention.output.dense = new
    pruned = apply(pruned, LinearInt8(), task)
    inputs = task.inputs(3)
    with torch.no_grad():
        expected = pruned(**inputs)
    save_artifact(pruned, tmp_path / "pruned.safetensors", task.spec())
    loaded, spec = load_artifact(tmp_path / "pruned.safetensors")
    assert len(loaded.backbone.encoder.layer) == 1
    assert loaded.backbone.encoder.layer[0].attention.self.num_attention_heads == 2
    assert spec["task"].startswith("text-embedding{")
    with torch.no_grad():
        assert torch.equal(loaded(**inputs), expected)


def test_classification_task_accuracy_and_recovery(tmp_path):
    folder = make_tiny_bert(tmp_path, name="clf", num_labels=2, init_std=0.05)
    data = write_classification_data(tmp_path / "data.jsonl", count=120)
    task = tasks.get("text-classification", model_dir=str(folder), data=str(data), seq_len=16)
    model = task.baseline(progress=False)
    assert task.metric_name == "accuracy"
    before = task.evaluate(model)
    task.fit(model, epochs=8, lr=3e-3, progress=False)
    after = task.evaluate(model)
    assert before < 0.75 and after >= 0.9  # 24 held-out rows: the rule is learnt
    assert task.inputs(1)["input_ids"].shape == (1, 16)
    inputs = task.inputs(3)
    path = export_onnx(model, inputs, tmp_path / "clf.onnx")
    assert parity(model, OrtEncoder(path), inputs) < 1e-4
    int8 = OrtEncoder(
        export_ort_int8(apply(model, LinearInt8(), task), inputs, tmp_path / "q.onnx")
    )
    assert task.evaluate(int8) >= after - 0.05
    save_artifact(model, tmp_path / "clf.safetensors", task.spec())
    loaded, _ = load_artifact(tmp_path / "clf.safetensors")
    assert task.evaluate(loaded) == after


# ------------------------------------------------------------------ bad input


def test_bad_model_folders_name_the_file_and_change_nothing(tmp_path):
    folder = make_tiny_bert(tmp_path, name="broken")
    for name, fragment in (
        ("model.safetensors", "model.safetensors"),
        ("config.json", "config.json"),
        ("1_Pooling/config.json", "1_Pooling"),
    ):
        target = folder / name
        moved = target.with_name(target.name + ".away")
        target.rename(moved)
        try:
            snapshot = _snapshot(folder)
            with pytest.raises(DataError, match=fragment.replace(".", r"\.")):
                load_encoder(folder)
            assert _snapshot(folder) == snapshot
        finally:
            moved.rename(target)
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).rename(folder / f"{name}.away")
    with pytest.raises(DataError, match="tokenizer"):
        read_folder(folder)
    config = json.loads((folder / "config.json").read_text())
    other = make_tiny_bert(tmp_path, name="gpt")
    (other / "config.json").write_text(
        json.dumps({**config, "model_type": "gpt2", "architectures": ["GPT2Model"]})
    )
    with pytest.raises(UnsupportedError, match="GPT2Model"):
        load_encoder(other)
    with pytest.raises(DataError, match="does not exist"):
        load_encoder(tmp_path / "nowhere")


def test_bad_texts_labels_and_seq_len(tiny, tmp_path):
    folder, _, _ = tiny
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        tasks.get("text-embedding", model_dir=str(folder), texts=str(empty))
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait\nthe good cat\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        tasks.get("text-embedding", model_dir=str(folder), texts=str(latin))
    texts = write_texts(tmp_path / "ok.txt", count=8)
    with pytest.raises(ConfigError, match="above the maximum of 64 tokens"):
        tasks.get("text-embedding", model_dir=str(folder), texts=str(texts), seq_len=128)
    clf = make_tiny_bert(tmp_path, name="clf2", num_labels=2)
    data = tmp_path / "nolabel.csv"
    data.write_text("text,label\nthe good cat,1\nthe sad dog,\n", encoding="utf-8")
    before = data.read_bytes()
    with pytest.raises(DataError, match="row 3 has no label"):
        tasks.get("text-classification", model_dir=str(clf), data=str(data))
    assert data.read_bytes() == before
    jsonl = tmp_path / "nolabel.jsonl"
    jsonl.write_text('{"text": "the good cat"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="no label"):
        tasks.get("text-classification", model_dir=str(clf), data=str(jsonl))


def test_builtin_texts_and_cli(tiny, tmp_path, capsys):
    from torchslim.cli import main
    from torchslim.hf.texts import builtin_texts

    texts = builtin_texts()
    assert len(texts) >= 300 and len(set(texts)) == len(texts)
    folder, _, _ = tiny
    small = write_texts(tmp_path / "cli.txt", count=12)
    code = main(
        ["measure", "text-embedding", "--model-dir", str(folder), "--texts", str(small),
         "--seq-len", "16", "--no-latency", "--json"]
    )  # fmt: skip
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["metric_name"] == "cosine_fidelity"
    assert payload["footprint"]["metric"] == pytest.approx(1.0, abs=1e-6)
    assert main(["measure", "text-embedding", "--no-latency"]) == 1
    assert "--model-dir" in capsys.readouterr().err
    # a compressed artifact is measured from the file alone: the task options in its spec
    # (paths to read) are followed only when trusted; --model-dir instead works as well
    _, task, model = tiny
    small_model = apply(apply(model, LinearInt8(), task), EmbeddingQuant(bits=4), task)
    artifact = tmp_path / "small.safetensors"
    size = save_artifact(small_model, artifact, task.spec())
    assert main(["measure", str(artifact), "--no-latency", "--json"]) == 1
    assert "--trust-task" in capsys.readouterr().err
    assert main(["measure", str(artifact), "--no-latency", "--json", "--trust-task"]) == 0
    footprint = json.loads(capsys.readouterr().out)["footprint"]
    assert footprint["artifact_bytes"] == size
    assert footprint["metric"] == pytest.approx(task.evaluate(small_model), abs=1e-6)
    assert footprint["metric"] >= 0.97
    args = ["--model-dir", str(folder), "--texts", str(small), "--seq-len", "16"]
    assert main(["measure", str(artifact), "--no-latency", "--json", *args]) == 0  # the user's
    assert json.loads(capsys.readouterr().out)["footprint"]["artifact_bytes"] == size
