"""kuangliu/pytorch-cifar's networks built on depthwise convolutions: MobileNet, MobileNetV2,
ShuffleNet, ShuffleNetV2, EfficientNet-B0 and PNASNet."""
from __future__ import annotations

from ..layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, ChannelShuffle, Concat, Conv2d, Dropout, Flatten,
                      Linear, MaxPool2d, Narrow, ReLU, Residual, Sequential, SiLU, SqueezeExcitation)
from ._build import _in_channels, _seeds


# kuangliu's MobileNet.cfg: each block's output channels, (channels, 2) for a stride-2 block.
MOBILENET_CFG = (64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2), 1024)


def mobilenet(num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's CIFAR MobileNet (``MobileNet()``, Howard et al. 2017, v1):
    ``conv1`` conv3x3(32) - ``bn1`` - relu, 13 ``layers`` of depthwise conv3x3 (the block's
    stride, pad 1) - BN - relu - conv1x1 - BN - relu (``MOBILENET_CFG``: 32x32 down to 2x2 in four
    stride-2 blocks), then avgpool2 and a linear layer from 1024 to ``num_classes``. A block is
    the ``Sequential`` conv1, bn1, conv2, bn2, as kuangliu's keys (``layers.3.conv1.weight``); the
    convolutions bias-free, the ReLUs the batch norms' fused ones. 3,217,226 parameters. Input must
    be ``in_channels`` x 32 x 32 (3: RGB). Its recipe, ``RECIPES['mobilenet']``, is kuangliu's
    main.py, as resnet18's."""
    c = _in_channels("mobilenet", in_channels)
    s = _seeds(seed, 2 + 2 * len(MOBILENET_CFG))
    layers = {"conv1": Conv2d(c, 32, 3, padding=1, bias=False, seed=s[0]), "bn1": BatchNorm2d(32, activation="relu")}
    blocks, c_in = [], 32
    for i, x in enumerate(MOBILENET_CFG):
        c_out, stride = (x, 1) if isinstance(x, int) else x
        blocks.append(Sequential({
            "conv1": Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False, floor=stride > 1,
                            seed=s[1 + 2 * i]),
            "bn1": BatchNorm2d(c_in, activation="relu"),
            "conv2": Conv2d(c_in, c_out, 1, bias=False, seed=s[2 + 2 * i]),
            "bn2": BatchNorm2d(c_out, activation="relu"),
        }))
        c_in = c_out
    layers.update(layers=Sequential(*blocks), pool=AvgPool2d(2), flatten=Flatten(),
                  linear=Linear(1024, num_classes, seed=s[-1]))
    return Sequential(layers)


# kuangliu's MobileNetV2.cfg: (expansion, out_planes, num_blocks, stride of the first block); the
# stride of the 24-channel stage is 1 for 32x32 input (2 in the ImageNet net).
MOBILENETV2_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                   (6, 320, 1, 1))


def _inverted_residual(c_in, c_out, expansion, stride, seeds):
    # kuangliu's Block: bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) [+ shortcut(x) at stride 1].
    # conv2 is the depthwise 3x3 (groups = planes, one filter per channel); the ReLUs are the batch
    # norms' fused activations, bn3 has none (the "linear bottleneck"). A stride-1 block adds its
    # input (the identity, or a 1x1 conv + BN projection where the channels change); a stride-2
    # block adds nothing. floor=True: the stride-2 depthwise conv takes 32x32 to 16x16 as PyTorch's.
    planes = expansion * c_in
    inner = Sequential({
        "conv1": Conv2d(c_in, planes, 1, bias=False, seed=seeds[0]),
        "bn1": BatchNorm2d(planes, activation="relu"),
        "conv2": Conv2d(planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False, floor=stride > 1,
                        seed=seeds[1]),
        "bn2": BatchNorm2d(planes, activation="relu"),
        "conv3": Conv2d(planes, c_out, 1, bias=False, seed=seeds[2]),
        "bn3": BatchNorm2d(c_out),
    })
    if stride != 1:
        return inner
    shortcut = None
    if c_in != c_out:
        shortcut = Sequential(Conv2d(c_in, c_out, 1, bias=False, seed=seeds[3]), BatchNorm2d(c_out))
    return Residual(inner, shortcut=shortcut)


