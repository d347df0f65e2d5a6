"""kuangliu/pytorch-cifar's DLA and LeNet: parameter counts from the architecture, structure and
keys, his models in torch, the trees on the backend, seeding."""
from __future__ import annotations

import numpy as np
import pytest
from test_models import (_assert_gradients_match, _blocks_match_numpy_on_the_backend, _images,
                         _kuangliu_basic_block, _matches_kuangliu_in_torch, _through_stages)

from gpuconv import models
from gpuconv.gradcheck import directional_derivative, relative_error
from gpuconv.layers import Concat, Identity


def _dla_parameters(num_classes=10, in_channels=3):
    """From the architecture: bias-free convs, BN (weight, bias). The three 3x3 conv - BN stages
    (16, 16, 32); per tree of c channels from c_in: its nodes (BasicBlocks: two 3x3 convs + BNs, a
    1x1 + BN projection where the stride or channels change), a root 1x1 from the joined outputs (2c
    at level 1, 4c at level 2) + BN; a level-2 tree's level-1 subtree and prev_root node; a linear
    head from 512."""
    def block(a, b, stride):
        return a * b * 9 + b * b * 9 + 4 * b + ((a * b + 2 * b) if stride != 1 or a != b else 0)

    def tree(a, c, level, stride):
        if level == 1:
            return block(a, c, stride) + block(c, c, 1) + 2 * c * c + 2 * c
        return tree(a, c, 1, stride) + block(a, c, stride) + 2 * block(c, c, 1) + 4 * c * c + 2 * c

    total = in_channels * 16 * 9 + 32 + 16 * 16 * 9 + 32 + 16 * 32 * 9 + 64
    for a, c, level, stride in ((32, 64, 1, 1), (64, 128, 2, 2), (128, 256, 2, 2), (256, 512, 1, 2)):
        total += tree(a, c, level, stride)
    return total + 512 * num_classes + num_classes


