"""bfloat16 and float16 through every op, on every backend: the precision rule (gpuconv.precision).

Each op runs on the backend's arrays in the low precision and is held, with the bound of
gpuconv.gradcheck.reduction_tolerance (derived from the reduction length and the formats' unit
roundoffs, never tuned), to the exact float64 result of the same inputs; on the kernel backends
also to the NumPy reference on the same inputs. Max pooling, ReLU, average pooling and dropout
are exact: the kernels and the reference round the same float32 values once. On 'sim' every
kernel of the op must have run, and run in the low-precision build (the launch log says so).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from gpuconv import kernels
from gpuconv.gradcheck import reduction_tolerance, within_tolerance
from gpuconv.ops import (avg_pool2d_backward, avg_pool2d_forward, batchnorm2d_backward, batchnorm2d_forward,
                         conv2d_backward, conv2d_forward, dropout_backward, dropout_forward, linear_backward,
                         linear_forward, max_pool2d_backward, max_pool2d_forward, relu_backward, relu_forward,
                         softmax_cross_entropy)
from gpuconv.ops import gelu_backward, gelu_forward
from gpuconv.ops import _launch_conv2d as LC
from gpuconv.ops import batchnorm as bn_mod
from gpuconv.ops import conv2d as conv_mod
from gpuconv.ops import dropout as drop_mod
from gpuconv.ops import loss as loss_mod
from gpuconv.ops import _pool2d_reference as pool_ref
from gpuconv.ops import relu as relu_mod
from gpuconv.ops._checks import pair
from test_gemm_tc import GPU_FACTOR

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
LOW = pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
CONV_FAMILIES = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")


def rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def f64(a):
    return np.asarray(a).astype(np.float64)


def assert_within(result, reference, abs_sum, length, dtype, what, reference_rounded=False, factor=1.0):
    """``reference_rounded``: ``reference`` is itself a result in ``dtype`` (the NumPy reference),
    not the exact float64 value. ``factor``: GPU_FACTOR for a GPU's tensor cores, whose float32
    sums are not rounded to nearest."""
    tol = factor * reduction_tolerance(f64(abs_sum), f64(reference), length, dtype, reference_rounded)
    ok, worst = within_tolerance(f64(result), f64(reference), tol)
    assert ok, f"{what}: |result - reference| exceeds the derived bound (worst |diff|/bound = {worst:.3g})"


def assert_bits(got, want):
    got, want = np.ascontiguousarray(got), np.ascontiguousarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.view(np.uint8).tobytes() == want.view(np.uint8).tobytes()


def assert_low_precision_kernels(backend, dtype, *families):
    """On 'sim' and 'cupy' the families' kernels ran, every launch in ``dtype``'s build."""
    backend.assert_kernels_ran(*families)
    if backend.name != "numpy":
        builds = {rec.build for rec in backend.launches}
        assert builds == {dtype.name}, f"launches ran in {builds}, not only {dtype.name}: {backend.launches}"


# ----------------------------------------------------------------------------- conv2d
CONV_CASES = [((2, 8, 9, 9), (12, 3, 3), 1, 1), ((2, 5, 9, 7), (6, 3, 2), (2, 1), (1, 0))]


@LOW
@pytest.mark.parametrize("variant", ["v1", "v2", "v3", "tc"])
@pytest.mark.parametrize("case", CONV_CASES, ids=["3x3s1", "3x2s21"])
def test_conv2d_follows_the_rule(backend, dtype, variant, case, monkeypatch):
    monkeypatch.setattr(LC, "MIN_SPLIT_CHUNK", 8)  # several split-K partials in the float32 workspace
    xs, (k, fh, fw), stride, pad = case
    rng = np.random.default_rng(0)
    x, w, b = rand(rng, xs, dtype), rand(rng, (k, xs[1], fh, fw), dtype), rand(rng, k, dtype)
    with kernels.use_variant(**{f: variant for f in CONV_FAMILIES}):
        y, cache = conv2d_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b), stride, pad)
        dy = rand(rng, y.shape, dtype)
        dx, dw, db = conv2d_backward(backend.asarray(dy), cache)
    got = [backend.asnumpy(a) for a in (y, dx, dw, db)]
    assert [a.dtype for a in got] == [dtype] * 4
    s, p = pair("stride", stride), pair("padding", pad)
    exact = conv_mod._conv2d_forward_reference(f64(x), f64(w), f64(b), s, p)[0]
    mag = conv_mod._conv2d_forward_reference(abs(f64(x)), abs(f64(w)), abs(f64(b)), s, p)[0]
    exact_b = conv_mod._conv2d_backward_reference(f64(dy), conv_mod.Conv2dCache(f64(x), f64(w), True, s, p))
    mag_b = conv_mod._conv2d_backward_reference(abs(f64(dy)), conv_mod.Conv2dCache(abs(f64(x)), abs(f64(w)), True, s, p))
    n, oh, ow = y.shape[0], y.shape[2], y.shape[3]
    lengths = [xs[1] * fh * fw + 1, k * fh * fw, n * oh * ow, n * oh * ow]
    ref_y, ref_cache = conv_mod._conv2d_forward_reference(x, w, b, s, p)
    refs = [ref_y, *conv_mod._conv2d_backward_reference(dy, ref_cache)]
    factor = GPU_FACTOR if backend.name == "cupy" and variant == "tc" else 1.0
    for name, g, e, m, L, r in zip(["y", "dx", "dw", "db"], got, [exact, *exact_b], [mag, *mag_b], lengths, refs):
        assert_within(g, e, m, L, dtype, f"{name} against float64", factor=factor)
        if backend.name != "numpy":
            assert_within(g, r, m, L, dtype, f"{name} against the NumPy reference", reference_rounded=True,
                          factor=factor)
    # v1 reduces in one thread per output; the others add float32 split partials in a second kernel
    split_k = {"v1": (), "tc": ("conv2d_tc_weight_reduce",)}.get(variant, ("conv2d_reduce_splits",))
    families = [f"{f}_tc" for f in CONV_FAMILIES] if variant == "tc" else CONV_FAMILIES
    assert_low_precision_kernels(backend, dtype, *families, *split_k, "conv2d_backward_bias")


@LOW
@pytest.mark.parametrize("variant", ["v1", "v2", "v3"])
def test_conv2d_rounds_each_output_once_to_nearest_even(backend, dtype, variant, monkeypatch):
    """Integers up to 31: every product and partial sum is exact in float32 (below 2^24), so each
    output is its float64 value rounded once, to nearest even, bit for bit. The derived bound of
    the test above cannot tell that rounding from a truncation (at most one unit in the last
    place, which its 2u|reference| term admits); here y, dx and dw have values past the formats'
    exact integers (256, 2048), so a truncating or doubly rounding cast fails."""
    monkeypatch.setattr(LC, "MIN_SPLIT_CHUNK", 8)  # split-K partials in v2/v3's weight gradient
    xs, (k, fh, fw), stride, pad = CONV_CASES[0]
    rng = np.random.default_rng(13)
    x, w, b = (rng.integers(-31, 32, s).astype(dtype) for s in (xs, (k, xs[1], fh, fw), k))
    with kernels.use_variant(**{f: variant for f in CONV_FAMILIES}):
        y, cache = conv2d_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b), stride, pad)
        dy = rng.integers(-31, 32, y.shape).astype(dtype)
        dx, dw, db = conv2d_backward(backend.asarray(dy), cache)
    s, p = pair("stride", stride), pair("padding", pad)
    ey, ecache = conv_mod._conv2d_forward_reference(f64(x), f64(w), f64(b), s, p)
    exact = [ey, *conv_mod._conv2d_backward_reference(f64(dy), ecache)]
    for name, got, want in zip(["y", "dx", "dw", "db"], (y, dx, dw, db), exact):
        assert np.isfinite(want).all()
        assert name == "db" or (f64(want.astype(dtype)) != want).any(), f"{name}: no output needs rounding"
        np.testing.assert_array_equal(f64(backend.asnumpy(got)), f64(want.astype(dtype)), err_msg=name)
    if backend.name == "sim":
        assert {f"{f}_{variant}" for f in CONV_FAMILIES} <= set(backend.launches.names)


@LOW
@pytest.mark.parametrize("variant", ["v2", "v3"])
def test_conv2d_weight_gradient_split_partials_stay_float32(dtype, variant, monkeypatch, launches):
    """Two images whose weight-gradient contributions cancel exactly: every float32 partial sum is
    exact (8-bit x 8-bit products, multiples of 2^-14 below 2^10), so dw is exactly 0, on the
    kernels as in the reference. Rounding a split's partial sum to 8 or 11 bits, anywhere, would
    leave a residue (the splits do not line up with the images: 81 positions, chunks of 8)."""
    monkeypatch.setattr(LC, "MIN_SPLIT_CHUNK", 8)
    rng = np.random.default_rng(12)
    x1 = (1 + rng.integers(0, 128, (1, 3, 9, 9)) / 128).astype(dtype)
    g1 = (1 + rng.integers(0, 128, (1, 4, 9, 9)) / 128).astype(dtype)
    x, dy = np.concatenate([x1, x1]), np.concatenate([g1, -g1])
    with kernels.use_variant(conv2d_backward_weight=variant):
        dw = LC.conv2d_backward_weight_kernel(dy, x, (4, 3, 3, 3), (1, 1), (1, 1), target="sim")
    assert launches.names == [f"conv2d_backward_weight_{variant}", "conv2d_reduce_splits"]
    assert launches[0].grid[2] > 10 and dw.dtype == dtype  # many splits
    assert_bits(dw, np.zeros((4, 3, 3, 3), dtype))
    ref = conv_mod._conv2d_backward_reference(dy, conv_mod.Conv2dCache(x, np.zeros((4, 3, 3, 3), dtype), False,
                                                                       (1, 1), (1, 1)))[1]
    assert_bits(ref, np.zeros((4, 3, 3, 3), dtype))


@LOW
@pytest.mark.parametrize("variant", ["v1", "v2", "v3"])
def test_conv2d_fused_bias_relu_epilogue(dtype, variant, launches):
    rng = np.random.default_rng(1)
    x, w, b = rand(rng, (2, 4, 6, 6), dtype), rand(rng, (5, 4, 3, 3), dtype), rand(rng, 5, dtype)
    with kernels.use_variant(conv2d_forward=variant):
        y, _ = LC.conv2d_forward_kernel(x, w, b, (1, 1), (1, 1), target="sim", relu=True)
    ref = conv_mod._conv2d_forward_reference(x, w, b, (1, 1), (1, 1))[0]
    mag = conv_mod._conv2d_forward_reference(abs(f64(x)), abs(f64(w)), abs(f64(b)), (1, 1), (1, 1))[0]
    assert y.dtype == dtype and np.all(f64(y) >= 0) and not np.signbit(f64(y)).any()  # +0.0, never -0.0
    assert_within(y, np.maximum(f64(ref), 0), mag, 4 * 9 + 1, dtype, "relu(conv + b)", reference_rounded=True)
    assert {r.build for r in launches} == {dtype.name} and launches.names == [f"conv2d_forward_{variant}"]


# ----------------------------------------------------------------------------- pooling
def special_values(rng, shape, dtype):
    """Random values with ties, -0.0, +-inf and a NaN, in ``dtype``."""
    x = np.round(rng.standard_normal(shape) * 4) / 4  # many equal values: the first maximum must win
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, 8, replace=False)] = [-0.0, 0.0, np.inf, -np.inf, np.nan, -0.0, 1e-30, -1e-30]
    return x.astype(dtype)


@LOW
@pytest.mark.parametrize("ks, stride", [((2, 2), None), ((3, 3), (2, 2))], ids=["2x2", "3x3s2"])
def test_max_pool_is_exact(backend, dtype, ks, stride):
    rng = np.random.default_rng(2)
    x = special_values(rng, (2, 3, 9, 9) if ks == (3, 3) else (2, 3, 8, 8), dtype)
    y, cache = max_pool2d_forward(backend.asarray(x), ks, stride)
    dy = rand(rng, y.shape, dtype)
    dx = backend.asnumpy(max_pool2d_backward(backend.asarray(dy), cache))
    y, argmax = backend.asnumpy(y), backend.asnumpy(cache.argmax)
    ref_y, ref_cache = pool_ref._max_pool2d_forward_reference(x, pair("k", ks), pair("s", stride or ks))
    assert_bits(y, ref_y)
    np.testing.assert_array_equal(argmax, ref_cache.argmax)
    np.testing.assert_array_equal(f64(dx), f64(pool_ref._max_pool2d_backward_reference(dy, ref_cache)))
    # The definition, in float64: each output is its window's maximum (NaN where the window has one).
    sh, sw = stride or ks
    for i, j in np.ndindex(*y.shape[2:]):
        win = f64(x)[:, :, i * sh:i * sh + ks[0], j * sw:j * sw + ks[1]].reshape(2, 3, -1)
        want = np.where(np.isnan(win).any(-1), np.nan, np.max(np.where(np.isnan(win), -np.inf, win), -1))
        np.testing.assert_array_equal(f64(y[:, :, i, j]), want)
    assert dx.dtype == dtype
    assert_low_precision_kernels(backend, dtype, "max_pool2d_forward", "max_pool2d_backward")


@LOW
@pytest.mark.parametrize("ks, stride", [((2, 2), None), ((3, 3), (2, 2))], ids=["2x2", "3x3s2"])
def test_avg_pool_rounds_a_float32_mean_once(backend, dtype, ks, stride):
    rng = np.random.default_rng(3)
    x = rand(rng, (2, 3, 9, 9) if ks == (3, 3) else (2, 3, 8, 8), dtype, 3.0)
    y, cache = avg_pool2d_forward(backend.asarray(x), ks, stride)
    dy = rand(rng, y.shape, dtype)
    dx = backend.asnumpy(avg_pool2d_backward(backend.asarray(dy), cache))
    y = backend.asnumpy(y)
    s = pair("s", stride or ks)
    ref_y, ref_cache = pool_ref._avg_pool2d_forward_reference(x, ks, s)
    assert_bits(y, ref_y)  # the same float32 sums in the same order, the same reciprocal, one rounding
    assert_bits(dx, pool_ref._avg_pool2d_backward_reference(dy, ref_cache))
    exact = pool_ref._avg_pool2d_forward_reference(f64(x), ks, s)[0]
    mag = pool_ref._avg_pool2d_forward_reference(abs(f64(x)), ks, s)[0]
    # ks taps, then the rounded reciprocal and its product: two more float32 roundings.
    assert_within(y, exact, mag, ks[0] * ks[1] + 2, dtype, "avg pool against float64")
    assert_low_precision_kernels(backend, dtype, "avg_pool2d_forward", "avg_pool2d_backward")


# ----------------------------------------------------------------------------- ReLU, dropout
@LOW
@pytest.mark.parametrize("variant", ["v1", "v2"])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "offset"])
def test_relu_is_exact(backend, dtype, variant, offset):
    rng = np.random.default_rng(4)
    base = special_values(rng, (1, 2, 7, 11), dtype).reshape(-1)
    base[::5] = (rng.standard_normal(base[::5].size) * 1e-6).astype(dtype)  # subnormals in float16
    x = base[offset:]  # offset 1: 2 bytes off an 8-byte boundary, so v2 must fall back to v1
    dy = rand(rng, x.shape, dtype)
    with kernels.use_variant(relu_forward=variant, relu_backward=variant):
        y, cache = relu_forward(backend.asarray(x))
        dx = backend.asnumpy(relu_backward(backend.asarray(dy), cache))
    y = backend.asnumpy(y)
    assert_bits(y, relu_mod._relu_forward_reference(x)[0])
    np.testing.assert_array_equal(f64(dx), f64(relu_mod._relu_backward_reference(dy, relu_mod.ReluCache(x))))
    positive = f64(x) > 0
    assert_bits(y[positive], x[positive])  # the input's own values, bit for bit
    assert np.all(f64(y)[~positive & ~np.isnan(f64(x))] == 0) and not np.signbit(f64(y)[~np.isnan(f64(y))]).any()
    assert_low_precision_kernels(backend, dtype, "relu_forward", "relu_backward")
    if backend.name == "sim":
        want = "v1" if offset or variant == "v1" else "v2"
        assert {n.rsplit("_", 1)[1] for n in backend.launches.names} == {want}


@LOW
def test_dropout_scales_in_float32_and_rounds_once(backend, dtype):
    rng = np.random.default_rng(5)
    x, dy = rand(rng, (3, 5, 7), dtype), rand(rng, (3, 5, 7), dtype)
    p, key = 0.3, 12345
    y, cache = dropout_forward(backend.asarray(x), p, key=key)
    dx = backend.asnumpy(dropout_backward(backend.asarray(dy), cache))
    y, mask = backend.asnumpy(y), backend.asnumpy(cache.mask)
    ref_y, ref_cache = drop_mod._dropout_forward_reference(x, p, np.uint64(key))
    assert mask.dtype == np.float32 and y.dtype == dtype and dx.dtype == dtype
    assert_bits(y, ref_y)
    assert_bits(mask, ref_cache.mask)
    scale = np.float32(1 / (1 - p))  # 1/(1-p) rounded to float32, not to the storage format
    assert set(np.unique(mask)) <= {np.float32(0), scale}
    assert_bits(y, (x.astype(np.float32) * mask).astype(dtype))
    assert_bits(dx, (dy.astype(np.float32) * mask).astype(dtype))
    assert_low_precision_kernels(backend, dtype, "dropout_forward", "dropout_backward")


# ----------------------------------------------------------------------------- ops without kernels
@LOW
def test_linear_follows_the_rule(backend, dtype):
    rng = np.random.default_rng(6)
    x, w, b = rand(rng, (6, 3, 4, 4), dtype), rand(rng, (10, 48), dtype), rand(rng, 10, dtype)
    y, cache = linear_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b))
    dy = rand(rng, (6, 10), dtype)
    dx, dw, db = (backend.asnumpy(a) for a in linear_backward(backend.asarray(dy), cache))
    y = backend.asnumpy(y)
    assert [a.dtype for a in (y, dx, dw, db)] == [dtype] * 4 and dx.shape == x.shape
    X, W, DY = f64(x).reshape(6, -1), f64(w), f64(dy)
    f = GPU_FACTOR if backend.name == "cupy" else 1.0  # (a GPU's GEMM may sum on tensor cores)
    assert_within(y, X @ W.T + f64(b), abs(X) @ abs(W).T + abs(f64(b)), 49, dtype, "y", factor=f)
    assert_within(dx.reshape(6, -1), DY @ W, abs(DY) @ abs(W), 10, dtype, "dx", factor=f)
    assert_within(dw, DY.T @ X, abs(DY).T @ abs(X), 6, dtype, "dw", factor=f)
    assert_within(db, DY.sum(0), abs(DY).sum(0), 6, dtype, "db", factor=f)


@LOW
def test_batchnorm_computes_in_float32_and_keeps_its_parameters_there(backend, dtype):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((4, 3, 5, 5)) * 3 + 2).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, 3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    args = [backend.asarray(a) for a in (x, gamma, beta, rm, rv)]
    y, cache = batchnorm2d_forward(*args)
    dy = rand(rng, x.shape, dtype)
    dx, dgamma, dbeta = (backend.asnumpy(a) for a in batchnorm2d_backward(backend.asarray(dy), cache))
    y = backend.asnumpy(y)
    assert y.dtype == dtype and dx.dtype == dtype and cache.x.dtype == dtype and cache.mean.dtype == np.float32
    assert dgamma.dtype == dbeta.dtype == np.float32 and backend.asnumpy(args[3]).dtype == np.float32
    # Literally: the float32 computation on the upcast input, rounded once.
    rm32, rv32 = np.zeros(3, np.float32), np.ones(3, np.float32)
    y32, c32 = bn_mod._batchnorm2d_forward_reference(x.astype(np.float32), gamma, beta, rm32, rv32, True, 0.1, 1e-5)
    dx32, dg32, db32 = bn_mod._batchnorm2d_backward_reference(dy.astype(np.float32), c32)
    if backend.name == "numpy":
        assert_bits(y, y32.astype(dtype))
        np.testing.assert_array_equal(backend.asnumpy(args[3]), rm32)
        assert_bits(dx, dx32.astype(dtype))
        np.testing.assert_array_equal(dgamma, dg32)
    else:
        # The kernels (kernels/batchnorm.cu) sum in their own fixed order, not NumPy's pairwise one,
        # so their float32 statistics agree with the reference to n*u, not bit for bit. What stays
        # exact is the rule: y is the float32 xhat * gamma + beta of their own xhat, rounded once.
        _assert_batchnorm_kernel_rounds_once(backend, x, dy, y, dx, dgamma, dbeta, cache, gamma, beta, c32, dg32,
                                             db32, dx32, rm32, backend.asnumpy(args[3]), dtype)
    # And close to float64: one rounding of y (|y| * u) over float32 statistics.
    X = f64(x)
    xhat = (X - X.mean((0, 2, 3), keepdims=True)) / np.sqrt(X.var((0, 2, 3), keepdims=True) + 1e-5)
    y64 = xhat * gamma[:, None, None] + beta[:, None, None]
    u = 2.0 ** -8 if dtype == BF16 else 2.0 ** -11
    assert np.all(np.abs(f64(y) - y64) <= u * np.abs(y64) + 1e-4 * (np.abs(gamma[:, None, None]) + 1))



def _assert_batchnorm_kernel_rounds_once(backend, x, dy, y, dx, dgamma, dbeta, cache, gamma, beta, c32, dg32, db32,
                                         dx32, rm32, rm, dtype):
    """Kernel path against the float32 reference, with bounds derived from the reduction length n
    and float32's unit roundoff u: a sum of n terms in any order is within n*u*sum|terms| of exact."""
    u32, n = 2.0 ** -24, x.size // x.shape[1]
    per = (lambda v: f64(v)[None, :, None, None])
    xhat32 = backend.asnumpy(bn_mod.normalized(cache))
    xhat, inv = f64(xhat32), f64(backend.asnumpy(cache.inv_std))
    # one rounding of y from the kernel's own float32 xhat, bit for bit
    want = (xhat32 * gamma[None, :, None, None] + beta[None, :, None, None]).astype(dtype)
    assert_bits(np.ascontiguousarray(y), want)
    # the mean: n*u of sum|x|/n; inv_std: from a variance within (n + 3)*u of itself and the mean's
    # error squared; xhat follows from both (first order, plus its own two roundings)
    X = f64(x)
    d_mean = 2 * n * u32 * np.abs(X).mean((0, 2, 3))
    mean32 = X.mean((0, 2, 3))
    var = ((X - per(mean32)) ** 2).mean((0, 2, 3))
    d_inv = inv * ((n + 3) * u32 + d_mean ** 2 / (var + 1e-5)) + 2 * u32 * inv
    assert np.all(np.abs(inv - f64(c32.inv_std)) <= 2 * d_inv)
    assert np.all(np.abs(f64(rm) - f64(rm32)) <= 0.1 * 2 * d_mean + 4 * u32 * np.abs(f64(rm32)))
    bound = per(d_mean * inv) + np.abs(xhat) * per(2 * d_inv / inv + 2 * u32)
    assert np.all(np.abs(xhat - f64(bn_mod.normalized(c32))) <= bound)
    # dgamma, dbeta: n*u of their terms (the kernel's xhat and the reference's differ by `bound`)
    d_dg = n * u32 * (np.abs(f64(dy)) * np.abs(xhat)).sum((0, 2, 3)) + (np.abs(f64(dy)) * bound).sum((0, 2, 3))
    d_db = n * u32 * np.abs(f64(dy)).sum((0, 2, 3))
    assert np.all(np.abs(f64(dgamma) - f64(dg32)) <= d_dg)
    assert np.all(np.abs(f64(dbeta) - f64(db32)) <= d_db)
    # dx = gamma*inv_std*(dy - dbeta/n - xhat*dgamma/n), rounded once to the storage dtype: within
    # the propagated sum errors plus one unit in the last place of the storage dtype
    scale = np.abs(per(gamma)) * per(inv)
    d_dx = scale * (per(d_db / n) + np.abs(xhat) * per(d_dg / n) + bound * per(np.abs(f64(dg32)) / n)) \
        + 8 * u32 * scale * (np.abs(f64(dy)) + 1)
    ulp = 2.0 ** -7 if dtype == BF16 else 2.0 ** -10
    assert np.all(np.abs(f64(dx) - f64(dx32)) <= 2 * d_dx + ulp * np.abs(f64(dx32)))

