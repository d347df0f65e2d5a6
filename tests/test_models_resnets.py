"""kuangliu/pytorch-cifar's deeper ResNets and PreActResNets (34, 50, 101, 152 layers): parameter
counts from the architecture, structure, his models in torch, the blocks on the backend, gradients."""
from __future__ import annotations

import numpy as np
import pytest
from test_models import (_assert_gradients_match, _blocks_match_numpy_on_the_backend, _images, _kuangliu_key,
                         _kuangliu_preact_key, _KuangliuMore, _KuangliuResNet18, _matches_kuangliu_in_torch,
                         _through_stages)

from gpuconv import models
from gpuconv.gradcheck import directional_derivative, relative_error
from gpuconv.layers import Residual

# His ResNet18() ... ResNet152() (and PreActResNet's): blocks per stage, Bottleneck blocks or not.
_DEPTHS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
           101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}
# The parameter counts of his models at width 64, as torch counts them (checked below where torch is).
_PUBLISHED = {("resnet", 34): 21_282_122, ("resnet", 50): 23_520_842, ("resnet", 101): 42_512_970,
              ("resnet", 152): 58_156_618, ("preact_resnet", 18): 11_171_146, ("preact_resnet", 34): 21_279_306,
              ("preact_resnet", 50): 23_509_066, ("preact_resnet", 101): 42_501_194,
              ("preact_resnet", 152): 58_144_842}
_NAMES = [f"{family}{depth}" for family, depth in _PUBLISHED]


def _build(name, **kw):
    return getattr(models, name)(**kw)


def _family_depth(name):
    family = "preact_resnet" if name.startswith("preact") else "resnet"
    return family, int(name[len(family):])


def _resnet_parameters(name, w=64, num_classes=10, in_channels=3):
    """From the architecture: bias-free convs, BN (weight and bias per channel), a linear head with
    bias. The stem a 3x3 conv (with BN unless pre-activation); a block of planes p: two 3x3 convs
    (BasicBlock), or 1x1 to p, 3x3, 1x1 to 4p (Bottleneck), with a BN after each conv (before each,
    on the block's input, if pre-activation); a 1x1 projection (with BN unless pre-activation) where
    the stride or the channels change."""
    family, depth = _family_depth(name)
    preact = family == "preact_resnet"
    num_blocks, bottleneck = _DEPTHS[depth]
    conv = lambda a, b, k: a * b * k * k  # noqa: E731
    total, c_in = conv(in_channels, w, 3) + (0 if preact else 2 * w), w
    for stage, planes in enumerate((w, 2 * w, 4 * w, 8 * w)):
        for b in range(num_blocks[stage]):
            c_out = 4 * planes if bottleneck else planes
            if bottleneck:
                total += conv(c_in, planes, 1) + conv(planes, planes, 3) + conv(planes, c_out, 1)
                total += 2 * ((c_in + 2 * planes) if preact else (2 * planes + c_out))
            else:
                total += conv(c_in, planes, 3) + conv(planes, planes, 3) + 2 * ((c_in if preact else planes) + planes)
            if (stage > 0 and b == 0) or c_in != c_out:
                total += conv(c_in, c_out, 1) + (0 if preact else 2 * c_out)
            c_in = c_out
    return total + c_in * num_classes + num_classes


@pytest.mark.parametrize("name", _NAMES)
def test_parameter_counts_follow_the_architecture_and_the_docstrings_give_them(name):
    published = _PUBLISHED[_family_depth(name)]
    assert _build(name).num_parameters() == _resnet_parameters(name) == published
    assert f"({published:,} parameters)" in " ".join(getattr(models, name).__doc__.split())
    assert _build(name, width=4, num_classes=7, in_channels=1).num_parameters() == \
        _resnet_parameters(name, 4, 7, 1)


def test_resnet18_and_preact_resnet18_are_the_same_nets_at_the_generic_trunk():
    """resnet18 and preact_resnet18 are the trunk at 18 layers: the counts of the derivation above
    (which also gives the deeper nets'), and a width the pre-activation net now takes too."""
    assert models.resnet18().num_parameters() == _resnet_parameters("resnet18") == 11_173_962
    assert models.preact_resnet18(width=4).num_parameters() == _resnet_parameters("preact_resnet18", 4)


