"""Every kernel file compiles with NVRTC for compute_80 and compute_90 in every build (float32,
float64, bfloat16, float16, and the TF32 build), without a GPU; the tensor-core GEMM's PTX holds
the mma.sync/ldmatrix/cp.async of its build and an sm_90 CUBIN builds; the tensor-core files' float16
build compiles for compute_75 (a T4) with sm_75's instructions alone, their bfloat16 and TF32 builds
stop there with a message naming the rule; with nvcc present, ptxas
reports registers, shared memory and spills per kernel (each kernel header's table states them,
figure for figure) and the tuned convolution kernels and the
tensor-core GEMM of every float32-accumulating build do not spill to local memory. The GPU path (CuPy faked, NVRTC real)
builds a CUBIN for the device's arch (PTX where NVRTC lacks it) without flush-to-zero, caches it
on disk in $GPUCONV_CUDA_CACHE, and reports compile and load errors with file and line."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import types
import warnings

import ml_dtypes
import numpy as np
import pytest

from gpuconv import backend, kernels

try:
    nvrtc = kernels.nvrtc_binding()
    _NVRTC_WHY = None
except Exception as exc:  # ImportError (no CuPy, or the NVRTC library missing), or a broken install
    nvrtc = None
    _NVRTC_WHY = f"the NVRTC binding is unavailable ({type(exc).__name__}: {exc}); install it: make install EXTRAS=dev,nvrtc"

needs_nvrtc = pytest.mark.skipif(_NVRTC_WHY is not None, reason=_NVRTC_WHY or "")

# The extern "C" entry points each file must export (the launchers call them by name).
ENTRIES = {
    "conv2d": ["conv2d_forward_v1", "conv2d_forward_v2", "conv2d_forward_v3", "conv2d_backward_data_v1",
               "conv2d_backward_data_v2", "conv2d_backward_data_v3",
               "conv2d_backward_weight_v1", "conv2d_backward_weight_v2", "conv2d_backward_weight_v3",
               "conv2d_reduce_splits",
               "conv2d_backward_bias"],
    "conv2d_grouped": ["conv2d_grouped_forward", "conv2d_grouped_backward_data", "conv2d_grouped_backward_weight"],
    "conv2d_tc": ["conv2d_forward_tc", "conv2d_backward_data_tc", "conv2d_backward_weight_tc",
                  "conv2d_forward_tc128", "conv2d_backward_data_tc128", "conv2d_backward_weight_tc128",
                  "conv2d_forward_tc128w", "conv2d_backward_data_tc128w", "conv2d_backward_weight_tc128w",
                  "conv2d_forward_tcwg", "conv2d_backward_data_tcwg", "conv2d_backward_weight_tcwg",
                  "conv2d_forward_tcwg256", "conv2d_backward_data_tcwg256", "conv2d_backward_weight_tcwg256",
                  "conv2d_forward_tcwgn64", "conv2d_backward_data_tcwgn64", "conv2d_backward_weight_tcwgn64",
                  "conv2d_forward_tcwgm64", "conv2d_backward_data_tcwgm64", "conv2d_backward_weight_tcwgm64",
                  "conv2d_tc_weight_reduce", "conv2d_tc_round_tf32"],
    "pool2d": [f"{k}{v}" for k in ("max_pool2d_forward", "max_pool2d_backward", "max_pool2d_backward_disjoint",
                                   "avg_pool2d_forward", "avg_pool2d_backward", "avg_pool2d_backward_disjoint")
               for v in ("", "_vec")] + ["avg_pool2d_forward_exclude_pad", "avg_pool2d_backward_exclude_pad",
                                         "lp_pool2d_forward", "lp_pool2d_backward"]
              + [f"adaptive_{k}_pool2d_{d}" for k in ("avg", "max") for d in ("forward", "backward")]
              + ["max_pool2d_forward_pairs", "max_pool2d_backward_disjoint_pairs"],
    "augment": ["augment_batch"],
    "relu": ["relu_forward_v1", "relu_forward_v2", "relu_backward_v1", "relu_backward_v2"],
    "gelu": ["gelu_forward", "gelu_backward"],
    "activations": [f"{a}_{d}" for a in ("leaky_relu", "sigmoid", "tanh", "silu") for d in ("forward", "backward")],
    "scale": ["scale_forward"],
    "channel_gate": ["channel_gate_forward", "channel_gate_backward_gate", "channel_gate_backward_data"],
    "layout": ["layout_transpose"],
    "optim": ["sgd_update", "lookahead_update"],
    "loss": ["softmax_cross_entropy"],
    "amp": ["cast_parameters"],
    "dropout": ["dropout_forward", "dropout_backward"],
    "stream_hold": ["stream_hold"],
    "gemm_tc": ["gemm_tc_nt", "gemm_tc_nn"],
    "batchnorm": ["batchnorm2d_stats", "batchnorm2d_eval_inv_std", "batchnorm2d_normalize",
                  "batchnorm2d_normalize_vec", "batchnorm2d_backward_sums", "batchnorm2d_backward_dx",
                  "batchnorm2d_backward_dx_vec"],
    "groupnorm": ["groupnorm_channel_stats", "groupnorm_group_stats", "groupnorm_normalize", "groupnorm_backward_sums", "groupnorm_backward_reduce",
                  "groupnorm_backward_dx"],
}
# (dtype, tf32) of every build: the four storage dtypes, and float32 with TF32 operands (which only
# conv2d's GEMMs use; the other files build it too, identically).
BUILDS = {"f32": (np.float32, False), "f64": (np.float64, False), "bf16": (ml_dtypes.bfloat16, False),
          "f16": (np.float16, False), "tf32": (np.float32, True)}
TUNED = ["conv2d_forward_v2", "conv2d_backward_data_v2", "conv2d_backward_weight_v2",
         "conv2d_forward_v3", "conv2d_backward_data_v3", "conv2d_backward_weight_v3"]


# The directory of this test run that holds what NVRTC built (set per run by _nvrtc_outputs_dir).
_OUTPUTS: dict = {}


@pytest.fixture(scope="session", autouse=True)
def _nvrtc_outputs_dir(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    # pytest-xdist gives each worker a directory under the run's own: the run's is the shared one
    _OUTPUTS["dir"] = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "nvrtc-outputs"
    _OUTPUTS["dir"].mkdir(exist_ok=True)


def _keep(path: pathlib.Path, data: bytes):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a worker reading it meanwhile sees all of it or none


def compiled(op_file, arch, dtype=np.float32, tf32=False):
    """(PTX, CUBIN or None) of kernels/<op_file>.cu for ``arch``, as kernels.nvrtc_check and
    kernels.nvrtc_compile give them, each compiled once per test run: a real arch's compile hands
    over its PTX too (the text of its virtual arch), and the pytest-xdist workers share what one
    of them compiled through the run's temporary directory, keyed by the translation unit, the arch,
    the options and NVRTC's release. (conv2d_tc's 16-bit builds take NVRTC 10-25 s each.)"""
    src = kernels.build_source(op_file, dtype, tf32)
    virtual = "compute_" + arch.split("_", 1)[1]
    if arch == virtual and (op_file, arch, np.dtype(dtype).name, tf32) in CUBIN_TOO:
        # a test takes this build's CUBIN too: one compile gives both, not a second front end for the PTX
        return compiled(op_file, "sm_" + arch.split("_", 1)[1], dtype, tf32)[0], None
    key = hashlib.sha256("\0".join([src, virtual, *kernels.NVRTC_OPTIONS, str(nvrtc.getVersion())]).encode())
    out = _OUTPUTS["dir"] / f"{op_file}-{key.hexdigest()[:24]}"
    ptx_file, cubin_file = out.with_suffix(".ptx"), out.with_suffix(f".{arch}.cubin")
    with _compiling(out):
        if arch == virtual:
            if not ptx_file.exists():
                _keep(ptx_file, kernels.nvrtc_check(op_file, arch, dtype, tf32).encode())
            return ptx_file.read_text(), None
        if not (cubin_file.exists() and ptx_file.exists()):
            image, ptx = kernels.nvrtc_compile(src, op_file, dtype, arch, tf32=tf32, with_ptx=True)
            _keep(ptx_file, ptx.encode())
            _keep(cubin_file, image)
        return ptx_file.read_text(), cubin_file.read_bytes()


# (op_file, virtual arch, dtype, tf32) of the PTX whose real arch's CUBIN a test builds as well
# (test_tensor_core_files_build_an_sm_90_cubin): compiled() takes the PTX from that compile.
CUBIN_TOO = {(op_file, "compute_90", np.dtype(dtype).name, tf32) for op_file in ("gemm_tc", "conv2d_tc")
             for dtype, tf32 in (BUILDS["bf16"], BUILDS["tf32"])}


@contextlib.contextmanager
def _compiling(out: pathlib.Path):
    """One pytest-xdist worker compiles a key at a time: another that wants it meanwhile waits for
    it, then reads its files (no lock where there is no fcntl: then both may compile)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ptx_of(op_file, arch, dtype=np.float32, tf32=False) -> str:
    return compiled(op_file, arch, dtype, tf32)[0]


