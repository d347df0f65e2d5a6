"""CS231n's affine, ReLU, naive conv and pooling layers and losses, on gpuconv.ops.

Argument translation only: ``w`` of ``affine_*`` is (D, M) as in CS231n while ``ops.linear_*``
takes (out, in), so the weight and its gradient cross over as transposed views; ``conv_param`` /
``pool_param`` dicts become ``stride`` / ``padding`` / ``kernel_size``.

Caches hold what the assignment documents (``(x, w, b)`` for affine, ``(x, w, b, conv_param)``
for conv, ``(x, pool_param)`` for pooling, ``x`` itself for ReLU) plus the ops cache as ``.ops``.
A backward given a plain tuple built by hand rebuilds the ops cache by running the forward.
"""
from __future__ import annotations

import math

import numpy as np

from ... import ops
from ...backend import get_array_module
from ...ops._checks import remember, signature
from ._call import (Cache, Call, backward_call, cache_items, cast_all, check_arrays, is_array, plain_backward,
                    plain_dtype)


def param(params, key, dict_name, example):
    if not isinstance(params, dict):
        raise TypeError(f"{dict_name} must be a dict, got {type(params).__name__}: pass e.g. "
                        f"{dict_name}={example}")
    if key not in params:
        raise KeyError(f"{dict_name} has no {key!r} (it has {sorted(params)}): pass e.g. {dict_name}={example}")
    return params[key]


# ----------------------------------------------------------------------------- affine, relu
def affine_forward(x, w, b):
    """``out = x.reshape(N, D) @ w + b`` with x (N, d_1, ..., d_k), w (D, M), b (M,) (or (1, M), which
    NumPy broadcasts alike); cache ``(x, w, b)``."""
    _check_affine(x, w, b)
    dt = plain_dtype(x, w, b)
    if dt is not None:  # a host call on one dtype: the Call below would pass everything as it is
        bias = b.reshape(-1) if b is not None and b.ndim == 2 and b.shape[0] == 1 else b
        out, oc = ops.linear_forward(x, w.T, bias)
        return out, Cache((x, w, b), oc, dt)
    with Call(x, w, b) as c:
        bias = c.param(b)
        if getattr(bias, "ndim", 1) == 2 and bias.shape[0] == 1:
            bias = bias.reshape(-1)
        out, oc = ops.linear_forward(c.arg(x), c.param(w).T, bias)
        return c.out(out), c.cache((x, w, b), oc)


def affine_backward(dout, cache):
    """``dx, dw, db`` for ``affine_forward``: dx and dw of x's and w's shapes, db (M,) as the
    assignment's ``dout.sum(axis=0)``, a (1, M) bias's too (an update broadcasts it alike)."""
    oc = plain_backward(dout, cache)
    if oc is not None:
        dx, dw_t, db = ops.linear_backward(dout, oc)
        return dx, dw_t.T, db
    x, w, b = cache_items(cache, "affine_forward", "x, w, b")[:3]
    c, oc = backward_call(dout, cache, lambda dt: affine_forward(*cast_all(dt, x, w, b))[1])
    with c:
        dx, dw_t, db = ops.linear_backward(c.arg(dout), oc)
        return c.out(dx), c.out(dw_t.T), c.out(db)


# _check_affine's checks passed, by the arrays' signatures (they read shapes only); errors are not kept
_AFFINE_CHECKED: dict = {}


def _check_affine(x, w, b=None):
    try:
        key = (type(x), x.shape, type(w), w.shape, signature(b))  # (the shapes are all the checks read)
        if key in _AFFINE_CHECKED:
            return
    except (AttributeError, TypeError):  # not an array (the checks below then say so), an unhashable shape
        key = None
    _check_affine_shapes(x, w, b)
    if key is not None:
        remember(_AFFINE_CHECKED, key, True)


def _check_affine_shapes(x, w, b):
    check_arrays(x=x, w=w, b=b)
    if getattr(w, "ndim", None) != 2:
        raise ValueError(f"w must be 2-D (D, M) as in CS231n's affine_forward, got shape "
                         f"{getattr(w, 'shape', type(w).__name__)}")
    d = math.prod(x.shape[1:]) if getattr(x, "ndim", 0) >= 1 else None
    if d is not None and d != w.shape[0]:
        raise ValueError(f"x of shape {tuple(x.shape)} flattens to D={d} features per example but w has "
                         f"shape {tuple(w.shape)} = (D, M) with D={w.shape[0]}: make w.shape[0] == {d}")
    m = w.shape[1]
    if getattr(b, "shape", None) is not None and tuple(b.shape) not in ((m,), (1, m)):
        raise ValueError(f"b must have shape ({m},), one bias per output feature (column) of w {tuple(w.shape)} = "
                         f"(D, M), got {tuple(b.shape)}")


