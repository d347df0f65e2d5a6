"""Reading the two CIFAR-10 file formats from a directory or straight from a tarball.

- The Python release (``cifar-10-batches-py/``): pickled dicts, ``b'data'`` a uint8 array
  (N, 3072) of channel-major 32x32 RGB rows, ``b'labels'`` a list of N ints,
  ``batches.meta`` holding ``b'label_names'``.
- The binary release (``cifar-10-batches-bin/``): records of 3073 bytes, one label byte then
  3072 pixel bytes in the same order; ``batches.meta.txt`` holds one class name per line.

A batch's length is read from its arrays (or file size), never from the meta file's
``num_cases_per_batch``, which describes the full release, not a subset.

The tarball is read member by member with ``tarfile`` instead of being extracted: nothing
is written next to it, there is no half-extracted state to detect, and member paths are
never used as file system paths (no path-traversal exposure). Decompressing the 163 MB
tarball costs a few seconds per load, small next to a training run.
"""
from __future__ import annotations

import lzma
import pathlib
import tarfile
import zlib

import numpy as np

from .errors import CorruptDataError, DataNotFoundError
from .safe_pickle import load_pickle

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
PIXELS = 3 * 32 * 32
RECORD_BYTES = 1 + PIXELS
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
DEFAULT_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
_REFETCH = ("download or extract the CIFAR-10 release again "
            "(https://www.cs.toronto.edu/~kriz/cifar.html)")
_REFETCH_SENTENCE = "D" + _REFETCH[1:]  # not str.capitalize(): that would lower-case "CIFAR-10"


class DirFiles:
    """The files of an extracted batches directory, by base name."""

    def __init__(self, path: pathlib.Path):
        self.path = pathlib.Path(path)

    def names(self) -> set[str]:
        return {p.name for p in self.path.iterdir() if p.is_file()}

    def where(self, name: str) -> str:
        return str(self.path / name)

    def offset(self, name: str) -> int:
        return 0

    def read(self, name: str) -> bytes:
        try:
            return (self.path / name).read_bytes()
        except OSError as exc:
            raise DataNotFoundError(f"{self.where(name)}: cannot be read ({exc}); check its "
                                    f"permissions or {_REFETCH}") from exc


_TAR_SUFFIXES = (".tar", ".gz", ".tgz", ".bz2", ".tbz", ".tbz2", ".xz", ".txz")


class TarFiles:
    """The regular-file members of a tarball, by base name (any top folder); a compressed tarball's
    checksum is verified when it is opened."""

    def __init__(self, path: pathlib.Path):
        self.path = pathlib.Path(path)
        self._tar = None
        try:
            self._tar = tarfile.open(self.path, "r:*")
            self._members = {}
            for m in self._tar.getmembers():  # reads the whole index: a truncated file fails here
                if m.isfile():
                    self._members.setdefault(pathlib.PurePosixPath(m.name).name, m)
            # On to the end of the stream, where gzip/bz2/xz check their CRC: tarfile reads no further than
            # the last member, and a flipped bit inside one decompressed to wrong pixels without a word.
            while self._tar.fileobj.read(1 << 22):
                pass
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
            if self._tar is not None:  # (its file, else open for each failed load in a long session)
                self._tar.close()
            elif isinstance(exc, tarfile.ReadError) and not self.path.name.lower().endswith(_TAR_SUFFIXES):
                # (--data README.md: no tarball at all, which "delete it" must not be said of)
                raise DataNotFoundError(
                    f"{self.path}: is neither a tarball nor a file of an extracted CIFAR-10 release. Point root "
                    f"(--data) at the directory holding cifar-10-batches-py/ (or its data_batch_* files), or at "
                    f"the cifar-10-python.tar.gz tarball") from exc
            raise CorruptDataError(
                f"{self.path}: not a readable tarball ({type(exc).__name__}: {exc}); it is probably "
                f"truncated or corrupt. Delete it and {_REFETCH}") from exc

    def names(self) -> set[str]:
        return set(self._members)

    def where(self, name: str) -> str:
        return f"{self.path}:{self._members[name].name}" if name in self._members else f"{self.path}:{name}"

    def offset(self, name: str) -> int:
        """Where the member's bytes start: reading members by offset decompresses the stream once,
        where each step back would decompress it again from its start."""
        return self._members[name].offset_data

    def read(self, name: str) -> bytes:
        try:
            return self._tar.extractfile(self._members[name]).read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise CorruptDataError(f"{self.where(name)}: cannot be read from the tarball "
                                   f"({type(exc).__name__}: {exc}). Delete it and {_REFETCH}") from exc

    def close(self):
        self._tar.close()


