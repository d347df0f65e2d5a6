"""Running kernels under AddressSanitizer/UBSan: in a subprocess whose python starts with
libasan (and libubsan) preloaded, since an ASan-built library cannot load into a plain process."""
from __future__ import annotations

import functools
import os
import pathlib
import re
import subprocess
import sys
import typing

from ._build import compiler
from ._errors import CompileError

_PACKAGE_ROOT = pathlib.Path(__file__).resolve().parents[2]


class SanitizedResult(typing.NamedTuple):
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def location(self) -> str | None:
        """'kernel K, block (x,y,z) thread (x,y,z)' from the simulator's report, if any."""
        m = re.search(r"gpuconv hostsim: .*?(kernel \S+, block \([\d,]+\) thread \([\d,]+\))", self.stderr)
        return m.group(1) if m else None


def asan_loaded() -> bool:
    try:
        return "libasan" in pathlib.Path("/proc/self/maps").read_text()
    except OSError:
        return False


@functools.lru_cache(maxsize=None)
def _runtime(lib: str) -> str:
    out = subprocess.run([compiler(), f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
    if not out or not os.path.isabs(out) or not os.path.exists(out):
        raise FileNotFoundError(f"{compiler()} does not ship {lib} (got {out!r}); install the sanitizer runtimes "
                                "(apt-get install libasan8 libubsan1, which come with g++)")
    return out


def sanitizer_env(base: dict | None = None) -> dict:
    """The environment for a python process that runs sanitized kernels."""
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = " ".join([_runtime("libasan.so"), _runtime("libubsan.so"), env.get("LD_PRELOAD", "")]).strip()
    # Python's own allocations are never freed at exit: leak reports would drown the kernel's.
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:abort_on_error=0:handle_segv=1:" + env.get("ASAN_OPTIONS", "")
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1:" + env.get("UBSAN_OPTIONS", "")
    env["GPUCONV_SIM_SANITIZE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")]))
    return env


def sanitizers_available() -> bool:
    """True when the simulator's compiler (g++, or $GPUCONV_SIM_CXX) and its ASan/UBSan runtimes
    are installed: what run_sanitized needs."""
    try:
        sanitizer_env()  # finds the compiler, then asks it for both runtimes
    except (OSError, CompileError):
        return False
    return True


def run_sanitized(code: str, *, timeout: float = 600, reverse: bool = False, cwd=None) -> SanitizedResult:
    """Runs the Python snippet `code` in a subprocess with ASan/UBSan active: every
    hostsim.compile there builds sanitized. Returns (returncode, stdout, stderr); a kernel's
    out-of-bounds access ends the process nonzero with ASan's report and a line
    'gpuconv hostsim: ... kernel K, block (x,y,z) thread (x,y,z)'."""
    env = sanitizer_env()
    if reverse:
        env["GPUCONV_SIM_SCHEDULE"] = "reverse"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    return SanitizedResult(proc.returncode, proc.stdout, proc.stderr)
