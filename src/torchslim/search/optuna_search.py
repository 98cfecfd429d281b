"""Optuna search over per-layer settings: studies, storages, samplers, early stopping.

Storage is Optuna's: in memory (``None``), SQLite (``sqlite:///study.db``) or any
SQLAlchemy URL (``postgresql://user:pass@host/db``), so a study survives a killed
process (run again with the same storage and study name to continue) and many workers
on many machines can share one study. Each study records the task's fingerprint and
the objective in its user attributes; a study made for another task or objective is
refused rather than mixed.

Samplers: NSGA-II (multi-objective: objective cost ratio and val drop, the Pareto front)
or TPE (single objective: cost ratio, with the budget as a constraint). Bad trials stop
early, whatever the recovery step is called (any step with ``role == "recovery"``): from
half of its epochs on, each epoch's val drop is reported with ``trial.report(drop, epoch)``
and the study's :class:`RecoveryPruner` prunes a hopeless one
(:class:`~torchslim.search.evaluate.EarlyStop`); the trial ends PRUNED, its training cut
short. Optuna's ``report`` / ``should_prune`` serve single-objective studies only, so a
multi-objective (NSGA-II) trial keeps the drops in its ``recovery_drops`` user attribute
and asks the same rule directly.
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
from torchslim.search.evaluate import EarlyStop, Evaluator, Monitor, Record, StopTrial
from torchslim.search.space import Allocation
from torchslim.search.storage_url import display_url as _display_url

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "nsga2")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


HEARTBEAT = 10
"""Seconds between a running trial's heartbeats (a thread beats while the trial trains, so
the interval does not depend on trial length); a trial whose last beat is older than
:data:`GRACE_BEATS` intervals is failed as dead and its settings are queued again."""
GRACE_BEATS = 3


def _driver_hint(url: str) -> str:
    scheme = url.split("://", 1)[0].lower()
    if scheme.startswith("postgres"):
        return (
            "the PostgreSQL driver psycopg is not installed; install it with "
            "pip install 'torchslim[postgres]'"
        )
    return f"no database driver for {scheme!r} URLs is installed; install the SQLAlchemy driver"


def open_storage(url: str | None, heartbeat: int = HEARTBEAT) -> optuna.storages.BaseStorage:
    """In-memory storage for None, else an RDB storage for a SQLAlchemy URL.

    Running trials beat every ``heartbeat`` seconds; one silent for ``3 * heartbeat``
    seconds (its worker was killed) is failed and its settings are queued to run again.
    ``postgresql://`` URLs use psycopg 3 (the ``postgres`` extra).

    Raises:
        ConfigError: the URL is malformed, its driver is missing, or the database cannot be
            reached or refuses the login (named, with the password hidden).
    """
    if url is None:
        return optuna.storages.InMemoryStorage()
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"storage {url!r} is not a database URL; use e.g. sqlite:///study.db or "
            "postgresql://user:password@host/db"
        )
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or heartbeat < 1:
        raise ConfigError(f"heartbeat must be a whole number of seconds >= 1, got {heartbeat!r}")
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        # SQLAlchemy's bare postgresql:// means psycopg2; torchslim's extra ships psycopg 3
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
    error: Exception | None = None
    for attempt in range(3):  # workers creating one new database race on its schema
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", FutureWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat,
                    grace_period=GRACE_BEATS * heartbeat,
                    heartbeat_stale_trial_callback=(
                        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
                    ),
                )
        except ImportError as exc:
            raise ConfigError(f"storage {_display_url(url)}: {_driver_hint(url)}") from exc
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many types
            error = exc
            text = str(exc)
            if (
                "unable to open" in text
                or "password authentication failed" in text
                or "does not exist" in text
                or "Connection refused" in text
            ):
                break
            time.sleep(0.5 + attempt)
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = next((line for line in lines if "FATAL" in line), lines[0] if lines else "")
    first = first.split("(Background on this error")[0].strip() or type(error).__name__
    raise ConfigError(
        f"storage {_display_url(url)} is unreachable ({type(error).__name__}: {first[:200]}); "
        "check the URL, the password, the database server and that it accepts connections"
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
    directions: list[Any] = ["minimize", "minimize"] if multi else ["minimize"]
    sampler: optuna.samplers.BaseSampler
    if multi:
        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=12)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)
    pruner = RecoveryPruner(evaluator) if evaluator is not None else optuna.pruners.NopPruner()
    study: optuna.Study | None = None
    for attempt in range(3):
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                directions=directions,
                sampler=sampler,
                pruner=pruner,
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
    # Trials first, then the attribute: the creating worker writes the attribute before it
    # queues any trial, so a study that already has trials shows its attribute here too
    # (read the other way round, a worker starting at the same moment saw trials and no
    # attribute, and refused the study as foreign).
    has_trials = bool(study.trials)
    found = study.user_attrs.get("torchslim")
    if found is None:
        if has_trials:
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
    elif found.get("multi_objective") != multi:
        raise ConfigError(
            f"study {name!r} was created with multi-objective {found.get('multi_objective')}, "
            f"this run asks {multi}; use the same settings or another --study name"
        )
    elif found.get("objective") != objective:
        stored = found.get("objective") or {}
        keys = sorted(k for k in set(stored) | set(objective) if stored.get(k) != objective.get(k))
        key = keys[0] if keys else "objective"
        raise ConfigError(
            f"study {name!r} was created with other settings ({key}: study "
            f"{_short(stored.get(key))}, this run {_short(objective.get(key))}"
            f"{'; also ' + ', '.join(keys[1:]) if len(keys) > 1 else ''}); use the study's "
            "settings or another --study name"
        )
    return study


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


class RecoveryPruner(optuna.pruners.BasePruner):
    """Prunes a trial whose last reported recovery epoch is hopeless (:class:`EarlyStop`).

    The trial reports its val drop (metric units) at step = the recovery epoch; the
    recovery's length is the evaluator's ``recovery_epochs`` (the optimizer's recipes
    have one recovery step).
    """

    def __init__(self, evaluator: Evaluator, rule: EarlyStop | None = None) -> None:
        self.evaluator = evaluator
        self.rule = rule or evaluator.early_stop

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        epochs = max(self.evaluator.recovery_epochs, step)
        drop = trial.intermediate_values[step]
        return self.rule.hopeless(drop, self.evaluator.limit, step, epochs)


def recovery_monitor(trial: optuna.Trial, evaluator: Evaluator, multi: bool) -> Monitor:
    """The trial's early-stopping monitor: ``trial.report`` + ``trial.should_prune`` for a
    single-objective study, the same rule on drops kept in user attributes otherwise."""
    drops: dict[str, float] = {}

    def monitor(drop: float, epoch: int, epochs: int) -> bool:
        if not multi:
            trial.report(drop, epoch)
            return trial.should_prune()
        drops[str(epoch)] = drop
        trial.set_user_attr("recovery_drops", dict(drops))
        return evaluator.early_stop.hopeless(drop, evaluator.limit, epoch, epochs)

    return monitor


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


def worker_id() -> dict[str, str]:
    """This process as a study worker: its host and ``host:pid``."""
    host = socket.gethostname()
    return {"host": host, "worker": f"{host}:{os.getpid()}"}


def _same_settings(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """Another trial of the study with this trial's settings that was or is being evaluated."""
    params = trial.params
    states = (*FINISHED, optuna.trial.TrialState.RUNNING)
    for other in study.get_trials(deepcopy=False, states=states):
        if other.number != trial.number and "same_as" not in other.user_attrs:
            if other.params == params:
                return other
    return None


