"""Structured channel pruning: real shape surgery, hand-counted params/MACs, save/load, errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.checkpoint import load_checkpoint, read_spec, save_checkpoint
from torchslim.errors import ConfigError
from torchslim.measure import artifact_bytes, checkpoint_io, count_macs, count_parameters
from torchslim.models import build_model
from torchslim.techniques import ApplyContext, Scope, apply
from torchslim.techniques.channels import ChannelPruning, ratio_for_macs

ARCH = {"name": "resnet_concat", "kwargs": {"widths": [16, 32, 64]}}
IMAGE = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def resnet_params(a: int, b: int, c: int) -> int:
    """Parameters of resnet_concat(widths=(a, b, c)), counted by hand layer by layer."""
    stem = 3 * (a // 2) * 9 + 2 * (a // 2) + 3 * (a - a // 2) + 2 * (a - a // 2)
    block0 = 2 * (a * a * 9 + 2 * a)
    block1 = a * b * 9 + 2 * b + b * b * 9 + 2 * b + a * b + 2 * b
    block2 = b * c * 9 + 2 * c + c * c * 9 + 2 * c + b * c + 2 * c
    return stem + block0 + block1 + block2 + c * 10 + 10


def resnet_macs(a: int, b: int, c: int) -> int:
    """MACs of one 32x32 sample: output pixels x in x out x kernel, per conv; plus the fc."""
    stem = 32 * 32 * 3 * (a // 2) * 9 + 32 * 32 * 3 * (a - a // 2)
    block0 = 2 * 32 * 32 * a * a * 9
    block1 = 16 * 16 * (a * b * 9 + b * b * 9 + a * b)
    block2 = 8 * 8 * (b * c * 9 + c * c * 9 + b * c)
    return stem + block0 + block1 + block2 + c * 10


def test_residual_concat_net_at_50_percent(tmp_path):
    model = build_model("resnet_concat", widths=[16, 32, 64]).eval()
    assert count_parameters(model) == resnet_params(16, 32, 64) == 77_850
    assert count_macs(model, IMAGE).macs == resnet_macs(16, 32, 64) == 12_305_024
    context = ApplyContext()
    pruned = apply(model, ChannelPruning(ratio=0.5), context=context)
    assert pruned(IMAGE).shape == model(IMAGE).shape == (1, 10)
    # every coupled group (residual adds, the concatenated stem) halves consistently
    assert count_parameters(pruned) == resnet_params(8, 16, 32) == 19_858
    assert count_macs(pruned, IMAGE).macs == resnet_macs(8, 16, 32) == 3_137_856
    assert pruned.stem.branch3x3[0].out_channels == pruned.stem.branch1x1[0].out_channels == 4
    assert pruned.fc.out_features == 10  # the classifier keeps its outputs
    spec = {"arch": ARCH}
    dense = artifact_bytes(
        model, tmp_path / "a.safetensors", IMAGE, checkpoint_io(None, model, spec)
    )
    small = artifact_bytes(
        pruned, tmp_path / "b.safetensors", IMAGE, checkpoint_io(None, pruned, spec)
    )
    assert dense / small > 3.4  # 4 bytes per parameter plus a small header
    layers = {row["layer"]: row for row in context.notes["pruning"][0]["layers"]}
    assert layers["stages.2.0.conv1"] == {
        "layer": "stages.2.0.conv1",
        "out_before": 64,
        "out_after": 32,
    }


def test_pruned_checkpoint_reloads_from_its_spec_without_pickle(tmp_path):
    model = build_model("resnet_concat", widths=[16, 32, 64]).eval()
    pruned = apply(model, ChannelPruning(ratio=0.5, importance="l2"))
    save_checkpoint(pruned, tmp_path / "p.safetensors", {"arch": ARCH})
    spec = read_spec(tmp_path / "p.safetensors")
    assert spec["structure"]["stages.0.0.conv1"]["out_channels"] == 8
    assert spec["structure"]["fc"] == {
        "type": "Linear",
        "in_features": 32,
        "out_features": 10,
        "bias": True,
    }
    loaded, _ = load_checkpoint(tmp_path / "p.safetensors")
    assert torch.equal(loaded(IMAGE), pruned(IMAGE))
    save_checkpoint(model, tmp_path / "m.safetensors", {"arch": ARCH})
    assert "structure" not in read_spec(tmp_path / "m.safetensors")  # unpruned: nothing recorded


def tiny_vgg() -> nn.Module:
    return build_model("vgg_cifar", width_mult=0.25, fc_width=32, dropout=0.0).eval()


def test_round_to_keeps_multiples_and_layer_ratios_override():
    pruned = apply(tiny_vgg(), ChannelPruning(ratio=0.3, round_to=8))
    widths = [m.out_channels for m in pruned.features if isinstance(m, nn.Conv2d)]
    # kept widths round down to multiples of 8: 11.2 -> 8, 22.4 -> 16, 44.8 -> 40, 89.6 -> 88
    assert widths == [8, 8, 16, 16, 40, 40, 88, 88]
    custom = apply(tiny_vgg(), ChannelPruning(ratio=0.5, layer_ratios=(("features.0", 0.25),)))
    widths = [m.out_channels for m in custom.features if isinstance(m, nn.Conv2d)]
    assert widths == [12, 8, 16, 16, 32, 32, 64, 64]
    assert custom.classifier[1].in_features == 64 * 2 * 2  # flatten -> Linear follows


def test_global_mode_removes_the_ratio_of_all_channels():
    model = tiny_vgg()
    pruned = apply(model, ChannelPruning(ratio=0.5, mode="global"))
    before = sum(m.out_channels for m in model.features if isinstance(m, nn.Conv2d))
    before += model.classifier[1].out_features
    after = sum(m.out_channels for m in pruned.features if isinstance(m, nn.Conv2d))
    after += pruned.classifier[1].out_features
    assert after == before // 2
    assert pruned(IMAGE).shape == (1, 10)


def test_global_mode_caps_each_group_and_rejects_unreachable_targets():
    model = tiny_vgg()
    widths = [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)]
    widths.append(model.classifier[1].out_features)
    pruned = apply(model, ChannelPruning(ratio=0.85, mode="global", max_ratio=0.9))
    kept = [m.out_channels for m in pruned.features if isinstance(m, nn.Conv2d)]
    kept.append(pruned.classifier[1].out_features)
    # 85% of all channels go (to one channel), but no group loses more than 90% (none is emptied)
    assert abs(sum(widths) - sum(kept) - 0.85 * sum(widths)) <= 1  # 435.2 -> 436 removed
    assert all(k >= w - int(0.9 * w) for k, w in zip(kept, widths, strict=True))
    assert pruned(IMAGE).shape == (1, 10)
    with pytest.raises(ConfigError, match="exceeds max_ratio 0.75"):
        ChannelPruning(ratio=0.8, mode="global")
    with pytest.raises(ConfigError, match=r"did not reach 50x fewer MACs"):
        ratio_for_macs(model, ChannelPruning(mode="global", max_ratio=0.5), None, 50.0)


def test_macs_mode_cuts_compute_heavy_layers_first():
    model = tiny_vgg()
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    uniform = apply(model, ChannelPruning(ratio=0.4, importance="l2"))
    context = ApplyContext()
    per_mac = apply(model, ChannelPruning(ratio=0.4, importance="l2", mode="macs"), context=context)
    before = [m.out_channels for m in convs] + [model.classifier[1].out_features]
    after = [m.out_channels for m in per_mac.features if isinstance(m, nn.Conv2d)]
    after.append(per_mac.classifier[1].out_features)
    # 40% of all 512 prunable channels go, none of a group beyond max_ratio = 75%
    assert sum(before) - sum(after) == int(0.4 * sum(before)) == 204
    assert all(kept >= width - int(0.75 * width) for kept, width in zip(after, before, strict=True))
    # a first-stage channel (32x32 pixels) costs more MACs than a last-stage one (4x4)
    assert after[0] / before[0] < after[7] / before[7]
    base, macs = count_macs(model, IMAGE).macs, count_macs(per_mac, IMAGE).macs
    assert base / macs > base / count_macs(uniform, IMAGE).macs  # more MACs saved per channel
    assert per_mac(IMAGE).shape == (1, 10)


def test_bn_scale_importance_removes_channels_with_zero_gamma():
    model = tiny_vgg()
    with torch.no_grad():
        model.features[1].weight[:8] = 0.0  # channels 0..7 of the first conv are dead
        model.features[1].weight[8:] = 1.0
    pruned = apply(
        model,
        ChannelPruning(ratio=0.5, importance="bn_scale", scope=Scope(include=("features.0",))),
    )
    assert pruned.features[0].out_channels == 8
    assert torch.equal(pruned.features[0].weight, model.features[0].weight[8:])


def test_taylor_importance_uses_task_gradients():
    model = tiny_vgg()
    with pytest.raises(ts.ConfigError, match="taylor importance needs data"):
        apply(model, ChannelPruning(importance="taylor"), task=None)


def test_depthwise_and_transformer_encoder():
    mobile = build_model("mobilenet_small", width_mult=0.25).eval()
    pruned = apply(mobile, ChannelPruning(ratio=0.5))
    block = pruned.blocks[1]
    assert block.depthwise.groups == block.depthwise.in_channels == block.depthwise.out_channels
    assert pruned(IMAGE).shape == (1, 10)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(6, 32)
            layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.head = nn.Linear(32, 3)
            self.input_shape = (5, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.embed(x)).mean(1))

    encoder = Encoder().eval()
    small = apply(encoder, ChannelPruning(ratio=0.5))
    layer = small.encoder.layers[0]
    assert layer.linear1.out_features == 32  # FFN neurons
    assert layer.self_attn.embed_dim == 16 and layer.self_attn.num_heads == 4
    assert small(torch.randn(2, 5, 6)).shape == (2, 3)


class TinyEncoder(nn.Module):
    """Linear embedding, a 2-layer nn.TransformerEncoder (width 32, 4 heads, FFN 64), a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(6, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)
        self.input_shape = (5, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


def encoder_params(width: int, heads: int, head_dim: int, ffn: int, layers: int = 2) -> int:
    """Parameters of TinyEncoder after pruning, counted by hand."""
    inner = heads * head_dim
    attention = 3 * (width * inner + inner) + inner * width + width
    layer = attention + 2 * 2 * width + (width * ffn + ffn) + (ffn * width + width)
    return 6 * width + width + layers * layer + width * 3 + 3


def test_attention_heads_are_removed_and_the_encoder_stays_consistent():
    model = TinyEncoder().eval()
    assert count_parameters(model) == encoder_params(32, 4, 8, 64) == 17_411
    with torch.no_grad():  # heads 1 and 3 of every layer contribute nothing
        for layer in model.encoder.layers:
            attention = layer.self_attn
            for head in (1, 3):
                rows = [part * 32 + head * 8 + i for part in range(3) for i in range(8)]
                attention.in_proj_weight[rows] = 0.0
                attention.in_proj_bias[rows] = 0.0
                attention.out_proj.weight[:, head * 8 : (head + 1) * 8] = 0.0
    tokens = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(1))
    context = ApplyContext()
    heads_only = apply(model, ChannelPruning(ratio=0.0, head_ratio=0.5), context=context)
    for layer in heads_only.encoder.layers:
        assert layer.self_attn.num_heads == 2 and layer.self_attn.head_dim == 8
    assert context.notes["pruning"][0]["heads"][0] == {
        "layer": "encoder.layers.0.self_attn",
        "heads_before": 4,
        "heads_after": 2,
    }
    # the two dead heads went (not two live ones): the outputs are unchanged
    torch.testing.assert_close(heads_only(tokens), model(tokens), atol=1e-5, rtol=1e-5)
    assert count_parameters(model) - count_parameters(heads_only) == 2 * 2 * (
        3 * (8 * 32 + 8) + 8 * 32
    )
    assert model.encoder.layers[0].self_attn.num_heads == 4  # the input is not modified

    # embedding width, FFN neurons and heads together; the checkpoint spec rebuilds it
    both = apply(model, ChannelPruning(ratio=0.5, head_ratio=0.5))
    layer = both.encoder.layers[1]
    assert layer.linear1.out_features == 32 and layer.norm1.normalized_shape == (16,)
    assert (layer.self_attn.embed_dim, layer.self_attn.num_heads) == (16, 2)
    assert count_parameters(both) == encoder_params(16, 2, 4, 32) == 3_539
    assert both(tokens).shape == (4, 3)
    from torchslim.structure import apply_structure, structure_diff

    spec = json.loads(json.dumps(structure_diff(both, TinyEncoder())))
    assert spec["encoder.layers.0.self_attn"]["num_heads"] == 2
    rebuilt = apply_structure(TinyEncoder(), spec)
    rebuilt.load_state_dict(both.state_dict())
    torch.testing.assert_close(rebuilt.eval()(tokens), both(tokens))
    # pruning again (an iterative schedule) removes heads of the already pruned modules
    again = apply(both, ChannelPruning(ratio=0.0, head_ratio=0.5))
    assert again.encoder.layers[0].self_attn.num_heads == 1
    assert again(tokens).shape == (4, 3)
    with pytest.raises(ts.ConfigError, match=r"head_ratio must be a number in \[0, 1\)"):
        ChannelPruning(head_ratio=1.0)


