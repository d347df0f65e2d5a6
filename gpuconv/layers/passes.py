"""How a forward and a backward pass run through the containers: evaluation mode with every
layer's mode and training cache kept (``switch_to_eval``, ``eval_mode``), a forward on data whose
backward wants no input gradient (``input_is_data``, ``call_backward``'s ``need_dx``, the frozen
layers in front that keep no caches), and an error raised inside a container, which names the
layer it came from by its dotted path (``_locate_error``)."""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect

from ..backend import device_of
from .linear import Linear


def _trains(layer) -> bool:
    """Whether any parameter of ``layer`` (or of the layers inside it) takes a gradient."""
    return any(p.requires_grad for p in layer.parameters())


def _first_trained(seq):
    """The index of the first layer of the Sequential ``seq`` that takes a gradient (its length: none)."""
    layers = list(seq._layers.values())
    return next((i for i, layer in enumerate(layers) if _trains(layer)), len(layers))


def _drop_caches(layer):
    for m in layer.modules():
        m._cache = None


# The layer whose input, in the forward running now, is data: no gradient of it is wanted, and
# its backward will be told so (need_dx=False). Set by input_is_data; a Sequential passes it on
# to its first trainable layer, a Residual to its branches.
_DATA_INPUT = contextvars.ContextVar("gpuconv_data_input", default=None)


def _data_input(container) -> bool:
    """Whether ``container``'s input in this forward is data, for a backward that hears need_dx."""
    return _DATA_INPUT.get() is container and _takes_need_dx(type(container))


def switch_to_eval(model):
    """Put ``model`` in eval mode; returns the function that puts every layer back in the mode and
    with the training cache it had: a forward waiting for its backward keeps its caches (an
    evaluation, a prediction or a summary in between changes nothing). The model goes back through
    its own ``train(mode)`` first (a subclass's override runs, as it would without the caches)."""
    modules = model.modules() if callable(getattr(model, "modules", None)) else None
    saved = [(m, m.training, m.__dict__.get("_cache")) for m in modules] if modules is not None else None
    was_training = getattr(model, "training", True)
    model.eval()

    def restore():
        model.train(was_training)  # (through the model's own train(), which a subclass may extend)
        for m, mode, cache in saved or ():
            m.training, m._cache = mode, cache
    return restore


@contextlib.contextmanager
def eval_mode(model):
    """``with eval_mode(model):`` the block in eval mode, every layer's own mode and training
    cache back after it (:func:`switch_to_eval`)."""
    restore = switch_to_eval(model)
    try:
        yield model
    finally:
        restore()


@contextlib.contextmanager
def input_is_data(model):
    """A context for a forward of ``model`` on data, whose backward will be called with
    ``need_dx=False`` (``call_backward(model, dy, need_dx=False)``, as a training step does): no
    layer keeps a cache that only an input gradient would read. A Sequential keeps none for the
    frozen layers in front of its first trainable one, which that backward never runs
    (airbench94's whitening conv and its GELU once the bias is frozen: a batch of activations
    each, from the forward to the backward). A backward with ``need_dx=True`` after such a
    forward finds those caches missing (a RuntimeError)."""
    token = _DATA_INPUT.set(model)
    try:
        yield
    finally:
        _DATA_INPUT.reset(token)


def call_backward(layer, dy, need_dx):
    """``layer.backward(dy)``, telling it when its input gradient is unused, if it can hear that:
    a user's layer written as ``backward(self, dy)`` keeps working inside the containers."""
    if need_dx or not _takes_need_dx(type(layer)):
        return layer.backward(dy)
    return layer.backward(dy, need_dx=False)


@functools.lru_cache(maxsize=None)
def _takes_need_dx(cls) -> bool:
    params = inspect.signature(cls.backward).parameters
    return "need_dx" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _locate_error(exc, name, layer):
    """Prefix an error raised inside a container with the dotted path of the layer that raised it.

    An op's message names its own arguments ("x has C=1 channels but w expects C=3"); inside a
    network the reader also needs to know which layer that was, e.g. ``in layer 'layer1.conv'
    (Conv2d(8, 16, ...))``. The exception keeps its type and traceback; each enclosing container
    adds its part of the path as the error travels up."""
    if len(exc.args) != 1 or not isinstance(exc.args[0], str):
        return
    located = getattr(exc, "_gpuconv_layer", None)
    if located is None:  # the innermost container: remember the message and the failing layer
        message, leaf, path = exc.args[0], layer, name
    else:
        message, leaf, path = located[0], located[1], f"{name}.{located[2]}"
    exc._gpuconv_layer = (message, leaf, path)
    head = repr(leaf).split("\n", 1)[0].rstrip("(")
    hint, params = "", leaf.parameters()
    if params and "cupy.ndarray" in message and "numpy.ndarray" in message:
        hint = (f" (the layer's parameters are on {device_of(params[0].data)}: move the model with "
                "model.to(device) or the input with gpuconv.to_device(x, device))")
    elif isinstance(leaf, Linear) and message.startswith("feature mismatch"):
        hint = (f" (in a network this usually means the input images are not the size the network was built "
                f"for: its layers before {path!r} turn them into this many features; build the network for "
                "the images' size, or resize the images)")
    elif params and "has dtype" in message and "but x has dtype" in message:
        dt = params[0].value.dtype  # what the layer computes in: a mixed-precision copy's dtype under autocast
        unlisted = [(type(m).__name__, n) for m in leaf.modules() for n, _ in m._own_parameters()
                    if n not in getattr(m, "_low_precision_params", ())]
        low_x = any(f"but x has dtype {name}" in message for name in ("bfloat16", "float16"))
        hint = (f" (the layer's parameters are {dt}: pass x.astype(np.{dt}); for a float64 x, convert the model "
                "with model.astype(np.float64); for bfloat16 or float16, run it in mixed precision, e.g. `with "
                "gpuconv.amp.autocast(model, 'bf16') as dt: model(x.astype(dt))`"
                + ("; already in mixed precision (amp.autocast, a bf16/fp16 Trainer), this layer's parameters "
                   + ", ".join(f"{c}.{n}" for c, n in unlisted) + " get no low-precision copy: name them in the "
                   f"class's _low_precision_params, e.g. _low_precision_params = ({unlisted[0][1]!r},) in "
                   f"{unlisted[0][0]}, as Conv2d lists ('weight', 'bias')" if low_x and unlisted else "")
                + ")" if dt == params[0].dtype else
                f" (under mixed precision the layer computes in {dt}: pass the batch in {dt}, e.g. "
                f"gpuconv.amp.cast_input(x, {dt}), as gpuconv.amp.training_step does; if the batch is {dt}, a "
                "layer before this one computed in float32, such as a Layer subclass multiplying by a Parameter "
                "of its own: name that parameter in the class's _low_precision_params so that amp casts it)")
    exc.args = (f"in layer {path!r} ({head}): {message}{hint}",)
