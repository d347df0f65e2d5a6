"""``cs231n/optim.py`` of the 2017 edition on gpuconv: ``sgd(w, dw, config)``, ``sgd_momentum(w, dw,
config)``, ``rmsprop(x, dx, config)``, ``adam(x, dx, config)`` with Adam's ``t`` starting at 1."""
from __future__ import annotations

from .._optim import adam_2017 as adam
from .._optim import rmsprop_2017 as rmsprop
from .._optim import sgd, sgd_momentum

__all__ = ["sgd", "sgd_momentum", "rmsprop", "adam"]
