"""Multiplication by a constant: ``y = factor * x`` (and ``dx = factor * dy``), any shape; the
fixed output scaling of fast ResNet-style nets (0.125 in ResNet-9, 1/9 in airbench94).

Precision (gpuconv.precision): bfloat16/float16 values are upcast to float32, multiplied by the
factor rounded to float32, and rounded once (NumPy's own bfloat16 * float would round the
factor to bfloat16 first, and CuPy would not: the rule makes both paths one function).

Cache (shared with the kernel launchers, see ``_dispatch``): ``ScaleCache(factor, dtype, shape)``,
the output's dtype and shape, which the backward's ``dy`` must have.
"""
from __future__ import annotations

import math

from ..backend import kernel_target
from ..precision import compute_dtype, round_once, upcast
from . import _dispatch
from ._checks import cache_type, check_cache, check_dy_dtype, check_float

ScaleCache = cache_type("ScaleCache", "factor dtype shape", __name__, defaults=(None, None))


def check_factor(factor, where="scale factor") -> float:
    """``factor`` as a float: a finite Python number (a ValueError naming ``where`` otherwise)."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
        raise ValueError(f"{where}: factor={factor!r} must be a finite Python number, e.g. 0.125")
    return float(factor)


def scale_forward(x, factor):
    """``y, cache`` with ``y = factor * x`` elementwise, rounded once to x's dtype."""
    return _dispatch.call_elementwise("scale_forward", _scale_forward_reference, x, check_factor(factor))


def scale_backward(dy, cache):
    """``dx = factor * dy``: the forward's product, on ``dy``."""
    check_cache(cache, ScaleCache, "scale_forward")
    check_float("dy", dy)
    if cache.shape is not None and tuple(dy.shape) != cache.shape:
        raise ValueError(f"dy must have the forward output's shape {cache.shape}, got {tuple(dy.shape)}")
    if cache.dtype is not None:
        check_dy_dtype(dy, cache.dtype)
    return _dispatch.call("scale_forward", kernel_target(dy), _scale_forward_reference, dy, cache.factor)[0]


def _scale_forward_reference(x, factor):
    xc = upcast(x)
    return round_once(xc * compute_dtype(x.dtype).type(factor), x.dtype), ScaleCache(factor, x.dtype, tuple(x.shape))


# This op's CUDA kernel launcher, for the 'cuda' and 'sim' targets; last, as it imports the names above.
from . import _launch_scale  # noqa: E402,F401  (registration)
