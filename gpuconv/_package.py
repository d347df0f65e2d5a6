"""One namespace over a package's modules, for a module that grew into a package.

``gpuconv.kernels``, ``gpuconv.trainer`` and ``gpuconv.cli`` were single modules, and code (tests
above all, with ``monkeypatch.setattr(kernels, "_compute_capability", fake)``) sets their attributes
to change what their functions see. Once the code lives in submodules, such an assignment to the
package alone would change nothing the submodules call: each looks names up in its own globals,
and the patched test would pass for the wrong reason. :func:`gather` makes the package hold every
top-level name of its submodules, and its class a :class:`Namespace`, whose assignments (and
deletions) reach every submodule that holds the name's current object, as a definition or as an
import. A name has one meaning across the package: two submodules binding it to different
objects is an ImportError, so an assignment can never reach the wrong one.

Reading stays a plain attribute lookup (a launcher's ``kernels.launch`` costs what it did). A
submodule that rebinds one of its globals at run time (``global x; x = ...``) would leave the
package's copy behind: such state lives in a mutable object instead.
"""
from __future__ import annotations

import sys
import types

_MISSING = object()


class Namespace(types.ModuleType):
    """A package whose attribute assignments reach the submodules holding the same object."""

    def _holders(self, name):
        current = self.__dict__.get(name, _MISSING)
        if current is _MISSING or (name.startswith("__") and name.endswith("__")):
            return []
        prefix = self.__name__ + "."
        return [module for key, module in list(sys.modules.items())
                if key.startswith(prefix) and module is not None and vars(module).get(name, _MISSING) is current]

    def __setattr__(self, name, value):
        for module in self._holders(name):
            setattr(module, name, value)
        super().__setattr__(name, value)

    def __delattr__(self, name):
        for module in self._holders(name):
            delattr(module, name)
        super().__delattr__(name)


def gather(package_name: str, *modules: types.ModuleType) -> None:
    """Give the package ``package_name`` every top-level name of ``modules`` (its submodules) and
    make it a :class:`Namespace`; an ImportError where two of them bind a name to different objects."""
    package = sys.modules[package_name]
    owners = {}
    for module in modules:
        if not module.__name__.startswith(package_name + "."):
            raise ImportError(f"gather({package_name!r}): {module.__name__} is not one of its submodules")
        for name, value in vars(module).items():
            if name.startswith("__") and name.endswith("__"):
                continue
            mine = vars(package).get(name, _MISSING)
            if mine is not _MISSING and mine is not value and not (
                    isinstance(value, types.ModuleType) and value.__name__ == f"{package_name}.{name}"):
                raise ImportError(f"{package_name}: {module.__name__}.{name} and {owners.get(name, package_name)}"
                                  f".{name} are different objects under one name; rename one of them")
            owners.setdefault(name, module.__name__)
            setattr(package, name, value)
    package.__class__ = Namespace
