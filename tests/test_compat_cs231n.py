"""gpuconv.compat.cs231n: the CS231n assignment API, checked against gpuconv.ops (it must be the
same arithmetic), against numerical gradients, against the assignment's conventions (caches,
parameter dicts, momentum and keep-probability semantics), and end to end: the Solver overfits
100 real CIFAR-10 images with the ThreeLayerConvNet, as the assignment's notebook expects."""
from __future__ import annotations

import contextlib
import types
import warnings
import zlib

import numpy as np
import pytest

from gpuconv import nn, ops
from gpuconv.compat import cs231n as C
from gpuconv.gradcheck import relative_error

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _data_of_the_test(request):
    """Each test draws the same data whatever ran before it in its worker (xdist hands tests out in
    no fixed order): the generator reseeded from the test's own id."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def randn(*shape):
    return RNG.standard_normal(shape)


def rel_error(a, b):
    return relative_error(a, b, floor=1e-8)


def away_from_zero(*shape, gap=0.05):
    """Values with |v| >= gap: no ReLU kink or max-pool tie within a finite-difference step."""
    v = randn(*shape)
    return np.where(v >= 0, v + gap, v - gap)


def distinct(*shape):
    """A random permutation of well-separated values: max pooling has no near-ties."""
    return (RNG.permutation(int(np.prod(shape))) * 0.1 - 1.0).reshape(shape) + 0.01 * randn(*shape)


def test_star_import_gives_the_assignment_names():
    namespace = {}
    exec("from gpuconv.compat.cs231n import *", namespace)
    expected = {"affine_forward", "conv_forward_fast", "max_pool_backward_fast", "spatial_batchnorm_backward",
                "conv_relu_pool_backward", "sgd_momentum", "adam", "eval_numerical_gradient_array",
                "ThreeLayerConvNet", "Solver", "load_CIFAR10", "svm_loss", "dropout_backward"}
    assert expected <= set(namespace) and all(callable(namespace[n]) for n in C.__all__)


# ----------------------------------------------------------------------------- same arithmetic as ops
def test_every_forward_is_the_gpuconv_op(backend):
    xp = backend.xp
    x = backend.asarray(randn(2, 3, 6, 6).astype(np.float32))
    w = backend.asarray(randn(4, 3, 3, 3).astype(np.float32))
    b = backend.asarray(randn(4).astype(np.float32))
    out, _ = C.conv_forward_fast(x, w, b, {"stride": 1, "pad": 1})
    ref, _ = ops.conv2d_forward(x, w, b, stride=1, padding=1)
    assert isinstance(out, xp.ndarray) and backend.asnumpy(out).tobytes() == backend.asnumpy(ref).tobytes()

    out, _ = C.max_pool_forward_fast(x, {"pool_height": 2, "pool_width": 4, "stride": 2})
    ref, _ = ops.max_pool2d_forward(x, kernel_size=(2, 4), stride=2)
    assert out.shape == (2, 3, 3, 2) and backend.asnumpy(out).tobytes() == backend.asnumpy(ref).tobytes()

    wa = backend.asarray(randn(108, 5).astype(np.float32))           # CS231n layout (D, M)
    ba = backend.asarray(randn(5).astype(np.float32))
    out, cache = C.affine_forward(x, wa, ba)
    ref, ref_cache = ops.linear_forward(x, wa.T, ba)
    assert out.shape == (2, 5) and backend.asnumpy(out).tobytes() == backend.asnumpy(ref).tobytes()
    dout = backend.asarray(randn(2, 5).astype(np.float32))
    dx, dw, db = C.affine_backward(dout, cache)
    rdx, rdw, rdb = ops.linear_backward(dout, ref_cache)
    assert dw.shape == (108, 5) and dx.shape == x.shape and db.shape == (5,)
    np.testing.assert_array_equal(backend.asnumpy(dw), backend.asnumpy(rdw).T)
    np.testing.assert_array_equal(backend.asnumpy(dx), backend.asnumpy(rdx))

    scores = backend.asarray(randn(6, 10).astype(np.float32))
    y = backend.asarray(np.array([0, 3, 9, 2, 2, 5]))
    loss, dscores = C.softmax_loss(scores, y)
    rloss, rd = ops.softmax_cross_entropy(scores, y)
    assert float(loss) == float(rloss)
    np.testing.assert_array_equal(backend.asnumpy(dscores), backend.asnumpy(rd))
    # A NumPy scalar of the scores' dtype on the host, as the assignment returns; a 0-d device array
    # on a GPU (no sync).
    if xp is np:
        assert isinstance(loss, np.float32)
    else:
        assert isinstance(loss, xp.ndarray) and loss.ndim == 0


def test_layers_stay_on_the_device_and_read_nothing_back(backend):
    """Device follows the arrays; no layer function copies to the host (counted on 'sim' and 'cupy')."""
    from gpuconv import backend as B

    xp = backend.xp
    x = backend.asarray(randn(2, 3, 8, 8).astype(np.float32))
    w = backend.asarray(randn(4, 3, 3, 3).astype(np.float32))
    b = backend.asarray(randn(4).astype(np.float32))
    wa = backend.asarray(randn(64, 5).astype(np.float32))
    ba = backend.asarray(randn(5).astype(np.float32))
    gamma, beta = backend.asarray(np.ones(4, np.float32)), backend.asarray(np.zeros(4, np.float32))
    B.transfers.reset()
    h, c1 = C.conv_relu_pool_forward(x, w, b, {"stride": 1, "pad": 1},
                                     {"pool_height": 2, "pool_width": 2, "stride": 2})
    bn_param = {"mode": "train"}
    h, c2 = C.spatial_batchnorm_forward(h, gamma, beta, bn_param)
    h, c3 = C.dropout_forward(h, {"mode": "train", "p": 0.5, "seed": 0})
    out, c4 = C.affine_relu_forward(h, wa, ba)
    dh, dwa, dba = C.affine_relu_backward(xp.ones_like(out), c4)
    dh = C.dropout_backward(dh, c3)
    dh, dgamma, dbeta = C.spatial_batchnorm_backward(dh, c2)
    dx, dw, db = C.conv_relu_pool_backward(dh, c1)
    for a in (out, dx, dw, db, dwa, dba, dgamma, dbeta, bn_param["running_mean"], bn_param["running_var"]):
        assert isinstance(a, xp.ndarray)
    assert dx.shape == x.shape and dw.shape == w.shape and dwa.shape == (64, 5)
    assert B.transfers.device_to_host == 0 and B.transfers.host_to_device == 0


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("gpuconv").cuda_available(), reason="no GPU")
def test_solver_trains_on_the_gpu_without_per_step_readbacks():
    from gpuconv import backend as B

    cp = B.cupy_module()
    np.random.seed(0)
    model = C.ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=4, filter_size=3, hidden_dim=16, device="cuda")
    assert all(isinstance(v, cp.ndarray) for v in model.params.values())
    X, y = randn(40, 3, 8, 8), RNG.integers(0, 10, 40)
    solver = C.Solver(model, {"X_train": X, "y_train": y, "X_val": X[:10], "y_val": y[:10]}, update_rule="adam",
                      optim_config={"learning_rate": 1e-2}, batch_size=10, num_epochs=3, verbose=False)
    assert isinstance(solver.X_train, cp.ndarray)
    loss, _ = model.loss(solver.X_train[:10], solver.y_train[:10])
    assert isinstance(loss, cp.ndarray) and loss.ndim == 0       # no sync inside the step
    solver.train()
    assert len(solver.loss_history) == 12 and all(isinstance(v, float) for v in solver.loss_history)
    assert all(isinstance(v, cp.ndarray) for v in model.params.values())


# ----------------------------------------------------------------------------- CuPy arrays without cuRAND
class _OnGpu(np.ndarray):
    """A NumPy array the backend takes for a CuPy one on GPU 0 (under ``cupy_without_curand``)."""

    def get(self):
        return np.asarray(self)


class _CupyRandomWithoutCurand:
    """``cupy.random`` where the cuda12/cuda13 installs put it (CuPy and NVRTC, no cuRAND): its
    legacy functions (rand, choice, seed, ...) load cuRAND's host library, which is not there."""

    def __getattr__(self, name):
        raise ImportError(f"cupy.random.{name}: libcurand.so.10: cannot open shared object file: No such file "
                          "or directory")


