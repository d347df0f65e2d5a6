"""conv2d with groups and dilation (F.conv2d's semantics): a direct float64 definition, every dtype
and layout against the NumPy reference, numerical gradients, the adjoint identity, PyTorch (where
installed), errors, and the layer. Each backend test runs on numpy, the simulator and a GPU when
present; shapes stay small for the simulator."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuconv
from gpuconv import kernels, layout
from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.layers import Conv2d, Sequential
from gpuconv.ops import conv2d_backward, conv2d_forward
from gpuconv.ops import _conv2d_depthwise as D
from gpuconv.ops import conv2d_grouped as G

from conftest import check_linear_and_adjoint

CASES = {  # x shape, K, (FH, FW), stride, padding, dilation, groups (all with floor=True)
    "depthwise": ((2, 4, 5, 5), 4, (3, 3), 1, 1, 1, 4),
    "depthwise_s2": ((2, 4, 7, 6), 4, (3, 3), 2, 1, 1, 4),
    "depthwise_x2": ((1, 3, 5, 5), 6, (3, 3), 1, 1, 1, 3),  # channel multiplier 2
    "g2_cg8": ((1, 16, 4, 5), 6, (3, 3), 1, 1, 1, 2),
    "g4_cg8": ((1, 32, 3, 3), 8, (3, 3), 1, 1, 1, 4),
    "resnext_g32": ((1, 128, 2, 2), 64, (3, 3), 1, 1, 1, 32),  # 4 channels per group
    "dilated": ((2, 3, 7, 7), 4, (3, 3), 1, 2, 2, 1),
    "dilated_g2_s2": ((1, 4, 8, 7), 4, (3, 3), 2, 1, 2, 2),
    "grouped_1x1": ((2, 8, 3, 3), 4, (1, 1), 1, 0, 1, 4),
    "odd": ((1, 6, 5, 7), 9, (2, 3), (2, 1), (0, 1), (1, 2), 3),
    "same_even_extent": ((1, 4, 6, 5), 4, (2, 3), 1, "same", (3, 2), 2),
    "same_depthwise_d2": ((1, 4, 5, 5), 4, (3, 3), 1, "same", 2, 4),
}
FEW = ["depthwise_s2", "resnext_g32", "dilated_g2_s2", "same_even_extent"]
DTYPES = {"f64": (np.float64, None), "f32": (np.float32, "fp32"), "tf32": (np.float32, "tf32"),
          "bf16": (ml_dtypes.bfloat16, None), "f16": (np.float16, None)}


def _hw(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def make(name, dtype=np.float64, seed=0, bias=True):
    xs, k, (fh, fw), stride, padding, dilation, groups = CASES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal((k, xs[1] // groups, fh, fw)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype) if bias else None
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups, floor=True)


def direct(x, w, b, stride, padding, dilation, groups, floor=True):
    """The definition in float64, one output pixel and one group at a time."""
    (sh, sw), (dh, dw) = _hw(stride), _hw(dilation)
    k, cg, fh, fw = w.shape
    if padding == "same":  # PyTorch's: D*(F - 1) zeros, half (rounded down) before
        tot = (dh * (fh - 1), dw * (fw - 1))
        pads = ((tot[0] // 2, tot[0] - tot[0] // 2), (tot[1] // 2, tot[1] - tot[1] // 2))
    else:
        pads = tuple((p, p) for p in _hw(padding))
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0)) + pads)
    eh, ew = dh * (fh - 1) + 1, dw * (fw - 1) + 1
    oh, ow = (x.shape[2] - eh) // sh + 1, (x.shape[3] - ew) // sw + 1
    kg = k // groups
    y = np.zeros((x.shape[0], k, oh, ow))
    for g in range(groups):
        xg, wg = x[:, g * cg:(g + 1) * cg], w[g * kg:(g + 1) * kg].astype(np.float64)
        for i in range(oh):
            for j in range(ow):
                patch = xg[:, :, i * sh:i * sh + eh:dh, j * sw:j * sw + ew:dw]
                y[:, g * kg:(g + 1) * kg, i, j] = np.tensordot(patch, wg, axes=([1, 2, 3], [1, 2, 3]))
    return y if b is None else y + b.astype(np.float64)[None, :, None, None]


def _reference(x, w, b, kw, dy, precision=None, need=(True, True)):
    """y, dx, dw, db of the NumPy reference (host arrays), whatever the default device."""
    with gpuconv.default_device("cpu"):
        y, cache = conv2d_forward(x, w, b, precision=precision, **kw)
        return (y,) + conv2d_backward(dy, cache, need_dx=need[0], need_dw=need[1], precision=precision)


def _f64(a):
    return None if a is None else np.asarray(a).astype(np.float64)


# ---------------------------------------------------------------- the definition
@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_the_direct_definition(backend, name):
    x, w, b, kw = make(name)
    y, cache = conv2d_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b), **kw)
    np.testing.assert_allclose(backend.asnumpy(y), direct(x, w, b, **kw), rtol=1e-12, atol=1e-12)
    assert cache.groups == kw["groups"] and cache.dilation == _hw(kw["dilation"])


@pytest.mark.parametrize("name", list(CASES))
def test_float64_numerical_gradients_of_x_w_b(name):
    x, w, b, kw = make(name, seed=1)
    y, cache = conv2d_forward(x, w, b, **kw)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    dx, dw, db = conv2d_backward(dy, cache)
    for arr, analytic in ((x, dx), (w, dw), (b, db)):
        num = numerical_gradient_array(lambda _: conv2d_forward(x, w, b, **kw)[0], arr, dy)
        assert relative_error(analytic, num) < 1e-6


@pytest.mark.parametrize("name", FEW + ["depthwise", "grouped_1x1"])
def test_adjoint_identity(backend, name):
    """<conv(x), g> = <x, dX(g)> = <w, dW(g)> (no bias: the convolution is bilinear)."""
    x, w, _, kw = make(name, seed=3, bias=False)
    y, cache = conv2d_forward(backend.asarray(x), backend.asarray(w), **kw)
    g = np.random.default_rng(4).standard_normal(y.shape)
    dx, dw, _ = conv2d_backward(backend.asarray(g), cache)
    lhs = float(np.sum(backend.asnumpy(y) * g))
    assert np.isclose(lhs, float(np.sum(x * backend.asnumpy(dx))), rtol=1e-12)
    assert np.isclose(lhs, float(np.sum(w * backend.asnumpy(dw))), rtol=1e-12)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(groups=st.integers(1, 3), cg=st.integers(1, 2), kg=st.integers(1, 2), f=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       s=st.tuples(st.integers(1, 2), st.integers(1, 2)), p=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       d=st.tuples(st.integers(1, 3), st.integers(1, 3)), hw=st.tuples(st.integers(1, 6), st.integers(1, 6)),
       seed=st.integers(0, 2**16))
def test_properties_over_groups_dilations_strides_paddings(backend, groups, cg, kg, f, s, p, d, hw, seed):
    """The output size rule, linearity in x, and the adjoint identity <conv(x), g> = <x, dX(g)> =
    <w, dW(g)> in float64, for any groups, dilation, stride and padding (a grouped or dilated case
    runs the grouped kernels on 'sim')."""
    if groups == 1 and d == (1, 1):
        d = (2, 1)  # the plain convolution's properties are test_conv2d's
    ext = [di * (fi - 1) + 1 for fi, di in zip(f, d)]
    h, wd = (max(v, e - 2 * pi) for v, e, pi in zip(hw, ext, p))  # the dilated filter fits the padded input
    rng = np.random.default_rng(seed)
    x1, x2 = rng.standard_normal((2, 2, groups * cg, h, wd))
    w = rng.standard_normal((groups * kg, cg, *f))
    kw = dict(stride=s, padding=p, dilation=d, groups=groups, floor=True)
    y1, _, _ = check_linear_and_adjoint(backend, lambda x, w_: conv2d_forward(x, w_, **kw), conv2d_backward, x1, x2,
                                        w, rng)
    assert y1.shape == (2, groups * kg) + tuple((n + 2 * pi - e) // si + 1 for n, pi, e, si in zip((h, wd), p, ext, s))


# ---------------------------------------------------------------- every dtype and layout vs the reference
def _check_against_reference(backend, name, dtype_id, channels_last):
    dtype, precision = DTYPES[dtype_id]
    x, w, b, kw = make(name, dtype, seed=5)
    if channels_last:
        x = layout.to_channels_last(x)
    yshape = direct(x, w, None, **kw).shape
    dy = np.random.default_rng(6).standard_normal(yshape).astype(dtype)
    ref = _reference(x, w, b, kw, dy, precision)
    xd = backend.asarray(x)
    if channels_last:
        xd, dyd = layout.to_channels_last(xd), layout.to_channels_last(backend.asarray(dy))
    else:
        dyd = backend.asarray(dy)
    y, cache = conv2d_forward(xd, backend.asarray(w), backend.asarray(b), precision=precision, **kw)
    got = (y,) + conv2d_backward(dyd, cache, precision=precision)
    assert layout.is_channels_last(y) == layout.is_channels_last(got[1]) == (channels_last and y.shape[1] > 1)
    # reduction lengths: y's C/G*FH*FW, dx's K/G*FH*FW, dw's and db's N*OH*OW
    lengths = (w[0].size, w.shape[0] // kw["groups"] * w[0, 0].size) + (int(np.prod(yshape)) // yshape[1],) * 2
    # float32 sums in another order; bf16/fp16 outputs rounded once, the order can move one rounding step
    rtol = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}.get(np.dtype(dtype), 1e-2)
    for a, r, n in zip(got, ref, lengths):
        assert a.dtype == r.dtype
        np.testing.assert_allclose(_f64(backend.asnumpy(a)), _f64(r), rtol=rtol, atol=rtol * 4 * np.sqrt(n))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", list(CASES))
def test_float32_every_shape_both_layouts_match_the_reference(backend, name, channels_last):
    _check_against_reference(backend, name, "f32", channels_last)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype_id", ["f64", "tf32", "bf16", "f16"])
@pytest.mark.parametrize("name", FEW)
def test_every_dtype_both_layouts_match_the_reference(backend, name, dtype_id, channels_last):
    _check_against_reference(backend, name, dtype_id, channels_last)


def test_need_dx_need_dw_and_dw_dtype(backend):
    x, w, b, kw = make("depthwise_x2", ml_dtypes.bfloat16, seed=7)
    y, cache = conv2d_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b), **kw)
    dy = backend.asarray(np.ones(y.shape, ml_dtypes.bfloat16))
    _, ref_dw, _ = conv2d_backward(dy, cache)
    dx, dw, db = conv2d_backward(dy, cache, need_dx=False, dw_dtype=np.float32)
    assert dx is None and dw.dtype == np.float32 and db.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(backend.asnumpy(dw), _f64(backend.asnumpy(ref_dw)).astype(np.float32))
    dx, dw, db = conv2d_backward(dy, cache, need_dw=False)
    assert dw is None and dx.shape == x.shape


def test_filters_in_channels_last_memory_without_bias(backend):
    """Filters that are not C-contiguous (amp's compute copies: OHWI memory) and no bias: the
    kernel reads the filters as they were given contiguous."""
    x, w, _, kw = make("g2_cg8")
    want, _ = conv2d_forward(x, w, None, **kw)
    wd = layout.to_channels_last(backend.asarray(w))
    assert not wd.flags.c_contiguous
    y, _ = conv2d_forward(backend.asarray(x), wd, None, **kw)
    np.testing.assert_allclose(backend.asnumpy(y), want, rtol=1e-12, atol=1e-12)


def test_empty_batch(backend):
    x, w, b, kw = make("g2_cg8")
    y, cache = conv2d_forward(backend.asarray(x[:0]), backend.asarray(w), backend.asarray(b), **kw)
    assert y.shape == (0, 6, 4, 5)
    dx, dw, db = conv2d_backward(backend.asarray(np.zeros(y.shape)), cache)
    assert dx.shape == (0, 16, 4, 5) and not backend.asnumpy(dw).any() and not backend.asnumpy(db).any()


# ---------------------------------------------------------------- the depthwise direct form
DEPTHWISE = {  # x shape, K, (FH, FW), stride, padding, dilation; one input channel per filter (groups = C)
    "small": ((3, 4, 5, 5), 4, (3, 3), 1, 1, 1),  # channels-last, both directions
    "small_x2_s2_d2": ((2, 3, 9, 8), 6, (3, 2), 2, (2, 1), (2, 1)),  # channel multiplier 2
    "mid_s1": ((2, 3, 12, 12), 3, (3, 3), 1, 1, 1),  # channels-last up to 256 pixels at stride 1
    # N, C, H, W: the direct dw, im2col's forward and (rows shorter than LONG_ROWS) full-convolution dx
    "large": ((2, 3, 17, 17), 3, (3, 3), 1, 1, 1),
    "large_x3_s2_d2": ((2, 2, 19, 18), 6, (2, 3), (1, 2), (0, 1), (1, 2)),  # a strided dx scattered here
    "wide_rows": ((2, 2, 9, 34), 2, (3, 3), 1, 1, 1),  # OW >= LONG_ROWS: the stride-1 dx scattered here
}
NEEDS = ((True, True), (False, True), (True, False))  # need_dx, need_dw


@pytest.mark.parametrize("chunk_bytes", [None, 1], ids=["chunks", "image_by_image"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(DEPTHWISE))
def test_depthwise_direct_form_is_taken_and_agrees_with_im2col(monkeypatch, name, dtype, chunk_bytes):
    """Depthwise shapes run the direct form (the forward on small images only), whose results are
    im2col's up to the order of the sums, with and without each gradient, a batch chunk at a time."""
    xs, k, filt, stride, padding, dilation = DEPTHWISE[name]
    rng = np.random.default_rng(10)
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal((k, 1) + filt).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    st, pad, dil = _hw(stride), _hw(padding), _hw(dilation)
    if chunk_bytes:
        monkeypatch.setattr(D, "CHUNK_BYTES", chunk_bytes)
    ran = []
    for fn in ("forward", "backward"):
        monkeypatch.setattr(D, fn, lambda *a, _f=getattr(D, fn), _n=fn: ran.append(_n) or _f(*a))
    with gpuconv.default_device("cpu"):
        y, cache = conv2d_forward(x, w, b, stride, padding, dilation=dilation, groups=xs[1], floor=True)
        dy = rng.standard_normal(y.shape).astype(dtype)
        got = [(y,) + conv2d_backward(dy, cache, need_dx=nx, need_dw=nw) for nx, nw in NEEDS]
    oh, ow = y.shape[2:]
    assert ran == ["forward"] * D.channels_last(oh, ow, st) + ["backward"] * 3
    want = (G._im2col_forward(x, w, b, st, pad, dil, xs[1], oh, ow),
            *G._im2col_backward(dy, x, w, st, pad, dil, xs[1], True, True), dy.sum(axis=(0, 2, 3)))
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for out, (nx, nw) in zip(got, NEEDS):
        assert (out[1] is None) == (not nx) and (out[2] is None) == (not nw)
        for a, r in zip(out, want):
            if a is not None:
                assert a.dtype == dtype and a.shape == r.shape and a.flags.c_contiguous
                np.testing.assert_allclose(a, r, rtol=rtol, atol=rtol * 10)


# ---------------------------------------------------------------- PyTorch (optional)
@pytest.mark.parametrize("name", list(CASES))
def test_equals_pytorch_in_float64(backend, name):
    torch = pytest.importorskip("torch", reason="PyTorch is optional: this compares against it where installed")
    x, w, b, kw = make(name, seed=8)
    y, cache = conv2d_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b), **kw)
    dy = np.random.default_rng(9).standard_normal(y.shape)
    dx, dw, db = conv2d_backward(backend.asarray(dy), cache)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, _hw(kw["stride"]), kw["padding"] if kw["padding"] == "same"
                                    else _hw(kw["padding"]), _hw(kw["dilation"]), kw["groups"])
    yt.backward(torch.from_numpy(dy))
    for ours, theirs in ((y, yt), (dx, xt.grad), (dw, wt.grad), (db, bt.grad)):
        np.testing.assert_allclose(backend.asnumpy(ours), theirs.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_layer_loads_a_pytorch_grouped_conv2d_state_dict():
    torch = pytest.importorskip("torch", reason="PyTorch is optional: this compares against it where installed")
    torch.manual_seed(0)
    theirs = torch.nn.Conv2d(8, 16, 3, 2, 1, dilation=2, groups=4).double()
    ours = Conv2d(8, 16, 3, 2, 1, dilation=2, groups=4, floor=True).astype(np.float64)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = np.random.default_rng(10).standard_normal((2, 8, 9, 9))
    np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-12, atol=1e-12)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("xs, ws, kw, says", [
    ((1, 6, 4, 4), (4, 2, 3, 3), dict(groups=4), r"groups=4 must divide the input channels: x has C=6"),
    ((1, 8, 4, 4), (6, 2, 3, 3), dict(groups=4), r"groups=4 must divide the output channels: w has K=6"),
    ((1, 8, 4, 4), (8, 4, 3, 3), dict(groups=4), r"each filter sees C/groups = 2 .* w must be \(K, 2, FH, FW\)"),
    ((1, 8, 4, 4), (8, 8, 3, 3), dict(groups=4), r"w must be \(K, 2, FH, FW\)"),
    ((1, 8, 4, 4), (8, 8, 3, 3), dict(dilation=0), r"dilation must be >= 1"),
    ((1, 8, 4, 4), (8, 8, 3, 3), dict(dilation=(1, -2)), r"dilation must be >= 1"),
    ((1, 8, 4, 4), (8, 8, 3, 3), dict(groups=0), r"groups must be >= 1"),
    ((1, 8, 4, 4), (8, 8, 3, 3), dict(dilation=3), r"along the height: input size H=4.*F=7.*at dilation=\(3, 3\), "
                                                   r"F is the extent D\*\(F - 1\) \+ 1 of the 3x3 filter: 7x7"),
])
def test_clear_errors(xs, ws, kw, says):
    with pytest.raises(ValueError, match=says):
        conv2d_forward(np.ones(xs), np.ones(ws), **kw)


