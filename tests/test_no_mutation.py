"""Nothing torchslim is given is mutated: a mixed-mode model through every entry point."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import torchslim as ts
from helpers import blobs
from torchslim.errors import TorchslimError
from torchslim.search.optimize import optimize
from torchslim.techniques import CONFIGS, apply


class MixedNet(nn.Module):
    """Conv + BatchNorm + Dropout + Linear on 8 features (viewed as a 1-channel signal)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 8, 3, padding=1),
            nn.BatchNorm1d(8),
            nn.ReLU(),
            nn.Conv1d(8, 8, 3, padding=1),
            nn.BatchNorm1d(8),
            nn.ReLU(),
        )
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x.unsqueeze(1)).flatten(1)))


def mixed_model() -> nn.Module:
    """Training root, one BatchNorm and the Dropout in eval mode, a frozen bias, a user hook."""
    torch.manual_seed(0)
    model = MixedNet().train()
    model.features[1].eval()
    model.drop.eval()
    model.features[0].bias.requires_grad_(False)
    model.fc.register_forward_hook(lambda module, args, out: None)
    model.features[0].register_forward_pre_hook(lambda module, args: None)
    return model


def snapshot(model: nn.Module) -> dict:
    return {
        "modules": [(n, type(m).__name__, m.training) for n, m in model.named_modules()],
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "hooks": [
            (n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for n, m in model.named_modules()
        ],
    }


def assert_unchanged(model: nn.Module, before: dict, what: str) -> None:
    after = snapshot(model)
    assert after["modules"] == before["modules"], f"{what}: module types or training flags changed"
    assert after["grad"] == before["grad"], f"{what}: requires_grad changed"
    assert after["hooks"] == before["hooks"], f"{what}: hooks changed"
    assert after["state"].keys() == before["state"].keys(), f"{what}: state keys changed"
    for key, tensor in before["state"].items():
        assert torch.equal(after["state"][key], tensor), f"{what}: {key} changed"


@pytest.fixture(scope="module")
def task() -> ts.Task:
    return ts.Task(
        name="mixed",
        model=MixedNet,
        train=blobs(96, seed=0),
        val=blobs(48, seed=1),
        test=blobs(48, seed=2),
        train_config=ts.TrainConfig(lr=0.05, epochs=1, batch_size=32, seed=0),
    )


def test_mixed_modes_survive_evaluation_measurement_and_export(task, tmp_path, one_thread):
    from torchslim.export.convert import export_artifact
    from torchslim.measure import artifact_bytes, measure_many

    model = mixed_model()
    before = snapshot(model)
    assert [m.training for m in model.modules()].count(False) == 2  # really mixed
    task.evaluate(model)
    assert_unchanged(model, before, "evaluate")
    ts.measure(model, task, latency=False)
    assert_unchanged(model, before, "measure")
    artifact_bytes(model, tmp_path / "a.safetensors", task.inputs(4))
    assert_unchanged(model, before, "artifact_bytes")
    measure_many([model, model], task, latency=True, batch_n=4, latency_seconds=0.02)
    assert_unchanged(model, before, "measure_many with the torch runtime")
    for fmt in ("torch", "onnx", "onnx-int8", "packed"):
        export_artifact(model, task, fmt, tmp_path / f"m.{fmt}")
        assert_unchanged(model, before, f"export {fmt}")


CHEAP = {
    "epochs": 1,
    "steps": 2,
    "epochs_per_step": 1,
    "trials": 1,
    "batches": 1,
    "calibration_batches": 1,
    "iterations": 2,
}


def cheap_config(name: str):
    cls = CONFIGS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in CHEAP.items() if k in fields}
    if name == "student":
        kwargs.update(model=MixedNet)
    return cls(**kwargs)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_apply_of_every_technique_leaves_the_model_alone(task, name, one_thread):
    model = mixed_model()
    before = snapshot(model)
    try:
        config = cheap_config(name)
        apply(model, config, task)
    except TorchslimError:
        pass  # a technique that does not fit this model: it must still leave it alone
    except RuntimeError:  # these two assume image-shaped inputs (not this model's concern)
        assert name in ("early_exit", "student_search"), name
    assert_unchanged(model, before, f"apply({name})")


def test_optimizer_leaves_the_task_model_alone(task, tmp_path, one_thread):
    model = mixed_model()
    before = snapshot(model)
    mixed = ts.Task(
        name="mixed-opt",
        model=model,
        train=task.train,
        val=task.val,
        test=task.test,
        train_config=task.train_config,
    )
    stored = mixed.model if isinstance(mixed.model, nn.Module) else None
    stored_before = snapshot(stored) if stored is not None else None
    optimize(
        mixed,
        max_drop=5.0,
        techniques=["magnitude_pruning"],
        trials=1,
        recovery_epochs=0,
        sensitivity_epochs=0,
        out=tmp_path,
        progress=False,
        latency=False,
    )
    assert_unchanged(model, before, "optimize (the model given)")
    if stored is not None:
        assert_unchanged(stored, stored_before, "optimize (the task's copy)")
