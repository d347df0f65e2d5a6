"""The CS231n assignment API on gpuconv: change one import, keep the code.

    # from cs231n.layers import *; from cs231n.fast_layers import *; from cs231n.layer_utils import *
    # from cs231n.optim import sgd, adam ...
    from gpuconv.compat.cs231n import *            # everything, or module by module:
    from gpuconv.compat.cs231n.layers import *     # .fast_layers, .layer_utils, .optim likewise

or leave the student's code untouched and redirect its package's layer modules, in one line
before anything imports them (the student's update rules, Solver, gradient checks, data loader
and classifiers stay theirs)::

    import gpuconv.compat.cs231n as g; g.redirect("cs231n", edition=2019)

Same names, arguments, parameter dicts (``conv_param``, ``pool_param``, ``bn_param``,
``ln_param``, ``gn_param``, ``dropout_param``), return values and caches as the assignment, with
the arithmetic done by :mod:`gpuconv.ops`. Output sizes floor as the assignment's code computes
them, ``1 + (H + 2 * pad - HH) // stride`` (``gpuconv.ops`` itself refuses sizes that do not divide).

Editions (2015-2026): the default is the latest starter code (2018 on: dropout's ``p`` keeps a
unit, update rules ``(w, dw, config)``, Adam's ``t`` from 0, layer and group norm), which is 2015's
too (``p`` keeps a unit there as well). 2017 code:
``edition(2017)`` (the module :mod:`gpuconv.compat.cs231n.e2017`), or ``redirect(edition=2017)``;
2016 code: ``edition(2016)`` (2017's semantics but Adam's ``t`` from 0). 2025 code:
``edition(2025)`` (these layers; the update rules of the ``optim.py`` assignment 2 ships written that
year, in place, with Adam's bias corrections folded into the step size).

Devices: NumPy arrays run on the CPU and CuPy arrays on their GPU. ``use_device('cuda')`` runs
the functions on the GPU with NumPy arrays in and out (``'sim'``: the kernels on the host
simulator), keeping each parameter's device copy for as long as the host array is provably
unchanged (see :mod:`._device`); ``use_device('cpu')`` switches back.

Dtypes follow NumPy: arrays of different dtypes (float32 weights and float64 data, an int
bias) compute in ``np.result_type`` of them, integers counting as float64, and results come back
in that type; ReLU and max pooling of integers stay integer. (``gpuconv.ops`` itself takes one
dtype per op and says so.)

Differences worth knowing (all deliberate):

- ``softmax_loss``/``svm_loss`` return the loss as a NumPy scalar of the scores' dtype for NumPy
  inputs (as CS231n; ``ThreeLayerConvNet.loss`` a Python float) but as a 0-d CuPy array for CuPy
  inputs, so a training step never waits for the GPU; ``float(loss)`` when you need the number.
- ``ThreeLayerConvNet`` takes an extra keyword ``device``; the ``Solver`` uploads the data once to
  the model's device.
- ``load_CIFAR10`` on a directory with no ``test_batch`` (such as the 5,170-image subset used in
  CI) returns empty ``Xte``/``Yte`` and warns, instead of failing; no reader assumes 10,000
  images per batch.
- Where a pooling window holds its maximum more than once, the gradient goes to the first of
  them, in every pooling function; the assignment's ``max_pool_backward_reshape`` (the fast path
  for stride = window) shares it out among the ties. The two agree wherever the window's values
  differ, and after a ReLU (whose backward zeroes the gradient of the tied zeros) in any case.
- ``get_CIFAR10_data`` takes the data directory as ``cifar10_dir=`` (the assignment hard-codes
  ``cs231n/datasets/cifar-10-batches-py``); without it, gpuconv's search ($GPUCONV_DATA,
  ``~/.cache/gpuconv``, else download). Asking for more images than the source holds is an error
  naming the numbers, where the assignment would return short or empty arrays.
"""
from __future__ import annotations

from ._call import Cache
from ._data import get_CIFAR10_data, load_CIFAR10, load_CIFAR_batch
from ._device import stats as device_stats  # noqa: F401 (gpuconv-only API, outside __all__)
from ._device import store as param_store
from ._device import use_device
from ._editions import EDITIONS, LATEST, edition
from ._gradcheck import eval_numerical_gradient, eval_numerical_gradient_array, rel_error
from ._redirect import redirect
from ._solver import Solver, ThreeLayerConvNet
from .fast_layers import *  # noqa: F401,F403
from .layer_utils import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .optim import *  # noqa: F401,F403
from . import fast_layers, layer_utils, layers, optim

YEAR = LATEST
__all__ = [*layers.__all__, *fast_layers.__all__, *layer_utils.__all__, *optim.__all__,
           "eval_numerical_gradient", "eval_numerical_gradient_array", "rel_error",
           "ThreeLayerConvNet", "Solver", "load_CIFAR_batch", "load_CIFAR10", "get_CIFAR10_data", "Cache"]
