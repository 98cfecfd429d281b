"""The Task: the one unit a user brings (model + data + metric + how to train).

Every technique, search and report takes a Task. A Task never modifies the model
object it was given: :meth:`Task.build_model` returns a fresh copy, and
:meth:`Task.baseline` trains that copy once and caches it on disk under a hash of
the task's definition.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from torchslim.batches import (
    Batch,
    call_model,
    describe_inputs,
    eval_mode,
    slice_inputs,
    split_batch,
    threads_fixed,
)
from torchslim.checkpoint import load_checkpoint, read_spec, save_checkpoint
from torchslim.data import default_cache_dir
from torchslim.errors import CheckpointError, ConfigError, ShapeError, TrainingError
from torchslim.metrics import Metric, resolve_metric
from torchslim.progress import progress_bar

log = logging.getLogger(__name__)

CACHE_VERSION = 1
Objective = Callable[[nn.Module, Batch], torch.Tensor]
StepHook = Callable[[nn.Module, int], None]

_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimizer, learning rate, epochs, batch size and seed.

    ``epochs=0`` means the model is used as given (already trained). ``threads`` fixes
    torch's intra-op threads while training: float reductions depend on the thread
    count, so a fixed count makes a seed reproduce the same weights on any machine
    (None keeps the current setting). ``device`` is where every training and statistics
    pass runs (``auto``: the first accelerator torch sees, else the CPU; ``cpu``,
    ``cuda``, ``cuda:N``, ``mps``); ``amp`` (``bf16`` / ``fp16``) trains in mixed
    precision. Neither is part of the baseline's fingerprint unless ``amp`` is set.
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    weight_decay: float = 0.0
    schedule: str = "cosine"
    eval_batch_size: int = 256
    threads: int | None = None
    device: str = "cpu"
    amp: str | None = None

    def __post_init__(self) -> None:
        from torchslim.device import AMP, check_device_name

        check_device_name(self.device)
        if self.amp is not None and self.amp not in AMP:
            raise ConfigError(f"amp {self.amp!r} is unknown; use one of {AMP} or leave it off")
        if self.optimizer not in _OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} is unknown; use one of {_OPTIMIZERS}")
        if self.schedule not in _SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r} is unknown; use one of {_SCHEDULES}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("batch_size and eval_batch_size must be >= 1")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 or None, got {self.threads}")


@dataclass
class TrainResult:
    """What a training run did: steps, seconds, last epoch's mean loss, per-epoch history."""

    steps: int
    seconds: float
    final_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


