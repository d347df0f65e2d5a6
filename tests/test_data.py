"""CIFAR-10 reading, locating, downloading and splitting (gpuconv.data).

Real images come from the subset (``subset_dir``); tarballs and binary-format copies are
built from it under tmp_path. Small synthetic batches in the official pickle layout cover
the error paths and the download, where a 15 MB file would only slow the suite down.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import threading
import warnings

import numpy as np
import pytest

from gpuconv import data as D
from gpuconv.data import formats

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


# ----------------------------------------------------------------------------- helpers
def write_batch(path, images, labels, protocol=2, **extra):
    d = {b"batch_label": b"synthetic", b"labels": [int(v) for v in labels],
         b"data": np.asarray(images, dtype=np.uint8).reshape(len(images), -1)}
    d.update(extra)
    path.write_bytes(pickle.dumps(d, protocol=protocol))


def write_meta(path, names=formats.DEFAULT_CLASSES):
    path.write_bytes(pickle.dumps({b"num_cases_per_batch": 10000, b"num_vis": 3072,
                                   b"label_names": [n.encode() for n in names]}, protocol=2))


def tiny_dir(root, per_batch=4, test=True, seed=0):
    """A cifar-10-batches-py directory of random images: 5 training batches (+ test_batch)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in TRAIN + (["test_batch"] if test else []):
        write_batch(d / name, rng.integers(0, 256, (per_batch, 3, 32, 32)), rng.integers(0, 10, per_batch))
    write_meta(d / "batches.meta")
    return d


def make_tarball(batches_dir, path, top="cifar-10-batches-py"):
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for f in sorted(batches_dir.iterdir()):
            tar.add(f, arcname=f"{top}/{f.name}")
    return path


def make_binary_dir(cifar, root, test=None):
    """The binary release's layout (3073-byte records) holding the arrays of ``cifar``."""
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    start = 0
    parts = [(f"{n}.bin", slice(start := sum(cifar.train.batch_sizes[:i]), start + s))
             for i, (n, s) in enumerate(zip(TRAIN, cifar.train.batch_sizes))]
    for name, sl in parts:
        rec = np.concatenate([cifar.train.labels[sl, None].astype(np.uint8),
                              cifar.train.images[sl].reshape(-1, 3072)], axis=1)
        (d / name).write_bytes(rec.tobytes())
    if test is not None:
        rec = np.concatenate([test.labels[:, None].astype(np.uint8), test.images.reshape(-1, 3072)], axis=1)
        (d / "test_batch.bin").write_bytes(rec.tobytes())
    (d / "batches.meta.txt").write_text("\n".join(cifar.classes) + "\n\n")
    return d


def load_quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return D.load_cifar10(*args, **kwargs)


