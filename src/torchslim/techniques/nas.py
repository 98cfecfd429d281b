"""Student architecture search with Optuna.

A search space is derived from a template architecture (``mnist1d_cnn`` or
``vgg_cifar``): a width multiplier and a depth per stage, and a kernel size. Each
candidate is built as a :class:`StagedCNN`, trained briefly by distillation from the
teacher, and scored on validation data. TPE maximizes the metric within a cost budget
(with Optuna's median pruner stopping hopeless candidates after each epoch); NSGA-II
(or random sampling, the baseline) treats (metric, cost) as two objectives. The result
holds every trial, the Pareto front and the best candidate within the budget.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.measure import benchmark_latency, count_macs, count_parameters
from torchslim.models.staged import StagedCNN  # noqa: F401  (the searched architecture)
from torchslim.task import Task
from torchslim.techniques.base import (
    ApplyContext,
    TechniqueConfig,
    register_config,
    register_handler,
)
from torchslim.techniques.distillation import distill

COSTS = ("params", "macs", "latency")
SAMPLERS = ("tpe", "nsga2", "random")


TEMPLATES: dict[str, dict[str, Any]] = {
    "mnist1d_cnn": {
        "stages": [[25, 1, 5], [25, 1, 3], [25, 1, 3]],
        "kwargs": {"dims": 1, "in_channels": 1, "input_size": 40},
    },
    "vgg_cifar": {
        "stages": [[64, 2, 3], [128, 2, 3], [256, 2, 3], [512, 2, 3]],
        "kwargs": {"dims": 2, "in_channels": 3, "input_size": 32, "fc_width": 128},
    },
}


@dataclass(frozen=True)
class SearchSpace:
    """Choices per stage of a template: width multipliers, depths and kernel sizes."""

    template: str = "mnist1d_cnn"
    widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    depths: tuple[int, ...] = (1, 2)
    kernels: tuple[int, ...] = (3, 5, 7)

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ConfigError(
                f"search template {self.template!r} is unknown; use one of {sorted(TEMPLATES)}"
            )
        for label, values in (("widths", self.widths), ("depths", self.depths)):
            if not values:
                raise ConfigError(f"the search space is empty: {label} has no choices; add some")
        if not self.kernels:
            raise ConfigError("the search space is empty: kernels has no choices; add some")
        if any(not 0 < w <= 4 for w in self.widths):
            raise ConfigError(f"search widths must be in (0, 4], got {self.widths}")
        if any(d < 1 for d in self.depths) or any(k < 1 or k % 2 == 0 for k in self.kernels):
            raise ConfigError("search depths must be >= 1 and kernels odd and >= 1")

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Ask ``trial`` for one architecture choice."""
        stages = len(TEMPLATES[self.template]["stages"])
        return {
            "widths": [trial.suggest_categorical(f"width{i}", self.widths) for i in range(stages)],
            "depths": [trial.suggest_categorical(f"depth{i}", self.depths) for i in range(stages)],
            "kernel": trial.suggest_categorical("kernel", self.kernels),
        }

    def arch(self, choice: dict[str, Any], num_classes: int = 10) -> dict[str, Any]:
        """The ``{"name", "kwargs"}`` spec of a candidate (rebuildable from checkpoints)."""
        template = TEMPLATES[self.template]
        stages = [
            [max(1, round(width * mult)), depth, choice["kernel"]]
            for (width, _, _), mult, depth in zip(
                template["stages"], choice["widths"], choice["depths"], strict=True
            )
        ]
        kwargs = {**template["kwargs"], "stages": stages, "num_classes": num_classes}
        return {"name": "staged_cnn", "kwargs": kwargs}


@dataclass
class Candidate:
    """One trial: its choice, architecture, metric and costs."""

    number: int
    choice: dict[str, Any]
    arch: dict[str, Any]
    metric: float
    params: int
    macs: int
    latency_ms: float | None
    state: str = "complete"
    model: nn.Module | None = field(default=None, repr=False)

    def cost(self, objective: str) -> float:
        return {"params": self.params, "macs": self.macs, "latency": self.latency_ms}[objective]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "model"}


@dataclass
class SearchResult:
    """Every trial, the Pareto front of (metric, cost), and the best within budget."""

    trials: list[Candidate]
    front: list[Candidate]
    best: Candidate | None
    objective: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "trials": [c.to_dict() for c in self.trials],
            "front": [c.number for c in self.front],
            "best": self.best.number if self.best else None,
        }


