"""conv_transpose2d: a direct-loop reference on every backend and dtype, both layouts, float64
numerical gradients, the adjoint of conv2d, PyTorch's values (torch optional), errors."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuconv
from gpuconv import layout
from gpuconv.gradcheck import numerical_gradient_array, reduction_tolerance, relative_error, within_tolerance
from gpuconv.ops import conv2d_forward, conv_transpose2d_backward, conv_transpose2d_forward
from gpuconv.precision import bfloat16, float16, round_tf32, unit_roundoff

from conftest import check_linear_and_adjoint

DTYPES = [np.float64, np.float32, bfloat16, float16]


def direct(x, w, b, stride, padding, output_padding, dilation=(1, 1), groups=1):
    """The definition, in float64: every input pixel scatters its filters onto the output (input
    channel c of group g = c // (C_in/G) onto that group's C_out/G outputs, taps D apart)."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = stride, padding, output_padding, dilation
    n, cin, h, wd = x.shape
    _, cog, fh, fw = w.shape
    eh, ew = dh * (fh - 1) + 1, dw * (fw - 1) + 1  # the dilated filter's extent
    cg = cin // groups
    full = np.zeros((n, cog * groups, (h - 1) * sh + eh + oph, (wd - 1) * sw + ew + opw))
    for p, q, g in itertools.product(range(h), range(wd), range(groups)):
        full[:, g * cog:(g + 1) * cog, p * sh:p * sh + eh:dh, q * sw:q * sw + ew:dw] += np.einsum(
            "nc,cokl->nokl", x[:, g * cg:(g + 1) * cg, p, q], w[g * cg:(g + 1) * cg])
    oh, ow = (h - 1) * sh - 2 * ph + eh + oph, (wd - 1) * sw - 2 * pw + ew + opw
    y = full[:, :, ph:ph + oh, pw:pw + ow]
    return y if b is None else y + b.astype(np.float64)[None, :, None, None]


def direct_grads(x, w, dy, stride, padding, output_padding, dilation=(1, 1), groups=1):
    """dx, dw, db of the definition, in float64, from its Jacobian (the loop above is linear)."""
    x, w, dy = (a.astype(np.float64) for a in (x, w, dy))
    args = (stride, padding, output_padding, dilation, groups)
    dx = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = 1
        dx[idx] = (direct(e, w, None, *args) * dy).sum()
    dw = np.zeros_like(w)
    for idx in np.ndindex(w.shape):
        e = np.zeros_like(w)
        e[idx] = 1
        dw[idx] = (direct(x, e, None, *args) * dy).sum()
    return dx, dw, dy.sum(axis=(0, 2, 3))


def _data(rng, n, cin, cout, h, wd, k, dtype=np.float64, groups=1):
    x = rng.standard_normal((n, cin, h, wd)).astype(dtype)
    w = rng.standard_normal((cin, cout // groups) + k).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    return x, w, b


# ---------------------------------------------------------------- every backend, every dtype, both layouts
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_the_definition_in_every_dtype_and_layout(backend, dtype, channels_last):
    rng = np.random.default_rng(1)
    x, w, b = _data(rng, 2, 3, 4, 3, 3, (3, 2), dtype)
    args = ((2, 2), (1, 0), (1, 1))  # stride, padding, output_padding
    dy = rng.standard_normal((2, 4, 6, 7)).astype(dtype)  # OH = 2 * 2 - 2 + 3 + 1, OW = 2 * 2 + 2 + 1
    xd, dyd = backend.asarray(x), backend.asarray(dy)
    if channels_last:
        xd, dyd = layout.to_channels_last(xd), layout.to_channels_last(dyd)
    y, cache = conv_transpose2d_forward(xd, backend.asarray(w), backend.asarray(b), *args)
    dx, dw, db = conv_transpose2d_backward(dyd, cache)
    assert y.shape == dy.shape and y.dtype == dx.dtype == dw.dtype == db.dtype == np.dtype(dtype)
    assert layout.is_channels_last(y) == channels_last and layout.is_channels_last(dx) == channels_last
    backend.assert_kernels_ran("conv2d_backward_data", "conv2d_forward", "conv2d_backward_weight",
                               "conv2d_backward_bias")
    # exact values of the rounded inputs, and each output's sum of term magnitudes
    got = [backend.asnumpy(a) for a in (y, dx, dw, db)]
    want = [direct(x, w, b, *args), *direct_grads(x, w, dy, *args)]
    mags = [direct(abs(x), abs(w), abs(b), *args), *direct_grads(abs(x), abs(w), abs(dy), *args)]
    lengths = (3 * 3 * 2 + 1, 4 * 3 * 2, 2 * 3 * 3, 2 * 6 * 7)  # generous: taps per output at most
    for name, g, e, m, length in zip(("y", "dx", "dw", "db"), got, want, mags, lengths):
        tol = reduction_tolerance(m, e, length, dtype, reference_rounded=False)
        if name == "y" and np.dtype(dtype) in (bfloat16, float16):  # the rule rounds the sum, then adds the bias
            tol = tol + unit_roundoff(dtype) * m
        ok, worst = within_tolerance(g, e, tol)
        assert ok, f"{name}: {worst:.3g} x the tolerance"


# groups and dilation: (C_in, C_out, k, stride, padding, output_padding, dilation, groups)
GROUPED = {
    "groups2": (4, 6, (3, 2), (2, 1), (1, 0), (1, 0), (1, 1), 2),
    "depthwise": (4, 4, (3, 3), (2, 2), (1, 1), (1, 0), (1, 1), 4),
    "dilation2": (3, 2, (3, 2), (1, 2), (1, 1), (1, 1), (2, 2), 1),  # output_padding >= stride, < dilation
    "dilated_depthwise": (2, 4, (2, 2), (1, 1), (0, 1), (0, 1), (2, 3), 2),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32, bfloat16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", ["groups2", "depthwise", "dilation2"])
def test_groups_and_dilation_match_the_definition_in_every_dtype_and_layout(backend, dtype, channels_last, case):
    """On the grouped/dilated convolution's reference and kernels (conv2d_grouped.cu on 'sim')."""
    cin, cout, k, *args, groups = GROUPED[case]
    args = tuple(args)  # stride, padding, output_padding, dilation
    rng = np.random.default_rng(11)
    x, w, b = _data(rng, 2, cin, cout, 3, 3, k, dtype, groups)
    want_y = direct(x, w, b, *args, groups)
    dy = rng.standard_normal(want_y.shape).astype(dtype)
    xd, dyd = backend.asarray(x), backend.asarray(dy)
    if channels_last:
        xd, dyd = layout.to_channels_last(xd), layout.to_channels_last(dyd)
    y, cache = conv_transpose2d_forward(xd, backend.asarray(w), backend.asarray(b), *args[:3], dilation=args[3],
                                        groups=groups)
    dx, dw, db = conv_transpose2d_backward(dyd, cache)
    assert y.shape == dy.shape and dw.shape == w.shape and y.dtype == dx.dtype == dw.dtype == db.dtype == dtype
    assert layout.is_channels_last(y) == channels_last and layout.is_channels_last(dx) == channels_last
    backend.assert_kernels_ran("conv2d_grouped_backward_data", "conv2d_grouped_forward",
                               "conv2d_grouped_backward_weight", "conv2d_backward_bias")
    got = [backend.asnumpy(a) for a in (y, dx, dw, db)]
    want = [want_y, *direct_grads(x, w, dy, *args, groups)]
    mags = [direct(abs(x), abs(w), abs(b), *args, groups), *direct_grads(abs(x), abs(w), abs(dy), *args, groups)]
    lengths = (cin * k[0] * k[1] + 1, cout * k[0] * k[1], 2 * 3 * 3, dy.shape[0] * dy.shape[2] * dy.shape[3])
    for name, g, e, m, length in zip(("y", "dx", "dw", "db"), got, want, mags, lengths):
        tol = reduction_tolerance(m, e, length, dtype, reference_rounded=False)
        if name == "y" and np.dtype(dtype) == bfloat16:  # the sum rounded, then the bias added
            tol = tol + unit_roundoff(dtype) * m
        ok, worst = within_tolerance(g, e, tol)
        assert ok, f"{name}: {worst:.3g} x the tolerance"


def test_groups_and_dilation_empty_batch(backend):
    w = backend.asarray(np.ones((4, 3, 3, 3)))
    y, cache = conv_transpose2d_forward(backend.asarray(np.zeros((0, 4, 3, 3))), w, backend.asarray(np.ones(6)), 1, 1,
                                        1, groups=2, dilation=2)
    assert y.shape == (0, 6, 6, 6)
    dx, dw, db = conv_transpose2d_backward(backend.asarray(np.zeros(y.shape)), cache)
    assert dx.shape == (0, 4, 3, 3) and not backend.asnumpy(dw).any() and not backend.asnumpy(db).any()


@pytest.mark.parametrize("dtype", [bfloat16, float16])
def test_a_low_precision_bias_is_added_to_the_rounded_sum_on_every_backend(dtype):
    """The reference rounds y twice, as the kernels do: the windows' sum (the convolution's data
    gradient, rounded), then that plus the bias in float32, rounded again."""
    rng = np.random.default_rng(3)
    x, w, b = _data(rng, 2, 6, 5, 4, 4, (3, 3), dtype)
    b = (np.asarray(b, np.float32) * 100 + 0.3).astype(dtype)  # a bias whose sum with y rounds noticeably
    no_bias, _ = conv_transpose2d_forward(x, w, None, 2, 1, 1)
    y, _ = conv_transpose2d_forward(x, w, b, 2, 1, 1)
    twice = (no_bias.astype(np.float32) + b.astype(np.float32).reshape(1, -1, 1, 1)).astype(dtype)
    once = (direct(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), (2, 2), (1, 1), (1, 1))
            .astype(np.float32).astype(dtype))
    assert np.array_equal(y.view(np.uint16), twice.view(np.uint16))
    assert not np.array_equal(y.view(np.uint16), once.view(np.uint16))  # the data tells the rules apart


def test_tf32_rounds_the_multiplicands(backend):
    rng = np.random.default_rng(2)
    x, w, _ = _data(rng, 2, 3, 2, 3, 3, (3, 3), np.float32)
    y, cache = conv_transpose2d_forward(backend.asarray(x), backend.asarray(w), None, 2, 1, 1, precision="tf32")
    want = direct(round_tf32(x), round_tf32(w), None, (2, 2), (1, 1), (1, 1))
    mag = direct(abs(x), abs(w), None, (2, 2), (1, 1), (1, 1))
    assert within_tolerance(backend.asnumpy(y), want, reduction_tolerance(mag, want, 27, np.float32))[0]
    assert np.abs(backend.asnumpy(y) - direct(x, w, None, (2, 2), (1, 1), (1, 1))).max() > 1e-5  # TF32 did round


def test_dw_dtype_and_skipped_gradients(backend):
    rng = np.random.default_rng(3)
    x, w, b = _data(rng, 1, 2, 3, 2, 2, (2, 2), bfloat16)
    y, cache = conv_transpose2d_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b), 2)
    dy = backend.asarray(rng.standard_normal(y.shape).astype(bfloat16))
    dx, dw, db = conv_transpose2d_backward(dy, cache, need_dx=False, dw_dtype=np.float32)
    assert dx is None and dw.dtype == np.float32 and db.dtype == bfloat16
    _, full, _ = conv_transpose2d_backward(dy, cache)
    np.testing.assert_array_equal(backend.asnumpy(dw), backend.asnumpy(full).astype(np.float32))  # widened exactly
    dx, dw, db = conv_transpose2d_backward(dy, cache, need_dw=False)
    assert dw is None and dx.shape == x.shape


# ---------------------------------------------------------------- float64: gradients, adjoint, output_padding
@pytest.mark.parametrize("stride, padding, output_padding, k", [(1, 0, 0, 3), (2, 1, 1, 3), (2, 0, 1, 2),
                                                                 ((3, 2), (2, 1), (2, 0), (4, 3))])
def test_numerical_gradients(stride, padding, output_padding, k):
    rng = np.random.default_rng(4)
    x, w, b = _data(rng, 2, 3, 2, 3, 4, (k, k) if isinstance(k, int) else k)
    y, cache = conv_transpose2d_forward(x, w, b, stride, padding, output_padding)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv_transpose2d_backward(dy, cache)

    def f(x_, w_, b_):
        return conv_transpose2d_forward(x_, w_, b_, stride, padding, output_padding)[0]
    assert relative_error(dx, numerical_gradient_array(lambda a: f(a, w, b), x, dy)) < 1e-7
    assert relative_error(dw, numerical_gradient_array(lambda a: f(x, a, b), w, dy)) < 1e-7
    assert relative_error(db, numerical_gradient_array(lambda a: f(x, w, a), b, dy)) < 1e-7


@pytest.mark.parametrize("stride, padding, output_padding, k", [(1, 1, 0, 3), (2, 1, 1, 3), (2, 1, 0, 4),
                                                                 (3, 0, 2, 2)])
def test_adjoint_of_conv2d(stride, padding, output_padding, k):
    """<convT(x), g> = <x, conv(g)>: the same filters, conv2d's floor rule taking OH back to H."""
    rng = np.random.default_rng(5)
    x, w, _ = _data(rng, 2, 3, 4, 5, 4, (k, k))
    y, _ = conv_transpose2d_forward(x, w, None, stride, padding, output_padding)
    g = rng.standard_normal(y.shape)
    cg, _ = conv2d_forward(g, w, None, stride, padding, floor=True)
    assert cg.shape == x.shape
    np.testing.assert_allclose((y * g).sum(), (x * cg).sum(), rtol=1e-12)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(groups=st.integers(1, 3), cg=st.integers(1, 2), og=st.integers(1, 2), f=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       s=st.tuples(st.integers(1, 3), st.integers(1, 3)), p=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       d=st.tuples(st.integers(1, 2), st.integers(1, 2)), op=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       hw=st.tuples(st.integers(1, 4), st.integers(1, 4)), seed=st.integers(0, 2**16))
def test_properties_over_groups_dilations_strides_paddings(backend, groups, cg, og, f, s, p, d, op, hw, seed):
    """The output size rule, linearity in x, and the adjoint identities <convT(x), g> = <x, dX(g)> =
    <w, dW(g)> = <x, conv(g)> in float64, for any groups, dilation, stride, padding, output_padding."""
    op = tuple(min(o, max(si, di) - 1) for o, si, di in zip(op, s, d))  # < stride or < dilation
    ext = [di * (fi - 1) + 1 for fi, di in zip(f, d)]
    # grow the input until the output has at least one row and column
    h, wd = (max(n, -(-(2 * pi - e - o + 1) // si) + 1) for n, pi, e, o, si in zip(hw, p, ext, op, s))
    rng = np.random.default_rng(seed)
    x1, x2 = rng.standard_normal((2, 2, groups * cg, h, wd))
    w = rng.standard_normal((groups * cg, og, *f))
    kw = dict(stride=s, padding=p, output_padding=op, dilation=d, groups=groups)
    y1, g, lhs = check_linear_and_adjoint(backend, lambda x, w_: conv_transpose2d_forward(x, w_, **kw),
                                          conv_transpose2d_backward, x1, x2, w, rng)
    assert y1.shape == (2, groups * og) + tuple((n - 1) * si - 2 * pi + e + o
                                                for n, si, pi, e, o in zip((h, wd), s, p, ext, op))
    with gpuconv.default_device("cpu"):  # the convolution with the same filters, on the NumPy reference
        cg_, _ = conv2d_forward(g, w, None, s, p, floor=True, dilation=d, groups=groups)
    assert lhs == pytest.approx(float(np.sum(x1 * cg_[:, :, :h, :wd])), rel=1e-9, abs=1e-9)


def test_output_padding_adds_rows_and_columns_of_bias_past_every_window():
    x, w, b = _data(np.random.default_rng(6), 1, 2, 3, 3, 3, (2, 2))
    y, _ = conv_transpose2d_forward(x, w, b, stride=2, padding=0, output_padding=1)
    assert y.shape == (1, 3, 7, 7)  # (3 - 1) * 2 + 2 + 1
    y0, _ = conv_transpose2d_forward(x, w, b, stride=2)
    np.testing.assert_allclose(y[:, :, :6, :6], y0, rtol=1e-14)
    np.testing.assert_array_equal(y[0, :, 6, :], np.repeat(b[:, None], 7, 1))  # no window reaches it
    np.testing.assert_array_equal(y[0, :, :, 6], np.repeat(b[:, None], 7, 1))


@pytest.mark.parametrize("case", sorted(GROUPED))
def test_groups_and_dilation_numerical_gradients(case):
    cin, cout, k, stride, padding, output_padding, dilation, groups = GROUPED[case]
    rng = np.random.default_rng(12)
    x, w, b = _data(rng, 2, cin, cout, 3, 4, k, groups=groups)

    def f(x_, w_, b_):
        return conv_transpose2d_forward(x_, w_, b_, stride, padding, output_padding, groups=groups,
                                        dilation=dilation)
    y, cache = f(x, w, b)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv_transpose2d_backward(dy, cache)
    assert relative_error(dx, numerical_gradient_array(lambda a: f(a, w, b)[0], x, dy)) < 1e-7
    assert relative_error(dw, numerical_gradient_array(lambda a: f(x, a, b)[0], w, dy)) < 1e-7
    assert relative_error(db, numerical_gradient_array(lambda a: f(x, w, a)[0], b, dy)) < 1e-7


def _equals_torch(torch, rng, x, w, b, stride, padding, output_padding, groups=1, dilation=1):
    """y and dx, dw, db (for a random dy) equal F.conv_transpose2d's in float64, called in its
    positional order: ..., output_padding, groups, dilation."""
    y, cache = conv_transpose2d_forward(x, w, b, stride, padding, output_padding, groups=groups, dilation=dilation)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv_transpose2d(tx, tw, tb, stride, padding, output_padding, groups, dilation)
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    assert y.shape == tuple(ty.shape)
    for got, want in zip((y,) + conv_transpose2d_backward(dy, cache), (ty, tx.grad, tw.grad, tb.grad)):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", sorted(GROUPED) + ["dilation3_stride2"])
def test_groups_and_dilation_match_torch_float64(case):
    """F.conv_transpose2d's positional order: ..., output_padding, groups, dilation."""
    torch = pytest.importorskip("torch", reason="PyTorch (optional) is the reference of this comparison")
    cin, cout, k, stride, padding, output_padding, dilation, groups = GROUPED.get(
        case, (6, 3, (3, 3), (2, 2), (2, 1), (2, 1), (3, 3), 3))  # output_padding 2: >= stride, < dilation
    rng = np.random.default_rng(13)
    x, w, b = _data(rng, 2, cin, cout, 4, 3, k, groups=groups)
    _equals_torch(torch, rng, x, w, b, stride, padding, output_padding, groups, dilation)


@pytest.mark.parametrize("stride, padding, output_padding, k", [
    (s, p, op, k) for s, p, op, k in itertools.product((1, 2), (0, 1), (0, 1), (2, 3, 4)) if op < s])
def test_matches_torch_float64(stride, padding, output_padding, k):
    torch = pytest.importorskip("torch", reason="PyTorch (optional) is the reference of this comparison")
    rng = np.random.default_rng(7)
    x, w, b = _data(rng, 2, 3, 5, 4, 3, (k, k))
    _equals_torch(torch, rng, x, w, b, stride, padding, output_padding)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, err, match", [
    (dict(output_padding=2, stride=2), ValueError, r"output_padding=\(2, 2\) must be smaller than stride=\(2, 2\)"),
    (dict(output_padding=1), ValueError, r"output_padding=\(1, 1\) must be smaller than stride=\(1, 1\).*"
                                         r"output_padding=0 at stride 1"),
    (dict(output_padding=2, dilation=2), ValueError, r"output_padding=\(2, 2\) must be smaller than stride=\(1, 1\) "
                                                     r"or than dilation=\(2, 2\) along each axis"),
    (dict(groups=2), ValueError, r"groups=2 must divide the input channels: x has C_in=3.*groups=C_in: depthwise"),
    (dict(groups=0), ValueError, r"groups must be >= 1"),
    (dict(groups=1.0), TypeError, r"groups must be an int"),
    (dict(dilation=0), ValueError, r"dilation"),
    (dict(groups=3, b=np.ones(2)), ValueError, r"b must have shape \(6,\), one bias per output channel \(w.shape\[1\] "
                                               r"times groups=3 of w \(3, 2, 3, 3\), laid out C_in, C_out/groups"),
    (dict(padding=3, dilation=2), ValueError, r"output is empty along the height.*= 0 < 1 \(F: the dilated extent "
                                              r"D\(F - 1\) \+ 1 = 5 \(F=3, D=2\)\)"),
    (dict(padding="same"), ValueError, r"padding='same': a transposed convolution takes an int or an \(h, w\) pair"),
    (dict(padding=3), ValueError, r"output is empty along the height.*\(H - 1\)S - 2P \+ F \+ output_padding = -2 < 1"),
    (dict(w=np.ones((4, 2, 3, 3))), ValueError, r"channel mismatch: x has C_in=3.*w expects C_in=4.*C_in, C_out, FH, "
                                                r"FW as PyTorch's ConvTranspose2d weight"),
    (dict(b=np.ones(3)), ValueError, r"b must have shape \(2,\), one bias per output channel"),
    (dict(w=np.ones((3, 2, 3))), ValueError, r"w must have 4 dimensions \(C_in, C_out, FH, FW"),
    (dict(w=np.ones((3, 2, 3, 3), np.float32)), TypeError, r"w has dtype float32 but x has dtype float64"),
    (dict(x=np.ones((1, 3, 0, 2))), ValueError, r"x has an empty image: shape \(1, 3, 0, 2\) \(N, C_in, H, W\) "
                                                r"has H=0, W=2; .* at least 1x1 \(an empty batch, N=0, is fine\)"),
    (dict(x=np.ones((1, 3, 2, 0)), stride=2), ValueError, r"x has an empty image: .* has H=2, W=0"),
    (dict(stride=2**30, output_padding=2**30 - 1), ValueError, r"the output would be 2147483650 along the height, "
                                                               r"past 2\*\*31 - 1"),
])
def test_errors_name_the_problem(kwargs, err, match):
    args = dict(x=np.ones((1, 3, 2, 2)), w=np.ones((3, 2, 3, 3)), b=None)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        conv_transpose2d_forward(**args)


def test_precision_in_torchs_groups_position_is_refused():
    with pytest.raises(TypeError, match=r"a number where F.conv_transpose2d takes groups.*groups=1"):
        conv_transpose2d_forward(np.ones((1, 3, 2, 2)), np.ones((3, 2, 3, 3)), None, 1, 0, 0, 1)


def test_backward_checks_dy_and_cache():
    y, cache = conv_transpose2d_forward(np.ones((1, 3, 2, 2)), np.ones((3, 2, 3, 3)), None, 2, 0, 1)
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(1, 2, 6, 6\), got \(1, 2, 5, 5\)"):
        conv_transpose2d_backward(np.ones((1, 2, 5, 5)), cache)
    with pytest.raises(TypeError, match=r"cache must be the ConvTranspose2dCache that conv_transpose2d_forward"):
        conv_transpose2d_backward(y, conv2d_forward(np.ones((1, 3, 3, 3)), np.ones((2, 3, 3, 3)))[1])
    with pytest.raises(ValueError, match=r"dw_dtype=float16: .*never narrowed"):
        conv_transpose2d_backward(y, cache, dw_dtype=np.float16)


def test_ops_namespace_and_cache_repr():
    _, cache = conv_transpose2d_forward(np.ones((1, 3, 2, 2), np.float32), np.ones((3, 2, 3, 3), np.float32))
    assert gpuconv.ops.conv_transpose2d_forward is conv_transpose2d_forward
    assert repr(cache) == ("ConvTranspose2dCache(x=array(shape=(1, 3, 2, 2), dtype=float32), w=array(shape=(3, 2, 3, "
                           "3), dtype=float32), has_bias=False, stride=(1, 1), padding=(0, 0), output_padding=(0, 0), "
                           "dilation=(1, 1), groups=1)")


# ---------------------------------------------------------------- the layers: ConvTranspose2d, Unflatten
def test_layer_shapes_init_and_state_dict_keys_are_pytorchs():
    from gpuconv import nn
    assert nn.ConvTranspose2d is gpuconv.layers.ConvTranspose2d and nn.Unflatten is gpuconv.layers.Unflatten
    layer = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1, seed=0)
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == {"weight": (16, 8, 4, 4), "bias": (8,)}
    bound = 1 / np.sqrt(8 * 4 * 4)  # PyTorch's fan-in of this weight: dim 1 (out_channels) * kH * kW
    w, b = layer.weight.data, layer.bias.data
    assert w.dtype == b.dtype == np.float32 and np.abs(b).max() <= bound
    assert 0.9 * bound < np.abs(w).max() <= bound  # (a fan-in from dim 0, 16 * 4 * 4, would bound it by 0.0625)
    assert list(nn.ConvTranspose2d(3, 5, (2, 3), bias=False).state_dict()) == ["weight"]
    assert repr(layer) == "ConvTranspose2d(16, 8, kernel_size=(4, 4), stride=(2, 2), padding=(1, 1), bias=True)"
    y = layer(np.zeros((2, 16, 4, 4), np.float32))
    assert y.shape == (2, 8, 8, 8)  # DCGAN's doubling: (4 - 1) * 2 - 2 + 4


@pytest.mark.parametrize("kwargs, x_shape, output_size", [
    (dict(stride=2, padding=1, output_padding=1), (2, 4, 5, 5), (9, 10)),
    (dict(stride=2, padding=1, output_padding=1, groups=2, dilation=2), (2, 4, 3, 4), (8, 9)),
], ids=["plain", "grouped_dilated"])
def test_layer_matches_torch_and_loads_its_state_dict(kwargs, x_shape, output_size):
    """y, dx, dw, db of the layer given torch's state dict, and forward(x, output_size=), equal
    torch's in float64; the fan-in torch's init uses is weight dim 1 (out_channels // groups) * kH * kW."""
    torch = pytest.importorskip("torch", reason="PyTorch (optional) is the reference of this comparison")
    from gpuconv import nn
    c_out = 3 * kwargs.get("groups", 1)
    theirs = torch.nn.ConvTranspose2d(4, c_out, 3, **kwargs).double()
    assert torch.nn.init._calculate_fan_in_and_fan_out(theirs.weight)[0] == 3 * 3 * 3
    ours = nn.ConvTranspose2d(4, c_out, 3, **kwargs, dtype=np.float64)
    ours.load_state_dict(theirs.state_dict())
    x = np.random.default_rng(8).standard_normal(x_shape)
    tx = torch.tensor(x, requires_grad=True)
    ty = theirs(tx)
    y = ours(x)
    dy = np.random.default_rng(9).standard_normal(y.shape)
    ty.backward(torch.tensor(dy))
    dx = ours.backward(dy)
    pairs = ((y, ty), (dx, tx.grad), (ours.weight.grad, theirs.weight.grad), (ours.bias.grad, theirs.bias.grad))
    for got, want in pairs:
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours(x, output_size=output_size), theirs(tx, output_size=output_size).detach().numpy(),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("kwargs", [dict(stride=2, padding=1, output_padding=1),
                                    dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 1), groups=2,
                                         dilation=(1, 2), bias=False)], ids=["plain", "grouped_dilated_nobias"])
