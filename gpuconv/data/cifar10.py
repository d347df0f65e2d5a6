"""Finding and loading CIFAR-10: ``load_cifar10(root=None, download=True)``.

Where the data is looked for: ``root`` (the ``--data`` argument) when given, and only there (a
typo must fail, not train on whatever a cache holds); otherwise ``$GPUCONV_DATA`` when set, and
only there, else ``~/.cache/gpuconv``. Each place may be a batches directory itself, a directory holding
``cifar-10-batches-py/``, ``cifar-10-batches-bin/`` or ``cifar-10-python.tar.gz``, or the
tarball's own path. When none holds the data, no ``root`` was given and ``download`` is true, the official tarball
is fetched into ``$GPUCONV_DATA`` (when set) or ``~/.cache/gpuconv`` and read from there.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..counter_rng import check_seed
from . import formats
from .download import CIFAR10_MD5, CIFAR10_URL, TARBALL_NAME, download_cifar10
from .errors import DataNotFoundError

_SUBDIRS = ("cifar-10-batches-py", "cifar-10-batches-bin")
_TARBALLS = (TARBALL_NAME, "cifar-10-binary.tar.gz")
_RELEASE_FILES = ("batches.meta", "batches.meta.txt", "readme.html")  # beside the batches in both releases


@dataclass(eq=False)
class Split:
    """Images uint8 (N, 3, 32, 32) and labels int64 (N,); ``batch_sizes`` are the lengths of
    the files they came from, in order (so ``train_val_split(val_batch=5)`` can hold one out)."""

    images: np.ndarray
    labels: np.ndarray
    batch_sizes: tuple = field(default=None)

    def __post_init__(self):
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise TypeError("Split.images must be a uint8 NumPy array (N, C, H, W), got "
                            f"{getattr(self.images, 'dtype', type(self.images).__name__)} "
                            f"{getattr(self.images, 'shape', '')}")
        self.labels = np.asarray(self.labels)
        if self.labels.ndim != 1 or self.labels.dtype.kind not in "iu" or len(self.labels) != len(self.images):
            raise ValueError(f"Split.labels must be integers of shape ({len(self.images)},), got "
                             f"{self.labels.dtype} {self.labels.shape}")
        # (a uint64 label past int64's range would wrap to a negative class, silently)
        if self.labels.dtype == np.uint64 and self.labels.size and int(self.labels.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"Split.labels must be class indices within int64, got {int(self.labels.max())}")
        self.labels = self.labels.astype(np.int64, copy=False)
        self.batch_sizes = (len(self.images),) if self.batch_sizes is None else tuple(map(int, self.batch_sizes))
        if sum(self.batch_sizes) != len(self.images):
            raise ValueError(f"Split.batch_sizes {self.batch_sizes} sum to {sum(self.batch_sizes)}, "
                             f"not the {len(self.images)} images")

    def __len__(self):
        return len(self.labels)

    def fingerprint(self) -> str:
        """A short hash of the images and labels, in order: the same split, read again from any
        copy of the same files, has the same one (a resumed run checks it trains on its own data)."""
        h = hashlib.blake2b(digest_size=8)
        h.update(np.ascontiguousarray(self.images).data)
        h.update(np.ascontiguousarray(self.labels, dtype="<i8").data)
        return h.hexdigest()

    def __repr__(self):
        return f"Split(images={self.images.shape}, labels={self.labels.shape}, batch_sizes={self.batch_sizes})"


@dataclass(eq=False)
class CIFAR10:
    """A loaded CIFAR-10: ``test`` is None when the source has no test batch, ``train`` when it
    holds the test batch alone (enough to evaluate, not to train)."""

    train: Split | None
    test: Split | None
    classes: list
    root: pathlib.Path
    format: str = "py"


def default_cache_dir() -> pathlib.Path:
    try:
        return pathlib.Path.home() / ".cache" / "gpuconv"
    except RuntimeError as exc:  # no home directory (an arbitrary container uid)
        raise DataNotFoundError(f"no home directory to look for CIFAR-10 in ({exc}): pass --data DIR or set "
                                "GPUCONV_DATA to the data (or to where it should be downloaded)") from None


def _search_places(root) -> list[tuple[str, pathlib.Path]]:
    # An explicit root is the only place looked at: a typo in --data must fail, not quietly
    # train on whatever the cache holds.
    if root is not None:
        return [("root argument (--data)", pathlib.Path(root).expanduser())]
    # $GPUCONV_DATA likewise: a typo there must not train on the cache's copy either (an empty
    # directory is where load_cifar10 downloads to).
    if os.environ.get("GPUCONV_DATA"):
        return [("$GPUCONV_DATA", pathlib.Path(os.environ["GPUCONV_DATA"]).expanduser())]
    return [("cache", default_cache_dir())]


def _locate(p: pathlib.Path) -> pathlib.Path | None:
    """The data source at ``p`` (a batches directory or a tarball), or None."""
    if p.is_file():
        # A file of an extracted release (root=.../data_batch_1, .../batches.meta) stands for its
        # directory; any other file is taken for a tarball (and reported as unreadable if it is not one).
        names = formats.TRAIN_BATCHES + (formats.TEST_BATCH,)
        if p.name in names or p.name in {n + ".bin" for n in names} or p.name in _RELEASE_FILES:
            return p.parent
        return None if _cifar100_at(p) else p  # a CIFAR-100 file is no tarball
    if not p.is_dir():
        return None
    tarball = next((p / t for t in _TARBALLS if (p / t).is_file()), None)
    for d in (p,) + tuple(p / s for s in _SUBDIRS):
        names = {c.name for c in d.iterdir()} if d.is_dir() else set()
        fmt = formats.detect_format(names)
        if fmt and tarball is not None and formats.is_incomplete(names, fmt):
            # (an extraction cut short, the whole release beside it: read that, not fail on the part)
            warnings.warn(f"{d} lacks {', '.join(formats.missing_batches(names, fmt))}; reading {tarball} beside it "
                          "instead (delete the directory, or extract the tarball again, to read a directory)",
                          UserWarning, stacklevel=4)
            return tarball
        if fmt:
            return d
    return tarball


def _cifar100_at(p: pathlib.Path) -> bool:
    """Whether ``p`` is (or holds, or is a file of) a CIFAR-100 release rather than CIFAR-10's."""
    if p.is_file():
        return p.name in formats.CIFAR100_FILES and _cifar100_at(p.parent)
    if not p.is_dir():
        return False
    return (formats.is_cifar100({c.name for c in p.iterdir() if c.is_file()})
            or any((p / s).is_dir() for s in formats.CIFAR100_SUBDIRS)
            or any((p / t).is_file() for t in formats.CIFAR100_TARBALLS))


