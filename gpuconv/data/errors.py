"""The data package's errors: each says which file or URL, what is wrong and what to do.

They subclass the built-in exception a caller would already catch (FileNotFoundError,
ValueError, RuntimeError), so ``except ValueError`` around a load keeps working.
"""
from __future__ import annotations

import pickle


class DataError(Exception):
    """Base class of every error raised by gpuconv.data."""


class DataNotFoundError(DataError, FileNotFoundError):
    """No CIFAR-10 data where it was looked for, or a required batch file is missing."""


class CorruptDataError(DataError, ValueError):
    """A batch file exists but is truncated, corrupt or not a CIFAR-10 batch."""


class UnsafePickleError(CorruptDataError, pickle.UnpicklingError):
    """A pickle asked for something a CIFAR-10 batch never holds (refused, never run)."""


class DownloadError(DataError, RuntimeError):
    """Fetching the CIFAR-10 tarball failed (network, HTTP status, size or MD5)."""
