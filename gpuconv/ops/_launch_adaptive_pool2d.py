"""Kernel launchers for adaptive pooling to sizes that do not divide the input (kernels/pool2d.cu's
adaptive_* kernels), registered for 'cuda' and 'sim'; the same arguments, results and caches as
the references in ``adaptive_pool2d.py``. Layouts as for the fixed-window pools: a channels_last
input is pooled as it lies and its outputs and gradients come back channels_last."""
from __future__ import annotations

import numpy as np

from .. import kernels, layout
from ..backend import get_array_module
from ._dispatch import register_launcher
from ._launch_pool2d import _inputs, _run
from .adaptive_pool2d import AdaptivePool2dCache


def _dims(x_shape, out_hw):
    return kernels.int32_args((*x_shape, *out_hw))  # made once per geometry


def _bounds_fit(x_shape, out_hw):
    """Whether the kernels' 32-bit window bounds hold: (in + 1) * (out + 1) <= 2^32 along both axes
    (true for any sizes up to 65535); larger ones run the reference."""
    return all((i + 1) * (o + 1) <= 2**32 for i, o in zip(x_shape[2:], out_hw))


@register_launcher("adaptive_avg_pool2d_forward")
def adaptive_avg_pool2d_forward_kernel(x, out_hw, *, target):
    if not _bounds_fit(x.shape, out_hw):
        return NotImplemented
    xp = get_array_module(x)
    (x,), cl = _inputs(x)
    y = layout.empty(xp, x.shape[:2] + out_hw, x.dtype, cl)
    _run("adaptive_avg_pool2d_forward", y.size, target, (x, y), _dims(x.shape, out_hw), cl, vec=False)
    return y, AdaptivePool2dCache(tuple(x.shape), out_hw, None, cl, x.dtype)


@register_launcher("adaptive_max_pool2d_forward")
def adaptive_max_pool2d_forward_kernel(x, out_hw, *, target):
    if not _bounds_fit(x.shape, out_hw):
        return NotImplemented
    xp = get_array_module(x)
    (x,), cl = _inputs(x)
    shape = x.shape[:2] + out_hw
    y, argmax = layout.empty(xp, shape, x.dtype, cl), layout.empty(xp, shape, np.int32, cl)
    _run("adaptive_max_pool2d_forward", y.size, target, (x, y, argmax), _dims(x.shape, out_hw), cl, vec=False)
    return y, AdaptivePool2dCache(tuple(x.shape), out_hw, argmax, cl, x.dtype)


@register_launcher("adaptive_avg_pool2d_backward")
def adaptive_avg_pool2d_backward_kernel(dy, cache, *, target):
    if not _bounds_fit(cache.x_shape, cache.output_size):
        return NotImplemented
    xp = get_array_module(dy)
    (dy,), cl = _inputs(dy, was_channels_last=cache.channels_last)
    dx = layout.empty(xp, cache.x_shape, dy.dtype, cl)
    _run("adaptive_avg_pool2d_backward", dx.size, target, (dy, dx), _dims(cache.x_shape, cache.output_size), cl,
         vec=False)
    return dx


@register_launcher("adaptive_max_pool2d_backward")
def adaptive_max_pool2d_backward_kernel(dy, cache, *, target):
    if not _bounds_fit(cache.x_shape, cache.output_size):
        return NotImplemented
    xp = get_array_module(dy, cache.argmax)
    (dy, argmax), cl = _inputs(dy, cache.argmax.astype(np.int32, copy=False), was_channels_last=cache.channels_last)
    dx = layout.empty(xp, cache.x_shape, dy.dtype, cl)
    _run("adaptive_max_pool2d_backward", dx.size, target, (dy, argmax, dx), _dims(cache.x_shape, cache.output_size),
         cl, vec=False)
    return dx
