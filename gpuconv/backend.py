"""The one boundary between NumPy and CuPy.

Every other module asks this one which array library an array belongs to, moves arrays
between devices through it, and reads values back to the host through it, so that
(1) cupy is imported in one place, lazily, and only when present, and (2) host
readbacks can be counted: a device-resident training step must make none.

Devices: ``'cpu'`` (NumPy, the reference), ``'cuda'`` / ``'cuda:N'`` (CuPy),
``'sim'`` (NumPy arrays, but every op runs the CUDA kernels through the host
simulator), ``'auto'`` (a usable GPU, else the CPU).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from dataclasses import dataclass

import numpy as np

_KINDS = ("cpu", "cuda", "sim")


# ----------------------------------------------------------------------------- cupy, lazily
@functools.lru_cache(maxsize=None)
def _import_cupy():
    try:
        import cupy  # noqa: F401  (the only cupy import in the package)
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return None, f"cupy is not importable ({type(exc).__name__}: {exc})"
    return cupy, None


def cupy_module():
    """The cupy module, or None when it is not installed or not importable."""
    return _import_cupy()[0]


@functools.lru_cache(maxsize=None)
def _cuda_probe():
    cp, why = _import_cupy()
    if cp is None:
        return False, why + ("; install CuPy, NVRTC and the CUDA runtime headers for the machine's CUDA: from a "
                             "checkout `make install EXTRAS=dev,cuda12` (or cuda13), or pip install cupy-cuda12x "
                             "nvidia-cuda-nvrtc-cu12 "
                             "nvidia-cuda-runtime-cu12 (cupy-cuda13x nvidia-cuda-nvrtc nvidia-cuda-runtime for CUDA 13)")
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, driver too old, no device
        detail = f"cupy {cp.__version__} is installed but CUDA is unusable ({type(exc).__name__}: {exc})"
        if not _driver_installed():  # CUDA then reports "insufficient driver", which misleads
            return False, f"no NVIDIA GPU driver found (libcuda is not installed): {detail}"
        return False, detail
    if n < 1:
        return False, f"cupy {cp.__version__} is installed but no CUDA device is visible"
    return True, f"{n} CUDA device(s) visible to cupy {cp.__version__}"


def _driver_installed() -> bool:
    """Whether the NVIDIA driver's CUDA library can be loaded at all."""
    import ctypes
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def cuda_available() -> bool:
    """True when cupy imports and at least one CUDA device answers; never raises."""
    return _cuda_probe()[0]


def cuda_status() -> str:
    """One line saying whether CUDA works and, if not, why."""
    return _cuda_probe()[1]


def is_cupy_array(x) -> bool:
    if type(x) is np.ndarray:  # the common case, answered without the cupy lookup
        return False
    cp = cupy_module()
    return cp is not None and isinstance(x, cp.ndarray)


_IS_CUPY_ARRAY = is_cupy_array  # (get_array_module asks its isinstance itself while it is this one)


# ----------------------------------------------------------------------------- devices
@dataclass(frozen=True)
class Device:
    """A place arrays live and ops run: ``Device('cpu')``, ``Device('cuda:1')``, ``Device('sim')``."""

    kind: str
    index: int = 0

    def __init__(self, spec="cpu", index: int | None = None):
        if isinstance(spec, Device):
            kind, idx = spec.kind, spec.index
        elif isinstance(spec, str):
            text = spec.strip().lower()
            if text == "auto":
                text = "cuda" if cuda_available() else "cpu"
            kind, _, num = text.partition(":")
            if kind not in _KINDS:
                raise ValueError(
                    f"device {spec!r} is not understood: use 'cpu', 'cuda', 'cuda:N', 'sim' or 'auto'")
            if num and kind != "cuda":
                raise ValueError(f"device {spec!r}: only 'cuda' takes an index, as in 'cuda:1'")
            try:
                idx = int(num) if num else 0
            except ValueError:
                raise ValueError(f"device {spec!r}: the index after ':' must be an integer, as in 'cuda:0'") from None
        else:
            raise TypeError(f"device must be a str or Device, got {type(spec).__name__}")
        if index is not None:
            idx = int(index)
        if idx < 0:
            raise ValueError(f"device {spec!r}: the index must be >= 0")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "index", idx)

    @property
    def xp(self):
        """The array module for this device: numpy for 'cpu' and 'sim', cupy for 'cuda'."""
        if self.kind == "cuda":
            return require_cupy()
        return np

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def type(self) -> str:
        """PyTorch's name for :attr:`kind` (``next(model.parameters()).device.type == 'cuda'``)."""
        return self.kind

    def __str__(self):
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind

    def __repr__(self):
        return f"Device('{self}')"


