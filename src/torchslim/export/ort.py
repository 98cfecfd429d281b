"""ONNX Runtime sessions behind the ``nn.Module`` interface (the deployed ONNX artifact).

* :func:`ort_session` opens a CPU session with fixed threads; a build without a kernel the
  file needs is an ``UnsupportedError`` naming the operator and the fallback.
* :class:`OrtModule` runs an ``.onnx`` file as an ``nn.Module`` (positional tensor inputs),
  so a task's metric, ``measure`` and ``benchmark_latency`` work on the deployed artifact;
  loading an int8 file on a CPU whose u8s8 kernels saturate warns (see
  :mod:`torchslim.hardware`).
* :func:`session_runner` builds the latency runner of the ``onnxruntime`` runtimes.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from torchslim.artifacts import ArtifactIO
from torchslim.errors import ConfigError, UnsupportedError
from torchslim.fileio import atomic_path
from torchslim.hardware import warn_if_saturating

if TYPE_CHECKING:
    from torchslim.task import Task


def as_tuple(inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs)
    raise ConfigError(
        f"ONNX export takes tensor or tuple inputs, got {type(inputs).__name__}; "
        "wrap the model so that it takes tensors"
    )


def ort_session(model: str | Path | bytes, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session with a fixed number of intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        op = missing_kernel(str(exc))
        if op is None:
            raise
        raise UnsupportedError(
            f"this ONNX Runtime build ({ort.__version__}) has no CPU kernel for {op}; "
            f"{KERNEL_FALLBACKS.get(op.split(':')[-1], 'export the model without that operator')}"
        ) from exc


KERNEL_FALLBACKS = {
    "MatMulNBits": "deploy with linear_int8 (ONNX Runtime dynamic int8, MatMulInteger) instead "
    "of MatMulNBits, or install an onnxruntime build with the contrib ops",
    "DynamicQuantizeMatMul": "quantize with dynamic_quant on an onnxruntime build with the "
    "contrib ops, or keep the model in float",
}
_MISSING = (
    re.compile(r"Could not find an implementation for ([\w.:]+)"),
    re.compile(r"([\w.:]+)\(-?\d+\) is not a registered function/op"),
)


def missing_kernel(message: str) -> str | None:
    """The operator an ONNX Runtime session error says has no kernel, if that is the error."""
    for pattern in _MISSING:
        match = pattern.search(message)
        if match:
            return match.group(1)
    return None


class OrtSession(nn.Module):
    """An ONNX Runtime session held by an ``nn.Module`` (subclasses define ``forward`` and
    ``input_feeds``, the session feeds of the inputs a latency runner is given).

    Args:
        model: path of an ``.onnx`` file, or its bytes.
        threads: intra-op threads of the session.
    """

    def __init__(self, model: str | Path | bytes, threads: int = 1) -> None:
        super().__init__()
        self.model_bytes = model if isinstance(model, bytes) else Path(model).read_bytes()
        self.threads = threads
        self.session = ort_session(self.model_bytes, threads)
        label = "this ONNX model" if isinstance(model, bytes) else str(model)
        warn_if_saturating(self.model_bytes, label)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __deepcopy__(self, memo: dict[int, Any]) -> OrtSession:
        return type(self)(self.model_bytes, self.threads)

    def with_threads(self, threads: int) -> OrtSession:
        """The same model in a session with another thread count."""
        return type(self)(self.model_bytes, threads)


class OrtModule(OrtSession):
    """An ONNX model run by ONNX Runtime, behind the ``nn.Module`` call interface
    (positional tensor inputs, in the graph's input order)."""

    def feeds(self, *inputs: torch.Tensor) -> dict[str, np.ndarray]:
        """The session's input dict for torch tensors."""
        return {n: t.detach().cpu().numpy() for n, t in zip(self.input_names, inputs, strict=True)}

    def input_feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        """The feeds of a model's inputs as a latency runner receives them."""
        return self.feeds(*as_tuple(inputs))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Run the session; returns the first output as a torch tensor."""
        return torch.from_numpy(self.session.run(None, self.feeds(*inputs))[0])


def onnx_io(
    task: Task | None = None, template: nn.Module | None = None, spec: Any = None
) -> ArtifactIO:
    """An ArtifactIO for :class:`OrtModule`: the artifact is the ``.onnx`` file itself
    (the arguments, every format's ``io`` order, are not needed)."""

    def save(model: nn.Module, path: Path) -> None:
        if not isinstance(model, OrtModule):
            raise ConfigError("onnx_io saves OrtModule models; export others with export_onnx")
        with atomic_path(path) as tmp:
            tmp.write_bytes(model.model_bytes)

    return ArtifactIO(save=save, load=lambda path: OrtModule(path), suffix=".onnx")


def session_runner(
    cls: type[OrtSession],
    model: nn.Module,
    example_inputs: Any,
    export: Callable[[nn.Module, Any, Path], Path],
) -> Callable[[Any], Any]:
    """A latency runner: ``model`` as is when it is a ``cls`` session, else exported to
    fp32 ONNX with ``export``; the example inputs' feeds are built once."""
    threads = torch.get_num_threads()
    if isinstance(model, cls):
        module = model.with_threads(threads)
    else:
        with tempfile.TemporaryDirectory(prefix="torchslim-onnx-") as tmp:
            module = cls(export(model, example_inputs, Path(tmp) / "model.onnx"), threads)
    session = module.session
    example_feeds = module.input_feeds(example_inputs)

    def run(inputs: Any) -> Any:
        feeds = example_feeds if inputs is example_inputs else module.input_feeds(inputs)
        return session.run(None, feeds)

    return run