class _CupyWithoutCurand(types.ModuleType):
    ndarray = _OnGpu
    random = _CupyRandomWithoutCurand()
    cuda = types.SimpleNamespace(Device=lambda index: contextlib.nullcontext())

    @staticmethod
    def asarray(a, dtype=None):
        return np.asarray(a, dtype).view(_OnGpu)

    def __getattr__(self, name):  # the rest of CuPy's API is NumPy's
        return getattr(np, name)


@pytest.fixture
def cupy_without_curand(monkeypatch):
    """No GPU here: a stand-in CuPy (NumPy, whose ``_OnGpu`` arrays count as CuPy arrays on GPU 0)
    whose ``cupy.random`` fails as it does without cuRAND. ``to_device`` uploads (counted)."""
    from gpuconv import backend as B

    fake = _CupyWithoutCurand("cupy")
    monkeypatch.setattr(B, "cupy_module", lambda: fake)
    monkeypatch.setattr(B, "require_cupy", lambda: fake)
    monkeypatch.setattr(B, "device_id", lambda a: 0)
    return fake


class _RowRecorder:
    """A CS231n model (``params``, ``loss``) whose data rows are their indices: it records the
    rows of each call, minibatches and accuracy subsets alike, and learns nothing."""

    def __init__(self, w):
        self.params = {"W": w}
        self.seen = []

    def loss(self, X, y=None):
        self.seen.append((type(X), np.asarray(X)[:, 0].astype(int).tolist()))
        if y is None:
            return X[:, :3]
        return 0.5, {"W": self.params["W"] * 0}


def _record_solver_run(device_array):
    n = 20
    X, y = np.repeat(np.arange(n, dtype=np.float64)[:, None], 3, axis=1), np.arange(n) % 3
    model = _RowRecorder(device_array(np.zeros(3)))
    data = {"X_train": X, "y_train": y, "X_val": X[:8], "y_val": y[:8]}
    solver = C.Solver(model, data, update_rule=lambda w, dw, config: (w - dw, config),
                      optim_config={"learning_rate": 1.0}, batch_size=5,
                      num_epochs=2, num_train_samples=6, num_val_samples=4, verbose=False)
    solver.train()
    assert solver.loss_history == [0.5] * 8
    return model.seen


def test_a_solver_on_device_arrays_draws_its_minibatches_without_curand(cupy_without_curand):
    """A device-resident Solver draws its minibatch indices and accuracy subsets on the host,
    np.random.choice, and uploads them: ``cupy.random.choice`` needs cuRAND, which the cuda12/cuda13
    installs lack (it was an ImportError at the first step)."""
    from gpuconv import backend as B

    B.transfers.reset()
    seen = _record_solver_run(cupy_without_curand.asarray)
    # 8 steps and 3 accuracy checks of a training and a validation subset: 14 draws, each uploaded
    # (after the 4 arrays of the data set, uploaded once).
    assert len(seen) == 14 and {t for t, _ in seen} == {_OnGpu}
    assert B.transfers.host_to_device == 4 + 14 and B.transfers.device_to_host == 0


def test_a_seeded_solver_takes_the_same_minibatches_on_the_device_as_on_the_cpu(cupy_without_curand):
    """np.random.seed makes a device run draw what a CPU run draws, as the assignment's Solver:
    the same minibatches and accuracy subsets, in the same order."""
    np.random.seed(0)
    on_cpu = _record_solver_run(np.asarray)
    np.random.seed(0)
    on_device = _record_solver_run(cupy_without_curand.asarray)
    assert [rows for _, rows in on_device] == [rows for _, rows in on_cpu]
    assert {t for t, _ in on_cpu} == {np.ndarray} and len({tuple(r) for _, r in on_cpu}) > 10


@pytest.mark.parametrize("edition", [None, 2017])
def test_dropout_on_device_arrays_hashes_its_mask_from_a_numpy_key_without_curand(edition, cupy_without_curand):
    """Dropout on CuPy arrays takes gpuconv's counter-based keep bits (those of ops.dropout_forward
    and kernels/dropout.cu) for one key drawn from NumPy's global generator, after
    np.random.seed(dropout_param['seed']): no cupy.random (cuRAND), and a seed repeats the mask.
    NumPy arrays keep the assignment's mask, bit for bit."""
    E = C if edition is None else C.edition(edition)
    p = 0.3
    p_drop = p if edition == 2017 else 1 - p    # the 2016-2017 editions' p drops a unit
    x = randn(40, 50).astype(np.float32) + 10
    xg = cupy_without_curand.asarray(x)
    out, cache = E.dropout_forward(xg, {"mode": "train", "p": p, "seed": 5})
    mask = cache[1]
    assert type(out) is _OnGpu and out.dtype == np.float32 and mask.dtype == np.float64  # as on the host

    np.random.seed(5)
    key = np.random.randint(0, 2**64, dtype=np.uint64)
    keep = ops.dropout_forward(x, p=p_drop, key=key)[1].mask != 0
    assert abs(keep.mean() - (1 - p_drop)) < 0.05
    np.testing.assert_array_equal(mask, keep / (1 - p) if edition == 2017 else keep / p)
    np.testing.assert_array_equal(out, (x * mask).astype(np.float32))
    dout = cupy_without_curand.asarray(randn(40, 50))
    np.testing.assert_array_equal(E.dropout_backward(dout, cache), dout * mask)

    np.random.seed(5)  # the seed in the dict is np.random.seed's, as on the host
    np.testing.assert_array_equal(E.dropout_forward(xg, {"mode": "train", "p": p})[1][1], mask)

    _, (_, host_mask) = E.dropout_forward(x, {"mode": "train", "p": p, "seed": 5})
    np.random.seed(5)
    u = np.random.rand(40, 50)
    np.testing.assert_array_equal(host_mask, (u >= p) / (1 - p) if edition == 2017 else (u < p) / p)


def test_rel_error_is_the_assignments_formula():
    """max(|x - y| / max(1e-8, |x| + |y|)): 0.2 / 4.2 here; the floor keeps 0 vs 0 at 0, and a
    float32 input is measured in float64 (no float32 rounding in the yardstick)."""
    assert C.rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.2])) == pytest.approx(0.2 / 4.2, rel=1e-12)
    assert C.rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert C.rel_error(np.float32([0.0]), np.float32([1e-9])) == pytest.approx(1e-9 / 1e-8, rel=1e-6)
    assert isinstance(C.rel_error(np.ones(2), np.ones(2)), float)


def test_conv_follows_the_assignment_definition():
    """Zero padding on every side, cross-correlation, w as (F, C, HH, WW), output size (H+2P-HH)/S+1."""
    x, w, b = randn(2, 3, 5, 5), randn(4, 3, 3, 3), randn(4)
    out, _ = C.conv_forward_naive(x, w, b, {"stride": 2, "pad": 1})
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected = np.empty((2, 4, 3, 3))
    for n in range(2):
        for f in range(4):
            for i in range(3):
                for j in range(3):
                    expected[n, f, i, j] = np.sum(xpad[n, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3] * w[f]) + b[f]
    assert rel_error(out, expected) < 1e-12


