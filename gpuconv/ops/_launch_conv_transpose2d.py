"""Kernel launchers for ``conv_transpose2d_forward`` / ``conv_transpose2d_backward``: conv2d's
kernels (kernels/conv2d.cu, conv2d_tc.cu), reached through conv2d's launchers, which choose the
variant (CUDA cores or tensor cores, autotuning) as they do for a convolution.

The forward is the convolution's data gradient (``conv2d_backward_data_kernel``), the input
gradient its forward (``conv2d_forward_kernel``, no bias), the weight gradient its weight gradient
with x and dy swapped (``conv2d_backward_weight_kernel``), the bias gradient its bias gradient:
see :mod:`gpuconv.ops.conv_transpose2d`. The bias of the forward is added to the data gradient
by one array operation (NumPy on 'sim', CuPy on 'cuda'), in float32 for bfloat16/float16.
"""
from __future__ import annotations

from ..precision import LOW_PRECISION, round_once, upcast
from ._dispatch import register_launcher
from ._launch_conv2d import (conv2d_backward_bias_kernel, conv2d_backward_data_kernel, conv2d_backward_weight_kernel,
                             conv2d_forward_kernel)
from .conv_transpose2d import ConvTranspose2dCache


@register_launcher("conv_transpose2d_forward")
def conv_transpose2d_forward_kernel(x, w, b, stride, padding, output_padding, out_hw, tf32=False, *, target):
    shape = (x.shape[0], w.shape[1]) + tuple(out_hw)
    y = conv2d_backward_data_kernel(x, w, shape, stride, padding, tf32, target=target, like=x)
    if b is not None:
        if y.dtype in LOW_PRECISION:
            y = round_once(upcast(y) + upcast(b).reshape(1, -1, 1, 1), y.dtype)
        else:
            y += b.reshape(1, -1, 1, 1)
    return y, ConvTranspose2dCache(x, w, b is not None, stride, padding, output_padding)


@register_launcher("conv_transpose2d_backward")
def conv_transpose2d_backward_kernel(dy, cache, need_dx=True, tf32=False, need_dw=True, dw_dtype=None, *, target):
    x, w, has_bias, stride, padding = cache[:5]
    dx = conv2d_forward_kernel(dy, w, None, stride, padding, tf32, target=target)[0] if need_dx else None
    dw = None
    if need_dw:
        dw = conv2d_backward_weight_kernel(x, dy, w.shape, stride, padding, tf32, target=target, dw_dtype=dw_dtype)
        if dw_dtype is not None and dw.dtype != dw_dtype:  # a kernel that rounds into dy's dtype only
            dw = dw.astype(dw_dtype)
    db = conv2d_backward_bias_kernel(dy, target=target) if has_bias else None
    return dx, dw, db
