"""Kernel launchers for ReLU (kernels/relu.cu), registered for 'cuda' and 'sim'.

Same arguments, results and cache (``ReluCache(x)``) as the NumPy reference in ``relu.py``.
The vectorized v2 kernels move four elements per transaction and need every pointer aligned
to four elements (16 bytes in float32); CuPy's allocations always are, NumPy's usually are,
and a misaligned view falls back to v1.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..backend import get_array_module, is_cupy_array
from ._dispatch import register_launcher
from .relu import ReluCache


def _address(a):
    return a.data.ptr if is_cupy_array(a) else a.ctypes.data


def _pick(family, arrays):
    """'v2' when chosen and every pointer is 4-element aligned, else 'v1'."""
    var = kernels.variant(family)
    if var == "v2" and any(_address(a) % (4 * a.itemsize) for a in arrays):
        return "v1"
    return var


def _run(kernel, n, variant, target, args):
    """v1: one thread per element; v2: one thread per 4-element vector (the tail rides along).
    ``args[0]`` gives the dtype and the device."""
    per_thread = 4 if variant == "v2" else 1
    device = kernels.array_device(args[:1])
    grid, block = kernels.grid_1d(max(1, -(-n // per_thread)), kernels.BLOCK, target, device)
    kernels.launch("relu", f"{kernel}_{variant}", args[0].dtype, target, grid, block, args + (np.int64(n),),
                   device=device)


@register_launcher("relu_forward")
def relu_forward_kernel(x, *, target):
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty_like(x)
    if x.size:
        _run("relu_forward", x.size, _pick("relu_forward", (x, y)), target, (x, y))
    return y, ReluCache(x)


@register_launcher("relu_backward")
def relu_backward_kernel(dy, cache, *, target):
    xp = get_array_module(dy, cache.x)
    dy, x = xp.ascontiguousarray(dy), xp.ascontiguousarray(cache.x)
    dx = xp.empty_like(dy)
    if dx.size:
        _run("relu_backward", dx.size, _pick("relu_backward", (dy, x, dx)), target, (dy, x, dx))
    return dx
