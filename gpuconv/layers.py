"""Layers: parameters plus a one-line call into ``gpuconv.ops``.

Each layer keeps the cache its op's forward returns and hands it to the op's backward; the
math lives in the ops, never here. ``backward(dy)`` returns ``dx`` and accumulates parameter
gradients into ``Parameter.grad`` (set on the first backward, added afterwards, cleared by
``zero_grad()``), so a layer used twice per step or a gradient summed over micro-batches works.

Caches are kept only in training mode and are dropped by ``backward``: an evaluation pass
holds no activations, and a backward with no forward in front of it is a RuntimeError
instead of a silent gradient of stale data. One layer instance used at two places of one
network would overwrite its own cache: build two layers instead.

Parameters start on the default device (``gpuconv.get_default_device()``; 'cpu' and 'sim'
give NumPy arrays, 'cuda' CuPy ones) in float32 (or, as in PyTorch, on ``device=`` in ``dtype=``
of ``Conv2d``, ``ConvTranspose2d``, ``Linear`` and ``BatchNorm2d``), initialized as PyTorch does
(``kaiming_uniform_(a=sqrt(5))`` for weights, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for biases)
from a seeded NumPy generator, so a seed gives the same network on every device. A layer built
without ``seed=`` takes its seed from NumPy's global generator: ``np.random.seed(s)`` first makes
a whole network reproducible (``torch.manual_seed``'s role).

Beyond the PyTorch-like API: ``Layer.astype(dtype)`` converts parameters, gradients and
buffers (float64 copies for gradient checks), ``Layer.num_parameters()`` counts them,
``Scale(factor)`` multiplies by a constant (the output scaling of fast ResNet-style nets), and
``Concat(*branches)`` joins the branches' outputs along the channels (``torch.cat``'s place in
DenseNet and Inception blocks). An error raised inside a ``Sequential``, ``Residual`` or
``Concat`` names the layer it came from by its dotted path
(``in layer 'layer1.conv' (Conv2d(8, 16, ...))``), with the op's message after it.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
import numbers
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from . import layout, ops
from .backend import (Device, array_device_context, copy_like, device_id, device_of, get_array_module,
                      get_default_device, host_copy, is_cupy_array, to_device)
from .counter_rng import check_seed
from .graphs import REPLAYED_WAY_OUT
from .ops._checks import (check_array, check_bool, check_float, check_floor, conv_padding, same_padding_sides,
                          whole_float_hint)
from .ops._checks import only_defaults as _only
from .ops.activations import check_negative_slope
from .ops.scale import check_factor
from .precision import DTYPES, bfloat16, round_once, upcast

__all__ = ["Parameter", "Layer", "Module", "Identity", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d",
           "LPPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "ReLU", "GELU", "LeakyReLU", "SiLU", "Sigmoid", "Tanh",
           "Flatten", "Unflatten", "Linear", "BatchNorm2d", "GroupNorm", "Dropout", "Scale", "Sequential", "ModuleList",
           "ModuleDict", "Residual", "Concat", "CrossEntropyLoss", "LoadResult", "StateDictKeyError", "clip_grad_norm_",
           "clip_grad_value_", "eval_mode", "input_is_data"]


# ----------------------------------------------------------------------------- argument checks
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


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


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


# ----------------------------------------------------------------------------- parameters
def _check_requires_grad(value) -> bool:
    """``requires_grad`` as a bool: True or False only, as PyTorch's (a word from a config file,
    ``'False'``, would train the parameter by its truth)."""
    return check_bool("requires_grad", value, " (False freezes the parameter, True trains it)")


class Parameter:
    """A trainable array: ``.data``, its gradient ``.grad`` (None until a backward) and ``.name``.

    Mixed precision (:mod:`gpuconv.amp`): ``.data`` stays the float32 master; ``.compute`` holds
    its low-precision copy (bf16/fp16, cast once per step) while one is set, and ``.value`` is
    what the layers compute with: the copy when there is one, else ``.data``. Gradients always
    accumulate in ``.data``'s dtype, so a bf16 gradient lands in a float32 ``.grad``.

    ``requires_grad=False`` freezes it (PyTorch's flag): backward keeps no gradient for it
    (``.grad`` stays None) and optimizers leave it as it is; it can be switched at any step
    (a bias trained for the first epochs only), except while a captured training step holds it
    (gpuconv.graphs): the graph replays the updates of its capture, so switch between epochs."""

    __slots__ = ("data", "grad", "name", "compute", "_requires_grad", "_held_by_graph")

    def __init__(self, data, name="param", requires_grad=True):
        _check_parameter_data(data, name)
        self.data = data
        self.grad = None
        self.name = name
        self.compute = None
        self._held_by_graph = False
        self._requires_grad = _check_requires_grad(requires_grad)

    @property
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        value = _check_requires_grad(value)
        if self._held_by_graph and value != self._requires_grad:
            # which parameters the step updates is the graph's structure: a replay would go on
            # updating a parameter frozen mid-epoch (or leave a thawed one as it is)
            raise RuntimeError(f"Parameter {self.name!r}: requires_grad cannot change while " + REPLAYED_WAY_OUT)
        self._requires_grad = value

    def __getstate__(self):
        # A copy (copy.deepcopy, pickle) is held by no graph, whatever holds this parameter now.
        return None, {name: getattr(self, name) for name in Parameter.__slots__ if name != "_held_by_graph"}

    def __setstate__(self, state):
        for name, value in state[1].items():
            setattr(self, name, value)
        self._held_by_graph = False

    @property
    def value(self):
        return self.data if self.compute is None else self.compute

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        """The number of values, as NumPy's ``a.size`` (``sum(p.size for p in model.parameters())``);
        called, the shape, as PyTorch's ``p.size()`` (``p.size(0)``: the length of axis 0)."""
        return _Size(self.data.size, self.data.shape)

    @property
    def ndim(self):
        return self.data.ndim

    def dim(self):
        """The number of axes (PyTorch's name for :attr:`ndim`)."""
        return self.data.ndim

    def numel(self):
        """The number of values (PyTorch's name for :attr:`size`)."""
        return int(self.data.size)

    @property
    def device(self):
        """The :class:`~gpuconv.backend.Device` its array lives on (PyTorch's ``p.device``)."""
        return device_of(self.data)

    @property
    def is_cuda(self):
        """Whether its array is on a GPU (PyTorch's ``p.is_cuda``)."""
        return is_cupy_array(self.data)

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze it, as a PyTorch tensor's; returns the parameter."""
        self.requires_grad = requires_grad
        return self

    def accumulate(self, grad):
        """Set ``.grad`` on the first call, add in place afterwards (until ``zero_grad``); a
        frozen parameter (``requires_grad=False``) drops ``grad``."""
        if not self.requires_grad:
            return
        if grad.shape != self.data.shape:
            raise ValueError(f"gradient for parameter {self.name!r} has shape {grad.shape}, "
                             f"the parameter has {self.data.shape}: the op's backward and the layer disagree")
        if grad.dtype != self.data.dtype:  # a low-precision gradient of the float32 master
            grad = grad.astype(self.data.dtype)
        if self.grad is None:
            self.grad = grad
        else:
            self.grad += grad

    def __repr__(self):
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return (f"Parameter({self.name!r}, shape={tuple(self.shape)}, dtype={self.dtype}, "
                f"device={device_of(self.data)}{frozen})")


class _Size(int):
    """``Parameter.size``: the number of values (NumPy's ``a.size``), which called gives the shape
    (PyTorch's ``p.size()``, ``p.size(dim)``)."""

    def __new__(cls, count, shape):
        size = super().__new__(cls, count)
        size._shape = tuple(shape)
        return size

    def __call__(self, dim=None):
        if dim is None:
            return self._shape
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not -len(self._shape) <= dim < len(
                self._shape):
            raise IndexError(f"Parameter.size(dim): dim must be an int axis in [{-len(self._shape)}, "
                             f"{len(self._shape) - 1}] for shape {self._shape}, got {dim!r}")
        return self._shape[dim]

    def __reduce__(self):  # a copy (copy, pickle) is a plain int
        return int, (int(self),)


def _check_parameter_data(data, name):
    """A parameter's array: a NumPy or CuPy array of a float dtype, which the optimizers update in
    place (a list or a Python number failed in the first step, an integer array at its cast)."""
    try:
        check_float("data", data)  # (a torch tensor is told how to convert it)
    except TypeError as exc:
        raise TypeError(f"Parameter {name!r}: {exc}") from None


class LoadResult(NamedTuple):
    missing_keys: list
    unexpected_keys: list


class StateDictKeyError(KeyError):
    """Missing or unexpected keys in ``load_state_dict(strict=True)``."""

    def __str__(self):  # KeyError would print the message as a quoted repr
        return str(self.args[0])


# ----------------------------------------------------------------------------- the base class
class _Walk(list):
    """What ``parameters()``, ``named_parameters()``, ``buffers()``, ``children()``, ``modules()`` and
    their kin return: a list (``len``, indexing, ``+``; iterated afresh each time, so it can be kept
    and walked twice) that is also an iterator, as PyTorch's generators are:
    ``next(model.parameters()).device`` reads the first parameter. Each call makes a new one, so
    each ``next`` walk starts at the first item. Once ``next`` has been called on it, iterating it
    goes on from there, as a partly consumed generator would (``it = m.parameters(); next(it);
    rest = list(it)``); indexing and ``len`` still see the whole list."""

    _cursor = None  # (set on the first next(): the position of the next item)

    def __next__(self):
        i = self._cursor or 0
        if i >= len(self):
            self._cursor = i
            raise StopIteration
        self._cursor = i + 1
        return list.__getitem__(self, i)

    def __iter__(self):
        return list.__iter__(self) if self._cursor is None else self

    def __reduce_ex__(self, protocol):  # a copy (copy, pickle) is a plain list
        return list, (list(self),)


class Layer:
    """Base class: ``forward``/``backward``, parameters, buffers, modes, devices, state dicts.

    A subclass holds its sub-layers and parameters as attributes, as a PyTorch module does: every
    ``Layer`` and ``Parameter`` set on it (``self.conv = Conv2d(...)``) is registered, in the order
    they were set, for ``parameters()``, ``state_dict()``, ``train()``/``eval()``, ``to()``. It may
    also list parameter attributes in ``_param_names`` (each a Parameter or None; these come first),
    and lists its
    buffers (arrays that are state but not trained, like running statistics) in ``_buffer_names``.
    (The built-in layers list theirs and declare ``_registers_attributes = False``: nothing to scan.)"""

    _param_names: tuple = ()
    _buffer_names: tuple = ()
    _registers_attributes = True
    # Parameters that mixed-precision training computes with in bf16/fp16 (gpuconv.amp); the
    # others (batch norm's affine pair) stay float32, as the statistics do.
    _low_precision_params: tuple = ()

    def __init__(self):
        self.training = True
        self._cache = None

    def __getstate__(self):
        # A copy (copy.deepcopy, pickle) is held by no graph, whatever holds this layer now.
        state = dict(self.__dict__)
        state.pop("_held_by_graph", None)
        return state

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A subclass's sub-layers and parameters take their dotted names (``Parameter.name``, which
        # errors and optimizers show) as they are set: ``layer2.0.conv1.weight``, not ``weight``.
        # Only on classes that register their attributes: a built-in layer sets its cache at every
        # forward, which must stay a plain attribute store.
        if cls._registers_attributes and "__setattr__" not in vars(cls):
            cls.__setattr__ = _naming_setattr

    # --- computation
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not define forward(x)")

    def backward(self, dy, need_dx=True):
        """The input gradient for the output gradient ``dy``, accumulating parameter gradients.

        ``need_dx=False`` says nobody uses the input gradient (the network's input is data): a
        layer may then skip computing it and return None; parameter gradients are still made."""
        raise NotImplementedError(f"{type(self).__name__} does not define backward(dy): gpuconv has no autograd, so a "
                                  "Layer subclass writes its backward, its layers' backward calls in reverse order "
                                  "(def backward(self, dy, need_dx=True): return self.fc.backward(dy, need_dx) for a "
                                  "forward that ends with self.fc), or is built as a Sequential, which has one")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _keep(self, cache):
        self._cache = cache if self.training else None

    def _take_cache(self):
        cache = self._cache
        if cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() was called without a cached forward pass: call forward(x) "
                "in training mode (layer.train()) right before backward(dy); caches are not kept in eval "
                "mode and are released by each backward. A layer used twice in one forward pass (one "
                "self.relu applied after two convolutions) keeps only its last call's cache: give each "
                "use a layer of its own")
        self._cache = None
        return cache

    # --- structure
    def named_children(self):
        """[(attribute, sub-layer)]: the Layers held as attributes, in the order they were set."""
        if not self._registers_attributes:
            return _Walk()
        return _Walk((name, v) for name, v in vars(self).items() if isinstance(v, Layer))

    def children(self):
        """The sub-layers of :meth:`named_children` (a list that is also an iterator, as every
        structure walk here returns: ``next(model.children())`` works as in PyTorch)."""
        return _Walk(child for _, child in self.named_children())

    def named_modules(self, prefix=""):
        """[(dotted name, layer)] for this layer and every sub-layer, each layer once."""
        out, seen = [], set()

        def visit(name, layer):
            if id(layer) in seen:
                return
            seen.add(id(layer))
            out.append((name, layer))
            for child_name, child in layer.named_children():
                visit(_join(name, child_name), child)

        visit(prefix, self)
        return _Walk(out)

    def modules(self):
        return _Walk(m for _, m in self.named_modules())

    def get_submodule(self, target):
        """The sub-layer at the dotted path ``target`` (``'layer1.0.conv'``; ``''``: this layer), as
        PyTorch's; an AttributeError names the part of the path that is missing."""
        if not isinstance(target, str):
            raise TypeError(f"get_submodule(target): target must be a dotted str path such as 'layer1.0', got "
                            f"{target!r}")
        return self._submodule(target, f"get_submodule({target!r})")

    def _submodule(self, target, what):
        layer, path = self, []
        for part in target.split(".") if target else ():
            children = dict(layer.named_children())
            if part not in children:
                where = f"at {'.'.join(path)!r}" if path else "here"
                raise AttributeError(f"{what}: the {type(layer).__name__} {where} has no sub-layer "
                                     f"{part!r}; its sub-layers are "
                                     + (", ".join(map(repr, children)) or "none"))
            layer = children[part]
            path.append(part)
        return layer

    def get_parameter(self, target):
        """The Parameter at the dotted path ``target`` (``'0.weight'``), as PyTorch's."""
        return self._get_state(target, "get_parameter", "parameter", lambda m: dict(m._own_parameters()))

    def get_buffer(self, target):
        """The buffer at the dotted path ``target`` (``'1.running_mean'``), as PyTorch's."""
        return self._get_state(target, "get_buffer", "buffer", lambda m: {b: getattr(m, b) for b in m._buffer_names})

    def _get_state(self, target, what, kind, own):
        if not isinstance(target, str):
            raise TypeError(f"{what}(target): target must be a dotted str path such as '0.weight', got {target!r}")
        path, _, name = target.rpartition(".")
        layer = self._submodule(path, f"{what}({target!r})")
        found = own(layer)
        if name not in found:
            raise AttributeError(f"{what}({target!r}): {type(layer).__name__} has no {kind} {name!r}; its {kind}s "
                                 f"are " + (", ".join(map(repr, found)) or "none"))
        return found[name]

    # PyTorch's explicit registration; attributes set on a Layer subclass register themselves
    def add_module(self, name, module):
        """``self.<name> = module``, as PyTorch's (a name made at run time: ``add_module(f'conv{i}', ...)``);
        on a Sequential, the layer appended under ``name``."""
        self._check_new_name("add_module", name)
        if not isinstance(module, Layer) and module is not None:
            raise TypeError(f"add_module({name!r}, ...): a {type(module).__name__} is not a gpuconv Layer")
        self._registering("add_module")
        setattr(self, name, module)

    register_module = add_module

    def register_parameter(self, name, param):
        """``self.<name> = param`` (a Parameter, or None for none), as PyTorch's."""
        self._check_new_name("register_parameter", name)
        if not isinstance(param, Parameter) and param is not None:
            raise TypeError(f"register_parameter({name!r}, ...): a {type(param).__name__} is not a gpuconv Parameter; "
                            f"wrap the array, Parameter(array)")
        self._registering("register_parameter")
        setattr(self, name, param)

    def register_buffer(self, name, tensor, persistent=True):
        """A buffer (state that is not trained, such as running statistics) named ``name``, as
        PyTorch's: an attribute that ``to()`` moves, ``astype()`` converts and ``state_dict()`` holds;
        None (as PyTorch's) for state set later, left out of them all until it is an array."""
        self._check_new_name("register_buffer", name, buffer=True)
        if persistent is not True:
            raise ValueError(f"register_buffer({name!r}, ..., persistent={persistent!r}): every buffer is saved in "
                             "the state dict here; keep an array that is not state as a plain attribute")
        if tensor is not None:
            try:
                check_array("tensor", tensor)
            except TypeError as exc:
                raise TypeError(f"register_buffer({name!r}, tensor): {exc}") from None
        self._registering("register_buffer")
        if name not in self._buffer_names:
            self._buffer_names = tuple(self._buffer_names) + (name,)
        object.__setattr__(self, name, tensor)

    def _check_new_name(self, what, name, buffer=False):
        if not isinstance(name, str) or not name or "." in name:
            raise (TypeError if not isinstance(name, str) else KeyError)(
                f"{what}: the name must be a non-empty str without '.', got {name!r}")
        taken = name in vars(self) and not (name in self._buffer_names if buffer else
                                            isinstance(vars(self)[name], (Layer, Parameter, type(None))))
        if taken or (name not in vars(self) and hasattr(type(self), name)):
            raise KeyError(f"{what}: {type(self).__name__} already has an attribute {name!r}; pick another name")

    def _registering(self, what):
        if not self._registers_attributes:
            raise TypeError(f"{type(self).__name__}.{what}: a built-in {type(self).__name__} holds no attributes of "
                            f"your own; subclass Layer (class Net(nn.Module)) and register them there")
        if self._held():
            raise RuntimeError(f"{type(self).__name__}.{what}: the layer cannot change while " + REPLAYED_WAY_OUT)

    def _own_generators(self):
        """[(attribute path, numpy.random.Generator)] this layer itself draws from: none here;
        a layer with randomness (Dropout) names its generators."""
        return []

    def named_generators(self, prefix=""):
        """[(dotted name, numpy.random.Generator)] of this layer and every sub-layer: the random
        state a checkpoint saves for a bit-exact resume (``model.drop._rngs.numpy`` with
        ``prefix='model'``)."""
        return _Walk((_join(name, attr), gen) for name, layer in self.named_modules(prefix)
                     for attr, gen in layer._own_generators())

    def _own_buffers(self):
        """[(name, array)] of this layer's own buffers; one set to None (``register_buffer(name,
        None)``, PyTorch's buffer without state yet) is left out, as there."""
        return [(b, getattr(self, b)) for b in self._buffer_names if getattr(self, b) is not None]

    def _own_parameters(self):
        own = [(n, getattr(self, n)) for n in self._param_names if getattr(self, n) is not None]
        if self._registers_attributes:
            own += [(name, v) for name, v in vars(self).items()
                    if isinstance(v, Parameter) and name not in self._param_names]
        return own

    def named_parameters(self, prefix="", recurse=True):
        """[(dotted name, Parameter)], e.g. ``('0.weight', p)``; a shared Parameter appears once.
        As PyTorch's: ``prefix`` goes before every name, ``recurse=False`` gives this layer's own
        parameters alone (not its sub-layers')."""
        out, seen = [], set()
        for mname, m in (self.named_modules(prefix) if recurse else [(prefix, self)]):
            for pname, p in m._own_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append((_join(mname, pname), p))
        return _Walk(out)

    def parameters(self, recurse=True):
        """The Parameters of :meth:`named_parameters`: a list (``len``, indexing, ``+``) that is
        also an iterator, as PyTorch's generator is: ``next(model.parameters()).device`` works."""
        return _Walk(p for _, p in self.named_parameters(recurse=recurse))

    def num_parameters(self, trainable_only=True):
        """The number of scalar parameters (with ``trainable_only=False``, frozen parameters and
        buffers such as running statistics count too): ``sum(p.numel() for p in m.parameters())`` in PyTorch."""
        n = sum(int(p.size) for p in self.parameters() if p.requires_grad or not trainable_only)
        return n if trainable_only else n + sum(int(b.size) for _, b in self.named_buffers())

    def named_buffers(self, prefix="", recurse=True):
        """[(dotted name, array)] of the non-trained state, e.g. ``('1.running_mean', a)`` (``prefix``
        and ``recurse`` as in :meth:`named_parameters`)."""
        return _Walk((_join(mname, b), a) for mname, m in
                     (self.named_modules(prefix) if recurse else [(prefix, self)]) for b, a in m._own_buffers())

    def buffers(self, recurse=True):
        return _Walk(b for _, b in self.named_buffers(recurse=recurse))

    def apply(self, fn):
        """``fn(layer)`` for every sub-layer, then this layer (PyTorch's order: children first), e.g.
        an initialization that looks at each layer's type; returns this layer. A layer this one holds
        twice (under two names) is one child, visited once, as PyTorch's."""
        for child in {id(c): c for c in self.children()}.values():
            child.apply(fn)
        fn(self)
        return self

    def zero_grad(self, set_to_none=True):
        """Forget accumulated gradients (``.grad = None``: the next backward sets them afresh), or
        with ``set_to_none=False`` fill them with zeros, as PyTorch's."""
        zero_grads(self.parameters(), set_to_none)

    # --- modes
    def train(self, mode=True):
        mode = check_bool("train(mode)", mode, " (True: training mode, False: eval mode, as eval() sets)")
        for m in self.modules():
            m.training = mode
            if not mode:
                m._cache = None
        return self

    def eval(self):
        return self.train(False)

    def _held(self) -> bool:
        """Whether a captured training step (gpuconv.graphs.StepGraph) holds this layer or one inside it."""
        return any(m.__dict__.get("_held_by_graph") for m in self.modules())

    # --- devices and dtypes
    def _convert(self, fn):
        if self._held():
            # a captured step computes with the arrays of its capture: a model moved (cpu() then
            # cuda() around a save) or cast would no longer be the one its replays train
            arrays = [a for m in self.modules() for a in [p.data for _, p in m._own_parameters()]
                      + [a for _, a in m._own_buffers()]]
            if any(fn(a) is not a for a in arrays):
                raise RuntimeError(f"{type(self).__name__}: its arrays cannot be moved or cast while "
                                   + REPLAYED_WAY_OUT)
        for m in self.modules():
            for _, p in m._own_parameters():
                p.data = fn(p.data)
                p.compute = None  # a low-precision copy of the old array: recast at the next step
                if p.grad is not None:
                    p.grad = fn(p.grad)
            for b, a in m._own_buffers():
                setattr(m, b, fn(a))
            m._cache = None  # a cache holds arrays of the old device or dtype
        return self

    def cuda(self, index=None):
        """``to('cuda')`` (``to('cuda:N')`` with ``index``), as a PyTorch module's."""
        return self.to("cuda" if index is None else f"cuda:{int(index)}")

    def cpu(self):
        """``to('cpu')``, as a PyTorch module's."""
        return self.to("cpu")

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze every parameter, as a PyTorch module's; returns the layer."""
        requires_grad = _check_requires_grad(requires_grad)
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def to(self, *args, device=None, dtype=None, non_blocking=False):
        """Move parameters, their gradients and buffers to ``device`` ('cpu', 'cuda:N', 'sim') and/or
        convert them to ``dtype`` (float32 or float64, as :meth:`astype`), as PyTorch's
        ``to(device)``, ``to(dtype)``, ``to(device, dtype)`` and their keywords; returns the layer.
        ``non_blocking`` (how PyTorch schedules the copy) is taken as given."""
        if len(args) > 2:
            raise TypeError(f"{type(self).__name__}.to() takes a device and a dtype, got {len(args)} arguments")
        check_bool("to(non_blocking)", non_blocking)
        for arg in args:
            if arg is None:  # (np.dtype(None) would read as float64)
                continue
            if isinstance(arg, (str, Device)):
                if device is not None:
                    raise TypeError(f"{type(self).__name__}.to(): the device was given twice ({device!r}, {arg!r})")
                device = arg
            elif dtype is not None:
                raise TypeError(f"{type(self).__name__}.to(): the dtype was given twice ({dtype!r}, {arg!r})")
            else:
                dtype = arg
        dt = None if dtype is None else _layer_dtype(f"{type(self).__name__}.to", dtype)
        if device is not None:
            dev = Device(device)
            self._convert(lambda a: to_device(a, dev))
        return self if dt is None else self._convert(_cast_floats(dt, copy=False))

    def astype(self, dtype):
        """Convert parameters, gradients and floating-point buffers to float32 or float64 (new
        arrays); integer and bool buffers (an index, a mask) stay as they are, as in PyTorch."""
        dt = _layer_dtype("astype", dtype)
        return self._convert(_cast_floats(dt))

    def double(self):
        """``to(dtype=np.float64)``, as a PyTorch module's (float64 for gradient checks)."""
        return self.to(dtype=np.float64)

    def float(self):
        """``to(dtype=np.float32)``, as a PyTorch module's."""
        return self.to(dtype=np.float32)

    def half(self):
        raise TypeError(f"{type(self).__name__}.half(): layers keep float32 parameters and train in float16 or "
                        "bfloat16 through mixed precision, which casts a copy per step: `with "
                        "gpuconv.amp.autocast(model, 'fp16') as dt: model(x.astype(dt))`, or the Trainer's "
                        "precision='fp16' (or 'bf16')")

    bfloat16 = half

    # --- state
    def _state_slots(self):
        """{dotted name: (current array, setter)} over parameters, then buffers, per module."""
        slots = {}
        seen = set()
        for mname, m in self.named_modules():
            for pname, p in m._own_parameters():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                slots[_join(mname, pname)] = (p.data, lambda v, p=p: setattr(p, "data", v))
            for b, a in m._own_buffers():
                slots[_join(mname, b)] = (a, lambda v, m=m, b=b: setattr(m, b, v))
        return slots

    def state_dict(self):
        """{dotted name: host NumPy copy} of every parameter and buffer (loadable on any device)."""
        out = {}
        for name, (arr, _) in self._state_slots().items():
            out[name] = host_copy(arr)
        return out

    def load_state_dict(self, state, strict=True):
        """Copy arrays from ``state`` (NumPy or CuPy, any device, or PyTorch tensors) into this layer's
        own devices and dtypes.

        With ``strict`` every key must match both ways; shapes must always match. Nothing is
        changed unless every check passes. Returns ``LoadResult(missing_keys, unexpected_keys)``."""
        if not isinstance(state, Mapping):
            raise TypeError(f"load_state_dict: state must be a mapping of names to arrays (as returned by "
                            f"state_dict()), got {type(state).__name__}")
        if self._held():
            # a captured step computes with the arrays of its capture: new ones would go unread by
            # every replay (and unchanged by its updates)
            raise RuntimeError(f"{type(self).__name__}.load_state_dict: the state cannot be replaced while "
                               + REPLAYED_WAY_OUT)
        slots = self._state_slots()
        missing = [k for k in slots if k not in state]
        # PyTorch's batch norm also saves a count of its batches, which gpuconv's does not keep (its
        # momentum is never None): a state dict from an equivalent torch model loads as it is.
        counts = {_join(name, "num_batches_tracked") for name, m in self.named_modules() if isinstance(m, BatchNorm2d)}
        unexpected = [k for k in state if k not in slots and k not in counts]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing key(s) {missing}")
            if unexpected:
                parts.append(f"unexpected key(s) {unexpected}")
            raise StateDictKeyError(
                f"load_state_dict(strict=True): {' and '.join(parts)}. The state dict comes from a different "
                f"architecture (or is partial); build the same model, or pass strict=False to load the keys that match")
        loads = []
        for name, (current, setter) in slots.items():
            if name not in state:
                continue
            value = state[name]
            if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, a Parameter's too
                value = value.detach().cpu()
                if str(value.dtype) == "torch.bfloat16":  # NumPy has no such dtype: widened, exactly
                    value = value.float()
                value = value.numpy()
            if not is_cupy_array(value):
                value = np.asarray(value)
            if value.dtype == bfloat16:  # (ml_dtypes' type is no np.number) widened, exactly, as torch's is
                value = value.astype(np.float32)
            if (value.dtype == np.bool_) != (current.dtype == np.bool_):  # a mask (register_buffer) is loaded as one
                raise TypeError(f"load_state_dict: {name!r} has dtype {value.dtype}, expected a "
                                f"{'bool' if current.dtype == np.bool_ else 'real numeric'} array (the model holds "
                                f"{current.dtype})")
            if value.dtype != np.bool_ and (not np.issubdtype(value.dtype, np.number)
                                            or np.issubdtype(value.dtype, np.complexfloating)):
                raise TypeError(f"load_state_dict: {name!r} has dtype {value.dtype}, expected a real numeric array "
                                f"(the model holds {current.dtype})")
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(
                    f"load_state_dict: {name!r} has shape {tuple(value.shape)} in the state dict but "
                    f"{tuple(current.shape)} in the model: it was saved from a model of another size "
                    "(width, filters, classes); build the model with the same arguments")
            loads.append((setter, value, current))
        for setter, value, current in loads:
            setter(copy_like(value, current))
        for m in self.modules():
            m._cache = None
        return LoadResult(missing, unexpected)

    # --- printing
    def summary(self, input_shape) -> str:
        """A table of every layer's output shape, parameter count and forward FLOPs per image for
        inputs of ``input_shape`` (C, H, W), with totals (:mod:`gpuconv.summary`)."""
        from .summary import summary_text
        return summary_text(self, input_shape)

    def extra_repr(self):
        return ""

    def __repr__(self):  # PyTorch's layout: extra_repr's lines, then one line per child
        children = self.named_children()
        extra = self.extra_repr()
        if not children and "\n" not in extra:
            return f"{type(self).__name__}({extra})"
        lines = (extra.split("\n") if extra else []) + [f"({name}): " + repr(child) for name, child in children]
        return f"{type(self).__name__}(\n" + "\n".join("  " + line.replace("\n", "\n  ") for line in lines) + "\n)"


