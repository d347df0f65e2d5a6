"""``cs231n/layers.py`` of the 2025 edition: the same as the other editions from 2018."""
from __future__ import annotations

from ..layers import *  # noqa: F401,F403
from ..layers import __all__  # noqa: F401