def _lenet_parameters(num_classes=10, in_channels=3):
    return (in_channels * 6 * 25 + 6) + (6 * 16 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + \
        (84 * num_classes + num_classes)


@pytest.mark.parametrize("build,derived,published", [(models.dla, _dla_parameters, 16_291_386),
                                                     (models.lenet, _lenet_parameters, 62_006)],
                         ids=["dla", "lenet"])
def test_parameter_counts_follow_the_architecture(build, derived, published):
    assert build().num_parameters() == derived() == published
    assert f"{published:,} parameters" in " ".join(build.__doc__.split())
    assert build(num_classes=7, in_channels=1).num_parameters() == derived(num_classes=7, in_channels=1)
    with pytest.raises(ValueError, match=f"{build.__name__}: in_channels must be a positive int"):
        build(in_channels=0)


def _kuangliu_dla_key(name):
    """gpuconv's dla key -> kuangliu's: without the ``join`` and ``rest`` levels of the kept outputs,
    the BasicBlocks' keys as resnet18's."""
    parts = [p for p in name.split(".") if p not in ("join", "rest")]
    return ".".join(parts).replace(".res.inner.", ".").replace(".res.shortcut.", ".shortcut.")


def test_dla_structure_shapes_and_keys():
    """Each stage's output; a level-1 tree joins its two nodes' outputs (2c channels into its root), a
    level-2 tree prev_root's, its level-1 subtree's and both nodes' (4c); his keys through the
    mapping, without torch."""
    net = models.dla()
    x = _images(2)
    _through_stages(net, x, [("base", (16, 32, 32)), ("layer1", (16, 32, 32)), ("layer2", (32, 32, 32)),
                             ("layer3", (64, 32, 32)), ("layer4", (128, 16, 16)), ("layer5", (256, 8, 8)),
                             ("layer6", (512, 4, 4))])
    assert list(net["layer3"]._layers) == ["left_node", "join", "root"]
    assert isinstance(net["layer3"]["join"]["out"], Identity) and net["layer3"]["root"]["conv"].in_channels == 128
    tree = net["layer4"]
    assert list(tree._layers) == ["join", "root"] and isinstance(tree["join"], Concat)
    assert [n for n, _ in tree["join"].named_children()] == ["prev_root", "rest"]
    assert tree["root"]["conv"].in_channels == 4 * 128
    chain = tree["join"]["rest"]
    assert list(chain._layers) == ["level_1", "join"] and list(chain["join"]["rest"]._layers) == ["left_node", "join"]
    assert tree(net["layer3"](net["layer2"](net["layer1"](net["base"](x))))).shape == (2, 128, 16, 16)
    keys = {_kuangliu_dla_key(k) for k in net.state_dict()}
    assert {"base.0.weight", "base.1.running_var", "layer3.left_node.conv1.weight",
            "layer3.left_node.shortcut.0.weight", "layer3.right_node.bn2.bias", "layer3.root.conv.weight",
            "layer4.prev_root.shortcut.1.weight", "layer4.level_1.left_node.conv1.weight",
            "layer4.level_1.root.bn.bias", "layer4.left_node.conv2.weight", "layer4.right_node.bn1.weight",
            "layer4.root.conv.weight", "layer6.right_node.conv2.weight", "linear.bias"} <= keys


def test_lenet_structure_and_keys():
    net = models.lenet()
    assert list(net.state_dict()) == [f"{n}.{p}" for n in ("conv1", "conv2", "fc1", "fc2", "fc3")
                                      for p in ("weight", "bias")]
    _through_stages(net, _images(2), [("conv1", (6, 28, 28)), ("relu1", (6, 28, 28)), ("pool1", (6, 14, 14)),
                                      ("conv2", (16, 10, 10)), ("relu2", (16, 10, 10)), ("pool2", (16, 5, 5)),
                                      ("flatten", (400,)), ("fc1", (120,)), ("relu3", (120,)), ("fc2", (84,)),
                                      ("relu4", (84,)), ("fc3", (10,))])


@pytest.mark.parametrize("build", [models.dla, models.lenet], ids=["dla", "lenet"])
def test_seeding(build):
    a, b, c = build(seed=0), build(seed=0), build(seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    weights = [k for k in sa if k.endswith("weight") and sa[k].ndim > 1]
    assert all(not np.array_equal(sa[k], sc[k]) for k in weights)
    assert len({sa[k].tobytes() for k in weights}) == len(weights)


def _kuangliu_dla(torch):
    """kuangliu/pytorch-cifar's models/dla.py (BasicBlock, Root, Tree, DLA), as published."""
    nn, F = torch.nn, torch.nn.functional
    BasicBlock = _kuangliu_basic_block(torch)

    class Root(nn.Module):
        def __init__(self, in_channels, out_channels, kernel_size=1):
            super(Root, self).__init__()
            self.conv = nn.Conv2d(
                in_channels, out_channels, kernel_size,
                stride=1, padding=(kernel_size - 1) // 2, bias=False)
            self.bn = nn.BatchNorm2d(out_channels)

        def forward(self, xs):
            x = torch.cat(xs, 1)
            out = F.relu(self.bn(self.conv(x)))
            return out

    class Tree(nn.Module):
        def __init__(self, block, in_channels, out_channels, level=1, stride=1):
            super(Tree, self).__init__()
            self.level = level
            if level == 1:
                self.root = Root(2*out_channels, out_channels)
                self.left_node = block(in_channels, out_channels, stride=stride)
                self.right_node = block(out_channels, out_channels, stride=1)
            else:
                self.root = Root((level+2)*out_channels, out_channels)
                for i in reversed(range(1, level)):
                    subtree = Tree(block, in_channels, out_channels,
                                   level=i, stride=stride)
                    self.__setattr__('level_%d' % i, subtree)
                self.prev_root = block(in_channels, out_channels, stride=stride)
                self.left_node = block(out_channels, out_channels, stride=1)
                self.right_node = block(out_channels, out_channels, stride=1)

        def forward(self, x):
            xs = [self.prev_root(x)] if self.level > 1 else []
            for i in reversed(range(1, self.level)):
                level_i = self.__getattr__('level_%d' % i)
                x = level_i(x)
                xs.append(x)
            x = self.left_node(x)
            xs.append(x)
            x = self.right_node(x)
            xs.append(x)
            out = self.root(xs)
            return out

    class DLA(nn.Module):
        def __init__(self, block=BasicBlock, num_classes=10):
            super(DLA, self).__init__()
            self.base = nn.Sequential(
                nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(16),
                nn.ReLU(True)
            )

            self.layer1 = nn.Sequential(
                nn.Conv2d(16, 16, kernel_size=3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(16),
                nn.ReLU(True)
            )

            self.layer2 = nn.Sequential(
                nn.Conv2d(16, 32, kernel_size=3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(32),
                nn.ReLU(True)
            )

            self.layer3 = Tree(block,  32,  64, level=1, stride=1)
            self.layer4 = Tree(block,  64, 128, level=2, stride=2)
            self.layer5 = Tree(block, 128, 256, level=2, stride=2)
            self.layer6 = Tree(block, 256, 512, level=1, stride=2)
            self.linear = nn.Linear(512, num_classes)

        def forward(self, x):
            out = self.base(x)
            out = self.layer1(out)
            out = self.layer2(out)
            out = self.layer3(out)
            out = self.layer4(out)
            out = self.layer5(out)
            out = self.layer6(out)
            out = F.avg_pool2d(out, 4)
            out = out.view(out.size(0), -1)
            out = self.linear(out)
            return out

    return DLA()


def _kuangliu_lenet(torch):
    """kuangliu/pytorch-cifar's models/lenet.py, as published."""
    nn, F = torch.nn, torch.nn.functional

    class LeNet(nn.Module):
        def __init__(self):
            super(LeNet, self).__init__()
            self.conv1 = nn.Conv2d(3, 6, 5)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1   = nn.Linear(16*5*5, 120)  # noqa: E221
            self.fc2   = nn.Linear(120, 84)  # noqa: E221
            self.fc3   = nn.Linear(84, 10)  # noqa: E221

        def forward(self, x):
            out = F.relu(self.conv1(x))
            out = F.max_pool2d(out, 2)
            out = F.relu(self.conv2(out))
            out = F.max_pool2d(out, 2)
            out = out.view(out.size(0), -1)
            out = F.relu(self.fc1(out))
            out = F.relu(self.fc2(out))
            out = self.fc3(out)
            return out

    return LeNet()


@pytest.mark.parametrize("which", ["dla", "lenet"])
def test_matches_kuanglius_model_in_torch(which):
    """gpuconv's weights loaded into his DLA() or LeNet() (torch, training mode), both in float64: the
    same logits, loss, input gradient, every weight gradient and updated running statistic, to
    float64 rounding."""
    torch = pytest.importorskip("torch", reason="compares against kuangliu's models written in torch")
    if which == "dla":
        ours, theirs, key = models.dla(seed=3), _kuangliu_dla(torch), _kuangliu_dla_key
    else:
        ours, theirs, key = models.lenet(seed=3), _kuangliu_lenet(torch), lambda k: k
    _assert_gradients_match(_matches_kuangliu_in_torch(torch, ours, theirs, key))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_dla_trees_on_the_backend(backend, channels_last):
    """A level-2 tree of dla's builder, narrowed (8 -> 12 channels, stride 2), and a level-1 tree
    (12 -> 12), forward and backward on the backend in float64 on an 8x8 input, NCHW and
    channels_last: the same output, input and weight gradients as NCHW on NumPy, the roots' 1x1
    convolutions over the joined outputs through their kernels."""
    from gpuconv.models import _resnets
    x = np.random.default_rng(4).standard_normal((2, 8, 8, 8))
    dy = np.random.default_rng(5).standard_normal((2, 12, 4, 4))
    seeds = iter(range(1, 100))
    blocks = [_resnets._dla_full_tree(8, 12, 2, 2, seeds), _resnets._dla_full_tree(12, 12, 1, 1, seeds)]
    y, dx, grads = _blocks_match_numpy_on_the_backend(blocks, x, dy, backend, channels_last)
    assert y.shape == (2, 12, 4, 4) and dx.shape == x.shape
    # level 2: root, the level-1 subtree (root, 2 nodes: 5 convs and a projection), prev_root (2 and
    # a projection), 2 nodes: 14 convs, each with a BN; level 1: root and 2 nodes, 5 convs and BNs
    assert len(grads) == 3 * (14 + 5), sorted(grads)
    if backend.name != "numpy":
        backend.assert_kernels_ran("conv2d_forward", "conv2d_backward_weight", "batchnorm2d_backward")


def test_dla_trees_directional_derivative_float64():
    """The two narrowed trees above, pooled into 12 logits, in float64: every parameter and the input
    along one direction against central differences, the joins' gradients split back to every node
    and summed where a node's output feeds both the root and the next node. (The whole net, 43
    convolutions deep, has ReLU kinks within 1e-8 along most directions; his model in torch checks
    its gradients where torch is.)"""
    from gpuconv.layers import AvgPool2d, Flatten, Sequential
    from gpuconv.models import _resnets
    seeds = iter(range(1, 100))
    net = Sequential(_resnets._dla_full_tree(8, 12, 2, 2, seeds), _resnets._dla_full_tree(12, 12, 1, 1, seeds),
                     AvgPool2d(4), Flatten())
    net.astype(np.float64)
    x = np.random.default_rng(4).standard_normal((3, 8, 8, 8))
    analytic, numeric = directional_derivative(net, x, np.array([1, 7, 4]), h=1e-7, seed=3)
    assert relative_error(np.array(analytic), np.array(numeric)) < 1e-6
