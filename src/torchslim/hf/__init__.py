"""Hugging Face transformer encoders (BERT family, sentence-transformers): ``pip install torchslim[hf]``.

Modules (``transformers`` is imported lazily, only when a model is loaded):

* :mod:`torchslim.hf.loading` -- read a model folder (sentence-transformers layout or a
  plain ``AutoModel`` folder) into a :class:`~torchslim.hf.loading.SentenceEncoder` or
  :class:`~torchslim.hf.loading.SequenceClassifier`; save / load compressed models as a
  safetensors artifact with a JSON spec (never pickle).
* :mod:`torchslim.hf.tasks` -- the ``text-embedding`` and ``text-classification`` tasks.
* :mod:`torchslim.hf.metrics` -- embedding fidelity (mean / min cosine, nearest-neighbour
  agreement, Spearman on gold pairs).
* :mod:`torchslim.hf.structure`, :mod:`torchslim.hf.layerdrop`, :mod:`torchslim.hf.distill`
  -- encoder surgery (head / FFN pruning, layer drop) and embedding distillation.
* :mod:`torchslim.hf.export` -- ONNX export with dynamic batch and sequence axes, ONNX
  Runtime int8, parity checks; never changes the user's model.

int8 Linear layers and 4 / 8-bit embedding tables work on any model: they live in
:mod:`torchslim.techniques.int8_linear` and :mod:`torchslim.techniques.embedding_quant`.
"""

from __future__ import annotations

__all__ = ["require_transformers"]


def require_transformers():
    """Import ``transformers`` or raise a one-line UnsupportedError naming the extra."""
    from torchslim.hf.loading import require_transformers as _require

    return _require()
