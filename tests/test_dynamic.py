"""Dynamic networks: early exit really skips work; gated branches compute one branch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.measure import count_macs
from torchslim.techniques import Scope, apply
from torchslim.techniques.dynamic import (
    EarlyExit,
    GatedBranches,
    GatedSkip,
    build_early_exit,
    path_macs,
    sweep_thresholds,
)


def conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv1d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 16, 3),
    )


def test_threshold_zero_exits_every_sample_at_the_first_head():
    torch.manual_seed(0)
    model = conv_net()
    x = torch.randn(5, 1, 16)
    exit_model = build_early_exit(model, x, exits=["1"], head_pool=2, threshold=0.0).eval()
    out = exit_model(x)
    assert exit_model.exit_counts == [5, 0]
    assert torch.equal(out, exit_model.heads[0](exit_model.segments[0](x)))
    # first head's path: conv 1→4 (k3, 16 positions) = 192 MACs + head Linear(4·2 → 3) = 24
    assert count_macs(exit_model, x[:1]).macs == 192 + 24
    # the final path also evaluates the head: 192 + 24 + conv 4→8 (1536) + Linear(128→3) (384)
    assert path_macs(exit_model, x[:1]) == [216, 216 + 1536 + 384]
    assert count_macs(model, x[:1]).macs == 192 + 1536 + 384


def test_high_threshold_reproduces_the_original_model():
    torch.manual_seed(0)
    model = conv_net().eval()
    x = torch.randn(4, 1, 16)
    exit_model = build_early_exit(copy.deepcopy(model), x, exits=["1"], threshold=1.01).eval()
    assert torch.allclose(exit_model(x), model(x), atol=1e-6)


def test_missing_exit_point_is_an_error_and_the_model_is_unchanged():
    model = conv_net()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ts.ConfigError, match="early-exit point 'features.9' does not exist"):
        build_early_exit(model, torch.randn(2, 1, 16), exits=["features.9"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ts.ConfigError, match=r"threshold must be in \[0, 1\]"):
        EarlyExit(threshold=1.5)


@pytest.mark.slow
def test_early_exit_on_mnist1d_sweeps_accuracy_against_macs():
    torch.set_num_threads(1)
    task = ts.tasks.get("mnist1d-cnn")
    base = task.baseline(progress=False)
    model = apply(base, EarlyExit(epochs=8, mode="distill", threshold=0.9), task)
    assert model.exits == ["features.1", "features.3"]
    rows = sweep_thresholds(model, task, (0.0, 0.9, 1.01), baseline=base, latency=False)
    assert rows[0]["exit_fractions"] == [1.0, 0.0, 0.0]
    assert rows[0]["avg_macs"] == rows[0]["path_macs"][0] < 0.2 * rows[0]["baseline_macs"]
    # distill mode freezes the trunk: past every head the model is the baseline exactly
    assert rows[-1][task.metric_name] == pytest.approx(task.evaluate(base), abs=1e-9)
    assert rows[1]["avg_macs"] < rows[-1]["avg_macs"]


def test_gated_branches_compute_one_branch_per_sample_at_inference():
    torch.manual_seed(0)
    double, triple = nn.Linear(4, 4), nn.Linear(4, 4)
    block = GatedBranches([double, triple], channels=4)
    with torch.no_grad():
        block.gate.weight.zero_()
        block.gate.weight[1, 0] = 10.0  # samples with a large first feature pick branch 1
        block.gate.bias.zero_()
    x = torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [2.0, 1, 0, 0]])
    calls = []
    for branch in (double, triple):
        branch.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    out = block.eval()(x)
    assert calls == [1, 2] and block.branch_counts == [1, 2]
    assert torch.allclose(out[1], double(x[1:2])[0]) and torch.allclose(out[0], triple(x[:1])[0])
    block.train()
    soft = block(x)
    probs = torch.softmax(block.gate(x), -1)
    assert torch.allclose(soft, probs[:, :1] * double(x) + probs[:, 1:] * triple(x), atol=1e-6)


def test_gated_skip_wraps_shape_preserving_blocks(tiny_task):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    out = apply(model, GatedSkip(scope=Scope(include=("0", "2")), epochs=1), tiny_task)
    assert isinstance(out[0], GatedBranches) and isinstance(out[2], nn.Linear)  # 8→3 changes shape
