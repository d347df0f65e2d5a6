"""The CUDA kernels themselves, run on the host simulator ('sim') against float64 NumPy references.

Every kernel and every variant, over shapes chosen to hit the edges of the 64x64 GEMM tiles and
of the stride/padding arithmetic; hypothesis fuzzing; the adjoint identity; bit-exact pooling and
ReLU; float64 gradient checks with the kernels in the loop; both simulator schedule orders. The
same bodies run on a GPU (marked ``gpu``) when one answers. Shapes stay tiny: the simulator
switches fibers at about a microsecond each.
"""
from __future__ import annotations

import re
import types

import ml_dtypes
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import gpuconv
from gpuconv import backend as B
from gpuconv import kernels
from gpuconv.data import crop_flip, normalize
from gpuconv.data._launch_augment import augment_batch_kernel
from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.ops import _dispatch
from gpuconv.ops import conv2d as conv_mod
from gpuconv.ops import _launch_conv2d as LC
from gpuconv.ops import _launch_pool2d as LP
from gpuconv.ops import _launch_relu as LR
from gpuconv.ops import _pool2d_reference as pool_ref
from gpuconv.ops import relu as relu_ref

TARGETS = ["sim", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not B.cuda_available(), reason=f"no GPU: {B.cuda_status()}")])]
HYPO = settings(max_examples=15, deadline=None)


def to(target, a):
    return B.cupy_module().asarray(a) if target == "cuda" else a


def host(a):
    return a.get() if B.is_cupy_array(a) else np.asarray(a)


# ----------------------------------------------------------------------------- float64 references
def out_size(i, f, s, p):
    assert (i + 2 * p - f) % s == 0, "test case does not satisfy (W - F + 2P)/S integral"
    return (i + 2 * p - f) // s + 1


def ref_conv(x, w, b, stride, pad):
    (sh, sw), (ph, pw) = stride, pad
    xpad = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    k, _, fh, fw = w.shape
    oh, ow = out_size(x.shape[2], fh, sh, ph), out_size(x.shape[3], fw, sw, pw)
    y = np.zeros((x.shape[0], k, oh, ow))
    for i in range(fh):
        for j in range(fw):
            y += np.einsum("nchw,kc->nkhw", xpad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw], w[:, :, i, j])
    return y if b is None else y + b[None, :, None, None]


def ref_conv_backward(dy, x, w, stride, pad):
    (sh, sw), (ph, pw) = stride, pad
    dy = dy.astype(np.float64)
    xpad = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxpad = np.zeros_like(xpad)
    dw = np.zeros(w.shape)
    _, _, oh, ow = dy.shape
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            sl = (slice(None), slice(None), slice(i, i + sh * oh, sh), slice(j, j + sw * ow, sw))
            dxpad[sl] += np.einsum("nkhw,kc->nchw", dy, w[:, :, i, j])
            dw[:, :, i, j] = np.einsum("nkhw,nchw->kc", dy, xpad[sl])
    dx = dxpad[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]]
    return dx, dw, dy.sum(axis=(0, 2, 3))


def conv_tol(c, fh, fw, dtype):
    """float32 against float64: rtol 1e-4, atol growing with the reduction length."""
    return (1e-4, 2e-6 * c * fh * fw) if dtype == np.float32 else (1e-12, 1e-12 * c * fh * fw)


# (N, C, H, W), (K, FH, FW), stride, padding
CONV_CASES = [
    ((2, 3, 5, 5), (4, 1, 1), 1, 0),              # 1x1
    ((1, 3, 7, 6), (5, 3, 3), 1, 1),              # 3x3, non-square, batch 1
    ((2, 2, 9, 11), (3, 5, 5), 2, 2),             # 5x5 stride 2
    ((1, 2, 9, 9), (2, 7, 7), 1, 3),              # 7x7 padding 3
    ((1, 3, 23, 23), (2, 11, 11), 4, 0),          # 11x11 stride 4 (AlexNet's first layer, shrunk)
    ((1, 2, 10, 8), (3, 3, 2), 3, (1, 0)),        # stride 3, non-square filter and padding
    ((1, 5, 6, 13), (65, 3, 3), 1, 1),            # M = 78 and K = 65 straddle the 64-wide tiles
    ((3, 7, 4, 4), (9, 2, 2), 2, 0),              # C*FH*FW = 28: partial 8-deep reduction round
    ((2, 4, 9, 5), (3, 3, 3), (2, 1), (0, 1)),    # different strides/paddings per axis
    ((1, 2, 6, 6), (3, 3, 3), 1, 3),              # padding 3 > F-1: border windows see only zeros
    ((1, 1, 3, 3), (1, 3, 3), 1, 0),              # a single output
    ((1, 2, 8, 8), (64, 3, 3), 1, 1),             # M = N*H*W = K = 64: exactly one full tile
    ((2, 8, 5, 5), (3, 3, 3), 1, 1),              # C*FH*FW = 72: two row tiles of backward-weight
]
CONV_IDS = [f"x{'x'.join(map(str, c[0]))}-w{'x'.join(map(str, c[1]))}-s{c[2]}-p{c[3]}" for c in CONV_CASES]


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def make_conv(case, dtype=np.float32, seed=0):
    xs, (k, fh, fw), stride, pad = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal((k, xs[1], fh, fw)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    return x, w, b, pair(stride), pair(pad)


CONV_VARIANTS = ["v1", "v2", "v3"]


def conv_variants(var):
    """use_variant(...) keywords running ``var`` in every conv2d family that has it."""
    return {f: var for f in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")
            if var in kernels.VARIANTS[f][0]}


# ----------------------------------------------------------------------------- convolution
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("variant", CONV_VARIANTS)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d_forward_and_backward(case, variant, target):
    x, w, b, stride, pad = make_conv(case)
    with kernels.use_variant(**conv_variants(variant)):
        y, cache = LC.conv2d_forward_kernel(to(target, x), to(target, w), to(target, b), stride, pad, target=target)
        assert type(y) is type(to(target, x)) and y.dtype == np.float32
        rtol, atol = conv_tol(x.shape[1], w.shape[2], w.shape[3], np.float32)
        np.testing.assert_allclose(host(y), ref_conv(x, w, b, stride, pad), rtol=rtol, atol=atol)
        dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
        dx, dw, db = LC.conv2d_backward_kernel(to(target, dy), cache, target=target)
    rdx, rdw, rdb = ref_conv_backward(dy, x, w, stride, pad)
    np.testing.assert_allclose(host(dx), rdx, rtol=1e-4, atol=2e-6 * w.shape[0] * w.shape[2] * w.shape[3])
    np.testing.assert_allclose(host(dw), rdw, rtol=1e-4, atol=2e-6 * dy[:, 0].size)
    np.testing.assert_allclose(host(db), rdb, rtol=1e-4, atol=2e-6 * dy[:, 0].size)


@pytest.mark.parametrize("variant", CONV_VARIANTS)
def test_conv2d_forward_no_bias_and_fused_relu(variant):
    x, w, b, stride, pad = make_conv(CONV_CASES[6])
    with kernels.use_variant(conv2d_forward=variant):
        y0, cache = LC.conv2d_forward_kernel(x, w, None, stride, pad, target="sim")
        y1, _ = LC.conv2d_forward_kernel(x, w, b, stride, pad, target="sim", relu=True)
    assert cache.has_bias is False
    np.testing.assert_allclose(y0, ref_conv(x, w, None, stride, pad), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y1, np.maximum(ref_conv(x, w, b, stride, pad), 0), rtol=1e-4, atol=1e-4)
    assert (y1 >= 0).all() and (y1 == 0).any()


# (N, C, H, W), (K, FH, FW), stride, padding: the tiled data gradient's phases of the strides
# (kernels/common.cuh's StridePhase), each of its own rows and taps; sizes floored as PyTorch floors them
PHASE_CASES = [
    ((2, 3, 8, 8), (5, 3, 3), (2, 2), (1, 1)),      # ResNet's downsampling 3x3 (a padding row unread)
    ((1, 3, 9, 7), (4, 3, 3), (2, 2), (0, 1)),      # odd sizes: the first phase a row longer than the second
    ((2, 3, 8, 8), (4, 1, 1), (2, 2), (0, 0)),      # its 1x1 shortcut: three phases no tap reaches (dx 0)
    ((1, 2, 9, 10), (3, 2, 3), (3, 2), (1, 2)),     # padding wider than the stride, rectangular everything
    ((1, 2, 10, 11), (3, 5, 4), (3, 3), (2, 1)),    # phases of 2, 2 and 1 taps a side
    ((1, 2, 11, 9), (3, 4, 4), (2, 3), (3, 0)),
    ((2, 2, 7, 7), (3, 3, 3), (1, 2), (1, 1)),      # a unit stride one way
    ((1, 2, 2, 2), (3, 3, 3), (3, 3), (1, 1)),      # extents shorter than the stride: empty phases
    ((1, 2, 1, 5), (3, 1, 3), (2, 2), (0, 1)),
    ((2, 66, 18, 17), (3, 3, 3), (2, 2), (1, 1)),   # phase rows (162) and channels (66) across tiles
]
PHASE_IDS = ["3x3s2", "odd", "1x1s2", "2x3s32p12", "5x4s3", "4x4s23", "s12", "short", "h1", "tiles"]


def phase_operands(case, dtype, seed, low=-3):
    """x, w and dy of small integers (every sum exact in float32), dy of the floored output's size."""
    xs, (k, fh, fw), stride, pad = case
    rng = np.random.default_rng(seed)
    oh, ow = conv_mod.output_hw(xs, (fh, fw), stride, pad, floor=True)
    return tuple(rng.integers(low, 4, s).astype(dtype) for s in (xs, (k, xs[1], fh, fw), (xs[0], k, oh, ow)))


def reference_dx(dy, x, w, stride, pad):
    """float64 dx of the floored convolution (a padding row or column the windows never reach: 0)."""
    f64 = [a.astype(np.float64) for a in (dy, x, w)]
    return conv_mod._conv2d_backward_reference(f64[0], conv_mod.Conv2dCache(f64[1], f64[2], False, stride, pad))[0]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16], ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("variant", ["v2", "v3"])