def assert_same(a, b):
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.train.labels, b.train.labels)
    assert a.train.batch_sizes == b.train.batch_sizes and a.classes == b.classes


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $GPUCONV_DATA and an empty home, so only what a test sets up can be found."""
    monkeypatch.delenv("GPUCONV_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.fixture(scope="module")
def _memo():
    return {}


@pytest.fixture
def subset(subset_dir, _memo):
    if "subset" not in _memo:
        _memo["subset"] = load_quiet(subset_dir, download=False)
    return _memo["subset"]


# ----------------------------------------------------------------------------- the real subset
def test_subset_loads_with_shapes_labels_and_balance(subset_dir, isolated):
    with pytest.warns(UserWarning, match="no test batch.*validation must be split"):
        c = D.load_cifar10(subset_dir, download=False)
    assert c.train.images.shape == (5170, 3, 32, 32) and c.train.images.dtype == np.uint8
    assert c.train.labels.shape == (5170,) and c.train.labels.dtype == np.int64
    assert c.test is None and c.format == "py" and c.root == subset_dir
    assert c.classes[0] == "airplane" and c.classes[9] == "truck" and len(c.classes) == 10
    counts = np.bincount(c.train.labels, minlength=10)
    assert counts.sum() == 5170 and len(counts) == 10 and counts.min() >= 450 and counts.max() <= 600
    # batches.meta says 10000 per batch; the lengths come from the arrays instead.
    assert c.train.batch_sizes == (1102, 1017, 1017, 1017, 1017)
    assert c.train.images.std() > 40  # real pictures, not zeros


def test_root_may_be_the_parent_or_the_batches_dir(subset_dir, subset, isolated):
    assert_same(load_quiet(subset_dir.parent, download=False), subset)
    assert D.find_data_dir(subset_dir.parent) == subset_dir
    assert D.find_data_dir(str(subset_dir)) == subset_dir
    assert D.find_data_dir(subset_dir / "data_batch_1") == subset_dir
    # the release's other files too (not taken for a corrupt tarball to delete)
    assert D.find_data_dir(subset_dir / "batches.meta") == subset_dir
    assert_same(load_quiet(subset_dir / "batches.meta", download=False), subset)


def test_tarball_loads_identically(subset_dir, subset, isolated):
    tar = make_tarball(subset_dir, isolated / "cifar-10-python.tar.gz")
    assert D.find_data_dir(isolated) == tar
    assert_same(load_quiet(isolated, download=False), subset)
    c = load_quiet(tar, download=False)
    assert_same(c, subset)
    assert c.root == tar and not (isolated / "cifar-10-batches-py").exists()  # read, not extracted


def test_binary_release_loads_identically(subset, isolated):
    test = D.Split(subset.train.images[:100], subset.train.labels[:100])
    d = make_binary_dir(subset, isolated / "bin", test=test)
    for root in (d, d.parent):
        c = D.load_cifar10(root, download=False)  # has a test batch: no warning expected
        assert c.format == "bin"
        assert_same(c, subset)
        np.testing.assert_array_equal(c.test.images, test.images)
        np.testing.assert_array_equal(c.test.labels, test.labels)


def test_python_dir_with_test_batch(subset_dir, subset, isolated):
    d = isolated / "cifar-10-batches-py"
    d.mkdir()
    for f in subset_dir.iterdir():
        (d / f.name).symlink_to(f)
    (d / "test_batch").symlink_to(subset_dir / "data_batch_5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete directory loads without any warning
        c = D.load_cifar10(isolated, download=False)
    np.testing.assert_array_equal(c.test.images, subset.train.images[-1017:])
    np.testing.assert_array_equal(c.test.labels, subset.train.labels[-1017:])


# ----------------------------------------------------------------------------- where data is found
def test_one_place_searched_root_else_env_else_cache(isolated, monkeypatch):
    a, b, home = isolated / "a", isolated / "b", isolated / "home"
    da, db = tiny_dir(a, seed=1), tiny_dir(b, seed=2)
    dc = tiny_dir(home / ".cache" / "gpuconv", seed=3)
    monkeypatch.setenv("GPUCONV_DATA", str(b))
    assert D.find_data_dir(a) == da
    assert D.find_data_dir() == db
    monkeypatch.setenv("GPUCONV_DATA", str(isolated / "tpyo"))  # a typo: not the cache's copy instead
    with pytest.raises(D.DataNotFoundError, match=r"\$GPUCONV_DATA"):
        D.find_data_dir()
    monkeypatch.delenv("GPUCONV_DATA")
    assert D.find_data_dir() == dc
    np.testing.assert_array_equal(D.load_cifar10(download=False).train.images,
                                  D.read_cifar10(dc).train.images)


def test_explicit_root_without_data_fails_instead_of_falling_back(isolated, monkeypatch):
    tiny_dir(isolated / "env")
    (isolated / "empty").mkdir()
    monkeypatch.setenv("GPUCONV_DATA", str(isolated / "env"))
    with pytest.raises(D.DataNotFoundError, match=r"holds no CIFAR-10 data.*point root \(--data\)"):
        D.find_data_dir(isolated / "empty")
    # The argument as a notebook's load_cifar10(root) names it, and as the command line does
    with pytest.raises(D.DataNotFoundError, match=rf"^root='{isolated / 'typo'}' \(--data\) does not exist"):
        D.load_cifar10(isolated / "typo", download=True)


def test_nothing_found_names_every_place_and_the_fix(isolated):
    (isolated / "empty").mkdir()
    with pytest.raises(D.DataNotFoundError) as err:
        D.load_cifar10(isolated / "empty", download=False)
    msg = str(err.value)
    assert str(isolated / "empty") in msg and str(isolated / "home" / ".cache" / "gpuconv") in msg
    assert "--data" in msg and D.CIFAR10_URL in msg and "GPUCONV_DATA" in msg
    with pytest.raises(D.DataNotFoundError) as err:
        D.load_cifar10(download=False)
    msg = str(err.value)
    assert str(isolated / "home" / ".cache" / "gpuconv") in msg and D.CIFAR10_URL in msg
    assert isinstance(err.value, FileNotFoundError)


# ----------------------------------------------------------------------------- damaged files
def test_truncated_batch_names_the_file(subset_dir, isolated):
    d = isolated / "cifar-10-batches-py"
    d.mkdir()
    for f in subset_dir.iterdir():
        (d / f.name).symlink_to(f)
    (d / "data_batch_2").unlink()
    (d / "data_batch_2").write_bytes((subset_dir / "data_batch_2").read_bytes()[:100_000])
    with pytest.raises(D.CorruptDataError, match=r"data_batch_2: the file is truncated.*download"):
        load_quiet(d, download=False)


@pytest.mark.parametrize("case, match", [
    ("garbage", "data_batch_3: the file is corrupt"),
    ("cifar100", "data_batch_3: has keys .*fine_labels: this is CIFAR-100"),
    ("label_range", "data_batch_3: holds label 12, outside 0..9"),
    ("length", "data_batch_3: 4 images but 3 labels"),
    ("float_data", "data_batch_3: 'data' is a float64 array"),
    ("not_dict", "data_batch_3: holds a list"),
    ("channels_last", r"data_batch_3: 'data' is a uint8 array of shape \(4, 32, 32, 3\)"),
    ("missing", "data_batch_3 missing"),
    # fractional labels were truncated to integers (7.7 read as class 7) without a word
    ("float_labels", r"data_batch_3: 'labels' is not a list of integers \(it holds float64 values such as \[0.0, 1.5"),
    ("str_labels", r"data_batch_3: 'labels' is not a list of integers \(it holds <U1 values"),
    # a batch of no images (as an empty binary batch is refused): a loader over it failed later, naming no file
    ("no_images", r"data_batch_3: holds no images"),
])
def test_damaged_batches(isolated, case, match):
    d = tiny_dir(isolated)
    p, imgs = d / "data_batch_3", np.zeros((4, 3072), np.uint8)
    if case == "garbage":
        p.write_bytes(b"this is not a pickle at all\n" * 10)
    elif case == "cifar100":
        p.write_bytes(pickle.dumps({b"data": imgs, b"fine_labels": [0] * 4}, protocol=2))
    elif case == "label_range":
        write_batch(p, imgs, [0, 1, 12, 3])
    elif case == "length":
        write_batch(p, imgs, [0, 1, 2])
    elif case == "float_data":
        p.write_bytes(pickle.dumps({b"data": imgs.astype(float), b"labels": [0] * 4}, protocol=2))
    elif case == "float_labels":
        p.write_bytes(pickle.dumps({b"data": imgs, b"labels": [0.0, 1.5, 2.0, 3.0]}, protocol=2))
    elif case == "str_labels":
        p.write_bytes(pickle.dumps({b"data": imgs, b"labels": ["0", "1", "2", "3"]}, protocol=2))
    elif case == "not_dict":
        p.write_bytes(pickle.dumps([imgs], protocol=2))
    elif case == "no_images":  # (protocol 2 pickles no pixel bytes as a bytes() call, which is refused)
        p.write_bytes(pickle.dumps({b"data": imgs[:0], b"labels": []}, protocol=4))
    elif case == "channels_last":  # re-pickled as (N, H, W, C): refused, not read as scrambled pixels
        p.write_bytes(pickle.dumps({b"data": imgs.reshape(4, 32, 32, 3), b"labels": [0] * 4}, protocol=2))
    else:
        p.unlink()
    err = D.DataNotFoundError if case == "missing" else D.CorruptDataError
    with pytest.raises(err, match=match) as info:
        D.load_cifar10(d, download=False)
    if case != "garbage":  # every message ends with what to do, spelled as the release is named
        assert "Download or extract the CIFAR-10 release again" in str(info.value)


def test_the_cifar100_release_is_refused_saying_so_and_how_to_read_it(isolated, monkeypatch):
    """CIFAR-100's python release (cifar-100-python/: train, test, meta, with 'fine_labels') under
    each name a user may give: the folder above it, the folder, the tarball, a file of it, and
    $GPUCONV_DATA naming a folder. Each failed as 'no CIFAR-10 data', its 'train' file was called
    a corrupt tarball to delete, and $GPUCONV_DATA's folder had CIFAR-10 downloaded into it."""
    d = isolated / "data" / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", 8), ("test", 4)):
        (d / name).write_bytes(pickle.dumps({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                             b"fine_labels": rng.integers(0, 100, n).tolist(),
                                             b"coarse_labels": rng.integers(0, 20, n).tolist()}, protocol=2))
    (d / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"apple"] * 100}, protocol=2))
    tarball = make_tarball(d, isolated / "data" / "cifar-100-python.tar.gz", top="cifar-100-python")
    for root in (d.parent, d, tarball, d / "train"):
        with pytest.raises(D.DataNotFoundError, match=r"it holds CIFAR-100 .*d\[b'fine_labels'\].*num_classes=100"):
            D.load_cifar10(root, download=False)
    import gpuconv.data.cifar10 as cifar10_module
    monkeypatch.setattr(cifar10_module, "download_cifar10", lambda *a, **k: pytest.fail("CIFAR-10 was downloaded"))
    for env in (d.parent, d):
        monkeypatch.setenv("GPUCONV_DATA", str(env))
        with pytest.raises(D.DataNotFoundError, match=r"^\$GPUCONV_DATA='.*': it holds CIFAR-100 .*num_classes=100"):
            D.load_cifar10()
    monkeypatch.delenv("GPUCONV_DATA")
    # the recipe the message gives works
    batch = D.load_pickle((d / "train").read_bytes(), "train")
    loader = D.DeviceLoader(batch[b"data"].reshape(-1, 3, 32, 32), batch[b"fine_labels"], 4)
    assert next(iter(loader))[0].shape == (4, 3, 32, 32)
    # CIFAR-10 beside it is still found
    c10 = tiny_dir(isolated / "data")
    assert len(load_quiet(isolated / "data", download=False).train) == 20
    tarball10 = make_tarball(c10, isolated / "data" / "cifar-10-python.tar.gz")
    assert len(load_quiet(tarball10, download=False).train) == 20