@pytest.mark.parametrize("h, w_, hh, stride, pad", [(8, 8, 3, 2, 1), (7, 9, 3, 2, 0), (8, 8, 3, 3, 1), (6, 5, 2, 4, 2)])
def test_conv_sizes_that_do_not_divide_floor_as_the_assignment(h, w_, hh, stride, pad):
    """1 + (H + 2P - HH) // S outputs, as conv_forward_fast (its strides form) and a student's loop
    compute them (32x32, 3x3, stride 2, pad 1: 16x16), and the gradients of that function."""
    x, w, b = randn(2, 3, h, w_), randn(4, 3, hh, hh), randn(4)
    conv_param = {"stride": stride, "pad": pad}
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = 1 + (h + 2 * pad - hh) // stride, 1 + (w_ + 2 * pad - hh) // stride
    expected = np.empty((2, 4, oh, ow))
    for i in range(oh):
        for j in range(ow):
            window = xpad[:, :, stride * i:stride * i + hh, stride * j:stride * j + hh]
            expected[:, :, i, j] = np.tensordot(window, w, axes=([1, 2, 3], [1, 2, 3])) + b
    for forward, backward in ((C.conv_forward_naive, C.conv_backward_naive),
                              (C.conv_forward_fast, C.conv_backward_fast)):
        out, cache = forward(x, w, b, conv_param)
        assert out.shape == expected.shape and rel_error(out, expected) < 1e-12
        dout = randn(*out.shape)
        dx, dw, db = backward(dout, cache)
        for got, wrt in ((dx, 0), (dw, 1), (db, 2)):
            args = [x, w, b]
            num = C.eval_numerical_gradient_array(
                lambda v: C.conv_forward_naive(*args[:wrt], v, *args[wrt + 1:], conv_param)[0], args[wrt].copy(), dout)
            assert got.shape == args[wrt].shape
            _assert_numerical(num, got, out, dout, what=f"input {wrt}")
    assert C.conv_forward_fast(x, w, b, conv_param)[1][4].shape == (3 * hh * hh, 2 * oh * ow)  # x_cols
    pooled, _ = C.max_pool_forward_naive(x, {"pool_height": 2, "pool_width": 2, "stride": 2})
    assert pooled.shape == (2, 3, h // 2, w_ // 2)


def test_losses_at_chance_and_svm_against_its_definition():
    x, y = 0.001 * randn(200, 10), RNG.integers(0, 10, 200)
    loss, _ = C.softmax_loss(x, y)
    assert abs(loss - np.log(10)) < 0.01                  # the assignment's sanity check: ~2.3
    loss, dx = C.svm_loss(x, y)
    assert abs(loss - 9.0) < 0.05                          # margin 1 on each of 9 wrong classes
    x = randn(5, 4)
    y = np.array([0, 1, 2, 3, 1])
    margins = np.maximum(0, x - x[np.arange(5), y][:, None] + 1)
    margins[np.arange(5), y] = 0
    assert C.svm_loss(x, y)[0] == pytest.approx(margins.sum() / 5, rel=1e-12)
    # labels as a list index like the array, as in the assignment's NumPy code
    assert C.svm_loss(x, list(y))[0] == C.svm_loss(x, y)[0] and C.softmax_loss(x, list(y))[0] == C.softmax_loss(x, y)[0]


# ----------------------------------------------------------------------------- numerical gradients
def _assert_numerical(num, g, out, dout, tol=1e-7, what="gradient"):
    """``g`` against the central differences ``num`` (h = 1e-5) of sum(dout * f): the notebooks'
    relative error within ``tol`` element by element, up to the differences' own rounding, which
    no analytic gradient can beat (float64's eps times sum|dout| times max|f|, over h: about 1e-9
    here, where a wrong gradient is off by O(1)). An element of 1e-2 would otherwise fail on the
    rounding alone, as random data sometimes draws one."""
    floor = np.finfo(np.float64).eps * np.abs(dout).sum() * np.abs(out).max() / 1e-5
    err = np.abs(num - g)
    bad = err > tol * (np.abs(num) + np.abs(g)) + floor
    assert not bad.any(), (f"{what}: relative error {rel_error(num, g):.2e}, largest error {err.max():.2e} "
                           f"past the rounding floor {floor:.1e}")


def _check_backward(forward, backward, inputs, tol=1e-7):
    out, cache = forward(*inputs)
    dout = randn(*out.shape)
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    for i, (a, g) in enumerate(zip(inputs, grads)):
        if not isinstance(a, np.ndarray):
            continue
        num = C.eval_numerical_gradient_array(lambda v, i=i: forward(*inputs[:i], v, *inputs[i + 1:])[0],
                                              a, dout)
        _assert_numerical(num, g, out, dout, tol, what=f"input {i}")


@pytest.mark.parametrize("name, inputs", [
    ("affine", lambda: (randn(4, 2, 3), randn(6, 5), randn(5))),
    ("relu", lambda: (away_from_zero(3, 7),)),
    ("conv", lambda: (randn(2, 3, 7, 7), randn(2, 3, 3, 3), randn(2), {"stride": 2, "pad": 1})),
    ("max_pool", lambda: (distinct(2, 2, 4, 7), {"pool_height": 2, "pool_width": 3, "stride": 2})),
    ("conv_relu", lambda: (randn(1, 2, 5, 5), randn(3, 2, 3, 3), randn(3), {"stride": 1, "pad": 1})),
    ("conv_relu_pool", lambda: (randn(1, 2, 4, 4), randn(2, 2, 3, 3), randn(2), {"stride": 1, "pad": 1},
                                {"pool_height": 2, "pool_width": 2, "stride": 2})),
    ("affine_relu", lambda: (randn(3, 4), randn(4, 5), randn(5))),
])
def test_layer_gradients(name, inputs):
    suffix = "_naive" if name in ("conv", "max_pool") else ""
    fwd = getattr(C, f"{name}_forward{suffix}")
    bwd = getattr(C, f"{name}_backward{suffix}")
    _check_backward(fwd, bwd, inputs())


@pytest.mark.parametrize("spatial", [False, True])
def test_batchnorm_gradients(spatial):
    shape = (4, 3, 2, 2) if spatial else (6, 4)
    d = shape[1]
    fwd = C.spatial_batchnorm_forward if spatial else C.batchnorm_forward
    bwd = C.spatial_batchnorm_backward if spatial else C.batchnorm_backward
    _check_backward(lambda x, g, b: fwd(x, g, b, {"mode": "train"}), bwd,
                    (3 * randn(*shape) + 1, randn(d), randn(d)), tol=1e-6)


@pytest.mark.parametrize("kind", ["batchnorm", "spatial_batchnorm", "layernorm"])
def test_norm_takes_gamma_and_beta_as_students_create_them(kind):
    """Students create gamma and beta as (1, D) (spatial: (1, C, 1, 1)) as often as (D,), e.g.
    ``self.params['gamma1'] = np.ones((1, hidden_dims[0]))``: NumPy broadcasts both alike, so the
    numbers are the (D,) ones, and the gradients come back in the parameters' own shape."""
    spatial = kind == "spatial_batchnorm"
    shape = (4, 3, 2, 2) if spatial else (6, 4)
    d = shape[1]
    wide = (1, d, 1, 1) if spatial else (1, d)
    fwd, bwd = getattr(C, f"{kind}_forward"), getattr(C, f"{kind}_backward")
    x, gamma, beta, dout = 3 * randn(*shape) + 1, randn(d), randn(d), randn(*shape)
    param = {"mode": "train"}
    want, cache = fwd(x, gamma, beta, dict(param))
    want_grads = bwd(dout, cache)
    out, cache = fwd(x, gamma.reshape(wide), beta.reshape(wide), dict(param))
    np.testing.assert_array_equal(out, want)
    dx, dgamma, dbeta = bwd(dout, cache)
    assert dgamma.shape == dbeta.shape == wide
    np.testing.assert_array_equal(dx, want_grads[0])
    np.testing.assert_array_equal(dgamma.reshape(d), want_grads[1])
    np.testing.assert_array_equal(dbeta.reshape(d), want_grads[2])
    _check_backward(lambda x, g, b: fwd(x, g, b, dict(param)), bwd,
                    (x, gamma.reshape(wide), beta.reshape(wide)), tol=1e-6)
    if kind != "layernorm":   # a shape NumPy would broadcast across the batch instead
        with pytest.raises(ValueError, match=r"gamma must hold one value per (feature|channel) of x, shape"):
            fwd(x, gamma.reshape(d, *([1] * (len(wide) - 1))), beta, dict(param))
    if spatial:               # a 1-D gamma of the wrong length: the op's message, which names channels-last x
        with pytest.raises(ValueError, match=r"gamma must have shape \(2,\).*x looks laid out N, H, W, C"):
            fwd(x.transpose(0, 2, 3, 1), gamma, beta, dict(param))


def test_dropout_gradient_with_a_seed():
    param = {"mode": "train", "p": 0.6, "seed": 123}
    _check_backward(lambda x: C.dropout_forward(x, param), C.dropout_backward, (randn(10, 10),))


def test_loss_gradients():
    x, y = randn(8, 5), RNG.integers(0, 5, 8)
    for loss_fn in (C.softmax_loss, C.svm_loss):
        num = C.eval_numerical_gradient(lambda v: loss_fn(v, y)[0], x, verbose=False)
        assert rel_error(num, loss_fn(x, y)[1]) < 1e-7


def test_three_layer_convnet_gradients_and_regularization():
    np.random.seed(0)
    model = C.ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=3, filter_size=3, hidden_dim=7,
                                weight_scale=1e-2, dtype=np.float64, reg=0.5)
    assert {k: v.shape for k, v in model.params.items()} == {
        "W1": (3, 3, 3, 3), "b1": (3,), "W2": (48, 7), "b2": (7,), "W3": (7, 10), "b3": (10,)}
    X, y = np.random.default_rng(1).standard_normal((2, 3, 8, 8)), np.array([1, 4])
    loss, grads = model.loss(X, y)
    assert isinstance(loss, float) and model.loss(X).shape == (2, 10)
    for name, p in model.params.items():
        num = C.eval_numerical_gradient(lambda _: model.loss(X, y)[0], p, verbose=False, h=1e-6)
        # Scaled by the gradient's largest entry: single tiny entries near a ReLU kink would
        # dominate an elementwise ratio (the assignment itself accepts 1e-2 here).
        err = np.abs(num - grads[name]).max() / np.abs(grads[name]).max()
        assert err < 1e-6, (name, err)
    model.reg = 0.0
    assert model.loss(X, y)[0] < loss                      # the L2 term counted