def test_ratio_for_macs_hits_the_target():
    model = tiny_vgg()
    config = ChannelPruning()
    ratio = ratio_for_macs(model, config, None, 4.0, steps=6)
    pruned = apply(model, ChannelPruning(ratio=ratio))
    reached = count_macs(model, IMAGE).macs / count_macs(pruned, IMAGE).macs
    assert 4.0 <= reached < 5.0  # widths of 16..128 channels move MACs in steps


def test_bad_input_is_a_one_line_error_and_modifies_nothing():
    with pytest.raises(ts.ConfigError, match=r"ratio must be a number in \[0, 1\), got 1.0"):
        ChannelPruning(ratio=1.0)
    with pytest.raises(ts.ConfigError, match="importance 'fisher' is unknown"):
        ChannelPruning(importance="fisher")
    with pytest.raises(ts.ConfigError, match="round_to must be None or an int >= 1"):
        ChannelPruning(round_to=0)
    model = tiny_vgg()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ts.ConfigError, match="matches no prunable layer"):
        apply(model, ChannelPruning(scope=Scope(include=("re:classifier\\.4",))), inplace=True)

    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 2)
            self.input_shape = (3, 8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.conv(x).mean((2, 3))
            return self.fc(torch.from_numpy(features.detach().numpy()))  # leaves autograd

    odd = Untraceable()
    context = ApplyContext()
    result = apply(odd, ChannelPruning(), context=context)  # an untraced coupling: no crash
    assert context.notes["pruning"][0]["layers"] == []  # and no unsafe cut
    assert result(torch.randn(2, 3, 8, 8)).shape == (2, 2)
    assert odd.conv.out_channels == 8
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
