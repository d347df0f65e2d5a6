"""GELU, exact form (PyTorch's default ``nn.GELU()``): ``y = x * Phi(x)``, ``Phi`` the standard
normal CDF, ``Phi(x) = erfc(-x / sqrt(2)) / 2``; ``dx = dy * (Phi(x) + x * phi(x))`` with
``phi(x) = exp(-x^2 / 2) / sqrt(2 pi)``.

Precision (gpuconv.precision): bfloat16/float16 values are upcast to float32 and the result
rounded once. Phi goes through erfc, not ``1 + erf``, so that the negative tail keeps its
relative accuracy (``gelu(-6)`` is -6e-9, not a cancellation residue). NumPy has no erfc: float64
uses Python's ``math.erfc`` (correctly rounded to a few ulp; for gradient checks, not speed), and
the float32 compute path a Chebyshev fit with fractional error below 1.2e-7 everywhere (Numerical
Recipes' erfcc), about float32's own unit roundoff.

Cache (shared with the kernel launchers, see ``_dispatch``): ``GeluCache(x, cdf)``. The NumPy
path keeps ``cdf`` = Phi(x) from the forward (one array more per GELU, where recomputing it costs
an erfc: a tenth of an airbench training step on a CPU); the kernels recompute it (``cdf`` None):
memory traffic, not arithmetic, is what they save. Both give the same bits.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from ..precision import round_once, upcast
from . import _dispatch
from ._checks import cache_type, check_cache

GeluCache = cache_type("GeluCache", "x cdf", __name__, defaults=(None,))

_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327
_ERFC_COEFFS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398,
                1.48851587, -0.82215223, 0.17087277)
_erfc_exact = np.frompyfunc(math.erfc, 1, 1)
# Elements per chunk of the float32 fit on NumPy (its three arrays: 768 KB, inside L2; 2^14 and 2^15
# measured 8% and 3% slower).
_ERFC_CHUNK = 1 << 16


def gelu_forward(x):
    """``y, cache`` with ``y = x * Phi(x)`` elementwise, any shape."""
    return _dispatch.call_elementwise("gelu_forward", _gelu_forward_reference, x)


def gelu_backward(dy, cache):
    """``dx = dy * (Phi(x) + x * phi(x))``."""
    check_cache(cache, GeluCache, "gelu_forward")
    return _dispatch.call_elementwise_backward("gelu_backward", _gelu_backward_reference, dy, cache)


def erfc(z):
    """``erfc(z)`` elementwise in ``z``'s dtype (float32 or float64), accurate to that dtype."""
    xp = get_array_module(z)
    if z.dtype == np.float64:
        if xp is not np:  # on the device, never through the host: CuPy's own double erfc
            from cupyx.scipy.special import erfc as device_erfc
            return device_erfc(z)
        return np.asarray(_erfc_exact(z), dtype=np.float64)
    if xp is np and z.size > _ERFC_CHUNK and z.flags.c_contiguous:
        # The fit's two dozen passes a chunk at a time, so that its three arrays stay in cache between
        # passes: elementwise operations, so the same bits (airbench94's whitening GELU input,
        # 32x24x31x31 float32: 9.0 -> 6.2 ms on one core).
        r = np.empty_like(z)
        flat, out = z.reshape(-1), r.reshape(-1)
        for lo in range(0, flat.size, _ERFC_CHUNK):
            _erfc_fit(np, flat[lo:lo + _ERFC_CHUNK], out[lo:lo + _ERFC_CHUNK])
        return r
    return _erfc_fit(xp, z, xp.empty_like(z))


def _erfc_fit(xp, z, r):
    """The float32 fit of ``erfc(z)``, written into ``r`` on NumPy (returned), a new array on CuPy."""
    # The fit's Horner steps in place, in two arrays (t and the result r), not a temporary per
    # operation: the same operations on the same operands in the same order (a NaN's payload
    # comes from the first), so the same bits, with a fifth less time (no allocation per step).
    # (Each array made by an out= operation: on a 0-d array an operation returns a scalar.)
    f = z.dtype.type
    a = xp.absolute(z, out=xp.empty_like(z))
    t = xp.multiply(a, f(0.5), out=xp.empty_like(z))
    t += f(1)
    xp.reciprocal(t, out=t)  # 1 / (1 + a / 2)
    xp.multiply(t, f(_ERFC_COEFFS[-1]), out=r)
    r += f(_ERFC_COEFFS[-2])
    for c in _ERFC_COEFFS[-3::-1]:
        r *= t
        r += f(c)
    xp.multiply(a, a, out=a)
    r -= a
    xp.exp(r, out=r)
    xp.multiply(t, r, out=r)  # erfc(|z|)
    if xp is np:
        # erfc(-|z|) = 2 - erfc(|z|) where z < 0 (a NaN stays): 2 - r everywhere, kept where z < 0
        # by a bitwise select, r ^ ((r ^ (2 - r)) & mask) with the mask all ones or all zeros. The
        # bits of np.subtract(2, r, out=r, where=z < 0), which NumPy runs as a masked loop, not SIMD:
        # that one pass was 60% of the fit's time (64K float32 in cache: 406 us, the select 52).
        bits = np.dtype(f"i{z.dtype.itemsize}")
        other = np.subtract(f(2), r, out=t).view(bits)
        mask = a.view(bits)
        np.copyto(mask, z < 0, casting="unsafe")
        np.negative(mask, out=mask)
        rb = r.view(bits)
        np.bitwise_xor(other, rb, out=other)
        np.bitwise_and(other, mask, out=other)
        np.bitwise_xor(rb, other, out=rb)
        return r
    return xp.where(z >= 0, r, f(2) - r)


def normal_cdf(x):
    """``Phi(x) = erfc(-x / sqrt(2)) / 2`` in ``x``'s (float32 or float64) dtype."""
    p = erfc(-x * x.dtype.type(_SQRT_HALF))
    p *= x.dtype.type(0.5)
    return p


def _gelu_forward_reference(x):
    xc = upcast(x)
    cdf = normal_cdf(xc)
    return round_once(xc * cdf, x.dtype), GeluCache(x, cdf)


def _gelu_backward_reference(dy, cache):
    xc, g = upcast(cache.x, dy)
    xp = get_array_module(xc)
    f = xc.dtype.type
    d = xp.multiply(xc, xc, out=xp.empty_like(g))  # dx in dy's layout, as ReLU's and the kernels
    d *= f(-0.5)
    xp.exp(d, out=d)
    xp.multiply(f(_INV_SQRT_2PI), d, out=d)  # phi(x)
    xp.multiply(xc, d, out=d)
    xp.add(normal_cdf(xc) if cache.cdf is None else cache.cdf, d, out=d)
    xp.multiply(g, d, out=d)
    return round_once(d, dy.dtype)


# This op's CUDA kernel launchers, for the 'cuda' and 'sim' targets; last, as they import the names above.
from . import _launch_gelu  # noqa: E402,F401  (registration)
