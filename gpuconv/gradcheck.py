"""Numerical gradients by central differences: the yardstick every backward pass is held to
(:func:`directional_derivative`: a whole model's backward in one number); and
:func:`reduction_tolerance`, the error bound low-precision results are held to.

Used by the test suite and by ``gpuconv.compat.cs231n`` (its ``eval_numerical_gradient*``).
Work in float64: with h = 1e-5 the truncation and rounding errors of a smooth op stay
near 1e-10, so a relative error above 1e-6 means a wrong gradient, not noise.
"""
from __future__ import annotations

import numpy as np

from . import precision
from .backend import get_array_module
from .ops._checks import check_array


def numerical_gradient(f, x, h=1e-5):
    """d f(x) / dx for a scalar-valued ``f``; perturbs ``x`` in place and restores it."""
    return numerical_gradient_array(lambda a: f(a), x, None, h)


def numerical_gradient_array(f, x, df=None, h=1e-5):
    """The vector-Jacobian product ``sum(df * d f(x)/dx)`` for an array-valued ``f``.

    ``df`` None means ``f`` returns a scalar. ``x`` is modified in place during the
    evaluation and restored exactly afterwards; it may be any view (a transposed weight, a
    channels_last batch): ``f`` often reads it from elsewhere (a model's parameter), so it is
    perturbed where it lies, never copied."""
    check_array("x", x)
    xp = get_array_module(x)
    if x.dtype.kind != "f" and x.dtype != precision.bfloat16:
        raise TypeError(f"x has dtype {x.dtype}, whose values cannot move by h={h}: the differences would be "
                        "meaningless; pass a float copy, e.g. x.astype(np.float64)")
    if not getattr(x.flags, "writeable", True):
        raise ValueError("x is read-only, and it is perturbed in place: pass a writable copy, x.copy()")
    grad = xp.zeros(x.shape, dtype=x.dtype)
    # (a C-contiguous x through its flat view, one index per element; any other view by its indices)
    flat = x.flags.c_contiguous
    target, indices = (x.reshape(-1), range(x.size)) if flat else (x, np.ndindex(*x.shape))
    flat_g = grad.reshape(-1) if flat else grad
    for i in indices:
        old = target[i].copy()
        target[i] = old + h
        plus = f(x)
        target[i] = old - h
        minus = f(x)
        target[i] = old
        diff = plus - minus
        if df is None and getattr(diff, "size", 1) != 1:
            raise ValueError(f"f returned an array of shape {tuple(diff.shape)}, not a scalar: for an array-valued f "
                             "pass df, the gradient flowing into its output (numerical_gradient_array(f, x, df))")
        flat_g[i] = (diff if df is None else (diff * df).sum()) / (2 * h)
    return grad


