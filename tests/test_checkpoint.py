"""Checkpoints: safetensors + JSON spec, weights-only loading, clear errors, atomic writes."""

from __future__ import annotations

import pickle

import pytest
import torch

import torchslim as ts
from helpers import file_digest
from torchslim.models import build_model


def test_round_trip_rebuilds_architecture_from_spec(tmp_path):
    model = build_model("mnist1d_cnn", channels=12)
    path = tmp_path / "m.safetensors"
    size = ts.save_checkpoint(
        model, path, {"arch": {"name": "mnist1d_cnn", "kwargs": {"channels": 12}}}
    )
    assert size == path.stat().st_size
    loaded, spec = ts.load_checkpoint(path)
    assert spec["arch"]["kwargs"] == {"channels": 12} and spec["format"] == "torchslim.checkpoint/1"
    inputs = torch.randn(3, 1, 40)
    assert torch.equal(loaded(inputs), model.eval()(inputs))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_or_truncated_checkpoint_is_a_clear_error(tmp_path, damage):
    path = tmp_path / "m.safetensors"
    ts.save_checkpoint(build_model("mlp"), path, {"arch": {"name": "mlp", "kwargs": {}}})
    data = path.read_bytes()
    path.write_bytes(
        {
            "garbage": b"\x00not a checkpoint" * 10,
            "truncated": data[: len(data) // 2],
            "empty": b"",
        }[damage]
    )
    digest = file_digest(path)
    with pytest.raises(ts.CheckpointError, match=r"is corrupt or truncated .*; re-create it"):
        ts.load_checkpoint(path)
    assert file_digest(path) == digest  # the input is never modified


def test_shape_mismatch_names_the_tensor(tmp_path):
    path = tmp_path / "m.safetensors"
    ts.save_checkpoint(build_model("mnist1d_cnn", channels=12), path)
    with pytest.raises(
        ts.CheckpointError,
        match=r"features.0.weight has shape \(12, 1, 5\) in the file but \(25, 1, 5\)",
    ):
        ts.load_checkpoint(path, model=build_model("mnist1d_cnn"))


def test_missing_keys_and_missing_file(tmp_path):
    path = tmp_path / "m.safetensors"
    ts.save_checkpoint(build_model("mlp"), path)
    with pytest.raises(ts.CheckpointError, match="does not match the architecture .*missing"):
        ts.load_checkpoint(path, model=build_model("mnist1d_cnn"))
    with pytest.raises(ts.CheckpointError, match="has no architecture spec"):
        ts.load_checkpoint(path)
    with pytest.raises(ts.CheckpointError, match="does not exist"):
        ts.load_checkpoint(tmp_path / "absent.safetensors")


def test_pt_state_dict_loads_weights_only(tmp_path):
    model = build_model("mlp")
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    loaded, spec = ts.load_checkpoint(path, model=build_model("mlp"))
    assert spec == {}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


class Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        pickle.dump({"weight": Exploit()}, handle, protocol=2)
    with pytest.raises(ts.CheckpointError, match="cannot be read as a weights-only state dict"):
        ts.load_checkpoint(path, model=build_model("mlp"))
    assert "this must never run" not in capsys.readouterr().out


def test_failed_save_leaves_existing_file_intact(tmp_path):
    path = tmp_path / "m.safetensors"
    ts.save_checkpoint(build_model("mlp"), path, {"arch": {"name": "mlp", "kwargs": {}}})
    digest = file_digest(path)
    with pytest.raises(ts.CheckpointError, match="not JSON-serializable"):
        ts.save_checkpoint(build_model("mlp"), path, {"bad": object()})
    assert file_digest(path) == digest
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left
