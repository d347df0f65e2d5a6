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
"""
from __future__ import annotations

import bisect
import math
import numbers
import weakref
from collections.abc import Mapping, MutableMapping

import numpy as np

from . import kernels
from ._namespace import namespace
from .backend import (array_device_context, copy_like, get_array_module, host_copy, kernel_target,
                      parameters_device_context)
from .graphs import REPLAYED_WAY_OUT
from .layers import Parameter, _only, zero_grads
from .ops._checks import check_bool

__all__ = ["Optimizer", "ParamGroup", "ParamStates", "SGD", "Adam", "AdamW", "Muon", "Chain", "newton_schulz", "replays_schedule", "LRSchedule", "StepLR", "MultiStepLR", "CosineAnnealingLR", "LambdaLR", "CosineLR", "OneCycleLR", "TriangularLR", "lr_scheduler"]


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


# ----------------------------------------------------------------------------- optimizers
_MISSING = object()


_FIXED_PARAMS = ("a parameter group's 'params' are fixed when the optimizer is built; give new parameters a group "
                 "of their own, optimizer.add_param_group({'params': [...]}), or build a new optimizer over the "
                 "parameters you want")


class _GroupParams(list):
    """A parameter group's ``'params'``, a list to read: a change (``append``, as a PyTorch script adds
    a parameter) would reach no update, so it is refused."""

    def _fixed(self, *args, **kwargs):
        raise TypeError(_FIXED_PARAMS)

    append = extend = insert = remove = pop = clear = sort = reverse = _fixed
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _fixed

    def __reduce_ex__(self, protocol):  # a copy (copy, pickle) is a plain list: it belongs to no optimizer
        return list, (list(self),)


class _GroupList(list):
    """``optimizer.param_groups``, a list to read: a group appended (or removed) there would reach no
    update, so a change is refused, naming add_param_group."""

    def _fixed(self, *args, **kwargs):
        raise TypeError("optimizer.param_groups is made afresh from the optimizer's groups at each read, so a change "
                        "to the list reaches no update: add a group with optimizer.add_param_group({'params': "
                        "[...], 'lr': ...}), or change a group's values through param_groups[i][key] = value")

    append = extend = insert = remove = pop = clear = sort = reverse = _fixed
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _fixed

    def __reduce_ex__(self, protocol):  # a copy (copy, pickle) is a plain list
        return list, (list(self),)


class _Defaults(dict):
    """``optimizer.defaults``: a dict (JSON, copy and pickle take it, as PyTorch's), refusing a
    write, which would reach no update."""

    def _fixed(self, *args, **kwargs):
        raise TypeError("optimizer.defaults is read-only (a copy of the optimizer's values): set optimizer.momentum "
                        "(say) to change one, or write a group's value through optimizer.param_groups[i][key]")

    __setitem__ = __delitem__ = __ior__ = update = pop = popitem = setdefault = clear = _fixed

    def __reduce_ex__(self, protocol):  # a copy (copy, pickle) is a plain dict
        return dict, (dict(self),)


class ParamGroup(MutableMapping):
    """One parameter group of an optimizer, as PyTorch's ``optimizer.param_groups[i]`` shows it:
    ``'params'`` (its Parameters), ``'lr'`` (the lr its next step takes) and every other
    hyperparameter in effect. A view: reading gives the optimizer's current values, writing a
    hyperparameter sets it for this group (checked as the constructor checks it); the parameters
    themselves are fixed at construction."""

    def __init__(self, optimizer, index):
        self._opt, self._index = optimizer, index

    def _keys(self):
        hyper = self._opt._hyper
        return ("params", "lr") + (("betas",) if "beta1" in hyper else ()) + hyper

    def __getitem__(self, key):
        opt, gi = self._opt, self._index
        if key == "params":
            return _GroupParams(p for p, g in zip(opt.params, opt._group_of) if g == gi)
        if key == "lr":
            return opt._group_lr(gi)
        if key == "betas" and "beta1" in opt._hyper:  # PyTorch's spelling of Adam's pair
            return (self["beta1"], self["beta2"])
        if key in opt._hyper:
            return opt._groups[gi].get(key, getattr(opt, key))
        hint = (f"; the lr it takes before any schedule (PyTorch's 'initial_lr'), which a schedule scales, is "
                f"optimizer.group_initial_lr({gi})" if key == "initial_lr" else "")
        raise KeyError(f"a parameter group has {', '.join(self._keys())}; not {key!r}{hint}")

    def __setitem__(self, key, value):
        if key == "params":
            raise TypeError(_FIXED_PARAMS)
        self._opt._set_group_value(self._index, key, value)

    def __delitem__(self, key):
        raise TypeError(f"a parameter group always has {key!r}; set it to another value instead")

    def __iter__(self):
        return iter(self._keys())

    def __len__(self):
        return len(self._keys())

    def __repr__(self):
        shown = ", ".join(f"{k!r}: " + (f"<{len(self[k])} parameters>" if k == "params" else repr(self[k]))
                          for k in self._keys())
        return "ParamGroup({" + shown + "})"


class ParamStates(list):
    """An optimizer's per-parameter states (dicts: slot name -> array, ``'step'`` -> count), a
    list in the order of its parameters; indexed by a Parameter too, as PyTorch's
    ``optimizer.state[p]``."""

    def __init__(self, params, states):
        super().__init__(states)
        self._params = params

    def __getitem__(self, key):
        if isinstance(key, Parameter):
            for i, p in enumerate(self._params):
                if p is key:
                    return super().__getitem__(i)
            raise KeyError(f"parameter {key.name!r} is not one of this optimizer's; index the state of the "
                           "optimizer built over it")
        return super().__getitem__(key)


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
        """``(index, parameter, state)`` of each parameter a step updates: one with a gradient, not
        frozen. A gradient of another shape (set by hand) is refused: it would broadcast."""
        for i, (p, state) in enumerate(zip(self.params, self.state)):
            if p.grad is None or not p.requires_grad:
                continue
            if p.grad.shape != p.data.shape:
                raise ValueError(f"{type(self).__name__}.step: parameter {i} ({getattr(p, 'name', '')!r}) has shape "
                                 f"{tuple(p.data.shape)} but its .grad has shape {tuple(p.grad.shape)}: give it a "
                                 "gradient of the parameter's shape")
            yield i, p, state

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
        for i, p, state in self._with_grads():
            h = hypers.get(self._group_of[i])
            if h is None:
                h = hypers[self._group_of[i]] = self.hyper(i)
            item = _fused_sgd_operands(p, state, h)
            if item is None:
                self._update(p, state, h)
                continue
            lr = self._lr_of[id(p)]
            key = (id(lr), h["momentum"], h["weight_decay"], bool(h["nesterov"]), p.data.dtype,
                   kernels.array_device([p.data]))
            batches.setdefault(key, (lr, h, []))[2].append(item)
        for lr, h, items in batches.values():
            # Launches of similar sizes: the grid is sized for a launch's largest parameter.
            items.sort(key=lambda item: item[0].size)
            for k in range(0, len(items), SGD_TENSORS):
                _launch_sgd(items[k:k + SGD_TENSORS], h, lr)

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


def _fused_sgd_operands(p, state, h):
    """``(data, grad, buffer, first)`` for the fused update of ``p``: it lives on a kernel target
    ('cuda', 'sim') in float32 or float64 with a contiguous gradient of its dtype (None
    otherwise). With momentum, a first step allocates the buffer, which the kernel writes."""
    data, grad = p.data, p.grad
    if kernel_target(data) is None or data.dtype not in (np.float32, np.float64) or grad.dtype != data.dtype \
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


def _launch_sgd(items, h, lr):
    """One launch of sgd_update over up to SGD_TENSORS ``(data, grad, buffer, first)`` of one group
    (the same ``lr`` array and hyperparameters ``h``), :func:`gpuconv.kernels.launch_slots`."""
    data0, grad0, buf0, _ = items[0]
    kernels.launch_slots("optim", "sgd_update", data0.dtype, kernel_target(data0),
                         [(d, g, b, np.int64(d.size), np.int32(first)) for d, g, b, first in items],
                         [d.size for d, _, _, _ in items], SGD_TENSORS,
                         (data0, grad0, buf0, np.int64(0), np.int32(0)),
                         (lr, np.float64(h["momentum"]), np.float64(h["weight_decay"]), np.int32(bool(h["nesterov"]))),
                         device=kernels.array_device([data0]))


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


NS_COEFFS = (3.4445, -4.7750, 2.0315)


def replays_schedule(optimizer) -> bool:
    """Whether a captured step of ``optimizer`` follows its schedule when replayed: its class (not
    a parent) declares ``device_lrs`` and it is true (SGD, Muon, Adam, AdamW, a Chain of them)."""
    return "device_lrs" in type(optimizer).__dict__ and bool(optimizer.device_lrs)


def newton_schulz(g, steps=3, eps=1e-7):
    """An approximate orthogonalization of the matrix ``g`` (rows x columns): ``steps`` quintic
    Newton-Schulz iterations ``X = a X + (b A + c A^2) X``, ``A = X X^T``, from ``g / ||g||_F``
    (Muon's coefficients, chosen for speed over exactness: the singular values land roughly in
    [0.5, 1.5] rather than at 1). Computed in float32 (float64 for float64 input), whatever the
    storage type, per gpuconv's precision rule (airbench runs it in bfloat16); on 'cuda' and
    'sim' the products run on gpuconv's GEMM kernels."""
    xp = get_array_module(g)
    dt = np.float64 if g.dtype == np.float64 else np.float32
    x = g.astype(dt)
    x = x / (xp.sqrt(xp.sum(x * x)) + dt(eps))
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    a, b, c = (dt(v) for v in NS_COEFFS)
    for _ in range(steps):
        A = _matmul(x, x.T)
        x = a * x + _matmul(b * A + c * _matmul(A, A), x)
    return x.T if tall else x


def _matmul(p, q):
    """``p @ q`` (2-D): on 'cuda' and 'sim' through gpuconv's own GEMM kernels in strict float32
    (float64 for float64; the linear layer's), so that no cuBLAS call sits in a step a CUDA graph
    captures (CuPy refuses one there), nor anywhere on a GPU (the cuda12/cuda13 installs, CuPy and
    NVRTC, have no cuBLAS); NumPy's matmul elsewhere."""
    if kernel_target(p, q) is None:
        return p @ q
    from .ops import linear_forward
    return linear_forward(get_array_module(p).ascontiguousarray(p), get_array_module(q).ascontiguousarray(q.T),
                          precision="fp32")[0]


class Muon(Optimizer):
    """Muon (momentum orthogonalized by Newton-Schulz), as airbench94_muon uses it for the conv
    filters: ``b = momentum * b + g``; ``g = g + momentum * b`` (Nesterov) or ``b``; with
    ``normalize`` the weight is first rescaled to ``||p||_F = sqrt(p.shape[0])``; then
    ``p -= lr * newton_schulz(g.reshape(p.shape[0], -1))``. For parameters of 2 or more
    dimensions (a filter bank is a matrix of rows ``out_channels``); give the biases, the batch
    norm shifts and the head to an SGD."""

    _hyper = ("momentum", "nesterov", "steps", "normalize")
    _slots = ("momentum_buffer",)

    device_lrs = True

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, steps=3, normalize=True):
        super().__init__(params, lr)
        for i, p in enumerate(self.params):
            self._check_param(i, p)
        self.momentum = _nonneg("momentum", momentum)
        self.nesterov = check_bool("nesterov", nesterov)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1 (Newton-Schulz iterations), got {steps!r}")
        self.steps, self.normalize = int(steps), check_bool("normalize", normalize)
        self._finish_groups()

    def _check_param(self, index, p):
        if len(p.shape) < 2:
            raise ValueError(f"Muon: params[{index}] ({p.name!r}) has shape {tuple(p.shape)}; Muon orthogonalizes "
                             "matrices and filter banks (2 or more dimensions): give 1-D parameters to SGD")

    def _check_group(self, gi):
        self._check_nesterov(gi)
        if self._groups[gi].get("steps", self.steps) < 1:
            raise ValueError(f"Muon: parameter group {gi}'s steps must be >= 1 (Newton-Schulz iterations)")

    def _update(self, p, state, h):
        xp = get_array_module(p.data)
        g = p.grad
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = xp.zeros_like(g)
        buf *= h["momentum"]
        buf += g
        g = g + h["momentum"] * buf if h["nesterov"] else buf
        if h["normalize"]:
            # (a weight of all zeros, which has no direction to keep, is left as it is)
            norm = xp.sqrt(xp.sum(p.data.astype(np.float64) ** 2))
            p.data *= xp.where(norm > 0, math.sqrt(p.shape[0]) / xp.where(norm > 0, norm, 1.0), 1.0).astype(p.dtype)
        update = newton_schulz(g.reshape(g.shape[0], -1), steps=int(h["steps"])).reshape(g.shape)
        # On 'cuda'/'sim' the lr is the group's device value (write_lrs), rounded to the update's
        # type as a Python float would be: the same bits, and a replayed step follows the schedule.
        lr = h["lr"] if self._lrs is None else self._lr_of[id(p)].astype(update.dtype)
        p.data -= (lr * update).astype(p.dtype)



