"""User datasets from local files: ``.npz`` arrays and folders of class-named image folders."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from torchslim.data.splits import (
    Splits,
    check_fractions,
    check_positive_int,
    check_seed,
    holdout,
    make_splits,
    split_arrays,
)
from torchslim.errors import DataError

#: File suffixes (lower case) that :func:`load_image_folder` reads as images.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})

_NPZ_LAYOUTS = "x_train,y_train,x_test,y_test (optionally x_val,y_val) or x,y"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------------------- npz


def load_npz(
    path: str | os.PathLike[str],
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> Splits:
    """Arrays from an ``.npz`` file (read with ``allow_pickle=False``, so no code runs).

    Keys ``x_train, y_train, x_test, y_test`` (plus optional ``x_val, y_val``; else val is
    carved from train with ``val_fraction`` of it) or just ``x, y`` (split into all three
    with both fractions). Labels are integer class ids in [0, C); C = largest label + 1.
    """
    path = Path(path)
    check_seed(seed)
    check_fractions(val_fraction, test_fraction)
    if not path.is_file():
        raise DataError(
            f"npz file {path} not found; pass the path of an .npz holding {_NPZ_LAYOUTS}"
        )
    named = _read_npz(path)
    prefixes = [k[1:] for k in named if k.startswith("x")]
    for suffix in prefixes:
        _check_pair(path, named["x" + suffix], named["y" + suffix], suffix)
    shapes = {named["x" + s].shape[1:] for s in prefixes}
    if len(shapes) > 1:
        raise DataError(
            f"{path} has inputs of differing per-sample shapes {sorted(shapes)}; "
            "give every split the same sample shape"
        )
    num_classes = int(max(named["y" + s].max() for s in prefixes)) + 1
    if "x" in named:
        train, val, test = split_arrays(named["x"], named["y"], val_fraction, test_fraction, seed)
    else:
        train = (named["x_train"], named["y_train"])
        test = (named["x_test"], named["y_test"])
        if "x_val" in named:
            val = (named["x_val"], named["y_val"])
        else:
            n_val = int(np.ceil(val_fraction * len(train[1])))
            train, val = holdout(*train, n_val, seed)
    return make_splits(path.stem, train, val, test, num_classes=num_classes)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one accepted key layout, read without pickle; DataError if malformed."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise DataError(f"cannot open {path} ({_one_line(exc)}); check it is readable") from exc
    # np.load is given our own file object: given a path, it leaks the handle on a bad zip.
    with f:
        magic = f.read(6)
        f.seek(0)
        if magic == b"\x93NUMPY":
            raise DataError(
                f"{path} is a single .npy array, not an .npz archive; "
                f"save one with np.savez holding {_NPZ_LAYOUTS}"
            )
        if not magic.startswith(b"PK"):
            raise DataError(
                f"{path} is not an .npz (zip) archive; save one with np.savez holding "
                f"{_NPZ_LAYOUTS}"
            )
        try:
            npz = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(
                f"{path} is not a readable .npz archive ({_one_line(exc)}); "
                f"save one with np.savez holding {_NPZ_LAYOUTS}"
            ) from exc
        with npz:
            keys = set(npz.files)

            def get(key: str) -> np.ndarray:
                try:
                    return npz[key]
                except Exception as exc:  # corrupt member, pickled objects, bad header, ...
                    if "allow_pickle" in str(exc):
                        raise DataError(
                            f"array {key!r} in {path} holds pickled Python objects, which are "
                            "refused for safety; store plain numeric arrays"
                        ) from exc
                    raise DataError(
                        f"array {key!r} in {path} is unreadable ({_one_line(exc)}); "
                        "save plain numeric arrays with np.savez"
                    ) from exc

            if {"x_train", "y_train", "x_test", "y_test"} <= keys:
                if ("x_val" in keys) != ("y_val" in keys):
                    raise DataError(f"{path} has only one of x_val / y_val; store both or neither")
                names = ["x_train", "y_train", "x_test", "y_test"]
                names += ["x_val", "y_val"] if "x_val" in keys else []
                return {k: get(k) for k in names}
            if {"x", "y"} <= keys:
                return {"x": get("x"), "y": get("y")}
            raise DataError(f"{path} has keys {sorted(keys)}; it needs {_NPZ_LAYOUTS}")


def _check_pair(path: Path, x: np.ndarray, y: np.ndarray, suffix: str) -> None:
    """DataError unless x is numeric (N, ...) and finite and y holds N integer ids >= 0."""
    xk, yk = "x" + suffix, "y" + suffix
    if x.ndim < 2 or x.dtype.kind not in "biuf":
        raise DataError(
            f"{xk} in {path} has shape {x.shape} and dtype {x.dtype}; store numeric inputs "
            "shaped (num_samples, features...)"
        )
    if len(x) == 0:
        raise DataError(f"{xk} in {path} is empty; store at least one sample per split")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"{yk} in {path} has shape {y.shape} but {xk} has {len(x)} samples; "
            f"store one label per sample, shaped ({len(x)},)"
        )
    if y.dtype.kind not in "iu":
        raise DataError(
            f"{yk} in {path} has dtype {y.dtype}, not integer labels; store class ids, "
            "e.g. y.astype(np.int64)"
        )
    if y.min() < 0:
        raise DataError(f"{yk} in {path} has negative label {y.min()}; use class ids 0..C-1")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{xk} in {path} contains NaN or infinity; store finite inputs")


# -------------------------------------------------------------------------------- image folder


def load_image_folder(
    root: str | os.PathLike[str],
    image_size: int = 32,
    grayscale: bool = False,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> Splits:
    """Images in class-named sub-folders of ``root``: inputs (3 or 1, size, size) in [0, 1].

    Images (png, jpg, jpeg, bmp, gif, webp; hidden files and other files ignored) are read
    with Pillow, EXIF-rotated, converted to RGB (or L if ``grayscale``) and resized bilinearly.
    Classes are the folder names, sorted. If ``root`` holds ``train/`` and ``test/`` (and
    optionally ``val/``) folders of class folders, those are the splits (val carved from
    train with ``val_fraction`` of it when absent); else all images are split with both
    fractions.
    """
    root = Path(root)
    check_positive_int("image_size", image_size)
    check_seed(seed)
    check_fractions(val_fraction, test_fraction)
    if not root.is_dir():
        raise DataError(
            f"image folder {root} not found; pass a directory holding one sub-folder of images "
            "per class"
        )
    train_dir, test_dir, val_dir = root / "train", root / "test", root / "val"
    split_layout = train_dir.is_dir() and test_dir.is_dir() and bool(_class_dirs(train_dir))
    class_names = [d.name for d in _class_dirs(train_dir if split_layout else root)]
    if not class_names:
        raise DataError(
            f"image folder {root} has no class sub-folders; put each class's images in "
            "root/<class_name>/ (or use root/train/<class>/ and root/test/<class>/)"
        )

    def read(folder: Path) -> tuple[np.ndarray, np.ndarray]:
        return _read_split(folder, class_names, image_size, grayscale)

    if split_layout:
        train = read(train_dir)
        test = read(test_dir)
        if val_dir.is_dir():
            val = read(val_dir)
        else:
            train, val = holdout(*train, int(np.ceil(val_fraction * len(train[1]))), seed)
    else:
        x, y = read(root)
        train, val, test = split_arrays(x, y, val_fraction, test_fraction, seed)
    return make_splits(
        root.resolve().name or "images", train, val, test, len(class_names), class_names
    )


def _class_dirs(folder: Path) -> list[Path]:
    """Non-hidden sub-directories of ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _read_split(
    folder: Path, class_names: list[str], size: int, grayscale: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Every image under ``folder/<class>/`` as (N, C, size, size) float32 and (N,) labels."""
    index = {name: i for i, name in enumerate(class_names)}
    files: list[tuple[Path, int]] = []
    for class_dir in _class_dirs(folder):
        if class_dir.name not in index:
            raise DataError(
                f"class folder {class_dir} does not exist in the training split; "
                f"use only the classes {class_names}"
            )
        images = _image_files(class_dir)
        if not images:
            raise DataError(
                f"class folder {class_dir} holds no images "
                f"({'/'.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))}); add images or remove it"
            )
        files += [(p, index[class_dir.name]) for p in images]
    if not files:
        raise DataError(
            f"image folder {folder} has no class sub-folders with images; put each class's "
            f"images in {folder}/<class_name>/"
        )
    channels = 1 if grayscale else 3
    x = np.empty((len(files), channels, size, size), dtype=np.float32)
    for i, (path, _) in enumerate(files):
        x[i] = _read_image(path, size, grayscale)
    y = np.asarray([label for _, label in files], dtype=np.int64)
    return x, y


def _read_image(path: Path, size: int, grayscale: bool) -> np.ndarray:
    """One image file as (C, size, size) float32 in [0, 1]; DataError naming it if unreadable."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img = img.convert("L" if grayscale else "RGB")
            img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except Exception as exc:  # Pillow raises many types for corrupt files
        raise DataError(
            f"cannot read image {path} ({_one_line(exc)}); replace or delete the file"
        ) from exc
    return arr[None] if grayscale else arr.transpose(2, 0, 1)
