"""A restricted unpickler for CIFAR-10's Python batches.

``pickle.load`` runs whatever callable a file names, so a file downloaded from anywhere
is code. The CIFAR-10 batches (Python 2 pickles: dicts of bytes keys, lists of ints and
one uint8 array) need only NumPy's array reconstruction; ``find_class`` admits exactly
that and refuses everything else before it is imported, let alone called.
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

# (module, name) as written in the file -> the object to hand back. Both spellings of the
# array reconstructor map to the real one, so a NumPy 1 file loads on NumPy 2 without the
# numpy.core deprecation warning.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    # Scalars are not in the official files but are what np.int64 labels pickle to.
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    # Protocol 5 writes arrays as _frombuffer(bytes, dtype, shape, order): a copy, no code.
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes at protocol <= 2 as _codecs.encode(str, 'latin1'); it only
    # turns a string into bytes, so re-pickled batches load too.
    ("_codecs", "encode"): _codecs.encode,
}


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
        return RestrictedUnpickler(io.BytesIO(data), source=source, encoding="bytes").load()
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
