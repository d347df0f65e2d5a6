"""Reference models: shapes, parameter counts, end-to-end gradients, seeding, overfitting."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import backend as B
from gpuconv import models, ops
from gpuconv.gradcheck import directional_derivative, relative_error
from gpuconv.layers import BatchNorm2d, ReLU, Residual, Scale, Sequential, Sigmoid, SqueezeExcitation
from gpuconv.optim import SGD

MODELS = {
    "seed": lambda **kw: models.seed_net(**kw),
    "three_layer": lambda **kw: models.three_layer_convnet(num_filters=4, hidden_dim=10, **kw),
    "fast": lambda **kw: models.fast_net(width=2, **kw),
    "resnet18": lambda **kw: models.resnet18(width=2, **kw),
    "senet18": lambda **kw: models.senet18(**kw),  # (no width: the published net)
    "mobilenetv2": lambda **kw: models.mobilenetv2(**kw),  # (no width: the published net)
    "shufflenetv2": lambda **kw: models.shufflenetv2(net_size=0.5, **kw),  # (its smallest published size)
    "efficientnetb0": lambda **kw: models.efficientnetb0(**kw),  # (no width: the published net)
    "simpledla": lambda **kw: models.simpledla(**kw),  # (no width: the published net)
    "vgg": lambda **kw: models.vgg("VGG11", **kw),  # (the smallest of kuangliu's four)
    "preact_resnet18": lambda **kw: models.preact_resnet18(**kw),
    "mobilenet": lambda **kw: models.mobilenet(**kw),
    "resnext29": lambda **kw: models.resnext29(cardinality=2, bottleneck_width=4, **kw),  # (narrowed)
    "googlenet": lambda **kw: models.googlenet(**kw),
    "regnet": lambda **kw: models.regnet("RegNetY_400MF", **kw),  # (the one with gates)
    "densenet121": lambda **kw: models.densenet121(growth_rate=4, **kw),  # (narrowed)
    "dpn26": lambda **kw: models.dpn26(**kw),  # (no width: the published net)
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


def _resnet18_parameters(w, num_classes=10, in_channels=3):
    """ResNet-18's parameter count from its architecture: bias-free convs, BN (weight and bias per
    channel), a linear head with bias."""
    conv = lambda c_in, c_out, k=3: c_in * c_out * k * k  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(in_channels, w) + bn(w)  # stem
    c_in = w
    for c in (w, 2 * w, 4 * w, 8 * w):
        for b in range(2):
            total += conv(c_in, c) + bn(c) + conv(c, c) + bn(c)
            if c_in != c:  # the first block of stages 2-4: 1x1 projection + BN
                total += conv(c_in, c, 1) + bn(c)
            c_in = c
    return total + 8 * w * num_classes + num_classes


def test_resnet18_parameter_count_follows_the_architecture():
    count = lambda m: sum(p.size for p in m.parameters())  # noqa: E731
    assert count(models.resnet18()) == _resnet18_parameters(64)
    assert f"{_resnet18_parameters(64):,} parameters" in models.resnet18.__doc__  # 11,173,962: kuangliu's ResNet18()
    assert count(models.resnet18(width=4, num_classes=7, in_channels=1)) == _resnet18_parameters(4, 7, 1)


def _through_stages(net, x, stages):
    """x run through ``net``'s named layers in turn, each output of the (C, H, W) shape listed."""
    n = x.shape[0]
    for name, shape in stages:
        x = net[name](x)
        assert x.shape == (n, *shape), name
    return x


def test_resnet18_structure_and_shapes():
    """kuangliu's layout: stem, four stages of two BasicBlocks, stride 2 and a 1x1 conv + BN
    projection at the first block of stages 2-4 only, a ReLU after each residual sum (the block's
    second BN not fused with it), avg_pool2d 4 and a linear head; each stage's output shape."""
    net = models.resnet18(width=4)
    assert list(net._layers) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "pool", "flatten", "linear"]
    assert net["bn1"].activation == "relu" and net["conv1"].bias is None and net["linear"].bias is not None
    for stage in range(1, 5):
        for b in range(2):
            block = net[f"layer{stage}"][b]
            assert list(block._layers) == ["res", "relu"] and isinstance(block["res"], Residual)
            inner = block["res"].inner
            assert (inner["bn1"].activation, inner["bn2"].activation) == ("relu", None)
            downsamples = stage > 1 and b == 0
            assert inner["conv1"].stride == ((2, 2) if downsamples else (1, 1))
            assert (block["res"].shortcut is not None) == downsamples
            if downsamples:
                conv, norm = block["res"].shortcut
                assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and conv.bias is None
                assert norm.activation is None
    assert "layer2.0.res.shortcut.1.running_var" in dict(net.named_buffers())
    x = _images(2)
    _through_stages(net, x, [("conv1", (4, 32, 32)), ("bn1", (4, 32, 32)), ("layer1", (4, 32, 32)),
                             ("layer2", (8, 16, 16)), ("layer3", (16, 8, 8)), ("layer4", (32, 4, 4)),
                             ("pool", (32, 1, 1)), ("flatten", (32,)), ("linear", (10,))])
    assert models.resnet18(width=2, num_classes=5, in_channels=1)(_images(2)[:, :1]).shape == (2, 5)
    with pytest.raises(ValueError, match="resnet18: width must be a positive int"):
        models.resnet18(width=0)
    with pytest.raises(ValueError, match="resnet18: in_channels must be a positive int"):
        models.resnet18(in_channels=0)


def _kuangliu_basic_block(torch):
    """kuangliu/pytorch-cifar's BasicBlock, as published in models/resnet.py (and, the same, in
    models/dla_simple.py)."""
    nn, F = torch.nn, torch.nn.functional

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, in_planes, planes, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.shortcut = nn.Sequential()
            if stride != 1 or in_planes != self.expansion * planes:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(self.expansion * planes))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out += self.shortcut(x)
            out = F.relu(out)
            return out

    return BasicBlock


