"""int8 Linear layers for any model: int8 per-channel weights, dynamic int8 activations.

* :class:`Int8Linear` stores an int8 weight with one fp32 scale per output channel
  (symmetric, ``scale = max|w_row| / qmax``; ``qmax`` is 127, or 64 for the portable 7-bit
  grid that ONNX Runtime's u8s8 kernels compute exactly on every x86 CPU) and quantizes its
  input per token at run time (dynamic int8, as torchao's
  ``Int8DynamicActivationInt8WeightConfig``). Its state dict holds the int8 codes, so a saved
  artifact is really ~4x smaller. For speed it is deployed through ONNX Runtime
  (:func:`torchslim.export.onnx.export_ort_dynamic`, which re-quantizes the same per-channel
  grid with ``quantize_dynamic(per_channel=True)``) or torchao
  (:func:`torchslim.export.torchao_int8.torchao_model`).
* SmoothQuant (``linear_int8`` with ``smooth: alpha``): trained transformers have a few input
  channels with outsized activations, and a dynamic int8 scale sized for them leaves the
  other channels a handful of levels. :func:`smooth_linears` divides each Linear input channel
  by ``s_j = max|x_j|^alpha / max|W[:, j]|^(1 - alpha)`` (maxima calibrated on the task's data)
  and multiplies the weight column by ``s_j`` -- exact in float. The division is folded into
  the value projection for an attention output projection (its input is a per-channel mix
  of the values; the pairs come from the finders in :data:`VALUE_OUT_FINDERS`, e.g. the
  Hugging Face encoder one :mod:`torchslim.hf.structure` registers) and kept as a ``Mul``
  before every other Linear.

Technique config (usable in recipes): ``linear_int8`` (:class:`LinearInt8`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.batches import calibration_batches
from torchslim.errors import ConfigError, UnsupportedError
from torchslim.structure import register_self_describing
from torchslim.techniques.base import (
    ApplyContext,
    Scope,
    TechniqueConfig,
    register_config,
    register_handler,
)
from torchslim.techniques.fake_quant import set_module
from torchslim.techniques.knobs import (
    Knob,
    LayerCost,
    StepContext,
    linear_layers,
    register_knob,
)

ACT_MODES = ("token", "tensor", "none")

ValueOutFinder = Callable[[nn.Module], list[tuple[nn.Module, nn.Module]]]
VALUE_OUT_FINDERS: list[ValueOutFinder] = []
"""Functions returning a model's ``(attention output projection, value projection)`` Linear
pairs (an empty list when they do not recognise the model); SmoothQuant folds the output
projection's scale into its value projection."""


def register_value_out_finder(finder: ValueOutFinder) -> ValueOutFinder:
    """Add a finder of attention (output, value) projection pairs (see :data:`VALUE_OUT_FINDERS`)."""
    if finder not in VALUE_OUT_FINDERS:
        VALUE_OUT_FINDERS.append(finder)
    return finder


