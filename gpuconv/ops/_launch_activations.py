"""Kernel launchers for LeakyReLU, Sigmoid, Tanh and SiLU (kernels/activations.cu), registered for
'cuda' and 'sim'.

Same arguments, results and caches as the NumPy references in ``activations.py``; channels_last
arrays stay channels_last (an elementwise kernel walks memory in any order).
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ._dispatch import register_launcher
from .activations import LeakyReluCache, SigmoidCache, SiluCache, TanhCache


def _forward(kernel, x, target, scalars=()):
    x, y = kernels.contiguous_like(x, keep_channels_last=True)
    kernels.launch_1d("activations", kernel, target, (x, y), scalars)
    return x, y


def _backward(kernel, dy, saved, target, scalars=()):
    dy, saved, dx = kernels.contiguous_like(dy, saved, keep_channels_last=True)
    kernels.launch_1d("activations", kernel, target, (dy, saved, dx), scalars)
    return dx


@register_launcher("leaky_relu_forward")
def leaky_relu_forward_kernel(x, negative_slope, *, target):
    x, y = _forward("leaky_relu_forward", x, target, (np.float64(negative_slope),))
    return y, LeakyReluCache(x, negative_slope)


@register_launcher("leaky_relu_backward")
def leaky_relu_backward_kernel(dy, cache, *, target):
    return _backward("leaky_relu_backward", dy, cache.x, target, (np.float64(cache.negative_slope),))


@register_launcher("sigmoid_forward")
def sigmoid_forward_kernel(x, *, target):
    y = _forward("sigmoid_forward", x, target)[1]
    return y, SigmoidCache(y)


@register_launcher("sigmoid_backward")
def sigmoid_backward_kernel(dy, cache, *, target):
    return _backward("sigmoid_backward", dy, cache.y, target)


@register_launcher("tanh_forward")
def tanh_forward_kernel(x, *, target):
    y = _forward("tanh_forward", x, target)[1]
    return y, TanhCache(y)


@register_launcher("tanh_backward")
def tanh_backward_kernel(dy, cache, *, target):
    return _backward("tanh_backward", dy, cache.y, target)


@register_launcher("silu_forward")
def silu_forward_kernel(x, *, target):
    x, y = _forward("silu_forward", x, target)
    return y, SiluCache(x)


@register_launcher("silu_backward")
def silu_backward_kernel(dy, cache, *, target):
    return _backward("silu_backward", dy, cache.x, target)
