"""Adam and AdamW (decoupled weight decay), PyTorch's formulas. On a kernel target the step count
lives on the device, incremented in place, and the lr is the group's device value, so that a
step replayed as a CUDA graph (gpuconv.graphs) counts its steps and follows the schedule."""
from __future__ import annotations

import math
import numbers

from ..backend import get_array_module
from ..layers import _only
from .optimizer import Optimizer, _count_on_device, _nonneg, _torch_switches


class Adam(Optimizer):
    """Adam (Kingma & Ba) as in PyTorch, with L2 ``weight_decay`` added to the gradient.

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``,
    ``p -= lr / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps)``."""

    _hyper = ("beta1", "beta2", "eps", "weight_decay")
    _slots = ("exp_avg", "exp_avg_sq")
    _counts_steps = True
    _decoupled = False

    device_lrs = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=None):
        _only(type(self).__name__, amsgrad=(amsgrad, False))
        _torch_switches(type(self).__name__, maximize, differentiable)
        if decoupled_weight_decay is not None and bool(decoupled_weight_decay) != self._decoupled:
            raise ValueError(f"{type(self).__name__}(decoupled_weight_decay={decoupled_weight_decay!r}) is not "
                             f"supported: use {'AdamW' if decoupled_weight_decay else 'Adam'}, whose weight decay "
                             f"is {'decoupled' if decoupled_weight_decay else 'added to the gradient'}")
        super().__init__(params, lr)
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(isinstance(b, numbers.Real) and 0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = _nonneg("eps", eps)
        self.weight_decay = _nonneg("weight_decay", weight_decay)
        self._finish_groups()

    def _check_group(self, gi):
        group = self._groups[gi]
        for key in ("beta1", "beta2"):
            if group.get(key, getattr(self, key)) >= 1.0:
                raise ValueError(f"{type(self).__name__}: parameter group {gi}'s {key} must be in [0, 1), "
                                 f"got {group.get(key, getattr(self, key))!r}")

    @property
    def betas(self):
        return (self.beta1, self.beta2)

    def _update(self, p, state, h):
        xp = get_array_module(p.data)
        g = p.grad
        lr, beta1, beta2 = h["lr"], h["beta1"], h["beta2"]
        on_device = self._lrs is not None
        if on_device:
            # On 'cuda'/'sim' the lr is the group's device value (write_lrs) and the count lives on the
            # device, incremented in place, so that a replayed step (gpuconv.graphs) follows the
            # schedule and counts its steps instead of keeping the values of its capture. The per-step
            # values are float64 arrays of one element, rounded to the parameter's type as a Python
            # float would be: the host's bits (NumPy's pow is the host's; a GPU's double pow may
            # differ from it in the last bit, which the rounding to float32 almost always absorbs).
            lr = self._lr_of[id(p)]
        if h["weight_decay"]:
            if self._decoupled:
                p.data *= (1.0 - lr * h["weight_decay"]).astype(p.data.dtype).reshape(()) if on_device \
                    else 1.0 - lr * h["weight_decay"]
            else:
                g = g + h["weight_decay"] * p.data
        if "exp_avg" not in state:
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
            state.setdefault("step", 0)
        if on_device:
            _count_on_device(state, p.data)
        state["step"] += 1
        t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        m += (1.0 - beta1) * g
        v *= beta2
        v += ((1.0 - beta2) * g) * g  # as PyTorch's addcmul: g * g alone overflows float32 from |g| = 1.8e19
        if isinstance(t, int):
            root2, step_size = math.sqrt(1.0 - beta2 ** t), lr / (1.0 - beta1 ** t)
        else:  # a count on the device (also a skippable step's on the CPU): one-element arrays (NumPy
            # would make numbers of 0-d ones), 0-d once rounded (a 0-d parameter stays 0-d)
            t = t.reshape(1)
            root2 = xp.sqrt(1.0 - beta2 ** t).astype(p.data.dtype).reshape(())
            step_size = (lr / (1.0 - beta1 ** t)).astype(p.data.dtype).reshape(())
        denom = xp.sqrt(v)
        denom /= root2
        denom += h["eps"]
        p.data -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * weight_decay``
    before the Adam step, instead of adding ``weight_decay * p`` to the gradient."""

    _decoupled = True

    device_lrs = True  # (its decoupled decay reads the device lr as well)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, **switches):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **switches)
