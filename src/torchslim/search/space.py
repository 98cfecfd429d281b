"""The search space: per-layer knobs (technique x layer x grid) and the recipes they make.

A *knob* is one technique with a grid of settings, ordered from the least to the most
compression: ``magnitude_pruning`` sparsities, ``channel_pruning`` ratios (per coupled
group), ``svd`` (low-rank factorization of Linear layers: the kept fraction of a
layer's weights, 1.0 = not factorized; opt-in), ``codebook_quant`` bits, and
``static_quant`` (off / on, int8 for ONNX Runtime), ``linear_int8`` (off / on per Linear
layer: int8 per-channel weights with dynamic int8 inputs, what torchao and ONNX Runtime's
dynamic int8 run, SmoothQuant-smoothed first; the transformer default) and ``embedding_quant`` (bits of the
word-embedding table of a transformer encoder, 32 = off; 4-bit tables get a scale per 32
columns).
An *allocation* maps each knob to ``{layer: value}``; :func:`build_recipe` turns it into
a re-runnable :class:`~torchslim.recipe.Recipe` in pipeline order: structural pruning,
unstructured pruning, recovery (fine-tune or distillation from the baseline),
quantization, packing.

The cost model knows that removing a group's output channels also removes the inputs
of the layers that consume them (``Space.couplings``, measured once per channel group).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import nn

from torchslim.errors import ConfigError
from torchslim.recipe import Recipe
from torchslim.techniques.base import Scope, TechniqueConfig

if TYPE_CHECKING:
    from torchslim.task import Task

Allocation = dict[str, dict[str, float]]
GLOBAL = "*"  # the layer key of a whole-model knob

DEFAULT_GRIDS: dict[str, tuple[float, ...]] = {
    "channel_pruning": (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8),
    "magnitude_pruning": (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97),
    "svd": (1.0, 0.7, 0.5, 0.35, 0.25, 0.15),
    "codebook_quant": (8, 6, 5, 4, 3, 2),
    "static_quant": (0, 1),
    "embedding_quant": (32, 8, 4),
    "linear_int8": (0, 1),
}
PER_MODEL = ("static_quant", "embedding_quant")
IDENTITY = {
    "channel_pruning": 0.0,
    "magnitude_pruning": 0.0,
    "static_quant": 0,
    "svd": 1.0,
    "embedding_quant": 32,
    "linear_int8": 0,
}
DESCENDING = ("codebook_quant", "svd", "embedding_quant")  # larger values compress less
INTEGER_KNOBS = ("codebook_quant", "static_quant", "embedding_quant", "linear_int8")
EXCLUSIVE = ("codebook_quant", "linear_int8")  # both replace the same Linear layers
INT8_SMOOTH = 0.7
"""SmoothQuant alpha of the optimizer's ``linear_int8`` steps (exact in float; on
all-MiniLM-L6-v2 int8 + a 4-bit table keeps mean cosine 0.9983 in PyTorch and 0.9972 in
ONNX Runtime with it, 0.9966 and 0.9930 without)."""
EMBEDDING_GROUP = 32  # columns per scale of a 4-bit table (per row at 8 bits)
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
"""Channel pruning in a latency search keeps widths multiples of this (rounding down). In
ONNX Runtime int8 on digits32-vgg, widths 16/16/32/32/64/64/128/128 (15.6x fewer MACs)
ran 24.8x faster than fp32 at batch 1, widths 12/12/25/25/51/51/102/102 (25.3x fewer
MACs) only 21.5x."""
CHANNEL_IMPORTANCE = "l1"
"""Channel ranking of the recipes the optimizer builds, pinned so that a change of the
technique's default does not silently change the cached sensitivity curves' meaning."""


TRANSFORMER_SIZE_KNOBS = ("linear_int8", "embedding_quant")
"""The size search's default for a model with an ``nn.Embedding`` table."""


def default_knobs(objective: str, runtime: str = "torch") -> tuple[str, ...]:
    """The techniques searched by default for an objective."""
    if objective == "size":
        return ("channel_pruning", "magnitude_pruning", "codebook_quant")
    if objective == "macs":
        return ("channel_pruning",)
    return ("channel_pruning", "static_quant") if runtime == "onnxruntime" else ("channel_pruning",)