def test_type_errors():
    x, w = np.ones((1, 4, 4, 4)), np.ones((4, 1, 3, 3))
    for kw, says in ((dict(groups=True), "groups must be an int"), (dict(groups=2.0), "groups must be an int"),
                     (dict(dilation=1.5), "dilation must be an int or an")):
        with pytest.raises(TypeError, match=says):
            conv2d_forward(x, w, **kw)


def test_same_padding_with_a_stride_names_the_filter_and_its_dilation():
    """padding='same' at a stride is refused (as by PyTorch) naming the filter as given, its
    dilation, and the number that pads as 'same' would: (e - 1) // 2 of the extent e."""
    says = (r"got kernel_size=\(3, 3\), stride=\(2, 2\), dilation=\(2, 2\): give the padding as a number, "
            r"e.g. padding=2 \(\(e - 1\) // 2 of the extent e = d\*\(k - 1\) \+ 1")
    with pytest.raises(ValueError, match=says):
        conv2d_forward(np.ones((1, 4, 8, 8)), np.ones((4, 2, 3, 3)), stride=2, padding="same", dilation=2, groups=2)
    with pytest.raises(ValueError, match=says):
        Conv2d(4, 4, 3, stride=2, padding="same", dilation=2)
    with pytest.raises(ValueError, match=r"kernel_size=\(3, 3\), stride=\(2, 1\): give .* padding=1 \(\(k - 1\)"):
        Conv2d(4, 4, 3, stride=(2, 1), padding="same")


