"""g++ invocation and the on-disk build cache (one shared object per source hash)."""
from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

from .._files import write_atomic
from ._errors import CompileError

HEADER = pathlib.Path(__file__).with_name("cuda_sim.h")
RUNTIME = pathlib.Path(__file__).with_name("cuda_sim_runtime.h")
# -fno-strict-aliasing: kernels read float arrays through float4 pointers, as CUDA code does.
BASE_FLAGS = ("-O2", "-shared", "-fPIC", "-std=c++17", "-fno-strict-aliasing", "-fvisibility=hidden")
# -O1 -g keeps ASan reports readable; -fsanitize-sections gives static __shared__ arrays
# redzones, so an overrun of a shared tile is reported like one of a global array.
SANITIZE_FLAGS = ("-O1", "-g", "-shared", "-fPIC", "-std=c++17", "-fno-strict-aliasing", "-fvisibility=hidden",
                  "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all",
                  "-fsanitize-sections=gpuconv_shared")

stats = {"compiles": 0, "disk_hits": 0}


def cache_dir() -> pathlib.Path:
    """$GPUCONV_SIM_CACHE, else ~/.cache/gpuconv/hostsim."""
    env = os.environ.get("GPUCONV_SIM_CACHE")
    path = pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "gpuconv" / "hostsim"
    path.mkdir(parents=True, exist_ok=True)
    return path


def compiler() -> str:
    cxx = os.environ.get("GPUCONV_SIM_CXX", "g++")
    if shutil.which(cxx) is None:
        raise CompileError(f"the host simulator needs a C++17 compiler, and {cxx!r} is not on PATH: install g++ "
                           "(apt-get install g++) or set GPUCONV_SIM_CXX to one")
    return cxx


@functools.lru_cache(maxsize=None)
def _compiler_id(cxx: str) -> str:
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True)
    return out.stdout.splitlines()[0] if out.stdout else cxx


def flags(sanitize: bool, options=()) -> list[str]:
    return [*(SANITIZE_FLAGS if sanitize else BASE_FLAGS), *options, "-include", str(HEADER)]


def build(text: str, name: str, sanitize: bool, options=()) -> tuple[pathlib.Path, bool]:
    """Compiles `text` (a whole translation unit) to a shared object; returns (path, was_cached)."""
    cxx = compiler()
    opts = [str(o) for o in options]
    key = hashlib.sha256("\0".join([
        "gpuconv-hostsim-1", _compiler_id(cxx), *flags(sanitize, opts), HEADER.read_text(), RUNTIME.read_text(), text,
    ]).encode()).hexdigest()[:20]
    stem = re.sub(r"[^\w.-]", "_", name)[:60] + ("-asan" if sanitize else "") + "-" + key
    root = cache_dir()
    so = root / f"{stem}.so"
    if so.exists():
        stats["disk_hits"] += 1
        return so, True
    src = root / f"{stem}.cu"
    write_atomic(src, text.encode())
    fd, tmp = tempfile.mkstemp(prefix=stem, suffix=".so.tmp", dir=root)
    os.close(fd)
    cmd = [cxx, *flags(sanitize, opts), "-x", "c++", str(src), "-o", tmp]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise CompileError(f"g++ failed to compile {name!r} for the host simulator "
                               f"(source kept at {src}):\n{res.stderr.strip()}", res.stderr)
        os.replace(tmp, so)  # atomic: a concurrent process sees no half-written library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    stats["compiles"] += 1
    return so, False