class _KuangliuResNet18:
    """kuangliu/pytorch-cifar's models/resnet.py (BasicBlock, Bottleneck, ResNet; ResNet18 by
    default, ``num_blocks`` and ``bottleneck`` for his other depths), as published;
    ``squeeze_excitation``: models/senet.py's SENet18, whose SENet class is ResNet's (the same
    layers and names) and whose BasicBlock adds the gate, written as a subclass of ResNet's."""

    @staticmethod
    def build(torch, squeeze_excitation=False, num_blocks=(2, 2, 2, 2), bottleneck=False):
        nn, F = torch.nn, torch.nn.functional

        BasicBlock = _kuangliu_basic_block(torch)

        class Bottleneck(nn.Module):
            expansion = 4

            def __init__(self, in_planes, planes, stride=1):
                super(Bottleneck, self).__init__()
                self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
                self.bn1 = nn.BatchNorm2d(planes)
                self.conv2 = nn.Conv2d(planes, planes, kernel_size=3,
                                       stride=stride, padding=1, bias=False)
                self.bn2 = nn.BatchNorm2d(planes)
                self.conv3 = nn.Conv2d(planes, self.expansion *
                                       planes, kernel_size=1, bias=False)
                self.bn3 = nn.BatchNorm2d(self.expansion*planes)

                self.shortcut = nn.Sequential()
                if stride != 1 or in_planes != self.expansion*planes:
                    self.shortcut = nn.Sequential(
                        nn.Conv2d(in_planes, self.expansion*planes,
                                  kernel_size=1, stride=stride, bias=False),
                        nn.BatchNorm2d(self.expansion*planes)
                    )

            def forward(self, x):
                out = F.relu(self.bn1(self.conv1(x)))
                out = F.relu(self.bn2(self.conv2(out)))
                out = self.bn3(self.conv3(out))
                out += self.shortcut(x)
                out = F.relu(out)
                return out

        class SEBasicBlock(BasicBlock):  # senet.py's BasicBlock: resnet.py's layers, then fc1 and fc2
            def __init__(self, in_planes, planes, stride=1):
                super().__init__(in_planes, planes, stride)
                # SE layers
                self.fc1 = nn.Conv2d(planes, planes // 16, kernel_size=1)  # Use nn.Conv2d instead of nn.Linear
                self.fc2 = nn.Conv2d(planes // 16, planes, kernel_size=1)

            def forward(self, x):
                out = F.relu(self.bn1(self.conv1(x)))
                out = self.bn2(self.conv2(out))
                # Squeeze
                w = F.avg_pool2d(out, out.size(2))
                w = F.relu(self.fc1(w))
                w = torch.sigmoid(self.fc2(w))
                # Excitation
                out = out * w
                out += self.shortcut(x)
                out = F.relu(out)
                return out

        class ResNet(nn.Module):
            def __init__(self, block, num_blocks, num_classes=10):
                super().__init__()
                self.in_planes = 64
                self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
                self.bn1 = nn.BatchNorm2d(64)
                self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
                self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
                self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
                self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
                self.linear = nn.Linear(512 * block.expansion, num_classes)

            def _make_layer(self, block, planes, num_blocks, stride):
                strides = [stride] + [1] * (num_blocks - 1)
                layers = []
                for stride in strides:
                    layers.append(block(self.in_planes, planes, stride))
                    self.in_planes = planes * block.expansion
                return nn.Sequential(*layers)

            def forward(self, x):
                out = F.relu(self.bn1(self.conv1(x)))
                out = self.layer1(out)
                out = self.layer2(out)
                out = self.layer3(out)
                out = self.layer4(out)
                out = F.avg_pool2d(out, 4)
                out = out.view(out.size(0), -1)
                out = self.linear(out)
                return out

        block = Bottleneck if bottleneck else SEBasicBlock if squeeze_excitation else BasicBlock
        return ResNet(block, list(num_blocks))


def _kuangliu_key(name):
    """gpuconv's resnet18 or senet18 state-dict key -> kuangliu's (the blocks' Residual and its
    inner block are a level of names of their own here, and so is senet18's gate, ``se``)."""
    return name.replace(".res.inner.se.", ".").replace(".res.inner.", ".").replace(".res.shortcut.", ".shortcut.")


def _matches_kuangliu_in_torch(torch, ours, theirs, key):
    """``ours``'s weights loaded into ``theirs`` (a torch model in training mode) through ``key``
    (gpuconv's state-dict key -> kuangliu's), both in float64, one forward and backward of 2 images
    on each: the same logits, loss, input gradient and updated running statistics, to float64
    rounding. Returns each of ``ours``'s parameter gradients beside ``theirs``'s, by gpuconv's name."""
    ours.astype(np.float64)
    theirs = theirs.double()
    state = {key(k): torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()}
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert [k for k in missing if not k.endswith("num_batches_tracked")] == [] and unexpected == []
    assert sum(p.numel() for p in theirs.parameters()) == ours.num_parameters()
    rng = np.random.default_rng(7)
    x, labels = _images(2, seed=8).astype(np.float64), rng.integers(0, 10, 2)
    xt = torch.tensor(x, requires_grad=True)
    logits_t = theirs(xt)
    loss_t = torch.nn.functional.cross_entropy(logits_t, torch.from_numpy(labels))
    loss_t.backward()
    logits = ours(x)
    loss, dlogits = ops.softmax_cross_entropy(logits, labels)
    dx = ours.backward(dlogits)
    tol = dict(rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(logits, logits_t.detach().numpy(), **tol)
    np.testing.assert_allclose(float(loss), loss_t.item(), **tol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-8, atol=1e-10 * float(np.abs(xt.grad.numpy()).max()))
    buffers = dict(theirs.named_buffers())
    for name, b in ours.named_buffers():
        np.testing.assert_allclose(b, buffers[key(name)].numpy(), **tol, err_msg=name)
    grads = dict(theirs.named_parameters())
    return {name: (p.grad, grads[key(name)].grad.numpy()) for name, p in ours.named_parameters()}


def _assert_gradients_match(grads):
    """Each of :func:`_matches_kuangliu_in_torch`'s gradient pairs equal to float64 rounding, compared
    at the largest gradient's scale (a gradient that is 0 in exact arithmetic is rounding noise)."""
    scale = max(float(np.abs(gt).max()) for _, gt in grads.values())
    for name, (g, gt) in grads.items():
        np.testing.assert_allclose(g, gt, rtol=1e-8, atol=1e-12 * scale, err_msg=name)


def test_resnet18_matches_kuangliu_resnet18_in_torch():
    """gpuconv's weights loaded into kuangliu's ResNet18() (torch, training mode), both in float64:
    the same logits, loss, input gradient, every weight gradient and updated running statistic, to
    float64 rounding. (In float32 the logits agree to 1e-4; the input gradient, through 18 layers
    of batch-norm backward over 2 images, to 6e-4 of its largest value: each library's rounding.)"""
    torch = pytest.importorskip("torch", reason="compares against kuangliu's ResNet18 written in torch")
    grads = _matches_kuangliu_in_torch(torch, models.resnet18(seed=3), _KuangliuResNet18.build(torch), _kuangliu_key)
    for name, (g, gt) in grads.items():
        np.testing.assert_allclose(g, gt, rtol=1e-8, atol=1e-10 * float(np.abs(gt).max()), err_msg=name)


def test_resnet18_end_to_end_directional_derivative_float64():
    """resnet18 (width 2) as the other models, in float64: its 20 convolutions, batch norms, projection
    shortcuts, ReLUs after the sums, average pool and linear head. Along a direction of unit-variance
    steps in every weight, 18 layers deep, the ReLU inputs move fast: kinks lie about 1e-6 apart,
    and some inputs and directions put one within h of 0 (an error of a few percent at any h). This
    input and direction were checked smooth over [-1e-6, 1e-6] (the slope on a grid of 1e-7 steps
    varying by 3e-5 relative): a kink there would show here as an error far above 1e-6."""
    net = models.resnet18(width=2)
    net.astype(np.float64)
    x = _images(3, seed=2).astype(np.float64)
    analytic, numeric = directional_derivative(net, x, np.array([1, 7, 4]), h=1e-7, seed=3)
    assert relative_error(np.array(analytic), np.array(numeric)) < 1e-6


def _senet18_parameters(num_classes=10, in_channels=3):
    """SENet-18's parameter count from its architecture: ResNet-18's at width 64, and in each
    block of c channels the gate's two 1x1 convolutions with bias, c -> c // 16 -> c."""
    gates = sum(2 * (c * (c // 16) + (c // 16) * c + c // 16 + c) for c in (64, 128, 256, 512))  # 2 blocks a stage
    return _resnet18_parameters(64, num_classes, in_channels) + gates


def test_senet18_structure_shapes_and_kuanglius_keys():
    """resnet18's layout at width 64 with a SqueezeExcitation(c, c // 16) (ReLU, Sigmoid) after each
    block's bn2, inside the residual branch; each stage's output shape; without torch, the keys of
    kuangliu's SENet18() (his block's fc1/fc2 beside conv1 ... bn2 and shortcut) through the mapping."""
    net = models.senet18()
    assert list(net._layers) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "pool", "flatten", "linear"]
    assert net["conv1"].weight.shape == (64, 3, 3, 3) and net["conv1"].bias is None and net["linear"].bias is not None
    want = {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "linear.weight",
            "linear.bias"}
    c_in = 64
    for stage, c in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            block = net[f"layer{stage}"][b]
            assert list(block._layers) == ["res", "relu"] and isinstance(block["res"], Residual)
            inner = block["res"].inner
            assert list(inner._layers) == ["conv1", "bn1", "conv2", "bn2", "se"]
            assert (inner["bn1"].activation, inner["bn2"].activation) == ("relu", None)
            assert inner["conv1"].stride == ((2, 2) if stage > 1 and b == 0 else (1, 1))
            se = inner["se"]
            assert isinstance(se, SqueezeExcitation) and se.fc1.weight.shape == (c // 16, c, 1, 1)
            assert se.fc2.weight.shape == (c, c // 16, 1, 1) and se.fc1.bias is not None and se.fc2.bias is not None
            assert isinstance(se.activation, ReLU) and isinstance(se.scale_activation, Sigmoid)
            assert (block["res"].shortcut is not None) == (c_in != c)
            p = f"layer{stage}.{b}"
            want |= {f"{p}.conv{i}.weight" for i in (1, 2)} | {f"{p}.fc{i}.{k}" for i in (1, 2) for k in ("weight", "bias")}
            want |= {f"{p}.bn{i}.{k}" for i in (1, 2) for k in ("weight", "bias", "running_mean", "running_var")}
            if c_in != c:
                want |= {f"{p}.shortcut.0.weight"} | {f"{p}.shortcut.1.{k}" for k in ("weight", "bias", "running_mean",
                                                                                    "running_var")}
            c_in = c
    keys = [_kuangliu_key(k) for k in net.state_dict()]
    assert len(keys) == len(set(keys)) and set(keys) == want
    x = _images(2)
    _through_stages(net, x, [("conv1", (64, 32, 32)), ("bn1", (64, 32, 32)), ("layer1", (64, 32, 32)),
                             ("layer2", (128, 16, 16)), ("layer3", (256, 8, 8)), ("layer4", (512, 4, 4)),
                             ("pool", (512, 1, 1)), ("flatten", (512,)), ("linear", (10,))])
    assert models.senet18(num_classes=5, in_channels=1)(_images(2)[:, :1]).shape == (2, 5)
    with pytest.raises(ValueError, match="senet18: in_channels must be a positive int"):
        models.senet18(in_channels=0)


def test_senet18_matches_kuangliu_senet18_in_torch():
    """gpuconv's weights loaded into kuangliu's SENet18() (torch, training mode) through the key
    mapping, both in float64: the same logits, loss, input gradient, every weight gradient (the 16
    gates' fc1 and fc2 included) and updated running statistic, to float64 rounding."""
    torch = pytest.importorskip("torch", reason="compares against kuangliu's SENet18 written in torch")
    ours = models.senet18(seed=3)
    assert ours.num_parameters() == 11_263_042
    grads = _matches_kuangliu_in_torch(torch, ours, _KuangliuResNet18.build(torch, squeeze_excitation=True), _kuangliu_key)
    assert sum(".se.fc" in name for name in grads) == 8 * 4
    for name, (g, gt) in grads.items():
        np.testing.assert_allclose(g, gt, rtol=1e-8, atol=1e-10 * float(np.abs(gt).max()), err_msg=name)


def test_senet18_end_to_end_directional_derivative_float64():
    """senet18 (the published net: it has no width to shrink) as the other models, in float64, at
    batch 2: resnet18's layers and the 8 squeeze-excitation gates (pool, 1x1 convs with bias, ReLU,
    sigmoid, the product). Along a direction of unit-variance steps in all 11.3M weights, kinks lie
    about 1e-8 apart. This input and direction were checked smooth over [-1e-8, 1e-8] (central
    differences at h = 3e-10 ... 1e-8 agree to 2e-8; at 3e-8 a kink shows): a kink within h would
    show here as an error far above 1e-6."""
    net = models.senet18()
    net.astype(np.float64)
    x = _images(2, seed=3).astype(np.float64)
    analytic, numeric = directional_derivative(net, x, np.array([1, 7]), h=3e-9, seed=3)
    assert relative_error(np.array(analytic), np.array(numeric)) < 1e-6


# kuangliu's MobileNetV2.cfg, as published: (expansion, out_planes, num_blocks, stride)
_KUANGLIU_MOBILENETV2_CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                             (6, 160, 3, 2), (6, 320, 1, 1)]


def _mobilenetv2_blocks():
    """(in, out, expansion, stride) of each of the 17 blocks, as kuangliu's _make_layers lays them out."""
    blocks, c_in = [], 32
    for t, c_out, n, stride in _KUANGLIU_MOBILENETV2_CFG:
        for s in [stride] + [1] * (n - 1):
            blocks.append((c_in, c_out, t, s))
            c_in = c_out
    return blocks


def _mobilenetv2_parameters(num_classes=10, in_channels=3):
    """MobileNetV2's parameter count from its architecture: bias-free convs (a depthwise 3x3 has
    one 3x3 filter per channel), BN (weight and bias per channel), a linear head with bias."""
    conv = lambda c_in, c_out, k=1, groups=1: c_out * (c_in // groups) * k * k  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(in_channels, 32, 3) + bn(32)  # stem
    for c_in, c_out, t, stride in _mobilenetv2_blocks():
        planes = t * c_in
        total += conv(c_in, planes) + bn(planes) + conv(planes, planes, 3, groups=planes) + bn(planes)
        total += conv(planes, c_out) + bn(c_out)
        if stride == 1 and c_in != c_out:  # the projection shortcut
            total += conv(c_in, c_out) + bn(c_out)
    return total + conv(320, 1280) + bn(1280) + 1280 * num_classes + num_classes


# kuangliu's networks without a width: the count derived from the architecture, kuangliu's own
# model's (SENet18(), MobileNetV2()), the one the docstring gives, and with other heads and inputs
@pytest.mark.parametrize("name,derived,published", [("senet18", _senet18_parameters, 11_263_042),
                                                    ("mobilenetv2", _mobilenetv2_parameters, 2_296_922)])
def test_kuangliu_parameter_count_follows_the_architecture(name, derived, published):
    count = lambda m: sum(p.size for p in m.parameters())  # noqa: E731
    build = getattr(models, name)
    assert derived() == published
    assert count(build()) == derived()
    assert f"{derived():,} parameters" in build.__doc__
    assert count(build(num_classes=7, in_channels=1)) == derived(7, 1)


def test_mobilenetv2_structure_and_shapes():
    """kuangliu's layout: stem, 17 blocks of 1x1 expansion - BN+ReLU - 3x3 depthwise (groups = its
    channels, the block's stride) - BN+ReLU - 1x1 projection - BN (no ReLU); a stride-1 block a
    Residual (identity shortcut, or 1x1 conv + BN where the channels change), a stride-2 block none;
    conv2 1x1 to 1280 - BN+ReLU, avg_pool2d 4, a linear head; each stage's output shape."""
    net = models.mobilenetv2()
    assert list(net._layers) == ["conv1", "bn1", "layers", "conv2", "bn2", "pool", "flatten", "linear"]
    assert models.MOBILENETV2_CFG == tuple(_KUANGLIU_MOBILENETV2_CFG)
    assert net["conv1"].stride == (1, 1) and net["conv1"].kernel_size == (3, 3) and net["conv1"].bias is None
    assert (net["bn1"].activation, net["bn2"].activation) == ("relu", "relu") and net["linear"].bias is not None
    assert net["conv2"].kernel_size == (1, 1) and net["conv2"].weight.shape == (1280, 320, 1, 1)
    expected = _mobilenetv2_blocks()
    assert len(net["layers"]) == len(expected) == 17
    for block, (c_in, c_out, t, stride) in zip(net["layers"], expected):
        inner = block.inner if stride == 1 else block
        assert isinstance(block, Residual) == (stride == 1)
        assert list(inner._layers) == ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3"]
        conv1, conv2, conv3 = inner["conv1"], inner["conv2"], inner["conv3"]
        assert conv1.weight.shape == (t * c_in, c_in, 1, 1) and conv3.weight.shape == (c_out, t * c_in, 1, 1)
        assert conv2.groups == t * c_in and conv2.weight.shape == (t * c_in, 1, 3, 3)
        assert conv2.stride == (stride, stride) and conv2.padding == (1, 1)
        assert all(c.bias is None for c in (conv1, conv2, conv3))
        assert (inner["bn1"].activation, inner["bn2"].activation, inner["bn3"].activation) == ("relu", "relu", None)
        if stride == 1:
            assert (block.shortcut is not None) == (c_in != c_out)
            if c_in != c_out:
                conv, norm = block.shortcut
                assert conv.weight.shape == (c_out, c_in, 1, 1) and conv.bias is None and norm.activation is None
    assert [i for i, b in enumerate(net["layers"]) if isinstance(b, Residual) and b.shortcut is not None] == \
        [0, 1, 10, 16]
    buffers = dict(net.named_buffers())
    assert "layers.16.shortcut.1.running_var" in buffers and "layers.3.bn2.running_var" in buffers
    x = _images(2)
    assert net["conv1"](x).shape == (2, 32, 32, 32)
    x = net["bn1"](net["conv1"](x))
    for i, block in enumerate(net["layers"]):
        x = block(x)
        hw = 32 // 2 ** sum(s == 2 for *_, s in expected[:i + 1])
        assert x.shape == (2, expected[i][1], hw, hw), i
    assert x.shape == (2, 320, 4, 4)
    _through_stages(net, x, [("conv2", (1280, 4, 4)), ("bn2", (1280, 4, 4)), ("pool", (1280, 1, 1)),
                             ("flatten", (1280,)), ("linear", (10,))])
    assert models.mobilenetv2(num_classes=5, in_channels=1)(_images(2)[:, :1]).shape == (2, 5)
    with pytest.raises(ValueError, match="mobilenetv2: in_channels must be a positive int"):
        models.mobilenetv2(in_channels=0)


class _KuangliuMobileNetV2:
    """kuangliu/pytorch-cifar's models/mobilenetv2.py (Block, MobileNetV2), as published."""

    @staticmethod
    def build(torch):
        nn, F = torch.nn, torch.nn.functional

        class Block(nn.Module):
            """expand + depthwise + pointwise"""

            def __init__(self, in_planes, out_planes, expansion, stride):
                super().__init__()
                self.stride = stride
                planes = expansion * in_planes
                self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, stride=1, padding=0, bias=False)
                self.bn1 = nn.BatchNorm2d(planes)
                self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, groups=planes,
                                       bias=False)
                self.bn2 = nn.BatchNorm2d(planes)
                self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, stride=1, padding=0, bias=False)
                self.bn3 = nn.BatchNorm2d(out_planes)
                self.shortcut = nn.Sequential()
                if stride == 1 and in_planes != out_planes:
                    self.shortcut = nn.Sequential(
                        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, padding=0, bias=False),
                        nn.BatchNorm2d(out_planes))

            def forward(self, x):
                out = F.relu(self.bn1(self.conv1(x)))
                out = F.relu(self.bn2(self.conv2(out)))
                out = self.bn3(self.conv3(out))
                out = out + self.shortcut(x) if self.stride == 1 else out
                return out

        class MobileNetV2(nn.Module):
            cfg = _KUANGLIU_MOBILENETV2_CFG

            def __init__(self, num_classes=10):
                super().__init__()
                self.conv1 = nn.Conv2d(3, 32, kernel_size=3, stride=1, padding=1, bias=False)
                self.bn1 = nn.BatchNorm2d(32)
                self.layers = self._make_layers(in_planes=32)
                self.conv2 = nn.Conv2d(320, 1280, kernel_size=1, stride=1, padding=0, bias=False)
                self.bn2 = nn.BatchNorm2d(1280)
                self.linear = nn.Linear(1280, num_classes)

            def _make_layers(self, in_planes):
                layers = []
                for expansion, out_planes, num_blocks, stride in self.cfg:
                    strides = [stride] + [1] * (num_blocks - 1)
                    for stride in strides:
                        layers.append(Block(in_planes, out_planes, expansion, stride))
                        in_planes = out_planes
                return nn.Sequential(*layers)

            def forward(self, x):
                out = F.relu(self.bn1(self.conv1(x)))
                out = self.layers(out)
                out = F.relu(self.bn2(self.conv2(out)))
                out = F.avg_pool2d(out, 4)
                out = out.view(out.size(0), -1)
                out = self.linear(out)
                return out

        return MobileNetV2()


def _kuangliu_mobilenetv2_key(name):
    """gpuconv's mobilenetv2 state-dict key -> kuangliu's (a stride-1 block's Residual puts its
    conv1 ... bn3 under ``inner``)."""
    return name.replace(".inner.", ".")


def test_mobilenetv2_state_dict_keys_are_kuanglius_through_the_mapping():
    """Without torch: the keys kuangliu's MobileNetV2() has (every block's conv1 ... bn3, the four
    projection shortcuts' shortcut.0 and shortcut.1), from gpuconv's through the mapping."""
    def bn(prefix):
        return [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
    want = ["conv1.weight", *bn("bn1")]
    for i, (c_in, c_out, _, stride) in enumerate(_mobilenetv2_blocks()):
        for j in (1, 2, 3):
            want += [f"layers.{i}.conv{j}.weight", *bn(f"layers.{i}.bn{j}")]
        if stride == 1 and c_in != c_out:
            want += [f"layers.{i}.shortcut.0.weight", *bn(f"layers.{i}.shortcut.1")]
    want += ["conv2.weight", *bn("bn2"), "linear.weight", "linear.bias"]
    got = [_kuangliu_mobilenetv2_key(k) for k in models.mobilenetv2().state_dict()]
    assert got == want


def test_mobilenetv2_matches_kuangliu_mobilenetv2_in_torch():
    """gpuconv's weights loaded into kuangliu's MobileNetV2() (torch, training mode), both in
    float64: the same logits, loss, input gradient, every weight gradient (the 17 depthwise
    convolutions' included) and updated running statistic, to float64 rounding."""
    torch = pytest.importorskip("torch", reason="compares against kuangliu's MobileNetV2 written in torch")
    ours = models.mobilenetv2(seed=3)
    assert ours.num_parameters() == 2_296_922
    grads = _matches_kuangliu_in_torch(torch, ours, _KuangliuMobileNetV2.build(torch), _kuangliu_mobilenetv2_key)
    # A bn3 bias whose block output reaches the loss only through batch norms (a stride-2 block or
    # a projection next: layers.0.bn3's, layers.2.bn3's, ...) shifts every image's channel alike,
    # which the next BN subtracts: its gradient is 0, rounding noise of 1e-16 in both libraries.
    scale = max(float(np.abs(gt).max()) for _, gt in grads.values())
    zero = [k for k, (_, gt) in grads.items() if float(np.abs(gt).max()) < 1e-12 * scale]
    assert zero and all(k.endswith(("bn3.bias", "shortcut.1.bias")) for k in zero), zero
    for name, (g, gt) in grads.items():
        np.testing.assert_allclose(g, gt, rtol=1e-8, atol=1e-12 * scale, err_msg=name)


def test_mobilenetv2_end_to_end_directional_derivative_float64():
    """mobilenetv2 (the published net: it has no width to shrink) as the other models, in float64,
    at batch 2: its 56 convolutions (17 depthwise, three of them stride 2), batch norms, identity
    and projection shortcuts, average pool and linear head. Along a direction of unit-variance
    steps in all 2.3M weights, its millions of ReLU inputs put kinks about 1e-8 apart (another
    input, seed 2, has one within 1e-9 of t = 0 along every direction tried). This input and
    direction were checked smooth over [-1e-8, 1e-8] (central differences at h = 3e-10 ... 1e-8
    agree to 1e-8; at 3e-8 a kink shows): a kink within h would show here as an error far above 1e-6."""
    net = models.mobilenetv2()
    net.astype(np.float64)
    x = _images(2, seed=3).astype(np.float64)
    analytic, numeric = directional_derivative(net, x, np.array([1, 7]), h=1e-9, seed=3)
    assert relative_error(np.array(analytic), np.array(numeric)) < 1e-6


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_mobilenetv2_blocks_on_the_backend(backend, channels_last):
    """Three of the published net's blocks (layers.1: a stride-1 block with a projection, layers.2:
    one with the identity, layers.3: a stride-2 block, its depthwise convolution of 144 channels
    halving the size) forward and backward on the backend, in float64 on an 8x8 input (the whole
    net on the simulator takes 20 s), NCHW and channels_last (the layout the trainer feeds the
    tensor-core precisions): the same output, input and weight gradients as NCHW on NumPy, the
    depthwise convolutions through their own kernels."""
    x = np.random.default_rng(4).standard_normal((2, 16, 8, 8))
    dy = np.random.default_rng(5).standard_normal((2, 32, 4, 4))
    net = models.mobilenetv2(seed=1)
    y, dx, grads = _blocks_match_numpy_on_the_backend([net["layers"][i] for i in (1, 2, 3)], x, dy, backend,
                                                      channels_last)
    assert y.shape == (2, 32, 4, 4) and dx.shape == x.shape
    assert len(grads) == 3 * 9 + 3  # 3 blocks of 3 convs and 3 BNs (weight, bias), layers.1's projection
    if backend.name != "numpy":
        backend.assert_kernels_ran("conv2d_grouped_forward", "conv2d_grouped_backward_data",
                                   "conv2d_grouped_backward_weight")


# kuangliu's ShuffleNetV2 configs (models/shufflenetv2.py), as published
_KUANGLIU_SHUFFLENETV2_CONFIGS = {
    0.5: {"out_channels": (48, 96, 192, 1024), "num_blocks": (3, 7, 3)},
    1: {"out_channels": (116, 232, 464, 1024), "num_blocks": (3, 7, 3)},
    1.5: {"out_channels": (176, 352, 704, 1024), "num_blocks": (3, 7, 3)},
    2: {"out_channels": (224, 488, 976, 2048), "num_blocks": (3, 7, 3)},
}


def _shufflenetv2_parameters(net_size, num_classes=10, in_channels=3):
    """ShuffleNetV2's parameter count from its architecture: bias-free convs (a depthwise 3x3 has
    one 3x3 filter per channel), BN (weight and bias per channel), a linear head with bias."""
    conv = lambda c_in, c_out, k=1, groups=1: c_out * (c_in // groups) * k * k  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    cfg = _KUANGLIU_SHUFFLENETV2_CONFIGS[net_size]
    total, c_in = conv(in_channels, 24, 3) + bn(24), 24
    for c_out, n in zip(cfg["out_channels"][:3], cfg["num_blocks"]):
        mid = c_out // 2  # the down block: left (dw 3x3, 1x1 to mid), right (1x1 to mid, dw 3x3, 1x1)
        total += conv(c_in, c_in, 3, groups=c_in) + bn(c_in) + conv(c_in, mid) + bn(mid)
        total += conv(c_in, mid) + bn(mid) + conv(mid, mid, 3, groups=mid) + bn(mid) + conv(mid, mid) + bn(mid)
        half = c_out // 2  # each basic block transforms half the channels: 1x1, dw 3x3, 1x1
        total += n * (conv(half, half) + bn(half) + conv(half, half, 3, groups=half) + bn(half) + conv(half, half)
                      + bn(half))
        c_in = c_out
    last = cfg["out_channels"][3]
    return total + conv(c_in, last) + bn(last) + last * num_classes + num_classes


@pytest.mark.parametrize("net_size", [0.5, 1, 1.5, 2])
def test_shufflenetv2_parameter_count_follows_the_architecture(net_size):
    count = lambda m: sum(p.size for p in m.parameters())  # noqa: E731
    assert count(models.shufflenetv2(net_size)) == _shufflenetv2_parameters(net_size)
    assert f"{_shufflenetv2_parameters(net_size):,}" in " ".join(models.shufflenetv2.__doc__.split())
    assert count(models.shufflenetv2(net_size, num_classes=7, in_channels=1)) == \
        _shufflenetv2_parameters(net_size, 7, 1)
    assert models.SHUFFLENETV2_CHANNELS[net_size] == _KUANGLIU_SHUFFLENETV2_CONFIGS[net_size]["out_channels"]


def test_shufflenetv2_structure_and_shapes():
    """kuangliu's layout at net_size 1: stem conv3x3(24) - BN+ReLU; three stages of a down block
    (two stride-2 branches of c/2 channels each, joined and shuffled) and 3, 7, 3 basic blocks (the
    first half of the channels kept, the second through 1x1 - BN+ReLU - depthwise 3x3 - BN - 1x1 -
    BN+ReLU, joined and shuffled in 2 groups); conv2 1x1 - BN+ReLU, avg_pool2d 4, a linear head."""
    net = models.shufflenetv2()
    assert list(net._layers) == ["conv1", "bn1", "layer1", "layer2", "layer3", "conv2", "bn2", "pool", "flatten",
                                 "linear"]
    assert net["conv1"].weight.shape == (24, 3, 3, 3) and net["conv1"].bias is None and net["bn1"].activation == "relu"
    x = net["bn1"](net["conv1"](_images(2)))
    c_in, hw = 24, 32
    for stage, (c, n) in enumerate(zip((116, 232, 464), (3, 7, 3)), start=1):
        blocks = list(net[f"layer{stage}"])
        assert len(blocks) == n + 1
        down, mid = blocks[0], c // 2
        assert list(down._layers) == ["cat", "shuffle"] and down["shuffle"].groups == 2
        left, right = down["cat"]["left"], down["cat"]["right"]
        assert list(left._layers) == ["conv1", "bn1", "conv2", "bn2"]
        assert list(right._layers) == ["conv3", "bn3", "conv4", "bn4", "conv5", "bn5"]
        assert left["conv1"].groups == c_in and left["conv1"].stride == (2, 2) and left["conv1"].weight.shape == \
            (c_in, 1, 3, 3)
        assert right["conv4"].groups == mid and right["conv4"].stride == (2, 2)
        assert [left[b].activation for b in ("bn1", "bn2")] == [None, "relu"]
        assert [right[b].activation for b in ("bn3", "bn4", "bn5")] == ["relu", None, "relu"]
        hw //= 2
        x = down(x)
        assert x.shape == (2, c, hw, hw)
        for block in blocks[1:]:
            keep, x2 = block["cat"]["x1"], block["cat"]["x2"]
            assert (keep.dim, keep.start, keep.length) == (1, 0, c // 2)
            assert list(x2._layers) == ["split", "conv1", "bn1", "conv2", "bn2", "conv3", "bn3"]
            assert (x2["split"].start, x2["split"].length) == (c // 2, c // 2) and x2["conv2"].groups == c // 2
            assert [x2[b].activation for b in ("bn1", "bn2", "bn3")] == ["relu", None, "relu"]
            x = block(x)
            assert x.shape == (2, c, hw, hw)
        c_in = c
    _through_stages(net, x, [("conv2", (1024, 4, 4)), ("bn2", (1024, 4, 4)), ("pool", (1024, 1, 1)),
                             ("flatten", (1024,)), ("linear", (10,))])
    assert all(conv.bias is None for name, conv in net.named_modules() if type(conv).__name__ == "Conv2d")
    assert models.shufflenetv2(0.5, num_classes=5, in_channels=1)(_images(2)[:, :1]).shape == (2, 5)
    for bad in (0.75, 3, True, "1"):
        with pytest.raises(ValueError, match=rf"shufflenetv2: net_size must be one of kuangliu's sizes .* got {bad!r}"):
            models.shufflenetv2(bad)
    with pytest.raises(ValueError, match="shufflenetv2: in_channels must be a positive int"):
        models.shufflenetv2(in_channels=0)


class _KuangliuShuffleNetV2:
    """kuangliu/pytorch-cifar's models/shufflenetv2.py (ShuffleBlock, SplitBlock, BasicBlock,
    DownBlock, ShuffleNetV2), as published."""

    @staticmethod
    def build(torch, net_size):
        nn, F = torch.nn, torch.nn.functional

        class ShuffleBlock(nn.Module):
            def __init__(self, groups=2):
                super().__init__()
                self.groups = groups

            def forward(self, x):
                N, C, H, W = x.size()
                g = self.groups
                return x.view(N, g, C // g, H, W).permute(0, 2, 1, 3, 4).reshape(N, C, H, W)

        class SplitBlock(nn.Module):
            def __init__(self, ratio):
                super().__init__()
                self.ratio = ratio

            def forward(self, x):
                c = int(x.size(1) * self.ratio)
                return x[:, :c, :, :], x[:, c:, :, :]

        class BasicBlock(nn.Module):
            def __init__(self, in_channels, split_ratio=0.5):
                super().__init__()
                self.split = SplitBlock(split_ratio)
                in_channels = int(in_channels * split_ratio)
                self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=False)
                self.bn1 = nn.BatchNorm2d(in_channels)
                self.conv2 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1,
                                       groups=in_channels, bias=False)
                self.bn2 = nn.BatchNorm2d(in_channels)
                self.conv3 = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=False)
                self.bn3 = nn.BatchNorm2d(in_channels)
                self.shuffle = ShuffleBlock()

            def forward(self, x):
                x1, x2 = self.split(x)
                out = F.relu(self.bn1(self.conv1(x2)))
                out = self.bn2(self.conv2(out))
                out = F.relu(self.bn3(self.conv3(out)))
                out = torch.cat([x1, out], 1)
                out = self.shuffle(out)
                return out

        class DownBlock(nn.Module):
            def __init__(self, in_channels, out_channels):
                super().__init__()
                mid_channels = out_channels // 2
                self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1,
                                       groups=in_channels, bias=False)
                self.bn1 = nn.BatchNorm2d(in_channels)
                self.conv2 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
                self.bn2 = nn.BatchNorm2d(mid_channels)
                self.conv3 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
                self.bn3 = nn.BatchNorm2d(mid_channels)
                self.conv4 = nn.Conv2d(mid_channels, mid_channels, kernel_size=3, stride=2, padding=1,
                                       groups=mid_channels, bias=False)
                self.bn4 = nn.BatchNorm2d(mid_channels)
                self.conv5 = nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False)
                self.bn5 = nn.BatchNorm2d(mid_channels)
                self.shuffle = ShuffleBlock()

            def forward(self, x):
                out1 = self.bn1(self.conv1(x))
                out1 = F.relu(self.bn2(self.conv2(out1)))
                out2 = F.relu(self.bn3(self.conv3(x)))
                out2 = self.bn4(self.conv4(out2))
                out2 = F.relu(self.bn5(self.conv5(out2)))
                out = torch.cat([out1, out2], 1)
                out = self.shuffle(out)
                return out

        class ShuffleNetV2(nn.Module):
            def __init__(self, net_size):
                super().__init__()
                out_channels = _KUANGLIU_SHUFFLENETV2_CONFIGS[net_size]["out_channels"]
                num_blocks = _KUANGLIU_SHUFFLENETV2_CONFIGS[net_size]["num_blocks"]
                self.conv1 = nn.Conv2d(3, 24, kernel_size=3, stride=1, padding=1, bias=False)
                self.bn1 = nn.BatchNorm2d(24)
                self.in_channels = 24
                self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
                self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
                self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
                self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0,
                                       bias=False)
                self.bn2 = nn.BatchNorm2d(out_channels[3])
                self.linear = nn.Linear(out_channels[3], 10)

            def _make_layer(self, out_channels, num_blocks):
                layers = [DownBlock(self.in_channels, out_channels)]
                for i in range(num_blocks):
                    layers.append(BasicBlock(out_channels))
                    self.in_channels = out_channels
                return nn.Sequential(*layers)

            def forward(self, x):
                out = F.relu(self.bn1(self.conv1(x)))
                out = self.layer1(out)
                out = self.layer2(out)
                out = self.layer3(out)
                out = F.relu(self.bn2(self.conv2(out)))
                out = F.avg_pool2d(out, 4)
                out = out.view(out.size(0), -1)
                out = self.linear(out)
                return out

        return ShuffleNetV2(net_size)


def _kuangliu_shufflenetv2_key(name):
    """gpuconv's shufflenetv2 state-dict key -> kuangliu's (a block's branches are a Concat's
    ``cat.left``/``cat.right`` or ``cat.x2`` here, his block's own attributes there)."""
    return name.replace(".cat.left.", ".").replace(".cat.right.", ".").replace(".cat.x2.", ".")


@pytest.mark.parametrize("net_size", [0.5, 1])
def test_shufflenetv2_matches_kuangliu_shufflenetv2_in_torch(net_size):
    """gpuconv's weights loaded into kuangliu's ShuffleNetV2(net_size) (torch, training mode), both
    in float64: the same logits, loss, input gradient, every weight gradient (the depthwise
    convolutions' included) and updated running statistic, to float64 rounding: the channel split,
    the joins and the shuffles in kuangliu's order."""
    torch = pytest.importorskip("torch", reason="compares against kuangliu's ShuffleNetV2 written in torch")
    ours = models.shufflenetv2(net_size, seed=3)
    grads = _matches_kuangliu_in_torch(torch, ours, _KuangliuShuffleNetV2.build(torch, net_size),
                                       _kuangliu_shufflenetv2_key)
    _assert_gradients_match(grads)


def test_shufflenetv2_end_to_end_directional_derivative_float64():
    """shufflenetv2 at net_size 0.5 in float64, at batch 2: its convolutions (the depthwise ones
    stride 1 and 2), batch norms, the channel splits, joins and shuffles, average pool and linear
    head, along one direction over every weight and the input."""
    net = models.shufflenetv2(0.5)
    net.astype(np.float64)
    x = _images(2, seed=3).astype(np.float64)
    analytic, numeric = directional_derivative(net, x, np.array([1, 7]), h=1e-9, seed=3)
    assert relative_error(np.array(analytic), np.array(numeric)) < 1e-6


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_shufflenetv2_blocks_on_the_backend(backend, channels_last):
    """A down block and a basic block of the net_size 0.5 net (layer2.0 and layer2.1: 48 -> 96
    channels, 8x8 -> 4x4) forward and backward on the backend in float64, NCHW and channels_last:
    the same output, input and weight gradients as NCHW on NumPy, the split and the shuffle keeping
    the layout."""
    x = np.random.default_rng(4).standard_normal((2, 48, 8, 8))
    dy = np.random.default_rng(5).standard_normal((2, 96, 4, 4))
    blocks = list(models.shufflenetv2(0.5, seed=1)["layer2"])[:2]
    y, dx, grads = _blocks_match_numpy_on_the_backend(blocks, x, dy, backend, channels_last)
    assert y.shape == (2, 96, 4, 4) and dx.shape == x.shape
    assert len(grads) == (5 + 5 * 2) + (3 + 3 * 2)  # the down block's 5 convs and 5 BNs, the basic block's 3 and 3
    if backend.name != "numpy":
        backend.assert_kernels_ran("conv2d_grouped_forward", "conv2d_grouped_backward_data",
                                   "conv2d_grouped_backward_weight")


# kuangliu's EfficientNetB0() cfg (models/efficientnet.py), as published
_KUANGLIU_EFFICIENTNETB0_CFG = {
    "num_blocks": [1, 2, 2, 3, 3, 4, 1],
    "expansion": [1, 6, 6, 6, 6, 6, 6],
    "out_channels": [16, 24, 40, 80, 112, 192, 320],
    "kernel_size": [3, 3, 5, 3, 5, 5, 3],
    "stride": [1, 2, 2, 2, 1, 2, 1],
    "dropout_rate": 0.2,
    "drop_connect_rate": 0.2,
}


def _efficientnetb0_blocks():
    """(in, out, kernel, stride, expansion) of each of the 16 blocks, as kuangliu's _make_layers lays them out."""
    cfg, blocks, c_in = _KUANGLIU_EFFICIENTNETB0_CFG, [], 32
    for t, c_out, n, k, stride in zip(*(cfg[key] for key in ("expansion", "out_channels", "num_blocks",
                                                             "kernel_size", "stride"))):
        for s in [stride] + [1] * (n - 1):
            blocks.append((c_in, c_out, k, s, t))
            c_in = c_out
    return blocks


def _efficientnetb0_parameters(num_classes=10, in_channels=3):
    """EfficientNet-B0's parameter count from its architecture: bias-free convs but the gates' 1x1s
    (with biases), a depthwise kxk one kxk filter per channel, BN (weight and bias per channel), a
    linear head with bias; no expansion conv in a block of expansion 1 (kuangliu builds one and
    never runs it)."""
    conv = lambda c_in, c_out, k=1, groups=1: c_out * (c_in // groups) * k * k  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(in_channels, 32, 3) + bn(32)
    for c_in, c_out, k, _, t in _efficientnetb0_blocks():
        ch, squeeze = t * c_in, int(c_in * 0.25)
        total += (conv(c_in, ch) + bn(ch) if t != 1 else 0) + conv(ch, ch, k, groups=ch) + bn(ch)
        total += conv(ch, squeeze) + squeeze + conv(squeeze, ch) + ch  # the gate's fc1, fc2 and their biases
        total += conv(ch, c_out) + bn(c_out)
    return total + 320 * num_classes + num_classes


def test_efficientnetb0_parameter_count_follows_the_architecture():
    count = lambda m: sum(p.size for p in m.parameters())  # noqa: E731
    assert count(models.efficientnetb0()) == _efficientnetb0_parameters() == 3_598_598
    assert f"{_efficientnetb0_parameters():,} parameters" in " ".join(models.efficientnetb0.__doc__.split())
    assert count(models.efficientnetb0(num_classes=7, in_channels=1)) == _efficientnetb0_parameters(7, 1)


def test_efficientnetb0_structure_and_shapes():
    """kuangliu's layout: stem conv3x3(32) - BN - SiLU; 16 blocks of [1x1 expansion - BN - SiLU] -
    kxk depthwise (groups = its channels, the block's stride, pad (k - 1) / 2) - BN - SiLU - a
    squeeze-excitation gate (c_in / 4, SiLU) - 1x1 projection - BN, a Residual where stride 1 keeps
    the channels; adaptive average pool, dropout 0.2, a linear head; each block's output shape."""
    from gpuconv.layers import Dropout, SiLU
    net = models.efficientnetb0()
    assert list(net._layers) == ["conv1", "bn1", "act", "layers", "pool", "flatten", "dropout", "linear"]
    assert models.EFFICIENTNETB0_CFG == tuple(zip(*(_KUANGLIU_EFFICIENTNETB0_CFG[k] for k in (
        "expansion", "out_channels", "num_blocks", "kernel_size", "stride"))))
    assert isinstance(net["act"], SiLU) and net["bn1"].activation is None and net["conv1"].bias is None
    assert isinstance(net["dropout"], Dropout) and net["dropout"].p == 0.2
    expected = _efficientnetb0_blocks()
    assert len(net["layers"]) == len(expected) == 16
    x = net["act"](net["bn1"](net["conv1"](_images(2))))
    hw = 32
    for i, (block, (c_in, c_out, k, stride, t)) in enumerate(zip(net["layers"], expected)):
        residual = stride == 1 and c_in == c_out
        assert isinstance(block, Residual) == residual and (not residual or block.shortcut is None)
        inner = block.inner if residual else block
        names = (["conv1", "bn1", "act1"] if t != 1 else []) + ["conv2", "bn2", "act2", "se", "conv3", "bn3"]
        assert list(inner._layers) == names, i
        conv2, se = inner["conv2"], inner["se"]
        assert conv2.groups == t * c_in and conv2.kernel_size == (k, k) and conv2.padding == ((k - 1) // 2,) * 2
        assert conv2.stride == (stride, stride) and conv2.bias is None and inner["conv3"].bias is None
        assert se.fc1.weight.shape == (int(c_in * 0.25), t * c_in, 1, 1) and isinstance(se.activation, SiLU)
        assert all(inner[b].activation is None for b in names if b.startswith("bn"))
        hw //= stride
        x = block(x)
        assert x.shape == (2, c_out, hw, hw), i
    assert x.shape == (2, 320, 2, 2)
    _through_stages(net, x, [("pool", (320, 1, 1)), ("flatten", (320,)), ("dropout", (320,)), ("linear", (10,))])
    assert models.efficientnetb0(num_classes=5, in_channels=1)(_images(2)[:, :1]).shape == (2, 5)
    with pytest.raises(ValueError, match="efficientnetb0: in_channels must be a positive int"):
        models.efficientnetb0(in_channels=0)


class _KuangliuEfficientNet:
    """kuangliu/pytorch-cifar's models/efficientnet.py (swish, drop_connect, SE, Block, EfficientNet),
    as published."""

    @staticmethod
    def build(torch, cfg):
        nn, F = torch.nn, torch.nn.functional

        def swish(x):
            return x * x.sigmoid()

        def drop_connect(x, drop_ratio):
            keep_ratio = 1.0 - drop_ratio
            mask = torch.empty([x.shape[0], 1, 1, 1], dtype=x.dtype, device=x.device)
            mask.bernoulli_(keep_ratio)
            x.div_(keep_ratio)
            x.mul_(mask)
            return x

        class SE(nn.Module):
            def __init__(self, in_channels, se_channels):
                super().__init__()
                self.se1 = nn.Conv2d(in_channels, se_channels, kernel_size=1, bias=True)
                self.se2 = nn.Conv2d(se_channels, in_channels, kernel_size=1, bias=True)

            def forward(self, x):
                out = F.adaptive_avg_pool2d(x, (1, 1))
                out = swish(self.se1(out))
                out = self.se2(out).sigmoid()
                out = x * out
                return out

        class Block(nn.Module):
            def __init__(self, in_channels, out_channels, kernel_size, stride, expand_ratio=1, se_ratio=0.,
                         drop_rate=0.):
                super().__init__()
                self.stride = stride
                self.drop_rate = drop_rate
                self.expand_ratio = expand_ratio
                channels = expand_ratio * in_channels
                self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=1, stride=1, padding=0, bias=False)
                self.bn1 = nn.BatchNorm2d(channels)
                self.conv2 = nn.Conv2d(channels, channels, kernel_size=kernel_size, stride=stride,
                                       padding=(1 if kernel_size == 3 else 2), groups=channels, bias=False)
                self.bn2 = nn.BatchNorm2d(channels)
                se_channels = int(in_channels * se_ratio)
                self.se = SE(channels, se_channels)
                self.conv3 = nn.Conv2d(channels, out_channels, kernel_size=1, stride=1, padding=0, bias=False)
                self.bn3 = nn.BatchNorm2d(out_channels)
                self.has_skip = (stride == 1) and (in_channels == out_channels)

            def forward(self, x):
                out = x if self.expand_ratio == 1 else swish(self.bn1(self.conv1(x)))
                out = swish(self.bn2(self.conv2(out)))
                out = self.se(out)
                out = self.bn3(self.conv3(out))
                if self.has_skip:
                    if self.training and self.drop_rate > 0:
                        out = drop_connect(out, self.drop_rate)
                    out = out + x
                return out

        class EfficientNet(nn.Module):
            def __init__(self, cfg, num_classes=10):
                super().__init__()
                self.cfg = cfg
                self.conv1 = nn.Conv2d(3, 32, kernel_size=3, stride=1, padding=1, bias=False)
                self.bn1 = nn.BatchNorm2d(32)
                self.layers = self._make_layers(in_channels=32)
                self.linear = nn.Linear(cfg['out_channels'][-1], num_classes)

            def _make_layers(self, in_channels):
                layers = []
                cfg = [self.cfg[k] for k in ['expansion', 'out_channels', 'num_blocks', 'kernel_size', 'stride']]
                b = 0
                blocks = sum(self.cfg['num_blocks'])
                for expansion, out_channels, num_blocks, kernel_size, stride in zip(*cfg):
                    strides = [stride] + [1] * (num_blocks - 1)
                    for stride in strides:
                        drop_rate = self.cfg['drop_connect_rate'] * b / blocks
                        layers.append(Block(in_channels, out_channels, kernel_size, stride, expansion, se_ratio=0.25,
                                            drop_rate=drop_rate))
                        in_channels = out_channels
                return nn.Sequential(*layers)

            def forward(self, x):
                out = swish(self.bn1(self.conv1(x)))
                out = self.layers(out)
                out = F.adaptive_avg_pool2d(out, 1)
                out = out.view(out.size(0), -1)
                dropout_rate = self.cfg['dropout_rate']
                if self.training and dropout_rate > 0:
                    out = F.dropout(out, p=dropout_rate)
                out = self.linear(out)
                return out

        return EfficientNet(cfg)


def _kuangliu_efficientnetb0_key(name):
    """gpuconv's efficientnetb0 state-dict key -> kuangliu's (a residual block's layers under
    ``inner``; the gate's fc1/fc2, torchvision's names, are his se1/se2)."""
    return name.replace(".inner.", ".").replace(".se.fc1.", ".se.se1.").replace(".se.fc2.", ".se.se2.")


def test_efficientnetb0_matches_kuangliu_efficientnetb0_in_torch():
    """gpuconv's weights loaded into kuangliu's EfficientNet (torch, training mode), both in float64:
    the same logits, loss, input gradient, every weight gradient (depthwise 3x3 and 5x5, the gates')
    and updated running statistic, to float64 rounding. Both dropouts at 0 (their masks come from
    different generators); his first block's expansion conv and BN, never run, taken out; and his
    drop-connect is 0 in every block as published (the check below), so none is left out."""
    torch = pytest.importorskip("torch", reason="compares against kuangliu's EfficientNetB0 written in torch")
    theirs = _KuangliuEfficientNet.build(torch, dict(_KUANGLIU_EFFICIENTNETB0_CFG, dropout_rate=0.0))
    assert all(block.drop_rate == 0 for block in theirs.layers)  # his b never advances: no drop-connect anywhere
    assert sum(p.numel() for p in theirs.parameters()) == 3_598_598 + 32 * 32 + 2 * 32
    del theirs.layers[0].conv1, theirs.layers[0].bn1  # (expansion 1: built, never run)
    ours = models.efficientnetb0(seed=3)
    ours["dropout"].p = 0.0
    grads = _matches_kuangliu_in_torch(torch, ours, theirs, _kuangliu_efficientnetb0_key)
    _assert_gradients_match(grads)


def test_efficientnetb0_end_to_end_directional_derivative_float64():
    """efficientnetb0 in float64 at batch 2 (dropout at 0: a mask drawn per forward would differ
    between the evaluations): its convolutions (depthwise 3x3 and 5x5, stride 1 and 2), batch norms,
    SiLUs, gates, residual sums, average pool and linear head along one direction over every weight
    and the input. SiLU is smooth, with no kinks to step over as in the ReLU networks: the central
    difference's error falls as h^2 (4e-6 relative at h = 1e-6, 4e-8 at 1e-7) down to rounding
    (7e-9 at 3e-8)."""
    net = models.efficientnetb0()
    net["dropout"].p = 0.0
    net.astype(np.float64)
    x = _images(2, seed=3).astype(np.float64)
    analytic, numeric = directional_derivative(net, x, np.array([1, 7]), h=3e-8, seed=3)
    assert relative_error(np.array(analytic), np.array(numeric)) < 1e-6


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_efficientnetb0_blocks_on_the_backend(backend, channels_last):
    """Two of the published net's blocks (layers.3: 5x5 depthwise stride 2, 24 -> 40 channels;
    layers.4: its residual twin) forward and backward on the backend in float64 on an 8x8 input,
    NCHW and channels_last: the same output, input and weight gradients as NCHW on NumPy."""
    x = np.random.default_rng(4).standard_normal((2, 24, 8, 8))
    dy = np.random.default_rng(5).standard_normal((2, 40, 4, 4))
    blocks = [models.efficientnetb0(seed=1)["layers"][i] for i in (3, 4)]
    y, dx, grads = _blocks_match_numpy_on_the_backend(blocks, x, dy, backend, channels_last)
    assert y.shape == (2, 40, 4, 4) and dx.shape == x.shape
    assert len(grads) == 2 * (3 + 3 * 2 + 4)  # 2 blocks: 3 convs, 3 BNs (weight, bias), the gate's 2 convs + biases
    if backend.name != "numpy":
        backend.assert_kernels_ran("conv2d_grouped_forward", "conv2d_grouped_backward_weight", "silu_forward",
                                   "silu_backward", "sigmoid_forward")


def _simpledla_parameters(num_classes=10, in_channels=3):
    """SimpleDLA's parameter count from its architecture: bias-free convs, BN (weight and bias per
    channel), a linear head with bias; a tree's root a 1x1 conv from 2c to c channels."""
    conv = lambda c_in, c_out, k=3: c_in * c_out * k * k  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731

    def block(a, b):  # a BasicBlock, with a projection where the channels change (or the stride)
        return conv(a, b) + bn(b) + conv(b, b) + bn(b) + (conv(a, b, 1) + bn(b) if a != b else 0)

    def tree(a, b, level):
        sub = (lambda x, y: block(x, y)) if level == 1 else (lambda x, y: tree(x, y, level - 1))
        return sub(a, b) + sub(b, b) + conv(2 * b, b, 1) + bn(b)

    total = conv(in_channels, 16) + bn(16) + conv(16, 16) + bn(16) + conv(16, 32) + bn(32)
    total += tree(32, 64, 1) + tree(64, 128, 2) + tree(128, 256, 2) + tree(256, 512, 1)
    return total + 512 * num_classes + num_classes


def test_simpledla_parameter_count_follows_the_architecture():
    count = lambda m: sum(p.size for p in m.parameters())  # noqa: E731
    assert count(models.simpledla()) == _simpledla_parameters() == 15_142_970
    assert f"{_simpledla_parameters():,} parameters" in " ".join(models.simpledla.__doc__.split())
    assert count(models.simpledla(num_classes=7, in_channels=1)) == _simpledla_parameters(7, 1)


def test_simpledla_structure_and_shapes():
    """kuangliu's layout: base, layer1, layer2 conv3x3 - BN+ReLU (16, 16, 32); trees of level 1, 2, 2,
    1 (64, 128, 256, 512 channels; the last three stride 2), each left subtree -> right subtree ->
    root conv1x1(2c -> c) - BN+ReLU over both outputs joined; avg_pool2d 4, a linear head."""
    from gpuconv.layers import Concat, Identity
    net = models.simpledla()
    assert list(net._layers) == ["base", "layer1", "layer2", "layer3", "layer4", "layer5", "layer6", "pool",
                                 "flatten", "linear"]
    x = _images(2)
    for name, c in (("base", 16), ("layer1", 16), ("layer2", 32)):
        conv, norm = net[name]
        assert conv.kernel_size == (3, 3) and conv.bias is None and norm.activation == "relu"
        x = net[name](x)
        assert x.shape == (2, c, 32, 32)

    def check_tree(tree, c_in, c, level, stride):
        assert list(tree._layers) == ["left_tree", "join", "root"]
        join, root = tree["join"], tree["root"]
        assert isinstance(join, Concat) and list(join._branches) == ["out1", "right_tree"]
        assert isinstance(join["out1"], Identity)
        assert root["conv"].weight.shape == (c, 2 * c, 1, 1) and root["bn"].activation == "relu"
        if level == 1:
            for block, (a, s) in ((tree["left_tree"], (c_in, stride)), (join["right_tree"], (c, 1))):
                inner = block["res"].inner
                assert inner["conv1"].stride == (s, s) and inner["conv1"].weight.shape == (c, a, 3, 3)
                assert (block["res"].shortcut is not None) == (s != 1 or a != c)
        else:
            check_tree(tree["left_tree"], c_in, c, level - 1, stride)
            check_tree(join["right_tree"], c, c, level - 1, 1)

    hw = 32
    for name, (c_in, c, level, stride) in zip(("layer3", "layer4", "layer5", "layer6"),
                                              ((32, 64, 1, 1), (64, 128, 2, 2), (128, 256, 2, 2), (256, 512, 1, 2))):
        check_tree(net[name], c_in, c, level, stride)
        hw //= stride
        x = net[name](x)
        assert x.shape == (2, c, hw, hw), name
    _through_stages(net, x, [("pool", (512, 1, 1)), ("flatten", (512,)), ("linear", (10,))])
    assert models.simpledla(num_classes=5, in_channels=1)(_images(2)[:, :1]).shape == (2, 5)
    with pytest.raises(ValueError, match="simpledla: in_channels must be a positive int"):
        models.simpledla(in_channels=0)


class _KuangliuSimpleDLA:
    """kuangliu/pytorch-cifar's models/dla_simple.py (BasicBlock, Root, Tree, SimpleDLA), as published."""

    @staticmethod
    def build(torch):
        nn, F = torch.nn, torch.nn.functional

        BasicBlock = _kuangliu_basic_block(torch)

        class Root(nn.Module):
            def __init__(self, in_channels, out_channels, kernel_size=1):
                super().__init__()
                self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=1,
                                      padding=(kernel_size - 1) // 2, bias=False)
                self.bn = nn.BatchNorm2d(out_channels)

            def forward(self, xs):
                x = torch.cat(xs, 1)
                out = F.relu(self.bn(self.conv(x)))
                return out

        class Tree(nn.Module):
            def __init__(self, block, in_channels, out_channels, level=1, stride=1):
                super().__init__()
                self.root = Root(2 * out_channels, out_channels)
                if level == 1:
                    self.left_tree = block(in_channels, out_channels, stride=stride)
                    self.right_tree = block(out_channels, out_channels, stride=1)
                else:
                    self.left_tree = Tree(block, in_channels, out_channels, level=level - 1, stride=stride)
                    self.right_tree = Tree(block, out_channels, out_channels, level=level - 1, stride=1)

            def forward(self, x):
                out1 = self.left_tree(x)
                out2 = self.right_tree(out1)
                out = self.root([out1, out2])
                return out

        class SimpleDLA(nn.Module):
            def __init__(self, block=BasicBlock, num_classes=10):
                super().__init__()
                self.base = nn.Sequential(nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False),
                                          nn.BatchNorm2d(16), nn.ReLU(True))
                self.layer1 = nn.Sequential(nn.Conv2d(16, 16, kernel_size=3, stride=1, padding=1, bias=False),
                                            nn.BatchNorm2d(16), nn.ReLU(True))
                self.layer2 = nn.Sequential(nn.Conv2d(16, 32, kernel_size=3, stride=1, padding=1, bias=False),
                                            nn.BatchNorm2d(32), nn.ReLU(True))
                self.layer3 = Tree(block, 32, 64, level=1, stride=1)
                self.layer4 = Tree(block, 64, 128, level=2, stride=2)
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

        return SimpleDLA()


def _kuangliu_simpledla_key(name):
    """gpuconv's simpledla state-dict key -> kuangliu's (a tree's right subtree one level down, in
    ``join``; the BasicBlocks' keys as resnet18's)."""
    return _kuangliu_key(name.replace(".join.", "."))


def test_simpledla_matches_kuangliu_simpledla_in_torch():
    """gpuconv's weights loaded into kuangliu's SimpleDLA() (torch, training mode), both in float64:
    the same logits, loss, input gradient, every weight gradient and updated running statistic, to
    float64 rounding: the trees' order of subtrees and the roots' joins as his."""
    torch = pytest.importorskip("torch", reason="compares against kuangliu's SimpleDLA written in torch")
    grads = _matches_kuangliu_in_torch(torch, models.simpledla(seed=3), _KuangliuSimpleDLA.build(torch),
                                       _kuangliu_simpledla_key)
    _assert_gradients_match(grads)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_simpledla_tree_on_the_backend(backend, channels_last):
    """A level-2 tree of simpledla's builder, narrowed to 4 -> 8 channels with stride 2 (its four
    BasicBlocks, the first with a projection, and three roots joining their subtrees' outputs),
    forward and backward on the backend in float64 on an 8x8 input, NCHW and channels_last: the same
    output, input and weight gradients as NCHW on NumPy."""
    x = np.random.default_rng(4).standard_normal((2, 4, 8, 8))
    dy = np.random.default_rng(5).standard_normal((2, 8, 4, 4))
    tree = models._dla_tree(4, 8, 2, 2, iter(range(1, 100)))
    y, dx, grads = _blocks_match_numpy_on_the_backend([tree], x, dy, backend, channels_last)
    assert y.shape == (2, 8, 4, 4) and dx.shape == x.shape
    assert len(grads) == 4 * 6 + 3 + 3 * 3  # 4 blocks' 2 convs and 2 BNs, a projection, 3 roots' conv and BN
    if backend.name != "numpy":
        backend.assert_kernels_ran("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")


_KUANGLIU_VGG_CFG = {
    'VGG11': [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'VGG13': [64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'VGG16': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'],
    'VGG19': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M'],
}
_KUANGLIU_MOBILENET_CFG = [64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2), 1024]


def _vgg_parameters(name, num_classes=10, in_channels=3):
    """conv3x3 with bias and BN (weight, bias) per entry of the cfg, a linear head from 512."""
    total, c = 0, in_channels
    for x in _KUANGLIU_VGG_CFG[name]:
        if x != "M":
            total, c = total + c * x * 9 + x + 2 * x, x
    return total + 512 * num_classes + num_classes


def _preact_resnet18_parameters(num_classes=10, in_channels=3):
    """The stem conv3x3(64) alone; per block BN(c_in), conv3x3, BN, conv3x3, and a 1x1 projection
    where the shape changes (no BN on it); a linear head."""
    total, c_in = in_channels * 64 * 9, 64
    for c in (64, 128, 256, 512):
        for _ in range(2):
            total += 2 * c_in + c_in * c * 9 + 2 * c + c * c * 9 + (c_in * c if c_in != c else 0)
            c_in = c
    return total + 512 * num_classes + num_classes


def _mobilenet_parameters(num_classes=10, in_channels=3):
    """The stem conv3x3(32) + BN; per block a depthwise 3x3 + BN and a 1x1 + BN; a linear head."""
    total, c_in = in_channels * 32 * 9 + 64, 32
    for x in _KUANGLIU_MOBILENET_CFG:
        c = x if isinstance(x, int) else x[0]
        total, c_in = total + c_in * 9 + 2 * c_in + c_in * c + 2 * c, c
    return total + 1024 * num_classes + num_classes


def _resnext29_parameters(cardinality=2, width=64, num_classes=10, in_channels=3):
    """The stem conv1x1(64) + BN; per block conv1x1 to the group width g + BN, a grouped 3x3 + BN, a
    conv1x1 to 2g + BN, a 1x1 + BN projection where the shape changes; the width doubling each stage."""
    total, c_in = in_channels * 64 + 128, 64
    for _ in range(3):
        g = cardinality * width
        for _ in range(3):
            total += c_in * g + 2 * g + g * (g // cardinality) * 9 + 2 * g + g * 2 * g + 4 * g
            total += c_in * 2 * g + 4 * g if c_in != 2 * g else 0
            c_in = 2 * g
        width *= 2
    return total + c_in * num_classes + num_classes


@pytest.mark.parametrize("build,derived,published", [
    (lambda **kw: models.vgg("VGG19", **kw), lambda **kw: _vgg_parameters("VGG19", **kw), 20_040_522),
    (lambda **kw: models.vgg("VGG11", **kw), lambda **kw: _vgg_parameters("VGG11", **kw), 9_231_114),
    (lambda **kw: models.vgg("VGG13", **kw), lambda **kw: _vgg_parameters("VGG13", **kw), 9_416_010),
    (lambda **kw: models.vgg("VGG16", **kw), lambda **kw: _vgg_parameters("VGG16", **kw), 14_728_266),
    (models.preact_resnet18, _preact_resnet18_parameters, 11_171_146),
    (models.mobilenet, _mobilenet_parameters, 3_217_226),
    (models.resnext29, _resnext29_parameters, 9_128_778)],
    ids=["vgg19", "vgg11", "vgg13", "vgg16", "preact", "mobilenet", "resnext29"])
def test_more_kuangliu_parameter_counts_follow_the_architectures(build, derived, published):
    count = lambda m: sum(p.size for p in m.parameters())  # noqa: E731
    net = build()
    assert count(net) == derived() == published
    assert count(build(num_classes=7, in_channels=1)) == derived(num_classes=7, in_channels=1)


def test_more_kuangliu_docstrings_give_the_counts():
    for build, counts in ((models.vgg, [_vgg_parameters(n) for n in ("VGG11", "VGG13", "VGG16", "VGG19")]),
                          (models.preact_resnet18, [_preact_resnet18_parameters()]),
                          (models.mobilenet, [_mobilenet_parameters()]), (models.resnext29, [_resnext29_parameters()])):
        doc = " ".join(build.__doc__.split())
        assert all(f"{n:,}" in doc for n in counts), build.__name__


def test_more_kuangliu_structures_and_shapes():
    """Each stage's output shape, and the layouts the keys rest on: VGG's features indexed as his
    (conv, BN, ReLU, ..., MaxPool), PreActResNet's stem without BN and its two block forms,
    MobileNet's depthwise blocks, ResNeXt's grouped 3x3 at the doubling group width."""
    from gpuconv.layers import Conv2d, MaxPool2d
    x = _images(2)
    net = models.vgg("VGG11")
    feats = list(net["features"])
    assert [type(f).__name__ for f in feats[:4]] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert sum(isinstance(f, MaxPool2d) for f in feats) == 5 and feats[0].bias is not None
    assert net(x).shape == (2, 10) and net["features"](x).shape == (2, 512, 1, 1)
    net = models.preact_resnet18()
    assert list(net._layers) == ["conv1", "layer1", "layer2", "layer3", "layer4", "pool", "flatten", "linear"]
    assert isinstance(net["layer1"][0], Residual) and list(net["layer1"][0].inner._layers) == ["bn1", "conv1", "bn2",
                                                                                             "conv2"]
    proj = net["layer2"][0]
    assert list(proj._layers) == ["bn1", "res"] and list(proj["res"].inner._layers) == ["conv1", "bn2", "conv2"]
    assert len(proj["res"].shortcut) == 1 and proj["res"].shortcut[0].weight.shape == (128, 64, 1, 1)
    _through_stages(net, x, [("conv1", (64, 32, 32)), ("layer1", (64, 32, 32)), ("layer2", (128, 16, 16)),
                             ("layer3", (256, 8, 8)), ("layer4", (512, 4, 4)), ("pool", (512, 1, 1))])
    net = models.mobilenet()
    assert len(net["layers"]) == 13
    y = _through_stages(net, x, [("conv1", (32, 32, 32)), ("bn1", (32, 32, 32))])
    for block, cfg in zip(net["layers"], _KUANGLIU_MOBILENET_CFG):
        c, stride = (cfg, 1) if isinstance(cfg, int) else cfg
        assert block["conv1"].groups == y.shape[1] and block["conv1"].stride == (stride, stride)
        y = block(y)
        assert y.shape[1] == c
    assert y.shape == (2, 1024, 2, 2)
    net = models.resnext29()
    y = _through_stages(net, x, [("conv1", (64, 32, 32)), ("bn1", (64, 32, 32)), ("layer1", (256, 32, 32)),
                                 ("layer2", (512, 16, 16)), ("layer3", (1024, 8, 8)), ("pool", (1024, 1, 1))])
    convs = [m for _, m in net.named_modules() if isinstance(m, Conv2d) and m.kernel_size == (3, 3)]
    assert [(m.groups, m.in_channels) for m in convs[::3]] == [(2, 128), (2, 256), (2, 512)]
    for bad in ((lambda: models.vgg("VGG12")), (lambda: models.resnext29(cardinality=0)),
                (lambda: models.resnext29(bottleneck_width=True))):
        with pytest.raises(ValueError, match="vgg_name must be one of VGG11, VGG13, VGG16, VGG19|a positive int"):
            bad()
    for build in (models.vgg, models.preact_resnet18, models.mobilenet, models.resnext29):
        with pytest.raises(ValueError, match=f"{build.__name__}: in_channels must be a positive int"):
            build(in_channels=0)


class _KuangliuMore:
    """kuangliu/pytorch-cifar's models/vgg.py, preact_resnet.py, mobilenet.py and resnext.py, as
    published."""

    @staticmethod
    def vgg(torch, vgg_name):
        nn = torch.nn

        class VGG(nn.Module):
            def __init__(self, vgg_name):
                super().__init__()
                self.features = self._make_layers(_KUANGLIU_VGG_CFG[vgg_name])
                self.classifier = nn.Linear(512, 10)

            def forward(self, x):
                out = self.features(x)
                out = out.view(out.size(0), -1)
                out = self.classifier(out)
                return out

            def _make_layers(self, cfg):
                layers = []
                in_channels = 3
                for x in cfg:
                    if x == 'M':
                        layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
                    else:
                        layers += [nn.Conv2d(in_channels, x, kernel_size=3, padding=1), nn.BatchNorm2d(x),
                                   nn.ReLU(inplace=True)]
                        in_channels = x
                layers += [nn.AvgPool2d(kernel_size=1, stride=1)]
                return nn.Sequential(*layers)

        return VGG(vgg_name)

    @staticmethod
    def preact_resnet18(torch, num_blocks=(2, 2, 2, 2), bottleneck=False):
        """PreActResNet18; ``num_blocks`` and ``bottleneck`` (PreActBottleneck) his other depths."""
        nn, F = torch.nn, torch.nn.functional

        class PreActBottleneck(nn.Module):
            '''Pre-activation version of the original Bottleneck module.'''
            expansion = 4

            def __init__(self, in_planes, planes, stride=1):
                super(PreActBottleneck, self).__init__()
                self.bn1 = nn.BatchNorm2d(in_planes)
                self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
                self.bn2 = nn.BatchNorm2d(planes)
                self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
                self.bn3 = nn.BatchNorm2d(planes)
                self.conv3 = nn.Conv2d(planes, self.expansion*planes, kernel_size=1, bias=False)

                if stride != 1 or in_planes != self.expansion*planes:
                    self.shortcut = nn.Sequential(
                        nn.Conv2d(in_planes, self.expansion*planes, kernel_size=1, stride=stride, bias=False)
                    )

            def forward(self, x):
                out = F.relu(self.bn1(x))
                shortcut = self.shortcut(out) if hasattr(self, 'shortcut') else x
                out = self.conv1(out)
                out = self.conv2(F.relu(self.bn2(out)))
                out = self.conv3(F.relu(self.bn3(out)))
                out += shortcut
                return out

        class PreActBlock(nn.Module):
            expansion = 1

            def __init__(self, in_planes, planes, stride=1):
                super().__init__()
                self.bn1 = nn.BatchNorm2d(in_planes)
                self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
                self.bn2 = nn.BatchNorm2d(planes)
                self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
                if stride != 1 or in_planes != self.expansion * planes:
                    self.shortcut = nn.Sequential(
                        nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False))

            def forward(self, x):
                out = F.relu(self.bn1(x))
                shortcut = self.shortcut(out) if hasattr(self, 'shortcut') else x
                out = self.conv1(out)
                out = self.conv2(F.relu(self.bn2(out)))
                out += shortcut
                return out

        class PreActResNet(nn.Module):
            def __init__(self, block, num_blocks, num_classes=10):
                super().__init__()
                self.in_planes = 64
                self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
                self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
                self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
                self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
                self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
                self.linear = nn.Linear(512 * block.expansion, num_classes)

            def _make_layer(self, block, planes, num_blocks, stride):
                strides = [stride] + [1] * (num_blocks - 1)
                layers = []
                for stride in strides:
                    layers.append(block(self.in_planes, planes, stride))
                    self.in_planes = planes * block.expansion
                return nn.Sequential(*layers)

            def forward(self, x):
                out = self.conv1(x)
                out = self.layer1(out)
                out = self.layer2(out)
                out = self.layer3(out)
                out = self.layer4(out)
                out = F.avg_pool2d(out, 4)
                out = out.view(out.size(0), -1)
                out = self.linear(out)
                return out

        return PreActResNet(PreActBottleneck if bottleneck else PreActBlock, list(num_blocks))

    @staticmethod
    def mobilenet(torch):
        nn, F = torch.nn, torch.nn.functional

        class Block(nn.Module):
            def __init__(self, in_planes, out_planes, stride=1):
                super().__init__()
                self.conv1 = nn.Conv2d(in_planes, in_planes, kernel_size=3, stride=stride, padding=1, groups=in_planes,
                                       bias=False)
                self.bn1 = nn.BatchNorm2d(in_planes)
                self.conv2 = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, padding=0, bias=False)
                self.bn2 = nn.BatchNorm2d(out_planes)

            def forward(self, x):
                out = F.relu(self.bn1(self.conv1(x)))
                out = F.relu(self.bn2(self.conv2(out)))
                return out

        class MobileNet(nn.Module):
            cfg = _KUANGLIU_MOBILENET_CFG

            def __init__(self, num_classes=10):
                super().__init__()
                self.conv1 = nn.Conv2d(3, 32, kernel_size=3, stride=1, padding=1, bias=False)
                self.bn1 = nn.BatchNorm2d(32)
                self.layers = self._make_layers(in_planes=32)
                self.linear = nn.Linear(1024, num_classes)

            def _make_layers(self, in_planes):
                layers = []
                for x in self.cfg:
                    out_planes = x if isinstance(x, int) else x[0]
                    stride = 1 if isinstance(x, int) else x[1]
                    layers.append(Block(in_planes, out_planes, stride))
                    in_planes = out_planes
                return nn.Sequential(*layers)

            def forward(self, x):
                out = F.relu(self.bn1(self.conv1(x)))
                out = self.layers(out)
                out = F.avg_pool2d(out, 2)
                out = out.view(out.size(0), -1)
                out = self.linear(out)
                return out

        return MobileNet()

    @staticmethod
    def resnext29(torch, cardinality, bottleneck_width):
        nn, F = torch.nn, torch.nn.functional

        class Block(nn.Module):
            expansion = 2

            def __init__(self, in_planes, cardinality=32, bottleneck_width=4, stride=1):
                super().__init__()
                group_width = cardinality * bottleneck_width
                self.conv1 = nn.Conv2d(in_planes, group_width, kernel_size=1, bias=False)
                self.bn1 = nn.BatchNorm2d(group_width)
                self.conv2 = nn.Conv2d(group_width, group_width, kernel_size=3, stride=stride, padding=1,
                                       groups=cardinality, bias=False)
                self.bn2 = nn.BatchNorm2d(group_width)
                self.conv3 = nn.Conv2d(group_width, self.expansion * group_width, kernel_size=1, bias=False)
                self.bn3 = nn.BatchNorm2d(self.expansion * group_width)
                self.shortcut = nn.Sequential()
                if stride != 1 or in_planes != self.expansion * group_width:
                    self.shortcut = nn.Sequential(
                        nn.Conv2d(in_planes, self.expansion * group_width, kernel_size=1, stride=stride, bias=False),
                        nn.BatchNorm2d(self.expansion * group_width))

            def forward(self, x):
                out = F.relu(self.bn1(self.conv1(x)))
                out = F.relu(self.bn2(self.conv2(out)))
                out = self.bn3(self.conv3(out))
                out += self.shortcut(x)
                out = F.relu(out)
                return out

        class ResNeXt(nn.Module):
            def __init__(self, num_blocks, cardinality, bottleneck_width, num_classes=10):
                super().__init__()
                self.cardinality = cardinality
                self.bottleneck_width = bottleneck_width
                self.in_planes = 64
                self.conv1 = nn.Conv2d(3, 64, kernel_size=1, bias=False)
                self.bn1 = nn.BatchNorm2d(64)
                self.layer1 = self._make_layer(num_blocks[0], 1)
                self.layer2 = self._make_layer(num_blocks[1], 2)
                self.layer3 = self._make_layer(num_blocks[2], 2)
                self.linear = nn.Linear(cardinality * bottleneck_width * 8, num_classes)

            def _make_layer(self, num_blocks, stride):
                strides = [stride] + [1] * (num_blocks - 1)
                layers = []
                for stride in strides:
                    layers.append(Block(self.in_planes, self.cardinality, self.bottleneck_width, stride))
                    self.in_planes = Block.expansion * self.cardinality * self.bottleneck_width
                self.bottleneck_width *= 2
                return nn.Sequential(*layers)

            def forward(self, x):
                out = F.relu(self.bn1(self.conv1(x)))
                out = self.layer1(out)
                out = self.layer2(out)
                out = self.layer3(out)
                out = F.avg_pool2d(out, 8)
                out = out.view(out.size(0), -1)
                out = self.linear(out)
                return out

        return ResNeXt(num_blocks=[3, 3, 3], cardinality=cardinality, bottleneck_width=bottleneck_width)


def _kuangliu_preact_key(name):
    """gpuconv's preact_resnet18 key -> kuangliu's (a projecting block's Residual ``res``, an identity
    block's ``inner``)."""
    return name.replace(".res.inner.", ".").replace(".res.shortcut.", ".shortcut.").replace(".inner.", ".")


@pytest.mark.parametrize("which", ["vgg19", "vgg11", "preact_resnet18", "mobilenet", "resnext29_2x64d",
                                   "resnext29_32x4d"])
def test_more_kuangliu_models_match_his_in_torch(which):
    """gpuconv's weights loaded into kuangliu's model (torch, training mode), both in float64: the
    same logits, loss, input gradient, every weight gradient and updated running statistic, to
    float64 rounding."""
    torch = pytest.importorskip("torch", reason="compares against kuangliu's models written in torch")
    if which.startswith("vgg"):
        name = which.upper()
        ours, theirs, key = models.vgg(name, seed=3), _KuangliuMore.vgg(torch, name), lambda k: k
    elif which == "preact_resnet18":
        ours, theirs, key = models.preact_resnet18(seed=3), _KuangliuMore.preact_resnet18(torch), _kuangliu_preact_key
    elif which == "mobilenet":
        ours, theirs, key = models.mobilenet(seed=3), _KuangliuMore.mobilenet(torch), lambda k: k
    else:
        c, w = (2, 64) if which.endswith("2x64d") else (32, 4)
        ours, theirs, key = models.resnext29(c, w, seed=3), _KuangliuMore.resnext29(torch, c, w), _kuangliu_key
    grads = _matches_kuangliu_in_torch(torch, ours, theirs, key)
    _assert_gradients_match(grads)


_KUANGLIU_INCEPTIONS = [("a3", 192, 64, 96, 128, 16, 32, 32), ("b3", 256, 128, 128, 192, 32, 96, 64),
                        ("a4", 480, 192, 96, 208, 16, 48, 64), ("b4", 512, 160, 112, 224, 24, 64, 64),
                        ("c4", 512, 128, 128, 256, 24, 64, 64), ("d4", 512, 112, 144, 288, 32, 64, 64),
                        ("e4", 528, 256, 160, 320, 32, 128, 128), ("a5", 832, 256, 160, 320, 32, 128, 128),
                        ("b5", 832, 384, 192, 384, 48, 128, 128)]


def _googlenet_parameters(num_classes=10, in_channels=3):
    """Convolutions with bias and BN (weight, bias) everywhere: the stem's 3x3 to 192, each Inception
    block's 1x1, 1x1 + 3x3, 1x1 + 3x3 + 3x3 and pool + 1x1 branches; a linear head from 1024."""
    cbn = lambda a, b, k: a * b * k * k + b + 2 * b  # noqa: E731
    total = cbn(in_channels, 192, 3)
    for _, c, n1, r3, n3, r5, n5, pp in _KUANGLIU_INCEPTIONS:
        total += cbn(c, n1, 1) + cbn(c, r3, 1) + cbn(r3, n3, 3) + cbn(c, r5, 1) + cbn(r5, n5, 3) + cbn(n5, n5, 3)
        total += cbn(c, pp, 1)
    return total + 1024 * num_classes + num_classes


def _densenet121_parameters(growth=32, num_classes=10, in_channels=3, blocks=(6, 12, 24, 16)):
    """Bias-free convs, BN (weight, bias): the stem 3x3 to 2k; each dense layer BN, 1x1 to 4k, BN, 3x3
    to k; each transition BN and a 1x1 to half (floored); the last BN; a linear head."""
    total, planes = in_channels * 2 * growth * 9, 2 * growth
    for i, n in enumerate(blocks):
        for _ in range(n):
            total += 2 * planes + planes * 4 * growth + 2 * 4 * growth + 4 * growth * growth * 9
            planes += growth
        if i < 3:
            total += 2 * planes + planes * (planes // 2)
            planes //= 2
    return total + 2 * planes + planes * num_classes + num_classes


@pytest.mark.parametrize("build,derived,published", [
    (models.googlenet, _googlenet_parameters, 6_166_250), (models.densenet121, _densenet121_parameters, 6_956_298),
    (lambda **kw: models.densenet121(growth_rate=12, **kw), lambda **kw: _densenet121_parameters(12, **kw),
     1_000_618),
    (models.densenet169, lambda **kw: _densenet121_parameters(blocks=(6, 12, 32, 32), **kw), 12_493_322),
    (models.densenet201, lambda **kw: _densenet121_parameters(blocks=(6, 12, 48, 32), **kw), 18_104_330),
    (models.densenet161, lambda **kw: _densenet121_parameters(48, blocks=(6, 12, 36, 24), **kw), 26_482_378)],
    ids=["googlenet", "densenet121", "densenet_cifar", "densenet169", "densenet201", "densenet161"])
def test_branching_kuangliu_parameter_counts_follow_the_architectures(build, derived, published):
    count = lambda m: sum(p.size for p in m.parameters())  # noqa: E731
    assert count(build()) == derived() == published
    assert count(build(num_classes=7, in_channels=1)) == derived(num_classes=7, in_channels=1)
    if published != 1_000_618:  # (densenet_cifar's count is not in the docstring)
        assert f"{published:,} parameters" in " ".join(build.__doc__.split())


def test_googlenet_and_densenet121_structures_and_shapes():
    """GoogLeNet: his key layout (ReLUs their own layers in each branch), each block's output
    channels (the four branches' sum) and size (32, 16 after maxpool, 8 after maxpool2);
    DenseNet-121: each dense layer adds the growth rate, each transition halves channels and size."""
    from gpuconv.layers import Concat, Identity
    net = models.googlenet()
    x = net["pre_layers"](_images(2))
    assert x.shape == (2, 192, 32, 32)
    for name, c, n1, r3, n3, r5, n5, pp in _KUANGLIU_INCEPTIONS:
        if name in ("a4", "a5"):
            x = net["maxpool" if name == "a4" else "maxpool2"](x)
        block = net[name]
        assert isinstance(block, Concat) and list(block._branches) == ["b1", "b2", "b3", "b4"]
        assert [type(m).__name__ for m in block["b4"]] == ["MaxPool2d", "Conv2d", "BatchNorm2d", "ReLU"]
        assert block["b3"][6].weight.shape == (n5, n5, 3, 3) and block["b2"][3].bias is not None
        x = block(x)
        hw = 32 if name.endswith("3") else 16 if name.endswith("4") else 8
        assert x.shape == (2, n1 + n3 + n5 + pp, hw, hw), name
    _through_stages(net, x, [("avgpool", (1024, 1, 1)), ("flatten", (1024,)), ("linear", (10,))])
    net = models.densenet121(growth_rate=12)
    x = net["conv1"](_images(2))
    planes, hw = 24, 32
    for i, n in enumerate((6, 12, 24, 16), start=1):
        for layer in net[f"dense{i}"]:
            assert isinstance(layer, Concat) and isinstance(layer["x"], Identity)
            assert list(layer["out"]._layers) == ["bn1", "conv1", "bn2", "conv2"]
            x = layer(x)
            planes += 12
            assert x.shape == (2, planes, hw, hw)
        if i < 4:
            x = net[f"trans{i}"](x)
            planes, hw = planes // 2, hw // 2
            assert x.shape == (2, planes, hw, hw)
    assert planes == (((24 + 6 * 12) // 2 + 12 * 12) // 2 + 24 * 12) // 2 + 16 * 12 == 384
    _through_stages(net, x, [("bn", (384, 4, 4)), ("pool", (384, 1, 1)), ("flatten", (384,)), ("linear", (10,))])
    for build in (models.googlenet, models.densenet121):
        with pytest.raises(ValueError, match=f"{build.__name__}: in_channels must be a positive int"):
            build(in_channels=0)
    with pytest.raises(ValueError, match="densenet121: growth_rate must be a positive int"):
        models.densenet121(growth_rate=0)
    for build in (models.densenet169, models.densenet201, models.densenet161):
        with pytest.raises(ValueError, match=f"{build.__name__}: growth_rate must be a positive int"):
            build(growth_rate=True)
        with pytest.raises(ValueError, match=f"{build.__name__}: in_channels must be a positive int"):
            build(in_channels=0)


class _KuangliuBranching:
    """kuangliu/pytorch-cifar's models/googlenet.py and densenet.py, as published."""

    @staticmethod
    def googlenet(torch):
        nn = torch.nn

        class Inception(nn.Module):
            def __init__(self, in_planes, n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_planes):
                super().__init__()
                self.b1 = nn.Sequential(nn.Conv2d(in_planes, n1x1, kernel_size=1), nn.BatchNorm2d(n1x1), nn.ReLU(True))
                self.b2 = nn.Sequential(
                    nn.Conv2d(in_planes, n3x3red, kernel_size=1), nn.BatchNorm2d(n3x3red), nn.ReLU(True),
                    nn.Conv2d(n3x3red, n3x3, kernel_size=3, padding=1), nn.BatchNorm2d(n3x3), nn.ReLU(True))
                self.b3 = nn.Sequential(
                    nn.Conv2d(in_planes, n5x5red, kernel_size=1), nn.BatchNorm2d(n5x5red), nn.ReLU(True),
                    nn.Conv2d(n5x5red, n5x5, kernel_size=3, padding=1), nn.BatchNorm2d(n5x5), nn.ReLU(True),
                    nn.Conv2d(n5x5, n5x5, kernel_size=3, padding=1), nn.BatchNorm2d(n5x5), nn.ReLU(True))
                self.b4 = nn.Sequential(
                    nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(in_planes, pool_planes, kernel_size=1),
                    nn.BatchNorm2d(pool_planes), nn.ReLU(True))

            def forward(self, x):
                y1 = self.b1(x)
                y2 = self.b2(x)
                y3 = self.b3(x)
                y4 = self.b4(x)
                return torch.cat([y1, y2, y3, y4], 1)

        class GoogLeNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.pre_layers = nn.Sequential(nn.Conv2d(3, 192, kernel_size=3, padding=1), nn.BatchNorm2d(192),
                                                nn.ReLU(True))
                for name, *cfg in _KUANGLIU_INCEPTIONS:
                    setattr(self, name, Inception(*cfg))
                self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
                self.avgpool = nn.AvgPool2d(8, stride=1)
                self.linear = nn.Linear(1024, 10)

            def forward(self, x):
                out = self.pre_layers(x)
                out = self.a3(out)
                out = self.b3(out)
                out = self.maxpool(out)
                out = self.a4(out)
                out = self.b4(out)
                out = self.c4(out)
                out = self.d4(out)
                out = self.e4(out)
                out = self.maxpool(out)
                out = self.a5(out)
                out = self.b5(out)
                out = self.avgpool(out)
                out = out.view(out.size(0), -1)
                out = self.linear(out)
                return out

        return GoogLeNet()

    @staticmethod
    def densenet121(torch, growth_rate, nblocks=(6, 12, 24, 16)):
        """DenseNet121(), densenet_cifar() (growth rate 12), or with ``nblocks`` his deeper ones."""
        import math
        nn, F = torch.nn, torch.nn.functional

        class Bottleneck(nn.Module):
            def __init__(self, in_planes, growth_rate):
                super().__init__()
                self.bn1 = nn.BatchNorm2d(in_planes)
                self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, kernel_size=1, bias=False)
                self.bn2 = nn.BatchNorm2d(4 * growth_rate)
                self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)

            def forward(self, x):
                out = self.conv1(F.relu(self.bn1(x)))
                out = self.conv2(F.relu(self.bn2(out)))
                out = torch.cat([out, x], 1)
                return out

        class Transition(nn.Module):
            def __init__(self, in_planes, out_planes):
                super().__init__()
                self.bn = nn.BatchNorm2d(in_planes)
                self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)

            def forward(self, x):
                out = self.conv(F.relu(self.bn(x)))
                out = F.avg_pool2d(out, 2)
                return out

        class DenseNet(nn.Module):
            def __init__(self, block, nblocks, growth_rate=12, reduction=0.5, num_classes=10):
                super().__init__()
                self.growth_rate = growth_rate
                num_planes = 2 * growth_rate
                self.conv1 = nn.Conv2d(3, num_planes, kernel_size=3, padding=1, bias=False)
                self.dense1 = self._make_dense_layers(block, num_planes, nblocks[0])
                num_planes += nblocks[0] * growth_rate
                out_planes = int(math.floor(num_planes * reduction))
                self.trans1 = Transition(num_planes, out_planes)
                num_planes = out_planes
                self.dense2 = self._make_dense_layers(block, num_planes, nblocks[1])
                num_planes += nblocks[1] * growth_rate
                out_planes = int(math.floor(num_planes * reduction))
                self.trans2 = Transition(num_planes, out_planes)
                num_planes = out_planes
                self.dense3 = self._make_dense_layers(block, num_planes, nblocks[2])
                num_planes += nblocks[2] * growth_rate
                out_planes = int(math.floor(num_planes * reduction))
                self.trans3 = Transition(num_planes, out_planes)
                num_planes = out_planes
                self.dense4 = self._make_dense_layers(block, num_planes, nblocks[3])
                num_planes += nblocks[3] * growth_rate
                self.bn = nn.BatchNorm2d(num_planes)
                self.linear = nn.Linear(num_planes, num_classes)

            def _make_dense_layers(self, block, in_planes, nblock):
                layers = []
                for i in range(nblock):
                    layers.append(block(in_planes, self.growth_rate))
                    in_planes += self.growth_rate
                return nn.Sequential(*layers)

            def forward(self, x):
                out = self.conv1(x)
                out = self.trans1(self.dense1(out))
                out = self.trans2(self.dense2(out))
                out = self.trans3(self.dense3(out))
                out = self.dense4(out)
                out = F.avg_pool2d(F.relu(self.bn(out)), 4)
                out = out.view(out.size(0), -1)
                out = self.linear(out)
                return out

        return DenseNet(Bottleneck, list(nblocks), growth_rate=growth_rate)


@pytest.mark.parametrize("which", ["googlenet", "densenet121", "densenet_cifar", "densenet169", "densenet201",
                                   "densenet161"])
def test_branching_kuangliu_models_match_his_in_torch(which):
    """gpuconv's weights loaded into kuangliu's GoogLeNet() or DenseNet121() / densenet_cifar() (torch,
    training mode), both in float64: the same logits, loss, input gradient, every weight gradient
    and updated running statistic, to float64 rounding: the branches joined in his order. His deeper
    DenseNets at growth rate 8 (the layout is the depth's; the growth rate only widens it), with his
    parameter count at the published growth rate."""
    torch = pytest.importorskip("torch", reason="compares against kuangliu's models written in torch")
    if which == "googlenet":
        ours, theirs, key = models.googlenet(seed=3), _KuangliuBranching.googlenet(torch), lambda k: k
    else:
        key = lambda k: k.replace(".out.", ".")  # noqa: E731
        if which in ("densenet121", "densenet_cifar"):
            growth = 32 if which == "densenet121" else 12
            ours, theirs = models.densenet121(growth, seed=3), _KuangliuBranching.densenet121(torch, growth)
        else:
            blocks, growth = {"densenet169": ((6, 12, 32, 32), 32), "densenet201": ((6, 12, 48, 32), 32),
                              "densenet161": ((6, 12, 36, 24), 48)}[which]
            full = _KuangliuBranching.densenet121(torch, growth, blocks)
            assert sum(p.numel() for p in full.parameters()) == getattr(models, which)().num_parameters()
            ours, theirs = getattr(models, which)(8, seed=3), _KuangliuBranching.densenet121(torch, 8, blocks)
    grads = _matches_kuangliu_in_torch(torch, ours, theirs, key)
    _assert_gradients_match(grads)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_inception_and_dense_blocks_on_the_backend(backend, channels_last):
    """An Inception block and two dense layers of the builders googlenet and densenet121 use, narrowed
    (16 -> 4 + 8 + 4 + 4 channels; growth 4 on 8 channels), forward and backward on the backend in
    float64 on an 8x8 input, NCHW and channels_last: the same output, input and weight gradients as
    NCHW on NumPy; the pool branch's 3x3 max pool (stride 1, pad 1) and the joins through kernels."""
    from gpuconv.models import _branches
    x = np.random.default_rng(4).standard_normal((2, 16, 8, 8))
    dy = np.random.default_rng(5).standard_normal((2, 20, 8, 8))
    block = _branches._inception(16, 4, 4, 8, 2, 4, 4, list(range(1, 8)))
    y, dx, grads = _blocks_match_numpy_on_the_backend([block], x, dy, backend, channels_last)
    assert y.shape == (2, 20, 8, 8) and len(grads) == 7 * 4  # 7 convs (weight, bias), 7 BNs
    dense = [_branches._dense_layer(8, 4, [1, 2]), _branches._dense_layer(12, 4, [3, 4])]
    dy = np.random.default_rng(6).standard_normal((2, 16, 8, 8))
    y, dx, grads = _blocks_match_numpy_on_the_backend(dense, x[:, :8], dy, backend, channels_last)
    assert y.shape == (2, 16, 8, 8) and dx.shape == (2, 8, 8, 8) and len(grads) == 2 * 6
    if backend.name != "numpy":
        backend.assert_kernels_ran("conv2d_forward", "max_pool2d_forward", "max_pool2d_backward")


_KUANGLIU_REGNET_CFG = {
    "RegNetX_200MF": {'depths': [1, 1, 4, 7], 'widths': [24, 56, 152, 368], 'strides': [1, 1, 2, 2],
                      'group_width': 8, 'bottleneck_ratio': 1, 'se_ratio': 0},
    "RegNetX_400MF": {'depths': [1, 2, 7, 12], 'widths': [32, 64, 160, 384], 'strides': [1, 1, 2, 2],
                      'group_width': 16, 'bottleneck_ratio': 1, 'se_ratio': 0},
    "RegNetY_400MF": {'depths': [1, 2, 7, 12], 'widths': [32, 64, 160, 384], 'strides': [1, 1, 2, 2],
                      'group_width': 16, 'bottleneck_ratio': 1, 'se_ratio': 0.25},
}


def _regnet_parameters(name, num_classes=10, in_channels=3):
    """The stem conv3x3(64) + BN; per block a 1x1 to w + BN, a grouped 3x3 (groups of the group
    width) + BN, [a gate: 1x1s to round(w_in * ratio) and back, with biases], a 1x1 + BN, a 1x1 + BN
    projection where the shape changes; a linear head."""
    cfg = _KUANGLIU_REGNET_CFG[name]
    total, w_in = in_channels * 64 * 9 + 128, 64
    for depth, w, stride in zip(cfg["depths"], cfg["widths"], cfg["strides"]):
        for i in range(depth):
            s = stride if i == 0 else 1
            total += w_in * w + 2 * w + w * cfg["group_width"] * 9 + 2 * w + w * w + 2 * w
            if cfg["se_ratio"]:
                squeeze = int(round(w_in * cfg["se_ratio"]))
                total += w * squeeze + squeeze + squeeze * w + w
            if s != 1 or w_in != w:
                total += w_in * w + 2 * w
            w_in = w
    return total + w_in * num_classes + num_classes


@pytest.mark.parametrize("name,published", [("RegNetX_200MF", 2_321_946), ("RegNetX_400MF", 4_779_338),
                                            ("RegNetY_400MF", 5_714_362)])
def test_regnet_parameter_counts_follow_the_architecture(name, published):
    count = lambda m: sum(p.size for p in m.parameters())  # noqa: E731
    assert count(models.regnet(name)) == _regnet_parameters(name) == published
    assert f"{published:,}" in " ".join(models.regnet.__doc__.split())
    assert count(models.regnet(name, num_classes=7, in_channels=1)) == _regnet_parameters(name, 7, 1)
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in _KUANGLIU_REGNET_CFG[name].items()} == \
        models.REGNET_CFG[name]
    with pytest.raises(ValueError, match="regnet: regnet_name must be one of RegNetX_200MF, RegNetX_400MF"):
        models.regnet("RegNetX_800MF")


def test_regnet_structure_and_shapes():
    """Each stage's output shape (32, 32, 16, 8), the grouped 3x3s (w / group width groups), the
    gate only in RegNetY, the projection only where the shape changes."""
    from gpuconv.layers import SqueezeExcitation
    for name in ("RegNetX_200MF", "RegNetY_400MF"):
        net = models.regnet(name)
        cfg = _KUANGLIU_REGNET_CFG[name]
        x = net["bn1"](net["conv1"](_images(2)))
        hw, w_in = 32, 64
        for k, (depth, w, stride) in enumerate(zip(cfg["depths"], cfg["widths"], cfg["strides"]), start=1):
            for i, block in enumerate(net[f"layer{k}"]):
                inner = block["res"].inner
                assert inner["conv2"].groups == w // cfg["group_width"]
                assert isinstance(inner._layers.get("se"), SqueezeExcitation) == (cfg["se_ratio"] > 0)
                assert (block["res"].shortcut is not None) == ((stride if i == 0 else 1) != 1 or w_in != w)
                w_in = w
            hw //= stride
            x = net[f"layer{k}"](x)
            assert x.shape == (2, w, hw, hw)
        _through_stages(net, x, [("pool", (w_in, 1, 1)), ("flatten", (w_in,)), ("linear", (10,))])


class _KuangliuRegNet:
    """kuangliu/pytorch-cifar's models/regnet.py (SE, Block, RegNet), as published."""

    @staticmethod
    def build(torch, cfg):
        nn, F = torch.nn, torch.nn.functional

        class SE(nn.Module):
            def __init__(self, in_planes, se_planes):
                super().__init__()
                self.se1 = nn.Conv2d(in_planes, se_planes, kernel_size=1, bias=True)
                self.se2 = nn.Conv2d(se_planes, in_planes, kernel_size=1, bias=True)

            def forward(self, x):
                out = F.adaptive_avg_pool2d(x, (1, 1))
                out = F.relu(self.se1(out))
                out = self.se2(out).sigmoid()
                out = x * out
                return out

        class Block(nn.Module):
            def __init__(self, w_in, w_out, stride, group_width, bottleneck_ratio, se_ratio):
                super().__init__()
                w_b = int(round(w_out * bottleneck_ratio))
                self.conv1 = nn.Conv2d(w_in, w_b, kernel_size=1, bias=False)
                self.bn1 = nn.BatchNorm2d(w_b)
                num_groups = w_b // group_width
                self.conv2 = nn.Conv2d(w_b, w_b, kernel_size=3, stride=stride, padding=1, groups=num_groups,
                                       bias=False)
                self.bn2 = nn.BatchNorm2d(w_b)
                self.with_se = se_ratio > 0
                if self.with_se:
                    w_se = int(round(w_in * se_ratio))
                    self.se = SE(w_b, w_se)
                self.conv3 = nn.Conv2d(w_b, w_out, kernel_size=1, bias=False)
                self.bn3 = nn.BatchNorm2d(w_out)
                self.shortcut = nn.Sequential()
                if stride != 1 or w_in != w_out:
                    self.shortcut = nn.Sequential(nn.Conv2d(w_in, w_out, kernel_size=1, stride=stride, bias=False),
                                                  nn.BatchNorm2d(w_out))

            def forward(self, x):
                out = F.relu(self.bn1(self.conv1(x)))
                out = F.relu(self.bn2(self.conv2(out)))
                if self.with_se:
                    out = self.se(out)
                out = self.bn3(self.conv3(out))
                out += self.shortcut(x)
                out = F.relu(out)
                return out

        class RegNet(nn.Module):
            def __init__(self, cfg, num_classes=10):
                super().__init__()
                self.cfg = cfg
                self.in_planes = 64
                self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
                self.bn1 = nn.BatchNorm2d(64)
                self.layer1 = self._make_layer(0)
                self.layer2 = self._make_layer(1)
                self.layer3 = self._make_layer(2)
                self.layer4 = self._make_layer(3)
                self.linear = nn.Linear(self.cfg['widths'][-1], num_classes)

            def _make_layer(self, idx):
                depth = self.cfg['depths'][idx]
                width = self.cfg['widths'][idx]
                stride = self.cfg['strides'][idx]
                group_width = self.cfg['group_width']
                bottleneck_ratio = self.cfg['bottleneck_ratio']
                se_ratio = self.cfg['se_ratio']
                layers = []
                for i in range(depth):
                    s = stride if i == 0 else 1
                    layers.append(Block(self.in_planes, width, s, group_width, bottleneck_ratio, se_ratio))
                    self.in_planes = width
                return nn.Sequential(*layers)

            def forward(self, x):
                out = F.relu(self.bn1(self.conv1(x)))
                out = self.layer1(out)
                out = self.layer2(out)
                out = self.layer3(out)
                out = self.layer4(out)
                out = F.adaptive_avg_pool2d(out, (1, 1))
                out = out.view(out.size(0), -1)
                out = self.linear(out)
                return out

        return RegNet(cfg)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_regnet_blocks_on_the_backend(backend, channels_last):
    """Two RegNetY blocks of regnet's builder, narrowed (16 -> 24 channels, stride 2 with a projection,
    then 24 -> 24; 3x3s in groups of 8 channels, gates to round(w_in / 4)), forward and backward on the
    backend in float64 on an 8x8 input, NCHW and channels_last: the same output, input and weight
    gradients as NCHW on NumPy, the grouped 3x3s through their kernels."""
    from gpuconv.models import _resnets
    x = np.random.default_rng(4).standard_normal((2, 16, 8, 8))
    dy = np.random.default_rng(5).standard_normal((2, 24, 4, 4))
    blocks = [_resnets._regnet_block(16, 24, 2, 8, 1, 0.25, [1, 2, 3, 4, 5]),
              _resnets._regnet_block(24, 24, 1, 8, 1, 0.25, [6, 7, 8, 9, 10])]
    y, dx, grads = _blocks_match_numpy_on_the_backend(blocks, x, dy, backend, channels_last)
    assert y.shape == (2, 24, 4, 4) and dx.shape == x.shape
    assert len(grads) == 2 * (3 + 3 * 2 + 4) + 3  # 2 blocks: 3 convs, 3 BNs, the gate's 2 convs + biases; a projection
    if backend.name != "numpy":
        backend.assert_kernels_ran("conv2d_grouped_forward", "conv2d_grouped_backward_weight", "sigmoid_forward")


@pytest.mark.parametrize("name", ["RegNetX_200MF", "RegNetY_400MF"])
def test_regnet_matches_kuanglius_in_torch(name):
    """gpuconv's weights loaded into kuangliu's RegNet (torch, training mode), both in float64: the
    same logits, loss, input gradient, every weight gradient (the grouped 3x3s', RegNetY's gates')
    and updated running statistic, to float64 rounding."""
    torch = pytest.importorskip("torch", reason="compares against kuangliu's RegNet written in torch")
    def key(k):  # resnet18's mapping, the gate kept as his ``se`` (SENet18's has none of its own)
        k = k.replace(".res.inner.", ".").replace(".res.shortcut.", ".shortcut.")
        return k.replace(".se.fc1.", ".se.se1.").replace(".se.fc2.", ".se.se2.")
    grads = _matches_kuangliu_in_torch(torch, models.regnet(name, seed=3),
                                       _KuangliuRegNet.build(torch, _KUANGLIU_REGNET_CFG[name]), key)
    _assert_gradients_match(grads)


_KUANGLIU_DPN_CFG = {  # (his DPN26() and DPN92() configs, as published)
    "DPN26": {'in_planes': (96, 192, 384, 768), 'out_planes': (256, 512, 1024, 2048), 'num_blocks': (2, 2, 2, 2),
              'dense_depth': (16, 32, 24, 128)},
    "DPN92": {'in_planes': (96, 192, 384, 768), 'out_planes': (256, 512, 1024, 2048), 'num_blocks': (3, 4, 20, 3),
              'dense_depth': (16, 32, 24, 128)},
}


def _dpn_parameters(cfg, num_classes=10, in_channels=3):
    """The stem conv3x3(64) + BN; per block a 1x1 to in_planes + BN, a 3x3 in 32 groups + BN, a 1x1 to
    out_planes + dense_depth + BN, and in a stage's first block a 1x1 projection to as many + BN; the
    channels after block i of a stage out_planes + (i + 2) dense_depth; a linear head."""
    total, last = in_channels * 64 * 9 + 2 * 64, 64
    for w, out, n, dense in zip(cfg["in_planes"], cfg["out_planes"], cfg["num_blocks"], cfg["dense_depth"]):
        for i in range(n):
            total += last * w + 2 * w + w * (w // 32) * 9 + 2 * w + w * (out + dense) + 2 * (out + dense)
            if i == 0:
                total += last * (out + dense) + 2 * (out + dense)
            last = out + (i + 2) * dense
    return total + last * num_classes + num_classes


@pytest.mark.parametrize("name,published", [("dpn26", 11_574_842), ("dpn92", 34_236_634)])
def test_dpn_parameter_counts_follow_the_architecture(name, published):
    count = lambda m: sum(p.size for p in m.parameters())  # noqa: E731
    build, cfg = getattr(models, name), _KUANGLIU_DPN_CFG[name.upper()]
    assert count(build()) == _dpn_parameters(cfg) == published
    assert f"{published:,} parameters" in " ".join(build.__doc__.split())
    assert count(build(num_classes=7, in_channels=1)) == _dpn_parameters(cfg, 7, 1)
    assert models.DPN_CFG[name.upper()] == cfg


def test_dpn26_structure_and_shapes():
    """Each stage's output (out_planes + (blocks + 1) dense_depth channels at 32, 16, 8, 4), each
    block a DualPath adding its first out_planes channels, the projection only in a stage's first
    block, the 3x3s in 32 groups, the head from 2048 + 3 x 128 features."""
    from gpuconv.layers import DualPath
    net = models.dpn26()
    cfg = _KUANGLIU_DPN_CFG["DPN26"]
    x = net["bn1"](net["conv1"](_images(2)))
    hw = 32
    for k in range(4):
        out, dense = cfg["out_planes"][k], cfg["dense_depth"][k]
        for i, block in enumerate(net[f"layer{k + 1}"]):
            assert isinstance(block, DualPath) and block.split == out and block.activation == "relu"
            assert (block.shortcut is not None) == (i == 0) and block["conv2"].groups == 32
            assert [n for n, _ in block.named_children()] == ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3"] + \
                (["shortcut"] if i == 0 else [])
        hw //= 1 if k == 0 else 2
        x = net[f"layer{k + 1}"](x)
        assert x.shape == (2, out + (cfg["num_blocks"][k] + 1) * dense, hw, hw)
    _through_stages(net, x, [("pool", (2432, 1, 1)), ("flatten", (2432,)), ("linear", (10,))])
    for build in (models.dpn26, models.dpn92):
        with pytest.raises(ValueError, match=f"{build.__name__}: in_channels must be a positive int"):
            build(in_channels=0)


def _kuangliu_dpn_bottleneck(torch):
    """kuangliu/pytorch-cifar's DPN Bottleneck, as published in models/dpn.py."""
    nn, F = torch.nn, torch.nn.functional

    class Bottleneck(nn.Module):
        def __init__(self, last_planes, in_planes, out_planes, dense_depth, stride, first_layer):
            super(Bottleneck, self).__init__()
            self.out_planes = out_planes
            self.dense_depth = dense_depth

            self.conv1 = nn.Conv2d(last_planes, in_planes, kernel_size=1, bias=False)
            self.bn1 = nn.BatchNorm2d(in_planes)
            self.conv2 = nn.Conv2d(in_planes, in_planes, kernel_size=3, stride=stride, padding=1, groups=32,
                                   bias=False)
            self.bn2 = nn.BatchNorm2d(in_planes)
            self.conv3 = nn.Conv2d(in_planes, out_planes + dense_depth, kernel_size=1, bias=False)
            self.bn3 = nn.BatchNorm2d(out_planes + dense_depth)

            self.shortcut = nn.Sequential()
            if first_layer:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(last_planes, out_planes + dense_depth, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(out_planes + dense_depth)
                )

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = F.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            x = self.shortcut(x)
            d = self.out_planes
            out = torch.cat([x[:, :d, :, :] + out[:, :d, :, :], x[:, d:, :, :], out[:, d:, :, :]], 1)
            out = F.relu(out)
            return out

    return Bottleneck


class _KuangliuDPN:
    """kuangliu/pytorch-cifar's models/dpn.py (Bottleneck, DPN), as published."""

    @staticmethod
    def build(torch, cfg):
        nn, F = torch.nn, torch.nn.functional

        Bottleneck = _kuangliu_dpn_bottleneck(torch)

        class DPN(nn.Module):
            def __init__(self, cfg):
                super(DPN, self).__init__()
                in_planes, out_planes = cfg['in_planes'], cfg['out_planes']
                num_blocks, dense_depth = cfg['num_blocks'], cfg['dense_depth']

                self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
                self.bn1 = nn.BatchNorm2d(64)
                self.last_planes = 64
                self.layer1 = self._make_layer(in_planes[0], out_planes[0], num_blocks[0], dense_depth[0], stride=1)
                self.layer2 = self._make_layer(in_planes[1], out_planes[1], num_blocks[1], dense_depth[1], stride=2)
                self.layer3 = self._make_layer(in_planes[2], out_planes[2], num_blocks[2], dense_depth[2], stride=2)
                self.layer4 = self._make_layer(in_planes[3], out_planes[3], num_blocks[3], dense_depth[3], stride=2)
                self.linear = nn.Linear(out_planes[3] + (num_blocks[3] + 1) * dense_depth[3], 10)

            def _make_layer(self, in_planes, out_planes, num_blocks, dense_depth, stride):
                strides = [stride] + [1] * (num_blocks - 1)
                layers = []
                for i, stride in enumerate(strides):
                    layers.append(Bottleneck(self.last_planes, in_planes, out_planes, dense_depth, stride, i == 0))
                    self.last_planes = out_planes + (i + 2) * dense_depth
                return nn.Sequential(*layers)

            def forward(self, x):
                out = F.relu(self.bn1(self.conv1(x)))
                out = self.layer1(out)
                out = self.layer2(out)
                out = self.layer3(out)
                out = self.layer4(out)
                out = F.avg_pool2d(out, 4)
                out = out.view(out.size(0), -1)
                out = self.linear(out)
                return out

        return DPN(cfg)


@pytest.mark.parametrize("name", ["dpn26", "dpn92"])
def test_dpn_state_dicts_are_kuanglius(name):
    """His DPN26() and DPN92() in torch hold our parameters, key for key and shape for shape, 11.6M
    and 34.2M of them: his state dict loads into ours as it is."""
    torch = pytest.importorskip("torch", reason="compares against kuangliu's DPN written in torch")
    theirs = _KuangliuDPN.build(torch, _KUANGLIU_DPN_CFG[name.upper()])
    ours = getattr(models, name)()
    assert sum(p.numel() for p in theirs.parameters()) == ours.num_parameters() == _dpn_parameters(
        _KUANGLIU_DPN_CFG[name.upper()])
    state = {k: tuple(v.shape) for k, v in theirs.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert state == {k: v.shape for k, v in ours.state_dict().items()}
    assert list(state) == list(ours.state_dict())  # (in his order too)
    assert ours.load_state_dict(theirs.state_dict()) == ([], [])
    his = theirs.layer3[1].conv2.weight.detach().numpy()
    np.testing.assert_array_equal(ours["layer3"][1]["conv2"].weight.data, his)


def test_a_narrowed_dpn_matches_kuanglius_in_torch():
    """gpuconv's DPN builder on a narrowed config (every stage's 3x3 in 32 groups of one channel,
    two blocks in the first and last stages) and his DPN(cfg) in torch (training mode), both in
    float64: the same logits, loss, input gradient, every weight gradient and updated running
    statistic, to float64 rounding: the residual sums and dense joins in his order."""
    torch = pytest.importorskip("torch", reason="compares against kuangliu's DPN written in torch")
    from gpuconv.models import _branches
    cfg = {"in_planes": (32, 32, 32, 32), "out_planes": (8, 8, 16, 16), "num_blocks": (2, 1, 1, 2),
           "dense_depth": (4, 4, 8, 8)}
    grads = _matches_kuangliu_in_torch(torch, _branches._dpn("dpn", cfg, 10, 3, 3), _KuangliuDPN.build(torch, cfg),
                                       lambda k: k)
    _assert_gradients_match(grads)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_dpn_blocks_on_the_backend(backend, channels_last):
    """A stage's first two DPN blocks of dpn26's builder, narrowed (16 -> 8 + 2 x 4 channels: a
    projection of stride 2, then the identity; 3x3s in 32 groups of one channel), forward and
    backward on the backend in float64 on an 8x8 input, NCHW and channels_last: the same output,
    input and weight gradients as NCHW on NumPy; the grouped 3x3s and the ReLUs after the joins
    through their kernels."""
    from gpuconv.models import _branches
    x = np.random.default_rng(4).standard_normal((2, 16, 8, 8))
    dy = np.random.default_rng(5).standard_normal((2, 20, 4, 4))
    blocks = [_branches._dpn_block(16, 32, 8, 4, 2, True, [1, 2, 3, 4]),
              _branches._dpn_block(16, 32, 8, 4, 1, False, [5, 6, 7, 8])]
    y, dx, grads = _blocks_match_numpy_on_the_backend(blocks, x, dy, backend, channels_last)
    assert y.shape == (2, 20, 4, 4) and dx.shape == x.shape
    assert len(grads) == 2 * (3 + 3 * 2) + 3  # 2 blocks: 3 convs, 3 BNs; the first's projection conv + BN
    if backend.name != "numpy":
        backend.assert_kernels_ran("conv2d_grouped_forward", "conv2d_grouped_backward_weight", "relu_forward",
                                   "relu_backward")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_senet18_blocks_on_the_backend(backend, channels_last):
    """Two of the published net's blocks (layer2.0: stride 2 with a projection, layer2.1: the
    identity), each with its squeeze-excitation gate, forward and backward on the backend in float64
    on a 4x4 input, NCHW and channels_last: the same output, input and weight gradients (the gates'
    included) as NCHW on NumPy, the gate's pooling and sigmoid through their kernels."""
    x = np.random.default_rng(4).standard_normal((2, 64, 4, 4))
    dy = np.random.default_rng(5).standard_normal((2, 128, 2, 2))
    y, dx, grads = _blocks_match_numpy_on_the_backend(list(models.senet18(seed=1)["layer2"]), x, dy, backend,
                                                      channels_last)
    assert y.shape == (2, 128, 2, 2) and dx.shape == x.shape
    assert len(grads) == 2 * (2 + 4 + 4) + 3  # 2 blocks: 2 convs, 2 BNs, the gate's 2 convs + biases; the projection
    if backend.name != "numpy":
        backend.assert_kernels_ran("conv2d_forward", "avg_pool2d_forward", "sigmoid_forward", "sigmoid_backward")


def _blocks_match_numpy_on_the_backend(blocks, x, dy, backend, channels_last):
    """``blocks`` (a model's, in turn) forward on ``x`` and backward from ``dy`` in float64, on NumPy
    (NCHW) and on the backend (channels_last if asked, which the output keeps): the same output,
    input gradient and parameter gradients (a bias's that is 0, rounding noise, compared at the
    largest gradient's scale). Returns the backend's output, input gradient and gradients by name."""
    import copy

    from gpuconv import layout
    results = []
    for device in ("cpu", backend.device):
        copies = [copy.deepcopy(b).to(device).astype(np.float64) for b in blocks]
        y, d = (x, dy) if device == "cpu" else (backend.asarray(x), backend.asarray(dy))
        if device != "cpu" and channels_last:
            y, d = layout.to_channels_last(y), layout.to_channels_last(d)
        for block in copies:
            y = block(y)
        assert layout.is_channels_last(y) == (channels_last and device != "cpu")
        for block in copies[::-1]:
            d = block.backward(d)
        grads = {f"{i}.{k}": backend.asnumpy(p.grad) for i, b in enumerate(copies) for k, p in b.named_parameters()}
        results.append((backend.asnumpy(y), backend.asnumpy(d), grads))
    (y0, dx0, g0), (y1, dx1, g1) = results
    tol = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y1, y0, **tol)
    np.testing.assert_allclose(dx1, dx0, **tol)
    scale = max(float(np.abs(g).max()) for g in g0.values())
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], rtol=1e-10, atol=1e-12 * scale, err_msg=k)
    return y1, dx1, g1


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