@pytest.mark.parametrize("case", PHASE_CASES, ids=PHASE_IDS)
def test_strided_data_gradient_runs_a_gemm_per_phase(case, variant, dtype, target, launches):
    """The tiled data gradient runs one unit-stride GEMM per phase of the strides (grid.z, over the
    rows of the largest phase), each input pixel given exactly the products of the taps that reach
    it (exact integers, below 256: exact in bfloat16 too), pixels no tap reaches 0; the caller's
    filters untouched (their taps are gathered into the phases' order in a copy)."""
    xs, (k, fh, fw), (sh, sw), pad = case
    x, w, dy = phase_operands(case, dtype, PHASE_CASES.index(case))
    w0 = w.copy()
    with kernels.use_variant(conv2d_backward_data=variant):
        dx = LC.conv2d_backward_data_kernel(to(target, dy), to(target, w), xs, (sh, sw), pad, target=target)
    tile, threads = (128, 256) if variant == "v3" else (64, 64)
    rows = xs[0] * -(-xs[2] // sh) * -(-xs[3] // sw)
    assert [r[:3] for r in launches if r.name.startswith("conv2d_")] == [
        (f"conv2d_backward_data_{variant}", (-(-rows // tile), -(-xs[1] // tile), sh * sw), (threads, 1, 1))]
    want = reference_dx(dy, x, w, (sh, sw), pad)
    np.testing.assert_array_equal(host(dx), want.astype(dtype))
    assert np.array_equal(host(w), w0)


def test_a_data_gradient_of_more_phases_than_a_grid_takes_runs_on_v1(launches):
    """sh * sw phases are grid.z blocks, at most 65535: beyond, the untiled v1 (its grid strides)."""
    xs, ws = (1, 2, 257, 258), (3, 2, 1, 1)
    x, w, dy = phase_operands((xs, ws[:1] + ws[2:], (256, 257), (0, 0)), np.float32, 5)
    with kernels.use_variant(conv2d_backward_data="v2"):
        dx = LC.conv2d_backward_data_kernel(dy, w, xs, (256, 257), (0, 0), target="sim")
    assert launches.names == ["conv2d_backward_data_v1"]
    np.testing.assert_array_equal(dx, reference_dx(dy, x, w, (256, 257), (0, 0)).astype(np.float32))


@pytest.mark.parametrize("variant", ["v2", "v3"])
@pytest.mark.parametrize("f", [3, 1], ids=["3x3s2", "1x1s2"])
def test_a_strided_data_gradient_multiplies_no_tap_by_a_pixel_it_does_not_reach(f, variant):
    """A tap meets only the input pixels of its phase: an infinite one makes infinities there alone,
    as in the float64 convolution. (A gather of dy over every tap would multiply the infinity by the
    zeros it fills in for the other phases' pixels: NaN at every pixel.)"""
    case = ((1, 4, 8, 8), (4, f, f), (2, 2), (f // 2, f // 2))
    x, w, dy = phase_operands(case, np.float32, 13, low=1)
    w[:, :, f // 2, f // 2] = np.inf  # the centre tap: the even rows and columns (padding f // 2)
    with kernels.use_variant(conv2d_backward_data=variant):
        dx = LC.conv2d_backward_data_kernel(dy, w, case[0], case[2], case[3], target="sim")
    with np.errstate(invalid="ignore", over="ignore"):
        want = reference_dx(dy, x, w, case[2], case[3])
    even = np.zeros(want.shape, bool)
    even[:, :, ::2, ::2] = True
    assert np.isposinf(want[even]).all() and np.isfinite(want[~even]).all()
    np.testing.assert_array_equal(dx, want.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16, np.float16],
                         ids=["f32", "f64", "bf16", "f16"])
@pytest.mark.parametrize("variant", ["v2", "v3"])
def test_conv2d_tiled_kernels_agree_in_both_schedule_orders(variant, dtype, monkeypatch):
    """Reversed thread order must give the same bits, in every build (each has its own tile
    widths and loaders): the tiles are ordered by barriers, not luck; the weight gradient in
    several splits, so that the ordered second pass runs in both orders too."""
    monkeypatch.setattr(LC, "MIN_SPLIT_CHUNK", 8)
    x, w, b, stride, pad = make_conv(CONV_CASES[6], dtype)
    dy = np.random.default_rng(2).standard_normal((1, 65, 6, 13)).astype(dtype)
    outs = []
    for order in ("forward", "reverse"):
        with kernels.sim_schedule(order), kernels.use_variant(**conv_variants(variant)):
            y, cache = LC.conv2d_forward_kernel(x, w, b, stride, pad, target="sim")
            outs.append((y,) + LC.conv2d_backward_kernel(dy, cache, target="sim"))
    for a, r in zip(*outs):
        np.testing.assert_array_equal(a, r)


def test_conv2d_v3_tiles_straddle_128_and_launch_256_threads(monkeypatch, launches):
    """v3 really runs (no silent fall-back), with its own geometry, on shapes whose GEMM rows
    (N*OH*OW = 162, N*H*W = 162, C*FH*FW = 144) and columns (K = 130) cross the 128-wide tiles."""
    x, w, b, stride, pad = make_conv(((2, 3, 9, 9), (130, 3, 3), 1, 1), seed=11)
    dy = np.random.default_rng(12).standard_normal((2, 130, 9, 9)).astype(np.float32)
    with kernels.use_variant(**conv_variants("v3")):
        y, cache = LC.conv2d_forward_kernel(x, w, b, stride, pad, target="sim")
        dx = LC.conv2d_backward_data_kernel(dy, w, x.shape, stride, pad, target="sim")
    assert [r[:3] for r in launches] == [("conv2d_forward_v3", (2, 2, 1), (256, 1, 1)),
                                         ("conv2d_backward_data_v3", (2, 1, 1), (256, 1, 1))]
    np.testing.assert_allclose(y, ref_conv(x, w, b, stride, pad), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, ref_conv_backward(dy, x, w, stride, pad)[0], rtol=1e-4, atol=2e-6 * 130 * 9)
    # Backward-weight: C*FH*FW = 144 rows and K = 130 columns, split along z, then reduced in order.
    x, w, b, stride, pad = make_conv(((1, 16, 5, 5), (130, 3, 3), 1, 1), seed=13)
    dy = np.random.default_rng(14).standard_normal((1, 130, 5, 5)).astype(np.float32)
    monkeypatch.setattr(LC, "MIN_SPLIT_CHUNK", 8)
    launches.clear()
    with kernels.use_variant(**conv_variants("v3")):
        dw = LC.conv2d_backward_weight_kernel(dy, x, w.shape, stride, pad, target="sim")
    assert launches.names == ["conv2d_backward_weight_v3", "conv2d_reduce_splits"]
    (_, grid, block, *_), _ = launches
    assert grid[:2] == (2, 2) and grid[2] > 1 and block == (256, 1, 1)
    np.testing.assert_allclose(dw, ref_conv_backward(dy, x, w, stride, pad)[1], rtol=1e-4, atol=1e-4)


def test_launcher_constants_match_the_kernel_defines():
    """The launchers size grids and blocks from constants that the .cu files #define; a change on
    one side only launches blocks that __launch_bounds__ (defined away on the simulator) or the
    v2/v3 thread mappings do not allow, which a GPU refuses or computes wrong."""
    text = "".join((kernels.kernel_dir() / f).read_text() for f in ("common.cuh", "conv2d.cu"))
    defines = {name: int(v) for name, v in re.findall(r"^#define (\w+) (\d+)\b", text, re.M)}
    assert kernels.BLOCK == LC.BLOCK == defines["GPUCONV_BLOCK"]
    assert LC.TILE == defines["CONV_BM"] == defines["CONV_BN"] and LC.GEMM_THREADS == defines["CONV_THREADS"]
    assert LC.TILE3 == defines["CONV3_BM"] == defines["CONV3_BN"] and LC.GEMM3_THREADS == defines["CONV3_THREADS"]
    assert LC.TILE_K == defines["CONV_BK"] == defines["CONV3_BK"]  # weight_splits rounds chunks to it


def test_conv2d_backward_weight_split_reduction(monkeypatch):
    """Several z-splits plus the ordered second pass equal the one-split result (and the reference)."""
    x, w, b, stride, pad = make_conv(CONV_CASES[6])
    dy = np.random.default_rng(3).standard_normal((1, 65, 6, 13)).astype(np.float32)
    _, cache = LC.conv2d_forward_kernel(x, w, b, stride, pad, target="sim")
    monkeypatch.setattr(LC, "MIN_SPLIT_CHUNK", 8)
    splits, chunk = LC.weight_splits(78, 2, "sim")
    assert splits > 1 and chunk % LC.TILE_K == 0 and (splits - 1) * chunk < 78 <= splits * chunk
    for order in ("forward", "reverse"):
        with kernels.sim_schedule(order):
            _, dw, _ = LC.conv2d_backward_kernel(dy, cache, target="sim")
        np.testing.assert_allclose(dw, ref_conv_backward(dy, x, w, stride, pad)[1], rtol=1e-4, atol=2e-4)


def test_weight_splits_never_leave_a_barely_begun_wave():
    """The split count plans whole waves of per_sm x SMs blocks: a split grid's last wave is at
    least half full (a wave barely begun costs as long as a full one), and the 128x128
    tensor-core grid of fast_net's 128->256 layer (18 tiles, which once took 15 splits: 270
    blocks where 264 fit) stays within one wave."""
    slots = kernels.NOMINAL_BLOCKS_PER_SM * kernels.NOMINAL_SMS
    for tiles in range(1, 3 * slots):
        splits, _ = LC.weight_splits(1 << 22, tiles, "sim")
        blocks = tiles * splits
        waves = -(-blocks // slots)
        assert splits == 1 or blocks / (waves * slots) >= 0.5, (tiles, splits)
        if tiles <= slots // 2:
            assert splits > 1
    splits, _ = LC.weight_splits(512 * 16 * 16, 18, "sim", step=32)
    assert 0.9 * slots <= 18 * splits <= slots
    wide = LC.weight_splits(512 * 16 * 16, 18, "sim", step=32, per_sm=4)[0]  # an SM holding 4 blocks
    assert 0.9 * 2 * slots <= 18 * wide <= 2 * slots
    # However many blocks an SM holds, the ordered second pass adds at most 2 x SMs partials.
    assert LC.weight_splits(1 << 22, 1, "sim", per_sm=16)[0] <= 2 * kernels.NOMINAL_SMS


@pytest.mark.parametrize("variant", CONV_VARIANTS)
@pytest.mark.parametrize("case", [CONV_CASES[2], CONV_CASES[5], CONV_CASES[8]], ids=["s2", "s3", "s21"])
def test_conv2d_adjoint_identity(case, variant):
    """<conv(x, w), g> = <x, dX(g)> = <w, dW(g)> in float64: backward is the true transpose."""
    x, w, _, stride, pad = make_conv(case, np.float64, seed=4)
    with kernels.use_variant(**conv_variants(variant)):
        y, cache = LC.conv2d_forward_kernel(x, w, None, stride, pad, target="sim")
        g = np.random.default_rng(5).standard_normal(y.shape)
        dx, dw, db = LC.conv2d_backward_kernel(g, cache, target="sim")
    assert db is None
    lhs = float(np.vdot(y, g))
    assert abs(lhs - float(np.vdot(x, dx))) <= 1e-10 * max(1.0, abs(lhs))
    assert abs(lhs - float(np.vdot(w, dw))) <= 1e-10 * max(1.0, abs(lhs))


def test_conv2d_gradients_float64_through_the_simulator():
    x, w, b, stride, pad = make_conv(((1, 2, 5, 4), (3, 3, 2), (2, 1), 1), np.float64, seed=6)

    def fwd(x_=None, w_=None, b_=None):
        return LC.conv2d_forward_kernel(x if x_ is None else x_, w if w_ is None else w_,
                                        b if b_ is None else b_, stride, pad, target="sim")[0]

    y, cache = LC.conv2d_forward_kernel(x, w, b, stride, pad, target="sim")
    dy = np.random.default_rng(7).standard_normal(y.shape)
    dx, dw, db = LC.conv2d_backward_kernel(dy, cache, target="sim")
    assert relative_error(dx, numerical_gradient_array(lambda a: fwd(x_=a), x.copy(), dy)) < 1e-7
    assert relative_error(dw, numerical_gradient_array(lambda a: fwd(w_=a), w.copy(), dy)) < 1e-7
    assert relative_error(db, numerical_gradient_array(lambda a: fwd(b_=a), b.copy(), dy)) < 1e-7


@HYPO
@given(n=st.integers(1, 2), c=st.integers(1, 4), k=st.integers(1, 5), fh=st.integers(1, 4), fw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 3), pw=st.integers(0, 3),
       oh=st.integers(1, 5), ow=st.integers(1, 5), variant=st.sampled_from(CONV_VARIANTS),
       split_chunk=st.sampled_from([8, LC.MIN_SPLIT_CHUNK]), seed=st.integers(0, 99))
def test_conv2d_fuzz_against_numpy(n, c, k, fh, fw, sh, sw, ph, pw, oh, ow, variant, split_chunk, seed):
    h, wd = (oh - 1) * sh + fh - 2 * ph, (ow - 1) * sw + fw - 2 * pw  # sizes that fit exactly
    assume(h >= 1 and wd >= 1)
    x, w, b, stride, pad = make_conv(((n, c, h, wd), (k, fh, fw), (sh, sw), (ph, pw)), seed=seed)
    default_chunk = LC.MIN_SPLIT_CHUNK
    LC.MIN_SPLIT_CHUNK = split_chunk  # 8: backward-weight splits (and conv2d_reduce_splits) at these sizes
    try:
        with kernels.use_variant(**conv_variants(variant)):
            y, cache = LC.conv2d_forward_kernel(x, w, b, stride, pad, target="sim")
            dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(np.float32)
            dx, dw, db = LC.conv2d_backward_kernel(dy, cache, target="sim")
    finally:
        LC.MIN_SPLIT_CHUNK = default_chunk
    refs = (ref_conv(x, w, b, stride, pad),) + ref_conv_backward(dy, x, w, stride, pad)
    for got, ref in zip((y, dx, dw, db), refs):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- pooling
POOL_CASES = [((2, 3, 7, 7), (3, 3), (2, 2)),   # overlapping windows
              ((1, 2, 9, 9), (3, 3), (3, 3)),
              ((2, 1, 6, 6), (2, 2), (1, 1)),   # overlap 1
              ((1, 2, 5, 9), (2, 3), (1, 2)),   # non-square everything
              ((1, 1, 4, 4), (4, 4), (4, 4))]   # global pooling


def _max_reference(x, ks, st_):
    return pool_ref._max_pool2d_forward_reference(x, ks, st_)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: str(c))
def test_max_pool2d_bit_exact(case, target):
    shape, ks, st_ = case
    rng = np.random.default_rng(8)
    x = np.round(rng.standard_normal(shape) * 2).astype(np.float32)  # few distinct values: ties
    x.reshape(-1)[rng.integers(0, x.size, 2)] = np.nan                # NaN must propagate
    y, cache = LP.max_pool2d_forward_kernel(to(target, x), ks, st_, target=target)
    ry, rcache = _max_reference(x, ks, st_)
    np.testing.assert_array_equal(host(y), ry)
    np.testing.assert_array_equal(host(cache.argmax), rcache.argmax)
    assert cache.argmax.dtype == np.int32 and cache.x_shape == shape
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = LP.max_pool2d_backward_kernel(to(target, dy), cache, target=target)
    np.testing.assert_array_equal(host(dx), pool_ref._max_pool2d_backward_reference(dy, rcache))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: str(c))
def test_avg_pool2d(case, target):
    shape, ks, st_ = case
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape).astype(np.float32)
    y, cache = LP.avg_pool2d_forward_kernel(to(target, x), ks, st_, target=target)
    ry, rcache = pool_ref._avg_pool2d_forward_reference(x, ks, st_)
    # Bit-identical: same summation order, same rounded reciprocal, no FMA contraction (mul_rn).
    np.testing.assert_array_equal(host(y), ry)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = LP.avg_pool2d_backward_kernel(to(target, dy), cache, target=target)
    np.testing.assert_array_equal(host(dx), pool_ref._avg_pool2d_backward_reference(dy, rcache))
    if st_ == ks:  # non-overlapping windows tile the input: the gradient mass is conserved
        np.testing.assert_allclose(host(dx).sum(), dy.sum(), rtol=1e-5, atol=1e-6)


def test_pool_gradients_float64_through_the_simulator():
    rng = np.random.default_rng(10)
    x = rng.permutation(2 * 7 * 7).reshape(1, 2, 7, 7) * 0.1 + 0.01  # distinct: no ties at the kink
    for fwd, bwd in ((LP.max_pool2d_forward_kernel, LP.max_pool2d_backward_kernel),
                     (LP.avg_pool2d_forward_kernel, LP.avg_pool2d_backward_kernel)):
        y, cache = fwd(x, (3, 3), (2, 2), target="sim")
        dy = rng.standard_normal(y.shape)
        num = numerical_gradient_array(lambda a: fwd(a, (3, 3), (2, 2), target="sim")[0], x.copy(), dy)
        assert relative_error(bwd(dy, cache, target="sim"), num) < 1e-8


@HYPO
@given(n=st.integers(1, 2), c=st.integers(1, 3), kh=st.integers(1, 3), kw=st.integers(1, 3),
       sh=st.integers(1, 3), sw=st.integers(1, 3), oh=st.integers(1, 4), ow=st.integers(1, 4), seed=st.integers(0, 99))
def test_pool2d_fuzz_against_numpy(n, c, kh, kw, sh, sw, oh, ow, seed):
    shape = (n, c, (oh - 1) * sh + kh, (ow - 1) * sw + kw)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    y, cache = LP.max_pool2d_forward_kernel(x, (kh, kw), (sh, sw), target="sim")
    ry, rcache = _max_reference(x, (kh, kw), (sh, sw))
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(cache.argmax, rcache.argmax)
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(np.float32)
    dx = LP.max_pool2d_backward_kernel(dy, cache, target="sim")
    np.testing.assert_array_equal(dx, pool_ref._max_pool2d_backward_reference(dy, rcache))
    np.testing.assert_allclose(dx.sum(), dy.sum(), rtol=1e-5, atol=1e-5)  # every dy lands exactly once
    ya, acache = LP.avg_pool2d_forward_kernel(x, (kh, kw), (sh, sw), target="sim")
    np.testing.assert_allclose(ya, pool_ref._avg_pool2d_forward_reference(x, (kh, kw), (sh, sw))[0], rtol=1e-6, atol=1e-7)
    dxa = LP.avg_pool2d_backward_kernel(dy, acache, target="sim")
    np.testing.assert_allclose(dxa, pool_ref._avg_pool2d_backward_reference(dy, acache), rtol=1e-6, atol=1e-7)


def _padded_pool_reference(x, ks, st_, pad):
    """float64 max (with window-local argmax) and average (count_include_pad) over a padded input."""
    (kh, kw), (sh, sw), (ph, pw) = ks, st_, pad
    xm = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    xa = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (xm.shape[2] - kh) // sh + 1, (xm.shape[3] - kw) // sw + 1
    taps = [(i, j) for i in range(kh) for j in range(kw)]
    win = lambda a: np.stack([a[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] for i, j in taps], -1)  # noqa: E731
    return win(xm).max(-1), win(xm).argmax(-1), win(xa).mean(-1), taps, (oh, ow)


@pytest.mark.parametrize("cl", [0, 1], ids=["nchw", "nhwc"])
def test_pool_kernels_with_padding(cl):
    """The kernels take a padding (the ops pass 0): padded cells never win a max, count in an
    average; in either memory layout (cl: channels_last), with the same results."""
    rng = np.random.default_rng(15)
    x = rng.standard_normal((2, 2, 5, 6))
    ks, st_, pad = (3, 2), (2, 2), (1, 1)
    ymax, amax, yavg, taps, (oh, ow) = _padded_pool_reference(x, ks, st_, pad)
    dims = tuple(np.int32(v) for v in (2, 2, 5, 6, oh, ow, *ks, *st_, *pad, cl))

    def memory(a):  # what the kernel indexes: NHWC memory for cl
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if cl else a

    def logical(a):
        return a.transpose(0, 3, 1, 2) if cl else a

    y, arg, ya = (memory(np.empty((2, 2, oh, ow), t)) for t in (np.float64, np.int32, np.float64))
    grid, block = kernels.grid_1d(y.size)
    kernels.launch("pool2d", "max_pool2d_forward", np.float64, "sim", grid, block, (memory(x), y, arg) + dims)
    kernels.launch("pool2d", "avg_pool2d_forward", np.float64, "sim", grid, block, (memory(x), ya) + dims)
    np.testing.assert_array_equal(logical(y), ymax)
    np.testing.assert_array_equal(logical(arg), amax)
    np.testing.assert_allclose(logical(ya), yavg, rtol=1e-14)
    dy = rng.standard_normal(ymax.shape)
    dmax, davg = np.zeros((2, 2, 7, 8)), np.zeros((2, 2, 7, 8))  # gradients on the padded grid, then cropped
    for t, (i, j) in enumerate(taps):
        sl = (slice(None), slice(None), slice(i, i + 2 * oh, 2), slice(j, j + 2 * ow, 2))
        dmax[sl] += np.where(amax == t, dy, 0)
        davg[sl] += dy / 6
    dx, dxa = memory(np.empty_like(x)), memory(np.empty_like(x))
    grid, block = kernels.grid_1d(x.size)
    kernels.launch("pool2d", "max_pool2d_backward", np.float64, "sim", grid, block, (memory(dy), arg, dx) + dims)
    kernels.launch("pool2d", "avg_pool2d_backward", np.float64, "sim", grid, block, (memory(dy), dxa) + dims)
    np.testing.assert_allclose(logical(dx), dmax[:, :, 1:-1, 1:-1], rtol=1e-14)
    np.testing.assert_allclose(logical(dxa), davg[:, :, 1:-1, 1:-1], rtol=1e-14, atol=1e-15)


# ----------------------------------------------------------------------------- ReLU
SPECIAL = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.0, -3.0], np.float32)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("variant", ["v1", "v2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 3, 4, 9, 37, 1030])
def test_relu_bit_exact(n, dtype, variant, target):
    rng = np.random.default_rng(n)
    x = np.resize(np.concatenate([SPECIAL, rng.standard_normal(n)]).astype(dtype), n)
    rng.shuffle(x)
    dy = rng.standard_normal(n).astype(dtype)
    with kernels.use_variant(relu_forward=variant, relu_backward=variant):
        y, cache = LR.relu_forward_kernel(to(target, x), target=target)
        dx = LR.relu_backward_kernel(to(target, dy), cache, target=target)
    ry, rcache = relu_ref._relu_forward_reference(x)
    np.testing.assert_array_equal(host(y), ry)
    assert not np.signbit(host(y)[x == 0]).any()
    np.testing.assert_array_equal(host(dx), relu_ref._relu_backward_reference(dy, rcache))


@pytest.mark.parametrize("n", [1, 9, 1030])
def test_relu_v2_float64_entry_points_on_32_byte_aligned_arrays(n, launches):
    """float64's v2 kernels load four elements (32 bytes) at a time: NumPy aligns its arrays to 16
    bytes only, so the launchers take v1 on the simulator for most float64 arrays (CuPy's are
    256-byte aligned: a GPU runs v2). Launched here on arrays aligned as on a GPU, bit for bit."""
    def aligned(a):
        buf = np.zeros(a.nbytes + 64, np.uint8)
        start = -buf.__array_interface__["data"][0] % 64
        out = buf[start:start + a.nbytes].view(a.dtype)
        out[...] = a
        return out

    rng = np.random.default_rng(n)
    x = np.resize(np.concatenate([SPECIAL, rng.standard_normal(n)]).astype(np.float64), n)
    rng.shuffle(x)
    x, dy, y, dx = aligned(x), aligned(rng.standard_normal(n)), aligned(np.full(n, 7.0)), aligned(np.full(n, 7.0))
    assert LR._pick("relu_forward", (x, y)) == LR._pick("relu_backward", (dy, x, dx)) == "v2"
    kernels.launch_1d("relu", "relu_forward_v2", "sim", (x, y), per_thread=4)
    kernels.launch_1d("relu", "relu_backward_v2", "sim", (dy, x, dx), per_thread=4)
    assert launches.names == ["relu_forward_v2", "relu_backward_v2"] and {r.build for r in launches} == {"double"}
    ry, rcache = relu_ref._relu_forward_reference(x)
    assert y.tobytes() == ry.tobytes()
    assert dx.tobytes() == relu_ref._relu_backward_reference(dy, rcache).tobytes()


def test_relu_misaligned_views_fall_back_to_v1(launches):
    base = np.random.default_rng(11).standard_normal(41).astype(np.float32)
    x = base[1:].reshape(4, 10)  # 4-byte offset: not 16-byte aligned
    assert LR._pick("relu_forward", (x,)) == "v1"
    y, _ = LR.relu_forward_kernel(x, target="sim")
    assert launches.names == ["relu_forward_v1"]
    np.testing.assert_array_equal(y, np.maximum(x, 0))


@HYPO
@given(n=st.integers(1, 3), c=st.integers(1, 5), hw=st.integers(1, 40), seed=st.integers(0, 99),
       variant=st.sampled_from(["v1", "v2"]), offset=st.integers(0, 3))
def test_relu_fuzz_against_numpy(n, c, hw, seed, variant, offset):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n * c * hw + offset).astype(np.float32)[offset:].reshape(n, c, hw)  # any alignment
    dy = rng.standard_normal(x.shape).astype(np.float32)
    with kernels.use_variant(relu_forward=variant, relu_backward=variant):
        y, cache = LR.relu_forward_kernel(x, target="sim")
        dx = LR.relu_backward_kernel(dy, cache, target="sim")
    np.testing.assert_array_equal(y, np.maximum(x, np.float32(0)))
    np.testing.assert_array_equal(dx, np.where(x > 0, dy, np.float32(0)))


def test_relu_gradient_float64_through_the_simulator():
    x = np.random.default_rng(13).permutation(30).reshape(2, 15) * 0.1 - 1.45  # no zero: away from the kink
    y, cache = LR.relu_forward_kernel(x, target="sim")
    dy = np.random.default_rng(14).standard_normal(x.shape)
    num = numerical_gradient_array(lambda a: LR.relu_forward_kernel(a, target="sim")[0], x.copy(), dy)
    assert relative_error(LR.relu_backward_kernel(dy, cache, target="sim"), num) < 1e-8


# ----------------------------------------------------------------------------- integration, registry
def test_ops_run_the_kernels_under_the_sim_device(launches):
    from gpuconv import ops
    x, w, b, stride, pad = make_conv(CONV_CASES[1])
    with gpuconv.default_device("sim"):
        y, cache = ops.conv2d_forward(x, w, b, stride=1, padding=1)
        dx, dw, db = ops.conv2d_backward(np.ones_like(y), cache)
        r, rc = ops.relu_forward(y)
        p, pc = ops.max_pool2d_forward(x[:, :, :6], 2)
    data = "v1" if x.shape[1] < kernels.AUTO_V1_BELOW else "v2"  # "auto": v1 into few channels
    assert set(launches.names) >= {"conv2d_forward_v2", f"conv2d_backward_data_{data}", "conv2d_backward_weight_v2",
                                   "conv2d_backward_bias", "relu_forward_v2", "max_pool2d_forward"}
    launches.clear()
    ops.conv2d_forward(x, w, b, stride=1, padding=1)  # default device 'cpu': the NumPy reference
    assert launches.names == [] and launches.dispatches == []
    for op in ("conv2d_forward", "conv2d_backward", "max_pool2d_forward", "max_pool2d_backward",
               "avg_pool2d_forward", "avg_pool2d_backward", "relu_forward", "relu_backward",
               "dropout_forward", "dropout_backward"):
        assert _dispatch.get_launcher(op, "sim") is not None and _dispatch.get_launcher(op, "cuda") is not None


def test_variant_selection_and_errors(monkeypatch):
    assert kernels.variant("conv2d_forward") == "auto"
    with kernels.use_variant(conv2d_forward="v1"):
        assert kernels.variant("conv2d_forward") == "v1"
    assert kernels.variant("conv2d_forward") == "auto"
    with pytest.raises(ValueError, match=r"conv2d_forward has variants auto, v1, v2, v3, tc, tc128, tc128w, tcwg, tcwg256, tcwgn64, tcwgm64, not 'v9'"):
        kernels.set_variant("conv2d_forward", "v9")
    with pytest.raises(ValueError, match=r"kernel family 'conv3d' has no variants"):
        kernels.variant("conv3d")
    with kernels.use_variant(conv2d_forward="v1"):  # dropping a choice of a misspelt family: refused, not a no-op
        with pytest.raises(ValueError, match=r"set_variant: kernel family 'conv2d_fwd' has no variants; families: conv2d_forward"):
            kernels.set_variant("conv2d_fwd", None)
        assert kernels.variant("conv2d_forward") == "v1"
    monkeypatch.setenv("GPUCONV_KERNEL_VARIANTS", "relu_forward=v1, conv2d_forward=v1")
    assert kernels._env_variants() == {"relu_forward": "v1", "conv2d_forward": "v1"}
    monkeypatch.setenv("GPUCONV_KERNEL_VARIANTS", "relu_forward")
    with pytest.raises(ValueError, match="must read family=variant"):
        kernels._env_variants()
    # A tensor-core tile chosen for strict float32 or float64 alone would never run: refused, with
    # the TF32 key named; chosen for every dtype (or for TF32, bfloat16) it is taken.
    for dt in (np.float32, np.float64):
        with pytest.raises(ValueError, match=r"conv2d_forward\[float(32|64)\]=tc128 would never run.*"
                                             r"conv2d_forward\[tf32\]=tc128.*\(auto, v1, v2, v3\)"):
            kernels.set_variant("conv2d_forward", "tc128", dtype=dt)
        with pytest.raises(ValueError, match="would never run"), kernels.use_variant(dt, conv2d_backward_weight="tc"):
            pass
    # A TF32 choice for a family with no TF32 mode (ReLU runs float32 arrays as float32) would never run: refused.
    with pytest.raises(ValueError, match=r"relu_forward\[tf32\]=v1 would never run.*relu_forward\[float32\]=v1"):
        kernels.set_variant("relu_forward", "v1", dtype="tf32")
    with pytest.raises(ValueError, match="would never run"), kernels.use_variant("tf32", relu_backward="v1"):
        pass
    monkeypatch.setenv("GPUCONV_KERNEL_VARIANTS", "relu_forward[tf32]=v1")
    with pytest.raises(ValueError, match=r"GPUCONV_KERNEL_VARIANTS: relu_forward\[tf32\]=v1 would never run"):
        kernels._env_variants()
    monkeypatch.setenv("GPUCONV_KERNEL_VARIANTS", "conv2d_forward[float32]=tc")
    with pytest.raises(ValueError, match=r"GPUCONV_KERNEL_VARIANTS: conv2d_forward\[float32\]=tc would never run"):
        kernels._env_variants()
    monkeypatch.setenv("GPUCONV_KERNEL_VARIANTS", "conv2d_forward[tf32]=tc,conv2d_forward[bfloat16]=tcwg,conv2d_forward=tc128")
    assert kernels._env_variants() == {"conv2d_forward[tf32]": "tc", "conv2d_forward[bfloat16]": "tcwg",
                                       "conv2d_forward": "tc128"}
    with kernels.use_variant(conv2d_forward="tc"):
        assert kernels.variant("conv2d_forward", np.float32) == "tc"


def test_registry_sources_and_memoization():
    src = kernels.build_source("pool2d", np.float64)
    assert src.startswith("#define GPUCONV_STORAGE double\n#define GPUCONV_ACC double\n#define GPUCONV_TF32 0\n")
    assert kernels.build_source("relu", ml_dtypes.bfloat16).startswith("#define GPUCONV_STORAGE bf16_t\n#define GPUCONV_ACC float\n")
    assert kernels.build_source("relu", np.float16).startswith("#define GPUCONV_STORAGE half_t\n#define GPUCONV_ACC float\n")
    assert "#define GPUCONV_TF32 1\n" in kernels.build_source("conv2d", np.float32, tf32=True)
    assert '#line 1 "kernels/common.cuh"' in src and '#line 1 "kernels/pool2d.cu"' in src
    assert "#include" not in src.replace("no #include", "")
    assert (kernels.kernel_dir() / "conv2d.cu").is_file()
    assert kernels.get_module("relu", np.float32, "sim") is kernels.get_module("relu", np.float32, "sim")
    assert kernels.get_module("relu", np.float64, "sim") is not kernels.get_module("relu", np.float32, "sim")
    # Memoized per dtype and TF32: five builds of one file, each its own module.
    mods = {(dt, tf32): kernels.get_module("relu", dt, "sim", tf32=tf32)
            for dt, tf32 in [(np.float32, False), (np.float32, True), (np.float64, False),
                             (ml_dtypes.bfloat16, False), (np.float16, False)]}
    assert len({id(m) for m in mods.values()}) == 5
    assert kernels.get_module("relu", ml_dtypes.bfloat16, "sim") is mods[(ml_dtypes.bfloat16, False)]
    with pytest.raises(TypeError, match=r"kernel dtype int32 is not supported: the kernels build for float64, "
                                        r"float32, bfloat16 \(ml_dtypes.bfloat16\) or float16; convert with "
                                        r"x.astype\(np.float32\)"):
        kernels.build_source("relu", np.int32)
    with pytest.raises(ValueError, match=r"dtype bfloat16 has no TF32 build"):
        kernels.build_source("relu", ml_dtypes.bfloat16, tf32=True)
    with pytest.raises(ValueError, match="kernel target 'gpu'"):
        kernels.get_module("relu", np.float32, "gpu")
    with pytest.raises(FileNotFoundError, match="the kernel files are " + ", ".join(kernels.KERNEL_FILES[:4])):
        kernels.build_source("conv3d")


def test_sim_compile_error_names_file_and_line(tmp_path, monkeypatch):
    src = kernels.kernel_dir()
    (tmp_path / "common.cuh").write_text((src / "common.cuh").read_text())
    (tmp_path / "broken_sim.cu").write_text('extern "C" __global__ void k(storage_t* y) {\n'
                                            "    y[0] = undefined_name;\n}\n")
    monkeypatch.setenv("GPUCONV_KERNELS_DIR", str(tmp_path))
    with pytest.raises(kernels.KernelCompileError, match=r"kernels/broken_sim\.cu:2.*undefined_name"):
        kernels.get_function("broken_sim", "k", np.float32, "sim")((1, 1, 1), (1, 1, 1), (np.zeros(1, np.float32),))


@pytest.mark.parametrize("device", ["sim", pytest.param("cuda", marks=TARGETS[1].marks)])
def test_training_steps_on_the_kernels_match_numpy(device):
    """A few SGD steps of the seed net with every conv/ReLU/pool on the kernels: the same losses."""
    from gpuconv import models, ops, optim
    rng = np.random.default_rng(16)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, 4)
    losses = {}
    for dev in ("cpu", device):
        with gpuconv.default_device(dev):
            model = models.seed_net(seed=0)
            opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            xd, yd = gpuconv.to_device(x), gpuconv.to_device(labels)
            losses[dev] = []
            for _ in range(3):
                loss, dlogits = ops.softmax_cross_entropy(model(xd), yd)
                model.zero_grad()
                model.backward(dlogits)
                opt.step()
                losses[dev].append(gpuconv.item(loss))
    assert losses["cpu"][-1] < losses["cpu"][0]
    # The loss falls to about 1e-5, a difference of O(1) terms (a logit against the log-sum-exp):
    # its rounding is absolute, a few float32 ulps of 1 whatever order the sums take.
    np.testing.assert_allclose(losses[device], losses["cpu"], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- the benchmark's validation
def _bench():
    from test_benchmarks import load
    return load("bench_conv2d")


def test_benchmark_validation_runs_on_the_simulator(monkeypatch, capsys):
    bench = _bench()
    assert bench.validate(bench.TINY_LAYERS[:2], 2, "sim") == []
    assert bench.main(["--validate-only", "--target", "sim"]) == 0
    # The validation can fail: a reference off by one is reported per layer, direction and variant.
    real = bench.reference
    monkeypatch.setattr(bench, "reference", lambda *a, **k: (lambda r: (r[0] + 1.0,) + r[1:])(real(*a, **k)))
    failures = bench.validate(bench.TINY_LAYERS[:1], 2, "sim")
    assert len(failures) == 9 and "fp32 3->4 at 8x8 forward v1" in failures[0]  # 3 directions x v1-v3
    assert any("backward_weight v3" in f for f in failures)
    # in bf16 the tensor-core kernels are validated too (3 directions x v2, v3 and the tensor-core
    # tiles), within the bound for bfloat16 outputs
    failures = bench.validate(bench.TINY_LAYERS[:1], 2, "sim", precisions=("bf16",))
    assert len(failures) == 3 * (2 + len(kernels.TC_VARIANTS))
    assert any("bf16 3->4 at 8x8 backward_weight tcwgm64" in f for f in failures)
    if not B.cuda_available():
        assert bench.main([]) == 2
        assert "no usable GPU" in capsys.readouterr().err


def test_benchmark_loop_times_every_variant_and_names_the_fastest(monkeypatch):
    """The GPU timing loop with CuPy's events faked (no GPU here): every variant of every direction
    gets a row, v1 is timed over few calls, and ``fastest`` picks per layer and direction."""
    bench = _bench()
    calls = []

    class FakeEvent:
        def record(self):
            pass

        def synchronize(self):
            pass

    class FakeCuda:
        Event = FakeEvent

        @staticmethod
        def get_elapsed_time(start, stop):
            return 2.0 * len(calls)  # ms: grows with the work done, enough to rank variants

    class FakeCupy:
        cuda = FakeCuda
        ndarray = type("NotACupyArray", (), {})  # the host arrays stay NumPy's

        @staticmethod
        def asarray(a):
            return a

    monkeypatch.setattr(bench.B, "cupy_module", lambda: FakeCupy)
    monkeypatch.setattr(bench.common.B, "cupy_module", lambda: FakeCupy)
    monkeypatch.setattr(kernels, "wgmma_available", lambda target, device=None: True)  # a Hopper, for the rows
    monkeypatch.setattr(kernels, "tensor_cores_available", lambda target, device=None, dtype=None, tf32=False: True)
    monkeypatch.setattr(bench, "run_direction",
                        lambda direction, *a: calls.append((direction, kernels.variant(bench.DIRECTIONS[direction]))))
    rows = bench.benchmark(2, warmup=2, repeat=5, use_torch=False, layers=[(3, 4, 8)])
    got = [(r["direction"], r["variant"]) for r in rows]
    assert got == [(d, v) for d in ("forward", "backward_data", "backward_weight") for v in ("v1", "v2", "v3")]
    assert calls.count(("forward", "v1")) == 1 + 3 and calls.count(("forward", "v3")) == 2 + 5
    assert all(r["tflops"] > 0 and r["torch_ms"] is None for r in rows)
    best = bench.fastest(rows)
    assert set(best) == {"fp32"} and set(best["fp32"]) == set(bench.DIRECTIONS)
    assert best["fp32"]["forward"] == {"3->4 @8x8": "v1"}  # fewest calls: least "time"
    only = bench.benchmark(2, warmup=0, repeat=1, use_torch=False, layers=[(3, 4, 8)], variants=("v3",))
    assert [(r["direction"], r["variant"]) for r in only] == [("forward", "v3"), ("backward_data", "v3"),
                                                              ("backward_weight", "v3")]
    assert bench.family_variants("conv2d_forward", ("v2", "v9")) == ("v2",)
    # each precision times the variants that compute in it: tc only with a tensor-core format
    assert bench.family_variants("conv2d_forward", prec="bf16") == ("v2", "v3", "tc", "tc128", "tc128w", "tcwg",
                                                                    "tcwg256", "tcwgn64", "tcwgm64")
    assert bench.family_variants("conv2d_backward_weight", prec="tf32") == ("v2", "v3") + kernels.TC_VARIANTS
    assert bench.family_variants("conv2d_forward", prec="fp32") == ("v1", "v2", "v3")
    # no wgmma rows where those tiles do not run: their launcher would run another tile under their name
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "wgmma_available", lambda target, device=None: target == "sim")
        assert bench.family_variants("conv2d_forward", prec="bf16", target="cuda") == ("v2", "v3", "tc", "tc128",
                                                                                        "tc128w")
        assert bench.family_variants("conv2d_forward", ("tc", "tcwg"), "bf16", "cuda") == ("tc",)
        assert [kernels.runs_as(v, "cuda") for v in ("v2", "tc", "tcwg", "tcwgn64")] == ["v2", "tc", "tc128", "tc"]
        mp.setattr(kernels, "tensor_cores_available",  # a V100 (a T4's bf16)
                   lambda target, device=None, dtype=None, tf32=False: target == "sim")
        assert bench.family_variants("conv2d_forward", prec="bf16", target="cuda") == ("v2", "v3")
        assert kernels.runs_as("tc", "cuda") is None and kernels.runs_as("tcwg", "sim") == "tcwg"
    rows = bench.benchmark(2, warmup=0, repeat=1, use_torch=False, layers=[(3, 4, 8)], precisions=("bf16",))
    assert {(r["precision"], r["layout"]) for r in rows} == {("bf16", "channels_last")}
    assert bench.fastest(rows)["bf16"]["forward"]["3->4 @8x8"] in ("v2", "v3") + kernels.TC_VARIANTS


def test_cuda_dispatch_makes_the_arrays_device_current(monkeypatch):
    """On 'cuda:1' arrays, launchers and references run with device 1 current, so their outputs
    (CuPy allocates on the current device) land beside the inputs. CuPy faked: no GPU here."""
    entered = []

    class FakeDevice:
        def __init__(self, i):
            self.id = i

        def __enter__(self):
            entered.append(("enter", self.id))

        def __exit__(self, *exc):
            entered.append(("exit", self.id))

    class FakeCupy:
        class cuda:
            Device = FakeDevice

    class FakeArray:
        data = types.SimpleNamespace(device_id=1)  # cupy: the memory's device, a.device.id

    monkeypatch.setattr(B, "cupy_module", lambda: FakeCupy)
    monkeypatch.setattr(B, "is_cupy_array", lambda a: isinstance(a, FakeArray))
    seen = []
    _dispatch.register_launcher("fake_op", "cuda")(lambda x, *, target: seen.append(list(entered)) or "kernel")
    try:
        assert _dispatch.call("fake_op", "cuda", lambda x: "reference", FakeArray()) == "kernel"
    finally:
        _dispatch.unregister_launcher("fake_op")
    assert seen == [[("enter", 1)]] and entered == [("enter", 1), ("exit", 1)]
    assert _dispatch.call("no_launcher_op", "cuda", lambda x: entered[-1], FakeArray()) == ("enter", 1)
    entered.clear()
    assert _dispatch.call("no_launcher_op", None, lambda x: "numpy", np.zeros(1)) == "numpy" and entered == []


def test_cuda_launch_runs_on_the_arrays_or_the_given_device(monkeypatch):
    """kernels.launch on 'cuda' takes the kernel compiled for, and makes current, the device of
    the first CuPy array, or the one the launcher already knows. CuPy faked: no GPU here."""
    entered, calls = [], []

    class FakeDevice:
        def __init__(self, i):
            self.id = i

        def __enter__(self):
            entered.append(self.id)

        def __exit__(self, *exc):
            entered.append(-self.id)

    class FakeArray:
        data = types.SimpleNamespace(device_id=2)

    class FakeCupy:
        ndarray = FakeArray

        class cuda:
            Device = FakeDevice

    def get_function(op_file, name, dtype, target, device=None, tf32=False):
        return lambda grid, block, args, shared_mem=0: calls.append((name, device, entered[-1], grid, block))

    monkeypatch.setattr(B, "cupy_module", lambda: FakeCupy)
    monkeypatch.setattr(kernels, "get_function", get_function)
    args = (np.int64(3), FakeArray())
    kernels.launch("relu", "relu_forward_v1", np.float32, "cuda", [4, 1, 1], [256, 1, 1], args)
    kernels.launch("relu", "relu_forward_v1", np.float32, "cuda", (4, 1, 1), (256, 1, 1), args, device=1)
    assert calls == [("relu_forward_v1", 2, 2, (4, 1, 1), (256, 1, 1)),   # (kernel, compiled for, current, ...)
                     ("relu_forward_v1", 1, 1, (4, 1, 1), (256, 1, 1))]
    assert entered == [2, -2, 1, -1]
    assert kernels.array_device([np.zeros(1), FakeArray()]) == 2 and kernels.array_device([np.zeros(1)]) is None


def test_the_simulators_sanitize_default_follows_its_variable_at_every_launch(monkeypatch):
    """$GPUCONV_SIM_SANITIZE is read at every simulator launch (its reading memoized by its raw
    value): a change takes effect at the next launch, and a bad value is refused every time."""
    from gpuconv.kernels import _sim
    for value, want in (("1", True), ("0", False), ("yes", True), ("", False)):
        monkeypatch.setenv("GPUCONV_SIM_SANITIZE", value)
        assert _sim._sanitize_default() is want
    monkeypatch.delenv("GPUCONV_SIM_SANITIZE")
    assert _sim._sanitize_default() is False
    monkeypatch.setenv("GPUCONV_SIM_SANITIZE", "maybe")
    for _ in range(2):
        with pytest.raises(ValueError, match="GPUCONV_SIM_SANITIZE='maybe'"):
            _sim._sanitize_default()


def test_a_gpu_function_asked_without_a_device_is_the_current_gpus(monkeypatch):
    """get_function on 'cuda' without a device, and a launch with no CuPy array among its arguments
    and no device, take the current GPU's function: the memo keys name that GPU, so a function
    loaded on one GPU (its cubin, its raised shared-memory limit) is never handed out for another."""
    from conftest import fake_cupy_second_gpu
    from gpuconv.kernels import _registry
    cupy, current = fake_cupy_second_gpu(monkeypatch)
    monkeypatch.setattr(B, "require_cupy", lambda: cupy)
    monkeypatch.setattr(_registry, "_functions", {})
    ran = []

    class Module:  # get_module's for one GPU: its functions record the GPU they were built for
        def __init__(self, device):
            self.device = device

        def get_function(self, name):
            return lambda grid, block, args, shared_mem=0, built=self.device: ran.append((built, current[0]))

    monkeypatch.setattr(_registry, "get_module", lambda op_file, dtype, target, device, tf32: Module(device))
    fns = {}
    for gpu in (0, 1, 0):
        with cupy.cuda.Device(gpu):
            fns.setdefault(gpu, kernels.get_function("relu", "relu_forward_v1", np.float32, "cuda"))
            assert kernels.get_function("relu", "relu_forward_v1", np.float32, "cuda") is fns[gpu]
            kernels.launch("relu", "relu_forward_v1", np.float32, "cuda", (1, 1, 1), (32, 1, 1), (np.int64(0),))
    assert fns[0] is not fns[1] and fns[1] is kernels.get_function("relu", "relu_forward_v1", np.float32, "cuda", 1)
    assert ran == [(0, 0), (1, 1), (0, 0)]  # (built for, current at the launch)


def test_launch_reads_get_functions_memo_and_follows_the_kernels_directory(monkeypatch):
    """kernels.launch takes a kernel function from get_function's memo itself (a launch per kernel
    of a step asked it at every call): get_function is asked once per kernel, and again where
    GPUCONV_KERNELS_DIR's raw value changed (read at every launch, as get_function reads it); a
    get_function replaced (a test's fake) is asked at every launch."""
    from gpuconv.kernels import _registry, _sources
    asked = []
    real = _registry.get_function

    def counting(*args, **kwargs):
        asked.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(_registry, "get_function", counting)
    monkeypatch.setattr(_registry, "_GET_FUNCTION", counting)  # (launch reads the memo for this one)
    monkeypatch.delenv("GPUCONV_KERNELS_DIR", raising=False)
    x = np.linspace(-1, 1, 8, dtype=np.float32)
    for _ in range(3):
        y = np.empty_like(x)
        kernels.launch_1d("relu", "relu_forward_v1", "sim", (x, y))
        np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert len(asked) <= 1  # (none where an earlier test left the function in the memo)
    asked.clear()
    monkeypatch.setenv("GPUCONV_KERNELS_DIR", str(_sources._shipped_kernel_dir()) + "/")  # the same files, another value
    kernels.launch_1d("relu", "relu_forward_v1", "sim", (x, np.empty_like(x)))
    kernels.launch_1d("relu", "relu_forward_v1", "sim", (x, np.empty_like(x)))
    assert asked == ["relu_forward_v1"]
    asked.clear()
    monkeypatch.setattr(_registry, "_GET_FUNCTION", real)  # get_function replaced: asked at every launch
    kernels.launch_1d("relu", "relu_forward_v1", "sim", (x, np.empty_like(x)))
    kernels.launch_1d("relu", "relu_forward_v1", "sim", (x, np.empty_like(x)))
    assert asked == ["relu_forward_v1"] * 2


# ----------------------------------------------------------------------------- the fused loader kernel
# Here rather than in test_augment_kernel.py, which must import without hypothesis (the GPU image).
@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 4), c=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7), b=st.integers(1, 6),
       padding=st.integers(0, 4), crop=st.booleans(), do_flip=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 999))
