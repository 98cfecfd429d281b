"""Built-in tasks by name, and user tasks as ``path/to/file.py:function``."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchslim.data import (
    FASHION_MNIST_DIR,
    load_cifar10,
    load_digits,
    load_digits32,
    load_fashion_mnist,
    load_mnist1d,
)
from torchslim.errors import ConfigError, TaskError
from torchslim.task import Task, TrainConfig

DEFAULT_TASK = "mnist1d-cnn"
# Training epochs of the Fashion-MNIST tasks (timed in docs/benchmarks.md).
FASHION_RESNET_EPOCHS = 4
FASHION_LENET5_EPOCHS = 8


@dataclass(frozen=True)
class TaskEntry:
    """A registered task: its builder and a one-line description."""

    name: str
    build: Callable[..., Task]
    description: str
    needs_data_dir: bool = False


TASKS: dict[str, TaskEntry] = {}


def register_task(name: str, description: str, needs_data_dir: bool = False):
    """Register ``build(data_dir=None) -> Task`` under ``name``."""

    def decorator(build: Callable[..., Task]) -> Callable[..., Task]:
        TASKS[name] = TaskEntry(name, build, description, needs_data_dir)
        return build

    return decorator


@register_task("mnist1d-cnn", "MNIST-1D (generated) with the paper's 25-channel 1-D CNN (default)")
def mnist1d_cnn(data_dir: str | None = None) -> Task:
    splits = load_mnist1d()
    return Task(
        name="mnist1d-cnn",
        model="mnist1d_cnn",
        train=splits.train,
        val=splits.val,
        test=splits.test,
        train_config=TrainConfig(
            optimizer="adam", lr=1e-2, epochs=150, batch_size=100, seed=0, threads=1
        ),
        source="mnist1d-cnn",
    )


@register_task("digits-mlp", "scikit-learn digits (8x8) with a LeNet-300-100-shaped MLP")
def digits_mlp(data_dir: str | None = None) -> Task:
    splits = load_digits()
    return Task(
        name="digits-mlp",
        model="mlp",
        model_kwargs={"in_features": 64, "hidden": [300, 100], "num_classes": 10},
        train=splits.train,
        val=splits.val,
        test=splits.test,
        train_config=TrainConfig(
            optimizer="adam", lr=1e-3, epochs=40, batch_size=64, seed=0, threads=1
        ),
        source="digits-mlp",
    )


def _split_task(name: str, splits: Any, model: str, config: TrainConfig, **kwargs: Any) -> Task:
    """A built-in task over train / val / test splits with a registered architecture."""
    return Task(
        name=name,
        model=model,
        model_kwargs=kwargs,
        train=splits.train,
        val=splits.val,
        test=splits.test,
        train_config=config,
        source=name,
    )


def _digits32(name: str, model: str, epochs: int, lr: float, **kwargs: Any) -> Task:
    config = TrainConfig(
        optimizer="sgd", lr=lr, epochs=epochs, batch_size=64, seed=0, weight_decay=5e-4
    )
    return _split_task(name, load_digits32(), model, config, **kwargs)


@register_task("digits32-vgg", "digits upsampled to 3x32x32 with the 8-conv VGG-style network")
def digits32_vgg(data_dir: str | None = None) -> Task:
    return _digits32("digits32-vgg", "vgg_cifar", epochs=15, lr=0.02)


@register_task("digits32-resnet", "digits upsampled to 3x32x32 with a small ResNet")
def digits32_resnet(data_dir: str | None = None) -> Task:
    return _digits32("digits32-resnet", "resnet_small", epochs=20, lr=0.05)


@register_task("digits32-mobilenet", "digits upsampled to 3x32x32 with a MobileNet-style net")
def digits32_mobilenet(data_dir: str | None = None) -> Task:
    return _digits32("digits32-mobilenet", "mobilenet_small", epochs=20, lr=0.05)


@register_task(
    "cifar10-vgg", "CIFAR-10 (python batches in --data-dir) with the VGG-style network", True
)
def cifar10_vgg(data_dir: str | None = None) -> Task:
    if data_dir is None:
        raise TaskError(
            "task 'cifar10-vgg' needs the CIFAR-10 python batches: pass --data-dir DIR "
            "(the folder holding data_batch_1..5 and test_batch)"
        )
    splits = load_cifar10(data_dir)
    return Task(
        name="cifar10-vgg",
        model="vgg_cifar",
        train=splits.train,
        val=splits.val,
        test=splits.test,
        train_config=TrainConfig(
            optimizer="sgd", lr=0.05, epochs=30, batch_size=128, seed=0, weight_decay=5e-4
        ),
        source="cifar10-vgg",
    )


def _fashion(
    name: str, data_dir: str | None, model: str, config: TrainConfig, **kwargs: Any
) -> Task:
    """A Fashion-MNIST task; ``data_dir`` defaults to Debian's dataset-fashion-mnist folder."""
    splits = load_fashion_mnist(data_dir if data_dir is not None else FASHION_MNIST_DIR)
    return _split_task(name, splits, model, config, **kwargs)


