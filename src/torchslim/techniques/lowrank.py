"""Low-rank factorization: truncated SVD of Linear layers, Tucker-2 and spatial SVD of convs.

A factorized layer becomes a :class:`Factorized` (an ``nn.Sequential`` of plain layers),
so the model stays ordinary PyTorch. Ranks are chosen per layer by an explicit rank,
a target parameter ratio, or an energy threshold (kept fraction of squared singular
values). Layers where factorization would not save parameters or MACs are left alone
and the reason is recorded in ``context.notes["lowrank"]`` with the per-layer table.

Checkpoints: :func:`factorized_structure` describes every factorized layer as JSON
(``spec["factorized"]``) and :func:`apply_factorized_structure` rebuilds them, so a
factorized model reloads from safetensors without pickling (see :func:`lowrank_io`).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchslim.artifacts import ArtifactIO, artifact_spec
from torchslim.batches import call_model, eval_mode
from torchslim.checkpoint import build_from_spec, load_checkpoint, read_spec, save_checkpoint
from torchslim.errors import CheckpointError, ConfigError
from torchslim.structure import build_module, describe_module
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

SPEC_KEY = "factorized"


class Factorized(nn.Sequential):
    """A layer replaced by a chain of smaller plain layers; ``kind`` names the method."""

    def __init__(self, kind: str, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.kind = kind

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


# ------------------------------------------------------------------ rank choice


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest rank whose squared singular values keep ``energy`` of the total."""
    power = singular_values.double() ** 2
    kept = torch.cumsum(power, 0) / power.sum().clamp_min(1e-30)
    return int(min(len(power), int(torch.searchsorted(kept, torch.tensor(energy - 1e-12))) + 1))


def relative_error(original: torch.Tensor, approx: torch.Tensor) -> float:
    """Relative Frobenius error ``‖W - Ŵ‖ / ‖W‖`` of a weight reconstruction."""
    norm = float(original.norm())
    return float((original - approx).norm()) / norm if norm else 0.0


# ------------------------------------------------------------------ Linear: SVD


def svd_linear(layer: nn.Linear, rank: int) -> Factorized:
    """Truncated SVD of ``layer`` into ``Linear(n, r, bias=False) → Linear(r, m)``.

    Parameters: ``r·(m + n) + bias``. At full rank (``min(m, n)``) the outputs match.
    """
    out_features, in_features = layer.weight.shape
    full = min(out_features, in_features)
    if not 1 <= rank <= full:
        raise ConfigError(f"rank must be in [1, {full}] for a {out_features}x{in_features} Linear")
    weight = layer.weight.detach().double()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = s[:rank].sqrt()
    first = nn.Linear(in_features, rank, bias=False)
    second = nn.Linear(rank, out_features, bias=layer.bias is not None)
    dtype = layer.weight.dtype
    with torch.no_grad():
        first.weight.copy_((root[:, None] * vh[:rank]).to(dtype))
        second.weight.copy_((u[:, :rank] * root[None, :]).to(dtype))
        if layer.bias is not None:
            second.bias.copy_(layer.bias.detach())
    return Factorized("svd", first, second)


# ------------------------------------------------------------------ convs


def _unfold(weight: torch.Tensor, mode: int) -> torch.Tensor:
    return weight.movedim(mode, 0).reshape(weight.shape[mode], -1)


def _conv(
    cls: type[nn.Module], in_ch: int, out_ch: int, kernel, stride, padding, dilation, bias, mode
):
    return cls(
        in_ch,
        out_ch,
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        bias=bias,
        padding_mode=mode,
    )


