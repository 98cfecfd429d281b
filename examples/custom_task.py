"""A user task: `torchslim train examples/custom_task.py:make_task`.

Any function returning a torchslim.Task works; here, two-moons data from
scikit-learn (generated, nothing downloaded) and a small MLP.
"""

import torch
from sklearn.datasets import make_moons
from torch import nn
from torch.utils.data import TensorDataset

import torchslim as ts


def _split(samples: int, seed: int) -> TensorDataset:
    x, y = make_moons(n_samples=samples, noise=0.2, random_state=seed)
    return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))


def make_task() -> ts.Task:
    return ts.Task(
        name="moons-mlp",
        model=lambda: nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)),
        train=_split(2000, 0),
        val=_split(400, 1),
        test=_split(1000, 2),
        train_config=ts.TrainConfig(optimizer="adam", lr=1e-2, epochs=20, batch_size=64, seed=0),
    )
