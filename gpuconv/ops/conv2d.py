"""2-D convolution (cross-correlation, as in PyTorch and CS231n): NCHW input, (K, C, FH, FW) weights.

The reference path is im2col + BLAS. A strided *view* of the padded input exposes every
receptive field as ``(N, C, FH, FW, OH, OW)`` without copying; one copy of it per batch chunk gives
the column matrix (C*FH*FW, chunk*OH*OW), so each direction is ONE GEMM per chunk: the forward
``W2 @ cols``, the weight gradient ``dy @ cols^T`` (or its transpose, whichever puts the longer
side first), the column gradient ``W2^T @ dy``. Chunks keep the columns near ``_COL_BYTES`` (a
CIFAR batch, 128 x 64ch x 3x3 x 32x32, would need 300 MB; and the GEMM then reads them from
cache). Backward recomputes the columns from the cached input. The input gradient is the column
gradient scattered back (one strided add per filter tap) or, for stride 1 with no more filters
than channels, a "full" convolution of dy with the flipped filters (one more GEMM), whichever
moves fewer bytes.

Precision (gpuconv.precision): x, w, b (and dy) share one dtype. bfloat16/float16 operands are
upcast to float32, the float32 reference below runs, and y, dx, dw, db are rounded once to the
inputs' dtype. In TF32 mode (``precision="tf32"``, or the current setting when None) float32 x, w
and dy are rounded to TF32 before the GEMMs; the bias and its gradient, sums, are not.

Cache (shared with the kernel launchers, see ``_dispatch``): ``Conv2dCache(x, w, has_bias, stride,
padding, crop, dilation, groups)`` with ``stride``, ``padding``, ``dilation`` as (h, w) pairs; x
and w are the caller's arrays, in their own dtype, and ``crop`` is None; except for
``padding='same'`` with an even filter extent (one more zero after than before, as in PyTorch):
the op pads x itself (a copy, in x's layout), convolves that with padding 0, and keeps the padded
x, with ``crop = ((top, bottom), (left, right))`` the zeros it added, which the backward crops off
dx. ``groups`` > 1 or ``dilation`` > 1 run in conv2d_grouped.py (its reference; kernels/conv2d_grouped.cu).
Output sizes: the op checks the exact rule (or the floor, ``floor=True``) once, at its entry; past
it the floor rule gives the size (on whole sizes the two agree) to the reference, launchers, backward.
"""
from __future__ import annotations

import numpy as np

from .. import backend, layout
from ..backend import get_array_module
from ..precision import channel_sum, multiplicands, round_once, upcast, use_tf32
from . import _dispatch
from ._checks import (cache_type, cached, check_bias, check_bool, check_cache, check_float, check_floor, check_rank,
                      check_same_dtype, checked_once, conv_padding, exactly_bool, output_hw, pair, plain,
                      same_padding_sides, signature, torch_positions)


# printed without its arrays' values; crop: see the module's docstring
Conv2dCache = cache_type("Conv2dCache", "x w has_bias stride padding crop dilation groups", __name__,
                         defaults=(None, (1, 1), 1))


# Bytes of column matrix per chunk. Measured on a 2-core EPYC (CIFAR 64->128ch 3x3): 4 MB runs the
# forward at ~110-120 GFLOP/s (BLAS peak here ~130), 64 MB at ~95, unchunked (300 MB) at ~50.
_COL_BYTES = 4 << 20


