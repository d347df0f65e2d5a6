"""Hopper's warpgroup mma of kernels/wgmma.cuh alone (tests/kernels_extra/wgmma_probe.cu), on the
simulator and, on a Hopper GPU, the hardware.

The shared-memory layouts are written here a second time, from the PTX ISA's table of canonical
layouts ("Shared Memory Matrix Layout": CuTe (shape):(stride) pairs per major-ness and swizzle,
evaluated generically below), the descriptors' bit fields from its "Matrix Descriptor Format" table,
and the accumulator layout from CUTLASS's CLayout_64xN, not from the simulator's C++: a layout
error in either shows up on the simulator, and a Hopper GPU checks both against the hardware.
"""
from __future__ import annotations

import pathlib
import re
import shutil

import ml_dtypes
import numpy as np
import pytest

from conftest import nvrtc_or_skip
from gpuconv import backend as B
from gpuconv import _env, hostsim, kernels
from gpuconv.gradcheck import reduction_tolerance, within_tolerance

EXTRA = pathlib.Path(__file__).with_name("kernels_extra")
A_BYTES = B_BYTES = 16384
HOPPER_WHY = None if B.cuda_available() else f"no GPU: {B.cuda_status()}"
if HOPPER_WHY is None and not kernels.wgmma_available("cuda", 0):
    HOPPER_WHY = ("the wgmma tiles are off (GPUCONV_WGMMA=0)" if not _env.flag("GPUCONV_WGMMA", default=True)
                  else "wgmma needs a Hopper GPU (compute capability 9.0)")
# The 'cuda' case is a GPU test (which GPUCONV_REQUIRE_GPU holds to running) where a GPU is there
# to run it, or where none is; on a GPU without wgmma (not Hopper, or the tiles switched off after a
# failed probe) it is skipped as a case that does not apply there.
_APPLIES = B.cuda_available() and HOPPER_WHY is None
TARGETS = [pytest.param("sim"),
           pytest.param("cuda", marks=([pytest.mark.gpu] if _APPLIES or not B.cuda_available() else [])
                        + [pytest.mark.skipif(HOPPER_WHY is not None, reason=HOPPER_WHY or "")])]
DTYPES = {"bf16": (ml_dtypes.bfloat16, 0), "f16": (np.float16, 1)}


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    kdir = tmp_path_factory.mktemp("wgmma-probe-kernels")
    for name in ("common.cuh", "mma.cuh", "wgmma.cuh"):
        shutil.copy(kernels.kernel_dir() / name, kdir)
    shutil.copy(EXTRA / "wgmma_probe.cu", kdir)
    return kdir


@pytest.fixture
def probe_env(probe_dir, monkeypatch):
    monkeypatch.setenv("GPUCONV_KERNELS_DIR", str(probe_dir))
    monkeypatch.setitem(kernels.UNIT_HEADERS, "wgmma_probe", ("mma.cuh", "wgmma.cuh"))
    monkeypatch.setattr(kernels, "ARCH_SPECIFIC", (*kernels.ARCH_SPECIFIC, "wgmma_probe"))


@pytest.fixture(params=TARGETS)
def target(request, probe_env):
    return request.param


