"""DualPath: a Dual Path Network's block, the leading channels of its shortcut and residual path
added and the rest joined (kuangliu's cat([x[:, :d] + out[:, :d], x[:, d:], out[:, d:]], 1)):
the join against NumPy, float64 gradients in both layouts, mixed precision, naming, summary,
errors, graphs, and PyTorch's block where torch is installed."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import amp
from gpuconv.graphs import StepGraph
from gpuconv.layers import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, DualPath, Flatten, Identity, Linear, Sequential
from gpuconv.optim import SGD
from test_concat import assert_bf16_step_matches_fp32
from test_layers import check_layer_gradients
from test_models import _kuangliu_dpn_bottleneck


def dpn_block(c_in, width, out, dense, stride=1, first=True, groups=2, seed=0):
    """kuangliu's DPN Bottleneck, narrowed: 1x1 to ``width`` - BN - ReLU, a grouped 3x3 (``groups``,
    his 32) - BN - ReLU, 1x1 to out + dense - BN; the shortcut a 1x1 of the stride + BN in a
    stage's first block, else the identity; split ``out``, a ReLU after the join."""
    path = {"conv1": Conv2d(c_in, width, 1, bias=False, seed=seed), "bn1": BatchNorm2d(width, activation="relu"),
            "conv2": Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False, floor=stride > 1,
                            seed=seed + 1),
            "bn2": BatchNorm2d(width, activation="relu"),
            "conv3": Conv2d(width, out + dense, 1, bias=False, seed=seed + 2), "bn3": BatchNorm2d(out + dense)}
    shortcut = None
    if first:
        shortcut = Sequential(Conv2d(c_in, out + dense, 1, stride=stride, bias=False, floor=stride > 1, seed=seed + 3),
                              BatchNorm2d(out + dense))
    return DualPath(path, shortcut, split=out, activation="relu")


def _join(s, r, d):
    return np.concatenate([s[:, :d] + r[:, :d], s[:, d:], r[:, d:]], axis=1)


