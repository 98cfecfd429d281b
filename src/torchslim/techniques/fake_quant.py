"""Fake-quantization modules, BatchNorm folding, and module surgery helpers.

A quantized layer is the user's own ``Linear`` / ``Conv`` module wrapped in a
:class:`QuantizedLayer` at the same name: its input goes through an
:class:`ActQuantizer` and its weight through a :class:`WeightQuantizer` before the
module's own operation runs. The float weight is kept (QAT trains it); the
integer codes and scales are what a packed artifact stores.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import CheckpointError
from torchslim.structure import build_module, describe_module, register_module_type
from torchslim.techniques.quant_math import (
    compute_qparams,
    dequantize,
    fake_quantize,
    grad_scale,
    make_observer,
    qrange,
    quantize,
)

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
WEIGHT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, *CONV_TYPES)
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def forward_with_weight(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Run a Linear or Conv module's operation with another weight tensor."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, module.bias)
    return module._conv_forward(x, weight, module.bias)  # type: ignore[union-attr,operator]


class WeightQuantizer(nn.Module):
    """Fake-quantizes a weight on a fixed grid (per output channel or per tensor).

    Args:
        bits: bit width (2-8).
        symmetric: symmetric signed grid or asymmetric with a zero point.
        per_channel: one scale per output channel (axis 0) instead of one per tensor.
        channels: number of output channels.
        observer: how the range is chosen from the weight (``minmax``, ``mse``, ``percentile``).
        percentile: percentile of the ``percentile`` observer.
        reduce_range: an 8-bit grid narrowed to 7 bits (``[-64, 64]``), which ONNX Runtime's
            u8s8 int8 kernels compute exactly on every x86 CPU (see :func:`qrange`).
    """

    def __init__(
        self,
        bits: int,
        symmetric: bool,
        per_channel: bool,
        channels: int,
        observer: str = "minmax",
        percentile: float = 99.99,
        reduce_range: bool = False,
    ) -> None:
        super().__init__()
        self.bits, self.symmetric = bits, symmetric
        self.reduce_range = reduce_range and bits == 8
        self.qmin, self.qmax = qrange(bits, symmetric, self.reduce_range)
        self.axis: int | None = 0 if per_channel else None
        self.observer, self.percentile = observer, percentile
        shape = (channels,) if per_channel else ()
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("zero_point", torch.zeros(shape))

    @property
    def learnable(self) -> bool:
        """Whether the scale is trained (LSQ)."""
        return isinstance(self.scale, nn.Parameter)

    @torch.no_grad()
    def calibrate(self, weight: torch.Tensor) -> None:
        """Choose scale and zero point from the weight itself."""
        observer = make_observer(
            self.observer, self.bits, self.symmetric, self.axis, self.percentile, self.reduce_range
        )
        observer.update(weight)
        scale, zero_point = observer.qparams()
        self.scale.data.copy_(scale.reshape(self.scale.shape))
        self.zero_point.copy_(zero_point.reshape(self.zero_point.shape))

    def make_learnable(self) -> None:
        """Turn the scale into a trained parameter (learned step size, LSQ)."""
        if not self.learnable:
            value = self.scale.detach().clone()
            del self._buffers["scale"]
            self.scale = nn.Parameter(value)

    def scale_of(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.learnable:
            return self.scale
        per_scale = weight.numel() / max(1, self.scale.numel())
        return grad_scale(self.scale.abs().clamp_min(1e-12), 1 / math.sqrt(per_scale * self.qmax))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize ``weight`` (differentiable: STE, LSQ for a learned scale)."""
        return fake_quantize(
            weight, self.scale_of(weight), self.zero_point, self.qmin, self.qmax, self.axis
        )

    @torch.no_grad()
    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``weight`` (int32, in ``[qmin, qmax]``)."""
        return quantize(
            weight, self.scale_of(weight), self.zero_point, self.qmin, self.qmax, self.axis
        )

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Real weights of integer codes."""
        return dequantize(codes, self.scale_of(codes).detach(), self.zero_point, self.axis)


