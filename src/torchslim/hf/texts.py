"""Text inputs of the transformer tasks: texts files, gold-similarity pairs, labelled data.

Every reader checks the file and raises :class:`~torchslim.errors.DataError` naming the
file (and line or row) on bad input; files are only read, never modified.

* texts file: UTF-8, one text per line (blank lines skipped);
* pairs file: ``.csv`` / ``.tsv`` with a header ``sentence1,sentence2,score`` (or
  ``text1,text2,score``), or ``.jsonl`` with those keys;
* labelled data: ``.csv`` with a header holding ``text`` and ``label``, or ``.jsonl`` with
  objects holding ``text`` and ``label``.

The built-in default texts (:func:`builtin_texts`) are 354 varied English sentences
written for torchslim (cooking, travel, sports, technology, science, history, ...),
shipped in ``torchslim/hf/data/texts.txt``.
"""

from __future__ import annotations

import csv
import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

from torchslim.errors import DataError

PAIR_KEYS = (("sentence1", "sentence2", "score"), ("text1", "text2", "score"))


def _read_text(path: str | Path, what: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist; check the path")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{what} {path} is not UTF-8 (invalid byte at line {line}); save it as UTF-8"
        ) from exc
    if not text.strip():
        raise DataError(f"{what} {path} is empty; give at least two non-blank lines")
    return text


def read_texts(path: str | Path) -> list[str]:
    """Texts from a UTF-8 file, one per line (blank lines skipped); at least two."""
    lines = [line.strip() for line in _read_text(path, "texts file").splitlines()]
    texts = [line for line in lines if line]
    if len(texts) < 2:
        raise DataError(
            f"texts file {path} has {len(texts)} text; give at least two (one per line)"
        )
    return texts


def builtin_texts() -> list[str]:
    """The built-in default text set (354 varied English sentences)."""
    data = resources.files("torchslim.hf").joinpath("data/texts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in data.splitlines() if line.strip()]


def _rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    """(line or row number, record) of a CSV/TSV (with header) or JSONL file."""
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {number} is not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DataError(f"{path} line {number} is not a JSON object")
            rows.append((number, record))
        return rows
    if path.suffix not in (".csv", ".tsv"):
        raise DataError(f"data file {path} must be .csv, .tsv or .jsonl (got {path.suffix!r})")
    dialect = "excel-tab" if path.suffix == ".tsv" else "excel"
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    return [(number, dict(row)) for number, row in enumerate(reader, start=2)]


def read_pairs(path: str | Path) -> list[tuple[str, str, float]]:
    """Sentence pairs with a gold similarity score."""
    path = Path(path)
    rows = _rows(path, _read_text(path, "pairs file"))
    if not rows:
        raise DataError(f"pairs file {path} has no rows; add sentence1,sentence2,score rows")
    keys = next((k for k in PAIR_KEYS if all(key in rows[0][1] for key in k)), None)
    if keys is None:
        raise DataError(
            f"pairs file {path} needs the columns sentence1, sentence2 and score "
            f"(found {', '.join(map(str, rows[0][1])) or 'none'})"
        )
    pairs = []
    for number, record in rows:
        first, second, score = (record.get(k) for k in keys)
        try:
            value = float(score)  # type: ignore[arg-type]  # None raises TypeError: caught
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"pairs file {path} row {number}: score {score!r} is not a number"
            ) from exc
        if not first or not second:
            raise DataError(f"pairs file {path} row {number} has an empty sentence")
        pairs.append((str(first), str(second), value))
    if len(pairs) < 3:
        raise DataError(f"pairs file {path} has {len(pairs)} pairs; Spearman needs at least 3")
    return pairs


def read_labelled(path: str | Path) -> tuple[list[str], list[Any]]:
    """Texts and raw labels from a ``text,label`` CSV or JSONL file."""
    path = Path(path)
    rows = _rows(path, _read_text(path, "data file"))
    if not rows:
        raise DataError(f"data file {path} has no rows; add text,label rows")
    texts, labels = [], []
    for number, record in rows:
        if "text" not in record:
            raise DataError(
                f"data file {path} row {number} has no 'text' field "
                f"(fields: {', '.join(map(str, record)) or 'none'}); add a text column"
            )
        label = record.get("label")
        if label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(
                f"data file {path} row {number} has no label; every row needs text and label"
            )
        text = str(record["text"] or "").strip()
        if not text:
            raise DataError(f"data file {path} row {number} has an empty text")
        texts.append(text)
        labels.append(label.strip() if isinstance(label, str) else label)
    return texts, labels
