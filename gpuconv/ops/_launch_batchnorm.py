"""Kernel launchers for batch normalization (kernels/batchnorm.cu), registered for 'cuda' and 'sim'.

Same arguments, results and cache (``BatchNorm2dCache``) as the NumPy reference in
``batchnorm.py``, so a forward on one path and a backward on the other agree: the cache keeps x
(as the kernels read it) and the mean, and the backward kernels recompute xhat as the forward's.
A fused activation is one more argument of the normalization and backward kernels (its ACT_*
code), not another pass.

Layouts: a channels_last x (gpuconv.layout) is normalized as it lies, and y and dx come back
channels_last; anything else is made C-contiguous (NCHW).

Reductions are two passes with a fixed order in one launch (see the header of kernels/batchnorm.cu:
the last block of each 32-channel group to finish pass 1 runs pass 2); the split count S below
depends on the shape only, so every device and the simulator sum alike.
"""
from __future__ import annotations

import numpy as np

from .. import kernels, layout
from .._memo import remember
from ..backend import get_array_module
from ..precision import compute_dtype
from ._dispatch import register_launcher
from .batchnorm import ACTIVATIONS, BatchNorm2dCache

LANES = kernels.defines("batchnorm.cu")["BN_LANES"]  # channels per block of the NHWC sums and per pass-2 group
MAX_SPLITS = 512            # pass 2 sums at most 512 / 8 = 64 partials per thread
NCHW_MIN_CHUNK = 4096       # positions per block, NCHW: 16 per thread of 256
NHWC_MIN_CHUNK = 256        # pixels per block, NHWC: 32 channels x 256 pixels = 8192 elements
# A channel's positions are int in the kernels (chunk ends reach count + S - 1): a wide margin.
_MAX_COUNT = 2**30


