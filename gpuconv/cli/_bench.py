"""``gpuconv bench``: a script of a source checkout's benchmarks/ run as ``python benchmarks/bench_NAME.py``."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

from . import _output


def benchmarks_dir() -> Path | None:
    here = Path(__file__).resolve().parent.parent.parent / "benchmarks"  # (this file: gpuconv/cli/_bench.py)
    return here if here.is_dir() else None


def cmd_bench(args) -> int:
    from .. import backend
    bdir = benchmarks_dir()
    available = sorted(p.stem[len("bench_"):] for p in bdir.glob("bench_*.py")) if bdir else []
    if not available:
        _output._say("gpuconv bench runs the scripts in benchmarks/ of a source checkout, and none was found next to "
                     f"the installed package ({Path(__file__).resolve().parent.parent}). Clone the repository and run "
                     "`gpuconv bench` (or `python benchmarks/bench_cpu.py`) from there.")
        return 2
    name = args.name or ("conv2d" if backend.cuda_available() and "conv2d" in available else "cpu")
    name = name[len("bench_"):] if name.startswith("bench_") else name.removesuffix(".py")
    if name not in available:
        _output._say(f"no benchmark {name!r} in {bdir}; available: {', '.join(available)}")
        return 2
    script = bdir / f"bench_{name}.py"
    old_argv = sys.argv
    sys.argv = [str(script), *[a for a in args.args if a != "--"]]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
    return 0
