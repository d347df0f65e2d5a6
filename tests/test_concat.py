"""Concat: branches on one input joined along the channels (DenseNet's cat([f(x), x], 1),
Inception's four branches): float64 gradients, layouts, mixed precision, naming, summary, graphs,
training, and PyTorch's torch.cat where torch is installed."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import amp
from gpuconv.graphs import StepGraph
from gpuconv.layers import (AdaptiveAvgPool2d, BatchNorm2d, Concat, Conv2d, Flatten, Identity, Linear, MaxPool2d,
                            ReLU, Sequential)
from gpuconv.optim import SGD
from test_layers import check_layer_gradients


def dense_layer(c, growth, seed=0):
    """DenseNet's layer: cat([conv(relu(bn(x))), x], 1), c -> c + growth channels."""
    return Concat(Sequential(BatchNorm2d(c), ReLU(), Conv2d(c, growth, 3, padding=1, bias=False, seed=seed)),
                  Identity())


def inception(c, seed=0):
    """Four branches on one input, as GoogLeNet's (its 3x3 max-pool branch, which needs a padded
    pool, stands as a 3x3 convolution here): 1x1; 1x1 -> 3x3; 1x1 -> 3x3 -> 3x3; 3x3."""
    return Concat({"b1": Sequential(Conv2d(c, 2, 1, seed=seed)),
                   "b2": Sequential(Conv2d(c, 2, 1, seed=seed + 1), ReLU(), Conv2d(2, 3, 3, padding=1, seed=seed + 2)),
                   "b3": Sequential(Conv2d(c, 1, 1, seed=seed + 3), ReLU(), Conv2d(1, 2, 3, padding=1, seed=seed + 4),
                                    ReLU(), Conv2d(2, 2, 3, padding=1, seed=seed + 5)),
                   "b4": Sequential(Conv2d(c, 1, 3, padding=1, seed=seed + 6))})


def dense_net(seed=0):
    """A DenseNet's shape: stem, a dense block of two layers, a transition, the head."""
    return Sequential({"conv1": Conv2d(3, 4, 3, padding=1, bias=False, seed=seed),
                       "dense1": Sequential(dense_layer(4, 2, seed + 1), dense_layer(6, 2, seed + 2)),
                       "trans1": Sequential(BatchNorm2d(8), ReLU(), Conv2d(8, 4, 1, bias=False, seed=seed + 3),
                                            MaxPool2d(2)),
                       "bn": BatchNorm2d(4), "relu": ReLU(), "pool": AdaptiveAvgPool2d(1), "flat": Flatten(),
                       "linear": Linear(4, 10, seed=seed + 4)})


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_a_densenet_layer_has_float64_gradients_in_both_layouts(backend, channels_last):
    """y = cat([conv(relu(bn(x))), x], 1): dx sums the convolution branch's gradient and the
    identity's; a channels_last input gives channels_last y and dx (check_layer_gradients)."""
    rng = np.random.default_rng(0)
    block = dense_layer(3, 2, seed=1)
    check_layer_gradients(block, rng.standard_normal((2, 3, 3, 3)), backend, channels_last=channels_last)


def test_an_inception_block_has_float64_gradients(backend):
    rng = np.random.default_rng(1)
    block = inception(2, seed=3)
    x = backend.asarray(np.zeros((1, 2, 3, 3), np.float32))
    assert block.to(backend.device)(x).shape == (1, 8, 3, 3)
    check_layer_gradients(block, rng.standard_normal((2, 2, 3, 3)), backend)


