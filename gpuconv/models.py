"""Reference networks for 32x32 RGB images (CIFAR-10), all built as ``Sequential`` layers.

- ``seed_net``: the smallest convnet of the CS231n notes, INPUT-CONV-RELU-POOL-FC.
- ``three_layer_convnet``: CS231n assignment 2's conv - relu - 2x2 max pool - affine - relu - affine.
- ``fast_net``: a ResNet-9 in the style of "How to train your ResNet" (Myrtle.ai) and airbench,
  the architecture that reaches 94% on CIFAR-10 in a few epochs.
- ``resnet18``: the CIFAR ResNet-18 of kuangliu/pytorch-cifar, the common CIFAR-10 baseline of
  PyTorch tutorials and papers (four stages of two BasicBlocks, 11.2M parameters).
- ``senet18``: the CIFAR SENet-18 of kuangliu/pytorch-cifar: resnet18 with a squeeze-and-excitation
  gate in every block (11.3M parameters).
- ``mobilenetv2``: the CIFAR MobileNetV2 of kuangliu/pytorch-cifar: 17 inverted-residual blocks
  (1x1 expansion, 3x3 depthwise, 1x1 projection), 2.3M parameters.
- ``shufflenetv2``: the CIFAR ShuffleNetV2 of kuangliu/pytorch-cifar: blocks that split the
  channels in two, transform one half (1x1, 3x3 depthwise, 1x1) and shuffle the halves together;
  1.3M parameters at ``net_size=1``.
- ``efficientnetb0``: the CIFAR EfficientNet-B0 of kuangliu/pytorch-cifar: 16 inverted-residual
  blocks (3x3 and 5x5 depthwise convolutions) with SiLU and a squeeze-excitation gate each, dropout
  before the head; 3.6M parameters.
- ``simpledla``: the simplified Deep Layer Aggregation of kuangliu/pytorch-cifar (the network his
  main.py trains): trees of ResNet BasicBlocks whose outputs a 1x1 convolution aggregates; 15.1M
  parameters.
- ``vgg``: kuangliu/pytorch-cifar's VGG11/13/16/19 (``vgg_name``), conv3x3 - BN - ReLU stacks between
  max pools; 20.0M parameters at VGG19.
- ``preact_resnet18``: kuangliu/pytorch-cifar's PreActResNet18 (He et al.'s identity mappings: BN and
  ReLU before each convolution); 11.2M parameters.
- ``mobilenet``: kuangliu/pytorch-cifar's MobileNet (v1): 13 depthwise-separable blocks; 3.2M parameters.
- ``resnext29``: kuangliu/pytorch-cifar's ResNeXt29 (``cardinality`` x ``bottleneck_width``, 2x64d by
  default): bottleneck blocks around a grouped 3x3 convolution; 9.1M parameters at 2x64d.
- ``airbench94``: Keller Jordan's airbench94 network (arXiv 2404.00498): a frozen 2x2
  patch-whitening convolution (:func:`init_whitening`), three conv-pool-BN-GELU blocks with
  identity-initialized convolutions, and a 1/9-scaled linear head; its training recipe is
  ``gpuconv.recipes.RECIPES['airbench94']`` (wider, ``RECIPES['airbench95']``).
- ``airbench96``: airbench96's network: the same, wider (128/384/512), each block with a third
  convolution and a residual connection over its last two.

Every model takes a ``seed``: the per-layer seeds derive from it (``numpy.random.SeedSequence``),
so a seed gives bit-identical initial weights on every device.
"""
from __future__ import annotations

import inspect

import numpy as np

from .backend import asnumpy, copy_like
from .counter_rng import check_seed
from .layers import (GELU, AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, ChannelShuffle, Concat, Conv2d, Dropout,
                     Flatten, Identity, Linear, MaxPool2d, Narrow, ReLU, Residual, Scale, Sequential, SiLU,
                     SqueezeExcitation)

__all__ = ["seed_net", "three_layer_convnet", "fast_net", "resnet18", "senet18", "mobilenetv2", "shufflenetv2",
           "efficientnetb0", "simpledla", "vgg", "preact_resnet18", "mobilenet", "resnext29", "airbench94", "airbench96", "init_whitening"]


