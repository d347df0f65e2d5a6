"""Learning-rate schedules: ``lr_at(step)`` is a closed form of the step, ``step()`` (once per
iteration, after ``optimizer.step()``) sets ``optimizer.lr`` from it, and a state dict holds the
position. PyTorch's (StepLR, MultiStepLR, CosineAnnealingLR, LambdaLR, OneCycleLR) under its
names and arguments, gpuconv's own (CosineLR, TriangularLR) beside them."""
from __future__ import annotations

import bisect
import math
import numbers

import numpy as np

from ..layers import _only
from .optimizer import Optimizer, _check_saved_by, _nonneg, _scalar


class LRSchedule:
    """Base class: ``lr_at(step)`` is the closed form; ``step()`` advances ``last_step`` and sets
    ``optimizer.lr``. Construction sets the step-0 value, as PyTorch's schedulers do."""

    _hyper: tuple = ()

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: optimizer must be a gpuconv.optim optimizer, "
                            f"got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_step = 0
        self._own = []  # (optimizer, group index, factor): groups on schedules of their own
        optimizer.lr = self.lr_at(0)

    def lr_at(self, step):
        raise NotImplementedError

    def own_schedule(self, params, factor):
        """The parameter group made of exactly ``params`` takes ``factor(step)`` times its initial
        lr at each step instead of this schedule's lr (airbench94_muon's whitening bias: a linear
        decay to 0 over its own epochs while the rest decay over the run). ``step`` is this
        schedule's count, so a resumed run (which calls this again after building the schedule)
        continues it; the factor itself is code, not state."""
        opt, gi = self.optimizer.find_group(params)
        self._own.append((opt, gi, factor))
        self._set_own()

    def _set_own(self):
        for opt, gi, factor in self._own:
            opt.set_group_lr(gi, opt.group_initial_lr(gi) * float(factor(self.last_step)))

    def step(self):
        self.last_step += 1
        self.optimizer.lr = self.lr_at(self.last_step)
        self._set_own()

    def get_last_lr(self):
        """The lr each parameter group steps with now, a list in the groups' order, as PyTorch's
        ``get_last_lr()`` (``optimizer.lr``, the schedule's own value, is the first group's unless
        that group sets an lr of its own)."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def __repr__(self):
        hyper = "".join(f"{n}={getattr(self, n)!r}, " for n in self._hyper)
        return f"{type(self).__name__}({hyper}last_step={self.last_step}, lr={self.optimizer.lr:g})"

    def state_dict(self):
        out = {"schedule": type(self).__name__, "last_step": self.last_step, "base_lr": self.base_lr}
        out.update({n: getattr(self, n) for n in self._hyper})
        return out

    def load_state_dict(self, d):
        _check_saved_by(self, d, "schedule")
        before = {n: self.__dict__[n] for n in (*self._hyper, "base_lr", "last_step")}
        try:  # all or nothing: a saved state lr_at refuses leaves the schedule as it was
            for name in self._hyper:
                setattr(self, name, type(getattr(self, name))(_scalar(d[name])))
            self.base_lr = float(_scalar(d["base_lr"]))
            self.last_step = int(_scalar(d["last_step"]))
            lr = self.lr_at(self.last_step)
        except BaseException:
            self.__dict__.update(before)
            raise
        self.optimizer.lr = lr
        self._set_own()


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class StepLR(LRSchedule):
    """``lr = base_lr * gamma ** (step // step_size)``."""

    _hyper = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        _only("StepLR", last_epoch=(last_epoch, -1))
        self.step_size = _positive_int("step_size", step_size)
        self.gamma = _nonneg("gamma", gamma)
        super().__init__(optimizer)

    def lr_at(self, step):
        return self.base_lr * self.gamma ** (step // self.step_size)


class MultiStepLR(LRSchedule):
    """PyTorch's ``MultiStepLR``: ``lr = base_lr * gamma ** (the number of milestones <= step)``
    (a milestone given twice counts twice, as there), e.g. ``milestones=[100, 150]`` for the
    schedules of CIFAR ResNet papers (stepped once per epoch). A :class:`~gpuconv.trainer.Trainer`
    steps its scheduler after every batch, as it steps every schedule here: give it milestones in
    batches, ``[100 * len(loader), 150 * len(loader)]``."""

    _hyper = ("gamma",)

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        _only("MultiStepLR", last_epoch=(last_epoch, -1))
        self.milestones = _milestones(milestones)
        self.gamma = _nonneg("gamma", gamma)
        super().__init__(optimizer)

    def lr_at(self, step):
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, step)

    def __repr__(self):
        return super().__repr__().replace("(", f"(milestones={list(self.milestones)}, ", 1)

    def state_dict(self):
        out = super().state_dict()
        out["milestones"] = np.asarray(self.milestones, np.int64)  # (np.savez keeps it as it is)
        return out

    def load_state_dict(self, d):
        _check_saved_by(self, d, "schedule")
        before = self.milestones
        self.milestones = _milestones(np.asarray(d["milestones"]).reshape(-1).tolist())
        try:
            super().load_state_dict(d)
        except BaseException:
            self.milestones = before
            raise


def _milestones(milestones):
    if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
        raise TypeError(f"MultiStepLR: milestones must be a list of steps (ints >= 0), e.g. [100, 150], got "
                        f"{milestones!r}")
    out = list(milestones)
    for m in out:
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 0:
            raise ValueError(f"MultiStepLR: milestones must be steps, ints >= 0, got {m!r} in {out!r}")
    return tuple(sorted(int(m) for m in out))


class CosineAnnealingLR(LRSchedule):
    """PyTorch's ``CosineAnnealingLR``: ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * step /
    T_max)) / 2``, the closed form PyTorch's steps follow, rising again after ``T_max`` as there
    (:class:`CosineLR` holds ``min_lr`` instead, and warms up). ``T_max`` counts the schedule's
    steps: a :class:`~gpuconv.trainer.Trainer` steps it after every batch (``T_max = epochs *
    len(loader)``), a loop of one's own where it calls ``step()``."""

    _hyper = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        _only("CosineAnnealingLR", last_epoch=(last_epoch, -1))
        self.T_max = _positive_int("T_max", T_max)
        self.eta_min = _nonneg("eta_min", eta_min)
        super().__init__(optimizer)

    def lr_at(self, step):
        return self.eta_min + (self.base_lr - self.eta_min) * 0.5 * (1.0 + math.cos(math.pi * step / self.T_max))


class LambdaLR(LRSchedule):
    """PyTorch's ``LambdaLR``: ``lr = base_lr * lr_lambda(step)`` (a warm-up: ``lambda s: min(1, (s +
    1) / 500)``; a :class:`~gpuconv.trainer.Trainer` steps it after every batch, so its argument
    counts batches there). The function is code, not state: a state dict holds the step, and loads
    into a LambdaLR built with the same function, as PyTorch's does for a lambda."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        _only("LambdaLR", last_epoch=(last_epoch, -1))
        if isinstance(lr_lambda, (list, tuple)):
            raise TypeError("LambdaLR: one function per parameter group is not supported; give the schedule one "
                            "function, and a group a factor of its own with sched.own_schedule(params, factor)")
        if not callable(lr_lambda):
            raise TypeError(f"LambdaLR: lr_lambda must be a function of the step giving a factor of the lr, got "
                            f"{type(lr_lambda).__name__}")
        self.lr_lambda = lr_lambda
        super().__init__(optimizer)

    def lr_at(self, step):
        factor = self.lr_lambda(step)
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not math.isfinite(factor) \
                or factor < 0:
            raise ValueError(f"LambdaLR: lr_lambda({step}) gave {factor!r}; it must give a finite number >= 0 (a "
                             "Python float: the factor of the lr at that step)")
        return self.base_lr * float(factor)


class CosineLR(LRSchedule):
    """Linear warm-up, then cosine decay from ``base_lr`` to ``min_lr``.

    For ``step < warmup_steps``: ``lr = base_lr * (step + 1) / warmup_steps`` (the first update
    already moves; the last warm-up step reaches ``base_lr``). Then with
    ``t = min(1, (step - warmup_steps) / (total_steps - warmup_steps))``:
    ``lr = min_lr + (base_lr - min_lr) * (1 + cos(pi t)) / 2``; ``min_lr`` from ``total_steps`` on."""

    _hyper = ("total_steps", "min_lr", "warmup_steps")

    def __init__(self, optimizer, total_steps, min_lr=0.0, warmup_steps=0):
        self.total_steps = _positive_int("total_steps", total_steps)
        self.min_lr = _nonneg("min_lr", min_lr)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, np.integer)) \
                or not 0 <= warmup_steps < self.total_steps:
            raise ValueError(f"warmup_steps must be an integer in [0, total_steps={self.total_steps}), "
                             f"got {warmup_steps!r}")
        self.warmup_steps = int(warmup_steps)
        lr = getattr(optimizer, "lr", None)
        if isinstance(lr, numbers.Real) and self.min_lr > lr:  # the "decay" would climb to min_lr
            raise ValueError(f"min_lr={min_lr!r} is above the optimizer's lr {lr!r}: the cosine decays from the lr "
                             "down to min_lr; give a smaller min_lr (0 by default)")
        super().__init__(optimizer)

    def lr_at(self, step):
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        t = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


class OneCycleLR(LRSchedule):
    """The one-cycle policy of PyTorch's ``OneCycleLR`` (two phases, ``three_phase=False``).

    ``initial_lr = max_lr / div_factor`` rises to ``max_lr`` over the first
    ``pct_start * total_steps - 1`` steps, then falls to ``initial_lr / final_div_factor`` at
    step ``total_steps - 1``. ``anneal_strategy`` 'cos' (PyTorch's default) interpolates with
    ``end + (start - end) * (1 + cos(pi t)) / 2``, 'linear' with ``start + (end - start) t``.
    The optimizer's own lr is ignored. Unlike PyTorch, momentum is not cycled (as with
    ``cycle_momentum=False``), the step after the last (``total_steps``) keeps the final lr
    where PyTorch extrapolates, and parameter groups keep their lrs' ratios to the optimizer's
    (as every gpuconv schedule drives them; PyTorch sends each group to ``max_lr``). The length is
    ``total_steps``, or as in PyTorch ``epochs * steps_per_epoch``; the arguments are PyTorch's, in
    its order, and those of what gpuconv does not compute (``cycle_momentum=True``,
    ``three_phase=True``, ``last_epoch``) are refused by name. Stepping past ``total_steps`` is an
    error, as in PyTorch."""

    _hyper = ("max_lr", "total_steps", "pct_start", "div_factor", "final_div_factor", "anneal_strategy")

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None, pct_start=0.3,
                 anneal_strategy="cos", cycle_momentum=False, base_momentum=0.85, max_momentum=0.95, div_factor=25.0,
                 final_div_factor=1e4, three_phase=False, last_epoch=-1):
        # (base_momentum and max_momentum only matter with cycle_momentum=True, as in PyTorch)
        _only("OneCycleLR", cycle_momentum=(cycle_momentum, False), three_phase=(three_phase, False),
              last_epoch=(last_epoch, -1))
        self.max_lr = _nonneg("max_lr", max_lr)
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("OneCycleLR: give the length as total_steps, or as epochs and steps_per_epoch "
                                 "(total_steps = epochs * steps_per_epoch)")
            total_steps = _positive_int("epochs", epochs) * _positive_int("steps_per_epoch", steps_per_epoch)
        elif epochs is not None or steps_per_epoch is not None:
            raise ValueError(f"OneCycleLR: total_steps={total_steps!r} and epochs/steps_per_epoch both give the length; "
                             "pass one of the two forms")
        self.total_steps = _positive_int("total_steps", total_steps)
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"pct_start must be in (0, 1) (the fraction of steps spent rising), got {pct_start!r}")
        self.pct_start = float(pct_start)
        if not div_factor > 0 or not final_div_factor > 0:
            raise ValueError(f"div_factor and final_div_factor must be > 0, got {div_factor!r} and {final_div_factor!r}")
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = str(anneal_strategy)
        super().__init__(optimizer)

    def _anneal(self, start, end, t):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * t) + 1.0)
        return (end - start) * t + start

    def lr_at(self, step):
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR was stepped to step {step}, past total_steps={self.total_steps}: "
                             "set total_steps to epochs * steps_per_epoch of the run")
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        peak_step = self.pct_start * self.total_steps - 1.0
        if step <= peak_step:  # peak_step > 0 here unless pct_start * total_steps <= 1
            return self._anneal(initial, self.max_lr, step / peak_step if peak_step > 0 else 1.0)
        # t is clamped at 1: PyTorch extrapolates at step == total_steps (an lr no update uses),
        # which goes negative with 'linear'.
        t = min(1.0, (step - peak_step) / (self.total_steps - 1.0 - peak_step))
        return self._anneal(self.max_lr, final, t)


class TriangularLR(LRSchedule):
    """airbench's piecewise-linear schedule: ``lr = base_lr * f(step)`` with ``f`` rising linearly
    from ``start`` to ``peak`` over the first ``warmup_steps = int(warmup_fraction * total_steps)``
    steps, then falling linearly to ``end`` at ``total_steps`` (held there after)."""

    _hyper = ("total_steps", "warmup_fraction", "start", "peak", "end")

    def __init__(self, optimizer, total_steps, warmup_fraction=0.23, start=0.2, peak=1.0, end=0.07):
        self.total_steps = _positive_int("total_steps", total_steps)
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1) (the share of steps spent rising), got {warmup_fraction!r}")
        self.warmup_fraction = float(warmup_fraction)
        self.start, self.peak, self.end = (_nonneg(n, v) for n, v in (("start", start), ("peak", peak), ("end", end)))
        super().__init__(optimizer)

    def lr_at(self, step):
        warmup = int(self.total_steps * self.warmup_fraction)
        if step < warmup:
            frac = step / warmup
            return self.base_lr * (self.start * (1 - frac) + self.peak * frac)
        frac = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        return self.base_lr * (self.peak * (1 - frac) + self.end * frac)