def find_data_dir(root=None) -> pathlib.Path:
    """The CIFAR-10 source at ``root`` when given, else at ``$GPUCONV_DATA`` when set, else in
    ``~/.cache/gpuconv`` (one place only: a mistyped one fails instead of finding another copy).

    Returns a batches directory or a tarball path; raises DataNotFoundError naming every
    place searched when none holds the data."""
    places = _search_places(root)
    for label, p in places:
        found = _locate(p)
        if found is not None:
            return found
    label, p = places[0]
    if label != "cache" and _cifar100_at(p):  # the one place the user named holds the other release
        where = f"root={str(root)!r} (--data)" if root is not None else f"$GPUCONV_DATA={str(p)!r}"
        raise DataNotFoundError(f"{where}: {formats.CIFAR100_HINT}")
    if root is not None:
        why = "holds no CIFAR-10 data" if places[0][1].exists() else "does not exist"
        raise DataNotFoundError(
            f"root={str(root)!r} (--data) {why} (looked for cifar-10-batches-py/, cifar-10-batches-bin/ or "
            f"{TARBALL_NAME} in it). Fix: point root (--data) at the directory holding them, or leave it out to use "
            f"$GPUCONV_DATA or {default_cache_dir()} (downloading {CIFAR10_URL} there when absent)")
    searched = "; ".join(f"{label}: {p}" for label, p in places)
    raise DataNotFoundError(
        f"no CIFAR-10 data found (searched {searched}; each may hold cifar-10-batches-py/, "
        f"cifar-10-batches-bin/ or {TARBALL_NAME}). Fix: pass download=True to fetch it, or download "
        f"{CIFAR10_URL} by hand into {places[-1][1]}, or pass --data DIR / set GPUCONV_DATA=DIR")


def read_cifar10(source) -> CIFAR10:
    """Load a source found by find_data_dir: a batches directory or a tarball."""
    data, notes = _read_cifar10(source)
    for note in notes.values():
        warnings.warn(note, UserWarning, stacklevel=3)
    return data