def test_layer_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"groups=3 must divide in_channels=8"):
        Conv2d(8, 6, 3, groups=3)
    with pytest.raises(ValueError, match=r"groups=4 must divide out_channels=6"):
        Conv2d(8, 6, 3, groups=4)
    with pytest.raises(ValueError, match=r"dilation\[1\] must be >= 1"):
        Conv2d(8, 8, 3, dilation=(1, 0))


# ---------------------------------------------------------------- the layer
def test_layer_shapes_init_repr_and_summary():
    conv = Conv2d(32, 64, 3, 1, 1, groups=32, bias=True, seed=0)
    assert conv.weight.data.shape == (64, 1, 3, 3) and (conv.groups, conv.dilation) == (32, (1, 1))
    bound = 1 / np.sqrt(1 * 3 * 3)  # kaiming_uniform(a=sqrt(5)) with fan_in = C/groups*FH*FW
    assert np.abs(conv.weight.data).max() <= bound and np.abs(conv.weight.data).max() > 0.8 * bound
    assert repr(conv) == "Conv2d(32, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=32, bias=True)"
    assert "dilation=(2, 2)" in repr(Conv2d(4, 4, 3, dilation=2))
    assert Conv2d(4, 4, 3, padding="same", dilation=2).padding == (2, 2)  # the extent 5's (5 - 1) // 2
    assert Conv2d(4, 4, 2, padding="same", dilation=3).padding == "same"  # extent 4: one more zero after
    flops = 64 * 6 * 6 * (2 * 1 * 3 * 3 + 1)
    assert f"{flops:,}" in Sequential(conv).summary((32, 6, 6))


