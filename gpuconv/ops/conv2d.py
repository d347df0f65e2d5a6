"""2-D convolution (cross-correlation, as in PyTorch and CS231n): NCHW input, (K, C, FH, FW) weights.

The reference path is im2col + BLAS. A strided *view* of the padded input exposes every
receptive field as ``(N, C, FH, FW, OH, OW)`` without copying; one copy of that view per batch
chunk gives the column matrix, and one batched GEMM per chunk does the arithmetic. The batch is
cut into chunks so the column buffer stays near ``_COL_BYTES``: a full CIFAR batch (128 x 64ch x
3x3 x 32x32) would otherwise need 300 MB, and the chunked loop is also faster because the
columns are still in cache when the GEMM reads them. Backward recomputes the columns from the
cached input instead of keeping them (memory over a cheap copy), lays them out as
(C*FH*FW, chunk*OH*OW) so that dW is one GEMM per chunk, and scatters the column gradient back
with one strided add per filter tap (FH*FW adds; never a loop over pixels).

Cache (shared with the kernel launchers, see ``_dispatch``):
``Conv2dCache(x, w, has_bias, stride, padding)`` with ``stride`` and ``padding`` as (h, w) pairs.
"""
from __future__ import annotations

from collections import namedtuple

from .. import backend
from ..backend import get_array_module
from . import _dispatch
from ._checks import check_float, check_rank, check_same_dtype, output_hw, pair

Conv2dCache = namedtuple("Conv2dCache", "x w has_bias stride padding")

# Bytes of column matrix per chunk. Measured on a 2-core EPYC (CIFAR 64->128ch 3x3): 4 MB runs the
# forward at ~110-120 GFLOP/s (BLAS peak here ~130), 64 MB at ~95, unchunked (300 MB) at ~50.
_COL_BYTES = 4 << 20


def conv2d_forward(x, w, b=None, stride=1, padding=0):
    """``y, cache``: y[n, k] = sum_c x[n, c] (*) w[k, c] + b[k], of shape (N, K, OH, OW).

    ``stride`` and ``padding`` are an int or an (h, w) pair; sizes must satisfy
    ``(W - F + 2P)/S + 1`` a whole number >= 1 along both axes."""
    stride, padding = _check_conv_args(x, w, b, stride, padding)
    target = backend.kernel_target(x, w, b)
    return _dispatch.call("conv2d_forward", target, _conv2d_forward_reference, x, w, b, stride, padding)


def conv2d_backward(dy, cache):
    """``dx, dw, db`` for ``conv2d_forward``'s output gradient ``dy``; ``db`` is None without bias."""
    x, w = cache.x, cache.w
    check_float("dy", dy)
    check_rank("dy", dy, 4, "NKHW")
    oh, ow = output_hw(x.shape, w.shape[2:], cache.stride, cache.padding)
    expected = (x.shape[0], w.shape[0], oh, ow)
    if tuple(dy.shape) != expected:
        raise ValueError(f"dy must have the forward output's shape {expected}, got {tuple(dy.shape)}")
    check_same_dtype("x", x, dy=dy)
    target = backend.kernel_target(dy, x, w)
    return _dispatch.call("conv2d_backward", target, _conv2d_backward_reference, dy, cache)


def _check_conv_args(x, w, b, stride, padding):
    check_float("x", x)
    check_float("w", w)
    check_rank("x", x, 4, "N, C, H, W")
    check_rank("w", w, 4, "K, C, FH, FW: out channels, in channels, filter height, filter width")
    check_same_dtype("x", x, w=w, b=b)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"channel mismatch: x has C={x.shape[1]} channels (shape {tuple(x.shape)}) but w "
                         f"expects C={w.shape[1]} (shape {tuple(w.shape)}, laid out K, C, FH, FW); "
                         f"make w.shape[1] equal x.shape[1]")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"b must have shape ({w.shape[0]},), one bias per filter of w {tuple(w.shape)}, "
                         f"got {tuple(b.shape)}")
    stride = pair("stride", stride, minimum=1)
    padding = pair("padding", padding, minimum=0)
    output_hw(x.shape, w.shape[2:], stride, padding)
    return stride, padding


