"""``Sequential``: layers applied in order and run backward in reverse, indexable and changeable
as PyTorch's (append, insert, pop, renumbering), passing a forward on data on to its first
trainable layer."""
from __future__ import annotations

from collections.abc import Mapping

from ..graphs import REPLAYED_WAY_OUT
from .container import _insert_position
from .module import Layer, _name_parameters, _path, _Walk
from .passes import _data_input, _drop_caches, _first_trained, _locate_error, call_backward, input_is_data

_LAYER_CALL = Layer.__call__


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
                listed = (isinstance(layer, (list, tuple)) and len(items) == 1 and layer
                          and all(isinstance(v, Layer) for v in layer))
                raise TypeError(f"Sequential: child {name!r} is a {type(layer).__name__}, not a gpuconv Layer; "
                                + ("unpack a list of layers, as in PyTorch: Sequential(*layers)" if listed
                                   else "wrap it in a Layer subclass with forward and backward"))
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
                elif type(layer).__call__ is _LAYER_CALL:  # layer(x), without Layer.__call__'s frame
                    x = layer.forward(x)
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
            if need_dx or i > first:  # (call_backward's first case, without its frame)
                dy = layers[i].backward(dy)
            else:
                dy = call_backward(layers[i], dy, False)
        for layer in layers[:first]:  # their forward caches (activations) are released as a backward would
            _drop_caches(layer)
        return dy if first == 0 else None
