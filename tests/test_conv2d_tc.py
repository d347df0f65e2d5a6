"""The tensor-core convolutions (kernels/conv2d_tc.cu through gpuconv/ops/_launch_conv2d_tc.py):
forward, data gradient and weight gradient in bfloat16, float16 and TF32, on the simulator and,
when one is present, a GPU.

Each result is held to the exact float64 convolution of the operands as the tensor cores take
them (bfloat16/float16 widened, float32 rounded to TF32) within gpuconv.gradcheck's bound for the
reduction length, never a tuned tolerance, and exactly where every partial sum is exact (small
integers). Shapes reach the tiles' edges (M and N cut at 64, reductions over several pipeline
rounds and a partial one), strides and paddings, 1x1 and 3x3 and rectangular filters, channel
counts that are not multiples of the 16-byte piece (3, 5, 12 channels, padded by the launcher),
several weight-gradient splits, NCHW and channels_last inputs (whose layout the outputs keep).
"""
from __future__ import annotations

import contextlib
import contextvars
import shutil

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpuconv
from gpuconv import hostsim, kernels, layout
from gpuconv.gradcheck import reduction_tolerance, within_tolerance
from gpuconv.ops import _launch_conv2d as LC
from gpuconv.ops import _launch_conv2d_tc as TC
from gpuconv.ops import conv2d as conv_mod
from gpuconv.precision import multiplicands, round_tf32
from test_gemm_tc import GPU_FACTOR, host, on, target  # noqa: F401  (target: the sim/cuda fixture)

from conftest import skip_without_tensor_cores

BF16 = np.dtype(ml_dtypes.bfloat16)
# (dtype, tf32)
BUILDS = {"bf16": (BF16, False), "f16": (np.dtype(np.float16), False), "tf32": (np.dtype(np.float32), True)}
# (x shape, (K, FH, FW), stride, padding)
CASES = [((2, 16, 6, 6), (24, 3, 3), (1, 1), (1, 1)),     # the common 3x3 same-size layer
         ((1, 3, 7, 5), (10, 3, 3), (2, 2), (1, 1)),      # 3 input channels (padded), stride 2
         ((2, 8, 5, 5), (70, 1, 1), (1, 1), (0, 0)),      # 1x1, K past one 64-column tile
         ((3, 12, 6, 7), (9, 2, 3), (2, 1), (0, 2)),      # rectangular filter, padding wider than it
         ((1, 40, 9, 9), (5, 3, 3), (1, 1), (1, 1)),      # M = 81 (two row tiles), C*9 = 360 (6 k-tiles)
         ((2, 5, 6, 6), (3, 2, 2), (3, 3), (1, 1)),       # stride larger than the filter: zero rows in dx
         ((2, 16, 9, 9), (130, 3, 3), (1, 1), (1, 1)),    # M = 162, K = 130, C*9 = 144: 128-tile edges
         ((2, 16, 12, 12), (200, 3, 3), (1, 1), (1, 1))]  # M = 288, K = 200: every 64-row block of a
                                                           # 256-row tile (tcwgn64) in every direction
IDS = ["3x3", "c3s2", "1x1k70", "2x3s21p02", "c40m81", "s3p2", "m162k130", "m288k200"]


# every tensor-core variant; the wgmma tiles run as tc128 or tc where wgmma does not (a GPU before
# Hopper)
VARIANTS = list(kernels.TC_VARIANTS)

def operands(case, dtype, rng, integers=False, bound=3):
    xs, (k, fh, fw), _, _ = case
    draw = (lambda s: rng.integers(-bound, bound + 1, s)) if integers else rng.standard_normal
    return (draw(xs).astype(dtype), draw((k, xs[1], fh, fw)).astype(dtype), draw((k,)).astype(dtype))


def exact(x, w, b, dy, stride, pad, tf32):
    """float64 (y, dx, dw) of the operands as the tensor cores see them, and the sums of the
    terms' magnitudes (what the bound scales with)."""
    xm, wm, dym = (np.asarray(a, np.float64) for a in multiplicands(tf32, x, w, dy))
    bm = np.asarray(b, np.float64)
    out = []
    for sign in (lambda a: a, np.abs):
        y, cache = conv_mod._conv2d_forward_reference(sign(xm), sign(wm), sign(bm), stride, pad)
        dx, dw, _ = conv_mod._conv2d_backward_reference(sign(dym), cache)
        out.append((y, dx, dw))
    return out


