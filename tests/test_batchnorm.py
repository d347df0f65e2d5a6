"""batchnorm2d with PyTorch's semantics: batch stats, in-place running stats, eval mode, gradients."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuconv
from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.ops import batchnorm as bn_mod
from gpuconv.ops import (batchnorm2d_backward, batchnorm2d_forward, gelu_backward, gelu_forward, relu_backward,
                         relu_forward)


def test_hand_values_and_running_update(backend):
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(4, 1, 1, 1)  # mean 2.5, biased var 1.25, unbiased 5/3
    rm, rv = backend.asarray(np.ones(1)), backend.asarray(np.full(1, 2.0))  # old values the update decays
    rm_ref, rv_ref = rm, rv
    y, _ = batchnorm2d_forward(backend.asarray(x), backend.asarray(np.array([2.0])),
                               backend.asarray(np.array([0.5])), rm, rv, momentum=0.1, eps=1e-5)
    np.testing.assert_allclose(backend.asnumpy(y).ravel(), 2 * (x.ravel() - 2.5) / np.sqrt(1.25 + 1e-5) + 0.5,
                               rtol=1e-12)
    assert rm is rm_ref and rv is rv_ref  # updated in place, not rebound
    np.testing.assert_allclose(backend.asnumpy(rm), [0.9 * 1.0 + 0.1 * 2.5], rtol=1e-12)
    np.testing.assert_allclose(backend.asnumpy(rv), [0.9 * 2.0 + 0.1 * 5 / 3], rtol=1e-12)


def test_training_normalizes_per_channel_float32(backend):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 3, 5, 5)) * [[[[3.0]], [[0.5]], [[10.0]]]] + 7).astype(np.float32)
    gamma = np.array([1.0, 2.0, 0.5], np.float32)
    beta = np.array([0.0, -1.0, 3.0], np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    args = [backend.asarray(a) for a in (x, gamma, beta, rm, rv)]
    y, _ = batchnorm2d_forward(*args)
    y = backend.asnumpy(y)
    assert y.dtype == np.float32
    x64 = x.astype(np.float64)
    mean, var = x64.mean((0, 2, 3)), x64.var((0, 2, 3))
    ref = (x64 - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) * gamma[:, None, None] + beta[:, None, None]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(backend.asnumpy(args[3]), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(backend.asnumpy(args[4]), 0.9 + 0.1 * x64.var((0, 2, 3), ddof=1), rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_statistics_and_sums_are_accurate_in_either_layout(backend, channels_last):
    """A mean of 1000 standard deviations over 512x32x32 positions per channel: the variance and the
    backward's sums within a few float32 roundings of float64's, whatever the memory layout (a
    float32 sum that adds the positions one at a time is off by far more there)."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((512, 2, 32, 32)) + 1000).astype(np.float32)
    dy = (rng.standard_normal(x.shape) + 100).astype(np.float32)
    if channels_last:
        x, dy = gpuconv.to_channels_last(x), gpuconv.to_channels_last(dy)
    gamma, beta = np.ones(2, np.float32), np.zeros(2, np.float32)
    rm, rv = np.zeros(2, np.float32), np.zeros(2, np.float32)
    args = [backend.asarray(a) for a in (x, gamma, beta, rm, rv)]
    y, cache = batchnorm2d_forward(*args, True, 1.0, 1e-5)
    x64 = np.asarray(x, np.float64)
    n = x64.size // 2
    np.testing.assert_allclose(backend.asnumpy(args[3]), x64.mean((0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(backend.asnumpy(args[4]), x64.var((0, 2, 3), ddof=1), rtol=2e-3)
    assert abs(float(np.asarray(backend.asnumpy(y), np.float64).std()) - 1) < 2e-3
    _, dgamma, dbeta = batchnorm2d_backward(backend.asarray(dy), cache)
    np.testing.assert_allclose(backend.asnumpy(dbeta), np.asarray(dy, np.float64).sum((0, 2, 3)), rtol=1e-6)
    from gpuconv.ops import conv2d_backward, conv2d_forward
    w = np.zeros((2, 2, 1, 1), np.float32)
    _, ccache = conv2d_forward(args[0], backend.asarray(w), backend.asarray(beta))
    _, _, db = conv2d_backward(backend.asarray(dy), ccache)
    np.testing.assert_allclose(backend.asnumpy(db), np.asarray(dy, np.float64).sum((0, 2, 3)), rtol=1e-6)
    assert n == 512 * 32 * 32


def test_eval_uses_running_stats_and_leaves_them(backend):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 3, 3))
    rm, rv = np.array([0.5, -1.0]), np.array([2.0, 0.25])
    g, b = np.array([1.5, 1.0]), np.array([0.0, 0.1])
    args = [backend.asarray(a.copy()) for a in (x, g, b, rm, rv)]
    y, cache = batchnorm2d_forward(*args, training=False)
    ref = (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5) * g[:, None, None] + b[:, None, None]
    np.testing.assert_allclose(backend.asnumpy(y), ref, rtol=1e-12)
    np.testing.assert_array_equal(backend.asnumpy(args[3]), rm)
    np.testing.assert_array_equal(backend.asnumpy(args[4]), rv)
    dx, _, _ = batchnorm2d_backward(backend.asarray(np.ones_like(x)), cache)
    np.testing.assert_allclose(backend.asnumpy(dx), np.broadcast_to((g / np.sqrt(rv + 1e-5))[:, None, None], x.shape),
                               rtol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_gradients_float64(backend, training):
    rng = np.random.default_rng(2)
    xp = backend.xp
    x = backend.asarray(rng.standard_normal((3, 2, 4, 3)) * 2 + 1)
    gamma = backend.asarray(rng.standard_normal(2))
    beta = backend.asarray(rng.standard_normal(2))
    rm0, rv0 = backend.asarray(rng.standard_normal(2)), backend.asarray(rng.random(2) + 0.5)

    def f(a, g, b):  # fresh running stats per call: the forward updates them in place
        return batchnorm2d_forward(a, g, b, xp.array(rm0), xp.array(rv0), training=training)[0]

    y = f(x, gamma, beta)
    _, cache = batchnorm2d_forward(x, gamma, beta, xp.array(rm0), xp.array(rv0), training=training)
    dy = backend.asarray(rng.standard_normal(y.shape))
    dx, dgamma, dbeta = batchnorm2d_backward(dy, cache)
    assert relative_error(dx, numerical_gradient_array(lambda a: f(a, gamma, beta), x, dy)) < 1e-6
    assert relative_error(dgamma, numerical_gradient_array(lambda a: f(x, a, beta), gamma, dy)) < 1e-6
    assert relative_error(dbeta, numerical_gradient_array(lambda a: f(x, gamma, a), beta, dy)) < 1e-6


def test_training_without_running_stats(backend):
    x = backend.asarray(np.arange(8.0).reshape(2, 1, 2, 2))
    y, _ = batchnorm2d_forward(x, backend.asarray(np.ones(1)), backend.asarray(np.zeros(1)), None, None)
    assert abs(float(backend.asnumpy(y).mean())) < 1e-12


@pytest.mark.parametrize("which", ["running_mean", "running_var"])
def test_read_only_running_stats_are_refused_before_any_update(which):
    """A read-only running statistic (np.broadcast_to, a memory-mapped checkpoint) cannot take
    the in-place update: refused by name on every device, with neither statistic changed (the
    NumPy path used to update running_mean, then fail on running_var inside NumPy; the simulator
    failed inside its launch)."""
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    for device in ("cpu", "sim"):
        stats = {"running_mean": np.zeros(3), "running_var": np.ones(3)}
        stats[which].flags.writeable = False
        with gpuconv.default_device(device), pytest.raises(ValueError, match=f"{which} is read-only.*copy"):
            batchnorm2d_forward(x, np.ones(3), np.zeros(3), stats["running_mean"], stats["running_var"])
        assert np.array_equal(stats["running_mean"], np.zeros(3)) and np.array_equal(stats["running_var"], np.ones(3))
        y, _ = batchnorm2d_forward(x, np.ones(3), np.zeros(3), stats["running_mean"], stats["running_var"],
                                   training=False)  # eval mode only reads them
        assert y.shape == x.shape


@pytest.mark.parametrize("training", [True, False])
def test_no_channels_give_empty_results_everywhere(backend, training):
    """C = 0: the reference's empty arrays (a kernel grid of 0 blocks would be no launch at all)."""
    a = _args(backend, x=np.ones((2, 0, 3, 3), np.float32), gamma=np.ones(0, np.float32), beta=np.zeros(0, np.float32),
              running_mean=np.zeros(0, np.float32), running_var=np.ones(0, np.float32))
    y, cache = batchnorm2d_forward(**a, training=training)
    dx, dgamma, dbeta = batchnorm2d_backward(backend.asarray(np.ones((2, 0, 3, 3), np.float32)), cache)
    assert y.shape == dx.shape == (2, 0, 3, 3) and dgamma.shape == dbeta.shape == (0,)


@pytest.mark.parametrize("shape, dtype, channels_last", [((0, 3, 4, 4), np.float32, False),
                                                   ((2, 3, 0, 4), np.float32, False),
                                                   ((0, 3, 4, 4), ml_dtypes.bfloat16, True),
                                                   ((0, 3, 4, 4), np.float64, False)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_an_empty_batch_gives_an_empty_output_and_leaves_the_running_stats(backend, shape, dtype, channels_last,
                                                                             training, activation):
    """As PyTorch: a batch without values (N = 0, or H = 0) gives an empty output in training and
    eval mode, the running statistics unchanged (no batch statistic to blend in), and its backward
    an empty dx with zero dgamma, dbeta. Before, training refused it: "needs more than 1 value per
    channel ... (N*H*W = 0)"."""
    from gpuconv import layout
    cd = np.float64 if dtype == np.float64 else np.float32
    rm, rv = np.array([0.5, -1.0, 2.0], cd), np.array([2.0, 0.25, 1.0], cd)
    a = _args(backend, x=np.ones(shape, dtype), gamma=np.full(3, 1.5, cd), beta=np.full(3, 0.5, cd),
              running_mean=rm.copy(), running_var=rv.copy())
    if channels_last:
        a["x"] = layout.to_channels_last(a["x"])
    y, cache = batchnorm2d_forward(**a, training=training, activation=activation)
    assert y.shape == shape and y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(backend.asnumpy(a["running_mean"]), rm)
    np.testing.assert_array_equal(backend.asnumpy(a["running_var"]), rv)
    dx, dgamma, dbeta = batchnorm2d_backward(backend.asarray(np.ones(shape, dtype)), cache)
    assert dx.shape == shape and dx.dtype == np.dtype(dtype)
    for g in (dgamma, dbeta):
        assert g.dtype == np.dtype(cd)
        np.testing.assert_array_equal(backend.asnumpy(g), np.zeros(3))


def _args(backend, **over):
    a = dict(x=np.ones((2, 3, 2, 2), np.float32), gamma=np.ones(3, np.float32), beta=np.zeros(3, np.float32),
             running_mean=np.zeros(3, np.float32), running_var=np.ones(3, np.float32))
    a.update(over)
    return {k: backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in a.items()}


@pytest.mark.parametrize("over, exc, match", [
    (dict(x=np.ones((2, 3, 2, 2), np.int16)), TypeError, r"x has dtype int16.*astype\(np.float32\)"),
    (dict(x=np.ones((2, 3, 4), np.float32)), ValueError, r"x must have 4 dimensions"),
    (dict(gamma=np.ones(2, np.float32)), ValueError, r"gamma must have shape \(3,\).*got \(2,\)"),
    (dict(x=np.ones((2, 2, 2, 3), np.float32)), ValueError,  # HWC images: gamma has the last axis's length
     r"gamma must have shape \(2,\).*x looks laid out N, H, W, C .*x\.transpose\(0, 3, 1, 2\).*got \(3,\)"),
    (dict(running_var=np.ones(4, np.float32)), ValueError, r"running_var must have shape \(3,\)"),
    (dict(beta=np.zeros(3)), TypeError, r"beta has dtype float64 but x has dtype float32"),
    (dict(running_var=None, training=False), ValueError, r"eval mode.*running_mean and running_var"),
    (dict(running_var=None), ValueError, r"pass both or neither"),
    (dict(gamma=None), ValueError, r"gamma and beta are required"),
    (dict(momentum=1.5), ValueError, r"momentum must be a number in \[0, 1\].*1\.5"),
    (dict(eps=0.0), ValueError, r"eps must be a positive number"),
    (dict(activation="tanh"), ValueError, r"activation='tanh'.*None \(no activation\), 'relu' or 'gelu'"),
    (dict(x=np.ones((1, 3, 1, 1), np.float32)), ValueError, r"more than 1 value per channel.*N\*H\*W = 1"),
    (dict(training="False"), TypeError, r"training must be True or False, got 'False'"),  # it trained
])
def test_errors_before_work(backend, monkeypatch, over, exc, match):
    monkeypatch.setattr(bn_mod, "_batchnorm2d_forward_reference", lambda *a: pytest.fail("ran before checks"))
    with pytest.raises(exc, match=match):
        batchnorm2d_forward(**_args(backend, **over))


def test_backward_rejects_wrong_dy(backend):
    _, cache = batchnorm2d_forward(**_args(backend))
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(2, 3, 2, 2\)"):
        batchnorm2d_backward(backend.asarray(np.ones((2, 3, 2), np.float32)), cache)
    for dt in (np.float64, ml_dtypes.bfloat16, np.float16):  # bf16/fp16 share float32's compute dtype, not x's
        with pytest.raises(TypeError, match=rf"dy has dtype {np.dtype(dt)} but the forward's output had dtype float32"):
            batchnorm2d_backward(backend.asarray(np.ones((2, 3, 2, 2), dt)), cache)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_the_cache_keeps_x_and_the_mean_not_a_float32_xhat(backend, channels_last, training):
    """A bfloat16 forward keeps x (2 bytes an element) and per-channel float32 vectors, not a float32
    xhat (4 bytes an element): the backward recomputes xhat as the forward computed it. The mean an
    eval forward keeps is a copy: the running statistics changing before the backward (another
    training forward) leave its results alone."""
    rng = np.random.default_rng(11)
    shape, c = (4, 16, 3, 5), 16
    x = (rng.standard_normal(shape) * 3 + 2).astype(ml_dtypes.bfloat16)
    dy = rng.standard_normal(shape).astype(ml_dtypes.bfloat16)
    if channels_last:
        x, dy = gpuconv.to_channels_last(x), gpuconv.to_channels_last(dy)
    gamma, beta = rng.uniform(0.5, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    rm, rv = rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
    results = []
    for change_running in (False, True):
        params = [backend.asarray(a.copy()) for a in (gamma, beta, rm, rv)]
        _, cache = batchnorm2d_forward(backend.asarray(x), *params, training=training, activation="relu")
        kept = [a for a in cache if hasattr(a, "nbytes")]
        assert cache.x.dtype == x.dtype and cache.mean.dtype == np.float32
        assert sum(a.nbytes for a in kept) == x.nbytes + 4 * c * 4  # x; mean, gamma, inv_std, beta
        if change_running:
            params[2] += 1
            params[3] *= 2
        results.append([backend.asnumpy(a).tobytes() for a in batchnorm2d_backward(backend.asarray(dy), cache)])
    assert results[0] == results[1]


# ----------------------------------------------------------------------------- fused activation
ACT_OPS = {"relu": (relu_forward, relu_backward), "gelu": (gelu_forward, gelu_backward)}


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("dtype, channels_last", [(np.float32, False), (np.float64, False),
                                                  (ml_dtypes.bfloat16, True), (ml_dtypes.bfloat16, False),
                                                  (np.float16, True)])
@pytest.mark.parametrize("training", [True, False])
def test_fused_activation_gives_the_separate_ops_bits(backend, activation, dtype, channels_last, training):
    """batch norm with ``activation`` is BatchNorm2d followed by the activation op, bit for bit:
    y, the running statistics, dx, dgamma and dbeta (on 'sim' and 'cupy' the fused kernels
    against the separate kernels; 16 channels: the _vec kernels in channels_last bf16/fp16)."""
    rng = np.random.default_rng(10)
    shape = (3, 16, 5, 7)
    cd = np.float64 if dtype == np.float64 else np.float32
    x = (rng.standard_normal(shape) * 2 + 0.3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    g, b = rng.uniform(0.5, 2, 16).astype(cd), rng.standard_normal(16).astype(cd)
    rm, rv = rng.standard_normal(16).astype(cd), rng.uniform(0.5, 2, 16).astype(cd)
    put = (lambda a: gpuconv.to_channels_last(backend.asarray(a))) if channels_last else backend.asarray
    stats = [backend.asarray(rm.copy()), backend.asarray(rv.copy())], [backend.asarray(rm.copy()), backend.asarray(rv.copy())]
    y, cache = batchnorm2d_forward(put(x), backend.asarray(g), backend.asarray(b), *stats[0], training=training,
                                   activation=activation)
    z, bn_cache = batchnorm2d_forward(put(x), backend.asarray(g), backend.asarray(b), *stats[1], training=training)
    forward, backward = ACT_OPS[activation]
    want_y, act_cache = forward(z)
    dx, dg, db = batchnorm2d_backward(put(dy), cache)
    want = batchnorm2d_backward(backward(put(dy), act_cache), bn_cache)
    for got, exp in zip((y, *stats[0], dx, dg, db), (want_y, *stats[1], *want)):
        got, exp = backend.asnumpy(got), backend.asnumpy(exp)
        assert got.dtype == exp.dtype and got.tobytes() == np.ascontiguousarray(exp).tobytes()
    assert gpuconv.is_channels_last(y) == gpuconv.is_channels_last(dx) == channels_last
    backend.assert_kernels_ran("batchnorm2d_normalize", "batchnorm2d_backward_dx")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
@pytest.mark.parametrize("training", [True, False])
def test_fused_activation_gradients_float64(backend, training, activation, channels_last):
    """Each mode and fused activation against central differences in float64, in both layouts
    (channels_last: x's NHWC memory perturbed in place; dx keeps the layout)."""
    rng = np.random.default_rng(11)
    xp = backend.xp
    put = (lambda a: gpuconv.to_channels_last(backend.asarray(a))) if channels_last else backend.asarray
    x = put(rng.standard_normal((3, 2, 4, 3)) * 2 + 1)
    gamma, beta = backend.asarray(rng.standard_normal(2)), backend.asarray(rng.standard_normal(2))
    rm0, rv0 = backend.asarray(rng.standard_normal(2)), backend.asarray(rng.random(2) + 0.5)

    def f(a, g, b):
        return batchnorm2d_forward(a, g, b, xp.array(rm0), xp.array(rv0), training=training, activation=activation)[0]

    _, cache = batchnorm2d_forward(x, gamma, beta, xp.array(rm0), xp.array(rv0), training=training,
                                   activation=activation)
    dy = put(rng.standard_normal(x.shape))
    dx, dgamma, dbeta = batchnorm2d_backward(dy, cache)
    assert gpuconv.is_channels_last(dx) == channels_last
    if channels_last:  # gradcheck perturbs x through its C-contiguous NHWC memory
        num = numerical_gradient_array(lambda a: f(a.transpose(gpuconv.layout.NCHW), gamma, beta),
                                       gpuconv.layout.nhwc(x), dy).transpose(gpuconv.layout.NCHW)
    else:
        num = numerical_gradient_array(lambda a: f(a, gamma, beta), x, dy)
    assert relative_error(dx, num) < 1e-6
    assert relative_error(dgamma, numerical_gradient_array(lambda a: f(x, a, beta), gamma, dy)) < 1e-6
    assert relative_error(dbeta, numerical_gradient_array(lambda a: f(x, gamma, a), beta, dy)) < 1e-6


def test_checks_passed_are_memoized_by_signature_and_errors_never(monkeypatch):
    """The forward's argument checks run once per signature (the arrays' type, shape and dtype, the
    other arguments' values); a call that breaks a rule is refused every time, a value equal to a
    passing one included (training=1 equals True), and the running statistics' write access, which
    no signature holds, is checked at every call."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3, 2, 2))
    g, b = np.ones(3), np.zeros(3)
    bn_mod._CHECKED.clear()
    runs = []
    real = bn_mod._check_args
    monkeypatch.setattr(bn_mod, "_check_args", lambda *a: runs.append(a) or real(*a))
    rm, rv = np.zeros(3), np.ones(3)
    y1, _ = batchnorm2d_forward(x, g, b, rm, rv)
    y2, _ = batchnorm2d_forward(x, g, b, rm.copy(), rv.copy())
    assert len(runs) == 1 and np.array_equal(y1, y2)
    frozen = np.broadcast_to(np.zeros(3), (3,))
    for _ in range(2):
        with pytest.raises(ValueError, match="running_mean is read-only"):
            batchnorm2d_forward(x, g, b, frozen, np.ones(3))
        with pytest.raises(TypeError, match="training must be True or False"):
            batchnorm2d_forward(x, g, b, np.zeros(3), np.ones(3), training=1)
        with pytest.raises(ValueError, match="momentum must be a number in"):
            batchnorm2d_forward(x, g, b, np.zeros(3), np.ones(3), momentum=1.5)
        with pytest.raises(TypeError, match="gamma has dtype float32"):
            batchnorm2d_forward(x, g.astype(np.float32), b, np.zeros(3), np.ones(3))
        with pytest.raises(ValueError, match="needs more than 1 value per channel"):
            batchnorm2d_forward(x[:1, :, :1, :1], g, b, np.zeros(3), np.ones(3))
    assert batchnorm2d_forward(x, g, b, frozen, np.ones(3), training=False)[0].shape == x.shape  # eval: no update


@pytest.mark.parametrize("block_bytes", [200, 2000], ids=["channel-blocks", "image-blocks"])
@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("training", [True, False])
def test_the_blocked_numpy_path_across_blocks(monkeypatch, block_bytes, activation, training):
    """The NumPy path's blocks (gpuconv/ops/_batchnorm_blocked.py) cover the batch whole: blocks of
    a few channels of one image, or of whole images, the last one short; y, dx, dgamma, dbeta and
    the running statistics against the formulas in float64, and the float32 step within rounding."""
    from gpuconv.ops import _batchnorm_blocked
    monkeypatch.setattr(_batchnorm_blocked, "BLOCK_BYTES", block_bytes)
    ran = []
    for name in ("forward", "backward"):  # (the reference runs this path for these arrays)
        fn = getattr(_batchnorm_blocked, name)
        monkeypatch.setattr(_batchnorm_blocked, name, lambda *a, _fn=fn, _name=name: ran.append(_name) or _fn(*a))
    rng = np.random.default_rng(12)
    shape, c = (5, 7, 3, 4), 7  # float64: 200 bytes, 2 channels a block (4 an image); 2000, 2 images (3 blocks)
    x, dy = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(shape)
    gamma, beta = rng.uniform(0.5, 2, c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    assert len(_batchnorm_blocked._blocks((5, c, 12), 8)) == (20 if block_bytes == 200 else 3)
    per = lambda v: v.reshape(1, -1, 1, 1)  # noqa: E731
    mean, var = (x.mean((0, 2, 3)), x.var((0, 2, 3))) if training else (rm, rv)
    xhat = (x - per(mean)) / np.sqrt(per(var) + 1e-5)
    z = xhat * per(gamma) + per(beta)
    g = dy * (z > 0) if activation else dy
    db, dg = g.sum((0, 2, 3)), (g * xhat).sum((0, 2, 3))
    dxhat = g * per(gamma) / np.sqrt(per(var) + 1e-5)
    dx = dxhat - per(db * gamma / np.sqrt(var + 1e-5) / 60) - xhat * per(dg * gamma / np.sqrt(var + 1e-5) / 60) \
        if training else dxhat
    for dt, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        stats = [rm.astype(dt), rv.astype(dt)]
        y, cache = bn_mod._batchnorm2d_forward_reference(x.astype(dt), gamma.astype(dt), beta.astype(dt), *stats,
                                                         training, 0.1, 1e-5, activation)
        got = (y, *bn_mod._batchnorm2d_backward_reference(dy.astype(dt), cache), *stats)
        want = (np.maximum(z, 0) if activation else z, dx, dg, db,
                0.9 * rm + 0.1 * mean if training else rm, 0.9 * rv + 0.1 * var * 60 / 59 if training else rv)
        for a, b in zip(got, want):
            assert a.dtype == dt and a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.max(np.abs(b)))
    assert ran == ["forward", "backward"] * 2


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(2, 7, 1, 1), (300, 1, 1, 1), (40, 3, 1, 1), (3, 4, 2, 3), (2, 1, 5, 5)])
def test_a_batch_of_one_block_runs_whole_with_the_blocks_bits(dtype, shape):
    """A batch within BLOCK_BYTES runs the one-block functions (the whole arrays, no blocks' bookkeeping):
    bit for bit the blocked loops' results (forward with the batch's statistics and with given ones, ReLU or
    none; backward in training and eval), signed zeros of dy and a constant channel included."""
    from gpuconv.ops import _batchnorm_blocked as blk
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    if shape[1] > 1:  # (one channel: its sums of many values, pairwise along the batch)
        x[:, 0] = 1.5  # a channel without variance
        dy[:, -1] = -0.0  # its sums are -0 before the blocks' zeros take them
    c = shape[1]
    gamma, beta = rng.uniform(0.5, 2, c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    assert x.nbytes <= blk.BLOCK_BYTES and len(blk._blocks((shape[0], c, shape[2] * shape[3]), x.itemsize)) == 1

    def same(a, b):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            assert u.dtype == v.dtype and u.shape == v.shape and u.tobytes() == v.tobytes()
    for relu in (False, True):
        for stats in ((None, None), (rm, rv)):
            fwd = blk._forward_whole(x, *stats, 1e-5, gamma, beta, relu)
            same(fwd, blk._forward_blocks(x, *stats, 1e-5, gamma, beta, relu))
            _, mean, _, inv_std = fwd
            for training in (True, False):
                args = (dy, x, mean, inv_std, gamma, beta, relu, training)
                same(blk._backward_whole(*args), blk._backward_blocks(*args))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.tuples(st.integers(2, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
       seed=st.integers(0, 2**16))
def test_training_properties_over_shapes(backend, shape, seed):
    """Training mode, float64, any shape: y has each channel's mean beta (a shift of x per channel
    leaves y as it is), dbeta = sum(dy), dgamma = <dy, x_hat>, and dx sums to 0 over each channel."""
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    x = rng.standard_normal(shape)
    gamma, beta = rng.uniform(0.5, 2.0, c), rng.standard_normal(c)

    def forward(x_):
        stats = [backend.asarray(np.zeros(c)), backend.asarray(np.ones(c))]
        return batchnorm2d_forward(backend.asarray(x_), backend.asarray(gamma), backend.asarray(beta), *stats)

    y, cache = forward(x)
    y = backend.asnumpy(y)
    shifted, _ = forward(x + 5.0 * rng.standard_normal(c)[None, :, None, None])
    np.testing.assert_allclose(backend.asnumpy(shifted), y, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), beta, rtol=1e-9, atol=1e-9)
    dy = rng.standard_normal(shape)
    dx, dgamma, dbeta = (backend.asnumpy(a) for a in batchnorm2d_backward(backend.asarray(dy), cache))
    xhat = (y - beta[None, :, None, None]) / gamma[None, :, None, None]
    np.testing.assert_allclose(dbeta, dy.sum(axis=(0, 2, 3)), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dgamma, (dy * xhat).sum(axis=(0, 2, 3)), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dx.sum(axis=(0, 2, 3)), 0.0, atol=1e-9 * (1 + np.abs(dy).sum()))
