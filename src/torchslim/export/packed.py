"""Packed low-bit artifact: weights stored at their bit width, in one safetensors file.

Layout (one uint8 tensor ``data``, so the fixed overhead stays a few hundred bytes:
the safetensors header and the JSON spec, ~0.6 KB for the built-in tasks):

* the float32 values (``n32`` of them) then the float16 values (``n16``): every entry
  of the state dict but the codes (scales, zero points, codebooks, biases, float
  layers), concatenated in state-dict order; an entry goes to float16 only when float16
  holds it exactly, and entries that are all zeros are only listed (``zeros``);
* the integer codes of every quantized layer (uniform grid: ``code - qmin``;
  codebook: centroid index), layer after layer, each in its codec (below).

Entropy coding (the last stage of Deep Compression): each layer's codes are stored in
whichever of three codecs is smallest: ``bits`` (bit-packed as above), ``zlib`` (DEFLATE of
the bit-packed codes) or ``rans`` (an order-0 range-asymmetric-numeral-system coder with
the layer's quantized symbol frequencies stored next to it: a pruned layer's zero index
costs a fraction of a bit). Loading is always exact. Files of format
``torchslim.packed/1`` (tensors ``packed``, ``floats``, ``halves``; bit-packed codes
with one zlib flag for the whole blob) still load.

The JSON spec (safetensors metadata) lists the packed entries with their bits.
Loading fills a copy of the quantized model's structure and reproduces its
dequantized weights exactly.

This module registers the ``packed`` artifact format: it claims models with quantized or
codebook layers (and refuses to let them be written as ``torch``), and ``torchslim export
--format packed`` quantizes a float model to ``bits`` first.
"""

from __future__ import annotations

import copy
import json
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from torchslim.artifacts import (
    ArtifactFormat,
    ArtifactIO,
    ExportOptions,
    artifact_spec,
    register_format,
)
from torchslim.checkpoint import SPEC_KEY
from torchslim.errors import CheckpointError
from torchslim.fileio import atomic_path
from torchslim.hardware import spec_record
from torchslim.techniques.codebook import CodebookLayer
from torchslim.techniques.fake_quant import QuantizedLayer

if TYPE_CHECKING:
    from torchslim.task import Task

FORMAT = "torchslim.packed/2"
FORMATS = ("torchslim.packed/1", FORMAT)
CODECS = ("bits", "zlib", "rans")
RANS_MAX_SYMBOLS = 2_000_000  # a pure-Python coder: larger layers use bits / zlib
_PROB_BITS = 14
_RANS_L = 1 << 23


def _quantize_counts(counts: np.ndarray, total: int = 1 << _PROB_BITS) -> np.ndarray:
    """Frequencies summing to ``total``, every present symbol at least 1."""
    present = counts > 0
    freqs = np.zeros(len(counts), dtype=np.int64)
    if not present.any():
        return freqs
    scaled = counts[present] * (total - int(present.sum())) / counts.sum()
    freqs[present] = 1 + np.floor(scaled).astype(np.int64)
    short = total - int(freqs.sum())
    order = np.argsort(-(scaled - np.floor(scaled)))  # largest remainders first
    indices = np.flatnonzero(present)[order]
    for i in range(short):
        freqs[indices[i % len(indices)]] += 1
    return freqs


