"""Channel gating: ``y = gate * x`` with a gate of one value per sample and channel, x (N, C, H, W) and
gate (N, C, 1, 1): the output of a squeeze-and-excitation block (``gpuconv.layers.SqueezeExcitation``).
The backward is two functions: ``dgate = sum over H, W of dy * x`` per (n, c)
(:func:`channel_gate_backward_gate`), then ``dx = dy * gate`` (:func:`channel_gate_backward_data`),
to which the gradient that reaches x through the gate's own branch is added before the one rounding.

No kernel: a broadcast product and a per-channel sum, array operations on NumPy or CuPy, on the
arrays' device. Precision (gpuconv.precision): bfloat16/float16 values are multiplied, and dgate's
H * W products added, in float32 (float64 for float64), each result rounded once to the inputs'
dtype: a sum kept in bfloat16 would stop growing once it is 2^8 times the products it adds.
y and dx keep x's and dy's layout (gpuconv.layout).

Cache: ``ChannelGateCache(x, gate)``, the forward's inputs.
"""
from __future__ import annotations

from ..backend import array_device_context
from ..layout import binary, is_channels_last, like
from ..precision import round_once, upcast
from ._checks import cache_type, check_cache, check_dy_dtype, check_float, check_same_dtype

ChannelGateCache = cache_type("ChannelGateCache", "x gate", __name__)


def channel_gate_forward(x, gate):
    """``y, cache``: ``y = gate * x`` for x (N, C, H, W) and gate (N, C, 1, 1), rounded once to x's dtype."""
    check_float("x", x)
    check_same_dtype("x", x, gate=gate)
    if x.ndim != 4 or tuple(gate.shape) != (*x.shape[:2], 1, 1):
        raise ValueError(f"channel_gate_forward: x must be (N, C, H, W) and gate (N, C, 1, 1), one value per sample "
                         f"and channel, got x {tuple(x.shape)} and gate {tuple(gate.shape)}")
    with array_device_context((x,)):  # (the product in x's layout on CuPy too: no transposing copy after it)
        y = binary("multiply", upcast(x), upcast(gate), is_channels_last(x))
        return like(x, round_once(y, x.dtype)), ChannelGateCache(x, gate)


def channel_gate_backward_gate(dy, cache):
    """``dgate``: the per-(n, c) sum of ``dy * x`` over H and W, (N, C, 1, 1) in x's dtype."""
    x, _ = _check_dy(dy, cache)
    with array_device_context((dy,)):
        return round_once((upcast(dy) * upcast(x)).sum(axis=(2, 3), keepdims=True), x.dtype)


def channel_gate_backward_data(dy, cache, add=None):
    """``dx = dy * gate`` in dy's layout and x's dtype; ``add`` (an array of x's shape and dtype, or
    None) is added before the one rounding: the gradient that reaches x through the gate's own
    branch, when the gate is computed from x (a squeeze-and-excitation block)."""
    x, gate = _check_dy(dy, cache)
    if add is not None:
        check_same_dtype("dy", dy, add=add)
        if tuple(add.shape) != tuple(x.shape):
            raise ValueError(f"add must have x's shape {tuple(x.shape)}, got {tuple(add.shape)}")
    with array_device_context((dy,)):
        dx = binary("multiply", upcast(dy), upcast(gate), is_channels_last(dy))
        if add is not None:
            dx += upcast(add)
        return like(dy, round_once(dx, dy.dtype))


def _check_dy(dy, cache):
    check_cache(cache, ChannelGateCache, "channel_gate_forward")
    check_float("dy", dy)
    x = cache.x
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"dy must have the forward output's shape {tuple(x.shape)}, got {tuple(dy.shape)}")
    check_dy_dtype(dy, x.dtype)
    return cache