FLUSHED = re.compile(r"\b(?:setp|set|add|sub|mul|fma|mad|max|min|div|sqrt|abs|neg|cvt)\.[\w.]*ftz")


def test_entry_table_covers_every_kernel_file():
    assert sorted(ENTRIES) == sorted(kernels.KERNEL_FILES)


@needs_nvrtc
@pytest.mark.parametrize("build", ["f32", "f64", "bf16", "f16"])
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("op_file", kernels.KERNEL_FILES)
def test_compiles_with_nvrtc(op_file, arch, build):
    dtype, tf32 = BUILDS[build]
    ptx = ptx_of(op_file, arch, dtype, tf32)
    assert f".target sm_{arch[-2:]}" in ptx
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    assert entries == set(ENTRIES[op_file]), f"{op_file}.cu exports {sorted(entries)}"
    # The float64 build really computes in double (the gradient checks rely on it); the others
    # compute in float32, and none of them rounds to TF32.
    if op_file == "conv2d":
        assert (".f64" in ptx) == (build == "f64")
        assert "cvt.rna.tf32.f32" not in ptx
    if build in ("bf16", "f16") and op_file != "stream_hold":  # stream_hold stores no elements
        # 2-byte stores (and loads): the storage really is 16-bit
        assert re.search(r"st\.global\.[ub]16", ptx), "no 16-bit global store"


@needs_nvrtc
@pytest.mark.parametrize("build", ["bf16", "tf32"])
def test_every_other_file_builds_for_gpus_without_tensor_cores(build):
    """A T4 (compute capability 7.5) runs every file but the tensor-core ones
    (kernels.TENSOR_CORE_FILES, never launched there), bfloat16, float16 and TF32 included."""
    dtype, tf32 = BUILDS[build]
    for op_file in kernels.KERNEL_FILES:
        if op_file in kernels.TENSOR_CORE_FILES or (tf32 and op_file not in kernels.TF32_FILES):
            continue
        ptx = ptx_of(op_file, "compute_75", dtype, tf32)
        # no instruction sm_75 lacks (the driver's JIT of this PTX would refuse it at load)
        assert ".target sm_75" in ptx and ".tf32" not in ptx, op_file


@needs_nvrtc
def test_stream_hold_builds_for_every_arch_nvrtc_targets():
    """syncguard's hold kernel builds for every arch the registry may be asked for: it sleeps
    between its polls with __nanosleep from sm_70 on, and spins without it below (a P100, sm_60,
    which only the CUDA 12 NVRTC still targets; NVRTC 13 starts at sm_75)."""
    for cc in nvrtc.getSupportedArchs():
        ptx = kernels.nvrtc_check("stream_hold", f"compute_{cc}")
        assert ("nanosleep" in ptx) == (cc >= 70), cc


# The tensor-core operands' TF32 rounding (common.cuh's tf32_operand): half a TF32 ulp added to a
# finite value's bits, predicated, then the low bits cleared.
TF32_OPERAND = "@finite add.u32"
TF32_CLEARED = r"and\.b32\s+%r\d+, %r\d+, -8192;"  # the 13 low bits cleared (0xFFFFE000)


@needs_nvrtc
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_conv2d_tf32_build_rounds_its_operands_with_cvt_rna(arch):
    ptx = ptx_of("conv2d", arch, np.float32, tf32=True)
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    assert entries == set(ENTRIES["conv2d"])
    assert "cvt.rna.tf32.f32" in ptx and ".f64" not in ptx


# The tensor-core GEMM: what each build must run on (gemm_tc_nn has no TF32 form: it traps there,
# as both entry points do in float64 and strict float32).
TC_MMA = {"bf16": "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
          "f16": "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
          "tf32": "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"}


