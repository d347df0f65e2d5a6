"""Batch normalization over the (N, H, W) axes of an NCHW tensor, with PyTorch's semantics.

Training normalizes with the batch mean and the *biased* variance, and updates the running
statistics in place with the *unbiased* variance (``n / (n - 1)``), exactly as
``torch.nn.BatchNorm2d``: ``running = (1 - momentum) * running + momentum * batch_stat``.
Evaluation normalizes with the running statistics and leaves them alone.

Batches without values, as PyTorch treats them: an empty batch (N, H or W zero) gives an empty
output in either mode, and in training leaves the running statistics as they were (there is no
batch statistic to blend in); its backward gives an empty dx and zero dgamma and dbeta. One value
per channel (N*H*W == 1) in training is refused, as PyTorch refuses it ("Expected more than 1
value per channel when training"): its variance would be 0 and the unbiased one 0/0.

Precision (gpuconv.precision): the statistics and the normalization are computed in x's compute
dtype, float32 for a bfloat16/float16 x (upcast exactly), and y and dx are rounded once to x's
dtype. gamma, beta, the running statistics, dgamma and dbeta stay in the compute dtype: float32
for bfloat16/float16 x (x's own dtype for float32 and float64), so a low-precision network keeps
its batch-norm parameters and statistics in float32.

Fused activation: ``activation='relu'`` or ``'gelu'`` applies that activation to the output,
``y = act(z)``, with z the normalization's output rounded to x's dtype: exactly BatchNorm2d
followed by the ReLU/GELU op, bit for bit, in one pass where the kernels run (the backward
recomputes z instead of keeping it). Networks that follow every batch norm with an
activation (fast_net, airbench94) save the activation's passes over memory and its launches.

Cache (shared with the kernel launchers, see ``_dispatch``):
``BatchNorm2dCache(x, mean, gamma, inv_std, training, beta, activation, cdf)``: the input (in its
own dtype and layout), the mean it was centered on, the scale and ``1 / sqrt(var + eps)`` per
channel (mean and inv_std of the batch in training; of the running statistics in eval, the mean
copied), and, for a fused activation, the shift and the activation's name (``beta`` None and ``activation`` None
without). The backward recomputes xhat = (x - mean) * inv_std with the forward's operations
(:func:`normalized`), so it gets the forward's bits while the cache holds x's bytes (2 per element
for bfloat16/float16 x) instead of a float32 xhat (4);
``cdf``: the NumPy path's Phi(z) of a fused GELU (see ``gelu.py``; None from the kernels);
``dtype``: the output's, which dy must have (set by :func:`batchnorm2d_forward`; None: not checked).
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import backend, layout
from ..backend import get_array_module
from ..precision import channel_sum, compute_dtype, round_once, upcast
from . import _batchnorm_blocked, _dispatch
from ._checks import (Unkeyed, cache_type, cached, check_bool, check_cache, check_compute_dtype, check_dy_dtype,
                      check_float, check_rank, check_shape, checked_once, exactly_bool, plain, signature)
from .gelu import GeluCache, _gelu_backward_reference, _gelu_forward_reference
from .relu import ReluCache, _relu_backward_reference, _relu_forward_reference

_PARAMS_WHY = "batch norm keeps gamma, beta and the running statistics in its compute dtype"

BatchNorm2dCache = cache_type("BatchNorm2dCache", "x mean gamma inv_std training beta activation cdf dtype", __name__,
                              defaults=(None, None, None, None))

# The activations batch norm can apply to its output (None: none); the kernels' ACT_* codes
# (kernels/activation.cuh) are the indices here.
ACTIVATIONS = (None, "relu", "gelu")
# name -> (forward reference, backward reference, cache type) of the separate op it fuses
_ACT_REFERENCE = {"relu": (_relu_forward_reference, _relu_backward_reference, ReluCache),
                  "gelu": (_gelu_forward_reference, _gelu_backward_reference, GeluCache)}


def check_activation(activation):
    """``activation`` if it is one of :data:`ACTIVATIONS`, else a ValueError naming them."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r}: batch norm fuses None (no activation), 'relu' or 'gelu'")
    return activation


