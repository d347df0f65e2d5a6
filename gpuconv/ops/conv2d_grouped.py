"""Grouped and dilated 2-D convolution: ``conv2d_forward``/``conv2d_backward`` with ``groups`` > 1
or ``dilation`` > 1 (F.conv2d's semantics) run here; the public ops route to it.

``groups`` G splits the C input channels and the K filters into G groups; filter k (of group
``k // (K/G)``) sees only its group's C/G channels, so w is (K, C/G, FH, FW) as in PyTorch
(depthwise: G = C; MobileNet's, ResNeXt's, ShuffleNet's blocks). ``dilation`` D spaces a
filter's taps D apart: tap (i, j) reads x[oh*S + i*D - P, ow*S + j*D - P], so a filter reaches
D*(F - 1) + 1 pixels (its extent), which takes F's place in the output-size rule and in
padding='same' (D*(F - 1) zeros, half before, as PyTorch).

The reference is conv2d.py's im2col with two changes: the strided window view steps by the
dilation between taps, and the column matrix is read per group, (G, C/G*FH*FW, cols), so each
direction is ONE batched GEMM over the groups per batch chunk, (G, K/G, C/G*FH*FW) @ (G,
C/G*FH*FW, cols), never a Python loop over hundreds of groups. The input gradient is the column
gradient scattered back (one strided add per tap, the taps D apart). Depthwise filters (one input
channel each) mostly skip the column matrix: _conv2d_depthwise.py's direct form, a multiply-add
per tap, runs where it measured faster. Precision as conv2d.py's:
bfloat16/float16 upcast to float32 and rounded once, TF32 operands in TF32 mode; the cache is
``Conv2dCache`` with its ``dilation`` and ``groups``.
"""
from __future__ import annotations

import numbers

from ..backend import get_array_module
from ..precision import channel_sum, multiplicands, round_once, upcast
from . import _conv2d_depthwise as depthwise
from ._checks import output_hw, pair
from .conv2d import Conv2dCache, _chunks, _dx_scatter, _padded, _windows


def check_dilation_groups(dilation, groups):
    """``(dilation as an (h, w) pair, groups as an int)``, each at least 1."""
    dilation = pair("dilation", dilation, minimum=1)
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"groups must be an int (1: a plain convolution; in_channels: depthwise), got {groups!r}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1 (1: a plain convolution; in_channels: depthwise), got {groups}")
    return dilation, int(groups)


def grouped(dilation, groups) -> bool:
    """Whether a convolution runs here (not on conv2d.py's own path and kernels)."""
    return groups != 1 or tuple(dilation) != (1, 1)


def route(direction, dilation, groups, plain_reference):
    """(op name, reference, the reference's extra arguments) of a convolution's ``direction``
    ('forward', 'backward'): conv2d.py's own (``plain_reference``) unless :func:`grouped`."""
    if not grouped(dilation, groups):
        return f"conv2d_{direction}", plain_reference, ()
    if direction == "forward":
        return "conv2d_grouped_forward", conv2d_grouped_forward_reference, (dilation, groups)
    return "conv2d_grouped_backward", conv2d_grouped_backward_reference, ()


def extent(filt_hw, dilation):
    """The pixels a dilated filter reaches along each axis: D*(F - 1) + 1."""
    return tuple(d * (f - 1) + 1 for f, d in zip(filt_hw, dilation))


def output_size(x_shape, filt_hw, dilation, stride, padding, floor):
    """(OH, OW) by the size rule with the dilated extent in F's place (``output_hw``), whose error
    then says what F stands for."""
    ext = extent(filt_hw, dilation)
    try:
        return output_hw(x_shape, ext, stride, padding, floor)
    except ValueError as exc:
        if tuple(dilation) == (1, 1):
            raise
        raise ValueError(f"{exc} (at dilation={tuple(dilation)}, F is the extent D*(F - 1) + 1 of the "
                         f"{filt_hw[0]}x{filt_hw[1]} filter: {ext[0]}x{ext[1]})") from None


