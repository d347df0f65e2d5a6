"""The host simulator's options (:func:`sim_schedule`, :func:`sim_arch`) and its modules, built on
first use (see the package's docstring, "Simulator schedule")."""
from __future__ import annotations

import contextlib
import contextvars
import os
import threading

from .. import _env
from . import _sources


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


# The compute capability the simulator stands for (None: every instruction, wgmma included).
SIM_ARCHS = (75,)
_sim_arch: contextvars.ContextVar = contextvars.ContextVar("gpuconv_sim_arch", default=None)


@contextlib.contextmanager
def sim_arch(cc: int | None):
    """Simulator launches in this block build and run as on a GPU of compute capability ``cc``
    (75: the sm_75 forms of kernels/mma.cuh, float16 tensor cores only, no wgmma; the registry
    then routes bfloat16 and TF32 convolutions to the CUDA-core tiles and wgmma tiles to their
    mma.sync fallbacks, as on a T4); None: the full simulator."""
    if cc is not None and cc not in SIM_ARCHS:
        raise ValueError(f"sim_arch {cc!r}: the simulator builds for compute capability "
                         f"{', '.join(map(str, SIM_ARCHS))} or None (every instruction)")
    token = _sim_arch.set(cc)
    try:
        yield
    finally:
        _sim_arch.reset(token)


class _SimModuleHandle:
    """Simulator modules (plain / sanitized, built on first use) with launches honouring
    :func:`sim_schedule`."""

    def __init__(self, source: str, name: str):
        self._source, self._name = source, name
        self._mods = {}  # resolved sanitize flag -> SimModule, kernel errors mapped once
        self._lock = threading.Lock()

    def _module(self, sanitize):
        if sanitize is None:
            sanitize = _sanitize_default()
        mod = self._mods.get(sanitize)  # every launch asks: no lock (a fork could find it held)
        if mod is not None:
            return mod
        with self._lock:
            mod = self._mods.get(sanitize)
            if mod is None:
                from .. import hostsim
                try:
                    mod = self._mods[sanitize] = hostsim.compile(self._source, self._name, sanitize=sanitize)
                except hostsim.CompileError as exc:
                    raise _sources.KernelCompileError(
                        f"{self._name} failed to compile for the host simulator:\n{exc}") from None
            return mod

    def get_function(self, name: str):
        kernels = {}  # resolved sanitize flag -> the kernel of that module (each module's own, made once)

        def launch(grid, block, args, shared_mem=0):
            opts = _sim_opts.get()  # (_sim_options, read without its call and its default's dict per launch)
            sanitize, reverse = (None, None) if opts is None else (opts["sanitize"], opts["reverse"])
            if sanitize is None:
                sanitize = _sanitize_default()
            fn = kernels.get(sanitize)
            if fn is None:
                fn = kernels[sanitize] = self._module(sanitize).get_function(name)
            return fn(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem, reverse=reverse)
        launch.__name__ = name
        return launch


# $GPUCONV_SIM_SANITIZE, read at every launch: its raw value -> its reading (env.flag's, parsed once)
_SANITIZE_RAW = _env.reader("GPUCONV_SIM_SANITIZE")
_sanitize_flags: dict = {}


def _sanitize_default() -> bool:
    """$GPUCONV_SIM_SANITIZE as a yes/no setting (:func:`gpuconv._env.flag`), at each call."""
    if os.environ is not _env._environ:
        return _env.flag("GPUCONV_SIM_SANITIZE")
    raw = _SANITIZE_RAW()
    flag = _sanitize_flags.get(raw)
    if flag is None:  # (a bad value raises here, every time: never kept)
        flag = _env.flag("GPUCONV_SIM_SANITIZE")
        if len(_sanitize_flags) >= 64:
            _sanitize_flags.clear()
        _sanitize_flags[raw] = flag
    return flag


def current_sim_arch() -> int | None:
    """The compute capability the simulator stands for here (:func:`sim_arch`; None: all of them)."""
    return _sim_arch.get()
