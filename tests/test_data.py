"""Tests of the built-in datasets (torchslim.data): all offline, fast, on tiny fake files."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from torchslim.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    Splits,
    default_cache_dir,
    load_cifar10,
    load_digits,
    load_digits32,
    load_image_folder,
    load_mnist1d,
    load_npz,
    make_splits,
    split_arrays,
)
from torchslim.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("TORCHSLIM_CACHE", str(cache))
    return cache


def sizes(s: Splits) -> tuple[int, int, int]:
    return len(s.train), len(s.val), len(s.test)


def check_dtypes(s: Splits) -> None:
    for ds in (s.train, s.val, s.test):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.is_contiguous()
        assert tuple(x.shape[1:]) == s.input_shape
        assert int(y.min()) >= 0 and int(y.max()) < s.num_classes


@contextlib.contextmanager
def raises_one_line(exc_type: type[Exception], match: str) -> Iterator[pytest.ExceptionInfo]:
    """pytest.raises that also checks the message is a single line."""
    with pytest.raises(exc_type, match=match) as info:
        yield info
    assert "\n" not in str(info.value)


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------- Splits, helpers


def test_default_cache_dir_follows_env(_cache_in_tmp: Path) -> None:
    assert default_cache_dir() == _cache_in_tmp


def test_split_arrays_sizes_stratified_deterministic() -> None:
    x = np.arange(200, dtype=np.float32).reshape(100, 2)
    y = np.repeat(np.arange(4), 25)
    (xtr, ytr), (xva, yva), (xte, yte) = split_arrays(x, y, 0.2, 0.2, seed=1)
    assert (len(ytr), len(yva), len(yte)) == (60, 20, 20)
    assert np.bincount(yva).tolist() == [5, 5, 5, 5]
    assert np.bincount(yte).tolist() == [5, 5, 5, 5]
    # every sample lands in exactly one split, paired with its own label
    all_x = np.concatenate([xtr, xva, xte])
    assert sorted(all_x[:, 0].tolist()) == sorted(x[:, 0].tolist())
    assert np.array_equal(np.concatenate([ytr, yva, yte]), (all_x[:, 0] // 2 // 25).astype(int))
    again = split_arrays(x, y, 0.2, 0.2, seed=1)
    assert np.array_equal(again[1][0], xva)


@pytest.mark.parametrize("val, test", [(0.0, 0.2), (1.0, 0.2), (0.2, -0.1), (0.6, 0.4), ("a", 0.1)])
def test_split_arrays_rejects_bad_fractions(val, test) -> None:
    with raises_one_line(ConfigError, "fraction"):
        split_arrays(np.zeros((10, 1)), np.zeros(10, dtype=int), val, test, seed=0)


def test_make_splits_validates_and_fingerprint() -> None:
    pair = (np.zeros((4, 3)), np.array([0, 1, 2, 1]))
    s = make_splits("toy", pair, pair, pair, num_classes=3)
    check_dtypes(s)
    assert s.input_shape == (3,)
    fp = s.fingerprint()
    assert len(fp) == 64 and fp == make_splits("toy", pair, pair, pair, 3).fingerprint()
    changed = (np.zeros((4, 3)), np.array([0, 1, 2, 2]))
    assert make_splits("toy", pair, pair, changed, 3).fingerprint() != fp
    assert make_splits("toy2", pair, pair, pair, 3).fingerprint() != fp
    with raises_one_line(DataError, r"labels span \[0, 2\] outside \[0, 2\)"):
        make_splits("toy", pair, pair, pair, num_classes=2)
    with raises_one_line(DataError, "4 inputs but 3 labels"):
        make_splits("toy", pair, (np.zeros((4, 3)), np.array([0, 1, 2])), pair, 3)


# ------------------------------------------------------------------------------------ MNIST-1D


def test_mnist1d_shapes_determinism_rng_and_cache(
    _cache_in_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    np.random.seed(1234)
    random.seed(1234)
    np_before, py_before = np.random.get_state(), random.getstate()
    s = load_mnist1d(num_samples=1000, seed=3)
    np_after = np.random.get_state()
    assert np_after[0] == np_before[0] and np.array_equal(np_after[1], np_before[1])
    assert np_after[2:] == np_before[2:]
    assert random.getstate() == py_before

    assert s.name == "mnist1d" and s.num_classes == 10 and s.input_shape == (1, 40)
    assert sizes(s) == (720, 80, 200)
    check_dtypes(s)
    assert np.bincount(s.val.tensors[1].numpy(), minlength=10).min() >= 7  # stratified
    assert set(s.train.tensors[1].unique().tolist()) == set(range(10))

    cached = list(_cache_in_tmp.glob("mnist1d-*-n1000-seed3.npz"))
    assert len(cached) == 1 and not list(_cache_in_tmp.glob("*.tmp"))

    # an independent generation (other cache dir) gives identical data
    fresh = load_mnist1d(num_samples=1000, seed=3, cache_dir=tmp_path / "other")
    assert fresh.fingerprint() == s.fingerprint()
    assert torch.equal(fresh.test.tensors[0], s.test.tensors[0])

    # a second load reads the cache instead of generating
    import mnist1d.data

    def boom(*args, **kwargs):
        raise AssertionError("make_dataset called despite a cache file")

    monkeypatch.setattr(mnist1d.data, "make_dataset", boom)
    assert load_mnist1d(num_samples=1000, seed=3).fingerprint() == s.fingerprint()


def test_mnist1d_seed_changes_data_and_corrupt_cache_regenerates(_cache_in_tmp: Path) -> None:
    a = load_mnist1d(num_samples=500, seed=1)
    b = load_mnist1d(num_samples=500, seed=2)
    assert a.fingerprint() != b.fingerprint()
    (path,) = _cache_in_tmp.glob("mnist1d-*-n500-seed1.npz")
    path.write_bytes(b"not a zip")
    assert load_mnist1d(num_samples=500, seed=1).fingerprint() == a.fingerprint()
    assert path.read_bytes()[:2] == b"PK"  # rewritten as a valid npz


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 20}, "at least"),
        ({"seed": -1}, "seed"),
        ({"val_fraction": 1.0}, "val_fraction"),
    ],
)
def test_mnist1d_rejects_bad_args(kwargs, match) -> None:
    with raises_one_line(ConfigError, match):
        load_mnist1d(**kwargs)


# -------------------------------------------------------------------------------------- digits


def test_digits() -> None:
    s = load_digits(seed=0)
    assert s.name == "digits" and s.num_classes == 10 and s.input_shape == (64,)
    assert sizes(s) == (1167, 270, 360)
    check_dtypes(s)
    x = torch.cat([s.train.tensors[0], s.val.tensors[0], s.test.tensors[0]])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert np.bincount(s.test.tensors[1].numpy()).min() >= 35  # stratified: ~36 per class
    assert load_digits(seed=0).fingerprint() == s.fingerprint()
    assert load_digits(seed=1).fingerprint() != s.fingerprint()


def test_digits32_shape_normalization_and_same_split() -> None:
    s = load_digits32(seed=0)
    flat = load_digits(seed=0)
    assert s.name == "digits32" and s.input_shape == (3, 32, 32) and s.num_classes == 10
    assert sizes(s) == sizes(flat)
    check_dtypes(s)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(s, split).tensors[1], getattr(flat, split).tensors[1])
    x = s.train.tensors[0]
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    assert torch.equal(x[:, 0], x[:, 2])  # grey replicated to 3 channels


# ------------------------------------------------------------------------------------ CIFAR-10


def write_batch(path: Path, data: np.ndarray, labels: list[int], protocol: int = 2) -> None:
    with path.open("wb") as f:
        obj = {b"batch_label": b"fake batch", b"labels": labels, b"data": data, b"filenames": []}
        pickle.dump(obj, f, protocol=protocol)


def make_fake_cifar(root: Path, protocol: int = 2) -> dict[str, np.ndarray]:
    """Two data batches of 20 images and a test batch of 10, in the official format."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for name, n in (("data_batch_1", 20), ("data_batch_2", 20), ("test_batch", 10)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(n)]
        write_batch(root / name, data, labels, protocol)
        arrays[name] = data
    return arrays