# ----------------------------------------------------------------------------- conventions
def test_caches_hold_what_the_assignment_caches_hold():
    x, w, b = randn(2, 3, 4, 4), randn(2, 3, 3, 3), randn(2)
    conv_param, pool_param = {"stride": 1, "pad": 1}, {"pool_height": 2, "pool_width": 2, "stride": 2}
    _, cache = C.conv_forward_naive(x, w, b, conv_param)
    assert cache[0] is x and cache[1] is w and cache[2] is b and cache[3] is conv_param
    _, cache = C.max_pool_forward_naive(x, pool_param)
    assert cache[0] is x and cache[1] is pool_param
    _, cache = C.relu_forward(x)
    assert cache is x
    wa = randn(48, 3)
    _, cache = C.affine_forward(x, wa, b[:1].repeat(3))
    assert cache[0] is x and cache[1] is wa and len(cache) == 3
    _, (conv_cache, relu_cache, pool_cache) = C.conv_relu_pool_forward(x, w, b, conv_param, pool_param)
    assert conv_cache[3] is conv_param and relu_cache.shape == (2, 2, 4, 4)
    assert pool_cache[0] == "reshape" and np.array_equal(pool_cache[1][0], np.maximum(relu_cache, 0))
    assert len(pool_cache[1]) == 3


def test_caches_copy_and_pickle_as_the_assignments_tuples():
    """A model that keeps its caches can be deep-copied (as the best model) or pickled (a Solver
    checkpoint), as with the assignment's plain tuples: the fast layers' caches too."""
    import copy
    import pickle

    x, w, b = randn(2, 3, 4, 4), randn(2, 3, 3, 3), randn(2)
    conv_param, pool_param = {"stride": 1, "pad": 1}, {"pool_height": 2, "pool_width": 2, "stride": 1}
    dout = randn(2, 2, 4, 4)
    for forward, backward in ((C.conv_forward_fast, C.conv_backward_fast),
                              (C.conv_forward_im2col, C.conv_backward_im2col)):
        _, cache = forward(x, w, b, conv_param)
        want = backward(dout, cache)
        for copied in (copy.copy(cache), copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
            assert len(copied) == 5 and np.array_equal(copied[4], cache[4])
            for got, ref in zip(backward(dout, copied), want):
                np.testing.assert_array_equal(got, ref)
    _, cache = C.max_pool_forward_im2col(x, pool_param)
    copied = copy.deepcopy(cache)
    assert copied[3] == pool_param and np.array_equal(copied[2], cache[2])
    dpool = randn(2, 3, 3, 3)
    np.testing.assert_array_equal(C.max_pool_backward_im2col(dpool, copied), C.max_pool_backward_im2col(dpool, cache))
    pickle.loads(pickle.dumps(C.conv_relu_pool_forward(x, w, b, conv_param, {**pool_param, "stride": 2})[1]))


def test_backward_accepts_hand_built_caches():
    """Code that builds ``(x, w, b)`` itself (as the assignment's caches are) gets the same gradients."""
    x, w, b = randn(2, 3, 5, 5), randn(2, 3, 3, 3), randn(2)
    conv_param = {"stride": 2, "pad": 1}
    out, cache = C.conv_forward_naive(x, w, b, conv_param)
    dout = randn(*out.shape)
    for got, want in zip(C.conv_backward_naive(dout, (x, w, b, conv_param)), C.conv_backward_naive(dout, cache)):
        np.testing.assert_array_equal(got, want)
    wa, ba = randn(75, 4), randn(4)
    out, cache = C.affine_forward(x, wa, ba)
    dout = randn(*out.shape)
    for got, want in zip(C.affine_backward(dout, (x, wa, ba)), C.affine_backward(dout, cache)):
        np.testing.assert_array_equal(got, want)
    row, row_cache = C.affine_forward(x, wa, ba[None])  # a (1, M) bias broadcasts, as in NumPy
    np.testing.assert_array_equal(row, out)
    for got, want in zip(C.affine_backward(dout, row_cache), C.affine_backward(dout, cache)):
        np.testing.assert_array_equal(got, want)
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 1}
    out, cache = C.max_pool_forward_naive(x, pool_param)
    dout = randn(*out.shape)
    np.testing.assert_array_equal(C.max_pool_backward_naive(dout, (x, pool_param)),
                                  C.max_pool_backward_naive(dout, cache))


@pytest.mark.parametrize("spatial", [False, True])
def test_batchnorm_running_stats_follow_cs231n_momentum(spatial):
    """running = momentum * running + (1 - momentum) * batch stat, with the BIASED variance."""
    x = 2 * randn(16, 3, 2, 2) + 5 if spatial else 2 * randn(16, 3) + 5
    axes = (0, 2, 3) if spatial else 0
    fwd = C.spatial_batchnorm_forward if spatial else C.batchnorm_forward
    gamma, beta = np.ones(3), np.zeros(3)
    bn_param = {"mode": "train", "momentum": 0.8}
    out, _ = fwd(x, gamma, beta, bn_param)
    assert rel_error(bn_param["running_mean"], 0.2 * x.mean(axis=axes)) < 1e-12
    assert rel_error(bn_param["running_var"], 0.2 * x.var(axis=axes)) < 1e-12
    assert np.abs(out.mean(axis=axes)).max() < 1e-12 and np.abs(out.std(axis=axes) - 1).max() < 1e-4
    mean1, var1 = bn_param["running_mean"], bn_param["running_var"]
    x2 = randn(*x.shape)
    fwd(x2, gamma, beta, bn_param)
    assert rel_error(bn_param["running_mean"], 0.8 * mean1 + 0.2 * x2.mean(axis=axes)) < 1e-12
    assert rel_error(bn_param["running_var"], 0.8 * var1 + 0.2 * x2.var(axis=axes)) < 1e-12
    # Test mode normalizes with the running statistics and leaves them alone.
    bn_param["mode"] = "test"
    before = bn_param["running_mean"].copy()
    out, _ = fwd(x, 3 * gamma, beta + 1, bn_param)
    shape = (1, 3, 1, 1) if spatial else (1, 3)
    expected = 3 * (x - before.reshape(shape)) / np.sqrt(bn_param["running_var"].reshape(shape) + 1e-5) + 1
    assert rel_error(out, expected) < 1e-12 and np.array_equal(bn_param["running_mean"], before)
    fresh = {"mode": "test"}  # the assignment stores the (zero) statistics it normalized with
    fwd(x, gamma, beta, fresh)
    assert np.array_equal(fresh["running_mean"], np.zeros(3)) and np.array_equal(fresh["running_var"], np.zeros(3))


