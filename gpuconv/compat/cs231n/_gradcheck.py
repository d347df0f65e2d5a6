"""The assignment's gradient checks (``gradient_check.py``) and the notebooks' ``rel_error``."""
from __future__ import annotations

import numpy as np

from ... import gradcheck
from ...backend import asnumpy

def eval_numerical_gradient(f, x, verbose=True, h=1e-5):
    """Central-difference gradient of the scalar ``f(x)``; ``x`` is perturbed in place and restored.

    With ``verbose`` every entry is printed as ``index value`` (after the whole gradient is
    computed, with one readback for CuPy arrays)."""
    grad = gradcheck.numerical_gradient(f, x, h)
    if verbose:
        host = asnumpy(grad)
        for ix in np.ndindex(*host.shape):
            print(ix, host[ix])
    return grad


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """Central-difference ``sum(df * d f(x) / dx)`` for an array-valued ``f``."""
    # f may hand back x itself or a view of it (dropout in test mode does): copy each output
    # before x is perturbed again, as the assignment's version does.
    return gradcheck.numerical_gradient_array(lambda a: _copy(f(a)), x, df, h)


def _copy(a):
    return a.copy() if hasattr(a, "copy") else a


def rel_error(x, y):
    """The assignment notebooks' ``max(|x - y| / max(1e-8, |x| + |y|))`` (in float64)."""
    return gradcheck.relative_error(x, y, floor=1e-8)
