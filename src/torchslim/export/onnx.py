"""ONNX export (fp32) and ONNX Runtime int8: the deployed artifact of a quantized model.

* :func:`export_onnx` writes an fp32 ``.onnx`` file (fake-quant and codebook layers
  become plain layers holding their dequantized weights). It uses torch's
  TorchScript exporter (``dynamo=False``: fast, and what ONNX Runtime's quantizer
  is tested on) or the ``torch.export``-based one (``exporter="dynamo"``).
* :func:`quantize_onnx` makes an ONNX Runtime int8 model: static QDQ (per-channel
  weights, activations calibrated on the task's data) for conv nets, or dynamic
  (int8 MatMul weights, activations quantized at run time) for Linear-heavy nets.
  For a fake-quantized model, :func:`export_ort_int8` carries torchslim's own
  scales and zero points (calibrated by static PTQ, learned by QAT / LSQ) into
  the QDQ graph (:func:`layer_qparams`, ONNX Runtime's ``TensorQuantOverrides``),
  so the deployed integers are the simulated ones; ONNX Runtime calibrates only
  the tensors the simulation leaves in float (the model's output).
* :class:`OrtModule` (in :mod:`torchslim.export.ort`, importable from here) runs an
  ``.onnx`` file as an ``nn.Module``, so a task's metric, ``measure`` and
  ``benchmark_latency`` work on the deployed artifact itself.
* The ``onnxruntime`` runtime (``RUNTIMES["onnxruntime"]``) times a PyTorch model
  exported to fp32 ONNX, or an :class:`OrtModule` as it is.
* This module registers the deployment formats ``onnx`` and ``onnx-int8`` (which claims
  models with uniform-grid quantized layers: what ONNX Runtime int8 runs).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from torchslim.artifacts import ArtifactFormat, ExportOptions, register_format
from torchslim.errors import ConfigError, UnsupportedError
from torchslim.export.onnx_graph import gemm_to_matmul

# the sessions live in export/ort.py; these names stay importable from here
from torchslim.export.ort import (  # noqa: E402,F401
    KERNEL_FALLBACKS,
    OrtModule,
    OrtSession,
    as_tuple,
    missing_kernel,
    onnx_io,
    ort_session,
    session_runner,
)
from torchslim.fileio import atomic_path
from torchslim.hardware import PORTABLE_WEIGHT_BOUND, stamp_onnx
from torchslim.measure import register_runtime
from torchslim.progress import quiet_logs
from torchslim.techniques.fake_quant import to_float_model

if TYPE_CHECKING:
    from torchslim.task import Task

DEFAULT_OPSET = 17
_DYNAMIC_OPS = ("MatMul", "Attention", "LSTM", "Gather")
_OP_PATTERN = re.compile(r"'((?:aten|prim|onnx|quantized)::[\w.]+)'|operator (\w+::[\w.]+)")


def default_input_names(count: int) -> list[str]:
    """Names of the ONNX graph's inputs: ``input`` or ``input_0``, ``input_1``, ..."""
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
    *,
    input_names: Sequence[str] | None = None,
    output_name: str = "output",
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    float_copy: Callable[[nn.Module], nn.Module] = to_float_model,
) -> Path:
    """Export ``model`` to an fp32 ONNX file with a dynamic batch dimension.

    The exported module is ``float_copy(model)``: by default a copy with every quantization
    wrapper replaced by its float form (``to_float()``: fake-quant, codebook, int8 Linear
    layers, embedding tables); the model itself is not changed. Models with keyword inputs (transformers: :mod:`torchslim.hf.export`) pass
    their specifics as options.

    Args:
        input_names: graph input names; with dict ``example_inputs``, also which entries
            are passed, in that order (default: ``input`` / ``input_0``, ``input_1``...).
        output_name: the graph output's name.
        dynamic_axes: ``{name: {axis: label}}`` (default: axis 0 of every input and the
            output is ``batch``; TorchScript exporter only).
        float_copy: makes the module that is exported (a transformer keeps its embedding
            tables packed and switches to eager attention).

    Raises:
        UnsupportedError: the exporter cannot translate an operator (the message names it).
    """
    if exporter not in ("torchscript", "dynamo"):
        raise ConfigError(f"exporter {exporter!r} is unknown; use 'torchscript' or 'dynamo'")
    plain = float_copy(model).eval()
    if isinstance(example_inputs, dict) and input_names is not None:
        args = tuple(example_inputs[name] for name in input_names)
    else:
        args = as_tuple(example_inputs)
    names = list(input_names) if input_names is not None else default_input_names(len(args))
    axes = dynamic_axes or {n: {0: "batch"} for n in [*names, output_name]}
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            if exporter == "torchscript":
                torch.onnx.export(
                    plain,
                    args,
                    str(tmp),
                    dynamo=False,
                    input_names=names,
                    output_names=[output_name],
                    dynamic_axes=axes,
                    opset_version=opset,
                    do_constant_folding=True,
                )
            else:
                batch = torch.export.Dim("batch")
                torch.onnx.export(
                    plain,
                    args,
                    str(tmp),
                    dynamo=True,
                    input_names=names,
                    output_names=[output_name],
                    dynamic_shapes=tuple({0: batch} for _ in args),
                    opset_version=max(opset, 18),
                    verbose=False,
                )
        except Exception as exc:  # noqa: BLE001 - exporters raise many types; we name the op
            text = str(exc)
            match = _OP_PATTERN.search(text)
            op = (match.group(1) or match.group(2)) if match else None
            first = text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
            where = f"operator {op}" if op else "an operator"
            raise UnsupportedError(
                f"ONNX export failed at {where} ({first}); replace that operation in the model "
                "or keep this model on the torch runtime"
            ) from exc
    return path


