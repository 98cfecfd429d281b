"""Batches and the model calls around them: the lowest floor every other module may use.

A batch is ``(inputs, target)``; inputs may be a tensor, a tuple (positional arguments)
or a dict (keyword arguments, a ``labels`` key is the target). These helpers call models
on such inputs, slice them, and keep a model's modes and torch's thread count as they were.
They import nothing of torchslim but ``errors`` and ``device``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchslim.device import model_device, to_device
from torchslim.errors import ConfigError

if TYPE_CHECKING:
    from torchslim.task import Task

Batch = Any
"""A batch as data loaders yield it: ``(inputs, target)``, ``(inputs,)``, a dict or inputs."""


@contextmanager
def preserved_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block; afterwards every submodule's ``.training`` flag is what it was before.

    ``model.train(mode)`` sets one mode on every child, so a model whose submodules are in
    mixed modes (a frozen BatchNorm in eval inside a training model) needs this instead.
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``model`` in eval mode; every submodule's mode is restored, also on error."""
    with preserved_modes(model):
        model.eval()
        yield model


class threads_fixed:  # noqa: N801 - used as a context manager
    """Fix torch's intra-op thread count for a block, then restore it."""

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.threads = threads

    def __enter__(self) -> threads_fixed:
        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.previous)


def split_batch(batch: Batch) -> tuple[Any, Any]:
    """Split a batch into (inputs, target); target is None for unlabelled batches."""
    if isinstance(batch, dict):
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "label")}
        return inputs, batch.get("labels", batch.get("label"))
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) == 1:
            return batch[0], None
    return batch, None


def call_model(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Call ``model`` on tensor, tuple or dict inputs (moved to the model's device)."""
    inputs = to_device(inputs, model_device(model))
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def batch_size_of(inputs: Any) -> int:
    """Number of samples in a batch of inputs."""
    if isinstance(inputs, dict):
        inputs = next(iter(inputs.values()))
    if isinstance(inputs, (tuple, list)):
        inputs = inputs[0]
    return int(inputs.shape[0])


def slice_inputs(inputs: Any, count: int) -> Any:
    """The first ``count`` samples of a batch of inputs, repeated if the batch is smaller."""
    if isinstance(inputs, dict):
        return {k: slice_inputs(v, count) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(slice_inputs(v, count) for v in inputs)
    if inputs.shape[0] < count:
        reps = math.ceil(count / inputs.shape[0])
        inputs = inputs.repeat(reps, *([1] * (inputs.dim() - 1)))
    return inputs[:count].contiguous()


def describe_inputs(inputs: Any) -> str:
    """The shapes of a batch of inputs as text, for error messages."""
    if isinstance(inputs, dict):
        return "{" + ", ".join(f"{k}: {tuple(v.shape)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, (tuple, list)):
        return "(" + ", ".join(str(tuple(v.shape)) for v in inputs) + ")"
    return str(tuple(inputs.shape))


def calibration_batches(task: Task | None, count: int, what: str) -> list[Batch]:
    """Up to ``count`` batches of the task's train split (its test split when it has none).

    Raises:
        ConfigError: no task (``what`` names the step that needs the data).
    """
    if task is None:
        hint = ", or use importance='magnitude'" if "importance" in what else ""
        raise ConfigError(f"{what} needs calibration data; pass task= to apply{hint}")
    split = "train" if getattr(task, "train", None) is not None else "test"
    batches = []
    for batch in task.loader(split, shuffle=False):
        batches.append(batch)
        if len(batches) >= count:
            break
    return batches
