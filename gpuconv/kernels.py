"""The kernel registry: find a ``kernels/*.cu`` file, build it per dtype, compile it once per
target and device, and hand out callables ``f(grid, block, args, shared_mem=0)``.

Sources. In a checkout the CUDA files live at the repository root (``kernels/``); in an
installed wheel they ship inside the package as ``gpuconv.kernels_src`` (pyproject.toml maps
one onto the other), found with :mod:`importlib.resources`. ``GPUCONV_KERNELS_DIR`` overrides
both (to try an edited kernel without reinstalling).

Translation units. A ``.cu`` file never includes anything (NVRTC has no host headers and the
host simulator compiles the same text with g++); the registry builds::

    typedef float real_t;            // or double: the float64 build for gradient checks
    #line 1 "kernels/common.cuh"
    <common.cuh>
    #line 1 "kernels/<op>.cu"
    <op>.cu

so a compiler message names the kernel's own file and line. Entry points are ``extern "C"``
with the element type fixed by the typedef, one module per dtype, so CuPy needs no
``name_expressions`` (those exist to instantiate C++ templates by name).

Targets. ``'cuda'``: ``cupy.RawModule`` compiled with NVRTC for the device of the arrays, once
per (file, dtype, device) in this process. CuPy also caches the compiled binaries on disk, in
``$CUPY_CACHE_DIR`` (default ``~/.cupy/kernel_cache``): the first run on a machine pays the
NVRTC compile (a fraction of a second per file and dtype with NVRTC 13), later processes
load the cubin. Point ``CUPY_CACHE_DIR`` at a writable directory on read-only or shared home
directories, and clear it after upgrading CUDA if you suspect stale binaries. ``'sim'``: :func:`gpuconv.hostsim.compile`
builds the same text with g++ (cached by source hash) and runs it on the CPU.

Variants. Each kernel family keeps its first simple version beside the tuned one
(``conv2d_forward_v1`` / ``_v2``; ``_v3``, a 128x128-tile candidate for the three conv2d
directions, is selectable but not yet the default). The launchers run :func:`variant` of each
family: the tuned one by default on every target (the simulator runs the production path),
overridden by :func:`set_variant`, the :func:`use_variant` context manager, or the environment variable
``GPUCONV_KERNEL_VARIANTS="conv2d_forward=v1,relu_forward=v1"`` (read at import).

Simulator schedule. :func:`sim_schedule` (a context manager) makes simulator launches run the
threads of each block in reversed order (``'reverse'``), which flushes out races that the
forward order hides; ``sanitize=True`` routes them through the AddressSanitizer build.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import pathlib
import threading

import numpy as np

from . import backend  # attribute access at call time: tests fake CuPy by patching it

KERNEL_FILES = ("conv2d", "pool2d", "relu", "dropout", "augment")
# GPUCONV_BLOCK in common.cuh: the block size of every 1-D grid-stride kernel, which their
# __launch_bounds__ and conv2d_backward_bias's shared reduction are compiled for.
BLOCK = 256
COMMON = "common.cuh"
NVRTC_OPTIONS = ("-std=c++14",)

# family -> (available variants, default). The default is the tuned path on every target. v3
# (128x128 tiles, 256 threads) is selectable; it becomes the default only after a GPU
# measurement (benchmarks/bench_conv2d.py times every variant) shows it faster than v2.
VARIANTS = {
    "conv2d_forward": (("v1", "v2", "v3"), "v2"),
    "conv2d_backward_data": (("v1", "v2", "v3"), "v2"),
    "conv2d_backward_weight": (("v1", "v2", "v3"), "v2"),
    "relu_forward": (("v1", "v2"), "v2"),
    "relu_backward": (("v1", "v2"), "v2"),
}

_DTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


class KernelCompileError(RuntimeError):
    """A kernel file failed to compile; the message holds the compiler's log (file(line): ...)."""


