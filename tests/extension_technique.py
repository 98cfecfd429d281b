"""A technique added from outside torchslim in one file: power-of-two weights.

``Pow2Weights`` replaces each selected ``nn.Linear`` by a :class:`Pow2Linear` that stores
every weight as one int8 code: ``0`` for zero, else ``sign * (k + 1)`` for the weight
``sign * scale * 2**-k`` (``k < levels``; ``scale`` is the layer's largest magnitude, one
fp32 value). Everything torchslim needs to know about it is registered here, and nothing
in ``src/`` names it:

* the config and its handler (``register_config`` / ``register_handler``): ``apply`` and
  recipes (YAML) know it;
* its module type (``register_module_type``): checkpoints record the replaced layers and
  ``torchslim.load`` rebuilds them;
* its knob (``register_knob``): ``optimize(techniques=["pow2_weights"])`` searches it per
  Linear layer (0 = off, 1 = on), with its share of the size cost model (8 bits per weight
  plus one fp32 scale) and its recipe step.

Importing this module registers it (see tests/test_extension.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import ConfigError
from torchslim.structure import register_module_type
from torchslim.techniques.base import (
    ApplyContext,
    Scope,
    TechniqueConfig,
    register_config,
    register_handler,
)
from torchslim.techniques.knobs import (
    Knob,
    LayerCost,
    StepContext,
    linear_layers,
    register_knob,
)

NAME = "pow2_weights"


class Pow2Linear(nn.Module):
    """A Linear layer whose weights are signed powers of two times one scale (int8 codes)."""

    weight_in_buffers = True  # torchslim counts parameters through dequantized_weight()

    def __init__(self, in_features: int, out_features: int, bias: bool, levels: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.levels = in_features, out_features, levels
        self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, layer: nn.Linear, levels: int) -> Pow2Linear:
        """Round ``layer``'s weights to the nearest power of two in the log domain."""
        module = cls(layer.in_features, layer.out_features, layer.bias is not None, levels)
        weight = layer.weight.detach()
        scale = weight.abs().max().clamp_min(1e-12)
        exponent = torch.round(-torch.log2(weight.abs().clamp_min(1e-30) / scale))
        codes = torch.where(
            exponent < levels, torch.sign(weight) * (exponent + 1), torch.zeros_like(weight)
        )
        with torch.no_grad():
            module.codes.copy_(codes.to(torch.int8))
            module.scale.copy_(scale)
            if module.bias is not None:
                module.bias.copy_(layer.bias.detach())
        return module

    def dequantized_weight(self) -> torch.Tensor:
        """The float weights the codes stand for."""
        magnitude = self.codes.abs().float()
        weight = torch.sign(self.codes.float()) * self.scale * torch.exp2(1 - magnitude)
        return torch.where(self.codes == 0, torch.zeros_like(weight), weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(), self.bias)


@register_config
@dataclass(frozen=True)
class Pow2Weights(TechniqueConfig):
    """Power-of-two weights in the selected Linear layers.

    Args:
        levels: powers of two kept below each layer's largest weight (1-127); smaller
            weights become zero.
        scope: which Linear layers.
    """

    name = NAME
    family = "quantization"
    levels: int = 16
    scope: Scope = Scope()

    def __post_init__(self) -> None:
        if isinstance(self.levels, bool) or not 1 <= self.levels <= 127:
            raise ConfigError(f"{NAME}.levels must be in [1, 127], got {self.levels!r}")


@register_handler(Pow2Weights)
def _pow2(model: nn.Module, config: Pow2Weights, context: ApplyContext) -> nn.Module:
    config.scope.check_known(model)
    chosen = [
        (name, module)
        for name, module in config.scope.select(model, (nn.Linear,))
        if type(module) is nn.Linear
    ]
    for name, layer in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Pow2Linear.from_linear(layer, config.levels))
    context.notes[NAME] = {"layers": [name for name, _ in chosen]}
    return model


# ------------------------------------------------------------------ checkpoint structure

register_module_type(
    Pow2Linear,
    lambda m: {
        "in_features": m.in_features,
        "out_features": m.out_features,
        "bias": m.bias is not None,
        "levels": m.levels,
    },
    lambda args: Pow2Linear(
        int(args["in_features"]), int(args["out_features"]), bool(args["bias"]), int(args["levels"])
    ),
)


# ------------------------------------------------------------------ search knob


def _steps(values: Mapping[str, float], context: StepContext) -> list[TechniqueConfig]:
    chosen = tuple(context.scope_of(layer) for layer, value in values.items() if value)
    return [Pow2Weights(scope=Scope(include=chosen))] if chosen else []


def _layer_cost(values: Mapping[str, float], layer: str, cost: LayerCost, data: Any) -> None:
    if values.get(layer):
        cost.dense = True  # zeros are codes like any other
        cost.weight_bits = 8
        cost.extra_bits += 32  # the layer's fp32 scale


register_knob(
    Knob(
        name=NAME,
        grid=(0, 1),
        rule="takes 0 (off) and/or 1 (on)",
        valid=lambda value: value in (0, 1),
        steps=_steps,
        identity=0,
        integer=True,
        order=65,  # after the pruning steps and their recovery, like other quantizers
        layers=linear_layers,
        layer_cost=_layer_cost,
        exclusive="Linear layers",
    )
)
