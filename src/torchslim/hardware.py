"""The machine a figure was measured on, and whether its int8 kernels are exact.

ONNX Runtime's int8 kernels multiply uint8 activations by int8 weights ("u8s8"). On x86
CPUs with VNNI (AVX-512 VNNI, AVX-VNNI) or AMX, and on ARM, products are summed in int32
and the result is exact. On x86 CPUs without VNNI (AVX2 only, or AVX-512 without VNNI),
MLAS uses ``VPMADDUBSW``, which adds *pairs* of products into a saturating int16: with
full-range int8 weights (up to 127) and uint8 activations (up to 255), a pair reaches
64,770 and is clipped to 32,767 -- the deployed model is silently wrong there. Weights
within +-64 (ONNX Runtime's ``reduce_range``) keep every pair within int16 on every CPU.

:func:`u8s8_exact` does not trust the CPU's flags: it runs a tiny ``MatMulInteger`` whose
pairs overflow int16 and compares with exact integer arithmetic (once per process), so it
also answers correctly under an emulator or a hypervisor that hides flags.
:func:`machine_record` is what results.json and artifacts record about the machine.
"""

from __future__ import annotations

import functools
import platform
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

INT8_FLAGS = (
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "amx_tile",
    "asimddp",  # ARM dot product (sdot / udot)
    "i8mm",  # ARM int8 matrix multiply
)
"""CPU flags that decide which int8 kernels ONNX Runtime and PyTorch run."""

PORTABLE_WEIGHT_BOUND = 64
"""Largest int8 weight magnitude whose uint8 x int8 pair sums fit in int16 (2 * 255 * 64)."""


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, tuple[str, ...]]:
    """(CPU model name, flags) from ``/proc/cpuinfo``; the platform's name elsewhere."""
    model, flags = platform.processor() or platform.machine(), ()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return model, flags
    name = re.search(r"^(?:model name|Model|Hardware|cpu model)\s*:\s*(.+)$", text, re.M)
    found = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    if name:
        model = name.group(1).strip()
    if found:
        flags = tuple(sorted(set(found.group(1).split())))
    return model, flags


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    return _cpuinfo()[0]


def int8_flags() -> list[str]:
    """The CPU flags among :data:`INT8_FLAGS` that this machine reports."""
    flags = set(_cpuinfo()[1])
    return [flag for flag in INT8_FLAGS if flag in flags]


def _probe_model() -> tuple[bytes, np.ndarray, np.ndarray]:
    """A MatMulInteger (uint8 x int8) whose pairs of products overflow int16, its input and
    the exact int32 result."""
    from onnx import TensorProto, helper, numpy_helper

    k = 64
    activations = np.full((4, k), 255, dtype=np.uint8)
    activations[1::2] = 200
    weights = np.full((k, 8), 127, dtype=np.int8)
    weights[:, 1::2] = -120
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "u8s8_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 8])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    exact = activations.astype(np.int64) @ weights.astype(np.int64)
    return model.SerializeToString(), activations, exact


@functools.lru_cache(maxsize=1)
def u8s8_exact() -> bool:
    """Whether ONNX Runtime's uint8 x int8 kernels compute full-range int8 exactly here.

    False on x86 CPUs without VNNI (their kernels saturate pairs of products); True with
    VNNI / AMX and on ARM. Measured once per process with a 4 x 64 x 8 probe.
    """
    import onnxruntime as ort

    data, activations, exact = _probe_model()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    result = session.run(None, {"a": activations})[0]
    return bool(np.array_equal(result.astype(np.int64), exact))


def machine_record(threads: int | None = None) -> dict[str, Any]:
    """What results.json and artifact specs record about the machine that measured them.

    Keys: ``cpu`` (model name), ``arch`` (``x86_64``, ``aarch64``...), ``int8_flags`` (the
    :data:`INT8_FLAGS` present), ``u8s8_exact`` (:func:`u8s8_exact`), ``torch``,
    ``onnxruntime``, ``python`` (versions) and ``threads`` (intra-op threads used, when given).
    """
    import torch

    try:
        import onnxruntime as ort

        ort_version: str | None = ort.__version__
        exact: bool | None = u8s8_exact()
    except Exception:  # noqa: BLE001 - a record must never fail the run it describes
        ort_version, exact = None, None
    record: dict[str, Any] = {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "int8_flags": int8_flags(),
        "u8s8_exact": exact,
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "python": platform.python_version(),
    }
    if threads is not None:
        record["threads"] = int(threads)
    return record


def describe(record: dict[str, Any] | None) -> str:
    """One line for a machine record: ``CPU (flags; u8s8 exact|saturating)``."""
    if not record:
        return "unknown machine"
    flags = ", ".join(record.get("int8_flags") or []) or "no int8 flags"
    exact = record.get("u8s8_exact")
    kernel = "" if exact is None else "; u8s8 exact" if exact else "; u8s8 saturates"
    return f"{record.get('cpu', '?')} ({flags}{kernel})"


_INT8_WEIGHT_OPS = {
    "DequantizeLinear": 0,
    "MatMulInteger": 1,
    "ConvInteger": 1,
    "QLinearConv": 3,
    "QLinearMatMul": 3,
    "DynamicQuantizeMatMul": 1,
    "QGemm": 3,
}