# ----------------------------------------------------------------------------- sources
def kernel_dir() -> pathlib.Path:
    """The directory holding ``common.cuh`` and the ``.cu`` files (checkout, wheel, or override)."""
    override = os.environ.get("GPUCONV_KERNELS_DIR")
    if override:
        path = pathlib.Path(override)
        if not (path / COMMON).is_file():
            raise FileNotFoundError(f"GPUCONV_KERNELS_DIR={override!r} has no {COMMON}: point it at a "
                                    "kernels/ directory or unset it")
        return path
    checkout = pathlib.Path(__file__).resolve().parent.parent / "kernels"
    if (checkout / COMMON).is_file():
        return checkout
    # A wheel: gpuconv/kernels_src/ (no __init__.py, so a namespace package, for which
    # importlib.resources hands back a MultiplexedPath: resolve through the file itself).
    try:
        from importlib import resources
        common = resources.files("gpuconv.kernels_src") / COMMON
        if common.is_file():
            return pathlib.Path(str(common)).parent
    except (ModuleNotFoundError, TypeError, ValueError):
        pass
    packaged = pathlib.Path(__file__).resolve().parent / "kernels_src"
    if (packaged / COMMON).is_file():
        return packaged
    raise FileNotFoundError(
        f"no CUDA kernel sources: looked in {checkout} (a checkout) and in the package "
        "gpuconv.kernels_src (a wheel). Reinstall gpuconv, or set GPUCONV_KERNELS_DIR to a kernels/ directory")


def _read(name: str) -> str:
    path = kernel_dir() / name
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        known = ", ".join(KERNEL_FILES)
        raise FileNotFoundError(f"kernel file {path} does not exist: the kernel files are {known}") from None


def _real_type(dtype) -> str:
    dt = np.dtype(dtype)
    if dt not in _DTYPES:
        raise TypeError(f"kernel dtype {dt} is not supported: the kernels build for float32 and float64; "
                        "convert with x.astype(np.float32)")
    return _DTYPES[dt]


def build_source(op_file: str, dtype=np.float32) -> str:
    """The translation unit for ``kernels/<op_file>.cu`` with ``real_t`` = ``dtype``."""
    stem = op_file[:-3] if op_file.endswith(".cu") else op_file
    return (f"typedef {_real_type(dtype)} real_t;\n"
            f'#line 1 "kernels/{COMMON}"\n{_read(COMMON)}\n'
            f'#line 1 "kernels/{stem}.cu"\n{_read(stem + ".cu")}')


# ----------------------------------------------------------------------------- variants
def _env_variants() -> dict:
    text = os.environ.get("GPUCONV_KERNEL_VARIANTS", "").strip()
    chosen = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        family, sep, var = item.partition("=")
        if not sep:
            raise ValueError(f"GPUCONV_KERNEL_VARIANTS item {item!r} must read family=variant, "
                             "e.g. conv2d_forward=v1")
        _check_variant(family.strip(), var.strip(), "GPUCONV_KERNEL_VARIANTS")
        chosen[family.strip()] = var.strip()
    return chosen


def _check_variant(family, var, where="variant"):
    if family not in VARIANTS:
        raise ValueError(f"{where}: kernel family {family!r} has no variants; families: {', '.join(VARIANTS)}")
    if var not in VARIANTS[family][0]:
        raise ValueError(f"{where}: {family} has variants {', '.join(VARIANTS[family][0])}, not {var!r}")


_variants: contextvars.ContextVar[dict] = contextvars.ContextVar("gpuconv_kernel_variants", default=None)
_ENV_VARIANTS = _env_variants()


def variant(family: str) -> str:
    """The variant the launchers run for ``family`` (e.g. 'conv2d_forward' -> 'v2')."""
    chosen = _variants.get() or {}
    if family in chosen:
        return chosen[family]
    if family in _ENV_VARIANTS:
        return _ENV_VARIANTS[family]
    if family not in VARIANTS:
        raise ValueError(f"kernel family {family!r} has no variants; families: {', '.join(VARIANTS)}")
    return VARIANTS[family][1]


def set_variant(family: str, var: str | None):
    """Run variant ``var`` of ``family`` from now on in this context (None: back to the default)."""
    chosen = dict(_variants.get() or {})
    if var is None:
        chosen.pop(family, None)
    else:
        _check_variant(family, var)
        chosen[family] = var
    _variants.set(chosen)


@contextlib.contextmanager
def use_variant(**families):
    """``with use_variant(conv2d_forward='v1'): ...``"""
    chosen = dict(_variants.get() or {})
    for family, var in families.items():
        _check_variant(family, var)
        chosen[family] = var
    token = _variants.set(chosen)
    try:
        yield
    finally:
        _variants.reset(token)


# ----------------------------------------------------------------------------- simulator options
_sim_opts: contextvars.ContextVar[dict] = contextvars.ContextVar("gpuconv_sim_options", default=None)


