"""``model.summary((3, 32, 32))``: each layer's output shape, parameters and forward FLOPs per image.

The shapes come from one forward pass of a zero image in eval mode, in the parameters' dtype
(nothing is trained, no state changes: every layer's mode and training cache are as they were
after it). FLOPs count a multiply-add as two: a convolution 2 * C_in * k_h * k_w per output
element (C_in // groups of a grouped one; plus one per element for its bias), a transposed
convolution 2 * C_out * k_h * k_w per input element (the count of the convolution whose input
gradient it is: C_out // groups of a grouped one; plus one per output element for its bias), a
linear layer 2 * in_features per output, batch norm in eval mode 2 per element (a scale and a
shift), group norm 6 per element (its statistics, computed in every mode: an addition for the
mean, a subtraction and a multiply-add for the variance, 4; then a scale and a shift, 2), pooling
one comparison or addition per window element, ReLU, LeakyReLU and Scale one per element, a
residual addition and a squeeze-and-excitation block's gating product one per element, a dual-path
join one per added element (and one per output element for its ReLU); reshaping
layers, a channel shuffle, dropout, a concatenation (a copy) and the smooth activations (GELU,
SiLU, Sigmoid, Tanh: an erf, exp or tanh, no multiply-add) count none.
"""
from __future__ import annotations

import numpy as np

from . import backend


def _flops(layer, x, y) -> int:
    from . import layers as L
    out = int(np.prod(y.shape[1:]))
    if isinstance(layer, L.Conv2d):
        per = 2 * layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        return out * (per + (layer.bias is not None))
    if isinstance(layer, L.ConvTranspose2d):
        per = 2 * layer.out_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        return int(np.prod(x.shape[1:])) * per + out * (layer.bias is not None)
    if isinstance(layer, L.Linear):
        return out * (2 * layer.in_features + (layer.bias is not None))
    if isinstance(layer, L.BatchNorm2d):
        return 2 * out
    if isinstance(layer, L.GroupNorm):
        return 6 * out
    if isinstance(layer, L._AdaptivePool2d):  # the taps of every output's window (overlapping ones counted each time)
        from .ops.adaptive_pool2d import windows
        taps = [sum(b - a for a, b in windows(size, out)) for size, out in zip(x.shape[2:], y.shape[2:])]
        return int(x.shape[1]) * taps[0] * taps[1]
    if isinstance(layer, L._Pool2d):
        k = layer.kernel_size if isinstance(layer.kernel_size, (tuple, list)) else (layer.kernel_size,) * 2
        return out * int(k[0]) * int(k[1])
    if isinstance(layer, (L.ReLU, L.LeakyReLU, L.Scale)):
        return out
    return 0


