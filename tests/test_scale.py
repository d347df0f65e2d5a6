"""The constant scaling (gpuconv.ops.scale_forward, layers.Scale): the precision rule in every
dtype on every backend (the kernel's bits are the reference's), channels_last kept, errors."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from gpuconv import layout
from gpuconv.ops import ScaleCache, scale_backward, scale_forward

DTYPES = [np.float32, np.float64, ml_dtypes.bfloat16, np.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("factor", [1 / 9, 0.125, -3.7, 0.0])
def test_product_in_the_compute_dtype_rounded_once(backend, dtype, factor):
    """y = round(upcast(x) * compute(factor)): for bfloat16/float16 the factor stays a float32
    (NumPy's own bfloat16 * float rounds it to bfloat16, which differs for 1/9); the same bits on
    every backend; the backward is the same product."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(1000) * 50).astype(dtype)
    x[:3] = [np.inf, -0.0, 1e-40 if dtype in (np.float32, np.float64) else 0.0]
    acc = np.float64 if dtype == np.float64 else np.float32
    with np.errstate(invalid="ignore"):
        want = (x.astype(acc) * acc(factor)).astype(dtype)
        y, cache = scale_forward(backend.asarray(x), factor)
        dx = scale_backward(backend.asarray(x), cache)
    assert y.dtype == dtype and cache == ScaleCache(float(factor), np.dtype(dtype), (1000,))
    assert backend.asnumpy(y).tobytes() == want.tobytes() and backend.asnumpy(dx).tobytes() == want.tobytes()
    backend.assert_kernels_ran("scale_forward")


def test_the_factor_is_not_rounded_to_bfloat16():
    x = np.full(64, 7.0, ml_dtypes.bfloat16)  # 7 * float32(1/9) and 7 * bfloat16(1/9) round apart
    y = scale_forward(x, 1 / 9)[0]
    assert y.tobytes() == (x.astype(np.float32) * np.float32(1 / 9)).astype(ml_dtypes.bfloat16).tobytes()
    assert y.tobytes() != (x * (1 / 9)).tobytes()


def test_channels_last_stays_channels_last(backend):
    x = layout.to_channels_last(np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5))
    y = scale_forward(backend.asarray(x), 0.5)[0]
    assert layout.is_channels_last(y)
    np.testing.assert_array_equal(backend.asnumpy(y), x * np.float32(0.5))


@pytest.mark.parametrize("factor", [float("inf"), float("nan"), True, "2", np.float32(2.0)])
def test_a_factor_that_is_not_a_finite_python_number(factor):
    with pytest.raises(ValueError, match="must be a finite Python number"):
        scale_forward(np.ones(3, np.float32), factor)


def test_backward_errors(backend):
    """dy of another dtype or shape than the forward's output is refused as every op's backward
    refuses it (its product would be formed and rounded in dy's precision, not the forward's; a dx
    of another shape would fail later, far from here); a dy that is not a float array, and a cache
    of another op, are named."""
    y, cache = scale_forward(backend.asarray(np.ones((2, 3), np.float32)), 0.5)
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(2, 3\), got \(3, 2\)"):
        scale_backward(backend.asarray(np.ones((3, 2), np.float32)), cache)
    for dt in (np.float64, ml_dtypes.bfloat16):
        with pytest.raises(TypeError, match=rf"dy has dtype {np.dtype(dt)} but the forward's output had dtype float32: "
                                            r"a backward runs in its forward's precision, "
                                            r"so pass dy.astype\(float32\)"):
            scale_backward(backend.asarray(np.ones((2, 3), dt)), cache)
    with pytest.raises(TypeError, match=r"dy has dtype int32, but ops take .*dy.astype\(np.float32\)"):
        scale_backward(backend.asarray(np.ones((2, 3), np.int32)), cache)
    with pytest.raises(TypeError, match=r"dy must be a numpy or cupy array, got list"):
        scale_backward([1.0, 2.0], cache)
    with pytest.raises(TypeError, match=r"cache must be the ScaleCache that scale_forward returned, got float"):
        scale_backward(backend.asarray(np.ones((2, 3), np.float32)), 0.5)
    np.testing.assert_array_equal(backend.asnumpy(scale_backward(backend.asarray(np.ones((2, 3), np.float32)), cache)),
                                  0.5)