# ----------------------------------------------------------------------------- layers with parameters
# PyTorch's name: ``class Net(nn.Module)`` with sub-layers as attributes works as it does there.
Module = Layer


def _convolution_geometry(layer, in_channels, out_channels, kernel_size, stride, dilation, groups):
    """Conv2d's and ConvTranspose2d's channel counts, kernel size, stride, dilation and groups, checked
    and set on ``layer``: groups must divide both channel counts."""
    layer.in_channels = _int("in_channels", in_channels, 1)
    layer.out_channels = _int("out_channels", out_channels, 1)
    layer.kernel_size = _pair("kernel_size", kernel_size, 1)
    layer.stride = _pair("stride", stride, 1)
    layer.dilation = _pair("dilation", dilation, 1)
    layer.groups = _int("groups", groups, 1)
    for name, channels in (("in_channels", layer.in_channels), ("out_channels", layer.out_channels)):
        if channels % layer.groups:
            raise ValueError(f"{type(layer).__name__}: groups={layer.groups} must divide {name}={channels} (each "
                             f"group takes {name} // groups channels): choose groups among the divisors of both "
                             "channel counts")


def _convolution_backward(layer, backward, dy, need_dx, cache=None):
    """Conv2d's and ConvTranspose2d's backward: ``backward`` (their op's) of ``cache`` (None: the
    layer's). Frozen filters: no dw. Otherwise dw comes in the master's dtype (a bf16/fp16 dw
    widened as the kernel writes it: no cast to accumulate it)."""
    cache = layer._take_cache() if cache is None else cache
    dx, dw, db = backward(dy, cache, need_dx=need_dx, need_dw=layer.weight.requires_grad,
                          dw_dtype=layer.weight.data.dtype)
    if dw is not None:
        layer.weight.accumulate(dw)
    if layer.bias is not None:
        layer.bias.accumulate(db)
    return dx