def run_study(
    study: optuna.Study,
    evaluator: Evaluator,
    trials: int | None,
    time_limit: float | None,
    seeds: list[Allocation] | None = None,
    multi: bool = True,
) -> None:
    """Run trials until the study holds ``trials`` finished ones or ``time_limit`` passes.

    Many workers share the work: the greedy allocations (``seeds``) are queued once and
    each is popped by one worker; the sampler's suggestions see the other workers' running
    trials (TPE's constant liar), and a suggestion whose settings another trial already
    evaluated, or is evaluating, is pruned at once without training (``same_as``). When
    the count is reached, the worker waits for the other workers' running trials; a dead
    worker's trial is failed after the heartbeat grace period and its settings are run
    again here, so nothing is left RUNNING.
    """
    if seeds and not study.trials:
        for allocation in seeds:
            study.enqueue_trial(levels_of(allocation, evaluator), skip_if_exists=True)
    me = worker_id()

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        trial.set_user_attr("worker", me["worker"])
        trial.set_user_attr("host", me["host"])
        allocation = suggest(trial, evaluator)
        other = _same_settings(study, trial)
        if other is not None:
            trial.set_user_attr("same_as", other.number)
            raise optuna.TrialPruned(f"same settings as trial {other.number}")
        if not evaluator.recipe(allocation, "probe").steps:
            trial.set_constraint("drop", -evaluator.search_limit)
            return (1.0, 0.0) if multi else 1.0
        monitor = recovery_monitor(trial, evaluator, multi)
        try:
            record = evaluator.evaluate(allocation, f"trial-{trial.number}", monitor=monitor)
        except StopTrial as exc:
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
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    deadline = None if time_limit is None else time.monotonic() + time_limit
    if trials is not None:

        def stop_at_count(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
            # a small space runs out of new settings: stop once duplicates pile up
            if _finished(study) >= trials or duplicates(study) >= max(10, trials):
                study.stop()

        callbacks.append(stop_at_count)
    if trials is None or (_finished(study) < trials and duplicates(study) < max(10, trials)):
        _optimize(study, objective, callbacks, trials, deadline)
    _drain(study, objective, [stop_on_failures], deadline)


def _optimize(
    study: optuna.Study,
    objective: Any,
    callbacks: list[Any],
    trials: int | None,
    deadline: float | None,
    n_trials: int | None = None,
) -> None:
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            study.optimize(
                objective,
                n_trials=n_trials
                if n_trials is not None
                else (None if deadline is not None or trials is not None else 20),
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
            if n_trials is not None:
                return
            if trials is not None and _finished(study) >= trials:
                return
            if trials is None and deadline is None:
                return


def _drain(
    study: optuna.Study, objective: Any, callbacks: list[Any], deadline: float | None
) -> None:
    """Run queued (retried) trials and wait until no trial of the study is RUNNING."""
    waiting_states = (optuna.trial.TrialState.WAITING,)
    running_states = (optuna.trial.TrialState.RUNNING,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        while deadline is None or time.monotonic() < deadline:
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial: FAIL + retry
            if study.get_trials(deepcopy=False, states=waiting_states):
                _optimize(study, objective, callbacks, None, deadline, n_trials=1)
                continue
            running = study.get_trials(deepcopy=False, states=running_states)
            if not running:
                return
            log.info("waiting for %d running trial(s) of other workers", len(running))
            time.sleep(0.5)


def _finished(study: optuna.Study) -> int:
    """Finished trials that count: those pruned as another trial's duplicate do not."""
    return sum(
        "same_as" not in t.user_attrs for t in study.get_trials(deepcopy=False, states=FINISHED)
    )


def duplicates(study: optuna.Study) -> int:
    """Trials pruned without training because another trial had their settings."""
    return sum("same_as" in t.user_attrs for t in study.get_trials(deepcopy=False))


def trials_per_worker(study: optuna.Study) -> dict[str, int]:
    """Finished trials of the study per worker (``host:pid``), most first; duplicates
    pruned without training are not counted (see :func:`duplicates`)."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False, states=FINISHED):
        if "same_as" in trial.user_attrs:
            continue
        worker = trial.user_attrs.get("worker", "unknown")
        counts[worker] = counts.get(worker, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def study_status(url: str, name: str) -> dict[str, Any]:
    """A stored study's progress, read from any machine: trial states, trials per worker,
    the best size/cost ratio so far among trials within the budget on val.

    Raises:
        ConfigError: the storage is unreachable or holds no study of that name.
    """
    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError as exc:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise ConfigError(
            f"storage {_display_url(url)} holds no study {name!r}; its studies: {names or 'none'}"
        ) from exc
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    feasible = [
        t.values[0]
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if "record" in t.user_attrs
        and t.constraints
        and all(c <= 0 for c in t.constraints.values())
    ]
    return {
        "study": name,
        "settings": study.user_attrs.get("torchslim"),
        "states": states,
        "trials_per_worker": trials_per_worker(study),
        "duplicates_pruned": duplicates(study),
        "best_feasible_ratio": min(feasible) if feasible else None,
    }


def study_records(study: optuna.Study) -> list[Record]:
    """The records of every completed trial, from every worker (with its worker and host)."""
    records = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        data = trial.user_attrs.get("record")
        if data:
            record = Record.from_dict(data)
            origin = {
                "worker": trial.user_attrs.get("worker"),
                "host": trial.user_attrs.get("host"),
                "trial": trial.number,
            }
            record.extra["worker"] = origin["worker"]
            record.candidate.origin = origin
            records.append(record)
    return records


def claim_answer(out: str | os.PathLike[str], study: optuna.Study) -> str | None:
    """Claim the writing of a shared study's answer in the shared output folder.

    One claim per (study, number of finished trials): the first worker to create the file
    (``O_EXCL``) writes the answer; the others get the claimant's ``host:pid`` back.
    Returns None when this worker holds the claim.
    """
    from pathlib import Path

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study.study_name)
    path = folder / f".answer-{safe}-{_finished(study)}.claim"
    me = worker_id()["worker"]
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        holder = path.read_text(encoding="utf-8").strip() or "another worker"
        return holder if holder != me else None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(me)
    return None


def wait_seconds(start: float, time_limit: float | None) -> float | None:
    """Seconds left of ``time_limit`` since ``start`` (``time.monotonic()``)."""
    if time_limit is None:
        return None
    return max(0.0, time_limit - (time.monotonic() - start))
