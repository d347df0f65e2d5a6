"""ReLU: exact values, the gradient mask (0 at the kink), gradients, errors."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.ops import relu_backward, relu_forward

HYPO = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_hand_values(backend):
    x = np.array([[-2.0, -0.0, 0.0, 0.5, 3.0]], np.float32)
    y, cache = relu_forward(backend.asarray(x))
    np.testing.assert_array_equal(backend.asnumpy(y), [[0, 0, 0, 0.5, 3]])
    dx = relu_backward(backend.asarray(np.array([[1, 2, 3, 4, 5]], np.float32)), cache)
    np.testing.assert_array_equal(backend.asnumpy(dx), [[0, 0, 0, 4, 5]])  # 0 at the kink, as PyTorch
    backend.assert_kernels_ran("relu_forward", "relu_backward")


@HYPO
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=4, max_side=5),  # 0-d too
                    elements=st.floats(-1e6, 1e6, width=32)))
def test_bit_exact_against_numpy(backend, x):
    y, cache = relu_forward(backend.asarray(x))
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_array_equal(backend.asnumpy(y), np.maximum(x, 0))
    dy = np.ones_like(x)
    dx = relu_backward(backend.asarray(dy), cache)
    np.testing.assert_array_equal(backend.asnumpy(dx), (x > 0).astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, ml_dtypes.bfloat16, np.float16])
def test_inactive_units_pass_a_positive_zero_whatever_dy(backend, dtype):
    """dy where x > 0, else +0, for a negative, infinite or NaN dy too (PyTorch's and the kernels'
    answer; a product with the mask gives -0 and NaN there)."""
    x = np.array([-1, 0, -3, -2, 2, 1], dtype)
    dy = np.array([-5, np.nan, np.inf, -np.inf, -7, np.inf], dtype)
    _, cache = relu_forward(backend.asarray(x))
    dx = backend.asnumpy(relu_backward(backend.asarray(dy), cache))
    assert dx.dtype == dtype
    assert dx.tobytes() == np.array([0, 0, 0, 0, -7, np.inf], dtype).tobytes()
    # dx in dy's layout (x channels_last, dy not), as the kernels give it
    import gpuconv
    x4 = gpuconv.to_channels_last(np.arange(-8, 8, dtype=np.float32).reshape(1, 2, 2, 4))
    _, cache = relu_forward(backend.asarray(x4))
    dx4 = backend.asnumpy(relu_backward(backend.asarray(np.ones((1, 2, 2, 4), np.float32)), cache))
    assert dx4.flags.c_contiguous and (dx4 == (backend.asnumpy(x4) > 0)).all()


def test_gradient_float64(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink, where central differences straddle it
    x = backend.asarray(x)
    y, cache = relu_forward(x)
    dy = backend.asarray(rng.standard_normal(y.shape))
    num = numerical_gradient_array(lambda a: relu_forward(a)[0], x, dy)
    assert relative_error(relu_backward(dy, cache), num) < 1e-6


def test_errors(backend):
    with pytest.raises(TypeError, match=r"x has dtype int64.*astype\(np.float32\)"):
        relu_forward(backend.asarray(np.arange(3)))
    with pytest.raises(TypeError, match=r"x must be a numpy or cupy array, got list"):
        relu_forward([1.0, -1.0])
    _, cache = relu_forward(backend.asarray(np.ones((2, 3), np.float32)))
    with pytest.raises(ValueError, match=r"dy must have the forward input's shape \(2, 3\)"):
        relu_backward(backend.asarray(np.ones((3, 2), np.float32)), cache)
    with pytest.raises(TypeError, match=r"dy has dtype float64 but x has dtype float32"):
        relu_backward(backend.asarray(np.ones((2, 3))), cache)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_few_values_select_the_same_bits_as_the_mask(monkeypatch, dtype):
    """A small dy (a gradient check's layer) is answered by one select, a large one by the mask of
    all ones or zeros: the same bits either way, specials included (dy's own NaN, inf and -0 where
    x > 0; +0 elsewhere, x a NaN included)."""
    from gpuconv.ops import relu as relu_mod
    vals = np.array([0.0, -0.0, 1.5, -2.5, np.inf, -np.inf, np.nan, -np.nan, np.finfo(dtype).smallest_subnormal],
                    dtype)
    x, dy = np.repeat(vals, vals.size).reshape(vals.size, -1), np.tile(vals, vals.size).reshape(vals.size, -1)
    cache = relu_mod.ReluCache(x)
    small = relu_mod._relu_backward_reference(dy, cache)
    monkeypatch.setattr(relu_mod, "_SMALL", -1)
    masked = relu_mod._relu_backward_reference(dy, cache)
    assert small.dtype == masked.dtype == dtype and small.flags.c_contiguous
    assert small.tobytes() == masked.tobytes()
    assert np.signbit(small[~(x > 0)]).sum() == 0 and np.array_equal(small[x > 0], dy[x > 0], equal_nan=True)
