"""fast_net: the ResNet-9 of Myrtle.ai's DAWNBench entry ("How to train your ResNet")."""
from __future__ import annotations

import numpy as np

from ..layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, Residual, Scale, Sequential
from ._build import _in_channels, _seeds


def _conv_bn(c_in, c_out, seed, pool=False):
    # conv -> [pool] -> bn -> relu. Pooling before the batch norm (as airbench and the later
    # Myrtle.ai versions do) runs BN and ReLU on a quarter of the pixels; max pool commutes
    # with the monotone ReLU, and BN after the pool normalizes what the next conv sees. The ReLU
    # is the batch norm's fused activation (the same bits as a ReLU layer, one pass fewer).
    layers = {"conv": Conv2d(c_in, c_out, 3, padding=1, bias=False, seed=seed)}
    if pool:
        layers["pool"] = MaxPool2d(2)
    layers["bn"] = BatchNorm2d(c_out, activation="relu")
    return Sequential(layers)


def fast_net(width=64, num_classes=10, seed=0, output_scale=0.125, in_channels=3):
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
    ``width=8``. Input must be ``in_channels`` x 32 x 32 (3: RGB). A recipe that reaches about 94% in ~24 epochs:
    batch 512, SGD(momentum 0.9, Nesterov, weight_decay 5e-4), one-cycle lr peaking near 0.4,
    label smoothing 0.2, random crop (pad 4) and flip."""
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"fast_net: width must be a positive int (64 for the published net), got {width!r}")
    w = int(width)
    s = _seeds(seed, 9)
    layers = {
        "prep": _conv_bn(_in_channels("fast_net", in_channels), w, s[0]),
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
