"""The CS231n assignment API of the 2025 edition on gpuconv: ``from gpuconv.compat.cs231n.e2025 import *``.

The layers are the other editions' from 2018 (:mod:`gpuconv.compat.cs231n`); the update rules are
those of the ``optim.py`` that assignment 2 ships already written that year (the multi-layer
network and its optimizers moved to assignment 1): ``sgd_momentum``, ``rmsprop`` and ``adam``
update ``w`` in place and return it, and Adam folds its bias corrections into the step size, so a
2025 notebook's training curves come out as they do on the assignment's own code.
"""
from __future__ import annotations

from .. import *  # noqa: F401,F403
from .. import Solver as _Solver
from .. import __all__  # noqa: F401
from . import optim
from .optim import adam, rmsprop, sgd, sgd_momentum


class Solver(_Solver):
    """The Solver with the 2025 update rules by name (in place; Adam's folded step size)."""

    UPDATE_RULES = {"sgd": sgd, "sgd_momentum": sgd_momentum, "rmsprop": rmsprop, "adam": adam}
    OPTIM = optim


YEAR = 2025