def test_bottleneck_structure_shapes_and_keys():
    """ResNet-50 at width 4: each stage's output (4w, 8w, 16w, 32w channels; 32, 16, 8, 4 pixels),
    a block's layout (``res``: ``inner`` conv1 bn1 conv2 bn2 conv3 bn3 and a projection in the first
    block of every stage; then ``relu``), the 3x3 carrying the stride; PreActResNet-50's two block
    forms; the key mappings reach every key of his models' layouts."""
    from gpuconv.layers import Conv2d
    x = _images(2)
    net = models.resnet50(width=4)
    assert list(net._layers) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "pool", "flatten", "linear"]
    _through_stages(net, x, [("conv1", (4, 32, 32)), ("bn1", (4, 32, 32)), ("layer1", (16, 32, 32)),
                             ("layer2", (32, 16, 16)), ("layer3", (64, 8, 8)), ("layer4", (128, 4, 4)),
                             ("pool", (128, 1, 1)), ("flatten", (128,)), ("linear", (10,))])
    assert [len(net[f"layer{k}"]) for k in range(1, 5)] == [3, 4, 6, 3]
    for k in range(1, 5):
        first, second = net[f"layer{k}"][0], net[f"layer{k}"][1]
        assert list(first._layers) == ["res", "relu"] and isinstance(first["res"], Residual)
        inner = first["res"].inner
        assert list(inner._layers) == ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3"]
        assert [inner[c].kernel_size for c in ("conv1", "conv2", "conv3")] == [(1, 1), (3, 3), (1, 1)]
        assert inner["conv2"].stride == ((2, 2) if k > 1 else (1, 1)) and inner["conv1"].stride == (1, 1)
        assert isinstance(first["res"].shortcut[0], Conv2d) and len(first["res"].shortcut) == 2
        assert second["res"].shortcut is None
    net = models.preact_resnet50(width=4)
    assert list(net._layers) == ["conv1", "layer1", "layer2", "layer3", "layer4", "pool", "flatten", "linear"]
    _through_stages(net, x, [("conv1", (4, 32, 32)), ("layer1", (16, 32, 32)), ("layer2", (32, 16, 16)),
                             ("layer3", (64, 8, 8)), ("layer4", (128, 4, 4))])
    first, second = net["layer1"][0], net["layer1"][1]  # (the first projects 4 -> 16 at stride 1)
    assert list(first._layers) == ["bn1", "res"] and len(first["res"].shortcut) == 1
    assert list(first["res"].inner._layers) == ["conv1", "bn2", "conv2", "bn3", "conv3"]
    assert isinstance(second, Residual) and list(second.inner._layers) == ["bn1", "conv1", "bn2", "conv2", "bn3",
                                                                           "conv3"]
    keys = {_kuangliu_key(k) for k in models.resnet50(width=4).state_dict()}
    assert {"layer1.0.conv3.weight", "layer1.0.bn3.running_var", "layer1.0.shortcut.0.weight",
            "layer1.0.shortcut.1.bias", "layer4.2.conv2.weight"} <= keys
    keys = {_kuangliu_preact_key(k) for k in models.preact_resnet50(width=4).state_dict()}
    assert {"layer1.0.bn1.weight", "layer1.0.conv3.weight", "layer1.0.shortcut.0.weight", "layer1.1.bn3.bias",
            "layer2.0.conv2.weight"} <= keys


@pytest.mark.parametrize("name", ["resnet34", "preact_resnet34", "resnet50", "preact_resnet152"])
def test_bad_arguments_are_refused_by_name(name):
    for bad in (0, True, 2.0, "64"):
        with pytest.raises(ValueError, match=f"{name}: width must be a positive int"):
            _build(name, width=bad)
    with pytest.raises(ValueError, match=f"{name}: in_channels must be a positive int"):
        _build(name, width=2, in_channels=0)


