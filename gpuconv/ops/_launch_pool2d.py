"""Kernel launchers for max/avg/LP pooling (kernels/pool2d.cu), registered for 'cuda' and 'sim'.

Same arguments, results and caches as the NumPy references in ``pool2d.py``: the max-pool
switches are int32 window-local taps ``fh * KW + fw`` of the output's shape, so a forward on
one path and a backward on the other agree. Pooling here has no padding (the ops take none);
the kernels accept one, passed as 0.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..backend import get_array_module
from ._checks import output_hw
from ._dispatch import register_launcher
from .lp_pool2d import LPPool2dCache
from .pool2d import AvgPool2dCache, MaxPool2dCache


def _dims(x_shape, kernel_size, stride):
    n, c, h, w = x_shape
    oh, ow = output_hw(x_shape, kernel_size, stride)
    return (n, c, oh, ow), tuple(np.int32(v) for v in (n * c, h, w, oh, ow, *kernel_size, *stride, 0, 0))


def _run(kernel, elements, target, args):
    """One thread per element (outputs forward, inputs backward), grid-stride beyond the cap;
    ``args[0]`` (x or dy) gives the dtype and the device."""
    if elements:
        device = kernels.array_device(args[:1])
        grid, block = kernels.grid_1d(elements, kernels.BLOCK, target, device)
        kernels.launch("pool2d", kernel, args[0].dtype, target, grid, block, args, device=device)


@register_launcher("max_pool2d_forward")
def max_pool2d_forward_kernel(x, kernel_size, stride, *, target):
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    out_shape, dims = _dims(x.shape, kernel_size, stride)
    y = xp.empty(out_shape, dtype=x.dtype)
    argmax = xp.empty(out_shape, dtype=np.int32)
    _run("max_pool2d_forward", y.size, target, (x, y, argmax) + dims)
    return y, MaxPool2dCache(tuple(x.shape), kernel_size, stride, argmax)


@register_launcher("max_pool2d_backward")
def max_pool2d_backward_kernel(dy, cache, *, target):
    xp = get_array_module(dy, cache.argmax)
    dy = xp.ascontiguousarray(dy)
    argmax = xp.ascontiguousarray(cache.argmax, dtype=np.int32)
    _, dims = _dims(cache.x_shape, cache.kernel_size, cache.stride)
    dx = xp.empty(cache.x_shape, dtype=dy.dtype)
    _run("max_pool2d_backward", dx.size, target, (dy, argmax, dx) + dims)
    return dx


@register_launcher("avg_pool2d_forward")
def avg_pool2d_forward_kernel(x, kernel_size, stride, *, target):
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    out_shape, dims = _dims(x.shape, kernel_size, stride)
    y = xp.empty(out_shape, dtype=x.dtype)
    _run("avg_pool2d_forward", y.size, target, (x, y) + dims)
    return y, AvgPool2dCache(tuple(x.shape), kernel_size, stride)


@register_launcher("avg_pool2d_backward")
def avg_pool2d_backward_kernel(dy, cache, *, target):
    xp = get_array_module(dy)
    dy = xp.ascontiguousarray(dy)
    _, dims = _dims(cache.x_shape, cache.kernel_size, cache.stride)
    dx = xp.empty(cache.x_shape, dtype=dy.dtype)
    _run("avg_pool2d_backward", dx.size, target, (dy, dx) + dims)
    return dx


@register_launcher("lp_pool2d_forward")
def lp_pool2d_forward_kernel(x, norm_type, kernel_size, stride, *, target):
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    out_shape, dims = _dims(x.shape, kernel_size, stride)
    y = xp.empty(out_shape, dtype=x.dtype)
    _run("lp_pool2d_forward", y.size, target, (x, y, np.float64(norm_type)) + dims)
    return y, LPPool2dCache(x, y, kernel_size, stride, norm_type)


@register_launcher("lp_pool2d_backward")
def lp_pool2d_backward_kernel(dy, cache, *, target):
    xp = get_array_module(dy, cache.x)
    dy, x, y = (xp.ascontiguousarray(a) for a in (dy, cache.x, cache.y))
    _, dims = _dims(x.shape, cache.kernel_size, cache.stride)
    dx = xp.empty(x.shape, dtype=dy.dtype)
    _run("lp_pool2d_backward", dx.size, target, (dy, x, y, dx, np.float64(cache.norm_type)) + dims)
    return dx

