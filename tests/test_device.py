"""Device plumbing, tested on a CPU-only torch: every training / statistics entry point
runs the model on the task's device, and no tensor is created on a hard-coded device.

The task's device is ``cpu:0`` here: a CPU device that differs (as a ``torch.device``)
from a hard-coded ``cpu``, so a block that moved the model to ``torch.device("cpu")``
instead of the task's device is caught. Two watchers run while each entry point does:

- a global forward pre-hook: every forward pass on a batch that came from the task's data
  must run on a module inside an ``on_device`` block of the task's device;
- a torch function mode: inside those blocks, a tensor created by torchslim code with no
  device (the default one, i.e. the CPU whatever the task asked) or ``device="cpu"``
  written in the code is a failure (on a GPU it would mix host and device tensors).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader
from torch.utils.data._utils.collate import default_collate

import torchslim as ts
from helpers import blobs, tiny_mlp
from torchslim.device import ACTIVE, resolve_device, to_device
from torchslim.errors import ConfigError
from torchslim.techniques import ApplyContext, apply, config_from_dict

SOURCE = str(Path(ts.__file__).parent)
TASK_DEVICE = torch.device("cpu", 0)
PLUMBING = ("torch/overrides.py", "torch/utils/_device.py")
FACTORIES = {
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.tensor,
    torch.as_tensor,
    torch.arange,
    torch.linspace,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.eye,
}


class Watch(TorchFunctionMode):
    """Records hard-coded-device tensor creations by torchslim code inside device blocks,
    and forward passes on the task's batches outside them (or on another device)."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list[str] = []
        self.outside: list[str] = []
        self.devices: set[torch.device] = set()
        self.marked: set[int] = set()
        self.handle = None

    def mark(self, batch):
        inputs = batch[0]
        self.marked.add(id(inputs))
        weakref.finalize(inputs, self.marked.discard, id(inputs))
        return batch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and ACTIVE and kwargs.get("device") in (None, "cpu"):
            frame = sys._getframe(1)  # the caller of the factory (the mode's own frames skipped)
            while frame is not None and frame.f_code.co_filename.endswith(PLUMBING):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(SOURCE):
                where = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"
                self.created.append(f"{func.__name__} at {where}")
        return func(*args, **kwargs)

    def pre_hook(self, module: nn.Module, args) -> None:
        if args and isinstance(args[0], torch.Tensor) and id(args[0]) in self.marked:
            if id(module) not in ACTIVE:
                self.outside.append(type(module).__name__)
            else:
                self.devices.add(ACTIVE[id(module)])

    def __enter__(self):
        self.handle = nn.modules.module.register_module_forward_pre_hook(self.pre_hook)
        return super().__enter__()

    def __exit__(self, *exc):
        self.handle.remove()
        return super().__exit__(*exc)


def _task(watch: Watch, epochs: int = 2) -> ts.Task:
    def loader(data, shuffle: bool) -> DataLoader:  # the user's loaders, used as they are
        generator = torch.Generator().manual_seed(0)
        collate = lambda items: watch.mark(default_collate(items))  # noqa: E731
        return DataLoader(data, 32, shuffle=shuffle, generator=generator, collate_fn=collate)

    return ts.Task(
        name="device-tiny",
        model=tiny_mlp,
        train=loader(blobs(192, seed=0), True),
        val=loader(blobs(60, seed=1), False),
        test=loader(blobs(60, seed=2), False),
        train_config=ts.TrainConfig(lr=0.05, epochs=epochs, batch_size=32, seed=0),
    )


@pytest.fixture
def watched(monkeypatch):
    """A watch and its task on ``cpu:0``, a trained baseline, and a check of both."""
    watch = Watch()
    task = _task(watch)
    monkeypatch.setattr(ts.Task, "device", property(lambda self: TASK_DEVICE))
    base = tiny_mlp()
    task.fit(base, progress=False)

    def check() -> None:
        assert not watch.created, watch.created
        assert not watch.outside, watch.outside
        assert watch.devices == {TASK_DEVICE}, watch.devices
        watch.devices.clear()

    return watch, task, base, check


ENTRY_POINTS = {
    "qat": {"type": "qat", "bits": 8, "epochs": 1},
    "codebook": {"type": "codebook_quant", "bits": 3, "epochs": 1},
    "agp": {"type": "gradual_pruning", "sparsity": 0.5, "epochs": 2},
    "gradient": {"type": "gradient_pruning", "sparsity": 0.5},
    "taylor": {"type": "taylor_pruning", "sparsity": 0.5},
    "static_quant": {"type": "static_quant", "bits": 8, "bias_correction": True},
    "channels_taylor": {"type": "channel_pruning", "ratio": 0.25, "importance": "taylor"},
    "distill": {"type": "distill", "epochs": 1},
    "early_exit": {"type": "early_exit", "epochs": 1, "exits": ["1"]},
}


def test_fit_and_evaluate_run_on_the_task_device(watched) -> None:
    watch, task, base, check = watched
    with watch:
        task.fit(base, epochs=1, progress=False)
        metric = task.evaluate(base, "val")
    check()
    assert metric > 0.8  # the blobs are separable: a real metric, not a stub
    assert all(p.device.type == "cpu" for p in base.parameters())


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_technique_runs_on_the_task_device(watched, name) -> None:
    watch, task, base, check = watched
    config = config_from_dict(ENTRY_POINTS[name])
    context = ApplyContext(task=task)
    context.teacher = base
    with watch:
        try:
            model = apply(tiny_mlp() if name == "distill" else base, config, task, context=context)
        except ts.errors.UnsupportedError as exc:  # e.g. no exit point in a 2-layer MLP
            pytest.skip(str(exc))
    check()
    assert all(t.device.type == "cpu" for t in model.state_dict().values())  # saved from CPU


