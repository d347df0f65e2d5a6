"""The batch-norm kernels (kernels/batchnorm.cu) on the host simulator against float64 NumPy.

Tolerances are derived, not chosen: a sum of n terms in any order is within n*u*sum|terms| of
its exact value (u the accumulator's unit roundoff: 2^-24 in float32, 2^-53 in float64), and
the bounds below propagate that through the mean, the two-pass variance, inv_std, xhat, y, the
parameter gradients and dx, then add one rounding of the storage dtype for y and dx. What the
precision rule makes exact is checked bit for bit: y and dx are the float32 arithmetic of the
kernels' own statistics, rounded once. The same bodies run on a GPU (marked ``gpu``) when one
answers.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import gpuconv
from gpuconv import backend as B
from gpuconv import kernels, layout
from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.ops import _launch_batchnorm as LB
from gpuconv.ops import batchnorm as bn

BF16 = ml_dtypes.bfloat16
TARGETS = ["sim", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not B.cuda_available(), reason=f"no GPU: {B.cuda_status()}")])]
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64"), pytest.param(BF16, id="bf16"),
          pytest.param(np.float16, id="f16")]
# (N, C, H, W): odd channel counts (3, and 37 = a 32-channel group and a partial one), H*W = 1,
# N = 1, and sizes with several reduction splits and a partial last chunk in each layout
# (NCHW splits past 4096 positions per channel, NHWC past 256).
# (3, 2, 37, 41): NCHW chunks of 2276 positions start inside an image of 1517 pixels.
SHAPES = [(2, 3, 5, 3), (1, 3, 2, 2), (6, 4, 1, 1), (3, 37, 3, 4), (2, 3, 48, 48), (3, 5, 10, 11), (3, 2, 37, 41)]
EPS, MOMENTUM = 1e-5, 0.1


def to(target, a):
    """``a`` on the target's device, in its own layout."""
    if target != "cuda":
        return a
    d = B.cupy_module().asarray(a)
    return gpuconv.to_channels_last(d) if layout.is_channels_last(a) else d


def host(a):
    return B.asnumpy(a) if B.is_cupy_array(a) else np.asarray(a)


def f64(a):
    return np.asarray(host(a), np.float64)


def acc_u(dtype):
    """Unit roundoff of the accumulator: float64 builds compute in double, the others in float32."""
    return 2.0 ** -53 if np.dtype(dtype) == np.float64 else 2.0 ** -24


def store_u(dtype):
    """Unit roundoff of the one final rounding to a narrower storage dtype (0 when acc == storage)."""
    return {np.dtype(BF16): 2.0 ** -8, np.dtype(np.float16): 2.0 ** -11}.get(np.dtype(dtype), 0.0)


def per(v):
    return np.asarray(v, np.float64)[None, :, None, None]