def test_layer_gradients_float64(backend, kwargs, channels_last):
    """The layer's dx, weight and bias gradients against central differences in float64 (the
    PyTorch comparison above is optional; this one always runs)."""
    from gpuconv import nn
    from test_layers import check_layer_gradients
    with gpuconv.default_device(backend.device):
        layer = nn.ConvTranspose2d(4, 2, (2, 3), **kwargs, seed=3)
    check_layer_gradients(layer, np.random.default_rng(12).standard_normal((1, 4, 2, 3)), backend,
                          channels_last=channels_last)
    kind = "conv2d_grouped_" if "groups" in kwargs else "conv2d_"
    backend.assert_kernels_ran(kind + "forward", kind + "backward_data", kind + "backward_weight")


def test_unflatten_gradients_float64(backend):
    from gpuconv import nn
    from test_layers import check_layer_gradients
    check_layer_gradients(nn.Unflatten(1, (2, 3)), np.random.default_rng(13).standard_normal((2, 6, 2)), backend)


def test_unflatten_matches_torch():
    torch = pytest.importorskip("torch", reason="PyTorch (optional) is the reference of this comparison")
    from gpuconv import nn
    np.testing.assert_array_equal(nn.Unflatten(1, (2, 3))(np.arange(12.).reshape(2, 6)),
                                  torch.nn.Unflatten(1, (2, 3))(torch.arange(12.).reshape(2, 6)).numpy())