def geometry(kernel, target, *, c=0, count=0, channels_last=False, total=0, device=None):
    """(grid, block, extra) of each batchnorm kernel. The reductions (``stats``, ``backward_sums``):
    extra = (S, chunk), the splits of a channel's ``count`` positions; one block per (channel,
    split) NCHW, per (32 channels, split) NHWC, so that a large batch fills the GPU with few
    channels. Elementwise: a grid-stride 1-D grid."""
    block = (kernels.BLOCK, 1, 1)
    if kernel in ("batchnorm2d_stats", "batchnorm2d_backward_sums"):
        least = NHWC_MIN_CHUNK if channels_last else NCHW_MIN_CHUNK
        splits = max(1, min(MAX_SPLITS, -(-count // least)))
        chunk = -(-count // splits)
        splits = -(-count // chunk)
        groups = -(-c // LANES) if channels_last else c
        return (groups, splits, 1), block, (splits, chunk)
    if kernel == "batchnorm2d_eval_inv_std":
        return (-(-c // kernels.BLOCK), 1, 1), block, ()
    grid, block = kernels.grid_1d(total, kernels.BLOCK, target, device)
    return grid, block, ()


def _launch(kernel, dtype, target, grid, block, args, device, cl=True):
    """A launch with the 4-D arrays among ``args`` as their memory order (NHWC views of
    channels_last ones); ``cl`` False: the arrays are C-contiguous or given as their memory order,
    passed as they are."""
    if cl:  # (every argument is an array or a NumPy scalar: each has ndim)
        args = tuple([layout.memory_order(a) if a.ndim == 4 else a for a in args])
    kernels.launch("batchnorm", kernel, dtype, target, grid, block, args, device=device)


# ----------------------------------------------------------------------------- launch plans
# What a reduction's or an elementwise launch derives from the geometry (the grids, the split of
# the sums, the size arguments as NumPy scalars), made once per geometry and reused: a network
# normalizes the same few shapes every step. A key holds all that decides its plan (the kernel,
# sizes, layout, element size, target and device); the arguments a call passes (the arrays, the
# hyperparameters and flags) are not in it, nor the arrays' addresses: the ``_vec`` form's
# alignment (:func:`kernels.vec_lanes`) is asked per call, and the plan holds both forms.
_PLANS: dict = {}


def _plan(key, make, *args):
    plan = _PLANS.get(key)
    return remember(_PLANS, key, make(*args)) if plan is None else plan


def _reduce_plan(kernel, c, hw, count, cl):
    """(grid, block, partial elements, tickets, (S, C, HW, count, chunk) as int32, cl as int32) of a
    reduction launch (see :func:`_reduce`)."""
    grid, block, (splits, chunk) = geometry(kernel, None, c=c, count=count, channels_last=cl)
    return (grid, block, 2 * splits * c, -(-c // LANES),
            (np.int32(splits), np.int32(c), np.int32(hw), np.int32(count), np.int32(chunk)), (np.int32(cl),))


def _elementwise_plan(kernel, total, c, hw, cl, itemsize, target, device):
    """{lanes: (kernel name, grid, block, size arguments, arguments after the scalars)} of an
    elementwise launch: its ``_vec`` form where ``c`` and the layout allow one (its arrays'
    alignment is asked per call), and its element form (see :func:`_elementwise`)."""
    forms = {}
    lanes = kernels.VEC_BYTES // itemsize
    if cl and c % lanes == 0:
        grid, block = kernels.grid_1d(total // lanes, kernels.BLOCK, target, device)
        forms[lanes] = (kernel + "_vec", grid, block, (np.int64(total // lanes), np.int32(c)), ())
    grid, block, _ = geometry(kernel, target, total=total, device=device)
    forms[1] = (kernel, grid, block, (np.int64(total), np.int32(c), np.int32(hw)), (np.int32(cl),))
    return forms


def _reduce(kernel, dtype, target, inputs, outputs, acc_dtype, c, hw, count, cl, device, *scalars, xp=None,
            memory=False):
    """A reduction launch: ``kernel(*inputs, partial, *outputs, tickets, S, C, HW, count, chunk,
    *scalars, cl)``, pass 1 into a new 2 x S x C partial array, pass 2 into ``outputs`` (one
    ticket per 32-channel group). ``memory``: the 4-D arrays are given as their memory order already."""
    grid, block, size, groups, sizes, last = _plan((kernel, c, hw, count, cl), _reduce_plan, kernel, c, hw, count, cl)
    partial = (xp or get_array_module(inputs[0])).empty(size, acc_dtype)
    tickets = kernels.tickets(inputs[0], groups, device)
    args = inputs + (partial,) + outputs + (tickets,) + sizes + scalars + last
    if memory:  # (the arrays as given: no _launch, whose only work would be the memory orders)
        kernels.launch("batchnorm", kernel, dtype, target, grid, block, args, device=device)
    else:
        _launch(kernel, dtype, target, grid, block, args, device, cl)


def _elementwise(kernel, dtype, target, arrays, scalars, c, hw, cl, device, memory=False):
    """An elementwise kernel over ``arrays[0]``'s elements: its ``_vec`` form where it applies
    (:func:`gpuconv.kernels.vec_lanes`), else the element kernel, which walks NCHW or NHWC memory.
    ``memory``: the 4-D arrays are given as their memory order already."""
    total = int(arrays[0].size)
    itemsize = arrays[0].itemsize
    forms = _plan((kernel, total, c, hw, cl, itemsize, target, device), _elementwise_plan, kernel, total, c, hw, cl,
                  itemsize, target, device)
    name, grid, block, sizes, last = forms[kernels.vec_lanes(arrays, c, cl) if len(forms) > 1 else 1]
    if memory:
        kernels.launch("batchnorm", name, dtype, target, grid, block, arrays + sizes + scalars + last, device=device)
    else:
        _launch(name, dtype, target, grid, block, arrays + sizes + scalars + last, device, cl)


# The layout the launchers run their 4-D arrays in and their memory orders (layout.memory_order),
# a function of their shapes, strides and dtypes, memoized by those (the launchers ask at every
# call): (the compute dtype, channels_last, per array whether its memory order is its NHWC view,
# whether a new channels_last output's is its NHWC buffer). Channels_last where every array is in NHWC order and
# one is channels_last, or the forward's input was (as the pooling launchers decide it); otherwise
# the arrays are made C-contiguous, their own memory order.
_LAYOUTS: dict = {}


def _layout_plan(key, arrays, was_channels_last=False):
    cl = layout.run_channels_last(*arrays) or (was_channels_last and all(map(layout.nhwc_memory, arrays)))
    n, c, h, w = arrays[0].shape
    out = np.lib.stride_tricks.as_strided(np.empty(1, np.uint8), (n, c, h, w), (h * w * c, 1, w * c, c))  # its strides
    plan = (compute_dtype(arrays[0].dtype), cl, tuple(cl and layout.is_channels_last(a) for a in arrays),
            cl and layout.is_channels_last(out))
    return remember(_LAYOUTS, key, plan)


def _compute(xp, cd, *vectors):
    """``vectors`` (per-channel parameters and statistics; None kept) as contiguous ``cd`` arrays: each
    one that already is, itself (what ``xp.ascontiguousarray`` returns for it), without the call."""
    out = []
    for v in vectors:
        out.append(v if v is None or (v.dtype is cd and v.flags.c_contiguous) else xp.ascontiguousarray(v, dtype=cd))
    return out


def _output(xp, shape, dtype, cl, view):
    """A new (N, C, H, W) output in the layout ``cl`` (as layout.empty) and its memory order."""
    if not cl:
        y = xp.empty(shape, dtype=dtype)
        return y, y
    n, c, h, w = shape
    buffer = xp.empty((n, h, w, c), dtype=dtype)
    y = buffer.transpose(layout.NCHW)
    return y, buffer if view else y


@register_launcher("batchnorm2d_forward")
def batchnorm2d_forward_kernel(x, gamma, beta, running_mean, running_var, training, momentum, eps, activation=None,
                               *, target):
    n, c, h, w = x.shape
    count, hw = n * h * w, h * w
    if count > _MAX_COUNT:
        return NotImplemented  # the kernels index a channel's positions in 32 bits
    xp = np if target == "sim" else get_array_module(x)  # (the simulator's arrays are NumPy's)
    key = (x.shape, x.strides, x.dtype)
    known = _LAYOUTS.get(key) or _layout_plan(key, (x,))
    cd, cl, (x_view,), y_view = known
    if not cl:
        x = xp.ascontiguousarray(x)
    xm = x.transpose(layout.NHWC) if x_view else x  # its memory order
    device = kernels.array_device((x,))
    # The running statistics are updated in place: a non-contiguous one is updated through a copy.
    gamma, beta, rm, rv = _compute(xp, cd, gamma, beta, running_mean, running_var)
    inv_std = xp.empty(c, cd)
    has_running = running_mean is not None
    if not has_running:
        rm = rv = inv_std
    dtype = x.dtype
    if training:
        mean = xp.empty(c, cd)
        _reduce("batchnorm2d_stats", dtype, target, (xm,), (mean, inv_std, rm, rv), cd, c, hw, count, cl, device,
                np.float64(eps), np.float64(1.0 - momentum), np.float64(momentum),
                np.float64(momentum * count / (count - 1)), np.int32(has_running), xp=xp, memory=True)
        if has_running and rm is not running_mean:
            running_mean[...] = rm
        if has_running and rv is not running_var:
            running_var[...] = rv
    else:
        mean = rm.copy()  # the backward's; the running statistics may change before it
        grid, block, _ = geometry("batchnorm2d_eval_inv_std", target, c=c)
        _launch("batchnorm2d_eval_inv_std", dtype, target, grid, block, (rv, inv_std, np.int32(c), np.float64(eps)),
                device)
    y, ym = _output(xp, x.shape, dtype, cl, y_view)
    if x.size:
        _elementwise("batchnorm2d_normalize", dtype, target, (xm, mean, inv_std, gamma, beta, ym),
                     (np.int32(ACTIVATIONS.index(activation)),), c, hw, cl, device, memory=True)
    if activation is None:
        return y, BatchNorm2dCache(x, mean, gamma, inv_std, training)
    return y, BatchNorm2dCache(x, mean, gamma, inv_std, training, beta, activation)


@register_launcher("batchnorm2d_backward")
def batchnorm2d_backward_kernel(dy, cache, *, target):
    x, mean, gamma, inv_std, training, beta, activation = cache[:7]  # the kernels recompute the GELU cdf
    n, c, h, w = dy.shape
    count, hw = n * h * w, h * w
    if count > _MAX_COUNT:
        return NotImplemented
    xp = np if target == "sim" else get_array_module(dy, x)
    key = (dy.shape, dy.strides, x.strides, dy.dtype, x.dtype)
    known = _LAYOUTS.get(key) or _layout_plan(key, (dy, x), was_channels_last=layout.is_channels_last(x))
    cd, cl, (dy_view, x_view), dx_view = known
    if not cl:
        dy, x = xp.ascontiguousarray(dy), xp.ascontiguousarray(x)
    dym = dy.transpose(layout.NHWC) if dy_view else dy  # their memory order
    xm = x.transpose(layout.NHWC) if x_view else x
    device = kernels.array_device((dy,))
    mean, gamma, inv_std, beta = _compute(xp, cd, mean, gamma, inv_std, beta)
    beta = gamma if beta is None else beta  # read only under a fused activation
    act = np.int32(ACTIVATIONS.index(activation))
    dgamma, dbeta = xp.empty(c, cd), xp.empty(c, cd)
    dtype = dy.dtype
    if count:
        _reduce("batchnorm2d_backward_sums", dtype, target, (dym, xm, mean, inv_std, gamma, beta), (dgamma, dbeta), cd,
                c, hw, count, cl, device, act, xp=xp, memory=True)
    else:
        dgamma[...] = 0
        dbeta[...] = 0
    dx, dxm = _output(xp, dy.shape, dtype, cl, dx_view)
    if dy.size:
        _elementwise("batchnorm2d_backward_dx", dtype, target,
                     (dym, xm, mean, gamma, beta, inv_std, dgamma, dbeta, dxm),
                     (np.int32(count), np.int32(bool(training)), act), c, hw, cl, device, memory=True)
    return dx, dgamma, dbeta
