"""The CS231n assignment API on gpuconv: change one import, keep the code.

    # from cs231n.layers import *; from cs231n.fast_layers import *; from cs231n.layer_utils import *
    # from cs231n.solver import Solver; from cs231n.classifiers.cnn import ThreeLayerConvNet
    # from cs231n.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array
    # from cs231n.data_utils import load_CIFAR10, get_CIFAR10_data; from cs231n.optim import sgd, adam ...
    from gpuconv.compat.cs231n import *

Same names, arguments, parameter dicts (``conv_param``, ``pool_param``, ``bn_param``,
``dropout_param``), return values and caches as the assignment, with the arithmetic done by
:mod:`gpuconv.ops`. Pass NumPy arrays and it runs on the CPU; pass CuPy arrays (or build the
model with ``device='cuda'``) and it runs on the GPU. Nothing is copied between host and device
behind your back; the few places that read a value back are named in their docstrings.

Differences worth knowing (all deliberate):

- ``softmax_loss``/``svm_loss``/``ThreeLayerConvNet.loss`` return the loss as a Python float for
  NumPy inputs (as CS231n) but as a 0-d CuPy array for CuPy inputs, so a training step never waits
  for the GPU; ``float(loss)`` when you need the number.
- ``ThreeLayerConvNet`` takes an extra keyword ``device``; the ``Solver`` uploads the data once to
  the model's device.
- ``load_CIFAR10`` on a directory with no ``test_batch`` (such as the 5,170-image subset used in
  CI) returns empty ``Xte``/``Yte`` and warns, instead of failing.
- ``get_CIFAR10_data`` takes the data directory as ``cifar10_dir=`` (the assignment hard-codes
  ``cs231n/datasets/cifar-10-batches-py``); without it, gpuconv's search ($GPUCONV_DATA,
  ``~/.cache/gpuconv``, else download). Asking for more images than the source holds is an error
  naming the numbers, where the assignment would return short or empty arrays.
- float32 and float64 arrays in one call raise a TypeError saying which to cast, where NumPy
  would quietly compute in float64: each op runs in one precision (the assignment's models cast
  ``X`` to their ``dtype`` first, and ``ThreeLayerConvNet.loss`` does too).
"""
from __future__ import annotations

import os
import pathlib
import warnings

import numpy as np

from .. import gradcheck
from ..backend import asnumpy
from .cs231n_layers import (Cache, affine_backward, affine_forward, affine_relu_backward, affine_relu_forward,
                            batchnorm_backward, batchnorm_backward_alt, batchnorm_forward, conv_backward_fast,
                            conv_backward_naive, conv_forward_fast, conv_forward_naive, conv_relu_backward,
                            conv_relu_forward, conv_relu_pool_backward, conv_relu_pool_forward,
                            dropout_backward, dropout_forward, max_pool_backward_fast, max_pool_backward_naive,
                            max_pool_forward_fast, max_pool_forward_naive, relu_backward, relu_forward,
                            softmax_loss, spatial_batchnorm_backward, spatial_batchnorm_forward, svm_loss,
                            conv_backward_im2col, conv_backward_strides, conv_forward_im2col, conv_forward_strides,
                            max_pool_backward_im2col, max_pool_backward_reshape, max_pool_forward_im2col,
                            max_pool_forward_reshape)
from .cs231n_solver import Solver, ThreeLayerConvNet, adam, rmsprop, sgd, sgd_momentum

__all__ = [
    "affine_forward", "affine_backward", "relu_forward", "relu_backward",
    "conv_forward_naive", "conv_backward_naive", "conv_forward_fast", "conv_backward_fast",
    "max_pool_forward_naive", "max_pool_backward_naive", "max_pool_forward_fast", "max_pool_backward_fast",
    "conv_forward_im2col", "conv_backward_im2col", "conv_forward_strides", "conv_backward_strides",
    "max_pool_forward_reshape", "max_pool_backward_reshape", "max_pool_forward_im2col", "max_pool_backward_im2col",
    "softmax_loss", "svm_loss",
    "batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt",
    "spatial_batchnorm_forward", "spatial_batchnorm_backward", "dropout_forward", "dropout_backward",
    "affine_relu_forward", "affine_relu_backward", "conv_relu_forward", "conv_relu_backward",
    "conv_relu_pool_forward", "conv_relu_pool_backward",
    "sgd", "sgd_momentum", "rmsprop", "adam",
    "eval_numerical_gradient", "eval_numerical_gradient_array", "rel_error",
    "ThreeLayerConvNet", "Solver", "load_CIFAR10", "get_CIFAR10_data", "Cache",
]


