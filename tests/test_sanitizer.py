"""Every kernel under AddressSanitizer + UBSan on the host simulator, in both schedule orders.

The kernels run in a subprocess started by ``gpuconv.hostsim.run_sanitized`` (python with
libasan preloaded; every simulator build there is sanitized). Shapes are small but chosen to
reach every guarded edge: partial 64-wide GEMM tiles in both dimensions, a partial 8-deep
reduction round, padding wider than the filter, several backward-weight splits, overlapping
pooling windows, ReLU lengths that leave a vector tail and a misaligned view. Any out-of-bounds
read or write, use of an uninitialized shared tile turned into UB, or signed overflow ends the
child with a report naming the kernel, block and thread.
"""
from __future__ import annotations

import pathlib
import textwrap

import pytest

from gpuconv import hostsim
from test_nvrtc import ENTRIES

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
# The launches, shapes and reference checks are those of benchmarks/sanitize_gpu.py (what
# compute-sanitizer runs on a GPU), here on the simulator's ASan/UBSan build.
SNIPPET = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {str(BENCH)!r})
    import sanitize_gpu
    sys.exit(sanitize_gpu.main(["--device", "sim"]))
""")

# Every entry point of every kernel file: a new kernel added without a sanitized run fails here.
EXPECTED = {name for names in ENTRIES.values() for name in names}


@pytest.mark.skipif(not hostsim.sanitizers_available(), reason="g++ or its ASan/UBSan runtimes are not installed")
@pytest.mark.parametrize("reverse", [False, True], ids=["forward-order", "reverse-order"])
@pytest.mark.slow
def test_every_kernel_is_clean_under_asan_ubsan(reverse):
    res = hostsim.run_sanitized(SNIPPET, reverse=reverse, timeout=900)
    assert res.ok, f"sanitized run failed ({res.location or 'no kernel location'}):\n{res.stderr[-6000:]}"
    ran = set(res.stdout.split("RAN ", 1)[1].split()[0].split(","))
    assert ran == EXPECTED, f"kernels not exercised: {sorted(EXPECTED - ran)}"
    assert "runtime error" not in res.stderr and "AddressSanitizer" not in res.stderr


def test_the_sanitizer_catches_an_out_of_bounds_write():
    """The harness can fail: a kernel writing one element past the end is reported, named."""
    if not hostsim.sanitizers_available():
        pytest.skip("g++ or its ASan/UBSan runtimes are not installed")
    code = textwrap.dedent("""
        import numpy as np
        from gpuconv import hostsim
        src = 'extern "C" __global__ void past_end(float* y, int n) { y[threadIdx.x] = 1.0f; }'
        y = np.zeros(4, np.float32)
        hostsim.compile(src, "oob").get_function("past_end")((1,), (5,), (y, np.int32(4)))
    """)
    res = hostsim.run_sanitized(code)
    assert not res.ok
    assert "past_end" in res.stderr


def test_the_compiler_runs_without_the_sanitizer_runtimes(tmp_path, monkeypatch):
    """A sanitized run's python preloads libasan and libubsan; g++ started from it must not inherit
    them (cc1plus under ASan's allocator compiles up to twice as slowly). Other preloads stay."""
    from gpuconv.hostsim import _build
    monkeypatch.setenv("LD_PRELOAD", "/x/libasan.so.8 /opt/libkeep.so:/y/libubsan.so.1")
    assert _build.compiler_env()["LD_PRELOAD"] == "/opt/libkeep.so"
    monkeypatch.setenv("LD_PRELOAD", "/x/libasan.so")
    assert "LD_PRELOAD" not in _build.compiler_env()
    monkeypatch.delenv("LD_PRELOAD")
    if not hostsim.sanitizers_available():
        pytest.skip("g++ or its ASan/UBSan runtimes are not installed")
    log, cxx = tmp_path / "preloads.log", tmp_path / "cxx"
    cxx.write_text(f'#!/bin/sh\necho "preload=$LD_PRELOAD" >> {log}\nexec g++ "$@"\n')
    cxx.chmod(0o755)
    monkeypatch.setenv("GPUCONV_SIM_CXX", str(cxx))
    monkeypatch.setenv("GPUCONV_SIM_CACHE", str(tmp_path / "cache"))
    code = textwrap.dedent("""
        import numpy as np
        from gpuconv import hostsim
        src = 'extern "C" __global__ void fill(float* y) { y[threadIdx.x] = 2.0f; }'
        y = np.zeros(4, np.float32)
        hostsim.compile(src, "preloadtest").get_function("fill")((1,), (4,), (y,))
        assert (y == 2).all()
    """)
    res = hostsim.run_sanitized(code)
    assert res.ok, res.stderr[-3000:]  # the ASan-built library loaded: the python had the runtimes
    calls = log.read_text().splitlines()
    assert len(calls) >= 2 and all(line == "preload=" for line in calls), calls
