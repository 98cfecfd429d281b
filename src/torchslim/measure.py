"""Honest measurement: the Footprint of a model, all in one module.

* parameters and non-zero parameters;
* bytes of the saved artifact: a real file is written, re-loaded, and must give the
  same outputs (never an estimate);
* MACs and FLOPs, total and per layer, from ``torch.utils.flop_counter`` (counted in
  :mod:`torchslim.macs`; re-exported here);
* the task's metric on the test split;
* latency at batch 1 and batch N on a named runtime: warm-up, many repeats, median
  and spread, a fixed thread count, and A/B models interleaved round by round.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.artifacts import ArtifactIO
from torchslim.batches import batch_size_of, call_model, eval_mode, preserved_modes, threads_fixed
from torchslim.checkpoint import checkpoint_io, existing_file_io  # noqa: F401 - re-exported
from torchslim.errors import CheckpointError, ConfigError
from torchslim.macs import (  # noqa: F401 - count_macs, input_dependent: re-exported
    MacCount,
    count_macs,
    input_dependent,
    model_macs,
)
from torchslim.task import Task

# ------------------------------------------------------------------ counting


def count_parameters(model: nn.Module) -> int:
    """Number of weights the forward pass uses (a codebook layer's shared weight counts
    as its full weight tensor: weight sharing saves bytes, not weights)."""
    return sum(p.numel() for _, p in effective_parameters(model))


def effective_parameters(module: nn.Module, recurse: bool = True) -> list[tuple[str, torch.Tensor]]:
    """Parameters as the forward pass sees them: a pruning mask (``X_orig`` + ``X_mask``,
    as ``torch.nn.utils.prune`` stores it) is applied, so zeros it imposes are counted, and
    a codebook layer contributes its shared weight (``centroids[indices]``), and a layer
    that stores its weight as integer codes in buffers (``weight_in_buffers = True``:
    ``Int8Linear``, ``QuantEmbedding``) contributes its ``dequantized_weight()``."""
    result = []
    for owner_name, owner in module.named_modules() if recurse else [("", module)]:
        weight_name = f"{owner_name}.weight" if owner_name else "weight"
        if callable(getattr(owner, "shared_weight", None)):  # a codebook layer's weight entries
            result.append((weight_name, owner.shared_weight().detach()))
            continue
        if getattr(owner, "weight_in_buffers", False):  # integer codes, no weight Parameter
            result.append((weight_name, owner.dequantized_weight().detach()))
        for name, param in owner.named_parameters(recurse=False):
            if name.endswith("_orig") and hasattr(owner, name[: -len("_orig")] + "_mask"):
                name = name[: -len("_orig")]
                param = getattr(owner, name)
            result.append((f"{owner_name}.{name}" if owner_name else name, param.detach()))
    return result


def count_nonzero(model: nn.Module) -> int:
    """Number of parameters that are not exactly zero (pruning masks applied)."""
    return sum(_nonzero(p) for _, p in effective_parameters(model))


def is_plain(tensor: torch.Tensor) -> bool:
    """A plain tensor or parameter, not a subclass with its own storage (torchao int8)."""
    return type(tensor) in (torch.Tensor, nn.Parameter)


def _nonzero(tensor: torch.Tensor) -> int:
    if is_plain(tensor):
        return int(torch.count_nonzero(tensor))
    dequantize = getattr(tensor, "dequantize", None)  # a tensor subclass (torchao int8)
    return int(torch.count_nonzero(dequantize())) if callable(dequantize) else tensor.numel()


@dataclass
class LayerFootprint:
    """Per-layer numbers: parameters, non-zeros and MACs for one example sample."""

    name: str
    type: str
    params: int
    nonzero_params: int
    macs: int


def layer_table(model: nn.Module, macs: MacCount) -> list[LayerFootprint]:
    """Per-layer parameters, non-zeros and MACs for every leaf module that has either.

    A wrapper that runs its wrapped layer's op itself (a codebook or fake-quant layer
    around a Linear / Conv) is one row, with its own and its children's weights. A module
    that runs an op of its own besides its children's (a transformer's attention, whose
    score and context products belong to no Linear) is a row with its own MACs and its
    own direct parameters only.
    """
    rows = []
    wrapped: set[str] = set()
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in wrapped):
            continue
        is_leaf = not list(module.children())
        own_ops = not is_leaf and name in macs.per_layer
        wrapper = own_ops and not any(
            key.startswith(name + ".") for key in macs.per_layer
        )  # its children run nothing themselves
        if not (is_leaf or own_ops):
            continue
        if wrapper:
            wrapped.add(name)
        tensors = [p for _, p in effective_parameters(module, recurse=wrapper or is_leaf)]
        params = sum(p.numel() for p in tensors)
        layer_macs = macs.per_layer.get(name, 0)
        if params == 0 and layer_macs == 0:
            continue
        nonzero = sum(_nonzero(p) for p in tensors)
        rows.append(LayerFootprint(name, type(module).__name__, params, nonzero, layer_macs))
    return rows


# ------------------------------------------------------------------ artifacts


def artifact_bytes(
    model: nn.Module,
    path: str | Path,
    inputs: Any,
    io: ArtifactIO | None = None,
    atol: float = 0.0,
) -> int:
    """Save ``model`` to ``path``, load it back, check its outputs, return the file's bytes.

    Raises:
        CheckpointError: the re-loaded model's outputs differ from the original's by
            more than ``atol`` (the artifact would not reproduce the metric).
    """
    io = io or checkpoint_io(None, model)
    path = Path(path)
    io.save(model, path)
    size = path.stat().st_size
    reloaded = io.load(path)
    reloaded.eval()
    with eval_mode(model), torch.no_grad():
        expected = call_model(model, inputs)
        actual = call_model(reloaded, inputs)
    diff = float((expected.float() - actual.float()).abs().max()) if expected.numel() else 0.0
    if not diff <= atol:
        raise CheckpointError(
            f"artifact {path} does not reproduce the model (max abs diff {diff:.3g} > {atol}); "
            "this is a bug in the artifact format, please report it"
        )
    return size


# ------------------------------------------------------------------ latency

Runner = Callable[[Any], Any]
RUNTIMES: dict[str, Callable[[nn.Module, Any], Runner]] = {}


def register_runtime(name: str):
    """Register ``prepare(model, example_inputs) -> run(inputs)`` for a runtime name."""

    def decorator(
        prepare: Callable[[nn.Module, Any], Runner],
    ) -> Callable[[nn.Module, Any], Runner]:
        RUNTIMES[name] = prepare
        return prepare

    return decorator


@register_runtime("torch")
def _torch_eager(model: nn.Module, example_inputs: Any) -> Runner:
    model.eval()

    def run(inputs: Any) -> Any:
        with torch.inference_mode():
            return call_model(model, inputs)

    return run


# Runtimes whose module is imported on first use (they pull in heavy optional packages).
LAZY_RUNTIMES = {
    "onnxruntime": "torchslim.export.onnx",
    "inductor": "torchslim.export.torchao_int8",
    "onnxruntime-hf": "torchslim.hf.export",  # transformer encoders (keyword inputs)
}


def _load_runtime(name: str) -> None:
    if name not in RUNTIMES and name in LAZY_RUNTIMES:
        import importlib

        importlib.import_module(LAZY_RUNTIMES[name])


@dataclass
class LatencyStats:
    """Latency of one model at one batch size, in milliseconds per call."""

    batch_size: int
    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    repeats: int

    @property
    def spread_ms(self) -> float:
        """Inter-quartile range."""
        return self.p75_ms - self.p25_ms


def benchmark_latency(
    models: Sequence[nn.Module],
    inputs: Any,
    runtime: str = "torch",
    threads: int = 1,
    warmup: int = 5,
    repeats: int | None = None,
    target_seconds: float = 1.0,
    device: str | torch.device | None = None,
) -> list[LatencyStats]:
    """Median latency of each model on the same inputs, runs interleaved round by round.

    Interleaving (A, B, A, B, ...) spreads machine noise evenly over the models being
    compared, so their ratio is fair on a shared machine. Each timed sample loops
    enough calls to last at least 0.2 ms; the number of rounds defaults to what fits
    in ``target_seconds`` per model (between 15 and 300).

    ``device`` (the ``torch`` runtime only; default CPU): the models are timed as copies on
    that device with the inputs moved there once, and every timed sample ends with a
    synchronisation, so asynchronous CUDA / MPS kernels are counted whole. The models
    given are not moved.
    """
    from torchslim.device import resolve_device, synchronize, to_device

    _load_runtime(runtime)
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r} is unknown; use one of {sorted(RUNTIMES)}")
    target = resolve_device(device) if runtime == "torch" else torch.device("cpu")
    batch = max(1, batch_size_of(inputs))
    with threads_fixed(threads), contextlib.ExitStack() as kept:
        for model in models:  # runtimes put models in eval mode: every module's mode comes back
            kept.enter_context(preserved_modes(model))
        if target != torch.device("cpu"):
            models = [copy.deepcopy(model).to(target) for model in models]
            inputs = to_device(inputs, target)
        runners = [RUNTIMES[runtime](model, inputs) for model in models]
        inner, per_call = [], []
        for run in runners:
            for _ in range(warmup):
                run(inputs)
            synchronize(target)
            start = time.perf_counter()
            run(inputs)
            synchronize(target)
            elapsed = max(time.perf_counter() - start, 1e-6)
            inner.append(max(1, int(2e-4 / elapsed)))
            per_call.append(elapsed)
        if repeats is None:
            repeats = int(min(300, max(15, target_seconds / max(per_call))))
        samples: list[list[float]] = [[] for _ in runners]
        for _ in range(repeats):
            for index, run in enumerate(runners):
                start = time.perf_counter()
                for _ in range(inner[index]):
                    run(inputs)
                synchronize(target)
                samples[index].append((time.perf_counter() - start) * 1e3 / inner[index])
    stats = []
    for times in samples:
        quartiles = statistics.quantiles(times, n=4)
        stats.append(
            LatencyStats(
                batch, statistics.median(times), quartiles[0], quartiles[2], min(times), repeats
            )
        )
    return stats


# ------------------------------------------------------------------ footprint


@dataclass
class Footprint:
    """What one model costs and scores, measured (the keys are a documented contract)."""

    metric: float
    metric_name: str
    params: int
    nonzero_params: int
    artifact_bytes: int
    macs: int
    flops: int
    latency_ms: dict[str, float]
    latency_spread_ms: dict[str, float]
    runtime: str
    threads: int
    batch_n: int
    artifact: str | None
    per_layer: list[LayerFootprint] = field(default_factory=list)
    simulated: bool = False
    device: str = "cpu"

    def to_dict(self, per_layer: bool = True) -> dict[str, Any]:
        """JSON-ready dict (see docs/architecture.md for the keys)."""
        data = asdict(self)
        if not per_layer:
            data.pop("per_layer")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Footprint:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["per_layer"] = [LayerFootprint(**row) for row in data.get("per_layer", [])]
        return cls(**data)


@dataclass
class Comparison:
    """A candidate against a baseline: ratios > 1 mean the candidate is smaller / faster."""

    size_ratio: float
    params_ratio: float
    macs_ratio: float
    speedup: dict[str, float]
    metric_drop: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(before: float, after: float) -> float:
    return float(before) / float(after) if after else float("inf")


def compare(baseline: Footprint, candidate: Footprint) -> Comparison:
    """Ratios of baseline over candidate (size, params, MACs, latency) and the metric drop.

    ``params_ratio`` uses non-zero parameters, so unstructured sparsity counts;
    ``size_ratio`` uses artifact bytes, which is what the sparsity is worth on disk.
    """
    speedup = {
        key: _ratio(baseline.latency_ms[key], candidate.latency_ms[key])
        for key in baseline.latency_ms
        if key in candidate.latency_ms
    }
    return Comparison(
        size_ratio=_ratio(baseline.artifact_bytes, candidate.artifact_bytes),
        params_ratio=_ratio(baseline.nonzero_params, candidate.nonzero_params),
        macs_ratio=_ratio(baseline.macs, candidate.macs),
        speedup=speedup,
        metric_drop=baseline.metric - candidate.metric,
    )


def measure(
    model: nn.Module,
    task: Task,
    *,
    artifact: str | Path | None = None,
    io: ArtifactIO | None = None,
    runtime: str = "torch",
    batch_n: int = 64,
    threads: int = 1,
    latency: bool = True,
    split: str = "test",
    simulated: bool = False,
    device: str | torch.device | None = None,
) -> Footprint:
    """Measure one model's Footprint on a task. See :func:`measure_many` for A/B comparisons."""
    return measure_many(
        [model],
        task,
        artifacts=[artifact],
        ios=[io],
        runtime=runtime,
        batch_n=batch_n,
        threads=threads,
        latency=latency,
        split=split,
        simulated=[simulated],
        device=device,
    )[0]


