"""Kernel launcher for softmax cross-entropy (kernels/loss.cu), registered for 'cuda' and 'sim'.

Same arguments and results as the reference in ``loss.py``: a 0-d loss in the compute dtype
(float32, or float64 for float64 logits) and dlogits in the logits' dtype (and with
``count_correct`` the 0-d int32 count of right predictions), from one launch.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..backend import get_array_module
from ..precision import compute_dtype
from ._dispatch import register_launcher
from .loss import weight_stats

@register_launcher("softmax_cross_entropy")
def softmax_cross_entropy_kernel(logits, labels, eps, count_correct=False, grad_scale=None, reduction="mean",
                                 weight=None, ignore_index=None, *, target):
    n, c = logits.shape
    if not kernels.int_indexable(n * max(c, 1)):
        return NotImplemented  # rows are int in the kernel
    xp = get_array_module(logits, labels)
    acc = compute_dtype(logits.dtype)
    logits = xp.ascontiguousarray(logits)
    labels = xp.ascontiguousarray(labels, dtype=np.int64)
    device = kernels.array_device([logits])
    loss = xp.empty((), dtype=acc)
    dlogits = xp.empty((n, c), dtype=logits.dtype)
    row_loss = xp.empty(n, dtype=acc)
    correct, row_hits = (xp.empty((), dtype=np.int32), xp.empty(n, dtype=np.int32)) if count_correct else (None, None)
    # The constants as the reference rounds them: Python floats against acc arrays.
    keep, eps_c, inv_n = (acc.type(v) for v in (1.0 - eps, eps / c, 1.0 / n if reduction == "mean" else 1.0))
    stats = weight_stats(labels, weight, ignore_index, acc)
    grid, block = kernels.grid_1d(32 * n, kernels.BLOCK, target, device)  # a warp per row
    kernels.launch("loss", "softmax_cross_entropy", logits.dtype, target, grid, block,
                   (logits, labels, row_loss, loss, dlogits, row_hits, correct, kernels.tickets(logits, 1),
                    np.int32(n), np.int32(c), keep, eps_c, np.int32(bool(eps)), inv_n, grad_scale,
                    np.int32(reduction == "mean"), weight, stats, np.int64(0 if ignore_index is None else ignore_index),
                    np.int32(ignore_index is not None)), device=device)
    if reduction == "none":
        loss = row_loss
    return (loss, dlogits, correct) if count_correct else (loss, dlogits)
