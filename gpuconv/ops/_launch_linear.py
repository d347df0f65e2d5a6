"""Kernel launchers for ``linear_forward`` / ``linear_backward``, registered for 'cuda' and 'sim':
every dtype runs gpuconv's kernels, so a training step holds no cuBLAS call (which CuPy refuses
inside a CUDA graph capture) and computes the same way in every precision.

Same arguments, results and ``LinearCache`` as the NumPy reference in ``linear.py``, and its
precision rule: products exact in the accumulator, sums in float32 (float64 for float64), the bias
added there, each result rounded once to the operands' dtype.

- bfloat16 and float16: the GEMMs of kernels/gemm_tc.cu. The forward is one GEMM with the bias
  in its epilogue, the backward two GEMMs (dx, and dw after a transposing copy of dy) and, with a
  bias, one column-sum kernel (conv2d_backward_bias's, over dy as N x out x 1 x 1). (The array
  form of a mixed-precision layer is a chain of upcasts, a float32 matmul and roundings: about 12
  launches for a forward and backward.)
- float32 (strict or TF32) and float64: the layer is a 1x1 convolution of (N, features, 1, 1)
  images, whose memory is the (N, features) matrix itself in both layouts, so the convolution
  kernels run it as they are: the CUDA-core GEMMs in strict float32 and float64, the tensor-core
  ones in TF32 (whose data gradient needs no .trans load there), with their deterministic
  split-K weight gradient.

A bfloat16/float16 layer past the tensor-core GEMM's int indexing, or on a GPU without tensor cores
for its dtype (float16 below compute capability 7.5, bfloat16 below 8.0:
:func:`gpuconv.kernels.tensor_cores_available`), runs as the 1x1 convolution too, on its CUDA-core
tiles, in the same precision rule.
"""
from __future__ import annotations

from .. import kernels, precision
from ..backend import get_array_module
from . import _launch_conv2d_tc as tc
from ._dispatch import register_launcher
from ._launch_conv2d import (conv2d_backward_bias_kernel, conv2d_backward_data_kernel, conv2d_backward_weight_kernel,
                             conv2d_forward_kernel)
from ._launch_gemm_tc import TILE, fits, gemm_tc
from .linear import LinearCache

_ONE = (1, 1)  # the 1x1 convolution's stride
_NONE = (0, 0)  # and padding


def _on_gemm_tc(x, w, target):
    """Whether the tensor-core GEMM takes the layer: a bfloat16/float16 one, on a target with tensor
    cores (elsewhere the 1x1 convolution's CUDA-core tiles do), its matrices' sizes within the
    kernel's int indexing (x as (N, in), w (out, in); dy is (N, out)) and its three products' grids
    (N x out, N x in, out x in) within CUDA's limits."""
    n, (out, inp) = x.shape[0], w.shape
    return (x.dtype in precision.LOW_PRECISION and fits(x.itemsize, n, out, inp)
            and all(kernels.tile_grid_fits(r, c, TILE, TILE) for r, c in ((n, out), (n, inp), (out, inp)))
            and kernels.tensor_cores_for(target, lambda: kernels.array_device([x]), x.dtype))


def _rows(x, w):
    """``x`` as (N, in), the in_features of ``w`` (linear_forward checked they match),
    C-contiguous (a view where it already is; N may be 0)."""
    return get_array_module(x).ascontiguousarray(x.reshape(x.shape[0], w.shape[1]))


def _image(a):
    """An (N, F) C-contiguous matrix as the (N, F, 1, 1) images of a 1x1 convolution (a view)."""
    return a.reshape(a.shape + (1, 1))


@register_launcher("linear_forward")
def linear_forward_kernel(x, w, b, tf32=False, *, target):
    cache = LinearCache(x, w, b is not None)
    if _on_gemm_tc(x, w, target):
        return gemm_tc(_rows(x, w), w, b_layout="nt", target=target, bias=b), cache
    w = get_array_module(w).ascontiguousarray(w)
    y = conv2d_forward_kernel(_image(_rows(x, w)), _image(w), b, _ONE, _NONE, tf32, target=target)[0]
    return y.reshape(y.shape[:2]), cache


@register_launcher("linear_backward")
def linear_backward_kernel(dy, cache, tf32=False, *, target):
    x, w, has_bias = cache
    xp = get_array_module(dy, x, w)
    dy = xp.ascontiguousarray(dy)
    if _on_gemm_tc(x, w, target):
        dx = gemm_tc(dy, w, b_layout="nn", target=target).reshape(x.shape)   # (N, out) @ (out, in)
        dw = gemm_tc(xp.ascontiguousarray(dy.T), _rows(x, w), b_layout="nn", target=target)  # (out, N) @ (N, in)
    else:
        x4, w4, dy4 = _image(_rows(x, w)), _image(xp.ascontiguousarray(w)), _image(dy)
        with tc.rounding_shared(dy4, tf32):  # TF32: dy rounded once for both
            dx = conv2d_backward_data_kernel(dy4, w4, x4.shape, _ONE, _NONE, tf32, target=target,
                                             like=x4).reshape(x.shape)
            dw = conv2d_backward_weight_kernel(dy4, x4, w4.shape, _ONE, _NONE, tf32, target=target).reshape(w.shape)
    db = conv2d_backward_bias_kernel(_image(dy), target=target) if has_bias else None
    return dx, dw, db