class Conv2d(Layer):
    """2-D convolution over NCHW input with OIHW weights (``gpuconv.ops.conv2d_forward``).

    ``padding`` is an int, an (h, w) pair, or as in PyTorch ``'valid'`` (0) or ``'same'``
    (output size = input size, at stride 1 only): k - 1 zeros along each axis, (k - 1) // 2
    before and the rest after. ``layer.padding`` is then the (h, w) pair of an odd kernel
    size, ``(k - 1) // 2`` on every side, and for an even one (more zeros after than before) the
    string ``'same'``, as PyTorch keeps it; the op pads such an input itself (a copy of it).

    ``floor=False`` (the default) rejects sizes the windows do not tile, ``(H - F + 2P)/S + 1`` not
    whole (no silent cropping); ``floor=True`` takes PyTorch's rule, ``floor((H - F + 2P)/S) + 1``:
    a ResNet's stride-2 convolutions (3x3 with padding 1, or 1x1) take 32x32 to 16x16, the input
    rows and columns no window reaches getting a zero gradient.

    ``dilation`` spaces the filter taps (a 3x3 filter at dilation 2 reaches 5x5 pixels, which take
    F's place in the size rule and in 'same'); ``groups`` splits the channels into groups that see
    only their own filters, as in PyTorch: ``groups=in_channels`` is a depthwise convolution
    (MobileNet), ``groups=32`` a ResNeXt block's. ``weight`` is then (out_channels,
    in_channels // groups, kh, kw), PyTorch's shape, initialized with fan_in = in_channels // groups * kh * kw.

    ``padding_mode`` is PyTorch's: 'zeros' (the default), or 'reflect', 'replicate' or 'circular',
    with which the input is first padded by ``padding`` in that mode (``gpuconv.ops.pad_forward``,
    F.pad's) and then convolved without padding, as PyTorch does ('same' included); reflect
    padding must be smaller than the input's height and width, circular at most them."""

    _registers_attributes = False
    _param_names = ("weight", "bias")
    _low_precision_params = ("weight", "bias")
    # The kernels take them by value: a change while a captured step holds the layer is refused.
    stride, padding, dilation, groups = _Replayed(), _Replayed(), _Replayed(), _Replayed()

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None, *, floor=False, seed=None):
        super().__init__()
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"Conv2d: padding_mode must be one of {_PADDING_MODES}, but got padding_mode="
                             f"{padding_mode!r} (PyTorch's modes; 'zeros' pads zeros, the others pad with F.pad's "
                             "mode of that name)")
        self.padding_mode = padding_mode
        self.floor = check_floor(floor)
        _convolution_geometry(self, in_channels, out_channels, kernel_size, stride, dilation, groups)
        padding = conv_padding(padding, self.kernel_size, self.stride, self.dilation)
        self.padding = padding if isinstance(padding, str) else _pair("padding", padding, 0)  # (str: 'same', even k)
        fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        rng = _layer_rng(seed)
        shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        w = _kaiming_uniform(rng, shape, fan_in)
        self.weight = Parameter(_on_default_device(w), "weight")
        self.bias = Parameter(_on_default_device(_bias_uniform(rng, self.out_channels, fan_in)), "bias") if bias else None
        _factory(self, device, dtype)

    def forward(self, x):
        padding, pad_cache = self.padding, None
        if self.padding_mode != "zeros":  # padded first in the mode, then convolved without padding
            x, pad_cache = ops.pad_forward(x, self._reversed_padding_repeated_twice, self.padding_mode)
            padding = 0
        y, cache = ops.conv2d_forward(x, self.weight.value, None if self.bias is None else self.bias.value,
                                      stride=self.stride, padding=padding, floor=self.floor,
                                      dilation=self.dilation, groups=self.groups)
        self._keep(cache if pad_cache is None else (cache, pad_cache))
        return y

    @property
    def _reversed_padding_repeated_twice(self):
        """The padding as F.pad takes it, (left, right, top, bottom), PyTorch's attribute: 'same' (of
        an even extent d*(k - 1) + 1) puts (e - 1) // 2 before and the rest after."""
        if isinstance(self.padding, str):
            extent = tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))
            (top, bottom), (left, right) = same_padding_sides(extent)
            return (left, right, top, bottom)
        return (self.padding[1], self.padding[1], self.padding[0], self.padding[0])

    @property
    def _filters_read_unpacked(self):
        """gpuconv.amp packs no data-gradient copy of these: a grouped or dilated convolution runs
        kernels/conv2d_grouped.cu, which reads the filters as they are (the packing is conv2d.cu's)."""
        return ("weight",) if self.groups != 1 or self.dilation != (1, 1) else ()

    def backward(self, dy, need_dx=True):
        if self.padding_mode == "zeros":
            return _convolution_backward(self, ops.conv2d_backward, dy, need_dx)
        conv_cache, pad_cache = self._take_cache()  # the convolution's backward, then the padding's
        dx = _convolution_backward(self, ops.conv2d_backward, dy, need_dx, cache=conv_cache)
        return None if dx is None else ops.pad_backward(dx, pad_cache)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}" + (f", dilation={self.dilation}" if self.dilation != (1, 1) else "")
                + (f", groups={self.groups}" if self.groups != 1 else "")
                + f", bias={self.bias is not None}"
                + (f", padding_mode={self.padding_mode}" if self.padding_mode != "zeros" else "")
                + (", floor=True" if self.floor else ""))


_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class ConvTranspose2d(Layer):
    """2-D transposed convolution (``gpuconv.ops.conv_transpose2d_forward``), PyTorch's
    ``nn.ConvTranspose2d``: weight (in_channels, out_channels // groups, kH, kW), output size
    ``(H - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1``
    (``output_padding`` < ``stride`` or < ``dilation`` picks one of the sizes a stride-``stride``
    convolution takes to H). ``groups`` splits the channels as Conv2d's (``groups=in_channels``:
    depthwise); both channel counts must be multiples of it. Initialized as PyTorch's:
    kaiming_uniform_(a=sqrt(5)) with the fan-in PyTorch computes from this weight's dim 1,
    out_channels // groups * kH * kW, and the bias bound 1/sqrt of it. ``forward(x,
    output_size=(OH, OW))`` (or (N, C, OH, OW)) takes that size instead, as PyTorch's, giving the
    output_padding of that call. ``padding_mode`` is taken at its default only."""

    _registers_attributes = False
    _param_names = ("weight", "bias")
    _low_precision_params = ("weight", "bias")
    _forward_reads_data_gradient_filters = ("weight",)  # (gpuconv.amp packs them for evaluation too)
    # The kernels take them by value: a change while a captured step holds the layer is refused.
    stride, padding, output_padding, dilation, groups = _Replayed(), _Replayed(), _Replayed(), _Replayed(), _Replayed()

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", device=None, dtype=None, *, seed=None):
        super().__init__()
        _only("ConvTranspose2d", padding_mode=(padding_mode, "zeros"))
        _convolution_geometry(self, in_channels, out_channels, kernel_size, stride, dilation, groups)
        if isinstance(padding, str):
            raise ValueError(f"ConvTranspose2d(padding={padding!r}): an int or an (h, w) pair, as in PyTorch (no "
                             "'same' or 'valid' for a transposed convolution)")
        self.padding = _pair("padding", padding, 0)
        self.output_padding = _pair("output_padding", output_padding, 0)
        if any(op >= s and op >= d for op, s, d in zip(self.output_padding, self.stride, self.dilation)):
            raise ValueError(f"ConvTranspose2d(output_padding={output_padding!r}): output_padding must be smaller "
                             f"than stride={self.stride} or than dilation={self.dilation} along each axis, as in "
                             "PyTorch; use output_padding=0 at stride 1 and dilation 1")
        cout = self.out_channels // self.groups  # PyTorch's fan-in: weight dim 1 * kH * kW
        fan_in = cout * self.kernel_size[0] * self.kernel_size[1]
        rng = _layer_rng(seed)
        w = _kaiming_uniform(rng, (self.in_channels, cout) + self.kernel_size, fan_in)
        self.weight = Parameter(_on_default_device(w), "weight")
        self.bias = (Parameter(_on_default_device(_bias_uniform(rng, self.out_channels, fan_in)), "bias")
                     if bias else None)
        _factory(self, device, dtype)

    def forward(self, x, output_size=None):
        output_padding = self.output_padding if output_size is None else self._output_padding(x, output_size)
        y, cache = ops.conv_transpose2d_forward(x, self.weight.value, None if self.bias is None else self.bias.value,
                                                self.stride, self.padding, output_padding, groups=self.groups,
                                                dilation=self.dilation)
        self._keep(cache)
        return y

    def _output_padding(self, x, output_size):
        """The output_padding that gives ``output_size`` (PyTorch's ``forward(x, output_size)``)."""
        check_array("x", x)
        if not isinstance(output_size, (tuple, list)):
            raise TypeError(f"ConvTranspose2d: output_size must be (OH, OW) or (N, C, OH, OW), got {output_size!r}")
        if len(output_size) not in (2, 4):  # PyTorch's error for another length is a ValueError
            raise ValueError(f"ConvTranspose2d: output_size must have 2 elements (OH, OW) or 4 (N, C, OH, OW), got "
                             f"{len(output_size)}: {tuple(output_size)!r}")
        size = tuple(output_size)[-2:]
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in size):  # np.int64 too
            raise TypeError(f"ConvTranspose2d: output_size must hold ints, (OH, OW) or (N, C, OH, OW), got "
                            f"{output_size!r}{whole_float_hint(size)}")
        size = tuple(int(v) for v in size)
        pads = []
        for axis, have, want, k, s, p, d in zip(("height", "width"), x.shape[2:], size, self.kernel_size,
                                                self.stride, self.padding, self.dilation):
            smallest = (have - 1) * s - 2 * p + d * (k - 1) + 1
            if not smallest <= want < smallest + s:
                raise ValueError(f"ConvTranspose2d: output_size {want} along the {axis} is out of reach: this layer "
                                 f"gives {smallest} to {smallest + s - 1} from an input of {have} (stride {s}, padding "
                                 f"{p}, kernel {k}" + (f", dilation {d})" if d != 1 else ")"))
            pads.append(want - smallest)
        return tuple(pads)

    def backward(self, dy, need_dx=True):
        return _convolution_backward(self, ops.conv_transpose2d_backward, dy, need_dx)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}"
                + (f", output_padding={self.output_padding}" if any(self.output_padding) else "")
                + (f", dilation={self.dilation}" if self.dilation != (1, 1) else "")
                + (f", groups={self.groups}" if self.groups != 1 else "") + f", bias={self.bias is not None}")


