"""Layers: gradients against central differences in float64, composition, modes, devices, state."""
from __future__ import annotations

import copy
import math
import pathlib
import pickle
import re

import numpy as np
import pytest

import gpuconv
from gpuconv import backend as B
from gpuconv import ops
from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.layers import (GELU, AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, BatchNorm2d, Conv2d, ConvTranspose2d,
                            CrossEntropyLoss, Dropout, Flatten, Layer, LeakyReLU, Linear, LPPool2d, MaxPool2d,
                            Parameter, ReLU, Residual, Scale, Sequential, Sigmoid, SiLU, StateDictKeyError, Tanh)

TOL = 1e-6


# ----------------------------------------------------------------------------- gradient checks
def _away_from_zero(rng, shape, margin=0.05):
    """Values with |v| >= margin: central differences never straddle a ReLU kink."""
    v = rng.uniform(margin, 1.0, size=shape)
    return v * rng.choice([-1.0, 1.0], size=shape)


def _distinct(rng, shape):
    """Values 0.01 apart in random order: no ties or near-ties inside a max-pool window."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) - n / 2) * 0.01


def assert_like_torch(ours, theirs, x, tol):
    """``ours`` and the torch module ``theirs`` give the same output and input gradient for the
    float32 batch ``x`` (a random output gradient); theirs keeps its parameter gradients."""
    import torch
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    dy = np.random.default_rng(13).standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(ours(x), yt.detach().numpy(), rtol=tol, atol=tol / 10)
    np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), rtol=tol, atol=tol / 10)


def check_layer_gradients(layer, x_host, backend, seed=0, make=None, channels_last=False):
    """Analytic dx and parameter gradients of ``layer`` vs central differences, in float64.

    ``make`` (optional) builds a fresh layer for every evaluation (Dropout: the same seed gives
    the same mask). ``channels_last``: x goes in channels_last, the output and dx must keep that
    layout (a 4-D output), and dx is checked by perturbing x's NHWC memory. Frozen parameters
    (requires_grad=False) must get no gradient."""
    layer.astype(np.float64)
    x = backend.asarray(np.ascontiguousarray(x_host, dtype=np.float64))
    if channels_last:
        x = gpuconv.to_channels_last(x)
    fresh = (lambda: make().to(backend.device).astype(np.float64)) if make else (lambda: layer)

    y = layer(x)
    dy = backend.asarray(np.random.default_rng(seed).standard_normal(y.shape))
    if channels_last and y.ndim == 4:
        assert gpuconv.is_channels_last(y), "the output lost the channels_last layout"
        dy = gpuconv.to_channels_last(dy)
    layer.zero_grad()
    dx = layer.backward(dy)
    assert dx.shape == x.shape and dx.dtype == np.float64
    assert B.get_array_module(dx) is backend.xp
    if channels_last:
        assert gpuconv.is_channels_last(dx), "dx lost the channels_last layout"

    # .copy(): a layer may return a view of its input (Flatten), which the perturbation would move
    if channels_last:  # perturb the NHWC memory in place (through the C-contiguous NHWC memory, element by element)
        nhwc = gpuconv.layout.nhwc(x)
        num_dx = numerical_gradient_array(lambda a: fresh().forward(a.transpose(gpuconv.layout.NCHW)).copy(), nhwc,
                                          dy).transpose(gpuconv.layout.NCHW)
    else:
        num_dx = numerical_gradient_array(lambda a: fresh().forward(a).copy(), x, dy)
    err = relative_error(backend.asnumpy(dx), backend.asnumpy(num_dx))
    assert err < TOL, f"dx relative error {err:.2e}"
    for name, p in layer.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"{name} is frozen but got a gradient"
            continue
        assert p.grad is not None and p.grad.shape == p.shape, name
        num = numerical_gradient_array(lambda _: layer.forward(x), p.data, dy)
        err = relative_error(backend.asnumpy(p.grad), backend.asnumpy(num))
        assert err < TOL, f"{name}: relative error {err:.2e}"
    return dx


# Shapes stay tiny: on 'sim' every numerical-gradient evaluation is a kernel launch on the simulator.
@pytest.mark.parametrize("kernel_size,stride,padding,bias", [(3, 1, 0, True), (3, 1, 1, False), (2, 2, 1, True),
                                                             ((2, 3), (2, 1), (0, 1), True)])
def test_conv2d_gradients(backend, kernel_size, stride, padding, bias):
    rng = np.random.default_rng(0)
    layer = Conv2d(2, 3, kernel_size, stride=stride, padding=padding, bias=bias, seed=1)
    assert (layer.bias is not None) == bias
    check_layer_gradients(layer, rng.standard_normal((2, 2, 4, 4)), backend)


def test_conv2d_floor_takes_a_resnets_stride_2_convolutions(backend):
    """ResNet's downsampling pair on an even input, a 3x3 stride-2 pad-1 and a 1x1 stride-2
    shortcut, which the exact rule refuses (naming floor=True): both 8x8 -> 4x4 with floor=True."""
    rng = np.random.default_rng(11)
    x = backend.asarray(rng.standard_normal((2, 4, 8, 8)).astype(np.float32))
    with pytest.raises(ValueError, match="pass floor=True"):
        Conv2d(4, 8, 3, 2, 1)(x)
    main, short = Conv2d(4, 8, 3, 2, 1, floor=True), Conv2d(4, 8, 1, 2, bias=False, floor=True)
    assert main(x).shape == short(x).shape == (2, 8, 4, 4)
    assert repr(short) == "Conv2d(4, 8, kernel_size=(1, 1), stride=(2, 2), padding=(0, 0), bias=False, floor=True)"
    check_layer_gradients(Conv2d(2, 3, 3, 2, 1, floor=True, seed=4), rng.standard_normal((2, 2, 6, 6)), backend)
    check_layer_gradients(Conv2d(2, 3, 1, 2, floor=True, seed=5), rng.standard_normal((2, 2, 6, 5)), backend)
    with pytest.raises(TypeError, match="floor must be True or False"):
        Conv2d(4, 8, 3, floor=1)


def test_conv2d_floor_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(12).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for args in ((3, 8, 3, 2, 1), (3, 8, 1, 2, 0), (3, 8, 7, 2, 3)):  # ResNet's: 3x3, shortcut, stem
        theirs = torch.nn.Conv2d(*args)
        ours = Conv2d(*args, floor=True)
        ours.load_state_dict(theirs.state_dict())
        assert_like_torch(ours, theirs, x, tol=1e-4)
        np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_a_resnet_from_the_layers_matches_torch():
    """A CIFAR ResNet's shape (stem, a downsampling BasicBlock with a projection shortcut, global
    average pooling, a linear head, cross-entropy) built from gpuconv.nn, with a torch twin of
    the same state-dict keys: the loss, the logits' and the input's gradients and every weight
    gradient agree."""
    torch = pytest.importorskip("torch")
    from gpuconv import nn
    tnn = torch.nn

    class TorchResidual(tnn.Module):
        def __init__(self, inner, shortcut):
            super().__init__()
            self.inner, self.shortcut = inner, shortcut

        def forward(self, x):
            return self.inner(x) + self.shortcut(x)

    def build(m, residual):
        return m.Sequential(
            m.Conv2d(3, 8, 3, 1, 1, bias=False, **({} if m is tnn else {"seed": 0})), m.BatchNorm2d(8), m.ReLU(),
            residual(m.Sequential(m.Conv2d(8, 16, 3, 2, 1, bias=False, **({} if m is tnn else {"floor": True})),
                                  m.BatchNorm2d(16), m.ReLU(), m.Conv2d(16, 16, 3, 1, 1, bias=False), m.BatchNorm2d(16)),
                     m.Sequential(m.Conv2d(8, 16, 1, 2, bias=False, **({} if m is tnn else {"floor": True})),
                                  m.BatchNorm2d(16))),
            m.ReLU(), m.AdaptiveAvgPool2d(1), m.Flatten(), m.Linear(16, 10))

    theirs = build(tnn, TorchResidual)
    ours = build(nn, lambda inner, shortcut: nn.Residual(inner, shortcut=shortcut))
    assert ours.load_state_dict(theirs.state_dict()) == ([], [])
    rng = np.random.default_rng(19)
    x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)  # 12 -> 6: no stride-2 size divides
    labels = rng.integers(0, 10, 4)
    xt = torch.tensor(x, requires_grad=True)
    lt = tnn.CrossEntropyLoss(label_smoothing=0.1)(theirs(xt), torch.from_numpy(labels))
    lt.backward()
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    loss = crit(ours(x), labels)
    dx = ours.backward(crit.backward())
    np.testing.assert_allclose(float(loss), lt.item(), rtol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-6)
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, grads[name].grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_linear_gradients_flatten_trailing_axes(backend):
    rng = np.random.default_rng(1)
    layer = Linear(2 * 3 * 2, 4, seed=2)
    dx = check_layer_gradients(layer, rng.standard_normal((3, 2, 3, 2)), backend)
    assert dx.shape == (3, 2, 3, 2)
    check_layer_gradients(Linear(5, 2, bias=False, seed=3), rng.standard_normal((4, 5)), backend)


def test_batchnorm2d_gradients_training_mode(backend):
    rng = np.random.default_rng(2)
    layer = BatchNorm2d(3)
    layer.weight.data = backend.asarray(rng.uniform(0.5, 1.5, 3).astype(np.float32))
    layer.bias.data = backend.asarray(rng.standard_normal(3).astype(np.float32))
    check_layer_gradients(layer, rng.standard_normal((2, 3, 3, 4)) * 2 + 1, backend)


POOLS = [(2, None, (6, 4)), (3, 2, (7, 5)), ((2, 3), (1, 2), (6, 7))]


@pytest.mark.parametrize("kernel_size,stride,hw", POOLS)
def test_max_pool2d_gradients(backend, kernel_size, stride, hw):
    rng = np.random.default_rng(3)
    check_layer_gradients(MaxPool2d(kernel_size, stride), _distinct(rng, (2, 2) + hw), backend)


@pytest.mark.parametrize("kernel_size,stride,hw", POOLS)
def test_avg_pool2d_gradients(backend, kernel_size, stride, hw):
    rng = np.random.default_rng(4)
    check_layer_gradients(AvgPool2d(kernel_size, stride), rng.standard_normal((2, 2) + hw), backend)


def _adaptive_reference(x, out_hw, reduce):
    """PyTorch's adaptive pooling, written from its definition: output (i, j) reduces rows
    floor(i*H/OH) .. ceil((i+1)*H/OH) and the columns likewise."""
    n, c, h, w = x.shape
    oh, ow = (h if out_hw[0] is None else out_hw[0]), (w if out_hw[1] is None else out_hw[1])
    y = np.empty((n, c, oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            rows = slice(i * h // oh, -(-(i + 1) * h // oh))
            cols = slice(j * w // ow, -(-(j + 1) * w // ow))
            y[:, :, i, j] = reduce(x[:, :, rows, cols], axis=(2, 3))
    return y


@pytest.mark.parametrize("output_size,hw", [(1, (4, 6)), ((2, 3), (4, 6)), ((None, 2), (3, 4)), (2, (2, 2)),
                                             (2, (7, 8)), ((None, 3), (7, 8)), (3, (1, 1)), ((4, 5), (6, 3))])
def test_adaptive_pools_follow_pytorchs_window_rule(backend, output_size, hw):
    rng = np.random.default_rng(12)
    x = _distinct(rng, (2, 3) + hw)
    pair = output_size if isinstance(output_size, tuple) else (output_size, output_size)
    for layer, reduce in ((AdaptiveAvgPool2d(output_size), np.mean), (AdaptiveMaxPool2d(output_size), np.max)):
        y = layer(backend.asarray(x.astype(np.float32)))
        np.testing.assert_allclose(backend.asnumpy(y), _adaptive_reference(x, pair, reduce), rtol=1e-6, atol=1e-7)
        check_layer_gradients(layer, x, backend)


def test_adaptive_pools_check_their_arguments_and_keep_channels_last():
    with pytest.raises(ValueError, match="return_indices=True"):
        AdaptiveMaxPool2d(1, return_indices=True)
    with pytest.raises(ValueError, match="output_size"):
        AdaptiveAvgPool2d(0)
    with pytest.raises(ValueError, match="shape \\(2, 8\\)"):
        AdaptiveAvgPool2d(1)(np.zeros((2, 8), np.float32))
    xl = gpuconv.to_channels_last(np.random.default_rng(0).standard_normal((2, 4, 4, 4)).astype(np.float32))
    pool = AdaptiveAvgPool2d(1)
    y = pool(xl)
    assert y.shape == (2, 4, 1, 1) and gpuconv.layout.is_channels_last(pool.backward(np.ones_like(y)))
    assert repr(pool) == "AdaptiveAvgPool2d(output_size=1)"
    pool = AdaptiveMaxPool2d(3)  # unequal windows
    y = pool(xl)
    assert gpuconv.layout.is_channels_last(y) and gpuconv.layout.is_channels_last(pool.backward(np.ones_like(y)))
    assert repr(AdaptiveMaxPool2d((None, 2))) == "AdaptiveMaxPool2d(output_size=(None, 2))"


def test_adaptive_pools_match_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(13).standard_normal((2, 3, 8, 6)).astype(np.float32)
    for size in (1, (4, 3), (None, 2), 3, (5, 4), 7):
        for ours, theirs in ((AdaptiveAvgPool2d(size), torch.nn.AdaptiveAvgPool2d(size)),
                             (AdaptiveMaxPool2d(size), torch.nn.AdaptiveMaxPool2d(size))):
            assert_like_torch(ours, theirs, x, tol=1e-6)


def test_cross_entropy_loss_module(backend):
    """The loss and its logits' gradient are softmax_cross_entropy's; backward(g) scales them, and
    the gradient is the loss's derivative (central differences in float64)."""
    rng = np.random.default_rng(15)
    logits = backend.asarray(rng.standard_normal((5, 4)))
    labels = backend.asarray(np.array([0, 3, 1, 1, 2]))
    crit = CrossEntropyLoss(label_smoothing=0.2)
    loss = crit(logits, labels)
    want, dwant = gpuconv.ops.softmax_cross_entropy(logits, labels, label_smoothing=0.2)
    assert loss.shape == () and float(loss) == float(want)
    dlogits = crit.backward()
    np.testing.assert_array_equal(backend.asnumpy(dlogits), backend.asnumpy(dwant))
    num = numerical_gradient_array(lambda a: CrossEntropyLoss(label_smoothing=0.2)(a, labels).copy(), logits)
    assert relative_error(backend.asnumpy(dlogits), backend.asnumpy(num)) < TOL
    crit(logits, labels)
    np.testing.assert_allclose(backend.asnumpy(crit.backward(0.5)), 0.5 * backend.asnumpy(dwant), rtol=1e-12)
    with pytest.raises(RuntimeError, match="without a cached forward"):
        crit.backward()
    net = Sequential(Flatten(), Linear(12, 4, seed=0)).to(backend.device)
    x = backend.asarray(rng.standard_normal((5, 3, 2, 2)).astype(np.float32))
    loss = crit(net(x), labels)  # the explicit chain: net.backward(criterion.backward())
    net.backward(crit.backward())
    assert net[1].weight.grad.shape == (4, 12) and np.isfinite(float(loss))


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_cross_entropy_loss_reductions(backend, reduction):
    """PyTorch's 'sum' and 'none': the rows' losses added or returned, and the logits' gradient
    the derivative of the sum (of dy . losses for 'none'), by central differences in float64;
    the kernel's per-row losses and sums agree with the reference's."""
    rng = np.random.default_rng(16)
    logits = backend.asarray(rng.standard_normal((6, 5)))
    labels = backend.asarray(np.array([0, 4, 1, 1, 2, 3]))
    crit = CrossEntropyLoss(label_smoothing=0.1, reduction=reduction)
    loss = backend.asnumpy(crit(logits, labels))
    mean, _ = gpuconv.ops.softmax_cross_entropy(logits, labels, label_smoothing=0.1)
    rows = gpuconv.ops.loss._softmax_cross_entropy_reference(backend.asnumpy(logits), backend.asnumpy(labels), 0.1,
                                                            reduction="none")[0]
    assert loss.shape == ((6,) if reduction == "none" else ())
    np.testing.assert_allclose(loss, rows if reduction == "none" else rows.sum(), rtol=1e-12)
    np.testing.assert_allclose(loss.sum(), 6 * float(mean), rtol=1e-12)
    dy = rng.standard_normal(6) if reduction == "none" else 2.0
    dlogits = crit.backward(backend.asarray(dy) if reduction == "none" else dy)
    weights = dy if reduction == "none" else np.full(6, dy)
    num = numerical_gradient_array(
        lambda a: backend.asarray(np.asarray(
            (backend.asnumpy(CrossEntropyLoss(label_smoothing=0.1, reduction="none")(a, labels)) * weights).sum())),
        logits)
    assert relative_error(backend.asnumpy(dlogits), backend.asnumpy(num)) < TOL
    crit(logits, labels)
    if reduction == "none":
        with pytest.raises(ValueError, match=r"dy must hold one value per row, shape \(6,\), got \(3,\)"):
            crit.backward(backend.asarray(np.ones(3)))
    x32 = backend.asarray(rng.standard_normal((6, 5)).astype(np.float32))
    got = backend.asnumpy(CrossEntropyLoss(reduction=reduction)(x32, labels))
    want = gpuconv.ops.loss._softmax_cross_entropy_reference(backend.asnumpy(x32), backend.asnumpy(labels), 0.0,
                                                             reduction=reduction)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_cross_entropy_loss_class_weights_are_a_buffer(monkeypatch):
    """As PyTorch's module registers them: criterion.to(device) moved nothing, so weights given on
    the host met GPU logits, and state_dict() left them out (PyTorch's holds 'weight')."""
    w = np.linspace(0.5, 2.0, 10).astype(np.float32)
    crit = CrossEntropyLoss(weight=w)
    assert [n for n, _ in crit.named_buffers()] == ["weight"] and list(crit.state_dict()) == ["weight"]
    moved = []
    monkeypatch.setattr(gpuconv.layers.module, "to_device",  # (as Layer.to imported it)
                        lambda a, dev: (moved.append((a.shape, str(dev))), a.copy())[1])
    assert crit.to("cuda:1") is crit and moved == [((10,), "cuda:1")] and crit.weight is not w
    crit.load_state_dict({"weight": 2 * w})
    np.testing.assert_array_equal(crit.weight, 2 * w)
    assert CrossEntropyLoss().named_buffers() == [] and CrossEntropyLoss().state_dict() == {}