def run_conv(target, x, w, b, dy, stride, pad, tf32, channels_last=False, variant="tc"):
    X, W, Bb, DY = on(target, x, w, b, dy)
    if channels_last:
        X, DY = gpuconv.to_channels_last(X), gpuconv.to_channels_last(DY)
    families = {f: variant for f in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")}
    with kernels.launch_log() as log, kernels.use_variant(**families), kernels.use_variant("tf32", **families):
        y, cache = LC.conv2d_forward_kernel(X, W, Bb, stride, pad, tf32, target=target)
        dx, dw, db = LC.conv2d_backward_kernel(DY, cache, True, tf32, target=target)
    return (y, dx, dw), log


def conv_launches(log):
    """The launch log's records but the layout conversions (a GPU's NCHW operands and outputs go
    through kernels/layout.cu: tests/test_layout.py)."""
    return [r for r in log if r.name != "layout_transpose"]


def converts_operands(target, channels_last):
    """Whether the launcher converts NCHW operands with kernels/layout.cu (a GPU; the simulator's
    NumPy arrays are copied by NumPy), rounding a TF32 operand in that pass."""
    return target == "cuda" and not channels_last


def assert_bound(name, got, want, mag, length, dtype, factor):
    tol = factor * reduction_tolerance(mag, want, length, dtype, reference_rounded=False)
    ok, worst = within_tolerance(host(got).astype(np.float64), want, tol)
    assert ok, f"{name}: error {worst:.3g} x the derived bound"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("build", list(BUILDS))
def test_tensor_core_conv_within_the_derived_bound(target, build, case, channels_last, variant, monkeypatch):
    monkeypatch.setattr(LC, "MIN_SPLIT_CHUNK", 32)  # several weight-gradient splits at these sizes
    dtype, tf32 = BUILDS[build]
    skip_without_tensor_cores(target, dtype, tf32)
    rng = np.random.default_rng([list(BUILDS).index(build), CASES.index(case)])
    x, w, b = operands(case, dtype, rng)
    _, (k, fh, fw), stride, pad = case
    oh, ow = conv_mod.output_hw(x.shape, (fh, fw), stride, pad)
    dy = rng.standard_normal((x.shape[0], k, oh, ow)).astype(dtype)
    (y, dx, dw), log = run_conv(target, x, w, b, dy, stride, pad, tf32, channels_last, variant)
    variant = TC.engine(variant, dtype, tf32, target, 0)
    recs = conv_launches(log)
    # TF32: each direction's two operands rounded first, in one launch (the tiles round nothing); a
    # GPU's NCHW operands are rounded as they are converted, so the passes round the filters alone
    # and the weight gradient's has nothing left to round
    converted = converts_operands(target, channels_last)
    rounding = ["conv2d_tc_round_tf32"] if tf32 else []
    expected = rounding + [f"conv2d_forward_{variant}"] + rounding + [f"conv2d_backward_data_{variant}"] + (
        [] if converted else rounding) + [f"conv2d_backward_weight_{variant}", "conv2d_tc_weight_reduce"]
    assert [r.name for r in recs[:len(expected)]] == expected
    if tf32:
        assert [r.grid[1] for r in recs[:len(expected)] if r.name == "conv2d_tc_round_tf32"] == (
            # the weight gradient rounds x alone where dy's rounding for the data gradient serves it
            # too (dy's channels unpadded: a multiple of 4); both arrays, each its own rounding, else
            [1, 1] if converted else [2, 2, 1 if k % 4 == 0 else 2])
    forward = recs[len(rounding)]
    bm, bn, threads = TC.SHAPES[variant]
    assert forward.block == (threads, 1, 1) and forward.grid[:2] == (-(-y.shape[0] * y.shape[2] * y.shape[3] // bm),
                                                                    -(-k // bn))
    # every GEMM in the operands' build (the bias gradient, a plain sum, has no TF32 build)
    assert {r.build for r in recs if r.name != "conv2d_backward_bias"} == {"float+tf32" if tf32 else dtype.name}
    for a in (y, dx):
        assert a.dtype == dtype and layout.is_channels_last(a) == channels_last
        assert channels_last or a.flags.c_contiguous
    assert host(dw).flags.c_contiguous and dw.shape == w.shape
    (ey, edx, edw), (my, mdx, mdw) = exact(x, w, b, dy, stride, pad, tf32)
    factor = GPU_FACTOR if target == "cuda" else 1.0
    assert_bound("y", y, ey, my + np.abs(b.astype(np.float64))[None, :, None, None], x.shape[1] * fh * fw + 1,
                 dtype, factor)
    assert_bound("dx", dx, edx, mdx, k * fh * fw, dtype, factor)
    assert_bound("dw", dw, edw, mdw, x.shape[0] * oh * ow, dtype, factor)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", [((2, 16, 8, 8), (24, 3, 3), (2, 2), (1, 1)), ((2, 16, 8, 8), (24, 1, 1), (2, 2), (0, 0))],
                         ids=["3x3s2p1", "1x1s2"])
def test_tensor_core_tiles_take_pytorchs_floored_sizes(target, case, channels_last, variant):
    """``floor=True`` (8x8 -> 4x4 by a stride-2 3x3 with padding 1, a padding row and column
    unread; by a stride-2 1x1, the input's last row and column unread) on every tile, small
    integers in bf16: equal to the float64 definition bit for bit, the unread pixels' gradient 0."""
    skip_without_tensor_cores(target, BF16)
    x, w, b = operands(case, BF16, np.random.default_rng(9), integers=True)
    _, (k, fh, fw), stride, pad = case
    oh, ow = conv_mod.output_hw(x.shape, (fh, fw), stride, pad, floor=True)
    dy = np.random.default_rng(10).integers(-3, 4, (x.shape[0], k, oh, ow)).astype(BF16)
    X, W, Bb, DY = on(target, x, w, b, dy)
    if channels_last:
        X, DY = gpuconv.to_channels_last(X), gpuconv.to_channels_last(DY)
    families = {f: variant for f in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")}
    with kernels.launch_log() as log, kernels.use_variant(**families):
        y, cache = LC.conv2d_forward_kernel(X, W, Bb, stride, pad, False, target=target)
        dx, dw, _ = LC.conv2d_backward_kernel(DY, cache, True, False, target=target)
    variant = TC.engine(variant, BF16, False, target, 0)
    assert [r.name for r in conv_launches(log)][:3] == [f"conv2d_{d}_{variant}"
                                                        for d in ("forward", "backward_data", "backward_weight")]
    f64 = [np.asarray(a, np.float64) for a in (x, w, b, dy)]
    ey, ecache = conv_mod._conv2d_forward_reference(*f64[:3], stride, pad)
    edx, edw, _ = conv_mod._conv2d_backward_reference(f64[3], ecache)
    assert y.shape == ey.shape == (2, k, oh, ow) and layout.is_channels_last(dx) == channels_last
    for got, want in ((y, ey), (dx, edx), (dw, edw)):
        assert np.array_equal(host(got).astype(np.float64), want)
    if fh == 1:
        assert not host(dx).astype(np.float64)[:, :, -1].any() and not host(dx).astype(np.float64)[:, :, :, -1].any()


def assert_rounded_once(name, got, want, dtype):
    """Small integers: the float32 sums are exact, so each output is the float64 value rounded once
    to the output's dtype; non-finite exactly where the float64 convolution is."""
    got, finite = host(got).astype(np.float64), np.isfinite(want)
    assert np.array_equal(np.isfinite(got), finite), f"{name}: non-finite at other places"
    assert np.array_equal(got[finite], want[finite].astype(dtype).astype(np.float64)), name


# (x's H x W, (FH, FW), stride, padding): the data gradient's phases of the strides, each of its
# own rows and taps (kernels/common.cuh's StridePhase)
PHASE_CASES = [((7, 7), (3, 3), (1, 2), (1, 1)),   # a unit stride in one direction only
               ((7, 7), (3, 3), (2, 1), (1, 1)),
               ((8, 8), (3, 3), (2, 2), (1, 1)),   # ResNet's downsampling 3x3 (floored: a padding row unread)
               ((9, 7), (3, 3), (2, 2), (0, 1)),   # odd sizes: the first phase a row longer than the second
               ((8, 8), (1, 1), (2, 2), (0, 0)),   # its 1x1 shortcut: three phases no tap reaches (dx 0)
               ((9, 10), (2, 3), (3, 2), (1, 2)),  # padding wider than the stride, rectangular everything
               ((10, 11), (5, 4), (3, 3), (2, 1)),  # phases of 2, 2 and 1 taps a side
               ((11, 9), (4, 4), (2, 3), (3, 0)),
               ((2, 2), (3, 3), (3, 3), (1, 1)),   # an extent shorter than the stride: empty phases
               ((1, 5), (1, 3), (2, 2), (0, 1))]
PHASE_IDS = ["s12", "s21", "3x3s2", "odd", "1x1s2", "2x3s32p12", "5x4s3", "4x4s23", "short", "h1"]


@pytest.mark.parametrize("variant", ["tc", "tc128", "tcwg", "tcwgm64"])
@pytest.mark.parametrize("case", PHASE_CASES, ids=PHASE_IDS)
def test_strided_data_gradient_phases_give_every_input_pixel_its_taps(target, case, variant):
    """Split by the strides' phases, the data gradient gives every input pixel exactly the products
    of the taps that reach it (small integers: every partial sum exact, so exact results), rows and
    columns no tap reaches 0, and the forward and weight gradient alongside unchanged; on every
    tile shape and with the floored sizes PyTorch takes."""
    (h, wd), (fh, fw), stride, pad = case
    skip_without_tensor_cores(target, BF16)
    rng = np.random.default_rng(PHASE_CASES.index(case))
    xs = (2, 8, h, wd)
    x, w, b = operands((xs, (12, fh, fw), stride, pad), BF16, rng, integers=True)
    oh, ow = conv_mod.output_hw(xs, (fh, fw), stride, pad, floor=True)
    dy = rng.integers(-3, 4, (2, 12, oh, ow)).astype(BF16)
    (y, dx, dw), log = run_conv(target, x, w, b, dy, stride, pad, False, variant=variant)
    data = [r for r in log if r.name.startswith("conv2d_backward_data_tc")]
    assert len(data) == 1 and data[0].grid[2] == stride[0] * stride[1]
    for name, got, want in zip(("y", "dx", "dw"), (y, dx, dw), exact(x, w, b, dy, stride, pad, False)[0]):
        assert_rounded_once(name, got, want, BF16)


@pytest.mark.parametrize("case", [((8, 8), (3, 3), (2, 2), (1, 1)), ((8, 8), (1, 1), (2, 2), (0, 0))],
                         ids=["3x3s2", "1x1s2"])
def test_a_strided_data_gradient_multiplies_no_tap_by_a_pixel_it_does_not_reach(target, case):
    """A tap meets only the input pixels of its phase: an infinite tap makes NaN or infinity there
    alone, as in the float64 convolution. (A gather of dy over every tap would multiply the
    infinity by the zeros it fills for the other phases' pixels: NaN everywhere.)"""
    (h, wd), (fh, fw), stride, pad = case
    skip_without_tensor_cores(target, BF16)
    rng = np.random.default_rng(13)
    xs = (1, 8, h, wd)
    x, w, b = operands((xs, (8, fh, fw), stride, pad), BF16, rng, integers=True)
    w[:, :, fh // 2, fw // 2] = np.inf  # the centre tap: even rows and columns (padding fh // 2)
    oh, ow = conv_mod.output_hw(xs, (fh, fw), stride, pad, floor=True)
    dy = rng.integers(1, 4, (1, 8, oh, ow)).astype(BF16)
    with np.errstate(invalid="ignore", over="ignore"):
        (_, dx, _), _ = run_conv(target, x, w, b, dy, stride, pad, False)
        want = exact(x, w, b, dy, stride, pad, False)[0][1]
    assert np.isinf(want[:, :, ::2, ::2]).all() and np.isfinite(want[:, :, 1::2]).all()
    assert_rounded_once("dx", dx, want, BF16)


def test_phase_order_runs_each_phases_taps_together():
    """The filter's taps as the data gradient reads them: phase by phase (fh % sh, fw % sw), each
    phase's taps in row-major order; the filter's own order where that is it."""
    fh, fw, sh, sw = 3, 5, 2, 3
    order = TC.phase_order(fh, fw, sh, sw)
    taps = [divmod(int(t), fw) for t in order]
    assert sorted(order.tolist()) == list(range(fh * fw))
    phases = [(a % sh, b % sw) for a, b in taps]
    assert phases == sorted(phases)  # each phase one run, the phases in order
    for p in set(phases):
        run = [t for t, q in zip(taps, phases) if q == p]
        assert run == sorted(run) and len(run) == len(range(p[0], fh, sh)) * len(range(p[1], fw, sw))
    assert TC.phase_order(3, 3, 1, 1) is None and TC.phase_order(1, 1, 2, 2) is None
    assert TC.phase_order(2, 3, 2, 3) is None  # a tap per phase at most
    assert TC.phase_order(3, 1, 2, 1).tolist() == [0, 2, 1]


def _dx_reference(dy, w, hw, stride, pad):
    """float64 dx of the convolution with filters ``w`` over an input of ``hw``, straight from the
    definition: each tap adds dy at the input pixels its windows put it on, rows past the last
    window (PyTorch's floor) none."""
    (n, _, oh, ow), (_, c, fh, fw), (sh, sw), (ph, pw) = dy.shape, w.shape, stride, pad
    big = np.zeros((n, c, max((oh - 1) * sh + fh, ph + hw[0]), max((ow - 1) * sw + fw, pw + hw[1])))
    for i in range(fh):
        for j in range(fw):
            big[:, :, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw] += np.einsum("nkab,kc->ncab", dy,
                                                                                           w[:, :, i, j])
    return big[:, :, ph:ph + hw[0], pw:pw + hw[1]]


# every (extent, filter size, stride, padding) with extents to 7, filters to 5, strides to 4 and
# paddings to one past the filter that has an output: extents shorter than the stride, paddings
# past the stride and the filter, floored output sizes
_AXES = [(e, f, s, p) for e in range(1, 8) for f in range(1, 6) for s in range(1, 5) for p in range(f + 2)
         if e + 2 * p >= f]


def test_every_small_geometry_gives_every_input_pixel_exactly_its_taps(target):
    """Each of _AXES's geometries as the rows, paired with another as the columns (asymmetric
    strides, filters and paddings): the data gradient's phases (StridePhase) and the filter's phase
    order (phase_order) give the float64 definition's dx rounded once (small integers: every partial
    sum exact), one launch of a phase per grid.z. (The phases are the tiles' common part:
    test_strided_data_gradient_phases_give_every_input_pixel_its_taps runs each tile.)"""
    skip_without_tensor_cores(target, BF16)
    rng = np.random.default_rng(43)
    with kernels.launch_log() as log:
        for a, (h, fh, sh, ph) in enumerate(_AXES):
            wd, fw, sw, pw = _AXES[(a * 7 + 3) % len(_AXES)]
            oh, ow = (h + 2 * ph - fh) // sh + 1, (wd + 2 * pw - fw) // sw + 1
            w = rng.integers(-3, 4, (5, 3, fh, fw)).astype(BF16)
            dy = rng.integers(-3, 4, (2, 5, oh, ow)).astype(BF16)
            DY, W, like = on(target, dy, w, np.empty((2, 3, h, wd), BF16))
            start = len(log)
            dx = TC.backward_data(DY, W, (2, 3, h, wd), (sh, sw), (ph, pw), False, like, target=target)
            grids = [r.grid for r in log[start:] if r.name.startswith("conv2d_backward_data_")]
            assert len(grids) == 1 and grids[0][2] == sh * sw, ((h, fh, sh, ph), (wd, fw, sw, pw), grids)
            want = _dx_reference(dy.astype(np.float64), w.astype(np.float64), (h, wd), (sh, sw), (ph, pw))
            assert_rounded_once(f"dx of {(h, fh, sh, ph)} x {(wd, fw, sw, pw)}", dx, want, BF16)


@pytest.mark.parametrize("build", ["bf16", "tf32"])
def test_a_strided_data_gradient_gathers_mixed_precisions_pack_leaving_it_as_it_was(target, build):
    """Where mixed precision registered the filters' CRSK copy (pack_for_data_gradient), a strided
    data gradient reads that copy's taps in phase order from a gathered copy: dx is the pack's
    (here differing from w's, so that a repack of w shows), and the pack keeps its bits (TF32: its
    gathered copy rounded, not the pack)."""
    dtype, tf32 = BUILDS[build]
    skip_without_tensor_cores(target, dtype)
    rng = np.random.default_rng(53)
    (h, wd), (fh, fw), stride, pad = (9, 8), (3, 4), (2, 3), (1, 2)
    w = rng.integers(-3, 4, (6, 5, fh, fw)).astype(dtype)
    oh, ow = conv_mod.output_hw((2, 5, h, wd), (fh, fw), stride, pad, floor=True)
    dy = rng.integers(-3, 4, (2, 6, oh, ow)).astype(dtype)
    kp = TC.padded_channels(6, dtype)
    taps = rng.integers(-3, 4, (5, fh, fw, 6)).astype(np.float64)
    if tf32:  # values TF32 rounds (to the integers), in the pack's own bits
        taps += np.sign(taps) * 2.0 ** -14
    pack = np.zeros((5, fh, fw, kp), dtype)
    pack[..., :6] = taps
    bits = pack.tobytes()
    DY, W, PACK, like = on(target, dy, w, pack, np.empty((2, 5, h, wd), dtype))
    TC.pack_for_data_gradient(W, PACK)
    try:
        dx = TC.backward_data(DY, W, (2, 5, h, wd), stride, pad, tf32, like, target=target)
    finally:
        TC.forget_packed(W)
    assert host(PACK).tobytes() == bits
    want = _dx_reference(dy.astype(np.float64), np.rint(taps).transpose(3, 0, 1, 2), (h, wd), stride, pad)
    assert_rounded_once("dx", dx, want, dtype)


def test_more_phases_than_grid_z_holds_run_on_the_cuda_cores(target):
    """A phase per grid.z: strides of more than 65535 phases (256 x 257) send the data gradient to
    the CUDA-core kernels, not to a launch CUDA refuses, with the definition's dx (the one pixel its
    1x1 taps reach, zeros elsewhere)."""
    skip_without_tensor_cores(target, BF16)
    rng = np.random.default_rng(47)
    w = rng.integers(-3, 4, (6, 4, 1, 1)).astype(BF16)
    dy = rng.integers(-3, 4, (2, 6, 1, 1)).astype(BF16)
    DY, W, like = on(target, dy, w, np.empty((2, 4, 3, 2), BF16))
    with kernels.launch_log() as log, kernels.use_variant(conv2d_backward_data="tc"):
        dx = LC.conv2d_backward_data_kernel(DY, W, (2, 4, 3, 2), (256, 257), (0, 0), False, target=target, like=like)
    assert not [r for r in log if r.name.startswith("conv2d_backward_data_tc")], log.names
    assert_rounded_once("dx", dx, _dx_reference(dy.astype(np.float64), w.astype(np.float64), (3, 2), (256, 257),
                                                (0, 0)), BF16)


@pytest.mark.parametrize("build", ["bf16", "tf32"])
def test_taps_past_the_filter_are_not_read(target, build):
    """3x3 taps of 8 channels are 72 reduction elements; the last k-tile runs on to 96 (16-bit) or
    80 (TF32), taps of a fourth filter row that the zero-filled filter columns multiply. Those taps
    must not be read all the same: an infinity in the pixel row below a window (in the dy row above
    a dx row's) would make inf x 0 = NaN of an output that never sees it."""
    dtype, tf32 = BUILDS[build]
    skip_without_tensor_cores(target, dtype, tf32)
    case = ((1, 8, 6, 6), (4, 3, 3), (1, 1), (0, 0))
    rng = np.random.default_rng(12)
    x, w, b = operands(case, dtype, rng, integers=True)
    dy = rng.integers(-3, 4, (1, 4, 4, 4)).astype(dtype)
    x[0, 0, 5, 1] = np.inf  # row 5: in y's row 3 windows; below row 2's, its fourth-row tap
    dy[0, 0, 0, 1] = np.inf  # row 0: reaches dx rows 0-2; above row 3's fourth-row tap
    with np.errstate(invalid="ignore", over="ignore"):
        got, _ = run_conv(target, x, w, b, dy, (1, 1), (0, 0), tf32)
        want = exact(x, w, b, dy, (1, 1), (0, 0), tf32)[0]
    assert np.isfinite(want[0][:, :, :3]).all() and np.isfinite(want[1][:, :, 3:]).all()
    for name, g, e in zip(("y", "dx", "dw"), got, want):
        assert_rounded_once(name, g, e, np.float32 if tf32 else dtype)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("build", list(BUILDS))
def test_exact_when_every_partial_sum_is(target, build, variant):
    """Integers up to 31: every product and partial sum is exact in float32 (|y| < 360 * 31^2 + 31 <
    2^24), so every order of the sums gives the same value and each output is the float64
    convolution rounded once, to nearest even: bit for bit in TF32 (float32 outputs), and in
    bfloat16 and float16 past their exact integers (256, 2048), where y, dx and the weight
    gradient's split-K reduction each have outputs that a truncating or double rounding would get
    wrong (with integers up to 3 none of them needed rounding)."""
    dtype, tf32 = BUILDS[build]
    skip_without_tensor_cores(target, dtype, tf32)
    case = CASES[4]
    x, w, b = operands(case, dtype, np.random.default_rng(7), integers=True, bound=31)
    dy = np.random.default_rng(8).integers(-31, 32, (1, 5, 9, 9)).astype(dtype)
    (y, dx, dw), _ = run_conv(target, x, w, b, dy, case[2], case[3], tf32, variant=variant)
    (ey, edx, edw), _ = exact(x, w, b, dy, case[2], case[3], tf32)
    for name, got, want in (("y", y, ey), ("dx", dx, edx), ("dw", dw, edw)):
        assert np.isfinite(want).all() and (tf32 or (want.astype(dtype).astype(np.float64) != want).any())
        assert_rounded_once(name, got, want, dtype)


# float32 bit patterns where TF32's rounding has a rule to keep: a NaN whose payload lies only in
# the 13 bits TF32 drops (a NaN still, not an infinity), infinities, the largest finite value
# (rounds to inf), ties (away from zero), just below a tie, a carry into the next binade, a
# negative zero. (No subnormals: the PTX ISA leaves their handling by mma and wgmma unspecified.)
TF32_SPECIALS = [0x7F800001, 0xFF800FFF, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x3F801000, 0xBF803000, 0x3F800FFF,
                 0x3FFFF000, 0x80000000, 0x4B7FFFFF, 0x00800000]


@pytest.mark.parametrize("variant", VARIANTS)
def test_tf32_operands_round_by_the_rule_special_values_included(target, variant):
    """1x1 convolutions of 12 images of 1x1 pixels whose every output is ONE product with 1.0 (the
    other terms are x 0): the output is the TF32 operand itself, so each operand path (forward:
    patches and filters; data gradient: dy and filters; weight gradient: dy and patches) shows
    its rounding bit for bit against round_tf32, the special values included (an infinity times
    the zeros of its row makes NaNs there, on both sides)."""
    skip_without_tensor_cores(target, np.float32, True)
    rng = np.random.default_rng(5)
    n = len(TF32_SPECIALS)
    vals = rng.standard_normal((n, n)).astype(np.float32).view(np.uint32) | np.uint32(0x0AAA)
    vals[np.arange(n), rng.permutation(n)] = TF32_SPECIALS  # one special a row
    special = vals.view(np.float32).reshape(n, n, 1, 1)
    eye = np.eye(n, dtype=np.float32).reshape(n, n, 1, 1)
    zeros = np.zeros(n, np.float32)

    def reference(x, w, dy):
        (y, dx, dw), _ = exact(x, w, zeros, dy, (1, 1), (0, 0), True)
        return y.astype(np.float32), dx.astype(np.float32), dw.astype(np.float32)

    with np.errstate(invalid="ignore", over="ignore"):
        # patches (y = S, dw = S), dy (dx = S, dw = S^T), filters (y = S^T, dx = S)
        for x, w, dy in ((special, eye, eye), (eye, eye, special), (eye, special, eye)):
            got, _ = run_conv(target, x, w, zeros, dy, (1, 1), (0, 0), True, variant=variant)
            for name, g, want in zip(("y", "dx", "dw"), got, reference(x, w, dy)):
                np.testing.assert_array_equal(host(g), want, err_msg=f"{name} ({variant})")


@pytest.mark.parametrize("variant", ["tc", "tcwg"])
def test_tf32_rounding_before_the_launch_leaves_the_callers_arrays_as_they_were(target, variant):
    """Each TF32 direction rounds its two operands in one pass before its launch: in place only in
    the copies the launcher made (an NCHW input's or output gradient's NHWC copy, the repacked
    filters), into new arrays where it was handed views of the caller's (a channels_last input or
    output gradient, filters whose memory is already the packing): those keep their bits. The
    results are those of the rounded operands, bit for bit, whichever way the operands came."""
    skip_without_tensor_cores(target, np.float32, True)
    rng = np.random.default_rng(17)
    x, w, b = operands(((2, 8, 6, 5), (12, 3, 3), (1, 1), (1, 1)), np.float32, rng)
    dy = rng.standard_normal((2, 12, 6, 5)).astype(np.float32)
    for a in (x, w, dy):
        a.view(np.uint32)[...] |= 0x0AAB  # low bits the rounding drops
    # filters in KRSC memory: the forward's packing is a view of them
    w_krsc = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    results = []
    for channels_last, filters in ((False, w), (True, w_krsc)):
        X, W, Bb, DY = on(target, x, filters, b, dy)
        if channels_last:
            X, DY = gpuconv.to_channels_last(X), gpuconv.to_channels_last(DY)
        before = [host(a).copy() for a in (X, W, DY)]
        families = {f: variant for f in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")}
        with kernels.use_variant("tf32", **families):
            y, cache = LC.conv2d_forward_kernel(X, W, Bb, (1, 1), (1, 1), True, target=target)
            dx, dw, _ = LC.conv2d_backward_kernel(DY, cache, True, True, target=target)
        for name, a, was in zip(("x", "w", "dy"), (X, W, DY), before):
            np.testing.assert_array_equal(host(a).view(np.uint32), was.view(np.uint32), err_msg=name)
        results.append([np.ascontiguousarray(host(a)) for a in (y, dx, dw)])
    for name, first, second in zip(("y", "dx", "dw"), *results):
        np.testing.assert_array_equal(first, second, err_msg=name)
    # and the launch rounded them as round_tf32 does: 1x1 products with identity filters
    # (test_tf32_operands_round_by_the_rule_special_values_included) check the values themselves


@pytest.mark.parametrize("k", [12, 10], ids=["k12", "k10"])
def test_a_tf32_weight_gradient_rounding_its_own_dy_leaves_the_callers_as_it_was(target, k):
    """Where the weight gradient rounds dy itself (no data gradient before it: need_dx False, or
    dy's channels padded for the data gradient, 10 of them, or a transposed convolution, whose
    weight gradient takes its input as dy), a channels_last dy is a view of the caller's array:
    rounded into a new one, the caller's keeping its bits; dw is that of the shared rounding, bit
    for bit, and the transposed convolution's is the convolution's with x and dy swapped."""
    skip_without_tensor_cores(target, np.float32, True)
    from gpuconv.ops import _launch_conv_transpose2d as LT
    from gpuconv.ops.conv_transpose2d import ConvTranspose2dCache
    rng = np.random.default_rng(23)
    x, w, b = operands(((2, 8, 6, 5), (k, 3, 3), (1, 1), (1, 1)), np.float32, rng)
    dy = rng.standard_normal((2, k, 6, 5)).astype(np.float32)
    for a in (x, dy):
        a.view(np.uint32)[...] |= 0x0AAB  # low bits the rounding drops
    X, W, Bb, DY = on(target, x, w, b, dy)
    X, DY = gpuconv.to_channels_last(X), gpuconv.to_channels_last(DY)
    before = [host(a).copy() for a in (X, DY)]
    families = {f: "tc" for f in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")}
    got = {}
    with kernels.use_variant("tf32", **families), kernels.launch_log() as log:
        _, cache = LC.conv2d_forward_kernel(X, W, Bb, (1, 1), (1, 1), True, target=target)
        for need_dx in (True, False):
            start = len(log.names)
            got[need_dx] = LC.conv2d_backward_kernel(DY, cache, need_dx, True, target=target)[1]
            rounds = [r.grid[1] for r in list(log)[start:] if r.name == "conv2d_tc_round_tf32"]
            # the weight gradient's pass rounds dy and x, or x alone where the data gradient's dy serves it
            assert rounds[-1] == (1 if need_dx and k % 4 == 0 else 2), (need_dx, rounds)
        # a transposed convolution of DY back to X's shape: its weight gradient's dy is DY, its x is X
        t_cache = ConvTranspose2dCache(DY, W, False, (1, 1), (1, 1), (0, 0), (1, 1), 1)
        got["transposed"] = LT.conv_transpose2d_backward_kernel(X, t_cache, False, True, target=target)[1]
    for name, a, was in zip(("x", "dy"), (X, DY), before):
        np.testing.assert_array_equal(host(a).view(np.uint32), was.view(np.uint32), err_msg=name)
    for name in (False, "transposed"):
        np.testing.assert_array_equal(host(got[name]).view(np.uint32), host(got[True]).view(np.uint32),
                                      err_msg=str(name))


def _round_launches(log, start=0):
    """The arrays each conv2d_tc_round_tf32 launch after ``start`` rounded (its grid's y: one slot an
    array), in launch order."""
    return [r.grid[1] for r in list(log)[start:] if r.name == "conv2d_tc_round_tf32"]


@pytest.mark.parametrize("out", [12, 10], ids=["out12", "out10"])
def test_a_tf32_linear_backward_rounds_dy_once_for_both_gradients(target, out):
    """A linear layer's TF32 backward (a 1x1 convolution of (N, features, 1, 1) images) rounds dy
    once: the data gradient's rounding serves the weight gradient, whose pass then rounds x alone,
    where dy's features need no padding (12; 10 are padded to 12 for the data gradient, and the
    weight gradient rounds its own); the gradients are those of each direction run alone, bit for
    bit, and the caller's dy keeps its bits."""
    skip_without_tensor_cores(target, np.float32, True)
    from gpuconv.ops import _launch_linear as LL
    rng = np.random.default_rng(31)
    x, w, b, dy = (rng.standard_normal(s).astype(np.float32) for s in ((6, 8), (out, 8), (out,), (6, out)))
    for a in (x, dy):
        a.view(np.uint32)[...] |= 0x0AAB  # low bits the rounding drops
    X, W, Bb, DY = on(target, x, w, b, dy)
    families = {f: "tc" for f in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")}
    with kernels.use_variant("tf32", **families), kernels.launch_log() as log:
        _, cache = LL.linear_forward_kernel(X, W, Bb, True, target=target)
        start = len(log.names)
        dx, dw, _ = LL.linear_backward_kernel(DY, cache, True, target=target)
        rounds = _round_launches(log, start)
        d4, x4, w4 = DY.reshape(6, out, 1, 1), X.reshape(6, 8, 1, 1), W.reshape(out, 8, 1, 1)
        alone_dx = LC.conv2d_backward_data_kernel(d4, w4, x4.shape, (1, 1), (0, 0), True, target=target, like=x4)
        alone_dw = LC.conv2d_backward_weight_kernel(d4, x4, w4.shape, (1, 1), (0, 0), True, target=target)
    assert rounds == [2, 1 if out % 4 == 0 else 2], rounds
    np.testing.assert_array_equal(host(DY).view(np.uint32), dy.view(np.uint32))
    np.testing.assert_array_equal(host(dx).view(np.uint32), host(alone_dx).reshape(dx.shape).view(np.uint32))
    np.testing.assert_array_equal(host(dw).view(np.uint32), host(alone_dw).reshape(dw.shape).view(np.uint32))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_a_tf32_transposed_convolution_rounds_dy_once_for_both_gradients(target, channels_last):
    """A transposed convolution's backward reads its dy as the input of the convolution's forward
    (its dx) and of the convolution's weight gradient (its dw): in TF32 the forward's rounding of
    dy serves the weight gradient, whose pass rounds x alone; both gradients are those of each
    direction run alone, bit for bit, and the caller's dy keeps its bits."""
    skip_without_tensor_cores(target, np.float32, True)
    from gpuconv.ops import _launch_conv_transpose2d as LT
    from gpuconv.ops.conv_transpose2d import ConvTranspose2dCache
    rng = np.random.default_rng(37)
    x = rng.standard_normal((2, 12, 6, 5)).astype(np.float32)  # the transposed convolution's input
    w = rng.standard_normal((12, 8, 3, 3)).astype(np.float32)  # (x's channels, dy's, 3, 3)
    dy = rng.standard_normal((2, 8, 6, 5)).astype(np.float32)
    for a in (x, dy):
        a.view(np.uint32)[...] |= 0x0AAB
    X, W, DY = on(target, x, w, dy)
    if channels_last:
        X, DY = gpuconv.to_channels_last(X), gpuconv.to_channels_last(DY)
    before = host(DY).copy()
    cache = ConvTranspose2dCache(X, W, False, (1, 1), (1, 1), (0, 0), (1, 1), 1)
    families = {f: "tc" for f in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")}
    with kernels.use_variant("tf32", **families), kernels.launch_log() as log:
        dx, dw, _ = LT.conv_transpose2d_backward_kernel(DY, cache, True, True, target=target)
        rounds = _round_launches(log)
        alone_dx = LT.conv_transpose2d_backward_kernel(DY, cache, True, True, False, target=target)[0]
        alone_dw = LT.conv_transpose2d_backward_kernel(DY, cache, False, True, True, target=target)[1]
    # the forward's dy and filters, the weight gradient's x alone; on a GPU's NCHW path dy and x are
    # rounded as they are converted (kernels/layout.cu), the forward's pass rounding the filters alone
    assert rounds == ([1] if converts_operands(target, channels_last) else [2, 1]), rounds
    np.testing.assert_array_equal(host(DY).view(np.uint32), before.view(np.uint32))
    np.testing.assert_array_equal(host(dx).view(np.uint32), host(alone_dx).view(np.uint32))
    np.testing.assert_array_equal(host(dw).view(np.uint32), host(alone_dw).view(np.uint32))


@pytest.mark.parametrize("build", ["tf32", "bf16"])
def test_a_gpus_nchw_operands_are_converted_padded_and_rounded_in_one_pass(build, fake_second_gpu, monkeypatch):
    """On a GPU's path (CuPy faked, the kernels on the simulator), an NCHW operand is converted to
    NHWC by kernels/layout.cu in one pass: its channels padded there (bf16's 3 input channels to 8,
    no zero-filled array first), and in TF32 rounded there, so that the rounding launches round the
    filters alone (the forward's and the data gradient's) and the weight gradient's none (dy the
    data gradient's, x converted rounded); the outputs go back to NCHW by the same kernel; y, dx and
    dw are those of the simulator's NumPy path bit for bit."""
    from test_layout import _fake_gpu_kernels_on_the_simulator
    dtype, tf32 = BUILDS[build]
    rng = np.random.default_rng(41)
    c = 8 if tf32 else 3
    x, w, b = operands(((2, c, 6, 5), (12, 3, 3), (1, 1), (1, 1)), dtype, rng)
    dy = rng.standard_normal((2, 12, 6, 5)).astype(dtype)
    if tf32:
        for a in (x, dy):
            a.view(np.uint32)[...] |= 0x0AAB  # low bits the rounding drops
    families = {f: "tc" for f in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")}

    def step(target, arrays):
        X, W, Bb, DY = arrays
        with kernels.use_variant("tf32" if tf32 else dtype, **families), kernels.launch_log() as log:
            y, cache = LC.conv2d_forward_kernel(X, W, Bb, (1, 1), (1, 1), tf32, target=target)
            dx, dw, _ = LC.conv2d_backward_kernel(DY, cache, True, tf32, target=target)
        return [np.ascontiguousarray(np.asarray(a)) for a in (y, dx, dw)], log

    want, _ = step("sim", (x, w, b, dy))
    gpu = fake_second_gpu
    _fake_gpu_kernels_on_the_simulator(gpu, monkeypatch)
    got, log = step("cuda", [gpu.on(a) for a in (x, w, b, dy)])
    names = [r.name for r in log]
    # x in (the forward's, the weight gradient's), dy in (in bf16 twice: padded to 16 channels for the
    # data gradient, its 12 for the weight gradient; TF32's 12 serve both), y and dx out
    assert names.count("layout_transpose") == (5 if tf32 else 6), names
    assert [r.grid[1] for r in log if r.name == "conv2d_tc_round_tf32"] == ([1, 1] if tf32 else [])
    # zero-filled arrays: the filters' packings alone in bf16 (3 input channels padded to 8 for the
    # forward, 12 filters to 16 for the data gradient), none for an activation
    assert [call[0] for call in gpu.calls].count("zeros") == (0 if tf32 else 2), gpu.calls
    for name, g, v in zip(("y", "dx", "dw"), got, want):
        assert layout.is_channels_last(g) is False
        np.testing.assert_array_equal(g.view(np.uint8), v.view(np.uint8), err_msg=name)


def test_a_tf32_backward_copies_an_nchw_dy_to_nhwc_once_for_both_directions(target, monkeypatch):
    """Where the data gradient's rounded NHWC dy serves the weight gradient (dy's channels a
    multiple of 4), the weight gradient makes no NHWC copy of its own: dy is transposed once."""
    skip_without_tensor_cores(target, np.float32, True)
    rng = np.random.default_rng(29)
    x, w, b = operands(((2, 8, 6, 5), (12, 3, 3), (1, 1), (1, 1)), np.float32, rng)
    dy = rng.standard_normal((2, 12, 6, 5)).astype(np.float32)
    X, W, Bb, DY = on(target, x, w, b, dy)
    copies, nhwc, converted = [], layout.nhwc, TC._launch_layout.nchw_to_nhwc
    monkeypatch.setattr(layout, "nhwc", lambda a: (copies.append(a is DY), nhwc(a))[1])  # NumPy's copy
    monkeypatch.setattr(TC._launch_layout, "nchw_to_nhwc",  # a GPU's (kernels/layout.cu)
                        lambda a, *args, **kw: (copies.append(a is DY), converted(a, *args, **kw))[1])
    families = {f: "tc" for f in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")}
    with kernels.use_variant("tf32", **families):
        _, cache = LC.conv2d_forward_kernel(X, W, Bb, (1, 1), (1, 1), True, target=target)
        dx, dw, _ = LC.conv2d_backward_kernel(DY, cache, True, True, target=target)
    assert copies.count(True) == 1, copies
    (_, want_dx, want_dw), _ = run_conv(target, x, w, b, dy, (1, 1), (1, 1), True)  # the same, by the same path
    np.testing.assert_array_equal(host(dx), host(want_dx))
    np.testing.assert_array_equal(host(dw), host(want_dw))


def test_the_tf32_rounding_pass_rounds_by_the_rule_in_place_or_into_a_copy(target):
    """conv2d_tc_round_tf32, the pass before a TF32 forward or data gradient: each value as
    round_tf32 gives it (to nearest, ties away from zero, the low 13 bits cleared; a NaN stays a
    NaN, its payload in those bits or not), the special values, lengths with a tail past the last
    float4 and an empty one included; in place where told, else into a new array, the source kept."""
    skip_without_tensor_cores(target, np.float32, True)
    rng = np.random.default_rng(3)
    for n0, n1 in ((len(TF32_SPECIALS), 1031), (4096, 0), (7, 5)):
        a = rng.standard_normal(n0).astype(np.float32)
        a.view(np.uint32)[:min(n0, len(TF32_SPECIALS))] = TF32_SPECIALS[:n0]
        b = (rng.standard_normal(n1) * 1e30).astype(np.float32)
        want = [np.asarray(round_tf32(v)) for v in (a, b)]
        A, Bv = on(target, a, b)
        out = TC._rounded_tf32(target, kernels.array_device([A]), (A, False), (Bv, True))
        assert out[0] is not A and out[1] is Bv  # a copy for the caller's array, in place for the fresh one
        np.testing.assert_array_equal(host(A).view(np.uint32), a.view(np.uint32))  # the source kept
        for got, w in zip(out, want):
            got = host(got)
            nan = np.isnan(w)
            assert np.array_equal(np.isnan(got), nan) and not (got.view(np.uint32) & 0x1FFF).any()
            np.testing.assert_array_equal(got[~nan].view(np.uint32), w[~nan].view(np.uint32))


def test_the_simulator_refuses_a_tf32_operand_no_rounding_pass_wrote():
    """The TF32 tiles round nothing (their launcher rounded their operands): handed a float32 input
    whose low bits are set, straight to the kernel (the forward's, staged by cp.async; the weight
    gradient's, stored from registers), the simulator ends the launch naming the value and the
    rounding pass it lacks, instead of multiplying bits the tensor cores would drop."""
    skip_without_tensor_cores("sim", np.float32, True)
    n, c, h, w_, k = 1, 4, 4, 4, 8
    x = np.full((n, h, w_, c), 1.0, np.float32)
    x.view(np.uint32)[0, 1, 2, 3] |= 1  # one value off the TF32 grid
    wk = np.ones((k, 1, 1, c), np.float32)
    y = np.empty((n, h, w_, k), np.float32)
    bm, bn, threads = TC.SHAPES["tc"]
    args = (x, wk, wk, y) + kernels.int32_args((n, c, h, w_, k, 1, 1, h, w_, 1, 1, 0, 0, 0, 0))
    with pytest.raises(hostsim.SimulatorError, match=r"conv2d_forward_tc.*0x3f800001 as a TF32 operand the launcher "
                                                     r"rounded, but its 13 low bits are set.*conv2d_tc_round_tf32"):
        kernels.launch("conv2d_tc", "conv2d_forward_tc", np.float32, "sim", (1, 1, 1), (threads, 1, 1), args,
                       tf32=True)
    # the weight gradient's, whose TF32 operands are transposed through registers on the way in
    dy = np.ones((n, h, w_, k), np.float32)
    ws = np.empty((1, k, c), np.float32)
    wargs = (dy, x, ws) + kernels.int32_args((n, c, h, w_, k, 1, 1, h, w_, 1, 1, 0, 0, n * h * w_, 16))
    with pytest.raises(hostsim.SimulatorError, match=r"conv2d_backward_weight_tc.*0x3f800001 as a TF32 operand"):
        kernels.launch("conv2d_tc", "conv2d_backward_weight_tc", np.float32, "sim", (1, 1, 1), (threads, 1, 1),
                       wargs, tf32=True)
    x.view(np.uint32)[0, 1, 2, 3] &= ~np.uint32(1)  # rounded: the same launches run
    kernels.launch("conv2d_tc", "conv2d_forward_tc", np.float32, "sim", (1, 1, 1), (threads, 1, 1), args, tf32=True)
    np.testing.assert_array_equal(y, np.full_like(y, c))
    kernels.launch("conv2d_tc", "conv2d_backward_weight_tc", np.float32, "sim", (1, 1, 1), (threads, 1, 1), wargs,
                   tf32=True)
    np.testing.assert_array_equal(ws, np.full_like(ws, n * h * w_))


@pytest.mark.parametrize("build", ["bf16", "f16", "tf32"])
def test_the_128_row_tiles_give_the_same_bits_in_every_layout_and_engine(target, build, monkeypatch):
    """tc128 (8 warps of 64x32), tc128w (4 warps of 64x64), tcwg (2 warpgroups of 64x128 on wgmma),
    tcwg256 (2 of 64x256), tcwgn64 (2 of 2 x 64x64) and tcwgm64 (1 of 64x128) compute every output
    as the same k-tiles and k16 steps,
    so every output is the same sum in the same order: bit-identical results on the simulator,
    over several row and column tiles and weight-gradient splits, channels_last. (On a GPU the
    order inside one mma is the hardware's: mma.sync and wgmma may differ in the last bits.)"""
    monkeypatch.setattr(LC, "MIN_SPLIT_CHUNK", 32)
    # the same weight-gradient splits for both (on a GPU the split rule reads each kernel's occupancy)
    monkeypatch.setattr(kernels, "resident_blocks", lambda *args, **kw: 2)
    dtype, tf32 = BUILDS[build]
    skip_without_tensor_cores(target, dtype, tf32)
    rng = np.random.default_rng(13)
    x, w, b = operands(((2, 24, 12, 11), (136, 3, 3), (1, 1), (1, 1)), dtype, rng)  # M = 264, N = 136
    dy = rng.standard_normal((2, 136, 12, 11)).astype(dtype)
    got = {}
    wgmma = TC.engine("tcwg", dtype, tf32, target, 0) == "tcwg"
    variants = ("tc128", "tc128w") + (("tcwg", "tcwg256", "tcwgn64", "tcwgm64") if wgmma else ())
    for variant in variants:
        results, log = run_conv(target, x, w, b, dy, (1, 1), (1, 1), tf32, True, variant)
        assert f"conv2d_forward_{variant}" in log.names
        got[variant] = [np.ascontiguousarray(host(a)).tobytes() for a in results]
    if target == "sim":
        assert all(got[v] == got["tc128"] for v in variants) and len(variants) == 6
    else:
        assert got["tc128"] == got["tc128w"]


def test_fused_bias_relu_epilogue_and_no_bias():
    rng = np.random.default_rng(3)
    x, w, b = operands(CASES[0], BF16, rng)
    y0, cache = LC.conv2d_forward_kernel(x, w, None, (1, 1), (1, 1), target="sim")
    y1, _ = LC.conv2d_forward_kernel(x, w, b, (1, 1), (1, 1), target="sim", relu=True)
    ref = conv_mod._conv2d_forward_reference(x, w, None, (1, 1), (1, 1))[0]
    assert cache.has_bias is False and np.array_equal(np.asarray(y0, np.float32), np.asarray(ref, np.float32))
    pre = np.asarray(y0, np.float32) + np.asarray(b, np.float32)[None, :, None, None]
    (ey, _, _), (my, _, _) = exact(x, w, b, np.zeros_like(y0), (1, 1), (1, 1), False)
    assert (np.asarray(y1, np.float32) >= 0).all() and (np.asarray(y1, np.float32) == 0).any()
    keep = pre > 0.1  # away from the kink, ReLU(y) is y
    tol = reduction_tolerance(my, ey, 16 * 9 + 1, BF16)
    assert np.all(np.abs(np.asarray(y1, np.float64) - ey)[keep] <= tol[keep])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("build", ["bf16", "tf32"])
def test_both_schedule_orders_give_the_same_bits(monkeypatch, build, variant):
    """Reversed thread order (and warp order) gives the same bits: the stages are ordered by
    cp.async waits and barriers, not by the order threads happen to run in."""
    monkeypatch.setattr(LC, "MIN_SPLIT_CHUNK", 32)
    dtype, tf32 = BUILDS[build]
    rng = np.random.default_rng(4)
    x, w, b = operands(CASES[4], dtype, rng)
    dy = rng.standard_normal((1, 5, 9, 9)).astype(dtype)
    results = []
    for order in ("forward", "reverse"):
        with kernels.sim_schedule(order):
            (y, dx, dw), _ = run_conv("sim", x, w, b, dy, (1, 1), (1, 1), tf32, variant=variant)
        results.append([np.asarray(a).tobytes() for a in (y, dx, dw)])
    assert results[0] == results[1]


# The wgmma tiles' publication of each k-tile's stage to the async proxy (kernels/tc_tile.cuh: the
# copies landed and rounded, then TcMultiply's publish(), fence.proxy.async.shared::cta in every
# thread, then the barrier, then the wgmmas), and two ways to lose it: no fence, or the fence after
# the barrier, where another thread's stores are not ordered before the wgmma.
PROXY_MUTATIONS = {
    "fence removed": ("__device__ static void publish() { fence_proxy_async(); }", "__device__ static void publish() {}"),
    "fence after the barrier": ("multiply.publish();\n        __syncthreads();",
                                "__syncthreads();\n        multiply.publish();"),
}


@pytest.mark.parametrize("build", ["bf16", "tf32"])
@pytest.mark.parametrize("mutation", list(PROXY_MUTATIONS))
def test_a_stage_not_published_to_the_async_proxy_is_reported(tmp_path, monkeypatch, build, mutation):
    """wgmma reads its operands through the async proxy, which sees the stages' generic-proxy writes
    (landed cp.async, the TF32 rounding stores) only after fence.proxy.async by each writing thread
    and a barrier after it (PTX ISA, memory consistency model, "proxies"). One memory in the
    simulator gives the right sums either way, and on an H100 a missing or late fence is a race: the
    simulator reports the wgmma's read of an unpublished byte, naming the kernel, the instruction,
    the shared address and the fence, in both schedule orders, and not for the kernel as it is."""
    if not kernels.wgmma_available("sim"):
        pytest.skip("the simulator runs the wgmma tiles as tc128 (an sm_75 build)")
    dtype, tf32 = BUILDS[build]
    rng = np.random.default_rng(6)
    x, w, b = operands(CASES[4], dtype, rng)
    dy = rng.standard_normal((1, 5, 9, 9)).astype(dtype)
    for order in ("forward", "reverse"):
        with kernels.sim_schedule(order):
            run_conv("sim", x, w, b, dy, (1, 1), (1, 1), tf32, variant="tcwg")
    kdir = tmp_path / "kernels"
    shutil.copytree(kernels.kernel_dir(), kdir, ignore=shutil.ignore_patterns("__pycache__"))
    old, new = PROXY_MUTATIONS[mutation]
    text = (kdir / "tc_tile.cuh").read_text()
    assert text.count(old) == 1, f"tc_tile.cuh no longer reads {old!r}: update the mutation"
    (kdir / "tc_tile.cuh").write_text(text.replace(old, new))
    monkeypatch.setenv("GPUCONV_KERNELS_DIR", str(kdir))
    for order in ("forward", "reverse"):
        with kernels.sim_schedule(order), pytest.raises(
                hostsim.SimulatorError,
                match=r"kernel conv2d_forward_tcwg, block \(\d+,\d+,\d+\), warp \d+: wgmma\.mma_async\S* \(.*tc_tile\.cuh:\d+\): "
                      r"operand [AB], element \(\d+, \d+\): shared address \d+ was last written through the generic "
                      r"proxy .* fence\.proxy\.async"):
            run_conv("sim", x, w, b, dy, (1, 1), (1, 1), tf32, variant="tcwg")


def test_weight_gradient_splits_add_in_a_fixed_order(monkeypatch, launches):
    monkeypatch.setattr(LC, "MIN_SPLIT_CHUNK", 32)
    rng = np.random.default_rng(5)
    x, w, _ = operands(CASES[0], BF16, rng)
    dy = rng.standard_normal((2, 24, 6, 6)).astype(BF16)
    dw = LC.conv2d_backward_weight_kernel(dy, x, w.shape, (1, 1), (1, 1), target="sim")
    (grid, _), = [(r.grid, r.block) for r in launches if r.name == "conv2d_backward_weight_tc"]
    assert grid[2] == 2  # 72 positions in two splits of whole 32-position k-tiles: 64 and 8
    monkeypatch.setattr(LC, "MIN_SPLIT_CHUNK", 10**6)
    one = LC.conv2d_backward_weight_kernel(dy, x, w.shape, (1, 1), (1, 1), target="sim")
    (_, _, edw), (_, _, mdw) = exact(x, w, np.zeros(24, BF16), dy, (1, 1), (1, 1), False)
    for got in (dw, one):
        assert_bound("dw", got, edw, mdw, 72, BF16, 1.0)


@pytest.mark.parametrize("dtype", [BF16, np.dtype(np.float16)], ids=["bf16", "f16"])
@pytest.mark.parametrize("variant", ["tc", "tc128", "tcwg"])
def test_weight_gradient_widened_as_written(monkeypatch, dtype, variant):
    """dw_dtype=float32: the reduce kernel writes the rounded weight gradient widened to float32,
    the bits of rounding to the low precision and then casting (no separate cast launch), in one
    and in several splits; the op and the Conv2d layer deliver it so to a float32 master."""
    rng = np.random.default_rng(6)
    x, w, _ = operands(CASES[0], dtype, rng)
    dy = rng.standard_normal((2, 24, 6, 6)).astype(dtype)
    with kernels.use_variant(dtype, conv2d_backward_weight=variant):
        for chunk in (32, 10**6):
            monkeypatch.setattr(LC, "MIN_SPLIT_CHUNK", chunk)
            rounded = LC.conv2d_backward_weight_kernel(dy, x, w.shape, (1, 1), (1, 1), target="sim")
            with kernels.launch_log() as log:
                wide = LC.conv2d_backward_weight_kernel(dy, x, w.shape, (1, 1), (1, 1), target="sim",
                                                        dw_dtype=np.float32)
            assert rounded.dtype == dtype and wide.dtype == np.float32
            assert wide.tobytes() == rounded.astype(np.float32).tobytes()
            assert log.names[-1] == "conv2d_tc_weight_reduce"
        with gpuconv.default_device("sim"):
            y, cache = gpuconv.ops.conv2d_forward(x, w, padding=1)
            _, dw, _ = gpuconv.ops.conv2d_backward(dy, cache, dw_dtype=np.float32)
            assert dw.dtype == np.float32 and dw.tobytes() == rounded.astype(np.float32).tobytes()
    _, ref, _ = conv_mod._conv2d_backward_reference(dy, conv_mod.Conv2dCache(x, w, False, (1, 1), (1, 1)),
                                                    True, False, True, np.float32)
    assert ref.dtype == np.float32 and np.array_equal(ref, conv_mod._conv2d_backward_reference(
        dy, conv_mod.Conv2dCache(x, w, False, (1, 1), (1, 1)))[1].astype(np.float32))
    with pytest.raises(ValueError, match="never narrowed"):
        gpuconv.ops.conv2d_backward(dy.astype(np.float32), conv_mod.Conv2dCache(
            x.astype(np.float32), w.astype(np.float32), False, (1, 1), (1, 1)), dw_dtype=dtype)


def test_defaults_and_choices(monkeypatch, launches):
    """"auto" is the default but in float64; where the operands have a tensor-core format it runs
    tc or tc128; strict float32 and float64 run v2 even when tc is chosen;
    GPUCONV_KERNEL_VARIANTS can key TF32 on its own."""
    assert [kernels.variant("conv2d_forward", d) for d in (BF16, np.float16, np.float32, np.float64)] == \
        ["auto", "auto", "auto", "v2"]
    assert kernels.variant("conv2d_forward", np.float32, tf32=True) == "auto"
    assert [kernels.resolve("conv2d_forward", d, False, 64) for d in (BF16, np.float16)] == ["tc", "tc"]
    assert kernels.resolve("conv2d_forward", np.float32, True, 256) == "tc128"
    rng = np.random.default_rng(6)
    x, w, b = operands(CASES[0], np.float32, rng)
    with kernels.use_variant(conv2d_forward="tc"):
        LC.conv2d_forward_kernel(x, w, b, (1, 1), (1, 1), False, target="sim")
        LC.conv2d_forward_kernel(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), (1, 1), (1, 1),
                                 target="sim")
    assert launches.names == ["conv2d_forward_v2", "conv2d_forward_v2"]
    with kernels.use_variant("tf32", conv2d_forward="v3"):
        assert kernels.variant("conv2d_forward", np.float32, tf32=True) == "v3"
        assert kernels.variant("conv2d_forward", np.float32) == "auto"
    monkeypatch.setenv("GPUCONV_KERNEL_VARIANTS", "conv2d_forward[tf32]=v2")
    assert kernels._env_variants() == {"conv2d_forward[tf32]": "v2"}


@pytest.mark.parametrize("bad", [np.float32, np.float64])
def test_no_tensor_core_format_is_declined_not_trapped(bad):
    assert not TC.supports(bad, False) and TC.supports(np.float32, True) and TC.supports(BF16, False)
    assert TC.forward(np.zeros((1, 8, 4, 4), bad), np.zeros((8, 8, 3, 3), bad), None, (1, 1), (1, 1), False, False,
                      target="sim") is None
    assert TC.backward_weight(np.zeros((1, 8, 2, 2), bad), np.zeros((1, 8, 4, 4), bad), (8, 8, 3, 3), (1, 1), (0, 0),
                              False, target="sim") is None


@pytest.mark.parametrize("build", list(BUILDS))
def test_no_input_channels_give_the_bias(target, build):
    """x with C = 0 channels: an empty reduction, y = b everywhere (the loaders would divide by the
    channel count: a SIGFPE on the simulator), dx empty, dw empty, db the sum of dy."""
    dtype, tf32 = BUILDS[build]
    x, w, b = on(target, np.ones((2, 0, 4, 4), dtype), np.ones((3, 0, 3, 3), dtype), np.arange(3).astype(dtype))
    with kernels.use_variant(conv2d_forward="tc"), kernels.use_variant("tf32", conv2d_forward="tc"):
        y, cache = LC.conv2d_forward_kernel(x, w, b, (1, 1), (1, 1), tf32, target=target)
        dx, dw, db = LC.conv2d_backward_kernel(on(target, np.ones((2, 3, 4, 4), dtype))[0], cache, True, tf32,
                                               target=target)
    assert np.array_equal(host(y).astype(np.float64), np.broadcast_to(np.arange(3.0)[:, None, None], (2, 3, 4, 4)))
    assert dx.shape == (2, 0, 4, 4) and dw.shape == (3, 0, 3, 3)
    assert np.array_equal(host(db).astype(np.float64), np.full(3, 32.0))


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 20), k=st.integers(1, 70), fh=st.integers(1, 3), fw=st.integers(1, 3),
       sh=st.integers(1, 3), sw=st.integers(1, 2), ph=st.integers(0, 2), pw=st.integers(0, 2), oh=st.integers(1, 5),
       ow=st.integers(1, 5), build=st.sampled_from(list(BUILDS)), channels_last=st.booleans(),
       variant=st.sampled_from(VARIANTS), seed=st.integers(0, 2**16))
def test_fuzz_against_the_float64_convolution(n, c, k, fh, fw, sh, sw, ph, pw, oh, ow, build, channels_last, variant,
                                              seed):
    dtype, tf32 = BUILDS[build]
    h, wd = (oh - 1) * sh + fh - 2 * ph, (ow - 1) * sw + fw - 2 * pw
    if h < 1 or wd < 1:
        h, wd, ph, pw = (oh - 1) * sh + fh, (ow - 1) * sw + fw, 0, 0
    rng = np.random.default_rng(seed)
    case = ((n, c, h, wd), (k, fh, fw), (sh, sw), (ph, pw))
    x, w, b = operands(case, dtype, rng)
    dy = rng.standard_normal((n, k, oh, ow)).astype(dtype)
    (y, dx, dw), _ = run_conv("sim", x, w, b, dy, (sh, sw), (ph, pw), tf32, channels_last, variant)
    (ey, edx, edw), (my, mdx, mdw) = exact(x, w, b, dy, (sh, sw), (ph, pw), tf32)
    assert_bound("y", y, ey, my + np.abs(b.astype(np.float64))[None, :, None, None], c * fh * fw + 1, dtype, 1.0)
    assert_bound("dx", dx, edx, mdx, k * fh * fw, dtype, 1.0)
    assert_bound("dw", dw, edw, mdw, n * oh * ow, dtype, 1.0)


def test_the_bound_catches_a_kernel_that_rounds_partial_sums():
    """The test's bound can fail: the same convolution with partial sums rounded to bfloat16 after
    every 16-element k-block (what a kernel accumulating in the storage type would do) exceeds it."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 64, 6, 6)).astype(BF16)
    w = rng.standard_normal((8, 64, 3, 3)).astype(BF16)
    (ey, _, _), (my, _, _) = exact(x, w, np.zeros(8, BF16), np.zeros((1, 8, 4, 4), BF16), (1, 1), (0, 0), False)
    xf, wf = x.astype(np.float32), w.astype(np.float32)
    bad = np.zeros((1, 8, 4, 4), np.float32)
    for c0 in range(0, 64, 16):
        part = conv_mod._conv2d_forward_reference(xf[:, c0:c0 + 16], wf[:, c0:c0 + 16], None, (1, 1), (0, 0))[0]
        bad = (bad + part).astype(BF16).astype(np.float32)
    tol = reduction_tolerance(my, ey, 64 * 9, BF16)
    assert not within_tolerance(bad, ey, tol)[0]


def test_launcher_shapes_match_the_kernel_tiles():
    """The launcher sizes grids and blocks from SHAPES; the kernels' tiles are the TcShape typedefs
    of tc_tile.cuh that conv2d_tc.cu instantiates per suffix. A change on one side only would
    launch blocks whose thread mappings leave outputs unwritten."""
    import re
    tile = (kernels.kernel_dir() / "tc_tile.cuh").read_text()
    conv = (kernels.kernel_dir() / "conv2d_tc.cu").read_text()
    shapes = {name: (int(bm), int(bn), 32 * int(wm) * int(wn))
              for bm, bn, wm, wn, name in re.findall(r"typedef TcShape<(\d+), (\d+), (\d+), (\d+)(?:, \w+)?(?:, \d+)?> (\w+);",
                                                     tile)}
    # each entry point, e.g. "conv2d_forward_tc128(...) { ... conv2d_forward_tc_body<TcTile128>"
    entries = dict(re.findall(r"\nconv2d_forward_(tc\w*)\(.*?conv2d_forward_tc_body<(\w+)>", conv, re.S))
    assert set(entries) == set(TC.SHAPES)
    for variant, shape in TC.SHAPES.items():
        assert shapes[entries[variant]] == shape, variant
    assert TC.KBYTES == int(re.search(r"#define TC_KBYTES (\d+)", tile).group(1))


@pytest.mark.parametrize("dtype, tf32", [(BF16, False), (np.float16, False), (np.float32, True)],
                         ids=["bf16", "f16", "tf32"])
def test_auto_runs_the_measured_tile_per_channel_count(dtype, tf32, launches):
    """"auto": 128x128 tensor-core tiles from 128 output channels of the GEMM on (K for the
    forward and the weight gradient, C for the data gradient), 64x64 below. The launches say so."""
    rng = np.random.default_rng(12)
    for c, k, want_fwd, want_data in [(8, 16, "tc", "tc"), (8, 128, "tc128", "tc"), (128, 16, "tc", "tc128")]:
        x = rng.standard_normal((1, c, 4, 4)).astype(np.float32 if tf32 else dtype)
        w = rng.standard_normal((k, c, 3, 3)).astype(np.float32 if tf32 else dtype)
        launches.clear()
        y, cache = LC.conv2d_forward_kernel(x, w, None, (1, 1), (1, 1), tf32, target="sim")
        LC.conv2d_backward_kernel(y, cache, True, tf32, target="sim")
        names = set(launches.names)
        assert f"conv2d_forward_{want_fwd}" in names and f"conv2d_backward_data_{want_data}" in names
        want_weight = "tc128" if k >= 128 else "tc"
        assert f"conv2d_backward_weight_{want_weight}" in names, names



@pytest.mark.parametrize("variant", ["v2", "v3"] + VARIANTS)
def test_more_column_tiles_than_grid_y_holds_run_untiled(target, variant, monkeypatch):
    """A GEMM with more column tiles than grid.y holds (65535: 4M channels, or a linear layer's
    in_features after a flatten) runs on v1, whose grid strides: cut grid.y to 1 here, every
    direction of a 300-filter convolution goes to v1 and gives the tiled kernels' results within
    the derived bound of two sums in different orders, each rounded once (and no launch of a tiled
    kernel fails)."""
    dtype, tf32 = (np.dtype(np.float32), False) if variant in ("v2", "v3") else (BF16, False)
    rng = np.random.default_rng(31)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in ((2, 136, 4, 5), (300, 136, 3, 3), (300,)))
    dy = rng.standard_normal((2, 300, 4, 5)).astype(dtype)
    tiled, _ = run_conv(target, x, w, b, dy, (1, 1), (1, 1), tf32, variant=variant)
    monkeypatch.setattr(kernels, "GRID_Y_MAX", 1)
    _forget_plans()  # (the plans hold the grid limit: a constant of CUDA's, which no run changes)
    untiled, log = run_conv(target, x, w, b, dy, (1, 1), (1, 1), tf32, variant=variant)
    assert log.names[:3] == ["conv2d_forward_v1", "conv2d_backward_data_v1", "conv2d_backward_weight_v1"]
    _, mags = exact(x, w, b, dy, (1, 1), (1, 1), tf32)
    factor = GPU_FACTOR if target == "cuda" and variant not in ("v2", "v3") else 1.0
    lengths = (136 * 9 + 1, 300 * 9, 2 * 4 * 5)  # y: C*FH*FW taps and the bias; dx: K*FH*FW; dw: N*OH*OW
    for name, a, b_, mag, length in zip(("y", "dx", "dw"), tiled, untiled, mags, lengths):
        a, b_ = host(a).astype(np.float64), host(b_).astype(np.float64)
        ok, worst = within_tolerance(a, b_, factor * reduction_tolerance(mag, b_, length, dtype))
        assert ok, f"{name}: tiled and untiled differ by {worst:.3g} x the derived bound"


@pytest.mark.parametrize("variant", ["v2", "v3"])
def test_an_image_past_int_elements_runs_untiled(target, variant, monkeypatch):
    """The CUDA-core tiles index within an image (x's C*H*W, dy's K*OH*OW) in int: an image past
    2^31 - 1 elements runs on v1, whose indices are 64-bit. Shown with the limit cut below these
    images (and nothing else: the GEMM's rows and reductions still fit), v1's results within the
    derived bound of the tiled kernels'."""
    rng = np.random.default_rng(37)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((2, 6, 9, 8), (5, 6, 3, 3), (5,)))
    dy = rng.standard_normal((2, 5, 9, 8)).astype(np.float32)
    tiled, log = run_conv(target, x, w, b, dy, (1, 1), (1, 1), False, variant=variant)
    assert log.names[:2] == [f"conv2d_forward_{variant}", f"conv2d_backward_data_{variant}"]
    images = {6 * 9 * 8, 5 * 9 * 8}  # x's and dy's elements per image
    fits = LC._fits_int
    monkeypatch.setattr(LC, "_fits_int", lambda *sizes: fits(*sizes) and not images & set(sizes))
    _forget_plans()
    untiled, log = run_conv(target, x, w, b, dy, (1, 1), (1, 1), False, variant=variant)
    _forget_plans()
    assert log.names[:3] == ["conv2d_forward_v1", "conv2d_backward_data_v1", "conv2d_backward_weight_v1"]
    _, mags = exact(x, w, b, dy, (1, 1), (1, 1), False)
    for name, a, b_, mag, length in zip(("y", "dx", "dw"), tiled, untiled, mags, (6 * 9 + 1, 5 * 9, 2 * 9 * 8)):
        a, b_ = host(a).astype(np.float64), host(b_).astype(np.float64)
        ok, worst = within_tolerance(a, b_, reduction_tolerance(mag, b_, length, np.float32))
        assert ok, f"{name}: tiled and untiled differ by {worst:.3g} x the derived bound"


@pytest.mark.parametrize("variant", ["v2", "v3"])
def test_no_input_channels_under_a_filter_past_int_taps_gives_the_bias(target, variant):
    """A convolution of a zero-channel input (x and w hold no elements) gives the bias (ReLU'd),
    however large its filter: one of 50000 x 50000 taps, past the int of the tiled kernels' tap
    decoding (FH*FW), runs on v1 and answers (max(b, 0) in every output) rather than refusing."""
    x, w = np.ones((2, 0, 50000, 50000), np.float32), np.ones((3, 0, 50000, 50000), np.float32)
    b = np.array([-1.5, 0.0, 2.25], np.float32)
    x, w, b = on(target, x, w, b)
    with kernels.launch_log() as log, kernels.use_variant(conv2d_forward=variant):
        y, _ = LC.conv2d_forward_kernel(x, w, b, (1, 1), (0, 0), False, target=target, relu=True)
    assert log.names == ["conv2d_forward_v1"]
    np.testing.assert_array_equal(host(y), np.broadcast_to(np.array([0.0, 0.0, 2.25], np.float32)[None, :, None, None],
                                                           (2, 3, 1, 1)))


def test_tile_grid_names_what_does_not_fit():
    assert kernels.tile_grid(100, 300, 64, 64, 4) == (2, 5, 4)
    assert kernels.tile_grid_fits(70, 65535 * 64, 64, 64) and not kernels.tile_grid_fits(70, 65535 * 64 + 1, 64, 64)
    with pytest.raises(ValueError, match=r"a GEMM of 70 x 4194241 outputs in 64x64 tiles, 1 splits, does not fit"):
        kernels.tile_grid(70, 65535 * 64 + 1, 64, 64)
    assert not kernels.tile_grid_fits(64, 64, 64, 64, 70000)


def test_bias_gradient_of_a_plane_past_int(monkeypatch):
    """The bias kernel takes OH*OW as an int: a larger plane is summed as the reference sums it
    (shown with the limit cut to 8 positions)."""
    from gpuconv.ops import _launch_conv2d as L
    dy = np.random.default_rng(3).standard_normal((2, 3, 3, 4)).astype(BF16)
    want = L.conv2d_backward_bias_kernel(dy, target="sim")
    monkeypatch.setattr(kernels, "INT_MAX", 8)
    with kernels.launch_log() as log:
        got = L.conv2d_backward_bias_kernel(dy, target="sim")
    assert log.names == [] and got.dtype == BF16
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))


def misaligned_copy(target, a, order=None):
    """``a``'s values in a view whose data starts 4 bytes past a 16-byte boundary (a slice of a
    larger buffer, as a user's view may), laid out in memory as ``a.transpose(order)`` is."""
    xp = np if target == "sim" else B_cupy()
    t = a if order is None else a.transpose(order)
    buf = xp.zeros(t.size + 32, a.dtype)
    skip = (-kernels.address(buf) % 16 + 4) // a.itemsize
    view = buf[skip:skip + t.size].reshape(t.shape)
    view[...] = xp.asarray(t)
    assert kernels.address(view) % 16 == 4
    return view if order is None else view.transpose(np.argsort(order))


def B_cupy():
    return gpuconv.backend.cupy_module()


@pytest.mark.parametrize("build", ["bf16", "tf32"])
def test_filters_not_on_a_16_byte_boundary_are_copied_for_the_loaders(target, build):
    """A 1x1 filter array that is already KRSC (any OIHW 1x1 array) or CRSK in memory needs no
    repacking, but cp.async reads it in 16-byte pieces: a view starting off a 16-byte boundary
    is copied first (a GPU would fault, the simulator reports it), and the results are those of
    an aligned copy."""
    dtype, tf32 = BUILDS[build]
    skip_without_tensor_cores(target, dtype, tf32)
    rng = np.random.default_rng(7)
    x, w, b = operands(((2, 8, 4, 4), (8, 1, 1), (1, 1), (0, 0)), dtype, rng)
    dy = rng.standard_normal((2, 8, 4, 4)).astype(dtype)
    want, _ = run_conv(target, x, w, b, dy, (1, 1), (0, 0), tf32)
    for order in (None, (1, 2, 3, 0)):  # KRSC memory (the forward's), CRSK memory (the data gradient's)
        wm = misaligned_copy(target, w, order)
        X, Bb, DY = on(target, x, b, dy)
        with kernels.use_variant(conv2d_forward="tc", conv2d_backward_data="tc", conv2d_backward_weight="tc"), \
                kernels.use_variant("tf32", conv2d_forward="tc", conv2d_backward_data="tc",
                                    conv2d_backward_weight="tc"):
            y, cache = LC.conv2d_forward_kernel(X, wm, Bb, (1, 1), (0, 0), tf32, target=target)
            dx, dw, _ = LC.conv2d_backward_kernel(DY, cache, True, tf32, target=target)
        for g, e in zip((y, dx, dw), want):
            assert np.asarray(host(g)).tobytes() == np.asarray(host(e)).tobytes()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", [CASES[1], CASES[3]], ids=[IDS[1], IDS[3]])
def test_sm75_build_runs_float16_on_tensor_cores_and_the_rest_on_cuda_cores(case, channels_last, monkeypatch):
    """The simulator's sm_75 build (a T4: float16 tensor cores alone, each m16n8k16 two m16n8k8,
    synchronous stage copies, no wgmma): a float16 convolution runs the mma.sync tiles (a wgmma
    tile as its fallback) in all three directions within the derived bound, over odd sizes and
    channel counts that are not multiples of 8; bfloat16 and TF32, asked for the same tiles, run
    the CUDA-core ones."""
    monkeypatch.setattr(LC, "MIN_SPLIT_CHUNK", 32)
    rng = np.random.default_rng([7, CASES.index(case)])
    _, (k, fh, fw), stride, pad = case
    with kernels.sim_arch(75):
        assert not kernels.wgmma_available("sim") and TC.engine("tcwg", np.float16, False, "sim", None) == "tc128"
        for variant, runs in (("tc", "tc"), ("tcwg", "tc128")):
            x, w, b = operands(case, np.float16, rng)
            oh, ow = conv_mod.output_hw(x.shape, (fh, fw), stride, pad)
            dy = rng.standard_normal((x.shape[0], k, oh, ow)).astype(np.float16)
            (y, dx, dw), log = run_conv("sim", x, w, b, dy, stride, pad, False, channels_last, variant)
            assert log.names[:3] == [f"conv2d_{d}_{runs}" for d in ("forward", "backward_data", "backward_weight")]
            assert layout.is_channels_last(y) == channels_last
            (ey, edx, edw), (my, mdx, mdw) = exact(x, w, b, dy, stride, pad, False)
            assert_bound("y", y, ey, my + np.abs(b.astype(np.float64))[None, :, None, None], x.shape[1] * fh * fw + 1,
                         np.float16, 1.0)
            assert_bound("dx", dx, edx, mdx, k * fh * fw, np.float16, 1.0)
            assert_bound("dw", dw, edw, mdw, x.shape[0] * oh * ow, np.float16, 1.0)
        if channels_last:
            return
        for dtype, tf32 in ((BF16, False), (np.dtype(np.float32), True)):
            x, w, b = operands(case, dtype, rng)
            dy = rng.standard_normal((x.shape[0], k, oh, ow)).astype(dtype)
            _, log = run_conv("sim", x, w, b, dy, stride, pad, tf32, channels_last, "tc")
            assert not [n for n in log.names if "_tc" in n], (dtype, log.names)


# ----------------------------------------------------------------------------- launch plans
def _recorded_launches(monkeypatch, target, dtype, tf32, through_ops=False):
    """The launches (kernel, grid, block, shared memory, device) of a forward and backward of one
    channels_last convolution geometry on ``target``, kernels stubbed (on 'cuda' nothing runs: the
    arrays are NumPy's); ``through_ops``: by the public ops (the precision mode decides TF32)."""
    seen = []

    def record(op_file, kernel, dt, tgt, grid, block, args, shared_mem=0, device=None, tf32=False):
        seen.append((kernel, tuple(grid), tuple(block), shared_mem, device, np.dtype(dt).name, tf32))

    rng = np.random.default_rng(5)
    x = layout.to_channels_last(rng.standard_normal((2, 8, 6, 6)).astype(dtype))
    w = (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(dtype)
    dy = layout.to_channels_last(rng.standard_normal((2, 16, 6, 6)).astype(dtype))
    with monkeypatch.context() as m:
        m.setattr(kernels, "launch", record)
        if through_ops:
            with gpuconv.default_device(target):
                _, cache = gpuconv.ops.conv2d_forward(x, w, None, stride=1, padding=1)
                gpuconv.ops.conv2d_backward(dy, cache)
        else:
            _, cache = LC.conv2d_forward_kernel(x, w, None, (1, 1), (1, 1), tf32, target=target)
            LC.conv2d_backward_kernel(dy, cache, True, tf32, True, None, target=target)
    return seen


def _a_table(variant):
    """An autotuning table that chooses ``variant`` for every direction of _recorded_launches' geometry."""
    geometry = kernels.conv_geometry((2, 8, 6, 6), (16, 8, 3, 3), (1, 1), (1, 1), True)
    return {kernels.tune_key(f, BF16, False, geometry, "sim"): variant
            for f in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")}


def _fake_gpus(monkeypatch, device):
    """'cuda' launches of NumPy arrays on fake GPUs: 0 a Hopper (wgmma, 132 SMs), 1 an A100 (108
    SMs, no wgmma), 2 a T4 (no bfloat16 tensor cores); ``device[0]`` is the arrays' GPU."""
    cc, sms = {0: 90, 1: 80, 2: 75}, {0: 132, 1: 108, 2: 40}
    monkeypatch.setattr(kernels, "array_device", lambda arrays: device[0])
    monkeypatch.setattr(kernels, "_compute_capability", lambda d: cc[d])
    monkeypatch.setattr(kernels, "_every_gpu_has_tensor_cores", lambda min_cc: False)
    monkeypatch.setattr(kernels, "_arch_specific_build", lambda d: cc[d] == 90)
    monkeypatch.setattr(kernels, "_device_sms", lambda d: sms[d])
    monkeypatch.setattr(kernels, "resident_blocks", lambda *args, **kw: 2)


def _forget_plans():
    LC._CHOSEN.clear()
    TC._PLANS.clear()
    kernels._variant_memo.clear()


@pytest.mark.parametrize("change", ["set_variant", "use_variant", "autotuning on", "table loaded", "precision mode",
                                    "sim_arch", "sim_arch tcwg", "GPUCONV_WGMMA", "device", "device T4",
                                    "MIN_SPLIT_CHUNK", "MIN_SPLIT_CHUNK fp32", "device T4 tf32"])
def test_a_launch_plan_follows_every_change_of_what_decides_it(monkeypatch, change):
    """The convolutions' memoized launch plans and variant choices are keyed by all that decides
    them: a second forward and backward of the same shapes after a change (a variant chosen,
    autotuning turned on, a tuning table loaded, the precision mode, the simulator's arch, the wgmma
    switch, another GPU, the weight gradient's split minimum) launches what the same launches with
    every memo emptied launch, which differs from the first's; with the change undone, the first's
    launches again. 'cuda' runs on faked GPUs with the kernels stubbed."""
    monkeypatch.setattr(kernels, "_TUNED_TARGETS", ("cuda", "sim"))  # (the table's choices count on 'sim')
    device = [0]
    target, dtype, tf32, through_ops = "sim", BF16, False, False
    if change == "precision mode":
        dtype, through_ops = np.dtype(np.float32), True
    if change == "MIN_SPLIT_CHUNK fp32":  # the CUDA-core tiles' plans
        dtype = np.dtype(np.float32)
    if change == "device T4 tf32":
        dtype, tf32 = np.dtype(np.float32), True
    if change in ("GPUCONV_WGMMA", "device", "device T4", "device T4 tf32"):
        target = "cuda"
        _fake_gpus(monkeypatch, device)
    monkeypatch.delenv("GPUCONV_WGMMA", raising=False)

    def apply(stack):
        if change == "set_variant":
            kernels.set_variant("conv2d_forward", "tc128")
            stack.callback(kernels.set_variant, "conv2d_forward", None)
        elif change == "use_variant":
            stack.enter_context(kernels.use_variant(conv2d_backward_data="tcwg", conv2d_backward_weight="tc128w"))
        elif change == "autotuning on":
            stack.enter_context(kernels.autotuning())
        elif change == "table loaded":
            kernels.load_tuned_variants(_a_table("tc128"))
            stack.callback(kernels.load_tuned_variants, _a_table("tc128w"))
        elif change == "precision mode":
            stack.enter_context(gpuconv.precision_mode("tf32"))
        elif change in ("sim_arch", "sim_arch tcwg"):
            stack.enter_context(kernels.sim_arch(75))
        elif change.startswith("MIN_SPLIT_CHUNK"):  # (a benchmark's validation changes it)
            stack.enter_context(monkeypatch.context()).setattr(LC, "MIN_SPLIT_CHUNK", 32)
        elif change == "GPUCONV_WGMMA":
            stack.enter_context(monkeypatch.context()).setenv("GPUCONV_WGMMA", "0")
        else:
            device[0] = 1 if change == "device" else 2
            stack.callback(device.__setitem__, 0, 0)

    def body():
        if change == "table loaded":
            kernels.set_autotune(True)
            kernels.load_tuned_variants(_a_table("tc128w"))
        elif change == "autotuning on":
            kernels.load_tuned_variants(_a_table("tc128w"))
        elif change == "precision mode":
            gpuconv.set_precision("fp32")
        elif change == "sim_arch tcwg":
            kernels.set_variant("conv2d_forward", "tcwg", np.float16)
        elif change in ("GPUCONV_WGMMA", "device"):
            for family in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight"):
                kernels.set_variant(family, "tcwg")
        dt = np.dtype(np.float16) if change == "sim_arch tcwg" else dtype
        record = lambda: _recorded_launches(monkeypatch, target, dt, tf32, through_ops)  # noqa: E731
        first = record()
        with contextlib.ExitStack() as stack:
            apply(stack)
            second = record()
            _forget_plans()
            anew = record()
        assert second == anew, change
        assert second != first, f"{change}: the case changes no launch"
        assert record() == first, f"{change}: undone"
        return first, second

    try:
        first, second = contextvars.copy_context().run(body)
    finally:
        kernels.clear_tuned()
    names = lambda launches: [k[0] for k in launches]  # noqa: E731
    expect = {"set_variant": ("conv2d_forward_tc", "conv2d_forward_tc128"),
              "use_variant": ("conv2d_backward_data_tc", "conv2d_backward_data_tcwg"),
              "autotuning on": ("conv2d_forward_tc", "conv2d_forward_tc128w"),
              "table loaded": ("conv2d_forward_tc128w", "conv2d_forward_tc128"),
              "precision mode": ("conv2d_forward_v2", "conv2d_forward_tc"),
              "sim_arch": ("conv2d_forward_tc", "conv2d_forward_v2"),
              "sim_arch tcwg": ("conv2d_forward_tcwg", "conv2d_forward_tc128"),
              "GPUCONV_WGMMA": ("conv2d_forward_tcwg", "conv2d_forward_tc128"),
              "device": ("conv2d_forward_tcwg", "conv2d_forward_tc128"),
              "device T4": ("conv2d_forward_tc", "conv2d_forward_v2"),
              "MIN_SPLIT_CHUNK": ("conv2d_backward_weight_tc", "conv2d_backward_weight_tc"),
              "MIN_SPLIT_CHUNK fp32": ("conv2d_backward_weight_v2", "conv2d_reduce_splits"),
              "device T4 tf32": ("conv2d_forward_tc", "conv2d_forward_v2")}[change]
    assert (expect[0] in names(first), expect[1] in names(second)) == (True, True), (names(first), names(second))


@pytest.mark.parametrize("dtype", [BF16, np.dtype(np.float16), np.dtype(np.float32)])
def test_the_channel_padding_copy_keeps_every_bit(dtype):
    """The operands' zero-padded NHWC copy (NumPy's: a pixel's few channels copied as one integer
    where they fill one, bfloat16 as its bits) holds x's bits, -0.0 and NaNs included, and zeros
    after them, for every channel count, layout and a misaligned view."""
    rng = np.random.default_rng(3)
    for c in range(1, 10):
        x = rng.standard_normal((2, c, 3, 4)).astype(dtype)
        x.flat[::5] = -0.0
        x.flat[1::7] = np.nan
        for arr in (x, gpuconv.to_channels_last(x), gpuconv.to_channels_last(np.concatenate([x, x]))[1:3]):
            cp = TC.padded_channels(c, dtype)
            got = TC._nhwc_padded(arr)
            want = np.zeros((2, 3, 4, cp), dtype)
            want[..., :c] = np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
            assert got.shape == want.shape and got.dtype == dtype and got.tobytes() == want.tobytes(), (c, arr.strides)
            assert got.flags.c_contiguous and kernels.address(got) % 16 == 0  # (cp.async's 16-byte pieces)
