"""CS231n's normalization layers (batch, layer, spatial batch, spatial group) and dropout.

Batch norm runs ``ops.batchnorm2d_*``; its ``bn_param['momentum']`` weighs the OLD running value
(CS231n: ``running = m*running + (1-m)*batch``, with the biased batch variance), where the op
keeps PyTorch's running statistics, so the running update is done here. Layer and group norm
have no op: they are one row normalization each, written once in array-agnostic xp.

Dropout draws its mask from NumPy's global generator, ``np.random.rand(*x.shape)``, after
``np.random.seed(dropout_param['seed'])`` when a seed is given, exactly as the assignment does:
``np.random.seed(0)`` then a forward reproduces a student's mask bit for bit. CuPy arrays take
gpuconv's counter-based dropout mask instead (``ops.dropout.keep_bits``: the keep decisions of
kernels/dropout.cu, hashed on the device, no host mask to upload) from ONE 64-bit key drawn from
that same global generator, after the same ``np.random.seed``: a seed makes a device run
reproducible too (its masks are not the host's), and cuRAND, which gpuconv's CUDA installs do
not have, is never called. What ``p`` means depends on the edition: the probability of KEEPING
a unit (2018 on) or of DROPPING it (2016 and 2017); see :func:`dropout_forward` and
:func:`dropout_forward_2017`.
"""
from __future__ import annotations

import numbers

import numpy as np

from ... import ops
from ...backend import device_of, get_array_module, is_cupy_array, to_device
from ...ops._checks import check_shape
from ...ops.dropout import keep_bits
from ...precision import compute_dtype, round_once
from ._basic import param
from ._call import Cache, backward_call, cache_items, check_arrays, is_array, open_backward, open_call
from ._device import download


# ----------------------------------------------------------------------------- batch norm
def batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalization of x (N, D) per feature; gamma, beta (D,) or (1, D) (as NumPy broadcasts
    them alike; the gradients come back in their shape); ``bn_param``: ``'mode'`` ('train'|'test'),
    ``'eps'`` (1e-5), ``'momentum'`` (0.9), ``'running_mean'`` / ``'running_var'`` (D,) (zeros at
    first; updated in the dict in train mode). Returns ``out, cache``."""
    check_arrays(x=x, gamma=gamma, beta=beta)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (N, D) for batchnorm_forward, got shape {getattr(x, 'shape', None)}: "
                         f"use spatial_batchnorm_forward for (N, C, H, W) inputs")
    n, d = x.shape
    _check_per_channel(gamma, beta, d, ((d,), (1, d)), "feature", "D")
    with open_call(x, gamma, beta) as c:
        out, oc = _batchnorm(c, c.arg(x).reshape(n, d, 1, 1), gamma, beta, bn_param)
        return c.out(out.reshape(n, d)), c.cache((x, gamma, beta), oc)


def batchnorm_backward(dout, cache):
    """``dx, dgamma, dbeta`` for ``batchnorm_forward``."""
    n, d = dout.shape
    c, oc = _bn_backward_call(dout, cache, "batchnorm_forward")
    with c:
        dx, dgamma, dbeta = ops.batchnorm2d_backward(c.arg(dout).reshape(n, d, 1, 1), oc)
        return c.out(dx.reshape(n, d)), *_in_shapes_of(c, cache, dgamma, dbeta)


# The assignment asks for a second, simplified derivation; the op has one (already simplified).
batchnorm_backward_alt = batchnorm_backward


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalization of x (N, C, H, W) per channel, gamma and beta (C,) or (1, C, 1, 1) (the
    gradients come back in their shape), with ``bn_param`` as in batchnorm_forward."""
    check_arrays(x=x, gamma=gamma, beta=beta)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W) for spatial_batchnorm_forward, got shape {tuple(x.shape)}"
                         + (": use batchnorm_forward for (N, D) inputs" if x.ndim == 2 else ""))
    ch = x.shape[1]
    _check_per_channel(gamma, beta, ch, ((ch,), (1, ch, 1, 1)), "channel", "C")
    with open_call(x, gamma, beta) as c:
        out, oc = _batchnorm(c, c.arg(x), gamma, beta, bn_param)
        return c.out(out), c.cache((x, gamma, beta), oc)