def test_truncated_binary_batch(subset, isolated):
    d = make_binary_dir(subset, isolated)
    raw = (d / "data_batch_4.bin").read_bytes()
    (d / "data_batch_4.bin").write_bytes(raw[:-1000])
    with pytest.raises(D.CorruptDataError, match=r"data_batch_4\.bin: .*3073-byte records.*truncated"):
        load_quiet(d, download=False)


def test_tarball_members_are_read_in_the_archives_order(isolated, monkeypatch):
    """The official tarball holds data_batch_4, readme.html, test_batch, data_batch_3, batches.meta,
    data_batch_2, data_batch_5, data_batch_1: read in name order, each step back decompressed the
    stream again from its start (4.5 passes over the 185 MB of a full release instead of 2)."""
    d = tiny_dir(isolated / "src")
    tar = isolated / "cifar-10-python.tar.gz"
    with tarfile.open(tar, "w:gz", compresslevel=1) as t:
        for name in ["data_batch_4", "test_batch", "data_batch_3", "batches.meta", "data_batch_2", "data_batch_5",
                     "data_batch_1"]:
            t.add(d / name, arcname=f"cifar-10-batches-py/{name}")
    offsets = []
    extract = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile",
                        lambda self, m: offsets.append(m.offset_data) or extract(self, m))
    assert_same(load_quiet(tar, download=False), load_quiet(d, download=False))
    assert len(offsets) == 7 and offsets == sorted(offsets)


