"""The tensor-core instructions of kernels/mma.cuh, each alone (tests/kernels_extra/warp_probe.cu),
on the simulator and, when one is present, a GPU; and the sm_75 (Turing) forms in the simulator's
sm_75 build (kernels.sim_arch(75)): m16n8k16 .f16 as two m16n8k8, cp.async as a synchronous copy.

The expected lane -> element mappings are written here a second time, straight from the PTX
ISA's formulas ("Matrix Fragments for mma.m16n8k16 with floating point type", "Matrix Fragments
for mma.m16n8k8", and ldmatrix's fragment figure), independently of the simulator's C++: a
layout error in either shows up on the simulator, and the GPU checks both against the hardware.
"""
from __future__ import annotations

import pathlib
import re
import shutil
import textwrap

import ml_dtypes
import numpy as np
import pytest

from gpuconv import backend as B
from gpuconv import hostsim, kernels
from gpuconv.gradcheck import reduction_tolerance, within_tolerance
from gpuconv.precision import round_tf32

from conftest import nvrtc_or_skip, skip_without_tensor_cores

EXTRA = pathlib.Path(__file__).with_name("kernels_extra")
TARGETS = [pytest.param("sim"),
           pytest.param("cuda", marks=[pytest.mark.gpu,
                                       pytest.mark.skipif(not B.cuda_available(), reason=f"no GPU: {B.cuda_status()}")])]
KINDS = {"bf16": 0, "f16": 1, "tf32": 2}


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    kdir = tmp_path_factory.mktemp("warp-probe-kernels")
    for name in ("common.cuh", "mma.cuh"):
        shutil.copy(kernels.kernel_dir() / name, kdir)
    shutil.copy(EXTRA / "warp_probe.cu", kdir)
    return kdir


@pytest.fixture
def probe_env(probe_dir, monkeypatch):
    monkeypatch.setenv("GPUCONV_KERNELS_DIR", str(probe_dir))
    monkeypatch.setitem(kernels.UNIT_HEADERS, "warp_probe", ("mma.cuh",))


