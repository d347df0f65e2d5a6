"""Launch every CUDA kernel once on small, edge-reaching shapes and check each result against the
NumPy reference: the driver that ``compute-sanitizer`` runs (benchmarks/run_gpu.sh), and that
tests/test_sanitizer.py runs on the host simulator's AddressSanitizer/UBSan build.

    compute-sanitizer --tool memcheck --error-exitcode 99 python benchmarks/sanitize_gpu.py
    python benchmarks/sanitize_gpu.py --device sim     # the same launches on the host simulator
    python benchmarks/sanitize_gpu.py --only conv_tc --variants tcwg tcwg256   # those tiles alone

CuPy's memory pool is switched off first (``cupy.cuda.set_allocator(None)``): with the pool, a
read past the end of one array lands inside a larger pooled block and memcheck cannot see it;
without it every array is its own cudaMalloc, bounds exact. Shapes reach the guarded edges:
partial GEMM tiles in both dimensions, a partial reduction round, padding wider than the
filter, several backward-weight splits, overlapping pooling windows, ReLU lengths with a vector
tail and a misaligned view, GELU over a partial block, the loss over several blocks, dropout over partial blocks, crops falling wholly into the padding, reflect-padded crops,
tensor-core GEMM tiles cut in M, N and K with every copy width of its loader, tensor-core
convolutions in each build and layout with padded channels and several weight splits, group
norm with one group, a group per channel, a partial 32-channel block and split pixels.
Exit 0 when every kernel ran and matched; 1 naming the mismatch or the kernel that did not run.
"""
from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
import traceback

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402
import gpuconv  # noqa: E402
from gpuconv import backend as B  # noqa: E402
from gpuconv import hostsim, kernels, syncguard  # noqa: E402
from gpuconv.data import crop_flip, cutout, normalize  # noqa: E402
from gpuconv.data._launch_augment import augment_batch_kernel  # noqa: E402
from gpuconv.ops import _launch_batchnorm as LB  # noqa: E402
from gpuconv.ops import _launch_groupnorm as LGN  # noqa: E402
from gpuconv.ops import _launch_conv2d as LC  # noqa: E402
from gpuconv.ops import _launch_conv2d_grouped as LCG  # noqa: E402
from gpuconv.ops import _launch_dropout as LD  # noqa: E402
from gpuconv.ops import _launch_adaptive_pool2d as LAP  # noqa: E402
from gpuconv.ops import _launch_lp_pool2d as LPL  # noqa: E402
from gpuconv.ops import _launch_pool2d as LP  # noqa: E402
from gpuconv.ops import _launch_relu as LR  # noqa: E402
from gpuconv.ops import _launch_gelu as LG  # noqa: E402
from gpuconv.ops import _launch_loss as LL  # noqa: E402
from gpuconv.ops import loss as L  # noqa: E402
from gpuconv.ops import gelu as G  # noqa: E402
from gpuconv.ops._launch_gemm_tc import gemm_reference, gemm_tc  # noqa: E402
from gpuconv.ops import batchnorm as BN  # noqa: E402
from gpuconv.ops import groupnorm as GN  # noqa: E402
from gpuconv.ops import conv2d as C  # noqa: E402
from gpuconv.ops import conv2d_grouped as CG  # noqa: E402
from gpuconv.ops import dropout as D  # noqa: E402
from gpuconv.ops import adaptive_pool2d as AP  # noqa: E402
from gpuconv.ops import lp_pool2d as LPP  # noqa: E402
from gpuconv.ops import _pool2d_reference as PR  # noqa: E402
from gpuconv.ops import pool2d as P  # noqa: E402



def expected_kernels(files=kernels.KERNEL_FILES) -> set[str]:
    """Every extern "C" kernel of every kernel file (of ``files``): a kernel added without a launch
    here fails."""
    return {name for op_file in files
            for name, decl in hostsim.parse_kernels(kernels.build_source(op_file)).items() if decl.extern_c}


EXPECTED = expected_kernels()


def expected_here(target: str) -> tuple[set[str], str | None]:
    """The kernels that run on ``target`` (the launchers send no other), and a note naming the
    ones left out: no tensor-core kernel on a GPU below compute capability 7.5 (the CUDA-core
    tiles run instead; from 7.5 the float16 cases launch every mma.sync one), no wgmma tile where :func:`gpuconv.kernels.wgmma_available` says no (off
    Hopper, or ``GPUCONV_WGMMA=0``: tc128/tc run instead)."""
    if target == "sim":
        return EXPECTED, None
    if not kernels.tensor_cores_available(target, dtype=np.float16):
        left = expected_kernels(kernels.TENSOR_CORE_FILES)
        return EXPECTED - left, f"{len(left)} tensor-core kernels left out (compute capability below 7.5)"
    if not kernels.wgmma_available(target):
        left = {n for n in EXPECTED if any(n.endswith(f"_{v}") for v in kernels.WGMMA_FALLBACK)}
        return EXPECTED - left, f"{len(left)} wgmma kernels left out (not Hopper, or GPUCONV_WGMMA=0)"
    return EXPECTED, None


class Run(common.Checks):
    """The checks of one run (tolerances relative to the reference's scale), the target, and the
    kernels launched so far."""

    def __init__(self, target):
        super().__init__()
        self.target = target
        self.ran = set()
        self.dev = (lambda a: B.cupy_module().asarray(a)) if target == "cuda" else np.asarray

    def close(self, name, got, want, rtol=2e-4):
        return super().close(name, got, want, rtol)


def conv(run, rng):
    LC.MIN_SPLIT_CHUNK = 8  # several backward-weight splits even at these sizes
    for xs, ws, stride, pad, floor in [((1, 5, 6, 13), (65, 5, 3, 3), (1, 1), (1, 1), False),
                                       ((2, 3, 7, 9), (4, 3, 5, 3), (2, 3), (3, 0), False),
                                       ((1, 2, 3, 3), (1, 2, 3, 3), (1, 1), (0, 0), False),
                                       ((2, 3, 9, 9), (130, 3, 3, 3), (1, 1), (1, 1), False),  # M, K > 128: v3 tile edges
                                       ((1, 16, 5, 5), (130, 16, 3, 3), (1, 1), (1, 1), False),  # C*FH*FW = 144 > 128
                                       ((2, 3, 8, 9), (5, 3, 3, 3), (2, 2), (1, 1), True),  # PyTorch's floored sizes
                                       ((2, 3, 8, 8), (4, 3, 1, 1), (2, 2), (0, 0), False),  # phases no tap reaches
                                       ((1, 2, 2, 2), (3, 2, 3, 3), (3, 3), (1, 1), True)]:  # phases without pixels
        x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
        b = rng.standard_normal(ws[0]).astype(np.float32)
        ry, rc = C._conv2d_forward_reference(x, w, b, stride, pad)
        dy = rng.standard_normal(ry.shape).astype(np.float32)
        rdx, rdw, rdb = C._conv2d_backward_reference(dy, rc)
        X, W, Bb, DY = (run.dev(a) for a in (x, w, b, dy))
        for v in ("v1", "v2", "v3"):
            with kernels.use_variant(conv2d_forward=v, conv2d_backward_data=v, conv2d_backward_weight=v):
                y, cache = LC.conv2d_forward_kernel(X, W, Bb, stride, pad, target=run.target)
                yr, _ = LC.conv2d_forward_kernel(X, W, None, stride, pad, target=run.target, relu=True)
                dx, dw, db = LC.conv2d_backward_kernel(DY, cache, target=run.target)
            tag = f"conv2d {xs}*{ws}{' floor' if floor else ''} {v}"
            run.close(f"{tag} forward", y, ry)
            run.close(f"{tag} forward+relu", yr, np.maximum(ry - b[None, :, None, None], 0))
            run.close(f"{tag} dx", dx, rdx)
            run.close(f"{tag} dw", dw, rdw)
            run.close(f"{tag} db", db, rdb)


