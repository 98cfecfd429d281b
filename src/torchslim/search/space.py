"""The search space: per-layer knobs (technique x layer x grid) and the recipes they make.

A *knob* is one technique with a grid of settings, ordered from the least to the most
compression. The techniques describe themselves: each registers a
:class:`~torchslim.techniques.knobs.Knob` (its grid, the layers it acts on, its share of
the cost model, the recipe steps it becomes and their place in the pipeline) in its own
module, and this module only composes them; ``docs/techniques.md`` lists the knobs.
An *allocation* maps each knob to ``{layer: value}``; :func:`build_recipe` turns it into
a re-runnable :class:`~torchslim.recipe.Recipe` in pipeline order: the knobs whose steps
recovery follows (structural and unstructured pruning, factorization), recovery
(fine-tune or distillation from the baseline), then the others (quantization, packing).

The cost model walks every weighted layer as a
:class:`~torchslim.techniques.knobs.LayerCost` through the allocated knobs in pipeline
order; what a knob needs to know about the model (e.g. which layers lose inputs when a
channel group shrinks) it measures once per space (``Space.data``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from torchslim.errors import ConfigError
from torchslim.recipe import Recipe
from torchslim.techniques.base import Scope, TechniqueConfig
from torchslim.techniques.knobs import (
    GLOBAL,
    KNOBS,
    WEIGHTED,
    Knob,
    LayerCost,
    StepContext,
    pipeline_order,
)

__all__ = [
    "GLOBAL",
    "LATENCY_ROUND_TO",
    "Allocation",
    "Space",
    "allocation_key",
    "build_recipe",
    "build_space",
    "check_grid",
    "default_knobs",
    "knob_of",
    "recovery_kd",
    "recovery_step",
]

if TYPE_CHECKING:
    from torchslim.task import Task

Allocation = dict[str, dict[str, float]]
RECOVERIES = ("distill", "finetune")
KD_ADAPTIVE = {"temperature": 4.0, "alpha": 0.7}
KD_SGD = {"temperature": 1.0, "alpha": 0.5}
"""Hinton settings of the ``distill`` recovery, by the task's optimizer. Recovery runs at the
task's own lr, and the soft term's T**2 factor scales its gradient (4x at T=4 for a
confident teacher). Adam normalizes that away; plain SGD does not: on digits32-vgg
(SGD, lr 0.02) T=4 collapsed pruned models (val 0.46 at half the channels) where T=1
recovers 0.99, while on the Adam tasks T=4 is the better setting (digits-mlp 52x within
budget vs a miss at T=1, mnist1d-cnn 5.5x vs 4.2x)."""


def recovery_kd(optimizer: str | None) -> dict[str, float]:
    """The distillation-recovery settings for a task trained with ``optimizer``."""
    return dict(KD_SGD if optimizer == "sgd" else KD_ADAPTIVE)


LATENCY_ROUND_TO = 8
"""Structural pruning in a latency search keeps widths multiples of this (rounding down). In
ONNX Runtime int8 on digits32-vgg, widths 16/16/32/32/64/64/128/128 (15.6x fewer MACs)
ran 24.8x faster than fp32 at batch 1, widths 12/12/25/25/51/51/102/102 (25.3x fewer
MACs) only 21.5x."""


def knob_of(name: str) -> Knob:
    """The registered knob of a technique, or a ConfigError naming the searchable ones."""
    knob = KNOBS.get(name)
    if knob is None:
        names = ", ".join(k.name for k in pipeline_order())
        raise ConfigError(f"technique {name!r} cannot be optimized; use one of {names}")
    return knob


def default_knobs(
    objective: str, runtime: str = "torch", embedding: bool = False
) -> tuple[str, ...]:
    """The techniques searched by default for an objective (``Knob.default_for``).

    ``embedding``: the model has an ``nn.Embedding`` table (a transformer encoder), whose
    size search has its own defaults (``"size/embedding"``).
    """
    tags = {f"{objective}/embedding"} if embedding else {objective, f"{objective}/{runtime}"}
    return tuple(knob.name for knob in pipeline_order() if tags & set(knob.default_for))


def check_grid(knob: str, values: Sequence[float]) -> tuple[float, ...]:
    """Validate a knob's grid and order it from the least to the most compression."""
    spec = knob_of(knob)
    values = tuple(values)
    if not values:
        raise ConfigError(f"the range of {knob} is empty; give at least one value")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{knob} range value {value!r} is not a number")
        if not spec.valid(value):
            raise ConfigError(f"{knob} {spec.rule}, got {value}")
    ordered = sorted(set(values), reverse=spec.descending)
    return tuple(int(v) if spec.integer else float(v) for v in ordered)


