"""Built-in tasks by name and user tasks from file.py:function."""

from __future__ import annotations

import pytest
import torch

import torchslim as ts
from helpers import file_digest

USER_TASK = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
import torchslim as ts

def make_task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g)
    y = (x[:, 0] > 0).long()
    data = TensorDataset(x, y)
    return ts.Task(name="user-task", model=lambda: nn.Linear(4, 2), train=data, test=data,
                   train_config=ts.TrainConfig(lr=0.1, epochs=10, batch_size=50))

def make_mlp_task():
    task = make_task()
    task.name = "user-mlp"
    task.model = lambda: nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    return task

def not_a_task():
    return 42

def broken():
    raise RuntimeError("boom")
"""


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_task.py"
    path.write_text(USER_TASK)
    return path


def test_builtin_tasks_are_registered():
    names = {entry.name for entry in ts.tasks.list_tasks()}
    assert {"mnist1d-cnn", "digits-mlp", "digits32-vgg", "cifar10-vgg"} <= names
    assert ts.tasks.DEFAULT_TASK == "mnist1d-cnn"


@pytest.mark.parametrize(
    ("name", "shape", "params"),
    [
        ("mnist1d-cnn", (1, 40), 5210),
        ("digits-mlp", (64,), 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),
        ("digits32-resnet", (3, 32, 32), None),
        ("digits32-mobilenet", (3, 32, 32), None),
    ],
)
def test_builtin_task_models_accept_their_data(name, shape, params):
    task = ts.tasks.get(name)
    assert tuple(task.inputs(1).shape[1:]) == shape
    model = task.build_model()
    task.check_inputs(model)
    assert model(task.inputs(2)).shape == (2, 10)
    if params is not None:
        assert ts.count_parameters(model) == params


def test_digits32_vgg_has_the_eight_conv_layout():
    model = ts.tasks.get("digits32-vgg").build_model()
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [64, 64, 128, 128, 256, 256, 512, 512]


def test_unknown_task_lists_the_names():
    with pytest.raises(
        ts.TaskError, match=r"unknown task 'mnist2d'; use one of .*mnist1d-cnn.*file.py:function"
    ):
        ts.tasks.get("mnist2d")


def test_cifar10_needs_a_data_dir(tmp_path):
    with pytest.raises(ts.TaskError, match="needs the CIFAR-10 python batches: pass --data-dir"):
        ts.tasks.get("cifar10-vgg")
    with pytest.raises(ts.DataError, match="not found"):
        ts.tasks.get("cifar10-vgg", data_dir=str(tmp_path / "nowhere"))


def test_user_task_from_file(user_file):
    before = file_digest(user_file)
    task = ts.tasks.get(f"{user_file}:make_task")
    assert task.name == "user-task" and task.source == f"{user_file.resolve()}:make_task"
    model = task.baseline(progress=False)
    assert task.evaluate(model) > 0.9
    assert file_digest(user_file) == before


@pytest.mark.parametrize(
    ("suffix", "error"),
    [
        (":missing", "has no function 'missing'; functions there: .*make_task"),
        (":not_a_task", "returned int, not a torchslim.Task"),
        (":broken", "raised RuntimeError: boom"),
    ],
)
def test_bad_user_tasks(user_file, suffix, error):
    with pytest.raises(ts.TaskError, match=error):
        ts.tasks.get(f"{user_file}{suffix}")


def test_user_task_file_that_does_not_exist(tmp_path):
    with pytest.raises(ts.TaskError, match="does not exist; pass path/to/file.py:function"):
        ts.tasks.get(f"{tmp_path}/nope.py:make_task")
