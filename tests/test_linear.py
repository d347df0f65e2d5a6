"""Linear (affine) layer: flattening, values, gradients for x, w, b, errors."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.ops import linear as linear_mod
from gpuconv.ops import linear_backward, linear_forward
from test_gemm_tc import GPU_FACTOR, host, on, target  # noqa: F401  (target: the sim/cuda fixture)


def test_hand_values(backend):
    x = np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)
    w = np.array([[1.0, 0.0], [2.0, 1.0], [0.0, -1.0]], np.float32)
    b = np.array([0.5, 0.0, 1.0], np.float32)
    y, cache = linear_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b))
    np.testing.assert_array_equal(backend.asnumpy(y), [[1.5, 4, -1], [3.5, 5, 2]])
    dx, dw, db = linear_backward(backend.asarray(np.ones((2, 3), np.float32)), cache)
    np.testing.assert_array_equal(backend.asnumpy(dx), [[3, 0], [3, 0]])
    np.testing.assert_array_equal(backend.asnumpy(dw), [[4, 1]] * 3)
    np.testing.assert_array_equal(backend.asnumpy(db), [2, 2, 2])


def test_flattens_nchw_and_matches_float64(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5, 5))
    w = rng.standard_normal((7, 75))
    b = rng.standard_normal(7)
    ref = x.reshape(4, -1) @ w.T + b
    y, cache = linear_forward(*(backend.asarray(a.astype(np.float32)) for a in (x, w, b)))
    assert y.shape == (4, 7) and y.dtype == np.float32
    np.testing.assert_allclose(backend.asnumpy(y), ref, rtol=1e-4, atol=1e-6 * 75)
    dx, dw, db = linear_backward(backend.asarray(np.ones((4, 7), np.float32)), cache)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape


@pytest.mark.parametrize("shape", [(3, 6), (2, 2, 3, 2)])
def test_gradients_float64(backend, shape):
    rng = np.random.default_rng(1)
    x = backend.asarray(rng.standard_normal(shape))
    feats = int(np.prod(shape[1:]))
    w = backend.asarray(rng.standard_normal((4, feats)))
    b = backend.asarray(rng.standard_normal(4))
    y, cache = linear_forward(x, w, b)
    dy = backend.asarray(rng.standard_normal(y.shape))
    dx, dw, db = linear_backward(dy, cache)
    assert relative_error(dx, numerical_gradient_array(lambda a: linear_forward(a, w, b)[0], x, dy)) < 1e-6
    assert relative_error(dw, numerical_gradient_array(lambda a: linear_forward(x, a, b)[0], w, dy)) < 1e-6
    assert relative_error(db, numerical_gradient_array(lambda a: linear_forward(x, w, a)[0], b, dy)) < 1e-6


@pytest.mark.parametrize("dtype", [np.float64, np.float32, ml_dtypes.bfloat16])
def test_channels_last_input_gets_a_channels_last_dx(backend, dtype):
    """A 4-D channels_last x (the last feature map of a channels_last network) gets dx in its own
    layout, with the values of the NCHW x's dx, so the layers before keep the layout."""
    import gpuconv
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 2, 2)).astype(dtype)
    w, b = (backend.asarray(a.astype(dtype)) for a in (rng.standard_normal((4, 12)), rng.standard_normal(4)))
    dy = backend.asarray(rng.standard_normal((2, 4)).astype(dtype))
    want = linear_backward(dy, linear_forward(backend.asarray(x), w, b)[1])
    got = linear_backward(dy, linear_forward(gpuconv.to_channels_last(backend.asarray(x)), w, b)[1])
    assert gpuconv.is_channels_last(got[0]) and not gpuconv.is_channels_last(want[0])
    for g, h in zip(got, want):
        np.testing.assert_array_equal(backend.asnumpy(g), backend.asnumpy(h))


def test_without_bias(backend):
    x = backend.asarray(np.ones((2, 3)))
    w = backend.asarray(np.ones((4, 3)))
    y, cache = linear_forward(x, w, None)
    np.testing.assert_array_equal(backend.asnumpy(y), np.full((2, 4), 3.0))
    assert linear_backward(backend.asarray(np.ones((2, 4))), cache)[2] is None


@pytest.mark.parametrize("x, w, b, exc, match", [
    (np.ones((2, 3), np.int32), np.ones((4, 3), np.float32), None, TypeError, r"x has dtype int32.*astype"),
    (np.ones((2, 3), np.float32), np.ones((4, 3)), None, TypeError, r"w has dtype float64 but x has dtype float32"),
    (np.ones(3, np.float32), np.ones((4, 3), np.float32), None, ValueError, r"x must have shape \(N, \.\.\.\)"),
    (np.ones((2, 3), np.float32), np.ones(3, np.float32), None, ValueError, r"w must have 2 dimensions"),
    (np.ones((2, 2, 2), np.float32), np.ones((4, 3), np.float32), None, ValueError,
     r"x of shape \(2, 2, 2\) flattens to 4 features.*in_features=3"),
    (np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), np.ones(3, np.float32), ValueError,
     r"b must have shape \(4,\).*got \(3,\)"),
])
def test_errors_before_work(backend, monkeypatch, x, w, b, exc, match):
    monkeypatch.setattr(linear_mod, "_linear_forward_reference", lambda *a: pytest.fail("ran before checks"))
    with pytest.raises(exc, match=match):
        linear_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b))


