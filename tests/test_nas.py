"""Student architecture search: the space, Optuna samplers, Pareto front, budget, bad input."""

from __future__ import annotations

import pytest

import torchslim as ts
from torchslim.models import build_model
from torchslim.techniques.nas import (
    Candidate,
    SearchSpace,
    StudentSearch,
    hypervolume,
    pareto_front,
    search_student,
)


def test_space_builds_students_from_the_template():
    space = SearchSpace("mnist1d_cnn", widths=(0.4,), depths=(1,), kernels=(5,))
    arch = space.arch({"widths": [0.4, 0.4, 0.4], "depths": [1, 1, 1], "kernel": 5})
    model = build_model(arch["name"], **arch["kwargs"])
    assert arch["kwargs"]["stages"] == [[10, 1, 5], [10, 1, 5], [10, 1, 5]]
    # convs 1→10 k5 (60) + 2 × 10→10 k5 (510) + Linear(10·5 → 10) (510)
    assert ts.count_parameters(model) == 60 + 2 * 510 + 510


@pytest.mark.parametrize("field", ["widths", "depths", "kernels"])
def test_empty_search_space_is_an_error(field):
    with pytest.raises(ts.ConfigError, match=f"the search space is empty: {field} has no choices"):
        SearchSpace(**{field: ()})
    with pytest.raises(ts.ConfigError, match="search space is empty"):
        StudentSearch(**{field: ()})


def test_pareto_front_keeps_only_undominated_candidates():
    def cand(number, metric, params):
        return Candidate(number, {}, {}, metric, params, 0, None)

    cands = [cand(0, 0.8, 100), cand(1, 0.7, 200), cand(2, 0.9, 300), cand(3, 0.6, 50)]
    assert [c.number for c in pareto_front(cands, "params")] == [3, 0, 2]


@pytest.mark.slow
def test_search_returns_a_front_and_the_best_within_budget():
    space = SearchSpace("mnist1d_cnn", widths=(0.25, 1.0), depths=(1,), kernels=(3,))
    task = ts.tasks.get("mnist1d-cnn")
    teacher = task.baseline(progress=False)
    result = search_student(task, teacher, space, trials=4, epochs=1, sampler="nsga2", budget=2000)
    assert len(result.trials) == 4 and result.front
    assert result.best is not None and result.best.params <= 2000 and result.best.model is not None
    tpe = search_student(task, teacher, space, trials=3, epochs=1, sampler="tpe", budget=2000)
    assert all(c.state in ("complete", "over_budget", "pruned") for c in tpe.trials)
    assert all(c.params > 2000 for c in tpe.trials if c.state == "over_budget")
    trained = [c for c in tpe.trials if c.state != "over_budget"]
    assert len(trained) == 3 and all(c.params <= 2000 for c in trained)  # rejects don't count
    assert tpe.best is not None and tpe.best.params <= 2000


def test_hypervolume_of_a_front_equals_the_hand_computed_area():
    # (cost, metric): (0.2, 0.5) and (0.6, 0.9) form the front; (0.5, 0.4) is dominated,
    # (1.2, 0.99) lies beyond the reference cost 1.0 and adds nothing.
    points = [(0.6, 0.9), (0.5, 0.4), (0.2, 0.5), (1.2, 0.99)]
    # strips: (1.0 - 0.2) * (0.5 - 0) + (1.0 - 0.6) * (0.9 - 0.5) = 0.4 + 0.16
    assert hypervolume(points, ref_cost=1.0) == pytest.approx(0.56)
    assert hypervolume(points[:3], ref_cost=1.0) == pytest.approx(0.56)
    assert hypervolume([(0.2, 0.5)], ref_cost=1.0, ref_metric=0.5) == 0.0
    assert hypervolume([], ref_cost=1.0) == 0.0
    with pytest.raises(ts.errors.ConfigError, match="finite reference"):
        hypervolume(points, ref_cost=float("inf"))
