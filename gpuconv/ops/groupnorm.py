"""Group normalization with PyTorch's semantics (``torch.nn.functional.group_norm``).

The C channels of an (N, C, *) tensor fall into ``num_groups`` groups of C / G consecutive
channels; each (sample, group) is normalized with the mean and the *biased* variance of its
values (the group's channels over every spatial position), then scaled and shifted per channel:
``y = (x - mean[n, g]) / sqrt(var[n, g] + eps) * weight[c] + bias[c]``. There are no running
statistics: training and evaluation compute the same thing, and the result of a sample does not
depend on the rest of the batch (so a batch of 1 or 2 trains as well as a large one).
``num_groups=1`` is a LayerNorm over (C, H, W); ``num_groups=C`` an InstanceNorm. A batch of
one sample whose groups hold a single value each is refused, as PyTorch refuses it.

x is (N, C), (N, C, L) or (N, C, H, W) (any rank from 2, as PyTorch: the axes past C are the
spatial ones, flattened); a 4-D x keeps its layout (NCHW or channels_last, gpuconv.layout).

Precision (gpuconv.precision): the statistics and the normalization are computed in x's compute
dtype, float32 for a bfloat16/float16 x (upcast exactly), and y and dx are rounded once to x's
dtype. weight, bias, dweight and dbias are in the compute dtype (float32 for bfloat16/float16 x),
as batch norm keeps its parameters. weight or bias None: no scale (1) or no shift (0), and no
gradient for it (None).

The variance is two-pass: the mean first, then the mean of the squared deviations from it (never
E[x^2] - mean^2, which cancels when the mean is large against the spread); the kernels take two
passes per (sample, channel, span of pixels) and combine the spans' squared deviations about the
group's mean (kernels/groupnorm.cu), the same value up to rounding.

Cache (shared with the kernel launchers, see ``_dispatch``): ``GroupNormCache(x, mean, rstd,
weight, bias, num_groups, shape, dtype)``: x as 4-D (its own dtype and layout), the mean and
``1 / sqrt(var + eps)`` per (sample, group), (N, G) in the compute dtype, the parameters as given
(the backward needs weight; bias only to know whether it has a gradient), the number of groups,
x's shape as given (dx gets it) and the output's dtype. The backward recomputes xhat with the
forward's operations (:func:`normalized`).
"""
from __future__ import annotations

import math
import numbers

from .. import backend, layout
from ..backend import get_array_module
from ..precision import compute_dtype, round_once, upcast
from . import _dispatch
from ._checks import cache_type, cached, check_cache, check_compute_dtype, check_dy_dtype, check_float, check_shape

GroupNormCache = cache_type("GroupNormCache", "x mean rstd weight bias num_groups shape dtype", __name__,
                            defaults=(None,))


def check_groups(num_groups, num_channels, where="group_norm"):
    """``num_groups`` as an int >= 1 that divides ``num_channels``, else an error naming the fix."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral) or num_groups < 1:
        raise ValueError(f"{where}: num_groups must be a positive int (the number of channel groups), "
                         f"got {num_groups!r}")
    num_groups = int(num_groups)
    if num_channels % num_groups:
        divisors = [d for d in range(1, num_channels + 1) if num_channels % d == 0]
        shown = ", ".join(map(str, divisors[:12])) + (", ..." if len(divisors) > 12 else "")
        raise ValueError(f"{where}: num_channels ({num_channels}) must be divisible by num_groups ({num_groups}), "
                         f"each group holding num_channels / num_groups channels: pick num_groups among the "
                         f"divisors of {num_channels} ({shown})")
    return num_groups


def check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
        raise ValueError(f"eps must be a positive number added to the variance, got {eps!r}; 1e-5 is the default")
    return float(eps)


def groupnorm_forward(x, num_groups, weight=None, bias=None, eps=1e-5):
    """``y, cache``: x normalized per (sample, group of C / num_groups channels), then
    ``* weight[c] + bias[c]`` (either may be None). As ``F.group_norm(x, num_groups, weight, bias, eps)``."""
    check_float("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (N, C, *), got shape {tuple(x.shape)}: e.g. x[None] "
                         "adds a leading batch axis")
    shape, c = tuple(x.shape), x.shape[1]
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None:
            check_float(name, a)
            why = f"one value per channel of x {shape}, laid out N, C, ..."
            if x.ndim == 4 and tuple(a.shape) == (x.shape[3],) != (c,):  # images given as N, H, W, C
                why += (f"; x looks laid out N, H, W, C (its last axis has {x.shape[3]} values, as {name} does): pass "
                        "it as N, C, H, W: x.transpose(0, 3, 1, 2), a view that keeps its NHWC memory (channels_last)")
            check_shape(name, a, (c,), why)
    num_groups = check_groups(num_groups, c)  # (after the shapes: an N, H, W, C x gets its hint first)
    if shape[0] * (c // num_groups) * math.prod(shape[2:]) == 1:  # F.group_norm's own refusal
        raise ValueError(f"group_norm: expected more than 1 value per group, got x of shape {shape} with "
                         f"{num_groups} groups: one value per (sample, group), which normalizes to 0 whatever it is "
                         "(y would be the bias, dx zero); use fewer groups (each of several channels) or inputs "
                         "with spatial positions")
    check_compute_dtype("x", x, "group norm keeps weight and bias in its compute dtype", weight=weight, bias=bias)
    eps = check_eps(eps)
    if x.ndim != 4:  # (N, C, *) as (N, C, L, 1): the kernels' view
        x = x.reshape(shape[0], c, math.prod(shape[2:]), 1)
    if not x.size:  # no values: an empty y, statistics of nothing (read by no one)
        with backend.array_device_context((x,)):
            zeros = get_array_module(x).zeros((x.shape[0], num_groups), compute_dtype(x.dtype))
            y = layout.empty_like(x).reshape(shape)
        return y, GroupNormCache(x, zeros, zeros, weight, bias, num_groups, shape, y.dtype)
    target = backend.kernel_target(x, weight, bias, names=("x", "weight", "bias"))
    y, cache = _dispatch.call("groupnorm_forward", target, _groupnorm_forward_reference, x, num_groups, weight, bias,
                              eps)
    return y.reshape(shape), cache._replace(shape=shape, dtype=y.dtype)


def groupnorm_backward(dy, cache):
    """``dx, dweight, dbias`` (dweight None when the forward had no weight; dbias likewise)."""
    check_cache(cache, GroupNormCache, "groupnorm_forward")
    check_float("dy", dy)
    if tuple(dy.shape) != tuple(cache.shape):
        raise ValueError(f"dy must have the forward output's shape {tuple(cache.shape)}, got {tuple(dy.shape)}")
    check_dy_dtype(dy, cache.dtype)
    if dy.ndim != 4:
        dy = dy.reshape(cache.x.shape)
    if not dy.size:
        with backend.array_device_context((dy,)):
            xp, cd = get_array_module(dy), compute_dtype(dy.dtype)
            zeros = [None if p is None else xp.zeros(dy.shape[1], cd) for p in (cache.weight, cache.bias)]
            dx = layout.empty_like(dy).reshape(cache.shape)
        return (dx, *zeros)
    target = backend.kernel_target(dy, cache.x, names=("dy", cached("x")))
    dx, dweight, dbias = _dispatch.call("groupnorm_backward", target, _groupnorm_backward_reference, dy, cache)
    return dx.reshape(cache.shape), dweight, dbias


def _per_group(v):
    """An (N, G) statistic against the (N, G, C / G, H, W) view of an activation."""
    return v[:, :, None, None, None]


def _grouped(a, g):
    """The (N, G, C / G, H, W) view of an (N, C, H, W) array (a view in either layout)."""
    n, c, h, w = a.shape
    return a.reshape(n, g, c // g, h, w)


def normalized(cache):
    """xhat = (x - mean) * rstd of a :class:`GroupNormCache`, (N, C, H, W) in the compute dtype and
    x's layout: the forward's operations in its order, so the forward's bits on every path."""
    x = upcast(cache.x)
    xhat = _grouped(x, cache.num_groups) - _per_group(cache.mean)
    xhat *= _per_group(cache.rstd)
    return xhat.reshape(x.shape)


