"""The blocks whose branches run on one input: ``Residual`` (the branches' outputs added: a
ResNet's identity or projection shortcut), ``Concat`` (joined along the channels: Inception's
and DenseNet's blocks) and ``DualPath`` (both at once: a Dual Path Network's block adds the
leading channels of its two paths and joins the rest), with the joins and the splits of the
gradient they use."""
from __future__ import annotations

import contextlib
from collections.abc import Mapping

import numpy as np

from .. import layout, ops
from ..backend import array_device_context, get_array_module
from ..graphs import REPLAYED_WAY_OUT
from ._construct import _Replayed
from .module import Layer, _name_parameters, _path, _Walk
from .passes import _data_input, _drop_caches, _locate_error, _trains, call_backward, input_is_data
from .sequential import Sequential
from .shape import Identity


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
            # a new array (inner's output may sit in a cache of its last layer), in NumPy's layout on CuPy too
            return layout.add(skip, y)

    def backward(self, dy, need_dx=True):
        self._take_cache()
        dx_inner = call_backward(self.inner, dy, need_dx)
        dx_skip = dy if self.shortcut is None else call_backward(self.shortcut, dy, need_dx)
        if not need_dx:
            return None
        with array_device_context((dy,)):
            return layout.add(dx_skip, dx_inner)


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
                start = ends[i] - channels[i]
                # an Identity's gradient is its slice of dy as it is: read where it is added, not
                # first copied dense (DenseNet's layers copied all their input's channels so)
                part = call_backward(layer, dy[:, start:ends[i]] if type(layer) is Identity else
                                     _dense_part(dy, start, ends[i]), need_dx)
                if not need_dx:
                    continue
                if dx is None:
                    # the first gradient taken as it is, unless it is dy's memory (an Identity's
                    # part, a view of dy): never added into
                    dx, owned = part, not get_array_module(part).may_share_memory(part, dy)
                    first = (start, ends[i])
                elif owned:
                    dx += part
                else:  # (in the layout NumPy gives the sum: on CuPy too)
                    dx, owned = layout.add(dx, part), True
            if dx is not None and not owned:  # an Identity's part alone: dense, as the other branches' are
                dx = _dense_part(dy, *first)
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


