"""The CS231n layer functions (``layers.py``, ``fast_layers.py``, ``layer_utils.py``) on gpuconv.ops.

Every function keeps the assignment's name, arguments, parameter dicts and return values, and
forwards the arithmetic to :mod:`gpuconv.ops`; what is left here is argument translation:

- ``w`` of ``affine_*`` is (D, M) as in CS231n, while ``ops.linear_*`` takes (out, in): the
  weight and its gradient cross over as transposed *views* (no copy);
- ``conv_param`` / ``pool_param`` dicts become ``stride`` / ``padding`` / ``kernel_size``;
- ``dropout_param['p']`` is the KEEP probability (CS231n), ``ops.dropout_forward`` takes the drop
  probability (PyTorch);
- ``bn_param['momentum']`` weighs the OLD running value (CS231n: ``running = m*running +
  (1-m)*batch``, with the biased batch variance); PyTorch, and so ``ops.batchnorm2d_forward``,
  weigh the new one and keep the unbiased variance. See :func:`_batchnorm`.

Caches: each cache is a :class:`Cache`, a tuple holding what the CS231n cache holds (``(x, w, b)``
for affine, ``(x, w, b, conv_param)`` for conv, ``(x, pool_param)`` for pooling,
``(dropout_param, mask)`` for dropout; the sandwich layers nest them the same way) that also
carries the gpuconv.ops cache as ``.ops``. A backward given a plain tuple built by hand (say
``(x, w, b)``) rebuilds the ops cache by running the forward op once. ``relu_forward``'s cache is
``x`` itself, as in CS231n.

Arrays stay where they are: NumPy in, NumPy out; CuPy in, CuPy out. Mixing them, wrong dtypes
or shapes that do not fit raise the ops' errors unchanged.
"""
from __future__ import annotations

import numpy as np

from .. import ops
from ..backend import get_array_module
from ..ops import DropoutCache, ReluCache


class Cache(tuple):
    """A CS231n-shaped cache tuple that also carries the ``gpuconv.ops`` cache as ``.ops``."""

    def __new__(cls, items, ops_cache=None):
        self = super().__new__(cls, items)
        self.ops = ops_cache
        return self


def _ops_cache(cache, rebuild):
    found = getattr(cache, "ops", None)
    return found if found is not None else rebuild()


def _forward_cache(cache, forward_name):
    if getattr(cache, "ops", None) is None:
        raise TypeError(f"cache must be the cache returned by {forward_name}, got a {type(cache).__name__}: "
                        f"call {forward_name} first and pass its second return value")
    return cache.ops


def _param(params, key, dict_name, example):
    if not isinstance(params, dict):
        raise TypeError(f"{dict_name} must be a dict, got {type(params).__name__}: pass e.g. "
                        f"{dict_name}={example}")
    if key not in params:
        raise KeyError(f"{dict_name} has no {key!r} (it has {sorted(params)}): pass e.g. {dict_name}={example}")
    return params[key]


# ----------------------------------------------------------------------------- affine, relu
def affine_forward(x, w, b):
    """``out = x.reshape(N, D) @ w + b`` with x (N, d_1, ..., d_k), w (D, M), b (M,); cache ``(x, w, b)``."""
    _check_affine(x, w)
    out, c = ops.linear_forward(x, w.T, b)
    return out, Cache((x, w, b), c)


def affine_backward(dout, cache):
    """``dx, dw, db`` (shapes of x, w, b) for ``affine_forward``."""
    x, w, b = cache[:3]
    c = _ops_cache(cache, lambda: ops.linear_forward(x, w.T, b)[1])
    dx, dw_t, db = ops.linear_backward(dout, c)
    return dx, dw_t.T, db


def _check_affine(x, w):
    if getattr(w, "ndim", None) != 2:
        raise ValueError(f"w must be 2-D (D, M) as in CS231n's affine_forward, got shape "
                         f"{getattr(w, 'shape', type(w).__name__)}")
    d = int(np.prod(x.shape[1:])) if getattr(x, "ndim", 0) >= 1 else None
    if d is not None and d != w.shape[0]:
        raise ValueError(f"x of shape {tuple(x.shape)} flattens to D={d} features per example but w has "
                         f"shape {tuple(w.shape)} = (D, M) with D={w.shape[0]}: make w.shape[0] == {d}")