def test_gpu_forms_number_their_operands_in_order():
    """The inline PTX of wgmma.mma_async is compiled by NVRTC only, never run on the simulator: an
    accumulator register listed out of order, or the A and B descriptors' operand numbers swapped,
    assembles and passes every simulator test. The accumulator lists name %0 .. %(ACC - 1) and
    d[0] .. d[ACC - 1] in order, and each form (ACC = N / 2 accumulators) numbers its descriptors
    ACC and ACC + 1 (A, then B: the order "l"(da), "l"(db) binds them), the scale-d source ACC + 2
    and the 16-bit types' two transpose flags ACC + 3 and ACC + 4."""
    text = (kernels.kernel_dir() / "wgmma.cuh").read_text()
    gpu = text[text.index("#define GPUCONV_WGMMA_REGS32"):text.index("#define GPUCONV_WGMMA_INSN")]
    regs, outs = {}, {}
    for acc in (32, 64, 128):
        body = lambda name: gpu[gpu.index(f"#define {name}{acc}"):].split("#define", 2)[1]  # noqa: E731
        regs[acc] = [int(r) for r in re.findall(r"%(\d+)", body("GPUCONV_WGMMA_REGS"))]
        outs[acc] = [int(r) for r in re.findall(r'"\+f"\(d\[(\d+)\]\)', body("GPUCONV_WGMMA_OUTS"))]
        lower = acc // 2 if acc > 32 else 0  # each list extends the one before by name
        assert regs[acc] == list(range(lower, acc)) and outs[acc] == list(range(lower, acc)), acc
    assert '"l"(da), "l"(db), "r"(1)' in text and '"n"(TA), "n"(TB))' in text
    forms = re.findall(r'^GPUCONV_WGMMA_(16|TF32)\((wgmma_m64n(\d+)k(\d+)_(\w+)), (\d+), (\d+), (?:"(\w+)", )?'
                       r'"%(\d+), %(\d+)", "%(\d+)"(?:, "%(\d+), %(\d+)")?\)$', text, re.M)
    assert len(forms) == 9, "m64n{64,128,256} in bf16, f16 and tf32"
    for kind, name, n, k, dtype, big_n, acc, ty, da, db, scale, ta, tb in forms:
        acc = int(acc)
        assert int(n) == int(big_n) == 2 * acc and int(k) == (8 if kind == "TF32" else 16), name
        assert (dtype, ty) == ("tf32", "") if kind == "TF32" else dtype == ty, name
        numbers = [int(v) for v in (da, db, scale, ta, tb) if v]
        assert numbers == list(range(acc, acc + (3 if kind == "TF32" else 5))), f"{name}: operands {numbers}"


