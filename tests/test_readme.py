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