def _seeds(seed, n):
    return [int(s) for s in np.random.SeedSequence(check_seed(seed)).generate_state(n)]


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


def _in_channels(name, in_channels):
    if isinstance(in_channels, bool) or not isinstance(in_channels, (int, np.integer)) or in_channels < 1:
        raise ValueError(f"{name}: in_channels must be a positive int (3 for RGB images, 1 for grayscale), "
                         f"got {in_channels!r}")
    return int(in_channels)


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
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = Sequential(Conv2d(c_in, c_out, 1, stride=stride, bias=False, floor=stride > 1, seed=seeds[2]),
                              BatchNorm2d(c_out))
    return Sequential({"res": Residual(Sequential(inner), shortcut=shortcut), "relu": ReLU()})


def _kuangliu_resnet(name, w, num_classes, seed, in_channels, squeeze_excitation):
    # kuangliu's ResNet(BasicBlock, [2, 2, 2, 2]) trunk, shared by ResNet18 and SENet18 (whose
    # blocks add the gate). Seeds in the order the layers are built: the stem, each block's
    # (conv1, conv2, [projection], [gate]), the linear layer.
    per_block = 3 if squeeze_excitation else 2
    s = _seeds(seed, 1 + 8 * per_block + 3 + 1)
    layers = {
        "conv1": Conv2d(_in_channels(name, in_channels), w, 3, padding=1, bias=False, seed=s[0]),
        "bn1": BatchNorm2d(w, activation="relu"),
    }
    c_in, k = w, 1
    for stage, c_out in enumerate((w, 2 * w, 4 * w, 8 * w), start=1):
        blocks = []
        for b in range(2):
            stride = 2 if stage > 1 and b == 0 else 1
            n = per_block + (stride != 1 or c_in != c_out)
            blocks.append(_basic_block(c_in, c_out, stride, s[k:k + n], squeeze_excitation))
            k += n
            c_in = c_out
        layers[f"layer{stage}"] = Sequential(*blocks)
    layers.update(pool=AvgPool2d(4), flatten=Flatten(), linear=Linear(8 * w, num_classes, seed=s[k]))
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
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"resnet18: width must be a positive int (64 for the published net), got {width!r}")
    return _kuangliu_resnet("resnet18", int(width), num_classes, seed, in_channels, squeeze_excitation=False)


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
    c = _in_channels("simpledla", in_channels)
    seeds = iter(_seeds(seed, 40))  # the 39 convolutions, then the linear layer

    def conv_bn(a, b):
        return Sequential(Conv2d(a, b, 3, padding=1, bias=False, seed=next(seeds)), BatchNorm2d(b, activation="relu"))

    layers = {"base": conv_bn(c, 16), "layer1": conv_bn(16, 16), "layer2": conv_bn(16, 32)}
    for name, (a, b, level, stride) in zip(("layer3", "layer4", "layer5", "layer6"),
                                           ((32, 64, 1, 1), (64, 128, 2, 2), (128, 256, 2, 2), (256, 512, 1, 2))):
        layers[name] = _dla_tree(a, b, level, stride, seeds)
    layers.update(pool=AvgPool2d(4), flatten=Flatten(), linear=Linear(512, num_classes, seed=next(seeds)))
    return Sequential(layers)


# kuangliu's VGG cfg: output channels of each conv3x3 - BN - ReLU, 'M' a 2x2 max pool.
VGG_CFG = {
    "VGG11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "VGG13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "VGG16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "VGG19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512,
              "M"),
}


