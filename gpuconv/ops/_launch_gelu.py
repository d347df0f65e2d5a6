"""Kernel launchers for GELU (kernels/gelu.cu), registered for 'cuda' and 'sim'.

Same arguments, results and cache (``GeluCache(x)``) as the NumPy reference in ``gelu.py``;
channels_last arrays stay channels_last (an elementwise kernel walks memory in any order).
"""
from __future__ import annotations

from .. import kernels
from ._dispatch import register_launcher
from .gelu import GeluCache


@register_launcher("gelu_forward")
def gelu_forward_kernel(x, *, target):
    x, y = kernels.contiguous_like(x, keep_channels_last=True)
    kernels.launch_1d("gelu", "gelu_forward", target, (x, y))
    return y, GeluCache(x)


@register_launcher("gelu_backward")
def gelu_backward_kernel(dy, cache, *, target):
    dy, x, dx = kernels.contiguous_like(dy, cache.x, keep_channels_last=True)
    kernels.launch_1d("gelu", "gelu_backward", target, (dy, x, dx))
    return dx
