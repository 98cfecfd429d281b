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
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch_pruning as tp
from torch import nn

from torchslim.errors import ConfigError, ShapeError, UnsupportedError
from torchslim.techniques.base import (
    ApplyContext,
    Scope,
    TechniqueConfig,
    register_config,
    register_handler,
)
from torchslim.techniques.fused_qkv import (
    cuts_outputs,
    fused_attention,
    fused_error,
    is_qkv_group,
    tie_fused_attention,
    update_fused_attention,
)
from torchslim.techniques.heads import HeadPrunedAttention, prune_heads, supports_head_pruning
from torchslim.techniques.pruning import check_fraction, check_overrides, override_for

if TYPE_CHECKING:
    from torchslim.task import Task

ROOTS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
IMPORTANCES = ("l1", "l2", "bn_scale", "taylor", "random")
ATTENTION: tuple[type[nn.Module], ...] = (nn.MultiheadAttention, HeadPrunedAttention)
MODES = ("layer", "global", "macs")


@register_config
@dataclass(frozen=True)
class ChannelPruning(TechniqueConfig):
    """Remove output channels / neurons and every coupled input, physically.

    Args:
        ratio: fraction of each coupled group's channels removed, in [0, 1).
        importance: ``"l2"`` (default, Torch-Pruning's group L2 norm) / ``"l1"`` (group
            weight norm; at 4x fewer MACs on digits32-vgg it lost more accuracy than L2
            over three fine-tuning seeds, docs/benchmarks.md), ``"bn_scale"`` (|gamma| of
            the BatchNorms in the group), ``"taylor"`` (|w * g| over calibration batches),
            or ``"random"`` (a baseline).
        mode: ``"layer"`` removes ``ratio`` from each group; ``"global"`` ranks every
            group's (mean-normalized) scores together, so layers lose different fractions;
            ``"macs"`` ranks globally by importance per MAC (a channel's score divided by
            the MACs its removal saves), so compute-heavy layers (early, high-resolution
            convolutions) lose more than cheap ones, up to ``max_ratio`` of each group.
            ``ratio`` is the share of all channels removed in the global modes.
        layer_ratios: ``((pattern, ratio), ...)``: groups whose root layer matches a
            pattern (name, ``re:`` regex or type) get their own ratio (what the optimizer sets);
            a pattern matching an attention module sets its head ratio.
        max_ratio: in the ``"global"`` and ``"macs"`` modes, the largest share of a group's
            channels removed (without a cap, a global ranking empties whole groups at high
            ratios); in ``"global"`` mode ``ratio`` may not exceed it.
        head_ratio: fraction of the attention heads removed from each ``nn.MultiheadAttention``
            in scope (0: heads kept; the embedding width may still shrink, in multiples of
            the head count, which narrows every head). Heads are ranked by the norm of their
            q / k / v rows and output columns (``l1`` / ``l2``; ``bn_scale`` uses ``l2``),
            by ``taylor`` or at ``random``; the module becomes a
            :class:`~torchslim.techniques.heads.HeadPrunedAttention`.
        round_to: keep widths multiples of this (8 or 16 suit SIMD kernels); None: exact.
        scope: which layers may lose output channels; the others keep their width.
        keep_classifier: never prune the model's final layer (its outputs are the logits).
        batches: calibration batches of the task's train split for ``taylor``.
    """

    name: ClassVar[str] = "channel_pruning"
    family: ClassVar[str] = "pruning"

    ratio: float = 0.5
    importance: str = "l2"
    mode: str = "layer"
    layer_ratios: tuple[tuple[str, float], ...] = ()
    round_to: int | None = None
    scope: Scope = Scope()
    keep_classifier: bool = True
    batches: int = 8
    head_ratio: float = 0.0
    max_ratio: float = 0.75

    def __post_init__(self) -> None:
        check_fraction("ratio", self.ratio)
        check_fraction("max_ratio", self.max_ratio)
        check_fraction("head_ratio", self.head_ratio)
        if self.importance not in IMPORTANCES:
            raise ConfigError(
                f"importance {self.importance!r} is unknown; use one of {IMPORTANCES}"
            )
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is unknown; use one of {MODES}")
        check_overrides(self.layer_ratios, "ratio")
        if self.mode == "global" and self.ratio > self.max_ratio:
            raise ConfigError(
                f"global channel ratio {self.ratio} exceeds max_ratio {self.max_ratio} (the "
                "largest share any group may lose); lower the ratio or raise max_ratio (< 1)"
            )
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


