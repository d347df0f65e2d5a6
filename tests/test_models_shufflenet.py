"""kuangliu/pytorch-cifar's ShuffleNetG2 and ShuffleNetG3: parameter counts from the architecture,
structure and keys, his model in torch, the units on the backend, seeding."""
from __future__ import annotations

import numpy as np
import pytest
from test_models import (_assert_gradients_match, _blocks_match_numpy_on_the_backend, _images,
                         _matches_kuangliu_in_torch, _through_stages)

from gpuconv import models
from gpuconv.layers import AvgPool2d, ChannelShuffle, Concat, Residual

# His ShuffleNetG2() and ShuffleNetG3() cfgs: groups -> (out_planes, num_blocks).
_CFG = {2: ((200, 400, 800), (4, 8, 4)), 3: ((240, 480, 960), (4, 8, 4))}
_PUBLISHED = {2: 887_582, 3: 862_768}  # his models' counts in torch (checked below where torch is)


def _shufflenet_parameters(groups, num_classes=10, in_channels=3):
    """From the architecture: bias-free convs, BN (weight, bias). The stem conv1x1(24) + BN; per unit
    a 1x1 conv to a quarter of its output in g groups (1 on the stem's 24 channels), a depthwise 3x3,
    a 1x1 conv in ``groups`` groups, each with a BN; a stride-2 unit's output the stage's channels
    less its input's (the pooled input makes up the rest); a linear head."""
    out_planes, num_blocks = _CFG[groups]
    total, c_in = in_channels * 24 + 2 * 24, 24
    for c, n in zip(out_planes, num_blocks):
        for i in range(n):
            c_out = c - c_in if i == 0 else c
            mid, g = c_out // 4, 1 if c_in == 24 else groups
            total += c_in * mid // g + 2 * mid + mid * 9 + 2 * mid + mid * c_out // groups + 2 * c_out
            c_in = c
    return total + c_in * num_classes + num_classes


@pytest.mark.parametrize("groups", [2, 3])
def test_parameter_counts_follow_the_architecture(groups):
    assert models.shufflenet(groups).num_parameters() == _shufflenet_parameters(groups) == _PUBLISHED[groups]
    assert f"{_PUBLISHED[groups]:,}" in " ".join(models.shufflenet.__doc__.split())
    assert models.shufflenet(groups, num_classes=7, in_channels=1).num_parameters() == \
        _shufflenet_parameters(groups, 7, 1)


def test_structure_shapes_and_keys():
    """Each stage's output, the two unit forms (a stride-2 unit's Concat of the branch and a 3x3
    average pool, a stride-1 unit's Residual, each then a ReLU), the groups of each convolution and
    shuffle (the first unit's first 1x1 in one group), and his keys through the mapping."""
    x = _images(2)
    net = models.shufflenet(3)
    assert list(net._layers) == ["conv1", "bn1", "layer1", "layer2", "layer3", "pool", "flatten", "linear"]
    assert net["conv1"].kernel_size == (1, 1)
    _through_stages(net, x, [("conv1", (24, 32, 32)), ("bn1", (24, 32, 32)), ("layer1", (240, 16, 16)),
                             ("layer2", (480, 8, 8)), ("layer3", (960, 4, 4)), ("pool", (960, 1, 1))])
    assert [len(net[f"layer{k}"]) for k in (1, 2, 3)] == [4, 8, 4]
    first = net["layer1"][0]
    assert list(first._layers) == ["cat", "relu"] and isinstance(first["cat"], Concat)
    branch, pool = first["cat"]["out"], first["cat"]["shortcut"]
    assert isinstance(pool, AvgPool2d) and (pool.kernel_size, pool.stride, pool.padding, pool.count_include_pad) == \
        (3, 2, 1, True)
    assert list(branch._layers) == ["conv1", "bn1", "shuffle1", "conv2", "bn2", "conv3", "bn3"]
    assert (branch["conv1"].groups, branch["shuffle1"].groups, branch["conv3"].groups) == (1, 1, 3)
    assert branch["conv1"].weight.shape == (54, 24, 1, 1) and branch["conv3"].weight.shape == (216, 18, 1, 1)
    assert branch["conv2"].groups == 54 and branch["conv2"].stride == (2, 2)
    second = net["layer2"][1]
    assert list(second._layers) == ["res", "relu"] and isinstance(second["res"], Residual)
    inner = second["res"].inner
    assert (inner["conv1"].groups, inner["conv3"].groups) == (3, 3) and isinstance(inner["shuffle1"], ChannelShuffle)
    assert inner["shuffle1"].groups == 3 and inner["conv2"].weight.shape == (120, 1, 3, 3)
    keys = {_kuangliu_shufflenet_key(k) for k in net.state_dict()}
    assert {"layer1.0.conv1.weight", "layer1.0.bn3.running_mean", "layer1.1.conv2.weight", "layer3.3.bn3.bias",
            "conv1.weight", "linear.bias"} <= keys and not any(".cat." in k or ".res." in k for k in keys)
    for bad in (1, 4, True, "2"):
        with pytest.raises(ValueError, match="shufflenet: groups must be 2 or 3"):
            models.shufflenet(bad)
    with pytest.raises(ValueError, match="shufflenet: in_channels must be a positive int"):
        models.shufflenet(in_channels=0)


