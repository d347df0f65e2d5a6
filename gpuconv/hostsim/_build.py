"""g++ invocation and the on-disk build cache (one shared object per source hash)."""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

from .. import _files
from .._files import (NOFOLLOW, WRITE_FIXES, make_dirs, new_file_mode, private_temp_dir, restated, trusted_binary,
                      untrusted_cache_dir, write_atomic)
from ._errors import CompileError

HEADER = pathlib.Path(__file__).with_name("cuda_sim.h")
RUNTIME = pathlib.Path(__file__).with_name("cuda_sim_runtime.h")
# -fno-strict-aliasing: kernels read float arrays through float4 pointers, as CUDA code does.
# -ffp-contract=off: the simulator's __fmul_rn/__dmul_rn (mul_rn) are plain products, which g++
# would fuse with an add into one FMA wherever the target has one (aarch64 always, x86-64 with
# -mfma): GCC's default for C++ is -ffp-contract=fast. Off, every product is rounded on its own,
# as mul_rn promises on a GPU and the NumPy references compute.
BASE_FLAGS = ("-O2", "-shared", "-fPIC", "-std=c++17", "-fno-strict-aliasing", "-ffp-contract=off",
              "-fvisibility=hidden")
# -Og -g1 keeps ASan reports readable: -g1's line tables give every frame its file and line, as
# full -g does, at about 30% less compile time (no types or locals: a debugger's, not a report's).
# -Og compiles in 60% of -O1's time (conv2d_tc: 5.5 s against 9.5 s) and runs as fast under the
# sanitizers to within 10%; -O0 compiles faster still but runs every kernel about twice as long;
# -fsanitize-sections gives static __shared__ arrays
# redzones, so an overrun of a shared tile is reported like one of a global array.
SANITIZE_FLAGS = ("-Og", "-g1", "-shared", "-fPIC", "-std=c++17", "-fno-strict-aliasing", "-ffp-contract=off",
                  "-fvisibility=hidden",
                  "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all",
                  "-fsanitize-sections=gpuconv_shared")

stats = {"compiles": 0, "disk_hits": 0}

# The cache's own files: builds (<name>-<key>[-u<uid>].so and their .cu sources) and what a killed
# build leaves behind (mkstemp's <name>-<key>XXXXXXXX.so.tmp, write_atomic's .<file>.XXXXXXXX.tmp).
CACHE_FILES = re.compile(r"^\.?[\w.-]+-[0-9a-f]{20}(-u\d+)?(\.(so|cu)(\.\w+\.tmp)?|\w*\.so\.tmp)$")


_fallback_warned = False
_SPARE = "gpuconv-hostsim"  # the private temporary directory of the builds the cache could not take
# Cache directories a build could not write into though they looked writable (a full disk, a quota):
# path -> why. The rest of the process builds in the spare directory.
_unwritable: dict = {}


def cache_dir() -> pathlib.Path:
    """$GPUCONV_SIM_CACHE, else ~/.cache/gpuconv/hostsim; where that cannot be written (a read-only
    home, no home at all, a file in the way, a full disk), a directory of this user's under the
    system's temporary one, with a warning (once) that names the variable."""
    global _fallback_warned
    env = os.environ.get("GPUCONV_SIM_CACHE")
    try:
        path = pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "gpuconv" / "hostsim"
        make_dirs(path)
        problem = _unwritable.get(path) or untrusted_cache_dir(path) or (
            None if os.access(path, os.W_OK | os.X_OK) else f"{path} is not writable")
        if problem is None:
            return path
    except (OSError, RuntimeError) as exc:  # RuntimeError: Path.home() without a home directory
        problem = f"{env or '~/.cache/gpuconv/hostsim'}: {exc}"
    fallback = private_temp_dir(_SPARE)
    if not _fallback_warned:
        _fallback_warned = True
        import warnings
        warnings.warn(f"gpuconv: the simulator's build cache cannot be used ({problem}); building in {fallback} "
                      "instead. Set GPUCONV_SIM_CACHE to a writable directory", RuntimeWarning, stacklevel=3)
    return fallback


