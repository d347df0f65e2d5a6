"""Kernel launcher for the constant scaling (kernels/scale.cu), registered for 'cuda' and 'sim'.

Same arguments, results and cache (``ScaleCache(factor, dtype, shape)``) as the NumPy reference in ``scale.py``;
channels_last arrays stay channels_last (an elementwise kernel walks memory in any order).
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ._dispatch import register_launcher
from .scale import ScaleCache


@register_launcher("scale_forward")
def scale_forward_kernel(x, factor, *, target):
    x, y = kernels.contiguous_like(x, keep_channels_last=True)
    kernels.launch_1d("scale", "scale_forward", target, (x, y), (np.float64(factor),))
    return y, ScaleCache(factor, x.dtype, tuple(x.shape))
