"""The airbench networks (airbench94, airbench96): structure, frozen parameters, identity and
whitening initialization, floor-mode pooling of odd sizes, gradients through the whole chain."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import layout, models, nn, ops
from gpuconv.layers import Residual
from gpuconv.gradcheck import directional_derivative, relative_error


def _images(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def test_structure_and_frozen_parameters():
    net = models.airbench94()
    params = dict(net.named_parameters())
    assert params["whiten.weight"].shape == (24, 3, 2, 2) and not params["whiten.weight"].requires_grad
    assert params["whiten.bias"].requires_grad
    for b in ("block1", "block2", "block3"):
        for n in ("norm1", "norm2"):
            assert not params[f"{b}.{n}.weight"].requires_grad and params[f"{b}.{n}.bias"].requires_grad
            bn = net[b][n]
            assert bn.eps == 1e-12 and bn.momentum == pytest.approx(0.4)
    assert params["fc.weight"].shape == (10, 256)
    assert net["scale"].factor == pytest.approx(1 / 9)
    # scaling_factor=None (airbench94_muon's head): 1 / the head's input width, the last block's
    assert models.airbench94(widths=(4, 8, 12), scaling_factor=None)["scale"].factor == pytest.approx(1 / 12)
    # conv weights of the published widths, + whitening bias, BN biases, head
    convs = 64 * 24 * 9 + 64 * 64 * 9 + 256 * 64 * 9 + 256 * 256 * 9 + 256 * 256 * 9 + 256 * 256 * 9
    assert net.num_parameters() == convs + 24 + 2 * (64 + 256 + 256) + 2560


def test_dirac_initialization_passes_channels_through():
    net = models.airbench94(widths=(4, 8, 8))
    w = net["block2"]["conv1"].weight.data  # 8 filters over 4 channels: the first 4 are identities
    for i in range(4):
        expect = np.zeros((4, 3, 3), np.float32)
        expect[i, 1, 1] = 1
        np.testing.assert_array_equal(w[i], expect)
    assert np.abs(w[4:]).sum() > 0  # the rest keep their random initialization


def test_whitening_decorrelates_patches():
    rng = np.random.default_rng(0)
    # correlated channels: the patch covariance is far from the identity
    base = rng.standard_normal((40, 1, 32, 32))
    x = np.concatenate([base, base + 0.1 * rng.standard_normal(base.shape), -base], axis=1).astype(np.float32)
    conv = nn.Conv2d(3, 24, 2, bias=False)
    models.init_whitening(conv, x, eps=1e-9)
    y, _ = ops.conv2d_forward(x.astype(np.float64), conv.weight.data.astype(np.float64), None)
    first = y[:, :12].transpose(1, 0, 2, 3).reshape(12, -1)
    cov = first @ first.T / first.shape[1]
    # whitened: unit variance in every direction the data spans (here 2 of 12; the rest ~0/eps)
    top = np.sort(np.diag(cov))[::-1]
    np.testing.assert_allclose(np.diag(cov)[:2], 1.0, rtol=1e-3)
    assert np.abs(cov[:2, :2] - np.eye(2)).max() < 1e-3
    np.testing.assert_array_equal(conv.weight.data[12:], -conv.weight.data[:12])
    assert top[0] == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError, match=r"needs 2 \* 12 = 24"):
        models.init_whitening(nn.Conv2d(3, 12, 2), x)


def test_whitening_a_dilated_conv_whitens_its_dilated_patches():
    """A dilated whitening conv sees pixels D apart: its filters come from those patches (an
    undilated patch's statistics would leave smooth images' outputs far from white); a grouped
    conv, which sees a group's channels only, is refused."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((30, 3, 24, 24))
    x = (x + np.roll(x, 1, 2) + np.roll(x, 1, 3) + 0.5 * x[:, ::-1]).astype(np.float32)  # correlated neighbours
    conv = nn.Conv2d(3, 24, 2, dilation=2, bias=False)
    models.init_whitening(conv, x, eps=1e-9)
    y, _ = ops.conv2d_forward(x.astype(np.float64), conv.weight.data.astype(np.float64), None, dilation=2)
    first = y[:, :12].transpose(1, 0, 2, 3).reshape(12, -1)
    assert np.abs(first @ first.T / first.shape[1] - np.eye(12)).max() < 1e-3
    with pytest.raises(ValueError, match=r"init_whitening: the conv has groups=3, .* groups=1"):
        models.init_whitening(nn.Conv2d(3, 24, 2, groups=3), x)


