"""``cs231n/layer_utils.py`` of the 2025 edition: the same as the other editions from 2018."""
from __future__ import annotations

from ..layer_utils import *  # noqa: F401,F403
from ..layer_utils import __all__  # noqa: F401
