"""Fused-qkv attention under channel pruning: its q/k/v width is tied to the embedding width.

timm's ViT ``Attention`` (and most ViTs) computes q, k and v with one ``qkv`` Linear, splits
it into ``num_heads`` heads and reshapes the heads' output back to ``(B, N, C)``, ``C`` the
embedding width. So ``num_heads x head_dim`` must equal the embedding width after pruning,
in every block: the q/k/v width has no freedom of its own. Torch-Pruning sees two coupled
groups (the embedding: every layer writing the residual stream and reading it, qkv's inputs
included; and each block's q/k/v rows with the attention projection's inputs), so ratios
chosen per group (the optimizer's, or a global ranking) would break the model. Here the
embedding group's ratio decides, and each qkv group follows:

* head dims narrowed (``head_ratio`` 0): the kept embedding width is rounded to a multiple
  of the head count (nearest), and every head keeps ``width / num_heads`` dims;
* whole heads removed (``head_ratio`` > 0): ``ceil(head_ratio x num_heads)`` heads go (at
  most all but one) and the embedding width becomes ``heads x head_dim``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn


def fused_attention(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Attention modules that split one fused ``qkv`` Linear into ``num_heads`` heads in their
    forward (timm's and most ViTs' ``Attention``): the qkv rows are pruned head by head and
    the module's ``num_heads`` / ``head_dim`` attributes follow."""
    found = []
    for name, module in model.named_modules():
        qkv, heads = getattr(module, "qkv", None), getattr(module, "num_heads", None)
        if (
            isinstance(qkv, nn.Linear)
            and isinstance(heads, int)
            and not isinstance(heads, bool)
            and heads > 0
            and qkv.out_features % (3 * heads) == 0
        ):
            found.append((name, module))
    return found


def cuts_outputs(dep: Any) -> bool:
    """Whether a Torch-Pruning dependency removes its target's output channels."""
    return getattr(dep.handler, "__name__", "") == "prune_out_channels"


def is_qkv_group(group: Any, qkvs: set[nn.Module]) -> bool:
    """Whether a Torch-Pruning group is the q/k/v rows of a fused attention (tied)."""
    return any(dep.target.module in qkvs and cuts_outputs(dep) for dep, _ in group)


@dataclass
class FusedPlan:
    """Exact per-layer ratios that keep every fused attention consistent.

    Attributes:
        ratios: Torch-Pruning ``pruning_ratio_dict`` entries (embedding writers, qkv layers).
        head_ratios: ``head_pruning_ratio_dict`` entries (qkv layers, whole-head mode).
    """

    ratios: dict[nn.Module, float] = field(default_factory=dict)
    head_ratios: dict[nn.Module, float] = field(default_factory=dict)


def _exact(kept: int, width: int) -> float:
    """The ratio at which Torch-Pruning keeps exactly ``kept`` of ``width`` channels (it keeps
    ``int(width * (1 - ratio))``)."""
    return 0.0 if kept >= width else 1.0 - (kept + 0.5) / width


def tie_fused_attention(
    graph: Any,
    ignored: list[nn.Module],
    fused: list[tuple[str, nn.Module]],
    ratios: dict[nn.Module, float],
    default: float,
    head_ratio: float,
    roots: tuple[type[nn.Module], ...],
) -> FusedPlan:
    """Ratios that cut each embedding width consistently with the fused attention reading it.

    Args:
        graph: Torch-Pruning's dependency graph of the model being pruned.
        ignored: layers whose outputs stay (the scope's complement).
        fused: :func:`fused_attention`'s list.
        ratios: the ratios chosen so far (per layer; the embedding group's is looked up).
        default: the ratio of groups without an entry (layer mode's ratio; 0 in global modes).
        head_ratio: > 0: remove whole heads (this share of them); 0: narrow every head.
        roots: the layer types that root a group.
    """
    plan = FusedPlan()
    by_qkv = {module.qkv: module for _, module in fused}
    for qkv in by_qkv:  # left whole unless an embedding group below says otherwise
        plan.ratios[qkv] = 0.0
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=list(roots)):
        readers = [
            by_qkv[dep.target.module]
            for dep, _ in group
            if dep.target.module in by_qkv and not cuts_outputs(dep)
        ]
        if not readers:
            continue
        writers = [
            dep.target.module
            for dep, _ in group
            if cuts_outputs(dep) and isinstance(dep.target.module, roots)
        ]
        width = len(group[0].idxs)
        ratio = next((ratios[m] for m in writers if m in ratios), default)
        if head_ratio > 0:
            first = readers[0]
            head_dim = first.qkv.out_features // (3 * first.num_heads)
            removed = min(first.num_heads - 1, math.ceil(head_ratio * first.num_heads))
            kept = (first.num_heads - removed) * head_dim
        else:
            multiple = math.lcm(*(reader.num_heads for reader in readers))
            target = int(width * (1 - ratio)) if ratio > 0 else width
            nearest = math.floor(target / multiple + 0.5) * multiple  # halves round up
            kept = min(width, max(multiple, nearest))
        for writer in writers:
            plan.ratios[writer] = _exact(kept, width)
        for reader in readers:
            heads = reader.num_heads
            head_dim = reader.qkv.out_features // (3 * heads)
            if head_ratio > 0:
                gone = heads - kept // head_dim
                # any width ratio > 0 lets Torch-Pruning's head step run; dims stay whole
                plan.ratios[reader.qkv] = 0.5 if gone else 0.0
                plan.head_ratios[reader.qkv] = (gone - 0.5) / heads if gone else 0.0
            else:
                plan.ratios[reader.qkv] = _exact(kept // heads, head_dim)
    return plan


def update_fused_attention(fused: list[tuple[str, nn.Module]], pruner: Any) -> list[dict]:
    """Set ``num_heads`` / ``head_dim`` of fused-qkv attention after pruning; their table."""
    table = []
    for name, module in fused:
        heads = int(pruner.num_heads.get(module.qkv, module.num_heads))
        head_dim = module.qkv.out_features // (3 * heads)
        table.append(
            {
                "layer": name,
                "heads_before": module.num_heads,
                "heads_after": heads,
                "head_dim_after": head_dim,
            }
        )
        module.num_heads = heads
        if isinstance(getattr(module, "head_dim", None), int):
            module.head_dim = head_dim
    return table


def fused_error(fused: list[tuple[str, nn.Module]], round_to: int | None) -> str | None:
    """Why a fused-qkv attention broke: its q/k/v width no longer equals the embedding width
    that a ``reshape(B, N, C)`` in its forward expects (None when every one still does)."""
    for name, module in fused:
        inner, embed = module.qkv.out_features // 3, module.qkv.in_features
        if inner != embed:
            fix = (
                "Torch-Pruning rounds head dims in the wrong unit: drop round_to or remove "
                "whole heads (head_ratio > 0)"
                if round_to
                else f"keep both widths: exclude {name}.qkv and the layers writing the "
                "embedding with scope="
            )
            return (
                f"channel pruning left attention {name} with {module.num_heads} heads x "
                f"{inner // module.num_heads} = {inner} q/k/v channels for a {embed}-wide "
                f"embedding, which its forward cannot reshape; {fix}"
            )
    return None
