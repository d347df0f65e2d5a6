"""groupnorm with PyTorch's semantics: per-(sample, group) statistics, biased variance, per-channel
weight and bias; the NumPy reference, the kernels (kernels/groupnorm.cu) on the simulator and on a
GPU when one answers, and the GroupNorm layer."""
from __future__ import annotations

import inspect

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuconv
from gpuconv import kernels, layout, nn
from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.ops import _launch_groupnorm as LG
from gpuconv.ops import groupnorm as gn
from gpuconv.ops import groupnorm_backward, groupnorm_forward

BF16 = ml_dtypes.bfloat16
DTYPES = [pytest.param(np.float64, id="f64"), pytest.param(np.float32, id="f32"), pytest.param(BF16, id="bf16"),
          pytest.param(np.float16, id="f16")]
LAYOUTS = [pytest.param(False, id="nchw"), pytest.param(True, id="nhwc")]
EPS = 1e-5


def f64(a):
    return np.asarray(a.get() if hasattr(a, "get") else a, np.float64)


def compute(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def make(shape, dtype, cl, seed=0, loc=2.0, scale=3.0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = rng.uniform(0.5, 2, c).astype(compute(dtype)), rng.standard_normal(c).astype(compute(dtype))
    if cl:
        x, dy = gpuconv.to_channels_last(x), gpuconv.to_channels_last(dy)
    return x, w, b, dy


def formula(x, g, w=None, b=None, dy=None, eps=EPS):
    """float64 group norm and, given dy, its gradients, written from the definition."""
    x = f64(x)
    n, c = x.shape[:2]
    rows = x.reshape(n, g, -1)
    mean, var = rows.mean(2, keepdims=True), rows.var(2, keepdims=True)
    xhat = ((rows - mean) / np.sqrt(var + eps)).reshape(x.shape)
    per = (lambda v: np.asarray(v, np.float64).reshape((1, c) + (1,) * (x.ndim - 2)))
    w64, b64 = (np.ones(c) if w is None else w), (np.zeros(c) if b is None else b)
    y = xhat * per(w64) + per(b64)
    if dy is None:
        return y
    dy = f64(dy)
    axes = (0,) + tuple(range(2, x.ndim))
    dxhat = (dy * per(w64)).reshape(n, g, -1)
    xh = xhat.reshape(n, g, -1)
    dx = (dxhat - dxhat.mean(2, keepdims=True) - xh * (dxhat * xh).mean(2, keepdims=True)) / np.sqrt(var + eps)
    return y, dx.reshape(x.shape), (dy * xhat).sum(axes), dy.sum(axes)


def tolerance(dtype, m):
    """Per-element bound against float64: the storage dtype's one rounding (relative) and the
    accumulator's errors over a group's m values (absolute, relative to the normalized scale)."""
    storage = {np.dtype(BF16): 2.0 ** -8, np.dtype(np.float16): 2.0 ** -11}.get(np.dtype(dtype), 0.0)
    acc = 2.0 ** -53 if np.dtype(dtype) == np.float64 else 2.0 ** -24
    return storage, 64 * m * acc + 2 * storage


def close(got, want, dtype, m):
    rel, ab = tolerance(dtype, m)
    got = f64(got)
    assert got.shape == want.shape
    err = np.abs(got - want) - (rel * np.abs(want) + ab * (1 + np.abs(want).max()))
    assert err.max() <= 0, f"off by {np.abs(got - want).max()}"


@pytest.mark.parametrize("cl", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, groups", [((2, 6, 5, 3), 3), ((3, 4, 2, 2), 1), ((2, 4, 3, 3), 4),
                                           ((1, 64, 3, 2), 8), ((2, 6, 1, 1), 2), ((40, 72, 1, 2), 1),
                                           ((1, 40, 13, 11), 4), ((1, 2, 47, 47), 1)])
def test_forward_and_backward_against_float64(backend, shape, groups, dtype, cl):
    """(40, 72, 1, 2) in one group: the warp-level sums stride over more than 32 samples and
    channels; (1, 40, 13, 11) channels_last and (1, 2, 47, 47) in either layout: a sample's pixels split
    over several blocks of the per-channel sums, the last split shorter."""
    x, w, b, dy = make(shape, dtype, cl)
    y, cache = groupnorm_forward(backend.asarray(x), groups, backend.asarray(w), backend.asarray(b))
    dx, dw, db = groupnorm_backward(backend.asarray(dy), cache)
    backend.assert_kernels_ran("groupnorm_group_stats", "groupnorm_backward_dx")
    y64, dx64, dw64, db64 = formula(x, groups, w, b, dy)
    m = shape[1] // groups * shape[2] * shape[3]
    assert y.dtype == dx.dtype == np.dtype(dtype) and dw.dtype == db.dtype == compute(dtype)
    assert cache.mean.shape == cache.rstd.shape == (shape[0], groups) and cache.mean.dtype == compute(dtype)
    assert layout.is_channels_last(y) == layout.is_channels_last(dx) == (cl and shape[1] > 1 < shape[2] * shape[3])
    close(y, y64, dtype, m)
    close(dx, dx64, dtype, m)
    close(dw, dw64, compute(dtype), m * shape[0])
    close(db, db64, compute(dtype), m * shape[0])


@pytest.mark.parametrize("cl", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_follow_the_precision_rule_and_the_reference(dtype, cl):
    """On the simulator: statistics within rounding of the reference's, y exactly the reference's
    arithmetic on the kernels' own statistics rounded once to x's dtype, the gradients within
    rounding of the reference's; a kernel cache and a reference cache are interchangeable."""
    x, w, b, dy = make((2, 8, 5, 7), dtype, cl, seed=1)
    y, cache = LG.groupnorm_forward_kernel(x, 4, w, b, EPS, target="sim")
    ry, rcache = gn._groupnorm_forward_reference(x, 4, w, b, EPS)
    np.testing.assert_allclose(f64(cache.mean), f64(rcache.mean), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f64(cache.rstd), f64(rcache.rstd), rtol=1e-5)
    want = (gn.normalized(cache) * w[None, :, None, None] + b[None, :, None, None]).astype(dtype)
    assert y.dtype == want.dtype and np.array_equal(f64(y), f64(want))
    for c_from, c_to in ((cache, rcache), (rcache, cache)):
        got = LG.groupnorm_backward_kernel(dy, c_from, target="sim")
        ref = gn._groupnorm_backward_reference(dy, c_to)
        for g, r in zip(got, ref):
            close(g, f64(r), dtype if g.shape == dy.shape else compute(dtype), 70)


@pytest.mark.parametrize("cl", LAYOUTS)
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_gradients_float64(backend, groups, cl):
    x, w, b, dy = make((2, 4, 3, 2), np.float64, cl, seed=2)
    xs, ws, bs, dys = map(backend.asarray, (x, w, b, dy))

    def f(a, ww, bb):
        return backend.asnumpy(groupnorm_forward(backend.asarray(a), groups, backend.asarray(ww),
                                                 backend.asarray(bb))[0])

    _, cache = groupnorm_forward(xs, groups, ws, bs)
    dx, dw, db = map(backend.asnumpy, groupnorm_backward(dys, cache))
    assert relative_error(dx, numerical_gradient_array(lambda a: f(a, w, b), np.array(x), dy)) < 1e-6
    assert relative_error(dw, numerical_gradient_array(lambda a: f(x, a, b), w.copy(), dy)) < 1e-6
    assert relative_error(db, numerical_gradient_array(lambda a: f(x, w, a), b.copy(), dy)) < 1e-6


@pytest.mark.parametrize("shape, groups, weighted, biased", [((2, 4, 5), 2, True, False), ((3, 6), 1, False, True),
                                                             ((2, 6, 2, 2), 3, False, False)],
                         ids=["3d-weight-only", "2d-bias-only", "4d-neither"])
def test_gradients_float64_without_weight_or_bias_and_other_ranks(backend, shape, groups, weighted, biased):
    """weight or bias None (the layer's bias=False and affine=False) on (N, C, L) and (N, C) inputs:
    dx and the gradient that is there against central differences, and None for the one that is not."""
    rng = np.random.default_rng(5)
    x, dy = (backend.asarray(rng.standard_normal(shape) * 2 + 1) for _ in range(2))
    w = backend.asarray(rng.standard_normal(shape[1])) if weighted else None
    b = backend.asarray(rng.standard_normal(shape[1])) if biased else None
    _, cache = groupnorm_forward(x, groups, w, b)
    dx, dw, db = groupnorm_backward(dy, cache)
    assert (dw is None) != weighted and (db is None) != biased
    backend.assert_kernels_ran("groupnorm_group_stats", "groupnorm_backward_dx")
    checks = [("dx", dx, numerical_gradient_array(lambda a: groupnorm_forward(a, groups, w, b)[0], x, dy))]
    if weighted:
        checks.append(("dweight", dw, numerical_gradient_array(lambda a: groupnorm_forward(x, groups, a, b)[0], w, dy)))
    if biased:
        checks.append(("dbias", db, numerical_gradient_array(lambda a: groupnorm_forward(x, groups, w, a)[0], b, dy)))
    for name, got, want in checks:
        err = relative_error(f64(got), f64(want))
        assert err < 1e-6, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("cl", LAYOUTS)
def test_layer_gradients_float64(backend, cl):
    """The layer's dx and weight gradient (bias=False) against central differences in float64."""
    from test_layers import check_layer_gradients
    with gpuconv.default_device(backend.device):
        layer = nn.GroupNorm(2, 4, bias=False)
    layer.weight.data[...] = backend.asarray(np.array([0.5, -1.0, 2.0, 1.5], np.float32))
    check_layer_gradients(layer, np.random.default_rng(6).standard_normal((2, 4, 2, 3)), backend, channels_last=cl)


@pytest.mark.parametrize("shape, groups, affine", [((2, 6, 5, 3), 3, True), ((3, 4, 2, 2), 1, True),
                                                   ((3, 4, 2, 2), 4, True), ((2, 8, 7), 2, True),
                                                   ((2, 4), 2, False), ((2, 6, 4, 4), 2, False)])
def test_equals_torch_group_norm_float64(backend, shape, groups, affine):
    torch = pytest.importorskip("torch", reason="PyTorch is optional: the comparison with F.group_norm needs it")
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal(shape) * 3 + 2, rng.standard_normal(shape)
    w, b = (rng.standard_normal(shape[1]), rng.standard_normal(shape[1])) if affine else (None, None)
    y, cache = groupnorm_forward(backend.asarray(x), groups, backend.asarray(w), backend.asarray(b), 1e-5)
    dx, dw, db = groupnorm_backward(backend.asarray(dy), cache)
    X = torch.tensor(x, requires_grad=True)
    W, B = ((torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)) if affine else (None, None))
    Y = torch.nn.functional.group_norm(X, groups, W, B, 1e-5)
    Y.backward(torch.tensor(dy))
    np.testing.assert_allclose(backend.asnumpy(y), Y.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backend.asnumpy(dx), X.grad.numpy(), rtol=1e-10, atol=1e-12)
    if affine:
        np.testing.assert_allclose(backend.asnumpy(dw), W.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(backend.asnumpy(db), B.grad.numpy(), rtol=1e-10, atol=1e-12)
    else:
        assert dw is None and db is None


def test_layer_norm_and_instance_norm_special_cases(backend):
    """GroupNorm(1, C) normalizes each sample over (C, H, W), as LayerNorm([C, H, W]) without its
    elementwise affine; GroupNorm(C, C) each (sample, channel) over (H, W), as InstanceNorm2d."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 5, 2)) * [[[[1.0]], [[5.0]], [[0.2]], [[3.0]]]] + 7
    y1 = backend.asnumpy(nn.GroupNorm(1, 4, affine=False, dtype=np.float64)(backend.asarray(x)))
    mean, var = x.mean((1, 2, 3), keepdims=True), x.var((1, 2, 3), keepdims=True)
    np.testing.assert_allclose(y1, (x - mean) / np.sqrt(var + EPS), rtol=1e-12, atol=1e-12)
    y4 = backend.asnumpy(nn.GroupNorm(4, 4, affine=False, dtype=np.float64)(backend.asarray(x)))
    mean, var = x.mean((2, 3), keepdims=True), x.var((2, 3), keepdims=True)
    np.testing.assert_allclose(y4, (x - mean) / np.sqrt(var + EPS), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cl", LAYOUTS)
def test_a_large_mean_stays_accurate_in_float32(backend, cl):
    """1000 + noise of 0.01: the two-pass variance stays within float32's rounding (E[x^2] - mean^2
    would lose every digit of a variance of 1e-4: E[x^2] = 1e6 has a spacing of 0.06), and y is
    off by no more than the float32 mean's own rounding allows: 2^-24 * 1000 is 0.006 standard
    deviations."""
    rng = np.random.default_rng(5)
    x = (1000 + 0.01 * rng.standard_normal((2, 8, 16, 16))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    if cl:
        x, dy = gpuconv.to_channels_last(x), gpuconv.to_channels_last(dy)
    w, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    y, cache = groupnorm_forward(backend.asarray(x), 2, backend.asarray(w), backend.asarray(b))
    dx, _, _ = groupnorm_backward(backend.asarray(dy), cache)
    y64, dx64, _, _ = formula(x, 2, w, b, dy)  # of the float32 x as given
    std = f64(x).reshape(2, 2, -1).std(2)
    np.testing.assert_allclose(f64(backend.asnumpy(cache.rstd)), 1 / np.sqrt(std ** 2 + EPS), rtol=1e-3)
    bound = 4 * 2.0 ** -24 * 1000 / std.min()  # a few roundings of the mean, in standard deviations
    np.testing.assert_allclose(backend.asnumpy(y), y64, rtol=0, atol=bound)
    np.testing.assert_allclose(backend.asnumpy(dx) / 100, dx64 / 100, rtol=0, atol=bound)  # dx ~ rstd = 100


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cl", LAYOUTS)
def test_kernels_deterministic_in_either_simulator_order(cl, dtype):
    """The same bits in either thread order of the simulator (the sums' fixed order is kept by
    barriers, not by the order threads run in), with blocks of several chunks per group."""
    x, w, b, dy = make((2, 4, 48, 48), dtype, cl, seed=6)
    assert LG.geometry("groupnorm_normalize", n=2, c=4, groups=2, hw=48 * 48)[0][1] == 2
    outs = []
    for order in ("forward", "reverse"):
        with kernels.sim_schedule(order):
            y, cache = LG.groupnorm_forward_kernel(x, 2, w, b, EPS, target="sim")
            dx, dw, db = LG.groupnorm_backward_kernel(dy, cache, target="sim")
        outs.append([np.ascontiguousarray(a).tobytes() for a in (y, cache.mean, cache.rstd, dx, dw, db)])
    assert outs[0] == outs[1]


def test_a_small_batch_spreads_its_sums_over_the_gpu():
    """GroupNorm's use is the small batch: a batch of 2 with 64 channels of 56 x 56 gives the
    per-(sample, channel) sums at least a block per SM of an H100 (132) in either layout (one
    block per sample and channel gave 128 NCHW, one per sample and 32 channels 4 channels_last),
    each split no longer than needed and none empty; a large batch is not split."""
    for cl in (False, True):
        for kernel in ("groupnorm_channel_stats", "groupnorm_backward_sums"):
            grid, _, (span,) = LG.geometry(kernel, n=2, c=64, groups=32, hw=56 * 56, channels_last=cl)
            assert grid[0] * grid[1] >= 132 and (grid[1] - 1) * span < 56 * 56 <= grid[1] * span, (cl, grid, span)
        grid, _, (span,) = LG.geometry("groupnorm_channel_stats", n=512, c=64, groups=32, hw=56 * 56,
                                       channels_last=cl)
        assert grid[1] == 1 and span == 56 * 56


@pytest.mark.parametrize("shape", [(256, 64), (256, 64, 1, 1)])
def test_features_without_pixels_take_a_block_per_32_channels(shape):
    """(N, C) features and 1 x 1 maps (the same memory in either layout) have one value per
    (sample, channel): the per-channel sums take 32 channels a block, lane = channel (a block per
    (sample, channel) had 255 of its 256 threads idle, N * C blocks), and give the same values."""
    x, w, b, dy = make(shape, np.float32, False, seed=11)
    with gpuconv.default_device("sim"), kernels.launch_log() as log:
        y, cache = groupnorm_forward(x, 8, w, b)
        dx, dw, db = groupnorm_backward(dy, cache)
    grids = {r.name: r.grid for r in log if r.name in ("groupnorm_channel_stats", "groupnorm_backward_sums")}
    assert grids == {k: (256 * 2, 1, 1) for k in ("groupnorm_channel_stats", "groupnorm_backward_sums")}, grids
    y64, dx64, dw64, db64 = formula(x, 8, w, b, dy)
    close(y, y64, np.float32, 8)
    close(dx, dx64, np.float32, 8)
    close(dw, dw64, np.float32, 8 * 256)
    assert y.shape == dx.shape == shape and not layout.is_channels_last(y.reshape(256, 64, 1, 1))


def test_launches_and_dispatch():
    x, w, b, dy = make((2, 4, 3, 3), np.float32, False, seed=7)
    with gpuconv.default_device("sim"), kernels.launch_log() as log:
        y, cache = groupnorm_forward(x, 2, w, b)
        groupnorm_backward(dy, cache)
    assert log.names == ["groupnorm_channel_stats", "groupnorm_group_stats", "groupnorm_normalize",
                         "groupnorm_backward_sums",
                         "groupnorm_backward_reduce", "groupnorm_backward_dx"]
    assert not kernels.fallbacks(log)


@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 4, 0, 3), (0, 4), (0, 4, 5)])
def test_an_empty_batch_gives_empty_results(backend, shape):
    x = backend.asarray(np.zeros(shape, np.float32))
    w, b = backend.asarray(np.ones(4, np.float32)), backend.asarray(np.zeros(4, np.float32))
    y, cache = groupnorm_forward(x, 2, w, b)
    dx, dw, db = groupnorm_backward(backend.asarray(np.zeros(shape, np.float32)), cache)
    assert y.shape == dx.shape == shape and not backend.asnumpy(dw).any() and not backend.asnumpy(db).any()


@pytest.mark.parametrize("call, exc, match", [
    (lambda x, w: groupnorm_forward(x, 3, w, w), ValueError, r"num_channels \(4\) must be divisible by num_groups "
                                                             r"\(3\).*divisors of 4 \(1, 2, 4\)"),
    (lambda x, w: groupnorm_forward(x, 0, w, w), ValueError, "num_groups must be a positive int"),
    (lambda x, w: groupnorm_forward(x, 2.0, w, w), ValueError, "num_groups must be a positive int"),
    (lambda x, w: groupnorm_forward(x, 2, w[:3], w), ValueError, r"weight must have shape \(4,\)"),
    (lambda x, w: groupnorm_forward(x, 2, w, w, eps=0), ValueError, "eps must be a positive number"),
    (lambda x, w: groupnorm_forward(np.ones((2, 3, 3, 4), np.float32), 2, w, w), ValueError,
     r"x looks laid out N, H, W, C .* x.transpose\(0, 3, 1, 2\)"),
    (lambda x, w: groupnorm_forward(x[0, 0, 0], 2, w, w), ValueError, "at least 2 dimensions"),
    (lambda x, w: groupnorm_forward(x.astype(BF16), 2, w.astype(BF16), None), TypeError,
     "weight must be float32 for a bfloat16 x"),
    (lambda x, w: groupnorm_backward(x[:1], groupnorm_forward(x, 2, w, w)[1]), ValueError,
     "dy must have the forward output's shape"),
    (lambda x, w: groupnorm_backward(x.astype(np.float64), groupnorm_forward(x, 2, w, w)[1]), TypeError,
     "dy has dtype float64 but the forward's output had dtype float32"),
    (lambda x, w: groupnorm_backward(x, (x,)), TypeError, "cache must be the .*GroupNormCache that groupnorm_forward"),
])
def test_errors_before_work(call, exc, match):
    x, w = np.ones((2, 4, 3, 3), np.float32), np.ones(4, np.float32)
    with pytest.raises(exc, match=match):
        call(x, w)


@pytest.mark.parametrize("shape, groups", [((1, 4), 4), ((1, 4, 1, 1), 4), ((1, 6, 1), 6)])
def test_a_batch_of_one_value_per_group_is_refused_as_torch(backend, shape, groups):
    """One sample whose every group holds a single value: each normalizes to 0, so y would be the
    bias whatever x (and dx zero); F.group_norm refuses it ("Expected more than 1 value per
    channel"), and so does the op, on every path, before any work; two samples are accepted, as
    PyTorch accepts them."""
    x = backend.asarray(np.arange(np.prod(shape), dtype=np.float32).reshape(shape))
    w = backend.asarray(np.ones(shape[1], np.float32))
    with pytest.raises(ValueError, match=r"more than 1 value per group.*one value per \(sample, group\).*"
                                         r"fewer groups"):
        groupnorm_forward(x, groups, w, w)
    with gpuconv.default_device(backend.device), pytest.raises(ValueError, match="more than 1 value per group"):
        nn.GroupNorm(groups, shape[1])(x)
    assert backend.launches.names == []
    y, _ = groupnorm_forward(backend.asarray(np.ones((2,) + shape[1:], np.float32)), groups, w, w)
    assert y.shape == (2,) + shape[1:]


def test_layer_state_dict_repr_and_errors_as_torch():
    m = nn.GroupNorm(2, 4)
    assert list(m.state_dict()) == ["weight", "bias"]
    assert repr(m) == "GroupNorm(2, 4, eps=1e-05, affine=True, bias=True)"  # (PyTorch 2.14's)
    assert list(nn.GroupNorm(2, 4, bias=False).state_dict()) == ["weight"]
    assert np.array_equal(m.weight.data, np.ones(4)) and np.array_equal(m.bias.data, np.zeros(4))
    assert m.num_parameters() == 8 and nn.GroupNorm(4, 4, affine=False).state_dict() == {}
    assert gpuconv.layers.GroupNorm is nn.GroupNorm
    with pytest.raises(ValueError, match=r"GroupNorm: num_channels \(6\) must be divisible by num_groups \(4\).*"
                                         r"pick num_groups among the divisors of 6 \(1, 2, 3, 6\)"):
        nn.GroupNorm(4, 6)
    with pytest.raises(TypeError, match="eps must be a number"):
        nn.GroupNorm(2, 4, eps="1e-5")
    with pytest.raises(TypeError, match="affine must be True or False"):
        nn.GroupNorm(2, 4, affine="no")
    with pytest.raises(TypeError, match="bias must be True or False"):
        nn.GroupNorm(2, 4, bias="no")


def test_layer_trains_and_is_batch_independent(backend):
    """The layer's gradients reach weight and bias (none without affine), and a sample's output
    does not depend on the rest of the batch (no batch statistics, no running ones)."""
    rng = np.random.default_rng(8)
    x = backend.asarray(rng.standard_normal((3, 6, 4, 4)).astype(np.float32))
    with gpuconv.default_device(backend.device):
        m, plain = nn.GroupNorm(3, 6), nn.GroupNorm(3, 6, affine=False)
    y = m(x)
    np.testing.assert_allclose(backend.asnumpy(m(x[:1])), backend.asnumpy(y[:1]), rtol=1e-6, atol=1e-6)
    m.eval()
    np.testing.assert_allclose(backend.asnumpy(m(x)), backend.asnumpy(y), rtol=0, atol=0)
    m.train()
    m(x)
    dx = m.backward(backend.asarray(np.ones(y.shape, np.float32)))
    assert dx.shape == x.shape and m.weight.grad.shape == m.bias.grad.shape == (6,)
    np.testing.assert_allclose(backend.asnumpy(m.bias.grad), np.full(6, 48.0))
    plain(x)
    assert plain.backward(backend.asarray(np.ones(y.shape, np.float32))).shape == x.shape
    with gpuconv.default_device(backend.device):
        scale_only = nn.GroupNorm(3, 6, bias=False)
    scale_only(x)
    scale_only.backward(backend.asarray(np.ones(y.shape, np.float32)))
    assert scale_only.bias is None and scale_only.weight.grad.shape == (6,)


def test_summary_counts_group_norm():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.GroupNorm(4, 8))
    text = net.summary((3, 6, 5))
    assert "GroupNorm" in text and f"{6 * 8 * 6 * 5:,}" in text.split("GroupNorm")[1]


def test_numbers_a_captured_step_replays_cannot_change_under_it():
    """eps and num_groups reach the kernels by value (num_groups also shapes their grids): a CUDA
    graph replays its capture's, so a change while a captured step holds the layer is refused."""
    layer = nn.GroupNorm(2, 4)
    layer.eps = 1e-3
    layer._held_by_graph = True
    layer.eps = 1e-3  # the same value: nothing changes
    for name, value in (("eps", 1e-4), ("num_groups", 4)):
        with pytest.raises(RuntimeError, match=f"GroupNorm: {name} cannot change while a captured training step"):
            setattr(layer, name, value)


def test_a_strided_view_and_a_float64_layer(backend):
    """A non-contiguous x (every other column) is normalized as its values say; a float64 layer
    (dtype=) computes in float64."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 5, 8))
    with gpuconv.default_device(backend.device):
        m = nn.GroupNorm(2, 4, dtype=np.float64)
    view = backend.asarray(x)[:, :, :, ::2]
    y = m(view)
    np.testing.assert_allclose(backend.asnumpy(y), formula(x[:, :, :, ::2], 2), rtol=1e-12, atol=1e-12)
    assert m.weight.dtype == np.float64 and y.dtype == np.float64


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_the_parameters_float32(backend, precision):
    """Under amp.autocast a convolution computes in bf16/fp16 and GroupNorm takes its output as it
    is: y and dx in that dtype, weight and bias (and their gradients) float32, as batch norm's."""
    from gpuconv import amp
    rng = np.random.default_rng(10)
    with gpuconv.default_device(backend.device):
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, seed=0), nn.GroupNorm(4, 8), nn.ReLU())
    x = backend.asarray(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    with amp.autocast(net, precision) as dt:
        y = net(x.astype(dt))
        net.backward(backend.asarray(np.ones(y.shape, dt)))
    gn_layer = net[1]
    assert y.dtype == np.dtype(dt) and gn_layer.weight.dtype == np.float32
    assert gn_layer.weight.grad.dtype == gn_layer.bias.grad.dtype == np.float32
    assert np.isfinite(backend.asnumpy(gn_layer.weight.grad)).all()


def test_a_torch_group_norm_state_dict_loads_and_gives_its_output():
    torch = pytest.importorskip("torch", reason="PyTorch is optional: the comparison with nn.GroupNorm needs it")
    # (bias=False: PyTorch's newer keyword, a weight without a bias, where this PyTorch has it)
    newer = "bias" in inspect.signature(torch.nn.GroupNorm).parameters
    for kwargs in ({}, {"affine": False}) + (({"bias": False},) if newer else ()):
        t = torch.nn.GroupNorm(4, 8, **kwargs).double()
        with torch.no_grad():
            for p in t.parameters():
                p.uniform_(0.5, 2.0)
        m = nn.GroupNorm(4, 8, dtype=np.float64, **kwargs)
        m.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
        assert list(m.state_dict()) == list(t.state_dict()) and (repr(m) == repr(t) or not newer)
        x = np.random.default_rng(11).standard_normal((2, 8, 3, 5))
        np.testing.assert_allclose(m(x), t(torch.tensor(x)).detach().numpy(), rtol=1e-12, atol=1e-12)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3), groups=st.integers(1, 3), cg=st.integers(1, 2), hw=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       seed=st.integers(0, 2**16))
