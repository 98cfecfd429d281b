"""A LeNet-300-100 shaped multilayer perceptron."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torchslim.models._checks import positive_int, positive_int_list
from torchslim.models.registry import register_model


@register_model("mlp")
class MLP(nn.Module):
    """Flatten → (Linear → ReLU) per hidden width → Linear; input ``(N, in_features)``.

    Any input shape whose trailing dims flatten to ``in_features`` is accepted (e.g.
    ``(N, 1, 8, 8)`` for 8x8 digits). The defaults have 50,610 parameters.

    Args:
        in_features: Flattened input size.
        hidden: Hidden layer widths, first to last.
        num_classes: Output logits.
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: Sequence[int] = (300, 100),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        in_features = positive_int("in_features", in_features)
        widths = positive_int_list("hidden", hidden)
        self.num_classes = positive_int("num_classes", num_classes)
        self.input_shape: tuple[int, ...] = (in_features,)
        layers: list[nn.Module] = [nn.Flatten()]
        previous = in_features
        for width in widths:
            layers += [nn.Linear(previous, width), nn.ReLU()]
            previous = width
        layers.append(nn.Linear(previous, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, in_features)`` (or anything flattening to it) to ``(N, num_classes)``."""
        return self.layers(x)