def batchnorm2d_forward(x, gamma, beta, running_mean, running_var, training=True, momentum=0.1, eps=1e-5,
                        activation=None):
    """``y, cache`` with ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` per channel, passed
    through ``activation`` ('relu' or 'gelu') when one is given.

    ``running_mean``/``running_var`` (C,) are updated in place when ``training``; they may be
    None in training (no running statistics kept) but are required in eval mode. An empty batch
    gives an empty ``y`` and leaves them unchanged, as in PyTorch."""
    training = _checked_args(x, gamma, beta, running_mean, running_var, training, momentum, eps, activation)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    if training and count == 0:
        y, cache = _empty_batch(x, gamma, beta, activation)
        return y, cache._replace(dtype=y.dtype)
    # No channels: nothing to launch (a grid of 0 blocks is no launch at all); the reference's empty result
    target = backend.kernel_target(x, gamma, beta, running_mean, running_var,
                                   names=("x", "gamma", "beta", "running_mean", "running_var")) if x.shape[1] else None
    y, cache = _dispatch.call("batchnorm2d_forward", target, _batchnorm2d_forward_reference,
                              x, gamma, beta, running_mean, running_var, bool(training), float(momentum), float(eps),
                              activation)
    return y, cache._replace(dtype=y.dtype)


# signatures of batchnorm2d_forward's arguments whose checks passed (the running statistics' write
# access is not in a signature: it is checked at every call)
_CHECKED: dict = {}


def _checked_args(x, gamma, beta, running_mean, running_var, training, momentum, eps, activation) -> bool:
    """``training`` as a bool, every argument checked; memoized by what the checks read (the arrays'
    type, shape and dtype, the other arguments' values; errors are not memoized): a network
    normalizes the same few geometries at every step."""
    def key():
        if type(momentum) not in (float, int) or type(eps) not in (float, int):
            raise Unkeyed
        return (signature(x), signature(gamma), signature(beta), signature(running_mean), signature(running_var),
                exactly_bool(training), momentum, eps, plain(activation))
    training = checked_once(_CHECKED, key, lambda: _check_args(x, gamma, beta, running_mean, running_var, training,
                                                               momentum, eps, activation))
    if training:  # (a buffer's flags can change between calls: not in the key)
        _check_writeable(running_mean, running_var)
    return training


def _check_writeable(running_mean, running_var):
    for name, a in (("running_mean", running_mean), ("running_var", running_var)):
        if a is not None and not getattr(a.flags, "writeable", True):  # (CuPy arrays are)
            raise ValueError(f"{name} is read-only, but training updates the running statistics in place: pass a "
                             f"writeable array ({name}.copy()), or training=False to normalize with them unchanged")


def _check_args(x, gamma, beta, running_mean, running_var, training, momentum, eps, activation) -> bool:
    check_activation(activation)
    training = check_bool("training", training)
    check_float("x", x)
    check_rank("x", x, 4, "N, C, H, W")
    c = x.shape[1]
    for name, a in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)):
        if a is not None:
            check_float(name, a)
            if tuple(a.shape) == (c,):  # (the message below is built for a wrong shape only)
                continue
            why = f"one value per channel of x {tuple(x.shape)}, laid out N, C, H, W"
            if tuple(a.shape) == (x.shape[3],) != (c,):  # images given as N, H, W, C
                why += (f"; x looks laid out N, H, W, C (its last axis has {x.shape[3]} values, as {name} does): pass "
                        "it as N, C, H, W: x.transpose(0, 3, 1, 2), a view that keeps its NHWC memory (channels_last)")
            check_shape(name, a, (c,), why)
    check_compute_dtype("x", x, _PARAMS_WHY, gamma=gamma, beta=beta, running_mean=running_mean,
                        running_var=running_var)
    if gamma is None or beta is None:
        raise ValueError("gamma and beta are required: pass xp.ones(C) and xp.zeros(C) for a plain normalization")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("eval mode (training=False) normalizes with running_mean and running_var, but one is "
                         "None: pass the running statistics, or use training=True")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var go together: pass both or neither")
    if training:
        _check_writeable(running_mean, running_var)
    # (a float, the layers' own, first: the abstract-class check costs Python calls per layer per step)
    if not ((type(momentum) is float or isinstance(momentum, numbers.Real)) and 0.0 <= momentum <= 1.0):
        raise ValueError(f"momentum must be a number in [0, 1] (weight of the new batch statistic), got {momentum!r}")
    if not ((type(eps) is float or isinstance(eps, numbers.Real)) and eps > 0):
        raise ValueError(f"eps must be a positive number added to the variance, got {eps!r}; 1e-5 is the default")
    count = x.shape[0] * x.shape[2] * x.shape[3]
    if training and count == 1:
        raise ValueError(f"training batch norm needs more than 1 value per channel to estimate a variance, got "
                         f"x of shape {tuple(x.shape)} (N*H*W = 1); use a larger batch or training=False")
    return training


