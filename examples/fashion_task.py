"""Your own model on your own data: a plain PyTorch CNN on Fashion-MNIST.

Copy this file and replace ``FashionNet`` and ``load_data`` with yours. Then:

    torchslim train examples/fashion_task.py:task
    torchslim optimize examples/fashion_task.py:task --max-drop 1 --objective latency \
        --runtime onnxruntime --out out/fashion

The answer reloads from its file and this architecture (README, "Your own task"):

    model = torchslim.load("out/optimize/best.safetensors", model=FashionNet)

The data are the four IDX files of Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``; ``--data-dir DIR`` or the environment variable
``FASHION_DATA`` for another folder), read with ``torchslim.data.load_idx``. Nothing is
downloaded. For a quick try, the environment variables ``FASHION_LIMIT`` (samples per
split) and ``FASHION_EPOCHS`` shrink the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

import torchslim as ts
from torchslim.data import load_idx

DATA_DIR = "/usr/share/datasets/fashion-mnist"


class FashionNet(nn.Module):
    """A user's CNN, written without torchslim: three conv blocks, a residual, a classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.MaxPool2d(2)
        )
        self.block = nn.Sequential(
            nn.Conv2d(24, 24, 3, padding=1, bias=False),
            nn.BatchNorm2d(24),
            nn.ReLU(),
            nn.Conv2d(24, 24, 3, padding=1, bias=False),
            nn.BatchNorm2d(24),
        )
        self.down = nn.Sequential(
            nn.Conv2d(24, 48, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(48), nn.ReLU()
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(48, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))  # 28x28 -> 14x14
        x = torch.relu(x + self.block(x))  # a residual: pruning keeps both sides the same width
        return self.head(self.down(x))  # 7x7, pooled


def _pair(folder: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as normalized (N, 1, 28, 28) float32 and labels as int64, from two IDX files."""
    images = load_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = load_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return (x - 0.2860) / 0.3530, torch.from_numpy(labels.astype(np.int64))


def load_data(data_dir: str | None = None, limit: int | None = None):
    """Train / val / test TensorDatasets; val = the last 5,000 training images (1/12 of them)."""
    folder = Path(data_dir or os.environ.get("FASHION_DATA") or DATA_DIR)
    x, y = _pair(folder, "train")
    x_test, y_test = _pair(folder, "t10k")
    cut = len(y) - len(y) // 12
    splits = [(x[:cut], y[:cut]), (x[cut:], y[cut:]), (x_test, y_test)]
    if limit:
        splits = [(a[:limit], b[:limit]) for a, b in splits]
    return [TensorDataset(a, b) for a, b in splits]


def task(data_dir: str | None = None) -> ts.Task:
    """The task torchslim optimizes: model + data + training recipe (metric: accuracy)."""
    limit = int(os.environ.get("FASHION_LIMIT", "0")) or None
    epochs = int(os.environ.get("FASHION_EPOCHS", "4"))
    train, val, test = load_data(data_dir, limit)
    return ts.Task(
        name="fashion-user-cnn",
        model=FashionNet,  # a factory: torchslim builds (and seeds) a fresh model from it
        train=train,
        val=val,
        test=test,
        train_config=ts.TrainConfig(
            optimizer="adam", lr=2e-3, epochs=epochs, batch_size=128, seed=0, threads=1
        ),
    )
