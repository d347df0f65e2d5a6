"""SGD (momentum, Nesterov, weight decay) and its fused update: on a kernel target ('cuda',
'sim') one launch of kernels/optim.cu updates up to ``SGD_TENSORS`` parameters of a group with
the array form's bits, since eight elementwise launches per parameter were host time in steps
that a GPU runs faster than Python submits them."""
from __future__ import annotations

import numpy as np

from .. import backend, kernels
from ..backend import get_array_module, kernel_target
from ..layers import _only
from ..ops._checks import check_bool
from .optimizer import Optimizer, _nonneg, _torch_switches


class SGD(Optimizer):
    """Stochastic gradient descent, PyTorch's formulation and argument order (``dampening`` 0 only).

    ``g = grad + weight_decay * p``; with momentum ``b = momentum * b + g`` (``b = g`` on the
    first step), then ``g = g + momentum * b`` (Nesterov) or ``g = b``; ``p -= lr * g``."""

    _hyper = ("momentum", "nesterov", "weight_decay")
    _slots = ("momentum_buffer",)

    device_lrs = True

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None):
        _only("SGD", dampening=(dampening, 0))
        _torch_switches("SGD", maximize, differentiable)
        super().__init__(params, lr)
        self.momentum = _nonneg("momentum", momentum)
        self.weight_decay = _nonneg("weight_decay", weight_decay)
        self.nesterov = check_bool("nesterov", nesterov)
        self._finish_groups()

    def _check_group(self, gi):
        self._check_nesterov(gi)

    def _step(self, skip):
        if skip is not None or self._lrs is None:
            super()._step(skip)
            return
        # The fused update, several parameters of a group per launch (kernels/optim.cu); a
        # parameter the kernel does not take runs the array form.
        batches = {}
        hypers = {}  # per parameter group: hyper(i) is the group's for each of its parameters
        if not hasattr(self, "_groups"):
            self._finish_groups()
        targets = {}  # array type -> kernel target: a step's NumPy arrays all have the default device's
        for i, p, state in self._with_grads():
            h = hypers.get(self._group_of[i])
            if h is None:
                h = hypers[self._group_of[i]] = self.hyper(i)
            kind = type(p.data)
            target = targets.get(kind, False)
            if target is False:
                target = targets[kind] = kernel_target(p.data)
            item = _fused_sgd_operands(p, state, h, target)
            if item is None:
                self._update(p, state, h)
                continue
            lr = self._lr_of[id(p)]
            # (p.data's GPU, kernels.array_device's answer: a CuPy array on 'cuda'; None elsewhere)
            key = (id(lr), h["momentum"], h["weight_decay"], bool(h["nesterov"]), p.data.dtype,
                   backend.device_id(p.data) if target == "cuda" else None)
            batches.setdefault(key, (lr, h, []))[2].append(item)
        for lr, h, items in batches.values():
            # Launches of similar sizes: the grid is sized for a launch's largest parameter (a stable
            # sort by size, keyed without a Python call per parameter).
            sizes = [item[0].size for item in items]
            items[:] = [items[i] for i in sorted(range(len(items)), key=sizes.__getitem__)]
            for k in range(0, len(items), SGD_TENSORS):
                _launch_sgd(items[k:k + SGD_TENSORS], h, lr, targets[type(items[0][0])])

    def _update(self, p, state, h):
        lr = h["lr"]
        if self._lrs is not None:
            if _fused_sgd(p, state, h, self._lr_of[id(p)]):
                return
            # A parameter the kernel does not take (a non-contiguous one) reads the group's device lr
            # too, rounded to its type as a Python float would be: the same bits, and a replayed step
            # (gpuconv.graphs) follows the schedule instead of keeping the lr of its capture.
            lr = self._lr_of[id(p)].astype(p.data.dtype).reshape(())
        g = p.grad
        if h["weight_decay"]:
            g = g + h["weight_decay"] * p.data
        if h["momentum"]:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= h["momentum"]
                buf += g
            g = g + h["momentum"] * buf if h["nesterov"] else buf
        p.data -= lr * g


# Parameters per launch of the fused update (SGD_TENSORS in kernels/optim.cu).
SGD_TENSORS = kernels.defines("optim.cu")["SGD_TENSORS"]


def _fused_sgd(p, state, h, lr) -> bool:
    """SGD's update of ``p`` alone as one kernel (kernels/optim.cu, the array form's bits) where
    the kernel takes it (:func:`_fused_sgd_operands`); False (nothing done) otherwise, and the
    array form runs. ``lr``: the device array (one float64) holding the learning rate of ``p``'s
    group. :meth:`SGD.step` batches the parameters of a group instead."""
    item = _fused_sgd_operands(p, state, h)
    if item is None:
        return False
    _launch_sgd([item], h, lr)
    return True


def _fused_sgd_operands(p, state, h, target=False):
    """``(data, grad, buffer, first)`` for the fused update of ``p``: it lives on a kernel target
    ('cuda', 'sim'; ``target``, when the caller knows it) in float32 or float64 with a contiguous
    gradient of its dtype (None otherwise). With momentum, a first step allocates the buffer, which
    the kernel writes."""
    data, grad = p.data, p.grad
    if target is False:
        target = kernel_target(data)
    if target is None or data.dtype not in (np.float32, np.float64) or grad.dtype != data.dtype \
            or tuple(grad.shape) != tuple(data.shape) or not (data.flags.c_contiguous and grad.flags.c_contiguous):
        return None
    first, buf = 0, data  # the buffer argument is untouched without momentum
    if h["momentum"]:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf, first = get_array_module(data).empty_like(data), 1  # written by the first step
            state["momentum_buffer"] = buf
        elif buf.dtype != data.dtype or not buf.flags.c_contiguous:
            return None
    return data, grad, buf, first


def _launch_sgd(items, h, lr, target=None):
    """One launch of sgd_update over up to SGD_TENSORS ``(data, grad, buffer, first)`` of one group
    (the same ``lr`` array and hyperparameters ``h``), :func:`gpuconv.kernels.launch_slots`
    (``target``: the parameters', where the caller knows it)."""
    data0, grad0, buf0, _ = items[0]
    kernels.launch_slots("optim", "sgd_update", data0.dtype, target or kernel_target(data0),
                         [(d, g, b, np.int64(d.size), np.int32(first)) for d, g, b, first in items],
                         [d.size for d, _, _, _ in items], SGD_TENSORS,
                         (data0, grad0, buf0, np.int64(0), np.int32(0)),
                         (lr, np.float64(h["momentum"]), np.float64(h["weight_decay"]), np.int32(bool(h["nesterov"]))),
                         device=kernels.array_device([data0]))