def test_the_join_adds_the_leading_channels_and_joins_the_rest():
    """y = cat([s[:, :d] + r[:, :d], s[:, d:], r[:, d:]]) (then the ReLU, if asked), for every split
    from 0 (a plain concatenation) to all of the narrower path; dx = ds + dr of the two parts of
    dy; dy left as it was, dx a new array; 2-D inputs too."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 4))
    for d in (0, 1, 3):
        for activation in (None, "relu"):
            block = DualPath(Conv2d(3, 5, 1, seed=1), split=d, activation=activation).astype(np.float64)
            r = block.residual(x)
            want = _join(x, r, d)
            if activation:
                want = np.maximum(want, 0)
            y = block(x)
            np.testing.assert_allclose(y, want, rtol=1e-15, atol=0)
            assert y.shape == (2, 3 + 5 - d, 4, 4)
            dy = rng.standard_normal(y.shape)
            kept = dy.copy()
            dx = block.backward(dy)
            np.testing.assert_array_equal(dy, kept)
            g = dy * (want > 0) if activation else dy
            dr = np.concatenate([g[:, :d], g[:, 3:]], axis=1)
            w = block.residual.weight.data[:, :, 0, 0]
            np.testing.assert_allclose(dx, g[:, :3] + np.einsum("nohw,oc->nchw", dr, w), rtol=1e-12, atol=1e-14)
            assert not np.shares_memory(dx, dy)
    flat = DualPath(Linear(4, 6, seed=2), Linear(4, 5, seed=3), split=2).astype(np.float64)
    v = rng.standard_normal((3, 4))
    np.testing.assert_array_equal(flat(v), _join(flat.shortcut(v), flat.residual(v), 2))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_a_dpn_block_has_float64_gradients_in_both_layouts(channels_last):
    """A stage's first block (a projection shortcut, stride 2, grouped 3x3) and a later one (the
    identity shortcut), with the ReLU after the join: dx and every parameter's gradient against
    central differences; a channels_last input gives channels_last y and dx (check_layer_gradients).
    (On NumPy: the blocks' kernels on the simulator are checked against NumPy in test_models.)"""
    from conftest import Backend
    rng = np.random.default_rng(1)
    first = dpn_block(3, 4, 2, 1, stride=2, seed=1)
    check_layer_gradients(first, rng.standard_normal((2, 3, 4, 4)), Backend("numpy"), channels_last=channels_last)
    later = dpn_block(4, 4, 2, 1, first=False, seed=5)
    check_layer_gradients(later, rng.standard_normal((2, 4, 3, 3)), Backend("numpy"), channels_last=channels_last)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_a_join_has_float64_gradients_on_the_backend(backend, channels_last):
    """A light block on each backend (a 1x1 convolution and BN on the residual path, a 1x1
    projection, the ReLU after the join through its kernels): float64 gradients, both layouts."""
    rng = np.random.default_rng(2)
    block = DualPath({"conv": Conv2d(3, 4, 1, bias=False, seed=1), "bn": BatchNorm2d(4)}, Conv2d(3, 3, 1, seed=2),
                     split=2, activation="relu")
    check_layer_gradients(block, rng.standard_normal((2, 3, 3, 3)), backend, channels_last=channels_last)
    if backend.name != "numpy":
        backend.assert_kernels_ran("relu_forward", "relu_backward")


def test_the_join_is_written_in_the_inputs_layout_on_the_backend(backend):
    """Identity paths: the output is the join itself, channels_last when the input is, the same on
    the backend as in NumPy; dx = 2 dy on the added channels, dy elsewhere."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    block = DualPath(Identity(), Identity(), split=3)
    for xin in (backend.asarray(x), gpuconv.to_channels_last(backend.asarray(x))):
        y = block(xin)
        assert gpuconv.is_channels_last(y) == gpuconv.is_channels_last(xin) and y.shape == (2, 5, 3, 3)
        np.testing.assert_array_equal(backend.asnumpy(y), _join(x, x, 3))
        dy = backend.asarray(rng.standard_normal(y.shape).astype(np.float32))
        if gpuconv.is_channels_last(xin):
            dy = gpuconv.to_channels_last(dy)
        dx = block.backward(dy)
        assert gpuconv.is_channels_last(dx) == gpuconv.is_channels_last(xin)
        d = backend.asnumpy(dy)
        np.testing.assert_array_equal(backend.asnumpy(dx), np.concatenate([2 * d[:, :3], d[:, 3:4] + d[:, 4:]], 1))


def test_need_dx_false_makes_the_parameter_gradients_and_runs_no_untrained_path(monkeypatch):
    """backward(need_dx=False) returns None with the same parameter gradients; a path that trains
    nothing is not run backward, and in a forward on data (input_is_data) keeps no cache."""
    from gpuconv.layers import call_backward, input_is_data
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 4))
    block = dpn_block(3, 4, 3, 2, seed=1).astype(np.float64)
    y = block(x)
    dy = rng.standard_normal(y.shape)
    dx = block.backward(dy)
    want = {n: p.grad.copy() for n, p in block.named_parameters()}
    block.zero_grad()
    with input_is_data(block):
        block(x)
    assert block["conv1"]._cache is not None and block["bn1"]._cache is not None
    assert call_backward(block, dy, need_dx=False) is None
    for n, p in block.named_parameters():
        np.testing.assert_array_equal(p.grad, want[n], err_msg=n)
    assert dx.shape == x.shape
    block.zero_grad()
    block.shortcut.requires_grad_(False)
    ran = []
    monkeypatch.setattr(block.shortcut, "backward", lambda dy, need_dx=True: ran.append(1) or dy, raising=False)
    with input_is_data(block):
        block(x)
    assert block.shortcut[0]._cache is None and block.shortcut[1]._cache is None
    assert block.backward(dy, need_dx=False) is None and ran == [] and block.shortcut[0].weight.grad is None
    np.testing.assert_array_equal(block["conv3"].weight.grad, want["conv3.weight"])
    # the residual path's own frozen layers in front keep no cache either (its input is data too)
    block["conv1"].requires_grad_(False)
    block.zero_grad()
    with input_is_data(block):
        block(x)
    assert block["conv1"]._cache is None and block["conv2"]._cache is not None


def test_a_mixed_precision_step_on_the_simulator_trains_in_bf16():
    """amp's bf16 step through DPN blocks on the simulator, channels_last as the trainer feeds
    bf16: the paths join in bf16, the float32 gradients agree with a float32 step's to bf16's
    precision."""
    assert_bf16_step_matches_fp32(lambda: Sequential(dpn_block(3, 4, 3, 2, stride=2, seed=5),
                                                     dpn_block(7, 4, 3, 2, first=False, seed=9),
                                                     AdaptiveAvgPool2d(1), Flatten(), Linear(9, 10, seed=6)))


def test_state_dict_keys_parameter_names_repr_and_indexing():
    """A mapping's layers are the block's own children (kuangliu's keys conv1.weight ...
    shortcut.0.weight); a Layer given as the path is named 'residual'; names nest in containers."""
    block = dpn_block(3, 4, 3, 2, seed=1)
    assert list(block.state_dict()) == [
        "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "conv2.weight", "bn2.weight",
        "bn2.bias", "bn2.running_mean", "bn2.running_var", "conv3.weight", "bn3.weight", "bn3.bias",
        "bn3.running_mean", "bn3.running_var", "shortcut.0.weight", "shortcut.1.weight", "shortcut.1.bias",
        "shortcut.1.running_mean", "shortcut.1.running_var"]
    net = Sequential({"layer1": Sequential(block)})
    assert block["conv2"].weight.name == "layer1.0.conv2.weight" and block.shortcut[1].bias.name == \
        "layer1.0.shortcut.1.bias"
    assert [p.name for p in net.parameters()] == [n for n, _ in net.named_parameters()]
    assert repr(block).splitlines()[:3] == [
        "DualPath(", "  split=3, activation='relu'",
        "  (conv1): Conv2d(3, 4, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False)"]
    one = DualPath(Conv2d(3, 4, 1, seed=0), split=2)
    assert list(one.state_dict()) == ["residual.weight", "residual.bias"] and one["residual"] is one.residual
    assert repr(one).splitlines()[1] == "  split=2"
    with pytest.raises(KeyError, match=r"DualPath has no child named 'conv4'; its children are named 'conv1', 'bn1'"):
        block["conv4"]
    with pytest.raises(AttributeError, match=r"given as a mapping.*block\['conv1'\]"):
        block.residual
    from gpuconv import nn
    assert "DualPath" in nn.__all__ and nn.DualPath is DualPath
    # eval mode, moves and casts reach the path's layers (the block's children)
    net.eval()
    assert not block["bn3"].training
    assert block.astype(np.float64)["conv3"].weight.dtype == np.float64


def test_summary_gives_each_path_then_the_join():
    text = Sequential({"stem": Conv2d(3, 4, 3, padding=1, seed=0), "block": dpn_block(4, 4, 3, 2, seed=1)}).summary(
        (3, 6, 6))
    rows = [line.split()[:2] for line in text.splitlines()[2:-3]]
    assert [r[0] for r in rows] == ["stem", "block.conv1", "block.bn1", "block.conv2", "block.bn2", "block.conv3",
                                    "block.bn3", "block.shortcut.0", "block.shortcut.1", "block"]
    join = text.splitlines()[2 + 9]
    assert "DualPath (split 3, relu)" in join and join.split()[-3:] == ["7x6x6", "0", f"{3 * 36 + 7 * 36:,}"]


def test_paths_that_disagree_or_bad_arguments_are_refused_by_name():
    x = np.zeros((2, 3, 6, 6), np.float32)
    with pytest.raises(ValueError, match=r"in layer 'blk' \(DualPath\): DualPath: split=4 channels are added, but "
                                         r"the shortcut gives 3 and the residual path 5; each must give at least"):
        Sequential({"blk": DualPath(Conv2d(3, 5, 1), split=4)})(x)
    late = DualPath(Conv2d(3, 5, 1), split=1)
    late.split = -1  # (set after construction: checked where the join runs)
    with pytest.raises(ValueError, match=r"split=-1 channels are added, but the shortcut gives 3"):
        late(x)
    with pytest.raises(ValueError, match=r"the shortcut gives shape \(2, 3, 6, 6\) and the residual path "
                                         r"\(2, 5, 3, 3\); joining them needs the same batch size, height and width"):
        DualPath(Conv2d(3, 5, 1, stride=2, floor=True), split=2)(x)

    class Float64(Identity):
        def forward(self, x):
            return x.astype(np.float64)

    class Ravel(Identity):
        def forward(self, x):
            return x.reshape(-1)

    with pytest.raises(TypeError, match=r"the shortcut gave ndarray of shape \(216,\); both paths must give \(N, C"):
        DualPath(Identity(), Ravel(), split=0)(x)

    with pytest.raises(TypeError, match=r"the shortcut gives dtype float32 and the residual path float64"):
        DualPath(Float64(), split=1)(x)
    with pytest.raises(ValueError, match=r"in layer 'conv2' \(Conv2d.*x has C=3 channels"):
        DualPath({"conv1": Identity(), "conv2": Conv2d(4, 2, 1)}, split=1)(x)  # a path's own error names its layer
    with pytest.raises(ValueError, match=r"in layer 'shortcut.0' \(Conv2d.*x has C=3 channels"):
        DualPath(Identity(), Sequential(Conv2d(4, 2, 1)), split=1)(x)
    for split in (None, -1, 1.5, True):
        with pytest.raises(ValueError, match=rf"DualPath\(split={split!r}\): split must be an int >= 0"):
            DualPath(Identity(), split=split)
    with pytest.raises(ValueError, match=r"DualPath\(activation='gelu'\): the join applies None .* or 'relu'"):
        DualPath(Identity(), split=1, activation="gelu")
    with pytest.raises(TypeError, match=r"residual must be a gpuconv Layer or a mapping .* got function"):
        DualPath(lambda x: x, split=1)
    with pytest.raises(TypeError, match=r"shortcut must be a gpuconv Layer or None .* got int"):
        DualPath(Identity(), 3, split=1)
    with pytest.raises(ValueError, match=r"residual layer name 'shortcut' must be"):
        DualPath({"shortcut": Identity()}, split=1)
    with pytest.raises(ValueError, match=r"the residual mapping is empty"):
        DualPath({}, split=1)
    block = DualPath(Conv2d(3, 5, 1), split=2)
    y = block(x)
    with pytest.raises(ValueError, match=r"dy has shape \(2, 5, 6, 6\), but the forward gave 6 channels \(3 of the "
                                         r"shortcut \+ 5 of the residual path - 2 added\)"):
        block.backward(y[:, :5])
    block(x)
    block.backward(y)
    with pytest.raises(RuntimeError, match="without a cached forward pass"):
        block.backward(y)


def test_a_captured_step_holds_the_blocks_and_a_dpn_trains_on_it():
    """A StepGraph holds the blocks (their state cannot be replaced while it does); the Trainer
    with cuda_graph=True (on the host the same step) fits a tiny DPN on one batch: the loss falls."""
    from gpuconv.trainer import Trainer

    def tiny(seed):
        return Sequential({"conv1": Conv2d(3, 4, 3, padding=1, bias=False, seed=seed),
                           "bn1": BatchNorm2d(4, activation="relu"),
                           "layer1": Sequential(dpn_block(4, 4, 3, 2, seed=seed + 1),
                                                dpn_block(7, 4, 3, 2, first=False, seed=seed + 5)),
                           "pool": AdaptiveAvgPool2d(1), "flatten": Flatten(), "linear": Linear(9, 10, seed=seed + 9)})

    net = tiny(0)
    opt = SGD(net.parameters(), lr=0.1)
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 4)).astype(np.float32)
    step = StepGraph.for_optimizer(lambda x, y: amp.training_step(net, opt, x, y), opt, net)
    step(x, np.array([0, 1]))
    assert net["layer1"][0]._held() and net["layer1"][0]["conv2"]._held()
    with pytest.raises(RuntimeError, match="load_state_dict: the state cannot be replaced while"):
        net["layer1"][0].load_state_dict(net["layer1"][0].state_dict())
    for attr, value in (("split", 2), ("activation", None)):
        with pytest.raises(RuntimeError, match=f"DualPath: {attr} cannot change while a captured training step"):
            setattr(net["layer1"][1], attr, value)
    net["layer1"][1].split = 3  # (the value it has: no change)
    with pytest.raises(RuntimeError, match="DualPath.shortcut = ...: the shortcut cannot change while a captured"):
        net["layer1"][0].shortcut = None
    net["layer1"][0].shortcut = net["layer1"][0].shortcut
    step.release()
    net["layer1"][1].shortcut = Conv2d(7, 7, 1, seed=3)
    assert net["layer1"][1].shortcut.weight.name == "layer1.1.shortcut.weight"
    assert "layer1.1.shortcut.bias" in net.state_dict()
    net["layer1"][1].shortcut = None
    net["layer1"][1].split = 2
    assert net["layer1"][1](np.zeros((1, 7, 2, 2), np.float32)).shape == (1, 7 + 5 - 2, 2, 2)
    net["layer1"][1].split = 3
    assert not net["layer1"][0]._held()
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((8, 3, 8, 8)).astype(np.float32), rng.integers(0, 10, 8)
    model = tiny(7)
    trainer = Trainer(model, SGD(model.parameters(), lr=0.1, momentum=0.9), progress=False, cuda_graph=True)
    losses = [r["train_loss"] for r in trainer.fit([(x, y)], 8)]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.8 * losses[0], losses


def test_the_join_and_the_gradient_sum_run_on_the_arrays_gpu(fake_second_gpu):
    """CuPy allocates, adds and copies on its current device: the output, the residual path's part
    of dy and the sum of the paths' gradients of a DualPath whose arrays are on cuda:1 are made
    there while cuda:0 is current (CuPy is faked: conftest.FakeSecondGpu)."""
    gpu = fake_second_gpu
    block = DualPath(Identity(), Identity(), split=2)
    x = gpuconv.to_channels_last(gpu.on(np.arange(16, dtype=np.float32).reshape(1, 4, 2, 2)))
    del gpu.calls[:]
    y = block(x)
    assert {on for _, on in gpu.calls} == {1} and gpuconv.is_channels_last(y) and y.shape == (1, 6, 2, 2)
    dx = block.backward(y)
    assert {on for _, on in gpu.calls} == {1} and gpu.current == [0] and ("add", 1) in gpu.calls
    xs = np.asarray(x)
    np.testing.assert_array_equal(np.asarray(dx), np.concatenate([4 * xs[:, :2], 2 * xs[:, 2:]], 1))


def test_a_dpn_block_matches_kuanglius_bottleneck_in_torch():
    """kuangliu's DPN Bottleneck (models/dpn.py, groups=32 in his 3x3: 32 channels here), its state
    dict loaded as it is: the same y, dx, weight gradients and running statistics in float64, for a
    stage's first block (a projection, stride 2) and a later one (the identity)."""
    torch = pytest.importorskip("torch")
    Bottleneck = _kuangliu_dpn_bottleneck(torch)

    torch.manual_seed(0)
    rng = np.random.default_rng(8)
    for c_in, stride, first in ((6, 2, True), (9, 1, False)):
        theirs = Bottleneck(c_in, 32, 6, 3, stride, first).double()
        ours = dpn_block(c_in, 32, 6, 3, stride=stride, first=first, groups=32).astype(np.float64)
        assert ours.load_state_dict(theirs.state_dict()) == ([], [])
        x = rng.standard_normal((2, c_in, 5, 5))
        xt = torch.tensor(x, requires_grad=True)
        yt = theirs(xt)
        dy = rng.standard_normal(tuple(yt.shape))
        yt.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(ours(x), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
        grads = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            np.testing.assert_allclose(p.grad, grads[name].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
        buffers = dict(theirs.named_buffers())
        for name, b in ours.named_buffers():
            np.testing.assert_allclose(b, buffers[name].numpy(), rtol=1e-12, atol=1e-14, err_msg=name)
