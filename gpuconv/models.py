"""Reference networks for 32x32 RGB images (CIFAR-10), all built as ``Sequential`` layers.

- ``seed_net``: the smallest convnet of the CS231n notes, INPUT-CONV-RELU-POOL-FC.
- ``three_layer_convnet``: CS231n assignment 2's conv - relu - 2x2 max pool - affine - relu - affine.
- ``fast_net``: a ResNet-9 in the style of "How to train your ResNet" (Myrtle.ai) and airbench,
  the architecture that reaches 94% on CIFAR-10 in a few epochs.

Every model takes a ``seed``: the per-layer seeds derive from it (``numpy.random.SeedSequence``),
so a seed gives bit-identical initial weights on every device.
"""
from __future__ import annotations

import numpy as np

from .layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Residual, Scale, Sequential

__all__ = ["seed_net", "three_layer_convnet", "fast_net"]


def _seeds(seed, n):
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n)]


def _input_dim(input_dim):
    if len(input_dim) != 3 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in input_dim):
        raise ValueError(f"input_dim must be (channels, height, width) of positive ints, got {input_dim!r}")
    return tuple(int(v) for v in input_dim)


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
    16x16x32 -> 100 -> 10, about 824k parameters (8192 x 100 in the first affine layer).
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


def _conv_bn(c_in, c_out, seed, pool=False):
    # conv -> [pool] -> bn -> relu. Pooling before the batch norm (as airbench and the later
    # Myrtle.ai versions do) runs BN and ReLU on a quarter of the pixels; max pool commutes
    # with the monotone ReLU, and BN after the pool normalizes what the next conv sees.
    layers = {"conv": Conv2d(c_in, c_out, 3, padding=1, bias=False, seed=seed)}
    if pool:
        layers["pool"] = MaxPool2d(2)
    layers["bn"] = BatchNorm2d(c_out)
    layers["relu"] = ReLU()
    return Sequential(layers)


def fast_net(width=64, num_classes=10, seed=0, output_scale=0.125):
    """ResNet-9 (Myrtle.ai's DAWNBench net, "How to train your ResNet") with ``width`` = w:

    ====================  =====================================================  ============
    name                  layers                                                 output
    ====================  =====================================================  ============
    prep                  conv3x3(w) - bn - relu                                 w x 32 x 32
    layer1                conv3x3(2w) - maxpool2 - bn - relu                     2w x 16 x 16
    layer1_res            Residual(2 x [conv3x3(2w) - bn - relu])                2w x 16 x 16
    layer2                conv3x3(4w) - maxpool2 - bn - relu                     4w x 8 x 8
    layer3                conv3x3(8w) - maxpool2 - bn - relu                     8w x 4 x 4
    layer3_res            Residual(2 x [conv3x3(8w) - bn - relu])                8w x 4 x 4
    pool, flatten         maxpool4 (global max pool over the 4x4 map)            8w
    fc, scale             linear(8w -> num_classes, no bias), times output_scale  num_classes
    ====================  =====================================================  ============

    Convolutions are 3x3, stride 1, pad 1 and bias-free (the batch norm that follows has the
    shift). ``output_scale`` (0.125 as in ResNet-9; None for none) keeps the logits small
    early in training. ``width=64`` is the published net (6.5M parameters); tests use
    ``width=8``. Input must be 3 x 32 x 32. A recipe that reaches about 94% in ~24 epochs:
    batch 512, SGD(momentum 0.9, Nesterov, weight_decay 5e-4), one-cycle lr peaking near 0.4,
    label smoothing 0.2, random crop (pad 4) and flip."""
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"fast_net: width must be a positive int (64 for the published net), got {width!r}")
    w = int(width)
    s = _seeds(seed, 9)
    layers = {
        "prep": _conv_bn(3, w, s[0]),
        "layer1": _conv_bn(w, 2 * w, s[1], pool=True),
        "layer1_res": Residual(Sequential(_conv_bn(2 * w, 2 * w, s[2]), _conv_bn(2 * w, 2 * w, s[3]))),
        "layer2": _conv_bn(2 * w, 4 * w, s[4], pool=True),
        "layer3": _conv_bn(4 * w, 8 * w, s[5], pool=True),
        "layer3_res": Residual(Sequential(_conv_bn(8 * w, 8 * w, s[6]), _conv_bn(8 * w, 8 * w, s[7]))),
        "pool": MaxPool2d(4),
        "flatten": Flatten(),
        "fc": Linear(8 * w, num_classes, bias=False, seed=s[8]),
    }
    if output_scale is not None:
        layers["scale"] = Scale(output_scale)
    return Sequential(layers)


def from_config(config):
    """The model a checkpoint's ``meta/config`` describes: ``config['constructor']`` (a function of
    this module) called with ``config['kwargs']``, as ``gpuconv train`` records them."""
    name = config.get("constructor")
    fn = globals().get(name) if isinstance(name, str) and not name.startswith("_") else None
    if not callable(fn):
        raise ValueError(f"model config names constructor {name!r}, which gpuconv.models does not have: "
                         "the checkpoint comes from another gpuconv version or was edited")
    return fn(**config.get("kwargs", {}))

