"""Channel gating: ``y = gate * x`` with a gate of one value per sample and channel, x (N, C, H, W) and
gate (N, C, 1, 1): the output of a squeeze-and-excitation block (``gpuconv.layers.SqueezeExcitation``).
The backward is two functions: ``dgate = sum over H, W of dy * x`` per (n, c)
(:func:`channel_gate_backward_gate`), then ``dx = dy * gate`` (:func:`channel_gate_backward_data`),
to which the gradient that reaches x through the gate's own branch is added before the one rounding:
a full-size array (``add``), or, where the gate starts with a global average pool of x, that pool's
output gradient (``pooled``), spread over H and W as the pool's backward spreads it, without making
the full-size array.

Kernels (kernels/channel_gate.cu) on 'cuda' and 'sim': each function one pass over memory; below,
the references (NumPy, or CuPy where a launcher declines). Precision (gpuconv.precision):
bfloat16/float16 values are multiplied, and dgate's H * W products added, in float32 (float64 for
float64), each result rounded once to the inputs' dtype: a sum kept in bfloat16 would stop growing
once it is 2^8 times the products it adds. dgate's sum has one order, the kernel's, in both
layouts (:func:`_gate_sums`: 32 running sums, of pixels l, l + 32, ..., then a tree over them), so
every path gives the same bits. y and dx keep x's and dy's layout (gpuconv.layout).

Cache: ``ChannelGateCache(x, gate)``, the forward's inputs.
"""
from __future__ import annotations

import numpy as np

from ..backend import array_device_context, get_array_module, kernel_target
from ..layout import binary, is_channels_last, like, nhwc
from ..precision import round_once, upcast
from . import _dispatch
from ._checks import cache_type, cached, check_cache, check_dy_dtype, check_float, check_same_dtype
from ._pool2d_reference import _avg_scale

ChannelGateCache = cache_type("ChannelGateCache", "x gate", __name__)

LANES = 32  # the running sums of dgate's order (a warp's lanes in the kernel)


def channel_gate_forward(x, gate):
    """``y, cache``: ``y = gate * x`` for x (N, C, H, W) and gate (N, C, 1, 1), rounded once to x's dtype."""
    check_float("x", x)
    check_same_dtype("x", x, gate=gate)
    if x.ndim != 4 or tuple(gate.shape) != (*x.shape[:2], 1, 1):
        raise ValueError(f"channel_gate_forward: x must be (N, C, H, W) and gate (N, C, 1, 1), one value per sample "
                         f"and channel, got x {tuple(x.shape)} and gate {tuple(gate.shape)}")
    return _dispatch.call("channel_gate_forward", kernel_target(x, gate, names=("x", "gate")),
                          _channel_gate_forward_reference, x, gate)


def channel_gate_backward_gate(dy, cache):
    """``dgate``: the per-(n, c) sum of ``dy * x`` over H and W, (N, C, 1, 1) in x's dtype."""
    x, _ = _check_dy(dy, cache)
    return _dispatch.call("channel_gate_backward_gate", kernel_target(dy, x, names=("dy", cached("x"))),
                          _channel_gate_backward_gate_reference, dy, cache)


def channel_gate_backward_data(dy, cache, add=None, pooled=None):
    """``dx = dy * gate`` in dy's layout and x's dtype, plus, before the one rounding, the gradient
    that reaches x through the gate's own branch when the gate is computed from x (a
    squeeze-and-excitation block), given as one of:

    - ``add``: an array of x's shape and dtype;
    - ``pooled``: (N, C, 1, 1) in x's dtype, the output gradient of a global average pool of x
      (``AdaptiveAvgPool2d(1)``) that starts the gate: its backward is added, each value times the
      rounded reciprocal of H * W and rounded to x's dtype at every pixel of its plane, the bits of
      ``add=ops.avg_pool2d_backward(pooled, pool_cache)``, without that full-size array."""
    x, gate = _check_dy(dy, cache)
    if add is not None and pooled is not None:
        raise ValueError("channel_gate_backward_data: pass add (x's shape) or pooled (N, C, 1, 1), not both: "
                         "add a pooled gradient's spread to the full-size array first")
    if add is not None:
        check_same_dtype("dy", dy, add=add)
        if tuple(add.shape) != tuple(x.shape):
            raise ValueError(f"add must have x's shape {tuple(x.shape)}, got {tuple(add.shape)}")
    if pooled is not None:
        check_same_dtype("dy", dy, pooled=pooled)
        if tuple(pooled.shape) != tuple(gate.shape):
            raise ValueError(f"pooled must be (N, C, 1, 1) {tuple(gate.shape)}, one gradient per sample and channel "
                             f"of the global average pool's output, got {tuple(pooled.shape)}")
    target = kernel_target(dy, gate, add, pooled, names=("dy", cached("gate"), "add", "pooled"))
    return _dispatch.call("channel_gate_backward_data", target, _channel_gate_backward_data_reference,
                          dy, cache, add, pooled)


