"""``Parameter``: a trainable array with its gradient and its dotted name, the float32 master of
a mixed-precision copy, frozen or trained by ``requires_grad``; and ``_Size``, what its ``size``
gives (NumPy's count, PyTorch's shape when called)."""
from __future__ import annotations

import numpy as np

from ..backend import array_device_context, device_of, is_cupy_array
from ..graphs import REPLAYED_WAY_OUT
from ..ops._checks import check_bool, check_float


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
        if not self._requires_grad:  # (the property's value, read without its call)
            return
        if grad.shape != self.data.shape:
            raise ValueError(f"gradient for parameter {self.name!r} has shape {grad.shape}, "
                             f"the parameter has {self.data.shape}: the op's backward and the layer disagree")
        if grad.dtype == self.data.dtype and self.grad is None:
            self.grad = grad
        elif type(grad) is np.ndarray:
            self._add(grad)
        else:  # CuPy converts and adds on its current device: the parameter's made current
            with array_device_context((self.data,)):
                self._add(grad)

    def _add(self, grad):
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
