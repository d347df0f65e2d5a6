"""``Layer`` (PyTorch's ``Module``, under that name too): the base class every layer derives from,
with its parameters, buffers, sub-layers and their walks (``_Walk``), modes, devices and dtypes,
and state dicts (``LoadResult``, ``StateDictKeyError``); and the dotted names its parameters take
as a model is put together (``_naming_setattr``, ``_name_parameters``, ``_path``)."""
from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from typing import NamedTuple

import numpy as np

from ..backend import Device, copy_like, host_copy, is_cupy_array, to_device
from ..graphs import REPLAYED_WAY_OUT
from ..ops._checks import check_array, check_bool
from ..precision import bfloat16
from ._construct import _cast_floats, _layer_dtype
from .grad import zero_grads
from .parameter import Parameter, _check_requires_grad


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


class LoadResult(NamedTuple):
    missing_keys: list
    unexpected_keys: list


class StateDictKeyError(KeyError):
    """Missing or unexpected keys in ``load_state_dict(strict=True)``."""

    def __str__(self):  # KeyError would print the message as a quoted repr
        return str(self.args[0])


class _Walk(list):
    """What ``parameters()``, ``named_parameters()``, ``buffers()``, ``children()``, ``modules()`` and
    their kin return: a list (``len``, indexing, ``+``; iterated afresh each time, so it can be kept
    and walked twice) that is also an iterator, as PyTorch's generators are:
    ``next(model.parameters()).device`` reads the first parameter. Each call makes a new one, so
    each ``next`` walk starts at the first item. Once ``next`` has been called on it, iterating it
    goes on from there, as a partly consumed generator would (``it = m.parameters(); next(it);
    rest = list(it)``); indexing and ``len`` still see the whole list."""

    _cursor = None  # (set on the first next(): the position of the next item)

    def __next__(self):
        i = self._cursor or 0
        if i >= len(self):
            self._cursor = i
            raise StopIteration
        self._cursor = i + 1
        return list.__getitem__(self, i)

    def __iter__(self):
        return list.__iter__(self) if self._cursor is None else self

    def __reduce_ex__(self, protocol):  # a copy (copy, pickle) is a plain list
        return list, (list(self),)


def _prefix_fix(missing, state) -> str:
    """Where every missing key is in ``state`` under one prefix ('model/' in a whole gpuconv
    checkpoint's arrays, 'module.' in a DataParallel model's state dict): that prefix and how to
    take the model's keys out; else ''."""
    first = missing[0] if missing else None
    for key in state:
        if first is None or not isinstance(key, str) or key == first or not key.endswith(first):
            continue
        prefix = key[:-len(first)]
        if all(prefix + k in state for k in missing):
            whole = (" (the arrays of a whole gpuconv checkpoint: gpuconv.load_model(path).net is its trained "
                     "network)") if prefix == "model/" else ""
            return (f"The state's keys carry the prefix {prefix!r}{whole}: pass "
                    f"{{k[{len(prefix)}:]: v for k, v in state.items() if k.startswith({prefix!r})}}")
    return ""