def require_cupy():
    """cupy, with CUDA usable; else a RuntimeError that says why and what to do."""
    if not cuda_available():
        raise RuntimeError(f"a CUDA device was asked for but {cuda_status()}. "
                           "Use device='cpu' (NumPy) or device='sim' (kernels on the host simulator).")
    return cupy_module()


def _device_from_env() -> Device:
    spec = os.environ.get("GPUCONV_DEVICE") or "cpu"  # (set but empty reads as unset, as gpuconv's command reads it)
    try:
        return Device(spec)
    except ValueError as exc:
        raise ValueError(f"environment variable GPUCONV_DEVICE: {exc}") from None


_default_device: contextvars.ContextVar[Device | None] = contextvars.ContextVar("gpuconv_default_device",
                                                                                 default=None)


def get_default_device() -> Device:
    """The device new parameters and data go to, and whether NumPy arrays run on the simulator.

    Starts as ``$GPUCONV_DEVICE`` (default ``'cpu'``)."""
    dev = _default_device.get()
    if dev is None:
        dev = _device_from_env()
        if dev.is_cuda and not cuda_available():  # the variable is what to change, not a device= argument
            raise RuntimeError(f"environment variable GPUCONV_DEVICE={os.environ.get('GPUCONV_DEVICE')} makes "
                               f"{dev} the default device, but {cuda_status()}. Set GPUCONV_DEVICE=cpu (NumPy) or "
                               "GPUCONV_DEVICE=sim (kernels on the host simulator), or unset it")
        _make_current(dev)
        _default_device.set(dev)
    return dev


