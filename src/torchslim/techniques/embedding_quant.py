"""Embedding tables at 8 or 4 bits, for any ``nn.Embedding``, stored packed.

:class:`QuantEmbedding` stores an embedding table at 8 or 4 bits (asymmetric, one float16
scale and offset per row, or per group of ``group_size`` columns); 4-bit codes are packed two
per byte. Lookups gather the packed rows and dequantize only those, so the table stays packed
in PyTorch *and* in the exported ONNX graph.

Technique config (usable in recipes): ``embedding_quant`` (:class:`EmbeddingQuant`, ``bits``
4 or 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError, UnsupportedError
from torchslim.structure import register_self_describing
from torchslim.techniques.base import (
    ApplyContext,
    TechniqueConfig,
    register_config,
    register_handler,
)
from torchslim.techniques.fake_quant import set_module
from torchslim.techniques.knobs import GLOBAL, Knob, StepContext, register_knob

EMBEDDING_BITS = (4, 8)


def _groups(dim: int, group_size: int) -> int:
    return 1 if group_size in (0, dim) else math.ceil(dim / group_size)


def packed_row_bytes(dim: int, bits: int) -> int:
    """Bytes of one packed row of codes."""
    return math.ceil(dim * bits / 8)


def expected_table_bytes(num: int, dim: int, bits: int, group_size: int = 0) -> int:
    """Bytes a quantized table stores: packed codes + float16 scale and offset per group."""
    return num * packed_row_bytes(dim, bits) + num * _groups(dim, group_size) * 2 * 2


@register_self_describing
class QuantEmbedding(nn.Module):
    """An embedding table stored at ``bits`` (4 or 8) with per-row (or per-group) scales.

    ``weight ≈ code * scale + offset`` with codes in ``[0, 2**bits)``; 4-bit codes are
    packed two per byte (even column in the low nibble).
    """

    weight_in_buffers = True  # parameter counts use dequantized_weight()

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        bits: int = 8,
        group_size: int = 0,
        padding_idx: int | None = None,
    ) -> None:
        super().__init__()
        if bits not in EMBEDDING_BITS:
            raise ConfigError(f"embedding bits must be 4 or 8, got {bits}")
        if group_size < 0 or (group_size and embedding_dim % group_size):
            raise ConfigError(
                f"group_size must be 0 (one scale per row) or divide the embedding size "
                f"{embedding_dim}, got {group_size}"
            )
        if bits == 4 and embedding_dim % 2:
            raise UnsupportedError(f"4-bit tables need an even embedding size, got {embedding_dim}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.bits = bits
        self.group_size = group_size if group_size and group_size != embedding_dim else 0
        self.padding_idx = padding_idx
        groups = _groups(embedding_dim, self.group_size)
        self.register_buffer(
            "codes",
            torch.zeros(num_embeddings, packed_row_bytes(embedding_dim, bits), dtype=torch.uint8),
        )
        self.register_buffer("scale", torch.ones(num_embeddings, groups, dtype=torch.float16))
        self.register_buffer("offset", torch.zeros(num_embeddings, groups, dtype=torch.float16))

    @classmethod
    @torch.no_grad()
    def from_embedding(
        cls, embedding: nn.Embedding, bits: int = 8, group_size: int = 0
    ) -> QuantEmbedding:
        """Quantize an ``nn.Embedding`` table (min/max per row or group, asymmetric)."""
        num, dim = embedding.weight.shape
        layer = cls(num, dim, bits, group_size, embedding.padding_idx)
        groups = _groups(dim, layer.group_size)
        weight = embedding.weight.detach().float().reshape(num, groups, -1)
        low = weight.amin(dim=-1)
        high = weight.amax(dim=-1)
        levels = 2**bits - 1
        scale = ((high - low) / levels).clamp(min=1e-8).half()
        offset = low.half()
        codes = torch.round((weight - offset.float()[..., None]) / scale.float()[..., None])
        codes = codes.clamp(0, levels).to(torch.uint8).reshape(num, dim)
        if bits == 4:
            codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
        layer.codes.copy_(codes)
        layer.scale.copy_(scale)
        layer.offset.copy_(offset)
        return layer

    def _dequantize(self, rows: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor):
        values = rows.to(torch.int32)
        if self.bits == 4:
            high = torch.div(values, 16, rounding_mode="floor")
            low = values - high * 16
            values = torch.stack((low, high), dim=-1).flatten(-2)
        groups = scale.shape[-1]
        values = values.to(torch.float32).unflatten(-1, (groups, -1))
        out = values * scale.float().unsqueeze(-1) + offset.float().unsqueeze(-1)
        return out.flatten(-2)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized table (fp32)."""
        return self._dequantize(self.codes, self.scale, self.offset)

    def dequantized_weight(self) -> torch.Tensor:
        """The table as the layer looks rows up in it (fp32); parameter counts use it."""
        return self.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._dequantize(
            self.codes[input_ids], self.scale[input_ids], self.offset[input_ids]
        )

    def to_float(self) -> nn.Embedding:
        """A plain ``nn.Embedding`` holding the dequantized table."""
        table = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx)
        with torch.no_grad():
            table.weight.copy_(self.weight)
        return table

    def describe(self) -> dict[str, Any]:
        return {
            "type": "QuantEmbedding",
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "bits": self.bits,
            "group_size": self.group_size,
            "padding_idx": self.padding_idx,
        }

    @classmethod
    def build(cls, description: dict[str, Any]) -> QuantEmbedding:
        return cls(
            description["num_embeddings"],
            description["embedding_dim"],
            description["bits"],
            description.get("group_size", 0),
            description.get("padding_idx"),
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, "
            f"group_size={self.group_size or self.embedding_dim}"
        )


