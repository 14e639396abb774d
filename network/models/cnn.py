"""Small convolutional classifiers: the MNIST-1D paper's CNN and one for scikit-learn's 8x8 digits."""
from __future__ import annotations

from typing import Sequence

import numpy

from mpiprop.network.compute.windows import output_sizes
from mpiprop.network.layers.activations import ReLU
from mpiprop.network.layers.batchnorm2d import BatchNorm2d
from mpiprop.network.layers.conv import Conv1d, Conv2d
from mpiprop.network.layers.flatten import Flatten
from mpiprop.network.layers.linear import Linear
from mpiprop.network.layers.pooling import MaxPool2d
from mpiprop.network.layers.sequential import Sequential


def mnist1d_cnn(channels: int = 25, kernel_sizes: Sequence[int] = (5, 3, 3), length: int = 40, classes: int = 10, *,
                dtype=numpy.float32, device: str = "cpu") -> Sequential:
    """The MNIST-1D paper's convolutional classifier (Greydanus, 2020, `ConvBase` in its notebooks/models.py).

    Input (batch, 1, length); three Conv1d layers of `channels` channels, stride 2 and padding 1,
    each followed by ReLU, then Flatten and Linear to `classes`. With the defaults the lengths go
    40 -> 19 -> 10 -> 5 and the classifier reads 25 x 5 = 125 features (5,210 parameters in all).

    Args:
        channels: channels of each convolution.
        kernel_sizes: kernel size of each convolution (the paper's are 5, 3, 3).
        length: the input signals' length.
        classes: outputs of the last layer.
        dtype, device: of the parameters.

    Returns:
        The model as a Sequential.

    Raises:
        ValueError: when `length` is too short for the convolutions.
    """
    layers, in_channels = [], 1
    for kernel in kernel_sizes:
        layers += [Conv1d(in_channels, channels, kernel, stride=2, padding=1, dtype=dtype, device=device), ReLU()]
        length = output_sizes((length,), (kernel,), (2,), (1,), (1,), f"mnist1d_cnn at Conv1d(kernel {kernel})")[0]
        in_channels = channels
    return Sequential(*layers, Flatten(), Linear(in_channels * length, classes, dtype=dtype, device=device))


def digits_cnn(channels: Sequence[int] = (16, 32), classes: int = 10, batch_norm: bool = True, *,
               dtype=numpy.float32, device: str = "cpu") -> Sequential:
    """A small Conv2d classifier for scikit-learn's 8x8 digits, input (batch, 1, 8, 8).

    Two blocks of Conv2d (3x3, padding 1), BatchNorm2d (with `batch_norm`), ReLU and MaxPool2d(2)
    take 8x8 to 4x4 to 2x2; then Flatten and Linear to `classes`.

    Args:
        channels: output channels of the two convolutions.
        classes: outputs of the last layer.
        batch_norm: put BatchNorm2d after each convolution.
        dtype, device: of the parameters.

    Returns:
        The model as a Sequential.
    """
    layers, in_channels = [], 1
    for out_channels in channels:
        layers.append(Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm, dtype=dtype, device=device))
        if batch_norm:
            layers.append(BatchNorm2d(out_channels, dtype=dtype, device=device))
        layers += [ReLU(), MaxPool2d(2)]
        in_channels = out_channels
    side = 8 // 2 ** len(channels)
    return Sequential(*layers, Flatten(), Linear(in_channels * side * side, classes, dtype=dtype, device=device))
