"""Launching: the grid a kernel is planned for (SMs, resident blocks, CUDA's grid limits), the
arguments' checks and the launch itself."""
from __future__ import annotations

import functools
import os

import numpy as np

from .. import _env, backend, layout  # backend: read at each call (tests fake CuPy by patching it)
from . import _log, _registry, _sim, _sources


# Streaming multiprocessors the launch geometry plans for. On 'cuda' the device's own count; the
# simulator plans for an H100 (132 SMs) so that it takes the same code path (split counts,
# grid-stride trip counts) as the GPU would for the same shapes.
NOMINAL_SMS = 132


@functools.lru_cache(maxsize=None)
def _device_sms(device: int) -> int:
    cp = backend.require_cupy()
    return int(cp.cuda.Device(device).attributes["MultiProcessorCount"])


def sm_count(target: str, device: int | None = None) -> int:
    """SMs to plan a grid for: the device's on 'cuda', NOMINAL_SMS on the simulator."""
    if target == "cuda":
        if device is None:  # the current device, as CuPy would launch on it
            device = backend.require_cupy().cuda.Device().id
        return _device_sms(device)
    return NOMINAL_SMS


# Blocks of one kernel an SM holds at once, as the simulator plans it (the tensor-core 128x128
# kernels' figure on an H200: registers and shared memory allow two).
NOMINAL_BLOCKS_PER_SM = 2
_resident: dict = {}


def resident_blocks(op_file: str, name: str, dtype, threads: int, target: str, device: int | None = None,
                    tf32: bool = False, shared_mem: int = 0) -> int:
    """Blocks of kernel ``name`` (``threads`` threads and ``shared_mem`` bytes of dynamic shared memory each) that one SM
    runs at once: the CUDA occupancy calculator's answer for the built kernel on 'cuda' (its
    registers, shared memory and threads), NOMINAL_BLOCKS_PER_SM on the simulator. A grid of
    ``resident_blocks * sm_count`` blocks is one full wave."""
    if target != "cuda":
        return NOMINAL_BLOCKS_PER_SM
    if device is None:
        device = backend.require_cupy().cuda.Device().id
    key = (op_file, name, np.dtype(dtype), bool(tf32), device, int(threads), int(shared_mem),
           _env.get("GPUCONV_KERNELS_DIR"), _registry._WGMMA() if op_file in _sources.ARCH_SPECIFIC else None)
    n = _resident.get(key)
    if n is None:
        with backend.cupy_module().cuda.Device(device):
            fn = _registry.get_function(op_file, name, dtype, target, device, tf32)
            _allow_dynamic_shared(fn, shared_mem)  # under the default limit the calculator answers 0
            try:
                from cupy_backends.cuda.api import driver
                occupancy = driver.occupancyMaxActiveBlocksPerMultiprocessor
            except (ImportError, AttributeError):  # a CuPy without the occupancy call: plan as the simulator
                n = NOMINAL_BLOCKS_PER_SM
            else:
                n = int(occupancy(_function_handle(fn), int(threads), int(shared_mem)))
        n = _resident[key] = max(1, n)
    return n


def _function_handle(fn) -> int:
    """The CUfunction of a kernel from :func:`get_function`: CuPy's RawKernel (what
    RawModule.get_function returns) holds it in ``.kernel.ptr``."""
    return int(fn.kernel.ptr)


def grid_1d(n: int, block: int = _sources.BLOCK, target: str = "sim", device: int | None = None):
    """(grid, block) for the grid-stride elementwise kernels: one thread per element up to
    32 blocks per SM (beyond that the loop strides; more blocks only add scheduling)."""
    if target != "cuda":  # (sm_count's answer, without its call: every elementwise launch asks)
        return _grid_1d(int(n), block, NOMINAL_SMS)
    return _grid_1d(int(n), block, sm_count(target, device))