def mobilenetv2(num_classes=10, seed=0, in_channels=3):
    """The CIFAR MobileNetV2 of kuangliu/pytorch-cifar (``MobileNetV2()``, Sandler et al. 2018 with
    the stem's and the second stage's strides 1 for 32x32 input):

    ==============  ========================================================  ============
    name            layers                                                    output
    ==============  ========================================================  ============
    conv1, bn1      conv3x3(32) - bn - relu                                   32 x 32 x 32
    layers.0        1 block (expansion 1, 16 channels)                        16 x 32 x 32
    layers.1-2      2 blocks (expansion 6, 24 channels)                       24 x 32 x 32
    layers.3-5      3 blocks (expansion 6, 32), the first stride 2            32 x 16 x 16
    layers.6-9      4 blocks (expansion 6, 64), the first stride 2            64 x 8 x 8
    layers.10-12    3 blocks (expansion 6, 96)                                96 x 8 x 8
    layers.13-15    3 blocks (expansion 6, 160), the first stride 2           160 x 4 x 4
    layers.16       1 block (expansion 6, 320)                                320 x 4 x 4
    conv2, bn2      conv1x1(1280) - bn - relu                                 1280 x 4 x 4
    pool, flatten   avgpool4 (global average pool over the 4x4 map)           1280
    linear          linear(1280 -> num_classes, with bias)                    num_classes
    ==============  ========================================================  ============

    A block of expansion t from c to c' channels (kuangliu's ``Block``, an inverted residual with
    a linear bottleneck) is conv1x1(t c) - bn - relu - depthwise conv3x3 (``groups`` = t c, the
    block's stride, pad 1) - bn - relu - conv1x1(c') - bn; a stride-1 block adds a shortcut: the
    identity where c == c', else a 1x1 conv + BN (layers.0, 1, 10 and 16); a stride-2 block none.
    The stages are ``MOBILENETV2_CFG`` (kuangliu's cfg). Convolutions are bias-free. A stride-1
    block is a ``Residual`` (its ``inner`` conv1 ... bn3 and its ``shortcut``), a stride-2 block
    the ``Sequential`` conv1 ... bn3: kuangliu's ``layers.N.conv1.weight`` is
    ``layers.N.inner.conv1.weight`` here for a stride-1 block, the other keys the same.
    2,296,922 parameters; there is no width argument (kuangliu's net has none). Input must be
    ``in_channels`` x 32 x 32 (3: RGB). Its recipe, ``RECIPES['mobilenetv2']``, is kuangliu's
    main.py, as resnet18's: SGD (momentum 0.9, weight decay 5e-4) at lr 0.1 with cosine annealing
    over 200 epochs, batch 128, random crop (pad 4) and flip."""
    c = _in_channels("mobilenetv2", in_channels)
    blocks, c_in = [], 32  # (in, out, expansion, stride) of each block, as kuangliu's _make_layers lays them out
    for t, c_out, n, stride in MOBILENETV2_CFG:
        for b in range(n):
            blocks.append((c_in, c_out, t, stride if b == 0 else 1))
            c_in = c_out
    projections = sum(stride == 1 and a != b for a, b, _, stride in blocks)
    s = _seeds(seed, 3 + 3 * len(blocks) + projections)  # stem, 3 convs per block, projections, conv2, linear
    layers = {
        "conv1": Conv2d(c, 32, 3, padding=1, bias=False, seed=s[0]),
        "bn1": BatchNorm2d(32, activation="relu"),
    }
    k, stack = 1, []
    for a, b, t, stride in blocks:
        stack.append(_inverted_residual(a, b, t, stride, s[k:k + 4]))
        k += 4 if stride == 1 and a != b else 3
    layers["layers"] = Sequential(*stack)
    layers.update(conv2=Conv2d(320, 1280, 1, bias=False, seed=s[k]), bn2=BatchNorm2d(1280, activation="relu"),
                  pool=AvgPool2d(4), flatten=Flatten(), linear=Linear(1280, num_classes, seed=s[k + 1]))
    assert k + 2 == len(s)
    return Sequential(layers)


# kuangliu's ShuffleNetG2 and ShuffleNetG3: groups -> each stage's output channels; every stage has
# (4, 8, 4) blocks, the first stride 2.
SHUFFLENET_CHANNELS = {2: (200, 400, 800), 3: (240, 480, 960)}
SHUFFLENET_BLOCKS = (4, 8, 4)