def test_floor_pooling_odd_sizes(backend):
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 7)).astype(np.float32)
    for xin in (backend.asarray(x), layout.to_channels_last(backend.asarray(x))):
        pool = nn.MaxPool2d(2, floor=True)
        y = pool(xin)
        assert y.shape == (2, 3, 3, 3) and layout.is_channels_last(y) == layout.is_channels_last(xin)
        np.testing.assert_array_equal(backend.asnumpy(y), x[:, :, :6, :6].reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5)))
        dx = backend.asnumpy(pool.backward(backend.asarray(np.ones((2, 3, 3, 3), np.float32))))
        assert dx.shape == x.shape and dx[:, :, 6, :].sum() == 0 and dx[:, :, :, 6].sum() == 0 and dx.sum() == 54
    with pytest.raises(ValueError, match="not an integer"):
        nn.MaxPool2d(2)(backend.asarray(x))  # the default still refuses silent cropping


def test_forward_backward_on_every_backend(backend):
    net = models.airbench94(widths=(4, 8, 8))
    net.to(backend.device)
    x = backend.asarray(_images(3))
    logits = net(x)
    assert logits.shape == (3, 10)
    loss, dlogits = ops.softmax_cross_entropy(logits, backend.asarray(np.array([1, 2, 3])))
    net.backward(dlogits)
    for name, p in net.named_parameters():
        assert (p.grad is None) == (not p.requires_grad), name
    if backend.name != "numpy":
        backend.assert_kernels_ran("gelu_forward", "gelu_backward", "max_pool2d_forward", "conv2d_forward")


@pytest.mark.parametrize("name, h", [("airbench94", 1e-6), ("airbench96", 1e-7)])
def test_directional_derivative_float64(name, h):
    """The whole chain (frozen whitening, the blocks with their fused GELUs, airbench96's residual
    connections, the head) against central differences along a random direction over the
    trainable parameters and the input. h: about 4,000 max-pool windows; along this direction at
    h = 1e-6 one of airbench96's swaps its maximum (2e-5 off), at 1e-7 none does."""
    net = getattr(models, name)(widths=(2, 4, 4) if name == "airbench94" else (4, 8, 8), bn_eps=1e-5, seed=2)
    net.astype(np.float64)
    x = _images(3, seed=1).astype(np.float64)
    analytic, numeric = directional_derivative(net, x, np.array([1, 7, 4]), h=h, seed=3)
    assert relative_error(np.array(analytic), np.array(numeric)) < 1e-6


def test_airbench96_structure():
    """airbench96's network: airbench94's with a third conv and a residual connection per block
    (gelu(x0 + (conv - bn+gelu - conv - bn)(x0))), every conv identity-initialized, batch-norm
    weights and the whitening filters frozen; the published parameter count."""
    count = lambda m: sum(p.size for p in m.parameters())  # noqa: E731
    block = lambda ci, co: ci * co * 9 + 2 * co * co * 9 + 3 * 2 * co  # noqa: E731
    assert count(models.airbench96()) == 24 * 3 * 4 + 24 + block(24, 128) + block(128, 384) + block(384, 512) \
        + 512 * 10 == 9_918_776
    net = models.airbench96(widths=(8, 16, 24))
    b = net["block2"]
    assert list(b._layers) == ["conv1", "pool", "norm1", "res", "gelu"] and isinstance(b["res"], Residual)
    assert list(b["res"].inner._layers) == ["conv2", "norm2", "conv3", "norm3"]
    assert b["norm1"].activation == "gelu" and b["res"].inner["norm3"].activation is None
    assert b["norm1"].momentum == pytest.approx(0.1) and b["norm1"].eps == 1e-12  # PyTorch's default momentum
    for conv in (b["conv1"], b["res"].inner["conv2"], b["res"].inner["conv3"]):
        w = conv.weight.data
        n = conv.in_channels
        assert (w[np.arange(n), np.arange(n), 1, 1] == 1).all() and np.count_nonzero(w[:n]) == n  # dirac
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"whiten.weight"} | {n for n in dict(net.named_parameters()) if n.endswith("norm1.weight")
                                           or n.endswith("norm2.weight") or n.endswith("norm3.weight")}
    assert len(frozen) == 1 + 9 and net["scale"].factor == pytest.approx(1 / 9)
    assert net(_images(2)).shape == (2, 10)
    with pytest.raises(ValueError, match="airbench96: widths must be three positive ints"):
        models.airbench96(widths=(8, 16))