def test_cross_entropy_loss_refuses_what_it_does_not_compute():
    for kwargs, says in ((dict(reduction="max"), "reduction must be one of"), (dict(size_average=True), "size_average"),
                         (dict(weight=np.ones((2, 2))), "weight must be a 1-D float array"),
                         (dict(weight=np.ones(3, np.int64)), "weight must be a 1-D float array"),
                         (dict(label_smoothing=1.5), r"\[0, 1\]"), (dict(label_smoothing="0.1"), r"\[0, 1\]")):
        with pytest.raises(ValueError, match=says):
            CrossEntropyLoss(**kwargs)
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        CrossEntropyLoss(ignore_index=None)
    crit = CrossEntropyLoss()
    with pytest.raises(ValueError, match="labels"):
        crit(np.zeros((2, 3), np.float32), np.array([0, 3]))
    crit(np.zeros((2, 3), np.float32), np.array([0, 2]))
    with pytest.raises(ValueError, match=r"backward\(dy\)"):
        crit.backward(np.float32(2.0) * np.ones(1))
    torch = pytest.importorskip("torch")
    logits = np.random.default_rng(16).standard_normal((6, 10)).astype(np.float32)
    labels = np.arange(6)
    lt = torch.tensor(logits, requires_grad=True)
    want = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(lt, torch.from_numpy(labels))
    want.backward()
    crit = CrossEntropyLoss(None, None, -100, None, "mean", 0.1)  # torch's positional order
    np.testing.assert_allclose(float(crit(logits, labels)), want.item(), rtol=1e-6)
    np.testing.assert_allclose(crit.backward(), lt.grad.numpy(), rtol=1e-5, atol=1e-8)
    # class weights, and -100 ignored by default, as PyTorch's module does
    weight = np.linspace(0.5, 2.0, 10).astype(np.float32)
    labels[1] = -100
    lt = torch.tensor(logits, requires_grad=True)
    want = torch.nn.CrossEntropyLoss(torch.from_numpy(weight), label_smoothing=0.1)(lt, torch.from_numpy(labels))
    want.backward()
    crit = CrossEntropyLoss(weight, label_smoothing=0.1)
    assert repr(crit) == "CrossEntropyLoss(label_smoothing=0.1, weight=(10,))"
    np.testing.assert_allclose(float(crit(logits, labels)), want.item(), rtol=1e-6)
    np.testing.assert_allclose(crit.backward(), lt.grad.numpy(), rtol=1e-5, atol=1e-8)


def test_relu_flatten_scale_gradients(backend):
    rng = np.random.default_rng(5)
    check_layer_gradients(ReLU(), _away_from_zero(rng, (2, 3, 4, 4)), backend)
    dx = check_layer_gradients(Flatten(), rng.standard_normal((2, 3, 2, 2)), backend)
    assert dx.shape == (2, 3, 2, 2)
    check_layer_gradients(Scale(0.125), rng.standard_normal((3, 5)), backend)


def test_dropout_gradients_with_a_fixed_mask(backend):
    rng = np.random.default_rng(6)
    dx = check_layer_gradients(Dropout(0.3, seed=11), rng.standard_normal((4, 3, 5)), backend,
                               make=lambda: Dropout(0.3, seed=11))
    dx = backend.asnumpy(dx)
    assert 0 < np.mean(dx == 0) < 1  # some dropped, some kept


def test_sequential_gradients(backend):
    rng = np.random.default_rng(7)
    # bias=False before BatchNorm: BN removes a bias exactly, so its true gradient is 0 and the
    # numerical one pure rounding noise, which no relative error can compare
    net = Sequential(Conv2d(2, 2, 3, padding=1, bias=False, seed=1), BatchNorm2d(2), ReLU(), MaxPool2d(2),
                     Flatten(), Linear(2 * 2 * 2, 3, seed=2), ReLU(), Linear(3, 2, seed=3))
    check_layer_gradients(net, rng.standard_normal((2, 2, 4, 4)), backend)


def test_residual_gradients(backend):
    rng = np.random.default_rng(8)
    block = Residual(Sequential(Conv2d(2, 2, 3, padding=1, bias=False, seed=1), BatchNorm2d(2), ReLU(),
                                Conv2d(2, 2, 3, padding=1, seed=2)))
    check_layer_gradients(block, rng.standard_normal((2, 2, 3, 3)), backend)


def test_residual_with_a_projection_shortcut(backend):
    """A ResNet block that downsamples: y = shortcut(x) + inner(x), the shortcut a stride-2 1x1
    convolution; float64 gradients of x and of both branches' parameters; mismatched branches
    refused with both shapes named."""
    rng = np.random.default_rng(18)
    block = Residual(Sequential(Conv2d(2, 3, 3, 2, 1, floor=True, seed=1), ReLU(), Conv2d(3, 3, 3, padding=1, seed=2)),
                     shortcut=Conv2d(2, 3, 1, 2, floor=True, seed=3))
    assert [n for n, _ in block.named_parameters()] == ["inner.0.weight", "inner.0.bias", "inner.2.weight",
                                                        "inner.2.bias", "shortcut.weight", "shortcut.bias"]
    dx = check_layer_gradients(block, rng.standard_normal((2, 2, 4, 4)), backend)
    assert dx.shape == (2, 2, 4, 4)
    bad = Residual(Conv2d(2, 3, 3, padding=1), shortcut=Conv2d(2, 3, 1, 2, floor=True)).to(backend.device)
    with pytest.raises(ValueError, match=r"inner\(x\) has shape \(1, 3, 4, 4\) but shortcut\(x\) \(1, 3, 2, 2\)"):
        bad(backend.asarray(np.zeros((1, 2, 4, 4), np.float32)))
    with pytest.raises(TypeError, match="shortcut must be a gpuconv Layer"):
        Residual(ReLU(), shortcut=lambda x: x)
    with pytest.raises(ValueError, match="give Residual a shortcut"):
        Residual(Conv2d(2, 3, 1)).to(backend.device)(backend.asarray(np.zeros((1, 2, 4, 4), np.float32)))
    assert "Residual (shortcut + inner)" in block.astype(np.float32).summary((2, 4, 4))


# Every option that changes the math, in both layouts: (layer, input shape, input kind). Inputs of
# max pooling are distinct (no ties); those of ReLU away from its kink; LP pooling's positive. 4
# float64 channels are 32 bytes (the channels_last _vec kernels on 'sim'/'cupy'), 3 are not.
OPTION_CASES = {
    "conv-3x3-pad1": (lambda: Conv2d(4, 2, 3, padding=1, seed=1), (2, 4, 4, 4), "normal"),
    "conv-2x3-stride21-nobias": (lambda: Conv2d(3, 2, (2, 3), (2, 1), (0, 1), bias=False, seed=2), (2, 3, 4, 3),
                                 "normal"),
    "conv-3x3-stride2-floor": (lambda: Conv2d(3, 2, 3, 2, 1, floor=True, seed=3), (1, 3, 6, 5), "normal"),
    "maxpool-3-stride2": (lambda: MaxPool2d(3, 2), (2, 4, 5, 5), "distinct"),
    "maxpool-2-floor": (lambda: MaxPool2d(2, floor=True), (2, 4, 5, 7), "distinct"),
    "maxpool-3-stride2-floor": (lambda: MaxPool2d(3, 2, floor=True), (1, 3, 6, 6), "distinct"),
    "maxpool-2x3-stride12": (lambda: MaxPool2d((2, 3), (1, 2)), (1, 3, 4, 5), "distinct"),
    "avgpool-3-stride2": (lambda: AvgPool2d(3, 2), (2, 4, 5, 5), "normal"),
    "avgpool-2-floor": (lambda: AvgPool2d(2, floor=True), (2, 4, 5, 7), "normal"),
    "avgpool-3x2-stride21-floor": (lambda: AvgPool2d((3, 2), (2, 1), floor=True), (1, 4, 6, 4), "normal"),
    "lppool-2-stride1": (lambda: LPPool2d(2, 2, 1), (1, 4, 4, 4), "positive"),
    "lppool-1-signed": (lambda: LPPool2d(1, (2, 3), (2, 1)), (1, 3, 4, 4), "normal"),
    "lppool-3-2x3-floor": (lambda: LPPool2d(3, (2, 3), 2, floor=True), (1, 3, 5, 7), "positive"),
    "adaptive-avg-3": (lambda: AdaptiveAvgPool2d(3), (1, 4, 5, 4), "normal"),
    "adaptive-max-2x3": (lambda: AdaptiveMaxPool2d((2, 3)), (1, 4, 5, 4), "distinct"),
    "batchnorm-train": (lambda: BatchNorm2d(4), (2, 4, 3, 3), "normal"),
    "relu": (lambda: ReLU(), (2, 3, 3, 3), "away"),
    "gelu": (lambda: GELU(), (2, 3, 3, 3), "normal"),
    "leaky-relu-0.2": (lambda: LeakyReLU(0.2), (2, 3, 3, 3), "away"),
    "silu": (lambda: SiLU(), (2, 3, 3, 3), "normal"),
    "sigmoid": (lambda: Sigmoid(), (2, 3, 3, 3), "normal"),
    "tanh": (lambda: Tanh(), (2, 3, 3, 3), "normal"),
    "scale": (lambda: Scale(0.125), (2, 3, 3, 3), "normal"),
    "dropout-train": (lambda: Dropout(0.3, seed=11), (2, 4, 3, 3), "normal"),
    "linear-4d": (lambda: Linear(3 * 2 * 3, 2, seed=4), (2, 3, 2, 3), "normal"),
    "flatten-linear": (lambda: Sequential(Flatten(), Linear(3 * 2 * 3, 2, seed=4)), (2, 3, 2, 3), "normal"),
    "residual-projection": (lambda: Residual(Sequential(Conv2d(2, 4, 3, 2, 1, floor=True, seed=5), GELU()),
                                             shortcut=Conv2d(2, 4, 1, 2, bias=False, floor=True, seed=6)),
                            (2, 2, 4, 3), "normal"),
}


def _option_input(kind, shape, rng):
    if kind == "distinct":
        return _distinct(rng, shape)
    if kind == "away":
        return _away_from_zero(rng, shape)
    if kind == "positive":
        return rng.uniform(0.2, 1.5, shape)
    return rng.standard_normal(shape)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_every_option_gradients_float64(backend, case, channels_last):
    """Each layer option that changes the math (strides, padding, floor=True, asymmetric and
    overlapping windows, bias off, the p of LP pooling) against central differences in float64,
    in NCHW and in channels_last (batch norm's modes and fused activations: test_batchnorm.py;
    layers in eval mode keep no cache for a backward)."""
    make, shape, kind = OPTION_CASES[case]
    with gpuconv.default_device(backend.device):
        layer = make()
    seeded = case.startswith("dropout")  # the same seed: the same mask on every evaluation
    check_layer_gradients(layer, _option_input(kind, shape, np.random.default_rng(31)), backend,
                          make=make if seeded else None, channels_last=channels_last)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("need_dx", [True, False])
def test_frozen_parts_gradients_float64(backend, need_dx, channels_last):
    """A network with frozen parts (a frozen first convolution whose bias trains, as airbench94's
    whitening; a frozen block inside): the trainable parameters' gradients against central
    differences, the frozen ones none, with and without the input gradient."""
    rng = np.random.default_rng(32)
    with gpuconv.default_device(backend.device):
        net = Sequential(Conv2d(2, 3, 2, seed=1), GELU(), Conv2d(3, 3, 3, padding=1, seed=2), BatchNorm2d(3),
                         ReLU(), Conv2d(3, 2, 1, seed=3), Flatten(), Linear(2 * 3 * 3, 2, seed=4))
    net[0].weight.requires_grad = False
    net[2].requires_grad_(False)
    net.astype(np.float64)
    x = backend.asarray(rng.standard_normal((2, 2, 4, 4)))
    if channels_last:
        x = gpuconv.to_channels_last(x)
    y = net(x)
    dy = backend.asarray(rng.standard_normal(y.shape))
    net.zero_grad()
    dx = net.backward(dy, need_dx=need_dx)
    assert (dx is None) == (not need_dx)
    if need_dx:
        assert gpuconv.is_channels_last(dx) == channels_last
        nchw = gpuconv.layout.NCHW
        num = (numerical_gradient_array(lambda a: net.forward(a.transpose(nchw)), gpuconv.layout.nhwc(x), dy)
               .transpose(nchw) if channels_last else numerical_gradient_array(lambda a: net.forward(a), x, dy))
        assert relative_error(backend.asnumpy(dx), backend.asnumpy(num)) < TOL
    for name, p in net.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name
            continue
        num = numerical_gradient_array(lambda _: net.forward(x), p.data, dy)
        err = relative_error(backend.asnumpy(p.grad), backend.asnumpy(num))
        assert err < TOL, f"{name}: relative error {err:.2e}"


def test_gradients_accumulate_until_zero_grad(backend):
    rng = np.random.default_rng(9)
    layer = Linear(4, 3, seed=0)
    x = backend.asarray(rng.standard_normal((2, 4)).astype(np.float32))
    dy = backend.asarray(rng.standard_normal((2, 3)).astype(np.float32))
    layer(x)
    layer.backward(dy)
    once = backend.asnumpy(layer.weight.grad).copy()
    layer(x)
    layer.backward(dy)
    np.testing.assert_allclose(backend.asnumpy(layer.weight.grad), 2 * once, rtol=1e-6)
    layer.zero_grad()
    assert layer.weight.grad is None and layer.bias.grad is None


def test_directional_derivative_draws_one_dropout_mask_and_one_statistics_update():
    """A network with dropout and batch norm in training mode: every forward of the check draws
    the same masks (else the difference quotient compares two networks), and the running
    statistics and the generators end as one training forward leaves them."""
    from gpuconv.gradcheck import directional_derivative

    def make():
        return Sequential(Conv2d(3, 4, 3, padding=1, seed=1), BatchNorm2d(4), ReLU(), Dropout(0.5, seed=2),
                          Flatten(), Linear(64, 3, seed=3)).astype(np.float64)
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 4))
    net, once = make(), make()
    analytic, numeric = directional_derivative(net, x, np.array([0, 2]))
    assert relative_error(np.array(analytic), np.array(numeric)) < 1e-6
    once(x)
    for (name, a), (_, b) in zip(net.named_buffers(), once.named_buffers()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert net[3]._rngs["numpy"].random() == once[3]._rngs["numpy"].random()


def test_directional_derivative_counts_a_parameter_without_gradient_as_zero():
    """A parameter the loss does not use has no .grad after the backward; the check treats it as 0
    (and fails, as it should, where a backward forgot a parameter that the loss does use)."""
    from gpuconv.gradcheck import directional_derivative

    class Head(Layer):
        def __init__(self, forget=False):
            super().__init__()
            self.fc, self.forget = Linear(6, 3, seed=1), forget
            self.unused = Parameter(np.ones(2))

        def forward(self, x):
            return self.fc(x)

        def backward(self, dy, need_dx=True):
            dx = self.fc.backward(dy)
            if self.forget:
                self.fc.weight.grad = None
            return dx
    x = np.random.default_rng(5).standard_normal((4, 6))
    analytic, numeric = directional_derivative(Head().astype(np.float64), x, np.array([0, 1, 2, 1]))
    assert relative_error(np.array(analytic), np.array(numeric)) < 1e-6
    analytic, numeric = directional_derivative(Head(forget=True).astype(np.float64), x, np.array([0, 1, 2, 1]))
    assert relative_error(np.array(analytic), np.array(numeric)) > 1e-3


@pytest.mark.parametrize("x, f, exc, match", [
    (np.array([1, 2, 3]), lambda v: float((v ** 2).sum()), TypeError, "dtype int64.*astype"),
    ([1.0, 2.0], lambda v: float((v ** 2).sum()), TypeError, "numpy or cupy array"),
    (np.array([1.0, 2.0]), lambda v: v ** 2, ValueError, "not a scalar.*numerical_gradient_array"),
])
def test_numerical_gradient_refuses_what_it_cannot_perturb(x, f, exc, match):
    """Integers would move by a rounded-away h (a garbage gradient, silently); a list or an
    array-valued f without df failed deep inside."""
    from gpuconv.gradcheck import numerical_gradient
    with pytest.raises(exc, match=match):
        numerical_gradient(f, x)


def test_numerical_gradient_perturbs_a_strided_array_where_it_lies():
    """A transposed weight that f reads from its model (the assignment's gradient-check pattern) was
    refused, with the advice to pass a contiguous copy, which f never reads: a zero gradient.
    Perturbed in place now, as the assignment's np.nditer does, and restored exactly."""
    from gpuconv.gradcheck import numerical_gradient
    base = np.random.default_rng(3).standard_normal((3, 4))
    params = {"W": base.T}
    before = params["W"].copy()
    grad = numerical_gradient(lambda _: float((params["W"] ** 3).sum()), params["W"])
    assert grad.shape == (4, 3) and relative_error(grad, 3 * before ** 2) < 1e-8
    np.testing.assert_array_equal(params["W"], before)


def test_numerical_gradient_refuses_a_read_only_array():
    x = np.array([1.0, 2.0])
    x.flags.writeable = False
    with pytest.raises(ValueError, match="read-only.*copy"):
        numerical_gradient_array(lambda v: float((v ** 2).sum()), x)


# ----------------------------------------------------------------------------- caches
@pytest.mark.parametrize("make", [lambda: Conv2d(2, 2, 3), lambda: Linear(4, 2), lambda: ReLU(), lambda: Flatten(),
                                  lambda: MaxPool2d(2), lambda: AvgPool2d(2), lambda: BatchNorm2d(2),
                                  lambda: Dropout(0.5, seed=0), lambda: Scale(2.0),
                                  lambda: Sequential(ReLU(), Flatten()), lambda: Residual(ReLU())])
def test_backward_without_forward_is_a_clear_error(make):
    layer = make()
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4) if not isinstance(layer, Linear) else (2, 4))
    x = x.astype(np.float32)
    with pytest.raises(RuntimeError, match="without a cached forward"):
        layer.backward(np.ones((2, 2), np.float32))
    y = layer(x)
    layer.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="without a cached forward"):  # released by the first backward
        layer.backward(np.ones_like(y))
    layer.eval()
    y = layer(x)
    with pytest.raises(RuntimeError, match="eval"):  # eval mode keeps no activations
        layer.backward(np.ones_like(y))


# ----------------------------------------------------------------------------- initialization
@pytest.mark.parametrize("make,fan_in", [(lambda s: Conv2d(3, 16, 5, seed=s), 75), (lambda s: Conv2d(8, 4, (3, 1), seed=s), 24),
                                         (lambda s: Linear(50, 40, seed=s), 50)])
def test_initialization_is_pytorch_kaiming_uniform(backend, make, fan_in):
    layer = make(0)
    a = math.sqrt(5)
    bound = math.sqrt(2 / (1 + a * a)) * math.sqrt(3 / fan_in)  # torch.nn.init.kaiming_uniform_(a=sqrt(5))
    assert bound == pytest.approx(1 / math.sqrt(fan_in))
    w, b = backend.asnumpy(layer.weight.data), backend.asnumpy(layer.bias.data)
    assert w.dtype == np.float32 and b.dtype == np.float32
    assert B.get_array_module(layer.weight.data) is backend.xp
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.abs(b).max() <= 1 / math.sqrt(fan_in)
    assert abs(w.std() - bound / math.sqrt(3)) < 0.15 * bound / math.sqrt(3)  # std of U(-b, b)
    assert abs(w.mean()) < 0.2 * bound
    np.testing.assert_array_equal(backend.asnumpy(make(0).weight.data), w)  # seeded
    assert not np.array_equal(backend.asnumpy(make(1).weight.data), w)