@needs_nvrtc
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("build", list(BUILDS))
@pytest.mark.parametrize("op_file", ["gemm_tc", "conv2d_tc"])
def test_tensor_core_files_run_on_tensor_cores(op_file, arch, build):
    ptx = ptx_of(op_file, arch, *BUILDS[build])
    assert set(re.findall(r"\.entry\s+(\w+)", ptx)) == set(ENTRIES[op_file])
    if build not in TC_MMA:  # float64, strict float32: no tensor-core format, the kernels trap
        assert "mma.sync" not in ptx and "cp.async" not in ptx and "trap" in ptx
        return
    assert TC_MMA[build] in ptx and "mma.sync" not in ptx.replace(TC_MMA[build], "")
    for insn in ("ldmatrix.sync.aligned.m8n8.x4.shared.b16", "cp.async.cg.shared.global", "cp.async.ca.shared.global",
                 "cp.async.commit_group", "cp.async.wait_group 1"):
        if op_file == "conv2d_tc" and build == "tf32" and insn == "cp.async.ca.shared.global":
            continue  # only the 16-bit weight gradient copies dy in narrower pieces
        assert insn in ptx, insn
    assert ("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in ptx) == (build != "tf32")
    assert (TF32_OPERAND in ptx) == (build == "tf32")  # TF32 operands rounded as the rule says
    if build == "tf32":  # and their low bits cleared: mma.sync is not documented to truncate them
        assert len(re.findall(TF32_CLEARED, ptx)) >= ptx.count(TF32_OPERAND) > 0
        if op_file == "conv2d_tc":
            assert_only_the_rounding_pass_rounds(ptx)


def assert_only_the_rounding_pass_rounds(ptx):
    """conv2d_tc's TF32 tiles take operands rounded before their launch (Prerounded): tf32_operand's
    rounding appears in conv2d_tc_round_tf32's body alone."""
    for name in ENTRIES["conv2d_tc"]:
        body = ptx.split(f".entry {name}(")[1].split(".entry ")[0]
        assert (TF32_OPERAND in body) == (name == "conv2d_tc_round_tf32"), name


SM75_MMA = "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32"


@needs_nvrtc
@pytest.mark.parametrize("build", ["f16", "f32", "f64"])
@pytest.mark.parametrize("op_file", ["gemm_tc", "conv2d_tc"])
def test_tensor_core_files_build_for_sm_75_on_its_float16_mma(op_file, build):
    """compute_75 (Turing: a T4): the float16 build multiplies with m16n8k8 .f16 (each m16n8k16 two
    of them), reads fragments with ldmatrix (.trans too) and copies its stages with plain loads and
    stores (no cp.async before sm_80); the wgmma tiles and the builds without a tensor-core format
    trap."""
    ptx = ptx_of(op_file, "compute_75", *BUILDS[build])
    assert ".target sm_75" in ptx and set(re.findall(r"\.entry\s+(\w+)", ptx)) == set(ENTRIES[op_file])
    assert "cp.async" not in ptx and "wgmma" not in ptx.replace("_tcwg", "") and ".tf32" not in ptx
    if build != "f16":
        assert "mma.sync" not in ptx and "trap" in ptx
        return
    assert SM75_MMA in ptx and "mma.sync" not in ptx.replace(SM75_MMA, "")
    assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in ptx and "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in ptx
    for name in ENTRIES[op_file]:
        body = ptx.split(f".entry {name}(")[1].split(".entry ")[0]
        tiled = name.endswith(("_tc", "_tc128", "_tc128w", "_nt", "_nn"))
        assert (SM75_MMA in body) == tiled and ("st.shared.v4" in body) == tiled, name
        # (the TF32 rounding pass traps in every build but TF32's: nothing to round)
        assert ("trap" in body) == ("_tcwg" in name or name == "conv2d_tc_round_tf32"), name


@needs_nvrtc
@pytest.mark.parametrize("build", ["bf16", "tf32"])
def test_tensor_core_files_name_the_rule_where_sm_75_lacks_the_format(build):
    """No bfloat16 or TF32 mma on sm_75: the build stops at TensorCoreOp, naming the rule, instead
    of assembling instructions the GPU would refuse (the registry never asks for it)."""
    with pytest.raises(kernels.KernelCompileError, match=r"static assertion failed.*sm_75 build \(compute "
                                                         r"capability 7\.5\) multiplies float16 only"):
        kernels.nvrtc_check("gemm_tc", "compute_75", *BUILDS[build])


@needs_nvrtc
@pytest.mark.parametrize("build", ["bf16", "tf32"])
@pytest.mark.parametrize("op_file", ["gemm_tc", "conv2d_tc"])
def test_tensor_core_files_build_an_sm_90_cubin(op_file, build):
    dtype, tf32 = BUILDS[build]
    image = compiled(op_file, "sm_90", dtype, tf32)[1]
    assert image[:4] == b"\x7fELF" and kernels.elf_image_end(image) <= len(image)


WGMMA = {"bf16": "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16",
         "f16": "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.f16.f16",
         "tf32": "wgmma.mma_async.sync.aligned.m64n{n}k8.f32.tf32.tf32"}


@needs_nvrtc
@pytest.mark.parametrize("build", list(BUILDS))
@pytest.mark.slow
def test_the_warpgroup_convolutions_run_on_wgmma_in_the_sm_90a_build(build):
    """conv2d_tc's tcwg kernels multiply with wgmma in the tensor-core sm_90a builds (bf16/fp16 with
    both transpose flags: the weight gradient's operands are M- and N-major; TF32 K-major only),
    publish their stages to the async proxy, and trap in every other build; the mma.sync kernels
    beside them are unchanged."""
    dtype, tf32 = BUILDS[build]
    # the sm_90a build the GPU path compiles: its CUBIN, and its PTX (compute_90a's text)
    ptx, image = compiled("conv2d_tc", "sm_90a", dtype, tf32) if build in WGMMA else (
        ptx_of("conv2d_tc", "compute_90a", dtype, tf32), None)
    assert ".target sm_90a" in ptx and set(re.findall(r"\.entry\s+(\w+)", ptx)) == set(ENTRIES["conv2d_tc"])
    if build in WGMMA:
        assert all(WGMMA[build].format(n=n) in ptx for n in (64, 128, 256))
        assert "fence.proxy.async.shared::cta" in ptx and "wgmma.wait_group.sync.aligned 1" in ptx
        if build != "tf32":  # K-major forward and data gradient, M- and N-major weight gradient
            assert re.search(r"p, 1, 1, 0, 0;", ptx) and re.search(r"p, 1, 1, 1, 1;", ptx)
        else:  # tf32 takes K-major operands only, which the launcher rounded: no tile rounds
            assert re.search(r"p, 1, 1;", ptx)
            assert_only_the_rounding_pass_rounds(ptx)
        assert image[:4] == b"\x7fELF" and kernels.elf_image_end(image) <= len(image)
        # the dynamic stages rounded up to a 1024-byte boundary at run time (CUDA promises the
        # extern array 16 bytes): a compiler told more would fold the rounding away (tcwgm64's
        # stages fit in static arrays, laid out at their __align__ by the compiler)
        for name in ENTRIES["conv2d_tc"]:
            if "_tcwg" in name and not name.endswith("_tcwgm64"):
                body = ptx.split(f".entry {name}(")[1].split(".entry ")[0]
                assert re.search(r"and\.b32\s+%r\d+, %r\d+, 1023;", body), name
    else:
        assert "wgmma" not in ptx.replace("_tcwg", "")
    assert "wgmma" not in ptx_of("conv2d_tc", "compute_90", dtype, tf32).replace("_tcwg", "")


def test_mma_header_goes_only_into_the_files_that_use_it():
    assert '\n#line 1 "kernels/mma.cuh"' in kernels.build_source("gemm_tc", ml_dtypes.bfloat16)
    assert '\n#line 1 "kernels/mma.cuh"' not in kernels.build_source("conv2d", ml_dtypes.bfloat16)
    for dtype, tf32, tc in [(np.float64, False, 0), (np.float32, False, 0), (np.float32, True, 1),
                            (ml_dtypes.bfloat16, False, 1), (np.float16, False, 1)]:
        assert f"#define GPUCONV_TENSOR_CORES {tc}\n" in kernels.build_source("relu", dtype, tf32)


@pytest.fixture
def broken_kernels(tmp_path, monkeypatch):
    """GPUCONV_KERNELS_DIR with common.cuh and kernels/broken.cu, whose line 2 does not compile."""
    src, kdir = kernels.kernel_dir(), tmp_path / "kernels"
    kdir.mkdir()
    (kdir / "common.cuh").write_text((src / "common.cuh").read_text())
    (kdir / "broken.cu").write_text('extern "C" __global__ void k(storage_t* y) {\n    y[0] = undefined_name;\n}\n')
    monkeypatch.setenv("GPUCONV_KERNELS_DIR", str(kdir))
    return kdir


@needs_nvrtc
def test_compile_error_names_file_and_line(broken_kernels):
    with pytest.raises(kernels.KernelCompileError,
                       match=r'(?s)kernels/broken\.cu \(float, compute_80\) failed.*kernels/broken\.cu\(2\).*undefined_name'):
        kernels.nvrtc_check("broken", "compute_80", np.float32)


def _ptxas_report(op_file, dtype, tmp_path, tf32=False, arch=None):
    cu = tmp_path / f"{op_file}.cu"
    cu.write_text(kernels.build_source(op_file, dtype, tf32))
    if arch is None:
        arch = "sm_90a" if op_file in kernels.ARCH_SPECIFIC else "sm_90"  # as a Hopper GPU builds it
    proc = subprocess.run(["nvcc", "-cubin", f"-arch={arch}", *kernels.NVRTC_OPTIONS, "--resource-usage", str(cu),
                           "-o", str(tmp_path / f"{op_file}.cubin")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # e.g. C7514, wgmmas serialized because the compiler let other instructions read their
    # accumulators while they run (a missing operand fence: wrong sums, or a slow kernel)
    losses = [line for line in (proc.stdout + proc.stderr).splitlines() if "Potential Performance Loss" in line]
    assert not losses, "\n".join(losses)
    report, current = {}, None
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            current = m.group(1)
            report[current] = {}
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            report[current]["spill"] = int(m.group(1)) + int(m.group(2))
        m = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line)
        if m and current:
            report[current]["registers"] = int(m.group(1))
            report[current]["smem"] = int(m.group(2) or 0)
    return report


# Each kernel file's header states ptxas's figures for every entry point and build in one table:
#   //   ptxas 13.0   f32  f64  bf16  f16  tf32          (the CUDA release the figures are from)
#   //   <kernel>     <registers>/<static shared bytes>/<spilled bytes> per build, "-" where not built
PTXAS_HEADING = re.compile(r"^//\s+ptxas (\d+\.\d+)\s+" + r"\s+".join(BUILDS) + r"\s*$", re.M)
PTXAS_ROW = re.compile(r"//\s+(\w+)" + r"\s+(\d+/\d+/\d+|-)" * len(BUILDS) + r"\s*$")


def header_ptxas_table(op_file):
    """(release, {build: {kernel: {"registers", "smem", "spill"}}}) from kernels/<op_file>.cu's header."""
    text = (kernels.kernel_dir() / f"{op_file}.cu").read_text()
    headings = list(PTXAS_HEADING.finditer(text))
    assert len(headings) == 1, f"kernels/{op_file}.cu has {len(headings)} ptxas tables; its header needs one"
    table = {build: {} for build in BUILDS}
    for line in text[headings[0].end():].lstrip("\n").splitlines():
        m = PTXAS_ROW.fullmatch(line)
        if not m:
            break
        assert all(m.group(1) not in rows for rows in table.values()), \
            f"kernels/{op_file}.cu's ptxas table has two rows for {m.group(1)}: keep one"
        for build, cell in zip(BUILDS, m.groups()[1:]):
            if cell != "-":
                table[build][m.group(1)] = dict(zip(("registers", "smem", "spill"), map(int, cell.split("/"))))
    return headings[0].group(1), table


@functools.lru_cache(maxsize=None)
def nvcc_release():
    out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=60).stdout
    return re.search(r"release (\d+\.\d+)", out).group(1)


@pytest.mark.parametrize("op_file", kernels.KERNEL_FILES)
def test_every_kernel_header_has_a_ptxas_table_of_its_entry_points(op_file):
    """A row per entry point, a figure in every build that test_ptxas_resource_usage compiles."""
    _, table = header_ptxas_table(op_file)
    for build, (dtype, tf32) in BUILDS.items():
        built = not tf32 or op_file in kernels.TF32_FILES
        assert list(table[build]) == (ENTRIES[op_file] if built else []), (op_file, build, list(table[build]))


def test_every_kernel_header_states_ptxas_figures_of_one_release():
    """One CUDA release across the headers: a table of another is compared with nothing."""
    releases = {op_file: header_ptxas_table(op_file)[0] for op_file in kernels.KERNEL_FILES}
    assert len(set(releases.values())) == 1, f"the ptxas tables state figures of several releases: {releases}"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH (ptxas resource report needs it)")
@pytest.mark.parametrize("build", list(BUILDS))
@pytest.mark.slow
def test_ptxas_resource_usage(tmp_path, build, capsys):
    dtype, tf32 = BUILDS[build]
    lines, reports = [], {}
    for op_file in kernels.KERNEL_FILES if not tf32 else kernels.TF32_FILES:
        report = reports[op_file] = _ptxas_report(op_file, dtype, tmp_path, tf32)
        # Beside the entry points, ptxas reports the math library's own non-inlined routines
        # (double pow's __internal_accurate_pow, reached by LP pooling's float64 build).
        assert {k for k in report if not k.startswith("__internal")} == set(ENTRIES[op_file])
        for name in ENTRIES[op_file]:
            r = report[name]
            lines.append(f"sm_90 {build:5s} {name:28s} {r['registers']:4d} registers "
                         f"{r['smem']:6d} B smem  {r['spill']} B spilled")
            assert r["registers"] <= 255
    # the headers' tables, compared here (not in a test of their own, which pytest-xdist could send
    # to another worker, compiling every file again)
    stated = check_header_tables(build, reports)
    with capsys.disabled():
        print("\n" + "\n".join(lines))
        if not stated:
            print(f"(no kernel header states ptxas figures of this nvcc's release {nvcc_release()}: not compared)")
    # No kernel spills to local memory in any build, but for three written down in their headers: the
    # float32 build of amp's cast_parameters (never launched: the launcher runs bf16 and fp16), the
    # float64 batch-norm _vec kernels (gradient checks only; see below) and conv2d's v3 weight
    # gradient, built for 2 blocks a SM in the 4-byte-accumulator builds (a few loop-invariant
    # values, at most 64 bytes; float64 takes no such hint and must not spill).
    hinted = ("conv2d", "conv2d_backward_weight_v3")
    for op_file, report in reports.items():
        for name in ENTRIES[op_file]:
            excused = (op_file, name, build) == ("amp", "cast_parameters", "f32") or (
                op_file == "batchnorm" and build == "f64" and name.endswith("_vec"))
            if (op_file, name) == hinted and build != "f64":
                assert report[name]["spill"] <= 64 and report[name]["registers"] <= 128, (name, build, report[name])
                continue
            assert excused or report[name]["spill"] == 0, \
                f"kernels/{op_file}.cu {name} ({build}) spills {report[name]['spill']} bytes to local memory"
    # float64 doubles the register tiles; the builds that accumulate in float32 must not spill
    # (bf16/fp16 stage float32 tiles: the same registers and shared memory as float32), but for the
    # hinted kernel above.
    if build != "f64":
        report = reports["conv2d"]
        for name in ENTRIES["conv2d"]:
            assert report[name]["spill"] == 0 or ("conv2d", name) == hinted, \
                f"{name} ({build}) spills {report[name]['spill']} bytes to local memory"
        for name in TUNED:  # float32 tiles in shared memory, whatever the storage
            assert report[name]["smem"] == (4352 if name.endswith("_v2") else 16896), (name, report[name])
    # Batch norm: streaming reductions and elementwise passes, no register tiles; a few dozen
    # registers (14-64 on sm_90 with ptxas 13) and at most six 256-entry acc_t reduction buffers
    # (batchnorm2d_stats: two pairs, one per pass over its chunk, and one per pass-2 sum; 6 KiB
    # in float32), so occupancy is bounded by threads, not registers or shared memory. The _vec kernels keep 4-6 x 16 bytes of a channel group's
    # statistics and parameters and inline the fused GELU: 40-80 registers (at most 80 keeps 3
    # blocks of 256 threads per SM). No spills (the elementwise kernels carry the channel without
    # a 64-bit division, whose out-of-line routine spilled), except in the float64 build of the
    # _vec data gradient (gradient checks only), where the double erfc is a call that saves
    # registers around it.
    if "batchnorm" in reports:
        acc_bytes = 8 if build == "f64" else 4
        for name in ENTRIES["batchnorm"]:
            r = reports["batchnorm"][name]
            vec = name.endswith("_vec")
            assert r["spill"] == 0 or (build == "f64" and vec), (build, name, r)
            assert r["registers"] <= (80 if vec else 64) and r["smem"] <= 6 * 256 * acc_bytes + 8, (build, name, r)
    # Group norm: block sums over 256-entry acc_t pairs (2 KiB in float32), elementwise passes, no spills.
    if "groupnorm" in reports:
        for name in ENTRIES["groupnorm"]:
            r = reports["groupnorm"][name]
            assert r["spill"] == 0 and r["registers"] <= 64 and r["smem"] <= 2 * 256 * (8 if build == "f64" else 4), r
    # The loss: a warp per row, 256-entry acc_t and int trees for the last block's sums (32-64 registers).
    if "loss" in reports:
        r = reports["loss"]["softmax_cross_entropy"]
        assert r["spill"] == 0 and r["registers"] <= 64 and r["smem"] <= 256 * ((8 if build == "f64" else 4) + 4) + 8, r
    if build in TC_MMA:
        # 3 stages of 64x64-byte A and B tiles; 32 accumulators and the fragments fit well under
        # 96 registers (an unrolled loader once took 255: the bound catches that kind of change).
        for name in ["gemm_tc_nt"] + (["gemm_tc_nn"] if build != "tf32" else []):
            r = reports["gemm_tc"][name]
            assert r["spill"] == 0 and r["smem"] == 24576 and r["registers"] <= 96, (build, name, r)
        # the implicit-GEMM convolutions: the same stages; the im2col loaders' decoded rows cost a
        # few registers more than the dense GEMM's (80-96 on sm_90a with ptxas 13.0). The TF32
        # weight gradient holds a k-tile's loads in registers across the mmas: 128 (4 blocks of 4
        # warps per SM; bounded to 96 it spills)
        for name in ["conv2d_forward_tc", "conv2d_backward_data_tc", "conv2d_backward_weight_tc"]:
            r = reports["conv2d_tc"][name]
            most = 128 if build == "tf32" and name == "conv2d_backward_weight_tc" else 96
            assert r["spill"] == 0 and r["smem"] == 24576 and r["registers"] <= most, (build, name, r)
        # 128x128 tiles: 8 warps of 64x32, 64 accumulators per thread, 48 KiB of stages; at most 128
        # registers keeps two blocks (16 warps) per SM
        for name in ["conv2d_forward_tc128", "conv2d_backward_data_tc128", "conv2d_backward_weight_tc128"]:
            r = reports["conv2d_tc"][name]
            assert r["spill"] == 0 and r["smem"] == 49152 and r["registers"] <= 128, (build, name, r)
        # 128x128 tiles of 4 warps of 64x64, 128 accumulators per thread: at most 255 registers
        # without a spill keeps two blocks (8 warps) per SM (234-246 with ptxas 13.0)
        for name in ["conv2d_forward_tc128w", "conv2d_backward_data_tc128w", "conv2d_backward_weight_tc128w"]:
            r = reports["conv2d_tc"][name]
            assert r["spill"] == 0 and r["smem"] == 49152 and r["registers"] <= 255, (build, name, r)
        # 128x128 tiles of 2 warpgroups (wgmma, 16-bit builds; TF32's entry points trap): 64
        # accumulators per thread and no fragments, at most 128 registers for two blocks per SM
        # (112-128 with ptxas 13.0); 4 stages (64 KiB) in dynamic shared memory, the static token
        # arrays at most 2 x 16 bytes
        for name in ["conv2d_forward_tcwg", "conv2d_backward_data_tcwg", "conv2d_backward_weight_tcwg"]:
            r = reports["conv2d_tc"][name]
            assert r["spill"] == 0 and r["smem"] <= 32 and r["registers"] <= 128, (build, name, r)
        # 128x256 tiles of 2 warpgroups: 128 accumulators per thread, no spill within 255 registers
        # (176-218 with ptxas 13.0: one block of 8 warps per SM); 96 KiB of dynamic stages
        for name in ["conv2d_forward_tcwg256", "conv2d_backward_data_tcwg256", "conv2d_backward_weight_tcwg256"]:
            r = reports["conv2d_tc"][name]
            assert r["spill"] == 0 and r["smem"] <= 32 and r["registers"] <= 255, (build, name, r)
        # 256x64 tiles of 2 warpgroups of two 64x64 blocks: 64 accumulators per thread, at most 128
        # registers for two blocks per SM, as tcwg; 80 KiB of dynamic stages
        for name in ["conv2d_forward_tcwgn64", "conv2d_backward_data_tcwgn64", "conv2d_backward_weight_tcwgn64"]:
            r = reports["conv2d_tc"][name]
            assert r["spill"] == 0 and r["smem"] <= 32 and r["registers"] <= 128, (build, name, r)
        # 64x128 tiles of one warpgroup: 64 accumulators per thread, 48 KiB of static stages; at
        # most 128 registers for four blocks (16 warps) per SM; the TF32 weight gradient, its
        # loads in registers across the wgmmas, at most 168 for three (158 with ptxas 13.0;
        # bounded to four blocks it spills)
        for name in ["conv2d_forward_tcwgm64", "conv2d_backward_data_tcwgm64", "conv2d_backward_weight_tcwgm64"]:
            r = reports["conv2d_tc"][name]
            most = 168 if build == "tf32" and name == "conv2d_backward_weight_tcwgm64" else 128
            assert r["spill"] == 0 and r["smem"] == 49152 and r["registers"] <= most, (build, name, r)



# The tensor-core files' headers state their sm_75 float16 build (a T4's) in a second table:
#   //   ptxas 13.0 sm_75   f16
#   //   <kernel>           <registers>/<static shared bytes>/<spilled bytes>
PTXAS75_HEADING = re.compile(r"^//\s+ptxas (\d+\.\d+) sm_75\s+f16\s*$", re.M)
PTXAS75_ROW = re.compile(r"//\s+(\w+)\s+(\d+/\d+/\d+)\s*$")


def header_sm75_table(op_file):
    """(release, {kernel: {"registers", "smem", "spill"}}) of kernels/<op_file>.cu's sm_75 table."""
    text = (kernels.kernel_dir() / f"{op_file}.cu").read_text()
    headings = list(PTXAS75_HEADING.finditer(text))
    assert len(headings) == 1, f"kernels/{op_file}.cu has {len(headings)} sm_75 ptxas tables; its header needs one"
    table = {}
    for line in text[headings[0].end():].lstrip("\n").splitlines():
        m = PTXAS75_ROW.fullmatch(line)
        if not m:
            break
        table[m.group(1)] = dict(zip(("registers", "smem", "spill"), map(int, m.group(2).split("/"))))
    return headings[0].group(1), table


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH (ptxas resource report needs it)")
def test_ptxas_resource_usage_sm_75(tmp_path, capsys):
    """The tensor-core files' float16 build for sm_75 (a T4): no spill, the stages' static shared
    memory as on sm_90, and every figure as the header's sm_75 table states it."""
    wrong, lines = [], []
    for op_file in kernels.TENSOR_CORE_FILES:
        report = _ptxas_report(op_file, np.float16, tmp_path, arch="sm_75")
        release, table = header_sm75_table(op_file)
        assert list(table) == ENTRIES[op_file], (op_file, list(table))
        for name in ENTRIES[op_file]:
            got = {k: report[name].get(k, 0) for k in ("registers", "smem", "spill")}
            lines.append(f"sm_75 f16   {name:32s} {got['registers']:4d} registers {got['smem']:6d} B smem  "
                         f"{got['spill']} B spilled")
            assert got["spill"] == 0 and got["registers"] <= 255, (name, got)
            if "_tcwg" not in name and name not in ("conv2d_tc_weight_reduce", "conv2d_tc_round_tf32"):
                assert got["smem"] == (49152 if "_tc128" in name else 24576), (name, got)
            if release == nvcc_release() and table[name] != got:
                wrong.append(f"kernels/{op_file}.cu {name} sm_75 f16: the header says "
                             f"{'/'.join(str(v) for v in table[name].values())}, ptxas "
                             f"{got['registers']}/{got['smem']}/{got['spill']}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert not wrong, "update the sm_75 ptxas table in the kernel's header:\n" + "\n".join(wrong)


def check_header_tables(build, reports):
    """Every figure of every header's ptxas table for ``build`` is ptxas's (``reports``: what
    test_ptxas_resource_usage compiled): a change that moves a kernel's registers, shared memory or
    spills updates its header in the same commit. A table of another release than this nvcc's has
    nothing to compare with; False when no table was compared (a table of another release leaves
    the others compared)."""
    wrong, compared = [], False
    for op_file, report in reports.items():
        release, table = header_ptxas_table(op_file)
        if release != nvcc_release():
            continue
        compared = True
        stated = table[build]
        for name in ENTRIES[op_file]:
            got = {k: report[name].get(k, 0) for k in ("registers", "smem", "spill")}
            if stated.get(name) != got:
                have = "/".join(str(stated[name][k]) for k in got) if name in stated else "nothing"
                wrong.append(f"kernels/{op_file}.cu {name} {build}: the header says {have}, ptxas "
                             f"{got['registers']}/{got['smem']}/{got['spill']}")
    assert not wrong, "update the ptxas table in the kernel's header:\n" + "\n".join(wrong)
    return compared

# ----------------------------------------------------------------------------- the GPU path, faked
# No GPU here: CuPy is faked (a device of compute capability 9.0, a RawModule that loads a file),
# NVRTC is the real binding. The registry compiles with NVRTC itself, never through CuPy's
# RawModule(code=...), which appends -ftz=true.
class FakeRawModule:
    def __init__(self, code=None, *, path=None, options=()):
        assert code is None and path is not None, "the registry must load a binary, not let CuPy compile"
        self.path, self.binary, self.loaded = path, pathlib.Path(path).read_bytes(), False

    def compile(self):  # CuPy: RawModule(path=...).compile() loads the module now
        self.loaded = True


class FakeDevice:
    compute_capability = "90"

    def __init__(self, device=None):
        self.id = device or 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """The fake CuPy installed, empty in-process caches, $GPUCONV_CUDA_CACHE in tmp_path, and
    ``calls``: the options of every NVRTC compile."""
    fake = types.SimpleNamespace(RawModule=FakeRawModule, cuda=types.SimpleNamespace(Device=FakeDevice))
    monkeypatch.setattr(backend, "require_cupy", lambda: fake)
    monkeypatch.setattr(kernels, "_cache", {})
    monkeypatch.setattr(kernels, "_functions", {})
    monkeypatch.setenv("GPUCONV_CUDA_CACHE", str(tmp_path / "cuda-cache"))
    calls, real = [], nvrtc.compileProgram

    def compile_program(prog, options):
        calls.append(list(options))
        return real(prog, options)

    monkeypatch.setattr(nvrtc, "compileProgram", compile_program)
    return types.SimpleNamespace(cache=tmp_path / "cuda-cache", calls=calls)


@needs_nvrtc
def test_gpu_path_builds_a_cubin_for_the_device_and_caches_it_on_disk(fake_gpu):
    mod = kernels.get_module("relu", np.float32, "cuda", device=0)
    assert isinstance(mod, FakeRawModule) and mod.loaded
    path = pathlib.Path(mod.path)
    assert list(fake_gpu.cache.iterdir()) == [path]
    assert path.suffix == ".cubin" and "-float-sm_90-" in path.name and mod.binary[:4] == b"\x7fELF"
    assert fake_gpu.calls == [["--gpu-architecture=sm_90", *kernels.NVRTC_OPTIONS]]
    assert kernels.get_module("relu", np.float32, "cuda", device=0) is mod  # the in-process cache

    kernels.clear_cache()  # as a new process would: the file is loaded, NVRTC does not run
    again = kernels.get_module("relu", np.float32, "cuda", device=0)
    assert again is not mod and again.path == mod.path and again.loaded and len(fake_gpu.calls) == 1

    kernels.get_module("relu", np.float64, "cuda", device=0)  # another source: another binary
    assert len(fake_gpu.calls) == 2 and len(list(fake_gpu.cache.iterdir())) == 2


@needs_nvrtc
def test_the_cuda_cache_drops_its_least_recently_used_binaries_past_its_limit(fake_gpu, monkeypatch):
    """Past $GPUCONV_CACHE_LIMIT_MB a compile that stores a new binary deletes the binaries used
    longest ago (a load counts as a use); other files in the directory stay."""
    import os
    import time
    old = time.time() - 7 * 86400
    mod = kernels.get_module("relu", np.float32, "cuda", device=0)
    cache = fake_gpu.cache
    stale = [cache / f"conv2d-float-sm_90-{i:024x}.cubin" for i in range(3)]
    for f in stale:
        f.write_bytes(b"\0" * (1 << 20))
    theirs = cache / "README"
    theirs.write_bytes(b"\0" * (1 << 20))
    for i, f in enumerate((*stale, theirs, pathlib.Path(mod.path))):
        os.utime(f, (old - i * 86400, old - i * 86400))  # stale[2] the least recently used
    assert all(kernels.CACHE_FILES.match(f.name) for f in (*stale, pathlib.Path(mod.path)))
    kernels.clear_cache()
    assert kernels.get_module("relu", np.float32, "cuda", device=0).path == mod.path  # a hit: used now
    assert pathlib.Path(mod.path).stat().st_mtime > old + 86400
    monkeypatch.setenv("GPUCONV_CACHE_LIMIT_MB", "2")
    kernels.get_module("relu", np.float64, "cuda", device=0)  # a compile: the cache is pruned
    assert [f.exists() for f in stale] == [True, False, False]  # down to 3/4 of the limit, oldest first
    assert theirs.exists() and pathlib.Path(mod.path).exists()
    assert len(fake_gpu.calls) == 2


@needs_nvrtc
def test_hopper_builds_the_wgmma_file_for_sm_90a_and_the_others_for_sm_90(fake_gpu, monkeypatch):
    """conv2d_tc (its tcwg kernels use wgmma) is built for the arch-specific sm_90a on a
    compute-capability-9.0 device; every other file keeps the portable sm_90 CUBIN. What is checked
    is the arch each file is built for: conv2d_tc's source is a one-line kernel here (its real
    sm_90a CUBIN, 10 s of NVRTC per dtype, is built by the warpgroup test above)."""
    assert kernels.ARCH_SPECIFIC == ("conv2d_tc",)
    monkeypatch.delenv("GPUCONV_WGMMA", raising=False)  # the tiles on (GPUCONV_WGMMA=0 builds sm_90)
    real = kernels.build_source
    monkeypatch.setattr(kernels, "build_source", lambda op_file, *a, **k: real(op_file, *a, **k)
                        if op_file != "conv2d_tc" else 'extern "C" __global__ void conv2d_stub(float* y) { *y = 1.0f; }')
    kernels.get_module("relu", ml_dtypes.bfloat16, "cuda", device=0)
    mod = kernels.get_module("conv2d_tc", ml_dtypes.bfloat16, "cuda", device=0)
    assert "-bfloat16-sm_90a-" in pathlib.Path(mod.path).name and mod.binary[:4] == b"\x7fELF"
    assert [c[0] for c in fake_gpu.calls] == ["--gpu-architecture=sm_90", "--gpu-architecture=sm_90a"]


@needs_nvrtc
def test_precompile_fills_the_cache_the_launches_read(fake_gpu, monkeypatch):
    """gpuconv precompile builds every dtype's binary (float32's TF32 build too where the file has
    one) for the device, in parallel, into the disk cache; the modules then load without NVRTC."""
    records = kernels.precompile(0, files=("relu", "gemm_tc"), jobs=2)
    assert [(r["file"], r["build"]) for r in records] == [
        ("relu", "float"), ("relu", "double"), ("relu", "bfloat16"), ("relu", "float16"), ("gemm_tc", "float"),
        ("gemm_tc", "float+tf32"), ("gemm_tc", "double"), ("gemm_tc", "bfloat16"), ("gemm_tc", "float16")]
    assert all(r["arch"] == "sm_90" and not r["cached"] for r in records) and len(fake_gpu.calls) == 9
    assert len(list(fake_gpu.cache.iterdir())) == 9
    assert all(r["cached"] for r in kernels.precompile(0, files=("relu",)))  # a second run finds them
    monkeypatch.setattr(kernels, "nvrtc_compile", lambda *a, **k: pytest.fail("compiled again"))
    for dt in (np.float32, np.float64, ml_dtypes.bfloat16, np.float16):
        assert kernels.get_module("relu", dt, "cuda", device=0).loaded
    assert kernels.get_module("gemm_tc", np.float32, "cuda", device=0, tf32=True).loaded


def test_precompile_builds_for_the_arch_each_file_runs_in(fake_gpu, monkeypatch):
    seen = []
    monkeypatch.setattr(kernels, "_cached_binary", lambda src, f, dt, arch, where, tf32: seen.append((f, arch)) or
                        (None, None))
    kernels.precompile(0, files=("conv2d_tc", "relu"))  # a Hopper device (the fake's capability 9.0)
    assert set(seen) == {("conv2d_tc", "sm_90a"), ("relu", "sm_90")}
    seen.clear()
    # the wgmma tiles off (the battery after a failed probe): the portable build, which holds no
    # wgmma, so that an sm_90a build that fails to compile or load takes no other kernel with it
    with monkeypatch.context() as m:
        m.setenv("GPUCONV_WGMMA", "0")
        kernels.precompile(0, files=("conv2d_tc", "relu"))
        kernels.precompile(arch="sm_90", files=("conv2d_tc",))
    assert set(seen) == {("conv2d_tc", "sm_90"), ("relu", "sm_90")}
    seen.clear()
    kernels.precompile(arch="sm_80", files=("conv2d_tc",))  # no GPU needed
    assert set(seen) == {("conv2d_tc", "sm_80")} and len(seen) == 5  # four dtypes and TF32
    seen.clear()
    kernels.precompile(arch="sm_90", files=("conv2d", "relu"), dtypes=(ml_dtypes.bfloat16, np.float32), tf32=False)
    assert len(seen) == 4  # a bf16 run's builds: bf16 and float32 of each file, no TF32
    seen.clear()
    kernels.precompile(arch="sm_90", files=("conv2d", "relu"), dtypes=(np.float32,))
    assert len(seen) == 3  # a TF32 run's: float32 of each, and conv2d's TF32 build
    with pytest.raises(ValueError, match="no kernel files \\['conv9'\\]"):
        kernels.precompile(arch="sm_90", files=("conv9",))


@needs_nvrtc
def test_precompile_names_an_arch_older_than_nvrtc_targets_and_takes_family_targets(monkeypatch):
    """An --arch below NVRTC's oldest target gets the registry's fix (an older NVRTC, or 'sim')
    before any compile, not NVRTC's raw "invalid value for --gpu-architecture"; CUDA 12.9's family
    targets (sm_100f) are targets too."""
    oldest = min(int(a) for a in nvrtc.getSupportedArchs())
    older = f"sm_{oldest - 5 if oldest % 10 >= 5 else oldest - 10 + 5}"
    monkeypatch.setattr(kernels, "_cached_binary", lambda *a: pytest.fail("compiled for an arch NVRTC lacks"))
    with pytest.raises(kernels.KernelCompileError, match=rf"precompile\(arch='{older}'\) asks for compute "
                       r"capability .* compiles only for sm_.*install an NVRTC that still targets"):
        kernels.precompile(arch=older, files=("relu",))
    assert kernels.arch_capability("sm_100f") == kernels.arch_capability("sm_100a") == 100
    with pytest.raises(ValueError, match="is not an NVRTC target"):
        kernels.arch_capability("sm_100x")



def test_an_nvrtc_binding_whose_library_is_missing_is_an_import_error_naming_the_fix(monkeypatch, capsys):
    """CuPy 14 imports its NVRTC binding without libnvrtc and loads the library at the binding's
    first call, through cuda.pathfinder, whose DynamicLibNotFoundError is a RuntimeError: CuPy
    without the nvidia-cuda-nvrtc wheel gets the ImportError that names the package to install
    (and `gpuconv precompile` its one line), as a machine without CuPy does."""
    libs = pytest.importorskip("cupy_backends.cuda.libs")
    pathfinder = pytest.importorskip("cuda.pathfinder")

    class WithoutTheLibrary:
        def __getattr__(self, name):
            def call(*args):
                raise pathfinder.DynamicLibNotFoundError('Failure finding "libnvrtc.so": No such file: libnvrtc.so*')
            return call

    monkeypatch.setattr(libs, "nvrtc", WithoutTheLibrary())
    with pytest.raises(ImportError, match=r'libnvrtc\.so.*pip install nvidia-cuda-nvrtc'):
        kernels.precompile(arch="sm_90", files=("relu",))
    with pytest.raises(ImportError, match="pip install nvidia-cuda-nvrtc"):
        kernels.nvrtc_compile("", "relu", np.float32, "compute_90")
    from gpuconv import cli
    assert cli.main(["precompile", "--arch", "sm_90"]) == 1
    err = capsys.readouterr().err
    assert "NVRTC could not be imported" in err and "nvidia-cuda-nvrtc" in err and "Traceback" not in err

def test_a_launch_past_48_kib_of_dynamic_shared_memory_raises_the_kernels_limit_once(monkeypatch):
    """CUDA refuses more than 48 KiB of dynamic shared memory unless the kernel's attribute is
    raised first (cudaFuncAttributeMaxDynamicSharedMemorySize): the launch does it, once per kernel."""
    class FakeKernel:
        def __init__(self):
            self.limits, self.launches, self._limit = [], [], 0

        @property
        def max_dynamic_shared_size_bytes(self):
            return self._limit

        @max_dynamic_shared_size_bytes.setter
        def max_dynamic_shared_size_bytes(self, n):
            self.limits.append(n)
            self._limit = n

        def __call__(self, grid, block, args, shared_mem=0):
            assert shared_mem <= max(self._limit, kernels.DEFAULT_DYNAMIC_SHARED), "launched past its limit"
            self.launches.append(shared_mem)

    fn = FakeKernel()
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=FakeDevice), ndarray=np.ndarray)
    monkeypatch.setattr(backend, "cupy_module", lambda: fake)
    monkeypatch.setattr(kernels, "get_function", lambda *a, **k: fn)
    for shared in (0, 48 * 1024, 65536, 65536):
        kernels.launch("conv2d_tc", "conv2d_forward_tcwg", ml_dtypes.bfloat16, "cuda", (1, 1, 1), (256, 1, 1), (),
                       shared_mem=shared, device=0)
    assert fn.launches == [0, 48 * 1024, 65536, 65536] and fn.limits == [65536]


