"""Kernel launchers for the channel gating (kernels/channel_gate.cu), registered for 'cuda' and 'sim'.

Same arguments, results and caches (``ChannelGateCache(x, gate)``) as the references in
``channel_gate.py``. Layouts: a channels_last x (or dy) is read as it lies, its NHWC memory, and y
(dx) comes back channels_last without a transposing copy; anything else is made C-contiguous
(NCHW). An array of the other layout than the one the launch reads (dgate's x, dx's add) is
brought to it. The gate, dgate and ``pooled`` are (N, C, 1, 1): the same memory in both layouts.
Sizes past int (an image's C * H * W, with the grid stride's headroom; N * C) decline to the
reference.
"""
from __future__ import annotations

import numpy as np

from .. import kernels, layout
from ..backend import get_array_module
from ._dispatch import register_launcher
from .channel_gate import LANES, ChannelGateCache

WARPS = kernels.BLOCK // LANES  # dgate's planes per block NCHW (a warp each)
ADD_NONE, ADD_ARRAY, ADD_POOLED = 0, 1, 2  # channel_gate_backward_data's add_mode


def _dense(a):
    return a if a.flags.c_contiguous else get_array_module(a).ascontiguousarray(a)


def _in_layout(a, channels_last):
    """``a`` in the layout the launch reads: NHWC memory (channels_last), else C-contiguous."""
    return layout.nhwc_memory_of(a) if channels_last else _dense(a)


def _sizes(shape):
    n, c, h, w = shape
    return n, c, h * w


# The elementwise grids: at most this many blocks along an image (their grid stride, times
# BLOCK threads, is the int headroom the kernels' element index keeps past C * H * W).
MAX_BLOCKS_X = 8192


def _fits(shape):
    n, c, hw = _sizes(shape)
    return kernels.int_indexable(n * c, c * hw, spare=MAX_BLOCKS_X * kernels.BLOCK)


def _grid(n, chw, target, device):
    """(blocks along an image, images at once): about 32 blocks per SM in all (as grid_1d's),
    at least one per image up to grid y's limit (the kernels loop over the images past it)."""
    images = max(1, min(n, kernels.GRID_Y_MAX))
    along = max(1, min(-(-chw // kernels.BLOCK), 32 * kernels.sm_count(target, device) // images, MAX_BLOCKS_X))
    return along, images, 1


def _launch_elementwise(kernel, target, arrays, shape, scalars):
    """``kernel(*arrays, N, C, HW, *scalars)`` over the (N, C, H, W) ``shape``; nothing when empty."""
    n, c, hw = _sizes(shape)
    if n * c * hw == 0:
        return
    device = kernels.array_device(arrays[:1])
    kernels.launch("channel_gate", kernel, arrays[0].dtype, target, _grid(n, c * hw, target, device),
                   (kernels.BLOCK, 1, 1), tuple([layout.memory_order(a) for a in arrays])
                   + kernels.int32_args((n, c, hw)) + tuple(scalars), device=device)


@register_launcher("channel_gate_forward")
def channel_gate_forward_kernel(x, gate, *, target):
    if not _fits(x.shape):
        return NotImplemented
    x, y = kernels.contiguous_like(x, keep_channels_last=True)
    _launch_elementwise("channel_gate_forward", target, (x, _dense(gate), y), x.shape,
                        kernels.int32_args((layout.is_channels_last(x),)))
    return y, ChannelGateCache(x, gate)


@register_launcher("channel_gate_backward_gate")
def channel_gate_backward_gate_kernel(dy, cache, *, target):
    x = cache.x
    if not _fits(x.shape):
        return NotImplemented
    cl = layout.is_channels_last(dy) or layout.is_channels_last(x)
    dy, x = _in_layout(dy, cl), _in_layout(x, cl)
    n, c, hw = _sizes(x.shape)
    dgate = get_array_module(x).empty((n, c, 1, 1), dtype=x.dtype)
    if n * c == 0:
        return dgate
    blocks = n * -(-c // LANES) if cl else -(-(n * c) // WARPS)
    kernels.launch("channel_gate", "channel_gate_backward_gate", x.dtype, target, (blocks, 1, 1),
                   (kernels.BLOCK, 1, 1),
                   (layout.memory_order(dy), layout.memory_order(x), dgate) + kernels.int32_args((n, c, hw, cl)),
                   device=kernels.array_device((x,)))
    return dgate


@register_launcher("channel_gate_backward_data")
def channel_gate_backward_data_kernel(dy, cache, add=None, pooled=None, *, target):
    if not _fits(dy.shape):
        return NotImplemented
    cl = layout.is_channels_last(dy)
    dy = _in_layout(dy, cl)
    dx = layout.empty_like(dy)
    gate = _dense(cache.gate)
    hw = dy.shape[2] * dy.shape[3]
    if add is not None:
        extra, mode, spread = _in_layout(add, cl), ADD_ARRAY, 0.0
    elif pooled is not None:
        extra, mode, spread = _dense(pooled), ADD_POOLED, 1.0 / hw if hw else 0.0
    else:
        extra, mode, spread = gate, ADD_NONE, 0.0  # (not read)
    _launch_elementwise("channel_gate_backward_data", target, (dy, gate, extra, dx), dy.shape,
                        kernels.int32_args((cl, mode)) + (np.float64(spread),))
    return dx
