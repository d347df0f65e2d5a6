"""A restricted unpickler for CIFAR-10's Python batches.

``pickle.load`` runs whatever callable a file names, so a file downloaded from anywhere
is code. The CIFAR-10 batches (Python 2 pickles: dicts of bytes keys, lists of ints and
one uint8 array) need only NumPy's array reconstruction; ``find_class`` admits exactly
that, through stand-ins that build plain numeric arrays from bytes and nothing else, and
refuses everything else before it is imported, let alone called.
"""
from __future__ import annotations

import io
import pickle

import numpy as np

from .errors import CorruptDataError, UnsafePickleError

try:  # NumPy >= 2 moved the implementation to numpy._core; numpy.core is a warning shim there.
    from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core import multiarray as _multiarray, numeric as _numeric

import _codecs

class _ArrayClass:
    """What the file gets for ``numpy.ndarray``: a token that only :func:`_reconstruct` accepts.
    (The class itself would let a file call ``ndarray(shape, dtype('O'), buffer)``: an object
    array whose "pointers" are the file's bytes, which NumPy dereferences later.)"""


_ARRAY_CLASS = _ArrayClass()


class _DType:
    """What the file gets for ``numpy.dtype(spec, align, copy)``: a plain numeric dtype (bool,
    integer or float, no fields, no subarray, never object), kept apart from NumPy's own until
    used, so that the file's BUILD state (dtype.__setstate__, which can set a dtype's object
    flags) only picks the byte order."""

    def __init__(self, spec, align=False, copy=False):
        if not isinstance(spec, (str, bytes)):
            raise TypeError(f"dtype spec {spec!r}: only a type string such as 'u1' or 'i8'")
        self.dtype = _plain(np.dtype(spec.decode("ascii") if isinstance(spec, bytes) else spec))

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 5 or any(v is not None for v in state[2:5]):
            raise TypeError("a dtype state with fields or a subarray")
        order = state[1].decode("ascii") if isinstance(state[1], bytes) else state[1]
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)
        elif order not in ("|", "="):
            raise TypeError(f"a dtype byte order {order!r}")


def _plain(dt):
    if dt.kind not in "biuf" or dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        raise TypeError(f"dtype {dt}: a CIFAR-10 batch holds only numbers")
    return dt


def _real(dtype):
    if not isinstance(dtype, _DType):
        raise TypeError(f"{dtype!r} where a dtype belongs")
    return dtype.dtype


class _Array(np.ndarray):
    """The array :func:`_reconstruct` makes: its BUILD state goes through the real
    ndarray.__setstate__ with the plain dtype of a :class:`_DType` and raw bytes only."""

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5 or not isinstance(state[4], (bytes, bytearray)):
            raise TypeError("an array state other than (version, shape, dtype, fortran, raw bytes)")
        version, shape, dtype, fortran, raw = state
        np.ndarray.__setstate__(self, (version, shape, _real(dtype), bool(fortran), raw))


def _reconstruct(cls, shape, typecode):
    if cls is not _ARRAY_CLASS:
        raise TypeError("_reconstruct of something other than an ndarray")
    if not isinstance(typecode, (str, bytes)):
        raise TypeError("an array typecode other than a type string")
    _plain(np.dtype(typecode.decode("ascii") if isinstance(typecode, bytes) else typecode))
    return _multiarray._reconstruct(_Array, shape, typecode)


def _scalar(dtype, data=None):
    if not isinstance(data, bytes):
        raise TypeError("a scalar without its bytes")
    return _multiarray.scalar(_real(dtype), data)


def _frombuffer(buf, dtype, shape, order):
    return _numeric._frombuffer(buf, _real(dtype), shape, order)


# (module, name) as written in the file -> what the file gets. Both spellings of NumPy's
# modules map to the same stand-ins, so a NumPy 1 file loads on NumPy 2 without the numpy.core
# deprecation warning. Each stand-in builds only plain numeric arrays from bytes: no object
# array (whose elements are pointers) can be made, let alone freed.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    # Scalars are not in the official files but are what np.int64 labels pickle to.
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    # Protocol 5 writes arrays as _frombuffer(bytes, dtype, shape, order): a copy, no code.
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _ARRAY_CLASS,
    ("numpy", "dtype"): _DType,
    # Python 3 writes bytes at protocol <= 2 as _codecs.encode(str, 'latin1'); it only
    # turns a string into bytes, so re-pickled batches load too.
    ("_codecs", "encode"): _codecs.encode,
}


def _unwrapped(obj):
    """The loaded structure with plain ndarrays for the stand-ins' (a dtype left over is an error)."""
    if isinstance(obj, dict):
        return {k: _unwrapped(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unwrapped(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_unwrapped(v) for v in obj)
    if isinstance(obj, _Array):
        _plain(obj.dtype)  # (one that no BUILD gave a dtype keeps its typecode's, checked above)
        return obj.view(np.ndarray)
    if isinstance(obj, (_DType, _ArrayClass)):
        raise TypeError("a dtype or the array class outside an array")
    return obj


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` admits only what a CIFAR-10 batch holds."""

    def __init__(self, file, *, source: str = "<bytes>", **kwargs):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module, name):
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self.source}: the pickle asks for {module}.{name}, which a CIFAR-10 batch never "
                "holds (only NumPy arrays, lists and dicts). The file is not a CIFAR-10 batch and may "
                "be malicious; it was not run. Delete it and download the official release from "
                "https://www.cs.toronto.edu/~kriz/cifar.html")
        return obj


def load_pickle(data: bytes, source: str):
    """Unpickle ``data`` (the bytes of the file ``source``) with the restricted unpickler.

    Python 2 pickles need ``encoding='bytes'``: their str objects (dict keys, the array's
    raw buffer) come back as bytes instead of being decoded as ASCII text."""
    try:
        return _unwrapped(RestrictedUnpickler(io.BytesIO(data), source=source, encoding="bytes").load())
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError, OverflowError) as exc:
        # A truncated file ends mid-opcode (EOFError / "pickle data was truncated"); flipped
        # bytes give an unknown opcode or a malformed array state.
        what = "truncated" if isinstance(exc, EOFError) or "truncated" in str(exc) else "corrupt"
        raise CorruptDataError(
            f"{source}: the file is {what} ({len(data)} bytes; {type(exc).__name__}: {exc}). "
            "Delete it and download or extract the CIFAR-10 release again") from exc
