"""Quantization techniques: static and dynamic PTQ, QAT (STE / LSQ), mixed precision.

Every config here produces a *simulated* model: the user's layers wrapped in
fake-quantizers (see :mod:`torchslim.techniques.fake_quant`), whose metric is
what int8 / low-bit kernels would compute. The deployed artifacts are made by
:mod:`torchslim.export` (ONNX Runtime int8, torchao int8, packed low-bit file).

Portable int8 (``reduce_range``, default on): 8-bit weights use the 7-bit grid
``[-64, 64]``, so the ONNX Runtime int8 file computes exactly the simulated integers on
every CPU, including x86 CPUs without VNNI, whose u8s8 kernels saturate pairs of
full-range products (docs/techniques.md, "int8 on every CPU").

Mixed precision: ``layer_bits=(("features.0", 8), ("re:classifier.*", 4), ("Conv1d", 6))``
sets weight bits per layer by name, ``re:`` pattern or type (the last match wins);
``layer_act_bits`` does the same for the bits of each layer's input activation
(static PTQ and QAT); ``scope.exclude`` keeps layers in float.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchslim.errors import ConfigError, ShapeError, UnsupportedError
from torchslim.techniques.base import (
    ApplyContext,
    Scope,
    TechniqueConfig,
    check_lr,
    register_config,
    register_handler,
)
from torchslim.techniques.fake_quant import (
    NORM_TYPES,
    WEIGHT_TYPES,
    ActQuantizer,
    QuantizedLayer,
    WeightQuantizer,
    fold_batchnorm,
    forward_with_weight,
    layer_bits,
    set_module,
)
from torchslim.techniques.knobs import GLOBAL, Knob, register_knob, whole_model
from torchslim.techniques.pruning import make_permanent
from torchslim.techniques.quant_math import OBSERVERS, check_bits, fake_quantize, qrange, sqnr

if TYPE_CHECKING:
    from torchslim.task import Task

_WEIGHT_OBSERVERS = ("minmax", "mse", "percentile")
RNN_TYPES: tuple[type[nn.Module], ...] = (nn.LSTM, nn.GRU)


def check_layer_bits(layer_bits_: Any, field_name: str = "layer_bits") -> None:
    for item in layer_bits_:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise ConfigError(
                f"{field_name} entries are (layer name / 're:pattern' / type, bits) pairs, "
                f"got {item!r}"
            )
        check_bits(item[1], f"{field_name} for {item[0]!r}")


@dataclass(frozen=True)
class _WeightQuantFields(TechniqueConfig):
    """Fields shared by the uniform-grid quantizers."""

    family = "quantization"
    bits: int = 8
    per_channel: bool = True
    symmetric: bool = True
    observer: str = "minmax"
    percentile: float = 99.99
    layer_bits: tuple[tuple[str, int], ...] = ()
    scope: Scope = Scope()
    reduce_range: bool = True

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if not isinstance(self.reduce_range, bool):
            raise ConfigError(
                f"reduce_range must be true or false, got {self.reduce_range!r}; keep true for "
                "int8 files that are exact on every CPU (see docs/techniques.md)"
            )
        if self.observer not in _WEIGHT_OBSERVERS:
            raise ConfigError(
                f"observer {self.observer!r} is unknown for weights; use one of "
                f"{', '.join(_WEIGHT_OBSERVERS)}"
            )
        if not 50 < self.percentile <= 100:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        check_layer_bits(self.layer_bits)


@dataclass(frozen=True)
class _StaticFields(_WeightQuantFields):
    act_bits: int = 8
    layer_act_bits: tuple[tuple[str, int], ...] = ()
    act_symmetric: bool = False
    act_observer: str = "moving_average"
    calibration_batches: int = 8
    fold_bn: bool = True
    sqnr_samples: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits(self.act_bits, "act_bits")
        check_layer_bits(self.layer_act_bits, "layer_act_bits")
        if self.act_observer not in OBSERVERS:
            raise ConfigError(
                f"act_observer {self.act_observer!r} is unknown; use one of {', '.join(OBSERVERS)}"
            )
        if self.calibration_batches < 1:
            raise ConfigError(f"calibration_batches must be >= 1, got {self.calibration_batches}")
        if self.sqnr_samples < 0:
            raise ConfigError(
                f"sqnr_samples must be >= 0 (0 skips the table), got {self.sqnr_samples}"
            )


@register_config
@dataclass(frozen=True)
class StaticQuant(_StaticFields):
    """Static post-training quantization: weights and activations on fixed grids.

    Calibrates activation ranges over ``calibration_batches`` batches of the task's
    training data, folds BatchNorm first (``fold_bn``), optionally corrects the
    bias shift of quantized weights (``bias_correction``), and records a per-layer
    SQNR table (dB) in the apply notes to find sensitive layers.
    """

    name = "static_quant"
    bias_correction: bool = False


@register_config
@dataclass(frozen=True)
class DynamicQuant(_WeightQuantFields):
    """Dynamic post-training quantization for Linear / LSTM / GRU (transformers, MLPs, RNNs).

    Weights are quantized ahead of time; activations get their range from each
    batch at run time (8-bit, asymmetric, per tensor), so no calibration data is needed.
    """

    name = "dynamic_quant"


@register_config
@dataclass(frozen=True)
class QAT(_StaticFields):
    """Quantization-aware training: fake-quant in the task's training loop (STE).

    Args (besides the static ones):
        epochs: training epochs with fake quantization.
        lr: learning rate of that training.
        learn_scales: learn the step sizes (LSQ) instead of following observers.
        freeze_observers_after: epoch after which activation ranges stop moving (None: never).
        freeze_bn_after: epoch after which BatchNorm statistics are frozen (with ``fold_bn=False``).
        distill: train by knowledge distillation from the float model (Hinton KD plus the
            task loss) instead of the task loss alone. The teacher is the apply context's
            ``teacher`` when one is given (a recipe's uncompressed model), else the float
            model as it was before quantization.
        temperature, alpha: the KD settings (``alpha`` weighs the soft term).
    """

    name = "qat"
    epochs: int = 3
    lr: float = 1e-3
    learn_scales: bool = False
    freeze_observers_after: int | None = None
    freeze_bn_after: int | None = None
    distill: bool = False
    temperature: float = 4.0
    alpha: float = 0.7

    def __post_init__(self) -> None:
        super().__post_init__()
        from torchslim.techniques.distillation import check_kd_args

        check_kd_args(self.temperature, self.alpha)
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1 for QAT, got {self.epochs}")
        check_lr(self.name, self.lr, optional=False)
        for field_name in ("freeze_observers_after", "freeze_bn_after"):
            value = getattr(self, field_name)
            if value is not None and value < 0:
                raise ConfigError(f"{field_name} must be None or >= 0 epochs, got {value}")


@register_config
@dataclass(frozen=True)
class TorchaoInt8(TechniqueConfig):
    """PyTorch-native int8 through torchao (Linear layers): ``dynamic`` or ``weight_only``.

    The result runs real int8 kernels in PyTorch; use the ``inductor`` runtime
    (torch.compile with freezing) to time it.
    """

    name = "torchao_int8"
    family = "quantization"
    mode: str = "dynamic"

    def __post_init__(self) -> None:
        if self.mode not in ("dynamic", "weight_only"):
            raise ConfigError(f"mode {self.mode!r} is unknown; use 'dynamic' or 'weight_only'")


# ------------------------------------------------------------------ preparation


def select_layers(
    model: nn.Module,
    config: _WeightQuantFields,
    supported: tuple[type[nn.Module], ...],
    context: ApplyContext,
) -> list[tuple[str, nn.Module]]:
    """Layers in scope; layers in scope that no backend quantizes are reported and skipped."""
    config.scope.check_known(model)
    for overrides in (config.layer_bits, getattr(config, "layer_act_bits", ())):
        if overrides:
            Scope(include=tuple(entry for entry, _ in overrides)).check_known(model)
    chosen = config.scope.select(model, supported)
    chosen_names = {name for name, _ in chosen}
    skipped: dict[str, str] = {}
    for name, module in config.scope.select(model, (nn.Module,)):
        if name in chosen_names or list(module.children()) or isinstance(module, NORM_TYPES):
            continue
        if isinstance(module, nn.Identity) or not isinstance(
            getattr(module, "weight", None), torch.Tensor
        ):
            continue
        inside = any(name.startswith(f"{c}.") for c in chosen_names)
        if not inside:
            skipped[name] = type(module).__name__
    if skipped:
        kinds = ", ".join(f"{n} ({t})" for n, t in skipped.items())
        names = ", ".join(sorted({t.__name__ for t in supported}))
        warnings.warn(
            f"{config.name}: skipping {kinds}: no backend quantizes these layer types "
            f"(supported: {names}); they stay float",
            stacklevel=3,
        )
    context.notes.setdefault("quantization", {})["skipped"] = skipped
    if not chosen:
        names = ", ".join(t.__name__ for t in supported)
        raise UnsupportedError(
            f"{config.name} found no layer to quantize (it handles {names}); "
            "check the scope or use another technique"
        )
    return chosen


def _wrap(
    model: nn.Module,
    config: _WeightQuantFields,
    chosen: list[tuple[str, nn.Module]],
    activations: str,
) -> dict[str, QuantizedLayer]:
    """Wrap the chosen layers; ``activations`` is ``static``, ``dynamic`` or ``none``."""
    layers: dict[str, QuantizedLayer] = {}
    for name, module in chosen:
        bits = layer_bits(name, module, config.bits, config.layer_bits)
        channels = module.weight.shape[0]
        weight_quant = WeightQuantizer(
            bits,
            config.symmetric,
            config.per_channel,
            channels,
            config.observer,
            config.percentile,
            config.reduce_range,
        )
        weight_quant.calibrate(module.weight)
        input_quant = None
        if activations == "dynamic":
            input_quant = ActQuantizer(8, symmetric=False, dynamic=True)
        elif activations == "static":
            assert isinstance(config, _StaticFields)
            act_bits = layer_bits(name, module, config.act_bits, config.layer_act_bits)
            input_quant = ActQuantizer(
                act_bits, config.act_symmetric, config.act_observer, config.percentile
            )
        wrapper = QuantizedLayer(module, weight_quant, input_quant)
        set_module(model, name, wrapper)
        layers[name] = wrapper
    return layers


def calibration_inputs(task: Task | None, batches: int, technique: str) -> list[Any]:
    """Up to ``batches`` input batches of the task's training data (validation data if none).

    Raises:
        ConfigError: no task, or a task without train and validation data.
    """
    from torchslim.batches import split_batch

    if task is None:
        raise ConfigError(
            f"{technique} calibrates on data: pass task= (a Task with train or val data)"
        )
    try:
        loader = task.loader("train")
    except ConfigError:
        try:
            loader = task.loader("val")
        except ConfigError as exc:
            raise ConfigError(
                f"{technique} needs calibration data but task {task.name!r} has no train or "
                "val split; give the task train= data"
            ) from exc
    inputs = []
    for batch in loader:
        inputs.append(split_batch(batch)[0])
        if len(inputs) >= batches:
            break
    if not inputs:
        raise ConfigError(f"{technique}: task {task.name!r} has an empty calibration split")
    return inputs


def run_batch(model: nn.Module, inputs: Any, technique: str) -> torch.Tensor:
    """Forward one calibration batch; a shape the model rejects becomes a clear ShapeError."""
    from torchslim.batches import call_model, describe_inputs

    try:
        return call_model(model, inputs)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShapeError(
            f"{technique}: calibration data of shape {describe_inputs(inputs)} does not fit the model "
            f"({first}); calibrate with data shaped like the model's inputs"
        ) from exc


@torch.no_grad()
def calibrate(
    model: nn.Module, layers: dict[str, QuantizedLayer], inputs: list[Any], name: str
) -> None:
    """Observe activation ranges over the batches, then fix them."""
    quantizers = [layer.input_quant for layer in layers.values() if layer.input_quant is not None]
    quantizers = [q for q in quantizers if q.mode != "dynamic"]
    model.eval()
    for quantizer in quantizers:
        quantizer.mode = "calibrate"
    for batch in inputs:
        run_batch(model, batch, name)
    for quantizer in quantizers:
        quantizer.freeze()


@torch.no_grad()
def correct_bias(layers: dict[str, QuantizedLayer], model: nn.Module, inputs: list[Any]) -> None:
    """Empirical bias correction: remove the mean output shift each quantized weight causes."""
    shifts: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def capture(layer: QuantizedLayer, args: tuple[Any, ...]) -> None:
            x = args[0]
            if layer.input_quant is not None:
                x = layer.input_quant(x)
            diff = forward_with_weight(layer.module, x, layer.weight_quant(layer.module.weight))
            diff = diff - forward_with_weight(layer.module, x, layer.module.weight)
            dims = [d for d in range(diff.dim()) if d != (1 if diff.dim() > 2 else diff.dim() - 1)]
            shifts[name] = shifts.get(name, 0) + diff.mean(dim=dims)
            counts[name] = counts.get(name, 0) + 1

        return capture

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    try:
        for batch in inputs:
            run_batch(model, batch, "bias correction")
    finally:
        for handle in handles:
            handle.remove()
    for name, layer in layers.items():
        if name not in shifts:
            continue
        shift = shifts[name] / counts[name]
        module = layer.module
        bias = module.bias if module.bias is not None else torch.zeros_like(shift)
        module.bias = nn.Parameter((bias - shift).detach().clone())


@torch.no_grad()
def sqnr_table(
    float_model: nn.Module, quant_model: nn.Module, layers: dict[str, QuantizedLayer], inputs: Any
) -> dict[str, Any]:
    """SQNR in dB per layer: of its own output, and of the model output with only it quantized.

    The second number ranks sensitivity: the lowest are the layers to keep in
    float or give more bits.
    """
    from torchslim.batches import call_model

    float_out: dict[str, torch.Tensor] = {}
    quant_out: dict[str, torch.Tensor] = {}

    def keep(store: dict[str, torch.Tensor], name: str):
        def capture(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            store[name] = output.detach()

        return capture

    handles = [
        float_model.get_submodule(n).register_forward_hook(keep(float_out, n)) for n in layers
    ]
    handles += [layer.register_forward_hook(keep(quant_out, n)) for n, layer in layers.items()]
    float_model.eval()
    quant_model.eval()
    try:
        reference = call_model(float_model, inputs)
        output = call_model(quant_model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    table: dict[str, Any] = {"model_db": _db(sqnr(reference, output)), "layers": {}}
    states = {name: layer.enabled for name, layer in layers.items()}
    try:
        for name in layers:
            for other, layer in layers.items():
                layer.enabled = other == name
            isolated = call_model(quant_model, inputs)
            table["layers"][name] = {
                "bits": layers[name].bits,
                "output_db": _db(sqnr(float_out[name], quant_out[name])),
                "isolated_db": _db(sqnr(reference, isolated)),
            }
    finally:
        for name, layer in layers.items():
            layer.enabled = states[name]
    return table


def _sqnr_on(
    context: ApplyContext,
    reference: nn.Module,
    model: nn.Module,
    layers: dict[str, QuantizedLayer],
    inputs: Any,
) -> dict[str, float]:
    """:func:`sqnr_table` with both models on the task's device."""
    from torchslim.device import on_device

    device = context.task.device
    with on_device(reference, device), on_device(model, device):
        return sqnr_table(reference, model, layers, inputs)


def _db(value: float) -> float:
    return round(value, 2) if math.isfinite(value) else 999.0


def _sqnr_inputs(inputs: list[Any], samples: int) -> Any:
    from torchslim.batches import batch_size_of, slice_inputs

    first = inputs[0]
    return slice_inputs(first, min(samples, batch_size_of(first)))


def _notes(
    context: ApplyContext, config: TechniqueConfig, layers: dict[str, QuantizedLayer], **extra: Any
) -> dict[str, Any]:
    notes = context.notes.setdefault("quantization", {})
    notes.update(
        technique=config.name,
        simulated=True,
        layers={
            name: {
                "type": type(layer.module).__name__,
                "bits": layer.bits,
                "act_bits": layer.input_quant.bits if layer.input_quant is not None else None,
            }
            for name, layer in layers.items()
        },
        **extra,
    )
    return notes


def _prepare_static(
    model: nn.Module, config: _StaticFields, context: ApplyContext
) -> tuple[dict[str, QuantizedLayer], list[Any], nn.Module, list[str]]:
    from torchslim.device import on_device

    inputs = calibration_inputs(context.task, config.calibration_batches, config.name)
    model.eval()
    with on_device(model, context.task.device):
        run_batch(model, inputs[0], config.name)
    make_permanent(model)  # pruning masks become plain zeros before layers are wrapped
    folded = fold_batchnorm(model) if config.fold_bn else []
    reference = copy.deepcopy(model)
    chosen = select_layers(model, config, WEIGHT_TYPES, context)
    layers = _wrap(model, config, chosen, "static")
    with on_device(model, context.task.device):  # calibration passes on the task's device
        calibrate(model, layers, inputs, config.name)
    return layers, inputs, reference, folded


# ------------------------------------------------------------------ handlers


@register_handler(StaticQuant)
def _static_quant(model: nn.Module, config: StaticQuant, context: ApplyContext) -> nn.Module:
    layers, inputs, reference, folded = _prepare_static(model, config, context)
    if config.bias_correction:
        from torchslim.device import on_device

        with on_device(model, context.task.device):
            correct_bias(layers, model, inputs)
    table = (
        _sqnr_on(context, reference, model, layers, _sqnr_inputs(inputs, config.sqnr_samples))
        if config.sqnr_samples
        else {}
    )
    _notes(context, config, layers, folded_bn=folded, sqnr_db=table)
    return model.eval()


@register_handler(DynamicQuant)
def _dynamic_quant(model: nn.Module, config: DynamicQuant, context: ApplyContext) -> nn.Module:
    make_permanent(model)  # pruning masks become plain zeros before layers are wrapped
    chosen = select_layers(model, config, (nn.Linear, *RNN_TYPES), context)
    linears = [(n, m) for n, m in chosen if isinstance(m, nn.Linear)]
    layers = _wrap(model, config, linears, "dynamic")
    rnn_notes: dict[str, int] = {}
    for name, module in chosen:
        if isinstance(module, RNN_TYPES):
            rnn_notes[name] = _quantize_rnn_weights(module, config, name)
    _notes(context, config, layers, rnn_weights_only=rnn_notes)
    return model.eval()


@torch.no_grad()
def _quantize_rnn_weights(module: nn.Module, config: DynamicQuant, name: str) -> int:
    """Round an LSTM / GRU's weight matrices to their grid in place (activations stay float)."""
    bits = layer_bits(name, module, config.bits, config.layer_bits)
    qmin, qmax = qrange(bits, config.symmetric, config.reduce_range)
    for param_name, param in module.named_parameters():
        if not param_name.startswith("weight"):
            continue
        quantizer = WeightQuantizer(
            bits,
            config.symmetric,
            config.per_channel,
            param.shape[0],
            config.observer,
            reduce_range=config.reduce_range,
        )
        quantizer.calibrate(param)
        param.copy_(
            fake_quantize(param, quantizer.scale, quantizer.zero_point, qmin, qmax, quantizer.axis)
        )
    return bits


@register_handler(QAT)
def _qat(model: nn.Module, config: QAT, context: ApplyContext) -> nn.Module:
    layers, inputs, reference, folded = _prepare_static(model, config, context)
    task = context.task
    acts = [layer.input_quant for layer in layers.values() if layer.input_quant is not None]
    for quantizer in acts:
        quantizer.mode = "quant" if config.learn_scales else "qat"
    if config.learn_scales:
        for layer in layers.values():
            layer.weight_quant.make_learnable()
            if layer.input_quant is not None:
                layer.input_quant.make_learnable()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    steps_per_epoch = max(1, len(task.loader("train", shuffle=True)))

    def freeze_bn(module: nn.Module, _args: Any) -> None:
        module.training = False

    frozen_bn: list[Any] = []

    def after_step(_model: nn.Module, step: int) -> None:
        epoch = step / steps_per_epoch
        if config.freeze_observers_after is not None and epoch >= config.freeze_observers_after:
            for quantizer in acts:
                if quantizer.mode == "qat":
                    quantizer.freeze()
        if config.freeze_bn_after is not None and epoch >= config.freeze_bn_after and not frozen_bn:
            frozen_bn.extend(bn.register_forward_pre_hook(freeze_bn) for bn in norms)

    after_step(model, 0)
    teacher_note = None
    if config.distill:
        from torchslim.techniques.distillation import distill

        teacher = context.teacher if context.teacher is not None else reference
        teacher_note = "context teacher" if context.teacher is not None else "float model"
        result = distill(
            model,
            teacher,
            task,
            epochs=config.epochs,
            lr=config.lr,
            temperature=config.temperature,
            alpha=config.alpha,
            after_step=after_step,
        )
    else:
        result = task.fit(
            model, epochs=config.epochs, lr=config.lr, after_step=after_step, description="qat"
        )
    for handle in frozen_bn:
        handle.remove()
    for quantizer in acts:
        quantizer.freeze()
    table = (
        _sqnr_on(context, reference, model, layers, _sqnr_inputs(inputs, config.sqnr_samples))
        if config.sqnr_samples
        else {}
    )
    _notes(
        context,
        config,
        layers,
        folded_bn=folded,
        sqnr_db=table,
        train_seconds=round(result.seconds, 3),
        final_loss=result.final_loss,
        distilled_from=teacher_note,
    )
    return model.eval()


@register_handler(TorchaoInt8)
def _torchao_int8(model: nn.Module, config: TorchaoInt8, context: ApplyContext) -> nn.Module:
    from torchslim.export.torchao_int8 import quantize_torchao

    model = quantize_torchao(model, config.mode, inplace=True)
    context.notes.setdefault("quantization", {}).update(
        technique=config.name, simulated=False, runtime="inductor"
    )
    return model


# ------------------------------------------------------------------ search knob


def _static_model_cost(values: Any, total: float, objective: str, data: Any) -> float:
    if objective != "size" and values.get(GLOBAL):
        return total / 2.5  # int8 kernels: a rough prior; the search measures the real speedup
    return total


register_knob(
    Knob(
        name=StaticQuant.name,
        grid=(0, 1),
        rule="takes 0 (off) and/or 1 (int8)",
        valid=lambda value: value in (0, 1),
        steps=lambda values, context: [StaticQuant(bits=8)] if values.get(GLOBAL) else [],
        identity=0,
        integer=True,
        order=90,
        layers=whole_model,
        model_cost=_static_model_cost,
        reference=lambda epochs: None,  # measured without recovery, as its recipes run
        default_for=("latency/onnxruntime",),
    )
)