def test_conv_geometry_cannot_change_while_a_captured_step_holds_the_layer():
    """stride, padding, dilation and groups reach the kernels by value: a CUDA graph's replay keeps
    the captured ones, so a change while a StepGraph holds the layer is refused (the simulator's
    step would take it); released, the layer takes it."""
    from gpuconv import amp
    from gpuconv.graphs import StepGraph
    from gpuconv.layers import Flatten, Linear
    from gpuconv.optim import SGD
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((2, 4, 5, 5)).astype(np.float32), rng.integers(0, 3, 2)
    with gpuconv.default_device("sim"):
        conv = Conv2d(4, 4, 3, padding=2, dilation=2, groups=2, seed=0)
        model = Sequential(conv, Flatten(), Linear(4 * 5 * 5, 3, seed=1))
        opt = SGD(model.parameters(), lr=0.1)
        step = StepGraph.for_optimizer(lambda a, b: amp.training_step(model, opt, a, b), opt, model)
        step(x, y)
        for name, value in (("stride", (2, 2)), ("padding", (1, 1)), ("dilation", (1, 1)), ("groups", 1)):
            with pytest.raises(RuntimeError, match=f"Conv2d: {name} cannot change while a captured training step"):
                setattr(conv, name, value)
        conv.dilation = (2, 2)  # the value it has: no change
        step.release()
        conv.padding, conv.dilation = (1, 1), (1, 1)
        assert conv(x).shape == (2, 4, 5, 5)