def conv2d_forward(x, w, b=None, stride=1, padding=0, precision=None, floor=False, *, dilation=1, groups=1):
    """``y, cache``: y[n, k] = sum_c x[n, c] (*) w[k, c] + b[k], of shape (N, K, OH, OW).

    ``stride`` and ``padding`` are an int or an (h, w) pair, ``padding`` also, as in PyTorch and
    :class:`gpuconv.layers.Conv2d`, 'valid' (0) or 'same' (stride 1: the output keeps x's size, with
    E - 1 zeros along each axis, (E - 1) // 2 before and the rest after, as in PyTorch); sizes must satisfy
    ``(W - E + 2P)/S + 1`` a whole number >= 1 along both axes, or with ``floor=True`` PyTorch's
    rule, ``floor((W - E + 2P)/S) + 1`` (a stride-2 3x3 convolution with padding 1 takes 32x32 to
    16x16; the input rows and columns no window reaches get a zero gradient); E = D*(F - 1) + 1, the
    extent of a filter at ``dilation`` D. ``groups`` G: filter k sees the C/G channels of its group
    (w is (K, C/G, FH, FW); G divides C and K; G = C: depthwise), as in F.conv2d. ``precision``
    'fp32' or 'tf32' applies to float32 arrays (None: ``gpuconv.get_precision()``)."""
    if not (precision is None or type(precision) is str) or type(floor) is not bool:  # (F.conv2d's order?)
        torch_positions("conv2d_forward", "F.conv2d", precision=(precision, "dilation", 1), floor=(floor, "groups", 1))
    dilation, groups, stride, padding = _checked_args(x, w, b, stride, padding, floor, dilation, groups)
    tf32 = use_tf32(precision, x.dtype)
    target = backend.kernel_target(x, w, b, names=("x", "w", "b"))
    op, ref, more = conv2d_grouped.route("forward", dilation, groups, _conv2d_forward_reference)
    if isinstance(padding, str):  # 'same', an even extent: more zeros after than before (not the kernels' rule)
        crop = same_padding_sides(conv2d_grouped.extent(w.shape[2:], dilation))
        y, cache = _dispatch.call(op, target, ref, layout.pad_zeros(x, crop), w, b, stride, (0, 0), tf32, *more)
        return y, cache._replace(crop=crop)
    return _dispatch.call(op, target, ref, x, w, b, stride, padding, tf32, *more)


def conv2d_backward(dy, cache, need_dx=True, precision=None, need_dw=True, dw_dtype=None):
    """``dx, dw, db`` for ``conv2d_forward``'s output gradient ``dy``; ``db`` is None without bias.

    ``need_dx=False`` skips the input gradient (``dx`` is None): a network's first layer sees
    images, whose gradient nothing uses, and dx is a third of a convolution's backward work.
    ``need_dw=False`` skips the weight gradient (``dw`` is None): frozen filters (airbench94's
    whitening layer) need none. ``dw_dtype``: the dtype to deliver dw in (default w's): a
    bfloat16/float16 convolution's weight gradient is rounded once to that precision (the rule of
    :mod:`gpuconv.precision`) and then, for ``dw_dtype=float32``, widened exactly, which the
    tensor-core kernels do as they write it (a float32 master accumulates it without a cast).
    ``precision`` as in :func:`conv2d_forward`, chosen anew for the backward."""
    check_cache(cache, Conv2dCache, "conv2d_forward")
    x, w = cache.x, cache.w
    # (the checks read types, shapes, dtypes and the cache's geometry only: passed once, passed again)
    need_dx, need_dw = checked_once(
        _CHECKED_BACKWARD,
        lambda: (signature(dy), signature(x), signature(w), plain(cache.stride), plain(cache.padding),
                 plain(cache.dilation), exactly_bool(need_dx, need_dw)),
        lambda: _check_backward(dy, x, w, cache, need_dx, need_dw))
    tf32 = use_tf32(precision, dy.dtype)
    target = backend.kernel_target(dy, x, w, names=("dy", cached("x"), cached("w")))
    if dw_dtype is not None:
        dw_dtype = np.dtype(dw_dtype)
        if dw_dtype not in (w.dtype, np.float32, np.float64) or dw_dtype.itemsize < w.dtype.itemsize:
            raise ValueError(f"dw_dtype={dw_dtype}: the weight gradient is delivered in w's dtype ({w.dtype}) or "
                             "widened to float32/float64, never narrowed")
    op, ref, _ = conv2d_grouped.route("backward", cache.dilation, cache.groups, _conv2d_backward_reference)
    dx, dw, db = _dispatch.call(op, target, ref, dy, cache, bool(need_dx), tf32, bool(need_dw), dw_dtype)
    if cache.crop is not None and dx is not None:  # the gradient of the zeros the forward added goes nowhere
        dx = layout.crop(dx, cache.crop)
    return dx, dw, db


def _check_backward(dy, x, w, cache, need_dx, need_dw):
    need_dx, need_dw = check_bool("need_dx", need_dx), check_bool("need_dw", need_dw)
    check_float("dy", dy)
    check_rank("dy", dy, 4, "NKHW")
    ext = w.shape[2:] if cache.dilation == (1, 1) else conv2d_grouped.extent(w.shape[2:], cache.dilation)
    oh, ow = output_hw(x.shape, ext, cache.stride, cache.padding, True)
    expected = (x.shape[0], w.shape[0], oh, ow)
    if tuple(dy.shape) != expected:
        raise ValueError(f"dy must have the forward output's shape {expected}, got {tuple(dy.shape)}")
    check_same_dtype("x", x, dy=dy)
    return need_dx, need_dw


