"""Kernel launchers for max and average pooling (kernels/pool2d.cu), registered for 'cuda' and
'sim'; LP pooling's, on the same helpers, are in ``_launch_lp_pool2d.py``.

Same arguments, results and caches as the NumPy references in ``_pool2d_reference.py``: the max-pool
switches are int32 window-local taps ``fh * KW + fw`` of the output's shape, so a forward on
one path and a backward on the other agree.

Padding: a padded pooling runs the element-per-thread kernels only (``_disjoint``, ``_vec`` and
``_pairs`` are for padding 0, whose launches are unchanged), an average with
``count_include_pad=False`` the ``_exclude_pad`` pair, which divide each window by its in-bounds
taps. NCHW max pooling with 2-wide windows at stride 2 (the CIFAR nets' 2x2) runs the ``_pairs``
kernels where the sizes and alignment allow: two outputs a thread, 16-byte loads and stores.

Layouts: channels_last inputs (gpuconv.layout) are pooled as they lie, and the outputs, the
switches and the gradients come back channels_last; anything else is made C-contiguous (NCHW).
"""
from __future__ import annotations

import operator

import numpy as np

from .. import kernels, layout
from .._memo import remember
from ..backend import get_array_module
from ._dispatch import register_launcher
from .pool2d import AvgPool2dCache, MaxPool2dCache, pooled_hw


def _inputs(*arrays, was_channels_last=False):
    """(arrays in one layout, channels_last?): channels_last when every one of them is NHWC memory
    and one is channels_last, or the forward's input was (gpuconv.layout.run_channels_last)."""
    if layout.run_channels_last(*arrays) or (was_channels_last and all(map(layout.nhwc_memory, arrays))):
        return arrays, True
    xp = get_array_module(*arrays)
    return tuple(xp.ascontiguousarray(a) for a in arrays), False


_DIMS: dict = {}  # (x_shape, kernel_size, stride, floor, padding) -> _dims' answer: a network's few geometries
_RUNS: dict = {}  # (kernel, elements, dims, layout, element size, vec, target, device) -> _run's launch forms
_GEOMETRY = operator.attrgetter("shape", "strides", "itemsize")  # what an array's memory order depends on


def _dims(x_shape, kernel_size, stride, floor=False, padding=(0, 0)):
    """The output's shape and the kernels' size arguments. Rows and columns past the last window
    (``floor``) are in H and W, and the kernels never read them; the backward's are zeros."""
    key = (tuple(x_shape), tuple(kernel_size), tuple(stride), floor, tuple(padding))
    got = _DIMS.get(key)
    if got is None:
        n, c, h, w = x_shape
        oh, ow = pooled_hw(x_shape, kernel_size, stride, floor, padding)
        got = (n, c, oh, ow), kernels.int32_args((n, c, h, w, oh, ow, *kernel_size, *stride, *padding))
        remember(_DIMS, key, got)
    return got


# The kernels with a _pairs form: NCHW, windows 2 wide at stride 2 (any height kh at stride kh), no
# padding, W % 4 == 0 and H == OH * kh (no row past the last window): one thread per two outputs,
# each window row one 16-byte (float32) load or store of the four inputs under them.
_PAIRS = ("max_pool2d_forward", "max_pool2d_backward_disjoint")


def _pairs_apply(kernel, dims, channels_last) -> bool:
    if kernel not in _PAIRS or channels_last:  # (the other kernels' dims differ: LP and adaptive pooling's)
        return False
    n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw = map(int, dims)
    return kw == sw == 2 and kh == sh and ph == pw == 0 and w % 4 == 0 and h == oh * kh