def test_occupancy_asks_the_driver_about_the_kernel_with_its_shared_memory_allowed(monkeypatch):
    """resident_blocks hands the occupancy calculator the CUfunction of the RawKernel (its
    .kernel.ptr) with the dynamic shared memory of its launches, after raising the kernel's limit
    to it (under the default 48 KiB limit the calculator answers 0 blocks)."""
    from cupy_backends.cuda.api import driver

    class FakeKernel:
        kernel = types.SimpleNamespace(ptr=0xF00D)
        max_dynamic_shared_size_bytes = 0

    fn, asked = FakeKernel(), []

    def occupancy(handle, threads, shared):
        asked.append((handle, threads, shared, fn.max_dynamic_shared_size_bytes))
        return 2 if fn.max_dynamic_shared_size_bytes >= shared else 0

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=FakeDevice))
    monkeypatch.setattr(backend, "cupy_module", lambda: fake)
    monkeypatch.setattr(backend, "require_cupy", lambda: fake)
    monkeypatch.setattr(kernels, "get_function", lambda *a, **k: fn)
    monkeypatch.setattr(driver, "occupancyMaxActiveBlocksPerMultiprocessor", occupancy)
    monkeypatch.setattr(kernels, "_resident", {})
    monkeypatch.setattr(kernels, "_dynamic_limit", {})
    n = kernels.resident_blocks("conv2d_tc", "conv2d_backward_weight_tcwg", ml_dtypes.bfloat16, 256, "cuda", 0,
                                shared_mem=65536)
    assert n == 2 and asked == [(0xF00D, 256, 65536, 65536)]
    assert kernels.resident_blocks("conv2d_tc", "conv2d_backward_weight_tcwg", ml_dtypes.bfloat16, 256, "cuda", 0,
                                   shared_mem=65536) == 2 and len(asked) == 1  # memoized
    # another build of the file (the wgmma tiles switched off) is another kernel: asked anew
    monkeypatch.setenv("GPUCONV_WGMMA", "0")
    kernels.resident_blocks("conv2d_tc", "conv2d_backward_weight_tcwg", ml_dtypes.bfloat16, 256, "cuda", 0,
                            shared_mem=65536)
    assert len(asked) == 2


