"""``cs231n/fast_layers.py`` of the 2016 edition: the 2017 edition's."""
from __future__ import annotations

from ..e2017.fast_layers import *  # noqa: F401,F403
from ..e2017.fast_layers import __all__  # noqa: F401