class _Reader:
    """An ONNX Runtime CalibrationDataReader over a list of input batches."""

    def __init__(self, batches: Sequence[Any], names: list[str]) -> None:
        self.feeds = [
            {
                n: t.detach().cpu().numpy().astype(np.float32)
                for n, t in zip(names, as_tuple(b), strict=True)
            }
            for b in batches
        ]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


def _in_layer(node_name: str, layer: str) -> bool:
    """Whether an ONNX node (TorchScript naming) belongs to a PyTorch layer. Scopes are
    named by full path inside containers (``/0/0.0/Conv``) and by attribute name inside
    other modules (``/stages/stages.0/stages.0.0/conv1/Conv`` for ``stages.0.0.conv1``)."""
    name = f"{node_name}/"
    parent, _, child = layer.rpartition(".")
    markers = [f"/{layer}/"]
    if parent:
        markers.append(f"/{parent}/{child}/")
    return any(m in name for m in markers) or node_name.startswith(f"{layer}/")


def _excluded_nodes(model: Any, layers: Sequence[str]) -> list[str]:
    """ONNX node names that belong to the named PyTorch layers (TorchScript naming)."""
    found = []
    for layer in layers:
        hits = [n.name for n in model.graph.node if _in_layer(n.name, layer)]
        if not hits:
            warnings.warn(
                f"keep_float: no ONNX node found for layer {layer!r}; it may be quantized",
                stacklevel=3,
            )
        found += hits
    return found


# Ops that pass values through unchanged in range (max / reshape): a tensor before them
# gets the same quantization parameters as the tensor after them.
_PASS_THROUGH = ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity")
_WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


def _int8_grid(
    scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and int8 zero point of a torchslim grid, shifted to int8 codes.

    An unsigned grid ``[0, qmax]`` moves down by half its width (same real values, codes
    centred on 0: ``[0, 255]`` becomes ``[-128, 127]``, the 7-bit ``[0, 127]`` becomes
    ``[-64, 63]``, within the range u8s8 kernels compute exactly); signed grids fit as they are.
    """
    shift = (qmax + 1) // 2 if qmin == 0 else 0
    scale_np = scale.detach().abs().clamp_min(1e-12).float().cpu().numpy().astype(np.float32)
    zp = torch.round(zero_point.detach().float()).cpu().numpy().astype(np.int64) - shift
    return scale_np, zp.astype(np.int8)


_MIN_WEIGHT_SCALE = 1e-8


def layer_qparams(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Scales and zero points of each fake-quantized layer, as ONNX Runtime int8 grids.

    Returns ``{layer name: {"weight": {"scale", "zero_point", "axis"}, "input": {...} | None}}``
    (numpy arrays; ``axis`` is None for a per-tensor weight). Inputs quantized
    dynamically or not at all have ``"input": None``. Empty for a model without
    :class:`~torchslim.techniques.fake_quant.QuantizedLayer` s.
    """
    from torchslim.techniques.fake_quant import QuantizedLayer

    found: dict[str, dict[str, Any]] = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, QuantizedLayer) or not layer.enabled:
            continue
        wq = layer.weight_quant
        scale, zp = _int8_grid(wq.scale_of(layer.module.weight), wq.zero_point, wq.qmin, wq.qmax)
        # An all-zero (pruned) channel gets a degenerate scale (~1e-12): its weights are 0 on
        # any grid, but ONNX Runtime quantizes the bias with input_scale * weight_scale, and
        # such a step overflows int32. Give those channels the layer's largest scale.
        degenerate = scale < _MIN_WEIGHT_SCALE
        if degenerate.any():
            safe = scale.max() if not degenerate.all() else 1.0
            scale = np.where(degenerate, safe, scale).astype(scale.dtype)
        entry: dict[str, Any] = {
            "weight": {"scale": scale, "zero_point": zp, "axis": wq.axis},
            "input": None,
        }
        aq = layer.input_quant
        if aq is not None and aq.mode in ("quant", "qat"):
            a_scale, a_zp = _int8_grid(aq.scale, aq.zero_point, aq.qmin, aq.qmax)
            entry["input"] = {"scale": a_scale.reshape(()), "zero_point": a_zp.reshape(())}
        found[name] = entry
    return found


