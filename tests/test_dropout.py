"""Inverted dropout: drop rate, scaling, determinism under a seed, identity in eval, errors."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.ops import dropout_backward, dropout_forward


def rng_for(backend, seed):
    return backend.xp.random.default_rng(seed)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_rate_and_inverted_scaling(backend, p):
    x = backend.asarray(np.ones((200, 500), np.float32))
    y, cache = dropout_forward(x, p, rng=rng_for(backend, 0))
    y = backend.asnumpy(y)
    assert y.dtype == np.float32
    kept = y != 0
    assert abs(1 - kept.mean() - p) < 0.01  # 100k draws: std of the rate is < 0.0016
    np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-6)
    assert abs(y.mean() - 1) < 0.05  # the expectation is preserved
    dx = backend.asnumpy(dropout_backward(backend.asarray(np.full((200, 500), 2.0, np.float32)), cache))
    np.testing.assert_array_equal(dx != 0, kept)
    np.testing.assert_allclose(dx[kept], 2 / (1 - p), rtol=1e-6)


def test_seeded_rng_is_reproducible(backend):
    x = backend.asarray(np.ones((8, 8)))
    a, _ = dropout_forward(x, 0.5, rng=rng_for(backend, 7))
    b, _ = dropout_forward(x, 0.5, rng=rng_for(backend, 7))
    c, _ = dropout_forward(x, 0.5, rng=rng_for(backend, 8))
    np.testing.assert_array_equal(backend.asnumpy(a), backend.asnumpy(b))
    assert not np.array_equal(backend.asnumpy(a), backend.asnumpy(c))


@pytest.mark.parametrize("training, p", [(False, 0.5), (True, 0.0)])
def test_identity_cases(backend, training, p):
    x = backend.asarray(np.arange(6.0).reshape(2, 3))
    y, cache = dropout_forward(x, p, training=training)
    np.testing.assert_array_equal(backend.asnumpy(y), np.arange(6.0).reshape(2, 3))
    assert cache.mask is None
    dy = backend.asarray(np.ones((2, 3)))
    np.testing.assert_array_equal(backend.asnumpy(dropout_backward(dy, cache)), np.ones((2, 3)))


def test_gradient_float64(backend):
    x = backend.asarray(np.random.default_rng(0).standard_normal((3, 4, 5)))
    dy = backend.asarray(np.random.default_rng(1).standard_normal((3, 4, 5)))
    _, cache = dropout_forward(x, 0.3, rng=rng_for(backend, 3))
    num = numerical_gradient_array(lambda a: dropout_forward(a, 0.3, rng=rng_for(backend, 3))[0], x, dy)
    assert relative_error(dropout_backward(dy, cache), num) < 1e-6


@pytest.mark.parametrize("p", [1.0, -0.1, 2, "0.5", True])
def test_bad_p(backend, p):
    with pytest.raises(ValueError, match=r"p is the probability of dropping an element and must be in \[0, 1\)"):
        dropout_forward(backend.asarray(np.ones(3, np.float32)), p)


def test_other_errors(backend):
    with pytest.raises(TypeError, match=r"x has dtype int64.*astype\(np.float32\)"):
        dropout_forward(backend.asarray(np.ones(3, np.int64)), 0.5)
    if backend.name != "cupy":
        with pytest.raises(TypeError, match=r"rng must be a numpy.random.Generator.*default_rng\(seed\)"):
            dropout_forward(backend.asarray(np.ones(3, np.float32)), 0.5, rng=np.random.RandomState(0))
    else:
        with pytest.raises(TypeError, match=r"pass cupy.random.default_rng\(seed\)"):
            dropout_forward(backend.asarray(np.ones(3, np.float32)), 0.5, rng=np.random.default_rng(0))
    _, cache = dropout_forward(backend.asarray(np.ones((2, 3), np.float32)), 0.5, rng=rng_for(backend, 0))
    with pytest.raises(ValueError, match=r"dy must have the forward input's shape \(2, 3\)"):
        dropout_backward(backend.asarray(np.ones((3, 2), np.float32)), cache)
