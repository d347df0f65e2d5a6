"""``cs231n/layer_utils.py`` of the 2016 edition: 2017's, without the conv - batch norm - ReLU
sandwich (added in 2017)."""
from __future__ import annotations

from ..e2017.layer_utils import __all__ as _all_2017
from ..e2017.layer_utils import *  # noqa: F401,F403

__all__ = [n for n in _all_2017 if not n.startswith("conv_bn_relu_")]