class Linear(Layer):
    """Fully connected layer ``y = x.reshape(N, -1) @ W.T + b`` with W as (out_features, in_features)."""

    _registers_attributes = False
    _param_names = ("weight", "bias")
    _low_precision_params = ("weight", "bias")

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *, seed=None):
        super().__init__()
        self.in_features = _int("in_features", in_features, 1)
        self.out_features = _int("out_features", out_features, 1)
        rng = _layer_rng(seed)
        w = _kaiming_uniform(rng, (self.out_features, self.in_features), self.in_features)
        self.weight = Parameter(_on_default_device(w), "weight")
        self.bias = (Parameter(_on_default_device(_bias_uniform(rng, self.out_features, self.in_features)), "bias")
                     if bias else None)
        _factory(self, device, dtype)

    def forward(self, x):
        y, cache = ops.linear_forward(x, self.weight.value, None if self.bias is None else self.bias.value)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        dx, dw, db = ops.linear_backward(dy, self._take_cache())
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class BatchNorm2d(Layer):
    """Batch normalization over (N, H, W) per channel; running statistics are buffers.

    Training mode normalizes with the batch statistics and updates ``running_mean`` /
    ``running_var`` in place (PyTorch's rule: unbiased variance, ``momentum`` weight on the new
    value); eval mode normalizes with the running statistics. As in PyTorch, an empty batch gives an
    empty output and leaves the running statistics unchanged; one value per channel (N*H*W == 1)
    in training is refused.

    ``activation='relu'`` or ``'gelu'`` applies that activation to the output in the same pass:
    the layer then equals ``BatchNorm2d`` followed by ``ReLU()``/``GELU()``, bit for bit, with the
    activation's passes over memory (and its launches, on a GPU) saved; its parameters, buffers
    and state dict are those of the plain layer."""

    _registers_attributes = False
    _param_names = ("weight", "bias")
    _buffer_names = ("running_mean", "running_var")
    eps, momentum = _Replayed(), _Replayed()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, device=None,
                 dtype=None, *, activation=None):
        super().__init__()
        if momentum is None:
            raise ValueError("BatchNorm2d(momentum=None) (a cumulative average of every batch) is not supported: give "
                             "the weight of the new batch statistic, a number in [0, 1] (0.1 by default)")
        _only("BatchNorm2d", affine=(affine, True), track_running_stats=(track_running_stats, True))
        self.activation = ops.batchnorm.check_activation(activation)
        self.num_features = _int("num_features", num_features, 1)
        for name, value in (("eps", eps), ("momentum", momentum)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):  # '1e-5' would fail at a comparison
                raise TypeError(f"BatchNorm2d: {name} must be a number, got {value!r} ({type(value).__name__}): "
                                f"pass e.g. {name}={'1e-5' if name == 'eps' else '0.1'}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0 (it keeps 1/sqrt(var + eps) finite), got {eps!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] (the weight of the new batch statistic), got {momentum!r}")
        self.eps, self.momentum = float(eps), float(momentum)
        n = self.num_features
        self.weight = Parameter(_on_default_device(np.ones(n, np.float32)), "weight")
        self.bias = Parameter(_on_default_device(np.zeros(n, np.float32)), "bias")
        self.running_mean = _on_default_device(np.zeros(n, np.float32))
        self.running_var = _on_default_device(np.ones(n, np.float32))
        _factory(self, device, dtype)

    def forward(self, x):
        y, cache = ops.batchnorm2d_forward(x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
                                           training=self.training, momentum=self.momentum, eps=self.eps,
                                           activation=self.activation)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        dx, dgamma, dbeta = ops.batchnorm2d_backward(dy, self._take_cache())
        self.weight.accumulate(dgamma)
        self.bias.accumulate(dbeta)
        return dx

    def extra_repr(self):
        act = "" if self.activation is None else f", activation={self.activation!r}"
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}{act}"


class GroupNorm(Layer):
    """Group normalization (PyTorch's ``nn.GroupNorm``): the ``num_channels`` channels fall into
    ``num_groups`` groups of consecutive channels, and each (sample, group) is normalized with
    the mean and biased variance of its values over the group's channels and every spatial
    position, then scaled and shifted per channel (``weight`` ones and ``bias`` zeros at first;
    ``affine=False``: neither; ``bias=False``, PyTorch's newer keyword: a weight only). No running
    statistics: training and evaluation compute the same thing, and a sample's output does not
    depend on the rest of the batch, which is why small-batch training uses it. ``GroupNorm(1, C)`` is a LayerNorm over (C, H, W), ``GroupNorm(C, C)`` an
    InstanceNorm. Inputs are (N, C, *); a channels_last input gives a channels_last output."""

    _registers_attributes = False
    _param_names = ("weight", "bias")
    num_groups, eps = _Replayed(), _Replayed()  # (the kernels take them by value: a CUDA graph replays its capture's)

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None, *, bias=True):
        super().__init__()
        self.num_channels = _int("num_channels", num_channels, 1)
        self.num_groups = ops.groupnorm.check_groups(num_groups, self.num_channels, "GroupNorm")
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
            raise TypeError(f"GroupNorm: eps must be a number, got {eps!r} ({type(eps).__name__}): pass e.g. eps=1e-5")
        self.eps = ops.groupnorm.check_eps(eps)
        self.affine = check_bool("affine", affine, " (False: no weight and bias)")
        with_bias = self.affine and check_bool("bias", bias, " (False: a weight and no bias)")
        n = self.num_channels
        self.weight = Parameter(_on_default_device(np.ones(n, np.float32)), "weight") if self.affine else None
        self.bias = Parameter(_on_default_device(np.zeros(n, np.float32)), "bias") if with_bias else None
        _factory(self, device, dtype)

    def forward(self, x):
        y, cache = ops.groupnorm_forward(x, self.num_groups, None if self.weight is None else self.weight.data,
                                         None if self.bias is None else self.bias.data, self.eps)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        dx, dweight, dbias = ops.groupnorm_backward(dy, self._take_cache())
        if self.weight is not None:
            self.weight.accumulate(dweight)
        if self.bias is not None:
            self.bias.accumulate(dbias)
        return dx

    def extra_repr(self):
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None}")


# ----------------------------------------------------------------------------- parameter-free layers
class _Pool2d(Layer):
    """What max and average pooling share: the arguments (``stride`` defaults to ``kernel_size``)
    and the printout. A common base, so that an AvgPool2d is not an ``isinstance`` MaxPool2d."""

    _registers_attributes = False

    def __init__(self, kernel_size, stride=None, floor=False, padding=0):
        super().__init__()
        self.floor = check_floor(floor)
        k = _pair("kernel_size", kernel_size, 1)
        if stride is not None:
            _pair("stride", stride, 1)
        from .ops.pool2d import check_pool_padding
        self._padding = check_pool_padding(padding, k)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def extra_repr(self):
        # The stride in effect, as PyTorch prints it (None means "the kernel size"); a padding when there is one.
        stride = self.kernel_size if self.stride is None else self.stride
        padding = "" if self._padding == (0, 0) else f", padding={self.padding}"
        return f"kernel_size={self.kernel_size}, stride={stride}{padding}" + (", floor=True" if self.floor else "")


class MaxPool2d(_Pool2d):
    """Max pooling; ``stride`` defaults to ``kernel_size``. Gradients go to the argmax of each window.

    ``floor=False`` (the default) rejects sizes the windows do not tile (no silent cropping);
    ``floor=True`` takes PyTorch's default rule, ``floor((H + 2P - F) / S) + 1`` windows: the rows and
    columns past the last window are dropped (a 2x2 pool takes 31x31 to 15x15) and get a zero
    gradient. ``padding`` (an int or (h, w) pair, at most ``kernel_size // 2``): -inf around the
    input, which no window takes as its maximum (``MaxPool2d(3, 1, padding=1)`` keeps H and W, the
    pool branch of an Inception block; ``MaxPool2d(3, 2, padding=1, floor=True)``, the ResNet stem's)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False, *,
                 floor=False):
        _only("MaxPool2d", dilation=(dilation, (1, 1)), return_indices=(return_indices, False),
              ceil_mode=(ceil_mode, False))
        super().__init__(kernel_size, stride, floor, padding)

    def forward(self, x):
        y, cache = ops.max_pool2d_forward(x, kernel_size=self.kernel_size, stride=self.stride, floor=self.floor,
                                          padding=self.padding)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return ops.max_pool2d_backward(dy, self._take_cache())


class LPPool2d(_Pool2d):
    """Power-average pooling, PyTorch's ``nn.LPPool2d(norm_type, kernel_size, stride=None)``:
    ``(sum of x^p)^(1/p)`` over each window, the p-norm of non-negative windows (``norm_type=2``: the
    L2 norm; no absolute value is taken, as in PyTorch: :func:`gpuconv.ops.lp_pool2d_forward`);
    ``stride`` defaults to ``kernel_size``; ``floor`` as for :class:`MaxPool2d`."""

    norm_type = _Replayed()

    def __init__(self, norm_type, kernel_size, stride=None, ceil_mode=False, *, floor=False):
        _only("LPPool2d", ceil_mode=(ceil_mode, False))
        super().__init__(kernel_size, stride, floor)
        from .ops.lp_pool2d import check_norm
        self.norm_type = check_norm(norm_type)

    def forward(self, x):
        y, cache = ops.lp_pool2d_forward(x, self.norm_type, kernel_size=self.kernel_size, stride=self.stride,
                                         floor=self.floor)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return ops.lp_pool2d_backward(dy, self._take_cache())

    def extra_repr(self):
        return f"norm_type={self.norm_type:g}, " + super().extra_repr()


class AvgPool2d(_Pool2d):
    """Average pooling; ``stride`` defaults to ``kernel_size``; ``floor`` and ``padding`` as for
    :class:`MaxPool2d`, the padding zeros, counted in the divisor (``kernel_size`` taps) with
    ``count_include_pad=True`` (PyTorch's default) and not with False (each window's in-bounds taps)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None, *, floor=False):
        _only("AvgPool2d", ceil_mode=(ceil_mode, False), divisor_override=(divisor_override, None))
        super().__init__(kernel_size, stride, floor, padding)
        self.count_include_pad = check_bool("count_include_pad", count_include_pad)

    def forward(self, x):
        y, cache = ops.avg_pool2d_forward(x, kernel_size=self.kernel_size, stride=self.stride, floor=self.floor,
                                          padding=self.padding, count_include_pad=self.count_include_pad)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return ops.avg_pool2d_backward(dy, self._take_cache())

    def extra_repr(self):
        return super().extra_repr() + ("" if self.count_include_pad else ", count_include_pad=False")


class _AdaptivePool2d(Layer):
    """What adaptive average and max pooling share: ``output_size`` (an int, or an (h, w) pair
    whose None entries keep the input's size) and the ops (``_pool``: their name), which take
    PyTorch's windows for any output size (:mod:`gpuconv.ops.adaptive_pool2d`)."""

    _pool: str = ""

    _registers_attributes = False

    def __init__(self, output_size):
        super().__init__()
        pair = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        if len(pair) != 2:
            raise ValueError(f"{type(self).__name__}: output_size must be an int or an (h, w) pair, "
                             f"got {output_size!r}")
        self.output_size = tuple(None if v is None else _int("output_size", v, 1) for v in pair)

    def forward(self, x):
        check_array("x", x)
        y, cache = getattr(ops, f"adaptive_{self._pool}_forward")(x, self.output_size)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return getattr(ops, f"adaptive_{self._pool}_backward")(dy, self._take_cache())

    def extra_repr(self):
        size = self.output_size
        return f"output_size={size[0] if size[0] == size[1] else size}"


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """PyTorch's ``nn.AdaptiveAvgPool2d(output_size)``: ``AdaptiveAvgPool2d(1)`` is global average
    pooling (a ResNet's last pool); output sizes that divide the input pool equal windows (average
    pooling with a window and stride of ``H // OH`` by ``W // OW``), others PyTorch's windows of
    different sizes."""

    _pool = "avg_pool2d"


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """PyTorch's ``nn.AdaptiveMaxPool2d(output_size)``, windows as :class:`AdaptiveAvgPool2d`'s
    (``return_indices=False`` only)."""

    _pool = "max_pool2d"

    def __init__(self, output_size, return_indices=False):
        _only("AdaptiveMaxPool2d", return_indices=(return_indices, False))
        super().__init__(output_size)


class ReLU(Layer):
    """``max(x, 0)``. ``inplace`` is accepted as PyTorch spells it and changes nothing: the output
    is always a new array (the backward reads the input)."""

    _registers_attributes = False

    def __init__(self, inplace=False):
        super().__init__()
        _check_inplace("ReLU", inplace)

    def forward(self, x):
        y, cache = ops.relu_forward(x)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return ops.relu_backward(dy, self._take_cache())


class GELU(Layer):
    """GELU, exact erf form (PyTorch's ``nn.GELU()`` default): ``x * Phi(x)``."""

    _registers_attributes = False

    def __init__(self, approximate="none"):
        super().__init__()
        _only("GELU", approximate=(approximate, "none"))

    def forward(self, x):
        y, cache = ops.gelu_forward(x)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return ops.gelu_backward(dy, self._take_cache())


class LeakyReLU(Layer):
    """``x`` where ``x > 0``, else ``negative_slope * x`` (PyTorch's ``nn.LeakyReLU``, whose gradient
    at 0 takes the slope too). ``inplace`` is accepted as PyTorch spells it and changes nothing:
    the output is always a new array (the backward reads the input)."""

    _registers_attributes = False
    negative_slope = _Replayed()

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = check_negative_slope(negative_slope, "LeakyReLU")
        _check_inplace("LeakyReLU", inplace)

    def forward(self, x):
        y, cache = ops.leaky_relu_forward(x, self.negative_slope)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return ops.leaky_relu_backward(dy, self._take_cache())

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class SiLU(Layer):
    """``x * sigmoid(x)`` (PyTorch's ``nn.SiLU``, also called swish). ``inplace`` is accepted as
    PyTorch spells it and changes nothing: the output is always a new array."""

    _registers_attributes = False

    def __init__(self, inplace=False):
        super().__init__()
        _check_inplace("SiLU", inplace)

    def forward(self, x):
        y, cache = ops.silu_forward(x)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return ops.silu_backward(dy, self._take_cache())


class Sigmoid(Layer):
    """``1 / (1 + exp(-x))``, overflow-free (PyTorch's ``nn.Sigmoid``); the backward reads the output."""

    _registers_attributes = False

    def forward(self, x):
        y, cache = ops.sigmoid_forward(x)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return ops.sigmoid_backward(dy, self._take_cache())


class Tanh(Layer):
    """``tanh(x)`` (PyTorch's ``nn.Tanh``); the backward reads the output."""

    _registers_attributes = False

    def forward(self, x):
        y, cache = ops.tanh_forward(x)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return ops.tanh_backward(dy, self._take_cache())


