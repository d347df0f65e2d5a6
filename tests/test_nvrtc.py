"""Every kernel file compiles with NVRTC for compute_80 and compute_90, in float32 and float64,
without a GPU; with nvcc present, ptxas reports registers and shared memory per kernel and the
tuned convolution kernels do not spill to local memory."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from gpuconv import kernels

try:
    from cupy_backends.cuda.libs import nvrtc  # noqa: F401
    _NVRTC_WHY = None
except Exception as exc:  # ImportError, or the NVRTC shared library missing
    _NVRTC_WHY = f"the NVRTC binding is unavailable ({type(exc).__name__}: {exc}); install gpuconv[nvrtc]"

needs_nvrtc = pytest.mark.skipif(_NVRTC_WHY is not None, reason=_NVRTC_WHY or "")

# The extern "C" entry points each file must export (the launchers call them by name).
ENTRIES = {
    "conv2d": ["conv2d_forward_v1", "conv2d_forward_v2", "conv2d_forward_v3", "conv2d_backward_data_v1",
               "conv2d_backward_data_v2", "conv2d_backward_data_v3",
               "conv2d_backward_weight_v1", "conv2d_backward_weight_v2", "conv2d_backward_weight_v3",
               "conv2d_reduce_splits",
               "conv2d_backward_bias"],
    "pool2d": ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward"],
    "augment": ["augment_batch"],
    "relu": ["relu_forward_v1", "relu_forward_v2", "relu_backward_v1", "relu_backward_v2", "bias_relu_forward"],
    "dropout": ["dropout_forward", "dropout_backward"],
}
TUNED = ["conv2d_forward_v2", "conv2d_backward_data_v2", "conv2d_backward_weight_v2",
         "conv2d_forward_v3", "conv2d_backward_data_v3", "conv2d_backward_weight_v3"]


def test_entry_table_covers_every_kernel_file():
    assert sorted(ENTRIES) == sorted(kernels.KERNEL_FILES)


@needs_nvrtc
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("op_file", kernels.KERNEL_FILES)
def test_compiles_with_nvrtc(op_file, arch, dtype):
    ptx = kernels.nvrtc_check(op_file, arch, dtype)
    assert f".target sm_{arch[-2:]}" in ptx
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    assert entries == set(ENTRIES[op_file]), f"{op_file}.cu exports {sorted(entries)}"
    # The float64 build really computes in double (the gradient checks rely on it).
    if dtype is np.float64 and op_file == "conv2d":
        assert ".f64" in ptx


@needs_nvrtc
def test_compile_error_names_file_and_line(tmp_path, monkeypatch):
    src = kernels.kernel_dir()
    for name in ("common.cuh", "relu.cu"):
        (tmp_path / name).write_text((src / name).read_text())
    (tmp_path / "broken.cu").write_text('extern "C" __global__ void k(real_t* y) {\n'
                                        "    y[0] = undefined_name;\n}\n")
    monkeypatch.setenv("GPUCONV_KERNELS_DIR", str(tmp_path))
    with pytest.raises(kernels.KernelCompileError, match=r'kernels/broken\.cu\(2\).*undefined_name'):
        kernels.nvrtc_check("broken", "compute_80", np.float32)


def _ptxas_report(op_file, dtype, tmp_path):
    cu = tmp_path / f"{op_file}.cu"
    cu.write_text(kernels.build_source(op_file, dtype))
    proc = subprocess.run(["nvcc", "-cubin", "-arch=sm_90", "-std=c++14", "--resource-usage", str(cu),
                           "-o", str(tmp_path / f"{op_file}.cubin")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report, current = {}, None
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            current = m.group(1)
            report[current] = {}
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            report[current]["spill"] = int(m.group(1)) + int(m.group(2))
        m = re.search(r"Used (\d+) registers.*?(?:(\d+) bytes smem)?$", line)
        if m and current:
            report[current]["registers"] = int(m.group(1))
            report[current]["smem"] = int(m.group(2) or 0)
    return report


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH (ptxas resource report needs it)")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_ptxas_resource_usage(tmp_path, dtype, capsys):
    lines, reports = [], {}
    for op_file in kernels.KERNEL_FILES:
        report = reports[op_file] = _ptxas_report(op_file, dtype, tmp_path)
        assert set(report) == set(ENTRIES[op_file])
        for name in ENTRIES[op_file]:
            r = report[name]
            lines.append(f"sm_90 {np.dtype(dtype).name:7s} {name:28s} {r['registers']:4d} registers "
                         f"{r['smem']:6d} B smem  {r['spill']} B spilled")
            assert r["registers"] <= 255
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    if dtype is np.float32:  # float64 doubles the register tiles; only the production dtype must not spill
        report = reports["conv2d"]
        for name in TUNED:
            assert report[name]["spill"] == 0, f"{name} spills {report[name]['spill']} bytes to local memory"


@needs_nvrtc
def test_cupy_path_compile_error_names_file_and_line(tmp_path, monkeypatch):
    """The GPU path (kernels._compile_cupy): CuPy's RawModule is faked by one that does what CuPy
    does, NVRTC on the registry's source with the registry's options, raising CuPy's own
    CompileException with the program log; the user sees KernelCompileError naming file(line)."""
    import contextlib
    import types

    import cupy
    from cupy_backends.cuda.libs import nvrtc as _nvrtc

    class FakeRawModule:
        def __init__(self, code, options=()):
            self.code, self.options = code, options

        def compile(self):
            prog = _nvrtc.createProgram(self.code, "kern.cu", [], [])
            try:
                _nvrtc.compileProgram(prog, ["--gpu-architecture=compute_90", *self.options])
            except _nvrtc.NVRTCError:
                raise cupy.cuda.compiler.CompileException(_nvrtc.getProgramLog(prog), self.code, "kern",
                                                          self.options, "nvrtc") from None
            finally:
                _nvrtc.destroyProgram(prog)

    fake = types.SimpleNamespace(RawModule=FakeRawModule, cuda=types.SimpleNamespace(
        Device=lambda i: contextlib.nullcontext(), compiler=cupy.cuda.compiler))
    from gpuconv import backend
    monkeypatch.setattr(backend, "require_cupy", lambda: fake)
    good = kernels._compile_cupy(kernels.build_source("relu"), "relu", np.dtype(np.float32), 0)
    assert isinstance(good, FakeRawModule) and good.options == kernels.NVRTC_OPTIONS

    src = kernels.kernel_dir()
    (tmp_path / "common.cuh").write_text((src / "common.cuh").read_text())
    (tmp_path / "broken.cu").write_text('extern "C" __global__ void k(real_t* y) {\n    y[0] = undefined_name;\n}\n')
    monkeypatch.setenv("GPUCONV_KERNELS_DIR", str(tmp_path))
    with pytest.raises(kernels.KernelCompileError,
                       match=r'(?s)kernels/broken\.cu \(float\) failed to compile with NVRTC for device 0.*'
                             r'kernels/broken\.cu\(2\).*undefined_name'):
        kernels._compile_cupy(kernels.build_source("broken"), "broken", np.dtype(np.float32), 0)