def relu_forward(x):
    """``out = max(x, 0)``; cache ``x``."""
    out, _ = ops.relu_forward(x)
    return out, x


def relu_backward(dout, cache):
    """``dx = dout * (x > 0)`` with ``cache = x``."""
    # The op's cache is ReluCache(x): CS231n's cache, named.
    return ops.relu_backward(dout, cache if isinstance(cache, ReluCache) else ReluCache(cache))


# ----------------------------------------------------------------------------- conv, pool
def conv_forward_naive(x, w, b, conv_param):
    """Convolution of x (N, C, H, W) with w (F, C, HH, WW) plus b (F,); ``conv_param`` has
    ``'stride'`` and ``'pad'`` (zeros on every side). Returns ``out, (x, w, b, conv_param)``."""
    stride = _param(conv_param, "stride", "conv_param", "{'stride': 1, 'pad': 1}")
    pad = _param(conv_param, "pad", "conv_param", "{'stride': 1, 'pad': 1}")
    out, c = ops.conv2d_forward(x, w, b, stride=stride, padding=pad)
    return out, Cache((x, w, b, conv_param), c)


def conv_backward_naive(dout, cache):
    """``dx, dw, db`` for ``conv_forward_naive``."""
    x, w, b, conv_param = cache[:4]
    c = _ops_cache(cache, lambda: conv_forward_naive(x, w, b, conv_param)[1].ops)
    return ops.conv2d_backward(dout, c)


# CS231n's "fast" versions exist because its naive loops were slow; here both are the same
# gpuconv op (im2col GEMM on NumPy, the implicit-GEMM kernels on a GPU or the simulator).
conv_forward_fast = conv_forward_naive
conv_backward_fast = conv_backward_naive


def max_pool_forward_naive(x, pool_param):
    """Max pooling of x (N, C, H, W); ``pool_param`` has ``'pool_height'``, ``'pool_width'`` and
    ``'stride'``. Returns ``out, (x, pool_param)``."""
    example = "{'pool_height': 2, 'pool_width': 2, 'stride': 2}"
    ph = _param(pool_param, "pool_height", "pool_param", example)
    pw = _param(pool_param, "pool_width", "pool_param", example)
    stride = _param(pool_param, "stride", "pool_param", example)
    out, c = ops.max_pool2d_forward(x, kernel_size=(ph, pw), stride=stride)
    return out, Cache((x, pool_param), c)


def max_pool_backward_naive(dout, cache):
    """``dx`` for ``max_pool_forward_naive``: each gradient goes to its window's max."""
    x, pool_param = cache[:2]
    c = _ops_cache(cache, lambda: max_pool_forward_naive(x, pool_param)[1].ops)
    return ops.max_pool2d_backward(dout, c)


max_pool_forward_fast = max_pool_forward_naive
max_pool_backward_fast = max_pool_backward_naive

# fast_layers.py's named strategies behind the _fast functions; the same op here too.
conv_forward_im2col = conv_forward_strides = conv_forward_naive
conv_backward_im2col = conv_backward_strides = conv_backward_naive
max_pool_forward_reshape = max_pool_forward_im2col = max_pool_forward_naive
max_pool_backward_reshape = max_pool_backward_im2col = max_pool_backward_naive


# ----------------------------------------------------------------------------- losses
def softmax_loss(x, y):
    """``loss, dx`` of the mean softmax cross-entropy of scores x (N, C) with labels y (N,).

    ``loss`` is a Python float for NumPy inputs, as in CS231n, and a 0-d CuPy array for CuPy
    inputs: turning it into a float would wait for the GPU on every call; ``float(loss)`` does
    that when you want it (printing it does too)."""
    loss, dx = ops.softmax_cross_entropy(x, y)
    return _scalar(loss), dx


