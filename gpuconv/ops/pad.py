"""Spatial padding of (N, C, H, W) arrays, PyTorch's ``F.pad(x, (left, right, top, bottom), mode)``:
the padding of a convolution whose ``padding_mode`` is not 'zeros' (``gpuconv.layers.Conv2d``).

Modes: 'constant' (zeros), 'reflect' (mirrored about the edge row, which is not repeated: NumPy's
'reflect'), 'replicate' (the edge row repeated: NumPy's 'edge') and 'circular' (the rows of the
other side: NumPy's 'wrap'). As in PyTorch, reflect padding must be smaller than the axis it pads,
circular padding at most its size, and replicate needs a non-empty axis.

The forward is a gather: per axis, an index array from padded position to the source position
it copies, one fancy-indexing read ``x[:, :, rows, cols]``. The backward is its adjoint: the
middle of ``dy`` plus each padded block of ``dy`` added onto the rows (then columns) it copied,
a few whole-array slice additions per axis (no loop over pixels). The same array operations run
on NumPy and on CuPy (the 'sim' target's arrays are NumPy); outputs keep the input's layout
(gpuconv.layout). bfloat16/float16 gradients are added in float32 and rounded once.

Cache: ``PadCache(pad, mode, shape, dtype)``: the padding, the mode, the input's shape and
dtype (dx's).
"""
from __future__ import annotations

import numpy as np

from ..backend import array_device_context, get_array_module
from ..layout import is_channels_last, like, pad_zeros
from ..precision import compute_dtype, round_once
from ._checks import cache_type, check_cache, check_dy_dtype, check_float

PadCache = cache_type("PadCache", "pad mode shape dtype", __name__)

MODES = ("constant", "reflect", "replicate", "circular")


def check_pad(pad, mode, shape):
    """``pad`` as a tuple (left, right, top, bottom) of ints >= 0 that ``mode`` can take for an input of
    ``shape`` (N, C, H, W); a ValueError naming the problem and the fix otherwise."""
    if mode not in MODES:
        raise ValueError(f"pad: mode={mode!r} is not one of {MODES} (PyTorch's F.pad modes; 'constant' pads zeros)")
    if isinstance(pad, int) and not isinstance(pad, bool):
        pad = (pad,) * 4
    if (not isinstance(pad, (tuple, list)) or len(pad) != 4
            or any(isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0 for p in pad)):
        raise ValueError(f"pad: pad={pad!r} must be four ints >= 0, (left, right, top, bottom) as in F.pad, or one int "
                         "for all four sides")
    pad = tuple(int(p) for p in pad)
    for (before, after), axis, name in ((pad[2:], 2, "height"), (pad[:2], 3, "width")):
        n = shape[axis]
        if mode == "reflect" and max(before, after) >= n and before + after:
            raise ValueError(f"pad: reflect padding ({before}, {after}) of the {name} must be smaller than the input's "
                             f"{name} {n} (as in PyTorch: the mirror does not repeat the edge row): use a smaller "
                             "padding or mode 'replicate'")
        if mode == "circular" and max(before, after) > n:
            raise ValueError(f"pad: circular padding ({before}, {after}) of the {name} must be at most the input's "
                             f"{name} {n} (as in PyTorch: it would wrap around more than once): use a smaller padding")
        if mode == "replicate" and n == 0:
            raise ValueError(f"pad: replicate padding of the {name} needs a non-empty input, got {name} 0")
    return pad


def _source(xp, n, before, after, mode):
    """The index array of padded positions 0 .. before + n + after - 1 along an axis of size ``n``:
    which input position each copies, computed where the array lives (no host-to-device copy,
    which a captured CUDA graph could not replay)."""
    i = xp.arange(-before, n + after)
    if mode == "reflect":  # (before and after < n: one reflection at each end)
        return (n - 1) - xp.abs((n - 1) - xp.abs(i))
    if mode == "replicate":
        return xp.clip(i, 0, n - 1)
    return i % n  # circular


def pad_forward(x, pad, mode="constant"):
    """``y, cache``: the 4-D ``x`` padded by ``pad = (left, right, top, bottom)`` in ``mode``
    ('constant' zeros, 'reflect', 'replicate', 'circular'), as PyTorch's F.pad; y in x's layout."""
    check_float("x", x)
    if x.ndim != 4:
        raise ValueError(f"pad_forward takes a 4-D (N, C, H, W) array, got shape {tuple(x.shape)}")
    pad = check_pad(pad, mode, x.shape)
    left, right, top, bottom = pad
    cache = PadCache(pad, mode, tuple(x.shape), x.dtype)
    if mode == "constant":
        return pad_zeros(x, ((top, bottom), (left, right))), cache
    xp = get_array_module(x)
    _, _, h, w = x.shape
    with array_device_context((x,)):
        rows, cols = _source(xp, h, top, bottom, mode), _source(xp, w, left, right, mode)
        y = x[:, :, rows[:, None], cols[None, :]]
        return like(x, y if is_channels_last(x) else xp.ascontiguousarray(y)), cache


def pad_backward(dy, cache):
    """``dx``: the adjoint of :func:`pad_forward` (the gradient of each padded entry added to the
    input entry it copied; zeros padding dropped), in x's shape and dtype, in dy's layout."""
    check_cache(cache, PadCache, "pad_forward")
    check_float("dy", dy)
    left, right, top, bottom = cache.pad
    n, c, h, w = cache.shape
    want = (n, c, h + top + bottom, w + left + right)
    if tuple(dy.shape) != want:
        raise ValueError(f"dy must have the forward output's shape {want}, got {tuple(dy.shape)}")
    check_dy_dtype(dy, cache.dtype)
    xp = get_array_module(dy)
    with array_device_context((dy,)):
        if cache.mode == "constant":
            dx = dy[:, :, top:top + h, left:left + w]
        else:
            t = _fold(xp, dy.astype(compute_dtype(dy.dtype)), 3, left, right, w, cache.mode)
            dx = round_once(_fold(xp, t, 2, top, bottom, h, cache.mode), dy.dtype)
        return like(dy, dx if is_channels_last(dy) else xp.ascontiguousarray(dx))


def _fold(xp, d, axis, before, after, size, mode):
    """``d`` folded back along ``axis`` onto ``size`` positions: its middle, plus each padded block
    added to the positions it was copied from (a new array; ``d`` itself is not written)."""
    def part(lo, hi):
        index = [slice(None)] * 4
        index[axis] = slice(lo, hi)
        return tuple(index)

    def flip(a):
        return xp.flip(a, axis=axis)

    out = d[part(before, before + size)].copy()
    head, tail = d[part(0, before)], d[part(before + size, before + size + after)]
    if mode == "reflect":  # position i < before copies before - i; before + size + j copies size - 2 - j
        out[part(1, before + 1)] += flip(head)
        out[part(size - 1 - after, size - 1)] += flip(tail)
    elif mode == "replicate":  # the edge position, repeated
        if before:
            out[part(0, 1)] += head.sum(axis=axis, keepdims=True)
        if after:
            out[part(size - 1, size)] += tail.sum(axis=axis, keepdims=True)
    else:  # circular: position i < before copies size - before + i; before + size + j copies j
        out[part(size - before, size)] += head
        out[part(0, after)] += tail
    return out