@contextlib.contextmanager
def sim_schedule(order: str = "forward", sanitize: bool | None = None):
    """Simulator launches in this block run threads in ``order`` ('forward' | 'reverse'), and
    through the AddressSanitizer/UBSan build when ``sanitize`` (which loads only in a process
    started by :func:`gpuconv.hostsim.run_sanitized`). Outside such a block the simulator's own
    defaults apply: ``$GPUCONV_SIM_SCHEDULE`` and ``$GPUCONV_SIM_SANITIZE``."""
    if order not in ("forward", "reverse"):
        raise ValueError(f"sim_schedule order {order!r}: use 'forward' or 'reverse'")
    token = _sim_opts.set({"reverse": order == "reverse", "sanitize": sanitize})
    try:
        yield
    finally:
        _sim_opts.reset(token)


def _sim_options() -> dict:
    return _sim_opts.get() or {"reverse": None, "sanitize": None}


class _SimModuleHandle:
    """Simulator modules (plain / sanitized, built on first use) with launches honouring
    :func:`sim_schedule`."""

    def __init__(self, source: str, name: str):
        self._source, self._name = source, name
        self._mods = {}  # resolved sanitize flag -> SimModule, kernel errors mapped once
        self._lock = threading.Lock()

    def _module(self, sanitize):
        if sanitize is None:
            sanitize = os.environ.get("GPUCONV_SIM_SANITIZE", "0") not in ("", "0")
        with self._lock:
            mod = self._mods.get(sanitize)
            if mod is None:
                from . import hostsim
                try:
                    mod = self._mods[sanitize] = hostsim.compile(self._source, self._name, sanitize=sanitize)
                except hostsim.CompileError as exc:
                    raise KernelCompileError(
                        f"{self._name} failed to compile for the host simulator:\n{exc}") from None
            return mod

    def get_function(self, name: str):
        def launch(grid, block, args, shared_mem=0):
            opts = _sim_options()
            fn = self._module(opts["sanitize"]).get_function(name)
            return fn(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem, reverse=opts["reverse"])
        launch.__name__ = name
        return launch


_cache: dict = {}
_cache_lock = threading.Lock()


def get_module(op_file: str, dtype=np.float32, target: str = "cuda", device: int | None = None):
    """The compiled ``kernels/<op_file>.cu`` for ``dtype`` on ``target`` ('cuda' or 'sim').

    Memoized per (file, dtype, target, device). ``get_function(name)`` on the result returns a
    callable ``f(grid, block, args, shared_mem=0)`` on both targets."""
    dt = np.dtype(dtype)
    _real_type(dt)
    if target not in ("cuda", "sim"):
        raise ValueError(f"kernel target {target!r}: use 'cuda' (CuPy, a GPU) or 'sim' (the host simulator)")
    if target == "cuda" and device is None:
        device = backend.require_cupy().cuda.Device().id
    key = (op_file, dt, target, device if target == "cuda" else None, os.environ.get("GPUCONV_KERNELS_DIR"))
    with _cache_lock:
        mod = _cache.get(key)
    if mod is not None:
        return mod
    src = build_source(op_file, dt)
    if target == "sim":
        mod = _SimModuleHandle(src, f"kernels/{op_file}.cu[{_DTYPES[dt]}]")
        mod._module(_sim_options()["sanitize"])  # build now: a compile error surfaces here
    else:
        mod = _compile_cupy(src, op_file, dt, device)
    with _cache_lock:
        return _cache.setdefault(key, mod)


def _compile_cupy(src, op_file, dt, device):
    cp = backend.require_cupy()
    with cp.cuda.Device(device):
        mod = cp.RawModule(code=src, options=NVRTC_OPTIONS)
        try:
            mod.compile()  # compile now, so the error surfaces here and not at first launch
        except cp.cuda.compiler.CompileException as exc:
            raise KernelCompileError(
                f"kernels/{op_file}.cu ({_DTYPES[dt]}) failed to compile with NVRTC for device {device}:\n"
                f"{exc.get_message() if hasattr(exc, 'get_message') else exc}") from None
    return mod


_functions: dict = {}


def get_function(op_file: str, name: str, dtype, target: str, device: int | None = None):
    """``get_module(op_file, dtype, target, device).get_function(name)``, memoized: the
    launchers call this once per launch."""
    key = (op_file, name, np.dtype(dtype), target, device, os.environ.get("GPUCONV_KERNELS_DIR"))
    fn = _functions.get(key)
    if fn is None:
        fn = _functions[key] = get_module(op_file, dtype, target, device).get_function(name)
    return fn


