"""Batch norm's NumPy reference on the CPU, a block of the batch at a time: what batchnorm.py's
reference runs for NumPy arrays laid out N, C, H, W (C-contiguous), in float32 or float64 or
upcast to float32 from bfloat16/float16; a fused ReLU runs here (in float32/float64), a GELU and a
low-precision ReLU on the normalization's output as the reference applies them.

The reference as written makes a pass over memory per operation, each on a fresh N*C*H*W array
(page faults on top of the pass): the training forward seven passes, the backward with a ReLU
fifteen. Here each direction runs a block of images (or of one image's channels) at a time,
:data:`BLOCK_BYTES` per block, so a block's operations run in cache on two reused buffers:

- forward: the mean over the images first (NumPy's inner loops C*H*W long, not H*W: 2x2 images
  add 20x faster); the variance from each block's centred values, which stay in y for the
  output's pass;
- backward: the ReLU's mask and the two parameter sums (dbeta, dgamma) in one
  pass, the input gradient in a second, writing into dx (the masked dy lives there between the
  two), xhat recomputed in each.

Every elementwise value is computed with the reference's operations in its order (xhat =
(x - mean) * inv_std, z = xhat * gamma + beta, dx = (dy - dbeta/n - xhat * dgamma/n) * scale),
but for xhat * dgamma/n in dx, (x - mean) * (inv_std * dgamma/n) (one pass less): so given the
same statistics y and the ReLU's mask have the reference's bits (eval mode: y and dx); the sums
add in another order, which, as that product, moves them within float rounding.
CIFAR networks' shapes (batch 32, float32, ReLU, one core, a busy machine; ms, reference / here):
144ch 32x32 forward 30 / 19, backward 53 / 27; 192ch 16x16 6.2 / 5.5 and 12.4 / 8.8; 576ch 8x8
4.9 / 5.3 and 9.7 / 8.7; 1152ch 2x2 2.3 / 0.9 and 2.9 / 1.6.
"""
from __future__ import annotations

import numpy as np

# Bytes of one block's buffer: two of them and the block's x, dy and dx stay in the L2 cache.
BLOCK_BYTES = 256 << 10


def applies(x, dy=None) -> bool:
    """Whether this path runs: float32/float64 NumPy x (and dy), C-contiguous N, C, H, W, with values."""
    return _applies(x) and (dy is None or _applies(dy))


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))  # (in the machine's byte order, as np.float32 compares)


def _applies(a) -> bool:
    return (type(a) is np.ndarray and a.dtype in _FLOATS and a.ndim == 4 and a.size > 0
            and a.flags.c_contiguous)


