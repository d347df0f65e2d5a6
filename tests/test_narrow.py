"""Narrow (ops.narrow_*, nn.Narrow): torch.narrow's slice of one axis, its gradient zeros with dy in
the slice, in every dtype and layout, on every backend; with Concat, ShuffleNetV2's channel split."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import nn, ops
from gpuconv.precision import DTYPES

from test_layers import check_layer_gradients


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, dim, start, length", [((2, 6, 3, 4), 1, 2, 3), ((2, 6, 3, 4), 1, 0, 6),
                                                       ((3, 4, 5, 2), 2, 1, 4), ((3, 4, 5, 2), -1, 1, 1),
                                                       ((4, 3, 2, 2), 0, 1, 2)])
def test_forward_is_the_slice_and_backward_puts_dy_back_in_it(backend, shape, dim, start, length, dtype,
                                                              channels_last):
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal(shape).astype(dtype)
    x = backend.asarray(x_host)
    if channels_last:
        x = gpuconv.to_channels_last(x)
    y, cache = ops.narrow_forward(x, dim, start, length)
    expected = np.take(x_host, np.arange(start, start + length), axis=dim)
    assert y.dtype == x.dtype and type(y) is type(x)
    np.testing.assert_array_equal(backend.asnumpy(y), expected)  # bit for bit: a copy
    if channels_last and y.shape[1] > 1 and y.shape[2] * y.shape[3] > 1:
        assert gpuconv.is_channels_last(y)  # kept NHWC, not made NCHW
    x_host_before = backend.asnumpy(x).copy()
    y[...] = 0  # a copy, never a view of x
    np.testing.assert_array_equal(backend.asnumpy(x), x_host_before)
    dy_host = rng.standard_normal(expected.shape).astype(dtype)
    dy = backend.asarray(dy_host)
    if channels_last:
        dy = gpuconv.to_channels_last(dy)
    dx = ops.narrow_backward(dy, cache)
    want = np.zeros(shape, dtype)
    index = [slice(None)] * 4
    index[dim] = slice(start, start + length)
    want[tuple(index)] = dy_host
    assert dx.dtype == x.dtype and type(dx) is type(x) and dx.shape == shape
    np.testing.assert_array_equal(backend.asnumpy(dx), want)
    if channels_last and shape[1] > 1 and shape[2] * shape[3] > 1:
        assert gpuconv.is_channels_last(dx)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dim, start, length", [(1, 1, 3), (2, 0, 2), (3, 1, 2)])
def test_equals_torch_narrow_float64(backend, dim, start, length, channels_last):
    torch = pytest.importorskip("torch", reason="PyTorch is optional: the comparison with torch.narrow needs it")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 4, 3))
    X = torch.tensor(x, requires_grad=True)
    Y = torch.narrow(X, dim, start, length)
    dy = rng.standard_normal(tuple(Y.shape))
    Y.backward(torch.tensor(dy))
    layer = nn.Narrow(dim, start, length)
    xb, dyb = backend.asarray(x), backend.asarray(dy)
    if channels_last:
        xb, dyb = gpuconv.to_channels_last(xb), gpuconv.to_channels_last(dyb)
    y = layer(xb)
    np.testing.assert_array_equal(backend.asnumpy(y), Y.detach().numpy())
    np.testing.assert_array_equal(backend.asnumpy(layer.backward(dyb)), X.grad.numpy())
    assert repr(layer) == f"Narrow(dim={dim}, start={start}, length={length})"


@pytest.mark.parametrize("channels_last", [False, True])
def test_layer_gradients_float64(backend, channels_last):
    x = np.random.default_rng(2).standard_normal((2, 6, 3, 2))
    check_layer_gradients(nn.Narrow(1, 2, 3), x, backend, channels_last=channels_last)


def test_the_channel_split_of_a_shufflenet_block_float64(backend):
    """Concat(Narrow(first half), Sequential(Narrow(second half), conv, ...)) then the shuffle:
    kuangliu's ShuffleNetV2 BasicBlock, cat([x1, f(x2)]), with the gradient of both halves."""
    block = nn.Sequential(nn.Concat({"x1": nn.Narrow(1, 0, 2),
                                     "x2": nn.Sequential(nn.Narrow(1, 2, 2), nn.Conv2d(2, 2, 3, padding=1, seed=0))}),
                          nn.ChannelShuffle(2))
    block.astype(np.float64)
    x = np.random.default_rng(3).standard_normal((2, 4, 5, 5))
    y = block(backend.asarray(x))  # (the block's parameters are on the backend's device: x goes there too)
    conv = block[0]["x2"][1]
    f = ops.conv2d_forward(x[:, 2:], backend.asnumpy(conv.weight.data), backend.asnumpy(conv.bias.data), 1, 1)[0]
    np.testing.assert_allclose(backend.asnumpy(y),
                               ops.channel_shuffle_forward(np.concatenate([x[:, :2], f], axis=1), 2)[0],
                               rtol=1e-13, atol=1e-13)
    check_layer_gradients(block, x, backend)


