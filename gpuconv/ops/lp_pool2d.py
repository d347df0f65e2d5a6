"""2-D power-average (LP) pooling over NCHW tensors, PyTorch's ``lp_pool2d``.

``y = (sum over each KH x KW window of x^p)^(1/p)`` for a norm ``p >= 1`` (p = 2: the L2 norm of
the window, ``sqrt(sum x^2)``; p = 1: the sum). No padding; the stride defaults to the kernel
size; sizes the windows do not tile are refused unless ``floor=True`` (PyTorch's rule, as for
max and average pooling: the rows and columns past the last window take no part). As in
PyTorch, ``x^p`` of a negative ``x`` is NaN for a non-integer ``p``, and so is the root of a
negative sum (odd ``p`` > 1); with p = 1 a negative sum stays negative.

Gradient: ``dy/dx = x^(p-1) * y^(1-p)`` for each window covering ``x``; a window whose norm ``y``
is 0 (all zeros) contributes 0, where the derivative of the norm is undefined: the choice
PyTorch makes too (its sqrt'(0) path gives 0 for p = 2 with zeros in).

Precision (gpuconv.precision): bfloat16/float16 inputs are upcast, pooled in float32, rounded
once. ``LPPool2dCache(x, y, kernel_size, stride, norm_type)`` keeps the input and the output (the
backward needs both).
"""
from __future__ import annotations

import math
import numbers

from .. import backend
from ..backend import get_array_module
from ..precision import round_once, upcast
from . import _dispatch
from ._checks import cache_type, cached, check_cache, check_dy_dtype, check_float, check_shape, only_defaults, output_hw
from ._pool2d_reference import _spread, _taps, _window_sums
from .pool2d import _check_pool_args

LPPool2dCache = cache_type("LPPool2dCache", "x y kernel_size stride norm_type", __name__)


def check_norm(norm_type):
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real) or not math.isfinite(norm_type) \
            or norm_type < 1:
        raise ValueError(f"norm_type must be a finite number >= 1 (2 is the L2 norm of each window), got {norm_type!r}")
    return float(norm_type)


def lp_pool2d_forward(x, norm_type, kernel_size, stride=None, floor=False, *, ceil_mode=False):
    """``y, cache``: ``(sum of x^p)^(1/p)`` over each KH x KW window, of shape (N, C, OH, OW): the
    p-norm of non-negative windows (no absolute value is taken, as in PyTorch: see the module
    docstring for negative x); ``floor`` as for :func:`gpuconv.ops.max_pool2d_forward`; ``ceil_mode``
    False only, as by LPPool2d."""
    if ceil_mode is not False:
        only_defaults("lp_pool2d_forward", ceil_mode=(ceil_mode, False))
    p = check_norm(norm_type)
    kernel_size, stride = _check_pool_args(x, kernel_size, stride, floor)
    return _dispatch.call("lp_pool2d_forward", backend.kernel_target(x), _lp_pool2d_forward_reference,
                          x, p, kernel_size, stride)


def lp_pool2d_backward(dy, cache):
    """``dx`` for the output gradient ``dy`` of :func:`lp_pool2d_forward`."""
    check_cache(cache, LPPool2dCache, "lp_pool2d_forward")
    check_float("dy", dy)
    check_shape("dy", dy, cache.y.shape, "the shape of the forward's output")
    check_dy_dtype(dy, cache.y.dtype)
    return _dispatch.call("lp_pool2d_backward", backend.kernel_target(dy, cache.x, names=("dy", cached("x"))),
                          _lp_pool2d_backward_reference,
                          dy, cache)


def _powers(xp, a, p):
    return a * a if p == 2 else a if p == 1 else xp.power(a, a.dtype.type(p))


def _lp_pool2d_forward_reference(x, p, kernel_size, stride):
    xc = upcast(x)
    xp = get_array_module(xc)
    out_hw = output_hw(x.shape, kernel_size, stride, floor=True)  # the entry checked the exact rule if asked
    if p in (1, 2):  # x * x and x are exact wherever they run: the tap planes' fast path
        s = _window_sums(xp, xc, kernel_size, stride, out_hw, None if p == 1 else lambda a: a * a)
    else:  # np.power may round differently on contiguous and strided data (SIMD or libm): the tap loop's
        s = xp.zeros(x.shape[:2] + out_hw, dtype=xc.dtype)
        for _, sl in _taps(kernel_size, stride, out_hw):
            s += _powers(xp, xc[sl], p)
    y = xp.sqrt(s) if p == 2 else s if p == 1 else xp.power(s, s.dtype.type(1.0 / p))
    y = round_once(y, x.dtype)
    return y, LPPool2dCache(x, y, kernel_size, stride, p)


def _lp_pool2d_backward_reference(dy, cache):
    dyc, xc, yc = upcast(dy), upcast(cache.x), upcast(cache.y)
    xp = get_array_module(dyc, xc)
    p = cache.norm_type
    zero = yc == 0
    safe = xp.where(zero, yc.dtype.type(1), yc)
    scale = 1 / safe if p == 2 else xp.ones_like(safe) if p == 1 else xp.power(safe, safe.dtype.type(1 - p))
    g = xp.where(zero, dyc.dtype.type(0), dyc * scale)
    dx = _spread(xp, g, xc.shape, cache.kernel_size, cache.stride)  # taps in order = covering windows from the last
    xpow = xc if p == 2 else xp.ones_like(xc) if p == 1 else xp.power(xc, xc.dtype.type(p - 1))
    return round_once(dx * xpow, dy.dtype)


# This op's CUDA kernel launchers, for the 'cuda' and 'sim' targets; last, as they import the names above.
from . import _launch_lp_pool2d  # noqa: E402,F401  (registration)