def _padded(xp, x, padding):
    ph, pw = padding
    if ph == 0 and pw == 0:
        return xp.ascontiguousarray(x)
    out = xp.zeros(x.shape[:2] + (x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), dtype=x.dtype)
    out[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x
    return out


def _windows(xp, xpad, fh, fw, oh, ow, stride):
    """(N, C, FH, FW, OH, OW) view: element [n, c, i, j, p, q] = xpad[n, c, p*sh + i, q*sw + j]."""
    sn, sc, sh, sw = xpad.strides
    shape = xpad.shape[:2] + (fh, fw, oh, ow)
    strides = (sn, sc, sh, sw, sh * stride[0], sw * stride[1])
    return xp.lib.stride_tricks.as_strided(xpad, shape=shape, strides=strides)


def _chunks(n, bytes_per_item):
    step = max(1, _COL_BYTES // max(1, bytes_per_item))
    for lo in range(0, n, step):
        yield lo, min(n, lo + step)


def _conv2d_forward_reference(x, w, b, stride, padding):
    xp = get_array_module(x, w, b)
    n, c = x.shape[:2]
    k, _, fh, fw = w.shape
    oh, ow = output_hw(x.shape, (fh, fw), stride, padding)
    xpad = _padded(xp, x, padding)
    win = _windows(xp, xpad, fh, fw, oh, ow, stride)
    w2 = w.reshape(k, c * fh * fw)
    y = xp.empty((n, k, oh * ow), dtype=x.dtype)
    for lo, hi in _chunks(n, c * fh * fw * oh * ow * x.itemsize):
        cols = win[lo:hi].reshape(hi - lo, c * fh * fw, oh * ow)  # the one copy of im2col
        xp.matmul(w2, cols, out=y[lo:hi])
    y = y.reshape(n, k, oh, ow)
    if b is not None:
        y += b.reshape(1, k, 1, 1)
    return y, Conv2dCache(x, w, b is not None, stride, padding)


def _conv2d_backward_reference(dy, cache):
    x, w, has_bias, stride, padding = cache
    xp = get_array_module(dy, x, w)
    n, c, h, wd = x.shape
    k, _, fh, fw = w.shape
    oh, ow = dy.shape[2:]
    (sh, sw), (ph, pw) = stride, padding
    cff, length = c * fh * fw, oh * ow
    xpad = _padded(xp, x, padding)
    win = _windows(xp, xpad, fh, fw, oh, ow, stride)
    w2 = w.reshape(k, cff)
    dw2 = xp.zeros((k, cff), dtype=x.dtype)
    dxpad = xp.zeros_like(xpad)
    for lo, hi in _chunks(n, cff * length * x.itemsize):
        m = hi - lo
        # Columns as (C*FH*FW, m*OH*OW): the weight gradient becomes ONE GEMM reducing over the
        # whole chunk, not m small ones (measured 10-20% faster on 16x16 and 8x8 CIFAR layers).
        cols = win[lo:hi].transpose(1, 2, 3, 0, 4, 5).reshape(cff, m * length)
        dy_t = dy[lo:hi].reshape(m, k, length).transpose(1, 0, 2).reshape(k, m * length)
        dw2 += xp.matmul(dy_t, cols.T)
        dcols = xp.matmul(w2.T, dy_t).reshape(c, fh, fw, m, oh, ow)
        # col2im: taps (i, j) are few; within one tap the output positions hit distinct pixels,
        # so a plain strided += is a correct scatter-add even for overlapping windows.
        for i in range(fh):
            for j in range(fw):
                dxpad[lo:hi, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += dcols[:, i, j].transpose(1, 0, 2, 3)
    dx = xp.ascontiguousarray(dxpad[:, :, ph:ph + h, pw:pw + wd]) if (ph or pw) else dxpad
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw2.reshape(w.shape), db