def test_in_a_sequential_no_parameters_and_no_cache_in_eval():
    seq = nn.Sequential(nn.Conv2d(2, 4, 1, seed=0), nn.Narrow(1, 1, 2), nn.Conv2d(2, 2, 1, seed=1))
    x = np.random.default_rng(4).standard_normal((2, 2, 3, 3)).astype(np.float32)
    y = seq(x)
    assert seq.backward(np.ones_like(y)).shape == x.shape and seq[0].weight.grad is not None
    assert nn.Narrow(1, 0, 1).num_parameters() == 0 and nn.Narrow(1, 0, 1).state_dict() == {}
    seq.eval()
    seq(x)
    with pytest.raises(RuntimeError, match="without a cached forward pass"):
        seq.backward(np.ones_like(y))


def test_errors_name_the_values_and_the_rule():
    x = np.zeros((2, 6, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"start=4 \+ length=3 = 7 exceeds the size 6 of axis 1 of x \(shape "
                                         r"\(2, 6, 3, 3\)\): keep start \+ length <= 6"):
        ops.narrow_forward(x, 1, 4, 3)
    with pytest.raises(ValueError, match="in layer '1' .*exceeds the size 6 of axis 1"):
        nn.Sequential(nn.Identity(), nn.Narrow(1, 4, 3))(x)
    for name, args in (("dim", (4, 0, 1)), ("dim", (-5, 0, 1)), ("dim", (True, 0, 1)), ("start", (1, -1, 1)),
                       ("start", (1, 1.0, 1)), ("length", (1, 0, -2)), ("length", (1, 0, "2"))):
        bad = args[("dim", "start", "length").index(name)]
        with pytest.raises(ValueError, match=rf"Narrow\(dim, start, length\): {name}={bad!r} must be"):
            nn.Narrow(*args)
        with pytest.raises(ValueError, match=rf"narrow: {name}={bad!r} must be"):
            ops.narrow_forward(x, *args)
    with pytest.raises(ValueError, match=r"takes a 4-D \(N, C, H, W\) array, got shape \(2, 6\)"):
        ops.narrow_forward(np.zeros((2, 6), np.float32), 1, 0, 2)
    with pytest.raises(TypeError, match="x has dtype int64"):
        ops.narrow_forward(np.zeros((1, 2, 1, 1), np.int64), 1, 0, 1)
    _, cache = ops.narrow_forward(x, 1, 1, 3)
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(2, 3, 3, 3\), got \(2, 6, 3, 3\)"):
        ops.narrow_backward(x, cache)
    with pytest.raises(TypeError, match="dy has dtype float64 but the forward's output had dtype float32"):
        ops.narrow_backward(x[:, :3].astype(np.float64), cache)


def test_exported_and_summarized():
    assert "Narrow" in nn.__all__ and nn.Narrow is gpuconv.layers.Narrow
    assert {"narrow_forward", "narrow_backward", "NarrowCache"} <= set(ops.__all__)
    net = nn.Sequential(nn.Conv2d(3, 4, 1, seed=0), nn.Narrow(1, 1, 2))
    rows = gpuconv.summary.summarize(net, (3, 4, 4))
    assert rows[-1]["layer"] == "Narrow" and rows[-1]["shape"] == (2, 4, 4) and rows[-1]["flops"] == 0


def test_the_slice_is_a_number_a_captured_step_replays():
    layer = nn.Narrow(1, 0, 2)
    layer._held_by_graph = True
    layer.start = 0  # the same value: nothing changes
    for name, value in (("dim", 2), ("start", 1), ("length", 1)):
        with pytest.raises(RuntimeError, match=f"Narrow: {name} cannot change while a captured training step"):
            setattr(layer, name, value)
    assert (layer.dim, layer.start, layer.length) == (1, 0, 2)