def test_truncated_and_empty_tarballs(subset_dir, isolated):
    tar = make_tarball(subset_dir, isolated / "full.tar.gz")
    cut = isolated / "cut" / "cifar-10-python.tar.gz"
    cut.parent.mkdir()
    cut.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(D.CorruptDataError, match=f"{cut}.*truncated or corrupt"):
        load_quiet(cut.parent, download=False)
    empty = isolated / "other.tar.gz"
    with tarfile.open(empty, "w:gz") as t:
        t.add(subset_dir / "batches.meta", arcname="x/batches.meta")
    with pytest.raises(D.DataNotFoundError, match="holds no CIFAR-10 batches"):
        D.load_cifar10(empty, download=False)
    # any other file was called a corrupt tarball to delete (--data README.md)
    readme = isolated / "README.md"
    readme.write_text("# my data\n")
    with pytest.raises(D.DataNotFoundError, match=r"README.md: is neither a tarball nor a file of an extracted "
                                                  r"CIFAR-10 release. Point root \(--data\) at") as info:
        D.load_cifar10(readme, download=False)
    assert "Delete" not in str(info.value) and readme.exists()


@pytest.mark.filterwarnings("ignore:.*no test batch:UserWarning")
def test_a_half_extracted_directory_beside_its_tarball_reads_the_tarball(subset_dir, isolated, subset):
    """An extraction cut short left cifar-10-batches-py/ with data_batch_1 alone next to the whole
    tarball, and the load failed on the directory's missing batches."""
    root = isolated / "half"
    (root / "cifar-10-batches-py").mkdir(parents=True)
    shutil.copy(subset_dir / "data_batch_1", root / "cifar-10-batches-py")
    make_tarball(subset_dir, root / "cifar-10-python.tar.gz")
    with pytest.warns(UserWarning, match=r"lacks data_batch_2, .*data_batch_5; reading .*cifar-10-python.tar.gz beside it"):
        c = D.load_cifar10(root, download=False)
    assert c.root == root / "cifar-10-python.tar.gz" and c.train.fingerprint() == subset.train.fingerprint()


