"""The normalization layers: ``BatchNorm2d`` (batch statistics in training, running statistics as
buffers, an optional fused activation) and ``GroupNorm`` (per-sample statistics over groups of
channels)."""
from __future__ import annotations

import numbers

import numpy as np

from .. import ops
from ..ops._checks import check_bool
from ..ops._checks import only_defaults as _only
from ._construct import _Replayed, _factory, _int, _on_default_device
from .module import Layer
from .parameter import Parameter


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
        state = self.__dict__  # (the _Replayed numbers read as their descriptor does: no call each, every step)
        y, cache = ops.batchnorm2d_forward(x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
                                           training=self.training, momentum=state["momentum"], eps=state["eps"],
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
