"""Reference architectures and the name → builder registry.

Build one with ``build_model("mnist1d_cnn", channels=16)``; a checkpoint stores the name and
the JSON-serializable kwargs and rebuilds the same architecture from them. Every model records
``input_shape`` (one sample, no batch dim) and ``num_classes`` for tracing and export.
"""

from __future__ import annotations

from torchslim.models.lenet import LeNet5
from torchslim.models.mlp import MLP
from torchslim.models.mnist1d import MNIST1DCNN
from torchslim.models.mnist1d_separable import MNIST1DSeparable
from torchslim.models.mobilenet import DepthwiseSeparable, MobileNet
from torchslim.models.registry import MODELS, ModelBuilder, build_model, list_models, register_model
from torchslim.models.resnet import BasicBlock, ConcatResNet, ConcatStem, ResNet
from torchslim.models.staged import StagedCNN
from torchslim.models.vgg import VGG

__all__ = [
    "LeNet5",
    "MLP",
    "MNIST1DCNN",
    "MNIST1DSeparable",
    "MODELS",
    "VGG",
    "BasicBlock",
    "ConcatResNet",
    "ConcatStem",
    "DepthwiseSeparable",
    "MobileNet",
    "ModelBuilder",
    "ResNet",
    "StagedCNN",
    "build_model",
    "list_models",
    "register_model",
]
