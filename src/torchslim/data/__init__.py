"""Built-in datasets, all offline: every loader returns a :class:`Splits` of TensorDatasets."""

from torchslim.data.builtin import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGE_EXTENSIONS,
    default_cache_dir,
    load_cifar10,
    load_digits,
    load_digits32,
    load_image_folder,
    load_mnist1d,
    load_npz,
)
from torchslim.data.idx import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_PACKAGE,
    load_fashion_mnist,
    load_idx,
)
from torchslim.data.splits import Splits, make_splits, split_arrays

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_PACKAGE",
    "IMAGE_EXTENSIONS",
    "Splits",
    "default_cache_dir",
    "load_cifar10",
    "load_digits",
    "load_digits32",
    "load_fashion_mnist",
    "load_idx",
    "load_image_folder",
    "load_mnist1d",
    "load_npz",
    "make_splits",
    "split_arrays",
]