def pareto_front(candidates: Sequence[Candidate], objective: str) -> list[Candidate]:
    """Candidates no other beats on both metric (higher) and cost (lower), by cost."""
    done = [c for c in candidates if c.state == "complete"]
    front = [
        c
        for c in done
        if not any(
            o.metric >= c.metric
            and o.cost(objective) <= c.cost(objective)
            and (o.metric > c.metric or o.cost(objective) < c.cost(objective))
            for o in done
        )
    ]
    return sorted(front, key=lambda c: c.cost(objective))


def hypervolume(
    points: Sequence[tuple[float, float]], ref_cost: float, ref_metric: float = 0.0
) -> float:
    """Area dominated by ``(cost, metric)`` points (cost minimized, metric maximized).

    The area is bounded by the reference point ``(ref_cost, ref_metric)``; points with a
    cost at or above ``ref_cost`` or a metric at or below ``ref_metric`` add nothing.
    Higher is better; compare two searches with the same reference point.
    """
    if not math.isfinite(ref_cost) or not math.isfinite(ref_metric):
        raise ConfigError(
            f"hypervolume needs a finite reference point, got {ref_cost}, {ref_metric}"
        )
    inside = sorted((c, m) for c, m in points if c < ref_cost and m > ref_metric)
    area, best = 0.0, ref_metric
    for cost, metric in inside:  # by cost; each new best metric adds a strip to ref_cost
        if metric > best:
            area += (ref_cost - cost) * (metric - best)
            best = metric
    return area


def _num_classes(teacher: nn.Module, task: Task) -> int:
    with torch.no_grad():
        return int(teacher.eval()(task.inputs(1)).shape[-1])


def search_student(
    task: Task,
    teacher: nn.Module,
    space: SearchSpace | None = None,
    *,
    trials: int = 20,
    epochs: int = 5,
    objective: str = "params",
    budget: float | None = None,
    sampler: str = "tpe",
    seed: int = 0,
    storage: str | None = None,
    study_name: str | None = None,
    temperature: float = 1.0,
    alpha: float = 0.5,
) -> SearchResult:
    """Search student architectures distilled from ``teacher``.

    Args:
        task: data and training loop; candidates are scored on its val split.
        teacher: the model distilled from (not modified).
        space: the search space (default: derived from ``mnist1d_cnn``).
        trials: number of candidates trained. With ``sampler="tpe"`` and a ``budget``,
            samples over the budget are rejected before training (TPE learns from them
            as failures) and do not count, up to ``50 * trials`` samples in all.
        epochs: distillation epochs per candidate.
        objective: cost paired with the metric: ``params``, ``macs`` or ``latency`` (ms).
        budget: the largest acceptable cost; TPE skips candidates over it before training.
        sampler: ``tpe`` (single objective + median pruner), ``nsga2`` or ``random``.
        seed: sampler seed.
        storage: Optuna storage URL (e.g. ``sqlite:///study.db``) to resume or share.
        study_name: name of the study in ``storage``.
        temperature, alpha: distillation settings.
    """
    space = space or SearchSpace()
    if trials < 1 or epochs < 1:
        raise ConfigError(f"search needs trials >= 1 and epochs >= 1, got {trials}, {epochs}")
    if objective not in COSTS:
        raise ConfigError(f"search objective {objective!r} is unknown; use one of {COSTS}")
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler {sampler!r} is unknown; use one of {SAMPLERS}")
    if budget is not None and budget <= 0:
        raise ConfigError(f"search budget must be > 0, got {budget}")
    optuna.logging.set_verbosity(logging.WARNING)
    num_classes = _num_classes(teacher, task)
    one = task.inputs(1)
    candidates: list[Candidate] = []
    steps_per_epoch = len(task.loader("train", shuffle=True))
    if sampler == "tpe":
        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
            storage=storage,
            study_name=study_name,
            load_if_exists=storage is not None,
        )
    else:
        chosen = (
            optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(10, trials // 2)))
            if sampler == "nsga2"
            else optuna.samplers.RandomSampler(seed=seed)
        )
        study = optuna.create_study(
            directions=["maximize", "minimize"],
            sampler=chosen,
            storage=storage,
            study_name=study_name,
            load_if_exists=storage is not None,
        )

    def run_trial(trial: optuna.Trial) -> Any:
        choice = space.sample(trial)
        arch = space.arch(choice, num_classes)
        from torchslim.models import build_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + trial.number)
            student = build_model(arch["name"], **arch["kwargs"])
        latency = None
        if objective == "latency":
            latency = benchmark_latency([student], one, target_seconds=0.2)[0].median_ms
        candidate = Candidate(
            trial.number,
            choice,
            arch,
            float("nan"),
            count_parameters(student),
            count_macs(student, one).macs,
            latency,
        )
        candidates.append(candidate)
        cost = candidate.cost(objective)
        trial.set_user_attr("cost", cost)
        if sampler == "tpe" and budget is not None and cost > budget:
            candidate.state = "over_budget"
            raise optuna.TrialPruned()

        def report(model: nn.Module, step: int) -> None:
            if sampler != "tpe" or step % steps_per_epoch:
                return
            epoch = step // steps_per_epoch
            if epoch < epochs:
                trial.report(task.evaluate(model, "val"), epoch)
                if trial.should_prune():
                    candidate.state = "pruned"
                    raise optuna.TrialPruned()

        distill(student, teacher, task, epochs=epochs, temperature=temperature, alpha=alpha,
                after_step=report)  # fmt: skip
        candidate.metric = task.evaluate(student, "val")
        candidate.model = student
        return candidate.metric if sampler == "tpe" else (candidate.metric, cost)

    if sampler == "tpe" and budget is not None:
        samples = 0  # over-budget samples cost no training: draw until `trials` are trained
        while sum(c.state != "over_budget" for c in candidates) < trials and samples < 50 * trials:
            study.optimize(run_trial, n_trials=1, catch=())
            samples += 1
    else:
        study.optimize(run_trial, n_trials=trials, catch=())
    front = pareto_front(candidates, objective)
    fitting = [
        c
        for c in candidates
        if c.state == "complete" and (budget is None or c.cost(objective) <= budget)
    ]
    best = max(fitting, key=lambda c: (c.metric, -c.cost(objective)), default=None)
    for candidate in candidates:  # keep only the models worth returning
        if candidate is not best and candidate not in front:
            candidate.model = None
    return SearchResult(candidates, front, best, objective)


