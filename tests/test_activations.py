"""LeakyReLU, Sigmoid, Tanh and SiLU: the NumPy reference against closed forms and known values,
float64 gradients, the kernels against the reference in every dtype (bit for bit where both run
the same arithmetic, within a few ulp where exp/tanh come from different libraries), channels_last
kept, the layers in a network trained for a step, repr and checkpoints, errors."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import gpuconv
from gpuconv import checkpoint, layout, nn, ops
from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.ops import activations as A
from gpuconv.precision import smallest_subnormal, unit_roundoff

DTYPES = [np.float32, np.float64, ml_dtypes.bfloat16, np.float16]
NAMES = ["leaky_relu", "sigmoid", "tanh", "silu"]
# Where both paths run the same arithmetic (no exp/tanh), the kernels give the reference's bits.
EXACT_FORWARD = {"leaky_relu"}
EXACT_BACKWARD = {"leaky_relu", "sigmoid", "tanh"}  # (sigmoid's and tanh's from the same output y)


def _ops(name, slope=0.01):
    fwd, bwd = getattr(ops, f"{name}_forward"), getattr(ops, f"{name}_backward")
    return (lambda x: fwd(x, slope)) if name == "leaky_relu" else fwd, bwd


def _references(name, slope=0.01):
    fwd, bwd = getattr(A, f"_{name}_forward_reference"), getattr(A, f"_{name}_backward_reference")
    return (lambda x: fwd(x, slope)) if name == "leaky_relu" else fwd, bwd


def _math_sigmoid(v):
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


def _math(name, x, slope=0.01):
    """(y, dy/dx) elementwise from Python's float64 math: the closed forms."""
    ys, ds = [], []
    for v in np.ravel(x).astype(float):
        if name == "leaky_relu":
            y, d = (v, 1.0) if v > 0 else (slope * v, slope)
        elif name == "sigmoid":
            s = _math_sigmoid(v)
            y, d = s, s * (1 - s)
        elif name == "tanh":
            y = math.tanh(v)
            d = 1 - y * y
        else:
            s = _math_sigmoid(v)
            y, d = v * s, s * (1 + v * (1 - s))
        ys.append(y)
        ds.append(d)
    return np.array(ys).reshape(np.shape(x)), np.array(ds).reshape(np.shape(x))


