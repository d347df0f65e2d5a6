"""kuangliu/pytorch-cifar's residual networks: ResNet-18/34/50/101/152, SENet-18,
PreActResNet-18/34/50/101/152, ResNeXt29, RegNet, SimpleDLA and DLA (whose trees are ResNet blocks)."""
from __future__ import annotations

import numpy as np

from ..layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Concat, Conv2d, Flatten, Identity, Linear, ReLU,
                      Residual, Sequential, SqueezeExcitation)
from ._build import _in_channels, _seeds


def _basic_block(c_in, c_out, stride, seeds, squeeze_excitation=False):
    # BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)). bn1's ReLU is its fused
    # activation (the same bits as a ReLU layer); bn2's is not fused: the ReLU comes after the sum.
    # The shortcut is a 1x1 conv + BN projection where the block changes the shape, else the identity.
    # floor=True: a stride-2 conv takes 32x32 to 16x16 as PyTorch's does. ``squeeze_excitation``
    # (SENet's block) gates bn2's output by channel before the sum: c_out -> c_out // 16 -> c_out,
    # seeded by the last of ``seeds`` (conv1, conv2, [the projection], [the gate]).
    inner = {
        "conv1": Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, floor=stride > 1, seed=seeds[0]),
        "bn1": BatchNorm2d(c_out, activation="relu"),
        "conv2": Conv2d(c_out, c_out, 3, padding=1, bias=False, seed=seeds[1]),
        "bn2": BatchNorm2d(c_out),
    }
    if squeeze_excitation:
        inner["se"] = SqueezeExcitation(c_out, c_out // 16, seed=seeds[-1])
    return _post_activation(inner, c_in, c_out, stride, seeds[2:3])


def _post_activation(inner, c_in, c_out, stride, projection_seeds):
    # A ResNet block's sum and ReLU: relu(inner(x) + shortcut(x)), ``inner`` a dict of its layers,
    # the shortcut a bias-free 1x1 conv (seeded by ``projection_seeds[0]``, there only for a block
    # that projects; floor=True) + BN where the block changes the shape, else the identity: the
    # Sequential ``res`` (a Residual), ``relu``.
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = Sequential(Conv2d(c_in, c_out, 1, stride=stride, bias=False, floor=stride > 1,
                                     seed=projection_seeds[0]), BatchNorm2d(c_out))
    return Sequential({"res": Residual(Sequential(inner), shortcut=shortcut), "relu": ReLU()})


def _bottleneck_block(c_in, planes, stride, seeds, groups=1, expansion=4):
    # kuangliu's Bottleneck: relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))) + shortcut(x)):
    # conv1 1x1 c_in -> planes, conv2 3x3 (the block's stride, in ``groups`` groups: ResNeXt's)
    # planes -> planes, conv3 1x1 planes -> ``expansion`` planes, all bias-free; the shortcut as
    # :func:`_post_activation`'s. Seeds: conv1, conv2, conv3, [the projection].
    c_out = expansion * planes
    inner = {
        "conv1": Conv2d(c_in, planes, 1, bias=False, seed=seeds[0]),
        "bn1": BatchNorm2d(planes, activation="relu"),
        "conv2": Conv2d(planes, planes, 3, stride=stride, padding=1, groups=groups, bias=False, floor=stride > 1,
                        seed=seeds[1]),
        "bn2": BatchNorm2d(planes, activation="relu"),
        "conv3": Conv2d(planes, c_out, 1, bias=False, seed=seeds[2]),
        "bn3": BatchNorm2d(c_out),
    }
    return _post_activation(inner, c_in, c_out, stride, seeds[3:4])


# kuangliu's ResNet and PreActResNet depths: (blocks per stage, bottleneck blocks).
_RESNET_DEPTHS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
                  101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}


def _check_width(name, width):
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"{name}: width must be a positive int (64 for the published net), got {width!r}")
    return int(width)


