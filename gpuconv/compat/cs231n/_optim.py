"""CS231n's update rules (``optim.py``), every edition's.

Written out here, not taken from :mod:`gpuconv.optim`, on purpose: CS231n's momentum keeps
``v = mu*v - lr*dw`` (the velocity already carries the learning rate, so an ``lr_decay`` acts on
new steps only) where PyTorch's SGD keeps ``v = mu*v + dw``, and CS231n's RMSProp has no
counterpart there. Each rule is the assignment's formula in xp, on the arrays where they are,
with NumPy's dtype promotion (a float32 ``w`` and a float64 ``dw`` give a float64 ``next_w``).

Editions: from 2018 every rule is ``rule(w, dw, config=None)`` and Adam's ``t`` starts at 0; in
2016 and 2017 ``rmsprop`` and ``adam`` take ``(x, dx, config=None)``, and 2017's Adam starts ``t``
at 1 (2016's at 0). Every edition increments ``t`` before using it (the notebooks' expected Adam
values are computed so). 2025's rules work in place and fold Adam's bias corrections into its step
size (below). Every edition has the same defaults.
"""
from __future__ import annotations

import numpy as np

from ...backend import get_array_module

_MOMENTUM = {"learning_rate": 1e-2, "momentum": 0.9}
_RMSPROP = {"learning_rate": 1e-2, "decay_rate": 0.99, "epsilon": 1e-8}
_ADAM = {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}


def _config(w, dw, config, defaults, **more):
    """The rule's ``config`` (a new dict for None), the defaults set for the keys it lacks, after
    the checks that the arithmetic would not make: ``dw`` is ``w``'s gradient, of its shape (NumPy
    would broadcast a (1, M) gradient of an (M,) bias into a (1, M) ``next_w``, or fail inside),
    and the hyperparameters are numbers (a string read from a config fails inside, in a ufunc)."""
    if getattr(dw, "shape", None) != getattr(w, "shape", None):
        raise ValueError(f"dw has shape {getattr(dw, 'shape', type(dw).__name__)} but w has shape "
                         f"{getattr(w, 'shape', type(w).__name__)}: an update rule takes a parameter and its own "
                         "gradient, e.g. (model.params[k], grads[k]) for one key k")
    config = {} if config is None else config
    for key, value in {**defaults, **more}.items():
        if config.setdefault(key, value) is None or isinstance(config[key], (str, bytes)):
            raise TypeError(f"config[{key!r}] must be a number, got {config[key]!r} (the default is {value!r})")
    return config


def _slot(config, key, w):
    """``config[key]``, or zeros like ``w`` before the rule's first step made it."""
    value = config.get(key)
    return get_array_module(w).zeros_like(w) if value is None else value


def sgd(w, dw, config=None):
    """Vanilla SGD, in place. config: learning_rate (1e-2)."""
    config = _config(w, dw, config, {"learning_rate": 1e-2})
    w -= config["learning_rate"] * dw
    return w, config


def sgd_momentum(w, dw, config=None):
    """SGD with momentum. config: learning_rate (1e-2), momentum (0.9), velocity (zeros)."""
    config = _config(w, dw, config, _MOMENTUM)
    v = config["momentum"] * _slot(config, "velocity", w) - config["learning_rate"] * dw
    config["velocity"] = v
    return w + v, config


def _rmsprop(w, dw, config):
    config = _config(w, dw, config, _RMSPROP)
    xp = get_array_module(w, dw)
    cache = config["decay_rate"] * _slot(config, "cache", w) + (1 - config["decay_rate"]) * dw * dw
    config["cache"] = cache
    return w - config["learning_rate"] * dw / (xp.sqrt(cache) + config["epsilon"]), config


