"""Structured pruning of transformer encoders: attention heads and FFN neurons, removed for real.

Works on any ``nn.Module`` that contains a ``ModuleList`` of BERT-family encoder layers,
found by structure rather than by class:

* BERT / MiniLM / RoBERTa / ELECTRA style: ``attention.self.{query,key,value}``,
  ``attention.output.dense``, ``intermediate.dense``, ``output.dense``;
* DistilBERT style: ``attention.{q_lin,k_lin,v_lin,out_lin}``, ``ffn.{lin1,lin2}``.

So a bare ``BertModel``, a sentence-embedding wrapper holding it as ``backbone`` and an
``AutoModelForSequenceClassification`` all work the same.

**Head pruning** removes whole heads: the head's rows of Q, K and V (weights and biases)
and the matching input columns of the attention output projection, so the four shapes
stay coupled. The attention module's ``num_attention_heads`` (``n_heads``) and
``all_head_size`` are updated; transformers 5.x reshapes with ``view(..., -1,
head_size)``, so layers may keep different head counts. **FFN pruning** removes
intermediate neurons: rows of the FFN input projection and columns of its output
projection. Slicing uses ``transformers.pytorch_utils.prune_linear_layer``.

Importance (per head / per neuron, per layer):

* ``magnitude``: L2 norm of the unit's weights (Q/K/V rows + output columns for a head;
  input row × output column norms for a neuron). Needs no data.
* ``taylor``: first-order Taylor / empirical Fisher (Michel et al. 2019, Kwon et al. 2022):
  every head and neuron gets a gate ``m = 1`` multiplying its output; the score is the sum
  over calibration batches of ``(∂L/∂m)²``. ``L`` is the task's loss when batches carry
  class labels; for unlabelled data and float targets (embeddings, whose target is the
  model's own output, so the loss and its gradient are zero) ``L = <f(x), r>`` with a fresh Gaussian ``r``
  per batch, whose squared gate gradient estimates ``‖∂f(x)/∂m‖²`` — the first-order change
  of the output when the unit is removed (Hutchinson's trick).
* ``activation``: mean size of the unit's contribution to the layer output over the
  calibration tokens (``‖W_o[:, head]·ctx_head‖``; ``|a|·‖W_2[:, neuron]‖``, as in Wanda).
  Forward passes only.

Ratios apply per layer (``ratio``, or ``layer_ratios`` with one entry per layer), or
globally (``allocation="global"``: the lowest-scoring units over all layers, each layer
keeping at least one head / ``min_ffn`` neurons).

**Checkpoint record.** Pruned layers can differ in width, which a ``BertConfig`` cannot
say. :func:`encoder_structure` returns a JSON record, to be stored in a checkpoint spec
under ``spec["hf_structure"]``::

    {"container": "backbone.encoder.layer",      # the ModuleList of encoder layers
     "style": "bert",                             # or "distilbert"
     "layers": [{"heads": 10, "head_size": 32, "intermediate": 768,
                 "teacher_index": 0}, ...]}       # one entry per (kept) layer

:func:`apply_encoder_structure` takes a model built from the original ``config.json``
and reshapes it to that record (dropping trailing layers, shrinking Q/K/V/output and
FFN Linears to empty modules of the recorded sizes) so the pruned weights then load
with a strict state-dict load — no pickling.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from torchslim.batches import calibration_batches
from torchslim.errors import CheckpointError, ConfigError, UnsupportedError
from torchslim.techniques.base import (
    ApplyContext,
    TechniqueConfig,
    register_config,
    register_handler,
)
from torchslim.techniques.int8_linear import register_value_out_finder

SPEC_KEY = "hf_structure"

# (style, head-count attribute, q, k, v, attention-holder, out, ffn_in, ffn_out)
_STYLES: dict[str, dict[str, str]] = {
    "bert": {
        "attention": "attention.self",
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "out": "attention.output.dense",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
        "heads_attr": "num_attention_heads",
    },
    "distilbert": {
        "attention": "attention",
        "query": "attention.q_lin",
        "key": "attention.k_lin",
        "value": "attention.v_lin",
        "out": "attention.out_lin",
        "ffn_in": "ffn.lin1",
        "ffn_out": "ffn.lin2",
        "heads_attr": "n_heads",
    },
}


def _get(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = getattr(module, part, None)
        if not isinstance(module, nn.Module):
            return None
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, child, value)


def _style_of(layer: nn.Module) -> str | None:
    for style, names in _STYLES.items():
        linears = [names[k] for k in ("query", "key", "value", "out", "ffn_in", "ffn_out")]
        if all(isinstance(_get(layer, n), nn.Linear) for n in linears):
            attention = _get(layer, names["attention"])
            if attention is not None and hasattr(attention, "attention_head_size"):
                return style
    return None


@dataclass
class EncoderLayer:
    """One encoder layer and where its coupled Linears live."""

    index: int
    layer: nn.Module
    style: str

    def _names(self) -> dict[str, str]:
        return _STYLES[self.style]

    def linear(self, role: str) -> nn.Linear:
        return _get(self.layer, self._names()[role])  # type: ignore[return-value]

    def replace(self, role: str, module: nn.Module) -> None:
        _set(self.layer, self._names()[role], module)

    @property
    def attention(self) -> nn.Module:
        return _get(self.layer, self._names()["attention"])  # type: ignore[return-value]

    @property
    def head_size(self) -> int:
        return int(self.attention.attention_head_size)

    @property
    def num_heads(self) -> int:
        return self.linear("query").out_features // self.head_size

    @property
    def intermediate(self) -> int:
        return self.linear("ffn_in").out_features

    def set_heads(self, heads: int) -> None:
        attention = self.attention
        setattr(attention, self._names()["heads_attr"], heads)
        if hasattr(attention, "all_head_size"):
            attention.all_head_size = heads * self.head_size


def find_encoder(model: nn.Module) -> tuple[str, nn.ModuleList, list[EncoderLayer]]:
    """The ``ModuleList`` of BERT-like encoder layers in ``model``: (name, list, layers).

    Raises:
        UnsupportedError: no such list (names which module names were expected).
    """
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        styles = [_style_of(child) for child in module]
        if styles[0] is not None and all(s == styles[0] for s in styles):
            layers = [EncoderLayer(i, child, styles[0]) for i, child in enumerate(module)]
            return name, module, layers
    raise UnsupportedError(
        f"{type(model).__name__} has no list of BERT-like encoder layers (expected modules "
        "attention.self.query/key/value, attention.output.dense, intermediate.dense, "
        "output.dense, or DistilBERT's attention.q_lin/k_lin/v_lin/out_lin, ffn.lin1/lin2); "
        "structured transformer pruning supports BERT-family encoders only"
    )


def encoder_layers(model: nn.Module) -> list[EncoderLayer]:
    """The encoder layers of ``model`` (see :func:`find_encoder`)."""
    return find_encoder(model)[2]


# ------------------------------------------------------------------ surgery


def _keep_index(keep: Sequence[int], size: int, what: str) -> torch.Tensor:
    index = sorted({int(i) for i in keep})
    if not index:
        raise ConfigError(f"{what}: keeping nothing would remove the whole block; keep >= 1")
    if index[0] < 0 or index[-1] >= size:
        raise ConfigError(f"{what}: indices must be in [0, {size - 1}], got {list(keep)}")
    return torch.tensor(index, dtype=torch.long)


def _slice(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    from transformers.pytorch_utils import prune_linear_layer

    new = prune_linear_layer(layer, index, dim=dim)
    new.to(dtype=layer.weight.dtype)
    new.weight.requires_grad_(layer.weight.requires_grad)
    if new.bias is not None and layer.bias is not None:
        new.bias.requires_grad_(layer.bias.requires_grad)
    return new.train(layer.training)


def prune_heads(model: nn.Module, keep: dict[int, Sequence[int]]) -> nn.Module:
    """Keep only the listed heads of each listed layer (in place); others untouched.

    Q/K/V lose the heads' rows, the attention output projection the matching columns.

    Raises:
        ConfigError: an index out of range, or a layer left with zero heads.
    """
    layers = encoder_layers(model)
    plans = {}
    for index, heads in keep.items():
        if not 0 <= index < len(layers):
            raise ConfigError(f"layer index {index} is out of range (0..{len(layers) - 1})")
        enc = layers[index]
        kept = _keep_index(heads, enc.num_heads, f"head pruning of layer {index}")
        size = enc.head_size
        rows = (kept[:, None] * size + torch.arange(size)[None, :]).reshape(-1)
        plans[index] = (kept, rows)
    for index, (kept, rows) in plans.items():
        enc = layers[index]
        if len(kept) == enc.num_heads:
            continue
        for role in ("query", "key", "value"):
            enc.replace(role, _slice(enc.linear(role), rows, 0))
        enc.replace("out", _slice(enc.linear("out"), rows, 1))
        enc.set_heads(len(kept))
    return model


def prune_ffn(model: nn.Module, keep: dict[int, Sequence[int]]) -> nn.Module:
    """Keep only the listed intermediate neurons of each listed layer (in place)."""
    layers = encoder_layers(model)
    plans = {}
    for index, neurons in keep.items():
        if not 0 <= index < len(layers):
            raise ConfigError(f"layer index {index} is out of range (0..{len(layers) - 1})")
        enc = layers[index]
        plans[index] = _keep_index(neurons, enc.intermediate, f"FFN pruning of layer {index}")
    for index, kept in plans.items():
        enc = layers[index]
        if len(kept) == enc.intermediate:
            continue
        enc.replace("ffn_in", _slice(enc.linear("ffn_in"), kept, 0))
        enc.replace("ffn_out", _slice(enc.linear("ffn_out"), kept, 1))
    return model


# ------------------------------------------------------------------ importance


def magnitude_scores(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer head scores and FFN-neuron scores from weight norms (no data)."""
    heads, ffn = [], []
    with torch.no_grad():
        for enc in encoder_layers(model):
            h, d = enc.num_heads, enc.head_size
            total = torch.zeros(h)
            for role in ("query", "key", "value"):
                w = enc.linear(role).weight.detach().float()
                total += w.reshape(h, d, -1).pow(2).sum(dim=(1, 2))
            out = enc.linear("out").weight.detach().float()
            total += out.reshape(out.shape[0], h, d).pow(2).sum(dim=(0, 2))
            heads.append(total.sqrt())
            w_in = enc.linear("ffn_in").weight.detach().float().norm(dim=1)
            w_out = enc.linear("ffn_out").weight.detach().float().norm(dim=0)
            ffn.append(w_in * w_out)
    return heads, ffn