def _kuangliu_resnet(name, w, num_classes, seed, in_channels, squeeze_excitation=False, depth=18, preact=False):
    # kuangliu's ResNet(block, num_blocks) and PreActResNet(block, num_blocks) trunks: a 3x3 stem
    # (with BN and ReLU unless pre-activation), four stages of planes w, 2w, 4w, 8w (a block's
    # output 4x that where it is a bottleneck), the first block of stages 2-4 stride 2, avgpool4 and
    # a linear head. SENet18 is ResNet18 with gated blocks. Seeds in the order the layers are
    # built: the stem, each block's convolutions ([projection], [gate] after them), the linear
    # layer.
    num_blocks, bottleneck = _RESNET_DEPTHS[depth]
    expansion = 4 if bottleneck else 1
    convs = 3 if bottleneck else 2
    plan, c_in = [], w
    for stage, planes in enumerate((w, 2 * w, 4 * w, 8 * w), start=1):
        for b in range(num_blocks[stage - 1]):
            stride = 2 if stage > 1 and b == 0 else 1
            projects = stride != 1 or c_in != expansion * planes
            plan.append((stage, c_in, planes, stride, convs + projects + squeeze_excitation))
            c_in = expansion * planes
    s = _seeds(seed, 1 + sum(p[-1] for p in plan) + 1)
    layers = {"conv1": Conv2d(_in_channels(name, in_channels), w, 3, padding=1, bias=False, seed=s[0])}
    if not preact:
        layers["bn1"] = BatchNorm2d(w, activation="relu")
    stages, k = {}, 1
    for stage, c_in, planes, stride, n in plan:
        if preact:
            block = (_preact_bottleneck if bottleneck else _preact_block)(c_in, planes, stride, s[k:k + n])
        elif bottleneck:
            block = _bottleneck_block(c_in, planes, stride, s[k:k + n])
        else:
            block = _basic_block(c_in, planes, stride, s[k:k + n], squeeze_excitation)
        stages.setdefault(stage, []).append(block)
        k += n
    layers.update({f"layer{stage}": Sequential(*blocks) for stage, blocks in stages.items()})
    layers.update(pool=AvgPool2d(4), flatten=Flatten(), linear=Linear(c_in, num_classes, seed=s[k]))
    assert k + 1 == len(s)
    return Sequential(layers)


def resnet18(width=64, num_classes=10, seed=0, in_channels=3):
    """The CIFAR ResNet-18 of kuangliu/pytorch-cifar (``ResNet18()``), with ``width`` = w:

    ==============  ========================================================  ============
    name            layers                                                    output
    ==============  ========================================================  ============
    conv1, bn1      conv3x3(w) - bn - relu                                    w x 32 x 32
    layer1          2 BasicBlocks(w)                                          w x 32 x 32
    layer2          2 BasicBlocks(2w), the first stride 2 with a projection   2w x 16 x 16
    layer3          2 BasicBlocks(4w), the first stride 2 with a projection   4w x 8 x 8
    layer4          2 BasicBlocks(8w), the first stride 2 with a projection   8w x 4 x 4
    pool, flatten   avgpool4 (global average pool over the 4x4 map)           8w
    linear          linear(8w -> num_classes, with bias)                      num_classes
    ==============  ========================================================  ============

    A BasicBlock is ``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``: convolutions 3x3,
    pad 1, bias-free; the shortcut the identity, or a bias-free 1x1 conv (stride 2) + BN where the
    block halves the size and doubles the channels. ``layerK.B`` is block B of stage K: a
    ``Sequential`` of ``res`` (a ``Residual``, its ``inner`` conv1, bn1, conv2, bn2 and its
    ``shortcut``) and ``relu``; kuangliu's ``layerK.B.conv1.weight`` is ``layerK.B.res.inner.conv1.weight``
    here and ``layerK.B.shortcut.0.weight`` is ``layerK.B.res.shortcut.0.weight``, the other keys
    the same. ``width=64`` is the published net (11,173,962 parameters); tests use ``width=4``.
    Input must be ``in_channels`` x 32 x 32 (3: RGB). Its recipe, ``RECIPES['resnet18']``
    (kuangliu's): SGD (momentum 0.9, weight decay 5e-4) at lr 0.1 with cosine annealing over 200
    epochs, batch 128, random crop (pad 4) and flip (about 95% on CIFAR-10)."""
    return _kuangliu_resnet("resnet18", _check_width("resnet18", width), num_classes, seed, in_channels)


