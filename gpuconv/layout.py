"""Memory layouts of 4-D activations: NCHW (C-contiguous) and channels_last (NHWC in memory).

channels_last is a layout, not a new API, as in PyTorch: the array stays logically NCHW (shape
``(N, C, H, W)``, indexed ``x[n, c, h, w]``) while its strides say that the channels are
adjacent in memory. Tensor cores reduce over a contiguous dimension, and a convolution reduces
over channels, so the tensor-core convolutions read channels_last arrays as they are and
convert NCHW ones. Every op keeps the layout it is given (its 4-D outputs come back in the
layout of its 4-D input), so a network fed channels_last images runs channels_last throughout.

    x = gpuconv.to_channels_last(x)        # a copy in NHWC memory order, same shape and values
    gpuconv.is_channels_last(x)            # True
    gpuconv.to_contiguous(x)               # back to NCHW memory (a copy only when needed)

Works on NumPy and CuPy arrays alike (the strides are the layout).
"""
from __future__ import annotations

import functools

import numpy as np

from .backend import array_device_context, get_array_module

NHWC = (0, 2, 3, 1)   # NCHW axes in NHWC order
NCHW = (0, 3, 1, 2)   # NHWC axes back in NCHW order


def _check(x, what):
    if getattr(x, "ndim", None) != 4:
        if not hasattr(x, "shape"):
            raise TypeError(f"{what} takes a 4-D (N, C, H, W) numpy or cupy array, got a {type(x).__name__}: "
                            "wrap it first, e.g. np.asarray(x, dtype=np.float32)")
        raise ValueError(f"{what} takes a 4-D (N, C, H, W) array; got shape {tuple(x.shape)}")


@functools.lru_cache(maxsize=4096)
def _orders_by_strides(shape, strides, itemsize) -> tuple:
    """``(C-contiguous, NHWC memory)`` of a 4-D array of this shape, strides and element size:
    whether its axes taken in NCHW order, and in NHWC order, are C-contiguous (the flags of the
    array and of its NHWC transpose), read off shape and strides without making the transposed
    view (an op checks the layout of every array it launches on, and a CuPy view costs
    microseconds of host time). Axes of length 1 take any stride and an empty array is
    contiguous, as NumPy and CuPy say. Both answers come from one lookup, memoized: a network
    asks about the same few geometries at every step, several times per launch (the predicates
    below call it directly: no other Python function on that path)."""
    return _dense(shape, strides, itemsize, (0, 1, 2, 3)), _dense(shape, strides, itemsize, NHWC)


def _dense(shape, strides, itemsize, order) -> bool:
    if 0 in shape:
        return True
    expected = itemsize
    for axis in reversed(order):
        if shape[axis] != 1:
            if strides[axis] != expected:
                return False
            expected *= shape[axis]
    return True


def is_channels_last(x) -> bool:
    """Whether the 4-D array ``x`` is stored NHWC: its (N, H, W, C) transpose is C-contiguous and
    it is not also plain C-contiguous (a tensor with C == 1 or H == W == 1 is both: NCHW wins)."""
    if type(x) is np.ndarray:  # NumPy's own flags answer, without the memo: NCHW, else its NHWC view's
        return x.ndim == 4 and not x.flags.c_contiguous and x.transpose(NHWC).flags.c_contiguous
    if getattr(x, "ndim", None) != 4:
        return False
    nchw, nhwc_ = _orders_by_strides(x.shape, x.strides, x.itemsize)
    return nhwc_ and not nchw


def nhwc_memory(x) -> bool:
    """Whether the 4-D ``x``'s memory is in NHWC order: channels_last, or a shape whose two
    layouts are the same memory (one channel, or 1x1 images)."""
    return getattr(x, "ndim", None) == 4 and _orders_by_strides(x.shape, x.strides, x.itemsize)[1]


def run_channels_last(*arrays) -> bool:
    """Whether a kernel reading ``arrays`` together should read them as NHWC memory: every one of
    them is in NHWC order and at least one is channels_last (not merely ambiguous)."""
    channels_last = False
    for a in arrays:
        if getattr(a, "ndim", None) != 4:
            return False
        nchw, nhwc_ = _orders_by_strides(a.shape, a.strides, a.itemsize)
        if not nhwc_:
            return False
        channels_last = channels_last or not nchw
    return channels_last


