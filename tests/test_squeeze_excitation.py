"""Squeeze-and-excitation (nn.SqueezeExcitation, ops.channel_gate_*): torchvision's block, its
gradients against PyTorch and central differences, its state dict, layouts, bfloat16, a SENet-style
block's training step."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import amp, nn, ops
from gpuconv.optim import SGD
from gpuconv.precision import bfloat16, unit_roundoff

from test_layers import check_layer_gradients


def torch_se(torch, c, s, activation="ReLU", scale_activation="Sigmoid"):
    """torchvision's ``ops.SqueezeExcitation`` (torchvision itself when installed; else its code, on torch.nn)."""
    act, scale_act = getattr(torch.nn, activation), getattr(torch.nn, scale_activation)
    try:
        from torchvision.ops import SqueezeExcitation
        return SqueezeExcitation(c, s, act, scale_act)
    except ImportError:
        pass

    class SqueezeExcitation(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
            self.fc1 = torch.nn.Conv2d(c, s, 1)
            self.fc2 = torch.nn.Conv2d(s, c, 1)
            self.activation = act()
            self.scale_activation = scale_act()

        def forward(self, x):
            return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x))))) * x
    return SqueezeExcitation()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation, scale_activation", [("ReLU", "Sigmoid"), ("SiLU", "Sigmoid"), ("GELU", "Tanh")])
def test_equals_torchvision_float64_and_its_state_dict_loads(backend, activation, scale_activation, channels_last):
    torch = pytest.importorskip("torch", reason="PyTorch is optional: the comparison with SqueezeExcitation needs it")
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((3, 8, 5, 4)), rng.standard_normal((3, 8, 5, 4))
    torch.manual_seed(0)
    theirs = torch_se(torch, 8, 3, activation, scale_activation).double()
    X = torch.tensor(x, requires_grad=True)
    Y = theirs(X)
    Y.backward(torch.tensor(dy))
    ours = nn.SqueezeExcitation(8, 3, getattr(nn, activation), getattr(nn, scale_activation)).to(backend.device)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert ours.load_state_dict(theirs.state_dict()) == ([], [])
    ours.astype(np.float64)
    xb, dyb = backend.asarray(x), backend.asarray(dy)
    if channels_last:
        xb, dyb = gpuconv.to_channels_last(xb), gpuconv.to_channels_last(dyb)
    y = ours(xb)
    np.testing.assert_allclose(backend.asnumpy(y), Y.detach().numpy(), rtol=1e-12, atol=1e-13)
    dx = ours.backward(dyb)
    np.testing.assert_allclose(backend.asnumpy(dx), X.grad.numpy(), rtol=1e-11, atol=1e-13)
    assert gpuconv.is_channels_last(y) == gpuconv.is_channels_last(dx) == channels_last
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(backend.asnumpy(p.grad), grads[name].grad.numpy(), rtol=1e-11, atol=1e-13,
                                   err_msg=name)
    backend.assert_kernels_ran("conv2d_forward", "conv2d_backward")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [nn.SiLU, nn.Tanh])
def test_layer_gradients_float64(backend, activation, channels_last):
    x = np.random.default_rng(1).standard_normal((2, 6, 3, 3))
    np.random.seed(1)
    check_layer_gradients(nn.SqueezeExcitation(6, 2, activation), x, backend, channels_last=channels_last)


def test_the_gate_sum_is_added_in_float32_for_bfloat16():
    """dgate's H * W products are added in float32 and rounded once: 256 + 63 ones is 319, 320 in
    bfloat16; a sum kept in bfloat16 would stay at 256 (256 + 1 rounds back to 256)."""
    x = np.ones((1, 1, 8, 8), bfloat16)
    dy = np.ones((1, 1, 8, 8), np.float32)
    dy[0, 0, 0, 0] = 256
    _, cache = ops.channel_gate_forward(x, np.ones((1, 1, 1, 1), bfloat16))
    dgate = ops.channel_gate_backward_gate(dy.astype(bfloat16), cache)
    assert dgate.dtype == bfloat16 and float(dgate.ravel()[0]) == 320.0


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [bfloat16, np.float16], ids=lambda d: np.dtype(d).name)
def test_channel_gate_low_precision_rounds_once_within_the_reduction_bound(backend, dtype, channels_last):
    """y and dx: one product, rounded once (bit for bit the float64 product rounded); dgate: H * W
    float32 additions (each off by at most u32 times the partial sum, so by H * W * u32 * sum |dy x|
    in all) and one rounding (u of the dtype times the sum)."""
    rng = np.random.default_rng(2)
    shape = (2, 3, 6, 5)
    x, dy = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    gate = rng.uniform(0, 1, (2, 3, 1, 1)).astype(dtype)
    xb, dyb = backend.asarray(x), backend.asarray(dy)
    if channels_last:
        xb, dyb = gpuconv.to_channels_last(xb), gpuconv.to_channels_last(dyb)
    y, cache = ops.channel_gate_forward(xb, backend.asarray(gate))
    x64, dy64, gate64 = (a.astype(np.float64) for a in (x, dy, gate))
    np.testing.assert_array_equal(backend.asnumpy(y), (gate64 * x64).astype(dtype))
    add = rng.standard_normal(shape).astype(dtype)
    dx = ops.channel_gate_backward_data(dyb, cache, add=backend.asarray(add))
    np.testing.assert_array_equal(backend.asnumpy(dx), (dy64 * gate64 + add.astype(np.float64)).astype(dtype))
    assert y.dtype == dx.dtype == dtype and gpuconv.is_channels_last(y) == gpuconv.is_channels_last(dx) == channels_last
    dgate = backend.asnumpy(ops.channel_gate_backward_gate(dyb, cache)).astype(np.float64)
    want = (dy64 * x64).sum(axis=(2, 3), keepdims=True)
    terms = np.abs(dy64 * x64).sum(axis=(2, 3), keepdims=True)
    bound = unit_roundoff(dtype) * np.abs(want) + shape[2] * shape[3] * unit_roundoff(np.float32) * terms
    assert np.all(np.abs(dgate - want) <= bound), np.max(np.abs(dgate - want) / bound)


