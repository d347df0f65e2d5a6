"""Conv2d's padding_mode ('reflect', 'replicate', 'circular'): the input padded in that mode and then
convolved without padding, as PyTorch's nn.Conv2d does; gradients, layouts, repr, errors."""
from __future__ import annotations

import numpy as np
import pytest
from test_layers import check_layer_gradients

from gpuconv.layers import Conv2d

MODES = ("reflect", "replicate", "circular")
NUMPY_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _reference(layer, x):
    """The layer's output from np.pad and a zero-padding Conv2d of the same weights (float64), on the
    host (made under the backend's default device, whose parameters would be on its GPU on 'cupy')."""
    left, right, top, bottom = layer._reversed_padding_repeated_twice
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=NUMPY_MODES[layer.padding_mode])
    plain = Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, 0, layer.dilation,
                   layer.groups, layer.bias is not None, floor=layer.floor).astype(np.float64).to("cpu")
    plain.load_state_dict(layer.state_dict())
    return plain(xp)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(padding=2, stride=2, floor=True),
                                    dict(padding=(1, 2), groups=2, dilation=(1, 2)), dict(padding="same",
                                                                                          kernel_size=(2, 3))])
def test_forward_pads_in_the_mode_then_convolves(backend, mode, kwargs):
    kwargs = dict(kwargs)
    layer = Conv2d(2, 4, kwargs.pop("kernel_size", 3), padding_mode=mode, seed=3, **kwargs).astype(np.float64)
    x = np.random.default_rng(1).standard_normal((2, 2, 5, 6))
    y = backend.asnumpy(layer.to(backend.device)(backend.asarray(x)))
    np.testing.assert_allclose(y, _reference(layer.to("cpu"), x), rtol=1e-12, atol=1e-12)
    assert set(layer.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stride, padding, groups", [(1, 1, 1), (2, 2, 2)])
def test_gradients(backend, mode, stride, padding, groups):
    """dx and the parameter gradients against central differences (float64)."""
    layer = Conv2d(2, 2, 3, stride, padding, groups=groups, padding_mode=mode, floor=True, seed=2)
    check_layer_gradients(layer, np.random.default_rng(0).standard_normal((1, 2, 4, 4)), backend)


def test_channels_last_kept(backend):
    layer = Conv2d(2, 3, 3, padding=1, padding_mode="reflect", seed=0).astype(np.float64)
    check_layer_gradients(layer, np.random.default_rng(0).standard_normal((1, 2, 4, 4)), backend, channels_last=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(padding=2, stride=2), dict(padding=1, groups=2),
                                    dict(padding=(2, 1), dilation=2), dict(padding="same", kernel_size=4)])
def test_matches_torch(mode, kwargs):
    """Output, input gradient and weight/bias gradients of torch's nn.Conv2d(padding_mode=mode), float64."""
    torch = pytest.importorskip("torch")
    kwargs = dict(kwargs)
    k = kwargs.pop("kernel_size", 3)
    theirs = torch.nn.Conv2d(4, 6, k, padding_mode=mode, **kwargs).double()
    ours = Conv2d(4, 6, k, padding_mode=mode, floor=True, **kwargs).astype(np.float64)
    ours.load_state_dict(theirs.state_dict())
    assert ours._reversed_padding_repeated_twice == tuple(theirs._reversed_padding_repeated_twice)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 7, 8))
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(ours(x), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert repr(ours).endswith(f"bias=True, padding_mode={mode}, floor=True)")  # (torch's, then floor)


def test_zeros_is_the_default_and_unchanged():
    layer = Conv2d(2, 3, 3, padding=1, seed=0)
    assert layer.padding_mode == "zeros" and "padding_mode" not in repr(layer)
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    assert type(layer.forward(x)) is np.ndarray and layer.backward(np.ones((1, 3, 4, 4), np.float32)).shape == x.shape


def test_errors_are_pytorchs():
    with pytest.raises(ValueError, match=r"padding_mode must be one of .*padding_mode='wrap'"):
        Conv2d(2, 3, 3, padding_mode="wrap")
    x = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="reflect padding .3, 3. of the height must be smaller than the input's"):
        Conv2d(2, 3, 3, padding=3, padding_mode="reflect")(x)
    with pytest.raises(ValueError, match="more than once"):
        Conv2d(2, 3, 3, padding=4, padding_mode="circular")(x)
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        Conv2d(2, 3, 3, 2, "same", padding_mode="reflect")


def test_frozen_input_gradient_skips_the_pad_backward():
    layer = Conv2d(2, 3, 3, padding=1, padding_mode="circular", seed=0)
    layer(np.zeros((1, 2, 4, 4), np.float32))
    assert layer.backward(np.ones((1, 3, 4, 4), np.float32), need_dx=False) is None
    assert layer.weight.grad is not None and layer.bias.grad is not None