def clear_cache():
    """Forget compiled modules (the on-disk caches of CuPy and the simulator stay)."""
    with _cache_lock:
        _cache.clear()
        _functions.clear()


# ----------------------------------------------------------------------------- NVRTC without a GPU
@functools.lru_cache(maxsize=None)
def nvrtc_check(op_file: str, arch: str = "compute_80", dtype=np.float32) -> str:
    """Compile ``kernels/<op_file>.cu`` with NVRTC for ``arch`` (no GPU needed); return the PTX.

    Raises :class:`KernelCompileError` with the compiler log (file(line): message) on failure,
    and ImportError when the NVRTC binding (cupy_backends, the nvidia-cuda-nvrtc wheel) is absent."""
    from cupy_backends.cuda.libs import nvrtc  # raises ImportError without CuPy
    src = build_source(op_file, dtype)
    prog = nvrtc.createProgram(src, f"{op_file}.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", *NVRTC_OPTIONS])
        except nvrtc.NVRTCError as exc:
            raise KernelCompileError(f"kernels/{op_file}.cu ({_real_type(dtype)}, {arch}) failed to compile "
                                     f"with NVRTC ({exc}):\n{nvrtc.getProgramLog(prog)}") from None
        ptx = nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


# ----------------------------------------------------------------------------- launching
# Streaming multiprocessors the launch geometry plans for. On 'cuda' the device's own count; the
# simulator plans for an H100 (132 SMs) so that it takes the same code path (split counts,
# grid-stride trip counts) as the GPU would for the same shapes.
NOMINAL_SMS = 132


@functools.lru_cache(maxsize=None)
def _device_sms(device: int) -> int:
    cp = backend.require_cupy()
    return int(cp.cuda.Device(device).attributes["MultiProcessorCount"])


def sm_count(target: str, device: int | None = None) -> int:
    """SMs to plan a grid for: the device's on 'cuda', NOMINAL_SMS on the simulator."""
    if target == "cuda":
        return _device_sms(0 if device is None else device)
    return NOMINAL_SMS


def grid_1d(n: int, block: int = BLOCK, target: str = "sim", device: int | None = None):
    """(grid, block) for the grid-stride elementwise kernels: one thread per element up to
    32 blocks per SM (beyond that the loop strides; more blocks only add scheduling)."""
    blocks = max(1, min(-(-int(n) // block), 32 * sm_count(target, device)))
    return (blocks, 1, 1), (block, 1, 1)


def launch_1d(op_file: str, kernel: str, target: str, arrays, scalars=(), per_thread: int = 1):
    """A grid-stride elementwise launch: ``kernel(*arrays, int64(n), *scalars)`` with ``n`` the
    element count of ``arrays[0]`` (which also gives the dtype and the device), one thread per
    ``per_thread`` elements (see :func:`grid_1d`). Nothing runs when ``n`` is 0."""
    n = int(arrays[0].size)
    if n == 0:
        return
    device = array_device(arrays[:1])
    grid, block = grid_1d(-(-n // per_thread), BLOCK, target, device)
    launch(op_file, kernel, arrays[0].dtype, target, grid, block, tuple(arrays) + (np.int64(n),) + tuple(scalars),
           device=device)


def contiguous_like(*arrays, outputs: int = 1):
    """``arrays`` made C-contiguous (copies only where needed), then ``outputs`` new empty arrays
    like the first: the inputs and the outputs of an elementwise launch."""
    xp = backend.get_array_module(*arrays)
    arrays = tuple(xp.ascontiguousarray(a) for a in arrays)
    return arrays + tuple(xp.empty_like(arrays[0]) for _ in range(outputs))


def array_device(arrays) -> int | None:
    """The CUDA device id of the first CuPy array in ``arrays`` (None when there is none)."""
    cp = backend.cupy_module()
    if cp is not None:
        ndarray = cp.ndarray  # looked up once: this runs on every launch
        for a in arrays:
            if isinstance(a, ndarray):
                return a.device.id
    return None


def launch(op_file: str, kernel: str, dtype, target: str, grid, block, args, shared_mem=0, device=None):
    """Run ``kernel`` of ``kernels/<op_file>.cu`` on ``target``. On 'cuda' it runs on ``device``
    (default: that of the first CuPy array in ``args``), made current for the launch."""
    if target != "cuda":
        get_function(op_file, kernel, dtype, target)(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem)
        return
    if device is None:
        device = array_device(args)
    fn = get_function(op_file, kernel, dtype, target, device)
    with backend.cupy_module().cuda.Device(device):
        fn(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem)
