"""What a target runs: tensor cores per dtype and compute capability, the wgmma tiles (Hopper),
and the variant that launches where the one asked for does not run."""
from __future__ import annotations

import functools
import os
import re

import numpy as np

from .. import _env, backend  # backend: read at each call (tests fake CuPy by patching it)
from . import _families, _nvrtc, _registry, _sim, _sources


def wgmma_available(target: str, device: int | None = None) -> bool:
    """Whether the warpgroup (wgmma) kernels of :data:`ARCH_SPECIFIC` files run on ``target``: on
    the simulator always; on a GPU where those files are built for sm_90a (compute capability 9.0,
    Hopper, with an NVRTC that targets sm_90), the build _compile_cuda makes. Anywhere else their
    entry points trap, which would end the process's CUDA context: the launchers never send them.
    ``GPUCONV_WGMMA=0`` turns them off on a GPU (tc128 runs where one is asked for, autotuning
    leaves them out): the switch for a GPU or driver where they fail. (Not in the simulator's sm_75
    build, :func:`sim_arch`.)"""
    if target == "sim":
        return _sim._sim_arch.get() is None
    if not _env.flag("GPUCONV_WGMMA", default=True):
        return False
    if device is None:  # the current GPU, asked at each call (the answer is cached per GPU)
        device = backend.require_cupy().cuda.Device().id
    return _arch_specific_build(int(device))


def launch_setting(target: str, occupancy: bool = False):
    """What, besides a launch's arrays, sizes and variant choices, decides how a convolution is
    launched on ``target``, as a hashable value the launchers key their memoized launch plans by: on
    the simulator its arch (:func:`sim_arch`: the tensor cores it has, wgmma or not); on a GPU
    ``GPUCONV_WGMMA`` (:func:`wgmma_available`), and with ``occupancy`` (a plan that asks
    :func:`resident_blocks`) also ``GPUCONV_KERNELS_DIR``, the kernels built. (The device is keyed
    apart: the launch's own.)"""
    if target == "sim":
        return _sim._sim_arch.get()
    if os.environ is not _env._environ:
        wgmma = _env.get("GPUCONV_WGMMA")
        return (wgmma, _env.get("GPUCONV_KERNELS_DIR")) if occupancy else wgmma
    wgmma = _registry._WGMMA()  # (the variables' raw values: no Python call per convolution)
    return (wgmma, _registry._KERNELS_DIR()) if occupancy else wgmma


# Files whose kernels are mma.sync/ldmatrix/cp.async (kernels/mma.cuh): they build for sm_75 and
# newer, and run on such GPUs only, in the builds whose tensor-core format the GPU multiplies:
# float16 from compute capability 7.5 (Turing's mma.m16n8k8 .f16, the T4 of Colab's free tier),
# bfloat16 and TF32 from 8.0 (Ampere's mma .bf16 and .tf32). wgmma: sm_90a only (ARCH_SPECIFIC).
TENSOR_CORE_FILES = tuple(f for f, headers in _sources.UNIT_HEADERS.items() if "mma.cuh" in headers)
TENSOR_CORE_MIN_CC = {"float16": 75, "bfloat16": 80, "tf32": 80}


def tensor_core_min_cc(dtype=None, tf32: bool = False) -> int:
    """The compute capability from which ``dtype``'s convolutions and GEMMs run on tensor cores
    (``tf32``: float32 in TF32 mode): 75 for float16, 80 for bfloat16 and TF32, and 80 for None
    (every tensor-core format)."""
    if dtype is None:
        return max(TENSOR_CORE_MIN_CC.values())
    return TENSOR_CORE_MIN_CC.get("tf32" if tf32 else np.dtype(dtype).name, max(TENSOR_CORE_MIN_CC.values()))


def arch_capability(arch: str) -> int:
    """The compute capability (90 for sm_90, sm_90a, compute_90) of an NVRTC target; a ValueError
    that says how to write one otherwise."""
    m = re.fullmatch(r"(?:sm|compute)_(\d{2,3})[af]?", str(arch))  # (a: arch-specific, f: family; CUDA 12.9+)
    if m is None:
        raise ValueError(f"{arch!r} is not an NVRTC target: write sm_NN or compute_NN with the compute "
                         "capability's digits, e.g. sm_90 (H100/H200) or sm_80 (A100)")
    return int(m.group(1))


