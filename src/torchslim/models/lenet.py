"""LeNet-5 (LeCun et al., 1998) for 28x28 grayscale images, in its common modern form."""

from __future__ import annotations

import torch
from torch import nn

from torchslim.models._checks import positive_int
from torchslim.models.registry import register_model


@register_model("lenet5")
class LeNet5(nn.Module):
    """conv5x5(6, pad 2) → pool → conv5x5(16) → pool → 120 → 84 → classes, ReLU + max-pool.

    The 28x28 input is padded by 2 (the paper's 32x32), so the layer sizes are the paper's:
    61,706 parameters and 416,520 MACs per image with the defaults. ReLU and max-pooling
    replace the paper's scaled tanh and trainable sub-sampling, as in most re-implementations
    whose Fashion-MNIST accuracies are published.

    Args:
        in_channels: Input image channels.
        num_classes: Output logits.
        input_size: Height and width of the square input (28 for (Fashion-)MNIST).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> None:
        super().__init__()
        in_channels = positive_int("in_channels", in_channels)
        self.num_classes = positive_int("num_classes", num_classes)
        input_size = positive_int("input_size", input_size)
        self.input_shape: tuple[int, ...] = (in_channels, input_size, input_size)
        side = ((input_size + 4 - 4) // 2 - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, self.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, H, W)`` images to ``(N, num_classes)`` logits."""
        return self.classifier(self.features(x))