def test_known_values(backend):
    ln2, ln3 = math.log(2), math.log(3)
    x = backend.asarray(np.array([-ln3, -ln2, 0.0, ln2, ln3]))
    # sigmoid(ln 3) = 3/4, tanh(ln 2) = 3/5; their derivatives s(1 - s) = 3/16 and 1 - y^2 = 16/25
    want = {"sigmoid": ([0.25, 1 / 3, 0.5, 2 / 3, 0.75], [3 / 16, 2 / 9, 0.25, 2 / 9, 3 / 16]),
            "tanh": ([-0.8, -0.6, 0.0, 0.6, 0.8], [0.36, 0.64, 1.0, 0.64, 0.36]),
            "silu": ([-0.25 * ln3, -ln2 / 3, 0.0, 2 * ln2 / 3, 0.75 * ln3],
                     [0.25 * (1 - 0.75 * ln3), (1 - 2 * ln2 / 3) / 3, 0.5, 2 / 3 * (1 + ln2 / 3),
                      0.75 * (1 + 0.25 * ln3)]),
            "leaky_relu": ([-0.2 * ln3, -0.2 * ln2, 0.0, ln2, ln3], [0.2, 0.2, 0.2, 1.0, 1.0])}  # the slope at 0
    for name, (y_want, d_want) in want.items():
        fwd, bwd = _ops(name, 0.2)
        y, cache = fwd(x)
        dx = bwd(backend.asarray(np.ones(5)), cache)
        np.testing.assert_allclose(backend.asnumpy(y), y_want, rtol=1e-15, atol=1e-16, err_msg=name)
        np.testing.assert_allclose(backend.asnumpy(dx), d_want, rtol=1e-15, err_msg=name)
        y0, cache0 = fwd(backend.asarray(np.array(ln2)))  # a 0-d array stays 0-d
        assert y0.shape == () and bwd(backend.asarray(np.ones(())), cache0).shape == ()
    backend.assert_kernels_ran(*(f"{n}_{d}" for n in NAMES for d in ("forward", "backward")))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_against_the_closed_forms(backend, name, dtype):
    """Relative accuracy elementwise over the saturated tails too: a few units of roundoff for the
    values; the gradients within what their own formulas' rounding allows (from the rounded output
    y for sigmoid and tanh: y's error times |1 - 2y| or 2|y|, as in PyTorch)."""
    x = np.concatenate([np.linspace(-30, 30, 241), [-100.0, 100.0, -1e-30, 1e-30, 0.0, -0.0]]).astype(dtype)
    y, cache = _ops(name, 0.1)[0](backend.asarray(x))
    dx = _ops(name, 0.1)[1](backend.asarray(np.ones_like(x)), cache)
    want_y, want_d = _math(name, x, float(np.dtype(dtype).type(0.1)))
    got_y, got_d = backend.asnumpy(y).astype(np.float64), backend.asnumpy(dx).astype(np.float64)
    xf, u, tiny = x.astype(np.float64), unit_roundoff(dtype), smallest_subnormal(dtype)
    s = np.array([_math_sigmoid(v) for v in xf])
    d_scale = {"leaky_relu": 0 * xf, "sigmoid": 2 * s, "tanh": 2 * want_y ** 2, "silu": s * (1 + np.abs(xf))}[name]
    # (tiny * |x|: SiLU's exp(-|x|) in the subnormal range, where it keeps absolute accuracy only)
    assert np.all(np.abs(got_y - want_y) <= 8 * u * np.abs(want_y) + tiny * (1 + np.abs(xf))), name
    assert np.all(np.abs(got_d - want_d) <= 8 * u * (np.abs(want_d) + d_scale) + tiny * (1 + np.abs(xf))), name
    assert backend.asnumpy(y).dtype == dtype and backend.asnumpy(dx).dtype == dtype


def test_infinities_and_nan_as_pytorch(backend):
    """NaN in, NaN out; the saturated values and slopes at +-inf, SiLU's -inf * 0 = NaN included
    (torch 2.x gives these), and no overflow, division or invalid-operation warning on NumPy."""
    x = backend.asarray(np.array([-np.inf, np.inf, np.nan, -1e4, 1e4, -0.0], np.float32))
    want = {"leaky_relu": ([-np.inf, np.inf, np.nan, -100, 1e4, -0.0], [0.01, 1, 0.01, 0.01, 1, 0.01]),
            "sigmoid": ([0, 1, np.nan, 0, 1, 0.5], [0, 0, np.nan, 0, 0, 0.25]),
            "tanh": ([-1, 1, np.nan, -1, 1, -0.0], [0, 0, np.nan, 0, 0, 1]),
            "silu": ([np.nan, np.inf, np.nan, -0.0, 1e4, -0.0], [np.nan, np.nan, np.nan, -0.0, 1, 0.5])}
    with np.errstate(all="raise", under="ignore"):
        for name, (y_want, d_want) in want.items():
            fwd, bwd = _ops(name)
            y, cache = fwd(x)
            dx = bwd(backend.asarray(np.ones(6, np.float32)), cache)
            np.testing.assert_allclose(backend.asnumpy(y), np.float32(y_want), rtol=1e-6, atol=0, err_msg=name)
            np.testing.assert_allclose(backend.asnumpy(dx), np.float32(d_want), rtol=1e-6, atol=0, err_msg=name)
            assert np.signbit(backend.asnumpy(y)[5]) == np.signbit(y_want[5]), name  # -0.0 kept where torch keeps it