# Mach-O and PE: no __start_/__stop_ symbols for the shared-memory section (section names need a
# segment on macOS), and on Windows no ucontext fibers or mmap'd stacks either.
_NOT_ELF_PLATFORMS = ("darwin", "win32", "cygwin", "msys")


def compiler() -> str:
    if sys.platform.startswith(_NOT_ELF_PLATFORMS):
        raise CompileError(f"the host simulator runs on Linux (it builds the kernels as ELF shared objects with "
                           f"ucontext fibers), not on {sys.platform}: use device 'cpu' (the NumPy reference) or "
                           "'cuda' here, and the simulator on Linux (on Windows: in WSL2)")
    cxx = os.environ.get("GPUCONV_SIM_CXX", "g++")
    if shutil.which(cxx) is None:
        raise CompileError(f"the host simulator needs a C++17 compiler, and {cxx!r} is not on PATH: install g++ "
                           "(apt-get install g++) or set GPUCONV_SIM_CXX to one")
    return cxx


@functools.lru_cache(maxsize=None)
def _compiler_id(cxx: str) -> str:
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True, env=compiler_env())
    return out.stdout.splitlines()[0] if out.stdout else cxx


# The sanitizer runtimes a sanitized run preloads into its python (hostsim.sanitizer_env): g++
# inherits LD_PRELOAD, and cc1plus with ASan's allocator interposed compiles 1.6-1.9x slower
# (conv2d.cu: 5.9 s -> 9.5 s), which was about 70 s of every sanitized test run.
_SANITIZER_RUNTIMES = re.compile(r"^lib(asan|ubsan)\.so(\.\d+)*$")


def compiler_env() -> dict:
    """This process's environment for the compiler, without the sanitizer runtimes in LD_PRELOAD
    (any other preload stays)."""
    env = dict(os.environ)
    if "LD_PRELOAD" in env:
        kept = [p for p in re.split(r"[\s:]+", env["LD_PRELOAD"])
                if p and not _SANITIZER_RUNTIMES.match(os.path.basename(p))]
        if kept:
            env["LD_PRELOAD"] = " ".join(kept)
        else:
            del env["LD_PRELOAD"]
    return env


def flags(sanitize: bool, options=(), header=None) -> list[str]:
    """g++'s flags; ``header``: what -include names instead of the simulator header's path."""
    return [*(SANITIZE_FLAGS if sanitize else BASE_FLAGS), *options, "-include", str(HEADER if header is None else header)]


def build(text: str, name: str, sanitize: bool, options=(), rebuild: bool = False) -> tuple[pathlib.Path, bool]:
    """Compiles `text` (a whole translation unit) to a shared object; returns (path, was_cached).
    ``rebuild``: the cached one would not load (truncated by a killed process, unreadable): build it
    again, in place where the cache lets us replace it, else into a file of our own."""
    cxx = compiler()
    limit = _files.cache_limit()  # (a bad $GPUCONV_CACHE_LIMIT_MB is an error before the compile, not after)
    opts = [str(o) for o in options]
    # The key holds the headers' text, not their path: every checkout of the same code (a CI's
    # fresh clone, a second working copy) finds the builds another one made, instead of compiling
    # every kernel file again (minutes of g++ for the test suite).
    key = hashlib.sha256("\0".join([
        "gpuconv-hostsim-1", _compiler_id(cxx), *flags(sanitize, opts, HEADER.name), HEADER.read_text(),
        RUNTIME.read_text(), text,
    ]).encode()).hexdigest()[:20]
    stem = re.sub(r"[^\w.-]", "_", name)[:60] + ("-asan" if sanitize else "") + "-" + key
    root = cache_dir()
    spare = private_temp_dir(_SPARE, create=False)  # where a process put what a full cache refused
    for so in [root / f"{stem}.so"] + ([spare / f"{stem}.so"] if spare not in (None, root) else []):
        if not rebuild and trusted_binary(so):
            stats["disk_hits"] += 1
            _files.mark_used(so)
            return so, True
    try:
        with _building(root, stem):
            if not rebuild and trusted_binary(root / f"{stem}.so"):  # built by another process meanwhile
                stats["disk_hits"] += 1
                _files.mark_used(root / f"{stem}.so")
                return root / f"{stem}.so", True
            return _build_in(root, stem, text, name, [cxx, *flags(sanitize, opts)], limit, rebuild)
    except OSError as exc:  # a cache that looked writable and is not (a full disk): the spare one, once
        why = exc.strerror or str(exc)
        if root != private_temp_dir(_SPARE):
            _unwritable[root] = f"{root}: {why}"
            return build(text, name, sanitize, options, rebuild)
        tried = [p for p in _unwritable if p != root]
        fix = WRITE_FIXES.get(exc.errno, "make it writable to you")
        raise restated(exc, f"the host simulator could not write its build of {name!r} into "
                            f"{tried[-1] if tried else root} ({why})" + (f", nor into {root}" if tried else "")
                            + f": {fix}, or set GPUCONV_SIM_CACHE to a directory with room") from exc


