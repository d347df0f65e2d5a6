"""``cs231n/fast_layers.py`` on gpuconv: the same names, the same caches, no Cython to build.

Every strategy is the same gpuconv op (im2col GEMM on NumPy, the implicit-GEMM kernels on a GPU
or the simulator); what differs is the cache each returns, laid out as the assignment's:

- ``conv_forward_strides`` (= ``conv_forward_fast``) and ``conv_forward_im2col``:
  ``(x, w, b, conv_param, x_cols)``, ``x_cols`` of shape (C*HH*WW, N*out_h*out_w) with columns in
  (N, out_h, out_w) order for strides and (out_h, out_w, N) order for im2col;
- ``max_pool_forward_reshape``: ``(x, x_reshaped, out)``;
- ``max_pool_forward_im2col``: ``(x, x_cols, x_cols_argmax, pool_param)``;
- ``max_pool_forward_fast``: ``('reshape', reshape_cache)`` when the windows are square, as wide
  as the stride and tile the input, else ``('im2col', im2col_cache)``.

``x_cols`` and the argmax are built on first access (they are big; only code that unpacks the
cache reads them). Any backward here accepts any of these caches, ours or built by hand.
"""
from __future__ import annotations

import numpy as np

from ...backend import get_array_module
from ...ops._checks import check_rank, conv_padding, pair, same_padding_sides
from ._basic import (_POOL_EXAMPLE, conv_backward, conv_forward_naive, max_pool_backward_naive,
                     max_pool_forward_naive, param)
from ._call import Cache, LazyCache, cache_items, check_arrays

__all__ = [
    "conv_forward_im2col", "conv_forward_strides", "conv_backward_strides", "conv_backward_im2col",
    "conv_forward_fast", "conv_backward_fast",
    "max_pool_forward_fast", "max_pool_backward_fast", "max_pool_forward_reshape", "max_pool_backward_reshape",
    "max_pool_forward_im2col", "max_pool_backward_im2col",
]