def test_augment_kernel_fuzz_against_the_array_path(n, c, h, w, b, padding, crop, do_flip, dtype, seed):
    """Hypothesis over shapes, paddings and the crop/flip switches: always bit-identical."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
    mean = rng.uniform(0, 255, c).astype(dtype)
    std = rng.uniform(1, 90, c).astype(dtype)
    idx = rng.integers(0, n, b)
    oy, ox = (rng.integers(0, 2 * padding + 1, b) if crop else None for _ in range(2))
    flip = rng.integers(0, 2, b).astype(bool) if do_flip else None
    pad = padding if crop else 0
    got = augment_batch_kernel(images, idx, oy, ox, flip, mean, std, pad, dtype, target="sim")
    want = normalize(crop_flip(images[idx], oy, ox, flip, pad), mean, std, dtype)
    np.testing.assert_array_equal(got, want)


def test_launch_log_records_launches_and_catches_a_fallback(monkeypatch):
    """The launch log names every launch with its grid and block, and tells an op that fell back to
    its reference (what the backend fixture fails a 'sim'/'cupy' test for) from one that ran kernels."""
    from gpuconv import ops
    x = np.linspace(-1, 1, 300, dtype=np.float32)
    with gpuconv.default_device("sim"), kernels.launch_log() as outer:
        with kernels.launch_log() as inner:
            ops.relu_forward(x)
        assert inner == [kernels.Launch("relu_forward_v2", (1, 1, 1), (256, 1, 1), "sim")]
        assert inner.dispatches == [("relu_forward", "sim", "kernel")] and kernels.fallbacks(inner) == []
        monkeypatch.delitem(_dispatch._LAUNCHERS, ("relu_forward", "sim"))
        ops.relu_forward(x)
        _dispatch.call("an_op_without_kernels", "sim", lambda: None)
    assert outer.names == ["relu_forward_v2"]  # the nested block's launch, and none from the fallback
    assert kernels.fallbacks(outer) == [("relu_forward", "sim", "no-launcher")]
    assert outer.dispatches[-1] == ("an_op_without_kernels", "sim", "reference")  # no kernels: no fallback


def test_the_variant_answers_follow_every_change_of_choice():
    """variant() is memoized per set of choices: set_variant, use_variant (and leaving it) and
    dropping a choice each give the current answer at once."""
    bf16 = ml_dtypes.bfloat16
    before = kernels.variant("conv2d_forward", bf16)
    try:
        kernels.set_variant("conv2d_forward", "tc128w", bf16)
        assert kernels.variant("conv2d_forward", bf16) == "tc128w"
        with kernels.use_variant(conv2d_forward="v1"):
            assert kernels.variant("conv2d_forward", bf16) == "tc128w"  # the dtype's own choice first
            assert kernels.variant("conv2d_forward", np.float32) == "v1"
        assert kernels.variant("conv2d_forward", np.float32) == before
        kernels.set_variant("conv2d_forward", None, bf16)
        assert kernels.variant("conv2d_forward", bf16) == before
    finally:
        kernels.set_variant("conv2d_forward", None, bf16)


@pytest.mark.parametrize("backward, forward", [
    ("conv2d_backward", "conv2d_forward"), ("linear_backward", "linear_forward"),
    ("max_pool2d_backward", "max_pool2d_forward"), ("avg_pool2d_backward", "avg_pool2d_forward"),
    ("lp_pool2d_backward", "lp_pool2d_forward"), ("relu_backward", "relu_forward"), ("gelu_backward", "gelu_forward"),
    ("dropout_backward", "dropout_forward"), ("scale_backward", "scale_forward"),
    ("batchnorm2d_backward", "batchnorm2d_forward"), ("leaky_relu_backward", "leaky_relu_forward"),
    ("sigmoid_backward", "sigmoid_forward"), ("tanh_backward", "tanh_forward"), ("silu_backward", "silu_forward"),
    ("groupnorm_backward", "groupnorm_forward")])
def test_a_backward_given_something_else_than_its_cache_names_the_forward(backward, forward):
    from gpuconv import ops
    dy = np.ones((1, 1, 2, 2), np.float32)
    for cache in (None, (dy,), np.ones(3)):
        with pytest.raises(TypeError, match=f"cache must be the .*Cache that {forward} returned, got "):
            getattr(ops, backward)(dy, cache)


def test_every_ops_cache_prints_its_arrays_as_shapes_and_copies_and_pickles():
    """A cache shown in a notebook (the second value of each forward) prints its arrays' shapes and
    dtypes, not their values, and copies and pickles as the tuple it is."""
    import copy
    import pickle
    from gpuconv import ops
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 4, 8, 8)) + 9).astype(np.float32)  # values whose text would show
    caches = [ops.conv2d_forward(x, x[:, :, :3, :3].copy(), None, 1, 1)[1],
              ops.linear_forward(x.reshape(2, -1), np.full((5, 256), 9.5, np.float32))[1],
              ops.max_pool2d_forward(x, 2)[1], ops.avg_pool2d_forward(x, 2)[1], ops.lp_pool2d_forward(x, 2, 2)[1],
              ops.adaptive_max_pool2d_forward(x, 3)[1], ops.relu_forward(x)[1], ops.gelu_forward(x)[1],
              ops.dropout_forward(x, 0.5, rng=np.random.default_rng(1))[1], ops.scale_forward(x, 0.5)[1],
              ops.leaky_relu_forward(x, 0.2)[1], ops.sigmoid_forward(x)[1], ops.tanh_forward(x)[1],
              ops.silu_forward(x)[1],
              ops.batchnorm2d_forward(x, np.ones(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32),
                                      np.ones(4, np.float32), training=True)[1],
              ops.groupnorm_forward(x, 2, np.ones(4, np.float32), np.zeros(4, np.float32))[1]]
    for cache in caches:
        text = repr(cache)
        assert text.startswith(type(cache).__name__ + "(") and "9." not in text, text
        arrays = [v for v in cache if hasattr(v, "shape") and hasattr(v, "dtype")]
        assert all(f"array(shape={tuple(v.shape)}, dtype={v.dtype})" in text for v in arrays), text
        for again in (copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
            assert type(again) is type(cache) and again._fields == cache._fields


def test_a_launch_keeps_none_of_its_arrays_alive():
    """After a bf16 convolution and linear layer on the simulator (the launches that ask whether
    the target has tensor cores, with a closure over their arrays), nothing holds the inputs: a
    memo of those closures kept every launch's arrays, device memory on a GPU, for good."""
    import gc
    import weakref
    from gpuconv import ops
    BF = ml_dtypes.bfloat16
    with gpuconv.default_device("sim"):
        x, w = np.ones((1, 8, 4, 4), BF), np.ones((8, 8, 3, 3), BF)
        xl, wl = np.ones((2, 16), BF), np.ones((4, 16), BF)
        refs = [weakref.ref(a) for a in (x, w, xl, wl)]
        y, cache = ops.conv2d_forward(x, w, padding=1)
        ops.conv2d_backward(y, cache)
        yl, cl = ops.linear_forward(xl, wl)
        ops.linear_backward(yl, cl)
        del x, w, xl, wl, y, cache, yl, cl
    gc.collect()
    assert [r() is None for r in refs] == [True] * 4


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_launch_takes_no_lock_of_its_module_a_fork_could_inherit_held():
    """Every simulator launch used to take its module's lock to look the build up; a process forked
    while another thread held it (between two launches of a training thread) found it taken for
    good and hung at its first launch of that kernel file. A built module is looked up without it."""
    import os

    from conftest import forked_exit
    from gpuconv import ops
    x = np.array([-1.0, 2.0], np.float32)
    with gpuconv.default_device("sim"):
        ops.relu_forward(x)
    handle = kernels._cache[("relu", np.dtype(np.float32), False, "sim", None, os.environ.get("GPUCONV_KERNELS_DIR"), None)]

    def child():
        with gpuconv.default_device("sim"):
            return 0 if ops.relu_forward(x)[0].tolist() == [0.0, 2.0] else 3

    with handle._lock:  # as another thread holds it at the fork
        assert forked_exit(child) == "exit 0"