def test_the_join_is_written_in_the_outputs_layout_and_dy_is_left_as_it_was():
    """Each branch's output is written into the output (channels_last: into NHWC memory, with no
    transposing copy after); backward leaves dy as it was, whether the identity branch's part of
    it is a view of dy (one image: the first gradient taken then is dy's memory) or a copy."""
    rng = np.random.default_rng(2)
    block = dense_layer(3, 2, seed=1).astype(np.float64)
    for n in (1, 2):
        x = rng.standard_normal((n, 3, 4, 4))
        for xin in (x, gpuconv.to_channels_last(x)):
            y = block(xin)
            assert gpuconv.is_channels_last(y) == gpuconv.is_channels_last(xin) and y.shape == (n, 5, 4, 4)
            np.testing.assert_array_equal(y[:, 2:], x)
            dy = rng.standard_normal(y.shape)
            kept = dy.copy()
            dx = block.backward(dy)
            np.testing.assert_array_equal(dy, kept)
            assert not np.shares_memory(dx, dy)
    # one branch: its output copied, the gradient passed straight through
    one = Concat(Identity())
    x = rng.standard_normal((2, 3, 2, 2))
    y = one(x)
    assert not np.shares_memory(y, x) and np.array_equal(y, x) and np.array_equal(one.backward(x), x)


def test_need_dx_false_makes_the_parameter_gradients_and_runs_no_identity_branch(monkeypatch):
    """backward(need_dx=False) (the network's input is data) returns None with the same parameter
    gradients; a branch that trains nothing (DenseNet's Identity, a ReLU) is not run backward, and
    in a forward on data (input_is_data) keeps no cache."""
    from gpuconv.layers import call_backward, input_is_data
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 8, 4, 4))
    block = dense_layer(3, 2, seed=1).append(ReLU()).astype(np.float64)
    block(x)
    dx = block.backward(dy)
    want = {n: p.grad.copy() for n, p in block.named_parameters()}
    block.zero_grad()
    ran = []
    for branch in (block[1], block[2]):
        monkeypatch.setattr(branch, "backward", lambda dy, need_dx=True: ran.append(1) or dy, raising=False)
    with input_is_data(block):
        block(x)
    assert block[2]._cache is None and block[0][1]._cache is not None and block[0][2]._cache is not None
    assert call_backward(block, dy, need_dx=False) is None and ran == []
    for n, p in block.named_parameters():
        np.testing.assert_array_equal(p.grad, want[n], err_msg=n)
    assert dx.shape == x.shape
    # each branch's input is data too: a branch's frozen layers in front of its first trained one keep no cache
    block.zero_grad()
    block[0][0].requires_grad_(False)
    with input_is_data(block):
        block(x)
    assert block[0][0]._cache is None and block[0][1]._cache is None and block[0][2]._cache is not None
    assert block.backward(dy, need_dx=False) is None and block[0][0].weight.grad is None
    np.testing.assert_array_equal(block[0][2].weight.grad, want["0.2.weight"])


def test_a_mixed_precision_step_on_the_simulator_trains_in_bf16():
    """amp's bf16 step (the trainer's) through Concat blocks on the simulator, channels_last as
    the trainer feeds bf16: the branches' outputs join in bf16, the float32 gradients agree with a
    float32 step's to bf16's precision."""
    assert_bf16_step_matches_fp32(lambda: Sequential(dense_layer(3, 4, seed=5), AdaptiveAvgPool2d(1), Flatten(),
                                                     Linear(7, 10, seed=6)))


