"""Layers: parameters plus a one-line call into ``gpuconv.ops``.

Each layer keeps the cache its op's forward returns and hands it to the op's backward; the
math lives in the ops, never here. ``backward(dy)`` returns ``dx`` and accumulates parameter
gradients into ``Parameter.grad`` (set on the first backward, added afterwards, cleared by
``zero_grad()``), so a layer used twice per step or a gradient summed over micro-batches works.

Caches are kept only in training mode and are dropped by ``backward``: an evaluation pass
holds no activations, and a backward with no forward in front of it is a RuntimeError
instead of a silent gradient of stale data. One layer instance used at two places of one
network would overwrite its own cache: build two layers instead.

Parameters start on the default device (``gpuconv.get_default_device()``; 'cpu' and 'sim'
give NumPy arrays, 'cuda' CuPy ones) in float32 (or, as in PyTorch, on ``device=`` in ``dtype=``
of ``Conv2d``, ``ConvTranspose2d``, ``Linear`` and ``BatchNorm2d``), initialized as PyTorch does
(``kaiming_uniform_(a=sqrt(5))`` for weights, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for biases)
from a seeded NumPy generator, so a seed gives the same network on every device. A layer built
without ``seed=`` takes its seed from NumPy's global generator: ``np.random.seed(s)`` first makes
a whole network reproducible (``torch.manual_seed``'s role).

Beyond the PyTorch-like API: ``Layer.astype(dtype)`` converts parameters, gradients and
buffers (float64 copies for gradient checks), ``Layer.num_parameters()`` counts them,
``Scale(factor)`` multiplies by a constant (the output scaling of fast ResNet-style nets), and
``Concat(*branches)`` joins the branches' outputs along the channels (``torch.cat``'s place in
DenseNet and Inception blocks), ``DualPath(residual, shortcut, split)`` adds the leading ``split``
channels of two paths and joins the rest (a Dual Path Network's block). An error raised inside a
``Sequential``, ``Residual``, ``Concat`` or ``DualPath`` names the layer it came from by its
dotted path (``in layer 'layer1.conv' (Conv2d(8, 16, ...))``), with the op's message after it.

The package holds one concept a module: ``parameter`` (Parameter), ``module`` (Layer, alias Module,
its state dicts and parameter names), ``conv``, ``linear``, ``norm``, ``pooling``, ``activation``
(with Scale), ``shape`` (Identity, Flatten, Unflatten, ChannelShuffle, Narrow), ``dropout``, ``sequential``,
``container`` (ModuleList, ModuleDict), ``branch`` (Residual, Concat, DualPath), ``squeeze_excitation``
(SqueezeExcitation), ``loss``, ``grad`` (zeroing and clipping gradients) and ``passes`` (eval mode,
data inputs, errors located inside containers); ``_construct`` holds what the constructors share.
Import the names from ``gpuconv.layers`` (or ``gpuconv.nn``).
"""
from __future__ import annotations

# Besides __all__, the names gpuconv's own modules take from here: _only and zero_grads (optim),
# switch_to_eval (trainer), call_backward (amp), _Pool2d and _AdaptivePool2d (summary).
from ..ops._checks import only_defaults as _only
from .activation import GELU, LeakyReLU, ReLU, Scale, Sigmoid, SiLU, Tanh
from .branch import Concat, DualPath, Residual
from .container import ModuleDict, ModuleList
from .conv import Conv2d, ConvTranspose2d
from .dropout import Dropout
from .grad import clip_grad_norm_, clip_grad_value_, zero_grads
from .linear import Linear
from .loss import CrossEntropyLoss
from .module import Layer, LoadResult, Module, StateDictKeyError
from .norm import BatchNorm2d, GroupNorm
from .parameter import Parameter
from .passes import call_backward, eval_mode, input_is_data, switch_to_eval
from .pooling import (AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, LPPool2d, MaxPool2d, _AdaptivePool2d,
                      _Pool2d)
from .sequential import Sequential
from .shape import ChannelShuffle, Flatten, Identity, Narrow, Unflatten
from .squeeze_excitation import SqueezeExcitation

__all__ = ["Parameter", "Layer", "Module", "Identity", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d",
           "LPPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "ReLU", "GELU", "LeakyReLU", "SiLU", "Sigmoid", "Tanh",
           "Flatten", "Unflatten", "ChannelShuffle", "Narrow", "Linear", "BatchNorm2d", "GroupNorm", "Dropout", "Scale",
           "Sequential", "ModuleList", "ModuleDict", "Residual", "Concat", "DualPath", "SqueezeExcitation",
           "CrossEntropyLoss", "LoadResult", "StateDictKeyError", "clip_grad_norm_", "clip_grad_value_", "eval_mode", "input_is_data"]
