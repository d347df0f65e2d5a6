"""Kernel launchers for ``conv2d_forward`` / ``conv2d_backward`` (kernels/conv2d.cu).

Registered with :mod:`gpuconv.ops._dispatch` for the 'cuda' and 'sim' targets: they take the
arguments of the NumPy reference beside them in ``conv2d.py`` and return the same values and
the same ``Conv2dCache``. Arrays stay where they are (NumPy on 'sim', CuPy on 'cuda'); scalars
go as np.int32 / np.int64 exactly as the kernel signatures declare them (the simulator checks).

Precision: each launch runs the kernels' build for the arrays' dtype (float64, float32,
bfloat16, float16: float32 accumulation for the last two), and the TF32 build of float32 when
the op resolved ``tf32`` (gpuconv.precision). Variants are chosen per (family, dtype).

The tiled data gradients run one GEMM per phase of the strides (a grid.z each) over the taps that
reach its pixels; a strided one gathers the filters' taps into the phases' order first (as the
tensor-core launcher does: ``_launch_conv2d_tc.phase_order``, one small copy).
"""
from __future__ import annotations

import functools

import numpy as np

from .. import kernels, layout
from ..backend import get_array_module
from ..precision import channel_sum, compute_dtype, round_once, upcast
from ._checks import output_hw
from . import _launch_conv2d_tc as tc
from ._dispatch import register_launcher
from .conv2d import Conv2dCache

# The tiles of conv2d.cu, as it #defines them: v2 (CONV_*) and v3 (CONV3_*); square, one
# reduction depth (weight_splits rounds chunks to it).
_D = kernels.defines("conv2d.cu")
TILE, TILE_K, GEMM_THREADS = _D["CONV_BM"], _D["CONV_BK"], _D["CONV_THREADS"]
TILE3, GEMM3_THREADS = _D["CONV3_BM"], _D["CONV3_THREADS"]
if not (_D["CONV_BN"] == TILE and _D["CONV3_BN"] == TILE3 and _D["CONV3_BK"] == TILE_K):
    raise ImportError("kernels/conv2d.cu: the launchers take square tiles (CONV_BM == CONV_BN, CONV3_BM == "
                      "CONV3_BN) of one reduction depth (CONV_BK == CONV3_BK)")
BLOCK = kernels.BLOCK  # GPUCONV_BLOCK
# Backward-weight split-K: each split reduces at least this many of the N*OH*OW positions, so a
# split's partial sum is worth its workspace slice and the extra pass stays a small fraction.
MIN_SPLIT_CHUNK = 256


def _dims(x_shape, w_shape, stride, padding):
    """The sizes every conv2d kernel takes (OH, OW by the floor rule: the op checked the sizes)."""
    n, c, h, w = x_shape
    k, _, fh, fw = w_shape
    oh, ow = output_hw(x_shape, (fh, fw), stride, padding, floor=True)
    return n, c, h, w, k, fh, fw, oh, ow


def _i32(*values):
    return kernels.int32_args(values)


def _divisors(*divisors):
    """The FastDiv arguments (m, s) of the tiled kernels' divisors, in order."""
    return tuple(v for d in divisors for v in kernels.fast_divisor(d))


def _fits_int(*sizes):
    """The tiled kernels index GEMM rows/columns with int, a tile's overhang included."""
    return kernels.int_indexable(*sizes, spare=TILE3)


def _tiles_fit(var, rows, cols, reduction, splits=1):
    """Whether tiled variant ``var`` takes a rows x cols GEMM over ``reduction`` (in ``splits``
    along z): int indices and a grid within CUDA's limits (else v1, whose indices are 64-bit and
    whose grid strides)."""
    tile = TILE3 if var == "v3" else TILE
    return _fits_int(rows, reduction) and kernels.tile_grid_fits(rows, cols, tile, tile, splits)


