"""The :class:`Splits` container and helpers that split arrays into train / val / test.

Every built-in loader returns a :class:`Splits`, so training, evaluation and caching code
can treat all datasets alike.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from torchslim.errors import ConfigError, DataError

ArrayPair = tuple[np.ndarray, np.ndarray]


@dataclass
class Splits:
    """Train / validation / test data of one dataset, as TensorDatasets (x float32, y int64)."""

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    class_names: list[str] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample without the batch axis, e.g. ``(1, 40)``."""
        return tuple(self.train.tensors[0].shape[1:])

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the name, classes and every tensor's shape, dtype and bytes.

        Two Splits with the same fingerprint hold identical data, so it serves as a cache key.
        """
        h = hashlib.sha256()
        h.update(f"name={self.name};num_classes={self.num_classes};".encode())
        if self.class_names is not None:
            h.update(("class_names=" + "\x1f".join(self.class_names) + ";").encode())
        for split_name in ("train", "val", "test"):
            for i, t in enumerate(getattr(self, split_name).tensors):
                arr = np.ascontiguousarray(t.detach().cpu().numpy())
                h.update(f"{split_name}[{i}]:{tuple(arr.shape)}:{arr.dtype.str};".encode())
                h.update(arr.reshape(-1).view(np.uint8).data)
        return h.hexdigest()


def make_splits(
    name: str,
    train: ArrayPair,
    val: ArrayPair,
    test: ArrayPair,
    num_classes: int,
    class_names: list[str] | None = None,
) -> Splits:
    """Build a :class:`Splits` from three ``(x, y)`` pairs of numpy arrays (or tensors).

    x becomes contiguous float32 and y int64. Raises DataError when x and y lengths differ
    or a label lies outside ``[0, num_classes)``.
    """
    check_positive_int("num_classes", num_classes)
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(
            f"{name}: {len(class_names)} class names for {num_classes} classes; "
            "pass one name per class"
        )
    datasets = []
    for split_name, (x, y) in (("train", train), ("val", val), ("test", test)):
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32)).contiguous()
        yt = torch.as_tensor(np.asarray(y, dtype=np.int64)).contiguous()
        if xt.shape[0] != yt.shape[0]:
            raise DataError(
                f"{name} {split_name} split has {xt.shape[0]} inputs but {yt.shape[0]} labels; "
                "give every input exactly one label"
            )
        if yt.ndim != 1:
            raise DataError(
                f"{name} {split_name} labels have shape {tuple(yt.shape)}; "
                "labels must be a 1-D array of class ids"
            )
        if yt.numel() and (int(yt.min()) < 0 or int(yt.max()) >= num_classes):
            raise DataError(
                f"{name} {split_name} labels span [{int(yt.min())}, {int(yt.max())}] outside "
                f"[0, {num_classes}); use class ids 0..{num_classes - 1}"
            )
        datasets.append(TensorDataset(xt, yt))
    train_set, val_set, test_set = datasets
    return Splits(
        name, train_set, val_set, test_set, num_classes=num_classes, class_names=class_names
    )


def split_arrays(
    x: np.ndarray,
    y: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    stratify: bool = True,
) -> tuple[ArrayPair, ArrayPair, ArrayPair]:
    """Split ``(x, y)`` into train, val and test pairs with scikit-learn's train_test_split.

    Both fractions are of the whole dataset. The split is deterministic for a seed and
    stratified by label when ``stratify`` (falling back to a plain random split when some
    class is too rare to stratify, e.g. a class with a single sample).
    """
    check_fractions(val_fraction, test_fraction)
    check_seed(seed)
    n = len(y)
    rest, test = holdout(x, y, math.ceil(test_fraction * n), seed, stratify)
    train, val = holdout(*rest, math.ceil(val_fraction * n), seed, stratify)
    return train, val, test


def holdout(
    x: np.ndarray, y: np.ndarray, size: int, seed: int, stratify: bool = True
) -> tuple[ArrayPair, ArrayPair]:
    """Hold ``size`` samples out of ``(x, y)``; returns ``((x_rest, y_rest), (x_out, y_out))``."""
    x, y = np.asarray(x), np.asarray(y)
    n = len(y)
    if len(x) != n:
        raise DataError(f"{len(x)} inputs but {n} labels; give every input exactly one label")
    if not 0 < size < n:
        raise DataError(
            f"cannot hold out {size} of {n} samples; provide more data or change the split "
            "fractions/sizes so every split gets at least one sample"
        )
    idx = np.arange(n)
    strat = y if stratify and _can_stratify(y, size) else None
    rest_idx, out_idx = train_test_split(
        idx, test_size=size, random_state=seed, shuffle=True, stratify=strat
    )
    return (x[rest_idx], y[rest_idx]), (x[out_idx], y[out_idx])


def _can_stratify(y: np.ndarray, size: int) -> bool:
    """Whether train_test_split can stratify y with ``size`` held-out samples."""
    _, counts = np.unique(y, return_counts=True)
    k = len(counts)
    return bool(counts.min() >= 2 and size >= k and len(y) - size >= k)


# ---------------------------------------------------------------------------- argument checks


def check_fraction(name: str, value: Any) -> None:
    """Raise ConfigError unless ``value`` is a number strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < 1:
        raise ConfigError(f"{name} must be a number in (0, 1), got {value!r}; pass e.g. 0.15")


def check_fractions(val_fraction: Any, test_fraction: Any) -> None:
    """Raise ConfigError unless both fractions are in (0, 1) and leave some training data."""
    check_fraction("val_fraction", val_fraction)
    check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no "
            "training data; make their sum smaller than 1"
        )


def check_positive_int(name: str, value: Any) -> None:
    """Raise ConfigError unless ``value`` is an integer > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ConfigError(f"{name} must be an integer > 0, got {value!r}; pass a positive integer")


def check_seed(seed: Any) -> None:
    """Raise ConfigError unless ``seed`` is an integer in [0, 2**32) as numpy/sklearn need."""
    if (
        isinstance(seed, bool)
        or not isinstance(seed, numbers.Integral)
        or not 0 <= int(seed) < 2**32
    ):
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}; pass e.g. 0")
