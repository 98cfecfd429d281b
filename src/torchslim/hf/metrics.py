"""Embedding fidelity: how closely a compressed encoder reproduces the original's embeddings.

:class:`EmbeddingFidelity` is the ``text-embedding`` task's metric (higher is better): the
mean cosine similarity between the compressed and the original model's embedding of each
text. :meth:`EmbeddingFidelity.details` also reports the minimum cosine, the share of texts
whose nearest neighbour among the other texts is unchanged, and -- with gold pairs --
the Spearman correlation of the model's pair similarities with the gold scores.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from torchslim.errors import ConfigError


@torch.no_grad()
def embed(model: nn.Module, loader: DataLoader) -> torch.Tensor:
    """Embeddings of every sample of ``loader`` (model left in its mode; eval while running)."""
    from torchslim.batches import call_model, split_batch

    was_training = getattr(model, "training", False)
    model.eval()
    try:
        chunks = []
        for batch in loader:
            inputs, _ = split_batch(batch)
            chunks.append(call_model(model, inputs).float().flatten(1).cpu())
    finally:
        model.train(was_training)
    if not chunks:
        raise ConfigError("embedding fidelity was asked of an empty text set")
    return torch.cat(chunks)


def nearest_neighbours(embeddings: torch.Tensor) -> torch.Tensor:
    """Index of each row's most cosine-similar other row."""
    unit = F.normalize(embeddings.double(), dim=1)
    sims = unit @ unit.T
    sims.fill_diagonal_(-float("inf"))
    return sims.argmax(dim=1)


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x.double().numpy(), y.double().numpy()).statistic)


def fidelity_stats(embeddings: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Mean / min cosine to the reference and nearest-neighbour agreement."""
    cos = F.cosine_similarity(embeddings.double(), reference.double(), dim=1, eps=1e-12)
    agree = (nearest_neighbours(embeddings) == nearest_neighbours(reference)).double().mean()
    return {
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "nn_agreement": float(agree),
    }


class EmbeddingFidelity:
    """Mean cosine similarity of a model's embeddings to the reference model's (higher is better).

    Args:
        reference: the original encoder (a copy is kept; its embeddings are cached per loader).
        pairs: optional ``(inputs_a, inputs_b, gold_scores)`` -- tokenized pair sentences
            and their gold similarity -- for the Spearman correlation in :meth:`details`.
    """

    name = "cosine_fidelity"

    def __init__(self, reference: nn.Module, pairs: tuple[Any, Any, torch.Tensor] | None = None):
        self.reference = reference.eval()
        self.pairs = pairs
        self._cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def reference_embeddings(self, loader: DataLoader) -> torch.Tensor:
        """The reference model's embeddings of ``loader`` (cached per dataset object)."""
        key = loader.dataset
        try:
            cached = self._cache.get(key)
        except TypeError:  # a dataset that cannot be weakly referenced: no cache
            return embed(self.reference, loader)
        if cached is None:
            cached = self._cache[key] = embed(self.reference, loader)
        return cached

    def __call__(self, model: nn.Module, loader: DataLoader) -> float:
        ours = embed(model, loader)
        cos = F.cosine_similarity(ours.double(), self.reference_embeddings(loader).double(), dim=1)
        return float(cos.mean())

    @torch.no_grad()
    def pair_spearman(self, model: nn.Module) -> float | None:
        """Spearman correlation of ``model``'s pair cosine similarities with the gold scores."""
        if self.pairs is None:
            return None
        from torchslim.batches import call_model

        first, second, gold = self.pairs
        was_training = getattr(model, "training", False)
        model.eval()
        try:
            a = call_model(model, first).float()
            b = call_model(model, second).float()
        finally:
            model.train(was_training)
        return spearman(F.cosine_similarity(a, b, dim=1), gold)

    def details(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """mean_cosine, min_cosine, nn_agreement (and spearman with pairs)."""
        stats = fidelity_stats(embed(model, loader), self.reference_embeddings(loader))
        score = self.pair_spearman(model)
        if score is not None:
            stats["spearman"] = score
        return stats