def assert_bf16_step_matches_fp32(make_net):
    """amp's training step of ``make_net()`` (built on 'sim', 3 input channels, 10 classes) on 4
    channels_last 8x8 images in bf16 and in fp32: bf16 logits, float32 gradients within 10% of the
    fp32 step's (bf16's precision), a finite loss."""
    rng = np.random.default_rng(4)
    x = gpuconv.to_channels_last(rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    y = rng.integers(0, 10, 4)
    grads = {}
    for precision in ("bf16", "fp32"):
        with gpuconv.default_device("sim"):
            net = make_net()
            opt = SGD(net.parameters(), lr=0.0)
            loss, logits = amp.training_step(net, opt, x, y, precision)
        assert logits.dtype == (gpuconv.bfloat16 if precision == "bf16" else np.float32) and np.isfinite(loss)
        grads[precision] = {n: p.grad for n, p in net.named_parameters()}
        assert all(g.dtype == np.float32 for g in grads[precision].values())
    for name, g in grads["fp32"].items():
        err = np.linalg.norm(grads["bf16"][name] - g) / np.linalg.norm(g)
        assert err < 0.1, f"{name}: {err}"


def test_state_dict_keys_parameter_names_repr_and_indexing():
    """Branches are named as Sequential's children: by position ('0.2.weight'), or by the names of
    a mapping ('b2.0.weight', the keys of a PyTorch module holding branches b1..b4); appended and
    replaced branches take their names; the repr is PyTorch's container layout."""
    net = Sequential(Conv2d(3, 4, 1, seed=0), dense_layer(4, 2, seed=1))
    assert list(net.state_dict()) == ["0.weight", "0.bias", "1.0.0.weight", "1.0.0.bias", "1.0.0.running_mean",
                                      "1.0.0.running_var", "1.0.2.weight"]
    assert [p.name for p in net.parameters()] == [n for n, _ in net.named_parameters()]
    block = inception(3)
    assert [n for n, _ in block.named_children()] == ["b1", "b2", "b3", "b4"] and block["b2"] is block[1]
    assert len(block) == 4 and list(block) == [block[i] for i in range(4)] and block[-1] is block["b4"]
    assert block["b2"][2].weight.name == "b2.2.weight"
    dense = dense_layer(4, 2)
    assert repr(dense).splitlines()[:3] == ["Concat(", "  (0): Sequential(", "    (0): BatchNorm2d(4, eps=1e-05, "
                                                                           "momentum=0.1)"]
    assert repr(dense).splitlines()[-2:] == ["  (1): Identity()", ")"]
    outer = Sequential({"block": dense})
    assert dense.append(Conv2d(4, 1, 1, seed=2)) is dense and dense[2].weight.name == "block.2.weight"
    dense[1] = Conv2d(4, 4, 1, seed=3)
    assert dense[1].bias.name == "block.1.bias" and "block.1.weight" in outer.state_dict()
    assert outer(np.ones((1, 4, 2, 2), np.float32)).shape == (1, 2 + 4 + 1, 2, 2)
    with pytest.raises(IndexError, match=r"Concat index 3 is out of range: it holds 3 branches"):
        dense[3]
    with pytest.raises(KeyError, match=r"Concat has no branch named 'b5'; its branches are named 'b1', 'b2'"):
        block["b5"]
    with pytest.raises(TypeError, match="Concat\\[0\\] = ...: a int is not a gpuconv Layer"):
        dense[0] = 3


def test_summary_gives_each_branch_then_the_join():
    text = Sequential({"stem": Conv2d(3, 4, 3, padding=1, seed=0), "dense": dense_layer(4, 2, seed=1)}).summary(
        (3, 6, 6))
    rows = [line.split()[:4] for line in text.splitlines()[2:-3]]
    assert rows == [["stem", "Conv2d", "4x6x6", "112"], ["dense.0.0", "BatchNorm2d", "4x6x6", "8"],
                    ["dense.0.1", "ReLU", "4x6x6", "0"], ["dense.0.2", "Conv2d", "2x6x6", "72"],
                    ["dense.1", "Identity", "4x6x6", "0"], ["dense", "Concat", "(2", "branches)"]]
    assert text.splitlines()[7].split()[-3:] == ["6x6x6", "0", "0"]  # the join: no parameters, no FLOPs
    assert "Concat (4 branches)" in inception(3).summary((3, 4, 4)).splitlines()[-4]


def test_branches_that_disagree_or_bad_arguments_are_refused_by_name():
    x = np.zeros((2, 3, 6, 6), np.float32)
    pooled = Concat(Conv2d(3, 2, 3, padding=1), MaxPool2d(3, 1))
    with pytest.raises(ValueError, match=r"branch '0' \(2, 2, 6, 6\), branch '1' \(2, 3, 4, 4\); joining channels "
                                         r"needs the same batch size, height and width .*\(padding='same'"):
        pooled(x)
    flat = Sequential({"cat": Concat(Flatten(), Identity())})
    with pytest.raises(ValueError, match=r"in layer 'cat' \(Concat\): Concat: the branches give shapes branch '0' "
                                         r"\(2, 108\), branch '1' \(2, 3, 6, 6\)"):
        flat(x)

    class Float64(Identity):
        def forward(self, x):
            return x.astype(np.float64)

    with pytest.raises(TypeError, match=r"dtypes branch '0' float32, branch '1' float64; .* one dtype"):
        Concat(Identity(), Float64())(x)
    with pytest.raises(ValueError, match=r"in layer '0\.0' \(Conv2d.*x has C=3 channels"):
        Concat(Sequential(Conv2d(4, 2, 1)))(x)  # a branch's own error names its path
    with pytest.raises(ValueError, match=r"Concat\(dim=2\): branches are joined along the channels only, dim=1"):
        Concat(Identity(), dim=2)
    with pytest.raises(ValueError, match=r"Concat\(\) needs at least one branch"):
        Concat()
    with pytest.raises(TypeError, match=r"Concat\(\*branches\) \(Concat\(a, b\), not Concat\(\[a, b\]\)\)"):
        Concat([Identity(), Identity()])
    with pytest.raises(TypeError, match="branch '1' is a function, not a gpuconv Layer"):
        Concat(Identity(), lambda x: x)
    block = dense_layer(3, 2)
    y = block(x)
    with pytest.raises(ValueError, match=r"dy has shape \(2, 4, 6, 6\), but the forward joined 5 channels \(2 \+ 3"):
        block.backward(y[:, :4])
    block(x)
    block(x)  # used twice in one forward: the first call's cache is gone
    block.backward(y)
    with pytest.raises(RuntimeError, match="used twice in one forward pass"):
        block.backward(y)


def test_changes_while_a_graph_holds_the_model_are_refused():
    net = Sequential(Conv2d(3, 2, 1, seed=0), dense_layer(2, 2, seed=1), Flatten(), Linear(4 * 4, 3, seed=2))
    opt = SGD(net.parameters(), lr=0.1)
    x = np.random.default_rng(5).standard_normal((2, 3, 2, 2)).astype(np.float32)
    step = StepGraph.for_optimizer(lambda x, y: amp.training_step(net, opt, x, y), opt, net)
    step(x, np.array([0, 1]))
    held = "the branches cannot change while a captured training step"
    with pytest.raises(RuntimeError, match=f"Concat.append: {held}"):
        net[1].append(Identity())
    with pytest.raises(RuntimeError, match=rf"Concat\[1\] = ...: {held}"):
        net[1][1] = Identity()
    with pytest.raises(RuntimeError, match="load_state_dict: the state cannot be replaced while"):
        net.load_state_dict(net.state_dict())
    assert len(net[1]) == 2
    step.release()
    net[1][1] = Identity()
    assert net[1].append(Identity()) is net[1] and len(net[1]) == 3


def test_a_densenet_trains_with_the_trainer_on_a_captured_step():
    """A DenseNet-style model, fitted by the Trainer with cuda_graph=True (its StepGraph holds the
    Concat blocks; on the host it runs the same step) on one small batch: the loss falls."""
    from gpuconv.trainer import Trainer
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((8, 3, 8, 8)).astype(np.float32), rng.integers(0, 10, 8)
    model = dense_net(seed=7)
    trainer = Trainer(model, SGD(model.parameters(), lr=0.1, momentum=0.9), progress=False, cuda_graph=True)
    losses = [r["train_loss"] for r in trainer.fit([(x, y)], 8)]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.8 * losses[0], losses
    assert trainer._graph.model is model and not model[1][0]._held()  # released after the fit


def test_the_join_and_the_gradient_sum_run_on_the_arrays_gpu(fake_second_gpu):
    """CuPy allocates, copies and adds on its current device: the output, dy's parts and the sum
    of the branches' gradients of a Concat whose arrays are on cuda:1 are made there while cuda:0
    is current; a channels_last input is joined with no transposing copy (one allocation). CuPy is
    faked (conftest.FakeSecondGpu)."""
    gpu = fake_second_gpu
    block = Concat(Identity(), Identity())
    x = gpuconv.to_channels_last(gpu.on(np.arange(16, dtype=np.float32).reshape(1, 4, 2, 2)))
    del gpu.calls[:]
    y = block(x)
    assert gpu.calls == [("empty", 1)] and gpuconv.is_channels_last(y) and y.shape == (1, 8, 2, 2)
    dx = block.backward(y)
    assert {on for _, on in gpu.calls} == {1} and gpu.current == [0] and ("add", 1) in gpu.calls
    np.testing.assert_array_equal(np.asarray(dx), 2 * np.asarray(x))


def test_a_densenet_layer_and_an_inception_block_match_torch():
    """torch.cat([f(x), x], 1) (kuangliu's CIFAR DenseNet Bottleneck) and an Inception block with
    branches b1..b4 (its state dict loaded as it is): the same y, dx and weight gradients."""
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    class Bottleneck(tnn.Module):
        def __init__(self, c, growth):
            super().__init__()
            self.bn1, self.conv1 = tnn.BatchNorm2d(c), tnn.Conv2d(c, 4 * growth, 1, bias=False)
            self.bn2, self.conv2 = tnn.BatchNorm2d(4 * growth), tnn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

        def forward(self, x):
            out = self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))
            return torch.cat([out, x], 1)

    class Inception(tnn.Module):
        def __init__(self, c):
            super().__init__()
            self.b1 = tnn.Sequential(tnn.Conv2d(c, 2, 1))
            self.b2 = tnn.Sequential(tnn.Conv2d(c, 2, 1), tnn.ReLU(), tnn.Conv2d(2, 3, 3, padding=1))
            self.b3 = tnn.Sequential(tnn.Conv2d(c, 1, 1), tnn.ReLU(), tnn.Conv2d(1, 2, 3, padding=1), tnn.ReLU(),
                                     tnn.Conv2d(2, 2, 3, padding=1))
            self.b4 = tnn.Sequential(tnn.Conv2d(c, 1, 3, padding=1))

        def forward(self, x):
            return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)

    torch.manual_seed(0)
    ours_dense = Concat(Sequential(BatchNorm2d(6), ReLU(), Conv2d(6, 8, 1, bias=False), BatchNorm2d(8), ReLU(),
                                   Conv2d(8, 2, 3, padding=1, bias=False)), Identity())
    keys = {"bn1": "0.0", "conv1": "0.2", "bn2": "0.3", "conv2": "0.5"}  # (the Inception's are the same)
    rng = np.random.default_rng(8)
    for theirs, ours, rename, c in [(Bottleneck(6, 2), ours_dense, lambda k: keys[k[:k.index(".")]] + k[k.index("."):],
                                     6), (Inception(3), inception(3), lambda k: k, 3)]:
        state = {rename(k): v for k, v in theirs.state_dict().items()}
        assert ours.load_state_dict(state) == ([], [])
        x = rng.standard_normal((2, c, 5, 5)).astype(np.float32)
        xt = torch.tensor(x, requires_grad=True)
        yt = theirs(xt)
        dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
        yt.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(ours(x), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), rtol=1e-4, atol=1e-5)
        grads = {rename(k): p.grad.numpy() for k, p in theirs.named_parameters()}
        for name, p in ours.named_parameters():
            np.testing.assert_allclose(p.grad, grads[name], rtol=1e-4, atol=1e-5, err_msg=name)
