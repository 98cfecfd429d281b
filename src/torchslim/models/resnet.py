"""Small CIFAR-style ResNets: a plain one and one whose stem concatenates two branches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.models._checks import positive_int, positive_int_list
from torchslim.models.registry import register_model


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Bias-free conv (same padding) followed by BatchNorm2d."""
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
    ]


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with 3x3 convs.

    The shortcut is the identity when the shape is kept, else a strided 1x1 conv + BN.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                *_conv_bn(in_channels, out_channels, 1, stride=stride)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block forward."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


@register_model("resnet_small")
class ResNet(nn.Module):
    """CIFAR-style ResNet: conv3x3 stem, stages of BasicBlocks, global pool, linear head.

    Stage ``i`` has ``blocks_per_stage[i]`` blocks of width ``widths[i]``; every stage after
    the first starts with stride 2. The stem outputs ``widths[0]`` channels. With the defaults
    (input ``(N, 3, 32, 32)``) the model has 78,042 parameters.

    Args:
        in_channels: Input image channels.
        num_classes: Output logits.
        widths: Channels of each stage.
        blocks_per_stage: BasicBlocks per stage; same length as ``widths``.
        input_size: Height and width of the square input (any size works thanks to the global
            pool; recorded in ``input_shape`` for tracing and export).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: Sequence[int] = (1, 1, 1),
        input_size: int = 32,
    ) -> None:
        super().__init__()
        in_channels = positive_int("in_channels", in_channels)
        self.num_classes = positive_int("num_classes", num_classes)
        stage_widths = positive_int_list("widths", widths)
        blocks = positive_int_list("blocks_per_stage", blocks_per_stage)
        if len(blocks) != len(stage_widths):
            raise ConfigError(
                f"blocks_per_stage has {len(blocks)} entries but widths has "
                f"{len(stage_widths)}; give one block count per stage"
            )
        input_size = positive_int("input_size", input_size)
        self.input_shape: tuple[int, ...] = (in_channels, input_size, input_size)
        self.stem = self._make_stem(in_channels, stage_widths[0])
        stages: list[nn.Module] = []
        previous = stage_widths[0]
        for index, (width, count) in enumerate(zip(stage_widths, blocks, strict=True)):
            stage: list[nn.Module] = []
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                stage.append(BasicBlock(previous, width, stride))
                previous = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(previous, num_classes)

    def _make_stem(self, in_channels: int, width: int) -> nn.Module:
        """Conv3x3 + BN + ReLU from the input to ``width`` channels."""
        return nn.Sequential(*_conv_bn(in_channels, width, 3), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, H, W)`` images to ``(N, num_classes)`` logits."""
        out = self.stages(self.stem(x))
        return self.fc(self.flatten(self.pool(out)))


class ConcatStem(nn.Module):
    """Two parallel conv+BN+ReLU branches (3x3 and 1x1) concatenated along channels."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        if width < 2:
            raise ConfigError(
                f"widths[0] must be >= 2 for the two-branch stem, got {width}; pass widths[0] >= 2"
            )
        half = width // 2
        self.branch3x3 = nn.Sequential(*_conv_bn(in_channels, half, 3), nn.ReLU())
        self.branch1x1 = nn.Sequential(*_conv_bn(in_channels, width - half, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the 3x3 and 1x1 branch outputs along dim 1."""
        return torch.cat([self.branch3x3(x), self.branch1x1(x)], dim=1)


@register_model("resnet_concat")
class ConcatResNet(ResNet):
    """:class:`ResNet` whose stem is a :class:`ConcatStem`: residual adds plus a concatenation.

    Exists so pruning tests cover a graph with both channel couplings. Same options as
    :class:`ResNet`; the defaults have 77,850 parameters.
    """

    def _make_stem(self, in_channels: int, width: int) -> nn.Module:
        """Two-branch concatenating stem."""
        return ConcatStem(in_channels, width)