def geometry(kernel, target, device=None, *, rows=0, cols=0, splits=1, elements=0):
    """(grid, block) of every kernel in conv2d.cu, in this one place.

    Tiled kernels (``_v2``: 64x64 tiles of 64 threads; ``_v3``: 128x128 tiles of 256 threads):
    one block per output tile of the ``rows`` x ``cols`` GEMM, ``splits`` along z.
    ``conv2d_backward_bias``: one block of exactly BLOCK threads per channel (``cols``).
    The rest (v1, conv2d_reduce_splits) are grid-stride loops over ``elements``."""
    if kernel.endswith(("_v2", "_v3")):
        tile, threads = (TILE3, GEMM3_THREADS) if kernel.endswith("_v3") else (TILE, GEMM_THREADS)
        return kernels.tile_grid(rows, cols, tile, tile, splits), (threads, 1, 1)
    if kernel == "conv2d_backward_bias":
        return (cols, 1, 1), (BLOCK, 1, 1)
    return kernels.grid_1d(elements, BLOCK, target, device)


def weight_splits(l_total, tiles, target, device=None, step=TILE_K, per_sm=kernels.NOMINAL_BLOCKS_PER_SM):
    """(splits, chunk) for the backward-weight reduction over ``l_total`` = N*OH*OW positions.

    The K x C*FH*FW tile grid alone is too small to fill the GPU on the late CIFAR layers (8x8
    images, few tiles, long reductions), so the reduction splits along z. A GPU runs the grid in
    waves of ``per_sm`` (:func:`gpuconv.kernels.resident_blocks`) times its SMs' blocks, and a
    wave that is barely begun costs as long as a full one (an H200 profile: 270 blocks of the
    128x128 kernel where 264 fit took two waves' time). So the split count is, of those up to two
    waves and at most 2 x SMs (the depth of the ordered second pass, which one thread adds up per
    weight), the one with the least waves per split: the largest count that fits one wave, or
    two, whichever is cheaper per unit of work (the smaller within 5%). Each split reduces at
    least MIN_SPLIT_CHUNK positions, a whole number of the kernel's reduction rounds (``step``
    positions: TILE_K for v2/v3, a 64-byte k-tile for the tensor-core kernels). Memoized: the
    launchers ask on every launch."""
    return _weight_splits(l_total, tiles, kernels.sm_count(target, device), step, per_sm, MIN_SPLIT_CHUNK)


