""":class:`Chain`: several optimizers over disjoint parameters stepping as one (Muon for the
filters, SGD for the rest), one ``lr`` driving every member's in proportion, one state dict
holding each member's."""
from __future__ import annotations

import weakref

from .optimizer import Optimizer, _check_saved_by, _scalar, replays_schedule
from .param_groups import _GroupList, ParamStates


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
