"""The small 1-D CNN from the MNIST-1D paper (Greydanus, 2020)."""

from __future__ import annotations

import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.models._checks import positive_int
from torchslim.models.registry import register_model


def _conv_out(length: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a Conv1d (no dilation)."""
    return (length + 2 * padding - kernel) // stride + 1


@register_model("mnist1d_cnn")
class MNIST1DCNN(nn.Module):
    """Three strided Conv1d + ReLU layers and a linear classifier; input ``(N, 1, input_length)``.

    With the defaults the length goes 40 → 19 → 10 → 5 and the model has 5,210 parameters.

    Args:
        channels: Channels of every conv layer.
        num_classes: Output logits.
        input_length: Length of the 1-D signal; fixes the flattened size of the classifier.
    """

    def __init__(self, channels: int = 25, num_classes: int = 10, input_length: int = 40) -> None:
        super().__init__()
        channels = positive_int("channels", channels)
        self.num_classes = positive_int("num_classes", num_classes)
        input_length = positive_int("input_length", input_length)
        length = _conv_out(input_length, 5, 2, 1)
        length = _conv_out(length, 3, 2, 1)
        length = _conv_out(length, 3, 2, 1)
        if length < 1:
            raise ConfigError(
                f"input_length {input_length} is too short for three strided convs; pass >= 3"
            )
        self.input_shape: tuple[int, ...] = (1, input_length)
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, kernel_size=5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, 1, L)`` signals to ``(N, num_classes)`` logits."""
        return self.classifier(self.flatten(self.features(x)))
