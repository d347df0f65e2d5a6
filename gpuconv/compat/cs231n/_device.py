"""Where the CS231n functions run: the device switch, uploads, readbacks and the parameter store.

``use_device('cuda')`` (or ``'sim'``) makes every layer function take NumPy arrays, run on that
device and hand back NumPy arrays; ``use_device('cpu')`` (the default) runs them where their
arrays are (NumPy on the host, CuPy on its GPU). On ``'sim'`` a "device copy" is a separate NumPy
array and the kernels run on the host simulator, so the copy-and-cache logic is exercised, and
counted, exactly as on a GPU.

Parameters (``w``, ``b``, ``gamma``, ``beta``) keep their device copy between calls in
:data:`store`. A copy is reused only when the host array is *proved* unchanged since it was
uploaded: the same object (a weak reference, so a recycled ``id`` never matches), the same
dtype, shape and strides, and the same bytes as a host snapshot taken at upload time (compared
bit for bit, so NaNs, -0.0 and in-place edits such as a gradient check's ``x[i] += h`` are all
seen). Anything else is uploaded again. The check reads the array and its snapshot on the host
and makes no device transfer or synchronization: it is what a cache hit costs (0.3 ms for the
3.2 MB float32 hidden-layer weight of CS231n's ThreeLayerConvNet on a 2-core EPYC, about a plain
host copy of it; an upload would add the PCIe transfer and wait for the GPU's queue). The
snapshot doubles the host memory of the parameters used on the device.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

import numpy as np

from ...backend import Device, default_device, is_cupy_array, require_cupy, transfers

_mode: Device | None = None      # None: run where the arrays are


def use_device(device):
    """Run the CS231n functions on ``device`` ('cuda', 'cuda:N', 'sim') with NumPy in and out, or
    where their arrays are (``'cpu'`` or None, the default). Returns the previous setting; usable
    as ``with use_device('cuda'): ...`` too."""
    global _mode
    previous = _mode
    dev = None if device is None else Device(device)
    if dev is not None and dev.kind == "cpu":
        dev = None
    if dev is not None and dev.is_cuda:
        require_cupy()
    _mode = dev
    return _Restore(previous)


class _Restore:
    def __init__(self, previous):
        self.previous = previous

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _mode
        _mode = self.previous

    def __repr__(self):
        return f"<cs231n device was {self.previous or 'cpu'}>"


def current_device():
    """The device set by :func:`use_device` (None: the arrays' own)."""
    return _mode


@dataclass
class Stats:
    """Host/device traffic of the CS231n functions under :func:`use_device`."""

    uploads: int = 0          # arrays copied to the device (parameters included)
    param_uploads: int = 0    # of which parameters (a miss in the store)
    param_hits: int = 0       # parameters whose device copy was reused
    downloads: int = 0        # results copied back to the host

    def reset(self):
        self.uploads = self.param_uploads = self.param_hits = self.downloads = 0


stats = Stats()


def upload(a, dtype, device: Device):
    """A device copy of host array ``a`` in ``dtype`` (on 'sim', a separate NumPy array)."""
    stats.uploads += 1
    if device.is_cuda:
        cp = require_cupy()
        transfers.host_to_device += 1
        with cp.cuda.Device(device.index):
            return cp.asarray(np.asarray(a, dtype=dtype))
    return np.array(a, dtype=dtype, copy=True)


def to_inner(a, dtype, device: Device):
    """``a`` as an array of ``device`` in ``dtype`` without copying what is there already."""
    if device.is_cuda and isinstance(a, np.ndarray):
        return upload(a, dtype, device)
    return a if a.dtype == dtype else a.astype(dtype)


def download(a):
    """The host copy of a device result (a fresh array on 'sim' too)."""
    stats.downloads += 1
    if is_cupy_array(a):
        transfers.device_to_host += 1
        return a.get()
    return a


def context(device: Device | None):
    """Run ops on ``device``: 'sim' makes NumPy arrays run the kernels on the simulator."""
    if device is None:
        return contextlib.nullcontext()
    if device.kind == "sim":
        return default_device("sim")
    return require_cupy().cuda.Device(device.index)


# ----------------------------------------------------------------------------- the parameter store
@dataclass
class _Entry:
    ref: weakref.ref
    snapshot: np.ndarray
    copy: object
    dtype: np.dtype
    device: Device


class ParamStore:
    """Device copies of host parameters, reused only when the host array is proved unchanged."""

    def __init__(self):
        self._entries: dict[int, _Entry] = {}

    def __len__(self):
        return len(self._entries)

    def clear(self):
        self._entries.clear()

    def get(self, host, dtype, device: Device):
        key = id(host)
        e = self._entries.get(key)
        if (e is not None and e.ref() is host and e.dtype == dtype and e.device == device
                and _same_bytes(host, e.snapshot)):
            stats.param_hits += 1
            return e.copy
        copy = upload(host, dtype, device)
        stats.param_uploads += 1
        try:
            ref = weakref.ref(host, lambda _, key=key, entries=self._entries: entries.pop(key, None))
        except TypeError:  # not weak-referenceable: nothing proves it stays the same object
            return copy
        self._entries[key] = _Entry(ref, np.array(host, copy=True), copy, np.dtype(dtype), device)
        return copy


def _same_bytes(a, snapshot) -> bool:
    if a.dtype != snapshot.dtype or a.shape != snapshot.shape:
        return False
    if a.dtype.kind not in "fiub" or a.dtype.itemsize not in (1, 2, 4, 8):
        return bool(np.array_equal(a, snapshot))
    bits = np.dtype(f"u{a.dtype.itemsize}")
    return bool(np.array_equal(a.view(bits), snapshot.view(bits)))


store = ParamStore()
