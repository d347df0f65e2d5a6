"""The blocks whose branches run on one input: ``Residual`` (the branches' outputs added: a
ResNet's identity or projection shortcut) and ``Concat`` (joined along the channels: Inception's
and DenseNet's blocks), with the join and the split of the gradient ``Concat`` uses."""
from __future__ import annotations

import contextlib
from collections.abc import Mapping

import numpy as np

from .. import layout
from ..backend import array_device_context, get_array_module
from ..graphs import REPLAYED_WAY_OUT
from .module import Layer, _name_parameters, _path, _Walk
from .passes import _data_input, _drop_caches, _locate_error, _trains, call_backward, input_is_data


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
