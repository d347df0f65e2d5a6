"""The element conversions of kernels/common.cuh against ml_dtypes and NumPy, bit for bit.

tests/kernels_extra/convert.cu runs each conversion one element per thread, built by the kernel
registry beside a copy of common.cuh, on the simulator (and on a GPU when one is present, where
tf32_round is the hardware's cvt.rna.tf32.f32). Up-conversions are checked on all 65536
bfloat16 and float16 patterns; down-conversions on random float32 patterns plus every edge
(ties both ways, the largest finite values and the overflow thresholds, the subnormal
boundaries, zeros, inf, NaN with and without payload). All 2^32 float32 patterns were also
checked once, off the suite (nine minutes): no difference from ml_dtypes or NumPy.
"""
from __future__ import annotations

import pathlib
import shutil

import ml_dtypes
import numpy as np
import pytest

from gpuconv import backend as B
from gpuconv import kernels
from gpuconv.precision import round_tf32

BF16 = np.dtype(ml_dtypes.bfloat16)
EXTRA = pathlib.Path(__file__).with_name("kernels_extra")
TARGETS = [pytest.param("sim"),
           pytest.param("cuda", marks=[pytest.mark.gpu,
                                       pytest.mark.skipif(not B.cuda_available(), reason=f"no GPU: {B.cuda_status()}")])]


@pytest.fixture(scope="module")
def convert_dir(tmp_path_factory):
    """A kernels directory holding common.cuh and convert.cu, for GPUCONV_KERNELS_DIR."""
    kdir = tmp_path_factory.mktemp("convert-kernels")
    shutil.copy(kernels.kernel_dir() / "common.cuh", kdir)
    shutil.copy(EXTRA / "convert.cu", kdir)
    return kdir


@pytest.fixture(params=TARGETS)
def run(request, convert_dir, monkeypatch):
    """run(kernel, x, out_dtype, build=np.float32) -> the kernel's output, on the simulator or a GPU."""
    monkeypatch.setenv("GPUCONV_KERNELS_DIR", str(convert_dir))
    target = request.param

    def launch(kernel, *arrays, outputs=(np.float32,), build=np.float32):
        xp = B.cupy_module() if target == "cuda" else np
        ins = [xp.ascontiguousarray(xp.asarray(a)) for a in arrays]
        outs = [xp.empty(ins[0].shape, dtype=d) for d in outputs]
        n = ins[0].size
        grid, block = kernels.grid_1d(n, kernels.BLOCK, target)
        kernels.launch("convert", kernel, build, target, grid, block, (*ins, *outs, np.int64(n)))
        got = [o.get() if target == "cuda" else o for o in outs]
        return got[0] if len(got) == 1 else got
    return launch


def all_16bit():
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def float32_edges():
    """Float32 bit patterns where rounding to bfloat16, float16 or TF32 is decided at an edge."""
    base = [0x00000000, 0x80000000, 0x7F800000, 0xFF800000,          # zeros, infinities
            0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001,          # quiet/signaling NaN, both signs
            0x7FBFFFFF, 0x7F802000, 0x7F801FFF, 0x7FFFFFFF, 0x7F810000,  # NaN payloads high and low
            0x00000001, 0x80000001, 0x007FFFFF, 0x00800000,          # float32 subnormals, smallest normal
            0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F7FFF, 0x7F7F8000, 0x7F7F8001,  # bf16: largest finite, overflow tie
            0x7F7FEFFF, 0x7F7FF000,                                  # TF32: overflow tie
            0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FF001, 0x47800000,  # fp16: 65504, 65520 (tie to inf)
            0x38800000, 0x387FFFFF, 0x387FE000, 0x387FF000,          # fp16: 2^-14 and just below it
            0x33800000, 0x33000000, 0x33000001, 0x32FFFFFF,          # fp16: 2^-24, 2^-25 (tie to 0)
            0x33C00000, 0x34200000, 0x3F800000, 0xBF800000]          # 1.5 * 2^-24 (tie to even), 1, -1
    bits = set(base)
    # Ties and their neighbours at each format's rounding position, with even and odd kept parts.
    for kept_low in range(4):
        for drop in (16, 13):  # bfloat16 drops 16 bits; float16 (normal) and TF32 drop 13
            half = 1 << (drop - 1)
            for mant in (0x3F800000, 0x40490000, 0x00000000, 0x1A000000, 0x5F000000):
                m = (mant | (kept_low << drop)) & 0x7FFFFFFF
                for delta in (-1, 0, 1):
                    for sign in (0, 0x80000000):
                        bits.add(sign | (m + half + delta))
    # float16 subnormal ties: k * 2^-25 for small odd k (exactly halfway between subnormals).
    for k in range(1, 64, 2):
        for s in (1.0, -1.0):
            bits.add(int(np.array([s * k * 2.0 ** -25], np.float32).view(np.uint32)[0]))
    return np.array(sorted(bits), dtype=np.uint32)