def rans_encode(codes: np.ndarray, freqs: np.ndarray) -> bytes:
    """Order-0 rANS of ``codes`` with ``freqs`` (summing to ``2**14``); bytes to decode."""
    cums = np.concatenate([[0], np.cumsum(freqs)[:-1]]).tolist()
    freq_list = freqs.tolist()
    out = bytearray()
    state = _RANS_L
    shift = (_RANS_L >> _PROB_BITS) << 8
    for symbol in reversed(codes.tolist()):
        freq = freq_list[symbol]
        limit = shift * freq
        while state >= limit:
            out.append(state & 0xFF)
            state >>= 8
        state = ((state // freq) << _PROB_BITS) + (state % freq) + cums[symbol]
    out += state.to_bytes(4, "little")[::-1]
    out.reverse()
    return bytes(out)


def rans_decode(data: bytes, freqs: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`rans_encode`: ``count`` codes (int64)."""
    mask = (1 << _PROB_BITS) - 1
    cums = np.concatenate([[0], np.cumsum(freqs)[:-1]])
    lookup = np.repeat(np.arange(len(freqs)), freqs).tolist()
    if len(lookup) != 1 << _PROB_BITS or len(data) < 4:
        raise ValueError("bad rANS frequency table or stream")
    freq_list, cum_list = freqs.tolist(), cums.tolist()
    state = int.from_bytes(data[:4], "little")
    position = 4
    size = len(data)
    result = [0] * count
    for i in range(count):
        slot = state & mask
        symbol = lookup[slot]
        result[i] = symbol
        state = freq_list[symbol] * (state >> _PROB_BITS) + slot - cum_list[symbol]
        while state < _RANS_L:
            if position >= size:
                raise ValueError("rANS stream ends early")
            state = (state << 8) | data[position]
            position += 1
    return np.asarray(result, dtype=np.int64)


def _encode_codes(codes: torch.Tensor, bits: int) -> tuple[str, bytes]:
    """The smallest of the codecs for one layer's codes: (codec, bytes)."""
    packed = pack_bits(codes, bits).numpy().tobytes()
    options = [("bits", packed), ("zlib", zlib.compress(packed, 9))]
    flat = codes.detach().reshape(-1).to(torch.int64).numpy()
    if 0 < flat.size <= RANS_MAX_SYMBOLS:
        counts = np.bincount(flat, minlength=2**bits)
        ideal = -(counts[counts > 0] * np.log2(counts[counts > 0] / flat.size)).sum() / 8
        table = 2 * 2**bits
        if ideal + table + 4 < min(len(packed), len(options[1][1])):  # worth coding
            freqs = _quantize_counts(counts)
            options.append(("rans", freqs.astype("<u2").tobytes() + rans_encode(flat, freqs)))
    return min(options, key=lambda item: len(item[1]))


def _decode_codes(codec: str, data: bytes, bits: int, count: int) -> torch.Tensor:
    if codec == "zlib":
        data = zlib.decompress(data)
        codec = "bits"
    if codec == "bits":
        if len(data) < (count * bits + 7) // 8:
            raise ValueError("packed codes are truncated")
        return unpack_bits(torch.frombuffer(bytearray(data), dtype=torch.uint8), bits, count)
    if codec == "rans":
        table = 2 * 2**bits
        freqs = np.frombuffer(data[:table], dtype="<u2").astype(np.int64)
        return torch.from_numpy(rans_decode(data[table:], freqs, count))
    raise ValueError(f"unknown codec {codec!r}")


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
        codec, data = _encode_codes(codes, bits)
        chunks.append(data)
        packed_list.append([key, bits, CODECS.index(codec), len(data)])
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
    wide = torch.cat(floats) if floats else torch.zeros(0)
    narrow = torch.cat(halves) if halves else torch.zeros(0, dtype=torch.float16)
    blob = (
        wide.numpy().astype("<f4").tobytes()
        + narrow.numpy().astype("<f2").tobytes()
        + b"".join(chunks)
    )
    payload = dict(spec or {})
    payload.setdefault("hardware", spec_record())
    payload.update(
        format=FORMAT,
        packed=packed_list,
        zeros=zeros,
        halves=half_keys,
        n32=wide.numel(),
        n16=narrow.numel(),
    )
    tensors = {
        "data": torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        if blob
        else torch.zeros(0, dtype=torch.uint8)
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
            payload = _checked_payload(handle, path)
            if "data" in handle.keys():  # noqa: SIM118 - a safe_open handle
                data = handle.get_tensor("data").numpy().tobytes()
                n32, n16 = int(payload.get("n32", 0)), int(payload.get("n16", 0))
                if len(data) < 4 * n32 + 2 * n16:
                    raise ValueError("data shorter than its floats")
                floats = torch.from_numpy(np.frombuffer(data, "<f4", n32).astype(np.float32))
                halves = torch.from_numpy(
                    np.frombuffer(data, "<f2", n16, 4 * n32).astype(np.float16)
                )
                start = 4 * n32 + 2 * n16
                packed = torch.frombuffer(
                    bytearray(data[start:]) or bytearray(1), dtype=torch.uint8
                )
                packed = packed[: len(data) - start]
            else:
                packed, floats = handle.get_tensor("packed"), handle.get_tensor("floats")
                halves = handle.get_tensor("halves")
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on bad files
        raise CheckpointError(
            f"packed artifact {path} is corrupt or truncated ({type(exc).__name__}); re-export it"
        ) from exc
    if payload.get("format") not in FORMATS:
        raise CheckpointError(f"{path} is not a torchslim packed artifact ({FORMAT}); re-export it")
    model = copy.deepcopy(template).eval()
    expected = _packed_entries(model)
    payload.setdefault("packed", [])
    listed = [entry[0] for entry in payload["packed"]]
    if listed != list(expected) or any(expected[e[0]][0] != e[1] for e in payload["packed"]):
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
    zeros, half_keys = set(payload.get("zeros", [])), set(payload.get("halves", []))
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
    stream = packed.numpy().tobytes()
    for entry, (key, (bits, codes, qmin)) in zip(payload["packed"], expected.items(), strict=True):
        if len(entry) >= 4:  # format 2: per-layer codec and byte count
            codec, size = CODECS[int(entry[2])] if int(entry[2]) < len(CODECS) else "?", entry[3]
        else:
            codec, size = "bits", (codes.numel() * bits + 7) // 8
        try:
            values = _decode_codes(codec, stream[start : start + size], bits, codes.numel())
        except (ValueError, zlib.error) as exc:
            raise CheckpointError(
                f"packed artifact {path} is corrupt ({key}: {exc}); re-export it"
            ) from exc
        values = values.reshape(codes.shape)
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


def _checked_payload(handle: Any, path: Path) -> dict[str, Any]:
    """The packed spec, checked like any checkpoint spec (types, keys, sizes) before use."""
    from torchslim.spec import parse_spec_text, validate_spec

    where = f"packed artifact {path}"
    text = (handle.metadata() or {}).get(SPEC_KEY)
    payload = parse_spec_text(text, where) if text is not None else {}
    return validate_spec(payload, where, path.stat().st_size, list(handle.keys()))


def packed_io(
    task: Task | None = None,
    template: nn.Module | None = None,
    spec: dict[str, Any] | None = None,
) -> ArtifactIO:
    """An :class:`~torchslim.artifacts.ArtifactIO` writing the packed format (for ``measure``).

    Args:
        task: supplies the spec (the task's, plus how the saved model differs from the
            task's original) when ``spec`` is None.
        template: the quantized model whose structure the file loads into (required).
        spec: the JSON spec to store.
    """
    if template is None:
        raise CheckpointError("packed_io needs template=, the quantized model it loads into")
    structure: nn.Module = template

    def save(model: nn.Module, path: Path) -> None:
        chosen = spec
        if chosen is None and task is not None:
            chosen = artifact_spec(task, model, task.spec())
        save_packed(model, path, chosen)

    return ArtifactIO(save=save, load=lambda path: load_packed(path, structure))


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` has quantized (uniform grid) or codebook layers: a packed artifact."""
    return any(isinstance(m, (QuantizedLayer, CodebookLayer)) for m in model.modules())


def _export_packed(model: nn.Module, task: Task, path: Path, options: ExportOptions) -> nn.Module:
    """``torchslim export --format packed``: static int ``bits`` quantization, then packed."""
    from torchslim.techniques.base import apply
    from torchslim.techniques.quantization import StaticQuant

    quantized = apply(model, StaticQuant(bits=options.bits), task)
    save_packed(quantized, path, artifact_spec(task, quantized, task.spec()))
    return load_packed(path, quantized)


PACKED_FORMAT = register_format(
    ArtifactFormat(
        name="packed",
        suffix=".safetensors",
        export_suffix=".packed.safetensors",
        io=packed_io,
        claims=is_quantized,
        priority=20,
        refuses=("torch",),
        export=_export_packed,
        reads=lambda spec: str(spec.get("format", "")).startswith("torchslim.packed"),
        load_into=lambda path, template: load_packed(path, template),
        records=("packed", "zeros", "halves", "n32", "n16", "zlib"),
    )
)