def test_batchnorm_init_and_buffers():
    bn = BatchNorm2d(4)
    np.testing.assert_array_equal(bn.weight.data, np.ones(4, np.float32))
    np.testing.assert_array_equal(bn.bias.data, np.zeros(4, np.float32))
    assert [n for n, _ in bn.named_buffers()] == ["running_mean", "running_var"]
    np.testing.assert_array_equal(bn.running_var, np.ones(4, np.float32))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: Conv2d(0, 3, 3), ValueError, "in_channels must be >= 1"),
    (lambda: Conv2d(3, 3, (3,)), ValueError, "kernel_size"),
    (lambda: Conv2d(3, 3, 3, stride=0), ValueError, "stride must be >= 1"),
    (lambda: Conv2d(3, 3, 3, padding=-1), ValueError, "padding must be >= 0"),
    (lambda: Conv2d(3.0, 3, 3), TypeError, "in_channels must be an int"),
    (lambda: Linear(4, 0), ValueError, "out_features"),
    (lambda: Dropout(1.0), ValueError, "DROP probability"),
    (lambda: BatchNorm2d(3, eps=0), ValueError, "eps"),
    (lambda: BatchNorm2d(3, eps="1e-5"), TypeError, r"BatchNorm2d: eps must be a number, got '1e-5' \(str\)"),
    (lambda: BatchNorm2d(3, momentum="0.1"), TypeError, r"BatchNorm2d: momentum must be a number, got '0\.1'"),
    (lambda: BatchNorm2d(3, momentum=True), TypeError, r"momentum must be a number, got True \(bool\)"),
    (lambda: MaxPool2d(0), ValueError, "kernel_size"),
    (lambda: Scale(float("inf")), ValueError, "finite"),
    (lambda: Sequential(ReLU(), lambda x: x), TypeError, "not a gpuconv Layer"),
    (lambda: Sequential([ReLU(), ReLU()]), TypeError, r"child '0' is a list, .*unpack .*Sequential\(\*layers\)"),
    # a switch read from a config as a string is true whatever it says: it made a bias without a word
    (lambda: Conv2d(3, 3, 3, bias="False"), TypeError, r"bias must be True or False, got 'False'"),
    (lambda: ConvTranspose2d(3, 3, 3, bias="False"), TypeError, r"bias must be True or False, got 'False'"),
    (lambda: Linear(3, 3, bias="False"), TypeError, r"bias must be True or False, got 'False'"),
    (lambda: Residual(np.zeros(3)), TypeError, "must be a gpuconv Layer"),
])
def test_constructor_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_wrong_input_gets_the_ops_error(backend):
    x = backend.asarray(np.zeros((2, 4, 8, 8), np.float32))
    with pytest.raises(ValueError, match="channel mismatch"):
        Conv2d(3, 8, 3)(x)
    with pytest.raises(ValueError, match="feature mismatch"):
        Linear(10, 2)(x)
    with pytest.raises(ValueError, match="needs equal shapes"):
        Residual(Conv2d(4, 8, 3, padding=1))(x)



@pytest.mark.parametrize("make", [lambda: Flatten(), lambda: AdaptiveAvgPool2d(1), lambda: AdaptiveMaxPool2d(1),
                                  lambda: Sequential(Flatten(), Linear(4, 2))])
def test_a_list_is_refused_by_name_by_the_layers_that_reshape(make):
    """Flatten and the adaptive pools read x's shape themselves: a nested list gets the ops' error
    (wrap it with np.asarray), not an AttributeError from inside the layer."""
    with pytest.raises(TypeError, match=r"x must be a numpy or cupy array, got list.*np\.asarray"):
        make()([[[[1.0, 2.0], [3.0, 4.0]]]])

@pytest.mark.parametrize("shape", [(5,), ()])
def test_flatten_refuses_an_input_without_a_batch_axis_as_linear_does(shape):
    """One sample's feature vector (5,) was taken for a batch of five one-feature rows, (5, 1);
    PyTorch's Flatten refuses it, and so does Linear here."""
    with pytest.raises(ValueError, match=r"Flatten: x must have shape \(N, \.\.\.\).*x\.reshape\(1, -1\)"):
        Flatten()(np.ones(shape, np.float32))
    assert Flatten()(np.ones((2, 5), np.float32)).shape == (2, 5)


@pytest.mark.parametrize("dy_shape", [(3, 2), (6,), (2, 3, 1), (1, 3)])
def test_flatten_backward_refuses_a_dy_of_another_shape(backend, dy_shape):
    """dy was reshaped to x's shape whatever its own: a transposed (3, 2) gradient of a (2, 3)
    output (as many values) came back as x's gradient scrambled, another size as NumPy's
    'cannot reshape array of size 3'."""
    layer = Flatten()
    assert layer(backend.asarray(np.ones((2, 3, 1, 1), np.float32))).shape == (2, 3)
    with pytest.raises(ValueError, match=rf"Flatten.backward: dy must have the forward output's shape \(2, 3\) "
                                         rf"\(x \(2, 3, 1, 1\) flattened\), got {re.escape(str(dy_shape))}"):
        layer.backward(backend.asarray(np.ones(dy_shape, np.float32)))


# ----------------------------------------------------------------------------- structure
def test_names_of_parameters_and_buffers():
    net = Sequential(Conv2d(3, 4, 3), ReLU(), BatchNorm2d(4),
                     Residual(Sequential({"conv": Conv2d(4, 4, 3, padding=1, bias=False), "bn": BatchNorm2d(4)})))
    names = [n for n, _ in net.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "3.inner.conv.weight", "3.inner.bn.weight",
                     "3.inner.bn.bias"]
    assert [p.name for p in net.parameters()] == names
    assert [n for n, _ in net.named_buffers()] == ["2.running_mean", "2.running_var", "3.inner.bn.running_mean",
                                                    "3.inner.bn.running_var"]
    assert len(net.modules()) == 8 and net.children()[1] is net[1]
    assert len(net) == 4 and isinstance(net[-1], Residual) and net[3].inner["bn"] is net[3].inner[1]
    assert list(net)[0] is net[0]
    head = net[:2]
    assert len(head) == 2 and head[0] is net[0] and net.parameters()[0].name == "0.weight"
    assert "Conv2d(3, 4, kernel_size=(3, 3)" in repr(net)


def test_structure_walks_are_lists_and_iterators_as_pytorchs_generators():
    net = Sequential(Conv2d(3, 4, 3), BatchNorm2d(4), ReLU(), Flatten(), Linear(4, 2))
    # PyTorch's idioms on its generators
    assert next(net.parameters()) is net[0].weight and next(net.parameters()).device == B.Device("cpu")
    assert next(net.named_parameters()) == ("0.weight", net[0].weight)
    assert next(net.named_parameters(prefix="model"))[0] == "model.0.weight"
    assert next(net.buffers()) is net[1].running_mean and next(net.named_buffers())[0] == "1.running_mean"
    assert next(net.children()) is net[0] and next(net.named_children()) == ("0", net[0])
    assert next(net.modules()) is net and next(net.named_modules()) == ("", net)
    assert next(net[2].parameters(), None) is None  # (a layer without parameters: the default)
    assert sum(p.numel() for p in net.parameters()) == net.num_parameters() == 4 * 27 + 4 + 8 + 4 * 2 + 2
    it = net.parameters()
    assert next(it) is net[0].weight and next(it) is net[0].bias
    assert list(it) == [net[1].weight, net[1].bias, net[4].weight, net[4].bias]  # goes on, as a generator
    assert list(it) == [] and next(it, None) is None
    # gpuconv's lists as before: kept and walked twice, indexed, measured, added
    ps = net.parameters()
    assert len(ps) == 6 and ps[-1] is net[4].bias and list(ps) == list(ps) == ps
    assert net[0].parameters() + net[4].parameters() == [net[0].weight, net[0].bias, net[4].weight, net[4].bias]
    assert len(net.modules()) == 6 and net.children()[1] is net[1] and dict(net.named_buffers())["1.running_var"] \
        is net[1].running_var
    assert type(copy.deepcopy(ps)) is list and type(pickle.loads(pickle.dumps(net.modules()))) is list


def test_shared_layer_parameters_are_listed_once():
    shared = Linear(3, 3)
    net = Sequential(shared, ReLU(), Sequential(shared))
    assert len(net.parameters()) == 2 and len(net.state_dict()) == 2


def test_train_eval_recursive():
    net = Sequential(Conv2d(1, 1, 1), Residual(Sequential(Dropout(0.5), BatchNorm2d(1))))
    assert all(m.training for m in net.modules())
    assert net.eval() is net and not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.eval()
    with pytest.raises(TypeError, match=r"train\(mode\) must be True or False, got 'False'"):  # it trained
        net.train("False")
    assert not any(m.training for m in net.modules())
    assert net.train(np.bool_(True)) is net and all(m.training for m in net.modules())


def test_dropout_train_and_eval(backend):
    x = backend.asarray(np.ones((200, 50), np.float32))
    d = Dropout(0.25, seed=3)
    y = backend.asnumpy(d(x))
    assert 0.2 < np.mean(y == 0) < 0.3
    np.testing.assert_allclose(y[y != 0], 1 / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(backend.asnumpy(Dropout(0.25, seed=3)(x)), y)  # seeded
    assert not np.array_equal(backend.asnumpy(d(x)), y)  # the next call draws a new mask
    d.eval()
    np.testing.assert_array_equal(backend.asnumpy(d(x)), backend.asnumpy(x))


@pytest.mark.parametrize("p", [np.float32(0.25), np.float64(0.25), np.int64(0)], ids=["f32", "f64", "i64"])
def test_dropout_takes_numpy_numbers(backend, p):
    """A NumPy scalar p (read from a config array) is the number it holds, as in PyTorch, and the
    same Python number's masks come out."""
    x = backend.asarray(np.ones((20, 50), np.float32))
    np.testing.assert_array_equal(backend.asnumpy(Dropout(p, seed=3)(x)), backend.asnumpy(Dropout(float(p), seed=3)(x)))


def test_batchnorm_train_updates_running_stats_and_eval_uses_them(backend):
    rng = np.random.default_rng(10)
    xh = (rng.standard_normal((4, 2, 3, 3)) * [[[[2.0]], [[0.5]]]] + [[[[1.0]], [[-3.0]]]]).astype(np.float32)
    x = backend.asarray(xh)
    bn = BatchNorm2d(2, momentum=0.1)
    y = backend.asnumpy(bn(x))
    mean, var_unbiased = xh.mean(axis=(0, 2, 3)), xh.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(backend.asnumpy(bn.running_mean), 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backend.asnumpy(bn.running_var), 0.9 + 0.1 * var_unbiased, rtol=1e-5)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)  # batch statistics in training
    bn.eval()
    rm, rv = backend.asnumpy(bn.running_mean).copy(), backend.asnumpy(bn.running_var).copy()
    y_eval = backend.asnumpy(bn(x))
    expect = (xh - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y_eval, expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(backend.asnumpy(bn.running_mean), rm)  # eval leaves them alone


# ----------------------------------------------------------------------------- devices, dtypes, state
def _small_net(seed=0):
    return Sequential(Conv2d(3, 4, 3, padding=1, seed=seed), BatchNorm2d(4), ReLU(), MaxPool2d(2), Flatten(),
                      Linear(4 * 2 * 2, 3, seed=seed + 1))


def test_to_device_moves_params_grads_buffers(backend):
    with gpuconv.default_device("cpu"):
        net = _small_net()
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    ref = net(x)
    net.backward(np.ones_like(ref))
    state = net.state_dict()
    assert net.to(backend.device) is net
    for _, p in net.named_parameters():
        assert B.get_array_module(p.data) is backend.xp and B.get_array_module(p.grad) is backend.xp
    for _, b in net.named_buffers():
        assert B.get_array_module(b) is backend.xp
    net.eval()
    y = net(backend.asarray(x))
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    net.to("cpu")
    assert all(isinstance(p.data, np.ndarray) for p in net.parameters())
    np.testing.assert_allclose(backend.asnumpy(y), net(x), rtol=1e-5, atol=1e-6)


def test_astype_converts_everything():
    net = _small_net()
    x = np.ones((2, 3, 4, 4), np.float32)
    net.backward(np.ones_like(net(x)))
    net.astype(np.float64)
    assert all(p.data.dtype == np.float64 and p.grad.dtype == np.float64 for p in net.parameters())
    assert all(b.dtype == np.float64 for _, b in net.named_buffers())
    assert net(x.astype(np.float64)).dtype == np.float64
    with pytest.raises(TypeError, match="float32 or float64"):
        net.astype(np.int32)


def test_state_dict_round_trip(backend):
    a, b = _small_net(seed=0), _small_net(seed=5)
    x = backend.asarray(np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32))
    a(x)  # moves the running statistics away from their initial values
    state = a.state_dict()
    assert set(state) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                          "5.weight", "5.bias"}
    assert all(type(v) is np.ndarray for v in state.values())
    state["0.weight"][...] = 0  # a copy: editing it leaves the model alone
    assert np.abs(backend.asnumpy(a[0].weight.data)).max() > 0
    state = a.state_dict()
    result = b.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    a.eval(), b.eval()
    np.testing.assert_array_equal(backend.asnumpy(a(x)), backend.asnumpy(b(x)))
    state["0.weight"][...] = 7  # the loaded arrays are copies as well
    assert backend.asnumpy(b[0].weight.data).max() < 7
    # across devices: a host-side model loads the backend model's dict and vice versa
    with gpuconv.default_device("cpu"):
        c = _small_net(seed=9)
    c.load_state_dict(a.state_dict())
    c.eval()
    np.testing.assert_allclose(c(backend.asnumpy(x)), backend.asnumpy(a(x)), rtol=1e-5, atol=1e-6)
    # a float64 dict into a float32 model is cast to the model's dtype
    b.load_state_dict({k: v.astype(np.float64) for k, v in state.items()})
    assert b[0].weight.data.dtype == np.float32


def test_load_state_dict_keeps_the_models_memory_layout(backend):
    """Loading copies values, not the source's memory order (PyTorch's ``copy_`` keeps the
    destination's): a transposed (in, out) or OHWI source left a Linear/Conv2d weight
    non-contiguous, on the slower paths of the update, lookahead and casts; a channels_last
    weight lost its layout to a C-ordered source."""
    rng = np.random.default_rng(0)
    net = Sequential(Conv2d(3, 4, 3, seed=0), Conv2d(4, 2, 3, seed=1), Flatten(), Linear(2, 5, seed=2))
    net[1].weight.data = gpuconv.to_channels_last(net[1].weight.data)
    state = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in net.state_dict().items()}
    given = dict(state, **{"0.weight": gpuconv.to_channels_last(state["0.weight"]),
                           "3.weight": np.asfortranarray(state["3.weight"])})
    net.load_state_dict({k: backend.asarray(v) for k, v in given.items()})
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    assert net[0].weight.data.flags.c_contiguous and net[3].weight.data.flags.c_contiguous
    assert gpuconv.is_channels_last(net[1].weight.data) and not net[1].weight.data.flags.c_contiguous


def test_load_state_dict_errors_leave_the_model_unchanged():
    net = _small_net()
    before = net.state_dict()
    state = net.state_dict()
    del state["1.running_var"]
    state["extra.weight"] = np.zeros(3)
    with pytest.raises(StateDictKeyError, match=r"missing key\(s\) \['1.running_var'\].*unexpected key\(s\) "
                                                 r"\['extra.weight'\].*strict=False") as info:
        net.load_state_dict(state)
    assert isinstance(info.value, KeyError)
    bad = _small_net(seed=3).state_dict()
    bad["5.weight"] = np.zeros((3, 99), np.float32)
    with pytest.raises(ValueError, match=r"'5.weight' has shape \(3, 99\) in the state dict but \(3, 16\)"):
        net.load_state_dict(bad)
    complex_state = _small_net(seed=3).state_dict()
    complex_state["5.bias"] = complex_state["5.bias"] + 1j  # its imaginary part would be dropped
    with pytest.raises(TypeError, match=r"'5.bias' has dtype complex.*expected a real numeric array"):
        net.load_state_dict(complex_state)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # nothing half-loaded
    other = _small_net(seed=3).state_dict()
    del other["1.running_var"]
    other["extra.weight"] = np.zeros(3)
    result = net.load_state_dict(other, strict=False)
    assert result.missing_keys == ["1.running_var"] and result.unexpected_keys == ["extra.weight"]
    np.testing.assert_array_equal(net.state_dict()["0.weight"], other["0.weight"])
    with pytest.raises(TypeError, match="mapping"):
        net.load_state_dict([1, 2])


def test_load_state_dict_names_a_checkpoint_given_for_a_state_dict():
    """A checkpoint's path, a whole checkpoint's arrays (the model's under 'model/') or a state dict
    whose keys carry a prefix (a DataParallel model's 'module.') are not another architecture: the
    error says what was given and how to take the model's keys out of it."""
    net = _small_net()
    with pytest.raises(TypeError, match=r"got PosixPath \(a checkpoint file's path: gpuconv\.load_model\(path\)\.net"):
        net.load_state_dict(pathlib.Path("run/checkpoint.npz"))
    whole = {f"model/{k}": v for k, v in net.state_dict().items()} | {"meta/step": np.array(3)}
    with pytest.raises(StateDictKeyError, match=r"prefix 'model/' \(the arrays of a whole gpuconv checkpoint: .*\): "
                                                 r"pass \{k\[6:\]: v for k, v in state.items\(\) if k.startswith"):
        net.load_state_dict(whole)
    with pytest.raises(StateDictKeyError, match=r"prefix 'module\.': pass \{k\[7:\]: v for k, v in state.items"):
        net.load_state_dict({f"module.{k}": v for k, v in net.state_dict().items()})
    assert net.load_state_dict({k[6:]: v for k, v in whole.items() if k.startswith("model/")}).missing_keys == []


def test_custom_layer_plugs_in():
    class Double(Layer):
        def forward(self, x):
            self._keep(True)
            return 2 * x

        def backward(self, dy):
            self._take_cache()
            return 2 * dy

    net = Sequential(Double(), Linear(3, 2))
    y = net(np.ones((1, 3), np.float32))
    dx = net.backward(np.ones_like(y))
    np.testing.assert_allclose(dx, 2 * net[1].weight.data.sum(axis=0, keepdims=True), rtol=1e-6)
    assert isinstance(net[1].weight, Parameter) and net[1].weight.name == "1.weight"


def test_a_subclass_registers_the_layers_and_parameters_it_holds():
    """As a PyTorch module: sub-layers and Parameters set as attributes count for parameters(),
    state_dict(), eval() (dropout off) and the printout, in the order they were set."""
    class Net(Layer):
        def __init__(self):
            super().__init__()
            self.temperature = Parameter(np.ones(1, np.float32), "temperature")
            self.conv = Conv2d(3, 4, 3, seed=0)
            self.drop = Dropout(0.5, seed=1)
            self.head = Sequential(Flatten(), Linear(4 * 4 * 4, 2, seed=2))

        def forward(self, x):
            return self.head(self.drop(self.conv(x)))

    net = Net()
    assert [n for n, _ in net.named_parameters()] == ["temperature", "conv.weight", "conv.bias", "head.1.weight",
                                                      "head.1.bias"]
    assert list(net.state_dict()) == [n for n, _ in net.named_parameters()]
    assert net.num_parameters() == 1 + 4 * 3 * 9 + 4 + 64 * 2 + 2
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    net.eval()
    assert not net.drop.training and np.array_equal(net(x), net(x))  # dropout off: the same output twice
    assert "(conv): Conv2d(3, 4" in repr(net) and "(drop): Dropout(p=0.5)" in repr(net)
    copy = Net()
    copy.conv.weight.data += 1
    copy.temperature.data *= 3
    copy.load_state_dict(net.state_dict())
    assert copy.temperature.data[0] == 1
    np.testing.assert_array_equal(copy.eval()(x), net(x))