@pytest.mark.parametrize("name", ["seed", "three_layer", "fast", "resnet18"])
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


@pytest.mark.parametrize("name", ["seed", "three_layer", "fast", "resnet18", "senet18", "mobilenetv2", "shufflenetv2",
                                  "efficientnetb0", "simpledla", "vgg", "preact_resnet18", "mobilenet",
                                  "resnext29", "googlenet", "densenet121", "regnet", "dpn26"])
def test_seeding(name):
    a, b, c = MODELS[name](seed=0), MODELS[name](seed=0), MODELS[name](seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    weights = [k for k in sa if k.endswith("weight") and sa[k].ndim > 1]  # (not the batch norms' ones)
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
    # a network's name where the config belongs: named, with the call that builds it
    with pytest.raises(TypeError, match=r"config must be a dict .*got str 'seed_net'; .*gpuconv\.models\.seed_net\(\)"):
        models.from_config("seed_net")


def test_the_state_dict_keys_the_readme_names_are_the_models():
    """README's gpuconv.models entry names, for each of kuangliu's networks, keys of our state dict
    beside his (``ours`` for kuangliu's ``his``): each of ours is a key of that model's state dict."""
    import pathlib
    import re
    text = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    entry = text[text.index("- `gpuconv.models`:"):text.index("- `gpuconv.data`:")]
    names = ("resnet18", "mobilenetv2", "senet18", "shufflenetv2", "efficientnetb0", "simpledla", "vgg",
             "preact_resnet18", "mobilenet", "resnext29", "googlenet", "densenet121", "regnet", "shufflenet",
             "dla", "pnasnet", "dpn26", "dpn92")
    starts = sorted((entry.index(f"`{name}("), name) for name in names)
    checked = 0
    for (start, name), (end, _) in zip(starts, [*starts[1:], (len(entry), None)]):
        ours = [k for part in entry[start:end].split("for kuangliu's")[:-1]
                for k in re.findall(r"`([\w.]+\.weight)`", part)]
        keys = set(getattr(models, name)().state_dict())
        for key in ours:
            assert key in keys, f"README names {key} as a key of {name}(), which has no such key"
            checked += 1
    assert checked >= 10