@pytest.mark.parametrize("name", NAMES)
def test_gradient_float64(backend, name):
    rng = np.random.default_rng(0)
    x = 2 * rng.standard_normal((2, 3, 4, 5))
    x[np.abs(x) < 0.1] = 0.5  # no central difference straddles LeakyReLU's kink
    fwd, bwd = _ops(name, 0.2)
    xa = backend.asarray(x)
    y, cache = fwd(xa)
    dy = backend.asarray(rng.standard_normal(y.shape))
    num = numerical_gradient_array(lambda a: fwd(a)[0], xa, dy)
    assert relative_error(bwd(dy, cache), num) < 1e-8


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64", "bf16", "f16"])
def test_kernels_match_the_reference(backend, dtype):
    """The kernels against the NumPy reference on the same storage inputs: LeakyReLU bit for bit,
    and Sigmoid's and Tanh's backward given the same output; exp/tanh within 8 units of roundoff
    of the compute dtype, plus one rounding of the storage type (bf16/fp16 round the float32
    result once, where a few float32 ulp may cross a rounding boundary)."""
    if backend.name == "numpy":
        pytest.skip("the reference itself")
    rng = np.random.default_rng(1)
    x = (4 * rng.standard_normal((2, 3, 5, 7))).astype(dtype)
    x.reshape(-1)[:4] = [0.0, -0.0, 30.0, -30.0]
    dy = rng.standard_normal(x.shape).astype(dtype)
    # The compute dtype's error relative to the result's terms (SiLU's gradient cancels near
    # x = -1.28: relative to |dy| s (1 + |x|), not to dx), then bf16/fp16's one rounding of the result.
    u = unit_roundoff(np.float64 if dtype == np.float64 else np.float32)
    storage_u = 0 if dtype in (np.float32, np.float64) else 2 * unit_roundoff(dtype)
    xf, dyf = x.astype(np.float64), dy.astype(np.float64)
    terms = np.abs(dyf) * np.array([_math_sigmoid(v) for v in xf.ravel()]).reshape(x.shape) * (1 + np.abs(xf))
    tiny = smallest_subnormal(dtype) * (1 + np.abs(xf))

    def close(got, want, scale, name):
        got, want = got.astype(np.float64), want.astype(np.float64)
        bad = np.abs(got - want) > storage_u * np.abs(want) + 8 * u * scale + tiny
        assert not bad.any(), f"{name}: {got[bad][:4]} against the reference's {want[bad][:4]}"
    for name in NAMES:
        (fwd, bwd), (rfwd, rbwd) = _ops(name, 0.3), _references(name, 0.3)
        y, cache = fwd(backend.asarray(x))
        ry, rcache = rfwd(x)
        got_y = backend.asnumpy(y)
        assert got_y.dtype == np.dtype(dtype)
        on_reference_cache = type(rcache)(*[backend.asarray(v) if hasattr(v, "shape") else v for v in rcache])
        dx, rdx = backend.asnumpy(bwd(backend.asarray(dy), on_reference_cache)), rbwd(dy, rcache)
        if name in EXACT_FORWARD:
            assert got_y.tobytes() == ry.tobytes(), name
        else:
            close(got_y, ry, np.abs(ry.astype(np.float64)), f"{name} forward")
        if name in EXACT_BACKWARD:
            assert dx.tobytes() == rdx.tobytes(), name
        else:
            close(dx, rdx, np.abs(rdx.astype(np.float64)) + terms, f"{name} backward")
    backend.assert_kernels_ran(*(f"{n}_{d}" for n in NAMES for d in ("forward", "backward")))


def test_low_precision_computes_in_float32_and_rounds_once():
    """bfloat16/float16: the float32 result rounded once (not the op in the storage type), the
    slope rounded to float32 as PyTorch takes it."""
    x = np.array([-3.0, -0.7, 0.4, 2.5], ml_dtypes.bfloat16)
    x32 = x.astype(np.float32)
    y, _ = ops.leaky_relu_forward(x, 0.1)
    assert y.dtype == ml_dtypes.bfloat16
    assert y.tobytes() == np.where(x32 > 0, x32, x32 * np.float32(0.1)).astype(ml_dtypes.bfloat16).tobytes()
    for name in ("sigmoid", "tanh", "silu"):
        y16, _ = _ops(name)[0](x)
        y32, _ = _ops(name)[0](x32)
        assert y16.tobytes() == y32.astype(ml_dtypes.bfloat16).tobytes(), name


