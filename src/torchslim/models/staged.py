"""A staged conv net: the architecture family the student search explores."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.models.registry import register_model


@register_model("staged_cnn")
class StagedCNN(nn.Module):
    """A conv net of stages (width, depth, kernel); each stage halves the resolution.

    Args:
        stages: ``[width, depth, kernel]`` per stage.
        dims: 1 (signals, strided first conv) or 2 (images, BatchNorm + max-pool).
        in_channels, num_classes, input_size: input and output shape.
        fc_width: hidden width of the 2-D head (0: a single Linear).
    """

    def __init__(
        self,
        stages: Sequence[Sequence[int]] = ((25, 1, 5), (25, 1, 3), (25, 1, 3)),
        dims: int = 1,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 40,
        fc_width: int = 0,
    ) -> None:
        super().__init__()
        if dims not in (1, 2) or not stages:
            raise ConfigError("StagedCNN needs dims 1 or 2 and at least one stage")
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        layers: list[nn.Module] = []
        previous, size = in_channels, input_size
        for width, depth, kernel in stages:
            for index in range(depth):
                stride = 2 if dims == 1 and index == 0 else 1
                layers.append(conv(previous, width, kernel, stride, kernel // 2, bias=dims == 1))
                if dims == 2:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU())
                previous = width
                if stride == 2:
                    size = (size + 2 * (kernel // 2) - kernel) // 2 + 1
            if dims == 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        if size < 1:
            raise ConfigError(f"input_size {input_size} is too small for {len(stages)} stages")
        self.features = nn.Sequential(*layers)
        flat = previous * size**dims
        head: list[nn.Module] = [nn.Flatten()]
        if fc_width:
            head += [nn.Linear(flat, fc_width), nn.ReLU(), nn.Linear(fc_width, num_classes)]
        else:
            head.append(nn.Linear(flat, num_classes))
        self.classifier = nn.Sequential(*head)
        self.num_classes = num_classes
        self.input_shape = (in_channels,) + (input_size,) * dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
