"""The kernel registry: find a ``kernels/*.cu`` file, build it per dtype, compile it once per
target and device, and hand out callables ``f(grid, block, args, shared_mem=0)``.

Sources. In a checkout the CUDA files live at the repository root (``kernels/``); in an
installed wheel they ship inside the package as ``gpuconv.kernels_src`` (pyproject.toml maps
one onto the other), found with :mod:`importlib.resources`. ``GPUCONV_KERNELS_DIR`` overrides
both (to try an edited kernel without reinstalling).

Translation units. A ``.cu`` file never includes anything (NVRTC has no host headers and the
host simulator compiles the same text with g++); the registry builds::

    #define GPUCONV_STORAGE bf16_t   // the arrays' element type: double, float, bf16_t, half_t
    #define GPUCONV_ACC float        // what products and sums run in: double for float64, else float
    #define GPUCONV_TF32 0           // 1 in the TF32 build of float32 (conv operands rounded)
    #define GPUCONV_TENSOR_CORES 1   // 1 where the GEMM operands have a tensor-core format:
                                     // bfloat16, float16, and float32 in the TF32 build
    #line 1 "kernels/common.cuh"
    <common.cuh>                     // typedefs storage_t and acc_t from the two macros
    #line 1 "kernels/mma.cuh"        // only for the files listed in UNIT_HEADERS
    <mma.cuh>
    #line 1 "kernels/<op>.cu"
    <op>.cu

so a compiler message names the kernel's own file and line. ``kernels/mma.cuh`` (the
tensor-core instructions, mma.sync/ldmatrix/cp.async, with their simulator forms) goes only into
the files that use it (:data:`UNIT_HEADERS`): it needs sm_75 (float16 only there; bf16, TF32 and
cp.async from sm_80), and the other files keep building for any arch. Every build of a file
exports the same entry points; a kernel that computes only with tensor cores (``gemm_tc.cu``) traps in the builds without them (``#if
GPUCONV_TENSOR_CORES``), and its launcher refuses those dtypes first. Entry points are ``extern "C"``
with the element types fixed by the defines, one module per build: the four storage dtypes of
:mod:`gpuconv.precision` (float64, float32, bfloat16, float16) and float32 with ``tf32=True``.
No ``name_expressions`` are needed (those exist to instantiate C++ templates by name). The
precision rule the builds implement is in ``kernels/common.cuh`` and :mod:`gpuconv.precision`.

Targets. ``'cuda'``: the registry compiles with NVRTC itself (:func:`nvrtc_compile`, the
``cupy_backends.cuda.libs.nvrtc`` binding) with :data:`NVRTC_OPTIONS` and nothing else, then
loads the binary with ``cupy.RawModule(path=...)``, once per (file, dtype, device) in this
process. It does not let CuPy compile the source: CuPy appends ``-ftz=true`` to every
RawModule compile, which flushes float32 subnormals to zero (``relu(1e-45)`` would return 0,
where the NumPy reference and the simulator return 1e-45). The binary is a CUBIN for
``sm_<cc>`` of the device when NVRTC supports that arch, else PTX for the highest
``compute_XX`` not above it, which the driver compiles at load (:func:`nvrtc_arch`); the files of
:data:`ARCH_SPECIFIC` build for ``sm_90a`` on a Hopper GPU (wgmma exists only there). Binaries are
cached on disk in ``$GPUCONV_CUDA_CACHE`` (default ``~/.cache/gpuconv/cuda``), keyed by the
source text, the options, the arch and the NVRTC version, written atomically so concurrent
processes share it: the first run on a machine pays the NVRTC compile (with NVRTC 13, a few
seconds for conv2d and a fraction of one for the other files, per dtype), later processes load
the file. An unwritable cache directory
costs a warning and a compile per process; point ``GPUCONV_CUDA_CACHE`` at a writable directory
on read-only or shared home directories. ``'sim'``: :func:`gpuconv.hostsim.compile` builds the
same text with g++ (cached by source hash in ``$GPUCONV_SIM_CACHE``) and runs it on the CPU.

Variants. Each kernel family keeps its first simple version beside the tuned ones
(``conv2d_forward_v1``; ``_v2`` and ``_v3``, 64x64 and 128x128 tiles on CUDA cores; ``_tc``,
``_tc128`` and ``_tc128w``, the tensor-core convolutions of kernels/conv2d_tc.cu for bfloat16,
float16 and TF32, and ``_tcwg``, ``_tcwg256``, ``_tcwgn64`` and ``_tcwgm64``, their 128x128, 128x256,
256x64 and 64x128 tiles on Hopper's wgmma).
Variants are chosen per (family, dtype): :data:`VARIANTS` gives each family its variants
and its defaults by dtype name (``"tf32"`` for float32 in TF32 mode), ``"*"`` for every dtype
without its own. The conv2d default, ``"auto"``, picks by shape (:func:`auto_variant`, from the
H200 measurement). The launchers run :func:`resolve` (:func:`variant`, "auto" made concrete):
the default on every target (the simulator runs the production path), overridden by
:func:`set_variant`, the :func:`use_variant` context manager, or the environment variable
``GPUCONV_KERNEL_VARIANTS="conv2d_forward=v1,relu_forward[bfloat16]=v1"`` (read at import; a
``[dtype]`` suffix limits an item to that dtype, ``[tf32]`` to float32 in TF32 mode, the convolutions' alone). A dtype-specific choice beats a general one
at the same level, and every explicit choice beats the defaults.

Simulator schedule. :func:`sim_schedule` (a context manager) makes simulator launches run the
threads of each block, and the blocks, in reversed order (``'reverse'``), which flushes out races
that the forward order hides; ``sanitize=True`` routes them through the AddressSanitizer build.
:func:`sim_arch` (``with sim_arch(75):``) makes them run the sm_75 build of the tensor-core files
(``#define GPUCONV_SIM_SM75 1``: mma.cuh's Turing forms, float16 tensor cores only, no wgmma), so
that the simulator answers :func:`tensor_cores_available` and :func:`wgmma_available` as a T4 does.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import os
import pathlib
import re
import tempfile
import threading
import time
import warnings
from typing import NamedTuple

import numpy as np

from . import _env, _files
from ._files import make_dirs, private_temp_dir, trusted_binary, untrusted_cache_dir, write_atomic
from . import backend  # attribute access at call time: tests fake CuPy by patching it
from . import layout, precision
from .ops._checks import check_bool

KERNEL_FILES = ("conv2d", "conv2d_grouped", "conv2d_tc", "pool2d", "relu", "gelu", "activations", "dropout", "augment",
                "stream_hold", "gemm_tc", "batchnorm", "groupnorm", "optim", "loss", "amp", "scale")
# The headers a file's translation unit gets after common.cuh, in order (see build_source).
_TC_HEADERS = ("mma.cuh", "wgmma.cuh", "tc_tile.cuh")
UNIT_HEADERS = {"gemm_tc": _TC_HEADERS, "conv2d_tc": _TC_HEADERS, "relu": ("activation.cuh",),
                "gelu": ("activation.cuh",), "activations": ("activation.cuh",), "batchnorm": ("activation.cuh",)}
COMMON = "common.cuh"
# Files built for the arch-specific sm_90a on a Hopper GPU (compute capability 9.0), for its
# wgmma (kernels/wgmma.cuh); every other file, and these on other GPUs, build for sm_XX.
ARCH_SPECIFIC = ("conv2d_tc",)
# Files launched in float32's TF32 build (tensor-core operands rounded to TF32) besides their
# builds per dtype.
TF32_FILES = ("conv2d", "conv2d_grouped", "conv2d_tc", "gemm_tc")
# The only options any kernel is compiled with, on the GPU and in nvrtc_check alike. IEEE float
# semantics on purpose: -ftz=false keeps subnormals (max/ReLU/pooling must match NumPy bit for
# bit, 1e-45 included; CuPy's own RawModule compile would append -ftz=true), and division and
# square root round correctly. These are NVRTC's defaults, spelled out so that no default or
# caller can change them silently. (FMA contraction, NVRTC's default -fmad=true, stays on.)
NVRTC_OPTIONS = ("-std=c++14", "-ftz=false", "-prec-div=true", "-prec-sqrt=true")



class Family(NamedTuple):
    """A kernel family's variants and its default per dtype name (``"*"``: every other dtype)."""
    variants: tuple
    defaults: dict