def _make_current(dev: Device):
    """Make ``dev`` CuPy's current GPU (CuPy allocates on its *current* device, so 'cuda:1' must
    be made current or optimizer state, losses and loader buffers land on GPU 0); returns the
    previous current device, or None for CPU devices."""
    if not dev.is_cuda:
        return None
    cp = require_cupy()
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001  (no count to check against: CuPy's own error at use() then)
        count = None
    if count is not None and dev.index >= count:  # (CuPy says only "invalid device ordinal", at its first use)
        raise ValueError(f"device '{dev}': CuPy sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}; use one of "
                         "them (CUDA_VISIBLE_DEVICES, when set, renumbers the GPUs it lists from cuda:0)")
    prev = cp.cuda.Device()
    cp.cuda.Device(dev.index).use()
    return prev


def set_default_device(device) -> Device:
    """Make ``device`` the default for the rest of this context (a script, a notebook's later
    cells) and return it: ``'cpu'``, ``'cuda'``, ``'cuda:N'``, ``'sim'`` (NumPy arrays run the
    CUDA kernels on the host simulator) or ``'auto'`` (a GPU when one answers, else the CPU).

    New parameters and loaders' batches go there; ``with default_device(...):`` changes it for
    one block only. Starts as ``$GPUCONV_DEVICE`` (default ``'cpu'``). It is a context variable,
    as a ``decimal`` context is: a thread started afterwards begins from ``$GPUCONV_DEVICE`` again
    (a background training thread after ``set_default_device('sim')`` would run NumPy's
    reference), unless it runs in a copy of this context (``contextvars.copy_context().run``) or
    sets its own. A notebook cell with a top-level ``await`` runs as a task in a copy of the
    notebook's context, so a device set there lasts for that cell only: set it in a cell of its
    own."""
    dev = Device(device)
    _make_current(dev)
    _default_device.set(dev)
    return dev


@contextlib.contextmanager
def default_device(device):
    """``with default_device('sim'): ...`` runs the block with another default device."""
    dev = Device(device)
    prev = _make_current(dev)
    token = _default_device.set(dev)
    try:
        yield dev
    finally:
        _default_device.reset(token)
        if prev is not None:
            prev.use()


# ----------------------------------------------------------------------------- arrays
class DeviceMismatchError(TypeError):
    """Arrays of one call live in different places (host and GPU, or two GPUs)."""


def get_array_module(*arrays, names=None):
    """numpy or cupy, from the arrays given (None and Python scalars are ignored).

    Mixing NumPy and CuPy arrays, or CuPy arrays of two GPUs, in one call is a
    :class:`DeviceMismatchError` (a TypeError) naming both: by ``names`` (one per array, as the
    caller knows them, e.g. ``("x", "w", "b")``), else by position ('argument 0'). (Every op calls
    this, several times: NumPy arrays and a machine without CuPy are answered first.)"""
    for a in arrays:
        if type(a) is not np.ndarray and a is not None:
            break
    else:  # only NumPy arrays (and None): NumPy's, without the CuPy lookup
        return np
    cp = cupy_module()
    if cp is None:  # no CuPy: whatever was passed, the arrays are NumPy's
        return np
    # is_cupy_array's answer, its isinstance asked here (with ``cp``, the module it would look up
    # again) where it is this module's own (tests stand a predicate of their own in for it)
    gpu_array = cp.ndarray if is_cupy_array is _IS_CUPY_ARRAY else None
    first_np = first_cp = here = None
    for i, a in enumerate(arrays):
        if type(a) is np.ndarray:
            first_np = i if first_np is None else first_np
        elif a is None or isinstance(a, (int, float, bool, np.generic)):
            continue
        elif isinstance(a, gpu_array) if gpu_array is not None else is_cupy_array(a):
            if first_cp is None:
                first_cp = i
                continue
            if here is None:  # (the first one's GPU, read once)
                here = device_id(arrays[first_cp])
            if device_id(a) != here:
                there = device_id(a)
                raise DeviceMismatchError(
                    f"{_arg_name(names, first_cp)} is on cuda:{here} and {_arg_name(names, i)} on cuda:{there}: put "
                    f"both on one GPU first, e.g. gpuconv.to_device(x, 'cuda:{here}')")
        elif isinstance(a, np.ndarray):
            first_np = i if first_np is None else first_np
    if first_cp is not None and first_np is not None:
        raise DeviceMismatchError(
            f"{_arg_name(names, first_np)} is a numpy.ndarray (host) and {_arg_name(names, first_cp)} is a "
            "cupy.ndarray (GPU): put both on one device first, e.g. gpuconv.to_device(x, 'cuda') or "
            "gpuconv.asnumpy(x)")
    return cp if first_cp is not None else np


def _arg_name(names, i) -> str:
    return names[i] if names else f"argument {i}"


def device_id(a) -> int:
    """The GPU index of the CuPy array ``a`` (``a.device.id``, read without making a Device object)."""
    return a.data.device_id


def array_device_context(arrays):
    """``cupy.cuda.Device(i)`` of the first CuPy array among ``arrays``, as a context (CuPy
    allocates on, and launches to, the current device); a no-op context when there is none. When
    the arrays already sit on the current device (the common case) CuPy skips cudaSetDevice."""
    for a in arrays:
        if type(a) is np.ndarray:  # (NumPy's answered without a call)
            continue
        cp = cupy_module()  # (is_cupy_array's test, made here with the module the context needs)
        if cp is not None and (isinstance(a, cp.ndarray) if is_cupy_array is _IS_CUPY_ARRAY else is_cupy_array(a)):
            return cp.cuda.Device(device_id(a))
    return contextlib.nullcontext()


def parameters_device_context(params):
    """:func:`array_device_context` of the first of ``params`` (a list of Parameters: their
    ``.data``): the GPU of a model or an optimizer current while it trains or evaluates (CuPy
    allocates the optimizer's state, a step's buffers and every temporary on its current device,
    and refuses another's arrays in a kernel); a no-op context on the host."""
    return array_device_context([p.data for p in params[:1]])


def device_of(x) -> Device:
    """Where an array lives: Device('cuda:N') for CuPy arrays, Device('cpu') for NumPy ones."""
    if is_cupy_array(x):
        return Device("cuda", device_id(x))
    return Device("cpu")


def kernel_target(*arrays, names=None) -> str | None:
    """How an op on these arrays runs: 'cuda' (CuPy kernels), 'sim' (the kernels on the host
    simulator: NumPy arrays while the default device is 'sim') or None (the NumPy reference).
    ``names``: as :func:`get_array_module`'s, for its error."""
    for a in arrays:
        if type(a) is not np.ndarray and a is not None:  # (NumPy arrays skip the module lookup)
            if get_array_module(*arrays, names=names) is not np:
                return "cuda"
            break
    dev = _default_device.get()  # get_default_device()'s answer, read without a call once it is set
    return "sim" if (dev if dev is not None else get_default_device()).kind == "sim" else None


# ----------------------------------------------------------------------------- transfers
@dataclass
class TransferStats:
    """Counts of copies across the host/device boundary made through this module."""

    device_to_host: int = 0
    host_to_device: int = 0

    def reset(self):
        self.device_to_host = self.host_to_device = 0


transfers = TransferStats()


def _counts_as_device(x) -> bool:
    # On 'sim', NumPy arrays stand for device arrays: reading one back is what a GPU run would
    # pay for, so it is counted too; that lets a CPU-only test prove a step never reads back.
    return is_cupy_array(x) or get_default_device().kind == "sim"


def to_device(x, device=None):
    """``x`` (array, list or scalar) as an array on ``device`` (default: the default device).

    'sim' arrays are NumPy arrays that run on the simulator while 'sim' is the default device, so
    asking for 'sim' under another default is refused: the ops would quietly run NumPy's reference."""
    dev = Device(device) if device is not None else get_default_device()
    if dev.kind == "sim" and get_default_device().kind != "sim":
        raise RuntimeError(f"device 'sim' was asked for while the default device is {get_default_device()}: the "
                           "simulator runs NumPy arrays while it is the default device, process-wide or in a block. "
                           "Select it first: gpuconv.set_default_device('sim'), `with gpuconv.default_device('sim"
                           "'):`, or GPUCONV_DEVICE=sim")
    if dev.is_cuda:
        cp = require_cupy()
        if is_cupy_array(x) and device_id(x) == dev.index:
            return x
        with cp.cuda.Device(dev.index):
            if is_cupy_array(x):  # on another GPU: asarray may hand back the array where it is
                return x.copy()  # ndarray.copy() copies onto the current device
            transfers.host_to_device += 1
            return cp.asarray(x)
    if is_cupy_array(x):
        transfers.device_to_host += 1
        return x.get()
    return np.asarray(x)


def asnumpy(x):
    """A NumPy copy/view of ``x`` on the host; counted as a readback when ``x`` is a device array."""
    if x is None:
        return None
    if _counts_as_device(x) and not isinstance(x, (int, float)):
        transfers.device_to_host += 1
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def host_copy(x):
    """A NumPy array owned by the caller: the readback of a device array, a copy of a host one
    (a state dict must not alias the live parameters it was taken from)."""
    host = asnumpy(x)
    return host if is_cupy_array(x) else np.array(host, copy=True)


def copy_like(value, like):
    """``value`` (host or device array) as a fresh array on ``like``'s device with ``like``'s dtype
    and memory layout: how saved state goes back into a live parameter, buffer or optimizer slot.
    The layout is the destination's, as PyTorch's ``copy_`` keeps it (a C-contiguous weight stays
    C-contiguous after a transposed source, a channels_last one channels_last): a parameter left
    in the source's order would take the kernels' slower paths (the fused update, the casts)."""
    if get_array_module(like) is np:
        out = np.array(asnumpy(value), dtype=like.dtype, copy=True)
    else:
        with array_device_context((like,)):  # astype makes its copy on the current device, not the array's
            out = to_device(value, device_of(like)).astype(like.dtype)
    if out.strides == like.strides:
        return out
    with array_device_context((like,)):  # CuPy allocates and copies on the current device
        dest = get_array_module(like).empty_like(like)  # like's strides (order 'K')
        dest[...] = out
    return dest


def item(x) -> float:
    """A Python float from a 0-d (or 1-element) array: a host readback, counted as one."""
    if isinstance(x, (int, float)):
        return float(x)
    size = getattr(x, "size", 1)
    if size != 1:  # (host metadata: no readback to ask)
        raise ValueError(f"item() reads one number, but x has shape {tuple(x.shape)} ({size} elements): "
                         "index the one wanted (item(x[i])) or reduce the array first (item(x.sum()))")
    return float(asnumpy(x).reshape(-1)[0])


def synchronize(x=None):
    """Wait for the GPU, every stream of it: ``x``'s GPU for a CuPy array, the current one for
    None (a no-op for NumPy). (The legacy default stream's wait alone leaves out work on a
    non-blocking stream, such as one made current around a training loop.)"""
    if x is None or is_cupy_array(x):
        cp = cupy_module()
        if cp is not None and cuda_available():
            cp.cuda.Device(None if x is None else device_id(x)).synchronize()