def to_channels_last(x):
    """``x`` with NHWC memory (logically NCHW still); ``x`` itself when it already is."""
    _check(x, "to_channels_last")
    return nhwc_memory_of(x)


def nhwc_memory_of(y):
    """A 4-D ``y`` with NHWC memory (itself when it has it; else a copy), anything else as it is:
    :func:`to_channels_last` without its argument check, for the ops' own results."""
    if type(y) is np.ndarray:  # (NumPy's flags, as is_channels_last reads them)
        if y.ndim != 4 or y.transpose(NHWC).flags.c_contiguous:
            return y
        return np.ascontiguousarray(y.transpose(NHWC)).transpose(NCHW)
    if getattr(y, "ndim", None) != 4:
        return y
    nchw, nhwc_ = _orders_by_strides(y.shape, y.strides, y.itemsize)
    if nhwc_:
        return y
    with array_device_context((y,)):  # CuPy copies onto its current device, not the array's
        out = _transposed(y, True) if nchw else None
        if out is None:
            out = get_array_module(y).ascontiguousarray(y.transpose(NHWC))
        return out.transpose(NCHW)


def to_contiguous(x):
    """``x`` with plain C-contiguous (NCHW) memory."""
    xp = get_array_module(x)
    if xp is np:
        return np.ascontiguousarray(x)
    nhwc_ = False
    if getattr(x, "ndim", None) == 4:
        nchw, nhwc_ = _orders_by_strides(x.shape, x.strides, x.itemsize)
        if nchw:
            return x
    with array_device_context((x,)):  # (a copy, of a channels_last x or any other: on x's GPU)
        out = _transposed(x, False) if nhwc_ else None
        return xp.ascontiguousarray(x) if out is None else out


def nhwc(x):
    """The (N, H, W, C) array over the same values, C-contiguous: a view of a channels_last ``x``,
    a transposing copy otherwise."""
    if getattr(x, "ndim", None) != 4:
        _check(x, "nhwc")
    if _orders_by_strides(x.shape, x.strides, x.itemsize)[1]:
        # A view: nothing is allocated, so no GPU need be made current (the tensor-core convolutions
        # ask for the NHWC view of every input and gradient, four times per layer a step).
        return x.transpose(NHWC)
    with array_device_context((x,)):  # (a copy, for an NCHW x: on x's GPU)
        out = _transposed(x, True) if type(x) is not np.ndarray else None
        return get_array_module(x).ascontiguousarray(x.transpose(NHWC)) if out is None else out


_layout_kernel = None


def _transposed(x, to_nhwc: bool):
    """A CuPy ``x``'s values in the other memory order by kernels/layout.cu (one pass, both sides
    coalesced, where CuPy's transposing copy reads one side strided): the (N, H, W, C)
    C-contiguous copy of a C-contiguous NCHW ``x`` (``to_nhwc``), else the NCHW copy of an
    NHWC-memory ``x``; None where the kernel does not take ``x`` (its dtype, its sizes, an ``x``
    not dense in that order), for CuPy's copy. NumPy arrays, a subclass's too (a memmap): None
    (NumPy copies)."""
    global _layout_kernel
    if type(x) is np.ndarray or getattr(x, "ndim", None) != 4 or get_array_module(x) is np:
        return None
    if _layout_kernel is None:
        from .ops import _launch_layout  # (imported at the first use: the ops import this module)
        _layout_kernel = _launch_layout
    if to_nhwc:
        return _layout_kernel.nchw_to_nhwc(x, target="cuda")
    return _layout_kernel.nhwc_to_nchw(x, target="cuda")


def like(ref, y):
    """``y`` (4-D) in the layout of ``ref``: channels_last when ``ref`` is, else as it is."""
    return nhwc_memory_of(y) if is_channels_last(ref) else y


def empty(xp, shape, dtype, channels_last=False):
    """An uninitialized (N, C, H, W) array of module ``xp`` (numpy or cupy), channels_last or
    C-contiguous."""
    if not channels_last:
        return xp.empty(shape, dtype=dtype)
    n, c, h, w = shape
    return xp.empty((n, h, w, c), dtype=dtype).transpose(NCHW)


def zeros(xp, shape, dtype, channels_last=False):
    """A zero-filled (N, C, H, W) array, as :func:`empty`."""
    if not channels_last:
        return xp.zeros(shape, dtype=dtype)
    n, c, h, w = shape
    return xp.zeros((n, h, w, c), dtype=dtype).transpose(NCHW)


