"""Augmentation and normalization, vectorized over the batch, for NumPy or CuPy arrays.

Each function works with the array module of its input (``get_array_module``), so the same
code runs on the host and on the GPU. Random draws come from ``rng``: a NumPy or CuPy
``Generator``, an int seed, or None (fresh entropy). The drawing and the deterministic
transform are separate functions (``crop_flip``) so a loader can draw a whole epoch's
offsets at once and apply them batch by batch.
"""
from __future__ import annotations

import warnings

import numpy as np

from .. import precision
from ..backend import device_of, get_array_module, is_cupy_array, to_device
from ..counter_rng import check_seed

# Per-channel (R, G, B) mean and standard deviation of the 50,000 CIFAR-10 training images,
# on the 0-255 pixel scale: the std is over all pixels of a channel (not an average of
# per-image stds, which gives the often-seen but smaller 0.2023/0.1994/0.2010 * 255).
CIFAR10_MEAN = (125.306918046875, 122.950394140625, 113.86538318359375)
CIFAR10_STD = (62.993219278136884, 62.08870764001421, 66.70489964063091)


def as_generator(rng, xp):
    """A Generator of ``xp``'s library from None, an int seed or a Generator."""
    if rng is None or isinstance(rng, (int, np.integer)):
        return xp.random.default_rng(None if rng is None else check_seed(rng, "rng"))
    if not hasattr(rng, "integers"):
        raise TypeError(f"rng must be None, an int seed or a numpy/cupy random Generator, got "
                        f"{type(rng).__name__}; e.g. rng=np.random.default_rng(0)")
    return rng


def _draw(rng, xp, like, low, high, n):
    """n integers in [low, high) on the device of ``like`` (a NumPy Generator with CuPy
    images draws on the host and uploads the n values: a host-to-device copy, never a read)."""
    v = rng.integers(low, high, size=n)
    if is_cupy_array(like) and not is_cupy_array(v):
        v = to_device(v, device_of(like))
    return v.astype(xp.int64, copy=False)


def _check_images(images, name="images"):
    if not hasattr(images, "ndim") or images.ndim != 4:
        raise ValueError(f"{name} must be a batch of shape (N, C, H, W), got shape "
                         f"{getattr(images, 'shape', type(images).__name__)}; add a batch axis with x[None]")
    # (N, H, W, C) images would be cropped and flipped along W and C: the colors swapped, silently
    if images.shape[3] in (1, 3, 4) and min(images.shape[1], images.shape[2]) > 4:
        raise ValueError(f"{name} of shape {tuple(images.shape)} look channels-last (N, H, W, C); the augmentations "
                         f"take channels-first (N, C, H, W) images, as gpuconv.data.load_cifar10 returns them: pass "
                         f"{name}.transpose(0, 3, 1, 2)")


def _check_positions(name, v, bound, high, what):
    """Integer pixel positions in [0, high] (``bound`` names ``high`` in the message). Host arrays are
    range-checked (a negative one would index from the far border, silently); device ones are not:
    that would read device memory back per batch."""
    if v is None:
        return
    if v.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer pixel positions ({what}), got dtype {v.dtype}: "
                        f"pass {name}.astype(np.int64) if its values are whole numbers")
    if isinstance(v, np.ndarray) and v.size and (v.min() < 0 or v.max() > high):
        raise ValueError(f"{name} must lie in [0, {bound}] = [0, {high}] ({what}), got values in "
                         f"[{v.min()}, {v.max()}]")


def _check_padding(padding):
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"padding={padding!r} must be an integer >= 0 (pixels of zeros on each side), e.g. 4")
    return int(padding)


PADDING_MODES = ("zeros", "reflect")