def directional_derivative(model, x, labels, h=1e-6, seed=0):
    """A model's backward pass checked end to end: ``(analytic, numeric)`` derivatives of the mean
    softmax cross-entropy of ``model(x)`` against ``labels`` along one random direction over every
    trainable parameter and the input at once. ``analytic`` is <gradient, direction> from one
    backward pass, ``numeric`` the central difference (L(+h) - L(-h)) / 2h; a right backward gives
    :func:`relative_error` below 1e-6 in float64, with ``h`` small enough that no ReLU or max-pool
    input crosses a kink along the direction (1e-6 or 1e-7 for the CIFAR networks). The
    parameters are restored after; their gradients are those of ``(x, labels)``. Every forward
    draws the same dropout masks (each layer's generator is rewound to where it stood), and the
    model's buffers (batch norm's running statistics) and generators are left as one training
    forward leaves them."""
    from .ops import softmax_cross_entropy
    xp = get_array_module(x)
    rng = np.random.default_rng(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    dirs = [xp.asarray(rng.standard_normal(p.shape)) for p in params]
    dir_x = xp.asarray(rng.standard_normal(x.shape))
    generators = [gen for _, gen in model.named_generators()]
    start = [gen.bit_generator.state for gen in generators]

    def rewind():
        for gen, state in zip(generators, start):
            gen.bit_generator.state = state

    def loss_at(t):
        rewind()
        saved = [p.data.copy() for p in params]
        for p, d in zip(params, dirs):
            p.data += t * d
        loss, _ = softmax_cross_entropy(model(x + t * dir_x), labels)
        for p, s in zip(params, saved):
            p.data = s
        return float(loss)

    model.zero_grad()
    _, dlogits = softmax_cross_entropy(model(x), labels)
    dx = model.backward(dlogits)
    # (a parameter the backward gave no gradient counts as 0: unused, or a backward that missed it,
    # which the numeric side then shows)
    analytic = float(xp.sum(dx * dir_x)) + sum(float(xp.sum(p.grad * d)) for p, d in zip(params, dirs)
                                               if p.grad is not None)
    after = [gen.bit_generator.state for gen in generators]
    buffers = [(m, name, b.copy()) for m in model.modules() for name, b in m._own_buffers()]
    numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
    for gen, state in zip(generators, after):
        gen.bit_generator.state = state
    for m, name, value in buffers:
        getattr(m, name)[...] = value
    return analytic, numeric


def relative_error(a, b, floor=1e-12):
    """max |a - b| / max(|a| + |b|, floor), elementwise, then the maximum: 0 for equal arrays."""
    xp = get_array_module(a, b)
    a = xp.asarray(a, dtype=xp.float64)
    b = xp.asarray(b, dtype=xp.float64)
    return float(xp.max(xp.abs(a - b) / xp.maximum(xp.abs(a) + xp.abs(b), floor)))


def reduction_tolerance(abs_sum, reference, length, dtype, reference_rounded=True):
    """Elementwise bound on ``|result - reference|`` for outputs that are each a reduction of
    ``length`` terms computed by the precision rule (gpuconv.precision): terms formed exactly
    (a product of two bfloat16, float16 or TF32 values is exact in float32), summed in the
    compute dtype (float32; float64 for float64) in any order, then rounded once to ``dtype``.

    ``abs_sum`` is the sum of the terms' magnitudes per output, ``sum |a_i * b_i|`` (plus
    ``|bias|``), computed in float64 (e.g. the same op on ``|a|`` and ``|b|``); ``reference`` is
    the other side of the comparison (float64 exact, or another order's result). Derivation,
    with u_acc the compute dtype's unit roundoff (2^-24) and u the output's (bfloat16 2^-8,
    float16 2^-11; 0 when ``dtype`` is the compute dtype):

    - a recursive or blocked sum of ``length`` terms errs by at most gamma * abs_sum with
      gamma = length * u_acc / (1 - length * u_acc) (Higham, Accuracy and Stability of
      Numerical Algorithms, 2nd ed., section 4.2); two sides in different orders: twice that;
    - rounding to ``dtype`` errs by at most u * |value| (or half the smallest subnormal near
      zero) on each side: 2 u |reference| plus one subnormal spacing. With
      ``reference_rounded=False`` (``reference`` the exact float64 value, never rounded) only the
      result is rounded: u |reference| plus one subnormal spacing. (The result's rounding is u
      times its float32 sum, which can exceed |reference| by the sum's error; that u-multiple of
      it lies within the doubled sum bound, which an exact reference leaves half unused.) A
      truncating cast errs by up to one unit in the last place (2 u |value|): only the
      one-sided bound can reject it.

    The bound is rigorous, not statistical: a kernel that accumulates in the storage dtype or
    rounds a partial sum exceeds it on realistic sizes (tests check that it can fail). TF32
    results are held to it with ``dtype`` float32: their products are exact in float32 too."""
    xp = get_array_module(abs_sum, reference)
    acc = precision.compute_dtype(dtype)
    u_acc = precision.unit_roundoff(acc)
    gamma = length * u_acc / (1.0 - length * u_acc)
    tol = 2.0 * gamma * xp.asarray(abs_sum, dtype=xp.float64)
    if precision.is_low_precision(dtype):
        ref = xp.abs(xp.asarray(reference).astype(xp.float64))
        sides = 2.0 if reference_rounded else 1.0
        tol = tol + sides * precision.unit_roundoff(dtype) * ref + precision.smallest_subnormal(dtype)
    return tol


def within_tolerance(result, reference, tol):
    """(ok, worst): whether ``|result - reference| <= tol`` everywhere (NaN nowhere unless in both at
    the same place), and the largest excess ratio ``|diff| / tol`` for the message."""
    xp = get_array_module(result, reference)
    a = xp.asarray(result).astype(xp.float64)
    b = xp.asarray(reference).astype(xp.float64)
    both_nan = xp.isnan(a) & xp.isnan(b)
    diff = xp.where(both_nan, 0.0, xp.abs(a - b))
    diff = xp.where(xp.isnan(diff), xp.inf, diff)
    ratio = diff / xp.maximum(tol, 1e-300)
    return bool(xp.all(diff <= tol)), float(xp.max(ratio)) if ratio.size else 0.0