def float32_patterns(n=1 << 18, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([float32_edges(), rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)])


def test_edge_set_reaches_every_case():
    """The edge set holds ties that round up and down in each format, overflow, subnormal
    results and NaNs: a conversion that truncates, or rounds ties one way, is caught."""
    x = float32_edges().view(np.float32)
    with np.errstate(all="ignore"):
        bf = x.astype(BF16).astype(np.float32)
        h = x.astype(np.float16).astype(np.float32)
    trunc_bf = (float32_edges() & np.uint32(0xFFFF0000)).view(np.float32)
    assert np.sum(bf != trunc_bf) > 50                              # rounding up happens
    assert np.isinf(h[np.isfinite(x)]).sum() >= 4                   # overflow to inf
    sub = np.abs(h) < 2.0 ** -14
    assert np.sum(sub & (h != 0)) > 20 and np.sum(np.isnan(x)) >= 8  # subnormal results, NaNs


@pytest.mark.parametrize("fmt", ["bfloat16", "float16"])
def test_every_16bit_pattern_widens_exactly(run, fmt):
    bits = all_16bit()
    dtype = BF16 if fmt == "bfloat16" else np.dtype(np.float16)
    got = run("bf16_bits_to_float" if fmt == "bfloat16" else "half_bits_to_float", bits).view(np.uint32)
    want = bits.view(dtype).astype(np.float32).view(np.uint32)
    # Bit for bit, NaN payloads included (bfloat16: the top half; float16: shifted up, as NumPy).
    np.testing.assert_array_equal(got, want)


def test_bfloat16_rounding_matches_ml_dtypes_bit_for_bit(run):
    u = float32_patterns()
    got = run("float_to_bf16_bits", u.view(np.float32), outputs=(np.uint16,))
    with np.errstate(all="ignore"):
        want = u.view(np.float32).astype(BF16).view(np.uint16)
    np.testing.assert_array_equal(got, want)  # every NaN: ml_dtypes' quiet NaN 0x7fc0 with its sign


def test_float16_rounding_matches_numpy_bit_for_bit(run):
    u = float32_patterns(seed=1)
    x = u.view(np.float32)
    got = run("float_to_half_bits", x, outputs=(np.uint16,))
    with np.errstate(all="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    # A NaN stays a NaN of the same sign, keeping the top 10 payload bits (0x7c01 when they are 0),
    # as NumPy's own conversion does (compared bit for bit too where NumPy is that conversion).
    payload = (u[nan] >> np.uint32(13)) & np.uint32(0x3FF)
    rule = ((u[nan] >> np.uint32(16)) & np.uint32(0x8000)) | np.uint32(0x7C00) | np.maximum(payload, np.uint32(1))
    np.testing.assert_array_equal(got[nan], rule.astype(np.uint16))
    assert np.all(np.isnan(got[nan].view(np.float16))) and np.array_equal(got[nan] >> 15, want[nan] >> 15)


def test_tf32_rounding_is_round_to_nearest_ties_away(run):
    u = float32_patterns(seed=2)
    got = run("float_to_tf32", u.view(np.float32)).view(np.uint32)
    want = round_tf32(u.view(np.float32)).view(np.uint32)
    nan = np.isnan(u.view(np.float32))
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.all(np.isnan(got[nan].view(np.float32)))
    # By hand: ties go away from zero (not to even), below a tie goes down, overflow goes to inf.
    one = 1.0
    cases = {one + 2.0 ** -11: one + 2.0 ** -10, -(one + 2.0 ** -11): -(one + 2.0 ** -10),
             one + 3 * 2.0 ** -11: one + 2 * 2.0 ** -10,  # a tie above an odd kept part: up too
             one + 2.0 ** -11 - 2.0 ** -23: one, 2.0 ** -149: 0.0,
             float(np.float32(3.4028235e38)): np.inf}
    x = np.array(list(cases), np.float32)
    np.testing.assert_array_equal(run("float_to_tf32", x), np.array(list(cases.values()), np.float32))
    np.testing.assert_array_equal(round_tf32(x), np.array(list(cases.values()), np.float32))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, BF16, np.float16], ids=["f64", "f32", "bf16", "f16"])
