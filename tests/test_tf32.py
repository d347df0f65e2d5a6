"""TF32, the compute mode of float32 (gpuconv.precision): chosen per call or globally, applied by
conv2d (its kernels' TF32 build) and linear, ignored by float64 and the low precisions.

The kernels are held to the TF32 reference with the float32 bound alone (TF32 operands' products
are exact in float32, so only the summation order differs), and the TF32 result must differ from
the strict float32 one on data whose low mantissa bits TF32 drops: the mode is really applied.
"""
from __future__ import annotations

import threading

import ml_dtypes
import numpy as np
import pytest

import gpuconv
from gpuconv.gradcheck import reduction_tolerance, within_tolerance
from gpuconv.ops import conv2d_backward, conv2d_forward, linear_backward, linear_forward
from gpuconv.ops import conv2d as conv_mod
from gpuconv.precision import round_tf32, use_tf32

CONV_FAMILIES = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")


def busy_mantissas(rng, shape):
    """float32 values whose low 13 mantissa bits are not zero: TF32 changes every one of them.
    Every third one is a tie (those bits exactly 0x1000), which cvt.rna rounds away from zero
    where ties to even would round half of them (an even kept mantissa) toward zero."""
    x = rng.standard_normal(shape).astype(np.float32)
    bits = x.view(np.uint32) | np.uint32(0x0AAA)
    flat = bits.reshape(-1)
    flat[::3] = flat[::3] & np.uint32(0xFFFFE000) | np.uint32(0x1000)
    return bits.view(np.float32)


def f64(a):
    return np.asarray(a).astype(np.float64)


def check(result, reference, abs_sum, length, what, expect_ok=True):
    tol = reduction_tolerance(f64(abs_sum), f64(reference), length, np.float32)
    ok, worst = within_tolerance(f64(result), f64(reference), tol)
    assert ok == expect_ok, f"{what}: within the float32 bound is {ok} (worst |diff|/bound {worst:.3g})"


@pytest.mark.parametrize("how", ["argument", "set_precision", "precision_mode"])
@pytest.mark.parametrize("variant", ["v1", "v2", "v3"])
def test_conv2d_tf32_matches_the_tf32_reference_and_differs_from_fp32(backend, how, variant, monkeypatch):
    from gpuconv import kernels
    from gpuconv.ops import _launch_conv2d as LC
    monkeypatch.setattr(LC, "MIN_SPLIT_CHUNK", 8)
    rng = np.random.default_rng(0)
    x, w, b = busy_mantissas(rng, (2, 6, 8, 8)), busy_mantissas(rng, (7, 6, 3, 3)), busy_mantissas(rng, 7)
    dy = busy_mantissas(rng, (2, 7, 8, 8))
    X, W, B, DY = (backend.asarray(a) for a in (x, w, b, dy))
    monkeypatch.setattr(gpuconv.precision, "_global_precision", "fp32")  # restored after the test
    with kernels.use_variant(**{f: variant for f in CONV_FAMILIES}):
        if how == "argument":
            y, cache = conv2d_forward(X, W, B, 1, 1, precision="tf32")
            grads = conv2d_backward(DY, cache, precision="tf32")
        elif how == "set_precision":
            gpuconv.set_precision("tf32")
            y, cache = conv2d_forward(X, W, B, 1, 1)
            grads = conv2d_backward(DY, cache)
            gpuconv.set_precision("fp32")
        else:
            with gpuconv.precision_mode("tf32"):
                y, cache = conv2d_forward(X, W, B, 1, 1)
                grads = conv2d_backward(DY, cache)
        tf32_builds = {rec.build for rec in backend.launches if rec.name != "conv2d_backward_bias"}
        y32, cache32 = conv2d_forward(X, W, B, 1, 1)  # the strict float32 default
        grads32 = conv2d_backward(DY, cache32)
    got = [backend.asnumpy(a) for a in (y, *grads)]
    strict = [backend.asnumpy(a) for a in (y32, *grads32)]
    assert all(a.dtype == np.float32 for a in got)
    # The reference of the rule: TF32-rounded multiplicands in float64 (exact products and sums).
    xr, wr, dyr = (f64(round_tf32(a)) for a in (x, w, dy))
    exact = [conv_mod._conv2d_forward_reference(xr, wr, f64(b), (1, 1), (1, 1))[0],
             *conv_mod._conv2d_backward_reference(dyr, conv_mod.Conv2dCache(xr, wr, True, (1, 1), (1, 1)))]
    exact[3] = f64(dy).sum(axis=(0, 2, 3))  # the bias gradient is a sum: never TF32-rounded
    mags = [conv_mod._conv2d_forward_reference(abs(xr), abs(wr), abs(f64(b)), (1, 1), (1, 1))[0],
            *conv_mod._conv2d_backward_reference(abs(dyr), conv_mod.Conv2dCache(abs(xr), abs(wr), True, (1, 1),
                                                                                 (1, 1)))]
    mags[3] = abs(f64(dy)).sum(axis=(0, 2, 3))
    lengths = [6 * 9 + 1, 7 * 9, 2 * 64, 2 * 64]
    for name, g, s, e, m, n in zip(["y", "dx", "dw", "db"], got, strict, exact, mags, lengths):
        check(g, e, m, n, f"tf32 {name} against the TF32 reference")
        if name == "db":
            np.testing.assert_array_equal(g, s)  # identical: TF32 does not touch sums
        else:
            check(g, s, m, n, f"tf32 {name} against strict float32", expect_ok=False)
    if backend.name != "numpy":
        assert tf32_builds == {"float+tf32"}, tf32_builds