class Chain(Optimizer):
    """Several optimizers over disjoint parameters, stepping as one (airbench94_muon: Muon for the
    filters, SGD for the rest). ``lr`` is the schedule's handle: setting it scales every member's
    lr by ``lr / initial_lr``, so one schedule drives them all in proportion. The state dict
    holds each member's under ``<i>.``."""

    def __init__(self, *optimizers):
        if not optimizers or not all(isinstance(o, Optimizer) and not isinstance(o, Chain) for o in optimizers):
            raise TypeError("Chain takes one or more gpuconv optimizers (SGD, Adam, Muon, ...), e.g. "
                            "Chain(Muon(filters, lr=0.24), SGD(others, lr=0.1))")
        self.optimizers = ()
        super().__init__([p for o in optimizers for p in o.params], lr=1.0)  # a parameter in two: an error
        self.optimizers = tuple(optimizers)
        self._finish_groups()
        self._link_members()

    def _link_members(self):
        # A member's add_param_group refuses a parameter another member holds (weakly: a member
        # outlives a chain it was lent to).
        for o in self.optimizers:
            o._chain = weakref.ref(self)

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._link_members()

    @property
    def params(self):
        """Every member's parameters, in order (a group a member adds, add_param_group, among them)."""
        return [p for o in getattr(self, "optimizers", ()) for p in o.params]

    @params.setter
    def params(self, value):  # (the base class's list: the members hold the parameters)
        pass

    def add_param_group(self, param_group):
        raise TypeError("Chain.add_param_group: a chain's groups belong to its optimizers, each with its own update "
                        "(Muon takes matrices and filter banks, SGD the rest); add the group to one of them, e.g. "
                        "chain.optimizers[-1].add_param_group({'params': [...]}): the chain, its schedule and its "
                        "state dict take it from there")

    @property
    def state(self):
        """Every member's per-parameter states, in the chain's parameter order (the members' own dicts)."""
        return ParamStates(self.params, [st for o in getattr(self, "optimizers", ()) for st in o.state])

    @state.setter
    def state(self, value):  # (the base class's empty list: the members hold the states)
        pass

    def _lr_set(self):
        for o in getattr(self, "optimizers", ()):
            o.lr = o.initial_lr * self._lr / self.initial_lr

    @property
    def device_lrs(self):
        return all(replays_schedule(o) for o in self.optimizers)

    @property
    def lr_written_by_owner(self):
        return all(o.lr_written_by_owner for o in getattr(self, "optimizers", ()))

    @lr_written_by_owner.setter
    def lr_written_by_owner(self, value):
        for o in getattr(self, "optimizers", ()):
            o.lr_written_by_owner = value

    def write_lrs(self):
        for o in self.optimizers:
            o.write_lrs()

    @property
    def param_groups(self):
        """Every member's groups, in order (writing one sets it in its member)."""
        return _GroupList(g for o in self.optimizers for g in o.param_groups)

    def find_group(self, params):
        for o in self.optimizers:
            try:
                return o.find_group(params)
            except ValueError:
                continue
        raise ValueError(f"Chain: none of its optimizers has a parameter group of exactly those {len(params)} "
                         "parameters; give them a group of their own")

    def zero_grad(self, set_to_none=True):
        for o in self.optimizers:
            o.zero_grad(set_to_none)

    def _step(self, skip):
        for o in self.optimizers:
            o._step(skip)

    def state_dict(self):
        out = {"optimizer": "Chain", "members": len(self.optimizers), "lr": self.lr}
        for i, o in enumerate(self.optimizers):
            out.update({f"{i}.{k}": v for k, v in o.state_dict().items()})
        return out

    def load_state_dict(self, d):
        _check_saved_by(self, d, "optimizer")
        if int(_scalar(d["members"])) != len(self.optimizers):
            raise ValueError(f"Chain.load_state_dict: the state dict holds {int(_scalar(d['members']))} optimizers, "
                             f"this chain {len(self.optimizers)}: build the same chain")
        before = [o.state_dict() for o in self.optimizers]  # all or nothing: a member refusing its part undoes the rest
        done = 0
        try:
            for i, o in enumerate(self.optimizers):
                o.load_state_dict({k[len(f"{i}."):]: v for k, v in d.items() if k.startswith(f"{i}.")})
                done += 1
        except BaseException:
            for o, saved in zip(self.optimizers[:done], before):
                o.load_state_dict(saved)
            raise
        self._lr = float(_scalar(d["lr"]))

    def __repr__(self):
        return "Chain(" + ", ".join(repr(o) for o in self.optimizers) + ")"