def _conv_cols(x, w, conv_param, order):
    xp = get_array_module(x)
    n, ch, h, wd = x.shape
    hh, ww = w.shape[2:]
    xpad = xp.pad(x, ((0, 0), (0, 0)) + _pad_sides(conv_param, (hh, ww)))
    sh, sw = pair("stride", conv_param["stride"], 1)
    oh, ow = (xpad.shape[2] - hh) // sh + 1, (xpad.shape[3] - ww) // sw + 1
    taps = xp.stack([xpad[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                     for i in range(hh) for j in range(ww)])              # (HH*WW, N, C, oh, ow)
    taps = taps.reshape(hh, ww, n, ch, oh, ow)
    axes = (3, 0, 1, 2, 4, 5) if order == "strides" else (3, 0, 1, 4, 5, 2)
    return xp.ascontiguousarray(taps.transpose(axes)).reshape(ch * hh * ww, n * oh * ow)


def _pad_sides(conv_param, filt):
    """``((top, bottom), (left, right))``: the zeros of ``conv_param['pad']`` in any form the op
    takes (an int, an (h, w) pair, 'valid', or 'same', whose even filter sizes get the extra
    zero after the image)."""
    pad = conv_padding(conv_param["pad"], filt, pair("stride", conv_param["stride"], 1))
    if isinstance(pad, str):
        return same_padding_sides(filt)
    ph, pw = pair("pad", pad)
    return (ph, ph), (pw, pw)


def _conv_forward(x, w, b, conv_param, order):
    out, cache = conv_forward_naive(x, w, b, conv_param)
    return out, LazyCache(cache, [lambda c: _conv_cols(c[0], c[1], c[3], order)], cache.ops, cache.dtype,
                          cache.device)


def conv_forward_strides(x, w, b, conv_param):
    """Convolution as ``conv_forward_naive``; cache ``(x, w, b, conv_param, x_cols)``."""
    return _conv_forward(x, w, b, conv_param, "strides")


def conv_forward_im2col(x, w, b, conv_param):
    """Convolution as ``conv_forward_naive``; cache ``(x, w, b, conv_param, x_cols)`` (im2col order)."""
    return _conv_forward(x, w, b, conv_param, "im2col")


def conv_backward_strides(dout, cache):
    """``dx, dw, db`` for any of the convolution forwards."""
    return conv_backward(dout, cache_items(cache, "conv_forward_fast", "x, w, b, conv_param"))


conv_backward_im2col = conv_backward_strides
conv_forward_fast = conv_forward_strides
conv_backward_fast = conv_backward_strides


def _pool_sizes(pool_param):
    """``(pool_height, pool_width, stride)`` of ``pool_param``."""
    return tuple(param(pool_param, key, "pool_param", _POOL_EXAMPLE) for key in ("pool_height", "pool_width", "stride"))


def _nchw(x):
    """``x``, checked to be an (N, C, H, W) array before its sizes choose a strategy."""
    if type(x) is not np.ndarray:
        check_arrays(x=x)
    return check_rank("x", x, 4, "N, C, H, W")


def max_pool_forward_reshape(x, pool_param):
    """Max pooling with windows as wide as the stride that tile x; cache ``(x, x_reshaped, out)``."""
    ph, pw, s = _pool_sizes(pool_param)
    n, ch, h, w = _nchw(x).shape
    if not (ph == pw == s and h % ph == 0 and w % pw == 0):
        raise ValueError(f"max_pool_forward_reshape needs square windows as wide as the stride that tile the input; "
                         f"got pool_param={pool_param} for x of shape {tuple(x.shape)}: use max_pool_forward_fast")
    out, cache = max_pool_forward_naive(x, pool_param)
    inner = Cache((x, x.reshape(n, ch, h // ph, ph, w // pw, pw), out), cache.ops, cache.dtype, cache.device)
    return out, inner


def max_pool_forward_im2col(x, pool_param):
    """Max pooling; cache ``(x, x_cols, x_cols_argmax, pool_param)``."""
    out, cache = max_pool_forward_naive(x, pool_param)
    lazy = [lambda c: _pool_cols(c[0], pool_param), lambda c: c[1].argmax(axis=0), lambda c: pool_param]
    return out, LazyCache((x,), lazy, cache.ops, cache.dtype, cache.device)


def _pool_cols(x, pool_param):
    ph, pw, s = _pool_sizes(pool_param)
    n, ch, h, w = x.shape
    oh, ow = (h - ph) // s + 1, (w - pw) // s + 1
    taps = get_array_module(x).stack([x[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s]
                                      for i in range(ph) for j in range(pw)])
    return taps.reshape(ph * pw, n * ch, oh, ow).transpose(0, 2, 3, 1).reshape(ph * pw, -1)


def max_pool_backward_reshape(dout, cache):
    """``dx`` for ``max_pool_forward_reshape``."""
    x, x_reshaped = cache_items(cache, "max_pool_forward_reshape", "x, x_reshaped, out")[:2]
    size = x_reshaped.shape[3]
    return max_pool_backward_naive(dout, _as_naive(cache, x, {"pool_height": size, "pool_width": size,
                                                            "stride": size}))


def max_pool_backward_im2col(dout, cache):
    """``dx`` for ``max_pool_forward_im2col``."""
    cache_items(cache, "max_pool_forward_im2col", "x, x_cols, x_cols_argmax, pool_param")
    return max_pool_backward_naive(dout, _as_naive(cache, cache[0], cache[3]))


def _as_naive(cache, x, pool_param):
    return Cache((x, pool_param), getattr(cache, "ops", None), getattr(cache, "dtype", None),
                 getattr(cache, "device", None))


def max_pool_forward_fast(x, pool_param):
    """Max pooling, cached as ``('reshape', cache)`` or ``('im2col', cache)`` like the assignment's."""
    ph, pw, s = _pool_sizes(pool_param)
    _nchw(x)
    if ph == pw == s and x.shape[2] % ph == 0 and x.shape[3] % pw == 0:
        out, cache = max_pool_forward_reshape(x, pool_param)
        return out, Cache(("reshape", cache), cache.ops, cache.dtype, cache.device)
    out, cache = max_pool_forward_im2col(x, pool_param)
    return out, Cache(("im2col", cache), cache.ops, cache.dtype, cache.device)


def max_pool_backward_fast(dout, cache):
    """``dx`` for ``max_pool_forward_fast``."""
    method, real_cache = cache_items(cache, "max_pool_forward_fast", "method, cache")[:2]
    if method == "reshape":
        return max_pool_backward_reshape(dout, real_cache)
    if method == "im2col":
        return max_pool_backward_im2col(dout, real_cache)
    raise ValueError(f"unrecognized max_pool_forward_fast cache method {method!r}: pass the cache it returned")

