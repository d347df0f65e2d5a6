"""Adaptive pooling to any output size: PyTorch's windows, gradients, the kernels, layouts, errors."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuconv
from gpuconv import nn, ops
from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.ops.adaptive_pool2d import (AdaptivePool2dCache, _avg_backward_reference, _avg_forward_reference,
                                         _max_backward_reference, _max_forward_reference)
from gpuconv.ops.pool2d import AvgPool2dCache, MaxPool2dCache

# (input H, W) -> (OH, OW) that do not divide: windows of different sizes, overlapping ones too
SIZES = [((5, 7), (3, 4)), ((1, 1), (7, 7)), ((6, 6), (4, 4)), ((9, 5), (2, 3)), ((3, 8), (3, 3)), ((4, 4), (3, 5))]


def direct(x, out, kind):
    """PyTorch's definition in float64, one window at a time: rows floor(i*H/OH) .. ceil((i+1)*H/OH)."""
    n, c, h, w = x.shape
    y = np.empty((n, c) + out)
    for i in range(out[0]):
        for j in range(out[1]):
            win = x[:, :, i * h // out[0]:math.ceil((i + 1) * h / out[0]),
                    j * w // out[1]:math.ceil((j + 1) * w / out[1])].astype(np.float64)
            y[:, :, i, j] = win.mean(axis=(2, 3)) if kind == "avg" else win.max(axis=(2, 3))
    return y


def bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def fwd(kind):
    return getattr(ops, f"adaptive_{kind}_pool2d_forward")


def bwd(kind):
    return getattr(ops, f"adaptive_{kind}_pool2d_backward")


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("hw, out", SIZES)
def test_matches_pytorchs_definition(backend, kind, hw, out):
    x = np.random.default_rng(0).standard_normal((2, 3) + hw).astype(np.float32)
    y, cache = fwd(kind)(backend.asarray(x), out)
    assert isinstance(cache, AdaptivePool2dCache) and y.shape == (2, 3) + out and y.dtype == np.float32
    np.testing.assert_allclose(backend.asnumpy(y), direct(x, out, kind), rtol=1e-6, atol=1e-7)
    backend.assert_kernels_ran(f"adaptive_{kind}_pool2d_forward")


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("hw, out", SIZES[:4])
def test_gradients_float64(backend, kind, hw, out):
    x = backend.asarray(np.random.default_rng(1).permutation(2 * 2 * hw[0] * hw[1]).reshape((2, 2) + hw) * 0.1)
    y, cache = fwd(kind)(x, out)
    dy = backend.asarray(np.random.default_rng(2).standard_normal(y.shape))
    num = numerical_gradient_array(lambda a: fwd(kind)(a, out)[0], x, dy)  # distinct values: no ties
    assert relative_error(bwd(kind)(dy, cache), num) < 1e-8


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hw=st.tuples(st.integers(1, 9), st.integers(1, 9)), out=st.tuples(st.integers(1, 9), st.integers(1, 9)),
       seed=st.integers(0, 2**16))
