"""The GPU path: binaries compiled by NVRTC, kept in the disk cache (:func:`cuda_cache_dir`), loaded
with CuPy; :func:`precompile` fills the cache ahead of a run."""
from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import re
import tempfile
import time
import warnings

import numpy as np

from .. import _env, _files, backend, precision  # backend: read at each call (tests fake CuPy by patching it)
from .._files import make_dirs, private_temp_dir, trusted_binary, untrusted_cache_dir, write_atomic
from . import _capability, _nvrtc, _sources


def cuda_cache_dir() -> pathlib.Path:
    """Where compiled kernel binaries are kept: $GPUCONV_CUDA_CACHE, else ~/.cache/gpuconv/cuda (a
    directory of this user's under the temporary one where there is no home directory)."""
    global _cache_dir_warned
    env = os.environ.get("GPUCONV_CUDA_CACHE")
    try:
        path = pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "gpuconv" / "cuda"
    except RuntimeError:  # no home directory (an arbitrary container uid)
        return private_temp_dir(_SPARE)
    problem = untrusted_cache_dir(path)
    if problem is None:
        return path
    fallback = private_temp_dir(_SPARE)
    if not _cache_dir_warned:
        _cache_dir_warned = True
        warnings.warn(f"gpuconv: the CUDA kernel cache cannot be trusted ({problem}); using {fallback} instead",
                      RuntimeWarning, stacklevel=3)
    return fallback


_cache_dir_warned = False
# The cache's own files: <op>-<build>-<arch>-<key>.cubin/.ptx, and write_atomic's leftovers of them.
CACHE_FILES = re.compile(r"^\.?[\w.+-]+-[0-9a-f]{24}\.(cubin|ptx)(\.\w+\.tmp)?$")


_cache_warned = False


def _store(path: pathlib.Path, binary: bytes) -> pathlib.Path | None:
    """Put ``binary`` in the cache at ``path``; where the cache is not writable (a read-only home, a
    full disk), in this user's private directory under the temporary one (which later processes
    look in too), with a warning (once). Returns where it was stored, None where neither took it."""
    global _cache_warned
    try:
        make_dirs(path.parent)
        return write_atomic(path, binary)
    except OSError as exc:
        spare, stored = private_temp_dir(_SPARE), None
        if spare != path.parent:
            with contextlib.suppress(OSError):
                stored = write_atomic(spare / path.name, binary)
        if not _cache_warned:
            _cache_warned = True
            instead = (f"they are kept in {spare} instead (until the system cleans it)" if stored is not None
                       else "kernels are compiled again in every process")
            warnings.warn(f"gpuconv: the CUDA kernel cache {path.parent} is not writable ({exc}); {instead}. "
                          "Set GPUCONV_CUDA_CACHE to a writable directory", RuntimeWarning, stacklevel=2)
        return stored


_SPARE = "gpuconv-cuda"  # the private temporary directory of the kernels the cache could not take


def _cache_candidates(name: str) -> list:
    """Where the cached binary ``name`` may be: the cache, then the spare directory where a process
    put what the cache refused (only where one was made)."""
    cache = cuda_cache_dir()
    spare = private_temp_dir(_SPARE, create=False)
    return [cache / name] + ([spare / name] if spare is not None and spare != cache else [])


def _whole_binary(path: pathlib.Path) -> bool:
    """False for a cached CUBIN that is not a whole ELF image (it is compiled and stored again)."""
    if path.suffix != ".cubin":
        return True
    try:
        _nvrtc.elf_image_end(path.read_bytes())
        return True
    except (OSError, ValueError):
        return False


def _cached_binary(src, op_file, dt, arch, where="", tf32=False):
    """``(path, binary)``: the binary of ``src`` for ``arch`` in the disk cache (binary None: it was
    there already), or compiled now (path None when the cache is unwritable)."""
    nvrtc = _nvrtc.nvrtc_binding()
    key = hashlib.sha256("\0".join(["gpuconv-cuda-2", src, *_nvrtc.NVRTC_OPTIONS, arch, _nvrtc._nvrtc_version(nvrtc)])
                         .encode()).hexdigest()
    label = _sources._label(dt, tf32).replace("+", "-")
    candidates = _cache_candidates(f"{op_file}-{label}-{arch}-{key[:24]}.{'cubin' if arch.startswith('sm_') else 'ptx'}")
    for path in candidates:
        if trusted_binary(path) and _whole_binary(path):  # (one another user could have put there is compiled again)
            _files.mark_used(path)
            return path, None
    limit = _files.cache_limit()  # (a bad $GPUCONV_CACHE_LIMIT_MB is an error before the compile, not after)
    binary = _nvrtc.nvrtc_compile(src, op_file, dt, arch, where, tf32)
    path = _store(candidates[0], binary)
    if path is None:
        return None, binary
    _files.prune_cache(path.parent, CACHE_FILES, limit)
    return path, binary


@contextlib.contextmanager
def _binary_file(src, op_file, dt, arch, device, tf32=False):
    """The path of the binary of ``src`` for ``arch``, valid inside the block: from the disk cache,
    compiled into it on a miss, or (cache unwritable) compiled into a directory of its own that is
    removed once the block has loaded it."""
    path, binary = _cached_binary(src, op_file, dt, arch, f", device {device}", tf32)
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="gpuconv-cuda-") as tmp:
        path = pathlib.Path(tmp) / f"{op_file}.{'cubin' if arch.startswith('sm_') else 'ptx'}"
        path.write_bytes(binary)
        yield path


