"""Autotuning: the convolutions' "auto" variant chosen by measurement, and the table of the choices."""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import threading
import time
import warnings

import numpy as np

from .. import _env, backend, precision  # backend: read at each call (tests fake CuPy by patching it)
from ..ops._checks import check_bool
from . import _capability, _families, _log


# "auto" by measurement, as cuDNN's benchmark mode does it (torch.backends.cudnn.benchmark): with
# autotuning on, the first launch of a convolution of a new geometry (family, dtype, shapes,
# stride, padding, layout) on a GPU runs each candidate variant once untimed (it compiles and
# warms), then AUTOTUNE_ROUNDS rounds of AUTOTUNE_REPS launches between two CUDA events (its
# fastest round counts), and the fastest candidate runs from then on. The untimed run's result is
# checked against the first candidate's (tc or v2, the tiles longest validated on a GPU): one whose
# largest difference exceeds AUTOTUNE_AGREE times the largest magnitude (a kernel giving wrong
# results on some GPU or driver, where different summation orders differ by a rounding or two) is
# left out with a warning, never chosen for being fast. The
# candidates are the variants of the dtype's kind (tensor-core tiles for bfloat16/float16/TF32,
# wgmma's only where they run; v2/v3 on CUDA cores, v1 too for a data gradient into few
# channels); a variant chosen by use_variant/set_variant/GPUCONV_KERNEL_VARIANTS is never tuned
# over. The choices are a table (tuned_variants / load_tuned_variants) that the trainer saves in
# its checkpoints: variants sum in different orders, so a resumed run (autotuning on) takes the
# same ones to continue bit for bit. The keys name the GPU model: a table moved to another GPU
# tunes anew. Tuning synchronizes the host once per new geometry (the events), so it never runs
# inside a CUDA graph capture or a syncguard.no_sync block: there the channel rule runs, untabled.
# Its own launches stay out of launch logs. Off unless asked for: set_autotune(True), ``with
# autotuning():``, or GPUCONV_AUTOTUNE=1; the trainer turns it on for GPU runs.
AUTOTUNE_REPS = 5     # launches per timed round
AUTOTUNE_AGREE = 2.0 ** -7  # a candidate's largest difference from the first's, relative to its largest value
AGREE_CHUNK = 1 << 24       # elements compared at once
AUTOTUNE_ROUNDS = 2   # rounds per candidate: the fastest round counts (a stray stall in one is dropped)
_TUNED_TARGETS = ("cuda",)  # the simulator's time says nothing about a GPU's (tests add 'sim')
_autotune: contextvars.ContextVar = contextvars.ContextVar("gpuconv_autotune", default=None)
_tuned: dict = {}        # table key -> variant
_tuned_fast: dict = {}   # (family, dtype, tf32, target, device, geometry tuple) -> variant: the table, looked up per launch
_tune_times: dict = {}   # table key -> {variant: seconds}, of the tunings this process ran
_tune_lock = threading.Lock()      # the table
_table_changes = 0  # load_tuned_variants and clear_tuned calls so far (choices() tells a graph of them)
_measure_lock = threading.Lock()   # one tuning at a time: two would time each other
_no_sync: contextvars.ContextVar = contextvars.ContextVar("gpuconv_no_sync", default=False)


@contextlib.contextmanager
def sync_forbidden():
    """A block where the host must not wait for the GPU (gpuconv.syncguard.no_sync holds the
    stream): autotuning, which waits on its events, leaves new geometries to the channel rule."""
    token = _no_sync.set(True)
    try:
        yield
    finally:
        _no_sync.reset(token)


def autotune_enabled(default: bool = False) -> bool:
    """Whether "auto" convolution variants are chosen by measurement (see above): the innermost
    :func:`autotuning` block's word, else $GPUCONV_AUTOTUNE's, else ``default``."""
    on = _autotune.get()
    if on is None:
        if os.environ is not _env._environ:
            return _env.flag("GPUCONV_AUTOTUNE", default)
        key = (_AUTOTUNE_RAW(), default)  # (asked at every convolution on a GPU: the parse is memoized)
        on = _autotune_env.get(key)
        if on is None:
            on = _autotune_env[key] = _env.flag("GPUCONV_AUTOTUNE", default)
    return on


_AUTOTUNE_RAW = _env.reader("GPUCONV_AUTOTUNE")
_autotune_env: dict = {}  # ($GPUCONV_AUTOTUNE's raw value, default) -> its reading


def autotunes(target: str | None) -> bool:
    """Whether "auto" convolution variants on ``target`` are chosen by measurement now: autotuning
    on (:func:`autotune_enabled`) for a target it times (a GPU)."""
    return target in _TUNED_TARGETS and autotune_enabled()


def set_autotune(enabled: bool | None):
    """Autotune from now on in this context (None: back to $GPUCONV_AUTOTUNE, default off)."""
    _autotune.set(None if enabled is None else check_bool("set_autotune(enabled)", enabled,
                                                          " (None: back to $GPUCONV_AUTOTUNE)"))


