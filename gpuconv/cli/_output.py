"""The command's own messages: ``_say`` (a line on the console, beside the results on stdout) and
``_program`` (the words a printed command starts with, to be pasted back)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .._console import CONSOLE


def _say(*parts):
    print(*parts, file=CONSOLE, flush=True)


def _program():
    """The words that run this gpuconv again, for a command printed to be pasted: ``gpuconv`` where
    the shell finds this very script by that name; else the path it was started by (``make train``
    runs ``.venv/bin/gpuconv``, which no activated environment has put on PATH: a bare ``gpuconv``
    would not be found, or would be another install's); ``python -m gpuconv`` with this interpreter
    when it was started so (or as ``python -m gpuconv.cli``). Called from Python (``main(argv)``): ``gpuconv``."""
    def found_as(path):  # (abspath, not realpath: a venv's python links to the one outside it)
        on_path = shutil.which(Path(path).name)
        same = on_path and os.path.normcase(os.path.abspath(on_path)) in {
            os.path.normcase(os.path.abspath(path) + ext) for ext in ("", ".exe")}  # (Windows: gpuconv.EXE)
        return Path(path).name if same else str(path)

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name in ("gpuconv.__main__", "gpuconv.cli.__main__") and sys.executable:
        return [found_as(sys.executable), "-m", "gpuconv"]
    script = sys.argv[0] if sys.argv else ""
    # (pip's Windows launcher, gpuconv.exe, gives its path without '.exe': the shells run it so)
    if Path(script).stem == "gpuconv" and (os.path.isfile(script) or os.path.isfile(script + ".exe")):
        return [found_as(script)]
    return ["gpuconv"]
