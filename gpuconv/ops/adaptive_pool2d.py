"""Adaptive average and max pooling to any output size: PyTorch's ``adaptive_avg_pool2d`` and
``adaptive_max_pool2d``.

Output row ``i`` of ``OH`` pools the input rows ``floor(i*H/OH)`` to ``ceil((i+1)*H/OH) - 1``,
and the columns likewise. When ``OH`` divides ``H`` (and ``OW`` divides ``W``) these are equal,
disjoint windows of ``H/OH`` rows: the ops are then :func:`avg_pool2d_forward` /
:func:`max_pool2d_forward` with kernel = stride = ``(H/OH, W/OW)``, the same caches, kernels and
bits (``AdaptiveAvgPool2d(1)``, a ResNet's global pool, is one of them). Otherwise windows differ
in size and may overlap (7x7 from a 1x1 input repeats the pixel, as a torchvision VGG's head does
on CIFAR's images; 3 from 5 pools rows 0-1, 1-3 and 3-4), computed here: a kernel per direction on
'cuda' and 'sim', the references below on the host.

Precision (gpuconv.precision), as for fixed windows: bfloat16/float16 inputs are upcast to float32
and each output rounded once; an average is the float32 sum of its window, in row-major order,
times the float32 reciprocal of the window's size; a maximum is exact, the first maximum in
row-major order winning ties, a NaN winning over numbers (the first NaN), a zero maximum +0.0.
Gradients: an input's is the sum, over the outputs whose windows hold it (in row-major order), of
that output's dy times its own reciprocal (average), or dy where its switch points at the input
(max).

Cache: ``AdaptivePool2dCache(x_shape, output_size, argmax, channels_last, dtype)``; ``argmax`` is
None for the average, and for the max the int32 index ``ih * W + iw`` within its (n, c) plane of
each output's maximum (PyTorch's ``return_indices``), of the output's shape. For sizes that divide,
the caches are the fixed-window ops' (``AvgPool2dCache``, ``MaxPool2dCache``), and the backwards
take either.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import backend, layout
from ..backend import get_array_module
from ..precision import round_once, upcast
from . import _dispatch
from ._checks import (cache_type, cached, check_cache, check_dy_dtype, check_float, check_output_extent, check_rank,
                      only_defaults)
from ._pool2d_reference import _window_sums
from .pool2d import (AvgPool2dCache, MaxPool2dCache, avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward,
                     max_pool2d_forward)

AdaptivePool2dCache = cache_type("AdaptivePool2dCache", "x_shape output_size argmax channels_last dtype", __name__)


def adaptive_output_size(x_shape, output_size) -> tuple[int, int]:
    """``(OH, OW)`` for ``output_size``: an int, or an (h, w) pair whose None entries keep the
    input's size (PyTorch's forms)."""
    pair = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(pair) != 2:
        raise ValueError(f"output_size must be an int or an (h, w) pair, got {output_size!r}")
    out = []
    for v, size, axis in zip(pair, x_shape[2:], ("height", "width")):
        if v is None:
            v = size
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"output_size must hold integers >= 1 (or None: the input's size), got {output_size!r}")
        out.append(check_output_extent(int(v), axis, "ask for a smaller output_size"))
    return tuple(out)


def _check(x, output_size):
    check_float("x", x)
    check_rank("x", x, 4, "N, C, H, W")
    if 0 in x.shape[2:]:
        raise ValueError(f"x has no pixels to pool (shape {tuple(x.shape)}): adaptive pooling needs H and W >= 1")
    return adaptive_output_size(x.shape, output_size)


def _fixed(x_shape, out_hw):
    """The fixed window (= stride) when the output divides the input, else None."""
    h, w = x_shape[2:]
    return (h // out_hw[0], w // out_hw[1]) if h % out_hw[0] == 0 and w % out_hw[1] == 0 else None


def adaptive_avg_pool2d_forward(x, output_size):
    """``y, cache``: the mean of each adaptive window, of shape (N, C, OH, OW)."""
    return _forward("avg", x, output_size)


def adaptive_avg_pool2d_backward(dy, cache):
    """``dx``: each ``dy`` entry spread evenly over its window."""
    return _backward("avg", dy, cache)


def adaptive_max_pool2d_forward(x, output_size, *, return_indices=False):
    """``y, cache``: the maximum of each adaptive window, of shape (N, C, OH, OW); ``return_indices``
    False only, as by AdaptiveMaxPool2d (the switches are in the cache)."""
    if return_indices is not False:
        only_defaults("adaptive_max_pool2d_forward", return_indices=(return_indices, False))
    return _forward("max", x, output_size)


def adaptive_max_pool2d_backward(dy, cache):
    """``dx``: each ``dy`` entry routed to the input that won its window."""
    return _backward("max", dy, cache)


def _forward(kind, x, output_size):
    out_hw = _check(x, output_size)
    window = _fixed(x.shape, out_hw)
    if window is not None:
        return _FIXED[kind][0](x, window, window)
    y, cache = _dispatch.call(f"adaptive_{kind}_pool2d_forward", backend.kernel_target(x), _REFERENCE[kind][0],
                              x, out_hw)
    return layout.like(x, y), cache


def _backward(kind, dy, cache):
    fixed_backward, fixed_cache = _FIXED[kind][1:]
    if isinstance(cache, fixed_cache):
        return fixed_backward(dy, cache)
    _check_dy(dy, cache, f"adaptive_{kind}_pool2d_forward")
    if (cache.argmax is None) != (kind == "avg"):
        other = "max" if kind == "avg" else "avg"
        raise TypeError(f"this cache is adaptive_{other}_pool2d_forward's: pass it to adaptive_{other}_pool2d_backward")
    target = backend.kernel_target(dy, cache.argmax, names=("dy", cached("argmax")))
    dx = _dispatch.call(f"adaptive_{kind}_pool2d_backward", target, _REFERENCE[kind][1], dy, cache)
    return layout.to_channels_last(dx) if cache.channels_last else dx


def _check_dy(dy, cache, forward_name):
    check_cache(cache, AdaptivePool2dCache, forward_name)
    check_float("dy", dy)
    expected = tuple(cache.x_shape[:2]) + tuple(cache.output_size)
    if tuple(dy.shape) != expected:
        raise ValueError(f"dy must have the forward output's shape {expected}, got {tuple(dy.shape)}")
    check_dy_dtype(dy, cache.dtype)


def windows(size, out):
    """``[(start, stop), ...]``: the input range each of ``out`` outputs pools along an axis of ``size``."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def _cells(x_shape, out_hw):
    """``(i, j, rows, cols)`` of every output in row-major order, its window as two slices."""
    for i, (h0, h1) in enumerate(windows(x_shape[2], out_hw[0])):
        for j, (w0, w1) in enumerate(windows(x_shape[3], out_hw[1])):
            yield i, j, slice(h0, h1), slice(w0, w1)