def batchnorm2d_backward(dy, cache):
    """``dx, dgamma, dbeta``."""
    check_cache(cache, BatchNorm2dCache, "batchnorm2d_forward")
    check_float("dy", dy)
    if tuple(dy.shape) != tuple(cache.x.shape):
        raise ValueError(f"dy must have the forward output's shape {tuple(cache.x.shape)}, got {tuple(dy.shape)}")
    if cache.dtype is not None:
        check_dy_dtype(dy, cache.dtype)
    if cache.x.dtype != dy.dtype:
        raise TypeError(f"dy has dtype {dy.dtype} but the forward's x (kept for the backward) has dtype "
                        f"{cache.x.dtype}: pass dy in the dtype of the forward's x")
    # no channels: as the forward
    target = backend.kernel_target(dy, cache.x, names=("dy", cached("x"))) if dy.shape[1] else None
    return _dispatch.call("batchnorm2d_backward", target, _batchnorm2d_backward_reference, dy, cache)


def _empty_batch(x, gamma, beta, activation):
    """A training batch without values (N, H or W zero): an empty y in x's layout, no statistic
    (the running ones stay as they were: PyTorch's rule). The cache's mean and inv_std are zeros,
    read by nothing: the backward of no values is an empty dx and zero dgamma and dbeta."""
    with backend.array_device_context((x,)):
        y = layout.empty_like(x)
        zeros = get_array_module(x).zeros(x.shape[1], compute_dtype(x.dtype))
    return y, BatchNorm2dCache(x, zeros, gamma, zeros, True, beta if activation else None, activation)


def _per_channel(v):
    return v.reshape(1, -1, 1, 1)


def _batchnorm2d_forward_reference(x, gamma, beta, running_mean, running_var, training, momentum, eps,
                                   activation=None):
    x_in, dtype, x = x, x.dtype, upcast(x)
    xp = get_array_module(x, gamma, beta, running_mean, running_var)
    dt = x.dtype.type
    if xp is np and _batchnorm_blocked.applies(x):  # the CPU: in cache, a block at a time
        relu = activation == "relu" and x.dtype == dtype  # (after a rounding to dtype: the ReLU op's)
        stats = (None, None) if training else (running_mean.copy(), running_var)
        y, mean, var, inv_std = _batchnorm_blocked.forward(x, *stats, eps, gamma, beta, relu)
        if training and running_mean is not None:
            _update_running(running_mean, running_var, mean, var, x.shape, momentum)
        y, act = round_once(y, dtype), None
        if activation is not None and not relu:
            y, act = _ACT_REFERENCE[activation][0](y)
        if activation is None:
            return y, BatchNorm2dCache(x_in, mean, gamma, inv_std, training)
        return y, BatchNorm2dCache(x_in, mean, gamma, inv_std, training, beta, activation, getattr(act, "cdf", None))
    # Large temporaries are reused in place (out=): each fresh N*C*H*W array costs page faults
    # on top of its pass over memory. The arithmetic is unchanged, operation for operation.
    if training:
        mean = channel_sum(x, mean=True)
        centered = x - _per_channel(mean)
        work = xp.multiply(centered, centered)
        var = channel_sum(work, mean=True)
        if running_mean is not None:
            _update_running(running_mean, running_var, mean, var, x.shape, momentum)
    else:
        mean = running_mean.copy()  # the backward's; the running statistics may change before it
        centered = x - _per_channel(mean)
        var = running_var
        work = xp.empty_like(centered)
    inv_std = dt(1.0) / xp.sqrt(var + dt(eps))
    xhat = centered
    xhat *= _per_channel(inv_std)
    z = _output(xhat, gamma, beta, dtype, out=work)
    if activation is None:
        return z, BatchNorm2dCache(x_in, mean, gamma, inv_std, training)
    y, act = _ACT_REFERENCE[activation][0](z)
    # z is recomputed in the backward; GELU's Phi(z) is kept (recomputing it is an erfc)
    return y, BatchNorm2dCache(x_in, mean, gamma, inv_std, training, beta, activation, getattr(act, "cdf", None))