def test_grouped_dilated_layer_init_repr_and_torchs_state_dict():
    from gpuconv import nn
    layer = nn.ConvTranspose2d(8, 6, 3, 2, 1, 1, 2, True, 2, seed=0)  # PyTorch's positions: groups, bias, dilation
    assert (layer.groups, layer.dilation) == (2, (2, 2))
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == {"weight": (8, 3, 3, 3), "bias": (6,)}
    bound = 1 / np.sqrt(3 * 3 * 3)  # PyTorch's fan-in: weight dim 1 (out_channels // groups) * kH * kW
    assert 0.9 * bound < np.abs(layer.weight.data).max() <= bound and np.abs(layer.bias.data).max() <= bound
    assert repr(layer) == ("ConvTranspose2d(8, 6, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), "
                           "output_padding=(1, 1), dilation=(2, 2), groups=2, bias=True)")
    assert layer(np.zeros((1, 8, 4, 4), np.float32)).shape == (1, 6, 10, 10)  # 3 * 2 - 2 + 2 * 2 + 1 + 1


def test_layer_output_size_and_errors():
    from gpuconv import nn
    layer = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, dtype=np.float64)
    x = np.ones((1, 2, 4, 4))
    assert layer(x, output_size=(1, 3, 8, 7)).shape == (1, 3, 8, 7)
    dx = layer.backward(np.ones((1, 3, 8, 7)))  # the cache holds that call's output_padding
    assert dx.shape == x.shape
    with pytest.raises(ValueError, match=r"output_size 9 along the height is out of reach: this layer gives 7 to 8"):
        layer(x, output_size=(9, 7))
    with pytest.raises(ValueError, match=r"output_padding must be smaller than stride=\(2, 2\)"):
        nn.ConvTranspose2d(2, 3, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match=r"ConvTranspose2d: groups=2 must divide out_channels=3"):
        nn.ConvTranspose2d(2, 3, 3, 1, 0, 0, 2)  # PyTorch's positions: groups after output_padding
    with pytest.raises(ValueError, match=r"ConvTranspose2d: groups=2 must divide in_channels=3"):
        nn.ConvTranspose2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"output_padding must be smaller than stride=\(1, 1\) or than "
                                         r"dilation=\(2, 2\)"):
        nn.ConvTranspose2d(2, 4, 3, output_padding=2, dilation=2)
    with pytest.raises(ValueError, match=r"out of reach: this layer gives 8 to 8 from an input of 4 \(stride 1, "
                                         r"padding 0, kernel 3, dilation 2\)"):
        nn.ConvTranspose2d(2, 4, 3, dilation=2)(x, output_size=(9, 8))
    with pytest.raises(ValueError, match=r"padding='same'\): an int or an \(h, w\) pair"):
        nn.ConvTranspose2d(2, 4, 3, padding="same")


