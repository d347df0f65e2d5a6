"""The assignment editions and where each one's semantics live.

Four sets of semantics cover the editions 2015-2026 (read from the starter code of each):
2018 on (dropout's ``p`` keeps a unit, update rules ``(w, dw, config)``, Adam's ``t`` from 0,
layer and group norm) in :mod:`gpuconv.compat.cs231n` itself, which serves 2015 too (its layers,
fast layers and sandwiches are a subset of these, and its dropout's ``p`` keeps a unit: its
convnets pass ``p = 1.0`` for no dropout; it has no ``optim.py``); 2017 (``p`` drops a unit,
``rmsprop``/``adam`` take ``(x, dx, config)``, Adam's ``t`` from 1, no layer/group norm) in
:mod:`gpuconv.compat.cs231n.e2017`; 2016 (2017's, with Adam's ``t`` from 0) in
:mod:`gpuconv.compat.cs231n.e2016`; 2025 (the layers of 2018 on; assignment 2's ``optim.py``
ships written, its rules in place and its Adam's bias corrections folded into the step size) in
:mod:`gpuconv.compat.cs231n.e2025`. Other later editions changed the classifiers
(``dropout_keep_ratio`` in 2021), dropped ``svm_loss`` from assignment 2's ``layers.py`` (by 2023;
assignment 1's keeps it, and so does gpuconv), moved the multi-layer network and its optimizers to
assignment 1 and the RNN part of assignment 2 to PyTorch (2025), not the layer API served here.
"""
from __future__ import annotations

import importlib

EDITIONS = {2015: None, 2016: "e2016", 2017: "e2017", **{year: None for year in range(2018, 2027)}, 2025: "e2025"}
LATEST = max(EDITIONS)


def package_for(year):
    if isinstance(year, bool) or not isinstance(year, int) or year not in EDITIONS:
        raise ValueError(f"edition {year!r} is not one gpuconv knows: use one of {sorted(EDITIONS)} (the year of "
                         f"the assignment's starter code; the default, {LATEST}, covers 2015 and 2018 on but 2025)")
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
