"""Optimizer: sensitivity, greedy allocation, acceptance on test, bad input."""

from __future__ import annotations

import json

import pytest

from search_helpers import make_task, planted_task
from torchslim.cli import main
from torchslim.errors import ConfigError
from torchslim.search import Budget, Objective, allocate, build_space, optimize, sensitivity
from torchslim.search.space import build_recipe, check_grid


def test_planted_sensitive_layer_gets_the_lowest_sparsity() -> None:
    task = planted_task()
    base = task.baseline(progress=False)
    space = build_space(base, task, ["magnitude_pruning"])
    curves, base_metric = sensitivity(task, base, space, progress=False)
    assert curves["magnitude_pruning"]["1"]["metric"][1] < base_metric - 0.3  # planted
    sparsity = allocate(space, curves, base_metric, 0.01, "size")["magnitude_pruning"]
    assert sparsity["1"] < sparsity["0"] and sparsity["1"] < sparsity["2"]
    assert sparsity["1"] == 0.0 and sparsity["0"] >= 0.9
    again, _ = sensitivity(task, base, space, progress=False)  # from the disk cache
    assert again == curves


def test_recipe_keeps_each_layers_own_setting() -> None:
    recipe = build_recipe(
        {"magnitude_pruning": {"0": 0.9, "1": 0.0}, "codebook_quant": {"0": 4, "1": 8}},
        recovery_epochs=2,
    )
    names = [step.name for step in recipe.steps]
    assert names == ["magnitude_pruning", "finetune", "codebook_quant"]
    assert dict(recipe.steps[0].overrides) == {"0": 0.9, "1": 0.0}
    assert recipe.to_yaml()  # re-runnable YAML


def test_accepted_model_meets_the_budget_on_test(tmp_path) -> None:
    task = make_task()
    result = optimize(
        task,
        max_drop=2.0,
        techniques=["magnitude_pruning"],
        trials=4,
        out=tmp_path,
        progress=False,
        latency=False,
    )
    assert result.met and result.best is not None
    report = result.report
    assert report.best == "best" and report.within_budget(result.best)
    assert task.evaluate(task.baseline(), "test") - result.best.footprint.metric <= 0.02
    assert result.best.footprint.artifact_bytes < report.baseline.artifact_bytes
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["budget"]["max_drop"] == pytest.approx(0.02)
    assert data["budget"]["max_drop_points"] == 2.0
    assert set(data["pareto"]) <= {c["name"] for c in data["candidates"]}
    assert "magnitude_pruning" in data["sensitivity"]
    assert (tmp_path / "best.yaml").exists() and (tmp_path / "report.html").exists()


def test_budget_nothing_meets_is_reported_and_best_found_saved(tmp_path) -> None:
    result = optimize(
        make_task(),
        max_drop=0.0,
        techniques=["magnitude_pruning"],
        ranges={"magnitude_pruning": [0.97]},
        recovery_epochs=1,
        trials=2,
        out=tmp_path,
        progress=False,
        latency=False,
    )
    assert not result.met and result.best is None and result.best_found is not None
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["best"] is None
    assert any("NOT met" in line for line in data["notes"])
    assert (tmp_path / "best-found.yaml").exists()
    assert any(c["name"] == "best-found" for c in data["candidates"])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Budget(-1.0), "negative"),
        (lambda: Budget(1000.0), "exceeds 100"),
        (lambda: Budget(1.0, "percent"), "drop type"),
        (lambda: Objective("speed"), "objective 'speed' is unknown"),
        (lambda: Objective("latency", runtime="tvm"), "runtime"),
        (lambda: check_grid("magnitude_pruning", []), "empty"),
        (lambda: check_grid("codebook_quant", [9]), "bits"),
        (lambda: check_grid("lowrank_magic", [1]), "cannot be optimized"),
    ],
)
def test_bad_input_is_a_clear_error(make, message) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_cli_optimize_bad_budget_exits_1(capsys) -> None:
    code = main(["optimize", "tests/search_helpers.py:make_task", "--max-drop", "-2"])
    assert code == 1
    err = capsys.readouterr().err
    assert "negative" in err and len(err.strip().splitlines()) == 1