def senet18(num_classes=10, seed=0, in_channels=3):
    """The CIFAR SENet-18 of kuangliu/pytorch-cifar (``SENet18()``, Hu et al.'s squeeze-and-excitation
    on ResNet-18): :func:`resnet18`'s layout at width 64, each BasicBlock gating its residual branch
    by channel before the sum:

    ==============  ========================================================  ============
    name            layers                                                    output
    ==============  ========================================================  ============
    conv1, bn1      conv3x3(64) - bn - relu                                   64 x 32 x 32
    layer1          2 SE blocks(64)                                           64 x 32 x 32
    layer2          2 SE blocks(128), the first stride 2 with a projection    128 x 16 x 16
    layer3          2 SE blocks(256), the first stride 2 with a projection    256 x 8 x 8
    layer4          2 SE blocks(512), the first stride 2 with a projection    512 x 4 x 4
    pool, flatten   avgpool4 (global average pool over the 4x4 map)           512
    linear          linear(512 -> num_classes, with bias)                     num_classes
    ==============  ========================================================  ============

    An SE BasicBlock of c channels is ``relu(se(bn(conv3x3(relu(bn(conv3x3(x)))))) + shortcut(x))``
    with ``se(y) = y * sigmoid(fc2(relu(fc1(avgpool(y)))))``: ``SqueezeExcitation(c, c // 16)``,
    fc1 and fc2 1x1 convolutions with bias (kuangliu's ``fc1``/``fc2``), the average over the whole
    map. ``layerK.B`` is a ``Sequential`` of ``res`` (a ``Residual``: its ``inner`` conv1, bn1,
    conv2, bn2 and ``se``, its ``shortcut``) and ``relu``; kuangliu's keys map as resnet18's, the
    gate's one level down: his ``layerK.B.fc1.weight`` is ``layerK.B.res.inner.se.fc1.weight`` here,
    ``layerK.B.conv1.weight`` is ``layerK.B.res.inner.conv1.weight`` and ``layerK.B.shortcut.0.weight``
    is ``layerK.B.res.shortcut.0.weight``, the other keys the same. 11,263,042 parameters; there is no
    width argument (kuangliu's net has none). Input must be ``in_channels`` x 32 x 32 (3: RGB). Its
    recipe, ``RECIPES['senet18']``, is kuangliu's main.py, as resnet18's: SGD (momentum 0.9, weight
    decay 5e-4) at lr 0.1 with cosine annealing over 200 epochs, batch 128, random crop (pad 4) and
    flip."""
    return _kuangliu_resnet("senet18", 64, num_classes, seed, in_channels, squeeze_excitation=True)


def _preact_block(c_in, c_out, stride, seeds):
    # kuangliu's PreActBlock: o = relu(bn1(x)); conv2(relu(bn2(conv1(o)))) + shortcut, the shortcut
    # x itself, or a bias-free 1x1 conv (the block's stride) of o where the shape changes: the
    # identity block is a Residual over bn1 ... conv2; the projecting one bn1 then a Residual whose
    # shortcut convolves bn1's output. floor=True: a stride-2 conv halves 32x32 as PyTorch's does.
    # Seeds: conv1, conv2, [the projection].
    tail = {"conv1": Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, floor=stride > 1, seed=seeds[0]),
            "bn2": BatchNorm2d(c_out, activation="relu"),
            "conv2": Conv2d(c_out, c_out, 3, padding=1, bias=False, seed=seeds[1])}
    return _preact(c_in, c_out, stride, tail, seeds[-1])


def _preact_bottleneck(c_in, planes, stride, seeds):
    # kuangliu's PreActBottleneck: o = relu(bn1(x)); conv3(relu(bn3(conv2(relu(bn2(conv1(o))))))) +
    # shortcut: conv1 1x1 c_in -> planes, conv2 3x3 (the block's stride), conv3 1x1 planes -> 4 planes;
    # the shortcut as a PreActBlock's. Seeds: conv1, conv2, conv3, [the projection].
    c_out = 4 * planes
    tail = {"conv1": Conv2d(c_in, planes, 1, bias=False, seed=seeds[0]),
            "bn2": BatchNorm2d(planes, activation="relu"),
            "conv2": Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False, floor=stride > 1, seed=seeds[1]),
            "bn3": BatchNorm2d(planes, activation="relu"),
            "conv3": Conv2d(planes, c_out, 1, bias=False, seed=seeds[2])}
    return _preact(c_in, c_out, stride, tail, seeds[-1])


def _preact(c_in, c_out, stride, tail, projection_seed):
    # A pre-activation block of bn1 and then ``tail``: a Residual over all of it where the shape
    # stays, else bn1 and a Residual whose shortcut is a 1x1 conv of bn1's output.
    if stride == 1 and c_in == c_out:
        return Residual(Sequential({"bn1": BatchNorm2d(c_in, activation="relu"), **tail}))
    shortcut = Sequential(Conv2d(c_in, c_out, 1, stride=stride, bias=False, floor=stride > 1, seed=projection_seed))
    return Sequential({"bn1": BatchNorm2d(c_in, activation="relu"), "res": Residual(Sequential(tail), shortcut)})


