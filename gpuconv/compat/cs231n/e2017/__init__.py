"""The CS231n assignment API of the 2017 edition on gpuconv: ``from gpuconv.compat.cs231n.e2017 import *``.

As :mod:`gpuconv.compat.cs231n` but for the 2017 starter code: ``dropout_forward``'s ``p`` is the
probability of dropping a unit, ``rmsprop`` and ``adam`` take ``(x, dx, config)`` and Adam's
``t`` starts at 1, and the layer and group norm functions (added in 2019) are absent.
"""
from __future__ import annotations

from .. import __all__ as _latest_all
from .. import *  # noqa: F401,F403
from .. import Solver as _Solver
from .layers import dropout_forward  # noqa: F401
from . import optim
from .optim import adam, rmsprop, sgd, sgd_momentum


class Solver(_Solver):
    """The Solver with the 2017 update rules by name (``update_rule='adam'``: Adam's t from 1)."""

    UPDATE_RULES = {"sgd": sgd, "sgd_momentum": sgd_momentum, "rmsprop": rmsprop, "adam": adam}
    OPTIM = optim


YEAR = 2017
__all__ = [n for n in _latest_all if n not in (
    "layernorm_forward", "layernorm_backward", "spatial_groupnorm_forward", "spatial_groupnorm_backward")]