@pytest.mark.parametrize("name", _NAMES)
def test_seeding(name):
    """One seed gives the same weights, another seed others, each layer its own."""
    a, b, c = (_build(name, width=2, seed=s) for s in (0, 0, 1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    weights = [k for k in sa if k.endswith("weight") and sa[k].ndim > 1]
    assert all(not np.array_equal(sa[k], sc[k]) for k in weights)
    assert len({sa[k].tobytes() for k in weights}) == len(weights)


@pytest.mark.parametrize("name", ["resnet34", "resnet50", "preact_resnet34", "preact_resnet50"])
def test_matches_kuanglius_model_in_torch(name):
    """gpuconv's weights loaded into his ResNet34/50 or PreActResNet34/50 (torch, training mode), both in
    float64: the same logits, loss, input gradient, every weight gradient and updated running
    statistic, to float64 rounding."""
    torch = pytest.importorskip("torch", reason="compares against kuangliu's ResNets written in torch")
    family, depth = _family_depth(name)
    num_blocks, bottleneck = _DEPTHS[depth]
    if family == "resnet":
        theirs, key = _KuangliuResNet18.build(torch, num_blocks=num_blocks, bottleneck=bottleneck), _kuangliu_key
    else:
        theirs, key = _KuangliuMore.preact_resnet18(torch, num_blocks, bottleneck), _kuangliu_preact_key
    _assert_gradients_match(_matches_kuangliu_in_torch(torch, _build(name, seed=3), theirs, key))


def test_the_published_counts_are_his_models_counts_in_torch():
    torch = pytest.importorskip("torch", reason="counts kuangliu's ResNets written in torch")
    for (family, depth), published in _PUBLISHED.items():
        num_blocks, bottleneck = _DEPTHS[depth]
        if family == "resnet":
            theirs = _KuangliuResNet18.build(torch, num_blocks=num_blocks, bottleneck=bottleneck)
        else:
            theirs = _KuangliuMore.preact_resnet18(torch, num_blocks, bottleneck)
        assert sum(p.numel() for p in theirs.parameters()) == published, (family, depth)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_bottleneck_blocks_on_the_backend(backend, channels_last):
    """Two Bottleneck and two pre-activation Bottleneck blocks of the builder, narrowed (8 -> 4
    planes, stride 2 with a projection to 16 channels, then 16 -> 16), forward and backward on the
    backend in float64 on an 8x8 input, NCHW and channels_last: the same output, input and weight
    gradients as NCHW on NumPy."""
    from gpuconv.models import _resnets
    x = np.random.default_rng(4).standard_normal((2, 8, 8, 8))
    dy = np.random.default_rng(5).standard_normal((2, 16, 4, 4))
    for make, per_block in ((_resnets._bottleneck_block, 3 * 3), (_resnets._preact_bottleneck, 3 + 3 * 2)):
        blocks = [make(8, 4, 2, [1, 2, 3, 4]), make(16, 4, 1, [5, 6, 7])]
        y, dx, grads = _blocks_match_numpy_on_the_backend(blocks, x, dy, backend, channels_last)
        assert y.shape == (2, 16, 4, 4) and dx.shape == x.shape
        projection = 3 if make is _resnets._bottleneck_block else 1  # (conv + BN, or the conv alone)
        assert len(grads) == 2 * per_block + projection, sorted(grads)
    if backend.name != "numpy":
        backend.assert_kernels_ran("conv2d_forward", "batchnorm")


@pytest.mark.parametrize("name", ["resnet50", "preact_resnet50"])
def test_end_to_end_directional_derivative_float64(name):
    """The whole net (width 2) in float64, as resnet18's check: 53 convolutions (the projections
    included), batch norms, ReLUs, the pool and the head, against central differences. Fifty layers
    deep, ReLU kinks lie closer along the direction than resnet18's: at h = 1e-7 some inputs and
    directions straddle one (errors of 1e-4 to 1e-1); at h = 1e-8 (float64 rounding near 1e-9 of
    the slope) this input and direction agree to 1e-9, a kink would show far above 1e-6."""
    net = _build(name, width=2)
    net.astype(np.float64)
    x = _images(3, seed=2).astype(np.float64)
    analytic, numeric = directional_derivative(net, x, np.array([1, 7, 4]), h=1e-8, seed=3)
    assert relative_error(np.array(analytic), np.array(numeric)) < 1e-6