def test_the_module_memo_keeps_the_builds_with_and_without_the_wgmma_tiles_apart(monkeypatch):
    """GPUCONV_WGMMA=0 builds conv2d_tc without wgmma (sm_90, whose wgmma entry points trap): a
    module or function memoized under one setting must not answer under the other, or a process
    that turns the tiles back on sends them to the build without them (a trap ends its CUDA
    context). The other files build alike either way: one module each."""
    from gpuconv import _env
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=lambda *a: types.SimpleNamespace(id=0)))
    monkeypatch.setattr(B, "require_cupy", lambda: fake)
    monkeypatch.setattr(kernels, "_cache", {})
    monkeypatch.setattr(kernels, "_functions", {})

    class Built:  # what _compile_cuda made, and under which setting
        def __init__(self, src, op_file, dt, device, tf32=False):
            self.wgmma = _env.flag("GPUCONV_WGMMA", default=True)

        def get_function(self, name):
            return (name, self.wgmma)

    monkeypatch.setattr(kernels, "_compile_cuda", Built)
    bf16 = ml_dtypes.bfloat16
    monkeypatch.setenv("GPUCONV_WGMMA", "0")
    portable = kernels.get_module("conv2d_tc", bf16, "cuda", device=0)
    relu = kernels.get_module("relu", bf16, "cuda", device=0)
    assert not portable.wgmma and kernels.get_function("conv2d_tc", "k", bf16, "cuda", 0) == ("k", False)
    monkeypatch.setenv("GPUCONV_WGMMA", "1")
    hopper = kernels.get_module("conv2d_tc", bf16, "cuda", device=0)
    assert hopper is not portable and hopper.wgmma
    assert kernels.get_function("conv2d_tc", "k", bf16, "cuda", 0) == ("k", True)
    assert kernels.get_module("relu", bf16, "cuda", device=0) is relu
    monkeypatch.setenv("GPUCONV_WGMMA", "0")
    assert kernels.get_module("conv2d_tc", bf16, "cuda", device=0) is portable