def summarize(model, input_shape) -> list[dict]:
    """Rows ``{name, layer, shape, params, flops}`` in the order the forward pass calls them: every
    leaf layer (one without sub-layers), every residual addition, every concatenation and
    dual-path join (after its branches' rows) and every squeeze-and-excitation product (after its gate's), whatever
    container holds them (Sequential, Residual, Concat, DualPath, or a Layer subclass with its own forward).
    A layer called twice gives two rows."""
    from . import layers as L
    if not isinstance(model, L.Layer):  # (a constructor, not the network it builds; another library's module)
        call = f": call it first, e.g. summarize({model.__name__}(), ...)" if callable(model) and hasattr(
            model, "__name__") else ""
        raise TypeError(f"model must be a gpuconv Layer (a network), got {type(model).__name__}{call}")
    input_shape = _one_input(input_shape)
    params = model.parameters()
    xp = backend.get_array_module(params[0].data) if params else np
    rows = []
    watched = []

    def watch(name, layer):
        forward = layer.forward

        def recorded(x, *args, **kwargs):
            y = forward(x, *args, **kwargs)
            if isinstance(layer, L.Residual):
                added = "x + inner" if layer.shortcut is None else "shortcut + inner"
                rows.append({"name": name or "(residual)", "layer": f"Residual ({added})",
                             "shape": tuple(y.shape[1:]), "params": 0, "flops": int(np.prod(y.shape[1:]))})
            elif isinstance(layer, L.SqueezeExcitation):  # (its gate's rows came first; then the product)
                rows.append({"name": name or "(squeeze-excitation)", "layer": "SqueezeExcitation (scale * x)",
                             "shape": tuple(y.shape[1:]), "params": 0, "flops": int(np.prod(y.shape[1:]))})
            elif isinstance(layer, L.DualPath):  # (its paths' rows came first; then the sum, the copies, the ReLU)
                hw = int(np.prod(y.shape[2:]))
                flops = layer.split * hw + (int(np.prod(y.shape[1:])) if layer.activation == "relu" else 0)
                added = f"split {layer.split}" + (", relu" if layer.activation == "relu" else "")
                rows.append({"name": name or "(dual path)", "layer": f"DualPath ({added})",
                             "shape": tuple(y.shape[1:]), "params": 0, "flops": flops})
            elif isinstance(layer, L.Concat):  # (its branches' rows came first; the join is a copy)
                rows.append({"name": name or "(concat)", "layer": f"Concat ({len(layer)} branches)",
                             "shape": tuple(y.shape[1:]), "params": 0, "flops": 0})
            else:
                rows.append({"name": name or "(model)", "layer": type(layer).__name__, "shape": tuple(y.shape[1:]),
                             "params": layer.num_parameters(), "flops": _flops(layer, x, y)})
            return y

        watched.append((layer, layer.__dict__.get("forward")))  # a forward set on the instance itself, if any
        object.__setattr__(layer, "forward", recorded)  # this instance only, undone below

    for name, layer in model.named_modules():
        if isinstance(layer, (L.Residual, L.Concat, L.DualPath, L.SqueezeExcitation)) or not layer.named_children():
            watch(name, layer)
    # (in the parameters' dtype: a float64 model, a gradient check's, takes a float64 image)
    dtype = params[0].data.dtype if params and params[0].data.dtype in (np.float32, np.float64) else np.float32
    try:
        # The parameters' GPU current (a no-op on the host): CuPy makes the zero image and every
        # activation on its current device, so a model on cuda:1 summarized while cuda:0 was current
        # got an image on GPU 0 that its first layer refused.
        with L.eval_mode(model), backend.parameters_device_context(params):
            model(xp.zeros((1, *input_shape), dtype=dtype))
    except ValueError as exc:
        if len(exc.args) == 1 and isinstance(exc.args[0], str):  # (which shape was tried, and how it was given)
            exc.args = (f"{exc.args[0]} [summary ran one input of shape {tuple(input_shape)}, a batch of 1: "
                        "input_shape is one input's shape without the batch axis, e.g. (3, 32, 32)]",)
        raise
    finally:
        for layer, own in watched:
            if own is None:
                del layer.__dict__["forward"]
            else:
                object.__setattr__(layer, "forward", own)
    return rows


def _one_input(input_shape) -> tuple:
    """``input_shape`` as a tuple of ints >= 1 (one input's shape, e.g. (3, 32, 32))."""
    one_d = isinstance(input_shape, np.ndarray) and input_shape.ndim == 1  # (np.array([3, 32, 32]), x.shape[1:]'s kin)
    shape = tuple(input_shape.tolist() if one_d else input_shape) if one_d or isinstance(input_shape, (tuple, list)) \
        else None
    if not shape or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in shape):
        raise TypeError(f"input_shape must be one input's shape, a tuple of ints >= 1 without the batch axis, e.g. "
                        f"(3, 32, 32) for CIFAR images; got {input_shape!r}")
    return tuple(int(v) for v in shape)


def summary_text(model, input_shape) -> str:
    input_shape = _one_input(input_shape)
    rows = summarize(model, input_shape)
    shapes = ["x".join(map(str, r["shape"])) for r in rows]
    # each column as wide as its longest entry ("Residual (shortcut + inner)", a ResNet's projection
    # block, is wider than the usual 22), so that the numbers line up under their heads
    w = max([len("layer")] + [len(r["name"]) for r in rows])
    t = max([22] + [len(r["layer"]) for r in rows])
    o = max([14] + [len(shape) for shape in shapes])
    head = f"{'layer':<{w}} {'type':<{t}} {'output shape':<{o}} {'params':>10} {'FLOPs':>14}"
    lines = [head, "-" * len(head)]
    for r, shape in zip(rows, shapes):
        lines.append(f"{r['name']:<{w}} {r['layer']:<{t}} {shape:<{o}} {r['params']:>10,} {r['flops']:>14,}")
    total_p, total_f = model.num_parameters(), sum(r["flops"] for r in rows)
    lines += ["-" * len(head), f"{'total':<{w + t + o + 2}} {total_p:>10,} {total_f:>14,}",
              f"input {'x'.join(map(str, input_shape))}; FLOPs are per image, forward (a multiply-add counts 2); "
              f"a training step costs about 3x that"]
    return "\n".join(lines)