class ActQuantizer(nn.Module):
    """Fake-quantizes activations with one scale per tensor.

    Modes: ``off`` (identity), ``calibrate`` (observe, pass through), ``qat``
    (observe while training and quantize with the current range), ``quant``
    (fixed range) and ``dynamic`` (range of each batch, computed at run time).
    """

    def __init__(
        self,
        bits: int,
        symmetric: bool = False,
        observer: str = "moving_average",
        percentile: float = 99.99,
        dynamic: bool = False,
    ) -> None:
        super().__init__()
        self.bits, self.symmetric = bits, symmetric
        self.qmin, self.qmax = qrange(bits, symmetric)
        self.observer_name, self.percentile = observer, percentile
        self.mode = "dynamic" if dynamic else "off"
        self.observer = (
            None if dynamic else make_observer(observer, bits, symmetric, None, percentile)
        )
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros(()))

    @property
    def learnable(self) -> bool:
        """Whether the scale is trained (LSQ)."""
        return isinstance(self.scale, nn.Parameter)

    def make_learnable(self) -> None:
        """Turn the scale into a trained parameter (learned step size, LSQ)."""
        if not self.learnable:
            value = self.scale.detach().clone()
            del self._buffers["scale"]
            self.scale = nn.Parameter(value)

    @torch.no_grad()
    def freeze(self) -> None:
        """Fix the range from what was observed and quantize from now on."""
        if self.mode == "dynamic":
            return
        if self.observer is not None and self.observer.ready and not self.learnable:
            scale, zero_point = self.observer.qparams()
            self.scale.data.copy_(scale)
            self.zero_point.copy_(zero_point)
        self.mode = "quant"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Observe and/or fake-quantize ``x`` according to the mode."""
        if self.mode == "off":
            return x
        if self.mode == "dynamic":
            low, high = x.detach().aminmax()
            scale, zero_point = compute_qparams(low, high, self.bits, self.symmetric)
            return fake_quantize(x, scale, zero_point, self.qmin, self.qmax)
        if self.mode == "calibrate" or (self.mode == "qat" and self.training):
            assert self.observer is not None
            self.observer.update(x)
            if self.mode == "calibrate":
                return x
            if not self.learnable:
                with torch.no_grad():
                    scale, zero_point = self.observer.qparams()
                    self.scale.copy_(scale)
                    self.zero_point.copy_(zero_point)
        scale = self.scale
        if self.learnable:
            factor = 1 / math.sqrt(max(1, x[0].numel()) * self.qmax)
            scale = grad_scale(self.scale.abs().clamp_min(1e-12), factor)
        return fake_quantize(x, scale, self.zero_point, self.qmin, self.qmax)


class QuantizedLayer(nn.Module):
    """A Linear / Conv module with fake-quantized weight and (optionally) input.

    ``enabled = False`` runs the float layer (used to measure one layer's sensitivity).
    """

    def __init__(
        self, module: nn.Module, weight_quant: WeightQuantizer, input_quant: ActQuantizer | None
    ) -> None:
        super().__init__()
        self.module = module
        self.weight_quant = weight_quant
        self.input_quant = input_quant
        self.enabled = True

    @property
    def bits(self) -> int:
        """Weight bit width."""
        return self.weight_quant.bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The module's operation on the quantized input and weight."""
        if not self.enabled:
            return self.module(x)
        if self.input_quant is not None:
            x = self.input_quant(x)
        return forward_with_weight(self.module, x, self.weight_quant(self.module.weight))

    @torch.no_grad()
    def codes(self) -> torch.Tensor:
        """Integer codes of the weight."""
        return self.weight_quant.codes(self.module.weight)

    @torch.no_grad()
    def dequantized_weight(self) -> torch.Tensor:
        """The weight as the quantized layer sees it."""
        return self.weight_quant.decode(self.codes())

    def to_float(self) -> nn.Module:
        """A plain module holding the dequantized weight (for export to other runtimes)."""
        plain = copy.deepcopy(self.module)
        plain.weight = nn.Parameter(self.dequantized_weight())
        return plain


# ------------------------------------------------------------------ module surgery


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) with ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def is_simulated(model: nn.Module) -> bool:
    """Whether ``model`` holds fake-quantized layers (its metric is simulated, not deployed)."""
    return any(isinstance(m, QuantizedLayer) for m in model.modules())


def to_float_model(model: nn.Module) -> nn.Module:
    """A copy with every quantization wrapper replaced by a plain module of dequantized weights."""
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if name and callable(getattr(module, "to_float", None)):
            set_module(plain, name, module.to_float())
    return plain


# ------------------------------------------------------------------ BatchNorm folding


