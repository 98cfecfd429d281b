"""The command line: tables, JSON, exit codes, one-line errors, nothing modified."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torchslim as ts
from helpers import CANDIDATE_KEYS, FOOTPRINT_KEYS, file_digest
from test_tasks import USER_TASK
from torchslim.cli import main
from torchslim.models import build_model


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_task.py"
    path.write_text(USER_TASK)
    return path


def test_tasks_lists_the_default(capsys):
    assert main(["tasks"]) == 0
    assert "mnist1d-cnn *" in capsys.readouterr().out


def test_unknown_task_is_one_line_and_exit_1(capsys):
    assert main(["measure", "mnist2d"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("torchslim: error: unknown task 'mnist2d'") and err.count("\n") == 1
    assert "Traceback" not in err


def test_verbose_shows_the_exception():
    with pytest.raises(ts.TaskError):
        main(["measure", "mnist2d", "--verbose"])


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["measure"])
    assert exit_info.value.code == 2


def test_train_then_measure_checkpoint_json(user_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", f"{user_file}:make_task", "--out", str(out), "--batch-size", "8"]) == 0
    table = capsys.readouterr().out
    assert "user-task" in table and "accuracy" in table
    checkpoint = out / "model.safetensors"
    saved = json.loads((out / "footprint.json").read_text())
    assert saved["footprint"]["artifact_bytes"] == checkpoint.stat().st_size
    assert saved["footprint"]["params"] == 4 * 2 + 2

    before = file_digest(checkpoint)
    assert main(["measure", str(checkpoint), "--json", "--no-latency", "--trust-task"]) == 0
    measured = json.loads(capsys.readouterr().out)
    assert FOOTPRINT_KEYS <= set(measured["footprint"])
    assert measured["task"] == "user-task" and measured["metric_name"] == "accuracy"
    assert measured["footprint"]["metric"] == saved["footprint"]["metric"]
    assert measured["footprint"]["macs"] == 8
    assert file_digest(checkpoint) == before


def test_corrupt_checkpoint_exit_1_and_untouched(tmp_path, capsys):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    before = file_digest(path)
    assert main(["measure", str(path)]) == 1
    err = capsys.readouterr().err
    assert "is corrupt or truncated" in err and err.count("\n") == 1
    assert file_digest(path) == before


def test_checkpoint_that_does_not_fit_its_task(user_file, tmp_path, capsys):
    path = tmp_path / "wrong.safetensors"
    ts.save_checkpoint(build_model("mlp"), path, {"task": f"{user_file}:make_task"})
    assert main(["measure", str(path), "--task", f"{user_file}:make_task"]) == 1
    assert "does not match the architecture" in capsys.readouterr().err


def test_demo_quick_writes_results(tmp_path, capsys):
    from torchslim.techniques import CONFIGS

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"task", "metric_name", "baseline", "candidates", "best", "budget"} <= set(results)
    assert FOOTPRINT_KEYS <= set(results["baseline"])
    assert results["baseline"]["artifact_bytes"] == (out / "baseline.safetensors").stat().st_size
    assert results["baseline"]["metric"] >= 0.85
    candidates = {c["name"]: c for c in results["candidates"]}
    families = {CONFIGS[t].family for c in candidates.values() for t in c["techniques"]}
    assert {"pruning", "quantization", "distillation", "lowrank", "dynamic"} <= families
    assert "optimized (1-point budget)" in candidates
    for candidate in candidates.values():
        assert CANDIDATE_KEYS <= set(candidate)
        assert candidate["artifact_bytes"] == Path(candidate["artifact"]).stat().st_size
    # re-measure one artifact from its file alone: same bytes, same metric
    agp = candidates["magnitude 80% (AGP)"]
    task = ts.tasks.get("mnist1d-cnn")
    model, _ = ts.load_checkpoint(agp["artifact"])
    assert task.evaluate(model) == agp["metric"]
    assert ts.count_nonzero(model) == agp["nonzero_params"]
    assert agp["size_ratio"] > 2.5  # 80% zeros in the sparse format
    assert (out / "report.html").exists()
    table = capsys.readouterr().out
    assert "magnitude 80% (AGP)" in table and "deployed (onnxruntime)" in table


def test_console_entry_point_exit_code(tmp_path):
    env = dict(os.environ, TORCHSLIM_CACHE=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "torchslim", "measure", "nope"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "torchslim: error: unknown task 'nope'; use one of cifar10-vgg, digits-mlp, digits32-mobilenet, "
        "digits32-resnet, digits32-vgg, fashion-lenet5, fashion-resnet, mnist1d-cnn, "
        "text-classification, text-embedding "
        "or path/to/file.py:function"
    )


@pytest.mark.parametrize("fmt", ["torch", "onnx", "onnx-int8", "packed"])
def test_export_formats_reload_and_score(user_file, tmp_path, capsys, fmt):
    out = tmp_path / "train"
    assert main(["train", f"{user_file}:make_mlp_task", "--out", str(out), "--no-latency"]) == 0
    source = out / "model.safetensors"
    before = file_digest(source)
    target = tmp_path / f"exported.{fmt}"
    task = f"{user_file}:make_mlp_task"
    assert main(["export", str(source), "--format", fmt, "--out", str(target), "--task", task]) == 0
    table = capsys.readouterr().out
    assert target.exists() and f"{target.stat().st_size:,}" in table
    assert file_digest(source) == before  # the input is never modified
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # usual permissions, not mkstemp's


def test_export_refuses_to_overwrite_its_input(user_file, tmp_path, capsys):
    out = tmp_path / "train"
    assert main(["train", f"{user_file}:make_task", "--out", str(out), "--no-latency"]) == 0
    source = out / "model.safetensors"
    assert main(["export", str(source), "--format", "torch", "--out", str(source)]) == 1
    assert "is the input file" in capsys.readouterr().err