def preact_resnet18(width=64, num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's PreActResNet18 (He et al. 2016, "Identity Mappings in Deep Residual
    Networks"): ``conv1`` conv3x3(64) (no BN after it), four stages ``layer1``-``layer4`` of two
    pre-activation blocks (64, 128, 256, 512 channels; the first block of stages 2-4 stride 2 with a
    1x1 projection), then avgpool4 and a linear head, with no BN or ReLU between the last block and
    the pool (as his). A block is ``x + conv3x3(relu(bn(conv3x3(relu(bn(x))))))``; a projecting
    block adds a 1x1 convolution of ``relu(bn1(x))`` instead of x. An identity block is a
    ``Residual`` (its ``inner``: bn1, conv1, bn2, conv2), a projecting one the ``Sequential`` bn1,
    ``res`` (a ``Residual``: its ``inner`` conv1, bn2, conv2 and its ``shortcut``): kuangliu's
    ``layer1.0.conv1.weight`` is ``layer1.0.inner.conv1.weight`` here, ``layer2.0.conv1.weight``
    ``layer2.0.res.inner.conv1.weight`` and ``layer2.0.shortcut.0.weight``
    ``layer2.0.res.shortcut.0.weight``, the other keys the same. Convolutions are bias-free; the BN
    ReLUs fused. ``width`` scales the stages (w, 2w, 4w, 8w planes); ``width=64`` is his net
    (11,171,146 parameters). Input must be ``in_channels`` x 32 x 32 (3: RGB). Its recipe, ``RECIPES['preact_resnet18']``, is
    kuangliu's main.py, as resnet18's."""
    return _kuangliu_resnet("preact_resnet18", _check_width("preact_resnet18", width), num_classes, seed,
                            in_channels, preact=True)


def resnet34(width=64, num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's ``ResNet34()``: :func:`resnet18` (its stem, head and state dict keys)
    with 3, 4, 6 and 3 BasicBlocks in ``layer1``-``layer4``. ``width=64`` is his net (21,282,122
    parameters). Its recipe, ``RECIPES['resnet34']``, is kuangliu's main.py, as resnet18's."""
    return _kuangliu_resnet("resnet34", _check_width("resnet34", width), num_classes, seed, in_channels, depth=34)


def resnet50(width=64, num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's ``ResNet50()``: :func:`resnet18`'s stem and head with 3, 4, 6 and 3
    Bottleneck blocks in ``layer1``-``layer4`` (planes w, 2w, 4w, 8w; the first block of stages 2-4
    stride 2). A Bottleneck of planes p is
    ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))``: conv1 1x1 to p, conv2
    3x3 at the block's stride, conv3 1x1 to 4p, all bias-free; the shortcut the identity, or a 1x1
    conv + BN projection where the shape changes (the first block of every stage: the stages give 4w,
    8w, 16w and 32w channels, the head takes 32w). Keys as resnet18's: his
    ``layer1.0.conv3.weight`` is ``layer1.0.res.inner.conv3.weight`` here, ``layer1.0.shortcut.0.weight``
    ``layer1.0.res.shortcut.0.weight``. ``width=64`` is his net (23,520,842 parameters). Input must be
    ``in_channels`` x 32 x 32 (3: RGB). Its recipe, ``RECIPES['resnet50']``, is kuangliu's main.py, as
    resnet18's."""
    return _kuangliu_resnet("resnet50", _check_width("resnet50", width), num_classes, seed, in_channels, depth=50)


def resnet101(width=64, num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's ``ResNet101()``: :func:`resnet50` with 3, 4, 23 and 3 Bottleneck blocks.
    ``width=64`` is his net (42,512,970 parameters). Its recipe, ``RECIPES['resnet101']``, is
    kuangliu's main.py, as resnet18's."""
    return _kuangliu_resnet("resnet101", _check_width("resnet101", width), num_classes, seed, in_channels, depth=101)


def resnet152(width=64, num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's ``ResNet152()``: :func:`resnet50` with 3, 8, 36 and 3 Bottleneck blocks.
    ``width=64`` is his net (58,156,618 parameters). Its recipe, ``RECIPES['resnet152']``, is
    kuangliu's main.py, as resnet18's."""
    return _kuangliu_resnet("resnet152", _check_width("resnet152", width), num_classes, seed, in_channels, depth=152)


def preact_resnet34(width=64, num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's ``PreActResNet34()``: :func:`preact_resnet18` (its stem, head and state
    dict keys) with 3, 4, 6 and 3 pre-activation blocks in ``layer1``-``layer4``. ``width=64`` is his
    net (21,279,306 parameters). Its recipe, ``RECIPES['preact_resnet34']``, is kuangliu's main.py, as
    resnet18's."""
    return _kuangliu_resnet("preact_resnet34", _check_width("preact_resnet34", width), num_classes, seed,
                            in_channels, depth=34, preact=True)


def preact_resnet50(width=64, num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's ``PreActResNet50()``: :func:`preact_resnet18`'s stem and head with 3, 4,
    6 and 3 PreActBottleneck blocks in ``layer1``-``layer4`` (planes w, 2w, 4w, 8w; the first block of
    stages 2-4 stride 2). A block of planes p is
    ``conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(x))))))))) + shortcut``: conv1 1x1 to p, conv2 3x3
    at the block's stride, conv3 1x1 to 4p, all bias-free; the shortcut x, or a 1x1 conv of
    ``relu(bn1(x))`` where the shape changes (the first block of every stage: the stages give 4w, 8w,
    16w and 32w channels, the head takes 32w). Keys as preact_resnet18's: an identity block's
    ``inner`` holds bn1, conv1, bn2, conv2, bn3, conv3; a projecting block is bn1 and ``res`` (its
    ``inner`` conv1 ... conv3, its ``shortcut``). ``width=64`` is his net (23,509,066 parameters).
    Input must be ``in_channels`` x 32 x 32 (3: RGB). Its recipe, ``RECIPES['preact_resnet50']``, is
    kuangliu's main.py, as resnet18's."""
    return _kuangliu_resnet("preact_resnet50", _check_width("preact_resnet50", width), num_classes, seed,
                            in_channels, depth=50, preact=True)


def preact_resnet101(width=64, num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's ``PreActResNet101()``: :func:`preact_resnet50` with 3, 4, 23 and 3
    blocks. ``width=64`` is his net (42,501,194 parameters). Its recipe,
    ``RECIPES['preact_resnet101']``, is kuangliu's main.py, as resnet18's."""
    return _kuangliu_resnet("preact_resnet101", _check_width("preact_resnet101", width), num_classes, seed,
                            in_channels, depth=101, preact=True)