def check_weight(x, w, groups):
    """x's C channels, w's (K, C/groups, FH, FW) shape and ``groups`` agree, and w's filters are not
    empty (clear errors otherwise)."""
    c, k, cg = x.shape[1], w.shape[0], w.shape[1]
    if groups == 1 and c != cg:
        fix = (f"x looks laid out N, H, W, C (its last axis holds the {cg} channels w expects): pass it as "
               "N, C, H, W: x.transpose(0, 3, 1, 2), a view that keeps its NHWC memory (channels_last)"
               if x.shape[3] == cg else "make w.shape[1] equal x.shape[1]")
        raise ValueError(f"channel mismatch: x has C={c} channels (shape {tuple(x.shape)}, laid out N, C, H, "
                         f"W) but w expects C={cg} (shape {tuple(w.shape)}, laid out K, C, FH, FW); {fix}")
    if c % groups:
        raise ValueError(f"groups={groups} must divide the input channels: x has C={c} (shape {tuple(x.shape)}); "
                         f"choose groups among C's divisors (groups=C: depthwise)")
    if k % groups:
        raise ValueError(f"groups={groups} must divide the output channels: w has K={k} filters (shape "
                         f"{tuple(w.shape)}); make K a multiple of groups")
    if cg * groups != c:
        raise ValueError(f"w has shape {tuple(w.shape)} but with groups={groups} each filter sees C/groups = "
                         f"{c // groups} of x's C={c} channels: w must be (K, {c // groups}, FH, FW), PyTorch's "
                         f"layout of a grouped convolution's weight")
    if min(w.shape[2:]) < 1:
        raise ValueError(f"w has an empty filter: shape {tuple(w.shape)} (K, C, FH, FW) has FH={w.shape[2]}, "
                         f"FW={w.shape[3]}; a filter is at least 1x1")


def conv2d_grouped_forward_reference(x, w, b, stride, padding, tf32, dilation, groups):
    xc, wc = multiplicands(tf32, x, w)
    y = _forward(xc, wc, upcast(b), stride, padding, dilation, groups)
    return round_once(y, x.dtype), Conv2dCache(x, w, b is not None, stride, padding, None, dilation, groups)


def _forward(x, w, b, stride, padding, dilation, groups):
    """y in x's dtype (float32 or float64)."""
    xp = get_array_module(x, w, b)
    n, c = x.shape[:2]
    k, cg, fh, fw = w.shape
    oh, ow = output_hw(x.shape, extent((fh, fw), dilation), stride, padding, floor=True)
    if n == 0:
        return xp.zeros((0, k, oh, ow), dtype=x.dtype)
    if depthwise.applies(w.shape, n) and depthwise.channels_last(oh, ow, stride):
        return depthwise.forward(x, w, b, stride, padding, dilation, oh, ow)
    return _im2col_forward(x, w, b, stride, padding, dilation, groups, oh, ow)


