"""Unstructured and N:M pruning: importance scores, masks, and making them permanent.

Masks are ``torch.nn.utils.prune`` reparametrizations (``weight = weight_orig * weight_mask``),
so they stay enforced while the task's loop fine-tunes the model; :func:`make_permanent`
folds them into plain weights. A mask alone saves nothing: the saved size follows from the
sparse artifact (:mod:`torchslim.export.sparse`).

Importance of each weight (higher is kept):

* magnitude: ``|w|`` (per weight, L1 and L2 rank identically, so there is no ``norm``);
* gradient: ``sum_b |g_b|`` over calibration batches of the task's train split;
* Taylor (first order): ``sum_b |w * g_b|``;
* random: a seeded uniform draw (a baseline for comparisons).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import prune

from torchslim.errors import ConfigError, UnsupportedError
from torchslim.techniques.base import (
    ApplyContext,
    Scope,
    TechniqueConfig,
    register_config,
    register_handler,
)
from torchslim.techniques.knobs import Knob, LayerCost, StepContext, register_knob

if TYPE_CHECKING:
    from torchslim.task import Task

PRUNABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
MODES = ("global", "layer")


def check_fraction(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1), or a one-line ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}; pass e.g. 0.5")
    return float(value)


def check_overrides(overrides: Any, what: str = "sparsity") -> None:
    """Validate ``((pattern, fraction), ...)`` pairs; a pattern is a name, ``re:`` regex or type."""
    if not isinstance(overrides, (tuple, list)):
        raise ConfigError(f"overrides must be a list of [pattern, {what}] pairs, got {overrides!r}")
    for pair in overrides:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[0], str):
            raise ConfigError(
                f"each override must be a [pattern, {what}] pair, got {pair!r}; "
                'e.g. ["re:features\\\\.0", 0.2]'
            )
        check_fraction(f"{what} of override {pair[0]!r}", pair[1])
        Scope(include=(pair[0],))  # validates regexes


def override_for(name: str, module: nn.Module, overrides: Sequence[Sequence[Any]]) -> float | None:
    """The fraction of the last override whose pattern matches ``name`` (None if none does)."""
    found = None
    for pattern, value in overrides:
        if Scope.matches(pattern, name, module):
            found = float(value)
    return found


def select_layers(
    model: nn.Module, scope: Scope, supported: tuple[type[nn.Module], ...] = PRUNABLE
) -> list[tuple[str, nn.Module]]:
    """Modules in ``scope``; a ConfigError if a plain name is unknown or nothing matches."""
    scope.check_known(model)
    chosen = scope.select(model, supported)
    if not chosen:
        kinds = ", ".join(t.__name__ for t in supported)
        raise ConfigError(
            f"the pruning scope matches no layer (include={list(scope.include)}, "
            f"exclude={list(scope.exclude)}, types={list(scope.types)}); it must select at "
            f"least one of {kinds}"
        )
    return chosen


# ------------------------------------------------------------------ configs


@dataclass(frozen=True)
class UnstructuredPruning(TechniqueConfig):
    """Shared fields of the unstructured pruning configs.

    Args:
        sparsity: fraction of the selected weights set to zero, in [0, 1).
        mode: ``"global"`` (one threshold across layers) or ``"layer"`` (same sparsity
            per layer).
        scope: which Linear/Conv layers are pruned (e.g. ``Scope(exclude=("classifier",))``).
        overrides: ``((pattern, sparsity), ...)``: layers matching a pattern (name, ``re:``
            regex or type name) get their own sparsity, pruned layer-wise; 0 keeps them dense.
    """

    family: ClassVar[str] = "pruning"
    importance: ClassVar[str] = ""

    sparsity: float = 0.5
    mode: str = "global"
    scope: Scope = Scope()
    overrides: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        check_fraction("sparsity", self.sparsity)
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is unknown; use one of {MODES}")
        if not isinstance(self.scope, Scope):
            raise ConfigError(f"scope must be a Scope, got {type(self.scope).__name__}")
        check_overrides(self.overrides)


@dataclass(frozen=True)
class _NeedsGradients:
    """Calibration fields of the gradient-based configs."""

    batches: int = 8

    def _check_batches(self) -> None:
        if isinstance(self.batches, bool) or not isinstance(self.batches, int) or self.batches < 1:
            raise ConfigError(f"batches must be an int >= 1, got {self.batches!r}")


@register_config
@dataclass(frozen=True)
class MagnitudePruning(UnstructuredPruning):
    """Zero the smallest-magnitude weights."""

    name: ClassVar[str] = "magnitude_pruning"
    importance: ClassVar[str] = "magnitude"


@register_config
@dataclass(frozen=True)
class GradientPruning(UnstructuredPruning, _NeedsGradients):
    """Zero the weights with the smallest accumulated gradient magnitude ``sum |g|``.

    Args:
        batches: calibration batches of the task's train split used to accumulate gradients.
    """

    name: ClassVar[str] = "gradient_pruning"
    importance: ClassVar[str] = "gradient"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_batches()


@register_config
@dataclass(frozen=True)
class TaylorPruning(UnstructuredPruning, _NeedsGradients):
    """Zero the weights with the smallest first-order Taylor score ``sum |w * g|``."""

    name: ClassVar[str] = "taylor_pruning"
    importance: ClassVar[str] = "taylor"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_batches()


@register_config
@dataclass(frozen=True)
class RandomPruning(UnstructuredPruning):
    """Zero a seeded random subset of weights: the baseline other importances must beat."""

    name: ClassVar[str] = "random_pruning"
    importance: ClassVar[str] = "random"
    seed: int = 0


@register_config
@dataclass(frozen=True)
class NMSparsity(TechniqueConfig):
    """N:M semi-structured sparsity: keep the ``n`` largest of every ``m`` consecutive weights.

    Groups run along the input dimension (input channels of a conv, for each output
    channel and kernel position), the layout sparse tensor cores accelerate. Layers whose
    input size is not a multiple of ``m`` are skipped with the reason in the notes (or
    refused, if the scope names them explicitly).

    Args:
        n: weights kept per group.
        m: group size (2:4 and 4:8 are the accelerated patterns).
        scope: which Linear/Conv layers get the pattern.
    """

    name: ClassVar[str] = "nm_sparsity"
    family: ClassVar[str] = "pruning"

    n: int = 2
    m: int = 4
    scope: Scope = Scope()

    def __post_init__(self) -> None:
        for field_name in ("n", "m"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"N:M sparsity needs {field_name} >= 1, got {value!r}")
        if self.n >= self.m:
            raise ConfigError(f"N:M sparsity needs n < m, got {self.n}:{self.m}; use e.g. n=2, m=4")


# ------------------------------------------------------------------ importance


def _weight(module: nn.Module) -> torch.Tensor:
    """The dense weight tensor (``weight_orig`` under an existing mask)."""
    return getattr(module, "weight_orig", module.weight)


def _existing_mask(module: nn.Module) -> torch.Tensor | None:
    return getattr(module, "weight_mask", None)


def accumulate_gradients(
    model: nn.Module, layers: Sequence[nn.Module], task: Task | None, batches: int, taylor: bool
) -> list[torch.Tensor]:
    """Per-weight ``sum_b |g_b|`` (or ``sum_b |w * g_b|`` if ``taylor``) over train batches.

    The model's parameters are left as they were (gradients cleared, mode restored).
    """
    if task is None:
        raise ConfigError(
            "gradient and Taylor importance need data: pass task= to apply() "
            "(calibration batches come from the task's train split)"
        )
    from torchslim.device import on_device

    with on_device(model, task.device):  # the passes run on the task's device
        scores = _accumulate(model, layers, task, batches, taylor)
    return [score.cpu() for score in scores]


def _accumulate(
    model: nn.Module, layers: Sequence[nn.Module], task: Task, batches: int, taylor: bool
) -> list[torch.Tensor]:
    from torchslim.batches import call_model, split_batch
    from torchslim.device import to_device

    weights = [_weight(layer) for layer in layers]
    scores = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    was_training = model.training
    model.eval()  # deterministic (no dropout); BatchNorm uses its running statistics
    requires = [p.requires_grad for p in model.parameters()]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for weight in weights:
        weight.requires_grad_(True)
    seen = 0
    try:
        for batch in islice(task.loader("train", shuffle=False), batches):
            inputs, target = split_batch(to_device(batch, task.device))
            if target is None:
                raise ConfigError("gradient importance needs labelled train batches")
            model.zero_grad(set_to_none=True)
            task.loss(call_model(model, inputs), target).backward()
            for score, weight in zip(scores, weights, strict=True):
                grad = weight.grad if weight.grad is not None else torch.zeros_like(weight)
                score += (grad * weight.detach()).abs() if taylor else grad.abs()
            seen += 1
    finally:
        model.zero_grad(set_to_none=True)
        for parameter, flag in zip(model.parameters(), requires, strict=True):
            parameter.requires_grad_(flag)
        model.train(was_training)
    if seen == 0:
        raise ConfigError(f"task {task.name!r} has an empty train split; gradients need data")
    return scores


def importance_scores(
    model: nn.Module, layers: Sequence[nn.Module], config: UnstructuredPruning, task: Task
) -> list[torch.Tensor]:
    """One score tensor per layer, shaped like its weight; already-masked weights score -inf."""
    if config.importance == "magnitude":
        scores = [_weight(layer).detach().abs().float() for layer in layers]
    elif config.importance in ("gradient", "taylor"):
        scores = accumulate_gradients(
            model,
            layers,
            task,
            config.batches,  # type: ignore[attr-defined]  # gradient / taylor configs have it
            config.importance == "taylor",
        )
    elif config.importance == "random":
        generator = torch.Generator().manual_seed(config.seed)  # type: ignore[attr-defined]
        scores = [torch.rand(_weight(layer).shape, generator=generator) for layer in layers]
    else:  # pragma: no cover - every config sets a known importance
        raise UnsupportedError(f"importance {config.importance!r} is unknown")
    for score, layer in zip(scores, layers, strict=True):
        mask = _existing_mask(layer)
        if mask is not None:
            score.masked_fill_(mask == 0, float("-inf"))
    return scores


def keep_masks(scores: Sequence[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Masks that zero exactly ``floor(sparsity * total)`` lowest-scoring entries, jointly.

    Ties are broken by position (stable sort), so the count is exact.
    """
    flat = torch.cat([s.reshape(-1) for s in scores])
    count = int(sparsity * flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if count:
        keep[torch.sort(flat, stable=True).indices[:count]] = False
    masks, offset = [], 0
    for score in scores:
        masks.append(keep[offset : offset + score.numel()].view(score.shape).float())
        offset += score.numel()
    return masks


def apply_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Install a ``torch.nn.utils.prune`` mask on ``module.weight`` (or replace the existing one).

    Replacing keeps ``weight_orig``; callers that tighten a mask combine it with the old one.
    """
    mask = mask.to(device=_weight(module).device, dtype=_weight(module).dtype)
    if is_masked(module):
        with torch.no_grad():
            module.weight_mask.copy_(mask)
            module.weight = module.weight_orig * module.weight_mask
    else:
        prune.custom_from_mask(module, "weight", mask)
        with torch.no_grad():  # a plain tensor (not a graph node), so the model can be deep-copied
            module.weight = module.weight_orig * module.weight_mask


def is_masked(module: nn.Module) -> bool:
    """Whether ``module.weight`` carries a pruning mask."""
    return prune.is_pruned(module) and hasattr(module, "weight_mask")


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every pruning mask into its weight (in place) and return the model."""
    for module in model.modules():
        if is_masked(module):
            prune.remove(module, "weight")
    return model


def sparsity_of(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, float]:
    """Fraction of zero weights per prunable layer (masked layers read through their mask)."""
    result = {}
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE) or (layers is not None and name not in layers):
            continue
        weight = module.weight.detach()
        result[name] = float((weight == 0).sum()) / max(1, weight.numel())
    return result


