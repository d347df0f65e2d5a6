"""Inverted dropout: in training each element is zeroed with probability ``p`` and the survivors
are scaled by ``1 / (1 - p)``, so evaluation is the identity and needs no rescaling.

Cache (shared with the kernel launchers, see ``_dispatch``): ``DropoutCache(mask)`` where ``mask``
holds ``0`` or ``1 / (1 - p)`` in ``x``'s dtype, or is None when the forward was the identity
(eval mode or ``p == 0``).
"""
from __future__ import annotations

from collections import namedtuple
import numbers

import numpy as np

from .. import backend
from ..backend import get_array_module, is_cupy_array
from . import _dispatch
from ._checks import check_float, check_same_dtype

DropoutCache = namedtuple("DropoutCache", "mask")


def dropout_forward(x, p=0.5, training=True, rng=None):
    """``y, cache``. ``p`` is the DROP probability in [0, 1); ``rng`` a NumPy Generator for NumPy
    arrays, a CuPy Generator for CuPy arrays, or None for a fresh unseeded one."""
    check_float("x", x)
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
        raise ValueError(f"p is the probability of dropping an element and must be in [0, 1), got {p!r}; "
                         f"p=1 would drop everything (use p=0.5, or skip the layer)")
    xp = get_array_module(x)
    if rng is None:
        rng = xp.random.default_rng()
    elif is_cupy_array(x) and isinstance(rng, np.random.Generator):
        raise TypeError("x is a cupy array but rng is a numpy.random.Generator, which would draw the mask on "
                        "the host: pass cupy.random.default_rng(seed)")
    elif not is_cupy_array(x) and not isinstance(rng, np.random.Generator):
        raise TypeError(f"x is a numpy array, so rng must be a numpy.random.Generator, got {type(rng).__name__}: "
                        f"pass numpy.random.default_rng(seed)")
    if not training or p == 0:
        return x, DropoutCache(None)
    target = backend.kernel_target(x)
    return _dispatch.call("dropout_forward", target, _dropout_forward_reference, x, float(p), rng)


def dropout_backward(dy, cache):
    """``dx = dy * mask`` (``dy`` itself when the forward was the identity)."""
    check_float("dy", dy)
    if cache.mask is None:
        return dy
    if tuple(dy.shape) != tuple(cache.mask.shape):
        raise ValueError(f"dy must have the forward input's shape {tuple(cache.mask.shape)}, got {tuple(dy.shape)}")
    check_same_dtype("mask", cache.mask, dy=dy)
    target = backend.kernel_target(dy, cache.mask)
    return _dispatch.call("dropout_backward", target, _dropout_backward_reference, dy, cache)


def _dropout_forward_reference(x, p, rng):
    keep = rng.random(x.shape, dtype=x.dtype) >= x.dtype.type(p)
    mask = keep.astype(x.dtype)
    mask *= x.dtype.type(1.0 / (1.0 - p))
    return x * mask, DropoutCache(mask)


def _dropout_backward_reference(dy, cache):
    return dy * cache.mask
