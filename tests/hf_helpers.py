"""Tiny offline Hugging Face BERT models for the transformer tests.

Public helpers (import from tests: ``from hf_helpers import make_tiny_bert``):

``make_tiny_bert(tmp_path, *, name="tiny-bert", layers=2, hidden=64, heads=4,
intermediate=128, max_positions=64, pooling="mean", normalize=True, num_labels=None,
init_std=0.2, seed=0) -> pathlib.Path``
    Builds a randomly initialised ``BertModel`` (seeded, deterministic) with a tiny
    WordPiece vocabulary written here, and saves it under ``tmp_path / name`` in the
    sentence-transformers layout: ``modules.json``, ``1_Pooling/config.json``
    (``pooling`` is ``"mean"`` or ``"cls"``), ``2_Normalize/`` when ``normalize``,
    ``config.json``, ``model.safetensors``, ``vocab.txt`` and the tokenizer files.
    With ``num_labels`` set it saves a plain ``BertForSequenceClassification`` folder
    instead (no modules.json). ``init_std`` is larger than BERT's 0.02 so the tiny
    random layers do real work (compression errors show up in the outputs).
    Returns the folder.

``write_texts(path, count=48) -> pathlib.Path``: a UTF-8 text file, one sentence a line,
    made only of words in the tiny vocabulary.

``write_classification_data(path, count=64) -> pathlib.Path``: a CSV (``.csv``) or JSONL
    (``.jsonl``, chosen by the suffix) with ``text,label`` rows; the label (0/1) is whether
    the sentence contains a "positive" word, so a fine-tuned tiny model can learn it.

``TINY_WORDS``: the plain words of the tiny vocabulary.

Needs ``transformers`` (``pip install torchslim[hf]``); nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE_WORDS = ["good", "great", "happy", "bright", "warm", "kind", "fresh", "calm"]
NEGATIVE_WORDS = ["bad", "sad", "dark", "cold", "rude", "stale", "noisy", "broken"]
NOUNS = [
    "cat", "dog", "house", "river", "city", "train", "book", "song", "garden", "window",
    "market", "teacher", "child", "coffee", "road", "storm", "model", "engine", "bridge",
    "forest", "letter", "table", "computer", "morning", "evening", "lake", "mountain",
]  # fmt: skip
VERBS = [
    "sees", "likes", "finds", "builds", "reads", "opens", "crosses", "paints", "carries",
    "follows", "watches", "fixes", "sells", "writes",
]  # fmt: skip
FUNCTION_WORDS = ["the", "a", "and", "of", "in", "on", "with", "near", "very", "is", "was"]
TINY_WORDS = sorted(set(POSITIVE_WORDS + NEGATIVE_WORDS + NOUNS + VERBS + FUNCTION_WORDS))
SUBWORDS = ["##s", "##ed", "##ing", "##ly", "##er", ".", ",", "!", "?"]


def _vocab() -> list[str]:
    return SPECIAL_TOKENS + TINY_WORDS + SUBWORDS + list("abcdefghijklmnopqrstuvwxyz")


def make_tiny_bert(
    tmp_path: str | Path,
    *,
    name: str = "tiny-bert",
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    intermediate: int = 128,
    max_positions: int = 64,
    pooling: str = "mean",
    normalize: bool = True,
    num_labels: int | None = None,
    init_std: float = 0.2,
    seed: int = 0,
) -> Path:
    """Save a tiny random BERT under ``tmp_path / name`` and return the folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    folder = Path(tmp_path) / name
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(_vocab()) + "\n", encoding="utf-8")
    config = BertConfig(
        vocab_size=len(_vocab()),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        initializer_range=init_std,
        type_vocab_size=2,
        pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if num_labels is not None:
            config.num_labels = num_labels
            config.architectures = ["BertForSequenceClassification"]
            model = BertForSequenceClassification(config)
        else:
            config.architectures = ["BertModel"]
            model = BertModel(config, add_pooling_layer=False)
    model.eval()
    model.save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {"tokenizer_class": "BertTokenizer", "do_lower_case": True,
             "model_max_length": max_positions}
        ),
        encoding="utf-8",
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(folder)  # reads vocab.txt, writes tokenizer.json
    tokenizer.save_pretrained(folder)
    if num_labels is None:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ]
        if normalize:
            modules.append(
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                }
            )
            (folder / "2_Normalize").mkdir(exist_ok=True)
        (folder / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
        (folder / "1_Pooling").mkdir(exist_ok=True)
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        (folder / "1_Pooling" / "config.json").write_text(
            json.dumps(
                {
                    "word_embedding_dimension": hidden,
                    "pooling_mode_cls_token": pooling == "cls",
                    "pooling_mode_mean_tokens": pooling == "mean",
                    "pooling_mode_max_tokens": False,
                    "pooling_mode_mean_sqrt_len_tokens": False,
                }
            ),
            encoding="utf-8",
        )
        (folder / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max_positions, "do_lower_case": False}), encoding="utf-8"
        )
    return folder


def _sentences(count: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        label = index % 2
        adjective = rng.choice(POSITIVE_WORDS if label else NEGATIVE_WORDS)
        words = [
            rng.choice(["the", "a"]),
            adjective,
            rng.choice(NOUNS),
            rng.choice(VERBS),
            rng.choice(["the", "a"]),
            rng.choice(NOUNS),
        ]
        if rng.random() < 0.5:
            words += [rng.choice(["in", "near", "with", "on"]), "the", rng.choice(NOUNS)]
        rows.append((" ".join(words) + rng.choice([".", "!", "?", ""]), label))
    return rows


def write_texts(path: str | Path, count: int = 48, seed: int = 0) -> Path:
    """A UTF-8 texts file (one sentence a line) in the tiny vocabulary."""
    path = Path(path)
    path.write_text("\n".join(t for t, _ in _sentences(count, seed)) + "\n", encoding="utf-8")
    return path


def write_classification_data(path: str | Path, count: int = 64, seed: int = 0) -> Path:
    """A ``text,label`` CSV or JSONL (by suffix) in the tiny vocabulary."""
    path = Path(path)
    rows = _sentences(count, seed)
    if path.suffix == ".jsonl":
        path.write_text(
            "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8"
        )
    else:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    return path


def tiny_embedding_task(root: str | Path, texts: int = 48, seq_len: int = 24):
    """A tiny BERT in sentence-transformers layout under ``root`` and its ``text-embedding``
    task over ``texts`` generated sentences: ``(folder, task)``."""
    from torchslim import tasks

    folder = make_tiny_bert(root)
    path = write_texts(Path(root) / "texts.txt", count=texts)
    task = tasks.get("text-embedding", model_dir=str(folder), texts=str(path), seq_len=seq_len)
    return folder, task
