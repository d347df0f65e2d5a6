"""``cs231n/optim.py`` of the 2016 edition on gpuconv: 2017's rules (``rmsprop(x, dx, config)``,
``adam(x, dx, config)``) with Adam's ``t`` starting at 0."""
from __future__ import annotations

from .._optim import adam_2016 as adam
from .._optim import rmsprop_2017 as rmsprop
from .._optim import sgd, sgd_momentum

__all__ = ["sgd", "sgd_momentum", "rmsprop", "adam"]