def test_layer_output_size_takes_numpy_integers_and_refuses_other_lengths_as_torch():
    """PyTorch takes any integers (a size computed with NumPy, np.int64) and answers a length other
    than 2 or 4 with a ValueError."""
    from gpuconv import nn
    layer = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, dtype=np.float64)
    x = np.ones((1, 2, 4, 4))
    assert layer(x, output_size=tuple(np.array([8, 7]))).shape == (1, 3, 8, 7)
    assert layer(x, output_size=list(np.array([1, 3, 7, 8]))).shape == (1, 3, 7, 8)
    for size in ((5, 7, 8), (8,)):
        with pytest.raises(ValueError, match=r"output_size must have 2 elements \(OH, OW\) or 4 \(N, C, OH, OW\), got "
                                              f"{len(size)}"):
            layer(x, output_size=size)
    with pytest.raises(TypeError, match=r"output_size must hold ints.*got \(8.0, 7\); a float, as / gives"):
        layer(x, output_size=(8.0, 7))
    with pytest.raises(TypeError, match=r"output_size must be \(OH, OW\) or \(N, C, OH, OW\), got 8"):
        layer(x, output_size=8)


def test_unflatten():
    from gpuconv import nn
    u = nn.Unflatten(1, (4, -1, 2))
    x = np.arange(48.0).reshape(2, 24)
    y = u(x)
    assert y.shape == (2, 4, 3, 2) and np.shares_memory(x, y)
    assert repr(u) == "Unflatten(dim=1, unflattened_size=(4, -1, 2))"
    np.testing.assert_array_equal(u.backward(y), x)
    assert nn.Unflatten(-1, (3, 2))(np.ones((2, 5, 6))).shape == (2, 5, 3, 2)
    with pytest.raises(ValueError, match=r"axis 1 of x \(shape \(2, 10\)\) has 10 values, which unflattened_size"):
        u(np.ones((2, 10)))
    with pytest.raises(ValueError, match=r"unflattened_size must be a tuple of sizes >= 1"):
        nn.Unflatten(1, (-1, -1))
    u(x)
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(2, 4, 3, 2\)"):
        u.backward(np.ones((2, 24)))


