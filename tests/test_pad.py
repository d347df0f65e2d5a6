"""The spatial padding op (gpuconv.ops.pad_forward/pad_backward): NumPy's np.pad modes, the adjoint
identity of its backward, layouts and dtypes on every backend, PyTorch's limits."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from gpuconv import layout
from gpuconv.ops import PadCache, pad_backward, pad_forward

NUMPY_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
PADS = [(1, 1, 1, 1), (2, 0, 0, 3), (0, 4, 2, 1), (3, 3, 3, 3)]


def _np_pad(x, pad, mode):
    left, right, top, bottom = pad
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=NUMPY_MODES[mode])


@pytest.mark.parametrize("mode", list(NUMPY_MODES))
@pytest.mark.parametrize("pad", PADS)
def test_forward_is_numpys_pad_and_backward_its_adjoint(backend, mode, pad):
    """y = np.pad(x) exactly; <pad(x), g> = <x, pad_backward(g)> in float64 (the backward adds each
    padded entry's gradient onto the entry it copied)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))
    y, cache = pad_forward(backend.asarray(x), pad, mode)
    assert cache == PadCache(pad, mode, (2, 3, 4, 5), np.dtype(np.float64))
    np.testing.assert_array_equal(backend.asnumpy(y), _np_pad(x, pad, mode))
    g = rng.standard_normal(y.shape)
    dx = backend.asnumpy(pad_backward(backend.asarray(g), cache))
    assert dx.shape == x.shape and dx.dtype == np.float64
    np.testing.assert_allclose((x * dx).sum(), (_np_pad(x, pad, mode) * g).sum(), rtol=1e-12)


@pytest.mark.parametrize("mode", list(NUMPY_MODES))
def test_backward_is_the_transposed_gather_matrix(mode):
    """Each column of the backward's matrix is the forward of a unit input: dx[i] is exactly the
    sum of the gradient entries copied from input entry i (small integers: exact)."""
    shape, pad = (1, 1, 3, 4), (3, 2, 2, 1)
    rng = np.random.default_rng(1)
    g = rng.integers(-9, 10, (1, 1, 3 + 3, 4 + 5)).astype(np.float64)
    _, cache = pad_forward(np.zeros(shape), pad, mode)
    dx = pad_backward(g, cache)
    for i in np.ndindex(*shape):
        e = np.zeros(shape)
        e[i] = 1
        assert dx[i] == (_np_pad(e, pad, mode) * g).sum()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16, np.float16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular", "constant"])
def test_dtypes_and_layouts_kept(backend, dtype, channels_last, mode):
    """y and dx keep x's dtype and layout; low-precision gradients are added in float32 and rounded
    once."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 5, 4)).astype(dtype)
    xa = backend.asarray(x)
    if channels_last:
        xa = layout.to_channels_last(xa)
    pad = (2, 1, 1, 2)
    y, cache = pad_forward(xa, pad, mode)
    assert y.dtype == dtype and layout.is_channels_last(y) == channels_last
    np.testing.assert_array_equal(backend.asnumpy(y), _np_pad(x, pad, mode))
    g = rng.standard_normal(y.shape).astype(dtype)
    ga = layout.to_channels_last(backend.asarray(g)) if channels_last else backend.asarray(g)
    dx = pad_backward(ga, cache)
    assert dx.dtype == dtype and dx.shape == x.shape and layout.is_channels_last(dx) == channels_last
    want = pad_backward(g.astype(np.float64), pad_forward(x.astype(np.float64), pad, mode)[1])
    if dtype in (np.float32, np.float64):  # (added in another order than the float64 reference's)
        tol = 1e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(backend.asnumpy(dx), want, rtol=tol, atol=tol)
    else:  # these few sums of such values are exact in float32: one rounding, to the nearest
        np.testing.assert_array_equal(backend.asnumpy(dx), want.astype(np.float32).astype(dtype))


@pytest.mark.parametrize("mode, pad, match", [
    ("reflect", (0, 0, 3, 0), "reflect padding .3, 0. of the height must be smaller than the input's height 3"),
    ("reflect", (0, 4, 0, 0), "reflect padding .0, 4. of the width must be smaller than the input's width 4"),
    ("circular", (5, 0, 0, 0), "at most the input's width 4 .* more than once"),
    ("wrap", 1, "mode='wrap' is not one of"),
    ("reflect", (1, 1, 1), "four ints >= 0"),
    ("constant", (1, -1, 0, 0), "four ints >= 0"),
])
def test_errors_name_the_limit(mode, pad, match):
    with pytest.raises(ValueError, match=match):
        pad_forward(np.zeros((1, 1, 3, 4)), pad, mode)


def test_backward_checks_its_gradient():
    y, cache = pad_forward(np.zeros((1, 2, 3, 4), np.float32), 1, "reflect")
    with pytest.raises(ValueError, match=r"shape \(1, 2, 5, 6\)"):
        pad_backward(np.zeros((1, 2, 5, 5), np.float32), cache)
    with pytest.raises(TypeError, match="dtype"):
        pad_backward(np.zeros(y.shape), cache)
    with pytest.raises(TypeError, match="PadCache"):
        pad_backward(y, None)


def test_an_empty_axis_padded_along_the_other():
    """Only a padded axis must be large enough: an empty height, padded along the width only."""
    y, cache = pad_forward(np.zeros((1, 1, 0, 3)), (1, 2, 0, 0), "reflect")
    assert y.shape == (1, 1, 0, 6) and pad_backward(y, cache).shape == (1, 1, 0, 3)