def check_padding_mode(padding_mode, padding, h, w) -> bool:
    """Whether ``padding_mode`` is 'reflect' (else 'zeros'); reflect padding must be narrower than
    the image (one mirroring, as in PyTorch)."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode={padding_mode!r} must be one of {PADDING_MODES}")
    if padding_mode == "reflect" and padding and (padding >= h or padding >= w):
        raise ValueError(f"padding={padding} with padding_mode='reflect' must be smaller than the image "
                         f"({h}x{w}): reflection mirrors each border once; use a smaller padding or 'zeros'")
    return padding_mode == "reflect"


def crop_flip(images, offsets_y=None, offsets_x=None, flip=None, padding=4, padding_mode="zeros"):
    """Crop each image n at (offsets_y[n], offsets_x[n]) of its padded copy (zeros, or with
    ``padding_mode='reflect'`` the image mirrored at its borders without repeating the edge, as
    PyTorch's and NumPy's 'reflect') and mirror it left-right where ``flip[n]``: one gather for
    the whole batch. Offsets lie in [0, 2 * padding]; None skips the crop (or the flip)."""
    _check_images(images)
    xp = get_array_module(images)
    n, c, h, w = images.shape
    reflect = check_padding_mode(padding_mode, padding if offsets_y is not None else 0, h, w)
    for name, v in (("offsets_y", offsets_y), ("offsets_x", offsets_x), ("flip", flip)):
        if v is not None and tuple(v.shape) not in ((n,), (n, 1)):
            raise ValueError(f"{name} must hold one value per image, shape ({n},), got {tuple(v.shape)}")
    if (offsets_y is None) != (offsets_x is None):
        raise ValueError("crop_flip: give both offsets_y and offsets_x, or neither")
    for name, v in (("offsets_y", offsets_y), ("offsets_x", offsets_x)):
        _check_positions(name, v, "2 * padding", 2 * _check_padding(padding) if v is not None else 0,
                         f"the window's corner in the padded image; {padding} is no shift")
    src, rows, cols = images, xp.arange(h)[None, :], xp.arange(w)[None, :]
    if offsets_y is not None:
        p = _check_padding(padding)
        src = xp.pad(images, ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect" if reflect else "constant")
        rows = rows + offsets_y.reshape(n, 1)
        cols = cols + offsets_x.reshape(n, 1)
    if flip is not None:
        # Mirroring the output columns of a crop = reading the window right to left.
        cols = xp.where(flip.reshape(n, 1), cols[:, ::-1], cols)
    if offsets_y is None and flip is None:
        return images.copy()
    rows = xp.broadcast_to(rows, (n, h))
    cols = xp.broadcast_to(cols, (n, w))
    return src[xp.arange(n)[:, None, None, None], xp.arange(c)[None, :, None, None],
               rows[:, None, :, None], cols[:, None, None, :]]


def random_crop(images, padding=4, rng=None):
    """Random (H, W) crops of the batch zero-padded by ``padding`` on each side (as in the
    ResNet CIFAR recipe); one offset pair per image, uniform over the 2*padding+1 positions."""
    _check_images(images)
    p = _check_padding(padding)
    xp = get_array_module(images)
    rng = as_generator(rng, xp)
    n = images.shape[0]
    oy = _draw(rng, xp, images, 0, 2 * p + 1, n)
    ox = _draw(rng, xp, images, 0, 2 * p + 1, n)
    return crop_flip(images, oy, ox, None, p)


def random_flip(images, rng=None):
    """Each image mirrored left-right with probability 1/2."""
    _check_images(images)
    xp = get_array_module(images)
    flip = _draw(as_generator(rng, xp), xp, images, 0, 2, images.shape[0]).astype(bool)
    return crop_flip(images, None, None, flip)


def check_cutout(cutout, h, w) -> int:
    """``cutout`` as an int: the side of the square cut out of each image (0: none), which must fit
    the ``h`` x ``w`` image."""
    if isinstance(cutout, bool) or not isinstance(cutout, (int, np.integer)) or cutout < 0:
        raise ValueError(f"cutout={cutout!r} must be an integer >= 0 (the side in pixels of the square set to "
                         "the mean; 0 for none), e.g. 12")
    if cutout > min(h, w):
        raise ValueError(f"cutout={cutout} is larger than the {h}x{w} images: the square must fit inside them; "
                         f"use cutout <= {min(h, w)}")
    return int(cutout)


def cutout(images, corner_y, corner_x, size):
    """Each image n with the ``size`` x ``size`` square whose top-left corner is (corner_y[n],
    corner_x[n]) set to 0, every channel (on normalized images: the mean color). Corners lie in
    [0, H - size] and [0, W - size], as airbench96 draws them; a new array, same dtype.
    (DeviceLoader applies it after the crop and flip, in the output's coordinates.)"""
    _check_images(images)
    xp = get_array_module(images)
    n, _, h, w = images.shape
    size = check_cutout(size, h, w)
    for name, v in (("corner_y", corner_y), ("corner_x", corner_x)):
        if tuple(v.shape) not in ((n,), (n, 1)):
            raise ValueError(f"{name} must hold one value per image, shape ({n},), got {tuple(v.shape)}")
    # (out of range, a square was cut partly or not at all, silently)
    _check_positions("corner_y", corner_y, "H - size", h - size, "the square's top row")
    _check_positions("corner_x", corner_x, "W - size", w - size, "the square's left column")
    dy = xp.arange(h)[None, :] - corner_y.reshape(n, 1)
    dx = xp.arange(w)[None, :] - corner_x.reshape(n, 1)
    inside = ((dy >= 0) & (dy < size))[:, None, :, None] & ((dx >= 0) & (dx < size))[:, None, None, :]
    # (CuPy's where has no bfloat16 loop and may compute it in float32: the values are the
    # images' own and zeros, so the cast back is exact)
    return xp.where(inside, images.dtype.type(0), images).astype(images.dtype, copy=False)


def random_cutout(images, size=12, rng=None):
    """``cutout`` at a corner drawn uniformly per image (airbench96's 12-pixel cutout)."""
    _check_images(images)
    xp = get_array_module(images)
    n, _, h, w = images.shape
    size = check_cutout(size, h, w)
    rng = as_generator(rng, xp)
    return cutout(images, _draw(rng, xp, images, 0, h - size + 1, n), _draw(rng, xp, images, 0, w - size + 1, n),
                  size)


def check_mean_std(mean, std, c):
    """Host values of ``mean`` and ``std``: one finite value per channel each, every std > 0 (a
    zero std fills the batch with infinities). Device arrays pass unread (no transfer in a step)."""
    if np.size(mean) != c or np.size(std) != c:
        raise ValueError(f"mean and std need one value per channel (C={c} of (N, C, H, W) images), got {np.size(mean)} "
                         f"and {np.size(std)}: pass mean= and std= with {c} values each (the defaults are CIFAR-10's "
                         "RGB ones), or give (N, H, W, C) images as images.transpose(0, 3, 1, 2)")
    if is_cupy_array(mean) or is_cupy_array(std):
        return
    m, s = np.asarray(mean, dtype=np.float64).reshape(-1), np.asarray(std, dtype=np.float64).reshape(-1)
    if not (np.isfinite(m).all() and np.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"mean={m.tolist()} and std={s.tolist()} must be finite with every std > 0 (0-255 pixel "
                         f"scale; CIFAR-10's are gpuconv.data.CIFAR10_MEAN and CIFAR10_STD)")
    if 0 < m.max() <= 1 and s.max() <= 1:  # torchvision's (0.5, 0.5, 0.5) style
        warnings.warn(f"mean={m.tolist()} and std={s.tolist()} look like the 0-1 scale, but they apply to 0-255 pixels "
                      "here (normalized values in the hundreds): multiply both by 255", stacklevel=3)


def normalize(images, mean=CIFAR10_MEAN, std=CIFAR10_STD, dtype=np.float32):
    """(images - mean) / std per channel, as ``dtype`` (float32, float64, bfloat16 or float16), NCHW.

    ``images`` must be uint8 because ``mean``/``std`` are on the 0-255 scale: a float batch
    already in [0, 1] would be silently wrong. A bfloat16/float16 batch is normalized in float32
    (mean and std taken as float32) and rounded once (gpuconv.precision)."""
    _check_images(images)
    xp = get_array_module(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 (0-255 pixels; mean/std are on that scale), got "
                        f"{images.dtype}; pass the raw images, or images.astype(np.uint8) if they hold 0-255 values")
    dtype = precision.check_dtype(dtype)
    check_mean_std(mean, std, images.shape[1])
    return normalized(images, mean, std, dtype)


def normalized(images, mean, std, dtype):
    """:func:`normalize` without its checks: the loader's per-batch form, its arguments checked once."""
    xp = get_array_module(images)
    acc = precision.compute_dtype(dtype)
    c = images.shape[1]
    mean = xp.asarray(mean, dtype=acc).reshape(-1)
    std = xp.asarray(std, dtype=acc).reshape(-1)
    out = images.astype(acc)
    out -= mean.reshape(1, c, 1, 1)
    out /= std.reshape(1, c, 1, 1)
    return precision.round_once(out, dtype)
