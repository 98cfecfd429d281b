"""``OptimizeOptions`` and search strategies as plug-ins."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest

from search_helpers import make_task
from torchslim.cli import main
from torchslim.errors import ConfigError
from torchslim.search.optimize import optimize
from torchslim.search.options import OptimizeOptions
from torchslim.search.strategies import (
    STRATEGIES,
    SearchInput,
    SearchOutcome,
    SearchStrategy,
    register_strategy,
)


class _Untrainable:
    """A task that fails loudly if anything touches it: options are checked first."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the task was used ({name}) before the options were checked")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"trials": 0}, "trials must be an integer >= 1"),
        ({"trials": True}, "trials must be an integer"),
        ({"time_limit": -5}, "time limit must be a positive number"),
        ({"threads": 0}, "threads must be an integer >= 1"),
        ({"recovery_epochs": -1}, "recovery epochs must be an integer >= 0"),
        ({"codebook_epochs": 1.5}, "codebook epochs must be an integer >= 0"),
        ({"heartbeat": 0}, "heartbeat must be an integer >= 1"),
        ({"techniques": []}, "the list of techniques is empty"),
        ({"techniques": "magnitude_pruning"}, "techniques must be a list"),
        ({"ranges": [0.5]}, "ranges must map a technique"),
        ({"strategy": "annealing"}, "strategy 'annealing' is unknown; use one of"),
        ({"strategy": "greedy", "storage": "sqlite:///x.db"}, "--storage applies to the optuna"),
        ({"objective": "speed"}, "objective 'speed' is unknown"),
        ({"margin": 1.0}, "margin"),
        ({"recovery": "prune-harder"}, "recovery"),
        ({"sensitivity_epochs": -1}, "sensitivity epochs"),
        ({"epochs": 3}, "optimize\\(\\) has no option 'epochs'; options: batch, codebook_epochs"),
    ],
)
def test_a_bad_option_is_one_line_before_anything_runs(fields, message) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        optimize(_Untrainable(), **fields)
    assert "\n" not in str(error.value)


def test_options_object_and_keywords_are_the_same_call() -> None:
    options = OptimizeOptions(max_drop=2.0, techniques=["magnitude_pruning"], trials=3)
    assert options.techniques == ("magnitude_pruning",)  # normalized, frozen
    with pytest.raises(AttributeError):
        options.trials = 4  # type: ignore[misc]
    assert options.strategy_name() == "optuna"  # auto: a trial count asks for a study
    assert OptimizeOptions().strategy_name() == "greedy"
    assert OptimizeOptions(storage="sqlite:///s.db").strategy_name() == "optuna"
    with pytest.raises(ConfigError, match="max_drop is given twice"):
        optimize(_Untrainable(), 1.0, max_drop=2.0)
    secret = OptimizeOptions(strategy="optuna", storage="postgresql://u:hunter2@db/studies")
    assert "hunter2" not in json.dumps(secret.to_dict())  # results.json never holds it
    data = options.to_dict()
    assert OptimizeOptions.from_dict(data) == options
    with pytest.raises(ConfigError, match="options have no field 'trails'"):
        OptimizeOptions.from_dict({**data, "trails": 3})


@pytest.fixture()
def middle_rung():
    """A test-only strategy, registered for one test: measure the ladder's middle rung."""

    @register_strategy("middle-rung")
    class MiddleRung:
        name: ClassVar[str] = "middle-rung"
        default_trials: ClassVar[int] = 1

        def __init__(self, options: OptimizeOptions) -> None:
            self.made_with = options

        def run(self, evaluator, search: SearchInput) -> SearchOutcome:
            ladder = evaluator.space.ladder()
            record = evaluator.evaluate(ladder[len(ladder) // 2], "middle")
            return SearchOutcome([record], notes=[f"middle-rung: {search.trials} trial(s)"])

    assert isinstance(MiddleRung(OptimizeOptions()), SearchStrategy)
    yield MiddleRung
    del STRATEGIES["middle-rung"]


def test_a_registered_strategy_runs_through_the_optimizer(middle_rung, tmp_path) -> None:
    task = make_task()
    result = optimize(
        task,
        max_drop=5.0,
        strategy="middle-rung",
        techniques=["magnitude_pruning"],
        recovery_epochs=1,
        sensitivity_epochs=0,
        out=tmp_path,
        progress=False,
        latency=False,
    )
    assert [r.name for r in result.records] == ["middle"]
    middle = result.records[0].allocation["magnitude_pruning"]
    assert len(set(middle.values())) == 1 and 0 < next(iter(middle.values())) < 1
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["options"]["strategy"] == "middle-rung" and data["options"]["trials"] == 1
    assert "middle-rung: 1 trial(s)" in data["notes"]
    assert result.best_found is not None and result.best_found.name in {"best", "best-found"}
    with pytest.raises(ConfigError, match="strategy 'middle-rung' is registered twice"):
        register_strategy("middle-rung")(type("Other", (), {}))


def test_cli_strategy_choices_are_the_registry(middle_rung, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:  # argparse: not a choice
        main(["optimize", "tests/search_helpers.py:make_task", "--strategy", "annealing"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'annealing'" in err
    assert all(name in err for name in ("auto", "greedy", "optuna", "middle-rung"))