def _params(weight, bias, c, dt, xp):
    """weight and bias, ones and zeros for the missing ones (the kernels' arithmetic either way)."""
    return (xp.ones(c, dt) if weight is None else weight), (xp.zeros(c, dt) if bias is None else bias)


def _groupnorm_forward_reference(x, num_groups, weight, bias, eps):
    x_in, dtype, x = x, x.dtype, upcast(x)
    xp = get_array_module(x)
    dt = x.dtype.type
    n = x.shape[0]
    rows = x.reshape(n, num_groups, -1)  # (a copy of a channels_last x, each group's values contiguous)
    mean = rows.mean(axis=2)
    centered = rows - mean[:, :, None]
    var = (centered * centered).mean(axis=2)
    rstd = dt(1.0) / xp.sqrt(var + dt(eps))
    cache = GroupNormCache(x_in, mean, rstd, weight, bias, num_groups, tuple(x.shape))
    w, b = _params(weight, bias, x.shape[1], x.dtype, xp)
    y = normalized(cache)
    y *= w[None, :, None, None]
    y += b[None, :, None, None]
    return round_once(y, dtype), cache


def _groupnorm_backward_reference(dy, cache):
    x, mean, rstd, weight, bias, g = cache[:6]
    xhat = normalized(cache)
    dtype, dy = dy.dtype, upcast(dy)
    xp = get_array_module(dy, xhat)
    dt = dy.dtype.type
    n, c, h, w = dy.shape
    count = (c // g) * h * w
    # per (sample, channel): the sums of dy and dy * xhat over H, W; dbias and dweight add them
    # over the samples, and the group sums of dx add them (times weight) over the group's channels
    sum_dy = dy.sum(axis=(2, 3))
    sum_dy_xhat = (dy * xhat).sum(axis=(2, 3))
    wt, _ = _params(weight, None, c, dy.dtype, xp)
    group_dy = (sum_dy * wt).reshape(n, g, -1).sum(axis=2)
    group_dy_xhat = (sum_dy_xhat * wt).reshape(n, g, -1).sum(axis=2)
    # d/dx of the normalization, the standard simplified form with dxhat = dy * weight:
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), each mean over the group
    dx = dy * wt[None, :, None, None]
    grouped = _grouped(dx, g)
    grouped -= _per_group(group_dy * dt(1.0 / count))
    grouped -= _grouped(xhat, g) * _per_group(group_dy_xhat * dt(1.0 / count))
    grouped *= _per_group(rstd)
    dx = grouped.reshape(dy.shape)  # (dx itself: the grouped view of either layout is a view)
    dweight = None if weight is None else sum_dy_xhat.sum(axis=0)
    dbias = None if bias is None else sum_dy.sum(axis=0)
    return round_once(dx, dtype), dweight, dbias


# This op's CUDA kernel launchers, for the 'cuda' and 'sim' targets; last, as they import the names above.
from . import _launch_groupnorm  # noqa: E402,F401  (registration)
