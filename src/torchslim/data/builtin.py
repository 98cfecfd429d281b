"""Built-in datasets: generated (MNIST-1D), shipped with scikit-learn (digits) or read from
local files (CIFAR-10, ``.npz`` arrays, image folders). Nothing here ever downloads.

Every loader is deterministic for a fixed seed and returns a :class:`~torchslim.data.Splits`.
The file-based loaders live in :mod:`torchslim.data.cifar` and :mod:`torchslim.data.files`
and are re-exported here.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import random
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from torchslim.data.cifar import CIFAR10_MEAN, CIFAR10_STD, load_cifar10
from torchslim.data.files import IMAGE_EXTENSIONS, load_image_folder, load_npz
from torchslim.data.splits import (
    Splits,
    check_fraction,
    check_positive_int,
    check_seed,
    holdout,
    make_splits,
    split_arrays,
)
from torchslim.errors import ConfigError

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGE_EXTENSIONS",
    "default_cache_dir",
    "load_cifar10",
    "load_digits",
    "load_digits32",
    "load_image_folder",
    "load_mnist1d",
    "load_npz",
]

_MNIST1D_MIN_SAMPLES = 100
_MNIST1D_KEYS = ("x", "y", "x_test", "y_test")


def default_cache_dir() -> Path:
    """Where generated datasets are cached: ``$TORCHSLIM_CACHE`` or ``~/.cache/torchslim``."""
    return Path(os.environ.get("TORCHSLIM_CACHE", Path.home() / ".cache" / "torchslim"))


# ------------------------------------------------------------------------------------ MNIST-1D


def load_mnist1d(
    num_samples: int = 5000,
    seed: int = 42,
    val_fraction: float = 0.1,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Splits:
    """MNIST-1D generated locally with the ``mnist1d`` package: inputs (1, 40), 10 classes.

    The generator's 80 % train part is split into train and val (``val_fraction`` of it,
    stratified); its 20 % test part is the test split. Generation takes seconds, so the
    arrays are cached as ``.npz`` in ``cache_dir`` (default :func:`default_cache_dir`).
    numpy's and Python's global RNG states are left as they were.
    """
    check_positive_int("num_samples", num_samples)
    if num_samples < _MNIST1D_MIN_SAMPLES:
        raise ConfigError(
            f"num_samples={num_samples} is too small for MNIST-1D; "
            f"pass at least {_MNIST1D_MIN_SAMPLES}"
        )
    check_seed(seed)
    check_fraction("val_fraction", val_fraction)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"mnist1d-{_mnist1d_version()}-n{num_samples}-seed{seed}.npz"
    arrays = _read_mnist1d_cache(path)
    if arrays is None:
        arrays = _generate_mnist1d(num_samples, seed)
        _write_npz_atomic(path, arrays)
    x, y = arrays["x"][:, None, :], arrays["y"]
    train, val = holdout(x, y, int(np.ceil(val_fraction * len(y))), seed)
    test = (arrays["x_test"][:, None, :], arrays["y_test"])
    return make_splits("mnist1d", train, val, test, num_classes=10)


def _mnist1d_version() -> str:
    try:
        return importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _generate_mnist1d(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """Run mnist1d's generator (never its downloader) without disturbing global RNG state."""
    import mnist1d.data as m

    args = m.get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        ds = m.make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x": np.asarray(ds["x"], dtype=np.float32),
        "y": np.asarray(ds["y"], dtype=np.int64),
        "x_test": np.asarray(ds["x_test"], dtype=np.float32),
        "y_test": np.asarray(ds["y_test"], dtype=np.int64),
    }


def _read_mnist1d_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is absent or unusable (then regenerate)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in _MNIST1D_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    ok = (
        arrays["x"].ndim == 2
        and arrays["x"].shape[1] == 40
        and arrays["x_test"].ndim == 2
        and arrays["x_test"].shape[1] == 40
        and len(arrays["x"]) == len(arrays["y"])
        and len(arrays["x_test"]) == len(arrays["y_test"])
    )
    return arrays if ok else None


def _write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` via a temp file and os.replace; warn (not fail) on OSError."""
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=path.name + ".", suffix=".tmp", delete=False
        ) as f:
            tmp_name = f.name
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        warnings.warn(
            f"could not cache dataset at {path} ({exc}); set TORCHSLIM_CACHE to a writable "
            "directory to avoid regenerating it",
            stacklevel=3,
        )
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


# -------------------------------------------------------------------------------------- digits


def _digits_split(
    seed: int, val_fraction: float, test_fraction: float
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """scikit-learn's 8x8 digits (shipped with sklearn), pixels in [0, 1], split stratified."""
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    return split_arrays(x, y, val_fraction, test_fraction, seed)


def load_digits(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2) -> Splits:
    """scikit-learn's 1797 handwritten 8x8 digits as flat vectors: inputs (64,), 10 classes.

    Pixels are scaled to [0, 1]; fractions are of all 1797 samples.
    """
    train, val, test = _digits_split(seed, val_fraction, test_fraction)
    return make_splits("digits", train, val, test, num_classes=10)


def load_digits32(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2) -> Splits:
    """The digits as 3x32x32 images, a stand-in for CIFAR-sized inputs: inputs (3, 32, 32).

    Same samples per split as :func:`load_digits` for a seed. Each 8x8 image is upsampled
    bilinearly to 32x32, copied to 3 channels and normalized per channel with the mean/std
    of the train split.
    """
    pairs = _digits_split(seed, val_fraction, test_fraction)
    images = [_upsample_digits(x) for x, _ in pairs]
    mean = images[0].mean(dim=(0, 2, 3), keepdim=True)
    std = images[0].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    train, val, test = (
        (((img - mean) / std).numpy(), y) for img, (_, y) in zip(images, pairs, strict=True)
    )
    return make_splits("digits32", train, val, test, num_classes=10)


def _upsample_digits(x: np.ndarray) -> torch.Tensor:
    """(N, 64) in [0, 1] to (N, 3, 32, 32), bilinear, channels identical."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1, 1, 8, 8)
    up = F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False)
    return up.repeat(1, 3, 1, 1)