def make(shape, dtype, cl, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    cd = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    gamma, beta = rng.uniform(0.5, 2, c).astype(cd), rng.standard_normal(c).astype(cd)
    rm, rv = rng.standard_normal(c).astype(cd), rng.uniform(0.5, 2, c).astype(cd)
    dy = rng.standard_normal(shape).astype(dtype)
    if cl:
        x, dy = gpuconv.to_channels_last(x), gpuconv.to_channels_last(dy)
    return x, gamma, beta, rm, rv, dy


def stats_bounds(x, dtype):
    """float64 mean and biased variance of x per channel, and bounds on the kernels' errors in the
    mean, the variance and inv_std (relative)."""
    X, u = f64(x), acc_u(dtype)
    n = X.size // X.shape[1]
    mean, var = X.mean((0, 2, 3)), X.var((0, 2, 3))
    d_mean = (n + 2) * u * np.abs(X).mean((0, 2, 3))
    # sum (x - m - d)^2 = sum (x - m)^2 + n d^2; the squares and the sum add (n + 3) u relatively
    d_var = d_mean ** 2 + (n + 4) * u * (var + d_mean ** 2)
    d_inv_rel = 0.5 * d_var / (var + EPS) + 3 * u
    return mean, var, d_mean, d_var, d_inv_rel


def run_forward(target, x, gamma, beta, rm, rv, training):
    rmd, rvd = to(target, rm.copy()), to(target, rv.copy())
    y, cache = LB.batchnorm2d_forward_kernel(to(target, x), to(target, gamma), to(target, beta), rmd, rvd, training,
                                             MOMENTUM, EPS, target=target)
    return y, cache, f64(rmd), f64(rvd)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_training_forward_and_backward_within_derived_bounds(target, shape, dtype, cl):
    x, gamma, beta, rm, rv, dy = make(shape, dtype, cl)
    y, cache, rm_k, rv_k = run_forward(target, x, gamma, beta, rm, rv, True)
    u, us = acc_u(dtype), store_u(dtype)
    n = x.size // x.shape[1]
    mean, var, d_mean, d_var, d_inv_rel = stats_bounds(x, dtype)
    assert layout.is_channels_last(y) == layout.is_channels_last(x)
    assert host(y).dtype == np.dtype(dtype) and host(cache.x).dtype == np.dtype(dtype)
    assert host(cache.mean).dtype == gamma.dtype
    inv = 1 / np.sqrt(var + EPS)
    assert np.all(np.abs(f64(cache.inv_std) - inv) <= 2 * d_inv_rel * inv)
    xhat = (f64(x) - per(mean)) * per(inv)
    d_xhat = per(d_mean * inv) + np.abs(xhat) * per(d_inv_rel + 2 * u)
    assert np.all(np.abs(f64(bn.normalized(cache)) - xhat) <= 2 * d_xhat)
    y64 = xhat * per(gamma) + per(beta)
    d_y = np.abs(per(gamma)) * d_xhat + 2 * u * (np.abs(xhat * per(gamma)) + np.abs(per(beta)))
    assert np.all(np.abs(f64(y) - y64) <= 2 * d_y + us * np.abs(y64))
    # running statistics: (1 - m) r + m * batch statistic (unbiased variance), three roundings each
    rm64 = (1 - MOMENTUM) * f64(rm) + MOMENTUM * mean
    rv64 = (1 - MOMENTUM) * f64(rv) + MOMENTUM * var * n / (n - 1)
    assert np.all(np.abs(rm_k - rm64) <= 2 * (MOMENTUM * d_mean + 4 * u * (np.abs(rm64) + np.abs(f64(rm)))))
    assert np.all(np.abs(rv_k - rv64) <= 2 * (MOMENTUM * n / (n - 1) * d_var + 4 * u * (rv64 + f64(rv))))

    # backward against float64 on the kernels' own cache: the sums' n*u, then dx's few roundings
    dx, dgamma, dbeta = LB.batchnorm2d_backward_kernel(to(target, dy), cache, target=target)
    assert layout.is_channels_last(dx) == layout.is_channels_last(x) and host(dx).dtype == np.dtype(dtype)
    XH, DY, inv_k = f64(bn.normalized(cache)), f64(dy), f64(cache.inv_std)
    dg64, db64 = (DY * XH).sum((0, 2, 3)), DY.sum((0, 2, 3))
    d_dg, d_db = n * u * np.abs(DY * XH).sum((0, 2, 3)), n * u * np.abs(DY).sum((0, 2, 3))
    assert np.all(np.abs(f64(dgamma) - dg64) <= d_dg) and np.all(np.abs(f64(dbeta) - db64) <= d_db)
    scale = per(gamma) * per(inv_k)
    dx64 = scale * (DY - per(db64 / n) - XH * per(dg64 / n))
    d_dx = np.abs(scale) * (per(d_db / n) + np.abs(XH) * per(d_dg / n)
                            + 6 * u * (np.abs(DY) + per(np.abs(db64) / n) + np.abs(XH) * per(np.abs(dg64) / n)))
    assert np.all(np.abs(f64(dx) - dx64) <= 2 * d_dx + us * np.abs(dx64))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_mode_uses_running_stats_and_leaves_them(target, dtype, cl):
    x, gamma, beta, rm, rv, dy = make((3, 5, 4, 3), dtype, cl, seed=1)
    y, cache, rm_k, rv_k = run_forward(target, x, gamma, beta, rm, rv, False)
    assert np.array_equal(rm_k, f64(rm)) and np.array_equal(rv_k, f64(rv)) and cache.training is False
    # no reduction: the reference's elementwise arithmetic, operation for operation, same bits
    y_ref, c_ref = bn._batchnorm2d_forward_reference(host(x), gamma, beta, rm.copy(), rv.copy(), False, MOMENTUM, EPS)
    assert host(y).dtype == y_ref.dtype and np.array_equal(f64(y), f64(y_ref))
    assert np.array_equal(f64(cache.mean), f64(rm)) and np.array_equal(f64(cache.inv_std), f64(c_ref.inv_std))
    assert np.array_equal(f64(bn.normalized(cache)), f64(bn.normalized(c_ref)))
    dx, dgamma, dbeta = LB.batchnorm2d_backward_kernel(to(target, dy), cache, target=target)
    assert np.array_equal(f64(dx), f64(bn._batchnorm2d_backward_reference(host(dy), c_ref)[0]))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [pytest.param(BF16, id="bf16"), pytest.param(np.float16, id="f16")])