def test_linear_tf32():
    rng = np.random.default_rng(1)
    x, w, b = busy_mantissas(rng, (5, 40)), busy_mantissas(rng, (6, 40)), busy_mantissas(rng, 6)
    y, cache = linear_forward(x, w, b, precision="tf32")
    dy = busy_mantissas(rng, (5, 6))
    dx, dw, db = linear_backward(dy, cache, precision="tf32")
    y32, c32 = linear_forward(x, w, b)
    X, W, DY = f64(round_tf32(x)), f64(round_tf32(w)), f64(round_tf32(dy))
    check(y, X @ W.T + f64(b), abs(X) @ abs(W).T + abs(f64(b)), 41, "y")
    check(dx, DY @ W, abs(DY) @ abs(W), 6, "dx")
    check(dw, DY.T @ X, abs(DY).T @ abs(X), 5, "dw")
    np.testing.assert_array_equal(db, dy.sum(0))
    check(y, y32, abs(X) @ abs(W).T + abs(f64(b)), 41, "tf32 against fp32", expect_ok=False)


def test_float64_and_low_precisions_ignore_the_mode():
    rng = np.random.default_rng(2)
    for dtype in (np.float64, ml_dtypes.bfloat16, np.float16):
        x, w = rng.standard_normal((1, 2, 5, 5)).astype(dtype), rng.standard_normal((3, 2, 3, 3)).astype(dtype)
        a = conv2d_forward(x, w, precision="tf32")[0]
        b = conv2d_forward(x, w, precision="fp32")[0]
        assert a.dtype == dtype and a.tobytes() == b.tobytes()
        assert not use_tf32("tf32", dtype)
    assert use_tf32("tf32", np.float32) and not use_tf32("fp32", np.float32)


def test_the_setting_api(monkeypatch):
    monkeypatch.setattr(gpuconv.precision, "_global_precision", "fp32")
    assert gpuconv.get_precision() == "fp32" and not use_tf32(None, np.float32)
    gpuconv.set_precision("tf32")
    assert gpuconv.get_precision() == "tf32" and use_tf32(None, np.float32)
    with gpuconv.precision_mode("fp32"):
        assert gpuconv.get_precision() == "fp32"
        with gpuconv.precision_mode("tf32"):
            assert gpuconv.get_precision() == "tf32"
        assert gpuconv.get_precision() == "fp32"
        seen = []  # a context setting is this context's: a new thread sees the process-wide one
        t = threading.Thread(target=lambda: seen.append(gpuconv.get_precision()))
        t.start()
        t.join()
        assert seen == ["tf32"]
    assert gpuconv.get_precision() == "tf32"
    gpuconv.set_precision("fp32")
    assert gpuconv.get_precision() == "fp32"
    for bad in ("tf16", "TF32", None, 32):
        with pytest.raises(ValueError, match=r"use 'fp32' \(strict IEEE float32, the default\) or 'tf32'"):
            gpuconv.set_precision(bad)
    with pytest.raises(ValueError, match=r"precision='bf16': use 'fp32'"):
        conv2d_forward(np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 3, 3), np.float32), precision="bf16")
    with pytest.raises(ValueError, match=r"precision_mode='x'"):
        with gpuconv.precision_mode("x"):
            pass
