"""What the built-in layers' constructors share: the argument checks (``_int``, ``_pair``,
``inplace``), PyTorch's default initialization drawn from a seeded NumPy generator, the factory
arguments ``device=`` and ``dtype=`` (and the dtype rule ``to()`` and ``astype()`` apply), and
``_Replayed``, the attribute for a number a layer's kernels take by value, which a captured CUDA
graph would replay unchanged."""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_default_device, to_device
from ..counter_rng import check_seed
from ..graphs import REPLAYED_WAY_OUT
from ..ops._checks import check_bool, whole_float_hint
from ..precision import DTYPES


def _int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}){whole_float_hint(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _pair(name, value, minimum):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or an (h, w) pair, got {value!r} of length {len(value)}")
        return (_int(f"{name}[0]", value[0], minimum), _int(f"{name}[1]", value[1], minimum))
    v = _int(name, value, minimum)
    return (v, v)


def _layer_rng(seed):
    """The generator a layer draws from: seeded by ``seed``, or (None) by a draw from NumPy's global
    generator, so that ``np.random.seed(s)`` before building a network makes it reproducible, as
    ``torch.manual_seed`` does."""
    return np.random.default_rng(np.random.randint(0, 2**63 - 1, dtype=np.int64) if seed is None else check_seed(seed))


def _check_inplace(layer, inplace):
    if not isinstance(inplace, (bool, np.bool_)):
        raise TypeError(f"{layer}(inplace={inplace!r}): inplace is True or False, as in PyTorch (it changes nothing "
                        f"here){'; the seed is a keyword: Dropout(p, seed=...)' if layer == 'Dropout' else ''}")


def _with_bias(bias) -> bool:
    """A layer's ``bias`` switch: True or False only (``bias='False'`` read from a config file
    would have made a bias without a word)."""
    return check_bool("bias", bias, " (False: no bias)")


def _kaiming_uniform(rng, shape, fan_in):
    # PyTorch's default for Conv2d/Linear: kaiming_uniform_(a=sqrt(5)), i.e. gain sqrt(2/(1+a^2))
    # and bound gain*sqrt(3/fan_in), which works out to 1/sqrt(fan_in).
    a = math.sqrt(5.0)
    bound = math.sqrt(2.0 / (1.0 + a * a)) * math.sqrt(3.0 / fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def _bias_uniform(rng, n, fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=(n,)).astype(np.float32)


def _on_default_device(host_array):
    return to_device(host_array, get_default_device())


def _factory(layer, device, dtype):
    """PyTorch's factory arguments of a layer's constructor: ``device`` (else the default device)
    and ``dtype`` (float32 or float64; else float32), as ``layer.to(device)`` and
    ``layer.astype(dtype)`` give them."""
    if device is not None:
        layer.to(device)
    if dtype is not None:
        layer.astype(dtype)


def _layer_dtype(where, dtype):
    """``dtype`` as the NumPy dtype layers hold: float32 or float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{where}({dtype!r}): expected a device ('cpu', 'cuda:N', 'sim') or a dtype "
                        "(np.float32, np.float64)" if where.endswith(".to") else
                        f"{where}(dtype={dtype!r}): not a dtype; use np.float32 or np.float64") from None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{where}(dtype={dtype!r}): layers hold float32 or float64 arrays; "
                        "use np.float32 (training) or np.float64 (gradient checks); bfloat16 and float16 training "
                        "runs in mixed precision (gpuconv.amp)")
    return dt


def _cast_floats(dt, copy=True):
    """An array converted to ``dt`` if it holds floating-point values; another (an integer or bool
    buffer: an index, a mask) unchanged, as PyTorch's ``to(dtype)`` leaves it."""
    return lambda a: a.astype(dt, copy=copy) if a.dtype in DTYPES else a  # (the float dtypes, bfloat16 too)


class _Replayed:
    """A layer's number that its kernels take by value (batch norm's momentum): a CUDA graph replays
    the value of its capture, so a change while a captured step holds the layer (``StepGraph``, from
    its first call until released) is refused; the simulator's step would read the new value."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        try:
            return layer.__dict__[self.name]
        except KeyError:
            raise AttributeError(f"{type(layer).__name__} has no {self.name} yet") from None

    def __set__(self, layer, value):
        state = layer.__dict__
        if state.get("_held_by_graph") and self.name in state and state[self.name] != value:
            raise RuntimeError(f"{type(layer).__name__}: {self.name} cannot change while " + REPLAYED_WAY_OUT)
        state[self.name] = value
