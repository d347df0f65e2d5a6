"""gpuconv.cli is a package of parts (_parser, _models, _training, ...) that stays one namespace: a
name set on gpuconv.cli, as the CLI tests' monkeypatches set them, reaches the functions of every
part, and is undone in every part."""
from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpuconv import cli

from conftest import REPO

PACKAGE = Path(cli.__file__).parent
PARTS = sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE)]) if m.name != "__main__")


def _part(name):
    return sys.modules[f"gpuconv.cli.{name}"]


def test_the_parts_reach_each_others_names_through_the_module_never_by_a_from_import():
    """``from ._models import build_model`` in a part copies the function: a later
    monkeypatch.setattr(cli, "build_model", ...) would not reach that part's calls."""
    copies = []
    for name in PARTS:
        path = PACKAGE / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            dotted = "." * node.level + (node.module or "")
            sibling = (node.level == 1 and node.module is not None) or dotted.startswith("gpuconv.cli.")
            names = [a.name for a in node.names if node.level == 1 and node.module is None and a.name not in PARTS]
            if sibling or names or dotted == "gpuconv.cli":
                copies.append(f"{path.name}:{node.lineno}: from {dotted} import "
                              f"{', '.join(a.name for a in node.names)}")
    assert PARTS and "_models" in PARTS and not copies, "\n".join(copies)


def test_a_name_set_on_the_package_reaches_another_parts_callers(monkeypatch, capsys):
    """build_model lives in _models; `gpuconv summary` (in _predict) calls it. A test patches it on
    the package (test_kuangliu_models_on_a_small_subset_get_the_batch_size_note): the call sees the stub."""
    assert cli.cmd_summary.__module__ == "gpuconv.cli._predict" and cli.build_model.__module__ == "gpuconv.cli._models"
    calls = []

    def stub(name, **kwargs):
        calls.append(name)
        raise ValueError("the stub was called")

    monkeypatch.setattr(cli, "build_model", stub)
    assert _part("_models").build_model is stub and cli.build_model is stub
    assert cli.main(["summary", "--model", "seed"]) == 1
    assert calls == ["seed"] and "the stub was called" in capsys.readouterr().err


def test_undoing_a_patch_restores_the_package_and_the_part(capsys):
    original = cli._load_data
    models = _part("_models")
    built = models.build_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "_load_data", lambda *a, **k: None)
        mp.setattr(cli, "build_model", lambda *a, **k: None)
        mp.setattr(cli, "a_name_no_part_holds", 1, raising=False)
        assert _part("_splits")._load_data is not original and models.build_model is not built
        assert not hasattr(_part("_splits"), "a_name_no_part_holds")  # set on the package alone
        mp.delattr(cli, "drop_last")
        assert not hasattr(cli, "drop_last") and not hasattr(models, "drop_last")
    assert cli._load_data is original and _part("_splits")._load_data is original
    assert cli.build_model is built and models.build_model is built
    assert cli.drop_last is models.drop_last and not hasattr(cli, "a_name_no_part_holds")
    assert cli.main(["summary", "--model", "seed"]) == 0 and "total" in capsys.readouterr().out
    with pytest.raises(AttributeError):  # a name nowhere: refused before any part is touched
        del cli.a_name_no_part_holds


def test_every_name_of_every_part_is_the_packages_same_object():
    """What each part defines or imports is gpuconv.cli.<name>, as when the command was one module;
    and no two parts define one name (each definition stands in one place)."""
    defined = {}
    for name in PARTS:
        part = _part(name)
        for key, value in vars(part).items():
            if key.startswith("__"):
                continue
            assert getattr(cli, key) is value, f"gpuconv.cli.{key} is not {name}.{key}"
        for node in ast.parse((PACKAGE / f"{name}.py").read_text()).body:
            targets = ([node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else
                       [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else [])
            for target in targets:
                assert target not in defined, f"{target} is defined in {defined[target]} and {name}"
                defined[target] = name
    for used in ("main", "build_parser", "cmd_train", "_settings", "_say", "_program", "resolve_split",
                 "KUANGLIU_MODELS", "MODEL_DEFAULTS", "RESUMABLE", "PRECISIONS", "EXIT_STOPPED_UNSAVED", "COMMANDS"):
        assert hasattr(cli, used), used


def test_bench_finds_the_checkouts_benchmarks():
    """benchmarks_dir looks beside the package for benchmarks/, three levels up from its own file."""
    assert cli.benchmarks_dir() == REPO / "benchmarks"


def test_python_dash_m_runs_the_command():
    for module in ("gpuconv", "gpuconv.cli"):
        proc = subprocess.run([sys.executable, "-m", module, "--version"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith("gpuconv "), (module, proc.stderr)


def test_a_command_printed_under_python_dash_m_gpuconv_cli_runs_again(monkeypatch, tmp_path):
    """Started as ``python -m gpuconv.cli``, a printed command (the resume hint) is ``python -m
    gpuconv ...``, as under ``python -m gpuconv``: not a bare ``gpuconv`` that PATH may not hold."""
    import types
    monkeypatch.setenv("PATH", str(tmp_path))  # neither gpuconv nor this python on PATH
    monkeypatch.setitem(sys.modules, "__main__",
                        types.SimpleNamespace(__spec__=types.SimpleNamespace(name="gpuconv.cli.__main__")))
    monkeypatch.setattr(sys, "argv", [str(REPO / "gpuconv" / "cli" / "__main__.py"), "train"])
    assert cli._program() == [sys.executable, "-m", "gpuconv"]