def enc_device(layers: list[EncoderLayer]) -> torch.device:
    """The device of the encoder layers' weights (where importance passes run)."""
    return layers[0].linear("out").weight.device if layers else torch.device("cpu")


class _Gates:
    """Gates of ones on every head and FFN neuron (pre-hooks on the output projections)."""

    def __init__(self, layers: list[EncoderLayer]) -> None:
        device = enc_device(layers)
        self.heads = [
            torch.ones(enc.num_heads, device=device, requires_grad=True) for enc in layers
        ]
        self.ffn = [
            torch.ones(enc.intermediate, device=device, requires_grad=True) for enc in layers
        ]
        self.handles = []
        for enc, head_gate, ffn_gate in zip(layers, self.heads, self.ffn, strict=True):
            size = enc.head_size
            self.handles.append(
                enc.linear("out").register_forward_pre_hook(self._hook(head_gate, size))
            )
            self.handles.append(
                enc.linear("ffn_out").register_forward_pre_hook(self._hook(ffn_gate, 1))
            )

    @staticmethod
    def _hook(gate: torch.Tensor, repeat: int):
        def hook(module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            scale = gate.repeat_interleave(repeat) if repeat > 1 else gate
            return (x * scale.to(x.dtype), *args[1:])

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def taylor_scores(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Any = None,
    seed: int = 0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Fisher/Taylor head and neuron scores: sum over batches of squared gate gradients.

    Args:
        model: the model (left unchanged, in its original mode; dropout is off meanwhile).
        batches: calibration batches (dicts of inputs, optionally with ``labels``).
        loss_fn: ``(outputs, target) -> loss`` used when a batch has integer class labels;
            other batches use a random projection of the outputs (module docstring).
        seed: seed of the random projections.

    Raises:
        ConfigError: no calibration batches.
    """
    from torchslim.batches import call_model, eval_mode, split_batch

    layers = encoder_layers(model)
    gates = _Gates(layers)
    generator = torch.Generator().manual_seed(seed)
    device = enc_device(layers)
    head_scores = [torch.zeros(enc.num_heads, device=device) for enc in layers]
    ffn_scores = [torch.zeros(enc.intermediate, device=device) for enc in layers]
    count = 0
    try:
        with eval_mode(model):
            for batch in batches:
                inputs, target = split_batch(batch)
                outputs = call_model(model, inputs)
                if not isinstance(outputs, torch.Tensor):
                    outputs = outputs[0]
                if target is not None and loss_fn is not None and not target.is_floating_point():
                    loss = loss_fn(
                        outputs, target.to(outputs.device)
                    )  # class labels: the task's own loss
                else:
                    r = torch.randn(outputs.shape, generator=generator)  # same on any device
                    r = r.to(outputs.device, outputs.dtype)
                    loss = (outputs * r).sum()
                grads = torch.autograd.grad(loss, [*gates.heads, *gates.ffn], allow_unused=True)
                for i, grad in enumerate(grads[: len(layers)]):
                    if grad is not None:
                        head_scores[i] += grad.detach().float().pow(2)
                for i, grad in enumerate(grads[len(layers) :]):
                    if grad is not None:
                        ffn_scores[i] += grad.detach().float().pow(2)
                count += 1
    finally:
        gates.remove()
    if count == 0:
        raise ConfigError("taylor importance needs calibration batches; the data split is empty")
    return head_scores, ffn_scores


@torch.no_grad()
def activation_scores(
    model: nn.Module, batches: Iterable[Any]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mean size of each unit's contribution to the layer output on calibration data.

    A head's score is the mean over (non-padding) tokens of ``‖W_o[:, head] · ctx_head‖``;
    a neuron's, the mean of ``|a_neuron| · ‖W_2[:, neuron]‖`` (Wanda-style: weights times
    activations). Forward passes only.
    """
    from torchslim.batches import call_model, eval_mode, split_batch

    layers = encoder_layers(model)
    device = enc_device(layers)
    head_scores = [torch.zeros(enc.num_heads, device=device) for enc in layers]
    ffn_scores = [torch.zeros(enc.intermediate, device=device) for enc in layers]
    state: dict[str, Any] = {"mask": None, "tokens": 0.0}

    def weights(x: torch.Tensor) -> torch.Tensor:
        mask = state["mask"]
        if mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]):
            return mask.to(x.device, x.dtype)
        return torch.ones(x.shape[:-1], dtype=x.dtype, device=x.device)

    def head_hook(index: int, enc: EncoderLayer):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].float()
            w = module.weight.float()
            d = enc.head_size
            mask = weights(x)
            for h in range(x.shape[-1] // d):
                y = x[..., h * d : (h + 1) * d] @ w[:, h * d : (h + 1) * d].T
                head_scores[index][h] += float((y.norm(dim=-1) * mask).sum())

        return hook

    def ffn_hook(index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].float().abs()
            mask = weights(x).unsqueeze(-1)
            col = module.weight.float().norm(dim=0)
            ffn_scores[index] += (x * mask).sum(dim=tuple(range(x.dim() - 1))) * col

        return hook

    handles = []
    for i, enc in enumerate(layers):
        handles.append(enc.linear("out").register_forward_pre_hook(head_hook(i, enc)))
        handles.append(enc.linear("ffn_out").register_forward_pre_hook(ffn_hook(i)))
    count = 0
    try:
        with eval_mode(model):
            for batch in batches:
                inputs, _ = split_batch(batch)
                state["mask"] = inputs.get("attention_mask") if isinstance(inputs, dict) else None
                call_model(model, inputs)
                count += 1
    finally:
        for handle in handles:
            handle.remove()
    if count == 0:
        raise ConfigError("activation importance needs calibration batches; the data is empty")
    return head_scores, ffn_scores


# ------------------------------------------------------------------ allocation


def _per_layer_counts(sizes: list[int], ratios: list[float], minimum: int, what: str) -> list[int]:
    """Units to keep per layer for per-layer pruning ratios."""
    counts = []
    for index, (size, ratio) in enumerate(zip(sizes, ratios, strict=True)):
        keep = size - int(round(ratio * size))
        if keep < minimum:
            raise ConfigError(
                f"{what} ratio {ratio} would leave layer {index} with {keep} of {size} "
                f"(at least {minimum} must stay); lower the ratio for that layer"
            )
        counts.append(keep)
    return counts


def _global_counts(
    scores: list[torch.Tensor], ratio: float, minimum: int, normalize: bool
) -> list[int]:
    """Units to keep per layer when the lowest-scoring units over all layers go."""
    total = sum(len(s) for s in scores)
    remove = int(round(ratio * total))
    entries: list[Any] = []
    for layer, s in enumerate(scores):
        values = s / s.mean().clamp_min(1e-30) if normalize else s
        entries.extend((float(v), layer) for v in values)
    entries.sort()
    counts = [len(s) for s in scores]
    for _, layer in entries:
        if remove == 0:
            break
        if counts[layer] > minimum:
            counts[layer] -= 1
            remove -= 1
    return counts


def _round_keep(count: int, size: int, multiple: int) -> int:
    if multiple <= 1:
        return count
    return min(size, max(multiple, int(math.ceil(count / multiple)) * multiple))


def _top(scores: torch.Tensor, count: int) -> list[int]:
    order = torch.argsort(scores, descending=True, stable=True)
    return sorted(int(i) for i in order[:count])


# ------------------------------------------------------------------ configs


def _check_ratio(owner: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{owner}.{name} must be in [0, 1) (the fraction removed), got {value!r}")


@dataclass(frozen=True)
class _EncoderPruning(TechniqueConfig):
    """Shared fields of head and FFN pruning.

    Args:
        ratio: fraction of units removed in each layer (or overall, with global allocation).
        layer_ratios: one ratio per encoder layer, overriding ``ratio`` (per-layer).
        importance: ``magnitude`` (weights only), ``taylor`` (gradients on calibration data)
            or ``activation`` (weights × activations on calibration data, forward only).
        allocation: ``uniform`` (same ratio per layer) or ``global`` (lowest scores overall).
        calibration_batches: batches of the task's train split used by ``taylor``.
    """

    family = "pruning"
    ratio: float = 0.25
    layer_ratios: tuple[float, ...] = ()
    importance: Literal["magnitude", "taylor", "activation"] = "magnitude"
    allocation: Literal["uniform", "global"] = "uniform"
    calibration_batches: int = 8

    def __post_init__(self) -> None:
        _check_ratio(self.name, "ratio", self.ratio)
        for value in self.layer_ratios:
            _check_ratio(self.name, "layer_ratios[...]", value)
        if self.importance not in ("magnitude", "taylor", "activation"):
            raise ConfigError(
                f"{self.name}.importance {self.importance!r} is unknown; use 'magnitude', "
                "'taylor' or 'activation'"
            )
        if self.allocation not in ("uniform", "global"):
            raise ConfigError(
                f"{self.name}.allocation {self.allocation!r} is unknown; use 'uniform' or 'global'"
            )
        if self.layer_ratios and self.allocation == "global":
            raise ConfigError(
                f"{self.name}: layer_ratios and allocation='global' exclude each other; pick one"
            )
        if (
            isinstance(self.calibration_batches, bool)
            or not isinstance(self.calibration_batches, int)
            or self.calibration_batches < 1
        ):
            raise ConfigError(
                f"{self.name}.calibration_batches must be an integer >= 1, "
                f"got {self.calibration_batches!r}"
            )

    def ratios(self, layers: int) -> list[float]:
        if not self.layer_ratios:
            return [self.ratio] * layers
        if len(self.layer_ratios) != layers:
            raise ConfigError(
                f"{self.name}.layer_ratios has {len(self.layer_ratios)} entries but the model has "
                f"{layers} encoder layers; give one ratio per layer"
            )
        return list(self.layer_ratios)


@register_config
@dataclass(frozen=True)
class HeadPruning(_EncoderPruning):
    """Remove attention heads of a BERT-family encoder (Q/K/V rows + output columns).

    Each layer keeps at least one head; a ratio that would remove all of a layer's heads
    is an error (a layer cannot run with zero heads).
    """

    name = "head_pruning"


@register_config
@dataclass(frozen=True)
class FFNPruning(_EncoderPruning):
    """Remove intermediate (FFN) neurons of a BERT-family encoder.

    Args:
        multiple: round each layer's kept width up to a multiple of this (1: exact);
            widths that are multiples of 8 or 16 run faster on most CPU kernels.
    """

    name = "ffn_pruning"
    multiple: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            isinstance(self.multiple, bool)
            or not isinstance(self.multiple, int)
            or self.multiple < 1
        ):
            raise ConfigError(
                f"ffn_pruning.multiple must be an integer >= 1, got {self.multiple!r}"
            )


def _scores(model: nn.Module, config: _EncoderPruning, context: ApplyContext):
    if config.importance == "magnitude":
        return magnitude_scores(model)
    task = context.task
    batches = calibration_batches(
        task, config.calibration_batches, f"{config.importance} importance"
    )
    from torchslim.device import on_device

    seed = getattr(getattr(task, "train_config", None), "seed", 0)
    with on_device(model, task.device):  # importance passes on the task's device
        if config.importance == "activation":
            heads, ffn = activation_scores(model, batches)
        else:
            heads, ffn = taylor_scores(model, batches, getattr(task, "loss", None), seed=seed)
    return [h.cpu() for h in heads], [f.cpu() for f in ffn]


def plan_heads(
    model: nn.Module, config: HeadPruning, scores: list[torch.Tensor]
) -> dict[int, list[int]]:
    """Heads kept per layer for ``config`` given per-layer ``scores``."""
    sizes = [len(s) for s in scores]
    if config.allocation == "global":
        counts = _global_counts(scores, config.ratio, 1, config.importance == "magnitude")
    else:
        counts = _per_layer_counts(sizes, config.ratios(len(sizes)), 1, "head_pruning")
    return {i: _top(s, c) for i, (s, c) in enumerate(zip(scores, counts, strict=True))}


def plan_ffn(
    model: nn.Module, config: FFNPruning, scores: list[torch.Tensor]
) -> dict[int, list[int]]:
    """FFN neurons kept per layer for ``config`` given per-layer ``scores``."""
    sizes = [len(s) for s in scores]
    if config.allocation == "global":
        counts = _global_counts(scores, config.ratio, 1, config.importance == "magnitude")
    else:
        counts = _per_layer_counts(sizes, config.ratios(len(sizes)), 1, "ffn_pruning")
    counts = [_round_keep(c, n, config.multiple) for c, n in zip(counts, sizes, strict=True)]
    return {i: _top(s, c) for i, (s, c) in enumerate(zip(scores, counts, strict=True))}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _prune_units(
    model: nn.Module,
    config: HeadPruning | FFNPruning,
    context: ApplyContext,
    kind: str,
) -> nn.Module:
    """Score, plan and remove heads (``kind="heads"``) or FFN neurons (``"width"``); note it."""
    config.ratios(len(encoder_layers(model)))  # layer count check before any work
    before = _params(model)
    head_scores, ffn_scores = _scores(model, config, context)
    scores = head_scores if kind == "heads" else ffn_scores
    plan = (plan_heads if kind == "heads" else plan_ffn)(model, config, scores)
    (prune_heads if kind == "heads" else prune_ffn)(model, plan)
    context.notes.setdefault(config.name, []).append(
        {
            "importance": config.importance,
            f"{kind}_before": [len(s) for s in scores],
            f"{kind}_after": [len(plan[i]) for i in range(len(scores))],
            "params_before": before,
            "params_after": _params(model),
        }
    )
    return model


@register_handler(HeadPruning)
def _head_handler(model: nn.Module, config: HeadPruning, context: ApplyContext) -> nn.Module:
    return _prune_units(model, config, context, "heads")


@register_handler(FFNPruning)
def _ffn_handler(model: nn.Module, config: FFNPruning, context: ApplyContext) -> nn.Module:
    return _prune_units(model, config, context, "width")


# ------------------------------------------------------------------ checkpoint record


def encoder_structure(model: nn.Module) -> dict[str, Any]:
    """JSON record of the encoder's per-layer shapes (see the module docstring)."""
    name, _, layers = find_encoder(model)
    return {
        "container": name,
        "style": layers[0].style,
        "layers": [
            {
                "heads": enc.num_heads,
                "head_size": enc.head_size,
                "intermediate": enc.intermediate,
                "teacher_index": int(getattr(enc.layer, "torchslim_teacher_index", enc.index)),
            }
            for enc in layers
        ],
    }


def structure_changed(model: nn.Module, config: Any = None) -> bool:
    """Whether the encoder differs from what its HF ``config`` builds (layers, heads, widths)."""
    _, _, layers = find_encoder(model)
    config = config if config is not None else _find_config(model)
    if config is None:
        return True
    n_layers = getattr(config, "num_hidden_layers", getattr(config, "n_layers", None))
    heads = getattr(config, "num_attention_heads", getattr(config, "n_heads", None))
    width = getattr(config, "intermediate_size", getattr(config, "hidden_dim", None))
    if n_layers != len(layers):
        return True
    return any(enc.num_heads != heads or enc.intermediate != width for enc in layers)


def _find_config(model: nn.Module) -> Any:
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            return config
    return None


def _empty_linear(like: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    with torch.device(like.weight.device):
        new = nn.Linear(in_features, out_features, bias=like.bias is not None)
    return new.to(dtype=like.weight.dtype).train(like.training)


def apply_encoder_structure(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    """Reshape a model built from the original config to ``record`` (in place).

    Drops layers beyond the recorded count and replaces every Linear whose size changed
    by an empty one of the recorded size; load the pruned weights afterwards.

    Raises:
        CheckpointError: the record does not fit the model (names the first mismatch).
    """
    try:
        container, style, entries = record["container"], record["style"], list(record["layers"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint {SPEC_KEY} record is malformed (missing {exc}); re-create the checkpoint"
        ) from exc
    name, modules, layers = find_encoder(model)
    if name != container or layers[0].style != style:
        raise CheckpointError(
            f"checkpoint {SPEC_KEY} names encoder {container!r} ({style}) but the model has "
            f"{name!r} ({layers[0].style}); load it with the model it was saved from"
        )
    if not 1 <= len(entries) <= len(layers):
        raise CheckpointError(
            f"checkpoint {SPEC_KEY} has {len(entries)} layers; the model has {len(layers)}"
        )
    keep_layers(model, list(range(len(entries))), record_teacher=False)
    for enc, entry in zip(encoder_layers(model), entries, strict=True):
        heads, size, width = (
            int(entry["heads"]),
            int(entry["head_size"]),
            int(entry["intermediate"]),
        )
        if size != enc.head_size or not 1 <= heads <= enc.num_heads or width < 1:
            raise CheckpointError(
                f"checkpoint {SPEC_KEY} layer {enc.index} ({entry}) does not fit the model "
                f"(head size {enc.head_size}, {enc.num_heads} heads)"
            )
        if heads != enc.num_heads:
            hidden = enc.linear("query").in_features
            for role in ("query", "key", "value"):
                enc.replace(role, _empty_linear(enc.linear(role), hidden, heads * size))
            out = enc.linear("out")
            enc.replace("out", _empty_linear(out, heads * size, out.out_features))
            enc.set_heads(heads)
        if width != enc.intermediate:
            first, second = enc.linear("ffn_in"), enc.linear("ffn_out")
            enc.replace("ffn_in", _empty_linear(first, first.in_features, width))
            enc.replace("ffn_out", _empty_linear(second, width, second.out_features))
        enc.layer.torchslim_teacher_index = int(entry.get("teacher_index", enc.index))
    return model


# ------------------------------------------------------------------ layer dropping (shared)


def keep_layers(model: nn.Module, keep: list[int], record_teacher: bool = True) -> nn.Module:
    """Keep only the encoder layers at ``keep`` (sorted, in place); update the HF config."""
    name, modules, layers = find_encoder(model)
    kept = [layers[i].layer for i in keep]
    if record_teacher:
        for i, layer in zip(keep, kept, strict=True):
            if not hasattr(layer, "torchslim_teacher_index"):
                layer.torchslim_teacher_index = i
    new = nn.ModuleList(kept)
    _set(model, name, new)
    for position, layer in enumerate(kept):  # HF attention modules keep their layer index
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = position
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None:
            continue
        for attr in ("num_hidden_layers", "n_layers"):
            if isinstance(getattr(config, attr, None), int):
                setattr(config, attr, len(kept))
    return model


# ------------------------------------------------------------------ artifact hook (hf.loading)


def _artifact_save(model: nn.Module) -> dict[str, Any] | None:
    """The record when heads, widths or layers changed (or layers came from a teacher)."""
    try:
        record = encoder_structure(model)
    except UnsupportedError:
        return None
    moved = any(e["teacher_index"] != i for i, e in enumerate(record["layers"]))
    return record if moved or structure_changed(model) else None


def _artifact_load(model: nn.Module, record: dict[str, Any]) -> None:
    apply_encoder_structure(model, record)


try:  # hf.loading's artifacts call these hooks; absent loader = nothing to register
    from torchslim.hf.loading import register_artifact_hook
except ImportError:  # pragma: no cover - loader not installed
    pass
else:
    register_artifact_hook(SPEC_KEY, _artifact_save, _artifact_load)


def attention_value_out_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """``(attention output projection, value projection)`` of each encoder layer (empty for
    models that are not BERT-like encoders): SmoothQuant folds the one into the other."""
    try:
        _, _, layers = find_encoder(model)
    except UnsupportedError:
        return []
    return [(layer.linear("out"), layer.linear("value")) for layer in layers]


register_value_out_finder(attention_value_out_pairs)