def measure_many(
    models: Sequence[nn.Module],
    task: Task,
    *,
    artifacts: Sequence[str | Path | None] | None = None,
    ios: Sequence[ArtifactIO | None] | None = None,
    runtime: str = "torch",
    batch_n: int = 64,
    threads: int = 1,
    latency: bool = True,
    split: str = "test",
    simulated: Sequence[bool] | None = None,
    latency_seconds: float = 1.0,
    device: str | torch.device | None = None,
) -> list[Footprint]:
    """Measure several models on one task, with their latencies interleaved in one run.

    Args:
        models: the models (e.g. baseline first, then candidates); none is modified.
        task: supplies the metric, the data and the example inputs.
        artifacts: where to keep each artifact file (None: a temporary file, deleted).
        ios: how to save/load each model (default: safetensors checkpoint + spec).
        runtime: latency runtime name (see ``RUNTIMES``).
        batch_n: the larger batch size timed besides batch 1.
        threads: intra-op threads during timing.
        latency: time the models (False skips it; latency fields are then empty).
        split: data split for the metric.
        simulated: per model, whether its numbers are simulated (e.g. fake-quant).
        latency_seconds: timing budget per model and batch size (more rounds, less noise).
        device: where the ``torch`` runtime times the models (default: the task's training
            device, ``task.train_config.device``); other runtimes run on the CPU. Recorded
            in each footprint's ``device``.
    """
    count = len(models)
    artifacts = list(artifacts or [None] * count)
    ios = list(ios or [None] * count)
    simulated = list(simulated or [False] * count)
    if not (len(artifacts) == len(ios) == len(simulated) == count):
        raise ConfigError("measure_many needs one artifact, io and simulated flag per model")
    if batch_n < 1:
        raise ConfigError(f"batch_n must be >= 1, got {batch_n}")
    for model in models:
        task.check_inputs(model)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="torchslim-") as tmp:
        for index, model in enumerate(models):
            io = ios[index] or checkpoint_io(task, model)
            path = Path(artifacts[index] or Path(tmp) / f"model{index}{io.suffix}")
            size = artifact_bytes(model, path, task.inputs(8), io)
            macs = model_macs(model, task, split)
            results.append(
                {
                    "metric": task.evaluate(model, split),
                    "params": count_parameters(model),
                    "nonzero_params": count_nonzero(model),
                    "artifact_bytes": size,
                    "macs": macs.macs,
                    "flops": macs.flops,
                    "per_layer": layer_table(model, macs),
                    "artifact": str(path) if artifacts[index] else None,
                }
            )
    latency_ms: list[dict[str, float]] = [{} for _ in models]
    spread_ms: list[dict[str, float]] = [{} for _ in models]
    timing_device = (device if device is not None else task.device) if runtime == "torch" else None
    if latency:
        for key, size in (("batch_1", 1), ("batch_N", batch_n)):
            stats = benchmark_latency(
                models,
                task.inputs(size),
                runtime=runtime,
                threads=threads,
                target_seconds=latency_seconds,
                device=timing_device,
            )
            for index, stat in enumerate(stats):
                latency_ms[index][key] = round(stat.median_ms, 6)
                spread_ms[index][key] = round(stat.spread_ms, 6)
    return [
        Footprint(
            metric_name=task.metric_name,
            latency_ms=latency_ms[index],
            latency_spread_ms=spread_ms[index],
            runtime=runtime,
            threads=threads,
            batch_n=batch_n,
            simulated=simulated[index],
            device=str(timing_device) if timing_device is not None else "cpu",
            **results[index],
        )
        for index in range(count)
    ]
