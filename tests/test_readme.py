"""The README's API tour is code a new user pastes first: it must run as written."""
from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def _shown_output(code):
    """The comment lines right after a line that prints: the output the README shows ("..."
    standing for text left out)."""
    lines = code.splitlines()
    return [after.strip()[2:] for line, after in zip(lines, lines[1:])
            if "print(" in line and after.strip().startswith("# ")]


def test_readme_python_blocks_run():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no python example"
    for code in blocks:
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        assert "(H - F + 2P)/S + 1" in out.stdout
        shown = _shown_output(code)
        assert shown, "the example shows no output of a print"
        for expected in shown:
            pattern = ".*".join(re.escape(part.strip()) for part in expected.split("..."))
            assert any(re.fullmatch(f"\\s*{pattern}\\s*", line) for line in out.stdout.splitlines()), \
                f"README shows {expected!r}, the code prints {out.stdout!r}"


def test_readme_quickstart_is_two_make_commands_that_exist():
    text = (REPO / "README.md").read_text()
    quick = text.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert [c.split()[:2] for c in commands] == [["make", "train"], ["make", "test"]]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^train:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_make_test_gives_each_worker_one_blas_thread():
    """With a pytest-xdist worker on every core, a multithreaded OpenBLAS in each spins on the
    oversubscribed cores (a NumPy training test ran 4x slower): make test gives each worker one
    thread, unless the environment names a count; one process (JOBS=0) keeps BLAS's default."""
    def recipe(jobs):
        out = subprocess.run(["make", "-n", "-o", ".venv/.installed", "test", f"JOBS={jobs}"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        assert f"{var}=${{{var}:-1}} " in recipe(2)
    assert "NUM_THREADS" not in recipe(0)


def test_make_test_starts_the_slow_tests_first_and_lets_workers_steal():
    """On 2 cores a sanitizer build started near the end ran alone while the other worker idled:
    make test schedules with work stealing, and the whole suite starts with the tests marked slow
    (in collection order otherwise); named paths keep their order (the GPU battery's own)."""
    import types

    import pytest

    import conftest
    recipe = subprocess.run(["make", "-n", "-o", ".venv/.installed", "test", "JOBS=2"], cwd=REPO,
                            capture_output=True, text=True, timeout=60).stdout
    assert "-n 2 --dist worksteal" in recipe

    class Item:
        def __init__(self, name, slow):
            self.name, self.slow = name, slow

        def get_closest_marker(self, name):
            return object() if name == "slow" and self.slow else None

    def order(source):
        items = [Item("a", False), Item("b", True), Item("c", False), Item("d", True)]
        conftest.pytest_collection_modifyitems(types.SimpleNamespace(args_source=source), items)
        return "".join(i.name for i in items)
    assert order(pytest.Config.ArgsSource.TESTPATHS) == "bdac"
    assert order(pytest.Config.ArgsSource.ARGS) == "abcd"


def test_the_dev_extra_asks_for_the_test_tools_make_test_uses():
    """make test's --dist worksteal is pytest-xdist 3.2's (3.2.1 fixed a hang in it; an older one
    rejects the option), and conftest's ordering reads pytest.Config.ArgsSource, pytest 7.2's: the
    dev extra admits no release without them (an environment holding an older one would be
    upgraded by the install)."""
    import tomllib

    from packaging.requirements import Requirement
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    spec = {r.name: r.specifier for r in map(Requirement, dev)}
    for name, too_old, enough in (("pytest-xdist", "3.2.0", "3.2.1"), ("pytest", "7.1.3", "7.2.0")):
        assert too_old not in spec[name] and enough in spec[name], (name, str(spec[name]))


def _readme_commands():
    """The README's command-line synopsis: each `gpuconv SUB ...` command, its continuation lines
    joined and its comment dropped."""
    text = (REPO / "README.md").read_text()
    block = text.split("## The command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split("#")[0].split() for line in joined.splitlines() if line.startswith("gpuconv ")]


def _subparsers():
    import argparse

    from gpuconv import cli
    action = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_readme_synopsis_shows_the_flags_and_choices_the_command_line_has():
    """Every flag the synopsis shows is one its command takes, with the same choices where the
    parser has a fixed list; train, evaluate and predict show all of theirs."""
    subparsers = _subparsers()
    full = {"train", "evaluate", "predict"}
    shown = {name: set() for name in subparsers}
    for words in _readme_commands():
        name = words[1]
        assert name in subparsers, f"README shows `gpuconv {name}`, which is no command"
        options = {s: a for a in subparsers[name]._actions for s in a.option_strings}
        for flag, value in re.findall(r"(--[a-z][a-z0-9-]*)(?:[ =]([^\s\]]+))?", " ".join(words)):
            assert flag in options, f"README shows `gpuconv {name} {flag}`, which {name} does not take"
            shown[name].add(flag)
            choices = options[flag].choices
            if choices is not None and value and "|" in value:
                assert set(value.split("|")) == set(choices), (name, flag, value, sorted(choices))
    for name in full:
        flags = {s for a in subparsers[name]._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
        assert flags <= shown[name], f"the README's synopsis of `gpuconv {name}` lacks {sorted(flags - shown[name])}"
    # `[--recipe NAME]` lists no names: the section names each recipe that is not a model's (airbench94_muon, ...)
    section = (REPO / "README.md").read_text().split("## The command line", 1)[1].split("\n## ", 1)[0]
    choices = {a.dest: a.choices for a in subparsers["train"]._actions}
    untold = [r for r in choices["recipe"] if r not in choices["model"] and not re.search(rf"`(--recipe )?{r}`", section)]
    assert not untold, f"the README's command-line section does not name the recipes {untold}"


def test_make_install_with_other_extras_replaces_the_installed_ones(tmp_path):
    """The README's GPU step, `make install EXTRAS=dev,cuda12`, after the quickstart's `make train`
    (which installed the default extras, nvrtc's CUDA 13 CuPy) said 'Nothing to be done': the
    stamp was up to date. It now replaces the extras (CuPy's wheels first), once; `make train`
    then keeps them, and a changed pyproject.toml installs those again, not the default ones."""
    import os
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "log"
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    python.chmod(0o755)
    stamp = venv / ".installed"
    stamp.write_text("dev,nvrtc\n")

    def make(*args):
        out = subprocess.run(["make", *args, f"VENV={venv}", f"PYTHON={python}", "JOBS=1"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    make("install", "EXTRAS=dev,cuda12")
    calls = log.read_text().splitlines()
    assert calls[0].startswith("-m pip uninstall") and "cupy-cuda13x" in calls[0]
    assert calls[1:] == ["-m pip install -q -e .[dev,cuda12]"]
    assert stamp.read_text().strip() == "dev,cuda12"
    make("install", "EXTRAS=dev,cuda12")
    assert len(log.read_text().splitlines()) == 2  # installed already: nothing again
    assert "pip" not in make("-n", "train")
    os.utime(stamp, (0, 0))  # older than pyproject.toml
    assert "pip install -q -e '.[dev,cuda12]'" in make("-n", "train")
