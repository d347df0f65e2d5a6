"""The CS231n assignment API on gpuconv: change one import, keep the code.

    # from cs231n.layers import *; from cs231n.fast_layers import *; from cs231n.layer_utils import *
    # from cs231n.solver import Solver; from cs231n.classifiers.cnn import ThreeLayerConvNet
    # from cs231n.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array
    # from cs231n.data_utils import load_CIFAR10; from cs231n.optim import sgd, adam ...
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
"""
from __future__ import annotations

import pathlib
import warnings

import numpy as np

from .. import gradcheck
from ..backend import asnumpy, get_array_module
from .cs231n_layers import (Cache, affine_backward, affine_forward, affine_relu_backward, affine_relu_forward,
                            batchnorm_backward, batchnorm_backward_alt, batchnorm_forward, conv_backward_fast,
                            conv_backward_naive, conv_forward_fast, conv_forward_naive, conv_relu_backward,
                            conv_relu_forward, conv_relu_pool_backward, conv_relu_pool_forward,
                            dropout_backward, dropout_forward, max_pool_backward_fast, max_pool_backward_naive,
                            max_pool_forward_fast, max_pool_forward_naive, relu_backward, relu_forward,
                            softmax_loss, spatial_batchnorm_backward, spatial_batchnorm_forward, svm_loss)
from .cs231n_solver import Solver, ThreeLayerConvNet, adam, rmsprop, sgd, sgd_momentum

__all__ = [
    "affine_forward", "affine_backward", "relu_forward", "relu_backward",
    "conv_forward_naive", "conv_backward_naive", "conv_forward_fast", "conv_backward_fast",
    "max_pool_forward_naive", "max_pool_backward_naive", "max_pool_forward_fast", "max_pool_backward_fast",
    "softmax_loss", "svm_loss",
    "batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt",
    "spatial_batchnorm_forward", "spatial_batchnorm_backward", "dropout_forward", "dropout_backward",
    "affine_relu_forward", "affine_relu_backward", "conv_relu_forward", "conv_relu_backward",
    "conv_relu_pool_forward", "conv_relu_pool_backward",
    "sgd", "sgd_momentum", "rmsprop", "adam",
    "eval_numerical_gradient", "eval_numerical_gradient_array", "rel_error",
    "ThreeLayerConvNet", "Solver", "load_CIFAR10", "Cache",
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
    """The assignment notebooks' ``max(|x - y| / max(1e-8, |x| + |y|))``."""
    xp = get_array_module(x, y)
    return float(xp.max(xp.abs(x - y) / xp.maximum(1e-8, xp.abs(x) + xp.abs(y))))


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
