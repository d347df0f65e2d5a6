"""kuangliu/pytorch-cifar's PNASNetA and PNASNetB: parameter counts from the architecture, structure
and keys, his model in torch, the cells on the backend and by central differences, seeding."""
from __future__ import annotations

import numpy as np
import pytest
from test_models import (_assert_gradients_match, _blocks_match_numpy_on_the_backend, _images,
                         _matches_kuangliu_in_torch, _through_stages)

from gpuconv import models
from gpuconv.gradcheck import directional_derivative, relative_error
from gpuconv.layers import Concat, MaxPool2d, Residual

_PUBLISHED = {"A": 130_646, "B": 451_626}  # his models' counts in torch (checked below where torch is)
_WIDTH = {"A": 44, "B": 32}


def _pnasnet_parameters(cell_type, num_classes=10, in_channels=3):
    """From the architecture: bias-free convs, BN (weight, bias). The stem conv3x3(w) + BN; per cell
    of c channels from c_in: each separable kxk conv c_in -> c in c_in groups (c_in * (c / c_in) * k *
    k weights) + BN (A: a 7x7; B: 7x7, 3x3 and 5x5), at stride 2 the pooled branch's 1x1 + BN, and
    cell B's 1x1 from 2c + BN; a linear head from 4w."""
    w = _WIDTH[cell_type]
    kernels = (7,) if cell_type == "A" else (7, 3, 5)
    total, c_in = in_channels * w * 9 + 2 * w, w
    for c, cells, stride in ((w, 6, 1), (2 * w, 1, 2), (2 * w, 6, 1), (4 * w, 1, 2), (4 * w, 6, 1)):
        for _ in range(cells):
            total += sum(c * k * k + 2 * c for k in kernels)
            total += (c_in * c + 2 * c) if stride == 2 else 0
            total += (2 * c * c + 2 * c) if cell_type == "B" else 0
            c_in = c
    return total + c_in * num_classes + num_classes


def _kuangliu_pnasnet_key(name):
    """gpuconv's key -> kuangliu's: without the sums' ``sum``, ``inner`` and ``shortcut`` and cell B's
    ``cat``, ``b1``, ``b2``; the pooled branch's 1x1 and BN are his cell's ``conv1``, ``bn1``."""
    drop = {"sum", "inner", "shortcut", "cat", "b1", "b2"}
    return ".".join(p for p in name.split(".") if p not in drop)


@pytest.mark.parametrize("cell_type", ["A", "B"])
def test_parameter_counts_follow_the_architecture(cell_type):
    assert models.pnasnet(cell_type).num_parameters() == _pnasnet_parameters(cell_type) == _PUBLISHED[cell_type]
    assert f"{_PUBLISHED[cell_type]:,}" in " ".join(models.pnasnet.__doc__.split())
    assert models.pnasnet(cell_type, num_classes=7, in_channels=1).num_parameters() == \
        _pnasnet_parameters(cell_type, 7, 1)


