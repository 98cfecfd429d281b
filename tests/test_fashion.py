"""IDX files and the Fashion-MNIST tasks, on tiny IDX files written here."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import torchslim as ts
from torchslim.data import FASHION_MNIST_DIR, load_fashion_mnist, load_idx
from torchslim.data.idx import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from torchslim.errors import DataError


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of a uint8 array: magic 0x0000 08 ndim, big-endian dims, the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fashion(
    folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Four tiny Fashion-MNIST-shaped IDX files (labels cycle 0..9); returns train images/labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[prefix] = (
            rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
            (np.arange(n) % 10).astype(np.uint8),
        )
        for kind, array in zip(("images-idx3", "labels-idx1"), arrays[prefix], strict=True):
            name = f"{prefix}-{kind}-ubyte"
            data = idx_bytes(array)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return arrays["train"]


def test_load_idx_reads_plain_and_gzip_files_of_any_type(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(images))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(images)))
    for name in ("a", "a.gz"):
        got = load_idx(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
        np.testing.assert_array_equal(got, images)
    # type 0x0D: big-endian float32, returned in native byte order
    values = np.array([[1.5, -2.0], [3.25, 0.0]], dtype=">f4")
    data = struct.pack(">BBBBII", 0, 0, 0x0D, 2, 2, 2) + values.tobytes()
    (tmp_path / "f").write_bytes(data)
    got = load_idx(tmp_path / "f")
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_array_equal(got, [[1.5, -2.0], [3.25, 0.0]])


def test_load_idx_bad_files_raise_data_error_naming_the_file(tmp_path):
    good = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    cases = {
        "truncated": (good[:-5], "truncated"),
        "header-cut": (good[:9], "truncated"),
        "too-long": (good + b"\0", "longer than its header"),
        "magic": (b"\x12\x34" + good[2:], "not an IDX file"),
        "type": (good[:2] + b"\x07" + good[3:], "not an IDX file"),
        "tiny": (b"\0\0", "truncated"),
    }
    for name, (data, words) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DataError, match=words) as info:
            load_idx(path)
        assert str(path) in str(info.value)
    gz = tmp_path / "cut.gz"
    gz.write_bytes(gzip.compress(good)[:-12])
    with pytest.raises(DataError, match="truncated or corrupt gzip") as info:
        load_idx(gz)
    assert str(gz) in str(info.value)
    with pytest.raises(DataError, match="not found"):
        load_idx(tmp_path / "absent")


def test_fashion_splits_are_deterministic_and_normalized(tmp_path):
    train_images, train_labels = write_fashion(tmp_path, n_train=60, n_test=20)
    splits = load_fashion_mnist(tmp_path, val_size=20, seed=3)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert [len(s) for s in (splits.train, splits.val, splits.test)] == [40, 20, 20]
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    # stratified: each of the 10 classes (6 images each) gives 2 to val
    assert np.bincount(splits.val.tensors[1].numpy(), minlength=10).tolist() == [2] * 10
    # train + val are exactly the training images, normalized
    pixels = torch.cat([splits.train.tensors[0], splits.val.tensors[0]]) * FASHION_MNIST_STD
    pixels = (pixels + FASHION_MNIST_MEAN) * 255
    restored = np.sort(pixels.round().to(torch.int64).numpy().reshape(60, -1), axis=0)
    np.testing.assert_array_equal(restored, np.sort(train_images.reshape(60, -1), axis=0))
    again = load_fashion_mnist(tmp_path, val_size=20, seed=3)
    assert again.fingerprint() == splits.fingerprint()
    other = load_fashion_mnist(tmp_path, val_size=20, seed=4)
    assert other.fingerprint() != splits.fingerprint()
    # plain (not gzipped) files read the same
    write_fashion(tmp_path / "plain", n_train=60, n_test=20, gz=False)
    assert load_fashion_mnist(tmp_path / "plain", 20, 3).fingerprint() == splits.fingerprint()
    assert len(load_fashion_mnist(tmp_path, val_size=20, limit=7).train) == 7


def test_fashion_missing_or_mismatched_files(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist") as info:
        load_fashion_mnist(tmp_path / "nowhere")
    assert "nowhere" in str(info.value)
    write_fashion(tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\]"):
        load_fashion_mnist(tmp_path / "d")
    # 20 test images but 19 labels
    (tmp_path / "d" / "t10k-labels-idx1-ubyte").write_bytes(
        idx_bytes((np.arange(19) % 10).astype(np.uint8))
    )
    with pytest.raises(DataError, match="has 20 images but .* has 19 labels") as info:
        load_fashion_mnist(tmp_path / "d")
    assert "t10k-images-idx3-ubyte.gz" in str(info.value)
    # images and labels swapped
    (tmp_path / "d" / "t10k-labels-idx1-ubyte").write_bytes(
        idx_bytes(np.zeros((20, 28, 28), dtype=np.uint8))
    )
    with pytest.raises(DataError, match="expected uint8 labels"):
        load_fashion_mnist(tmp_path / "d")


def test_fashion_tasks_build_on_tiny_files_and_default_to_debian_folder(tmp_path, monkeypatch):
    write_fashion(tmp_path, n_train=40, n_test=10)
    resnet = ts.tasks.get("fashion-resnet", data_dir=str(tmp_path))
    lenet = ts.tasks.get("fashion-lenet5", data_dir=str(tmp_path))
    for task in (resnet, lenet):
        assert task.train_config.threads == 1 and task.train_config.seed == 0
        assert len(task.train) == 20 and len(task.val) == 20 and len(task.test) == 10
        model = task.build_model()
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # LeNet-5's sizes from the paper: conv 1->6 5x5 (+bias), conv 6->16 5x5, 400-120-84-10
    lenet_params = 6 * 25 + 6 + 16 * 6 * 25 + 16 + 400 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10
    assert lenet_params == 61706
    assert sum(p.numel() for p in lenet.build_model().parameters()) == lenet_params
    lenet_macs = 6 * 25 * 28 * 28 + 16 * 6 * 25 * 10 * 10 + 400 * 120 + 120 * 84 + 84 * 10
    assert (
        ts.count_macs(lenet.build_model(), torch.zeros(1, 1, 28, 28)).macs == lenet_macs == 416520
    )
    # the ResNet: stem 1->8, BasicBlocks 8->8, 8->16 (stride 2, 1x1 shortcut), 16->32 (same)
    resnet_params = (
        9 * 8 + 16
        + 2 * (9 * 64 + 16)
        + 9 * 8 * 16 + 32 + 9 * 16 * 16 + 32 + 8 * 16 + 32
        + 9 * 16 * 32 + 64 + 9 * 32 * 32 + 64 + 16 * 32 + 64
        + 32 * 10 + 10
    )  # fmt: skip
    resnet_macs = (
        8 * 9 * 784
        + 2 * 8 * 8 * 9 * 784
        + (8 * 16 * 9 + 16 * 16 * 9 + 8 * 16) * 196
        + (16 * 32 * 9 + 32 * 32 * 9 + 16 * 32) * 49
        + 32 * 10
    )  # fmt: skip
    model = resnet.build_model()
    assert ts.count_parameters(model) == resnet_params == 19810
    assert ts.count_macs(model, torch.zeros(1, 1, 28, 28)).macs == resnet_macs == 2364864
    seen = []
    monkeypatch.setattr(
        ts.tasks, "load_fashion_mnist", lambda d: seen.append(d) or load_fashion_mnist(tmp_path)
    )
    ts.tasks.get("fashion-lenet5")
    assert seen == [FASHION_MNIST_DIR] == ["/usr/share/datasets/fashion-mnist"]
    monkeypatch.undo()
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        ts.tasks.get("fashion-resnet", data_dir=str(tmp_path / "empty"))


EXAMPLE = Path(__file__).parent.parent / "examples" / "fashion_task.py"


def test_fashion_example_commands_run_at_a_tiny_scale(tmp_path, monkeypatch, capsys):
    """The README's commands for examples/fashion_task.py, on 60 tiny images, 1 epoch."""
    import json

    from torchslim.cli import main

    data = tmp_path / "fashion"
    write_fashion(data, n_train=120, n_test=40)
    monkeypatch.setenv("FASHION_LIMIT", "60")
    monkeypatch.setenv("FASHION_EPOCHS", "1")
    task_ref = f"{EXAMPLE}:task"
    assert main(["train", task_ref, "--data-dir", str(data), "--out", str(tmp_path / "t")]) == 0
    trained = json.loads((tmp_path / "t" / "footprint.json").read_text())
    assert trained["footprint"]["params"] == 21682  # FashionNet, as written in the example
    assert trained["footprint"]["macs"] == 2709984
    out = tmp_path / "opt"
    code = main(
        [
            "optimize", task_ref, "--data-dir", str(data), "--max-drop", "1",
            "--objective", "latency", "--runtime", "onnxruntime", "--out", str(out),
            "--trials", "1", "--sensitivity-epochs", "0", "--recovery-epochs", "0",
            "--techniques", "channel_pruning", "--range", "channel_pruning=0.5",
        ]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["budget"]["max_drop"] == 0.01
    assert results["baseline"]["params"] == 21682
    assert results["candidates"], "the search produced no candidate"
    assert "budget" in capsys.readouterr().out
