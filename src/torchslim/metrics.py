"""Metrics: callables ``(model, loader) -> float`` where higher is better.

Built in: top-1 accuracy, top-k accuracy and cosine fidelity to a reference
model's outputs. Any user callable with the same signature works too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from torchslim.errors import ConfigError


class Metric(Protocol):
    """A named score of a model on a loader; higher is better."""

    name: str

    def __call__(self, model: nn.Module, loader: DataLoader) -> float: ...


def _batches(model: nn.Module, loader: DataLoader):
    from torchslim.batches import call_model, split_batch
    from torchslim.device import model_device, to_device

    device = model_device(model)
    for batch in loader:
        inputs, target = split_batch(to_device(batch, device))
        yield inputs, target, call_model(model, inputs)


class Accuracy:
    """Top-k accuracy as a fraction in [0, 1]."""

    def __init__(self, k: int = 1) -> None:
        if k < 1:
            raise ConfigError(f"top-k accuracy needs k >= 1, got {k}")
        self.k = k
        self.name = "accuracy" if k == 1 else f"top{k}"

    @torch.no_grad()
    def __call__(self, model: nn.Module, loader: DataLoader) -> float:
        correct, total = 0, 0
        for _, target, outputs in _batches(model, loader):
            if target is None:
                raise ConfigError("accuracy needs labelled data (batches of (inputs, target))")
            logits = outputs if isinstance(outputs, torch.Tensor) else outputs[0]
            k = min(self.k, logits.shape[-1])
            top = logits.topk(k, dim=-1).indices
            correct += int((top == target.view(-1, 1)).any(dim=-1).sum())
            total += int(target.numel())
        if total == 0:
            raise ConfigError("accuracy was asked of an empty data split; give the task test data")
        return correct / total


class CosineFidelity:
    """Mean cosine similarity of a model's outputs to a reference model's outputs.

    Used for embedding models and to check that a compressed model still computes
    what the original did, independently of labels.
    """

    name = "cosine_fidelity"

    def __init__(self, reference: nn.Module) -> None:
        self.reference = reference.eval()

    @torch.no_grad()
    def __call__(self, model: nn.Module, loader: DataLoader) -> float:
        from torchslim.batches import call_model
        from torchslim.device import model_device, on_device

        total, count = 0.0, 0
        device = model_device(model) or torch.device("cpu")
        with on_device(self.reference, device):  # the reference runs where the model does
            for inputs, _, outputs in _batches(model, loader):
                expected = call_model(self.reference, inputs)
                sims = F.cosine_similarity(
                    outputs.flatten(1).float(), expected.flatten(1).float(), dim=1, eps=1e-12
                )
                total += float(sims.sum())
                count += sims.numel()
        if count == 0:
            raise ConfigError("cosine fidelity was asked of an empty data split")
        return total / count


class CallableMetric:
    """Wraps a plain function ``(model, loader) -> float``."""

    def __init__(self, function: Callable[[nn.Module, DataLoader], float], name: str | None = None):
        self.function = function
        self.name: str = str(
            name or getattr(function, "name", None) or getattr(function, "__name__", "metric")
        )

    def __call__(self, model: nn.Module, loader: DataLoader) -> float:
        return float(self.function(model, loader))


def resolve_metric(metric: Any) -> Metric:
    """Turn ``"accuracy"``, ``"topK"``, a Metric or a callable into a Metric."""
    if isinstance(metric, str):
        if metric in ("accuracy", "top1"):
            return Accuracy(1)
        match = re.fullmatch(r"top(\d+)", metric)
        if match:
            return Accuracy(int(match.group(1)))
        raise ConfigError(
            f"metric {metric!r} is unknown; use 'accuracy', 'topK' (e.g. 'top5'), "
            "CosineFidelity(reference) or a callable (model, loader) -> float"
        )
    if isinstance(metric, (Accuracy, CosineFidelity, CallableMetric)):
        return metric
    if callable(metric):
        return CallableMetric(metric)
    raise ConfigError(f"metric must be a name or a callable, got {type(metric).__name__}")