def _layer_node(model: Any, layer: str) -> Any | None:
    """The Conv / Gemm / MatMul node of a PyTorch layer (TorchScript naming), if exactly one."""
    hits = [n for n in model.graph.node if n.op_type in _WEIGHTED_OPS and _in_layer(n.name, layer)]
    return hits[0] if len(hits) == 1 else None


def _tensor_overrides(
    model: Any, qparams: dict[str, dict[str, Any]]
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """ONNX Runtime ``TensorQuantOverrides`` for torchslim's layer grids; also the layers not found."""
    from onnx import helper

    initializers = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    overrides: dict[str, list[dict[str, Any]]] = {}
    missing = []
    for layer, entry in qparams.items():
        node = _layer_node(model, layer)
        if node is None or len(node.input) < 2 or node.input[1] not in initializers:
            missing.append(layer)
            continue
        weight = entry["weight"]
        if weight is None:  # ONNX Runtime quantizes this weight itself
            pass
        elif weight["axis"] is None:
            overrides[node.input[1]] = [
                {
                    "scale": weight["scale"].reshape(()),
                    "zero_point": weight["zero_point"].reshape(()),
                }
            ]
        else:
            axis = 0
            if node.op_type == "Gemm":
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                axis = 0 if attrs.get("transB", 0) else 1
            elif node.op_type == "MatMul":
                axis = 1  # MatMul weights are stored (in, out)
            overrides[node.input[1]] = [
                {"axis": axis, "scale": s.reshape(()), "zero_point": z.reshape(())}
                for s, z in zip(weight["scale"], weight["zero_point"], strict=True)
            ]
        if entry["input"] is None:
            continue
        tensor = node.input[0]
        # shape (1,): ONNX Runtime squeezes them and wants arrays back, not numpy scalars
        params = {
            "scale": entry["input"]["scale"].reshape(1),
            "zero_point": entry["input"]["zero_point"].reshape(1),
        }
        overrides[tensor] = [dict(params)]
        # MaxPool / Flatten share their input's grid in ONNX Runtime's QDQ graph.
        producer = producers.get(tensor)
        while producer is not None and producer.op_type in _PASS_THROUGH:
            tensor = producer.input[0]
            if tensor in initializers:
                break
            overrides[tensor] = [dict(params)]
            producer = producers.get(tensor)
    return overrides, missing


def quantize_onnx(
    fp32_path: str | Path,
    path: str | Path,
    mode: str = "static",
    calibration: Sequence[Any] | None = None,
    per_channel: bool = True,
    activation_type: str = "int8",
    calibrate_method: str = "minmax",
    keep_float: Sequence[str] = (),
    preprocess: bool = True,
    qparams: dict[str, dict[str, Any]] | None = None,
    reduce_range: bool = True,
    op_types: Sequence[str] | None = None,
) -> Path:
    """Quantize an fp32 ONNX file with ONNX Runtime's quantizer.

    Args:
        fp32_path: the fp32 model (from :func:`export_onnx`).
        path: where to write the int8 model (atomically).
        mode: ``static`` (QDQ, calibrated; for conv nets) or ``dynamic`` (for Linear-heavy nets).
        calibration: input batches for ``static`` (e.g. :func:`calibration_inputs`).
        per_channel: one weight scale per output channel.
        activation_type: ``int8`` or ``uint8`` activations (``static``).
        calibrate_method: ``minmax``, ``percentile`` or ``entropy`` (ONNX Runtime's calibrators).
        keep_float: PyTorch layer names to leave in float.
        preprocess: run ONNX Runtime's pre-processing (shape inference, graph optimization).
        qparams: fixed grids per PyTorch layer (:func:`layer_qparams`, ``static``): these
            weights and layer inputs use them instead of ONNX Runtime's own calibration.
        reduce_range: weights ONNX Runtime quantizes itself use its 7-bit range
            (``[-64, 64]``), which its u8s8 kernels compute exactly on every x86 CPU; with
            False they use the full int8 range, exact only on CPUs with VNNI / AMX and on ARM
            (docs/techniques.md). Grids given in ``qparams`` are used as they are.
        op_types: the operators ``dynamic`` mode quantizes (default: MatMul, Attention,
            LSTM, Gather; a transformer export passes MatMul, plus Gather for float tables).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    if mode not in ("static", "dynamic"):
        raise ConfigError(f"mode {mode!r} is unknown; use 'static' or 'dynamic'")
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if calibrate_method not in methods:
        raise ConfigError(
            f"calibrate_method {calibrate_method!r} is unknown; use {', '.join(methods)}"
        )
    if activation_type not in ("int8", "uint8"):
        raise ConfigError(f"activation_type {activation_type!r} is unknown; use int8 or uint8")
    if mode == "static" and not calibration:
        raise ConfigError("static ONNX quantization needs calibration batches; pass calibration=")
    with quiet_logs(""), tempfile.TemporaryDirectory(prefix="torchslim-onnx-") as tmp:
        source = Path(tmp) / "source.onnx"
        if preprocess:
            quant_pre_process(str(fp32_path), str(source), skip_symbolic_shape=True)
        else:
            shutil.copyfile(fp32_path, source)
        model = onnx.load(str(source))
        if mode == "dynamic":
            model = gemm_to_matmul(model)
            onnx.save(model, str(source))
        exclude = _excluded_nodes(model, keep_float)
        names = [i.name for i in model.graph.input]
        extra: dict[str, Any] = {}
        if mode == "static" and qparams:
            overrides, missing = _tensor_overrides(model, qparams)
            if missing:
                warnings.warn(
                    f"no ONNX node found for quantized layer(s) {', '.join(missing)}; ONNX Runtime "
                    "calibrates them itself",
                    stacklevel=2,
                )
            extra = {
                "TensorQuantOverrides": overrides,
                # keep our weight scales exactly (no widening for the int32 bias)
                "QDQDisableWeightAdjustForInt32Bias": True,
            }
        with atomic_path(path) as out:
            if mode == "static":
                quantize_static(
                    str(source),
                    str(out),
                    _Reader(calibration or [], names),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=QuantType.QInt8
                    if activation_type == "int8"
                    else QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[calibrate_method],
                    nodes_to_exclude=exclude,
                    extra_options=extra,
                    reduce_range=reduce_range,
                )
            else:
                quantize_dynamic(
                    str(source),
                    str(out),
                    per_channel=per_channel,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=list(op_types or _DYNAMIC_OPS),
                    nodes_to_exclude=exclude,
                    reduce_range=reduce_range,
                )
    stamp_onnx(path)
    return Path(path)


def export_ort_int8(
    model: nn.Module,
    task: Task,
    path: str | Path,
    mode: str = "static",
    calibration_batches: int = 8,
    carry_scales: bool = True,
    portable: bool = True,
    **options: Any,
) -> OrtModule:
    """Export a (possibly fake-quantized) model to an ONNX Runtime int8 file and load it.

    Static mode calibrates on ``calibration_batches`` batches of the task's training
    data. ``options`` go to :func:`quantize_onnx` (``per_channel``, ``keep_float``, ...).

    With ``carry_scales`` (default), a fake-quantized model (static PTQ, QAT) keeps
    its own grids in the int8 graph: its weight and input scales / zero points
    (calibrated or learned) replace ONNX Runtime's calibration for those tensors,
    and Conv / Linear layers that the simulation left in float stay float. Set it
    False to let ONNX Runtime calibrate every tensor itself.

    With ``portable`` (default) every int8 weight of the file lies within +-64, so it
    computes the same integers on every CPU (x86 with or without VNNI, ARM): simulations
    made with ``reduce_range`` (the default) are carried exactly; full-range 8-bit weight
    grids are re-quantized to the 7-bit grid by ONNX Runtime, with a warning. ``portable=
    False`` keeps full-range grids: exact only on CPUs with VNNI / AMX and on ARM.
    """
    from torchslim.techniques.fake_quant import WEIGHT_TYPES, QuantizedLayer
    from torchslim.techniques.quantization import calibration_inputs

    batches = (
        calibration_inputs(task, calibration_batches, "ONNX Runtime static int8")
        if mode == "static"
        else None
    )
    qparams = layer_qparams(model) if carry_scales and mode == "static" else {}
    options.setdefault("reduce_range", portable)
    wide = full_range_layers(model)
    if portable and wide:
        warnings.warn(
            f"layer(s) {', '.join(wide)} were simulated on the full int8 range "
            "(reduce_range=False); the portable ONNX Runtime file re-quantizes their weights "
            "to 7 bits, so its metric (measured on the file) can differ from the simulation; "
            "quantize with reduce_range=True, or export with portable=False for VNNI-only use",
            stacklevel=2,
        )
        for name in wide:
            if name in qparams:
                qparams[name] = {**qparams[name], "weight": None}
    if qparams:
        wrapped = [n for n, m in model.named_modules() if isinstance(m, QuantizedLayer)]
        floats = [
            name
            for name, module in model.named_modules()
            if isinstance(module, WEIGHT_TYPES)
            and not any(name == f"{w}.module" or name.startswith(f"{w}.") for w in wrapped)
        ]
        floats += [n for n in wrapped if n not in qparams]  # disabled wrappers run float
        options["keep_float"] = list(dict.fromkeys([*options.get("keep_float", ()), *floats]))
    with tempfile.TemporaryDirectory(prefix="torchslim-onnx-") as tmp:
        fp32 = export_onnx(model, task.inputs(2), Path(tmp) / "fp32.onnx")
        quantize_onnx(fp32, path, mode=mode, calibration=batches, qparams=qparams, **options)
    return OrtModule(path)


def full_range_layers(model: nn.Module) -> list[str]:
    """Fake-quantized layers whose weight grid is wider than the portable 7-bit one
    (8-bit with ``reduce_range`` off): their int8 weights can saturate u8s8 kernels."""
    from torchslim.techniques.fake_quant import QuantizedLayer

    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, QuantizedLayer)
        and m.enabled
        and m.weight_quant.qmax - m.weight_quant.qmin > 2 * PORTABLE_WEIGHT_BOUND
    ]


@register_runtime("onnxruntime")
def _onnxruntime(model: nn.Module, example_inputs: Any) -> Any:
    """Time on ONNX Runtime (CPU): an OrtModule as is, any other model exported to fp32 ONNX."""
    return session_runner(OrtModule, model, example_inputs, export_onnx)


def has_int_grid(model: nn.Module) -> bool:
    """Whether the model has uniform-grid quantized layers (what ONNX Runtime int8 runs)."""
    from torchslim.techniques.fake_quant import QuantizedLayer

    return any(isinstance(m, QuantizedLayer) for m in model.modules())


def int8_mode(model: nn.Module) -> str:
    """The ONNX Runtime int8 mode a model's quantized layers simulate: ``dynamic`` when
    their inputs are quantized at run time (dynamic PTQ), else ``static``."""
    from torchslim.techniques.fake_quant import QuantizedLayer

    modes = {
        getattr(m.input_quant, "mode", "off")
        for m in model.modules()
        if isinstance(m, QuantizedLayer) and m.input_quant is not None
    }
    return "dynamic" if "dynamic" in modes and modes <= {"dynamic", "off"} else "static"


def _write_onnx(model: nn.Module, task: Task, path: Path, options: ExportOptions) -> nn.Module:
    return OrtModule(export_onnx(model, task.inputs(2), path))


def _write_ort_int8(model: nn.Module, task: Task, path: Path, options: ExportOptions) -> nn.Module:
    return export_ort_int8(model, task, path, mode=options.mode or int8_mode(model))


register_format(
    ArtifactFormat(
        name="onnx", suffix=".onnx", io=onnx_io, export=_write_onnx, deploy=True, recipe=True
    )
)
register_format(
    ArtifactFormat(
        name="onnx-int8",
        suffix=".int8.onnx",
        io=onnx_io,
        claims=has_int_grid,
        export=_write_ort_int8,
        deploy=True,
    )
)
