"""``Linear``, the fully connected layer (``gpuconv.ops.linear_forward``), initialized as
PyTorch's."""
from __future__ import annotations

from .. import ops
from ._construct import _bias_uniform, _factory, _int, _kaiming_uniform, _layer_rng, _on_default_device, _with_bias
from .module import Layer
from .parameter import Parameter


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
                     if _with_bias(bias) else None)
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
