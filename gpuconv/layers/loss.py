"""``CrossEntropyLoss``: PyTorch's over logits and integer labels (label smoothing, class
weights as a buffer, ``ignore_index``, the three reductions), with its explicit backward."""
from __future__ import annotations

import numpy as np

from .. import ops
from ..backend import get_array_module
from ..ops._checks import check_array
from ..ops._checks import only_defaults as _only
from ..ops.scale import check_factor
from ..precision import DTYPES, round_once, upcast
from .module import Layer


class CrossEntropyLoss(Layer):
    """PyTorch's ``nn.CrossEntropyLoss`` over logits (N, C) and integer class labels (N,): the
    batch mean of softmax cross-entropy, ``label_smoothing`` as PyTorch defines it
    (:func:`gpuconv.ops.softmax_cross_entropy`). The loss is a 0-d float32 array (float64 for
    float64 logits) on the logits' device: reading it (``float(loss)``) is the only host trip.

    The backward is explicit, as every layer's: ``loss = criterion(logits, labels)``, then
    ``net.backward(criterion.backward())``; ``backward(g)`` scales the gradient by a Python number
    ``g`` (a scaled loss). ``reduction='sum'`` adds the rows' losses; ``'none'`` returns them, (N,),
    and ``backward(dy)`` takes their upstream gradient, an (N,) array (None: ones). ``weight``, a
    (C,) float array of class weights on the logits' device (a buffer: ``to(device)`` moves it,
    ``state_dict()`` holds it), and ``ignore_index`` (default -100,
    PyTorch's: rows with that label add nothing and leave the mean's divisor) as PyTorch defines
    them."""

    _registers_attributes = False

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0):
        super().__init__()
        _only("CrossEntropyLoss", size_average=(size_average, None), reduce=(reduce, None))
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"CrossEntropyLoss: ignore_index must be an int (PyTorch's default -100), got "
                            f"{ignore_index!r}")
        if weight is not None:
            check_array("weight", weight)
            if weight.ndim != 1 or weight.dtype not in DTYPES:  # (bfloat16's kind is 'V', not 'f')
                raise ValueError(f"CrossEntropyLoss: weight must be a 1-D float array of one weight per class, got "
                                 f"shape {tuple(weight.shape)} dtype {weight.dtype}")
        self.weight, self.ignore_index = weight, int(ignore_index)
        # a buffer, as PyTorch's: to(device) moves it with the logits, state_dict() holds it
        self._buffer_names = ("weight",) if weight is not None else ()
        if reduction not in ops.loss.REDUCTIONS:
            raise ValueError(f"CrossEntropyLoss: reduction must be one of {ops.loss.REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float, np.floating, np.integer)) \
                or not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, input, target):
        loss, dlogits = ops.softmax_cross_entropy(input, target, label_smoothing=self.label_smoothing,
                                                  reduction=self.reduction, weight=self.weight,
                                                  ignore_index=self.ignore_index)
        self._keep(dlogits)
        return loss

    def backward(self, dy=None, need_dx=True):
        """The logits' gradient, ``dy`` times that of the last forward's loss (``dy`` None: 1); with
        ``reduction='none'``, row i times ``dy[i]``."""
        dlogits = self._take_cache()
        if dy is None:
            return dlogits
        if self.reduction != "none":
            return ops.scale_forward(dlogits, check_factor(dy, "CrossEntropyLoss.backward(dy)"))[0]
        check_array("dy", dy)
        get_array_module(dlogits, dy)  # a TypeError when one is on the GPU and the other is not
        if tuple(dy.shape) != dlogits.shape[:1]:
            raise ValueError(f"CrossEntropyLoss(reduction='none').backward(dy): dy must hold one value per row, shape "
                             f"{dlogits.shape[:1]}, got {tuple(dy.shape)}")
        d = upcast(dlogits)  # each row times its dy in the compute dtype, rounded once
        return round_once(d * upcast(dy)[:, None].astype(d.dtype, copy=False), dlogits.dtype)

    def extra_repr(self):
        parts = [f"label_smoothing={self.label_smoothing:g}"] if self.label_smoothing else []
        parts += [f"reduction={self.reduction!r}"] if self.reduction != "mean" else []
        parts += [f"weight=({self.weight.shape[0]},)"] if self.weight is not None else []
        parts += [f"ignore_index={self.ignore_index}"] if self.ignore_index != -100 else []
        return ", ".join(parts)
