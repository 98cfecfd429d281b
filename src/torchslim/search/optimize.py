"""``optimize``: the most compressed model within an accuracy budget.

Options (:class:`~torchslim.search.options.OptimizeOptions`) checked -> sensitivity curves
on the val split -> a registered strategy (:mod:`torchslim.search.strategies`: greedy
allocation verified by measurement, an Optuna study, or a plug-in) -> the Pareto front of
(objective, val metric) ->
the cheapest candidate within budget on val, re-measured on the held-out test split
and accepted only if it meets the budget there. Everything found is kept: the front,
the best (or, when nothing meets the budget, the best found), its recipe and artifact.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from torchslim.errors import TorchslimError
from torchslim.hardware import machine_record
from torchslim.pipeline import run_recipe
from torchslim.recipe import Recipe
from torchslim.report.results import Candidate, Report
from torchslim.search.budget import Budget
from torchslim.search.defaults import DEFAULT_TIME_LIMIT, TrainingDefaults, training_defaults
from torchslim.search.evaluate import Evaluator, Record, Stopped
from torchslim.search.options import OptimizeOptions, as_options
from torchslim.search.sensitivity import Curves, sensitivity
from torchslim.search.space import (
    Space,
    build_space,
    default_knobs,
)
from torchslim.search.strategies import SearchInput, SearchOutcome, make_strategy

if TYPE_CHECKING:
    from torchslim.task import Task

log = logging.getLogger(__name__)

ACCEPT_TRIES = 3  # val-feasible candidates checked on test, cheapest first


@dataclass
class OptimizeResult:
    """What :func:`optimize` found.

    Attributes:
        report: the Report (baseline, front, best; ``report.save(out)`` writes JSON + HTML).
        best: the accepted candidate (meets the budget on the test split), else None.
        best_found: the accepted candidate, or the closest one when the budget is not met.
        met: whether the budget was met on the test split.
        recipe: the re-runnable recipe of ``best_found``.
        records: every evaluated candidate (val and test metrics, allocation).
        pareto: names of the candidates on the front.
        curves: the sensitivity curves.
        seconds: wall time of the whole run.
        answered_by: for a worker of a shared study whose answer another worker writes
            into the shared ``out`` folder: that worker (``host:pid``); else None.
        options: the options the run used, defaults resolved (``results.json["options"]``).
        stopped: candidates whose recovery was stopped early as hopeless.
    """

    report: Report
    best: Candidate | None
    best_found: Candidate | None
    met: bool
    recipe: Recipe | None
    records: list[Record] = field(default_factory=list)
    pareto: list[str] = field(default_factory=list)
    curves: Curves = field(default_factory=dict)
    seconds: float = 0.0
    answered_by: str | None = None
    options: OptimizeOptions | None = None
    stopped: list[Stopped] = field(default_factory=list)


def optimize(
    task: Any, options: OptimizeOptions | float | None = None, /, **fields: Any
) -> OptimizeResult:
    """Find the most compressed model of ``task`` whose metric drop stays within budget.

    Call it with keyword options, ``optimize(task, max_drop=1.0, objective="size",
    trials=20)``, or with an :class:`~torchslim.search.options.OptimizeOptions`,
    ``optimize(task, options)`` (keywords then change fields of it); a number in second
    place is ``max_drop``. Every field is documented on ``OptimizeOptions``; in short:
    the budget (``max_drop`` points, ``drop_type``), the ``objective`` (size, macs,
    latency on a ``runtime`` at a ``batch``), the ``strategy`` (a registered one, see
    :mod:`torchslim.search.strategies`; ``auto``: optuna when a storage, study or trial
    count is given, else greedy), the ``techniques`` and their ``ranges``, how long to
    search (``trials``, ``time_limit``), a shared study (``storage``, ``study``,
    ``heartbeat``) and the training (``recovery``, ``recovery_epochs``,
    ``codebook_epochs``, ``sensitivity_epochs``: None takes the compute-bounded default of
    :mod:`torchslim.search.defaults`).

    Default techniques by objective: size -> channel_pruning + magnitude_pruning +
    codebook_quant (channel_pruning left out when the model has no prunable channel
    group; linear_int8 + embedding_quant instead for a model with an ``nn.Embedding``
    table), macs -> channel_pruning, latency -> channel_pruning, plus static_quant on
    onnxruntime.

    Raises:
        ConfigError: a bad option (one line naming it), before anything trains.
    """
    start = time.monotonic()
    options = as_options(options, fields)
    strategy = make_strategy(options)  # e.g. opens an Optuna storage: fails fast
    base = task.baseline(progress=options.progress)
    space, knobs, ranges = _search_space(task, base, options)
    defaults = _training_defaults(task, base, space)
    resolved = _resolve(options, defaults, knobs, ranges, strategy.default_trials)
    curves, base_val_metric = sensitivity(
        task,
        base,
        space,
        "val",
        progress=options.progress,
        recovery_epochs=resolved.sensitivity_epochs or 0,
        recovery=resolved.recovery,
        recovery_lr=resolved.recovery_lr,
    )
    evaluator = _evaluator(task, base, space, resolved)
    notes = _notes(task, resolved, evaluator)
    if options.recovery_epochs is None or options.sensitivity_epochs is None or not options.trials:
        notes.append(defaults.note())
    if options.time_limit is None and resolved.time_limit is not None:
        notes.append(
            f"default time limit: no new verification after {resolved.time_limit / 60:g} "
            "minutes from the start (--time-limit / --trials to change)"
        )
    deadline = start + resolved.time_limit if resolved.time_limit is not None else math.inf
    search = SearchInput(curves, base_val_metric, resolved, resolved.trials or 1, deadline)
    outcome = strategy.run(evaluator, search)
    notes.extend(outcome.notes)
    if outcome.answered_by is not None:  # another worker of the study writes the answer
        evaluator.close()
        return _answered_elsewhere(task, evaluator, resolved, outcome, curves, notes, start)
    return _finish(task, base, evaluator, resolved, outcome.records, curves, notes, start)


def _search_space(
    task: Any, base: nn.Module, options: OptimizeOptions
) -> tuple[Space, tuple[str, ...], dict[str, tuple[float, ...]]]:
    """The searched knobs (given, or the objective's defaults for this model) and space."""
    goal = options.goal
    ranges = dict(options.ranges or {})
    if options.techniques is not None:
        knobs = options.techniques
    elif goal.kind == "size" and any(isinstance(m, nn.Embedding) for m in base.modules()):
        # a transformer encoder: int8 Linears (per-channel, dynamic inputs) and the token
        # table, often half the model; on MiniLM-L6 a whole-matrix codebook is far behind
        # per-channel int8 (8 bits: cosine 0.9953 vs 0.9974)
        knobs = default_knobs(goal.kind, goal.runtime, embedding=True)
    else:
        knobs = default_knobs(goal.kind, goal.runtime)
    if options.techniques is None and "channel_pruning" in knobs and goal.kind == "size":
        try:
            return build_space(base, task, knobs, ranges), knobs, ranges
        except TorchslimError as exc:  # no prunable channel group, or an untraceable graph
            log.info("size search without channel pruning: %s", exc)
            knobs = tuple(k for k in knobs if k != "channel_pruning")
            ranges = {k: v for k, v in ranges.items() if k != "channel_pruning"}
    return build_space(base, task, knobs, ranges), knobs, ranges


def _resolve(
    options: OptimizeOptions,
    defaults: TrainingDefaults,
    knobs: tuple[str, ...],
    ranges: dict[str, tuple[float, ...]],
    default_trials: int,
) -> OptimizeOptions:
    """The options with every default filled in: what runs, and what results.json records."""
    rounds = (
        options.recovery_epochs if options.recovery_epochs is not None else defaults.recovery_epochs
    )
    default_codebook = max(1, rounds // 2) if rounds else 0  # recovery off: no training at all
    return options.replace(
        strategy=options.strategy_name(),
        techniques=knobs,
        ranges=ranges or None,
        trials=options.trials or defaults.scaled_trials(default_trials),
        time_limit=(
            DEFAULT_TIME_LIMIT
            if options.time_limit is None and not options.trials
            else options.time_limit
        ),
        recovery_epochs=rounds,
        codebook_epochs=(
            options.codebook_epochs if options.codebook_epochs is not None else default_codebook
        ),
        sensitivity_epochs=(
            defaults.sensitivity_epochs
            if options.sensitivity_epochs is None
            else options.sensitivity_epochs
        ),
    )


def _evaluator(task: Any, base: nn.Module, space: Space, options: OptimizeOptions) -> Evaluator:
    """The evaluator of every candidate (options resolved)."""
    return Evaluator(
        task,
        base,
        space,
        options.budget,
        options.goal,
        options.recovery_epochs or 0,
        options.codebook_epochs or 0,
        options.threads,
        recovery=options.recovery,
        recovery_lr=options.recovery_lr,
        margin=options.margin,
    )


def _notes(task: Any, options: OptimizeOptions, evaluator: Evaluator) -> list[str]:
    """The report's first notes: budget, objective, strategy, training, splits."""
    budget, goal = evaluator.budget, evaluator.objective
    notes = [
        f"budget: at most {budget.max_drop:g} point(s) {budget.drop_type} drop of "
        f"{task.metric_name} (budget.max_drop = {budget.fraction:g} in "
        f"{'metric units' if budget.drop_type == 'absolute' else 'fraction of the baseline'})",
        f"objective: {goal.kind}"
        + (f" at batch {goal.batch} on {goal.runtime}" if goal.needs_latency else ""),
        f"strategy: {options.strategy}; techniques: {', '.join(options.techniques or ())}; "
        f"recovery: {options.recovery} {options.recovery_epochs} epoch(s); sensitivity "
        f"measured after {options.sensitivity_epochs} recovery epoch(s)",
        f"val margin: candidates must stay within {1 - options.margin:.0%} of the budget on val",
        "the search saw the val split only; candidates are reported with their test metric",
        f"training and statistics on {task.device}"
        + (f" ({task.train_config.amp} mixed precision)" if task.train_config.amp else "")
        + "; artifacts saved from CPU tensors",
    ]
    small_budget = budget.small_budget_warning()
    if small_budget:
        notes.append(f"warning: {small_budget}")
    return notes


def _answered_elsewhere(
    task: Any,
    evaluator: Evaluator,
    options: OptimizeOptions,
    outcome: SearchOutcome,
    curves: Curves,
    notes: list[str],
    start: float,
) -> OptimizeResult:
    """The result of a worker whose shared study's answer another worker writes."""
    holder = outcome.answered_by
    return OptimizeResult(
        report=Report(
            task=task.name,
            metric_name=task.metric_name,
            baseline=evaluator.base_val,
            candidates=[],
            budget=evaluator.budget.to_dict(),
            sensitivity=curves,
            notes=[*notes, f"the answer is written by worker {holder} into {options.out}"],
            options=options.to_dict(),
        ),
        best=None,
        best_found=None,
        met=False,
        recipe=None,
        records=outcome.records,
        curves=curves,
        seconds=time.monotonic() - start,
        answered_by=holder,
        options=options,
        stopped=list(evaluator.stopped),
    )


def _training_defaults(task: Any, base: nn.Module, space: Any) -> TrainingDefaults:
    """The compute-bounded default epochs for this task (see :mod:`.defaults`)."""
    from torchslim.measure import count_macs

    macs = count_macs(base, task.inputs(1)).macs
    loader = task.loader("train")
    try:
        samples = len(loader.dataset)
    except TypeError:  # an iterable dataset without a length: the epoch-based defaults
        samples = 0
    points = sum(len(space.grids[knob]) - 1 for knob, _ in space.knobs())
    return training_defaults(task.train_config.epochs, macs, samples, points)


def pareto_front(records: list[Record]) -> list[Record]:
    """Records not dominated in (lower cost ratio, higher val metric), cheapest first."""
    front = []
    for record in records:
        dominated = any(
            other.ratio <= record.ratio
            and other.val_metric >= record.val_metric
            and (other.ratio < record.ratio or other.val_metric > record.val_metric)
            for other in records
        )
        if not dominated:
            front.append(record)
    return sorted(front, key=lambda r: (r.ratio, -r.val_metric))


def _finish(
    task: Any,
    base: nn.Module,
    evaluator: Evaluator,
    options: OptimizeOptions,
    records: list[Record],
    curves: Curves,
    notes: list[str],
    start: float,
) -> OptimizeResult:
    """Accept the cheapest candidate within budget on test, re-run it, write the report."""
    budget = evaluator.budget
    base_test = task.evaluate(base, "test")
    if not records and evaluator.stopped:  # every candidate stopped early: finish the least bad
        least = min(evaluator.stopped, key=lambda item: item.drop)
        notes.append(
            f"every candidate was stopped early; {least.name}, the least bad, is finished as "
            "least-drop"
        )
        records = [evaluator.evaluate(least.allocation, "least-drop")]
    notes.extend(stop.note() for stop in evaluator.stopped)
    feasible = _ranked(task, records, evaluator, notes)
    evaluator.close()
    chosen = _accept(feasible, base_test, budget, notes)
    found = chosen
    if found is None and records:
        found = (
            feasible[0]
            if feasible
            else min(records, key=lambda r: (evaluator.base_val.metric - r.val_metric, r.ratio))
        )
    notes.extend(evaluator.deployed_misses)
    front = pareto_front(records)
    label = "best" if chosen is not None else "best-found"
    recipe = evaluator.recipe(found.allocation, label) if found is not None else None
    final_run, met = None, False
    if found is not None and recipe is not None:
        timed = options.latency or evaluator.objective.needs_latency
        final_run, met = _rerun(
            task, base, evaluator, recipe, label, options.out, timed, chosen, notes
        )
        final_run.candidate.origin = found.candidate.origin
        baseline_fp = final_run.baseline_footprint
    else:
        from torchslim.measure import measure

        baseline_fp = measure(base, task, latency=False)
    candidates = [_as_test(r) for r in front]
    if final_run is not None:
        candidates.append(final_run.candidate)
    if not met:
        notes.append(
            "budget NOT met: no candidate stays within the budget on the test split; "
            f"{'the closest one is saved as best-found' if found else 'nothing was evaluated'}"
        )
    report = Report(
        task=task.name,
        metric_name=task.metric_name,
        baseline=baseline_fp,
        candidates=candidates,
        best=label if met else None,
        budget=budget.to_dict(),
        pareto=[r.name for r in front],
        sensitivity=curves,
        notes=notes,
        hardware=machine_record(evaluator.threads),
        options=options.to_dict(),
    )
    if options.out is not None:
        report.save(options.out)
        if recipe is not None:
            recipe.save(Path(options.out) / f"{label}.yaml")
    return OptimizeResult(
        report=report,
        best=final_run.candidate if (met and final_run) else None,
        best_found=final_run.candidate if final_run else None,
        met=met,
        recipe=recipe,
        records=records,
        pareto=[r.name for r in front],
        curves=curves,
        seconds=time.monotonic() - start,
        options=options,
        stopped=list(evaluator.stopped),
    )


def _ranked(
    task: Any, records: list[Record], evaluator: Evaluator, notes: list[str]
) -> list[Record]:
    """Candidates within the budget on val: those that beat the baseline on the objective
    (ratio < 1) before those that do not, then within the margin first, cheapest first (a
    latency objective re-times or re-orders the closest ones).

    Without the first key a candidate within the margin but slower than the baseline was
    answered over a faster one just outside it (fashion-resnet, latency at batch 1 on ONNX
    Runtime: a static-int8 model at 0.6x the fp32 speed over a pruned fp32 one at 1.05x).
    """
    feasible = sorted(
        (r for r in records if evaluator.meets(r, margin=False)),
        key=lambda r: (r.ratio >= 1, not evaluator.meets(r), r.ratio),
    )
    if feasible and feasible[0].ratio >= 1:
        notes.append(
            f"no candidate within the budget beat the baseline on {evaluator.objective.kind} "
            f"(the best reaches {1 / feasible[0].ratio:.3g}x); the answer is no improvement"
        )
    if evaluator.objective.needs_latency and evaluator.keep is not None:
        return retime_finalists(task, feasible, evaluator, notes)
    if evaluator.objective.needs_latency:
        return fewest_macs_within_noise(feasible, evaluator.meets)
    return feasible


def _accept(
    feasible: list[Record], base_test: float, budget: Budget, notes: list[str]
) -> Record | None:
    """The first of (at most :data:`ACCEPT_TRIES`) val-feasible candidates that meets the
    budget on the test split."""
    for record in feasible[:ACCEPT_TRIES]:
        if budget.met(base_test, record.test_metric):
            return record
        notes.append(
            f"{record.name} meets the budget on val but not on test "
            f"({record.test_metric:.4f} vs baseline {base_test:.4f}); not accepted"
        )
    return None


def _rerun(
    task: Any,
    base: nn.Module,
    evaluator: Evaluator,
    recipe: Recipe,
    label: str,
    out: str | None,
    timed: bool,
    chosen: Record | None,
    notes: list[str],
) -> tuple[Any, bool]:
    """Re-run the found recipe on the test split (its artifact saved in ``out``); whether
    the chosen one still meets the budget there (judged by the deployed file when any)."""
    budget = evaluator.budget
    final_run = run_recipe(
        recipe,
        task,
        baseline=base,
        out=out,
        name=label,
        latency=timed,
        runtime=evaluator.timing()["runtime"],
        threads=evaluator.threads,
        split="test",
    )
    final = final_run.candidate
    base_metric = final_run.baseline_footprint.metric
    met = chosen is not None and budget.met(base_metric, final.shipped_metric())
    simulated_met = budget.met(base_metric, final.footprint.metric)
    if chosen is not None and not met and simulated_met and final.deployed is not None:
        notes.append(
            f"the deployed ONNX Runtime file of the chosen recipe scores "
            f"{final.deployed.metric:.4f} on test, {final.deployed_gap():.4f} below its "
            "simulation, and misses the budget; not accepted"
        )
    elif chosen is not None and not met:
        notes.append("the re-run of the chosen recipe missed the budget on test; not accepted")
    return final_run, met


LATENCY_NOISE = 0.10
"""Latency ratios of candidates timed in separate runs differ by this much from noise alone
(digits32-vgg on ONNX Runtime int8: a 25x-fewer-MACs model timed 4 % slower than a 13x one
in the search, and took 18 % less time (0.121 vs 0.147 ms) when the two were timed
together in one run)."""


FINALIST_WINDOW = 0.3
FINALISTS = 4


def retime_finalists(
    task: Task, feasible: list[Record], evaluator: Evaluator, notes: list[str]
) -> list[Record]:
    """Time the fastest feasible candidates' deployed ONNX files together, fastest first.

    Each candidate was timed against the baseline in its own run, interleaved with the
    large fp32 model; on digits32-vgg that ranked a 25x-fewer-MACs int8 model 10 % slower
    than a 13x one; timed together, it took 18 % less time (0.121 vs 0.147 ms). So the
    candidates of the first group (within the margin, or all when none is) timed within
    :data:`FINALIST_WINDOW` of the fastest (at most :data:`FINALISTS`) are timed again in
    one interleaved run, without the baseline, and ordered by that run.
    """
    from torchslim.export.onnx import OrtModule
    from torchslim.measure import benchmark_latency

    if len(feasible) < 2:
        return feasible
    group = [r for r in feasible if evaluator.meets(r) == evaluator.meets(feasible[0])]
    finalists = [
        r
        for r in group[:FINALISTS]
        if r.ratio <= feasible[0].ratio * (1 + FINALIST_WINDOW)
        and r.candidate.deployed is not None
        and r.candidate.deployed.artifact
        and Path(r.candidate.deployed.artifact).is_file()
    ]
    if len(finalists) < 2:
        return feasible
    models = [OrtModule(r.candidate.deployed.artifact) for r in finalists]  # type: ignore[union-attr,arg-type]  # filtered above
    stats = benchmark_latency(
        models,
        task.inputs(evaluator.objective.batch),
        runtime="onnxruntime",
        threads=evaluator.threads,
        target_seconds=2.0,
    )
    timed = sorted(zip(finalists, stats, strict=True), key=lambda item: item[1].median_ms)
    notes.append(
        f"finalists timed together at batch {evaluator.objective.batch} on onnxruntime: "
        + ", ".join(f"{r.name} {stat.median_ms:.3f} ms" for r, stat in timed)
    )
    first = [r for r, _ in timed]
    return [*first, *(r for r in feasible if all(r is not f for f in first))]


def fewest_macs_within_noise(feasible: list[Record], meets: Any) -> list[Record]:
    """Latency order, except that among the candidates of the first group (within the
    margin, or all when none is) timed within :data:`LATENCY_NOISE` of the fastest, the
    one with the fewest MACs comes first: timings from separate runs cannot rank them."""
    if not feasible:
        return feasible
    group = [r for r in feasible if meets(r) == meets(feasible[0])]
    close = [r for r in group if r.ratio <= feasible[0].ratio * (1 + LATENCY_NOISE)]
    first = min(close, key=lambda r: (r.candidate.footprint.macs, r.ratio))
    return [first, *(r for r in feasible if r is not first)]


def _as_test(record: Record) -> Candidate:
    """A search candidate as reported: its footprint with the test metric of the same model."""
    candidate = dataclasses.replace(
        record.candidate,
        footprint=dataclasses.replace(record.candidate.footprint, metric=record.test_metric),
    )
    return candidate
