"""Helpers shared by the tests: tiny data and models."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset


def blobs(samples: int = 240, features: int = 8, classes: int = 3, seed: int = 0) -> TensorDataset:
    """Separable Gaussian blobs: a tiny classification problem that trains in a second."""
    centers = torch.randn(classes, features, generator=torch.Generator().manual_seed(1234)) * 3
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(samples) % classes
    inputs = centers[labels] + torch.randn(samples, features, generator=generator)
    return TensorDataset(inputs, labels)


def tiny_mlp(features: int = 8, classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))


def file_digest(path: Path) -> str:
    """sha256 of a file: to check that inputs are never modified."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


FOOTPRINT_KEYS = {
    "metric",
    "params",
    "nonzero_params",
    "artifact_bytes",
    "macs",
    "latency_ms",
    "runtime",
    "artifact",
}
"""The footprint keys of the results.json contract."""

CANDIDATE_KEYS = FOOTPRINT_KEYS | {
    "name",
    "techniques",
    "metric_drop",
    "size_ratio",
    "params_ratio",
    "macs_ratio",
    "speedup",
    "simulated",
    "train_seconds",
    "recipe",
}
"""The keys every results.json candidate carries (the contract of the demo/report issue)."""
