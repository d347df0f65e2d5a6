"""Max and average pooling: hand cases, overlapping windows, gradients, properties, errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.ops import avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward
from gpuconv.ops import _pool2d_reference as pool_ref
from gpuconv.ops import pool2d as pool_mod

HYPO = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
OPS = {"max": (max_pool2d_forward, max_pool2d_backward), "avg": (avg_pool2d_forward, avg_pool2d_backward)}

CS231N_X = np.array([[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]], np.float32)[None, None]


def direct_pool(x, k, s, kind):
    """Forward and a backward for dy = ``g``, one window at a time (first maximum wins): the
    padded loop below without padding."""
    return padded_direct_pool(x, k, s, 0, kind)


def test_cs231n_max_pool_example(backend):
    y, cache = max_pool2d_forward(backend.asarray(CS231N_X), 2)
    np.testing.assert_array_equal(backend.asnumpy(y)[0, 0], [[6, 8], [3, 4]])
    assert cache.argmax.dtype == np.int32
    np.testing.assert_array_equal(backend.asnumpy(cache.argmax)[0, 0], [[3, 3], [0, 3]])
    dx = max_pool2d_backward(backend.asarray(np.array([[[[1, 2], [3, 4]]]], np.float32)), cache)
    np.testing.assert_array_equal(backend.asnumpy(dx)[0, 0],
                                  [[0, 0, 0, 0], [0, 1, 0, 2], [3, 0, 0, 0], [0, 0, 0, 4]])


def test_avg_pool_example(backend):
    y, cache = avg_pool2d_forward(backend.asarray(CS231N_X), 2)
    np.testing.assert_array_equal(backend.asnumpy(y)[0, 0], [[3.25, 5.25], [2, 2]])
    dx = avg_pool2d_backward(backend.asarray(np.array([[[[4, 8], [0, -4]]]], np.float32)), cache)
    np.testing.assert_array_equal(backend.asnumpy(dx)[0, 0],
                                  [[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, -1, -1], [0, 0, -1, -1]])


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape, k, s", [((2, 3, 7, 7), 3, 2), ((1, 2, 9, 9), 3, 3), ((2, 1, 6, 6), 2, 1)])
def test_matches_direct_reference_incl_overlapping(backend, kind, shape, k, s):
    fwd, bwd = OPS[kind]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    g = rng.standard_normal((shape[0], shape[1], (shape[2] - k) // s + 1, (shape[3] - k) // s + 1))
    y_ref, route = direct_pool(x, k, s, kind)
    dx_ref = np.einsum("ncij,ncijhw->nchw", g, route)
    y, cache = fwd(backend.asarray(x), k, s)
    dx = bwd(backend.asarray(g), cache)
    np.testing.assert_allclose(backend.asnumpy(y), y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backend.asnumpy(dx), dx_ref, rtol=1e-12, atol=1e-12)
    # float32 against the float64 reference: max is exact, the mean within rounding.
    y32, _ = fwd(backend.asarray(x.astype(np.float32)), k, s)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(backend.asnumpy(y32), y_ref, rtol=1e-4, atol=1e-6 * k * k)
    backend.assert_kernels_ran(f"{kind}_pool2d_forward", f"{kind}_pool2d_backward")


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("hw, k, s", [((6, 6), 2, 2), ((7, 7), 3, 2), ((6, 7), (2, 3), (1, 2))])
def test_gradients_float64(backend, kind, hw, k, s):
    fwd, bwd = OPS[kind]
    rng = np.random.default_rng(1)
    # A permutation of spread-out values: no ties, so max pooling is differentiable everywhere.
    x = backend.asarray(rng.permutation(4 * hw[0] * hw[1]).reshape((2, 2) + hw) * 0.1)
    y, cache = fwd(x, k, s)
    dy = backend.asarray(rng.standard_normal(y.shape))
    num = numerical_gradient_array(lambda a: fwd(a, k, s)[0], x, dy)
    assert relative_error(bwd(dy, cache), num) < 1e-6


def test_max_pool_propagates_nan(backend):
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    y, _ = max_pool2d_forward(backend.asarray(x), 2)
    y = backend.asnumpy(y)[0, 0]
    assert np.isnan(y[0, 0]) and not np.isnan(y[1:, :]).any() and y[0, 1] == 7


@pytest.mark.parametrize("k, s", [(2, 2), (3, 2), (3, 1)])
def test_max_pool_routes_a_nan_outputs_gradient_to_its_first_nan(backend, k, s):
    """A NaN output is its window's first NaN (tap order, np.argmax's rule), and its gradient goes
    there, as PyTorch routes it: never to a finite input that is not the output. Finite windows
    keep the first-maximum rule. A NaN sits after a larger finite value in tap order."""
    rng = np.random.default_rng(1)
    hw = 8 if k == 2 else 7
    x = rng.standard_normal((2, 3, hw, hw)).astype(np.float32)
    x[0, 1, 2, 3] = x[1, 2, 5, 5] = x[1, 2, 5, 6] = x[1, 2, 6, 5] = np.nan
    x[0, 1, 2, 2] = 9.0  # larger than all, before a NaN
    y, cache = max_pool2d_forward(backend.asarray(x), k, s)
    y, argmax = backend.asnumpy(y), backend.asnumpy(cache.argmax)
    want_dx = np.zeros_like(x)
    for idx in np.ndindex(*y.shape):
        n, c, oh, ow = idx
        window = x[n, c, oh * s:oh * s + k, ow * s:ow * s + k].reshape(-1)
        assert argmax[idx] == np.argmax(window), idx  # NumPy's argmax: the first NaN, else the first maximum
        assert np.array_equal(y[idx], window[argmax[idx]], equal_nan=True)
        want_dx[n, c, oh * s + argmax[idx] // k, ow * s + argmax[idx] % k] += 1
    assert np.isnan(y).sum() > 0
    dx = backend.asnumpy(max_pool2d_backward(backend.asarray(np.ones(y.shape, np.float32)), cache))
    np.testing.assert_array_equal(dx, want_dx)


# ---------------------------------------------------------------- properties
@HYPO
@given(h=st.integers(1, 10), w=st.integers(1, 10), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), kind=st.sampled_from(["max", "avg"]))
def test_output_size_rule(backend, h, w, kh, kw, sh, sw, kind):
    x = backend.asarray(np.zeros((1, 2, h, w), np.float32))
    fits = h >= kh and w >= kw and (h - kh) % sh == 0 and (w - kw) % sw == 0
    if not fits:
        with pytest.raises(ValueError, match=r"\([HW] - F\)/S \+ 1"):
            OPS[kind][0](x, (kh, kw), (sh, sw))
        return
    y, _ = OPS[kind][0](x, (kh, kw), (sh, sw))
    assert y.shape == (1, 2, (h - kh) // sh + 1, (w - kw) // sw + 1)


@HYPO
@given(n=st.integers(1, 3), c=st.integers(1, 3), oh=st.integers(1, 4), ow=st.integers(1, 4),
       kh=st.integers(1, 3), kw=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_non_overlapping_pools_conserve_gradient_and_are_exact(backend, n, c, oh, ow, kh, kw, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, oh * kh, ow * kw)).astype(np.float32)
    dy = rng.integers(-8, 9, (n, c, oh, ow)).astype(np.float32)  # small integers: sums are exact
    y, cache = max_pool2d_forward(backend.asarray(x), (kh, kw))
    windows = x.reshape(n, c, oh, kh, ow, kw).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, oh, ow, -1)
    np.testing.assert_array_equal(backend.asnumpy(y), windows.max(-1))  # bit-exact
    dx = backend.asnumpy(max_pool2d_backward(backend.asarray(dy), cache))
    assert dx.sum() == dy.sum()
    assert np.count_nonzero(dx) == np.count_nonzero(dy)
    ya, cache_a = avg_pool2d_forward(backend.asarray(x.astype(np.float64)), (kh, kw))
    np.testing.assert_allclose(backend.asnumpy(ya), windows.astype(np.float64).mean(-1), rtol=1e-12, atol=1e-12)
    dxa = backend.asnumpy(avg_pool2d_backward(backend.asarray(dy.astype(np.float64)), cache_a))
    assert dxa.sum() == pytest.approx(float(dy.sum()), abs=1e-9)


# ---------------------------------------------------------------- errors
@pytest.fixture
def no_work(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the reference ran before the arguments were checked")
    monkeypatch.setattr(pool_mod, "_max_pool2d_forward_reference", boom)
    monkeypatch.setattr(pool_mod, "_avg_pool2d_forward_reference", boom)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("x, kwargs, exc, match", [
    (np.ones((1, 1, 4, 4), np.int64), {}, TypeError, r"x has dtype int64.*astype\(np.float32\)"),
    (np.ones((1, 4, 4), np.float32), {}, ValueError, r"x must have 4 dimensions"),
    (np.ones((1, 1, 4, 4), np.float32), dict(kernel_size=0), ValueError, r"kernel_size must be >= 1"),
    (np.ones((1, 1, 4, 4), np.float32), dict(kernel_size=2, stride=(1, 0)), ValueError, r"stride must be >= 1"),
    (np.ones((1, 1, 8, 8), np.float32), dict(kernel_size=3, stride=2), ValueError,
     r"input size H=8, window F=3, stride S=2 give.*= 3.5, not an integer"),
    (np.ones((1, 1, 4, 4), np.float32), dict(kernel_size=5), ValueError, r"window F=5.*< 1"),
    (np.ones((1, 1, 4, 4), np.float32), dict(kernel_size="2"), TypeError, r"kernel_size must be an int"),
    (np.ones((1, 1, 4, 4), np.float32), dict(kernel_size=2, stride=2**31, floor=True), ValueError,  # sim: int32
     r"stride must be at most 2\*\*31 - 1 .*got 2147483648; a stride as large as the \(padded\) input"),
])
def test_bad_arguments(backend, no_work, kind, x, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        OPS[kind][0](backend.asarray(x), **kwargs)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_backward_rejects_wrong_dy(backend, kind):
    fwd, bwd = OPS[kind]
    _, cache = fwd(backend.asarray(np.ones((1, 1, 4, 4), np.float32)), 2)
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(1, 1, 2, 2\)"):
        bwd(backend.asarray(np.ones((1, 1, 3, 3), np.float32)), cache)
    with pytest.raises(TypeError, match=r"dy has dtype int32, but ops take"):
        bwd(backend.asarray(np.ones((1, 1, 2, 2), np.int32)), cache)
    # dx comes back in dy's dtype, so a dy of another precision than the forward's is refused
    for dt in (np.float64, np.float16):
        with pytest.raises(TypeError, match=rf"dy has dtype {np.dtype(dt)} but the forward's output had dtype "
                                            r"float32: .* pass dy.astype\(float32\)"):
            bwd(backend.asarray(np.ones((1, 1, 2, 2), dt)), cache)


def test_argument_checks_passed_are_memoized_by_signature_and_errors_never(monkeypatch):
    """The pools' argument checks run once per signature (x's type, shape and dtype, the other
    arguments' values of exactly int, (int, int), None or bool): a second call of the same geometry
    skips them and gets their answer; every call that breaks a rule is refused again with its own
    message, values equal to a passing one included (floor=1 equals True, 2.0 equals 2)."""
    x = np.random.default_rng(6).standard_normal((2, 3, 8, 8))
    pool_mod._CHECKED.clear()
    runs = []
    real = pool_mod._checked_pool_args
    monkeypatch.setattr(pool_mod, "_checked_pool_args", lambda *a: runs.append(a) or real(*a))
    y1, c1 = max_pool2d_forward(x, 2, floor=True)
    y2, c2 = max_pool2d_forward(x, 2, floor=True)
    assert len(runs) == 1 and np.array_equal(y1, y2) and c2.kernel_size == c2.stride == (2, 2)
    assert avg_pool2d_forward(x, 2, floor=True)[0].shape == (2, 3, 4, 4) and len(runs) == 1  # (the same checks)
    for _ in range(2):
        with pytest.raises(TypeError, match="floor must be True or False"):
            pool_mod._check_pool_args(x, 2, None, 1)  # (the ops refuse a number there before these checks)
        with pytest.raises(TypeError, match="kernel_size must be an int"):
            max_pool2d_forward(x, 2.0, floor=True)
        with pytest.raises(ValueError, match=r"input size H=7, window F=2, stride S=2"):
            max_pool2d_forward(x[:, :, :7], 2)
        with pytest.raises(TypeError, match="x has dtype int64"):
            max_pool2d_forward(x.astype(np.int64), 2, floor=True)
    assert len(runs) == 1 + 8


def test_pool_size_error_without_padding_names_no_p_and_offers_padding(backend):
    x = backend.asarray(np.zeros((1, 1, 7, 8), np.float32))
    with pytest.raises(ValueError, match=r"along the height: input size H=7, window F=2, stride S=2 give "
                                         r"\(H - F\)/S \+ 1.*max and average pooling also take padding=P, "
                                         r"which adds 2P to H") as info:
        max_pool2d_forward(x, 2)
    assert "P=" not in str(info.value) and "change the padding" not in str(info.value)
    with pytest.raises(TypeError, match=r"floor must be True or False, got 'no'"):
        max_pool2d_forward(x, 2, floor="no")



@pytest.mark.parametrize("dtype", [np.float32, np.float64, "bfloat16", np.float16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_disjoint_windows_take_the_scatter_kernel_and_keep_the_reference_bits(kind, channels_last, dtype):
    """stride = kernel: one thread per output writes its window; -0.0, NaN and ties as the
    reference has them, bit for bit, in every build and both layouts."""
    import ml_dtypes

    import gpuconv
    from gpuconv import kernels
    dt = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    rng = np.random.default_rng(21)
    x = (np.round(rng.standard_normal((2, 3, 6, 8)) * 2) / 2).astype(dt)
    x.reshape(-1)[:4] = np.array([-0.0, np.nan, 0.0, -0.0]).astype(dt)
    fwd, bwd = OPS[kind]
    ref_y, ref_cache = fwd(x, (3, 2))
    dy = rng.standard_normal(ref_y.shape).astype(dt)
    dy.reshape(-1)[:3] = np.array([-0.0, np.nan, np.inf]).astype(dt)
    want = bwd(dy, ref_cache)
    with gpuconv.default_device("sim"), kernels.launch_log() as log:
        xs, dys = (gpuconv.to_channels_last(a) if channels_last else a for a in (x, dy))
        y, cache = fwd(xs, (3, 2))
        got = bwd(dys, cache)
    disjoint = f"{kind}_pool2d_backward_disjoint"  # (or NCHW max pooling's _pairs form, where the alignment allows)
    assert disjoint in log.names or (kind == "max" and not channels_last and disjoint + "_pairs" in log.names)
    assert f"{kind}_pool2d_backward" not in log.names
    assert gpuconv.is_channels_last(got) == channels_last
    got = np.ascontiguousarray(got)
    assert got.dtype == want.dtype and got.tobytes() == np.ascontiguousarray(want).tobytes()


def _aligned(shape, dtype, align=64):
    """A zero-filled C-contiguous NumPy array whose data starts on an ``align``-byte boundary (NumPy
    aligns to 16 bytes, CuPy to 256: float64's _pairs loads want x and dx on 32)."""
    dtype = np.dtype(dtype)
    buf = np.zeros(int(np.prod(shape)) * dtype.itemsize + align, np.uint8)
    start = -buf.__array_interface__["data"][0] % align
    return buf[start:start + int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "bfloat16", np.float16])
