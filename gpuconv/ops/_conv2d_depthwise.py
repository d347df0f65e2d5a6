"""The depthwise convolution's NumPy reference in the direct form: what conv2d_grouped.py's
reference runs when every filter sees one input channel (w is (K, 1, FH, FW), ``groups`` = C,
K = C*M with M filters per channel, the channel multiplier), MobileNet's depthwise layers.

There the im2col GEMM degenerates into (1, FH*FW) @ (FH*FW, cols) per channel: the column
matrix's copy is all of the time and the arithmetic is a few multiply-adds per pixel. The direct
form skips the column matrix: each direction is one vectorized pass per filter tap (i, j) over the
strided tap view of the padded input (element [n, c, p, q] = xpad[n, c, p*S + i*D, q*S + j*D]):

- forward: y += view(x, tap) * w[:, tap];
- input gradient: view(dx, tap) += dy * w[:, tap], a scatter-add into a padded dx (within one tap
  distinct outputs hit distinct pixels, so a strided += is exact), cropped at the end;
- weight gradient: dw[:, tap] = the sum over n, p, q of view(x, tap) * dy.

Two layouts, chosen by measurement (kuangliu's CIFAR MobileNetV2 layers, float32, 2 cores):
images of at most :data:`CHANNELS_LAST_PIXELS` output pixels run channels-last, (N, H, W, C),
where a tap's pass runs along OW*C contiguous values (an 8x8 or 4x4 image in N, C, H, W would
give NumPy inner loops of 8 or 4); larger ones run N, C, H, W as the arrays come (no transposing
copies), and there only the weight gradient (and a strided convolution's input gradient) runs
here: their forward, and the stride-1 input gradient (a "full" forward), stay on the im2col
path, whose 2-thread GEMM measured as fast or faster on those long rows.
Work goes a batch chunk at a time, :data:`CHUNK_BYTES` of output per chunk, so a tap's
product and the running sum stay in cache. The sums run tap by tap: the results equal the
im2col reference's up to the rounding order. Arrays are float32 or float64 (the caller upcasts
and TF32-rounds, as for im2col).
"""
from __future__ import annotations

from ..backend import get_array_module

# Output pixels (OH*OW) up to which the channels-last form runs. MobileNetV2 at batch 32, min of 7
# (ms, im2col / channels-last / N, C, H, W direct): 4x4 960ch forward 18 / 5.5, backward 34 / 17 / 51;
# 8x8 384ch forward 13 / 14, backward 37 / 24 / 40; 16x16 192ch forward 15 / 20, backward
# 48 / 51 / 45; 32x32 144ch forward 36 / 49, backward 99 / 90 / 74.
CHANNELS_LAST_PIXELS = 64
# Output bytes per batch chunk (at least one image): 64 KB measured best at 4x4 to 32x32.
CHUNK_BYTES = 64 << 10


def applies(w_shape, n) -> bool:
    """Whether the direct form runs: one input channel per filter, a non-empty batch and filters."""
    return w_shape[1] == 1 and n > 0 and w_shape[0] > 0


def channels_last(oh, ow) -> bool:
    """Whether an image of OH*OW output pixels runs channels-last (and its forward here, not on the
    im2col path)."""
    return oh * ow <= CHANNELS_LAST_PIXELS