@dataclass
class Space:
    """Knobs with their grids and the layers each one acts on.

    Args:
        grids: knob -> values, least compression first.
        layers: knob -> layer names (``["*"]`` for whole-model knobs).
        params: layer -> weight count; macs: layer -> MACs at batch 1 (for the cost model).
        other_params: parameters outside the knobs' layers (biases, norms, ...).
        biases: layer -> bias count (shrinks with the layer's output channels).
        outputs: layer -> output channels.
        data: knob -> what its ``Knob.measure`` found in the model, for its cost hooks
            (channel pruning: per group, the share of each layer's weights it removes).
    """

    grids: dict[str, tuple[float, ...]]
    layers: dict[str, list[str]]
    params: dict[str, int] = field(default_factory=dict)
    macs: dict[str, int] = field(default_factory=dict)
    other_params: int = 0
    biases: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, int] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def knobs(self) -> list[tuple[str, str]]:
        """Every (knob, layer) pair."""
        return [(knob, layer) for knob, names in self.layers.items() for layer in names]

    def allocation(self, levels: Mapping[tuple[str, str], int]) -> Allocation:
        """The allocation of per-(knob, layer) grid indices (missing: index 0)."""
        return {
            knob: {layer: self.grids[knob][levels.get((knob, layer), 0)] for layer in names}
            for knob, names in self.layers.items()
        }

    def ladder(self) -> list[Allocation]:
        """Uniform allocations, gentlest first: rung t puts every (knob, layer) at the same
        share t / T of its grid (T = the longest grid's last index), so all knobs move
        from their least to their most compressed setting together. Duplicates dropped."""
        steps = max(1, max(len(grid) for grid in self.grids.values()) - 1)
        rungs: list[Allocation] = []
        seen: set[str] = set()
        for t in range(steps + 1):
            allocation = self.allocation(
                {
                    (knob, layer): round(t * (len(self.grids[knob]) - 1) / steps)
                    for knob, layer in self.knobs()
                }
            )
            key = allocation_key(allocation)
            if key not in seen:
                seen.add(key)
                rungs.append(allocation)
        return rungs

    def cost(self, allocation: Allocation, objective: str) -> float:
        """Predicted cost (bits for size, MACs otherwise) of an allocation, for ranking only."""
        knobs = [(knob, allocation[knob.name]) for knob in pipeline_order(list(allocation))]
        total = 0.0
        for layer in set(self.params) | set(self.macs):
            state = LayerCost(
                weights=self.params.get(layer, 0),
                outputs=self.outputs.get(layer, 1),
                biases=self.biases.get(layer, 0),
                macs=self.macs.get(layer, 0),
            )
            for knob, values in knobs:
                if knob.layer_cost is not None:
                    knob.layer_cost(values, layer, state, self.data.get(knob.name))
            if objective == "size":
                total += state.size_bits()
                total += state.bias_size_bits()
            else:
                total += state.macs * state.kept
        if objective == "size":
            total += (self.other_params - sum(self.biases.values())) * 32
        for knob, values in knobs:
            if knob.model_cost is not None:
                total = knob.model_cost(values, total, objective, self.data.get(knob.name))
        return total