def spatial_batchnorm_backward(dout, cache):
    """``dx, dgamma, dbeta`` for ``spatial_batchnorm_forward``."""
    c, oc = _bn_backward_call(dout, cache, "spatial_batchnorm_forward")
    with c:
        dx, dgamma, dbeta = ops.batchnorm2d_backward(c.arg(dout), oc)
        return c.out(dx), *_in_shapes_of(c, cache, dgamma, dbeta)


def _check_per_channel(gamma, beta, channels, shapes, what, letter):
    """gamma and beta hold one value per feature (channel), in a shape NumPy broadcasts per feature:
    students create them as (D,) or as (1, D) (spatial: (C,) or (1, C, 1, 1)), and either works
    in their own code."""
    for name, a in (("gamma", gamma), ("beta", beta)):
        shape = tuple(getattr(a, "shape", ()))
        if len(shape) == 1:
            continue                   # the op checks those (and names a channels-last x)
        if shape not in shapes:
            raise ValueError(f"{name} must hold one value per {what} of x, shape "
                             f"{' or '.join(str(s) for s in shapes)} ({letter}={channels}), got {shape}")


def _in_shapes_of(c, cache, dgamma, dbeta):
    """dgamma and dbeta as the caller gets them, in the shapes of the forward's gamma and beta and
    the call's dtype (the op keeps them in its compute dtype: float32 for bfloat16/float16)."""
    gamma, beta = cache[1], cache[2]
    return (c.out(round_once(dgamma, c.dtype).reshape(getattr(gamma, "shape", dgamma.shape))),
            c.out(round_once(dbeta, c.dtype).reshape(getattr(beta, "shape", dbeta.shape))))


def _bn_backward_call(dout, cache, forward_name):
    def widen(dt):   # a dout wider than the forward: NumPy would compute in dt from the same cache
        # the forward's xhat, widened, as x about a zero mean with unit inv_std, and gamma * inv_std
        # as gamma: the op's backward then reads that xhat and scale unchanged (no fused activation)
        oc = cache.ops
        xp = get_array_module(oc.x)
        return Cache(cache, oc._replace(x=ops.batchnorm.normalized(oc).astype(dt), mean=xp.zeros_like(oc.mean, dt),
                                        gamma=oc.gamma.astype(dt) * oc.inv_std.astype(dt),
                                        inv_std=xp.ones_like(oc.inv_std, dt), dtype=np.dtype(dt)), dt, cache.device)
    _forward_cache(cache, forward_name)
    return backward_call(dout, cache, widen)


def _forward_cache(cache, forward_name):
    if getattr(cache, "ops", None) is None:
        raise TypeError(f"cache must be the cache returned by {forward_name}, got a {type(cache).__name__}: "
                        f"call {forward_name} first and pass its second return value")
    return cache.ops


