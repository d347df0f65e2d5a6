"""conv2d: hand-computed cases (CS231n), a direct-loop reference, gradients, properties, errors.

Each test body runs on every backend (numpy reference, the simulator, a GPU when present)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.ops import _dispatch, conv2d as conv_mod
from gpuconv.ops import conv2d_backward, conv2d_forward, conv_output_size

HYPO = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def direct_conv(x, w, b, stride, pad):
    """The definition, one output pixel at a time, in float64."""
    (sh, sw), (ph, pw) = stride, pad
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    n, c, h, wd = x.shape
    k, _, fh, fw = w.shape
    oh, ow = (h - fh) // sh + 1, (wd - fw) // sw + 1
    y = np.zeros((n, k, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * sh:i * sh + fh, j * sw:j * sw + fw]
            y[:, :, i, j] = np.tensordot(patch, w.astype(np.float64), axes=([1, 2, 3], [1, 2, 3]))
    return y if b is None else y + b[None, :, None, None]


# ---------------------------------------------------------------- hand-computed (CS231n notes)
@pytest.mark.parametrize("stride, out", [(1, 5), (2, 3)])
def test_cs231n_7x7_input_3x3_filter(backend, stride, out):
    x = backend.asarray(np.ones((1, 1, 7, 7), np.float32))
    w = backend.asarray(np.ones((1, 1, 3, 3), np.float32))
    y, _ = conv2d_forward(x, w, stride=stride)
    assert y.shape == (1, 1, out, out)
    np.testing.assert_array_equal(backend.asnumpy(y), np.full((1, 1, out, out), 9.0, np.float32))


def test_cs231n_7x7_stride3_does_not_fit(backend):
    x = backend.asarray(np.ones((1, 1, 7, 7), np.float32))
    w = backend.asarray(np.ones((1, 1, 3, 3), np.float32))
    # The height is checked first, and named with its own letter: H.
    with pytest.raises(ValueError, match=r"along the height: input size H=7.*F=3.*S=3.*P=0.*\(H - F \+ 2P\)/S \+ 1"
                                         r".*not an integer"):
        conv2d_forward(x, w, stride=3)


def test_alexnet_first_layer_227_to_55(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 227, 227)).astype(np.float32)
    w = rng.standard_normal((2, 3, 11, 11)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    y, _ = conv2d_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b), stride=4, padding=0)
    assert y.shape == (1, 2, 55, 55)
    ref = direct_conv(x, w, b, (4, 4), (0, 0))
    np.testing.assert_allclose(backend.asnumpy(y), ref, rtol=1e-4, atol=1e-6 * 3 * 11 * 11)


def test_cache_repr_shows_shapes_not_values():
    _, cache = conv2d_forward(np.ones((2, 3, 8, 8), np.float32), np.ones((4, 3, 3, 3), np.float32), padding=1)
    assert repr(cache) == ("Conv2dCache(x=array(shape=(2, 3, 8, 8), dtype=float32), w=array(shape=(4, 3, 3, 3), "
                           "dtype=float32), has_bias=False, stride=(1, 1), padding=(1, 1), crop=None, dilation=(1, 1), "
                           "groups=1)")


def test_hand_worked_numbers(backend):
    x = np.array([[1, 2, 0], [0, 1, 3], [2, 1, 0]], np.float64)[None, None]
    w = np.array([[1, -1], [2, 0]], np.float64)[None, None]
    b = np.array([0.5])
    y, cache = conv2d_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b))
    np.testing.assert_array_equal(backend.asnumpy(y)[0, 0], [[-0.5, 4.5], [3.5, 0.5]])
    dx, dw, db = conv2d_backward(backend.asarray(np.ones((1, 1, 2, 2))), cache)
    np.testing.assert_array_equal(backend.asnumpy(dx)[0, 0], [[1, 0, -1], [3, 2, -1], [2, 2, 0]])
    np.testing.assert_array_equal(backend.asnumpy(dw)[0, 0], [[4, 6], [4, 5]])
    np.testing.assert_array_equal(backend.asnumpy(db), [4.0])
    # With padding 1 the corner window sees only x[0, 0], under w[1, 1] = 0.
    y, _ = conv2d_forward(backend.asarray(x), backend.asarray(w), padding=1)
    assert y.shape == (1, 1, 4, 4)
    assert backend.asnumpy(y)[0, 0, 0, 0] == 0.0 and backend.asnumpy(y)[0, 0, 3, 3] == 0.0


# ---------------------------------------------------------------- against the direct reference
CASES = [  # (N, C, H, W), (K, FH, FW), stride, padding
    ((2, 3, 8, 8), (4, 3, 3), 1, 1),
    ((2, 3, 9, 7), (5, 3, 3), 2, 1),
    ((1, 4, 6, 6), (3, 1, 1), 1, 0),
    ((2, 2, 10, 9), (3, 4, 3), (2, 3), (1, 0)),
    ((3, 5, 5, 5), (2, 5, 5), 1, 2),
]


@pytest.mark.parametrize("xs, ws, stride, padding", CASES)
def test_forward_float32_matches_float64_direct(backend, xs, ws, stride, padding):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal((ws[0], xs[1]) + ws[1:]).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    y, _ = conv2d_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b), stride, padding)
    assert y.dtype == np.float32
    sp = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    reduction = xs[1] * ws[1] * ws[2]
    np.testing.assert_allclose(backend.asnumpy(y), direct_conv(x, w, b, sp(stride), sp(padding)),
                               rtol=1e-4, atol=1e-6 * reduction)
    backend.assert_kernels_ran("conv2d_forward")


@pytest.mark.parametrize("xs, ws, stride, padding", CASES)
def test_gradients_float64(backend, xs, ws, stride, padding):
    rng = np.random.default_rng(2)
    x = backend.asarray(rng.standard_normal(xs))
    w = backend.asarray(rng.standard_normal((ws[0], xs[1]) + ws[1:]))
    b = backend.asarray(rng.standard_normal(ws[0]))
    y, cache = conv2d_forward(x, w, b, stride, padding)
    dy = backend.asarray(rng.standard_normal(y.shape))
    dx, dw, db = conv2d_backward(dy, cache)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    num_dx = numerical_gradient_array(lambda a: conv2d_forward(a, w, b, stride, padding)[0], x, dy)
    num_dw = numerical_gradient_array(lambda a: conv2d_forward(x, a, b, stride, padding)[0], w, dy)
    num_db = numerical_gradient_array(lambda a: conv2d_forward(x, w, a, stride, padding)[0], b, dy)
    assert relative_error(dx, num_dx) < 1e-6
    assert relative_error(dw, num_dw) < 1e-6
    assert relative_error(db, num_db) < 1e-6


FLOOR_CASES = [  # sizes the windows do not tile: PyTorch's rule drops what no window reaches
    ((2, 3, 8, 8), (4, 3, 3), 2, 1),         # a ResNet's downsampling 3x3: 8x8 -> 4x4, a padding row unread
    ((2, 4, 8, 8), (3, 1, 1), 2, 0),         # its 1x1 shortcut: the last input row and column unread
    ((1, 2, 8, 8), (3, 3, 3), 2, 0),         # a 3x3 without padding: the last input row and column unread
    ((1, 2, 9, 10), (3, 3, 2), (2, 3), (0, 1)),
]


@pytest.mark.parametrize("xs, ws, stride, padding", FLOOR_CASES)
def test_floor_takes_pytorchs_output_size(backend, xs, ws, stride, padding):
    """``floor=True``: ``floor((H - F + 2P)/S) + 1`` outputs, each the definition's (direct_conv
    floors); the input pixels no window reads get a zero gradient; float64 gradients against
    central differences; every kernel family ran. Without floor the sizes are refused, naming it."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(xs)
    w = rng.standard_normal((ws[0], xs[1]) + ws[1:])
    b = rng.standard_normal(ws[0])
    sp = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    want = direct_conv(x, w, b, sp(stride), sp(padding))
    X, W, Bb = (backend.asarray(a) for a in (x, w, b))
    with pytest.raises(ValueError, match=r"not an integer.*or pass floor=True for PyTorch's rule"):
        conv2d_forward(X, W, Bb, stride, padding)
    y, cache = conv2d_forward(X, W, Bb, stride, padding, floor=True)
    assert y.shape == want.shape
    np.testing.assert_allclose(backend.asnumpy(y), want, rtol=1e-12, atol=1e-12)
    dy = backend.asarray(rng.standard_normal(y.shape))
    dx, dw, db = conv2d_backward(dy, cache)
    (sh, sw), (ph, pw) = sp(stride), sp(padding)
    rows = (y.shape[2] - 1) * sh + ws[1] - ph  # input rows (columns) some window reads
    cols = (y.shape[3] - 1) * sw + ws[2] - pw
    assert not backend.asnumpy(dx)[:, :, rows:].any() and not backend.asnumpy(dx)[:, :, :, cols:].any()
    assert rows == xs[2] or backend.asnumpy(dx)[:, :, :rows].any()  # (the read ones do get a gradient)
    f = lambda a, b_=None: conv2d_forward(*a, stride, padding, floor=True)[0]  # noqa: E731
    assert relative_error(dx, numerical_gradient_array(lambda a: f((a, W, Bb)), X, dy)) < 1e-6
    assert relative_error(dw, numerical_gradient_array(lambda a: f((X, a, Bb)), W, dy)) < 1e-6
    assert relative_error(db, numerical_gradient_array(lambda a: f((X, W, a)), Bb, dy)) < 1e-6
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape"):
        conv2d_backward(backend.asarray(np.zeros(y.shape[:2] + (y.shape[2] + 1, y.shape[3]))), cache)
    with pytest.raises(TypeError, match="floor must be True or False"):
        conv2d_forward(X, W, Bb, stride, padding, floor="yes")
    backend.assert_kernels_ran("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")


