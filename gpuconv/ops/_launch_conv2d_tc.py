"""Launchers of the tensor-core convolutions (kernels/conv2d_tc.cu), the ``tc`` variant of the
conv2d kernel families.

The kernels are implicit GEMMs over NHWC memory. A channels_last input (gpuconv.layout) is read
as it is and the outputs come back channels_last; an NCHW input is converted on the way in and
its outputs on the way out (two transposing copies per call, the price of a layout the tensor
cores do not read; on a GPU each one pass of kernels/layout.cu, which also pads the channels and,
in TF32, rounds). Channel counts that are not a multiple of the kernels' 16-byte piece (8
bf16/fp16 or 4 float elements) are padded with zeros in a copy (the first layer's 3 channels);
the filters are repacked per call, K-contiguous (a small copy), unless mixed precision's cast
already wrote them so (the forward's OHWI copy, the data gradient's CRSK one: pack_for_data_gradient);
a strided data gradient, which runs as one GEMM per phase of the strides over the taps that reach
its pixels, gathers them into phase order (:func:`phase_order`, one more small copy).
In TF32 each launch's two operands are rounded to TF32 in one launch before it
(:func:`_rounded_tf32`), so that the tiles' loops round nothing; the caller's arrays keep their bits.

Each function returns None for a case the kernels do not take (a dtype without a tensor-core
format, sizes past int indexing); the caller then runs the CUDA-core kernels.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import weakref

import numpy as np

from .. import kernels, layout, precision
from .._memo import remember
from ..backend import get_array_module
from . import _launch_layout
from ._checks import output_hw

# variant -> its TcShape typedef in kernels/tc_tile.cuh (the tile its launches are sized by), which
# conv2d_tc.cu instantiates per suffix (tests check the pairing).
_TILES = {"tc": "TcTile64", "tc128": "TcTile128", "tc128w": "TcTile128w", "tcwg": "TcTileWg",
          "tcwg256": "TcTileWg256", "tcwgn64": "TcTileWgN64", "tcwgm64": "TcTileWgM64"}
SHAPES = {v: (kernels.tile_shapes()[t].bm, kernels.tile_shapes()[t].bn, kernels.tile_shapes()[t].threads)
          for v, t in _TILES.items()}  # variant -> (BM, BN, threads)
# variant -> bytes of dynamic shared memory its launches pass (0: its stages are static): the
# stages and the slack that lets the kernel start them on a 1024-byte boundary
DYNAMIC_SHARED = {v: kernels.tile_shapes()[t].shared + kernels.defines("tc_tile.cuh")["TC_DYNAMIC_ALIGN"]
                  if kernels.tile_shapes()[t].dynamic else 0 for v, t in _TILES.items()}
KBYTES = kernels.defines("tc_tile.cuh")["TC_KBYTES"]  # bytes of the reduction per k-tile
PIECE = 16       # bytes per cp.async of the im2col loaders


def supports(dtype, tf32: bool) -> bool:
    """Whether the tensor-core kernels compute for ``dtype`` arrays: bfloat16 and float16, and
    float32 in TF32 mode."""
    dt = np.dtype(dtype)
    return dt in precision.LOW_PRECISION or (dt == precision.float32 and tf32)



def _fits(itemsize, rows, cols, reduction, image, tiles) -> bool:
    """GEMM rows, columns and the reduction, their byte counts (the dense loaders' rows), and one
    image's elements (the loaders' offsets within an image) are ints in the kernels; the output
    ``tiles`` (rows, columns) make a grid within CUDA's limits at the narrowest tile's 64."""
    return (kernels.int_indexable(rows, cols * itemsize, reduction * itemsize, image, spare=256)  # a tile's overhang
            and kernels.tile_grid_fits(*tiles, 64, 64))


def padded_channels(channels, dtype) -> int:
    """``channels`` rounded up to whole 16-byte pieces of ``dtype`` elements: the kernels' channel
    stride in every NHWC operand and packed filter (8 bf16/fp16 or 4 float elements)."""
    step = PIECE // np.dtype(dtype).itemsize
    return -(-channels // step) * step


def _nhwc_padded(x, cp=None):
    """``x`` (logically NCHW) as a C-contiguous NHWC array whose channel count is padded with
    zeros to :func:`padded_channels` (``cp``, when the caller has it), starting on a 16-byte
    boundary; a view when ``x`` is channels_last with aligned channels already. A GPU's NCHW ``x``
    is converted and padded in one pass (kernels/layout.cu)."""
    n, c, h, w = x.shape
    if cp is None:
        cp = padded_channels(c, x.dtype)
    xp = get_array_module(x)
    if xp is not np and not (_ORDERS.get((x.shape, x.strides, x.itemsize)) or _orders_of(x))[0]:
        out = _launch_layout.nchw_to_nhwc(x, cp, target="cuda")
        if out is not None:
            return out
    a = layout.nhwc(x)
    if cp == c:  # (a view off a 16-byte boundary: copied to the allocator's aligned start)
        return a if kernels.address(a) % PIECE == 0 else a.copy()
    out = xp.zeros((n, h, w, cp), dtype=x.dtype)
    if xp is np:  # a NumPy copy as bits: a pixel's channels as one integer where they fill one, else each
        wide = _WIDE.get(c * x.dtype.itemsize) if a.strides[3] == x.dtype.itemsize else None
        if wide is not None:  # (one strided loop over the pixels: the channels are few, 1 to 4)
            out.view(wide)[..., :1] = a.view(wide)
            return out
        if x.dtype == precision.bfloat16:  # (NumPy copies ml_dtypes' bfloat16 element by element)
            out.view(np.uint16)[..., :c] = a.view(np.uint16)
            return out
    out[..., :c] = a
    return out


_WIDE = {2: np.uint16, 4: np.uint32, 8: np.uint64}  # bytes -> the unsigned integer of that size


def _repacked(w, axes, channels, padded, xp=None):
    """The filters transposed to ``axes`` with their last axis (``channels`` long) zero-padded
    to ``padded``: KRSC (forward) or CRSK (data gradient), starting on a 16-byte boundary (the
    loaders' cp.async pieces; a view of the caller's array need not). ``xp``: w's module, where
    the caller has it."""
    xp = xp or get_array_module(w)
    t = w.transpose(axes)
    if padded == channels:
        t = xp.ascontiguousarray(t)
        return t if kernels.address(t) % PIECE == 0 else t.copy()
    out = xp.zeros(t.shape[:3] + (padded,), dtype=w.dtype)
    out[..., :channels] = t
    return out


# The data gradient's filters as mixed precision casts them (gpuconv.amp.cast_parameters writes
# each conv filter's compute copy and this (C, FH, FW, K padded) copy in the same launches, once a
# step), keyed by the compute copy's id. An entry holds a weak reference to that copy (so an entry
# is never taken for another array) and lives as long as it does: the reference's callback drops
# it when the copy is freed, whatever freed it (a weakref.finalize would too, at some Python calls
# more per filter and step).
_PACKED: dict = {}


def pack_for_data_gradient(w, wt):
    """Register ``wt``, the (C, FH, FW, Kp) packing of the filters ``w``, for the data gradient,
    for as long as ``w`` lives (or until :func:`forget_packed`)."""
    key = id(w)

    def freed(ref):  # (an entry made since for another array of this id stays)
        if _PACKED.get(key, (None,))[0] is ref:
            del _PACKED[key]

    _PACKED[key] = (weakref.ref(w, freed), wt)


def forget_packed(w):
    """Drop ``w``'s packed copy now (its finalizer would when ``w`` is freed)."""
    hit = _PACKED.get(id(w))
    if hit is not None and hit[0]() is w:
        del _PACKED[id(w)]


