"""Optimizer with Optuna: refused mismatches, storage URLs (workers: test_search_workers.py)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from torchslim.errors import ConfigError
from torchslim.search.optuna_search import open_storage, open_study

WORKER = Path(__file__).parent / "search_helpers.py"
COMPLETE = optuna.trial.TrialState.COMPLETE


def test_study_of_another_task_is_refused(tmp_path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'mixed.db'}")
    open_study(storage, "s", "a" * 64, {"objective": "size"}, True)
    with pytest.raises(ConfigError, match="created for another task"):
        open_study(storage, "s", "b" * 64, {"objective": "size"}, True)
    with pytest.raises(ConfigError, match=r"other settings \(objective: study size, this run macs"):
        open_study(storage, "s", "a" * 64, {"objective": "macs"}, True)


def test_unreachable_storage_names_the_url(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/no/such/dir/study.db"
    with pytest.raises(ConfigError, match="unreachable") as error:
        open_storage(url)
    assert "no/such/dir" in str(error.value)
    with pytest.raises(ConfigError, match="not a database URL"):
        open_storage("study.db")