@register_self_describing
class Int8Linear(nn.Module):
    """A Linear layer with an int8 per-channel weight and dynamic int8 activations.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        act: ``token`` (quantize each input row to int8 at run time, symmetric: torchao's
            scheme), ``tensor`` (one asymmetric uint8 scale per input tensor: ONNX Runtime's
            dynamic int8, so the PyTorch metric predicts the deployed ORT model) or ``none``
            (weight-only int8).
        smoothed: the input is multiplied by a per-channel ``input_scale`` first (SmoothQuant).
        qmax: the weight grid is ``[-qmax, qmax]``: 127 (full int8) or 64 (``reduce_range``).
    """

    weight_in_buffers = True  # parameter counts use dequantized_weight()

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        act: str = "token",
        smoothed: bool = False,
        qmax: int = 127,
    ) -> None:
        super().__init__()
        if act not in ACT_MODES:
            raise ConfigError(f"act {act!r} is unknown; use one of {', '.join(ACT_MODES)}")
        if qmax not in (64, 127):
            raise ConfigError(f"Int8Linear qmax must be 127 or 64 (reduce_range), got {qmax!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.act = act
        self.qmax = qmax
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8)
        )
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.register_buffer("input_scale", torch.ones(in_features) if smoothed else None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, act: str = "token", qmax: int = 127) -> Int8Linear:
        """Quantize a Linear layer's weight (symmetric, per output channel, on
        ``[-qmax, qmax]``); a :class:`ScaledLinear`'s input scale is kept."""
        scaled = isinstance(linear, ScaledLinear)
        layer = cls(
            linear.in_features, linear.out_features, linear.bias is not None, act, scaled, qmax
        )
        if scaled:
            layer.input_scale.copy_(linear.input_scale)
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / float(qmax)
        layer.weight_int8.copy_(
            torch.round(weight / scale[:, None]).clamp(-qmax, qmax).to(torch.int8)
        )
        layer.weight_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach().float())
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        """The weight as the layer computes with it (fp32)."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x * self.input_scale
        if self.act == "token":
            scale = x.detach().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127.0
            x = torch.round(x / scale).clamp(-127, 127) * scale
        elif self.act == "tensor":
            x = _ort_dynamic_uint8(x)
        return F.linear(x, self.dequantized_weight(), self.bias)

    def to_float(self) -> nn.Linear:
        """A float Linear holding the dequantized weight (for export); a
        :class:`ScaledLinear` when the input is smoothed."""
        kind = nn.Linear if self.input_scale is None else ScaledLinear
        linear = kind(self.in_features, self.out_features, self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.dequantized_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
            if self.input_scale is not None:
                linear.input_scale.copy_(self.input_scale)
        return linear

    def describe(self) -> dict[str, Any]:
        return {
            "type": "Int8Linear",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "act": self.act,
            "smoothed": self.input_scale is not None,
            "qmax": self.qmax,
        }

    @classmethod
    def build(cls, description: dict[str, Any]) -> Int8Linear:
        return cls(
            description["in_features"],
            description["out_features"],
            description["bias"],
            description.get("act", "token"),
            description.get("smoothed", False),
            description.get("qmax", 127),
        )

    def extra_repr(self) -> str:
        smoothed = ", smoothed" if self.input_scale is not None else ""
        grid = "" if self.qmax == 127 else f", qmax={self.qmax}"
        return f"in={self.in_features}, out={self.out_features}, act={self.act!r}{smoothed}{grid}"


def _ort_dynamic_uint8(x: torch.Tensor) -> torch.Tensor:
    """ONNX Runtime's ``DynamicQuantizeLinear``, quantized and dequantized: one asymmetric
    uint8 scale for the whole tensor over ``[min(0, min x), max(0, max x)]``."""
    low = x.detach().min().clamp(max=0.0)
    high = x.detach().max().clamp(min=0.0)
    scale = ((high - low) / 255.0).clamp(min=1e-12)
    zero = torch.round(-low / scale).clamp(0, 255)
    return (torch.round(x / scale + zero).clamp(0, 255) - zero) * scale


class ScaledLinear(nn.Linear):
    """``Linear(x * input_scale)``: a Linear whose weight columns absorbed SmoothQuant's
    per-channel scales. Transient -- :func:`smooth_linears` makes it for
    :func:`quantize_linears` to turn into a smoothed :class:`Int8Linear`, and export copies
    use it (one ``Mul`` before the ``MatMul``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.register_buffer("input_scale", torch.ones(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x * self.input_scale, self.weight, self.bias)


# ------------------------------------------------------------------ SmoothQuant


@torch.no_grad()
def input_maxima(
    model: nn.Module, names: list[str], batches: list[Any], device: torch.device | None = None
) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """Per-input-channel ``max |x|`` of the named Linear layers over ``batches``, and the
    groups of layers that read the same input tensor (e.g. query / key / value).

    The groups come from a first pass over one batch that keeps every layer's input tensor
    object alive until the pass ends and compares objects, not addresses: a tensor freed
    during the forward can hand its memory to a later, different one (same address, same
    shape), and grouping by address tied unrelated layers (on MiniLM it changed the scales
    from run to run).
    """
    from torchslim.batches import call_model, split_batch
    from torchslim.device import on_device

    maxima: dict[str, torch.Tensor] = {}
    probe: dict[str, torch.Tensor] | None = {}
    hooks = []
    for name in names:

        def hook(module: nn.Module, args: tuple, name: str = name) -> None:
            if probe is not None:
                probe.setdefault(name, args[0])  # the object itself, held until grouped
                return
            x = args[0].detach()
            peak = x.abs().flatten(0, -2).amax(0).float()
            maxima[name] = torch.maximum(maxima[name], peak) if name in maxima else peak

        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    groups: dict[int, list[str]] = {}
    try:
        with on_device(model, device or torch.device("cpu")):  # statistics on the device
            for batch in batches[:1]:
                call_model(model, split_batch(batch)[0])
            for name in names:
                if name in probe:  # all held: ids are distinct unless the object is one
                    groups.setdefault(id(probe[name]), []).append(name)
            probe = None
            for batch in batches:
                call_model(model, split_batch(batch)[0])
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    return {k: v.cpu() for k, v in maxima.items()}, list(groups.values())


def _value_out_pairs(model: nn.Module, names: set[str]) -> dict[str, str]:
    """``{attention output projection: value projection}`` of attention layers, both chosen."""
    modules = {id(m): n for n, m in model.named_modules()}
    pairs = {}
    for finder in VALUE_OUT_FINDERS:
        for out_layer, value_layer in finder(model):
            out, value = modules.get(id(out_layer)), modules.get(id(value_layer))
            if out in names and value in names:
                pairs[out] = value
    return pairs


@torch.no_grad()
def smooth_linears(
    model: nn.Module,
    batches: list[Any],
    alpha: float = 0.7,
    scope: Scope | None = None,
    inplace: bool = False,
    device: torch.device | None = None,
) -> nn.Module:
    """SmoothQuant: move activation outliers into the weights (exact in float; see above);
    the calibration passes run on ``device`` (default: the CPU).

    Every chosen Linear becomes a :class:`ScaledLinear` -- except an attention output
    projection, whose scale is folded into its value projection's rows and bias.
    """
    import copy

    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"smooth alpha must be in (0, 1), got {alpha}; 0.5-0.8 is typical")
    target = model if inplace else copy.deepcopy(model)
    chosen = dict(_selected(target, (nn.Linear,), scope or Scope()))
    if not chosen:
        raise UnsupportedError("SmoothQuant found no nn.Linear layer in the model")
    maxima, groups = input_maxima(target, list(chosen), batches, device)
    if len(maxima) != len(chosen):
        missing = sorted(set(chosen) - set(maxima))[:3]
        raise ConfigError(f"calibration never reached Linear layer(s) {missing}; check the data")
    scales = {}
    for group in groups:  # layers reading one input (query / key / value) share its scale
        weight_peak = torch.stack(
            [chosen[n].weight.detach().abs().amax(0).float() for n in group]
        ).amax(0)
        activation = torch.stack([maxima[n] for n in group]).amax(0).clamp(min=1e-5)
        scale = (activation**alpha / weight_peak.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
        scales.update({n: scale for n in group})
    folded = _value_out_pairs(target, set(chosen))
    for out, value in folded.items():
        source = chosen[value]
        source.weight.div_(scales[out].to(source.weight.dtype)[:, None])
        if source.bias is not None:
            source.bias.div_(scales[out].to(source.bias.dtype))
    for name, linear in chosen.items():
        scale = scales[name].to(linear.weight.dtype)
        if name in folded:
            linear.weight.mul_(scale[None, :])
            continue
        scaled = ScaledLinear(linear.in_features, linear.out_features, linear.bias is not None)
        scaled.weight.copy_(linear.weight * scale[None, :])
        if linear.bias is not None:
            scaled.bias.copy_(linear.bias)
        scaled.input_scale.copy_(1.0 / scale)
        set_module(target, name, scaled.to(linear.weight.device).train(linear.training))
    return target


def _selected(
    model: nn.Module, types: tuple[type, ...], scope: Scope
) -> list[tuple[str, nn.Module]]:
    scope.check_known(model)
    return scope.select(model, types)


def quantize_linears(
    model: nn.Module,
    act: str = "token",
    scope: Scope | None = None,
    inplace: bool = False,
    qmax: int = 127,
) -> nn.Module:
    """Replace every ``nn.Linear`` (in ``scope``) by an :class:`Int8Linear` (weights on
    ``[-qmax, qmax]``)."""
    import copy

    target = model if inplace else copy.deepcopy(model)
    chosen = _selected(target, (nn.Linear,), scope or Scope())
    if not chosen:
        raise UnsupportedError("int8 Linear quantization found no nn.Linear layer in the model")
    for name, module in chosen:
        set_module(target, name, Int8Linear.from_linear(module, act, qmax))
    return target.eval()


# ------------------------------------------------------------------ technique config


@register_config
@dataclass(frozen=True)
class LinearInt8(TechniqueConfig):
    """int8 Linear layers: per-channel symmetric weights stored as int8, dynamic int8 inputs.

    Args:
        act: ``token`` (dynamic per-token int8 activations, as torchao runs them),
            ``tensor`` (one uint8 scale per tensor, as ONNX Runtime's dynamic int8 runs
            them) or ``none`` (weight-only).
        scope: which Linear layers (default: all).
        smooth: SmoothQuant migration strength alpha in (0, 1); 0 (default) is off. 0.7
            suits BERT-family encoders deployed as ONNX Runtime dynamic int8 (whose
            activation scale is one per tensor).
        calibration_batches: batches of the task's train split (test split when it has
            none) that measure the activation maxima for ``smooth``.
        reduce_range: weights on the 7-bit grid ``[-64, 64]`` (``scale = max|w_row| / 64``),
            which ONNX Runtime's u8s8 kernels compute exactly on every x86 CPU, VNNI or
            not. None (default): on for ``act="tensor"`` (the ONNX Runtime scheme), off for
            ``token`` / ``none`` (torchao re-quantizes on the full int8 grid).
    """

    name = "linear_int8"
    family = "quantization"
    act: str = "token"
    scope: Scope = Scope()
    smooth: float = 0.0
    calibration_batches: int = 8
    reduce_range: bool | None = None

    @property
    def weight_qmax(self) -> int:
        """The weight grid's bound: 64 with ``reduce_range`` in force, else 127."""
        reduce = self.act == "tensor" if self.reduce_range is None else self.reduce_range
        return 64 if reduce else 127

    def __post_init__(self) -> None:
        if self.reduce_range is not None and not isinstance(self.reduce_range, bool):
            raise ConfigError(
                f"linear_int8.reduce_range must be true, false or null, got {self.reduce_range!r}"
            )
        if self.act not in ACT_MODES:
            raise ConfigError(f"act {self.act!r} is unknown; use one of {', '.join(ACT_MODES)}")
        if isinstance(self.smooth, bool) or not (
            isinstance(self.smooth, (int, float)) and 0 <= self.smooth < 1
        ):
            raise ConfigError(
                f"linear_int8.smooth must be in [0, 1) (0 = off), got {self.smooth!r}; "
                "0.7 suits BERT-family encoders"
            )
        if (
            isinstance(self.calibration_batches, bool)
            or not isinstance(self.calibration_batches, int)
            or self.calibration_batches < 1
        ):
            raise ConfigError(
                "linear_int8.calibration_batches must be an integer >= 1, got "
                f"{self.calibration_batches!r}"
            )


@register_handler(LinearInt8)
def _linear_int8(model: nn.Module, config: LinearInt8, context: ApplyContext) -> nn.Module:
    if config.smooth:
        batches = calibration_batches(
            context.task, config.calibration_batches, "linear_int8.smooth"
        )
        model = smooth_linears(
            model, batches, config.smooth, config.scope, inplace=True, device=context.task.device
        )
    model = quantize_linears(model, config.act, config.scope, inplace=True, qmax=config.weight_qmax)
    count = sum(isinstance(m, Int8Linear) for m in model.modules())
    context.notes.setdefault("quantization", {}).update(
        technique=config.name,
        int8_linears=count,
        smoothed=sum(
            isinstance(m, Int8Linear) and m.input_scale is not None for m in model.modules()
        ),
        simulated=False,
        runtime="onnxruntime",
    )
    return model


# ------------------------------------------------------------------ search knob
# (linear_int8 as the optimizer searches it)

INT8_SMOOTH = 0.7
"""SmoothQuant alpha of the optimizer's ``linear_int8`` steps (exact in float; on
all-MiniLM-L6-v2 int8 + a 4-bit table keeps mean cosine 0.9983 in PyTorch and 0.9972 in
ONNX Runtime with it, 0.9966 and 0.9930 without)."""


def _int8_steps(values: Any, context: StepContext) -> list[TechniqueConfig]:
    chosen = [context.scope_of(layer) for layer, value in values.items() if value]
    if not chosen:
        return []
    return [LinearInt8(smooth=INT8_SMOOTH, scope=Scope(include=tuple(chosen)))]


def _int8_cost(values: Any, layer: str, cost: LayerCost, data: Any) -> None:
    if values.get(layer):
        # Int8Linear stores its weight dense (zeros cost 8 bits too) plus fp32 scales: one
        # per output channel, one per input channel (SmoothQuant)
        cost.dense = True
        cost.weight_bits = 8
        cost.extra_bits += (cost.outputs * cost.out_kept + cost.weights // cost.outputs) * 32


register_knob(
    Knob(
        name=LinearInt8.name,
        grid=(0, 1),
        rule="takes 0 (off) and/or 1 (int8)",
        valid=lambda value: value in (0, 1),
        steps=_int8_steps,
        identity=0,
        integer=True,
        order=70,
        layers=linear_layers,
        layer_cost=_int8_cost,
        exclusive="Linear layers",
        default_for=("size/embedding",),
    )
)