def test_a_tarball_with_a_flipped_bit_is_corrupt_not_loaded(subset_dir, isolated):
    """gzip's CRC covers the whole stream and is checked at its end, which tarfile never reads to:
    a flipped bit inside a member decompressed to wrong pixels without a word."""
    tar = make_tarball(subset_dir, isolated / "full.tar.gz")
    good = tar.read_bytes()
    bad = isolated / "bad" / "cifar-10-python.tar.gz"
    bad.parent.mkdir()
    for pos in (len(good) // 3, len(good) // 2, len(good) - 100):
        flipped = bytearray(good)
        flipped[pos] ^= 0x10
        bad.write_bytes(bytes(flipped))
        with pytest.raises(D.CorruptDataError, match=f"{bad}.*truncated or corrupt"):
            load_quiet(bad.parent, download=False)


def test_meta_problems(isolated):
    d = tiny_dir(isolated)
    write_meta(d / "batches.meta", names=["a"] * 9)
    with pytest.raises(D.CorruptDataError, match="batches.meta: lists 9 class names"):
        D.load_cifar10(d, download=False)
    (d / "batches.meta").unlink()
    with pytest.warns(UserWarning, match="no batches.meta; using the standard"):
        assert D.load_cifar10(d, download=False).classes == formats.DEFAULT_CLASSES


# ----------------------------------------------------------------------------- restricted unpickler
class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("target", ["system", "eval"])
def test_crafted_pickle_is_refused_not_run(isolated, protocol, target):
    marker = isolated / "pwned"
    func, arg = (os.system, f"touch {marker}") if target == "system" else (eval, f"open({str(marker)!r}, 'w')")
    payload = pickle.dumps({b"data": _Evil(func, arg), b"labels": []}, protocol=protocol)
    with pytest.raises(D.UnsafePickleError, match="not a CIFAR-10 batch and may be malicious"):
        D.load_pickle(payload, "evil.pkl")
    d = tiny_dir(isolated / "data")
    (d / "data_batch_1").write_bytes(payload)
    asks = r"data_batch_1: the pickle asks for (posix|os|builtins|__builtin__)\."
    with pytest.raises(pickle.UnpicklingError, match=asks):
        D.load_cifar10(d, download=False)
    assert not marker.exists()


_OBJECT_ARRAYS = """
import pickle, sys, numpy as np
from numpy._core import multiarray as ma
from gpuconv.data import load_pickle
from gpuconv.data.errors import CorruptDataError
class Direct:  # ndarray(shape, dtype('O'), buffer): "pointers" from the file's bytes
    def __reduce__(self): return (np.ndarray, ((1,), np.dtype('O'), b'A' * 8))
class Called:  # the array class called, even with a plain dtype
    def __reduce__(self): return (np.ndarray, ((8,), np.dtype('u1'), b'A' * 8))
class Rebuilt:  # _reconstruct, then an object dtype in the BUILD state
    def __reduce__(self): return (ma._reconstruct, (np.ndarray, (0,), b'b'), (1, (1,), np.dtype('O'), False, b'A' * 8))
class Scalar:
    def __reduce__(self): return (ma.scalar, (np.dtype('O'), b'A' * 8))
class Unbuilt:  # _reconstruct with an object typecode and no BUILD: an array of None
    def __reduce__(self): return (ma._reconstruct, (np.ndarray, (2,), b'O'))
class Flagged:  # a void dtype given object flags by its BUILD state
    def __reduce__(self): return (np.dtype, ('V8', False, True), (3, '|', None, None, None, 8, 1, 63))
refused = 0
for cls in (Direct, Called, Rebuilt, Unbuilt, Scalar, Flagged):
    for protocol in (2, 5):
        payload = pickle.dumps({b'data': np.zeros((1, 3072), np.uint8), b'labels': cls()}, protocol=protocol)
        try:
            got = load_pickle(payload, 'evil')
        except CorruptDataError:
            refused += 1
        else:
            np.asarray(got[b'labels'], np.int64)  # what the loader does next (it crashed here)
print('refused', refused)
"""


def test_no_object_array_can_be_built_from_a_batch():
    """Pickles that build object arrays (elements are pointers, here the file's own bytes, which
    NumPy dereferences and frees) through the admitted NumPy names: all refused as corrupt, in a
    subprocess, since what they do otherwise is crash the interpreter."""
    out = subprocess.run([sys.executable, "-c", _OBJECT_ARRAYS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["refused", "12"], (out.returncode, out.stdout, out.stderr)


@pytest.mark.parametrize("protocol", [2, 3, 5])
def test_restricted_unpickler_reads_repickled_batches(protocol):
    images = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    d = D.load_pickle(pickle.dumps({"data": images, "labels": np.array([3, 4])}, protocol=protocol), "x")
    np.testing.assert_array_equal(d["data"], images)
    np.testing.assert_array_equal(d["labels"], [3, 4])


# ----------------------------------------------------------------------------- download
def _tiny_tarball(root):
    src = tiny_dir(root / "src")
    tar = make_tarball(src, root / "served.tar.gz")
    return tar, hashlib.md5(tar.read_bytes()).hexdigest()


def test_download_unreachable_url(isolated):
    dest = isolated / "dest"
    url = "http://127.0.0.1:9/cifar-10-python.tar.gz"
    with pytest.raises(D.DownloadError) as err:
        D.download_cifar10(dest, url=url, progress=False, timeout=5)
    msg = str(err.value)
    assert url in msg and "failed" in msg and str(dest / "cifar-10-python.tar.gz") in msg and "--data" in msg
    assert list(dest.iterdir()) == []  # no partial file left


def test_download_bad_md5_is_discarded(isolated):
    tar, digest = _tiny_tarball(isolated)
    dest = isolated / "dest"
    with pytest.raises(D.DownloadError, match=f"MD5 {digest}, not the expected {D.CIFAR10_MD5}") as err:
        D.download_cifar10(dest, url=tar.as_uri(), progress=False)
    assert tar.as_uri() in str(err.value) and "by hand" in str(err.value)
    assert list(dest.iterdir()) == []


def test_download_success_from_file_url(isolated):
    tar, digest = _tiny_tarball(isolated)
    got = D.download_cifar10(isolated / "dest", url=tar.as_uri(), md5=digest, progress=True)
    assert got == isolated / "dest" / "cifar-10-python.tar.gz" and got.read_bytes() == tar.read_bytes()
    # Already there with the right MD5: reused without touching the (now unreachable) URL.
    assert D.download_cifar10(isolated / "dest", url="http://127.0.0.1:9/x", md5=digest) == got


@pytest.fixture
def http_server(isolated):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(isolated))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_load_downloads_into_gpuconv_data_over_http(isolated, http_server, monkeypatch):
    tar, digest = _tiny_tarball(isolated)
    target = isolated / "store"
    monkeypatch.setenv("GPUCONV_DATA", str(target))
    with pytest.raises(D.DownloadError, match="HTTP 404"):
        D.load_cifar10(url=f"{http_server}/missing.tar.gz", md5=digest, progress=False)
    c = D.load_cifar10(url=f"{http_server}/{tar.name}", md5=digest, progress=False)
    assert c.root == target / "cifar-10-python.tar.gz" and len(c.train) == 20 and len(c.test) == 4
    np.testing.assert_array_equal(c.train.images, D.read_cifar10(isolated / "src" / "cifar-10-batches-py").train.images)
    assert D.load_cifar10(url="http://127.0.0.1:9/", md5=digest).root == c.root  # found: no download


def test_load_downloads_into_the_cache_by_default(isolated):
    tar, digest = _tiny_tarball(isolated)
    c = D.load_cifar10(url=tar.as_uri(), md5=digest, progress=False)
    assert c.root == isolated / "home" / ".cache" / "gpuconv" / "cifar-10-python.tar.gz"


# ----------------------------------------------------------------------------- splits
def test_train_val_split_by_batch(subset):
    train, val = D.train_val_split(subset.train, val_batch=5)
    assert len(val) == 1017 and len(train) == 4153 and train.batch_sizes == (1102, 1017, 1017, 1017)
    np.testing.assert_array_equal(val.images, subset.train.images[-1017:])
    np.testing.assert_array_equal(train.labels, subset.train.labels[:-1017])
    _, val1 = D.train_val_split(subset.train, val_batch=1)
    np.testing.assert_array_equal(val1.labels, subset.train.labels[:1102])


def test_train_val_split_by_fraction(subset):
    s = subset.train
    train, val = D.train_val_split(s, val_fraction=0.1, seed=3)
    assert len(val) == 517 and len(train) == 4653
    rows = lambda split: {r.tobytes() for r in split.images.reshape(len(split), -1)}  # noqa: E731
    assert rows(train).isdisjoint(rows(val)) and rows(train) | rows(val) == rows(s)
    again = D.train_val_split(s, val_fraction=0.1, seed=3)[1]
    other = D.train_val_split(s, val_fraction=0.1, seed=4)[1]
    np.testing.assert_array_equal(again.images, val.images)
    assert not np.array_equal(other.labels, val.labels)
    # a NumPy fraction (np.float32(0.1) read from an array) was refused as "not a number"
    np.testing.assert_array_equal(D.train_val_split(s, val_fraction=np.float32(0.1), seed=3)[1].images, val.images)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one of"), ({"val_fraction": 0.1, "val_batch": 5}, "exactly one of"),
    ({"val_fraction": 1.5}, "strictly between 0 and 1"), ({"val_fraction": 0}, "strictly between"),
    ({"val_batch": 6}, r"integer in 1\.\.5"), ({"val_batch": True}, r"integer in 1\.\.5"),
])
def test_train_val_split_errors(subset, kwargs, match):
    with pytest.raises(ValueError, match=match):
        D.train_val_split(subset.train, **kwargs)


def test_split_validation():
    with pytest.raises(TypeError, match="uint8"):
        D.Split(np.zeros((2, 3, 32, 32), np.float32), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        D.Split(np.zeros((2, 3, 32, 32), np.uint8), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="sum to 3"):
        D.Split(np.zeros((2, 3, 32, 32), np.uint8), np.zeros(2, np.int64), batch_sizes=(1, 2))
    single = D.Split(np.zeros((2, 3, 32, 32), np.uint8), np.zeros(2, np.int32))
    assert single.labels.dtype == np.int64 and single.batch_sizes == (2,) and len(single) == 2
    with pytest.raises(ValueError, match=r"class indices within int64, got 9223372036854775808"):  # (wrapped to -2**63)
        D.Split(np.zeros((1, 3, 32, 32), np.uint8), np.array([2**63], np.uint64))
    with pytest.raises(ValueError, match="single file"):
        D.train_val_split(single, val_batch=1)