@pytest.mark.parametrize("layer, op, args, keyword, default, other", [
    (lambda **k: MaxPool2d(2, **k), "max_pool2d_forward", (2,), "dilation", (1, 1), 2),
    (lambda **k: MaxPool2d(2, **k), "max_pool2d_forward", (2,), "ceil_mode", False, True),
    (lambda **k: MaxPool2d(2, **k), "max_pool2d_forward", (2,), "return_indices", False, True),
    (lambda **k: AvgPool2d(2, **k), "avg_pool2d_forward", (2,), "ceil_mode", False, True),
    (lambda **k: AvgPool2d(2, **k), "avg_pool2d_forward", (2,), "divisor_override", None, 3),
    (lambda **k: LPPool2d(2, 2, **k), "lp_pool2d_forward", (2, 2), "ceil_mode", False, True),
    (lambda **k: AdaptiveMaxPool2d(1, **k), "adaptive_max_pool2d_forward", (1,), "return_indices", False, True),
])
def test_the_ops_take_the_pytorch_keywords_their_layers_take(layer, op, args, keyword, default, other):
    """F.conv2d's and F.max_pool2d's keywords at their defaults (dilation=1, groups=1, padding=0,
    ceil_mode=False, ...), which the layers accept, were a bare "unexpected keyword argument" from
    the ops; both take them now, and refuse other values with one message."""
    x = np.ones((1, 1, 4, 4), np.float32)
    want = layer()(x)
    if args == "weight bias":  # (the layer's own parameters)
        args = (layer().weight.data, layer().bias.data)
    np.testing.assert_array_equal(getattr(ops, op)(x, *args, **{keyword: default})[0], want)
    np.testing.assert_array_equal(layer(**{keyword: default})(x), want)
    with pytest.raises(ValueError) as layer_error:
        layer(**{keyword: other})
    with pytest.raises(ValueError) as op_error:
        getattr(ops, op)(x, *args, **{keyword: other})
    assert f"({keyword}={other!r}) is not supported: gpuconv's {op} computes with {keyword}=" in str(op_error.value)
    assert str(op_error.value) == str(layer_error.value).replace(type(layer()).__name__, op)

def test_an_op_called_with_pytorchs_positional_arguments_names_the_keyword():
    """``conv2d_forward(x, w, b, 1, 1, 1)`` (F.conv2d's order: stride, padding, dilation, groups)
    put dilation into gpuconv's precision and groups into floor, and the errors named their values
    ("precision=1: use 'fp32' ... or 'tf32'", "floor must be True or False, got 1"), a fix for an
    argument the caller never meant; ``max_pool2d_forward(x, 3, 2, 1)`` (F.max_pool2d's padding)
    likewise. A number there now says which argument of PyTorch's it stands for and its keyword."""
    x = np.ones((1, 1, 4, 4), np.float32)
    w, b = np.ones((2, 1, 3, 3), np.float32), np.zeros(2, np.float32)
    for call, says in ((lambda: ops.conv2d_forward(x, w, b, 1, 1, 1),
                        r"conv2d_forward\(precision=1\): a number where F.conv2d takes dilation; .* dilation by keyword "
                        r"only \(dilation=1\)"),
                       (lambda: ops.conv2d_forward(x, w, b, 1, 1, None, 1),
                        r"conv2d_forward\(floor=1\): a number where F.conv2d takes groups; .*\(groups=1\)"),
                       (lambda: ops.max_pool2d_forward(x, 3, 2, 1),
                        r"max_pool2d_forward\(floor=1\): a number where F.max_pool2d takes padding; .*\(padding=0\)"),
                       (lambda: ops.avg_pool2d_forward(x, 2, 2, 0),
                        r"avg_pool2d_forward\(floor=0\): a number where F.avg_pool2d takes padding")):
        with pytest.raises(TypeError, match=says):
            call()
    assert ops.conv2d_forward(x, w, b, 1, 1, "fp32", np.True_)[0].shape == (1, 2, 4, 4)  # gpuconv's own values
    assert ops.max_pool2d_forward(x, 2, 2, np.False_)[0].shape == (1, 1, 2, 2)
    with pytest.raises(TypeError, match="floor must be True or False, got 'no'"):  # (not a number: floor's own check)
        ops.max_pool2d_forward(x, 2, 2, "no")


def test_constructor_arguments_are_pytorchs_in_pytorchs_order():
    """A positional argument means what it means in torch.nn; options gpuconv does not compute
    are refused by name (not a bare TypeError, and never taken as another argument)."""
    assert Conv2d(3, 4, 3, 2, 1, 1, 1, False).bias is None  # (..., stride, padding, dilation, groups, bias)
    assert MaxPool2d(2, 2, 0, 1, False, False).stride == 2 and AvgPool2d(2, 2, 0, False, True, None).stride == 2
    assert MaxPool2d(3, 2, 1).padding == 1 and not AvgPool2d(3, 1, 1, False, False).count_include_pad
    bn = BatchNorm2d(4, 1e-3, 0.2, True, True)
    assert (bn.eps, bn.momentum) == (1e-3, 0.2)
    assert Conv2d(16, 16, 3, 1, 2, 2).dilation == (2, 2) and Conv2d(16, 16, 3, 1, 1, 1, 16).groups == 16
    for make, says in ((lambda: Conv2d(3, 4, 3, padding_mode="wrap"), r"one of .*padding_mode='wrap'"),
                       (lambda: MaxPool2d(3, 2, 2), r"padding=2 is more than half of kernel_size=\(3, 3\).*"
                                                    r"PyTorch's rule"),
                       (lambda: MaxPool2d(2, ceil_mode=True), r"ceil_mode=True"),
                       (lambda: AvgPool2d(2, divisor_override=3), r"divisor_override=3"),
                       (lambda: BatchNorm2d(4, 1e-5, 0.1, False), r"BatchNorm2d\(affine=False\)"),
                       (lambda: BatchNorm2d(4, momentum=None), r"momentum=None.*cumulative"),
                       (lambda: GELU("tanh"), r"GELU\(approximate='tanh'\)"),
                       (lambda: Flatten(0), r"Flatten\(start_dim=0\)")):
        with pytest.raises(ValueError, match=says):
            make()
    ReLU(inplace=True), Dropout(0.5, True), GELU("none"), Flatten(1, -1)  # accepted: they change nothing here
    assert LeakyReLU(0.2, True).negative_slope == 0.2 and SiLU(True)  # (negative_slope, inplace), as in PyTorch
    with pytest.raises(TypeError, match=r"Dropout\(inplace=3\).*the seed is a keyword"):  # the old seed position
        Dropout(0.5, 3)
    x = np.arange(2 * 1 * 5 * 5, dtype=np.float32).reshape(2, 1, 5, 5)
    assert AvgPool2d(2, floor=True)(x).shape == (2, 1, 2, 2) and "floor=True" in repr(AvgPool2d(2, floor=True))


def test_pytorchs_factory_arguments_device_and_dtype():
    """``device=`` and ``dtype=``, the last of torch.nn.Conv2d's, Linear's and BatchNorm2d's
    arguments (positional there too), build the layer there and in that dtype; they were an
    unexpected keyword."""
    for layer in (Conv2d(3, 4, 3, 1, 0, 1, 1, True, "zeros", "cpu", np.float64), Linear(3, 4, True, "cpu", np.float64),
                  BatchNorm2d(3, 1e-5, 0.1, True, True, "cpu", np.float64)):
        arrays = [p.data for p in layer.parameters()] + [b for _, b in layer.named_buffers()]
        assert all(type(a) is np.ndarray and a.dtype == np.float64 for a in arrays), layer
    assert Linear(3, 4, dtype=np.float32).weight.dtype == np.float32
    with gpuconv.default_device("sim"):
        assert Conv2d(3, 4, 3, device="sim").weight.dtype == np.float32
    with pytest.raises(TypeError, match="float32 or float64"):
        Linear(3, 4, dtype=np.float16)


class _FakeTensor:
    """What check_array knows a torch.Tensor by (a dtype of its own, detach and cpu), without torch."""
    __module__, dtype, shape, ndim = "torch", "torch.float32", (2,), 1

    def detach(self):
        return self

    def cpu(self):
        return self


_FakeTensor.__name__ = "Tensor"


@pytest.mark.parametrize("data, match", [([1.0, 2.0], "numpy or cupy array, got list.*np.asarray"),
                                         (3.0, "numpy or cupy array, got float"),
                                         (np.float32(3.0), "numpy or cupy array, got float32"),
                                         (np.array([1, 2]), "dtype int64.*astype"),
                                         (_FakeTensor(), r"got torch.Tensor.*data.detach\(\).cpu\(\).numpy\(\)")])
def test_a_parameter_of_a_list_a_number_or_integers_is_refused_by_name(data, match):
    """A PyTorch user's nn.Parameter holds a tensor; here a list or a number failed at the first
    optimizer step (an AttributeError on .shape, also in repr) and integers at SGD's cast."""
    with pytest.raises(TypeError, match=match):
        Parameter(data, "scale")


def test_summary_says_its_input_shape_is_one_inputs_without_the_batch_axis():
    """torchinfo's (1, 3, 32, 32) got the first conv's 5-D complaint alone, and a bare 32 'int
    object is not iterable'; both now say what input_shape is. A list, a 1-D NumPy array and a 1-D
    shape (an MLP's) are fine."""
    net = Sequential(Conv2d(3, 4, 3, padding=1, seed=0), Flatten(), Linear(4 * 8 * 8, 2, seed=1))
    with pytest.raises(ValueError, match=r"got shape \(1, 1, 3, 8, 8\).*one input's shape without the batch axis"):
        net.summary((1, 3, 8, 8))
    with pytest.raises(TypeError, match=r"input_shape must be one input's shape.*got 32"):
        net.summary(32)
    assert net.summary([3, 8, 8]) == net.summary((3, 8, 8)) == net.summary(np.array([3, 8, 8]))
    assert "Linear" in Sequential(Linear(5, 2, seed=0)).summary((5,))
    from gpuconv import models
    from gpuconv.summary import summarize
    with pytest.raises(TypeError, match=r"model must be a gpuconv Layer .*got function: call it first, e\.g\. "
                                        r"summarize\(seed_net\(\), \.\.\.\)"):
        summarize(models.seed_net, (3, 32, 32))  # (the constructor, not the network)


def test_a_subclass_names_its_parameters_and_summarizes_its_own_forward():
    """Parameters inside Layer subclasses get their full dotted names (what errors and optimizers
    show); summary() follows the subclass's own forward, a layer used twice giving two rows; the
    second backward through a reused layer says why it fails."""
    from gpuconv import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.relu, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, x):
            return self.relu(self.conv2(self.relu(self.conv1(x))))

        def backward(self, dy, need_dx=True):
            return self.conv1.backward(self.relu.backward(self.conv2.backward(self.relu.backward(dy))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1 = nn.Sequential(Block(), Block())
            self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(3, 10)

        def forward(self, x):
            return self.fc(self.pool(self.layer1(x)))

    net = Net()
    assert [p.name for p in net.parameters()] == [n for n, _ in net.named_parameters()]
    assert net.layer1[1].conv2.weight.name == "layer1.1.conv2.weight"
    text = net.summary((3, 8, 8))
    lines = [line.split()[:2] for line in text.splitlines()[2:-3]]
    assert lines == [["layer1.0.conv1", "Conv2d"], ["layer1.0.relu", "ReLU"], ["layer1.0.conv2", "Conv2d"],
                     ["layer1.0.relu", "ReLU"], ["layer1.1.conv1", "Conv2d"], ["layer1.1.relu", "ReLU"],
                     ["layer1.1.conv2", "Conv2d"], ["layer1.1.relu", "ReLU"], ["pool", "AdaptiveAvgPool2d"],
                     ["fc", "Linear"]]
    conv_flops = 2 * (8 * 8 * 8 * (2 * 3 * 9 + 1) + 3 * 8 * 8 * (2 * 8 * 9 + 1))
    assert f"{net.num_parameters():,}" in text and f"{conv_flops + 2 * (8 + 3) * 64 + 192 + 70:,}" in text
    assert "forward" not in vars(net.fc)  # the summary's watch is gone
    own = net.fc.forward  # a forward set on an instance (a user's own hook) is put back as it was
    net.fc.forward = lambda x: own(x)
    hook = net.fc.forward
    net.summary((3, 8, 8))
    assert vars(net.fc)["forward"] is hook
    block = Block()
    block(np.ones((1, 3, 4, 4), np.float32))
    with pytest.raises(RuntimeError, match="used twice in one forward pass"):
        block.backward(np.ones((1, 3, 4, 4), np.float32))


def test_clip_grad_norm_and_summary_run_with_the_parameters_gpu_current(fake_second_gpu):
    """CuPy allocates on its current device: clip_grad_norm_'s norms and summary()'s zero image, for
    a model on cuda:1 while cuda:0 was current, were made on GPU 0 (the image then refused by the
    model's first layer as on another GPU). Both run with the parameters' GPU current now, and so
    does clip_grad_value_'s clamp. CuPy is faked (conftest.FakeSecondGpu)."""
    from gpuconv import nn
    from gpuconv.summary import summarize
    gpu, seen = fake_second_gpu, []

    class Net(nn.Module):  # a model on cuda:1 that records the GPU current in its forward
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(gpu.on(np.ones(3, np.float32)), "w")

        def forward(self, x):
            seen.append((type(x).__name__, gpu.current[0]))
            return x

    net = Net()
    net.w.grad = gpu.on(np.full(3, 4.0, np.float32))
    total = nn.clip_grad_norm_(net.parameters(), max_norm=1.0)
    assert {"empty", "sum"} <= {name for name, _ in gpu.calls} and {on for _, on in gpu.calls} == {1}
    np.testing.assert_allclose(np.asarray(total), np.sqrt(48.0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(net.w.grad), 4.0 / (np.sqrt(48.0) + 1e-6), rtol=1e-6)
    del gpu.calls[:]
    nn.utils.clip_grad_value_(net.parameters(), 0.25)
    assert set(gpu.calls) == {("clip", 1)} and gpu.current == [0] and (np.asarray(net.w.grad) == 0.25).all()
    del gpu.calls[:]
    assert [row["shape"] for row in summarize(net, (3,))] == [(3,)]
    assert gpu.calls == [("zeros", 1)] and seen == [("OnGpu", 1)] and gpu.current == [0]

def test_gradients_accumulate_on_the_parameters_gpu(fake_second_gpu):
    """A backward called directly (not through Trainer.fit, which makes the model's GPU current) on a
    model on cuda:1 while cuda:0 is current: its parameters' gradients were converted and added on
    GPU 0 (CuPy works on its current device). They are added with the parameter's GPU current now;
    a first gradient of the parameter's dtype is kept as it is, with no launch. CuPy is faked."""
    import ml_dtypes
    from gpuconv.layers import Parameter
    gpu = fake_second_gpu
    p = Parameter(gpu.on(np.zeros(3, np.float32)), "w")
    p.accumulate(gpu.on(np.ones(3, np.float32)))
    assert gpu.calls == [] and gpu.current == [0]
    p.accumulate(gpu.on(np.full(3, 2.0, np.float32)))
    p.accumulate(gpu.on(np.full(3, 0.5, ml_dtypes.bfloat16)))  # a low-precision step's gradient
    assert gpu.calls == [("add", 1), ("add", 1)] and gpu.current == [0]
    np.testing.assert_array_equal(np.asarray(p.grad), 3.5)
    assert isinstance(p.grad, gpu.OnGpu) and p.grad.dtype == np.float32


def test_zeroed_gradients_and_a_lookahead_without_its_kernel_run_on_the_arrays_gpu(fake_second_gpu, monkeypatch):
    """CuPy fills and computes on its current device: zero_grad(set_to_none=False) of a model on
    cuda:1 while cuda:0 was current filled its gradients from GPU 0, and a Lookahead over float16
    weights (which its fused kernel does not take) made its temporaries and copies there. Both run
    with the arrays' GPU current now. CuPy is faked (conftest.FakeSecondGpu)."""
    from gpuconv import nn
    from gpuconv.lookahead import Lookahead
    gpu = fake_second_gpu
    filled = []
    monkeypatch.setattr(gpu.OnGpu, "__setitem__",
                        lambda self, key, value: filled.append(gpu.current[0]) or np.ndarray.__setitem__(self, key, value),
                        raising=False)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(gpu.on(np.ones(3, np.float16)), "w")

    net = Net()
    net.w.grad = gpu.on(np.full(3, 2.0, np.float16))
    net.zero_grad(set_to_none=False)
    assert filled == [1] and np.asarray(net.w.grad).tolist() == [0.0, 0.0, 0.0] and gpu.current == [0]
    avg = Lookahead(net)
    net.w.data[...] = 3.0
    del gpu.calls[:]
    avg.update(0.5)
    assert {"subtract", "multiply", "add", "copyto"} <= {name for name, _ in gpu.calls}
    assert {on for _, on in gpu.calls} == {1} and gpu.current == [0]
    assert np.asarray(net.w.data).tolist() == [2.0, 2.0, 2.0]


def test_a_residual_sum_and_a_layout_copy_are_made_on_their_arrays_gpu(fake_second_gpu):
    """CuPy makes a sum and a copy on its current device: a ResNet on cuda:1 called while cuda:0 was
    current added its residual branches on GPU 0 (forward and backward), and to_channels_last /
    to_contiguous of an array on cuda:1, or Flatten of a channels_last one, copied it to GPU 0. Each
    runs with its arrays' GPU current now. CuPy is faked (conftest.FakeSecondGpu)."""
    from gpuconv import nn
    gpu = fake_second_gpu

    class Same(nn.Module):  # an inner block that computes nothing itself
        def forward(self, x):
            return x

        def backward(self, dy, need_dx=True):
            return dy

    block, x = nn.Residual(Same()), gpu.on(np.ones((1, 2, 3, 3), np.float32))
    assert float(block(x)[0, 0, 0, 0]) == 2.0 and float(block.backward(x)[0, 0, 0, 0]) == 2.0
    nhwc = gpuconv.to_channels_last(x)
    assert gpuconv.is_channels_last(nhwc) and not gpuconv.is_channels_last(gpuconv.to_contiguous(nhwc))
    assert nn.Flatten()(nhwc).shape == (1, 18)  # (channels_last: a gathering copy)
    # (each layout copy: its array allocated and kernels/layout.cu launched, on the array's GPU)
    assert gpu.calls == [("add", 1), ("add", 1), ("empty", 1), ("layout_transpose", 1), ("empty", 1),
                         ("layout_transpose", 1), ("reshape", 1)]
    assert gpu.current == [0]

@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
def test_clip_grad_norm_scales_the_gradients_jointly(backend, norm_type):
    from gpuconv import nn
    net = nn.Sequential(nn.Linear(4, 3, seed=0), nn.ReLU(), nn.Linear(3, 2, seed=1)).to(backend.device)
    x = backend.asarray(np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32))
    net(x)
    net.backward(backend.asarray(np.ones((5, 2), np.float32)))
    before = [backend.asnumpy(p.grad).astype(np.float64) for p in net.parameters()]
    flat = np.concatenate([g.ravel() for g in before])
    want = np.abs(flat).max() if np.isinf(norm_type) else (np.abs(flat) ** norm_type).sum() ** (1 / norm_type)
    total = nn.clip_grad_norm_(net.parameters(), max_norm=want / 4, norm_type=norm_type)
    assert total.shape == () and B.get_array_module(total) is backend.xp
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
    for g, old in zip(net.parameters(), before):
        np.testing.assert_allclose(backend.asnumpy(g.grad), old * (want / 4) / (want + 1e-6), rtol=1e-5)
    nn.clip_grad_norm_(net.parameters(), max_norm=want)  # already below: unchanged
    np.testing.assert_allclose(backend.asnumpy(net[0].weight.grad), before[0] / 4, rtol=1e-5)
    net.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not backend.asnumpy(p.grad).any() for p in net.parameters())


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
def test_clip_grad_norm_of_half_precision_gradients_sums_in_float32(dtype):
    """A float16 sum of squares overflows past a norm of 256 (every gradient would become 0), a
    bfloat16 one stalls (and would never clip): the norm is summed in float32."""
    import ml_dtypes
    from gpuconv import nn
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    p = Parameter(np.zeros(100_000, dt))
    p.grad = np.full(100_000, 10.0 if dt == np.float16 else 0.01, dt)
    want = np.sqrt(100_000) * (10.0 if dt == np.float16 else float(dt.type(0.01)))
    total = nn.clip_grad_norm_(p, max_norm=1.0)
    assert total.dtype == np.float32 and total.shape == ()
    np.testing.assert_allclose(float(total), want, rtol=1e-3)
    assert p.grad.dtype == dt
    np.testing.assert_allclose(np.sqrt((p.grad.astype(np.float64) ** 2).sum()), 1.0, rtol=1e-2)


def test_clip_grad_norm_arguments_and_torch():
    from gpuconv import nn
    p = Parameter(np.ones(3, np.float32))
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="max_norm must be a finite number > 0"):
            nn.clip_grad_norm_([p], bad)
    with pytest.raises(ValueError, match="norm_type must be >= 1"):
        nn.clip_grad_norm_([p], 1.0, norm_type=0.5)
    assert float(nn.clip_grad_norm_(p, 1.0)) == 0.0  # no gradient: nothing to clip
    p.grad = np.array([3, 4, 0], np.float32)  # PyTorch's foreach= (how it schedules the sums) is taken
    assert float(nn.clip_grad_norm_(p, 1.0, 2.0, False, foreach=True)) == pytest.approx(5.0)
    np.testing.assert_allclose(p.grad, [0.6, 0.8, 0], rtol=1e-5)
    p.grad = np.array([np.inf, 1, 1], np.float32)
    with pytest.raises(RuntimeError, match="NaN or Inf gradient"):
        nn.clip_grad_norm_(p, 1.0, error_if_nonfinite=True)
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(3).standard_normal((2, 6)).astype(np.float32) * 3
    ours = [Parameter(np.zeros(6, np.float32)) for _ in range(2)]
    theirs = [torch.zeros(6, requires_grad=True) for _ in range(2)]
    for o, t, row in zip(ours, theirs, g):
        o.grad, t.grad = row.copy(), torch.from_numpy(row.copy())
    for norm_type in (2.0, float("inf")):
        np.testing.assert_allclose(float(nn.clip_grad_norm_(ours, 0.7, norm_type)),
                                   float(torch.nn.utils.clip_grad_norm_(theirs, 0.7, norm_type)), rtol=1e-6)
        for o, t in zip(ours, theirs):
            np.testing.assert_allclose(o.grad, t.grad.numpy(), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, "bfloat16"])