@pytest.fixture(params=TARGETS)
def run(request, probe_env):
    """run(kernel, *args, grid=1, block=32): launch on the target; arrays go in and come back as NumPy."""
    target = request.param

    def launch(kernel, *args, block=32):
        xp = B.cupy_module() if target == "cuda" else np
        dev = [xp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
        kernels.launch("warp_probe", kernel, np.float32, target, (1, 1, 1), (block, 1, 1), tuple(dev))
        return [d.get() if target == "cuda" and hasattr(d, "get") else d for d in dev]
    launch.target = target
    return launch


@pytest.fixture
def sim(probe_env):
    def launch(kernel, *args, block=32):
        kernels.launch("warp_probe", kernel, np.float32, "sim", (1, 1, 1), (block, 1, 1), tuple(args))
        return args
    return launch


def test_probe_compiles_for_sm_75_with_the_turing_forms(probe_env):
    """In the compute_75 build mma.cuh gives m16n8k8 .f16 (its m16n8k16 .f16 being two of them),
    ldmatrix, and plain loads and stores for cp.async: nothing a T4 lacks."""
    nvrtc_or_skip()
    ptx = kernels.nvrtc_compile(kernels.build_source("warp_probe"), "warp_probe", np.float32, "compute_75").decode()
    assert ".target sm_75" in ptx and "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32" in ptx
    assert "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in ptx
    for absent in ("m16n8k16", ".bf16", ".tf32", "cp.async"):
        assert absent not in ptx, absent
    probe = ptx.split(".entry mma_probe(")[1].split(".entry ")[0]
    assert probe.count("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32") == 2


def test_probe_compiles_with_nvrtc(probe_env):
    """The GPU forms (inline PTX) assemble for sm_80 and sm_90 PTX, without a GPU."""
    nvrtc_or_skip()
    for arch in ("compute_80", "compute_90"):
        src = kernels.build_source("warp_probe")
        ptx = kernels.nvrtc_compile(src, "warp_probe", np.float32, arch).decode()
        for insn in ("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
                     "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32",
                     "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", "ldmatrix.sync.aligned.m8n8.x1.shared.b16",
                     "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16", "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
                     "cp.async.ca.shared.global", "cp.async.cg.shared.global", "cp.async.wait_group 2",
                     "cp.async.wait_all"):
            assert insn in ptx, (arch, insn)


def test_gpu_forms_wire_the_fragment_registers_in_order():
    """The inline PTX of mma.sync and ldmatrix is compiled only by NVRTC, never run on the
    simulator: a register out of place there (a[1] before a[0], a .trans form without .trans,
    an .x2 writing three registers) assembles and passes every simulator test. Each mma's
    operands must be d[0..3] <- a[0..3], b[0..1], c[0..3] in the order of its PTX template, and
    each ldmatrix form's name, matrix count, .trans flag, PTX text and registers must agree."""
    text = (kernels.kernel_dir() / "mma.cuh").read_text()
    mmas = re.findall(r'asm volatile\("(mma\.sync\.aligned\.[^"]+)\s*"\s*"([^"]*)"\s*:([^;]*)\);', text)
    assert len(mmas) == 4, "the four mma.sync GPU forms (bf16, f16, tf32; sm_75's k8 f16)"
    for insn, template, wiring in mmas:
        na, nb = (2, 1) if "m16n8k8" in insn and ".f16" in insn else (4, 2)  # m16n8k8 .f16: 2 A, 1 B register
        operands = ([f'"=f"(d[{i}])' for i in range(4)], [f'"r"(a[{i}])' for i in range(na)] +
                    [f'"r"(b[{i}])' for i in range(nb)] + [f'"f"(c[{i}])' for i in range(4)])
        regs = iter(range(4 + na + nb + 4))
        groups = [",".join(f"%{next(regs)}" for _ in range(n)) for n in (4, na, nb, 4)]
        assert template == "{" + "}, {".join(groups) + "};", insn
        outs, ins = (re.findall(r'"[=a-z]+"\([a-z]\[\d\]\)', part) for part in wiring.split(":"))
        assert (outs, ins) == operands, f"{insn}: operands {outs} : {ins}"
    forms = re.findall(r'GPUCONV_LDMATRIX\((ldmatrix_x(\d)(_trans)?), (\d), (true|false), "([^"]+)", "([^"]+)",'
                       r'\s*([^)]*\)(?:, "=r"\(r\[\d\]\))*)\)', text)
    assert len(forms) == 6, "ldmatrix .x1/.x2/.x4, with and without .trans"
    for name, n, trans, num, flag, ptx, outs, regs in forms:
        n = int(n)
        want = f"ldmatrix.sync.aligned.m8n8.x{n}{'.trans' if trans else ''}.shared.b16"
        assert (int(num), flag == "true", ptx) == (n, bool(trans), want), name
        assert outs == "{" + ",".join(f"%{j}" for j in range(n)) + "}", name
        assert re.findall(r'"=r"\(r\[(\d)\]\)', regs) == [str(j) for j in range(n)], name


# ----------------------------------------------------------------------------- PTX layouts
def bits16(x):
    return np.asarray(x).view(np.uint16).astype(np.uint32)


def frags_m16n8k16(A, Bm, C):
    """Per-lane registers for mma.m16n8k16 (.bf16/.f16): A 16x16, B 16x8, C 16x8, from the PTX
    formulas with groupID = lane >> 2, threadID_in_group = lane % 4."""
    a, b, c = np.zeros((32, 4), np.uint32), np.zeros((32, 2), np.uint32), np.zeros((32, 4), np.float32)
    ab, bb = bits16(A), bits16(Bm)
    for lane in range(32):
        g, t = lane >> 2, lane % 4
        for i in range(8):  # a_i: row groupID for 0 <= i < 2 or 4 <= i < 6, else groupID + 8
            row = g if (i < 2 or 4 <= i < 6) else g + 8
            col = 2 * t + (i & 1) + (8 if i >= 4 else 0)
            a[lane, i // 2] |= ab[row, col] << (16 * (i % 2))
        for i in range(4):  # b_i: row threadID_in_group * 2 + (i & 1) (+8 for i >= 2), column groupID
            b[lane, i // 2] |= bb[2 * t + (i & 1) + (8 if i >= 2 else 0), g] << (16 * (i % 2))
        for i in range(4):  # c_i: row groupID (+8 for i >= 2), column threadID_in_group * 2 + (i & 1)
            c[lane, i] = C[g + (8 if i >= 2 else 0), 2 * t + (i & 1)]
    return a, b, c


def frags_m16n8k8_tf32(A, Bm, C):
    """Per-lane registers for mma.m16n8k8 .tf32: A 16x8, B 8x8, C 16x8."""
    a, b, c = np.zeros((32, 4), np.uint32), np.zeros((32, 2), np.uint32), np.zeros((32, 4), np.float32)
    ab, bb = A.view(np.uint32), Bm.view(np.uint32)
    for lane in range(32):
        g, t = lane >> 2, lane % 4
        for i in range(4):  # a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)
            a[lane, i] = ab[g + (8 if i in (1, 3) else 0), t + (4 if i >= 2 else 0)]
        b[lane] = bb[t, g], bb[t + 4, g]
        for i in range(4):
            c[lane, i] = C[g + (8 if i >= 2 else 0), 2 * t + (i & 1)]
    return a, b, c


def frags_m16n8k8_f16(A, Bm, C):
    """Per-lane registers for mma.m16n8k8 .f16 (sm_75 on): A 16x8, B 8x8, C 16x8."""
    a, b, c = np.zeros((32, 2), np.uint32), np.zeros((32, 1), np.uint32), np.zeros((32, 4), np.float32)
    ab, bb = bits16(A), bits16(Bm)
    for lane in range(32):
        g, t = lane >> 2, lane % 4
        for i in range(4):  # a_i: row groupID for i < 2, else groupID + 8; column threadID_in_group * 2 + (i & 1)
            a[lane, i // 2] |= ab[g + (8 if i >= 2 else 0), 2 * t + (i & 1)] << (16 * (i % 2))
        for i in range(2):  # b_i: row threadID_in_group * 2 + i, column groupID
            b[lane, 0] |= bb[2 * t + i, g] << (16 * i)
        for i in range(4):
            c[lane, i] = C[g + (8 if i >= 2 else 0), 2 * t + (i & 1)]
    return a, b, c


def unfrag_c(d):
    """The 16x8 matrix from the per-lane accumulator registers."""
    D = np.zeros((16, 8), np.float32)
    for lane in range(32):
        g, t = lane >> 2, lane % 4
        for i in range(4):
            D[g + (8 if i >= 2 else 0), 2 * t + (i & 1)] = d[lane, i]
    return D


def operands(kind, rng, integers=False):
    k = 8 if kind == "tf32" else 16
    dtype = {"bf16": ml_dtypes.bfloat16, "f16": np.float16, "tf32": np.float32}[kind]
    if integers:  # every product and partial sum exact in float32
        A, Bm = rng.integers(-8, 9, (16, k)), rng.integers(-8, 9, (k, 8))
        C = rng.integers(-64, 65, (16, 8))
    else:
        A, Bm, C = rng.standard_normal((16, k)), rng.standard_normal((k, 8)), rng.standard_normal((16, 8))
    A, Bm, C = A.astype(dtype), Bm.astype(dtype), C.astype(np.float32)
    if kind == "tf32":
        A, Bm = round_tf32(A), round_tf32(Bm)
    return A, Bm, C


def run_mma(run, kind, A, Bm, C):
    skip_without_tensor_cores(getattr(run, "target", "sim"), A.dtype, kind == "tf32")  # (a T4 traps on bf16, tf32)
    a, b, c = (frags_m16n8k8_tf32 if kind == "tf32" else frags_m16n8k16)(A, Bm, C)
    d = np.full((32, 4), np.nan, np.float32)
    d = run("mma_probe", a.ravel(), b.ravel(), c.ravel(), d.ravel(), np.int32(KINDS[kind]))[3]
    return unfrag_c(d.reshape(32, 4))


# ----------------------------------------------------------------------------- mma.sync
@pytest.mark.parametrize("kind", list(KINDS))
def test_mma_is_exact_on_small_integers(run, kind):
    A, Bm, C = operands(kind, np.random.default_rng(1), integers=True)
    want = A.astype(np.float64) @ Bm.astype(np.float64) + C
    np.testing.assert_array_equal(run_mma(run, kind, A, Bm, C), want.astype(np.float32))


@pytest.mark.parametrize("kind", list(KINDS))
def test_mma_matches_numpy_within_the_k_bound(run, kind):
    rng = np.random.default_rng(2)
    for _ in range(3):
        A, Bm, C = operands(kind, rng)
        a64, b64 = A.astype(np.float64), Bm.astype(np.float64)
        want = a64 @ b64 + C
        tol = reduction_tolerance(np.abs(a64) @ np.abs(b64) + np.abs(C), want, A.shape[1] + 1, np.float32)
        tol *= 2.0 if run.target == "cuda" else 1.0  # tensor cores truncate in their sums (tests/test_gemm_tc.py)
        ok, worst = within_tolerance(run_mma(run, kind, A, Bm, C), want, tol)
        assert ok, f"{kind}: error {worst:.3g} x the bound"


def test_mma_layout_is_not_the_transpose(sim):
    """The layout test can fail: A's fragment built column-major (a plausible mistake) gives a
    different product."""
    rng = np.random.default_rng(3)
    A, Bm, C = operands("bf16", rng, integers=True)
    a, b, c = frags_m16n8k16(A.T.copy(), Bm, C)  # A^T is 16x16 too
    d = sim("mma_probe", a.ravel(), b.ravel(), c.ravel(), np.zeros(128, np.float32), np.int32(0))[3]
    assert not np.array_equal(unfrag_c(d.reshape(32, 4)), (A.astype(np.float32) @ Bm.astype(np.float32) + C))


def test_mma_sim_sums_in_order_in_float32(sim):
    """The simulator's fixed order: the products in k order in float32, then C. 2^24 + 1 - 1
    loses the 1 in float32 (one order), keeps it in another: the result pins the order."""
    A = np.zeros((16, 16), ml_dtypes.bfloat16)
    Bm = np.zeros((16, 8), ml_dtypes.bfloat16)
    A[0, :3] = [2.0 ** 24, 1.0, -(2.0 ** 24)]
    Bm[:3, 0] = 1.0
    C = np.zeros((16, 8), np.float32)
    C[0, 0] = 1.0
    got = run_mma(sim, "bf16", A, Bm, C)
    assert got[0, 0] == 1.0  # (2^24 + 1) rounds to 2^24, minus 2^24 is 0, plus C = 1


def test_mma_sim_uses_only_the_tf32_bits(sim):
    """An operand not rounded to TF32 is read as its TF32 bits (the 13 low ones cleared): a kernel
    that forgets tf32_round gets the truncated product, which the GEMM tests would catch."""
    A = np.zeros((16, 8), np.float32)
    Bm = np.zeros((8, 8), np.float32)
    A[0, 0] = np.float32(1 + 2.0 ** -11 + 2.0 ** -12)  # needs rounding: TF32 keeps 10 mantissa bits
    Bm[0, 0] = 1.0
    got = run_mma(sim, "tf32", A, Bm, np.zeros((16, 8), np.float32))
    assert got[0, 0] == 1.0 and round_tf32(A)[0, 0] == np.float32(1 + 2.0 ** -10)


# ----------------------------------------------------------------------------- ldmatrix
def expected_ldmatrix(tile, offsets, num, trans):
    """Lane l's registers: matrix j's rows are at the addresses of lanes 8j..8j+7; lane l gets
    row groupID, elements 2t and 2t+1 (low half first); .trans: rows 2t and 2t+1 of column groupID."""
    rows = tile.reshape(64, 8)[offsets // 16]  # the 16-byte row each lane points at
    out = np.zeros((32, 4), np.uint32)
    for lane in range(32):
        g, t = lane >> 2, lane % 4
        for j in range(num):
            m = rows[8 * j:8 * j + 8].astype(np.uint32)  # matrix j, 8 x 8
            lo, hi = (m[2 * t, g], m[2 * t + 1, g]) if trans else (m[g, 2 * t], m[g, 2 * t + 1])
            out[lane, j] = lo | hi << 16
    return out


@pytest.mark.parametrize("trans", [False, True], ids=["rows", "trans"])
@pytest.mark.parametrize("num", [1, 2, 4])
def test_ldmatrix_gives_each_lane_its_fragment(run, num, trans):
    rng = np.random.default_rng(4)
    tile = rng.integers(0, 2 ** 16, 64 * 8).astype(np.uint16)
    offsets = (rng.permutation(64)[:32] * 16).astype(np.int32)  # every lane a different row
    want = expected_ldmatrix(tile, offsets, num, trans)
    # Lanes past 8 * num supply no address: give them misaligned ones, which must not matter.
    offsets[8 * num:] += 2
    got = run("ldmatrix_probe", tile, offsets, np.zeros(128, np.uint32), np.int32(num), np.int32(trans),
              np.int32(-1))[2].reshape(32, 4)
    np.testing.assert_array_equal(got[:, :num], want[:, :num])


def test_ldmatrix_x4_is_an_mma_a_fragment(sim):
    """ldmatrix.x4 over a 16x16 tile (matrices: rows 0-7 / 8-15 of columns 0-7, then of 8-15) gives
    exactly the A fragment of mma.m16n8k16: the addressing the GEMM uses."""
    rng = np.random.default_rng(5)
    A = rng.integers(0, 2 ** 16, (16, 16)).astype(np.uint16)
    tile = np.zeros((64, 8), np.uint16)
    tile[:16], tile[16:32] = A[:, :8], A[:, 8:]  # 16-byte rows: left halves, then right halves
    lanes = np.arange(32)
    j = lanes // 8
    offsets = (((j & 1) * 8 + lanes % 8 + (j >> 1) * 16) * 16).astype(np.int32)
    got = sim("ldmatrix_probe", tile.ravel(), offsets, np.zeros(128, np.uint32), np.int32(4), np.int32(0),
              np.int32(-1))[2].reshape(32, 4)
    a, _, _ = frags_m16n8k16(A.view(np.float16), np.zeros((16, 8), np.float16), np.zeros((16, 8), np.float32))
    np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize("offset, global_lane, match", [
    (4, -1, r"lane 3's row address 0x[0-9a-f]+ is not 16-byte aligned"),
    (0, 5, r"lane 5's row address 0x[0-9a-f]+ is not in shared memory"),
])
def test_ldmatrix_misuse_names_the_lane(sim, offset, global_lane, match):
    offsets = (np.arange(32) * 16).astype(np.int32)
    offsets[3] += offset
    with pytest.raises(hostsim.SimulatorError, match=r"kernel ldmatrix_probe, block \(0,0,0\), warp 0: "
                                                     r"ldmatrix\.sync\.aligned\.m8n8\.x4\.shared\.b16 \(kernels/"
                                                     r"warp_probe\.cu:\d+\): " + match):
        sim("ldmatrix_probe", np.zeros(512, np.uint16), offsets, np.zeros(128, np.uint32), np.int32(4),
            np.int32(0), np.int32(global_lane))


# ----------------------------------------------------------------------------- cp.async
SNAP = ["before", "wait2", "wait1", "wait_all"]


def run_cp_async(run, src_bytes, neighbour=0):
    src = np.arange(1, 225, dtype=np.float32)
    out, tail = np.zeros(384, np.float32), np.zeros(128, np.float32)
    _, out, tail, *_ = run("cp_async_probe", src, out, tail, np.int32(src_bytes), np.int32(neighbour))
    snaps = {name: out.reshape(4, 3, 32)[i] for i, name in enumerate(SNAP)}
    return src, snaps, tail.reshape(32, 4)


def test_cp_async_data_lands_at_the_wait_that_retires_its_group(run):
    """Three groups in flight: wait_group 2 retires the oldest, wait_group 1 the next, wait_all
    the last; the simulator shows poison wherever the hardware gives no guarantee."""
    src, snaps, tail = run_cp_async(run, 16)
    t = np.arange(32)
    groups = src[4 * t], src[128 + 2 * t], src[192 + t]
    for after, retired in (("wait2", 1), ("wait1", 2), ("wait_all", 3)):
        for i in range(retired):
            np.testing.assert_array_equal(snaps[after][i], groups[i], err_msg=f"group {i} after {after}")
        if run.target == "sim":  # on a GPU these reads race with the copies; the simulator poisons them
            assert np.isnan(snaps[after][retired:]).all(), after
    np.testing.assert_array_equal(tail, src[:128].reshape(32, 4))
    if run.target == "sim":
        assert np.isnan(snaps["before"]).all()


@pytest.mark.parametrize("src_bytes", [0, 4, 8, 12])
def test_cp_async_zero_fills_past_src_size(run, src_bytes):
    src, _, tail = run_cp_async(run, src_bytes)
    want = src[:128].reshape(32, 4).copy()
    want[:, src_bytes // 4:] = 0
    np.testing.assert_array_equal(tail, want)


def test_cp_async_data_of_another_thread_needs_a_barrier(sim):
    """After its own wait a thread sees its own copies, not another thread's: without the
    __syncthreads a kernel needs, the neighbour's chunk is still poison (in one schedule or the
    other)."""
    _, snaps, _ = run_cp_async(sim, 16, neighbour=1)
    with kernels.sim_schedule("reverse"):
        _, rsnaps, _ = run_cp_async(sim, 16, neighbour=1)
    assert np.isnan(snaps["wait_all"][0]).any() and np.isnan(rsnaps["wait_all"][0]).any()


def test_cp_async_destination_is_poison_from_issue_to_wait(run):
    """The simulator poisons a destination when the copy is issued, so a read of a stage's old
    tile after its refill was issued shows, even though the old data was there."""
    src = np.arange(1, 33, dtype=np.float32)
    out = run("cp_async_refill", src, np.zeros(64, np.float32))[1]
    np.testing.assert_array_equal(out[32:], src)
    if run.target == "sim":
        assert np.isnan(out[:32]).all(), out[:32]


@pytest.mark.parametrize("mode, match", [
    (0, r"issues cp\.async\.cg\.shared\.global with src-size 20: it must lie in 0\.\.16"),
    (1, r"issues cp\.async\.cg\.shared\.global to 0x[0-9a-f]+, which is not 16 bytes of shared memory"),
    (2, r"issues cp\.async\.ca\.shared\.global from 0x[0-9a-f]+ to 0x[0-9a-f]+: both addresses must be "
        r"aligned to the cp-size, 8 bytes"),
])
def test_cp_async_misuse_is_reported(sim, mode, match):
    with pytest.raises(hostsim.SimulatorError, match=r"kernel cp_async_misuse, block \(0,0,0\) thread \(0,0,0\) "
                                                     + match):
        sim("cp_async_misuse", np.zeros(16, np.float32), np.int32(mode))


@pytest.mark.skipif(not hostsim.sanitizers_available(), reason="g++ or its ASan/UBSan runtimes are not installed")
def test_cp_async_source_out_of_bounds_is_named_at_issue(probe_dir, monkeypatch):
    """Under AddressSanitizer the simulator touches a cp.async source when the copy is issued, so
    an out-of-bounds copy is reported with the issuing thread, not later at the wait."""
    monkeypatch.setenv("GPUCONV_KERNELS_DIR", str(probe_dir))
    res = hostsim.run_sanitized(textwrap.dedent("""
        import numpy as np
        from gpuconv import kernels
        kernels.UNIT_HEADERS["warp_probe"] = ("mma.cuh",)
        kernels.launch("warp_probe", "cp_async_misuse", np.float32, "sim", (1, 1, 1), (2, 1, 1),
                       (np.zeros(16, np.float32), np.int32(3)))
    """))
    assert not res.ok and "heap-buffer-overflow" in res.stderr
    assert res.location == "kernel cp_async_misuse, block (0,0,0) thread (0,0,0)"
    assert "mma_sim::cp_async" in res.stderr  # ASan's stack: the issue, not the wait


# ----------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("insn, name", [(0, r"mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.bf16\.bf16\.f32"),
                                        (1, r"ldmatrix\.sync\.aligned\.m8n8\.x4\.shared\.b16")])
@pytest.mark.parametrize("how, others", [
    (0, r"lane 31 has exited"),
    (1, r"lane 31 waits at __syncthreads \(kernels/warp_probe\.cu:\d+\)"),
])
def test_a_warp_instruction_on_31_lanes_is_divergence(sim, insn, name, how, others):
    with pytest.raises(hostsim.BarrierDivergence,
                       match=r"kernel partial_warp, block \(0,0,0\): warp divergence: warp 1 lanes 0-30 \[31 of 32\] "
                             rf"wait at {name} \(kernels/warp_probe\.cu:\d+\) while {others}\. A \.sync\.aligned"):
        # Two warps: warp 0 runs all its lanes (it goes ahead), warp 1 only lanes 0-30.
        sim("partial_warp", np.zeros(64, np.float32), np.int32(63), np.int32(how), np.int32(insn), block=64)


def test_warp_instruction_from_two_lines_is_divergence(sim):
    with pytest.raises(hostsim.BarrierDivergence, match=r"warp 0 lanes 0-15 \[16 of 32\] wait at mma\.sync.* while "
                                                        r"lanes 16-31 wait at mma\.sync.*\(kernels/warp_probe\.cu:\d+\)"):
        sim("partial_warp", np.zeros(32, np.float32), np.int32(16), np.int32(2), np.int32(0))


def test_a_warp_of_16_threads_cannot_run_mma(sim):
    with pytest.raises(hostsim.BarrierDivergence, match=r"lanes 0-15 \[16 of 32\] wait at mma.* while the warp has "
                                                        r"only 16 threads"):
        sim("partial_warp", np.zeros(16, np.float32), np.int32(32), np.int32(1), np.int32(0), block=16)


@pytest.mark.parametrize("insn", [0, 1])
def test_full_warps_run_the_divergence_probe(sim, insn):
    d = sim("partial_warp", np.full(64, np.nan, np.float32), np.int32(32), np.int32(1), np.int32(insn), block=64)[0]
    np.testing.assert_array_equal(d, 0)


# ----------------------------------------------------------------------------- the swizzle
@pytest.mark.parametrize("row_bytes", [64, 128])
def test_swizzle_is_a_conflict_free_permutation_of_16_byte_chunks(run, row_bytes):
    out64, out128 = run("swizzle_probe", np.zeros(64, np.int32), np.zeros(128, np.int32))
    chunks = row_bytes // 16
    off = (out64 if row_bytes == 64 else out128).reshape(16, chunks)
    # A permutation of the tile's chunks that keeps every chunk 16-byte aligned and in its
    # 128-byte line (so a row never moves to another row's bytes, and 16-byte copies stay whole).
    assert sorted(off.ravel()) == list(range(0, 16 * row_bytes, 16))
    rows = np.arange(16)[:, None]
    assert (off // row_bytes == rows).all()
    # ldmatrix reads one chunk from each of 8 consecutive rows: 8 distinct 16-byte bank groups.
    for r0 in (0, 8):
        for c in range(chunks):
            groups = (off[r0:r0 + 8, c] % 128) // 16
            assert len(set(groups)) == 8, (row_bytes, r0, c, groups)
    # Unswizzled, the same reads would conflict: the check can fail.
    plain = (np.arange(8)[:, None] * row_bytes + np.arange(chunks) * 16) % 128 // 16
    assert len(set(plain[:, 0])) < 8


# ----------------------------------------------------------------------------- sm_75 (Turing)
def f16_operands(rng, k, integers):
    if integers:  # every product and partial sum exact in float32
        A, Bm, C = rng.integers(-8, 9, (16, k)), rng.integers(-8, 9, (k, 8)), rng.integers(-64, 65, (16, 8))
    else:
        A, Bm, C = rng.standard_normal((16, k)), rng.standard_normal((k, 8)), rng.standard_normal((16, 8))
    return A.astype(np.float16), Bm.astype(np.float16), C.astype(np.float32)


def check_product(got, A, Bm, C, integers, factor=1.0):
    a64, b64 = A.astype(np.float64), Bm.astype(np.float64)
    want = a64 @ b64 + C
    if integers:
        np.testing.assert_array_equal(got, want.astype(np.float32))
        return
    tol = factor * reduction_tolerance(np.abs(a64) @ np.abs(b64) + np.abs(C), want, A.shape[1] + 1, np.float32)
    ok, worst = within_tolerance(got, want, tol)
    assert ok, f"error {worst:.3g} x the bound"


@pytest.mark.parametrize("integers", [True, False], ids=["exact", "bound"])
def test_mma_m16n8k8_f16_gives_each_lane_its_product(run, integers):
    """sm_75's mma.m16n8k8 .f16 on fragments laid out from the PTX formulas, against NumPy."""
    rng = np.random.default_rng(11)
    for _ in range(1 if integers else 3):
        A, Bm, C = f16_operands(rng, 8, integers)
        a, b, c = frags_m16n8k8_f16(A, Bm, C)
        d = run("mma_k8_probe", a.ravel(), b.ravel(), c.ravel(), np.full(128, np.nan, np.float32))[3]
        check_product(unfrag_c(d.reshape(32, 4)), A, Bm, C, integers, 2.0 if run.target == "cuda" else 1.0)


def test_mma_m16n8k8_f16_layout_is_not_the_tf32_one(sim):
    """The k8 layout test can fail: B's pair taken from rows t and t+4 (the tf32 layout's) gives
    a different product."""
    A, Bm, C = f16_operands(np.random.default_rng(12), 8, True)
    a, b, c = frags_m16n8k8_f16(A, Bm[[0, 4, 1, 5, 2, 6, 3, 7]], C)
    d = sim("mma_k8_probe", a.ravel(), b.ravel(), c.ravel(), np.zeros(128, np.float32))[3]
    assert not np.array_equal(unfrag_c(d.reshape(32, 4)), A.astype(np.float32) @ Bm.astype(np.float32) + C)


@pytest.mark.parametrize("integers", [True, False], ids=["exact", "bound"])
def test_sm75_build_multiplies_m16n8k16_f16_as_two_k8(sim, integers):
    """In the sm_75 build mma_m16n8k16_f16 takes the m16n8k16 fragments as they are (the same
    tiles feed it) and gives the same product."""
    rng = np.random.default_rng(13)
    with kernels.sim_arch(75):
        for _ in range(1 if integers else 3):
            A, Bm, C = f16_operands(rng, 16, integers)
            check_product(run_mma(sim, "f16", A, Bm, C), A, Bm, C, integers)


def test_sm75_build_sums_k_0_to_7_with_c_then_k_8_to_15(sim):
    """The order pins the split: products 2^24 at k = 0 and -2^24 at k = 8, C = 1. One m16n8k16
    sums the products first (0) then adds C: 1. Two m16n8k8 add C to the first half (2^24 + 1
    rounds to 2^24), then the second half: 0."""
    A = np.zeros((16, 16), np.float16)
    Bm = np.zeros((16, 8), np.float16)
    A[0, 0], A[0, 8] = 4096, -4096
    Bm[0, 0] = Bm[8, 0] = 4096
    C = np.zeros((16, 8), np.float32)
    C[0, 0] = 1.0
    assert run_mma(sim, "f16", A, Bm, C)[0, 0] == 1.0
    with kernels.sim_arch(75):
        assert run_mma(sim, "f16", A, Bm, C)[0, 0] == 0.0


@pytest.mark.parametrize("src_bytes", [0, 4, 8, 12, 16])
def test_sm75_build_copies_synchronously_with_the_zero_fill(sim, src_bytes):
    """sm_75 has no cp.async: its form copies before it returns (no poison, every snapshot the
    data), zero-fills past src-size as cp.async does, and still checks the operands."""
    with kernels.sim_arch(75):
        src, snaps, tail = run_cp_async(sim, src_bytes)
        t = np.arange(32)
        g0 = src[:128].reshape(32, 4).copy()
        g0[:, src_bytes // 4:] = 0
        for name in SNAP:
            np.testing.assert_array_equal(snaps[name], [g0[:, 0], src[128 + 2 * t], src[192 + t]], err_msg=name)
        np.testing.assert_array_equal(tail, g0)
        with pytest.raises(hostsim.SimulatorError, match=r"issues cp\.async\.cg\.shared\.global with src-size 20"):
            sim("cp_async_misuse", np.zeros(16, np.float32), np.int32(0))