def test_properties_over_input_and_output_sizes(backend, hw, out, seed):
    """Any input and output sizes, in float64: the output size is the one asked for; the max is the
    definition's bit for bit and routes each dy to one input; the average is linear, its gradient
    its adjoint (<avg(x), g> = <x, dX(g)>), and sum(dx) == sum(dy) (each window's dy spread over it)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.standard_normal((2, 2, 3) + hw)
    ym, cm = fwd("max")(backend.asarray(x1), out)
    assert ym.shape == (2, 3) + out
    assert backend.asnumpy(ym).tobytes() == direct(x1, out, "max").tobytes()
    g = rng.standard_normal(ym.shape)
    dxm = backend.asnumpy(bwd("max")(backend.asarray(g), cm))
    assert dxm.sum() == pytest.approx(g.sum(), rel=1e-12, abs=1e-12)
    y1, ca = fwd("avg")(backend.asarray(x1), out)
    y2, _ = fwd("avg")(backend.asarray(x2), out)
    y12, _ = fwd("avg")(backend.asarray(3.0 * x1 - x2), out)
    y1, y2 = backend.asnumpy(y1), backend.asnumpy(y2)
    assert y1.shape == (2, 3) + out
    np.testing.assert_allclose(backend.asnumpy(y12), 3.0 * y1 - y2, rtol=1e-12, atol=1e-12)
    dx = backend.asnumpy(bwd("avg")(backend.asarray(g), ca))
    assert float(np.sum(y1 * g)) == pytest.approx(float(np.sum(x1 * dx)), rel=1e-12, abs=1e-12)
    assert dx.sum() == pytest.approx(g.sum(), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16, np.float16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_kernels_give_the_references_bits(backend, dtype, channels_last, kind):
    """Same bits as the references, in every dtype and layout, with ties, signed zeros, inf and NaN
    in x and dy; the results keep x's layout."""
    if backend.name == "numpy":
        pytest.skip("the kernels run on 'sim' and 'cupy'")
    rng = np.random.default_rng(3)
    x = rng.integers(-3, 4, (2, 8, 7, 5)).astype(np.float32)  # small integers: many ties
    x[0, 1, 2, :4] = [np.nan, -0.0, 0.0, np.inf]
    x[1, 2, 3, 1], x[1, 3, :, :] = np.nan, -0.0
    x = x.astype(dtype)
    xd = backend.asarray(x)
    if channels_last:
        xd = gpuconv.to_channels_last(xd)
    y, cache = fwd(kind)(xd, (3, 4))
    ref = {"avg": _avg_forward_reference, "max": _max_forward_reference}[kind]
    want_y, want_cache = ref(x, (3, 4))
    assert gpuconv.is_channels_last(y) == channels_last
    np.testing.assert_array_equal(bits(backend.asnumpy(y)), bits(want_y))
    if kind == "max":
        np.testing.assert_array_equal(backend.asnumpy(cache.argmax), want_cache.argmax)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy[0, 0, 0, :2] = [np.inf, -0.0]
    dyd = backend.asarray(dy)
    dx = bwd(kind)(gpuconv.to_channels_last(dyd) if channels_last else dyd, cache)
    want_dx = {"avg": _avg_backward_reference, "max": _max_backward_reference}[kind](dy, want_cache)
    assert gpuconv.is_channels_last(dx) == channels_last and dx.dtype == dtype
    got, want = backend.asnumpy(dx).astype(np.float64), want_dx.astype(np.float64)
    nan = np.isnan(want)  # a sum's NaN: a NaN, whatever its payload
    assert np.array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(bits(backend.asnumpy(dx)[~nan]), bits(want_dx[~nan]))
    backend.assert_kernels_ran(f"adaptive_{kind}_pool2d_forward", f"adaptive_{kind}_pool2d_backward")


def test_max_switches_are_plane_indices_first_max_first_nan(backend):
    """PyTorch's return_indices: ih * W + iw; ties go to the first in row-major order, a NaN wins."""
    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0] = [[1, 5, 5], [5, 2, np.nan], [0, 7, 7]]
    y, cache = ops.adaptive_max_pool2d_forward(backend.asarray(x), (2, 2))  # windows rows 0-1 / 1-2, cols 0-1 / 1-2
    assert backend.asnumpy(cache.argmax).tolist() == [[[[1, 5], [7, 5]]]]
    out = backend.asnumpy(y)[0, 0]
    assert out[0, 0] == 5 and np.isnan(out[0, 1]) and out[1, 0] == 7 and np.isnan(out[1, 1])
    dx = ops.adaptive_max_pool2d_backward(backend.asarray(np.ones((1, 1, 2, 2), np.float32)), cache)
    assert backend.asnumpy(dx)[0, 0].tolist() == [[0, 1, 0], [0, 0, 2], [0, 1, 0]]  # overlapping windows add


@pytest.mark.parametrize("kind, cache_type", [("avg", AvgPool2dCache), ("max", MaxPool2dCache)])
def test_sizes_that_divide_are_the_fixed_window_ops(backend, kind, cache_type):
    x = backend.asarray(np.random.default_rng(4).standard_normal((2, 3, 8, 6)).astype(np.float32))
    y, cache = fwd(kind)(x, (4, None))  # None: the input's width
    assert isinstance(cache, cache_type) and cache.kernel_size == cache.stride == (2, 1) and y.shape == (2, 3, 4, 6)
    np.testing.assert_allclose(backend.asnumpy(y), direct(backend.asnumpy(x), (4, 6), kind), rtol=1e-6)
    assert bwd(kind)(backend.asarray(np.ones(y.shape, np.float32)), cache).shape == x.shape


