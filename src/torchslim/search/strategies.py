"""Search strategies as plug-ins: one protocol, one registry.

A strategy turns sensitivity curves into evaluated candidates. It is made from the run's
:class:`~torchslim.search.options.OptimizeOptions` before anything trains (so a bad
setting, e.g. an unreachable storage, fails fast) and then run once::

    @register_strategy("random")
    class RandomStrategy:
        default_trials = 8

        def __init__(self, options: OptimizeOptions) -> None: ...

        def run(self, evaluator: Evaluator, search: SearchInput) -> SearchOutcome: ...

Every candidate goes through ``evaluator.evaluate`` (the same pipeline, recipe and
measurement for every strategy); the optimizer then builds the front, accepts on the test
split and writes the report. ``strategy="auto"`` picks optuna when a storage, study or
trial count is given, else greedy; the CLI's ``--strategy`` choices are the registry's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from torchslim.errors import ConfigError
from torchslim.search.evaluate import Evaluator, Record
from torchslim.search.sensitivity import Curves
from torchslim.search.space import Allocation, allocation_key


@dataclass(frozen=True)
class SearchInput:
    """What a strategy searches with.

    Attributes:
        curves: the sensitivity curves (per knob and layer, on the val split).
        base_metric: the baseline's val metric the curves' drops are relative to.
        options: the run's options, defaults resolved (what results.json records).
        trials: verifications or trials to run (the options' count, else the strategy's
            ``default_trials``).
        deadline: ``time.monotonic()`` at which to stop (``math.inf``: no time limit).
    """

    curves: Curves
    base_metric: float
    options: Any
    trials: int
    deadline: float = math.inf

    def seconds_left(self) -> float | None:
        """Seconds to the deadline (None without one)."""
        return None if math.isinf(self.deadline) else max(0.0, self.deadline - time.monotonic())


@dataclass
class SearchOutcome:
    """What a strategy found.

    Attributes:
        records: every candidate it evaluated to the end.
        notes: lines for the report (e.g. trials per worker).
        answered_by: a worker of a shared study that writes the answer instead of this
            process (``host:pid``); the optimizer then returns without a final model.
    """

    records: list[Record]
    notes: list[str] = field(default_factory=list)
    answered_by: str | None = None


@runtime_checkable
class SearchStrategy(Protocol):
    """A search strategy (see the module doc)."""

    name: ClassVar[str]
    default_trials: ClassVar[int]

    def run(self, evaluator: Evaluator, search: SearchInput) -> SearchOutcome:
        """Evaluate candidates with ``evaluator`` within ``search.trials`` and its deadline."""
        ...


StrategyFactory = Callable[[Any], SearchStrategy]
STRATEGIES: dict[str, StrategyFactory] = {}
S = TypeVar("S")


def register_strategy(name: str) -> Callable[[S], S]:
    """Class decorator: register a strategy class (made as ``cls(options)``) under ``name``."""
    if not name or name == "auto":
        raise ConfigError(f"strategy name {name!r} is reserved or empty; pick another name")

    def decorator(cls: S) -> S:
        known = STRATEGIES.get(name)
        if known is not None and known is not cls:
            raise ConfigError(f"strategy {name!r} is registered twice; pick another name")
        cls.name = name  # type: ignore[attr-defined]
        STRATEGIES[name] = cls  # type: ignore[assignment]
        return cls

    return decorator


def strategy_names() -> tuple[str, ...]:
    """Registered strategy names, in registration order."""
    return tuple(STRATEGIES)


def make_strategy(options: Any) -> SearchStrategy:
    """The strategy of ``options`` (``auto`` resolved), made before anything trains."""
    return STRATEGIES[options.strategy_name()](options)


# ------------------------------------------------------------------ built-in strategies


@register_strategy("greedy")
class GreedyStrategy:
    """Sensitivity allocation verified by measurement, with back-off
    (:func:`torchslim.search.greedy.greedy_search`)."""

    name: ClassVar[str] = "greedy"
    default_trials: ClassVar[int] = 12

    def __init__(self, options: Any) -> None:
        self.options = options

    def run(self, evaluator: Evaluator, search: SearchInput) -> SearchOutcome:
        from torchslim.search.greedy import greedy_search

        records = greedy_search(
            evaluator, search.curves, search.base_metric, search.trials, search.deadline
        )
        return SearchOutcome(records)


@register_strategy("optuna")
class OptunaStrategy:
    """An Optuna study (NSGA-II or TPE) seeded with greedy allocations and uniform rungs;
    its storage is opened when the strategy is made, before anything trains."""

    name: ClassVar[str] = "optuna"
    default_trials: ClassVar[int] = 30

    def __init__(self, options: Any) -> None:
        from torchslim.search.optuna_search import open_storage

        heartbeat = {} if options.heartbeat is None else {"heartbeat": options.heartbeat}
        self.storage = open_storage(options.storage, **heartbeat)  # fail fast

    def run(self, evaluator: Evaluator, search: SearchInput) -> SearchOutcome:
        import os

        from torchslim.search.optuna_search import (
            claim_answer,
            duplicates,
            open_study,
            run_study,
            study_records,
            trials_per_worker,
        )

        options = search.options
        shared = options.storage is not None
        settings = {
            "objective": evaluator.objective.to_dict(),
            "budget": evaluator.budget.to_dict(),
            "knobs": list(options.techniques),
            "ranges": {k: list(map(float, v)) for k, v in sorted((options.ranges or {}).items())},
            "recovery": f"{options.recovery} {options.recovery_epochs} epoch(s), "
            f"lr {options.recovery_lr}",
            "codebook_epochs": options.codebook_epochs,
            "sensitivity_epochs": options.sensitivity_epochs,
            "margin": options.margin,
        }
        seed = options.seed
        study = open_study(
            self.storage,
            options.study,
            evaluator.task.fingerprint(),
            settings,
            options.multi_objective,
            seed=(seed + os.getpid()) if (seed is not None and shared) else seed,
            evaluator=evaluator,
        )
        seeds = seed_allocations(evaluator, search.curves, search.base_metric)
        left = search.seconds_left()
        remaining = None if left is None else max(1.0, left)
        run_study(study, evaluator, search.trials, remaining, seeds, options.multi_objective)
        counts = trials_per_worker(study)
        notes = [
            f"study {study.study_name!r}: {len(study.trials)} trial(s) in storage",
            f"trials per worker ({len(counts)} worker(s)): "
            + ", ".join(f"{worker} {n}" for worker, n in counts.items())
            + f"; {duplicates(study)} suggestion(s) pruned as duplicates without training",
        ]
        holder = claim_answer(options.out, study) if (shared and options.out) else None
        return SearchOutcome(study_records(study), notes, answered_by=holder)


def seed_allocations(evaluator: Evaluator, curves: Curves, base_metric: float) -> list[Allocation]:
    """The study's first trials: greedy allocations at allowances of a quarter to 16 times
    the val limit, then the uniform ladder's rungs at a quarter, half and three quarters."""
    from torchslim.search.greedy import allocate

    space = evaluator.space
    seeds: list[Allocation] = []
    keys: set[Any] = set()

    def add(allocation: Allocation) -> None:
        if allocation_key(allocation) not in keys:
            keys.add(allocation_key(allocation))
            seeds.append(allocation)

    for factor in (0.25, 0.5, 1, 2, 4, 8, 16):
        add(
            allocate(
                space,
                curves,
                base_metric,
                factor * evaluator.search_limit,
                evaluator.objective.kind,
            )
        )
    ladder = space.ladder()
    for allocation in (
        ladder[len(ladder) // 4],
        ladder[len(ladder) // 2],
        ladder[-len(ladder) // 4],
    ):
        add(allocation)
    return seeds