@needs_nvrtc
def test_a_real_arch_compile_hands_over_the_ptx_of_its_virtual_arch():
    """compiled() takes compute_XX's PTX from an sm_XX compile: one text, from one compile."""
    image, ptx = kernels.nvrtc_compile(kernels.build_source("relu"), "relu", np.float32, "sm_90", with_ptx=True)
    assert image[:4] == b"\x7fELF" and ptx == kernels.nvrtc_check("relu", "compute_90")
    assert compiled("relu", "sm_90") == (ptx, image) and compiled("relu", "compute_90") == (ptx, None)


@needs_nvrtc
@pytest.mark.parametrize("op_file", ["relu", "conv2d"])
def test_cubin_is_the_whole_elf_image(op_file):
    """CuPy's nvrtc.getCUBIN drops the image's last byte; the registry must hand the driver all
    nvrtcGetCUBINSize bytes, with the ELF's section and program header tables inside them."""
    image = kernels.nvrtc_compile(kernels.build_source(op_file, np.float32), op_file, np.float32, "sm_90")
    assert kernels.elf_image_end(image) <= len(image)
    # CuPy's own call is one byte short of it, which the check recognises as truncated.
    prog = nvrtc.createProgram(kernels.build_source(op_file, np.float32), f"{op_file}.cu", [], [])
    try:
        nvrtc.compileProgram(prog, ["--gpu-architecture=sm_90", *kernels.NVRTC_OPTIONS])
        cupy_image = nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)
    assert image.startswith(cupy_image) and len(cupy_image) < len(image)
    with pytest.raises(ValueError, match=rf"truncated ELF image: its header tables end at byte \d+, "
                                         rf"the image has {len(image) - 1}"):
        kernels.elf_image_end(image[:-1])