def conv_grouped(run, rng):
    """The grouped/dilated convolution (kernels/conv2d_grouped.cu): depthwise with a stride and a
    channel multiplier, ResNeXt-like groups, dilation with and without groups, both layouts,
    float32 and bfloat16, the weight gradient in several splits (a partial last one)."""
    import ml_dtypes
    LCG.MIN_SPLIT_CHUNK = 4
    for xs, ws, stride, pad, dil, groups in [((2, 6, 7, 6), (12, 1, 3, 3), (2, 2), (1, 1), (1, 1), 6),
                                             ((1, 64, 3, 3), (32, 4, 3, 3), (1, 1), (1, 1), (1, 1), 16),
                                             ((2, 4, 9, 8), (6, 2, 3, 2), (1, 2), (2, 0), (2, 3), 2),
                                             ((1, 3, 5, 5), (4, 3, 3, 3), (1, 1), (3, 3), (3, 3), 1)]:
        for dtype, tol in ((np.float32, 2e-4), (ml_dtypes.bfloat16, 2e-2)):
            x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
            b = rng.standard_normal(ws[0]).astype(dtype)
            ry, rc = CG.conv2d_grouped_forward_reference(x, w, b, stride, pad, False, dil, groups)
            dy = rng.standard_normal(ry.shape).astype(dtype)
            rdx, rdw, rdb = CG.conv2d_grouped_backward_reference(dy, rc)
            for cl in (False, True):
                X, W, Bb, DY = (run.dev(a) for a in (x, w, b, dy))
                if cl:
                    X, DY = gpuconv.to_channels_last(X), gpuconv.to_channels_last(DY)
                y, cache = LCG.conv2d_grouped_forward_kernel(X, W, Bb, stride, pad, False, dil, groups,
                                                             target=run.target)
                dx, dw, db = LCG.conv2d_grouped_backward_kernel(DY, cache, target=run.target)
                tag = f"conv2d_grouped {xs}*{ws} s{stride} d{dil} g{groups} {np.dtype(dtype).name}" + (" nhwc" * cl)
                for what, got, want in (("y", y, ry), ("dx", dx, rdx), ("dw", dw, rdw), ("db", db, rdb)):
                    run.close(f"{tag} {what}", B.asnumpy(got).astype(np.float64), want.astype(np.float64), tol)


def gemm(run, rng):
    """The tensor-core GEMM in each build and B layout, on shapes whose rows take 16-, 4- and
    2-byte copies, with partial tiles in M, N and K (the zero-filled cp.async edges)."""
    import ml_dtypes
    cases = {"bf16 nt": (ml_dtypes.bfloat16, False, "nt"), "bf16 nn": (ml_dtypes.bfloat16, False, "nn"),
             "f16 nt": (np.float16, False, "nt"), "f16 nn": (np.float16, False, "nn"),
             "tf32 nt": (np.float32, True, "nt")}
    for case, (dtype, tf32, layout) in cases.items():
        for m, n, k in [(70, 66, 136), (63, 65, 130), (7, 9, 7)]:
            a = rng.standard_normal((m, k)).astype(dtype)
            b = rng.standard_normal((n, k) if layout == "nt" else (k, n)).astype(dtype)
            ref, _ = gemm_reference(a, b, b_layout=layout, tf32=tf32)
            A, Bm = run.dev(a), run.dev(b)
            tag = f"gemm_tc {case} {m}x{n}x{k}"
            run.close(f"{tag} float32 out", gemm_tc(A, Bm, b_layout=layout, out_dtype=np.float32, tf32=tf32,
                                                    target=run.target), ref)
            # rounded once to 16 bits: about 2^-9 of each element (bfloat16)
            run.close(f"{tag} {np.dtype(dtype).name} out", gemm_tc(A, Bm, b_layout=layout, tf32=tf32, target=run.target),
                      ref, rtol=1e-2)
            if layout == "nt":  # the linear layer's epilogue
                bias = rng.standard_normal(n).astype(dtype)
                run.close(f"{tag} + bias", gemm_tc(A, Bm, b_layout=layout, tf32=tf32, target=run.target,
                                                   bias=run.dev(bias)), ref + bias.astype(np.float64), rtol=1e-2)


TC_VARIANTS = ("tc", "tc128", "tc128w", "tcwg", "tcwg256", "tcwgn64", "tcwgm64")


