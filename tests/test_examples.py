"""Every example recipe runs end to end on tiny settings, through the CLI's pipeline."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import torchslim as ts
from torchslim.cli import main
from torchslim.data import load_mnist1d
from torchslim.pipeline import apply_recipe, run_recipe
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
    # the file reloads (from its built-in architecture, or the task's original for files
    # that name none) and scores exactly what was reported
    path = candidate.footprint.artifact
    assert path.endswith(".safetensors")
    named = "arch" in ts.checkpoint.read_spec(path)
    reloaded = ts.load(path) if named else ts.load(path, model=tiny_task.build_model)
    assert tiny_task.evaluate(reloaded) == pytest.approx(candidate.footprint.metric, abs=1e-6)
    assert ts.count_parameters(reloaded) == candidate.footprint.params
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


README = Path(__file__).parent.parent / "README.md"


def _readme_fashion_commands() -> tuple[list[str], str]:
    """The README's optimize command for examples/fashion_task.py and the Python after it."""
    import re
    import shlex

    text = README.read_text()
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("torchslim optimize examples/fashion_task.py:task")
    )
    after = text[text.index(line) :]
    code = re.search(r"```python\n(.*?)```", after, re.S)
    assert code is not None, "no Python block after the fashion optimize command"
    return shlex.split(line)[1:], code.group(1)


def test_readme_fashion_optimize_then_load_and_run(tmp_path, monkeypatch, capsys):
    """The README's `torchslim optimize examples/fashion_task.py:task ...` line (on 60 tiny
    images, 1 epoch, 2 trials) then its Python block, run as written from a folder holding
    `examples/`: the loaded model's test accuracy is the one results.json reports for the
    best candidate, and its outputs are those of the best recipe re-run on the baseline."""
    import os

    from test_fashion import write_fashion

    args, code = _readme_fashion_commands()
    assert args[:2] == ["optimize", "examples/fashion_task.py:task"]
    assert "ts.load(" in code and "model=fashion_task.FashionNet" in code
    write_fashion(tmp_path / "fashion", n_train=120, n_test=40)
    os.symlink(README.parent / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASHION_DATA", str(tmp_path / "fashion"))
    monkeypatch.setenv("FASHION_LIMIT", "60")
    monkeypatch.setenv("FASHION_EPOCHS", "1")
    monkeypatch.syspath_prepend(str(tmp_path))  # (the block adds "examples" itself)
    tiny = ["--trials", "2", "--sensitivity-epochs", "0", "--recovery-epochs", "0"]
    tiny += ["--range", "channel_pruning=0.5"]
    assert main([*args, *tiny]) == 0
    results = json.loads((tmp_path / "out/optimize/results.json").read_text())
    best = next(c for c in results["candidates"] if c["name"] == results["best"])
    assert Path(best["artifact"]).resolve() == (tmp_path / "out/optimize/best.safetensors")
    assert best["params"] < results["baseline"]["params"]  # channels really cut
    capsys.readouterr()
    monkeypatch.delitem(__import__("sys").modules, "fashion_task", raising=False)
    namespace = {"__name__": "__readme__"}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our README's code
    printed = capsys.readouterr().out.strip().splitlines()
    assert abs(float(printed[-1]) - best["metric"]) <= 1e-6
    assert printed[0].startswith("tensor([")  # the 8 predicted classes
    # (random images score chance, so the metric alone proves little): the loaded model is
    # the best recipe applied to the cached baseline the optimizer compressed, output for output
    model, task = namespace["model"], namespace["task"]
    assert ts.count_parameters(model) == best["params"]
    recipe = Recipe.from_dict(best["recipe"])
    expected = apply_recipe(recipe, task, task.baseline(progress=False)).model
    inputs = task.inputs(16)
    with torch.no_grad():
        assert torch.equal(model(inputs), expected.eval()(inputs))
