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
    dense_bytes = artifact_bytes(dense, tmp_path / "dense.safetensors", x, packed_io(dense))
    # artifact_bytes reloads the file and checks the outputs are identical (atol 0)
    size = artifact_bytes(pruned, tmp_path / "pruned.safetensors", x, packed_io(pruned))
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