@functools.lru_cache(maxsize=4096)
def _weight_splits(l_total, tiles, sms, step, per_sm, min_chunk):
    slots = max(1, per_sm * sms)
    tiles = max(1, tiles)
    top = max(1, min(l_total // min_chunk, 2 * slots // tiles, 2 * sms))
    # Waves per split falls within a wave count as the splits grow: only each wave count's
    # largest split count (and the largest allowed) can be the cheapest.
    candidates = sorted({max(1, min(top, w * slots // tiles)) for w in (1, 2)} | {top})
    cost = {s: -(-tiles * s // slots) / s for s in candidates}
    best = min(cost.values())
    splits = next(s for s in candidates if cost[s] <= best * 1.05)
    chunk = -(-l_total // splits)
    chunk = -(-chunk // step) * step  # whole shared-memory rounds per split
    return -(-l_total // chunk), chunk


# The variant kernels.resolve gives a launch where no measurement decides it (autotuning off, not
# on this target, or a variant chosen), memoized: keyed by the variant asked for (kernels.variant:
# set_variant/use_variant, GPUCONV_KERNEL_VARIANTS), the family, dtype, TF32 mode, output channels,
# target, device and the simulator's arch (kernels.sim_arch: its tensor cores). Autotuning's
# choices are its table's, looked up by kernels.resolve at every launch (a table loaded or cleared,
# a geometry tuned, autotuning turned on: the next launch follows).
_CHOSEN: dict = {}


def _variant(family, dtype, tf32, channels, target, device, geometry, run):
    """The variant a launch of ``family`` runs (:func:`gpuconv.kernels.resolve`); ``geometry()``
    gives the launch's tuning geometry and ``run()`` the function that runs it in a variant, asked
    only when autotuning decides."""
    asked = kernels.variant(family, dtype, tf32)
    if asked == "auto" and target in kernels._TUNED_TARGETS and kernels.autotune_enabled():  # (autotunes(target))
        shape = geometry()
        # a geometry tuned already: the table's choice, as kernels.resolve answers it (its memo read
        # here, tuned_variant's fast look-up, without the calls and the run function)
        var = kernels._tuned_fast.get((family, dtype, tf32, target, device, shape))
        if var is not None and (var not in kernels.TC_VARIANTS
                                or kernels.tensor_cores_for(target, lambda: device, dtype, tf32)):
            return var
        return kernels.resolve(family, dtype, tf32, channels, target, run=run(), launch=lambda: (device, shape))
    key = (family, asked, dtype, tf32, channels, target, device,
           kernels.current_sim_arch() if target == "sim" else None)
    var = _CHOSEN.get(key)
    if var is None:
        var = kernels.resolve(family, dtype, tf32, channels, target, launch=lambda: (device, None))
        if len(_CHOSEN) >= 4096:
            _CHOSEN.clear()
        _CHOSEN[key] = var
    return var


@register_launcher("conv2d_forward")
def conv2d_forward_kernel(x, w, b, stride, padding, tf32=False, *, target, relu=False):
    device = kernels.array_device([x])
    var = _variant("conv2d_forward", x.dtype, tf32, w.shape[0], target, device,
                   lambda: (x.shape, w.shape, stride, padding, layout.is_channels_last(x)),
                   lambda: functools.partial(_forward, x, w, b, stride, padding, tf32, relu, target, device=device))
    return _forward(x, w, b, stride, padding, tf32, relu, target, var, device), Conv2dCache(x, w, b is not None,
                                                                                            stride, padding)


def _forward(x, w, b, stride, padding, tf32, relu, target, var, device):
    """y of variant ``var`` (a tensor-core one falls back to v2 where it does not compute)."""
    if var in tc.SHAPES:
        y = tc.forward(x, w, b, stride, padding, tf32, relu, target=target, variant=var, device=device)
        if y is not None:
            return y
        var = "v2"  # no tensor-core format for this dtype
    xp = get_array_module(x, w, b)
    x, w = xp.ascontiguousarray(x), xp.ascontiguousarray(w)
    b = None if b is None else xp.ascontiguousarray(b)
    shape, run = tc._plan(("cuda-core forward", var, x.shape, w.shape, stride, padding, b is not None, relu, target,
                           device), _forward_plan, x.shape, w.shape, stride, padding, b is not None, relu, target,
                          device, var)
    y = xp.empty(shape, dtype=x.dtype)
    if run is not None:
        name, grid, block, dims = run
        args = (x, w, w if b is None else b, y) + dims  # w stands in for a missing bias (never read)
        kernels.launch("conv2d", name, x.dtype, target, grid, block, args, device=device, tf32=tf32)
    return y


# The CUDA-core launches' plans, as the tensor-core ones (_launch_conv2d_tc's launch plans, in its
# memo): the output's shape, and (kernel, grid, block, scalar arguments: int32 sizes, then the tiled
# kernels' FastDiv pairs as uint32), None when there is nothing to launch; the weight gradient's also
# the workspace and the reduction of its splits.
def _forward_plan(x_shape, w_shape, stride, padding, has_bias, relu, target, device, var):
    n, c, h, wd, k, fh, fw, oh, ow = _dims(x_shape, w_shape, stride, padding)
    if not n * k * oh * ow:
        return (n, k, oh, ow), None
    dims = _i32(n, c, h, wd, k, fh, fw, oh, ow, *stride, *padding, has_bias, relu)
    if var == "v1" or not _tiles_fit(var, n * oh * ow, k, c * fh * fw) or not _fits_int(c * h * wd, fh * fw):
        # the tiled kernels index GEMM rows and an image's elements in int, and decode taps by an int
        # FH*FW (past one only with C = 0, where the reduction is empty); v1's indices are 64-bit
        var = "v1"
    else:
        dims += _divisors(fh * fw, fw)  # the patch loader's (c, fh, fw) of a reduction index
    name = f"conv2d_forward_{var}"
    return (n, k, oh, ow), (name, *geometry(name, target, device, rows=n * oh * ow, cols=k, elements=n * k * oh * ow),
                            dims)


@register_launcher("conv2d_backward")
def conv2d_backward_kernel(dy, cache, need_dx=True, tf32=False, need_dw=True, dw_dtype=None, *, target):
    x, w, has_bias, stride, padding = cache[:5]  # (the op crops dx: see Conv2dCache)
    if tf32 and need_dx and need_dw:  # both directions round dy to TF32 on tensor cores: once
        with tc.rounding_shared(dy):
            dx = conv2d_backward_data_kernel(dy, w, x.shape, stride, padding, tf32, target=target, like=x)
            dw = weight_gradient(dy, x, w.shape, stride, padding, tf32, dw_dtype, target=target)
    else:  # (no context entered: a bf16 step's backward is host-bound, six Python calls a layer fewer)
        dx = conv2d_backward_data_kernel(dy, w, x.shape, stride, padding, tf32, target=target, like=x) if need_dx \
            else None
        dw = weight_gradient(dy, x, w.shape, stride, padding, tf32, dw_dtype, target=target) if need_dw else None
    db = conv2d_backward_bias_kernel(dy, target=target) if has_bias else None
    return dx, dw, db


def weight_gradient(dy, x, w_shape, stride, padding, tf32, dw_dtype, *, target):
    """dw of ``dy`` and ``x`` in ``dw_dtype`` (None: dy's), widened here where a kernel rounds into
    dy's dtype only."""
    dw = conv2d_backward_weight_kernel(dy, x, w_shape, stride, padding, tf32, target=target, dw_dtype=dw_dtype)
    return dw.astype(dw_dtype) if dw_dtype is not None and dw.dtype != dw_dtype else dw


def conv2d_backward_data_kernel(dy, w, x_shape, stride, padding, tf32=False, *, target, like=None):
    """dx of shape ``x_shape`` from ``dy`` and the filters ``w`` (channels_last when ``like``,
    the forward input, is; NCHW otherwise: the CUDA-core kernels write NCHW, converted then)."""
    like = dy if like is None else like
    device = kernels.array_device([dy])
    var = _variant("conv2d_backward_data", dy.dtype, tf32, x_shape[1], target, device,
                   lambda: (tuple(x_shape), w.shape, stride, padding, layout.is_channels_last(like)),
                   lambda: functools.partial(_backward_data, dy, w, x_shape, stride, padding, tf32, like, target,
                                             device=device))
    return _backward_data(dy, w, x_shape, stride, padding, tf32, like, target, var, device)


def _backward_data(dy, w, x_shape, stride, padding, tf32, like, target, var, device):
    """dx of variant ``var`` in the layout of ``like`` (the tensor-core kernels write it so; the
    CUDA-core ones write NCHW, converted here)."""
    if var in tc.SHAPES and dy.size:
        dx = tc.backward_data(dy, w, x_shape, stride, padding, tf32, like, target=target, variant=var, device=device)
        if dx is not None:
            return dx
    return layout.like(like, _backward_data_cuda_cores(dy, w, x_shape, stride, padding, tf32, target, var, device))


def _backward_data_cuda_cores(dy, w, x_shape, stride, padding, tf32, target, var, device):
    if var in tc.SHAPES:
        var = "v2"
    xp = get_array_module(dy, w)
    dy, w = xp.ascontiguousarray(dy), xp.ascontiguousarray(w)
    dx = xp.empty(tuple(x_shape), dtype=dy.dtype)
    if not dx.size:
        return dx
    if dy.size == 0:  # K = 0 filters: nothing flows back
        dx[...] = 0
        return dx
    name, grid, block, dims, taps = tc._plan(("cuda-core backward_data", var, dx.shape, w.shape, stride, padding,
                                              target, device), _backward_data_plan, dx.shape, w.shape, stride,
                                             padding, target, device, var)
    if taps is not None:  # a strided data gradient's filter, its taps gathered into phase order (a small copy)
        w = xp.take(w.reshape(w.shape[0], w.shape[1], -1), tc._tap_order(taps, xp, device), axis=2)
    kernels.launch("conv2d", name, dy.dtype, target, grid, block, (dy, w, dx) + dims, device=device, tf32=tf32)
    return dx


def _backward_data_plan(x_shape, w_shape, stride, padding, target, device, var):
    """The tiled kernels run a GEMM per phase of the strides (kernels/common.cuh's StridePhase): a
    grid.z per phase, the rows of the largest (the first: ceil(H / sh) x ceil(W / sw) pixels an
    image), and the FastDiv pairs by a phase's tap counts, ceil(F / s) and floor(F / s) a side."""
    n, c, h, wd, k, fh, fw, oh, ow = _dims(x_shape, w_shape, stride, padding)
    (sh, sw), rows = stride, n * -(-h // stride[0]) * -(-wd // stride[1])
    dims = _i32(n, c, h, wd, k, fh, fw, oh, ow, *stride, *padding)
    if (var == "v1" or not _tiles_fit(var, n * h * wd, c, k * fh * fw, splits=sh * sw)
            or not _fits_int(k * oh * ow)):
        var = "v1"  # (as the forward: GEMM rows and an image of dy in int; a phase per grid.z)
    else:  # the loaders' (k, fh', fw') of a reduction index, by a phase's taps (DataDivisors; 0 taps: by 1)
        hi_h, lo_h, hi_w, lo_w = -(-fh // sh), fh // sh, -(-fw // sw), fw // sw
        dims += _divisors(*(max(1, t) for t in (hi_h * hi_w, hi_h * lo_w, lo_h * hi_w, lo_h * lo_w, hi_w, lo_w)))
    name = f"conv2d_backward_data_{var}"
    # the filter's taps in the phases' order where that is not their own (tiled kernels only)
    taps = (fh, fw, sh, sw) if var != "v1" and tc.phase_order(fh, fw, sh, sw) is not None else None
    return (name, *geometry(name, target, device, rows=rows, cols=c, splits=sh * sw, elements=n * c * h * wd),
            dims, taps)


def conv2d_backward_weight_kernel(dy, x, w_shape, stride, padding, tf32=False, *, target, dw_dtype=None):
    """dw of shape ``w_shape`` from ``dy`` and the forward input ``x``, in dy's dtype (the tensor-core
    kernels deliver it widened to ``dw_dtype`` float32 when asked; the caller casts the others).

    The tiled kernels write float partial sums (acc_t) to a workspace, one slice per split, that
    conv2d_reduce_splits adds up in order and rounds once into dw. float32/float64 with one split
    write dw directly; a bfloat16/float16 dw always goes through a float32 workspace, so its
    partial sums are never rounded to 8 or 11 bits."""
    if dy.size == 0 or 0 in tuple(w_shape):  # an empty batch: the gradient is an empty sum
        return get_array_module(dy, x).zeros(tuple(w_shape), dtype=dy.dtype)
    device = kernels.array_device([dy])
    var = _variant("conv2d_backward_weight", dy.dtype, tf32, w_shape[0], target, device,
                   lambda: (x.shape, tuple(w_shape), stride, padding, layout.is_channels_last(x)),
                   lambda: functools.partial(_backward_weight, dy, x, w_shape, stride, padding, tf32, target, dw_dtype,
                                             device=device))
    return _backward_weight(dy, x, w_shape, stride, padding, tf32, target, dw_dtype, var, device)


def _backward_weight(dy, x, w_shape, stride, padding, tf32, target, dw_dtype, var, device):
    if var in tc.SHAPES:
        dw = tc.backward_weight(dy, x, w_shape, stride, padding, tf32, target=target, variant=var, dw_dtype=dw_dtype,
                                device=device)
        if dw is not None:
            return dw
        var = "v2"  # no tensor-core format for this dtype
    xp = get_array_module(dy, x)
    dy, x = xp.ascontiguousarray(dy), xp.ascontiguousarray(x)
    w_shape = tuple(w_shape)
    (name, grid, block, dims), ws_shape, reduce = tc._plan(
        ("cuda-core backward_weight", var, x.shape, w_shape, dy.dtype, tf32, stride, padding, target, device,
         kernels.launch_setting(target, occupancy=True), MIN_SPLIT_CHUNK),
        _backward_weight_plan, x.shape, w_shape, dy.dtype, tf32, stride, padding, target, device, var)
    dw = xp.empty(w_shape, dtype=dy.dtype)
    ws = dw if ws_shape is None else xp.empty(ws_shape, dtype=compute_dtype(dy.dtype))
    kernels.launch("conv2d", name, dy.dtype, target, grid, block, (dy, x, ws) + dims, device=device, tf32=tf32)
    if reduce is not None:
        grid, block, tail = reduce
        kernels.launch("conv2d", "conv2d_reduce_splits", dy.dtype, target, grid, block, (ws, dw) + tail,
                       device=device, tf32=tf32)
    return dw


def _backward_weight_plan(x_shape, w_shape, dtype, tf32, stride, padding, target, device, var):
    """(kernel, grid, block, scalar arguments), the split-K workspace's shape (None: the kernel writes
    dw) and the reduction's (grid, block, arguments after ws and dw) or None."""
    n, c, h, wd, k, fh, fw, oh, ow = _dims(x_shape, w_shape, stride, padding)
    dims = _i32(n, c, h, wd, k, fh, fw, oh, ow, *stride, *padding)
    rows, l_total, size = c * fh * fw, n * oh * ow, k * c * fh * fw
    # v2/v3 keep per-image offsets (C*H*W) in int and pack (fh, fw) into one int.
    splits = chunk = None
    if var in ("v2", "v3") and _tiles_fit(var, rows, k, l_total) and _fits_int(c * h * wd) and max(fh, fw) < 2**15:
        name, tile = f"conv2d_backward_weight_{var}", TILE3 if var == "v3" else TILE
        threads = GEMM3_THREADS if var == "v3" else GEMM_THREADS
        per_sm = kernels.resident_blocks("conv2d", name, dtype, threads, target, device, tf32)
        splits, chunk = weight_splits(l_total, -(-rows // tile) * -(-k // tile), target, device, per_sm=per_sm)
    if splits is not None and kernels.int_indexable(splits * chunk):  # the kernels' end of the last split
        direct = splits == 1 and compute_dtype(dtype) == dtype
        run = (name, *geometry(name, target, device, rows=rows, cols=k, splits=splits),
               dims + (np.int32(chunk),) + _divisors(oh * ow, ow))  # the loaders' (n, oh, ow) of a position
        if direct:
            return run, None, None
        reduce = (*geometry("conv2d_reduce_splits", target, device, elements=size), (np.int32(splits), np.int64(size)))
        return run, (splits, k, rows), reduce
    name = "conv2d_backward_weight_v1"
    return (name, *geometry(name, target, device, elements=size), dims), None, None


def conv2d_backward_bias_kernel(dy, *, target):
    """db[k] = sum of dy over n, oh, ow: one block per channel (the kernel takes a plane's
    OH*OW as an int: a larger plane, a gigapixel image's, is summed as the reference sums it)."""
    xp = get_array_module(dy)
    if not kernels.int_indexable(dy.shape[2] * dy.shape[3]):
        return round_once(channel_sum(upcast(dy)), dy.dtype)
    cl = layout.is_channels_last(dy)
    dy = layout.memory_order(dy) if cl else xp.ascontiguousarray(dy)
    n, k, oh, ow = (dy.shape[0], dy.shape[3], dy.shape[1], dy.shape[2]) if cl else dy.shape
    db = xp.empty((k,), dtype=dy.dtype)
    if dy.size:
        grid, block = geometry("conv2d_backward_bias", target, cols=k)
        kernels.launch("conv2d", "conv2d_backward_bias", dy.dtype, target, grid, block,
                       (dy, db) + _i32(n, k, oh * ow, cl))
    else:
        db[...] = 0
    return db
