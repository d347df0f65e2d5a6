"""The NumPy reference of 2-D max and average pooling: what the ops of :mod:`gpuconv.ops.pool2d`
(the public functions, their argument checks, the documentation of the caches and of the
precision rules) dispatch to on the 'numpy' target and wherever no kernel runs. The two cache
types are defined here, as the reference and the kernel launchers build them, so that imports go
one way (pool2d imports this module, never the reverse); they carry pool2d's module name, where
users import them from and pickle finds them.

Both directions loop over the KH*KW window taps, each step a whole-tensor vectorized pass: a
2x2 pool is 4 passes, never a loop over pixels. Max pooling first copies each tap's values into
a contiguous plane, a batch chunk at a time (one transposing copy when the windows tile the
input), so the comparisons run on contiguous, cached data. Within one tap, distinct output
positions read distinct input pixels, so the backward's ``dx[tap slice] += ...`` is an exact
scatter-add even when windows overlap (3x3 stride 2), without ``np.add.at``. LP pooling's
reference (lp_pool2d.py) walks the same taps (:func:`_window_sums`, :func:`_spread`).

Where the windows tile the input (stride = kernel, the global and adaptive pools of models
among them) NumPy arrays skip the Python loop over taps, with the loop's bits: a window's sum
(of more than 4 taps) is a reduction of its tap planes along their leading axis, which NumPy
adds element by element in tap order (no pairwise regrouping: that happens only along the
innermost axis reduced), and each input's gradient is the one term its window gives it. A max
pool of a few outputs takes ``argmax`` over its tap planes instead of the loop's passes per tap.
"""
from __future__ import annotations

import numpy as np

from .. import backend, layout
from ..backend import get_array_module
from ..precision import round_once, upcast
from ._checks import cache_type, output_hw

MaxPool2dCache = cache_type("MaxPool2dCache", "x_shape kernel_size stride argmax channels_last dtype padding",
                            "gpuconv.ops.pool2d", defaults=(False, None, (0, 0)))
AvgPool2dCache = cache_type("AvgPool2dCache", "x_shape kernel_size stride channels_last dtype padding count_include_pad",
                            "gpuconv.ops.pool2d", defaults=(False, None, (0, 0), True))

# Tap planes per batch chunk: the reference works a chunk at a time so that its contiguous
# per-tap copies are still in cache when compared (a 2x2 pool of 64x128x32x32: 40 -> ~12 ms).
_CHUNK_BYTES = 1 << 20
# Up to this many outputs a max pool whose windows tile the input takes argmax over its tap planes
# (fewer NumPy calls: a 2x2 pool of 2x3x8x8, forward and backward, 67 -> 32 us); past it the tap
# loop's SIMD passes win (argmax along a short axis is a call per window).
_FEW_OUTPUTS = 256


def _used(x, kernel_size, stride):
    """``x`` without the rows and columns past the last window (a view; ``x`` when none are)."""
    oh, ow = output_hw(x.shape, kernel_size, stride, floor=True)
    h, w = (oh - 1) * stride[0] + kernel_size[0], (ow - 1) * stride[1] + kernel_size[1]
    return x if (h, w) == tuple(x.shape[2:]) else x[:, :, :h, :w]


def _taps(kernel_size, stride, out_hw):
    """(tap index, slice of the input that tap reads for every output position)."""
    (kh, kw), (sh, sw), (oh, ow) = kernel_size, stride, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i * kw + j, (slice(None), slice(None), slice(i, i + sh * oh, sh), slice(j, j + sw * ow, sw))


def _tap_planes(xp, x, kernel_size, stride, out_hw):
    """(KH*KW, N, C, OH, OW) contiguous: plane t holds, for every window, its tap t's value.

    The strided reads happen once, in a copy; the comparisons then run on contiguous planes,
    where NumPy's SIMD loops are: a 2x2 pool of 64x32x32x32 goes from 8.8 to 2-3 ms."""
    (kh, kw), (oh, ow) = kernel_size, out_hw
    n, c = x.shape[:2]
    if _tiles(x.shape, kernel_size, stride):
        # Non-overlapping windows tile the input: one transposing copy of a 6-d view.
        six = x.reshape(n, c, oh, kh, ow, kw).transpose(3, 5, 0, 1, 2, 4)
        return xp.ascontiguousarray(six).reshape(kh * kw, n, c, oh, ow)
    planes = xp.empty((kh * kw, n, c, oh, ow), dtype=x.dtype)
    for t, sl in _taps(kernel_size, stride, out_hw):
        planes[t] = x[sl]
    return planes