def test_mixed_precision_bfloat16_agrees_with_float64_to_the_roundings_on_its_path():
    """Under amp's bf16 the block computes in bfloat16 (its two convolutions from bf16 copies of the
    weights): output and dx within the roundings on their path (pooling, fc1, fc2, the gate, the
    product: five, each u = 2^-8; the gate's sum of H * W = 64 products in float32 adds 64 * 2^-24)."""
    rng = np.random.default_rng(3)
    np.random.seed(3)
    se = nn.SqueezeExcitation(8, 4, nn.SiLU)
    x = rng.standard_normal((2, 8, 8, 8)).astype(bfloat16)
    dy = rng.standard_normal((2, 8, 8, 8)).astype(bfloat16)
    ref = nn.SqueezeExcitation(8, 4, nn.SiLU)
    ref.load_state_dict({k: v.astype(bfloat16) for k, v in se.state_dict().items()})  # the copies amp computes with
    ref.astype(np.float64)
    y64 = ref(x.astype(np.float64))
    dx64 = ref.backward(dy.astype(np.float64))
    with amp.autocast(se, "bf16") as dt:
        y = se(x.astype(dt))
        dx = se.backward(dy)
    assert y.dtype == dx.dtype == bfloat16
    tol = 5 * unit_roundoff(bfloat16) + 64 * unit_roundoff(np.float32)
    for name, ours, want in (("y", y, y64), ("dx", dx, dx64)):
        err = np.linalg.norm(ours.astype(np.float64) - want) / np.linalg.norm(want)
        assert err < tol, f"{name}: relative error {err:.2e} > {tol:.2e}"
    for (name, p), (_, p64) in zip(se.named_parameters(), ref.named_parameters()):
        assert p.grad.dtype == np.float32
        err = np.linalg.norm(p.grad - p64.grad) / np.linalg.norm(p64.grad)
        assert err < 2 * tol, f"{name}: relative error {err:.2e}"


def test_need_dx_false_gives_the_same_parameter_gradients_and_no_dx():
    np.random.seed(4)
    se = nn.SqueezeExcitation(6, 3)
    x = np.random.default_rng(4).standard_normal((2, 6, 4, 4)).astype(np.float32)
    dy = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    se(x)
    se.backward(dy)
    want = {n: p.grad.copy() for n, p in se.named_parameters()}
    se.zero_grad()
    with nn.input_is_data(se):
        se(x)
    assert se.backward(dy, need_dx=False) is None
    for n, p in se.named_parameters():
        np.testing.assert_allclose(p.grad, want[n], rtol=1e-6, atol=1e-7, err_msg=n)
    assert all(m._cache is None for m in se.modules())


