"""kuangliu/pytorch-cifar's plain convolution stacks: VGG11/13/16/19 with batch norm, and LeNet."""
from __future__ import annotations

from ..layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from ._build import _in_channels, _seeds


# kuangliu's VGG cfg: output channels of each conv3x3 - BN - ReLU, 'M' a 2x2 max pool.
VGG_CFG = {
    "VGG11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "VGG13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "VGG16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "VGG19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512,
              "M"),
}


def vgg(vgg_name="VGG19", num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's CIFAR VGG (``VGG(vgg_name)``, Simonyan and Zisserman with batch norm):
    ``features``, the ``VGG_CFG[vgg_name]`` stack of conv3x3 (pad 1, with bias) - BN - ReLU, a 2x2
    max pool at each 'M' (five: 32x32 down to 1x1), then ``flatten`` and ``classifier``, a linear
    layer from 512 to ``num_classes``. The ReLUs and pools are layers of their own in ``features``
    so its indices, hence every state-dict key (``features.0.weight``, ``features.1.running_mean``,
    ``classifier.weight``), are kuangliu's; his last layer of ``features``, an ``AvgPool2d(1, 1)``
    (an identity), is left out. 20,040,522 parameters at VGG19 (VGG11: 9,231,114; VGG13:
    9,416,010; VGG16: 14,728,266). Input must be ``in_channels`` x 32 x 32 (3: RGB). Its recipe,
    ``RECIPES['vgg19']``, is kuangliu's main.py, as resnet18's."""
    if vgg_name not in VGG_CFG:
        raise ValueError(f"vgg: vgg_name must be one of {', '.join(VGG_CFG)} (kuangliu's), got {vgg_name!r}")
    c = _in_channels("vgg", in_channels)
    cfg = VGG_CFG[vgg_name]
    s = _seeds(seed, sum(x != "M" for x in cfg) + 1)
    features, k = [], 0
    for x in cfg:
        if x == "M":
            features.append(MaxPool2d(2, 2))
            continue
        features += [Conv2d(c, x, 3, padding=1, seed=s[k]), BatchNorm2d(x), ReLU()]
        c, k = x, k + 1
    return Sequential({"features": Sequential(*features), "flatten": Flatten(),
                       "classifier": Linear(512, num_classes, seed=s[k])})


def lenet(num_classes=10, seed=0, in_channels=3):
    """kuangliu/pytorch-cifar's LeNet (``LeNet()``, LeCun et al.'s LeNet-5 for 32x32 RGB input):

    ==============  ========================================================  ============
    name            layers                                                    output
    ==============  ========================================================  ============
    conv1 ... pool1 conv5x5(6, with bias) - relu - 2x2 max pool               6 x 14 x 14
    conv2 ... pool2 conv5x5(16, with bias) - relu - 2x2 max pool              16 x 5 x 5
    flatten                                                                   400
    fc1, fc2, fc3   linear(400 -> 120) - relu - linear(120 -> 84) - relu -    num_classes
                    linear(84 -> num_classes), each with bias
    ==============  ========================================================  ============

    No padding, no batch norm. His keys as they are (``conv1.weight`` ... ``fc3.bias``; the ReLUs and
    pools, ``relu1`` ... ``relu4``, ``pool1``, ``pool2``, hold no parameters). 62,006 parameters.
    Input must be ``in_channels`` x 32 x 32 (3: RGB). Its recipe, ``RECIPES['lenet']``, is kuangliu's
    main.py, as resnet18's."""
    c = _in_channels("lenet", in_channels)
    s = _seeds(seed, 5)
    return Sequential({
        "conv1": Conv2d(c, 6, 5, seed=s[0]), "relu1": ReLU(), "pool1": MaxPool2d(2),
        "conv2": Conv2d(6, 16, 5, seed=s[1]), "relu2": ReLU(), "pool2": MaxPool2d(2),
        "flatten": Flatten(),
        "fc1": Linear(16 * 5 * 5, 120, seed=s[2]), "relu3": ReLU(),
        "fc2": Linear(120, 84, seed=s[3]), "relu4": ReLU(),
        "fc3": Linear(84, num_classes, seed=s[4]),
    })
