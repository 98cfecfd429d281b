"""Attention-head pruning for ``nn.MultiheadAttention`` (and so ``nn.TransformerEncoderLayer``).

``nn.MultiheadAttention`` ties its inner width to ``embed_dim`` (``num_heads * head_dim ==
embed_dim``), so it cannot lose whole heads and keep its embedding width. Head pruning
replaces it by :class:`HeadPrunedAttention`: separate q / k / v projections of
``num_heads * head_dim`` outputs and an output projection back to ``embed_dim``, with the
same call signature (``query, key, value, key_padding_mask, need_weights, attn_mask,
average_attn_weights, is_causal``) and the attributes ``nn.TransformerEncoderLayer`` reads
(``batch_first``, ``num_heads``, ``embed_dim``, ``out_proj``; ``in_proj_bias`` is None and
``_qkv_same_embed_dim`` False, so the layer takes its regular, not its fused, path).

The embedding width (the residual stream) is pruned by the channel pruner through
Torch-Pruning's graph; heads are removed here, per attention module, and change no width
outside that module, so nothing else has to follow.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import UnsupportedError
from torchslim.structure import register_module_type

HEAD_IMPORTANCES = ("l1", "l2", "taylor", "random")


class HeadPrunedAttention(nn.Module):
    """Multi-head attention with ``num_heads`` heads of ``head_dim`` over an ``embed_dim`` input.

    Args:
        embed_dim: width of the query / key / value inputs and of the output.
        num_heads: heads kept (>= 1).
        head_dim: width of each head.
        bias: whether the projections have biases.
        batch_first: inputs are ``(batch, seq, feature)`` (else ``(seq, batch, feature)``).
        dropout: dropout on the attention weights while training.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_heads < 1 or head_dim < 1:
            raise UnsupportedError(
                f"attention needs num_heads >= 1 and head_dim >= 1, got {num_heads}, {head_dim}"
            )
        inner = num_heads * head_dim
        self.num_heads, self.head_dim = num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        # what nn.TransformerEncoderLayer inspects before choosing its fused fast path
        self._qkv_same_embed_dim = False
        self.in_proj_weight: torch.Tensor | None = None
        self.in_proj_bias: torch.Tensor | None = None

    @property
    def embed_dim(self) -> int:
        """Input / output width (read from the projections: channel pruning may change it)."""
        return self.q_proj.in_features

    @property
    def has_bias(self) -> bool:
        return self.q_proj.bias is not None

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"batch_first={self.batch_first}"
        )

    def _heads(self, x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        batch, length, _ = x.shape
        return proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        batch: int,
        dtype: torch.dtype,
    ) -> torch.Tensor | None:
        """Additive float mask of shape broadcastable to (batch, heads, L, S); True = blocked."""

        def additive(mask: torch.Tensor) -> torch.Tensor:
            if mask.dtype == torch.bool:
                return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                    mask, float("-inf")
                )
            return mask.to(dtype)

        merged = None
        if attn_mask is not None:
            if attn_mask.dim() == 3:
                if attn_mask.shape[0] != batch * self.num_heads:
                    raise UnsupportedError(
                        f"a 3-D attn_mask needs batch * num_heads = {batch * self.num_heads} "
                        f"rows after head pruning, got {attn_mask.shape[0]}; pass a 2-D mask"
                    )
                attn_mask = attn_mask.view(batch, self.num_heads, *attn_mask.shape[1:])
            merged = additive(attn_mask)
        if key_padding_mask is not None:
            padding = additive(key_padding_mask).view(batch, 1, 1, -1)
            merged = padding if merged is None else merged + padding
        return merged

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if query.is_nested:
            raise UnsupportedError(
                "head-pruned attention does not take nested tensors; build the "
                "TransformerEncoder with enable_nested_tensor=False"
            )
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, length = query.shape[0], query.shape[1]
        q = self._heads(query, self.q_proj)
        k = self._heads(key, self.k_proj)
        v = self._heads(value, self.v_proj)
        mask = self._mask(attn_mask, key_padding_mask, batch, q.dtype)
        causal = is_causal and mask is None
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask
            elif causal:
                blocked = torch.ones(length, k.shape[2], dtype=torch.bool, device=q.device)
                scores = scores.masked_fill(blocked.triu(1), float("-inf"))
            weights = torch.softmax(scores, dim=-1)
            out = F.dropout(weights, dropout, self.training) @ v
            weights = weights.mean(1) if average_attn_weights else weights
            if unbatched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal
            )
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def supports_head_pruning(module: nn.Module) -> str:
    """Why ``module`` cannot lose heads ("" if it can)."""
    if isinstance(module, HeadPrunedAttention):
        return ""
    if not isinstance(module, nn.MultiheadAttention):
        return "not an attention module"
    if not module._qkv_same_embed_dim:
        return "key / value widths differ from the query's (kdim / vdim)"
    if module.bias_k is not None:
        return "add_bias_kv is not supported"
    if module.add_zero_attn:
        return "add_zero_attn is not supported"
    return ""