# ------------------------------------------------------------------ handlers


def prune_unstructured(
    model: nn.Module, config: UnstructuredPruning, context: ApplyContext, sparsity: float | None
) -> nn.Module:
    """Mask ``model`` (in place) to ``sparsity`` (default: the config's) and note per-layer results."""
    target = config.sparsity if sparsity is None else check_fraction("sparsity", sparsity)
    chosen = select_layers(model, config.scope)
    layers = [module for _, module in chosen]
    scores = importance_scores(model, layers, config, context.task)
    global_index: list[int] = []
    per_layer: dict[int, float] = {}
    for index, (name, module) in enumerate(chosen):
        override = override_for(name, module, config.overrides)
        if override is not None:  # scaled along with a schedule's intermediate sparsity
            per_layer[index] = override * target / config.sparsity if config.sparsity else 0.0
        elif config.mode == "layer":
            per_layer[index] = target
        else:
            global_index.append(index)
    masks: dict[int, torch.Tensor] = {}
    if global_index:
        joint = keep_masks([scores[i] for i in global_index], target)
        masks.update(zip(global_index, joint, strict=True))
    for index, fraction in per_layer.items():
        masks[index] = keep_masks([scores[index]], fraction)[0]
    table = []
    for index, (name, module) in enumerate(chosen):
        apply_mask(module, masks[index])
        zeros = int((module.weight_mask == 0).sum())
        table.append({"layer": name, "weights": module.weight_mask.numel(), "zeros": zeros})
    context.notes.setdefault("pruning", []).append(
        {"technique": config.name, "sparsity": target, "mode": config.mode, "layers": table}
    )
    return model


