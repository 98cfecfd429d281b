"""Optimizer with Optuna: resumable studies, shared SQLite storage, refused mismatches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from search_helpers import make_task
from torchslim.errors import ConfigError
from torchslim.search import optimize
from torchslim.search.optuna_search import open_storage, open_study

WORKER = Path(__file__).parent / "search_helpers.py"
COMPLETE = optuna.trial.TrialState.COMPLETE


def _worker(storage: str, study: str, trials: int, *barrier: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(WORKER), storage, study, str(trials), *barrier],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _complete(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    try:
        loaded = optuna.load_study(study_name=study, storage=storage)
    except KeyError:
        return []
    return loaded.get_trials(states=(COMPLETE,))


def test_killed_study_resumes_and_keeps_completed_trials(tmp_path) -> None:
    make_task().baseline(progress=False)  # cached for the worker
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    process = _worker(storage, "resume", 500)
    deadline = time.monotonic() + 90
    try:
        while len(_complete(storage, "resume")) < 3:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the worker made no progress"
            time.sleep(0.3)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    before = {t.number: t.values for t in _complete(storage, "resume")}
    target = len(before) + 2
    optimize(
        make_task(),
        max_drop=2.0,
        strategy="optuna",
        techniques=["magnitude_pruning"],
        trials=target,
        storage=storage,
        study="resume",
        progress=False,
        latency=False,
    )
    after = {t.number: t.values for t in _complete(storage, "resume")}
    assert all(after[number] == values for number, values in before.items())
    finished = optuna.load_study(study_name="resume", storage=storage).get_trials(
        states=(COMPLETE, optuna.trial.TrialState.PRUNED)
    )
    assert len(finished) >= target


def test_two_processes_share_one_sqlite_study(tmp_path) -> None:
    make_task().baseline(progress=False)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [_worker(storage, "shared", 24, str(tmp_path / "ready"), "2") for _ in range(2)]
    for worker in workers:
        assert worker.wait(timeout=100) == 0, worker.stderr.read().decode()[-2000:]
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    finished = [t for t in trials if t.state in (COMPLETE, optuna.trial.TrialState.PRUNED)]
    pids = {t.user_attrs.get("worker") for t in finished}
    assert len(pids) == 2, pids
    assert len(finished) >= 24


def test_study_of_another_task_is_refused(tmp_path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'mixed.db'}")
    open_study(storage, "s", "a" * 64, {"objective": "size"}, True)
    with pytest.raises(ConfigError, match="created for another task"):
        open_study(storage, "s", "b" * 64, {"objective": "size"}, True)
    with pytest.raises(ConfigError, match="optimizes"):
        open_study(storage, "s", "a" * 64, {"objective": "macs"}, True)


def test_unreachable_storage_names_the_url(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/no/such/dir/study.db"
    with pytest.raises(ConfigError, match="unreachable") as error:
        open_storage(url)
    assert "no/such/dir" in str(error.value)
    with pytest.raises(ConfigError, match="not a database URL"):
        open_storage("study.db")