def svm_loss(x, y):
    """``loss, dx`` of the mean multiclass SVM (hinge, margin 1) loss; ``loss`` as in softmax_loss
    (on CuPy, out-of-range labels give a NaN loss rather than a readback for the check).

    gpuconv.ops has no hinge loss, so this is its one implementation, in array-agnostic xp."""
    xp = get_array_module(x, y)
    _check_scores_labels(x, y)
    n = x.shape[0]
    rows = xp.arange(n)
    margins = xp.maximum(0, x - x[rows, y][:, None] + 1.0)
    margins[rows, y] = 0
    positive = margins > 0
    dx = positive.astype(x.dtype)
    dx[rows, y] -= positive.sum(axis=1).astype(x.dtype)
    dx /= n
    loss = margins.sum() / n
    if not isinstance(y, np.ndarray):
        # On a GPU a label range check would read back; as ops.softmax_cross_entropy does, a bad
        # label makes the loss NaN instead (device indexing would silently wrap around).
        loss = xp.where(((y >= 0) & (y < x.shape[1])).all(), loss, xp.nan)
    return _scalar(loss), dx


def _check_scores_labels(x, y):
    if getattr(x, "ndim", None) != 2 or x.dtype.kind != "f":
        raise TypeError(f"x must be a 2-D float array of scores (N, C), got "
                        f"{getattr(x, 'dtype', type(x).__name__)} of shape {getattr(x, 'shape', None)}")
    if getattr(y, "ndim", None) != 1 or y.dtype.kind not in "iu" or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be a 1-D integer array of {x.shape[0]} labels (one per row of x), got "
                         f"{getattr(y, 'dtype', type(y).__name__)} of shape {getattr(y, 'shape', None)}: "
                         f"use y.astype(np.int64)")
    if isinstance(y, np.ndarray) and y.size and (y.min() < 0 or y.max() >= x.shape[1]):
        raise ValueError(f"labels must lie in [0, {x.shape[1]}) (x has C={x.shape[1]} classes), got values in "
                         f"[{y.min()}, {y.max()}]")


def _scalar(loss):
    return float(loss) if isinstance(loss, (np.ndarray, np.generic, float, int)) else loss


# ----------------------------------------------------------------------------- batchnorm
def batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalization of x (N, D) per feature; ``bn_param``: ``'mode'`` ('train'|'test'),
    ``'eps'`` (1e-5), ``'momentum'`` (0.9), ``'running_mean'`` / ``'running_var'`` (D,) (zeros at
    first; updated in the dict in train mode). Returns ``out, cache``."""
    if getattr(x, "ndim", None) != 2:
        raise ValueError(f"x must be 2-D (N, D) for batchnorm_forward, got shape {getattr(x, 'shape', None)}: "
                         f"use spatial_batchnorm_forward for (N, C, H, W) inputs")
    n, d = x.shape
    out, c = _batchnorm(x.reshape(n, d, 1, 1), gamma, beta, bn_param)
    return out.reshape(n, d), Cache((x, gamma, beta), c)


def batchnorm_backward(dout, cache):
    """``dx, dgamma, dbeta`` for ``batchnorm_forward``."""
    n, d = dout.shape
    c = _forward_cache(cache, "batchnorm_forward")
    dx, dgamma, dbeta = ops.batchnorm2d_backward(dout.reshape(n, d, 1, 1), c)
    return dx.reshape(n, d), dgamma, dbeta


# The assignment asks for a second, simplified derivation; the op has one (already simplified).
batchnorm_backward_alt = batchnorm_backward


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalization of x (N, C, H, W) per channel, with ``bn_param`` as in batchnorm_forward."""
    out, c = _batchnorm(x, gamma, beta, bn_param)
    return out, Cache((x, gamma, beta), c)


def spatial_batchnorm_backward(dout, cache):
    """``dx, dgamma, dbeta`` for ``spatial_batchnorm_forward``."""
    return ops.batchnorm2d_backward(dout, _forward_cache(cache, "spatial_batchnorm_forward"))


