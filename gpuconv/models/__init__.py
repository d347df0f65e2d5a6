"""Reference networks for 32x32 RGB images (CIFAR-10), all built as ``Sequential`` layers.

- ``seed_net``: the smallest convnet of the CS231n notes, INPUT-CONV-RELU-POOL-FC.
- ``three_layer_convnet``: CS231n assignment 2's conv - relu - 2x2 max pool - affine - relu - affine.
- ``fast_net``: a ResNet-9 in the style of "How to train your ResNet" (Myrtle.ai) and airbench,
  the architecture that reaches 94% on CIFAR-10 in a few epochs.
- ``resnet18``: the CIFAR ResNet-18 of kuangliu/pytorch-cifar, the common CIFAR-10 baseline of
  PyTorch tutorials and papers (four stages of two BasicBlocks, 11.2M parameters); ``resnet34``
  (21.3M), and ``resnet50``, ``resnet101``, ``resnet152`` of Bottleneck blocks (23.5M, 42.5M, 58.2M).
- ``senet18``: the CIFAR SENet-18 of kuangliu/pytorch-cifar: resnet18 with a squeeze-and-excitation
  gate in every block (11.3M parameters).
- ``mobilenetv2``: the CIFAR MobileNetV2 of kuangliu/pytorch-cifar: 17 inverted-residual blocks
  (1x1 expansion, 3x3 depthwise, 1x1 projection), 2.3M parameters.
- ``shufflenet``: kuangliu/pytorch-cifar's ShuffleNetG2 and ShuffleNetG3 (``groups``): grouped 1x1
  convolutions with a channel shuffle between them around a 3x3 depthwise one; 0.9M parameters.
- ``shufflenetv2``: the CIFAR ShuffleNetV2 of kuangliu/pytorch-cifar: blocks that split the
  channels in two, transform one half (1x1, 3x3 depthwise, 1x1) and shuffle the halves together;
  1.3M parameters at ``net_size=1``.
- ``efficientnetb0``: the CIFAR EfficientNet-B0 of kuangliu/pytorch-cifar: 16 inverted-residual
  blocks (3x3 and 5x5 depthwise convolutions) with SiLU and a squeeze-excitation gate each, dropout
  before the head; 3.6M parameters.
- ``simpledla``: the simplified Deep Layer Aggregation of kuangliu/pytorch-cifar (the network his
  main.py trains): trees of ResNet BasicBlocks whose outputs a 1x1 convolution aggregates; 15.1M
  parameters.
- ``dla``: kuangliu/pytorch-cifar's full Deep Layer Aggregation: simpledla's stages with trees whose
  roots aggregate every node's output; 16.3M parameters.
- ``pnasnet``: kuangliu/pytorch-cifar's PNASNetA and PNASNetB (``cell_type``): cells of separable
  convolutions and max pools summed and joined; 0.13M and 0.45M parameters.
- ``vgg``: kuangliu/pytorch-cifar's VGG11/13/16/19 (``vgg_name``), conv3x3 - BN - ReLU stacks between
  max pools; 20.0M parameters at VGG19.
- ``lenet``: kuangliu/pytorch-cifar's LeNet: two 5x5 conv - relu - max pool stages and three linear
  layers; 62k parameters.
- ``preact_resnet18``: kuangliu/pytorch-cifar's PreActResNet18 (He et al.'s identity mappings: BN and
  ReLU before each convolution); 11.2M parameters; and at his other depths, ``preact_resnet34``,
  ``preact_resnet50``, ``preact_resnet101``, ``preact_resnet152``.
- ``mobilenet``: kuangliu/pytorch-cifar's MobileNet (v1): 13 depthwise-separable blocks; 3.2M parameters.
- ``resnext29``: kuangliu/pytorch-cifar's ResNeXt29 (``cardinality`` x ``bottleneck_width``, 2x64d by
  default): bottleneck blocks around a grouped 3x3 convolution; 9.1M parameters at 2x64d.
- ``regnet``: kuangliu/pytorch-cifar's RegNetX_200MF, RegNetX_400MF and RegNetY_400MF
  (``regnet_name``): bottleneck blocks around grouped 3x3 convolutions, RegNetY with a gate; 2.3M
  parameters at RegNetX_200MF.
- ``googlenet``: kuangliu/pytorch-cifar's GoogLeNet: Inception blocks of four branches joined along
  the channels; 6.2M parameters.
- ``densenet121``: kuangliu/pytorch-cifar's DenseNet-121: dense blocks whose layers join their new
  features to their input; 7.0M parameters. ``densenet169``, ``densenet201`` and ``densenet161``: his deeper
  DenseNets (12.5M, 18.1M, 26.5M).
- ``dpn26``, ``dpn92``: kuangliu/pytorch-cifar's Dual Path Networks: bottleneck blocks around a
  grouped 3x3 whose outputs are partly added to the shortcut (a residual path) and partly joined
  after it (a dense path); 11.6M and 34.2M parameters.
- ``airbench94``: Keller Jordan's airbench94 network (arXiv 2404.00498): a frozen 2x2
  patch-whitening convolution (:func:`init_whitening`), three conv-pool-BN-GELU blocks with
  identity-initialized convolutions, and a 1/9-scaled linear head; its training recipe is
  ``gpuconv.recipes.RECIPES['airbench94']`` (wider, ``RECIPES['airbench95']``).
- ``airbench96``: airbench96's network: the same, wider (128/384/512), each block with a third
  convolution and a residual connection over its last two.

Every model takes a ``seed``: the per-layer seeds derive from it (``numpy.random.SeedSequence``),
so a seed gives bit-identical initial weights on every device.

The package holds a family a module: ``_cs231n`` (seed_net, three_layer_convnet), ``_fast``
(fast_net), ``_resnets`` (resnet18-152, senet18, preact_resnet18-152, resnext29, regnet, simpledla, dla),
``_mobile`` (mobilenet, mobilenetv2, shufflenet, shufflenetv2, efficientnetb0, pnasnet), ``_vgg`` (vgg,
lenet), ``_branches`` (googlenet, densenet121-201, dpn26, dpn92), ``_airbench_nets`` (airbench94,
airbench96, init_whitening) and ``_build`` (the seeds and the input checks they share). Import the
names from ``gpuconv.models``: it holds every one of its modules' names, and an assignment to one
of them reaches the module that uses it (:mod:`gpuconv._package`).
"""
from __future__ import annotations

