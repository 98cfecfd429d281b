"""Counting MACs and FLOPs with ``torch.utils.flop_counter``: of one example input, or,
for a model whose compute depends on its input, the mean per sample over a data split.

``model_macs`` (re-exported by :mod:`torchslim.measure`) is the one count every
Footprint uses, so ``compress``, the demo, the optimizer and ``torchslim measure`` report
the same MACs for the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from torchslim.batches import batch_size_of, call_model, eval_mode, split_batch
from torchslim.errors import ConfigError

if TYPE_CHECKING:
    from torchslim.task import Task


@dataclass
class MacCount:
    """MACs and FLOPs of one forward pass at batch size 1, total and per leaf module."""

    macs: int
    flops: int
    per_layer: dict[str, int]


def count_macs(model: nn.Module, inputs: Any) -> MacCount:
    """Count MACs and FLOPs of ``model`` on ``inputs`` (batch 1) with torch's FlopCounterMode.

    The counter covers matrix multiplies and convolutions (including grouped and
    depthwise ones) and the two matrix products of scaled-dot-product attention
    (also the CPU kernel, which torch's table leaves out); it reports FLOPs = 2 × MACs
    for them. Element-wise work (activations, normalization, softmax) is not counted,
    as is customary for MACs.
    """
    flops, inclusive = _flop_counts(model, inputs)
    return _per_sample(model, flops, inclusive, _batch_of(inputs))


def input_dependent(model: nn.Module) -> bool:
    """Whether the model's compute depends on its input: some module of it sets the class
    attribute ``input_dependent_macs = True`` (early exit, gated branches)."""
    return any(getattr(module, "input_dependent_macs", False) for module in model.modules())


def model_macs(model: nn.Module, task: Task, split: str = "test") -> MacCount:
    """The MACs per sample a Footprint reports, the one count every path uses.

    For most models: the count on one example input. For a model whose compute depends
    on its input (:func:`input_dependent`: an early exit leaves at a head, a gate skips a
    branch), the mean per sample over ``split``: every batch of the split is counted as
    the model really runs it (samples that left early are not computed further), so the
    result is the expected MACs at the exit / branch rates measured on that data.
    """
    if not input_dependent(model):
        return count_macs(model, task.inputs(1))
    from torchslim.device import on_device

    flops, samples = 0, 0
    inclusive: dict[str, int] = {}
    with on_device(model, task.device):
        for batch in task.loader(split):
            inputs, _ = split_batch(batch)
            batch_flops, batch_inclusive = _flop_counts(model, inputs)
            flops += batch_flops
            for key, value in batch_inclusive.items():
                inclusive[key] = inclusive.get(key, 0) + value
            samples += batch_size_of(inputs)
    if samples == 0:
        raise ConfigError(f"the task's {split} split is empty; MACs need at least one sample")
    return _per_sample(model, flops, inclusive, samples)


def _flop_counts(model: nn.Module, inputs: Any) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one call and the FLOPs inside each module (by qualified name)."""
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    with eval_mode(model), torch.no_grad(), counter:
        call_model(model, inputs)
    inclusive = {
        (key.split(".", 1)[1] if "." in key else ""): sum(ops.values())
        for key, ops in counter.get_flop_counts().items()
        if key != "Global"
    }
    return counter.get_total_flops(), inclusive


def _per_sample(
    model: nn.Module, total_flops: int, inclusive: dict[str, int], samples: int
) -> MacCount:
    """MACs / FLOPs per sample, total and per layer, from counts over ``samples`` samples."""
    flops = total_flops // samples

    def counted_below(module: nn.Module, prefix: str) -> int:
        # children that ran ops; a container that is never called (nn.ModuleList) is looked
        # through to its members
        total = 0
        for child_name, child in module.named_children():
            key = f"{prefix}.{child_name}"
            total += inclusive[key] if key in inclusive else counted_below(child, key)
        return total

    per_layer: dict[str, int] = {}
    for name, module in model.named_modules():
        if name not in inclusive or not name:
            continue
        own = inclusive[name] - counted_below(module, name)
        if own > 0:  # the module itself runs the op (a leaf, or a wrapper calling F.conv/linear)
            per_layer[name] = own // 2 // samples
    return MacCount(macs=flops // 2, flops=flops, per_layer=per_layer)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


def _batch_of(inputs: Any) -> int:
    return max(1, batch_size_of(inputs))
