"""The host simulator: CUDA C kernels compiled with g++ and run on the CPU, called the way a
CuPy RawKernel is called.

    mod = hostsim.compile(source, name="conv2d")        # cached by source hash
    fn = mod.get_function("conv2d_forward_v1")
    fn(grid, block, (x, w, y, np.int32(n)), shared_mem=0, reverse=False)

Design (the project guide's section 4, on the simulator):
- g++ builds the translation unit as C++17 with ``cuda_sim.h`` force-included; that header maps
  ``__global__``/``__device__``/``__shared__``/``threadIdx``... onto plain C++. Python finds the
  ``extern "C" __global__`` kernels and appends an entry point per kernel that unpacks a
  ``void*`` argument array, and one that reports the parameter types as the compiler resolved
  them (so the argument checks see through typedefs such as ``storage_t``; a struct element
  type that names its NumPy dtype, as ``bf16_t`` does, is checked as that dtype).
- Blocks run one after another. Each thread of a block is a fiber with its own mmap'd stack
  and a guard page; a fiber runs until ``__syncthreads``, a warp collective or its end, so a
  kernel without barriers costs two switches (~5 ns each on x86-64) per thread. Warps run one
  at a time, each as far as it gets before a barrier (its collectives released as soon as its
  lanes arrive), so one warp reads another's unsynchronized shared-memory writes as poison.
- ``__syncthreads`` is a counting barrier. When no thread can run, either all wait at the same
  barrier (released), or some returned or wait elsewhere: ``BarrierDivergence`` naming the
  block, the threads and the line -- never a hang.
- ``__shared__`` is static storage in the ``gpuconv_shared`` section, filled with 0xFF (NaN for
  floats, -1 for ints) before each block, as is the dynamic shared buffer; a read that a
  missing barrier leaves unordered sees poison. ``reverse=True`` (or
  ``GPUCONV_SIM_SCHEDULE=reverse``) runs the threads last-first, exposing the other half of
  such races, and the blocks last-first (a kernel whose last block to arrive finishes a
  reduction then meets block 0 as the last).
- Warp shuffles/ballots park each lane's value in an exchange slot; the lanes of the mask are
  released together. Atomics are plain read-modify-writes (fibers never preempt).
- ``.sync.aligned`` warp instructions (mma.sync, ldmatrix; kernels/mma.cuh) run once over all
  32 lanes' operands when the whole warp waits at the same one; fewer lanes (exited, at a
  barrier, at another line, a short warp) is ``BarrierDivergence`` naming the instruction.
  cp.async copies are queued per thread and land at the wait that retires their group; the
  destination is poison from issue to that wait.
- The async proxy (wgmma's operand reads, kernels/wgmma.cuh): a unit that maps it tracks, per
  shared byte, the threads its last generic-proxy write (a store, a landed cp.async) may be from
  (memory compared with a shadow copy after each pass over a warp; a thread gives control back at
  ``fence.proxy.async``, so a pass ends its run there) and the barrier interval in which they had
  all fenced it; an ``mma_async`` reading a byte that no fence by its writer and a later
  ``__syncthreads`` published is a ``SimulatorError`` naming the kernel, the address, the threads
  and the fence. A kernel's first launch learns whether it uses the proxy; the comparisons make
  the wgmma kernels about 1.3-1.5x slower.
- g++ ignores the section attribute of a template's static locals, so every ``__shared__``
  variable is also registered after its declaration (source rewrite) and poisoned the same way.
- Arguments are checked against the kernel's signature with CuPy's conversion rules: arrays
  must be C-contiguous NumPy arrays of the pointee's dtype; scalars NumPy scalars of the exact
  type, Python int only for 64-bit integers, Python float only for double (CuPy passes Python
  scalars as int64/float64 whatever the kernel declares).
- ``compile(..., sanitize=True)`` builds with ASan/UBSan and fiber-switch annotations; such a
  module loads only in a process started by ``run_sanitized`` (libasan preloaded), which
  reports an out-of-bounds access with the kernel, block and thread named.

Environment: GPUCONV_SIM_CACHE (build cache, default ~/.cache/gpuconv/hostsim; it keeps under
GPUCONV_CACHE_LIMIT_MB, default 2048, 0 for no limit, dropping the builds used longest ago), GPUCONV_SIM_CXX
(compiler, default g++), GPUCONV_SIM_STACK (fiber stack, default 64k), GPUCONV_SIM_SCHEDULE
(forward|reverse), GPUCONV_SIM_SANITIZE=1 (every compile sanitized; set by run_sanitized).
"""
from __future__ import annotations

import os
import threading

from .. import _env
from . import _build, _source
from ._build import cache_dir, stats
from ._errors import BarrierDivergence, CompileError, SimulatorError
from ._launch import MAX_DYNAMIC_SHARED, ArgType, SimKernel, SimModule
from ._sanitize import SanitizedResult, asan_loaded, run_sanitized, sanitizer_env, sanitizers_available

__all__ = ["compile", "SimModule", "SimKernel", "ArgType", "CompileError", "BarrierDivergence",
           "SimulatorError", "run_sanitized", "SanitizedResult", "sanitizer_env", "sanitizers_available", "cache_dir", "stats",
           "parse_kernels", "MAX_DYNAMIC_SHARED"]

parse_kernels = _source.parse_kernels
_modules: dict[tuple, SimModule] = {}
_modules_lock = threading.Lock()


def _unlock_after_fork():
    # A compile in another thread holds the lock for seconds (g++); a child forked meanwhile would
    # find it taken for good. The table itself is whole (a module goes in once built).
    global _modules_lock
    _modules_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_unlock_after_fork)


def compile(source: str, name: str = "module", sanitize: bool | None = None, options=()) -> SimModule:  # noqa: A001
    """Builds `source` (a whole translation unit) for the host simulator, or reuses the cached
    build of the same source, options, header and compiler. `sanitize` None follows
    $GPUCONV_SIM_SANITIZE."""
    if not isinstance(source, str):
        raise TypeError(f"source must be the kernel text as a str, got {type(source).__name__}")
    if sanitize is None:
        sanitize = _env.flag("GPUCONV_SIM_SANITIZE")
    if sanitize and not asan_loaded():
        raise SimulatorError(
            "a sanitized module (sanitize=True) loads only in a process whose first library is ASan's runtime; "
            "run the code through hostsim.run_sanitized(code), which starts python with LD_PRELOAD=libasan")
    # Keyed on the source itself, before any work: the parse and rewrite below cost ~8 ms for
    # conv2d.cu and the generated text is a function of the source alone; a str caches its
    # hash, so a repeated call with the same text is a dict lookup. (The disk cache also keys
    # on the header and the compiler, which do not change within a process.)
    key = (source, tuple(str(o) for o in options), bool(sanitize))
    with _modules_lock:
        mod = _modules.get(key)
        if mod is None:
            kernels = _source.parse_kernels(source)
            text = _source.rewrite(source) + _source.glue(kernels)
            path, cached = _build.build(text, name, bool(sanitize), options)
            try:
                mod = SimModule(path, name, kernels, bool(sanitize), cached)
            except OSError:  # a cached library that does not load (truncated, unreadable): built again
                if not cached:
                    raise
                path, cached = _build.build(text, name, bool(sanitize), options, rebuild=True)
                mod = SimModule(path, name, kernels, bool(sanitize), cached)
            _modules[key] = mod
    return mod