def detect_format(names: set[str]) -> str | None:
    """'py', 'bin' or None, from the file names present."""
    if any(n in names for n in TRAIN_BATCHES + (TEST_BATCH,)):
        return "py"
    if any(n + ".bin" in names for n in TRAIN_BATCHES + (TEST_BATCH,)):
        return "bin"
    return None


CIFAR100_SUBDIRS = ("cifar-100-python", "cifar-100-binary")
CIFAR100_TARBALLS = ("cifar-100-python.tar.gz", "cifar-100-binary.tar.gz")
CIFAR100_FILES = ("train", "test", "meta", "train.bin", "test.bin")
CIFAR100_HINT = ("it holds CIFAR-100 (train, test and meta files), which load_cifar10 does not read (CIFAR-10 "
                 "only). For CIFAR-100: d = gpuconv.data.load_pickle(open('.../cifar-100-python/train', 'rb').read(), "
                 "'train'), then DeviceLoader(d[b'data'].reshape(-1, 3, 32, 32), d[b'fine_labels'], ...) and a model "
                 "built with num_classes=100")


def is_cifar100(names: set[str]) -> bool:
    """Whether the file names are those of a CIFAR-100 release (python or binary)."""
    return bool({"train", "test"} & names and "meta" in names
                or {"train.bin", "test.bin"} & names and "fine_label_names.txt" in names)


def _check_labels(labels: np.ndarray, where: str) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        bad = labels[(labels < 0) | (labels >= NUM_CLASSES)][0]
        raise CorruptDataError(f"{where}: holds label {int(bad)}, outside 0..{NUM_CLASSES - 1}; it is "
                               f"not a CIFAR-10 batch (CIFAR-100?) or it is corrupt. {_REFETCH_SENTENCE}")
    return labels


def _get(d: dict, key: str):
    # Python 2 pickles give bytes keys; a batch re-pickled on Python 3 may give str keys.
    return d[key.encode()] if key.encode() in d else d.get(key)


def parse_python_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) from a pickled batch's bytes."""
    d = load_pickle(data, where)
    if not isinstance(d, dict):
        raise CorruptDataError(f"{where}: holds a {type(d).__name__}, not the dict of a CIFAR-10 batch. "
                               f"{_REFETCH_SENTENCE}")
    images, labels = _get(d, "data"), _get(d, "labels")
    if images is None or labels is None:
        keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in d)
        hint = " (fine_labels: this is CIFAR-100)" if "fine_labels" in keys else ""
        raise CorruptDataError(f"{where}: has keys {keys}{hint}; a CIFAR-10 batch has 'data' and "
                               f"'labels'. {_REFETCH_SENTENCE}")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 \
            or images.shape[1:] not in ((PIXELS,), IMAGE_SHAPE):  # (an (N, 32, 32, 3) array would be scrambled)
        desc = (f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray)
                else type(images).__name__)
        raise CorruptDataError(f"{where}: 'data' is a {desc}; a CIFAR-10 batch holds a uint8 array of "
                               f"shape (N, 3072) (or (N, 3, 32, 32), channels first). {_REFETCH_SENTENCE}")
    try:
        raw = np.asarray(labels)
        # (a cast would truncate a label 7.7 to 7, or turn '3' into 3, without a word)
        if raw.dtype.kind not in "iuf" or (raw.dtype.kind == "f" and not np.all(raw == np.round(raw))):
            bad = raw.ravel()[:3].tolist()
            raise ValueError(f"it holds {raw.dtype} values such as {bad}")
        labels = raw.astype(np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise CorruptDataError(f"{where}: 'labels' is not a list of integers ({exc}). "
                               f"{_REFETCH_SENTENCE}") from exc
    if labels.shape[0] != images.shape[0]:
        raise CorruptDataError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels; the "
                               f"file is corrupt. {_REFETCH_SENTENCE}")
    if images.shape[0] == 0:  # (as an empty binary batch: a release's batches hold 10000 images each)
        raise CorruptDataError(f"{where}: holds no images (each batch of the release holds 10000); the file is "
                               f"corrupt or was written from an empty array. {_REFETCH_SENTENCE}")
    return np.ascontiguousarray(images.reshape((-1,) + IMAGE_SHAPE)), _check_labels(labels, where)