def _shuffle_unit(c_in, c_out, stride, groups, seeds):
    # kuangliu's ShuffleNet Bottleneck: conv1x1 in g groups (g = 1 on the 24-channel stem's output,
    # else ``groups``) - bn - relu - shuffle in g groups - depthwise conv3x3 (the block's stride) -
    # bn - relu - conv1x1 in ``groups`` groups - bn; then relu(cat([out, avgpool3x3(x)])) at stride 2
    # (the pool keeps the input's channels: c_out counts only the convolutions'), relu(out + x) at
    # stride 1. Its bottleneck width is c_out / 4, which his file computes with a float division
    # (``out_planes/4``) that PyTorch's Conv2d refuses; the integer is meant, and taken.
    mid, g = c_out // 4, 1 if c_in == 24 else groups
    branch = Sequential({
        "conv1": Conv2d(c_in, mid, 1, groups=g, bias=False, seed=seeds[0]),
        "bn1": BatchNorm2d(mid, activation="relu"),
        "shuffle1": ChannelShuffle(g),
        "conv2": Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False, floor=stride > 1,
                        seed=seeds[1]),
        "bn2": BatchNorm2d(mid, activation="relu"),
        "conv3": Conv2d(mid, c_out, 1, groups=groups, bias=False, seed=seeds[2]),
        "bn3": BatchNorm2d(c_out),
    })
    if stride == 2:
        join = Concat({"out": branch, "shortcut": AvgPool2d(3, stride=2, padding=1, floor=True)})
        return Sequential({"cat": join, "relu": ReLU()})
    return Sequential({"res": Residual(branch), "relu": ReLU()})


