"""The host simulator: kernels compiled with g++ and run as fibers, barriers, shared-memory
poison, warp collectives, atomics, argument checks, the build cache and the ASan build."""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import forked_exit, nvrtc_or_skip
from gpuconv import hostsim, kernels

KERNELS = pathlib.Path(__file__).with_name("hostsim_kernels")


def load(name: str, real_t: str = "float", **kw):
    """Builds a fixture the way the kernel registry does: typedef + #line + the file's text."""
    text = (KERNELS / name).read_text()
    source = f'typedef {real_t} real_t;\n#line 1 "tests/hostsim_kernels/{name}"\n{text}'
    return hostsim.compile(source, name=name.split(".")[0], **kw)


@pytest.fixture(scope="module")
def basics():
    return load("basics.cu")


@pytest.fixture(scope="module")
def basics64():
    return load("basics.cu", real_t="double")


def test_vector_add(basics):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(1000).astype(np.float32), rng.standard_normal(1000).astype(np.float32)
    out = np.zeros_like(a)
    basics.get_function("vector_add")((8,), (128,), (a, b, out, np.int32(a.size)))
    np.testing.assert_array_equal(out, a + b)


@pytest.mark.parametrize("reverse", [False, True])
def test_tiled_reduction_with_barriers(basics, reverse):
    x = np.random.default_rng(1).standard_normal(5000).astype(np.float32)
    partial = np.zeros(20, np.float32)
    basics.get_function("block_sum")((20,), (256,), (x, partial, np.int32(x.size)), reverse=reverse)
    np.testing.assert_allclose(partial.sum(), x.astype(np.float64).sum(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(partial[0], x[:256].astype(np.float64).sum(), rtol=1e-4, atol=1e-4)


def test_float64_build_of_same_source(basics64):
    x = np.random.default_rng(2).standard_normal(512)
    partial = np.zeros(2)
    basics64.get_function("block_sum")((2,), (256,), (x, partial, np.int32(x.size)))
    np.testing.assert_allclose(partial, [x[:256].sum(), x[256:].sum()], rtol=1e-12)


def test_missing_barrier_reads_poison(basics):
    # Thread 0 runs first and reads tile[128] before thread 128 wrote it: 0xFF poison, a NaN.
    x = np.ones(256, np.float32)
    partial = np.zeros(1, np.float32)
    basics.get_function("block_sum_no_barrier")((1,), (256,), (x, partial, np.int32(256)))
    assert np.isnan(partial[0])


@pytest.mark.parametrize("reverse", [False, True])
def test_missing_barrier_poison_in_both_schedules(basics, reverse):
    # Each thread reads both neighbours; whichever runs first sees one of them unwritten.
    x = np.ones(128, np.float32)
    y = np.zeros(128, np.float32)
    basics.get_function("stencil_no_barrier")((1,), (128,), (x, y), reverse=reverse)
    assert np.isnan(y).sum() == 127


def test_divergent_barrier_raises_not_hangs(basics):
    out = np.zeros(32, np.float32)
    with pytest.raises(hostsim.BarrierDivergence) as err:
        basics.get_function("divergent_barrier")((2,), (32,), (out,))
    msg = str(err.value)
    assert "block (0,0,0)" in msg and "(0,0,0) (1,0,0)" in msg and "[16 threads]" in msg
    assert "tests/hostsim_kernels/basics.cu:" in msg and "returned" in msg
    # the module stays usable after the abandoned launch
    x, o = np.ones(4, np.float32), np.zeros(4, np.float32)
    basics.get_function("vector_add")((1,), (4,), (x, x, o, np.int32(4)))
    np.testing.assert_array_equal(o, 2.0)


def test_barriers_at_different_lines_diverge(basics):
    with pytest.raises(hostsim.BarrierDivergence, match="different __syncthreads"):
        basics.get_function("two_barrier_sites")((1,), (64,), (np.zeros(64, np.float32),))


@pytest.mark.parametrize("reverse", [False, True])
def test_warp_shuffle_reduction(basics, reverse):
    x = np.random.default_rng(3).standard_normal(200).astype(np.float32)
    out = np.zeros(1, np.float32)
    basics.get_function("warp_sum")((2,), (128,), (x, out, np.int32(x.size)), reverse=reverse)
    np.testing.assert_allclose(out[0], x.astype(np.float64).sum(), rtol=1e-5, atol=1e-5)


def test_a_warp_runs_ahead_of_the_others_until_a_barrier(basics):
    """Warps are scheduled one at a time, each up to a __syncthreads: a read of another warp's
    shared-memory writes that no barrier orders sees poison in one order (a lockstep of all warps
    at every shuffle would have hidden the race)."""
    fn = basics.get_function("cross_warp_without_barrier")
    seen = []
    for reverse in (False, True):
        y = np.zeros(32, np.float32)
        fn((1,), (64,), (y,), reverse=reverse)
        seen.append(np.isnan(y).all())
    assert seen == [True, False]


def test_shuffle_variants_and_ballot(basics):
    out = np.zeros((5, 64), np.int32)
    basics.get_function("shuffle_variants")((1,), (64,), (out,))
    lane = np.arange(64) % 32
    np.testing.assert_array_equal(out[0], 5 + (np.arange(64) // 32) * 100)           # idx from lane 5
    np.testing.assert_array_equal(out[1], np.where(lane >= 3, np.arange(64) - 3, np.arange(64)))  # up 3
    np.testing.assert_array_equal(out[2], np.where(lane < 29, np.arange(64) + 3, np.arange(64)))  # down 3
    np.testing.assert_array_equal(out[3], np.arange(64) ^ 1)                           # xor 1
    np.testing.assert_array_equal(out[4], np.int32(np.uint32(0x55555555).view(np.int32)))  # ballot even lanes


def test_atomic_add_histogram(basics):
    values = np.random.default_rng(4).integers(0, 16, 3000).astype(np.int32)
    hist = np.zeros(16, np.int32)
    total = np.zeros(1, np.float64)
    basics.get_function("histogram")((12,), (256,), (values, hist, total, np.int32(values.size)))
    np.testing.assert_array_equal(hist, np.bincount(values, minlength=16))
    assert total[0] == values.sum()


def test_static_shared_arrays_live_in_the_poisoned_section(basics, basics64):
    # The __shared__ arrays of the module are in gpuconv_shared (the section filled with poison
    # before each block): at least the non-template tiles of basics.cu, twice as large in double
    # (template tiles are registered instead: see the next test).
    floats = 256 + 256 + 128 + 64 + 64
    assert basics.static_shared_bytes >= 4 * floats + 4 * 16
    assert basics64.static_shared_bytes - basics.static_shared_bytes >= 4 * floats


def test_template_shared_arrays_are_poisoned_every_block(basics):
    # g++ ignores the section attribute of a static local in a template (it goes to a COMDAT .bss
    # section): the source rewrite registers such __shared__ variables, and they are poisoned
    # with the section before every block, in every launch.
    fn = basics.get_function("template_shared_poison")
    for _ in range(2):
        y = np.zeros(64, np.float32)
        fn((2,), (32,), (y,))
        assert np.isnan(y).all(), y


def test_shared_registration_names_every_declarator():
    from gpuconv.hostsim import _source
    src = ("__shared__ __align__(16) float a[4], b[2][3] ; // __shared__ in a comment\n"
           "__shared__ int n;\n")
    out = _source.rewrite(src)
    assert out.count("\n") == src.count("\n")  # lines stay where they were
    for name in ("a", "b", "n"):
        assert f"gpuconv_sim::shared_var(&{name}, sizeof({name}));" in out
    assert "comment" in out and out.count("shared_var") == 3


def test_dynamic_shared_memory(basics):
    x = np.arange(96, dtype=np.float32)
    out = np.zeros_like(x)
    basics.get_function("reverse_in_block")((3,), (32,), (x, out), shared_mem=32 * 4)
    np.testing.assert_array_equal(out, x.reshape(3, 32)[:, ::-1].ravel())


def test_dynamic_shared_memory_is_poisoned(basics):
    out = np.zeros(8, np.float32)
    basics.get_function("read_dynamic_shared")((1,), (8,), (out,), shared_mem=64)
    assert np.isnan(out).all()


def test_3d_grid_and_block(basics):
    grid, block = (3, 2, 4), (4, 2, 2)
    n = np.prod(grid) * np.prod(block)
    out = np.zeros((n, 6), np.int32)
    basics.get_function("coords")(grid, block, (out,))
    bz, by, bx, tz, ty, tx = np.meshgrid(*[np.arange(d) for d in (grid[2], grid[1], grid[0], block[2],
                                                                  block[1], block[0])], indexing="ij")
    expect = np.stack([tx, ty, tz, bx, by, bz], axis=-1).reshape(-1, 6)
    np.testing.assert_array_equal(out, expect)


def test_vectorized_float4_loads(basics):
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(16, np.float32)
    basics.get_function("sum4")((1,), (16,), (x, out))
    np.testing.assert_array_equal(out, x.reshape(16, 4).sum(1))
    with pytest.raises(TypeError, match="16-byte aligned"):
        basics.get_function("sum4")((1,), (15,), (np.arange(65, dtype=np.float32)[1:], out))


@pytest.mark.parametrize("args, match", [
    ((np.zeros(4), np.zeros(4, np.float32), np.zeros(4, np.float32), np.int32(4)),
     r"vector_add: argument 0 'a' \(`const float\*`\) expects a float32 array.*got a float64 array"),
    ((np.zeros(4, np.float32),) * 3 + (4,), r"argument 3 'n'.*Python int 4.*int64.*np\.int32\(4\)"),
    ((np.zeros(4, np.float32),) * 3 + (np.int64(4),), r"argument 3 'n'.*expects np\.int32, got np\.int64"),
    ((np.zeros(8, np.float32)[::2],) + (np.zeros(4, np.float32),) * 2 + (np.int32(4),), "not C-contiguous"),
    ((np.zeros(4, np.float32),) * 2 + (np.int32(4),), "takes 4 arguments, got 3"),
    ((np.zeros(4, np.float32),) * 2 + (np.float32(1), np.int32(4)), "argument 2 'out'.*expects a NumPy array"),
])
def test_argument_type_checks(basics, args, match):
    with pytest.raises(TypeError, match=match):
        basics.get_function("vector_add")((1,), (4,), args)


def test_launch_configuration_checks(basics):
    x = np.zeros(4, np.float32)
    fn = basics.get_function("vector_add")
    with pytest.raises(ValueError, match="at most 1024"):
        fn((1,), (64, 32), (x, x, x, np.int32(0)))
    with pytest.raises(ValueError, match="grid.y=0"):
        fn((1, 0), (4,), (x, x, x, np.int32(0)))
    with pytest.raises(AttributeError, match="vector_add"):
        basics.get_function("no_such_kernel")


def test_compile_error_names_file_and_line():
    source = 'typedef float real_t;\n#line 1 "kernels/broken.cu"\nextern "C" __global__ void k(real_t* y) {\n' \
             '  y[threadIdx.x] = undefined_name;\n}\n'
    with pytest.raises(hostsim.CompileError, match=r"kernels/broken\.cu:2:.*undefined_name"):
        hostsim.compile(source, name="broken")


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_the_simulator_says_it_is_linux_only_on_macos_and_windows(monkeypatch, platform):
    """A Mac's g++ is clang building Mach-O, where the shared-memory section has no start and stop
    symbols: the simulator is refused by name (and `gpuconv info` lists no 'sim'), not left to fail
    in a compiler diagnostic at the first launch."""
    from gpuconv import cli
    from gpuconv.hostsim import _build
    monkeypatch.setattr(sys, "platform", platform)
    with pytest.raises(hostsim.CompileError, match=f"runs on Linux .*not on {platform}: use device 'cpu'"):
        _build.compiler()
    lines = cli.info_lines()
    assert any(line.startswith("sim (CUDA kernels on the host simulator): not usable - the host simulator runs "
                               "on Linux") for line in lines)
    assert any(line.startswith("devices: cpu;") for line in lines)


def test_build_cache_hit_without_recompile(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCONV_SIM_CACHE", str(tmp_path))
    source = 'extern "C" __global__ void fill(float* y) { y[threadIdx.x] = 7.0f; }\n// cache test\n'
    before = dict(hostsim.stats)
    first = hostsim.compile(source, name="cachetest")
    assert hostsim.stats["compiles"] == before["compiles"] + 1 and not first.cached
    assert hostsim.compile(source, name="cachetest") is first  # in-process memo
    hostsim._modules.clear()  # a new process: only the disk cache remains
    second = hostsim.compile(source, name="cachetest")
    assert second.cached and hostsim.stats["compiles"] == before["compiles"] + 1
    assert len(list(tmp_path.glob("cachetest-*.so"))) == 1
    y = np.zeros(3, np.float32)
    second.get_function("fill")(1, 3, (y,))
    np.testing.assert_array_equal(y, 7.0)


def test_a_checkout_elsewhere_finds_the_builds_of_the_same_code(tmp_path, monkeypatch):
    """The build cache keys on the simulator headers' text, not on where the package lives: a second
    checkout of the same code (a CI's fresh clone) loads the builds the first one made; a header
    whose text differs builds anew."""
    from gpuconv.hostsim import _build
    monkeypatch.setenv("GPUCONV_SIM_CACHE", str(tmp_path / "cache"))
    source = 'extern "C" __global__ void fill(float* y) { y[threadIdx.x] = 5.0f; }\n// checkout test\n'
    hostsim._modules.clear()
    before = hostsim.stats["compiles"]
    first = hostsim.compile(source, name="checkouttest")
    elsewhere = tmp_path / "clone" / "gpuconv" / "hostsim"
    elsewhere.mkdir(parents=True)
    for header in (_build.HEADER, _build.RUNTIME):
        shutil.copy(header, elsewhere / header.name)
    monkeypatch.setattr(_build, "HEADER", elsewhere / _build.HEADER.name)
    monkeypatch.setattr(_build, "RUNTIME", elsewhere / _build.RUNTIME.name)
    hostsim._modules.clear()
    second = hostsim.compile(source, name="checkouttest")
    assert second.cached and second.path == first.path and hostsim.stats["compiles"] == before + 1
    y = np.zeros(2, np.float32)
    second.get_function("fill")(1, 2, (y,))
    np.testing.assert_array_equal(y, 5.0)
    _build.RUNTIME.write_text(_build.RUNTIME.read_text() + "\n// another version\n")
    hostsim._modules.clear()
    third = hostsim.compile(source, name="checkouttest")
    assert not third.cached and third.path != first.path and hostsim.stats["compiles"] == before + 2


def test_processes_that_need_one_build_at_once_compile_it_once(tmp_path, monkeypatch):
    """Two builds of one source at once (pytest-xdist workers starting alike) run one compile: the
    second waits on the build's lock, then loads what the first built; no lock file stays."""
    import threading
    from gpuconv.hostsim import _build
    log = tmp_path / "compiles.log"
    cxx = tmp_path / "cxx"
    cxx.write_text(f'#!/bin/sh\ncase "$*" in *--version*) exec g++ "$@";; esac\n'
                   f'echo compile >> {log}\nsleep 1\nexec g++ "$@"\n')
    cxx.chmod(0o755)
    monkeypatch.setenv("GPUCONV_SIM_CXX", str(cxx))
    monkeypatch.setenv("GPUCONV_SIM_CACHE", str(tmp_path / "cache"))
    text = hostsim._source.rewrite('extern "C" __global__ void k(float* y) { y[0] = 1.0f; }\n// lock test\n')
    got = []
    threads = [threading.Thread(target=lambda: got.append(_build.build(text, "locktest", False))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.read_text().splitlines() == ["compile"]
    assert sorted(cached for _, cached in got) == [False, True] and got[0][0] == got[1][0]
    assert [f.name for f in (tmp_path / "cache").iterdir() if ".lock" in f.name] == []


def test_a_build_without_its_lock_fails_in_its_own_words(tmp_path, monkeypatch):
    """Where the build's lock cannot be had (no fcntl, an unwritable lock file), a compile error in
    the block was told as raised while handling that failure (its traceback led with it)."""
    from gpuconv.hostsim import _build
    monkeypatch.setitem(sys.modules, "fcntl", None)  # (an ImportError, as where there is no fcntl)
    with pytest.raises(hostsim.CompileError) as info:
        with _build._building(tmp_path, "nolock"):
            raise hostsim.CompileError("the compile's own error")
    assert info.value.__context__ is None


def test_build_cache_keeps_under_its_limit_deleting_the_least_recently_used(tmp_path, monkeypatch):
    """A developer's edits leave one build per version of each kernel file: past
    $GPUCONV_CACHE_LIMIT_MB the builds used longest ago go, down to three quarters of the limit;
    a hit counts as a use; builds used within the hour stay whatever the size; files that are not
    the cache's own stay whatever their age; 0 turns the limit off."""
    from gpuconv import _files
    from gpuconv.hostsim import _build
    monkeypatch.setenv("GPUCONV_SIM_CACHE", str(tmp_path))
    day = 86400
    now = time.time()
    old = []
    for i in range(8):  # 8 old builds of 1 MiB, used i days ago (the .cu kept beside each)
        so = tmp_path / f"kernels_conv2d.cu_float_-{i:020x}.so"
        so.write_bytes(b"\0" * (1 << 20))
        so.with_suffix(".cu").write_text("// source")
        for f in (so, so.with_suffix(".cu")):
            os.utime(f, (now - (i + 1) * day, now - (i + 1) * day))
        old.append(so)
    leftover = tmp_path / "kernels_relu.cu_float_-0123456789abcdef0123k3j_x9q2.so.tmp"  # a killed build's
    leftover.write_bytes(b"\0" * 100)
    os.utime(leftover, (now - 30 * day, now - 30 * day))
    theirs = tmp_path / "notes.txt"  # not the cache's: never deleted
    theirs.write_bytes(b"\0" * (1 << 20))
    os.utime(theirs, (now - 90 * day, now - 90 * day))
    assert all(_build.CACHE_FILES.match(f.name) for f in (*old, old[0].with_suffix(".cu"), leftover))
    assert not _build.CACHE_FILES.match(theirs.name)

    source = 'extern "C" __global__ void fill(float* y) { y[threadIdx.x] = 3.0f; }\n// prune test\n'
    hostsim._modules.clear()
    monkeypatch.setenv("GPUCONV_CACHE_LIMIT_MB", "6")
    new = hostsim.compile(source, name="prunetest")  # a miss: prunes after its build
    left = sorted(f.name for f in tmp_path.glob("kernels_conv2d*.so"))
    total = sum(f.stat().st_size for f in tmp_path.iterdir() if _build.CACHE_FILES.match(f.name))
    assert total <= 6 * (1 << 20) * 3 // 4
    assert left == sorted(f.name for f in old[:len(left)])  # the most recently used kept
    assert len(left) == 4 and not leftover.exists() and theirs.exists() and pathlib.Path(new.path).exists()

    # a hit is a use: the oldest build, used now, outlives newer ones at the next prune
    keep = old[len(left) - 1]
    hostsim._modules.clear()
    before = keep.stat().st_mtime
    _files.mark_used(keep)
    assert keep.stat().st_mtime > before
    monkeypatch.setenv("GPUCONV_CACHE_LIMIT_MB", "3")
    assert _files.prune_cache(tmp_path, _build.CACHE_FILES, _files.cache_limit()) >= 2 << 20
    assert keep.exists() and old[0].exists() and not old[1].exists() and not old[2].exists()

    # used within the hour: kept even past the limit; no limit with 0
    monkeypatch.setenv("GPUCONV_CACHE_LIMIT_MB", "1")
    assert _files.prune_cache(tmp_path, _build.CACHE_FILES, _files.cache_limit()) >= 1 << 20 and not old[0].exists()
    assert _files.prune_cache(tmp_path, _build.CACHE_FILES, _files.cache_limit()) == 0 and keep.exists()
    assert pathlib.Path(new.path).exists()
    os.utime(keep, (now - day, now - day))
    monkeypatch.setenv("GPUCONV_CACHE_LIMIT_MB", "0")
    assert _files.prune_cache(tmp_path, _build.CACHE_FILES, _files.cache_limit()) == 0 and keep.exists()
    monkeypatch.setenv("GPUCONV_CACHE_LIMIT_MB", "1")
    assert _files.prune_cache(tmp_path, _build.CACHE_FILES, _files.cache_limit()) >= 1 << 20 and not keep.exists()
    for bad in ("-1", "2GB", "1.5"):
        monkeypatch.setenv("GPUCONV_CACHE_LIMIT_MB", bad)
        with pytest.raises(ValueError, match="GPUCONV_CACHE_LIMIT_MB=.*whole number of MiB.*0 for no limit"):
            _files.cache_limit()
    # named before a build, not after one that then stays in the cache unnoticed
    hostsim._modules.clear()
    compiles = hostsim.stats["compiles"]
    with pytest.raises(ValueError, match="GPUCONV_CACHE_LIMIT_MB"):
        hostsim.compile(source.replace("prune test", "prune test 2"), name="prunetest")
    assert hostsim.stats["compiles"] == compiles


def test_build_cache_survives_what_shared_machines_do_to_it(tmp_path, monkeypatch):
    """Libraries readable by everyone (a shared cache: not mkstemp's 0600); a truncated one (a
    process killed while writing it elsewhere, a full disk) built again instead of failing every
    later run; a cache directory that cannot be used replaced by a temporary one, with a warning
    naming GPUCONV_SIM_CACHE; ``~`` in the variable expanded."""
    from gpuconv.hostsim import _build
    monkeypatch.setenv("GPUCONV_SIM_CACHE", str(tmp_path))
    source = 'extern "C" __global__ void fill(float* y) { y[threadIdx.x] = 5.0f; }\n// shared cache test\n'
    # built by another process (a library this one has loaded must not change under it)
    subprocess.run([sys.executable, "-c", f"from gpuconv import hostsim; hostsim.compile({source!r}, name='sharedtest')"],
                   check=True, env=dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1])))
    (so,) = tmp_path.glob("sharedtest-*.so")
    umask = os.umask(0)
    os.umask(umask)
    assert so.stat().st_mode & 0o777 == 0o777 & ~umask & ~0o002  # never writable by every user
    so.write_bytes(b"")  # truncated
    hostsim._modules.clear()
    mod = hostsim.compile(source, name="sharedtest")
    y = np.zeros(2, np.float32)
    mod.get_function("fill")(1, 2, (y,))
    np.testing.assert_array_equal(y, 5.0)
    assert so.stat().st_size > 0  # rebuilt in place
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("GPUCONV_SIM_CACHE", str(blocked / "cache"))
    monkeypatch.setattr(_build, "_fallback_warned", False)
    with pytest.warns(RuntimeWarning, match="cannot be used.*Set GPUCONV_SIM_CACHE to a writable directory"):
        where = _build.cache_dir()
    assert where.is_dir() and os.access(where, os.W_OK) and "gpuconv-hostsim" in where.name
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GPUCONV_SIM_CACHE", "~/simcache")
    assert _build.cache_dir() == tmp_path / "home" / "simcache"


def test_a_build_cache_on_a_full_disk_builds_in_a_private_temporary_directory(tmp_path, monkeypatch):
    """A cache that looks writable but whose disk is full (the source's write fails, or g++'s
    output does): the build goes to this user's private temporary directory, said once with the
    variable to set, and the next process finds it there; where that fails too, the error names
    the cache, the cause and the variable, not a raw OSError from inside the build."""
    import errno
    import tempfile
    from gpuconv import _files
    from gpuconv.hostsim import _build
    cache = tmp_path / "cache"
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("GPUCONV_SIM_CACHE", str(cache))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    spare = tmp_path / "tmp" / f"gpuconv-hostsim-{_files._uid() or 0}"
    full = {cache}
    real_write = _build.write_atomic

    def write_atomic(path, data, durable=False):
        if pathlib.Path(path).parent in full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(path, data, durable)

    monkeypatch.setattr(_build, "write_atomic", write_atomic)
    fill = 'extern "C" __global__ void fill(float* y) {{ y[threadIdx.x] = {}f; }}\n// full disk test\n'

    def run(value, name="fulltest"):
        hostsim._modules.clear()
        monkeypatch.setattr(_files, "_private_dirs", {})  # a new process
        monkeypatch.setattr(_build, "_fallback_warned", False)
        monkeypatch.setattr(_build, "_unwritable", {})
        y = np.zeros(2, np.float32)
        mod = hostsim.compile(fill.format(value), name=name)
        mod.get_function("fill")(1, 2, (y,))
        return y[0], mod
    with pytest.warns(RuntimeWarning, match=rf"build cache cannot be used \({re.escape(str(cache))}: No space left on "
                                            rf"device\); building in {re.escape(str(spare))} instead.*GPUCONV_SIM_CACHE"):
        assert run(3.0)[0] == 3.0
    assert len(list(spare.glob("fulltest-*.so"))) == 1 and not list(cache.glob("*.so"))
    before = hostsim.stats["compiles"]
    assert run(3.0)[1].cached and hostsim.stats["compiles"] == before  # the next process finds it there
    # g++ cannot write its output (the source fitted; the library does not)
    full.clear()
    script = tmp_path / "gxx"
    script.write_text(f"#!/bin/sh\ncase \"$*\" in *{cache}/*) echo 'ld: final link failed: No space left on device' >&2; "
                      "exit 1;; esac\nexec g++ \"$@\"\n")
    script.chmod(0o755)
    monkeypatch.setenv("GPUCONV_SIM_CXX", str(script))
    with pytest.warns(RuntimeWarning, match=rf"\({re.escape(str(cache))}: No space left on device \(g\+\+: ld: final link"):
        assert run(4.0)[0] == 4.0
    # and the temporary directory's disk is full as well
    full.update({cache, spare})
    with pytest.warns(RuntimeWarning), pytest.raises(OSError) as info:
        run(5.0)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == (f"the host simulator could not write its build of 'fulltest' into {cache} (No space "
                               f"left on device), nor into {spare}: free space on its disk, or set GPUCONV_SIM_CACHE "
                               "to a directory with room")


def test_a_library_another_user_could_have_planted_is_built_again_not_loaded(tmp_path, monkeypatch):
    """A cached library is code the process runs: one that every user can write, or a link, or
    (in a directory every user writes to) another user's, is compiled again instead of loaded; a
    cache directory every user can replace files in is not used at all."""
    from gpuconv import _files
    from gpuconv.hostsim import _build
    fill = 'extern "C" __global__ void fill(float* y) {{ y[threadIdx.x] = {}f; }}\n// planted test\n'
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("GPUCONV_SIM_CACHE", str(elsewhere))
    hostsim.compile(fill.format(9.0), name="plantedtest")
    (evil,) = elsewhere.glob("plantedtest-*.so")
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPUCONV_SIM_CACHE", str(cache))

    def run():
        hostsim._modules.clear()
        y = np.zeros(2, np.float32)
        hostsim.compile(fill.format(5.0), name="plantedtest").get_function("fill")(1, 2, (y,))
        return y[0]
    assert run() == 5.0
    (so,) = cache.glob("plantedtest-*.so")
    mine = so.with_name(f"{so.stem}-u{os.getuid()}.so")
    for plant in ("writable", "link"):
        so.unlink()
        if plant == "writable":
            shutil.copyfile(evil, so)
            so.chmod(0o666)
        else:
            so.symlink_to(evil)
        before = hostsim.stats["compiles"]
        assert run() == 5.0 and hostsim.stats["compiles"] == before + 1, plant  # built again, not 9.0
        assert _files.trusted_binary(mine) and not _files.trusted_binary(so)  # ours beside it, under our name
        before = hostsim.stats["compiles"]
        assert run() == 5.0 and hostsim.stats["compiles"] == before  # and found there by the next process
        mine.unlink()
    so.unlink()
    assert run() == 5.0 and _files.trusted_binary(so)
    cache.chmod(0o1777)  # a sticky shared cache: this user's libraries are loaded, another user's not
    assert _files.trusted_binary(so)
    if os.getuid() == 0:  # the library and the directory become another user's
        os.chown(so, 4242, -1)
        os.chown(cache, 4242, -1)
    else:  # this process becomes another user
        monkeypatch.setattr(_files, "_uid", lambda: os.getuid() + 4242)
    assert not _files.trusted_binary(so)
    cache.chmod(0o755)  # a directory only its owner writes to: the owner's libraries
    assert _files.trusted_binary(so)
    monkeypatch.undo()
    monkeypatch.setenv("GPUCONV_SIM_CACHE", str(cache))
    cache.chmod(0o777)
    monkeypatch.setattr(_build, "_fallback_warned", False)
    with pytest.warns(RuntimeWarning, match=r"writable by every user, who could replace the binaries it holds \(chmod o-w\)"):
        assert _build.cache_dir() != cache
    cache.chmod(0o755)


def test_two_users_of_a_sticky_shared_cache_each_build_their_own(tmp_path, monkeypatch):
    """In a sticky cache every user writes to (as /tmp), another user's library and source under
    the shared name are left alone: this user's build goes beside them, under a name of its own,
    and is found there by the next process."""
    from gpuconv import _files
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o1777)
    monkeypatch.setenv("GPUCONV_SIM_CACHE", str(cache))
    source = 'extern "C" __global__ void fill(float* y) { y[threadIdx.x] = 3.0f; }\n// sticky test\n'
    hostsim.compile(source, name="stickytest")  # the other user's build
    (theirs,) = cache.glob("stickytest-*.so")
    me = os.getuid()
    for f in cache.iterdir():  # another user's (as root), else one every user could have changed
        os.chown(f, 4242, -1) if me == 0 else f.chmod(0o666)
    assert not _files.trusted_binary(theirs)
    hostsim._modules.clear()
    before = hostsim.stats["compiles"]
    y = np.zeros(2, np.float32)
    hostsim.compile(source, name="stickytest").get_function("fill")(1, 2, (y,))
    assert (y == 3.0).all() and hostsim.stats["compiles"] == before + 1
    mine = theirs.with_name(f"{theirs.stem}-u{me}.so")
    assert mine.is_file() and mine.with_suffix(".cu").is_file()
    hostsim._modules.clear()
    hostsim.compile(source, name="stickytest")
    assert hostsim.stats["compiles"] == before + 1  # found under its own name


def test_sanitized_build_refuses_plain_process():
    with pytest.raises(hostsim.SimulatorError, match="run_sanitized"):
        hostsim.compile('extern "C" __global__ void k(float* y) {}', sanitize=True)


SANITIZED_SNIPPET = textwrap.dedent("""
    import numpy as np, pathlib
    from gpuconv import hostsim
    text = pathlib.Path({path!r}).read_text()
    mod = hostsim.compile('typedef float real_t;\\n#line 1 "tests/hostsim_kernels/basics.cu"\\n' + text, "basics")
    assert mod.sanitize
    x = np.ones(256, np.float32); out = np.zeros(1, np.float32)
    mod.get_function("block_sum")((1,), (256,), (x, out, np.int32(256)))   # clean kernel: no report
    assert out[0] == 256, out
    print("clean ok", flush=True)
    y = np.zeros(100, np.float32)
    mod.get_function("{kernel}")((2,), (64,), (y, np.int32(100)){extra})
    print("not reached", flush=True)
""")


@pytest.mark.parametrize("kernel, extra, report, where", [
    ("write_past_end", "", "heap-buffer-overflow", "block (1,0,0) thread (36,0,0)"),
    ("static_shared_overrun", "", "global-buffer-overflow", "block (0,0,0) thread (63,0,0)"),
    ("static_index_overrun", "", "index 64 out of bounds for type 'float [64]'", "block (0,0,0) thread (63,0,0)"),
    ("dynamic_shared_overrun", ", shared_mem=64 * 4", "use-after-poison", "block (0,0,0) thread (63,0,0)"),
])
def test_sanitizer_finds_out_of_bounds_with_block_and_thread(kernel, extra, report, where):
    code = SANITIZED_SNIPPET.format(path=str(KERNELS / "basics.cu"), kernel=kernel, extra=extra)
    res = hostsim.run_sanitized(code, timeout=300)
    assert res.returncode != 0, res.stderr[-3000:]
    assert "clean ok" in res.stdout and "not reached" not in res.stdout
    assert report in res.stderr, res.stderr[-3000:]
    assert res.location == f"kernel {kernel}, {where}", res.stderr[-3000:]
    assert re.search(rf"#\d 0x[0-9a-f]+ in {kernel} tests/hostsim_kernels/basics\.cu:\d+", res.stderr), \
        res.stderr[-3000:]  # the sanitized build's line tables (-g1): its frame names the source line


def test_warp_collective_divergence_raises(basics):
    with pytest.raises(hostsim.BarrierDivergence,
                       match=r"warp divergence.*\[16 threads\] wait in a warp collective.*\[16 threads\] wait at __sync"):
        basics.get_function("warp_divergent")((1,), (32,), (np.zeros(32, np.float32),))


def test_shuffle_from_exited_lane_reads_poison(basics):
    x = np.ones(80, np.float32)
    out = np.zeros(3, np.float32)
    basics.get_function("warp_sum_early_exit")((1,), (96,), (x, out, np.int32(80)))
    np.testing.assert_array_equal(out[:2], 32.0)  # full warps are exact
    assert np.isnan(out[2])                       # lanes 80..95 exited: lane 64 sums poison


def test_half_warp_mask_and_activemask(basics):
    y = np.zeros(64, np.int32)
    basics.get_function("half_warp_shuffle")((1,), (64,), (y,))
    t = np.arange(64)
    np.testing.assert_array_equal(y, np.where(t % 32 < 16, t ^ 1, t) + 11000)


def test_syncthreads_count_and_or(basics):
    y = np.zeros(100, np.int32)
    basics.get_function("barrier_reductions")((1,), (100,), (y,))
    np.testing.assert_array_equal(y, 34 * 1000 + 100 + 10 + 0)


def test_trap_names_block_and_thread(basics):
    with pytest.raises(hostsim.SimulatorError, match=r"traps, block \(1,0,0\) thread \(3,0,0\) called __trap"):
        basics.get_function("traps")((2,), (8,), (np.zeros(8, np.float32),))


def test_template_kernels_with_shared_memory(basics):
    for dtype, name in ((np.float32, "scale_reverse_f32"), (np.float64, "scale_reverse_f64")):
        y = np.arange(32, dtype=dtype)
        basics.get_function(name)((1,), (32,), (y, dtype(2)))
        np.testing.assert_array_equal(y, 2 * np.arange(32)[::-1])


def test_signature_parser_resolves_typedefs(basics):
    decl = basics.kernels["vector_add"]
    assert [(p.name, p.declared) for p in decl.params] == [
        ("a", "const float*"), ("b", "const float*"), ("out", "float*"), ("n", "int")]
    assert [str(t) for t in basics.get_function("sum4").arg_types] == ["const float4*", "float*"]


def test_fiber_stack_overflow_is_named():
    # A plain subprocess: the guard page faults, the simulator names the thread and the fix.
    code = textwrap.dedent(f"""
        import numpy as np, pathlib
        from gpuconv import hostsim
        text = pathlib.Path({str(KERNELS / 'basics.cu')!r}).read_text()
        mod = hostsim.compile('typedef float real_t;\\n' + text, "basics")
        y = np.zeros(4, np.int32)
        mod.get_function("stack_hog")((1,), (4,), (y, np.int32(3)))
        print("shallow ok", y.tolist(), flush=True)
        mod.get_function("stack_hog")((1,), (4,), (y, np.int32(200)))
        print("not reached", flush=True)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])})
    assert res.returncode != 0 and "shallow ok [6, 6, 6, 6]" in res.stdout and "not reached" not in res.stdout
    assert "kernel stack_hog, block (0,0,0) thread (0,0,0)" in res.stderr, res.stderr
    assert "fiber stack overflow" in res.stderr and "GPUCONV_SIM_STACK" in res.stderr


def test_warp_mask_without_own_lane_raises(basics):
    with pytest.raises(hostsim.BarrierDivergence, match=r"lane 1\) calls a warp collective with mask 0x00000001"):
        basics.get_function("mask_excludes_self")((1,), (32,), (np.zeros(32, np.float32),))


def test_compiler_options_reach_the_build(basics):
    text = (KERNELS / "basics.cu").read_text()
    mod = hostsim.compile("typedef float real_t;\n" + text, name="basics", options=("-DGPUCONV_TEST_VALUE=42",))
    assert mod is not basics and mod.path != basics.path
    y = np.zeros(2, np.int32)
    mod.get_function("option_value")(1, 2, (y,))
    np.testing.assert_array_equal(y, 42)


def test_fixture_kernels_also_compile_with_nvrtc():
    # The simulator must not accept CUDA that NVRTC rejects; the fixtures are real CUDA C.
    nvrtc_or_skip()
    nvrtc = kernels.nvrtc_binding()
    source = "typedef float real_t;\n" + (KERNELS / "basics.cu").read_text()
    prog = nvrtc.createProgram(source, "basics.cu", [], [])
    try:
        nvrtc.compileProgram(prog, ["--gpu-architecture=compute_80"])
    except nvrtc.NVRTCError as err:  # pragma: no cover - the message is the point
        pytest.fail(f"NVRTC rejects tests/hostsim_kernels/basics.cu: {err}\n{nvrtc.getProgramLog(prog)}")


def test_portable_ucontext_switch_gives_same_results(basics):
    # Off x86-64 the fibers switch with swapcontext; the same kernels must agree bit for bit.
    text = (KERNELS / "basics.cu").read_text()
    mod = hostsim.compile("typedef float real_t;\n" + text, name="basics", options=("-DGPUCONV_SIM_UCONTEXT",))
    x = np.random.default_rng(5).standard_normal(700).astype(np.float32)
    for m in (basics, mod):
        partial, total = np.zeros(3, np.float32), np.zeros(1, np.float32)
        m.get_function("block_sum")((3,), (256,), (x, partial, np.int32(x.size)))
        m.get_function("warp_sum")((3,), (256,), (x, total, np.int32(x.size)))
        if m is basics:
            expect = partial.copy(), total.copy()
    np.testing.assert_array_equal(partial, expect[0])
    np.testing.assert_array_equal(total, expect[1])
    with pytest.raises(hostsim.BarrierDivergence):
        mod.get_function("divergent_barrier")((1,), (32,), (np.zeros(32, np.float32),))


def _fma_options():
    """The g++ options that make the build's target fuse a*b + c into one FMA instruction: none
    on aarch64 (FMA is in its baseline), -mfma on an x86-64 CPU that has it; None elsewhere."""
    import platform
    machine = platform.machine()
    if machine in ("aarch64", "arm64"):
        return ()
    if machine in ("x86_64", "AMD64"):
        try:
            flags = pathlib.Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
        return ("-mfma",) if " fma " in flags.replace("\n", " ") else None
    return None


def test_mul_rn_rounds_its_product_on_a_target_with_fma():
    """Kernels write mul_rn(a, b) + c where the reference rounds the product on its own (NVRTC
    contracts a plain a*b + c into an FMA). The simulator's __fmul_rn is a plain product, so g++
    must not contract it either: with FMA in the target (aarch64's baseline, or -mfma) and GCC's
    default -ffp-contract=fast for C++, w - __fmul_rn(lr, g) became one fnmadd, and every
    bit-for-bit test of such a kernel (SGD's, batchnorm's) failed there."""
    options = _fma_options()
    if options is None:
        pytest.skip("no FMA instruction on this host CPU to contract into")
    src = textwrap.dedent("""
        extern "C" __global__ void sub_product(const float* w, const float* a, const float* b, float* out) {
            out[threadIdx.x] = w[threadIdx.x] - __fmul_rn(a[threadIdx.x], b[threadIdx.x]);
        }
    """)
    mod = hostsim.compile(src, name="sub_product", options=options)
    a = np.array([1 + 2.0 ** -12], np.float32)  # a * a = 1 + 2^-11 + 2^-24: a tie, rounds to 1 + 2^-11
    w, out = (a * a).astype(np.float32), np.full(1, np.nan, np.float32)
    mod.get_function("sub_product")((1,), (1,), (w, a, a, out))
    assert out[0] == 0.0, f"w - mul_rn(a, a) = {out[0]!r}: the product was fused into the subtraction"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_waits_for_another_threads_launch_and_the_child_launches():
    """A process forked while another thread is inside a launch (a training thread, a fork-based
    worker pool started beside it) used to find the launch lock taken for good: its first launch
    hung. The fork now waits for that launch to end."""
    import threading
    source = ('extern "C" __global__ void wait_flag(int* flag) {\n'
              '  volatile int* f = flag;\n  f[1] = 1;\n  while (f[0] == 0) {}\n}\n// fork test\n')
    wait_flag = hostsim.compile(source, name="forktest").get_function("wait_flag")
    flag = np.zeros(2, np.int32)
    busy = threading.Thread(target=wait_flag, args=(1, 1, (flag,)))
    busy.start()
    deadline = time.monotonic() + 30
    while flag[1] == 0 and time.monotonic() < deadline:  # the launch is in flight
        time.sleep(0.001)
    release = threading.Timer(0.2, flag.__setitem__, (0, 1))  # the launch ends, unless the fork hangs first
    release.start()

    def child():
        mine = np.array([1, 0], np.int32)
        wait_flag(1, 1, (mine,))
        return 0 if mine[1] == 1 else 3

    try:
        assert forked_exit(child) == "exit 0"
    finally:
        flag[0] = 1
        busy.join()
        release.join()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_during_another_threads_compile_compiles():
    """hostsim.compile holds the module table's lock through g++ (seconds); a process forked
    meanwhile (by another thread) used to find it taken for good and hang at its first compile,
    a cached module's included."""
    source = 'extern "C" __global__ void fill(float* y) { y[threadIdx.x] = 2.0f; }\n// fork compile test\n'

    def child():
        y = np.zeros(2, np.float32)
        hostsim.compile(source, name="forkcompile").get_function("fill")(1, 2, (y,))
        return 0 if y.tolist() == [2.0, 2.0] else 3

    with hostsim._modules_lock:  # as a compiling thread holds it at the fork
        assert forked_exit(child) == "exit 0"


def test_threads_asking_for_one_kernel_at_once_read_its_signature_one_at_a_time(monkeypatch):
    """A kernel's signature is written into a static buffer at its first call; threads asking for
    the kernel at once (a registry's first use from several threads) read it concurrently, and one
    could take the other's half-written text: 'conv2d_forward_v2(const ) takes 1 arguments, got
    19' at every later launch. The signature is read once, by one thread at a time."""
    import ctypes
    import threading
    source = 'extern "C" __global__ void fill(float* y, int n) { y[threadIdx.x] = 4.0f; }\n// signature test\n'
    mod = hostsim.compile(source, name="sigtest")
    real, active, most = mod._lib, [0], [0]

    class SlowSignatures:  # the signature call made slow, as a long parameter list makes it
        def __getattr__(self, name):
            fn = getattr(real, name)
            if not name.startswith("gpuconv_sim_sig__"):
                return fn

            def sig():
                active[0] += 1
                most[0] = max(most[0], active[0])
                time.sleep(0.05)
                fn.restype = ctypes.c_char_p
                active[0] -= 1
                return fn()
            return sig

    monkeypatch.setattr(mod, "_lib", SlowSignatures())
    got = []
    threads = [threading.Thread(target=lambda: got.append(mod.get_function("fill"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and len(got) == 4 and all(fn is got[0] for fn in got)
    assert [str(t) for t in got[0].arg_types] == ["float*", "int"]


def test_threads_launching_at_once_run_one_launch_at_a_time(monkeypatch):
    """A launch runs on the module's process-global fiber scheduler and shared-memory section: two
    threads inside launches at once (a thread pool predicting on 'sim') crash each other's fibers.
    Launches from several threads take turns, and each gets its own result."""
    import threading
    source = 'extern "C" __global__ void scale(float* y, float a) { y[threadIdx.x] *= a; }\n// turns test\n'
    mod = hostsim.compile(source, name="turnstest")
    fn = mod.get_function("scale")
    real, active, most = mod._lib, [0], [0]

    class SlowLaunches:  # a launch made long enough for the threads to meet inside it
        def __getattr__(self, name):
            if name != "gpuconv_sim_launch":
                return getattr(real, name)

            def launch(*args):
                active[0] += 1
                most[0] = max(most[0], active[0])
                time.sleep(0.02)
                status = real.gpuconv_sim_launch(*args)
                active[0] -= 1
                return status
            return launch

    monkeypatch.setattr(mod, "_lib", SlowLaunches())
    start = threading.Barrier(4)
    ys = [np.full(8, i + 1, np.float32) for i in range(4)]

    def work(i):
        start.wait()
        for _ in range(2):
            fn(1, 8, (ys[i], np.float32(3)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1
    for i, y in enumerate(ys):
        np.testing.assert_array_equal(y, np.full(8, 9.0 * (i + 1), np.float32))