@needs_nvrtc
def test_a_cubin_builds_where_there_is_no_proc_and_find_library_finds_no_nvrtc(monkeypatch):
    """Windows: no /proc/self/maps to find the NVRTC CuPy loaded, and find_library("nvrtc") looks
    for nvrtc.dll where the library is nvrtc64_130_0.dll: the CUBIN still builds, read through the
    library CuPy's loader (cuda.pathfinder) found."""
    import builtins
    import ctypes.util

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", path)
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(kernels, "open", no_proc, raising=False)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    kernels._nvrtc_library.cache_clear()
    try:
        image = kernels.nvrtc_compile(kernels.build_source("relu", np.float32), "relu", np.float32, "sm_80")
    finally:
        kernels._nvrtc_library.cache_clear()
    assert kernels.elf_image_end(image) <= len(image)


@needs_nvrtc
def test_a_truncated_cached_cubin_is_never_loaded(fake_gpu):
    mod = kernels.get_module("relu", np.float32, "cuda", device=0)
    path = pathlib.Path(mod.path)
    assert kernels.elf_image_end(mod.binary) <= len(mod.binary) == path.stat().st_size
    path.write_bytes(mod.binary[:-1])  # as a binary written by an earlier, truncating version
    kernels.clear_cache()
    again = kernels.get_module("relu", np.float32, "cuda", device=0)
    assert again.binary == mod.binary and len(fake_gpu.calls) == 2  # compiled and stored again
    path.chmod(0o666)  # a whole cubin, but every user could have changed it: compiled again, never loaded
    kernels.clear_cache()
    kernels.get_module("relu", np.float32, "cuda", device=0)
    assert len(fake_gpu.calls) == 3 and not path.stat().st_mode & 0o002