@contextlib.contextmanager
def autotuning(enabled: bool = True):
    """``with autotuning(): ...`` measures "auto" convolution variants inside the block."""
    token = _autotune.set(check_bool("autotuning(enabled)", enabled))
    try:
        yield
    finally:
        _autotune.reset(token)


def tuned_variants() -> dict:
    """The autotuning table so far, ``{key: variant}`` (JSON-able; keys name the geometry)."""
    with _tune_lock:
        return dict(_tuned)


def tuning_times() -> dict:
    """``{key: {variant: milliseconds}}`` of every tuning this process measured (for records); a
    candidate that failed has its error, "failed: ...", instead."""
    with _tune_lock:
        return {k: {v: t if isinstance(t, str) else t * 1e3 for v, t in times.items()}
                for k, times in _tune_times.items()}


def load_tuned_variants(table: dict, replace: bool = False):
    """Take the choices of ``table`` (from :func:`tuned_variants`, e.g. a checkpoint's), over the
    current ones (all of them dropped first when ``replace``)."""
    global _table_changes
    checked = check_tuned_variants(table)
    with _tune_lock:
        _table_changes += 1
        if replace:
            _tuned.clear()
        _tuned.update(checked)
        _tuned_fast.clear()


def check_tuned_variants(table: dict) -> dict:
    """``table`` as :func:`load_tuned_variants` takes it, ``{str: str}``; a ValueError naming the
    first entry whose family or variant this version does not have."""
    checked = {}
    for key, var in dict(table).items():
        family = str(key).split("[", 1)[0]
        _families._check_variant(family, var, f"autotuning table entry {key!r}")
        if var == "auto":
            raise ValueError(f"autotuning table entry {key!r}: 'auto' is what the table resolves, not a variant "
                             "to run; give a concrete one (tc, tc128, v2, ...)")
        checked[str(key)] = str(var)
    return checked


def clear_tuned():
    """Forget every tuned choice (and its times)."""
    global _table_changes
    with _tune_lock:
        _table_changes += 1
        _tuned.clear()
        _tuned_fast.clear()
        _tune_times.clear()


def tune_candidates(family: str, dtype, tf32: bool, target: str, device=None, channels: int = 0) -> tuple:
    """The variants autotuning times for ``family`` on ``dtype`` (see above)."""
    if ((tf32 or np.dtype(dtype) in precision.LOW_PRECISION)
            and _capability.tensor_cores_available(target, device, dtype, tf32)):
        return tuple(v for v in _families.TC_VARIANTS
                     if v not in _families._WGMMA_VARIANTS or _capability.wgmma_available(target, device))
    if family == "conv2d_backward_data" and channels < _families.AUTO_V1_BELOW:
        return ("v1", "v2", "v3")
    return ("v2", "v3")


def tune_key(family: str, dtype, tf32: bool, geometry, target: str = "sim", device=None) -> str:
    """The table key of a launch: family, dtype (or tf32), the GPU model ('sim' on the simulator)
    and the launch's geometry, as text."""
    return f"{_families._key(family, 'tf32' if tf32 else dtype)} {_device_model(target, device)} {geometry}"


@functools.lru_cache(maxsize=None)
def _device_model(target: str, device) -> str:
    """'NVIDIA-H200' (the GPU's name, spaces made dashes) on 'cuda', 'sim' on the simulator."""
    if target != "cuda":
        return "sim"
    cp = backend.require_cupy()
    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device(device).id)["name"]
    return "-".join((name.decode() if isinstance(name, bytes) else str(name)).split())


def conv_geometry(x_shape, w_shape, stride, padding, channels_last: bool) -> str:
    """A convolution's geometry as the table's keys write it: 'N2 C8 H6 W6 K16 F3x3 S1x1 P1x1 nhwc'."""
    n, c, h, w = x_shape
    k, _, fh, fw = w_shape
    return (f"N{n} C{c} H{h} W{w} K{k} F{fh}x{fw} S{stride[0]}x{stride[1]} P{padding[0]}x{padding[1]} "
            f"{'nhwc' if channels_last else 'nchw'}")


