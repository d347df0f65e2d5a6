"""Precision: the storage dtypes, the one rule every op follows, and the TF32 compute mode.

Storage dtypes. Arrays hold float64, float32, bfloat16 (:data:`bfloat16`, NumPy's registered
``ml_dtypes.bfloat16``; CuPy takes it from version 14 on when ml_dtypes is installed, support its
developers call experimental: cupy/cupy#9494) or float16. float32 is the default, float64 the
dtype of gradient checks, bfloat16 and float16 the low precisions.

The rule, the same on every backend (the NumPy reference, the kernels on the simulator, a GPU):

- A low-precision op (bfloat16 or float16) takes inputs already in that dtype, computes every
  product and sum in float32 (a product of two bfloat16 or two float16 values is exact in
  float32), and rounds each output ONCE to the output dtype, to nearest even. Outputs have the
  inputs' dtype; a gradient has the dtype of what it is the gradient of. The NumPy reference
  implements this literally: :func:`upcast` to float32, the float32 reference code,
  :func:`round_once` (``astype``: ml_dtypes and NumPy round to nearest even, overflow to inf and
  keep NaN a NaN of the same sign; checked against kernels/common.cuh's explicit rounding for all
  2^32 float32 patterns). The kernels convert with ``to_acc``/``from_acc`` in
  ``kernels/common.cuh``, bit for bit the same conversions.
- Mixed dtypes in one call (x bfloat16, w float32) are a TypeError naming both: cast the
  master copy, e.g. ``w.astype(x.dtype)``.
- Some values stay float32 whatever the input: softmax cross-entropy computes in float32 and
  returns a float32 loss (dlogits in the logits' dtype, rounded once); batch norm computes its
  statistics and the normalization in float32 and keeps gamma, beta, their gradients and the
  running statistics in float32 (its output and dx are rounded once to x's dtype), group norm
  its statistics, weight and bias likewise; a dropout mask holds 0 or 1/(1-p) in float32 (:func:`compute_dtype`).

TF32 is a compute mode of float32 arrays, not a dtype: inside conv2d and linear the float32
multiplicands are rounded to TF32 (10 explicit mantissa bits) before they are multiplied, and
accumulation and output stay float32, as on tensor cores. The rounding is the hardware's, PTX
``cvt.rna.tf32.f32``: to nearest, ties AWAY from zero (PTX ISA, ``cvt``, rounding modifier
``.rna``), reproduced by :func:`round_tf32`. Like PyTorch's ``torch.backends.cuda.matmul.allow_tf32``
it is off by default: ``"fp32"`` is strict IEEE float32, reproducible across backends and
GPUs. Choose it per call (``precision="tf32"`` on ``conv2d_forward``/``conv2d_backward`` and
``linear_forward``/``linear_backward``; None means the current setting) or for a stretch of code::

    gpuconv.set_precision("tf32")            # the process-wide setting
    with gpuconv.precision_mode("fp32"):     # overrides it in this context (a contextvar)
        ...
    gpuconv.get_precision()                  # 'fp32' or 'tf32'

float64 ignores the mode (gradient checks stay exact), and so do bfloat16 and float16, whose
operands are already narrower. The NumPy reference of a TF32 op rounds its multiplicands with
:func:`round_tf32` and runs the float32 reference; a bias or a bias gradient is a sum and is
never rounded.
"""
from __future__ import annotations

import contextlib
import contextvars

import ml_dtypes
import numpy as np

from .backend import get_array_module

bfloat16 = np.dtype(ml_dtypes.bfloat16)
float16 = np.dtype(np.float16)
float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)

# Every dtype an op takes, widest first; the low precisions are computed in float32.
DTYPES = (float64, float32, bfloat16, float16)
LOW_PRECISION = (bfloat16, float16)
DTYPE_NAMES = "float64, float32, bfloat16 (ml_dtypes.bfloat16) or float16"

# Unit roundoff u (half the spacing of 1.0's binade: round to nearest errs by at most u|x|) and
# the smallest subnormal of each format; "tf32" is the TF32 operand format.
_UNIT_ROUNDOFF = {float64: 2.0 ** -53, float32: 2.0 ** -24, bfloat16: 2.0 ** -8, float16: 2.0 ** -11,
                  "tf32": 2.0 ** -11}
_TINY = {float64: 2.0 ** -1074, float32: 2.0 ** -149, bfloat16: 2.0 ** -133, float16: 2.0 ** -24}