# (dilation, groups, stride, padding) of the forward's checks passed, by the arguments' signature
_CHECKED: dict = {}
# the backward's checks passed, by the signatures of dy and the cache's arrays and the cache's geometry
_CHECKED_BACKWARD: dict = {}


def _checked_args(x, w, b, stride, padding, floor, dilation, groups):
    """``(dilation, groups, stride, padding)`` checked and normalized, memoized by what the checks
    read (x's, w's and b's type, shape and dtype, the other arguments' values): a network, or a
    gradient check, convolves the same few geometries at every call. Errors are not memoized."""
    def check():
        dilation_, groups_ = conv2d_grouped.check_dilation_groups(dilation, groups)
        return (dilation_, groups_) + tuple(_check_conv_args(x, w, b, stride, padding, floor, dilation_, groups_))
    return checked_once(_CHECKED, lambda: (signature(x), signature(w), signature(b), plain(stride), plain(padding),
                                           plain(dilation), plain(groups), exactly_bool(floor)), check)


def _check_conv_args(x, w, b, stride, padding, floor=False, dilation=(1, 1), groups=1):
    floor = check_floor(floor)
    check_float("x", x)
    check_float("w", w)
    check_rank("x", x, 4, "N, C, H, W")
    check_rank("w", w, 4, "K, C, FH, FW: out channels, in channels (per group), filter height, filter width")
    check_same_dtype("x", x, w=w, b=b)
    conv2d_grouped.check_weight(x, w, groups)
    check_bias(b, w, "filter")
    stride, extent = pair("stride", stride, minimum=1), conv2d_grouped.extent(w.shape[2:], dilation)
    padding = conv_padding(padding, w.shape[2:], stride, dilation)
    if isinstance(padding, str):  # 'same', an even extent: checked as it runs, x padded with padding 0
        (top, bottom), (left, right) = same_padding_sides(extent)
        padded = x.shape[:2] + (x.shape[2] + top + bottom, x.shape[3] + left + right)
        conv2d_grouped.output_size(padded, w.shape[2:], dilation, stride, (0, 0), floor)
        return stride, padding
    padding = pair("padding", padding, minimum=0)
    conv2d_grouped.output_size(x.shape, w.shape[2:], dilation, stride, padding, floor)
    return stride, padding


