"""The ``text-embedding`` and ``text-classification`` tasks (Hugging Face encoders).

* :func:`text_embedding_task`: a sentence-embedding model folder and texts (``--texts`` or
  the built-in set). The metric is :class:`~torchslim.hf.metrics.EmbeddingFidelity`: mean
  cosine similarity of the model's embeddings to the original model's. The texts are split
  once (seeded): ``holdout`` of them (default half) are the val and test splits the metric is
  measured on; the others form the train split, with the original's embeddings as targets
  and a cosine + MSE loss, so ``task.fit`` is embedding distillation from the original
  (recovery needs no labels) and never sees the texts it is scored on.
* :func:`text_classification_task`: an ``AutoModelForSequenceClassification`` folder and a
  ``text,label`` CSV/JSONL; accuracy; ``task.fit`` fine-tunes (AdamW, lr 2e-5) for recovery.

Both tasks are the model as given (``epochs=0``: nothing is trained for the baseline),
and time latency at ``seq_len`` tokens (default 128) and ``batch_sizes`` (default 1, 32):
``task.inputs(b)`` is ``b`` texts padded to ``seq_len``; ``task.latency`` holds the settings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from torchslim.errors import ConfigError, DataError
from torchslim.task import Task, TrainConfig

DEFAULT_SEQ_LEN = 128
DEFAULT_BATCH_SIZES = (1, 32)
_ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")


class TokenizedTexts(Dataset):
    """Tokenized texts as a Dataset of dicts (``input_ids``, ``attention_mask``, ...)."""

    def __init__(self, encoded: dict[str, torch.Tensor], labels: torch.Tensor | None = None):
        self.encoded = {k: v for k, v in encoded.items()}
        self.labels = labels

    def __len__(self) -> int:
        return int(next(iter(self.encoded.values())).shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {k: v[index] for k, v in self.encoded.items()}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


def max_tokens(model: Any) -> int:
    """The longest input (tokens) the model's position table allows."""
    config = model.config if hasattr(model, "config") else model
    limit = int(getattr(config, "max_position_embeddings", 512))
    if getattr(config, "model_type", "") in _ROBERTA_LIKE:
        limit -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    return limit


def check_seq_len(seq_len: int, model: Any, model_dir: str | Path) -> None:
    """Raise ConfigError unless ``2 <= seq_len <= the model's maximum``."""
    limit = max_tokens(model)
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ConfigError(f"--seq-len must be an integer >= 2, got {seq_len!r}")
    if seq_len > limit:
        raise ConfigError(
            f"--seq-len {seq_len} is above the maximum of {limit} tokens of the model in "
            f"{model_dir} (max_position_embeddings in config.json); use --seq-len {limit} or less"
        )


