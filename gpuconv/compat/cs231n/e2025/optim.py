"""``cs231n/optim.py`` of the 2025 edition on gpuconv: assignment 2 ships it written, with rules
that update ``w`` (and the velocity and RMSProp cache) in place and return it, and an Adam whose
bias corrections are folded into the step size (see :mod:`.._optim`); ``sgd`` is every edition's."""
from __future__ import annotations

from .._optim import adam_2025 as adam
from .._optim import rmsprop_2025 as rmsprop
from .._optim import sgd
from .._optim import sgd_momentum_2025 as sgd_momentum

__all__ = ["sgd", "sgd_momentum", "rmsprop", "adam"]