def test_threads_launching_a_kernel_first_at_once_compile_its_module_once(monkeypatch):
    """The first launches of a web service's thread pool ask for a module at once: each used to
    compile it (NVRTC, some 10 s for a tensor-core file, once per thread) and each kept a function
    of its own. The first compiles; the others wait for it and get its module and function."""
    import threading
    import time
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=lambda *a: types.SimpleNamespace(id=0)))
    monkeypatch.setattr(B, "require_cupy", lambda: fake)
    monkeypatch.setattr(kernels, "_cache", {})
    monkeypatch.setattr(kernels, "_functions", {})
    compiles = []

    class Built:  # a compile that takes a while, as NVRTC's does
        def __init__(self, src, op_file, dt, device, tf32=False):
            compiles.append(op_file)
            time.sleep(0.1)

        def get_function(self, name):
            return object()

    monkeypatch.setattr(kernels, "_compile_cuda", Built)
    start, got = threading.Barrier(4), []

    def first_launch():
        start.wait()
        got.append(kernels.get_function("relu", "relu_forward_v1", np.float32, "cuda", 0))

    threads = [threading.Thread(target=first_launch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert compiles == ["relu"] and len(got) == 4 and all(fn is got[0] for fn in got)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_child_forked_while_another_thread_compiles_a_module_compiles_it(monkeypatch):
    """A module's compile lock, held by another thread at a fork, is not the child's: its first
    launch of that file compiles instead of waiting for good."""
    import os
    import threading

    from conftest import forked_exit
    from gpuconv import ops
    monkeypatch.setattr(kernels, "_cache", {})
    monkeypatch.setattr(kernels, "_functions", {})
    key = ("relu", np.dtype(np.float32), False, "sim", None, os.environ.get("GPUCONV_KERNELS_DIR"), None)
    x = np.array([-1.0, 2.0], np.float32)

    def child():
        with gpuconv.default_device("sim"):
            return 0 if ops.relu_forward(x)[0].tolist() == [0.0, 2.0] else 3

    held = kernels._compiling.setdefault(key, threading.Lock())
    try:
        with held:  # as a compiling thread holds it at the fork
            assert forked_exit(child) == "exit 0"
    finally:
        kernels._compiling.pop(key, None)


def test_a_child_forked_while_another_thread_holds_the_module_table_lock_compiles(monkeypatch):
    """The module table's lock, held by another thread at a fork (between its look-up and its
    entry of a compile), is not the child's: its first launch of a file compiles instead of waiting
    for good, as with a module's compile lock."""
    from conftest import forked_exit
    from gpuconv import ops
    monkeypatch.setattr(kernels, "_cache", {})
    monkeypatch.setattr(kernels, "_functions", {})
    x = np.array([-1.0, 2.0], np.float32)

    def child():
        with gpuconv.default_device("sim"):
            return 0 if ops.relu_forward(x)[0].tolist() == [0.0, 2.0] else 3

    with kernels._cache_lock:  # as another thread holds it at the fork
        assert forked_exit(child) == "exit 0"


def test_the_environment_reader_follows_every_change_of_the_environment(monkeypatch):
    """_env.get reads os.environ's storage directly (the launchers ask it at every launch): it must
    answer what os.environ.get answers after each kind of change, and read through a mapping that
    replaced os.environ."""
    import os
    from gpuconv import _env
    name = "GPUCONV_TEST_ENV_READER"
    monkeypatch.delenv(name, raising=False)
    assert _env.get(name) is None
    monkeypatch.setenv(name, "one")
    assert _env.get(name) == "one"
    os.environ[name] = "dé/ü"  # a value that is no ASCII
    assert _env.get(name) == os.environ.get(name) == "dé/ü"
    monkeypatch.setenv(name, "")
    assert _env.get(name) == ""
    os.environ.update({name: "2"})
    assert _env.get(name) == "2" and _env.flag(name.replace("READER", "FLAG")) is False
    monkeypatch.setenv(name, "on")
    assert _env.flag(name) is True
    del os.environ[name]
    assert _env.get(name) is None and _env.flag(name, default=True) is True
    monkeypatch.setattr(os, "environ", {name: "3"})  # another mapping in os.environ's place
    assert _env.get(name) == "3"


def test_the_raw_environment_reader_follows_every_change_of_its_variable(monkeypatch):
    """_env.reader's function (what the launch memos key GPUCONV_KERNELS_DIR, GPUCONV_WGMMA and
    GPUCONV_AUTOTUNE by, at every launch) answers alike exactly while the variable keeps its value."""
    import os
    from gpuconv import _env
    name = "GPUCONV_TEST_RAW_READER"
    monkeypatch.delenv(name, raising=False)
    read = _env.reader(name)
    assert read() is None
    answers = []
    for value in ("one", "two", "dé/ü", "", "one"):
        monkeypatch.setenv(name, value)
        answers.append(read())
    assert answers[0] == answers[4] and len({answers[i] for i in range(4)}) == 4
    os.environ.update({name: "two"})
    assert read() == answers[1]
    del os.environ[name]
    assert read() is None


def test_a_launch_follows_the_kernels_directory_set_between_two_launches(tmp_path, monkeypatch):
    """A launch's function is memoized, looked up by the raw value of GPUCONV_KERNELS_DIR: setting it
    to another directory between two launches runs the other directory's kernel at the second, and
    a mapping put in os.environ's place is read too."""
    import os
    src = kernels.kernel_dir()
    dirs = []
    for value in (1, 2):
        d = tmp_path / f"k{value}"
        d.mkdir()
        (d / "common.cuh").write_text((src / "common.cuh").read_text())
        (d / "probe_dir.cu").write_text(f'extern "C" __global__ void probe(storage_t* y) {{ y[0] = {value}; }}\n')
        dirs.append(str(d))
    y = np.zeros(1, np.float32)
    got = []
    for d in dirs + dirs[:1]:
        monkeypatch.setenv("GPUCONV_KERNELS_DIR", d)
        kernels.launch("probe_dir", "probe", np.float32, "sim", (1, 1, 1), (1, 1, 1), (y,))
        got.append(float(y[0]))
    monkeypatch.setattr(os, "environ", {**os.environ, "GPUCONV_KERNELS_DIR": dirs[1]})
    kernels.launch("probe_dir", "probe", np.float32, "sim", (1, 1, 1), (1, 1, 1), (y,))
    assert got + [float(y[0])] == [1.0, 2.0, 1.0, 2.0]


def test_the_current_gpus_capability_is_asked_at_each_call(monkeypatch):
    """``_compute_capability(None)`` and ``wgmma_available('cuda')`` mean the current GPU: a process
    that moves from a Hopper to an A100 (``cupy.cuda.Device(1).use()``) gets the A100's answers, not
    the first GPU's remembered under None. Per GPU the answers are memoized."""
    current, asked = [0], []
    cc = {0: "90", 1: "80"}

    class Device:
        def __init__(self, device=None):
            self.id = current[0] if device is None else device
            if device is not None:
                asked.append(device)

        @property
        def compute_capability(self):
            return cc[self.id]

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=Device))
    monkeypatch.setattr(B, "require_cupy", lambda: fake)
    monkeypatch.setattr(kernels, "nvrtc_arch", lambda c, device=None: f"sm_{c}")
    monkeypatch.delenv("GPUCONV_WGMMA", raising=False)
    kernels._compute_capability_of.cache_clear()
    kernels._arch_specific_build.cache_clear()
    try:
        assert kernels._compute_capability(None) == 90 and kernels.wgmma_available("cuda")
        current[0] = 1
        assert kernels._compute_capability(None) == 80 and not kernels.wgmma_available("cuda")
        assert kernels.tensor_cores_available("cuda", None, ml_dtypes.bfloat16)
        current[0] = 0
        assert kernels._compute_capability(None) == 90 and kernels.wgmma_available("cuda")
        assert sorted(asked) == [0, 1]  # each GPU looked up once
    finally:
        kernels._compute_capability_of.cache_clear()
        kernels._arch_specific_build.cache_clear()