def _check_dy(dy, cache):
    check_cache(cache, ChannelGateCache, "channel_gate_forward")
    check_float("dy", dy)
    x = cache.x
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"dy must have the forward output's shape {tuple(x.shape)}, got {tuple(dy.shape)}")
    check_dy_dtype(dy, x.dtype)
    return cache


def pooled_share(pooled, hw):
    """The global average pool's backward of ``pooled`` (N, C, 1, 1) over an (H, W) = ``hw`` map,
    one value per plane, in pooled's dtype: ``0 + pooled * (1 / (H * W))`` in the compute dtype
    (a -0.0 made +0.0, as the pool's spread onto zeros makes it), rounded once."""
    pc = upcast(pooled)
    share = pc * _avg_scale(get_array_module(pc), pc.dtype, hw, hw, hw, (0, 0), True, (1, 1))
    return round_once(share + pc.dtype.type(0), pooled.dtype)


def _gate_sums(p):
    """The (N, C, 1, 1) sums over H and W of the products ``p`` (N, C, H, W, in the compute dtype),
    in the kernel's order in either layout: running sum l of LANES adds pixels l, l + LANES, ...
    (flat index h * W + w) in order onto +0.0, then a tree over the running sums: 0-15 plus
    16-31, then 0-7 plus 8-15, and so on down to one."""
    n, c, h, w = p.shape
    xp, hw = get_array_module(p), h * w
    # (N, C, H * W), a view of the memory of either layout (NHWC: the channel axis strided)
    cl = is_channels_last(p)
    q = nhwc(p).reshape(n, hw, c).transpose(0, 2, 1) if cl else p.reshape(n, c, hw)
    rounds, zero = hw // LANES, p.dtype.type(0)
    if xp is np and rounds >= 8:  # (a reduction along a short axis is slower than its adds)
        # The whole rounds reduced along their axis, an outer one (the LANES axis inside it, in
        # memory too): NumPy adds an outer axis elementwise in index order, the loop's order (it
        # adds pairwise only along the innermost); starting from the first term, where the loop
        # starts from +0.0, differs in a sum of -0.0s alone, which adding +0.0 mends.
        if cl:
            rounds_sum = np.add.reduce(nhwc(p).reshape(n, hw, c)[:, :rounds * LANES].reshape(n, rounds, LANES, c),
                                       axis=1).transpose(0, 2, 1)
        else:
            rounds_sum = np.add.reduce(q[:, :, :rounds * LANES].reshape(n, c, rounds, LANES), axis=2)
        s, first = np.add(rounds_sum, zero, out=np.empty((n, c, LANES), p.dtype)), rounds * LANES
    elif rounds:
        s, first = q[:, :, :LANES] + zero, LANES  # (+0.0 plus the first round: a new array)
    else:
        s, first = xp.zeros((n, c, LANES), dtype=p.dtype), 0
    for k in range(first, hw, LANES):
        block = q[:, :, k:k + LANES]
        s[:, :, :block.shape[2]] += block
    width = LANES // 2
    while width:
        s = s[:, :, :width] + s[:, :, width:2 * width]
        width //= 2
    return s.reshape(n, c, 1, 1)


def _channel_gate_forward_reference(x, gate):
    with array_device_context((x,)):  # (the product in x's layout on CuPy too: no transposing copy after it)
        y = binary("multiply", upcast(x), upcast(gate), is_channels_last(x))
        return like(x, round_once(y, x.dtype)), ChannelGateCache(x, gate)


def _channel_gate_backward_gate_reference(dy, cache):
    x = cache.x
    with array_device_context((dy,)):
        p = binary("multiply", upcast(dy), upcast(x), is_channels_last(dy))
        return round_once(_gate_sums(p), x.dtype)


def _channel_gate_backward_data_reference(dy, cache, add=None, pooled=None):
    with array_device_context((dy,)):
        dx = binary("multiply", upcast(dy), upcast(cache.gate), is_channels_last(dy))
        if add is not None:
            dx += upcast(add)
        if pooled is not None and dx.size:  # (no pixels: no share, and no 1 / (H * W) to form)
            dx += upcast(pooled_share(pooled, tuple(dy.shape[2:])))
        return like(dy, round_once(dx, dy.dtype))


# This op's CUDA kernel launchers, for the 'cuda' and 'sim' targets; last, as it imports the names above.
from . import _launch_channel_gate  # noqa: E402,F401  (registration)