def _hash_dataset(data: Dataset | DataLoader | None) -> str:
    if data is None:
        return "none"
    if isinstance(data, DataLoader):
        data = data.dataset
    digest = hashlib.sha256()
    if isinstance(data, TensorDataset):
        for tensor in data.tensors:
            digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()
    digest.update(f"{type(data).__name__}:{len(data)}".encode())  # type: ignore[arg-type]
    for index in {0, len(data) // 2, len(data) - 1}:  # type: ignore[arg-type]
        digest.update(repr(data[index]).encode())
    return digest.hexdigest()


@dataclass
class Task:
    """A model, its data, a metric and how to train it.

    Args:
        name: short identifier, used in reports and cache file names.
        model: an ``nn.Module`` (copied, never modified), a zero-argument factory, or
            the name of a reference architecture (see ``torchslim.models``).
        train: training data (a Dataset or DataLoader yielding ``(inputs, target)``).
        val: validation data: what searches and early stopping look at.
        test: held-out data: what reported metrics are measured on.
        metric: ``"accuracy"``, ``"topK"`` (e.g. ``"top5"``), a :class:`~torchslim.metrics.Metric`
            or any callable ``(model, loader) -> float`` where higher is better.
        example_inputs: one batch of inputs (batch dimension first); defaults to the
            first test samples.
        train_config: optimizer, lr, epochs, batch size, seed.
        loss: ``(outputs, target) -> loss``; cross-entropy by default.
        model_kwargs: keyword arguments of a named reference architecture.
        cache_dir: where baselines are cached (``$TORCHSLIM_CACHE`` or ``~/.cache/torchslim``).
        source: how to re-create this task (a built-in name or ``file.py:function``); stored
            in checkpoints so that ``torchslim measure CHECKPOINT`` can find the data again.
    """

    name: str
    model: nn.Module | Callable[[], nn.Module] | str
    train: Dataset | DataLoader | None = None
    val: Dataset | DataLoader | None = None
    test: Dataset | DataLoader | None = None
    metric: str | Callable[[nn.Module, DataLoader], float] = "accuracy"
    example_inputs: Any = None
    train_config: TrainConfig = field(default_factory=TrainConfig)
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | Path | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError("Task needs a non-empty name")
        if not isinstance(self.model, (nn.Module, str)) and not callable(self.model):
            raise ConfigError(
                f"Task model must be an nn.Module, a factory or an architecture name, "
                f"got {type(self.model).__name__}"
            )
        if self.test is None and self.val is None:
            raise ConfigError(f"task {self.name!r} needs test (or val) data to measure the metric")
        if self.train_config.epochs > 0 and self.train is None:
            raise ConfigError(
                f"task {self.name!r} trains for {self.train_config.epochs} epochs but has no "
                "train data; pass train= or set TrainConfig(epochs=0) for a trained model"
            )
        self._metric: Metric = resolve_metric(self.metric)
        self._original = copy.deepcopy(self.model) if isinstance(self.model, nn.Module) else None

    # ----------------------------------------------------------------- model

    @property
    def metric_name(self) -> str:
        """The metric's name, e.g. ``accuracy``."""
        return self._metric.name

    @property
    def arch(self) -> dict[str, Any] | None:
        """The reference-architecture spec (``{"name", "kwargs"}``), if the model is one."""
        if isinstance(self.model, str):
            return {"name": self.model, "kwargs": dict(self.model_kwargs)}
        return None

    def build_model(self) -> nn.Module:
        """A fresh, untrained (or as-given) model; deterministic for the task's seed."""
        if self._original is not None:
            return copy.deepcopy(self._original)
        with torch.random.fork_rng(devices=[]):  # seed the build, leave the caller's RNG alone
            torch.manual_seed(self.train_config.seed)
            if isinstance(self.model, str):
                from torchslim.models import build_model

                return build_model(self.model, **self.model_kwargs)
            built = self.model()  # type: ignore[operator]
        if not isinstance(built, nn.Module):
            raise ConfigError(
                f"task {self.name!r}: the model factory returned {type(built).__name__}, "
                "not an nn.Module"
            )
        return built

    def spec(self, **extra: Any) -> dict[str, Any]:
        """The JSON spec stored in this task's checkpoints."""
        spec: dict[str, Any] = {
            "task": self.source or self.name,
            "task_name": self.name,
            "metric_name": self.metric_name,
        }
        if self.arch is not None:
            spec["arch"] = self.arch
        spec.update(extra)
        return spec

    # ------------------------------------------------------------------ data

    def loader(
        self, split: str = "test", batch_size: int | None = None, shuffle: bool = False
    ) -> DataLoader:
        """A DataLoader over one split (``train``, ``val`` or ``test``)."""
        if split not in ("train", "val", "test"):
            raise ConfigError(f"split {split!r} is unknown; use train, val or test")
        data = getattr(self, split)
        if data is None and split == "val":
            data = self.test
        if data is None and split == "test":
            data = self.val
        if data is None:
            raise ConfigError(f"task {self.name!r} has no {split} data")
        if isinstance(data, DataLoader):
            return data
        size = batch_size or (
            self.train_config.batch_size if shuffle else self.train_config.eval_batch_size
        )
        generator = torch.Generator().manual_seed(self.train_config.seed) if shuffle else None
        return DataLoader(data, batch_size=size, shuffle=shuffle, generator=generator)

    def inputs(self, batch_size: int = 1) -> Any:
        """Example inputs with ``batch_size`` samples (real data where there is some)."""
        if self.example_inputs is not None:
            return slice_inputs(self.example_inputs, batch_size)
        data = self.test if self.test is not None else self.val
        if isinstance(data, DataLoader):
            data = data.dataset
        if isinstance(data, TensorDataset):
            return slice_inputs(data.tensors[0][:batch_size], batch_size)
        inputs, _ = split_batch(next(iter(self.loader("test", batch_size=batch_size))))
        return slice_inputs(inputs, batch_size)

    def check_inputs(self, model: nn.Module) -> None:
        """Run the model on example inputs; a rejected shape becomes a clear ShapeError."""
        inputs = self.inputs(2)
        try:
            with eval_mode(model), torch.no_grad():
                call_model(model, inputs)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            shape = describe_inputs(inputs)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ShapeError(
                f"task {self.name!r}: the model rejects example inputs of shape {shape} ({first}); "
                "pass example_inputs/data shaped as the model's forward expects"
            ) from exc

    # --------------------------------------------------------------- metrics

    @property
    def device(self) -> torch.device:
        """The torch device of ``train_config.device`` (ConfigError when torch lacks it)."""
        from torchslim.device import resolve_device

        return resolve_device(self.train_config.device)

    def evaluate(self, model: nn.Module, split: str = "test") -> float:
        """The task's metric of ``model`` on one split (model left in its original mode),
        computed on the task's device."""
        from torchslim.device import on_device

        with on_device(model, self.device), eval_mode(model), torch.no_grad():
            return float(self._metric(model, self.loader(split)))

    # -------------------------------------------------------------- training

    def fit(
        self,
        model: nn.Module,
        *,
        epochs: int | None = None,
        lr: float | None = None,
        objective: Objective | None = None,
        after_step: StepHook | None = None,
        progress: bool = True,
        description: str = "train",
        after_epoch: StepHook | None = None,
    ) -> TrainResult:
        """Train ``model`` in place with the task's loop.

        Args:
            model: the module to train.
            epochs, lr: overrides of the task's train config (e.g. short fine-tuning).
            objective: ``(model, batch) -> loss`` replacing the default
                ``loss(model(inputs), target)`` (distillation uses this).
            after_step: called as ``after_step(model, global_step)`` after each optimizer
                step (pruning uses this to keep masks enforced).
            after_epoch: called as ``after_epoch(model, epoch)`` (1-based) after each epoch,
                with the RNG state put back afterwards so it does not change training
                (a search measures recovery there and stops hopeless candidates by raising).
            progress: show a progress bar with loss and validation metric.
            description: label of the progress bar.

        Raises:
            TrainingError: the loss became NaN or infinite (names epoch and step).
        """
        config = self.train_config
        epochs = config.epochs if epochs is None else epochs
        lr = config.lr if lr is None else lr
        if epochs < 0 or not (lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"fit needs epochs >= 0 and lr > 0, got epochs={epochs}, lr={lr}")
        threads = config.threads or torch.get_num_threads()
        from torchslim.device import check_amp, on_device

        device = self.device
        check_amp(config.amp, device)
        with (
            torch.random.fork_rng(devices=[]),  # seeded, RNG restored
            threads_fixed(threads),
            on_device(model, device),
        ):
            torch.manual_seed(config.seed)
            return self._fit(
                model, epochs, lr, objective, after_step, progress, description, after_epoch
            )

    def _fit(
        self,
        model: nn.Module,
        epochs: int,
        lr: float,
        objective: Objective | None,
        after_step: StepHook | None,
        progress: bool,
        description: str,
        after_epoch: StepHook | None = None,
    ) -> TrainResult:
        from torchslim.device import autocast, model_device, to_device

        config = self.train_config
        device = model_device(model) or torch.device("cpu")
        loader = self.loader("train", shuffle=True)
        scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = _make_optimizer(config.optimizer, params, lr, config.weight_decay)
        total_steps = max(1, epochs * len(loader))
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
            if config.schedule == "cosine"
            else None
        )
        history: list[dict[str, float]] = []
        step = 0
        start = time.perf_counter()
        final_loss = float("nan")
        model.train()
        with progress_bar(description, total=total_steps, enabled=progress) as bar:
            for epoch in range(epochs):
                running, count = 0.0, 0
                for batch_index, batch in enumerate(loader):
                    batch = to_device(batch, device)  # the one place batches move
                    with autocast(device, config.amp):
                        if objective is not None:
                            loss = objective(model, batch)
                        else:
                            inputs, target = split_batch(batch)
                            loss = self.loss(call_model(model, inputs), target)
                    loss = loss.float()
                    if not torch.isfinite(loss):
                        model.eval()
                        raise TrainingError(
                            f"task {self.name!r}: loss became {loss.item()} at epoch {epoch + 1}, "
                            f"step {batch_index + 1} (global step {step + 1}); lower the learning "
                            f"rate (now {lr:g}) or check the data for NaN/inf values"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    if scheduler is not None:
                        scheduler.step()
                    step += 1
                    if after_step is not None:
                        after_step(model, step)
                    running += float(loss.detach())
                    count += 1
                    bar.advance(loss=running / count)
                final_loss = running / max(count, 1)
                record = {"epoch": epoch + 1, "loss": final_loss}
                if progress and (epoch == epochs - 1 or (epoch + 1) % max(1, epochs // 5) == 0):
                    record[f"val_{self.metric_name}"] = self.evaluate(model, "val")
                    bar.advance(0, metric=record[f"val_{self.metric_name}"])
                    model.train()
                history.append(record)
                if after_epoch is not None:
                    with torch.random.fork_rng(devices=[]):
                        after_epoch(model, epoch + 1)
                    model.train()
        model.eval()
        return TrainResult(step, time.perf_counter() - start, final_loss, history)

    # -------------------------------------------------------------- baseline

    def fingerprint(self) -> str:
        """A hash of everything that defines the trained baseline."""
        model = self.build_model()
        if self._original is not None:
            weights = hashlib.sha256()
            for key, tensor in model.state_dict().items():
                weights.update(key.encode())
                weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            model_id = repr(model) + weights.hexdigest()
        else:
            model_id = repr(model)
        definition = {
            "version": CACHE_VERSION,
            "name": self.name,
            "model": model_id,
            "arch": self.arch,
            "train_config": _config_key(self.train_config),
            "loss": getattr(self.loss, "__qualname__", repr(self.loss)),
            "train": _hash_dataset(self.train),
            "val": _hash_dataset(self.val),
            "torch": torch.__version__.split("+")[0],
        }
        return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()

    def cache_path(self) -> Path:
        """Where this task's baseline checkpoint is cached."""
        root = Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.name)
        return root / "baselines" / f"{safe}-{self.fingerprint()[:16]}.safetensors"

    def baseline(self, progress: bool = True, retrain: bool = False) -> nn.Module:
        """The trained baseline: trained once, then loaded from the cache.

        The cache file is keyed by :meth:`fingerprint`, so changing the model, data,
        or training settings trains a new baseline. A corrupt cache file is retrained.
        """
        path = self.cache_path()
        if path.exists() and not retrain:
            try:
                model, _ = load_checkpoint(path, model=self.build_model())
                return model
            except CheckpointError as exc:
                warnings.warn(f"{exc}; training the baseline again", stacklevel=2)
        model = self.build_model()
        self.check_inputs(model)
        result = None
        if self.train_config.epochs > 0:
            result = self.fit(model, progress=progress, description=f"baseline {self.name}")
        model.eval()
        spec = self.spec(
            role="baseline",
            train_seconds=round(result.seconds, 3) if result else 0.0,
            train_steps=result.steps if result else 0,
        )
        save_checkpoint(model, path, spec)
        return model

    def baseline_info(self) -> dict[str, Any]:
        """The cached baseline's spec (train seconds, steps), or {} if it is not cached."""
        path = self.cache_path()
        return read_spec(path) if path.exists() else {}


def _config_key(config: TrainConfig) -> dict[str, Any]:
    """The train config as fingerprinted: the device is left out (a baseline trained on a
    GPU is the same baseline), and ``amp`` only when it is set."""
    data = asdict(config)
    data.pop("device", None)
    if data.get("amp") is None:
        data.pop("amp", None)
    return data


def _make_optimizer(
    name: str, params: list[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
