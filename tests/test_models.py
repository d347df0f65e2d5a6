"""Reference models: shapes, parameter counts, end-to-end gradients, seeding, overfitting."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import backend as B
from gpuconv import models, ops
from gpuconv.gradcheck import directional_derivative, relative_error
from gpuconv.layers import BatchNorm2d, Residual, Scale, Sequential
from gpuconv.optim import SGD

MODELS = {
    "seed": lambda **kw: models.seed_net(**kw),
    "three_layer": lambda **kw: models.three_layer_convnet(num_filters=4, hidden_dim=10, **kw),
    "fast": lambda **kw: models.fast_net(width=2, **kw),
}


def _images(n, seed=0, hw=32):
    return np.random.default_rng(seed).standard_normal((n, 3, hw, hw)).astype(np.float32)


def test_parameter_counts_match_the_architectures():
    count = lambda m: sum(p.size for p in m.parameters())  # noqa: E731
    assert count(models.seed_net()) == (12 * 3 * 9 + 12) + (12 * 16 * 16 * 10 + 10)
    assert count(models.three_layer_convnet()) == (32 * 3 * 49 + 32) + (32 * 16 * 16 * 100 + 100) + (100 * 10 + 10)
    assert "about 825k parameters" in " ".join(models.three_layer_convnet.__doc__.split())  # 825,046, as help() says
    w = 64  # ResNet-9: bias-free 3x3 convs, BN (2 params per channel), bias-free classifier
    convs = 3 * w + w * 2 * w + 2 * (2 * w) ** 2 + 2 * w * 4 * w + 4 * w * 8 * w + 2 * (8 * w) ** 2
    bn_channels = w + 2 * w + 2 * 2 * w + 4 * w + 8 * w + 2 * 8 * w
    assert count(models.fast_net()) == 9 * convs + 2 * bn_channels + 8 * w * 10 == 6_573_120


def test_fast_net_structure():
    net = models.fast_net(width=8)
    assert list(net._layers) == ["prep", "layer1", "layer1_res", "layer2", "layer3", "layer3_res", "pool", "flatten",
                                 "fc", "scale"]
    assert isinstance(net["layer1_res"], Residual) and isinstance(net["scale"], Scale)
    assert net["scale"].factor == 0.125 and net["fc"].bias is None
    assert sum(isinstance(m, BatchNorm2d) for m in net.modules()) == 8
    assert "scale" not in models.fast_net(width=8, output_scale=None)._layers
    assert "layer3_res.inner.1.bn.running_var" in dict(net.named_buffers())
    with pytest.raises(ValueError, match="width must be a positive int"):
        models.fast_net(width=0)


@pytest.mark.parametrize("name", ["seed", "three_layer", "fast"])
def test_forward_backward_shapes_and_gradients(backend, name):
    net = MODELS[name]()
    x = backend.asarray(_images(4))
    labels = backend.asarray(np.array([0, 3, 9, 3]))
    logits = net(x)
    assert logits.shape == (4, 10) and logits.dtype == np.float32
    assert B.get_array_module(logits) is backend.xp
    loss, dlogits = ops.softmax_cross_entropy(logits, labels)
    dx = net.backward(dlogits)
    assert dx.shape == x.shape
    for pname, p in net.named_parameters():
        g = backend.asnumpy(p.grad)
        assert g.shape == p.shape and np.all(np.isfinite(g)), pname
        assert np.abs(g).max() > 0, f"{pname} got no gradient"


@pytest.mark.parametrize("name", ["seed", "three_layer", "fast"])
def test_end_to_end_directional_derivative_float64(name):
    """<grad, v> from backward against (L(p + hv) - L(p - hv)) / 2h along a random direction over
    every parameter and the input at once: the whole chain, residuals and batch norm included."""
    # Small inputs and a small step h: with thousands of ReLU and max-pool inputs, a perturbation
    # of 1e-5 along a random direction would push a few across a kink; float64 keeps the
    # rounding error of h = 1e-6 near 1e-10.
    hw = 32 if name == "fast" else 8
    net = MODELS[name](input_dim=(3, hw, hw)) if name != "fast" else MODELS[name]()
    net.astype(np.float64)
    x = _images(3, seed=1, hw=hw).astype(np.float64)
    analytic, numeric = directional_derivative(net, x, np.array([1, 7, 4]), h=1e-6, seed=3)
    assert relative_error(np.array(analytic), np.array(numeric)) < 1e-6


@pytest.mark.parametrize("name", ["seed", "three_layer", "fast"])
def test_seeding(name):
    a, b, c = MODELS[name](seed=0), MODELS[name](seed=0), MODELS[name](seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    weights = [k for k in sa if k.endswith("weight") and "bn" not in k]
    assert all(not np.array_equal(sa[k], sc[k]) for k in weights)
    assert len({sa[k].tobytes() for k in weights}) == len(weights)  # layers get distinct seeds


def test_small_inputs_and_bad_arguments():
    assert models.seed_net(num_classes=5, input_dim=(1, 8, 8))(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 5)
    net = models.three_layer_convnet(num_filters=3, filter_size=3, hidden_dim=7, input_dim=(3, 6, 6))
    assert net(np.zeros((2, 3, 6, 6), np.float32)).shape == (2, 10)
    with pytest.raises(ValueError, match="odd"):
        models.three_layer_convnet(filter_size=4)
    with pytest.raises(ValueError, match="even"):
        models.seed_net(input_dim=(3, 7, 7))


def test_fast_net_and_airbench_take_other_channel_counts():
    """Grayscale (1 channel) and 4-channel images without editing a model: fast_net's first conv
    and airbench's whitening conv (8 * in_channels filters, which init_whitening fills) take them."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 32, 32)).astype(np.float32)
    net = models.fast_net(width=2, num_classes=7, in_channels=4)
    assert net(x).shape == (2, 7)
    gray = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)  # MNIST-sized: 27, 13, 6, 3, 1
    for build in (models.airbench94, models.airbench96):
        net = build(widths=(4, 4, 4), in_channels=1)
        models.init_whitening(net["whiten"], gray)
        assert net["whiten"].weight.shape == (8, 1, 2, 2) and net(gray).shape == (2, 10)
    with pytest.raises(ValueError, match=r"fast_net: in_channels must be a positive int .* got 0"):
        models.fast_net(in_channels=0)
    with pytest.raises(ValueError, match=r"airbench94: in_channels must be a positive int"):
        models.airbench94(in_channels=True)