@pytest.mark.parametrize("spatial", [False, True])
@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_batchnorm_on_low_precision_arrays_follows_the_precision_rule(spatial, low):
    """A student's bfloat16/float16 arrays throughout: the op computes in float32 (its gamma, beta
    and statistics float32), and everything the caller gets back, out, dx, dgamma, dbeta and
    bn_param's running statistics, is in the arrays' dtype, each the float32 result rounded once."""
    import ml_dtypes
    dt = np.dtype(ml_dtypes.bfloat16 if low == "bfloat16" else np.float16)
    shape, axes = ((8, 3, 2, 2), (0, 2, 3)) if spatial else ((8, 3), 0)
    fwd, bwd = ((C.spatial_batchnorm_forward, C.spatial_batchnorm_backward) if spatial
                else (C.batchnorm_forward, C.batchnorm_backward))
    x, dout = (2 * randn(*shape) + 1).astype(dt), randn(*shape).astype(dt)
    gamma, beta = (randn(3) + 1).astype(dt), randn(3).astype(dt)
    bn_param = {"mode": "train", "momentum": 0.5}
    out, cache = fwd(x, gamma, beta, bn_param)
    dx, dgamma, dbeta = bwd(dout, cache)
    x4 = x.reshape(8, 3, 1, 1) if not spatial else x
    f32 = np.float32
    want, oc = ops.batchnorm2d_forward(x4, gamma.astype(f32), beta.astype(f32), np.zeros(3, f32), np.zeros(3, f32),
                                       training=True, momentum=1.0)
    wdx, wdg, wdb = ops.batchnorm2d_backward(dout.reshape(x4.shape), oc)
    assert all(a.dtype == dt for a in (out, dx, dgamma, dbeta, bn_param["running_mean"], bn_param["running_var"]))
    np.testing.assert_array_equal(out, want.reshape(shape))
    np.testing.assert_array_equal(dx, wdx.reshape(shape))
    np.testing.assert_array_equal(dgamma, wdg.astype(dt))
    np.testing.assert_array_equal(dbeta, wdb.astype(dt))
    x64 = x.astype(np.float64)  # the running statistics: within a few roundings of float64's blend
    tol = 8 * float(np.finfo(f32).eps) + 4 * float(2.0 ** -(8 if low == "bfloat16" else 11))
    assert np.allclose(bn_param["running_mean"].astype(np.float64), 0.5 * x64.mean(axis=axes), rtol=tol, atol=tol)
    assert np.allclose(bn_param["running_var"].astype(np.float64), 0.5 * x64.var(axis=axes), rtol=tol, atol=tol)
    bn_param["mode"] = "test"
    out_test, _ = fwd(x, gamma, beta, bn_param)
    assert out_test.dtype == dt and np.isfinite(out_test.astype(np.float64)).all()


@pytest.mark.parametrize("spatial", [False, True])
@pytest.mark.parametrize("mode", ["train", "test"])
def test_batchnorm_running_statistics_of_another_width_are_named(spatial, mode):
    """bn_param carried over from a layer of another width: a clear error naming the key and the
    shape it needs, not NumPy's broadcasting error from inside the running update."""
    x = randn(4, 5, 2, 2) if spatial else randn(4, 5)
    fwd = C.spatial_batchnorm_forward if spatial else C.batchnorm_forward
    for key in ("running_mean", "running_var"):
        bn_param = {"mode": mode, "running_mean": np.zeros(5), "running_var": np.ones(5)}
        bn_param[key] = np.zeros(3)
        with pytest.raises(ValueError, match=rf"bn_param\['{key}'\] must hold one value per channel of x, "
                                             r"shape \(5,\), got ndarray of shape \(3,\)"):
            fwd(x, np.ones(5), np.zeros(5), bn_param)


@pytest.mark.parametrize("spatial", [False, True])
def test_batchnorm_of_an_empty_batch_leaves_the_running_statistics(spatial):
    """An empty training batch: an empty out, bn_param's running statistics as they were (the
    assignment's formulas would make them NaN; the op, as PyTorch, leaves its own unchanged), an
    empty dx and zero dgamma, dbeta."""
    x = np.zeros((0, 3, 2, 2)) if spatial else np.zeros((0, 3))
    fwd, bwd = ((C.spatial_batchnorm_forward, C.spatial_batchnorm_backward) if spatial
                else (C.batchnorm_forward, C.batchnorm_backward))
    rm, rv = randn(3), np.abs(randn(3))
    bn_param = {"mode": "train", "running_mean": rm.copy(), "running_var": rv.copy()}
    out, cache = fwd(x, randn(3), randn(3), bn_param)
    assert out.shape == x.shape
    np.testing.assert_array_equal(bn_param["running_mean"], rm)
    np.testing.assert_array_equal(bn_param["running_var"], rv)
    dx, dgamma, dbeta = bwd(np.zeros(x.shape), cache)
    assert dx.shape == x.shape and not dgamma.any() and not dbeta.any()


@pytest.mark.parametrize("spatial", [False, True])
def test_batchnorm_of_one_value_per_channel_is_the_assignments(spatial):
    """A batch of 1 (N*H*W = 1): the assignment's formulas give out = beta, a variance of 0 in the
    running statistics and a zero input gradient, where gpuconv.ops (as PyTorch) refuses."""
    x = randn(1, 3, 1, 1) if spatial else randn(1, 3)
    fwd, bwd = ((C.spatial_batchnorm_forward, C.spatial_batchnorm_backward) if spatial
                else (C.batchnorm_forward, C.batchnorm_backward))
    gamma, beta, bn_param = randn(3), randn(3), {"mode": "train", "momentum": 0.8}
    out, cache = fwd(x, gamma, beta, bn_param)
    np.testing.assert_array_equal(out.reshape(3), beta)
    np.testing.assert_allclose(bn_param["running_mean"], 0.2 * x.reshape(3), rtol=1e-15)
    np.testing.assert_array_equal(bn_param["running_var"], np.zeros(3))
    dout = randn(*x.shape)
    dx, dgamma, dbeta = bwd(dout, cache)
    num = C.eval_numerical_gradient_array(lambda v: fwd(v, gamma, beta, {"mode": "train"})[0], x.copy(), dout)
    np.testing.assert_array_equal(dx, np.zeros_like(x))
    np.testing.assert_array_equal(num, np.zeros_like(x))
    np.testing.assert_array_equal(dgamma, np.zeros(3))
    np.testing.assert_allclose(dbeta, dout.reshape(3), rtol=1e-15)


def test_dropout_p_is_the_keep_probability():
    x = randn(500, 400) + 10
    out, (param, mask) = C.dropout_forward(x, {"mode": "train", "p": 0.3})
    kept = out != 0
    assert abs(kept.mean() - 0.3) < 0.01                  # 30% kept, not 30% dropped
    np.testing.assert_allclose(out[kept], x[kept] / 0.3, rtol=1e-12)
    np.testing.assert_array_equal(out, x * mask)
    same = {"mode": "train", "p": 0.5, "seed": 7}
    np.testing.assert_array_equal(C.dropout_forward(x, same)[0], C.dropout_forward(x, same)[0])
    out, cache = C.dropout_forward(x, {"mode": "test", "p": 0.3})
    assert out is x and C.dropout_backward(x, cache) is x