def parse_binary_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) from a binary batch: N records of 1 label byte + 3072 pixel bytes."""
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise CorruptDataError(
            f"{where}: {len(data)} bytes is not a whole number of {RECORD_BYTES}-byte records "
            f"({len(data) // RECORD_BYTES} full + {len(data) % RECORD_BYTES} bytes); the file is "
            f"truncated or corrupt. Delete it and {_REFETCH}")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = _check_labels(records[:, 0].astype(np.int64), where)
    return records[:, 1:].reshape((-1,) + IMAGE_SHAPE).copy(), labels


def read_classes(files, fmt: str) -> list[str] | None:
    """Class names from batches.meta / batches.meta.txt, or None when the file is absent."""
    if fmt == "py":
        if "batches.meta" not in files.names():
            return None
        where = files.where("batches.meta")
        meta = load_pickle(files.read("batches.meta"), where)
        names = _get(meta, "label_names") if isinstance(meta, dict) else None
        if not isinstance(names, list):
            raise CorruptDataError(f"{where}: has no 'label_names' list. {_REFETCH_SENTENCE}")
        names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]
    else:
        if "batches.meta.txt" not in files.names():
            return None
        where = files.where("batches.meta.txt")
        names = [line.strip() for line in files.read("batches.meta.txt").decode("utf-8", "replace")
                 .splitlines() if line.strip()]
    if len(names) != NUM_CLASSES:
        raise CorruptDataError(f"{where}: lists {len(names)} class names, CIFAR-10 has "
                               f"{NUM_CLASSES}. {_REFETCH_SENTENCE}")
    return names


def missing_batches(names: set[str], fmt: str) -> list[str]:
    """The training batch files of format ``fmt`` that ``names`` lacks."""
    suffix = ".bin" if fmt == "bin" else ""
    return [n + suffix for n in TRAIN_BATCHES if n + suffix not in names]


def is_incomplete(names: set[str], fmt: str) -> bool:
    """Whether a copy holds some training batches but not all (a copy of test_batch alone is complete)."""
    return 0 < len(missing_batches(names, fmt)) < len(TRAIN_BATCHES)


def read_batches(files, fmt: str):
    """(train parts [(images, labels), ...], test part or None, class names or None). A copy of
    the test split alone (test_batch, no data_batch_*) gives no train parts: evaluation needs
    nothing else; a copy with some training batches but not all is incomplete."""
    suffix = ".bin" if fmt == "bin" else ""
    parse = parse_binary_batch if fmt == "bin" else parse_python_batch
    names = files.names()
    missing = missing_batches(names, fmt)
    test_name = TEST_BATCH + suffix
    test_only = len(missing) == len(TRAIN_BATCHES) and test_name in names
    if missing and not test_only:
        raise DataNotFoundError(
            f"{files.path}: {', '.join(missing)} missing (found "
            f"{sorted(n for n in names if n.startswith(('data_batch', 'test_batch')))}); the copy is "
            f"incomplete. {_REFETCH_SENTENCE}")
    meta = "batches.meta" if fmt == "py" else "batches.meta.txt"
    train_names = [] if test_only else [n + suffix for n in TRAIN_BATCHES]
    wanted = train_names + [n for n in (test_name, meta) if n in names]
    parts, classes = {}, None
    for name in sorted(wanted, key=files.offset):  # in the tarball's order (the official one is not sorted)
        if name == meta:
            classes = read_classes(files, fmt)
        else:
            parts[name] = parse(files.read(name), files.where(name))
    return [parts[n] for n in train_names], parts.get(test_name), classes