# ----------------------------------------------------------------------------- schedules
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


def _torch_switches(name, maximize, differentiable):
    """PyTorch's optimizer switches: ``maximize`` and ``differentiable`` (what the update computes)
    at their defaults only; ``foreach``, ``fused`` and ``capturable`` (how PyTorch schedules the
    same arithmetic) are taken as given: gpuconv's step is one device-side pass, capturable in a
    CUDA graph, whatever they say."""
    _only(name, maximize=(maximize, False), differentiable=(differentiable, False))


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


# PyTorch's ``torch.optim.lr_scheduler`` namespace, with the schedules above that it names as gpuconv
# does: ``from gpuconv.optim import lr_scheduler; lr_scheduler.StepLR(opt, 30)`` and ``from
# gpuconv.optim.lr_scheduler import OneCycleLR`` port as written. gpuconv's own schedules (CosineLR,
# TriangularLR) stay in gpuconv.optim, where PyTorch has no such names.
lr_scheduler = namespace(__name__ + ".lr_scheduler", "``gpuconv.optim.lr_scheduler``: the schedules of "
                         "PyTorch's ``torch.optim.lr_scheduler`` that gpuconv has, under PyTorch's names "
                         "(:mod:`gpuconv.optim` holds them and gpuconv's own).",
                         {name: globals()[name] for name in ("StepLR", "MultiStepLR", "CosineAnnealingLR",
                                                             "LambdaLR", "OneCycleLR")})
