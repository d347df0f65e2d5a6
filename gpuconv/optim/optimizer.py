"""The optimizer base class: the parameter list and its groups, ``lr`` and the device learning
rates a step reads (``write_lrs``), the step itself (gradients, frozen parameters, a skipped
step), per-parameter state and the state dict; with the argument checks the optimizers and
schedules share and :func:`replays_schedule`. A subclass names its hyperparameters and slots and
writes one parameter's update."""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..backend import (array_device_context, copy_like, get_array_module, host_copy, kernel_target,
                       parameters_device_context)
from ..graphs import REPLAYED_WAY_OUT
from ..layers import Parameter, _only, zero_grads
from ..ops._checks import check_bool
from .param_groups import _Defaults, _GroupList, ParamGroup, ParamStates


def _nonneg(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_saved_by(obj, d, key):
    """A state dict loads only into the class that saved it (its name is stored under ``key``)."""
    if not isinstance(d, Mapping) or key not in d:
        torch_like = isinstance(d, Mapping) and {"state", "param_groups"} <= set(d)
        raise ValueError(f"{type(obj).__name__}.load_state_dict: this is not a gpuconv {key}'s state dict (it has no "
                         f"{key!r} entry)" + (": a PyTorch optimizer's (state, param_groups) holds its buffers by "
                                                "parameter id, which gpuconv cannot map; load the model's weights "
                                                "and start the optimizer afresh" if torch_like else
                                                f": pass what {type(obj).__name__}.state_dict() returned"))
    kind = str(_scalar(d[key]))
    if kind != type(obj).__name__:
        raise ValueError(f"{type(obj).__name__}.load_state_dict: the state dict was saved by {key} "
                         f"{kind!r}; build a {kind} to load it")


def _count_on_device(state, data):
    """``state['step']`` (a step count, 0 when absent) as a 0-d int64 array on ``data``'s device,
    where a step increments it in place: a Python int is made one by a fill (launched, no
    transfer) and stays one. Saved as an int (``state_dict``), loaded as one."""
    count = state.get("step", 0)
    if not hasattr(count, "shape"):
        with array_device_context((data,)):
            count = state["step"] = get_array_module(data).full((), int(count), np.int64)
    return count


def _scalar(value):
    # np.savez turns scalars into 0-d arrays; accept either.
    return np.asarray(value).reshape(-1)[0].item() if isinstance(value, np.ndarray) else value


def _torch_switches(name, maximize, differentiable):
    """PyTorch's optimizer switches: ``maximize`` and ``differentiable`` (what the update computes)
    at their defaults only; ``foreach``, ``fused`` and ``capturable`` (how PyTorch schedules the
    same arithmetic) are taken as given: gpuconv's step is one device-side pass, capturable in a
    CUDA graph, whatever they say."""
    _only(name, maximize=(maximize, False), differentiable=(differentiable, False))


def replays_schedule(optimizer) -> bool:
    """Whether a captured step of ``optimizer`` follows its schedule when replayed: its class (not
    a parent) declares ``device_lrs`` and it is true (SGD, Muon, Adam, AdamW, a Chain of them)."""
    return "device_lrs" in type(optimizer).__dict__ and bool(optimizer.device_lrs)


class Optimizer:
    """Base class: holds the parameter list, ``lr``, per-parameter state and the state dict logic.

    Subclasses name their hyperparameters in ``_hyper`` and their per-parameter arrays in
    ``_slots`` (plus an integer ``step`` count where the update needs it, ``_counts_steps``: a
    skippable step, and Adam's on a kernel target, keep it on the device; a state dict holds an int)."""

    _hyper: tuple = ()
    _slots: tuple = ()
    _counts_steps = False
    # Whether step() reads its groups' learning rates from the device (write_lrs) on a kernel
    # target, so that a replayed step (gpuconv.graphs) follows the schedule. A class says so
    # itself (replays_schedule): a subclass whose update reads other per-step host values does not
    # inherit it.
    device_lrs = False

    def __init__(self, params, lr):
        self._lrs = None  # the groups' learning rates on the device (write_lrs)
        self.lr_written_by_owner = False
        if isinstance(params, (Parameter, dict)) or not hasattr(params, "__iter__"):
            what = "a Parameter" if isinstance(params, Parameter) else f"a {type(params).__name__}"
            raise TypeError(f"{type(self).__name__}: params must be an iterable of Parameters or of group dicts, "
                            f"got {what}; pass model.parameters() (or [p] for a single parameter)")
        params, groups = self._split_groups(list(params))
        if not params:
            raise ValueError(f"{type(self).__name__}: the parameter list is empty; pass model.parameters()")
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{type(self).__name__}: params[{i}] is a {type(p).__name__}, not a "
                                "gpuconv Parameter; pass model.parameters()")
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{type(self).__name__}: a parameter appears twice in the list; each would be "
                             "updated twice per step")
        self.params = params
        self.lr = lr
        self.initial_lr = self.lr
        self.state = ParamStates(params, [dict() for _ in params])  # per parameter: slot name -> array, 'step' -> int
        self._group_specs = groups  # [(parameter count, {key: value})], checked in _finish_groups
        self._own_lr = {}  # group index -> the lr it takes instead of the schedule's (set_group_lr)

    def __setattr__(self, name, value):
        # A hyperparameter reaches the update by value, so a captured step (gpuconv.graphs) keeps
        # the one of its capture: changing it while the graph's owner holds the optimizer is refused,
        # as a parameter group's is (a replay would train on the old value, the simulator on the new).
        if name in type(self)._hyper and name in self.__dict__ and getattr(self, "lr_written_by_owner", False) \
                and self.__dict__[name] != value:
            raise RuntimeError(f"{type(self).__name__}: {name} cannot change while " + REPLAYED_WAY_OUT)
        if name in type(self)._hyper and "_groups" in self.__dict__:  # a write after construction: checked as it is
            before = self.__dict__[name]
            super().__setattr__(name, self._hyper_value(name, name, value))
            try:
                for gi in range(len(self._groups)):
                    self._check_group(gi)
            except ValueError:
                super().__setattr__(name, before)
                raise
            return
        super().__setattr__(name, value)

    def __getstate__(self):
        # A copy (copy.deepcopy, pickle) is held by no graph, and its first step makes its own device
        # learning rates (these are looked up by the parameters' ids, which a copy's are not).
        state = dict(self.__dict__)
        for name in ("_lr_views", "_lr_of", "_chain"):  # (a Chain links its members again, __setstate__)
            state.pop(name, None)
        state["_lrs"] = None
        if "lr_written_by_owner" in state:  # (a Chain's is its members')
            state["lr_written_by_owner"] = False
        return state

    def _split_groups(self, params):
        """A flat list of Parameters, or of group dicts: (the flat list, [(count, overrides)])."""
        if not params or not all(isinstance(g, dict) for g in params):
            if any(isinstance(g, dict) for g in params):
                raise TypeError(f"{type(self).__name__}: params mixes group dicts and Parameters; pass either a "
                                "list of Parameters or a list of {'params': [...], ...} dicts")
            return params, [(len(params), {})]
        flat, groups = [], []
        for gi, g in enumerate(params):
            if "params" not in g:
                raise ValueError(f"{type(self).__name__}: parameter group {gi} has no 'params' key; write "
                                 "{'params': [...], 'lr': ...}")
            ps = [g["params"]] if isinstance(g["params"], Parameter) else list(g["params"])  # (one, as PyTorch takes it)
            flat += ps
            groups.append((len(ps), {k: v for k, v in g.items() if k != "params"}))
        return flat, groups

    def _finish_groups(self):
        """Check each group's overrides against ``_hyper`` (called once the subclass set its own
        hyperparameters) and index parameters to their groups."""
        allowed = ("lr",) + self._hyper
        self._groups, self._group_of = [], []
        for gi, (count, given) in enumerate(self._group_specs):
            overrides = {}
            for key, value in given.items():
                if key == "betas" and "beta1" in self._hyper:  # PyTorch's spelling of Adam's pair
                    overrides.update(zip(("beta1", "beta2"), self._group_betas(gi, value)))
                    continue
                if key not in allowed:
                    raise ValueError(f"{type(self).__name__}: parameter group {gi} sets {key!r}; a group may set "
                                     f"{', '.join(allowed)}")
                overrides[key] = self._group_value(gi, key, value)
            if "lr" in overrides and self.initial_lr == 0:
                raise ValueError(f"{type(self).__name__}: parameter group {gi} sets lr while the optimizer's lr is "
                                 "0; group lrs follow the optimizer's lr in proportion, so pass lr > 0 (say the "
                                 "main group's lr)")
            self._groups.append(overrides)
            self._group_of += [gi] * count
        for gi in range(len(self._groups)):
            self._check_group(gi)

    def hyper(self, index):
        """The hyperparameters of parameter ``index``: its group's overrides over the optimizer's
        own, with a group lr scaled by ``lr / initial_lr`` (the schedule's factor)."""
        if not hasattr(self, "_groups"):
            self._finish_groups()
        gi = self._group_of[index]
        group = self._groups[gi]
        out = {name: group.get(name, getattr(self, name)) for name in self._hyper}
        out["lr"] = self._group_lr(gi)
        return out

    def _group_value(self, gi, key, value):
        """A group's ``key`` checked and of the optimizer's own value's type (bool, int or float)."""
        return self._hyper_value(f"parameter group {gi}'s {key}", key, value)

    def _hyper_value(self, label, key, value):
        """``value`` for hyperparameter ``key`` (named ``label`` in the error) checked and of the
        optimizer's own value's type (bool, int or float)."""
        kind = float if key == "lr" else type(getattr(self, key))
        if kind is bool:
            return check_bool(label, value)
        v = _nonneg(label, value)
        if kind is int and not v.is_integer():
            raise ValueError(f"{label} must be a whole number, got {value!r}")
        return int(v) if kind is int else v

    def _group_betas(self, gi, value):
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ValueError(f"parameter group {gi}'s betas must be a pair (beta1, beta2), got {value!r}")
        return [self._group_value(gi, key, v) for key, v in zip(("beta1", "beta2"), value)]

    def _group_lr(self, gi):
        """Group ``gi``'s lr in effect: pinned (set_group_lr), or its own scaled by the schedule's factor."""
        if gi in self._own_lr:
            return self._own_lr[gi]
        group = self._groups[gi]
        return group["lr"] * (self.lr / self.initial_lr) if "lr" in group else self.lr

    @property
    def param_groups(self):
        """The parameter groups as PyTorch shows them: a :class:`ParamGroup` (a dict-like view:
        ``'params'`` and every hyperparameter in effect, writable) per group."""
        if not hasattr(self, "_groups"):
            self._finish_groups()
        return _GroupList(ParamGroup(self, gi) for gi in range(len(self._groups)))

    def _set_group_value(self, gi, key, value):
        """``param_groups[gi][key] = value`` (checked as the constructor checks it)."""
        if self.lr_written_by_owner and key != "lr":
            raise RuntimeError(f"{type(self).__name__}: parameter group {gi}'s {key} cannot change while "
                               + REPLAYED_WAY_OUT)
        if key == "lr":
            lr = _nonneg(f"parameter group {gi}'s lr", value)
            if gi in self._own_lr:
                raise ValueError(f"{type(self).__name__}: parameter group {gi} follows a schedule of its own "
                                 "(LRSchedule.own_schedule), which sets its lr at every step; change that "
                                 "schedule's factor instead")
            if self.lr == 0 or self.initial_lr == 0:
                raise ValueError(f"{type(self).__name__}: the optimizer's lr is 0 now (a schedule's warm-up start or "
                                 f"its end), and a group's lr follows it in proportion: group {gi}'s lr cannot be "
                                 "set to another value; set optimizer.lr, or write the group's lr when the lr is "
                                 "above 0")
            self._groups[gi]["lr"] = lr * self.initial_lr / self.lr  # it takes ``lr`` now; a schedule scales it
            return
        group = self._groups[gi]
        if key == "betas" and "beta1" in self._hyper:
            new = dict(zip(("beta1", "beta2"), self._group_betas(gi, value)))
        elif key in self._hyper:
            new = {key: self._group_value(gi, key, value)}
        else:
            raise KeyError(f"{type(self).__name__}: a parameter group has {', '.join(ParamGroup(self, gi))}; "
                           f"not {key!r}")
        before = dict(group)
        group.update(new)
        try:
            self._check_group(gi)
        except ValueError:
            group.clear()
            group.update(before)
            raise

    def _check_group(self, gi):
        """A subclass's check of group ``gi``'s values taken together (ValueError)."""

    def _check_nesterov(self, gi):
        """Nesterov is a momentum method: a group with nesterov=True needs momentum > 0 (checked per
        group, with its overrides: a group's own momentum may make the optimizer's 0 fine)."""
        group = self._groups[gi]
        if group.get("nesterov", self.nesterov) and group.get("momentum", self.momentum) == 0:
            raise ValueError(f"{type(self).__name__}: parameter group {gi} has nesterov=True and momentum 0 "
                             "(Nesterov is a momentum method); give it momentum > 0, e.g. 0.9")

    def find_group(self, params):
        """(optimizer, group index) of the parameter group made of exactly ``params`` (a Chain
        looks in its members); a ValueError naming the groups otherwise."""
        if not hasattr(self, "_groups"):
            self._finish_groups()
        want = sorted(id(p) for p in params)
        for gi in range(len(self._groups)):
            if sorted(id(p) for p, g in zip(self.params, self._group_of) if g == gi) == want:
                return self, gi
        sizes = [self._group_of.count(gi) for gi in range(len(self._groups))]
        raise ValueError(f"{type(self).__name__}: no parameter group holds exactly those {len(want)} parameters "
                         f"(its groups hold {sizes}); give them a group of their own")

    def add_param_group(self, param_group):
        """Add a parameter group, as PyTorch's ``optimizer.add_param_group`` (say, a backbone thawed
        for fine-tuning): ``{'params': [...], 'lr': ..., <hyperparameter>: ...}``, checked as the
        constructor checks a group; a key it leaves out takes the optimizer's value. Its ``lr`` is
        the lr its next step takes (what ``param_groups[-1]['lr']`` then reads); from there it
        follows ``optimizer.lr`` in proportion, as every group does, so a schedule drives it with
        the others. Without an ``lr`` it steps with the optimizer's lr. A parameter already in a
        group (of this optimizer, or of another member of its :class:`Chain`) is refused by name.
        Its parameters' states start empty, and take the next indices of the state dict (a saved
        state loads into an optimizer given the same groups)."""
        name = type(self).__name__
        if self.lr_written_by_owner:
            raise RuntimeError(f"{name}.add_param_group: a group cannot be added while " + REPLAYED_WAY_OUT)
        if not isinstance(param_group, Mapping):
            raise TypeError(f"{name}.add_param_group: param_group must be a dict, {{'params': [...], 'lr': ...}}, "
                            f"got a {type(param_group).__name__}")
        if not hasattr(self, "_groups"):
            self._finish_groups()
        gi = len(self._groups)
        if "params" not in param_group:
            raise ValueError(f"{name}.add_param_group: the group has no 'params' key; write "
                             "{'params': [...], 'lr': ...}")
        given = param_group["params"]
        if isinstance(given, (set, frozenset)):  # (PyTorch's rule: a set's order changes between runs)
            raise TypeError(f"{name}.add_param_group: the group's 'params' is a set, whose order differs between "
                            "runs (and so would the state dict's indices); pass a list")
        params = [given] if isinstance(given, Parameter) else list(given)
        if not params:
            raise ValueError(f"{name}.add_param_group: the group's 'params' is empty; pass the parameters to "
                             "train, e.g. model.layer.parameters()")
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{name}.add_param_group: the group's params[{i}] is a {type(p).__name__}, not a "
                                "gpuconv Parameter; pass layer.parameters()")
            self._check_param(len(self.params) + i, p)
        taken = {id(p): (o, o._group_of[j]) for o in self._members_of_chain()
                 for j, p in enumerate(o.params) if hasattr(o, "_group_of")}
        for i, p in enumerate(params):
            if id(p) in taken:
                o, where = taken[id(p)]
                member = "" if o is self else f" of the chain's {type(o).__name__}"
                raise ValueError(f"{name}.add_param_group: parameter {getattr(p, 'name', '')!r} is already in "
                                 f"parameter group {where}{member}; a parameter belongs to one group (it would be "
                                 "updated twice per step): leave it out, or change that group's hyperparameters "
                                 "through optimizer.param_groups")
            if any(q is p for q in params[:i]):
                raise ValueError(f"{name}.add_param_group: parameter {getattr(p, 'name', '')!r} appears twice in "
                                 "the group; each would be updated twice per step")
        allowed = ("lr",) + self._hyper
        overrides = {}
        for key, value in param_group.items():
            if key == "params":
                continue
            if key == "betas" and "beta1" in self._hyper:
                overrides.update(zip(("beta1", "beta2"), self._group_betas(gi, value)))
            elif key in allowed:
                overrides[key] = _nonneg(f"parameter group {gi}'s lr", value) if key == "lr" \
                    else self._group_value(gi, key, value)
            else:
                raise ValueError(f"{name}.add_param_group: the group sets {key!r}; a group may set "
                                 f"{', '.join(allowed)}")
        if "lr" in overrides:  # the lr it takes now, kept as the lr it takes at initial_lr (as the others are)
            if self.lr == 0 or self.initial_lr == 0:
                raise ValueError(f"{name}.add_param_group: the optimizer's lr is 0 now, and a group's lr follows "
                                 "it in proportion, so a group's own lr has nothing to follow; leave 'lr' out (the "
                                 "group then steps with the optimizer's lr), or add the group when the lr is above 0")
            overrides["lr"] = overrides["lr"] * self.initial_lr / self.lr
        self._groups.append(overrides)
        try:
            self._check_group(gi)
        except ValueError:
            self._groups.pop()
            raise
        self._group_specs.append((len(params), {k: v for k, v in param_group.items() if k != "params"}))
        self.params.extend(params)
        self._group_of += [gi] * len(params)
        self.state.extend(dict() for _ in params)
        self._lrs = None  # the device learning rates are made again, a group longer, at the next step

    def _check_param(self, index, p):
        """A subclass's check of a parameter it is given (``index``: its position in ``params``)."""

    def _members_of_chain(self):
        """The optimizers whose parameters must stay apart from this one's: the members of the
        :class:`Chain` it is in, or itself alone."""
        chain = self.__dict__.get("_chain")
        chain = chain() if chain is not None else None
        return chain.optimizers if chain is not None else (self,)

    @property
    def defaults(self):
        """The optimizer's own values, as PyTorch's ``optimizer.defaults``: ``lr`` as given at
        construction (``initial_lr``; a schedule sets ``optimizer.lr``) and every hyperparameter
        (``betas`` too for Adam), those a group leaves out. Read-only: set ``optimizer.momentum``
        (say) to change one."""
        out = {"lr": self.initial_lr}
        if "beta1" in self._hyper:
            out["betas"] = (self.beta1, self.beta2)
        out.update((name, getattr(self, name)) for name in self._hyper)
        return _Defaults(out)

    def group_initial_lr(self, gi):
        """Group ``gi``'s lr before any schedule: its own ``lr`` or the optimizer's ``initial_lr``."""
        return self._groups[gi].get("lr", self.initial_lr)

    def set_group_lr(self, gi, lr):
        """Group ``gi`` steps with ``lr`` instead of following ``lr / initial_lr`` (None: follow it
        again). A schedule's :meth:`LRSchedule.own_schedule` sets it every step (and again when
        its state is loaded: the value itself is not in the optimizer's state dict)."""
        if not hasattr(self, "_groups"):
            self._finish_groups()
        if not 0 <= gi < len(self._groups):
            raise ValueError(f"{type(self).__name__}: parameter group {gi} does not exist (it has "
                             f"{len(self._groups)})")
        if lr is None:
            self._own_lr.pop(gi, None)
        else:
            self._own_lr[gi] = _nonneg(f"parameter group {gi}'s lr", lr)

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _nonneg("lr", value)
        self._lr_set()

    def _lr_set(self):
        """Called after every change of ``lr`` (Chain passes it on to its members)."""

    def write_lrs(self):
        """Put each parameter group's learning rate (:meth:`hyper`'s, a float64) into the device
        array the update reads (optimizers with ``device_lrs``, on 'cuda' and 'sim'): a fill per
        group, launched, no transfer. :meth:`step` does it itself unless ``lr_written_by_owner``
        (a captured step, whose owner calls this before each replay so that the replay follows
        the schedule)."""
        data = next((p.data for p in self.params), None)
        if not self.device_lrs or data is None:
            return
        if kernel_target(data) is None:  # the parameters moved to the CPU: the updates read hyper()'s
            self._lrs = None
            return
        if not hasattr(self, "_groups"):
            self._finish_groups()
        xp = get_array_module(data)
        if self._lrs is None or get_array_module(self._lrs) is not xp:
            self._lrs = xp.zeros(len(self._groups), np.float64)
            # built once, not per step: per parameter, the one-element view of its group's entry
            # that the update reads
            self._lr_views = [self._lrs[g:g + 1] for g in range(len(self._groups))]
            self._lr_of = {id(p): self._lr_views[g] for p, g in zip(self.params, self._group_of)}
        for g, view in enumerate(self._lr_views):
            view.fill(self._group_lr(g))

    def zero_grad(self, set_to_none=True):
        """As a model's :meth:`~gpuconv.layers.Layer.zero_grad`, over this optimizer's parameters."""
        zero_grads(self.params, set_to_none)

    def step(self, closure=None, *, skip=None):
        """Update every parameter that has a gradient; returns ``closure()``'s value, or None.

        ``closure``: as PyTorch's, a function that computes the loss and the gradients (forward,
        backward) and returns the loss; it runs first. ``skip``: a 0-d boolean array on the
        parameters' device (mixed precision's "a gradient overflowed", :class:`gpuconv.amp.LossScaler`).
        Where it is true the step leaves the parameters and their state exactly as they were (a
        slot the step created is zero, which is what its first real step expects), decided on the
        device: the host never reads it. A step count (Adam's ``t``) does not advance either, as
        with PyTorch's GradScaler, which skips the whole step: it moves to the device, a 0-d
        array the skipped step leaves as it was."""
        if closure is not None and not callable(closure):
            raise TypeError(f"step(closure): closure must be a function returning the loss, got {closure!r}; the "
                            "mixed-precision overflow flag goes as step(skip=...)")
        loss = None if closure is None else closure()
        self._check_writeable()
        # The parameters' GPU current (a no-op on the host): CuPy makes the state, the learning rates'
        # array and every temporary on its current device, and refuses another's arrays in a kernel.
        with parameters_device_context(self.params):
            if not self.lr_written_by_owner:  # the groups' lrs into the device array the update reads
                self.write_lrs()
            self._step(skip)
        return loss

    def _check_writeable(self):
        """Every parameter a step updates can be written in place (a read-only ``.data``, such as a
        memory-mapped or broadcast array, would fail midway, after the others were updated)."""
        for i, p in enumerate(self.params):  # (CuPy arrays are always writeable: one isinstance per step each)
            if isinstance(p.data, np.ndarray) and not p.data.flags.writeable and p.grad is not None and p.requires_grad:
                raise ValueError(f"{type(self).__name__}.step: parameter {i} ({getattr(p, 'name', '')!r}) is a read-only "
                                 "array, but the optimizer updates parameters in place: give it a writeable copy "
                                 "(p.data = p.data.copy()), or freeze it (p.requires_grad = False)")

    def _step(self, skip):
        """The update of :meth:`step` (what a subclass overrides)."""
        if skip is None:
            for i, p, state in self._with_grads():
                self._update(p, state, self.hyper(i))
            return
        for i, p, state in self._with_grads():
            xp = get_array_module(p.data)
            if self._counts_steps:  # the count moves to the device, so that the skip can keep it as it was
                _count_on_device(state, p.data)
            names = self._slots + (("step",) if self._counts_steps else ())
            before = {name: state[name].copy() for name in names if name in state}
            data = p.data.copy()
            self._update(p, state, self.hyper(i))
            xp.copyto(p.data, data, where=skip)
            for name in names:
                if name in state:
                    old = before.get(name)
                    xp.copyto(state[name], old if old is not None else xp.zeros((), state[name].dtype), where=skip)

    def _with_grads(self):
        """``[(index, parameter, state)]`` of each parameter a step updates: one with a gradient, not
        frozen. A gradient of another shape (set by hand) is refused: it would broadcast. (A list,
        made before any update: a wrong gradient stops the step before it changes anything.)"""
        out = []
        for i, (p, state) in enumerate(zip(self.params, self.state)):
            if p.grad is None or not p.requires_grad:
                continue
            if p.grad.shape != p.data.shape:
                raise ValueError(f"{type(self).__name__}.step: parameter {i} ({getattr(p, 'name', '')!r}) has shape "
                                 f"{tuple(p.data.shape)} but its .grad has shape {tuple(p.grad.shape)}: give it a "
                                 "gradient of the parameter's shape")
            out.append((i, p, state))
        return out

    def _update(self, p, state, h):
        """One parameter's update with its hyperparameters ``h`` (:meth:`hyper`)."""
        raise NotImplementedError

    def state_dict(self):
        if not hasattr(self, "_groups"):
            self._finish_groups()
        out = {"optimizer": type(self).__name__, "num_params": len(self.params), "lr": self.lr,
               "initial_lr": self.initial_lr, "num_groups": len(self._groups)}
        for name in self._hyper:
            out[name] = getattr(self, name)
        for gi, group in enumerate(self._groups):
            out[f"group.{gi}.size"] = self._group_of.count(gi)
            for key, value in group.items():
                out[f"group.{gi}.{key}"] = value
        for i, state in enumerate(self.state):
            for key, value in state.items():
                out[f"state.{i}.{key}"] = int(value) if key == "step" else host_copy(value)  # (a read back)
        return out

    def load_state_dict(self, d):
        if self.lr_written_by_owner:
            # a captured step reads the slots of its capture (and its hyperparameters by value): new
            # arrays would go unread by every replay, and a refusal halfway would leave half of them
            raise RuntimeError(f"{type(self).__name__}.load_state_dict: the state cannot be replaced while "
                               + REPLAYED_WAY_OUT)
        _check_saved_by(self, d, "optimizer")
        n = int(_scalar(d["num_params"]))
        if n != len(self.params):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state dict holds {n} parameters, this "
                             f"optimizer {len(self.params)}: build it over the same model's parameters() (and "
                             "add_param_group the groups the saved one was given since, before loading)")
        if not hasattr(self, "_groups"):
            self._finish_groups()
        saved_sizes = [int(_scalar(d[f"group.{gi}.size"])) for gi in range(int(_scalar(d.get("num_groups", 1))))
                       if f"group.{gi}.size" in d]
        sizes = [self._group_of.count(gi) for gi in range(len(self._groups))]
        if saved_sizes and saved_sizes != sizes:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state dict's parameter groups hold "
                             f"{saved_sizes} parameters, this optimizer's {sizes}: build the same groups")
        # The saved groups' overrides replace this optimizer's (a value written into param_groups since
        # construction too; a key the saved group did not set follows the optimizer's value, as it did there)
        groups = [{key: self._group_value(gi, key, _scalar(d[f"group.{gi}.{key}"])) for key in ("lr",) + self._hyper
                   if f"group.{gi}.{key}" in d} if saved_sizes else dict(group) for gi, group in enumerate(self._groups)]
        states = [dict() for _ in self.params]
        for key, value in d.items():
            if not key.startswith("state."):
                continue
            _, idx, name = key.split(".", 2)
            i, p = int(idx), self.params[int(idx)]
            if name == "step":
                states[i][name] = int(_scalar(value))
                continue
            if name not in self._slots:
                raise ValueError(f"{type(self).__name__}.load_state_dict: unknown state entry {key!r}")
            if tuple(np.shape(value)) != tuple(p.shape):
                raise ValueError(f"{type(self).__name__}.load_state_dict: {key!r} has shape {tuple(np.shape(value))}, "
                                 f"parameter {i} ({p.name!r}) has {tuple(p.shape)}: the model differs")
            states[i][name] = copy_like(value, p.data)
        for group, saved in zip(self._groups, groups):
            group.clear()
            group.update(saved)
        self.lr = float(_scalar(d["lr"]))
        self.initial_lr = float(_scalar(d.get("initial_lr", self.initial_lr)))
        for name in self._hyper:  # (together: one at a time, a check of the values taken together could refuse one)
            self.__dict__[name] = type(getattr(self, name))(_scalar(d[name]))
        self.state = ParamStates(self.params, states)

    def __repr__(self):
        hyper = ", ".join(f"{n}={getattr(self, n)}" for n in self._hyper)
        return f"{type(self).__name__}({len(self.params)} params, lr={self.lr}, {hyper})"
