"""The sparse artifact: exact encodings, byte counts, round trips, and real file sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.checkpoint import load_checkpoint, read_spec
from torchslim.export.sparse import (
    decode_tensor,
    encode_tensor,
    encoded_sizes,
    save_sparse,
    sparse_io,
)
from torchslim.techniques import apply
from torchslim.techniques.pruning import MagnitudePruning, make_permanent


def test_encodings_are_chosen_by_size_and_round_trip():
    dense = torch.arange(1, 101, dtype=torch.float32)
    assert encode_tensor("w", dense)[1] == "dense"
    half = dense.clone()
    half[::2] = 0  # 50% density: bitmask = 13 + 50*4 bytes beats 400 dense and 50*5 relidx
    assert encoded_sizes(half) == {"dense": 400, "bitmask": 213, "relidx": 250}
    rare = torch.zeros(1000)
    rare[[3, 500, 999]] = torch.tensor([1.0, -2.0, 3.0])
    # gaps 4, 497, 499: the two long gaps need one filler each -> 5 entries of 1 + 4 bytes
    assert encoded_sizes(rare) == {"dense": 4000, "bitmask": 125 + 12, "relidx": 25}
    for tensor in (half.view(10, 10), rare.view(10, 100)):
        parts, encoding = encode_tensor("w", tensor)
        info = {"encoding": encoding, "shape": list(tensor.shape)}
        assert torch.equal(decode_tensor("w", parts, info), tensor)
    assert encode_tensor("w", rare)[1] == "relidx"
    assert encode_tensor("w", half)[1] == "bitmask"


def big_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.Linear(128, 10))


def test_80_percent_sparse_file_is_several_times_smaller(tiny_task, tmp_path):
    model = big_mlp()
    pruned = make_permanent(apply(model, MagnitudePruning(sparsity=0.8)))
    inputs = torch.randn(8, 64)
    dense_bytes = ts.save_checkpoint(model, tmp_path / "dense.safetensors")
    sparse_bytes = save_sparse(pruned, tmp_path / "sparse.safetensors")
    assert sparse_bytes == (tmp_path / "sparse.safetensors").stat().st_size
    assert dense_bytes / sparse_bytes > 3.0  # 80% zeros: 1 bit + 20% of values per weight
    loaded, _ = load_checkpoint(tmp_path / "sparse.safetensors", model=big_mlp())
    assert torch.equal(loaded(inputs), pruned(inputs))


def test_measure_reports_real_sparse_bytes_for_a_reference_architecture():
    task = ts.tasks.get("mnist1d-cnn")
    task.train_config = ts.TrainConfig(epochs=0)  # an untrained model is enough for sizes
    model = task.build_model().eval()
    pruned = apply(model, MagnitudePruning(sparsity=0.8))  # masks still attached
    dense = ts.measure(model, task, latency=False)
    sparse = ts.measure(pruned, task, io=sparse_io(task), latency=False)
    assert dense.artifact_bytes / sparse.artifact_bytes > 3.0
    assert sparse.params == dense.params == 5210


def test_sparse_files_load_from_their_spec_alone(tmp_path):
    from torchslim.models import build_model

    model = build_model("mnist1d_cnn")
    pruned = apply(model, MagnitudePruning(sparsity=0.9))
    save_sparse(pruned, tmp_path / "m.safetensors", {"arch": {"name": "mnist1d_cnn", "kwargs": {}}})
    assert read_spec(tmp_path / "m.safetensors")["sparse"]["format"] == "torchslim.sparse/1"
    loaded, _ = load_checkpoint(tmp_path / "m.safetensors")
    x = torch.randn(4, 1, 40)
    assert torch.equal(loaded(x), pruned(x))


def test_corrupt_sparse_parts_are_clear_errors():
    parts, encoding = encode_tensor("w", torch.zeros(1000).index_fill_(0, torch.tensor([5]), 1.0))
    parts["w.__relidx__"] = torch.tensor([255, 255, 255, 255, 255], dtype=torch.uint8)
    parts["w.__values__"] = torch.ones(5)
    with pytest.raises(ts.CheckpointError, match="corrupt"):
        decode_tensor("w", parts, {"encoding": encoding, "shape": [1000]})