def _packed(w, shape, dtype):
    hit = _PACKED.get(id(w))
    if hit is not None and hit[0]() is w and tuple(hit[1].shape) == shape and hit[1].dtype == dtype:
        return hit[1]
    return None


# (shape, strides, itemsize) -> (NHWC memory order, channels_last) of a 4-D array, layout's answers
# (layout.nhwc_memory, layout.is_channels_last), memoized: every launch asks them of its operands.
_ORDERS: dict = {}


def _orders_of(a):
    key = (a.shape, a.strides, a.itemsize)
    got = _ORDERS.get(key)
    return remember(_ORDERS, key, (layout.nhwc_memory(a), layout.is_channels_last(a))) if got is None else got


def _operand(x, padded, rounds=False):
    """``(xh, rounded)``: :func:`_nhwc_padded` of ``x``, a view taken here where that is all it is
    (NHWC memory, no channels to pad, a 16-byte aligned start: no call but the address's);
    ``rounded`` where the copy is rounded to TF32 as well, as ``rounds`` asks: a GPU's NCHW ``x``,
    converted, padded and rounded in one pass (kernels/layout.cu). Otherwise the caller rounds."""
    nhwc_order = (_ORDERS.get((x.shape, x.strides, x.itemsize)) or _orders_of(x))[0]
    if nhwc_order and padded == x.shape[1] and kernels.address(x) % PIECE == 0:  # (x's first element is its view's)
        return x.transpose(layout.NHWC), False
    if rounds and not nhwc_order and type(x) is not np.ndarray and get_array_module(x) is not np:  # (a memmap: NumPy's)
        out = _launch_layout.nchw_to_nhwc(x, padded, target="cuda", tf32=True)
        if out is not None:
            return out, True
    return _nhwc_padded(x, padded), False


