"""Structured channel pruning on Torch-Pruning's dependency graph.

Torch-Pruning finds which channels are coupled (residual additions, concatenations,
depthwise convs, BatchNorm, flatten → Linear, transformer FFNs) and cuts them; this
module owns what to cut: importance, ratios (global or per layer), scopes, rounding and
the report. The pruned model is a plain ``nn.Module`` with narrower layers; checkpoints
record the new shapes in their spec (``spec["structure"]``) so it reloads without pickling.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, ClassVar

import torch
import torch_pruning as tp
from torch import nn

from torchslim.errors import ConfigError, UnsupportedError
from torchslim.techniques.base import (
    ApplyContext,
    Scope,
    TechniqueConfig,
    register_config,
    register_handler,
)
from torchslim.techniques.pruning import MODES, check_fraction, check_overrides, override_for

ROOTS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
IMPORTANCES = ("l1", "l2", "bn_scale", "taylor", "random")


@register_config
@dataclass(frozen=True)
class ChannelPruning(TechniqueConfig):
    """Remove output channels / neurons and every coupled input, physically.

    Args:
        ratio: fraction of each coupled group's channels removed, in [0, 1).
        importance: ``"l1"`` / ``"l2"`` (group weight norm), ``"bn_scale"`` (|gamma| of
            the BatchNorms in the group), ``"taylor"`` (|w * g| over calibration batches),
            or ``"random"`` (a baseline).
        mode: ``"global"`` ranks every group's (mean-normalized) scores together, so
            layers lose different fractions; ``"layer"`` removes ``ratio`` from each group.
        layer_ratios: ``((pattern, ratio), ...)``: groups whose root layer matches a
            pattern (name, ``re:`` regex or type) get their own ratio (what the optimizer sets).
        round_to: keep widths multiples of this (8 or 16 suit SIMD kernels); None: exact.
        scope: which layers may lose output channels; the others keep their width.
        keep_classifier: never prune the model's final layer (its outputs are the logits).
        batches: calibration batches of the task's train split for ``taylor``.
    """

    name: ClassVar[str] = "channel_pruning"
    family: ClassVar[str] = "pruning"

    ratio: float = 0.5
    importance: str = "l1"
    mode: str = "layer"
    layer_ratios: tuple[tuple[str, float], ...] = ()
    round_to: int | None = None
    scope: Scope = Scope()
    keep_classifier: bool = True
    batches: int = 8

    def __post_init__(self) -> None:
        check_fraction("ratio", self.ratio)
        if self.importance not in IMPORTANCES:
            raise ConfigError(
                f"importance {self.importance!r} is unknown; use one of {IMPORTANCES}"
            )
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is unknown; use one of {MODES}")
        check_overrides(self.layer_ratios, "ratio")
        if self.round_to is not None and (
            isinstance(self.round_to, bool)
            or not isinstance(self.round_to, int)
            or self.round_to < 1
        ):
            raise ConfigError(f"round_to must be None or an int >= 1, got {self.round_to!r}")
        if isinstance(self.batches, bool) or not isinstance(self.batches, int) or self.batches < 1:
            raise ConfigError(f"batches must be an int >= 1, got {self.batches!r}")
        if not isinstance(self.scope, Scope):
            raise ConfigError(f"scope must be a Scope, got {type(self.scope).__name__}")


# ------------------------------------------------------------------ helpers


def example_inputs(model: nn.Module, task: Any) -> Any:
    """One-sample inputs for tracing: the task's, else ``model.input_shape``."""
    if task is not None:
        return task.inputs(1)
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError(
            "channel pruning traces the model and needs example inputs: pass task= to apply()"
        )
    return torch.randn(1, *shape)


def final_layers(model: nn.Module, inputs: Any) -> list[nn.Module]:
    """The last Conv/Linear layer to run in a forward pass (the classifier)."""
    from torchslim.task import call_model

    order: list[nn.Module] = []
    hooks = [
        module.register_forward_hook(lambda m, i, o: order.append(m))
        for module in model.modules()
        if isinstance(module, ROOTS)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call_model(model, inputs)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return order[-1:]


def _importance(config: ChannelPruning) -> tp.importance.Importance:
    if config.importance in ("l1", "l2"):
        return tp.importance.GroupMagnitudeImportance(p=1 if config.importance == "l1" else 2)
    if config.importance == "bn_scale":
        return tp.importance.BNScaleImportance()
    if config.importance == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.RandomImportance()


def _accumulate_gradients(model: nn.Module, task: Any, batches: int) -> None:
    """Sum the loss gradients of ``batches`` train batches into ``.grad`` (Taylor importance)."""
    if task is None:
        raise ConfigError(
            "taylor importance needs data: pass task= to apply() (gradients come from "
            "the task's train split)"
        )
    from torchslim.task import call_model, split_batch

    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        for batch in islice(task.loader("train", shuffle=False), batches):
            inputs, target = split_batch(batch)
            task.loss(call_model(model, inputs), target).backward()
    finally:
        model.train(was_training)


def _widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            widths[name] = (module.in_channels, module.out_channels)
        elif isinstance(module, nn.Linear):
            widths[name] = (module.in_features, module.out_features)
    return widths


@dataclass
class GroupInfo:
    """One coupled group of channels: its root layer, width, members, and whether it prunes."""

    root: str
    channels: int
    members: list[str]
    prunable: bool
    reason: str = ""


def build_graph(model: nn.Module, inputs: Any) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph, with tracing failures as UnsupportedError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
    except Exception as exc:  # noqa: BLE001 - tracing can fail in many ways
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedError(
            f"the model cannot be traced for channel pruning ({type(exc).__name__}: {first}); "
            "use unstructured pruning or restrict the scope"
        ) from exc


def coupled_groups(
    model: nn.Module, graph: tp.DependencyGraph, ignored: list[nn.Module]
) -> Iterator[GroupInfo]:
    """Every coupled group rooted at a Conv/Linear layer, with members and prunability."""
    names = {module: name for name, module in model.named_modules()}
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=list(ROOTS)):
        root = group[0].dep.target.module
        members = []
        for dep, _ in group:
            name = names.get(dep.target.module)
            if name and name not in members:
                members.append(name)
        info = GroupInfo(names.get(root, "?"), len(group[0].idxs), members, True)
        if isinstance(root, nn.MultiheadAttention) or any(
            isinstance(dep.target.module, nn.MultiheadAttention) for dep, _ in group
        ):
            info.reason = (
                "couples a MultiheadAttention embed dim (pruned in multiples of its heads)"
            )
        if info.channels <= 1:
            info.prunable, info.reason = False, "a single channel cannot be pruned"
        yield info