def conv_tc(run, rng, variants=TC_VARIANTS):
    """The tensor-core convolutions in each build, NCHW and channels_last, on shapes with partial
    64-row and 64-column tiles, padded channels (3, 12), strided gathers (the data gradient's phases
    of the strides, a filter gathered into their order), several weight splits;
    ``variants``: the tiles to run (tc also in NCHW)."""
    import ml_dtypes
    LC.MIN_SPLIT_CHUNK = 32
    builds = {"bf16": (ml_dtypes.bfloat16, False), "f16": (np.float16, False), "tf32": (np.float32, True)}
    for build, (dtype, tf32) in builds.items():
        for xs, ws, stride, pad, floor in [((2, 12, 7, 9), (130, 12, 3, 3), (1, 1), (1, 1), False),
                                           ((1, 3, 8, 7), (5, 3, 2, 3), (2, 1), (2, 0), False),
                                           ((1, 40, 9, 9), (8, 40, 1, 1), (1, 1), (0, 0), False),
                                           ((1, 8, 8, 8), (8, 8, 1, 1), (2, 2), (0, 0), True),  # floored
                                           ((1, 8, 7, 6), (8, 8, 3, 3), (2, 2), (1, 1), True)]:  # phases of 4, 2, 1 taps
            x, w, b = (rng.standard_normal(s).astype(dtype) for s in (xs, ws, ws[:1]))
            ry, rc = C._conv2d_forward_reference(x, w, b, stride, pad, tf32)
            dy = rng.standard_normal(ry.shape).astype(dtype)
            rdx, rdw, _ = C._conv2d_backward_reference(dy, rc, True, tf32)
            for channels_last, var in [(False, "tc")] * ("tc" in variants) + [(True, v) for v in variants]:
                X, DY = run.dev(x), run.dev(dy)
                if channels_last:
                    X, DY = gpuconv.to_channels_last(X), gpuconv.to_channels_last(DY)
                families = {f: var for f in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")}
                with kernels.use_variant(**families), kernels.use_variant("tf32", **families):
                    y, cache = LC.conv2d_forward_kernel(X, run.dev(w), run.dev(b), stride, pad, tf32,
                                                        target=run.target)
                    dx, dw, _ = LC.conv2d_backward_kernel(DY, cache, True, tf32, target=run.target)
                tag = f"conv2d {var} {build} {xs}*{ws}{' floor' if floor else ''} {'nhwc' if channels_last else 'nchw'}"
                # one rounding to 8 (bf16) or 11 (fp16) bits on each side
                for name, got, want in (("forward", y, ry), ("dx", dx, rdx), ("dw", dw, rdw)):
                    run.close(f"{tag} {name}", common.host(got).astype(np.float32), want.astype(np.float32),
                              rtol=2e-4 if tf32 else 2e-2)
                if not tf32 and var in ("tc", "tc128"):  # dw widened to float32 as the reduce writes it
                    with kernels.use_variant(**families):
                        _, wide, _ = LC.conv2d_backward_kernel(DY, cache, False, tf32, True, np.float32,
                                                               target=run.target)
                    run.exact(f"{tag} dw widened", wide, common.host(dw).astype(np.float32))


def _pool_checks(run, x, dy, ks, st, channels_last=False, floor=False, tag="", padding=(0, 0)):
    """Max pooling of ``x`` (values and switches exact) and average pooling (to rounding), forward
    and backward for ``dy``, the kernels against the references; ``channels_last``: the kernels
    are fed NHWC memory (C a multiple of 4 float32 lanes takes the _vec kernels); ``padding``: the
    element kernels, and the average's _exclude_pad pair as well."""
    X, DY = run.dev(x), run.dev(dy)
    if channels_last:
        X, DY = gpuconv.to_channels_last(X), gpuconv.to_channels_last(DY)
    tag = f"{ks} {st}{f' padding {padding}' if padding != (0, 0) else ''}{' floor' if floor else ''}" \
          f"{' channels_last' if channels_last else ''} {tag}"
    y, c = LP.max_pool2d_forward_kernel(X, ks, st, floor, padding, target=run.target)
    ry, rc = PR._max_pool2d_forward_reference(x, ks, st, floor, padding)
    run.exact(f"max_pool {tag} forward", y, ry)
    run.exact(f"max_pool {tag} switches", c.argmax, rc.argmax)
    run.exact(f"max_pool {tag} backward", LP.max_pool2d_backward_kernel(DY, c, target=run.target),
              PR._max_pool2d_backward_reference(dy, rc))
    for count_include_pad in (True, False) if padding != (0, 0) else (True,):
        y, c = LP.avg_pool2d_forward_kernel(X, ks, st, floor, padding, count_include_pad, target=run.target)
        ry, rc = PR._avg_pool2d_forward_reference(x, ks, st, floor, padding, count_include_pad)
        avg = f"avg_pool{'' if count_include_pad else ' count_include_pad=False'} {tag}"
        run.close(f"{avg} forward", y, ry)
        run.close(f"{avg} backward", LP.avg_pool2d_backward_kernel(DY, c, target=run.target),
                  PR._avg_pool2d_backward_reference(dy, rc))


def pool(run, rng):
    # overlapping windows, gaps, a whole-image window; then disjoint ones (stride = kernel: the
    # _disjoint backward kernels), each in both layouts, with 3 channels (the element kernels) and
    # channels_last with 8 (the _vec kernels); floor mode where the windows are disjoint (a row and
    # a column past the last window, which the disjoint kernels zero)
    # padded windows (the ResNet stem's 3x3 stride 2 padding 1, floor; Inception's 3x3 stride 1
    # padding 1, which keeps H and W; 2x2 stride 2 padding 1, whose windows are disjoint) in both layouts
    for hw, ks, st, pad, floor in [((7, 9), (3, 3), (2, 2), (1, 1), True), ((6, 9), (3, 3), (1, 1), (1, 1), False),
                                   ((6, 8), (2, 2), (2, 2), (1, 1), False)]:
        x, dy = (rng.standard_normal((2, 8) + s).astype(np.float32)
                 for s in (hw, P.pooled_hw((1, 1) + hw, ks, st, floor, pad)))
        for channels_last in (False, True):
            _pool_checks(run, x, dy, ks, st, channels_last, floor, padding=pad)
    # (6, 8) by 2x2 windows: NCHW, the _pairs kernels (two outputs a thread)
    for hw, ks, st in [((7, 9), (3, 3), (2, 2)), ((7, 9), (2, 3), (1, 3)), ((7, 9), (7, 9), (1, 1)),
                       ((6, 9), (2, 3), (2, 3)), ((6, 9), (3, 3), (3, 3)), ((6, 8), (2, 2), (2, 2))]:
        out_hw = P.pooled_hw((1, 1) + hw, ks, st)
        x, dy = (rng.standard_normal((2, 3) + s).astype(np.float32) for s in (hw, out_hw))
        for channels_last in (False, True):
            _pool_checks(run, x, dy, ks, st, channels_last)
        x8, dy8 = (rng.standard_normal((2, 8) + s).astype(np.float32) for s in (hw, out_hw))
        _pool_checks(run, x8, dy8, ks, st, True, tag="x8")
        if ks == st:
            xf = rng.standard_normal((2, 8, hw[0] + ks[0] - 1, hw[1] + 1)).astype(np.float32)
            dyf = rng.standard_normal((2, 8) + P.pooled_hw(xf.shape, ks, st, True)).astype(np.float32)
            for channels_last in (False, True):
                _pool_checks(run, xf, dyf, ks, st, channels_last, floor=True, tag=f"{xf.shape[2:]}")
        xa = np.abs(x) + np.float32(0.1)  # positive: a non-integer or odd p of a negative value is NaN
        DYc = gpuconv.to_channels_last(run.dev(dy))
        for norm in (2.0, 3.0):
            y, c = LPL.lp_pool2d_forward_kernel(run.dev(xa), norm, ks, st, target=run.target)
            ry, rc = LPP._lp_pool2d_forward_reference(xa, norm, ks, st)
            run.close(f"lp_pool p={norm} {ks} {st} forward", y, ry)
            run.close(f"lp_pool p={norm} {ks} {st} backward",
                      LPL.lp_pool2d_backward_kernel(run.dev(dy), c, target=run.target),
                      LPP._lp_pool2d_backward_reference(dy, rc))
            y, c = LPL.lp_pool2d_forward_kernel(gpuconv.to_channels_last(run.dev(xa)), norm, ks, st, target=run.target)
            run.close(f"lp_pool p={norm} {ks} {st} channels_last forward", y, ry)
            run.close(f"lp_pool p={norm} {ks} {st} channels_last backward",
                      LPL.lp_pool2d_backward_kernel(DYc, c, target=run.target), LPP._lp_pool2d_backward_reference(dy, rc))
    # adaptive pooling to sizes that do not divide the input: windows of different sizes, overlapping
    for hw, out in (((5, 7), (3, 4)), ((1, 1), (3, 2)), ((9, 5), (4, 3))):
        x, dy = (rng.standard_normal((2, 3) + s).astype(np.float32) for s in (hw, out))
        for kind in ("avg", "max"):
            forward = getattr(LAP, f"adaptive_{kind}_pool2d_forward_kernel")
            backward = getattr(LAP, f"adaptive_{kind}_pool2d_backward_kernel")
            ry, rc = getattr(AP, f"_{kind}_forward_reference")(x, out)
            rdx = getattr(AP, f"_{kind}_backward_reference")(dy, rc)
            for channels_last in (False, True):
                X, DY = run.dev(x), run.dev(dy)
                if channels_last:
                    X, DY = gpuconv.to_channels_last(X), gpuconv.to_channels_last(DY)
                y, c = forward(X, out, target=run.target)
                tag = f"adaptive {kind} {hw}->{out}{' channels_last' if channels_last else ''}"
                run.close(f"{tag} forward", y, ry)
                run.close(f"{tag} backward", backward(DY, c, target=run.target), rdx)


def relu(run, rng):
    for dtype in (np.float32, np.float64):
        for n in (1, 6, 257):
            base = run.dev(rng.standard_normal(n + 1).astype(dtype))
            for xv in (base[:n], base[1:]):  # aligned (v2 + tail) and misaligned (v1 fallback)
                xh = common.host(xv)
                for v in ("v1", "v2"):
                    with kernels.use_variant(relu_forward=v, relu_backward=v):
                        y, c = LR.relu_forward_kernel(xv, target=run.target)
                        dx = LR.relu_backward_kernel(xv[::-1].copy(), c, target=run.target)
                    run.exact(f"relu forward n={n} {v}", y, np.maximum(xh, dtype(0)))
                    run.exact(f"relu backward n={n} {v}", dx, np.where(xh > 0, xh[::-1], dtype(0)))


def gelu(run, rng):
    for dtype, rtol in ((np.float32, 1e-5), (np.float64, 1e-12)):
        for n in (1, 257):  # 257: a partial last block
            xh = (4 * rng.standard_normal(n)).astype(dtype)
            dy = rng.standard_normal(n).astype(dtype)
            y, c = LG.gelu_forward_kernel(run.dev(xh), target=run.target)
            ry, rc = G._gelu_forward_reference(xh)
            run.close(f"gelu forward n={n} {np.dtype(dtype).name}", y, ry, rtol)
            run.close(f"gelu backward n={n} {np.dtype(dtype).name}", LG.gelu_backward_kernel(run.dev(dy), c, target=run.target),
                      G._gelu_backward_reference(dy, rc), rtol)


def activations(run, rng):
    """LeakyReLU, Sigmoid, Tanh and SiLU over one element and a partial block, float32 and float64:
    LeakyReLU, and Sigmoid's and Tanh's backward (from the reference's output), bit for bit; exp
    and tanh (CUDA's against NumPy's) within a few ulp."""
    from gpuconv.ops import _launch_activations as LA  # noqa: PLC0415
    from gpuconv.ops import activations as A  # noqa: PLC0415
    for dtype, rtol in ((np.float32, 1e-6), (np.float64, 1e-14)):
        for n in (1, 257):
            xh = (4 * rng.standard_normal(n)).astype(dtype)
            dy = rng.standard_normal(n).astype(dtype)
            for name, args in (("leaky_relu", (0.1,)), ("sigmoid", ()), ("tanh", ()), ("silu", ())):
                y, _ = getattr(LA, f"{name}_forward_kernel")(run.dev(xh), *args, target=run.target)
                ry, rc = getattr(A, f"_{name}_forward_reference")(xh, *args)
                on_device = type(rc)(*[run.dev(v) if hasattr(v, "shape") else v for v in rc])
                dx = getattr(LA, f"{name}_backward_kernel")(run.dev(dy), on_device, target=run.target)
                rdx = getattr(A, f"_{name}_backward_reference")(dy, rc)
                tag = f"{name} n={n} {np.dtype(dtype).name}"
                if name == "leaky_relu":
                    run.exact(f"{tag} forward", y, ry)
                else:
                    run.close(f"{tag} forward", y, ry, rtol)
                if name == "silu":  # (exp again; relative to the largest |dx|, past the cancellation near -1.28)
                    run.close(f"{tag} backward", dx, rdx, rtol)
                else:
                    run.exact(f"{tag} backward", dx, rdx)


def loss(run, rng):
    """Softmax cross-entropy: one row, a row of fewer classes than lanes, and 300 rows over 38
    blocks (the last-block sum of other blocks' rows), with and without smoothing."""
    import ml_dtypes
    for (n, c), eps in (((1, 1), 0.0), ((5, 37), 0.2), ((300, 10), 0.2)):
        for dtype in (np.float32, np.float64, ml_dtypes.bfloat16):
            z = (4 * rng.standard_normal((n, c))).astype(dtype)
            y = rng.integers(0, c, n)
            got = LL.softmax_cross_entropy_kernel(run.dev(z), run.dev(y), eps, True, target=run.target)
            want = L._softmax_cross_entropy_reference(z, y, eps, True)
            tag = f"softmax_cross_entropy {n}x{c} eps={eps} {np.dtype(dtype).name}"
            run.close(f"{tag} loss", got[0], want[0], 1e-5)
            run.close(f"{tag} dlogits", got[1], want[1], 1e-2 if dtype == ml_dtypes.bfloat16 else 1e-5)
            run.close(f"{tag} right predictions", got[2], want[2], 0)
        # fp16's loss scale read on the device, and the per-row losses of reduction='none'
        z = (4 * rng.standard_normal((n, c))).astype(np.float16)
        y = rng.integers(0, c, n)
        s = run.dev(np.asarray(1024.0, np.float32))
        got = LL.softmax_cross_entropy_kernel(run.dev(z), run.dev(y), eps, False, s, "none", target=run.target)
        want = L._softmax_cross_entropy_reference(z, y, eps, False, np.asarray(1024.0, np.float32), "none")
        tag = f"softmax_cross_entropy {n}x{c} eps={eps} float16 grad_scale reduction='none'"
        run.close(f"{tag} row losses", got[0], want[0], 1e-5)
        run.close(f"{tag} dlogits", got[1], want[1], 1e-2)
        # PyTorch's class weights and ignore_index: the weights and the divisor read on the device
        z = (4 * rng.standard_normal((n, c))).astype(np.float32)
        y = rng.integers(0, c, n)
        y[1::3] = -100
        w = (rng.random(c) + 0.5).astype(np.float32)
        got = LL.softmax_cross_entropy_kernel(run.dev(z), run.dev(y), eps, True, None, "mean", run.dev(w), -100,
                                              target=run.target)
        want = L._softmax_cross_entropy_reference(z, y, eps, True, None, "mean", w, -100)
        tag = f"softmax_cross_entropy {n}x{c} eps={eps} float32 weight ignore_index"
        run.close(f"{tag} loss", got[0], want[0], 1e-5)
        run.close(f"{tag} dlogits", got[1], want[1], 1e-5)
        run.close(f"{tag} right predictions", got[2], want[2], 0)


def scale(run, rng):
    """The constant scaling over a partial block, in each build, against the reference bit for bit."""
    import ml_dtypes
    from gpuconv.ops import scale as S  # noqa: PLC0415
    for dtype in (np.float32, np.float64, ml_dtypes.bfloat16, np.float16):
        x = (rng.standard_normal(1000) * 10).astype(dtype)
        got = S._launch_scale.scale_forward_kernel(run.dev(x), 1 / 9, target=run.target)[0]
        run.exact(f"scale_forward 1000 {np.dtype(dtype).name}", got, S._scale_forward_reference(x, 1 / 9)[0])


def layout(run, rng):
    """The layout conversion both ways in each build, bit for bit against NumPy's transpose: partial
    32 x 32 tiles, padded channels (zero), 1x1 maps; float32 rounded to TF32 as it is written, against
    round_tf32."""
    import ml_dtypes
    from gpuconv.ops import _launch_layout as LL  # noqa: PLC0415
    from gpuconv.precision import round_tf32  # noqa: PLC0415
    for shape, padded in (((3, 5, 7, 9), 8), ((2, 40, 3, 11), 40), ((3, 70, 1, 1), 72)):
        n, c, h, w = shape
        for dtype in (np.float32, np.float64, ml_dtypes.bfloat16, np.float16):
            x = rng.standard_normal(shape).astype(dtype)
            tag = f"layout {shape} {np.dtype(dtype).name}"
            want = np.zeros((n, h, w, padded), dtype)
            want[..., :c] = x.transpose(0, 2, 3, 1)
            run.exact(f"{tag} to NHWC, {padded} channels", LL.nchw_to_nhwc(run.dev(x), padded, target=run.target),
                      want)
            nhwc = gpuconv.to_channels_last(run.dev(x))
            run.exact(f"{tag} to NCHW", LL.nhwc_to_nchw(nhwc, target=run.target), x)
        x = rng.standard_normal(shape).astype(np.float32)
        want = np.zeros((n, h, w, padded), np.float32)
        want[..., :c] = round_tf32(x).transpose(0, 2, 3, 1)
        run.exact(f"layout {shape} float32 to NHWC rounded to TF32",
                  LL.nchw_to_nhwc(run.dev(x), padded, target=run.target, tf32=True), want)


def channel_gate(run, rng):
    """The channel gate's three kernels in each build and both layouts against the reference, bit for
    bit: 37 channels (a partial 32-channel group channels_last), 63 pixels (a partial round of the 32
    running sums), 1x1 maps, more planes than a block's 8 (NCHW); dx with no add, a full-size add
    and a pooled gradient."""
    import ml_dtypes
    from gpuconv.ops import _launch_channel_gate as LCGATE  # noqa: PLC0415
    from gpuconv.ops import channel_gate as CGATE  # noqa: PLC0415
    for shape in ((3, 37, 5, 3), (2, 9, 7, 9), (2, 40, 1, 1)):
        for dtype in (np.float32, np.float64, ml_dtypes.bfloat16, np.float16):
            for cl in (False, True):
                x, dy, add = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
                gate = rng.uniform(0, 1, shape[:2] + (1, 1)).astype(dtype)
                pooled = rng.standard_normal(gate.shape).astype(dtype)
                put = (lambda a: gpuconv.to_channels_last(run.dev(a))) if cl else run.dev
                tag = f"channel_gate {shape} {np.dtype(dtype).name}{' channels_last' if cl else ''}"
                y, cache = LCGATE.channel_gate_forward_kernel(put(x), run.dev(gate), target=run.target)
                ry, rc = CGATE._channel_gate_forward_reference(x, gate)
                run.exact(f"{tag} forward", y, ry)
                dgate = LCGATE.channel_gate_backward_gate_kernel(put(dy), cache, target=run.target)
                run.exact(f"{tag} backward gate", dgate, CGATE._channel_gate_backward_gate_reference(dy, rc))
                for name, kw, rkw in (("", {}, {}), (" + add", {"add": put(add)}, {"add": add}),
                                      (" + pooled", {"pooled": run.dev(pooled)}, {"pooled": pooled})):
                    dx = LCGATE.channel_gate_backward_data_kernel(put(dy), cache, target=run.target, **kw)
                    run.exact(f"{tag} backward data{name}", dx,
                              CGATE._channel_gate_backward_data_reference(dy, rc, **rkw))


def optim(run, rng):
    """SGD's fused update against the array form (NumPy): every setting, the first step (buffer
    written, not read) and a later one, bit for bit; one parameter per launch, and ten (two
    launches: every slot of the first, two of the second) of sizes 1 to 1000."""
    from gpuconv.layers import Parameter  # noqa: PLC0415
    from gpuconv.optim import SGD  # noqa: PLC0415
    for dtype in (np.float32, np.float64):
        for sizes, momentum, nesterov, wd in (((1,), 0.0, False, 0.0), ((257,), 0.9, True, 5e-4),
                                              ((1000,), 0.9, False, 1e-2),
                                              ((1, 3, 300, 7, 1000, 2, 64, 5, 257, 9), 0.9, True, 5e-4)):
            ws = [rng.standard_normal(n).astype(dtype) for n in sizes]
            grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(2)]
            ps, refs = [Parameter(run.dev(w), "w") for w in ws], [Parameter(w.copy(), "w") for w in ws]
            opt = SGD(ps, lr=0.3, momentum=momentum, nesterov=nesterov, weight_decay=wd)
            with gpuconv.default_device("cpu"):
                ref_opt = SGD(refs, lr=0.3, momentum=momentum, nesterov=nesterov, weight_decay=wd)
                for step in grads:
                    for ref, g in zip(refs, step):
                        ref.grad = g.copy()
                    ref_opt.step()
            for step in grads:
                for p, g in zip(ps, step):
                    p.grad = run.dev(g)
                opt.step()
            for i, (p, ref) in enumerate(zip(ps, refs)):
                run.exact(f"sgd n={sizes[i]} of {len(sizes)} momentum={momentum} nesterov={nesterov} wd={wd} "
                          f"{np.dtype(dtype).name}", p.data, ref.data)
    # The lookahead's average (lookahead_update): 10 arrays, two launches, decays 0.3 then 1 (the pull
    # back alone), against the array form.
    from gpuconv import layers  # noqa: PLC0415
    from gpuconv.lookahead import Lookahead  # noqa: PLC0415
    sizes = (1, 3, 300, 7, 1000, 2, 64, 5, 257, 9)
    for dtype in (np.float32, np.float64):
        ws = [rng.standard_normal((n, 1)).astype(dtype) for n in sizes]
        moves = [[rng.standard_normal((n, 1)).astype(dtype) for n in sizes] for _ in range(2)]
        nets = {}
        for where in ("ref", "dev"):
            nets[where] = net = layers.Sequential(*[layers.Linear(1, n, bias=False) for n in sizes])
            for layer, w in zip(net.children(), ws):
                layer.weight.data = w.copy() if where == "ref" else run.dev(w)
            with gpuconv.default_device("cpu") if where == "ref" else contextlib.nullcontext():
                look = Lookahead(net)
                for step, decay in zip(moves, (0.3, 1.0)):
                    for layer, d in zip(net.children(), step):
                        layer.weight.data += d if where == "ref" else run.dev(d)
                    look.update(decay)
        for n, a, b in zip(sizes, nets["dev"].children(), nets["ref"].children()):
            run.exact(f"lookahead n={n} {np.dtype(dtype).name}", a.weight.data, b.weight.data)