def build_space(
    model: nn.Module,
    task: Task,
    knobs: Sequence[str],
    ranges: Mapping[str, Sequence[float]] | None = None,
) -> Space:
    """The knobs' grids and layers for ``model`` (never modified)."""
    from torchslim.measure import count_macs

    ranges = dict(ranges or {})
    unknown = [name for name in ranges if name not in knobs]
    if unknown:
        raise ConfigError(
            f"a range is given for {unknown[0]!r}, which is not among the techniques "
            f"{list(knobs)}; add it to the techniques"
        )
    specs = [knob_of(name) for name in knobs]
    claimed: dict[str, str] = {}
    for spec in specs:
        if spec.exclusive and spec.exclusive in claimed:
            raise ConfigError(
                f"{claimed[spec.exclusive]} and {spec.name} both replace the "
                f"{spec.exclusive}; search one of them"
            )
        if spec.exclusive:
            claimed[spec.exclusive] = spec.name
    grids = {spec.name: check_grid(spec.name, ranges.get(spec.name, spec.grid)) for spec in specs}
    weighted = [name for name, _ in Scope().select(model, WEIGHTED)]
    layers: dict[str, list[str]] = {}
    for spec in specs:
        layers[spec.name] = spec.layers(model, task, weighted)
        if not layers[spec.name]:
            raise ConfigError(f"{spec.name} finds no layer to act on in this model; drop it")
    modules = dict(model.named_modules())
    params = {name: modules[name].weight.numel() for name in weighted}
    biases = {
        name: modules[name].bias.numel()
        for name in weighted
        if getattr(modules[name], "bias", None) is not None
    }
    macs = count_macs(model, task.inputs(1)).per_layer
    other = sum(p.numel() for p in model.parameters()) - sum(params.values())
    data = {
        spec.name: spec.measure(model, task, layers[spec.name], params)
        for spec in specs
        if spec.measure is not None
    }
    return Space(
        grids,
        layers,
        params,
        {k: v for k, v in macs.items() if k in params},
        other,
        biases,
        {name: modules[name].weight.shape[0] for name in weighted},
        data,
    )


def build_recipe(
    allocation: Allocation,
    name: str = "candidate",
    task: str | None = None,
    recovery_epochs: int = 0,
    tuning_epochs: int = 0,
    recovery: str = "finetune",
    recovery_lr: float | None = None,
    kd: dict[str, float] | None = None,
    round_to: int | None = None,
) -> Recipe:
    """The recipe of an allocation, in pipeline order (identity settings are left out).

    Args:
        allocation: per-knob, per-layer settings.
        name, task: the recipe's name and task.
        recovery_epochs: epochs of recovery after the knobs it follows (0: none).
        tuning_epochs: epochs of a technique's own fine-tuning (``StepContext``).
        recovery: ``"finetune"`` (task loss) or ``"distill"`` (Hinton KD from the
            uncompressed baseline, the recipe's teacher).
        recovery_lr: recovery learning rate (None: the step's default, a tenth of the
            task's lr for finetune, the task's lr for distill).
        kd: temperature / alpha of the distill recovery (None: :data:`KD_ADAPTIVE`).
        round_to: keep structurally pruned widths multiples of this (None: exact ratios).
    """
    if recovery not in RECOVERIES:
        raise ConfigError(f"recovery {recovery!r} is unknown; use one of {RECOVERIES}")
    for knob_name in allocation:
        knob_of(knob_name)
    renamed: dict[str, str] = {}
    context = StepContext(
        recovery_epochs, tuning_epochs, round_to, lambda layer: renamed.get(layer, layer)
    )
    steps: list[TechniqueConfig] = []
    recovered = True
    for knob in pipeline_order(list(allocation)):
        if recovered and not knob.recovered:
            recovered = False
            if steps and recovery_epochs > 0:
                steps.append(recovery_step(recovery, recovery_epochs, recovery_lr, kd))
        values = allocation[knob.name]
        steps.extend(knob.steps(values, context))
        if knob.renames is not None:
            for layer, value in values.items():
                if value != knob.identity:
                    renamed[layer] = knob.renames(layer)
    if recovered and steps and recovery_epochs > 0:
        steps.append(recovery_step(recovery, recovery_epochs, recovery_lr, kd))
    return Recipe(steps=steps, name=name, task=task)


def allocation_key(allocation: Allocation) -> str:
    """A canonical string of an allocation (to skip candidates already evaluated)."""
    return repr(sorted((k, sorted(v.items())) for k, v in allocation.items()))


def recovery_step(
    kind: str, epochs: int, lr: float | None, kd: dict[str, float] | None = None
) -> TechniqueConfig:
    """The recovery step of the optimizer's recipes: distillation from the uncompressed
    baseline (``kd``: temperature / alpha, default :data:`KD_ADAPTIVE`) or a task-loss
    fine-tune."""
    from torchslim.techniques.distillation import Distill
    from torchslim.techniques.recovery import FineTune

    if kind == "distill":
        return Distill(epochs=epochs, lr=lr, **(kd or KD_ADAPTIVE))
    return FineTune(epochs=epochs, lr=lr)
