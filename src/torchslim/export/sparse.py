"""Sparse safetensors artifacts: zeros cost (almost) nothing on disk.

Each floating-point tensor is stored in whichever of three encodings is smallest:

* ``dense``: the tensor as is;
* ``bitmask``: one bit per element (1 = non-zero) + the non-zero values;
* ``relidx``: relative-index CSR as in Deep Compression: per non-zero, the gap to the
  previous one as ``uint8`` (gap - 1; a gap over 256 inserts zero-valued filler entries)
  + the values. It wins below ~1/8 density.

The encoding of every tensor lives in the checkpoint spec under ``"sparse"``, and
:func:`torchslim.checkpoint.read_checkpoint` decodes it, so a sparse file loads anywhere a
checkpoint does (``torchslim measure model.safetensors`` included).

This module registers the ``sparse`` artifact format: it claims models whose weight matrices
are at least :data:`SPARSE_THRESHOLD` zeros.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from torchslim.artifacts import ArtifactFormat, ArtifactIO, artifact_spec, register_format
from torchslim.checkpoint import build_from_spec, load_checkpoint, plain_state, save_checkpoint
from torchslim.errors import CheckpointError
from torchslim.measure import effective_parameters, is_plain

if TYPE_CHECKING:
    from torchslim.task import Task

FORMAT = "torchslim.sparse/1"
MASK_SUFFIX = ".__bitmask__"
INDEX_SUFFIX = ".__relidx__"
VALUES_SUFFIX = ".__values__"
MAX_GAP = 256
SPARSE_THRESHOLD = 0.3
"""Weight sparsity from which the sparse format is chosen automatically."""


def weight_sparsity(model: nn.Module) -> float:
    """Share of zero values among weight matrices / kernels (dim >= 2)."""
    total = zeros = 0
    for _, tensor in effective_parameters(model):
        if not is_plain(tensor):  # a tensor subclass (torchao int8): not sparse
            continue
        if tensor.dim() >= 2:
            total += tensor.numel()
            zeros += int((tensor == 0).sum())
    return zeros / total if total else 0.0


def _relidx_entries(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaps (``prev = -1``) and the filler entries each gap needs."""
    gaps = torch.diff(positions, prepend=torch.tensor([-1], dtype=positions.dtype))
    return gaps, (gaps - 1) // MAX_GAP


def encoded_sizes(tensor: torch.Tensor) -> dict[str, int]:
    """Bytes of ``tensor``'s data under each encoding."""
    flat = tensor.reshape(-1)
    itemsize = flat.element_size()
    positions = torch.nonzero(flat).reshape(-1)
    _, fillers = _relidx_entries(positions)
    entries = positions.numel() + int(fillers.sum())
    return {
        "dense": flat.numel() * itemsize,
        "bitmask": (flat.numel() + 7) // 8 + positions.numel() * itemsize,
        "relidx": entries * (1 + itemsize),
    }


def encode_tensor(name: str, tensor: torch.Tensor) -> tuple[dict[str, torch.Tensor], str]:
    """The stored tensors for one state tensor and the encoding chosen (smallest wins)."""
    if not tensor.is_floating_point() or tensor.numel() < 64:
        return {name: tensor}, "dense"
    sizes = encoded_sizes(tensor)
    encoding = min(sizes, key=lambda key: (sizes[key], key != "dense"))
    flat = tensor.reshape(-1)
    if encoding == "dense":
        return {name: tensor}, encoding
    positions = torch.nonzero(flat).reshape(-1)
    if encoding == "bitmask":
        bits = np.packbits((flat != 0).cpu().numpy())
        return {
            name + MASK_SUFFIX: torch.from_numpy(bits),
            name + VALUES_SUFFIX: flat[positions].contiguous(),
        }, encoding
    gaps, fillers = _relidx_entries(positions)
    slots = torch.arange(positions.numel()) + torch.cumsum(fillers, 0)
    total = positions.numel() + int(fillers.sum())
    stored = torch.full((total,), MAX_GAP - 1, dtype=torch.int64)
    values = torch.zeros(total, dtype=flat.dtype)
    stored[slots] = gaps - 1 - MAX_GAP * fillers
    values[slots] = flat[positions]
    return {
        name + INDEX_SUFFIX: stored.to(torch.uint8),
        name + VALUES_SUFFIX: values,
    }, encoding