def example_inputs(model: nn.Module, task: Task | None) -> Any:
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
    from torchslim.batches import call_model, eval_mode

    order: list[nn.Module] = []
    hooks = [
        module.register_forward_hook(lambda m, i, o: order.append(m))
        for module in model.modules()
        if isinstance(module, ROOTS)
    ]
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, inputs)
    except TypeError as exc:  # e.g. forward(image, meta) given one tensor
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ShapeError(
            f"channel pruning cannot call the model on the task's example inputs ({first}); "
            "a model with several inputs needs batches ((input1, input2, ...), target) or "
            "dicts of keyword arguments (a TensorDataset gives only its first tensor)"
        ) from exc
    finally:
        for hook in hooks:
            hook.remove()
    return order[-1:]


def _importance(config: ChannelPruning) -> tp.importance.Importance:
    if config.importance in ("l1", "l2"):
        return tp.importance.GroupMagnitudeImportance(p=1 if config.importance == "l1" else 2)
    if config.importance == "bn_scale":
        return tp.importance.BNScaleImportance()
    if config.importance == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.RandomImportance()


class PerMacImportance(tp.importance.Importance):
    """A group importance divided by the MACs one of its channels costs ("macs" mode).

    A channel of a group costs, summed over the group's Conv/Linear members, the member's
    MACs times the share of the member's pruned dimension that one group channel spans.
    """

    def __init__(self, inner: tp.importance.Importance, model: nn.Module, inputs: Any) -> None:
        from torchslim.measure import count_macs

        self.inner = inner
        self.macs = count_macs(model, inputs).per_layer
        self.names = {module: name for name, module in model.named_modules()}

    def cost(self, group: Any) -> float:
        """MACs saved per removed channel of ``group``."""
        channels = max(1, len(group[0].idxs))
        total = 0.0
        for dep, idxs in group:
            module = dep.target.module
            if not isinstance(module, ROOTS):
                continue
            out = cuts_outputs(dep)
            if isinstance(module, nn.Linear):
                width = module.out_features if out else module.in_features
            else:
                width = module.out_channels if out else module.in_channels
            total += self.macs.get(self.names.get(module, ""), 0) * len(idxs) / max(1, width)
        return max(total / channels, 1.0)

    def __call__(self, group: Any, **kwargs: Any) -> torch.Tensor | None:
        scores = self.inner(group, **kwargs)
        if scores is None:
            return None
        return scores / self.cost(group)


def ranked_ratios(
    model: nn.Module,
    inputs: Any,
    ignored: list[nn.Module],
    importance: tp.importance.Importance,
    ratio: float,
    max_ratio: float,
    per_mac: bool = True,
) -> dict[nn.Module, float]:
    """Per-group ratios of the global modes: the ``ratio`` share of all channels with the
    lowest importance (per MAC for the "macs" mode, as normalized by the importance for
    "global"), at most ``max_ratio`` of any group (keyed by root module). Torch-Pruning's
    own global pruning applies its ``max_pruning_ratio`` only between iterative steps, so
    one step can empty a group; ranking here keeps the cap."""
    graph = build_graph(model, inputs)
    score = PerMacImportance(importance, model, inputs) if per_mac else importance
    roots, scores = [], []
    qkvs = {module.qkv for _, module in fused_attention(model)}  # they follow the embedding
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=list(ROOTS)):
        if is_qkv_group(group, qkvs):
            continue
        values = score(group)
        if values is not None and len(values) > 1:
            roots.append(group[0].dep.target.module)
            scores.append(values.detach().float().cpu())
    if not scores:
        return {}
    flat = torch.cat(scores)
    owner = torch.cat([torch.full((len(v),), i) for i, v in enumerate(scores)])
    caps = [math.floor(len(v) * max_ratio) for v in scores]
    removed = [0] * len(scores)
    budget = int(len(flat) * ratio)
    for index in torch.argsort(flat).tolist():
        if budget <= 0:
            break
        group = int(owner[index])
        if removed[group] < caps[group]:
            removed[group] += 1
            budget -= 1
    # (k - 0.5) / n: Torch-Pruning keeps int(n * (1 - ratio)) = n - k channels exactly
    return {
        root: (k - 0.5) / len(v) if k else 0.0
        for root, k, v in zip(roots, removed, scores, strict=True)
    }


def _head_importance(config: ChannelPruning) -> str:
    return "l2" if config.importance == "bn_scale" else config.importance