PRECISIONS = ("fp32", "tf32")
_PRECISION_DTYPES = {"fp64": "float64", "fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def check_dtype(dtype, where="dtype") -> np.dtype:
    """``dtype`` as one of :data:`DTYPES`, or a TypeError naming them. None is refused (NumPy reads it as
    float64, which a caller meaning "the default" never wants), and a precision name ('bf16') gets its dtype."""
    name = _PRECISION_DTYPES.get(dtype) if isinstance(dtype, str) else None
    hint = f": for the precision {dtype!r} pass dtype={name!r}" if name else ""
    try:
        dt = None if dtype is None or name else np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt not in DTYPES:  # (not just `not in`: float64 == None is True, NumPy coercing None)
        raise TypeError(f"{where}={dt if dt is not None else repr(dtype)} must be {DTYPE_NAMES}{hint}")
    return dt


def is_low_precision(dtype) -> bool:
    """bfloat16 or float16."""
    return np.dtype(dtype) in LOW_PRECISION


def compute_dtype(dtype) -> np.dtype:
    """The dtype products and sums run in for arrays of ``dtype``: float64 for float64, else float32."""
    return float64 if np.dtype(dtype) == float64 else float32


def unit_roundoff(dtype) -> float:
    """u of ``dtype`` (or of ``"tf32"``): 2^-53, 2^-24, 2^-8 (bfloat16), 2^-11 (float16, TF32)."""
    return _UNIT_ROUNDOFF["tf32" if isinstance(dtype, str) and dtype == "tf32" else np.dtype(dtype)]


def smallest_subnormal(dtype) -> float:
    """The spacing of ``dtype`` next to zero: rounding there errs by at most half of it."""
    return _TINY[np.dtype(dtype)]


def upcast(*arrays):
    """``arrays`` with each bfloat16/float16 one converted to float32 (exact); the others, None
    included, as they are. One array in, one array out."""
    if len(arrays) == 1:  # the common case, without the tuple
        return _up(arrays[0])
    return tuple(map(_up, arrays))


def _up(a):
    # (both low precisions are 2 bytes wide: any other width, float64 and float32 among them, is
    # answered by one attribute read, without comparing dtypes)
    if a is None or a.dtype.itemsize != 2:
        return a
    return a.astype(float32) if a.dtype in LOW_PRECISION else a


def round_once(a, dtype):
    """``a`` rounded to ``dtype`` (to nearest even; a no-op when it has that dtype already)."""
    return a if a is None or a.dtype is dtype or a.dtype == np.dtype(dtype) else a.astype(dtype)


def channel_sum(a, mean: bool = False):
    """``a.sum((0, 2, 3))`` (``mean``: ``a.mean((0, 2, 3))``) of an (N, C, H, W) array, added in
    its own dtype. NumPy adds pairwise (an error growing with the log of the count) only along the
    contiguous axis: on a channels_last array, whose channels are that axis, it would add a
    channel's N*H*W values one at a time (a batch norm's variance about a mean of 300 standard
    deviations came out a third off), so those are summed from a copy with each channel's values
    contiguous."""
    xp = get_array_module(a)
    if a.ndim == 4 and a.shape[1] > 1 and abs(a.strides[1]) < abs(a.strides[3]):
        rows = xp.ascontiguousarray(xp.moveaxis(a, 1, 0)).reshape(a.shape[1], -1)
        return rows.mean(axis=1) if mean else rows.sum(axis=1)
    return a.mean(axis=(0, 2, 3)) if mean else a.sum(axis=(0, 2, 3))


def round_tf32(a):
    """float32 ``a`` rounded to TF32 as PTX ``cvt.rna.tf32.f32`` does, held in float32: to
    nearest with ties away from zero on the magnitude (add half the weight of the 13 dropped
    bits, then clear them; a carry moves to the next binade, past the largest finite to inf).
    Inf and NaN pass through unchanged. NumPy or CuPy arrays; ``tf32_round`` in
    kernels/common.cuh is the same rule."""
    if a.dtype != float32:
        raise TypeError(f"round_tf32 takes float32 arrays, got {a.dtype}: TF32 is a compute mode of float32")
    xp = get_array_module(a)
    bits = xp.ascontiguousarray(a).view(np.uint32)
    finite = (bits & np.uint32(0x7F800000)) != np.uint32(0x7F800000)
    rounded = (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
    return xp.where(finite, rounded, bits).view(float32)


def multiplicands(tf32: bool, *arrays):
    """The GEMM operands of a reference: upcast (bfloat16/float16 -> float32), then rounded to
    TF32 when ``tf32``; None stays None. One array in, one array out."""
    if not tf32:  # upcast alone (float64 and float32 arrays: themselves)
        return upcast(*arrays)
    out = tuple(None if a is None else round_tf32(a) for a in map(_up, arrays))
    return out[0] if len(out) == 1 else out


# ----------------------------------------------------------------------------- the TF32 setting
_global_precision = "fp32"
_context_precision: contextvars.ContextVar[str | None] = contextvars.ContextVar("gpuconv_precision", default=None)


def _check_precision(value, where="precision"):
    if value not in PRECISIONS:
        raise ValueError(f"{where}={value!r}: use 'fp32' (strict IEEE float32, the default) or 'tf32' (float32 "
                         "multiplicands rounded to TF32 in conv2d and linear, as on tensor cores)")
    return value


def set_precision(value: str):
    """Set the process-wide float32 compute mode: 'fp32' (default) or 'tf32'. A
    :func:`precision_mode` block in effect still wins inside it."""
    global _global_precision
    _global_precision = _check_precision(value, "set_precision")


def get_precision() -> str:
    """The float32 compute mode in effect here: the innermost :func:`precision_mode`, else the
    :func:`set_precision` setting ('fp32' unless changed)."""
    return _context_precision.get() or _global_precision


@contextlib.contextmanager
def precision_mode(value: str):
    """``with precision_mode('tf32'): ...``: the float32 compute mode inside the block (a
    contextvar: threads and asyncio tasks each see their own)."""
    token = _context_precision.set(_check_precision(value, "precision_mode"))
    try:
        yield
    finally:
        _context_precision.reset(token)


def use_tf32(precision, dtype) -> bool:
    """Whether an op on ``dtype`` arrays called with ``precision`` (None: :func:`get_precision`)
    rounds its multiplicands to TF32: only float32 does; the other dtypes ignore the mode."""
    if precision is None:  # (float64 arrays, a gradient check's, answered without reading the setting)
        return dtype == float32 and get_precision() == "tf32"
    return _check_precision(precision) == "tf32" and np.dtype(dtype) == float32