def decode_tensor(name: str, stored: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
    """Rebuild one dense tensor from its stored parts."""
    shape = tuple(info["shape"])
    numel = int(np.prod(shape)) if shape else 1
    values = stored[name + VALUES_SUFFIX]
    dense = torch.zeros(numel, dtype=values.dtype)
    if info["encoding"] == "bitmask":
        bits = np.unpackbits(stored[name + MASK_SUFFIX].numpy(), count=numel).astype(bool)
        dense[torch.from_numpy(bits)] = values
    elif info["encoding"] == "relidx":
        steps = stored[name + INDEX_SUFFIX].to(torch.int64) + 1
        positions = torch.cumsum(steps, 0) - 1
        if positions.numel() and int(positions[-1]) >= numel:
            raise CheckpointError(f"sparse tensor {name} is corrupt (index past its end)")
        dense[positions] = values
    else:
        raise CheckpointError(
            f"sparse tensor {name} has unknown encoding {info['encoding']!r}; "
            "re-export it with this torchslim version"
        )
    return dense.view(shape)


def encode_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Encode a state dict; returns the tensors to store and the spec entry describing them."""
    tensors: dict[str, torch.Tensor] = {}
    described: dict[str, Any] = {}
    for name, tensor in state.items():
        parts, encoding = encode_tensor(name, tensor.detach().cpu().contiguous())
        tensors.update(parts)
        if encoding != "dense":
            described[name] = {
                "encoding": encoding,
                "shape": list(tensor.shape),
                "dtype": str(tensor.dtype).removeprefix("torch."),
            }
    return tensors, {"format": FORMAT, "tensors": described}


def decode_state(
    stored: dict[str, torch.Tensor], sparse: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`encode_state` (what ``read_checkpoint`` calls for sparse files)."""
    if not isinstance(sparse, dict) or sparse.get("format") != FORMAT:
        raise CheckpointError(
            f"sparse checkpoint format {sparse.get('format') if isinstance(sparse, dict) else sparse!r}"
            f" is not {FORMAT}; re-export it with this torchslim version"
        )
    described = sparse.get("tensors", {})
    state = {
        k: v
        for k, v in stored.items()
        if not k.endswith((MASK_SUFFIX, INDEX_SUFFIX, VALUES_SUFFIX))
    }
    for name, info in described.items():
        try:
            state[name] = decode_tensor(name, stored, info)
        except KeyError as exc:
            raise CheckpointError(
                f"sparse checkpoint lacks part {exc} of tensor {name}; the file is corrupt"
            ) from exc
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            raise CheckpointError(
                f"sparse tensor {name} does not decode to its shape ({type(exc).__name__}); "
                "the file is corrupt: re-export it"
            ) from exc
    return state


def save_sparse(model: nn.Module, path: str | Path, spec: dict[str, Any] | None = None) -> int:
    """Save ``model`` (pruning masks folded in) as a sparse safetensors file; return its bytes."""
    tensors, sparse = encode_state(plain_state(model))
    payload = dict(spec or {})
    payload["sparse"] = sparse
    return save_checkpoint(model, path, payload, tensors=tensors)


def sparse_io(
    task: Task | None = None,
    template: nn.Module | None = None,
    spec: dict[str, Any] | None = None,
) -> ArtifactIO:
    """An :class:`~torchslim.artifacts.ArtifactIO` writing sparse safetensors files.

    ``measure(model, task, io=sparse_io(task, model))`` reports the real sparse file's
    bytes and checks that it reloads to identical outputs.

    Args:
        task: supplies the spec (architecture, task name) when ``spec`` is None.
        template: a model of the right architecture, used when the spec names no
            reference architecture.
        spec: the JSON spec to store (default: the task's).
    """
    chosen: dict[str, Any] = spec if spec is not None else task.spec() if task is not None else {}

    def save(model: nn.Module, path: Path) -> None:
        save_sparse(
            model, path, artifact_spec(task, model, chosen) if "arch" not in chosen else chosen
        )

    def load(path: Path) -> nn.Module:
        def build(saved: dict[str, Any]) -> nn.Module:
            if "arch" in saved:
                return build_from_spec(saved)
            if template is None:
                raise CheckpointError(
                    f"sparse file {path} names no architecture; pass template= to sparse_io"
                )
            from torchslim.techniques.pruning import make_permanent

            return make_permanent(copy.deepcopy(template))

        return load_checkpoint(path, build=build)[0]

    return ArtifactIO(save, load)


SPARSE_FORMAT = register_format(
    ArtifactFormat(
        name="sparse",
        suffix=".safetensors",
        io=sparse_io,
        claims=lambda model: weight_sparsity(model) >= SPARSE_THRESHOLD,
        priority=10,
        decodes="sparse",
        decode=decode_state,
        records=("sparse",),
    )
)
