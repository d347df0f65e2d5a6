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
import importlib.machinery
import io
import sys

MODULES = ("layers", "fast_layers", "layer_utils", "optim")
OWN_IF_PRESENT = ("optim",)        # served only to a package without the file
_MARK = "__gpuconv_redirect__"


def edition_modules(year):
    from ._editions import package_for
    pkg = package_for(year)
    return {name: importlib.import_module(f"{pkg.__name__}.{name}") for name in MODULES}


# What the starter's dropout_forward docstring says ``p`` is: the one line that tells a student's
# layers.py of 2016-2017 (p drops a unit) from one of 2018 on (p keeps it).
_DROPOUT_DOCS = {"We drop each neuron output with probability p": True,
                 "We keep each neuron output with probability p": False}


def _says_p_drops(module):
    """True / False where the student's dropout_forward docstring says p drops / keeps a unit, else None."""
    doc = " ".join((getattr(module.__dict__.get("dropout_forward"), "__doc__", None) or "").split())
    found = [drops for text, drops in _DROPOUT_DOCS.items() if text in doc]
    return found[0] if len(found) == 1 else None


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, package, modules, edition=None):
        self.package, self.edition = package, edition
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
        spec.loader = _Overlay(spec.loader, ours, optional=fullname.endswith(".fast_layers"),
                               pick=self._layers_for if fullname.endswith(".layers") else None)
        return spec

    def _layers_for(self, module, ours):
        """The layers to serve for the student's layers.py just run: the edition's, but where the
        file's dropout says the opposite of what the edition's p means, the file's semantics when
        no edition was given (2016's layers are 2017's), and a warning when one was."""
        from ._norm import dropout_forward_2017
        drops = _says_p_drops(module)
        ours_drops = ours.dropout_forward is dropout_forward_2017
        if drops is None or drops == ours_drops:
            return ours
        if self.edition is None:               # the default's p keeps a unit; the file's drops it
            return edition_modules(2017)["layers"]
        import warnings
        said = "drop" if drops else "keep"
        warnings.warn(f"{module.__name__}'s dropout_forward says 'We {said} each neuron output with probability p', "
                      f"but redirect(edition={self.edition}) serves layers whose p {'drops' if ours_drops else 'keeps'} "
                      f"a unit: pass the edition of the assignment's starter code (p drops a unit in 2016 and 2017, "
                      f"keeps it from 2018), or leave edition out to follow the file", stacklevel=2)
        return ours

    def remove(self):
        """Uninstall the hook (modules imported through it stay as they are)."""
        if self in sys.meta_path:
            sys.meta_path.remove(self)


class _Overlay(importlib.abc.Loader):
    def __init__(self, inner, ours, optional=False, pick=None):
        self.inner, self.ours, self.optional, self.pick = inner, ours, optional, pick

    def create_module(self, spec):
        return self.inner.create_module(spec) if self.inner is not None else None

    def exec_module(self, module):
        if self.inner is not None and self.optional:
            _exec_optional(self.inner, module)
        elif self.inner is not None:
            self.inner.exec_module(module)
        ours = self.pick(module, self.ours) if self.pick is not None and self.inner is not None else self.ours
        for name in ours.__all__:
            setattr(module, name, getattr(ours, name))
        setattr(module, _MARK, ours.__name__)


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
    where the package has none (``edition``: the assignment's year, default the latest, but the
    2016-2017 dropout where the student's ``dropout_forward`` docstring is the starter's of those
    years, "We drop each neuron output with probability p"; a given edition whose ``p`` means the
    opposite of that docstring's is kept, with a warning). Call it before anything imports those
    modules; returns the hook (``.remove()`` uninstalls it)."""
    from ._editions import LATEST
    stale = [f"{package}.{m}" for m in MODULES if m not in OWN_IF_PRESENT
             and f"{package}.{m}" in sys.modules and not hasattr(sys.modules[f"{package}.{m}"], _MARK)]
    if stale:
        raise RuntimeError(f"redirect({package!r}) must run before {package}'s layer modules are imported, but "
                           f"{', '.join(stale)} already are: put it first (in a notebook, restart the kernel and "
                           f"run it in the first cell)")
    for finder in [f for f in sys.meta_path if isinstance(f, _Finder) and f.package == package]:
        finder.remove()
    finder = _Finder(package, edition_modules(LATEST if edition is None else edition), edition)
    sys.meta_path.insert(0, finder)
    return finder
