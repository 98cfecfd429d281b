"""--max-drop is in points: a budget under 0.1 points (likely meant as a fraction) is warned."""

from __future__ import annotations

import warnings

import pytest

from search_helpers import make_task
from torchslim.cli import main
from torchslim.errors import ConfigError
from torchslim.search import Budget
from torchslim.search.optimize import optimize


def test_small_budget_warning_says_how_it_was_read_and_what_to_write():
    text = Budget(0.01).small_budget_warning()
    assert text == (
        "max drop 0.01 is read as 0.01 percentage point(s) of the metric (a drop of 0.0001 in "
        "metric units), not as a fraction: the budget is in points; for 1 % write "
        "--max-drop 1 (max_drop=1.0)"
    )
    relative = Budget(0.05, "relative").small_budget_warning()
    assert "read as 0.05 % of the baseline metric" in relative
    # 0 (no drop at all) is deliberate; 0.1 and up are plausible point budgets
    assert [Budget(v).small_budget_warning() for v in (0.0, 0.1, 0.5, 1.0)] == [None] * 4
    assert Budget(0.0999).small_budget_warning() is not None


def test_optimize_warns_before_any_work():
    # the bogus objective fails right after the budget is read: nothing trains
    with pytest.warns(UserWarning, match=r"for 1 % write --max-drop 1"):
        with pytest.raises(ConfigError, match="objective"):
            optimize(make_task(), 0.01, objective="speed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match="objective"):
            optimize(make_task(), 1.0, objective="speed")


def test_cli_prints_the_warning_once(capsys):
    code = main(
        ["optimize", "tests/search_helpers.py:make_task", "--max-drop", "0.01", "--objective", "x"]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("torchslim: warning: max drop 0.01 is read as 0.01 percentage point")
    assert err[1].startswith("torchslim: error: objective 'x' is unknown")
    assert len(err) == 2