def _back(y_nhwc, like):
    """An NHWC result as a logically NCHW array in the layout of ``like``: NCHW memory by
    layout.to_contiguous (on a GPU, kernels/layout.cu) where ``like`` is not channels_last."""
    y = y_nhwc.transpose(layout.NCHW)
    if (_ORDERS.get((like.shape, like.strides, like.itemsize)) or _orders_of(like))[1]:  # like is channels_last
        return y
    return layout.to_contiguous(y)


_UNKNOWN = object()  # (a device argument not given: None is the simulator's)


def _module(target, *arrays):
    """numpy or cupy for a launch's arrays on ``target``: NumPy's on the simulator (the op's
    kernel_target said so), else asked (:func:`gpuconv.backend.get_array_module`)."""
    return np if target == "sim" else get_array_module(*arrays)


def engine(variant, dtype, tf32, target, device):
    """``variant`` as it runs for ``dtype`` on ``target``: where wgmma does not (a GPU other than
    Hopper), tcwg and tcwg256 run as tc128, tcwgn64 and tcwgm64 as tc."""
    return kernels.tensor_core_tile(variant, target, device)


def _i32(*values):
    return kernels.int32_args(values)


# ----------------------------------------------------------------------------- launch plans
# Everything a launch derives from its geometry, computed once per geometry and reused: the output
# sizes, the size limits (a plan of None: the kernels do not take the case), the padded channels,
# the tile the variant runs as, the grid, the split-K and the int32 arguments. A plan's key holds
# all that decides it: the direction, the variant asked for, the shapes, dtype, TF32 mode, stride,
# padding, the bias and ReLU flags (or dw's dtype and the split rule's MIN_SPLIT_CHUNK), the target,
# the device and kernels.launch_setting (the simulator's arch; GPUCONV_WGMMA on a GPU, and for the
# weight gradient, whose split-K asks the kernel's occupancy, GPUCONV_KERNELS_DIR). The arrays'
# layouts and addresses are not in it: what depends on them (the NHWC copies, the filters'
# repacking, the weight gradient's vector width) is decided per call.
_PLANS: dict = {}
_PLANS_MAX = 4096  # geometries kept (a network has a few dozen); past it the memo starts over
_NO_PLAN = object()


class _Plan:
    """One launch's precomputed part: ``kernel`` its name, ``grid``/``block``/``shared`` its
    geometry, ``i32`` its int32 arguments, ``shape`` the NHWC output's (or dw's), ``padded`` the
    channel stride of the operand :func:`_nhwc_padded` makes; for the weight gradient also the
    workspace's shape, the reduction's launch and the int32 arguments per dy vector width; for the
    data gradient ``taps``, (FH, FW, sh, sw) where its filters are gathered into the strides'
    phase order (:func:`phase_order`), else None."""
    __slots__ = ("kernel", "grid", "block", "shared", "i32", "shape", "padded", "ws", "reduce", "vecs",
                 "dw_dtype", "widen", "rounds", "taps")


def _plan(key, make, *args):
    plan = _PLANS.get(key, _NO_PLAN)
    return remember(_PLANS, key, make(*args), _PLANS_MAX) if plan is _NO_PLAN else plan


def _launch_plan(name, variant, dtype, target, rows, cols, tf32, device, splits=1) -> _Plan:
    """The launch of a block per output tile of the rows x cols GEMM, as a plan."""
    variant = engine(variant, dtype, tf32, target, device)
    bm, bn, threads = SHAPES[variant]
    plan = _Plan()
    plan.kernel, plan.block, plan.shared = f"{name}_{variant}", (threads, 1, 1), DYNAMIC_SHARED[variant]
    plan.grid = kernels.tile_grid(rows, cols, bm, bn, splits)
    plan.rounds = rounds_operands(dtype, tf32)
    return plan