def _file_arch(op_file, arch) -> str:
    """What ``kernels/<op_file>.cu`` is built for where the others build for ``arch``: sm_90a
    for the :data:`ARCH_SPECIFIC` files on Hopper (wgmma exists only there), else ``arch``. With
    ``GPUCONV_WGMMA=0`` (the tiles off: :func:`wgmma_available`) they keep the portable sm_90
    build, which compiles no wgmma: a GPU, driver or NVRTC where the sm_90a build fails to compile
    or load still runs every other tensor-core kernel of those files."""
    wgmma = op_file in _sources.ARCH_SPECIFIC and _env.flag("GPUCONV_WGMMA", default=True)
    return "sm_90a" if arch == "sm_90" and wgmma else arch


def _device_arch(op_file, device) -> str:
    """What ``kernels/<op_file>.cu`` is built for on GPU ``device`` (:func:`nvrtc_arch`)."""
    cp = backend.require_cupy()
    return _file_arch(op_file, _nvrtc.nvrtc_arch(cp.cuda.Device(device).compute_capability, device))


def _compile_cuda(src, op_file, dt, device, tf32=False):
    cp = backend.require_cupy()
    arch = _device_arch(op_file, device)
    with _binary_file(src, op_file, dt, arch, device, tf32) as path, cp.cuda.Device(device):
        mod = cp.RawModule(path=str(path))
        try:
            mod.compile()  # load now: a driver that rejects the binary says so here, not at first launch
        except Exception as exc:  # CUDADriverError, e.g. PTX newer than the driver
            raise _sources.KernelCompileError(
                f"kernels/{op_file}.cu ({_sources._label(dt, tf32)}, {arch}) compiled, but device {device} cannot "
                f"load {path} ({type(exc).__name__}: {exc}): update the NVIDIA driver, or delete the file to rebuild "
                "it") from exc
    return mod


def precompile(device: int | None = None, *, arch: str | None = None, files=_sources.KERNEL_FILES, dtypes=None,
               tf32: bool = True, jobs: int | None = None):
    """Compile the builds of ``files`` for ``dtypes`` (default: all four; with ``tf32``, float32's
    TF32 build too for :data:`TF32_FILES`) for GPU ``device`` (default: the current one), or for
    ``arch`` ('sm_90': no GPU needed), into the disk cache (:func:`cuda_cache_dir`), ``jobs`` at a
    time (default: one per CPU core; NVRTC releases the GIL): no launch later waits for a compile,
    which otherwise happens module by module at first use (some 10 s each for conv2d_tc's
    tensor-core builds). The :data:`TENSOR_CORE_FILES` build only where the GPU or arch runs
    them: from sm_75 their float16 and trapping (float32, float64) builds, from sm_80 all
    (nothing launches the others there, and mma.cuh's sm_75 build has no bfloat16 or TF32 form). Returns a record per build, ``{"file", "build", "arch",
    "seconds", "cached", "stored"}`` (stored: in the disk cache now, not in the temporary spare of an unwritable one), in ``files``' order; raises the first compile error, after the other
    builds finish."""
    import concurrent.futures
    unknown = sorted(set(files) - set(_sources.KERNEL_FILES))
    if unknown:
        raise ValueError(f"precompile: no kernel files {unknown}; they are {', '.join(_sources.KERNEL_FILES)}")
    wanted = set(_sources._DTYPES) if dtypes is None else {np.dtype(d) for d in dtypes}
    if arch is None:
        device = backend.require_cupy().cuda.Device(device).id
        cc = _capability._compute_capability(device)
    else:
        cc = _capability.arch_capability(arch)
        nvrtc = _nvrtc.nvrtc_binding()
        if cc < min(int(a) for a in nvrtc.getSupportedArchs()):  # (a raw "invalid --gpu-architecture" otherwise)
            raise _nvrtc._too_old_for_nvrtc(
                f"precompile(arch={arch!r}) asks for compute capability {cc // 10}.{cc % 10}", cc)
    if cc < min(_capability.TENSOR_CORE_MIN_CC.values()):  # never launched there (and mma.sync does not build for it)
        files = tuple(f for f in files if f not in _capability.TENSOR_CORE_FILES)
    archs = {f: _device_arch(f, device) if arch is None else _file_arch(f, arch) for f in files}

    def runs(f, dt, t):  # a tensor-core file's build of a format this GPU lacks: never launched, nor built
        low = t or dt in precision.LOW_PRECISION
        return f not in _capability.TENSOR_CORE_FILES or not low or cc >= _capability.tensor_core_min_cc(dt, t)

    builds = [(f, dt, t) for f in files for dt in _sources._DTYPES if dt in wanted
              for t in ((False, True) if tf32 and dt == precision.float32 and f in _sources.TF32_FILES else (False,))
              if runs(f, dt, t)]

    def one(build):
        f, dt, tf = build
        start = time.perf_counter()
        path, binary = _cached_binary(_sources.build_source(f, dt, tf), f, dt, archs[f], "", tf)
        return {"file": f, "build": _sources._label(dt, tf), "arch": archs[f], "seconds": time.perf_counter() - start,
                "cached": binary is None, "stored": path is not None and path.parent == cuda_cache_dir()}

    with concurrent.futures.ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
        futures = [pool.submit(one, b) for b in builds]
        concurrent.futures.wait(futures)
    return [fut.result() for fut in futures]