class Identity(Layer):
    """``y = x``: a placeholder layer, as PyTorch's ``nn.Identity`` (any arguments are ignored)."""

    _registers_attributes = False

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x

    def backward(self, dy, need_dx=True):
        return dy


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W) in (C, H, W) order; a view, no copy, of an NCHW array (a
    channels_last one is gathered into that order). The gradient comes back in the input's layout."""

    _registers_attributes = False

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        _only("Flatten", start_dim=(start_dim, 1), end_dim=(end_dim, -1))

    def forward(self, x):
        check_array("x", x)
        if x.ndim < 2:  # (a 1-D sample would be taken for a batch of one-feature rows, as PyTorch refuses it)
            raise ValueError(f"Flatten: x must have shape (N, ...) with a batch axis and at least one feature axis, got "
                             f"shape {tuple(x.shape)}: add the batch axis, e.g. x.reshape(1, -1)")
        channels_last = layout.is_channels_last(x)
        self._keep((x.shape, channels_last))
        # (channels_last: a gathering copy, made on x's GPU)
        with array_device_context((x,)) if channels_last else contextlib.nullcontext():
            return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # -1 fails for N = 0

    def backward(self, dy, need_dx=True):
        shape, channels_last = self._take_cache()
        check_array("dy", dy)
        flat = (shape[0], int(np.prod(shape[1:])))
        if tuple(dy.shape) != flat:  # a reshape would take any dy of as many values (a transposed one too)
            raise ValueError(f"Flatten.backward: dy must have the forward output's shape {flat} (x {tuple(shape)} "
                             f"flattened), got {tuple(dy.shape)}")
        dx = dy.reshape(shape)
        return layout.to_channels_last(dx) if channels_last else dx


class Unflatten(Layer):
    """PyTorch's ``nn.Unflatten(dim, unflattened_size)``: axis ``dim`` of x split into
    ``unflattened_size`` (a view, no copy, of a C-contiguous x): ``Unflatten(1, (128, 4, 4))`` turns a
    generator's (N, 2048) Linear output into (N, 128, 4, 4) images. One size may be -1 (inferred).
    The gradient comes back in x's shape."""

    _registers_attributes = False

    def __init__(self, dim, unflattened_size):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise TypeError(f"Unflatten: dim must be an int axis, got {dim!r}")
        sizes = tuple(unflattened_size) if isinstance(unflattened_size, (tuple, list)) else None
        if not sizes or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and (v >= 1 or v == -1)
                                for v in sizes) or sizes.count(-1) > 1:
            raise ValueError(f"Unflatten: unflattened_size must be a tuple of sizes >= 1 (one of them may be -1), got "
                             f"{unflattened_size!r}, e.g. Unflatten(1, (128, 4, 4))")
        self.dim, self.unflattened_size = int(dim), tuple(int(v) for v in sizes)

    def forward(self, x):
        check_array("x", x)
        if not -x.ndim <= self.dim < x.ndim:
            raise ValueError(f"Unflatten: dim={self.dim} is not an axis of x with shape {tuple(x.shape)}")
        d = self.dim % x.ndim
        known = int(np.prod([v for v in self.unflattened_size if v != -1]))
        sizes = tuple(x.shape[d] // known if v == -1 else v for v in self.unflattened_size)
        if int(np.prod(sizes)) != x.shape[d]:
            raise ValueError(f"Unflatten: axis {self.dim} of x (shape {tuple(x.shape)}) has {x.shape[d]} values, which "
                             f"unflattened_size {self.unflattened_size} does not split (it holds "
                             f"{int(np.prod(sizes))})")
        out = x.shape[:d] + sizes + x.shape[d + 1:]
        self._keep((x.shape, out))
        with array_device_context((x,)):  # (a copy where x's memory order needs one: on x's GPU)
            return x.reshape(out)

    def backward(self, dy, need_dx=True):
        shape, out = self._take_cache()
        check_array("dy", dy)
        if tuple(dy.shape) != tuple(out):  # a reshape would take any dy of as many values
            raise ValueError(f"Unflatten.backward: dy must have the forward output's shape {tuple(out)} (x "
                             f"{tuple(shape)} unflattened), got {tuple(dy.shape)}")
        return dy.reshape(shape)

    def extra_repr(self):
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"


class Scale(Layer):
    """``y = factor * x``: the fixed output scaling of fast ResNet-style nets (0.125 in ResNet-9).

    Scaling logits down keeps the softmax from saturating early (:func:`gpuconv.ops.scale_forward`:
    bfloat16/float16 multiplied in float32 and rounded once, one kernel launch on a GPU)."""

    _registers_attributes = False
    factor = _Replayed()

    def __init__(self, factor):
        super().__init__()
        self.factor = check_factor(factor, "Scale(factor=...)")

    def forward(self, x):
        y, cache = ops.scale_forward(x, self.factor)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return ops.scale_backward(dy, self._take_cache())

    def extra_repr(self):
        return f"{self.factor}"


class Dropout(Layer):
    """Inverted dropout: in training, zero each value with probability ``p`` and scale the rest
    by 1/(1-p); identity in eval mode. ``seed`` (an int) makes the masks reproducible; ``inplace``,
    as PyTorch spells it, changes nothing (the output is a new array).

    The layer owns ONE ``numpy.random.Generator`` (seeded by ``seed``) whatever the device: each
    training forward draws one 64-bit key from it on the host, and the mask is a hash of (key,
    element index) computed where the data lives (see :mod:`gpuconv.ops.dropout`). So the same
    seed gives the same masks on 'cpu', 'sim' and 'cuda', and the trainer's checkpoints save and
    restore the generator (under ``rng/model.<name>._rngs.numpy``) for a bit-exact resume.

    A step replayed as a CUDA graph (:class:`gpuconv.graphs.StepGraph`) runs no Python, so a key
    drawn in the forward would be the capture's at every replay. While such a graph holds the
    layer, its training forward draws nothing: it reads the key from a one-element device array,
    which :meth:`write_key` fills before each step with the next key of the same generator. The
    keys, hence the masks, are the eager run's, one per step, and a checkpoint's generator resumes
    them exactly."""

    _registers_attributes = False
    p = _Replayed()  # a change while a captured step holds the layer is refused (the kernel takes it by value)
    _key_at = None          # write_key's one-element uint64 array: the key the training forward reads on the device
    _key_on_device = False  # whether the training forward reads _key_at (a captured step holds the layer)
    _key_written = False    # whether write_key wrote a key that no forward has read yet

    def __init__(self, p=0.5, inplace=False, *, seed=None):
        super().__init__()
        _check_inplace("Dropout", inplace)
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout(p={p!r}): p is the DROP probability and must be in [0, 1) "
                             "(p=1 would leave nothing to rescale); use p=0.5 for the usual rate")
        if seed is not None:
            seed = check_seed(seed)
        self.p, self.seed = float(p), seed
        # Under the name checkpoints have always used (named_generators: "_rngs.numpy").
        self._rngs = {"numpy": _layer_rng(seed)}

    def _own_generators(self):
        return [("_rngs.numpy", self._rngs["numpy"])]

    def _rng(self, xp=None):
        """The mask-key generator (``xp`` is accepted for the trainer's call and ignored: one
        NumPy generator serves NumPy and CuPy inputs)."""
        return self._rngs["numpy"]

    def forward(self, x):
        if self._key_on_device and self.training and self.p > 0:
            y, cache = ops.dropout_forward(x, p=self.p, key_at=self._written_key())
        else:
            rng = self._rng() if self.training else None
            y, cache = ops.dropout_forward(x, p=self.p, training=self.training, rng=rng)
        self._keep(cache)
        return y

    def key_on_device(self, on=True):
        """Make the training forward read its mask key from the device array :meth:`write_key`
        fills (``on``), or draw it itself again (``on=False``). A captured step's owner
        (``StepGraph.for_optimizer``) switches it on while it holds the layer and off at release."""
        self._key_on_device = bool(on)
        self._key_written = False

    def write_key(self, xp=np):
        """Draw the next mask key from the layer's generator (the draw an eager training forward
        makes) and write it into the one-element uint64 array of ``xp`` (numpy, or cupy on the
        current GPU) that the training forward reads while :meth:`key_on_device` is on: a fill,
        launched with the key as its argument, no host-to-device transfer. Called before each
        step, outside a captured graph, so that every replay reads a new key."""
        from .ops.dropout import draw_key
        key = draw_key(self._rng())
        if self._key_at is None or get_array_module(self._key_at) is not xp \
                or (xp is not np and device_id(self._key_at) != xp.cuda.Device().id):  # (a model moved to another GPU)
            self._key_at = xp.zeros(1, np.uint64)
        self._key_at.fill(key)
        self._key_written = True

    def _written_key(self):
        if not self._key_written:
            raise RuntimeError(
                "Dropout: its mask key is read from the device (key_on_device: a captured training step holds "
                "the layer), but no key was written for this forward: call write_key() before each step (the "
                "graph's before does), and use a Dropout layer once per forward pass (a second use would "
                "reuse the key, hence the mask; give each place a Dropout of its own)")
        self._key_written = False
        return self._key_at

    def __getstate__(self):
        # A copy is held by no graph: it draws its keys itself, and makes its own key array.
        state = super().__getstate__()
        for name in ("_key_at", "_key_on_device", "_key_written"):
            state.pop(name, None)
        return state

    def backward(self, dy, need_dx=True):
        return ops.dropout_backward(dy, self._take_cache())

    def extra_repr(self):
        return f"p={self.p}"


