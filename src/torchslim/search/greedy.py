"""Greedy allocation from the sensitivity curves, verified by measurement, with back-off.

:func:`allocate` picks per-layer settings that minimize the predicted cost while the
predicted drop (the sum of each (knob, layer)'s drop on its own curve) stays within a
drop allowance: it repeatedly takes the move with the most cost saved per point of
predicted drop. Curves are measured alone and after at most a short recovery, so the
allowance that actually holds for the full recipe differs from the budget, and curves
measured one layer at a time understate how much a whole over-parameterized model can
lose together. So :func:`greedy_search` first bisects a uniform ladder (every layer at
the same share of its grids, :meth:`Space.ladder`) for the most compressed rung that
passes on val (:func:`uniform_search`), then finds the greedy allowance by measurement:
it verifies an allocation, widens the allowance after a pass and backs off (bisects)
after a failure. The rounds left then refine per layer (:func:`refine`):
one more step for one (knob, layer) on top of the cheapest passing allocation (or for
every layer of one knob), or one (knob, layer) of a cheaper failing allocation backed
off to the passing one's setting, whichever the curves rate best (cost saved per point
of predicted drop), verified by measurement.

A verification whose recovery is hopeless (:class:`~torchslim.search.evaluate.EarlyStop`:
from half of the recovery epochs on, a val drop above 4x the budget halfway down to 2x at
the end) is stopped early and counts as a failure; it uses up one round like any other.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from torchslim.search.evaluate import Evaluator, Record, StopTrial
from torchslim.search.sensitivity import Curves, drop_curve, loss_scale
from torchslim.search.space import Allocation, Space, allocation_key

log = logging.getLogger(__name__)

Levels = dict[tuple[str, str], int]


def allocate(
    space: Space, curves: Curves, base_metric: float, allowance: float, objective: str
) -> Allocation:
    """The cheapest allocation whose predicted drop stays within ``allowance`` (metric units).

    Args:
        space: the knobs, their grids and the cost model.
        curves: sensitivity curves (see :func:`~torchslim.search.sensitivity.sensitivity`).
        base_metric: the metric the curves' drops are relative to.
        allowance: the largest predicted total drop.
        objective: ``size``, ``macs`` or ``latency`` (latency uses MACs as its predictor).
    """
    kind = "size" if objective == "size" else "macs"
    drops = predicted_drops(space, curves, base_metric)
    levels: Levels = {pair: 0 for pair in drops}
    used = sum(drops[pair][0] for pair in drops)
    cost = space.cost(space.allocation(levels), kind)
    while True:
        best: tuple[float, tuple[str, str], int, float, float] | None = None
        for pair, current in levels.items():
            for level in range(current + 1, len(drops[pair])):
                extra = drops[pair][level] - drops[pair][current]
                if used + extra > allowance + 1e-12:
                    continue
                trial = dict(levels)
                trial[pair] = level
                new_cost = space.cost(space.allocation(trial), kind)
                saved = cost - new_cost
                if saved <= 0:
                    continue
                score = saved / max(extra, 1e-6)
                if best is None or score > best[0]:
                    best = (score, pair, level, extra, new_cost)
        if best is None:
            break
        _, pair, level, extra, cost = best
        levels[pair] = level
        used += extra
    return space.allocation(levels)


def predicted_drops(
    space: Space, curves: Curves, base_metric: float
) -> dict[tuple[str, str], list[float]]:
    """Per (knob, layer): the predicted drop at each grid level (metric units)."""
    scale = loss_scale(curves, base_metric)
    return {
        (knob, layer): drop_curve(curves[knob][layer], base_metric, scale)
        for knob, layer in space.knobs()
    }


def verify(evaluator: Evaluator, allocation: Allocation, name: str) -> Record | None:
    """Measure one allocation; None when its recovery was stopped early as hopeless."""
    try:
        return evaluator.evaluate(allocation, name, monitor=evaluator.stop_hopeless)
    except StopTrial as exc:
        log.info("greedy: %s stopped early (%s)", name, exc)
        return None


def rounds_used(evaluator: Evaluator, records: list[Record]) -> int:
    """Verifications so far: the records and the ones stopped early."""
    return len(records) + len(evaluator.stopped)


def levels_of(space: Space, allocation: Allocation) -> Levels:
    """Grid indices of an allocation."""
    return {
        (knob, layer): space.grids[knob].index(allocation[knob][layer])
        for knob, layer in space.knobs()
    }


def refine(
    evaluator: Evaluator,
    curves: Curves,
    base_metric: float,
    records: list[Record],
    max_rounds: int,
    deadline: float = math.inf,
    on_record: Callable[[Record], None] | None = None,
) -> list[Record]:
    """Per-layer moves around the cheapest passing record, verified one at a time.

    Candidates: the cheapest passing allocation with one (knob, layer) one grid step
    further, or with every layer of one knob raised to one step above that knob's least
    compressed layer (a coarse move), and every cheaper failing allocation with one
    (knob, layer) backed off to the passing allocation's setting (a verification stopped
    early counts as failing when the cost model rates it cheaper). The one with the most
    predicted cost saved per
    point of predicted extra drop is measured next; stops after ``max_rounds`` records
    (counting ``records``), at ``deadline`` or when no candidate is left.

    A small val split cannot tell apart candidates a sample or two apart, and many
    measured moves would pick the luckiest (the test split then disagrees). So a refined
    candidate passes only if, besides the val metric, its val loss is no higher than the
    highest of the ladder's and allowance search's passing candidates (``evaluator.loss_cap``): the
    loss is continuous and tracks the held-out drop far better.
    """
    space = evaluator.space
    kind = "size" if evaluator.objective.kind == "size" else "macs"
    drops = predicted_drops(space, curves, base_metric)
    seen = {allocation_key(r.allocation) for r in records}
    seen |= {allocation_key(stop.allocation) for stop in evaluator.stopped}
    losses = [r.val_loss for r in records if evaluator.meets(r) and r.val_loss is not None]
    if losses and evaluator.loss_cap is None:
        evaluator.loss_cap = max(losses)

    def predicted(levels: Levels) -> float:
        return sum(drops[pair][level] for pair, level in levels.items())

    while rounds_used(evaluator, records) < max_rounds and time.monotonic() < deadline:
        passing = [r for r in records if evaluator.meets(r)]
        if not passing:
            break
        best = min(passing, key=lambda r: r.ratio)
        base_levels = levels_of(space, best.allocation)
        base_cost = space.cost(best.allocation, kind)
        base_drop = predicted(base_levels)
        options: list[Levels] = []
        for pair, level in base_levels.items():
            if level + 1 < len(space.grids[pair[0]]):
                options.append({**base_levels, pair: level + 1})
        for knob, layers in space.layers.items():  # coarse: raise a knob's floor one step
            if len(layers) > 1:
                floor = min(base_levels[(knob, layer)] for layer in layers) + 1
                if floor < len(space.grids[knob]):
                    raised = {
                        (knob, layer): max(base_levels[(knob, layer)], floor) for layer in layers
                    }
                    options.append({**base_levels, **raised})
        failing = [r.allocation for r in records if r.ratio < best.ratio and not evaluator.meets(r)]
        # stopped early: failures without a measured cost; the cost model ranks them
        failing += [
            stop.allocation
            for stop in evaluator.stopped
            if space.cost(stop.allocation, kind) < base_cost
        ]
        for allocation in failing:
            failed = levels_of(space, allocation)
            for pair, level in failed.items():
                if level != base_levels[pair]:
                    options.append({**failed, pair: base_levels[pair]})
        scored = []
        for levels in options:
            allocation = space.allocation(levels)
            key = allocation_key(allocation)
            if key in seen:
                continue
            saved = base_cost - space.cost(allocation, kind)
            if saved <= 0:
                continue
            extra = max(predicted(levels) - base_drop, 1e-6)
            scored.append((saved / extra, key, allocation))
        if not scored:
            break
        _, key, allocation = max(scored, key=lambda item: item[0])
        seen.add(key)
        record = verify(evaluator, allocation, f"greedy-{rounds_used(evaluator, records) + 1}")
        if record is None:
            continue
        record.extra["refined_from"] = best.name
        records.append(record)
        if on_record is not None:
            on_record(record)
        log.info(
            "greedy refine: from %s -> val %.4f, cost ratio %.4g (%s)",
            best.name,
            record.val_metric,
            record.ratio,
            "pass" if evaluator.meets(record) else "fail",
        )
    return records


def uniform_search(
    evaluator: Evaluator,
    max_rounds: int = 4,
    deadline: float = math.inf,
    on_record: Callable[[Record], None] | None = None,
) -> list[Record]:
    """Bisect the uniform ladder for its most compressed rung that passes on val.

    Assumes that a rung passes when a more compressed one does (one measurement each);
    rungs that compress nothing count as passing without a measurement. Stops after
    ``max_rounds`` verifications or at ``deadline``.
    """
    ladder = evaluator.space.ladder()
    low, high = -1, len(ladder)  # ladder[low] passes, ladder[high] fails
    records: list[Record] = []
    tried = 0
    while high - low > 1 and tried < max_rounds and time.monotonic() < deadline:
        rung = (low + high + 1) // 2
        if not evaluator.recipe(ladder[rung], "probe").steps:
            low = rung
            continue
        tried += 1
        record = verify(evaluator, ladder[rung], f"uniform-{rung}")
        if record is None:  # stopped early: fails
            high = rung
            continue
        record.extra["rung"] = rung
        records.append(record)
        if on_record is not None:
            on_record(record)
        passed = evaluator.meets(record)
        log.info(
            "uniform rung %d/%d -> val %.4f, cost ratio %.4g (%s)",
            rung,
            len(ladder) - 1,
            record.val_metric,
            record.ratio,
            "pass" if passed else "fail",
        )
        low, high = (rung, high) if passed else (low, rung)
    return records


def greedy_search(
    evaluator: Evaluator,
    curves: Curves,
    base_metric: float,
    max_rounds: int = 8,
    deadline: float = math.inf,
    on_record: Callable[[Record], None] | None = None,
) -> list[Record]:
    """Verify greedy allocations, widening or backing off the drop allowance by measurement.

    First the uniform ladder is bisected (:func:`uniform_search`, at most a third of
    ``max_rounds``, up to 4). The allowance starts at the budget; each pass doubles it (or bisects towards the
    smallest failure), each failure halves it (or bisects towards the largest pass).
    The allowance search stops after a third of ``max_rounds`` more verifications (at least 3),
    at ``deadline`` (``time.monotonic()``) or when the allocation no longer changes;
    :func:`refine` uses the rounds left.
    """
    space, limit = evaluator.space, evaluator.search_limit
    objective = evaluator.objective.kind
    passed: float | None = None
    failed: float | None = None
    factor = 1.0
    records = uniform_search(evaluator, min(4, max(1, max_rounds // 3)), deadline, on_record)
    outcome: dict[str, bool] = {allocation_key(r.allocation): evaluator.meets(r) for r in records}
    outcome.update({allocation_key(stop.allocation): False for stop in evaluator.stopped})
    first_phase = min(max_rounds, rounds_used(evaluator, records) + max(3, max_rounds // 3))
    for _ in range(max_rounds * 6):
        if rounds_used(evaluator, records) >= first_phase or time.monotonic() >= deadline:
            break
        allocation = allocate(space, curves, base_metric, factor * limit, objective)
        key = allocation_key(allocation)
        if key not in outcome:
            if not evaluator.recipe(allocation, "probe").steps:
                log.info("greedy: allowance %.4g compresses nothing", factor * limit)
                outcome[key] = True
            else:
                name = f"greedy-{rounds_used(evaluator, records) + 1}"
                record = verify(evaluator, allocation, name)
                outcome[key] = record is not None and evaluator.meets(record)
                if record is not None:
                    record.extra["allowance"] = factor * limit
                    records.append(record)
                    if on_record is not None:
                        on_record(record)
                    log.info(
                        "greedy: allowance x%.3g -> val %.4f, cost ratio %.4g (%s)",
                        factor,
                        record.val_metric,
                        record.ratio,
                        "pass" if outcome[key] else "fail",
                    )
        if outcome[key]:
            passed = factor if passed is None else max(passed, factor)
        else:
            failed = factor if failed is None else min(failed, factor)
        if failed is None:
            if factor >= 1e4:
                break  # every knob at its most compressed setting passes
            factor *= 2
        elif passed is None:
            if factor <= 1e-4:
                break  # even the gentlest allocation fails
            factor /= 2
        elif failed / passed < 1.1:
            break
        else:
            factor = math.sqrt(passed * failed)
    return refine(evaluator, curves, base_metric, records, max_rounds, deadline, on_record)