def _read_cifar10(source) -> tuple[CIFAR10, dict]:
    """:func:`read_cifar10`'s data and, instead of its warnings, their texts by what they say is
    missing ('test', 'meta'): a caller that words them itself warns without catch_warnings, whose
    process-wide filters a thread's block would swap under another thread's."""
    source = pathlib.Path(source)
    files = formats.TarFiles(source) if source.is_file() else formats.DirFiles(source)
    try:
        fmt = formats.detect_format(files.names())
        if fmt is None and formats.is_cifar100(files.names()):
            raise DataNotFoundError(f"{source}: {formats.CIFAR100_HINT}")
        if fmt is None:
            raise DataNotFoundError(
                f"{source}: holds no CIFAR-10 batches (data_batch_1..5 [.bin], test_batch [.bin]). "
                f"Point --data at the extracted cifar-10-batches-py directory or the {TARBALL_NAME} "
                "tarball")
        train_parts, test_part, classes = formats.read_batches(files, fmt)
    finally:
        if isinstance(files, formats.TarFiles):
            files.close()
    train = (Split(np.concatenate([im for im, _ in train_parts]), np.concatenate([lb for _, lb in train_parts]),
                   batch_sizes=[len(lb) for _, lb in train_parts]) if train_parts else None)
    test = Split(*test_part) if test_part is not None else None
    notes = {}
    if test is None:
        notes["test"] = (f"{source}: no test batch; training works, and validation must be split from the "
                         "training set (gpuconv.data.train_val_split)")
    if classes is None:
        meta = "batches.meta" if fmt == "py" else "batches.meta.txt"
        notes["meta"] = f"{source}: no {meta}; using the standard CIFAR-10 class names"
        classes = list(formats.DEFAULT_CLASSES)
    return CIFAR10(train=train, test=test, classes=classes, root=source, format=fmt), notes


def load_cifar10(root=None, download=True, *, url=CIFAR10_URL, md5=CIFAR10_MD5, progress=True) -> CIFAR10:
    """Find CIFAR-10 (see the module docstring), downloading it when absent and allowed.

    ``url`` and ``md5`` name the tarball to fetch (tests point them at a local one)."""
    try:
        source = find_data_dir(root)
    except DataNotFoundError:
        env = os.environ.get("GPUCONV_DATA")
        dest = pathlib.Path(env).expanduser() if env else default_cache_dir()
        if not download or root is not None or (env and _cifar100_at(dest)):  # (CIFAR-100's: refused by name)
            raise
        source = download_cifar10(dest, url=url, md5=md5, progress=progress)
    return read_cifar10(source)


def train_val_split(split: Split, val_fraction: float | None = None, val_batch: int | None = None,
                    seed: int = 0) -> tuple[Split, Split]:
    """(train, val) from one Split: hold out the file ``data_batch_{val_batch}`` (1-based), or a
    seeded random ``val_fraction`` of the images (both parts keep the original order)."""
    if (val_fraction is None) == (val_batch is None):
        raise ValueError("train_val_split: give exactly one of val_fraction (e.g. 0.1) or val_batch "
                         f"(e.g. 5), got val_fraction={val_fraction!r}, val_batch={val_batch!r}")
    n = len(split)
    if val_batch is not None:
        nb = len(split.batch_sizes)
        if isinstance(val_batch, bool) or not isinstance(val_batch, (int, np.integer)) or not 1 <= val_batch <= nb \
                or nb < 2:
            raise ValueError(f"train_val_split: val_batch={val_batch!r} must be an integer in 1..{nb} "
                             f"(this split came from {nb} file(s): {split.batch_sizes}); use val_fraction "
                             "for a split that came from a single file")
        start = sum(split.batch_sizes[:val_batch - 1])
        val_idx = np.arange(start, start + split.batch_sizes[val_batch - 1])
        rest = [s for i, s in enumerate(split.batch_sizes) if i != val_batch - 1]
        train_idx = np.setdiff1d(np.arange(n), val_idx, assume_unique=True)
        return (Split(split.images[train_idx], split.labels[train_idx], rest),
                Split(split.images[val_idx], split.labels[val_idx]))
    # (NumPy scalars too: np.float32(0.1), a fraction read from an array, is no Python float)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (float, int, np.floating, np.integer)) \
            or not 0 < val_fraction < 1:
        raise ValueError(f"train_val_split: val_fraction={val_fraction!r} must be a number strictly "
                         "between 0 and 1, e.g. 0.1")
    n_val = min(max(int(round(n * val_fraction)), 1), n - 1)
    if n < 2:
        raise ValueError(f"train_val_split: the split has {n} image(s); at least 2 are needed")
    perm = np.random.default_rng(check_seed(seed)).permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return (Split(split.images[train_idx], split.labels[train_idx]),
            Split(split.images[val_idx], split.labels[val_idx]))
