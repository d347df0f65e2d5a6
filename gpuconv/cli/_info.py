"""``gpuconv info`` (versions, devices, data, telemetry) and ``gpuconv precompile`` (every kernel build
for a GPU, compiled ahead; ``precompile_for`` does it for one run's precision)."""
from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from . import _output


def _version(dist):
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def info_lines() -> list[str]:
    import gpuconv
    from .. import backend
    from ..monitor import format_snapshot, query_all
    lines = [f"gpuconv {gpuconv.__version__} ({Path(gpuconv.__file__).parent})",
             f"python {platform.python_version()} ({sys.executable}) on {platform.platform()}",
             f"numpy {np.__version__}"]
    cp = backend.cupy_module()
    if cp is not None:
        lines.append(f"cupy {cp.__version__}")
    else:
        lines.append(f"cupy: not available ({backend._import_cupy()[1]})")
    for dist in ("tqdm", "nvidia-ml-py"):
        lines.append(f"{dist} {_version(dist) or 'not installed'}")
    lines.append(f"CUDA: {'works' if backend.cuda_available() else 'not usable'} - {backend.cuda_status()}")
    if backend.cuda_available():
        for i in range(cp.cuda.runtime.getDeviceCount()):
            props = cp.cuda.runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            lines.append(f"  cuda:{i} {name}, {props['totalGlobalMem'] / 2**30:.1f} GiB, "
                         f"compute {props['major']}.{props['minor']}")
    from ..hostsim._build import CompileError, compiler
    try:
        cxx = compiler()
        sim = f"{cxx} at {shutil.which(cxx)}"
    except CompileError as exc:
        cxx, sim = None, f"not usable - {exc}"
    lines.append(f"sim (CUDA kernels on the host simulator): {sim}")
    try:
        default = f"default {backend.get_default_device()} (GPUCONV_DEVICE={os.environ.get('GPUCONV_DEVICE', 'unset')})"
    except (RuntimeError, ValueError) as exc:  # $GPUCONV_DEVICE names no device usable here: info says why, not fails
        default = f"no default: {exc}"
    lines.append(f"devices: cpu{', sim' if cxx else ''}{', cuda' if backend.cuda_available() else ''}; {default}; "
                 f"'auto' means {backend.Device('auto')}")
    from ..amp import resolve_precision
    lines.append(f"precision 'auto' (the speed recipes' default) means {resolve_precision('auto', 'auto')} on "
                 f"{backend.Device('auto')}")
    gpus, why = query_all()
    if gpus:
        lines += [f"  NVML gpu {g['index']}: {format_snapshot(g)}" for g in gpus]
    else:
        lines.append(f"telemetry: {why}")
    try:
        from ..data import default_cache_dir, find_data_dir
        lines.append(f"CIFAR-10 data: {find_data_dir()}")
    except Exception as exc:
        # the one place searched: $GPUCONV_DATA when set (a wrong one is the usual cause), else the cache
        env = os.environ.get("GPUCONV_DATA")
        try:
            where = f"$GPUCONV_DATA ({env})" if env else str(default_cache_dir())
        except Exception:  # noqa: BLE001  (no home directory)
            where = "the cache (no home directory)"
        lines.append(f"CIFAR-10 data: none found yet in {where} ({type(exc).__name__}); `gpuconv train` downloads "
                     "it there, or pass --data DIR / set GPUCONV_DATA to the data")
    return lines


def cmd_info(args) -> int:
    print("\n".join(info_lines()))
    return 0


def precompile_for(device: int, precision_name: str):
    """The kernel builds a run in ``precision_name`` launches, compiled for GPU ``device`` at once,
    one per CPU core, before its first step: a machine's first run compiles them (some 10 s each
    for the tensor-core convolutions, one after the other when left to their first use), later
    runs find them in the disk cache."""
    from .. import amp, kernels
    start = time.perf_counter()
    try:
        records = kernels.precompile(device, dtypes=(amp.compute_dtype(precision_name), np.float32),
                                     tf32=precision_name == "tf32")
    except Exception as exc:  # noqa: BLE001  (a build the run may never launch: its first use will say)
        _output._say(f"note: compiling the kernels ahead failed ({type(exc).__name__}: {str(exc)[:300]}); each "
                     "compiles at its first use instead")
        return
    built = sum(not r["cached"] for r in records)
    if built:
        _output._say(f"compiled {built} kernel builds for this GPU in {time.perf_counter() - start:.1f} s (once: "
                     f"they are kept in {kernels.cuda_cache_dir()})")


def cmd_precompile(args) -> int:
    from .. import backend, kernels
    if args.arch is None and not backend.cuda_available():
        _output._say(f"gpuconv precompile: no GPU to compile for ({backend.cuda_status()}); name its target with "
                     "--arch (sm_90 for an H100/H200, sm_80 for an A100)")
        return 1
    # (a first run compiles for minutes and lists the builds at the end: said now, it is not taken for a hang)
    _output._say(f"compiling the kernel builds for {args.arch or f'GPU {args.device or 0}'}, "
                 f"{args.jobs or os.cpu_count() or 1} at a time (minutes the first time, seconds once they are "
                 "cached); each is listed when all are done")
    start = time.perf_counter()
    try:
        records = kernels.precompile(args.device, arch=args.arch, jobs=args.jobs)
    except ImportError as exc:  # --arch without a GPU: NVRTC's binding comes with CuPy
        _output._say(f"gpuconv precompile: NVRTC could not be imported ({exc}); install CuPy and NVRTC: from a "
                     "checkout `make install EXTRAS=dev,nvrtc`, or pip install cupy-cuda13x nvidia-cuda-nvrtc")
        return 1
    for r in records:
        print(f"{r['file']:12s} {r['build']:11s} {r['arch']:8s} "
              + ("in the cache" if r["cached"] else f"compiled in {r['seconds']:.1f} s"))
    built = sum(not r["cached"] for r in records)
    print(f"{len(records)} builds, {built} compiled, in {time.perf_counter() - start:.1f} s; cache: {kernels.cuda_cache_dir()}")
    lost = sum(not r["stored"] for r in records)
    if lost:
        _output._say(f"gpuconv precompile: {lost} of the builds could not be stored in {kernels.cuda_cache_dir()} (not "
                     "writable): processes find them only in a temporary directory, or compile them again; set "
                     "GPUCONV_CUDA_CACHE to a writable directory")
        return 1
    return 0
