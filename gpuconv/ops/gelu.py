"""GELU, exact form (PyTorch's default ``nn.GELU()``): ``y = x * Phi(x)``, ``Phi`` the standard
normal CDF, ``Phi(x) = erfc(-x / sqrt(2)) / 2``; ``dx = dy * (Phi(x) + x * phi(x))`` with
``phi(x) = exp(-x^2 / 2) / sqrt(2 pi)``.

Precision (gpuconv.precision): bfloat16/float16 values are upcast to float32 and the result
rounded once. Phi goes through erfc, not ``1 + erf``, so that the negative tail keeps its
relative accuracy (``gelu(-6)`` is -6e-9, not a cancellation residue). NumPy has no erfc: float64
uses Python's ``math.erfc`` (correctly rounded to a few ulp; for gradient checks, not speed), and
the float32 compute path a Chebyshev fit with fractional error below 1.2e-7 everywhere (Numerical
Recipes' erfcc), about float32's own unit roundoff.

Cache (shared with the kernel launchers, see ``_dispatch``): ``GeluCache(x)``.
"""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from ..backend import get_array_module
from ..precision import round_once, upcast
from . import _dispatch

GeluCache = namedtuple("GeluCache", "x")

_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327
_ERFC_COEFFS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398,
                1.48851587, -0.82215223, 0.17087277)
_erfc_exact = np.frompyfunc(math.erfc, 1, 1)


def gelu_forward(x):
    """``y, cache`` with ``y = x * Phi(x)`` elementwise, any shape."""
    return _dispatch.call_elementwise("gelu_forward", _gelu_forward_reference, x)


def gelu_backward(dy, cache):
    """``dx = dy * (Phi(x) + x * phi(x))``."""
    return _dispatch.call_elementwise_backward("gelu_backward", _gelu_backward_reference, dy, cache)


def erfc(z):
    """``erfc(z)`` elementwise in ``z``'s dtype (float32 or float64), accurate to that dtype."""
    xp = get_array_module(z)
    if z.dtype == np.float64:
        if xp is not np:  # on the device, never through the host: CuPy's own double erfc
            from cupyx.scipy.special import erfc as device_erfc
            return device_erfc(z)
        return _erfc_exact(z).astype(np.float64)
    one = z.dtype.type(1)
    a = xp.abs(z)
    t = one / (one + z.dtype.type(0.5) * a)
    poly = z.dtype.type(_ERFC_COEFFS[-1])
    for c in _ERFC_COEFFS[-2::-1]:
        poly = poly * t + z.dtype.type(c)
    r = t * xp.exp(poly - a * a)
    return xp.where(z >= 0, r, z.dtype.type(2) - r)


def normal_cdf(x):
    """``Phi(x) = erfc(-x / sqrt(2)) / 2`` in ``x``'s (float32 or float64) dtype."""
    return x.dtype.type(0.5) * erfc(-x * x.dtype.type(_SQRT_HALF))


def _gelu_forward_reference(x):
    xc = upcast(x)
    return round_once(xc * normal_cdf(xc), x.dtype), GeluCache(x)


def _gelu_backward_reference(dy, cache):
    xc, g = upcast(cache.x, dy)
    xp = get_array_module(xc)
    pdf = xc.dtype.type(_INV_SQRT_2PI) * xp.exp(xc * xc * xc.dtype.type(-0.5))
    return round_once(g * (normal_cdf(xc) + xc * pdf), dy.dtype)


# This op's CUDA kernel launchers, for the 'cuda' and 'sim' targets; last, as they import the names above.
from . import _launch_gelu  # noqa: E402,F401  (registration)