def shufflenet(groups=2, num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's ShuffleNet (``ShuffleNetG2()``, ``ShuffleNetG3()``: Zhang et al. 2018,
    for 32x32 input), ``groups`` 2 or 3, with (c1, c2, c3) = ``SHUFFLENET_CHANNELS[groups]``
    ((200, 400, 800) for 2, (240, 480, 960) for 3):

    ==============  ========================================================  ============
    name            layers                                                    output
    ==============  ========================================================  ============
    conv1, bn1      conv1x1(24) - bn - relu                                   24 x 32 x 32
    layer1          4 units(c1), the first stride 2                           c1 x 16 x 16
    layer2          8 units(c2), the first stride 2                           c2 x 8 x 8
    layer3          4 units(c3), the first stride 2                           c3 x 4 x 4
    pool, flatten   avgpool4 (global average pool over the 4x4 map)           c3
    linear          linear(c3 -> num_classes, with bias)                      num_classes
    ==============  ========================================================  ============

    A unit's branch is conv1x1 in groups - bn - relu - channel shuffle - depthwise conv3x3 - bn -
    relu - conv1x1 in groups - bn, of a quarter of its output channels inside (``conv1``, ``bn1``,
    ``shuffle1``, ``conv2`` ... ``bn3``; the first unit's conv1, on the stem's 24 channels, in one
    group). A stride-2 unit joins its branch to a 3x3 average pool (stride 2, pad 1) of its input
    and applies a ReLU (``cat``: a ``Concat`` of ``out`` and ``shortcut``; ``relu``), the branch giving
    the stage's channels less the input's; a stride-1 unit adds its input (``res``, a ``Residual``;
    ``relu``). kuangliu's ``layer1.0.conv1.weight`` is ``layer1.0.cat.out.conv1.weight`` here and
    ``layer1.1.conv1.weight`` ``layer1.1.res.inner.conv1.weight``, the other keys the same.
    Convolutions are bias-free. His file computes the bottleneck width as ``out_planes/4``, a float
    PyTorch's Conv2d refuses, so it does not run as published; this is it with the integer
    ``out_planes // 4``. 887,582 parameters at groups 2, 862,768 at 3. Input must be
    ``in_channels`` x 32 x 32 (3: RGB). Its recipe, ``RECIPES['shufflenetg2']`` (``'shufflenetg3'``),
    is kuangliu's main.py, as resnet18's."""
    if isinstance(groups, bool) or groups not in SHUFFLENET_CHANNELS:
        raise ValueError(f"shufflenet: groups must be 2 or 3 (kuangliu's ShuffleNetG2 and ShuffleNetG3), "
                         f"got {groups!r}")
    c = _in_channels("shufflenet", in_channels)
    # Seeds in the order kuangliu builds the convolutions: the stem, each unit's three, the linear layer.
    s = _seeds(seed, 1 + 3 * sum(SHUFFLENET_BLOCKS) + 1)
    layers = {"conv1": Conv2d(c, 24, 1, bias=False, seed=s[0]), "bn1": BatchNorm2d(24, activation="relu")}
    k, c_in = 1, 24
    for stage, (c_out, n) in enumerate(zip(SHUFFLENET_CHANNELS[groups], SHUFFLENET_BLOCKS), start=1):
        units = []
        for i in range(n):
            stride = 2 if i == 0 else 1
            units.append(_shuffle_unit(c_in, c_out - (c_in if stride == 2 else 0), stride, groups, s[k:k + 3]))
            k, c_in = k + 3, c_out
        layers[f"layer{stage}"] = Sequential(*units)
    layers.update(pool=AvgPool2d(4), flatten=Flatten(), linear=Linear(c_in, num_classes, seed=s[k]))
    assert k + 1 == len(s)
    return Sequential(layers)


# kuangliu's ShuffleNetV2 configs: net_size -> the output channels of the three stages and of the
# last 1x1 convolution; every size has (3, 7, 3) basic blocks after each stage's down block.
SHUFFLENETV2_CHANNELS = {0.5: (48, 96, 192, 1024), 1: (116, 232, 464, 1024), 1.5: (176, 352, 704, 1024),
                         2: (224, 488, 976, 2048)}
SHUFFLENETV2_BLOCKS = (3, 7, 3)


def _shuffle_basic_block(c, seeds):
    # kuangliu's BasicBlock: the first c/2 channels (x1) pass as they are, the other c/2 (x2) go
    # through conv1x1 - bn - relu - depthwise conv3x3 - bn - conv1x1 - bn - relu; cat([x1, out])
    # then the channel shuffle in 2 groups. The ReLUs are the batch norms' fused activations.
    half = c // 2
    x2 = Sequential({
        "split": Narrow(1, half, half),
        "conv1": Conv2d(half, half, 1, bias=False, seed=seeds[0]),
        "bn1": BatchNorm2d(half, activation="relu"),
        "conv2": Conv2d(half, half, 3, padding=1, groups=half, bias=False, seed=seeds[1]),
        "bn2": BatchNorm2d(half),
        "conv3": Conv2d(half, half, 1, bias=False, seed=seeds[2]),
        "bn3": BatchNorm2d(half, activation="relu"),
    })
    return Sequential({"cat": Concat({"x1": Narrow(1, 0, half), "x2": x2}), "shuffle": ChannelShuffle(2)})


def _shuffle_down_block(c_in, c_out, seeds):
    # kuangliu's DownBlock: two stride-2 branches of c_out/2 channels each on the whole input, the
    # left depthwise conv3x3 - bn - conv1x1 - bn - relu, the right conv1x1 - bn - relu - depthwise
    # conv3x3 - bn - conv1x1 - bn - relu; cat([left, right]) then the shuffle. floor=True: the
    # stride-2 convolutions halve an even size as PyTorch's do (32 -> 16).
    mid = c_out // 2
    left = Sequential({
        "conv1": Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False, floor=True, seed=seeds[0]),
        "bn1": BatchNorm2d(c_in),
        "conv2": Conv2d(c_in, mid, 1, bias=False, seed=seeds[1]),
        "bn2": BatchNorm2d(mid, activation="relu"),
    })
    right = Sequential({
        "conv3": Conv2d(c_in, mid, 1, bias=False, seed=seeds[2]),
        "bn3": BatchNorm2d(mid, activation="relu"),
        "conv4": Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False, floor=True, seed=seeds[3]),
        "bn4": BatchNorm2d(mid),
        "conv5": Conv2d(mid, mid, 1, bias=False, seed=seeds[4]),
        "bn5": BatchNorm2d(mid, activation="relu"),
    })
    return Sequential({"cat": Concat({"left": left, "right": right}), "shuffle": ChannelShuffle(2)})


def shufflenetv2(net_size=1, num_classes=10, seed=0, in_channels=3):
    """The CIFAR ShuffleNetV2 of kuangliu/pytorch-cifar (``ShuffleNetV2(net_size)``, Ma et al. 2018
    without the stem's max pool, for 32x32 input), with (c1, c2, c3, c4) =
    ``SHUFFLENETV2_CHANNELS[net_size]`` ((116, 232, 464, 1024) at ``net_size=1``):

    ==============  ========================================================  ============
    name            layers                                                    output
    ==============  ========================================================  ============
    conv1, bn1      conv3x3(24) - bn - relu                                   24 x 32 x 32
    layer1          a down block (stride 2) and 3 basic blocks(c1)            c1 x 16 x 16
    layer2          a down block (stride 2) and 7 basic blocks(c2)            c2 x 8 x 8
    layer3          a down block (stride 2) and 3 basic blocks(c3)            c3 x 4 x 4
    conv2, bn2      conv1x1(c4) - bn - relu                                   c4 x 4 x 4
    pool, flatten   avgpool4 (global average pool over the 4x4 map)           c4
    linear          linear(c4 -> num_classes, with bias)                      num_classes
    ==============  ========================================================  ============

    A basic block of c channels keeps its first c/2 channels and transforms the other c/2 (conv1x1
    - bn - relu - depthwise conv3x3 - bn - conv1x1 - bn - relu), joins the two halves and shuffles
    them (``ChannelShuffle(2)``): ``Sequential`` ``cat`` (a ``Concat`` of ``x1``, a ``Narrow`` of the
    first half, and ``x2``: a ``Narrow`` of the second half, ``split``, then conv1 ... bn3) and
    ``shuffle``. A down block from c to c' channels runs two branches of c'/2 channels on its whole
    input, both halving the size: ``left`` (depthwise conv3x3 stride 2 - bn - conv1x1 - bn - relu:
    conv1 ... bn2) and ``right`` (conv1x1 - bn - relu - depthwise conv3x3 stride 2 - bn - conv1x1 -
    bn - relu: conv3 ... bn5), joined in ``cat`` and shuffled. Convolutions are bias-free.
    kuangliu's ``layerK.B.conv1.weight`` is ``layerK.B.cat.x2.conv1.weight`` here in a basic block
    and ``layerK.0.cat.left.conv1.weight`` (conv3 to bn5: ``cat.right``) in a down block, the other
    keys the same. 1,263,854 parameters at ``net_size=1`` (0.5: 352,042; 1.5: 2,488,874; 2:
    5,338,026). Input must be ``in_channels`` x 32 x 32 (3: RGB). Its recipe,
    ``RECIPES['shufflenetv2']``, is kuangliu's main.py, as resnet18's: SGD (momentum 0.9, weight decay
    5e-4) at lr 0.1 with cosine annealing over 200 epochs, batch 128, random crop (pad 4) and flip."""
    if isinstance(net_size, bool) or net_size not in SHUFFLENETV2_CHANNELS:
        raise ValueError(f"shufflenetv2: net_size must be one of kuangliu's sizes 0.5, 1, 1.5 or 2 (1 in his main.py), "
                         f"got {net_size!r}")
    c = _in_channels("shufflenetv2", in_channels)
    *stages, last = SHUFFLENETV2_CHANNELS[net_size]
    # Seeds in the order kuangliu builds the convolutions: the stem, each stage's down block (5)
    # and basic blocks (3 each), conv2, the linear layer.
    s = _seeds(seed, 1 + sum(5 + 3 * n for n in SHUFFLENETV2_BLOCKS) + 2)
    layers = {
        "conv1": Conv2d(c, 24, 3, padding=1, bias=False, seed=s[0]),
        "bn1": BatchNorm2d(24, activation="relu"),
    }
    k, c_in = 1, 24
    for stage, (c_out, n) in enumerate(zip(stages, SHUFFLENETV2_BLOCKS), start=1):
        blocks = [_shuffle_down_block(c_in, c_out, s[k:k + 5])]
        k += 5
        for _ in range(n):
            blocks.append(_shuffle_basic_block(c_out, s[k:k + 3]))
            k += 3
        layers[f"layer{stage}"] = Sequential(*blocks)
        c_in = c_out
    layers.update(conv2=Conv2d(c_in, last, 1, bias=False, seed=s[k]), bn2=BatchNorm2d(last, activation="relu"),
                  pool=AvgPool2d(4), flatten=Flatten(), linear=Linear(last, num_classes, seed=s[k + 1]))
    assert k + 2 == len(s)
    return Sequential(layers)


# kuangliu's EfficientNetB0 cfg, a row per stage: (expansion, out_channels, num_blocks, kernel_size,
# stride of the first block); the stem's stride and the second stage's are 1 for 32x32 input.
EFFICIENTNETB0_CFG = ((1, 16, 1, 3, 1), (6, 24, 2, 3, 2), (6, 40, 2, 5, 2), (6, 80, 3, 3, 2), (6, 112, 3, 5, 1),
                      (6, 192, 4, 5, 2), (6, 320, 1, 3, 1))


def _mbconv_block(c_in, c_out, kernel, stride, expansion, seeds):
    # kuangliu's EfficientNet Block: [conv1x1(t c) - bn - silu] (not at expansion 1) - depthwise
    # conv kxk (the block's stride, pad (k - 1) / 2) - bn - silu - squeeze-excitation (c_in / 4
    # channels, SiLU inside) - conv1x1(c') - bn; the input added where the shape stays (stride 1,
    # c == c'). floor=True: a stride-2 depthwise conv halves an even size as PyTorch's does.
    channels = expansion * c_in
    inner = {}
    if expansion != 1:
        inner.update(conv1=Conv2d(c_in, channels, 1, bias=False, seed=seeds[0]), bn1=BatchNorm2d(channels),
                     act1=SiLU())
    inner.update(conv2=Conv2d(channels, channels, kernel, stride=stride, padding=(kernel - 1) // 2, groups=channels,
                              bias=False, floor=stride > 1, seed=seeds[1]),
                 bn2=BatchNorm2d(channels), act2=SiLU(),
                 se=SqueezeExcitation(channels, int(c_in * 0.25), activation=SiLU, seed=seeds[2]),
                 conv3=Conv2d(channels, c_out, 1, bias=False, seed=seeds[3]), bn3=BatchNorm2d(c_out))
    inner = Sequential(inner)
    return Residual(inner) if stride == 1 and c_in == c_out else inner


def efficientnetb0(num_classes=10, seed=0, in_channels=3):
    """The CIFAR EfficientNet-B0 of kuangliu/pytorch-cifar (``EfficientNetB0()``, Tan and Le 2019
    with the stem's stride 1 for 32x32 input and no last 1x1 convolution before the head):

    ==============  ========================================================  ============
    name            layers                                                    output
    ==============  ========================================================  ============
    conv1, bn1, act conv3x3(32) - bn - silu                                   32 x 32 x 32
    layers.0        1 block (expansion 1, 3x3, 16 channels)                   16 x 32 x 32
    layers.1-2      2 blocks (expansion 6, 3x3, 24), the first stride 2       24 x 16 x 16
    layers.3-4      2 blocks (expansion 6, 5x5, 40), the first stride 2       40 x 8 x 8
    layers.5-7      3 blocks (expansion 6, 3x3, 80), the first stride 2       80 x 4 x 4
    layers.8-10     3 blocks (expansion 6, 5x5, 112)                          112 x 4 x 4
    layers.11-14    4 blocks (expansion 6, 5x5, 192), the first stride 2      192 x 2 x 2
    layers.15       1 block (expansion 6, 3x3, 320)                           320 x 2 x 2
    pool, flatten   adaptive average pool to 1x1                              320
    dropout         dropout(0.2) (training only)                              320
    linear          linear(320 -> num_classes, with bias)                     num_classes
    ==============  ========================================================  ============

    A block of expansion t and kernel k from c to c' channels (an inverted residual with a
    squeeze-excitation gate) is conv1x1(t c) - bn - silu (left out at t = 1) - depthwise convkxk
    (``groups`` = t c, the block's stride, pad (k - 1) / 2) - bn - silu -
    ``SqueezeExcitation(t c, c // 4, activation=SiLU)`` - conv1x1(c') - bn; a block whose stride is 1
    and whose channels stay is a ``Residual`` (its ``inner``) adding its input, the others the
    ``Sequential`` conv1 ... bn3 alone. The stages are ``EFFICIENTNETB0_CFG`` (kuangliu's cfg).
    Convolutions are bias-free but for the gates'. kuangliu's drop-connect rate is 0 in every block
    (his loop never advances the block index it scales by), so these blocks have none. His
    ``layers.N.conv1.weight`` is ``layers.N.inner.conv1.weight`` here for a residual block and his
    gate's ``se1``/``se2`` are ``fc1``/``fc2`` (``layers.N.se.se1.weight``: ``layers.N.se.fc1.weight``),
    the other keys the same; his ``layers.0.conv1`` and ``layers.0.bn1``, built but never run at
    expansion 1, are not here. 3,598,598 parameters (his model holds 1,088 more in those two).
    Input must be ``in_channels`` x 32 x 32 (3: RGB). Its recipe, ``RECIPES['efficientnetb0']``, is
    kuangliu's main.py, as resnet18's: SGD (momentum 0.9, weight decay 5e-4) at lr 0.1 with cosine
    annealing over 200 epochs, batch 128, random crop (pad 4) and flip."""
    c = _in_channels("efficientnetb0", in_channels)
    blocks, c_in = [], 32  # (in, out, kernel, stride, expansion) of each block, as kuangliu lays them out
    for t, c_out, n, k, stride in EFFICIENTNETB0_CFG:
        for b in range(n):
            blocks.append((c_in, c_out, k, stride if b == 0 else 1, t))
            c_in = c_out
    s = _seeds(seed, 3 + 4 * len(blocks))  # stem, 4 per block (conv1, conv2, the gate, conv3), linear, dropout
    layers = {
        "conv1": Conv2d(c, 32, 3, padding=1, bias=False, seed=s[0]),
        "bn1": BatchNorm2d(32),
        "act": SiLU(),
        "layers": Sequential(*[_mbconv_block(*block, s[1 + 4 * i:5 + 4 * i]) for i, block in enumerate(blocks)]),
        "pool": AdaptiveAvgPool2d(1),
        "flatten": Flatten(),
        "dropout": Dropout(0.2, seed=s[-1]),
        "linear": Linear(320, num_classes, seed=s[-2]),
    }
    return Sequential(layers)


# kuangliu's PNASNetA and PNASNetB: the cell and the stem's width (the stages' planes w, 2w, 4w).
PNASNET_CFG = {"A": 44, "B": 32}


def _sep_conv(c_in, c_out, kernel, stride, seed):
    # kuangliu's SepConv: a bias-free kxk convolution in c_in groups (each input channel to c_out /
    # c_in outputs), pad (k - 1) / 2, the cell's stride, then BN (no pointwise convolution).
    return Sequential({"conv1": Conv2d(c_in, c_out, kernel, stride=stride, padding=(kernel - 1) // 2, groups=c_in,
                                       bias=False, floor=stride > 1, seed=seed),
                       "bn1": BatchNorm2d(c_out)})


def _pooled(c_in, c_out, stride, seed):
    # A cell's max-pool branch: a 3x3 max pool (pad 1, the cell's stride), at stride 2 then a
    # bias-free 1x1 conv to c_out and BN (his ``conv1``, ``bn1``).
    layers = {"pool": MaxPool2d(3, stride=stride, padding=1, floor=stride > 1)}
    if stride == 2:
        layers.update(conv1=Conv2d(c_in, c_out, 1, bias=False, seed=seed), bn1=BatchNorm2d(c_out))
    return Sequential(layers)


def _summed(a, b):
    # relu(a(x) + b(x)): a Residual whose shortcut is b, then the ReLU.
    return Sequential({"sum": Residual(a, shortcut=b), "relu": ReLU()})


def _pnasnet_cell(cell, c_in, c_out, stride, seeds):
    # kuangliu's CellA: relu(sep_conv1_7x7(x) + pooled(x)). His CellB: b1 = relu(sep_conv1_7x7(x) +
    # sep_conv2_3x3(x)), b2 = relu(pooled(x) + sep_conv3_5x5(x)), relu(bn2(conv2_1x1(cat([b1, b2])))).
    # Seeds in the order his cell builds its convolutions: the separable ones, conv1, [conv2].
    if cell == "A":
        return _summed(Sequential({"sep_conv1": _sep_conv(c_in, c_out, 7, stride, seeds[0])}),
                       _pooled(c_in, c_out, stride, seeds[1]))
    b1 = _summed(Sequential({"sep_conv1": _sep_conv(c_in, c_out, 7, stride, seeds[0])}),
                 Sequential({"sep_conv2": _sep_conv(c_in, c_out, 3, stride, seeds[1])}))
    b2 = _summed(Sequential({"sep_conv3": _sep_conv(c_in, c_out, 5, stride, seeds[2])}),
                 _pooled(c_in, c_out, stride, seeds[3]))
    return Sequential({"cat": Concat({"b1": b1, "b2": b2}),
                       "conv2": Conv2d(2 * c_out, c_out, 1, bias=False, seed=seeds[4]),
                       "bn2": BatchNorm2d(c_out, activation="relu")})


def pnasnet(cell_type="A", num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's PNASNet (``PNASNetA()``, ``PNASNetB()``: cells after Liu et al.'s
    Progressive Neural Architecture Search), ``cell_type`` 'A' (w = 44) or 'B' (w = 32):

    ==============  ========================================================  ============
    name            layers                                                    output
    ==============  ========================================================  ============
    conv1, bn1      conv3x3(w) - bn - relu                                    w x 32 x 32
    layer1          6 cells(w)                                                w x 32 x 32
    layer2          a cell(2w), stride 2                                      2w x 16 x 16
    layer3          6 cells(2w)                                               2w x 16 x 16
    layer4          a cell(4w), stride 2                                      4w x 8 x 8
    layer5          6 cells(4w)                                               4w x 8 x 8
    pool, flatten   avgpool8 (global average pool over the 8x8 map)           4w
    linear          linear(4w -> num_classes, with bias)                      num_classes
    ==============  ========================================================  ============

    A separable convolution (his SepConv) is a kxk convolution in as many groups as input channels,
    then BN. The pooled branch is a 3x3 max pool (pad 1), at stride 2 followed by a 1x1 conv + BN
    to the cell's width. Cell A: ``relu(sep7x7(x) + pooled(x))``; cell B:
    ``relu(bn(conv1x1(cat([relu(sep7x7(x) + sep3x3(x)), relu(pooled(x) + sep5x5(x))]))))``. A sum is
    the ``Sequential`` ``sum`` (a ``Residual``: ``inner`` and ``shortcut``), ``relu``; cell B's join is
    ``cat`` (a ``Concat`` of ``b1`` and ``b2``). kuangliu's keys are ours without ``sum``, ``inner``,
    ``shortcut``, ``cat``, ``b1`` and ``b2``: his ``layer1.0.sep_conv1.conv1.weight`` is
    ``layer1.0.sum.inner.sep_conv1.conv1.weight`` here (cell A) and
    ``layer1.0.cat.b1.sum.inner.sep_conv1.conv1.weight`` (cell B), his ``layer2.conv1.weight`` (a
    stride-2 cell's 1x1) ``layer2.sum.shortcut.conv1.weight`` (A). Convolutions are bias-free.
    130,646 parameters (A), 451,626 (B). Input must be ``in_channels`` x 32 x 32 (3: RGB). Its recipe,
    ``RECIPES['pnasneta']`` (``'pnasnetb'``), is kuangliu's main.py, as resnet18's."""
    if cell_type not in PNASNET_CFG:
        raise ValueError(f"pnasnet: cell_type must be 'A' or 'B' (kuangliu's PNASNetA and PNASNetB), got {cell_type!r}")
    c, w = _in_channels("pnasnet", in_channels), PNASNET_CFG[cell_type]
    per_cell = 2 if cell_type == "A" else 5  # the convolutions a cell seeds (A: sep_conv1, conv1)
    s = _seeds(seed, 1 + 20 * per_cell + 1)
    layers = {"conv1": Conv2d(c, w, 3, padding=1, bias=False, seed=s[0]), "bn1": BatchNorm2d(w, activation="relu")}
    k, c_in = 1, w
    for stage, (planes, cells, stride) in enumerate(((w, 6, 1), (2 * w, 1, 2), (2 * w, 6, 1), (4 * w, 1, 2),
                                                      (4 * w, 6, 1)), start=1):
        made = []
        for _ in range(cells):
            made.append(_pnasnet_cell(cell_type, c_in, planes, stride, s[k:k + per_cell]))
            k, c_in = k + per_cell, planes
        layers[f"layer{stage}"] = made[0] if cells == 1 else Sequential(*made)
    layers.update(pool=AvgPool2d(8), flatten=Flatten(), linear=Linear(c_in, num_classes, seed=s[k]))
    assert k + 1 == len(s)
    return Sequential(layers)