def test_probe_compiles_for_sm_90a_only(probe_env):
    """The GPU forms assemble for compute_90a; other archs build the file without them."""
    nvrtc_or_skip()
    src = kernels.build_source("wgmma_probe")
    ptx = kernels.nvrtc_compile(src, "wgmma_probe", np.float32, "compute_90a").decode()
    shapes = [f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{t}.{t}" for n in (64, 128, 256) for t in ("bf16", "f16")]
    shapes += [f"wgmma.mma_async.sync.aligned.m64n{n}k8.f32.tf32.tf32" for n in (64, 128, 256)]
    for insn in (*shapes, "wgmma.fence.sync.aligned", "wgmma.commit_group.sync.aligned", "wgmma.wait_group.sync.aligned 0",
                 "fence.proxy.async.shared::cta"):
        assert insn in ptx, insn
    for arch in ("compute_80", "compute_90"):
        assert "wgmma.mma_async" not in kernels.nvrtc_compile(src, "wgmma_probe", np.float32, arch).decode()


# ----------------------------------------------------------------------------- layouts
def canonical(T):
    """PTX ISA, "Shared Memory Matrix Layout", canonical layouts in units of elements, T of them in
    16 bytes (8 of 16 bits, 4 of tf32; LBO and SBO in bytes, turned into elements below): (row
    shape, k shape), (row strides, k strides); a row is M (A) or N (B). "m" is the rest of the
    rows, "k" the rest of K. (MN-major exists for 16-bit elements only.)"""
    return {
        ("K", 0): (((8, "m"), (T, 2)), ((T, "SBO"), (1, "LBO"))),
        ("K", 32): (((8, "m"), (T, 2)), ((2 * T, "SBO"), (1, T))),
        ("K", 64): (((8, "m"), (T, 2)), ((4 * T, "SBO"), (1, T))),
        ("K", 128): (((8, "m"), (T, 2)), ((8 * T, "SBO"), (1, T))),
        ("MN", 0): (((T, 1, "m"), (8, "k")), ((1, T, "SBO"), (T, "LBO"))),
        ("MN", 32): (((T, 2, "m"), (8, "k")), ((1, T, "LBO"), (2 * T, "SBO"))),
        ("MN", 64): (((T, 4, "m"), (8, "k")), ((1, T, "LBO"), (4 * T, "SBO"))),
        ("MN", 128): (((T, 8, "m"), (8, "k")), ((1, T, "LBO"), (8 * T, "SBO"))),
    }


def _eval(coord, shape, stride, lbo, sbo):
    """CuTe's layout function: the coordinate split colexicographically over the shape (the
    first mode fastest, the last unbounded), dotted with the strides."""
    off = 0
    for n, (extent, s) in enumerate(zip(shape, stride)):
        last = n == len(shape) - 1
        i = coord if last else coord % extent
        coord = 0 if last else coord // extent
        off += i * {"LBO": lbo, "SBO": sbo}.get(s, s)
    return off


def swizzle(addr, w):
    """Swizzle<B,4,3> on a byte address: bits 4.. XOR bits 7.., B = log2(w / 16) bits."""
    b = {0: 0, 32: 1, 64: 2, 128: 3}[w]
    return addr ^ (((addr >> 7) & ((1 << b) - 1)) << 4)


def image(M, major, w, lbo, sbo, start=0, nbytes=A_BYTES):
    """The shared-memory bytes holding the matrix M (rows x k; 16-bit or float32 elements) at byte
    `start`."""
    e = np.asarray(M).dtype.itemsize
    (rshape, kshape), (rstride, kstride) = canonical(16 // e)[(major, w)]
    img = np.zeros(nbytes, np.uint8)
    bits = np.asarray(M).view(np.uint16 if e == 2 else np.uint32)
    for r in range(M.shape[0]):
        for k in range(M.shape[1]):
            at = _eval(r, rshape, rstride, lbo // e, sbo // e) + _eval(k, kshape, kstride, lbo // e, sbo // e)
            addr = swizzle(start + e * at, w)
            assert not img[addr:addr + e].any(), "the layout maps two elements to one place"
            img[addr:addr + e] = np.frombuffer(bits[r, k].tobytes(), np.uint8)
    return img


def accumulator_map(n=128):
    """(thread, value) -> (row, column) of D for m64nNk16 f32, from CUTLASS's CLayout_64xN:
    ((4,8,4),(2,2,N/8)):((128,1,16),(64,8,512)) into the column-major index m + 64 n."""
    rows, cols = np.zeros((128, n // 2), int), np.zeros((128, n // 2), int)
    for t in range(128):
        for v in range(n // 2):
            idx = 128 * (t % 4) + (t // 4 % 8) + 16 * (t // 32) + 64 * (v % 2) + 8 * (v // 2 % 2) + 512 * (v // 4)
            rows[t, v], cols[t, v] = idx % 64, idx // 64
    return rows, cols


MAPS = {n: accumulator_map(n) for n in (64, 128, 256)}


def to_fragments(C):
    rows, cols = MAPS[C.shape[1]]
    return C[rows, cols].astype(np.float32)  # [thread][N / 2]


def from_fragments(d, n=128):
    rows, cols = MAPS[n]
    D = np.full((64, n), np.nan, np.float32)
    D[rows, cols] = d.reshape(128, n // 2)
    return D


def launch(target, a_img, b_img, c, *, threads=128, a_group=0, a_skip=0, a=(64, 0, 512), b=(64, 0, 512), kind=0,
           ta=0, tb=0, mode=0):
    xp = B.cupy_module() if target == "cuda" else np
    out = np.full(64 * threads * (2 if mode == 1 else 1), np.nan, np.float32)
    args = [xp.asarray(v) for v in (a_img, b_img, c.ravel(), out)]
    args += [np.int32(v) for v in (a_group, a_skip, *a, *b, kind, ta, tb, mode)]
    kernels.launch("wgmma_probe", "wgmma_probe", np.float32, target, (1, 1, 1), (threads, 1, 1), tuple(args))
    return args[3].get() if target == "cuda" else args[3]


def integer_operands(dtype, rng, k=16, n=128):
    A = rng.integers(-8, 9, (64, k)).astype(dtype)
    Bm = rng.integers(-8, 9, (n, 16)).astype(dtype)
    C = rng.integers(-64, 65, (64, n)).astype(np.float32)
    return A, Bm, C


def exact(A, Bm, C):
    return (A.astype(np.float64) @ Bm.astype(np.float64).T + C).astype(np.float32)


# (major, swizzle, LBO, SBO) per operand; A is 64 x 16, B 128 x 16 (rows x k)
LAYOUTS = {
    "K-64B (the conv mk stages)": (("K", 64, 16, 512), ("K", 64, 16, 512)),
    "K-128B": (("K", 128, 16, 1024), ("K", 128, 16, 1024)),
    "K-32B": (("K", 32, 16, 256), ("K", 32, 16, 256)),
    "K-none": (("K", 0, 128, 256), ("K", 0, 2048, 128)),
    "MN-128B (the conv km stages)": (("MN", 128, 4096, 1024), ("MN", 128, 4096, 1024)),
    "MN-64B": (("MN", 64, 2048, 512), ("MN", 64, 1024, 512)),
    "MN-32B": (("MN", 32, 512, 256), ("MN", 32, 1024, 256)),
    "MN-none": (("MN", 0, 1024, 128), ("MN", 0, 128, 256)),
    "A K-64B, B MN-128B": (("K", 64, 16, 512), ("MN", 128, 2048, 1024)),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("dt", list(DTYPES))
def test_wgmma_reads_every_canonical_layout(target, name, dt):
    dtype, kind = DTYPES[dt]
    (ma, wa, la, sa), (mb, wb, lb, sb) = LAYOUTS[name]
    A, Bm, C = integer_operands(dtype, np.random.default_rng(hash(name) % 2**32))
    d = launch(target, image(A, ma, wa, la, sa), image(Bm, mb, wb, lb, sb, nbytes=B_BYTES), to_fragments(C),
               a=(wa, la, sa), b=(wb, lb, sb), kind=kind, ta=int(ma == "MN"), tb=int(mb == "MN"))
    np.testing.assert_array_equal(from_fragments(d), exact(A, Bm, C))


def test_a_wrong_layout_gives_a_wrong_product(probe_env):
    """The layout test can fail: A laid out K-major but read as MN-major (the transpose flag
    forgotten) multiplies other elements."""
    A, Bm, C = integer_operands(ml_dtypes.bfloat16, np.random.default_rng(5))
    d = launch("sim", image(A, "K", 64, 16, 512), image(Bm, "K", 64, 16, 512), to_fragments(C), ta=1)
    assert not np.array_equal(from_fragments(d), exact(A, Bm, C))


@pytest.mark.parametrize("swz, step", [(128, 32), (64, 32)])
def test_k16_steps_inside_a_swizzle_atom_move_the_start_address(target, swz, step):
    """K-major atoms wider than 32 bytes hold several k16 steps: step s of a K = W / 2 matrix is the
    descriptor's start moved s * 32 bytes, the swizzle read from the address bits (the conv
    kernels' second step of a 64-byte row)."""
    k = swz // 2
    A, Bm, C = integer_operands(ml_dtypes.bfloat16, np.random.default_rng(6), k=k)
    a_img = image(A, "K", swz, 16, 8 * swz)
    for s in range(k // 16):
        d = launch(target, a_img, image(Bm, "K", 64, 16, 512), to_fragments(C), a_skip=step * s, a=(swz, 16, 8 * swz))
        np.testing.assert_array_equal(from_fragments(d), exact(A[:, 16 * s:16 * s + 16], Bm, C))


def test_two_warpgroups_each_multiply_their_own_a(target):
    """256 threads are two warpgroups: warps 4-7 hold the second group's D, from its own A."""
    rng = np.random.default_rng(7)
    A0, Bm, C0 = integer_operands(ml_dtypes.bfloat16, rng)
    A1, _, C1 = integer_operands(ml_dtypes.bfloat16, rng)
    a_img = image(A0, "K", 64, 16, 512) | image(A1, "K", 64, 16, 512, start=8192)
    c = np.concatenate([to_fragments(C0), to_fragments(C1)])
    d = launch(target, a_img, image(Bm, "K", 64, 16, 512), c, threads=256, a_group=8192).reshape(2, -1)
    np.testing.assert_array_equal(from_fragments(d[0]), exact(A0, Bm, C0))
    np.testing.assert_array_equal(from_fragments(d[1]), exact(A1, Bm, C1))


def launch_n(target, n, a_img, b_img, c, a, b, kind=0, ta=0, tb=0):
    """One m64nNk16 (or k8) of one warpgroup, N = 64 or 256 (the tcwgn64 and tcwg256 convolutions)."""
    xp = B.cupy_module() if target == "cuda" else np
    out = np.full(128 * n // 2, np.nan, np.float32)
    args = [xp.asarray(v) for v in (a_img, b_img, c.ravel(), out)]
    args += [np.int32(v) for v in (*a, *b, kind, ta, tb)]
    kernels.launch("wgmma_probe", f"wgmma{n}_probe", np.float32, target, (1, 1, 1), (128, 1, 1), tuple(args))
    return args[3].get() if target == "cuda" else args[3]


@pytest.mark.parametrize("b_layout", [("K", 64, 16, 512), ("MN", 128, 2048, 1024)], ids=["B K-major", "B N-major"])
@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("n", [64, 256])
def test_m64nNk16_other_widths(target, n, dt, b_layout):
    """The 64- and 256-column shapes: N / 2 accumulators per thread, the same fragment pattern over
    N / 8 column blocks, B's N rows from one descriptor (N-major: 64 columns are one 128-byte
    block, 256 are four, LBO apart)."""
    dtype, kind = DTYPES[dt]
    major, w, lbo, sbo = b_layout
    A, Bm, C = integer_operands(dtype, np.random.default_rng(12), n=n)
    d = launch_n(target, n, image(A, "K", 128, 16, 1024), image(Bm, major, w, lbo, sbo, nbytes=B_BYTES),
                 to_fragments(C), (128, 16, 1024), (w, lbo, sbo), kind, 0, int(major == "MN"))
    np.testing.assert_array_equal(from_fragments(d, n), exact(A, Bm, C))


@pytest.mark.parametrize("n", [64, 256])
def test_tf32_wgmma_other_widths(target, n):
    """m64n64k8 and m64n256k8 .tf32, K-major, 64-byte swizzle (the conv stages')."""
    rng = np.random.default_rng(14)
    A = rng.integers(-8, 9, (64, 8)).astype(np.float32)
    Bm = rng.integers(-8, 9, (n, 8)).astype(np.float32)
    C = rng.integers(-64, 65, (64, n)).astype(np.float32)
    d = launch_n(target, n, image(A, "K", 64, 16, 512), image(Bm, "K", 64, 16, 512, nbytes=B_BYTES),
                 to_fragments(C), (64, 16, 512), (64, 16, 512), kind=2)
    np.testing.assert_array_equal(from_fragments(d, n), exact(A, Bm, C))


@pytest.mark.parametrize("swz", [128, 64, 32, 0])
def test_tf32_wgmma_reads_k_major_float32_operands(target, swz):
    """m64n128k8 .tf32: 4-byte elements in the same 16-byte core matrices (4 of K per row chunk),
    K-major only; operands already TF32 (small integers), sums exact."""
    rng = np.random.default_rng(13)
    A = rng.integers(-8, 9, (64, 8)).astype(np.float32)
    Bm = rng.integers(-8, 9, (128, 8)).astype(np.float32)
    C = rng.integers(-64, 65, (64, 128)).astype(np.float32)
    lbo, sbo = (128, 256) if swz == 0 else (16, 8 * swz)
    b_lbo, b_sbo = (2048, 128) if swz == 0 else (16, 8 * swz)
    d = launch(target, image(A, "K", swz, lbo, sbo), image(Bm, "K", swz, b_lbo, b_sbo, nbytes=B_BYTES),
               to_fragments(C), a=(swz, lbo, sbo), b=(swz, b_lbo, b_sbo), kind=2)
    np.testing.assert_array_equal(from_fragments(d), exact(A, Bm, C))


def test_tf32_wgmma_reads_only_the_tf32_bits(probe_env):
    """On the simulator an operand not rounded to TF32 counts as its truncation (13 low bits
    cleared), so a kernel that skips the rounding in shared memory gets other sums than the
    precision rule's."""
    A, Bm = np.zeros((64, 8), np.float32), np.zeros((128, 8), np.float32)
    A[0, 0], Bm[0, 0] = np.float32(1 + 2.0 ** -11 + 2.0 ** -12), 1.0
    d = launch("sim", image(A, "K", 64, 16, 512), image(Bm, "K", 64, 16, 512, nbytes=B_BYTES),
               to_fragments(np.zeros((64, 128), np.float32)), kind=2)
    assert from_fragments(d)[0, 0] == 1.0


@pytest.mark.parametrize("dt", list(DTYPES))
def test_wgmma_matches_numpy_within_the_k_bound(target, dt):
    dtype, kind = DTYPES[dt]
    rng = np.random.default_rng(8)
    A, Bm = rng.standard_normal((64, 16)).astype(dtype), rng.standard_normal((128, 16)).astype(dtype)
    C = rng.standard_normal((64, 128)).astype(np.float32)
    a64, b64 = A.astype(np.float64), Bm.astype(np.float64)
    want = a64 @ b64.T + C
    tol = reduction_tolerance(np.abs(a64) @ np.abs(b64).T + np.abs(C), want, 17, np.float32)
    tol *= 2.0 if target == "cuda" else 1.0  # tensor cores truncate in their sums (tests/test_gemm_tc.py)
    d = launch(target, image(A, "K", 128, 16, 1024), image(Bm, "MN", 128, 2048, 1024), to_fragments(C),
               a=(128, 16, 1024), b=(128, 2048, 1024), kind=kind, tb=1)
    ok, worst = within_tolerance(from_fragments(d), want, tol)
    assert ok, f"error {worst:.3g} x the bound"


# PTX ISA, "Matrix Descriptor Format": bits 13-0 the start address, 29-16 the leading and 45-32 the
# stride dimension byte offsets, each matrix-descriptor-encode(x) = (x & 0x3FFFF) >> 4; 51-49 the
# base offset; 63-62 the swizzle: 0 none, 1 128-byte, 2 64-byte, 3 32-byte; the other bits unused.
ISA_SWIZZLE_MODE = {0: 0, 128: 1, 64: 2, 32: 3}


def test_descriptors_put_each_field_where_the_ptx_isa_does(target):
    """The layout tests build each operand's bytes from the ISA, but a descriptor's bits are packed
    by kernels/wgmma.cuh and unpacked by the simulator, one reading of the ISA's table on both
    sides: the 128- and 32-byte swizzle codes swapped, or the LBO and SBO fields, alike in both,
    pass every other simulator test (these and the convolutions') and fail on a GPU. Here the
    packing is read by the ISA's table alone."""
    skip, lbo, sbo = 0x70, 0x1230, 0x4560  # 16-byte multiples, each field a different value
    xp = B.cupy_module() if target == "cuda" else np
    out = xp.zeros(5, np.uint64)
    kernels.launch("wgmma_probe", "wgmma_descriptor_probe", np.float32, target, (1, 1, 1), (32, 1, 1),
                   (out, np.int32(skip), np.int32(lbo), np.int32(sbo)))
    got = [int(v) for v in (out.get() if target == "cuda" else out)]
    base = got[4]
    assert base >> 14 == 0 and base % (1024 >> 4) == 0, f"{base:#x}: the array's start alone, 1024-byte aligned"
    for w, desc in zip((0, 32, 64, 128), got):
        want = ((base + (skip >> 4)) & 0x3FFF | (lbo & 0x3FFFF) >> 4 << 16 | (sbo & 0x3FFFF) >> 4 << 32
                | ISA_SWIZZLE_MODE[w] << 62)
        assert desc == want, f"{w}-byte swizzle: descriptor {desc:#018x}, the PTX ISA's {want:#018x}"


# ----------------------------------------------------------------------------- asynchrony, misuse
def test_accumulators_change_only_at_the_wait(probe_env):
    """Read between commit and wait, the accumulators still hold C in the simulator (undefined on
    a GPU): an epilogue that forgets the wait reads wrong sums."""
    A, Bm, C = integer_operands(ml_dtypes.bfloat16, np.random.default_rng(9))
    d = launch("sim", image(A, "K", 64, 16, 512), image(Bm, "K", 64, 16, 512), to_fragments(C), mode=1)
    early, late = d[:128 * 64], d[128 * 64:]
    np.testing.assert_array_equal(from_fragments(early), C)
    np.testing.assert_array_equal(from_fragments(late), exact(A, Bm, C))


def test_shared_memory_is_read_at_the_wait(probe_env):
    """A stage refilled before the wait that retires its mma changes the product (the simulator
    reads the operands then): the pipeline's order is checked."""
    A, Bm, C = integer_operands(ml_dtypes.bfloat16, np.random.default_rng(10))
    d = launch("sim", image(A, "K", 64, 16, 512), image(Bm, "K", 64, 16, 512), to_fragments(C), mode=2)
    np.testing.assert_array_equal(from_fragments(d), C)  # A read as zeros


@pytest.mark.parametrize("mode, kw, match", [
    (3, {}, r"wgmma\.mma_async.*\(.*wgmma_probe\.cu:\d+\): no wgmma\.fence since the warp's last wgmma\.wait_group"),
    (4, {}, r"lane 5 passes descriptors .* a warpgroup's operands are one matrix"),
    (0, {"b": (64, 0, 262128)}, r"operand B, element \(8, 0\): shared address \d+ .* is not in a shared array"),
    (0, {"threads": 64}, r"wgmma\.fence.*: warp 0 belongs to warpgroup 0, which needs 128 threads, and the block has 64"),
    (0, {"threads": 192}, r"wgmma\.fence.*: warp 4 belongs to warpgroup 1, which needs 256 threads, and the block has 192"),
    (5, {}, r"warpgroup divergence: by the end of the block, the 4 warps of warpgroup 0 \(warps 0-3\) have executed "
            r"different wgmma instructions \(warp 0: 4, warp 1: 4, warp 2: 4, warp 3: 4 instructions"),
    (6, {"threads": 256}, r"warpgroup divergence: .* warpgroup 0 .*\(warp 0: 4, warp 1: 4, warp 2: 4, warp 3: 3 "),
    (7, {}, r"wgmma\.wait_group.*: the accumulators of an mma_async of commit group 0 were written before this wait "
            r"retired it"),
    (0, {"a_skip": 512, "a": (128, 16, 1024)}, r"operand A \(descriptor 0x[0-9a-f]+, 128-byte swizzle\) starts at "
                                                r"shared address \d+, in a swizzle pattern that does not begin on a "
                                                r"1024-byte boundary"),
    (8, {}, r"operand B's descriptor 0x[0-9a-f]+ has base offset 1"),
])
def test_wgmma_misuse_is_reported(probe_env, mode, kw, match):
    """Including a warpgroup that is not whole (the block's threads not a multiple of 128) and warps
    of one warpgroup that execute other wgmma instructions than the rest (PTX ISA: wgmma is
    .sync.aligned over the 4 warps of a warpgroup, which execute each one together with the same
    operands): on a GPU undefined, and in the simulator each warp would compute its own rows. And
    accumulators written while their mma_async is in flight (until the wait_group that retires
    it): the simulator, which adds at the wait, would add to the new values and hide the bug. And a
    swizzled operand whose swizzle pattern starts off its 8 W-byte boundary with base offset 0 (PTX
    ISA, "Matrix Descriptor Format"), or a nonzero base offset, which the simulator does not read:
    data swizzled by its absolute addresses there reads right in the simulator, not on a GPU."""
    A, Bm, C = integer_operands(ml_dtypes.bfloat16, np.random.default_rng(11))
    c = np.concatenate([to_fragments(C)] * (kw.get("threads", 128) // 128 + 1))
    with pytest.raises(hostsim.SimulatorError, match=match):
        launch("sim", image(A, "K", 64, 16, 512), image(Bm, "K", 64, 16, 512), c, mode=mode, **kw)


# The async proxy: wgmma reads its operands through it, and a generic-proxy write (a store, a landed
# cp.async) reaches it only by fence.proxy.async in the writing thread and a barrier after that.
UNPUBLISHED = (r"kernel wgmma_probe, block \(0,0,0\), warp \d+: wgmma\.mma_async\S* \(.*wgmma_probe\.cu:\d+\): "
               r"operand A, element \(\d+, \d+\): shared address \d+ was last written through the generic proxy "
               r"\(a store or a landed cp\.async\) by ")


@pytest.mark.parametrize("order", ["forward", "reverse"])
@pytest.mark.parametrize("mode, match", [
    (9, r"one of threads \(\d+,0,0\) \.\.\. \[32 threads that ran between two of the simulator's comparisons, each "
        r"of which must fence\], of which thread \(\d+,0,0\), .* \[32\] have executed no fence\.proxy\.async since"),
    (10, r"one of threads \(\d+,0,0\) \.\.\. \[32 threads .*\], (of which .* \[32\] have executed no "
         r"fence\.proxy\.async since|whose fence\.proxy\.async after it no __syncthreads has ordered before this "
         r"read \(fence and read are in the same barrier interval\))"),
    (11, r"one of threads \(\d+,0,0\) \.\.\. \[32 threads .*\], of which thread \(37,0,0\) \[1\] has executed no "
         r"fence\.proxy\.async since"),
    (13, r"one of threads \(\d+,0,0\) \.\.\. \[32 threads .*\], of which thread .* \[32\] have executed no "
         r"fence\.proxy\.async since"),
], ids=["no fence", "fence after the barrier", "one thread without the fence", "fence before the stores"])
def test_a_write_not_published_to_the_async_proxy_is_reported(probe_env, mode, match, order):
    """PTX ISA, memory consistency model ("proxies") and fence.proxy.async: the operand images are
    stored by every thread through the generic proxy, and a wgmma reads them through the async
    proxy, which sees them only after fence.proxy.async.shared::cta by the writing thread followed
    by a barrier. Without the fence, with the fence after the barrier (another thread's store is not
    ordered before the wgmma), with one thread that skips it, or with the fence before the stores
    instead of after them, the products come out right in
    the simulator (one memory), and on an H100 they are a race: the simulator reports the read,
    naming the kernel, the instruction, the shared address and the writer, in both schedule
    orders; the published images (mode 0) are not reported."""
    A, Bm, C = integer_operands(ml_dtypes.bfloat16, np.random.default_rng(15))
    a_img, b_img, c = image(A, "K", 64, 16, 512), image(Bm, "K", 64, 16, 512), to_fragments(C)
    with kernels.sim_schedule(order):
        np.testing.assert_array_equal(from_fragments(launch("sim", a_img, b_img, c)), exact(A, Bm, C))
        with pytest.raises(hostsim.SimulatorError, match=UNPUBLISHED + match):
            launch("sim", a_img, b_img, c, mode=mode)


def test_the_proxy_fence_in_the_same_barrier_interval_is_reported(probe_env):
    """A store fenced by its own thread but read by a wgmma before any barrier after the fence (the
    fence and the read in one barrier interval) is reported as such: threads 0-127 each store and
    fence, then the wgmma runs before a __syncthreads orders the fences (mode 12)."""
    A, Bm, C = integer_operands(ml_dtypes.bfloat16, np.random.default_rng(16))
    with pytest.raises(hostsim.SimulatorError, match=UNPUBLISHED + r"one of threads \(\d+,0,0\) .*, whose fence\.proxy\.async after it "
                       r"no __syncthreads has ordered before this read \(fence and read are in the same barrier "
                       r"interval\)"):
        launch("sim", image(A, "K", 64, 16, 512), image(Bm, "K", 64, 16, 512), to_fragments(C), mode=12)