@register_task(
    "fashion-resnet",
    "Fashion-MNIST (--data-dir, default /usr/share/datasets/fashion-mnist) with a small ResNet",
)
def fashion_resnet(data_dir: str | None = None) -> Task:
    return _fashion(
        "fashion-resnet",
        data_dir,
        "resnet_small",
        TrainConfig(
            optimizer="sgd",
            lr=0.05,
            epochs=FASHION_RESNET_EPOCHS,
            batch_size=128,
            seed=0,
            weight_decay=5e-4,
            threads=1,
        ),
        in_channels=1,
        input_size=28,
        widths=[8, 16, 32],
    )


@register_task("fashion-lenet5", "Fashion-MNIST (--data-dir as fashion-resnet) with LeNet-5")
def fashion_lenet5(data_dir: str | None = None) -> Task:
    return _fashion(
        "fashion-lenet5",
        data_dir,
        "lenet5",
        TrainConfig(
            optimizer="adam",
            lr=2e-3,
            epochs=FASHION_LENET5_EPOCHS,
            batch_size=128,
            seed=0,
            threads=1,
        ),
    )


def list_tasks() -> list[TaskEntry]:
    """The registered built-in tasks."""
    return list(TASKS.values())


# Options of tasks that read a model folder (text-embedding, text-classification): set by
# the CLI (--model-dir, --texts, --pairs, --data, --seq-len, --batch-sizes) or given to get().
OPTION_TASKS: dict[str, Callable[..., Task]] = {}
TASK_OPTIONS: dict[str, Any] = {}


def _hf_task(kind: str) -> Callable[..., Task]:
    def build(data_dir: str | None = None, **options: Any) -> Task:
        from torchslim.hf.loading import require_transformers

        require_transformers()
        from torchslim.hf import tasks as hf_tasks

        options = {k: v for k, v in options.items() if v is not None}
        if not options.get("model_dir"):
            raise TaskError(
                f"task {kind!r} needs --model-dir DIR (a local Hugging Face model folder)"
            )
        if "batch_sizes" in options:
            options["batch_sizes"] = tuple(options["batch_sizes"])
        allowed: tuple[str, ...]
        builder: Callable[..., Task]
        if kind == "text-embedding":
            allowed = ("model_dir", "texts", "pairs", "seq_len", "batch_sizes", "holdout")
            builder = hf_tasks.text_embedding_task
        else:
            allowed = ("model_dir", "data", "seq_len", "batch_sizes")
            builder = hf_tasks.text_classification_task
            if not options.get("data"):
                raise TaskError("task 'text-classification' needs --data FILE.csv or FILE.jsonl")
        return builder(**{k: v for k, v in options.items() if k in allowed})

    return build


for _kind, _text in (
    (
        "text-embedding",
        "sentence-embedding model folder (--model-dir) vs its original: cosine fidelity",
    ),
    (
        "text-classification",
        "Hugging Face classifier folder (--model-dir) on --data text,label: accuracy",
    ),
):
    TASKS[_kind] = TaskEntry(_kind, _hf_task(_kind), _text)
    OPTION_TASKS[_kind] = TASKS[_kind].build


def set_task_options(**options: Any) -> None:
    """Options for option-taking tasks (the CLI's --model-dir, --texts, ...)."""
    TASK_OPTIONS.clear()
    TASK_OPTIONS.update({k: v for k, v in options.items() if v is not None})


