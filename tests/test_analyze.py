"""`analyze`: every prunable layer and coupled group, reasons for what is skipped, never a crash."""

from __future__ import annotations

import json

import torch
from torch import nn

from torchslim.analyze import analyze_model
from torchslim.cli import main
from torchslim.models import build_model


def test_residual_concat_net_groups_and_layers():
    model = build_model("resnet_concat", widths=[16, 32, 64])
    analysis = analyze_model(model, torch.randn(1, 3, 32, 32))
    assert analysis.params == 77_850 and analysis.macs == 12_305_024
    roots = {group.root: group for group in analysis.groups}
    assert set(roots) == {
        "stem.branch3x3.0",
        "stem.branch1x1.0",
        "stages.0.0.conv1",
        "stages.1.0.conv1",
        "stages.2.0.conv1",
        "stages.1.0.shortcut.0",
        "stages.2.0.shortcut.0",
    }
    assert roots["stem.branch3x3.0"].channels == 8
    assert "stages.0.0.conv2" in roots["stem.branch3x3.0"].members  # coupled by the residual add
    layers = {layer.name: layer for layer in analysis.layers}
    assert len(layers) == 11  # 2 stem + 2 + 3 + 3 convs, and fc
    assert layers["stages.0.0.conv1"].params == 16 * 16 * 9
    assert layers["stages.0.0.conv1"].macs == 32 * 32 * 16 * 16 * 9
    assert layers["stages.0.0.conv1"].techniques == ["unstructured", "2:4", "4:8", "channels"]
    assert "classifier: channels kept" in layers["fc"].notes
    assert any("not a multiple of 4" in note for note in layers["stem.branch1x1.0"].notes)


def test_unfamiliar_patterns_are_reported_not_crashed():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.scale = nn.Parameter(torch.ones(1))
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.conv(x).mean((2, 3)) * self.scale
            return self.fc(torch.from_numpy(features.detach().numpy()))

    analysis = analyze_model(Odd(), torch.randn(1, 3, 8, 8))
    assert [layer.name for layer in analysis.layers] == ["conv", "fc"]


def test_cli_analyze_json(capsys):
    assert main(["analyze", "mnist1d-cnn", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["task"] == "mnist1d-cnn" and data["params"] == 5210
    assert sorted(g["root"] for g in data["groups"]) == ["features.0", "features.2", "features.4"]
    names = [layer["name"] for layer in data["layers"]]
    assert names == ["features.0", "features.2", "features.4", "classifier"]