@torch.no_grad()
def _fold_pair(layer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` (eval statistics) into the preceding Linear / Conv ``layer``."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    factor = gamma / std
    weight = layer.weight
    shape = [-1] + [1] * (weight.dim() - 1)
    if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return
    layer.weight.mul_(factor.reshape(shape))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * factor + beta
    layer.bias = nn.Parameter(new_bias.detach().clone())


def _foldable(layer: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(bn, _BN_TYPES) or bn.running_var is None:
        return False
    if isinstance(layer, CONV_TYPES):
        return layer.out_channels == bn.num_features
    return isinstance(layer, nn.Linear) and layer.out_features == bn.num_features


def fold_batchnorm(model: nn.Module) -> list[str]:
    """Fold every BatchNorm that directly follows a Conv / Linear into it, in place.

    The BatchNorm becomes ``nn.Identity``. Pairs are found on the torch.fx graph
    (any model that traces), else among consecutive children of ``nn.Sequential``.
    Returns the names of the folded BatchNorm modules.
    """
    pairs: list[tuple[str, str]] = []
    modules = dict(model.named_modules())
    if not any(isinstance(m, _BN_TYPES) for m in modules.values()):
        return []  # nothing to fold: no trace, no warning (e.g. a transformer)
    try:
        graph = torch.fx.symbolic_trace(model).graph
        for node in graph.nodes:
            if node.op != "call_module" or not node.args:
                continue
            source = node.args[0]
            if not isinstance(source, torch.fx.Node) or source.op != "call_module":
                continue
            if len(source.users) == 1 and _foldable(modules[source.target], modules[node.target]):
                pairs.append((str(source.target), str(node.target)))
    except Exception as exc:  # noqa: BLE001 - tracing fails on data-dependent control flow
        warnings.warn(
            f"BatchNorm folding: the model does not trace with torch.fx ({type(exc).__name__}); "
            "folding only Conv/Linear -> BatchNorm pairs inside nn.Sequential",
            stacklevel=2,
        )
        for name, module in modules.items():
            if isinstance(module, nn.Sequential):
                children = list(module.named_children())
                for (first, a), (second, b) in zip(children, children[1:], strict=False):
                    if _foldable(a, b):
                        prefix = f"{name}." if name else ""
                        pairs.append((prefix + first, prefix + second))
    was_training = model.training
    model.eval()
    for layer_name, bn_name in pairs:
        _fold_pair(modules[layer_name], modules[bn_name])
        set_module(model, bn_name, nn.Identity())
    model.train(was_training)
    return [bn for _, bn in pairs]


def layer_bits(name: str, module: nn.Module, default: int, overrides: Any) -> int:
    """The bit width of one layer: the default, or the last override whose entry matches it."""
    from torchslim.techniques.base import Scope

    bits = default
    for entry, value in overrides:
        if Scope.matches(entry, name, module):
            bits = value
    return bits


# ------------------------------------------------------------------ checkpoint structure


def _describe_quantized(module: nn.Module) -> dict[str, Any] | None:
    assert isinstance(module, QuantizedLayer)
    inner = describe_module(module.module)
    if inner is None:
        return None
    wq, iq = module.weight_quant, module.input_quant
    return {
        "module": inner,
        "enabled": bool(module.enabled),
        "weight": {
            "bits": wq.bits,
            "symmetric": bool(wq.symmetric),
            "per_channel": wq.axis == 0,
            "channels": int(wq.scale.numel()),
            "observer": wq.observer,
            "percentile": float(wq.percentile),
            "reduce_range": bool(wq.reduce_range),
        },
        "input": None
        if iq is None
        else {
            "bits": iq.bits,
            "symmetric": bool(iq.symmetric),
            "observer": iq.observer_name,
            "percentile": float(iq.percentile),
            "mode": iq.mode,
        },
    }


def _build_quantized(args: dict[str, Any]) -> nn.Module:
    inner = build_module(args["module"])
    w = args["weight"]
    weight_quant = WeightQuantizer(
        int(w["bits"]),
        bool(w["symmetric"]),
        bool(w["per_channel"]),
        int(w["channels"]),
        observer=str(w["observer"]),
        percentile=float(w["percentile"]),
        reduce_range=bool(w["reduce_range"]),
    )
    i = args.get("input")
    input_quant = None
    if i is not None:
        mode = str(i["mode"])
        if mode not in ("off", "calibrate", "qat", "quant", "dynamic"):
            raise CheckpointError(f"checkpoint structure names quantizer mode {mode!r}")
        input_quant = ActQuantizer(
            int(i["bits"]),
            bool(i["symmetric"]),
            observer=str(i["observer"]),
            percentile=float(i["percentile"]),
            dynamic=mode == "dynamic",
        )
        input_quant.mode = mode
    layer = QuantizedLayer(inner, weight_quant, input_quant)
    layer.enabled = bool(args.get("enabled", True))
    return layer


register_module_type(QuantizedLayer, _describe_quantized, _build_quantized)
