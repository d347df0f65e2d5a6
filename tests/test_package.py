"""gpuconv._package: a package that holds its modules' names as one namespace, where an
assignment through the package (a test's monkeypatch) reaches the module that uses the name."""
import ast
import importlib
import pathlib
import sys
import textwrap
import types
from unittest import mock

import pytest

from gpuconv import _package

# The packages that were single modules and hold their modules' names (gpuconv._package.gather).
GATHERED = ("gpuconv.kernels", "gpuconv.cli", "gpuconv.trainer", "gpuconv.models")


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A package ``toypkg`` over two modules: ``_a`` defines ``f`` and state, ``_b`` imports ``f``
    and calls it from ``g``."""
    root = tmp_path / "toypkg"
    root.mkdir()
    (root / "_a.py").write_text(textwrap.dedent("""
        LIMIT = 3
        def f():
            return "a.f"
        def limit():
            return LIMIT
    """))
    (root / "_b.py").write_text(textwrap.dedent("""
        from ._a import f
        COUNT = 0
        def g():
            return "g:" + f()
        def bump():
            global COUNT
            COUNT += 1
        def reads():
            return open
    """))
    (root / "__init__.py").write_text("from gpuconv import _package\nfrom . import _a, _b\n"
                                      "_package.gather(__name__, _a, _b, rebound=('COUNT',))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("toypkg")
    for name in [n for n in sys.modules if n == "toypkg" or n.startswith("toypkg.")]:
        del sys.modules[name]


def test_a_patch_through_the_package_reaches_every_module_that_holds_the_name(toy, monkeypatch):
    assert toy.g() == "g:a.f"
    monkeypatch.setattr(toy, "f", lambda: "fake")
    assert toy.g() == "g:fake"  # _b's own binding (a from-import) was patched too
    assert toy._a.f() == "fake" and toy.f() == "fake"
    monkeypatch.setattr(toy, "LIMIT", 7)
    assert toy.limit() == 7  # a constant the defining module reads
    monkeypatch.undo()
    assert toy.g() == "g:a.f" and toy._a.f() == "a.f" and toy.limit() == 3


def test_a_name_new_to_the_package_stays_in_the_package_and_deletion_reaches_the_holders(toy, monkeypatch):
    monkeypatch.setattr(toy, "EXTRA", 1, raising=False)
    assert toy.EXTRA == 1 and not hasattr(toy._a, "EXTRA") and not hasattr(toy._b, "EXTRA")
    monkeypatch.undo()
    assert not hasattr(toy, "EXTRA")
    del toy.f
    assert not hasattr(toy._a, "f") and not hasattr(toy._b, "f")


def test_a_deletion_and_its_restore_reach_the_same_modules(toy, monkeypatch):
    monkeypatch.delattr(toy, "f")
    assert not hasattr(toy, "f") and not hasattr(toy._a, "f") and not hasattr(toy._b, "f")
    with pytest.raises(AttributeError, match="has no attribute 'f'"):
        del toy.f
    monkeypatch.undo()
    assert toy.g() == "g:a.f" and toy._a.f is toy.f


def test_a_builtin_shadowed_through_the_package_reaches_every_module(toy, monkeypatch):
    fake = object()
    monkeypatch.setattr(toy, "open", fake, raising=False)
    assert toy.reads() is fake and toy._a.open is fake
    monkeypatch.undo()
    assert toy.reads() is open and "open" not in vars(toy._a) and "open" not in vars(toy)


def test_a_rebound_global_is_read_and_written_in_its_module(toy, monkeypatch):
    toy.bump()
    toy.bump()
    assert toy.COUNT == toy._b.COUNT == 2  # not a copy made at import
    monkeypatch.setattr(toy, "COUNT", 10)
    toy.bump()
    assert toy._b.COUNT == 11 == toy.COUNT
    monkeypatch.undo()
    assert toy.COUNT == toy._b.COUNT == 2 and "COUNT" in dir(toy)


def test_a_rebound_global_is_deleted_in_its_module_and_restored(toy, monkeypatch):
    monkeypatch.delattr(toy, "COUNT")
    assert not hasattr(toy._b, "COUNT") and not hasattr(toy, "COUNT")
    monkeypatch.undo()
    assert toy.COUNT == toy._b.COUNT == 0
    with mock.patch.object(toy, "COUNT", 5):  # not in the package's dict: its exit deletes, then sets back
        assert toy._b.COUNT == 5
    assert toy.COUNT == toy._b.COUNT == 0


def test_reloading_the_modules_then_the_package_takes_the_new_objects(toy):
    old = toy.f
    importlib.reload(toy._a)
    with pytest.raises(ImportError, match=r"toypkg\._b\.f and toypkg\._a\.f are different objects.*reload the "
                                          r"modules that import from it too"):
        importlib.reload(toy)  # _b still holds the f it copied from the old _a
    importlib.reload(toy._b)
    importlib.reload(toy)
    assert toy.f is toy._a.f is toy._b.f is not old and toy.g() == "g:a.f"


def test_one_name_for_two_objects_is_refused_at_import(tmp_path, monkeypatch):
    root = tmp_path / "clashpkg"
    root.mkdir()
    (root / "_a.py").write_text("def helper():\n    return 1\n")
    (root / "_b.py").write_text("def helper():\n    return 2\n")
    (root / "__init__.py").write_text("from gpuconv import _package\nfrom . import _a, _b\n"
                                      "_package.gather(__name__, _a, _b)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ImportError, match=r"clashpkg\._b\.helper and clashpkg\._a\.helper are different objects"):
            importlib.import_module("clashpkg")
    finally:
        for name in [n for n in sys.modules if n.startswith("clashpkg")]:
            del sys.modules[name]


def test_gather_takes_only_the_package_s_own_modules(toy):
    with pytest.raises(ImportError, match="not one of its submodules"):
        _package.gather("toypkg", types)


def _modules(package):
    return [m for m in vars(package).values()
            if isinstance(m, types.ModuleType) and m.__name__.startswith(package.__name__ + ".")]


@pytest.mark.parametrize("name", GATHERED)
def test_gpuconv_s_gathered_packages_hold_each_module_s_names(name):
    package = importlib.import_module(name)
    assert isinstance(package, _package.Namespace)
    modules = _modules(package)
    on_disk = {p.stem for p in pathlib.Path(package.__file__).parent.glob("*.py")} - {"__init__", "__main__"}
    assert {m.__name__.rsplit(".", 1)[1] for m in modules} == on_disk  # every module gathered
    for module in modules:
        for key, value in vars(module).items():
            if not (key.startswith("__") and key.endswith("__")):
                assert getattr(package, key) is value, f"{module.__name__}.{key}"


@pytest.mark.parametrize("name", GATHERED)
def test_every_global_a_module_rebinds_is_read_through(name):
    # The package holds a copy of each binding: a global rebound at run time (``global x; x = ...``)
    # would leave the package's copy, and what a reader of ``package.x`` sees, behind, unless the
    # package reads it in its module (gather's ``rebound``).
    package = importlib.import_module(name)
    rebound = type(package)._rebound
    for path in pathlib.Path(package.__file__).parent.glob("_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Global):
                for global_name in node.names:
                    assert global_name in rebound, f"{path.name}:{node.lineno}: global {global_name} not in rebound"
                    assert rebound[global_name].__name__ == f"{name}.{path.stem}"
                    module = rebound[global_name]
                    assert getattr(package, global_name) is vars(module)[global_name]


def test_a_trainer_patch_reaches_the_module_that_calls_it(monkeypatch):
    # The trainer's progress bar asks _is_terminal (imported into the fit module from _console).
    import gpuconv.trainer as trainer
    fake = lambda stream: True  # noqa: E731
    monkeypatch.setattr(trainer, "_is_terminal", fake)
    assert trainer._fit._is_terminal is fake
    monkeypatch.undo()
    from gpuconv._console import _is_terminal
    assert trainer._fit._is_terminal is _is_terminal and trainer._is_terminal is _is_terminal