def preact_resnet152(width=64, num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's ``PreActResNet152()``: :func:`preact_resnet50` with 3, 8, 36 and 3
    blocks. ``width=64`` is his net (58,144,842 parameters). Its recipe,
    ``RECIPES['preact_resnet152']``, is kuangliu's main.py, as resnet18's."""
    return _kuangliu_resnet("preact_resnet152", _check_width("preact_resnet152", width), num_classes, seed,
                            in_channels, depth=152, preact=True)


def _resnext_block(c_in, group_width, cardinality, stride, seeds):
    # kuangliu's ResNeXt Block: a Bottleneck whose 3x3 is in ``cardinality`` groups (the block's
    # stride) and whose conv3 goes to twice the group width.
    return _bottleneck_block(c_in, group_width, stride, seeds, groups=cardinality, expansion=2)


def resnext29(cardinality=2, bottleneck_width=64, num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's CIFAR ResNeXt29 (``ResNeXt29_2x64d()``; Xie et al. 2017), ``cardinality``
    x ``bottleneck_width`` (his 2x64d, 4x64d, 8x64d and 32x4d are (2, 64), (4, 64), (8, 64), (32, 4)):
    ``conv1`` conv1x1(64) - ``bn1`` - relu, three stages ``layer1``-``layer3`` of three blocks whose
    group width is cardinality x width, the width doubling each stage (the first block of stages 2
    and 3 stride 2), then avgpool8 and a linear layer from 8 x cardinality x width. A block is
    ``relu(bn(conv1x1(relu(bn(grouped conv3x3(relu(bn(conv1x1(x)))))))) + shortcut(x))``, out to
    twice its group width, its shortcut the identity or a 1x1 conv + BN where the shape changes:
    ``layerK.B`` the ``Sequential`` ``res`` (a ``Residual``: its ``inner`` conv1 ... bn3 and its
    ``shortcut``) and ``relu``, kuangliu's keys mapped as resnet18's (``layer1.0.conv2.weight`` is
    ``layer1.0.res.inner.conv2.weight``). Convolutions bias-free. 9,128,778 parameters at 2x64d.
    Input must be ``in_channels`` x 32 x 32 (3: RGB). Its recipe, ``RECIPES['resnext29']``, is
    kuangliu's main.py, as resnet18's."""
    for name, value in (("cardinality", cardinality), ("bottleneck_width", bottleneck_width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"resnext29: {name} must be a positive int (his 2x64d: cardinality 2, bottleneck_width "
                             f"64), got {value!r}")
    c = _in_channels("resnext29", in_channels)
    s = _seeds(seed, 1 + 9 * 3 + 3 + 1)  # stem, each block's 3 convs, the 3 projections, linear
    layers = {"conv1": Conv2d(c, 64, 1, bias=False, seed=s[0]), "bn1": BatchNorm2d(64, activation="relu")}
    c_in, width, k = 64, int(bottleneck_width), 1
    for stage in (1, 2, 3):
        blocks = []
        for b in range(3):
            stride = 2 if stage > 1 and b == 0 else 1
            group_width = cardinality * width
            n = 3 + (stride != 1 or c_in != 2 * group_width)
            blocks.append(_resnext_block(c_in, group_width, int(cardinality), stride, s[k:k + n]))
            k, c_in = k + n, 2 * group_width
        layers[f"layer{stage}"] = Sequential(*blocks)
        width *= 2
    layers.update(pool=AvgPool2d(8), flatten=Flatten(), linear=Linear(c_in, num_classes, seed=s[k]))
    return Sequential(layers)


def _dla_tree(c_in, c_out, level, stride, seeds):
    # kuangliu's Tree: out1 = left_tree(x), out2 = right_tree(out1), root(cat([out1, out2])) with
    # root conv1x1(2 c_out -> c_out) - bn - relu; a level-1 tree's subtrees are BasicBlocks (the
    # left one with the tree's stride), a deeper one's are trees a level lower. ``seeds`` is an
    # iterator, drawn in the order kuangliu builds the convolutions: root, left, right.
    root = Sequential({"conv": Conv2d(2 * c_out, c_out, 1, bias=False, seed=next(seeds)),
                       "bn": BatchNorm2d(c_out, activation="relu")})
    if level == 1:
        def block(a, b, s):
            return _basic_block(a, b, s, [next(seeds) for _ in range(2 + (s != 1 or a != b))])
    else:
        def block(a, b, s):
            return _dla_tree(a, b, level - 1, s, seeds)
    left = block(c_in, c_out, stride)
    right = block(c_out, c_out, 1)
    return Sequential({"left_tree": left, "join": Concat({"out1": Identity(), "right_tree": right}), "root": root})


def simpledla(num_classes=10, seed=0, in_channels=3):
    """The simplified Deep Layer Aggregation of kuangliu/pytorch-cifar (``SimpleDLA()``, after Yu et
    al. 2018; the network his main.py trains):

    ==============  ========================================================  ============
    name            layers                                                    output
    ==============  ========================================================  ============
    base            conv3x3(16) - bn - relu                                   16 x 32 x 32
    layer1          conv3x3(16) - bn - relu                                   16 x 32 x 32
    layer2          conv3x3(32) - bn - relu                                   32 x 32 x 32
    layer3          a tree of level 1 (64)                                    64 x 32 x 32
    layer4          a tree of level 2 (128), stride 2                         128 x 16 x 16
    layer5          a tree of level 2 (256), stride 2                         256 x 8 x 8
    layer6          a tree of level 1 (512), stride 2                         512 x 4 x 4
    pool, flatten   avgpool4 (global average pool over the 4x4 map)           512
    linear          linear(512 -> num_classes, with bias)                     num_classes
    ==============  ========================================================  ============

    A tree of c channels runs its left subtree on x (with the tree's stride), its right subtree on
    that output, and joins both outputs in its root: conv1x1(2c -> c) - bn - relu. The subtrees of
    a level-1 tree are :func:`resnet18`'s BasicBlocks (a 1x1 conv + BN projection where the shape
    changes), those of a level-2 tree level-1 trees. A tree is the ``Sequential`` ``left_tree``,
    ``join`` (a ``Concat`` of ``out1``, an ``Identity``, and ``right_tree``) and ``root``; kuangliu's
    ``layer4.left_tree.right_tree.conv1.weight`` is ``layer4.left_tree.join.right_tree.res.inner.conv1.weight``
    here (his trees' ``right_tree`` one level down, in ``join``; the blocks' keys as resnet18's),
    ``base.0.weight``, ``layer1.1.running_mean`` and the roots' ``layer3.root.conv.weight`` the same.
    Convolutions are bias-free. 15,142,970 parameters; no width argument (kuangliu's net has none).
    Input must be ``in_channels`` x 32 x 32 (3: RGB). Its recipe, ``RECIPES['simpledla']``, is
    kuangliu's main.py, as resnet18's: SGD (momentum 0.9, weight decay 5e-4) at lr 0.1 with cosine
    annealing over 200 epochs, batch 128, random crop (pad 4) and flip."""
    return _dla_net("simpledla", _dla_tree, 40, num_classes, seed, in_channels)  # 39 convolutions, the linear


def _dla_net(name, tree, n_seeds, num_classes, seed, in_channels):
    # kuangliu's DLA and SimpleDLA around their trees (``tree(c_in, c_out, level, stride, seeds)``):
    # three conv3x3 - bn - relu stages (16, 16, 32), trees of levels 1, 2, 2, 1 (64, 128, 256, 512; the
    # last three stride 2), avgpool4 and a linear head. ``n_seeds``: the convolutions and the linear
    # layer, drawn in the order they are built.
    c = _in_channels(name, in_channels)
    seeds = iter(_seeds(seed, n_seeds))

    def conv_bn(a, b):
        return Sequential(Conv2d(a, b, 3, padding=1, bias=False, seed=next(seeds)), BatchNorm2d(b, activation="relu"))

    layers = {"base": conv_bn(c, 16), "layer1": conv_bn(16, 16), "layer2": conv_bn(16, 32)}
    for stage, (a, b, level, stride) in zip(("layer3", "layer4", "layer5", "layer6"),
                                            ((32, 64, 1, 1), (64, 128, 2, 2), (128, 256, 2, 2), (256, 512, 1, 2))):
        layers[stage] = tree(a, b, level, stride, seeds)
    layers.update(pool=AvgPool2d(4), flatten=Flatten(), linear=Linear(512, num_classes, seed=next(seeds)))
    return Sequential(layers)


def _tapped(nodes):
    # ``nodes`` ((name, layer), ...) run one after another, every one's output kept: the outputs joined
    # along the channels, first to last. A Sequential of the first node and a ``join``: a Concat of
    # ``out`` (its output as it is) and the rest of the chain run on it (the last node itself, or
    # ``rest``, the same again).
    (name, first), *rest = nodes
    tail = rest[0] if len(rest) == 1 else ("rest", _tapped(rest))
    return Sequential({name: first, "join": Concat({"out": Identity(), tail[0]: tail[1]})})


def _dla_full_tree(c_in, c_out, level, stride, seeds):
    # kuangliu's dla.py Tree: at level 1, root(cat([l, r])) with l = left_node(x) (the tree's stride)
    # and r = right_node(l); at level 2, root(cat([prev_root(x), t, l, r])) with t = level_1(x) (a
    # level-1 tree, the tree's stride), l = left_node(t) and r = right_node(l). The nodes are
    # BasicBlocks, the root conv1x1 - bn - relu. ``seeds`` is an iterator, drawn in the order his
    # Tree builds the convolutions: root, the level-1 subtree, prev_root, left_node, right_node.
    if level not in (1, 2):
        raise ValueError(f"dla: a tree's level is 1 or 2 (his DLA's), got {level!r}")
    root = Sequential({"conv": Conv2d((2 if level == 1 else level + 2) * c_out, c_out, 1, bias=False,
                                      seed=next(seeds)),
                       "bn": BatchNorm2d(c_out, activation="relu")})

    def node(a, s):
        return _basic_block(a, c_out, s, [next(seeds) for _ in range(2 + (s != 1 or a != c_out))])
    if level == 1:
        left = node(c_in, stride)
        return Sequential({**_tapped([("left_node", left), ("right_node", node(c_out, 1))])._layers, "root": root})
    subtree = _dla_full_tree(c_in, c_out, 1, stride, seeds)
    prev_root = node(c_in, stride)
    chain = _tapped([("level_1", subtree), ("left_node", node(c_out, 1)), ("right_node", node(c_out, 1))])
    return Sequential({"join": Concat({"prev_root": prev_root, "rest": chain}), "root": root})


def dla(num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's Deep Layer Aggregation (``DLA()``, Yu et al. 2018): :func:`simpledla`'s
    stem, stages, pool and head (its table: 16, 16 and 32 channels at 32x32, trees of 64 at 32x32,
    128 at 16x16, 256 at 8x8 and 512 at 4x4), with his full trees.

    A tree of c channels aggregates every node's output in its root, conv1x1 - bn - relu: at level
    1, ``root(cat([l, r]))`` with ``l = left_node(x)`` (at the tree's stride) and
    ``r = right_node(l)``; at level 2, ``root(cat([prev_root(x), t, l, r]))`` with ``t = level_1(x)``
    (a level-1 tree at the tree's stride), ``l = left_node(t)``, ``r = right_node(l)``. The nodes are
    :func:`resnet18`'s BasicBlocks. Each kept output is a ``Concat`` of ``out`` (an ``Identity``) and
    what runs after it, in ``join`` (and ``rest`` where more than one node follows); kuangliu's keys
    are ours without ``join`` and ``rest`` and with the blocks' keys as resnet18's: his
    ``layer4.level_1.left_node.conv1.weight`` is ``layer4.join.rest.level_1.left_node.res.inner.conv1.weight``
    here, ``layer4.right_node.bn2.bias`` ``layer4.join.rest.join.rest.join.right_node.res.inner.bn2.bias``
    and ``layer3.root.conv.weight`` the same. Convolutions are bias-free. 16,291,386 parameters; no
    width argument (his net has none). Input must be ``in_channels`` x 32 x 32 (3: RGB). Its recipe,
    ``RECIPES['dla']``, is kuangliu's main.py, as resnet18's."""
    return _dla_net("dla", _dla_full_tree, 44, num_classes, seed, in_channels)  # 43 convolutions, the linear


# kuangliu's RegNet configs (RegNetX_200MF(), RegNetX_400MF(), RegNetY_400MF()): the four stages'
# depths, widths and first strides, the group width of the 3x3s, the bottleneck ratio and the
# squeeze-excitation ratio (0: none).
REGNET_CFG = {
    "RegNetX_200MF": dict(depths=(1, 1, 4, 7), widths=(24, 56, 152, 368), strides=(1, 1, 2, 2), group_width=8,
                          bottleneck_ratio=1, se_ratio=0),
    "RegNetX_400MF": dict(depths=(1, 2, 7, 12), widths=(32, 64, 160, 384), strides=(1, 1, 2, 2), group_width=16,
                          bottleneck_ratio=1, se_ratio=0),
    "RegNetY_400MF": dict(depths=(1, 2, 7, 12), widths=(32, 64, 160, 384), strides=(1, 1, 2, 2), group_width=16,
                          bottleneck_ratio=1, se_ratio=0.25),
}


def _regnet_block(w_in, w_out, stride, group_width, bottleneck_ratio, se_ratio, seeds):
    # kuangliu's RegNet Block: relu(bn3(conv3([se](relu(bn2(conv2(relu(bn1(conv1(x))))))))) + shortcut(x))
    # with conv2 a 3x3 of w_b / group_width groups (the block's stride), the gate (ReLU inside)
    # squeezing to round(w_in * se_ratio) channels, the shortcut a 1x1 conv + BN where the shape
    # changes. floor=True as resnet18's.
    w_b = int(round(w_out * bottleneck_ratio))
    inner = {
        "conv1": Conv2d(w_in, w_b, 1, bias=False, seed=seeds[0]),
        "bn1": BatchNorm2d(w_b, activation="relu"),
        "conv2": Conv2d(w_b, w_b, 3, stride=stride, padding=1, groups=w_b // group_width, bias=False,
                        floor=stride > 1, seed=seeds[1]),
        "bn2": BatchNorm2d(w_b, activation="relu"),
    }
    if se_ratio > 0:
        inner["se"] = SqueezeExcitation(w_b, int(round(w_in * se_ratio)), seed=seeds[4])
    inner.update(conv3=Conv2d(w_b, w_out, 1, bias=False, seed=seeds[2]), bn3=BatchNorm2d(w_out))
    return _post_activation(inner, w_in, w_out, stride, seeds[3:4])


def regnet(regnet_name="RegNetX_200MF", num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's CIFAR RegNet (``RegNetX_200MF()``, ``RegNetX_400MF()``,
    ``RegNetY_400MF()``; Radosavovic et al. 2020): ``conv1`` conv3x3(64) - ``bn1`` - relu, four
    stages ``layer1``-``layer4`` of ``REGNET_CFG[regnet_name]``'s depths and widths (the first
    block of a stage its stride: 32x32 down to 8x8), an adaptive average pool and a linear layer
    from the last width. A block is ``relu(bn(conv1x1(relu(bn(grouped conv3x3(relu(bn(conv1x1(x)))))))) +
    shortcut(x))``, the 3x3 in groups of the config's group width; RegNetY gates the 3x3's output
    (``SqueezeExcitation``, ReLU inside, to round(w_in / 4) channels) before the last 1x1. ``layerK.B``
    is the ``Sequential`` ``res`` (a ``Residual``: its ``inner`` conv1, bn1, conv2, bn2, [se], conv3,
    bn3 and its ``shortcut``) and ``relu``, kuangliu's keys mapped as resnet18's and his gate's
    ``se1``/``se2`` being ``se.fc1``/``se.fc2`` (``layer1.0.se.se1.weight`` is
    ``layer1.0.res.inner.se.fc1.weight``). Convolutions bias-free but the gates'. 2,321,946
    parameters for RegNetX_200MF (RegNetX_400MF: 4,779,338; RegNetY_400MF: 5,714,362). Input must be
    ``in_channels`` x 32 x 32 (3: RGB). Its recipe, ``RECIPES['regnetx_200mf']``, is kuangliu's
    main.py, as resnet18's."""
    if regnet_name not in REGNET_CFG:
        raise ValueError(f"regnet: regnet_name must be one of {', '.join(REGNET_CFG)} (kuangliu's), got "
                         f"{regnet_name!r}")
    c = _in_channels("regnet", in_channels)
    cfg = REGNET_CFG[regnet_name]
    seeds = iter(_seeds(seed, 2 + 5 * sum(cfg["depths"])))  # stem, 5 per block (3 convs, projection, gate), linear
    layers = {"conv1": Conv2d(c, 64, 3, padding=1, bias=False, seed=next(seeds)),
              "bn1": BatchNorm2d(64, activation="relu")}
    w_in = 64
    for k, (depth, width, stride) in enumerate(zip(cfg["depths"], cfg["widths"], cfg["strides"]), start=1):
        blocks = []
        for i in range(depth):
            blocks.append(_regnet_block(w_in, width, stride if i == 0 else 1, cfg["group_width"],
                                        cfg["bottleneck_ratio"], cfg["se_ratio"], [next(seeds) for _ in range(5)]))
            w_in = width
        layers[f"layer{k}"] = Sequential(*blocks)
    layers.update(pool=AdaptiveAvgPool2d(1), flatten=Flatten(), linear=Linear(w_in, num_classes, seed=next(seeds)))
    return Sequential(layers)