def relu_forward(x):
    """``out = max(x, 0)``; cache ``x``. Integer arrays stay integer, as in NumPy."""
    if type(x) is not np.ndarray:
        check_arrays(x=x)
    if x.dtype.kind in "biu":
        return get_array_module(x).maximum(x, 0), x
    if plain_dtype(x) is not None:
        return ops.relu_forward(x)[0], x
    with Call(x) as c:
        out, _ = ops.relu_forward(c.arg(x))
        return c.out(out), x


def relu_backward(dout, cache):
    """``dx = dout * (x > 0)`` with ``cache = x``."""
    x = cache.x if isinstance(cache, ops.ReluCache) else cache
    if type(dout) is not np.ndarray or type(x) is not np.ndarray:
        check_arrays(dout=dout)
        if not is_array(x):  # (relu_forward's cache is its x)
            raise TypeError(f"cache must be what relu_forward returned as its second value, its input x (an array), "
                            f"got {type(x).__name__}: call out, cache = relu_forward(x) and pass that cache")
    if dout.dtype.kind in "biu" or x.dtype.kind in "biu":
        return dout * (x > 0)
    if plain_dtype(dout, x) is not None:
        return ops.relu_backward(dout, ops.ReluCache(x))
    with Call(dout, x) as c:
        return c.out(ops.relu_backward(c.arg(dout), ops.ReluCache(c.arg(x))))


# ----------------------------------------------------------------------------- conv, pool
_CONV_EXAMPLE = "{'stride': 1, 'pad': 1}"
_POOL_EXAMPLE = "{'pool_height': 2, 'pool_width': 2, 'stride': 2}"


def conv_forward_naive(x, w, b, conv_param):
    """Convolution of x (N, C, H, W) with w (F, C, HH, WW) plus b (F,); ``conv_param`` has
    ``'stride'`` and ``'pad'`` (zeros on every side; or, as ``gpuconv.ops.conv2d_forward`` takes
    them, an (h, w) pair, 'valid' or 'same'). Returns ``out, (x, w, b, conv_param)``.

    The output is ``1 + (H + 2 * pad - HH) // stride`` high (and wide likewise), floored as the
    assignment's ``conv_forward_fast`` and students' naive loops compute it: where the division is
    not whole, the last rows (columns) of the padded input that no window reaches are left out."""
    stride = param(conv_param, "stride", "conv_param", _CONV_EXAMPLE)
    pad = param(conv_param, "pad", "conv_param", _CONV_EXAMPLE)
    dt = plain_dtype(x, w, b)
    if dt is not None:
        out, oc = ops.conv2d_forward(x, w, b, stride=stride, padding=pad, floor=True)
        return out, Cache((x, w, b, conv_param), oc, dt)
    with Call(x, w, b) as c:
        out, oc = ops.conv2d_forward(c.arg(x), c.param(w), c.param(b), stride=stride, padding=pad, floor=True)
        return c.out(out), c.cache((x, w, b, conv_param), oc)


def conv_backward_naive(dout, cache):
    """``dx, dw, db`` for ``conv_forward_naive``."""
    return conv_backward(dout, cache)


def conv_backward(dout, cache, need_dx=True):
    oc = plain_backward(dout, cache)
    if oc is not None:
        return ops.conv2d_backward(dout, oc, need_dx=need_dx)
    x, w, b, conv_param = cache_items(cache, "conv_forward_naive", "x, w, b, conv_param")[:4]
    c, oc = backward_call(dout, cache, lambda dt: conv_forward_naive(*cast_all(dt, x, w, b), conv_param)[1])
    with c:
        dx, dw, db = ops.conv2d_backward(c.arg(dout), oc, need_dx=need_dx)
        return c.out(dx), c.out(dw), c.out(db)


def max_pool_forward_naive(x, pool_param):
    """Max pooling of x (N, C, H, W); ``pool_param`` has ``'pool_height'``, ``'pool_width'`` and
    ``'stride'``. Returns ``out, (x, pool_param)``."""
    ph = param(pool_param, "pool_height", "pool_param", _POOL_EXAMPLE)
    pw = param(pool_param, "pool_width", "pool_param", _POOL_EXAMPLE)
    stride = param(pool_param, "stride", "pool_param", _POOL_EXAMPLE)
    if type(x) is not np.ndarray:
        check_arrays(x=x)
    if x.dtype.kind in "biu":   # NumPy keeps integers; the maximum of integers is exact in float64
        out, cache = max_pool_forward_naive(x.astype(np.float64), pool_param)
        return out.astype(x.dtype), cache
    dt = plain_dtype(x)
    if dt is not None:
        out, oc = ops.max_pool2d_forward(x, kernel_size=(ph, pw), stride=stride, floor=True)
        return out, Cache((x, pool_param), oc, dt)
    with Call(x) as c:  # floored output sizes, as the convolutions' (conv_forward_naive)
        out, oc = ops.max_pool2d_forward(c.arg(x), kernel_size=(ph, pw), stride=stride, floor=True)
        return c.out(out), c.cache((x, pool_param), oc)


