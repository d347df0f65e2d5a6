"""Inverted dropout: in training each element is zeroed with probability ``p`` and the survivors
are scaled by ``1 / (1 - p)``, so evaluation is the identity and needs no rescaling.

The mask is counter-based, the same bits on every backend (the NumPy reference here, the kernel
in kernels/dropout.cu on 'cuda' and 'sim'). Each training forward takes ONE 64-bit ``key``,
drawn on the host from a ``numpy.random.Generator`` (a host scalar: no transfer, no sync), and
element ``i`` (flat C-order index) is kept iff ``u(key, i) >= p`` with

    h(key, i) = splitmix64_mix(key + (i + 1) * 0x9E3779B97F4A7C15)   (mod 2^64)
    u(key, i) = (h >> 11) * 2^-53                                     (53 uniform bits)

``h`` is the (i+1)-th output of SplitMix64 seeded with ``key`` (Steele, Lea & Flood 2014; the
mixer is Stafford's "Mix13"), which passes BigCrush. The test ``u >= p`` is made in integers,
``(h >> 11) >= ceil(p * 2^53)`` (exact: ``p * 2^53`` only rescales the double ``p``), with one
rule for float32 and float64: a key gives the same mask in both dtypes, and the reference and
the kernels agree bit for bit. Because the generator's state is one NumPy Generator whatever
the device, a checkpoint can save it and a resumed CUDA run repeats its masks exactly. A step
replayed as a CUDA graph cannot take a new key by value at each replay: it reads the key from a
one-element device array instead (``key_at``), filled before each step with the generator's next
draw (:meth:`gpuconv.layers.Dropout.write_key`), so its masks are the same.

Precision (gpuconv.precision): the mask is kept in x's compute dtype (float64 for float64, float32
otherwise) and a bfloat16/float16 ``x * mask`` is formed in float32 and rounded once, so a kept
element is scaled by 1/(1-p) rounded to float32, not to 8 or 11 bits.

Cache (shared with the kernel launchers, see ``_dispatch``): ``DropoutCache(mask)`` where ``mask``
holds ``0`` or ``1 / (1 - p)`` in x's compute dtype (float32 for a bfloat16/float16 x), or is
None when the forward was the identity (eval mode or ``p == 0``), and ``dtype`` and ``shape``, x's,
which dy must have (set by :func:`dropout_forward`; None: not checked). The identity's cache holds
no mask, so its shape is what checks dy there.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import backend
from ..backend import get_array_module
from ..counter_rng import splitmix64
from ..precision import compute_dtype, round_once, upcast
from . import _dispatch
from ._checks import cache_type, cached, check_bool, check_cache, check_dy_dtype, check_float

DropoutCache = cache_type("DropoutCache", "mask dtype shape", __name__, defaults=(None, None))

KEEP_BITS = 53  # u's resolution: the keep probability is 1 - ceil(p * 2^53) / 2^53, within 2^-53 of 1 - p
_S_KEEP = np.uint64(64 - KEEP_BITS)


def dropout_forward(x, p=0.5, training=True, rng=None, *, key=None, key_at=None):
    """``y, cache``. ``p`` is the DROP probability in [0, 1).

    The mask comes from one 64-bit key: ``key`` (an int in [0, 2^64)) when given, else one
    drawn from ``rng``, a ``numpy.random.Generator`` for NumPy and CuPy arrays alike (None: a
    fresh unseeded one). A key is drawn only when a mask is made (training and ``p > 0``), so a
    seeded Generator gives the same masks on every device. Pass ``rng`` or ``key``, not both.

    ``key_at``: instead of both, a one-element uint64 array on x's device holding the key, read
    where the mask is made (by the kernel on 'cuda' and 'sim'; the reference adds it as an array):
    a step replayed as a CUDA graph (gpuconv.graphs) takes its key from there, written on the
    device before each replay (:meth:`gpuconv.layers.Dropout.write_key`). The same key gives the
    same mask either way."""
    check_float("x", x)
    training = check_bool("training", training)
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
        raise ValueError(f"p is the probability of dropping an element and must be in [0, 1), got {p!r}; "
                         f"p=1 would drop everything (use p=0.5, or skip the layer)")
    if key_at is not None:
        if key is not None or rng is not None:
            raise ValueError("dropout_forward: pass key_at (the key in a device array) alone, without rng or key")
        _check_key_at(x, key_at)
    elif key is not None:
        if rng is not None:
            raise ValueError("dropout_forward: pass rng (a numpy.random.Generator that draws the key) or key "
                             "(the key itself), not both")
        key = _check_key(key)
    elif rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator, got {type(rng).__module__}.{type(rng).__name__}: the mask is "
            "hashed from one 64-bit key drawn on the host, for NumPy and CuPy arrays alike, so one generator "
            "serves every device and its state can be checkpointed; pass numpy.random.default_rng(seed)")
    if not training or p == 0:
        return x, DropoutCache(None, x.dtype, tuple(x.shape))
    if key_at is not None:
        key = np.uint64(0)  # (the kernel reads key_at instead)
    elif key is None:
        key = draw_key(rng if rng is not None else np.random.default_rng())
    target = backend.kernel_target(x)
    y, cache = _dispatch.call("dropout_forward", target, _dropout_forward_reference, x, float(p), key, key_at)
    return y, cache._replace(dtype=x.dtype)


def dropout_backward(dy, cache):
    """``dx = dy * mask`` (``dy`` itself when the forward was the identity)."""
    check_cache(cache, DropoutCache, "dropout_forward")
    check_float("dy", dy)
    if cache.dtype is not None:
        check_dy_dtype(dy, cache.dtype)
    shape = cache.shape if cache.mask is None else tuple(cache.mask.shape)
    if shape is not None and tuple(dy.shape) != shape:
        raise ValueError(f"dy must have the forward input's shape {shape}, got {tuple(dy.shape)}")
    if cache.mask is None:
        return dy
    if cache.mask.dtype != compute_dtype(dy.dtype):
        raise TypeError(f"dy has dtype {dy.dtype} but mask has dtype {cache.mask.dtype}: the mask is kept in the "
                        f"forward input's compute dtype ({compute_dtype(dy.dtype)} for a {dy.dtype} x), so pass dy "
                        "in the dtype of the forward's x")
    target = backend.kernel_target(dy, cache.mask, names=("dy", cached("mask")))
    return _dispatch.call("dropout_backward", target, _dropout_backward_reference, dy, cache)


# ----------------------------------------------------------------------------- the mask, shared with the launchers
def draw_key(rng) -> np.uint64:
    """One 64-bit key from the NumPy Generator ``rng`` (one draw per training forward)."""
    return rng.integers(0, 2**64, dtype=np.uint64)


def keep_threshold(p) -> np.uint64:
    """``ceil(p * 2^53)``: element ``i`` is kept iff ``dropout_hash(key, i) >> 11`` is at least this."""
    return np.uint64(math.ceil(float(p) * 2.0 ** KEEP_BITS))


def keep_scale(p, dtype):
    """``1 / (1 - p)`` rounded once to ``dtype`` (the mask's: the compute dtype of x): the value of a
    kept element of the mask."""
    return np.dtype(dtype).type(1.0 / (1.0 - float(p)))


def dropout_hash(key, n, xp=np):
    """``h(key, i)`` for ``i`` in ``[0, n)`` as a uint64 array (``xp`` = numpy or cupy): SplitMix64's
    output ``i + 1`` from state ``key`` (:func:`gpuconv.counter_rng.splitmix64`; ``key`` may be a
    one-element uint64 array of ``xp``'s, added as it is)."""
    return splitmix64(key, n, xp)


def _check_key(key) -> np.uint64:
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, numbers.Integral) or not 0 <= int(key) < 2**64:
        raise ValueError(f"key must be an int in [0, 2**64) (the 64-bit mask key), got {key!r}; draw one with "
                         "numpy.random.default_rng(seed).integers(0, 2**64, dtype=numpy.uint64), or pass rng")
    return np.uint64(int(key))


def keep_bits(key, p, shape, xp=np):
    """The mask's keep decisions, a bool array of ``shape`` (``xp`` = numpy or cupy): element ``i``
    (flat C-order) is kept iff ``u(key, i) >= p``, tested in integers as the kernel does. ``key``
    may be a one-element uint64 array of ``xp``'s (added as an array: no read back)."""
    n = math.prod(shape)
    return ((dropout_hash(key, n, xp) >> _S_KEEP) >= keep_threshold(p)).reshape(shape)


def _check_key_at(x, key_at):
    if get_array_module(key_at) is not get_array_module(x) or getattr(key_at, "shape", None) != (1,) \
            or key_at.dtype != np.uint64 \
            or (backend.is_cupy_array(x) and backend.device_id(key_at) != backend.device_id(x)):
        what = (f"a {type(key_at).__module__}.{type(key_at).__name__}" if not hasattr(key_at, "dtype")
                else f"a {type(key_at).__module__}.{type(key_at).__name__} of shape {tuple(key_at.shape)} and dtype "
                     f"{key_at.dtype}" + (f" on cuda:{backend.device_id(key_at)} (x: cuda:{backend.device_id(x)})"
                                          if backend.is_cupy_array(key_at) and backend.is_cupy_array(x) else ""))
        raise ValueError(f"key_at must be a one-element uint64 array on x's device (the mask key, written there "
                         f"before the step), got {what}; make it with xp.zeros(1, numpy.uint64) where xp is x's "
                         "array module, or pass key")


def _dropout_forward_reference(x, p, key, key_at=None):
    xp = get_array_module(x)
    mask = keep_bits(key if key_at is None else key_at, p, x.shape, xp).astype(compute_dtype(x.dtype))
    mask *= keep_scale(p, mask.dtype)
    return round_once(upcast(x) * mask, x.dtype), DropoutCache(mask)


def _dropout_backward_reference(dy, cache):
    return round_once(upcast(dy) * cache.mask, dy.dtype)


# This op's CUDA kernel launchers, for the 'cuda' and 'sim' targets; last, as they import the names above.
from . import _launch_dropout  # noqa: E402,F401  (registration)
