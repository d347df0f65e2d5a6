"""The layers that pass values through and change at most the shape or their order: ``Identity``,
``Flatten`` (to (N, features), from either memory layout), ``Unflatten`` (one axis split into
several), ``ChannelShuffle`` (the channels interleaved by groups) and ``Narrow`` (a slice of one axis,
the channel split of ShuffleNetV2's blocks)."""
from __future__ import annotations

import contextlib
import math

import numpy as np

from .. import layout, ops
from ..backend import array_device_context
from ..ops._checks import check_array
from ..ops._checks import only_defaults as _only
from ..ops.channel_shuffle import check_groups
from ..ops.narrow import check_narrow
from ._construct import _Replayed
from .module import Layer


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
            return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # -1 fails for N = 0

    def backward(self, dy, need_dx=True):
        shape, channels_last = self._take_cache()
        check_array("dy", dy)
        flat = (shape[0], math.prod(shape[1:]))
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


class ChannelShuffle(Layer):
    """PyTorch's ``nn.ChannelShuffle(groups)``: (N, C, H, W) viewed as (N, groups, C // groups, H, W),
    those two axes swapped, read back as (N, C, H, W) (ShuffleNet's exchange of channels between
    the groups of its grouped convolutions; :func:`gpuconv.ops.channel_shuffle_forward`). The
    gradient is the inverse permutation; both keep the input's layout and dtype."""

    _registers_attributes = False
    groups = _Replayed()  # the gather's order: a CUDA graph replays its capture's

    def __init__(self, groups):
        super().__init__()
        self.groups = check_groups(groups, "ChannelShuffle(groups=...)")

    def forward(self, x):
        y, cache = ops.channel_shuffle_forward(x, self.groups)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return ops.channel_shuffle_backward(dy, self._take_cache())

    def extra_repr(self):
        return f"groups={self.groups}"


class Narrow(Layer):
    """``torch.narrow(x, dim, start, length)`` as a layer (Torch7's ``nn.Narrow``): entries ``start``
    to ``start + length - 1`` of axis ``dim`` (1: the channels) of the (N, C, H, W) input, a new array
    in its layout and dtype (:func:`gpuconv.ops.narrow_forward`); the gradient is zeros with dy in
    the slice. With :class:`Concat`, the channel split of ShuffleNetV2:
    ``Concat(Narrow(1, 0, c), Sequential(Narrow(1, c, c), ...))`` keeps the first c channels and
    transforms the other c."""

    _registers_attributes = False
    # The slice a forward copies: a CUDA graph replays its capture's.
    dim, start, length = _Replayed(), _Replayed(), _Replayed()

    def __init__(self, dim, start, length):
        super().__init__()
        self.dim, self.start, self.length = check_narrow(dim, start, length, "Narrow(dim, start, length)")

    def forward(self, x):
        y, cache = ops.narrow_forward(x, self.dim, self.start, self.length)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return ops.narrow_backward(dy, self._take_cache())

    def extra_repr(self):
        return f"dim={self.dim}, start={self.start}, length={self.length}"