class Layer:
    """Base class: ``forward``/``backward``, parameters, buffers, modes, devices, state dicts.

    A subclass holds its sub-layers and parameters as attributes, as a PyTorch module does: every
    ``Layer`` and ``Parameter`` set on it (``self.conv = Conv2d(...)``) is registered, in the order
    they were set, for ``parameters()``, ``state_dict()``, ``train()``/``eval()``, ``to()``. It may
    also list parameter attributes in ``_param_names`` (each a Parameter or None; these come first),
    and lists its
    buffers (arrays that are state but not trained, like running statistics) in ``_buffer_names``.
    (The built-in layers list theirs and declare ``_registers_attributes = False``: nothing to scan.)"""

    _param_names: tuple = ()
    _buffer_names: tuple = ()
    _registers_attributes = True
    # Parameters that mixed-precision training computes with in bf16/fp16 (gpuconv.amp); the
    # others (batch norm's affine pair) stay float32, as the statistics do.
    _low_precision_params: tuple = ()

    def __init__(self):
        self.training = True
        self._cache = None

    def __getstate__(self):
        # A copy (copy.deepcopy, pickle) is held by no graph, whatever holds this layer now.
        state = dict(self.__dict__)
        state.pop("_held_by_graph", None)
        return state

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A subclass's sub-layers and parameters take their dotted names (``Parameter.name``, which
        # errors and optimizers show) as they are set: ``layer2.0.conv1.weight``, not ``weight``.
        # Only on classes that register their attributes: a built-in layer sets its cache at every
        # forward, which must stay a plain attribute store.
        if cls._registers_attributes and "__setattr__" not in vars(cls):
            cls.__setattr__ = _naming_setattr

    # --- computation
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not define forward(x)")

    def backward(self, dy, need_dx=True):
        """The input gradient for the output gradient ``dy``, accumulating parameter gradients.

        ``need_dx=False`` says nobody uses the input gradient (the network's input is data): a
        layer may then skip computing it and return None; parameter gradients are still made."""
        raise NotImplementedError(f"{type(self).__name__} does not define backward(dy): gpuconv has no autograd, so a "
                                  "Layer subclass writes its backward, its layers' backward calls in reverse order "
                                  "(def backward(self, dy, need_dx=True): return self.fc.backward(dy, need_dx) for a "
                                  "forward that ends with self.fc), or is built as a Sequential, which has one")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _keep(self, cache):
        self._cache = cache if self.training else None

    def _take_cache(self):
        cache = self._cache
        if cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() was called without a cached forward pass: call forward(x) "
                "in training mode (layer.train()) right before backward(dy); caches are not kept in eval "
                "mode and are released by each backward. A layer used twice in one forward pass (one "
                "self.relu applied after two convolutions) keeps only its last call's cache: give each "
                "use a layer of its own")
        self._cache = None
        return cache

    # --- structure
    def named_children(self):
        """[(attribute, sub-layer)]: the Layers held as attributes, in the order they were set."""
        if not self._registers_attributes:
            return _Walk()
        return _Walk((name, v) for name, v in vars(self).items() if isinstance(v, Layer))

    def children(self):
        """The sub-layers of :meth:`named_children` (a list that is also an iterator, as every
        structure walk here returns: ``next(model.children())`` works as in PyTorch)."""
        return _Walk(child for _, child in self.named_children())

    def named_modules(self, prefix=""):
        """[(dotted name, layer)] for this layer and every sub-layer, each layer once."""
        out, seen = [], set()

        def visit(name, layer):
            if id(layer) in seen:
                return
            seen.add(id(layer))
            out.append((name, layer))
            for child_name, child in layer.named_children():
                visit(_join(name, child_name), child)

        visit(prefix, self)
        return _Walk(out)

    def modules(self):
        """Every layer of :meth:`named_modules`, in its order, walked without the dotted names (a
        training step asks for them)."""
        if type(self).named_modules is not Layer.named_modules:  # (a walk of the class's own)
            return _Walk(m for _, m in self.named_modules())
        out, seen, stack = [], set(), [self]
        while stack:  # depth first, each layer once, as named_modules' visit
            layer = stack.pop()
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            out.append(layer)
            children = layer.named_children()
            if children:
                children = [child for _, child in (list.copy(children) if isinstance(children, list) else children)]
                children.reverse()
                stack += children
        return _Walk(out)

    def get_submodule(self, target):
        """The sub-layer at the dotted path ``target`` (``'layer1.0.conv'``; ``''``: this layer), as
        PyTorch's; an AttributeError names the part of the path that is missing."""
        if not isinstance(target, str):
            raise TypeError(f"get_submodule(target): target must be a dotted str path such as 'layer1.0', got "
                            f"{target!r}")
        return self._submodule(target, f"get_submodule({target!r})")

    def _submodule(self, target, what):
        layer, path = self, []
        for part in target.split(".") if target else ():
            children = dict(layer.named_children())
            if part not in children:
                where = f"at {'.'.join(path)!r}" if path else "here"
                raise AttributeError(f"{what}: the {type(layer).__name__} {where} has no sub-layer "
                                     f"{part!r}; its sub-layers are "
                                     + (", ".join(map(repr, children)) or "none"))
            layer = children[part]
            path.append(part)
        return layer

    def get_parameter(self, target):
        """The Parameter at the dotted path ``target`` (``'0.weight'``), as PyTorch's."""
        return self._get_state(target, "get_parameter", "parameter", lambda m: dict(m._own_parameters()))

    def get_buffer(self, target):
        """The buffer at the dotted path ``target`` (``'1.running_mean'``), as PyTorch's."""
        return self._get_state(target, "get_buffer", "buffer", lambda m: {b: getattr(m, b) for b in m._buffer_names})

    def _get_state(self, target, what, kind, own):
        if not isinstance(target, str):
            raise TypeError(f"{what}(target): target must be a dotted str path such as '0.weight', got {target!r}")
        path, _, name = target.rpartition(".")
        layer = self._submodule(path, f"{what}({target!r})")
        found = own(layer)
        if name not in found:
            raise AttributeError(f"{what}({target!r}): {type(layer).__name__} has no {kind} {name!r}; its {kind}s "
                                 f"are " + (", ".join(map(repr, found)) or "none"))
        return found[name]

    # PyTorch's explicit registration; attributes set on a Layer subclass register themselves
    def add_module(self, name, module):
        """``self.<name> = module``, as PyTorch's (a name made at run time: ``add_module(f'conv{i}', ...)``);
        on a Sequential, the layer appended under ``name``."""
        self._check_new_name("add_module", name)
        if not isinstance(module, Layer) and module is not None:
            raise TypeError(f"add_module({name!r}, ...): a {type(module).__name__} is not a gpuconv Layer")
        self._registering("add_module")
        setattr(self, name, module)

    register_module = add_module

    def register_parameter(self, name, param):
        """``self.<name> = param`` (a Parameter, or None for none), as PyTorch's."""
        self._check_new_name("register_parameter", name)
        if not isinstance(param, Parameter) and param is not None:
            raise TypeError(f"register_parameter({name!r}, ...): a {type(param).__name__} is not a gpuconv Parameter; "
                            f"wrap the array, Parameter(array)")
        self._registering("register_parameter")
        setattr(self, name, param)

    def register_buffer(self, name, tensor, persistent=True):
        """A buffer (state that is not trained, such as running statistics) named ``name``, as
        PyTorch's: an attribute that ``to()`` moves, ``astype()`` converts and ``state_dict()`` holds;
        None (as PyTorch's) for state set later, left out of them all until it is an array."""
        self._check_new_name("register_buffer", name, buffer=True)
        if persistent is not True:
            raise ValueError(f"register_buffer({name!r}, ..., persistent={persistent!r}): every buffer is saved in "
                             "the state dict here; keep an array that is not state as a plain attribute")
        if tensor is not None:
            try:
                check_array("tensor", tensor)
            except TypeError as exc:
                raise TypeError(f"register_buffer({name!r}, tensor): {exc}") from None
        self._registering("register_buffer")
        if name not in self._buffer_names:
            self._buffer_names = tuple(self._buffer_names) + (name,)
        object.__setattr__(self, name, tensor)

    def _check_new_name(self, what, name, buffer=False):
        if not isinstance(name, str) or not name or "." in name:
            raise (TypeError if not isinstance(name, str) else KeyError)(
                f"{what}: the name must be a non-empty str without '.', got {name!r}")
        taken = name in vars(self) and not (name in self._buffer_names if buffer else
                                            isinstance(vars(self)[name], (Layer, Parameter, type(None))))
        if taken or (name not in vars(self) and hasattr(type(self), name)):
            raise KeyError(f"{what}: {type(self).__name__} already has an attribute {name!r}; pick another name")

    def _registering(self, what):
        if not self._registers_attributes:
            raise TypeError(f"{type(self).__name__}.{what}: a built-in {type(self).__name__} holds no attributes of "
                            f"your own; subclass Layer (class Net(nn.Module)) and register them there")
        if self._held():
            raise RuntimeError(f"{type(self).__name__}.{what}: the layer cannot change while " + REPLAYED_WAY_OUT)

    def _own_generators(self):
        """[(attribute path, numpy.random.Generator)] this layer itself draws from: none here;
        a layer with randomness (Dropout) names its generators."""
        return []

    def named_generators(self, prefix=""):
        """[(dotted name, numpy.random.Generator)] of this layer and every sub-layer: the random
        state a checkpoint saves for a bit-exact resume (``model.drop._rngs.numpy`` with
        ``prefix='model'``)."""
        return _Walk((_join(name, attr), gen) for name, layer in self.named_modules(prefix)
                     for attr, gen in layer._own_generators())

    def _own_buffers(self):
        """[(name, array)] of this layer's own buffers; one set to None (``register_buffer(name,
        None)``, PyTorch's buffer without state yet) is left out, as there."""
        return [(b, getattr(self, b)) for b in self._buffer_names if getattr(self, b) is not None]

    def _own_parameters(self):
        own = [(n, getattr(self, n)) for n in self._param_names if getattr(self, n) is not None]
        if self._registers_attributes:
            own += [(name, v) for name, v in vars(self).items()
                    if isinstance(v, Parameter) and name not in self._param_names]
        return own

    def named_parameters(self, prefix="", recurse=True):
        """[(dotted name, Parameter)], e.g. ``('0.weight', p)``; a shared Parameter appears once.
        As PyTorch's: ``prefix`` goes before every name, ``recurse=False`` gives this layer's own
        parameters alone (not its sub-layers')."""
        out, seen = [], set()
        for mname, m in (self.named_modules(prefix) if recurse else [(prefix, self)]):
            for pname, p in m._own_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append((_join(mname, pname), p))
        return _Walk(out)

    def parameters(self, recurse=True):
        """The Parameters of :meth:`named_parameters`: a list (``len``, indexing, ``+``) that is
        also an iterator, as PyTorch's generator is: ``next(model.parameters()).device`` works."""
        return _Walk(p for _, p in self.named_parameters(recurse=recurse))

    def num_parameters(self, trainable_only=True):
        """The number of scalar parameters (with ``trainable_only=False``, frozen parameters and
        buffers such as running statistics count too): ``sum(p.numel() for p in m.parameters())`` in PyTorch."""
        n = sum(int(p.size) for p in self.parameters() if p.requires_grad or not trainable_only)
        return n if trainable_only else n + sum(int(b.size) for _, b in self.named_buffers())

    def named_buffers(self, prefix="", recurse=True):
        """[(dotted name, array)] of the non-trained state, e.g. ``('1.running_mean', a)`` (``prefix``
        and ``recurse`` as in :meth:`named_parameters`)."""
        return _Walk((_join(mname, b), a) for mname, m in
                     (self.named_modules(prefix) if recurse else [(prefix, self)]) for b, a in m._own_buffers())

    def buffers(self, recurse=True):
        return _Walk(b for _, b in self.named_buffers(recurse=recurse))

    def apply(self, fn):
        """``fn(layer)`` for every sub-layer, then this layer (PyTorch's order: children first), e.g.
        an initialization that looks at each layer's type; returns this layer. A layer this one holds
        twice (under two names) is one child, visited once, as PyTorch's."""
        for child in {id(c): c for c in self.children()}.values():
            child.apply(fn)
        fn(self)
        return self

    def zero_grad(self, set_to_none=True):
        """Forget accumulated gradients (``.grad = None``: the next backward sets them afresh), or
        with ``set_to_none=False`` fill them with zeros, as PyTorch's."""
        zero_grads(self.parameters(), set_to_none)

    # --- modes
    def train(self, mode=True):
        mode = check_bool("train(mode)", mode, " (True: training mode, False: eval mode, as eval() sets)")
        for m in self.modules():
            m.training = mode
            if not mode:
                m._cache = None
        return self

    def eval(self):
        return self.train(False)

    def _held(self) -> bool:
        """Whether a captured training step (gpuconv.graphs.StepGraph) holds this layer or one inside it."""
        return any(m.__dict__.get("_held_by_graph") for m in self.modules())

    # --- devices and dtypes
    def _convert(self, fn):
        if self._held():
            # a captured step computes with the arrays of its capture: a model moved (cpu() then
            # cuda() around a save) or cast would no longer be the one its replays train
            arrays = [a for m in self.modules() for a in [p.data for _, p in m._own_parameters()]
                      + [a for _, a in m._own_buffers()]]
            if any(fn(a) is not a for a in arrays):
                raise RuntimeError(f"{type(self).__name__}: its arrays cannot be moved or cast while "
                                   + REPLAYED_WAY_OUT)
        for m in self.modules():
            for _, p in m._own_parameters():
                p.data = fn(p.data)
                p.compute = None  # a low-precision copy of the old array: recast at the next step
                if p.grad is not None:
                    p.grad = fn(p.grad)
            for b, a in m._own_buffers():
                setattr(m, b, fn(a))
            m._cache = None  # a cache holds arrays of the old device or dtype
        return self

    def cuda(self, index=None):
        """``to('cuda')`` (``to('cuda:N')`` with ``index``), as a PyTorch module's."""
        return self.to("cuda" if index is None else f"cuda:{int(index)}")

    def cpu(self):
        """``to('cpu')``, as a PyTorch module's."""
        return self.to("cpu")

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze every parameter, as a PyTorch module's; returns the layer."""
        requires_grad = _check_requires_grad(requires_grad)
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def to(self, *args, device=None, dtype=None, non_blocking=False):
        """Move parameters, their gradients and buffers to ``device`` ('cpu', 'cuda:N', 'sim') and/or
        convert them to ``dtype`` (float32 or float64, as :meth:`astype`), as PyTorch's
        ``to(device)``, ``to(dtype)``, ``to(device, dtype)`` and their keywords; returns the layer.
        ``non_blocking`` (how PyTorch schedules the copy) is taken as given."""
        if len(args) > 2:
            raise TypeError(f"{type(self).__name__}.to() takes a device and a dtype, got {len(args)} arguments")
        check_bool("to(non_blocking)", non_blocking)
        for arg in args:
            if arg is None:  # (np.dtype(None) would read as float64)
                continue
            if isinstance(arg, (str, Device)):
                if device is not None:
                    raise TypeError(f"{type(self).__name__}.to(): the device was given twice ({device!r}, {arg!r})")
                device = arg
            elif dtype is not None:
                raise TypeError(f"{type(self).__name__}.to(): the dtype was given twice ({dtype!r}, {arg!r})")
            else:
                dtype = arg
        dt = None if dtype is None else _layer_dtype(f"{type(self).__name__}.to", dtype)
        if device is not None:
            dev = Device(device)
            self._convert(lambda a: to_device(a, dev))
        return self if dt is None else self._convert(_cast_floats(dt, copy=False))

    def astype(self, dtype):
        """Convert parameters, gradients and floating-point buffers to float32 or float64 (new
        arrays); integer and bool buffers (an index, a mask) stay as they are, as in PyTorch."""
        dt = _layer_dtype("astype", dtype)
        return self._convert(_cast_floats(dt))

    def double(self):
        """``to(dtype=np.float64)``, as a PyTorch module's (float64 for gradient checks)."""
        return self.to(dtype=np.float64)

    def float(self):
        """``to(dtype=np.float32)``, as a PyTorch module's."""
        return self.to(dtype=np.float32)

    def half(self):
        raise TypeError(f"{type(self).__name__}.half(): layers keep float32 parameters and train in float16 or "
                        "bfloat16 through mixed precision, which casts a copy per step: `with "
                        "gpuconv.amp.autocast(model, 'fp16') as dt: model(x.astype(dt))`, or the Trainer's "
                        "precision='fp16' (or 'bf16')")

    bfloat16 = half

    # --- state
    def _state_slots(self):
        """{dotted name: (current array, setter)} over parameters, then buffers, per module."""
        slots = {}
        seen = set()
        for mname, m in self.named_modules():
            for pname, p in m._own_parameters():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                slots[_join(mname, pname)] = (p.data, lambda v, p=p: setattr(p, "data", v))
            for b, a in m._own_buffers():
                slots[_join(mname, b)] = (a, lambda v, m=m, b=b: setattr(m, b, v))
        return slots

    def state_dict(self):
        """{dotted name: host NumPy copy} of every parameter and buffer (loadable on any device)."""
        out = {}
        for name, (arr, _) in self._state_slots().items():
            out[name] = host_copy(arr)
        return out

    def load_state_dict(self, state, strict=True):
        """Copy arrays from ``state`` (NumPy or CuPy, any device, or PyTorch tensors) into this layer's
        own devices and dtypes.

        With ``strict`` every key must match both ways; shapes must always match. Nothing is
        changed unless every check passes. Returns ``LoadResult(missing_keys, unexpected_keys)``."""
        if not isinstance(state, Mapping):
            path = (" (a checkpoint file's path: gpuconv.load_model(path).net is its trained network, and "
                    "gpuconv.checkpoint.load_checkpoint(path) reads its arrays)" if isinstance(state, (str, PathLike))
                    else "")
            raise TypeError(f"load_state_dict: state must be a mapping of names to arrays (as returned by "
                            f"state_dict()), got {type(state).__name__}{path}")
        if self._held():
            # a captured step computes with the arrays of its capture: new ones would go unread by
            # every replay (and unchanged by its updates)
            raise RuntimeError(f"{type(self).__name__}.load_state_dict: the state cannot be replaced while "
                               + REPLAYED_WAY_OUT)
        slots = self._state_slots()
        missing = [k for k in slots if k not in state]
        # PyTorch's batch norm also saves a count of its batches, which gpuconv's does not keep (its
        # momentum is never None): a state dict from an equivalent torch model loads as it is.
        from .norm import BatchNorm2d  # (here: norm.py's layers derive from Layer, so it imports this module)
        counts = {_join(name, "num_batches_tracked") for name, m in self.named_modules() if isinstance(m, BatchNorm2d)}
        unexpected = [k for k in state if k not in slots and k not in counts]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing key(s) {missing}")
            if unexpected:
                parts.append(f"unexpected key(s) {unexpected}")
            raise StateDictKeyError(
                f"load_state_dict(strict=True): {' and '.join(parts)}. " + (_prefix_fix(missing, state) or
                "The state dict comes from a different architecture (or is partial); build the same model, or pass "
                "strict=False to load the keys that match"))
        loads = []
        for name, (current, setter) in slots.items():
            if name not in state:
                continue
            value = state[name]
            if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, a Parameter's too
                value = value.detach().cpu()
                if str(value.dtype) == "torch.bfloat16":  # NumPy has no such dtype: widened, exactly
                    value = value.float()
                value = value.numpy()
            if not is_cupy_array(value):
                value = np.asarray(value)
            if value.dtype == bfloat16:  # (ml_dtypes' type is no np.number) widened, exactly, as torch's is
                value = value.astype(np.float32)
            if (value.dtype == np.bool_) != (current.dtype == np.bool_):  # a mask (register_buffer) is loaded as one
                raise TypeError(f"load_state_dict: {name!r} has dtype {value.dtype}, expected a "
                                f"{'bool' if current.dtype == np.bool_ else 'real numeric'} array (the model holds "
                                f"{current.dtype})")
            if value.dtype != np.bool_ and (not np.issubdtype(value.dtype, np.number)
                                            or np.issubdtype(value.dtype, np.complexfloating)):
                raise TypeError(f"load_state_dict: {name!r} has dtype {value.dtype}, expected a real numeric array "
                                f"(the model holds {current.dtype})")
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(
                    f"load_state_dict: {name!r} has shape {tuple(value.shape)} in the state dict but "
                    f"{tuple(current.shape)} in the model: it was saved from a model of another size "
                    "(width, filters, classes); build the model with the same arguments")
            loads.append((setter, value, current))
        for setter, value, current in loads:
            setter(copy_like(value, current))
        for m in self.modules():
            m._cache = None
        return LoadResult(missing, unexpected)

    # --- printing
    def summary(self, input_shape) -> str:
        """A table of every layer's output shape, parameter count and forward FLOPs per image for
        inputs of ``input_shape`` (C, H, W), with totals (:mod:`gpuconv.summary`)."""
        from ..summary import summary_text
        return summary_text(self, input_shape)

    def extra_repr(self):
        return ""

    def __repr__(self):  # PyTorch's layout: extra_repr's lines, then one line per child
        children = self.named_children()
        extra = self.extra_repr()
        if not children and "\n" not in extra:
            return f"{type(self).__name__}({extra})"
        lines = (extra.split("\n") if extra else []) + [f"({name}): " + repr(child) for name, child in children]
        return f"{type(self).__name__}(\n" + "\n".join("  " + line.replace("\n", "\n  ") for line in lines) + "\n)"