@needs_nvrtc
def test_gpu_path_compiles_without_flush_to_zero(fake_gpu):
    for op_file in ("relu", "pool2d"):
        kernels.get_module(op_file, np.float32, "cuda", device=0)
    assert len(fake_gpu.calls) == 2
    for options in fake_gpu.calls:
        assert options[1:] == list(kernels.NVRTC_OPTIONS)
        assert not any("ftz=true" in o or "fast_math" in o for o in options), options
    assert "-ftz=false" in kernels.NVRTC_OPTIONS


@needs_nvrtc
@pytest.mark.parametrize("op_file", ["relu", "pool2d"])
def test_gpu_path_ptx_keeps_subnormals_and_the_check_can_fail(fake_gpu, monkeypatch, op_file):
    monkeypatch.setattr(nvrtc, "getSupportedArchs", lambda: (75, 80, 86, 89))
    ptx = kernels.get_module(op_file, np.float32, "cuda", device=0).binary.decode()
    # No flush-to-zero on the kernels' own arithmetic and comparisons. (libdevice's powf, which LP
    # pooling calls, uses rcp.approx.ftz internally whatever the flags: its own business, handled
    # inside the routine, so the approximate reciprocal is not counted.)
    assert ".target sm_89" in ptx and not FLUSHED.search(ptx), FLUSHED.search(ptx)
    # The same path with CuPy's -ftz=true appended does emit flush-to-zero instructions
    # (setp.gt.ftz.f32 in ReLU and max pooling), so the assertion above can fail.
    monkeypatch.setattr(kernels, "NVRTC_OPTIONS", kernels.NVRTC_OPTIONS + ("-ftz=true",))
    kernels.clear_cache()
    flushed = kernels.get_module(op_file, np.float32, "cuda", device=0).binary.decode()
    assert "setp.gt.ftz.f32" in flushed
    assert len(list(fake_gpu.cache.iterdir())) == 2  # the options are part of the cache key


