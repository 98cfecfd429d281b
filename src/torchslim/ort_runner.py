"""Run ONNX files with ONNX Runtime and save their outputs; nothing but numpy, onnxruntime
and torchslim/hardware.py is imported (PyTorch is far too slow under an emulator).

Usage: ``python ort_runner.py MANIFEST.json``. The manifest lists ``jobs`` (``name``,
``model``: an .onnx path, ``inputs``: an .npz whose arrays are the session's feeds by input
name) and ``out`` (the .npz to write, one array per job). ``OUT.json`` beside it records
whether this CPU's u8s8 kernels are exact (:func:`torchslim.hardware.u8s8_exact`).
It is run as a script (``python .../torchslim/ort_runner.py``), never imported, so that it
does not import the torchslim package: :func:`torchslim.hardware.run_onnx_files` runs it
natively or under ``qemu-x86_64 -cpu max`` (an AVX2 CPU without VNNI).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def _hardware():
    path = Path(__file__).resolve().with_name("hardware.py")
    spec = importlib.util.spec_from_file_location("torchslim_hardware", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(manifest_path: str) -> int:
    manifest = json.loads(Path(manifest_path).read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    outputs = {}
    for job in manifest["jobs"]:
        session = ort.InferenceSession(job["model"], options, providers=["CPUExecutionProvider"])
        feeds = dict(np.load(job["inputs"]))
        outputs[job["name"]] = session.run(None, feeds)[0]
    out = Path(manifest["out"])
    np.savez(out, **outputs)
    out.with_suffix(".json").write_text(json.dumps({"u8s8_exact": _hardware().u8s8_exact()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