def vgg(vgg_name="VGG19", num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's CIFAR VGG (``VGG(vgg_name)``, Simonyan and Zisserman with batch norm):
    ``features``, the ``VGG_CFG[vgg_name]`` stack of conv3x3 (pad 1, with bias) - BN - ReLU, a 2x2
    max pool at each 'M' (five: 32x32 down to 1x1), then ``flatten`` and ``classifier``, a linear
    layer from 512 to ``num_classes``. The ReLUs and pools are layers of their own in ``features``
    so its indices, hence every state-dict key (``features.0.weight``, ``features.1.running_mean``,
    ``classifier.weight``), are kuangliu's; his last layer of ``features``, an ``AvgPool2d(1, 1)``
    (an identity), is left out. 20,040,522 parameters at VGG19 (VGG11: 9,231,114; VGG13:
    9,416,010; VGG16: 14,728,266). Input must be ``in_channels`` x 32 x 32 (3: RGB). Its recipe,
    ``RECIPES['vgg19']``, is kuangliu's main.py, as resnet18's."""
    if vgg_name not in VGG_CFG:
        raise ValueError(f"vgg: vgg_name must be one of {', '.join(VGG_CFG)} (kuangliu's), got {vgg_name!r}")
    c = _in_channels("vgg", in_channels)
    cfg = VGG_CFG[vgg_name]
    s = _seeds(seed, sum(x != "M" for x in cfg) + 1)
    features, k = [], 0
    for x in cfg:
        if x == "M":
            features.append(MaxPool2d(2, 2))
            continue
        features += [Conv2d(c, x, 3, padding=1, seed=s[k]), BatchNorm2d(x), ReLU()]
        c, k = x, k + 1
    return Sequential({"features": Sequential(*features), "flatten": Flatten(),
                       "classifier": Linear(512, num_classes, seed=s[k])})


def _preact_block(c_in, c_out, stride, seeds):
    # kuangliu's PreActBlock: o = relu(bn1(x)); conv2(relu(bn2(conv1(o)))) + shortcut, the shortcut
    # x itself, or a bias-free 1x1 conv (the block's stride) of o where the shape changes: the
    # identity block is a Residual over bn1 ... conv2; the projecting one bn1 then a Residual whose
    # shortcut convolves bn1's output. floor=True: a stride-2 conv halves 32x32 as PyTorch's does.
    def tail():
        return {"conv1": Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, floor=stride > 1, seed=seeds[0]),
                "bn2": BatchNorm2d(c_out, activation="relu"),
                "conv2": Conv2d(c_out, c_out, 3, padding=1, bias=False, seed=seeds[1])}
    if stride == 1 and c_in == c_out:
        return Residual(Sequential({"bn1": BatchNorm2d(c_in, activation="relu"), **tail()}))
    shortcut = Sequential(Conv2d(c_in, c_out, 1, stride=stride, bias=False, floor=stride > 1, seed=seeds[2]))
    return Sequential({"bn1": BatchNorm2d(c_in, activation="relu"), "res": Residual(Sequential(tail()), shortcut)})


def preact_resnet18(num_classes=10, seed=0, in_channels=3):
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
    ReLUs fused. 11,171,146 parameters. Input must be ``in_channels`` x 32 x 32 (3: RGB). Its
    recipe, ``RECIPES['preact_resnet18']``, is kuangliu's main.py, as resnet18's."""
    c = _in_channels("preact_resnet18", in_channels)
    s = _seeds(seed, 1 + 8 * 2 + 3 + 1)  # stem, each block's 2 convs and 3 projections, linear
    layers, c_in, k = {"conv1": Conv2d(c, 64, 3, padding=1, bias=False, seed=s[0])}, 64, 1
    for stage, c_out in enumerate((64, 128, 256, 512), start=1):
        blocks = []
        for b in range(2):
            stride = 2 if stage > 1 and b == 0 else 1
            n = 2 + (stride != 1 or c_in != c_out)
            blocks.append(_preact_block(c_in, c_out, stride, s[k:k + n]))
            k, c_in = k + n, c_out
        layers[f"layer{stage}"] = Sequential(*blocks)
    layers.update(pool=AvgPool2d(4), flatten=Flatten(), linear=Linear(512, num_classes, seed=s[k]))
    return Sequential(layers)


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


def _resnext_block(c_in, group_width, cardinality, stride, seeds):
    # kuangliu's ResNeXt Block: relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))
    # with conv2 a 3x3 of ``cardinality`` groups (the block's stride) and conv3 to twice the group
    # width; the shortcut a 1x1 conv + BN where the shape changes. floor=True as resnet18's.
    c_out = 2 * group_width
    inner = Sequential({
        "conv1": Conv2d(c_in, group_width, 1, bias=False, seed=seeds[0]),
        "bn1": BatchNorm2d(group_width, activation="relu"),
        "conv2": Conv2d(group_width, group_width, 3, stride=stride, padding=1, groups=cardinality, bias=False,
                        floor=stride > 1, seed=seeds[1]),
        "bn2": BatchNorm2d(group_width, activation="relu"),
        "conv3": Conv2d(group_width, c_out, 1, bias=False, seed=seeds[2]),
        "bn3": BatchNorm2d(c_out),
    })
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = Sequential(Conv2d(c_in, c_out, 1, stride=stride, bias=False, floor=stride > 1, seed=seeds[3]),
                              BatchNorm2d(c_out))
    return Sequential({"res": Residual(inner, shortcut=shortcut), "relu": ReLU()})


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


def _dirac_(conv):
    """Identity initialization of the first ``in_channels`` filters (PyTorch's ``dirac_`` on
    ``w[:in_channels]``): filter i passes input channel i through at the kernel's centre; the
    other filters keep their random initialization."""
    w = np.array(conv.weight.data.get() if hasattr(conv.weight.data, "get") else conv.weight.data)
    n = min(conv.in_channels, conv.out_channels)
    kh, kw = conv.kernel_size
    w[:n] = 0
    w[np.arange(n), np.arange(n), kh // 2, kw // 2] = 1
    conv.weight.data = copy_like(w, conv.weight.data)


def _airbench_block(c_in, c_out, seed, bn_momentum, bn_eps, residual=False):
    # conv - pool - BN - GELU - conv - BN - GELU. The 2x2 pools take odd sizes down as PyTorch
    # does (31 -> 15 -> 7 -> 3). BatchNorm: weight frozen at 1, only the shift trained; the GELU is
    # its fused activation (the same bits as a GELU layer, one pass fewer). ``residual``
    # (airbench96): conv - pool - BN - GELU, then x + (conv - BN - GELU - conv - BN)(x), then GELU.
    s = _seeds(seed, 3 if residual else 2)

    def conv(i, c):
        layer = Conv2d(c, c_out, 3, padding="same", bias=False, seed=s[i])
        _dirac_(layer)
        return layer

    def norm(activation):
        layer = BatchNorm2d(c_out, eps=bn_eps, momentum=bn_momentum, activation=activation)
        layer.weight.requires_grad = False
        return layer

    layers = {"conv1": conv(0, c_in), "pool": MaxPool2d(2, floor=True), "norm1": norm("gelu")}
    if not residual:
        layers.update(conv2=conv(1, c_out), norm2=norm("gelu"))
        return Sequential(layers)
    layers["res"] = Residual(Sequential({"conv2": conv(1, c_out), "norm2": norm("gelu"), "conv3": conv(2, c_out),
                                         "norm3": norm(None)}))
    layers["gelu"] = GELU()
    return Sequential(layers)


def _airbench(name, widths, num_classes, seed, batchnorm_momentum, bn_eps, scaling_factor, head_std, residual,
              whiten_bias="zeros", in_channels=3):
    if len(widths) != 3 or not all(isinstance(w, (int, np.integer)) and w >= 1 for w in widths):
        raise ValueError(f"{name}: widths must be three positive ints, got {widths!r}")
    if not 0.0 <= batchnorm_momentum <= 1.0:
        raise ValueError(f"{name}: batchnorm_momentum must be in [0, 1] (the weight kept on the running "
                         f"statistics), got {batchnorm_momentum!r}")
    if whiten_bias not in ("zeros", "uniform"):
        raise ValueError(f"{name}: whiten_bias={whiten_bias!r} must be 'zeros' (airbench94, airbench96) or 'uniform' "
                         "(PyTorch's default, U(-1/sqrt(12), 1/sqrt(12)): airbench94_muon)")
    w1, w2, w3 = (int(w) for w in widths)
    s = _seeds(seed, 5)
    momentum = 1.0 - float(batchnorm_momentum)
    c = _in_channels(name, in_channels)
    whiten = Conv2d(c, 8 * c, 2, padding=0, bias=True, seed=s[0])  # 2 x 2 patches: 4c filters and their negations
    whiten.weight.requires_grad = False
    if whiten_bias == "zeros":
        whiten.bias.data[...] = 0
    layers = {
        "whiten": whiten,
        "gelu0": GELU(),
        "block1": _airbench_block(8 * c, w1, s[1], momentum, bn_eps, residual),
        "block2": _airbench_block(w1, w2, s[2], momentum, bn_eps, residual),
        "block3": _airbench_block(w2, w3, s[3], momentum, bn_eps, residual),
        "pool": MaxPool2d(3),
        "flatten": Flatten(),
        "fc": Linear(w3, num_classes, bias=False, seed=s[4]),
        "scale": Scale(1.0 / w3 if scaling_factor is None else scaling_factor),
    }
    if head_std is not None:
        if not head_std > 0:
            raise ValueError(f"{name}: head_std must be positive (the head weights' standard deviation), got "
                             f"{head_std!r}")
        fc = layers["fc"].weight
        # the factor from the host copy: the same bits on every device (a GPU sums in another order)
        fc.data *= fc.data.dtype.type(head_std / float(asnumpy(fc.data).std()))
    return Sequential(layers)


# The airbench networks' published widths, their constructors' defaults.
PUBLISHED_WIDTHS = {"airbench94": (64, 256, 256), "airbench96": (128, 384, 512)}


def airbench94(widths=PUBLISHED_WIDTHS["airbench94"], num_classes=10, seed=0, batchnorm_momentum=0.6, bn_eps=1e-12,
               scaling_factor=1 / 9, head_std=None, whiten_bias="zeros", in_channels=3):
    """The airbench94 network (Keller Jordan), for 3 x 32 x 32 input (``in_channels`` x H x W: the
    whitening conv takes ``8 * in_channels`` filters; 28 x 28 images pool to 1 x 1 as well):

    ==========  ====================================================  ===========
    name        layers                                                output
    ==========  ====================================================  ===========
    whiten      conv2x2 (24 filters: 12 whitening filters and their   24 x 31 x 31
                negations, frozen; bias trained), GELU
    block1..3   conv3x3 - maxpool2 - bn+gelu - conv3x3 - bn+gelu      w x 15/7/3
    pool        maxpool3 over the 3x3 map                             w3
    fc, scale   linear (no bias), times ``scaling_factor``            num_classes
    ==========  ====================================================  ===========

    ``widths`` (64, 256, 256) as published (airbench95: 128, 384, 384); tests use smaller ones.
    The head: airbench94's is ``scaling_factor`` 1/9 on a linear layer of the default
    (Kaiming-uniform) init; airbench94_muon's divides by its input width (``scaling_factor=None``: 1 / widths[2]) and
    starts from weights rescaled to a standard deviation of 1 (``head_std=1.0``), which its head lr
    was tuned for (with airbench94's head that lr diverges), and its whitening bias starts from
    PyTorch's default draw (``whiten_bias='uniform'``) where airbench94 zeroes it.
    ``batchnorm_momentum`` is the recipe's 0.6 weight on the running statistics (PyTorch/gpuconv
    momentum 1 - 0.6 = 0.4), ``bn_eps`` its 1e-12. The whitening weights are only a placeholder
    until :func:`init_whitening` sets them from training images (``gpuconv train`` does)."""
    return _airbench("airbench94", widths, num_classes, seed, batchnorm_momentum, bn_eps, scaling_factor, head_std,
                     residual=False, whiten_bias=whiten_bias, in_channels=in_channels)


def airbench96(widths=PUBLISHED_WIDTHS["airbench96"], num_classes=10, seed=0, batchnorm_momentum=0.9, bn_eps=1e-12,
               scaling_factor=1 / 9, head_std=None, in_channels=3):
    """airbench96's network (Keller Jordan; 96.03% mean on CIFAR-10 in 34.7 s on an A100): airbench94's
    whitening, pools and head, wider, and each block with a third convolution and a residual
    connection over its last two:

    ==========  ====================================================  ===========
    name        layers                                                output
    ==========  ====================================================  ===========
    whiten      conv2x2 (24 filters, frozen; bias trained), GELU      24 x 31 x 31
    block1..3   conv3x3 - maxpool2 - bn+gelu = x0;                    w x 15/7/3
                gelu(x0 + (conv3x3 - bn+gelu - conv3x3 - bn)(x0))
    pool        maxpool3 over the 3x3 map                             w3
    fc, scale   linear (no bias), times ``scaling_factor`` (1/9)      num_classes
    ==========  ====================================================  ===========

    Every conv identity-initialized (its first ``in_channels`` filters), batch norms with their
    weight frozen at 1. ``batchnorm_momentum`` 0.9 is the weight kept on the running statistics
    (the published net leaves PyTorch's default momentum, 0.1); the other arguments as
    :func:`airbench94`'s."""
    return _airbench("airbench96", widths, num_classes, seed, batchnorm_momentum, bn_eps, scaling_factor, head_std,
                     residual=True, in_channels=in_channels)


def init_whitening(conv, images, eps=5e-4, max_images=5000):
    """Set a 2x2 (k x k) whitening ``conv``'s weights from ``images`` (N, C, H, W, normalized
    floats, host or device; the first ``max_images`` are used): with ``P`` the matrix of every
    k x k patch (stride 1) flattened in (C, kh, kw) order, the eigenvectors of ``P^T P / n``
    by decreasing eigenvalue ``lambda``, each scaled by ``1 / sqrt(lambda + eps)``, as filters;
    then the same filters negated (the conv has ``2 C k^2`` filters). A dilated conv's patches are
    its taps', D pixels apart; a grouped conv is refused. Computed in float64 on the host: a
    12 x 12 covariance, summed over chunks of images."""
    from .backend import asnumpy
    c, k = conv.in_channels, conv.kernel_size
    dil, groups = getattr(conv, "dilation", (1, 1)), getattr(conv, "groups", 1)
    if groups != 1:
        raise ValueError(f"init_whitening: the conv has groups={groups}, whose filters see a group's channels only; "
                         f"whitening decorrelates the patches of all {c} channels: use a conv with groups=1")
    d = c * k[0] * k[1]
    if conv.out_channels != 2 * d:
        raise ValueError(f"init_whitening: the conv has {conv.out_channels} filters; whitening {c} x {k[0]} x {k[1]} "
                         f"patches needs 2 * {d} = {2 * d} (each eigenvector and its negation)")
    x = asnumpy(images[:max_images])
    if x.ndim != 4 or x.shape[1] != c:
        raise ValueError(f"init_whitening: images must be (N, {c}, H, W), got shape {tuple(x.shape)}")
    cov, n = np.zeros((d, d)), 0
    for start in range(0, len(x), 500):
        chunk = np.asarray(x[start:start + 500], np.float64)
        reach = tuple(di * (ki - 1) + 1 for ki, di in zip(k, dil))  # a dilated filter's patch: taps D apart
        win = np.lib.stride_tricks.sliding_window_view(chunk, reach, axis=(2, 3))[..., ::dil[0], ::dil[1]]
        patches = win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, d)
        cov += patches.T @ patches
        n += len(patches)
    if n == 0:
        raise ValueError("init_whitening: no images given; pass training images")
    eigenvalues, eigenvectors = np.linalg.eigh(cov / n)
    order = np.argsort(eigenvalues)[::-1]
    filters = (eigenvectors[:, order].T / np.sqrt(eigenvalues[order] + eps)[:, None]).reshape(d, c, *k)
    conv.weight.data = copy_like(np.concatenate([filters, -filters]).astype(np.float32), conv.weight.data)


def from_config(config):
    """The model a checkpoint's ``meta/config`` describes: ``config['constructor']`` (a function of
    this module) called with ``config['kwargs']``, as ``gpuconv train`` records them."""
    name = config.get("constructor")
    fn = globals().get(name) if isinstance(name, str) and not name.startswith("_") else None
    if not callable(fn):
        raise ValueError(f"model config names constructor {name!r}, which gpuconv.models does not have: "
                         "the checkpoint comes from another gpuconv version or was edited")
    kwargs = config.get("kwargs", {})
    params = inspect.signature(fn).parameters
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise ValueError(f"model config gives {name}() the argument(s) {', '.join(unknown)}, which this gpuconv's "
                         f"{name}() does not take: the checkpoint was written by a newer gpuconv (upgrade gpuconv to "
                         "read it) or was edited")
    return fn(**kwargs)