import inspect

from .. import _package
from . import _airbench_nets, _branches, _build, _cs231n, _fast, _mobile, _resnets, _vgg

_package.gather(__name__, _build, _cs231n, _fast, _resnets, _mobile, _vgg, _branches, _airbench_nets)

__all__ = ["seed_net", "three_layer_convnet", "fast_net", "resnet18", "resnet34", "resnet50", "resnet101",
           "resnet152", "senet18", "mobilenetv2", "shufflenet", "shufflenetv2", "pnasnet", "efficientnetb0",
           "simpledla", "dla", "vgg", "lenet", "preact_resnet18", "preact_resnet34", "preact_resnet50",
           "preact_resnet101", "preact_resnet152", "mobilenet", "resnext29", "regnet", "googlenet", "densenet121",
           "densenet169", "densenet201", "densenet161",
           "dpn26", "dpn92", "airbench94", "airbench96", "init_whitening"]


def from_config(config):
    """The model a checkpoint's ``meta/config`` describes: ``config['constructor']`` (a function of
    this module) called with ``config['kwargs']``, as ``gpuconv train`` records them."""
    if not isinstance(config, dict):
        fix = (f"; to build a network by name, call its constructor, e.g. gpuconv.models.{config}()"
               if isinstance(config, str) and not config.startswith("_") and callable(globals().get(config)) else "")
        raise TypeError(f"config must be a dict {{'constructor': name, 'kwargs': {{...}}}}, as a checkpoint's "
                        f"meta/config records it, got {type(config).__name__} {config!r}{fix}")
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