@functools.lru_cache(maxsize=4096)
def _grid_1d(n: int, block: int, sms: int):
    return (max(1, min(-(-n // block), 32 * sms)), 1, 1), (block, 1, 1)


GRID_X_MAX, GRID_Y_MAX, GRID_Z_MAX = 2**31 - 1, 65535, 65535  # CUDA's grid limits (compute capability >= 3.0)


def tile_grid_fits(rows: int, cols: int, bm: int, bn: int, splits: int = 1) -> bool:
    """Whether a tiled GEMM kernel's grid (:func:`tile_grid`) fits CUDA's limits: at most 65535
    column tiles on y (4M columns at 64 a tile: a linear layer's in_features after a flatten,
    which the launchers then send to the untiled v1 kernels) and 65535 splits on z."""
    return (-(-int(rows) // bm) <= GRID_X_MAX and -(-int(cols) // bn) <= GRID_Y_MAX
            and int(splits) <= GRID_Z_MAX)


def tile_grid(rows: int, cols: int, bm: int, bn: int, splits: int = 1):
    """The grid of a tiled GEMM kernel over a ``rows`` x ``cols`` output in ``bm`` x ``bn`` tiles
    and ``splits`` reduction splits: row tiles on x, column tiles on y, splits on z (a ValueError
    naming the sizes where that does not fit: the launchers check :func:`tile_grid_fits` first)."""
    if not tile_grid_fits(rows, cols, bm, bn, splits):
        raise ValueError(f"a GEMM of {rows} x {cols} outputs in {bm}x{bn} tiles, {splits} splits, does not fit a "
                         f"CUDA grid ({GRID_X_MAX} x {GRID_Y_MAX} x {GRID_Z_MAX} blocks)")
    return -(-int(rows) // bm), -(-int(cols) // bn), int(splits)


def launch_1d(op_file: str, kernel: str, target: str, arrays, scalars=(), per_thread: int = 1):
    """A grid-stride elementwise launch: ``kernel(*arrays, int64(n), *scalars)`` with ``n`` the
    element count of ``arrays[0]`` (which also gives the dtype and the device), one thread per
    ``per_thread`` elements (see :func:`grid_1d`). Nothing runs when ``n`` is 0."""
    n = int(arrays[0].size)
    if n == 0:
        return
    device = array_device(arrays[:1])
    grid, block = grid_1d(-(-n // per_thread), _sources.BLOCK, target, device)
    memory = tuple([layout.memory_order(a) for a in arrays])  # channels_last arrays as their NHWC views
    launch(op_file, kernel, arrays[0].dtype, target, grid, block, memory + (np.int64(n),) + tuple(scalars),
           device=device)


def launch_slots(op_file: str, kernel: str, dtype, target: str, slots, sizes, width: int, idle, extra=(),
                 device: int | None = None, tf32: bool = False):
    """One launch of a kernel that takes ``width`` parameter slots written out as arguments (SGD's
    update, the mixed-precision casts, the TF32 rounding of a convolution's operands): ``slots``
    are the used slots' argument tuples, ``sizes`` their element counts (the units each thread
    takes), ``idle`` the tuple that fills each unused slot (arrays of the first, no elements),
    ``extra`` the arguments after the slots, ``tf32`` as :func:`launch`'s. Grid y picks the slot,
    x strides over its elements (:func:`grid_1d` for the largest)."""
    args = tuple([a for slot in slots for a in slot]) + tuple(idle) * (width - len(slots)) + tuple(extra)
    grid, block = grid_1d(max([int(n) for n in sizes]), _sources.BLOCK, target, device)
    launch(op_file, kernel, dtype, target, (grid[0], len(slots), 1), block, args, device=device, tf32=tf32)


def contiguous_like(*arrays, outputs: int = 1, keep_channels_last: bool = False):
    """``arrays`` made C-contiguous (copies only where needed), then ``outputs`` new empty arrays
    like the first: the inputs and the outputs of an elementwise launch. With
    ``keep_channels_last``, arrays that are all channels_last stay as they are and the outputs
    are channels_last too (an elementwise kernel walks memory, whatever its order; see
    :func:`launch_1d`)."""
    xp = backend.get_array_module(*arrays)
    if keep_channels_last and layout.run_channels_last(*arrays):
        return arrays + tuple(layout.empty_like(arrays[0]) for _ in range(outputs))
    # (ascontiguousarray would make a 0-d array 1-d; a 0-d array is always contiguous)
    arrays = tuple(a if a.flags.c_contiguous else xp.ascontiguousarray(a) for a in arrays)
    return arrays + tuple(xp.empty_like(arrays[0]) for _ in range(outputs))


INT_MAX = 2**31 - 1  # the kernels index rows, columns and offsets with int


def int_indexable(*sizes, spare: int = 0) -> bool:
    """Whether every size (element or byte counts, as the kernel indexes them), with ``spare`` more
    for a tile's overhang past its last row, stays an int."""
    limit = INT_MAX - spare
    for s in sizes:
        if s > limit:
            return False
    return True


@functools.lru_cache(maxsize=4096)
def int32_args(values: tuple) -> tuple:
    """``values`` (ints, bools) as the np.int32 arguments of a launch, made once per set of values:
    a network launches with few, every step."""
    return tuple(np.int32(v) for v in values)


@functools.lru_cache(maxsize=1024)
def fast_divisor(d: int) -> tuple:
    """The (m, s) kernel arguments (np.uint32) of common.cuh's FastDiv for a divisor 1 <= d < 2^31:
    for every 0 <= n < 2^31, n // d == (((n * m) >> 32) + n) >> s, with s = ceil(log2 d) and
    m = 2^32 * (2^s - d) // d + 1."""
    d = int(d)
    if not 1 <= d <= INT_MAX:
        raise ValueError(f"fast_divisor: divisor {d} is outside [1, 2^31 - 1]")
    s = (d - 1).bit_length()
    return np.uint32((((1 << 32) * ((1 << s) - d)) // d) + 1), np.uint32(s)


def address(a) -> int:
    """The address of a NumPy or CuPy array's first element (what alignment rules are about)."""
    if type(a) is np.ndarray:  # read off the array interface: no ctypes object made per launch
        return a.__array_interface__["data"][0]
    if type(a) is getattr(backend.cupy_module(), "ndarray", None):  # CuPy's own (as vec_lanes reads it)
        return a.data.ptr
    return a.data.ptr if backend.is_cupy_array(a) else a.ctypes.data


# Bytes of channels per thread of the channels_last ``_vec`` kernels (VEC16 in common.cuh).
VEC_BYTES = 16


def vec_lanes(arrays, channels: int, channels_last: bool) -> int:
    """Channels per thread of a ``_vec`` kernel over ``arrays`` (pooling, batch norm): VEC_BYTES of
    them where the arrays are channels_last, ``channels`` is a multiple and every array is aligned
    to VEC_BYTES; else 1, the element kernel. ``arrays[0]`` gives the element size."""
    lanes = VEC_BYTES // arrays[0].itemsize
    if not channels_last or channels % lanes:
        return 1
    # (the addresses of NumPy's and CuPy's own arrays read here, as address() reads them: no call per
    # array at every launch of these kernels)
    gpu_array = getattr(backend.cupy_module(), "ndarray", None)
    for a in arrays:
        kind = type(a)
        at = (a.__array_interface__["data"][0] if kind is np.ndarray else a.data.ptr if kind is gpu_array
              else address(a))
        if at % VEC_BYTES:
            return 1
    return lanes


# The last-block tickets per device (see tickets): every array ever handed out stays referenced, so
# a CUDA graph that captured one never sees its memory given to another array.
_tickets: dict = {}
_tickets_kept: list = []


def tickets(like, count: int, device=False):
    """A uint32 array of at least ``count`` zeros on ``like``'s device (NumPy on the simulator): the
    tickets of the kernels whose last block to arrive finishes a reduction (softmax_cross_entropy,
    batch norm's sums), one per group of blocks. Each such launch counts from 0 and leaves its
    tickets at 0 again, and launches run in stream order, so one array per device serves them all.
    That is gpuconv's model: one stream per device at a time (the current one; a CUDA graph
    replays on it). Two threads running these ops concurrently on two streams of one device would
    share the tickets. 4096 entries (batch norm over 131072 channels) are made at the first use,
    which is eager (StepGraph captures the second step), so no capture allocates them. ``device``:
    ``like``'s (:func:`array_device`), where the caller has it."""
    key = (backend.is_cupy_array(like), array_device([like]) if device is False else device)
    t = _tickets.get(key)
    if t is None or t.size < count:
        t = _tickets[key] = backend.get_array_module(like).zeros(max(int(count), 4096), dtype=np.uint32)
        _tickets_kept.append(t)
    return t


def array_device(arrays) -> int | None:
    """The CUDA device id of the first CuPy array in ``arrays`` (None when there is none)."""
    ndarray = None
    for a in arrays:
        if type(a) is np.ndarray or a is None:  # (NumPy's, the simulator's: no CuPy looked up for them)
            continue
        if ndarray is None:  # looked up once, at the first other argument: this runs on every launch
            cp = backend.cupy_module()
            if cp is None:
                return None
            ndarray = cp.ndarray
        if isinstance(a, ndarray):
            return backend.device_id(a)
    return None


def launch(op_file: str, kernel: str, dtype, target: str, grid, block, args, shared_mem=0, device=None,
           tf32: bool = False):
    """Run ``kernel`` of ``kernels/<op_file>.cu`` built for ``dtype`` (its TF32 build when
    ``tf32``) on ``target``. On 'cuda' it runs on ``device`` (default: that of the first CuPy
    array in ``args``), made current for the launch."""
    if _log._launch_logs.get():
        _log._log_launch(kernel, grid, block, target, dtype, tf32)
    # The function is :func:`get_function`'s, read here off its memo by the key it keeps it under
    # (the arguments as given and the variables' raw values: the same look-up, without its call
    # at every launch); a miss, or a get_function replaced (tests fake one), asks get_function.
    fast = os.environ is _env._environ and _registry.get_function is _registry._GET_FUNCTION
    if target != "cuda":
        fn = _registry._functions.get((op_file, kernel, dtype, tf32, target, _sim._sim_arch.get(),
                                       _registry._KERNELS_DIR(), None)) if fast else None
        if fn is None:
            fn = _registry.get_function(op_file, kernel, dtype, target, tf32=tf32)
        fn(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem)
        return
    cp = backend.cupy_module()
    if device is None:
        device = array_device(args)
        if device is None:  # no CuPy array among the arguments: the current GPU, as the memo keys name it
            device = cp.cuda.Device().id
    with cp.cuda.Device(device):  # the module is loaded on the current device
        fn = _registry._functions.get((op_file, kernel, dtype, tf32, target, device, _registry._KERNELS_DIR(),
                                       _registry._WGMMA() if op_file in _sources.ARCH_SPECIFIC else None)) if fast else None
        if fn is None:
            fn = _registry.get_function(op_file, kernel, dtype, target, device, tf32)
        if shared_mem > DEFAULT_DYNAMIC_SHARED:
            _allow_dynamic_shared(fn, shared_mem)
        fn(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem)


def _allow_dynamic_shared(fn, shared_mem: int):
    """Raises a GPU kernel's dynamic shared memory limit to ``shared_mem`` bytes where that is past
    the default 48 KiB (the opt-in, cudaFuncAttributeMaxDynamicSharedMemorySize), once per kernel."""
    if shared_mem > DEFAULT_DYNAMIC_SHARED and _dynamic_limit.get(id(fn), DEFAULT_DYNAMIC_SHARED) < shared_mem:
        fn.max_dynamic_shared_size_bytes = int(shared_mem)
        _dynamic_limit[id(fn)] = int(shared_mem)


# Dynamic shared memory a kernel may take without opting in (cudaFuncAttributeMaxDynamicSharedMemorySize),
# and the limits raised so far, per memoized function.
DEFAULT_DYNAMIC_SHARED = 48 * 1024
_dynamic_limit: dict = {}
