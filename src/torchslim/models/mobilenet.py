"""A small MobileNet-v1-style network of depthwise-separable blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.models._checks import positive_float, positive_int, scale_width
from torchslim.models.registry import register_model

DEFAULT_MOBILENET_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
)


class DepthwiseSeparable(nn.Module):
    """Depthwise conv3x3 + BN + ReLU, then pointwise conv1x1 + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise then pointwise."""
        x = self.relu1(self.bn1(self.depthwise(x)))
        return self.relu2(self.bn2(self.pointwise(x)))


def _block_config(value: object) -> list[tuple[int, int]]:
    """Validate ``[[out_channels, stride], ...]`` (lists or tuples, as JSON gives them back)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) == 0:
        raise ConfigError(
            f"blocks must be a non-empty list of [out_channels, stride] pairs, got {value!r}"
        )
    pairs: list[tuple[int, int]] = []
    for index, pair in enumerate(value):
        if isinstance(pair, str | bytes) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ConfigError(
                f"blocks[{index}] must be an [out_channels, stride] pair, got {pair!r}"
            )
        channels = positive_int(f"blocks[{index}][0] (out_channels)", pair[0])
        stride = positive_int(f"blocks[{index}][1] (stride)", pair[1])
        pairs.append((channels, stride))
    return pairs


@register_model("mobilenet_small")
class MobileNet(nn.Module):
    """Conv3x3 stem, depthwise-separable blocks, global pool, linear head.

    With the defaults (input ``(N, 3, 32, 32)``) the model has 136,778 parameters.

    Args:
        in_channels: Input image channels.
        num_classes: Output logits.
        blocks: ``[out_channels, stride]`` per depthwise-separable block.
        width_mult: Scales the stem and every block width (rounded, at least 1).
        stem_width: Stem output channels before ``width_mult``.
        input_size: Height and width of the square input (recorded in ``input_shape``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        blocks: Sequence[Sequence[int]] = DEFAULT_MOBILENET_BLOCKS,
        width_mult: float = 1.0,
        stem_width: int = 32,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        in_channels = positive_int("in_channels", in_channels)
        self.num_classes = positive_int("num_classes", num_classes)
        config = _block_config(blocks)
        width_mult = positive_float("width_mult", width_mult)
        stem = scale_width(positive_int("stem_width", stem_width), width_mult)
        input_size = positive_int("input_size", input_size)
        self.input_shape: tuple[int, ...] = (in_channels, input_size, input_size)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        previous = stem
        for channels, stride in config:
            width = scale_width(channels, width_mult)
            layers.append(DepthwiseSeparable(previous, width, stride))
            previous = width
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, H, W)`` images to ``(N, num_classes)`` logits."""
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))
