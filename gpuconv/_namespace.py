"""PyTorch's dotted namespaces (``torch.nn.utils``) over names gpuconv defines elsewhere.
``gpuconv.nn`` is a module, not a package: the namespace is a module object registered under its
dotted name, so that ``from gpuconv.nn import utils``, ``import gpuconv.nn.utils`` and ``from
gpuconv.nn.utils import clip_grad_norm_`` all work, as they do in PyTorch scripts. (A package,
such as ``gpuconv.optim``, holds its namespace as a module file: ``gpuconv/optim/lr_scheduler.py``.)"""
from __future__ import annotations

import importlib.machinery
import sys
import types


def namespace(name, doc, members):
    """A module named ``name`` (dotted, under an imported module) holding ``members`` (a dict), with
    a spec of its name, as an imported module has (``importlib.util.find_spec`` reads it)."""
    module = types.ModuleType(name, doc)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(members)
    module.__all__ = list(members)
    sys.modules[name] = module
    return module
