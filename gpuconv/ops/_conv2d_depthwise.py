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

Two layouts, chosen by measurement (kuangliu's CIFAR MobileNetV2 layers, float32, 2 cores): small
images (:func:`channels_last`: at most 64 output pixels, 256 at stride 1 along W) run channels-last,
(N, H, W, C), where a tap's pass runs along OW*C contiguous values (an 8x8 or 4x4 image in N, C, H,
W would give NumPy inner loops of 8 or 4); larger ones run N, C, H, W as the arrays come (no
transposing copies), and there the forward, and the stride-1 input gradient (a "full" forward) on
rows shorter than :data:`LONG_ROWS`, stay on the im2col path, whose 2-thread GEMM measured faster.
Work goes a batch chunk at a time, :data:`CHUNK_BYTES` of output per chunk, so a tap's
product and the running sum stay in cache. The sums run tap by tap: the results equal the
im2col reference's up to the rounding order. Arrays are float32 or float64 (the caller upcasts
and TF32-rounds, as for im2col).
"""
from __future__ import annotations

from ..backend import get_array_module

# Output pixels (OH*OW) up to which the channels-last form runs, and up to which it runs at
# stride 1 along W (there a tap's view keeps OW and C one run). MobileNetV2 at batch 32, min of 7
# (ms, im2col / channels-last / N, C, H, W direct): 4x4 960ch forward 18 / 5.5, backward 34 / 17 / 51;
# 8x8 384ch forward 13 / 14, backward 37 / 24 / 40; 16x16 192ch (stride 1, the later forms) forward
# 9.7 / 8.6, backward 26 / 20 (144ch from 32x32 at stride 2: 11 / 23 and 31 / 38); 32x32 144ch
# forward 36 / 49, backward 99 / 90 / 74.
CHANNELS_LAST_PIXELS = 64
CHANNELS_LAST_PIXELS_STRIDE1 = 256
# Larger images: the stride-1 input gradient runs here from this output width up (rows long enough
# for NumPy's inner loops; batch 32, 144ch@32: 44 ms against 59 of im2col's full convolution), and as
# im2col's full convolution below it (192ch@16: 22 ms against 17).
LONG_ROWS = 32
# Output bytes per batch chunk (at least one image): 64 KB measured best at 4x4 to 32x32.
CHUNK_BYTES = 64 << 10


def applies(w_shape, n) -> bool:
    """Whether the direct form runs: one input channel per filter, a non-empty batch and filters."""
    return w_shape[1] == 1 and n > 0 and w_shape[0] > 0


def channels_last(oh, ow, stride) -> bool:
    """Whether an image of OH*OW output pixels runs channels-last (and its forward here, not on the
    im2col path)."""
    return oh * ow <= (CHANNELS_LAST_PIXELS_STRIDE1 if stride[1] == 1 else CHANNELS_LAST_PIXELS)


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


class _Padded:
    """A chunk-sized zero-padded buffer, (step, H', W', C) if ``last`` else (step, C, H', W'), reused
    for every batch chunk: its border stays zero, :meth:`fill` overwrites the interior with images
    (N, C, H, W) and :meth:`interior` reads it back. Nothing image-sized is padded or allocated."""

    def __init__(self, xp, step, shape, padding, dtype, last):
        (self.ph, self.pw), (self.h, self.w), self.last = padding, shape[2:], last
        hw = (self.h + 2 * self.ph, self.w + 2 * self.pw)
        self.buf = xp.zeros((step,) + hw + (shape[1],) if last else (step, shape[1]) + hw, dtype=dtype)

    def interior(self, m):
        rows, cols = slice(self.ph, self.ph + self.h), slice(self.pw, self.pw + self.w)
        if self.last:
            return self.buf[:m, rows, cols].transpose(0, 3, 1, 2)  # as (m, C, H, W)
        return self.buf[:m, :, rows, cols]

    def fill(self, a):
        self.interior(len(a))[...] = a
        return self.buf[:len(a)]


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
    chunks = _chunks(n, k * oh * ow * x.itemsize)
    xpad = _Padded(xp, chunks[0][1], x.shape, padding, x.dtype, True)
    wts = [(index, _spread(xp, w.reshape(c, m, fh, fw)[:, :, i, j], ow))
           for i, j, index in _taps(fh, fw, oh, ow, stride, dilation, True)]
    ybuf, tmp = (xp.empty((chunks[0][1], oh, ow, c, m), dtype=x.dtype) for _ in range(2))
    out = xp.empty((n, k, oh, ow), dtype=x.dtype)
    for lo, hi in chunks:  # a chunk's (n, OH, OW, C, M) sums, then one transposing copy into out
        xc, yc, tc = xpad.fill(x[lo:hi]), ybuf[:hi - lo], tmp[:hi - lo]
        for t, (index, wij) in enumerate(wts):
            xp.multiply(xc[index][..., None], wij, out=yc if t == 0 else tc)  # x broadcast over M
            if t:
                yc += tc
        yt = yc.reshape(hi - lo, oh, ow, k).transpose(0, 3, 1, 2)
        if b is None:
            out[lo:hi] = yt
        else:
            xp.add(yt, b.reshape(1, k, 1, 1), out=out[lo:hi])
    return out


def backward(dy, x, w, stride, padding, dilation, need_dx, need_dw):
    """dx (N, C, H, W) and dw (K, 1, FH, FW), each None unless asked, in dy's dtype."""
    xp = get_array_module(dy, x, w)
    n, c = x.shape[:2]
    k, _, fh, fw = w.shape
    m, (oh, ow) = k // c, dy.shape[2:]
    last = channels_last(oh, ow, stride)
    wt = w.reshape(c, m, fh, fw)
    chunks = _chunks(n, k * oh * ow * dy.itemsize)
    step = chunks[0][1]
    dw = xp.zeros((fh, fw, c, m), dtype=dy.dtype) if need_dw else None
    xpad = _Padded(xp, step, x.shape, padding, dy.dtype, last) if need_dw else None
    dxpad = _Padded(xp, step, x.shape, padding, dy.dtype, last) if need_dx else None
    dx = xp.empty(x.shape, dtype=dy.dtype) if need_dx else None
    # dy as (n, OH, OW, C, M) channels-last (a chunk's transposing copy), else (n, C, M, OH, OW) as it
    # comes; a tap view, (n, OH, OW, C) or (n, C, OH, OW), takes an axis for M beside C.
    gbuf = xp.empty((step, oh, ow, c, m), dtype=dy.dtype) if last else None
    tmp = xp.empty((step, oh, ow, c, m) if last else (step, c, m, oh, ow), dtype=dy.dtype)
    mx = -1 if last else 2
    taps = [(i, j, index, _spread(xp, wt[:, :, i, j], ow) if last else wt[:, :, i, j, None, None])
            for i, j, index in _taps(fh, fw, oh, ow, stride, dilation, last)]
    for lo, hi in chunks:
        g = dy[lo:hi].reshape(hi - lo, c, m, oh, ow)
        if last:
            g = gbuf[:hi - lo]
            g[...] = dy[lo:hi].reshape(hi - lo, c, m, oh, ow).transpose(0, 3, 4, 1, 2)
        tc = tmp[:hi - lo]
        if need_dx:
            dxc = dxpad.buf[:hi - lo]
            dxc[...] = 0
        xc = xpad.fill(x[lo:hi]) if need_dw else None
        for i, j, index, wij in taps:
            if need_dx:
                xp.multiply(g, wij, out=tc)
                dxc[index] += tc[..., 0] if last and m == 1 else tc[:, :, 0] if m == 1 else tc.sum(axis=mx)
            if need_dw:  # one fused multiply-sum per tap (einsum: 2x a product and a sum)
                xv = xc[index]
                if m == 1:
                    dw[i, j, :, 0] += (xp.einsum("nhwc,nhwc->c", xv, g[..., 0]) if last
                                       else xp.einsum("nchw,nchw->c", xv, g[:, :, 0]))
                else:
                    dw[i, j] += xp.einsum("nhwc,nhwcm->cm" if last else "nchw,ncmhw->cm", xv, g)
        if need_dx:
            dx[lo:hi] = dxpad.interior(hi - lo)
    if need_dw:  # (FH, FW, C, M) -> (K, 1, FH, FW)
        dw = xp.ascontiguousarray(dw.reshape(fh, fw, k).transpose(2, 0, 1)).reshape(k, 1, fh, fw)
    return dx, dw
