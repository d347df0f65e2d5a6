"""Evaluation: loss, accuracy, per-class accuracy and the confusion matrix, with test-time augmentation."""
from __future__ import annotations

import math

import numpy as np

from .. import amp, backend
from ..ops._checks import check_array
from ..optim import _matmul
from ._errors import GPUOutOfMemory, _check_batches, _is_oom, oom_message


TTA_LEVELS = (0, 1, 2)


def check_tta(tta) -> int:
    """The level of ``tta`` (True is 1, False 0); a ValueError naming the levels otherwise."""
    level = int(tta) if isinstance(tta, (bool, int, np.integer)) else None
    if level not in TTA_LEVELS:
        raise ValueError(f"tta={tta!r} must be a test-time augmentation level: 0 (none), 1 (mirror) or 2 "
                         "(mirror + 1-pixel translations)")
    return level


def tta_logits(model, x, level):
    """``model``'s logits for the batch ``x`` with test-time augmentation (airbench's levels):
    0 the image alone; 1 the mean of the image and its mirror; 2 half that, plus half the mean
    of the same pair translated one pixel up-left and one down-right (reflect padding), six
    views in all."""
    from .. import layout
    xp = backend.get_array_module(x)

    def mirror(a):
        return (model(a) + model(layout.like(a, xp.ascontiguousarray(a[..., ::-1])))) * 0.5

    if level == 0:
        return model(x)
    logits = mirror(x)
    if level == 1:
        return logits
    h, w = x.shape[2], x.shape[3]
    padded = xp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    shifted = [layout.like(x, xp.ascontiguousarray(padded[:, :, dy:dy + h, dx:dx + w])) for dy, dx in ((0, 0), (2, 2))]
    return logits * 0.5 + (mirror(shifted[0]) + mirror(shifted[1])) * 0.25


def evaluate(model, loader, tta=0, precision="fp32"):
    """Evaluate ``model`` on ``loader`` (see :meth:`Trainer.evaluate`), computing in ``precision``
    (a model trained in one precision evaluates in any other: its parameters are float32; 'auto':
    the one the device of its parameters computes best, as in :class:`Trainer`)."""
    level = check_tta(tta)
    if precision == "auto":
        params = model.parameters()
        precision = amp.resolve_precision("auto", backend.device_of(params[0].data) if params else None)
    _check_batches(loader, "loader")
    with amp.model_lock(model):  # it switches the shared model to eval mode and back
        with backend.parameters_device_context(model.parameters()):  # (as Trainer.fit)
            return _evaluate(model, loader, level, precision)


def _evaluate(model, loader, level, precision):
    from ..layers import switch_to_eval
    from ..ops import softmax_cross_entropy
    restore = switch_to_eval(model)  # afterwards every layer's mode and training cache as they were
    loss_sum = conf = None
    classes = n = 0
    try:
        for x, y in loader:
            check_array("x", x)  # (before its shape is read)
            if x.shape[0] == 0 and len(y) == 0:  # an empty batch (the last of a filtered data set) counts nothing
                continue
            xp = backend.get_array_module(x, y)
            with amp.autocast(model, precision, backward=False) as dt:
                x = amp.cast_input(x, dt)
                logits = tta_logits(model, x, level)
            logits = logits.astype(np.float32, copy=False)  # scores compared in float32
            loss, _ = softmax_cross_entropy(logits, y)
            if conf is None:
                classes = int(logits.shape[1])
                loss_sum = xp.zeros((), dtype=np.float64)
                conf = xp.zeros((classes, classes), dtype=np.int64)
                class_ids = xp.arange(classes)
            loss_sum += loss * x.shape[0]
            # Confusion counts as one-hot(true)^T @ one-hot(predicted): no bincount, which on CuPy
            # reads the largest index back to size its output (a sync per batch). Exact: a batch's
            # counts are integers below 2^24. A label outside [0, classes) is counted nowhere. The
            # product is gpuconv's GEMM on a kernel device: CuPy's matmul is cuBLAS, which the
            # cuda12/cuda13 installs (CuPy and NVRTC alone) lack.
            true = (y[:, None] == class_ids).astype(np.float32)
            pred = (xp.argmax(logits, axis=1)[:, None] == class_ids).astype(np.float32)
            conf += _matmul(true.T, pred).astype(np.int64)
            n += int(x.shape[0])
    except Exception as exc:
        if _is_oom(exc):
            raise GPUOutOfMemory(oom_message(exc, getattr(loader, "batch_size", None), where="evaluation")) from exc
        raise
    finally:
        restore()
    if conf is None:
        raise ValueError("evaluate(): the loader yielded no images (no batches, or only empty ones); give it at least "
                         "one image")
    xp = backend.get_array_module(conf)
    host = backend.asnumpy(xp.concatenate([loss_sum.reshape(1), conf.reshape(-1).astype(np.float64)]))  # one readback
    confusion = host[1:].round().astype(np.int64).reshape(classes, classes)
    support = confusion.sum(axis=1)
    per_class = [float(confusion[i, i] / support[i]) if support[i] else math.nan for i in range(classes)]
    return {"loss": float(host[0] / n), "accuracy": float(np.trace(confusion) / n), "per_class": per_class,
            "confusion": confusion, "n": n}


class _Evaluation:
    """Evaluation, with test-time augmentation. A part of :class:`Trainer`."""

    def evaluate(self, loader, tta=0, precision=None):
        """Loss, accuracy, per-class accuracy and confusion matrix (rows: true class, cols: predicted).

        Sums stay on the device; one readback at the end. ``tta``: test-time augmentation level
        (:func:`tta_logits`; True is level 1). In the trainer's precision unless ``precision`` says."""
        return evaluate(self.model, loader, tta=tta, precision=precision or self.precision)