def test_distillation_with_mixup_and_sensitivity_loss(watched) -> None:
    from torchslim.search.sensitivity import split_loss
    from torchslim.techniques.distillation import distill

    watch, task, base, check = watched
    student = tiny_mlp()
    with watch:
        distill(student, base, task, epochs=1, mixup=0.4)  # randperm on the batch's device
        loss = split_loss(task, student, "val")
    check()
    assert 0 < loss < 1.2  # 3 classes: chance is ln 3 = 1.10


def test_the_watch_catches_a_hard_coded_device(watched) -> None:
    """The checks above can fail: a block on a hard-coded CPU, and a default-device tensor."""
    from torchslim.device import on_device

    watch, task, base, check = watched
    with watch, on_device(base, torch.device("cpu")):
        for batch in task.loader("val"):
            base(batch[0])
            torch.zeros(3)  # from this test file: not torchslim code, not recorded
    assert watch.devices == {torch.device("cpu")}
    with pytest.raises(AssertionError):
        check()
    from torchslim.techniques import distillation

    watch2 = Watch()
    with watch2, on_device(base, TASK_DEVICE):
        distillation.FeatureHints([], []).forward({}, {"x": torch.ones(1)})
        exec(  # a line of torchslim code that forgets the device
            compile("torch.zeros(2)", distillation.__file__, "exec"), {"torch": torch}
        )
    assert watch2.created == [f"zeros at {Path(distillation.__file__).name}:1"]


def test_device_specs_and_the_error_for_a_missing_accelerator() -> None:
    if torch.cuda.is_available():
        pytest.skip("this check is for a machine without CUDA")
    assert resolve_device("auto") == (
        torch.device("mps") if torch.backends.mps.is_available() else torch.device("cpu")
    )
    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError) as error:
            resolve_device(name)
        message = str(error.value)
        assert "\n" not in message and "sees 0 CUDA device(s)" in message
        assert torch.__version__ in message
    with pytest.raises(ConfigError, match="device 'gpu' is unknown"):
        ts.TrainConfig(device="gpu")
    with pytest.raises(ConfigError, match="amp 'fp8' is unknown"):
        ts.TrainConfig(amp="fp8")
    task = _task(Watch())
    task.train_config = dataclasses.replace(task.train_config, amp="fp16")
    with pytest.raises(ConfigError, match="fp16 needs an accelerator"):
        task.fit(tiny_mlp(), progress=False)
    batch = {"x": torch.ones(2), "y": [torch.zeros(1)], "n": 3}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["x"] is batch["x"] and moved["n"] == 3


def test_bf16_training_on_cpu_learns() -> None:
    task = _task(Watch(), epochs=3)
    task.train_config = dataclasses.replace(task.train_config, amp="bf16")
    model = tiny_mlp()
    result = task.fit(model, progress=False)
    assert result.steps == 3 * 6
    assert task.evaluate(model, "val") > 0.8
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_cli_device_cuda_without_cuda_is_one_line() -> None:
    if torch.cuda.is_available():
        pytest.skip("this check is for a machine without CUDA")
    run = subprocess.run(
        [sys.executable, "-m", "torchslim", "train", "digits-mlp", "--device", "cuda"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "sees 0 CUDA device(s)" in lines[0], run.stderr


def test_torch_latency_runs_on_the_task_device_and_waits_for_it(monkeypatch):
    """Latency on the user's device: copies of the models on that device, inputs moved once,
    a synchronisation after every timed sample, the device named in the footprint; the
    models given stay where they were. (cpu:0 stands for an accelerator here.)"""
    import torchslim.device as device_module
    from torchslim.measure import benchmark_latency

    seen: list[int] = []
    synced: list[torch.device] = []

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(id(self))  # a CPU tensor drops the index of cpu:0: check the copy
            return self.layer(x)

    real = device_module.synchronize
    monkeypatch.setattr(device_module, "synchronize", lambda d: (synced.append(d), real(d)))
    model = Probe()
    stats = benchmark_latency([model], torch.randn(4, 8), device=TASK_DEVICE, repeats=5, warmup=1)
    assert stats[0].repeats == 5 and stats[0].median_ms > 0
    assert seen and id(model) not in seen  # a copy was moved to the device and timed
    assert len(synced) == 1 + 1 + 5 and all(d == torch.device("cpu", 0) for d in synced)
    assert next(model.parameters()).device == torch.device("cpu")  # the caller's model stays

    task = ts.Task(
        name="latency-device",
        model=tiny_mlp,
        train=blobs(64, seed=0),
        test=blobs(32, seed=2),
        train_config=ts.TrainConfig(epochs=0, device=TASK_DEVICE),
    )
    footprint = ts.measure(model, task, latency=True, batch_n=2)
    assert footprint.device == "cpu:0" and footprint.latency_ms["batch_1"] > 0
    onnx = ts.measure(model, task, latency=True, batch_n=2, runtime="onnxruntime")
    assert onnx.device == "cpu"  # ONNX Runtime runs on the CPU whatever the training device