@contextlib.contextmanager
def _building(root: pathlib.Path, stem: str):
    """Holds the build's lock (``flock`` on a file beside it) for the block: processes that need the
    same build at once (pytest-xdist workers, a benchmark's subprocess) compile it once, the others
    waiting for it and then loading it. Where the lock cannot be had (no fcntl, another user's lock
    file, a file system without locks), the block runs without it: at worst two processes compile
    the same build."""
    lock = root / f".{stem}.so.lock.tmp"  # (a name CACHE_FILES matches: a killed build's is pruned)
    try:
        import fcntl
        fd = os.open(lock, os.O_CREAT | os.O_RDWR | NOFOLLOW, 0o600)
    except (ImportError, OSError):
        fd = None
    if fd is None:  # (the block runs outside the except: its errors are not told as raised while handling this one)
        yield
        return
    try:
        with contextlib.suppress(OSError):  # (a file system without locks: built without one)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # a waiter holding it finds the library built; a later process, the library
        os.close(fd)


def _build_in(root: pathlib.Path, stem: str, text: str, name: str, cmd: list, limit,
              rebuild: bool) -> tuple[pathlib.Path, bool]:
    """:func:`build`'s work in the cache directory ``root``: an OSError where it cannot be written."""
    so = root / f"{stem}.so"
    # A library there that another user could have put or changed is never loaded: this user's own
    # build goes beside it, under a name of this user's (a sticky shared cache: one per user).
    mine = root / f"{stem}-u{_files._uid()}.so"
    if os.path.lexists(so) and not trusted_binary(so):
        if not rebuild and trusted_binary(mine):
            stats["disk_hits"] += 1
            _files.mark_used(mine)
            return mine, True
        so = mine
    src = so.with_suffix(".cu")
    try:
        write_atomic(src, text.encode())
    except PermissionError:  # another user's source in a sticky shared directory
        so = mine
        src = so.with_suffix(".cu")
        write_atomic(src, text.encode())
    fd, tmp = tempfile.mkstemp(prefix=stem, suffix=".so.tmp", dir=root)
    os.close(fd)
    cmd = [*cmd, "-x", "c++", str(src), "-o", tmp]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=compiler_env())
        full = [e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e and os.strerror(e) in res.stderr]
        if res.returncode != 0 and full:  # g++ could not write its output: the disk's fault, not the kernel's
            said = next(line for line in res.stderr.splitlines() if os.strerror(full[0]) in line)
            raise OSError(full[0], f"{os.strerror(full[0])} (g++: {said.strip()})")
        if res.returncode != 0:
            raise CompileError(f"g++ failed to compile {name!r} for the host simulator "
                               f"(source kept at {src}):\n{res.stderr.strip()}", res.stderr)
        os.chmod(tmp, new_file_mode(executable=True))  # not mkstemp's 0600: a shared cache's users load it
        try:
            os.replace(tmp, so)  # atomic: a concurrent process sees no half-written library
        except PermissionError:  # another user's library in a sticky shared directory: ours beside it
            so = mine
            os.replace(tmp, so)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    stats["compiles"] += 1
    _files.prune_cache(root, CACHE_FILES, limit)
    return so, False