def test_clip_grad_value_clamps_every_gradient_in_place(backend, dtype):
    """nn.utils.clip_grad_value_: each gradient element clamped to [-c, c] in place on its device,
    in its dtype (the bound rounded once, as PyTorch's clamp of a half-precision gradient), a NaN
    kept, an infinity clamped; None returned and parameters without a gradient skipped, as PyTorch's."""
    import ml_dtypes
    from gpuconv import nn
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    rows = np.array([[3.0, -4.0, 0.05, -0.05], [np.inf, -np.inf, np.nan, 0.3]])
    params = [Parameter(backend.asarray(np.zeros(4, dt))) for _ in range(3)]
    for p, row in zip(params, rows):
        p.grad = backend.asarray(row.astype(dt))
    grads = [p.grad for p in params[:2]]
    assert nn.utils.clip_grad_value_(iter(params), 0.1) is None
    c = float(dt.type(0.1))
    want = [[c, -c, float(dt.type(0.05)), -float(dt.type(0.05))], [c, -c, np.nan, c]]
    for p, g, row in zip(params, grads, want):
        assert p.grad is g and p.grad.dtype == dt and B.get_array_module(p.grad) is backend.xp
        np.testing.assert_array_equal(backend.asnumpy(p.grad).astype(np.float64), row)
    assert params[2].grad is None
    nn.utils.clip_grad_value_(params[0], 0)  # one Parameter, a bound of 0: every element 0
    assert not backend.asnumpy(params[0].grad).astype(np.float64).any()


def test_pytorchs_dotted_namespaces_are_found_as_modules():
    """gpuconv.nn.utils (a module object registered under its dotted name) had no __spec__:
    importlib.util.find_spec, which tools and optional-dependency checks ask, raised "ValueError:
    gpuconv.nn.utils.__spec__ is None". It carries one, as gpuconv.optim.lr_scheduler (a module
    file) and gpuconv.nn.init (gpuconv.init's) do."""
    import importlib.util
    import sys

    import gpuconv.nn.utils
    import gpuconv.optim.lr_scheduler
    from gpuconv.layers import clip_grad_value_
    for name in ("gpuconv.nn.utils", "gpuconv.optim.lr_scheduler"):
        spec = importlib.util.find_spec(name)
        assert spec.name == name and sys.modules[name].__spec__ is spec
    assert importlib.util.find_spec("gpuconv.nn.init").name == "gpuconv.init"
    assert gpuconv.nn.utils.clip_grad_value_ is clip_grad_value_


def test_clip_grad_value_arguments_and_torch():
    from gpuconv import nn
    from gpuconv.nn.utils import clip_grad_value_
    p = Parameter(np.ones(3, np.float32))
    p.grad = np.array([3.0, -4.0, 0.5], np.float32)
    for bad in (-1.0, float("nan"), True, "1", None):
        with pytest.raises(ValueError, match=r"clip_value must be a number >= 0 \(the gradients are clamped to "
                                             r"\[-clip_value, clip_value\]\), got"):
            clip_grad_value_(p, bad)
    with pytest.raises(TypeError, match=r"clip_grad_value_: parameters must be gpuconv Parameters"):
        clip_grad_value_([p.grad], 1.0)
    clip_grad_value_(p, np.float32(np.inf), foreach=True)  # (PyTorch's foreach= is taken)
    np.testing.assert_array_equal(p.grad, [3.0, -4.0, 0.5])
    assert nn.utils.clip_grad_norm_ is nn.clip_grad_norm_ and clip_grad_value_ is nn.clip_grad_value_
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(4).standard_normal((2, 6)).astype(np.float32) * 3
    ours = [Parameter(np.zeros(6, np.float32)) for _ in range(2)]
    theirs = [torch.zeros(6, requires_grad=True) for _ in range(2)]
    for o, t, row in zip(ours, theirs, g):
        o.grad, t.grad = row.copy(), torch.from_numpy(row.copy())
    assert clip_grad_value_(ours, 1.5) is torch.nn.utils.clip_grad_value_(theirs, 1.5) is None
    for o, t in zip(ours, theirs):
        np.testing.assert_array_equal(o.grad, t.grad.numpy())


class _BlocksInOrder(Layer):
    """A model holding a ModuleList as ``blocks`` and running it in order, as PyTorch scripts loop
    over one in their forward."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = blocks

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x

    def backward(self, dy, need_dx=True):
        for block in reversed(list(self.blocks)):
            dy = block.backward(dy)
        return dy


def test_module_list_registers_layers_its_holder_calls(backend):
    """nn.ModuleList: its layers' parameters, state-dict keys and modes belong to the holder, whose
    own forward and backward call them (float64 gradients through them); called itself, it says
    what to do instead."""
    from gpuconv import nn

    blocks = nn.ModuleList([nn.Linear(4, 4, seed=i) for i in range(2)])
    net = _BlocksInOrder(blocks.append(nn.ReLU()).extend([nn.Linear(4, 3, seed=5)]))
    assert len(net.blocks) == 4 and isinstance(net.blocks[1:], nn.ModuleList) and net.blocks[-1].out_features == 3
    assert list(net.state_dict()) == ["blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias",
                                      "blocks.3.weight", "blocks.3.bias"]
    assert net.blocks[1].weight.name == "blocks.1.weight" and not net.eval().blocks[2].training
    net.train()
    check_layer_gradients(net, np.random.default_rng(20).standard_normal((3, 4)), backend)
    with pytest.raises(NotImplementedError, match="call its layers from the forward"):
        net.blocks(np.zeros((1, 4)))
    with pytest.raises(TypeError, match="not a gpuconv Layer"):
        nn.ModuleList([lambda x: x])


def test_module_list_insert_pop_del_and_setitem_as_in_pytorch():
    """PyTorch's ModuleList changes: the layers after the change renumbered (state dict keys and
    parameter names under the holder, as PyTorch keys them); out-of-range positions named."""
    from gpuconv.layers import ModuleList

    class Net(Layer):
        def __init__(self):
            super().__init__()
            self.blocks = ModuleList([Linear(2, 2, seed=i) for i in range(3)])

    net = Net()
    a, b, c = net.blocks
    del net.blocks[0]
    assert list(net.blocks) == [b, c] and list(net.state_dict()) == ["blocks.0.weight", "blocks.0.bias",
                                                                     "blocks.1.weight", "blocks.1.bias"]
    assert c.weight.name == "blocks.1.weight"
    net.blocks.insert(0, a)
    assert list(net.blocks) == [a, b, c] and c.weight.name == "blocks.2.weight" and a.bias.name == "blocks.0.bias"
    net.blocks.insert(-1, ReLU())  # before the last, as list.insert
    assert [type(m).__name__ for m in net.blocks] == ["Linear", "Linear", "ReLU", "Linear"]
    assert net.blocks.pop(2).__class__ is ReLU and net.blocks.pop() is c and list(net.blocks) == [a, b]
    d = Linear(2, 2, seed=9)
    net.blocks[-1] = d
    assert list(net.blocks) == [a, d] and d.weight.name == "blocks.1.weight"
    net.blocks += [c]
    assert len(net.blocks) == 3 and c.weight.name == "blocks.2.weight"
    del net.blocks[:2]
    assert list(net.blocks) == [c] and c.weight.name == "blocks.0.weight"
    assert isinstance(net.blocks + ModuleList([ReLU()]), ModuleList) and len(net.blocks + [ReLU()]) == 2
    with pytest.raises(IndexError, match=r"ModuleList index 1 is out of range: it holds 1 layers \(indices -1 to 0\)"):
        net.blocks.pop(1)
    with pytest.raises(IndexError, match=r"ModuleList.insert: index -2 is out of range"):
        net.blocks.insert(-2, ReLU())
    with pytest.raises(TypeError, match="ModuleList.__setitem__: a str is not a gpuconv Layer"):
        net.blocks[0] = "relu"
    with pytest.raises(TypeError, match="ModuleList indices are int positions or slices, got '0'"):
        net.blocks["0"]


def test_module_dict_holds_named_layers_as_pytorchs(backend):
    """nn.ModuleDict: named layers registered with the holder (state dict keys 'heads.<name>.weight',
    parameter names, modes, float64 gradients through a forward the holder writes), changed as a
    dict is (a replaced name keeps its place), names PyTorch refuses refused, and no forward of its
    own; a torch ModuleDict's state dict loads as it is."""
    from gpuconv import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4, seed=0)
            self.heads = nn.ModuleDict({"cls": nn.Linear(4, 3, seed=1), "act": nn.ReLU()})

        def forward(self, x):
            return self.heads["cls"](self.heads.act(self.body(x)))

        def backward(self, dy, need_dx=True):
            return self.body.backward(self.heads["act"].backward(self.heads["cls"].backward(dy)))

    net = Net()
    heads = net.heads
    assert len(heads) == 2 and "cls" in heads and "fc" not in heads and list(heads) == ["cls", "act"]
    assert list(heads.keys()) == ["cls", "act"] and [type(m).__name__ for m in heads.values()] == ["Linear", "ReLU"]
    assert [(k, v) for k, v in heads.items()] == [("cls", heads["cls"]), ("act", heads.act)]
    assert list(net.state_dict()) == ["body.weight", "body.bias", "heads.cls.weight", "heads.cls.bias"]
    assert heads["cls"].weight.name == "heads.cls.weight" and not net.eval().heads.cls.training
    assert repr(heads) == "ModuleDict(\n  (cls): Linear(4, 3, bias=True)\n  (act): ReLU()\n)"
    net.train()
    check_layer_gradients(net, np.random.default_rng(21).standard_normal((3, 4)), backend)
    old = heads["cls"]
    heads["act"] = nn.GELU()  # replaced in its place
    heads["aux"] = nn.Linear(4, 2, seed=2)
    heads.update([("cls", nn.Linear(4, 5, seed=3)), ("drop", nn.Dropout(0.1))])
    assert list(heads) == ["cls", "act", "aux", "drop"] and heads.cls is not old and heads.cls.out_features == 5
    assert heads["aux"].bias.name == "heads.aux.bias" and isinstance(heads.act, nn.GELU)
    heads.extra = nn.Identity()  # an attribute set to a layer registers it, as in PyTorch
    assert list(heads)[-1] == "extra" and "heads.extra" in dict(net.named_modules())
    del heads.extra
    assert isinstance(heads.pop("drop"), nn.Dropout) and "drop" not in heads
    del heads["act"]
    assert list(net.state_dict()) == ["body.weight", "body.bias", "heads.cls.weight", "heads.cls.bias",
                                      "heads.aux.weight", "heads.aux.bias"]
    other = nn.ModuleDict([("b", nn.ReLU())])
    other.update(nn.ModuleDict({"a": nn.ReLU()}))
    assert list(other) == ["b", "a"] and nn.ModuleDict().__len__() == 0
    other.clear()
    assert len(other) == 0 and other.state_dict() == {}
    with pytest.raises(KeyError, match=r"ModuleDict has no layer named 'fc'; its layers are named 'cls', 'aux'"):
        heads["fc"]
    with pytest.raises(KeyError, match="no layer named 'act'"):
        heads.pop("act")
    with pytest.raises(AttributeError, match="'ModuleDict' object has no attribute 'fc'"):
        heads.fc
    with pytest.raises(TypeError, match="ModuleDict: a layer's name must be a str, got int 1"):
        heads[1] = nn.ReLU()
    for bad in ("a.b", ""):
        with pytest.raises(KeyError, match="a layer's name must be a non-empty str without '.'"):
            heads[bad] = nn.ReLU()
    for taken in ("keys", "training", "forward"):
        with pytest.raises(KeyError, match=f"the name '{taken}' is an attribute of the ModuleDict"):
            nn.ModuleDict({taken: nn.ReLU()})
    with pytest.raises(TypeError, match=r"ModuleDict\['x'\]: a int is not a gpuconv Layer"):
        heads["x"] = 3
    with pytest.raises(TypeError, match="give a mapping of names to layers or an iterable of .name, layer. pairs"):
        heads.update(3)
    with pytest.raises(ValueError, match="element #1 has length 3; a .name, layer. pair has 2"):
        heads.update([("r", nn.ReLU()), ("s", nn.ReLU(), 1)])
    assert "r" not in heads  # nothing changed by a bad update
    with pytest.raises(NotImplementedError, match="ModuleDict has no forward of its own"):
        heads(np.zeros((1, 4)))
    restored = copy.deepcopy(net)
    assert list(restored.heads) == ["cls", "aux"] and restored.heads.cls is not net.heads.cls
    torch = pytest.importorskip("torch")
    theirs = torch.nn.ModuleDict({"cls": torch.nn.Linear(4, 5), "aux": torch.nn.Linear(4, 2)})
    assert list(theirs.state_dict()) == list(heads.state_dict())
    heads.load_state_dict(theirs.state_dict())
    np.testing.assert_array_equal(backend.asnumpy(heads.aux.weight.data), theirs.aux.weight.detach().numpy())


def test_a_container_extended_by_itself_holds_its_layers_twice_as_its_sum():
    """``seq += seq``, ``mlist.extend(mlist)``: the layers it held when the call began, appended once
    more (as ``seq + seq`` and Python's ``l += l``). Before, a ModuleList appended to the list it was
    reading until memory ran out, and a Sequential raised "dictionary changed size during
    iteration" with one layer appended."""
    import signal
    from gpuconv.layers import ModuleList

    def stop(signum, frame):
        raise TimeoutError("the extend did not end")

    before = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, 5.0)
    try:
        a, b = Linear(2, 2, seed=0), ReLU()
        mlist = ModuleList([a, b])
        mlist += mlist
        assert list(mlist) == [a, b, a, b]
        seq = Sequential(a, b)
        seq.extend(seq)
        assert list(seq) == [a, b, a, b] and list(seq._layers) == ["0", "1", "2", "3"]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def test_pytorchs_module_conveniences():
    from gpuconv import nn
    class Net(nn.Module):  # the name PyTorch code subclasses
        def __init__(self):
            super().__init__()
            self.body, self.skip = nn.Linear(4, 4, seed=0), nn.Identity(4, anything="ignored")

    net = Net()
    assert nn.Module is Layer and [n for n, _ in net.named_parameters()] == ["body.weight", "body.bias"]
    x = np.ones((2, 4), np.float32)
    assert net.skip(x) is x and net.skip.backward(x) is x
    assert net.requires_grad_(False) is net and not any(p.requires_grad for p in net.parameters())
    assert net.body.weight.numel() == 16 and net.cpu() is net
    if not gpuconv.cuda_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            net.cuda()


def test_to_takes_a_dtype_as_pytorchs_with_double_and_float():
    """``model.to(dtype)``, ``to(device, dtype)``, their keywords, ``double()`` and ``float()``, as in
    PyTorch; half precision is named the way it trains here (mixed precision)."""
    net = Sequential(Conv2d(3, 4, 3, seed=0), BatchNorm2d(4))
    w = net[0].weight.data
    assert net.to(np.float32) is net and net[0].weight.data is w  # no conversion, no copy
    assert net.to(np.float64) is net and net[0].weight.dtype == np.float64 and net[1].running_var.dtype == np.float64
    np.testing.assert_array_equal(net[0].weight.data, w)
    assert net.to("cpu", np.float32)[0].weight.dtype == np.float32 and net.float() is net
    assert net.to(device="cpu", dtype="float64")[1].weight.dtype == np.float64
    assert net.float().double()[0].bias.dtype == np.float64 and net.to(non_blocking=True) is net
    assert net.to(None)[0].weight.dtype == np.float64 and net.float().to(None, None)[0].weight.dtype == np.float32
    with pytest.raises(TypeError, match=r"layers hold float32 or float64 arrays; .* mixed precision"):
        net.to(np.float16)
    with pytest.raises(TypeError, match=r"Sequential.to\(3\): expected a device \('cpu', 'cuda:N', 'sim'\) or a dtype"):
        net.to(3)
    with pytest.raises(TypeError, match=r"the dtype was given twice"):
        net.to(np.float32, np.float64)
    with pytest.raises(TypeError, match=r"Sequential.half\(\): layers keep float32 parameters .*autocast"):
        net.half()
    assert net[0].weight.dtype == np.float32  # (as it was)


def test_a_dtype_conversion_leaves_integer_and_bool_buffers_as_pytorchs():
    """``to(dtype)``, ``double()``, ``float()`` and ``astype`` convert the floating-point arrays only,
    as PyTorch's ``to(dtype)`` does: a registered index or mask buffer stays int or bool, so the
    forward that indexes with it still runs. Before, they became float64 and indexing raised."""
    class Picker(Layer):
        def __init__(self):
            super().__init__()
            self.fc = Linear(3, 2, seed=0)
            self.register_buffer("idx", np.array([2, 0, 1]))
            self.register_buffer("keep", np.array([True, False, True]))
            self.register_buffer("scale", np.ones(3, np.float32))

        def forward(self, x):
            return self.fc(x[:, self.idx] * self.keep * self.scale)

    net = Picker()
    for convert in (lambda m: m.double(), lambda m: m.to(np.float64), lambda m: m.to("cpu", np.float32),
                    lambda m: m.float(), lambda m: m.astype(np.float64)):
        convert(net)
        assert net.idx.dtype == np.int64 and net.keep.dtype == np.bool_
        assert net.scale.dtype == net.fc.weight.dtype
        assert net(np.ones((2, 3), net.fc.weight.dtype)).shape == (2, 2)