def _split_options(name: str) -> tuple[str, dict[str, Any]]:
    """``text-embedding{"model_dir": ...}`` (a task's source) -> name and options."""
    brace = name.find("{")
    if brace > 0 and name[:brace] in OPTION_TASKS:
        try:
            return name[:brace], json.loads(name[brace:])
        except json.JSONDecodeError as exc:
            raise TaskError(f"task reference {name!r} has malformed options ({exc.msg})") from exc
    return name, {}


def get(name: str, data_dir: str | None = None, **options: Any) -> Task:
    """A task by built-in name or as ``path/to/file.py:function``.

    ``options`` go to tasks that take them (``text-embedding``: model_dir, texts, pairs,
    seq_len, batch_sizes; ``text-classification``: model_dir, data, seq_len, batch_sizes).

    Raises:
        TaskError: unknown name, missing file or function, or a function that does
            not return a Task.
    """
    if ":" in name and name.split(":", 1)[0].endswith(".py") and "{" not in name:
        return _load_user_task(name, data_dir)
    name, embedded = _split_options(name)
    if name in OPTION_TASKS:
        return OPTION_TASKS[name](data_dir=data_dir, **{**embedded, **TASK_OPTIONS, **options})
    if name not in TASKS:
        raise TaskError(
            f"unknown task {name!r}; use one of {', '.join(sorted(TASKS))} "
            "or path/to/file.py:function"
        )
    return TASKS[name].build(data_dir=data_dir)


def _load_user_task(reference: str, data_dir: str | None) -> Task:
    file_name, function_name = reference.rsplit(":", 1)
    path = Path(file_name)
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist; pass path/to/file.py:function")
    module_name = f"torchslim_user_task_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TaskError(f"task file {path} cannot be imported as Python; check the file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise TaskError(f"task file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        available = sorted(
            n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
        )
        raise TaskError(
            f"task file {path} has no function {function_name!r}; "
            f"functions there: {', '.join(available) or 'none'}"
        )
    try:
        task = function(data_dir=data_dir) if _accepts(function, "data_dir") else function()
    except ConfigError:
        raise
    except Exception as exc:
        raise TaskError(f"{reference} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(task, Task):
        raise TaskError(
            f"{reference} returned {type(task).__name__}, not a torchslim.Task; "
            "return torchslim.Task(name=..., model=..., train=..., val=..., test=...)"
        )
    if task.source is None:
        task.source = f"{path.resolve()}:{function_name}"
    return task


def _accepts(function: Callable[..., Any], argument: str) -> bool:
    import inspect

    try:
        return argument in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------ tasks named by files
# (a checkpoint's ``task`` key: torchslim.spec checks its type, this decides whether to follow it)


def is_code_reference(reference: str) -> bool:
    """Whether a task reference would import a Python file (``path/file.py:function``)."""
    head = reference.split("{", 1)[0]
    return ":" in head and head.split(":", 1)[0].endswith(".py")


def resolve_task(
    spec: Mapping[str, Any],
    given: str | None,
    where: str,
    *,
    trust: bool = False,
    data_dir: str | None = None,
    option: str = "--task {}",
) -> Task:
    """The task for a checkpoint: ``given`` (the user's ``--task``) or the file's own hint.

    A task named by the file is followed only when it is a built-in name; a ``.py`` file or
    embedded options (paths to read) need ``trust=True`` (the CLI's ``--trust-task``).
    ``option`` is how the user names a task on the command line (a format string).

    Raises:
        TaskError: no task, or the file's task would import code / read paths untrusted.
    """
    if given:
        return get(given, data_dir=data_dir)
    reference = spec.get("task")
    if not reference:
        raise TaskError(
            f"{where} does not name its task; pass {option.format('NAME_OR_FILE.py:function')}"
        )
    if not trust:
        if is_code_reference(reference):
            raise TaskError(
                f"{where} names the task file {reference[:200]}; a checkpoint never runs code on "
                f"its own: pass {option.format(reference[:200])} (or --trust-task) if you trust that file"
            )
        name = reference.split("{", 1)[0]
        if "{" in reference:
            if TASK_OPTIONS.get("model_dir"):  # the user's own options: use those
                return get(name, data_dir=data_dir)
            raise TaskError(
                f"{where} names task {name} with options that read files it names "
                f"({reference[len(name) : len(name) + 160]}); pass --model-dir DIR (and "
                "--texts/--data), or --trust-task if you trust the file"
            )
    return get(reference, data_dir=data_dir)