def check_grid(knob: str, values: Sequence[float]) -> tuple[float, ...]:
    """Validate a knob's grid and order it from the least to the most compression."""
    if knob not in DEFAULT_GRIDS:
        raise ConfigError(
            f"technique {knob!r} cannot be optimized; use one of {', '.join(DEFAULT_GRIDS)}"
        )
    values = tuple(values)
    if not values:
        raise ConfigError(f"the range of {knob} is empty; give at least one value")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{knob} range value {value!r} is not a number")
        if knob == "codebook_quant" and not (value == int(value) and 2 <= value <= 8):
            raise ConfigError(f"{knob} bits must be integers in [2, 8], got {value}")
        if knob == "embedding_quant" and value not in (4, 8, 32):
            raise ConfigError(f"{knob} takes 32 (off), 8 and/or 4 bits, got {value}")
        if knob in ("static_quant", "linear_int8") and value not in (0, 1):
            raise ConfigError(f"{knob} takes 0 (off) and/or 1 (int8), got {value}")
        if knob in ("magnitude_pruning", "channel_pruning") and not 0 <= value < 1:
            raise ConfigError(f"{knob} ratios must be in [0, 1), got {value}")
        if knob == "svd" and not 0 < value <= 1:
            raise ConfigError(
                f"svd keeps a fraction of each layer's weights in (0, 1], got {value}"
            )
    ordered = sorted(set(values), reverse=knob in DESCENDING)
    return tuple(int(v) if knob in INTEGER_KNOBS else float(v) for v in ordered)