def check_batch_sizes(batch_sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(batch_sizes)
    if not sizes or any(not isinstance(b, int) or b < 1 for b in sizes):
        raise ConfigError(f"--batch-sizes must be positive integers, got {list(sizes)}")
    return sizes


def tokenize(
    tokenizer: Any, texts: Sequence[str], seq_len: int, pad_to_length: bool = False
) -> dict[str, torch.Tensor]:
    """Token tensors of ``texts``, truncated to ``seq_len`` (padded to it when asked)."""
    encoded = tokenizer(
        list(texts),
        padding="max_length" if pad_to_length else "longest",
        truncation=True,
        max_length=seq_len,
        return_tensors="pt",
    )
    keep = ("input_ids", "attention_mask", "token_type_ids")
    return {k: v.to(torch.long).contiguous() for k, v in encoded.items() if k in keep}


def latency_inputs(
    tokenizer: Any, texts: Sequence[str], seq_len: int, batch: int
) -> dict[str, torch.Tensor]:
    """``batch`` texts padded to exactly ``seq_len`` tokens (texts repeated if fewer)."""
    chosen = [texts[i % len(texts)] for i in range(batch)]
    return tokenize(tokenizer, chosen, seq_len, pad_to_length=True)


def embedding_distill_loss(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - cos(outputs, target)`` plus the MSE, averaged over the batch."""
    cos = F.cosine_similarity(outputs, target, dim=-1)
    return (1.0 - cos).mean() + F.mse_loss(outputs, target)


def _reference(name: str, options: dict[str, Any]) -> str:
    clean = {k: v for k, v in options.items() if v is not None}
    return f"{name}{json.dumps(clean, sort_keys=True)}"


def text_embedding_task(
    model_dir: str | Path,
    texts: str | Path | Sequence[str] | None = None,
    pairs: str | Path | None = None,
    seq_len: int = DEFAULT_SEQ_LEN,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    name: str = "text-embedding",
    lr: float = 5e-5,
    holdout: float = 0.5,
) -> Task:
    """The sentence-embedding task (see the module docstring).

    Args:
        model_dir: sentence-transformers or plain AutoModel folder.
        texts: texts file (one per line), a list of texts, or None for the built-in set.
        pairs: optional pairs file (sentence1, sentence2, score) for the Spearman correlation.
        seq_len: tokens per text (truncation) and the latency input length.
        batch_sizes: latency batch sizes.
        lr: learning rate of recovery (distillation) fine-tuning.
        holdout: fraction of the texts held out for val / test (the metric); the rest is
            the train split of recovery. 1.0 scores every text and leaves no train split.
    """
    from torchslim.hf.loading import load_encoder, load_tokenizer
    from torchslim.hf.metrics import EmbeddingFidelity, embed
    from torchslim.hf.texts import builtin_texts, read_pairs, read_texts

    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout <= 1:
        raise ConfigError(
            f"holdout must be in (0, 1], got {holdout!r}; e.g. 0.5 holds out half the texts"
        )
    sizes = check_batch_sizes(batch_sizes)
    if texts is None:
        text_list = builtin_texts()
    elif isinstance(texts, (str, Path)):
        text_list = read_texts(texts)
    else:
        text_list = [str(t).strip() for t in texts if str(t).strip()]
        if len(text_list) < 2:
            raise DataError("text-embedding needs at least two non-empty texts")
    pair_rows = read_pairs(pairs) if pairs is not None else None
    encoder = load_encoder(model_dir)
    check_seq_len(seq_len, encoder.backbone, model_dir)
    tokenizer = load_tokenizer(model_dir)
    encoded = tokenize(tokenizer, text_list, seq_len)
    order = torch.randperm(len(text_list), generator=torch.Generator().manual_seed(0))
    held = max(2, round(len(text_list) * holdout))
    if len(text_list) - held < 1:
        held = len(text_list)
    eval_index, train_index = order[:held].sort().values, order[held:].sort().values
    data = TokenizedTexts({k: v[eval_index] for k, v in encoded.items()})
    train = None
    if len(train_index):
        train_encoded = {k: v[train_index] for k, v in encoded.items()}
        with torch.no_grad():
            targets = embed(
                encoder, torch.utils.data.DataLoader(TokenizedTexts(train_encoded), batch_size=64)
            )
        train = TokenizedTexts(train_encoded, targets)
    pair_inputs = None
    if pair_rows is not None:
        gold = torch.tensor([score for _, _, score in pair_rows], dtype=torch.float64)
        pair_inputs = (
            tokenize(tokenizer, [a for a, _, _ in pair_rows], seq_len),
            tokenize(tokenizer, [b for _, b, _ in pair_rows], seq_len),
            gold,
        )
    metric = EmbeddingFidelity(encoder, pair_inputs)
    options = {
        "model_dir": str(Path(model_dir).resolve()),
        "texts": str(Path(texts).resolve()) if isinstance(texts, (str, Path)) else None,
        "pairs": str(Path(pairs).resolve()) if pairs is not None else None,
        "seq_len": seq_len,
        "batch_sizes": list(sizes),
        "holdout": holdout,
    }
    task = Task(
        name=name,
        model=encoder,
        train=train,
        val=data,
        test=data,
        metric=metric,
        example_inputs=latency_inputs(tokenizer, text_list, seq_len, max(sizes)),
        train_config=TrainConfig(
            optimizer="adamw", lr=lr, epochs=0, batch_size=32, eval_batch_size=64, threads=1
        ),
        loss=embedding_distill_loss,
        source=_reference("text-embedding", options)
        if isinstance(texts, (str, Path, type(None)))
        else None,
    )
    # transformer-task extras (not Task fields) that the hf runtime and metrics read
    vars(task).update(
        latency={"seq_len": seq_len, "batch_sizes": list(sizes)},
        tokenizer=tokenizer,
        texts=text_list,
    )
    return task


def _label_ids(labels: list[Any], config: Any, path: str | Path) -> torch.Tensor:
    num_labels = int(getattr(config, "num_labels", 2))
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    ids = []
    for index, label in enumerate(labels):
        text = str(label)
        if text in label2id:
            value = label2id[text]
        else:
            try:
                value = int(float(text))
            except ValueError as exc:
                raise DataError(
                    f"data file {path}: label {label!r} (row {index + 1}) is neither a class id "
                    f"nor one of the model's labels {sorted(label2id)}"
                ) from exc
        if not 0 <= value < num_labels:
            raise DataError(
                f"data file {path}: label {label!r} (row {index + 1}) is outside the model's "
                f"{num_labels} classes (0..{num_labels - 1})"
            )
        ids.append(value)
    return torch.tensor(ids, dtype=torch.long)


def text_classification_task(
    model_dir: str | Path,
    data: str | Path,
    seq_len: int = DEFAULT_SEQ_LEN,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    name: str = "text-classification",
    lr: float = 2e-5,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Task:
    """The text-classification task: 80 % of the rows train, 20 % (seeded) test and validate."""
    from torchslim.hf.loading import load_classifier, load_tokenizer
    from torchslim.hf.texts import read_labelled

    if data is None:
        raise ConfigError("text-classification needs --data FILE.csv or FILE.jsonl (text,label)")
    sizes = check_batch_sizes(batch_sizes)
    texts, raw_labels = read_labelled(data)
    model = load_classifier(model_dir)
    check_seq_len(seq_len, model.backbone, model_dir)
    labels = _label_ids(raw_labels, model.config, data)
    tokenizer = load_tokenizer(model_dir)
    encoded = tokenize(tokenizer, texts, seq_len)
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))
    count = max(1, int(round(len(texts) * test_fraction))) if len(texts) > 1 else 0
    test_index, train_index = order[:count], order[count:]
    if len(train_index) == 0:
        train_index = test_index

    def subset(index: torch.Tensor) -> TokenizedTexts:
        return TokenizedTexts({k: v[index] for k, v in encoded.items()}, labels[index])

    test = subset(test_index) if count else subset(train_index)
    options = {
        "model_dir": str(Path(model_dir).resolve()),
        "data": str(Path(data).resolve()),
        "seq_len": seq_len,
        "batch_sizes": list(sizes),
    }
    task = Task(
        name=name,
        model=model,
        train=subset(train_index),
        val=test,
        test=test,
        metric="accuracy",
        example_inputs=latency_inputs(tokenizer, texts, seq_len, max(sizes)),
        train_config=TrainConfig(
            optimizer="adamw", lr=lr, epochs=0, batch_size=16, eval_batch_size=64, threads=1
        ),
        source=_reference("text-classification", options),
    )
    # transformer-task extras (not Task fields) that the hf runtime and metrics read
    vars(task).update(
        latency={"seq_len": seq_len, "batch_sizes": list(sizes)}, tokenizer=tokenizer, texts=texts
    )
    return task