def test_low_precision_outputs_are_rounded_once_from_float32(target, dtype, cl):
    x, gamma, beta, rm, rv, dy = make((4, 6, 5, 5), dtype, cl, seed=2)
    y, cache, _, _ = run_forward(target, x, gamma, beta, rm, rv, True)
    xhat = host(bn.normalized(cache))
    assert xhat.dtype == np.float32 and host(cache.x).dtype == np.dtype(dtype)
    f32 = np.float32
    want_y = (xhat * gamma[None, :, None, None] + beta[None, :, None, None]).astype(dtype)
    assert np.array_equal(host(y).view(np.uint16), want_y.view(np.uint16))
    dx, dgamma, dbeta = LB.batchnorm2d_backward_kernel(to(target, dy), cache, target=target)
    n = x.size // x.shape[1]
    inv_n = f32(1.0 / n)
    g = host(dy).astype(f32) - (host(dbeta) * inv_n)[None, :, None, None]
    g = g - xhat * (host(dgamma) * inv_n)[None, :, None, None]
    want_dx = (g * (gamma * host(cache.inv_std))[None, :, None, None]).astype(dtype)
    assert np.array_equal(host(dx).view(np.uint16), want_dx.view(np.uint16))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16, np.float16],
                         ids=["f32", "f64", "bf16", "f16"])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_deterministic_across_runs_and_simulator_schedules(cl, dtype):
    """The same bits from run to run and in either thread order of the simulator, in every build
    (the sums' fixed order is kept by barriers and tickets, not by the order threads run in)."""
    x, gamma, beta, rm, rv, dy = make((2, 37, 40, 40), dtype, cl, seed=3)
    outs = []
    for order in ("forward", "reverse", "forward"):
        with kernels.sim_schedule(order):
            y, cache, rm_k, rv_k = run_forward("sim", x, gamma, beta, rm, rv, True)
            dx, dg, db = LB.batchnorm2d_backward_kernel(dy, cache, target="sim")
        outs.append([np.ascontiguousarray(a).tobytes() for a in (y, cache.mean, cache.inv_std, rm_k, rv_k, dx, dg, db)])
    assert outs[0] == outs[1] == outs[2]
    # 37 channels: two 32-channel groups (the second of 5), many blocks each (NCHW: a block per
    # channel; NHWC: several splits); every group's last block left its ticket at 0 for the next launch
    assert cl is False or LB.geometry("batchnorm2d_stats", "sim", c=37, count=2 * 40 * 40, channels_last=cl)[2][0] > 1
    assert all(not np.asarray(t).any() for t in kernels._tickets.values())


@pytest.mark.parametrize("training", [True, False])
def test_gradients_float64_channels_last_through_the_kernels(training):
    rng = np.random.default_rng(4)
    x = gpuconv.to_channels_last(rng.standard_normal((3, 3, 4, 3)) * 2 + 1)
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    rm0, rv0 = rng.standard_normal(3), rng.random(3) + 0.5

    def f(a, g, b):
        return LB.batchnorm2d_forward_kernel(a, g, b, rm0.copy(), rv0.copy(), training, MOMENTUM, EPS, target="sim")[0]

    _, cache = LB.batchnorm2d_forward_kernel(x, gamma, beta, rm0.copy(), rv0.copy(), training, MOMENTUM, EPS,
                                             target="sim")
    dy = gpuconv.to_channels_last(rng.standard_normal(x.shape))
    dx, dgamma, dbeta = LB.batchnorm2d_backward_kernel(dy, cache, target="sim")
    assert layout.is_channels_last(dx)
    # perturb the NHWC memory itself (C-contiguous: perturbed element by element), viewed as channels_last
    x_mem, dy_mem = layout.nhwc(x), layout.nhwc(dy)
    num = numerical_gradient_array(lambda a: layout.nhwc(f(a.transpose(layout.NCHW), gamma, beta)), x_mem, dy_mem)
    assert relative_error(layout.nhwc(dx), num) < 1e-6
    assert relative_error(dgamma, numerical_gradient_array(lambda a: f(x, a, beta), gamma, dy)) < 1e-6
    assert relative_error(dbeta, numerical_gradient_array(lambda a: f(x, gamma, a), beta, dy)) < 1e-6


