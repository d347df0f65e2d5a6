"""LeakyReLU, Sigmoid, Tanh and SiLU, elementwise, any shape, as PyTorch's ``nn`` layers of those names:

    leaky_relu  y = x where x > 0, else negative_slope * x;  dx = dy where x > 0, else negative_slope * dy
    sigmoid     y = 1 / (1 + exp(-x));                       dx = dy * (1 - y) * y        (from the output)
    tanh        y = tanh(x);                                 dx = dy * (1 - y * y)        (from the output)
    silu        y = x * sigmoid(x);                          dx = dy * s * (1 + x * (1 - s)), s = sigmoid(x)

PyTorch's semantics: LeakyReLU's gradient at x == 0 (and at a NaN x) takes the slope, as torch's
``leaky_relu_backward`` (``x > 0 ? dy : dy * slope``); Sigmoid and Tanh differentiate from their
output, as torch's ``sigmoid_backward``/``tanh_backward``, with its factors in their order; a NaN
goes through every op as a NaN (and SiLU of -inf is NaN, as torch's: -inf * 0).

The sigmoid is written ``(1 if x >= 0 else e) / (1 + e)`` with ``e = exp(-|x|)`` in (0, 1]: no exp
overflows (NumPy warns of none), and the negative tail keeps its relative accuracy (sigmoid(-100) is
3.7e-44 in float32, where ``1 / (1 + exp(100))`` is 1/inf = 0).

Precision (gpuconv.precision): bfloat16/float16 values are upcast to float32, the math done there
(the slope rounded to float32, as the kernels and PyTorch take it) and the result rounded once.
LeakyReLU and the backward of Sigmoid and Tanh are arithmetic alone, so the kernels
(kernels/activations.cu, the math in activation.cuh) give the reference's bits; exp and tanh are
the C library's (on the host simulator) or CUDA's, within a few ulp of NumPy's.

Caches (shared with the kernel launchers, see ``_dispatch``): ``LeakyReluCache(x, negative_slope)``,
``SigmoidCache(y)``, ``TanhCache(y)``, ``SiluCache(x)``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..backend import get_array_module
from ..precision import compute_dtype, round_once, upcast
from . import _dispatch
from ._checks import cache_type, check_cache

LeakyReluCache = cache_type("LeakyReluCache", "x negative_slope", __name__)
SigmoidCache = cache_type("SigmoidCache", "y", __name__)
TanhCache = cache_type("TanhCache", "y", __name__)
SiluCache = cache_type("SiluCache", "x", __name__)


def check_negative_slope(negative_slope, where="leaky_relu") -> float:
    """``negative_slope`` as a float: a finite real number (PyTorch's default is 0.01)."""
    if isinstance(negative_slope, (bool, np.bool_)) or not isinstance(negative_slope, numbers.Real) \
            or not math.isfinite(negative_slope):
        raise ValueError(f"{where}(negative_slope={negative_slope!r}): the slope for x <= 0 must be a finite "
                         "number, e.g. 0.01 (PyTorch's default) or 0.1")
    return float(negative_slope)


def leaky_relu_forward(x, negative_slope=0.01):
    """``y, cache`` with ``y = x`` where ``x > 0``, else ``negative_slope * x``."""
    return _dispatch.call_elementwise("leaky_relu_forward", _leaky_relu_forward_reference, x,
                                      check_negative_slope(negative_slope))


def leaky_relu_backward(dy, cache):
    """``dx = dy`` where ``x > 0``, else ``negative_slope * dy`` (the slope at 0, as PyTorch)."""
    check_cache(cache, LeakyReluCache, "leaky_relu_forward")
    return _dispatch.call_elementwise_backward("leaky_relu_backward", _leaky_relu_backward_reference, dy, cache)


def sigmoid_forward(x):
    """``y, cache`` with ``y = 1 / (1 + exp(-x))``."""
    return _dispatch.call_elementwise("sigmoid_forward", _sigmoid_forward_reference, x)


def sigmoid_backward(dy, cache):
    """``dx = dy * (1 - y) * y`` from the forward's output ``y``."""
    check_cache(cache, SigmoidCache, "sigmoid_forward")
    return _dispatch.call_elementwise_backward("sigmoid_backward", _sigmoid_backward_reference, dy, cache, "y")


def tanh_forward(x):
    """``y, cache`` with ``y = tanh(x)``."""
    return _dispatch.call_elementwise("tanh_forward", _tanh_forward_reference, x)


def tanh_backward(dy, cache):
    """``dx = dy * (1 - y * y)`` from the forward's output ``y``."""
    check_cache(cache, TanhCache, "tanh_forward")
    return _dispatch.call_elementwise_backward("tanh_backward", _tanh_backward_reference, dy, cache, "y")


def silu_forward(x):
    """``y, cache`` with ``y = x * sigmoid(x)`` (SiLU, also called swish)."""
    return _dispatch.call_elementwise("silu_forward", _silu_forward_reference, x)


def silu_backward(dy, cache):
    """``dx = dy * s * (1 + x * (1 - s))`` with ``s = sigmoid(x)``."""
    check_cache(cache, SiluCache, "silu_forward")
    return _dispatch.call_elementwise_backward("silu_backward", _silu_backward_reference, dy, cache)


def sigmoid(xc):
    """``1 / (1 + exp(-x))`` of a float32 or float64 array, in its dtype and layout, without overflow."""
    xp = get_array_module(xc)
    return _sigmoid_into(xc, xp.empty_like(xc), xp.empty_like(xc), xp.empty_like(xc, dtype=bool))


def _sigmoid_into(xc, s, e, nonneg):
    """:func:`sigmoid` written into ``s``, with ``e`` and ``nonneg`` (bool) as scratch of xc's shape."""
    xp = get_array_module(xc)
    f = xc.dtype.type
    xp.absolute(xc, out=e)
    xp.negative(e, out=e)
    xp.exp(e, out=e)  # exp(-|x|), in (0, 1]
    # 1 where x >= 0, else e (below 0, and at a NaN, which e is): max(e, x >= 0), as e <= 1 and a
    # NaN wins a maximum; 10x faster than copyto(ones, e, where=~(x >= 0)), a branch per value
    xp.greater_equal(xc, f(0), out=nonneg)
    xp.maximum(e, nonneg, out=s)
    e += f(1)
    xp.divide(s, e, out=s)
    return s


# Values per block of the NumPy path's blocked passes (:func:`_blocked`): a block's arrays stay in
# the L1/L2 cache through the sigmoid's operations. EfficientNet-B0's SiLU (CIFAR, batch 32,
# float32, 96ch 32x32, one core; with the maximum above): forward 30 -> 10 ms, backward 36 -> 14.
BLOCK = 1 << 13


def _blocked(out, *arrays):
    """(out's block, each array's block, scratch (e, nonneg, t)) per block of C-contiguous NumPy
    arrays of one shape, viewed flat; None where they are not (the whole-array path runs)."""
    if not all(type(a) is np.ndarray and a.flags.c_contiguous and a.shape == out.shape for a in (out,) + arrays):
        return None
    flat = [a.reshape(-1) for a in (out,) + arrays]
    n = min(out.size, BLOCK)
    scratch = (np.empty(n, out.dtype), np.empty(n, bool), np.empty(n, out.dtype))
    return [tuple(a[lo:lo + BLOCK] for a in flat) + tuple(b[:min(BLOCK, out.size - lo)] for b in scratch)
            for lo in range(0, out.size, BLOCK)]


def _leaky_relu_forward_reference(x, negative_slope):
    xc = upcast(x)
    xp = get_array_module(xc)
    with np.errstate(invalid="ignore"):  # -inf * 0 (a slope of 0): NaN, as PyTorch's
        y = xp.multiply(xc, compute_dtype(x.dtype).type(negative_slope), out=xp.empty_like(xc))
    xp.copyto(y, xc, where=xc > 0)
    return round_once(y, x.dtype), LeakyReluCache(x, negative_slope)


def _leaky_relu_backward_reference(dy, cache):
    xc, g = upcast(cache.x, dy)
    xp = get_array_module(g)
    with np.errstate(invalid="ignore"):  # +-inf * 0 (a slope of 0): NaN, as PyTorch's
        d = xp.multiply(g, g.dtype.type(cache.negative_slope), out=xp.empty_like(g))  # dx in dy's layout
    xp.copyto(d, g, where=xc > 0)
    return round_once(d, dy.dtype)


def _sigmoid_forward_reference(x):
    xc = upcast(x)
    y = get_array_module(xc).empty_like(xc)
    blocks = _blocked(y, xc)
    if blocks is None:
        y = sigmoid(xc)
    for yb, xb, e, nonneg, _ in blocks or ():
        _sigmoid_into(xb, yb, e, nonneg)
    y = round_once(y, x.dtype)
    return y, SigmoidCache(y)


def _sigmoid_backward_reference(dy, cache):
    yc, g = upcast(cache.y, dy)
    xp = get_array_module(g)
    d = xp.subtract(g.dtype.type(1), yc, out=xp.empty_like(g))
    xp.multiply(g, d, out=d)
    xp.multiply(d, yc, out=d)
    return round_once(d, dy.dtype)


def _tanh_forward_reference(x):
    xc = upcast(x)
    xp = get_array_module(xc)
    y = round_once(xp.tanh(xc, out=xp.empty_like(xc)), x.dtype)
    return y, TanhCache(y)


def _tanh_backward_reference(dy, cache):
    yc, g = upcast(cache.y, dy)
    xp = get_array_module(g)
    d = xp.multiply(yc, yc, out=xp.empty_like(g))
    xp.subtract(g.dtype.type(1), d, out=d)
    xp.multiply(g, d, out=d)
    return round_once(d, dy.dtype)


def _silu_forward_reference(x):
    xc = upcast(x)
    xp = get_array_module(xc)
    y = xp.empty_like(xc)
    blocks = _blocked(y, xc) or [(y, xc, None, None, None)]
    with np.errstate(invalid="ignore"):  # -inf * 0: NaN, as PyTorch's
        for yb, xb, e, nonneg, _ in blocks:
            s = sigmoid(xb) if e is None else _sigmoid_into(xb, yb, e, nonneg)
            xp.multiply(xb, s, out=yb)
    return round_once(y, x.dtype), SiluCache(x)


def _silu_backward_reference(dy, cache):
    xc, g = upcast(cache.x, dy)
    xp = get_array_module(g)
    f = g.dtype.type
    dx = xp.empty_like(g)
    blocks = _blocked(dx, xc, g) or [(dx, xc, g, None, None, None)]
    with np.errstate(invalid="ignore"):  # +-inf * 0: NaN, as PyTorch's
        for t, xb, gb, e, nonneg, sb in blocks:
            s = sigmoid(xb) if e is None else _sigmoid_into(xb, sb, e, nonneg)
            xp.subtract(f(1), s, out=t)
            xp.multiply(xb, t, out=t)
            t += f(1)
            xp.multiply(gb, s, out=s)
            xp.multiply(s, t, out=t)
    return round_once(dx, dy.dtype)


# This family's CUDA kernel launchers, for the 'cuda' and 'sim' targets; last, as they import the names above.
from . import _launch_activations  # noqa: E402,F401  (registration)
