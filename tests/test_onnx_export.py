"""ONNX export, ONNX Runtime int8 (static QDQ / dynamic), the onnxruntime runtime, torchao."""

from __future__ import annotations

import warnings

import onnx
import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.export.onnx import (
    OrtModule,
    export_onnx,
    export_ort_int8,
    onnx_io,
    quantize_onnx,
)
from torchslim.techniques import apply
from torchslim.techniques.quant_math import sqnr
from torchslim.techniques.quantization import StaticQuant, TorchaoInt8

pytestmark = pytest.mark.usefixtures("one_thread")


def _test_inputs(task: ts.Task) -> torch.Tensor:
    return torch.cat([batch[0] for batch in task.loader("test")])


def test_static_int8_cnn_on_onnxruntime_matches_fp32(mnist1d, tmp_path):
    task, base = mnist1d
    deployed = export_ort_int8(base, task, tmp_path / "int8.onnx", mode="static")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = _test_inputs(task)
    with torch.no_grad():
        reference, output = base(x), deployed(x)
    assert sqnr(reference, output) > 20
    agreement = float((reference.argmax(1) == output.argmax(1)).float().mean())
    assert agreement >= 0.98
    fp32, int8 = ts.measure_many([base, deployed], task, ios=[None, onnx_io()], latency=False)
    assert int8.artifact_bytes < 0.7 * fp32.artifact_bytes
    assert int8.metric >= fp32.metric - 0.02


def test_simulated_model_exports_with_layers_kept_float(mnist1d, tmp_path):
    task, base = mnist1d
    simulated = apply(base, StaticQuant(sqnr_samples=0), task)
    deployed = export_ort_int8(simulated, task, tmp_path / "q.onnx", keep_float=["classifier"])
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    gemm = next(node for node in graph.node if node.op_type == "Gemm")
    assert producers.get(gemm.input[1]) != "DequantizeLinear"  # classifier weight stays float
    assert abs(task.evaluate(deployed) - task.evaluate(simulated)) <= 0.02


def test_dynamic_int8_of_an_mlp(tmp_path, tiny_task):
    base = tiny_task.baseline(progress=False)
    deployed = export_ort_int8(base, tiny_task, tmp_path / "dyn.onnx", mode="dynamic")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "dyn.onnx")).graph.node}
    assert "MatMulInteger" in ops and "Gemm" not in ops
    x = tiny_task.inputs(64)
    assert sqnr(base(x), deployed(x)) > 25
    assert tiny_task.evaluate(deployed) >= tiny_task.evaluate(base) - 0.02


def test_onnxruntime_runtime_times_fp32_and_int8_interleaved(mnist1d, tmp_path):
    task, base = mnist1d
    deployed = export_ort_int8(base, task, tmp_path / "int8.onnx")
    stats = ts.benchmark_latency(
        [base, deployed], task.inputs(8), runtime="onnxruntime", repeats=15
    )
    assert len(stats) == 2 and all(s.median_ms > 0 and s.repeats == 15 for s in stats)
    assert isinstance(onnx_io().load(tmp_path / "int8.onnx"), OrtModule)