def test_a_registered_bool_buffer_loads_from_its_state_dict():
    """A bool buffer (a mask) that register_buffer took saves and loads back, as in PyTorch; a
    number where the model holds a mask, or a mask where it holds numbers, is still refused.
    Before, load_state_dict refused the model's own state dict: "'mask' has dtype bool"."""
    class Masked(Layer):
        def __init__(self, keep):
            super().__init__()
            self.fc = Linear(3, 2, seed=0)
            self.register_buffer("mask", np.array(keep))

    saved = Masked([True, False, True]).state_dict()
    net = Masked([False, False, False])
    net.load_state_dict(saved)
    assert net.mask.dtype == np.bool_ and net.mask.tolist() == [True, False, True]
    with pytest.raises(TypeError, match=r"'mask' has dtype float64, expected a bool array \(the model holds bool\)"):
        net.load_state_dict({**saved, "mask": np.ones(3)})
    with pytest.raises(TypeError, match=r"'fc.bias' has dtype bool, expected a real numeric array"):
        net.load_state_dict({**saved, "fc.bias": np.ones(2, bool)})
    assert net.mask.tolist() == [True, False, True]


def test_a_buffer_registered_as_none_is_left_out_until_set_as_pytorchs():
    """``register_buffer(name, None)``, PyTorch's idiom for state made later (or a buffer set to None
    again): no array yet, so ``buffers()``, ``state_dict()``, ``to()`` and the gradient check leave it
    out, and ``get_buffer`` reads None; once an array is set it is a buffer as any. Before,
    register_buffer refused None with a garbled fix ("e.g. register_buffer('mask', tensor) =
    np.asarray(...)"), and a buffer set to None put an object array in the state dict and broke to()."""
    from gpuconv.gradcheck import directional_derivative, relative_error
    class Gated(Layer):
        def __init__(self):
            super().__init__()
            self.fc = Linear(3, 2, seed=0)
            self.register_buffer("mask", None)

        def forward(self, x):
            return self.fc(x if self.mask is None else x * self.mask)

        def backward(self, dy, need_dx=True):
            dx = self.fc.backward(dy, need_dx)
            return dx if self.mask is None or dx is None else dx * self.mask

    net = Gated()
    assert net.get_buffer("mask") is None and net.buffers() == [] and list(net.state_dict()) == ["fc.weight", "fc.bias"]
    assert net.double() is net and net.to("cpu").fc.weight.dtype == np.float64
    x = np.random.default_rng(0).standard_normal((2, 3))
    assert relative_error(*directional_derivative(net, x, np.array([0, 1]))) < 1e-6
    net.mask = np.array([1.0, 0.0, 1.0])
    assert [n for n, _ in net.named_buffers()] == ["mask"] and list(net.state_dict())[0] == "mask"
    assert net.float().mask.dtype == np.float32
    net.mask = None
    assert "mask" not in net.state_dict() and net.to(np.float64).fc.bias.dtype == np.float64
    with pytest.raises(TypeError, match=r"register_buffer\('tmp', tensor\): tensor must be a numpy or cupy array, got "
                                        r"list: wrap it first, e.g. tensor = np.asarray\(tensor"):
        net.register_buffer("tmp", [0.0])


def test_get_submodule_parameter_and_buffer_by_dotted_path():
    net = Sequential(Conv2d(3, 4, 3, seed=0), Residual(Sequential({"conv": Conv2d(4, 4, 3, padding=1, bias=False),
                                                                    "bn": BatchNorm2d(4)})))
    assert net.get_submodule("") is net and net.get_submodule("1.inner.bn") is net[1].inner["bn"]
    assert net.get_parameter("1.inner.conv.weight") is net[1].inner["conv"].weight
    assert net.get_parameter("0.bias") is net[0].bias
    assert net.get_buffer("1.inner.bn.running_mean") is net[1].inner["bn"].running_mean
    with pytest.raises(AttributeError, match=r"get_submodule\('1.inner.fc'\): the Sequential at '1.inner' has no "
                                             r"sub-layer 'fc'; its sub-layers are 'conv', 'bn'"):
        net.get_submodule("1.inner.fc")
    with pytest.raises(AttributeError, match=r"get_parameter\('1.inner.conv.bias'\): Conv2d has no parameter 'bias'; "
                                             r"its parameters are 'weight'"):
        net.get_parameter("1.inner.conv.bias")
    with pytest.raises(AttributeError, match=r"get_buffer\('2.running_mean'\): the Sequential here has no "
                                             r"sub-layer '2'"):
        net.get_buffer("2.running_mean")


def test_explicit_registration_as_in_pytorch():
    """``add_module``/``register_module``, ``register_parameter`` and ``register_buffer``: a name made
    at run time registers as an attribute does (a buffer moves, converts and saves with the layer);
    ``Sequential.add_module`` appends under the name."""
    class Net(Layer):
        def __init__(self):
            super().__init__()
            for i in range(2):
                self.add_module(f"conv{i}", Conv2d(2, 2, 1, seed=i))
            self.register_module("act", ReLU())
            self.register_parameter("gain", Parameter(np.ones(2, np.float32)))
            self.register_parameter("offset", None)
            self.register_buffer("seen", np.zeros(2, np.float32))

    net = Net()
    assert [n for n, _ in net.named_children()] == ["conv0", "conv1", "act"] and net.gain.name == "gain"
    assert list(net.state_dict()) == ["gain", "seen", "conv0.weight", "conv0.bias", "conv1.weight", "conv1.bias"]
    assert net.double().seen.dtype == np.float64 and net.get_buffer("seen") is net.seen
    outer = Sequential(net)
    assert outer[0].conv1.weight.name == "0.conv1.weight"
    net.register_buffer("seen", np.ones(2))  # a buffer replaced, as PyTorch's
    assert net.seen[0] == 1 and type(net)._buffer_names == ()
    with pytest.raises(KeyError, match=r"Net already has an attribute 'training'"):
        net.register_buffer("training", np.zeros(1))
    with pytest.raises(KeyError, match=r"Net already has an attribute 'forward'"):
        net.add_module("forward", ReLU())
    with pytest.raises(KeyError, match=r"the name must be a non-empty str without '.', got 'a.b'"):
        net.add_module("a.b", ReLU())
    with pytest.raises(TypeError, match=r"register_parameter\('w', ...\): a ndarray is not a gpuconv Parameter"):
        net.register_parameter("w", np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"persistent=False\): every buffer is saved"):
        net.register_buffer("tmp", np.zeros(1), persistent=False)
    with pytest.raises(TypeError, match=r"register_buffer\('tmp', tensor\): tensor must be a numpy or cupy array"):
        net.register_buffer("tmp", [0.0])
    with pytest.raises(TypeError, match=r"Conv2d.register_buffer: a built-in Conv2d holds no attributes of your own"):
        Conv2d(1, 1, 1).register_buffer("extra", np.zeros(1))
    seq = Sequential()
    seq.add_module("conv", Conv2d(3, 4, 1, seed=0))
    seq.add_module("act", ReLU())
    assert [n for n, _ in seq.named_children()] == ["conv", "act"] and seq["conv"].weight.name == "conv.weight"
    with pytest.raises(KeyError, match=r"Sequential.add_module: a layer is named 'act' already"):
        seq.add_module("act", ReLU())


def test_parameter_shape_queries_as_in_pytorch():
    p = Parameter(np.zeros((4, 3, 2), np.float32))
    assert p.ndim == p.dim() == 3 and p.size() == (4, 3, 2) and p.size(0) == 4 and p.size(-1) == 2
    assert p.size == 24 == p.numel() and p.size + 1 == 25 and sum(q.size for q in (p, p)) == 48  # NumPy's size
    assert type(pickle.loads(pickle.dumps(p.size))) is int
    with pytest.raises(IndexError, match=r"Parameter.size\(dim\): dim must be an int axis in \[-3, 2\] for shape "
                                         r"\(4, 3, 2\), got 3"):
        p.size(3)


def test_parameter_device_queries_as_in_pytorch(backend):
    """``next(model.parameters()).device.type`` and ``.is_cuda``, as PyTorch scripts pick a device."""
    p = next(Sequential(Linear(3, 2, seed=0)).to(backend.device).parameters())
    on_gpu = backend.device.startswith("cuda")
    assert p.is_cuda is on_gpu and p.device.type == ("cuda" if on_gpu else "cpu")  # ('sim' holds NumPy arrays)
    assert p.device.type == p.device.kind


def test_nn_init_fills_parameters_in_place_as_pytorchs(backend):
    """``nn.init``: PyTorch's initializers over ``model.modules()``, each filling the parameter's own
    array on its device and in its dtype and returning the parameter; PyTorch's gains and bounds
    (values of torch 2.14's calculate_gain), reproducible under ``np.random.seed``."""
    from gpuconv import nn
    init = nn.init
    assert init.calculate_gain("relu") == math.sqrt(2) and init.calculate_gain("tanh") == 5 / 3
    assert init.calculate_gain("conv2d") == 1 and init.calculate_gain("selu") == 0.75
    assert init.calculate_gain("leaky_relu") == pytest.approx(1.4141428569978354, rel=1e-15)
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(1.3867504905630728, rel=1e-15)
    net = Sequential(Conv2d(16, 64, 3, seed=0), BatchNorm2d(64), Flatten(), Linear(64, 500, seed=1)).to(backend.device)
    net[3].astype(np.float64)
    arrays = [p.data for p in net.parameters()]
    np.random.seed(3)
    for m in net.modules():
        if isinstance(m, Conv2d):
            assert init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu") is m.weight
            init.zeros_(m.bias)
        elif isinstance(m, BatchNorm2d):
            init.constant_(m.weight, 1)
            init.constant_(m.bias, 0)
        elif isinstance(m, Linear):
            init.xavier_uniform_(m.weight, gain=2)
            init.uniform_(m.bias, -0.5, 0.5)
    assert all(p.data is a for p, a in zip(net.parameters(), arrays))  # in place, on its device
    w = backend.asnumpy(net[0].weight.data)
    assert w.dtype == np.float32 and abs(w.std() / math.sqrt(2 / (64 * 9)) - 1) < 0.05 and abs(w.mean()) < 0.005
    assert not backend.asnumpy(net[0].bias.data).any() and (backend.asnumpy(net[1].weight.data) == 1).all()
    fc = backend.asnumpy(net[3].weight.data)
    bound = 2 * math.sqrt(6 / (64 + 500))
    assert fc.dtype == np.float64 and np.abs(fc).max() <= bound and np.abs(fc).max() > 0.99 * bound
    assert -0.5 <= backend.asnumpy(net[3].bias.data).min() and backend.asnumpy(net[3].bias.data).max() < 0.5
    np.random.seed(3)
    again = init.kaiming_normal_(Parameter(backend.asarray(np.empty((64, 16, 3, 3), np.float32))), mode="fan_out",
                                 nonlinearity="relu")
    np.testing.assert_array_equal(backend.asnumpy(again.data), w)
    k = init.kaiming_uniform_(np.empty((2000, 50), np.float64), a=math.sqrt(5))  # the layers' own default
    assert np.abs(k).max() <= 1 / math.sqrt(50) and np.abs(k).max() > 0.99 / math.sqrt(50)
    n = init.normal_(np.empty(20000), 1.0, 0.5)
    assert abs(n.mean() - 1) < 0.02 and abs(n.std() - 0.5) < 0.02 and init.ones_(n) is n and (n == 1).all()
    with pytest.raises(ValueError, match=r"kaiming_normal_: fan in and fan out need a weight of 2 or more "
                                         r"dimensions .* got shape \(64,\); initialize a bias with uniform_ or constant_"):
        init.kaiming_normal_(net[0].bias)
    with pytest.raises(ValueError, match=r"mode must be 'fan_in' .* or 'fan_out' .*, got 'fan_avg'"):
        init.kaiming_uniform_(net[0].weight, mode="fan_avg")
    with pytest.raises(ValueError, match=r"unsupported nonlinearity 'swish'"):
        init.calculate_gain("swish")
    with pytest.raises(TypeError, match=r"nn.init.zeros_: tensor must be a numpy or cupy array, got list"):
        init.zeros_([1.0, 2.0])


def _truncated_normal_moments(mean, std, a, b):
    """The mean and standard deviation of N(mean, std^2) truncated to [a, b] (closed forms)."""
    alpha, beta = (a - mean) / std, (b - mean) / std
    pdf = [math.exp(-t * t / 2) / math.sqrt(2 * math.pi) for t in (alpha, beta)]
    mass = (math.erf(beta / math.sqrt(2)) - math.erf(alpha / math.sqrt(2))) / 2
    shift = (pdf[0] - pdf[1]) / mass
    var = 1 + (alpha * pdf[0] - beta * pdf[1]) / mass - shift ** 2
    return mean + std * shift, std * math.sqrt(var)


@pytest.mark.parametrize("mean, std, a, b", [(0.0, 1.0, -2.0, 2.0), (0.5, 2.0, 1.0, 1.5), (0.0, 1.0, 1.0, 3.0),
                                             (0.0, 0.02, -2.0, 2.0)])
def test_nn_init_trunc_normal_draws_pytorchs_truncated_normal(backend, mean, std, a, b):
    """nn.init.trunc_normal_: every value in [a, b] (absolute units: std=0.02 in the default [-2, 2] is
    a plain normal in effect), with the truncated normal's mean and std, through both of PyTorch's
    samplers (a window holding more than 30% of the mass: normal draws redrawn; less: uniform draws
    kept by the density), in place on the parameter's device and dtype, reproducible under
    np.random.seed; torch's draws have the same moments."""
    from gpuconv.nn.init import trunc_normal_
    p = Parameter(backend.asarray(np.empty((400, 500), np.float32)))
    array = p.data
    np.random.seed(5)
    assert trunc_normal_(p, mean, std, a, b) is p and p.data is array
    got = backend.asnumpy(p.data).astype(np.float64)
    assert backend.asnumpy(p.data).dtype == np.float32
    want_mean, want_std = _truncated_normal_moments(mean, std, a, b)
    assert a <= got.min() and got.max() <= b
    assert abs(got.mean() - want_mean) < 5 * want_std / math.sqrt(got.size)
    assert abs(got.std() / want_std - 1) < 0.01
    np.random.seed(5)
    np.testing.assert_array_equal(trunc_normal_(np.empty((400, 500), np.float32), mean, std, a, b), got)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    theirs = torch.nn.init.trunc_normal_(torch.empty(400, 500, dtype=torch.float64), mean, std, a, b).numpy()
    assert a <= theirs.min() and theirs.max() <= b
    assert abs(theirs.mean() - want_mean) < 5 * want_std / math.sqrt(theirs.size)
    assert abs(theirs.std() / want_std - 1) < 0.01


def test_nn_init_trunc_normal_arguments():
    from gpuconv import nn
    w = np.empty(10)
    for kwargs, match in [({"std": 0.0}, "std must be > 0, got 0.0"), ({"a": 1.0, "b": 1.0}, "must have a < b"),
                          ({"a": 2.0, "b": -2.0}, r"a < b \(absolute values"), ({"b": float("nan")}, "b must be a "
                                                                                    "number .*, got nan")]:
        with pytest.raises((ValueError, TypeError), match=match):
            nn.init.trunc_normal_(w, **kwargs)
    with pytest.warns(UserWarning, match="mean is more than 2 std from"):
        nn.init.trunc_normal_(w, mean=5.0, std=1.0, a=0.0, b=1.0)
    assert (0 <= w).all() and (w <= 1).all()


def test_nn_init_trunc_normal_takes_an_open_side_as_pytorchs(backend):
    """An infinite bound leaves that side open, as in PyTorch: trunc_normal_(w, a=0, b=inf) draws a
    half-normal and a=-inf, b=inf a plain normal (both through the sampler that redraws normal
    values); they were refused as 'a must be a finite number'. Where the window holds too little
    of the mass for that sampler, its uniform draws need finite bounds: a clear error (PyTorch's
    says 'to is out of bounds for float'). A NaN bound is refused as before."""
    from gpuconv.nn.init import trunc_normal_
    p = Parameter(backend.asarray(np.empty((200, 500), np.float32)))
    np.random.seed(1)
    assert trunc_normal_(p, 0.0, 2.0, 0.0, math.inf) is p
    got = backend.asnumpy(p.data).astype(np.float64)
    assert got.min() >= 0 and np.isfinite(got).all()
    half_mean, half_std = 2.0 * math.sqrt(2 / math.pi), 2.0 * math.sqrt(1 - 2 / math.pi)
    assert abs(got.mean() - half_mean) < 5 * half_std / math.sqrt(got.size)
    assert abs(got.std() / half_std - 1) < 0.01
    got = trunc_normal_(np.empty(100000), 1.0, 3.0, -math.inf, math.inf)
    assert abs(got.mean() - 1.0) < 5 * 3.0 / math.sqrt(got.size) and abs(got.std() / 3.0 - 1) < 0.01
    with pytest.raises(ValueError, match=r"holds 2\.3% of the normal's mass.*give a finite bound in place of b=inf"):
        trunc_normal_(np.empty(10), 0.0, 1.0, 2.0, math.inf)
    with pytest.raises(TypeError, match="a must be a number .*, got nan"):
        trunc_normal_(np.empty(10), a=math.nan)
    with pytest.raises(TypeError, match="mean must be a finite number, got inf"):
        trunc_normal_(np.empty(10), mean=math.inf)


@pytest.mark.parametrize("shape", [(10, 4), (4, 3, 2, 2), (6, 6)])
def test_nn_init_orthogonal_is_pytorchs_qr_with_the_sign_correction(backend, shape, monkeypatch):
    """nn.init.orthogonal_: the trailing dimensions flattened, Q of the normal matrix's QR (of its
    transpose where it is wide) with each column's sign making R's diagonal positive, times gain;
    in place on the parameter's device and dtype. Given torch's own normal draws it gives torch's
    matrix."""
    from gpuconv import nn
    rows, cols = shape[0], int(np.prod(shape[1:]))
    p = Parameter(backend.asarray(np.empty(shape, np.float32)))
    array = p.data
    np.random.seed(6)
    assert nn.init.orthogonal_(p, gain=2.0) is p and p.data is array
    w = backend.asnumpy(p.data).astype(np.float64).reshape(rows, cols) / 2
    assert backend.asnumpy(p.data).dtype == np.float32
    np.random.seed(6)
    drawn = np.random.normal(0.0, 1.0, size=(rows, cols))
    q, m = (w.T, drawn.T) if rows < cols else (w, drawn)
    np.testing.assert_allclose(q.T @ q, np.eye(q.shape[1]), atol=1e-6)  # orthonormal columns
    r = q.T @ m  # R of m = QR: upper triangular with a positive diagonal
    np.testing.assert_allclose(np.tril(r, -1), 0, atol=1e-5)
    assert (np.diag(r) > 0).all()
    with pytest.raises(ValueError, match=r"orthogonal_: needs a weight of 2 or more dimensions .* got shape \(3,\)"):
        nn.init.orthogonal_(np.empty(3, np.float32))
    assert nn.init.orthogonal_(np.empty((0, 3))).shape == (0, 3)  # empty: left as it is, as PyTorch's
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    theirs = torch.nn.init.orthogonal_(torch.empty(shape), gain=0.5).numpy()
    torch.manual_seed(1)
    normal = torch.empty(rows, cols).normal_(0, 1).numpy().astype(np.float64)  # the draws orthogonal_ made
    monkeypatch.setattr(np.random, "normal", lambda loc, scale, size: normal if size == (rows, cols) else None)
    np.testing.assert_allclose(backend.asnumpy(nn.init.orthogonal_(p, gain=0.5).data), theirs, atol=2e-6)