def test_storage_round_trip_of_each_build(run, dtype):
    """to_acc then from_acc of each build gives the value back, and to_acc equals astype."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(4096) * 10.0 ** rng.integers(-8, 5, 4096)).astype(dtype)
    acc = np.float64 if dtype is np.float64 else np.float32
    wide, back = run("storage_round_trip", x, outputs=(acc, dtype), build=dtype)
    np.testing.assert_array_equal(wide, x.astype(acc))
    np.testing.assert_array_equal(back.view(np.uint8), x.view(np.uint8))


def test_simulator_checks_the_storage_dtype_of_2_byte_arrays(convert_dir, monkeypatch):
    """A bfloat16 kernel parameter takes bfloat16 arrays only (a float16 or uint16 array of the same
    size would be misread on a GPU), and the message names the NumPy dtype."""
    monkeypatch.setenv("GPUCONV_KERNELS_DIR", str(convert_dir))
    fn = kernels.get_function("convert", "storage_round_trip", BF16, "sim")
    x = np.ones(4, np.float16)
    with pytest.raises(TypeError, match=r"argument 0 'x' \(`const bf16_t\*`\) expects a bfloat16 array for "
                                        r"`const bfloat16\*`, got a float16 array"):
        fn((1,), (32,), (x, np.empty(4, np.float32), np.empty(4, BF16), np.int64(4)))


def test_index_divmod_on_both_sides_of_2_31(run):
    """divmod_index (kernels/common.cuh) takes 32-bit divisions below 2^31 and 64-bit ones above:
    both against Python's integers, at and around the boundary and at 2^40 scale."""
    rng = np.random.default_rng(7)
    edge = np.array([0, 1, 2**31 - 2, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, 2**32, 2**32 + 5, 2**40 + 12345,
                     2**62 + 3], dtype=np.int64)
    a = np.concatenate([edge, edge, rng.integers(0, 2**31, 64), rng.integers(2**31, 2**45, 64)]).astype(np.int64)
    b = np.concatenate([np.full(len(edge), 3), np.full(len(edge), 2**31 - 1), rng.integers(1, 5000, 128)]).astype(
        np.int32)
    q, r = run("index_divmod", a, b, outputs=(np.int64, np.int32))
    np.testing.assert_array_equal(q, a // b)
    np.testing.assert_array_equal(r, a % b)


def fast_div_cases():
    """(n, d) pairs for FastDiv: every divisor's edges (0, d - 1, d, d + 1, the largest n, multiples
    around the top), divisors 1-300, powers of two and their neighbours up to 2^31 - 1, random ones."""
    rng = np.random.default_rng(11)
    top = 2**31 - 1
    ds = set(range(1, 301)) | {2**k + e for k in range(1, 31) for e in (-1, 0, 1)} | {top, top - 1, 3 * 2**29}
    ds |= set(int(v) for v in rng.integers(1, top, 200))
    ds = sorted(d for d in ds if 1 <= d <= top)
    n, d = [], []
    for div in ds:
        k = top // div
        cand = {0, 1, div - 1, div, div + 1, top, top - 1, k * div, k * div - 1, (k - 1) * div + div - 1}
        cand |= set(int(v) for v in rng.integers(0, top, 8))
        for v in sorted(c for c in cand if 0 <= c <= top):
            n.append(v)
            d.append(div)
    return np.array(n, dtype=np.int64), np.array(d, dtype=np.int64)


def test_fast_divisor_divides_every_numerator_below_2_31_exactly():
    """gpuconv.kernels.fast_divisor's (m, s) give n // d for every edge case of every kind of divisor, by
    the formula common.cuh's FastDiv evaluates (in Python's integers here), and the divisors past the
    range are refused by name."""
    n, d = fast_div_cases()
    m = np.array([int(kernels.fast_divisor(int(v))[0]) for v in d], dtype=object)
    s = np.array([int(kernels.fast_divisor(int(v))[1]) for v in d], dtype=object)
    got = (((n.astype(object) * m) >> 32) + n.astype(object)) >> s
    np.testing.assert_array_equal(got.astype(np.int64), n // d)
    assert all(0 <= int(kernels.fast_divisor(int(v))[0]) < 2**32 for v in (1, 2, 3, 2**30 + 1, 2**31 - 1))
    for bad in (0, -3, 2**31):
        with pytest.raises(ValueError, match=rf"divisor {bad} is outside \[1, 2\^31 - 1\]"):
            kernels.fast_divisor(bad)


def test_fast_div_on_the_device_divides_exactly(run):
    """common.cuh's FastDiv on the simulator (and a GPU when present): n / d for the edge cases of
    every kind of divisor, with the launcher's (m, s)."""
    n, d = fast_div_cases()
    ms = np.array([kernels.fast_divisor(int(v)) for v in d], dtype=np.uint32)
    q = run("fast_div", n.astype(np.int32), ms[:, 0].copy(), ms[:, 1].copy(), outputs=(np.int32,))
    np.testing.assert_array_equal(q, n // d)