def _padded(xp, x, padding):
    ph, pw = padding
    if ph == 0 and pw == 0:
        return xp.ascontiguousarray(x)
    out = xp.zeros(x.shape[:2] + (x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), dtype=x.dtype)
    out[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x
    return out


def _windows(xp, xpad, fh, fw, oh, ow, stride, dilation=(1, 1)):
    """(N, C, FH, FW, OH, OW) view: element [n, c, i, j, p, q] = xpad[n, c, p*sh + i*dh, q*sw + j*dw]."""
    sn, sc, sh, sw = xpad.strides
    shape = xpad.shape[:2] + (fh, fw, oh, ow)
    strides = (sn, sc, sh * dilation[0], sw * dilation[1], sh * stride[0], sw * stride[1])
    if type(xpad) is np.ndarray and xpad.flags.c_contiguous:
        # the same view over xpad's memory (the constructor checks that it stays inside), without
        # as_strided's Python wrapper (a few microseconds a call: a gradient check's convolutions
        # on a few pixels make three a step)
        return np.ndarray(shape, xpad.dtype, xpad, 0, strides)
    return xp.lib.stride_tricks.as_strided(xpad, shape=shape, strides=strides)


def _chunks(n, bytes_per_item, budget=None):
    step = max(1, (budget or _COL_BYTES) // max(1, bytes_per_item))
    for lo in range(0, n, step):
        yield lo, min(n, lo + step)


def _conv2d_forward_reference(x, w, b, stride, padding, tf32=False):
    xc, wc = multiplicands(tf32, x, w)
    y = _forward(xc, wc, upcast(b), stride, padding)
    return round_once(y, x.dtype), Conv2dCache(x, w, b is not None, stride, padding)


def _forward(x, w, b, stride, padding):
    """y in x's dtype (float32 or float64)."""
    xp = get_array_module(x, w, b)
    n, c = x.shape[:2]
    k, _, fh, fw = w.shape
    oh, ow = output_hw(x.shape, (fh, fw), stride, padding, floor=True)
    if n == 0:  # an empty batch: an empty result, as on every device
        return xp.zeros((0, k, oh, ow), dtype=x.dtype)
    cff, length = c * fh * fw, oh * ow
    win = _windows(xp, _padded(xp, x, padding), fh, fw, oh, ow, stride)
    w2 = w.reshape(k, cff)
    bias = None if b is None else b.reshape(1, k, 1)
    y = xp.empty((n, k, length), dtype=x.dtype)
    # One column buffer and one GEMM-output buffer serve every chunk: a fresh multi-MB array per
    # chunk costs page faults (prep 3->64 forward: 10.2 -> 8.4 ms on one core).
    step = next(_chunks(n, cff * length * x.itemsize))[1]
    col_buf = xp.empty(cff * step * length, dtype=x.dtype)
    out_buf = xp.empty(k * step * length, dtype=x.dtype)
    for lo, hi in _chunks(n, cff * length * x.itemsize):
        m = hi - lo
        # The chunk's columns as ONE (C*FH*FW, m*OH*OW) matrix, so one GEMM covers all m images.
        # A GEMM per image is slow when OH*OW is small (res3 4x4: 88 vs 62 ms on one core), and
        # with two BLAS threads on a busy machine every extra call is another chance to wait for
        # a descheduled thread (per-image calls: 3l 7x7 forward 14 ms median, 108 ms worst of 15;
        # one call per chunk: 15 and 15). The transpose back to (m, K, OH*OW) is a cheap copy.
        cols = col_buf[:cff * m * length].reshape(c, fh, fw, m, oh, ow)
        cols[...] = win[lo:hi].transpose(1, 2, 3, 0, 4, 5)  # the one copy of im2col
        yk = xp.matmul(w2, cols.reshape(cff, m * length), out=out_buf[:k * m * length].reshape(k, m * length))
        yk = yk.reshape(k, m, length).transpose(1, 0, 2)
        if bias is None:
            y[lo:hi] = yk
        else:
            xp.add(yk, bias, out=y[lo:hi])  # the bias rides on the copy
    return y.reshape(n, k, oh, ow)


def _conv2d_backward_reference(dy, cache, need_dx=True, tf32=False, need_dw=True, dw_dtype=None):
    x, w, has_bias, stride, padding = cache[:5]  # (the op crops dx: see Conv2dCache)
    dx = dw = None
    if need_dx or need_dw:  # (the bias gradient alone, of frozen filters on data, reads dy only)
        dyc, xc, wc = multiplicands(tf32, dy, x, w)
        dx, dw = _backward(dyc, xc, wc, stride, padding, need_dx, need_dw)
        del dyc, xc, wc  # upcast or TF32 copies: gone before the bias gradient's
    db = channel_sum(upcast(dy)) if has_bias else None  # a sum: never TF32-rounded
    dw = round_once(dw, w.dtype)
    if dw is not None and dw_dtype is not None:
        dw = dw.astype(dw_dtype, copy=False)  # exact: a widening
    return round_once(dx, x.dtype), dw, round_once(db, dy.dtype)


def _backward(dy, x, w, stride, padding, need_dx, need_dw=True):
    """dx (None unless ``need_dx``) and dw (None unless ``need_dw``) in dy's dtype (float32 or
    float64)."""
    xp = get_array_module(dy, x, w)
    n, c, h, wd = x.shape
    k, _, fh, fw = w.shape
    oh, ow = dy.shape[2:]
    if n == 0:  # no image: no input gradient, and a weight gradient that is an empty sum
        return ((xp.zeros(x.shape, dtype=dy.dtype) if need_dx else None),
                (xp.zeros(w.shape, dtype=dy.dtype) if need_dw else None))
    cff, length = c * fh * fw, oh * ow
    win = _windows(xp, _padded(xp, x, padding), fh, fw, oh, ow, stride)
    w2 = w.reshape(k, cff)
    # dx as a "full" convolution of dy with the flipped filters (im2col of dy, one GEMM) instead
    # of the column gradient's scatter-add: it copies K*FH*FW values per output pixel where the
    # scatter does FH*FW read-modify-write passes over C*OH*OW, so it wins when K <= C
    # (res1 128->128@16: 73 vs 97 ms on one core) and loses when K > C (layer1 64->128@32: 197
    # vs 156 ms).
    # It needs stride 1 and padding <= filter - 1 (the full convolution's padding is F - 1 - P).
    full = need_dx and (stride == (1, 1) and padding[0] <= fh - 1 and padding[1] <= fw - 1 and k <= c)
    dx = xp.empty_like(x) if need_dx else None
    if full:
        wf = xp.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).reshape(c, k * fh * fw)
        per_item = max(cff * length, k * fh * fw * h * wd) * x.itemsize
    else:
        per_item = cff * length * x.itemsize
    # The weight gradient's GEMM runs with the longer of K and C*FH*FW as its row count: with
    # few filters, (cols @ dy^T)^T is 1.4x faster than dy @ cols^T (32x147 from 64 images: 79
    # vs 52 GFLOP/s on one core); with few input taps (C*FH*FW < K) the other way round.
    transposed = cff >= k
    dw2 = None
    # Each chunk's weight-gradient GEMM writes a full K x C*FH*FW partial that is then added up:
    # where that is as large as the columns (res3 512x4608 from 4x4 images), chunks at least twice
    # the weights' size halve that traffic (res3 backward 85 -> 79 ms, 2 threads).
    for lo, hi in _chunks(n, per_item, max(_COL_BYTES, 2 * k * cff * x.itemsize)):
        m = hi - lo
        # Columns as (C*FH*FW, m*OH*OW): the weight gradient is ONE GEMM reducing over the chunk.
        dy_t = dy[lo:hi].reshape(m, k, length).transpose(1, 0, 2).reshape(k, m * length)
        if need_dw:
            cols = win[lo:hi].transpose(1, 2, 3, 0, 4, 5).reshape(cff, m * length)
            part = xp.matmul(cols, dy_t.T) if transposed else xp.matmul(dy_t, cols.T)
            if dw2 is None:
                dw2 = part
            else:
                dw2 += part
        if not need_dx:
            continue
        if full:
            _dx_full(xp, dy[lo:hi], wf, (fh, fw), padding, dx[lo:hi])
        else:
            _dx_scatter(xp, xp.matmul(w2.T, dy_t), (c, fh, fw, m, oh, ow), stride, padding, dx[lo:hi])
    if not need_dw:
        return dx, None
    dw = xp.ascontiguousarray(dw2.T) if transposed else dw2
    return dx, dw.reshape(w.shape)


def _dx_full(xp, dy, wf, filt, padding, out):
    """out[n, c] = sum_k dy[n, k] (*) flipped w[k, c], over dy padded by F - 1 - P: the input gradient."""
    m, k, oh, ow = dy.shape
    (fh, fw), (h, wd) = filt, out.shape[2:]
    dwin = _windows(xp, _padded(xp, dy, (fh - 1 - padding[0], fw - 1 - padding[1])), fh, fw, h, wd, (1, 1))
    dcols = dwin.transpose(1, 2, 3, 0, 4, 5).reshape(k * fh * fw, m * h * wd)
    out[...] = xp.matmul(wf, dcols).reshape(wf.shape[0], m, h, wd).transpose(1, 0, 2, 3)


def _dx_scatter(xp, dcols, shape, stride, padding, out, dilation=(1, 1)):
    """col2im: add the column gradient (C*FH*FW, m*OH*OW) back onto the input's pixels, into out
    (``dilation``: the taps' spacing)."""
    c, fh, fw, m, oh, ow = shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    h, wd = out.shape[2:]
    dcols = dcols.reshape(shape)
    # The padded gradient is laid out (C, m, H, W) like dcols, so every tap adds matching blocks
    # (20% faster than adding into (m, C, H, W)); one transposing copy into out at the end.
    dxpad = xp.zeros((c, m, h + 2 * ph, wd + 2 * pw), dtype=out.dtype)
    # Taps (i, j) are few; within one tap the output positions hit distinct pixels, so a plain
    # strided += is a correct scatter-add even for overlapping windows.
    for i in range(fh):
        for j in range(fw):
            dxpad[:, :, i * dh:i * dh + sh * oh:sh, j * dw:j * dw + sw * ow:sw] += dcols[:, i, j]
    out[...] = dxpad[:, :, ph:ph + h, pw:pw + wd].transpose(1, 0, 2, 3)


# This op's CUDA kernel launchers, for the 'cuda' and 'sim' targets, and the grouped/dilated path; last,
# as they import the names above.
from . import _launch_conv2d  # noqa: E402,F401  (registration)
from . import conv2d_grouped  # noqa: E402