def test_export_failure_names_the_operator(tmp_path):
    class Spectrum(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.fft(x).real

    with pytest.raises(ts.UnsupportedError, match="ONNX export failed at operator aten::fft_fft"):
        export_onnx(Spectrum(), torch.randn(2, 4), tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    with pytest.raises(ts.ConfigError, match="static ONNX quantization needs calibration"):
        quantize_onnx(tmp_path / "none.onnx", tmp_path / "q.onnx", mode="static")


def test_torchao_int8_quantizes_linear_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    x = torch.randn(32, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mode in ("dynamic", "weight_only"):
            quantized = apply(model, TorchaoInt8(mode=mode))
            with torch.no_grad():
                assert sqnr(model(x), quantized(x)) > 25
            assert type(quantized[0].weight).__name__ != "Parameter"
        with pytest.raises(ts.UnsupportedError, match="has none"):
            apply(nn.Sequential(nn.Conv1d(1, 2, 3)), TorchaoInt8())


def _scale_of(graph: onnx.GraphProto, name: str) -> torch.Tensor:
    init = next(i for i in graph.initializer if i.name == name)
    return torch.from_numpy(onnx.numpy_helper.to_array(init).copy())


def test_ort_int8_carries_the_learned_qat_scales(mnist1d, tmp_path):
    from torchslim.export.onnx import layer_qparams
    from torchslim.techniques.quantization import QAT

    task, base = mnist1d
    qat = apply(base, QAT(epochs=1, learn_scales=True, sqnr_samples=0), task)
    deployed = export_ort_int8(qat, task, tmp_path / "qat.onnx")
    graph = onnx.load(str(tmp_path / "qat.onnx")).graph
    producers = {out: node for node in graph.node for out in node.output}
    layers = layer_qparams(qat)
    assert set(layers) == {"features.0", "features.2", "features.4", "classifier"}
    for name, layer in ((n, qat.get_submodule(n)) for n in layers):
        trained_w = layer.weight_quant.scale.detach().abs()
        assert layer.weight_quant.learnable and trained_w.shape == (layer.module.weight.shape[0],)
        torch.testing.assert_close(_scale_of(graph, f"{name}.weight_scale"), trained_w)
        # the layer's input comes through Q -> DQ with the trained activation scale
        node = next(
            n for n in graph.node if f"/{name}/" in n.name and n.op_type in ("Conv", "Gemm")
        )
        dequantize = producers[node.input[0]]
        quantize = producers[dequantize.input[0]]
        assert (dequantize.op_type, quantize.op_type) == ("DequantizeLinear", "QuantizeLinear")
        trained_a = layer.input_quant.scale.detach().abs().reshape(1)
        torch.testing.assert_close(_scale_of(graph, quantize.input[1]).reshape(1), trained_a)
    x = _test_inputs(task)
    with torch.no_grad():
        simulated = qat(x)
    carried = deployed(x)
    recalibrated = export_ort_int8(qat, task, tmp_path / "recal.onnx", carry_scales=False)(x)
    # the deployed integers are the simulated ones: far closer than ORT's own calibration
    assert sqnr(simulated, carried) > 38
    assert sqnr(simulated, carried) > sqnr(simulated, recalibrated) + 5
    assert abs(task.evaluate(deployed) - task.evaluate(qat)) <= 0.005


def test_pruned_channels_deploy_with_the_simulated_accuracy(mnist1d, tmp_path):
    """An all-zero (pruned) output channel must not get a degenerate weight scale: ONNX
    Runtime quantizes the bias with input_scale * weight_scale, and ~1e-12 overflows int32."""
    import copy

    from torchslim.export.onnx import layer_qparams

    task, base = mnist1d
    pruned = copy.deepcopy(base)
    with torch.no_grad():  # prune output channels 3 and 7 of two convs, biases kept
        for layer in (pruned.features[2], pruned.features[4]):
            layer.weight[[3, 7]] = 0.0
    static = apply(pruned, StaticQuant(sqnr_samples=0), task)
    scales = layer_qparams(static)["features.2"]["weight"]["scale"]
    assert scales.min() >= 1e-8 and scales[3] == scales.max()
    deployed = export_ort_int8(static, task, tmp_path / "pruned.onnx")
    x = _test_inputs(task)
    with torch.no_grad():
        simulated = static(x)
    assert sqnr(simulated, deployed(x)) > 35
    assert abs(task.evaluate(deployed) - task.evaluate(static)) <= 0.005


def test_per_tensor_static_model_deploys_per_tensor_weights(mnist1d, tmp_path):
    task, base = mnist1d
    static = apply(base, StaticQuant(per_channel=False, sqnr_samples=0), task)
    export_ort_int8(static, task, tmp_path / "pt.onnx")
    graph = onnx.load(str(tmp_path / "pt.onnx")).graph
    scale = _scale_of(graph, "features.2.weight_scale")
    assert scale.numel() == 1
    torch.testing.assert_close(scale.reshape(()), static.features[2].weight_quant.scale)


def test_quantizing_leaves_the_callers_logging_levels_as_they_were(tmp_path, tiny_task):
    import logging

    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    try:
        export_ort_int8(tiny_task.baseline(progress=False), tiny_task, tmp_path / "q.onnx")
        assert root.level == logging.INFO  # ONNX Runtime's advice is muted only while it runs
    finally:
        root.setLevel(before)