def test_seeding():
    a, b, c = models.shufflenet(seed=0), models.shufflenet(seed=0), models.shufflenet(seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    weights = [k for k in sa if k.endswith("weight") and sa[k].ndim > 1]
    assert all(not np.array_equal(sa[k], sc[k]) for k in weights)
    assert len({sa[k].tobytes() for k in weights}) == len(weights)


def _kuangliu_shufflenet_key(name):
    """gpuconv's key -> kuangliu's (a unit's Concat ``cat.out`` or Residual ``res.inner`` is a level of
    names of its own here)."""
    return name.replace(".cat.out.", ".").replace(".res.inner.", ".")


def _kuangliu_shufflenet(torch, groups):
    """kuangliu/pytorch-cifar's models/shufflenet.py as published, but for ``mid_planes =
    out_planes//4`` where his file has ``out_planes/4`` (a float, which nn.Conv2d refuses)."""
    nn, F = torch.nn, torch.nn.functional

    class ShuffleBlock(nn.Module):
        def __init__(self, groups):
            super(ShuffleBlock, self).__init__()
            self.groups = groups

        def forward(self, x):
            '''Channel shuffle: [N,C,H,W] -> [N,g,C/g,H,W] -> [N,C/g,g,H,w] -> [N,C,H,W]'''
            N, C, H, W = x.size()
            g = self.groups
            return x.view(N, g, C//g, H, W).permute(0, 2, 1, 3, 4).reshape(N, C, H, W)

    class Bottleneck(nn.Module):
        def __init__(self, in_planes, out_planes, stride, groups):
            super(Bottleneck, self).__init__()
            self.stride = stride

            mid_planes = out_planes//4
            g = 1 if in_planes == 24 else groups
            self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
            self.bn1 = nn.BatchNorm2d(mid_planes)
            self.shuffle1 = ShuffleBlock(groups=g)
            self.conv2 = nn.Conv2d(mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1,
                                   groups=mid_planes, bias=False)
            self.bn2 = nn.BatchNorm2d(mid_planes)
            self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
            self.bn3 = nn.BatchNorm2d(out_planes)

            self.shortcut = nn.Sequential()
            if stride == 2:
                self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.shuffle1(out)
            out = F.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            res = self.shortcut(x)
            out = F.relu(torch.cat([out, res], 1)) if self.stride == 2 else F.relu(out+res)
            return out

    class ShuffleNet(nn.Module):
        def __init__(self, cfg):
            super(ShuffleNet, self).__init__()
            out_planes = cfg['out_planes']
            num_blocks = cfg['num_blocks']
            groups = cfg['groups']

            self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
            self.bn1 = nn.BatchNorm2d(24)
            self.in_planes = 24
            self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
            self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
            self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
            self.linear = nn.Linear(out_planes[2], 10)

        def _make_layer(self, out_planes, num_blocks, groups):
            layers = []
            for i in range(num_blocks):
                stride = 2 if i == 0 else 1
                cat_planes = self.in_planes if i == 0 else 0
                layers.append(Bottleneck(self.in_planes, out_planes-cat_planes, stride=stride, groups=groups))
                self.in_planes = out_planes
            return nn.Sequential(*layers)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layer1(out)
            out = self.layer2(out)
            out = self.layer3(out)
            out = F.avg_pool2d(out, 4)
            out = out.view(out.size(0), -1)
            out = self.linear(out)
            return out

    out_planes, num_blocks = _CFG[groups]
    return ShuffleNet({'out_planes': list(out_planes), 'num_blocks': list(num_blocks), 'groups': groups})


@pytest.mark.parametrize("groups", [2, 3])
def test_matches_kuanglius_shufflenet_in_torch(groups):
    """gpuconv's weights loaded into his ShuffleNetG2/G3 (torch, training mode), both in float64: the
    same logits, loss, input gradient, every weight gradient and updated running statistic, to
    float64 rounding; the same parameter count as his."""
    torch = pytest.importorskip("torch", reason="compares against kuangliu's ShuffleNet written in torch")
    theirs = _kuangliu_shufflenet(torch, groups)
    assert sum(p.numel() for p in theirs.parameters()) == _PUBLISHED[groups]
    grads = _matches_kuangliu_in_torch(torch, models.shufflenet(groups, seed=3), theirs, _kuangliu_shufflenet_key)
    _assert_gradients_match(grads)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_shufflenet_units_on_the_backend(backend, channels_last):
    """A stride-2 unit (12 -> 12 + 12 channels: the branch's 12 joined to the pooled input) and a
    stride-1 unit (24 -> 24, 1x1s in 3 groups, the shuffle between them), forward and backward on the
    backend in float64 on an 8x8 input, NCHW and channels_last: the same output, input and weight
    gradients as NCHW on NumPy, the grouped and depthwise convolutions, the shuffle and the padded
    average pool through their kernels."""
    from gpuconv.models import _mobile
    x = np.random.default_rng(4).standard_normal((2, 12, 8, 8))
    dy = np.random.default_rng(5).standard_normal((2, 24, 4, 4))
    blocks = [_mobile._shuffle_unit(12, 12, 2, 3, [1, 2, 3]), _mobile._shuffle_unit(24, 24, 1, 3, [4, 5, 6])]
    y, dx, grads = _blocks_match_numpy_on_the_backend(blocks, x, dy, backend, channels_last)
    assert y.shape == (2, 24, 4, 4) and dx.shape == x.shape
    assert len(grads) == 2 * (3 + 3 * 2)  # 2 units: 3 convs, 3 BNs (weight and bias)
    if backend.name != "numpy":
        backend.assert_kernels_ran("conv2d_grouped_forward", "conv2d_grouped_backward_weight", "avg_pool")
