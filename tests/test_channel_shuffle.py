"""Channel shuffle (ops.channel_shuffle_*, nn.ChannelShuffle): PyTorch's permutation, its inverse as
the gradient, in every dtype and layout, on every backend."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import nn, ops
from gpuconv.precision import DTYPES

from test_layers import check_layer_gradients


def _shuffled(x, g):
    """The definition: (N, C, H, W) -> (N, g, C/g, H, W) -> swap axes 1 and 2 -> (N, C, H, W)."""
    n, c, h, w = x.shape
    return x.reshape(n, g, c // g, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, groups", [((2, 6, 3, 4), 3), ((1, 8, 2, 2), 2), ((3, 4, 1, 5), 4), ((2, 5, 2, 3), 1)])
def test_forward_is_the_definition_and_backward_its_inverse(backend, shape, groups, dtype, channels_last):
    x_host = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    x = backend.asarray(x_host)
    if channels_last:
        x = gpuconv.to_channels_last(x)
    y, cache = ops.channel_shuffle_forward(x, groups)
    assert y.dtype == x.dtype and gpuconv.is_channels_last(y) == gpuconv.is_channels_last(x)
    np.testing.assert_array_equal(backend.asnumpy(y), _shuffled(x_host, groups))  # bit for bit: a permutation
    dx = ops.channel_shuffle_backward(y, cache)
    assert dx.dtype == x.dtype and gpuconv.is_channels_last(dx) == gpuconv.is_channels_last(x)
    np.testing.assert_array_equal(backend.asnumpy(dx), x_host)
    assert type(dx) is type(x)


def test_channel_order_and_the_inverse_is_the_shuffle_by_the_group_size():
    x = np.arange(12.0).reshape(1, 12, 1, 1)
    y, _ = ops.channel_shuffle_forward(x, 3)
    assert y.ravel().tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    np.testing.assert_array_equal(ops.channel_shuffle_forward(y, 4)[0], x)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape, groups", [((2, 6, 3, 3), 2), ((1, 9, 2, 2), 3)])
def test_equals_torch_channel_shuffle_float64(backend, shape, groups, channels_last):
    torch = pytest.importorskip("torch", reason="PyTorch is optional: the comparison with nn.ChannelShuffle needs it")
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    X = torch.tensor(x, requires_grad=True)
    Y = torch.nn.ChannelShuffle(groups)(X)
    Y.backward(torch.tensor(dy))
    layer = nn.ChannelShuffle(groups)
    xb, dyb = backend.asarray(x), backend.asarray(dy)
    if channels_last:
        xb, dyb = gpuconv.to_channels_last(xb), gpuconv.to_channels_last(dyb)
    y = layer(xb)
    np.testing.assert_array_equal(backend.asnumpy(y), Y.detach().numpy())
    dx = layer.backward(dyb)
    np.testing.assert_array_equal(backend.asnumpy(dx), X.grad.numpy())
    assert gpuconv.is_channels_last(y) == gpuconv.is_channels_last(dx) == channels_last
    assert repr(layer) == repr(torch.nn.ChannelShuffle(groups)) == f"ChannelShuffle(groups={groups})"


@pytest.mark.parametrize("channels_last", [False, True])
def test_layer_gradients_float64(backend, channels_last):
    x = np.random.default_rng(2).standard_normal((2, 6, 3, 2))
    check_layer_gradients(nn.ChannelShuffle(3), x, backend, channels_last=channels_last)


def test_in_a_sequential_no_parameters_and_no_cache_in_eval():
    seq = nn.Sequential(nn.Conv2d(2, 4, 1, seed=0), nn.ChannelShuffle(2), nn.Conv2d(4, 2, 1, seed=1))
    x = np.random.default_rng(3).standard_normal((2, 2, 3, 3)).astype(np.float32)
    y = seq(x)
    assert seq.backward(np.ones_like(y)).shape == x.shape and seq[0].weight.grad is not None
    assert nn.ChannelShuffle(2).num_parameters() == 0 and nn.ChannelShuffle(2).state_dict() == {}
    seq.eval()
    seq(x)
    with pytest.raises(RuntimeError, match="without a cached forward pass"):
        seq[1].backward(np.ones((2, 4, 3, 3), np.float32))


def test_errors_name_the_values_and_the_rule():
    x = np.zeros((2, 6, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"the 6 channels of x \(shape \(2, 6, 3, 3\)\) must be divisible by "
                                         r"groups=4 .*use a groups that divides 6"):
        ops.channel_shuffle_forward(x, 4)
    with pytest.raises(ValueError, match="in layer '1' .*the 6 channels of x .* groups=4"):
        nn.Sequential(nn.Identity(), nn.ChannelShuffle(4))(x)
    for bad in (0, -2, True, 1.5, "2"):
        with pytest.raises(ValueError, match=rf"ChannelShuffle\(groups=...\): groups={bad!r} must be an int >= 1"):
            nn.ChannelShuffle(bad)
        with pytest.raises(ValueError, match=rf"channel_shuffle: groups={bad!r} must be an int >= 1"):
            ops.channel_shuffle_forward(x, bad)
    with pytest.raises(ValueError, match=r"takes a 4-D \(N, C, H, W\) array, got shape \(2, 6\)"):
        ops.channel_shuffle_forward(np.zeros((2, 6), np.float32), 2)
    with pytest.raises(TypeError, match="x has dtype int64"):
        ops.channel_shuffle_forward(np.zeros((1, 2, 1, 1), np.int64), 2)
    _, cache = ops.channel_shuffle_forward(x, 3)
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(2, 6, 3, 3\)"):
        ops.channel_shuffle_backward(x[:, :3], cache)
    with pytest.raises(TypeError, match="dy has dtype float64 but the forward's output had dtype float32"):
        ops.channel_shuffle_backward(x.astype(np.float64), cache)


def test_exported_and_summarized():
    assert "ChannelShuffle" in nn.__all__ and nn.ChannelShuffle is gpuconv.layers.ChannelShuffle
    assert {"channel_shuffle_forward", "channel_shuffle_backward", "ChannelShuffleCache"} <= set(ops.__all__)
    net = nn.Sequential(nn.Conv2d(3, 4, 1, seed=0), nn.ChannelShuffle(2))
    rows = gpuconv.summary.summarize(net, (3, 4, 4))
    assert rows[-1]["layer"] == "ChannelShuffle" and rows[-1]["shape"] == (4, 4, 4) and rows[-1]["flops"] == 0


def test_groups_is_a_number_a_captured_step_replays():
    """The shuffle's order is computed from groups at each forward: a CUDA graph replays its
    capture's gather, so a change while a captured step holds the layer is refused (and free
    otherwise), as Conv2d's groups is."""
    layer = nn.ChannelShuffle(2)
    layer.groups = 3
    layer._held_by_graph = True
    layer.groups = 3  # the same value: nothing changes
    with pytest.raises(RuntimeError, match="ChannelShuffle: groups cannot change while a captured training step"):
        layer.groups = 2
    assert layer.groups == 3
