"""Low-rank factorization: SVD exactness and counts, Tucker-2 savings, table, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.measure import artifact_bytes, count_macs
from torchslim.techniques import ApplyContext, Scope, apply
from torchslim.techniques.lowrank import (
    SpatialSVD,
    SVDFactorization,
    TuckerFactorization,
    lowrank_io,
    spatial_svd_conv,
    svd_linear,
    tucker2_conv,
)


def test_svd_full_rank_reproduces_a_linear_layer():
    torch.manual_seed(0)
    layer = nn.Linear(20, 12)
    x = torch.randn(7, 20)
    factorized = svd_linear(layer, rank=12)
    assert torch.allclose(factorized(x), layer(x), atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_svd_rank_r_has_r_times_m_plus_n_parameters(bias):
    layer = nn.Linear(64, 32, bias=bias)
    factorized = svd_linear(layer, rank=5)
    assert ts.count_parameters(factorized) == 5 * (64 + 32) + (32 if bias else 0)


def test_tucker2_saves_the_computed_parameters_and_macs_and_keeps_shapes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU())
    x = torch.randn(1, 32, 8, 8)
    context = ApplyContext()
    out = apply(model, TuckerFactorization(rank=8), context=context)
    # before: 64·32·9 weights + 64 bias = 18,496 params; MACs 18,432 · 64 positions = 1,179,648
    # after: 1×1 32→8 (256) + 3×3 8→8 (576) + 1×1 8→64 (512) + 64 bias = 1,408 params;
    # MACs (256 + 576 + 512) · 64 = 86,016
    assert ts.count_parameters(model) == 18_496 and ts.count_parameters(out) == 1_408
    assert count_macs(model, x).macs == 1_179_648 and count_macs(out, x).macs == 86_016
    assert out(x).shape == model(x).shape == (1, 64, 8, 8)
    row = context.notes["lowrank"][0]
    assert row["rank"] == [8, 8] and row["status"] == "factorized"
    assert (row["params_before"], row["params_after"]) == (18_496, 1_408)
    assert 0 < row["error"] < 1


def test_full_rank_conv_factorizations_are_exact():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 9)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1)
    assert torch.allclose(tucker2_conv(conv, 8, 6)(x), conv(x), atol=1e-5)
    assert torch.allclose(spatial_svd_conv(conv, 18)(x), conv(x), atol=1e-5)
    conv1d = nn.Conv1d(6, 8, 5, stride=2, padding=1)
    x1 = torch.randn(2, 6, 20)
    assert torch.allclose(tucker2_conv(conv1d, 8, 6)(x1), conv1d(x1), atol=1e-5)


def test_energy_and_ratio_choose_ranks_and_skip_layers_that_would_not_save():
    torch.manual_seed(0)
    low = (torch.randn(40, 3) @ torch.randn(3, 50)).requires_grad_(False)
    model = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 4))
    with torch.no_grad():
        model[0].weight.copy_(low)
    context = ApplyContext()
    out = apply(model, SVDFactorization(energy=0.999, keep_classifier=False), context=context)
    rows = {row["layer"]: row for row in context.notes["lowrank"]}
    assert rows["0"]["rank"] == 3 and rows["0"]["error"] < 1e-5
    assert rows["2"]["status"].startswith("skipped: would not save")  # 4x40 layer: r·44 >= 160
    kept = ApplyContext()
    apply(model, SVDFactorization(energy=0.999), context=kept)  # keep_classifier by default
    assert kept.notes["lowrank"][-1]["status"] == "skipped: output layer (keep_classifier)"
    assert isinstance(out[2], nn.Linear)
    ratio = ApplyContext()
    apply(model, SVDFactorization(ratio=0.25), context=ratio)
    assert ratio.notes["lowrank"][0]["rank"] == int(0.25 * 40 * 50 / 90)  # 5


def test_spatial_svd_of_a_conv_layer():
    model = nn.Sequential(nn.Conv2d(16, 16, 5, padding=2))
    out = apply(model, SpatialSVD(rank=4))
    assert ts.count_parameters(out) == 4 * (16 * 5 + 16 * 5) + 16
    x = torch.randn(1, 16, 12, 12)
    assert out(x).shape == model(x).shape


def test_rank_at_or_above_full_rank_is_an_error_and_changes_nothing():
    model = nn.Sequential(nn.Linear(10, 8), nn.Linear(8, 3))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ts.ConfigError, match=r"svd.rank 3 >= full rank 3 of layer 1"):
        apply(model, SVDFactorization(rank=3, keep_classifier=False), inplace=True)
    assert isinstance(model[0], nn.Linear) and isinstance(model[1], nn.Linear)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ts.ConfigError, match="set only one of rank, ratio, energy"):
        SVDFactorization(rank=2, ratio=0.5)
    with pytest.raises(ts.ConfigError, match=r"ratio must be in \(0, 1\)"):
        SVDFactorization(ratio=1.5)
    with pytest.raises(ts.ConfigError, match="names no module"):
        apply(model, SVDFactorization(scope=Scope(include=("fc9",))))


def test_factorized_model_saves_and_loads_without_pickling(tmp_path):
    task = ts.tasks.get("digits-mlp")
    model = task.build_model()
    out = apply(model, SVDFactorization(ratio=0.3), task)
    io = lowrank_io(task, out)
    size = artifact_bytes(out, tmp_path / "svd.safetensors", task.inputs(4), io)
    assert size < 0.5 * 4 * ts.count_parameters(model)
    reloaded = io.load(tmp_path / "svd.safetensors")
    assert ts.count_parameters(reloaded) == ts.count_parameters(out)
