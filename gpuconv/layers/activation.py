"""The elementwise layers: the activations (``ReLU``, ``GELU``, ``LeakyReLU``, ``SiLU``,
``Sigmoid``, ``Tanh``) and ``Scale``, a fixed factor (the output scaling of fast ResNet-style
nets); each a call into its op, with no parameters."""
from __future__ import annotations

from .. import ops
from ..ops._checks import only_defaults as _only
from ..ops.activations import check_negative_slope
from ..ops.scale import check_factor
from ._construct import _Replayed, _check_inplace
from .module import Layer


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