def test_no_bias_gives_db_none(backend):
    rng = np.random.default_rng(3)
    x = backend.asarray(rng.standard_normal((2, 2, 5, 5)).astype(np.float32))
    w = backend.asarray(rng.standard_normal((3, 2, 3, 3)).astype(np.float32))
    y, cache = conv2d_forward(x, w, padding=1)
    dx, dw, db = conv2d_backward(backend.asarray(np.ones(y.shape, np.float32)), cache)
    assert db is None and dx.dtype == np.float32 and dw.dtype == np.float32


@pytest.mark.parametrize("stride, padding, k", [(1, 1, 3), (2, 0, 5), (1, 0, 6)])
def test_need_dx_false_skips_dx_and_keeps_dw_db(backend, stride, padding, k):
    """A first layer's input gradient is never used: skipping it must not change dw and db
    (both the 'full' stride-1 dx path (K <= C) and the scatter path are covered)."""
    rng = np.random.default_rng(4)
    x = backend.asarray(rng.standard_normal((2, 4, 7, 7)).astype(np.float32))
    w = backend.asarray(rng.standard_normal((k, 4, 3, 3)).astype(np.float32))
    b = backend.asarray(rng.standard_normal(k).astype(np.float32))
    y, cache = conv2d_forward(x, w, b, stride=stride, padding=padding)
    dy = backend.asarray(rng.standard_normal(y.shape).astype(np.float32))
    dx, dw, db = conv2d_backward(dy, cache)
    none, dw2, db2 = conv2d_backward(dy, cache, need_dx=False)
    assert dx is not None and none is None
    np.testing.assert_array_equal(backend.asnumpy(dw2), backend.asnumpy(dw))
    np.testing.assert_array_equal(backend.asnumpy(db2), backend.asnumpy(db))


