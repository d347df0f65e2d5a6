"""The CS231n networks: the seed net (INPUT-CONV-RELU-POOL-FC) and assignment 2's three-layer convnet."""
from __future__ import annotations

import numpy as np

from ..layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from ._build import _input_dim, _seeds


def seed_net(num_classes=10, seed=0, input_dim=(3, 32, 32)):
    """INPUT [3x32x32] - CONV (12 filters 3x3, stride 1, pad 1) [12x32x32] - RELU -
    POOL (2x2 max, stride 2) [12x16x16] - FC [num_classes].

    The example architecture of the CS231n notes ("ConvNet Architectures"), 3,072 -> 10 at the
    end: 336 + 30,730 parameters for CIFAR-10."""
    c, h, w = _input_dim(input_dim)
    if h % 2 or w % 2:
        raise ValueError(f"seed_net: input height and width must be even for the 2x2 pool, got {h}x{w}")
    s = _seeds(seed, 2)
    return Sequential(
        Conv2d(c, 12, 3, stride=1, padding=1, seed=s[0]),
        ReLU(),
        MaxPool2d(2),
        Flatten(),
        Linear(12 * (h // 2) * (w // 2), num_classes, seed=s[1]),
    )


def three_layer_convnet(num_filters=32, filter_size=7, hidden_dim=100, num_classes=10, seed=0,
                        input_dim=(3, 32, 32)):
    """CONV (num_filters, filter_size x filter_size, stride 1, 'same' padding (filter_size-1)/2)
    - RELU - POOL (2x2 max) - AFFINE (hidden_dim) - RELU - AFFINE (num_classes).

    CS231n assignment 2's ``ThreeLayerConvNet``; with the defaults: 32x32x3 -> 32x32x32 ->
    16x16x32 -> 100 -> 10, about 825k parameters (8192 x 100 in the first affine layer).
    Weights use PyTorch's default initialization rather than the assignment's ``weight_scale``."""
    c, h, w = _input_dim(input_dim)
    if not isinstance(filter_size, (int, np.integer)) or filter_size < 1 or filter_size % 2 == 0:
        raise ValueError(f"three_layer_convnet: filter_size must be a positive odd int so that padding "
                         f"(filter_size - 1) / 2 keeps the spatial size, got {filter_size!r}")
    if h % 2 or w % 2:
        raise ValueError(f"three_layer_convnet: input height and width must be even for the 2x2 pool, got {h}x{w}")
    s = _seeds(seed, 3)
    return Sequential(
        Conv2d(c, num_filters, filter_size, stride=1, padding=(filter_size - 1) // 2, seed=s[0]),
        ReLU(),
        MaxPool2d(2),
        Flatten(),
        Linear(num_filters * (h // 2) * (w // 2), hidden_dim, seed=s[1]),
        ReLU(),
        Linear(hidden_dim, num_classes, seed=s[2]),
    )
