"""What every model builder shares: per-layer seeds from one seed, the input checks."""
from __future__ import annotations

import numpy as np

from ..counter_rng import check_seed


def _seeds(seed, n):
    return [int(s) for s in np.random.SeedSequence(check_seed(seed)).generate_state(n)]


def _input_dim(input_dim):
    if len(input_dim) != 3 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in input_dim):
        raise ValueError(f"input_dim must be (channels, height, width) of positive ints, got {input_dim!r}")
    return tuple(int(v) for v in input_dim)


def _in_channels(name, in_channels):
    if isinstance(in_channels, bool) or not isinstance(in_channels, (int, np.integer)) or in_channels < 1:
        raise ValueError(f"{name}: in_channels must be a positive int (3 for RGB images, 1 for grayscale), "
                         f"got {in_channels!r}")
    return int(in_channels)