def tuned_variant(family: str, dtype, tf32: bool, channels: int, target: str, device, geometry, run) -> str:
    """The variant "auto" runs for a convolution launch when autotuning (:func:`resolve` asks it
    then): the table's choice, measured now with ``run(variant)`` launching the op in that variant
    if the geometry is new (the channel rule of :func:`auto_variant` where no tuning may run: a
    graph capture, a no-sync block). ``geometry``: ``(x_shape, w_shape,
    stride, padding, channels_last)``, hashable (the table's text key is made once per geometry)."""
    fast = (family, dtype, tf32, target, device, geometry)
    chosen = _tuned_fast.get(fast)
    if chosen is not None:
        return chosen
    rule = _families.auto_variant(family, dtype, tf32, channels)
    key = tune_key(family, dtype, tf32, conv_geometry(*geometry), target, device)
    with _tune_lock:
        chosen = _tuned.get(key)
        if chosen is not None:
            _tuned_fast[fast] = chosen
    if chosen is not None:
        return chosen
    if _no_sync.get() or _capturing(target):
        return rule
    with _measure_lock:
        with _tune_lock:
            chosen = _tuned.get(key)  # another thread's tuning, finished while this one waited
        if chosen is not None:
            return chosen
        candidates = tune_candidates(family, dtype, tf32, target, device, channels)
        token = _log._launch_logs.set(())  # the candidates' launches are not the op's
        times, failed, first, error = {}, {}, None, None
        try:
            for var in candidates:
                try:
                    out = run(var)  # untimed: compiles, loads, warms; its result is checked
                    wrong = None if first is None else _disagreement(out, first[1])
                    if wrong is not None:
                        failed[var] = f"wrong: {wrong} from {first[0]}'s"
                        warnings.warn(f"autotuning {key}: variant {var!r} differs from {first[0]!r} ({wrong}); "
                                      "it is left out", RuntimeWarning, stacklevel=3)
                        continue
                    if first is None:
                        first = (var, out)
                    times[var] = _measure(run, var, target)
                except Exception as exc:  # noqa: BLE001  (any failure of one candidate: see _dropped)
                    if not _dropped(key, var, exc, target):
                        raise
                    failed[var] = f"failed: {type(exc).__name__}: {exc}"
                    error = error or exc
        finally:
            _log._launch_logs.reset(token)
            first = None  # the reference output's memory back before the op runs
        if not times:  # the first failure itself (each has had its warning): an out-of-memory stays one
            raise error if error is not None else RuntimeError(f"autotuning {key}: every candidate failed: {failed}")
        chosen = min(times, key=times.__getitem__)  # a tie: the first candidate
        with _tune_lock:
            _tuned[key], _tune_times[key] = chosen, {**times, **failed}
    return chosen


def _dropped(key, var, exc, target) -> bool:
    """Whether a candidate that raised ``exc`` while timed is left out (with a warning) rather than
    ending the run: when the device is still usable (a kernel that cannot launch or compile there,
    say), the others are timed; an error that leaves the CUDA context unusable (an illegal address)
    propagates."""
    if target == "cuda":
        try:
            backend.require_cupy().cuda.runtime.deviceSynchronize()
        except Exception:  # noqa: BLE001  (the context is gone: nothing else will run either)
            return False
    warnings.warn(f"autotuning {key}: variant {var!r} failed ({type(exc).__name__}: {exc}); it is left out",
                  RuntimeWarning, stacklevel=4)
    return True


def _disagreement(out, ref) -> str | None:
    """None when ``out`` matches ``ref`` (a candidate's result and the first candidate's) to within
    AUTOTUNE_AGREE of ``ref``'s largest finite magnitude, NaN where ``ref`` has NaN; else a few
    words saying by how much they differ. On the device, in float32 slices along the first axis
    of at most AGREE_CHUNK elements (a batch's activations would take gigabytes at once); a
    readback of two numbers a slice."""
    xp = backend.get_array_module(out)
    per = max(1, int(np.prod(out.shape[1:], dtype=np.int64))) if out.ndim else 1
    step = max(1, AGREE_CHUNK // per)
    worst = scale = 0.0
    for i in range(0, out.shape[0] if out.ndim else 1, step):
        a, b = ((v[i:i + step] if v.ndim else v).astype(np.float32) for v in (out, ref))
        finite = xp.isfinite(b)
        same = (a == b) | (xp.isnan(a) & xp.isnan(b))  # where ref is NaN or infinite: the same value
        diff = xp.where(finite, xp.abs(xp.where(finite, a, 0) - xp.where(finite, b, 0)), xp.where(same, 0, xp.inf))
        if diff.size:
            worst = max(worst, float(xp.nan_to_num(diff, nan=np.inf).max()))
            scale = max(scale, float(xp.abs(xp.where(finite, b, 0)).max()))
    if worst <= AUTOTUNE_AGREE * scale:
        return None
    return f"largest difference {worst:.3g} against a largest magnitude {scale:.3g}"


def _measure(run, var, target) -> float:
    """Seconds per ``run(var)`` (already run once, untimed): AUTOTUNE_ROUNDS rounds of
    AUTOTUNE_REPS between two events on the current stream, the fastest round (host time on the
    simulator)."""
    best = float("inf")
    for _ in range(AUTOTUNE_ROUNDS):
        if target != "cuda":
            start = time.perf_counter()
            for _ in range(AUTOTUNE_REPS):
                run(var)
            best = min(best, (time.perf_counter() - start) / AUTOTUNE_REPS)
            continue
        cuda = backend.require_cupy().cuda
        start, end = cuda.Event(), cuda.Event()
        start.record()
        for _ in range(AUTOTUNE_REPS):
            run(var)
        end.record()
        end.synchronize()
        best = min(best, cuda.get_elapsed_time(start, end) / 1e3 / AUTOTUNE_REPS)
    return best


def _capturing(target) -> bool:
    """Whether the current stream is being captured into a CUDA graph (no sync allowed)."""
    if target != "cuda":
        return False
    try:
        return backend.require_cupy().cuda.get_current_stream().is_capturing()
    except Exception:  # the query itself is illegal during some captures (the legacy stream's): no tuning
        return True
