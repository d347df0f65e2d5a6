"""Kernel launchers for group normalization (kernels/groupnorm.cu), registered for 'cuda' and 'sim'.

Same arguments, results and cache (``GroupNormCache``) as the NumPy reference in ``groupnorm.py``,
so a forward on one path and a backward on the other agree: the cache keeps x (as the kernels read
it), the mean and rstd per (sample, group), and the backward kernels recompute xhat as the
forward's. A missing weight or bias is passed to the kernels as ones or zeros.

Layouts: a channels_last x (gpuconv.layout) is normalized as it lies, and y and dx come back
channels_last; anything else is made C-contiguous (NCHW).

Every sum has a fixed order that depends on the shape only (see the header of
kernels/groupnorm.cu), so every device and the simulator sum alike.
"""
from __future__ import annotations

import numpy as np

from .. import kernels, layout
from ..backend import get_array_module
from ..precision import compute_dtype
from ._dispatch import register_launcher
from .groupnorm import GroupNormCache

LANES = kernels.defines("groupnorm.cu")["GN_LANES"]  # channels per block of the NHWC backward sums
MIN_CHUNK = 4096          # positions per block of the elementwise kernels: 16 per thread of 256
# The per-(sample, channel) sums split an image's pixels over several blocks when the samples and
# channels give fewer than SPREAD_BLOCKS blocks (a small batch, channels_last's 32 channels a
# block), each block taking at least MIN_SPLIT_VALUES values (4 per thread of 256). A rule of the
# shape alone, so every GPU sums in the same order.
SPREAD_BLOCKS = 1024
MIN_SPLIT_VALUES = 1024
# An image's positions are int in the kernels (chunk ends reach C * H * W + chunk - 1): a wide margin.
_MAX_COUNT = 2**30