# PyTorch's name: ``class Net(nn.Module)`` with sub-layers as attributes works as it does there.
Module = Layer


def _naming_setattr(layer, name, value):
    """``layer.name = value``, and the parameters set with it named under ``name`` (only the
    subtree set is renamed: the names grow as the model is put together, at a cost proportional to
    its size times its depth)."""
    old = layer.__dict__.get(name)
    if old is not value and (isinstance(value, (Parameter, Layer)) or isinstance(old, (Parameter, Layer))) \
            and layer.__dict__.get("_held_by_graph"):  # a captured step computes with the layers of its capture
        raise RuntimeError(f"{type(layer).__name__}.{name}: a sub-layer or parameter cannot be replaced while "
                           + REPLAYED_WAY_OUT)
    object.__setattr__(layer, name, value)
    if isinstance(value, Parameter):
        value.name = _path(layer, name)
    elif isinstance(value, Layer):
        _name_parameters(value, _path(layer, name))


def _name_parameters(container, prefix=""):
    """Each parameter of ``container`` named by its dotted path, under ``prefix``; each layer in it
    keeps its own path, under which a layer a container is given later (``append``) is named."""
    for name, m in container.named_modules():
        m.__dict__["_path"] = _join(prefix, name) if name else prefix  # (not an attribute to register)
    for name, p in container.named_parameters():
        p.name = _join(prefix, name)


def _path(layer, name):
    """The dotted path of ``layer``'s child ``name`` (``layer``'s own as its container named it)."""
    return _join(layer.__dict__.get("_path", ""), name)
