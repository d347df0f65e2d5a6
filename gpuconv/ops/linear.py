"""Fully connected layer: ``y = x_flat @ w.T + b`` with ``w`` as (out_features, in_features).

``x`` of any shape (N, ...) is flattened to (N, in_features), as the CS231n affine layer and a
PyTorch ``Flatten`` + ``Linear`` do; ``dx`` comes back in ``x``'s original shape and layout (a
channels_last x gets a channels_last dx, as from ``Flatten``).

Precision (gpuconv.precision): x, w, b (and dy) share one dtype; bfloat16/float16 operands are
upcast to float32, multiplied and summed there, and y, dx, dw, db rounded once to that dtype. In
TF32 mode (``precision="tf32"``, or the current setting when None) float32 x, w and dy are
rounded to TF32 before the matrix products; the bias and its gradient, sums, are not.

On 'cuda' and 'sim' every dtype runs gpuconv's kernels (``_launch_linear``): bfloat16/float16
the tensor-core GEMM (one launch forward, two or three backward), float32 and float64 the
convolution kernels, as a 1x1 convolution of (N, features, 1, 1) images.

Cache (shared with the kernel launchers, see ``_dispatch``): ``LinearCache(x, w, has_bias)``.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend, layout
from ..backend import get_array_module
from ..precision import multiplicands, round_once, upcast, use_tf32
from . import _dispatch
from ._checks import (cache_type, cached, check_bias, check_cache, check_float, check_rank, check_same_dtype,
                      checked_once, signature)

LinearCache = cache_type("LinearCache", "x w has_bias", __name__)


def linear_forward(x, w, b=None, precision=None):
    """``y, cache``: ``y`` of shape (N, out_features). ``precision`` 'fp32' or 'tf32' applies to
    float32 arrays (None: ``gpuconv.get_precision()``)."""
    # the checks read the arrays' types, shapes and dtypes only: passed once, passed again
    checked_once(_CHECKED, lambda: (type(x), x.shape, x.dtype, type(w), w.shape, w.dtype, signature(b)),
                 lambda: _check_forward(x, w, b))
    tf32 = use_tf32(precision, x.dtype)
    target = backend.kernel_target(x, w, b, names=("x", "w", "b"))
    return _dispatch.call("linear_forward", target, _linear_forward_reference, x, w, b, tf32)


# the forward's checks passed, by the arguments' signatures (a network, or a gradient check, calls
# the same few shapes at every step); errors are not memoized
_CHECKED: dict = {}
_CHECKED_BACKWARD: dict = {}


def _check_forward(x, w, b):
    check_float("x", x)
    check_float("w", w)
    check_rank("w", w, 2, "out_features, in_features")
    check_same_dtype("x", x, w=w, b=b)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (N, ...) with a batch axis and at least one feature axis, got "
                         f"shape {tuple(x.shape)}: add the batch axis, e.g. x.reshape(1, -1)")
    features = 1
    for d in x.shape[1:]:
        features *= d
    if features != w.shape[1]:
        raise ValueError(f"feature mismatch: x of shape {tuple(x.shape)} flattens to {features} features per "
                         f"sample but w of shape {tuple(w.shape)} (out_features, in_features) expects "
                         f"in_features={w.shape[1]}; make w.shape[1] equal prod(x.shape[1:])")
    check_bias(b, w, "output feature")


def _check_backward(dy, x, w):
    check_float("dy", dy)
    check_rank("dy", dy, 2, "N, out_features")
    expected = (x.shape[0], w.shape[0])
    if tuple(dy.shape) != expected:
        raise ValueError(f"dy must have the forward output's shape {expected}, got {tuple(dy.shape)}")
    check_same_dtype("x", x, dy=dy)


def linear_backward(dy, cache, precision=None):
    """``dx, dw, db``; ``dx`` has ``x``'s shape, ``db`` is None when the forward had no bias.
    ``precision`` as in :func:`linear_forward`, chosen anew for the backward."""
    check_cache(cache, LinearCache, "linear_forward")
    x, w = cache.x, cache.w
    # as the forward's, by signature: dy's and those of the arrays the cache holds
    checked_once(_CHECKED_BACKWARD, lambda: (type(dy), dy.shape, dy.dtype, type(x), x.shape, x.dtype, type(w),
                                             w.shape, w.dtype),
                 lambda: _check_backward(dy, x, w))
    tf32 = use_tf32(precision, dy.dtype)
    target = backend.kernel_target(dy, x, w, names=("dy", cached("x"), cached("w")))
    dx, dw, db = _dispatch.call("linear_backward", target, _linear_backward_reference, dy, cache, tf32)
    # The products give dx in logical (NCHW) order; the layer before keeps its layout only if dx does
    return (layout.to_channels_last(dx) if layout.is_channels_last(x) else dx), dw, db


def _flat(a):
    """``a`` as (N, features): itself when 2-D already (a view of the same memory either way)."""
    return a if a.ndim == 2 else a.reshape(a.shape[0], math.prod(a.shape[1:]))


def _module(*arrays):
    """NumPy for NumPy arrays (None among them), answered without a call; else get_array_module's."""
    for a in arrays:
        if a is not None and type(a) is not np.ndarray:
            return get_array_module(*arrays)
    return np


def _linear_forward_reference(x, w, b, tf32=False):
    if not tf32 and type(x) is np.ndarray and x.dtype.itemsize > 2:
        # float64 or float32 on NumPy: the products in the arrays' own dtype, nothing to upcast or round
        y = np.matmul(_flat(x), w.T)
        if b is not None:
            y += b
        return y, LinearCache(x, w, b is not None)
    xc, wc = multiplicands(tf32, x, w)
    xp = _module(xc, wc, b)
    y = xp.matmul(_flat(xc), wc.T)
    if b is not None:
        y += upcast(b)
    return round_once(y, x.dtype), LinearCache(x, w, b is not None)


def _linear_backward_reference(dy, cache, tf32=False):
    x, w, has_bias = cache
    if not tf32 and type(dy) is np.ndarray and dy.dtype.itemsize > 2:  # as in the forward
        dx = np.matmul(dy, w)
        return (dx if x.ndim == 2 else dx.reshape(x.shape), np.matmul(dy.T, _flat(x)),
                np.add.reduce(dy, axis=0) if has_bias else None)
    dyc, xc, wc = multiplicands(tf32, dy, x, w)
    xp = _module(dyc, xc, wc)
    dx = xp.matmul(dyc, wc)
    if x.ndim != 2:
        dx = dx.reshape(x.shape)
    dw = xp.matmul(dyc.T, _flat(xc))
    db = None
    if has_bias:  # a sum: never TF32-rounded
        dys = upcast(dy) if tf32 else dyc
        # (NumPy's add.reduce is what ndarray.sum calls, without its Python wrapper)
        db = np.add.reduce(dys, axis=0) if xp is np else dys.sum(axis=0)
    return round_once(dx, x.dtype), round_once(dw, w.dtype), round_once(db, dy.dtype)


from . import _launch_linear  # noqa: E402,F401  (registration)
