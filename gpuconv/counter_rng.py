"""Counter-based random bits: one 64-bit key and an element index give the element's bits, on
NumPy and CuPy alike, with no generator state on the device.

    splitmix64(key, n)[i] = mix(key + (i + 1) * 0x9E3779B97F4A7C15)   (mod 2^64)

is the (i+1)-th output of SplitMix64 seeded with ``key`` (Steele, Lea & Flood 2014; ``mix`` is
Stafford's "Mix13" finalizer), a generator that passes BigCrush. Because an element's bits
depend only on (key, i), the NumPy reference, a CuPy expression and a CUDA kernel
(``dropout_hash`` in kernels/dropout.cu) produce the same bits, and a seed gives the same
draws on every device. Users: dropout masks (:mod:`gpuconv.ops.dropout`) and the loader's
shuffle/crop/flip plan (:meth:`gpuconv.data.DeviceLoader.epoch_plan`).
"""
from __future__ import annotations

import numpy as np

__all__ = ["splitmix64", "uniform_below", "check_seed", "SEED_LIMIT"]

GAMMA = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, SplitMix64's increment
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S32 = (np.uint64(s) for s in (30, 27, 31, 32))
_LOW32 = np.uint64(0xFFFFFFFF)
SEED_LIMIT = 2**64  # seeds are integers in [0, SEED_LIMIT): one 64-bit key's worth, as torch.manual_seed takes


def check_seed(value, name="seed"):
    """``value`` as an int where it is a seed: an integer in ``[0, 2**64)``. Every user of a seed
    (initial weights, the loader's plans, augmentation, the trainer's generator) keeps the whole
    of it, so two seeds in the range never give the same run; outside it an error names the range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}={value!r} must be an integer in [0, 2**64), e.g. {name}=0")
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name}={value} is out of range: a seed is an integer in [0, 2**64) "
                         f"(0 ... {SEED_LIMIT - 1}), e.g. {name}=0")
    return int(value)


def splitmix64(key, n, xp=np):
    """The uint64 array ``h(key, i)`` for ``i`` in ``[0, n)`` (``xp`` = numpy or cupy). Array
    arithmetic wraps mod 2^64 without warnings. ``key`` may also be a one-element uint64 array
    of ``xp``'s (a key kept on the device): it is added as an array, never read back."""
    z = xp.arange(1, n + 1, dtype=np.uint64)
    z *= GAMMA
    z += key if isinstance(key, xp.ndarray) else np.uint64(key)
    z ^= z >> _S30
    z *= _MIX1
    z ^= z >> _S27
    z *= _MIX2
    z ^= z >> _S31
    return z


def uniform_below(bits, span, high=True):
    """Integers in ``[0, span)`` (int64) from 32 of ``bits`` (the high half, or the low one):
    ``(b * span) >> 32``, whose bias is below ``span / 2^32``."""
    b = bits >> _S32 if high else bits & _LOW32
    return ((b * np.uint64(span)) >> _S32).astype(np.int64)
