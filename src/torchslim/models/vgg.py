"""An eight-conv VGG for 32x32 CIFAR-style images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.models._checks import (
    positive_float,
    positive_int,
    positive_int_list,
    probability,
    scale_width,
)
from torchslim.models.registry import register_model

DEFAULT_VGG_WIDTHS: tuple[int, ...] = (64, 64, 128, 128, 256, 256, 512, 512)


@register_model("vgg_cifar")
class VGG(nn.Module):
    """Eight conv3x3+BN+ReLU layers, MaxPool2d(2) after every second, then a two-layer head.

    Convs have no bias since BatchNorm follows each one. With the defaults a 32x32 input is
    pooled 32 → 16 → 8 → 4 → 2 and the model has 5,741,514 parameters.

    Args:
        in_channels: Input image channels.
        num_classes: Output logits.
        widths: Output channels of the eight convs before ``width_mult``.
        width_mult: Scales every conv width (rounded, at least 1); the head width is fixed.
        fc_width: Width of the hidden linear layer.
        dropout: Dropout probability before the last linear layer.
        input_size: Height and width of the square input; at least 16 for the four pools.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = DEFAULT_VGG_WIDTHS,
        width_mult: float = 1.0,
        fc_width: int = 512,
        dropout: float = 0.5,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        in_channels = positive_int("in_channels", in_channels)
        self.num_classes = positive_int("num_classes", num_classes)
        base = positive_int_list("widths", widths, length=8)
        width_mult = positive_float("width_mult", width_mult)
        fc_width = positive_int("fc_width", fc_width)
        dropout = probability("dropout", dropout)
        input_size = positive_int("input_size", input_size)
        if input_size < 16:
            raise ConfigError(
                f"input_size {input_size} is too small for four 2x2 max-pools; pass >= 16"
            )
        self.input_shape: tuple[int, ...] = (in_channels, input_size, input_size)
        layers: list[nn.Module] = []
        previous = in_channels
        spatial = input_size
        for index, width in enumerate(scale_width(w, width_mult) for w in base):
            layers += [
                nn.Conv2d(previous, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            if index % 2 == 1:
                layers.append(nn.MaxPool2d(2))
                spatial //= 2
            previous = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(previous * spatial * spatial, fc_width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(fc_width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, H, W)`` images to ``(N, num_classes)`` logits."""
        return self.classifier(self.features(x))
