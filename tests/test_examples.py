"""Every example recipe runs end to end on tiny settings, through the CLI's pipeline."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import torchslim as ts
from torchslim.cli import main
from torchslim.data import load_mnist1d
from torchslim.pipeline import run_recipe
from torchslim.recipe import Recipe

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
TINY = {"epochs": 1, "batches": 2, "calibration_batches": 2}


@pytest.fixture(scope="module")
def tiny_task() -> ts.Task:
    splits = load_mnist1d(num_samples=1000)
    return ts.Task(
        name="tiny-mnist1d",
        model="mnist1d_cnn",
        model_kwargs={"channels": 8},
        train=splits.train,
        val=splits.val,
        test=splits.test,
        train_config=ts.TrainConfig(lr=1e-2, epochs=8, batch_size=100),
    )


def tiny(recipe: Recipe) -> Recipe:
    """The same recipe with one epoch and two calibration batches wherever those are fields."""
    steps = []
    for config in recipe.steps:
        names = {f.name for f in dataclasses.fields(config)}
        steps.append(dataclasses.replace(config, **{k: v for k, v in TINY.items() if k in names}))
    return dataclasses.replace(recipe, steps=steps)


def test_there_is_an_example_per_family():
    families = set()
    for path in EXAMPLES:
        families |= {config.family for config in Recipe.from_yaml(path).steps}
    assert {"pruning", "quantization", "recovery", "distillation", "lowrank", "dynamic"} <= families


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_recipe_runs(path, tiny_task, tmp_path):
    recipe = tiny(Recipe.from_yaml(path))
    base = tiny_task.baseline(progress=False)
    run = run_recipe(recipe, tiny_task, baseline=base, out=tmp_path, latency=False)
    candidate = run.candidate
    assert [h["step"] for h in candidate.history] == [c.name for c in recipe.steps]
    assert candidate.footprint.artifact_bytes > 0
    assert Path(candidate.footprint.artifact).stat().st_size == candidate.footprint.artifact_bytes
    assert 0.0 <= candidate.footprint.metric <= 1.0
    if recipe.export is not None:
        assert candidate.footprint.artifact.endswith(".safetensors")
    if candidate.footprint.simulated:  # quantized: the deployed ORT artifact is measured too
        assert candidate.deployed is not None and candidate.deployed.runtime == "onnxruntime"
        assert abs(candidate.deployed.metric - candidate.footprint.metric) < 0.1


def test_compress_cli_writes_results_and_report(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: mag\nsteps:\n  - magnitude_pruning:\n      sparsity: 0.75\n")
    out = tmp_path / "out"
    assert (
        main(["compress", "digits-mlp", "--recipe", str(recipe), "--out", str(out), "--no-latency"])
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    candidate = results["candidates"][0]
    assert candidate["name"] == "mag" and results["best"] == "mag"
    # 75% of the three weight matrices are zero: nonzero = params - 0.75 * weights
    weights = 64 * 300 + 300 * 100 + 100 * 10
    assert abs(candidate["nonzero_params"] - (50610 - 0.75 * weights)) <= 3
    assert candidate["size_ratio"] > 2.0  # the sparse file is really smaller
    assert (out / "report.html").exists() and (out / "recipe.yaml").exists()
    assert main(["report", str(out / "results.json")]) == 0
    assert "mag" in capsys.readouterr().out


def test_compress_rejects_a_bad_recipe_before_running(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("steps:\n  - magnitude_pruning:\n      sparsity: 2\n")
    assert (
        main(["compress", "mnist1d-cnn", "--recipe", str(recipe), "--out", str(tmp_path / "o")])
        == 1
    )
    err = capsys.readouterr().err
    assert f"{recipe}:3: step 1 (magnitude_pruning) field 'sparsity'" in err
    assert not (tmp_path / "o").exists()
