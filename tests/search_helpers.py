"""Tiny tasks for the optimizer tests, and a worker entry point for subprocess tests.

``python tests/search_helpers.py STORAGE STUDY TRIALS`` runs one Optuna worker on the
tiny blob task (used by the kill/resume and two-worker tests).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

import torchslim as ts  # noqa: E402
from helpers import blobs  # noqa: E402


def make_task() -> ts.Task:
    """A 3-class blob task with an 8-32-3 MLP: trains in a second."""
    return ts.Task(
        name="search-tiny",
        model=lambda: nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)),
        train=blobs(240, seed=0),
        val=blobs(90, seed=1),
        test=blobs(90, seed=2),
        train_config=ts.TrainConfig(lr=0.05, epochs=4, batch_size=32, seed=0, threads=1),
    )


def planted_task() -> ts.Task:
    """A linear model with one planted sensitive layer (``1``) between two robust ones.

    Layer ``0`` copies the 8 inputs into 8 of its 64 outputs; the other 56 rows are tiny
    noise, so pruning up to ~87 % of it removes only noise. Layer ``1`` mixes the copies
    with a Hadamard matrix whose entries all have the same, *small* magnitude, next to
    large weights that only ever see the noise rows: magnitude pruning removes the
    Hadamard entries first and destroys the signal. Layer ``2`` is a nearest-center
    classifier on the mixed features.
    """
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=torch.Generator().manual_seed(1234)) * 3
    hadamard = torch.tensor([[1.0]])
    while hadamard.shape[0] < 8:
        hadamard = torch.cat(
            [torch.cat([hadamard, hadamard], 1), torch.cat([hadamard, -hadamard], 1)]
        )
    mix = hadamard / 8**0.5  # orthonormal
    model = nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 8), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(64, 8, generator=generator) * 1e-4)
        model[0].weight[:8] = 3 * torch.eye(8)
        model[0].bias.zero_()
        signs = torch.randint(0, 2, (8, 56), generator=generator).float() * 2 - 1
        model[1].weight[:, :8] = mix / 3
        model[1].weight[:, 8:] = signs
        model[1].bias.zero_()
        model[2].weight.copy_(centers @ mix.T)
        model[2].bias.copy_(-0.5 * (centers**2).sum(1))
    return ts.Task(
        name="planted",
        model=model,
        train=blobs(240, seed=0),
        val=blobs(150, seed=1),
        test=blobs(150, seed=2),
        train_config=ts.TrainConfig(epochs=0),
    )


def main(argv: list[str]) -> int:
    """Run one optimizer worker: STORAGE STUDY TRIALS [--barrier DIR WORKERS] [--out DIR]
    [--heartbeat SECONDS] [--epochs N] (recovery epochs per trial)."""
    import argparse

    from torchslim.search.optimize import optimize

    parser = argparse.ArgumentParser()
    parser.add_argument("storage")
    parser.add_argument("study")
    parser.add_argument("trials", type=int)
    parser.add_argument("--barrier", nargs=2)
    parser.add_argument("--out")
    parser.add_argument("--heartbeat", type=int)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.barrier:  # a barrier folder: start only when every worker is ready
        import os
        import time

        folder, workers = Path(args.barrier[0]), int(args.barrier[1])
        folder.mkdir(exist_ok=True)
        (folder / str(os.getpid())).touch()
        deadline = time.monotonic() + 60
        while len(list(folder.iterdir())) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
    result = optimize(
        make_task(),
        max_drop=2.0,
        strategy="optuna",
        techniques=["magnitude_pruning"],
        trials=args.trials,
        storage=args.storage,
        study=args.study,
        seed=None,
        recovery_epochs=args.epochs,
        out=args.out,
        heartbeat=args.heartbeat,
        progress=False,
        latency=False,
    )
    print("answered_by", result.answered_by, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
