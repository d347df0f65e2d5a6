"""Kernel launchers for the grouped/dilated convolution (kernels/conv2d_grouped.cu).

Registered with :mod:`gpuconv.ops._dispatch` as ``conv2d_grouped_forward`` / ``conv2d_grouped_backward``
for the 'cuda' and 'sim' targets: they take the arguments of the references in ``conv2d_grouped.py``
and return the same values and the same ``Conv2dCache``. The kernels read x, y, dy and dx in the
layout of the forward's input (NCHW, or channels_last's NHWC memory), so a channels_last network
pays no conversion; dy in the other layout is converted once. The bias gradient and the ordered
sum of the weight gradient's splits are conv2d.cu's kernels (``conv2d_backward_bias``,
``conv2d_reduce_splits``).
"""
from __future__ import annotations

import functools

import numpy as np

from .. import kernels, layout
from ..backend import get_array_module
from ..precision import compute_dtype
from ._checks import output_hw
from ._dispatch import register_launcher
from ._launch_conv2d import conv2d_backward_bias_kernel
from .conv2d import Conv2dCache
from .conv2d_grouped import extent

BLOCK = kernels.BLOCK
# Each split of the weight gradient sums at least this many of the N*OH*OW positions per thread.
MIN_SPLIT_CHUNK = 64
# At most this many splits per SM, as conv2d's weight gradient: the second pass adds a weight's splits
# in one thread, in order (deterministic), so its length is the split count; a depthwise layer of
# few weights would otherwise ask for thousands (a 3x3 filter of one channel: 9 threads, 30,000
# splits on 132 SMs) and spend longer adding them up than computing them.
MAX_SPLITS_PER_SM = 2
# Threads the weight gradient's first pass aims at per SM (a full H100/H200 SM holds 2048).
THREADS_PER_SM = 2048


def _memory(xp, a, channels_last):
    """The C-contiguous memory a kernel walks: NHWC for channels_last, NCHW otherwise."""
    return layout.nhwc(a) if channels_last else xp.ascontiguousarray(a)


def _dims(x_shape, w_shape, stride, padding, dilation, groups):
    """The sizes (OH, OW by the floor rule: the op checked them) and the kernels' int32 arguments."""
    n, c, h, wd = x_shape
    k, _, fh, fw = w_shape
    oh, ow = output_hw(x_shape, extent((fh, fw), dilation), stride, padding, floor=True)
    return (n, c, h, wd, k, fh, fw, oh, ow), kernels.int32_args(
        (n, c, h, wd, k, fh, fw, oh, ow, *stride, *padding, *dilation, groups))


def geometry(elements, target, device=None):
    """(grid, block) of every kernel this op launches, in this one place: 1-D grid-stride loops of
    BLOCK threads over ``elements`` (outputs, dx elements, weight elements x splits, weights)."""
    return kernels.grid_1d(elements, BLOCK, target, device)


def weight_splits(count, positions, target, device=None):
    """(splits, chunk) of the weight gradient's first pass over ``positions`` = N*OH*OW: enough
    threads (count x splits) to fill the GPU, each summing at least MIN_SPLIT_CHUNK positions, and
    at most MAX_SPLITS_PER_SM splits per SM (the second pass's length)."""
    return _weight_splits(count, positions, kernels.sm_count(target, device), MIN_SPLIT_CHUNK)


