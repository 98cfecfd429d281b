"""IDX files (the MNIST / Fashion-MNIST format) and Fashion-MNIST from local files.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in big-endian C order.
Files may be gzip-compressed (recognized by their first bytes, not their name). Nothing
here downloads: Fashion-MNIST is read from the folder that Debian's
``dataset-fashion-mnist`` package installs (:data:`FASHION_MNIST_DIR`) or from any folder
holding the four files.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from torchslim.data.splits import Splits, check_positive_int, check_seed, holdout, make_splits
from torchslim.errors import DataError

#: Where Debian's ``dataset-fashion-mnist`` package installs the four IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: The Debian package that installs them.
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
#: Mean and standard deviation of the Fashion-MNIST training pixels (scaled to [0, 1]).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
#: Class names in label order (from the dataset's README).
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# IDX type code -> numpy big-endian dtype.
_IDX_TYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic; DataError on failure."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"cannot read IDX file {path} ({type(exc).__name__}: {exc.strerror or exc}); "
            "check it exists and is readable"
        ) from exc
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(
            f"IDX file {path} is a truncated or corrupt gzip file ({type(exc).__name__}); "
            "re-install or re-download it"
        ) from exc


def load_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (plain or gzip-compressed) into a numpy array in native byte order.

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz``.

    Returns:
        An array of the file's shape and type (uint8 for the (Fashion-)MNIST files).

    Raises:
        DataError: the file is missing or unreadable, its magic number is not an IDX one,
            or it is truncated or longer than its header says.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {path} not found; pass the path of an existing IDX file")
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(
            f"IDX file {path} is truncated: {len(data)} bytes, shorter than the 4-byte magic "
            "number; re-install or re-download it"
        )
    zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise DataError(
            f"{path} is not an IDX file: magic number 0x{data[:4].hex()} (expected 0x0000TTDD: "
            "two zero bytes, a type code 08/09/0b/0c/0d/0e and the number of dimensions)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"IDX file {path} is truncated: its header needs {header} bytes but the file has "
            f"{len(data)}; re-install or re-download it"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[type_code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(
            f"IDX file {path} is {state}: shape {shape} of {dtype.name} needs {expected} bytes, "
            f"the file has {len(data)}; re-install or re-download it"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _find(data_dir: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    return None


def _missing_message(data_dir: Path, missing: list[str] | None) -> str:
    what = (
        f"folder {data_dir} not found"
        if missing is None
        else f"files not found in {data_dir} (missing {', '.join(missing)})"
    )
    return (
        f"Fashion-MNIST {what}; "
        f"install the Debian package {FASHION_MNIST_PACKAGE} "
        f"(apt-get install {FASHION_MNIST_PACKAGE}, files in {FASHION_MNIST_DIR}) "
        "or pass --data-dir DIR holding the four IDX files (.gz or plain)"
    )


def _read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one split; DataError if malformed."""
    images, labels = load_idx(images_path), load_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{images_path} holds {images.dtype} of shape {images.shape}, expected uint8 images "
            "(N, H, W); pass the images file (idx3-ubyte) there"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(
            f"{labels_path} holds {labels.dtype} of shape {labels.shape}, expected uint8 labels "
            "(N,); pass the labels file (idx1-ubyte) there"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} "
            "labels; the two files must come from the same release"
        )
    if labels.size and labels.max() > 9:
        raise DataError(
            f"{labels_path} has labels up to {int(labels.max())}, expected 0..9; "
            "re-install or re-download it"
        )
    return images, labels.astype(np.int64)


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    val_size: int = 5000,
    seed: int = 0,
    limit: int | None = None,
) -> Splits:
    """Fashion-MNIST from its four IDX files: inputs (1, 28, 28), 10 classes.

    The 60,000 training images are split into train and ``val_size`` validation images
    (stratified and seeded, so the same for a seed on every machine; capped at half of
    them); the 10,000 ``t10k`` images are the test split. Pixels are scaled to [0, 1] and
    normalized with :data:`FASHION_MNIST_MEAN` / :data:`FASHION_MNIST_STD`.

    Args:
        data_dir: folder holding ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (default
            :data:`FASHION_MNIST_DIR`).
        val_size: validation images carved from the training files.
        seed: seed of the validation split.
        limit: keep at most this many samples per split (after splitting), for quick runs.

    Raises:
        DataError: missing files (the message names the Debian package), or malformed ones.
    """
    check_positive_int("val_size", val_size)
    check_seed(seed)
    if limit is not None:
        check_positive_int("limit", limit)
    root = Path(data_dir if data_dir is not None else FASHION_MNIST_DIR)
    if not root.is_dir():
        raise DataError(_missing_message(root, None))
    paths = {key: _find(root, stem) for key, stem in _FILES.items()}
    missing = [_FILES[key] + "[.gz]" for key, p in paths.items() if p is None]
    if missing:
        raise DataError(_missing_message(root, missing))
    x_all, y_all = _read_pair(paths["train_images"], paths["train_labels"])  # type: ignore[arg-type]
    x_test, y_test = _read_pair(paths["test_images"], paths["test_labels"])  # type: ignore[arg-type]
    if len(y_all) < 2 or len(y_test) == 0:
        raise DataError(
            f"Fashion-MNIST files in {root} hold {len(y_all)} training and {len(y_test)} test "
            "images; need at least 2 and 1 (re-install the files)"
        )
    train, val = holdout(x_all, y_all, min(val_size, len(y_all) // 2), seed)
    pairs = [train, val, (x_test, y_test)]
    if limit is not None:
        pairs = [(x[:limit], y[:limit]) for x, y in pairs]
    train, val, test = ((_to_float(x), y) for x, y in pairs)
    return make_splits(
        "fashion-mnist", train, val, test, num_classes=10, class_names=FASHION_MNIST_CLASSES
    )


def _to_float(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 to normalized (N, 1, H, W) float32."""
    x = images[:, None].astype(np.float32)
    x /= 255.0
    x -= FASHION_MNIST_MEAN
    x /= FASHION_MNIST_STD
    return x
