"""Optimizers (SGD, Adam, AdamW) and per-step learning-rate schedules.

Updates follow PyTorch's formulas and run in place on the parameters' own device with the
array module of each parameter: the hyperparameters are Python floats, the learning rates on
'cuda' and 'sim' float64 device arrays written before the step (and Adam's step count a device
integer the step increments, so that a step replayed as a CUDA graph follows both), so a step
launches elementwise kernels and never reads a value back to the host. SGD on a
kernel target ('cuda', 'sim') runs its whole update as one kernel over up to 8 parameters of a
group (kernels/optim.cu), with the array form's bits: its eight elementwise launches per
parameter were host time in steps that a GPU runs faster than Python submits them.
Parameters whose ``.grad`` is None, and frozen ones (``requires_grad=False``), are skipped (as
in PyTorch).

Parameter groups, as in PyTorch: ``SGD([{"params": biases, "lr": 0.64, "weight_decay": 0},
{"params": weights}], lr=0.01, momentum=0.9)``; a group's keys override the optimizer's
hyperparameters for its parameters. A group's ``lr`` follows ``optimizer.lr`` (which schedules
set) in proportion: it is the group's lr while ``optimizer.lr`` is the lr given at construction.
``optimizer.param_groups`` shows the groups as PyTorch does, one dict-like :class:`ParamGroup` each,
with ``'params'`` and every hyperparameter in effect (``group['lr']`` is the lr the next step
takes). Writing one sets it for that group: ``for g in opt.param_groups: g['lr'] *= 0.1`` decays
every group's lr, and a schedule then scales the new value (where a PyTorch scheduler would
overwrite it at its next step). Refused, with the way out: an lr written while the optimizer's lr
is 0 (nothing to scale it by), the lr of a group on a schedule of its own, and any other value
of a step captured as a CUDA graph. ``optimizer.add_param_group({'params': [...], ...})`` adds a
group (its lr the one its next step takes, following ``optimizer.lr`` in proportion from there;
refused while a captured step holds the optimizer). ``optimizer.lr = x`` sets the whole optimizer's lr, the groups'
following in proportion, and :meth:`Optimizer.hyper` gives a parameter's values in effect.

``state_dict()`` returns a flat dict of host NumPy arrays and Python scalars (it fits
``np.savez`` and loads with ``allow_pickle=False``); ``load_state_dict`` puts the state back
on each parameter's device, so saving and restoring in the middle of training continues
bit for bit. Per-parameter keys are ``state.<index>.<name>`` with the parameter's position
in the list given to the optimizer.

Schedules step once per iteration (after ``optimizer.step()``), set ``optimizer.lr`` from a
closed form of ``last_step`` and save/restore that position. Those PyTorch has are also in
``gpuconv.optim.lr_scheduler``, as in ``torch.optim.lr_scheduler``.

The package, one concept a module: :mod:`.optimizer` (the :class:`Optimizer` base: groups, lr,
step, state dict), :mod:`.param_groups` (the PyTorch-style views of groups and states),
:mod:`.sgd`, :mod:`.adam` (Adam, AdamW), :mod:`.muon` (Muon, :func:`newton_schulz`),
:mod:`.chain` (:class:`Chain`), :mod:`.schedules` (every schedule) and :mod:`.lr_scheduler`
(PyTorch's names for the schedules it has).
"""
from __future__ import annotations

from . import lr_scheduler
from .adam import Adam, AdamW
from .chain import Chain
from .muon import Muon, newton_schulz
from .optimizer import Optimizer, replays_schedule
from .param_groups import ParamGroup, ParamStates
from .schedules import (CosineAnnealingLR, CosineLR, LambdaLR, LRSchedule, MultiStepLR, OneCycleLR, StepLR,
                        TriangularLR)
from .sgd import SGD

# Names beyond __all__ that other modules take from gpuconv.optim (gpuconv.amp's state dicts,
# gpuconv.trainer's products, the constants), kept here so that an import names the package, not its layout.
from .muon import NS_COEFFS, _matmul  # noqa: E402,F401
from .optimizer import _check_saved_by, _scalar  # noqa: E402,F401
from .sgd import SGD_TENSORS  # noqa: E402,F401

__all__ = ["Optimizer", "ParamGroup", "ParamStates", "SGD", "Adam", "AdamW", "Muon", "Chain", "newton_schulz", "replays_schedule", "LRSchedule", "StepLR", "MultiStepLR", "CosineAnnealingLR", "LambdaLR", "CosineLR", "OneCycleLR", "TriangularLR", "lr_scheduler"]