def test_eval_keeps_no_cache_and_repr_names_the_sublayers():
    se = nn.SqueezeExcitation(4, 2, activation=nn.SiLU)
    x = np.ones((1, 4, 2, 2), np.float32)
    se.eval()
    se(x)
    assert all(m._cache is None for m in se.modules())
    with pytest.raises(RuntimeError, match="SqueezeExcitation.backward.. was called without a cached forward"):
        se.backward(x)
    assert [n for n, _ in se.named_children()] == ["avgpool", "fc1", "fc2", "activation", "scale_activation"]
    assert "(fc1): Conv2d(4, 2, kernel_size=(1, 1)" in repr(se) and "(activation): SiLU()" in repr(se)
    assert se.num_parameters() == 4 * 2 + 2 + 2 * 4 + 4
    assert [p.name for p in se.parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


def test_seed_gives_the_same_weights_and_unseeded_draws_follow_numpys_generator():
    """``seed=`` (as every gpuconv layer's) fixes fc1's and fc2's initial weights; without it they come from NumPy's global generator, as an unseeded Conv2d's."""
    def weights(se):
        return [np.array(p.data) for p in se.parameters()]
    a, b, c = (nn.SqueezeExcitation(16, 4, seed=s) for s in (5, 5, 6))
    assert all(np.array_equal(u, v) for u, v in zip(weights(a), weights(b)))
    assert not any(np.array_equal(u, v) for u, v in zip(weights(a), weights(c)))
    np.random.seed(9)
    first = weights(nn.SqueezeExcitation(16, 4))
    np.random.seed(9)
    assert all(np.array_equal(u, v) for u, v in zip(first, weights(nn.SqueezeExcitation(16, 4))))
    with pytest.raises(ValueError, match=r"seed=-1 is out of range"):
        nn.SqueezeExcitation(16, 4, seed=-1)


def test_errors():
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=rf"input_channels={bad!r} must be an int >= 1"):
            nn.SqueezeExcitation(bad, 2)
        with pytest.raises(ValueError, match=rf"squeeze_channels={bad!r} must be an int >= 1"):
            nn.SqueezeExcitation(4, bad)
    with pytest.raises(TypeError, match="activation must be a gpuconv Layer class .*activation=nn.SiLU"):
        nn.SqueezeExcitation(4, 2, activation=np.tanh)
    with pytest.raises(TypeError, match="scale_activation must be a gpuconv Layer class"):
        nn.SqueezeExcitation(4, 2, scale_activation="sigmoid")
    with pytest.raises(TypeError, match="pass the class, not an instance"):
        nn.SqueezeExcitation(4, 2, activation=nn.ReLU())
    assert isinstance(nn.SqueezeExcitation(4, 2, activation=lambda: nn.LeakyReLU(0.1)).activation, nn.LeakyReLU)
    se = nn.SqueezeExcitation(4, 2)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        se(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="in layer 'fc1' .*Conv2d"):
        se(np.ones((1, 3, 2, 2), np.float32))
    se(np.ones((1, 4, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(1, 4, 2, 2\)"):
        se.backward(np.ones((1, 4, 2, 1), np.float32))
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\) and gate \(N, C, 1, 1\)"):
        ops.channel_gate_forward(np.ones((1, 4, 2, 2)), np.ones((1, 4, 2, 1)))


def senet_block(c, seed):
    """kuangliu's SENet18 BasicBlock: conv-bn-relu-conv-bn, squeeze-excitation, + x, relu."""
    return nn.Sequential(
        nn.Residual(nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False, seed=seed), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False, seed=seed + 1), nn.BatchNorm2d(c),
                                  nn.SqueezeExcitation(c, c // 2))),
        nn.ReLU())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_senet_block_trains(backend, precision):
    np.random.seed(6)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, seed=0), senet_block(4, seed=1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3, seed=3)).to(backend.device)
    rng = np.random.default_rng(6)
    x = gpuconv.to_channels_last(backend.asarray(rng.standard_normal((4, 3, 6, 6)).astype(np.float32)))
    y = backend.asarray(np.array([0, 1, 2, 1]))
    opt = SGD(net.parameters(), lr=0.2)
    before = {n: backend.asnumpy(p.data).copy() for n, p in net.named_parameters()}
    losses = [float(amp.training_step(net, opt, x, y, precision)[0]) for _ in range(4)]
    assert losses[-1] < losses[0], losses
    se = net[1][0].inner[5]
    assert isinstance(se, nn.SqueezeExcitation)
    for n, p in net.named_parameters():
        assert not np.array_equal(backend.asnumpy(p.data), before[n]), f"{n} did not change"
    backend.assert_kernels_ran("conv2d_forward", "batchnorm2d_", "avg_pool2d_forward", "sigmoid_forward")
    rows = gpuconv.summary.summarize(net, (3, 6, 6))
    se_rows = [r for r in rows if r["layer"].startswith("SqueezeExcitation")]
    assert len(se_rows) == 1 and se_rows[0]["shape"] == (4, 6, 6) and se_rows[0]["flops"] == 4 * 6 * 6
    assert [r["name"] for r in rows].index("1.0.inner.5.scale_activation") < rows.index(se_rows[0])


def test_exported():
    assert "SqueezeExcitation" in nn.__all__ and nn.SqueezeExcitation is gpuconv.layers.SqueezeExcitation
    assert {"channel_gate_forward", "channel_gate_backward_gate", "channel_gate_backward_data",
            "ChannelGateCache"} <= set(ops.__all__)