def test_np_random_seed_makes_unseeded_layers_reproducible():
    """seed=None draws the layer's seed from NumPy's global generator (torch.manual_seed's role)."""
    def build():
        return Sequential(Conv2d(3, 4, 3), Dropout(0.5), Linear(4, 2))
    np.random.seed(7)
    a = build()
    np.random.seed(7)
    b, c = build(), build()
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert np.array_equal(p.data, q.data) and not np.array_equal(p.data, r.data), name
    assert a[1]._rng().integers(1 << 62) == b[1]._rng().integers(1 << 62)  # the dropout masks' keys too


def test_a_pytorch_state_dict_loads_as_it_is():
    """torch's batch norm also saves num_batches_tracked, which gpuconv's does not keep; an
    equivalent torch model's state dict loads with strict=True and computes the same."""
    torch = pytest.importorskip("torch")
    theirs = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, 1, 1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                 torch.nn.MaxPool2d(2, 2), torch.nn.Flatten(), torch.nn.Linear(64, 3))
    theirs(torch.randn(8, 3, 8, 8))  # running statistics of its own
    ours = Sequential(Conv2d(3, 4, 3, 1, 1), BatchNorm2d(4), ReLU(), MaxPool2d(2, 2), Flatten(), Linear(64, 3))
    assert ours.load_state_dict(theirs.state_dict()) == ([], [])
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = theirs.eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(ours.eval()(x), want, rtol=1e-5, atol=1e-6)
    assert ours.load_state_dict(dict(theirs.named_parameters()), strict=False).missing_keys == [
        "1.running_mean", "1.running_var"]  # parameters that require grad load too
    half = {k: v.bfloat16() for k, v in theirs.state_dict().items()}  # no NumPy bfloat16: widened exactly
    ours.load_state_dict(half)
    np.testing.assert_array_equal(ours[0].weight.data, half["0.weight"].float().numpy())
    extra = dict(theirs.state_dict(), **{"5.num_batches_tracked": torch.tensor(3)})  # not a batch norm's
    with pytest.raises(StateDictKeyError, match="5.num_batches_tracked"):
        ours.load_state_dict(extra)



def test_a_bfloat16_state_dict_loads():
    """A state dict in ml_dtypes' bfloat16 (gpuconv.bfloat16, the type of the bf16 ops) was refused
    as "not a real numeric array", while torch's bfloat16 tensors loaded: it is widened exactly."""
    import ml_dtypes
    net = Sequential(Conv2d(3, 4, 3, 1, 1), BatchNorm2d(4), Flatten(), Linear(4 * 8 * 8, 3))
    half = {k: v.astype(ml_dtypes.bfloat16) for k, v in net.state_dict().items()}
    assert net.load_state_dict(half) == ([], [])
    for k, v in net.state_dict().items():
        assert v.dtype == np.float32 and np.array_equal(v, half[k].astype(np.float32)), k


# ----------------------------------------------------------------------------- errors inside a network
def test_errors_inside_a_network_name_the_layer_path():
    net = Sequential({"stem": Sequential({"conv": Conv2d(3, 4, 3, padding=1)}), "flat": Flatten(),
                      "fc": Linear(4 * 8 * 8, 10)})
    with pytest.raises(ValueError, match=r"in layer 'stem.conv' \(Conv2d\(3, 4, kernel_size=\(3, 3\).*x has C=1"):
        net(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"in layer 'fc' \(Linear\(256, 10, bias=True\)\): feature mismatch.*"
                                         r"input images are not the size the network was built for"):
        net(np.zeros((2, 3, 6, 6), np.float32))
    with pytest.raises(TypeError, match=r"in layer 'stem.conv' .*parameters are float32: pass x.astype\(np.float32\)"):
        net(np.zeros((2, 3, 8, 8), np.float64))
    res = Sequential(Residual(Sequential(Conv2d(2, 2, 3, padding=1))))
    with pytest.raises(ValueError, match=r"in layer '0.inner.0' \(Conv2d\(2, 2"):
        res(np.zeros((1, 3, 4, 4), np.float32))
    # A second call raises a fresh error, not one with the path added twice.
    with pytest.raises(ValueError) as info:
        res(np.zeros((1, 3, 4, 4), np.float32))
    assert str(info.value).count("in layer") == 1


def test_a_half_precision_batch_in_a_float32_network_gets_a_fix_that_works():
    """The hint for a bfloat16 batch used to offer model.astype(x.dtype), which layers refuse (they
    hold float32 or float64): it names mixed precision, and what it names runs."""
    net = Sequential(Conv2d(3, 4, 3, padding=1), Flatten(), Linear(4 * 8 * 8, 2))
    x = np.ones((2, 3, 8, 8), gpuconv.bfloat16)
    with pytest.raises(TypeError, match=r"in layer '0' .*parameters are float32: pass x.astype\(np.float32\); "
                                        r"for a float64 x, convert the model with model.astype\(np.float64\); for "
                                        r"bfloat16 or float16, run it in mixed precision.*gpuconv.amp.autocast") as info:
        net(x)
    assert "astype(x.dtype))" not in str(info.value)
    with gpuconv.amp.autocast(net, "bf16") as dt:
        assert net(x.astype(dt)).dtype == gpuconv.bfloat16


def test_device_mixing_inside_a_network_says_how_to_move(monkeypatch):
    # No GPU here: let a marked NumPy subclass pass for a CuPy array at the backend boundary.
    class FakeCupy(np.ndarray):
        pass

    monkeypatch.setattr(B, "is_cupy_array", lambda a: isinstance(a, FakeCupy))
    monkeypatch.setattr(B, "cupy_module", lambda: np)
    net = Sequential(Conv2d(3, 4, 3))
    x = np.zeros((1, 3, 5, 5), np.float32).view(FakeCupy)
    with pytest.raises(TypeError, match=r"in layer '0' .*cupy\.ndarray.*parameters are on cpu: move the model "
                                        r"with model.to\(device\)"):
        net(x)


def test_num_parameters_and_pytorch_like_repr():
    net = Sequential(Conv2d(3, 4, 3), BatchNorm2d(4), MaxPool2d(2), Flatten(), Linear(4, 2, bias=False))
    assert net.num_parameters() == (4 * 3 * 9 + 4) + (4 + 4) + 4 * 2
    assert net.num_parameters(trainable_only=False) == net.num_parameters() + 8
    assert repr(net[2]) == "MaxPool2d(kernel_size=2, stride=2)"
    assert repr(MaxPool2d(3, stride=2)) == "MaxPool2d(kernel_size=3, stride=2)"
    assert [type(m).__name__ for m in net] == ["Conv2d", "BatchNorm2d", "MaxPool2d", "Flatten", "Linear"]
    # Average pooling shares the arguments, not the type: code dispatching on isinstance(m, MaxPool2d)
    # (a PyTorch mirror, a FLOP counter) must not take it for max pooling.
    assert repr(AvgPool2d(2)) == "AvgPool2d(kernel_size=2, stride=2)"
    assert repr(MaxPool2d(3, 1, padding=1)) == "MaxPool2d(kernel_size=3, stride=1, padding=1)"
    assert repr(AvgPool2d(3, 1, (1, 0), count_include_pad=False, floor=True)) == \
        "AvgPool2d(kernel_size=3, stride=1, padding=(1, 0), floor=True, count_include_pad=False)"
    assert not isinstance(AvgPool2d(2), MaxPool2d) and not isinstance(MaxPool2d(2), AvgPool2d)


def test_repr_of_a_layer_with_children_keeps_its_extra_repr():
    class Block(Sequential):  # a user's container with settings of its own, as in PyTorch
        def extra_repr(self):
            return "width=4"
    assert repr(Block(ReLU(), Sequential(Flatten()))) == (
        "Block(\n  width=4\n  (0): ReLU()\n  (1): Sequential(\n    (0): Flatten()\n  )\n)")
    assert repr(Sequential(ReLU())) == "Sequential(\n  (0): ReLU()\n)"


def test_conv_padding_same_and_valid_as_in_pytorch():
    x = np.zeros((1, 2, 9, 7), np.float32)
    assert Conv2d(2, 3, (5, 3), padding="same").padding == (2, 1)
    assert Conv2d(2, 3, (5, 3), padding="same")(x).shape == (1, 3, 9, 7)
    assert Conv2d(2, 3, 3, padding="valid")(x).shape == (1, 3, 7, 5)
    with pytest.raises(ValueError, match="padding='same' needs stride 1 .*give the padding as a number, e.g. "
                                         "padding=1 \\(\\(k - 1\\) // 2"):
        Conv2d(2, 3, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding='same' needs stride 1 .*kernel_size=\\(4, 4\\), stride=\\(2, 1\\)"):
        Conv2d(2, 3, 4, stride=(2, 1), padding="same")
    with pytest.raises(ValueError, match="use an int, an \\(h, w\\) pair, 'valid' or 'same'"):
        Conv2d(2, 3, 3, padding="full")


@pytest.mark.parametrize("kernel_size", [2, 4, (3, 2)])
def test_conv_padding_same_with_an_even_kernel_as_in_pytorch(backend, kernel_size, tmp_path):
    """Conv2d(..., kernel_size=2, 4 or (3, 2), padding='same'): PyTorch's output and gradients, the
    extra zero row/column after the image (F.conv2d(F.pad(x, (l, r, t, b)), w), checked here by
    np.pad and the layer's own padding-0 convolution); ``layer.padding`` is 'same', as PyTorch keeps
    it, in the repr too; the state dict, a checkpoint and a copy round-trip. Before: "padding='same'
    needs stride 1 and odd kernel sizes"."""
    import copy
    import pickle
    from gpuconv.checkpoint import FORMAT, load_checkpoint, save_checkpoint, section
    layer = Conv2d(3, 4, kernel_size, padding="same", seed=3, dtype=np.float64)
    kh, kw = layer.kernel_size
    assert layer.padding == "same"
    assert repr(layer) == f"Conv2d(3, 4, kernel_size={layer.kernel_size}, stride=(1, 1), padding='same', bias=True)"
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 6, 5))
    y = layer(backend.asarray(x))
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(backend.asarray(dy))
    plain = Conv2d(3, 4, kernel_size, padding=0, dtype=np.float64)  # the reference: x padded by hand
    plain.load_state_dict(layer.state_dict())
    xpad = np.pad(x, ((0, 0), (0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)))  # F.pad's (l, r, t, b)
    want_y = plain(backend.asarray(xpad))
    top, left = (kh - 1) // 2, (kw - 1) // 2
    want_dx = B.asnumpy(plain.backward(backend.asarray(dy)))[:, :, top:top + 6, left:left + 5]
    assert y.shape == (2, 4, 6, 5) and dx.shape == x.shape
    pairs = (y, want_y), (dx, want_dx), (layer.weight.grad, plain.weight.grad), (layer.bias.grad, plain.bias.grad)
    for got, want in pairs:
        np.testing.assert_allclose(B.asnumpy(got), B.asnumpy(want), rtol=1e-12, atol=1e-12)
    layer.eval()
    y_eval = B.asnumpy(layer(backend.asarray(x)))
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert other.padding == "same" and repr(other) == repr(layer)
        np.testing.assert_array_equal(B.asnumpy(other(backend.asarray(x))), y_eval)
    fresh = Conv2d(3, 4, kernel_size, padding="same", seed=4, dtype=np.float64)
    save_checkpoint(tmp_path / "c.npz", {"meta/format": np.array(FORMAT),
                                         **{f"model/{k}": B.asnumpy(v) for k, v in layer.state_dict().items()}})
    fresh.load_state_dict(section(load_checkpoint(tmp_path / "c.npz"), "model"))
    np.testing.assert_array_equal(B.asnumpy(fresh.eval()(backend.asarray(x))), y_eval)
    flops = 4 * 6 * 5 * (2 * 3 * kh * kw + 1)  # the output's size is the input's
    assert re.search(rf"Conv2d +4x6x5 +{4 * 3 * kh * kw + 4} +{flops:,}\n", Sequential(layer).summary((3, 6, 5)))


def test_conv_padding_same_with_an_even_kernel_gradients_float64():
    layer = Conv2d(2, 3, (2, 4), padding="same", seed=5, dtype=np.float64)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 2, 4, 5))
    dy = rng.standard_normal((2, 3, 4, 5))
    layer(x)
    dx = layer.backward(dy)
    assert relative_error(dx, numerical_gradient_array(layer, x, dy)) < 1e-6
    for p in (layer.weight, layer.bias):
        assert relative_error(p.grad, numerical_gradient_array(lambda _: layer(x), p.data, dy)) < 1e-6


def test_backward_without_input_gradient_keeps_parameter_gradients(backend):
    """model.backward(dy, need_dx=False), as the trainer calls it: the first conv skips dx (None
    comes back, through Sequential and Residual) and every parameter gradient is unchanged."""
    def net():
        return Sequential(Conv2d(3, 4, 3, padding=1, seed=0), ReLU(),
                          Residual(Sequential(Conv2d(4, 4, 3, padding=1, seed=1), ReLU())),
                          Flatten(), Linear(4 * 5 * 5, 3, seed=2))
    x = backend.asarray(np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32))
    grads = []
    for need_dx in (True, False):
        with gpuconv.default_device(backend.device):
            model = net()
        y = model(x)
        dx = model.backward(backend.xp.ones_like(y), need_dx=need_dx)
        assert (dx is None) == (not need_dx)
        grads.append({n: backend.asnumpy(p.grad) for n, p in model.named_parameters()})
    for name in grads[0]:
        np.testing.assert_allclose(grads[1][name], grads[0][name], rtol=1e-6, atol=1e-7, err_msg=name)
    inner = Residual(Sequential(Conv2d(4, 4, 3, padding=1, seed=1)))
    inner(backend.asarray(np.ones((1, 4, 3, 3), np.float32)))
    assert inner.backward(backend.asarray(np.ones((1, 4, 3, 3), np.float32)), need_dx=False) is None


def test_backward_releases_the_caches_of_frozen_layers_it_does_not_run():
    """With need_dx=False the frozen layers in front of the first trainable one are not run
    backward (airbench94's whitening conv and its GELU once the bias is frozen); their forward
    caches, a batch of activations each, are released all the same: after the backward no layer
    holds a cache."""
    frozen = Conv2d(3, 4, 2, seed=0)
    frozen.requires_grad_(False)
    net = Sequential(frozen, GELU(), Sequential(Conv2d(4, 4, 3, padding=1, seed=1), ReLU()),
                     Residual(Sequential(Conv2d(4, 4, 3, padding=1, seed=2))), Flatten(), Linear(4 * 4 * 4, 3, seed=3))
    y = net(np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32))
    assert net.backward(np.ones_like(y), need_dx=False) is None
    assert [name for name, m in net.named_modules() if m._cache is not None] == []
    assert net[2][0].weight.grad is not None and frozen.weight.grad is None


def _frozen_prefix_net(probe=None):
    frozen = Conv2d(3, 4, 2, seed=0)
    frozen.requires_grad_(False)
    tail = [probe] if probe is not None else []
    return Sequential(frozen, GELU(), Sequential(Conv2d(4, 4, 3, padding=1, seed=1), ReLU()),
                      Residual(Sequential(Conv2d(4, 4, 3, padding=1, seed=2))), Flatten(),
                      Linear(4 * 4 * 4, 3, seed=3), *tail)


def test_a_forward_on_data_keeps_no_caches_for_the_frozen_layers_in_front():
    """Under input_is_data (a training step's forward) the frozen layers in front of the first
    trainable one keep no caches from the forward on (their backward never runs: the whitening
    conv's and its GELU's batch of activations each, held to the backward, were airbench94's
    largest caches); the gradients are those of a forward that kept them."""
    from gpuconv.layers import input_is_data
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    grads = []
    for data in (False, True):
        net = _frozen_prefix_net()
        if data:
            with input_is_data(net):
                y = net(x)
        else:
            y = net(x)
        cached = [name for name, m in net.named_modules() if m._cache is not None]
        assert ("0" in cached, "1" in cached) == (not data, not data)
        assert {"2.0", "2.1", "3", "3.inner.0", "5"} <= set(cached)
        assert net.backward(np.ones_like(y), need_dx=False) is None
        grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 6
    for name in grads[0]:
        np.testing.assert_array_equal(grads[1][name], grads[0][name], err_msg=name)


def test_a_training_step_keeps_no_caches_for_the_frozen_layers_in_front():
    """amp.training_step runs its forward on data: at the loss, the frozen prefix holds no cache. A
    layer of one's own whose backward does not pass need_dx on keeps its Sequential's caches (its
    backward runs them all)."""
    from gpuconv import amp, optim
    seen = []

    class Probe(Layer):
        def forward(self, x):
            seen.append([name for name, m in net.named_modules() if m._cache is not None])
            return x

        def backward(self, dy, need_dx=True):
            return dy

    class Own(Layer):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

        def backward(self, dy):
            return self.inner.backward(dy)

    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    y = np.array([0, 2])
    net = _frozen_prefix_net(Probe())
    amp.training_step(net, optim.SGD(net.parameters(), lr=0.1), x, y)
    assert "0" not in seen[-1] and "1" not in seen[-1] and "2.0" in seen[-1]
    inner = _frozen_prefix_net()
    net = Sequential(Own(inner), Probe())
    amp.training_step(net, optim.SGD(net.parameters(), lr=0.1), x, y)
    assert "0.inner.0" in seen[-1] and "0.inner.1" in seen[-1]
    assert inner[2][0].weight.grad is not None


def test_an_empty_batch_gives_empty_results_on_every_backend(backend):
    """N = 0 flows through every op forward and backward with empty outputs and zero parameter
    gradients, the same on every device; batch norm too, in training as PyTorch: its running
    statistics unchanged (the variance of no values is undefined; one value per channel, whose
    variance is 0, is refused as PyTorch refuses it)."""
    from gpuconv import models
    net = models.seed_net(input_dim=(3, 8, 8))
    x = backend.asarray(np.zeros((0, 3, 8, 8), np.float32))
    y = net(x)
    assert tuple(y.shape) == (0, 10)
    dx = net.backward(backend.asarray(np.zeros((0, 10), np.float32)))
    assert tuple(dx.shape) == (0, 3, 8, 8)
    assert all(float(np.abs(backend.asnumpy(p.grad)).sum()) == 0 for p in net.parameters())
    bn = BatchNorm2d(3)
    bn.running_mean[...] = 0.5
    y = bn(x)
    dx = bn.backward(backend.asarray(np.zeros((0, 3, 8, 8), np.float32)))
    assert tuple(y.shape) == tuple(dx.shape) == (0, 3, 8, 8)
    assert backend.asnumpy(bn.running_mean).tolist() == [0.5] * 3
    assert backend.asnumpy(bn.running_var).tolist() == [1] * 3
    assert not backend.asnumpy(bn.weight.grad).any() and not backend.asnumpy(bn.bias.grad).any()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm2d(3)(backend.asarray(np.zeros((1, 3, 1, 1), np.float32)))


def test_named_generators_names_each_random_layer_once_under_its_checkpoint_key():
    from gpuconv.layers import Dropout, Linear, ReLU, Residual, Sequential
    drop = Dropout(0.3, seed=1)
    net = Sequential({"fc": Linear(4, 4, seed=0), "block": Residual(Sequential(ReLU(), drop)), "again": drop})
    names = [n for n, _ in net.named_generators("model")]
    assert names == ["model.block.inner.1._rngs.numpy"]  # a shared layer once, under its first name
    assert net.named_generators("model")[0][1] is drop._rngs["numpy"]
    assert Linear(2, 2).named_generators() == []


