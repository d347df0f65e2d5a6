"""An exponential moving average of a model's weights that the model is pulled back onto
(airbench's "lookahead"): every few steps ``ema = ema + (1 - decay) * (w - ema)``, then
``w = ema``, for every parameter and every floating-point buffer (batch norm's running
statistics too, as the recipe does with its whole state dict).

With ``decay = 1`` the model returns to the average; with ``decay = 0`` the average jumps to
the model. :func:`airbench_decay` is the recipe's schedule: ``0.95**5 * (step / total)**3``,
near 0 early (the average follows the model) and up to ``0.95**5`` (0.77) at the end, where a
last ``update(decay=1.0)`` leaves the model on the average.

Every update runs in place on the arrays' own device; the host reads nothing back. On a kernel
target ('cuda', 'sim') contiguous float32/float64 arrays are updated by one kernel launch per
LOOKAHEAD_TENSORS of them (``lookahead_update`` in kernels/optim.cu; the bits of the array form,
which is five operations an array).
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .backend import array_device_context, copy_like, get_array_module, host_copy, kernel_target

LOOKAHEAD_TENSORS = kernels.defines("optim.cu")["LOOKAHEAD_TENSORS"]  # arrays per launch

__all__ = ["Lookahead", "airbench_decay"]


def airbench_decay(step: int, total_steps: int) -> float:
    """The lookahead decay at ``step`` of ``total_steps``: ``0.95**5 * (step / total_steps)**3``."""
    if total_steps < 1 or not 0 <= step <= total_steps:
        raise ValueError(f"airbench_decay: step must be in [0, total_steps={total_steps}] with total_steps >= 1, "
                         f"got step={step}")
    return 0.95 ** 5 * (step / total_steps) ** 3


class Lookahead:
    """The weight average of ``model`` (a :class:`gpuconv.layers.Layer`), started at its current
    state. ``update(decay)`` every ``every`` steps (the caller counts steps)."""

    def __init__(self, model, every: int = 5):
        if not all(callable(getattr(model, m, None)) for m in ("named_parameters", "named_buffers")):
            raise TypeError(f"Lookahead: model must be a gpuconv Layer (the average covers its named parameters and "
                            f"floating-point buffers, batch norm's running statistics too), got "
                            f"{'list' if isinstance(model, list) else type(model).__name__}: "
                            f"pass the model itself, Lookahead(net), not net.parameters()")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Lookahead: every must be an integer >= 1 (steps between updates), got {every!r}")
        self.model = model
        self.every = every
        self.ema = {name: _copy(a) for name, a in self._arrays()}

    def _arrays(self):
        """(name, array) of the model's parameters and floating-point buffers, looked up afresh:
        a layer may have replaced a buffer since the last call."""
        out = [(name, p.data) for name, p in self.model.named_parameters()]
        out += [(name, b) for name, b in self.model.named_buffers() if np.dtype(b.dtype).kind == "f"]
        return out

    def update(self, decay: float):
        """``ema += (1 - decay) * (w - ema)``; ``w = ema`` (in place, on the arrays' device)."""
        if not 0.0 <= float(decay) <= 1.0:
            raise ValueError(f"Lookahead.update: decay must be in [0, 1], got {decay!r}")
        rate = 1.0 - float(decay)
        fused = {}  # (device, dtype) -> [(w, ema)]: the kernel's share
        for name, w in self._arrays():
            ema = self.ema.get(name)
            if ema is None or ema.shape != w.shape:
                raise ValueError(f"Lookahead.update: the model's {name!r} is not the one the average was "
                                 "built from; build the Lookahead after the model's final structure")
            if _fusable(w, ema):
                fused.setdefault((kernels.array_device([w]), w.dtype), []).append((w, ema))
                continue
            with array_device_context((w,)):  # (CuPy makes the temporaries on its current device)
                if rate:
                    ema += (w - ema).astype(ema.dtype) * ema.dtype.type(rate)
                get_array_module(w).copyto(w, ema)
        for (device, _), pairs in fused.items():
            for k in range(0, len(pairs), LOOKAHEAD_TENSORS):
                _launch_update(pairs[k:k + LOOKAHEAD_TENSORS], rate, device)

    def __repr__(self):
        return f"Lookahead({type(self.model).__name__}, {len(self.ema)} arrays, every={self.every})"

    def state_dict(self):
        """The average as host NumPy arrays, under ``ema.<name>``."""
        return {f"ema.{name}": host_copy(a) for name, a in self.ema.items()}

    def load_state_dict(self, d):
        for name, a in self.ema.items():
            key = f"ema.{name}"
            if key not in d:
                raise ValueError(f"Lookahead.load_state_dict: {key!r} is missing; the state dict is of another model")
            if tuple(np.shape(d[key])) != tuple(a.shape):
                raise ValueError(f"Lookahead.load_state_dict: {key!r} has shape {tuple(np.shape(d[key]))}, "
                                 f"the model {tuple(a.shape)}")
            self.ema[name] = copy_like(d[key], a)


def _copy(a):
    """A copy of ``a`` where ``a`` lives: CuPy's ``copy()`` makes it on the current device, so the
    average of a model on cuda:1 built while cuda:0 was current landed on GPU 0, and every update
    was refused as arrays on two GPUs."""
    with array_device_context((a,)):
        return a.copy()


def _fusable(w, ema) -> bool:
    """Whether ``lookahead_update`` takes the pair: on a kernel target, float32 or float64, one
    dtype, both contiguous."""
    return (w.dtype in (np.float32, np.float64) and ema.dtype == w.dtype and w.flags.c_contiguous
            and ema.flags.c_contiguous and kernel_target(w, ema) is not None)


def _launch_update(pairs, rate, device):
    """One launch of lookahead_update over up to LOOKAHEAD_TENSORS ``(w, ema)`` pairs of one dtype
    and device (:func:`gpuconv.kernels.launch_slots`)."""
    w0, e0 = pairs[0]
    kernels.launch_slots("optim", "lookahead_update", w0.dtype, kernel_target(w0),
                         [(w, e, np.int64(w.size)) for w, e in pairs], [w.size for w, _ in pairs],
                         LOOKAHEAD_TENSORS, (w0, e0, np.int64(0)), (np.float64(rate),), device=device)