def test_bias_gradient_alone_makes_no_multiplicand_copies():
    """The NumPy backward asked for the bias gradient alone (need_dx=False, need_dw=False: frozen
    filters on data, airbench94's whitening conv while its bias trains) reads dy only: no float32
    copies of a bfloat16 dy and x for GEMMs that do not run, one float32 dy for the sum."""
    import tracemalloc
    import ml_dtypes
    rng = np.random.default_rng(6)
    x = rng.standard_normal((64, 3, 32, 32)).astype(ml_dtypes.bfloat16)
    w = rng.standard_normal((24, 3, 2, 2)).astype(ml_dtypes.bfloat16)
    y, cache = conv2d_forward(x, w, np.zeros(24, ml_dtypes.bfloat16))
    dy = rng.standard_normal(y.shape).astype(ml_dtypes.bfloat16)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        dx, dw, db = conv2d_backward(dy, cache, need_dx=False, need_dw=False)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert dx is None and dw is None
    assert peak < 1.5 * 2 * dy.nbytes, f"{peak} bytes for the bias gradient of a {dy.nbytes}-byte dy"
    np.testing.assert_array_equal(db, conv2d_backward(dy, cache)[2])


@pytest.mark.parametrize("need_dx", [True, False])
def test_need_dw_false_skips_dw_and_keeps_dx_db(backend, need_dx):
    """Frozen filters need no weight gradient: ``need_dw=False`` gives dw None, the same dx and db,
    and on a kernel target launches no weight-gradient kernel (the Conv2d layer asks for it when
    its weight has requires_grad=False)."""
    rng = np.random.default_rng(5)
    x = backend.asarray(rng.standard_normal((2, 4, 7, 7)).astype(np.float32))
    w = backend.asarray(rng.standard_normal((3, 4, 3, 3)).astype(np.float32))
    b = backend.asarray(rng.standard_normal(3).astype(np.float32))
    y, cache = conv2d_forward(x, w, b, padding=1)
    dy = backend.asarray(rng.standard_normal(y.shape).astype(np.float32))
    dx, _, db = conv2d_backward(dy, cache, need_dx=need_dx)
    before = len(backend.launches)
    dx2, none, db2 = conv2d_backward(dy, cache, need_dx=need_dx, need_dw=False)
    assert none is None and (dx2 is None) == (not need_dx)
    if need_dx:
        np.testing.assert_array_equal(backend.asnumpy(dx2), backend.asnumpy(dx))
    np.testing.assert_array_equal(backend.asnumpy(db2), backend.asnumpy(db))
    assert not any("backward_weight" in n or "reduce" in n for n in backend.launches.names[before:])
    from gpuconv.layers import Conv2d
    layer = Conv2d(4, 3, 3, padding=1)
    layer.weight.requires_grad = False
    layer.to(backend.device)
    layer(x)
    before = len(backend.launches)
    layer.backward(dy)
    assert layer.weight.grad is None and layer.bias.grad is not None
    assert not any("backward_weight" in n for n in backend.launches.names[before:])


def test_large_batch_is_chunked_consistently(backend, monkeypatch):
    """A tiny column budget forces one sample per chunk; results must not change."""
    rng = np.random.default_rng(4)
    x = backend.asarray(rng.standard_normal((5, 3, 6, 6)))
    w = backend.asarray(rng.standard_normal((4, 3, 3, 3)))
    y, cache = conv2d_forward(x, w, stride=1, padding=1)
    dy = backend.asarray(rng.standard_normal(y.shape))
    full = conv2d_backward(dy, cache)
    monkeypatch.setattr(conv_mod, "_COL_BYTES", 1)
    y2, cache2 = conv2d_forward(x, w, stride=1, padding=1)
    np.testing.assert_allclose(backend.asnumpy(y2), backend.asnumpy(y), rtol=1e-12, atol=1e-12)
    for a, b in zip(conv2d_backward(dy, cache2)[:2], full[:2]):
        np.testing.assert_allclose(backend.asnumpy(a), backend.asnumpy(b), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- properties
geometry = st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 4), st.integers(1, 4),
                     st.integers(1, 3), st.integers(1, 3), st.integers(0, 2), st.integers(0, 2))