def _adam(w, dw, config, t0):
    config = _config(w, dw, config, _ADAM, t=t0)
    xp = get_array_module(w, dw)
    m, v = _slot(config, "m", w), _slot(config, "v", w)
    b1, b2 = config["beta1"], config["beta2"]
    config["t"] += 1
    m = b1 * m + (1 - b1) * dw
    v = b2 * v + (1 - b2) * (dw * dw)
    m_hat = m / (1 - b1 ** config["t"])
    v_hat = v / (1 - b2 ** config["t"])
    config["m"], config["v"] = m, v
    return w - config["learning_rate"] * m_hat / (xp.sqrt(v_hat) + config["epsilon"]), config


def rmsprop(w, dw, config=None):
    """RMSProp. config: learning_rate (1e-2), decay_rate (0.99), epsilon (1e-8), cache (zeros)."""
    return _rmsprop(w, dw, config)


def adam(w, dw, config=None):
    """Adam with bias correction. config: learning_rate (1e-3), beta1 (0.9), beta2 (0.999),
    epsilon (1e-8), m, v (zeros), t (0; incremented before use)."""
    return _adam(w, dw, config, t0=0)


def rmsprop_2017(x, dx, config=None):
    """RMSProp of the 2017 edition (arguments named ``x, dx``); as :func:`rmsprop`."""
    return _rmsprop(x, dx, config)


def adam_2017(x, dx, config=None):
    """Adam of the 2017 edition: arguments ``x, dx``; ``t`` starts at 1 (incremented before use,
    so the first step uses t = 2)."""
    return _adam(x, dx, config, t0=1)


def adam_2016(x, dx, config=None):
    """Adam of the 2016 edition: arguments ``x, dx``; ``t`` starts at 0, as from 2018."""
    return _adam(x, dx, config, t0=0)


# The 2025 edition ships assignment 2's optim.py already written (the update rules moved to
# assignment 1 that year), and its rules work in place: ``w``, the velocity and the RMSProp cache
# are updated where they are (so they keep their dtype: a float32 ``w`` stays float32 under a
# float64 ``dw``) and the returned ``next_w`` is ``w`` itself. Its Adam folds both bias
# corrections into the step size, lr * sqrt(1 - beta2^t) / (1 - beta1^t), which puts epsilon
# beside sqrt(v) rather than sqrt(v_hat): early steps differ from the form above by up to
# epsilon / sqrt(v_hat) relative, enough to change a training curve in its second digit. The
# operations below are in that file's order, so a run gives its numbers bit for bit.

def sgd_momentum_2025(w, dw, config=None):
    """SGD with momentum, in place (w and the velocity are updated where they are)."""
    config = _config(w, dw, config, _MOMENTUM)
    v = _slot(config, "velocity", w)
    v *= config["momentum"]
    v -= config["learning_rate"] * dw
    w += v
    config["velocity"] = v
    return w, config


def rmsprop_2025(w, dw, config=None):
    """RMSProp, in place (w and the cache are updated where they are)."""
    config = _config(w, dw, config, _RMSPROP)
    xp = get_array_module(w, dw)
    config["cache"] = _slot(config, "cache", w)
    rho = config["decay_rate"]
    config["cache"] *= rho
    config["cache"] += (1.0 - rho) * dw ** 2
    w += -(config["learning_rate"] * dw) / (xp.sqrt(config["cache"]) + config["epsilon"])
    return w, config


def adam_2025(w, dw, config=None):
    """Adam, w updated in place, the bias corrections folded into the step size; ``t`` from 0,
    incremented before use."""
    config = _config(w, dw, config, _ADAM, t=0)
    xp = get_array_module(w, dw)
    m, v = _slot(config, "m", w), _slot(config, "v", w)
    b1, b2 = config["beta1"], config["beta2"]
    m = b1 * m + (1 - b1) * dw
    v = b2 * v + (1 - b2) * (dw * dw)
    t = config["t"] + 1
    # np.sqrt, not math.sqrt: a NumPy float64 step size promotes a float32 m as the file's does
    alpha = config["learning_rate"] * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    w -= alpha * (m / (xp.sqrt(v) + config["epsilon"]))
    config["t"], config["m"], config["v"] = t, m, v
    return w, config