@pytest.mark.parametrize("name", NAMES)
def test_layers_keep_channels_last(backend, name):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    layer = {"leaky_relu": nn.LeakyReLU(0.2), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "silu": nn.SiLU()}[name]
    y = layer(layout.to_channels_last(backend.asarray(x)))
    assert layout.is_channels_last(y)
    want_y, want_d = _math(name, x, float(np.float32(0.2)))
    np.testing.assert_allclose(backend.asnumpy(y), want_y, rtol=1e-5, atol=1e-7)
    for dy_cl in (True, False):  # dx in dy's layout
        layer(layout.to_channels_last(backend.asarray(x)))
        dy = backend.asarray(np.ones_like(x))
        dx = layer.backward(layout.to_channels_last(dy) if dy_cl else dy)
        assert layout.is_channels_last(dx) == dy_cl
        np.testing.assert_allclose(backend.asnumpy(dx), want_d, rtol=1e-5, atol=1e-7)


def _net(seed=0):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, seed=seed), nn.LeakyReLU(0.1),
                         nn.Conv2d(4, 4, 3, seed=seed + 1), nn.SiLU(), nn.Flatten(), nn.Linear(16, 8, seed=seed + 2),
                         nn.Tanh(), nn.Linear(8, 8, seed=seed + 3), nn.Sigmoid(), nn.Linear(8, 3, seed=seed + 4))


