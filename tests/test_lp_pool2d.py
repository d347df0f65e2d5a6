"""LP (power-average) pooling: PyTorch's lp_pool2d semantics, gradients, the kernels, errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuconv import nn
from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.ops import lp_pool2d_backward, lp_pool2d_forward
from gpuconv.precision import bfloat16


def direct(x, p, k, s):
    """The definition, one window at a time, in float64."""
    n, c, h, w = x.shape
    oh, ow = (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1
    y = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1]].astype(np.float64)
            y[:, :, i, j] = (win ** p).sum(axis=(2, 3)) ** (1.0 / p)
    return y


@pytest.mark.parametrize("p, shape, k, s", [(2, (2, 3, 6, 6), (2, 2), (2, 2)), (2, (1, 2, 7, 7), (3, 3), (2, 2)),
                                            (1, (2, 1, 5, 6), (2, 3), (1, 3)), (3.5, (1, 2, 6, 6), (3, 3), (3, 3))])
def test_matches_the_definition_in_float32(backend, p, shape, k, s):
    x = np.abs(np.random.default_rng(0).standard_normal(shape)).astype(np.float32) + 0.1
    y, cache = lp_pool2d_forward(backend.asarray(x), p, k, s)
    assert y.dtype == np.float32
    np.testing.assert_allclose(backend.asnumpy(y), direct(x, p, k, s), rtol=2e-6 * k[0] * k[1])
    dx = lp_pool2d_backward(backend.asarray(np.ones(y.shape, np.float32)), cache)
    assert dx.shape == x.shape
    backend.assert_kernels_ran("lp_pool2d_forward", "lp_pool2d_backward")


@pytest.mark.parametrize("p, k, s", [(2, (2, 3), (2, 2)), (2, (3, 3), (1, 2)), (1, (2, 2), (1, 1)), (3, (2, 3), (2, 1))])
def test_gradients_float64(backend, p, k, s):
    rng = np.random.default_rng(1)
    x = backend.asarray(rng.uniform(0.2, 1.5, (2, 2, 6, 7)) * rng.choice([-1, 1], (2, 2, 6, 7)) if p == 2
                        else rng.uniform(0.2, 1.5, (2, 2, 6, 7)))
    y, cache = lp_pool2d_forward(x, p, k, s)
    dy = backend.asarray(rng.standard_normal(y.shape))
    num = numerical_gradient_array(lambda a: lp_pool2d_forward(a, p, k, s)[0], x, dy)
    assert relative_error(lp_pool2d_backward(dy, cache), num) < 1e-6


@pytest.mark.parametrize("dtype, c", [(np.float32, 4), (np.float64, 2), (bfloat16, 8), (np.float16, 16)])
def test_channels_last_whole_pieces_of_channels(backend, dtype, c):
    """channels_last with the channels in whole 16-byte pieces (where the other pooling kernels
    take their vector form): the same values as the NCHW input's, in the input's layout."""
    import gpuconv
    x = np.random.default_rng(4).uniform(0.1, 2, (2, c, 6, 6)).astype(dtype)
    y0, cache0 = lp_pool2d_forward(backend.asarray(x), 2, 2)
    y1, cache1 = lp_pool2d_forward(gpuconv.to_channels_last(backend.asarray(x)), 2, 2)
    assert gpuconv.is_channels_last(y1)
    np.testing.assert_array_equal(backend.asnumpy(y1), backend.asnumpy(y0))
    dy = np.random.default_rng(5).standard_normal(y0.shape).astype(dtype)
    dx0 = lp_pool2d_backward(backend.asarray(dy), cache0)
    dx1 = lp_pool2d_backward(gpuconv.to_channels_last(backend.asarray(dy)), cache1)
    assert gpuconv.is_channels_last(dx1)
    np.testing.assert_array_equal(backend.asnumpy(dx1), backend.asnumpy(dx0))


def test_l2_of_a_zero_window_is_zero_with_zero_gradient(backend):
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 2:, 2:] = [[3, 4], [0, 0]]  # one window holds (3, 4): norm 5
    y, cache = lp_pool2d_forward(backend.asarray(x), 2, 2)
    np.testing.assert_array_equal(backend.asnumpy(y)[0, 0], [[0, 0], [0, 5]])
    dx = backend.asnumpy(lp_pool2d_backward(backend.asarray(np.ones((1, 1, 2, 2), np.float32)), cache))
    assert np.isfinite(dx).all() and (dx[0, 0, :2] == 0).all() and (dx[0, 0, :, :2] == 0).all()
    np.testing.assert_allclose(dx[0, 0, 2, 2:], [3 / 5, 4 / 5], rtol=1e-6)


@pytest.mark.parametrize("dtype", [bfloat16, np.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("p, k, s", [(2, (2, 2), (2, 2)), (2, (3, 3), (1, 2)), (3, (2, 3), (1, 3))])
def test_low_precision_rounds_a_float32_result_once(backend, dtype, p, k, s):
    """The precision rule, forward and backward: y and dx are float32 results rounded once, held
    to the NumPy reference in the same dtype and (p = 2: squares, sums, a root, a division and
    products, each rounded to nearest) to the float64 value of the same inputs, with the bound of
    gradcheck.reduction_tolerance: a window's KH*KW terms plus the root's rounding (y); the windows
    covering an input plus the roundings of y^(1-p), x^(p-1) and two products (dx)."""
    from gpuconv.gradcheck import reduction_tolerance, within_tolerance
    from gpuconv.ops import lp_pool2d as ref
    rng = np.random.default_rng(2)
    x = rng.uniform(0.1, 2, (2, 3, 8, 9)).astype(dtype)
    y, cache = lp_pool2d_forward(backend.asarray(x), p, k, s, floor=True)
    dy = rng.standard_normal(y.shape).astype(dtype)  # both signs: overlapping windows cancel
    dx = backend.asnumpy(lp_pool2d_backward(backend.asarray(dy), cache))
    y = backend.asnumpy(y)
    assert y.dtype == dx.dtype == dtype
    ref_y, ref_cache = ref._lp_pool2d_forward_reference(x, float(p), k, s)
    ref_dx = ref._lp_pool2d_backward_reference(dy, ref_cache)
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    # the backward's float64 value for these inputs and the forward's rounded y, and its terms' magnitudes
    exact_dx = ref._lp_pool2d_backward_reference(f64(dy), ref._lp_pool2d_forward_reference(f64(x), p, k, s)[1]
                                                  ._replace(y=f64(ref_y)))
    mag_dx = ref._lp_pool2d_backward_reference(np.abs(f64(dy)), ref_cache._replace(x=f64(x), y=f64(ref_y)))
    exact_y = direct(x, p, k, s)
    covering = -(-k[0] // s[0]) * -(-k[1] // s[1])
    checks = [("y", y, ref_y, exact_y, exact_y, k[0] * k[1] + 1), ("dx", dx, ref_dx, exact_dx, mag_dx, covering + 4)]
    for name, got, want, exact, mag, length in checks:
        ok, worst = within_tolerance(got, want, reduction_tolerance(mag, want, length, dtype))
        assert ok, f"{name} against the NumPy reference: worst |diff|/bound = {worst:.3g}"
        if p == 2:
            ok, worst = within_tolerance(got, exact, reduction_tolerance(mag, exact, length, dtype,
                                                                         reference_rounded=False))
            assert ok, f"{name} against float64: worst |diff|/bound = {worst:.3g}"
    backend.assert_kernels_ran("lp_pool2d_forward", "lp_pool2d_backward")


def test_backward_errors(backend):
    y, cache = lp_pool2d_forward(backend.asarray(np.ones((1, 2, 4, 4), np.float32)), 2, 2)
    with pytest.raises(ValueError, match=r"dy must have shape \(1, 2, 2, 2\) \(the shape of the forward's output\), "
                                         r"got \(1, 2, 4, 4\)"):
        lp_pool2d_backward(backend.asarray(np.ones((1, 2, 4, 4), np.float32)), cache)
    with pytest.raises(TypeError, match=r"dy has dtype float64 but the forward's output had dtype float32: .*"
                                        r"pass dy.astype\(float32\)"):
        lp_pool2d_backward(backend.asarray(np.ones((1, 2, 2, 2))), cache)
    with pytest.raises(TypeError, match=r"dy has dtype int32, but ops take"):
        lp_pool2d_backward(backend.asarray(np.ones((1, 2, 2, 2), np.int32)), cache)
    with pytest.raises(TypeError, match="lp_pool2d_forward"):
        lp_pool2d_backward(backend.asarray(np.ones((1, 2, 2, 2), np.float32)), cache.x)


def test_layer_matches_the_op_and_prints_like_pytorch(backend):
    layer = nn.LPPool2d(2, 3, stride=2)
    assert repr(layer) == "LPPool2d(norm_type=2, kernel_size=3, stride=2)"
    x = backend.asarray(np.random.default_rng(3).standard_normal((1, 2, 7, 7)).astype(np.float32))
    y = layer(x)
    np.testing.assert_array_equal(backend.asnumpy(y), backend.asnumpy(lp_pool2d_forward(x, 2, 3, 2)[0]))
    assert layer.backward(backend.asarray(np.ones(y.shape, np.float32))).shape == x.shape


@pytest.mark.parametrize("p, match", [(0.5, "norm_type must be a finite number >= 1"), (float("inf"), ">= 1"),
                                      ("2", "finite number"), (True, "finite number")])
def test_bad_norm(backend, p, match):
    with pytest.raises(ValueError, match=match):
        lp_pool2d_forward(backend.asarray(np.ones((1, 1, 4, 4), np.float32)), p, 2)


@pytest.mark.parametrize("p, shape, k, s", [(2, (2, 3, 5, 7), (2, 2), (2, 2)), (3, (1, 2, 6, 8), (3, 3), (2, 2)),
                                            (1.5, (1, 2, 7, 6), (2, 3), (2, 2))])
def test_floor_takes_pytorchs_rule(backend, p, shape, k, s):
    """floor=True pools the windows that fit, as PyTorch's lp_pool2d (and max/avg pooling's
    floor=True) do: the rows and columns past the last window get a zero gradient."""
    x = np.random.default_rng(6).uniform(0.2, 1.5, shape)
    with pytest.raises(ValueError, match="floor=True"):
        lp_pool2d_forward(backend.asarray(x), p, k, s)
    y, cache = lp_pool2d_forward(backend.asarray(x), p, k, s, floor=True)
    np.testing.assert_allclose(backend.asnumpy(y), direct(x, p, k, s), rtol=1e-12)
    dy = np.random.default_rng(7).standard_normal(y.shape)
    dx = backend.asnumpy(lp_pool2d_backward(backend.asarray(dy), cache))
    backend.assert_kernels_ran("lp_pool2d_forward", "lp_pool2d_backward")
    used_h, used_w = (y.shape[2] - 1) * s[0] + k[0], (y.shape[3] - 1) * s[1] + k[1]
    assert (dx[:, :, used_h:] == 0).all() and (dx[:, :, :, used_w:] == 0).all()
    num = numerical_gradient_array(lambda a: lp_pool2d_forward(a, p, k, s, floor=True)[0], backend.asarray(x),
                                   backend.asarray(dy))
    assert relative_error(dx, backend.asnumpy(num)) < 1e-6
    layer = nn.LPPool2d(p, k, s, floor=True)
    assert repr(layer).endswith("floor=True)")
    np.testing.assert_array_equal(backend.asnumpy(layer(backend.asarray(x))), backend.asnumpy(y))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=st.sampled_from([1, 2, 3, 2.5]), k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       s=st.tuples(st.integers(1, 3), st.integers(1, 3)), extra=st.tuples(st.integers(0, 4), st.integers(0, 4)),
       seed=st.integers(0, 2**16))
def test_properties_over_shapes_norms_and_strides(backend, p, k, s, extra, seed):
    """float64, positive x, floor mode: the output size rule, y = |a| y(x) for x scaled by a > 0,
    and, the norm being homogeneous of degree 1, Euler's identity <y, g> = <x, dX(g)>."""
    rng = np.random.default_rng(seed)
    h, w = k[0] + extra[0], k[1] + extra[1]
    x = rng.uniform(0.1, 2.0, (2, 2, h, w))
    y, cache = lp_pool2d_forward(backend.asarray(x), p, k, s, floor=True)
    assert y.shape == (2, 2, (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1)
    y = backend.asnumpy(y)
    np.testing.assert_allclose(y, direct(x, p, k, s), rtol=1e-12)
    np.testing.assert_allclose(backend.asnumpy(lp_pool2d_forward(backend.asarray(2.5 * x), p, k, s, floor=True)[0]),
                               2.5 * y, rtol=1e-12)
    g = rng.standard_normal(y.shape)
    dx = backend.asnumpy(lp_pool2d_backward(backend.asarray(g), cache))
    assert float(np.sum(y * g)) == pytest.approx(float(np.sum(x * dx)), rel=1e-10, abs=1e-10)
