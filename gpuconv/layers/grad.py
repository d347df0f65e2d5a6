"""What is done to the gradients of a set of parameters between a backward and an optimizer
step: ``zero_grads`` (``zero_grad``'s work), and PyTorch's ``clip_grad_norm_`` and
``clip_grad_value_``, on the gradients' device."""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..backend import array_device_context, get_array_module
from ..ops._checks import check_bool
from .parameter import Parameter


def zero_grads(params, set_to_none=True):
    """``.grad = None`` for each parameter, or (``set_to_none=False``) its gradient zeroed in place."""
    set_to_none = check_bool("zero_grad(set_to_none)", set_to_none)
    for p in params:
        if set_to_none:
            p.grad = None
        elif p.grad is not None:
            with array_device_context((p.grad,)):  # (CuPy fills on its current device)
                p.grad[...] = 0


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """PyTorch's ``nn.utils.clip_grad_norm_``: scale the gradients of ``parameters`` (a
    Parameter, or several) in place so that their joint ``norm_type``-norm (2, any p >= 1, or
    ``inf``) is at most ``max_norm``; returns that norm before clipping as a 0-d array on the
    gradients' device. Decided on the device: no readback, unless ``error_if_nonfinite`` asks
    to raise on a NaN/Inf norm. Parameters without a gradient take no part. Under fp16 loss
    scaling the gradients are still scaled: clip after the scaler has unscaled them. ``foreach``
    (how PyTorch schedules the same arithmetic) is taken as given."""
    params = [parameters] if isinstance(parameters, Parameter) else list(parameters)
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float, np.integer, np.floating)) \
            or not math.isfinite(max_norm) or max_norm <= 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be a finite number > 0, got {max_norm!r}")
    norm_type = float(norm_type)
    if not (norm_type >= 1.0):
        raise ValueError(f"clip_grad_norm_: norm_type must be >= 1 (2 for the Euclidean norm) or inf, got {norm_type!r}")
    grads = [p.grad for p in params if isinstance(p, Parameter) and p.grad is not None]
    if len(grads) != sum(1 for p in params if not isinstance(p, Parameter) or p.grad is not None):
        raise TypeError("clip_grad_norm_: parameters must be gpuconv Parameters (model.parameters())")
    if not grads:
        return np.zeros((), np.float32)
    with array_device_context(grads[:1]):  # CuPy makes the norms and temporaries on its current device
        return _clip(grads, xp=get_array_module(grads[0]), max_norm=max_norm, norm_type=norm_type,
                     error_if_nonfinite=error_if_nonfinite)


def _clip(grads, xp, max_norm, norm_type, error_if_nonfinite):
    # Summed in float32 at least: a float16 sum of squares overflows past a norm of 256 (every
    # gradient would be scaled to 0), a bfloat16 one stalls (and would never clip).
    acc = np.float64 if any(g.dtype == np.float64 for g in grads) else np.float32
    # One norm per gradient written into a vector, then one reduction over it (a stack of them: CuPy
    # joins more than 8 arrays in one kernel whose table of their addresses it uploads from the host,
    # which the capture of a CUDA graph refuses).
    parts = xp.empty(len(grads), dtype=acc)
    for i, g in enumerate(grads):
        if math.isinf(norm_type):
            parts[i] = xp.max(xp.abs(g)).astype(acc)
        else:
            parts[i] = xp.sum(xp.abs(g.astype(acc, copy=False)) ** norm_type)
    total = xp.max(parts) if math.isinf(norm_type) else xp.sum(parts) ** (1.0 / norm_type)
    total = xp.asarray(total, dtype=acc)
    if error_if_nonfinite and not math.isfinite(float(total)):
        raise RuntimeError(f"clip_grad_norm_: the gradients' total {norm_type:g}-norm is {float(total)}: a "
                           "NaN or Inf gradient (pass error_if_nonfinite=False to clip anyway)")
    scale = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for g in grads:
        if g.dtype == acc:
            g *= scale
        else:  # a half-precision gradient: the product in float32, rounded once
            g[...] = (g.astype(acc) * scale).astype(g.dtype)
    return total


def clip_grad_value_(parameters, clip_value, foreach=None):
    """PyTorch's ``nn.utils.clip_grad_value_``: every gradient element of ``parameters`` (a
    Parameter, or several) clamped in place to ``[-clip_value, clip_value]``, on the gradients'
    device, with no readback (one elementwise launch per gradient, capturable in a CUDA graph);
    returns None, as PyTorch's. A NaN stays a NaN, an infinity becomes the bound. Parameters
    without a gradient take no part. Under fp16 loss scaling the gradients are still scaled: clip
    after the scaler has unscaled them. ``foreach`` (how PyTorch schedules the same arithmetic) is
    taken as given."""
    params = [parameters] if isinstance(parameters, Parameter) else list(parameters)
    if isinstance(clip_value, bool) or not isinstance(clip_value, numbers.Real) or not clip_value >= 0:
        raise ValueError(f"clip_grad_value_: clip_value must be a number >= 0 (the gradients are clamped to "
                         f"[-clip_value, clip_value]), got {clip_value!r}")
    grads = [p.grad for p in params if isinstance(p, Parameter) and p.grad is not None]
    if len(grads) != sum(1 for p in params if not isinstance(p, Parameter) or p.grad is not None):
        raise TypeError("clip_grad_value_: parameters must be gpuconv Parameters (model.parameters())")
    bound = float(clip_value)
    for g in grads:
        # The bounds go to the kernel by value (nothing uploaded); the comparison is in the
        # gradient's dtype, so a float16 or bfloat16 gradient gets the bound rounded once.
        with array_device_context((g,)):  # CuPy launches on its current device
            get_array_module(g).clip(g, -bound, bound, out=g)