def pad_zeros(x, sides):
    """The 4-D ``x`` with ``sides = ((top, bottom), (left, right))`` zeros around each image: a new
    array of x's module, on x's device, in x's layout."""
    (top, bottom), (left, right) = sides
    n, c, h, w = x.shape
    with array_device_context((x,)):
        out = zeros(get_array_module(x), (n, c, h + top + bottom, w + left + right), x.dtype, is_channels_last(x))
        out[:, :, top:top + h, left:left + w] = x
    return out


def crop(x, sides):
    """:func:`pad_zeros` undone: the inner part of the 4-D ``x``, without ``sides`` rows and
    columns, as a new dense array in x's layout (not a view of x's memory)."""
    (top, bottom), (left, right) = sides
    inner = x[:, :, top:x.shape[2] - bottom, left:x.shape[3] - right]
    if is_channels_last(x):
        return nhwc_memory_of(inner)
    with array_device_context((x,)):
        return get_array_module(x).ascontiguousarray(inner)


def _strides_allow(a, order) -> bool:
    """Whether ``a``'s strides are non-increasing along the 4-D ``order`` (its axes of length 1,
    whose strides are arbitrary, left out): the order NumPy's ufuncs may give a result of it."""
    last = 0
    for axis in reversed(order):
        if a.shape[axis] > 1:
            stride = abs(a.strides[axis])
            if stride < last:
                return False
            last = stride
    return True


def add(a, b):
    """``a + b`` of two 4-D arrays of one shape and dtype, in the layout NumPy gives the sum on
    every backend: channels_last when both operands' strides allow the NHWC order and not both
    the NCHW one (NumPy's ufuncs keep the operands' common memory order, ``order='K'``).
    CuPy's ufuncs make C-contiguous results whatever their operands' layout (CuPy's documented
    difference from NumPy, "Contiguity / Strides"), so on a GPU a residual sum of channels_last
    activations would come out NCHW and every layer after it convert it back: there the sum is
    written into a channels_last array instead. NumPy arrays (and any other case): ``a + b``."""
    if (getattr(a, "ndim", None) != 4 or getattr(b, "ndim", None) != 4 or a.shape != b.shape
            or a.dtype != b.dtype or not all(_strides_allow(v, NHWC) for v in (a, b))
            or all(_strides_allow(v, (0, 1, 2, 3)) for v in (a, b))):
        return a + b
    return binary("add", a, b, True)


def binary(ufunc: str, a, b, channels_last: bool):
    """The ufunc named ``ufunc`` ('add', 'multiply') of the 4-D ``a`` and ``b`` (``b`` broadcast
    to ``a``'s shape), channels_last when ``channels_last`` on CuPy, whose ufuncs would make it
    C-contiguous (then converted at the next channels_last consumer, a pass over memory more): the
    result is written into a channels_last array there. On NumPy ``np.<ufunc>(a, b)`` as it is."""
    xp = get_array_module(a, b)
    if xp is np or not channels_last:
        return getattr(xp, ufunc)(a, b)
    with array_device_context((a,)):  # (CuPy allocates and computes on its current device)
        out = empty(xp, a.shape, np.result_type(a.dtype, b.dtype), True)
        return getattr(xp, ufunc)(a, b, out=out)


def empty_like(x):
    """An uninitialized array of ``x``'s shape and dtype, in ``x``'s layout."""
    if is_channels_last(x):
        return empty(get_array_module(x), x.shape, x.dtype, True)
    return get_array_module(x).empty_like(x)


def memory_order(x):
    """A C-contiguous view over ``x``'s memory: the NHWC view of a channels_last array, ``x``
    itself otherwise (what a kernel that walks flat memory is given)."""
    if type(x) is np.ndarray:  # (as is_channels_last: NumPy's flags, and the view returned)
        if x.ndim != 4 or x.flags.c_contiguous:
            return x
        view = x.transpose(NHWC)
        return view if view.flags.c_contiguous else x
    if getattr(x, "ndim", None) != 4:
        return x
    nchw, nhwc_ = _orders_by_strides(x.shape, x.strides, x.itemsize)
    return x.transpose(NHWC) if nhwc_ and not nchw else x