def test_kernel_and_reference_caches_are_interchangeable():
    x, gamma, beta, rm, rv, dy = make((3, 4, 5, 5), np.float64, True, seed=5)
    _, c_ref = bn._batchnorm2d_forward_reference(x, gamma, beta, rm.copy(), rv.copy(), True, MOMENTUM, EPS)
    _, c_k, _, _ = run_forward("sim", x, gamma, beta, rm, rv, True)
    ref = bn._batchnorm2d_backward_reference(dy, c_k)
    got = LB.batchnorm2d_backward_kernel(dy, c_ref, target="sim")
    want = bn._batchnorm2d_backward_reference(dy, c_ref)
    for g, w, r in zip(got, want, ref):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(r), np.asarray(w), rtol=1e-12, atol=1e-12)


def test_launches_and_dispatch():
    x, gamma, beta, rm, rv, dy = make((2, 3, 4, 4), np.float32, False, seed=6)
    with gpuconv.default_device("sim"), kernels.launch_log() as log:
        y, cache = gpuconv.ops.batchnorm2d_forward(x, gamma, beta, rm, rv, training=True)
        gpuconv.ops.batchnorm2d_backward(dy, cache)
        gpuconv.ops.batchnorm2d_forward(x, gamma, beta, rm, rv, training=False)
    assert log.names == ["batchnorm2d_stats", "batchnorm2d_normalize", "batchnorm2d_backward_sums",
                         "batchnorm2d_backward_dx", "batchnorm2d_eval_inv_std", "batchnorm2d_normalize"]
    assert not kernels.fallbacks(log)


def test_split_geometry_depends_on_the_shape_only():
    grid, block, (s, chunk) = LB.geometry("batchnorm2d_stats", "sim", c=64, count=512 * 32 * 32)
    assert grid == (64, s, 1) and block == (256, 1, 1) and s * chunk >= 512 * 1024 > (s - 1) * chunk
    grid_cl, _, (s_cl, chunk_cl) = LB.geometry("batchnorm2d_stats", "sim", c=64, count=512 * 32 * 32,
                                               channels_last=True)
    assert grid_cl == (2, s_cl, 1) and s_cl <= LB.MAX_SPLITS and s_cl * chunk_cl >= 512 * 1024
    assert LB.geometry("batchnorm2d_stats", "cuda", c=64, count=7)[2] == (1, 7)


