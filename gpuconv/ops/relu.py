"""ReLU: ``y = max(x, 0)``; the gradient passes where ``x > 0`` (0 at the kink, as PyTorch).

Precision (gpuconv.precision): bfloat16/float16 values are upcast to float32, and the result
rounded once, which gives back the input's own values: exact in every dtype.

Cache (shared with the kernel launchers, see ``_dispatch``): ``ReluCache(x)``.
"""
from __future__ import annotations


import numpy as np

from ..backend import get_array_module
from ..precision import round_once, upcast
from . import _dispatch
from ._checks import cache_type, check_cache

ReluCache = cache_type("ReluCache", "x", __name__)


def relu_forward(x):
    """``y, cache`` with ``y = max(x, 0)`` elementwise, any shape."""
    return _dispatch.call_elementwise("relu_forward", _relu_forward_reference, x)


def relu_backward(dy, cache):
    """``dx = dy * (x > 0)``."""
    check_cache(cache, ReluCache, "relu_forward")
    return _dispatch.call_elementwise_backward("relu_backward", _relu_backward_reference, dy, cache)


def _relu_forward_reference(x):
    if type(x) is np.ndarray and x.dtype.itemsize > 2:  # float64 or float32: nothing to upcast or round
        return np.maximum(x, x.dtype.type(0)), ReluCache(x)
    xc = upcast(x)
    xp = np if type(xc) is np.ndarray else get_array_module(xc)
    return round_once(xp.maximum(xc, xc.dtype.type(0)), x.dtype), ReluCache(x)


_BITS = {n: np.dtype(f"i{n}") for n in (2, 4, 8)}  # the signed integer of each float width
_SMALL = 4096  # at most this many values a select answers in fewer calls (past it the mask is faster)


def _relu_backward_reference(dy, cache):
    # dy where x > 0, else +0 (an inf or NaN dy of an inactive unit included, as the kernels and
    # PyTorch give; a multiply by the mask gave -0 and NaN there): dy's bits ANDed with a mask of
    # all ones or zeros, nearly as fast as that multiply (14 ms against 12 on a 128x64x32x32 float32
    # batch; xp.where takes 45).
    x = cache.x
    if (type(dy) is np.ndarray and dy.size <= _SMALL and dy.dtype.kind == "f" and dy.flags.c_contiguous
            and type(x) is np.ndarray and x.flags.c_contiguous):
        # a few values (a gradient check's layer): one select, the same bits (dy's own where x > 0,
        # else +0), fewer calls than the mask's four; in C order, dy's (both arrays are)
        return np.where(x > 0, dy, dy.dtype.type(0))
    xp = np if type(dy) is np.ndarray else get_array_module(dy)
    bits = _BITS[dy.dtype.itemsize]
    mask = xp.empty_like(dy, dtype=bits)  # dx in dy's layout, as the kernels return it
    xp.copyto(mask, cache.x > 0, casting="unsafe")
    xp.negative(mask, out=mask)
    xp.bitwise_and(mask, dy.view(bits), out=mask)
    return mask.view(dy.dtype)


# This op's CUDA kernel launchers, for the 'cuda' and 'sim' targets; last, as they import the names above.
from . import _launch_relu  # noqa: E402,F401  (registration)
