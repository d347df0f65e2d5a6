"""Launcher of kernels/layout.cu: 4-D activations between NCHW and NHWC memory in one pass, for
gpuconv.layout's conversions of CuPy arrays and the tensor-core convolutions' operands (an NCHW
input's NHWC copy with its channels padded, rounded to TF32 in the same pass where the launch
takes TF32 operands).

Each function returns None for what the kernel does not take (a dtype without a build, a size past
its int indexing, an array not dense in the order it reads); the caller then copies as it did
before (CuPy's transposing copy).
"""
from __future__ import annotations

import numpy as np

from .. import kernels, precision
from ..backend import get_array_module

_DEFINES = kernels.defines("layout.cu")
TILE, ROWS = _DEFINES["LAYOUT_TILE"], _DEFINES["LAYOUT_ROWS"]
DTYPES = frozenset(np.dtype(d) for d in (precision.float32, precision.float64, precision.bfloat16,
                                         precision.float16))  # the file's builds
_IMAGES_MAX = kernels.GRID_Y_MAX  # blocks on y: the images beyond them are strided over


def transpose(src, images, rows, cols, padded, shape, *, target, tf32=False, device=None):
    """``dst[n, s, r] = src[n, r, s]`` (zero for ``rows <= r < padded``), ``src`` a dense array of
    ``images`` row-major ``rows x cols`` matrices, ``dst`` a new C-contiguous array of ``shape``
    (images * cols * padded elements) of src's dtype and module; with ``tf32`` (float32) each value
    rounded to TF32 as it is written. None where the kernel does not take the sizes or the dtype."""
    if np.dtype(src.dtype) not in DTYPES or (tf32 and np.dtype(src.dtype) != precision.float32):
        return None
    s_tiles, r_tiles = -(-cols // TILE), -(-padded // TILE)
    # (spare: a partial tile's threads compute r and s up to TILE - 1 past the last, in int)
    if not kernels.int_indexable(rows, cols, padded, s_tiles * r_tiles, spare=TILE):
        return None
    xp = np if target == "sim" else get_array_module(src)
    dst = xp.empty(shape, dtype=src.dtype)
    if dst.size:
        kernels.launch("layout", "layout_transpose", src.dtype, target, (s_tiles * r_tiles, min(images, _IMAGES_MAX), 1),
                       (TILE * ROWS, 1, 1), (src, dst, np.int64(images)) + kernels.int32_args(
                           (rows, cols, padded, s_tiles, bool(tf32))), device=device)
    return dst


def nchw_to_nhwc(x, padded=None, *, target, tf32=False, device=None):
    """The C-contiguous (N, H, W, ``padded``) copy of the C-contiguous NCHW ``x``, its channels past
    C zero (``padded``: C when None), rounded to TF32 with ``tf32``; or None (see the module doc)."""
    n, c, h, w = x.shape
    padded = c if padded is None else padded
    if not x.flags.c_contiguous:
        return None
    return transpose(x, n, c, h * w, padded, (n, h, w, padded), target=target, tf32=tf32, device=device)


def nhwc_to_nchw(a, *, target, device=None):
    """The C-contiguous NCHW copy of ``a``, a 4-D (N, C, H, W) array whose memory is NHWC (its
    (N, H, W, C) transpose C-contiguous); or None (see the module doc)."""
    n, c, h, w = a.shape
    view = a.transpose(0, 2, 3, 1)
    if not view.flags.c_contiguous:
        return None
    return transpose(view, n, h * w, c, h * w, (n, c, h, w), target=target, device=device)
