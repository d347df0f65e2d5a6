"""A slice of (N, C, H, W) arrays along one axis, ``torch.narrow(x, dim, start, length)``: the
entries ``start`` to ``start + length - 1`` of axis ``dim``, the rest of the array whole (the
channel split of ShuffleNetV2's blocks: ``x[:, :c]`` and ``x[:, c:]``).

No kernel: the op computes nothing, so it is one copy of the slice on the array's device (NumPy or
CuPy). The output is a new contiguous array in x's layout (gpuconv.layout), never a view of x: a
layer after it may keep it in a cache while x changes. The gradient is zeros of x's shape with dy
in the slice, in dy's layout. Any float dtype passes through bit for bit.

Cache: ``NarrowCache(dim, start, length, shape, dtype)``: the axis (0-3), the slice, x's shape and dtype.
"""
from __future__ import annotations

import numpy as np

from ..backend import array_device_context, get_array_module
from ..layout import NCHW, is_channels_last, nhwc
from ._checks import cache_type, check_cache, check_dy_dtype, check_float

NarrowCache = cache_type("NarrowCache", "dim start length shape dtype", __name__)

_NHWC_AXIS = (0, 3, 1, 2)  # where each NCHW axis lies in the NHWC memory of a channels_last array


def _int(value):
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def check_narrow(dim, start, length, where="narrow") -> tuple:
    """``(dim, start, length)`` as ints, dim in 0-3 (-4 to -1 count from the end), start and length
    >= 0 (a ValueError naming ``where`` otherwise); the fit to a shape is :func:`narrow_forward`'s."""
    for name, value, low in (("dim", dim, -4), ("start", start, 0), ("length", length, 0)):
        if not _int(value) or value < low or (name == "dim" and value > 3):
            rule = {"dim": "an axis of the (N, C, H, W) array: 0 to 3, or -4 to -1 from the end (1: the channels)",
                    "start": "an int >= 0, the first index kept",
                    "length": "an int >= 0, the number of indices kept"}[name]
            raise ValueError(f"{where}: {name}={value!r} must be {rule}")
    return int(dim) % 4, int(start), int(length)


def narrow_forward(x, dim, start, length):
    """``y, cache``: entries ``start`` to ``start + length - 1`` of the 4-D ``x``'s axis ``dim``, as
    ``torch.narrow``; y a new array in x's layout and dtype."""
    check_float("x", x)
    dim, start, length = check_narrow(dim, start, length)
    if x.ndim != 4:
        raise ValueError(f"narrow_forward takes a 4-D (N, C, H, W) array, got shape {tuple(x.shape)}: add the missing "
                         "axes, e.g. x.reshape(n, c, 1, 1) for (N, C) features")
    size = x.shape[dim]
    if start + length > size:
        raise ValueError(f"narrow: start={start} + length={length} = {start + length} exceeds the size {size} of "
                         f"axis {dim} of x (shape {tuple(x.shape)}): keep start + length <= {size}")
    cache = NarrowCache(dim, start, length, tuple(x.shape), x.dtype)
    with array_device_context((x,)):  # the copy on x's GPU (CuPy's current one otherwise)
        if is_channels_last(x):  # sliced in the NHWC memory, copied NHWC, seen as NCHW again
            return nhwc(x)[_index(_NHWC_AXIS[dim], start, length)].copy().transpose(NCHW), cache
        return x[_index(dim, start, length)].copy(), cache


def narrow_backward(dy, cache):
    """``dx``: zeros of the forward input's shape, dy in the slice; in dy's layout."""
    check_cache(cache, NarrowCache, "narrow_forward")
    check_float("dy", dy)
    out = tuple(cache.length if axis == cache.dim else size for axis, size in enumerate(cache.shape))
    if tuple(dy.shape) != out:
        raise ValueError(f"dy must have the forward output's shape {out}, got {tuple(dy.shape)}")
    check_dy_dtype(dy, cache.dtype)
    xp = get_array_module(dy)
    length = cache.length
    with array_device_context((dy,)):
        if is_channels_last(dy):
            n, c, h, w = cache.shape
            dx = xp.zeros((n, h, w, c), dtype=dy.dtype)
            dx[_index(_NHWC_AXIS[cache.dim], cache.start, length)] = nhwc(dy)
            return dx.transpose(NCHW)
        dx = xp.zeros(cache.shape, dtype=dy.dtype)
        dx[_index(cache.dim, cache.start, length)] = dy
        return dx


def _index(axis, start, length):
    index = [slice(None)] * 4
    index[axis] = slice(start, start + length)
    return tuple(index)
