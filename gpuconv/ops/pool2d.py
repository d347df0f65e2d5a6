"""2-D max and average pooling over NCHW tensors (no padding; stride defaults to the kernel size).

Both directions loop over the KH*KW window taps, each step a whole-tensor strided slice: a
2x2 pool is 4 vectorized passes, never a loop over pixels. Within one tap, distinct output
positions read distinct input pixels, so the backward's ``dx[tap slice] += ...`` is an exact
scatter-add even when windows overlap (3x3 stride 2), without ``np.add.at``.

Caches (shared with the kernel launchers, see ``_dispatch``):
``MaxPool2dCache(x_shape, kernel_size, stride, argmax)`` where ``argmax`` is int32 of the output's
shape holding the window-local index ``kh * KW + kw`` of each maximum (the "switches"; ties go to
the first tap in row-major order; a NaN in a window makes its output NaN), and
``AvgPool2dCache(x_shape, kernel_size, stride)``; sizes are (h, w) pairs.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from .. import backend
from ..backend import get_array_module
from . import _dispatch
from ._checks import check_float, check_rank, output_hw, pair

MaxPool2dCache = namedtuple("MaxPool2dCache", "x_shape kernel_size stride argmax")
AvgPool2dCache = namedtuple("AvgPool2dCache", "x_shape kernel_size stride")


def max_pool2d_forward(x, kernel_size=2, stride=None):
    """``y, cache``: the maximum of each KH x KW window, of shape (N, C, OH, OW)."""
    kernel_size, stride = _check_pool_args(x, kernel_size, stride)
    target = backend.kernel_target(x)
    return _dispatch.call("max_pool2d_forward", target, _max_pool2d_forward_reference, x, kernel_size, stride)


def max_pool2d_backward(dy, cache):
    """``dx``: each ``dy`` entry routed to the input pixel that won its window."""
    _check_pool_dy(dy, cache)
    target = backend.kernel_target(dy, cache.argmax)
    return _dispatch.call("max_pool2d_backward", target, _max_pool2d_backward_reference, dy, cache)


def avg_pool2d_forward(x, kernel_size=2, stride=None):
    """``y, cache``: the mean of each KH x KW window, of shape (N, C, OH, OW)."""
    kernel_size, stride = _check_pool_args(x, kernel_size, stride)
    target = backend.kernel_target(x)
    return _dispatch.call("avg_pool2d_forward", target, _avg_pool2d_forward_reference, x, kernel_size, stride)


def avg_pool2d_backward(dy, cache):
    """``dx``: each ``dy`` entry spread evenly over its window."""
    _check_pool_dy(dy, cache)
    target = backend.kernel_target(dy)
    return _dispatch.call("avg_pool2d_backward", target, _avg_pool2d_backward_reference, dy, cache)


def _check_pool_args(x, kernel_size, stride):
    check_float("x", x)
    check_rank("x", x, 4, "N, C, H, W")
    kernel_size = pair("kernel_size", kernel_size, minimum=1)
    stride = kernel_size if stride is None else pair("stride", stride, minimum=1)
    output_hw(x.shape, kernel_size, stride, (0, 0))
    return kernel_size, stride


def _check_pool_dy(dy, cache):
    check_float("dy", dy)
    n, c, h, w = cache.x_shape
    expected = (n, c) + output_hw(cache.x_shape, cache.kernel_size, cache.stride, (0, 0))
    if tuple(dy.shape) != expected:
        raise ValueError(f"dy must have the forward output's shape {expected}, got {tuple(dy.shape)}")


def _taps(kernel_size, stride, out_hw):
    """(tap index, slice of the input that tap reads for every output position)."""
    (kh, kw), (sh, sw), (oh, ow) = kernel_size, stride, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i * kw + j, (slice(None), slice(None), slice(i, i + sh * oh, sh), slice(j, j + sw * ow, sw))


def _max_pool2d_forward_reference(x, kernel_size, stride):
    xp = get_array_module(x)
    out_hw = output_hw(x.shape, kernel_size, stride, (0, 0))
    y = argmax = None
    for t, sl in _taps(kernel_size, stride, out_hw):
        v = x[sl]
        if y is None:
            y = v.copy()
            argmax = xp.zeros(y.shape, dtype=np.int32)
            continue
        # In-place copyto/maximum instead of two xp.where: 45 vs 68 ms on a CIFAR 128x64x32x32 batch.
        xp.copyto(argmax, np.int32(t), where=v > y)
        xp.maximum(y, v, out=y)  # NaN-propagating, as PyTorch
    return y, MaxPool2dCache(tuple(x.shape), kernel_size, stride, argmax)


def _max_pool2d_backward_reference(dy, cache):
    xp = get_array_module(dy, cache.argmax)
    dx = xp.zeros(cache.x_shape, dtype=dy.dtype)
    for t, sl in _taps(cache.kernel_size, cache.stride, dy.shape[2:]):
        dx[sl] += dy * (cache.argmax == t)  # a multiply by the mask is 1.5x faster than xp.where
    return dx


def _avg_pool2d_forward_reference(x, kernel_size, stride):
    xp = get_array_module(x)
    out_hw = output_hw(x.shape, kernel_size, stride, (0, 0))
    y = xp.zeros(x.shape[:2] + out_hw, dtype=x.dtype)
    for _, sl in _taps(kernel_size, stride, out_hw):
        y += x[sl]
    y *= x.dtype.type(1.0 / (kernel_size[0] * kernel_size[1]))
    return y, AvgPool2dCache(tuple(x.shape), kernel_size, stride)


def _avg_pool2d_backward_reference(dy, cache):
    xp = get_array_module(dy)
    dx = xp.zeros(cache.x_shape, dtype=dy.dtype)
    share = dy * dy.dtype.type(1.0 / (cache.kernel_size[0] * cache.kernel_size[1]))
    for _, sl in _taps(cache.kernel_size, cache.stride, dy.shape[2:]):
        dx[sl] += share
    return dx