def test_a_network_of_them_trains_a_step(backend):
    """In a Sequential: float64 gradients of the input and a parameter against central
    differences, then an SGD step that lowers the loss, in float32 and channels_last."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 4, 4))
    labels = backend.asarray(np.array([0, 1, 2, 1]))
    net, loss = _net().to(backend.device).astype(np.float64), nn.CrossEntropyLoss()
    xa = backend.asarray(x)
    dy = backend.asarray(rng.standard_normal((4, 3)))
    net(xa)
    net.zero_grad()
    dx = net.backward(dy)
    assert relative_error(dx, numerical_gradient_array(lambda a: net.forward(a), xa, dy)) < 1e-6
    w = net[2].weight
    assert relative_error(w.grad, numerical_gradient_array(lambda _: net.forward(xa), w.data, dy)) < 1e-6

    net = _net().to(backend.device)
    opt = gpuconv.optim.SGD(net.parameters(), lr=0.5)
    xc = layout.to_channels_last(backend.asarray(x.astype(np.float32)))
    before = float(loss(net(xc), labels))
    net.zero_grad()
    net.backward(loss.backward())
    opt.step()
    after = float(loss(net(xc), labels))
    assert after < before, (before, after)
    backend.assert_kernels_ran(*(f"{n}_{d}" for n in NAMES for d in ("forward", "backward")))


def test_repr_state_dict_and_checkpoint(tmp_path):
    """PyTorch's reprs; no state (as PyTorch's: the slope is an argument, not a buffer), so a
    checkpoint of a network with them loads into the network built again, outputs and all."""
    assert [repr(m) for m in (nn.LeakyReLU(), nn.LeakyReLU(0.2, inplace=True), nn.SiLU(), nn.Sigmoid(), nn.Tanh())] \
        == ["LeakyReLU(negative_slope=0.01)", "LeakyReLU(negative_slope=0.2)", "SiLU()", "Sigmoid()", "Tanh()"]
    assert nn.LeakyReLU(1).negative_slope == 1.0 and isinstance(nn.LeakyReLU(1).negative_slope, float)
    net = _net()
    assert [k for k in net.state_dict() if k.startswith(("1.", "3.", "6.", "8."))] == []
    arrays = {f"model/{k}": v for k, v in net.state_dict().items()}
    path = checkpoint.save_checkpoint(tmp_path / "c.npz", {**arrays, "meta/format": np.array(checkpoint.FORMAT)})
    again = _net(seed=7)
    again.load_state_dict(checkpoint.section(checkpoint.load_checkpoint(path), "model"))
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 4)).astype(np.float32)
    assert net(x).tobytes() == again(x).tobytes()
    assert "LeakyReLU(negative_slope=0.1)" in repr(again)
    assert {"LeakyReLU", "SiLU", "Sigmoid", "Tanh"} <= set(nn.__all__) and nn.SiLU is gpuconv.layers.SiLU


def test_the_slope_is_a_number_a_captured_step_replays():
    """The slope reaches the kernel by value: a CUDA graph replays its capture's, so a change while
    a captured step holds the layer is refused (and free otherwise)."""
    layer = nn.LeakyReLU(0.1)
    layer.negative_slope = 0.2
    layer._held_by_graph = True
    layer.negative_slope = 0.2  # the same value: nothing changes
    with pytest.raises(RuntimeError, match="LeakyReLU: negative_slope cannot change while a captured training step"):
        layer.negative_slope = 0.3


def test_errors(backend):
    for name in NAMES:
        fwd, bwd = _ops(name)
        with pytest.raises(TypeError, match=r"x has dtype int64.*astype\(np.float32\)"):
            fwd(backend.asarray(np.arange(3)))
        _, cache = fwd(backend.asarray(np.ones((2, 3), np.float32)))
        which = "output" if name in ("sigmoid", "tanh") else "input"
        with pytest.raises(ValueError, match=rf"dy must have the forward {which}'s shape \(2, 3\), got \(3, 2\)"):
            bwd(backend.asarray(np.ones((3, 2), np.float32)), cache)
        with pytest.raises(TypeError, match=r"dy has dtype float64 but [xy] has dtype float32"):
            bwd(backend.asarray(np.ones((2, 3))), cache)
        with pytest.raises(TypeError, match=rf"cache must be the \w+Cache that {name}_forward returned, got GeluCache"):
            bwd(backend.asarray(np.ones((2, 3), np.float32)), ops.gelu_forward(np.ones((2, 3), np.float32))[1])
    for slope in (float("nan"), float("inf"), "0.1", True, None):
        with pytest.raises(ValueError, match=r"negative_slope=.*must be a finite number, e.g. 0.01"):
            ops.leaky_relu_forward(backend.asarray(np.ones(3, np.float32)), slope)
    with pytest.raises(ValueError, match=r"LeakyReLU\(negative_slope='0.1'\)"):
        nn.LeakyReLU("0.1")
    for make in (lambda: nn.LeakyReLU(0.1, 2), lambda: nn.SiLU("yes")):
        with pytest.raises(TypeError, match=r"inplace is True or False"):
            make()


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["f32", "bf16"])
def test_against_pytorch(dtype):
    """Where PyTorch is installed: its functional ops and autograd on the same values, NaN and the
    infinities included. LeakyReLU's bits; the others within 8 float32 units of roundoff (exp and
    tanh are other libraries' there) and one rounding of the storage type."""
    torch = pytest.importorskip("torch", reason="PyTorch is optional: this compares against it where installed")
    F = torch.nn.functional
    rng = np.random.default_rng(6)
    x = (6 * rng.standard_normal(500)).astype(dtype)
    x[:6] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30]
    dy = rng.standard_normal(500).astype(dtype)
    tdtype = torch.float32 if dtype == np.float32 else torch.bfloat16
    to_torch = (lambda a: torch.from_numpy(a.astype(np.float32)).to(tdtype))  # (bf16 values exact in float32)
    funcs = {"leaky_relu": lambda t: F.leaky_relu(t, 0.2), "sigmoid": torch.sigmoid, "tanh": torch.tanh,
             "silu": F.silu}
    u = 8 * unit_roundoff(np.float32) + (0 if dtype == np.float32 else 2 * unit_roundoff(dtype))
    for name, f in funcs.items():
        t = to_torch(x).requires_grad_(True)
        ty = f(t)
        (tdx,) = torch.autograd.grad(ty, t, to_torch(dy))
        fwd, bwd = _ops(name, 0.2)
        y, cache = fwd(x)
        dx = bwd(dy, cache)
        for got, want, scale in ((y, ty, None), (dx, tdx, np.abs(dy.astype(np.float64)))):
            got, want = got.astype(np.float64), want.detach().double().numpy()
            assert (np.isnan(got) == np.isnan(want)).all(), name
            ok = np.isfinite(want)
            assert (got[~ok] == want[~ok]).sum() == np.isinf(want).sum(), name  # the same infinities
            if name == "leaky_relu":  # every value, and the sign of every zero (a NaN's payload aside)
                assert (got[ok] == want[ok]).all() and (np.signbit(got[ok]) == np.signbit(want[ok])).all(), name
                continue
            got, want, tol = got[ok], want[ok], u * (np.abs(want) if scale is None else np.abs(want) + scale)[ok]
            assert (np.abs(got - want) <= tol + 1e-38).all(), (name, np.max(np.abs(got - want) / tol))