class DualPath(Layer):
    """Dual Path Networks' join (Chen et al. 2017; kuangliu's DPN ``Bottleneck``): a residual path
    and a densely connected path in one block. With ``s = shortcut(x)`` (``x`` itself without a
    shortcut), ``r = residual(x)`` and ``d = split``,

        ``y = concatenate([s[:, :d] + r[:, :d], s[:, d:], r[:, d:]], axis=1)``

    (then ``activation``, ``'relu'``, applied to all of it, as his block's ``F.relu`` after the
    ``torch.cat``): the first ``d`` channels of both are added (the residual path, a ResNet's sum),
    the rest of ``s`` kept and the rest of ``r`` joined after it (the dense path, a DenseNet's
    concatenation). ``s`` and ``r`` share dtype, batch size, height and width; each has at least
    ``d`` channels, and ``y`` has ``C_s + C_r - d``. Backward: ``s`` takes ``dy[:, :C_s]``, ``r``
    ``dy[:, :d]`` and ``dy[:, C_s:]`` joined, and ``dx`` is the sum of the two paths' input
    gradients (with ``need_dx=False``, None: the parameter gradients are still made, and a path
    that trains nothing is not run backward at all).

    ``residual`` is a Layer (named ``residual``), or a mapping of names to layers run in order,
    named at this block's own level as a PyTorch module holding them as attributes names them:
    ``DualPath({'conv1': ..., 'bn1': ..., ..., 'bn3': ...}, Sequential(conv, bn), split=256,
    activation='relu')`` has kuangliu's keys ``conv1.weight`` ... ``bn3.running_var`` and
    ``shortcut.0.weight``, so his block's state dict loads as it is. ``block['conv1']`` (any child
    by name) and ``block.shortcut`` read them. A 4-D output is channels_last when the input or a
    path's output is; arrays stay on the input's device and module (NumPy, CuPy), in any dtype.
    ``split`` and ``activation`` cannot change while a captured training step holds the block
    (:mod:`gpuconv.graphs`)."""

    _registers_attributes = False
    split = _Replayed()
    activation = _Replayed()

    def __init__(self, residual, shortcut=None, split=None, activation=None):
        super().__init__()
        if isinstance(residual, Mapping):
            items = list(residual.items())
            if not items:
                raise ValueError("DualPath: the residual mapping is empty; give it the layers of the residual path "
                                 "in order, e.g. {'conv1': ..., 'bn1': ..., 'conv2': ...}")
            for name, layer in items:
                if not isinstance(name, str) or not name or "." in name or name == "shortcut":
                    raise ValueError(f"DualPath: residual layer name {name!r} must be a non-empty str without '.', "
                                     "other than 'shortcut' (the shortcut's name)")
            self._chain = Sequential(dict(items))  # (its layers are this block's children, by their names)
            self._residual = None
        else:
            if not isinstance(residual, Layer):
                raise TypeError(f"DualPath(residual): residual must be a gpuconv Layer or a mapping of names to "
                                f"Layers, got {type(residual).__name__}")
            self._chain, self._residual = None, residual
        self.shortcut = shortcut
        if isinstance(split, bool) or not isinstance(split, (int, np.integer)) or split < 0:
            raise ValueError(f"DualPath(split={split!r}): split must be an int >= 0, the number of leading channels "
                             "of the shortcut and the residual path that are added (kuangliu's out_planes, d)")
        if activation not in (None, "relu"):
            raise ValueError(f"DualPath(activation={activation!r}): the join applies None (no activation) or 'relu' "
                             "(kuangliu's F.relu after the torch.cat)")
        self.split, self.activation = int(split), activation
        _name_parameters(self)

    def _path_items(self):
        return list(self._chain.named_children()) if self._chain is not None else [("residual", self._residual)]

    def named_children(self):
        return _Walk(self._path_items() + ([("shortcut", self.shortcut)] if self.shortcut is not None else []))

    @property
    def shortcut(self):
        """The shortcut's Layer (None: the identity). Set to another (or None), it is named ``shortcut``
        under this block; refused while a captured training step holds the block."""
        return self._shortcut

    @shortcut.setter
    def shortcut(self, layer):
        if layer is not None and not isinstance(layer, Layer):
            raise TypeError(f"DualPath(shortcut): shortcut must be a gpuconv Layer or None (the identity), got "
                            f"{type(layer).__name__}")
        if "_shortcut" in self.__dict__ and layer is not self._shortcut and self._held():
            raise RuntimeError("DualPath.shortcut = ...: the shortcut cannot change while " + REPLAYED_WAY_OUT)
        self._shortcut = layer
        if layer is not None:
            _name_parameters(layer, _path(self, "shortcut"))

    @property
    def residual(self):
        """The residual path's Layer (given as one; a mapping's layers are read by name: ``block['conv1']``)."""
        if self._residual is None:
            raise AttributeError("DualPath.residual: this block's residual path was given as a mapping, its layers "
                                 "children of the block itself: read them by name, block['conv1']")
        return self._residual

    def __getitem__(self, name):
        children = dict(self.named_children())
        if name not in children:
            raise KeyError(f"DualPath has no child named {name!r}; its children are named "
                           f"{', '.join(map(repr, children))}")
        return children[name]

    def extra_repr(self):
        return f"split={self.split}" + ("" if self.activation is None else f", activation={self.activation!r}")

    def forward(self, x):
        data = _data_input(self)  # then each path's input is data too (backward(need_dx=False) tells them)
        residual = self._chain if self._chain is not None else self._residual
        try:
            with input_is_data(residual) if data else contextlib.nullcontext():
                r = residual(x)
        except (ValueError, TypeError) as exc:
            if self._chain is None:  # (a mapping's Sequential has named the layer already)
                _locate_error(exc, "residual", residual)
            raise
        s = x
        if self.shortcut is not None:
            try:
                with input_is_data(self.shortcut) if data else contextlib.nullcontext():
                    s = self.shortcut(x)
            except (ValueError, TypeError) as exc:
                _locate_error(exc, "shortcut", self.shortcut)
                raise
        for layer in (residual, self.shortcut):
            if data and layer is not None and not _trains(layer):  # (no backward will run: no caches kept)
                _drop_caches(layer)
        y = _dual_join(s, r, self.split, x)
        act = None
        if self.activation == "relu":
            y, act = ops.relu_forward(y)
        self._keep((int(s.shape[1]), int(r.shape[1]), self.split, act))  # (the split of this forward's join)
        return y

    def backward(self, dy, need_dx=True):
        c_s, c_r, d, act = self._take_cache()
        if getattr(dy, "ndim", 0) < 2 or dy.shape[1] != c_s + c_r - d:
            raise ValueError(f"DualPath.backward: dy has shape {tuple(getattr(dy, 'shape', ()))}, but the forward "
                             f"gave {c_s + c_r - d} channels ({c_s} of the shortcut + {c_r} of the residual path - "
                             f"{d} added): pass the gradient of this DualPath's output")
        if act is not None:
            dy = ops.relu_backward(dy, act)
        residual = self._chain if self._chain is not None else self._residual
        xp = get_array_module(dy)
        with array_device_context((dy,)):  # (CuPy copies and adds on its current device, not the arrays')
            dx_r = None
            if need_dx or _trains(residual):
                nhwc = dy.ndim == 4 and layout.is_channels_last(dy)
                shape = (dy.shape[0], c_r, *dy.shape[2:])
                dr = layout.empty(xp, shape, dy.dtype, nhwc) if dy.ndim == 4 else xp.empty(shape, dtype=dy.dtype)
                dr[:, :d] = dy[:, :d]
                dr[:, d:] = dy[:, c_s:]
                dx_r = call_backward(residual, dr, need_dx)
            else:
                _drop_caches(residual)
            if self.shortcut is None:
                dx_s = dy[:, :c_s]  # (a view of dy: added into a new array below, never returned)
            elif need_dx or _trains(self.shortcut):
                dx_s = call_backward(self.shortcut, _dense_part(dy, 0, c_s), need_dx)
            else:
                _drop_caches(self.shortcut)
                dx_s = None
            if not need_dx:
                return None
            return layout.add(dx_s, dx_r)  # (channels_last when dy is, on CuPy too)


