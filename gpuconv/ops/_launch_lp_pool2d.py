"""Kernel launchers for LP (power-average) pooling (kernels/pool2d.cu), registered for 'cuda' and
'sim', on the helpers of ``_launch_pool2d.py`` (layouts, geometry); same arguments, results and
cache as the NumPy reference in ``lp_pool2d.py``."""
from __future__ import annotations

import numpy as np

from .. import layout
from ..backend import get_array_module
from ._dispatch import register_launcher
from ._launch_pool2d import _dims, _inputs, _run
from .lp_pool2d import LPPool2dCache


@register_launcher("lp_pool2d_forward")
def lp_pool2d_forward_kernel(x, norm_type, kernel_size, stride, *, target):
    xp = get_array_module(x)
    (x,), cl = _inputs(x)
    out_shape, dims = _dims(x.shape, kernel_size, stride, floor=True)  # the op checked the exact rule if asked
    y = layout.empty(xp, out_shape, x.dtype, cl)
    _run("lp_pool2d_forward", y.size, target, (x, y), dims, cl, (np.float64(norm_type),), vec=False)
    return y, LPPool2dCache(x, y, kernel_size, stride, norm_type)


@register_launcher("lp_pool2d_backward")
def lp_pool2d_backward_kernel(dy, cache, *, target):
    xp = get_array_module(dy, cache.x)
    (dy, x, y), cl = _inputs(dy, cache.x, cache.y)
    _, dims = _dims(x.shape, cache.kernel_size, cache.stride, floor=True)  # dy's shape was checked
    dx = layout.empty(xp, x.shape, dy.dtype, cl)
    _run("lp_pool2d_backward", dx.size, target, (dy, x, y, dx), dims, cl, (np.float64(cache.norm_type),),
         vec=False)
    return dx
