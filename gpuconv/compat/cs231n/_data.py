"""The assignment's CIFAR-10 readers (``data_utils.py``): ``load_CIFAR_batch``, ``load_CIFAR10``,
``get_CIFAR10_data``, on gpuconv.data's reading.

None of them assumes 10,000 images per batch (the assignment's ``load_CIFAR_batch`` does): a
batch's length is its arrays' length, so the 5,170-image subset used in CI reads like the full
release. To point a student's own ``data_utils`` at such a subset without editing it, replace
its batch reader, which its ``load_CIFAR10`` calls through the module's globals::

    import cs231n.data_utils, gpuconv.compat.cs231n as g
    cs231n.data_utils.load_CIFAR_batch = g.load_CIFAR_batch
"""
from __future__ import annotations

import os
import pathlib
import pickle
import warnings

import numpy as np


def load_CIFAR_batch(filename):  # noqa: N802 (the assignment's name)
    """``X, Y`` of one CIFAR-10 pickle batch: X float64 (N, 32, 32, 3), Y int (N,), N from the file."""
    with open(filename, "rb") as f:
        datadict = pickle.load(f, encoding="latin1")
    data = datadict["data"] if "data" in datadict else datadict[b"data"]
    labels = datadict["labels"] if "labels" in datadict else datadict[b"labels"]
    X, Y = np.asarray(data), np.array(labels)  # noqa: N806
    if X.ndim != 2 or X.shape[1] != 3072 or len(X) != len(Y):
        raise ValueError(f"{filename}: a CIFAR-10 batch holds N x 3072 uint8 pixels and N labels; got data of shape "
                         f"{X.shape} and {len(Y)} labels")
    return X.reshape(len(X), 3, 32, 32).transpose(0, 2, 3, 1).astype("float"), Y


def load_CIFAR10(ROOT):  # noqa: N802,N803 (the assignment's names)
    """``Xtr, Ytr, Xte, Yte`` from the ``cifar-10-batches-py`` directory ``ROOT``: images as
    float64 (N, 32, 32, 3) channels-last arrays, labels as int64 (N,), as the assignment returns.

    Reading is gpuconv.data's. When ``ROOT`` has no ``test_batch`` (the CI subset), ``Xte`` and
    ``Yte`` are empty, of shapes (0, 32, 32, 3) and (0,), and a UserWarning says so: hold out test
    images from ``Xtr`` in that case."""
    return _load_cifar10(ROOT, stacklevel=3)


def _load_cifar10(ROOT, stacklevel):  # noqa: N803
    # Warnings go straight to the caller's line (``stacklevel``), not through catch_warnings: its
    # filters are process-wide, and a data thread's block ending inside another thread's left every
    # later warning of the process recorded into a list nobody reads.
    from ...data import find_data_dir
    from ...data.cifar10 import _read_cifar10

    root = pathlib.Path(ROOT).expanduser().resolve()
    missing = FileNotFoundError(f"load_CIFAR10: {root} holds no CIFAR-10 batches; pass the cifar-10-batches-py "
                                "directory (the extracted cifar-10-python.tar.gz)")
    try:
        source = pathlib.Path(find_data_dir(root)).resolve() if root.exists() else None
    except FileNotFoundError as exc:
        raise missing from exc
    # The assignment reads ROOT or fails: never gpuconv's fallbacks ($GPUCONV_DATA, the cache).
    if source is None or not (source == root or root in source.parents):
        raise missing
    data, notes = _read_cifar10(source)
    if "meta" in notes:  # (the missing test batch has its own warning below)
        warnings.warn(notes["meta"], UserWarning, stacklevel=stacklevel)
    if data.train is None:
        raise FileNotFoundError(f"load_CIFAR10: {root} holds test_batch alone; the assignment trains on "
                                "data_batch_1..5: download the full cifar-10-python release into it")
    xtr, ytr = _channels_last(data.train.images), data.train.labels
    if data.test is None:
        warnings.warn(f"load_CIFAR10: {root} has no test_batch, so Xte and Yte are empty (shapes (0, 32, 32, 3) "
                      f"and (0,)); hold out test images from the {len(ytr)} training images instead",
                      UserWarning, stacklevel=stacklevel)
        return xtr, ytr, np.empty((0,) + xtr.shape[1:]), np.empty((0,), dtype=np.int64)
    return xtr, ytr, _channels_last(data.test.images), data.test.labels


def _channels_last(images):
    # One conversion, C-contiguous (N, H, W, C) float64, as CS231n's astype("float") yields.
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1), dtype=np.float64)


def get_CIFAR10_data(num_training=49000, num_validation=1000, num_test=1000, subtract_mean=True, *,  # noqa: N802
                     cifar10_dir=None):
    """The assignment's data dict: ``X_train``, ``y_train``, ``X_val``, ``y_val``, ``X_test``,
    ``y_test``, images as float64 (N, 3, 32, 32) with the training mean image subtracted.

    Validation is the ``num_validation`` training images after the first ``num_training``, as in
    the assignment. ``cifar10_dir`` (an addition; the assignment hard-codes
    ``cs231n/datasets/cifar-10-batches-py``) defaults to where gpuconv finds the data:
    ``$GPUCONV_DATA`` or ``~/.cache/gpuconv`` (downloading it there when absent). A source
    without ``test_batch`` gives empty test arrays and a warning, as :func:`load_CIFAR10` does."""
    from ...data import default_cache_dir, download_cifar10, find_data_dir

    for name, value in (("num_training", num_training), ("num_validation", num_validation), ("num_test", num_test)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"get_CIFAR10_data: {name} must be an integer >= 0, got {value!r}")
    if cifar10_dir is None:
        try:
            cifar10_dir = find_data_dir()
        except FileNotFoundError:  # fetch the official tarball where gpuconv looks next time
            env = os.environ.get("GPUCONV_DATA")
            cifar10_dir = download_cifar10(pathlib.Path(env).expanduser() if env else default_cache_dir())
        if cifar10_dir.is_file():  # a tarball: load_CIFAR10 takes the directory holding it
            cifar10_dir = cifar10_dir.parent
    X_train, y_train, X_test, y_test = _load_cifar10(cifar10_dir, stacklevel=3)  # noqa: N806
    if num_training + num_validation > len(X_train):
        raise ValueError(f"get_CIFAR10_data: num_training={num_training} + num_validation={num_validation} exceeds "
                         f"the {len(X_train)} training images in {cifar10_dir}; ask for fewer, e.g. "
                         f"num_training={max(len(X_train) - num_validation, 0)}")
    val = slice(num_training, num_training + num_validation)
    X_val, y_val = X_train[val], y_train[val]  # noqa: N806
    X_train, y_train = X_train[:num_training], y_train[:num_training]  # noqa: N806
    X_test, y_test = X_test[:num_test], y_test[:num_test]  # noqa: N806
    if subtract_mean and len(X_train):
        mean_image = X_train.mean(axis=0)
        X_train, X_val, X_test = X_train - mean_image, X_val - mean_image, X_test - mean_image  # noqa: N806
    return {"X_train": _channels_first(X_train), "y_train": y_train, "X_val": _channels_first(X_val),
            "y_val": y_val, "X_test": _channels_first(X_test), "y_test": y_test}


def _channels_first(images):
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
