"""The assignment editions and where each one's semantics live.

Two sets of semantics cover the editions supported: 2017 (``p`` of dropout = drop probability,
``rmsprop``/``adam`` take ``(x, dx, config)``, Adam's ``t`` from 1, no layer/group norm) in
:mod:`gpuconv.compat.cs231n.e2017`, and 2019 on (keep probability, ``(w, dw, config)``, ``t``
from 0, layer and group norm) in :mod:`gpuconv.compat.cs231n` itself.
"""
from __future__ import annotations

import importlib

EDITIONS = {2017: "e2017", 2019: None, 2020: None, 2021: None, 2022: None}
LATEST = max(EDITIONS)


def package_for(year):
    if isinstance(year, bool) or not isinstance(year, int) or year not in EDITIONS:
        raise ValueError(f"edition {year!r} is not one gpuconv knows: use one of {sorted(EDITIONS)} (the year of "
                         f"the assignment's starter code; the default, {LATEST}, covers 2019 on)")
    sub = EDITIONS[year]
    return importlib.import_module(__package__ + (f".{sub}" if sub else ""))


def edition(year):
    """The CS231n API of that edition's starter code, as a module: ``cs = edition(2017)`` then
    ``cs.dropout_forward(...)``, ``cs.layers``, ``cs.optim``; ``from gpuconv.compat.cs231n.e2017
    import *`` is the same for 2017. The default (``gpuconv.compat.cs231n``) is the latest."""
    pkg = package_for(year)
    for name in ("layers", "fast_layers", "layer_utils", "optim"):
        importlib.import_module(f"{pkg.__name__}.{name}")
    return pkg
