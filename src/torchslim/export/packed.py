"""Packed low-bit artifact: weights stored at their bit width, in one safetensors file.

Layout (two tensors, so the fixed overhead stays a few hundred bytes):

* ``packed`` (uint8): the integer codes of every quantized layer (uniform grid:
  ``code - qmin``; codebook: centroid index), bit-packed little-endian at the
  layer's bit width, each layer starting on a byte boundary;
* ``floats`` (float32) and ``halves`` (float16): every other entry of the state
  dict (scales, zero points, codebooks, biases, float layers), concatenated in
  state-dict order; an entry goes to ``halves`` only when float16 holds it exactly,
  and entries that are all zeros are only listed.

The packed codes are DEFLATE-compressed (zlib, the entropy-coding stage of Deep
Compression) when that makes them smaller; loading is always exact.

The JSON spec (safetensors metadata) lists the packed entries with their bits.
Loading fills a copy of the quantized model's structure and reproduces its
dequantized weights exactly.
"""

from __future__ import annotations

import copy
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from torchslim.checkpoint import SPEC_KEY, atomic_path
from torchslim.errors import CheckpointError
from torchslim.techniques.codebook import CodebookLayer
from torchslim.techniques.fake_quant import QuantizedLayer

FORMAT = "torchslim.packed/1"


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integers below ``2**bits`` into bytes (little-endian bit order)."""
    values = codes.detach().reshape(-1).to(torch.int64)
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits}) to pack at {bits} bits")
    array = values.numpy().astype(np.uint8)
    bit_matrix = np.unpackbits(array[:, None], axis=1, bitorder="little")[:, :bits]
    return torch.from_numpy(np.packbits(bit_matrix.reshape(-1), bitorder="little"))


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``count`` integers (int64)."""
    stream = np.unpackbits(packed.numpy().astype(np.uint8), bitorder="little")[: count * bits]
    matrix = np.zeros((count, 8), dtype=np.uint8)
    matrix[:, :bits] = stream.reshape(count, bits)
    return torch.from_numpy(np.packbits(matrix, axis=1, bitorder="little")[:, 0].astype(np.int64))


def _packed_entries(model: nn.Module) -> dict[str, tuple[int, torch.Tensor, int]]:
    """state-dict key -> (bits, unsigned codes, offset added back on load)."""
    entries: dict[str, tuple[int, torch.Tensor, int]] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, QuantizedLayer):
            quant = module.weight_quant
            entries[f"{prefix}module.weight"] = (
                quant.bits,
                module.codes() - quant.qmin,
                quant.qmin,
            )
        elif isinstance(module, CodebookLayer):
            entries[f"{prefix}indices"] = (module.bits, module.indices.long(), 0)
    return entries


def save_packed(model: nn.Module, path: str | Path, spec: dict[str, Any] | None = None) -> int:
    """Write ``model`` as a packed artifact; return the file's bytes."""
    entries = _packed_entries(model)
    state = model.state_dict()
    chunks, packed_list = [], []
    for key, (bits, codes, _) in entries.items():
        chunks.append(pack_bits(codes, bits))
        packed_list.append([key, bits])
    floats, halves, zeros, half_keys = [], [], [], []
    for index, (key, tensor) in enumerate(state.items()):
        if key in entries:
            continue
        values = tensor.detach().reshape(-1)
        if not torch.any(values):
            zeros.append(index)
        elif values.is_floating_point() and torch.equal(values.half().to(values.dtype), values):
            halves.append(values.half())
            half_keys.append(index)
        else:
            floats.append(values.float())
    packed = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.uint8)
    compressed = zlib.compress(packed.numpy().tobytes(), 9)
    use_zlib = len(compressed) < packed.numel()
    if use_zlib:
        packed = torch.frombuffer(bytearray(compressed), dtype=torch.uint8)
    payload = dict(spec or {})
    payload.update(format=FORMAT, packed=packed_list, zeros=zeros, halves=half_keys, zlib=use_zlib)
    tensors = {
        "packed": packed,
        "floats": torch.cat(floats) if floats else torch.zeros(0),
        "halves": torch.cat(halves) if halves else torch.zeros(0, dtype=torch.float16),
    }
    metadata = {SPEC_KEY: json.dumps(payload, separators=(",", ":"))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path).stat().st_size


def load_packed(path: str | Path, template: nn.Module) -> nn.Module:
    """Load a packed artifact into a copy of ``template`` (the quantized model's structure).

    Raises:
        CheckpointError: the file is missing, corrupt, or was saved from another structure.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"packed artifact {path} does not exist; check the path")
    try:
        with safe_open(str(path), framework="pt") as handle:
            payload = json.loads((handle.metadata() or {}).get(SPEC_KEY, "{}"))
            packed, floats = handle.get_tensor("packed"), handle.get_tensor("floats")
            halves = handle.get_tensor("halves")
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on bad files
        raise CheckpointError(
            f"packed artifact {path} is corrupt or truncated ({type(exc).__name__}); re-export it"
        ) from exc
    if payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a torchslim packed artifact ({FORMAT}); re-export it")
    model = copy.deepcopy(template).eval()
    expected = _packed_entries(model)
    listed = [key for key, _ in payload["packed"]]
    if listed != list(expected) or any(expected[k][0] != b for k, b in payload["packed"]):
        raise CheckpointError(
            f"packed artifact {path} was saved from another model structure; load it with the "
            "quantized model it was exported from"
        )
    if payload.get("zlib"):
        try:
            packed = torch.frombuffer(
                bytearray(zlib.decompress(packed.numpy().tobytes())), dtype=torch.uint8
            )
        except zlib.error as exc:
            raise CheckpointError(
                f"packed artifact {path} is corrupt ({exc}); re-export it"
            ) from exc
    state = model.state_dict()
    zeros, half_keys = set(payload["zeros"]), set(payload.get("halves", []))
    new_state: dict[str, torch.Tensor] = {}
    offsets = {"floats": 0, "halves": 0}
    for index, (key, tensor) in enumerate(state.items()):
        if key in expected:
            new_state[key] = tensor
            continue
        if index in zeros:
            new_state[key] = torch.zeros_like(tensor)
            continue
        blob_name = "halves" if index in half_keys else "floats"
        blob = halves if index in half_keys else floats
        start, count = offsets[blob_name], tensor.numel()
        if start + count > blob.numel():
            raise CheckpointError(f"packed artifact {path} is truncated; re-export it")
        new_state[key] = blob[start : start + count].reshape(tensor.shape).to(tensor.dtype)
        offsets[blob_name] = start + count
    model.load_state_dict(new_state, strict=True)
    start = 0
    modules = dict(model.named_modules())
    for key, (bits, codes, qmin) in expected.items():
        size = (codes.numel() * bits + 7) // 8
        values = unpack_bits(packed[start : start + size], bits, codes.numel()).reshape(codes.shape)
        start += size
        owner = modules[
            key.rsplit(".", 2)[0] if key.endswith("module.weight") else key.rsplit(".", 1)[0]
        ]
        with torch.no_grad():
            if isinstance(owner, QuantizedLayer):
                owner.module.weight.copy_(owner.weight_quant.decode(values + qmin))
            else:
                owner.indices.copy_(values.to(torch.uint8))
    return model


def packed_io(template: nn.Module, spec: dict[str, Any] | None = None):
    """An :class:`~torchslim.measure.ArtifactIO` writing the packed format (for ``measure``)."""
    from torchslim.measure import ArtifactIO

    return ArtifactIO(
        save=lambda model, path: save_packed(model, path, spec),
        load=lambda path: load_packed(path, template),
        suffix=".safetensors",
    )
