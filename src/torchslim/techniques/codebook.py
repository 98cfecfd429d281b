"""Codebook ("continuous") weight quantization: k-means weight sharing as in Deep Compression.

Each selected layer's weights are clustered into ``2^bits`` centroids with 1-D
k-means (linear initialization, which Han et al. found best); the layer then
stores one small index per weight plus the codebook. Fine-tuning trains the
centroids by gradient (the gradient of a centroid is the sum of the gradients of
the weights that share it), so a layer never has more than ``2^bits`` distinct
weight values. The packed artifact (:mod:`torchslim.export.packed`) stores the
indices bit-packed.

Pruned layers keep their sparsity (as in Deep Compression, where pruning comes
first and only the surviving weights are shared): when at least
:data:`ZERO_FRACTION` of a layer's weights are exact zeros, k-means runs on the
non-zero weights with ``2^bits - 1`` centroids and one index is reserved for an
exact zero that fine-tuning never moves, so the layer still has at most ``2^bits``
distinct values (zero included) and its zeros compress well in the packed file.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.structure import build_module, describe_module, register_module_type
from torchslim.techniques.base import (
    ApplyContext,
    Scope,
    TechniqueConfig,
    check_lr,
    register_config,
    register_handler,
)
from torchslim.techniques.fake_quant import (
    WEIGHT_TYPES,
    fold_batchnorm,
    forward_with_weight,
    layer_bits,
    set_module,
)
from torchslim.techniques.knobs import Knob, LayerCost, StepContext, register_knob
from torchslim.techniques.pruning import make_permanent
from torchslim.techniques.quant_math import check_bits, sqnr

_INITS = ("linear", "density", "random")
ZERO_FRACTION = 0.01
"""Fraction of exact zeros from which a layer reserves a codebook index for zero."""


@register_config
@dataclass(frozen=True)
class CodebookQuant(TechniqueConfig):
    """k-means weight sharing with ``2^bits`` centroids per layer, then centroid fine-tuning.

    Args:
        bits: index bits per weight (2-8), i.e. ``2^bits`` shared values per layer.
        epochs: fine-tuning epochs with the task's training loop (0: none).
        lr: fine-tuning learning rate.
        iterations: k-means iterations (Lloyd).
        init: centroid initialization: ``linear`` (evenly over [min, max]),
            ``density`` (quantiles) or ``random`` (sampled weights).
        fold_bn: fold BatchNorm into the preceding layer first.
        half_codebook: round the centroids and biases of shared layers to float16
            values (after fine-tuning), so the packed artifact stores them in 2 bytes.
        keep_zeros: layers with at least :data:`ZERO_FRACTION` exact zeros (pruned
            layers) keep them: one of the ``2^bits`` indices is an exact zero, fixed
            during fine-tuning, and k-means shares only the non-zero weights.
        layer_bits: per-layer bits by name / ``re:`` pattern / type (last match wins).
        scope: which layers are shared (``exclude`` keeps layers in float).
    """

    name = "codebook_quant"
    family = "quantization"
    bits: int = 4
    epochs: int = 0
    lr: float = 1e-3
    iterations: int = 30
    init: str = "linear"
    fold_bn: bool = True
    half_codebook: bool = True
    keep_zeros: bool = True
    layer_bits: tuple[tuple[str, int], ...] = ()
    scope: Scope = Scope()

    def __post_init__(self) -> None:
        from torchslim.techniques.quantization import check_layer_bits

        check_bits(self.bits)
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        check_lr(self.name, self.lr, optional=False)
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}")
        if self.init not in _INITS:
            raise ConfigError(f"init {self.init!r} is unknown; use one of {', '.join(_INITS)}")
        check_layer_bits(self.layer_bits)


@torch.no_grad()
def kmeans_1d(
    values: torch.Tensor, clusters: int, iterations: int = 30, init: str = "linear", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster a tensor's values into ``clusters`` centroids (1-D Lloyd's algorithm).

    Returns:
        ``(centroids, indices)``: sorted float32 centroids and, per value, its
        centroid's index (int64, same shape as ``values``).
    """
    flat = values.detach().float().reshape(-1)
    low, high = float(flat.min()), float(flat.max())
    if init == "linear":
        centroids = torch.linspace(low, high, clusters)
    elif init == "density":
        probs = torch.linspace(0, 1, clusters + 2)[1:-1]
        sample = flat if flat.numel() <= 1_000_000 else flat[:: flat.numel() // 1_000_000 + 1]
        centroids = torch.quantile(sample, probs)
    else:
        generator = torch.Generator().manual_seed(seed)
        pick = torch.randint(flat.numel(), (clusters,), generator=generator)
        centroids = flat[pick].sort().values
    for _ in range(iterations):
        centroids = centroids.sort().values
        indices = torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)
        sums = torch.zeros(clusters).index_add_(0, indices, flat)
        counts = torch.zeros(clusters).index_add_(0, indices, torch.ones_like(flat))
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        if torch.allclose(updated, centroids, rtol=0, atol=1e-9):
            centroids = updated
            break
        centroids = updated
    centroids = centroids.sort().values
    indices = torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)
    return centroids, indices.reshape(values.shape)