def test_nchw_max_pooling_of_2_wide_windows_runs_two_outputs_a_thread_with_the_same_bits(dtype, monkeypatch):
    """NCHW max pooling, windows 2 wide at stride 2 (2x2 and 3x2), no padding, W a multiple of 4 and
    no row past the last window: the _pairs kernels (two outputs a thread, 16-byte loads and stores)
    give the element kernels' y, switches and dx bit for bit, -0.0, NaNs, infinities and ties
    included; a geometry or an alignment they do not take (W = 10, a row past the last window, an x
    view off its 4-element boundary: its forward, channels_last) runs the element kernels. x and
    the launchers' NCHW outputs start on 64-byte boundaries here, as CuPy's do, so that float64's
    32-byte loads run on the simulator too."""
    import ml_dtypes

    import gpuconv
    from gpuconv import kernels, layout
    from gpuconv.ops import _launch_pool2d as LP
    dt = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    rng = np.random.default_rng(8)
    empty = layout.empty

    def aligned_empty(xp, shape, dtype, channels_last=False):
        return empty(xp, shape, dtype, True) if channels_last else _aligned(shape, dtype)

    def run(x, k, pairs):
        if not pairs:  # the element kernels: no _pairs form
            monkeypatch.setattr(LP, "_PAIRS", ())
        monkeypatch.setattr(LP, "_RUNS", {})
        monkeypatch.setattr(layout, "empty", aligned_empty)
        with gpuconv.default_device("sim"), kernels.launch_log() as log:
            y, cache = max_pool2d_forward(x, k, k, floor=True)
            dy = (np.round(rng.standard_normal(y.shape) * 2) / 2).astype(dt)
            dy.reshape(-1)[:3] = np.array([-0.0, np.nan, np.inf]).astype(dt)
            dx = max_pool2d_backward(gpuconv.to_channels_last(dy) if gpuconv.is_channels_last(x) else dy, cache)
        monkeypatch.undo()
        return [np.ascontiguousarray(a) for a in (y, cache.argmax, dx)], log.names

    buf = np.zeros(2 * 3 * 6 * 8 + 8, dt)
    for shape, k, takes in [((2, 3, 6, 8), (2, 2), True), ((2, 3, 9, 12), (3, 2), True), ((1, 2, 4, 4), (2, 2), True),
                            ((2, 3, 6, 10), (2, 2), False), ((2, 3, 7, 8), (2, 2), False),
                            ((2, 3, 6, 8), (2, 2), "misaligned"), ((2, 3, 6, 8), (2, 2), "channels_last")]:
        x = _aligned(shape, dt)
        x[...] = (np.round(rng.standard_normal(shape) * 2) / 2).astype(dt)
        x.reshape(-1)[:6] = np.array([-0.0, np.nan, 0.0, -0.0, np.inf, -np.inf]).astype(dt)
        if takes == "misaligned":  # x's data one element past the allocation's (aligned) start
            start = (-(buf.__array_interface__["data"][0] // dt.itemsize) % 4) + 1
            view = buf[start:start + x.size].reshape(shape)
            view[...] = x
            x = view
        elif takes == "channels_last":
            x = gpuconv.to_channels_last(x)
        rng_state = rng.bit_generator.state
        got, names = run(x, k, True)
        rng.bit_generator.state = rng_state  # (the same dy)
        want, plain = run(x, k, False)
        assert not any(n.endswith("_pairs") for n in plain)
        expected = {True: ["max_pool2d_forward_pairs", "max_pool2d_backward_disjoint_pairs"],
                    "misaligned": ["max_pool2d_backward_disjoint_pairs"]}.get(takes, [])  # (dy, dx: new arrays)
        assert [n for n in names if n.endswith("_pairs")] == expected, (shape, k, takes, names)
        for name, g, w in zip(("y", "switches", "dx"), got, want):
            assert g.dtype == w.dtype and g.tobytes() == w.tobytes(), (shape, k, takes, name)


@pytest.mark.parametrize("k, s", [(2, 2), (3, 2)], ids=["disjoint", "overlapping"])
def test_max_pool_routes_a_nan_or_inf_gradient_to_its_switch_only(backend, k, s):
    """dx is dy at each window's switch and 0 elsewhere, as the definition (and PyTorch) has it:
    an inf or NaN in dy lands on the switch alone, never as inf * 0 = NaN on the other taps."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 8, 8) if k == s else (1, 2, 7, 7)).astype(np.float32)
    y, cache = max_pool2d_forward(backend.asarray(x), k, s)
    dy = np.ones(y.shape, np.float32)
    dy[0, 0, 0, 0], dy[0, 1, 1, 1] = np.inf, np.nan
    dx = backend.asnumpy(max_pool2d_backward(backend.asarray(dy), cache))
    assert np.isinf(dx).sum() == 1 and np.isnan(dx).sum() == 1
    assert np.all(np.isfinite(dx[0, 0, k:, k:]))


def _channels_last_copy(xp, a, offset):
    """``a`` (NumPy, NCHW) as a channels_last array of module ``xp`` whose memory starts
    ``offset`` elements into a fresh buffer (offset 1: not 16-byte aligned)."""
    n, c, h, w = a.shape
    flat = xp.zeros(a.size + offset, dtype=a.dtype)[offset:]
    nhwc = flat.reshape(n, h, w, c)
    nhwc[...] = xp.asarray(np.ascontiguousarray(a.transpose(0, 2, 3, 1)))
    return nhwc.transpose(0, 3, 1, 2)


def _same_bits(got, want, nan_payload):
    """``got`` and ``want`` hold the same bits; with ``nan_payload`` False, NaNs only need to be
    NaN in the same places (a sum with a NaN term returns the hardware's NaN: a GPU's add its
    canonical one, x86's add the operand's payload)."""
    got, want = np.ascontiguousarray(got), np.ascontiguousarray(want)
    assert got.dtype == want.dtype
    if nan_payload or want.dtype.kind == "i":
        return got.tobytes() == want.tobytes()
    nan = np.isnan(want.astype(np.float64))
    bits = np.dtype(f"u{want.itemsize}")
    return (np.array_equal(np.isnan(got.astype(np.float64)), nan)
            and np.array_equal(got.view(bits)[~nan], want.view(bits)[~nan]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "bfloat16", np.float16])
@pytest.mark.parametrize("k, s", [(2, 2), (3, 2)], ids=["disjoint", "overlapping"])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_channels_last_vector_kernels_keep_the_reference_bits(backend, kind, k, s, dtype):
    """channels_last with C a multiple of 16 bytes of channels: the _vec kernels (16-byte loads
    and stores, several channels per thread) give the reference's bits, ties, NaN, inf and -0.0
    included (a max pool's NaN with its payload: it is copied; a sum's NaN as a NaN); the same
    data one element off 16-byte alignment takes the element kernels, with the same bits."""
    import ml_dtypes

    import gpuconv
    from gpuconv import kernels
    dt = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    rng = np.random.default_rng(8)
    shape = (2, 32, 6, 8) if k == s else (2, 32, 7, 9)
    x = (np.round(rng.standard_normal(shape) * 2) / 2).astype(dt)  # many ties
    x[0, :5, 0, 0] = np.array([-0.0, np.nan, np.inf, -np.inf, 0.0]).astype(dt)
    x[1, 7, 1, :4] = np.array([np.nan, -0.0, -0.0, np.nan]).astype(dt)
    fwd, bwd = OPS[kind]
    with gpuconv.default_device("cpu"):
        want_y, want_cache = fwd(x, k, s)
        dy = rng.standard_normal(want_y.shape).astype(dt)
        dy[0, 3, 0, :3] = np.array([-0.0, np.nan, np.inf]).astype(dt)
        want_dx = bwd(dy, want_cache)
    for offset in (0, 1):
        with kernels.launch_log() as log:
            y, cache = fwd(_channels_last_copy(backend.xp, x, offset), k, s)
            dx = bwd(_channels_last_copy(backend.xp, dy, offset), cache)
        assert gpuconv.is_channels_last(y) and gpuconv.is_channels_last(dx)
        pairs = [(y, want_y, kind == "max"), (dx, want_dx, False)]
        if kind == "max":
            pairs.append((cache.argmax, want_cache.argmax, True))
        for got, want, payload in pairs:
            assert _same_bits(backend.asnumpy(got), want, payload), (offset, got, want)
        vec = [n for n in log.names if n.endswith("_vec")]
        if backend.name == "numpy":
            assert log.names == []
        elif offset == 0:
            assert vec == [f"{kind}_pool2d_forward_vec", f"{kind}_pool2d_backward{'_disjoint' if k == s else ''}_vec"]
        else:
            assert vec == [] and f"{kind}_pool2d_forward" in log.names


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape, k, s", [((2, 16, 7, 9), 2, 2), ((1, 8, 8, 10), 3, 2), ((2, 16, 8, 7), 3, 3)],
                         ids=["disjoint", "overlapping", "disjoint-k3"])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_floor_mode_pools_the_windows_that_fit_and_zeroes_the_rest(backend, kind, shape, k, s, channels_last):
    """``floor=True``: the rows and columns past the last window take no part (PyTorch's default
    rule): y is the pooling of the cropped input, dx its gradient padded with zeros, bit for bit,
    on every backend and layout (on 'sim'/'cupy' without a crop: the kernels read the windows
    in place, and the disjoint backward writes the zeros itself)."""
    import gpuconv
    fwd, bwd = OPS[kind]
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    oh, ow = (shape[2] - k) // s + 1, (shape[3] - k) // s + 1
    h, w = (oh - 1) * s + k, (ow - 1) * s + k
    assert (h, w) != shape[2:]  # the case has a leftover to drop
    dy = rng.standard_normal((shape[0], shape[1], oh, ow)).astype(np.float32)
    with gpuconv.default_device("cpu"):
        want_y, cache = fwd(np.ascontiguousarray(x[:, :, :h, :w]), k, s)
        want_dx = np.zeros_like(x)
        want_dx[:, :, :h, :w] = bwd(dy, cache)
    with pytest.raises(ValueError, match="not an integer"):
        fwd(backend.asarray(x), k, s)  # without floor: no silent cropping
    xin, dyin = backend.asarray(x), backend.asarray(dy)
    if channels_last:
        xin, dyin = gpuconv.to_channels_last(xin), gpuconv.to_channels_last(dyin)
    y, cache = fwd(xin, k, s, floor=True)
    dx = bwd(dyin, cache)
    assert gpuconv.is_channels_last(y) == gpuconv.is_channels_last(dx) == channels_last
    assert dx.shape == x.shape
    np.testing.assert_array_equal(backend.asnumpy(y), want_y)
    assert np.ascontiguousarray(backend.asnumpy(dx)).tobytes() == want_dx.tobytes()
    backend.assert_kernels_ran(f"{kind}_pool2d_forward", f"{kind}_pool2d_backward{'_disjoint' if k == s else ''}")


def test_floor_max_pool_backward_allocates_one_input_gradient():
    """The NumPy backward of a floor max pool (airbench94's 2x2 pools of 31x31 and 15x15 maps)
    writes the windows' gradient into dx itself: its memory is dx and a chunk of tap planes, not
    a second input-sized array for the tiled part (which made it the peak of an airbench94 step)."""
    import tracemalloc
    x = np.random.default_rng(0).standard_normal((32, 64, 31, 31)).astype(np.float32)
    y, cache = max_pool2d_forward(x, 2, floor=True)
    dy = np.ones_like(y)
    want = np.zeros_like(x)
    want[:, :, :30, :30] = max_pool2d_backward(dy, max_pool2d_forward(np.ascontiguousarray(x[:, :, :30, :30]), 2)[1])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        dx = max_pool2d_backward(dy, cache)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < dx.nbytes + 2 * pool_ref._CHUNK_BYTES, f"{peak} bytes for a {dx.nbytes}-byte dx"
    assert dx.tobytes() == want.tobytes()


def test_pool_launch_sizes_are_int32_made_once_per_geometry():
    """The pooling kernels' size arguments (N, C, H, W, OH, OW, window, stride, padding) as np.int32,
    made once per geometry (every pooling launch of every step passes them) and, in floor mode,
    with the windows that fit."""
    from gpuconv.ops._launch_pool2d import _dims
    out, dims = _dims((2, 3, 9, 6), (2, 2), (2, 3), floor=True)
    assert out == (2, 3, 4, 2)
    assert all(type(v) is np.int32 for v in dims) and [int(v) for v in dims] == [2, 3, 9, 6, 4, 2, 2, 2, 2, 3, 0, 0]
    assert _dims((2, 3, 9, 6), (2, 2), (2, 3), floor=True)[1] is dims


def test_max_pool_of_signed_zeros_is_plus_zero(backend):
    """A window whose maximum is zero gives +0.0 whatever the signs of its zeros (all -0.0, or
    -0.0 and +0.0 in either order): the rule every backend follows, where np.maximum alone
    returns either operand of a tie."""
    x = np.array([[-0.0, -0.0, -0.0, 0.0, 0.0, -0.0],
                  [-0.0, -0.0, -0.0, -0.0, -0.0, -0.0]], np.float32)[None, None]
    y, _ = max_pool2d_forward(backend.asarray(x), 2)
    y = backend.asnumpy(y)
    np.testing.assert_array_equal(y, np.zeros((1, 1, 1, 3), np.float32))
    assert not np.signbit(y).any(), y


@pytest.mark.parametrize("k, s, hw", [(2, 2, 8), (3, 2, 9), (3, 1, 6)], ids=["disjoint", "overlapping", "stride1"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_max_pool_backward_is_the_tap_by_tap_definition_bit_for_bit(k, s, hw, dtype):
    """The NumPy backward routes dy with a bit mask per tap: the bits of the definition's sum, tap by
    tap, of dy where the switch is that tap and +0 elsewhere, NaN, inf and -0.0 included."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, hw, hw)).astype(dtype)
    y, cache = max_pool2d_forward(x, k, s)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy.reshape(-1)[[0, 3, 40, 11]] = [np.nan, np.inf, -np.inf, -0.0]  # -inf in another channel than inf
    want = np.zeros(x.shape, dtype)
    for t, sl in pool_ref._taps((k, k), (s, s), y.shape[2:]):
        want[sl] += np.where(cache.argmax == t, dy, dtype(0))
    assert max_pool2d_backward(dy, cache).tobytes() == want.tobytes()


# ----------------------------------------------------------------------------- padding
PADDED = [((2, 3, 8, 8), 3, 2, 1, True), ((1, 2, 7, 6), 3, 1, 1, False), ((2, 2, 6, 5), (3, 2), (2, 1), (1, 1), True),
          ((1, 2, 6, 6), 2, 2, 1, False), ((1, 3, 5, 4), (3, 5), 1, (0, 2), False)]


def padded_direct_pool(x, k, s, p, kind, count_include_pad=True):
    """Forward and the Jacobian d y / d x one window at a time over the explicitly padded input
    (-inf for max, zeros for the average), routes into the padding dropped."""
    (kh, kw), (sh, sw), (ph, pw) = (k if isinstance(k, tuple) else (k, k)), (s if isinstance(s, tuple) else (s, s)), \
        (p if isinstance(p, tuple) else (p, p))
    n, c, h, w = x.shape
    xpad = np.full((n, c, h + 2 * ph, w + 2 * pw), -np.inf if kind == "max" else 0.0)
    xpad[:, :, ph:ph + h, pw:pw + w] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = np.zeros((n, c, oh, ow))
    route = np.zeros((n, c, oh, ow) + xpad.shape[2:])
    inside = np.zeros(xpad.shape[2:], bool)
    inside[ph:ph + h, pw:pw + w] = True
    for i in range(oh):
        for j in range(ow):
            rows, cols = slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)
            win = xpad[:, :, rows, cols].reshape(n, c, -1)
            if kind == "max":
                y[:, :, i, j] = win.max(-1)
                a = win.argmax(-1)
                for nn in range(n):
                    for cc in range(c):
                        route[nn, cc, i, j, i * sh + a[nn, cc] // kw, j * sw + a[nn, cc] % kw] = 1
            else:
                count = kh * kw if count_include_pad else inside[rows, cols].sum()
                y[:, :, i, j] = win.sum(-1) / count
                route[:, :, i, j, rows, cols] = 1.0 / count
    return y, route[..., ph:ph + h, pw:pw + w]


def _pool_kwargs(kind, p, floor, count_include_pad=True):
    return dict(padding=p, floor=floor, **({} if kind == "max" else {"count_include_pad": count_include_pad}))


@pytest.mark.parametrize("case", PADDED, ids=[str(c[:4]) for c in PADDED])
@pytest.mark.parametrize("kind, cip", [("max", True), ("avg", True), ("avg", False)], ids=["max", "avg", "avg-excl"])
def test_padded_pooling_matches_the_explicitly_padded_loop_and_numerical_gradients(backend, case, kind, cip):
    """PyTorch's padding: max pooling over -inf padding (no window's maximum is a padded cell),
    the average over zeros counted in its divisor (count_include_pad=True) or not; the output
    size floor((H + 2P - F)/S) + 1; dx the Jacobian's transpose, and float64 numerical gradients."""
    shape, k, s, p, floor = case
    fwd, bwd = OPS[kind]
    rng = np.random.default_rng(11)
    size = int(np.prod(shape))
    x = (rng.permutation(size).reshape(shape) - size / 2) / size  # distinct, both signs: no ties
    y_ref, route = padded_direct_pool(x, k, s, p, kind, cip)
    kwargs = _pool_kwargs(kind, p, floor, cip)
    y, cache = fwd(backend.asarray(x), k, s, **kwargs)
    g = rng.standard_normal(y_ref.shape)
    np.testing.assert_allclose(backend.asnumpy(y), y_ref, rtol=1e-12, atol=1e-12)
    dx = bwd(backend.asarray(g), cache)
    np.testing.assert_allclose(backend.asnumpy(dx), np.einsum("ncij,ncijhw->nchw", g, route), rtol=1e-12, atol=1e-12)
    if case is PADDED[0] or case is PADDED[2]:
        num = numerical_gradient_array(lambda a: fwd(a, k, s, **kwargs)[0], backend.asarray(x), backend.asarray(g))
        assert relative_error(dx, num) < 1e-6
    backend.assert_kernels_ran(f"{kind}_pool2d_forward", f"{kind}_pool2d_backward")
    if backend.name != "numpy":  # padded: the element kernels (never _disjoint or _vec), _exclude_pad for avg-excl
        suffix = "" if cip else "_exclude_pad"
        assert set(backend.launches.names) == {f"{kind}_pool2d_forward{suffix}", f"{kind}_pool2d_backward{suffix}"}


def test_padded_max_pool_of_an_all_minus_inf_window_routes_to_its_first_input(backend):
    """A window whose inputs are all -inf ties them with the padding: its switch is its first
    in-bounds tap, as PyTorch's index (F.max_pool2d(..., return_indices=True) gives 0, 1, 4, 10
    here: x[0, 0], x[0, 1], x[1, 0], x[2, 2]), and the gradient lands there, never in the padding."""
    x = np.full((1, 1, 4, 4), -np.inf)
    x[0, 0, 2:, 2:] = 1.0
    y, cache = max_pool2d_forward(backend.asarray(x), 3, 2, padding=1, floor=True)
    np.testing.assert_array_equal(backend.asnumpy(y)[0, 0], [[-np.inf, -np.inf], [-np.inf, 1]])
    np.testing.assert_array_equal(backend.asnumpy(cache.argmax)[0, 0], [[4, 3], [1, 4]])
    dx = backend.asnumpy(max_pool2d_backward(backend.asarray(np.array([[[[1.0, 2], [3, 4]]]])), cache))
    np.testing.assert_array_equal(dx[0, 0], [[1, 2, 0, 0], [3, 0, 0, 0], [0, 0, 4, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("dtype", [np.float64, np.float32, "bfloat16", np.float16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("kind, cip", [("max", True), ("avg", True), ("avg", False)], ids=["max", "avg", "avg-excl"])
def test_padded_kernels_keep_the_reference_bits_in_every_dtype_and_layout(kind, cip, channels_last, dtype):
    """The kernels on 'sim' against the NumPy reference, bit for bit (ties, -inf, -0.0 included),
    channels_last with 16 channels (where padding 0 takes the _vec kernels) as well as NCHW."""
    import ml_dtypes

    import gpuconv
    from gpuconv import kernels
    dt = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    rng = np.random.default_rng(12)
    x = (np.round(rng.standard_normal((2, 16, 7, 6)) * 2) / 2).astype(dt)
    x[0, 0, :3, :3], x[1, 2, 0, :2] = -np.inf, -0.0
    fwd, bwd = OPS[kind]
    kwargs = _pool_kwargs(kind, (1, 1), True, cip)
    want_y, want_cache = fwd(x, 3, 2, **kwargs)
    dy = rng.standard_normal(want_y.shape).astype(dt)
    want_dx = bwd(dy, want_cache)
    with gpuconv.default_device("sim"), kernels.launch_log() as log:
        xs = _channels_last_copy(np, x, 0) if channels_last else x
        y, cache = fwd(xs, 3, 2, **kwargs)
        dx = bwd(_channels_last_copy(np, dy, 0) if channels_last else dy, cache)
    suffix = "" if cip else "_exclude_pad"
    assert log.names == [f"{kind}_pool2d_forward{suffix}", f"{kind}_pool2d_backward{suffix}"]
    assert gpuconv.is_channels_last(dx) == channels_last and cache.padding == (1, 1)
    for got, want in [(y, want_y), (dx, want_dx)] + ([(cache.argmax, want_cache.argmax)] if kind == "max" else []):
        assert _same_bits(got, want, False)


def test_googlenet_pool_branch_keeps_height_and_width_and_resnet_stem_halves_them(backend):
    from gpuconv.layers import AvgPool2d, MaxPool2d
    x = backend.asarray(np.random.default_rng(3).standard_normal((1, 2, 8, 6)).astype(np.float32))
    assert MaxPool2d(3, 1, padding=1)(x).shape == (1, 2, 8, 6)
    assert AvgPool2d(3, 1, 1, count_include_pad=False)(x).shape == (1, 2, 8, 6)
    assert MaxPool2d(3, 2, padding=1, floor=True)(x).shape == (1, 2, 4, 3)
    with pytest.raises(ValueError, match=r"input size H=8, filter F=3, stride S=2, padding P=1 .* = 4.5, not an "
                                         r"integer; .*floor=True"):
        MaxPool2d(3, 2, padding=1)(x)  # floor=False: sizes that do not tile are refused, as without padding


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(kernel_size=3, padding=2), ValueError, r"padding=2 is more than half of kernel_size=\(3, 3\): .*at most "
                                                 r"kernel_size // 2 .*PyTorch's rule.*at most 1"),
    (dict(kernel_size=(3, 4), padding=(1, 3)), ValueError, r"at most \(1, 2\)"),
    (dict(kernel_size=3, padding=-1), ValueError, r"padding must be >= 0"),
    (dict(kernel_size=3, padding=1.0), TypeError, r"padding must be an int or an \(h, w\) pair"),
])
def test_padding_rule_errors(backend, no_work, kind, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        OPS[kind][0](backend.asarray(np.ones((1, 1, 6, 6), np.float32)), **kwargs)


def test_count_include_pad_is_a_switch_and_divisor_override_stays_refused():
    x = np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(TypeError, match="count_include_pad must be True or False"):
        avg_pool2d_forward(x, 3, 1, padding=1, count_include_pad="no")
    with pytest.raises(ValueError, match=r"divisor_override=2\) is not supported"):
        avg_pool2d_forward(x, 3, 1, padding=1, divisor_override=2)
    # ones everywhere: the corner's window holds 4 inputs of 9 taps
    assert avg_pool2d_forward(x, 3, 1, padding=1)[0][0, 0, 0, 0] == np.float32(4 / 9)
    assert avg_pool2d_forward(x, 3, 1, padding=1, count_include_pad=False)[0][0, 0, 0, 0] == 1


@pytest.mark.parametrize("k, s, p", [(3, 2, 1), (3, 1, 1), ((3, 2), (2, 1), (1, 1)), (2, 2, 1)])
def test_padded_pooling_matches_torch_ties_and_minus_inf_included(k, s, p):
    """F.max_pool2d's indices (PyTorch breaks ties to the first maximum in row-major order, as
    gpuconv does, and gives an all -inf window its first in-bounds input) and gradients, and
    F.avg_pool2d's with count_include_pad both ways."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    x = rng.integers(-2, 3, (2, 3, 7, 6)).astype(np.float64)  # ties in most windows
    x[0, 0, :2, :2], x[1, 1] = -np.inf, -np.inf
    F = torch.nn.functional
    y, cache = max_pool2d_forward(x, k, s, padding=p, floor=True)
    (kh, kw), (sh, sw), (ph, pw) = cache.kernel_size, cache.stride, cache.padding
    row = np.arange(y.shape[2])[:, None] * sh - ph + cache.argmax // kw
    col = np.arange(y.shape[3])[None, :] * sw - pw + cache.argmax % kw
    t = torch.tensor(x, requires_grad=True)
    ty, index = F.max_pool2d(t, k, s, p, return_indices=True)
    g = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(g))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(row * x.shape[3] + col, index.numpy())
    np.testing.assert_allclose(max_pool2d_backward(g, cache), t.grad.numpy(), rtol=1e-12, atol=1e-12)
    x = rng.standard_normal(x.shape)
    for cip in (True, False):
        y, cache = avg_pool2d_forward(x, k, s, padding=p, floor=True, count_include_pad=cip)
        t = torch.tensor(x, requires_grad=True)
        ty = F.avg_pool2d(t, k, s, p, count_include_pad=cip)
        ty.backward(torch.tensor(g))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(avg_pool2d_backward(g, cache), t.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_the_caches_keep_pool2ds_name_and_the_reference_never_imports_the_ops():
    """The NumPy reference defines the caches it builds (so that pool2d imports it, never the
    reverse); they still print, pickle and compare as ``gpuconv.ops.pool2d``'s, where users import them."""
    import ast
    import pickle
    assert pool_mod.MaxPool2dCache is pool_ref.MaxPool2dCache and pool_mod.AvgPool2dCache is pool_ref.AvgPool2dCache
    for forward in (max_pool2d_forward, avg_pool2d_forward):
        cache = forward(np.ones((1, 1, 4, 4), np.float32), 2)[1]
        assert type(cache).__module__ == "gpuconv.ops.pool2d"
        assert type(pickle.loads(pickle.dumps(cache))) is type(cache)
    tree = ast.parse(open(pool_ref.__file__, encoding="utf-8").read())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name and name.split(".")[-1] == "pool2d" for name in imported), imported


# ----------------------------------------------------------------------------- the NumPy fast paths
# (shape, kernel, stride, padding, floor): windows that tile the input, which the NumPy reference
# pools without its loop over taps, and one overlapping geometry that keeps the loop.
TILED = [((2, 3, 8, 8), 2, 2, 0, False), ((3, 2, 6, 9), 3, 3, 0, False), ((2, 3, 7, 9), 2, 2, 0, True),
         ((2, 4, 5, 7), (5, 7), (5, 7), 0, False), ((1, 1, 9, 9), 9, 9, 0, False), ((1, 1, 3, 3), 3, 3, 0, False),
         ((2, 2, 16, 16), 16, 16, 0, False), ((2, 2, 4, 16), (2, 8), (2, 8), 0, False),
         ((2, 3, 6, 6), 2, 2, 1, False), ((2, 2, 7, 5), (2, 3), (2, 3), (1, 1), True), ((2, 2, 7, 7), 3, 2, 1, True)]


def _special_values(shape, dt, seed):
    """Normals, half of them rounded to halves (ties; the others make sums round), the first
    window of the first plane all -0.0, and in the first plane of several -0.0, +0.0, NaN and
    +-inf sprinkled in (the other planes' sums stay finite, where their order shows)."""
    import ml_dtypes
    dt = np.dtype(ml_dtypes.bfloat16 if dt == "bfloat16" else dt)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape)
    a = np.where(rng.random(shape) < 0.5, np.round(a * 2) / 2, a)
    if shape[0] * shape[1] > 1:
        flat = a[0, 0].reshape(-1)
        where = rng.choice(flat.size, size=min(flat.size, 10), replace=False)
        flat[where] = np.array([-0.0, 0.0, np.nan, np.inf, -np.inf, -0.0, np.nan, 0.0, -0.0, np.inf])[:where.size]
        a[0, 0] = flat.reshape(shape[2:])
    a[0, 0, :3, :3] = -0.0
    return a.astype(dt)


def _pool_everything(kind, x, k, s, p, floor, dy_seed):
    """(y, dx, the max pool's switches or None) of ``kind`` on x, dy drawn like x (inf - inf and
    inf * 0 make NaNs, quietly)."""
    from gpuconv.ops import lp_pool2d_backward, lp_pool2d_forward
    with np.errstate(invalid="ignore"):
        if kind.startswith("lp"):
            y, cache = lp_pool2d_forward(x, int(kind[2:]), k, s, floor=floor)
            return y, lp_pool2d_backward(_special_values(y.shape, y.dtype, dy_seed), cache), None
        fwd, bwd = OPS[kind[:3]]
        kwargs = {} if kind == "max" else {"count_include_pad": kind == "avg"}
        y, cache = fwd(x, k, s, floor=floor, padding=p, **kwargs)
        return y, bwd(_special_values(y.shape, y.dtype, dy_seed), cache), getattr(cache, "argmax", None)


@pytest.mark.parametrize("kind, case", [(kind, c) for kind in ("max", "avg", "avg-excl", "lp1", "lp2") for c in TILED
                                        if c[3] == 0 or not kind.startswith("lp")],  # LP pooling has no padding
                         ids=lambda v: v if isinstance(v, str) else f"{v[0]}-k{v[1]}-s{v[2]}-p{v[3]}{'-floor' * v[4]}")
def test_numpy_tiled_paths_give_the_tap_loops_bits(monkeypatch, kind, case):
    """The NumPy reference's paths for windows that tile the input (a window's sum reduced over
    its tap planes, the gradient spread in one pass, a few windows' max by argmax) against the
    same reference with them off, the loop over taps that defines the bits: every dtype, both
    layouts, ties, NaN, inf, -0.0 (an all -0.0 window averages to +0.0), padding, floor, several
    batch chunks, and global windows up to 256 taps (a pairwise sum would change their bits)."""
    import gpuconv
    shape, k, s, p, floor = case
    for dt in (np.float64, np.float32, "bfloat16", np.float16):
        for channels_last in (False, True):
            x = _special_values(shape, dt, 3)
            x = gpuconv.to_channels_last(x) if channels_last else x
            with monkeypatch.context() as m:
                m.setattr(pool_ref, "_tiles", lambda *args: False)
                want = _pool_everything(kind, x, k, s, p, floor, 4)
            for few, chunk in ((10 ** 9, 1 << 20), (0, 64)):  # the max pool's argmax path; the loop, chunked
                with monkeypatch.context() as m:
                    m.setattr(pool_ref, "_FEW_OUTPUTS", few)
                    m.setattr(pool_ref, "_CHUNK_BYTES", chunk)
                    got = _pool_everything(kind, x, k, s, p, floor, 4)
                for name, g, w in zip(("y", "dx", "argmax"), got, want):
                    assert (g is None) == (w is None)
                    if w is not None:
                        assert g.dtype == w.dtype and g.shape == w.shape, (name, dt, channels_last)
                        assert np.ascontiguousarray(g).tobytes() == np.ascontiguousarray(w).tobytes(), \
                            (name, dt, channels_last, few)


def test_numpy_tiled_pools_never_loop_over_taps(monkeypatch):
    """A global average pool (a squeeze-excitation gate's AdaptiveAvgPool2d(1) over a 32x32 map is
    1024 taps), a 2x2 max pool, large and small, and an L2 pool run on NumPy without a pass per
    tap, forward and backward."""
    from gpuconv.ops import (adaptive_avg_pool2d_backward, adaptive_avg_pool2d_forward, lp_pool2d_backward,
                             lp_pool2d_forward)
    from gpuconv.ops import lp_pool2d as lp_mod

    def no_taps(*args):
        raise AssertionError("a pass per tap")
    monkeypatch.setattr(pool_ref, "_taps", no_taps)
    monkeypatch.setattr(lp_mod, "_taps", no_taps)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y, cache = adaptive_avg_pool2d_forward(x, 1)
    np.testing.assert_allclose(y[..., 0, 0], x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(adaptive_avg_pool2d_backward(np.ones_like(y), cache), np.full_like(x, 1 / 1024))
    for shape in ((2, 3, 32, 32), (2, 3, 8, 8)):
        y, cache = max_pool2d_forward(x[:, :, :shape[2], :shape[3]], 2)
        assert max_pool2d_backward(y, cache).shape == shape
    y, cache = lp_pool2d_forward(x, 2, 4)
    assert lp_pool2d_backward(y, cache).shape == x.shape