def _batchnorm(c, x4, gamma, beta, bn_param):
    mode = param(bn_param, "mode", "bn_param", "{'mode': 'train'}")
    if mode not in ("train", "test"):
        raise ValueError(f"bn_param['mode'] must be 'train' or 'test', got {mode!r}")
    eps = _number(bn_param, "eps", 1e-5, "bn_param")
    momentum = _number(bn_param, "momentum", 0.9, "bn_param")
    channels = x4.shape[1]
    xp = get_array_module(x4)
    # bn_param's running statistics stay where the caller's arrays are: on the host whenever the
    # call took NumPy arrays (also inside a layer_utils sandwich, whose caller did).
    on_host = c.host_io or c.inner
    host = np if on_host else xp
    # (zeros made only where the dict has none: bn_param.get(key, zeros) makes them at every call)
    running_mean = bn_param["running_mean"] if "running_mean" in bn_param else host.zeros(channels, dtype=c.dtype)
    running_var = bn_param["running_var"] if "running_var" in bn_param else host.zeros(channels, dtype=c.dtype)
    for key, v in (("running_mean", running_mean), ("running_var", running_var)):
        if getattr(v, "size", None) != channels or getattr(v, "ndim", 0) < 1:
            raise ValueError(f"bn_param[{key!r}] must hold one value per channel of x, shape ({channels},), got "
                             f"{type(v).__name__} of shape {getattr(v, 'shape', None)}: it was made for another "
                             f"layer or width; start from a fresh bn_param (or delete the key)")
    # The op keeps gamma, beta and the statistics in x's compute dtype (float32 for bfloat16/float16
    # arrays); what the caller gets back is in the call's dtype, as NumPy's arithmetic would give it.
    pd = compute_dtype(c.dtype)
    g, b = _per_channel(c.param(gamma), channels, pd), _per_channel(c.param(beta), channels, pd)
    if mode == "test":
        # the assignment stores the statistics it used, zeros when there were none
        bn_param["running_mean"], bn_param["running_var"] = running_mean, running_var
        return ops.batchnorm2d_forward(x4, g, b, _per_channel(c.arg(running_mean), channels, pd),
                                       _per_channel(c.arg(running_var), channels, pd), training=False,
                                       momentum=0.0, eps=eps)
    count = x4.shape[0] * x4.shape[2] * x4.shape[3]
    if count == 0:
        # An empty batch: an empty out, and no batch statistic to blend in (the assignment's
        # formulas would make the running statistics NaN); the op, as PyTorch, leaves them unchanged.
        bn_param["running_mean"], bn_param["running_var"] = running_mean, running_var
        return ops.batchnorm2d_forward(x4, g, b, None, None, training=True, momentum=0.0, eps=eps)
    if count == 1:
        # One value per channel (a batch of 1): the assignment's formulas give mean = x, variance 0,
        # out = beta and a zero input gradient, where the op (as PyTorch) refuses to estimate a
        # variance. The op's eval mode on those statistics computes it; its cache, marked as a
        # training one, gives the training backward (xhat = 0: dx = 0, dgamma = 0, dbeta = dout).
        batch_mean = x4.reshape(channels).astype(pd)
        biased = xp.zeros(channels, dtype=pd)
        out, oc = ops.batchnorm2d_forward(x4, g, b, batch_mean, biased, training=False, momentum=0.0, eps=eps)
        oc = oc._replace(training=True)
    else:
        # The op keeps PyTorch's running statistics; with momentum 1 into fresh buffers it hands back
        # exactly this batch's mean and unbiased variance, from which CS231n's update follows.
        batch_mean = xp.zeros(channels, dtype=pd)
        batch_var = xp.zeros(channels, dtype=pd)
        out, oc = ops.batchnorm2d_forward(x4, g, b, batch_mean, batch_var, training=True, momentum=1.0, eps=eps)
        biased = batch_var * ((count - 1) / count)
    batch_mean, biased = round_once(batch_mean, c.dtype), round_once(biased, c.dtype)
    if on_host:
        batch_mean, biased = download(batch_mean), download(biased)
    bn_param["running_mean"] = momentum * running_mean + (1 - momentum) * batch_mean
    bn_param["running_var"] = momentum * running_var + (1 - momentum) * biased
    return out, oc


def _number(params, key, default, dict_name, example=None):
    """``params[key]`` (``default`` where it has none; None: the key is required, ``example`` shows
    the dict), a real number: a string read from a config would fail later inside the arithmetic."""
    v = param(params, key, dict_name, example) if default is None else params.get(key, default)
    if isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind in "fiu":
        return v  # a 0-d array of a number (np.array(0.5)), used as it is, as before these checks
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{dict_name}[{key!r}] must be a number, got {v!r}"
                        + (f" (the default is {default})" if default is not None else ""))
    return v


def _check_dout(dout, like):
    """``dout`` has the shape of the forward's output (that of ``like``, the forward's input or
    mask): a gradient of another layer's output would broadcast, or fail deep in the arithmetic."""
    check_arrays(dout=dout)
    check_shape("dout", dout, like.shape, "the forward output's")


def _per_channel(a, channels, dtype):
    """A per-channel array as the op takes it: (channels,) in ``dtype``."""
    return round_once(a if a.ndim == 1 else a.reshape(channels), dtype)