def test_fast_net_eval_mode_is_deterministic_and_keeps_running_stats():
    net = models.fast_net(width=4)
    x = _images(4, seed=2)
    net(x)  # one training step's forward moves the running statistics
    net.eval()
    before = {k: v.copy() for k, v in net.named_buffers()}
    y1, y2 = net(x), net(x)
    np.testing.assert_array_equal(y1, y2)
    assert all(np.array_equal(v, before[k]) for k, v in net.named_buffers())
    net.train()
    assert not np.allclose(net(x), y1)  # batch statistics differ from the running ones


@pytest.mark.parametrize("name,steps,lr", [("seed", 40, 0.05), ("three_layer", 40, 0.05)])
def test_overfits_twenty_images(name, steps, lr):
    x = _images(20, seed=5, hw=32 if name == "seed" else 16)
    labels = np.random.default_rng(6).integers(0, 10, 20)
    net = (models.seed_net() if name == "seed" else
           models.three_layer_convnet(num_filters=8, hidden_dim=50, input_dim=(3, 16, 16)))
    opt = SGD(net.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss, dlogits = ops.softmax_cross_entropy(net(x), labels)
        net.backward(dlogits)
        opt.step()
        losses.append(float(loss))
    assert losses[0] > 1.5
    assert losses[-1] < 0.05, losses[-5:]
    assert np.mean(np.argmax(net(x), axis=1) == labels) == 1.0


def test_residual_stack_of_models_is_sequential():
    assert all(isinstance(MODELS[n](), Sequential) for n in MODELS)


def test_training_step_makes_no_host_readback():
    """On 'sim', NumPy arrays stand for device arrays and every readback through the backend is
    counted: forward, loss, backward and the optimizer step must make none."""
    import gpuconv

    with gpuconv.default_device("sim"):
        net = models.seed_net(input_dim=(3, 8, 8))
        opt = SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
        x, labels = _images(2, hw=8), np.array([1, 2])
        B.transfers.reset()
        for _ in range(2):
            opt.zero_grad()
            loss, dlogits = ops.softmax_cross_entropy(net(x), labels)
            net.backward(dlogits)
            opt.step()
        assert B.transfers.device_to_host == 0 and B.transfers.host_to_device == 0
        assert B.get_array_module(loss) is np and loss.ndim == 0


def test_a_frozen_input_stage_runs_no_backward_and_the_gradients_stay():
    """Nothing before the first layer that trains wants a gradient: with airbench94's whitening
    frozen (its bias too, as after the recipe's first epochs) the backward skips the first block
    conv's data gradient and the whitening's GELU and conv backward, as autograd leaves out what
    requires no grad; every trained parameter's gradient is the same as with the full backward."""
    import gpuconv
    from gpuconv import kernels
    from gpuconv.layers import call_backward
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    grads = {}
    for frozen in (False, True):
        net = models.airbench94(widths=(8, 8, 8))
        net["whiten"].bias.requires_grad = not frozen
        with gpuconv.default_device("sim"), kernels.launch_log() as log:
            y = net(gpuconv.to_device(x, "sim"))
            call_backward(net, np.ones(y.shape, np.float32), need_dx=False)
        grads[frozen] = ({n: np.array(p.grad) for n, p in net.named_parameters() if p.grad is not None},
                         sum(n.startswith("conv2d_backward_data") for n in log.names), log.names.count("gelu_backward"))
    (full, dgrads_full, gelus_full), (skipped, dgrads_skipped, gelus_skipped) = grads[False], grads[True]
    assert dgrads_skipped == dgrads_full - 1 and gelus_skipped == gelus_full - 1  # conv1's dx, the whitening's GELU
    assert set(full) - set(skipped) == {"whiten.bias"}
    for name, g in skipped.items():
        np.testing.assert_array_equal(g, full[name], err_msg=name)


def test_a_sequential_without_need_dx_starts_at_its_first_trained_layer():
    from gpuconv.layers import Conv2d, ReLU, call_backward
    calls = []

    class Spy(ReLU):
        def backward(self, dy, need_dx=True):
            calls.append(need_dx)
            return super().backward(dy, need_dx)

    frozen = Conv2d(3, 4, 3, padding=1, seed=1)
    for p in frozen.parameters():
        p.requires_grad = False
    net = Sequential(frozen, Spy(), Conv2d(4, 4, 3, padding=1, seed=2), Spy())
    y = net(np.ones((1, 3, 6, 6), np.float32))
    assert call_backward(net, np.ones_like(y), need_dx=False) is None
    assert calls == [True]  # the last ReLU's; the first ReLU and the frozen conv never ran backward
    calls.clear()
    y = net(np.ones((1, 3, 6, 6), np.float32))
    assert net.backward(np.ones_like(y)).shape == (1, 3, 6, 6) and calls == [True, True]  # need_dx: all of it


def test_a_config_with_arguments_the_constructor_does_not_take_says_a_newer_gpuconv_wrote_it():
    """A checkpoint of a newer gpuconv can record constructor arguments this version's network
    does not have (airbench94's head_std once): the error names them and says to upgrade, where
    the call's TypeError said only 'unexpected keyword argument'."""
    config = {"constructor": "seed_net", "kwargs": {"seed": 0, "head_std": 1.0, "whiten_bias": "uniform"}}
    with pytest.raises(ValueError, match=r"seed_net\(\) the argument\(s\) head_std, whiten_bias.*newer gpuconv"):
        models.from_config(config)
    assert isinstance(models.from_config({"constructor": "seed_net", "kwargs": {"seed": 0}}), Sequential)
