"""Softmax cross-entropy on logits, averaged over the batch, with optional label smoothing.

Numerically stable: the row maximum is subtracted before ``exp`` and the loss is computed as
``logsumexp - logit``, so logits of 1e4 neither overflow nor lose the small terms.

The loss is returned as a 0-d array on the logits' device, never as a Python float, so a
training step makes no host round trip. Label range checks follow the same rule. On the host
(NumPy arrays, and the simulator, whose labels are NumPy arrays) an out-of-range label is a
ValueError. On a GPU, checking would read the labels back every step, so the computation
itself marks the bad row instead: the loss becomes NaN and so does that row of ``dlogits``
(never another class's logit or a silently wrong gradient). The trainer reads its losses back
once per log interval and stops at the first NaN, naming the step and this cause; a user who
wants the check at once calls :func:`check_labels`, which reads back.

Precision (gpuconv.precision): the softmax and the loss are computed in float32 for bfloat16 and
float16 logits (upcast exactly), the loss is a float32 0-d array, and dlogits comes back in the
logits' dtype, rounded once. float64 logits stay float64 throughout. ``grad_scale`` (float16
training's loss scale, :class:`gpuconv.amp.LossScaler`) multiplies dlogits before that rounding.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import backend
from ..backend import get_array_module, is_cupy_array
from ..precision import DTYPES, compute_dtype, round_once, upcast
from . import _dispatch
from ._checks import check_array, check_bool, check_float, check_rank, checked_once, signature


REDUCTIONS = ("mean", "sum", "none")


def softmax_cross_entropy(logits, labels, label_smoothing=0.0, count_correct=False, grad_scale=None,
                          reduction="mean", weight=None, ignore_index=None):
    """``loss, dlogits`` for ``logits`` (N, C) and integer ``labels`` (N,) in 0..C-1; the loss is
    float32 for float32/bfloat16/float16 logits (float64 for float64), dlogits has the logits' dtype.

    With smoothing ``e`` the target is ``(1 - e) * one_hot + e / C`` (PyTorch's definition).
    ``dlogits = (softmax - target) / N``. ``count_correct=True`` returns ``loss, dlogits,
    correct`` with ``correct`` the 0-d int32 count of rows whose ``argmax`` (NumPy's: the first
    largest logit, a NaN counting as the largest) is their label: a training step's accuracy,
    computed in the same pass (one kernel launch on a GPU for all three).

    ``grad_scale``: a number, or a 0-d array on the logits' device (read there, never on the
    host): ``dlogits`` is multiplied by it in the compute dtype, before it is rounded to the
    logits' dtype. fp16's loss scale goes here, so gradients below float16's smallest numbers
    are scaled up before they would flush to zero.

    ``reduction`` (PyTorch's): 'mean' (the default) as above; 'sum': the rows' losses added and
    ``dlogits = softmax - target``; 'none': the (N,) losses of the rows, and dlogits the gradient
    of their sum (a row's gradient is its loss's; multiply row i by an upstream ``dy[i]``). An empty
    batch (N = 0) sums to 0 and has no rows' losses, as in PyTorch; its mean is refused.

    ``weight`` (PyTorch's): a (C,) float array of class weights on the logits' device; row i's
    loss is weighted by ``weight[labels[i]]``, the smoothing term's classes by their own weights,
    and the mean divides by the rows' weights summed instead of N. ``ignore_index``: rows with
    this label have loss 0 and gradient 0, are never counted as correct, and the mean leaves
    them out of its divisor (every row ignored: a NaN mean, as PyTorch's). ``None`` (the
    default here; PyTorch's module uses -100): every label must be a class."""
    def check():
        _check_args(logits, labels, label_smoothing, count_correct, reduction, ignore_index)

    if grad_scale is None and weight is None:  # the checks then read types, shapes and plain values only
        checked_once(_CHECKED, lambda: (signature(logits), signature(labels), type(label_smoothing), label_smoothing,
                                        type(count_correct), count_correct, reduction, type(ignore_index),
                                        ignore_index), check)
    else:
        check()
    count_correct = bool(count_correct)
    ignore_index = None if ignore_index is None else int(ignore_index)
    if not is_cupy_array(labels):
        check_labels(labels, logits.shape[1], ignore_index)
    if grad_scale is not None:
        grad_scale = _grad_scale(logits, grad_scale)
    if weight is not None:
        weight = _class_weights(logits, weight)
    target = backend.kernel_target(logits, labels)
    return _dispatch.call("softmax_cross_entropy", target, _softmax_cross_entropy_reference,
                          logits, labels, float(label_smoothing), count_correct, grad_scale, reduction,
                          weight, ignore_index)


# the checks passed (of the arguments without class weights and loss scale), by the arrays'
# signatures and the other arguments' values and types; errors are not memoized
_CHECKED: dict = {}


def _check_args(logits, labels, label_smoothing, count_correct, reduction, ignore_index):
    """The checks of :func:`softmax_cross_entropy` that read no label's value, weight or scale."""
    check_float("logits", logits)
    check_bool("count_correct", count_correct)
    check_rank("logits", logits, 2, "N, C: batch, classes")
    check_array("labels", labels)
    get_array_module(logits, labels, names=("logits", "labels"))  # a TypeError when one is on the GPU, one not
    n, c = logits.shape
    if c == 0:
        raise ValueError(f"logits has no columns (C = 0, shape {tuple(logits.shape)}): a softmax needs at least one "
                         "class; give one score per class, shape (N, classes)")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels has dtype {labels.dtype}, but class labels must be integers in 0..{c - 1}: "
                        f"convert them with labels.astype(np.int64)")
    if tuple(labels.shape) != (n,):
        raise ValueError(f"labels must have shape ({n},), one class index per row of logits {tuple(logits.shape)}, "
                         f"got {tuple(labels.shape)}")
    if isinstance(label_smoothing, bool) or not (
            isinstance(label_smoothing, (int, float, np.floating)) and 0.0 <= float(label_smoothing) <= 1.0):
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}; 0 disables it, "
                         f"0.1 is a common choice")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS} (PyTorch's), got {reduction!r}")
    if n == 0 and reduction == "mean":
        raise ValueError("logits has no rows (N = 0): the mean loss over an empty batch is undefined; skip the empty "
                         "batch, or pass reduction='sum' (0 for no rows) or 'none' (no rows' losses)")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)):
        raise TypeError(f"ignore_index must be an int (the label of the rows to leave out, e.g. -100) or None, "
                        f"got {ignore_index!r}")
    ignore_index = None if ignore_index is None else int(ignore_index)
    if ignore_index is not None and not -2**63 <= ignore_index < 2**63:  # the kernels compare it as an int64
        raise ValueError(f"ignore_index={ignore_index} is not an int64 label and matches no row: pass the label of the "
                         "rows to leave out (e.g. -100, PyTorch's), or None")


