"""The CS231n assignment API of the 2016 edition on gpuconv: ``from gpuconv.compat.cs231n.e2016 import *``.

The 2017 edition's (:mod:`gpuconv.compat.cs231n.e2017`: dropout's ``p`` drops a unit, ``rmsprop``
and ``adam`` take ``(x, dx, config)``, no layer or group norm) but for Adam, whose ``t`` starts at
0 as it does again from 2018. (The 2016 starter code is Python 2; ported to Python 3 it runs
unchanged on this.)
"""
from __future__ import annotations

from ..e2017 import *  # noqa: F401,F403
from ..e2017 import Solver as _Solver2017
from ..e2017 import __all__  # noqa: F401
from . import optim
from .optim import adam, rmsprop, sgd, sgd_momentum


class Solver(_Solver2017):
    """The Solver with the 2016 update rules by name (``update_rule='adam'``: Adam's t from 0)."""

    UPDATE_RULES = {"sgd": sgd, "sgd_momentum": sgd_momentum, "rmsprop": rmsprop, "adam": adam}
    OPTIM = optim


YEAR = 2016