def _avg_forward_reference(x, out_hw):
    xc = upcast(x)
    xp, dt = get_array_module(xc), xc.dtype.type
    y = xp.empty(x.shape[:2] + out_hw, dtype=xc.dtype)
    for i, j, rows, cols in _cells(x.shape, out_hw):
        # the window's taps added one at a time onto +0.0, in row-major order (the kernel's): a
        # fixed window's sum over the window alone
        size = (rows.stop - rows.start, cols.stop - cols.start)
        s = _window_sums(xp, xc[:, :, rows, cols], size, size, (1, 1))
        y[:, :, i, j] = s[:, :, 0, 0] * dt(1.0 / (size[0] * size[1]))
    return round_once(y, x.dtype), AdaptivePool2dCache(tuple(x.shape), out_hw, None, layout.is_channels_last(x),
                                                       x.dtype)


def _avg_backward_reference(dy, cache):
    dyc = upcast(dy)
    xp, dt = get_array_module(dyc), dyc.dtype.type
    dx = xp.zeros(cache.x_shape, dtype=dyc.dtype)
    for i, j, rows, cols in _cells(cache.x_shape, cache.output_size):
        share = dyc[:, :, i, j] * dt(1.0 / ((rows.stop - rows.start) * (cols.stop - cols.start)))
        dx[:, :, rows, cols] += share[:, :, None, None]
    return round_once(dx, dy.dtype)


def _max_forward_reference(x, out_hw):
    xc = upcast(x)
    xp = get_array_module(xc)
    w = x.shape[3]
    y = xp.empty(x.shape[:2] + out_hw, dtype=xc.dtype)
    argmax = xp.empty(x.shape[:2] + out_hw, dtype=np.int32)
    for i, j, rows, cols in _cells(x.shape, out_hw):
        best = xc[:, :, rows.start, cols.start].copy()
        at = xp.full(x.shape[:2], rows.start * w + cols.start, dtype=np.int32)
        for ih in range(rows.start, rows.stop):
            for iw in range(cols.start, cols.stop):
                v = xc[:, :, ih, iw]
                at = xp.where(~(v <= best) & (best == best), np.int32(ih * w + iw), at)  # first max, first NaN
                best = xp.where((v > best) | (v != v), v, best)
        y[:, :, i, j] = xp.where(best != best, best, best + best.dtype.type(0))  # a zero maximum is +0.0
        argmax[:, :, i, j] = at
    return round_once(y, x.dtype), AdaptivePool2dCache(tuple(x.shape), out_hw, argmax,
                                                       layout.is_channels_last(x), x.dtype)


def _max_backward_reference(dy, cache):
    dyc = upcast(dy)
    xp = get_array_module(dyc, cache.argmax)
    n, c, h, w = cache.x_shape
    dx = xp.zeros((n * c, h * w), dtype=dyc.dtype)
    planes = xp.arange(n * c)
    for i, j, _, _ in _cells(cache.x_shape, cache.output_size):  # one switch per plane: no index repeats
        dx[planes, cache.argmax[:, :, i, j].reshape(-1)] += dyc[:, :, i, j].reshape(-1)
    return round_once(dx.reshape(cache.x_shape), dy.dtype)


# kind -> the fixed-window ops (forward, backward, cache type), and the references (forward, backward)
_FIXED = {"avg": (avg_pool2d_forward, avg_pool2d_backward, AvgPool2dCache),
          "max": (max_pool2d_forward, max_pool2d_backward, MaxPool2dCache)}
_REFERENCE = {"avg": (_avg_forward_reference, _avg_backward_reference),
              "max": (_max_forward_reference, _max_backward_reference)}


# The kernel launchers, for the 'cuda' and 'sim' targets; last, as they import the names above.
from . import _launch_adaptive_pool2d  # noqa: E402,F401  (registration)
