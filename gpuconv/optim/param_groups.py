"""What an optimizer shows of its groups and states, as PyTorch does: ``optimizer.param_groups``
(a read-only list of :class:`ParamGroup`, dict-like views whose writes set a group's value),
``optimizer.defaults`` and ``optimizer.state`` (:class:`ParamStates`, indexed by position or by
Parameter). The views hold no values of their own: the optimizer does."""
from __future__ import annotations

from collections.abc import MutableMapping

from ..layers import Parameter


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
