"""Packed low-bit artifacts: bit packing, size ratios, exact reload, bad files."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.checkpoint import save_checkpoint
from torchslim.export.packed import (
    load_packed,
    pack_bits,
    packed_io,
    save_packed,
    unpack_bits,
)
from torchslim.measure import artifact_bytes
from torchslim.techniques import apply
from torchslim.techniques.codebook import CodebookLayer, CodebookQuant
from torchslim.techniques.fake_quant import QuantizedLayer
from torchslim.techniques.pruning import MagnitudePruning
from torchslim.techniques.quantization import DynamicQuant


@pytest.mark.parametrize("bits", range(2, 9))
def test_bit_packing_round_trips_at_every_width(bits):
    codes = torch.randint(0, 2**bits, (1001,), generator=torch.Generator().manual_seed(bits))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(1001 * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, 1001), codes)
    with pytest.raises(ValueError, match=f"codes must lie in \\[0, {2**bits}\\)"):
        pack_bits(torch.tensor([2**bits]), bits)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def test_packed_4bit_is_under_016_of_fp32_and_reloads_identically(tmp_path):
    model = _mlp().eval()
    quantized = apply(model, DynamicQuant(bits=4))
    fp32_bytes = save_checkpoint(model, tmp_path / "fp32.safetensors")
    packed_bytes = save_packed(quantized, tmp_path / "q4.safetensors")
    assert packed_bytes <= 0.16 * fp32_bytes
    reloaded = load_packed(tmp_path / "q4.safetensors", quantized)
    for name, layer in quantized.named_modules():
        if isinstance(layer, QuantizedLayer):
            again = reloaded.get_submodule(name)
            assert torch.equal(again.dequantized_weight(), layer.dequantized_weight())
            assert torch.equal(again.codes(), layer.codes())
    x = torch.randn(16, 64)
    assert torch.equal(reloaded(x), quantized(x))


def test_packed_codebook_reloads_identically_and_overhead_is_small(tmp_path):
    model = _mlp().eval()
    shared = apply(model, CodebookQuant(bits=4, iterations=5))
    size = save_packed(shared, tmp_path / "cb.safetensors")
    index_bytes = sum(
        math.ceil(m.weight.numel() * 4 / 8) for m in model if isinstance(m, nn.Linear)
    )
    float_bytes = sum(m.bias.numel() * 2 + 16 * 2 for m in model if isinstance(m, nn.Linear))
    assert size <= index_bytes + float_bytes + 600  # fixed overhead: a few hundred bytes
    reloaded = load_packed(tmp_path / "cb.safetensors", shared)
    for a, b in zip(shared.state_dict().values(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_pruned_codebook_keeps_its_zeros_in_a_much_smaller_packed_file(tmp_path):
    model = _mlp().eval()
    dense = apply(model, CodebookQuant(bits=4, iterations=5))
    pruned = apply(
        apply(model, MagnitudePruning(sparsity=0.8, mode="layer")),
        CodebookQuant(bits=4, iterations=5),
    )
    layers = [m for m in pruned.modules() if isinstance(m, CodebookLayer)]
    assert len(layers) == 3 and all(int(m.zero_index) >= 0 for m in layers)
    x = torch.randn(16, 64)
    dense_bytes = artifact_bytes(
        dense, tmp_path / "dense.safetensors", x, packed_io(template=dense)
    )
    # artifact_bytes reloads the file and checks the outputs are identical (atol 0)
    size = artifact_bytes(pruned, tmp_path / "pruned.safetensors", x, packed_io(template=pruned))
    # measured 0.41 (zlib on the repeated zero index); the margin leaves room for zlib versions
    assert size < 0.5 * dense_bytes
    reloaded = load_packed(tmp_path / "pruned.safetensors", pruned)
    for a, b in zip(pruned.state_dict().values(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for name, layer in pruned.named_modules():
        if isinstance(layer, CodebookLayer):
            weight = reloaded.get_submodule(name).shared_weight()
            assert torch.equal(weight, layer.shared_weight())
            assert int((weight == 0).sum()) == int(0.8 * weight.numel())
            assert len(torch.unique(weight)) <= 2**4
    assert torch.equal(reloaded(x), pruned(x))


def test_bad_packed_files_give_clear_errors(tmp_path):
    quantized = apply(_mlp().eval(), DynamicQuant(bits=4))
    path = tmp_path / "q.safetensors"
    save_packed(quantized, path)
    with pytest.raises(ts.CheckpointError, match="saved from another model structure"):
        load_packed(path, apply(_mlp().eval(), DynamicQuant(bits=8)))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ts.CheckpointError, match="corrupt or truncated"):
        load_packed(path, quantized)
    with pytest.raises(ts.CheckpointError, match="does not exist"):
        load_packed(tmp_path / "missing.safetensors", quantized)


@pytest.mark.parametrize(
    ("count", "probs"),
    [(1, [1.0]), (5000, [1.0]), (5000, [0.8, 0.1, 0.05, 0.05]), (20000, [1 / 16] * 16)],
)
def test_rans_round_trips_within_a_few_bytes_of_the_entropy(count, probs):
    import numpy as np

    from torchslim.export.packed import _quantize_counts, rans_decode, rans_encode

    rng = np.random.default_rng(0)
    codes = rng.choice(len(probs), size=count, p=probs)
    counts = np.bincount(codes, minlength=len(probs))
    freqs = _quantize_counts(counts)
    assert freqs.sum() == 2**14 and (freqs[counts > 0] >= 1).all()
    data = rans_encode(codes, freqs)
    assert np.array_equal(rans_decode(data, freqs, count), codes)
    present = counts[counts > 0] / count
    entropy_bytes = -(present * np.log2(present)).sum() * count / 8
    assert len(data) <= 1.01 * entropy_bytes + 8  # 4 bytes of final state + rounding


def test_pruned_codebook_uses_the_entropy_coder_and_old_files_still_load(tmp_path):
    import json
    import zlib

    from safetensors import safe_open
    from safetensors.torch import save_file

    from torchslim.checkpoint import SPEC_KEY

    model = _mlp().eval()
    pruned = apply(
        apply(model, MagnitudePruning(sparsity=0.9, mode="layer")),
        CodebookQuant(bits=4, iterations=5),
    )
    path = tmp_path / "p.safetensors"
    save_packed(pruned, path)
    with safe_open(str(path), framework="pt") as handle:
        payload = json.loads(handle.metadata()[SPEC_KEY])
    assert payload["format"] == "torchslim.packed/2"
    assert {entry[2] for entry in payload["packed"]} == {2}  # rans for every sparse layer
    indices = sum(m.indices.numel() for m in pruned.modules() if isinstance(m, CodebookLayer))
    blob = sum(entry[3] for entry in payload["packed"])
    # 90 % zeros: entropy ~0.47 + 0.1 * log2(15) ~ 0.86 bit per index, tables 32 B a layer
    assert blob < indices * 0.95 / 8 + 3 * 40
    x = torch.randn(8, 64)
    assert torch.equal(load_packed(path, pruned)(x), pruned(x))
    # a file of format 1 (bit-packed codes, one zlib flag for the blob) loads identically
    import numpy as np

    with safe_open(str(path), framework="pt") as handle:
        data = handle.get_tensor("data").numpy().tobytes()
    n32, n16 = payload["n32"], payload["n16"]
    tensors = {
        "floats": torch.from_numpy(np.frombuffer(data, "<f4", n32).copy()),
        "halves": torch.from_numpy(np.frombuffer(data, "<f2", n16, 4 * n32).copy()),
    }
    codes = [
        pack_bits(m.indices.long(), 4) for m in pruned.modules() if isinstance(m, CodebookLayer)
    ]
    stream = zlib.compress(torch.cat(codes).numpy().tobytes(), 9)
    tensors["packed"] = torch.frombuffer(bytearray(stream), dtype=torch.uint8)
    payload.update(
        format="torchslim.packed/1", zlib=True, packed=[e[:2] for e in payload["packed"]]
    )
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={SPEC_KEY: json.dumps(payload)})
    assert torch.equal(load_packed(old, pruned)(x), pruned(x))
