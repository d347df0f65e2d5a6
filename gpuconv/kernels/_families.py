"""The kernel families' variants, their defaults per dtype, and the choices over them
(:func:`set_variant`, :func:`use_variant`, GPUCONV_KERNEL_VARIANTS); :func:`resolve` makes "auto"
concrete (see the package's docstring, "Variants")."""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import re
from typing import NamedTuple

import numpy as np

from .. import _env, precision
from .._memo import remember
from . import _capability, _sources, _tuning


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
    if var == "auto" and launch is not None and _tuning.autotunes(target):
        device, geometry = launch()
        # (where it may not time, inside a capture or a no-sync block, the channel rule's choice)
        var = _tuning.tuned_variant(family, dtype, tf32, channels, target, device, geometry, run)
    elif var == "auto":
        var = auto_variant(family, dtype, tf32, channels)
    if var in TC_VARIANTS and not _capability.tensor_cores_for(target, lambda: launch()[0] if launch else None,
                                                               dtype, tf32):
        return auto_variant(family, np.float32, False, channels)  # the CUDA-core tiles, in the arrays' precision
    return var


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
    _sources._build(dt)
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
    return _variants.get(), _tuning._autotune.get(), _tuning._table_changes, precision.get_precision()


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
    # holds ``current``, so its id stays its own; and the family's table the answer came from
    remember(_variant_memo, (family, dtype, tf32, id(current)), (current, VARIANTS[family], var))
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