def _run_forms(kernel, elements, dims, channels_last, itemsize, vec, target, device):
    """{lanes: (kernel name, grid, block, arguments after the arrays' and the scalars)} of :func:`_run`:
    the ``_vec`` form where the channels and layout allow one, the ``_pairs`` form (key "pairs")
    where the geometry does (the arrays' alignment is asked per call), and the element form (and
    :func:`_run` adds ``"views"``)."""
    forms = {}
    lanes = kernels.VEC_BYTES // itemsize
    if vec and channels_last and int(dims[1]) % lanes == 0:
        forms[lanes] = (kernel + "_vec", *kernels.grid_1d(elements // lanes, kernels.BLOCK, target, device))
    if _pairs_apply(kernel, dims, channels_last):
        forms["pairs"] = (kernel + "_pairs", *kernels.grid_1d(elements // 2, kernels.BLOCK, target, device))
    forms[1] = (kernel, *kernels.grid_1d(elements, kernels.BLOCK, target, device))
    tail = dims + (np.int32(channels_last),)
    return {k: v + (tail,) for k, v in forms.items()}


def _run(kernel, elements, target, arrays, dims, channels_last, scalars=(), vec=True):
    """One thread per element (outputs forward, inputs backward), or per VEC16 channels of a
    pixel in the ``_vec`` form where it applies (:func:`gpuconv.kernels.vec_lanes`; ``vec`` False
    for a kernel without one), grid-stride beyond the cap; ``arrays[0]`` (x or dy) gives the dtype
    and the device. Arrays go as their memory. The grids are made once per geometry."""
    if elements:
        device = kernels.array_device(arrays[:1])
        itemsize = arrays[0].itemsize
        # (the arrays' geometries in the key: which of them go as their NHWC views is in the plan)
        key = (kernel, elements, dims, channels_last, itemsize, vec, target, device, tuple(map(_GEOMETRY, arrays)))
        forms = _RUNS.get(key)
        if forms is None:
            forms = _run_forms(kernel, elements, dims, channels_last, itemsize, vec, target, device)
            forms["views"] = tuple([getattr(a, "ndim", None) == 4 and layout.is_channels_last(a) for a in arrays])
            remember(_RUNS, key, forms)
        pairs = forms.get("pairs")
        # (x and dx aligned to four of their elements, y, dy and the switches to two: the loads)
        if pairs is not None and all(kernels.address(a) % ((4 if a.size > elements else 2) * a.itemsize) == 0
                                     for a in arrays):
            name, grid, block, tail = pairs
        else:
            vec = len(forms) - (pairs is not None) > 2  # (a _vec form besides the element form and "views")
            name, grid, block, tail = forms[kernels.vec_lanes(arrays, int(dims[1]), channels_last) if vec else 1]
        # each array as its memory order (layout.memory_order: the NHWC view of a channels_last one)
        args = tuple([a.transpose(layout.NHWC) if view else a for a, view in zip(arrays, forms["views"])])
        kernels.launch("pool2d", name, arrays[0].dtype, target, grid, block, args + tuple(scalars) + tail,
                       device=device)


def _run_backward(kernel, cache, dx, target, arrays, dims, channels_last):
    """Windows without overlap (stride = kernel): the ``_disjoint`` kernel, one thread per output
    writing its window (and the zeros of the rows and columns past the last window, in floor
    mode); otherwise one thread per input gathering over the windows that cover it. The same
    bits either way. Padded: the gather kernel, one element per thread."""
    if tuple(cache.padding) != (0, 0):
        _run(kernel, dx.size, target, arrays, dims, channels_last, vec=False)
    elif tuple(cache.stride) == tuple(cache.kernel_size):
        _run(f"{kernel}_disjoint", arrays[0].size, target, arrays, dims, channels_last)
    else:
        _run(kernel, dx.size, target, arrays, dims, channels_last)


@register_launcher("max_pool2d_forward")
def max_pool2d_forward_kernel(x, kernel_size, stride, floor=False, padding=(0, 0), *, target):
    xp = np if target == "sim" else get_array_module(x)  # (the simulator's arrays are NumPy's)
    (x,), cl = _inputs(x)
    out_shape, dims = _dims(x.shape, kernel_size, stride, floor, padding)
    y, argmax = layout.empty(xp, out_shape, x.dtype, cl), layout.empty(xp, out_shape, np.int32, cl)
    _run("max_pool2d_forward", y.size, target, (x, y, argmax), dims, cl, vec=padding == (0, 0))
    return y, MaxPool2dCache(tuple(x.shape), kernel_size, stride, argmax, cl, x.dtype, padding)


@register_launcher("max_pool2d_backward")
def max_pool2d_backward_kernel(dy, cache, *, target):
    xp = np if target == "sim" else get_array_module(dy, cache.argmax)
    (dy, argmax), cl = _inputs(dy, cache.argmax.astype(np.int32, copy=False), was_channels_last=cache.channels_last)
    _, dims = _dims(cache.x_shape, cache.kernel_size, cache.stride, True, cache.padding)  # dy's shape was checked
    dx = layout.empty(xp, cache.x_shape, dy.dtype, cl)
    _run_backward("max_pool2d_backward", cache, dx, target, (dy, argmax, dx), dims, cl)
    return dx


@register_launcher("avg_pool2d_forward")
def avg_pool2d_forward_kernel(x, kernel_size, stride, floor=False, padding=(0, 0), count_include_pad=True, *,
                              target):
    xp = get_array_module(x)
    (x,), cl = _inputs(x)
    out_shape, dims = _dims(x.shape, kernel_size, stride, floor, padding)
    y = layout.empty(xp, out_shape, x.dtype, cl)
    kernel = "avg_pool2d_forward" + ("" if count_include_pad else "_exclude_pad")
    _run(kernel, y.size, target, (x, y), dims, cl, vec=padding == (0, 0))
    return y, AvgPool2dCache(tuple(x.shape), kernel_size, stride, cl, x.dtype, padding, count_include_pad)


@register_launcher("avg_pool2d_backward")
def avg_pool2d_backward_kernel(dy, cache, *, target):
    xp = get_array_module(dy)
    (dy,), cl = _inputs(dy, was_channels_last=cache.channels_last)
    _, dims = _dims(cache.x_shape, cache.kernel_size, cache.stride, True, cache.padding)  # dy's shape was checked
    dx = layout.empty(xp, cache.x_shape, dy.dtype, cl)
    kernel = "avg_pool2d_backward" + ("" if cache.count_include_pad else "_exclude_pad")
    _run_backward(kernel, cache, dx, target, (dy, dx), dims, cl)
    return dx