def rounds_operands(dtype, tf32) -> bool:
    """Whether a launch's operands are rounded to TF32 before it (:func:`_rounded_tf32`): float32
    in TF32 mode, whose tiles then round nothing in their loops."""
    return bool(tf32) and np.dtype(dtype) == precision.float32


def _rounded_tf32(target, device, *operands):
    """The two operands of a TF32 launch (the NHWC activations or output gradient and the packed
    filters; the weight gradient's output gradient and activations) rounded to TF32 by
    conv2d_tc_round_tf32, one launch for both: the tiles read them as they are and round nothing
    (kernels/mma.cuh, Prerounded; on the simulator they check).
    Each ``(a, fresh)``: ``a`` float32, C-contiguous and 16-byte aligned (as the tiles read it),
    rounded in place where ``fresh`` (a copy this call made), else into a new array, the caller's
    own arrays untouched. Returns the rounded arrays."""
    xp = _module(target, *(a for a, _ in operands))
    out = tuple(a if fresh else xp.empty_like(a) for a, fresh in operands)
    slots = [(a, o, np.int64(a.size)) for (a, _), o in zip(operands, out) if a.size]
    if slots:
        kernels.launch_slots("conv2d_tc", "conv2d_tc_round_tf32", precision.float32, target, slots,
                             [-(-int(n) // 4) for _, _, n in slots], 2, slots[0][:2] + (np.int64(0),), device=device,
                             tf32=True)
    return out


# Inside rounding_shared(a): [a, its rounded NHWC copy or None], the first TF32 launch's rounding of
# ``a`` kept for the launches that follow it in the block.
_SHARED = contextvars.ContextVar("gpuconv TF32 operand rounding", default=None)


@contextlib.contextmanager
def rounding_shared(a, when=True):
    """Within the block (where ``when``; else nothing: a block of one direction, or not in TF32),
    the first TF32 launch that rounds an NHWC copy of ``a`` (this array, not an equal one) keeps it
    for the next that reads ``a`` with as many channels, which would otherwise round it again (a
    pass over ``a`` a launch fewer); dropped at the block's end. In a
    convolution's backward ``a`` is dy: the data gradient's rounding serves the weight gradient; in
    a transposed convolution's, its dy is the input of both the convolution's forward and its weight
    gradient. Where the first pads ``a``'s channels (a count not a multiple of 4) and the next reads
    them unpadded (the weight gradient's dy), each rounds its own."""
    if not when:
        yield
        return
    token = _SHARED.set([a, None])
    try:
        yield
    finally:
        _SHARED.reset(token)


def _shared_rounding(a, channels):
    """The rounded NHWC copy of ``a`` with ``channels`` channels :func:`rounding_shared` holds, or None."""
    slot = _SHARED.get()
    if slot is None or slot[0] is not a or slot[1] is None:
        return None
    return slot[1] if slot[1].shape[3] == channels else None


def _share_rounding(a, ah):
    """Keep ``ah``, ``a``'s rounded NHWC copy, for the launches after this one inside
    :func:`rounding_shared` (a first copy only)."""
    slot = _SHARED.get()
    if slot is not None and slot[0] is a and slot[1] is None:
        slot[1] = ah


def _fresh(a) -> bool:
    """Whether ``a`` owns its memory (a copy made in this module: no view of the caller's array)."""
    return a.base is None


def forward(x, w, b, stride, padding, tf32, relu, *, target, variant="tc", device=_UNKNOWN):
    """y = conv2d(x, w) + b (ReLU when ``relu``) on tensor cores, or None (see the module doc);
    ``variant`` 'tc' (64x64 tiles), 'tc128' (128x128, 8 warps), 'tc128w' (128x128, 4 warps), 'tcwg'
    (128x128, 2 warpgroups on wgmma), 'tcwg256' (128x256, the same), 'tcwgn64' (256x64, the same) or
    'tcwgm64' (64x128, one warpgroup). ``device``: x's, where the caller has it."""
    if device is _UNKNOWN:
        device = kernels.array_device([x])
    has_bias = b is not None
    plan = _plan(("forward", variant, x.shape, w.shape, x.dtype, tf32, stride, padding, has_bias, relu, target, device,
                  kernels.launch_setting(target)),
                 _forward_plan, x.shape, w.shape, x.dtype, tf32, stride, padding, has_bias, relu, target, device,
                 variant)
    if plan is None:
        return None
    xp = _module(target, x, w, b)
    # TF32 inside rounding_shared(x): x rounded by an earlier launch of the block, or by this one for later ones
    xh = _shared_rounding(x, plan.padded) if plan.rounds else None
    ready = xh is not None  # x's NHWC operand rounded already: by an earlier launch or its conversion
    if not ready:
        xh, ready = _operand(x, plan.padded, plan.rounds)
    wk = _repacked(w, (0, 2, 3, 1), x.shape[1], plan.padded, xp)
    y = xp.empty(plan.shape, dtype=x.dtype)
    if plan.grid is not None:
        if plan.rounds:
            if ready:
                wk, = _rounded_tf32(target, device, (wk, _fresh(wk)))
            else:
                xh, wk = _rounded_tf32(target, device, (xh, _fresh(xh)), (wk, _fresh(wk)))
            _share_rounding(x, xh)
        kernels.launch("conv2d_tc", plan.kernel, x.dtype, target, plan.grid, plan.block,
                       (xh, wk, wk if b is None else xp.ascontiguousarray(b), y) + plan.i32, device=device, tf32=tf32,
                       shared_mem=plan.shared)
    return _back(y, x)


def _forward_plan(x_shape, w_shape, dtype, tf32, stride, padding, has_bias, relu, target, device, variant):
    n, c, h, wd = x_shape
    k, _, fh, fw = w_shape
    oh, ow = output_hw(x_shape, (fh, fw), stride, padding, floor=True)  # (sizes checked by the op)
    if c == 0:  # an empty reduction: the loaders divide by the channel count (the CUDA-core kernels give y = b)
        return None
    itemsize = np.dtype(dtype).itemsize
    if not supports(dtype, tf32) or not _fits(itemsize, n * oh * ow, k, fh * fw * (c + 8), h * wd * (c + 8),
                                              (n * oh * ow, k)):
        return None
    cp = padded_channels(c, dtype)
    if n * oh * ow * k:
        plan = _launch_plan("conv2d_forward", variant, dtype, target, n * oh * ow, k, tf32, device)
        plan.i32 = _i32(n, cp, h, wd, k, fh, fw, oh, ow, *stride, *padding, has_bias, relu)
    else:  # an empty output: nothing to launch
        plan = _Plan()
        plan.grid, plan.rounds = None, False  # (nothing launched: no operand rounded)
    plan.shape, plan.padded = (n, oh, ow, k), cp
    return plan


def backward_data(dy, w, x_shape, stride, padding, tf32, like, *, target, variant="tc", device=_UNKNOWN):
    """dx of shape ``x_shape`` (in the layout of ``like``) on tensor cores, or None (``device``:
    dy's, :func:`gpuconv.kernels.array_device`, where the caller has it)."""
    if device is _UNKNOWN:
        device = kernels.array_device([dy])
    x_shape = tuple(x_shape)
    plan = _plan(("backward_data", variant, dy.shape, w.shape, x_shape, dy.dtype, tf32, stride, padding, target,
                  device, kernels.launch_setting(target)),
                 _backward_data_plan, dy.shape, w.shape, x_shape, dy.dtype, tf32, stride, padding, target, device,
                 variant)
    if plan is None:
        return None
    xp = _module(target, dy, w)
    dyh, ready = _operand(dy, plan.padded, plan.rounds)
    n, c, h, wd = x_shape
    k, _, fh, fw = w.shape
    wt = _packed(w, (c, fh, fw, plan.padded), dy.dtype)  # cast so by mixed precision, else repacked here
    fresh = False
    if wt is None:
        wt = _repacked(w, (1, 2, 3, 0), k, plan.padded, xp)
        fresh = _fresh(wt)
    if plan.taps is not None:  # the taps in the strides' phase order (a gather, a fresh array)
        wt, fresh = xp.take(wt.reshape(c, fh * fw, plan.padded), _tap_order(plan.taps, xp, device), axis=1), True
    dx = xp.empty(plan.shape, dtype=dy.dtype)
    if plan.grid is not None:
        if plan.rounds:
            if ready:
                wt, = _rounded_tf32(target, device, (wt, fresh))
            else:
                dyh, wt = _rounded_tf32(target, device, (dyh, _fresh(dyh)), (wt, fresh))
            _share_rounding(dy, dyh)
        kernels.launch("conv2d_tc", plan.kernel, dy.dtype, target, plan.grid, plan.block, (dyh, wt, dx) + plan.i32,
                       device=device, tf32=tf32, shared_mem=plan.shared)
    return _back(dx, like)


def _backward_data_plan(dy_shape, w_shape, x_shape, dtype, tf32, stride, padding, target, device, variant):
    n, c, h, wd = x_shape
    k, _, fh, fw = w_shape
    oh, ow = dy_shape[2:]
    itemsize = np.dtype(dtype).itemsize
    sh, sw = stride
    if not supports(dtype, tf32) or not _fits(itemsize, n * h * wd, c, fh * fw * (k + 8), oh * ow * (k + 8),
                                              (n * h * wd, c)):
        return None
    if not kernels.tile_grid_fits(1, 1, 64, 64, sh * sw):  # a phase per grid.z: past 65535 the CUDA-core kernels
        return None
    kp = padded_channels(k, dtype)
    if n * h * wd * c:  # a block per tile of the largest phase's rows (the first's), a phase per grid.z
        plan = _launch_plan("conv2d_backward_data", variant, dtype, target, n * -(-h // sh) * -(-wd // sw), c, tf32,
                            device, splits=sh * sw)
        plan.i32 = _i32(n, c, h, wd, kp, fh, fw, oh, ow, *stride, *padding)
    else:
        plan = _Plan()
        plan.grid, plan.rounds = None, False  # (nothing launched: no operand rounded)
    plan.shape, plan.padded = (n, h, wd, c), kp
    plan.taps = (fh, fw, sh, sw) if plan.grid is not None and phase_order(fh, fw, sh, sw) is not None else None
    return plan


@functools.lru_cache(maxsize=256)
def phase_order(fh, fw, sh, sw):
    """The data gradient's filter taps (index ``fh * FW + fw``) in the order its kernels read them
    (kernels/common.cuh's StridePhase): by the strides' phase (``fh % sh``, ``fw % sw``), then
    ``fh // sh``, ``fw // sw``, so that each phase's taps are one run; None where that is their
    own order (a unit stride, or a filter no larger than the stride: a tap per phase at most)."""
    order = sorted(range(fh * fw), key=lambda t: (t // fw % sh, t % fw % sw, t // fw // sh, t % fw // sw))
    if order == list(range(fh * fw)):
        return None
    order = np.asarray(order, dtype=np.int64)
    order.flags.writeable = False  # (one array for every caller: the memo's)
    return order


# (FH, FW, sh, sw, array module, device) -> phase_order's indices as an array there: made once,
# by the first (eager) step, then read by every call, a CUDA graph's capture included
_TAP_ORDERS: dict = {}


def _tap_order(taps, xp, device):
    key = (*taps, xp.__name__, device)
    got = _TAP_ORDERS.get(key)
    return remember(_TAP_ORDERS, key, xp.asarray(phase_order(*taps))) if got is None else got


def backward_weight(dy, x, w_shape, stride, padding, tf32, *, target, variant="tc", dw_dtype=None, device=_UNKNOWN):
    """dw (OIHW, shape ``w_shape``) on tensor cores, or None: split-K float32 partial sums, then
    conv2d_tc_weight_reduce adds them in a fixed order and rounds once to dy's dtype; with
    ``dw_dtype`` float32 (a bf16/fp16 dy) it delivers that rounded value widened to float32.
    ``device``: dy's, where the caller has it."""
    if device is _UNKNOWN:
        device = kernels.array_device([dy])
    w_shape = tuple(w_shape)
    split = _split_rule()
    plan = _plan(("backward_weight", variant, dy.shape, x.shape, w_shape, dy.dtype, tf32, stride, padding, dw_dtype,
                  target, device, kernels.launch_setting(target, occupancy=True), split.MIN_SPLIT_CHUNK),
                 _backward_weight_plan, dy.shape, x.shape, w_shape, dy.dtype, tf32, stride, padding, dw_dtype, target,
                 device, variant)
    if plan is None:
        return None
    xp = _module(target, dy, x)
    dw = xp.empty(w_shape, dtype=plan.dw_dtype)
    if plan.grid is None:
        return dw
    # TF32 inside rounding_shared: dy (a convolution's, its data gradient's rounding) or x (a transposed
    # convolution's dy, its forward's rounding) rounded by an earlier launch of the block: no copy of it here
    dyh = _shared_rounding(dy, dy.shape[1]) if plan.rounds else None
    xh = _shared_rounding(x, plan.padded) if plan.rounds else None
    own_dy, own_x = dyh is None, xh is None  # (whether this launch rounds them: not where it converted them so)
    if own_dy:
        dyh, rounded = _operand(dy, dy.shape[1], plan.rounds)  # unpadded: the tiles read dy's K channels
        own_dy = not rounded
    if own_x:
        xh, rounded = _operand(x, plan.padded, plan.rounds)
        own_x = not rounded
    if plan.rounds and (own_dy or own_x):
        got = list(_rounded_tf32(target, device, *((a, _fresh(a)) for a, own in ((dyh, own_dy), (xh, own_x)) if own)))
        dyh = got.pop(0) if own_dy else dyh
        xh = got.pop(0) if own_x else xh
    at = kernels.address(dyh)
    ws = xp.empty(plan.ws, dtype=np.float32)
    for vec_dy in plan.vecs:  # the widest dy's address allows (16-byte aligned here: the first)
        if at % vec_dy == 0:
            break
    kernels.launch("conv2d_tc", plan.kernel, dy.dtype, target, plan.grid, plan.block,
                   (dyh, xh, ws) + plan.vecs[vec_dy] + plan.i32, device=device, tf32=tf32, shared_mem=plan.shared)
    grid, block, i32 = plan.reduce
    kernels.launch("conv2d_tc", "conv2d_tc_weight_reduce", dy.dtype, target, grid, block,
                   (ws, None if plan.widen else dw, dw if plan.widen else None) + i32,
                   device=device, tf32=tf32)  # None: a null pointer (CuPy 14), for the output not written
    return dw


_split_module = None


def _split_rule():
    """gpuconv.ops._launch_conv2d, whose weight_splits is the split rule of every weight-gradient
    kernel and whose MIN_SPLIT_CHUNK (which a benchmark changes while it validates) keys the plans
    (imported at the first use: it imports this module)."""
    global _split_module
    if _split_module is None:
        from . import _launch_conv2d
        _split_module = _launch_conv2d
    return _split_module


def _backward_weight_plan(dy_shape, x_shape, w_shape, dtype, tf32, stride, padding, dw_dtype, target, device, variant):
    n, c, h, wd = x_shape
    k, _, fh, fw = w_shape
    oh, ow = dy_shape[2:]
    dtype = np.dtype(dtype)
    itemsize = dtype.itemsize
    if not supports(dtype, tf32) or not _fits(itemsize, n * oh * ow, k, fh * fw * (c + 8), h * wd * (c + 8),
                                              (k, fh * fw * (c + 8))):
        return None
    cp = padded_channels(c, dtype)
    rows, cols, l_total = k, fh * fw * cp, n * oh * ow
    widen = dw_dtype is not None and np.dtype(dw_dtype) == np.float32 and dtype != np.float32
    size = k * c * fh * fw
    if not size:
        plan = _Plan()
        plan.grid = None
    else:
        tile = engine(variant, dtype, tf32, target, device)
        bm, bn, threads = SHAPES[tile]
        per_sm = kernels.resident_blocks("conv2d_tc", f"conv2d_backward_weight_{tile}", dtype, threads, target,
                                         device, tf32, DYNAMIC_SHARED[tile])
        splits, chunk = _split_rule().weight_splits(l_total, -(-rows // bm) * -(-cols // bn), target, device,
                                      step=KBYTES // itemsize, per_sm=per_sm)
        if not kernels.int_indexable(splits * chunk):  # the kernel's end of the last split
            return None
        plan = _launch_plan("conv2d_backward_weight", variant, dtype, target, rows, cols, tf32, device, splits)
        plan.i32 = ()
        plan.ws = (splits, rows, cols)
        # the int32 arguments per vector width of dy's loads: the widths k's row of bytes allows, widest
        # first (the call takes the first that dy's address allows too)
        plan.vecs = {v: _i32(n, cp, h, wd, k, fh, fw, oh, ow, *stride, *padding, chunk, v)
                     for v in (16, 8, 4, 2) if (k * itemsize) % v == 0}
        grid, block = kernels.grid_1d(size, kernels.BLOCK, target, device)
        plan.reduce = grid, block, _i32(widen, splits, k, c, cp, fh, fw)
    plan.padded, plan.widen = cp, widen
    plan.dw_dtype = np.dtype(np.float32) if widen else dtype
    return plan
