"""kuangliu/pytorch-cifar's networks of joined branches: GoogLeNet (Inception blocks), DenseNet
(each layer's features joined to its input's) and the Dual Path Networks DPN26 and DPN92 (a
residual sum and a dense join in every block)."""
from __future__ import annotations

import math

from ..layers import (AvgPool2d, BatchNorm2d, Concat, Conv2d, DualPath, Flatten, Identity, Linear, MaxPool2d, ReLU,
                      Sequential)
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


# kuangliu's DenseNet121/169/201/161: dense layers per block and the growth rate.
DENSENET_CFG = {"densenet121": ((6, 12, 24, 16), 32), "densenet169": ((6, 12, 32, 32), 32),
                "densenet201": ((6, 12, 48, 32), 32), "densenet161": ((6, 12, 36, 24), 48)}


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
    return _densenet("densenet121", growth_rate, num_classes, seed, in_channels)


def densenet169(growth_rate=32, num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's ``DenseNet169()``: :func:`densenet121` (its keys too) with 6, 12, 32 and
    32 dense layers. 12,493,322 parameters at growth rate 32. Its recipe, ``RECIPES['densenet169']``,
    is kuangliu's main.py, as resnet18's."""
    return _densenet("densenet169", growth_rate, num_classes, seed, in_channels)


def densenet201(growth_rate=32, num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's ``DenseNet201()``: :func:`densenet121` (its keys too) with 6, 12, 48 and
    32 dense layers. 18,104,330 parameters at growth rate 32. Its recipe, ``RECIPES['densenet201']``,
    is kuangliu's main.py, as resnet18's."""
    return _densenet("densenet201", growth_rate, num_classes, seed, in_channels)


def densenet161(growth_rate=48, num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's ``DenseNet161()``: :func:`densenet121` (its keys too) with 6, 12, 36 and
    24 dense layers at growth rate 48. 26,482,378 parameters. Its recipe, ``RECIPES['densenet161']``,
    is kuangliu's main.py, as resnet18's."""
    return _densenet("densenet161", growth_rate, num_classes, seed, in_channels)


def _densenet(name, growth_rate, num_classes, seed, in_channels):
    # kuangliu's DenseNet(Bottleneck, nblocks, growth_rate): the stem, dense blocks and transitions
    # (reduction 0.5) of ``DENSENET_CFG[name]``'s layer counts. Seeds: conv1, 2 per dense layer, 3
    # transitions, the linear layer.
    if isinstance(growth_rate, bool) or not isinstance(growth_rate, int) or growth_rate < 1:
        raise ValueError(f"{name}: growth_rate must be a positive int ({DENSENET_CFG[name][1]}, his "
                         f"{name.replace('densenet', 'DenseNet')}; 12 at 121 layers, his densenet_cifar), got "
                         f"{growth_rate!r}")
    c = _in_channels(name, in_channels)
    blocks = DENSENET_CFG[name][0]
    seeds = iter(_seeds(seed, 2 + 2 * sum(blocks) + 3))
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


# kuangliu's DPN configs (DPN26(), DPN92()): each stage's bottleneck width (in_planes), residual
# channels (out_planes), blocks and dense channels added per block (dense_depth).
DPN_CFG = {
    "DPN26": dict(in_planes=(96, 192, 384, 768), out_planes=(256, 512, 1024, 2048), num_blocks=(2, 2, 2, 2),
                  dense_depth=(16, 32, 24, 128)),
    "DPN92": dict(in_planes=(96, 192, 384, 768), out_planes=(256, 512, 1024, 2048), num_blocks=(3, 4, 20, 3),
                  dense_depth=(16, 32, 24, 128)),
}


def _dpn_block(last_planes, in_planes, out_planes, dense_depth, stride, first_layer, seeds):
    # kuangliu's DPN Bottleneck: out = bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) with conv2 a
    # 3x3 in 32 groups (the block's stride), conv3 to out_planes + dense_depth; the shortcut a 1x1
    # conv + BN of the stride in a stage's first block, else x; the join relu(cat([x[:, :d] +
    # out[:, :d], x[:, d:], out[:, d:]])) for d = out_planes: a DualPath whose residual path is
    # named at the block's level, as his attributes are. floor=True: stride 2 halves 32x32 as his does.
    path = {
        "conv1": Conv2d(last_planes, in_planes, 1, bias=False, seed=seeds[0]),
        "bn1": BatchNorm2d(in_planes, activation="relu"),
        "conv2": Conv2d(in_planes, in_planes, 3, stride=stride, padding=1, groups=32, bias=False, floor=stride > 1,
                        seed=seeds[1]),
        "bn2": BatchNorm2d(in_planes, activation="relu"),
        "conv3": Conv2d(in_planes, out_planes + dense_depth, 1, bias=False, seed=seeds[2]),
        "bn3": BatchNorm2d(out_planes + dense_depth),
    }
    shortcut = None
    if first_layer:
        shortcut = Sequential(Conv2d(last_planes, out_planes + dense_depth, 1, stride=stride, bias=False,
                                     floor=stride > 1, seed=seeds[3]),
                              BatchNorm2d(out_planes + dense_depth))
    return DualPath(path, shortcut, split=out_planes, activation="relu")


def _dpn(name, cfg, num_classes, seed, in_channels):
    # kuangliu's DPN(cfg): the stem conv3x3(64) - BN - ReLU, four stages (strides 1, 2, 2, 2), avgpool4
    # and a linear layer. Seeds in the order the layers are built: the stem, each block's (conv1,
    # conv2, conv3, shortcut: drawn for every block, used by a stage's first), the linear layer.
    c = _in_channels(name, in_channels)
    seeds = iter(_seeds(seed, 2 + 4 * sum(cfg["num_blocks"])))
    layers = {"conv1": Conv2d(c, 64, 3, padding=1, bias=False, seed=next(seeds)),
              "bn1": BatchNorm2d(64, activation="relu")}
    last_planes = 64
    for k, stride in enumerate((1, 2, 2, 2)):
        out_planes, dense_depth = cfg["out_planes"][k], cfg["dense_depth"][k]
        blocks = []
        for i in range(cfg["num_blocks"][k]):
            blocks.append(_dpn_block(last_planes, cfg["in_planes"][k], out_planes, dense_depth,
                                     stride if i == 0 else 1, i == 0, [next(seeds) for _ in range(4)]))
            last_planes = out_planes + (i + 2) * dense_depth
        layers[f"layer{k + 1}"] = Sequential(*blocks)
    layers.update(pool=AvgPool2d(4), flatten=Flatten(), linear=Linear(last_planes, num_classes, seed=next(seeds)))
    return Sequential(layers)


_DPN_DOC = """kuangliu/pytorch-cifar's CIFAR {his} (Chen et al. 2017, Dual Path Networks): ``conv1``
    conv3x3(64) - ``bn1`` - relu, four stages ``layer1``-``layer4`` of {blocks} blocks (the first of
    stages 2-4 stride 2: 32x32 down to 4x4), avgpool4 and a linear layer from {features} features.
    Stage k's block runs a bottleneck: a 1x1 convolution to ``in_planes`` (96, 192, 384, 768), BN,
    ReLU, a 3x3 in 32 groups, BN, ReLU, a 1x1 to ``out_planes`` + ``dense_depth`` ((256, 512, 1024,
    2048) + (16, 32, 24, 128)) and BN; its shortcut is a 1x1 convolution + BN (the stage's stride)
    in the first block, the input itself after; the first ``out_planes`` channels of both are added
    (the residual path) and the rest of each joined after them (the dense path: every block adds
    ``dense_depth`` channels), then a ReLU: ``DPN_CFG['{his}']`` (his config). ``layerK.B`` is a
    ``DualPath`` whose layers are named as his block's attributes, so every state-dict key is his
    (``layer1.0.conv2.weight``, ``layer1.0.shortcut.0.weight``, ``linear.weight``). Convolutions
    bias-free; the BN ReLUs before the join fused. {params} parameters. Input must be
    ``in_channels`` x 32 x 32 (3: RGB). Its recipe, ``RECIPES['{recipe}']``, is kuangliu's main.py, as
    resnet18's."""


def dpn26(num_classes=10, seed=0, in_channels=3):
    return _dpn("dpn26", DPN_CFG["DPN26"], num_classes, seed, in_channels)


def dpn92(num_classes=10, seed=0, in_channels=3):
    return _dpn("dpn92", DPN_CFG["DPN92"], num_classes, seed, in_channels)


dpn26.__doc__ = _DPN_DOC.format(his="DPN26", blocks="2, 2, 2 and 2", features="2048 + 3 x 128 = 2,432",
                                params="11,574,842", recipe="dpn26")
dpn92.__doc__ = _DPN_DOC.format(his="DPN92", blocks="3, 4, 20 and 3", features="2048 + 4 x 128 = 2,560",
                                params="34,236,634", recipe="dpn92")
