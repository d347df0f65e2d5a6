"""GELU (exact erf form): values against float64 math, the gradient in float64, the kernels
against the reference in every dtype, channels_last kept, errors."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from gpuconv import layout, nn
from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.ops import gelu_backward, gelu_forward
from gpuconv.precision import unit_roundoff


def _math_gelu(x):
    return np.array([v * 0.5 * math.erfc(-v / math.sqrt(2)) for v in np.ravel(x).astype(float)]).reshape(np.shape(x))


def _math_grad(x):
    return np.array([0.5 * math.erfc(-v / math.sqrt(2)) + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi)
                     for v in np.ravel(x).astype(float)]).reshape(np.shape(x))


def test_hand_values(backend):
    x = np.array([-3.0, -1.0, 0.0, 1.0, 3.0], np.float64)
    y, cache = gelu_forward(backend.asarray(x))
    # x * Phi(x) from the tabulated normal CDF: Phi(1) = 0.8413447460685429, Phi(3) = 0.9986501019683699
    want = [-3 * (1 - 0.9986501019683699), -(1 - 0.8413447460685429), 0.0, 0.8413447460685429, 3 * 0.9986501019683699]
    np.testing.assert_allclose(backend.asnumpy(y), want, rtol=1e-12, atol=1e-15)
    dx = gelu_backward(backend.asarray(np.ones_like(x)), cache)
    np.testing.assert_allclose(backend.asnumpy(dx), _math_grad(x), rtol=1e-12)
    backend.assert_kernels_ran("gelu_forward", "gelu_backward")
    y0, cache0 = gelu_forward(backend.asarray(x[3]))  # a 0-d array stays 0-d
    assert y0.shape == () and gelu_backward(backend.asarray(np.ones(())), cache0).shape == ()
    np.testing.assert_allclose(backend.asnumpy(y0), want[3], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_against_float64_math(backend, dtype):
    """Relative accuracy elementwise, the negative tail included (erfc, not 1 + erf)."""
    x = np.concatenate([np.linspace(-9, 6, 301), [-1e-30, 1e-30, 0.0]]).astype(dtype)
    y, cache = gelu_forward(backend.asarray(x))
    dx = gelu_backward(backend.asarray(np.ones_like(x)), cache)
    u = unit_roundoff(dtype)
    want_y, want_dx = _math_gelu(x), _math_grad(x)
    # The erfc fit (1.2e-7) or erfcf (a few ulp) plus the products: 32 u relative, and x^2/2
    # rounded on the way: erfc(z) and exp(-x^2/2) are conditioned by about x^2, which adds 2 x^2 u.
    tol = u * (32 + 2 * x.astype(np.float64) ** 2)
    # dx = Phi + x phi cancels near x = -0.75: relative to the terms' magnitudes, not to the sum.
    xf = x.astype(np.float64)
    dx_scale = np.abs(_math_gelu(xf) / np.where(xf == 0, 1, xf)) + np.abs(_math_grad(xf) - _math_gelu(xf) / np.where(xf == 0, 1, xf))
    for got, want, scale in ((y, want_y, np.abs(want_y)), (dx, want_dx, dx_scale)):
        rel = np.abs(backend.asnumpy(got) - want) / np.maximum(scale, 1e-300)
        assert np.all((rel <= tol) | (scale < 1e-300)), f"max error / tolerance {np.max(rel / tol)}"
    assert backend.asnumpy(y).dtype == dtype


def test_gradient_float64(backend):
    rng = np.random.default_rng(0)
    x = backend.asarray(2 * rng.standard_normal((2, 3, 4, 5)))
    y, cache = gelu_forward(x)
    dy = backend.asarray(rng.standard_normal(y.shape))
    num = numerical_gradient_array(lambda a: gelu_forward(a)[0], x, dy)
    assert relative_error(gelu_backward(dy, cache), num) < 1e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16, np.float16])
def test_kernel_matches_reference(backend, dtype):
    """Each dtype within its precision rule: bf16/fp16 compute in float32 and round once, so the
    kernel and the reference differ by at most one rounding of the storage type."""
    rng = np.random.default_rng(1)
    x = (3 * rng.standard_normal((2, 3, 5, 7))).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, cache = gelu_forward(backend.asarray(x))
    dx = gelu_backward(backend.asarray(dy), cache)
    assert backend.asnumpy(y).dtype == np.dtype(dtype)
    # Against float64 math on the same (storage) inputs: one rounding to the storage type plus the
    # float32 compute error (a few float32 ulp), relative to each element.
    u = max(unit_roundoff(dtype), 32 * unit_roundoff(np.float32)) if np.dtype(dtype) != np.float64 else 32 * unit_roundoff(dtype)
    xf = x.astype(np.float64)
    want_y = _math_gelu(xf)
    want_dx = dy.astype(np.float64) * _math_grad(xf)
    got_y, got_dx = backend.asnumpy(y).astype(np.float64), backend.asnumpy(dx).astype(np.float64)
    np.testing.assert_allclose(got_y, want_y, rtol=u, atol=u * 1e-3)
    # dx's own rounding, and the gradient factor's float32 rounding, times |dy|
    np.testing.assert_allclose(got_dx, want_dx, rtol=2 * u, atol=2 * u * 1e-3)
    if backend.name != "numpy":
        backend.assert_kernels_ran("gelu_forward", "gelu_backward")


def test_layer_keeps_channels_last(backend):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    xc = layout.to_channels_last(backend.asarray(x))
    g = nn.GELU()
    y = g(xc)
    assert layout.is_channels_last(y)
    np.testing.assert_allclose(backend.asnumpy(y), _math_gelu(x), rtol=1e-5, atol=1e-7)
    dx = g.backward(layout.to_channels_last(backend.asarray(np.ones_like(x))))
    assert layout.is_channels_last(dx)
    np.testing.assert_allclose(backend.asnumpy(dx), _math_grad(x), rtol=1e-5, atol=1e-7)


def test_errors(backend):
    with pytest.raises(TypeError, match=r"x has dtype int64.*astype\(np.float32\)"):
        gelu_forward(backend.asarray(np.arange(3)))
    _, cache = gelu_forward(backend.asarray(np.ones((2, 3), np.float32)))
    with pytest.raises(ValueError, match=r"dy must have the forward input's shape \(2, 3\)"):
        gelu_backward(backend.asarray(np.ones((3, 2), np.float32)), cache)
    with pytest.raises(TypeError, match=r"dy has dtype float64 but x has dtype float32"):
        gelu_backward(backend.asarray(np.ones((2, 3))), cache)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["f32", "bf16"])
def test_the_numpy_backward_reuses_the_forwards_cdf(monkeypatch, dtype):
    """The NumPy path keeps Phi(x) from the forward (GELU's own cache and batch norm's fused GELU):
    the backward computes no erfc, and gives the bits of recomputing it."""
    from gpuconv.ops import batchnorm, batchnorm2d_backward, batchnorm2d_forward
    from gpuconv.ops import gelu as G
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 3, 4, 5)) * 3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, cache = gelu_forward(x)
    g, b = np.ones(3, np.float32), np.full(3, 0.1, np.float32)
    _, bn_cache = batchnorm2d_forward(x, g, b, None, None, activation="gelu")
    calls = []
    real = G.erfc
    monkeypatch.setattr(G, "erfc", lambda z: calls.append(z.size) or real(z))
    dx = gelu_backward(dy, cache)
    bn_dx = batchnorm2d_backward(dy, bn_cache)
    assert calls == [] and cache.cdf is not None and bn_cache.cdf is not None
    assert dx.tobytes() == gelu_backward(dy, cache._replace(cdf=None)).tobytes() and calls == [x.size]
    again = batchnorm2d_backward(dy, bn_cache._replace(cdf=None))
    assert all(a.tobytes() == c.tobytes() for a, c in zip(bn_dx, again)) and calls == [x.size] * 2
    assert batchnorm.BatchNorm2dCache(*bn_cache[:7]).cdf is None  # the kernels' caches: recomputed


def test_dx_takes_dys_layout(backend):
    """An elementwise backward returns dx in dy's layout (as ReLU's does), whatever x's, on every
    backend: x channels_last with dy NCHW gives an NCHW dx."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    for x_cl, dy_cl in np.ndindex(2, 2):
        xa = layout.to_channels_last(backend.asarray(x)) if x_cl else backend.asarray(x)
        y, cache = gelu_forward(xa)
        dy = backend.asarray(np.ones_like(x))
        dx = gelu_backward(layout.to_channels_last(dy) if dy_cl else dy, cache)
        assert layout.is_channels_last(dx) == bool(dy_cl), (x_cl, dy_cl)
        np.testing.assert_allclose(backend.asnumpy(dx), _math_grad(x.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_the_float32_erfc_in_chunks_gives_the_bits_of_one_pass(monkeypatch):
    """The NumPy fit runs a large array a chunk at a time (for the cache): the same bits as one
    pass over the whole array, in every chunk, a short last one, NaN, infinities and -0.0 included."""
    from gpuconv.ops import gelu as G
    monkeypatch.setattr(G, "_ERFC_CHUNK", 64)
    z = (np.random.default_rng(5).standard_normal((3, 5, 7, 11)) * 4).astype(np.float32)
    z.reshape(-1)[[0, 70, 200, 1154]] = [np.nan, np.inf, -np.inf, -0.0]
    chunked = G.erfc(z)
    monkeypatch.setattr(G, "_ERFC_CHUNK", z.size)
    whole = G.erfc(z)
    assert chunked.shape == z.shape and chunked.tobytes() == whole.tobytes()
    noncontiguous = G.erfc(z.transpose(0, 2, 3, 1))  # a strided array: one pass, the same values
    assert noncontiguous.transpose(0, 3, 1, 2).tobytes() == whole.tobytes()


def _erfc_fit_masked(z):
    """The float32 fit with its last step as the masked subtract it was first written with: the
    reference for the bitwise select that replaced it."""
    from gpuconv.ops import gelu as G
    shape, z = z.shape, z.reshape(-1)  # (a 0-d array's operations would give scalars)
    f = z.dtype.type
    a = np.absolute(z)
    t = np.reciprocal(a * f(0.5) + f(1))
    r = t * f(G._ERFC_COEFFS[-1]) + f(G._ERFC_COEFFS[-2])
    for c in G._ERFC_COEFFS[-3::-1]:
        r *= t
        r += f(c)
    r -= a * a
    r = t * np.exp(r)
    np.subtract(f(2), r, out=r, where=z < 0)
    return r.reshape(shape)


@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 5, 7, 11), (2, 3, 31, 31)])
def test_the_float32_erfc_selects_the_negative_tail_as_a_masked_subtract(shape):
    """erfc(-|z|) = 2 - erfc(|z|) for z < 0 is taken by a bitwise select: the bits of the masked
    subtract, on both signs, +-0.0, infinities, NaN, tiny and huge values, a strided input."""
    from gpuconv.ops import gelu as G
    rng = np.random.default_rng(11)
    z = np.asarray((rng.standard_normal(shape) * 4).astype(np.float32))
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-30, -1e-30, 12.0, -12.0, 3e38, -3e38],
                       np.float32)
    if z.size >= special.size:
        z.reshape(-1)[:special.size] = special
    with np.errstate(over="ignore", invalid="ignore"):
        got, want = G.erfc(z), _erfc_fit_masked(z)
        assert got.dtype == np.float32 and got.shape == z.shape
        assert got.tobytes() == want.tobytes()
        if z.ndim == 4:  # the strided path (one pass, no chunks)
            strided = G.erfc(z.transpose(0, 2, 3, 1))
            assert strided.transpose(0, 3, 1, 2).tobytes() == want.tobytes()
    if z.size > 1:
        assert (got[z < -0.1] > 1).all() and (got[z > 0.1] < 1).all()  # both branches were taken
