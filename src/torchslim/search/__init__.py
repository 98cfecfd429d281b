"""Compression-ratio optimization: the most compressed model within an accuracy budget.

``optimize(task, max_drop=1.0, objective="size")`` measures per-layer sensitivity,
allocates per-layer settings (greedy or an Optuna study), and returns the Pareto front
and the best candidate that meets the budget on the held-out test split.
"""

from torchslim.search.budget import Budget, Objective
from torchslim.search.greedy import allocate, greedy_search
from torchslim.search.optimize import OptimizeResult, optimize, pareto_front
from torchslim.search.sensitivity import sensitivity
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
    "optimize",
    "pareto_front",
    "sensitivity",
]
