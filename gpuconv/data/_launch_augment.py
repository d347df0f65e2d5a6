"""Launcher of the fused loader kernel (kernels/augment.cu) for the 'cuda' and 'sim' targets.

:func:`augment_batch_kernel` makes one normalized float batch from the uint8 data set in one
pass: gather by ``index``, random crop of the zero- or reflect-padded image, horizontal flip,
per-channel normalization, cutout. Its result is bit-identical to the array-module path of
:class:`gpuconv.data.DeviceLoader` (``images[index]`` -> ``crop_flip`` -> ``normalize`` ->
``cutout``) for the same draws; the loader picks it whenever its arrays have a kernel target.
"""
from __future__ import annotations

import numpy as np

from .. import kernels, layout
from ..backend import get_array_module
from ..precision import compute_dtype
from .augment import check_cutout, check_padding_mode


def _vector(xp, name, v, dtype, b):
    if tuple(v.shape) not in ((b,), (b, 1)):
        raise ValueError(f"{name} must hold one value per image of the batch, shape ({b},), got {tuple(v.shape)}")
    return xp.ascontiguousarray(v.reshape(b), dtype=dtype)


def augment_batch_kernel(images, index, offsets_y, offsets_x, flip, mean, std, padding, dtype, *, target,
                         channels_last=False, padding_mode="zeros", cutout=0, cut_y=None, cut_x=None):
    """``normalize(crop_flip(images[index], offsets_y, offsets_x, flip, padding, padding_mode), mean,
    std, dtype)`` (then ``augment.cutout(..., cut_y, cut_x, cutout)`` where ``cutout`` > 0) as one
    kernel launch on ``target``.

    ``images`` uint8 (N, C, H, W) C-contiguous; ``index`` integers (B,); ``offsets_y`` and
    ``offsets_x`` integers (B,) in [0, 2 * padding] or both None (no crop); ``flip`` bools (B,)
    or None; ``mean``/``std`` (C,) arrays on the images' device, taken in ``dtype``'s compute dtype
    (float32 for a bfloat16/float16 batch: normalized in float32, rounded once). The batch is
    (B, C, H, W), in channels_last memory (gpuconv.layout) when ``channels_last``."""
    xp = get_array_module(images, index, mean, std)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise TypeError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if target not in ("cuda", "sim"):
        raise ValueError(f"target={target!r}: the fused augmentation runs on 'cuda' or 'sim'")
    if (offsets_y is None) != (offsets_x is None):
        raise ValueError("augment_batch_kernel: give both offsets_y and offsets_x, or neither")
    dtype = np.dtype(dtype)
    n, c, h, w = images.shape
    reflect = check_padding_mode(padding_mode, padding if offsets_y is not None else 0, h, w)
    cutout = check_cutout(cutout, h, w)
    if cutout and (cut_y is None or cut_x is None):
        raise ValueError(f"augment_batch_kernel: cutout={cutout} needs the squares' corners (cut_y and cut_x)")
    if c * h * w >= 2**31:
        raise ValueError(f"images of shape {tuple(images.shape)}: one image has {c * h * w} values, the kernel "
                         "indexes within an image in 32 bits (< 2**31); use the array path (fused=False)")
    b = int(index.shape[0])
    images = xp.ascontiguousarray(images)
    index = _vector(xp, "index", index, np.int64, b)
    crop, do_flip = offsets_y is not None, flip is not None
    # Placeholders for arrays the kernel does not read (crop / flip off): typed pointers still
    # have to be passed, and the index vector and a one-element bool array serve.
    oy = _vector(xp, "offsets_y", offsets_y, np.int64, b) if crop else index
    ox = _vector(xp, "offsets_x", offsets_x, np.int64, b) if crop else index
    fl = _vector(xp, "flip", flip, np.bool_, b) if do_flip else xp.zeros(1, dtype=np.bool_)
    cy = _vector(xp, "cut_y", cut_y, np.int64, b) if cutout else index
    cx = _vector(xp, "cut_x", cut_x, np.int64, b) if cutout else index
    mean = xp.ascontiguousarray(mean.reshape(-1), dtype=compute_dtype(dtype))
    std = xp.ascontiguousarray(std.reshape(-1), dtype=compute_dtype(dtype))
    if mean.shape != (c,) or std.shape != (c,):
        raise ValueError(f"mean and std need one value per channel ({c}), got {mean.shape[0]} and {std.shape[0]}")
    out = layout.empty(xp, (b, c, h, w), dtype, bool(channels_last))
    if out.size:
        device = kernels.array_device([images])
        grid, block = kernels.grid_1d(out.size, kernels.BLOCK, target, device)
        args = (images, index, oy, ox, fl, cy, cx, mean, std, layout.memory_order(out), np.int64(n),
                *(np.int32(v) for v in (b, c, h, w, padding if crop else 0, crop, do_flip, bool(channels_last),
                                         reflect and crop, cutout)))
        kernels.launch("augment", "augment_batch", dtype, target, grid, block, args, device=device)
    return out