@pytest.mark.parametrize("layer, kind", [(nn.AdaptiveAvgPool2d, "avg"), (nn.AdaptiveMaxPool2d, "max")])
def test_layers_take_any_output_size(backend, layer, kind):
    """A torchvision VGG's head on CIFAR's 1x1 feature map (7x7 from 1x1), and 3 from 5."""
    rng = np.random.default_rng(5)
    for hw, size in (((1, 1), 7), ((5, 5), (3, None))):
        x = rng.standard_normal((2, 4) + hw).astype(np.float32)
        m = layer(size)
        y = m(backend.asarray(x))
        out = (7, 7) if size == 7 else (3, 5)
        np.testing.assert_allclose(backend.asnumpy(y), direct(x, out, kind), rtol=1e-6, atol=1e-7)
        assert m.backward(backend.asarray(np.ones(y.shape, np.float32))).shape == x.shape


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_sizes_past_the_kernels_32_bit_bounds_run_the_reference(kind, launches):
    """The kernels compute window bounds in 32 bits, (in + 1) * (out + 1) <= 2^32: 70001 rows pooled
    to 70000 (overlapping windows of two) are past that, and the launcher declines them; the
    reference's values come back."""
    x = np.random.default_rng(6).standard_normal((1, 1, 70001, 1)).astype(np.float32)
    lo, hi = x[..., :-1, :], x[..., 1:, :]
    want = np.maximum(lo, hi) if kind == "max" else (lo + hi) * np.float32(0.5)
    with gpuconv.default_device("sim"):
        y, cache = fwd(kind)(x, (70000, 1))
        dx = bwd(kind)(np.ones(y.shape, np.float32), cache)
    np.testing.assert_allclose(y, want, rtol=1e-6)
    assert dx.shape == x.shape and dx.sum() == 70000
    assert [e for e in launches.names if e.startswith("adaptive")] == []


def test_errors(backend):
    x = backend.asarray(np.ones((1, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match="output_size must hold integers >= 1"):
        ops.adaptive_avg_pool2d_forward(x, (0, 3))
    with pytest.raises(ValueError, match="output_size must be an int or an \\(h, w\\) pair"):
        ops.adaptive_max_pool2d_forward(x, (1, 2, 3))
    with pytest.raises(ValueError, match=r"output would be 2147483648 along the height, past 2\*\*31 - 1"):
        ops.adaptive_avg_pool2d_forward(x, 2**31)
    with pytest.raises(ValueError, match="needs H and W >= 1"):
        ops.adaptive_avg_pool2d_forward(backend.asarray(np.ones((1, 2, 0, 5), np.float32)), 3)
    y, cache = ops.adaptive_avg_pool2d_forward(x, 3)
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(1, 2, 3, 3\)"):
        ops.adaptive_avg_pool2d_backward(backend.asarray(np.ones((1, 2, 3, 2), np.float32)), cache)
    with pytest.raises(TypeError, match="dy has dtype float64 but the forward's output had dtype float32"):
        ops.adaptive_avg_pool2d_backward(backend.asarray(np.ones((1, 2, 3, 3))), cache)
    with pytest.raises(TypeError, match="pass it to adaptive_avg_pool2d_backward"):
        ops.adaptive_max_pool2d_backward(backend.asarray(np.ones((1, 2, 3, 3), np.float32)), cache)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize("shape, out", [((2, 3, 9, 5), (2, 3)), ((2, 2, 7, 10), (3, 4)), ((1, 1, 12, 14), (2, 2))])
def test_avg_reference_adds_each_windows_taps_in_row_major_order(dtype, shape, out):
    """The NumPy average of uneven windows (each window's taps reduced at once) has the bits of
    the definition the kernels follow: float32 (float64) sums onto +0.0, tap by tap in row-major
    order, times the rounded reciprocal; an all -0.0 window averages to +0.0."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape)
    x[0, 0, :-(-shape[2] // out[0]), :-(-shape[3] // out[1])] = -0.0  # the first window
    if shape[1] > 1:
        x[-1, 1, 1, :3] = [np.nan, np.inf, -0.0]
    x = x.astype(dtype)
    xc = x.astype(np.float64 if x.dtype == np.float64 else np.float32)
    want = np.empty(shape[:2] + out, xc.dtype)
    h, w = shape[2:]
    for i in range(out[0]):
        for j in range(out[1]):
            rows = range(i * h // out[0], -(-(i + 1) * h // out[0]))
            cols = range(j * w // out[1], -(-(j + 1) * w // out[1]))
            s = np.zeros(shape[:2], xc.dtype)
            for ih in rows:
                for iw in cols:
                    s += xc[:, :, ih, iw]
            want[:, :, i, j] = s * xc.dtype.type(1.0 / (len(rows) * len(cols)))
    want = want.astype(dtype)
    for xs in (x, gpuconv.to_channels_last(x)):
        y = _avg_forward_reference(xs, out)[0]
        assert y.dtype == want.dtype and bits(y).tobytes() == bits(want).tobytes()
    assert not np.signbit(y[0, 0, 0, 0])