@LOW
def test_loss_is_float32_and_dlogits_are_rounded_once(backend, dtype):
    rng = np.random.default_rng(8)
    logits = rand(rng, (7, 5), dtype, 3.0)
    labels = rng.integers(0, 5, 7)
    loss, d = softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels), 0.1)
    loss, d = backend.asnumpy(loss), backend.asnumpy(d)
    assert loss.dtype == np.float32 and loss.shape == () and d.dtype == dtype
    loss32, d32 = loss_mod._softmax_cross_entropy_reference(logits.astype(np.float32), labels, 0.1)
    assert_bits(loss, loss32)
    assert_bits(d, d32.astype(dtype))


# ----------------------------------------------------------------------------- dtype errors
def test_mixed_dtypes_are_a_type_error_naming_both():
    import gpuconv
    x = np.ones((1, 2, 4, 4), BF16)
    with pytest.raises(gpuconv.DtypeMismatchError):
        conv2d_forward(x, np.ones((3, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match=r"w has dtype float32 but x has dtype bfloat16: an op runs in one precision, "
                                        r"so cast one of them, e.g. w.astype\(x.dtype\)"):
        conv2d_forward(x, np.ones((3, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match=r"dy has dtype float16 but x has dtype bfloat16"):
        relu_backward(np.ones(4, F16), relu_forward(np.ones(4, BF16))[1])
    with pytest.raises(TypeError, match=r"x has dtype int32, but ops take float64, float32, bfloat16 "
                                        r"\(ml_dtypes.bfloat16\) or float16 arrays.*x.astype\(np.float32\)"):
        relu_forward(np.ones(4, np.int32))
    g = np.ones(2, BF16)
    with pytest.raises(TypeError, match=r"gamma has dtype bfloat16 but x has dtype bfloat16: batch norm keeps gamma, "
                                        r"beta and the running statistics in its compute dtype, so gamma must be "
                                        r"float32 for a bfloat16 x: pass gamma.astype\(np.float32\)"):
        batchnorm2d_forward(x, g, np.zeros(2, np.float32), None, None)
    _, cache = dropout_forward(np.ones(4, BF16), 0.5, key=1)
    for dt in (np.float64, F16):  # float16 computes in float32 as bfloat16 does, but dx would come back float16
        with pytest.raises(TypeError, match=rf"dy has dtype {np.dtype(dt)} but the forward's output had dtype "
                                            r"bfloat16: a backward runs in its forward's precision"):
            dropout_backward(np.ones(4, dt), cache)
    dropout_backward(np.ones(4, BF16), cache)


# ----------------------------------------------------------------------------- the kernels' builds and variants
def test_every_kernel_family_ran_in_the_low_precision_build_under_sim(monkeypatch):
    """One pass over every op with kernels, in bfloat16 on the simulator: every launch in the log
    (conv, pooling, ReLU, GELU, dropout, augment) ran the bfloat16 build."""
    import gpuconv
    from gpuconv.data._launch_augment import augment_batch_kernel
    rng = np.random.default_rng(9)
    with gpuconv.default_device("sim"), kernels.launch_log() as log:
        x = rand(rng, (2, 3, 8, 8), BF16)
        y, c1 = conv2d_forward(x, rand(rng, (4, 3, 3, 3), BF16), rand(rng, 4, BF16), 1, 1)
        r, c2 = relu_forward(y)
        ge, c6 = gelu_forward(r)
        gelu_backward(np.ones_like(ge), c6)
        m, c3 = max_pool2d_forward(r, 2)
        a, c4 = avg_pool2d_forward(m, 2)
        d, c5 = dropout_forward(a, 0.5, key=3)
        g = dropout_backward(np.ones_like(d), c5)
        g = max_pool2d_backward(avg_pool2d_backward(g, c4), c3)
        conv2d_backward(relu_backward(g, c2), c1)
        augment_batch_kernel(rng.integers(0, 256, (3, 3, 4, 4), dtype=np.uint8), np.array([0, 2]), None, None,
                             None, np.zeros(3, np.float32), np.ones(3, np.float32), 0, BF16, target="sim")
    families = {n.rsplit("_v", 1)[0].removesuffix("_tc").removesuffix("_pairs").removesuffix("_disjoint") for n in log.names}
    assert families >= {"conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight", "conv2d_backward_bias",
                        "relu_forward", "relu_backward", "gelu_forward", "gelu_backward", "max_pool2d_forward", "max_pool2d_backward",
                        "avg_pool2d_forward", "avg_pool2d_backward", "dropout_forward", "dropout_backward",
                        "augment_batch"}, families
    assert {rec.build for rec in log} == {"bfloat16"} and not kernels.fallbacks(log)


def test_variants_are_chosen_per_dtype(monkeypatch, launches):
    assert kernels.variant("conv2d_forward", BF16) == "auto" and kernels.variant("conv2d_forward", np.float32) == "auto"
    fam = kernels.VARIANTS["conv2d_forward"]
    monkeypatch.setitem(kernels.VARIANTS, "conv2d_forward", fam._replace(defaults={"*": "v2", "bfloat16": "v1"}))
    rng = np.random.default_rng(10)
    for dtype in (BF16, np.float32):
        LC.conv2d_forward_kernel(rand(rng, (1, 2, 5, 5), dtype), rand(rng, (3, 2, 3, 3), dtype), None, (1, 1),
                                 (0, 0), target="sim")
    assert launches.names == ["conv2d_forward_v1", "conv2d_forward_v2"]
    # A choice for one dtype beats a general one; choices beat the defaults.
    with kernels.use_variant(conv2d_forward="v3"), kernels.use_variant(F16, conv2d_forward="v1"):
        assert [kernels.variant("conv2d_forward", d) for d in (BF16, F16, np.float32)] == ["v3", "v1", "v3"]
    kernels.set_variant("conv2d_forward", "v3", dtype=np.float32)
    assert kernels.variant("conv2d_forward", np.float32) == "v3" and kernels.variant("conv2d_forward", BF16) == "v1"
    kernels.set_variant("conv2d_forward", None, dtype=np.float32)
    assert kernels.variant("conv2d_forward", np.float32) == "v2"  # the patched defaults above
    monkeypatch.setenv("GPUCONV_KERNEL_VARIANTS", "conv2d_forward[bfloat16]=v3, relu_forward=v1")
    assert kernels._env_variants() == {"conv2d_forward[bfloat16]": "v3", "relu_forward": "v1"}
    monkeypatch.setenv("GPUCONV_KERNEL_VARIANTS", "conv2d_forward[int8]=v1")
    with pytest.raises(ValueError, match=r"conv2d_forward\[int8\]=v1.*kernel dtype int8 is not supported"):
        kernels._env_variants()


# ----------------------------------------------------------------------------- the tolerance can fail
def test_the_derived_bound_rejects_wrong_arithmetic():
    """reduction_tolerance passes the rule's result and rejects (a) accumulating in bfloat16,
    (b) an error of three units in the last place in one output and (c), held to the exact value
    (``reference_rounded=False``), a cast to bfloat16 that truncates, whose error of up to one unit
    in the last place the two-sided bound admits."""
    rng = np.random.default_rng(11)
    k = 576  # 64 channels x 3x3
    a, b = rand(rng, (64, k), BF16), rand(rng, (k, 32), BF16)
    A, Bm = f64(a), f64(b)
    exact, mag = A @ Bm, abs(A) @ abs(Bm)
    rule = (a.astype(np.float32) @ b.astype(np.float32)).astype(BF16)
    tol = reduction_tolerance(mag, exact, k, BF16)
    assert within_tolerance(f64(rule), exact, tol)[0]
    acc = np.zeros((64, 32), BF16)  # (a): the running sum kept in bfloat16
    for i in range(k):
        acc = (acc.astype(np.float32) + (A[:, i:i + 1] * Bm[i:i + 1, :]).astype(np.float32)).astype(BF16)
    assert not within_tolerance(f64(acc), exact, tol)[0]
    off = f64(rule).copy()  # (b): where the bound is loosest relative to the spacing, the largest output
    i = np.unravel_index(np.argmax(np.abs(off)), off.shape)
    off[i] += 3 * 2.0 ** (np.floor(np.log2(abs(off[i]))) - 7)  # bfloat16 keeps 7 explicit mantissa bits
    assert not within_tolerance(off, exact, tol)[0]
    one_sided = reduction_tolerance(mag, exact, k, BF16, reference_rounded=False)
    assert within_tolerance(f64(rule), exact, one_sided)[0]
    s = (a.astype(np.float32) @ b.astype(np.float32)).view(np.uint32)  # (c): the low 16 bits dropped
    truncated = (s & np.uint32(0xFFFF0000)).view(np.float32).astype(BF16)
    assert within_tolerance(f64(truncated), exact, tol)[0] and not within_tolerance(f64(truncated), exact, one_sided)[0]