# ----------------------------------------------------------------------------- containers
class Sequential(Layer):
    """Layers applied in order; backward runs them in reverse.

    ``Sequential(l0, l1, ...)`` names its children '0', '1', ...; ``Sequential({'conv': l0,
    'bn': l1})`` (any mapping with str keys) uses the given names. Indexable by position,
    slice or name; ``len()`` and iteration give the layers. ``append``, ``extend``, ``insert``,
    ``pop``, ``del seq[i]``, ``seq[i] = layer``, ``+`` and ``+=`` change it as PyTorch's do (the
    layers after a change renumbered). Parameters get their full dotted names (``Parameter.name``)
    from the outermost container built."""

    _registers_attributes = False

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], Mapping):
            items = list(layers[0].items())
        else:
            items = [(str(i), layer) for i, layer in enumerate(layers)]
        for name, layer in items:
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"Sequential: child name {name!r} must be a non-empty str without '.'")
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: child {name!r} is a {type(layer).__name__}, not a gpuconv Layer; "
                                "wrap it in a Layer subclass with forward and backward")
        self._layers = dict(items)
        _name_parameters(self)

    def named_children(self):
        return _Walk(self._layers.items())

    def append(self, layer):
        """Add ``layer`` at the end (named by its position, as PyTorch's ``Sequential.append``);
        returns the Sequential. An optimizer built before trains none of its parameters: give them
        a group, ``optimizer.add_param_group({'params': layer.parameters()})``."""
        name = str(len(self._layers))
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.append: a {type(layer).__name__} is not a gpuconv Layer; wrap it in a Layer "
                            "subclass with forward and backward")
        if name in self._layers:
            raise ValueError(f"Sequential.append: the new layer's name {name!r} (its position) is taken by another "
                             "layer (a Sequential built from a mapping, or a slice, keeps its layers' names); build a "
                             "Sequential with the layer in it, Sequential(*seq, layer)")
        if self._held():  # the captured step calls the layers of its capture
            raise RuntimeError("Sequential.append: the layers cannot change while " + REPLAYED_WAY_OUT)
        self._layers[name] = layer
        _name_parameters(layer, _path(self, name))
        return self

    def __setitem__(self, index, layer):
        """``seq[i] = layer`` (a position, or a name): the layer there replaced, under its name (a
        fine-tuned head, as in PyTorch). An optimizer built before trains the old layer's
        parameters, not the new one's: give them a group (``optimizer.add_param_group``) or build
        the optimizer after."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential[{index!r}] = ...: a {type(layer).__name__} is not a gpuconv Layer")
        if isinstance(index, slice):
            raise TypeError("Sequential[a:b] = ...: a slice cannot be assigned; assign one position at a time")
        self[index]  # (an IndexError or KeyError naming what the Sequential holds)
        name = index if isinstance(index, str) else list(self._layers)[index]
        if self._held():  # the captured step calls the layers of its capture
            raise RuntimeError("Sequential: a layer cannot be replaced while " + REPLAYED_WAY_OUT)
        self._layers[name] = layer
        _name_parameters(layer, _path(self, name))

    def extend(self, layers):
        """``append`` each of ``layers``; returns the Sequential."""
        for layer in list(layers):  # (the layers given, read before any is added: seq.extend(seq))
            self.append(layer)
        return self

    def add_module(self, name, module):
        """``module`` added at the end under ``name``, as PyTorch's ``Sequential.add_module``."""
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"Sequential.add_module: the name must be a non-empty str without '.', got {name!r}")
        if not isinstance(module, Layer):
            raise TypeError(f"Sequential.add_module({name!r}, ...): a {type(module).__name__} is not a gpuconv Layer")
        if name in self._layers:
            raise KeyError(f"Sequential.add_module: a layer is named {name!r} already; pick another name "
                           f"(seq[{name!r}] = layer replaces it)")
        self._changing("Sequential.add_module")
        self._layers[name] = module
        _name_parameters(module, _path(self, name))

    register_module = add_module

    def __iadd__(self, other):
        """``seq += layers``: ``extend`` in place, as PyTorch's."""
        return self.extend(other)

    def __add__(self, other):
        """``a + b``: a new Sequential of ``a``'s layers, then ``b``'s (the same layer objects, named by
        their new positions, as PyTorch's)."""
        if not isinstance(other, Sequential):
            return NotImplemented
        return Sequential(*self, *other)

    def __mul__(self, count):
        raise TypeError("Sequential * n would hold each layer n times, and a layer keeps the cache of its last "
                        "call only (its backward would take the wrong input): build the copies, e.g. "
                        "Sequential(*[layer for _ in range(n) for layer in (Conv2d(8, 8, 3, padding=1), ReLU())])")

    __rmul__ = __imul__ = __mul__

    def _positional(self) -> bool:
        """Whether the layers are named by their positions ('0', '1', ...), as PyTorch names them."""
        return all(name == str(i) for i, name in enumerate(self._layers))

    def _changing(self, what):
        if self._held():  # the captured step calls the layers of its capture
            raise RuntimeError(f"{what}: the layers cannot change while " + REPLAYED_WAY_OUT)

    def _renumber(self, layers, start):
        """The layers named by their new positions (state dict keys and parameter names, as PyTorch
        renumbers them); those from ``start`` on moved."""
        self._layers = {str(i): layer for i, layer in enumerate(layers)}
        for i, layer in enumerate(layers[start:], start):
            _name_parameters(layer, _path(self, str(i)))

    def insert(self, index, layer):
        """Put ``layer`` before position ``index`` (``len(seq)``: at the end; negative: counted from the
        end), as PyTorch's ``Sequential.insert``; the layers after it are renumbered (their state dict
        keys move up by one, as in PyTorch). Returns the Sequential. A Sequential built from a mapping
        keeps its names: build a new one with the layer in it. An optimizer built before trains none
        of the new layer's parameters: give them a group (``optimizer.add_param_group``)."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.insert: a {type(layer).__name__} is not a gpuconv Layer; wrap it in a Layer "
                            "subclass with forward and backward")
        index = _insert_position("Sequential", index, len(self._layers))
        if not self._positional():
            raise ValueError(f"Sequential.insert: the layers are named ({', '.join(map(repr, self._layers))}), not "
                             "numbered by position, so the new layer has no name; build a new Sequential with it, "
                             "e.g. Sequential({'conv': conv, 'new': layer, ...})")
        self._changing("Sequential.insert")
        layers = list(self._layers.values())
        layers.insert(index, layer)
        self._renumber(layers, index)
        return self

    def __delitem__(self, index):
        """``del seq[i]`` (a position, a slice or a name): the layers taken out; as in PyTorch, the
        layers after them are renumbered (their state dict keys move down). A Sequential built from
        a mapping keeps its names (PyTorch's would number its layers)."""
        self._remove(index, f"del Sequential[{index!r}]")

    def pop(self, index=-1):
        """Take out and return the layer at ``index`` (a position or a name; the last by default), as
        PyTorch's ``Sequential.pop``; the layers after it renumbered as by ``del seq[i]``."""
        if isinstance(index, slice):
            raise TypeError("Sequential.pop: a slice takes out several layers: read them with seq[a:b], then "
                            "del seq[a:b]")
        layer = self[index]  # (an IndexError or KeyError naming what the Sequential holds)
        self._remove(index, "Sequential.pop")
        return layer

    def _remove(self, index, what):
        names = list(self._layers)
        if isinstance(index, slice):
            gone = names[index]
        else:
            self[index]  # (an IndexError or KeyError naming what the Sequential holds)
            gone = [index if isinstance(index, str) else names[index]]
        self._changing(what)
        positional = self._positional()
        for name in gone:
            del self._layers[name]
        if positional and gone:
            self._renumber(list(self._layers.values()), min(names.index(name) for name in gone))

    def __len__(self):
        return len(self._layers)

    def __iter__(self):
        return iter(self._layers.values())

    def __getitem__(self, index):
        if isinstance(index, str):
            if index not in self._layers:
                raise KeyError(f"Sequential has no layer named {index!r}; its layers are named "
                               f"{', '.join(map(repr, self._layers))}")
            return self._layers[index]
        items = list(self._layers.items())
        if isinstance(index, slice):
            sub = Sequential.__new__(Sequential)  # no renaming: a view of the same layers
            Layer.__init__(sub)
            sub._layers = dict(items[index])
            sub.training = self.training
            return sub
        try:
            return items[index][1]
        except IndexError:
            held = f"{len(items)} layers (indices {-len(items)} to {len(items) - 1})" if items else "no layers"
            raise IndexError(f"Sequential index {index} is out of range: it holds {held}") from None

    def forward(self, x):
        # Called on data (input_is_data): the frozen layers in front of the first trainable one
        # keep no caches (their backward never runs), and that one's input is data in its turn.
        first = _first_trained(self) if _data_input(self) else -1
        for i, (name, layer) in enumerate(self._layers.items()):
            try:
                if i == first:
                    with input_is_data(layer):
                        x = layer(x)
                else:
                    x = layer(x)
            except (ValueError, TypeError) as exc:
                _locate_error(exc, name, layer)
                raise
            if i < first:
                _drop_caches(layer)
        return x

    def backward(self, dy, need_dx=True):
        layers = list(self._layers.values())
        # Without need_dx, nothing before the first layer that trains wants a gradient: that layer
        # skips its input gradient and those before it are not run backward at all (as autograd
        # leaves out what requires no grad), e.g. airbench94's whitening once its bias is frozen.
        first = 0 if need_dx else _first_trained(self)
        for i in range(len(layers) - 1, first - 1, -1):
            dy = call_backward(layers[i], dy, need_dx or i > first)
        for layer in layers[:first]:  # their forward caches (activations) are released as a backward would
            _drop_caches(layer)
        return dy if first == 0 else None


def _insert_position(container, index, n):
    """``index`` of ``container.insert(index, layer)`` as a position in ``0..n`` (``n`` layers held;
    a negative one counted from the end, as ``list.insert``), or an error naming the valid ones."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"{container}.insert(index, layer): index must be an int position, got {index!r}")
    if not -n <= index <= n:
        raise IndexError(f"{container}.insert: index {index} is out of range: it holds {n} layers, so a new one "
                         f"goes at {-n} to {n} ({n}: at the end)")
    return int(index) + n if index < 0 else int(index)


class ModuleList(Layer):
    """PyTorch's ``nn.ModuleList``: layers held in a list, registered (``parameters()``,
    ``state_dict()`` keys ``'0.weight'``..., ``train()``, ``to()``) but not called in any order of
    its own: the layer that holds it writes the forward and the backward. Indexable, iterable;
    ``append``, ``extend``, ``insert``, ``pop``, ``del ml[i]``, ``ml[i] = layer``, ``+`` and ``+=``
    as PyTorch's (the layers after a change renumbered)."""

    _registers_attributes = False

    def __init__(self, layers=()):
        super().__init__()
        self._list = []
        self.extend(layers)

    def _changing(self, what, layer=None):
        if what in ("append", "insert", "__setitem__") and not isinstance(layer, Layer):
            raise TypeError(f"ModuleList.{what}: a {type(layer).__name__} is not a gpuconv Layer")
        if self._held():  # the layer holding the list calls the layers of the capture
            raise RuntimeError(f"ModuleList.{what}: the layers cannot change while " + REPLAYED_WAY_OUT)

    def _renumber(self, start, stop=None):
        """The layers from ``start`` on named by their new positions (as PyTorch renumbers them)."""
        for i, layer in enumerate(self._list[start:stop], start):
            _name_parameters(layer, _path(self, str(i)))

    def append(self, layer):
        self._changing("append", layer)
        self._list.append(layer)
        self._renumber(len(self._list) - 1)
        return self

    def extend(self, layers):
        for layer in list(layers):  # (the layers given, read before any is added: mlist += mlist)
            self.append(layer)
        return self

    def __iadd__(self, layers):
        """``mlist += layers``: ``extend`` in place, as PyTorch's."""
        return self.extend(layers)

    def __add__(self, other):
        """A new ModuleList of this one's layers, then ``other``'s (the same layer objects), as PyTorch's."""
        if not isinstance(other, (ModuleList, list, tuple)):
            return NotImplemented
        return ModuleList(list(self) + list(other))

    def insert(self, index, layer):
        """Put ``layer`` before position ``index`` (``len``: at the end; negative: counted from the end);
        the layers after it are renumbered (their state dict keys move up by one, as in PyTorch)."""
        index = _insert_position("ModuleList", index, len(self._list))
        self._changing("insert", layer)
        self._list.insert(index, layer)
        self._renumber(index)

    def __setitem__(self, index, layer):
        """``mlist[i] = layer``: the layer at position ``i`` replaced, under its name."""
        if isinstance(index, slice):
            raise TypeError("ModuleList[a:b] = ...: a slice cannot be assigned; assign one position at a time")
        self[index]  # (an IndexError naming what the list holds)
        self._changing("__setitem__", layer)
        index = int(index) % len(self._list)
        self._list[index] = layer
        self._renumber(index, index + 1)

    def __delitem__(self, index):
        """``del mlist[i]`` (a position or a slice); the layers after it are renumbered, as in PyTorch."""
        self[index]  # (an IndexError naming what the list holds)
        self._changing("__delitem__")
        gone = range(len(self._list))[index]
        del self._list[index]
        self._renumber(min(gone, default=len(self._list)) if isinstance(gone, range) else gone)

    def pop(self, index=-1):
        """Take out and return the layer at position ``index`` (the last by default), as PyTorch's."""
        if isinstance(index, slice):
            raise TypeError("ModuleList.pop: a slice takes out several layers: read them with mlist[a:b], then "
                            "del mlist[a:b]")
        layer = self[index]
        del self[index]
        return layer

    def named_children(self):
        return _Walk((str(i), layer) for i, layer in enumerate(self._list))

    def __len__(self):
        return len(self._list)

    def __iter__(self):
        return iter(self._list)

    def __getitem__(self, index):
        if isinstance(index, slice):
            sub = ModuleList()  # a view of the same layers: their names stay the holder's
            sub._list = self._list[index]
            return sub
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"ModuleList indices are int positions or slices, got {index!r}")
        try:
            return self._list[index]
        except IndexError:
            n = len(self._list)
            held = f"{n} layers (indices {-n} to {n - 1})" if n else "no layers"
            raise IndexError(f"ModuleList index {index} is out of range: it holds {held}") from None

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleList has no forward of its own: call its layers from the forward of the "
                                  "layer that holds it (or use Sequential, which calls them in order)")

    def backward(self, dy, need_dx=True):
        raise NotImplementedError("ModuleList has no backward of its own: the layer that holds it calls its "
                                  "layers' backward in reverse order")


class ModuleDict(Layer):
    """PyTorch's ``nn.ModuleDict``: layers held under names, in the order they were put there,
    registered (``parameters()``, ``state_dict()`` keys ``'<name>.weight'``, ``train()``, ``to()``)
    but not called in any order of its own: the layer that holds it writes the forward and the
    backward (``self.heads[task](x)``). ``md[name]``, ``md[name] = layer`` (a name held already: the
    layer replaced in its place), ``del md[name]``, ``in``, ``len()``, iteration over the names,
    ``keys()``, ``items()``, ``values()``, ``update()``, ``pop()``, ``clear()`` and ``md.name`` as
    PyTorch's. A name is a non-empty str without '.' that is no attribute of the ModuleDict
    (``'keys'``, ``'training'``), as PyTorch requires."""

    _registers_attributes = False

    def __init__(self, modules=None):
        super().__init__()
        object.__setattr__(self, "_named", {})
        if modules is not None:
            self.update(modules)

    def _check_name(self, name):
        if not isinstance(name, str):
            raise TypeError(f"ModuleDict: a layer's name must be a str, got {type(name).__name__} {name!r}")
        if not name or "." in name:
            raise KeyError(f"ModuleDict: a layer's name must be a non-empty str without '.' (a dotted path "
                           f"would address a sub-layer), got {name!r}")
        if name not in self._named and hasattr(self, name):
            raise KeyError(f"ModuleDict: the name {name!r} is an attribute of the ModuleDict, which "
                           f"md.{name} would read instead of the layer; pick another name")

    def _changing(self, what):
        if self._held():  # the layer holding the dict calls the layers of the capture
            raise RuntimeError(f"ModuleDict.{what}: the layers cannot change while " + REPLAYED_WAY_OUT)

    def _pairs(self, modules):
        """``modules`` (a mapping, or an iterable of (name, layer) pairs) as checked pairs."""
        if isinstance(modules, (Mapping, ModuleDict)):
            pairs = list(modules.items())
        elif isinstance(modules, (str, bytes)) or not hasattr(modules, "__iter__"):
            raise TypeError(f"ModuleDict.update: give a mapping of names to layers or an iterable of (name, layer) "
                            f"pairs, got {type(modules).__name__}")
        else:
            pairs = []
            for i, pair in enumerate(modules):
                if isinstance(pair, (str, bytes)) or not hasattr(pair, "__iter__"):
                    raise TypeError(f"ModuleDict.update: element #{i} is a {type(pair).__name__}, not a (name, "
                                    "layer) pair")
                pair = tuple(pair)
                if len(pair) != 2:
                    raise ValueError(f"ModuleDict.update: element #{i} has length {len(pair)}; a (name, layer) pair "
                                     "has 2")
                pairs.append(pair)
        for name, layer in pairs:
            self._check_name(name)
            if not isinstance(layer, Layer):
                raise TypeError(f"ModuleDict[{name!r}]: a {type(layer).__name__} is not a gpuconv Layer")
        return pairs

    def update(self, modules):
        """Each (name, layer) of ``modules`` (a mapping, a ModuleDict, or an iterable of pairs) put
        in, in its order, as PyTorch's: a name held already keeps its place, with the new layer.
        Nothing changes unless every name and layer is good."""
        pairs = self._pairs(modules)
        if pairs:
            self._changing("update")
        for name, layer in pairs:
            self._named[name] = layer
            _name_parameters(layer, _path(self, name))

    def __setitem__(self, name, layer):
        """``md[name] = layer``: added at the end, or replacing the layer of that name in its place. An
        optimizer built before trains none of the new layer's parameters: give them a group
        (``optimizer.add_param_group``) or build the optimizer after."""
        (name, layer), = self._pairs([(name, layer)])
        self._changing("__setitem__")
        self._named[name] = layer
        _name_parameters(layer, _path(self, name))

    def __getitem__(self, name):
        try:
            return self._named[name]
        except (KeyError, TypeError):
            raise KeyError(f"ModuleDict has no layer named {name!r}; its layers are named "
                           + (", ".join(map(repr, self._named)) or "none")) from None

    def __delitem__(self, name):
        self[name]  # (a KeyError naming what the dict holds)
        self._changing("__delitem__")
        del self._named[name]

    def pop(self, name):
        """Take out and return the layer named ``name``, as PyTorch's."""
        layer = self[name]
        del self[name]
        return layer

    def clear(self):
        """Take out every layer, as PyTorch's."""
        if self._named:
            self._changing("clear")
        self._named.clear()

    def keys(self):
        return self._named.keys()

    def items(self):
        return self._named.items()

    def values(self):
        return self._named.values()

    def __len__(self):
        return len(self._named)

    def __iter__(self):
        return iter(self._named)

    def __contains__(self, name):
        return name in self._named

    def __getattr__(self, name):  # md.conv, as PyTorch's (only for names not found the usual way)
        named = self.__dict__.get("_named")
        if named is not None and name in named:
            return named[name]
        raise AttributeError(f"'ModuleDict' object has no attribute {name!r}")

    def __setattr__(self, name, value):  # md.conv = layer registers it, as PyTorch's
        if isinstance(value, Layer) or name in self.__dict__.get("_named", ()):
            self[name] = value
        else:
            object.__setattr__(self, name, value)

    def __delattr__(self, name):
        if name in self.__dict__.get("_named", ()):
            del self[name]
        else:
            object.__delattr__(self, name)

    def named_children(self):
        return _Walk(self._named.items())

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleDict has no forward of its own: call its layers from the forward of the "
                                  "layer that holds it (self.heads[name](x))")

    def backward(self, dy, need_dx=True):
        raise NotImplementedError("ModuleDict has no backward of its own: the layer that holds it calls its "
                                  "layers' backward in reverse order")