def test_apply_buffers_and_own_parameters_as_in_pytorch():
    """``model.apply(init)``, ``buffers()`` and ``parameters(recurse=False)`` /
    ``named_parameters(prefix=...)`` were missing (AttributeError, TypeError): a PyTorch script's
    weight initialization and its look at one layer's own parameters stopped there."""
    net = Sequential(Conv2d(3, 4, 3, seed=0), BatchNorm2d(4), Sequential(ReLU(), Flatten()))
    seen = []
    assert net.apply(seen.append) is net
    assert [type(m).__name__ for m in seen] == ["Conv2d", "BatchNorm2d", "ReLU", "Flatten", "Sequential", "Sequential"]
    assert seen[-1] is net and seen[-2] is net[2]  # children first, as PyTorch's

    def init(m):
        if isinstance(m, Conv2d):
            m.weight.data[...] = 0.5
    net.apply(init)
    assert float(net[0].weight.data.min()) == 0.5
    assert [b is a for b, (_, a) in zip(net.buffers(), net.named_buffers())] == [True, True]
    assert [n for n, _ in net.named_buffers(prefix="model")] == ["model.1.running_mean", "model.1.running_var"]
    assert net.parameters(recurse=False) == [] and net.buffers(recurse=False) == []
    assert [n for n, _ in net[0].named_parameters(recurse=False)] == ["weight", "bias"]
    assert [n for n, _ in net.named_parameters(prefix="m")][:2] == ["m.0.weight", "m.0.bias"]


def test_apply_visits_a_layer_held_twice_by_one_container_once():
    """A layer held twice by one container (a block reused, Sequential(block, block), or one layer
    set under two names) is one child to PyTorch's ``apply``, so an initialization that scales
    weights scales them once; gpuconv's applied ``fn`` to it once per name (weights scaled twice).
    Held by two containers it is visited under each, as in PyTorch."""
    block = Linear(2, 2, seed=0)
    seen = []
    Sequential(block, block).apply(seen.append)
    assert [type(m).__name__ for m in seen] == ["Linear", "Sequential"]

    class Tied(Layer):
        def __init__(self):
            super().__init__()
            self.encode = block
            self.decode = block
    seen = []
    Tied().apply(seen.append)
    assert [type(m).__name__ for m in seen] == ["Linear", "Tied"]
    w = block.weight.data.copy()

    def halve(m):
        if isinstance(m, Linear):
            m.weight.data *= 0.5
    from gpuconv.layers import ModuleList
    ModuleList([block, block]).apply(halve)
    np.testing.assert_array_equal(block.weight.data, w * 0.5)
    seen = []
    Sequential(Sequential(block), Sequential(block)).apply(seen.append)  # two containers: under each
    assert [type(m).__name__ for m in seen] == ["Linear", "Sequential", "Linear", "Sequential", "Sequential"]


def test_sequential_append_and_extend_as_in_pytorch():
    """``Sequential.append`` / ``extend`` (PyTorch's) were missing. The new layers take the next
    positions as names (state dict keys, parameter names), run in forward and backward, and an
    optimizer built before takes them through ``add_param_group``; a name taken (a slice keeps its
    layers' names) and a model held by a captured step are refused."""
    from gpuconv import ops
    from gpuconv.graphs import StepGraph
    from gpuconv.optim import SGD
    net = Sequential(Conv2d(3, 2, 1, seed=0), Flatten())
    opt = SGD(net.parameters(), lr=0.1)
    head = Linear(8, 3, seed=1)
    assert net.append(head) is net and len(net) == 3 and net[2] is head and net[-1] is head
    net.extend([ReLU()])
    assert [type(m).__name__ for m in net] == ["Conv2d", "Flatten", "Linear", "ReLU"]
    assert list(net.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"] and head.weight.name == "2.weight"
    opt.add_param_group({"params": head.parameters()})
    before = head.weight.data.copy()
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    loss, dlogits = ops.softmax_cross_entropy(net(x), np.array([0, 1]))
    net.backward(dlogits)
    opt.step()
    assert not np.array_equal(head.weight.data, before)
    with pytest.raises(TypeError, match="Sequential.append: a int is not a gpuconv Layer"):
        net.append(3)
    with pytest.raises(ValueError, match=r"the new layer's name '2' \(its position\) is taken by another layer"):
        net[1:3].append(ReLU())  # (names '1', '2')
    step = StepGraph.for_optimizer(lambda x, y: gpuconv.amp.training_step(net, opt, x, y), opt, net)
    step(x, np.array([0, 1]))
    with pytest.raises(RuntimeError, match="Sequential.append: the layers cannot change while a captured training"):
        net.append(ReLU())
    with pytest.raises(RuntimeError, match="Sequential: a layer cannot be replaced while a captured training"):
        net[3] = ReLU()
    assert len(net) == 4
    step.release()
    net.append(ReLU())
    assert len(net) == 5


def test_sequential_insert_pop_and_del_renumber_as_in_pytorch():
    """PyTorch's ``insert``, ``pop`` and ``del seq[i]`` (and ``+``, ``+=``): the layers after the
    change are renumbered, state dict keys and parameter names alike (PyTorch's keys, checked
    against torch 2.14); a Sequential built from a mapping keeps its names; a layer with no name
    to take, an index out of range and ``seq * n`` (one layer at n places) are refused."""
    def net():
        return Sequential(Conv2d(3, 4, 3, seed=0), BatchNorm2d(4), ReLU(), Flatten(), Linear(4, 10, seed=1))

    seq = net()
    conv, bn, fc = seq[0], seq[1], seq[4]
    del seq[1]
    assert list(seq) == [conv, seq[1], seq[2], fc] and [n for n, _ in seq.named_children()] == ["0", "1", "2", "3"]
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias"] and fc.weight.name == "3.weight"
    assert seq.insert(1, bn) is seq and list(seq.state_dict()) == list(net().state_dict()) and bn.weight.name == \
        "1.weight"
    assert seq.pop(1) is bn and seq.pop() is fc and len(seq) == 3 and seq.append(fc)[3] is fc
    seq.insert(-1, GELU())  # before the last, as list.insert
    assert [type(m).__name__ for m in seq] == ["Conv2d", "ReLU", "Flatten", "GELU", "Linear"]
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "4.weight", "4.bias"] and fc.bias.name == "4.bias"
    seq.insert(len(seq), ReLU()).insert(-len(seq), Scale(2.0))
    assert type(seq[0]).__name__ == "Scale" and type(seq[-1]).__name__ == "ReLU" and seq[1] is conv
    del seq[0:2]
    assert len(seq) == 5 and list(seq.state_dict()) == ["3.weight", "3.bias"] and fc.weight.name == "3.weight"
    del seq[-1]
    del seq["0"]
    assert [type(m).__name__ for m in seq] == ["Flatten", "GELU", "Linear"] and fc.weight.name == "2.weight"
    sliced = net()[1:3]  # a Sequential, the layers keeping their keys, as PyTorch's
    assert isinstance(sliced, Sequential) and [n for n, _ in sliced.named_children()] == ["1", "2"]
    both = net() + net()
    assert isinstance(both, Sequential) and len(both) == 10 and list(both.state_dict())[-1] == "9.bias"
    grown = net()
    grown += [ReLU(), Linear(10, 2, seed=2)]
    assert len(grown) == 7 and list(grown.state_dict())[-1] == "6.bias"
    named = Sequential({"conv": Conv2d(3, 4, 3, seed=0), "act": ReLU(), "flat": Flatten()})
    assert type(named.pop("act")).__name__ == "ReLU" and list(named.named_children())[1][0] == "flat"
    del named[0]
    assert [n for n, _ in named.named_children()] == ["flat"]
    with pytest.raises(ValueError, match=r"Sequential.insert: the layers are named \('flat'\), not numbered by "
                                         r"position, so the new layer has no name; build a new Sequential"):
        named.insert(0, ReLU())
    with pytest.raises(IndexError, match=r"Sequential.insert: index 6 is out of range: it holds 5 layers, so a new "
                                         r"one goes at -5 to 5"):
        net().insert(6, ReLU())
    with pytest.raises(TypeError, match="Sequential.insert: a int is not a gpuconv Layer"):
        net().insert(0, 3)
    with pytest.raises(TypeError, match=r"index must be an int position, got '1'"):
        net().insert("1", ReLU())
    with pytest.raises(IndexError, match=r"Sequential index 5 is out of range: it holds 5 layers"):
        net().pop(5)
    with pytest.raises(IndexError, match=r"Sequential index -4 is out of range"):
        del seq[-4]
    with pytest.raises(KeyError, match=r"no layer named 'fc'"):
        del seq["fc"]
    with pytest.raises(TypeError, match=r"a layer keeps the cache of its last call only .* build the copies"):
        net() * 2


def test_sequential_and_module_list_changes_while_a_graph_holds_the_model_are_refused():
    from gpuconv import ops
    from gpuconv.graphs import StepGraph
    from gpuconv.layers import ModuleDict, ModuleList
    from gpuconv.optim import SGD

    class Net(Layer):
        def __init__(self):
            super().__init__()
            self.seq = Sequential(Conv2d(3, 2, 1, seed=0), Flatten())
            self.heads = ModuleList([Linear(8, 3, seed=1)])
            self.named = ModuleDict({"act": ReLU()})

        def forward(self, x):
            return self.heads[0](self.seq(x))

        def backward(self, dy, need_dx=True):
            return self.seq.backward(self.heads[0].backward(dy), need_dx)

    net = Net()
    opt = SGD(net.parameters(), lr=0.1)
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    step = StepGraph.for_optimizer(lambda x, y: gpuconv.amp.training_step(net, opt, x, y), opt, net)
    step(x, np.array([0, 1]))
    held = r"the layers cannot change while a captured training step"
    for change, what in [(lambda: net.seq.insert(0, ReLU()), "Sequential.insert"),
                         (lambda: net.seq.pop(), "Sequential.pop"),
                         (lambda: net.seq.__delitem__(0), re.escape("del Sequential[0]")),
                         (lambda: net.heads.append(ReLU()), "ModuleList.append"),
                         (lambda: net.heads.insert(0, ReLU()), "ModuleList.insert"),
                         (lambda: net.heads.pop(), "ModuleList.__delitem__"),
                         (lambda: net.heads.__setitem__(0, Linear(8, 3)), "ModuleList.__setitem__"),
                         (lambda: net.named.__setitem__("fc", Linear(8, 3)), "ModuleDict.__setitem__"),
                         (lambda: net.named.update({"act": GELU()}), "ModuleDict.update"),
                         (lambda: net.named.pop("act"), "ModuleDict.__delitem__"),
                         (lambda: net.named.clear(), "ModuleDict.clear")]:
        with pytest.raises(RuntimeError, match=f"{what}: {held}"):
            change()
    assert len(net.seq) == 2 and len(net.heads) == 1 and list(net.named) == ["act"]
    step.release()
    assert net.seq.pop() is not None and net.heads.insert(0, ReLU()) is None and len(net.heads) == 2
    net.named["fc"] = Linear(8, 3)
    assert list(net.named) == ["act", "fc"]
    del ops


def test_a_sequential_index_out_of_range_is_named():
    """``net[10]`` said only "list index out of range" (``net['9']``: KeyError '9'); both now name
    the index and what the Sequential holds."""
    net = Sequential(ReLU(), Flatten())
    with pytest.raises(IndexError, match=r"Sequential index 2 is out of range: it holds 2 layers \(indices -2 to 1\)"):
        net[2]
    with pytest.raises(IndexError, match=r"index -3 is out of range: it holds 2 layers"):
        net[-3]
    with pytest.raises(KeyError, match=r"no layer named 'fc'; its layers are named '0', '1'"):
        net["fc"]
    with pytest.raises(IndexError, match=r"it holds no layers"):
        Sequential()[0]
    assert net[-1] is net[1] and net["0"] is net[0]


def test_a_subclass_without_backward_says_how_to_write_one():
    """A PyTorch user's Module subclass defines forward only (autograd does the rest there): its
    backward said "Net does not define backward(dy)"; it now says why and what to write."""
    class Net(Layer):
        def __init__(self):
            super().__init__()
            self.fc = Linear(4, 2, seed=0)

        def forward(self, x):
            return self.fc(x)

    net = Net()
    net(np.ones((1, 4), np.float32))
    with pytest.raises(NotImplementedError, match=r"Net does not define backward\(dy\): gpuconv has no autograd.*"
                                                  r"reverse order.*Sequential"):
        net.backward(np.ones((1, 2), np.float32))


def test_a_parameters_requires_grad_and_device_as_a_pytorch_tensors():
    """``p.requires_grad_(False)`` (a PyTorch script freezing a backbone parameter by parameter) and
    ``p.device`` raised AttributeError; both now work as on a tensor."""
    net = Sequential(Linear(3, 2, seed=0))
    for p in net.parameters():
        assert p.requires_grad_(False) is p
    assert [p.requires_grad for p in net.parameters()] == [False, False]
    net[0].weight.requires_grad_()
    assert net[0].weight.requires_grad and str(net[0].weight.device) == "cpu"


def test_requires_grad_takes_true_or_false_only():
    """``requires_grad`` is an on/off switch, as PyTorch's: ``'False'`` (a word from a config file)
    trained the parameter by its truth, through ``p.requires_grad_``, ``p.requires_grad = ...``,
    ``Parameter(requires_grad=...)`` and a layer's ``requires_grad_``. Each is a TypeError now,
    leaving the parameters as they were."""
    net = Sequential(Linear(3, 2, seed=0))
    w = net[0].weight
    w.requires_grad_(False)
    freeze = [lambda: w.requires_grad_("False"), lambda: setattr(w, "requires_grad", 1),
              lambda: net.requires_grad_("no"), lambda: Parameter(np.zeros(2, np.float32), requires_grad="False")]
    for call in freeze:
        with pytest.raises(TypeError, match=r"requires_grad must be True or False, got .*False freezes"):
            call()
    assert [p.requires_grad for p in net.parameters()] == [False, True]
    assert w.requires_grad_(np.bool_(True)) is w and w.requires_grad is True


def test_a_sequentials_layer_replaced_by_index_as_in_pytorch():
    """``net[-1] = Linear(...)`` (a new head for fine-tuning, as with PyTorch's Sequential) raised
    TypeError (no item assignment). The new layer takes the old one's name (state dict keys,
    parameter names) and trains; an optimizer built before takes it through add_param_group."""
    from gpuconv import ops
    from gpuconv.optim import SGD
    net = Sequential(Conv2d(3, 2, 1, seed=0), Flatten(), Linear(8, 10, seed=1))
    net[-1] = Linear(8, 3, seed=2)
    net["1"] = Flatten()
    assert net[2].out_features == 3 and list(net.state_dict())[-2:] == ["2.weight", "2.bias"]
    assert net[2].weight.name == "2.weight"
    opt = SGD(net[0].parameters(), lr=0.1)
    opt.add_param_group({"params": net[2].parameters()})
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    before = net[2].weight.data.copy()
    net.backward(ops.softmax_cross_entropy(net(x), np.array([0, 2]))[1])
    opt.step()
    assert not np.array_equal(before, net[2].weight.data)
    with pytest.raises(IndexError, match="Sequential index 3 is out of range"):
        net[3] = ReLU()
    with pytest.raises(KeyError, match="no layer named 'head'"):
        net["head"] = ReLU()
    with pytest.raises(TypeError, match=r"Sequential\[0\] = \.\.\.: a int is not a gpuconv Layer"):
        net[0] = 3
    assert len(net) == 3


def test_a_layer_appended_to_a_held_container_is_named_under_its_path():
    """PyTorch's pattern ``self.blocks = nn.ModuleList()`` then ``self.blocks.append(conv)`` named the
    appended parameters '0.weight', not 'blocks.0.weight' (the names errors and optimizers show),
    and so did an append to (or a layer set into) a Sequential inside a model."""
    from gpuconv.layers import ModuleList

    class Net(Layer):
        def __init__(self):
            super().__init__()
            self.features = Sequential(Conv2d(3, 2, 1, seed=0))
            self.blocks = ModuleList()
            for i in range(2):
                self.blocks.append(Sequential(Conv2d(2, 2, 1, seed=i)))

    net = Net()
    net.features.append(ReLU()).append(Conv2d(2, 2, 1, seed=3))
    net.blocks[1][0] = Conv2d(2, 2, 1, seed=4)
    outer = Sequential(net)
    outer[0].blocks.append(Conv2d(2, 2, 1, seed=5))
    assert [p.name for _, p in outer.named_parameters()] == [n for n, _ in outer.named_parameters()]
    assert outer[0].blocks[2].weight.name == "0.blocks.2.weight"


def test_a_layer_appended_to_a_module_list_while_a_graph_holds_the_model_is_refused():
    """``model.blocks.append(layer)`` (a ModuleList) during a graphed epoch was taken: every replay
    computed with the layers of its capture while the model's forward (the simulator's, the CPU's)
    ran the new one too, and its parameters went untrained by the replays. Refused while a captured
    step holds the model, as Sequential.append is; free once released."""
    from gpuconv.graphs import StepGraph
    from gpuconv.layers import ModuleList
    from gpuconv.optim import SGD

    net = _BlocksInOrder(ModuleList([Flatten(), Linear(12, 3, seed=1)]))
    opt = SGD(net.parameters(), lr=0.1)
    step = StepGraph.for_optimizer(lambda x, y: gpuconv.amp.training_step(net, opt, x, y), opt, net)
    step(np.ones((2, 3, 2, 2), np.float32), np.array([0, 1]))
    for change in (lambda: net.blocks.append(ReLU()), lambda: net.blocks.extend([ReLU()])):
        with pytest.raises(RuntimeError, match="ModuleList.append: the layers cannot change while a captured training"):
            change()
    assert len(net.blocks) == 2
    step.release()
    net.blocks.append(ReLU())
    assert len(net.blocks) == 3


def test_a_sub_layer_replaced_while_a_graph_holds_the_model_is_refused():
    """``model.fc = Linear(...)`` during a graphed epoch left every replay computing with the old
    layer while the model showed the new one (the simulator and the CPU ran the new one): refused
    while a captured step holds the model, free once released; set into a model already built,
    its parameters are named under the full path."""
    from gpuconv.graphs import StepGraph
    from gpuconv.optim import SGD

    class Head(Layer):
        def __init__(self):
            super().__init__()
            self.fc = Linear(12, 3, seed=1)

        def forward(self, x):
            return self.fc(x)

        def backward(self, dy, need_dx=True):
            return self.fc.backward(dy, need_dx)

    net = Sequential(Flatten(), Head())
    opt = SGD(net.parameters(), lr=0.1)
    step = StepGraph.for_optimizer(lambda x, y: gpuconv.amp.training_step(net, opt, x, y), opt, net)
    step(np.ones((2, 3, 2, 2), np.float32), np.array([0, 1]))
    old = net[1].fc
    for change in (lambda: setattr(net[1], "fc", Linear(12, 3, seed=2)), lambda: setattr(net[1], "fc", None),
                   lambda: setattr(net[1], "scale", Parameter(np.ones(1, np.float32)))):
        with pytest.raises(RuntimeError, match=r"Head\.(fc|scale): a sub-layer or parameter cannot be replaced while a "
                                               r"captured training step"):
            change()
    assert net[1].fc is old
    net[1].tag = "kept"  # (any other attribute is free)
    step.release()
    net[1].fc = Linear(12, 3, seed=2)
    assert net[1].fc.weight.name == "1.fc.weight"
