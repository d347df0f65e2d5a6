"""Numerical gradients by central differences: the yardstick every backward pass is held to.

Used by the test suite and by ``gpuconv.compat.cs231n`` (its ``eval_numerical_gradient*``).
Work in float64: with h = 1e-5 the truncation and rounding errors of a smooth op stay
near 1e-10, so a relative error above 1e-6 means a wrong gradient, not noise.
"""
from __future__ import annotations

from .backend import get_array_module


def numerical_gradient(f, x, h=1e-5):
    """d f(x) / dx for a scalar-valued ``f``; perturbs ``x`` in place and restores it."""
    return numerical_gradient_array(lambda a: f(a), x, None, h)


def numerical_gradient_array(f, x, df=None, h=1e-5):
    """The vector-Jacobian product ``sum(df * d f(x)/dx)`` for an array-valued ``f``.

    ``df`` None means ``f`` returns a scalar. ``x`` is modified in place during the
    evaluation and restored exactly afterwards."""
    xp = get_array_module(x)
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous so it can be perturbed in place: pass xp.ascontiguousarray(x)")
    grad = xp.zeros_like(x)
    flat_x = x.reshape(-1)
    flat_g = grad.reshape(-1)
    for i in range(x.size):
        old = flat_x[i].copy()
        flat_x[i] = old + h
        plus = f(x)
        flat_x[i] = old - h
        minus = f(x)
        flat_x[i] = old
        diff = plus - minus
        flat_g[i] = (diff if df is None else (diff * df).sum()) / (2 * h)
    return grad


def relative_error(a, b, floor=1e-12):
    """max |a - b| / max(|a| + |b|, floor), elementwise, then the maximum: 0 for equal arrays."""
    xp = get_array_module(a, b)
    a = xp.asarray(a, dtype=xp.float64)
    b = xp.asarray(b, dtype=xp.float64)
    return float(xp.max(xp.abs(a - b) / xp.maximum(xp.abs(a) + xp.abs(b), floor)))
