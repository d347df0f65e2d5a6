"""The compiled modules and their functions, memoized per file, build, target and device."""
from __future__ import annotations

import os
import threading

import numpy as np

from .. import _env, backend  # backend: read at each call (tests fake CuPy by patching it)
from . import _cuda, _launching, _sim, _sources


_cache: dict = {}
_cache_lock = threading.Lock()
# key -> the lock its one compile holds: threads asking for a module being built wait for it rather
# than build it again (NVRTC takes some 10 s for a tensor-core file).
_compiling: dict = {}


def _forget_compiles():
    # A child forked while another thread compiled would find that module's lock taken for good,
    # and one forked while another thread looked a module up, the table's.
    global _cache_lock
    _cache_lock = threading.Lock()
    _compiling.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_compiles)


def get_module(op_file: str, dtype=np.float32, target: str = "cuda", device: int | None = None,
               tf32: bool = False):
    """The compiled ``kernels/<op_file>.cu`` for ``dtype`` (its TF32 build when ``tf32``) on
    ``target`` ('cuda' or 'sim').

    Memoized per (file, dtype, tf32, target, device). ``get_function(name)`` on the result returns a
    callable ``f(grid, block, args, shared_mem=0)`` on both targets."""
    dt, tf32 = np.dtype(dtype), bool(tf32)
    _sources._build(dt, tf32)
    if target not in ("cuda", "sim"):
        raise ValueError(f"kernel target {target!r}: use 'cuda' (a GPU) or 'sim' (the host simulator)")
    if target == "cuda" and device is None:
        device = backend.require_cupy().cuda.Device().id
    sim_cc = _sim._sim_arch.get() if target == "sim" else None
    key = (op_file, dt, tf32, target, device if target == "cuda" else sim_cc, _env.get("GPUCONV_KERNELS_DIR"),
           _build_switch(op_file, target))
    with _cache_lock:
        mod = _cache.get(key)
        if mod is None:
            compiling = _compiling.setdefault(key, threading.Lock())
    if mod is not None:
        return mod
    with compiling:
        with _cache_lock:
            mod = _cache.get(key)  # built by the thread this one waited for
        if mod is not None:
            return mod
        try:
            src = _sources.build_source(op_file, dt, tf32, sim_sm75=sim_cc == 75)
            if target == "sim":
                mod = _sim._SimModuleHandle(src, f"kernels/{op_file}.cu[{_sources._label(dt, tf32)}"
                                                 f"{', sm_75' if sim_cc == 75 else ''}]")
                mod._module(_sim._sim_options()["sanitize"])  # build now: a compile error surfaces here
            else:
                mod = _cuda._compile_cuda(src, op_file, dt, device, tf32)
        finally:
            with _cache_lock:
                if mod is not None:
                    _cache.setdefault(key, mod)
                _compiling.pop(key, None)  # (after a failure each waiting thread tries, and reports, its own)
    return mod


def _build_switch(op_file, target):
    """What else decides a GPU build of ``op_file``, for the memos' keys: GPUCONV_WGMMA for the
    :data:`ARCH_SPECIFIC` files (:func:`_file_arch`: with it off, the build without wgmma, whose
    entry points trap), None for the rest and on the simulator."""
    return _env.flag("GPUCONV_WGMMA", default=True) if target == "cuda" and op_file in _sources.ARCH_SPECIFIC else None


_functions: dict = {}
# The variables a build depends on, read raw at each launch (gpuconv._env.reader): a change between
# two launches takes effect at the second.
_KERNELS_DIR, _WGMMA = _env.reader("GPUCONV_KERNELS_DIR"), _env.reader("GPUCONV_WGMMA")


def get_function(op_file: str, name: str, dtype, target: str, device: int | None = None, tf32: bool = False):
    """``get_module(op_file, dtype, target, device, tf32).get_function(name)``, memoized: the
    launchers call this once per launch. The memo is looked up first by the arguments as given
    (``dtype`` as passed) and the raw values of GPUCONV_KERNELS_DIR and (a GPU's
    :data:`ARCH_SPECIFIC` files) GPUCONV_WGMMA: one dictionary look-up per launch; a miss makes the
    build's own key (:func:`_build_switch`, the dtype normalized), whose function both keys then hold.
    On 'cuda' ``device`` None is the current GPU, named in the keys: a function is loaded on one GPU."""
    if target == "cuda" and device is None:
        device = backend.require_cupy().cuda.Device().id
    where = device if target == "cuda" else _sim._sim_arch.get()
    fast = None
    if os.environ is _env._environ:
        fast = (op_file, name, dtype, tf32, target, where, _KERNELS_DIR(),
                _WGMMA() if target == "cuda" and op_file in _sources.ARCH_SPECIFIC else None)
        fn = _functions.get(fast)
        if fn is not None:
            return fn
    key = (op_file, name, np.dtype(dtype), bool(tf32), target, where, _env.get("GPUCONV_KERNELS_DIR"),
           _build_switch(op_file, target))
    fn = _functions.get(key)
    if fn is None:  # (threads asking at once all get the one kept: limits raised on it stay with it)
        fn = _functions.setdefault(key, get_module(op_file, dtype, target, device, tf32).get_function(name))
    if fast is not None:
        _functions[fast] = fn
    return fn


_GET_FUNCTION = get_function  # kernels.launch reads the memo itself only while this is the get_function


def clear_cache():
    """Forget compiled modules (the on-disk caches, :func:`cuda_cache_dir` and the simulator's, stay)."""
    with _cache_lock:
        _cache.clear()
        _functions.clear()
        _launching._dynamic_limit.clear()  # keyed by the id of a memoized function