def _im2col_forward(x, w, b, stride, padding, dilation, groups, oh, ow):
    xp = get_array_module(x, w, b)
    n, c = x.shape[:2]
    k, cg, fh, fw = w.shape
    cff, length = cg * fh * fw, oh * ow
    win = _windows(xp, _padded(xp, x, padding), fh, fw, oh, ow, stride, dilation)
    w3 = w.reshape(groups, k // groups, cff)
    y = xp.empty((n, k, length), dtype=x.dtype)
    # One column buffer and one GEMM-output buffer for every chunk, as conv2d.py's (no page faults
    # of a fresh multi-MB array per chunk: a depthwise 144ch@32 batch-128 forward 1.0 s -> 0.4 s).
    step = next(_chunks(n, c * fh * fw * length * x.itemsize))[1]
    col_buf, out_buf = xp.empty(c * fh * fw * step * length, x.dtype), xp.empty(k * step * length, x.dtype)
    for lo, hi in _chunks(n, c * fh * fw * length * x.itemsize):
        m = hi - lo
        cols = col_buf[:c * fh * fw * m * length].reshape(c, fh, fw, m, oh, ow)
        cols[...] = win[lo:hi].transpose(1, 2, 3, 0, 4, 5)  # the one copy of im2col; C = (G, C/G) outermost
        yk = xp.matmul(w3, cols.reshape(groups, cff, m * length),  # (G, K/G, m*OH*OW): one batched GEMM
                       out=out_buf[:k * m * length].reshape(groups, k // groups, m * length))
        yk = yk.reshape(k, m, length).transpose(1, 0, 2)
        if b is None:
            y[lo:hi] = yk
        else:
            xp.add(yk, b.reshape(1, k, 1), out=y[lo:hi])
    return y.reshape(n, k, oh, ow)


def conv2d_grouped_backward_reference(dy, cache, need_dx=True, tf32=False, need_dw=True, dw_dtype=None):
    x, w, has_bias, stride, padding, _, dilation, groups = cache  # (the op crops dx: see Conv2dCache)
    dx = dw = None
    if need_dx or need_dw:
        dyc, xc, wc = multiplicands(tf32, dy, x, w)
        dx, dw = _backward(dyc, xc, wc, stride, padding, dilation, groups, need_dx, need_dw)
        del dyc, xc, wc
    db = channel_sum(upcast(dy)) if has_bias else None  # a sum: never TF32-rounded
    dw = round_once(dw, w.dtype)
    if dw is not None and dw_dtype is not None:
        dw = dw.astype(dw_dtype, copy=False)  # exact: a widening
    return round_once(dx, x.dtype), dw, round_once(db, dy.dtype)


def _backward(dy, x, w, stride, padding, dilation, groups, need_dx, need_dw):
    """dx and dw (each None unless asked) in dy's dtype (float32 or float64)."""
    if depthwise.applies(w.shape, x.shape[0]):
        oh, ow = dy.shape[2:]  # mid-sized images at stride 1: dx as im2col's full convolution
        full = (need_dx and not depthwise.channels_last(oh, ow, stride) and ow < depthwise.LONG_ROWS
                and _full(stride, padding, dilation, w.shape))
        dx, dw = depthwise.backward(dy, x, w, stride, padding, dilation, need_dx and not full, need_dw)
        return (_full_dx(dy, w, x.shape, padding, dilation, groups) if full else dx), dw
    return _im2col_backward(dy, x, w, stride, padding, dilation, groups, need_dx, need_dw)


def _full(stride, padding, dilation, w_shape):
    """Whether dx is a "full" convolution (stride 1, padding at most the extent - 1)."""
    return stride == (1, 1) and all(p <= d * (f - 1) for p, d, f in zip(padding, dilation, w_shape[2:]))


def _full_dx(dy, w, x_shape, padding, dilation, groups):
    """dx as the "full" grouped convolution of dy with the flipped filters, filter c taking its group's
    K/G gradients: one im2col forward (depthwise 144ch@32, batch 128: 0.2 s against 0.7 s of the
    column gradient's scatter)."""
    k, cg, fh, fw = w.shape
    wf = w.reshape(groups, k // groups, cg, fh, fw)[..., ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    pads = (dilation[0] * (fh - 1) - padding[0], dilation[1] * (fw - 1) - padding[1])
    return _im2col_forward(dy, wf.reshape(x_shape[1], k // groups, fh, fw), None, (1, 1), pads, dilation, groups,
                           *x_shape[2:])


def _im2col_backward(dy, x, w, stride, padding, dilation, groups, need_dx, need_dw):
    xp = get_array_module(dy, x, w)
    n, c = x.shape[:2]
    k, cg, fh, fw = w.shape
    oh, ow = dy.shape[2:]
    dx = xp.zeros(x.shape, dtype=dy.dtype) if need_dx else None
    dw3 = xp.zeros((groups, k // groups, cg * fh * fw), dtype=dy.dtype) if need_dw else None
    if n == 0 or k == 0:
        return dx, None if dw3 is None else dw3.reshape(w.shape)
    cff, length = cg * fh * fw, oh * ow
    win = _windows(xp, _padded(xp, x, padding), fh, fw, oh, ow, stride, dilation)
    full = need_dx and _full(stride, padding, dilation, w.shape)
    if full:
        dx[...] = _full_dx(dy, w, x.shape, padding, dilation, groups)
    wt = w.reshape(groups, k // groups, cff).transpose(0, 2, 1)
    step = next(_chunks(n, c * fh * fw * length * x.itemsize))[1]
    col_buf = xp.empty(c * fh * fw * step * length, x.dtype) if need_dw else None
    for lo, hi in _chunks(n, c * fh * fw * length * x.itemsize):
        m = hi - lo
        dy_g = dy[lo:hi].reshape(m, k, length).transpose(1, 0, 2).reshape(groups, k // groups, m * length)
        if need_dw:
            cols = col_buf[:c * fh * fw * m * length].reshape(c, fh, fw, m, oh, ow)
            cols[...] = win[lo:hi].transpose(1, 2, 3, 0, 4, 5)
            cols = cols.reshape(groups, cff, m * length)
            dw3 += xp.matmul(dy_g, cols.transpose(0, 2, 1))  # (G, K/G, C/G*FH*FW), summed over the chunks
        if need_dx and not full:  # (K/G = 1, depthwise's: NumPy's matmul over an inner 1 is 6x einsum's time)
            dcols = xp.einsum("grk,gkl->grl", wt, dy_g) if k == groups else xp.matmul(wt, dy_g)
            _dx_scatter(xp, dcols, (c, fh, fw, m, oh, ow), stride, padding, dx[lo:hi], dilation)
    return dx, None if dw3 is None else dw3.reshape(w.shape)


# The kernel launchers, for the 'cuda' and 'sim' targets; last, as they import the names above.
from . import _launch_conv2d_grouped  # noqa: E402,F401  (registration)
