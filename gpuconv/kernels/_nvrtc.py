"""Compiling a translation unit with NVRTC (no GPU needed) and the target a device is compiled for."""
from __future__ import annotations

import functools
import os

import numpy as np

from . import _sources


# The only options any kernel is compiled with, on the GPU and in nvrtc_check alike. IEEE float
# semantics on purpose: -ftz=false keeps subnormals (max/ReLU/pooling must match NumPy bit for
# bit, 1e-45 included; CuPy's own RawModule compile would append -ftz=true), and division and
# square root round correctly. These are NVRTC's defaults, spelled out so that no default or
# caller can change them silently. (FMA contraction, NVRTC's default -fmad=true, stays on.)
NVRTC_OPTIONS = ("-std=c++14", "-ftz=false", "-prec-div=true", "-prec-sqrt=true")


def nvrtc_compile(src: str, op_file: str, dtype, arch: str, where: str = "", tf32: bool = False,
                  with_ptx: bool = False) -> bytes | tuple[bytes, str]:
    """Compile the translation unit ``src`` (``kernels/<op_file>.cu`` built for ``dtype``, TF32 build when ``tf32``) with
    NVRTC and :data:`NVRTC_OPTIONS` alone, for ``arch``: ``'sm_XX'`` gives a CUBIN,
    ``'compute_XX'`` PTX. No GPU needed. The one compile behind :func:`nvrtc_check` and the GPU
    path; ``where`` (e.g. ', device 0') completes the error message. ``with_ptx``: (output, PTX)
    from the one compile (an 'sm_XX' compile's PTX is the text its 'compute_XX' gives).

    Raises :class:`KernelCompileError` with the compiler log (file(line): message) on failure,
    and ImportError when the NVRTC binding (cupy_backends, the nvidia-cuda-nvrtc wheel) is absent."""
    nvrtc = nvrtc_binding()
    prog = nvrtc.createProgram(src, f"{op_file}.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", *NVRTC_OPTIONS])
        except nvrtc.NVRTCError as exc:
            raise _sources.KernelCompileError(
                f"kernels/{op_file}.cu ({_sources._label(dtype, tf32)}, {arch}{where}) failed to compile with NVRTC "
                f"{_nvrtc_version(nvrtc)} ({exc}):\n{nvrtc.getProgramLog(prog)}") from None
        out = _cubin(nvrtc, prog) if arch.startswith("sm_") else nvrtc.getPTX(prog)
        out = out if isinstance(out, bytes) else out.encode()
        if with_ptx:
            ptx = nvrtc.getPTX(prog)
            return out, ptx.decode() if isinstance(ptx, bytes) else ptx
    finally:
        nvrtc.destroyProgram(prog)
    return out


def nvrtc_binding():
    """CuPy's NVRTC binding (``cupy_backends.cuda.libs.nvrtc``), its library loaded; ImportError,
    naming the wheel to install, where either is missing. CuPy 14 imports the binding without the
    library and loads libnvrtc at its first call, through cuda.pathfinder, whose
    DynamicLibNotFoundError is a RuntimeError."""
    from cupy_backends.cuda.libs import nvrtc  # raises ImportError without CuPy
    try:
        nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001  (DynamicLibNotFoundError, an OSError of a broken install)
        why = (str(exc).splitlines() or [""])[0]
        raise ImportError(f"CuPy's NVRTC binding could not load the NVRTC library ({type(exc).__name__}: {why}): "
                          "pip install nvidia-cuda-nvrtc (for cupy-cuda13x) or nvidia-cuda-nvrtc-cu12 (for "
                          "cupy-cuda12x)") from exc
    return nvrtc


def _cubin(nvrtc, prog) -> bytes:
    """The whole CUBIN of the compiled ``prog``: ``nvrtcGetCUBINSize`` bytes, read through the
    NVRTC library CuPy loaded. CuPy's ``nvrtc.getCUBIN`` cannot be used: it treats the image
    like NUL-terminated PTX and drops its last byte, which the ELF's own header tables cover
    (the driver then refuses, or misreads, the truncated image)."""
    import ctypes
    lib = _nvrtc_library()
    size = ctypes.c_size_t()
    _nvrtc_ok(nvrtc, lib.nvrtcGetCUBINSize(ctypes.c_void_p(prog), ctypes.byref(size)), "nvrtcGetCUBINSize")
    buf = ctypes.create_string_buffer(size.value)
    _nvrtc_ok(nvrtc, lib.nvrtcGetCUBIN(ctypes.c_void_p(prog), buf), "nvrtcGetCUBIN")
    image = buf.raw[:size.value]
    elf_image_end(image)  # a ValueError here means NVRTC handed back something that is not a whole ELF
    return image


