"""Kernel launchers for ``conv_transpose2d_forward`` / ``conv_transpose2d_backward``: conv2d's
kernels (kernels/conv2d.cu, conv2d_tc.cu), reached through conv2d's launchers, which choose the
variant (CUDA cores or tensor cores, autotuning) as they do for a convolution; with ``groups`` or
``dilation`` other than 1, the grouped/dilated convolution's (kernels/conv2d_grouped.cu, through
``_launch_conv2d_grouped``'s launchers).

The forward is the convolution's data gradient (``conv2d_backward_data_kernel``), the input
gradient its forward (``conv2d_forward_kernel``, no bias), the weight gradient its weight gradient
with x and dy swapped (``conv2d_backward_weight_kernel``), the bias gradient its bias gradient:
see :mod:`gpuconv.ops.conv_transpose2d`. The grouped launcher's backward computes a data or a
weight gradient from a ``Conv2dCache``; for the forward, the cache's convolution input is a
stand-in of the output's shape and layout (one element of memory, never read). The bias of the
forward is added to the data gradient by one array operation (NumPy on 'sim', CuPy on 'cuda'), in
float32 for bfloat16/float16.
"""
from __future__ import annotations

from .. import layout
from ..backend import get_array_module
from ..precision import LOW_PRECISION, round_once, upcast
from . import _launch_conv2d_tc as tc
from ._dispatch import register_launcher
from ._launch_conv2d import (conv2d_backward_bias_kernel, conv2d_backward_data_kernel, conv2d_forward_kernel,
                             weight_gradient)
from ._launch_conv2d_grouped import conv2d_grouped_backward_kernel, conv2d_grouped_forward_kernel
from .conv2d import Conv2dCache
from .conv2d_grouped import grouped
from .conv_transpose2d import ConvTranspose2dCache, extra_rows, grown


def _stand_in(xp, shape, dtype, channels_last):
    """An array of ``shape`` with the strides of a C-contiguous NCHW (or NHWC memory) array, all
    on one element: what the grouped launcher reads of a convolution input it never reads."""
    n, c, h, w = shape
    strides = (h * w * c, 1, w * c, c) if channels_last else (c * h * w, h * w, w, 1)
    one = xp.empty(1, dtype=dtype)
    return xp.lib.stride_tricks.as_strided(one, shape, tuple(s * one.itemsize for s in strides))


@register_launcher("conv_transpose2d_forward")
def conv_transpose2d_forward_kernel(x, w, b, stride, padding, output_padding, out_hw, tf32=False, dilation=(1, 1),
                                    groups=1, *, target):
    shape = (x.shape[0], w.shape[1] * groups) + tuple(out_hw)
    if grouped(dilation, groups):
        xp = get_array_module(x, w)
        conv = Conv2dCache(_stand_in(xp, shape, x.dtype, layout.is_channels_last(x)), w, False, stride, padding, None,
                           dilation, groups)
        xg = grown(xp, x, extra_rows(stride, output_padding))
        y = conv2d_grouped_backward_kernel(xg, conv, True, tf32, False, target=target)[0]
    else:
        y = conv2d_backward_data_kernel(x, w, shape, stride, padding, tf32, target=target, like=x)
    if b is not None:
        if y.dtype in LOW_PRECISION:  # (the sum in y's layout on CuPy too: no transposing copy after it)
            y = round_once(layout.binary("add", upcast(y), upcast(b).reshape(1, -1, 1, 1), layout.is_channels_last(y)),
                           y.dtype)
        else:
            y += b.reshape(1, -1, 1, 1)
    return y, ConvTranspose2dCache(x, w, b is not None, stride, padding, output_padding, dilation, groups)


@register_launcher("conv_transpose2d_backward")
def conv_transpose2d_backward_kernel(dy, cache, need_dx=True, tf32=False, need_dw=True, dw_dtype=None, *, target):
    x, w, has_bias, stride, padding, output_padding, dilation, groups = cache
    if grouped(dilation, groups):
        return _backward_grouped(dy, cache, need_dx, tf32, need_dw, dw_dtype, target)
    # dy is the input of both: in TF32 on tensor cores, rounded once for both (tc.rounding_shared)
    with tc.rounding_shared(dy, tf32 and need_dx and need_dw):
        dx = conv2d_forward_kernel(dy, w, None, stride, padding, tf32, target=target)[0] if need_dx else None
        # the convolution's weight gradient with x as its dy and dy as its x
        dw = weight_gradient(x, dy, w.shape, stride, padding, tf32, dw_dtype, target=target) if need_dw else None
    db = conv2d_backward_bias_kernel(dy, target=target) if has_bias else None
    return dx, dw, db


def _backward_grouped(dy, cache, need_dx, tf32, need_dw, dw_dtype, target):
    """The grouped/dilated convolution's forward of dy (cropped to x's size where output_padding
    reached the stride) and its weight gradient with x (grown as in the forward) as its output
    gradient and dy as its input."""
    x, w, has_bias, stride, padding, output_padding, dilation, groups = cache
    xp = get_array_module(dy, x, w)
    dx = dw = None
    if need_dx:
        dx = conv2d_grouped_forward_kernel(dy, w, None, stride, padding, tf32, dilation, groups, target=target)[0]
        if dx.shape != x.shape:
            dx = dx[:, :, :x.shape[2], :x.shape[3]]
            dx = layout.nhwc_memory_of(dx) if layout.is_channels_last(dy) else xp.ascontiguousarray(dx)
    if need_dw:
        conv = Conv2dCache(dy, w, False, stride, padding, None, dilation, groups)
        dw = conv2d_grouped_backward_kernel(grown(xp, x, extra_rows(stride, output_padding)), conv, False, tf32, True,
                                            dw_dtype, target=target)[1]
    db = conv2d_backward_bias_kernel(dy, target=target) if has_bias else None
    return dx, dw, db
