"""``optimize``: the most compressed model within an accuracy budget.

Sensitivity curves on the val split -> a strategy (greedy allocation verified by
measurement, or an Optuna study) -> the Pareto front of (objective, val metric) ->
the cheapest candidate within budget on val, re-measured on the held-out test split
and accepted only if it meets the budget there. Everything found is kept: the front,
the best (or, when nothing meets the budget, the best found), its recipe and artifact.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from torchslim.errors import ConfigError, TorchslimError
from torchslim.hardware import machine_record
from torchslim.pipeline import run_recipe
from torchslim.recipe import Recipe
from torchslim.report.results import Candidate, Report
from torchslim.search.budget import Budget, Objective
from torchslim.search.defaults import DEFAULT_TIME_LIMIT, TrainingDefaults, training_defaults
from torchslim.search.evaluate import Evaluator, Record
from torchslim.search.greedy import allocate, greedy_search
from torchslim.search.sensitivity import Curves, sensitivity
from torchslim.search.space import allocation_key, build_space, default_knobs

if TYPE_CHECKING:
    from torchslim.task import Task

log = logging.getLogger(__name__)

STRATEGIES = ("greedy", "optuna", "auto")
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


def _check_limits(trials: int | None, time_limit: float | None, strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy {strategy!r} is unknown; use one of {STRATEGIES}")
    if trials is not None and (
        isinstance(trials, bool) or not isinstance(trials, int) or trials < 1
    ):
        raise ConfigError(f"trials must be an integer >= 1, got {trials!r}")
    if time_limit is not None and not (
        isinstance(time_limit, (int, float)) and math.isfinite(time_limit) and time_limit > 0
    ):
        raise ConfigError(f"time limit must be a positive number of seconds, got {time_limit!r}")


def optimize(
    task: Task,
    max_drop: float = 1.0,
    drop_type: str = "absolute",
    objective: str = "size",
    *,
    runtime: str = "torch",
    batch: int = 1,
    strategy: str = "auto",
    techniques: list[str] | tuple[str, ...] | None = None,
    ranges: dict[str, list[float]] | None = None,
    trials: int | None = None,
    time_limit: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    out: str | Path | None = None,
    recovery_epochs: int | None = None,
    codebook_epochs: int | None = None,
    recovery: str = "distill",
    recovery_lr: float | None = None,
    sensitivity_epochs: int | None = None,
    margin: float = 0.25,
    multi_objective: bool = True,
    seed: int | None = 0,
    threads: int = 1,
    progress: bool = True,
    latency: bool = True,
    heartbeat: int | None = None,
) -> OptimizeResult:
    """Find the most compressed model of ``task`` whose metric drop stays within budget.

    Args:
        task: the Task (its baseline is trained once and cached).
        max_drop: the budget in points: ``1.0`` = 1 percentage point of accuracy
            (0.01 in metric units) when absolute, 1 % of the baseline when relative.
        drop_type: ``"absolute"`` or ``"relative"``.
        objective: ``"size"`` (artifact bytes), ``"macs"`` or ``"latency"``.
        runtime, batch: latency runtime (``torch`` / ``onnxruntime``) and batch size.
        strategy: ``"greedy"`` (sensitivity allocation, verified, with back-off),
            ``"optuna"`` (a study seeded with greedy allocations) or ``"auto"`` (optuna when
            a storage, study or trial count is given, else greedy).
        techniques: knobs to search (default by objective: size -> channel_pruning +
            magnitude_pruning + codebook_quant, channel_pruning left out when the model
            has no prunable channel group, and linear_int8 + embedding_quant instead for
            a model with an ``nn.Embedding`` table (a transformer encoder); macs ->
            channel_pruning; latency -> channel_pruning, plus static_quant on onnxruntime).
        ranges: per-technique grids, e.g. ``{"codebook_quant": [8, 4, 3]}``.
        trials: greedy verifications / finished Optuna trials in the study (a resumed
            study continues up to this count); default 12 (greedy) or 30 (optuna), fewer
            on large tasks (:mod:`torchslim.search.defaults`).
        time_limit: seconds from the start after which no new candidate is verified
            (default: 25 minutes when ``trials`` is not given either, else none).
        storage: None (in memory), ``sqlite:///study.db`` or any SQLAlchemy URL
            (``postgresql://``: psycopg 3, the ``postgres`` extra). Many processes with
            the same storage and study share the trials; with a shared ``out`` one of
            them writes the answer over all trials (see :attr:`OptimizeResult.answered_by`).
        study: study name (default derived from the task's fingerprint).
        out: folder for results.json, report.html, the best recipe and its artifact.
        recovery_epochs: recovery after pruning (default: half of the task's training
            epochs, 1 to 20, and no more epochs than fit in a compute bound; see
            :mod:`torchslim.search.defaults`).
        codebook_epochs: centroid fine-tuning of codebook quantization (default: half
            of recovery_epochs, at least 1; none when recovery_epochs is 0).
        recovery: ``"distill"`` (Hinton KD from the uncompressed baseline, default) or
            ``"finetune"`` (task loss) after pruning.
        recovery_lr: recovery learning rate (None: the task's lr for distill, a tenth of
            it for finetune).
        sensitivity_epochs: recovery epochs before each sensitivity point is measured
            (default 1, or 0 when all points' recovery would exceed a compute bound; 0
            measures right after compressing, which overstates the cost of pruning that
            recovery wins back).
        margin: fraction of the budget held back on the val split (0.25: a 1-point budget
            is searched as 0.75 points on val); the test split is checked against the full
            budget. Candidates within the full budget on val are tried on test after the
            ones within the margin.
        multi_objective: NSGA-II on (cost, drop) for the front; False: TPE on cost with
            the budget as a constraint.
        seed: sampler seed (None: random; shared studies use seed + process id).
        threads: intra-op threads while timing.
        progress: show progress bars.
        latency: time the final candidate against the baseline (always for latency).
        heartbeat: seconds between a running trial's heartbeats in a stored study
            (default 10); a trial silent for three of them is failed and retried.
    """
    start = time.monotonic()
    budget = Budget(max_drop, drop_type)
    small_budget = budget.small_budget_warning()
    if small_budget:
        warnings.warn(small_budget, UserWarning, stacklevel=2)
    goal = Objective(objective, runtime, batch)
    _check_limits(trials, time_limit, strategy)
    _check_search_settings(recovery, sensitivity_epochs, margin)
    if strategy == "auto":
        strategy = "optuna" if (storage or study or trials) else "greedy"
    if strategy == "greedy" and storage is not None:
        raise ConfigError("--storage applies to the optuna strategy; pass --strategy optuna")
    storage_obj: Any = None
    if strategy == "optuna":
        from torchslim.search.optuna_search import open_storage

        storage_obj = open_storage(  # fail fast, before training anything
            storage, **({} if heartbeat is None else {"heartbeat": heartbeat})
        )
    knobs = tuple(techniques) if techniques else default_knobs(goal.kind, goal.runtime)
    if not knobs:
        raise ConfigError("the list of techniques is empty; name at least one")
    base = task.baseline(progress=progress)
    if (
        techniques is None
        and goal.kind == "size"
        and any(isinstance(m, nn.Embedding) for m in base.modules())
    ):
        # a transformer encoder: int8 Linears (per-channel, dynamic inputs) and the token
        # table, often half the model; on MiniLM-L6 a whole-matrix codebook is far behind
        # per-channel int8 (8 bits: cosine 0.9953 vs 0.9974)
        knobs = default_knobs(goal.kind, goal.runtime, embedding=True)
    if techniques is None and "channel_pruning" in knobs and goal.kind == "size":
        try:
            space = build_space(base, task, knobs, ranges)
        except TorchslimError as exc:  # no prunable channel group, or an untraceable graph
            log.info("size search without channel pruning: %s", exc)
            knobs = tuple(k for k in knobs if k != "channel_pruning")
            ranges = {k: v for k, v in (ranges or {}).items() if k != "channel_pruning"}
            space = build_space(base, task, knobs, ranges)
    else:
        space = build_space(base, task, knobs, ranges)
    defaults = _training_defaults(task, base, space)
    rounds = recovery_epochs if recovery_epochs is not None else defaults.recovery_epochs
    default_codebook = max(1, rounds // 2) if rounds else 0  # recovery off: no training at all
    codebook = codebook_epochs if codebook_epochs is not None else default_codebook
    probe = defaults.sensitivity_epochs if sensitivity_epochs is None else sensitivity_epochs
    curves, base_val_metric = sensitivity(
        task,
        base,
        space,
        "val",
        progress=progress,
        recovery_epochs=probe,
        recovery=recovery,
        recovery_lr=recovery_lr,
    )
    evaluator = Evaluator(
        task,
        base,
        space,
        budget,
        goal,
        rounds,
        codebook,
        threads,
        recovery=recovery,
        recovery_lr=recovery_lr,
        margin=margin,
    )
    default_time = time_limit is None and trials is None
    if default_time:
        time_limit = DEFAULT_TIME_LIMIT
    deadline = start + time_limit if time_limit is not None else math.inf
    notes = [
        f"budget: at most {budget.max_drop:g} point(s) {budget.drop_type} drop of "
        f"{task.metric_name} (budget.max_drop = {budget.fraction:g} in "
        f"{'metric units' if budget.drop_type == 'absolute' else 'fraction of the baseline'})",
        f"objective: {goal.kind}"
        + (f" at batch {goal.batch} on {goal.runtime}" if goal.needs_latency else ""),
        f"strategy: {strategy}; techniques: {', '.join(knobs)}; recovery: {recovery} "
        f"{rounds} epoch(s); sensitivity measured after {probe} recovery epoch(s)",
        f"val margin: candidates must stay within {1 - margin:.0%} of the budget on val",
        "the search saw the val split only; candidates are reported with their test metric",
        f"training and statistics on {task.device}"
        + (f" ({task.train_config.amp} mixed precision)" if task.train_config.amp else "")
        + "; artifacts saved from CPU tensors",
    ]
    if small_budget:
        notes.append(f"warning: {small_budget}")
    if recovery_epochs is None or sensitivity_epochs is None or trials is None:
        notes.append(defaults.note())
    if default_time:
        notes.append(
            f"default time limit: no new verification after {DEFAULT_TIME_LIMIT / 60:g} "
            "minutes from the start (--time-limit / --trials to change)"
        )
    if strategy == "greedy":
        records = greedy_search(
            evaluator, curves, base_val_metric, trials or defaults.verifications, deadline
        )
    else:
        from torchslim.search.optuna_search import (
            claim_answer,
            duplicates,
            open_study,
            run_study,
            study_records,
            trials_per_worker,
        )

        shared = storage is not None
        settings = {
            "objective": goal.to_dict(),
            "budget": budget.to_dict(),
            "knobs": list(knobs),
            "ranges": {k: list(map(float, v)) for k, v in sorted((ranges or {}).items())},
            "recovery": f"{recovery} {rounds} epoch(s), lr {recovery_lr}",
            "codebook_epochs": codebook,
            "sensitivity_epochs": probe,
            "margin": margin,
        }
        study_obj = open_study(
            storage_obj,
            study,
            task.fingerprint(),
            settings,
            multi_objective,
            seed=(seed + _pid()) if (seed is not None and shared) else seed,
            evaluator=evaluator,
        )
        seeds, keys = [], set()
        for factor in (0.25, 0.5, 1, 2, 4, 8, 16):
            allocation = allocate(
                space, curves, base_val_metric, factor * evaluator.search_limit, goal.kind
            )
            if allocation_key(allocation) not in keys:
                keys.add(allocation_key(allocation))
                seeds.append(allocation)
        ladder = space.ladder()  # uniform rungs at a quarter, half and three quarters
        for allocation in (
            ladder[len(ladder) // 4],
            ladder[len(ladder) // 2],
            ladder[-len(ladder) // 4],
        ):
            if allocation_key(allocation) not in keys:
                keys.add(allocation_key(allocation))
                seeds.append(allocation)
        remaining = None if time_limit is None else max(1.0, deadline - time.monotonic())
        run_study(
            study_obj, evaluator, trials or defaults.study_trials, remaining, seeds, multi_objective
        )
        records = study_records(study_obj)
        notes.append(f"study {study_obj.study_name!r}: {len(study_obj.trials)} trial(s) in storage")
        counts = trials_per_worker(study_obj)
        notes.append(
            f"trials per worker ({len(counts)} worker(s)): "
            + ", ".join(f"{worker} {n}" for worker, n in counts.items())
            + f"; {duplicates(study_obj)} suggestion(s) pruned as duplicates without training"
        )
        holder = claim_answer(out, study_obj) if (shared and out is not None) else None
        if holder is not None:  # another worker of the study writes the answer into out
            evaluator.close()
            return OptimizeResult(
                report=Report(
                    task=task.name,
                    metric_name=task.metric_name,
                    baseline=evaluator.base_val,
                    candidates=[],
                    budget=budget.to_dict(),
                    sensitivity=curves,
                    notes=[*notes, f"the answer is written by worker {holder} into {out}"],
                ),
                best=None,
                best_found=None,
                met=False,
                recipe=None,
                records=records,
                curves=curves,
                seconds=time.monotonic() - start,
                answered_by=holder,
            )
    timed = latency or goal.needs_latency
    return _finish(task, base, evaluator, budget, records, curves, notes, out, start, timed)


def _check_search_settings(recovery: str, sensitivity_epochs: int | None, margin: float) -> None:
    from torchslim.search.space import RECOVERIES

    if recovery not in RECOVERIES:
        raise ConfigError(f"recovery {recovery!r} is unknown; use one of {RECOVERIES}")
    if sensitivity_epochs is not None and (
        isinstance(sensitivity_epochs, bool)
        or not isinstance(sensitivity_epochs, int)
        or sensitivity_epochs < 0
    ):
        raise ConfigError(f"sensitivity epochs must be an integer >= 0, got {sensitivity_epochs!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise ConfigError(f"margin is a fraction of the budget in [0, 1), got {margin!r}")


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


def _pid() -> int:
    import os

    return os.getpid()


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
    task: Task,
    base: Any,
    evaluator: Evaluator,
    budget: Budget,
    records: list[Record],
    curves: Curves,
    notes: list[str],
    out: str | Path | None,
    start: float,
    timed: bool,
) -> OptimizeResult:
    base_test = task.evaluate(base, "test")
    if not records and evaluator.stopped:  # every trial stopped early: finish the least bad
        _, allocation = min(evaluator.stopped, key=lambda item: item[0])
        records = [evaluator.evaluate(allocation, "least-drop")]
    # within the margin first (cheapest first), then within the bare budget on val
    feasible = sorted(
        (r for r in records if evaluator.meets(r, margin=False)),
        key=lambda r: (not evaluator.meets(r), r.ratio),
    )
    if evaluator.objective.needs_latency and evaluator.keep is not None:
        feasible = retime_finalists(task, feasible, evaluator, notes)
    elif evaluator.objective.needs_latency:
        feasible = fewest_macs_within_noise(feasible, evaluator.meets)
    evaluator.close()
    chosen: Record | None = None
    for record in feasible[:ACCEPT_TRIES]:
        if budget.met(base_test, record.test_metric):
            chosen = record
            break
        notes.append(
            f"{record.name} meets the budget on val but not on test "
            f"({record.test_metric:.4f} vs baseline {base_test:.4f}); not accepted"
        )
    found = chosen
    if found is None and records:
        found = (
            feasible[0]
            if feasible
            else min(records, key=lambda r: (evaluator.base_val.metric - r.val_metric, r.ratio))
        )
    notes.extend(evaluator.deployed_misses)
    front = pareto_front(records)
    final_run = None
    label = "best" if chosen is not None else "best-found"
    if found is not None:
        recipe = evaluator.recipe(found.allocation, label)
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
        met = chosen is not None and budget.met(
            final_run.baseline_footprint.metric, final.shipped_metric()
        )
        simulated_met = budget.met(final_run.baseline_footprint.metric, final.footprint.metric)
        if chosen is not None and not met and simulated_met and final.deployed is not None:
            notes.append(
                f"the deployed ONNX Runtime file of the chosen recipe scores "
                f"{final.deployed.metric:.4f} on test, {final.deployed_gap():.4f} below its "
                "simulation, and misses the budget; not accepted"
            )
        elif chosen is not None and not met:
            notes.append("the re-run of the chosen recipe missed the budget on test; not accepted")
        baseline_fp = final_run.baseline_footprint
        final_run.candidate.origin = found.candidate.origin
    else:
        recipe, met = None, False
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
    )
    if out is not None:
        report.save(out)
        if recipe is not None:
            recipe.save(Path(out) / f"{label}.yaml")
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
    )


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
