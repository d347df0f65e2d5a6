"""Kernel launchers for ``linear_forward`` / ``linear_backward`` on the tensor cores, registered for
'cuda' and 'sim': the GEMMs of kernels/gemm_tc.cu for bfloat16 and float16 operands.

Same arguments, results and ``LinearCache`` as the NumPy reference in ``linear.py``, and its
precision rule: products exact in float32, float32 sums, the bias added in float32, each result
rounded once to the operands' dtype. The array form of a mixed-precision layer is a chain of
upcasts, a float32 matmul and roundings (about 12 launches for a forward and backward); here the
forward is one GEMM with the bias in its epilogue, the backward two GEMMs (dx, and dw after a
transposing copy of dy) and, with a bias, one column-sum kernel (conv2d_backward_bias's, over dy
as N x out x 1 x 1).

float32 (strict or TF32) and float64 are the reference's (``REFERENCE``: one BLAS GEMM each way;
a TF32 data gradient would need the .trans loads, which move 16-bit elements only); sizes past
int indexing are declined.
"""
from __future__ import annotations

from .. import precision
from ..backend import get_array_module
from ._dispatch import REFERENCE, register_launcher
from ._launch_conv2d import conv2d_backward_bias_kernel
from ._launch_gemm_tc import gemm_tc
from .linear import LinearCache

_INT_MAX = 2**31 - 1


def _path(tf32, *arrays):
    """None (the kernels run), REFERENCE (not a tensor-core dtype) or NotImplemented (too large)."""
    if tf32 or arrays[0].dtype not in precision.LOW_PRECISION:
        return REFERENCE
    rows = arrays[0].shape[0]
    if any(a.size // max(rows, 1) >= _INT_MAX or rows >= _INT_MAX for a in arrays):
        return NotImplemented
    return None


def _rows(x):
    """``x`` as (N, features), C-contiguous (a view where it already is; N may be 0)."""
    features = 1
    for d in x.shape[1:]:
        features *= d
    return get_array_module(x).ascontiguousarray(x.reshape(x.shape[0], features))


@register_launcher("linear_forward")
def linear_forward_kernel(x, w, b, tf32=False, *, target):
    path = _path(tf32, x, w)
    if path is not None:
        return path
    y = gemm_tc(_rows(x), w, b_layout="nt", target=target, bias=b)
    return y, LinearCache(x, w, b is not None)


@register_launcher("linear_backward")
def linear_backward_kernel(dy, cache, tf32=False, *, target):
    x, w, has_bias = cache
    path = _path(tf32, dy, x, w)
    if path is not None:
        return path
    xp = get_array_module(dy, x, w)
    dy = xp.ascontiguousarray(dy)
    dx = gemm_tc(dy, w, b_layout="nn", target=target).reshape(x.shape)   # (N, out) @ (out, in)
    dw = gemm_tc(xp.ascontiguousarray(dy.T), _rows(x), b_layout="nn", target=target)  # (out, N) @ (N, in)
    db = conv2d_backward_bias_kernel(dy.reshape(dy.shape + (1, 1)), target=target) if has_bias else None
    return dx, dw, db
