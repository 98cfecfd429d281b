"""CIFAR-10 from the standard python-pickle batches, read with a restricted unpickler.

``pickle.load`` runs arbitrary code named in the file, so a tampered download could take over
the machine. :class:`_CifarUnpickler` resolves only the few numpy globals an array needs and
refuses everything else with a DataError.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from torchslim.data.splits import Splits, check_positive_int, check_seed, holdout, make_splits
from torchslim.errors import DataError

#: Per-channel mean and standard deviation of the CIFAR-10 training images (pixels in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_SUBDIR = "cifar-10-batches-py"
_BATCH_RE = re.compile(r"data_batch_(\d+)")
_PIXELS = 3 * 32 * 32
_EXPECTED = "data_batch_1..5 and test_batch from cifar-10-python.tar.gz"

# (module, name) -> (module to import, attribute). numpy 2 moved numpy.core to numpy._core;
# old files (the official ones were written by Python 2) name numpy.core.
_ALLOWED_GLOBALS: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    **{
        (mod, name): (("numpy._core.multiarray", "numpy.core.multiarray"), name)
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    },
    **{
        (mod, "_frombuffer"): (("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer")
        for mod in ("numpy.core.numeric", "numpy._core.numeric")
    },
    ("numpy", "ndarray"): (("numpy",), "ndarray"),
    ("numpy", "dtype"): (("numpy",), "dtype"),
    # Python 3 pickles bytes as _codecs.encode(str, "latin1") under protocol 2.
    ("_codecs", "encode"): (("_codecs",), "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """An Unpickler that can rebuild dicts, lists and numpy arrays, and nothing else."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise DataError(
                f"{self._path} references {module}.{name}, which a CIFAR-10 batch never "
                "contains; refusing to unpickle it (re-download CIFAR-10 from a trusted source)"
            )
        modules, attr = target
        for mod_name in modules:
            try:
                return getattr(importlib.import_module(mod_name), attr)
            except (ImportError, AttributeError):
                continue
        raise DataError(
            f"{self._path} needs {module}.{name}, which this numpy lacks; "
            "install a numpy that provides it"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(
            f"{self._path} uses persistent ids, which a CIFAR-10 batch never contains; "
            "re-download CIFAR-10 from a trusted source"
        )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as (uint8 data (N, 3072), int64 labels (N,)); DataError if malformed."""
    try:
        with path.open("rb") as f:
            obj = _CifarUnpickler(f, path).load()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(
            f"cannot read CIFAR-10 file {path} ({_one_line(exc)}); check it exists and is readable"
        ) from exc
    except Exception as exc:  # a corrupt pickle can raise almost any error type
        raise DataError(
            f"CIFAR-10 file {path} is truncated or corrupt ({_one_line(exc)}); "
            "re-extract cifar-10-python.tar.gz"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(
            f"CIFAR-10 file {path} holds a {type(obj).__name__}, not a dict; "
            f"the directory must hold {_EXPECTED}"
        )
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if data is None or labels is None:
        keys = sorted(repr(k) for k in obj)
        raise DataError(
            f"CIFAR-10 file {path} has keys {', '.join(keys)} but needs b'data' and b'labels'; "
            f"the directory must hold {_EXPECTED}"
        )
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != _PIXELS:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(
            f"CIFAR-10 file {path} has data of shape {shape}, expected (N, {_PIXELS}) uint8; "
            "re-extract cifar-10-python.tar.gz"
        )
    if data.dtype != np.uint8:
        ok_int = np.issubdtype(data.dtype, np.integer)
        if not ok_int or (data.size and (data.min() < 0 or data.max() > 255)):
            raise DataError(
                f"CIFAR-10 file {path} has data of dtype {data.dtype}, expected uint8 pixels; "
                "re-extract cifar-10-python.tar.gz"
            )
        data = data.astype(np.uint8)
    try:
        y = np.asarray(labels)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError
        y = y.astype(np.int64)
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"CIFAR-10 file {path} has labels that are not a flat list of integers; "
            "re-extract cifar-10-python.tar.gz"
        ) from exc
    if len(y) != len(data):
        raise DataError(
            f"CIFAR-10 file {path} has {len(data)} images but {len(y)} labels; "
            "re-extract cifar-10-python.tar.gz"
        )
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(
            f"CIFAR-10 file {path} has labels in [{y.min()}, {y.max()}], expected 0..9; "
            "re-extract cifar-10-python.tar.gz"
        )
    return data, y


def _find_files(data_dir: Path) -> tuple[list[Path], Path]:
    """The data_batch_* files (numeric order) and test_batch of a CIFAR-10 directory."""
    if not data_dir.exists():
        raise DataError(
            f"CIFAR-10 directory {data_dir} not found; pass --data-dir pointing at the folder "
            f"holding {_EXPECTED}"
        )
    if not data_dir.is_dir():
        raise DataError(
            f"CIFAR-10 path {data_dir} is not a directory; pass --data-dir pointing at the "
            f"folder holding {_EXPECTED}"
        )
    root = data_dir / _SUBDIR if (data_dir / _SUBDIR).is_dir() else data_dir
    batches = sorted(
        (p for p in root.iterdir() if _BATCH_RE.fullmatch(p.name) and p.is_file()),
        key=lambda p: int(_BATCH_RE.fullmatch(p.name).group(1)),  # type: ignore[union-attr]
    )
    test = root / "test_batch"
    missing = ([] if batches else ["data_batch_1..5"]) + ([] if test.is_file() else ["test_batch"])
    if missing:
        raise DataError(
            f"CIFAR-10 directory {root} lacks {' and '.join(missing)}; it must hold {_EXPECTED} "
            "(extract the archive there)"
        )
    return batches, test


def load_cifar10(
    data_dir: str | os.PathLike[str],
    val_size: int = 5000,
    seed: int = 0,
    limit: int | None = None,
) -> Splits:
    """CIFAR-10 from local python-pickle batches: inputs (3, 32, 32), 10 classes.

    Reads ``data_batch_*`` (any number, at least one) and ``test_batch`` from ``data_dir`` or
    its ``cifar-10-batches-py`` subfolder. Pixels are scaled to [0, 1] and normalized with
    :data:`CIFAR10_MEAN` / :data:`CIFAR10_STD`. ``val_size`` images are held out of the
    training batches (stratified, seeded; capped at half of them so train stays at least as
    large). ``limit`` keeps at most that many samples per split, for quick runs.
    """
    check_positive_int("val_size", val_size)
    check_seed(seed)
    if limit is not None:
        check_positive_int("limit", limit)
    batch_paths, test_path = _find_files(Path(data_dir))
    parts = [_read_batch(p) for p in batch_paths]
    x_all = np.concatenate([d for d, _ in parts])
    y_all = np.concatenate([y for _, y in parts])
    x_test, y_test = _read_batch(test_path)
    if len(y_all) < 2:
        raise DataError(
            f"CIFAR-10 training batches in {batch_paths[0].parent} hold {len(y_all)} image(s); "
            "need at least 2 to carve a validation split (re-extract cifar-10-python.tar.gz)"
        )
    if len(y_test) == 0:
        raise DataError(f"CIFAR-10 file {test_path} holds no images; re-extract the archive")
    train, val = holdout(x_all, y_all, min(val_size, len(y_all) // 2), seed)
    pairs = [train, val, (x_test, y_test)]
    if limit is not None:
        pairs = [(x[:limit], y[:limit]) for x, y in pairs]
    train, val, test = ((_to_float(x), y) for x, y in pairs)
    return make_splits("cifar10", train, val, test, num_classes=10)


def _to_float(data: np.ndarray) -> np.ndarray:
    """(N, 3072) uint8 to normalized (N, 3, 32, 32) float32."""
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR10_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    x = data.reshape(-1, 3, 32, 32).astype(np.float32)
    x /= 255.0
    x -= mean
    x /= std
    return x
