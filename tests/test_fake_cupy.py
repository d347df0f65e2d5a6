"""The CPU stand-in for CuPy (tests/fake_cupy.py, GPUCONV_FAKE_CUPY=1) refuses what CuPy refuses, so
that a 'cupy' case run on it fails for what would fail it on a GPU: a host array mixed into a GPU
operation, an implicit conversion to NumPy, a name CuPy lacks; and its results are CuPy's (C-ordered
new arrays, 0-d arrays for one element, weakly typed Python scalars)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

import gpuconv
from gpuconv import backend as B
from gpuconv import layout, ops
from fake_cupy import install_fake_cupy


def test_the_fake_refuses_what_cupy_refuses_and_makes_what_cupy_makes(monkeypatch):
    pytest.importorskip("cupy", reason="the fake takes CuPy's names from CuPy itself (installed without a GPU "
                                       "by make install's default extras)")
    install_fake_cupy(monkeypatch)
    cp = B.cupy_module()
    host = np.arange(2 * 4 * 3 * 3, dtype=np.float32).reshape(2, 4, 3, 3)
    source = host.copy()
    x = cp.asarray(source)
    source[...] = -1  # (x is a copy of it)
    assert B.cuda_available() and B.kernel_target(x) == "cuda"
    for refused in (lambda: x + host, lambda: np.concatenate([x, host]), lambda: np.asarray(x),
                    lambda: np.testing.assert_array_equal(x, host), lambda: x.ctypes):
        with pytest.raises((TypeError, AttributeError)):
            refused()
    with pytest.raises(AttributeError):
        cp.get_default_memory_pool()  # (CuPy's own: the fake has none)
    last = gpuconv.to_channels_last(x)
    assert not layout.is_channels_last(np.concatenate([last, last], axis=1))  # C-ordered, as CuPy's
    assert not layout.is_channels_last(last + last) and layout.is_channels_last(cp.empty_like(last))
    assert (x * 0).dtype == np.float32 and type(x[0, 0, 0, 0]) is cp.ndarray and x[0, 0, 0, 0].ndim == 0
    assert type(pickle.loads(pickle.dumps(x))) is cp.ndarray
    np.testing.assert_array_equal(x.get(), host)
    with gpuconv.default_device("cuda"):
        y, _ = ops.relu_forward(x - 20)
    assert type(y) is cp.ndarray
    np.testing.assert_array_equal(y.get(), np.maximum(host - 20, 0))