def _class_weights(logits, weight):
    """``weight`` as a contiguous (C,) array of the compute dtype on the logits' device."""
    c = logits.shape[1]
    check_array("weight", weight)
    xp = get_array_module(logits, weight, names=("logits", "weight"))  # a TypeError when one is on the GPU, one not
    if tuple(weight.shape) != (c,) or weight.dtype not in DTYPES:  # (bfloat16's kind is 'V', not 'f')
        raise ValueError(f"weight must be a float array of one weight per class, shape ({c},), got shape "
                         f"{tuple(weight.shape)} dtype {weight.dtype}")
    return xp.ascontiguousarray(upcast(weight), dtype=compute_dtype(logits.dtype))


def weight_stats(labels, weight, ignore_index, dtype):
    """What the weighted or ignoring mean needs, as a (2,) array of ``dtype`` on the labels'
    device: the class weights' sum (0 without weights) and the mean's divisor (the kept rows'
    weights summed; their count without weights). None when there are neither weights nor an
    ignored label. One computation for the kernels and the reference, so both divide by the
    same bits."""
    if weight is None and ignore_index is None:
        return None
    xp = get_array_module(labels)
    kept = labels != ignore_index if ignore_index is not None else xp.ones(labels.shape, bool)
    if weight is None:
        return xp.stack([xp.zeros((), dtype), kept.sum().astype(dtype)])
    c = weight.shape[0]
    idx = xp.where(kept & (labels >= 0) & (labels < c), labels, 0)
    return xp.stack([weight.sum(), xp.where(kept, weight[idx], 0).sum()]).astype(dtype, copy=False)


def _grad_scale(logits, grad_scale):
    """``grad_scale`` as a 0-d array of the compute dtype on the logits' device."""
    acc = compute_dtype(logits.dtype)
    if isinstance(grad_scale, numbers.Real) and not isinstance(grad_scale, bool):
        return backend.to_device(np.asarray(grad_scale, acc), backend.device_of(logits))
    check_array("grad_scale", grad_scale)
    get_array_module(logits, grad_scale, names=("logits", "grad_scale"))  # a TypeError: one on the GPU, one not
    if grad_scale.ndim != 0 or grad_scale.dtype.kind != "f":
        raise TypeError(f"grad_scale must be a number or a 0-d float array, got shape {tuple(grad_scale.shape)} "
                        f"dtype {grad_scale.dtype}; e.g. LossScaler.factor(logits)")
    return grad_scale if grad_scale.dtype == acc else grad_scale.astype(acc)


_FEW = 64  # labels read as a list (a gradient check's handful); more are reduced by NumPy