def test_a_dcgan_generator_trains_on_numpy():
    """Linear -> Unflatten -> ConvTranspose2d -> BatchNorm2d -> ReLU -> ConvTranspose2d -> Tanh, as a
    DCGAN generator: a few steps fitting fixed 16x16 images lower the loss, and a float64 twin's
    gradients match numerical ones."""
    from gpuconv import nn, optim

    def generator(dtype=np.float32):
        return nn.Sequential(nn.Linear(8, 16 * 4 * 4, seed=0), nn.Unflatten(1, (16, 4, 4)),
                             nn.ConvTranspose2d(16, 8, 4, 2, 1, bias=False, seed=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.ConvTranspose2d(8, 3, 4, 2, 1, seed=2), nn.Tanh()).astype(dtype)

    rng = np.random.default_rng(10)
    z = rng.standard_normal((6, 8)).astype(np.float32)
    target = np.tanh(rng.standard_normal((6, 3, 16, 16))).astype(np.float32)
    net = generator()
    opt = optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        y = net(z)
        assert y.shape == (6, 3, 16, 16)
        losses.append(float(((y - target) ** 2).mean()))
        opt.zero_grad()
        net.backward(2 * (y - target) / y.size)
        opt.step()
    assert losses[-1] < 0.9 * losses[0], losses
    net64 = generator(np.float64)
    z64, t64 = z.astype(np.float64), target.astype(np.float64)
    y = net64(z64)
    net64.backward(2 * (y - t64) / y.size)
    w = net64[2].weight
    num = numerical_gradient_array(lambda a: float(((net64(z64) - t64) ** 2).mean()), w.data)
    assert np.linalg.norm(w.grad - num) < 1e-6 * np.linalg.norm(num)


def test_mixed_precision_casts_the_layer_and_its_forward_reads_the_packed_filters(monkeypatch):
    """Under bf16 autocast on 'sim' the forward (a convolution's data gradient) takes the filters as
    the cast packed them for the data gradient, with the bits of the op on the cast weights, and
    the weight gradient lands in the float32 master's dtype."""
    from gpuconv import amp, nn
    from gpuconv.ops import _launch_conv2d_tc as TC
    repacks = []
    real = TC._repacked
    monkeypatch.setattr(TC, "_repacked", lambda w, axes, *a: repacks.append(axes) or real(w, axes, *a))
    rng = np.random.default_rng(11)
    x = layout.to_channels_last(rng.standard_normal((2, 6, 3, 3)).astype(bfloat16))
    with gpuconv.default_device("sim"):
        layer = nn.ConvTranspose2d(6, 5, 4, 2, 1, seed=1)
        with amp.autocast(layer, "bf16") as dt:
            assert dt == bfloat16 and layer.weight.compute is not None
            y = layer(x)
            dy = rng.standard_normal(y.shape).astype(bfloat16)
            dx = layer.backward(dy)
        assert (1, 2, 3, 0) not in repacks  # the forward's data gradient read the cast's packing
        want, cache = conv_transpose2d_forward(x, layer.weight.data.astype(bfloat16), layer.bias.data.astype(bfloat16),
                                               2, 1)
        want_dx, want_dw, _ = conv_transpose2d_backward(dy, cache)
    assert y.dtype == bfloat16 and layout.is_channels_last(y)
    assert y.tobytes() == np.ascontiguousarray(want).tobytes() and dx.tobytes() == want_dx.tobytes()
    assert layer.weight.grad.dtype == np.float32
    np.testing.assert_array_equal(layer.weight.grad, want_dw.astype(np.float32))


def test_mixed_precision_grouped_dilated_layer_on_the_grouped_kernels():
    """Under bf16 autocast on 'sim' the grouped/dilated layer takes the cast filters (OHWI memory)
    on the grouped convolution's kernels, with the bits of the op on the cast weights."""
    from gpuconv import amp, nn
    rng = np.random.default_rng(16)
    x = rng.standard_normal((2, 4, 3, 3)).astype(bfloat16)
    with gpuconv.default_device("sim"):
        layer = nn.ConvTranspose2d(4, 6, 3, 1, 1, 1, 2, False, 2, seed=1)  # output_padding 1 at stride 1
        with amp.autocast(layer, "bf16"):
            assert not layer.weight.compute.flags.c_contiguous
            y = layer(x)
            dy = rng.standard_normal(y.shape).astype(bfloat16)
            dx = layer.backward(dy)
        want, cache = conv_transpose2d_forward(x, layer.weight.data.astype(bfloat16), None, 1, 1, 1, groups=2,
                                               dilation=2)
        want_dx, want_dw, _ = conv_transpose2d_backward(dy, cache)
    assert y.dtype == bfloat16 and y.shape == (2, 6, 6, 6)
    assert y.tobytes() == want.tobytes() and dx.tobytes() == want_dx.tobytes()
    np.testing.assert_array_equal(layer.weight.grad, want_dw.astype(np.float32))


def test_autocast_for_evaluation_packs_the_filters_the_forward_reads(monkeypatch):
    """autocast(backward=False) (evaluation, inference) skips the data gradient's packing of a
    Conv2d's filters, which only its backward reads; a ConvTranspose2d's forward is that data
    gradient, so its filters are packed all the same and no forward repacks them."""
    from gpuconv import amp, nn
    from gpuconv.ops import _launch_conv2d_tc as TC
    repacks = []
    real = TC._repacked
    monkeypatch.setattr(TC, "_repacked", lambda w, axes, *a: repacks.append(axes) or real(w, axes, *a))
    x = np.random.default_rng(12).standard_normal((2, 6, 3, 3)).astype(bfloat16)
    with gpuconv.default_device("sim"):
        net = nn.Sequential(nn.ConvTranspose2d(6, 5, 4, 2, 1, seed=1), nn.Conv2d(5, 4, 3, seed=2)).eval()
        with amp.autocast(net, "bf16", backward=False):
            y = net(x)
            assert TC._packed(net[1].weight.compute, (5, 3, 3, TC.padded_channels(4, bfloat16)), bfloat16) is None
        with amp.autocast(net, "bf16"):
            want = net(x)
    assert (1, 2, 3, 0) not in repacks  # the transposed convolution's forward read the cast's packing
    assert y.tobytes() == want.tobytes()


def test_summary_counts_a_transposed_convolution_as_the_convolution_it_is_the_gradient_of():
    from gpuconv import nn
    net = nn.Sequential(nn.Linear(8, 256, seed=0), nn.Unflatten(1, (16, 4, 4)),
                        nn.ConvTranspose2d(16, 8, 4, 2, 1, bias=False, seed=1), nn.ReLU(),
                        nn.ConvTranspose2d(8, 3, 4, 2, 1, seed=2))
    rows = [line.split() for line in net.summary((8,)).splitlines()[2:7]]
    assert rows[1][1:3] == ["Unflatten", "16x4x4"]
    assert rows[2][1:] == ["ConvTranspose2d", "8x8x8", "2,048", f"{16 * 4 * 4 * 2 * 8 * 4 * 4:,}"]
    assert rows[4][1:] == ["ConvTranspose2d", "3x16x16", "387", f"{8 * 8 * 8 * 2 * 3 * 4 * 4 + 3 * 16 * 16:,}"]


def test_summary_divides_a_grouped_transposed_convolution_as_the_convolution():
    from gpuconv import nn
    net = nn.Sequential(nn.ConvTranspose2d(8, 4, 3, groups=4, dilation=2, seed=0))
    row = net.summary((8, 5, 5)).splitlines()[2].split()
    assert row[1:] == ["ConvTranspose2d", "4x9x9", "76", f"{8 * 5 * 5 * 2 * (4 // 4) * 3 * 3 + 4 * 9 * 9:,}"]


def test_geometry_cannot_change_while_a_captured_step_holds_the_layer():
    """stride, padding, output_padding, dilation and groups reach the kernels by value, as Conv2d's:
    a change while a StepGraph holds the layer is refused; released, the layer takes it."""
    from gpuconv import amp
    from gpuconv.graphs import StepGraph
    from gpuconv.layers import ConvTranspose2d, Flatten, Linear, Sequential
    from gpuconv.optim import SGD
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((2, 4, 3, 3)).astype(np.float32), rng.integers(0, 3, 2)
    with gpuconv.default_device("sim"):
        conv = ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1, groups=2, seed=0)
        model = Sequential(conv, Flatten(), Linear(4 * 6 * 6, 3, seed=1))
        opt = SGD(model.parameters(), lr=0.1)
        step = StepGraph.for_optimizer(lambda a, b: amp.training_step(model, opt, a, b), opt, model)
        step(x, y)
        for name, value in (("stride", (1, 1)), ("padding", (0, 0)), ("output_padding", (0, 0)),
                            ("dilation", (2, 2)), ("groups", 1)):
            with pytest.raises(RuntimeError,
                               match=f"ConvTranspose2d: {name} cannot change while a captured training step"):
                setattr(conv, name, value)
        step.release()
        conv.output_padding = (0, 0)
        assert conv(x).shape == (2, 4, 5, 5)