def _nvrtc_ok(nvrtc, status, call):
    if status != 0:
        raise _sources.KernelCompileError(f"{call} failed with NVRTC status {status} (NVRTC {_nvrtc_version(nvrtc)})")


@functools.lru_cache(maxsize=1)
def _nvrtc_library():
    """The libnvrtc that cupy_backends loaded into this process (the same one compiled ``prog``)."""
    import ctypes
    import ctypes.util
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "/libnvrtc.so" in line or "/libnvrtc64" in line}
    except OSError:
        paths = set()
    for path in sorted(paths):
        if "builtins" not in os.path.basename(path):
            return ctypes.CDLL(path)
    try:  # no /proc (Windows, where the DLL is nvrtc64_<major>0_0.dll): CuPy's loader's memoized answer
        from cuda.pathfinder import load_nvidia_dynamic_lib
        found = load_nvidia_dynamic_lib("nvrtc").abs_path
    except Exception:  # noqa: BLE001  (CuPy older than 14 loads NVRTC without cuda.pathfinder)
        found = None
    found = found or ctypes.util.find_library("nvrtc")
    if found:
        return ctypes.CDLL(found)
    raise _sources.KernelCompileError("the NVRTC library CuPy uses could not be located to read a CUBIN; reinstall "
                                      "the nvidia-cuda-nvrtc wheel (pip install nvidia-cuda-nvrtc)")


def elf_image_end(image: bytes) -> int:
    """The end of an ELF64 image's header tables (section and program headers), checked to lie
    within ``image``: a truncated CUBIN fails here with a ValueError naming both sizes."""
    import struct
    if len(image) < 64 or image[:4] != b"\x7fELF" or image[4] != 2:
        raise ValueError(f"not an ELF64 image ({len(image)} bytes, starting {image[:4]!r})")
    phoff, shoff = struct.unpack_from("<QQ", image, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", image, 0x36)
    end = max(64, phoff + phentsize * phnum, shoff + shentsize * shnum)
    if end > len(image):
        raise ValueError(f"truncated ELF image: its header tables end at byte {end}, the image has {len(image)}")
    return end


def _nvrtc_version(nvrtc) -> str:
    return ".".join(str(v) for v in nvrtc.getVersion())


@functools.lru_cache(maxsize=None)
def nvrtc_check(op_file: str, arch: str = "compute_80", dtype=np.float32, tf32: bool = False) -> str:
    """Compile ``kernels/<op_file>.cu`` (for ``dtype``; its TF32 build when ``tf32``) with NVRTC for
    the virtual ``arch`` (no GPU needed), with the options the GPU path uses; return the PTX.
    Errors as in :func:`nvrtc_compile`."""
    if not arch.startswith("compute_"):
        raise ValueError(f"nvrtc_check arch {arch!r}: use a virtual architecture such as 'compute_80' (it returns PTX)")
    return nvrtc_compile(_sources.build_source(op_file, dtype, tf32), op_file, dtype, arch, tf32=tf32).decode()


def nvrtc_arch(compute_capability, device: int | None = None) -> str:
    """The NVRTC target for a device of ``compute_capability`` (CuPy's string, e.g. '90'):
    ``'sm_90'`` (a CUBIN) when NVRTC supports that arch, else the highest supported virtual arch
    not above it, e.g. ``'compute_90'`` on a newer GPU (PTX, which the driver compiles at load)."""
    nvrtc = nvrtc_binding()
    cc = int(compute_capability)
    archs = sorted(int(a) for a in nvrtc.getSupportedArchs())
    if cc in archs:
        return f"sm_{cc}"
    older = [a for a in archs if a <= cc]
    if older:
        return f"compute_{older[-1]}"
    raise _too_old_for_nvrtc(f"device {device} has compute capability {cc // 10}.{cc % 10} (sm_{cc})", cc)


def _too_old_for_nvrtc(what: str, cc: int) -> _sources.KernelCompileError:
    """The error for an arch below the oldest this NVRTC targets: ``what`` named, and the fix."""
    nvrtc = nvrtc_binding()
    archs = sorted(int(a) for a in nvrtc.getSupportedArchs())
    return _sources.KernelCompileError(
        f"{what}, and NVRTC {_nvrtc_version(nvrtc)} compiles only for sm_{', sm_'.join(map(str, archs))}: install "
        f"an NVRTC that still targets sm_{cc}, e.g. the CUDA 12 stack (pip install cupy-cuda12x "
        "nvidia-cuda-nvrtc-cu12), or run on Device('sim')")