def amp_cast(run, rng):
    """Mixed precision's parameter cast (kernels/amp.cu): 10 float32 masters of sizes 1 to 1000 (two
    launches: every slot of the first) to bfloat16 and float16, against astype bit for bit."""
    import ml_dtypes
    from gpuconv import amp, layers  # noqa: PLC0415
    sizes = (1, 3, 300, 7, 1000, 2, 64, 5, 257, 9)
    for dtype in (ml_dtypes.bfloat16, np.float16):
        ws = [(rng.standard_normal(n) * 100).astype(np.float32) for n in sizes]
        model = layers.Sequential(*[layers.Linear(1, n, bias=False) for n in sizes])
        for layer, w in zip(model.children(), ws):
            layer.weight.data = run.dev(w.reshape(-1, 1))
        amp.cast_parameters(model, dtype)
        for layer, w in zip(model.children(), ws):
            run.exact(f"cast_parameters n={w.size} {np.dtype(dtype).name}", layer.weight.compute,
                      w.reshape(-1, 1).astype(dtype))
        # filters: written channels_last (OHWI memory), transposed on the way
        convs = layers.Sequential(*[layers.Conv2d(c, k, f) for c, k, f in ((3, 5, 3), (24, 7, 2), (8, 3, 1))])
        for conv in convs.children():
            conv.weight.data = run.dev(rng.standard_normal(conv.weight.shape).astype(np.float32))
        amp.cast_parameters(convs, dtype)
        from gpuconv.ops import _launch_conv2d_tc as TC  # noqa: PLC0415
        for conv in convs.children():
            run.exact(f"cast_parameters filters {conv.weight.shape} {np.dtype(dtype).name}", conv.weight.compute,
                      common.host(conv.weight.data).astype(dtype))
            # and the data gradient's copy: (C, FH, FW, K padded to 8), zeros in the padding
            k, c, fh, fw = conv.weight.shape
            kp = -(-k // 8) * 8
            want = np.zeros((c, fh, fw, kp), dtype)
            want[..., :k] = common.host(conv.weight.data).astype(dtype).transpose(1, 2, 3, 0)
            run.exact(f"cast_parameters data-gradient filters {conv.weight.shape} {np.dtype(dtype).name}",
                      TC._packed(conv.weight.compute, (c, fh, fw, kp), np.dtype(dtype)), want)
        amp.cast_parameters(convs, None)


def dropout(run, rng):
    for dtype in (np.float32, np.float64):
        for n, p in ((1, 0.5), (6, 0.3), (257, 0.9), (1000, 0.1)):  # 257, 1000: a partial last block
            xh = rng.standard_normal(n).astype(dtype)
            dy = rng.standard_normal(n).astype(dtype)
            key = D.draw_key(rng)
            y, c = LD.dropout_forward_kernel(run.dev(xh), p, key, target=run.target)
            ry, rc = D._dropout_forward_reference(xh, p, key)
            run.exact(f"dropout forward n={n} p={p}", y, ry)
            run.exact(f"dropout mask n={n} p={p}", c.mask, rc.mask)
            run.exact(f"dropout backward n={n} p={p}", LD.dropout_backward_kernel(run.dev(dy), c, target=run.target),
                      D._dropout_backward_reference(dy, rc))


def augment(run, rng):
    for shape, p in [((5, 3, 7, 9), 3), ((2, 1, 1, 1), 4), ((4, 2, 5, 5), 0)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        mean = np.arange(1, shape[1] + 1, dtype=np.float32)
        std = mean + 1
        idx = rng.integers(0, shape[0], 6)
        oy, ox = rng.integers(0, 2 * p + 1, 6), rng.integers(0, 2 * p + 1, 6)
        flip = rng.integers(0, 2, 6).astype(bool)
        for crop in (True, False):
            a, b = (oy, ox) if crop else (None, None)
            got = augment_batch_kernel(run.dev(images), run.dev(idx), None if a is None else run.dev(a),
                                       None if b is None else run.dev(b), run.dev(flip), run.dev(mean),
                                       run.dev(std), p, np.float32, target=run.target)
            want = normalize(crop_flip(images[idx], a, b, flip, p), mean, std)
            run.exact(f"augment_batch {shape} pad {p} crop={crop}", got, want)
            got = augment_batch_kernel(run.dev(images), run.dev(idx), None if a is None else run.dev(a),
                                       None if b is None else run.dev(b), run.dev(flip), run.dev(mean),
                                       run.dev(std), p, np.float32, target=run.target, channels_last=True)
            run.exact(f"augment_batch {shape} pad {p} crop={crop} channels_last", got, want)
            if crop and 0 < p < min(shape[2:]):  # reflect padding: narrower than the image
                got = augment_batch_kernel(run.dev(images), run.dev(idx), run.dev(a), run.dev(b), run.dev(flip),
                                           run.dev(mean), run.dev(std), p, np.float32, target=run.target,
                                           padding_mode="reflect")
                want = normalize(crop_flip(images[idx], a, b, flip, p, "reflect"), mean, std)
                run.exact(f"augment_batch {shape} pad {p} reflect", got, want)
            size = min(shape[2:]) // 2 + 1  # cutout: squares reaching the last row and column
            cy, cx = rng.integers(0, shape[2] - size + 1, 6), rng.integers(0, shape[3] - size + 1, 6)
            cy[0], cx[0] = shape[2] - size, shape[3] - size
            got = augment_batch_kernel(run.dev(images), run.dev(idx), None if a is None else run.dev(a),
                                       None if b is None else run.dev(b), run.dev(flip), run.dev(mean),
                                       run.dev(std), p, np.float32, target=run.target, channels_last=crop,
                                       cutout=size, cut_y=run.dev(cy), cut_x=run.dev(cx))
            want = cutout(normalize(crop_flip(images[idx], a, b, flip, p), mean, std), cy, cx, size)
            run.exact(f"augment_batch {shape} pad {p} crop={crop} cutout {size}", got, want)
    # An index outside [0, N) cannot be checked without a device-to-host copy: the kernel writes NaN.
    bad = augment_batch_kernel(run.dev(images), run.dev(np.array([9, -4])), None, None, None, run.dev(mean),
                               run.dev(std), 0, np.float32, target=run.target)
    run.add("augment_batch: an out-of-range index gives an all-NaN image", np.isnan(common.host(bad)).all())


def batchnorm(run, rng):
    """Both layouts; 37 channels (a partial 32-channel group); several splits with a partial last
    chunk (5000 positions NCHW, 3200 NHWC: 13 splits, more than the 8 lanes of pass 2); eval mode;
    and the elementwise kernels' grid-stride walk (a grid smaller than the tensor)."""
    import ml_dtypes
    for shape in ((3, 37, 5, 3), (2, 3, 50, 50), (2, 5, 40, 40), (2, 16, 9, 7)):  # 16: the _vec kernels
        for dtype in (np.float32, ml_dtypes.bfloat16):
            for cl in (False, True):
                x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
                dy = rng.standard_normal(shape).astype(dtype)
                g, b = rng.uniform(0.5, 2, shape[1]).astype(np.float32), rng.standard_normal(shape[1]).astype(np.float32)
                rm, rv = rng.standard_normal(shape[1]).astype(np.float32), rng.uniform(0.5, 2, shape[1]).astype(np.float32)
                X = run.dev(gpuconv.to_channels_last(x) if cl else x)
                tag = f"batchnorm {shape} {np.dtype(dtype).name}{' channels_last' if cl else ''}"
                for training in (True, False):
                    rmd, rvd = run.dev(rm), run.dev(rv)
                    rm2, rv2 = rm.copy(), rv.copy()
                    y, c = LB.batchnorm2d_forward_kernel(X, run.dev(g), run.dev(b), rmd, rvd, training, 0.1, 1e-5,
                                                         target=run.target)
                    ry, rc = BN._batchnorm2d_forward_reference(x, g, b, rm2, rv2, training, 0.1, 1e-5)
                    mode = "train" if training else "eval"
                    run.close(f"{tag} {mode} forward", y, ry, rtol=1e-2 if dtype != np.float32 else 2e-4)
                    run.close(f"{tag} {mode} running stats", np.concatenate([common.host(rmd), common.host(rvd)]),
                              np.concatenate([rm2, rv2]))
                    DY = run.dev(gpuconv.to_channels_last(dy) if cl else dy)
                    dx, dg, db = LB.batchnorm2d_backward_kernel(DY, c, target=run.target)
                    rdx, rdg, rdb = BN._batchnorm2d_backward_reference(dy, rc)
                    run.close(f"{tag} {mode} backward dx", dx, rdx, rtol=1e-2 if dtype != np.float32 else 2e-4)
                    run.close(f"{tag} {mode} backward dgamma, dbeta", np.concatenate([common.host(dg), common.host(db)]),
                              np.concatenate([rdg, rdb]))
    # The fused activations: the element kernels (float32 NCHW) and the _vec kernels (bf16
    # channels_last, 16 channels), training and eval.
    for activation in ("relu", "gelu"):
        for dtype, cl in ((np.float32, False), (ml_dtypes.bfloat16, True)):
            shape = (2, 16, 9, 7)
            x, dy = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
            g, b = rng.uniform(0.5, 2, 16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
            rm, rv = np.zeros(16, np.float32), np.ones(16, np.float32)
            put = (lambda a: gpuconv.to_channels_last(run.dev(a))) if cl else run.dev
            tag = f"batchnorm {shape} {np.dtype(dtype).name}{' channels_last' if cl else ''} + {activation}"
            tol = 1e-2 if dtype != np.float32 else 2e-4
            for training in (True, False):
                y, c = LB.batchnorm2d_forward_kernel(put(x), run.dev(g), run.dev(b), run.dev(rm), run.dev(rv),
                                                     training, 0.1, 1e-5, activation, target=run.target)
                ry, rc = BN._batchnorm2d_forward_reference(x, g, b, rm.copy(), rv.copy(), training, 0.1, 1e-5,
                                                           activation)
                run.close(f"{tag} {'train' if training else 'eval'} forward", y, ry, rtol=tol)
                dx, _, _ = LB.batchnorm2d_backward_kernel(put(dy), c, target=run.target)
                run.close(f"{tag} {'train' if training else 'eval'} backward dx", dx,
                          BN._batchnorm2d_backward_reference(dy, rc)[0], rtol=tol)
    # The grid-stride walk of the elementwise kernels: 2 blocks over 3 x 5 x 17 x 19 elements.
    for cl in (0, 1):
        x = rng.standard_normal((3, 5, 17, 19)).astype(np.float32)
        mean, inv = rng.standard_normal(5).astype(np.float32), rng.uniform(0.5, 2, 5).astype(np.float32)
        g, b = rng.uniform(0.5, 2, 5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
        xm = x.transpose(0, 2, 3, 1).copy() if cl else x
        Y = run.dev(np.empty_like(xm))
        kernels.launch("batchnorm", "batchnorm2d_normalize", np.float32, run.target, (2, 1, 1), (256, 1, 1),
                       (run.dev(xm), run.dev(mean), run.dev(inv), run.dev(g), run.dev(b), Y, np.int64(x.size),
                        np.int32(5), np.int32(17 * 19), np.int32(0), np.int32(cl)))
        per = (lambda v: v[None, None, None, :]) if cl else (lambda v: v[None, :, None, None])
        want = (xm - per(mean)) * per(inv)
        run.exact(f"batchnorm2d_normalize grid-stride walk cl={cl} y", Y, want * per(g) + per(b))


def groupnorm(run, rng):
    """Both layouts; 37 channels in NHWC's backward sums (a partial 32-channel block); one group
    (LayerNorm), a group per channel (InstanceNorm) and groups of several channels; a group of
    5043 positions (two chunks of the elementwise kernels, the last partial); no weight and bias;
    a sample's pixels split over several blocks of the per-channel sums (a small batch, the last
    split shorter); 40 samples of 72 channels in one group (the warp sums' lanes take two or
    three terms each, then shuffle); 1 x 1 maps of 40 channels (read as channels_last, a partial
    32-channel block)."""
    import ml_dtypes
    for shape, groups in (((3, 37, 5, 3), 37), ((2, 6, 5, 7), 3), ((2, 3, 41, 41), 1), ((2, 4, 3, 1), 2),
                          ((1, 2, 47, 47), 1), ((40, 72, 1, 2), 1), ((33, 40, 1, 1), 4)):
        for dtype in (np.float32, ml_dtypes.bfloat16):
            for cl in (False, True):
                x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
                dy = rng.standard_normal(shape).astype(dtype)
                w = rng.uniform(0.5, 2, shape[1]).astype(np.float32)
                b = rng.standard_normal(shape[1]).astype(np.float32)
                if groups == 2:
                    w = b = None
                put = (lambda a: run.dev(gpuconv.to_channels_last(a))) if cl else run.dev
                tag = f"groupnorm {shape} G={groups} {np.dtype(dtype).name}{' channels_last' if cl else ''}"
                tol = 1e-2 if dtype != np.float32 else 2e-4
                y, c = LGN.groupnorm_forward_kernel(put(x), groups, None if w is None else run.dev(w),
                                                    None if b is None else run.dev(b), 1e-5, target=run.target)
                ry, rc = GN._groupnorm_forward_reference(x, groups, w, b, 1e-5)
                run.close(f"{tag} forward", y, ry, rtol=tol)
                run.close(f"{tag} mean, rstd", np.concatenate([common.host(c.mean), common.host(c.rstd)]),
                          np.concatenate([rc.mean, rc.rstd]))
                dx, dw, db = LGN.groupnorm_backward_kernel(put(dy), c, target=run.target)
                rdx, rdw, rdb = GN._groupnorm_backward_reference(dy, rc)
                run.close(f"{tag} backward dx", dx, rdx, rtol=tol)
                if w is not None:
                    run.close(f"{tag} backward dweight, dbias", np.concatenate([common.host(dw), common.host(db)]),
                              np.concatenate([rdw, rdb]))
                else:
                    run.add(f"{tag} backward: no dweight, dbias without weight and bias", dw is None and db is None)


def stream_hold(run, rng):
    if run.target == "cuda" and not run.guard:
        # Under compute-sanitizer every launch waits for the one before it, so the guard would
        # always fire: only its kernel runs, released at once (device flags, no mapped memory).
        cp = B.cupy_module()
        release, timed_out = cp.asarray([1], np.int32), cp.asarray([7], np.int32)
        kernels.launch("stream_hold", "stream_hold", np.float32, run.target, (1, 1, 1), (1, 1, 1),
                       (release, timed_out, np.int64(10**6)))
        run.add("stream_hold: released at once, no time-out", int(timed_out.get()[0]) == 0)
        return
    if run.target == "cuda":  # the guard's own launch: the block enqueues, never waits
        # Through CuPy's memory pool, as in training: without it (main() turns it off for exact
        # bounds) every freed array is a cudaFree, which waits for the device.
        cp = B.cupy_module()
        cp.cuda.set_allocator(cp.get_default_memory_pool().malloc)
        try:
            x = run.dev(rng.standard_normal(64).astype(np.float32))
            LR.relu_forward_kernel(x, target=run.target)  # the pool now holds a block of this size
            with syncguard.no_sync("an elementwise launch"):
                LR.relu_forward_kernel(x, target=run.target)
        finally:
            cp.cuda.set_allocator(None)
        run.add("stream_hold: no_sync passes a block that only enqueues", True)
        return
    release, timed_out = np.array([1], np.int32), np.array([7], np.int32)
    kernels.launch("stream_hold", "stream_hold", np.float32, run.target, (1, 1, 1), (1, 1, 1),
                   (release, timed_out, np.int64(10**6)))
    run.add("stream_hold: released at once, no time-out", int(timed_out[0]) == 0)


FAMILIES = (conv, conv_grouped, conv_tc, gemm, pool, relu, gelu, activations, scale, channel_gate, layout, loss,
            optim, amp_cast, dropout, augment, batchnorm, groupnorm, stream_hold)


def main(argv=None):
    p = argparse.ArgumentParser(description=common.description(__doc__))
    p.add_argument("--device", choices=("cuda", "sim"), default="cuda")
    p.add_argument("--no-guard", action="store_true",
                   help="skip syncguard's no-sync check (under compute-sanitizer, which serializes launches)")
    p.add_argument("--only", nargs="+", choices=[f.__name__ for f in FAMILIES], default=None,
                   help="these kernel families alone (the check that every kernel ran is then left out)")
    p.add_argument("--variants", nargs="+", choices=TC_VARIANTS, default=TC_VARIANTS,
                   help="conv_tc's tiles (default: all)")
    args = p.parse_args(argv)
    args.tiny, args.no_torch = True, True
    rc = common.require_device("sanitize_gpu", args, sim_args="--device sim")
    if rc is not None:
        return rc
    if args.device == "cuda":
        B.cupy_module().cuda.set_allocator(None)  # exact allocation bounds for memcheck/initcheck
    run = Run(args.device)
    run.guard = not args.no_guard
    rng = np.random.default_rng(0)
    with gpuconv.default_device(args.device), kernels.launch_log() as log:
        for family in FAMILIES:
            if args.only and family.__name__ not in args.only:
                continue
            # One family's crash is reported and the others still run: a GPU call is too scarce
            # to learn one failure at a time.
            before = len(run.items)
            try:
                family(run, rng, tuple(args.variants)) if family is conv_tc else family(run, rng)
            except Exception:  # noqa: BLE001 - reported as a failed check, with its traceback
                traceback.print_exc()
                run.add(f"{family.__name__}: raised {sys.exc_info()[0].__name__} (traceback above)", False)
            bad = [i["name"] for i in run.items[before:] if not i["ok"]]
            print(f"{family.__name__}: {len(run.items) - before - len(bad)} checks passed, {len(bad)} failed"
                  + "".join(f"\n  FAILED {name}" for name in bad), flush=True)
    B.synchronize()
    run.ran = set(log.names)
    expected, note = expected_here(args.device)
    missing = sorted(expected - run.ran)
    print("RAN " + ",".join(sorted(run.ran)) + (f"\n{note}" if note else ""))
    if not args.only:
        run.add("every kernel launched", not missing,
                detail=f"never launched: {', '.join(missing)}" if missing else None)
    if not run.passed:
        print("sanitize_gpu: FAILED\n  " + "\n  ".join(run.failures()), file=sys.stderr)
        return 1
    print(f"sanitize_gpu: all {len(run.ran)} kernels ran and matched the NumPy reference on '{args.device}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
