"""Launcher of the tensor-core GEMM (kernels/gemm_tc.cu) and its NumPy reference.

Internal: the GEMM is the template of the tensor-core convolutions and the linear layer's kernel
(gpuconv/ops/_launch_linear.py), not a public op. ``gemm_tc(a, b)`` computes ``a @ b.T``
(``b_layout='nt'``, b given as [N, K]) or ``a @ b`` (``'nn'``, b as [K, N]) on 'sim' or 'cuda', for
bfloat16 and float16 operands, and for float32 operands in TF32 (``tf32=True``: rounded to TF32 as
they enter the tensor cores), plus ``bias`` (one per output column, the operands' dtype; 'nt'
only) when given. Sums run in float32; the output is rounded once into the operands' dtype, or returned as
float32 with ``out_dtype=np.float32``.
"""
from __future__ import annotations

import re

import numpy as np

from .. import kernels, precision
from ..backend import get_array_module

# The CTA tile gemm_tc.cu computes with ("typedef TcTile64 GemmTile;"), as tc_tile.cuh shapes it.
_GEMM_TILE = re.search(r"typedef (\w+) GemmTile;", kernels.source_text("gemm_tc.cu")).group(1)
TILE, THREADS = kernels.tile_shapes()[_GEMM_TILE].bm, kernels.tile_shapes()[_GEMM_TILE].threads
LAYOUTS = ("nt", "nn")



def vector_bytes(a) -> int:
    """The bytes each copy of the kernel's loader moves for the C-contiguous matrix ``a``: the
    largest of 16, 8, 4 (cp.async) dividing both its row pitch in bytes and its address, else 2
    (16-bit elements in rows of odd length: plain loads)."""
    pitch = a.shape[1] * a.itemsize
    for vec in (16, 8, 4):
        if pitch % vec == 0 and kernels.address(a) % vec == 0:
            return vec
    return 2


def _check(a, b, b_layout, out_dtype, tf32):
    if b_layout not in LAYOUTS:
        raise ValueError(f"b_layout={b_layout!r}: use 'nt' (b is [N, K], C = a @ b.T) or 'nn' (b is [K, N], C = a @ b)")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"gemm_tc multiplies matrices: a has shape {a.shape} and b {b.shape}; pass 2-D arrays")
    if a.dtype != b.dtype:
        raise TypeError(f"gemm_tc operands differ in dtype (a {a.dtype}, b {b.dtype}): cast one, e.g. b.astype(a.dtype)")
    k_b = b.shape[1] if b_layout == "nt" else b.shape[0]
    if a.shape[1] != k_b:
        want = "[N, K]" if b_layout == "nt" else "[K, N]"
        raise ValueError(f"gemm_tc: a is {a.shape} (K = {a.shape[1]}) but b {b.shape} has K = {k_b} as {want} "
                         f"(b_layout={b_layout!r}); pass b with K = {a.shape[1]} or the other layout")
    dt = np.dtype(a.dtype)
    if dt == precision.float32 and not tf32:
        raise TypeError("gemm_tc runs on tensor cores: float32 operands need tf32=True (rounded to TF32); strict "
                        "float32 has no tensor-core format")
    if dt not in (precision.bfloat16, precision.float16, precision.float32):
        raise TypeError(f"gemm_tc takes bfloat16, float16 or float32 (with tf32=True) operands, not {dt}")
    if tf32 and dt != precision.float32:
        raise ValueError(f"tf32=True rounds float32 operands; {dt} operands go to the tensor cores as they are: "
                         "pass tf32=False")
    if b_layout == "nn" and dt == precision.float32:
        raise ValueError("b_layout='nn' needs 16-bit operands (ldmatrix.trans moves 16-bit elements); for TF32 "
                         "pass b transposed, as [N, K], with b_layout='nt'")
    out = dt if out_dtype is None else np.dtype(out_dtype)
    if out not in (dt, precision.float32):
        raise TypeError(f"out_dtype={out}: gemm_tc writes the operands' dtype ({dt}) or float32")
    if not fits(dt.itemsize, *a.shape, *b.shape):
        raise ValueError(f"gemm_tc indexes rows, columns and their bytes with int: shapes {a.shape}, {b.shape} of "
                         f"{dt} reach 2^31 bytes; split the product")
    return dt, out


def fits(itemsize, *dims) -> bool:
    """Whether every dimension of the operands (``dims``), in elements of ``itemsize`` bytes and in
    bytes, stays an int in the kernel with a k-tile's rounding to spare."""
    return kernels.int_indexable(*(d * itemsize for d in dims), spare=256)


def gemm_tc(a, b, *, b_layout: str = "nt", out_dtype=None, tf32: bool = False, target: str = "sim", bias=None):
    """C = a @ b.T ('nt') or a @ b ('nn') (+ bias) on the tensor cores; see the module docstring."""
    dt, out = _check(a, b, b_layout, out_dtype, tf32)
    xp = get_array_module(a, b, bias)
    a, b = xp.ascontiguousarray(a), xp.ascontiguousarray(b)
    m, k = a.shape
    n = b.shape[0] if b_layout == "nt" else b.shape[1]
    if bias is not None:
        if b_layout != "nt":
            raise ValueError("gemm_tc: a bias is added by the 'nt' product only (gemm_tc_nn has no bias epilogue)")
        if bias.dtype != dt or tuple(bias.shape) != (n,):
            raise ValueError(f"gemm_tc: bias must be ({n},) of dtype {dt} (one per output column), got "
                             f"{tuple(bias.shape)} {bias.dtype}")
        bias = xp.ascontiguousarray(bias)
    c = xp.empty((m, n), dtype=out)
    if m == 0 or n == 0:
        return c
    grid = kernels.tile_grid(m, n, TILE, TILE)
    store, store32 = (c, None) if out == dt else (None, c)
    kernels.launch("gemm_tc", f"gemm_tc_{b_layout}", dt, target, grid, (THREADS, 1, 1),
                   (a, b, bias, store, store32, np.int32(m), np.int32(n), np.int32(k),
                    np.int32(vector_bytes(a)), np.int32(vector_bytes(b))), tf32=tf32)
    return c


def gemm_reference(a, b, *, b_layout: str = "nt", tf32: bool = False):
    """The exact product in float64 of the operands as the tensor cores take them (bfloat16/
    float16 widened exactly; float32 rounded to TF32 when ``tf32``), and the float64 sums of
    the terms' magnitudes (what gradcheck.reduction_tolerance bounds the error with)."""
    a64, b64 = (x.astype(np.float64) for x in precision.multiplicands(tf32, np.asarray(a), np.asarray(b)))
    if b_layout == "nt":
        b64 = b64.T
    return a64 @ b64, np.abs(a64) @ np.abs(b64)
