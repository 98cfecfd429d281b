"""Searchable techniques: what the optimizer knows about a technique, registered by it.

A :class:`Knob` describes one technique to the search (``torchslim.search``): its grid of
settings and the setting that changes nothing, which layers it acts on, how it shifts the
size / MACs cost model, the recipe steps an allocation of it becomes and where they go in
the pipeline. Each technique module registers its knob next to its config and handler
(``register_knob(Knob(...))``), so the search names no technique and a new technique is
searchable without touching it. This module sits beside ``base.py``: it imports no search
code (the search imports it).

The cost model sees every weighted layer (:data:`WEIGHTED`) as a :class:`LayerCost` that
the allocated knobs update in pipeline order (``Knob.layer_cost``); whole-model effects
(a smaller embedding table, int8 kernels) adjust the model's total (``Knob.model_cost``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from torchslim.techniques.base import TechniqueConfig

GLOBAL = "*"
"""The layer key of a whole-model knob (its allocation is ``{"*": value}``)."""

WEIGHTED: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The layers the cost model counts (per-layer weights, biases and MACs)."""


@dataclass
class LayerCost:
    """One weighted layer as the cost model sees it; knobs update it in pipeline order.

    Attributes:
        weights, outputs, biases, macs: the uncompressed layer's weight count, output
            channels, bias count and MACs at batch 1.
        kept: share of the weights (and MACs) left by structural knobs.
        out_kept: share of the output channels left (biases, per-channel scales).
        density: share of non-zero weights; a sparse layer pays an entropy-coded index.
        weight_bits: bits per stored weight.
        dense: zeros are stored like any weight (no sparse index, density ignored).
        bias_bits: bits per stored bias.
        extra_bits: side data of the layer's format (scales, codebooks).
    """

    weights: int
    outputs: int = 1
    biases: int = 0
    macs: int = 0
    kept: float = 1.0
    out_kept: float = 1.0
    density: float = 1.0
    weight_bits: float = 32
    dense: bool = False
    bias_bits: float = 32
    extra_bits: float = 0.0

    def size_bits(self) -> float:
        """Bits of the layer's weights and side data (biases: :meth:`bias_size_bits`)."""
        if self.dense:
            return self.weights * self.kept * self.weight_bits + self.extra_bits
        index_bits = entropy(self.density) if self.density < 1 else 0.0
        stored = self.weights * self.kept * (self.density * self.weight_bits + index_bits)
        return stored + self.extra_bits

    def bias_size_bits(self) -> float:
        """Bits of the layer's biases."""
        return self.biases * self.out_kept * self.bias_bits


def entropy(density: float) -> float:
    """Bits per weight of an ideal index of which weights are non-zero."""
    if density <= 0 or density >= 1:
        return 0.0
    return -(density * math.log2(density) + (1 - density) * math.log2(1 - density))


@dataclass(frozen=True)
class StepContext:
    """What a knob's ``steps`` may use besides its own allocation.

    Attributes:
        recovery_epochs: epochs of the recipe's recovery step (0: none).
        tuning_epochs: epochs of a technique's own fine-tuning (e.g. codebook centroids).
        round_to: keep structurally pruned widths multiples of this (None: exact ratios).
        scope_of: a layer's scope entry after the earlier steps (a layer an earlier knob
            split into ``layer.0`` / ``layer.1`` becomes a ``re:`` pattern over them).
    """

    recovery_epochs: int = 0
    tuning_epochs: int = 0
    round_to: int | None = None
    scope_of: Callable[[str], str] = str


LayersHook = Callable[[nn.Module, Any, Sequence[str]], list[str]]
"""``(model, task, weighted layer names) -> the layers a knob acts on``."""


def every_weighted_layer(model: nn.Module, task: Any, weighted: Sequence[str]) -> list[str]:
    """The default ``Knob.layers``: every Conv / Linear layer."""
    return list(weighted)


def linear_layers(model: nn.Module, task: Any, weighted: Sequence[str]) -> list[str]:
    """``Knob.layers`` of a knob that acts on ``nn.Linear`` layers only."""
    modules = dict(model.named_modules())
    return [name for name in weighted if isinstance(modules[name], nn.Linear)]