def _batchnorm(x4, gamma, beta, bn_param):
    mode = _param(bn_param, "mode", "bn_param", "{'mode': 'train'}")
    if mode not in ("train", "test"):
        raise ValueError(f"bn_param['mode'] must be 'train' or 'test', got {mode!r}")
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    xp = get_array_module(x4, gamma, beta)
    channels = x4.shape[1]
    running_mean = bn_param.get("running_mean", xp.zeros(channels, dtype=x4.dtype))
    running_var = bn_param.get("running_var", xp.zeros(channels, dtype=x4.dtype))
    if mode == "test":
        return ops.batchnorm2d_forward(x4, gamma, beta, running_mean, running_var, training=False,
                                       momentum=0.0, eps=eps)
    # The op keeps PyTorch's running statistics; with momentum 1 into fresh buffers it hands back
    # exactly this batch's mean and unbiased variance, from which CS231n's update follows.
    batch_mean = xp.zeros(channels, dtype=x4.dtype)
    batch_var = xp.zeros(channels, dtype=x4.dtype)
    out, c = ops.batchnorm2d_forward(x4, gamma, beta, batch_mean, batch_var, training=True,
                                     momentum=1.0, eps=eps)
    count = x4.size // channels
    biased = batch_var * ((count - 1) / count)
    bn_param["running_mean"] = momentum * running_mean + (1 - momentum) * batch_mean
    bn_param["running_var"] = momentum * running_var + (1 - momentum) * biased
    return out, c


# ----------------------------------------------------------------------------- dropout
def dropout_forward(x, dropout_param):
    """Inverted dropout; ``dropout_param``: ``'p'`` = probability of KEEPING a unit, ``'mode'``
    ('train'|'test'), optional ``'seed'`` (same seed -> same mask, for gradient checks).
    Returns ``out, (dropout_param, mask)``; mask is the scaled keep mask (None in test mode)."""
    p = _param(dropout_param, "p", "dropout_param", "{'p': 0.5, 'mode': 'train'}")
    mode = _param(dropout_param, "mode", "dropout_param", "{'p': 0.5, 'mode': 'train'}")
    if mode == "test":
        return x, Cache((dropout_param, None), DropoutCache(None))
    if mode != "train":
        raise ValueError(f"dropout_param['mode'] must be 'train' or 'test', got {mode!r}")
    if not 0 < p <= 1:
        raise ValueError(f"dropout_param['p'] is the keep probability and must lie in (0, 1], got {p!r}")
    # A NumPy generator for NumPy and CuPy x alike: it only draws the mask's 64-bit key (see
    # gpuconv.ops.dropout), so a seed gives the same mask on every device.
    seed = dropout_param.get("seed")
    rng = np.random.default_rng(seed) if seed is not None else None
    out, c = ops.dropout_forward(x, p=1.0 - p, training=True, rng=rng)
    return out, Cache((dropout_param, c.mask), c)


def dropout_backward(dout, cache):
    """``dx`` for ``dropout_forward``."""
    # The mask decides, not dropout_param['mode']: models flip the mode in the same dict later.
    c = _ops_cache(cache, lambda: DropoutCache(cache[1]))
    return ops.dropout_backward(dout, c)


# ----------------------------------------------------------------------------- sandwich layers
def affine_relu_forward(x, w, b):
    a, fc_cache = affine_forward(x, w, b)
    out, relu_cache = relu_forward(a)
    return out, (fc_cache, relu_cache)


def affine_relu_backward(dout, cache):
    fc_cache, relu_cache = cache
    return affine_backward(relu_backward(dout, relu_cache), fc_cache)


def conv_relu_forward(x, w, b, conv_param):
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    out, relu_cache = relu_forward(a)
    return out, (conv_cache, relu_cache)


def conv_relu_backward(dout, cache):
    conv_cache, relu_cache = cache
    return conv_backward_fast(relu_backward(dout, relu_cache), conv_cache)


def conv_relu_pool_forward(x, w, b, conv_param, pool_param):
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    s, relu_cache = relu_forward(a)
    out, pool_cache = max_pool_forward_fast(s, pool_param)
    return out, (conv_cache, relu_cache, pool_cache)


def conv_relu_pool_backward(dout, cache):
    conv_cache, relu_cache, pool_cache = cache
    ds = max_pool_backward_fast(dout, pool_cache)
    return conv_backward_fast(relu_backward(ds, relu_cache), conv_cache)