# ------------------------------------------------------------------ handler


@register_handler(ChannelPruning)
def _channel_pruning(model: nn.Module, config: ChannelPruning, context: ApplyContext) -> nn.Module:
    return prune_channels(model, config, context)


def prune_channels(
    model: nn.Module, config: ChannelPruning, context: ApplyContext, ratio: float | None = None
) -> nn.Module:
    """Prune ``model`` in place to ``ratio`` (default the config's) and note what changed."""
    ratio = config.ratio if ratio is None else check_fraction("ratio", ratio)
    original = model
    model = copy.deepcopy(model)  # surgery on a copy: a failure leaves the input as it was
    inputs = example_inputs(model, context.task)
    config.scope.check_known(model)
    chosen = config.scope.select(model, ROOTS)
    if config.keep_classifier:
        last = final_layers(model, inputs)
        chosen = [(n, m) for n, m in chosen if m not in last]
    if not chosen:
        raise ConfigError(
            "the channel-pruning scope matches no prunable layer (the classifier is kept by "
            "default); include at least one Conv/Linear layer"
        )
    chosen_modules = {module for _, module in chosen}
    ignored = [m for m in model.modules() if isinstance(m, ROOTS) and m not in chosen_modules]
    ratios = {}
    for name, module in chosen:
        override = override_for(name, module, config.layer_ratios)
        if override is not None:
            ratios[module] = override * ratio / config.ratio if config.ratio else 0.0
    num_heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    round_to = config.round_to
    for heads in num_heads.values():  # MHA embed dims must stay divisible by the head count
        round_to = heads if round_to is None else math.lcm(round_to, heads)
    if config.importance == "taylor":
        _accumulate_gradients(model, context.task, config.batches)
    before = _widths(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.BasePruner(
                model,
                inputs,
                importance=_importance(config),
                global_pruning=config.mode == "global",
                pruning_ratio=ratio,
                pruning_ratio_dict=ratios or None,
                ignored_layers=ignored,
                round_to=round_to,
            )
            pruner.step()
    except (AssertionError, RuntimeError, KeyError, IndexError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedError(
            f"channel pruning failed on this model ({type(exc).__name__}: {first}); run "
            "`torchslim analyze` to see the coupled groups and exclude the failing layers"
        ) from exc
    finally:
        model.zero_grad(set_to_none=True)
    _check_runs(original, model, inputs)
    model.eval()
    after = _widths(model)
    table = [
        {"layer": name, "out_before": before[name][1], "out_after": after[name][1]}
        for name in after
        if name in before and before[name] != after[name]
    ]
    context.notes.setdefault("pruning", []).append(
        {
            "technique": config.name,
            "ratio": ratio,
            "mode": config.mode,
            "importance": config.importance,
            "layers": table,
        }
    )
    return model


def _check_runs(original: nn.Module, pruned: nn.Module, inputs: Any) -> None:
    """Raise UnsupportedError if the pruned model fails or changes its output shape."""
    from torchslim.task import call_model

    with torch.no_grad():
        expected = call_model(original.eval(), inputs).shape
        try:
            actual = call_model(pruned.eval(), inputs).shape
        except (RuntimeError, ValueError, IndexError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsupportedError(
                f"channel pruning broke the model ({first}): a coupling was not traced "
                "(e.g. an op outside autograd); exclude those layers with scope="
            ) from exc
    if actual != expected:
        raise UnsupportedError(
            f"channel pruning changed the output shape {tuple(expected)} -> {tuple(actual)}; "
            "exclude the output layers with scope="
        )


def ratio_for_macs(
    model: nn.Module,
    config: ChannelPruning,
    task: Any,
    macs_reduction: float,
    steps: int = 8,
) -> float:
    """The smallest channel ratio at which ``config`` cuts MACs at least ``macs_reduction`` x.

    Bisection over ``ratio`` (widths are integers, so the reached reduction is a step
    function; the result reaches the target, possibly overshooting by one width step).

    Args:
        model: the unpruned model (not modified).
        config: the pruning config whose ``ratio`` is searched.
        task: supplies example inputs (and data for Taylor importance); may be None for
            models that record ``input_shape``.
        macs_reduction: the target, e.g. 4.0 for 4x fewer MACs.
        steps: bisection steps.
    """
    from dataclasses import replace

    from torchslim.measure import count_macs
    from torchslim.techniques.base import apply

    if macs_reduction <= 1:
        raise ConfigError(f"macs_reduction must be > 1, got {macs_reduction}")
    inputs = example_inputs(model, task)
    base = count_macs(model, inputs).macs
    low, high = 0.0, 0.95
    for _ in range(steps):
        middle = (low + high) / 2
        pruned = apply(model, replace(config, ratio=middle), task=task)
        if base / max(1, count_macs(pruned, inputs).macs) >= macs_reduction:
            high = middle
        else:
            low = middle
    return high