@dataclass
class Space:
    """Knobs with their grids and the layers each one acts on.

    Args:
        grids: knob -> values, least compression first.
        layers: knob -> layer names (``["*"]`` for whole-model knobs).
        params: layer -> weight count; macs: layer -> MACs at batch 1 (for the cost model).
        other_params: parameters outside the knobs' layers (biases, norms, ...).
        biases: layer -> bias count (shrinks with the layer's output channels).
        couplings: channel-group root -> {layer: share of the layer's weights removed per
            unit of the root's ratio} (the root's own outputs and its consumers' inputs).
        embedding: (rows, columns) of the word-embedding table ``embedding_quant`` acts on.
        outputs: layer -> output channels (a ``linear_int8`` layer stores a weight scale per
            output channel, and a SmoothQuant scale per input: ``params / outputs``).
    """

    grids: dict[str, tuple[float, ...]]
    layers: dict[str, list[str]]
    params: dict[str, int] = field(default_factory=dict)
    macs: dict[str, int] = field(default_factory=dict)
    other_params: int = 0
    biases: dict[str, int] = field(default_factory=dict)
    couplings: dict[str, dict[str, float]] = field(default_factory=dict)
    embedding: tuple[int, int] = (0, 0)
    outputs: dict[str, int] = field(default_factory=dict)

    def kept(self, channels: Mapping[str, float], layer: str) -> float:
        """Share of ``layer``'s weights left by the channel-pruning ratios ``channels``."""
        kept = 1.0
        for root, ratio in channels.items():
            share = self.couplings.get(root, {root: 1.0}).get(layer, 0.0)
            kept *= max(0.0, 1.0 - ratio * share)
        return kept

    def out_kept(self, channels: Mapping[str, float], layer: str) -> float:
        """Share of ``layer``'s output channels left (its biases)."""
        return 1.0 - channels.get(layer, 0.0)

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
        channels = allocation.get("channel_pruning", {})
        sparsity = allocation.get("magnitude_pruning", {})
        bits = allocation.get("codebook_quant", {})
        int8 = allocation.get("linear_int8", {})
        lowrank = allocation.get("svd", {})
        total = 0.0
        for layer in set(self.params) | set(self.macs):
            kept = self.kept(channels, layer) * lowrank.get(layer, 1.0)
            if objective == "size":
                density = 1.0 - sparsity.get(layer, 0.0)
                weights = self.params.get(layer, 0)
                out_kept = self.out_kept(channels, layer)
                if int8.get(layer):
                    # Int8Linear stores its weight dense (zeros cost 8 bits too) plus fp32
                    # scales: one per output channel, one per input channel (SmoothQuant)
                    outputs = self.outputs.get(layer, 1)
                    total += weights * kept * 8 + (outputs * out_kept + weights // outputs) * 32
                else:
                    width = bits.get(layer, 32)
                    index_bits = _entropy(density) if density < 1 else 0.0
                    total += weights * kept * (density * width + index_bits)
                bias_bits = 16 if layer in bits else 32
                total += self.biases.get(layer, 0) * out_kept * bias_bits
            else:
                total += self.macs.get(layer, 0) * kept
        if objective == "size":
            total += (self.other_params - sum(self.biases.values())) * 32
            table_bits = allocation.get("embedding_quant", {}).get(GLOBAL, 32)
            if table_bits < 32:
                from torchslim.techniques.embedding_quant import expected_table_bytes

                rows, columns = self.embedding
                group = EMBEDDING_GROUP if table_bits == 4 else 0
                stored = expected_table_bytes(rows, columns, int(table_bits), group)
                total -= rows * columns * 32 - stored * 8
        elif allocation.get("static_quant", {}).get(GLOBAL):
            total /= 2.5  # int8 kernels: a rough prior; the search measures the real speedup
        return total


def _entropy(density: float) -> float:
    if density <= 0 or density >= 1:
        return 0.0
    return -(density * math.log2(density) + (1 - density) * math.log2(1 - density))


def build_space(
    model: nn.Module,
    task: Task,
    knobs: Sequence[str],
    ranges: Mapping[str, Sequence[float]] | None = None,
) -> Space:
    """The knobs' grids and layers for ``model`` (never modified)."""
    from torchslim.measure import count_macs
    from torchslim.techniques.pruning import PRUNABLE

    ranges = dict(ranges or {})
    unknown = [name for name in ranges if name not in knobs]
    if unknown:
        raise ConfigError(
            f"a range is given for {unknown[0]!r}, which is not among the techniques "
            f"{list(knobs)}; add it to the techniques"
        )
    if all(knob in knobs for knob in EXCLUSIVE):
        raise ConfigError(
            "codebook_quant and linear_int8 both replace the Linear layers; search one of them"
        )
    grids = {
        knob: check_grid(knob, ranges.get(knob, DEFAULT_GRIDS.get(knob, ()))) for knob in knobs
    }
    weighted = [name for name, _ in Scope().select(model, PRUNABLE)]
    layers: dict[str, list[str]] = {}
    embedding = (0, 0)
    for knob in knobs:
        if knob == "embedding_quant":
            from torchslim.techniques.embedding_quant import word_embedding_tables

            tables = word_embedding_tables(model)
            if not tables:
                raise ConfigError(
                    "embedding_quant finds no nn.Embedding table in this model; drop it"
                )
            embedding = tuple(tables[0][1].weight.shape)  # type: ignore[assignment]
            layers[knob] = [GLOBAL]
        elif knob in PER_MODEL:
            layers[knob] = [GLOBAL]
        elif knob == "channel_pruning":
            layers[knob] = _channel_roots(model, task)
        elif knob == "linear_int8":
            modules = dict(model.named_modules())
            layers[knob] = [name for name in weighted if isinstance(modules[name], nn.Linear)]
        elif knob == "svd":  # Linear layers but the output layer (kept by the technique)
            from torchslim.techniques.channels import final_layers

            last = {id(m) for m in final_layers(model, task.inputs(1))}
            modules = dict(model.named_modules())
            layers[knob] = [
                name
                for name in weighted
                if isinstance(modules[name], nn.Linear) and id(modules[name]) not in last
            ]
        else:
            layers[knob] = list(weighted)
        if not layers[knob]:
            raise ConfigError(f"{knob} finds no layer to act on in this model; drop it")
    modules = dict(model.named_modules())
    params = {name: modules[name].weight.numel() for name in weighted}
    biases = {
        name: modules[name].bias.numel()
        for name in weighted
        if getattr(modules[name], "bias", None) is not None
    }
    macs = count_macs(model, task.inputs(1)).per_layer
    other = sum(p.numel() for p in model.parameters()) - sum(params.values())
    couplings = (
        _couplings(model, task, layers["channel_pruning"], params)
        if "channel_pruning" in layers
        else {}
    )
    return Space(
        grids,
        layers,
        params,
        {k: v for k, v in macs.items() if k in params},
        other,
        biases,
        couplings,
        embedding,
        {name: modules[name].weight.shape[0] for name in weighted},
    )


def _couplings(
    model: nn.Module,
    task: Task,
    roots: Sequence[str],
    params: Mapping[str, int],
    probe: float = 0.5,
) -> dict[str, dict[str, float]]:
    """Per channel-group root: each layer's share of weights removed per unit of ratio.

    Measured by pruning each group alone at ``probe`` on a copy (the model is untouched).
    """
    import copy

    from torchslim.techniques.base import ApplyContext, apply
    from torchslim.techniques.channels import ChannelPruning

    couplings: dict[str, dict[str, float]] = {}
    for root in roots:
        pruned = copy.deepcopy(model)
        config = ChannelPruning(
            ratio=probe, mode="layer", layer_ratios=((root, probe),), scope=Scope(include=(root,))
        )
        try:
            pruned = apply(pruned, config, task, context=ApplyContext(task=task))
        except Exception:  # noqa: BLE001 - a group the pruner refuses: its own outputs only
            couplings[root] = {root: 1.0}
            continue
        modules = dict(pruned.named_modules())
        shares = {}
        for name, count in params.items():
            module = modules.get(name)
            weight = getattr(module, "weight", None) if module is not None else None
            if weight is None or not count:
                continue
            removed = 1.0 - weight.numel() / count
            if removed > 0:
                shares[name] = min(1.0, removed / probe)
        couplings[root] = shares or {root: 1.0}
    return couplings


def _channel_roots(model: nn.Module, task: Task) -> list[str]:
    from torchslim.analyze import analyze_model

    analysis = analyze_model(model, task.inputs(1), task)
    return [group.root for group in analysis.groups if group.prunable]


def build_recipe(
    allocation: Allocation,
    name: str = "candidate",
    task: str | None = None,
    recovery_epochs: int = 0,
    codebook_epochs: int = 0,
    recovery: str = "finetune",
    recovery_lr: float | None = None,
    kd: dict[str, float] | None = None,
    round_to: int | None = None,
) -> Recipe:
    """The recipe of an allocation, in pipeline order (identity settings are left out).

    Args:
        allocation: per-knob, per-layer settings.
        name, task: the recipe's name and task.
        recovery_epochs: epochs of recovery after pruning (0: none).
        codebook_epochs: centroid fine-tuning epochs of codebook quantization.
        recovery: ``"finetune"`` (task loss) or ``"distill"`` (Hinton KD from the
            uncompressed baseline, the recipe's teacher).
        recovery_lr: recovery learning rate (None: the step's default, a tenth of the
            task's lr for finetune, the task's lr for distill).
        kd: temperature / alpha of the distill recovery (None: :data:`KD_ADAPTIVE`).
        round_to: keep channel-pruned widths multiples of this (None: exact ratios).
    """
    from torchslim.techniques.channels import ChannelPruning
    from torchslim.techniques.codebook import CodebookQuant
    from torchslim.techniques.lowrank import SVDFactorization
    from torchslim.techniques.pruning import MagnitudePruning
    from torchslim.techniques.quantization import StaticQuant

    if recovery not in RECOVERIES:
        raise ConfigError(f"recovery {recovery!r} is unknown; use one of {RECOVERIES}")

    steps: list[TechniqueConfig] = []
    ratios = allocation.get("channel_pruning", {})
    if any(value > 0 for value in ratios.values()):  # every group listed (see below)
        steps.append(
            ChannelPruning(
                ratio=max(ratios.values()),
                importance=CHANNEL_IMPORTANCE,
                mode="layer",
                layer_ratios=tuple((layer, float(value)) for layer, value in ratios.items()),
                round_to=round_to,
                scope=Scope(include=tuple(ratios)),
            )
        )
    lowrank = allocation.get("svd", {})
    by_ratio: dict[float, list[str]] = {}
    for layer, value in lowrank.items():
        if value < 1:
            by_ratio.setdefault(float(value), []).append(layer)
    for value, names in sorted(by_ratio.items(), reverse=True):
        steps.append(SVDFactorization(ratio=value, scope=Scope(include=tuple(names))))
    factorized = {layer for names in by_ratio.values() for layer in names}

    def pattern(layer: str) -> str:
        # a factorized layer is a chain ``layer.0``, ``layer.1``: later steps act on both
        return f"re:{re.escape(layer)}(\\.\\d+)?" if layer in factorized else layer

    sparsity = allocation.get("magnitude_pruning", {})
    if any(value > 0 for value in sparsity.values()):
        # overrides scale with sparsity / max: listing every layer at sparsity = max keeps
        # each layer's own value (0 keeps a layer dense)
        steps.append(
            MagnitudePruning(
                sparsity=max(sparsity.values()),
                mode="layer",
                overrides=tuple(
                    (pattern(layer), float(value)) for layer, value in sparsity.items()
                ),
                scope=Scope(include=tuple(pattern(layer) for layer in sparsity)),
            )
        )
    if steps and recovery_epochs > 0:
        steps.append(recovery_step(recovery, recovery_epochs, recovery_lr, kd))
    bits = allocation.get("codebook_quant", {})
    if bits:
        steps.append(
            CodebookQuant(
                bits=8,
                epochs=codebook_epochs,
                layer_bits=tuple((pattern(layer), int(value)) for layer, value in bits.items()),
                scope=Scope(include=tuple(pattern(layer) for layer in bits)),
            )
        )
    int8 = [pattern(layer) for layer, value in allocation.get("linear_int8", {}).items() if value]
    if int8:
        from torchslim.techniques.int8_linear import LinearInt8

        steps.append(LinearInt8(smooth=INT8_SMOOTH, scope=Scope(include=tuple(int8))))
    table_bits = allocation.get("embedding_quant", {}).get(GLOBAL, 32)
    if table_bits < 32:
        from torchslim.techniques.embedding_quant import EmbeddingQuant

        steps.append(
            EmbeddingQuant(
                bits=int(table_bits), group_size=EMBEDDING_GROUP if table_bits == 4 else 0
            )
        )
    if allocation.get("static_quant", {}).get(GLOBAL):
        steps.append(StaticQuant(bits=8))
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