def _accumulate_gradients(model: nn.Module, task: Task | None, batches: int) -> None:
    """Sum the loss gradients of ``batches`` train batches into ``.grad`` (Taylor importance)."""
    if task is None:
        raise ConfigError(
            "taylor importance needs data: pass task= to apply() (gradients come from "
            "the task's train split)"
        )
    from torchslim.batches import call_model, eval_mode, split_batch
    from torchslim.device import on_device, to_device

    model.zero_grad(set_to_none=True)
    with on_device(model, task.device), eval_mode(model):  # .grad comes back with the model
        for batch in islice(task.loader("train", shuffle=False), batches):
            inputs, target = split_batch(to_device(batch, task.device))
            task.loss(call_model(model, inputs), target).backward()


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
    fixed = head_projections(model)
    qkvs = {module.qkv for _, module in fused_attention(model)}
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
        if any(dep.target.module in fixed and cuts_outputs(dep) for dep, _ in group):
            info.prunable = False
            info.reason = "heads x head_dim of a head-pruned attention (prune heads: head_ratio)"
        if is_qkv_group(group, qkvs):
            info.prunable = False
            info.reason = "q/k/v of a fused-qkv attention: follows the embedding width"
        yield info


def head_projections(model: nn.Module) -> set[nn.Module]:
    """q / k / v projections of head-pruned attention: their widths are heads x head_dim."""
    return {
        proj
        for module in model.modules()
        if isinstance(module, HeadPrunedAttention)
        for proj in (module.q_proj, module.k_proj, module.v_proj)
    }


# ------------------------------------------------------------------ handler


@register_handler(ChannelPruning)
def _channel_pruning(model: nn.Module, config: ChannelPruning, context: ApplyContext) -> nn.Module:
    return prune_channels(model, config, context)


def prune_channels(
    model: nn.Module, config: ChannelPruning, context: ApplyContext, ratio: float | None = None
) -> nn.Module:
    """A pruned copy of ``model`` at ``ratio`` (default the config's); notes what changed."""
    ratio = config.ratio if ratio is None else check_fraction("ratio", ratio)
    original = model
    model = copy.deepcopy(model)  # surgery on a copy: a failure leaves the input as it was
    inputs = example_inputs(model, context.task)
    config.scope.check_known(model)
    fixed = head_projections(model)  # head widths change only by removing whole heads
    chosen = [(n, m) for n, m in config.scope.select(model, ROOTS) if m not in fixed]
    last = final_layers(model, inputs) if config.keep_classifier else []
    chosen = [(n, m) for n, m in chosen if m not in last]
    graph: tp.DependencyGraph | None = None
    if config.layer_ratios and any(override_for(n, m, config.layer_ratios) for n, m in chosen):
        graph = build_graph(model, inputs)
        chosen = _whole_groups(model, graph, chosen, config, {*fixed, *last})
    scale = ratio / config.ratio if config.ratio else 1.0  # schedules prune in steps
    attention, head_ratios = [], {}
    for name, module in config.scope.select(model, ATTENTION):
        override = override_for(name, module, config.layer_ratios)
        share = (config.head_ratio if override is None else override) * scale
        reason = supports_head_pruning(module)
        if reason and share > 0:
            warnings.warn(f"heads of {name} are kept: {reason}", stacklevel=2)
        elif not reason:
            attention.append((name, module))
            head_ratios[name] = share
    if not chosen and not any(head_ratios.values()):
        raise ConfigError(
            "the channel-pruning scope matches no prunable layer (the classifier is kept by "
            "default); include at least one Conv/Linear layer"
        )
    chosen_modules = {module for _, module in chosen}
    ignored = [m for m in model.modules() if isinstance(m, ROOTS) and m not in chosen_modules]
    ratios = {}
    if config.mode in ("macs", "global"):
        if config.importance == "taylor":
            _accumulate_gradients(model, context.task, config.batches)
        ratios = ranked_ratios(
            model,
            inputs,
            ignored,
            _importance(config),
            ratio,
            config.max_ratio,
            per_mac=config.mode == "macs",
        )
    for name, module in chosen:
        override = override_for(name, module, config.layer_ratios)
        if override is not None:
            ratios[module] = override * ratio / config.ratio if config.ratio else 0.0
    num_heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    round_to = config.round_to
    for heads in num_heads.values():  # MHA embed dims must stay divisible by the head count
        round_to = heads if round_to is None else math.lcm(round_to, heads)
    if config.importance == "taylor" and config.mode == "layer":
        _accumulate_gradients(model, context.task, config.batches)
    fused = fused_attention(model)
    fused_ratio = config.head_ratio * scale
    head_plan: dict[nn.Module, float] = {}
    if fused:  # q/k/v widths follow the embedding width (fused_qkv.py), whatever the scope
        qkvs = {module.qkv for _, module in fused}
        ignored = [m for m in ignored if m not in qkvs]
        default = ratio if config.mode == "layer" else 0.0
        graph = graph or build_graph(model, inputs)
        plan = tie_fused_attention(graph, ignored, fused, ratios, default, fused_ratio, ROOTS)
        ratios.update(plan.ratios)
        head_plan = plan.head_ratios
    before = _widths(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.BasePruner(
                model,
                inputs,
                importance=_importance(config),
                pruning_ratio=ratio if config.mode == "layer" else 0.0,
                pruning_ratio_dict=ratios or None,
                ignored_layers=ignored,
                round_to=round_to,
                num_heads={module.qkv: module.num_heads for _, module in fused},
                prune_num_heads=fused_ratio > 0,
                prune_head_dims=fused_ratio == 0,
                head_pruning_ratio=fused_ratio,
                head_pruning_ratio_dict=head_plan or None,
            )
            pruner.step()
            fused_table = update_fused_attention(fused, pruner)
            heads = prune_heads(model, attention, head_ratios, _head_importance(config))
    except (AssertionError, RuntimeError, KeyError, IndexError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedError(
            f"channel pruning failed on this model ({type(exc).__name__}: {first}); run "
            "`torchslim analyze` to see the coupled groups and exclude the failing layers"
        ) from exc
    finally:
        model.zero_grad(set_to_none=True)
    try:
        _check_runs(original, model, inputs)
    except UnsupportedError as exc:
        reason = fused_error(fused, config.round_to)
        if reason:
            raise UnsupportedError(reason) from exc
        raise
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
            "heads": heads + fused_table,
        }
    )
    return model


