"""benchmarks/common.torch_mirror: every network ``gpuconv train --model`` offers, as a torch.nn
module with the same weights, computes the same training step. In float64 (the mirror
``.double()``), in training mode, the logits, the loss and every parameter gradient (compared by
gpuconv's state dict names) agree with gpuconv's NumPy path to rounding; benchmarks/bench_models.py
times the two against each other, so a mismatch would make its ratios meaningless."""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

from gpuconv import layers as L
from gpuconv import ops
from gpuconv.cli._models import AIRBENCH_MODELS, MODELS, WIDTH_MODELS, build_model

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
# The narrower versions the constructors offer, for speed (the published widths otherwise).
NARROW = {**{name: {"growth_rate": 4} for name in ("densenet121", "densenet169", "densenet201", "densenet161")},
          "resnext29": {"cardinality": 2, "bottleneck_width": 4}, "shufflenetv2": {"net_size": 0.5}}
TOL = 1e-9


def _common():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import common
    return common


def small_model(name):
    width = 4 if name in WIDTH_MODELS or name in AIRBENCH_MODELS else None
    model, _ = build_model(name, seed=3, width=width, model_kwargs=NARROW.get(name))
    return model


def _rel(got, want, floor=1e-4):
    """max |got - want| / max |want|, the scale at least ``floor`` (a gradient that is zero but for
    rounding, a bias before a batch norm's, compares at that scale)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), floor))


@pytest.fixture
def torch():
    """torch on one thread: its float64 CPU kernels spin 10-100x slower on a busy 2-core machine."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_mirror_computes_the_same_training_step(name, torch):
    common = _common()
    model = small_model(name).astype(np.float64)  # float32 weights: exact in the float32 copy the mirror makes
    mirror = common.torch_mirror(torch, model, same_dropout=True).double()
    mirror.train()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 32, 32))
    y = np.array([3, 7])
    logits = model(x)
    loss, dlogits = ops.softmax_cross_entropy(logits, y)
    model.backward(dlogits)
    t_logits = mirror(torch.from_numpy(x))
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(y))
    t_loss.backward()
    assert _rel(logits, t_logits.detach().numpy()) < TOL
    assert abs(float(loss) - t_loss.item()) < TOL * abs(t_loss.item())
    ours = dict(model.named_parameters())
    theirs = dict(mirror.named_parameters())
    assert sorted(ours) == sorted(theirs)  # gpuconv's names, every one
    assert set(model.state_dict()) <= set(mirror.state_dict())  # the buffers too (torch adds num_batches_tracked)
    for pname, p in ours.items():
        t = theirs[pname]
        assert t.requires_grad == p.requires_grad, pname
        if p.requires_grad:
            assert _rel(p.grad, t.grad.numpy()) < TOL, pname


def test_mirror_of_the_layers_no_model_uses(torch):
    """The layers beyond the zoo's: dilation and padding modes, 'same' of an even kernel, a
    transposed convolution, group norm (and its weight without bias), LP and adaptive max pooling,
    average pooling without the padding in the divisor, the other activations, Unflatten, Dropout's
    masks, a Concat of named branches and a Residual with a shortcut."""
    common = _common()
    net = L.Sequential(
        L.Conv2d(3, 4, 3, padding=2, dilation=2, padding_mode="reflect", seed=1), L.LeakyReLU(0.2),
        L.Conv2d(4, 4, 2, padding="same", padding_mode="circular", groups=2, seed=2), L.Tanh(),
        L.GroupNorm(2, 4), L.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, seed=3),
        L.GroupNorm(3, 6, bias=False), L.SiLU(),
        L.Concat({"a": L.AvgPool2d(3, 2, padding=1, count_include_pad=False, floor=True),
                  "b": L.Sequential(L.LPPool2d(2, 2), L.Sigmoid())}),
        L.Residual(L.Sequential(L.Conv2d(12, 8, 1, seed=4), L.BatchNorm2d(8, activation="gelu")),
                   shortcut=L.Conv2d(12, 8, 1, bias=False, seed=5)),
        L.AdaptiveMaxPool2d((3, 2)), L.Flatten(), L.Unflatten(1, (8, 6)), L.Flatten(), L.Dropout(0.3, seed=6),
        L.Linear(48, 10, seed=7)).astype(np.float64)
    mirror = common.torch_mirror(torch, net, same_dropout=True).double()
    x = np.random.default_rng(2).standard_normal((2, 3, 9, 9))
    y = np.array([1, 4])
    for _ in range(2):  # two steps: Dropout's second mask too
        net.zero_grad()
        mirror.zero_grad()
        logits = net(x)
        loss, dlogits = ops.softmax_cross_entropy(logits, y)
        net.backward(dlogits)
        t_logits = mirror(torch.from_numpy(x))
        torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(y)).backward()
        assert _rel(logits, t_logits.detach().numpy()) < TOL
        theirs = dict(mirror.named_parameters())
        assert sorted(theirs) == sorted(n for n, _ in net.named_parameters())
        for pname, p in net.named_parameters():
            assert _rel(p.grad, theirs[pname].grad.numpy()) < TOL, pname


def test_mirror_names_a_layer_it_has_no_counterpart_for(torch):
    class Custom(L.Layer):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="no torch counterpart for Custom"):
        _common().torch_mirror(torch, L.Sequential(L.ReLU(), Custom()))
