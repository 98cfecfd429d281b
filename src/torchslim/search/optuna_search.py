"""Optuna search over per-layer settings: studies, storages, samplers, early stopping.

Storage is Optuna's: in memory (``None``), SQLite (``sqlite:///study.db``) or any
SQLAlchemy URL (``postgresql://user:pass@host/db``), so a study survives a killed
process (run again with the same storage and study name to continue) and many workers
on many machines can share one study. Each study records the task's fingerprint and
the objective in its user attributes; a study made for another task or objective is
refused rather than mixed.

Samplers: NSGA-II (multi-objective: objective cost ratio and val drop, the Pareto front)
or TPE (single objective: cost ratio, with the budget as a constraint). Bad trials stop
early: after recovery, a val drop beyond twice the budget ends the trial as pruned.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from typing import Any

import optuna

from torchslim.errors import ConfigError, TorchslimError
from torchslim.search.evaluate import Evaluator, Record, StopTrial
from torchslim.search.space import Allocation

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "nsga2")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _display_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for the message
        return url


def open_storage(url: str | None) -> optuna.storages.BaseStorage:
    """In-memory storage for None, else an RDB storage for a SQLAlchemy URL.

    Raises:
        ConfigError: the URL is malformed or the database cannot be reached (named).
    """
    if url is None:
        return optuna.storages.InMemoryStorage()
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"storage {url!r} is not a database URL; use e.g. sqlite:///study.db or "
            "postgresql://user:password@host/db"
        )
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    error: Exception | None = None
    for attempt in range(3):  # workers creating one new database race on its schema
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=120
                )
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many types
            error = exc
            if "unable to open" in str(exc) or isinstance(exc, ImportError):
                break
            time.sleep(0.5 + attempt)
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    raise ConfigError(
        f"storage {_display_url(url)} is unreachable ({type(error).__name__}: {first[:200]}); "
        "check the URL, the database server and its driver"
    ) from error


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str | None,
    fingerprint: str,
    objective: dict[str, Any],
    multi: bool,
    seed: int | None = None,
    evaluator: Evaluator | None = None,
) -> optuna.Study:
    """Create or load a study; refuse one that was made for another task or objective."""
    name = name or f"torchslim-{fingerprint[:12]}"
    directions = ["minimize", "minimize"] if multi else ["minimize"]
    sampler: optuna.samplers.BaseSampler
    if multi:
        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=12)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)
    study: optuna.Study | None = None
    for attempt in range(3):
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                directions=directions,
                sampler=sampler,
                load_if_exists=True,
            )
            break
        except ValueError as exc:
            raise ConfigError(
                f"study {name!r} exists with other settings ({exc}); use another --study name"
            ) from exc
        except Exception:  # a concurrent worker created it at the same moment: load it
            if attempt == 2:
                raise
            time.sleep(0.5)
    assert study is not None
    # One attribute written in one call, so a concurrent worker never sees half of it.
    identity = {"task_fingerprint": fingerprint, "objective": objective, "multi_objective": multi}
    found = study.user_attrs.get("torchslim")
    if found is None:
        if study.trials:
            raise ConfigError(
                f"study {name!r} was not created by torchslim (no task fingerprint); use another "
                "--study name"
            )
        study.set_user_attr("torchslim", identity)
    elif found["task_fingerprint"] != fingerprint:
        raise ConfigError(
            f"study {name!r} was created for another task (fingerprint "
            f"{found['task_fingerprint'][:12]}, this task {fingerprint[:12]}); use another "
            "--study name"
        )
    elif found.get("objective") != objective or found.get("multi_objective") != multi:
        raise ConfigError(
            f"study {name!r} optimizes {found.get('objective')} (multi-objective: "
            f"{found.get('multi_objective')}); use another --study name for {objective}"
        )
    return study


def suggest(trial: optuna.Trial, evaluator: Evaluator) -> Allocation:
    """Per-(knob, layer) settings sampled from their grids."""
    space = evaluator.space
    return {
        knob: {
            layer: space.grids[knob][
                trial.suggest_int(f"{knob}:{layer}", 0, len(space.grids[knob]) - 1)
            ]
            for layer in layers
        }
        for knob, layers in space.layers.items()
    }


def levels_of(allocation: Allocation, evaluator: Evaluator) -> dict[str, int]:
    """Parameters of a trial that reproduce an allocation (to enqueue it)."""
    grids = evaluator.space.grids
    return {
        f"{knob}:{layer}": grids[knob].index(value)
        for knob, values in allocation.items()
        for layer, value in values.items()
    }


def run_study(
    study: optuna.Study,
    evaluator: Evaluator,
    trials: int | None,
    time_limit: float | None,
    seeds: list[Allocation] | None = None,
    multi: bool = True,
) -> None:
    """Run trials until the study holds ``trials`` finished ones or ``time_limit`` passes."""
    if seeds and not study.trials:
        for allocation in seeds:
            study.enqueue_trial(levels_of(allocation, evaluator), skip_if_exists=True)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    hook = evaluator.early_stop_hook()

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        trial.set_user_attr("worker", worker)
        allocation = suggest(trial, evaluator)
        if not evaluator.recipe(allocation, "probe").steps:
            trial.set_constraint("drop", -evaluator.search_limit)
            return (1.0, 0.0) if multi else 1.0
        try:
            record = evaluator.evaluate(allocation, f"trial-{trial.number}", after_step=hook)
        except StopTrial as exc:
            evaluator.stopped.append((exc.drop, allocation))
            trial.set_user_attr("stopped", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        drop = evaluator.base_val.metric - record.val_metric
        trial.set_constraint("drop", drop - evaluator.search_limit)
        trial.set_user_attr("record", record.to_dict())
        return (record.ratio, drop) if multi else record.ratio

    failures = max(5, trials or 0)

    def stop_on_failures(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
        if len(failed) >= failures:
            log.warning("stopping the study: %d trials failed", len(failed))
            study.stop()

    callbacks: list[Any] = [stop_on_failures]
    if trials is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(trials, states=FINISHED))
        if _finished(study) >= trials:
            return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    deadline = None if time_limit is None else time.monotonic() + time_limit
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            study.optimize(
                objective,
                n_trials=None if time_limit is not None or trials is not None else 20,
                timeout=remaining,
                callbacks=callbacks,
                catch=(TorchslimError,),
                gc_after_trial=False,
                show_progress_bar=False,
            )
            return
        except ValueError as exc:
            # Workers sharing a SQLite study can both pop the same enqueued (WAITING) trial;
            # the second to finish it is refused. Its result is already stored: go on.
            if "Cannot tell a" not in str(exc):
                raise
            log.warning("a trial was finished by another worker (%s); continuing", exc)
            if trials is not None and _finished(study) >= trials:
                return
            if trials is None and time_limit is None:
                return


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def study_records(study: optuna.Study) -> list[Record]:
    """The records of every completed trial, from every worker."""
    records = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        data = trial.user_attrs.get("record")
        if data:
            record = Record.from_dict(data)
            record.extra["worker"] = trial.user_attrs.get("worker")
            records.append(record)
    return records


def wait_seconds(start: float, time_limit: float | None) -> float | None:
    """Seconds left of ``time_limit`` since ``start`` (``time.monotonic()``)."""
    if time_limit is None:
        return None
    return max(0.0, time_limit - (time.monotonic() - start))