def splits(n, c, hw, channels_last=False):
    """``(splits, span)``: the per-(sample, channel) sums cut each image's ``hw`` pixels into
    ``splits`` spans of ``span`` pixels (the last one may be shorter), enough to give the GPU
    about SPREAD_BLOCKS blocks where N * C (NCHW) or N * C / 32 (NHWC) blocks would not, none
    with fewer than MIN_SPLIT_VALUES values."""
    units = n * (-(-c // LANES) if channels_last else c)
    per_pixel = LANES if channels_last else 1
    most = max(1, min(kernels.GRID_Y_MAX, hw * per_pixel // MIN_SPLIT_VALUES, -(-SPREAD_BLOCKS // max(units, 1))))
    span = -(-hw // most) if hw else 1
    return (-(-hw // span) if hw else 1), span


def geometry(kernel, *, n=0, c=0, groups=1, hw=0, channels_last=False):
    """(grid, block, extra) of each groupnorm kernel. The per-(sample, channel) reductions
    (``channel_stats``, ``backward_sums``): one block per (sample, channel) NCHW, per (sample,
    32 channels) NHWC, times the :func:`splits` of the pixels (grid y); extra = (span,). The
    per-(sample, group) and per-channel steps (``group_stats``, ``backward_reduce``): one warp
    each. The elementwise kernels (``normalize``, ``backward_dx``): extra = (chunk,), the
    positions per block; grid (N * G, chunks) over each group's values NCHW, (N, chunks) over
    each image's NHWC, both contiguous in memory."""
    block = (kernels.BLOCK, 1, 1)
    if kernel in ("groupnorm_normalize", "groupnorm_backward_dx"):
        count, rows = (c * hw, n) if channels_last else ((c // groups) * hw, n * groups)
        chunks = max(1, min(kernels.GRID_Y_MAX, -(-count // MIN_CHUNK)))
        chunk = -(-count // chunks)
        return (rows, -(-count // chunk), 1), block, (chunk,)
    if kernel in ("groupnorm_channel_stats", "groupnorm_backward_sums"):
        parts, span = splits(n, c, hw, channels_last)
        return (n * (-(-c // LANES) if channels_last else c), parts, 1), block, (span,)
    warps = kernels.BLOCK // 32
    if kernel == "groupnorm_group_stats":
        return (-(-(n * groups) // warps), 1, 1), block, ()
    if kernel == "groupnorm_backward_reduce":
        return (-(-(c + n * groups) // warps), 1, 1), block, ()
    raise ValueError(f"no groupnorm kernel {kernel!r}")


def _fits(n, c, groups, hw):
    """Whether the kernels' int positions (an image's C * H * W) and CUDA's grid limits hold."""
    return c * hw <= _MAX_COUNT and n * max(c, groups) <= kernels.GRID_X_MAX and c + n * groups <= 2**31 // 32


def _layout(*arrays, was_channels_last=False):
    """(arrays in one layout, channels_last?), as the batch-norm launchers decide it; 1 x 1 maps
    ((N, C) features among them), whose two layouts are the same memory, as channels_last: the
    per-channel sums then take 32 channels a block, not a block of 256 threads per value."""
    if layout.run_channels_last(*arrays) or (was_channels_last and all(map(layout.nhwc_memory, arrays))):
        return arrays, True
    xp = get_array_module(*arrays)
    return tuple([xp.ascontiguousarray(a) for a in arrays]), arrays[0].shape[2] * arrays[0].shape[3] == 1


def _launch(kernel, dtype, target, args, device, cl=True, **shape):
    """``kernel(*args, *extra, channels_last)`` (without the flag when ``cl`` is False), on the
    memory order of the 4-D arrays among ``args`` and the grid of :func:`geometry`."""
    grid, block, extra = geometry(kernel, **shape)
    args = tuple([layout.memory_order(a) if getattr(a, "ndim", 0) == 4 else a for a in args])
    flag = (np.int32(shape["channels_last"]),) if cl else ()
    kernels.launch("groupnorm", kernel, dtype, target, grid, block, args + tuple(np.int32(e) for e in extra) + flag,
                   device=device)


def _params(xp, weight, bias, c, cd):
    w = xp.ones(c, cd) if weight is None else xp.ascontiguousarray(weight, dtype=cd)
    b = xp.zeros(c, cd) if bias is None else xp.ascontiguousarray(bias, dtype=cd)
    return w, b


@register_launcher("groupnorm_forward")
def groupnorm_forward_kernel(x, num_groups, weight, bias, eps, *, target):
    n, c, h, w = x.shape
    if not _fits(n, c, num_groups, h * w):
        return NotImplemented  # the kernels index an image's positions in 32 bits
    xp = get_array_module(x)
    cd = compute_dtype(x.dtype)
    (x,), cl = _layout(x)
    device = kernels.array_device((x,))
    wt, b = _params(xp, weight, bias, c, cd)
    mean, rstd = xp.empty((n, num_groups), cd), xp.empty((n, num_groups), cd)
    shape = dict(n=n, c=c, groups=num_groups, hw=h * w, channels_last=cl)
    dims = (np.int32(c), np.int32(h * w), np.int32(num_groups))
    parts, span = splits(n, c, h * w, cl)
    channel_sum, channel_m2 = xp.empty((n, c, parts), cd), xp.empty((n, c, parts), cd)
    _launch("groupnorm_channel_stats", x.dtype, target, (x, channel_sum, channel_m2, np.int32(c), np.int32(h * w)),
            device, **shape)
    _launch("groupnorm_group_stats", x.dtype, target, (channel_sum, channel_m2, mean, rstd, np.int32(n)) + dims
            + (np.int32(span), np.float64(eps)), device, cl=False, **shape)
    y = layout.empty(xp, x.shape, x.dtype, cl)
    _launch("groupnorm_normalize", x.dtype, target, (x, mean, rstd, wt, b, y) + dims, device, **shape)
    return y, GroupNormCache(x, mean, rstd, weight, bias, num_groups, tuple(x.shape))


@register_launcher("groupnorm_backward")
def groupnorm_backward_kernel(dy, cache, *, target):
    x, mean, rstd, weight, bias, g = cache[:6]
    n, c, h, w = dy.shape
    if not _fits(n, c, g, h * w):
        return NotImplemented
    xp = get_array_module(dy, x)
    cd = compute_dtype(dy.dtype)
    (dy, x), cl = _layout(dy, x, was_channels_last=layout.is_channels_last(x))
    device = kernels.array_device((dy,))
    mean, rstd = xp.ascontiguousarray(mean, dtype=cd), xp.ascontiguousarray(rstd, dtype=cd)
    wt, _ = _params(xp, weight, None, c, cd)
    shape = dict(n=n, c=c, groups=g, hw=h * w, channels_last=cl)
    dims = (np.int32(c), np.int32(h * w), np.int32(g))
    parts, _ = splits(n, c, h * w, cl)
    sum_dy, sum_dy_xhat = xp.empty((n, c, parts), cd), xp.empty((n, c, parts), cd)
    _launch("groupnorm_backward_sums", dy.dtype, target, (dy, x, mean, rstd, sum_dy, sum_dy_xhat) + dims, device,
            **shape)
    dweight, dbias = xp.empty(c, cd), xp.empty(c, cd)
    group_dy, group_dy_xhat = xp.empty((n, g), cd), xp.empty((n, g), cd)
    _launch("groupnorm_backward_reduce", dy.dtype, target, (sum_dy, sum_dy_xhat, wt, dweight, dbias, group_dy,
                                                            group_dy_xhat, np.int32(n), np.int32(c), np.int32(g),
                                                            np.int32(parts)),
            device, cl=False, **shape)
    dx = layout.empty(xp, dy.shape, dy.dtype, cl)
    _launch("groupnorm_backward_dx", dy.dtype, target, (dy, x, mean, rstd, wt, group_dy, group_dy_xhat, dx) + dims,
            device, **shape)
    return dx, None if weight is None else dweight, None if bias is None else dbias