@pytest.mark.parametrize("cl", [0, 1], ids=["nchw", "nhwc"])
def test_elementwise_kernels_carry_the_channel_across_grid_strides(cl):
    """A grid smaller than the tensor (2 blocks over 4845 elements): each thread's channel is
    carried from stride to stride without a division; the results are the reference's formulas."""
    rng = np.random.default_rng(7)
    n, c, h, w = 3, 5, 17, 19
    mem_shape = (n, h, w, c) if cl else (n, c, h, w)
    ch = (lambda v: v[None, None, None, :]) if cl else (lambda v: v[None, :, None, None])
    x, dy = (rng.standard_normal(mem_shape).astype(np.float32) for _ in range(2))
    mean, inv, g, b = (rng.uniform(0.5, 2, c).astype(np.float32) for _ in range(4))
    dg, db = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)
    dims = (np.int64(x.size), np.int32(c), np.int32(h * w))
    kernels.launch("batchnorm", "batchnorm2d_normalize", np.float32, "sim", (2, 1, 1), (256, 1, 1),
                   (x, mean, inv, g, b, y) + dims + (np.int32(0), np.int32(cl)))
    xhat = (x - ch(mean)) * ch(inv)
    assert np.array_equal(y, xhat * ch(g) + ch(b))
    count = n * h * w
    kernels.launch("batchnorm", "batchnorm2d_backward_dx", np.float32, "sim", (2, 1, 1), (256, 1, 1),
                   (dy, x, mean, g, b, inv, dg, db, dx) + dims + (np.int32(count), np.int32(1), np.int32(0), np.int32(cl)))
    inv_n = np.float32(1.0 / count)
    want = (dy - ch(db * inv_n) - xhat * ch(dg * inv_n)) * ch(g * inv)
    assert np.array_equal(dx, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grid", [2, 64], ids=["grid-stride", "one-pass"])
@pytest.mark.parametrize("act", [0, 1, 2], ids=["none", "relu", "gelu"])
def test_vec_kernels_give_the_element_kernels_bits(dtype, grid, act):
    """normalize_vec and backward_dx_vec (16 bytes of channels per thread, channels_last) compute
    each element as the element kernels do: the same bits, in training and eval,
    with and without a fused activation.
    C = 40 makes 5 (bf16/fp16), 10 (float32) or 20 (float64) channel groups, so with 2 blocks
    a thread's group changes from stride to stride (its statistics are reloaded then)."""
    rng = np.random.default_rng(8)
    n, c, h, w = 3, 40, 5, 7
    cd = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    x, dy = (rng.standard_normal((n, h, w, c)).astype(dtype) for _ in range(2))
    mean, inv, g, b, dg, db = (rng.uniform(0.5, 2, c).astype(cd) for _ in range(6))
    lanes = 16 // np.dtype(dtype).itemsize
    groups = x.size // lanes
    outs = {}
    for form in ("", "_vec"):
        y, dx0, dx1 = np.empty_like(x), np.empty_like(x), np.empty_like(x)
        size = (np.int64(x.size), np.int32(c), np.int32(h * w)) if not form else (np.int64(groups), np.int32(c))
        tail = (np.int32(1),) if not form else ()
        kernels.launch("batchnorm", "batchnorm2d_normalize" + form, dtype, "sim", (grid, 1, 1), (256, 1, 1),
                       (x, mean, inv, g, b, y) + size + (np.int32(act),) + tail)
        for training, dx in ((1, dx0), (0, dx1)):
            kernels.launch("batchnorm", "batchnorm2d_backward_dx" + form, dtype, "sim", (grid, 1, 1), (256, 1, 1),
                           (dy, x, mean, g, b, inv, dg, db, dx) + size
                           + (np.int32(n * h * w), np.int32(training), np.int32(act)) + tail)
        outs[form] = [a.tobytes() for a in (y, dx0, dx1)]
    assert outs[""] == outs["_vec"]


@pytest.mark.parametrize("c, vec", [(16, True), (12, False)])
def test_the_launcher_takes_the_vec_kernels_where_they_apply(c, vec):
    """channels_last bfloat16 with C a multiple of 8 runs the _vec kernels; C = 12, or NCHW, the
    element kernels; the results agree with the reference either way."""
    x, gamma, beta, rm, rv, dy = make((2, c, 3, 5), BF16, True, seed=9)
    for cl in (True, False):
        xs, dys = (x, dy) if cl else (np.ascontiguousarray(x), np.ascontiguousarray(dy))
        with kernels.launch_log() as log:
            y, cache, _, _ = run_forward("sim", xs, gamma, beta, rm, rv, True)
            dx, _, _ = LB.batchnorm2d_backward_kernel(dys, cache, target="sim")
        names = [n for n in log.names if n.startswith(("batchnorm2d_normalize", "batchnorm2d_backward_dx"))]
        suffix = "_vec" if vec and cl else ""
        assert names == ["batchnorm2d_normalize" + suffix, "batchnorm2d_backward_dx" + suffix]
        ry, rc = bn._batchnorm2d_forward_reference(xs, gamma, beta, rm.copy(), rv.copy(), True, MOMENTUM, EPS)
        np.testing.assert_allclose(f64(y), f64(ry), rtol=2 ** -7, atol=2 ** -7)
        np.testing.assert_allclose(f64(dx), f64(bn._batchnorm2d_backward_reference(dys, rc)[0]), rtol=2 ** -6,
                                   atol=2 ** -6)


@pytest.mark.parametrize("shape", [(2, 8, 3, 5), (2, 1, 3, 5), (3, 8, 1, 1)])
def test_one_shape_in_every_layout_in_turn_keeps_the_reference_results(shape):
    """The launchers remember per shapes, strides and dtypes how they lay out their arrays: one shape
    given channels_last, NCHW, then the backward of an NCHW forward with a channels_last dy (and the
    other way round), in turn, each time agrees with the reference and comes back in the layout of
    the forward's input (shapes with one channel or 1x1 images are both layouts at once)."""
    x, gamma, beta, rm, rv, dy = make(shape, np.float32, True, seed=4)
    nchw = np.ascontiguousarray
    for xs, dys in ((x, dy), (nchw(x), nchw(dy)), (nchw(x), dy), (x, nchw(dy)), (x, dy)):
        y, cache, _, _ = run_forward("sim", xs, gamma, beta, rm, rv, True)
        dx, dg, db = LB.batchnorm2d_backward_kernel(dys, cache, target="sim")
        ry, rc = bn._batchnorm2d_forward_reference(xs, gamma, beta, rm.copy(), rv.copy(), True, MOMENTUM, EPS)
        rdx, rdg, rdb = bn._batchnorm2d_backward_reference(dys, rc)
        for got, want in ((y, ry), (dx, rdx), (dg, rdg), (db, rdb)):
            np.testing.assert_allclose(f64(got), f64(want), rtol=1e-4, atol=1e-4)
        assert layout.is_channels_last(y) == layout.is_channels_last(xs)
