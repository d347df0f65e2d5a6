"""Kernel launchers for ReLU (kernels/relu.cu), registered for 'cuda' and 'sim'.

Same arguments, results and cache (``ReluCache(x)``) as the NumPy reference in ``relu.py``.
The vectorized v2 kernels move four elements per transaction and need every pointer aligned
to four elements (16 bytes in float32); CuPy's allocations always are, NumPy's usually are,
and a misaligned view falls back to v1.
"""
from __future__ import annotations

from .. import kernels
from ._dispatch import register_launcher
from .relu import ReluCache



def _pick(family, arrays):
    """'v2' when chosen (for the arrays' dtype) and every pointer is 4-element aligned (16 bytes
    in float32, 8 in bfloat16/float16), else 'v1'."""
    var = kernels.variant(family, arrays[0].dtype)
    if var == "v2" and any(kernels.address(a) % (4 * a.itemsize) for a in arrays):
        return "v1"
    return var


def _run(kernel, variant, target, arrays):
    """v1: one thread per element; v2: one thread per 4-element vector (the tail rides along)."""
    kernels.launch_1d("relu", f"{kernel}_{variant}", target, arrays, per_thread=4 if variant == "v2" else 1)


@register_launcher("relu_forward")
def relu_forward_kernel(x, *, target):
    x, y = kernels.contiguous_like(x, keep_channels_last=True)
    _run("relu_forward", _pick("relu_forward", (x, y)), target, (x, y))
    return y, ReluCache(x)


@register_launcher("relu_backward")
def relu_backward_kernel(dy, cache, *, target):
    dy, x, dx = kernels.contiguous_like(dy, cache.x, keep_channels_last=True)
    _run("relu_backward", _pick("relu_backward", (dy, x, dx)), target, (dy, x, dx))
    return dx
