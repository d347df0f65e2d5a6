"""The kernel files and the translation units built from them: where the sources are (checkout,
wheel or GPUCONV_KERNELS_DIR), their ``#define`` s and tensor-core tiles as the launchers read
them, and the builds per dtype (see the package's docstring, "Sources" and "Translation units")."""
from __future__ import annotations

import functools
import pathlib
import re
from typing import NamedTuple

import numpy as np

from .. import _env, precision


KERNEL_FILES = ("conv2d", "conv2d_grouped", "conv2d_tc", "pool2d", "relu", "gelu", "activations", "dropout", "augment",
                "stream_hold", "gemm_tc", "batchnorm", "groupnorm", "optim", "loss", "amp", "scale", "channel_gate",
                "layout")
# The headers a file's translation unit gets after common.cuh, in order (see build_source).
_TC_HEADERS = ("mma.cuh", "wgmma.cuh", "tc_tile.cuh")
UNIT_HEADERS = {"gemm_tc": _TC_HEADERS, "conv2d_tc": _TC_HEADERS, "relu": ("activation.cuh",),
                "gelu": ("activation.cuh",), "activations": ("activation.cuh",), "batchnorm": ("activation.cuh",)}
COMMON = "common.cuh"
# Files built for the arch-specific sm_90a on a Hopper GPU (compute capability 9.0), for its
# wgmma (kernels/wgmma.cuh); every other file, and these on other GPUs, build for sm_XX.
ARCH_SPECIFIC = ("conv2d_tc",)
# Files launched in float32's TF32 build (tensor-core operands rounded to TF32) besides their
# builds per dtype.
TF32_FILES = ("conv2d", "conv2d_grouped", "conv2d_tc", "gemm_tc")


class _Build(NamedTuple):
    name: str     # in messages, module names and cache file names: float, double, bfloat16, float16
    storage: str  # the C element type of the arrays (GPUCONV_STORAGE)
    acc: str      # the C type products and sums run in (GPUCONV_ACC)


# Storage dtype -> build; see kernels/common.cuh and gpuconv/precision.py for the rule.
_DTYPES = {precision.float32: _Build("float", "float", "float"),
           precision.float64: _Build("double", "double", "double"),
           precision.bfloat16: _Build("bfloat16", "bf16_t", "float"),
           precision.float16: _Build("float16", "half_t", "float")}


class KernelCompileError(RuntimeError):
    """A kernel file failed to compile; the message holds the compiler's log (file(line): ...)."""


def kernel_dir() -> pathlib.Path:
    """The directory holding ``common.cuh`` and the ``.cu`` files (checkout, wheel, or override)."""
    override = _env.get("GPUCONV_KERNELS_DIR")
    if override:
        path = pathlib.Path(override)
        if not (path / COMMON).is_file():
            raise FileNotFoundError(f"GPUCONV_KERNELS_DIR={override!r} has no {COMMON}: point it at a "
                                    "kernels/ directory or unset it")
        return path
    return _shipped_kernel_dir()


def _shipped_kernel_dir() -> pathlib.Path:
    """The kernels gpuconv came with (checkout or wheel), whatever GPUCONV_KERNELS_DIR says."""
    package = pathlib.Path(__file__).resolve().parent.parent  # gpuconv/ (this file is gpuconv/kernels/_sources.py)
    checkout = package.parent / "kernels"
    if (checkout / COMMON).is_file():
        return checkout
    # A wheel: gpuconv/kernels_src/ (no __init__.py, so a namespace package, for which
    # importlib.resources hands back a MultiplexedPath: resolve through the file itself).
    try:
        from importlib import resources
        common = resources.files("gpuconv.kernels_src") / COMMON
        if common.is_file():
            return pathlib.Path(str(common)).parent
    except (ModuleNotFoundError, TypeError, ValueError):
        pass
    packaged = package / "kernels_src"
    if (packaged / COMMON).is_file():
        return packaged
    raise FileNotFoundError(
        f"no CUDA kernel sources: looked in {checkout} (a checkout) and in the package "
        "gpuconv.kernels_src (a wheel). Reinstall gpuconv, or set GPUCONV_KERNELS_DIR to a kernels/ directory")


def _read(name: str) -> str:
    path = kernel_dir() / name
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        known = ", ".join(KERNEL_FILES)
        raise FileNotFoundError(f"kernel file {path} does not exist: the kernel files are {known}") from None


