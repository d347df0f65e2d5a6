"""Kernel launchers for dropout (kernels/dropout.cu), registered for 'cuda' and 'sim'.

Same arguments, results and cache (``DropoutCache(mask)``) as the NumPy reference in
``dropout.py``, bit for bit: the kernel hashes the same (key, flat index) pairs and compares
them with the same integer threshold (``keep_threshold``), and scales by the same ``keep_scale``.
The key, the threshold and the scale travel as kernel arguments: no host-device copy, no sync;
or the key is read on the device from ``key_at`` (a null pointer when None), written there before
a step replayed as a CUDA graph.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..backend import get_array_module
from ..precision import compute_dtype
from ._dispatch import register_launcher
from .dropout import DropoutCache, keep_scale, keep_threshold


@register_launcher("dropout_forward")
def dropout_forward_kernel(x, p, key, key_at=None, *, target):
    x, y = kernels.contiguous_like(x)
    acc = compute_dtype(x.dtype)  # the mask and the scale: float32 for a bfloat16/float16 x
    mask = get_array_module(x).empty(x.shape, dtype=acc)
    kernels.launch_1d("dropout", "dropout_forward", target, (x, y, mask),
                      (np.uint64(key), keep_threshold(p), keep_scale(p, acc), key_at))
    return y, DropoutCache(mask)


@register_launcher("dropout_backward")
def dropout_backward_kernel(dy, cache, *, target):
    dy, mask, dx = kernels.contiguous_like(dy, cache.mask)  # dx like dy
    kernels.launch_1d("dropout", "dropout_backward", target, (dy, mask, dx))
    return dx