# ----------------------------------------------------------------------------- layer and group norm
def layernorm_forward(x, gamma, beta, ln_param):
    """Layer normalization of x (N, D) per example: ``gamma * (x - mean) / sqrt(var + eps) + beta``
    with each row's mean and (biased) variance; gamma, beta (D,); ``ln_param['eps']`` (1e-5).
    Returns ``out, cache``; train and test mode are the same computation."""
    check_arrays(x=x, gamma=gamma, beta=beta)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (N, D) for layernorm_forward, got shape {tuple(x.shape)}")
    d = x.shape[1]
    for name, a in (("gamma", gamma), ("beta", beta)):
        if tuple(a.shape) not in ((d,), (1, d)):
            raise ValueError(f"{name} must hold one value per feature of x, shape ({d},) or (1, {d}) (D={d}), got "
                             f"{tuple(a.shape)}")
    eps = _number(ln_param, "eps", 1e-5, "ln_param") if isinstance(ln_param, dict) else 1e-5
    with open_call(x, gamma, beta) as c:
        g, b = c.param(gamma), c.param(beta)
        xhat, inv = _normalize_rows(c.arg(x), eps)
        return c.out(xhat * g + b), c.cache((x, gamma, beta, ln_param), (xhat, inv, g))


def layernorm_backward(dout, cache):
    """``dx, dgamma, dbeta`` for ``layernorm_forward``."""
    _forward_cache(cache, "layernorm_forward")
    _check_dout(dout, cache[0])
    with open_backward(dout, cache) as c:
        xhat, inv, g = cache.ops
        d = c.arg(dout)
        dx = _normalize_rows_backward(d * g, xhat, inv)
        gamma, beta = cache[1], cache[2]
        return (c.out(dx), c.out((d * xhat).sum(axis=0).reshape(gamma.shape)),
                c.out(d.sum(axis=0).reshape(beta.shape)))


def spatial_groupnorm_forward(x, gamma, beta, G, gn_param):
    """Group normalization of x (N, C, H, W): each example's channels in ``G`` contiguous groups,
    each group normalized over its channels and pixels, then ``gamma * xhat + beta`` per channel.
    gamma, beta of shape (C,) or (1, C, 1, 1) (gradients come back in the same shape);
    ``gn_param['eps']`` (1e-5). Returns ``out, cache``."""
    check_arrays(x=x, gamma=gamma, beta=beta)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W) for spatial_groupnorm_forward, got shape "
                         f"{getattr(x, 'shape', None)}")
    n, ch, h, w = x.shape
    if isinstance(G, bool) or not isinstance(G, (int, np.integer)) or G < 1 or ch % G:
        raise ValueError(f"G must be a whole number of groups dividing the C={ch} channels, got {G!r}")
    for name, a in (("gamma", gamma), ("beta", beta)):
        if getattr(a, "size", None) != ch:
            raise ValueError(f"{name} must hold one value per channel, shape (C,) or (1, C, 1, 1) with C={ch}; "
                             f"got shape {getattr(a, 'shape', None)}")
    eps = _number(gn_param, "eps", 1e-5, "gn_param") if isinstance(gn_param, dict) else 1e-5
    with open_call(x, gamma, beta) as c:
        g, b = c.param(gamma).reshape(1, ch, 1, 1), c.param(beta).reshape(1, ch, 1, 1)
        xhat, inv = _normalize_rows(c.arg(x).reshape(n * G, -1), eps)
        xhat = xhat.reshape(n, ch, h, w)
        return c.out(xhat * g + b), c.cache((x, gamma, beta, G, gn_param), (xhat, inv, g))


def spatial_groupnorm_backward(dout, cache):
    """``dx, dgamma, dbeta`` for ``spatial_groupnorm_forward``; dgamma, dbeta in gamma's shape."""
    _forward_cache(cache, "spatial_groupnorm_forward")
    x, gamma, beta, G = cache[:4]
    _check_dout(dout, x)
    n, ch, h, w = x.shape
    with open_backward(dout, cache) as c:
        xhat, inv, g = cache.ops
        d = c.arg(dout)
        dx = _normalize_rows_backward((d * g).reshape(n * G, -1), xhat.reshape(n * G, -1), inv)
        dgamma = (d * xhat).sum(axis=(0, 2, 3)).reshape(gamma.shape)
        dbeta = d.sum(axis=(0, 2, 3)).reshape(beta.shape)
        return c.out(dx.reshape(n, ch, h, w)), c.out(dgamma), c.out(dbeta)