# ----------------------------------------------------------------------------- gradient checks
def eval_numerical_gradient(f, x, verbose=True, h=1e-5):
    """Central-difference gradient of the scalar ``f(x)``; ``x`` is perturbed in place and restored.

    With ``verbose`` every entry is printed as ``index value`` (after the whole gradient is
    computed, with one readback for CuPy arrays)."""
    grad = gradcheck.numerical_gradient(f, x, h)
    if verbose:
        host = asnumpy(grad)
        for ix in np.ndindex(*host.shape):
            print(ix, host[ix])
    return grad


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """Central-difference ``sum(df * d f(x) / dx)`` for an array-valued ``f``."""
    # f may hand back x itself or a view of it (dropout in test mode does): copy each output
    # before x is perturbed again, as the assignment's version does.
    return gradcheck.numerical_gradient_array(lambda a: _copy(f(a)), x, df, h)


def _copy(a):
    return a.copy() if hasattr(a, "copy") else a


def rel_error(x, y):
    """The assignment notebooks' ``max(|x - y| / max(1e-8, |x| + |y|))`` (in float64)."""
    return gradcheck.relative_error(x, y, floor=1e-8)


# ----------------------------------------------------------------------------- data
def load_CIFAR10(ROOT):  # noqa: N802,N803 (the assignment's names)
    """``Xtr, Ytr, Xte, Yte`` from the ``cifar-10-batches-py`` directory ``ROOT``: images as
    float64 (N, 32, 32, 3) channels-last arrays, labels as int64 (N,), as the assignment returns.

    Reading is gpuconv.data's. When ``ROOT`` has no ``test_batch`` (the CI subset), ``Xte`` and
    ``Yte`` are empty, of shapes (0, 32, 32, 3) and (0,), and a UserWarning says so: hold out test
    images from ``Xtr`` in that case."""
    from ..data import find_data_dir, load_cifar10

    root = pathlib.Path(ROOT).expanduser().resolve()
    missing = FileNotFoundError(f"load_CIFAR10: {root} holds no CIFAR-10 batches; pass the cifar-10-batches-py "
                                "directory (the extracted cifar-10-python.tar.gz)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            source = pathlib.Path(find_data_dir(root)).resolve() if root.exists() else None
        except FileNotFoundError as exc:
            raise missing from exc
        # The assignment reads ROOT or fails: never gpuconv's fallbacks ($GPUCONV_DATA, the cache).
        if source is None or not (source == root or root in source.parents):
            raise missing
        data = load_cifar10(source, download=False)
    for w in caught:
        if "no test batch" not in str(w.message):
            warnings.warn(w.message, w.category, stacklevel=2)
    if data.train is None:
        raise FileNotFoundError(f"load_CIFAR10: {root} holds test_batch alone; the assignment trains on "
                                "data_batch_1..5: download the full cifar-10-python release into it")
    xtr, ytr = _channels_last(data.train.images), data.train.labels
    if data.test is None:
        warnings.warn(f"load_CIFAR10: {root} has no test_batch, so Xte and Yte are empty (shapes (0, 32, 32, 3) "
                      f"and (0,)); hold out test images from the {len(ytr)} training images instead",
                      UserWarning, stacklevel=2)
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
    from ..data import default_cache_dir, download_cifar10, find_data_dir

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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        X_train, y_train, X_test, y_test = load_CIFAR10(cifar10_dir)  # noqa: N806
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=2)
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