@register_handler(MagnitudePruning)
@register_handler(GradientPruning)
@register_handler(TaylorPruning)
@register_handler(RandomPruning)
def _unstructured(
    model: nn.Module, config: UnstructuredPruning, context: ApplyContext
) -> nn.Module:
    return prune_unstructured(model, config, context, None)


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest-magnitude weights of every ``m`` along the input dimension."""
    moved = weight.detach().abs().movedim(1, -1)  # (out, *kernel, in)
    groups = moved.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    # a stable sort: among equal magnitudes the earlier position wins (deterministic masks)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices
    keep.scatter_(1, order[:, :n], True)
    return keep.view(moved.shape).movedim(-1, 1).float()


@register_handler(NMSparsity)
def _nm(model: nn.Module, config: NMSparsity, context: ApplyContext) -> nn.Module:
    chosen = select_layers(model, config.scope)
    named = {e for e in config.scope.include if not e.startswith("re:")}
    applicable, skipped = [], []
    for name, module in chosen:
        inputs = _weight(module).shape[1]
        if inputs % config.m == 0:
            applicable.append((name, module))
            continue
        reason = f"input size {inputs} is not a multiple of m={config.m}"
        if name in named:
            raise UnsupportedError(
                f"layer {name} cannot take {config.n}:{config.m} sparsity ({reason}); "
                "exclude it from the scope"
            )
        skipped.append({"layer": name, "reason": reason})
    if not applicable:
        raise UnsupportedError(
            f"no layer in scope can take {config.n}:{config.m} sparsity "
            f"({skipped[0]['reason']} for {skipped[0]['layer']}); pick layers whose input "
            f"size is a multiple of {config.m}"
        )
    for _, module in applicable:
        current = _existing_mask(module)
        if current is None:
            apply_mask(module, nm_mask(_weight(module), config.n, config.m))
        else:  # keep earlier zeros zero
            apply_mask(module, nm_mask(_weight(module) * current, config.n, config.m) * current)
    context.notes.setdefault("pruning", []).append(
        {
            "technique": config.name,
            "pattern": f"{config.n}:{config.m}",
            "layers": [name for name, _ in applicable],
            "skipped": skipped,
        }
    )
    return model


def check_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` along the input dimension has at most ``n`` non-zeros."""
    groups = weight.detach().movedim(1, -1).reshape(-1, m)
    return bool(((groups != 0).sum(dim=1) <= n).all())


# ------------------------------------------------------------------ search knob


def _sparsity_steps(values: Mapping[str, float], context: StepContext) -> list[TechniqueConfig]:
    if not any(value > 0 for value in values.values()):
        return []
    # overrides scale with sparsity / max: listing every layer at sparsity = max keeps each
    # layer's own value (0 keeps a layer dense)
    return [
        MagnitudePruning(
            sparsity=max(values.values()),
            mode="layer",
            overrides=tuple((context.scope_of(layer), float(v)) for layer, v in values.items()),
            scope=Scope(include=tuple(context.scope_of(layer) for layer in values)),
        )
    ]


def _sparsity_cost(values: Mapping[str, float], layer: str, cost: LayerCost, data: Any) -> None:
    cost.density = 1.0 - values.get(layer, 0.0)


register_knob(
    Knob(
        name=MagnitudePruning.name,
        grid=(0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97),
        rule="ratios must be in [0, 1)",
        valid=lambda value: 0 <= value < 1,
        steps=_sparsity_steps,
        identity=0.0,
        order=30,
        recovered=True,
        layer_cost=_sparsity_cost,
        default_for=("size",),
    )
)
