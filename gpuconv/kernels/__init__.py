"""The kernel registry: find a ``kernels/*.cu`` file, build it per dtype, compile it once per
target and device, and hand out callables ``f(grid, block, args, shared_mem=0)``.

Sources. In a checkout the CUDA files live at the repository root (``kernels/``); in an
installed wheel they ship inside the package as ``gpuconv.kernels_src`` (pyproject.toml maps
one onto the other), found with :mod:`importlib.resources`. ``GPUCONV_KERNELS_DIR`` overrides
both (to try an edited kernel without reinstalling).

Translation units. A ``.cu`` file never includes anything (NVRTC has no host headers and the
host simulator compiles the same text with g++); the registry builds::

    #define GPUCONV_STORAGE bf16_t   // the arrays' element type: double, float, bf16_t, half_t
    #define GPUCONV_ACC float        // what products and sums run in: double for float64, else float
    #define GPUCONV_TF32 0           // 1 in the TF32 build of float32 (conv operands rounded)
    #define GPUCONV_TENSOR_CORES 1   // 1 where the GEMM operands have a tensor-core format:
                                     // bfloat16, float16, and float32 in the TF32 build
    #line 1 "kernels/common.cuh"
    <common.cuh>                     // typedefs storage_t and acc_t from the two macros
    #line 1 "kernels/mma.cuh"        // only for the files listed in UNIT_HEADERS
    <mma.cuh>
    #line 1 "kernels/<op>.cu"
    <op>.cu

so a compiler message names the kernel's own file and line. ``kernels/mma.cuh`` (the
tensor-core instructions, mma.sync/ldmatrix/cp.async, with their simulator forms) goes only into
the files that use it (:data:`UNIT_HEADERS`): it needs sm_75 (float16 only there; bf16, TF32 and
cp.async from sm_80), and the other files keep building for any arch. Every build of a file
exports the same entry points; a kernel that computes only with tensor cores (``gemm_tc.cu``) traps in the builds without them (``#if
GPUCONV_TENSOR_CORES``), and its launcher refuses those dtypes first. Entry points are ``extern "C"``
with the element types fixed by the defines, one module per build: the four storage dtypes of
:mod:`gpuconv.precision` (float64, float32, bfloat16, float16) and float32 with ``tf32=True``.
No ``name_expressions`` are needed (those exist to instantiate C++ templates by name). The
precision rule the builds implement is in ``kernels/common.cuh`` and :mod:`gpuconv.precision`.

Targets. ``'cuda'``: the registry compiles with NVRTC itself (:func:`nvrtc_compile`, the
``cupy_backends.cuda.libs.nvrtc`` binding) with :data:`NVRTC_OPTIONS` and nothing else, then
loads the binary with ``cupy.RawModule(path=...)``, once per (file, dtype, device) in this
process. It does not let CuPy compile the source: CuPy appends ``-ftz=true`` to every
RawModule compile, which flushes float32 subnormals to zero (``relu(1e-45)`` would return 0,
where the NumPy reference and the simulator return 1e-45). The binary is a CUBIN for
``sm_<cc>`` of the device when NVRTC supports that arch, else PTX for the highest
``compute_XX`` not above it, which the driver compiles at load (:func:`nvrtc_arch`); the files of
:data:`ARCH_SPECIFIC` build for ``sm_90a`` on a Hopper GPU (wgmma exists only there). Binaries are
cached on disk in ``$GPUCONV_CUDA_CACHE`` (default ``~/.cache/gpuconv/cuda``), keyed by the
source text, the options, the arch and the NVRTC version, written atomically so concurrent
processes share it: the first run on a machine pays the NVRTC compile (with NVRTC 13, a few
seconds for conv2d and a fraction of one for the other files, per dtype), later processes load
the file. An unwritable cache directory
costs a warning and a compile per process; point ``GPUCONV_CUDA_CACHE`` at a writable directory
on read-only or shared home directories. ``'sim'``: :func:`gpuconv.hostsim.compile` builds the
same text with g++ (cached by source hash in ``$GPUCONV_SIM_CACHE``) and runs it on the CPU.

Variants. Each kernel family keeps its first simple version beside the tuned ones
(``conv2d_forward_v1``; ``_v2`` and ``_v3``, 64x64 and 128x128 tiles on CUDA cores; ``_tc``,
``_tc128`` and ``_tc128w``, the tensor-core convolutions of kernels/conv2d_tc.cu for bfloat16,
float16 and TF32, and ``_tcwg``, ``_tcwg256``, ``_tcwgn64`` and ``_tcwgm64``, their 128x128, 128x256,
256x64 and 64x128 tiles on Hopper's wgmma).
Variants are chosen per (family, dtype): :data:`VARIANTS` gives each family its variants
and its defaults by dtype name (``"tf32"`` for float32 in TF32 mode), ``"*"`` for every dtype
without its own. The conv2d default, ``"auto"``, picks by shape (:func:`auto_variant`, from the
H200 measurement). The launchers run :func:`resolve` (:func:`variant`, "auto" made concrete):
the default on every target (the simulator runs the production path), overridden by
:func:`set_variant`, the :func:`use_variant` context manager, or the environment variable
``GPUCONV_KERNEL_VARIANTS="conv2d_forward=v1,relu_forward[bfloat16]=v1"`` (read at import; a
``[dtype]`` suffix limits an item to that dtype, ``[tf32]`` to float32 in TF32 mode, the convolutions' alone). A dtype-specific choice beats a general one
at the same level, and every explicit choice beats the defaults.

Simulator schedule. :func:`sim_schedule` (a context manager) makes simulator launches run the
threads of each block, and the blocks, in reversed order (``'reverse'``), which flushes out races
that the forward order hides; ``sanitize=True`` routes them through the AddressSanitizer build.
:func:`sim_arch` (``with sim_arch(75):``) makes them run the sm_75 build of the tensor-core files
(``#define GPUCONV_SIM_SM75 1``: mma.cuh's Turing forms, float16 tensor cores only, no wgmma), so
that the simulator answers :func:`tensor_cores_available` and :func:`wgmma_available` as a T4 does.

Modules. The registry is one namespace, ``gpuconv.kernels``, made of the modules below: every
name any of them defines (private ones and module state included) is an attribute of the package,
the same object, and assigning one through the package (a test's ``monkeypatch.setattr(kernels,
"_compute_capability", ...)``) rebinds it in the module that defines it too, so that the code of
every module sees the new value, as in a single module. A module reaches another's names only
through that module (``_nvrtc.nvrtc_compile(...)``, never a ``from ._nvrtc import`` copy, which
such an assignment would not reach).

- :mod:`._sources`: the kernel files, where they are, and the translation units built from them;
- :mod:`._families`: the kernel families' variants, their defaults and the choices over them;
- :mod:`._tuning`: autotuning, "auto" by measurement;
- :mod:`._sim`: the simulator's options (schedule, arch) and its modules;
- :mod:`._registry`: the compiled modules and functions, memoized per build, target and device;
- :mod:`._nvrtc`: compiling with NVRTC;
- :mod:`._capability`: what a GPU (or the simulator) runs: tensor cores, wgmma;
- :mod:`._cuda`: the GPU path: the disk cache of binaries, loading them, :func:`precompile`;
- :mod:`._log`: the launch log;
- :mod:`._launching`: launch geometry and the launch itself.
"""
from __future__ import annotations

from .. import _package

# _sources first: the others read its constants when they are imported.
from . import _sources
from . import _capability, _cuda, _families, _launching, _log, _nvrtc, _registry, _sim, _tuning

_MODULES = (_sources, _families, _tuning, _sim, _registry, _nvrtc, _capability, _cuda, _log, _launching)
# The globals their own module's functions rebind (``global``): read and written in their module.
_package.gather(__name__, *_MODULES, rebound=("_table_changes", "_cache_lock", "_cache_dir_warned", "_cache_warned"))
