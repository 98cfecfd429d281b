"""Greedy allocation from the sensitivity curves, verified by measurement, with back-off.

:func:`allocate` picks per-layer settings that minimize the predicted cost while the
predicted drop (the sum of each (knob, layer)'s drop on its own curve) stays within a
drop allowance: it repeatedly takes the move with the most cost saved per point of
predicted drop. Curves are measured without recovery, so the allowance that actually
holds after fine-tuning differs from the budget; :func:`greedy_search` finds it by
measurement: it verifies an allocation, widens the allowance after a pass and backs
off (bisects) after a failure.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from torchslim.search.evaluate import Evaluator, Record
from torchslim.search.sensitivity import Curves, drop_curve
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
    drops = {
        (knob, layer): drop_curve(curves[knob][layer], base_metric) for knob, layer in space.knobs()
    }
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


def greedy_search(
    evaluator: Evaluator,
    curves: Curves,
    base_metric: float,
    max_rounds: int = 8,
    deadline: float = math.inf,
    on_record: Callable[[Record], None] | None = None,
) -> list[Record]:
    """Verify greedy allocations, widening or backing off the drop allowance by measurement.

    The allowance starts at the budget; each pass doubles it (or bisects towards the
    smallest failure), each failure halves it (or bisects towards the largest pass).
    Stops after ``max_rounds`` verifications, at ``deadline`` (``time.monotonic()``), or
    when the allocation no longer changes.
    """
    space, limit = evaluator.space, evaluator.limit
    objective = evaluator.objective.kind
    passed: float | None = None
    failed: float | None = None
    factor = 1.0
    records: list[Record] = []
    outcome: dict[str, bool] = {}
    for _ in range(max_rounds * 6):
        if len(records) >= max_rounds or time.monotonic() >= deadline:
            break
        allocation = allocate(space, curves, base_metric, factor * limit, objective)
        key = allocation_key(allocation)
        if key not in outcome:
            if not evaluator.recipe(allocation, "probe").steps:
                log.info("greedy: allowance %.4g compresses nothing", factor * limit)
                outcome[key] = True
            else:
                record = evaluator.evaluate(allocation, f"greedy-{len(records) + 1}")
                record.extra["allowance"] = factor * limit
                records.append(record)
                if on_record is not None:
                    on_record(record)
                outcome[key] = evaluator.meets(record)
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
    return records
