"""Task: training loop, cached deterministic baseline, metrics, bad inputs."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import torchslim as ts
from helpers import blobs, tiny_mlp


def test_baseline_is_cached_and_loads_instantly(tiny_task):
    first = tiny_task.baseline(progress=False)
    path = tiny_task.cache_path()
    assert path.exists()
    stamp = path.stat().st_mtime_ns
    start = time.perf_counter()
    second = tiny_task.baseline(progress=False)
    assert time.perf_counter() - start < 1.0
    assert path.stat().st_mtime_ns == stamp  # loaded, not retrained
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert tiny_task.baseline_info()["train_steps"] == 5 * 8  # 5 epochs of 240/32 -> 8 batches


def test_training_is_deterministic_for_a_seed(tiny_task):
    first = tiny_task.baseline(progress=False, retrain=True)
    second = tiny_task.baseline(progress=False, retrain=True)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_cache_key_follows_the_definition(tiny_task):
    longer = dataclasses.replace(
        tiny_task, train_config=dataclasses.replace(tiny_task.train_config, epochs=6)
    )
    other_data = dataclasses.replace(tiny_task, train=blobs(240, seed=7))
    keys = {tiny_task.fingerprint(), longer.fingerprint(), other_data.fingerprint()}
    assert len(keys) == 3
    assert tiny_task.fingerprint() == dataclasses.replace(tiny_task).fingerprint()


def test_user_module_is_never_modified():
    model = tiny_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = ts.Task(
        name="given",
        model=model,
        train=blobs(),
        test=blobs(seed=2),
        train_config=ts.TrainConfig(lr=0.05, epochs=2, batch_size=32),
    )
    trained = task.baseline(progress=False)
    assert trained is not model
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert task.evaluate(trained) > task.evaluate(model)


def test_pretrained_model_with_zero_epochs_is_used_as_given():
    model = tiny_mlp()
    task = ts.Task(
        name="as-given", model=model, test=blobs(seed=2), train_config=ts.TrainConfig(epochs=0)
    )
    baseline = task.baseline(progress=False)
    for key, value in model.state_dict().items():
        assert torch.equal(baseline.state_dict()[key], value)


def test_fit_reports_steps_and_history(tiny_task):
    model = tiny_task.build_model()
    seen = []
    result = tiny_task.fit(model, epochs=2, after_step=lambda m, step: seen.append(step))
    assert result.steps == 16 and seen == list(range(1, 17))
    assert len(result.history) == 2 and result.final_loss < result.history[0]["loss"] * 1.5
    assert "val_accuracy" in result.history[-1]


def test_nan_loss_stops_and_names_the_step(tiny_task):
    calls = {"n": 0}

    def objective(model, batch):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
        return loss * float("nan") if calls["n"] == 3 else loss

    with pytest.raises(
        ts.TrainingError,
        match=r"loss became nan at epoch 1, step 3 \(global step 3\); lower the learning rate",
    ):
        tiny_task.fit(tiny_task.build_model(), objective=objective)


def test_diverging_learning_rate_is_caught(tiny_task):
    data = blobs()
    data = TensorDataset(data.tensors[0] * 1e30, data.tensors[1])
    task = dataclasses.replace(tiny_task, train=data)
    with pytest.raises(ts.TrainingError, match="loss became (nan|inf)"):
        task.fit(task.build_model(), epochs=3, lr=1e10)


def test_rejected_example_inputs_give_a_shape_error():
    task = ts.Task(
        name="wrong-shape",
        model=lambda: nn.Linear(64, 3),
        train=blobs(features=10),
        test=blobs(features=10, seed=2),
        train_config=ts.TrainConfig(epochs=1),
    )
    with pytest.raises(ts.ShapeError, match=r"rejects example inputs of shape \(2, 10\)"):
        task.baseline(progress=False)
    assert not task.cache_path().exists()


def test_metrics_top_k_cosine_and_callable(tiny_task):
    model = tiny_task.baseline(progress=False)
    loader = tiny_task.loader("test")
    top1 = ts.Accuracy(1)(model, loader)
    top3 = ts.Accuracy(3)(model, loader)
    assert top3 == 1.0 and top1 <= top3  # 3 classes: top-3 is always right
    assert ts.CosineFidelity(model)(model, loader) == pytest.approx(1.0, abs=1e-6)
    flipped = tiny_mlp()
    flipped.load_state_dict({k: -v for k, v in model.state_dict().items()})
    assert ts.CosineFidelity(model)(flipped, loader) < 0.9

    def constant(model, loader):
        return 0.25

    task = dataclasses.replace(tiny_task, metric=constant)
    assert task.metric_name == "constant" and task.evaluate(model) == 0.25
    assert dataclasses.replace(tiny_task, metric="top2").metric_name == "top2"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1}, "lr must be a positive number"),
        ({"epochs": -1}, "epochs must be >= 0"),
        ({"optimizer": "lion"}, "optimizer 'lion' is unknown"),
        ({"schedule": "step"}, "schedule 'step' is unknown"),
    ],
)
def test_train_config_validation(kwargs, message):
    with pytest.raises(ts.ConfigError, match=message):
        ts.TrainConfig(**kwargs)


def test_unknown_metric_is_a_config_error():
    with pytest.raises(ts.ConfigError, match="metric 'f1' is unknown"):
        ts.Task(
            name="x",
            model=tiny_mlp,
            test=blobs(),
            metric="f1",
            train_config=ts.TrainConfig(epochs=0),
        )


@pytest.mark.slow
def test_mnist1d_cnn_reaches_85_percent():
    task = ts.tasks.get("mnist1d-cnn")
    model = task.baseline(progress=False)
    accuracy = task.evaluate(model, "test")
    assert accuracy >= 0.85, accuracy
    assert ts.count_parameters(model) == 5210


def test_building_and_training_leave_the_callers_rng_alone(tiny_task):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_task.fingerprint()
    tiny_task.fit(tiny_task.build_model(), epochs=1)
    assert torch.equal(torch.rand(3), expected)