@torch.no_grad()
def kmeans_keep_zeros(
    values: torch.Tensor, clusters: int, iterations: int = 30, init: str = "linear", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """:func:`kmeans_1d` of the non-zero values into ``clusters - 1`` centroids, plus zero.

    Returns:
        ``(centroids, indices, zero_index)``: ``clusters`` sorted centroids, one of them
        an exact ``0.0`` at ``zero_index``, which every zero of ``values`` is assigned to.
    """
    flat = values.detach().float().reshape(-1)
    nonzero = flat != 0
    if bool(nonzero.any()):
        shared, shared_indices = kmeans_1d(flat[nonzero], clusters - 1, iterations, init, seed)
    else:  # an all-zero layer: every index is the zero
        shared, shared_indices = torch.zeros(clusters - 1), torch.zeros(0, dtype=torch.int64)
    zero_index = int((shared < 0).sum())
    centroids = torch.cat([shared[:zero_index], torch.zeros(1), shared[zero_index:]])
    indices = torch.full_like(flat, zero_index, dtype=torch.int64)
    indices[nonzero] = shared_indices + (shared_indices >= zero_index).long()
    return centroids, indices.reshape(values.shape), zero_index


class CodebookLayer(nn.Module):
    """A Linear / Conv module whose weight is ``centroids[indices]`` (shared weights).

    The module's own weight parameter is removed; ``centroids`` is a trained
    parameter, ``indices`` a uint8 buffer. ``zero_index`` (a buffer, ``-1`` when
    unused) names the index whose weights are an exact zero whatever its centroid
    holds, so pruned weights stay pruned while the centroids are fine-tuned.
    """

    def __init__(
        self,
        module: nn.Module,
        centroids: torch.Tensor,
        indices: torch.Tensor,
        bits: int,
        zero_index: int = -1,
    ):
        super().__init__()
        if not -1 <= zero_index < centroids.numel():
            raise ValueError(f"zero_index must be -1 or a centroid index, got {zero_index}")
        del module.weight
        self.module = module
        self.bits = bits
        self.centroids = nn.Parameter(centroids.float().clone())
        self.register_buffer("indices", indices.to(torch.uint8))
        self.register_buffer("zero_index", torch.tensor(zero_index, dtype=torch.int64))
        if zero_index >= 0:
            with torch.no_grad():
                self.centroids[zero_index] = 0.0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # state dicts saved before ``zero_index`` existed: no reserved zero
        state_dict.setdefault(f"{prefix}zero_index", torch.tensor(-1, dtype=torch.int64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def shared_weight(self) -> torch.Tensor:
        """The weight tensor: each entry is one of the centroids (or the reserved zero)."""
        indices = self.indices.long()
        # Same values as ``centroids``, but each centroid's gradient is the mean (not the
        # sum) over the weights sharing it: a 512x512 conv's cluster holds ~1e5 weights,
        # and a summed gradient blows up under SGD (Adam is scale-invariant either way).
        counts = torch.bincount(indices.reshape(-1), minlength=self.centroids.numel())
        scale = 1.0 / counts.clamp(min=1).to(self.centroids.dtype)
        centroids = self.centroids * scale + (self.centroids * (1 - scale)).detach()
        weight = centroids[indices]
        # branch-free (traceable): with zero_index = -1 no uint8 index matches
        return weight.masked_fill(indices == self.zero_index, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The module's operation with the shared weight."""
        return forward_with_weight(self.module, x, self.shared_weight())

    def to_float(self) -> nn.Module:
        """A plain module holding the shared weight (for export to other runtimes)."""
        plain = copy.deepcopy(self.module)
        plain.weight = nn.Parameter(self.shared_weight().detach().clone())
        return plain


@register_handler(CodebookQuant)
def _codebook(model: nn.Module, config: CodebookQuant, context: ApplyContext) -> nn.Module:
    from torchslim.techniques.quantization import select_layers

    if config.epochs > 0 and context.task is None:
        raise ConfigError(
            f"codebook_quant fine-tunes for {config.epochs} epochs: pass task= (a Task with "
            "train data) or set epochs=0"
        )
    model.eval()
    make_permanent(model)  # pruning masks become plain zeros before layers are wrapped
    folded = fold_batchnorm(model) if config.fold_bn else []
    chosen = select_layers(model, config, WEIGHT_TYPES, context)
    layers: dict[str, CodebookLayer] = {}
    weight_db: dict[str, float] = {}
    kept_zeros: dict[str, int] = {}
    for name, module in chosen:
        bits = layer_bits(name, module, config.bits, config.layer_bits)
        weight = module.weight.detach().clone()
        zeros = int((weight == 0).sum())
        zero_index = -1
        if config.keep_zeros and zeros >= ZERO_FRACTION * weight.numel():
            centroids, indices, zero_index = kmeans_keep_zeros(
                weight, 2**bits, config.iterations, config.init
            )
        else:
            centroids, indices = kmeans_1d(weight, 2**bits, config.iterations, config.init)
        layer = CodebookLayer(module, centroids, indices, bits, zero_index)
        kept_zeros[name] = zeros if zero_index >= 0 else 0
        weight_db[name] = round(sqnr(weight, layer.shared_weight()), 2)
        set_module(model, name, layer)
        layers[name] = layer
    seconds = 0.0
    if config.epochs > 0:
        result = context.task.fit(
            model, epochs=config.epochs, lr=config.lr, description="codebook fine-tune"
        )
        seconds = round(result.seconds, 3)
    if config.half_codebook:
        with torch.no_grad():
            for layer in layers.values():
                layer.centroids.copy_(layer.centroids.half().float())
                if layer.module.bias is not None:
                    layer.module.bias.copy_(layer.module.bias.half().float())
    context.notes.setdefault("quantization", {}).update(
        technique=config.name,
        simulated=False,
        folded_bn=folded,
        layers={
            name: {
                "type": type(layer.module).__name__,
                "bits": layer.bits,
                "weight_sqnr_db": weight_db[name],
                "kept_zeros": kept_zeros[name],
            }
            for name, layer in layers.items()
        },
        train_seconds=seconds,
    )
    return model.eval()


# ------------------------------------------------------------------ search knob


def _codebook_steps(values: Any, context: StepContext) -> list[TechniqueConfig]:
    if not values:
        return []
    return [
        CodebookQuant(
            bits=8,
            epochs=context.tuning_epochs,
            layer_bits=tuple((context.scope_of(layer), int(v)) for layer, v in values.items()),
            scope=Scope(include=tuple(context.scope_of(layer) for layer in values)),
        )
    ]


def _codebook_cost(values: Any, layer: str, cost: LayerCost, data: Any) -> None:
    if layer in values:
        cost.weight_bits = values[layer]
        cost.bias_bits = 16  # the packed artifact stores a shared layer's biases in fp16


def _codebook_reference(epochs: int) -> TechniqueConfig:
    """Its centroid fine-tuning: the task loss at the technique's own lr."""
    from torchslim.techniques.recovery import FineTune

    return FineTune(epochs=epochs, lr=CodebookQuant().lr)


register_knob(
    Knob(
        name=CodebookQuant.name,
        grid=(8, 6, 5, 4, 3, 2),
        rule="bits must be integers in [2, 8]",
        valid=lambda value: value == int(value) and 2 <= value <= 8,
        steps=_codebook_steps,
        descending=True,
        integer=True,
        order=60,
        layer_cost=_codebook_cost,
        exclusive="Linear layers",
        reference=_codebook_reference,
        default_for=("size",),
    )
)


# ------------------------------------------------------------------ checkpoint structure


def _describe_codebook(module: nn.Module) -> dict[str, Any] | None:
    assert isinstance(module, CodebookLayer)
    inner = describe_module(module.module)
    if inner is None:
        return None
    return {"module": inner, "bits": int(module.bits), "centroids": int(module.centroids.numel())}


def _build_codebook(args: dict[str, Any]) -> nn.Module:
    inner = build_module(args["module"])
    shape = tuple(inner.weight.shape)  # type: ignore[union-attr]
    codes = torch.zeros(shape, dtype=torch.uint8)
    return CodebookLayer(inner, torch.zeros(int(args["centroids"])), codes, int(args["bits"]))


register_module_type(CodebookLayer, _describe_codebook, _build_codebook)
