"""Point an unmodified ``cs231n`` package's layer modules at gpuconv, with one line.

    import gpuconv.compat.cs231n as g; g.redirect()          # before any cs231n import
    from cs231n.classifiers.cnn import ThreeLayerConvNet        # the student's own, unchanged
    from cs231n.solver import Solver                            # the student's own, unchanged

An import hook (a ``sys.meta_path`` finder) serves ``cs231n.layers``, ``cs231n.fast_layers`` and
``cs231n.layer_utils``: each student file still runs (so helpers the student
added, say an ``affine_bn_relu_forward`` in layer_utils.py, stay), then the starter functions in it
are replaced by gpuconv's, so everything that imports them, or calls them through the module's
globals, gets gpuconv's. ``fast_layers.py`` wraps the assignment's Cython extension, which need
not be built: it runs too, for what a student added to it, with what it prints dropped (the
starter's import prints how to build the extension when it is missing, which gpuconv does not
need); where it cannot run (the 2016 starter's Python 2 ``print`` statement, a package it imports
that is not installed), gpuconv's fast layers are served alone. A module the package lacks is
served from gpuconv alone, ``cs231n.optim`` included (the edition's update rules). Everything else
(``optim``, ``solver``, ``gradient_check``, ``data_utils``, ``classifiers``) is the student's own:
the update rules too, which run on the model's NumPy parameters on the host either way, so a
student's own variant (epsilon inside RMSProp's square root, an Adam without bias correction)
trains as it does without gpuconv.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import io
import importlib.machinery
import sys

MODULES = ("layers", "fast_layers", "layer_utils", "optim")
OWN_IF_PRESENT = ("optim",)        # served only to a package without the file
_MARK = "__gpuconv_redirect__"


def edition_modules(year):
    from ._editions import package_for
    pkg = package_for(year)
    return {name: importlib.import_module(f"{pkg.__name__}.{name}") for name in MODULES}


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, package, modules):
        self.package = package
        self.modules = {f"{package}.{name}": mod for name, mod in modules.items()}

    def find_spec(self, fullname, path, target=None):
        ours = self.modules.get(fullname)
        if ours is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return importlib.machinery.ModuleSpec(fullname, _Overlay(None, ours), origin=ours.__file__)
        if fullname.rpartition(".")[2] in OWN_IF_PRESENT:
            return None                # the student's own file, imported as without the hook
        spec.loader = _Overlay(spec.loader, ours, optional=fullname.endswith(".fast_layers"))
        return spec

    def remove(self):
        """Uninstall the hook (modules imported through it stay as they are)."""
        if self in sys.meta_path:
            sys.meta_path.remove(self)


class _Overlay(importlib.abc.Loader):
    def __init__(self, inner, ours, optional=False):
        self.inner, self.ours, self.optional = inner, ours, optional

    def create_module(self, spec):
        return self.inner.create_module(spec) if self.inner is not None else None

    def exec_module(self, module):
        if self.inner is not None and self.optional:
            _exec_optional(self.inner, module)
        elif self.inner is not None:
            self.inner.exec_module(module)
        for name in self.ours.__all__:
            setattr(module, name, getattr(self.ours, name))
        setattr(module, _MARK, self.ours.__name__)


def _exec_optional(loader, module):
    """Run the student's file into ``module``, its output dropped; if it fails, undo what it set."""
    before = dict(module.__dict__)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            loader.exec_module(module)
    except Exception:
        module.__dict__.clear()
        module.__dict__.update(before)


def redirect(package="cs231n", edition=None):
    """Serve ``<package>.layers``, ``.fast_layers`` and ``.layer_utils`` from gpuconv, and ``.optim``
    where the package has none (``edition``: the assignment's year, default the latest). Call it
    before anything imports those modules; returns the hook (``.remove()`` uninstalls it)."""
    from ._editions import LATEST
    stale = [f"{package}.{m}" for m in MODULES if m not in OWN_IF_PRESENT
             and f"{package}.{m}" in sys.modules and not hasattr(sys.modules[f"{package}.{m}"], _MARK)]
    if stale:
        raise RuntimeError(f"redirect({package!r}) must run before {package}'s layer modules are imported, but "
                           f"{', '.join(stale)} already are: put it first (in a notebook, restart the kernel and "
                           f"run it in the first cell)")
    for finder in [f for f in sys.meta_path if isinstance(f, _Finder) and f.package == package]:
        finder.remove()
    finder = _Finder(package, edition_modules(LATEST if edition is None else edition))
    sys.meta_path.insert(0, finder)
    return finder