@functools.lru_cache(maxsize=1024)
def _weight_splits(count, positions, sms, min_chunk):
    want = -(-sms * THREADS_PER_SM // max(1, count))
    splits = max(1, min(want, positions // min_chunk, MAX_SPLITS_PER_SM * sms))
    chunk = -(-positions // splits)
    return -(-positions // chunk), chunk


@register_launcher("conv2d_grouped_forward")
def conv2d_grouped_forward_kernel(x, w, b, stride, padding, tf32, dilation, groups, *, target):
    xp = get_array_module(x, w, b)
    device = kernels.array_device([x])
    cl = layout.is_channels_last(x)
    (n, c, h, wd, k, fh, fw, oh, ow), dims = _dims(x.shape, w.shape, stride, padding, dilation, groups)
    y = layout.empty(xp, (n, k, oh, ow), x.dtype, cl)
    if y.size:
        wc = xp.ascontiguousarray(w)  # (amp casts these filters OIHW: no copy; an OHWI w is repacked)
        bias = wc if b is None else xp.ascontiguousarray(b)  # the filters stand in for a missing bias (never read)
        args = (_memory(xp, x, cl), wc, bias, layout.memory_order(y)) + dims + \
            kernels.int32_args((b is not None, cl))
        grid, block = geometry(y.size, target, device)
        kernels.launch("conv2d_grouped", "conv2d_grouped_forward", x.dtype, target, grid, block, args, device=device,
                       tf32=tf32)
    return y, Conv2dCache(x, w, b is not None, stride, padding, None, dilation, groups)


@register_launcher("conv2d_grouped_backward")
def conv2d_grouped_backward_kernel(dy, cache, need_dx=True, tf32=False, need_dw=True, dw_dtype=None, *, target):
    x, w, has_bias, stride, padding, _, dilation, groups = cache
    xp = get_array_module(dy, x, w)
    device = kernels.array_device([dy])
    cl = layout.is_channels_last(x)
    shapes, dims = _dims(x.shape, w.shape, stride, padding, dilation, groups)
    dym = _memory(xp, dy, cl) if dy.size else dy
    dx = dw = None
    if need_dx:
        dx = layout.empty(xp, x.shape, dy.dtype, cl)
        if dx.size and not dy.size:  # K = 0 filters: nothing flows back
            dx[...] = 0
        elif dx.size:
            grid, block = geometry(dx.size, target, device)
            kernels.launch("conv2d_grouped", "conv2d_grouped_backward_data", dy.dtype, target, grid, block,
                           (dym, xp.ascontiguousarray(w), layout.memory_order(dx)) + dims + kernels.int32_args((cl,)),
                           device=device, tf32=tf32)
    if need_dw:
        dw = _backward_weight(xp, dym, _memory(xp, x, cl), w.shape, shapes, dims, cl, tf32, target, device)
        if dw_dtype is not None and dw.dtype != dw_dtype:
            dw = dw.astype(dw_dtype)  # exact: a widening
    db = conv2d_backward_bias_kernel(dy, target=target) if has_bias else None
    return dx, dw, db


def _backward_weight(xp, dy, x, w_shape, shapes, dims, cl, tf32, target, device):
    """dw from the first pass's splits, added up in order by conv2d_reduce_splits (a 2-byte dw,
    or several splits, go through a float32/acc_t workspace; one split of float32/float64 is
    written into dw directly)."""
    n, c, h, wd, k, fh, fw, oh, ow = shapes
    dw = xp.empty(tuple(w_shape), dtype=dy.dtype)
    count, positions = dw.size, n * oh * ow
    if not count:
        return dw
    if not positions:  # an empty batch: the gradient is an empty sum
        dw[...] = 0
        return dw
    splits, chunk = weight_splits(count, positions, target, device)
    direct = splits == 1 and compute_dtype(dy.dtype) == dy.dtype
    ws = dw if direct else xp.empty((splits, count), dtype=compute_dtype(dy.dtype))
    grid, block = geometry(count * splits, target, device)
    kernels.launch("conv2d_grouped", "conv2d_grouped_backward_weight", dy.dtype, target, grid, block,
                   (dy, x, ws) + dims + kernels.int32_args((cl, splits)) + (np.int64(chunk),), device=device,
                   tf32=tf32)
    if not direct:
        grid, block = geometry(count, target, device)
        kernels.launch("conv2d", "conv2d_reduce_splits", dy.dtype, target, grid, block,
                       (ws, dw, np.int32(splits), np.int64(count)), device=device, tf32=tf32)
    return dw