def from_multihead(module: nn.MultiheadAttention) -> HeadPrunedAttention:
    """An equivalent :class:`HeadPrunedAttention` with all of ``module``'s heads and weights."""
    reason = supports_head_pruning(module)
    if reason:
        raise UnsupportedError(f"cannot prune heads of this MultiheadAttention: {reason}")
    embed, heads = module.embed_dim, module.num_heads
    bias = module.in_proj_bias is not None
    new = HeadPrunedAttention(
        embed, heads, embed // heads, bias, module.batch_first, float(module.dropout)
    )
    new = new.to(device=module.in_proj_weight.device, dtype=module.in_proj_weight.dtype)
    with torch.no_grad():
        for index, proj in enumerate((new.q_proj, new.k_proj, new.v_proj)):
            proj.weight.copy_(module.in_proj_weight[index * embed : (index + 1) * embed])
            if bias:
                proj.bias.copy_(module.in_proj_bias[index * embed : (index + 1) * embed])
        new.out_proj.weight.copy_(module.out_proj.weight)
        if module.out_proj.bias is not None:
            new.out_proj.bias.copy_(module.out_proj.bias)
    new.train(module.training)
    return new


def head_scores(attention: HeadPrunedAttention, importance: str, seed: int = 0) -> torch.Tensor:
    """One score per head (higher is kept): the norm of its q / k / v rows and out columns.

    ``l1`` sums ``|w|``, ``l2`` sums ``w²``, ``taylor`` sums ``|w * grad|`` (gradients must
    be in ``.grad``; weights without one count as zero), ``random`` draws seeded scores.
    """
    heads, dim = attention.num_heads, attention.head_dim
    if importance == "random":
        return torch.rand(heads, generator=torch.Generator().manual_seed(seed))
    parts = []
    for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
        parts.append((proj.weight, 0))
        if proj.bias is not None:
            parts.append((proj.bias, 0))
    parts.append((attention.out_proj.weight, 1))
    total = torch.zeros(heads)
    for tensor, dim_axis in parts:
        values = tensor.detach()
        if importance == "taylor":
            grad = tensor.grad
            values = (values * grad).abs() if grad is not None else torch.zeros_like(values)
        elif importance == "l1":
            values = values.abs()
        else:
            values = values.pow(2)
        per_head = values.movedim(dim_axis, 0).reshape(heads, dim, -1).sum((1, 2))
        total += per_head.float().cpu()
    return total


def keep_heads(attention: HeadPrunedAttention, keep: list[int]) -> HeadPrunedAttention:
    """A copy of ``attention`` with only the heads ``keep`` (sorted), weights sliced."""
    dim = attention.head_dim
    rows = torch.cat([torch.arange(h * dim, (h + 1) * dim) for h in sorted(keep)])
    new = HeadPrunedAttention(
        attention.embed_dim,
        len(keep),
        dim,
        attention.has_bias,
        attention.batch_first,
        attention.dropout,
    ).to(device=attention.q_proj.weight.device, dtype=attention.q_proj.weight.dtype)
    with torch.no_grad():
        for old, proj in zip(
            (attention.q_proj, attention.k_proj, attention.v_proj),
            (new.q_proj, new.k_proj, new.v_proj),
            strict=True,
        ):
            proj.weight.copy_(old.weight[rows])
            if old.bias is not None:
                proj.bias.copy_(old.bias[rows])
        new.out_proj.weight.copy_(attention.out_proj.weight[:, rows])
        if attention.out_proj.bias is not None:
            new.out_proj.bias.copy_(attention.out_proj.bias)
    new.train(attention.training)
    return new


def heads_to_remove(num_heads: int, ratio: float) -> int:
    """How many of ``num_heads`` heads a ``ratio`` in [0, 1) removes (always keeps one)."""
    return min(num_heads - 1, math.floor(num_heads * ratio + 1e-9))


def prune_heads(
    model: nn.Module,
    chosen: list[tuple[str, nn.Module]],
    ratios: dict[str, float],
    importance: str,
) -> list[dict[str, Any]]:
    """Remove the lowest-scoring heads of each chosen attention module, in place.

    Args:
        model: the model whose attention modules are replaced.
        chosen: ``(name, module)`` pairs of attention modules in scope.
        ratios: fraction of heads removed per module name (modules absent: none).
        importance: ``l1``, ``l2``, ``taylor`` or ``random`` (see :func:`head_scores`).

    Returns:
        One row per changed module: ``{"layer", "heads_before", "heads_after"}``.
    """
    table = []
    for index, (name, module) in enumerate(chosen):
        ratio = ratios.get(name, 0.0)
        removed = heads_to_remove(module.num_heads, ratio)
        if removed == 0:
            continue
        if isinstance(module, nn.MultiheadAttention):
            grads = [p.grad for p in (module.in_proj_weight, module.out_proj.weight)]
            attention = from_multihead(module)
            if importance == "taylor" and all(g is not None for g in grads):
                for proj, grad in zip(
                    (attention.q_proj, attention.k_proj, attention.v_proj),
                    grads[0].chunk(3),
                    strict=True,
                ):
                    proj.weight.grad = grad.clone()
                attention.out_proj.weight.grad = grads[1].clone()
        else:
            attention = module
        scores = head_scores(attention, importance, seed=index)
        keep = sorted(torch.topk(scores, attention.num_heads - removed).indices.tolist())
        new = keep_heads(attention, keep)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        table.append({"layer": name, "heads_before": module.num_heads, "heads_after": len(keep)})
    return table


# ------------------------------------------------------------------ checkpoint structure


def _describe_heads(module: nn.Module) -> dict[str, Any]:
    assert isinstance(module, HeadPrunedAttention)
    return {
        "embed_dim": module.embed_dim,
        "num_heads": module.num_heads,
        "head_dim": module.head_dim,
        "bias": module.has_bias,
        "batch_first": module.batch_first,
        "dropout": module.dropout,
    }


register_module_type(
    HeadPrunedAttention,
    _describe_heads,
    lambda args: HeadPrunedAttention(**args),
    replaces=True,  # it takes nn.MultiheadAttention's place
)
