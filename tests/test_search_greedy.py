"""Optimizer: sensitivity, greedy allocation, acceptance on test, bad input."""

from __future__ import annotations

import json

import pytest

from search_helpers import make_task, planted_task
from torchslim.cli import main
from torchslim.errors import ConfigError
from torchslim.search import Budget, Objective, allocate, build_space
from torchslim.search.optimize import optimize
from torchslim.search.options import OptimizeOptions
from torchslim.search.sensitivity import sensitivity
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
    epochs = task.train_config.epochs  # a tiny task: the epoch-based defaults, not capped
    wanted = f"recovery {min(20, max(1, epochs // 2))} epoch(s), sensitivity points after 1"
    assert any(n.startswith("default training:") and wanted in n for n in data["notes"])
    # the options the run used, defaults resolved, re-make the same options
    rounds = min(20, max(1, epochs // 2))
    assert data["options"] == {
        **OptimizeOptions().to_dict(),
        "max_drop": 2.0,
        "strategy": "optuna",  # auto with a trial count
        "techniques": ["magnitude_pruning"],
        "trials": 4,
        "out": str(tmp_path),
        "recovery_epochs": rounds,
        "codebook_epochs": max(1, rounds // 2),
        "sensitivity_epochs": 1,
        "progress": False,
        "latency": False,
    }
    assert OptimizeOptions.from_dict(data["options"]) == result.options


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
        (lambda: check_grid("svd", [1.5]), "fraction"),
        (lambda: optimize(make_task(), margin=1.0), "margin"),
        (lambda: optimize(make_task(), recovery="prune-harder"), "recovery"),
        (lambda: optimize(make_task(), sensitivity_epochs=-1), "sensitivity epochs"),
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


def test_cost_model_counts_the_inputs_a_channel_cut_removes_downstream() -> None:
    task = make_task()  # 8 -> 32 -> 3
    base = task.baseline(progress=False)
    space = build_space(base, task, ["channel_pruning", "magnitude_pruning"])
    assert space.layers["channel_pruning"] == ["0"]  # the output layer keeps its classes
    assert space.data["channel_pruning"]["0"]["0"] == pytest.approx(1.0)
    assert space.data["channel_pruning"]["0"]["2"] == pytest.approx(
        1.0
    )  # its 32 inputs go with them
    dense = {"channel_pruning": {"0": 0.0}, "magnitude_pruning": {"0": 0.0, "2": 0.0}}
    half = {"channel_pruning": {"0": 0.5}, "magnitude_pruning": {"0": 0.0, "2": 0.0}}
    weights = (8 * 32 + 32 * 3) * 32
    saved = space.cost(dense, "size") - space.cost(half, "size")
    assert saved == pytest.approx(0.5 * weights + 16 * 32, rel=0.01)  # + half of layer 0's biases


def test_recipe_follows_the_pipeline_order_and_reaches_factorized_layers() -> None:
    from torchslim.pipeline import apply_recipe
    from torchslim.techniques.codebook import CodebookLayer

    task = make_task()
    base = task.baseline(progress=False)
    allocation = {
        "channel_pruning": {"0": 0.25},
        "svd": {"0": 0.5},
        "magnitude_pruning": {"0": 0.5, "2": 0.0},
        "codebook_quant": {"0": 4, "2": 6},
    }
    recipe = build_recipe(allocation, recovery_epochs=1, tuning_epochs=1, recovery="distill")
    names = [step.name for step in recipe.steps]
    assert names == ["channel_pruning", "svd", "magnitude_pruning", "distill", "codebook_quant"]
    model = apply_recipe(recipe, task, base, "val").model
    shared = {n: m.bits for n, m in model.named_modules() if isinstance(m, CodebookLayer)}
    assert shared == {"0.0": 4, "0.1": 4, "2": 6}  # the SVD factors of layer 0 both shared
    zeros = [
        (m.indices == m.zero_index).float().mean().item()
        for m in model.modules()
        if isinstance(m, CodebookLayer) and m.bits == 4
    ]
    assert all(z >= 0.45 for z in zeros)  # magnitude pruning reached both factors


def test_sensitivity_after_recovery_has_a_loss_curve_against_its_reference() -> None:
    from torchslim.search.sensitivity import drop_curve, loss_scale

    task = make_task()
    base = task.baseline(progress=False)
    space = build_space(base, task, ["magnitude_pruning", "codebook_quant"])
    curves, base_metric = sensitivity(
        task, base, space, cache=False, progress=False, recovery_epochs=1, recovery="distill"
    )
    pruning = curves["magnitude_pruning"]["0"]
    assert pruning["loss"][0] == 0.0 and pruning["x"][0] == 0.0  # identity = the reference
    assert pruning["loss"][-1] > 0.05  # 97 % of the first layer pruned costs loss
    assert 0 <= pruning["reference"] <= 1 and "reference" in curves["codebook_quant"]["2"]
    scale = loss_scale(curves, base_metric)
    assert scale is not None and scale > 0
    drops = drop_curve(pruning, base_metric, scale)
    assert drops == sorted(drops) and drops[0] == 0.0 and drops[-1] > 0


def test_val_margin_and_loss_guard_decide_what_counts_as_feasible() -> None:
    from torchslim.search.evaluate import Evaluator, Record
    from torchslim.search.space import build_space as space_of

    task = make_task()
    base = task.baseline(progress=False)
    space = space_of(base, task, ["magnitude_pruning"])
    evaluator = Evaluator(
        task, base, space, Budget(1.0), Objective("size"), 0, 0, margin=0.5, recovery="distill"
    )
    assert evaluator.search_limit == pytest.approx(0.005)
    top = evaluator.base_val.metric

    def record(drop: float, loss: float) -> Record:
        return Record("r", {}, top - drop, top, 0.5, candidate=None, val_loss=loss)  # type: ignore[arg-type]

    assert evaluator.meets(record(0.004, 0.3))
    assert not evaluator.meets(record(0.008, 0.3)) and evaluator.meets(record(0.008, 0.3), False)
    assert not evaluator.meets(record(0.011, 0.3), margin=False)
    evaluator.loss_cap = 0.25  # set by greedy refinement
    assert not evaluator.meets(record(0.0, 0.3)) and evaluator.meets(record(0.0, 0.2))
    assert evaluator.meets(record(0.008, 0.3), margin=False)  # the bare budget ignores the guard


def test_uniform_ladder_moves_every_knob_together_and_bisection_finds_the_last_passing_rung() -> (
    None
):
    from types import SimpleNamespace

    from torchslim.search.greedy import uniform_search
    from torchslim.search.space import Space

    space = Space(
        grids={"channel_pruning": (0.0, 0.4, 0.8), "codebook_quant": (8, 6, 4, 3, 2)},
        layers={"channel_pruning": ["a", "b"], "codebook_quant": ["a", "b", "c"]},
    )
    ladder = space.ladder()
    assert len(ladder) == 5  # the longer grid sets the rungs
    assert ladder[0] == {
        "channel_pruning": {"a": 0.0, "b": 0.0},
        "codebook_quant": dict.fromkeys("abc", 8),
    }
    assert ladder[2]["channel_pruning"] == {"a": 0.4, "b": 0.4}  # half-way on both grids
    assert ladder[2]["codebook_quant"] == dict.fromkeys("abc", 4)
    assert ladder[-1] == {
        "channel_pruning": {"a": 0.8, "b": 0.8},
        "codebook_quant": dict.fromkeys("abc", 2),
    }

    measured: list[int] = []

    def evaluate(allocation, name, monitor=None):
        rung = ladder.index(allocation)
        measured.append(rung)
        return SimpleNamespace(
            allocation=allocation, extra={}, val_metric=1.0, ratio=1.0 / (rung + 1), name=name
        )

    evaluator = SimpleNamespace(
        space=space,
        recipe=lambda allocation, name: SimpleNamespace(steps=[1]),
        evaluate=evaluate,
        stop_hopeless=lambda drop, epoch, epochs: False,
        meets=lambda record: record.extra["rung"] <= 3,  # rung 3 is the last one that passes
    )
    records = uniform_search(evaluator, max_rounds=4)  # type: ignore[arg-type]
    assert measured == [2, 4, 3]  # bisection: 3 measurements for 5 rungs
    assert [r.extra["rung"] for r in records] == [2, 4, 3] and records[2].name == "uniform-3"
    assert len(uniform_search(evaluator, max_rounds=1)) == 1  # the round limit holds  # type: ignore[arg-type]


def test_distillation_recovery_settings_follow_the_tasks_optimizer() -> None:
    from torchslim.search.space import recovery_kd

    allocation = {"magnitude_pruning": {"0": 0.5}}
    sgd = build_recipe(allocation, recovery_epochs=2, recovery="distill", kd=recovery_kd("sgd"))
    adam = build_recipe(allocation, recovery_epochs=2, recovery="distill", kd=recovery_kd("adam"))
    assert (sgd.steps[1].temperature, sgd.steps[1].alpha) == (1.0, 0.5)
    assert (adam.steps[1].temperature, adam.steps[1].alpha) == (4.0, 0.7)
    task = make_task()  # an Adam task: its evaluator builds T=4 recipes
    from torchslim.search.evaluate import Evaluator
    from torchslim.search.space import build_space as space_of

    base = task.baseline(progress=False)
    evaluator = Evaluator(
        task, base, space_of(base, task, ["magnitude_pruning"]), Budget(1.0), Objective("size"),
        2, 0, recovery="distill",
    )  # fmt: skip
    assert evaluator.recipe(allocation, "x").steps[1].temperature == 4.0


def int8_latency_search(out):
    """A two-trial latency search on ONNX Runtime with the static int8 knob."""
    return optimize(
        make_task(),
        max_drop=5.0,
        objective="latency",
        runtime="onnxruntime",
        techniques=["static_quant"],
        strategy="greedy",
        trials=2,
        recovery_epochs=1,
        out=out,
        progress=False,
    )


def test_latency_objective_on_onnxruntime_times_only_the_deployed_models(tmp_path) -> None:
    result = int8_latency_search(tmp_path)
    assert result.records
    for record in result.records:
        deployed = record.candidate.deployed
        assert deployed is not None and deployed.latency_ms  # ORT int8 vs ORT fp32, timed
        assert not record.candidate.footprint.latency_ms  # the fake-quant model is not timed
        reference = record.candidate.deployed_reference.latency_ms["batch_1"]
        assert record.ratio == pytest.approx(deployed.latency_ms["batch_1"] / reference)
    assert result.best_found is not None and result.best_found.deployed is not None


def test_latency_search_rounds_channel_widths_to_multiples_of_8() -> None:
    from torchslim.search.evaluate import Evaluator
    from torchslim.search.space import build_space as space_of

    task = make_task()
    base = task.baseline(progress=False)
    space = space_of(base, task, ["channel_pruning"])
    allocation = {"channel_pruning": {"0": 0.6}}
    for kind, expected in (("latency", 8), ("size", None)):
        evaluator = Evaluator(task, base, space, Budget(1.0), Objective(kind), 1, 0)
        assert evaluator.recipe(allocation, "x").steps[0].round_to == expected
    latency = Evaluator(task, base, space, Budget(1.0), Objective("latency"), 1, 0)
    model = latency.evaluate(allocation, "x")
    assert model.candidate.footprint.params == 8 * 8 + 8 + 8 * 3 + 3  # 32 -> 12.8 -> 8 kept


def test_latency_answer_takes_the_fewest_macs_among_candidates_timed_within_noise() -> None:
    from types import SimpleNamespace

    from torchslim.search.optimize import fewest_macs_within_noise

    def record(name: str, ratio: float, macs: int, inside: bool = True) -> SimpleNamespace:
        footprint = SimpleNamespace(macs=macs)
        return SimpleNamespace(
            name=name, ratio=ratio, candidate=SimpleNamespace(footprint=footprint), inside=inside
        )

    fast, close, slow = record("a", 0.050, 15), record("b", 0.054, 8), record("c", 0.060, 4)
    outside = record("d", 0.051, 2, inside=False)  # beyond the val margin: not preferred
    meets = lambda r: r.inside  # noqa: E731
    order = fewest_macs_within_noise([fast, close, slow, outside], meets)  # type: ignore[arg-type]
    assert [r.name for r in order] == ["b", "a", "c", "d"]  # b: 8 % slower, half the MACs
    assert fewest_macs_within_noise([], meets) == []


def test_latency_finalists_are_timed_together_and_reordered(tmp_path) -> None:
    from types import SimpleNamespace

    import torch
    from torch import nn

    from torchslim.export.onnx import export_onnx
    from torchslim.search.optimize import retime_finalists

    example = torch.randn(1, 8)
    small = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    large = nn.Sequential(nn.Linear(8, 1024), nn.ReLU(), nn.Linear(1024, 1024)).eval()
    files = {
        name: export_onnx(model, example, tmp_path / f"{name}.onnx")
        for name, model in (("small", small), ("large", large))
    }

    def record(name: str, ratio: float) -> SimpleNamespace:
        deployed = SimpleNamespace(artifact=str(files[name]))
        return SimpleNamespace(name=name, ratio=ratio, candidate=SimpleNamespace(deployed=deployed))

    # the separate runs ranked the large model first (within 30 % of each other)
    feasible = [record("large", 0.050), record("small", 0.060), record("small", 0.2)]
    evaluator = SimpleNamespace(meets=lambda r: True, objective=SimpleNamespace(batch=1), threads=1)
    task = SimpleNamespace(inputs=lambda batch: torch.randn(batch, 8))
    notes: list[str] = []
    order = retime_finalists(task, feasible, evaluator, notes)  # type: ignore[arg-type]
    assert [r.name for r in order[:2]] == ["small", "large"]  # one run: the small one is faster
    assert order[2] is feasible[2]  # outside the 30 % window: not re-timed, kept last
    assert notes and notes[0].startswith("finalists timed together at batch 1")


def test_a_candidate_whose_deployed_file_misses_the_budget_is_never_accepted(
    tmp_path, monkeypatch
) -> None:
    """Plant a deployed int8 file that is wrong (as full-range int8 is on CPUs without VNNI):
    its simulation meets the budget, the file does not, so the optimizer must refuse it."""
    from torchslim.export.onnx import OrtModule

    real_forward = OrtModule.forward

    def wrong_int8(self, *inputs):
        out = real_forward(self, *inputs)
        return out.roll(1, dims=1) if b"QuantizeLinear" in self.model_bytes else out

    monkeypatch.setattr(OrtModule, "forward", wrong_int8)
    result = int8_latency_search(tmp_path)
    int8 = [r for r in result.records if "static_quant" in r.candidate.techniques]
    assert int8, "the search never tried int8"
    for record in int8:
        candidate = record.candidate
        assert candidate.deployed_gap() > 0.3  # simulated ~0.99, deployed file ~1/3
        assert record.val_metric == pytest.approx(candidate.deployed.metric)
    assert result.best is None or "static_quant" not in result.best.techniques
    assert any("below its simulation" in note for note in result.report.notes)
    saved = json.loads((tmp_path / "results.json").read_text())
    gaps = {c["name"]: c["deployed_gap"] for c in saved["candidates"]}
    assert any(gap is not None and gap > 0.3 for gap in gaps.values())
    assert saved["gap_flagged"] and set(saved["gap_flagged"]) <= set(gaps)
    assert saved["hardware"]["cpu"] and "u8s8_exact" in saved["hardware"]


def test_a_candidate_slower_than_the_baseline_is_never_ranked_over_a_faster_one() -> None:
    from types import SimpleNamespace

    from torchslim.search.optimize import _ranked

    def record(name: str, ratio: float, in_margin: bool) -> SimpleNamespace:
        return SimpleNamespace(name=name, ratio=ratio, in_margin=in_margin)

    def meets(r: SimpleNamespace, margin: bool = True) -> bool:
        return r.in_margin or not margin

    objective = SimpleNamespace(kind="latency", needs_latency=False)
    evaluator = SimpleNamespace(meets=meets, objective=objective, keep=None)
    # seen on fashion-resnet: int8 at 1 / 0.6 = 1.67x the fp32 time, within the margin; a
    # pruned fp32 model at 0.95x, within the budget but not the margin
    slow, fast = record("int8", 1.67, True), record("pruned", 0.95, False)
    notes: list[str] = []
    assert [r.name for r in _ranked(None, [slow, fast], evaluator, notes)] == ["pruned", "int8"]
    assert notes == []
    # among candidates that beat the baseline, the margin still comes first
    closer = record("closer", 0.97, True)
    order = _ranked(None, [slow, fast, closer], evaluator, notes)
    assert [r.name for r in order] == ["closer", "pruned", "int8"]
    # nothing beats the baseline: said in the notes
    order = _ranked(None, [slow, record("same", 1.0, False)], evaluator, notes)
    assert [r.name for r in order] == ["int8", "same"]
    assert notes and "no candidate within the budget beat the baseline on latency" in notes[0]
