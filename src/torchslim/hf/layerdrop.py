"""Layer dropping: keep k of the n encoder layers of a BERT-family model.

The student is the teacher itself with some layers removed, so every kept layer starts
from the teacher's weights (the DistilBERT / "Poor Man's BERT" initialization). Which
layers stay:

* ``strategy="even"``: ``round(linspace(0, n - 1, k))`` — spread out, first and last kept
  (6 → 3 keeps layers 0, 2, 5); ``k = 1`` keeps the first layer;
* ``"first"`` / ``"last"``: the bottom or top k layers;
* ``layers=(...)``: an explicit list of indices (0-based).

Each kept layer remembers its index in the teacher (``torchslim_teacher_index``), so
:mod:`torchslim.hf.distill` can match student layer j to the teacher layer it came from.
The HF config's ``num_hidden_layers`` (``n_layers``) is updated, so ``save_pretrained`` /
``from_pretrained`` round-trip the dropped model. Follow with ``embedding_distill`` to
recover (a dropped model without training usually loses a lot of fidelity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from torchslim.errors import ConfigError
from torchslim.hf.structure import encoder_layers, keep_layers
from torchslim.techniques.base import (
    ApplyContext,
    TechniqueConfig,
    register_config,
    register_handler,
)


def choose_layers(n: int, keep: int, strategy: str = "even") -> list[int]:
    """Indices of the ``keep`` layers kept out of ``n`` for a strategy."""
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= n:
        raise ConfigError(
            f"layer_drop.keep must be an integer in 1..{n} (the model has {n} layers), got {keep!r}"
        )
    if strategy == "first":
        return list(range(keep))
    if strategy == "last":
        return list(range(n - keep, n))
    if strategy != "even":
        raise ConfigError(
            f"layer_drop.strategy {strategy!r} is unknown; use 'even', 'first' or 'last'"
        )
    if keep == 1:
        return [0]
    picks = sorted({int(round(i * (n - 1) / (keep - 1))) for i in range(keep)})
    return picks


def drop_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """Keep only the encoder layers at indices ``keep`` (in place).

    Raises:
        ConfigError: empty, repeated or out-of-range indices.
    """
    n = len(encoder_layers(model))
    if not keep:
        raise ConfigError(f"layer_drop must keep at least 1 of the {n} layers")
    if len(set(keep)) != len(keep):
        raise ConfigError(f"layer_drop.layers has repeated indices {list(keep)}; list each once")
    bad = [i for i in keep if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise ConfigError(
            f"layer_drop.layers {bad} are out of range; the model has layers 0..{n - 1}"
        )
    return keep_layers(model, sorted(keep))


@register_config
@dataclass(frozen=True)
class LayerDrop(TechniqueConfig):
    """Keep ``keep`` of the encoder's layers (or the explicit ``layers``), weights from the teacher.

    Args:
        keep: number of layers kept (1..n); None (the default, without ``layers``) keeps half
            of them, rounded up.
        layers: explicit 0-based indices of the kept layers.
        strategy: ``even`` (spread out), ``first`` or ``last``.
    """

    name = "layer_drop"
    family = "structure"
    keep: int | None = None
    layers: tuple[int, ...] = ()
    strategy: Literal["even", "first", "last"] = "even"

    def __post_init__(self) -> None:
        if self.keep is not None and self.layers:
            raise ConfigError("layer_drop: give keep or layers, not both")
        if self.keep is not None and (
            isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1
        ):
            raise ConfigError(f"layer_drop.keep must be an integer >= 1, got {self.keep!r}")
        for index in self.layers:
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise ConfigError(f"layer_drop.layers entries must be integers >= 0, got {index!r}")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"layer_drop.layers has repeated indices {list(self.layers)}")
        if self.strategy not in ("even", "first", "last"):
            raise ConfigError(
                f"layer_drop.strategy {self.strategy!r} is unknown; use 'even', 'first' or 'last'"
            )

    def indices(self, n: int) -> list[int]:
        """The kept indices for a model with ``n`` layers."""
        if self.layers:
            bad = [i for i in self.layers if i >= n]
            if bad:
                raise ConfigError(
                    f"layer_drop.layers {bad} are out of range; the model has layers 0..{n - 1}"
                )
            return sorted(self.layers)
        keep = self.keep if self.keep is not None else (n + 1) // 2
        return choose_layers(n, keep, self.strategy)


@register_handler(LayerDrop)
def _layer_drop(model: nn.Module, config: LayerDrop, context: ApplyContext) -> nn.Module:
    n = len(encoder_layers(model))
    keep = config.indices(n)
    before = sum(p.numel() for p in model.parameters())
    drop_layers(model, keep)
    context.notes.setdefault("layer_drop", []).append(
        {
            "layers_before": n,
            "kept": keep,
            "params_before": before,
            "params_after": sum(p.numel() for p in model.parameters()),
        }
    )
    return model