def _normalize_rows(x2, eps):
    xp = get_array_module(x2)
    mean = x2.mean(axis=1, keepdims=True)
    inv = 1.0 / xp.sqrt(x2.var(axis=1, keepdims=True) + eps)
    return (x2 - mean) * inv, inv


def _normalize_rows_backward(dxhat, xhat, inv):
    # d/dx of (x - mean) * inv per row: the row means of dxhat and dxhat * xhat come off.
    return inv * (dxhat - dxhat.mean(axis=1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))


# ----------------------------------------------------------------------------- dropout
def dropout_forward(x, dropout_param):
    """Inverted dropout; ``dropout_param``: ``'p'`` = probability of KEEPING a unit (2018 on),
    ``'mode'`` ('train'|'test'), optional ``'seed'`` (``np.random.seed(seed)`` first, as the
    assignment). Returns ``out, (dropout_param, mask)``; mask is the scaled keep mask (None in
    test mode), ``(np.random.rand(*x.shape) < p) / p``; for a CuPy x, ``keep / p`` with ``keep``
    gpuconv's counter-based keep bits for the drop probability ``1 - p`` and a key drawn by
    ``np.random.randint`` (see the module's docstring)."""
    return _dropout(x, dropout_param, drop=False)


def dropout_forward_2017(x, dropout_param):
    """Inverted dropout of the 2016 and 2017 editions: ``'p'`` is the probability of DROPPING a unit; mask
    ``(np.random.rand(*x.shape) >= p) / (1 - p)`` (for a CuPy x, ``keep / (1 - p)``, ``keep``
    gpuconv's keep bits for the drop probability ``p``). Otherwise as :func:`dropout_forward`."""
    return _dropout(x, dropout_param, drop=True)


def _dropout(x, dropout_param, drop):
    example = "{'p': 0.5, 'mode': 'train'}"
    p = _number(dropout_param, "p", None, "dropout_param", example)
    mode = param(dropout_param, "mode", "dropout_param", example)
    check_arrays(x=x)
    if mode == "test":
        return x, Cache((dropout_param, None))
    if mode != "train":
        raise ValueError(f"dropout_param['mode'] must be 'train' or 'test', got {mode!r}")
    if drop and not 0 <= p < 1:
        raise ValueError(f"dropout_param['p'] is the DROP probability in the 2016-2017 editions and must lie in "
                         f"[0, 1), got {p!r} (for the later editions' keep probability use the default edition)")
    if not drop and not 0 < p <= 1:
        raise ValueError(f"dropout_param['p'] is the KEEP probability and must lie in (0, 1], got {p!r} "
                         f"(2016-2017 code, where p is the drop probability: use gpuconv.compat.cs231n.edition(2017))")
    if "seed" in dropout_param:
        np.random.seed(dropout_param["seed"])
    if is_cupy_array(x):
        # CuPy's own legacy random (cupy.random.rand) is cuRAND's host library, which gpuconv's CUDA
        # installs lack: hash the mask on the device from one host key instead.
        key = np.random.randint(0, 2**64, dtype=np.uint64)
        keep = keep_bits(key, p if drop else 1 - p, x.shape, get_array_module(x))
        mask = keep / (1 - p) if drop else keep / p
    else:
        u = np.random.rand(*x.shape)
        mask = (u >= p) / (1 - p) if drop else (u < p) / p
    # The starter code ends with out.astype(x.dtype, copy=False): the output keeps x's dtype.
    return (x * mask).astype(x.dtype, copy=False), Cache((dropout_param, mask))


def dropout_backward(dout, cache):
    """``dx`` for ``dropout_forward`` (the mask decides, not ``dropout_param['mode']``: models flip
    the mode in the same dict later)."""
    mask = cache_items(cache, "dropout_forward", "dropout_param, mask")[1]
    if mask is None:
        return dout
    if not is_array(mask):
        raise TypeError(f"cache must be what dropout_forward returned as its second value, (dropout_param, mask), "
                        f"with mask an array or None, got a mask of type {type(mask).__name__}")
    _check_dout(dout, mask)
    if isinstance(mask, np.ndarray) and not isinstance(dout, np.ndarray):
        mask = to_device(mask, device_of(dout))
    return dout * mask

