"""``SqueezeExcitation``: torchvision's ``ops.SqueezeExcitation``, the channel attention of SENet,
EfficientNet, RegNet and MobileNetV3, built from gpuconv's own layers (their kernels run on 'sim'
and 'cuda'), with the backward it needs written out."""
from __future__ import annotations

import numpy as np

from .. import ops
from ..counter_rng import check_seed
from ..ops._checks import check_float, check_rank
from .activation import ReLU, Sigmoid
from .conv import Conv2d
from .module import Layer, _name_parameters, _Walk
from .passes import _drop_caches, _locate_error, call_backward
from .pooling import AdaptiveAvgPool2d


class SqueezeExcitation(Layer):
    """``scale = scale_activation(fc2(activation(fc1(avgpool(x))))); y = scale * x``, as torchvision's
    ``ops.SqueezeExcitation(input_channels, squeeze_channels, activation=nn.ReLU,
    scale_activation=nn.Sigmoid)``: ``avgpool`` an ``AdaptiveAvgPool2d(1)``, ``fc1`` and ``fc2`` 1x1
    ``Conv2d`` layers with biases (C -> squeeze_channels -> C), ``activation`` and
    ``scale_activation`` built by calling the classes given (``nn.SiLU`` for EfficientNet, a layer
    class or any function returning a gpuconv Layer). Its sub-layers and state dict keys
    (``fc1.weight``, ``fc1.bias``, ``fc2.weight``, ``fc2.bias``) are torchvision's, so a torchvision
    block's state dict loads as it is.

    Backward: ``dx = dy * scale`` plus the gate's input gradient for ``dscale``, the sum over H and W
    of ``dy * x`` per sample and channel (:mod:`gpuconv.ops.channel_gate`: added in float32 for
    bfloat16/float16, rounded once); the global pool's backward is added by the data gradient's
    pass (``pooled=``), without a full-size array of it. The output keeps x's layout; under mixed
    precision the two convolutions compute in the low precision, as every Conv2d does.

    ``seed`` (a keyword, as every gpuconv layer's) seeds ``fc1`` and ``fc2`` (two seeds derived from
    it); without one they draw from NumPy's global generator, as an unseeded Conv2d does."""

    _registers_attributes = False
    _children = ("avgpool", "fc1", "fc2", "activation", "scale_activation")  # torchvision's (its state dict's) order
    _gate = ("avgpool", "fc1", "activation", "fc2", "scale_activation")  # the order the forward runs them

    def __init__(self, input_channels, squeeze_channels, activation=ReLU, scale_activation=Sigmoid, *, seed=None):
        super().__init__()
        for name, v in (("input_channels", input_channels), ("squeeze_channels", squeeze_channels)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"SqueezeExcitation: {name}={v!r} must be an int >= 1 (a channel count), e.g. "
                                 "SqueezeExcitation(64, 16) for 64 channels squeezed to 16")
        seeds = (None, None) if seed is None else \
            [int(s) for s in np.random.SeedSequence(check_seed(seed)).generate_state(2)]
        self.avgpool = AdaptiveAvgPool2d(1)
        self.fc1 = Conv2d(int(input_channels), int(squeeze_channels), 1, seed=seeds[0])
        self.fc2 = Conv2d(int(squeeze_channels), int(input_channels), 1, seed=seeds[1])
        self.activation = _build("activation", activation)
        self.scale_activation = _build("scale_activation", scale_activation)
        _name_parameters(self)

    def named_children(self):
        return _Walk((name, getattr(self, name)) for name in self._children)

    def forward(self, x):
        check_float("x", x)
        check_rank("x", x, 4, "NCHW")
        s = x
        for name in self._gate:
            layer = getattr(self, name)
            try:
                s = layer(s)
            except (ValueError, TypeError) as exc:
                _locate_error(exc, name, layer)
                raise
        y, cache = ops.channel_gate_forward(x, s)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        cache = self._take_cache()
        ds = ops.channel_gate_backward_gate(dy, cache)
        for name in reversed(self._gate[1:]):  # the gate's layers, last first, down to the pooling's input
            ds = call_backward(getattr(self, name), ds, need_dx or name != "fc1")
        if not need_dx:
            _drop_caches(self.avgpool)
            return None
        if type(self.avgpool) is AdaptiveAvgPool2d and self.avgpool.output_size == (1, 1):
            # the global pool's backward, each plane's one value spread over H and W, added by the
            # gate's data gradient in the same pass (the bits of the pool's own backward, no
            # full-size array)
            self.avgpool._take_cache()
            return ops.channel_gate_backward_data(dy, cache, pooled=ds)
        return ops.channel_gate_backward_data(dy, cache, add=call_backward(self.avgpool, ds, True))


def _build(name, make):
    """The layer ``make()`` builds (torchvision takes the class and calls it, ``activation()``)."""
    fix = (f"{name} must be a gpuconv Layer class (or a function of no arguments returning a Layer), called once "
           f"to build the layer, e.g. {name}=nn.SiLU, as torchvision takes torch.nn.SiLU")
    if isinstance(make, Layer):
        raise TypeError(f"SqueezeExcitation({name}={make!r}): {fix}; pass the class, not an instance")
    try:
        layer = make() if callable(make) else None
    except TypeError as exc:
        raise TypeError(f"SqueezeExcitation({name}={make!r}): calling it with no arguments failed ({exc}): "
                        f"{fix}") from exc
    if not isinstance(layer, Layer):
        raise TypeError(f"SqueezeExcitation({name}={make!r}): {fix}")
    return layer