def test_update_rules_match_the_assignment_formulas_and_defaults():
    w, dw = np.linspace(-0.4, 0.6, 20).reshape(4, 5), np.linspace(-0.6, 0.4, 20).reshape(4, 5)
    v = np.linspace(0.6, 0.9, 20).reshape(4, 5)
    next_w, config = C.sgd_momentum(w, dw, {"learning_rate": 1e-3, "velocity": v})
    np.testing.assert_allclose(config["velocity"], 0.9 * v - 1e-3 * dw, rtol=1e-15)
    np.testing.assert_allclose(next_w, w + 0.9 * v - 1e-3 * dw, rtol=1e-15)

    cache = np.linspace(0.6, 0.9, 20).reshape(4, 5)
    next_w, config = C.rmsprop(w, dw, {"learning_rate": 1e-2, "cache": cache})
    new_cache = 0.99 * cache + 0.01 * dw ** 2
    np.testing.assert_allclose(next_w, w - 1e-2 * dw / (np.sqrt(new_cache) + 1e-8), rtol=1e-14)

    m, vv = np.linspace(0.6, 0.9, 20).reshape(4, 5), np.linspace(0.7, 0.5, 20).reshape(4, 5)
    next_w, config = C.adam(w, dw, {"learning_rate": 1e-2, "m": m, "v": vv, "t": 5})
    m2, v2 = 0.9 * m + 0.1 * dw, 0.999 * vv + 0.001 * dw ** 2
    expected = w - 1e-2 * (m2 / (1 - 0.9 ** 6)) / (np.sqrt(v2 / (1 - 0.999 ** 6)) + 1e-8)
    np.testing.assert_allclose(next_w, expected, rtol=1e-14)
    assert config["t"] == 6

    w_copy = w.copy()
    out, config = C.sgd(w_copy, dw)
    assert out is w_copy and config == {"learning_rate": 1e-2}   # in place, as the assignment's sgd
    assert C.sgd_momentum(w, dw)[1]["momentum"] == 0.9
    assert {k: C.adam(w, dw)[1][k] for k in ("learning_rate", "beta1", "beta2", "epsilon")} == {
        "learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}
    assert C.rmsprop(w, dw)[1]["decay_rate"] == 0.99


def test_numerical_gradient_helpers(capsys):
    # |x| >= 0.2: the central difference's h**2 and rounding errors stay under 1e-8 of 3x**2
    # (near 0 a standard normal draw failed 18% of the time, as the module's RNG stood)
    x = away_from_zero(2, 3, gap=0.2)
    grad = C.eval_numerical_gradient(lambda v: float(np.sum(v ** 3)), x)
    assert rel_error(grad, 3 * x ** 2) < 1e-8
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 6 and printed[0].startswith("(0, 0)")
    df = randn(2, 3)
    # f returning x itself: each output must be copied before x moves again.
    assert rel_error(C.eval_numerical_gradient_array(lambda v: v, x, df), df) < 1e-9


# ----------------------------------------------------------------------------- data and training
def test_load_cifar10_is_channels_last_float(subset_dir):
    from gpuconv.data import load_cifar10

    with pytest.warns(UserWarning, match="no test_batch"):
        Xtr, Ytr, Xte, Yte = C.load_CIFAR10(subset_dir)
    assert Xtr.shape == (5170, 32, 32, 3) and Xtr.dtype == np.float64 and Xtr.flags.c_contiguous
    assert Ytr.shape == (5170,) and Ytr.dtype == np.int64
    assert Xte.shape == (0, 32, 32, 3) and Yte.shape == (0,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = load_cifar10(subset_dir, download=False).train
    np.testing.assert_array_equal(Xtr[:7], ref.images[:7].transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(Ytr, ref.labels)


def test_load_cifar10_reads_the_given_directory_or_fails(tmp_path, monkeypatch, subset_dir):
    """The assignment reads ROOT or fails; gpuconv's fallbacks ($GPUCONV_DATA, the cache) stay out."""
    monkeypatch.setenv("GPUCONV_DATA", str(subset_dir))
    for root in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(FileNotFoundError, match="holds no CIFAR-10 batches"):
            C.load_CIFAR10(root)


def test_get_cifar10_data_is_the_assignment_dict(subset_dir, tmp_path, monkeypatch):
    with pytest.warns(UserWarning, match="no test_batch"):
        data = C.get_CIFAR10_data(num_training=300, num_validation=50, num_test=10, cifar10_dir=subset_dir)
    assert {k: v.shape for k, v in data.items()} == {
        "X_train": (300, 3, 32, 32), "y_train": (300,), "X_val": (50, 3, 32, 32), "y_val": (50,),
        "X_test": (0, 3, 32, 32), "y_test": (0,)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Xtr, Ytr, _, _ = C.load_CIFAR10(subset_dir)
    mean = Xtr[:300].mean(axis=0)
    np.testing.assert_allclose(data["X_val"][7], (Xtr[307] - mean).transpose(2, 0, 1))  # val follows train
    np.testing.assert_array_equal(data["y_val"], Ytr[300:350])
    assert abs(data["X_train"].mean(axis=0)).max() < 1e-9 and data["X_train"].flags.c_contiguous
    # Without cifar10_dir it reads where gpuconv looks ($GPUCONV_DATA), never downloading then.
    monkeypatch.setenv("GPUCONV_DATA", str(subset_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = C.get_CIFAR10_data(num_training=20, num_validation=5, subtract_mean=False)
        np.testing.assert_array_equal(raw["X_train"], Xtr[:20].transpose(0, 3, 1, 2))
        with pytest.raises(ValueError, match="num_training=49000 \\+ num_validation=1000 exceeds the 5170 "
                                             "training images.*num_training=4170"):
            C.get_CIFAR10_data()
    with pytest.raises(ValueError, match="num_test must be an integer >= 0"):
        C.get_CIFAR10_data(num_test=-1, cifar10_dir=tmp_path)


def test_fast_layers_strategy_names_are_the_same_op():
    x, w, b = distinct(2, 3, 8, 8), randn(4, 3, 3, 3), randn(4)
    conv_param, pool_param = {"stride": 1, "pad": 1}, {"pool_height": 2, "pool_width": 2, "stride": 2}
    ref, _ = C.conv_forward_fast(x, w, b, conv_param)
    for fwd, bwd in ((C.conv_forward_im2col, C.conv_backward_im2col),
                     (C.conv_forward_strides, C.conv_backward_strides)):
        out, cache = fwd(x, w, b, conv_param)
        np.testing.assert_array_equal(out, ref)
        assert [a.shape for a in bwd(np.ones_like(out), cache)] == [x.shape, w.shape, b.shape]
    ref, _ = C.max_pool_forward_fast(x, pool_param)
    for fwd, bwd in ((C.max_pool_forward_reshape, C.max_pool_backward_reshape),
                     (C.max_pool_forward_im2col, C.max_pool_backward_im2col)):
        out, cache = fwd(x, pool_param)
        np.testing.assert_array_equal(out, ref)
        assert bwd(np.ones_like(out), cache).sum() == out.size


def test_solver_overfits_100_real_images(subset_dir):
    """The assignment's check: 100 training images, 15 epochs of Adam, training accuracy > 90%."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Xtr, Ytr, _, _ = C.load_CIFAR10(subset_dir)
    X = (Xtr[:1100] - Xtr[:1100].mean(axis=0)).transpose(0, 3, 1, 2).copy()
    data = {"X_train": X[:100], "y_train": Ytr[:100], "X_val": X[1000:1050], "y_val": Ytr[1000:1050]}
    np.random.seed(231)
    model = C.ThreeLayerConvNet(weight_scale=1e-2)
    solver = C.Solver(model, data, num_epochs=15, batch_size=50, update_rule="adam",
                      optim_config={"learning_rate": 1e-3}, verbose=False)
    solver.train()
    assert len(solver.loss_history) == 30 and all(isinstance(v, float) for v in solver.loss_history)
    assert len(solver.train_acc_history) == len(solver.val_acc_history) == 16
    assert solver.train_acc_history[-1] > 0.9, solver.train_acc_history
    assert np.mean(solver.loss_history[-4:]) < 0.5 * np.mean(solver.loss_history[:4])
    assert set(solver.best_params) == set(model.params) and model.params is solver.best_params


# ----------------------------------------------------------------------------- bad input
def test_a_python2_float_pad_is_told_to_use_floor_division():
    x, w, b = randn(1, 3, 8, 8), randn(2, 3, 7, 7), randn(2)
    conv_param = {"stride": 1, "pad": (7 - 1) / 2}   # a Python 2 convnet's pad, run on Python 3: 3.0
    for forward in (C.conv_forward_naive, C.conv_forward_fast):
        with pytest.raises(TypeError, match=r"got 3\.0; a float, as / gives in Python 3 .* divide with // instead"):
            forward(x, w, b, conv_param)
    with pytest.raises(TypeError, match=r"got 3\.0 \(float\); a float, .*\(filter_size - 1\) // 2"):
        nn.Conv2d(3, 2, 7, padding=(7 - 1) / 2)
    with pytest.raises(TypeError, match=r"got 2\.5$"):  # not a whole number: no such hint
        C.conv_forward_naive(x, w, b, {"stride": 1, "pad": 2.5})


def test_bad_inputs_raise_the_ops_errors():
    x, w, b = randn(1, 3, 7, 7), randn(2, 3, 3, 3), randn(2)
    with pytest.raises(ValueError, match=r"\([HW] - F \+ 2P\)/S \+ 1.*< 1"):
        C.conv_forward_naive(x, randn(2, 3, 9, 9), b, {"stride": 1, "pad": 0})     # a filter larger than x
    with pytest.raises(TypeError, match="real numbers.*astype"):
        C.affine_forward(randn(2, 3).astype(np.complex128), randn(3, 2), randn(2))
    with pytest.raises(KeyError, match="'pad'"):
        C.conv_forward_naive(x, w, b, {"stride": 1})
    with pytest.raises(KeyError, match="pool_width"):
        C.max_pool_forward_naive(x, {"pool_height": 2, "stride": 2})
    for pool in (C.max_pool_forward_fast, C.max_pool_forward_reshape, C.max_pool_forward_im2col):
        with pytest.raises(KeyError, match=r"pool_param has no 'pool_width' .*pool_param=\{'pool_height': 2, "):
            pool(x, {"pool_height": 2, "stride": 2})
    with pytest.raises(ValueError, match=r"\(D, M\)"):
        C.affine_forward(x, randn(100, 4), randn(4))
    # the bias against w as the caller laid it out, (D, M), not as the ops hold it
    with pytest.raises(ValueError, match=r"b must have shape \(4,\), one bias per output feature .*w \(147, 4\)"):
        C.affine_forward(x, randn(147, 4), randn(3))
    with pytest.raises(ValueError, match="KEEP probability.*edition\\(2017\\)"):
        C.dropout_forward(x, {"mode": "train", "p": 0.0})
    with pytest.raises(ValueError, match="'train' or 'test'"):
        C.batchnorm_forward(randn(4, 3), np.ones(3), np.zeros(3), {"mode": "eval"})
    with pytest.raises(TypeError, match="cache returned by batchnorm_forward"):
        C.batchnorm_backward(randn(4, 3), (randn(4, 3), np.ones(3), np.zeros(3)))
    with pytest.raises(ValueError, match="labels"):
        C.softmax_loss(randn(3, 4), np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="labels must lie"):
        C.svm_loss(randn(3, 4), np.array([0, 1, 4]))
    model = C.ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=2, filter_size=3, hidden_dim=4)
    data = {"X_train": randn(4, 3, 8, 8), "y_train": np.zeros(4, int), "X_val": randn(2, 3, 8, 8),
            "y_val": np.zeros(2, int)}
    with pytest.raises(ValueError, match="update_rule 'adagrad'"):
        C.Solver(model, data, update_rule="adagrad")
    with pytest.raises(KeyError, match="X_val"):
        C.Solver(model, {k: v for k, v in data.items() if k != "X_val"})



def test_bad_arguments_are_named_before_any_work():
    """A list, a scalar or an array of the wrong rank where a layer takes an array, a gamma or a
    dout of another layer's shape, a string where a parameter dict holds a number, and a cache of
    another layer are TypeErrors or ValueErrors naming the argument and the fix, raised before any
    shape or dtype of it is read (not an IndexError, an AttributeError or NumPy's broadcast error
    from inside the arithmetic)."""
    x, w, b = randn(2, 3, 4, 4), randn(2, 3, 3, 3), randn(2)
    pool, conv = {"pool_height": 2, "pool_width": 2, "stride": 2}, {"stride": 1, "pad": 1}
    list_x = r"x must be a NumPy \(or CuPy\) array, got list: wrap it first, e.g. np.asarray\(x, dtype=np.float64\)"
    for call in (lambda: C.relu_forward(x.tolist()), lambda: C.max_pool_forward_fast(x.tolist(), pool),
                 lambda: C.affine_forward(x.tolist(), randn(48, 2), b), lambda: C.dropout_forward(
                     x.tolist(), {"p": 0.5, "mode": "train"}), lambda: C.layernorm_forward([[1.0]], np.ones(1),
                                                                                        np.zeros(1), {})):
        with pytest.raises(TypeError, match=list_x):
            call()
    with pytest.raises(TypeError, match=r"^the CS231n functions take NumPy \(or CuPy\) arrays, got list"):
        C.conv_forward_naive(x, w.tolist(), b, conv)
    for pool_forward in (C.max_pool_forward_fast, C.max_pool_forward_reshape):
        with pytest.raises(ValueError, match=r"x must have 4 dimensions \(N, C, H, W\), got shape \(3, 4, 4\)"):
            pool_forward(x[0], pool)
    with pytest.raises(ValueError, match=r"x must be 4-D \(N, C, H, W\) for spatial_batchnorm_forward, got shape "
                                         r"\(2, 3\): use batchnorm_forward"):
        C.spatial_batchnorm_forward(randn(2, 3), np.ones(3), np.zeros(3), {"mode": "train"})
    with pytest.raises(ValueError, match=r"beta must hold one value per feature of x, shape \(3,\) or \(1, 3\)"):
        C.layernorm_forward(randn(2, 3), np.ones(3), np.zeros(2), {})
    _, ln_cache = C.layernorm_forward(randn(2, 3), np.ones(3), np.zeros(3), {})
    with pytest.raises(ValueError, match=r"dout must have shape \(2, 3\) \(the forward output's\), got \(2, 2\)"):
        C.layernorm_backward(randn(2, 2), ln_cache)
    _, drop_cache = C.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 0})
    with pytest.raises(ValueError, match=r"dout must have shape \(2, 3, 4, 4\) \(the forward output's\)"):
        C.dropout_backward(x[:, :2], drop_cache)
    with pytest.raises(TypeError, match=r"bn_param\['momentum'\] must be a number, got '0.9'"):
        C.batchnorm_forward(randn(4, 3), np.ones(3), np.zeros(3), {"mode": "train", "momentum": "0.9"})
    with pytest.raises(TypeError, match=r"dropout_param\['p'\] must be a number, got '0.5'"):
        C.dropout_forward(x, {"p": "0.5", "mode": "train"})
    # a number as a 0-d array (np.array(0.5)) is a number: used as it is
    out_0d, _ = C.dropout_forward(x, {"p": np.array(0.5), "mode": "train", "seed": 0})
    np.testing.assert_array_equal(out_0d, C.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 0})[0])
    with pytest.raises(TypeError, match=r"cache must be what conv_forward_naive returned as its second value, "
                                        r"\(x, w, b, conv_param\), got a 2-tuple"):
        C.conv_backward_naive(randn(2, 2, 4, 4), (x, w))
    with pytest.raises(TypeError, match=r"cache must be what max_pool_forward_fast returned .*, got NoneType"):
        C.max_pool_backward_fast(randn(2, 3, 2, 2), None)
    with pytest.raises(TypeError, match=r"cache must be what relu_forward returned .* its input x \(an array\)"):
        C.relu_backward(x, (x,))
    with pytest.raises(ValueError, match=r"x has no rows \(N = 0\)"):
        C.svm_loss(randn(0, 4), np.zeros(0, int))

def _tiny_model_and_data():
    model = C.ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=2, filter_size=3, hidden_dim=4)
    return model, {"X_train": randn(4, 3, 8, 8), "y_train": np.zeros(4, int), "X_val": randn(2, 3, 8, 8),
                   "y_val": np.zeros(2, int)}


def test_solver_and_update_rules_name_bad_data_and_settings_before_training():
    """A y_train shorter than X_train (an IndexError mid-epoch), an empty X_train (NumPy's sampler's
    own words), batch_size=0 (a ZeroDivisionError), a 2-tuple input_dim (an unpacking error), a
    gradient of another parameter's shape (broadcast into next_w, or NumPy's error) and a learning
    rate read as a string (a ufunc error) are refused by name, before any step."""
    model, data = _tiny_model_and_data()
    with pytest.raises(ValueError, match=r"data\['y_train'\] of shape \(3,\) must hold one label per example of "
                                         r"data\['X_train'\] \(shape \(4, 3, 8, 8\)\)"):
        C.Solver(model, {**data, "y_train": data["y_train"][:3]})
    with pytest.raises(ValueError, match=r"data\['X_train'\] holds no examples"):
        C.Solver(model, {**data, "X_train": data["X_train"][:0], "y_train": data["y_train"][:0]})
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1 .*got 0"):
        C.Solver(model, data, batch_size=0)
    with pytest.raises(ValueError, match=r"input_dim must be \(channels, height, width\) .*got \(8, 8\)"):
        C.ThreeLayerConvNet(input_dim=(8, 8), num_filters=2, filter_size=3, hidden_dim=4)
    for rule in (C.sgd, C.sgd_momentum, C.rmsprop, C.adam):
        with pytest.raises(ValueError, match=r"dw has shape \(1, 3\) but w has shape \(3,\): an update rule takes a "
                                             r"parameter and its own gradient"):
            rule(randn(3), randn(1, 3))
    with pytest.raises(TypeError, match=r"config\['learning_rate'\] must be a number, got '1e-3'"):
        C.sgd(randn(3), randn(3), {"learning_rate": "1e-3"})

def test_solver_refuses_unknown_arguments_as_the_assignment():
    model, data = _tiny_model_and_data()
    with pytest.raises(ValueError, match=r'^Unrecognized arguments "learning_rate", "momentum": .*optim_config'):
        C.Solver(model, data, learning_rate=1e-3, momentum=0.9)


@pytest.mark.parametrize("edition", [None, 2017, 2016, 2025])
def test_solver_takes_any_function_of_the_editions_optim_by_name(edition, monkeypatch):
    """As the assignment's getattr(optim, update_rule): a rule added to cs231n.optim is found by name."""
    E = C if edition is None else C.edition(edition)
    model, data = _tiny_model_and_data()

    def sgd_halved(w, dw, config=None):
        return E.optim.sgd(w, 0.5 * dw, config)
    monkeypatch.setattr(E.optim, "sgd_halved", sgd_halved, raising=False)
    assert E.Solver(model, data, update_rule="sgd_halved").update_rule is sgd_halved
    assert E.Solver(model, data, update_rule="adam").update_rule is E.adam  # the edition's own rules first
    with pytest.raises(ValueError, match=r"update_rule 'adagrad' is unknown: .*'sgd_halved'.* \(the functions of "
                                         r"gpuconv\.compat\.cs231n\.(e20\d\d\.)?optim\)"):
        E.Solver(model, data, update_rule="adagrad")
    with pytest.raises(ValueError, match="update_rule 'annotations' is unknown"):  # not a function
        E.Solver(model, data, update_rule="annotations")


def test_loading_in_a_thread_leaves_the_warnings_machinery_as_it_was(subset_dir, monkeypatch):
    """load_CIFAR10 in a data thread while the main thread is inside its own catch_warnings block
    (NumPy's, a notebook's): the blocks ended out of order, and every later warning of the process
    went into the thread's record list, shown nowhere. The loader changes no process-wide filters."""
    import threading
    import gpuconv.data
    inside, go = threading.Event(), threading.Event()
    real = gpuconv.data.find_data_dir

    def slow(*args, **kwargs):  # the read takes a while, as a full data set's does
        inside.set()
        go.wait(5)
        return real(*args, **kwargs)
    monkeypatch.setattr(gpuconv.data, "find_data_dir", slow)
    show, filters = warnings._showwarnmsg_impl, list(warnings.filters)
    got = []
    loader = threading.Thread(target=lambda: got.append(C.load_CIFAR10(subset_dir)))
    loader.start()
    inside.wait(5)
    with warnings.catch_warnings():
        go.set()
        loader.join()
    assert warnings._showwarnmsg_impl is show and warnings.filters == filters
    assert len(got) == 1 and got[0][0].shape == (5170, 32, 32, 3)


def _same(a, b, where="result"):
    """``a`` and ``b`` the same bits: arrays by dtype, shape and bytes; caches by type, items, ops
    cache, dtype and device; tuples and dicts item by item; anything else by value and type."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), where
    elif isinstance(a, C._call.Cache):
        assert repr(a.dtype) == repr(b.dtype) and a.device == b.device, where  # (a dtype equals None: float64)
        _same(tuple(a), tuple(b), where + " items")
        _same(a.ops, b.ops, where + ".ops")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _same(u, v, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_host_calls_of_one_dtype_skip_the_call_with_its_results_bit_for_bit(monkeypatch, dtype):
    """Host arrays of one float dtype (a gradient check's) call the ops without opening a Call,
    which would pass them and their results as they are: every layer's and sandwich's output,
    cache (items, ops cache, dtype, device) and gradients are the Call path's, bit for bit."""
    from gpuconv.compat.cs231n import _basic, layer_utils
    cp, pp = {"stride": 1, "pad": 1}, {"pool_height": 2, "pool_width": 2, "stride": 2}

    def run():
        rng = np.random.default_rng(8)
        x2, w2, b2 = (rng.standard_normal(s).astype(dtype) for s in ((3, 2, 4), (8, 5), (1, 5)))
        x4, w4, b4 = (rng.standard_normal(s).astype(dtype) for s in ((2, 3, 6, 6), (4, 3, 3, 3), (4,)))
        results = []
        for fwd, bwd, args in [(C.affine_forward, C.affine_backward, (x2, w2, b2)),
                               (C.relu_forward, C.relu_backward, (x4,)),
                               (C.conv_forward_naive, C.conv_backward_naive, (x4, w4, b4, cp)),
                               (C.conv_forward_fast, C.conv_backward_fast, (x4, w4, b4, cp)),
                               (C.max_pool_forward_naive, C.max_pool_backward_naive, (x4, pp)),
                               (C.max_pool_forward_fast, C.max_pool_backward_fast, (x4, pp)),
                               (C.affine_relu_forward, C.affine_relu_backward, (x2, w2, b2.reshape(-1))),
                               (C.conv_relu_forward, C.conv_relu_backward, (x4, w4, b4, cp)),
                               (C.conv_relu_pool_forward, C.conv_relu_pool_backward, (x4, w4, b4, cp, pp))]:
            y, cache = fwd(*args)
            results.append((y, cache, bwd(rng.standard_normal(y.shape).astype(dtype), cache)))
        results.append(C.softmax_loss(rng.standard_normal((4, 5)).astype(dtype), np.array([0, 4, 2, 2])))
        return results

    shortcut = run()
    monkeypatch.setattr(_basic, "plain_dtype", lambda *a: None)
    monkeypatch.setattr(_basic, "plain_backward", lambda *a: None)
    monkeypatch.setattr(layer_utils, "plain_dtype", lambda *a: None)
    _same(shortcut, run())
    assert C._call.plain_dtype(np.zeros(2, dtype)) == dtype  # (the shortcut was there to take)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_host_norm_layers_of_one_dtype_open_no_call_with_its_results_bit_for_bit(monkeypatch, dtype):
    """The normalization layers on host arrays of one float dtype run on a shared PlainCall, not a
    Call: batch norm (train, test, (D,) and (1, D) parameters, running statistics of another dtype),
    spatial batch norm, layer and group norm give the Call path's outputs, caches, gradients and
    running statistics bit for bit, and open no Call; so does the conv-batch norm-ReLU sandwich."""
    from gpuconv.compat.cs231n import _call, layer_utils

    def run():
        rng = np.random.default_rng(9)
        x2, d2 = (rng.standard_normal((3, 5)).astype(dtype) for _ in range(2))
        x4, d4 = (rng.standard_normal((2, 4, 3, 3)).astype(dtype) for _ in range(2))
        g2, b2 = rng.standard_normal(5).astype(dtype), rng.standard_normal(5).astype(dtype)
        g4, b4 = rng.standard_normal(4).astype(dtype), rng.standard_normal(4).astype(dtype)
        test = {"mode": "test", "running_mean": rng.standard_normal(5), "running_var": rng.uniform(1, 2, 5)}
        results, params = [], [{"mode": "train", "momentum": 0.7}, test, {"mode": "train"}, {"mode": "train"},
                               {"mode": "train"}]
        for p in params[:3]:
            for g, b in ((g2, b2), (g2.reshape(1, 5), b2.reshape(1, 5))):
                y, cache = C.batchnorm_forward(x2, g, b, p)
                results.append((y, cache, C.batchnorm_backward(d2, cache), C.batchnorm_backward_alt(d2, cache)))
        y, cache = C.spatial_batchnorm_forward(x4, g4, b4, params[3])
        results.append((y, cache, C.spatial_batchnorm_backward(d4, cache)))
        y, cache = C.layernorm_forward(x2, g2, b2, {"eps": 1e-4})
        results.append((y, cache, C.layernorm_backward(d2, cache)))
        y, cache = C.spatial_groupnorm_forward(x4, g4, b4, 2, {})
        results.append((y, cache, C.spatial_groupnorm_backward(d4, cache)))
        w4, bias4 = rng.standard_normal((4, 4, 3, 3)).astype(dtype), rng.standard_normal(4).astype(dtype)
        y, cache = C.conv_bn_relu_forward(x4, w4, bias4, g4, b4, {"stride": 1, "pad": 1}, params[4])
        results.append((y, cache, C.conv_bn_relu_backward(d4, cache)))
        return results, params

    calls = []
    init = _call.Call.__init__
    monkeypatch.setattr(_call.Call, "__init__", lambda self, *a, **k: calls.append(1) or init(self, *a, **k))
    shortcut = run()
    assert not calls
    monkeypatch.setattr(_call, "plain_dtype", lambda *a: None)
    monkeypatch.setattr(_call, "plain_backward", lambda *a: None)
    monkeypatch.setattr(layer_utils, "plain_dtype", lambda *a: None)
    _same(shortcut, run())
    assert len(calls) == 28  # (each forward and backward opened one; the sandwich, its own and its batch norm's)