def test_summary_counts_leaky_relu_as_relu_and_the_smooth_ones_as_none():
    """summary(): LeakyReLU counts one operation per element, as ReLU (swapping one for the other
    changes no FLOP count); SiLU, Sigmoid and Tanh count none, as GELU (their exp or tanh is no
    multiply-add)."""
    def flops(act):
        rows = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, seed=0), act).summary((3, 5, 5)).splitlines()
        return int(rows[3].split()[-1].replace(",", ""))

    assert flops(nn.ReLU()) == flops(nn.LeakyReLU(0.2)) == 4 * 5 * 5
    assert flops(nn.SiLU()) == flops(nn.Sigmoid()) == flops(nn.Tanh()) == flops(nn.GELU()) == 0


def test_leaky_relu_of_slope_zero_gives_torchs_nan_at_infinities_without_a_numpy_warning(backend):
    """LeakyReLU(0): -inf * 0 is NaN (PyTorch's ``x * negval`` gives it too), forward at x = -inf and
    backward at dy = +-inf where x <= 0, with no invalid-operation warning on NumPy (as SiLU's -inf * 0)."""
    x = backend.asarray(np.array([-np.inf, -1.0, 0.0, 2.0], np.float32))
    with np.errstate(all="raise"):
        y, cache = ops.leaky_relu_forward(x, 0.0)
        dx = ops.leaky_relu_backward(backend.asarray(np.array([1.0, np.inf, -np.inf, np.inf], np.float32)), cache)
    np.testing.assert_array_equal(backend.asnumpy(y), np.float32([np.nan, -0.0, 0.0, 2.0]))
    np.testing.assert_array_equal(backend.asnumpy(dx), np.float32([0.0, np.nan, np.nan, np.inf]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_silu_blocks_give_the_whole_array_bits(monkeypatch, dtype):
    """The NumPy path runs C-contiguous arrays a block at a time (the last one short): the same bits
    as the whole-array computation (a transposed view runs whole), specials included, and the
    sigmoid below 0 is e / (1 + e), above 1 / (1 + e), with e = exp(-|x|)."""
    monkeypatch.setattr(A, "BLOCK", 64)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 5, 7, 2)) * 20).astype(dtype)
    x.flat[:7] = [np.nan, np.inf, -np.inf, 0.0, -0.0, -100.0, 1e-30]
    dy = rng.standard_normal(x.shape).astype(dtype)
    whole = x.transpose(3, 2, 1, 0)  # not C-contiguous: no blocks
    assert A._blocked(np.empty_like(x), x) is not None and A._blocked(np.empty_like(whole), whole) is None
    e = np.exp(-np.abs(x))
    with np.errstate(invalid="ignore"):
        want = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
        for name, ref in (("sigmoid", want), ("silu", x * want)):
            fwd, bwd = getattr(A, f"_{name}_forward_reference"), getattr(A, f"_{name}_backward_reference")
            y, cache = fwd(x)
            y_whole, cache_whole = fwd(whole)
            assert y.tobytes() == ref.tobytes() == np.ascontiguousarray(y_whole.transpose(3, 2, 1, 0)).tobytes()
            dx = bwd(dy, cache)
            dx_whole = bwd(dy.transpose(3, 2, 1, 0), cache_whole)
            assert dx.tobytes() == np.ascontiguousarray(dx_whole.transpose(3, 2, 1, 0)).tobytes()