def _dual_join(s, r, d, x):
    """``concatenate([s[:, :d] + r[:, :d], s[:, d:], r[:, d:]], 1)`` into a new array (channels_last
    when ``x``, ``s`` or ``r`` is), shapes and dtypes checked."""
    for name, out in (("shortcut", s), ("residual path", r)):
        if getattr(out, "ndim", 0) < 2:
            raise TypeError(f"DualPath: the {name} gave {type(out).__name__} of shape "
                            f"{tuple(getattr(out, 'shape', ()))}; both paths must give (N, C, ...) arrays to join "
                            "along the channels")
    if s.ndim != r.ndim or s.shape[0] != r.shape[0] or s.shape[2:] != r.shape[2:]:
        raise ValueError(f"DualPath: the shortcut gives shape {tuple(s.shape)} and the residual path "
                         f"{tuple(r.shape)}; joining them needs the same batch size, height and width: give the "
                         "shortcut the residual path's stride (a 1x1 convolution of that stride, as a DPN block's "
                         "first), and the convolutions padding that keeps the size")
    if not 0 <= d <= min(s.shape[1], r.shape[1]):
        raise ValueError(f"DualPath: split={d} channels are added, but the shortcut gives {s.shape[1]} and the "
                         f"residual path {r.shape[1]}; each must give at least split channels (kuangliu's block: "
                         "out_planes + dense_depth from its last 1x1 convolution, split = out_planes)")
    if s.dtype != r.dtype:
        raise TypeError(f"DualPath: the shortcut gives dtype {s.dtype} and the residual path {r.dtype}; their "
                        "outputs are joined into one array, so both must give one dtype")
    xp = get_array_module(r)
    c_s = int(s.shape[1])
    shape = (r.shape[0], c_s + int(r.shape[1]) - d, *r.shape[2:])
    with array_device_context((r,)):  # CuPy allocates, adds and copies on its current device
        if r.ndim == 4:
            nhwc = any(layout.is_channels_last(a) for a in (x, s, r))
            y = layout.empty(xp, shape, r.dtype, nhwc)
        else:
            y = xp.empty(shape, dtype=r.dtype)
        # added straight into y: CuPy's ufuncs make a C-contiguous result, so a sum made first and
        # then copied into a channels_last y would be one transposing pass more on a GPU
        xp.add(s[:, :d], r[:, :d], out=y[:, :d])
        y[:, d:c_s] = s[:, d:]
        y[:, c_s:] = r[:, d:]
    return y