def runs_as(variant: str, target: str, device: int | None = None, dtype=None, tf32: bool = False) -> str | None:
    """The conv2d variant that launches when ``variant`` is asked for on ``target`` for ``dtype``
    (None: every tensor-core format; ``tf32``: float32 in TF32 mode): itself, a wgmma tile's
    mma.sync fallback (:data:`WGMMA_FALLBACK`) where wgmma does not run, None for any tensor-core
    tile on a GPU without tensor cores for it (a CUDA-core tile then runs, chosen by the channel
    rule)."""
    if variant in _families.TC_VARIANTS and not tensor_cores_available(target, device, dtype, tf32):
        return None
    return tensor_core_tile(variant, target, device)


def tensor_core_tile(variant: str, target: str, device: int | None = None) -> str:
    """The tile a tensor-core ``variant`` launches as on ``target``: itself, or where wgmma does not
    run (a GPU other than Hopper) its mma.sync fallback (:data:`WGMMA_FALLBACK`)."""
    if variant in _families.WGMMA_FALLBACK and not wgmma_available(target, device):
        return _families.WGMMA_FALLBACK[variant]
    return variant


def tensor_cores_available(target: str, device: int | None = None, dtype=None, tf32: bool = False) -> bool:
    """Whether the tensor-core kernels (:data:`TENSOR_CORE_FILES`) run ``dtype`` (``tf32``: float32
    in TF32 mode; None: every tensor-core format) on ``target``: on the simulator always (in its
    sm_75 build, :func:`sim_arch`, as on a T4); on a GPU of compute capability 7.5 or newer for
    float16 (Turing: a T4, RTX 20xx), 8.0 or newer for bfloat16 and TF32 (Ampere on). Elsewhere (a
    T4's bfloat16 and TF32, a V100) the convolutions run the CUDA-core tiles, which compute the
    same precision rule, and the linear layer's GEMMs run as 1x1 convolutions."""
    if target == "sim":
        cc = _sim._sim_arch.get()
        return cc is None or cc >= tensor_core_min_cc(dtype, tf32)
    return _compute_capability(device) >= tensor_core_min_cc(dtype, tf32)


def _compute_capability(device) -> int:
    """The compute capability of GPU ``device`` (None: the current one, looked up at each call, so
    a process that switches between GPUs of different architectures asks the right one)."""
    if device is None:
        device = backend.require_cupy().cuda.Device().id
    return _compute_capability_of(int(device))


@functools.lru_cache(maxsize=None)
def _compute_capability_of(device: int) -> int:
    return int(backend.require_cupy().cuda.Device(device).compute_capability)


def tensor_cores_for(target: str, device, dtype=None, tf32: bool = False) -> bool:
    """:func:`tensor_cores_available` for a launch of ``dtype``, looking its device up (``device()``)
    only on a machine where some GPU lacks them: every launch asks, and most machines have no such
    GPU. (Not memoized itself: ``device`` is a new closure over the launch's arrays at every call.)"""
    if target == "sim":
        return tensor_cores_available(target, None, dtype, tf32)
    if target != "cuda":  # a choice asked of no device (resolve() without a target): the registry's
        return True
    min_cc = tensor_core_min_cc(dtype, tf32)
    return _every_gpu_has_tensor_cores(min_cc) or _compute_capability(device()) >= min_cc


@functools.lru_cache(maxsize=None)
def _every_gpu_has_tensor_cores(min_cc: int) -> bool:
    """Whether every GPU of this machine is of compute capability ``min_cc`` or newer (the common
    case: then no launch looks up its device)."""
    count = backend.require_cupy().cuda.runtime.getDeviceCount()
    return all(_compute_capability(d) >= min_cc for d in range(count))


@functools.lru_cache(maxsize=None)
def _arch_specific_build(device) -> bool:
    cc = _compute_capability(device)
    return cc == 90 and _nvrtc.nvrtc_arch(cc, device) == "sm_90"