def saturating_weights(model: Any) -> list[str]:
    """Names of an ONNX model's int8 weight tensors that u8s8 kernels without VNNI can
    saturate on (a stored value beyond +-64), in graph order.

    ``model`` is an ``onnx.ModelProto``, a path or the file's bytes.
    """
    import onnx
    from onnx import numpy_helper

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    elif isinstance(model, bytes):
        model = onnx.load_from_string(model)
    initializers = {init.name: init for init in model.graph.initializer}
    found: list[str] = []
    for node in model.graph.node:
        position = _INT8_WEIGHT_OPS.get(node.op_type)
        if position is None or len(node.input) <= position:
            continue
        name = node.input[position]
        init = initializers.get(name)
        if init is None or init.data_type != onnx.TensorProto.INT8 or len(init.dims) < 2:
            continue
        values = numpy_helper.to_array(init)
        if values.size and int(np.abs(values.astype(np.int16)).max()) > PORTABLE_WEIGHT_BOUND:
            found.append(name)
    return list(dict.fromkeys(found))


_warned: set[int] = set()


def warn_if_saturating(model_bytes: bytes, label: str = "this ONNX model") -> list[str]:
    """Warn (once per model) when this CPU's u8s8 kernels saturate on the model's weights.

    Returns the weight tensors at risk (empty on exact CPUs and for portable files).
    """
    if u8s8_exact():  # exact kernels (VNNI, AMX, ARM): nothing to check, nothing hashed
        return []
    key = hash(model_bytes)
    if key in _warned:
        return []
    layers = saturating_weights(model_bytes)
    _warned.add(key)
    if layers:
        shown = ", ".join(layers[:5]) + (f" and {len(layers) - 5} more" if len(layers) > 5 else "")
        warnings.warn(
            f"{label}: ONNX Runtime's int8 kernels on this CPU ({cpu_model()}, no VNNI) saturate "
            f"on weight(s) {shown} (int8 values beyond +-{PORTABLE_WEIGHT_BOUND}); the metric "
            "measured here is what this CPU computes, not what the file computes elsewhere. "
            "Re-export with reduce_range=True (the default) for a file exact on every CPU",
            stacklevel=3,
        )
    return layers


def spec_record() -> dict[str, Any]:
    """The compact machine record an artifact's spec carries (``hardware``): CPU, int8
    flags, whether u8s8 kernels are exact, torch / ONNX Runtime versions, threads."""
    import torch

    full = machine_record(torch.get_num_threads())
    keys = ("cpu", "int8_flags", "u8s8_exact", "torch", "onnxruntime", "threads")
    return {key: full[key] for key in keys}


def stamp_onnx(path: str | Path) -> None:
    """Record :func:`spec_record` in an ONNX file's metadata (``torchslim.hardware``)."""
    import json

    import onnx

    from torchslim.fileio import atomic_path

    model = onnx.load(str(path))
    for prop in list(model.metadata_props):
        if prop.key == ONNX_HARDWARE_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=ONNX_HARDWARE_KEY, value=json.dumps(spec_record()))
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def onnx_record(model_bytes: bytes) -> dict[str, Any] | None:
    """The machine record stamped in an ONNX file by :func:`stamp_onnx`, if any."""
    import json

    import onnx

    model = onnx.load_from_string(model_bytes)
    for prop in model.metadata_props:
        if prop.key == ONNX_HARDWARE_KEY:
            try:
                value = json.loads(prop.value)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


ONNX_HARDWARE_KEY = "torchslim.hardware"


def emulator() -> str | None:
    """``qemu-x86_64`` when this x86-64 machine has it (Debian's qemu-user): it runs ONNX
    Runtime on an emulated AVX2 CPU without VNNI (``-cpu max`` in qemu 7.2)."""
    import shutil

    if platform.machine() != "x86_64":
        return None
    return shutil.which("qemu-x86_64")


def run_onnx_files(
    jobs: dict[str, tuple[str | Path, dict[str, np.ndarray]]],
    folder: str | Path,
    emulated: bool = False,
    timeout: float = 900,
) -> tuple[dict[str, np.ndarray], bool]:
    """Outputs of ONNX files on their feeds (``{name: (model path, feeds)}``) from a separate
    process, natively or under qemu's AVX2 CPU without VNNI; also whether that CPU's u8s8
    kernels were exact. Only numpy and ONNX Runtime run in that process.

    Raises:
        UnsupportedError: ``emulated`` on a machine without ``qemu-x86_64``.
    """
    import json
    import subprocess
    import sys

    from torchslim.errors import UnsupportedError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"jobs": [], "out": str(folder / "outputs.npz")}
    for name, (model, feeds) in jobs.items():
        np.savez(folder / f"{name}.npz", **feeds)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
        manifest["jobs"].append(
            {"name": name, "model": str(model), "inputs": str(folder / f"{name}.npz")}
        )
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    runner = Path(__file__).with_name("ort_runner.py")
    command = [sys.executable, str(runner), str(folder / "manifest.json")]
    if emulated:
        qemu = emulator()
        if qemu is None:
            raise UnsupportedError(
                "emulating a CPU without VNNI needs qemu-x86_64 on an x86-64 machine; install "
                "Debian's qemu-user (apt-get install qemu-user)"
            )
        command = [qemu, "-cpu", "max", *command]
    subprocess.run(command, check=True, timeout=timeout, capture_output=True)
    outputs = dict(np.load(folder / "outputs.npz"))
    exact = json.loads((folder / "outputs.json").read_text(encoding="utf-8"))["u8s8_exact"]
    return outputs, bool(exact)