def _whole_groups(
    model: nn.Module,
    graph: tp.DependencyGraph,
    chosen: list[tuple[str, nn.Module]],
    config: ChannelPruning,
    blocked: set[nn.Module],
) -> list[tuple[str, nn.Module]]:
    """``chosen`` plus every other layer writing a group that a ``layer_ratios`` entry names.

    A ratio names a coupled group by one of its layers (``torchslim analyze`` and the
    optimizer name each group by its root). Torch-Pruning leaves a group whole when any
    layer writing it is ignored, so a scope listing only the root (the optimizer's recipes,
    its sensitivity probes) would silently prune nothing of a residual stream; the other
    writers join unless the scope excludes them (or they are ``blocked``).
    """
    allowed = Scope(exclude=config.scope.exclude, types=config.scope.types)
    allowed_modules = {m for _, m in allowed.select(model, ROOTS)} - blocked
    names = {module: name for name, module in model.named_modules()}
    have = {module for _, module in chosen}
    named = {m for n, m in chosen if override_for(n, m, config.layer_ratios) is not None}
    extra = []
    for group in graph.get_all_groups(root_module_types=list(ROOTS)):
        writers = [
            dep.target.module
            for dep, _ in group
            if cuts_outputs(dep) and isinstance(dep.target.module, ROOTS)
        ]
        if not named.intersection(writers):
            continue
        for writer in writers:
            if writer not in have and writer in allowed_modules and writer in names:
                have.add(writer)
                extra.append((names[writer], writer))
    return chosen + extra


def _check_runs(original: nn.Module, pruned: nn.Module, inputs: Any) -> None:
    """Raise UnsupportedError if the pruned model fails or changes its output shape."""
    from torchslim.batches import call_model

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
    task: Task,
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

    def reduction(ratio: float) -> float:
        pruned = apply(model, replace(config, ratio=ratio), task=task)
        return base / max(1, count_macs(pruned, inputs).macs)

    low, high = 0.0, config.max_ratio if config.mode == "global" else 0.95
    reached = False
    for _ in range(steps):
        middle = (low + high) / 2
        if reduction(middle) >= macs_reduction:
            high, reached = middle, True
        else:
            low = middle
    if not reached and (most := reduction(high)) < macs_reduction:
        # (not monotonic near the top: Torch-Pruning skips groups it would empty)
        raise ConfigError(
            f"{config.mode}-mode channel pruning did not reach {macs_reduction:g}x fewer MACs "
            f"(ratio {high:g} gives {most:.3g}x); lower the target"
            + (" or raise max_ratio" if config.mode != "layer" else "")
        )
    return high