# The convolution default is "auto": the launcher picks the variant by the GEMM's output-channel
# count (K for the forward and the weight gradient, C for the data gradient), as the first H200
# measurement says (benchmarks/RESULTS.md: bench_conv2d, batch 512, every fast_net layer and
# variant): 128x128 tiles (v3 on CUDA cores, tc128 on tensor cores) from 128 channels on, 64x64
# (v2, tc) below, and v1 for a data gradient into fewer than 16 channels (into an image's 3
# channels v1 took 0.33 ms, v2 2.3). The bfloat16/float16 weight gradient follows the same rule:
# the one slow tc128 cell of the first run (bf16 128->256 at 16x16, 10.5 ms) measured 0.74 ms
# (tc 1.08) in the second, tc128 being 1.2-1.5x faster than tc on every wide layer of both.
# float64 (never measured) runs v2. A fixed variant
# chosen with use_variant/set_variant/GPUCONV_KERNEL_VARIANTS runs on every shape; a tensor-core
# variant (tc...) on a dtype without a tensor-core format (strict float32, float64) runs v2.
AUTO_WIDE = 128        # channels from which the 128x128 tiles win
AUTO_V1_BELOW = 16     # channels below which v1 wins the data gradient (CUDA cores)
# tc128w (128x128 tiles of 4 warps of 64x64: a fifth fewer instructions per mma in the sm_90 loop,
# half the warps per SM) is selectable and benchmarked; "auto" takes it only once it is measured.
# tcwg, tcwg256, tcwgn64 and tcwgm64 (the 128x128, 128x256, 256x64 and 64x128 tiles on Hopper's
# wgmma: 2 warpgroups of 64x128, 64x256 or 2 x 64x64, one of 64x128; operands read from the stages
# by descriptors, no ldmatrix; bf16, fp16 and TF32 on sm_90a, tc128 or tc elsewhere) likewise;
# tcwgn64 is for GEMMs of 64 columns or fewer (the forward into, the data gradient into 64
# channels), tcwgm64 for those of 64 rows or fewer (the weight gradient of 64 filters).
_WGMMA_VARIANTS = ("tcwg", "tcwg256", "tcwgn64", "tcwgm64")
# the mma.sync tile of each wgmma tile's width, which runs where wgmma does not (another GPU)
WGMMA_FALLBACK = {"tcwg": "tc128", "tcwg256": "tc128", "tcwgn64": "tc", "tcwgm64": "tc"}
TC_VARIANTS = ("tc", "tc128", "tc128w") + _WGMMA_VARIANTS  # the tensor-core convolutions (conv2d_tc.cu)
_CONV_VARIANTS = ("auto", "v1", "v2", "v3") + TC_VARIANTS
_CONV_DEFAULTS = {"*": "auto", "float64": "v2"}
# The families whose launchers look their variant up under "tf32" for float32 arrays in TF32 mode.
TF32_FAMILIES = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")
VARIANTS = {
    "conv2d_forward": Family(_CONV_VARIANTS, _CONV_DEFAULTS),
    "conv2d_backward_data": Family(_CONV_VARIANTS, _CONV_DEFAULTS),
    "conv2d_backward_weight": Family(_CONV_VARIANTS, _CONV_DEFAULTS),
    "relu_forward": Family(("v1", "v2"), {"*": "v2"}),
    "relu_backward": Family(("v1", "v2"), {"*": "v2"}),
}


@functools.lru_cache(maxsize=1024)  # asked at every convolution launch, of a few geometries
def auto_variant(family: str, dtype, tf32: bool, channels: int) -> str:
    """The variant "auto" runs for ``family`` on ``dtype`` (TF32 mode when ``tf32``) when the
    GEMM's output-channel count is ``channels`` (see the rule above VARIANTS)."""
    name = _dtype_name(dtype)
    wide = channels >= AUTO_WIDE
    if tf32 or np.dtype(dtype) in precision.LOW_PRECISION:
        return "tc128" if wide else "tc"
    if name == "float64":
        return "v2"
    if family == "conv2d_backward_data" and channels < AUTO_V1_BELOW:
        return "v1"
    return "v3" if wide else "v2"


def resolve(family: str, dtype, tf32: bool, channels: int, target: str | None = None, launch=None, run=None) -> str:
    """The variant a launcher runs: :func:`variant`'s choice, with "auto" made concrete: by the
    autotuning table when autotuning on ``target`` (``launch()`` then gives the launch's
    ``(device, geometry)`` and ``run(variant)`` runs it, see :func:`tuned_variant`), else by the
    channel rule of :func:`auto_variant`."""
    var = variant(family, dtype, tf32)
    if var == "auto" and launch is not None and autotunes(target):
        device, geometry = launch()
        # (where it may not time, inside a capture or a no-sync block, the channel rule's choice)
        var = tuned_variant(family, dtype, tf32, channels, target, device, geometry, run)
    elif var == "auto":
        var = auto_variant(family, dtype, tf32, channels)
    if var in TC_VARIANTS and not tensor_cores_for(target, lambda: launch()[0] if launch else None, dtype, tf32):
        return auto_variant(family, np.float32, False, channels)  # the CUDA-core tiles, in the arrays' precision
    return var


# ----------------------------------------------------------------------------- autotuning
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
        return _env.flag("GPUCONV_AUTOTUNE", default)
    return on


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
        _check_variant(family, var, f"autotuning table entry {key!r}")
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
    if (tf32 or np.dtype(dtype) in precision.LOW_PRECISION) and tensor_cores_available(target, device, dtype, tf32):
        return tuple(v for v in TC_VARIANTS if v not in _WGMMA_VARIANTS or wgmma_available(target, device))
    if family == "conv2d_backward_data" and channels < AUTO_V1_BELOW:
        return ("v1", "v2", "v3")
    return ("v2", "v3")


def tune_key(family: str, dtype, tf32: bool, geometry, target: str = "sim", device=None) -> str:
    """The table key of a launch: family, dtype (or tf32), the GPU model ('sim' on the simulator)
    and the launch's geometry, as text."""
    return f"{_key(family, 'tf32' if tf32 else dtype)} {_device_model(target, device)} {geometry}"


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
    rule = auto_variant(family, dtype, tf32, channels)
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
        token = _launch_logs.set(())  # the candidates' launches are not the op's
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
            _launch_logs.reset(token)
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


class _Build(NamedTuple):
    name: str     # in messages, module names and cache file names: float, double, bfloat16, float16
    storage: str  # the C element type of the arrays (GPUCONV_STORAGE)
    acc: str      # the C type products and sums run in (GPUCONV_ACC)


# Storage dtype -> build; see kernels/common.cuh and gpuconv/precision.py for the rule.
_DTYPES = {precision.float32: _Build("float", "float", "float"),
           precision.float64: _Build("double", "double", "double"),
           precision.bfloat16: _Build("bfloat16", "bf16_t", "float"),
           precision.float16: _Build("float16", "half_t", "float")}


class KernelCompileError(RuntimeError):
    """A kernel file failed to compile; the message holds the compiler's log (file(line): ...)."""


# ----------------------------------------------------------------------------- sources
def kernel_dir() -> pathlib.Path:
    """The directory holding ``common.cuh`` and the ``.cu`` files (checkout, wheel, or override)."""
    override = _env.get("GPUCONV_KERNELS_DIR")
    if override:
        path = pathlib.Path(override)
        if not (path / COMMON).is_file():
            raise FileNotFoundError(f"GPUCONV_KERNELS_DIR={override!r} has no {COMMON}: point it at a "
                                    "kernels/ directory or unset it")
        return path
    return _shipped_kernel_dir()


def _shipped_kernel_dir() -> pathlib.Path:
    """The kernels gpuconv came with (checkout or wheel), whatever GPUCONV_KERNELS_DIR says."""
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