def _tiles(x_shape, kernel_size, stride):
    """Windows tile the input exactly (stride == kernel, no leftover rows or columns)."""
    return (tuple(stride) == tuple(kernel_size) and x_shape[2] % kernel_size[0] == 0
            and x_shape[3] % kernel_size[1] == 0)


def _batch_chunks(n, bytes_per_item):
    """Slices of the batch whose tap planes stay in cache (``_CHUNK_BYTES`` each)."""
    step = max(1, _CHUNK_BYTES // max(1, bytes_per_item))
    for lo in range(0, n, step):
        yield slice(lo, min(n, lo + step))


def _max_pool2d_forward_reference(x, kernel_size, stride, floor=False, padding=(0, 0)):
    xc = _padded(upcast(x), padding, -np.inf)
    y, argmax = _max_forward(_used(xc, kernel_size, stride) if floor else xc, kernel_size, stride)
    if padding != (0, 0):
        _switches_in_bounds(argmax, x.shape[2:], kernel_size, stride, padding)
    return round_once(y, x.dtype), MaxPool2dCache(tuple(x.shape), kernel_size, stride, argmax,
                                                  layout.is_channels_last(x), x.dtype, padding)


def _padded(x, padding, value):
    """``x`` with ``padding`` (h, w) rows and columns of ``value`` on each side (``x`` itself at 0)."""
    (ph, pw) = padding
    if (ph, pw) == (0, 0):
        return x
    return get_array_module(x).pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _switches_in_bounds(argmax, hw, kernel_size, stride, padding):
    """A switch on a padded -inf (its window's inputs all -inf, the padding first in tap order) moved
    to the window's first in-bounds tap, where the kernels (and PyTorch) put it: the gradient goes
    to an input, never into the padding. Every window has one (padding <= kernel_size // 2)."""
    xp = get_array_module(argmax)
    (kh, kw), (oh, ow) = kernel_size, argmax.shape[2:]
    top = xp.arange(oh, dtype=np.int64)[:, None] * stride[0] - padding[0]
    left = xp.arange(ow, dtype=np.int64)[None, :] * stride[1] - padding[1]
    row, col = top + argmax // kw, left + argmax % kw
    outside = (row < 0) | (row >= hw[0]) | (col < 0) | (col >= hw[1])
    first = (xp.maximum(-top, 0) * kw + xp.maximum(-left, 0)).astype(np.int32)
    xp.copyto(argmax, xp.broadcast_to(first, argmax.shape), where=outside)


def _max_forward(x, kernel_size, stride):
    xp = get_array_module(x)
    out_hw = output_hw(x.shape, kernel_size, stride)
    y = xp.empty(x.shape[:2] + out_hw, dtype=x.dtype)
    argmax = xp.zeros(y.shape, dtype=np.int32)
    if y.size == 0:  # an empty batch (or no channel): nothing to pool
        return y, argmax
    if xp is np and y.size <= _FEW_OUTPUTS and _tiles(x.shape, kernel_size, stride):
        # A few windows: the per-call cost is the NumPy calls, three a tap in the loop below. The
        # same rules from whole-array calls: argmax gives the first maximum in tap order or the
        # first NaN, and the maximum is the value there (the loop's np.maximum keeps its first NaN).
        planes = _tap_planes(np, x, kernel_size, stride, out_hw).reshape(kernel_size[0] * kernel_size[1], -1)
        at = planes.argmax(axis=0)
        argmax[...] = at.reshape(y.shape)
        np.add(planes[at, np.arange(y.size)].reshape(y.shape), y.dtype.type(0), out=y)  # +0.0: see below
        return y, argmax
    moved = None
    per_item = kernel_size[0] * kernel_size[1] * y[0].size * x.itemsize
    for b in _batch_chunks(x.shape[0], per_item):
        planes = _tap_planes(xp, x[b], kernel_size, stride, out_hw)
        yb, ab = y[b], argmax[b]
        yb[...] = planes[0]
        if moved is None or moved.shape != yb.shape:
            moved = xp.empty(yb.shape, dtype=np.int32)
        for t in range(1, planes.shape[0]):
            v = planes[t]
            # The first maximum in tap order wins: only a strictly greater value moves the switch
            # (and never against a NaN). Taps come in increasing order, so "set to t where v > y"
            # is max(argmax, t * (v > y)): two SIMD passes, 20x faster than copyto(where=).
            xp.multiply(v > yb, np.int32(t), out=moved)
            xp.maximum(ab, moved, out=ab)
            xp.maximum(yb, v, out=yb)  # NaN-propagating, as PyTorch
        # A NaN output's switch is its window's first NaN (the loop above never moves to one): a
        # select, never a readback on CuPy; on NumPy only in a chunk that has a NaN.
        nan = xp.isnan(yb)
        if backend.is_cupy_array(yb) or nan.any():
            xp.copyto(ab, xp.argmax(xp.isnan(planes), axis=0), where=nan, casting="unsafe")
        # Where +0.0 and -0.0 tie, np.maximum returns either (its second operand on x86, +0.0 on
        # ARM): a zero maximum is +0.0 by rule (adding 0 does it), in the kernels too.
        xp.add(yb, yb.dtype.type(0), out=yb)
    return y, argmax


def _max_pool2d_backward_reference(dy, cache):
    if tuple(cache.padding) == (0, 0):
        return round_once(_max_backward(upcast(dy), cache), dy.dtype)
    padded, inside = _padded_cache(cache)
    return round_once(get_array_module(dy).ascontiguousarray(_max_backward(upcast(dy), padded)[inside]), dy.dtype)


def _padded_cache(cache):
    """(the cache of an unpadded pooling of the padded input, the slice of that input that is x)."""
    (n, c, h, w), (ph, pw) = cache.x_shape, cache.padding
    inside = (slice(None), slice(None), slice(ph, ph + h), slice(pw, pw + w))
    return cache._replace(x_shape=(n, c, h + 2 * ph, w + 2 * pw), padding=(0, 0)), inside


def _max_backward(dy, cache, out=None):
    """dx; ``out`` (the tiled case only): the array, or view, it is written into."""
    xp = get_array_module(dy, cache.argmax)
    (kh, kw), taps = cache.kernel_size, cache.kernel_size[0] * cache.kernel_size[1]
    if dy.size == 0:
        return xp.zeros(cache.x_shape, dtype=dy.dtype)
    n, c, oh, ow = dy.shape
    used = (n, c, oh * kh, ow * kw)
    if xp is np and dy.size <= _FEW_OUTPUTS and out is None and used == tuple(cache.x_shape) \
            and _tiles(used, cache.kernel_size, cache.stride):
        # A few windows (see _FEW_OUTPUTS): dy where the switch is the tap, +0 elsewhere, in dx's
        # layout in one select; adding 0 as below.
        tap = np.arange(taps, dtype=np.int32).reshape(kh, 1, kw)
        dx = np.where(cache.argmax[:, :, :, None, :, None] == tap, dy[:, :, :, None, :, None], dy.dtype.type(0))
        return np.add(dx, dy.dtype.type(0), out=dx).reshape(cache.x_shape)
    if used != tuple(cache.x_shape) and _tiles(used, cache.kernel_size, cache.stride):
        # Floor pooling with rows or columns past the last window: the tiled part written in place
        # (a separate array of it would be a second dx at the backward's peak), then zeros.
        dx = xp.empty(cache.x_shape, dtype=dy.dtype)
        dx[:, :, used[2]:] = 0
        dx[:, :, :used[2], used[3]:] = 0
        _max_backward(dy, cache._replace(x_shape=used), out=dx[:, :, :used[2], :used[3]])
        return dx
    if not _tiles(cache.x_shape, cache.kernel_size, cache.stride):
        # Overlapping windows: scatter-add tap by tap (taps in order, as the kernel sums them),
        # a batch chunk at a time so that dx's chunk stays in cache across the taps.
        dx = xp.zeros(cache.x_shape, dtype=dy.dtype)
        for b in _batch_chunks(dy.shape[0], dx[0].size * dx.itemsize):
            dxb, dyb, ab = dx[b], dy[b], cache.argmax[b]
            tap = xp.empty(dyb.shape, dtype=dy.dtype)
            for t, sl in _taps(cache.kernel_size, cache.stride, dy.shape[2:]):
                dxb[sl] += _routed(xp, dyb, ab, t, tap)
        return dx
    # Each input pixel is in exactly one window: build the gradient tap-major and contiguous,
    # then one transposing pass into dx. Adding 0 in that pass keeps the loop form's result bit
    # for bit: 0 + (-0.0) is +0.0, where a plain copy would leave a routed -0.0.
    dx = xp.empty(cache.x_shape, dtype=dy.dtype) if out is None else out
    planes = None
    for b in _batch_chunks(n, taps * dy[0].size * dy.itemsize):
        dyb, ab = dy[b], cache.argmax[b]
        if planes is None or planes.shape[1] != dyb.shape[0]:
            planes = xp.empty((taps,) + tuple(dyb.shape), dtype=dy.dtype)
        for t in range(taps):
            _routed(xp, dyb, ab, t, planes[t])
        m = dyb.shape[0]
        xp.add(planes.reshape(kh, kw, m, c, oh, ow), dy.dtype.type(0),
               out=_window_axes(xp, dx[b], kh, kw).transpose(3, 5, 0, 1, 2, 4))
    return dx


def _routed(xp, dy, argmax, t, out):
    """``out`` = dy at the windows whose switch is tap ``t``, +0 elsewhere (a NaN or inf dy stays
    where it is routed; never dy * mask, as inf * 0 is NaN): dy's bits ANDed with a mask of all
    ones or all zeros, as relu_backward. np.copyto(where=) took 14x as long (2x2 pool of
    32x32x32x32 float32, its four taps: 8.2 ms against 0.59 on one core), np.where twice as long
    (3x3 stride 2 of 32x64x33x33, its nine taps: 7.2 ms against 3.6)."""
    bits = np.dtype(f"i{dy.dtype.itemsize}")
    mask = out.view(bits)
    xp.copyto(mask, argmax == t, casting="unsafe")
    xp.negative(mask, out=mask)
    xp.bitwise_and(mask, dy.view(bits), out=mask)
    return out


def _window_axes(xp, a, kh, kw):
    """(M, C, OH, KH, OW, KW) view of the (M, C, OH*KH, OW*KW) array ``a``, whatever its strides (a
    reshape of a strided view may copy, and the writes would go to the copy)."""
    m, c, h, w = a.shape
    sn, sc, sh, sw = a.strides
    return xp.lib.stride_tricks.as_strided(a, (m, c, h // kh, kh, w // kw, kw), (sn, sc, sh * kh, sh, sw * kw, sw))


def _avg_pool2d_forward_reference(x, kernel_size, stride, floor=False, padding=(0, 0), count_include_pad=True):
    xc = _padded(upcast(x), padding, 0)
    xc = _used(xc, kernel_size, stride) if floor else xc
    xp = get_array_module(xc)
    out_hw = output_hw(xc.shape, kernel_size, stride)
    y = _window_sums(xp, xc, kernel_size, stride, out_hw)
    y *= _avg_scale(xp, xc.dtype, x.shape[2:], kernel_size, stride, padding, count_include_pad, out_hw)
    return round_once(y, x.dtype), AvgPool2dCache(tuple(x.shape), kernel_size, stride, layout.is_channels_last(x),
                                                  x.dtype, padding, count_include_pad)


def _window_sums(xp, x, kernel_size, stride, out_hw, term=None):
    """Each window's sum of its taps (of ``term(taps)``, an elementwise function, where given), added
    tap by tap in row-major order onto +0.0: ``s = 0; for each tap: s += x[tap]``, bit for bit.

    Windows that tile a NumPy input reduce their tap planes along the tap axis instead, a batch chunk
    at a time: NumPy reduces an outer axis elementwise, in index order, which is the loop's
    order (pairwise summation regroups only a reduction along the innermost axis). A global pool
    of a 32x32 map is then one transposing copy and one reduction, not 1024 strided passes.
    Adding +0.0 last makes a sum of -0.0s +0.0, as the loop's (the reduction may start from its
    first term, where the loop starts from +0.0; nothing else differs). Up to 4 taps the loop
    stays: its passes read the input once, where the planes copy it first (a 2x2 pool of
    32x512x8x8: 2.8 ms looped, 3.8 by planes; 32x1024x4x4 to 1x1, 16 taps: 2.6 against 0.6)."""
    s = xp.zeros(x.shape[:2] + out_hw, dtype=x.dtype)
    if xp is not np or s.size == 0 or kernel_size[0] * kernel_size[1] <= 4 or not _tiles(x.shape, kernel_size, stride):
        for _, sl in _taps(kernel_size, stride, out_hw):
            s += x[sl] if term is None else term(x[sl])
        return s
    per_item = x[0].size * x.itemsize * (1 if term is None else 2)
    for b in _batch_chunks(x.shape[0], per_item):
        planes = _tap_planes(xp, x[b], kernel_size, stride, out_hw)
        planes = planes if term is None else term(planes)
        if planes[0].size > 1:
            np.add.reduce(planes, axis=0, out=s[b])
        else:  # one window: a reduction along the only axis left would add pairwise; accumulate never does
            s[b] = np.add.accumulate(planes.reshape(-1))[-1]
    return np.add(s, s.dtype.type(0), out=s)


def _spread(xp, g, x_shape, kernel_size, stride):
    """``dx = 0; for each tap: dx[tap slice] += g``: each window's ``g`` (N, C, OH, OW) added to every
    input it covers, taps in row-major order. Windows that tile (the rows and columns past the last
    window aside, left 0) give each input one term, ``0 + g``, written without the loop: a broadcast
    where a window row is long or the window the whole plane (a global pool), else ``np.repeat``
    along both axes (a broadcast into 2-wide window rows runs NumPy's inner loop 2 elements at a
    time: 4.2 ms against the loop's 3.4 and repeat's 2.5 for a 2x2 pool of 32x64x32x32)."""
    (kh, kw), (n, c, oh, ow) = kernel_size, g.shape
    if xp is not np or g.size == 0 or not _tiles((n, c, oh * kh, ow * kw), kernel_size, stride):
        dx = xp.zeros(x_shape, dtype=g.dtype)
        for _, sl in _taps(kernel_size, stride, (oh, ow)):
            dx[sl] += g
        return dx
    h, w = oh * kh, ow * kw
    whole, zero = (h, w) == tuple(x_shape[2:]), g.dtype.type(0)
    if oh * ow == 1 or kw >= 8:
        dx = np.empty(x_shape, dtype=g.dtype) if whole else np.zeros(x_shape, dtype=g.dtype)
        windows = dx.reshape(n, c, oh, kh, ow, kw) if whole else _window_axes(np, dx[:, :, :h, :w], kh, kw)
        np.add(g[:, :, :, None, :, None], zero, out=windows)
        return dx
    spread = g.repeat(kh, axis=2).repeat(kw, axis=3)
    if whole:
        return np.add(spread, zero, out=spread)
    dx = np.zeros(x_shape, dtype=g.dtype)
    np.add(spread, zero, out=dx[:, :, :h, :w])
    return dx


def _avg_scale(xp, dtype, hw, kernel_size, stride, padding, count_include_pad, out_hw):
    """The rounded reciprocal of the divisor: 1/(kh*kw), or per window (an (OH, OW) array) 1/(its
    in-bounds taps) where padding is not counted."""
    (kh, kw) = kernel_size
    if count_include_pad or tuple(padding) == (0, 0):
        return dtype.type(1.0 / (kh * kw))
    counts = []
    for o, s, p, k, n in zip(out_hw, stride, padding, kernel_size, hw):
        start = np.arange(o, dtype=np.int64) * s - p
        counts.append(np.minimum(start + k, n) - np.maximum(start, 0))
    return xp.asarray((1.0 / (counts[0][:, None] * counts[1][None, :])).astype(dtype))


def _avg_pool2d_backward_reference(dy, cache):
    dyc = upcast(dy)
    xp = get_array_module(dyc)
    padded, inside = _padded_cache(cache)
    share = dyc * _avg_scale(xp, dyc.dtype, cache.x_shape[2:], cache.kernel_size, cache.stride, cache.padding,
                             cache.count_include_pad, dy.shape[2:])
    dx = _spread(xp, share, padded.x_shape, cache.kernel_size, cache.stride)
    return round_once(dx if tuple(cache.padding) == (0, 0) else xp.ascontiguousarray(dx[inside]), dy.dtype)