def tucker2_factors(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values of the output- and input-channel unfoldings of a conv weight."""
    w = weight.detach().double()
    return torch.linalg.svdvals(_unfold(w, 0)), torch.linalg.svdvals(_unfold(w, 1))


def tucker2_conv(layer: nn.Conv1d | nn.Conv2d, out_rank: int, in_rank: int) -> Factorized:
    """Tucker-2 (HOSVD) of a conv: ``1×1 (C→r_in) → k×k core (r_in→r_out) → 1×1 (r_out→O)``.

    Stride, padding and dilation stay on the core, so output shapes are unchanged.
    """
    if layer.groups != 1:
        raise ConfigError("Tucker-2 needs groups=1; exclude grouped/depthwise convs from scope")
    out_ch, in_ch = layer.out_channels, layer.in_channels
    if not (1 <= out_rank <= out_ch and 1 <= in_rank <= in_ch):
        raise ConfigError(f"Tucker-2 ranks must be in [1, {out_ch}] and [1, {in_ch}]")
    w = layer.weight.detach().double()
    u_out = torch.linalg.svd(_unfold(w, 0), full_matrices=False)[0][:, :out_rank]
    u_in = torch.linalg.svd(_unfold(w, 1), full_matrices=False)[0][:, :in_rank]
    core = torch.einsum("oi...,or,is->rs...", w, u_out, u_in)
    cls = type(layer)
    ones = (1,) * (w.dim() - 2)
    zeros = (0,) * (w.dim() - 2)
    first = _conv(cls, in_ch, in_rank, ones, ones, zeros, ones, False, "zeros")
    middle = _conv(
        cls,
        in_rank,
        out_rank,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        False,
        layer.padding_mode,
    )
    last = _conv(cls, out_rank, out_ch, ones, ones, zeros, ones, layer.bias is not None, "zeros")
    dtype = layer.weight.dtype
    with torch.no_grad():
        first.weight.copy_(u_in.T.reshape(in_rank, in_ch, *ones).to(dtype))
        middle.weight.copy_(core.to(dtype))
        last.weight.copy_(u_out.reshape(out_ch, out_rank, *ones).to(dtype))
        if layer.bias is not None:
            last.bias.copy_(layer.bias.detach())
    return Factorized("tucker2", first, middle, last)


def _spatial_matrix(weight: torch.Tensor) -> torch.Tensor:
    out_ch, in_ch, kh, kw = weight.shape
    return weight.permute(1, 2, 0, 3).reshape(in_ch * kh, out_ch * kw)


def spatial_svd_conv(layer: nn.Conv2d, rank: int) -> Factorized:
    """Spatial SVD of a k×k conv into ``k×1 (C→r) → 1×k (r→O)`` (Jaderberg et al., 2014)."""
    if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise ConfigError("spatial SVD needs groups=1, zero padding and numeric padding")
    out_ch, in_ch, kh, kw = layer.weight.shape
    full = min(in_ch * kh, out_ch * kw)
    if not 1 <= rank <= full:
        raise ConfigError(f"spatial SVD rank must be in [1, {full}] for this conv")
    u, s, vh = torch.linalg.svd(_spatial_matrix(layer.weight.detach().double()), False)
    root = s[:rank].sqrt()
    vertical = (u[:, :rank] * root).T.reshape(rank, in_ch, kh, 1)
    horizontal = (root[:, None] * vh[:rank]).reshape(rank, out_ch, kw).permute(1, 0, 2)
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    first = nn.Conv2d(in_ch, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False)
    second = nn.Conv2d(
        rank, out_ch, (1, kw), (1, sw), (0, pw), (1, dw), bias=layer.bias is not None
    )
    dtype = layer.weight.dtype
    with torch.no_grad():
        first.weight.copy_(vertical.to(dtype))
        second.weight.copy_(horizontal.reshape(out_ch, rank, 1, kw).to(dtype))
        if layer.bias is not None:
            second.bias.copy_(layer.bias.detach())
    return Factorized("spatial_svd", first, second)


# ------------------------------------------------------------------ configs


@dataclass(frozen=True)
class LowRankConfig(TechniqueConfig):
    """Shared fields: how each layer's rank is chosen, and which layers.

    Set at most one of ``rank``, ``ratio``, ``energy``; with none, ``ratio=0.5``.

    Args:
        rank: explicit rank for every selected layer (must be below each one's full rank).
        ratio: target fraction of each layer's parameters to keep, in (0, 1).
        energy: kept fraction of squared singular values, in (0, 1].
        scope: which layers (default: every supported layer).
        keep_classifier: leave the model's last Linear / conv layer (its output layer)
            alone when it has others: a rank-r bottleneck before a 10-way output caps
            accuracy for a few hundred saved parameters.
    """

    family = "lowrank"
    rank: int | None = None
    ratio: float | None = None
    energy: float | None = None
    scope: Scope = Scope()
    keep_classifier: bool = True

    def __post_init__(self) -> None:
        chosen = [k for k in ("rank", "ratio", "energy") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ConfigError(
                f"{self.name}: set only one of rank, ratio, energy (got {', '.join(chosen)})"
            )
        if self.rank is not None and (not isinstance(self.rank, int) or self.rank < 1):
            raise ConfigError(f"{self.name}.rank must be an integer >= 1, got {self.rank!r}")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise ConfigError(f"{self.name}.ratio must be in (0, 1), got {self.ratio}")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ConfigError(f"{self.name}.energy must be in (0, 1], got {self.energy}")

    @property
    def target_ratio(self) -> float:
        """The kept-parameter fraction (0.5 when no rank, ratio or energy is set)."""
        return 0.5 if self.ratio is None else float(self.ratio)


@register_config
@dataclass(frozen=True)
class SVDFactorization(LowRankConfig):
    """Truncated SVD of Linear layers into two Linear layers."""

    name = "svd"


@register_config
@dataclass(frozen=True)
class TuckerFactorization(LowRankConfig):
    """Tucker-2 of Conv1d/Conv2d layers: 1×1 → k×k core → 1×1."""

    name = "tucker2"


@register_config
@dataclass(frozen=True)
class SpatialSVD(LowRankConfig):
    """Spatial SVD of Conv2d layers: k×1 → 1×k."""

    name = "spatial_svd"


# ------------------------------------------------------------------ planning


def _positions(shapes: dict[str, tuple[tuple, tuple]], name: str) -> tuple[int, int, int] | None:
    """Spatial positions of a layer's input, output, and a k×1 conv's output (H_out·W_in)."""
    if name not in shapes:
        return None
    inp, out = shapes[name]
    in_pos = math.prod(inp[2:]) if len(inp) > 2 else 1
    out_pos = math.prod(out[2:]) if len(out) > 2 else 1
    mid_pos = out[2] * inp[3] if len(out) == 4 else out_pos
    return in_pos, out_pos, mid_pos


def _plan(name: str, layer: nn.Module, config: LowRankConfig, positions) -> dict[str, Any]:
    """Ranks and before/after parameters and MACs of one layer (no modification)."""
    in_pos, out_pos, mid_pos = positions or (None, 1, 1)
    bias = layer.bias.numel() if getattr(layer, "bias", None) is not None else 0
    before = layer.weight.numel()
    row: dict[str, Any] = {"layer": name, "method": config.name}
    if isinstance(config, SVDFactorization):
        m, n = layer.weight.shape
        full = min(m, n)
        if config.rank is not None:
            rank = config.rank
        elif config.energy is not None:
            rank = energy_rank(torch.linalg.svdvals(layer.weight.detach().double()), config.energy)
        else:
            rank = max(1, int(config.target_ratio * m * n / (m + n)))
        after = rank * (m + n)
        macs_before, macs_after = before, after
        row.update(rank=rank, full_rank=full)
    elif isinstance(config, TuckerFactorization):
        out_ch, in_ch = layer.out_channels, layer.in_channels
        k = math.prod(layer.kernel_size)
        full = min(out_ch, in_ch)
        if config.rank is not None:
            r_out = r_in = config.rank
        elif config.energy is not None:
            s_out, s_in = tucker2_factors(layer.weight)
            r_out = min(out_ch, energy_rank(s_out, config.energy))
            r_in = min(in_ch, energy_rank(s_in, config.energy))
        else:
            scale = _tucker_scale(in_ch, out_ch, k, config.target_ratio)
            r_out, r_in = max(1, int(scale * out_ch)), max(1, int(scale * in_ch))
        rank = [r_out, r_in]
        after = in_ch * r_in + r_in * r_out * k + r_out * out_ch
        if in_pos is not None:
            macs_before = before * out_pos
            macs_after = in_ch * r_in * in_pos + (r_in * r_out * k + r_out * out_ch) * out_pos
        else:
            macs_before, macs_after = before, after
        row.update(rank=rank, full_rank=full)
    else:
        out_ch, in_ch, kh, kw = layer.weight.shape
        full = min(in_ch * kh, out_ch * kw)
        if config.rank is not None:
            rank = config.rank
        elif config.energy is not None:
            matrix = _spatial_matrix(layer.weight.detach().double())
            rank = energy_rank(torch.linalg.svdvals(matrix), config.energy)
        else:
            rank = max(1, int(config.target_ratio * before / (in_ch * kh + out_ch * kw)))
        after = rank * (in_ch * kh + out_ch * kw)
        if in_pos is not None:
            macs_before = before * out_pos
            macs_after = in_ch * kh * rank * mid_pos + rank * out_ch * kw * out_pos
        else:
            macs_before, macs_after = before, after
        row.update(rank=rank, full_rank=full)
    row.update(
        params_before=before + bias,
        params_after=after + bias,
        macs_before=macs_before,
        macs_after=macs_after,
    )
    return row


def _tucker_scale(in_ch: int, out_ch: int, k: int, ratio: float) -> float:
    """Largest s with ``C·sC + sC·sO·k + sO·O <= ratio·O·C·k`` (bisection)."""
    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        cost = in_ch * mid * in_ch + (mid * in_ch) * (mid * out_ch) * k + mid * out_ch * out_ch
        low, high = (mid, high) if cost <= ratio * in_ch * out_ch * k else (low, mid)
    return low


def _supported(config: LowRankConfig) -> tuple[type[nn.Module], ...]:
    if isinstance(config, SVDFactorization):
        return (nn.Linear,)
    if isinstance(config, TuckerFactorization):
        return (nn.Conv1d, nn.Conv2d)
    return (nn.Conv2d,)


def _io_shapes(model: nn.Module, names: list[str], inputs: Any) -> dict[str, tuple[tuple, tuple]]:
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[tuple, tuple]] = {}

    def hook(name: str):
        def record(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            shapes[name] = (tuple(args[0].shape), tuple(output.shape))

        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _factorize(layer: nn.Module, config: LowRankConfig, rank: Any) -> Factorized:
    if isinstance(config, SVDFactorization):
        return svd_linear(layer, rank)
    if isinstance(config, TuckerFactorization):
        return tucker2_conv(layer, rank[0], rank[1])
    return spatial_svd_conv(layer, rank)


def _reconstruction_error(layer: nn.Module, factorized: Factorized) -> float:
    weight = layer.weight.detach().double()
    first, *rest = list(factorized)
    if factorized.kind == "svd":
        approx = rest[0].weight.double() @ first.weight.double()
    elif factorized.kind == "tucker2":
        middle, last = rest
        u_in = first.weight.double().flatten(1)
        u_out = last.weight.double().flatten(1)
        approx = torch.einsum("rs...,or,si->oi...", middle.weight.double(), u_out, u_in)
    else:
        second = rest[0]
        rank, in_ch, kh, _ = first.weight.shape
        out_ch, _, _, kw = second.weight.shape
        left = first.weight.double().reshape(rank, in_ch * kh).T
        right = second.weight.double().permute(1, 0, 2, 3).reshape(rank, out_ch * kw)
        approx = (left @ right).reshape(in_ch, kh, out_ch, kw).permute(2, 0, 1, 3)
    return relative_error(weight, approx.detach())


def factorize(
    model: nn.Module, config: LowRankConfig, inputs: Any = None
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Factorize ``model`` in place per ``config``; return it and the per-layer table.

    Every layer is planned before any is replaced, so a bad explicit rank leaves the
    model untouched. ``inputs`` (one example batch) lets MACs account for spatial size.

    Raises:
        ConfigError: an explicit rank at or above a selected layer's full rank.
    """
    config.scope.check_known(model)
    selected = [
        (name, layer)
        for name, layer in config.scope.select(model, _supported(config))
        if type(layer) in _supported(config)
    ]
    shapes = _io_shapes(model, [n for n, _ in selected], inputs) if inputs is not None else {}
    output_layer = None
    if config.keep_classifier:
        weighted = [
            n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
        ]
        output_layer = weighted[-1] if len(weighted) > 1 else None  # a lone layer is fair game
    rows = []
    for name, layer in selected:
        if name == output_layer:
            rows.append(
                {
                    "layer": name,
                    "method": config.name,
                    "status": "skipped: output layer (keep_classifier)",
                }
            )
            continue
        if getattr(layer, "groups", 1) != 1:
            rows.append({"layer": name, "method": config.name, "status": "skipped: grouped conv"})
            continue
        if isinstance(config, SpatialSVD) and (
            layer.padding_mode != "zeros" or isinstance(layer.padding, str)
        ):
            rows.append({"layer": name, "method": config.name, "status": "skipped: padding"})
            continue
        row = _plan(name, layer, config, _positions(shapes, name))
        if config.rank is not None and config.rank >= row["full_rank"]:
            raise ConfigError(
                f"{config.name}.rank {config.rank} >= full rank {row['full_rank']} of layer "
                f"{name}; lower the rank or exclude the layer with scope"
            )
        if row["params_after"] >= row["params_before"] or row["macs_after"] >= row["macs_before"]:
            row["status"] = "skipped: would not save parameters or MACs at this rank"
        else:
            row["status"] = "factorized"
        rows.append(row)
    for (name, layer), row in zip(selected, rows, strict=True):
        if row["status"] != "factorized":
            continue
        replacement = _factorize(layer, config, row["rank"])
        row["error"] = round(_reconstruction_error(layer, replacement), 6)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, replacement.train(layer.training))
    return model, rows


def _handler(model: nn.Module, config: LowRankConfig, context: ApplyContext) -> nn.Module:
    inputs = context.task.inputs(1) if context.task is not None else None
    model, rows = factorize(model, config, inputs)
    context.notes.setdefault("lowrank", []).extend(rows)
    return model


for _config in (SVDFactorization, TuckerFactorization, SpatialSVD):
    register_handler(_config)(_handler)


# ------------------------------------------------------------------ checkpoints


def factorized_structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """JSON description of every :class:`Factorized` layer (for ``spec["factorized"]``)."""
    structure = {}
    for name, module in model.named_modules():
        if isinstance(module, Factorized):
            layers = [describe_module(layer) for layer in module]
            if any(layer is None for layer in layers):
                raise CheckpointError(f"factorized layer {name} holds a module with no description")
            structure[name] = {"kind": module.kind, "layers": layers}
    return structure


def apply_factorized_structure(model: nn.Module, structure: dict[str, Any]) -> nn.Module:
    """Replace the layers named in ``structure`` with empty :class:`Factorized` chains."""
    for name, entry in structure.items():
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
            getattr(parent, child)
        except AttributeError as exc:
            raise CheckpointError(
                f"checkpoint factorizes layer {name}, which the architecture lacks; load it "
                "with the architecture it was saved from"
            ) from exc
        layers = [build_module(description) for description in entry["layers"]]
        setattr(parent, child, Factorized(entry["kind"], *layers))
    return model


def lowrank_io(
    task: Task | None = None,
    template: nn.Module | None = None,
    spec: dict[str, Any] | None = None,
) -> ArtifactIO:
    """A safetensors artifact whose spec records the factorized layers (no pickling); loads
    into a copy of ``template`` when the spec names no built-in architecture."""

    def save(model: nn.Module, path: Path) -> None:
        chosen = dict(spec) if spec is not None else task.spec() if task is not None else {}
        chosen[SPEC_KEY] = factorized_structure(model)
        save_checkpoint(
            model, path, chosen if "arch" in chosen else artifact_spec(task, model, chosen)
        )

    def load(path: Path) -> nn.Module:
        saved = read_spec(path)
        if "arch" in saved:
            model = build_from_spec(saved)
            apply_factorized_structure(model, saved.get(SPEC_KEY, {}))
        elif template is not None:
            model = copy.deepcopy(template)
        else:
            raise CheckpointError(
                f"factorized file {path} names no architecture; pass template= to lowrank_io"
            )
        return load_checkpoint(path, model=model)[0]

    return ArtifactIO(save, load)


# ------------------------------------------------------------------ search knob


def _svd_layers(model: nn.Module, task: Any, weighted: Any) -> list[str]:
    """Linear layers but the output layer (which the technique keeps)."""
    from torchslim.techniques.channels import final_layers

    last = {id(m) for m in final_layers(model, task.inputs(1))}
    modules = dict(model.named_modules())
    return [
        name
        for name in weighted
        if isinstance(modules[name], nn.Linear) and id(modules[name]) not in last
    ]


def _svd_steps(values: Any, context: StepContext) -> list[TechniqueConfig]:
    by_ratio: dict[float, list[str]] = {}
    for layer, value in values.items():
        if value < 1:
            by_ratio.setdefault(float(value), []).append(layer)
    return [
        SVDFactorization(ratio=value, scope=Scope(include=tuple(names)))
        for value, names in sorted(by_ratio.items(), reverse=True)
    ]


def _svd_cost(values: Any, layer: str, cost: LayerCost, data: Any) -> None:
    cost.kept *= values.get(layer, 1.0)


register_knob(
    Knob(
        name=SVDFactorization.name,
        grid=(1.0, 0.7, 0.5, 0.35, 0.25, 0.15),
        rule="keeps a fraction of each layer's weights in (0, 1]",
        valid=lambda value: 0 < value <= 1,
        steps=_svd_steps,
        identity=1.0,
        descending=True,
        order=20,
        recovered=True,
        layers=_svd_layers,
        layer_cost=_svd_cost,
        # a factorized layer is a chain ``layer.0``, ``layer.1``: later steps act on both
        renames=lambda layer: f"re:{re.escape(layer)}(\\.\\d+)?",
    )
)
