"""Where training and statistics run: the user's accelerator, or the CPU.

Models live on the CPU between steps (so every artifact is saved from CPU tensors and
loads anywhere). A step that runs a model for training or statistics moves it to the
task's device for its duration (:func:`on_device`), and a batch meets the model in one
place: :func:`torchslim.task.call_model` moves inputs to the model's device, and the
loss and metrics move targets to the outputs' device (:func:`to_device`). User
DataLoaders are iterated as they are (workers, pinned memory: copies are then
non-blocking).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError

DEVICES = "auto, cpu, cuda, cuda:N or mps"
AMP = ("bf16", "fp16")
_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(name: Any) -> None:
    """Raise ConfigError unless ``name`` is a device spec torchslim accepts."""
    if isinstance(name, torch.device):
        return
    if not isinstance(name, str) or not _PATTERN.match(name):
        raise ConfigError(f"device {name!r} is unknown; use {DEVICES}")


def _seen() -> str:
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    built = "built with CUDA" if torch.version.cuda else "a CPU-only build"
    mps = torch.backends.mps.is_available()
    return f"torch {torch.__version__} ({built}) sees {cuda} CUDA device(s), MPS {mps}"


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The torch device of a spec: ``auto`` is the first accelerator torch sees, else CPU.

    Raises:
        ConfigError: an unknown spec, or an accelerator torch does not see (says what it sees).
    """
    if name is None:
        return torch.device("cpu")
    if isinstance(name, torch.device):
        return name
    check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        index = int(name.split(":")[1]) if ":" in name else 0
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            raise ConfigError(f"device {name!r} is not available: {_seen()}; use --device cpu")
        return torch.device("cuda", index)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device 'mps' is not available: {_seen()}; use --device cpu")
    return torch.device(name)


def check_amp(amp: str | None, device: torch.device) -> None:
    """Raise ConfigError for an unknown mixed-precision mode or one the device lacks."""
    if amp is None:
        return
    if amp not in AMP:
        raise ConfigError(f"amp {amp!r} is unknown; use one of {AMP} or leave it off")
    if amp == "fp16" and device.type == "cpu":
        raise ConfigError("amp fp16 needs an accelerator (CUDA or MPS); use --amp bf16 on CPU")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"amp bf16 is not supported by {device}; use --amp fp16")


def autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """Mixed precision for a forward pass (a no-op context without ``amp``)."""
    if amp is None:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def model_device(model: nn.Module) -> torch.device | None:
    """The device of a model's first parameter or buffer (None for a stateless module)."""
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return None


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are one (``cuda`` is ``cuda:0``)."""
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def to_device(batch: Any, device: torch.device | None) -> Any:
    """A tensor, or a tuple / list / dict of them, on ``device`` (others unchanged)."""
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        if same_device(batch.device, device):
            return batch
        return batch.to(device, non_blocking=batch.is_pinned())
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)) and not hasattr(batch, "_fields"):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


ACTIVE: dict[int, torch.device] = {}
"""Modules (``id`` of the model and its submodules) inside an :func:`on_device` block, and
the device of the block: what the device tests check every forward pass against."""


@contextlib.contextmanager
def on_device(model: nn.Module | None, device: torch.device) -> Iterator[nn.Module | None]:
    """Run a block with ``model`` on ``device``; it goes back where it was afterwards."""
    if model is None:
        yield model
        return
    ids = [id(m) for m in model.modules() if id(m) not in ACTIVE]
    ACTIVE.update(dict.fromkeys(ids, device))
    home = model_device(model) or torch.device("cpu")
    moved = not same_device(home, device)
    if moved:
        model.to(device)
    try:
        yield model
    finally:
        if moved:
            model.to(home)
        for key in ids:
            ACTIVE.pop(key, None)


def synchronize(device: torch.device) -> None:
    """Wait for queued work on an accelerator (for timing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