def source_text(name: str) -> str:
    """The text of kernel file ``name`` (``'gemm_tc.cu'``, ``'common.cuh'``) as the compiler reads
    it (the shipped file where GPUCONV_KERNELS_DIR lacks it, as :func:`defines`)."""
    path = kernel_dir() / name
    return (path if path.is_file() else _shipped_kernel_dir() / name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def defines(name: str) -> dict:
    """The integer ``#define`` s of kernel file ``name`` (``'conv2d.cu'``, ``'common.cuh'``): the
    tile sides, thread counts and block sizes the launchers size grids by, read from the source
    the kernels are compiled from, never copied into Python. A GPUCONV_KERNELS_DIR without the
    file (a directory of probe kernels) leaves it to the shipped one, the only one that can run."""
    text = source_text(name)
    return {k: int(v) for k, v in re.findall(r"^[ \t]*#define[ \t]+(\w+)[ \t]+(\d+)\b", text, re.M)}


class TileShape(NamedTuple):
    """A tensor-core CTA tile of kernels/tc_tile.cuh: its BM x BN outputs, threads, and the bytes
    of its shared-memory stages (``dynamic``: past the static limit, passed at launch)."""
    bm: int
    bn: int
    threads: int
    shared: int
    dynamic: bool


@functools.lru_cache(maxsize=None)
def tile_shapes() -> dict:
    """The tensor-core CTA tiles of kernels/tc_tile.cuh, ``{typedef name: TileShape}`` from its
    ``typedef TcShape<BM, BN, WM, WN[, WG[, STAGES]]> Name;`` lines: 32 * WM * WN threads,
    STAGES (default TC_STAGES) stages of (BM + BN) * TC_KBYTES bytes."""
    consts = defines("tc_tile.cuh")
    pattern = r"typedef TcShape<(\d+), (\d+), (\d+), (\d+)(?:, \w+)?(?:, (\d+))?> (\w+);"
    out = {}
    for bm, bn, wm, wn, stages, name in re.findall(pattern, source_text("tc_tile.cuh")):
        shared = int(stages or consts["TC_STAGES"]) * (int(bm) + int(bn)) * consts["TC_KBYTES"]
        out[name] = TileShape(int(bm), int(bn), 32 * int(wm) * int(wn), shared,
                              shared > consts["TC_STATIC_SHARED_MAX"])
    return out


# GPUCONV_BLOCK in common.cuh: the block size of every 1-D grid-stride kernel, which their
# __launch_bounds__ and conv2d_backward_bias's shared reduction are compiled for.
BLOCK = defines(COMMON)["GPUCONV_BLOCK"]


def _build(dtype, tf32=False) -> _Build:
    """The build of ``dtype`` (a TypeError naming the four for any other), TF32 only for float32."""
    dt = np.dtype(dtype)
    if dt not in _DTYPES:
        raise TypeError(f"kernel dtype {dt} is not supported: the kernels build for {precision.DTYPE_NAMES}; "
                        "convert with x.astype(np.float32)")
    if tf32 and dt != precision.float32:
        raise ValueError(f"tf32=True builds round float32 operands to TF32; dtype {dt} has no TF32 build "
                         "(float64 and bfloat16/float16 ignore the TF32 mode): pass tf32=False")
    return _DTYPES[dt]


def _label(dtype, tf32=False) -> str:
    """'float', 'float+tf32', 'bfloat16', ...: the build in messages and module names."""
    return _build(dtype, tf32).name + ("+tf32" if tf32 else "")


def build_source(op_file: str, dtype=np.float32, tf32: bool = False, sim_sm75: bool = False) -> str:
    """The translation unit for ``kernels/<op_file>.cu`` storing ``dtype`` (float64, float32,
    bfloat16 or float16), computing in its accumulator type, with TF32 operands when ``tf32``;
    ``sim_sm75``: the simulator's sm_75 build (:func:`sim_arch`)."""
    stem = op_file[:-3] if op_file.endswith(".cu") else op_file
    build = _build(dtype, tf32)
    tensor_cores = int(bool(tf32) or np.dtype(dtype) in precision.LOW_PRECISION)
    headers = "".join(f'#line 1 "kernels/{h}"\n{_read(h)}\n' for h in (COMMON, *UNIT_HEADERS.get(stem, ())))
    sim_sm75 = sim_sm75 and "mma.cuh" in UNIT_HEADERS.get(stem, ())  # (the other files have no sm_75 forms)
    return (("#define GPUCONV_SIM_SM75 1\n" if sim_sm75 else "") +
            f"#define GPUCONV_STORAGE {build.storage}\n#define GPUCONV_ACC {build.acc}\n"
            f"#define GPUCONV_TF32 {int(bool(tf32))}\n#define GPUCONV_TENSOR_CORES {tensor_cores}\n"
            f'{headers}#line 1 "kernels/{stem}.cu"\n{_read(stem + ".cu")}')