def _update_running(running_mean, running_var, mean, var, shape, momentum):
    """In place, so a layer's buffers (and a caller's references to them) see the update."""
    count, dt = shape[0] * shape[2] * shape[3], mean.dtype.type
    running_mean *= dt(1.0 - momentum)
    running_mean += dt(momentum) * mean
    running_var *= dt(1.0 - momentum)
    running_var += dt(momentum * count / (count - 1)) * var


def normalized(cache):
    """xhat = (x - mean) * inv_std of a :class:`BatchNorm2dCache`, in the compute dtype and x's
    layout: the forward's operations in its order, so the forward's bits on every path."""
    xhat = upcast(cache.x) - _per_channel(cache.mean)
    xhat *= _per_channel(cache.inv_std)
    return xhat


def _output(xhat, gamma, beta, dtype, out=None):
    """The normalization's output ``xhat * gamma + beta`` rounded once to ``dtype``: the forward's
    result, and the backward's recomputation of it under a fused activation."""
    y = get_array_module(xhat).multiply(xhat, _per_channel(gamma), out=out)
    y += _per_channel(beta)
    return round_once(y, dtype)


def _batchnorm2d_backward_reference(dy, cache):
    gamma, inv_std, training, beta, activation, cdf = cache[2:8]
    x = upcast(cache.x)
    relu = activation == "relu" and _batchnorm_blocked.applies(x, dy)  # (fused in the blocked backward)
    xhat = normalized(cache) if activation is not None and not relu else None
    if activation is not None and not relu:  # dy through the activation at the recomputed output, as its op returns it
        forward, backward, act_cache = _ACT_REFERENCE[activation]
        z = _output(xhat, gamma, beta, dy.dtype)
        dy = backward(dy, act_cache(z) if cdf is None else act_cache(z, cdf))
    dtype, dy = dy.dtype, upcast(dy)
    if get_array_module(dy) is np and _batchnorm_blocked.applies(x, dy):  # the CPU: in cache, a block at a time
        dx, dgamma, dbeta = _batchnorm_blocked.backward(dy, x, cache.mean, inv_std, gamma, beta, relu, training)
        return round_once(dx, dtype), dgamma, dbeta
    xhat = normalized(cache) if xhat is None else xhat
    xp = get_array_module(dy, xhat)
    dbeta = channel_sum(dy)
    work = dy * xhat
    dgamma = channel_sum(work)
    scale = _per_channel(gamma * inv_std)
    if not training or not dy.size:  # (no values, in training: an empty dx, where 1 / count below is undefined)
        return round_once(xp.multiply(dy, scale, out=work), dtype), dgamma, dbeta
    # The batch mean and variance depend on every input: d/dx of the normalization subtracts the
    # mean of dy and the projection of dy on xhat (the standard simplified form):
    # dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat)), evaluated in that order.
    count = xhat.shape[0] * xhat.shape[2] * xhat.shape[3]
    dt = dy.dtype.type
    dx = dy - _per_channel(dbeta * dt(1.0 / count))
    dx -= xp.multiply(xhat, _per_channel(dgamma * dt(1.0 / count)), out=work)
    dx *= scale
    return round_once(dx, dtype), dgamma, dbeta


# This op's CUDA kernel launchers, for the 'cuda' and 'sim' targets; last, as they import the names above.
from . import _launch_batchnorm  # noqa: E402,F401  (registration)
