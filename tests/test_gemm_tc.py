"""The tensor-core GEMM (kernels/gemm_tc.cu through gpuconv/ops/_launch_gemm_tc.py) against the
float64 product of its operands as the tensor cores take them, on the simulator and, when one is
present, a GPU: bf16 and fp16 with B as [N, K] or [K, N], TF32 with B as [N, K]; odd shapes whose
row pitches take every copy width of the loader (16, 8, 4 bytes of cp.async, 2 bytes of plain
loads), partial tiles in M, N and K, K over several pipeline rounds; outputs rounded once to the
operands' dtype or kept in float32. Exact where every partial sum is exact (small integers);
bit-identical in both simulator schedules. benchmarks/sanitize_gpu.py launches it under the
simulator's AddressSanitizer build (tests/test_sanitizer.py)."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from gpuconv import backend as B
from gpuconv import kernels
from gpuconv.gradcheck import reduction_tolerance, within_tolerance
from gpuconv.ops._launch_gemm_tc import gemm_reference, gemm_tc, vector_bytes

from conftest import skip_without_tensor_cores

BF16 = np.dtype(ml_dtypes.bfloat16)
TARGETS = [pytest.param("sim"),
           pytest.param("cuda", marks=[pytest.mark.gpu,
                                       pytest.mark.skipif(not B.cuda_available(), reason=f"no GPU: {B.cuda_status()}")])]
# (operand dtype, tf32, B layout)
CASES = {"bf16-nt": (BF16, False, "nt"), "bf16-nn": (BF16, False, "nn"), "f16-nt": (np.float16, False, "nt"),
         "f16-nn": (np.float16, False, "nn"), "tf32-nt": (np.float32, True, "nt")}
# (M, N, K): with 16-bit operands, A's pitch of 2K bytes takes copies of 2 (K = 1, 7, 65), 4 (130),
# 8 (36) and 16 bytes (136: four 32-element rounds and a zero-filled partial one).
SHAPES = [(1, 1, 1), (7, 7, 7), (63, 65, 130), (65, 63, 36), (130, 130, 65), (70, 66, 136)]
# The tensor cores' sums are not IEEE round-to-nearest: Fasi, Higham, Mikaitis and Pranesh
# ("Numerical behavior of NVIDIA tensor cores", PeerJ Computer Science, 2021) found truncation in
# the alignment and normalization of the float32 accumulation, up to twice the error of a rounded
# addition. On a GPU the bound is doubled; the simulator rounds to nearest and keeps the bound.
GPU_FACTOR = 2.0


@pytest.fixture(params=TARGETS)
def target(request):
    return request.param


def on(target, *arrays):
    xp = B.cupy_module() if target == "cuda" else np
    return [xp.asarray(a) for a in arrays]


def host(a):
    return a.get() if B.is_cupy_array(a) else np.asarray(a)


def operands(case, shape, rng, integers=False):
    dtype, tf32, layout = CASES[case]
    m, n, k = shape
    if integers:
        a, b = rng.integers(-4, 5, (m, k)), rng.integers(-4, 5, (n, k) if layout == "nt" else (k, n))
    else:
        a, b = rng.standard_normal((m, k)), rng.standard_normal((n, k) if layout == "nt" else (k, n))
    return a.astype(dtype), b.astype(dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", list(CASES))
def test_gemm_matches_the_float64_product(target, case, shape):
    dtype, tf32, layout = CASES[case]
    skip_without_tensor_cores(target, dtype, tf32)
    a, b = operands(case, shape, np.random.default_rng([list(CASES).index(case), SHAPES.index(shape)]))
    ref, mag = gemm_reference(a, b, b_layout=layout, tf32=tf32)
    A, Bm = on(target, a, b)
    factor = GPU_FACTOR if target == "cuda" else 1.0
    for out in (np.float32, None):
        with kernels.launch_log() as log:
            got = host(gemm_tc(A, Bm, b_layout=layout, out_dtype=out, tf32=tf32, target=target))
        assert log.names == [f"gemm_tc_{layout}"] and log[0].build == ("float+tf32" if tf32 else np.dtype(dtype).name)
        assert got.dtype == np.dtype(out or dtype) and got.shape == ref.shape
        tol = factor * reduction_tolerance(mag, ref, shape[2], out or dtype, reference_rounded=False)
        ok, worst = within_tolerance(got, ref, tol)
        assert ok, f"{case} {shape} out={np.dtype(out or dtype)}: error {worst:.3g} x the bound"


@pytest.mark.parametrize("case", list(CASES))
def test_gemm_is_exact_when_every_partial_sum_is(target, case):
    """Small integers: every product and partial sum is exact in float32, so the float32 output
    is the exact product and the 16-bit output that product rounded once."""
    dtype, tf32, layout = CASES[case]
    skip_without_tensor_cores(target, dtype, tf32)
    rng = np.random.default_rng(7)
    for shape in [(130, 70, 136), (33, 65, 65)]:
        a, b = operands(case, shape, rng, integers=True)
        exact, _ = gemm_reference(a, b, b_layout=layout, tf32=tf32)
        A, Bm = on(target, a, b)
        np.testing.assert_array_equal(host(gemm_tc(A, Bm, b_layout=layout, out_dtype=np.float32, tf32=tf32,
                                                   target=target)), exact.astype(np.float32))
        np.testing.assert_array_equal(host(gemm_tc(A, Bm, b_layout=layout, tf32=tf32, target=target)),
                                      exact.astype(np.float32).astype(dtype))


def test_tf32_operands_are_rounded_to_nearest_not_truncated(target):
    """1 + 2^-11 + 2^-12 rounds (cvt.rna) to 1 + 2^-10 in TF32 but truncates to 1: the kernel must
    round its fragments (the simulator's mma reads only the TF32 bits, as a GPU's does)."""
    skip_without_tensor_cores(target, np.float32, True)
    k = 7
    a = np.full((5, k), 1 + 2.0 ** -11 + 2.0 ** -12, np.float32)
    b = np.ones((3, k), np.float32)
    A, Bm = on(target, a, b)
    got = host(gemm_tc(A, Bm, tf32=True, target=target))
    np.testing.assert_array_equal(got, np.full((5, 3), k * (1 + 2.0 ** -10), np.float32))


@pytest.mark.parametrize("case", ["bf16-nn", "tf32-nt"])
def test_gemm_is_bit_identical_in_both_schedules(case):
    a, b = operands(case, (130, 130, 136), np.random.default_rng(8))
    dtype, tf32, layout = CASES[case]
    forward = gemm_tc(a, b, b_layout=layout, out_dtype=np.float32, tf32=tf32)
    with kernels.sim_schedule("reverse"):
        reverse = gemm_tc(a, b, b_layout=layout, out_dtype=np.float32, tf32=tf32)
    assert forward.tobytes() == reverse.tobytes()


def test_shapes_take_every_copy_width():
    widths = {}
    for m, n, k in SHAPES:
        a = np.zeros((m, k), BF16)
        widths.setdefault(vector_bytes(a), (m, n, k))
    assert sorted(widths) == [2, 4, 8, 16], widths
    assert vector_bytes(np.zeros((3, 7), np.float32)) == 4  # float32 rows: 4-byte copies at least
    assert vector_bytes(np.zeros((3, 9), BF16)[:, 1:]) == 2  # a view: its own pitch and address


@pytest.mark.parametrize("kwargs, a, b, error, match", [
    ({}, np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), TypeError, r"float32 operands need tf32=True"),
    ({"tf32": True, "b_layout": "nn"}, np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32), ValueError,
     r"b_layout='nn' needs 16-bit operands"),
    ({}, np.zeros((2, 3), BF16), np.zeros((2, 3), np.float16), TypeError, r"operands differ in dtype"),
    ({"b_layout": "nn"}, np.zeros((2, 3), BF16), np.zeros((2, 3), BF16), ValueError,
     r"a is \(2, 3\) \(K = 3\) but b \(2, 3\) has K = 2 as \[K, N\]"),
    ({}, np.zeros((2, 3), np.float64), np.zeros((2, 3), np.float64), TypeError, r"not float64"),
    ({"out_dtype": np.float16}, np.zeros((2, 3), BF16), np.zeros((2, 3), BF16), TypeError,
     r"out_dtype=float16: gemm_tc writes the operands' dtype \(bfloat16\) or float32"),
    ({"tf32": True}, np.zeros((2, 3), BF16), np.zeros((2, 3), BF16), ValueError, r"pass tf32=False"),
    ({"b_layout": "nn", "bias": np.zeros(2, BF16)}, np.zeros((2, 3), BF16), np.zeros((3, 2), BF16), ValueError,
     r"a bias is added by the 'nt' product only"),
    ({"bias": np.zeros(3, BF16)}, np.zeros((2, 3), BF16), np.zeros((2, 3), BF16), ValueError,
     r"bias must be \(2,\) of dtype bfloat16"),
])
def test_launcher_refuses_what_the_kernels_cannot_do(kwargs, a, b, error, match):
    with pytest.raises(error, match=match):
        gemm_tc(a, b, **kwargs)


def test_empty_products():
    assert gemm_tc(np.zeros((0, 5), BF16), np.zeros((4, 5), BF16)).shape == (0, 4)
    np.testing.assert_array_equal(gemm_tc(np.zeros((3, 0), BF16), np.zeros((4, 0), BF16)), np.zeros((3, 4), BF16))


def test_sizes_past_int_indexing_are_refused_before_any_copy():
    """Rows, columns and their bytes are ints in the kernel, with a k-tile's rounding to spare:
    a product past that is a ValueError naming the shapes (here zero-stride views: nothing is
    allocated), and the bound is exact."""
    import ml_dtypes
    from gpuconv.ops._launch_gemm_tc import fits, gemm_tc
    bf = np.dtype(ml_dtypes.bfloat16)
    assert fits(2, 2**30 - 129) and not fits(2, 2**30 - 128) and fits(4, 2**29 - 65) and not fits(4, 2**29 - 64)
    a = np.broadcast_to(np.zeros((1, 1), bf), (4, 2**30))
    with pytest.raises(ValueError, match=r"shapes \(4, 1073741824\), \(4, 1073741824\) of bfloat16 reach 2\^31 bytes"):
        gemm_tc(a, a)


@pytest.mark.parametrize("layout", ["nt", "nn"])
def test_sm75_build_multiplies_float16_within_the_bound(layout):
    """The simulator's sm_75 build (a T4's: two m16n8k8 per m16n8k16, the stages copied by
    synchronous loads and stores with cp.async's zero fill) over every copy width of the loader and
    partial tiles in M, N and K."""
    rng = np.random.default_rng(5)
    with kernels.sim_arch(75):
        for shape in [(7, 7, 7), (63, 65, 130), (65, 63, 36), (70, 66, 136)]:
            a, b = operands(f"f16-{layout}", shape, rng)
            ref, mag = gemm_reference(a, b, b_layout=layout)
            with kernels.launch_log() as log:
                got = gemm_tc(a, b, b_layout=layout, target="sim")
            assert log.names == [f"gemm_tc_{layout}"] and got.dtype == np.float16
            ok, worst = within_tolerance(got, ref, reduction_tolerance(mag, ref, shape[2], np.float16))
            assert ok, f"{shape}: error {worst:.3g} x the bound"


def test_a_gpu_without_a_formats_tensor_cores_skips_its_cases(monkeypatch):
    """On a T4 (compute capability 7.5) the 'cuda' cases of bfloat16 and TF32 tensor-core kernels
    are skipped as not applying there (a launch would not build, and warp_probe's traps), and
    GPUCONV_REQUIRE_GPU accepts that skip; float16 and the simulator run."""
    import types

    import conftest
    monkeypatch.setattr(kernels, "_compute_capability", lambda device: 75)
    for dtype, tf32, name in ((BF16, False, "bfloat16"), (np.float32, True, "TF32")):
        with pytest.raises(pytest.skip.Exception, match=f"not on this GPU: its tensor cores do not multiply {name} "
                                                        r"\(compute capability 8\.0 does\)"):
            skip_without_tensor_cores("cuda", dtype, tf32)
    skip_without_tensor_cores("cuda", np.float16)
    skip_without_tensor_cores("sim", BF16)
    monkeypatch.setattr(conftest, "REQUIRE_GPU", True)
    item = types.SimpleNamespace(get_closest_marker=lambda name: name == "gpu" or None)
    for reason, outcome in (("Skipped: not on this GPU: its tensor cores ...", "skipped"),
                            ("Skipped: no GPU: CUDA unavailable", "failed")):
        report = types.SimpleNamespace(skipped=True, outcome="skipped", longrepr=("file", 1, reason))
        hook = conftest.pytest_runtest_makereport(item, None)
        next(hook)
        with pytest.raises(StopIteration):
            hook.send(types.SimpleNamespace(get_result=lambda: report))
        assert report.outcome == outcome, reason
