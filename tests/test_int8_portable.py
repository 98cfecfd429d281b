"""Deployed int8 is right on every CPU, checked on the kernel path of CPUs without VNNI.

x86 CPUs without VNNI (AVX2 only, AVX-512 without VNNI) run ONNX Runtime's uint8 x int8
kernels with VPMADDUBSW, which saturates pairs of products in int16; VNNI / AMX CPUs (and
ARM) do not. So that CI on *any* machine exercises the saturating path, these tests write
every kind of ONNX Runtime int8 file torchslim makes (static QDQ with carried scales,
dynamic, QAT scales, transformer dynamic int8 with SmoothQuant, MatMulNBits), run them
natively and under ``qemu-x86_64 -cpu max`` (Debian's qemu-user 7.2 emulates AVX2 but no
VNNI and no AVX-512; ``.ci/run`` installs it), and compare both with the PyTorch simulation.

Margins: the files are portable (weights within +-64), so the emulated run computes the
same integers as the native one; the float parts (dequantization, bias, activations) may
round differently with other SIMD widths, so emulated and native outputs must agree to
60 dB, far above the 35-40 dB that one int8 rounding step leaves. A full-range file
(``reduce_range=False``, ``portable=False``) is the control: under emulation it must fall
far below its simulation, or the check would not be exercising the saturating kernels
(on today's code before the fix, every file torchslim wrote behaved like the control).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import torchslim as ts
from torchslim.export.onnx import export_ort_int8
from torchslim.hardware import emulator, run_onnx_files
from torchslim.techniques import apply
from torchslim.techniques.quant_math import sqnr
from torchslim.techniques.quantization import QAT, DynamicQuant, StaticQuant

pytestmark = pytest.mark.usefixtures("one_thread")


def _need_emulator() -> None:
    if emulator() is not None:
        return
    if os.environ.get("CI"):
        pytest.fail(
            "qemu-x86_64 is missing: .ci/run installs Debian's qemu-user (apt-get install "
            "qemu-user) so that the non-VNNI int8 kernels are tested on every machine"
        )
    pytest.skip("needs qemu-x86_64 (Debian package qemu-user) on an x86-64 machine")


def run_onnx(jobs, folder: Path, emulated: bool):
    return run_onnx_files(jobs, folder, emulated=emulated)


def _db(reference: np.ndarray | torch.Tensor, other: np.ndarray) -> float:
    return sqnr(torch.as_tensor(np.asarray(reference)), torch.from_numpy(np.asarray(other)))


def _accuracy(logits: np.ndarray | torch.Tensor, labels: torch.Tensor) -> float:
    return float((torch.as_tensor(np.asarray(logits)).argmax(1) == labels).float().mean())


def _test_split(task: ts.Task) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(task.loader("test"))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def test_int8_files_compute_their_simulation_without_vnni(mnist1d, tiny_task, tmp_path):
    _need_emulator()
    task, base = mnist1d
    x, labels = _test_split(task)
    mlp = tiny_task.baseline(progress=False)
    mlp_x, mlp_labels = _test_split(tiny_task)
    simulations = {
        "static": (apply(base, StaticQuant(sqnr_samples=0), task), task, "static"),
        "qat": (
            apply(base, QAT(epochs=1, learn_scales=True, sqnr_samples=0), task),
            task,
            "static",
        ),
        "dynamic": (apply(mlp, DynamicQuant(), tiny_task), tiny_task, "dynamic"),
    }
    jobs, simulated, inputs = {}, {}, {}
    for name, (model, owner, mode) in simulations.items():
        deployed = export_ort_int8(model, owner, tmp_path / f"{name}.onnx", mode=mode)
        inputs[name] = x if owner is task else mlp_x
        jobs[name] = (tmp_path / f"{name}.onnx", deployed.feeds(inputs[name]))
        with torch.no_grad():
            simulated[name] = model(inputs[name])
    # the control: full-range 8-bit weights, kept full range in the file
    full = apply(base, StaticQuant(sqnr_samples=0, reduce_range=False), task)
    export_ort_int8(full, task, tmp_path / "full.onnx", portable=False)
    jobs["full"] = (tmp_path / "full.onnx", jobs["static"][1])
    with torch.no_grad():
        simulated["full"] = full(x)

    native, native_exact = run_onnx(jobs, tmp_path / "native", emulated=False)
    emulated, emulated_exact = run_onnx(jobs, tmp_path / "emulated", emulated=True)
    assert emulated_exact is False, "qemu's CPU has exact u8s8 kernels: the check tests nothing"

    for name in simulations:
        label = mlp_labels if simulations[name][1] is tiny_task else labels
        gap = abs(_accuracy(emulated[name], label) - _accuracy(simulated[name], label))
        assert _db(native[name], emulated[name]) > 60, name  # same integers on both CPUs
        assert _db(simulated[name], emulated[name]) > 30, name
        assert gap <= 0.005, (name, gap)
    # without the remedy the emulated CPU computes something else than the simulation
    assert (
        _db(simulated["full"], emulated["full"]) < _db(simulated["static"], emulated["static"]) - 10
    )
    if native_exact:  # on a VNNI machine the full-range file is exact natively
        assert _db(simulated["full"], native["full"]) > 30


def test_transformer_int8_files_compute_their_simulation_without_vnni(tmp_path):
    _need_emulator()
    pytest.importorskip("transformers")
    from hf_helpers import tiny_embedding_task
    from torchslim.hf.export import OrtEncoder, export_ort_nbits
    from torchslim.hf.export import export_ort_int8 as export_hf_int8
    from torchslim.hf.metrics import fidelity_stats
    from torchslim.techniques.int8_linear import LinearInt8

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _, task = tiny_embedding_task(tmp_path / "bert", texts=48, seq_len=24)
    model = task.build_model().eval()
    with torch.no_grad():  # outlier channels, as trained encoders have (see test_hf_smooth)
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight[[3, 17, 40]] *= 30.0
    inputs = task.inputs(16)
    smooth = apply(model, LinearInt8(act="tensor", smooth=0.7), task)
    files = {
        "smooth": export_hf_int8(smooth, task.inputs(2), tmp_path / "smooth.onnx"),
        "nbits8": export_ort_nbits(model, task.inputs(2), tmp_path / "n8.onnx", bits=8),
        "nbits4": export_ort_nbits(model, task.inputs(2), tmp_path / "n4.onnx", bits=4),
    }
    jobs = {name: (path, OrtEncoder(path).feeds(inputs)) for name, path in files.items()}
    native, _ = run_onnx(jobs, tmp_path / "native", emulated=False)
    emulated, exact = run_onnx(jobs, tmp_path / "emulated", emulated=True)
    assert exact is False
    with torch.no_grad():
        simulated = smooth(**inputs).numpy()
        reference = model(**inputs).numpy()
    for name in files:
        assert _db(native[name], emulated[name]) > 60, name
    cos = fidelity_stats(torch.from_numpy(emulated["smooth"]), torch.from_numpy(reference))
    sim = fidelity_stats(torch.from_numpy(simulated), torch.from_numpy(reference))
    assert abs(cos["mean_cosine"] - sim["mean_cosine"]) < 2e-3  # test_hf_smooth's tolerance
    assert cos["mean_cosine"] > 0.97


def test_a_full_range_file_on_a_saturating_cpu_warns_naming_the_weights(
    mnist1d, tmp_path, monkeypatch
):
    import torchslim.hardware as hardware
    from torchslim.export.onnx import OrtModule

    task, base = mnist1d
    full = apply(base, StaticQuant(sqnr_samples=0, reduce_range=False), task)
    portable = apply(base, StaticQuant(sqnr_samples=0), task)
    with pytest.warns(UserWarning, match="re-quantizes their weights to 7 bits"):
        export_ort_int8(full, task, tmp_path / "requantized.onnx")  # portable=True by default
    export_ort_int8(full, task, tmp_path / "full.onnx", portable=False)
    export_ort_int8(portable, task, tmp_path / "portable.onnx")
    assert hardware.saturating_weights(tmp_path / "portable.onnx") == []
    assert hardware.saturating_weights(tmp_path / "requantized.onnx") == []
    at_risk = hardware.saturating_weights(tmp_path / "full.onnx")
    assert any("features.0" in name for name in at_risk)

    monkeypatch.setattr(hardware, "u8s8_exact", lambda: False)  # as on an AVX2-only CPU
    hardware._warned.clear()
    with pytest.warns(UserWarning, match=r"saturate on weight\(s\) .*features\.0.*reduce_range"):
        OrtModule(tmp_path / "full.onnx")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OrtModule(tmp_path / "portable.onnx")  # nothing to warn about


def test_a_missing_kernel_names_the_operator_and_the_fallback():
    from onnx import TensorProto, helper

    from torchslim.export.onnx import missing_kernel, ort_session

    node = helper.make_node("NoSuchKernel", ["a"], ["y"], domain="com.microsoft")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    with pytest.raises(ts.UnsupportedError, match="no CPU kernel for com.microsoft:NoSuchKernel"):
        ort_session(model.SerializeToString())
    # the message of a build without contrib ops, and the fallback it gets
    message = "com.microsoft:MatMulNBits(-1) is not a registered function/op"
    assert missing_kernel(message) == "com.microsoft:MatMulNBits"
    assert missing_kernel("Could not find an implementation for MatMulNBits(1) node") == (
        "MatMulNBits"
    )
    from torchslim.export.onnx import KERNEL_FALLBACKS

    assert "linear_int8" in KERNEL_FALLBACKS["MatMulNBits"]


def test_results_and_artifacts_record_the_machine(tiny_task, tmp_path):
    from torchslim.checkpoint import read_spec
    from torchslim.hardware import machine_record, onnx_record
    from torchslim.report.results import Report

    record = machine_record(1)
    assert record["threads"] == 1 and record["torch"] == torch.__version__
    assert isinstance(record["u8s8_exact"], bool)
    assert set(record["int8_flags"]) <= {
        "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile",
        "asimddp", "i8mm",
    }  # fmt: skip
    from torchslim.cli import main

    base = tiny_task.baseline(progress=False)
    path = tmp_path / "m.safetensors"
    ts.measure(base, tiny_task, artifact=path, latency=False)
    assert read_spec(path)["hardware"]["cpu"] == record["cpu"]
    deployed = export_ort_int8(base, tiny_task, tmp_path / "q.onnx", mode="dynamic")
    assert onnx_record(deployed.model_bytes)["u8s8_exact"] == record["u8s8_exact"]
    out = tmp_path / "run"
    assert main(["compress", "mnist1d-cnn", "--recipe", "examples/static_int8.yaml", "--out",
                 str(out), "--no-latency"]) == 0  # fmt: skip
    saved = Report.load(out / "results.json")
    assert saved.hardware["cpu"] == record["cpu"] and saved.hardware["threads"] >= 1


def test_nested_user_layers_carry_their_simulated_scales(tmp_path):
    """TorchScript names a layer inside a custom module by its attribute (``/block/conv1``),
    not its full path: the carried grids must still find it (they silently fell back to
    ONNX Runtime's own calibration for every nested layer of a ResNet)."""
    import warnings

    from torch import nn
    from torch.utils.data import TensorDataset

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3, padding=1)
            self.stages = nn.Sequential(nn.Sequential(Block()))
            self.head = nn.Linear(4 * 8 * 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.stages(torch.relu(self.stem(x))).flatten(1))

    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 8, 8, generator=generator), torch.arange(64) % 3)
    task = ts.Task(name="nested", model=Net, train=data, test=data,
                   train_config=ts.TrainConfig(epochs=0, seed=0))  # fmt: skip
    simulated = apply(task.baseline(progress=False), StaticQuant(sqnr_samples=0), task)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "no ONNX node found for quantized layer(s) ..." fails
        deployed = export_ort_int8(simulated, task, tmp_path / "nested.onnx")
    x = data.tensors[0]
    with torch.no_grad():
        assert sqnr(simulated(x), deployed(x)) > 35
