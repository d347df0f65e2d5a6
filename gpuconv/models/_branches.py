"""kuangliu/pytorch-cifar's networks of joined branches: GoogLeNet (Inception blocks) and DenseNet
(each layer's features joined to its input's)."""
from __future__ import annotations

import math

from ..layers import AvgPool2d, BatchNorm2d, Concat, Conv2d, Flatten, Identity, Linear, MaxPool2d, ReLU, Sequential
from ._build import _in_channels, _seeds


def _inception(c_in, n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_planes, seeds):
    # kuangliu's Inception: four branches on the same input joined along the channels, b1 a 1x1,
    # b2 a 1x1 then a 3x3, b3 a 1x1 then two 3x3s (his "5x5"), b4 a 3x3 max pool (stride 1, pad 1)
    # then a 1x1; each convolution with bias - BN - ReLU. The ReLUs are layers of their own, so the
    # branches' indices, hence the state-dict keys (b2.3.weight), are his.
    seeds = iter(seeds)

    def conv_bn_relu(a, b, k):
        return [Conv2d(a, b, k, padding=(k - 1) // 2, seed=next(seeds)), BatchNorm2d(b), ReLU()]

    return Concat({
        "b1": Sequential(*conv_bn_relu(c_in, n1x1, 1)),
        "b2": Sequential(*conv_bn_relu(c_in, n3x3red, 1), *conv_bn_relu(n3x3red, n3x3, 3)),
        "b3": Sequential(*conv_bn_relu(c_in, n5x5red, 1), *conv_bn_relu(n5x5red, n5x5, 3),
                         *conv_bn_relu(n5x5, n5x5, 3)),
        "b4": Sequential(MaxPool2d(3, 1, padding=1), *conv_bn_relu(c_in, pool_planes, 1)),
    })


# kuangliu's GoogLeNet: each Inception block's (in, n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_planes).
GOOGLENET_CFG = {"a3": (192, 64, 96, 128, 16, 32, 32), "b3": (256, 128, 128, 192, 32, 96, 64),
                 "a4": (480, 192, 96, 208, 16, 48, 64), "b4": (512, 160, 112, 224, 24, 64, 64),
                 "c4": (512, 128, 128, 256, 24, 64, 64), "d4": (512, 112, 144, 288, 32, 64, 64),
                 "e4": (528, 256, 160, 320, 32, 128, 128), "a5": (832, 256, 160, 320, 32, 128, 128),
                 "b5": (832, 384, 192, 384, 48, 128, 128)}


def googlenet(num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's CIFAR GoogLeNet (``GoogLeNet()``, Szegedy et al. 2015 with batch norm,
    its "5x5" branches two 3x3 convolutions): ``pre_layers`` conv3x3(192) - BN - ReLU at 32x32;
    Inception blocks ``a3``, ``b3`` (32x32), ``maxpool`` (3x3, stride 2, pad 1: 16x16), ``a4`` ...
    ``e4``, ``maxpool2`` (8x8), ``a5``, ``b5`` (to 1024 channels), ``avgpool`` (8x8, to 1x1) and a
    linear layer from 1024 to ``num_classes``. An Inception block is a ``Concat`` of ``b1`` (1x1),
    ``b2`` (1x1, 3x3), ``b3`` (1x1, 3x3, 3x3) and ``b4`` (3x3 max pool, 1x1), each convolution with
    its bias followed by BN and a ReLU layer; the blocks' channels are ``GOOGLENET_CFG`` (his). The
    state-dict keys are his (``a3.b2.3.weight``, ``pre_layers.1.running_mean``); his one
    ``maxpool``, run twice, is ``maxpool`` and ``maxpool2`` here (neither has parameters).
    6,166,250 parameters. Input must be ``in_channels`` x 32 x 32 (3: RGB). Its recipe,
    ``RECIPES['googlenet']``, is kuangliu's main.py, as resnet18's."""
    c = _in_channels("googlenet", in_channels)
    s = _seeds(seed, 2 + 7 * len(GOOGLENET_CFG))  # pre_layers, 7 convolutions a block, linear
    layers = {"pre_layers": Sequential(Conv2d(c, 192, 3, padding=1, seed=s[0]), BatchNorm2d(192), ReLU())}
    for i, (name, cfg) in enumerate(GOOGLENET_CFG.items()):
        if name == "a4":
            layers["maxpool"] = MaxPool2d(3, 2, padding=1, floor=True)
        elif name == "a5":
            layers["maxpool2"] = MaxPool2d(3, 2, padding=1, floor=True)
        layers[name] = _inception(*cfg, s[1 + 7 * i:8 + 7 * i])
    layers.update(avgpool=AvgPool2d(8, 1), flatten=Flatten(), linear=Linear(1024, num_classes, seed=s[-1]))
    return Sequential(layers)


def _dense_layer(c_in, growth, seeds):
    # kuangliu's Bottleneck: cat([conv3x3(relu(bn2(conv1x1(relu(bn1(x)))))), x]), the new features
    # first: a Concat of ``out`` (bn1 - relu - conv1x1 to 4 growth - bn2 - relu - conv3x3 to growth,
    # bias-free) and the input itself (``x``, an Identity).
    out = Sequential({"bn1": BatchNorm2d(c_in, activation="relu"),
                      "conv1": Conv2d(c_in, 4 * growth, 1, bias=False, seed=seeds[0]),
                      "bn2": BatchNorm2d(4 * growth, activation="relu"),
                      "conv2": Conv2d(4 * growth, growth, 3, padding=1, bias=False, seed=seeds[1])})
    return Concat({"out": out, "x": Identity()})


def densenet121(growth_rate=32, num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's CIFAR DenseNet-121 (``DenseNet121()``, Huang et al. 2017, with
    ``growth_rate`` 32; his ``densenet_cifar()`` is ``growth_rate=12``): ``conv1`` conv3x3(2k) for
    growth rate k; dense blocks ``dense1`` ... ``dense4`` of 6, 12, 24 and 16 layers, each adding k
    channels (bn - relu - conv1x1 to 4k - bn - relu - conv3x3 to k, joined in front of its input);
    between them ``trans1`` ... ``trans3``: bn - relu - conv1x1 to half the channels (floored) - avgpool
    2 (32x32 to 4x4); then ``bn`` - relu, avgpool4 and a linear layer. A dense layer is a ``Concat``
    of ``out`` (bn1, conv1, bn2, conv2) and ``x`` (an Identity): kuangliu's ``dense1.0.conv1.weight`` is
    ``dense1.0.out.conv1.weight`` here, the other keys his. Convolutions bias-free; the BN ReLUs
    fused. 6,956,298 parameters at growth rate 32. Input must be ``in_channels`` x 32 x 32 (3: RGB).
    Its recipe, ``RECIPES['densenet121']``, is kuangliu's main.py, as resnet18's."""
    if isinstance(growth_rate, bool) or not isinstance(growth_rate, int) or growth_rate < 1:
        raise ValueError(f"densenet121: growth_rate must be a positive int (32, his DenseNet121; 12, his "
                         f"densenet_cifar), got {growth_rate!r}")
    c = _in_channels("densenet121", in_channels)
    blocks = (6, 12, 24, 16)
    seeds = iter(_seeds(seed, 2 + 2 * sum(blocks) + 3))  # conv1, 2 per dense layer, 3 transitions, linear
    planes = 2 * growth_rate
    layers = {"conv1": Conv2d(c, planes, 3, padding=1, bias=False, seed=next(seeds))}
    for i, n in enumerate(blocks, start=1):
        dense = []
        for _ in range(n):
            dense.append(_dense_layer(planes, growth_rate, [next(seeds), next(seeds)]))
            planes += growth_rate
        layers[f"dense{i}"] = Sequential(*dense)
        if i < len(blocks):
            out = int(math.floor(planes * 0.5))
            layers[f"trans{i}"] = Sequential({"bn": BatchNorm2d(planes, activation="relu"),
                                              "conv": Conv2d(planes, out, 1, bias=False, seed=next(seeds)),
                                              "pool": AvgPool2d(2)})
            planes = out
    layers.update(bn=BatchNorm2d(planes, activation="relu"), pool=AvgPool2d(4), flatten=Flatten(),
                  linear=Linear(planes, num_classes, seed=next(seeds)))
    return Sequential(layers)