def word_embedding_tables(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The word-embedding table(s) ``embedding_quant`` (``tables="word"``) acts on."""
    return _word_embeddings(model)


def _word_embeddings(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding) and "word" in n
    ]
    if found:
        return found
    tables = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    return sorted(tables, key=lambda item: -item[1].weight.numel())[:1]


def quantize_embeddings(
    model: nn.Module,
    bits: int = 4,
    group_size: int = 0,
    tables: str = "word",
    inplace: bool = False,
) -> nn.Module:
    """Replace the word-embedding table (``tables="word"``) or every table (``"all"``)."""
    import copy

    if tables not in ("word", "all"):
        raise ConfigError(f"tables {tables!r} is unknown; use 'word' or 'all'")
    target = model if inplace else copy.deepcopy(model)
    chosen = (
        _word_embeddings(target)
        if tables == "word"
        else [(n, m) for n, m in target.named_modules() if isinstance(m, nn.Embedding)]
    )
    if not chosen:
        raise UnsupportedError("embedding quantization found no nn.Embedding table in the model")
    for name, module in chosen:
        set_module(target, name, QuantEmbedding.from_embedding(module, bits, group_size))
    return target.eval()


# ------------------------------------------------------------------ technique config


@register_config
@dataclass(frozen=True)
class EmbeddingQuant(TechniqueConfig):
    """Embedding-table quantization to 8 or 4 bits, stored packed.

    Args:
        bits: 4 or 8.
        group_size: columns sharing one scale/offset (0: one per row).
        tables: ``word`` (the word-embedding table, usually most of a small encoder's
            parameters) or ``all`` (position and token-type tables too).
    """

    name = "embedding_quant"
    family = "quantization"
    bits: int = 8
    group_size: int = 0
    tables: str = "word"

    def __post_init__(self) -> None:
        if self.bits not in EMBEDDING_BITS:
            raise ConfigError(f"embedding_quant.bits must be 4 or 8, got {self.bits}")
        if self.group_size < 0:
            raise ConfigError(f"embedding_quant.group_size must be >= 0, got {self.group_size}")
        if self.tables not in ("word", "all"):
            raise ConfigError(f"embedding_quant.tables {self.tables!r} is unknown; use word or all")


@register_handler(EmbeddingQuant)
def _embedding_quant(model: nn.Module, config: EmbeddingQuant, context: ApplyContext) -> nn.Module:
    model = quantize_embeddings(model, config.bits, config.group_size, config.tables, inplace=True)
    tables = {n: m.describe() for n, m in model.named_modules() if isinstance(m, QuantEmbedding)}
    context.notes.setdefault("embedding_quant", {}).update(tables=tables)
    return model


# ------------------------------------------------------------------ search knob
# (embedding_quant as the optimizer searches it)

EMBEDDING_GROUP = 32  # columns per scale of a searched 4-bit table (per row at 8 bits)


def _table_layers(model: nn.Module, task: Any, weighted: Any) -> list[str]:
    if not word_embedding_tables(model):
        raise ConfigError("embedding_quant finds no nn.Embedding table in this model; drop it")
    return [GLOBAL]


def _table_shape(model: nn.Module, task: Any, layers: Any, params: Any) -> tuple[int, int]:
    """(rows, columns) of the word-embedding table the knob acts on."""
    rows, columns = word_embedding_tables(model)[0][1].weight.shape
    return int(rows), int(columns)


def _table_cost(values: Any, total: float, objective: str, shape: Any) -> float:
    table_bits = values.get(GLOBAL, 32)
    if objective != "size" or table_bits >= 32:
        return total
    rows, columns = shape
    group = EMBEDDING_GROUP if table_bits == 4 else 0
    stored = expected_table_bytes(rows, columns, int(table_bits), group)
    return total - (rows * columns * 32 - stored * 8)


def _table_steps(values: Any, context: StepContext) -> list[TechniqueConfig]:
    table_bits = values.get(GLOBAL, 32)
    if table_bits >= 32:
        return []
    group = EMBEDDING_GROUP if table_bits == 4 else 0
    return [EmbeddingQuant(bits=int(table_bits), group_size=group)]


register_knob(
    Knob(
        name=EmbeddingQuant.name,
        grid=(32, 8, 4),
        rule="takes 32 (off), 8 and/or 4 bits",
        valid=lambda value: value in (4, 8, 32),
        steps=_table_steps,
        identity=32,
        descending=True,
        integer=True,
        order=80,
        layers=_table_layers,
        measure=_table_shape,
        model_cost=_table_cost,
        default_for=("size/embedding",),
    )
)
