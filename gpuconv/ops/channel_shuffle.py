"""Channel shuffle of (N, C, H, W) arrays, PyTorch's ``nn.ChannelShuffle(groups)`` (ShuffleNet's
mixing of grouped convolutions' channels): x viewed as (N, groups, C // groups, H, W), axes 1 and 2
swapped, read back as (N, C, H, W). Output channel ``i * groups + j`` is input channel
``j * (C // groups) + i``.

No kernel: the op moves whole channels and computes nothing, so it is one gather along the channel
axis by an index array made where the array lives (``take``, one pass over memory on NumPy or
CuPy, on the array's device; a kernel of its own would be that same copy). The backward is the
inverse permutation, which is the shuffle with ``C // groups`` groups. Any float dtype passes
through bit for bit; outputs keep the input's layout (gpuconv.layout): a channels_last array is
gathered along its contiguous NHWC channel axis.

Cache: ``ChannelShuffleCache(groups, shape, dtype)``: the groups, the input's shape and dtype (dx's).
"""
from __future__ import annotations

import numpy as np

from ..backend import array_device_context, get_array_module
from ..layout import NCHW, is_channels_last, nhwc
from ._checks import cache_type, check_cache, check_dy_dtype, check_float

ChannelShuffleCache = cache_type("ChannelShuffleCache", "groups shape dtype", __name__)


def check_groups(groups, where="channel_shuffle") -> int:
    """``groups`` as an int >= 1 (a ValueError naming ``where`` otherwise)."""
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"{where}: groups={groups!r} must be an int >= 1, the number of channel groups to "
                         "interleave (e.g. the groups of the grouped convolution before it)")
    return int(groups)


def channel_shuffle_forward(x, groups):
    """``y, cache``: the channels of the 4-D ``x`` shuffled in ``groups`` groups, as PyTorch's
    ``F.channel_shuffle``; y in x's layout and dtype."""
    check_float("x", x)
    groups = check_groups(groups)
    if x.ndim != 4:
        raise ValueError(f"channel_shuffle_forward takes a 4-D (N, C, H, W) array, got shape {tuple(x.shape)}: "
                         "add the missing axes, e.g. x.reshape(n, c, 1, 1) for (N, C) features")
    c = x.shape[1]
    if c % groups:
        raise ValueError(f"channel_shuffle: the {c} channels of x (shape {tuple(x.shape)}) must be divisible by "
                         f"groups={groups} (each group holds C // groups channels): use a groups that divides {c}")
    return _gather(x, groups), ChannelShuffleCache(groups, tuple(x.shape), x.dtype)


def channel_shuffle_backward(dy, cache):
    """``dx``: the gradient of :func:`channel_shuffle_forward`, dy's channels put back in place (the
    inverse permutation), in dy's layout."""
    check_cache(cache, ChannelShuffleCache, "channel_shuffle_forward")
    check_float("dy", dy)
    if tuple(dy.shape) != cache.shape:
        raise ValueError(f"dy must have the forward output's shape {cache.shape}, got {tuple(dy.shape)}")
    check_dy_dtype(dy, cache.dtype)
    return _gather(dy, cache.shape[1] // cache.groups)


def _gather(x, groups):
    """x's channels in the order of the shuffle with ``groups`` groups: a new array in x's layout."""
    xp = get_array_module(x)
    c = x.shape[1]
    with array_device_context((x,)):  # the index and the copy on x's GPU (CuPy's current one otherwise)
        order = xp.arange(c).reshape(groups, c // groups).T.ravel()
        if is_channels_last(x):  # along the contiguous channel axis of the NHWC memory: NHWC out
            return xp.take(nhwc(x), order, axis=3).transpose(NCHW)
        return xp.take(x, order, axis=1)