def test_layer_float64_gradients_and_channels_last(backend):
    conv = Conv2d(4, 6, 3, 1, "same", dilation=2, groups=2, seed=1).to(backend.device).astype(np.float64)
    x = np.random.default_rng(11).standard_normal((2, 4, 5, 5))
    y = conv(backend.asarray(x))
    dy = np.random.default_rng(12).standard_normal(y.shape)
    dx = backend.asnumpy(conv.backward(backend.asarray(dy)))
    ref = _reference(x, backend.asnumpy(conv.weight.data), backend.asnumpy(conv.bias.data),
                     dict(stride=1, padding="same", dilation=2, groups=2), dy)
    np.testing.assert_allclose(backend.asnumpy(y), ref[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, ref[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backend.asnumpy(conv.weight.grad), ref[2], rtol=1e-12, atol=1e-12)
    yl = conv(layout.to_channels_last(backend.asarray(x)))
    assert layout.is_channels_last(yl)
    np.testing.assert_allclose(backend.asnumpy(yl), ref[0], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the kernels (kernels/conv2d_grouped.cu)
def test_grouped_convolutions_launch_their_kernels_and_plain_ones_do_not(launches):
    """groups/dilation run conv2d_grouped.cu (the bias gradient and the splits' sum are conv2d.cu's);
    groups == 1 and dilation == 1 launch exactly conv2d.cu's kernels, as before."""
    from gpuconv.ops import _launch_conv2d_grouped as LG
    x, w, b, kw = make("dilated_g2_s2", np.float32)
    with gpuconv.default_device("sim"):
        y, cache = conv2d_forward(x, w, b, **kw)
        conv2d_backward(np.ones(y.shape, np.float32), cache)
        assert launches.names == ["conv2d_grouped_forward", "conv2d_grouped_backward_data",
                                  "conv2d_grouped_backward_weight", "conv2d_backward_bias"]
        assert all(r[2] == (LG.BLOCK, 1, 1) == (kernels.BLOCK, 1, 1) for r in launches)  # GPUCONV_BLOCK threads
        launches.clear()
        y, cache = conv2d_forward(x, np.ones((4, 4, 3, 3), np.float32), b, padding=1)
        conv2d_backward(np.ones(y.shape, np.float32), cache)
        assert not any("grouped" in n for n in launches.names) and launches.names[0].startswith("conv2d_forward_")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["f32", "bf16"])
def test_kernels_agree_in_both_fiber_orders_with_several_splits(monkeypatch, launches, dtype, channels_last):
    """Reversed thread order gives the same bits (no thread reads what another writes), the weight
    gradient in several splits added up in order by conv2d_reduce_splits, and equal to the reference."""
    from gpuconv.ops import _launch_conv2d_grouped as LG
    monkeypatch.setattr(LG, "MIN_SPLIT_CHUNK", 4)
    x, w, b, kw = make("dilated_g2_s2", dtype, seed=13)
    if channels_last:
        x = layout.to_channels_last(x)
    dy = np.random.default_rng(14).standard_normal(direct(x, w, None, **kw).shape).astype(dtype)
    outs = []
    for order in ("forward", "reverse"):
        launches.clear()
        with kernels.sim_schedule(order), gpuconv.default_device("sim"):
            y, cache = conv2d_forward(x, w, b, **kw)
            outs.append((y,) + conv2d_backward(dy, cache))
        assert "conv2d_reduce_splits" in launches.names
    weight = [r for r in launches if r[0] == "conv2d_grouped_backward_weight"][0]
    assert weight[1][0] * weight[2][0] >= 2 * w.size  # several splits' threads
    for a, r in zip(*outs):
        np.testing.assert_array_equal(a, r)
    ref = _reference(x, w, b, kw, dy)
    rtol = 1e-5 if dtype == np.float32 else 1e-2
    for a, r in zip(outs[0], ref):
        np.testing.assert_allclose(_f64(a), _f64(r), rtol=rtol, atol=rtol * 10)


def test_weight_splits_fill_the_gpu_and_cover_every_position():
    """The weight gradient's first pass: about a full GPU of threads (count x splits), each split at
    least MIN_SPLIT_CHUNK positions (one split below that), at most MAX_SPLITS_PER_SM per SM (the
    second pass adds them one after another), the splits covering N*OH*OW exactly."""
    from gpuconv.ops import _launch_conv2d_grouped as LG
    full = kernels.NOMINAL_SMS * LG.THREADS_PER_SM
    most = LG.MAX_SPLITS_PER_SM * kernels.NOMINAL_SMS
    for count, positions in [(288, 131072), (4608, 131072), (1, 10), (100000, 64), (9, 1), (8640, 2048),
                             (9, 131072), (32 * 9, 10 ** 6)]:
        splits, chunk = LG.weight_splits(count, positions, "sim")
        assert (splits - 1) * chunk < positions <= splits * chunk
        assert splits == 1 or chunk >= LG.MIN_SPLIT_CHUNK
        assert splits <= most  # a short second pass
        assert count * splits < full + count  # not many more threads than a full GPU
        # else as many as the other limits allow
        assert count * splits > 0.95 * full or splits >= min(positions // LG.MIN_SPLIT_CHUNK, most)