def test_properties_over_shapes_and_groups(backend, n, groups, cg, hw, seed):
    """float64, any shape and grouping, no weight or bias: each (sample, group) of y has mean 0 (a
    shift of x per (sample, group) leaves y as it is), and dx sums to 0 over each (sample, group)
    (the gradient of a normalization loses the shift)."""
    rng = np.random.default_rng(seed)
    shape = (n, groups * cg) + (hw if cg * hw[0] * hw[1] > 1 else (2, 1))  # (several values a group)
    x = rng.standard_normal(shape) * 3.0
    y, cache = groupnorm_forward(backend.asarray(x), groups, eps=1e-10)
    y = backend.asnumpy(y)
    shift = np.repeat(rng.standard_normal((n, groups)) * 5.0, cg, axis=1)[:, :, None, None]
    np.testing.assert_allclose(backend.asnumpy(groupnorm_forward(backend.asarray(x + shift), groups, eps=1e-10)[0]), y,
                               rtol=1e-8, atol=1e-8)
    per_group = (lambda a: a.reshape(n, groups, -1))
    np.testing.assert_allclose(per_group(y).mean(2), 0.0, atol=1e-9)
    dy = rng.standard_normal(shape)
    dx, dw, db = groupnorm_backward(backend.asarray(dy), cache)
    assert dw is None and db is None
    dx = backend.asnumpy(dx)
    scale = 1e-8 * (1 + np.abs(per_group(dy)).sum(2))
    assert np.all(np.abs(per_group(dx).sum(2)) <= scale)