def check_labels(labels, classes: int, ignore_index: int | None = None):
    """Raise ValueError unless every label is a class index in 0..classes-1 (or ``ignore_index``).
    On a GPU this reads two numbers back (a sync): :func:`softmax_cross_entropy` skips it there
    and yields NaN."""
    if ignore_index is not None:
        labels = labels[labels != ignore_index]
    if labels.size:
        if labels.size <= _FEW and type(labels) is np.ndarray:  # a few: as Python ints, without two reductions
            values = labels.tolist()
            lo, hi = min(values), max(values)
        else:
            lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= classes:
            bad = lo if lo < 0 else hi
            ignoring = "" if ignore_index is None else f" or the ignored label {ignore_index}"
            raise ValueError(f"labels must be class indices in 0..{classes - 1}{ignoring} (logits have C={classes} "
                             f"columns), found {bad}; check the labels or the number of classes")


def _all_classes(labels, classes):
    """Whether every one of these host labels is a class index in 0..classes-1."""
    if not labels.size:
        return True
    if labels.size <= _FEW:
        values = labels.tolist()
        return min(values) >= 0 and max(values) < classes
    return np.minimum.reduce(labels) >= 0 and np.maximum.reduce(labels) < classes


def _divide(a, b):
    """``a / b`` for a mean's divisor that is 0 where every row is ignored (or weighs 0): the mean is
    NaN and its gradient's rows are masked, as in PyTorch, without NumPy's divide warnings."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return a / b


def _softmax_cross_entropy_reference(logits, labels, eps, count_correct=False, grad_scale=None, reduction="mean",
                                     weight=None, ignore_index=None):
    dtype, logits = logits.dtype, upcast(logits)
    xp = get_array_module(logits, labels)
    n, c = logits.shape
    dt = logits.dtype.type
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = xp.exp(shifted)
    sums = exp.sum(axis=1, keepdims=True)
    log_probs = shifted - xp.log(sums)
    probs = exp / sums
    # Every row kept and every label a class (host labels: read without a sync): no masks, which would
    # select every row (a gradient check calls this on a few rows, thousands of times).
    plain = ignore_index is None and type(labels) is np.ndarray and _all_classes(labels, c)
    if plain:
        ignored = valid = None
        idx = labels.astype(np.int64, copy=False)
    else:
        ignored = labels == ignore_index if ignore_index is not None else xp.zeros(labels.shape, bool)
        valid = ignored | ((labels >= 0) & (labels < c))
        idx = xp.where(valid & ~ignored, labels, 0).astype(xp.int64, copy=False)
    rows = xp.arange(n)
    picked = log_probs[rows, idx]  # (each row's label's column: take_along_axis's values, without its index arrays)
    stats = weight_stats(labels, weight, ignore_index, logits.dtype)
    keep, eps_c = dt(1.0 - eps), dt(eps / c)
    if weight is None:
        per_row = -keep * picked
    else:
        w_label = weight[idx]
        per_row = -keep * (w_label * picked)
    if eps:  # the smoothing term, which only a smoothing reads
        smooth = log_probs.sum(axis=1) if weight is None else (log_probs * weight).sum(axis=1)
        per_row = per_row - eps_c * smooth
    if not plain:
        per_row = xp.where(ignored, dt(0), xp.where(valid, per_row, dt(np.nan)))
    divisor = dt(n) if stats is None else stats[1]
    # xp.asarray keeps a 0-d array (NumPy's sum would give a scalar); on CuPy it stays on the GPU.
    if reduction == "none":
        loss = per_row
    elif reduction == "sum":
        loss = xp.asarray(per_row.sum(), dtype=logits.dtype)
    else:  # (errstate only where the divisor can be 0: entering it costs a few microseconds a call)
        loss = xp.asarray(per_row.sum() / divisor if stats is None else _divide(per_row.sum(), divisor),
                          dtype=logits.dtype)

    if weight is None:
        dlogits = probs
        if eps:
            dlogits = dlogits - eps_c
        dlogits[rows, idx] -= keep
    else:  # p (1 - eps) w_label + p (eps / C) W - (eps / C) w_j - [j == label] (1 - eps) w_label
        keep_w = keep * w_label
        coef = keep_w + eps_c * stats[0] if eps else keep_w
        dlogits = probs * coef[:, None]
        if eps:
            dlogits = dlogits - eps_c * weight
        dlogits[rows, idx] -= keep_w
    if reduction == "mean":
        dlogits *= dt(1.0 / n) if stats is None else _divide(dt(1), stats[1])
    if grad_scale is not None:
        dlogits *= grad_scale
    if not plain:
        dlogits = xp.where(ignored[:, None], dt(0), xp.where(valid[:, None], dlogits, dt(np.nan)))
    if count_correct:
        hits = xp.argmax(logits, axis=1) == labels
        correct = xp.asarray((hits if plain else hits & ~ignored).sum(), dtype=np.int32)
        return loss, round_once(dlogits, dtype), correct
    return loss, round_once(dlogits, dtype)




from . import _launch_loss  # noqa: E402,F401  (registration)