def source_text(name: str) -> str:
    """The text of kernel file ``name`` (``'gemm_tc.cu'``, ``'common.cuh'``) as the compiler reads
    it (the shipped file where GPUCONV_KERNELS_DIR lacks it, as :func:`defines`)."""
    path = kernel_dir() / name
    return (path if path.is_file() else _shipped_kernel_dir() / name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def defines(name: str) -> dict:
    """The integer ``#define`` s of kernel file ``name`` (``'conv2d.cu'``, ``'common.cuh'``): the
    tile sides, thread counts and block sizes the launchers size grids by, read from the source
    the kernels are compiled from, never copied into Python. A GPUCONV_KERNELS_DIR without the
    file (a directory of probe kernels) leaves it to the shipped one, the only one that can run."""
    text = source_text(name)
    return {k: int(v) for k, v in re.findall(r"^[ \t]*#define[ \t]+(\w+)[ \t]+(\d+)\b", text, re.M)}


class TileShape(NamedTuple):
    """A tensor-core CTA tile of kernels/tc_tile.cuh: its BM x BN outputs, threads, and the bytes
    of its shared-memory stages (``dynamic``: past the static limit, passed at launch)."""
    bm: int
    bn: int
    threads: int
    shared: int
    dynamic: bool


@functools.lru_cache(maxsize=None)
def tile_shapes() -> dict:
    """The tensor-core CTA tiles of kernels/tc_tile.cuh, ``{typedef name: TileShape}`` from its
    ``typedef TcShape<BM, BN, WM, WN[, WG[, STAGES]]> Name;`` lines: 32 * WM * WN threads,
    STAGES (default TC_STAGES) stages of (BM + BN) * TC_KBYTES bytes."""
    consts = defines("tc_tile.cuh")
    pattern = r"typedef TcShape<(\d+), (\d+), (\d+), (\d+)(?:, \w+)?(?:, (\d+))?> (\w+);"
    out = {}
    for bm, bn, wm, wn, stages, name in re.findall(pattern, source_text("tc_tile.cuh")):
        shared = int(stages or consts["TC_STAGES"]) * (int(bm) + int(bn)) * consts["TC_KBYTES"]
        out[name] = TileShape(int(bm), int(bn), 32 * int(wm) * int(wn), shared,
                              shared > consts["TC_STATIC_SHARED_MAX"])
    return out


# GPUCONV_BLOCK in common.cuh: the block size of every 1-D grid-stride kernel, which their
# __launch_bounds__ and conv2d_backward_bias's shared reduction are compiled for.
BLOCK = defines(COMMON)["GPUCONV_BLOCK"]


def _build(dtype, tf32=False) -> _Build:
    """The build of ``dtype`` (a TypeError naming the four for any other), TF32 only for float32."""
    dt = np.dtype(dtype)
    if dt not in _DTYPES:
        raise TypeError(f"kernel dtype {dt} is not supported: the kernels build for {precision.DTYPE_NAMES}; "
                        "convert with x.astype(np.float32)")
    if tf32 and dt != precision.float32:
        raise ValueError(f"tf32=True builds round float32 operands to TF32; dtype {dt} has no TF32 build "
                         "(float64 and bfloat16/float16 ignore the TF32 mode): pass tf32=False")
    return _DTYPES[dt]


def _label(dtype, tf32=False) -> str:
    """'float', 'float+tf32', 'bfloat16', ...: the build in messages and module names."""
    return _build(dtype, tf32).name + ("+tf32" if tf32 else "")


def build_source(op_file: str, dtype=np.float32, tf32: bool = False, sim_sm75: bool = False) -> str:
    """The translation unit for ``kernels/<op_file>.cu`` storing ``dtype`` (float64, float32,
    bfloat16 or float16), computing in its accumulator type, with TF32 operands when ``tf32``;
    ``sim_sm75``: the simulator's sm_75 build (:func:`sim_arch`)."""
    stem = op_file[:-3] if op_file.endswith(".cu") else op_file
    build = _build(dtype, tf32)
    tensor_cores = int(bool(tf32) or np.dtype(dtype) in precision.LOW_PRECISION)
    headers = "".join(f'#line 1 "kernels/{h}"\n{_read(h)}\n' for h in (COMMON, *UNIT_HEADERS.get(stem, ())))
    sim_sm75 = sim_sm75 and "mma.cuh" in UNIT_HEADERS.get(stem, ())  # (the other files have no sm_75 forms)
    return (("#define GPUCONV_SIM_SM75 1\n" if sim_sm75 else "") +
            f"#define GPUCONV_STORAGE {build.storage}\n#define GPUCONV_ACC {build.acc}\n"
            f"#define GPUCONV_TF32 {int(bool(tf32))}\n#define GPUCONV_TENSOR_CORES {tensor_cores}\n"
            f'{headers}#line 1 "kernels/{stem}.cu"\n{_read(stem + ".cu")}')


# ----------------------------------------------------------------------------- variants
# A choice is keyed "family" (every dtype) or "family[dtype]" (one dtype), as written in
# GPUCONV_KERNEL_VARIANTS.
_ITEM = re.compile(r"^\s*(\w+)\s*(?:\[\s*(\w+)\s*\])?\s*$")


def _dtype_name(dtype) -> str | None:
    """'float32', 'bfloat16', ... for a dtype (or its name) that has kernel builds, 'tf32' for
    float32 in TF32 mode (a key of its own); None for None."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype == "tf32":
        return dtype
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype {dtype!r} is not a dtype: use one of {precision.DTYPE_NAMES}") from None
    _build(dt)
    return dt.name


def _key(family, dtype=None) -> str:
    name = _dtype_name(dtype)
    return family if name is None else f"{family}[{name}]"


def _env_variants() -> dict:
    text = os.environ.get("GPUCONV_KERNEL_VARIANTS", "").strip()
    chosen = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        head, sep, var = item.partition("=")
        m = _ITEM.match(head)
        if not sep or not m:
            raise ValueError(f"GPUCONV_KERNEL_VARIANTS item {item!r} must read family=variant or "
                             "family[dtype]=variant, e.g. conv2d_forward=v1 or conv2d_forward[bfloat16]=v1")
        family, dtype = m.groups()
        try:
            key = _key(family, dtype)
        except TypeError as exc:
            raise ValueError(f"GPUCONV_KERNEL_VARIANTS item {item!r}: {exc}") from None
        _check_variant(family, var.strip(), "GPUCONV_KERNEL_VARIANTS", dtype)
        chosen[key] = var.strip()
    return chosen


def _check_variant(family, var, where="variant", dtype=None):
    """A known variant of a known family; a tensor-core tile chosen for one dtype only where that
    dtype has a tensor-core format (chosen for every dtype, it runs v2 on the others)."""
    if family not in VARIANTS:
        raise ValueError(f"{where}: kernel family {family!r} has no variants; families: {', '.join(VARIANTS)}")
    if var not in VARIANTS[family].variants:
        raise ValueError(f"{where}: {family} has variants {', '.join(VARIANTS[family].variants)}, not {var!r}")
    name = _dtype_name(dtype)
    if name == "tf32" and family not in TF32_FAMILIES:
        raise ValueError(f"{where}: {family}[tf32]={var} would never run: {family} has no TF32 mode (its kernels "
                         f"run float32 arrays as float32 in every run); choose {family}[float32]={var}")
    if var in TC_VARIANTS and name in ("float32", "float64"):
        cuda_cores = ", ".join(v for v in VARIANTS[family].variants if v not in TC_VARIANTS)
        raise ValueError(f"{where}: {family}[{name}]={var} would never run: the tensor-core tiles take "
                         f"bfloat16, float16 and TF32 operands, not strict {name}; choose {family}[tf32]={var} "
                         f"for float32 arrays in TF32 mode, or a CUDA-core variant ({cuda_cores})")


_variants: contextvars.ContextVar[dict] = contextvars.ContextVar("gpuconv_kernel_variants", default=None)


@functools.lru_cache(maxsize=1)
def _env_choices() -> dict:
    """GPUCONV_KERNEL_VARIANTS, read at the first launch (a bad value is then an error of that
    launch, which the command line reports in a line, not a traceback at import)."""
    return _env_variants()


def check_environment(autotune: bool = True):
    """Read GPUCONV_KERNEL_VARIANTS (and GPUCONV_AUTOTUNE when ``autotune``) now: a ValueError naming
    a bad value before a run's slow start (the data set's load, the kernels' compile), not at its
    first launch."""
    _env_choices()
    if autotune:
        _env.flag("GPUCONV_AUTOTUNE")


def choices() -> tuple:
    """What decides, on the host, which variant a launch runs, as a value equal to an earlier one
    while none of it changed: the :func:`set_variant`/:func:`use_variant` choices, :func:`autotuning`
    on or off, the changes made to the autotuning table from outside (:func:`load_tuned_variants`,
    :func:`clear_tuned`; a geometry tuned for the first time changes no earlier launch's variant),
    the precision mode (TF32). A captured training step (gpuconv.graphs.StepGraph) captures anew when
    it differs: its replays would keep the variants of their capture."""
    return _variants.get(), _autotune.get(), _table_changes, precision.get_precision()


def variant(family: str, dtype=None, tf32: bool = False) -> str:
    """The variant the launchers run for ``family`` on ``dtype`` arrays (e.g. 'conv2d_forward' ->
    'v2'): a :func:`use_variant`/:func:`set_variant` choice, else a GPUCONV_KERNEL_VARIANTS one
    (at each level the one for ``dtype`` before the general one), else the family's default
    for ``dtype`` (``"*"`` when it has none of its own). ``dtype`` None: the general choice.
    ``tf32`` (float32 operands in TF32 mode): the choices and default keyed ``family[tf32]``."""
    current = _variants.get()
    memo = _variant_memo.get((family, dtype, tf32, id(current)))
    if memo is not None and memo[0] is current and memo[1] is VARIANTS.get(family):  # once per choice set
        return memo[2]
    if family not in VARIANTS:
        raise ValueError(f"kernel family {family!r} has no variants; families: {', '.join(VARIANTS)}")
    specific, general = _key(family, "tf32" if tf32 else dtype), family
    for chosen in (current or {}, _env_choices()):
        if specific in chosen:
            var = chosen[specific]
            break
        if general in chosen:
            var = chosen[general]
            break
    else:
        defaults = VARIANTS[family].defaults
        var = defaults.get(_dtype_name("tf32" if tf32 else dtype), defaults["*"])
    if len(_variant_memo) >= 1024:
        _variant_memo.clear()
    # holds ``current``, so its id stays its own; and the family's table the answer came from
    _variant_memo[(family, dtype, tf32, id(current))] = (current, VARIANTS[family], var)
    return var


_variant_memo: dict = {}


def set_variant(family: str, var: str | None, dtype=None):
    """Run variant ``var`` of ``family`` from now on in this context, on ``dtype`` arrays only or
    (None) on every dtype; ``var`` None drops that choice (back to the default)."""
    chosen = dict(_variants.get() or {})
    if var is None:
        if family not in VARIANTS:  # (a misspelt family would drop nothing, and the choice would stay)
            raise ValueError(f"set_variant: kernel family {family!r} has no variants; families: {', '.join(VARIANTS)}")
        chosen.pop(_key(family, dtype), None)
    else:
        _check_variant(family, var, dtype=dtype)
        chosen[_key(family, dtype)] = var
    _variants.set(chosen)


@contextlib.contextmanager
def use_variant(dtype=None, **families):
    """``with use_variant(conv2d_forward='v1'): ...``; ``use_variant(ml_dtypes.bfloat16,
    conv2d_forward='v1')`` chooses for bfloat16 arrays only."""
    chosen = dict(_variants.get() or {})
    for family, var in families.items():
        _check_variant(family, var, dtype=dtype)
        chosen[_key(family, dtype)] = var
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
            sanitize = _env.flag("GPUCONV_SIM_SANITIZE")
        mod = self._mods.get(sanitize)  # every launch asks: no lock (a fork could find it held)
        if mod is not None:
            return mod
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
    _build(dt, tf32)
    if target not in ("cuda", "sim"):
        raise ValueError(f"kernel target {target!r}: use 'cuda' (a GPU) or 'sim' (the host simulator)")
    if target == "cuda" and device is None:
        device = backend.require_cupy().cuda.Device().id
    sim_cc = _sim_arch.get() if target == "sim" else None
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
            src = build_source(op_file, dt, tf32, sim_sm75=sim_cc == 75)
            if target == "sim":
                mod = _SimModuleHandle(src, f"kernels/{op_file}.cu[{_label(dt, tf32)}"
                                            f"{', sm_75' if sim_cc == 75 else ''}]")
                mod._module(_sim_options()["sanitize"])  # build now: a compile error surfaces here
            else:
                mod = _compile_cuda(src, op_file, dt, device, tf32)
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
    return _env.flag("GPUCONV_WGMMA", default=True) if target == "cuda" and op_file in ARCH_SPECIFIC else None


_functions: dict = {}


def get_function(op_file: str, name: str, dtype, target: str, device: int | None = None, tf32: bool = False):
    """``get_module(op_file, dtype, target, device, tf32).get_function(name)``, memoized: the
    launchers call this once per launch."""
    key = (op_file, name, np.dtype(dtype), bool(tf32), target, device if target == "cuda" else _sim_arch.get(),
           _env.get("GPUCONV_KERNELS_DIR"), _build_switch(op_file, target))
    fn = _functions.get(key)
    if fn is None:  # (threads asking at once all get the one kept: limits raised on it stay with it)
        fn = _functions.setdefault(key, get_module(op_file, dtype, target, device, tf32).get_function(name))
    return fn


def clear_cache():
    """Forget compiled modules (the on-disk caches, :func:`cuda_cache_dir` and the simulator's, stay)."""
    with _cache_lock:
        _cache.clear()
        _functions.clear()
        _dynamic_limit.clear()  # keyed by the id of a memoized function


# ----------------------------------------------------------------------------- NVRTC
def nvrtc_compile(src: str, op_file: str, dtype, arch: str, where: str = "", tf32: bool = False,
                  with_ptx: bool = False) -> bytes | tuple[bytes, str]:
    """Compile the translation unit ``src`` (``kernels/<op_file>.cu`` built for ``dtype``, TF32 build when ``tf32``) with
    NVRTC and :data:`NVRTC_OPTIONS` alone, for ``arch``: ``'sm_XX'`` gives a CUBIN,
    ``'compute_XX'`` PTX. No GPU needed. The one compile behind :func:`nvrtc_check` and the GPU
    path; ``where`` (e.g. ', device 0') completes the error message. ``with_ptx``: (output, PTX)
    from the one compile (an 'sm_XX' compile's PTX is the text its 'compute_XX' gives).

    Raises :class:`KernelCompileError` with the compiler log (file(line): message) on failure,
    and ImportError when the NVRTC binding (cupy_backends, the nvidia-cuda-nvrtc wheel) is absent."""
    nvrtc = nvrtc_binding()
    prog = nvrtc.createProgram(src, f"{op_file}.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", *NVRTC_OPTIONS])
        except nvrtc.NVRTCError as exc:
            raise KernelCompileError(f"kernels/{op_file}.cu ({_label(dtype, tf32)}, {arch}{where}) failed to compile "
                                     f"with NVRTC {_nvrtc_version(nvrtc)} ({exc}):\n{nvrtc.getProgramLog(prog)}") from None
        out = _cubin(nvrtc, prog) if arch.startswith("sm_") else nvrtc.getPTX(prog)
        out = out if isinstance(out, bytes) else out.encode()
        if with_ptx:
            ptx = nvrtc.getPTX(prog)
            return out, ptx.decode() if isinstance(ptx, bytes) else ptx
    finally:
        nvrtc.destroyProgram(prog)
    return out


def nvrtc_binding():
    """CuPy's NVRTC binding (``cupy_backends.cuda.libs.nvrtc``), its library loaded; ImportError,
    naming the wheel to install, where either is missing. CuPy 14 imports the binding without the
    library and loads libnvrtc at its first call, through cuda.pathfinder, whose
    DynamicLibNotFoundError is a RuntimeError."""
    from cupy_backends.cuda.libs import nvrtc  # raises ImportError without CuPy
    try:
        nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001  (DynamicLibNotFoundError, an OSError of a broken install)
        why = (str(exc).splitlines() or [""])[0]
        raise ImportError(f"CuPy's NVRTC binding could not load the NVRTC library ({type(exc).__name__}: {why}): "
                          "pip install nvidia-cuda-nvrtc (for cupy-cuda13x) or nvidia-cuda-nvrtc-cu12 (for "
                          "cupy-cuda12x)") from exc
    return nvrtc


def _cubin(nvrtc, prog) -> bytes:
    """The whole CUBIN of the compiled ``prog``: ``nvrtcGetCUBINSize`` bytes, read through the
    NVRTC library CuPy loaded. CuPy's ``nvrtc.getCUBIN`` cannot be used: it treats the image
    like NUL-terminated PTX and drops its last byte, which the ELF's own header tables cover
    (the driver then refuses, or misreads, the truncated image)."""
    import ctypes
    lib = _nvrtc_library()
    size = ctypes.c_size_t()
    _nvrtc_ok(nvrtc, lib.nvrtcGetCUBINSize(ctypes.c_void_p(prog), ctypes.byref(size)), "nvrtcGetCUBINSize")
    buf = ctypes.create_string_buffer(size.value)
    _nvrtc_ok(nvrtc, lib.nvrtcGetCUBIN(ctypes.c_void_p(prog), buf), "nvrtcGetCUBIN")
    image = buf.raw[:size.value]
    elf_image_end(image)  # a ValueError here means NVRTC handed back something that is not a whole ELF
    return image


def _nvrtc_ok(nvrtc, status, call):
    if status != 0:
        raise KernelCompileError(f"{call} failed with NVRTC status {status} (NVRTC {_nvrtc_version(nvrtc)})")


@functools.lru_cache(maxsize=1)
def _nvrtc_library():
    """The libnvrtc that cupy_backends loaded into this process (the same one compiled ``prog``)."""
    import ctypes
    import ctypes.util
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "/libnvrtc.so" in line or "/libnvrtc64" in line}
    except OSError:
        paths = set()
    for path in sorted(paths):
        if "builtins" not in os.path.basename(path):
            return ctypes.CDLL(path)
    try:  # no /proc (Windows, where the DLL is nvrtc64_<major>0_0.dll): CuPy's loader's memoized answer
        from cuda.pathfinder import load_nvidia_dynamic_lib
        found = load_nvidia_dynamic_lib("nvrtc").abs_path
    except Exception:  # noqa: BLE001  (CuPy older than 14 loads NVRTC without cuda.pathfinder)
        found = None
    found = found or ctypes.util.find_library("nvrtc")
    if found:
        return ctypes.CDLL(found)
    raise KernelCompileError("the NVRTC library CuPy uses could not be located to read a CUBIN; reinstall "
                             "the nvidia-cuda-nvrtc wheel (pip install nvidia-cuda-nvrtc)")


def elf_image_end(image: bytes) -> int:
    """The end of an ELF64 image's header tables (section and program headers), checked to lie
    within ``image``: a truncated CUBIN fails here with a ValueError naming both sizes."""
    import struct
    if len(image) < 64 or image[:4] != b"\x7fELF" or image[4] != 2:
        raise ValueError(f"not an ELF64 image ({len(image)} bytes, starting {image[:4]!r})")
    phoff, shoff = struct.unpack_from("<QQ", image, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", image, 0x36)
    end = max(64, phoff + phentsize * phnum, shoff + shentsize * shnum)
    if end > len(image):
        raise ValueError(f"truncated ELF image: its header tables end at byte {end}, the image has {len(image)}")
    return end


def _nvrtc_version(nvrtc) -> str:
    return ".".join(str(v) for v in nvrtc.getVersion())


@functools.lru_cache(maxsize=None)
def nvrtc_check(op_file: str, arch: str = "compute_80", dtype=np.float32, tf32: bool = False) -> str:
    """Compile ``kernels/<op_file>.cu`` (for ``dtype``; its TF32 build when ``tf32``) with NVRTC for
    the virtual ``arch`` (no GPU needed), with the options the GPU path uses; return the PTX.
    Errors as in :func:`nvrtc_compile`."""
    if not arch.startswith("compute_"):
        raise ValueError(f"nvrtc_check arch {arch!r}: use a virtual architecture such as 'compute_80' (it returns PTX)")
    return nvrtc_compile(build_source(op_file, dtype, tf32), op_file, dtype, arch, tf32=tf32).decode()


def wgmma_available(target: str, device: int | None = None) -> bool:
    """Whether the warpgroup (wgmma) kernels of :data:`ARCH_SPECIFIC` files run on ``target``: on
    the simulator always; on a GPU where those files are built for sm_90a (compute capability 9.0,
    Hopper, with an NVRTC that targets sm_90), the build _compile_cuda makes. Anywhere else their
    entry points trap, which would end the process's CUDA context: the launchers never send them.
    ``GPUCONV_WGMMA=0`` turns them off on a GPU (tc128 runs where one is asked for, autotuning
    leaves them out): the switch for a GPU or driver where they fail. (Not in the simulator's sm_75
    build, :func:`sim_arch`.)"""
    if target == "sim":
        return _sim_arch.get() is None
    if not _env.flag("GPUCONV_WGMMA", default=True):
        return False
    if device is None:  # the current GPU, asked at each call (the answer is cached per GPU)
        device = backend.require_cupy().cuda.Device().id
    return _arch_specific_build(int(device))


def launch_setting(target: str, occupancy: bool = False):
    """What, besides a launch's arrays, sizes and variant choices, decides how a convolution is
    launched on ``target``, as a hashable value the launchers key their memoized launch plans by: on
    the simulator its arch (:func:`sim_arch`: the tensor cores it has, wgmma or not); on a GPU
    ``GPUCONV_WGMMA`` (:func:`wgmma_available`), and with ``occupancy`` (a plan that asks
    :func:`resident_blocks`) also ``GPUCONV_KERNELS_DIR``, the kernels built. (The device is keyed
    apart: the launch's own.)"""
    if target == "sim":
        return _sim_arch.get()
    wgmma = _env.get("GPUCONV_WGMMA")
    return (wgmma, _env.get("GPUCONV_KERNELS_DIR")) if occupancy else wgmma


def current_sim_arch() -> int | None:
    """The compute capability the simulator stands for here (:func:`sim_arch`; None: all of them)."""
    return _sim_arch.get()


# Files whose kernels are mma.sync/ldmatrix/cp.async (kernels/mma.cuh): they build for sm_75 and
# newer, and run on such GPUs only, in the builds whose tensor-core format the GPU multiplies:
# float16 from compute capability 7.5 (Turing's mma.m16n8k8 .f16, the T4 of Colab's free tier),
# bfloat16 and TF32 from 8.0 (Ampere's mma .bf16 and .tf32). wgmma: sm_90a only (ARCH_SPECIFIC).
TENSOR_CORE_FILES = tuple(f for f, headers in UNIT_HEADERS.items() if "mma.cuh" in headers)
TENSOR_CORE_MIN_CC = {"float16": 75, "bfloat16": 80, "tf32": 80}


def tensor_core_min_cc(dtype=None, tf32: bool = False) -> int:
    """The compute capability from which ``dtype``'s convolutions and GEMMs run on tensor cores
    (``tf32``: float32 in TF32 mode): 75 for float16, 80 for bfloat16 and TF32, and 80 for None
    (every tensor-core format)."""
    if dtype is None:
        return max(TENSOR_CORE_MIN_CC.values())
    return TENSOR_CORE_MIN_CC.get("tf32" if tf32 else np.dtype(dtype).name, max(TENSOR_CORE_MIN_CC.values()))


def arch_capability(arch: str) -> int:
    """The compute capability (90 for sm_90, sm_90a, compute_90) of an NVRTC target; a ValueError
    that says how to write one otherwise."""
    m = re.fullmatch(r"(?:sm|compute)_(\d{2,3})[af]?", str(arch))  # (a: arch-specific, f: family; CUDA 12.9+)
    if m is None:
        raise ValueError(f"{arch!r} is not an NVRTC target: write sm_NN or compute_NN with the compute "
                         "capability's digits, e.g. sm_90 (H100/H200) or sm_80 (A100)")
    return int(m.group(1))


def runs_as(variant: str, target: str, device: int | None = None, dtype=None, tf32: bool = False) -> str | None:
    """The conv2d variant that launches when ``variant`` is asked for on ``target`` for ``dtype``
    (None: every tensor-core format; ``tf32``: float32 in TF32 mode): itself, a wgmma tile's
    mma.sync fallback (:data:`WGMMA_FALLBACK`) where wgmma does not run, None for any tensor-core
    tile on a GPU without tensor cores for it (a CUDA-core tile then runs, chosen by the channel
    rule)."""
    if variant in TC_VARIANTS and not tensor_cores_available(target, device, dtype, tf32):
        return None
    return tensor_core_tile(variant, target, device)


def tensor_core_tile(variant: str, target: str, device: int | None = None) -> str:
    """The tile a tensor-core ``variant`` launches as on ``target``: itself, or where wgmma does not
    run (a GPU other than Hopper) its mma.sync fallback (:data:`WGMMA_FALLBACK`)."""
    if variant in WGMMA_FALLBACK and not wgmma_available(target, device):
        return WGMMA_FALLBACK[variant]
    return variant


def tensor_cores_available(target: str, device: int | None = None, dtype=None, tf32: bool = False) -> bool:
    """Whether the tensor-core kernels (:data:`TENSOR_CORE_FILES`) run ``dtype`` (``tf32``: float32
    in TF32 mode; None: every tensor-core format) on ``target``: on the simulator always (in its
    sm_75 build, :func:`sim_arch`, as on a T4); on a GPU of compute capability 7.5 or newer for
    float16 (Turing: a T4, RTX 20xx), 8.0 or newer for bfloat16 and TF32 (Ampere on). Elsewhere (a
    T4's bfloat16 and TF32, a V100) the convolutions run the CUDA-core tiles, which compute the
    same precision rule, and the linear layer's GEMMs run as 1x1 convolutions."""
    if target == "sim":
        cc = _sim_arch.get()
        return cc is None or cc >= tensor_core_min_cc(dtype, tf32)
    return _compute_capability(device) >= tensor_core_min_cc(dtype, tf32)


def _compute_capability(device) -> int:
    """The compute capability of GPU ``device`` (None: the current one, looked up at each call, so
    a process that switches between GPUs of different architectures asks the right one)."""
    if device is None:
        device = backend.require_cupy().cuda.Device().id
    return _compute_capability_of(int(device))


@functools.lru_cache(maxsize=None)
def _compute_capability_of(device: int) -> int:
    return int(backend.require_cupy().cuda.Device(device).compute_capability)


def tensor_cores_for(target: str, device, dtype=None, tf32: bool = False) -> bool:
    """:func:`tensor_cores_available` for a launch of ``dtype``, looking its device up (``device()``)
    only on a machine where some GPU lacks them: every launch asks, and most machines have no such
    GPU. (Not memoized itself: ``device`` is a new closure over the launch's arrays at every call.)"""
    if target == "sim":
        return tensor_cores_available(target, None, dtype, tf32)
    if target != "cuda":  # a choice asked of no device (resolve() without a target): the registry's
        return True
    min_cc = tensor_core_min_cc(dtype, tf32)
    return _every_gpu_has_tensor_cores(min_cc) or _compute_capability(device()) >= min_cc


@functools.lru_cache(maxsize=None)
def _every_gpu_has_tensor_cores(min_cc: int) -> bool:
    """Whether every GPU of this machine is of compute capability ``min_cc`` or newer (the common
    case: then no launch looks up its device)."""
    count = backend.require_cupy().cuda.runtime.getDeviceCount()
    return all(_compute_capability(d) >= min_cc for d in range(count))


@functools.lru_cache(maxsize=None)
def _arch_specific_build(device) -> bool:
    cc = _compute_capability(device)
    return cc == 90 and nvrtc_arch(cc, device) == "sm_90"


def nvrtc_arch(compute_capability, device: int | None = None) -> str:
    """The NVRTC target for a device of ``compute_capability`` (CuPy's string, e.g. '90'):
    ``'sm_90'`` (a CUBIN) when NVRTC supports that arch, else the highest supported virtual arch
    not above it, e.g. ``'compute_90'`` on a newer GPU (PTX, which the driver compiles at load)."""
    nvrtc = nvrtc_binding()
    cc = int(compute_capability)
    archs = sorted(int(a) for a in nvrtc.getSupportedArchs())
    if cc in archs:
        return f"sm_{cc}"
    older = [a for a in archs if a <= cc]
    if older:
        return f"compute_{older[-1]}"
    raise _too_old_for_nvrtc(f"device {device} has compute capability {cc // 10}.{cc % 10} (sm_{cc})", cc)


def _too_old_for_nvrtc(what: str, cc: int) -> KernelCompileError:
    """The error for an arch below the oldest this NVRTC targets: ``what`` named, and the fix."""
    nvrtc = nvrtc_binding()
    archs = sorted(int(a) for a in nvrtc.getSupportedArchs())
    return KernelCompileError(
        f"{what}, and NVRTC {_nvrtc_version(nvrtc)} compiles only for sm_{', sm_'.join(map(str, archs))}: install "
        f"an NVRTC that still targets sm_{cc}, e.g. the CUDA 12 stack (pip install cupy-cuda12x "
        "nvidia-cuda-nvrtc-cu12), or run on Device('sim')")


# ----------------------------------------------------------------------------- the GPU path
def cuda_cache_dir() -> pathlib.Path:
    """Where compiled kernel binaries are kept: $GPUCONV_CUDA_CACHE, else ~/.cache/gpuconv/cuda (a
    directory of this user's under the temporary one where there is no home directory)."""
    global _cache_dir_warned
    env = os.environ.get("GPUCONV_CUDA_CACHE")
    try:
        path = pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "gpuconv" / "cuda"
    except RuntimeError:  # no home directory (an arbitrary container uid)
        return private_temp_dir(_SPARE)
    problem = untrusted_cache_dir(path)
    if problem is None:
        return path
    fallback = private_temp_dir(_SPARE)
    if not _cache_dir_warned:
        _cache_dir_warned = True
        warnings.warn(f"gpuconv: the CUDA kernel cache cannot be trusted ({problem}); using {fallback} instead",
                      RuntimeWarning, stacklevel=3)
    return fallback


_cache_dir_warned = False
# The cache's own files: <op>-<build>-<arch>-<key>.cubin/.ptx, and write_atomic's leftovers of them.
CACHE_FILES = re.compile(r"^\.?[\w.+-]+-[0-9a-f]{24}\.(cubin|ptx)(\.\w+\.tmp)?$")


_cache_warned = False


def _store(path: pathlib.Path, binary: bytes) -> pathlib.Path | None:
    """Put ``binary`` in the cache at ``path``; where the cache is not writable (a read-only home, a
    full disk), in this user's private directory under the temporary one (which later processes
    look in too), with a warning (once). Returns where it was stored, None where neither took it."""
    global _cache_warned
    try:
        make_dirs(path.parent)
        return write_atomic(path, binary)
    except OSError as exc:
        spare, stored = private_temp_dir(_SPARE), None
        if spare != path.parent:
            with contextlib.suppress(OSError):
                stored = write_atomic(spare / path.name, binary)
        if not _cache_warned:
            _cache_warned = True
            instead = (f"they are kept in {spare} instead (until the system cleans it)" if stored is not None
                       else "kernels are compiled again in every process")
            warnings.warn(f"gpuconv: the CUDA kernel cache {path.parent} is not writable ({exc}); {instead}. "
                          "Set GPUCONV_CUDA_CACHE to a writable directory", RuntimeWarning, stacklevel=2)
        return stored


_SPARE = "gpuconv-cuda"  # the private temporary directory of the kernels the cache could not take


def _cache_candidates(name: str) -> list:
    """Where the cached binary ``name`` may be: the cache, then the spare directory where a process
    put what the cache refused (only where one was made)."""
    cache = cuda_cache_dir()
    spare = private_temp_dir(_SPARE, create=False)
    return [cache / name] + ([spare / name] if spare is not None and spare != cache else [])


def _whole_binary(path: pathlib.Path) -> bool:
    """False for a cached CUBIN that is not a whole ELF image (it is compiled and stored again)."""
    if path.suffix != ".cubin":
        return True
    try:
        elf_image_end(path.read_bytes())
        return True
    except (OSError, ValueError):
        return False


def _cached_binary(src, op_file, dt, arch, where="", tf32=False):
    """``(path, binary)``: the binary of ``src`` for ``arch`` in the disk cache (binary None: it was
    there already), or compiled now (path None when the cache is unwritable)."""
    nvrtc = nvrtc_binding()
    key = hashlib.sha256("\0".join(["gpuconv-cuda-2", src, *NVRTC_OPTIONS, arch, _nvrtc_version(nvrtc)])
                         .encode()).hexdigest()
    label = _label(dt, tf32).replace("+", "-")
    candidates = _cache_candidates(f"{op_file}-{label}-{arch}-{key[:24]}.{'cubin' if arch.startswith('sm_') else 'ptx'}")
    for path in candidates:
        if trusted_binary(path) and _whole_binary(path):  # (one another user could have put there is compiled again)
            _files.mark_used(path)
            return path, None
    limit = _files.cache_limit()  # (a bad $GPUCONV_CACHE_LIMIT_MB is an error before the compile, not after)
    binary = nvrtc_compile(src, op_file, dt, arch, where, tf32)
    path = _store(candidates[0], binary)
    if path is None:
        return None, binary
    _files.prune_cache(path.parent, CACHE_FILES, limit)
    return path, binary


@contextlib.contextmanager
def _binary_file(src, op_file, dt, arch, device, tf32=False):
    """The path of the binary of ``src`` for ``arch``, valid inside the block: from the disk cache,
    compiled into it on a miss, or (cache unwritable) compiled into a directory of its own that is
    removed once the block has loaded it."""
    path, binary = _cached_binary(src, op_file, dt, arch, f", device {device}", tf32)
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="gpuconv-cuda-") as tmp:
        path = pathlib.Path(tmp) / f"{op_file}.{'cubin' if arch.startswith('sm_') else 'ptx'}"
        path.write_bytes(binary)
        yield path


def _file_arch(op_file, arch) -> str:
    """What ``kernels/<op_file>.cu`` is built for where the others build for ``arch``: sm_90a
    for the :data:`ARCH_SPECIFIC` files on Hopper (wgmma exists only there), else ``arch``. With
    ``GPUCONV_WGMMA=0`` (the tiles off: :func:`wgmma_available`) they keep the portable sm_90
    build, which compiles no wgmma: a GPU, driver or NVRTC where the sm_90a build fails to compile
    or load still runs every other tensor-core kernel of those files."""
    wgmma = op_file in ARCH_SPECIFIC and _env.flag("GPUCONV_WGMMA", default=True)
    return "sm_90a" if arch == "sm_90" and wgmma else arch


def _device_arch(op_file, device) -> str:
    """What ``kernels/<op_file>.cu`` is built for on GPU ``device`` (:func:`nvrtc_arch`)."""
    cp = backend.require_cupy()
    return _file_arch(op_file, nvrtc_arch(cp.cuda.Device(device).compute_capability, device))


def _compile_cuda(src, op_file, dt, device, tf32=False):
    cp = backend.require_cupy()
    arch = _device_arch(op_file, device)
    with _binary_file(src, op_file, dt, arch, device, tf32) as path, cp.cuda.Device(device):
        mod = cp.RawModule(path=str(path))
        try:
            mod.compile()  # load now: a driver that rejects the binary says so here, not at first launch
        except Exception as exc:  # CUDADriverError, e.g. PTX newer than the driver
            raise KernelCompileError(
                f"kernels/{op_file}.cu ({_label(dt, tf32)}, {arch}) compiled, but device {device} cannot load {path} "
                f"({type(exc).__name__}: {exc}): update the NVIDIA driver, or delete the file to rebuild it") from exc
    return mod


def precompile(device: int | None = None, *, arch: str | None = None, files=KERNEL_FILES, dtypes=None,
               tf32: bool = True, jobs: int | None = None):
    """Compile the builds of ``files`` for ``dtypes`` (default: all four; with ``tf32``, float32's
    TF32 build too for :data:`TF32_FILES`) for GPU ``device`` (default: the current one), or for
    ``arch`` ('sm_90': no GPU needed), into the disk cache (:func:`cuda_cache_dir`), ``jobs`` at a
    time (default: one per CPU core; NVRTC releases the GIL): no launch later waits for a compile,
    which otherwise happens module by module at first use (some 10 s each for conv2d_tc's
    tensor-core builds). The :data:`TENSOR_CORE_FILES` build only where the GPU or arch runs
    them: from sm_75 their float16 and trapping (float32, float64) builds, from sm_80 all
    (nothing launches the others there, and mma.cuh's sm_75 build has no bfloat16 or TF32 form). Returns a record per build, ``{"file", "build", "arch",
    "seconds", "cached", "stored"}`` (stored: in the disk cache now, not in the temporary spare of an unwritable one), in ``files``' order; raises the first compile error, after the other
    builds finish."""
    import concurrent.futures
    unknown = sorted(set(files) - set(KERNEL_FILES))
    if unknown:
        raise ValueError(f"precompile: no kernel files {unknown}; they are {', '.join(KERNEL_FILES)}")
    wanted = set(_DTYPES) if dtypes is None else {np.dtype(d) for d in dtypes}
    if arch is None:
        device = backend.require_cupy().cuda.Device(device).id
        cc = _compute_capability(device)
    else:
        cc = arch_capability(arch)
        nvrtc = nvrtc_binding()
        if cc < min(int(a) for a in nvrtc.getSupportedArchs()):  # (a raw "invalid --gpu-architecture" otherwise)
            raise _too_old_for_nvrtc(f"precompile(arch={arch!r}) asks for compute capability {cc // 10}.{cc % 10}", cc)
    if cc < min(TENSOR_CORE_MIN_CC.values()):  # never launched there (and mma.sync does not build for it)
        files = tuple(f for f in files if f not in TENSOR_CORE_FILES)
    archs = {f: _device_arch(f, device) if arch is None else _file_arch(f, arch) for f in files}

    def runs(f, dt, t):  # a tensor-core file's build of a format this GPU lacks: never launched, nor built
        low = t or dt in precision.LOW_PRECISION
        return f not in TENSOR_CORE_FILES or not low or cc >= tensor_core_min_cc(dt, t)

    builds = [(f, dt, t) for f in files for dt in _DTYPES if dt in wanted
              for t in ((False, True) if tf32 and dt == precision.float32 and f in TF32_FILES else (False,))
              if runs(f, dt, t)]

    def one(build):
        f, dt, tf = build
        start = time.perf_counter()
        path, binary = _cached_binary(build_source(f, dt, tf), f, dt, archs[f], "", tf)
        return {"file": f, "build": _label(dt, tf), "arch": archs[f], "seconds": time.perf_counter() - start,
                "cached": binary is None, "stored": path is not None and path.parent == cuda_cache_dir()}

    with concurrent.futures.ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
        futures = [pool.submit(one, b) for b in builds]
        concurrent.futures.wait(futures)
    return [fut.result() for fut in futures]


# ----------------------------------------------------------------------------- the launch log
class Launch(NamedTuple):
    """One kernel launch: its entry point, grid, block, target ('cuda' or 'sim') and build
    ('float', 'float+tf32', 'double', 'bfloat16', 'float16': the precision it ran in)."""
    name: str
    grid: tuple
    block: tuple
    target: str
    build: str = "float"


class LaunchLog(list):
    """The :class:`Launch` records of every kernel launched while :func:`launch_log` was open, in
    order, and in ``dispatches`` one ``(op, target, path)`` per op dispatched on a kernel target,
    where ``path`` is 'kernel' (its launcher ran), 'reference' (an op without kernels: its
    NumPy/CuPy reference ran), or a fallback of an op that has kernels: 'declined' (its launcher
    did not take the case) or 'no-launcher' (none registered for this target)."""

    def __init__(self):
        super().__init__()
        self.dispatches = []

    @property
    def names(self) -> list:
        return [rec.name for rec in self]

    def clear(self):
        super().clear()
        self.dispatches.clear()


_launch_logs: contextvars.ContextVar[tuple] = contextvars.ContextVar("gpuconv_launch_logs", default=())


@contextlib.contextmanager
def launch_log():
    """``with launch_log() as log: ...`` collects every launch on 'cuda' and 'sim' in ``log``
    (nested logs each see the launches of their block), so a caller can tell that the kernels
    ran, and which variant, rather than a reference path."""
    log = LaunchLog()
    token = _launch_logs.set(_launch_logs.get() + (log,))
    try:
        yield log
    finally:
        _launch_logs.reset(token)


def _log_launch(kernel, grid, block, target, dtype, tf32):
    rec = Launch(kernel, tuple(int(g) for g in grid), tuple(int(b) for b in block), target, _label(dtype, tf32))
    for log in _launch_logs.get():
        log.append(rec)


def fallbacks(log: LaunchLog) -> list:
    """The dispatches in ``log`` where an op that has kernels ran its reference instead."""
    return [d for d in log.dispatches if d[2] in ("declined", "no-launcher")]


def log_dispatch(op_name: str, target: str, path: str):
    """Note in the open launch logs that ``op_name`` ran on ``target`` by ``path``."""
    for log in _launch_logs.get():
        log.dispatches.append((op_name, target, path))


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
        if device is None:  # the current device, as CuPy would launch on it
            device = backend.require_cupy().cuda.Device().id
        return _device_sms(device)
    return NOMINAL_SMS


# Blocks of one kernel an SM holds at once, as the simulator plans it (the tensor-core 128x128
# kernels' figure on an H200: registers and shared memory allow two).
NOMINAL_BLOCKS_PER_SM = 2
_resident: dict = {}


def resident_blocks(op_file: str, name: str, dtype, threads: int, target: str, device: int | None = None,
                    tf32: bool = False, shared_mem: int = 0) -> int:
    """Blocks of kernel ``name`` (``threads`` threads and ``shared_mem`` bytes of dynamic shared memory each) that one SM
    runs at once: the CUDA occupancy calculator's answer for the built kernel on 'cuda' (its
    registers, shared memory and threads), NOMINAL_BLOCKS_PER_SM on the simulator. A grid of
    ``resident_blocks * sm_count`` blocks is one full wave."""
    if target != "cuda":
        return NOMINAL_BLOCKS_PER_SM
    if device is None:
        device = backend.require_cupy().cuda.Device().id
    key = (op_file, name, np.dtype(dtype), bool(tf32), device, int(threads), int(shared_mem),
           _env.get("GPUCONV_KERNELS_DIR"))
    n = _resident.get(key)
    if n is None:
        with backend.cupy_module().cuda.Device(device):
            fn = get_function(op_file, name, dtype, target, device, tf32)
            _allow_dynamic_shared(fn, shared_mem)  # under the default limit the calculator answers 0
            try:
                from cupy_backends.cuda.api import driver
                occupancy = driver.occupancyMaxActiveBlocksPerMultiprocessor
            except (ImportError, AttributeError):  # a CuPy without the occupancy call: plan as the simulator
                n = NOMINAL_BLOCKS_PER_SM
            else:
                n = int(occupancy(_function_handle(fn), int(threads), int(shared_mem)))
        n = _resident[key] = max(1, n)
    return n


def _function_handle(fn) -> int:
    """The CUfunction of a kernel from :func:`get_function`: CuPy's RawKernel (what
    RawModule.get_function returns) holds it in ``.kernel.ptr``."""
    return int(fn.kernel.ptr)


def grid_1d(n: int, block: int = BLOCK, target: str = "sim", device: int | None = None):
    """(grid, block) for the grid-stride elementwise kernels: one thread per element up to
    32 blocks per SM (beyond that the loop strides; more blocks only add scheduling)."""
    return _grid_1d(int(n), block, sm_count(target, device))


@functools.lru_cache(maxsize=4096)
def _grid_1d(n: int, block: int, sms: int):
    return (max(1, min(-(-n // block), 32 * sms)), 1, 1), (block, 1, 1)


GRID_X_MAX, GRID_Y_MAX, GRID_Z_MAX = 2**31 - 1, 65535, 65535  # CUDA's grid limits (compute capability >= 3.0)


def tile_grid_fits(rows: int, cols: int, bm: int, bn: int, splits: int = 1) -> bool:
    """Whether a tiled GEMM kernel's grid (:func:`tile_grid`) fits CUDA's limits: at most 65535
    column tiles on y (4M columns at 64 a tile: a linear layer's in_features after a flatten,
    which the launchers then send to the untiled v1 kernels) and 65535 splits on z."""
    return (-(-int(rows) // bm) <= GRID_X_MAX and -(-int(cols) // bn) <= GRID_Y_MAX
            and int(splits) <= GRID_Z_MAX)


def tile_grid(rows: int, cols: int, bm: int, bn: int, splits: int = 1):
    """The grid of a tiled GEMM kernel over a ``rows`` x ``cols`` output in ``bm`` x ``bn`` tiles
    and ``splits`` reduction splits: row tiles on x, column tiles on y, splits on z (a ValueError
    naming the sizes where that does not fit: the launchers check :func:`tile_grid_fits` first)."""
    if not tile_grid_fits(rows, cols, bm, bn, splits):
        raise ValueError(f"a GEMM of {rows} x {cols} outputs in {bm}x{bn} tiles, {splits} splits, does not fit a "
                         f"CUDA grid ({GRID_X_MAX} x {GRID_Y_MAX} x {GRID_Z_MAX} blocks)")
    return -(-int(rows) // bm), -(-int(cols) // bn), int(splits)


def launch_1d(op_file: str, kernel: str, target: str, arrays, scalars=(), per_thread: int = 1):
    """A grid-stride elementwise launch: ``kernel(*arrays, int64(n), *scalars)`` with ``n`` the
    element count of ``arrays[0]`` (which also gives the dtype and the device), one thread per
    ``per_thread`` elements (see :func:`grid_1d`). Nothing runs when ``n`` is 0."""
    n = int(arrays[0].size)
    if n == 0:
        return
    device = array_device(arrays[:1])
    grid, block = grid_1d(-(-n // per_thread), BLOCK, target, device)
    memory = tuple([layout.memory_order(a) for a in arrays])  # channels_last arrays as their NHWC views
    launch(op_file, kernel, arrays[0].dtype, target, grid, block, memory + (np.int64(n),) + tuple(scalars),
           device=device)


def launch_slots(op_file: str, kernel: str, dtype, target: str, slots, sizes, width: int, idle, extra=(),
                 device: int | None = None):
    """One launch of a kernel that takes ``width`` parameter slots written out as arguments (SGD's
    update, the mixed-precision casts): ``slots`` are the used slots' argument tuples, ``sizes``
    their element counts, ``idle`` the tuple that fills each unused slot (arrays of the first,
    no elements), ``extra`` the arguments after the slots. Grid y picks the slot, x strides over
    its elements (:func:`grid_1d` for the largest)."""
    args = tuple([a for slot in slots for a in slot]) + tuple(idle) * (width - len(slots)) + tuple(extra)
    grid, block = grid_1d(max([int(n) for n in sizes]), BLOCK, target, device)
    launch(op_file, kernel, dtype, target, (grid[0], len(slots), 1), block, args, device=device)


def contiguous_like(*arrays, outputs: int = 1, keep_channels_last: bool = False):
    """``arrays`` made C-contiguous (copies only where needed), then ``outputs`` new empty arrays
    like the first: the inputs and the outputs of an elementwise launch. With
    ``keep_channels_last``, arrays that are all channels_last stay as they are and the outputs
    are channels_last too (an elementwise kernel walks memory, whatever its order; see
    :func:`launch_1d`)."""
    xp = backend.get_array_module(*arrays)
    if keep_channels_last and layout.run_channels_last(*arrays):
        return arrays + tuple(layout.empty_like(arrays[0]) for _ in range(outputs))
    # (ascontiguousarray would make a 0-d array 1-d; a 0-d array is always contiguous)
    arrays = tuple(a if a.flags.c_contiguous else xp.ascontiguousarray(a) for a in arrays)
    return arrays + tuple(xp.empty_like(arrays[0]) for _ in range(outputs))


INT_MAX = 2**31 - 1  # the kernels index rows, columns and offsets with int


def int_indexable(*sizes, spare: int = 0) -> bool:
    """Whether every size (element or byte counts, as the kernel indexes them), with ``spare`` more
    for a tile's overhang past its last row, stays an int."""
    limit = INT_MAX - spare
    for s in sizes:
        if s > limit:
            return False
    return True


@functools.lru_cache(maxsize=4096)
def int32_args(values: tuple) -> tuple:
    """``values`` (ints, bools) as the np.int32 arguments of a launch, made once per set of values:
    a network launches with few, every step."""
    return tuple(np.int32(v) for v in values)


def address(a) -> int:
    """The address of a NumPy or CuPy array's first element (what alignment rules are about)."""
    if type(a) is np.ndarray:  # read off the array interface: no ctypes object made per launch
        return a.__array_interface__["data"][0]
    return a.data.ptr if backend.is_cupy_array(a) else a.ctypes.data


# Bytes of channels per thread of the channels_last ``_vec`` kernels (VEC16 in common.cuh).
VEC_BYTES = 16


def vec_lanes(arrays, channels: int, channels_last: bool) -> int:
    """Channels per thread of a ``_vec`` kernel over ``arrays`` (pooling, batch norm): VEC_BYTES of
    them where the arrays are channels_last, ``channels`` is a multiple and every array is aligned
    to VEC_BYTES; else 1, the element kernel. ``arrays[0]`` gives the element size."""
    lanes = VEC_BYTES // arrays[0].itemsize
    if not channels_last or channels % lanes:
        return 1
    for a in arrays:
        if address(a) % VEC_BYTES:
            return 1
    return lanes


# The last-block tickets per device (see tickets): every array ever handed out stays referenced, so
# a CUDA graph that captured one never sees its memory given to another array.
_tickets: dict = {}
_tickets_kept: list = []


def tickets(like, count: int):
    """A uint32 array of at least ``count`` zeros on ``like``'s device (NumPy on the simulator): the
    tickets of the kernels whose last block to arrive finishes a reduction (softmax_cross_entropy,
    batch norm's sums), one per group of blocks. Each such launch counts from 0 and leaves its
    tickets at 0 again, and launches run in stream order, so one array per device serves them all.
    That is gpuconv's model: one stream per device at a time (the current one; a CUDA graph
    replays on it). Two threads running these ops concurrently on two streams of one device would
    share the tickets. 4096 entries (batch norm over 131072 channels) are made at the first use,
    which is eager (StepGraph captures the second step), so no capture allocates them."""
    key = (backend.is_cupy_array(like), array_device([like]))
    t = _tickets.get(key)
    if t is None or t.size < count:
        t = _tickets[key] = backend.get_array_module(like).zeros(max(int(count), 4096), dtype=np.uint32)
        _tickets_kept.append(t)
    return t


def array_device(arrays) -> int | None:
    """The CUDA device id of the first CuPy array in ``arrays`` (None when there is none)."""
    cp = backend.cupy_module()
    if cp is not None:
        ndarray = cp.ndarray  # looked up once: this runs on every launch
        for a in arrays:
            if type(a) is not np.ndarray and isinstance(a, ndarray):  # (NumPy's: the simulator's)
                return backend.device_id(a)
    return None


def launch(op_file: str, kernel: str, dtype, target: str, grid, block, args, shared_mem=0, device=None,
           tf32: bool = False):
    """Run ``kernel`` of ``kernels/<op_file>.cu`` built for ``dtype`` (its TF32 build when
    ``tf32``) on ``target``. On 'cuda' it runs on ``device`` (default: that of the first CuPy
    array in ``args``), made current for the launch."""
    if _launch_logs.get():
        _log_launch(kernel, grid, block, target, dtype, tf32)
    if target != "cuda":
        get_function(op_file, kernel, dtype, target, tf32=tf32)(tuple(grid), tuple(block), tuple(args),
                                                                shared_mem=shared_mem)
        return
    if device is None:
        device = array_device(args)
    with backend.cupy_module().cuda.Device(device):  # the module is loaded on the current device
        fn = get_function(op_file, kernel, dtype, target, device, tf32)
        _allow_dynamic_shared(fn, shared_mem)
        fn(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem)


def _allow_dynamic_shared(fn, shared_mem: int):
    """Raises a GPU kernel's dynamic shared memory limit to ``shared_mem`` bytes where that is past
    the default 48 KiB (the opt-in, cudaFuncAttributeMaxDynamicSharedMemorySize), once per kernel."""
    if shared_mem > DEFAULT_DYNAMIC_SHARED and _dynamic_limit.get(id(fn), DEFAULT_DYNAMIC_SHARED) < shared_mem:
        fn.max_dynamic_shared_size_bytes = int(shared_mem)
        _dynamic_limit[id(fn)] = int(shared_mem)


# Dynamic shared memory a kernel may take without opting in (cudaFuncAttributeMaxDynamicSharedMemorySize),
# and the limits raised so far, per memoized function.
DEFAULT_DYNAMIC_SHARED = 48 * 1024
_dynamic_limit: dict = {}
