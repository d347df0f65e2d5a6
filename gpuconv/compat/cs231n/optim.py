"""``cs231n/optim.py`` on gpuconv (2018 edition on): ``sgd``, ``sgd_momentum``, ``rmsprop``, ``adam``,
each ``rule(w, dw, config=None) -> (next_w, config)``. The 2017 edition's rules (``(x, dx,
config)``, Adam's ``t`` from 1) are in ``gpuconv.compat.cs231n.e2017.optim``."""
from __future__ import annotations

from ._optim import adam, rmsprop, sgd, sgd_momentum

__all__ = ["sgd", "sgd_momentum", "rmsprop", "adam"]
