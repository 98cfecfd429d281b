"""Footprint measurement: MACs by hand, artifact bytes on disk, latency, ratios."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.measure import (
    LayerFootprint,
    artifact_bytes,
    benchmark_latency,
    count_macs,
    layer_table,
)
from torchslim.models import build_model


def conv_linear_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8 out * 16*16 positions * (3*3*3) = 55_296 MACs
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: 8 * 16*16 * 9 = 18_432 MACs
        nn.Flatten(),
        nn.Linear(8 * 16 * 16, 10),  # 2048 * 10 = 20_480 MACs
    )


def test_macs_of_conv_and_linear_equal_hand_count():
    model = conv_linear_model()
    count = count_macs(model, torch.randn(1, 3, 16, 16))
    assert count.per_layer == {"0": 55_296, "2": 18_432, "4": 20_480}
    assert count.macs == 55_296 + 18_432 + 20_480
    assert count.flops == 2 * count.macs


def test_macs_are_per_sample_whatever_the_batch():
    model = conv_linear_model()
    assert count_macs(model, torch.randn(4, 3, 16, 16)).macs == 94_208


def test_mnist1d_cnn_macs_by_hand():
    model = build_model("mnist1d_cnn")
    # lengths 40 -> 19 -> 10 -> 5; MACs = out_channels * out_length * in_channels * kernel
    conv1 = 25 * 19 * 1 * 5
    conv2 = 25 * 10 * 25 * 3
    conv3 = 25 * 5 * 25 * 3
    dense = 125 * 10
    assert count_macs(model, torch.randn(1, 1, 40)).macs == conv1 + conv2 + conv3 + dense == 31_750


def test_layer_table_counts_nonzeros():
    model = conv_linear_model()
    with torch.no_grad():
        model[4].weight[:, :1024] = 0
    rows = {
        row.name: row for row in layer_table(model, count_macs(model, torch.randn(1, 3, 16, 16)))
    }
    assert rows["4"].params == 2048 * 10 + 10
    assert rows["4"].nonzero_params == 1024 * 10 + int(torch.count_nonzero(model[4].bias))
    assert ts.count_nonzero(model) == ts.count_parameters(model) - 1024 * 10


def test_artifact_bytes_is_the_file_size_and_reloads_identically(tmp_path):
    model = build_model("mlp")
    inputs = torch.randn(4, 64)
    path = tmp_path / "model.safetensors"
    size = artifact_bytes(model, path, inputs)
    assert size == os.path.getsize(path)
    params = ts.count_parameters(model)
    # fp32 payload plus a small safetensors header (tensor names, offsets, JSON spec)
    assert 4 * params <= size < 4 * params + 2048
    reloaded, _ = ts.load_checkpoint(path, model=build_model("mlp"))
    assert torch.equal(reloaded(inputs), model.eval()(inputs))


def test_latency_is_positive_and_threads_are_restored():
    before = torch.get_num_threads()
    small = nn.Linear(16, 16)
    large = nn.Sequential(*[nn.Linear(512, 512) for _ in range(4)])
    stats = benchmark_latency(
        [small, nn.Sequential(nn.Linear(16, 512), large)], torch.randn(8, 16), repeats=15
    )
    assert torch.get_num_threads() == before
    assert all(s.median_ms > 0 and s.repeats == 15 and s.batch_size == 8 for s in stats)
    assert all(s.p25_ms <= s.median_ms <= s.p75_ms for s in stats)
    # 4 x 512x512 layers do ~2000x the work of one 16x16 layer; the ratio survives noise
    assert stats[1].median_ms > 5 * stats[0].median_ms


def test_unknown_runtime_is_a_config_error():
    with pytest.raises(ts.ConfigError, match="runtime 'tpu' is unknown"):
        benchmark_latency([nn.Linear(2, 2)], torch.randn(1, 2), runtime="tpu")


def footprint(
    metric: float, size: int, nonzero: int, macs: int, b1: float, bn: float
) -> ts.Footprint:
    return ts.Footprint(
        metric=metric,
        metric_name="accuracy",
        params=nonzero,
        nonzero_params=nonzero,
        artifact_bytes=size,
        macs=macs,
        flops=2 * macs,
        latency_ms={"batch_1": b1, "batch_N": bn},
        latency_spread_ms={},
        runtime="torch",
        threads=1,
        batch_n=64,
        artifact=None,
    )


def test_compare_gives_ratios_and_drop():
    base = footprint(0.90, 4000, 1000, 10_000, 2.0, 8.0)
    cand = footprint(0.88, 500, 250, 2_500, 0.5, 4.0)
    ratio = ts.compare(base, cand)
    assert ratio.size_ratio == 8.0
    assert ratio.params_ratio == 4.0
    assert ratio.macs_ratio == 4.0
    assert ratio.speedup == {"batch_1": 4.0, "batch_N": 2.0}
    assert ratio.metric_drop == pytest.approx(0.02)


def test_footprint_round_trips_through_dict():
    fp = footprint(0.5, 10, 3, 7, 1.0, 2.0)
    fp.per_layer = [LayerFootprint("fc", "Linear", 3, 3, 7)]
    assert ts.Footprint.from_dict(fp.to_dict()) == fp


def test_measure_many_on_a_task(tiny_task, tmp_path):
    model = tiny_task.baseline(progress=False)
    half = tiny_task.build_model()
    keep = tmp_path / "kept.safetensors"
    base, other = ts.measure_many([model, half], tiny_task, artifacts=[keep, None], batch_n=16)
    assert base.artifact == str(keep) and keep.stat().st_size == base.artifact_bytes
    assert other.artifact is None
    assert base.params == other.params == 8 * 16 + 16 + 16 * 3 + 3
    assert base.macs == 8 * 16 + 16 * 3
    assert base.metric >= 0.9  # separable blobs
    assert set(base.latency_ms) == {"batch_1", "batch_N"} and base.batch_n == 16
    assert base.metric == tiny_task.evaluate(model)


def test_pruning_masks_count_as_zeros():
    from torch.nn.utils import prune

    model = nn.Sequential(nn.Linear(10, 10))
    mask = torch.zeros(10, 10)
    mask[:, :3] = 1
    prune.custom_from_mask(model[0], "weight", mask)
    assert ts.count_parameters(model) == 110
    assert ts.count_nonzero(model) == 30 + int(torch.count_nonzero(model[0].bias))