def _blocks(shape, itemsize):
    """(image slice, channel slice) per block: whole images while one fits :data:`BLOCK_BYTES`,
    else one image's channels a block at a time."""
    n, c, length = shape
    image = c * length * itemsize
    if image <= BLOCK_BYTES:
        step = BLOCK_BYTES // image
        return [(slice(lo, min(n, lo + step)), slice(None)) for lo in range(0, n, step)]
    step = max(1, BLOCK_BYTES // (length * itemsize))
    return [(slice(i, i + 1), slice(lo, min(c, lo + step))) for i in range(n) for lo in range(0, c, step)]


class _Work:
    """Two block-sized buffers and the per-channel vectors as (C, 1) columns, against (n, C, L) blocks."""

    def __init__(self, x3, *vectors):
        self.blocks = _blocks(x3.shape, x3.itemsize)
        size = max(len(range(*b[0].indices(x3.shape[0]))) * len(range(*b[1].indices(x3.shape[1])))
                   for b in self.blocks) * x3.shape[2]
        self.bufs = [np.empty(size, x3.dtype) for _ in range(2)]
        self.cols = [None if v is None else v.reshape(-1, 1) for v in vectors]

    def buf(self, k, block_shape):
        return self.bufs[k][:int(np.prod(block_shape))].reshape(block_shape)


def _sum(a):
    """Per channel of an (n, C, L) block: NumPy's pairwise sum along L, then over the images (the
    accuracy of the reference's a.sum((0, 2, 3))); short rows (L < 256) over the images first: at
    L = 4 (2x2 images) summing along L takes 4.6 ns a value against 0.24."""
    add = np.add.reduce  # (what ndarray.sum calls, without its Python wrapper: a few values' sums are mostly that)
    if a.ndim == 2:  # (n, C): L = 1 (see _whole)
        return add(a, 0)
    return add(add(a, 2), 0) if a.shape[2] >= 256 else add(add(a, 0), 1)


def _dot(a, b, out):
    """sum(a * b) per channel of (n, C, L) blocks, the products in ``out`` then :func:`_sum` (an
    einsum adds each row's products one after another: a float32 batch norm's variance over 8192
    values came out ~10x further from float64, enough to flip ReLU masks of ShuffleNetV2)."""
    return _sum(np.multiply(a, b, out=out))


def _xhat(xb, mean, inv_std, out):
    np.subtract(xb, mean, out=out)
    out *= inv_std
    return out


def _z(xh, gamma, beta, out):
    np.multiply(xh, gamma, out=out)
    out += beta
    return out


def _variance(x3, mean, out3):
    """The biased variance per channel, sum((x - mean)^2) / count, a block at a time, each block's
    centred values left in ``out3`` (the output's buffer, where :func:`forward` goes on from them)."""
    work = _Work(x3, mean)
    total = np.zeros(x3.shape[1], x3.dtype)
    for ni, ci in work.blocks:
        cen = np.subtract(x3[ni, ci], work.cols[0][ci], out=out3[ni, ci])
        total[ci] += _dot(cen, cen, work.buf(0, cen.shape))
    return total / x3.dtype.type(x3.shape[0] * x3.shape[2])


def forward(x, mean, var, eps, gamma, beta, relu):
    """(y, mean, var, inv_std): y = z = xhat * gamma + beta (``relu``: max(z, 0)) in x's dtype and shape,
    normalized with the batch's statistics when ``mean`` and ``var`` are None, else with these."""
    return (_forward_whole if x.nbytes <= BLOCK_BYTES else _forward_blocks)(x, mean, var, eps, gamma, beta, relu)


def _forward_blocks(x, mean, var, eps, gamma, beta, relu):
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    y = np.empty_like(x)
    y3 = y.reshape(x3.shape)
    dt, centred = x.dtype.type, mean is None
    if centred:
        mean = x3.sum(axis=0).sum(axis=1) / dt(n * x3.shape[2])
        var = _variance(x3, mean, y3)
    inv_std = dt(1.0) / np.sqrt(var + dt(eps))
    work = _Work(x3, mean, inv_std, gamma, beta)
    m, s, g, b = work.cols
    for ni, ci in work.blocks:
        _normalize(x3[ni, ci], y3[ni, ci], m[ci], s[ci], g[ci], b[ci], centred, relu)
    return y, mean, var, inv_std


def _normalize(xb, yb, m, s, g, b, centred, relu):
    """y of one block into ``yb``: xhat * gamma + beta (``relu``: max(z, 0)); ``centred``: ``yb``
    holds x - mean already (the variance's pass left it there)."""
    if centred:
        yb *= s
    else:
        _xhat(xb, m, s, yb)
    _z(yb, g, b, yb)
    if relu:
        np.maximum(yb, yb.dtype.type(0), out=yb)


def backward(dy, x, mean, inv_std, gamma, beta, relu, training):
    """dx, dgamma, dbeta (see the module's docstring); ``beta`` is read only with ``relu``."""
    return (_backward_whole if x.nbytes <= BLOCK_BYTES else _backward_blocks)(dy, x, mean, inv_std, gamma, beta,
                                                                              relu, training)


def _backward_blocks(dy, x, mean, inv_std, gamma, beta, relu, training):
    n, c = x.shape[:2]
    x3, dy3 = x.reshape(n, c, -1), dy.reshape(n, c, -1)
    dx = np.empty_like(dy)
    dx3 = dx.reshape(x3.shape)
    work = _Work(x3, mean, inv_std, gamma, beta)
    m, s, g, b = work.cols
    dbeta, dgamma = np.zeros(c, dy.dtype), np.zeros(c, dy.dtype)
    for ni, ci in work.blocks:  # pass 1: dy through the ReLU (into dx), the parameter gradients
        xb = x3[ni, ci]
        sums = _parameter_sums(xb, dy3[ni, ci], dx3[ni, ci], m[ci], s[ci], g[ci], b[ci] if relu else None, relu,
                               work.buf(0, xb.shape), work.buf(1, xb.shape))
        dbeta[ci] += sums[0]
        dgamma[ci] += sums[1]
    scale, mean_dy, xhat_dyx = (v if v is None else v.reshape(-1, 1)
                                for v in _input_vectors(dbeta, dgamma, inv_std, gamma, training, x3.size // c))
    for ni, ci in work.blocks:  # pass 2: the input gradient
        _input_gradient(x3[ni, ci], (dx3 if relu else dy3)[ni, ci], dx3[ni, ci], m[ci], scale[ci],
                        None if mean_dy is None else mean_dy[ci], None if xhat_dyx is None else xhat_dyx[ci],
                        work.buf(0, dx3[ni, ci].shape))
    return dx, dgamma, dbeta


def _parameter_sums(xb, gb, db, m, s, g, b, relu, buf0, buf1):
    """Pass 1 on one block: dy through the ReLU (into ``db``: dy where z > 0, else +0, dy's bits
    ANDed with an all-ones or all-zeros mask, as relu.py), and its per-channel sums for dbeta and
    dgamma, (sum dy, sum dy * xhat); ``buf0`` and ``buf1`` are scratch of the block's shape."""
    xh = _xhat(xb, m, s, buf0)
    if relu:
        z = _z(xh, g, b, buf1)
        bits = np.dtype(f"i{gb.itemsize}")
        mask = db.view(bits)
        np.greater(z, z.dtype.type(0), out=mask, casting="unsafe")
        np.negative(mask, out=mask)
        np.bitwise_and(mask, gb.view(bits), out=mask)
        gb = db
    return _sum(gb), _dot(gb, xh, xh)


def _input_vectors(dbeta, dgamma, inv_std, gamma, training, count):
    """Pass 2's per-channel vectors: scale = gamma * inv_std, and in training mean(dy) and
    inv_std * mean(dy * xhat) (xhat * mean(dy * xhat) as (x - mean) * that: one pass less), else None."""
    scale = gamma * inv_std
    if not training:
        return scale, None, None
    per = dbeta.dtype.type(1.0 / count)
    return scale, dbeta * per, inv_std * (dgamma * per)


def _input_gradient(xb, gb, db, m, scale, mean_dy, xhat_dyx, buf):
    """Pass 2 on one block: dx into ``db`` from the masked dy ``gb`` (``buf``: scratch)."""
    if mean_dy is None:  # (eval mode)
        np.multiply(gb, scale, out=db)
        return
    proj = np.subtract(xb, m, out=buf)
    proj *= xhat_dyx
    np.subtract(gb, mean_dy, out=db)
    db -= proj
    db *= scale


# ----------------------------------------------------------------------------- one block
# A batch within BLOCK_BYTES is one block: the loops above would run once, on (n, C, L) views of
# the whole arrays, after building the blocks' buffers and slices. These call the loops' bodies
# (_normalize, _parameter_sums, _input_gradient) once on the whole arrays without that bookkeeping
# (a gradient check's batch of a few values: about half of batch norm's time on it), so they give
# the loops' bits. With L = 1 (a fully connected
# layer's batch norm) they run on (n, C) views, the per-channel vectors as they are: the same
# values (a sum over L = 1 is its one value), one axis less to broadcast and reduce.

def _whole(a):
    """a's (n, C, L) view, or (n, C) where L = 1."""
    n, c, h, w = a.shape
    return a.reshape(n, c) if h * w == 1 else a.reshape(n, c, h * w)


def _col(v, a):
    """A per-channel vector against a view of :func:`_whole`: as a (C, 1) column for (n, C, L)."""
    return v if a.ndim == 2 else v.reshape(-1, 1)


def _forward_whole(x, mean, var, eps, gamma, beta, relu):
    x3 = _whole(x)
    y = np.empty_like(x)
    y3 = y.reshape(x3.shape)
    dt, centred = x.dtype.type, mean is None
    if centred:
        count = dt(x3.size // x3.shape[1])
        mean = np.add.reduce(x3, 0)  # (x3.sum(axis=0).sum(axis=1), as _forward_blocks)
        mean = (mean if x3.ndim == 2 else np.add.reduce(mean, 1)) / count
        cen = np.subtract(x3, _col(mean, x3), out=y3)
        # (_variance adds this sum to zeros: a sum of squares is never -0, so that changes no bit)
        var = _sum(np.multiply(cen, cen)) / count
    inv_std = dt(1.0) / np.sqrt(var + dt(eps))
    _normalize(x3, y3, *(_col(v, x3) for v in (mean, inv_std, gamma, beta)), centred, relu)
    return y, mean, var, inv_std


def _backward_whole(dy, x, mean, inv_std, gamma, beta, relu, training):
    x3, dy3 = _whole(x), _whole(dy)
    dx = np.empty_like(dy)
    dx3 = dx.reshape(x3.shape)
    c = x3.shape[1]
    m, s, g = (_col(v, x3) for v in (mean, inv_std, gamma))
    b = _col(beta, x3) if relu else None
    buf = np.empty_like(x3)
    sums = _parameter_sums(x3, dy3, dx3, m, s, g, b, relu, buf, np.empty_like(x3) if relu else None)
    dbeta, dgamma = np.zeros(c, dy.dtype), np.zeros(c, dy.dtype)  # (zeros plus the sums: a sum of -0 is +0 there)
    dbeta += sums[0]
    dgamma += sums[1]
    scale, mean_dy, xhat_dyx = (v if v is None else _col(v, x3)
                                for v in _input_vectors(dbeta, dgamma, inv_std, gamma, training, x3.size // c))
    _input_gradient(x3, dx3 if relu else dy3, dx3, m, scale, mean_dy, xhat_dyx, buf)
    return dx, dgamma, dbeta