class Residual(Layer):
    """``y = x + inner(x)``; backward ``dx = dy + inner.backward(dy)``. ``inner`` must keep the shape.

    ``shortcut`` (a layer, e.g. ``Sequential(Conv2d(64, 128, 1, 2, floor=True), BatchNorm2d(128))``,
    a ResNet's projection) replaces the identity: ``y = shortcut(x) + inner(x)``, both of one shape,
    and ``dx = shortcut.backward(dy) + inner.backward(dy)``."""

    _registers_attributes = False

    def __init__(self, inner, shortcut=None):
        super().__init__()
        for what, layer in (("inner", inner), ("shortcut", shortcut)):
            if not isinstance(layer, Layer) and (what == "inner" or layer is not None):
                raise TypeError(f"Residual({what}): {what} must be a gpuconv Layer, got {type(layer).__name__}")
        self.inner, self.shortcut = inner, shortcut
        _name_parameters(self)

    def named_children(self):
        return _Walk([("inner", self.inner)] + ([("shortcut", self.shortcut)] if self.shortcut is not None else []))

    def forward(self, x):
        branches = []
        data = _data_input(self)  # then each branch's input is data too (backward(need_dx=False) tells them)
        for name, layer in self.named_children():
            try:
                with input_is_data(layer) if data else contextlib.nullcontext():
                    branches.append(layer(x))
            except (ValueError, TypeError) as exc:
                _locate_error(exc, name, layer)
                raise
        y, skip = branches[0], (branches[1] if self.shortcut is not None else x)
        if y.shape != skip.shape:
            if self.shortcut is None:
                raise ValueError(
                    f"Residual: the inner block maps shape {tuple(x.shape)} to {tuple(y.shape)}, but y = x + inner(x) "
                    "needs equal shapes: keep the channel count and use stride 1 with padding='same' ((k - 1) // 2 "
                    "for an odd k), or give Residual a shortcut that maps x to the inner block's shape")
            raise ValueError(f"Residual: inner(x) has shape {tuple(y.shape)} but shortcut(x) {tuple(skip.shape)}; "
                             "y = shortcut(x) + inner(x) needs equal shapes (the same channels and strides)")
        self._keep(True)
        with array_device_context((y,)):  # (CuPy makes the sum on its current device, not the arrays')
            return skip + y  # a new array: inner's output may sit in a cache of its last layer

    def backward(self, dy, need_dx=True):
        self._take_cache()
        dx_inner = call_backward(self.inner, dy, need_dx)
        dx_skip = dy if self.shortcut is None else call_backward(self.shortcut, dy, need_dx)
        if not need_dx:
            return None
        with array_device_context((dy,)):
            return dx_skip + dx_inner


class Concat(Layer):
    """``y = concatenate([b(x) for b in branches], axis=1)``: branches run on one input, their
    outputs joined along the channels, as ``torch.cat([b(x) for b in branches], 1)`` in PyTorch:
    GoogLeNet's Inception block (four branches), DenseNet's layer (``Concat(Sequential(bn, relu,
    conv), Identity())`` is ``cat([f(x), x], 1)``), the joins of DLA and DPN. Backward splits ``dy``
    by each branch's output channels, runs the branches' backward in reverse order and sums their
    input gradients (with ``need_dx=False``, None: the parameter gradients are still made, and a
    branch that trains nothing, such as DenseNet's Identity, is not run backward at all).

    Every branch gives arrays of one dtype and one shape but for the channels (the same batch size,
    height and width: equal strides, and padding that keeps the size). A 4-D output is
    channels_last when the input or a branch's output is, each branch's output written straight
    into it. ``Concat(a, b)`` names its branches '0', '1', ... (state dict keys ``0.weight``,
    ``1.weight``, as an ``nn.Sequential``'s); ``Concat({'b1': a, 'b2': b})`` (any mapping with str
    keys) names them so (``b1.0.weight``: the keys of a PyTorch module holding its branches as the
    attributes ``b1``, ``b2``, so such an Inception block's state dict loads as it is). Indexable by
    position or name, iterable; ``append`` adds a branch, ``concat[i] = layer`` replaces one (both
    refused while a captured training step holds the model, :mod:`gpuconv.graphs`). ``dim`` is 1
    (the channels), the only join these networks make."""

    _registers_attributes = False

    def __init__(self, *branches, dim=1):
        super().__init__()
        if isinstance(dim, bool) or dim != 1:
            raise ValueError(f"Concat(dim={dim!r}): branches are joined along the channels only, dim=1 (of an "
                             "(N, C, H, W) or (N, C) array), as DenseNet's and Inception's torch.cat(..., 1)")
        if len(branches) == 1 and isinstance(branches[0], Mapping):
            items = list(branches[0].items())
        elif len(branches) == 1 and isinstance(branches[0], (list, tuple)):
            raise TypeError("Concat: the branches are given one by one, Concat(*branches) (Concat(a, b), not "
                            "Concat([a, b])), or as a mapping of names to layers")
        else:
            items = [(str(i), layer) for i, layer in enumerate(branches)]
        if not items:
            raise ValueError("Concat() needs at least one branch, e.g. Concat(Sequential(BatchNorm2d(c), ReLU(), "
                             "Conv2d(c, k, 3, padding=1)), Identity()) for a DenseNet layer")
        for name, layer in items:
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"Concat: branch name {name!r} must be a non-empty str without '.'")
            if not isinstance(layer, Layer):
                raise TypeError(f"Concat: branch {name!r} is a {type(layer).__name__}, not a gpuconv Layer; wrap it "
                                "in a Layer subclass with forward and backward")
        self._branches = dict(items)
        _name_parameters(self)

    def named_children(self):
        return _Walk(self._branches.items())

    def __len__(self):
        return len(self._branches)

    def __iter__(self):
        return iter(self._branches.values())

    def __getitem__(self, index):
        if isinstance(index, str):
            if index not in self._branches:
                raise KeyError(f"Concat has no branch named {index!r}; its branches are named "
                               f"{', '.join(map(repr, self._branches))}")
            return self._branches[index]
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"Concat indices are int positions or branch names, got {index!r}")
        layers = list(self._branches.values())
        if not -len(layers) <= index < len(layers):
            raise IndexError(f"Concat index {index} is out of range: it holds {len(layers)} branches (indices "
                             f"{-len(layers)} to {len(layers) - 1})")
        return layers[index]

    def _changing(self, what, layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"{what}: a {type(layer).__name__} is not a gpuconv Layer")
        if self._held():  # the captured step calls the branches of its capture
            raise RuntimeError(f"{what}: the branches cannot change while " + REPLAYED_WAY_OUT)

    def append(self, layer):
        """Add the branch ``layer``, its output joined after the others' (named by its position);
        returns the Concat. An optimizer built before trains none of its parameters: give them a
        group, ``optimizer.add_param_group({'params': layer.parameters()})``."""
        name = str(len(self._branches))
        if name in self._branches:
            raise ValueError(f"Concat.append: the new branch's name {name!r} (its position) is taken by another "
                             "branch; build a Concat with the branch in it")
        self._changing("Concat.append", layer)
        self._branches[name] = layer
        _name_parameters(layer, _path(self, name))
        return self

    def __setitem__(self, index, layer):
        """``concat[i] = layer`` (a position or a name): the branch there replaced, under its name."""
        self[index]  # (an IndexError or KeyError naming what the Concat holds)
        name = index if isinstance(index, str) else list(self._branches)[index]
        self._changing(f"Concat[{index!r}] = ...", layer)
        self._branches[name] = layer
        _name_parameters(layer, _path(self, name))

    def forward(self, x):
        data = _data_input(self)  # then each branch's input is data too (backward(need_dx=False) tells them)
        outs = []
        for name, layer in self._branches.items():
            try:
                with input_is_data(layer) if data else contextlib.nullcontext():
                    outs.append(layer(x))
            except (ValueError, TypeError) as exc:
                _locate_error(exc, name, layer)
                raise
            if data and not _trains(layer):  # (its backward, need_dx=False, will not run: no caches kept)
                _drop_caches(layer)
        y = _join_channels(self._branches, outs, x)
        self._keep(tuple(int(out.shape[1]) for out in outs))
        return y

    def backward(self, dy, need_dx=True):
        channels = self._take_cache()
        if getattr(dy, "ndim", 0) < 2 or dy.shape[1] != sum(channels):
            raise ValueError(f"Concat.backward: dy has shape {tuple(getattr(dy, 'shape', ()))}, but the forward "
                             f"joined {sum(channels)} channels ({' + '.join(map(str, channels))}, one term per "
                             "branch): pass the gradient of this Concat's output")
        ends = np.cumsum(channels).tolist()
        dx = None
        owned = False  # whether dx is an array of this backward's own, which the next branch's adds into
        with array_device_context((dy,)):  # (CuPy copies and adds on its current device, not the arrays')
            for i, layer in reversed(list(enumerate(self._branches.values()))):
                if not need_dx and not _trains(layer):
                    _drop_caches(layer)  # no gradient wanted of it: not run backward at all
                    continue
                part = call_backward(layer, _dense_part(dy, ends[i] - channels[i], ends[i]), need_dx)
                if not need_dx:
                    continue
                if dx is None:
                    # the first gradient taken as it is, unless it is dy's memory (an Identity's
                    # part, a view of dy where the slice is already dense): never added into
                    dx, owned = part, not get_array_module(part).may_share_memory(part, dy)
                elif owned:
                    dx += part
                else:
                    dx, owned = dx + part, True
        return dx


def _join_channels(names, outs, x):
    """The branches' outputs ``outs`` joined along axis 1 into a new array (channels_last when
    ``x`` or an output is: each written in place, no transposing copy); shapes and dtypes
    checked, the branches named by ``names``."""
    names = list(names)
    for name, out in zip(names, outs):
        if getattr(out, "ndim", 0) < 2:
            raise TypeError(f"Concat: branch {name!r} gave {type(out).__name__} of shape "
                            f"{tuple(getattr(out, 'shape', ()))}; branches must give (N, C, ...) arrays to join "
                            "along the channels")
    first = outs[0]
    for name, out in zip(names[1:], outs[1:]):
        if out.ndim != first.ndim or out.shape[0] != first.shape[0] or out.shape[2:] != first.shape[2:]:
            shapes = ", ".join(f"branch {n!r} {tuple(o.shape)}" for n, o in zip(names, outs))
            raise ValueError(f"Concat: the branches give shapes {shapes}; joining channels needs the same batch "
                             "size, height and width from every branch: give the branches the same stride, and "
                             "convolutions padding that keeps the size (padding='same', or (k - 1) // 2 for an odd "
                             "kernel k), and a stride-1 pooling of window k the padding (k - 1) // 2 as well (an odd k: "
                             "MaxPool2d(3, 1, padding=1))")
        if out.dtype != first.dtype:
            dtypes = ", ".join(f"branch {n!r} {o.dtype}" for n, o in zip(names, outs))
            raise TypeError(f"Concat: the branches give dtypes {dtypes}; their outputs are joined into one array, "
                            "so every branch must give one dtype: cast the odd branch's output (under mixed "
                            "precision, a Layer subclass computing in float32 from a Parameter of its own: name it "
                            "in the class's _low_precision_params so that gpuconv.amp casts it)")
    xp = get_array_module(first)
    shape = (first.shape[0], sum(int(out.shape[1]) for out in outs), *first.shape[2:])
    with array_device_context((first,)):  # CuPy allocates and copies on its current device
        if first.ndim == 4:
            nhwc = layout.is_channels_last(x) or any(layout.is_channels_last(out) for out in outs)
            y = layout.empty(xp, shape, first.dtype, nhwc)
        else:
            y = xp.empty(shape, dtype=first.dtype)
        start = 0
        for out in outs:
            y[:, start:start + out.shape[1]] = out
            start += out.shape[1]
    return y


def _dense_part(dy, start, stop):
    """Channels ``start:stop`` of ``dy`` as a dense array in dy's layout (the kernels of a branch's
    backward read dense memory): the view itself where it is dense already, else a copy."""
    part = dy[:, start:stop]
    if layout.is_channels_last(dy):
        return layout.nhwc_memory_of(part)
    return get_array_module(dy).ascontiguousarray(part)