def _chunks(n, bytes_per_image):
    step = max(1, CHUNK_BYTES // max(1, bytes_per_image))
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


def _taps(fh, fw, oh, ow, stride, dilation, last):
    """(i, j, index) per tap: ``index`` selects the tap's (OH, OW) view of a padded array's two
    spatial axes, axes 1-2 (``last``: channels-last) or 2-3."""
    (sh, sw), (dh, dw) = stride, dilation
    for i in range(fh):
        for j in range(fw):
            rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
            cols = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
            yield i, j, (slice(None), rows, cols) if last else (slice(None), slice(None), rows, cols)


def _padded_shape(shape, padding, last):
    n, c, h, w = shape
    hw = (h + 2 * padding[0], w + 2 * padding[1])
    return (n,) + hw + (c,) if last else (n, c) + hw


def _padded(xp, a, padding, last):
    """``a`` (N, C, H, W) zero-padded, as (N, H', W', C) if ``last`` else (N, C, H', W')."""
    (ph, pw), (h, w) = padding, a.shape[2:]
    out = xp.zeros(_padded_shape(a.shape, padding, last), dtype=a.dtype)
    if last:
        out[:, ph:ph + h, pw:pw + w] = a.transpose(0, 2, 3, 1)
    else:
        out[:, :, ph:ph + h, pw:pw + w] = a
    return out


def _spread(xp, wij, ow):
    """A tap's (C, M) filter values repeated along OW, contiguous (OW, C, M): against a channels-last
    tap view (n, OH, OW, C, M) OW and C then merge into one inner loop."""
    return xp.ascontiguousarray(xp.broadcast_to(wij, (ow,) + wij.shape))


def forward(x, w, b, stride, padding, dilation, oh, ow):
    """y (N, K, OH, OW) in x's dtype, computed channels-last (small images: :func:`channels_last`)."""
    xp = get_array_module(x, w, b)
    n, c = x.shape[:2]
    k, _, fh, fw = w.shape
    m = k // c
    xpad = _padded(xp, x, padding, True)
    wt = w.reshape(c, m, fh, fw)
    y = xp.empty((n, oh, ow, c, m), dtype=x.dtype)
    chunks = _chunks(n, k * oh * ow * x.itemsize)
    tmp = xp.empty((chunks[0][1],) + y.shape[1:], dtype=x.dtype)
    for lo, hi in chunks:
        yc, tc = y[lo:hi], tmp[:hi - lo]
        for t, (i, j, index) in enumerate(_taps(fh, fw, oh, ow, stride, dilation, True)):
            xv = xpad[lo:hi][index][..., None]  # (n, OH, OW, C, 1): broadcast over M
            xp.multiply(xv, _spread(xp, wt[:, :, i, j], ow), out=yc if t == 0 else tc)
            if t:
                yc += tc
    out = xp.empty((n, k, oh, ow), dtype=x.dtype)
    yt = y.reshape(n, oh, ow, k).transpose(0, 3, 1, 2)
    if b is None:
        out[...] = yt
    else:
        xp.add(yt, b.reshape(1, k, 1, 1), out=out)
    return out


def backward(dy, x, w, stride, padding, dilation, need_dx, need_dw):
    """dx (N, C, H, W) and dw (K, 1, FH, FW), each None unless asked, in dy's dtype."""
    xp = get_array_module(dy, x, w)
    n, c, h, wd = x.shape
    k, _, fh, fw = w.shape
    m, (oh, ow), (ph, pw) = k // c, dy.shape[2:], padding
    last = channels_last(oh, ow)
    wt = w.reshape(c, m, fh, fw)
    dw = xp.zeros((fh, fw, c, m), dtype=dy.dtype) if need_dw else None
    xpad = _padded(xp, x, padding, last) if need_dw else None
    dxpad = xp.zeros(_padded_shape(x.shape, padding, last), dtype=dy.dtype) if need_dx else None
    if last:  # dy as (N, OH, OW, C, M); a tap view (n, OH, OW, C) takes a trailing axis for M
        g = xp.ascontiguousarray(dy.reshape(n, c, m, oh, ow).transpose(0, 3, 4, 1, 2))
    else:  # dy as (N, C, M, OH, OW), as it comes; a tap view (n, C, OH, OW) takes an axis 2 for M
        g = dy.reshape(n, c, m, oh, ow)
    chunks = _chunks(n, k * oh * ow * dy.itemsize)
    tmp = xp.empty((chunks[0][1],) + g.shape[1:], dtype=dy.dtype) if need_dx else None
    taps = list(_taps(fh, fw, oh, ow, stride, dilation, last))
    for lo, hi in chunks:
        gc, tc = g[lo:hi], None if tmp is None else tmp[:hi - lo]
        for i, j, index in taps:
            if last:
                if need_dx:
                    xp.multiply(gc, _spread(xp, wt[:, :, i, j], ow), out=tc)
                    dxpad[lo:hi][index] += tc[..., 0] if m == 1 else tc.sum(axis=-1)
                if need_dw:
                    tw = xp.multiply(xpad[lo:hi][index][..., None], gc)
                    dw[i, j] += tw.reshape(-1, c * m).sum(axis=0).reshape(c, m)
            else:
                if need_dx:
                    xp.multiply(gc, wt[:, :, i, j, None, None], out=tc)
                    dxpad[lo:hi][index] += tc[:, :, 0] if m == 1 else tc.sum(axis=2)
                if need_dw:
                    xv = xpad[lo:hi][index]
                    dw[i, j] += (xp.einsum("nchw,nchw->c", xv, gc[:, :, 0])[:, None] if m == 1
                                 else xp.einsum("nchw,ncmhw->cm", xv, gc))
    dx = None
    if need_dx:
        crop = dxpad[:, ph:ph + h, pw:pw + wd].transpose(0, 3, 1, 2) if last else dxpad[:, :, ph:ph + h, pw:pw + wd]
        dx = xp.ascontiguousarray(crop)
    if need_dw:  # (FH, FW, C, M) -> (K, 1, FH, FW)
        dw = xp.ascontiguousarray(dw.reshape(fh, fw, k).transpose(2, 0, 1)).reshape(k, 1, fh, fw)
    return dx, dw
