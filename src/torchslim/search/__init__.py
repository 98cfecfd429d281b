"""Compression-ratio optimization: the most compressed model within an accuracy budget.

``ts.optimize(task, max_drop=1.0, objective="size")`` (:func:`torchslim.search.optimize.optimize`)
measures per-layer sensitivity (:mod:`torchslim.search.sensitivity`), allocates per-layer
settings (greedy or an Optuna study), and returns the Pareto front and the best candidate
that meets the budget on the held-out test split.

This package re-exports no function under the name of one of its modules: ``optimize`` and
``sensitivity`` are modules here (``from torchslim.search.optimize import optimize``, or
``ts.optimize``), so ``import torchslim.search.sensitivity`` always gives the module.
"""

from torchslim.search.budget import Budget, Objective
from torchslim.search.greedy import allocate, greedy_search
from torchslim.search.optimize import OptimizeResult, pareto_front
from torchslim.search.space import Space, build_recipe, build_space

__all__ = [
    "Budget",
    "Objective",
    "OptimizeResult",
    "Space",
    "allocate",
    "build_recipe",
    "build_space",
    "greedy_search",
    "pareto_front",
]