def test_backward_rejects_wrong_dy(backend):
    _, cache = linear_forward(backend.asarray(np.ones((2, 3))), backend.asarray(np.ones((4, 3))), None)
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(2, 4\)"):
        linear_backward(backend.asarray(np.ones((2, 3))), cache)


# ----------------------------------------------------------------------------- the tensor-core kernels
def _low_dtypes():
    import ml_dtypes
    return [np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)]


def _run_and_check(target, dtype, x_shape, out, bias, prec=None, factor=1.0, seed=7):
    """linear_forward and linear_backward on ``target``: each of y, dx, dw (and db) within
    gradcheck's bound (times ``factor``) of the exact float64 result of the precision rule's
    operands (TF32-rounded under 'tf32') for its reduction length (features forward, outputs for
    dx, batch rows for dw and db), in the operands' dtype and shape; no fallback. The launch log."""
    import gpuconv
    from gpuconv import kernels, precision
    from gpuconv.gradcheck import reduction_tolerance, within_tolerance
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    feats = int(np.prod(x_shape[1:]))
    w = (rng.standard_normal((out, feats)) / np.sqrt(feats)).astype(dtype)
    b = rng.standard_normal(out).astype(dtype) if bias else None
    dy = rng.standard_normal((x_shape[0], out)).astype(dtype)
    args = on(target, x, w, dy) + ([on(target, b)[0]] if bias else [None])
    with gpuconv.default_device(target), kernels.launch_log() as log:
        y, cache = linear_forward(args[0], args[1], args[3], precision=prec)
        dx, dw, db = (None if a is None else host(a) for a in linear_backward(args[2], cache, precision=prec))
        y = host(y)
    assert kernels.fallbacks(log) == [] and all(d[2] == "kernel" for d in log.dispatches), log.dispatches
    x2 = x.reshape(len(x), -1)
    x64, w64, dy64 = (np.asarray(a, np.float64) for a in precision.multiplicands(prec == "tf32", x2, w, dy))
    b64 = b.astype(np.float64) if bias else 0.0
    checks = [(y, x64 @ w64.T + b64, np.abs(x64) @ np.abs(w64.T) + np.abs(b64), feats, (len(x), out)),
              (dx.reshape(len(x), -1), dy64 @ w64, np.abs(dy64) @ np.abs(w64), out, x2.shape),
              (dw, dy64.T @ x64, np.abs(dy64.T) @ np.abs(x64), len(x), w.shape)]
    if bias:
        d64 = dy.astype(np.float64)
        checks.append((db, d64.sum(0), np.abs(d64).sum(0), len(x), (out,)))
    for got, want, mag, length, shape in checks:
        assert got.dtype == dtype and got.shape == shape
        ok, worst = within_tolerance(got, want, factor * reduction_tolerance(mag, want, length, dtype,
                                                                             reference_rounded=False))
        assert ok, worst
    assert dx.shape == x.shape and (db is None) == (not bias)
    return log


@pytest.mark.parametrize("dtype", _low_dtypes(), ids=["bf16", "f16"])
@pytest.mark.parametrize("x_shape, out, bias", [((1, 5), 1, True), ((7, 2, 3, 3), 10, False),
                                                ((130, 70), 66, True), ((33, 256), 10, False)])
def test_low_precision_runs_the_tensor_core_gemm_within_the_reduction_bound(target, dtype, x_shape, out, bias):
    """bfloat16/float16 on 'sim' and a GPU: one GEMM forward (bias in its epilogue), two backward
    (and the bias's column sum), each within the reduction bound (doubled on a GPU, whose tensor
    cores truncate), and rounded once."""
    log = _run_and_check(target, dtype, x_shape, out, bias, factor=GPU_FACTOR if target == "cuda" else 1.0)
    assert log.names == ["gemm_tc_nt", "gemm_tc_nn", "gemm_tc_nn"] + (["conv2d_backward_bias"] if bias else [])


def test_sm75_build_runs_float16_on_the_gemm_and_bfloat16_as_the_1x1_convolution():
    """On the simulator's sm_75 build (a T4's tensor cores: float16 alone) float16 takes the
    tensor-core GEMM, bfloat16 the CUDA-core 1x1 convolution, both within the bound."""
    from gpuconv import kernels
    bf16, f16 = _low_dtypes()
    with kernels.sim_arch(75):
        log = _run_and_check("sim", f16, (7, 2, 3, 3), 10, True)
        assert log.names == ["gemm_tc_nt", "gemm_tc_nn", "gemm_tc_nn", "conv2d_backward_bias"]
        log = _run_and_check("sim", bf16, (7, 2, 3, 3), 10, True)
        assert not [n for n in log.names if "_tc" in n] and "conv2d_forward_v2" in log.names