def max_pool_backward_naive(dout, cache):
    """``dx`` for ``max_pool_forward_naive``: each gradient goes to its window's max."""
    oc = plain_backward(dout, cache)
    if oc is not None:
        return ops.max_pool2d_backward(dout, oc)
    x, pool_param = cache_items(cache, "max_pool_forward_naive", "x, pool_param")[:2]
    c, oc = backward_call(dout, cache, lambda dt: max_pool_forward_naive(x.astype(dt, copy=False), pool_param)[1])
    with c:
        return c.out(ops.max_pool2d_backward(c.arg(dout), oc))


# ----------------------------------------------------------------------------- losses
def softmax_loss(x, y):
    """``loss, dx`` of the mean softmax cross-entropy of scores x (N, C) with labels y (N,).

    ``loss`` is a NumPy scalar of x's dtype for NumPy inputs, as in CS231n, and a 0-d CuPy array
    for CuPy inputs: turning it into a number would wait for the GPU on every call; ``float(loss)``
    does that when you want it (printing it does too)."""
    y = _check_labels(x, y)
    if plain_dtype(x) is not None:
        loss, dx = ops.softmax_cross_entropy(x, y)
        return loss[()], dx
    with Call(x) as c:
        loss, dx = ops.softmax_cross_entropy(c.arg(x), c.labels(y))
        return scalar(c.out(loss)), c.out(dx)


def svm_loss(x, y):
    """``loss, dx`` of the mean multiclass SVM (hinge, margin 1) loss; ``loss`` as in softmax_loss
    (on CuPy, out-of-range labels give a NaN loss rather than a readback for the check).

    gpuconv.ops has no hinge loss, so this is its one implementation, in array-agnostic xp."""
    y = _check_labels(x, y)
    with Call(x) as c:
        xd = c.arg(x)
        yd = c.labels(y)
        xp = get_array_module(xd, yd)
        n = xd.shape[0]
        rows = xp.arange(n)
        margins = xp.maximum(0, xd - xd[rows, yd][:, None] + 1.0)
        margins[rows, yd] = 0
        positive = margins > 0
        dx = positive.astype(xd.dtype)
        dx[rows, yd] -= positive.sum(axis=1).astype(xd.dtype)
        dx /= n
        loss = margins.sum() / n
        if not isinstance(yd, np.ndarray):
            # On a GPU a label range check would read back; as ops.softmax_cross_entropy does, a bad
            # label makes the loss NaN instead (device indexing would silently wrap around).
            loss = xp.where(((yd >= 0) & (yd < xd.shape[1])).all(), loss, xp.nan)
        return scalar(c.out(loss)), c.out(dx)


def _check_labels(x, y):
    """``y`` as an array (a list of labels indexes as in the assignment's NumPy code), checked."""
    if isinstance(y, (list, tuple)):
        y = np.asarray(y)
    if getattr(x, "ndim", None) != 2 or x.dtype.kind not in "fiub":
        raise TypeError(f"x must be a 2-D array of scores (N, C), got "
                        f"{getattr(x, 'dtype', type(x).__name__)} of shape {getattr(x, 'shape', None)}")
    if getattr(y, "ndim", None) != 1 or y.dtype.kind not in "iu" or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be a 1-D integer array of {x.shape[0]} labels (one per row of x), got "
                         f"{getattr(y, 'dtype', type(y).__name__)} of shape {getattr(y, 'shape', None)}: "
                         f"use y.astype(np.int64)")
    if x.shape[0] == 0:  # (ops.softmax_cross_entropy's rule, for the SVM loss too)
        raise ValueError("x has no rows (N = 0): the mean loss over an empty batch is undefined; skip the empty batch")
    if isinstance(y, np.ndarray) and y.size:
        if y.size <= 64:  # a few labels (a gradient check's): as Python ints, without two reductions
            values = y.tolist()
            lo, hi = min(values), max(values)
        else:
            lo, hi = y.min(), y.max()
        if lo < 0 or hi >= x.shape[1]:
            raise ValueError(f"labels must lie in [0, {x.shape[1]}) (x has C={x.shape[1]} classes), got values in "
                             f"[{lo}, {hi}]")
    return y


def scalar(loss):
    """A NumPy scalar of the scores' dtype for host values, as the assignment's ``loss`` is
    (``np.float64`` is a Python float too; keeping the NumPy type keeps NumPy's promotion when a
    student adds a float32 regularization term); device values stay on the device."""
    if isinstance(loss, np.ndarray):
        return loss[()]
    return loss