@HYPO
@given(g=geometry)
def test_output_size_rule(backend, g):
    h, wd, fh, fw, sh, sw, ph, pw = g
    x = backend.asarray(np.zeros((1, 1, h, wd), np.float32))
    w = backend.asarray(np.zeros((1, 1, fh, fw), np.float32))
    fits = all(span >= 0 and span % s == 0 for span, s in ((h - fh + 2 * ph, sh), (wd - fw + 2 * pw, sw)))
    if not fits:
        with pytest.raises(ValueError, match=r"\([HW] - F \+ 2P\)/S \+ 1"):
            conv2d_forward(x, w, stride=(sh, sw), padding=(ph, pw))
        return
    y, _ = conv2d_forward(x, w, stride=(sh, sw), padding=(ph, pw))
    assert y.shape == (1, 1, (h - fh + 2 * ph) // sh + 1, (wd - fw + 2 * pw) // sw + 1)
    assert conv_output_size(h, fh, sh, ph) == y.shape[2]


def _fitting(g):
    h, wd, fh, fw, sh, sw, ph, pw = g
    # Grow the input until it fits, so every example is a valid convolution.
    h = max(h, fh) + (-(max(h, fh) - fh + 2 * ph)) % sh
    wd = max(wd, fw) + (-(max(wd, fw) - fw + 2 * pw)) % sw
    return h, wd, fh, fw, (sh, sw), (ph, pw)


@HYPO
@given(g=geometry, c=st.integers(1, 3), k=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_linearity_and_adjoint_identity(backend, g, c, k, seed):
    h, wd, fh, fw, stride, pad = _fitting(g)
    rng = np.random.default_rng(seed)
    x1, x2 = (backend.asarray(rng.standard_normal((2, c, h, wd))) for _ in range(2))
    w = backend.asarray(rng.standard_normal((k, c, fh, fw)))
    y1, cache = conv2d_forward(x1, w, None, stride, pad)
    y2, _ = conv2d_forward(x2, w, None, stride, pad)
    y12, _ = conv2d_forward(3.0 * x1 - x2, w, None, stride, pad)
    np.testing.assert_allclose(backend.asnumpy(y12), backend.asnumpy(3.0 * y1 - y2), rtol=1e-10, atol=1e-10)
    g_ = backend.asarray(rng.standard_normal(y1.shape))
    dx, dw, _ = conv2d_backward(g_, cache)
    lhs = float((y1 * g_).sum())
    assert lhs == pytest.approx(float((x1 * dx).sum()), rel=1e-9, abs=1e-9)
    assert lhs == pytest.approx(float((w * dw).sum()), rel=1e-9, abs=1e-9)


# ---------------------------------------------------------------- kernel hook
def test_registered_launcher_runs_on_its_target_only(backend, monkeypatch):
    calls = []

    def launcher(x, w, b, stride, padding, tf32, *, target):
        calls.append(target)
        return NotImplemented if stride == (2, 2) else ("kernel", target)

    monkeypatch.setitem(_dispatch._LAUNCHERS, ("conv2d_forward", "sim"), launcher)
    x = backend.asarray(np.ones((1, 1, 5, 5), np.float32))
    w = backend.asarray(np.ones((1, 1, 3, 3), np.float32))
    out = conv2d_forward(x, w)
    if backend.name == "sim":
        assert out == ("kernel", "sim") and calls == ["sim"]
        y, _ = conv2d_forward(x, w, stride=2)  # declined: the reference runs
        np.testing.assert_array_equal(backend.asnumpy(y), np.full((1, 1, 2, 2), 9.0))
        assert backend.launches.dispatches == [("conv2d_forward", "sim", "kernel"),
                                               ("conv2d_forward", "sim", "declined")]
        backend.launches.clear()  # the fall-back was the point here; the fixture would fail it
    else:
        assert calls == [] and out[0].shape == (1, 1, 3, 3)


def test_dispatch_registry_api(monkeypatch):
    monkeypatch.setattr(_dispatch, "_LAUNCHERS", {})
    assert _dispatch.get_launcher("conv2d_forward", None) is None
    assert _dispatch.get_launcher("conv2d_forward", "sim") is None

    @_dispatch.register_launcher("conv2d_forward", targets="sim")
    def fn(*a, target):
        return target

    assert _dispatch.get_launcher("conv2d_forward", "sim") is fn
    assert _dispatch.get_launcher("conv2d_forward", "cuda") is None
    assert _dispatch.call("conv2d_forward", "sim", lambda: "reference") == "sim"
    assert _dispatch.call("conv2d_forward", None, lambda: "reference") == "reference"
    with pytest.raises(ValueError, match=r"targets: 'gpu' is not a kernel target; use 'cuda' and/or 'sim'"):
        _dispatch.register_launcher("conv2d_forward", targets=("gpu",))


# ---------------------------------------------------------------- errors, raised before any work
@pytest.fixture
def no_work(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the reference ran before the arguments were checked")
    monkeypatch.setattr(conv_mod, "_conv2d_forward_reference", boom)


class TensorLike:
    """A tensor of another library, as PyTorch's: a shape, an ndim, and a dtype that is not NumPy's
    (which the dtype checks would print as 'has dtype torch.float32, but ops take ... float32')."""
    dtype, shape, ndim = "torch.float32", (1, 1, 5, 5), 4

    def detach(self):
        return self

    def cpu(self):
        return self


ERRORS = [
    (dict(x=np.ones((1, 1, 5, 5), np.int32)), TypeError, r"x has dtype int32.*astype\(np.float32\)"),
    (dict(w=np.ones((1, 1, 3, 3), np.float16)), TypeError, r"w has dtype float16"),
    (dict(w=np.ones((1, 1, 3, 3), np.float64)), TypeError, r"w has dtype float64 but x has dtype float32"),
    (dict(x=np.ones((1, 5, 5), np.float32)), ValueError, r"x must have 4 dimensions.*\(1, 5, 5\)"),
    (dict(w=np.ones((1, 3, 3), np.float32)), ValueError, r"w must have 4 dimensions"),
    (dict(w=np.ones((1, 2, 3, 3), np.float32)), ValueError, r"channel mismatch: x has C=1.*w expects C=2"),
    (dict(x=np.ones((1, 5, 5, 2), np.float32), w=np.ones((1, 2, 3, 3), np.float32)), ValueError,  # HWC images
     r"channel mismatch: x has C=5 .*x looks laid out N, H, W, C .*x\.transpose\(0, 3, 1, 2\)"),
    (dict(b=np.ones(2, np.float32)), ValueError, r"b must have shape \(1,\).*got \(2,\)"),
    (dict(stride=0), ValueError, r"stride must be >= 1"),
    (dict(stride=1.5), TypeError, r"stride must be an int or an \(h, w\) pair"),
    (dict(padding=-1), ValueError, r"padding must be >= 0"),
    (dict(stride=2**31, floor=True), ValueError, r"stride must be at most 2\*\*31 - 1 .*got 2147483648"),  # sim: int32
    # an output past int sizes: the launch's OverflowError (sim), NumPy's 'array is too big' (numpy)
    (dict(w=np.ones((1, 1, 1, 1), np.float32), padding=2**30), ValueError,
     r"the output would be 2147483653 along the height, past 2\*\*31 - 1 .*use less padding or a larger stride"),
    (dict(padding=(1, 2, 3)), TypeError, r"padding must be an int or an \(h, w\) pair"),
    (dict(w=np.ones((1, 1, 7, 3), np.float32)), ValueError, r"height: input size H=5, filter F=7.*< 1"),
    (dict(w=np.ones((1, 1, 0, 3), np.float32)), ValueError, r"w has an empty filter: .*FH=0, FW=3"),  # the sim: SIGFPE
    (dict(w=np.ones((1, 1, 3, 0), np.float32)), ValueError, r"w has an empty filter"),
    (dict(x=np.ones((1, 1, 5, 6), np.float32), stride=(1, 2)), ValueError,
     r"width: input size W=6, filter F=3, stride S=2, padding P=0 give \(W - F \+ 2P\)/S \+ 1 = "
     r"\(6 - 3 \+ 2\*0\)/2 \+ 1 = 2.5, not an integer"),
    (dict(x=[[1.0]]), TypeError, r"x must be a numpy or cupy array, got list"),
    (dict(x=TensorLike()), TypeError, r"x must be a numpy or cupy array, got .*TensorLike \(torch\.float32\): "
     r"convert it first, e\.g\. x = x\.detach\(\)\.cpu\(\)\.numpy\(\)"),
]


@pytest.mark.parametrize("override, exc, match", ERRORS)
def test_bad_arguments_rejected_before_work(backend, no_work, override, exc, match):
    args = dict(x=np.ones((1, 1, 5, 5), np.float32), w=np.ones((1, 1, 3, 3), np.float32), b=None,
                stride=1, padding=0)
    args.update(override)
    for name in ("x", "w", "b"):
        if isinstance(args[name], np.ndarray):
            args[name] = backend.asarray(args[name])
    with pytest.raises(exc, match=match):
        conv2d_forward(**args)


def test_backward_rejects_wrong_dy(backend):
    x = backend.asarray(np.ones((1, 1, 5, 5), np.float32))
    w = backend.asarray(np.ones((1, 1, 3, 3), np.float32))
    _, cache = conv2d_forward(x, w)
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(1, 1, 3, 3\)"):
        conv2d_backward(backend.asarray(np.ones((1, 1, 4, 4), np.float32)), cache)
    with pytest.raises(TypeError, match=r"dy has dtype float64 but x has dtype float32"):
        conv2d_backward(backend.asarray(np.ones((1, 1, 3, 3))), cache)

    for flag in ("need_dx", "need_dw"):  # a word or a number was taken as a switch ("no" is true)
        with pytest.raises(TypeError, match=rf"{flag} must be True or False, got 'no'"):
            conv2d_backward(backend.asarray(np.ones((1, 1, 3, 3), np.float32)), cache, **{flag: "no"})


def test_error_hints_fit_the_argument(backend):
    x = backend.asarray(np.zeros((1, 3, 8, 7), np.float32))
    with pytest.raises(ValueError, match=r"along the width: input size W=7.*\(W - F \+ 2P\)"):
        conv2d_forward(x, backend.asarray(np.zeros((1, 3, 2, 2), np.float32)), stride=2)
    with pytest.raises(ValueError, match=r"w must have 4 dimensions.*give an array laid out as") as info:
        conv2d_forward(x, backend.asarray(np.zeros((3, 3, 3), np.float32)))
    assert "[None]" not in str(info.value)  # a 3-D weight is not a missing batch axis
    with pytest.raises(ValueError, match=r"x\[None\] adds a leading batch axis"):
        conv2d_forward(x[0], backend.asarray(np.zeros((1, 3, 3, 3), np.float32)))



@pytest.mark.parametrize("fh, fw", [(3, 3), (5, 1)])
def test_padding_same_and_valid_as_in_pytorch_and_the_layer(backend, fh, fw):
    """F.conv2d's string paddings: 'same' keeps the size (stride 1, odd filters: (F - 1) // 2 on every
    side, the values PyTorch gives; even ones: test_padding_same_with_an_even_filter_pads_as_pytorch),
    'valid' is 0; refused where Conv2d refuses them, with its message. Before, the op took only
    numbers: "padding must be an int or an (h, w) pair of ints"."""
    from gpuconv.layers import Conv2d
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((1, 2, 5, 4)), rng.standard_normal((2, 2, fh, fw))
    for padding, pad in (("same", ((fh - 1) // 2, (fw - 1) // 2)), ("valid", (0, 0))):
        y, cache = conv2d_forward(backend.asarray(x), backend.asarray(w), padding=padding)
        assert cache.padding == pad and y.shape == direct_conv(x, w, None, (1, 1), pad).shape
        np.testing.assert_allclose(backend.asnumpy(y), direct_conv(x, w, None, (1, 1), pad), rtol=1e-12, atol=1e-12)
        assert conv2d_backward(backend.asarray(np.ones(y.shape)), cache)[0].shape == x.shape
    assert conv2d_forward(backend.asarray(x), backend.asarray(w), padding="same")[0].shape[2:] == x.shape[2:]
    messages = []
    for w_hw, stride, padding in (((4, 5), 2, "same"), ((3, 3), 2, "same"), ((3, 3), 1, "full")):
        with pytest.raises(ValueError) as layer_error:
            Conv2d(2, 2, w_hw, stride=stride, padding=padding)
        with pytest.raises(ValueError) as op_error:
            conv2d_forward(backend.asarray(x), backend.asarray(np.ones((2, 2) + w_hw)), stride=stride, padding=padding)
        assert str(op_error.value) == str(layer_error.value)
        messages.append(str(op_error.value))
    assert messages[0] == ("padding='same' needs stride 1 (as in PyTorch: a strided convolution's output is "
                           "smaller whatever the padding), got kernel_size=(4, 5), stride=(2, 2): give the padding "
                           "as a number, e.g. padding=(1, 2) ((k - 1) // 2, what 'same' pads at stride 1), with "
                           "floor=True where the sizes do not divide")
    assert "stride=(2, 2): give the padding as a number, e.g. padding=1 (" in messages[1]
    assert "padding='full': use an int, an (h, w) pair, 'valid' or 'same'" in messages[2]

def _same_reference(x, w, b, dy):
    """padding='same' by hand, as PyTorch pads it: F - 1 zeros per axis, (F - 1) // 2 of them
    before, np.pad, then the op with padding 0 (its own tests check that), dx cropped back."""
    (fh, fw) = w.shape[2:]
    top, left = (fh - 1) // 2, (fw - 1) // 2
    xpad = np.pad(x, ((0, 0), (0, 0), (top, fh - 1 - top), (left, fw - 1 - left)))
    y, cache = conv2d_forward(xpad, w, b, padding=0)
    dxpad, dw, db = conv2d_backward(dy, cache)
    return y, dxpad[:, :, top:top + x.shape[2], left:left + x.shape[3]], dw, db


@pytest.mark.parametrize("fh, fw, channels_last", [(2, 2, False), (4, 4, True), (3, 2, False), (2, 5, True)])
def test_padding_same_with_an_even_filter_pads_as_pytorch(backend, fh, fw, channels_last):
    """PyTorch's padding='same' for an even filter size: F - 1 zeros, (F - 1) // 2 before and the
    extra one after (F.conv2d(x, w, padding='same') == F.conv2d(F.pad(x, (l, r, t, b)), w)); the
    output keeps x's size and layout, and dx, dw, db are those of the padded convolution, dx
    cropped. The cache keeps the padded x and the zeros it added. Before: "padding='same' needs
    stride 1 and odd kernel sizes"."""
    from gpuconv import layout
    rng = np.random.default_rng(7)
    x, w, b = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, fh, fw)), rng.standard_normal(4)
    dy = rng.standard_normal((2, 4, 7, 6))
    ref = _same_reference(x, w, b, dy)
    xd = backend.asarray(x)
    if channels_last:
        xd = layout.to_channels_last(xd)
    y, cache = conv2d_forward(xd, backend.asarray(w), backend.asarray(b), padding="same")
    assert y.shape == x.shape[:1] + (4,) + x.shape[2:] and layout.is_channels_last(y) == channels_last
    top, left = (fh - 1) // 2, (fw - 1) // 2
    assert cache.crop == ((top, fh - 1 - top), (left, fw - 1 - left)) and cache.padding == (0, 0)
    assert cache.x.shape == (2, 3, 7 + fh - 1, 6 + fw - 1) and layout.is_channels_last(cache.x) == channels_last
    dyd = backend.asarray(dy)
    dx, dw, db = conv2d_backward(layout.to_channels_last(dyd) if channels_last else dyd, cache)
    assert dx.shape == x.shape and layout.is_channels_last(dx) == channels_last
    assert dx.flags.c_contiguous or layout.is_channels_last(dx)  # a dense array, not a view of the padded one
    for got, want in zip((y, dx, dw, db), ref):
        np.testing.assert_allclose(backend.asnumpy(got), want, rtol=1e-12, atol=1e-12)
    none, dw2, db2 = conv2d_backward(dyd, cache, need_dx=False)
    assert none is None
    np.testing.assert_allclose(backend.asnumpy(dw2), ref[2], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backend.asnumpy(db2), ref[3], rtol=1e-12, atol=1e-12)
    y_floor, _ = conv2d_forward(xd, backend.asarray(w), backend.asarray(b), padding="same", floor=True)
    np.testing.assert_array_equal(backend.asnumpy(y_floor), backend.asnumpy(y))
    backend.assert_kernels_ran("conv2d_forward", "conv2d_backward")


@pytest.mark.parametrize("fh, fw", [(2, 2), (4, 3)])
def test_padding_same_with_an_even_filter_gradients_float64(backend, fh, fw):
    rng = np.random.default_rng(8)
    x = backend.asarray(rng.standard_normal((2, 2, 5, 4)))
    w = backend.asarray(rng.standard_normal((3, 2, fh, fw)))
    b = backend.asarray(rng.standard_normal(3))
    y, cache = conv2d_forward(x, w, b, padding="same")
    dy = backend.asarray(rng.standard_normal(y.shape))
    dx, dw, db = conv2d_backward(dy, cache)
    assert y.shape[2:] == x.shape[2:]
    def same(*args):
        return conv2d_forward(*args, padding="same")[0]
    assert relative_error(dx, numerical_gradient_array(lambda a: same(a, w, b), x, dy)) < 1e-6
    assert relative_error(dw, numerical_gradient_array(lambda a: same(x, a, b), w, dy)) < 1e-6
    assert relative_error(db, numerical_gradient_array(lambda a: same(x, w, a), b, dy)) < 1e-6


def test_padding_same_with_an_even_filter_on_an_empty_batch_and_a_one_pixel_image(backend):
    """The padded copy of no image, and of a 1x1 image (the filter sees one pixel and zeros)."""
    w = np.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    y, cache = conv2d_forward(backend.asarray(np.ones((0, 1, 3, 3))), backend.asarray(w), padding="same")
    dx, dw, _ = conv2d_backward(backend.asarray(np.ones((0, 1, 3, 3))), cache)
    assert y.shape == dx.shape == (0, 1, 3, 3) and not backend.asnumpy(dw).any()
    y, cache = conv2d_forward(backend.asarray(np.full((1, 1, 1, 1), 2.0)), backend.asarray(w), padding="same")
    assert backend.asnumpy(y).tolist() == [[[[2.0]]]]  # w[0, 0, 0, 0] * 2: the zeros are after the pixel
    dx, dw, _ = conv2d_backward(backend.asarray(np.ones((1, 1, 1, 1))), cache)
    assert backend.asnumpy(dx).tolist() == [[[[1.0]]]] and backend.asnumpy(dw).tolist() == [[[[2.0, 0], [0, 0]]]]


def test_conv_output_size_answers_in_the_types_asked_whatever_asked_first():
    """The rule is memoized per value and type: NumPy integer sizes asked first do not make later
    answers NumPy's; a 0-d array still works; errors are raised every time."""
    import json
    from gpuconv.ops import conv_output_size
    assert type(conv_output_size(np.int64(32), 3, 1, 1)) is np.int64
    assert type(conv_output_size(32, 3, 1, 1)) is int and json.dumps(conv_output_size(32, 3, 1, 1)) == "32"
    assert conv_output_size(np.array(32), 3, 1, 1) == 32
    for _ in range(2):
        with pytest.raises(ValueError, match="not an integer"):
            conv_output_size(np.int32(6), 3, 2, 1)


@pytest.mark.parametrize("args, exc, match", [
    ((32, 3, 1, -1), ValueError, "pad must be >= 0, got -1"),          # answered 28, silently
    ((32, 3, 0, 1), ValueError, "stride must be >= 1, got 0"),         # a ZeroDivisionError
    ((32.0, 3, 1, 1), TypeError, "in_size must be an int, got 32.0; a float, as / gives"),  # answered 32.0
    (((32, 32), 3, 1, 1), TypeError, r"in_size must be an int, got \(32, 32\)"),  # an operand TypeError
    ((32, True, 1, 1), TypeError, "filt must be an int, got True"),
])
def test_conv_output_size_checks_its_arguments(args, exc, match):
    """The rule a notebook user tries by hand: a negative padding, a zero stride or a float size was
    answered (wrongly) or failed inside the arithmetic; named now."""
    with pytest.raises(exc, match=match):
        conv_output_size(*args)


@pytest.mark.parametrize("value, minimum, want", [
    (2, 1, (2, 2)), ((1, 3), 1, (1, 3)), ([1, 3], 1, (1, 3)), ((np.int64(2), 1), 1, (2, 1)), (np.int32(0), 0, (0, 0)),
    ((0, 0), 0, (0, 0)), ((0, 1), 1, ValueError), ((-1, 0), 0, ValueError), (0, 1, ValueError),
    ((True, 1), 1, TypeError), (True, 1, TypeError), ((1.0, 1), 1, TypeError), ((1, 2, 3), 1, TypeError),
    ((1,), 1, TypeError), ("2", 1, TypeError)])
def test_stride_and_padding_pairs_take_ints_only(value, minimum, want):
    """The (h, w) check every convolution and pooling call makes: an int or two ints (NumPy's too),
    each >= the minimum, as a tuple of Python ints; bools, floats and other lengths refused."""
    from gpuconv.ops._checks import pair
    if isinstance(want, type):
        with pytest.raises(want):
            pair("stride", value, minimum)
    else:
        got = pair("stride", value, minimum)
        assert got == want and type(got) is tuple and all(type(v) is int for v in got)


def test_checks_passed_are_memoized_by_signature_and_errors_never(monkeypatch):
    """The forward's argument checks run once per signature (arrays' type, shape and dtype, the
    other arguments' values): a second call of the same geometry skips them, while every call that
    breaks a rule is refused again with its own message, values equal to a passing one included
    (1.0 and True equal 1, floor=1 equals True), and another dtype or shape is checked anew."""
    rng = np.random.default_rng(3)
    x, w, b = (rng.standard_normal(s) for s in ((2, 3, 5, 5), (4, 3, 3, 3), (4,)))
    conv_mod._CHECKED.clear()
    runs = []
    real = conv_mod._check_conv_args
    monkeypatch.setattr(conv_mod, "_check_conv_args", lambda *a: runs.append(a) or real(*a))
    y1, _ = conv2d_forward(x, w, b, stride=1, padding=1, floor=True)
    y2, c2 = conv2d_forward(x, w, b, stride=1, padding=1, floor=True)
    assert len(runs) == 1 and np.array_equal(y1, y2) and c2.stride == (1, 1) and c2.padding == (1, 1)
    for kwargs, error, match in [({"stride": 1.0}, TypeError, r"stride must be an int .* got 1\.0"),
                                 ({"stride": True}, TypeError, "stride must be an int"),
                                 ({"padding": (1.0, 1)}, TypeError, "padding must be an int"),
                                 ({"floor": 1}, TypeError, "floor"),
                                 ({"groups": True}, TypeError, "groups must be an int")]:
        for _ in range(2):
            with pytest.raises(error, match=match):
                conv2d_forward(x, w, b, **{"stride": 1, "padding": 1, "floor": True, **kwargs})
    with pytest.raises(TypeError, match="w has dtype float32 but x has dtype float64"):
        conv2d_forward(x, w.astype(np.float32), b, stride=1, padding=1, floor=True)
    with pytest.raises(ValueError, match="channel mismatch"):
        conv2d_forward(x, w[:, :2], b, stride=1, padding=1, floor=True)
    with pytest.raises(ValueError, match="not an integer"):  # 6 - 3 + 2 = 5, not divisible by 2
        conv2d_forward(x[:, :, :4, :4], w, b, stride=2, padding=1)
    with pytest.raises(ValueError, match="not an integer"):
        conv2d_forward(x[:, :, :4, :4], w, b, stride=2, padding=1)
    assert conv2d_forward(x, w, b, stride=(1, 1), padding="same")[0].shape == (2, 4, 5, 5)


def test_backward_checks_passed_are_memoized_by_signature_and_errors_never(monkeypatch):
    """The backward's checks run once per signature (dy's and the cached arrays' type, shape and
    dtype, the cache's geometry, the switches): a second backward of the same geometry skips them,
    while a wrong dy shape or dtype, or a switch that is not a bool, is refused at every call."""
    rng = np.random.default_rng(5)
    x, w, b = (rng.standard_normal(s) for s in ((2, 3, 5, 5), (4, 3, 3, 3), (4,)))
    y, cache = conv2d_forward(x, w, b, stride=1, padding=1)
    dy = rng.standard_normal(y.shape)
    conv_mod._CHECKED_BACKWARD.clear()
    runs = []
    real = conv_mod._check_backward
    monkeypatch.setattr(conv_mod, "_check_backward", lambda *a: runs.append(a) or real(*a))
    first = conv2d_backward(dy, cache)
    second = conv2d_backward(dy, cache)
    assert len(runs) == 1 and all(np.array_equal(u, v) for u, v in zip(first, second))
    assert conv2d_backward(dy, cache, need_dx=False)[0] is None and len(runs) == 2  # (another switch: checked)
    for _ in range(2):
        with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(2, 4, 5, 5\)"):
            conv2d_backward(dy[:, :, :4], cache)
        with pytest.raises(TypeError, match="dy has dtype float32 but x has dtype float64"):
            conv2d_backward(dy.astype(np.float32), cache)
        with pytest.raises(TypeError, match="need_dx must be True or False"):
            conv2d_backward(dy, cache, need_dx=1)
        with pytest.raises(TypeError, match="cache must be the Conv2dCache"):
            conv2d_backward(dy, tuple(cache))
    assert len(runs) == 2 + 6