@register_config
@dataclass(frozen=True)
class StudentSearch(TechniqueConfig):
    """Replace the model by the best distilled student found within a budget.

    The model given is the teacher. Args mirror :func:`search_student`; ``widths``,
    ``depths`` and ``kernels`` define the space around ``template``.
    """

    name = "student_search"
    family = "nas"
    template: str = "mnist1d_cnn"
    widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    depths: tuple[int, ...] = (1, 2)
    kernels: tuple[int, ...] = (3, 5, 7)
    trials: int = 20
    epochs: int = 5
    objective: str = "params"
    budget: float | None = None
    sampler: str = "tpe"
    seed: int = 0

    def __post_init__(self) -> None:
        self.space()  # validates template and choices
        if not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError(f"student_search.trials must be an integer >= 1, got {self.trials}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"student_search.epochs must be an integer >= 1, got {self.epochs}")
        if self.objective not in COSTS:
            raise ConfigError(f"student_search.objective must be one of {COSTS}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"student_search.sampler must be one of {SAMPLERS}")
        if self.budget is not None and not (self.budget > 0 and math.isfinite(self.budget)):
            raise ConfigError(f"student_search.budget must be > 0 (or null), got {self.budget}")

    def space(self) -> SearchSpace:
        return SearchSpace(self.template, self.widths, self.depths, self.kernels)


@register_handler(StudentSearch)
def _student_search(model: nn.Module, config: StudentSearch, context: ApplyContext) -> nn.Module:
    task = context.task
    if task is None:
        raise ConfigError("student_search needs a task (data to train candidates); pass task=")
    result = search_student(
        task,
        model,
        config.space(),
        trials=config.trials,
        epochs=config.epochs,
        objective=config.objective,
        budget=config.budget,
        sampler=config.sampler,
        seed=config.seed,
    )
    context.notes["student_search"] = result.to_dict()
    if result.best is None or result.best.model is None:
        raise ConfigError(
            f"student_search found no candidate within budget {config.budget}; raise the budget "
            "or widen the space"
        )
    student = result.best.model
    student.torchslim_arch = result.best.arch  # its own architecture: artifacts rebuild it
    return student
