"""2-D transposed convolution (PyTorch's F.conv_transpose2d and nn.ConvTranspose2d), on conv2d's code.

A transposed convolution is the gradient of a convolution with respect to its input, so it runs
on the convolution's own references and kernels (no kernels of its own). PyTorch's weights are
(C_in, C_out, FH, FW): read as a convolution's (K, C, FH, FW), its K is the transposed
convolution's C_in and its C the C_out. With x (N, C_in, H, W), stride S, padding P and
``output_padding`` OP (per axis):

- forward: y = the convolution's data gradient for "dy" = x and the filters w, for an input of
  shape (N, C_out, OH, OW), OH = (H - 1) S - 2P + FH + OP; plus b[co] on every pixel of channel co;
- input gradient: dx = the convolution's forward of dy with w, no bias. Its floor rule gives
  floor((OH + 2P - FH)/S) + 1 = H - 1 + floor(OP/S) + 1 = H back, as OP < S;
- weight gradient: dw[ci, co, i, j] = sum over n, p, q of x[n, ci, p, q] dy[n, co, pS + i - P, qS + j - P],
  which is the convolution's weight gradient, dw[k, c, i, j] = sum dy[n, k, p, q] x[n, c, pS + i - P,
  qS + j - P], with the roles of x and dy swapped (its dy := x, its x := dy);
- bias gradient: dy summed per channel.

``output_padding`` adds OP rows at the bottom and columns at the right of the output, so that a
stride-S transposed convolution can give back any of the S input sizes a stride-S convolution
takes to H. It needs no padding: the data gradient is computed for the convolution input of the
larger size itself, which the convolution's floor rule allows (the kernels compute it for every
``floor=True`` convolution); its extra rows and columns get what the windows that reach them give
(nothing but the bias where OP > P, PyTorch's values either way: PyTorch defines the op the same).

Precision as conv2d's (gpuconv.precision): x, w, b (and dy) share one dtype; bfloat16/float16 are
computed in float32; TF32 applies to float32 with ``precision='tf32'``. With a bias, a
bfloat16/float16 y is rounded twice, on every backend: the sum over the windows is rounded to x's
dtype (the convolution's data gradient, as its kernels deliver it), then the bias is added in
float32 and the result rounded again (as a separate bias addition after cuDNN's data gradient
rounds in PyTorch). Without a bias (before a batch norm) y is rounded once; dx, dw, db always are.
Layouts: y keeps x's (channels_last or NCHW), dx dy's, as every op (``_dispatch``).

``groups`` G and ``dilation`` D (F.conv_transpose2d's): w is (C_in, C_out/G, FH, FW), PyTorch's
layout, which is the grouped convolution's (K, C/G, FH, FW) with K = C_in and C = C_out, so each
direction above is the grouped/dilated convolution's (:mod:`gpuconv.ops.conv2d_grouped`: its
reference and its kernels, no others). F's place takes the extent D(F - 1) + 1: OH = (H - 1) S -
2P + D(F - 1) + OP + 1, and OP must be below S or below D (PyTorch's rule). An OP of S or more
(below D) adds rows that the convolution's floor rule counts as OP // S more rows of its output
gradient: x is then given OP // S zero rows (and columns) at the bottom (right), which change no
sum, so that the floor rule's sizes hold, and dx drops them.

Cache: ``ConvTranspose2dCache(x, w, has_bias, stride, padding, output_padding, dilation, groups)``,
the caller's arrays, (h, w) pairs and groups.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..backend import get_array_module
from ..precision import channel_sum, multiplicands, round_once, upcast, use_tf32
from . import _dispatch
from . import conv2d as _conv
from . import conv2d_grouped as _grouped
from ._checks import (cache_type, cached, check_bool, check_cache, check_float, check_output_extent, check_rank,
                      check_same_dtype, pair, torch_positions)

ConvTranspose2dCache = cache_type("ConvTranspose2dCache", "x w has_bias stride padding output_padding dilation groups",
                                  __name__)


def conv_transpose2d_output_hw(in_hw, kernel_size, stride, padding, output_padding, dilation=(1, 1)):
    """(OH, OW): ``(H - 1) S - 2P + D (F - 1) + output_padding + 1`` along each axis (F's extent
    D (F - 1) + 1 in F's place), checked to be >= 1."""
    out = []
    for axis, h, f, s, p, op, d in zip(("height", "width"), in_hw, kernel_size, stride, padding, output_padding,
                                       dilation):
        size = (h - 1) * s - 2 * p + d * (f - 1) + op + 1
        if size < 1:
            a = "H" if axis == "height" else "W"
            f_is = "F" if d == 1 else f"the dilated extent D(F - 1) + 1 = {d * (f - 1) + 1} (F={f}, D={d})"
            raise ValueError(f"the transposed convolution's output is empty along the {axis}: input size {a}={h}, "
                             f"filter F={f}, stride S={s}, padding P={p}, output_padding={op} give ({a} - 1)S - 2P "
                             f"+ F + output_padding = {size} < 1 (F: {f_is}); use less padding")
        out.append(check_output_extent(size, axis, "use a smaller stride, dilation or output_padding"))
    return tuple(out)


def extra_rows(stride, output_padding):
    """The zero rows and columns x is given where output_padding reaches the stride (the module's
    docstring): OP // S along each axis."""
    return tuple(op // s for op, s in zip(output_padding, stride))


def grown(xp, x, extra):
    """x with ``extra`` (rows, columns) of zeros at the bottom and right (x itself for none)."""
    if not any(extra):
        return x
    return xp.pad(x, ((0, 0), (0, 0), (0, extra[0]), (0, extra[1])))


def conv_transpose2d_forward(x, w, b=None, stride=1, padding=0, output_padding=0, precision=None, *, groups=1,
                             dilation=1):
    """``y, cache``: the transposed convolution of x (N, C_in, H, W) with w (C_in, C_out, FH, FW),
    PyTorch's layout, plus b (C_out,): y of shape (N, C_out, OH, OW), OH = (H - 1) S - 2P +
    D (FH - 1) + output_padding + 1. ``stride``, ``padding``, ``output_padding`` and ``dilation``
    are ints or (h, w) pairs; ``output_padding`` < ``stride`` or < ``dilation`` along each axis
    (PyTorch's rule). ``groups`` G splits the channels as F.conv_transpose2d's: w is then (C_in,
    C_out/G, FH, FW). ``precision`` as in :func:`gpuconv.ops.conv2d_forward`; ``groups`` and
    ``dilation`` by keyword (F.conv_transpose2d takes groups where this op takes precision)."""
    if not (precision is None or type(precision) is str):  # F.conv_transpose2d's order: groups in its place
        torch_positions("conv_transpose2d_forward", "F.conv_transpose2d", precision=(precision, "groups", 1))
    dilation, groups = _grouped.check_dilation_groups(dilation, groups)
    stride, padding, output_padding = _check_args(x, w, b, stride, padding, output_padding, dilation, groups)
    out_hw = conv_transpose2d_output_hw(x.shape[2:], w.shape[2:], stride, padding, output_padding, dilation)
    tf32 = use_tf32(precision, x.dtype)
    target = backend.kernel_target(x, w, b, names=("x", "w", "b"))
    return _dispatch.call("conv_transpose2d_forward", target, _forward_reference, x, w, b, stride, padding,
                          output_padding, out_hw, tf32, dilation, groups)


def conv_transpose2d_backward(dy, cache, need_dx=True, need_dw=True, precision=None, dw_dtype=None):
    """``dx, dw, db`` for :func:`conv_transpose2d_forward`'s output gradient ``dy``; ``db`` is None
    without bias, ``dx`` None with ``need_dx=False``, ``dw`` None with ``need_dw=False``.
    ``dw_dtype`` and ``precision`` as in :func:`gpuconv.ops.conv2d_backward`."""
    check_cache(cache, ConvTranspose2dCache, "conv_transpose2d_forward")
    need_dx, need_dw = check_bool("need_dx", need_dx), check_bool("need_dw", need_dw)
    x, w = cache.x, cache.w
    check_float("dy", dy)
    check_rank("dy", dy, 4, "N, C_out, OH, OW")
    expected = (x.shape[0], w.shape[1] * cache.groups) + conv_transpose2d_output_hw(
        x.shape[2:], w.shape[2:], cache.stride, cache.padding, cache.output_padding, cache.dilation)
    if tuple(dy.shape) != expected:
        raise ValueError(f"dy must have the forward output's shape {expected}, got {tuple(dy.shape)}")
    check_same_dtype("x", x, dy=dy)
    if dw_dtype is not None:
        dw_dtype = np.dtype(dw_dtype)
        if dw_dtype not in (w.dtype, np.float32, np.float64) or dw_dtype.itemsize < w.dtype.itemsize:
            raise ValueError(f"dw_dtype={dw_dtype}: the weight gradient is delivered in w's dtype ({w.dtype}) or "
                             "widened to float32/float64, never narrowed")
    tf32 = use_tf32(precision, dy.dtype)
    target = backend.kernel_target(dy, x, w, names=("dy", cached("x"), cached("w")))
    return _dispatch.call("conv_transpose2d_backward", target, _backward_reference, dy, cache, need_dx, tf32,
                          need_dw, dw_dtype)


def _check_args(x, w, b, stride, padding, output_padding, dilation, groups):
    check_float("x", x)
    check_float("w", w)
    check_rank("x", x, 4, "N, C_in, H, W")
    check_rank("w", w, 4, "C_in, C_out, FH, FW: in channels, out channels, filter height, filter width (PyTorch's "
                          "ConvTranspose2d weight)")
    check_same_dtype("x", x, w=w, b=b)
    if 0 in tuple(x.shape[2:]):  # (an empty batch is fine; an empty image has no pixel to scatter)
        raise ValueError(f"x has an empty image: shape {tuple(x.shape)} (N, C_in, H, W) has H={x.shape[2]}, "
                         f"W={x.shape[3]}; a transposed convolution takes images of at least 1x1 (an empty batch, "
                         "N=0, is fine)")
    if x.shape[1] != w.shape[0]:
        raise ValueError(f"channel mismatch: x has C_in={x.shape[1]} channels (shape {tuple(x.shape)}, laid out N, C, "
                         f"H, W) but w expects C_in={w.shape[0]} (shape {tuple(w.shape)}, laid out C_in, C_out, FH, "
                         "FW as PyTorch's ConvTranspose2d weight, whose in channels come first, unlike Conv2d's); "
                         "make w.shape[0] equal x.shape[1]")
    if x.shape[1] % groups:
        raise ValueError(f"groups={groups} must divide the input channels: x has C_in={x.shape[1]} (shape "
                         f"{tuple(x.shape)}); choose groups among C_in's divisors (groups=C_in: depthwise)")
    cout = w.shape[1] * groups  # (w is (C_in, C_out/groups, FH, FW), PyTorch's layout)
    if b is not None and tuple(b.shape) != (cout,):
        per = "" if groups == 1 else f" times groups={groups}"
        raise ValueError(f"b must have shape ({cout},), one bias per output channel (w.shape[1]{per} of w "
                         f"{tuple(w.shape)}, laid out C_in, C_out/groups, FH, FW), got {tuple(b.shape)}")
    if min(w.shape[2:]) < 1:
        raise ValueError(f"w has an empty filter: shape {tuple(w.shape)} (C_in, C_out, FH, FW) has FH={w.shape[2]}, "
                         f"FW={w.shape[3]}; a filter is at least 1x1")
    if isinstance(padding, str):
        raise ValueError(f"padding={padding!r}: a transposed convolution takes an int or an (h, w) pair, as in "
                         "PyTorch (no 'same' or 'valid')")
    stride = pair("stride", stride, minimum=1)
    padding = pair("padding", padding, minimum=0)
    output_padding = pair("output_padding", output_padding, minimum=0)
    if any(op >= s and op >= d for op, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(f"output_padding={output_padding} must be smaller than stride={stride} or than "
                         f"dilation={dilation} along each axis (as in PyTorch: it picks one of the stride's output "
                         "sizes, (H - 1)S - 2P + D(F - 1) + output_padding + 1); use output_padding=0 at stride 1 "
                         "and dilation 1")
    return stride, padding, output_padding


def _forward_reference(x, w, b, stride, padding, output_padding, out_hw, tf32=False, dilation=(1, 1), groups=1):
    xc, wc = multiplicands(tf32, x, w)
    xp = get_array_module(xc, wc)
    # The convolution whose data gradient this is: its input (zeros, read for its shape only; calloc'd
    # pages never touched) and x as its output gradient.
    conv_input = xp.zeros((x.shape[0], w.shape[1] * groups) + out_hw, dtype=xc.dtype)
    if _grouped.grouped(dilation, groups):
        xc = grown(xp, xc, extra_rows(stride, output_padding))
        y = _grouped._backward(xc, conv_input, wc, stride, padding, dilation, groups, True, False)[0]
    else:
        y, _ = _conv._backward(xc, conv_input, wc, stride, padding, True, False)
    if b is not None:  # the sum rounded first (the module's docstring), then the bias added
        y = upcast(round_once(y, x.dtype)) + upcast(b).reshape(1, -1, 1, 1)
    return round_once(y, x.dtype), ConvTranspose2dCache(x, w, b is not None, stride, padding, output_padding,
                                                        dilation, groups)


def _backward_reference(dy, cache, need_dx=True, tf32=False, need_dw=True, dw_dtype=None):
    x, w, has_bias, stride, padding, output_padding, dilation, groups = cache
    dx = dw = None
    if need_dx or need_dw:
        dyc, xc, wc = multiplicands(tf32, dy, x, w)
        if not _grouped.grouped(dilation, groups):
            if need_dx:  # the convolution's forward of dy
                dx = _conv._forward(dyc, wc, None, stride, padding)
            if need_dw:  # the convolution's weight gradient, x as its output gradient and dy as its input
                dw = _conv._backward(xc, dyc, wc, stride, padding, False, True)[1]
        else:  # the same on the grouped convolution's reference, x grown by output_padding's rows (if any)
            if need_dx:
                dx = _grouped._forward(dyc, wc, None, stride, padding, dilation, groups)[:, :, :x.shape[2], :x.shape[3]]
            if need_dw:
                xg = grown(get_array_module(xc), xc, extra_rows(stride, output_padding))
                dw = _grouped._backward(xg, dyc, wc, stride, padding, dilation, groups, False, True)[1]
    db = channel_sum(upcast(dy)) if has_bias else None
    dw = round_once(dw, w.dtype)
    if dw is not None and dw_dtype is not None:
        dw = dw.astype(dw_dtype, copy=False)  # exact: a widening
    return round_once(dx, x.dtype), dw, round_once(db, dy.dtype)


# The launchers, on conv2d's kernels, for the 'cuda' and 'sim' targets; last, as they import the names above.
from . import _launch_conv_transpose2d  # noqa: E402,F401  (registration)
