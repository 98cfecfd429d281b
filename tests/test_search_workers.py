"""Many workers, one study: PostgreSQL and SQLite, SIGKILLed workers, refused mismatches."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from search_helpers import make_task
from torchslim.errors import ConfigError
from torchslim.search.optimize import optimize
from torchslim.search.optuna_search import open_storage, open_study

WORKER = Path(__file__).parent / "search_helpers.py"
State = optuna.trial.TrialState
FINISHED = (State.COMPLETE, State.PRUNED)


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request, tmp_path) -> str:
    """A fresh storage URL: a SQLite file, or the test PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("postgres_url")


def _worker(storage: str, study: str, trials: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(WORKER), storage, study, str(trials), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_STORAGES: dict[str, optuna.storages.BaseStorage] = {}


def _trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, through one storage (one connection pool) per URL."""
    if storage not in _STORAGES:
        _STORAGES[storage] = open_storage(storage)
    try:
        return optuna.load_study(study_name=study, storage=_STORAGES[storage]).trials
    except KeyError:
        return []


def _unique(name: str) -> str:
    return f"{name}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


def test_two_workers_share_a_study_and_one_writes_the_answer(storage, tmp_path) -> None:
    make_task().baseline(progress=False)  # cached for the workers
    study, out = _unique("pair"), tmp_path / "out"
    workers = [
        _worker(storage, study, 6, "--barrier", str(tmp_path / "ready"), "2", "--out", str(out))
        for _ in range(2)
    ]
    outputs = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=150)
        assert worker.returncode == 0, stderr[-2000:]
        outputs.append(stdout)
    trials = _trials(storage, study)
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) >= 6
    assert not [t for t in trials if t.state in (State.RUNNING, State.WAITING)]
    per_worker: dict[str, int] = {}
    for trial in finished:
        assert trial.user_attrs["host"] == socket.gethostname()
        if "same_as" not in trial.user_attrs:  # duplicates pruned untrained do not count
            worker = trial.user_attrs["worker"]
            per_worker[worker] = per_worker.get(worker, 0) + 1
    assert sum(per_worker.values()) >= 6
    # which worker trains what depends on timing: on a loaded 2-core machine one worker
    # can take every trial before the other gets a core (seen in CI); what must hold is
    # that no settings are trained twice (below) and the counts add up
    assert 1 <= len(per_worker) <= 2, per_worker
    # no two workers trained the same settings: evaluated trials have distinct parameters
    evaluated = [t for t in finished if "same_as" not in t.user_attrs]
    keys = [tuple(sorted(t.params.items())) for t in evaluated]
    assert len(keys) == len(set(keys))
    # exactly one worker wrote the answer, over every trial of both
    answered = [line for text in outputs for line in text.splitlines() if "answered_by" in line]
    assert sorted(line.split()[1] == "None" for line in answered) == [False, True], answered
    assert len(list(out.glob(".answer-*.claim"))) == 1
    report = json.loads((out / "results.json").read_text())
    note = next(n for n in report["notes"] if n.startswith("trials per worker"))
    assert "(2 worker(s))" in note
    for worker, count in per_worker.items():
        assert f"{worker} {count}" in note
    origins = [c["origin"] for c in report["candidates"]]
    assert origins and all(o and o["host"] == socket.gethostname() for o in origins)
    assert {o["worker"] for o in origins} <= set(per_worker)
    # progress from any machine: `torchslim study` counts the same trials per worker
    status = subprocess.run(
        [sys.executable, "-m", "torchslim", "study", "--storage", storage, "--study", study]
        + ["--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["trials_per_worker"] == per_worker
    assert data["duplicates_pruned"] == sum("same_as" in t.user_attrs for t in trials)
    assert sum(data["states"].values()) == len(trials)
    assert 0 < data["best_feasible_ratio"] <= 1


def test_sigkilled_worker_loses_nothing(storage, tmp_path) -> None:
    make_task().baseline(progress=False)
    study = _unique("kill")
    killed: list[int] = []
    for _ in range(4):  # a trial must be running at the kill; trials are short, so retry
        process = _worker(storage, study, 500, "--heartbeat", "1", "--epochs", "12")
        deadline = time.monotonic() + 90
        try:
            while True:
                assert process.poll() is None, process.stderr.read()[-2000:]
                assert time.monotonic() < deadline, "the worker made no progress"
                trials = _trials(storage, study)
                done = [t for t in trials if t.state == State.COMPLETE]
                # killed between Optuna's ask and its suggestions a trial has no settings yet
                # and its retry samples new ones: kill once the running trial has them
                running = [t for t in trials if t.state == State.RUNNING and t.params]
                if len(done) >= 2 and running:
                    break
                time.sleep(0.1)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        killed = [
            t.number for t in _trials(storage, study) if t.state == State.RUNNING and t.params
        ]
        if killed:
            break
    assert killed, "no trial was running when the worker was killed"
    before = {t.number: t.values for t in _trials(storage, study) if t.state == State.COMPLETE}
    target = len([t for t in _trials(storage, study) if t.state in FINISHED]) + 1
    start = time.monotonic()
    optimize(
        make_task(),
        max_drop=2.0,
        strategy="optuna",
        techniques=["magnitude_pruning"],
        trials=target,
        storage=storage,
        study=study,
        recovery_epochs=12,
        heartbeat=1,
        progress=False,
        latency=False,
    )
    # the dead trial is failed after 3 one-second beats, not Optuna's 120 s default grace;
    # the bound leaves room for a loaded 2-core machine
    assert time.monotonic() - start < 110
    trials = {t.number: t for t in _trials(storage, study)}
    assert not [t for t in trials.values() if t.state in (State.RUNNING, State.WAITING)]
    for number in killed:  # failed as dead, and its settings run again to the end
        assert trials[number].state == State.FAIL
        retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == number]
        assert retries and retries[-1].state in FINISHED
        assert retries[-1].params == trials[number].params
    # completed trials kept, never re-run: no two evaluated trials share settings
    assert all(trials[n].values == values for n, values in before.items())
    evaluated = [
        t for t in trials.values() if t.state in FINISHED and "same_as" not in t.user_attrs
    ]
    keys = [tuple(sorted(t.params.items())) for t in evaluated]
    assert len(keys) == len(set(keys))
    assert len([t for t in trials.values() if t.state in FINISHED]) >= target


def test_study_with_other_settings_is_refused_and_left_as_is(storage) -> None:
    study = _unique("mixed")
    opened = open_storage(storage)
    settings = {"budget": {"max_drop": 1.0}, "recovery": "distill 2 epoch(s)"}
    created = open_study(opened, study, "a" * 64, settings, True)
    created.enqueue_trial({"x": 1})
    attrs = dict(created.user_attrs)
    with pytest.raises(ConfigError) as error:
        open_study(opened, study, "a" * 64, {**settings, "budget": {"max_drop": 2.0}}, True)
    message = str(error.value)
    assert "\n" not in message
    assert "budget: study {'max_drop': 1.0}, this run {'max_drop': 2.0}" in message
    with pytest.raises(ConfigError, match="created for another task"):
        open_study(opened, study, "b" * 64, settings, True)
    with pytest.raises(ConfigError, match="multi-objective True, this run asks False"):
        open_study(opened, study, "a" * 64, settings, False)
    again = optuna.load_study(study_name=study, storage=opened)
    assert again.user_attrs == attrs
    assert len(again.trials) == 1


def test_postgres_login_errors_are_one_line(postgres_url) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    wrong = url.set(password="not-the-password").render_as_string(hide_password=False)
    with pytest.raises(ConfigError) as error:
        open_storage(wrong)
    message = str(error.value)
    assert "password authentication failed" in message and "\n" not in message
    assert "not-the-password" not in message
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens there once the socket is closed
    dead = url.set(port=closed).render_as_string(hide_password=False)
    with pytest.raises(ConfigError, match=f"127.0.0.1:{closed}.*is unreachable") as error:
        open_storage(dead)
    assert "\n" not in str(error.value)


def test_missing_postgres_driver_names_the_extra(monkeypatch) -> None:
    for name in [m for m in sys.modules if m == "psycopg" or m.startswith("psycopg.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ImportError
    with pytest.raises(ConfigError) as error:
        open_storage("postgresql://user:secret@127.0.0.1:9/db")
    message = str(error.value)
    assert "pip install 'torchslim[postgres]'" in message
    assert "secret" not in message and "\n" not in message