def unnormalize(x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return torch.round((x * std + mean) * 255).to(torch.uint8).reshape(len(x), -1).numpy()


@pytest.mark.parametrize("protocol", [2, 4, 5, "numpy1"])
def test_cifar10_loads_fake_batches(tmp_path: Path, protocol: int | str) -> None:
    arrays = make_fake_cifar(
        tmp_path / "cifar-10-batches-py", 2 if protocol == "numpy1" else protocol
    )
    if protocol == "numpy1":  # the official files name numpy.core, as numpy < 2 wrote them
        for p in (tmp_path / "cifar-10-batches-py").iterdir():
            raw = p.read_bytes()
            assert b"numpy._core.multiarray\n" in raw
            p.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    before = file_hashes(tmp_path)
    s = load_cifar10(tmp_path)  # finds the cifar-10-batches-py subfolder
    assert s.name == "cifar10" and s.num_classes == 10 and s.input_shape == (3, 32, 32)
    assert sizes(s) == (20, 20, 10)  # val_size=5000 capped at half the 40 training images
    check_dtypes(s)
    # one pixel through the normalization: test image 0, channel 1, row 2, column 3
    raw = arrays["test_batch"][0, 1 * 1024 + 2 * 32 + 3]
    expected = (raw / 255.0 - CIFAR10_MEAN[1]) / CIFAR10_STD[1]
    assert float(s.test.tensors[0][0, 1, 2, 3]) == pytest.approx(expected, abs=1e-5)
    assert np.array_equal(unnormalize(s.test.tensors[0]), arrays["test_batch"])
    # train + val hold exactly the 40 training images, each with its label
    got = np.concatenate([unnormalize(s.train.tensors[0]), unnormalize(s.val.tensors[0])])
    want = np.concatenate([arrays["data_batch_1"], arrays["data_batch_2"]])
    assert sorted(map(bytes, got)) == sorted(map(bytes, want))
    labels = {bytes(r): i % 10 for i, r in enumerate(want)}
    ys = torch.cat([s.train.tensors[1], s.val.tensors[1]]).tolist()
    assert [labels[bytes(r)] for r in got] == ys
    assert file_hashes(tmp_path) == before


def test_cifar10_val_size_limit_and_determinism(tmp_path: Path) -> None:
    make_fake_cifar(tmp_path)
    s = load_cifar10(tmp_path, val_size=10, seed=1)
    assert sizes(s) == (30, 10, 10)
    assert np.bincount(s.val.tensors[1].numpy()).tolist() == [1] * 10  # stratified
    assert load_cifar10(tmp_path, val_size=10, seed=1).fingerprint() == s.fingerprint()
    assert sizes(load_cifar10(tmp_path, val_size=10, limit=4)) == (4, 4, 4)
    # a single data batch is enough
    (tmp_path / "data_batch_2").unlink()
    assert sizes(load_cifar10(tmp_path, val_size=5)) == (15, 5, 10)


class _Evil:
    """Pickles as a call to os.system: loading it with plain pickle would run a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_refuses_disallowed_globals(tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    make_fake_cifar(root)
    marker = tmp_path / "pwned"
    with (root / "data_batch_1").open("wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, f, protocol=2)
    before = file_hashes(root)
    with raises_one_line(DataError, r"data_batch_1 references (posix|nt|os)\.system.*refusing"):
        load_cifar10(root)
    assert not marker.exists()
    assert file_hashes(root) == before


def test_cifar10_error_cases(tmp_path: Path) -> None:
    with raises_one_line(DataError, "CIFAR-10 directory .*missing.* not found; pass --data-dir"):
        load_cifar10(tmp_path / "missing")

    root = tmp_path / "cifar"
    make_fake_cifar(root)
    good = (root / "data_batch_1").read_bytes()

    (root / "data_batch_1").write_bytes(good[: len(good) // 2])
    before = file_hashes(root)
    with raises_one_line(DataError, "data_batch_1 is truncated or corrupt"):
        load_cifar10(root)
    assert file_hashes(root) == before

    (root / "data_batch_1").write_bytes(b"\x80\x02garbage")
    with raises_one_line(DataError, "data_batch_1 is truncated or corrupt"):
        load_cifar10(root)

    write_batch(root / "data_batch_1", np.zeros((5, 100), np.uint8), [0] * 5)
    with raises_one_line(DataError, r"shape \(5, 100\), expected \(N, 3072\)"):
        load_cifar10(root)

    write_batch(root / "data_batch_1", np.zeros((5, 3072), np.uint8), [0] * 4)
    with raises_one_line(DataError, "5 images but 4 labels"):
        load_cifar10(root)

    with (root / "data_batch_1").open("wb") as f:
        pickle.dump({b"pixels": np.zeros((1, 3072), np.uint8)}, f)
    with raises_one_line(DataError, "needs b'data' and b'labels'"):
        load_cifar10(root)

    with (root / "data_batch_1").open("wb") as f:
        pickle.dump([1, 2, 3], f)
    with raises_one_line(DataError, "holds a list, not a dict"):
        load_cifar10(root)

    (root / "data_batch_1").write_bytes(good)
    (root / "test_batch").unlink()
    before = file_hashes(root)
    with raises_one_line(DataError, "lacks test_batch; it must hold data_batch_1..5 and test"):
        load_cifar10(root)
    assert file_hashes(root) == before
    for p in root.glob("data_batch_*"):
        p.unlink()
    with raises_one_line(DataError, "lacks data_batch_1..5 and test_batch"):
        load_cifar10(root)

    with raises_one_line(ConfigError, "val_size"):
        load_cifar10(root, val_size=0)
    with raises_one_line(ConfigError, "limit"):
        load_cifar10(root, limit=-3)


# ----------------------------------------------------------------------------------------- npz


def test_npz_train_test_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "toy.npz"
    np.savez(
        path,
        x_train=rng.normal(size=(40, 5)),
        y_train=np.arange(40) % 4,
        x_test=rng.normal(size=(8, 5)),
        y_test=np.arange(8) % 4,
    )
    s = load_npz(path)
    assert s.name == "toy" and s.num_classes == 4 and s.input_shape == (5,)
    assert sizes(s) == (34, 6, 8)
    check_dtypes(s)

    np.savez(
        path,
        x_train=np.zeros((10, 2, 3), np.uint8),
        y_train=np.zeros(10, np.int32),
        x_val=np.ones((3, 2, 3), np.uint8),
        y_val=np.array([0, 1, 6]),
        x_test=np.ones((4, 2, 3), np.uint8),
        y_test=np.zeros(4, np.int64),
    )
    s = load_npz(path)
    assert sizes(s) == (10, 3, 4) and s.num_classes == 7 and s.input_shape == (2, 3)
    assert s.val.tensors[1].tolist() == [0, 1, 6]


def test_npz_xy_layout(tmp_path: Path) -> None:
    path = tmp_path / "xy.npz"
    np.savez(path, x=np.arange(300, dtype=np.float64).reshape(100, 3), y=np.arange(100) % 5)
    s = load_npz(path, seed=2, val_fraction=0.1, test_fraction=0.3)
    assert sizes(s) == (60, 10, 30) and s.num_classes == 5
    check_dtypes(s)
    assert load_npz(path, seed=2, val_fraction=0.1, test_fraction=0.3).fingerprint() == (
        s.fingerprint()
    )


def test_npz_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    with raises_one_line(DataError, "npz file .*bad.npz not found"):
        load_npz(path)

    path.write_bytes(b"this is not an npz archive at all")
    with raises_one_line(DataError, "is not an .npz .zip. archive"):
        load_npz(path)

    with path.open("wb") as f:
        pickle.dump({"x": 1}, f)
    with raises_one_line(DataError, "is not an .npz .zip. archive"):
        load_npz(path)

    np.savez(path, x=np.zeros((10, 2)), y=np.zeros(10, int))
    path.write_bytes(path.read_bytes()[:-40])  # truncated zip
    with raises_one_line(DataError, "is not a readable .npz archive"):
        load_npz(path)

    np.save(tmp_path / "single.npy", np.zeros(3))
    with raises_one_line(DataError, "single .npy array, not an .npz"):
        load_npz(tmp_path / "single.npy")

    np.savez(path, inputs=np.zeros((3, 2)), labels=np.zeros(3, int))
    with raises_one_line(
        DataError, r"keys \['inputs', 'labels'\]; it needs x_train,y_train,x_test,y_test"
    ):
        load_npz(path)

    np.savez(path, x=np.zeros((10, 2)), y=np.zeros(9, int))
    with raises_one_line(DataError, r"y in .* has shape \(9,\) but x has 10 samples"):
        load_npz(path)

    np.savez(path, x=np.zeros((10, 2)), y=np.zeros(10, np.float32))
    with raises_one_line(DataError, "dtype float32, not integer labels"):
        load_npz(path)

    np.savez(path, x=np.zeros((10, 2)), y=np.full(10, -1))
    with raises_one_line(DataError, "negative label -1"):
        load_npz(path)

    np.savez(path, x=np.array([{"a": 1}] * 10, dtype=object), y=np.zeros(10, int))
    before = path.read_bytes()
    with raises_one_line(DataError, "array 'x' in .* holds pickled Python objects"):
        load_npz(path)
    assert path.read_bytes() == before

    np.savez(path, x_train=np.zeros((4, 2)), y_train=np.zeros(4, int), x_test=np.zeros((2, 2)),
             y_test=np.zeros(2, int), x_val=np.zeros((2, 2)))  # fmt: skip
    with raises_one_line(DataError, "only one of x_val / y_val"):
        load_npz(path)

    np.savez(path, x_train=np.zeros((4, 2)), y_train=np.zeros(4, int), x_test=np.zeros((2, 3)),
             y_test=np.zeros(2, int))  # fmt: skip
    with raises_one_line(DataError, "differing per-sample shapes"):
        load_npz(path)

    with raises_one_line(ConfigError, "test_fraction"):
        load_npz(path, test_fraction=0)


# -------------------------------------------------------------------------------- image folder

COLORS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}


def write_images(root: Path, per_class: int = 4, ext: str = ".png") -> None:
    from PIL import Image

    for name, color in COLORS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (12, 10), color).save(folder / f"img{i}{ext}")


def test_image_folder_flat_layout(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    write_images(root)
    (root / "cat" / "notes.txt").write_text("not an image")  # ignored
    (root / "cat" / ".hidden.png").write_bytes(b"ignored")  # ignored
    from PIL import Image

    Image.new("RGB", (5, 5), COLORS["dog"]).save(root / "dog" / "UPPER.PNG", format="PNG")
    s = load_image_folder(root, image_size=8)
    assert s.name == "pets" and s.class_names == ["cat", "dog", "emu"] and s.num_classes == 3
    assert s.input_shape == (3, 8, 8)
    assert sum(sizes(s)) == 13 and sizes(s) == (8, 2, 3)
    check_dtypes(s)
    for ds in (s.train, s.val, s.test):
        x, y = ds.tensors
        for img, label in zip(x, y, strict=True):
            channel = list(COLORS).index(s.class_names[int(label)])
            assert torch.allclose(img[channel], torch.ones(8, 8))
            assert float(img.sum()) == pytest.approx(64.0)
    gray = load_image_folder(root, image_size=6, grayscale=True)
    assert gray.input_shape == (1, 6, 6) and float(gray.train.tensors[0].max()) <= 1.0
    assert load_image_folder(root, image_size=8).fingerprint() == s.fingerprint()


def test_image_folder_split_layout(tmp_path: Path) -> None:
    write_images(tmp_path / "train", per_class=5)
    write_images(tmp_path / "test", per_class=2, ext=".jpg")
    s = load_image_folder(tmp_path, image_size=4)
    assert s.class_names == ["cat", "dog", "emu"]
    assert sizes(s) == (12, 3, 6)  # val: ceil(0.15 * 15) carved from train
    assert sorted(s.test.tensors[1].tolist()) == [0, 0, 1, 1, 2, 2]
    write_images(tmp_path / "val", per_class=1, ext=".bmp")
    assert sizes(load_image_folder(tmp_path, image_size=4)) == (15, 3, 6)
    (tmp_path / "test" / "yak").mkdir()
    (tmp_path / "test" / "yak" / "a.png").write_bytes((tmp_path / "test/cat/img0.jpg").read_bytes())
    with raises_one_line(DataError, "class folder .*yak does not exist in the training split"):
        load_image_folder(tmp_path)


def test_image_folder_errors(tmp_path: Path) -> None:
    with raises_one_line(DataError, "image folder .*nowhere not found"):
        load_image_folder(tmp_path / "nowhere")

    empty = tmp_path / "empty"
    empty.mkdir()
    with raises_one_line(DataError, "has no class sub-folders"):
        load_image_folder(empty)

    root = tmp_path / "imgs"
    write_images(root)
    (root / "zebra").mkdir()
    (root / "zebra" / "readme.txt").write_text("no images here")
    with raises_one_line(DataError, "class folder .*zebra holds no images"):
        load_image_folder(root)
    (root / "zebra" / "readme.txt").unlink()
    (root / "zebra").rmdir()

    (root / "dog" / "x.png").write_bytes(b"\x89PNG garbage, not an image")
    before = file_hashes(root)
    with raises_one_line(DataError, r"cannot read image .*dog[/\\]x\.png"):
        load_image_folder(root)
    assert file_hashes(root) == before

    with raises_one_line(ConfigError, "image_size"):
        load_image_folder(root, image_size=0)