# ----------------------------------------------------------------------------- loss
class CrossEntropyLoss(Layer):
    """PyTorch's ``nn.CrossEntropyLoss`` over logits (N, C) and integer class labels (N,): the
    batch mean of softmax cross-entropy, ``label_smoothing`` as PyTorch defines it
    (:func:`gpuconv.ops.softmax_cross_entropy`). The loss is a 0-d float32 array (float64 for
    float64 logits) on the logits' device: reading it (``float(loss)``) is the only host trip.

    The backward is explicit, as every layer's: ``loss = criterion(logits, labels)``, then
    ``net.backward(criterion.backward())``; ``backward(g)`` scales the gradient by a Python number
    ``g`` (a scaled loss). ``reduction='sum'`` adds the rows' losses; ``'none'`` returns them, (N,),
    and ``backward(dy)`` takes their upstream gradient, an (N,) array (None: ones). ``weight``, a
    (C,) float array of class weights on the logits' device (a buffer: ``to(device)`` moves it,
    ``state_dict()`` holds it), and ``ignore_index`` (default -100,
    PyTorch's: rows with that label add nothing and leave the mean's divisor) as PyTorch defines
    them."""

    _registers_attributes = False

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0):
        super().__init__()
        _only("CrossEntropyLoss", size_average=(size_average, None), reduce=(reduce, None))
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"CrossEntropyLoss: ignore_index must be an int (PyTorch's default -100), got "
                            f"{ignore_index!r}")
        if weight is not None:
            check_array("weight", weight)
            if weight.ndim != 1 or weight.dtype not in DTYPES:  # (bfloat16's kind is 'V', not 'f')
                raise ValueError(f"CrossEntropyLoss: weight must be a 1-D float array of one weight per class, got "
                                 f"shape {tuple(weight.shape)} dtype {weight.dtype}")
        self.weight, self.ignore_index = weight, int(ignore_index)
        # a buffer, as PyTorch's: to(device) moves it with the logits, state_dict() holds it
        self._buffer_names = ("weight",) if weight is not None else ()
        if reduction not in ops.loss.REDUCTIONS:
            raise ValueError(f"CrossEntropyLoss: reduction must be one of {ops.loss.REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float, np.floating, np.integer)) \
                or not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, input, target):
        loss, dlogits = ops.softmax_cross_entropy(input, target, label_smoothing=self.label_smoothing,
                                                  reduction=self.reduction, weight=self.weight,
                                                  ignore_index=self.ignore_index)
        self._keep(dlogits)
        return loss

    def backward(self, dy=None, need_dx=True):
        """The logits' gradient, ``dy`` times that of the last forward's loss (``dy`` None: 1); with
        ``reduction='none'``, row i times ``dy[i]``."""
        dlogits = self._take_cache()
        if dy is None:
            return dlogits
        if self.reduction != "none":
            return ops.scale_forward(dlogits, check_factor(dy, "CrossEntropyLoss.backward(dy)"))[0]
        check_array("dy", dy)
        get_array_module(dlogits, dy)  # a TypeError when one is on the GPU and the other is not
        if tuple(dy.shape) != dlogits.shape[:1]:
            raise ValueError(f"CrossEntropyLoss(reduction='none').backward(dy): dy must hold one value per row, shape "
                             f"{dlogits.shape[:1]}, got {tuple(dy.shape)}")
        d = upcast(dlogits)  # each row times its dy in the compute dtype, rounded once
        return round_once(d * upcast(dy)[:, None].astype(d.dtype, copy=False), dlogits.dtype)

    def extra_repr(self):
        parts = [f"label_smoothing={self.label_smoothing:g}"] if self.label_smoothing else []
        parts += [f"reduction={self.reduction!r}"] if self.reduction != "mean" else []
        parts += [f"weight=({self.weight.shape[0]},)"] if self.weight is not None else []
        parts += [f"ignore_index={self.ignore_index}"] if self.ignore_index != -100 else []
        return ", ".join(parts)


def zero_grads(params, set_to_none=True):
    """``.grad = None`` for each parameter, or (``set_to_none=False``) its gradient zeroed in place."""
    set_to_none = check_bool("zero_grad(set_to_none)", set_to_none)
    for p in params:
        if set_to_none:
            p.grad = None
        elif p.grad is not None:
            with array_device_context((p.grad,)):  # (CuPy fills on its current device)
                p.grad[...] = 0


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """PyTorch's ``nn.utils.clip_grad_norm_``: scale the gradients of ``parameters`` (a
    Parameter, or several) in place so that their joint ``norm_type``-norm (2, any p >= 1, or
    ``inf``) is at most ``max_norm``; returns that norm before clipping as a 0-d array on the
    gradients' device. Decided on the device: no readback, unless ``error_if_nonfinite`` asks
    to raise on a NaN/Inf norm. Parameters without a gradient take no part. Under fp16 loss
    scaling the gradients are still scaled: clip after the scaler has unscaled them. ``foreach``
    (how PyTorch schedules the same arithmetic) is taken as given."""
    params = [parameters] if isinstance(parameters, Parameter) else list(parameters)
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float, np.integer, np.floating)) \
            or not math.isfinite(max_norm) or max_norm <= 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be a finite number > 0, got {max_norm!r}")
    norm_type = float(norm_type)
    if not (norm_type >= 1.0):
        raise ValueError(f"clip_grad_norm_: norm_type must be >= 1 (2 for the Euclidean norm) or inf, got {norm_type!r}")
    grads = [p.grad for p in params if isinstance(p, Parameter) and p.grad is not None]
    if len(grads) != sum(1 for p in params if not isinstance(p, Parameter) or p.grad is not None):
        raise TypeError("clip_grad_norm_: parameters must be gpuconv Parameters (model.parameters())")
    if not grads:
        return np.zeros((), np.float32)
    with array_device_context(grads[:1]):  # CuPy makes the norms and temporaries on its current device
        return _clip(grads, xp=get_array_module(grads[0]), max_norm=max_norm, norm_type=norm_type,
                     error_if_nonfinite=error_if_nonfinite)


def _clip(grads, xp, max_norm, norm_type, error_if_nonfinite):
    # Summed in float32 at least: a float16 sum of squares overflows past a norm of 256 (every
    # gradient would be scaled to 0), a bfloat16 one stalls (and would never clip).
    acc = np.float64 if any(g.dtype == np.float64 for g in grads) else np.float32
    # One norm per gradient written into a vector, then one reduction over it (a stack of them: CuPy
    # joins more than 8 arrays in one kernel whose table of their addresses it uploads from the host,
    # which the capture of a CUDA graph refuses).
    parts = xp.empty(len(grads), dtype=acc)
    for i, g in enumerate(grads):
        if math.isinf(norm_type):
            parts[i] = xp.max(xp.abs(g)).astype(acc)
        else:
            parts[i] = xp.sum(xp.abs(g.astype(acc, copy=False)) ** norm_type)
    total = xp.max(parts) if math.isinf(norm_type) else xp.sum(parts) ** (1.0 / norm_type)
    total = xp.asarray(total, dtype=acc)
    if error_if_nonfinite and not math.isfinite(float(total)):
        raise RuntimeError(f"clip_grad_norm_: the gradients' total {norm_type:g}-norm is {float(total)}: a "
                           "NaN or Inf gradient (pass error_if_nonfinite=False to clip anyway)")
    scale = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for g in grads:
        if g.dtype == acc:
            g *= scale
        else:  # a half-precision gradient: the product in float32, rounded once
            g[...] = (g.astype(acc) * scale).astype(g.dtype)
    return total


def clip_grad_value_(parameters, clip_value, foreach=None):
    """PyTorch's ``nn.utils.clip_grad_value_``: every gradient element of ``parameters`` (a
    Parameter, or several) clamped in place to ``[-clip_value, clip_value]``, on the gradients'
    device, with no readback (one elementwise launch per gradient, capturable in a CUDA graph);
    returns None, as PyTorch's. A NaN stays a NaN, an infinity becomes the bound. Parameters
    without a gradient take no part. Under fp16 loss scaling the gradients are still scaled: clip
    after the scaler has unscaled them. ``foreach`` (how PyTorch schedules the same arithmetic) is
    taken as given."""
    params = [parameters] if isinstance(parameters, Parameter) else list(parameters)
    if isinstance(clip_value, bool) or not isinstance(clip_value, numbers.Real) or not clip_value >= 0:
        raise ValueError(f"clip_grad_value_: clip_value must be a number >= 0 (the gradients are clamped to "
                         f"[-clip_value, clip_value]), got {clip_value!r}")
    grads = [p.grad for p in params if isinstance(p, Parameter) and p.grad is not None]
    if len(grads) != sum(1 for p in params if not isinstance(p, Parameter) or p.grad is not None):
        raise TypeError("clip_grad_value_: parameters must be gpuconv Parameters (model.parameters())")
    bound = float(clip_value)
    for g in grads:
        # The bounds go to the kernel by value (nothing uploaded); the comparison is in the
        # gradient's dtype, so a float16 or bfloat16 gradient gets the bound rounded once.
        with array_device_context((g,)):  # CuPy launches on its current device
            get_array_module(g).clip(g, -bound, bound, out=g)


def _trains(layer) -> bool:
    """Whether any parameter of ``layer`` (or of the layers inside it) takes a gradient."""
    return any(p.requires_grad for p in layer.parameters())


def _first_trained(seq):
    """The index of the first layer of the Sequential ``seq`` that takes a gradient (its length: none)."""
    layers = list(seq._layers.values())
    return next((i for i, layer in enumerate(layers) if _trains(layer)), len(layers))


def _drop_caches(layer):
    for m in layer.modules():
        m._cache = None


# The layer whose input, in the forward running now, is data: no gradient of it is wanted, and
# its backward will be told so (need_dx=False). Set by input_is_data; a Sequential passes it on
# to its first trainable layer, a Residual to its branches.
_DATA_INPUT = contextvars.ContextVar("gpuconv_data_input", default=None)


def _data_input(container) -> bool:
    """Whether ``container``'s input in this forward is data, for a backward that hears need_dx."""
    return _DATA_INPUT.get() is container and _takes_need_dx(type(container))


def switch_to_eval(model):
    """Put ``model`` in eval mode; returns the function that puts every layer back in the mode and
    with the training cache it had: a forward waiting for its backward keeps its caches (an
    evaluation, a prediction or a summary in between changes nothing). The model goes back through
    its own ``train(mode)`` first (a subclass's override runs, as it would without the caches)."""
    modules = model.modules() if callable(getattr(model, "modules", None)) else None
    saved = [(m, m.training, m.__dict__.get("_cache")) for m in modules] if modules is not None else None
    was_training = getattr(model, "training", True)
    model.eval()

    def restore():
        model.train(was_training)  # (through the model's own train(), which a subclass may extend)
        for m, mode, cache in saved or ():
            m.training, m._cache = mode, cache
    return restore


@contextlib.contextmanager
def eval_mode(model):
    """``with eval_mode(model):`` the block in eval mode, every layer's own mode and training
    cache back after it (:func:`switch_to_eval`)."""
    restore = switch_to_eval(model)
    try:
        yield model
    finally:
        restore()


@contextlib.contextmanager
def input_is_data(model):
    """A context for a forward of ``model`` on data, whose backward will be called with
    ``need_dx=False`` (``call_backward(model, dy, need_dx=False)``, as a training step does): no
    layer keeps a cache that only an input gradient would read. A Sequential keeps none for the
    frozen layers in front of its first trainable one, which that backward never runs
    (airbench94's whitening conv and its GELU once the bias is frozen: a batch of activations
    each, from the forward to the backward). A backward with ``need_dx=True`` after such a
    forward finds those caches missing (a RuntimeError)."""
    token = _DATA_INPUT.set(model)
    try:
        yield
    finally:
        _DATA_INPUT.reset(token)


def call_backward(layer, dy, need_dx):
    """``layer.backward(dy)``, telling it when its input gradient is unused, if it can hear that:
    a user's layer written as ``backward(self, dy)`` keeps working inside the containers."""
    if need_dx or not _takes_need_dx(type(layer)):
        return layer.backward(dy)
    return layer.backward(dy, need_dx=False)


@functools.lru_cache(maxsize=None)
def _takes_need_dx(cls) -> bool:
    params = inspect.signature(cls.backward).parameters
    return "need_dx" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _locate_error(exc, name, layer):
    """Prefix an error raised inside a container with the dotted path of the layer that raised it.

    An op's message names its own arguments ("x has C=1 channels but w expects C=3"); inside a
    network the reader also needs to know which layer that was, e.g. ``in layer 'layer1.conv'
    (Conv2d(8, 16, ...))``. The exception keeps its type and traceback; each enclosing container
    adds its part of the path as the error travels up."""
    if len(exc.args) != 1 or not isinstance(exc.args[0], str):
        return
    located = getattr(exc, "_gpuconv_layer", None)
    if located is None:  # the innermost container: remember the message and the failing layer
        message, leaf, path = exc.args[0], layer, name
    else:
        message, leaf, path = located[0], located[1], f"{name}.{located[2]}"
    exc._gpuconv_layer = (message, leaf, path)
    head = repr(leaf).split("\n", 1)[0].rstrip("(")
    hint, params = "", leaf.parameters()
    if params and "cupy.ndarray" in message and "numpy.ndarray" in message:
        hint = (f" (the layer's parameters are on {device_of(params[0].data)}: move the model with "
                "model.to(device) or the input with gpuconv.to_device(x, device))")
    elif isinstance(leaf, Linear) and message.startswith("feature mismatch"):
        hint = (f" (in a network this usually means the input images are not the size the network was built "
                f"for: its layers before {path!r} turn them into this many features; build the network for "
                "the images' size, or resize the images)")
    elif params and "has dtype" in message and "but x has dtype" in message:
        dt = params[0].value.dtype  # what the layer computes in: a mixed-precision copy's dtype under autocast
        unlisted = [(type(m).__name__, n) for m in leaf.modules() for n, _ in m._own_parameters()
                    if n not in getattr(m, "_low_precision_params", ())]
        low_x = any(f"but x has dtype {name}" in message for name in ("bfloat16", "float16"))
        hint = (f" (the layer's parameters are {dt}: pass x.astype(np.{dt}); for a float64 x, convert the model "
                "with model.astype(np.float64); for bfloat16 or float16, run it in mixed precision, e.g. `with "
                "gpuconv.amp.autocast(model, 'bf16') as dt: model(x.astype(dt))`"
                + ("; already in mixed precision (amp.autocast, a bf16/fp16 Trainer), this layer's parameters "
                   + ", ".join(f"{c}.{n}" for c, n in unlisted) + " get no low-precision copy: name them in the "
                   f"class's _low_precision_params, e.g. _low_precision_params = ({unlisted[0][1]!r},) in "
                   f"{unlisted[0][0]}, as Conv2d lists ('weight', 'bias')" if low_x and unlisted else "")
                + ")" if dt == params[0].dtype else
                f" (under mixed precision the layer computes in {dt}: pass the batch in {dt}, e.g. "
                f"gpuconv.amp.cast_input(x, {dt}), as gpuconv.amp.training_step does; if the batch is {dt}, a "
                "layer before this one computed in float32, such as a Layer subclass multiplying by a Parameter "
                "of its own: name that parameter in the class's _low_precision_params so that amp casts it)")
    exc.args = (f"in layer {path!r} ({head}): {message}{hint}",)


def _naming_setattr(layer, name, value):
    """``layer.name = value``, and the parameters set with it named under ``name`` (only the
    subtree set is renamed: the names grow as the model is put together, at a cost proportional to
    its size times its depth)."""
    old = layer.__dict__.get(name)
    if old is not value and (isinstance(value, (Parameter, Layer)) or isinstance(old, (Parameter, Layer))) \
            and layer.__dict__.get("_held_by_graph"):  # a captured step computes with the layers of its capture
        raise RuntimeError(f"{type(layer).__name__}.{name}: a sub-layer or parameter cannot be replaced while "
                           + REPLAYED_WAY_OUT)
    object.__setattr__(layer, name, value)
    if isinstance(value, Parameter):
        value.name = _path(layer, name)
    elif isinstance(value, Layer):
        _name_parameters(value, _path(layer, name))


def _name_parameters(container, prefix=""):
    """Each parameter of ``container`` named by its dotted path, under ``prefix``; each layer in it
    keeps its own path, under which a layer a container is given later (``append``) is named."""
    for name, m in container.named_modules():
        m.__dict__["_path"] = _join(prefix, name) if name else prefix  # (not an attribute to register)
    for name, p in container.named_parameters():
        p.name = _join(prefix, name)


def _path(layer, name):
    """The dotted path of ``layer``'s child ``name`` (``layer``'s own as its container named it)."""
    return _join(layer.__dict__.get("_path", ""), name)
