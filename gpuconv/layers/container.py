"""The holders with no forward of their own, ``ModuleList`` and ``ModuleDict``: layers registered
(parameters, state dict keys, modes, devices) for the layer that holds them to call; and the
position rule of ``insert`` they share with ``Sequential``."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..graphs import REPLAYED_WAY_OUT
from .module import Layer, _name_parameters, _path, _Walk


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