@needs_nvrtc
def test_gpu_path_falls_back_to_ptx_when_nvrtc_lacks_the_device_arch(fake_gpu, monkeypatch):
    monkeypatch.setattr(nvrtc, "getSupportedArchs", lambda: (75, 80, 86, 89))
    mod = kernels.get_module("relu", np.float32, "cuda", device=0)
    assert mod.path.endswith(".ptx") and "-compute_89-" in mod.path
    assert fake_gpu.calls == [["--gpu-architecture=compute_89", *kernels.NVRTC_OPTIONS]]
    assert kernels.nvrtc_arch("89") == "sm_89" and kernels.nvrtc_arch("120") == "compute_89"
    version = ".".join(map(str, nvrtc.getVersion()))
    with pytest.raises(kernels.KernelCompileError,
                       match=rf"device 3 has compute capability 7\.0 \(sm_70\), and NVRTC {re.escape(version)} "
                             r"compiles only for sm_75, sm_80, sm_86, sm_89: install an NVRTC"):
        kernels.nvrtc_arch("70", device=3)


@needs_nvrtc
def test_a_gpu_without_tf32_builds_the_tf32_convolutions(fake_gpu, monkeypatch):
    """On a T4 (compute capability 7.5, no cvt to .tf32) float32 in TF32 mode runs conv2d.cu's
    CUDA-core tiles in their TF32 build (the tensor-core files never launch there), whose operands
    are rounded in plain integer arithmetic: the sm_75 CUBIN builds."""
    monkeypatch.setattr(FakeDevice, "compute_capability", "75")
    mod = kernels.get_module("conv2d", np.float32, "cuda", device=0, tf32=True)
    assert "-float-tf32-sm_75-" in pathlib.Path(mod.path).name and mod.binary[:4] == b"\x7fELF"
    assert fake_gpu.calls == [["--gpu-architecture=sm_75", *kernels.NVRTC_OPTIONS]]


@pytest.fixture
def spare_dir(tmp_path, monkeypatch):
    """The system's temporary directory in tmp_path, and no private directory made in it yet."""
    import tempfile
    from gpuconv import _files
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr(_files, "_private_dirs", {})
    monkeypatch.setattr(kernels, "_cache_warned", False)
    return tmp_path / "tmp" / f"gpuconv-cuda-{_files._uid() or 0}"


@needs_nvrtc
def test_gpu_path_works_with_an_unwritable_cache_and_warns_once(fake_gpu, tmp_path, monkeypatch, spare_dir):
    """A cache that cannot be written (a read-only home, a full disk): the kernels go to a private
    temporary directory, said once, where the next process finds them instead of compiling again;
    where that fails too, into a throwaway copy."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("GPUCONV_CUDA_CACHE", str(tmp_path / "a-file" / "cache"))  # mkdir fails
    with pytest.warns(RuntimeWarning, match=rf"not writable.*they are kept in {re.escape(str(spare_dir))} instead.*"
                                            r"Set GPUCONV_CUDA_CACHE"):
        mod = kernels.get_module("relu", np.float32, "cuda", device=0)
    assert mod.loaded and mod.binary[:4] == b"\x7fELF" and pathlib.Path(mod.path).parent == spare_dir
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.get_module("relu", np.float64, "cuda", device=0).loaded
    assert len(fake_gpu.calls) == 2
    monkeypatch.setattr(kernels, "_cache", {})  # a new process: it finds both in the spare directory
    from gpuconv import _files
    monkeypatch.setattr(_files, "_private_dirs", {})
    assert kernels.get_module("relu", np.float32, "cuda", device=0).loaded
    assert len(fake_gpu.calls) == 2
    monkeypatch.setattr(kernels, "_cache", {})
    monkeypatch.setattr(kernels, "_cache_warned", False)
    for p in spare_dir.iterdir():
        p.unlink()
    monkeypatch.setattr(_files, "_private_dirs", {"gpuconv-cuda": tmp_path / "a-file"})  # unwritable too
    with pytest.warns(RuntimeWarning, match=r"not writable.*compiled again in every process"):
        mod = kernels.get_module("relu", np.float32, "cuda", device=0)
    assert mod.loaded and not pathlib.Path(mod.path).exists()  # the throwaway copy is gone once loaded
    assert len(fake_gpu.calls) == 3



@needs_nvrtc
def test_gpu_path_compile_error_names_file_and_line(fake_gpu, broken_kernels):
    with pytest.raises(kernels.KernelCompileError,
                       match=r"(?s)kernels/broken\.cu \(float, sm_90, device 0\) failed to compile with NVRTC .*"
                             r"kernels/broken\.cu\(2\).*undefined_name"):
        kernels.get_module("broken", np.float32, "cuda", device=0)
    assert not fake_gpu.cache.exists() or not list(fake_gpu.cache.iterdir())


@needs_nvrtc
def test_gpu_path_load_error_is_a_kernel_compile_error(fake_gpu, monkeypatch):
    def refuse(self):
        raise RuntimeError("CUDA_ERROR_UNSUPPORTED_PTX_VERSION")
    monkeypatch.setattr(FakeRawModule, "compile", refuse)
    with pytest.raises(kernels.KernelCompileError, match=r"relu\.cu \(float, sm_90\) compiled, but device 0 "
                                                         r"cannot load .*UNSUPPORTED_PTX_VERSION.*update the NVIDIA driver"):
        kernels.get_module("relu", np.float32, "cuda", device=0)


def test_write_atomic_leaves_no_temporary_file_behind(tmp_path, monkeypatch):
    from gpuconv import _files
    target = tmp_path / "k.cubin"
    _files.write_atomic(target, b"one")

    def replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(_files.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        _files.write_atomic(target, b"two")
    assert target.read_bytes() == b"one" and [p.name for p in tmp_path.iterdir()] == ["k.cubin"]


def test_write_atomic_gives_the_mode_of_a_plain_write(tmp_path):
    """Not mkstemp's 0600: a kernel cache or a run's plot is readable wherever a plain file would be."""
    import os

    from gpuconv import _files
    old = os.umask(0o022)
    try:
        _files.write_atomic(tmp_path / "curves.png", b"png")
        assert (tmp_path / "curves.png").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_a_cuda_cache_every_user_can_write_to_is_not_used(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("GPUCONV_CUDA_CACHE", str(shared))
    monkeypatch.setattr(kernels, "_cache_dir_warned", False)
    with pytest.warns(RuntimeWarning, match=r"cannot be trusted .*writable by every user.*chmod o-w"):
        where = kernels.cuda_cache_dir()
    assert where != shared and "gpuconv-cuda" in where.name
    shared.chmod(0o755)
    assert kernels.cuda_cache_dir() == shared
