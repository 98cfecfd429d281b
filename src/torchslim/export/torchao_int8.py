"""PyTorch-native int8 through torchao, timed with torch.compile (inductor, freezing on).

torchao's int8 configs quantize ``nn.Linear`` layers (convolutions stay float):
``dynamic`` (int8 weights and per-token dynamic int8 activations) or
``weight_only`` (int8 weights, float activations). The ``inductor`` runtime
compiles any model with ``torch.compile`` and inductor's freezing, so an fp32
baseline and its torchao int8 version are compared on the same compiler.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchslim.artifacts import ArtifactFormat, register_format
from torchslim.errors import ConfigError, UnsupportedError
from torchslim.measure import register_runtime
from torchslim.progress import quiet_logs

if TYPE_CHECKING:
    from torchslim.task import Task


def _torchao() -> Any:
    """Import torchao quietly (it logs failures to load its GPU-only extensions)."""
    try:
        with quiet_logs("torchao", "", level=logging.CRITICAL):
            import torchao.quantization as quantization
    except Exception as exc:  # noqa: BLE001 - version mismatches raise many types
        raise UnsupportedError(
            f"torchao cannot be imported with torch {torch.__version__} ({type(exc).__name__}: "
            f"{exc}); install the torchao version pinned in constraints.txt"
        ) from exc
    return quantization


def quantize_torchao(model: nn.Module, mode: str = "dynamic", inplace: bool = False) -> nn.Module:
    """Quantize the model's Linear layers to int8 with torchao.

    Args:
        model: the float model (copied unless ``inplace``).
        mode: ``dynamic`` (Int8DynamicActivationInt8WeightConfig) or ``weight_only``
            (Int8WeightOnlyConfig).
        inplace: modify ``model`` itself.

    Raises:
        UnsupportedError: torchao is missing, or the model has no Linear layer.
    """
    if mode not in ("dynamic", "weight_only"):
        raise ConfigError(f"mode {mode!r} is unknown; use 'dynamic' or 'weight_only'")
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise UnsupportedError(
            "torchao int8 quantizes nn.Linear layers and this model has none; use the ONNX "
            "Runtime static int8 export for convolutional models"
        )
    quantization = _torchao()
    config = (
        quantization.Int8DynamicActivationInt8WeightConfig()
        if mode == "dynamic"
        else quantization.Int8WeightOnlyConfig()
    )
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    quantization.quantize_(target, config)
    return target


@register_runtime("inductor")
def _inductor(model: nn.Module, example_inputs: Any) -> Any:
    """Time a model compiled with torch.compile (inductor, freezing on), compiled on the inputs."""
    from torch._inductor import config as inductor_config

    from torchslim.batches import call_model

    model.eval()
    compiled: Any = torch.compile(model, dynamic=False)
    with inductor_config.patch(freezing=True), torch.inference_mode():
        call_model(compiled, example_inputs)

    def run(inputs: Any) -> Any:
        with torch.inference_mode():
            return call_model(compiled, inputs)

    return run


def torchao_io(
    task: Task | None = None, template: nn.Module | None = None, spec: Any = None
) -> Any:
    """An ArtifactIO for torchao models: ``torch.save`` of the state dict, read back with
    ``torch.load(weights_only=True)`` (torchao registers its tensor types as safe) into a
    copy of ``template`` (required; ``task`` and ``spec`` are not used)."""
    from pathlib import Path

    from torchslim.artifacts import ArtifactIO
    from torchslim.fileio import atomic_path

    if template is None:
        raise ConfigError("torchao_io needs template=, the torchao model it loads into")

    def save(model: nn.Module, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save(model.state_dict(), tmp)

    def load(path: Path) -> nn.Module:
        model = copy.deepcopy(template)
        model.load_state_dict(torch.load(path, weights_only=True), assign=True)
        return model.eval()

    return ArtifactIO(save=save, load=load, suffix=".pt")


def is_torchao(model: nn.Module) -> bool:
    """Whether any weight of ``model`` is a torchao tensor (after ``quantize_torchao``)."""
    return any(type(p.data).__module__.startswith("torchao") for p in model.parameters())


register_format(
    ArtifactFormat(
        name="torchao",
        suffix=".pt",
        io=torchao_io,
        claims=is_torchao,
        priority=40,
        recipe=False,
    )
)
