"""One namespace over a package's modules, for a module that grew into a package.

``gpuconv.kernels``, ``gpuconv.cli``, ``gpuconv.trainer`` and ``gpuconv.models`` were single modules,
and code (tests above all, with ``monkeypatch.setattr(kernels, "_compute_capability", fake)``) sets
their attributes to change what their functions see. Once the code lives in submodules, such an
assignment to the package alone would change nothing the submodules call: each looks names up in
its own globals, and the patched test would pass for the wrong reason.

:func:`gather` makes the package hold every top-level name of its modules (what they import too,
as the single module did) and its class a :class:`Namespace`, whose assignments and deletions reach
every module that held the name when the package was gathered (so a deletion and the restore after
it reach the same modules), or every module for a builtin none of them defines (a test shadowing
``open``). A name has one meaning across the package: two modules binding it to different objects
is an ImportError, so an assignment can never reach the wrong one.

Reading stays a plain attribute lookup (a launcher's ``kernels.launch`` costs what it did), but for
the ``rebound`` names: the globals a module's own functions rebind (``global x; x = ...``), which a
copy in the package would leave behind; the package reads and writes those in their module.
"""
from __future__ import annotations

import builtins
import sys
import types

_MISSING = object()


class Namespace(types.ModuleType):
    """A package whose attribute assignments reach the modules holding the name (:func:`gather`)."""

    _holders: dict = {}   # name -> the modules that held it when gathered
    _modules: tuple = ()  # every gathered module
    _rebound: dict = {}   # name -> its module, for the globals read through

    def _homes(self, name):
        if name.startswith("__") and name.endswith("__"):
            return ()
        homes = type(self)._holders.get(name)
        if homes is None:
            return type(self)._modules if hasattr(builtins, name) else ()
        return homes

    def __setattr__(self, name, value):
        for module in self._homes(name):
            setattr(module, name, value)
        super().__setattr__(name, value)

    def __delattr__(self, name):
        if name in type(self)._rebound:  # its property deletes it in its module (monkeypatch.delattr)
            return super().__delattr__(name)
        homes = self._homes(name)
        if name not in vars(self) and not any(name in vars(m) for m in homes):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        for module in homes:
            vars(module).pop(name, None)
        vars(self).pop(name, None)

    def __dir__(self):
        return sorted(set(vars(self)) | set(type(self)._rebound))


def _read_through(name, module):
    # A data descriptor on the package's class: it wins over the package's __dict__, and
    # monkeypatch's undo sets back the value it read.
    return property(lambda self: getattr(module, name), lambda self, value: setattr(module, name, value),
                    lambda self: delattr(module, name), doc=f"{module.__name__}.{name}")


def gather(package_name: str, *modules: types.ModuleType, rebound=()) -> None:
    """Give the package ``package_name`` every top-level name of ``modules`` (its submodules) and
    make its class a :class:`Namespace` over them; ``rebound``: the names their functions rebind
    with ``global``, each held by one module and read through to it. An ImportError where two
    modules bind a name to different objects. Gathering again (``importlib.reload`` of the package,
    after reloading its modules) takes the modules' new objects in place of the last gathering's."""
    package = sys.modules[package_name]
    gathered = type(package)._holders if isinstance(package, Namespace) else {}
    holders, seen = {}, {}
    for module in modules:
        if not module.__name__.startswith(package_name + "."):
            raise ImportError(f"gather({package_name!r}): {module.__name__} is not one of its submodules")
        for name, value in vars(module).items():
            if name.startswith("__") and name.endswith("__"):
                continue
            holders.setdefault(name, []).append(module)
            if name in rebound:
                continue
            first = seen.setdefault(name, (module, value))
            mine = vars(package).get(name, _MISSING)
            if first[1] is not value or (mine is not _MISSING and mine is not value and name not in gathered):
                other = first[0].__name__ if first[1] is not value else package_name
                raise ImportError(f"{package_name}: {module.__name__}.{name} and {other}.{name} are different "
                                  "objects under one name; rename one of them (the package is one namespace), or, "
                                  "after importlib.reload of a module, reload the modules that import from it too")
    properties = {}
    for name in rebound:
        homes = holders.get(name, [])
        if len(homes) != 1:
            raise ImportError(f"gather({package_name!r}): rebound name {name!r} must be a global of exactly one "
                              f"module, not of {[m.__name__ for m in homes]}")
        properties[name] = _read_through(name, homes[0])
    for name, (_, value) in seen.items():
        vars(package)[name] = value
    namespace = type("Namespace", (Namespace,), {
        "_holders": {name: tuple(homes) for name, homes in holders.items() if name not in rebound},
        "_modules": tuple(modules), "_rebound": {name: holders[name][0] for name in rebound}, **properties,
        "__module__": __name__, "__doc__": f"The module type of {package_name} (gpuconv._package)."})
    package.__class__ = namespace
