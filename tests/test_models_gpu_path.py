"""The model zoo's training step (bf16 channels_last, fp32 NCHW) on the GPU's Python path, on a CPU.

tests/test_layout.py's harness runs the path a GPU takes (``kernel_target`` 'cuda', arrays of a fake
CuPy whose ufuncs make C-contiguous results as CuPy's do, every kernel launch redirected to the
simulator): each network, narrowed as tests/test_models.py narrows it, takes one
``amp.training_step`` there and one on 'sim' from the same weights. The two give the same bits
(loss, logits, every gradient and updated weight: the same kernels on the same data), and the GPU's
step converts nothing: no activation or gradient copied between NCHW and channels_last (a pass
over memory more on a GPU), and every layer's 4-D output and input gradient stays in the step's
layout (CuPy's ufuncs, unlike NumPy's, make C-contiguous results: a channels_last sum made by
``a + b`` came out NCHW on a GPU alone).

The networks whose published widths make a step slow on the simulator (20-35 s: senet18,
mobilenetv2, efficientnetb0, googlenet, simpledla, dla, vgg19, dpn26) are represented by their
blocks in ``blocks`` and by a narrowed DPN.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import amp, kernels, layout, models
from gpuconv.layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU,
                            Sequential)
from gpuconv.models import _branches, _mobile, _resnets
from gpuconv.optim import SGD
from test_layout import _count_conversions, _fake_gpu_kernels_on_the_simulator, _onto

_DPN_CFG = {"in_planes": (32, 32, 32, 32), "out_planes": (8, 8, 16, 16), "num_blocks": (2, 1, 1, 1),
            "dense_depth": (4, 4, 8, 8)}  # (test_models.py's narrowed DPN: 3x3s in 32 groups of one channel)


def _blocks():
    """The ops of the slow networks in one small one: squeeze-excitation gates (senet18's basic block,
    efficientnetb0's MBConv), depthwise convolutions and inverted residuals (mobilenetv2), an Inception
    block (googlenet), a DLA tree (simpledla), adaptive pooling, dropout, a linear head."""
    s = list(range(1, 40))
    return Sequential(Conv2d(3, 16, 3, padding=1, bias=False, seed=s[0]), BatchNorm2d(16), ReLU(),
                      _resnets._basic_block(16, 16, 1, s[1:6], squeeze_excitation=True),
                      _mobile._mbconv_block(16, 16, 3, 1, 2, s[6:10]),
                      _mobile._inverted_residual(16, 24, 2, 2, s[10:14]),
                      MaxPool2d(2),
                      _branches._inception(24, 4, 4, 8, 2, 4, 4, s[14:21]),
                      _resnets._dla_tree(20, 16, 1, 1, iter(s[21:30])),
                      AdaptiveAvgPool2d(1), Flatten(), Dropout(0.2, seed=s[30]), Linear(16, 10, seed=s[31]))


NETWORKS = {
    "resnet18": lambda: models.resnet18(width=4, seed=1),
    "shufflenetv2": lambda: models.shufflenetv2(net_size=0.5, seed=1),
    "resnext29": lambda: models.resnext29(cardinality=2, bottleneck_width=4, seed=1),
    "densenet121": lambda: models.densenet121(growth_rate=4, seed=1),
    "pnasneta": lambda: models.pnasnet("A", seed=1),
    "dpn": lambda: _branches._dpn("dpn", _DPN_CFG, 10, 1, 3),
    "lenet": lambda: models.lenet(seed=1),
    "airbench94": lambda: models.airbench94(widths=(4, 8, 8), seed=1),
    "blocks": _blocks,
}
# Transposing copies the network cannot do without: lenet flattens 16 x 5 x 5 maps in (C, H, W) order
# (a gathering copy in the forward, as PyTorch's), and its gradient is put back channels_last.
NEEDED = {"lenet": [("to_channels_last", (2, 16, 5, 5))]}


def _state(model, loss, logits):
    """The step's loss and logits and every parameter's gradient and updated value, as float64 host arrays."""
    out = {"loss": loss, "logits": logits}
    for i, p in enumerate(model.parameters()):
        out[f"grad {i} {p.name}"], out[f"data {i} {p.name}"] = p.grad, p.data
    return {k: np.asarray(v).view(np.ndarray).astype(np.float64) for k, v in out.items()}


def _step(model, x, y, precision):
    with kernels.autotuning(False):
        loss, logits = amp.training_step(model, SGD(model.parameters(), lr=0.01, momentum=0.9), x, y, precision)
    return _state(model, loss, logits)


def _watch_layouts(net, channels_last):
    """The list of the layers whose forward output or backward dx is a 4-D array whose strides do not
    follow the step's layout (which the next layer would convert, or run on in the other), filled as
    ``net`` runs."""
    nchw = []
    for layer in net.modules():
        for method in ("forward", "backward"):
            def watched(*args, _run=getattr(layer, method), _where=f"{type(layer).__name__}.{method}", **kwargs):
                out = _run(*args, **kwargs)
                # (a channel slice of an array in the step's layout passes: a Concat's Identity's gradient)
                if getattr(out, "ndim", None) == 4 and (not layout._strides_allow(out, layout.NHWC) if channels_last
                                                        else layout.is_channels_last(out)):
                    nchw.append((_where, tuple(out.shape)))
                return out
            setattr(layer, method, watched)
    return nchw


@pytest.mark.parametrize("name,precision", [(name, "bf16") for name in NETWORKS] +
                         [(name, "fp32") for name in ("resnet18", "shufflenetv2", "dpn", "blocks")])
def test_a_training_step_on_the_gpu_path_converts_nothing_and_gives_the_sims_bits(
        name, precision, fake_second_gpu, monkeypatch):
    """bf16 steps channels_last, fp32 ones NCHW (amp.channels_last_for), each in its layout throughout."""
    channels_last = amp.channels_last_for(precision)
    rng = np.random.default_rng(2)
    x_host = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    x_host = gpuconv.to_channels_last(x_host) if channels_last else x_host
    y_host = rng.integers(0, 10, 2)
    with gpuconv.default_device("sim"):
        want = _step(NETWORKS[name](), x_host, y_host, precision)
    gpu = fake_second_gpu
    _fake_gpu_kernels_on_the_simulator(gpu, monkeypatch)
    net = _onto(gpu, NETWORKS[name]())
    copies, other_layout = _count_conversions(monkeypatch), _watch_layouts(net, channels_last)
    got = _step(net, gpu.on(x_host), gpu.on(y_host), precision)
    assert isinstance(net.parameters()[0].data, gpu.OnGpu)
    assert copies == (NEEDED.get(name, []) if channels_last else []), copies
    assert other_layout == [], other_layout
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}: {key}")