@pytest.mark.parametrize("dtype, prec", [(np.float32, "fp32"), (np.float32, "tf32"), (np.float64, None)],
                         ids=["fp32", "tf32", "f64"])
@pytest.mark.parametrize("x_shape, out, bias", [((5, 3), 2, True), ((7, 2, 3, 3), 10, False), ((33, 70), 13, True)])
def test_float32_and_float64_run_the_convolution_kernels(target, dtype, prec, x_shape, out, bias):
    """float32 (strict and TF32) and float64 run as 1x1 convolutions on the kernels (no library
    GEMM, which CuPy refuses inside a CUDA graph capture), within the reduction bound (doubled in
    TF32 on a GPU, whose tensor cores truncate)."""
    factor = GPU_FACTOR if target == "cuda" and prec == "tf32" else 1.0
    log = _run_and_check(target, dtype, x_shape, out, bias, prec, factor, seed=3)
    assert log.names and all(name.startswith("conv2d_") for name in log.names), log.names


def test_low_precision_empty_batch(target):
    """N = 0 on the kernels: empty y and dx, zero dw and db (empty sums), as the reference gives."""
    import ml_dtypes
    import gpuconv
    bf = ml_dtypes.bfloat16
    x, w, b, dy = on(target, np.zeros((0, 2, 3), bf), np.ones((4, 6), bf), np.ones(4, bf), np.zeros((0, 4), bf))
    with gpuconv.default_device(target):
        y, cache = linear_forward(x, w, b)
        dx, dw, db = linear_backward(dy, cache)
    assert y.shape == (0, 4) and dx.shape == (0, 2, 3) and dw.shape == (4, 6) and db.shape == (4,)
    assert not host(dw).astype(np.float32).any() and not host(db).astype(np.float32).any()


def test_checks_passed_are_memoized_by_signature_and_errors_never(monkeypatch):
    """The forward's checks run once per signature (the arrays' type, shape and dtype), the
    backward's likewise; every call that breaks a rule is refused again with its own message."""
    rng = np.random.default_rng(4)
    x, w, b, dy = rng.standard_normal((3, 2, 5)), rng.standard_normal((4, 10)), rng.standard_normal(4), \
        rng.standard_normal((3, 4))
    linear_mod._CHECKED.clear()
    linear_mod._CHECKED_BACKWARD.clear()
    runs = []
    real = linear_mod._check_forward
    monkeypatch.setattr(linear_mod, "_check_forward", lambda *a: runs.append(a) or real(*a))
    y1, c1 = linear_forward(x, w, b)
    y2, _ = linear_forward(x, w, b)
    assert len(runs) == 1 and np.array_equal(y1, y2)
    for _ in range(2):
        with pytest.raises(TypeError, match="b has dtype float32 but x has dtype float64"):
            linear_forward(x, w, b.astype(np.float32))
        with pytest.raises(ValueError, match="feature mismatch"):
            linear_forward(x, w[:, :9], b)
        with pytest.raises(ValueError, match=r"b must have shape \(4,\)"):
            linear_forward(x, w, b[:3])
        with pytest.raises(TypeError, match="x must be a numpy or cupy array, got list"):
            linear_forward(x.tolist(), w, b)
    assert len(runs) == 1 + 8
    dx1 = linear_backward(dy, c1)[0]
    assert np.array_equal(dx1, linear_backward(dy, c1)[0]) and len(linear_mod._CHECKED_BACKWARD) == 1
    for _ in range(2):
        with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(3, 4\)"):
            linear_backward(dy[:2], c1)
        with pytest.raises(TypeError, match="dy has dtype float32 but x has dtype float64"):
            linear_backward(dy.astype(np.float32), c1)


class _Sub(np.ndarray):
    """A NumPy array of another type: the references take their general path for it."""


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("x_shape", [(3, 10), (3, 2, 5)])
def test_numpy_float_path_of_the_reference_is_the_general_codes_bit_for_bit(dtype, x_shape):
    """float64 and float32 NumPy arrays skip the upcast and rounding helpers (identities there):
    the same products as the general code, the same bits."""
    rng = np.random.default_rng(5)
    x, w, b, dy = (rng.standard_normal(s).astype(dtype) for s in (x_shape, (4, 10), (4,), (3, 4)))
    for bias in (b, None):
        y, cache = linear_mod._linear_forward_reference(x, w, bias)
        y_gen, cache_gen = linear_mod._linear_forward_reference(x.view(_Sub), w.view(_Sub),
                                                                None if bias is None else bias.view(_Sub))
        assert type(y) is np.ndarray and type(y_gen) is _Sub
        assert y.dtype == y_gen.dtype == dtype and y.tobytes() == np.asarray(y_gen).tobytes()
        got = linear_mod._linear_backward_reference(dy, cache)
        want = linear_mod._linear_backward_reference(dy.view(_Sub), cache_gen)
        assert (got[2] is None) == (want[2] is None) == (bias is None)
        for g, e in zip(got, want):
            if g is not None:
                assert g.shape == e.shape and g.dtype == e.dtype and g.tobytes() == np.asarray(e).tobytes()