def whole_model(model: nn.Module, task: Any, weighted: Sequence[str]) -> list[str]:
    """``Knob.layers`` of a whole-model knob: the one key :data:`GLOBAL`."""
    return [GLOBAL]


@dataclass(frozen=True)
class Knob:
    """A technique as the optimizer searches it.

    Attributes:
        name: the technique's name (its config's ``name``; the allocation's key).
        grid: the default settings, in any order (:meth:`check` orders them).
        rule: what a valid setting is, for the error message (``"takes 0 (off) and/or
            1 (int8)"`` reads ``"<name> takes 0 (off) and/or 1 (int8), got 8"``).
        valid: whether one setting is valid.
        identity: the setting that leaves the model unchanged (None: every setting
            compresses); sensitivity measures it as the reference itself.
        descending: larger settings compress less (bits, kept fractions).
        integer: settings are integers.
        order: place in the pipeline (lower runs first).
        recovered: its steps run before the recipe's recovery step (which wins back what
            they cost); otherwise after it (quantization).
        layers: ``(model, task, weighted) -> layer names`` (``[GLOBAL]`` for whole-model
            knobs); raise :class:`~torchslim.errors.ConfigError` when the model has none
            it can act on.
        measure: ``(model, task, layers, params) -> data`` measured once per search space
            for the cost hooks (``Space.data[name]``); None: no data.
        steps: ``(allocation of this knob, StepContext) -> configs``: the recipe steps
            (identity settings left out).
        layer_cost: ``(allocation, layer, LayerCost, data)``: update one layer's cost.
        model_cost: ``(allocation, total, objective, data) -> total``: whole-model effect
            (``objective`` is ``"size"`` (bits) or ``"macs"`` / ``"latency"`` (MACs)).
        renames: ``layer -> scope entry`` later steps use for a layer this knob changed
            (SVD splits ``fc`` into ``fc.0`` and ``fc.1``).
        exclusive: a label of what this knob replaces (``"Linear layers"``); two knobs
            with the same label cannot be searched together.
        reference: the recovery its sensitivity points are compared with, given the
            sensitivity epochs: a config, or None for the uncompressed model as it is
            (None here: the recipe's own recovery step).
        default_for: the searches that use it by default: an objective (``"size"``),
            ``"objective/runtime"`` (``"latency/onnxruntime"``) or ``"size/embedding"``
            (a size search of a model with an ``nn.Embedding`` table).
        cache_key: settings of its steps that sensitivity curves depend on (part of
            their cache key).
    """

    name: str
    grid: tuple[float, ...]
    rule: str
    valid: Callable[[float], bool]
    steps: Callable[[Mapping[str, float], StepContext], list[TechniqueConfig]]
    identity: float | None = None
    descending: bool = False
    integer: bool = False
    order: int = 50
    recovered: bool = False
    layers: LayersHook = every_weighted_layer
    measure: Callable[[nn.Module, Any, Sequence[str], Mapping[str, int]], Any] | None = None
    layer_cost: Callable[[Mapping[str, float], str, LayerCost, Any], None] | None = None
    model_cost: Callable[[Mapping[str, float], float, str, Any], float] | None = None
    renames: Callable[[str], str] | None = None
    exclusive: str = ""
    reference: Callable[[int], TechniqueConfig | None] | None = None
    default_for: tuple[str, ...] = ()
    cache_key: Mapping[str, Any] = field(default_factory=dict)


KNOBS: dict[str, Knob] = {}


def register_knob(knob: Knob) -> Knob:
    """Make a technique searchable (called by the technique's module at import)."""
    known = KNOBS.get(knob.name)
    if known is not None and known.steps.__module__ != knob.steps.__module__:
        raise TypeError(f"knob {knob.name!r} is registered twice")
    KNOBS[knob.name] = knob
    return knob


def pipeline_order(names: Sequence[str] | None = None) -> list[Knob]:
    """Registered knobs (or those named) in pipeline order: recovered ones first."""
    chosen = [KNOBS[n] for n in names if n in KNOBS] if names is not None else list(KNOBS.values())
    return sorted(chosen, key=lambda knob: (not knob.recovered, knob.order))
