"""Channel pruning as the optimizer searches it: the ``channel_pruning`` knob.

Kept beside :mod:`torchslim.techniques.channels` (the technique: config, handler and the
dependency-graph helpers this module uses) so that file stays one responsibility; both
are the technique's room, imported together by :mod:`torchslim.techniques`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from torchslim.errors import UnsupportedError
from torchslim.techniques.base import ApplyContext, Scope, TechniqueConfig
from torchslim.techniques.channels import (
    ChannelPruning,
    build_graph,
    coupled_groups,
    final_layers,
)

# (kept apart at the end: the optimizer's view of channel pruning)

SEARCH_IMPORTANCE = "l1"
"""Channel ranking of the recipes the optimizer builds, pinned so that a change of the
technique's default does not silently change the cached sensitivity curves' meaning."""


def _search_roots(model: nn.Module, task: Any, weighted: Any) -> list[str]:
    """Roots of the prunable coupled groups, the classifier kept (as `torchslim analyze`)."""
    import copy

    model = copy.deepcopy(model).eval()
    inputs = task.inputs(1)
    classifier = {id(m) for m in final_layers(model, inputs)}
    try:
        graph = build_graph(model, inputs)
    except UnsupportedError:  # an untraceable model: no group (the knob says so)
        return []
    ignored = [m for m in model.modules() if id(m) in classifier]
    return [info.root for info in coupled_groups(model, graph, ignored) if info.prunable]


def _couplings(
    model: nn.Module, task: Any, roots: Any, params: Any, probe: float = 0.5
) -> dict[str, dict[str, float]]:
    """Per channel-group root: each layer's share of weights removed per unit of ratio.

    Measured by pruning each group alone at ``probe`` on a copy (the model is untouched);
    removing a group's outputs also removes the inputs of the layers that consume them.
    A group the pruner refuses (a TorchslimError) counts its own outputs only.
    """
    from torchslim.errors import TorchslimError
    from torchslim.techniques.base import apply

    couplings: dict[str, dict[str, float]] = {}
    for root in roots:
        config = ChannelPruning(
            ratio=probe, mode="layer", layer_ratios=((root, probe),), scope=Scope(include=(root,))
        )
        try:
            pruned = apply(model, config, task, context=ApplyContext(task=task))
        except TorchslimError:
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


def _channel_cost(values: Any, layer: str, cost: Any, couplings: Any) -> None:
    kept = 1.0
    for root, ratio in values.items():
        share = (couplings or {}).get(root, {root: 1.0}).get(layer, 0.0)
        kept *= max(0.0, 1.0 - ratio * share)
    cost.kept *= kept
    cost.out_kept = 1.0 - values.get(layer, 0.0)


def _channel_steps(values: Any, context: Any) -> list[TechniqueConfig]:
    if not any(value > 0 for value in values.values()):  # every group listed (see below)
        return []
    return [
        ChannelPruning(
            ratio=max(values.values()),
            importance=SEARCH_IMPORTANCE,
            mode="layer",
            layer_ratios=tuple((layer, float(value)) for layer, value in values.items()),
            round_to=context.round_to,
            scope=Scope(include=tuple(values)),
        )
    ]


def _register_knob() -> None:
    from torchslim.techniques.knobs import Knob, register_knob

    register_knob(
        Knob(
            name=ChannelPruning.name,
            grid=(0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8),
            rule="ratios must be in [0, 1)",
            valid=lambda value: 0 <= value < 1,
            steps=_channel_steps,
            identity=0.0,
            order=10,
            recovered=True,
            layers=_search_roots,
            measure=_couplings,
            layer_cost=_channel_cost,
            default_for=("size", "macs", "latency"),
            cache_key={"channel_importance": SEARCH_IMPORTANCE},
        )
    )


_register_knob()