def test_structure_shapes_and_keys():
    """Each stage's output; the stride-2 cells single cells (his ``layer2``, ``layer4``); a separable
    conv in as many groups as its input's channels (two outputs each where it doubles them); the
    pooled branch a padded 3x3 max pool, with a 1x1 + BN at stride 2; cell B's join; his keys through
    the mapping, without torch."""
    x = _images(2)
    net = models.pnasnet("B")
    assert list(net._layers) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "layer5", "pool", "flatten",
                                 "linear"]
    _through_stages(net, x, [("conv1", (32, 32, 32)), ("bn1", (32, 32, 32)), ("layer1", (32, 32, 32)),
                             ("layer2", (64, 16, 16)), ("layer3", (64, 16, 16)), ("layer4", (128, 8, 8)),
                             ("layer5", (128, 8, 8)), ("pool", (128, 1, 1))])
    down = net["layer2"]
    assert list(down._layers) == ["cat", "conv2", "bn2"] and isinstance(down["cat"], Concat)
    b1, b2 = down["cat"]["b1"]["sum"], down["cat"]["b2"]["sum"]
    assert isinstance(b1, Residual) and isinstance(b2, Residual)
    sep7 = b1.inner["sep_conv1"]["conv1"]
    assert (sep7.groups, sep7.kernel_size, sep7.stride, sep7.padding) == (32, (7, 7), (2, 2), (3, 3))
    assert sep7.weight.shape == (64, 1, 7, 7)
    assert b1.shortcut["sep_conv2"]["conv1"].kernel_size == (3, 3) and b2.inner["sep_conv3"]["conv1"].padding == (2, 2)
    pool = b2.shortcut["pool"]
    assert isinstance(pool, MaxPool2d) and (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    assert b2.shortcut["conv1"].weight.shape == (64, 32, 1, 1) and down["conv2"].weight.shape == (64, 128, 1, 1)
    cell = net["layer1"][0]["cat"]["b2"]["sum"].shortcut
    assert list(cell._layers) == ["pool"] and cell["pool"].stride == 1
    keys = {_kuangliu_pnasnet_key(k) for k in net.state_dict()}
    assert {"layer1.0.sep_conv1.conv1.weight", "layer1.0.sep_conv2.bn1.bias", "layer1.5.sep_conv3.conv1.weight",
            "layer1.0.conv2.weight", "layer1.0.bn2.running_mean", "layer2.conv1.weight", "layer2.bn1.weight",
            "layer4.sep_conv1.conv1.weight", "layer5.5.bn2.bias", "linear.weight"} <= keys
    net = models.pnasnet("A")
    assert list(net["layer1"][0]._layers) == ["sum", "relu"]
    assert _kuangliu_pnasnet_key("layer2.sum.shortcut.conv1.weight") in {_kuangliu_pnasnet_key(k)
                                                                         for k in net.state_dict()}
    for bad in ("C", "a", 1, None):
        with pytest.raises(ValueError, match="pnasnet: cell_type must be 'A' or 'B'"):
            models.pnasnet(bad)
    with pytest.raises(ValueError, match="pnasnet: in_channels must be a positive int"):
        models.pnasnet(in_channels=0)


@pytest.mark.parametrize("cell_type", ["A", "B"])
def test_seeding(cell_type):
    a, b, c = (models.pnasnet(cell_type, seed=s) for s in (0, 0, 1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    weights = [k for k in sa if k.endswith("weight") and sa[k].ndim > 1]
    assert all(not np.array_equal(sa[k], sc[k]) for k in weights)
    assert len({sa[k].tobytes() for k in weights}) == len(weights)


def _kuangliu_pnasnet(torch, cell_type):
    """kuangliu/pytorch-cifar's models/pnasnet.py (SepConv, CellA, CellB, PNASNet), as published."""
    nn, F = torch.nn, torch.nn.functional

    class SepConv(nn.Module):
        '''Separable Convolution.'''
        def __init__(self, in_planes, out_planes, kernel_size, stride):
            super(SepConv, self).__init__()
            self.conv1 = nn.Conv2d(in_planes, out_planes,
                                   kernel_size, stride,
                                   padding=(kernel_size-1)//2,
                                   bias=False, groups=in_planes)
            self.bn1 = nn.BatchNorm2d(out_planes)

        def forward(self, x):
            return self.bn1(self.conv1(x))

    class CellA(nn.Module):
        def __init__(self, in_planes, out_planes, stride=1):
            super(CellA, self).__init__()
            self.stride = stride
            self.sep_conv1 = SepConv(in_planes, out_planes, kernel_size=7, stride=stride)
            if stride == 2:
                self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, padding=0, bias=False)
                self.bn1 = nn.BatchNorm2d(out_planes)

        def forward(self, x):
            y1 = self.sep_conv1(x)
            y2 = F.max_pool2d(x, kernel_size=3, stride=self.stride, padding=1)
            if self.stride == 2:
                y2 = self.bn1(self.conv1(y2))
            return F.relu(y1+y2)

    class CellB(nn.Module):
        def __init__(self, in_planes, out_planes, stride=1):
            super(CellB, self).__init__()
            self.stride = stride
            # Left branch
            self.sep_conv1 = SepConv(in_planes, out_planes, kernel_size=7, stride=stride)
            self.sep_conv2 = SepConv(in_planes, out_planes, kernel_size=3, stride=stride)
            # Right branch
            self.sep_conv3 = SepConv(in_planes, out_planes, kernel_size=5, stride=stride)
            if stride == 2:
                self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, padding=0, bias=False)
                self.bn1 = nn.BatchNorm2d(out_planes)
            # Reduce channels
            self.conv2 = nn.Conv2d(2*out_planes, out_planes, kernel_size=1, stride=1, padding=0, bias=False)
            self.bn2 = nn.BatchNorm2d(out_planes)

        def forward(self, x):
            # Left branch
            y1 = self.sep_conv1(x)
            y2 = self.sep_conv2(x)
            # Right branch
            y3 = F.max_pool2d(x, kernel_size=3, stride=self.stride, padding=1)
            if self.stride == 2:
                y3 = self.bn1(self.conv1(y3))
            y4 = self.sep_conv3(x)
            # Concat & reduce channels
            b1 = F.relu(y1+y2)
            b2 = F.relu(y3+y4)
            y = torch.cat([b1, b2], 1)
            return F.relu(self.bn2(self.conv2(y)))

    class PNASNet(nn.Module):
        def __init__(self, cell_type, num_cells, num_planes):
            super(PNASNet, self).__init__()
            self.in_planes = num_planes
            self.cell_type = cell_type

            self.conv1 = nn.Conv2d(3, num_planes, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(num_planes)

            self.layer1 = self._make_layer(num_planes, num_cells=6)
            self.layer2 = self._downsample(num_planes*2)
            self.layer3 = self._make_layer(num_planes*2, num_cells=6)
            self.layer4 = self._downsample(num_planes*4)
            self.layer5 = self._make_layer(num_planes*4, num_cells=6)

            self.linear = nn.Linear(num_planes*4, 10)

        def _make_layer(self, planes, num_cells):
            layers = []
            for _ in range(num_cells):
                layers.append(self.cell_type(self.in_planes, planes, stride=1))
                self.in_planes = planes
            return nn.Sequential(*layers)

        def _downsample(self, planes):
            layer = self.cell_type(self.in_planes, planes, stride=2)
            self.in_planes = planes
            return layer

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layer1(out)
            out = self.layer2(out)
            out = self.layer3(out)
            out = self.layer4(out)
            out = self.layer5(out)
            out = F.avg_pool2d(out, 8)
            out = self.linear(out.view(out.size(0), -1))
            return out

    if cell_type == "A":
        return PNASNet(CellA, num_cells=6, num_planes=44)
    return PNASNet(CellB, num_cells=6, num_planes=32)


@pytest.mark.parametrize("cell_type", ["A", "B"])
def test_matches_kuanglius_pnasnet_in_torch(cell_type):
    """gpuconv's weights loaded into his PNASNetA/B (torch, training mode), both in float64: the same
    logits, loss, input gradient, every weight gradient and updated running statistic, to float64
    rounding; his parameter count."""
    torch = pytest.importorskip("torch", reason="compares against kuangliu's PNASNet written in torch")
    theirs = _kuangliu_pnasnet(torch, cell_type)
    assert sum(p.numel() for p in theirs.parameters()) == _PUBLISHED[cell_type]
    grads = _matches_kuangliu_in_torch(torch, models.pnasnet(cell_type, seed=3), theirs, _kuangliu_pnasnet_key)
    _assert_gradients_match(grads)


def _cells():
    from gpuconv.models import _mobile
    # cell B from 4 to 8 channels at stride 2 (separable convs two outputs per input channel), then a
    # stride-1 cell A of 8
    return [_mobile._pnasnet_cell("B", 4, 8, 2, [1, 2, 3, 4, 5]), _mobile._pnasnet_cell("A", 8, 8, 1, [6, 7])]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_pnasnet_cells_on_the_backend(backend, channels_last):
    """A stride-2 cell B and a stride-1 cell A, narrowed, forward and backward on the backend in
    float64 on an 8x8 input, NCHW and channels_last: the same output, input and weight gradients as
    NCHW on NumPy, the grouped 7x7/5x5/3x3 convolutions and the padded max pools through their
    kernels."""
    x = np.random.default_rng(4).standard_normal((2, 4, 8, 8))
    dy = np.random.default_rng(5).standard_normal((2, 8, 4, 4))
    y, dx, grads = _blocks_match_numpy_on_the_backend(_cells(), x, dy, backend, channels_last)
    assert y.shape == (2, 8, 4, 4) and dx.shape == x.shape
    assert len(grads) == 5 * 3 + 3  # cell B: 5 convs, each with a BN; cell A: its 7x7 and BN (no 1x1 at stride 1)
    if backend.name != "numpy":
        backend.assert_kernels_ran("conv2d_grouped_forward", "conv2d_grouped_backward_weight", "max_pool")


def test_pnasnet_cells_directional_derivative_float64():
    """The two cells above, pooled into 8 logits, in float64: every parameter and the input along one
    direction against central differences (the sums' gradients to both branches, the max pools' to
    their argmax, the join's split)."""
    from gpuconv.layers import AvgPool2d, Flatten, Sequential
    net = Sequential(*_cells(), AvgPool2d(4), Flatten())
    net.astype(np.float64)
    x = np.random.default_rng(4).standard_normal((3, 4, 8, 8))
    analytic, numeric = directional_derivative(net, x, np.array([1, 7, 4]), h=1e-7, seed=3)
    assert relative_error(np.array(analytic), np.array(numeric)) < 1e-6
