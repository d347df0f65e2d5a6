"""Keller Jordan's airbench networks (arXiv 2404.00498) and their patch-whitening initialization."""
from __future__ import annotations

import numpy as np

from ..backend import asnumpy, copy_like
from ..layers import BatchNorm2d, Conv2d, Flatten, GELU, Linear, MaxPool2d, Residual, Scale, Sequential
from ._build import _in_channels, _seeds


def _dirac_(conv):
    """Identity initialization of the first ``in_channels`` filters (PyTorch's ``dirac_`` on
    ``w[:in_channels]``): filter i passes input channel i through at the kernel's centre; the
    other filters keep their random initialization."""
    w = np.array(conv.weight.data.get() if hasattr(conv.weight.data, "get") else conv.weight.data)
    n = min(conv.in_channels, conv.out_channels)
    kh, kw = conv.kernel_size
    w[:n] = 0
    w[np.arange(n), np.arange(n), kh // 2, kw // 2] = 1
    conv.weight.data = copy_like(w, conv.weight.data)


def _airbench_block(c_in, c_out, seed, bn_momentum, bn_eps, residual=False):
    # conv - pool - BN - GELU - conv - BN - GELU. The 2x2 pools take odd sizes down as PyTorch
    # does (31 -> 15 -> 7 -> 3). BatchNorm: weight frozen at 1, only the shift trained; the GELU is
    # its fused activation (the same bits as a GELU layer, one pass fewer). ``residual``
    # (airbench96): conv - pool - BN - GELU, then x + (conv - BN - GELU - conv - BN)(x), then GELU.
    s = _seeds(seed, 3 if residual else 2)

    def conv(i, c):
        layer = Conv2d(c, c_out, 3, padding="same", bias=False, seed=s[i])
        _dirac_(layer)
        return layer

    def norm(activation):
        layer = BatchNorm2d(c_out, eps=bn_eps, momentum=bn_momentum, activation=activation)
        layer.weight.requires_grad = False
        return layer

    layers = {"conv1": conv(0, c_in), "pool": MaxPool2d(2, floor=True), "norm1": norm("gelu")}
    if not residual:
        layers.update(conv2=conv(1, c_out), norm2=norm("gelu"))
        return Sequential(layers)
    layers["res"] = Residual(Sequential({"conv2": conv(1, c_out), "norm2": norm("gelu"), "conv3": conv(2, c_out),
                                         "norm3": norm(None)}))
    layers["gelu"] = GELU()
    return Sequential(layers)


def _airbench(name, widths, num_classes, seed, batchnorm_momentum, bn_eps, scaling_factor, head_std, residual,
              whiten_bias="zeros", in_channels=3):
    if len(widths) != 3 or not all(isinstance(w, (int, np.integer)) and w >= 1 for w in widths):
        raise ValueError(f"{name}: widths must be three positive ints, got {widths!r}")
    if not 0.0 <= batchnorm_momentum <= 1.0:
        raise ValueError(f"{name}: batchnorm_momentum must be in [0, 1] (the weight kept on the running "
                         f"statistics), got {batchnorm_momentum!r}")
    if whiten_bias not in ("zeros", "uniform"):
        raise ValueError(f"{name}: whiten_bias={whiten_bias!r} must be 'zeros' (airbench94, airbench96) or 'uniform' "
                         "(PyTorch's default, U(-1/sqrt(12), 1/sqrt(12)): airbench94_muon)")
    w1, w2, w3 = (int(w) for w in widths)
    s = _seeds(seed, 5)
    momentum = 1.0 - float(batchnorm_momentum)
    c = _in_channels(name, in_channels)
    whiten = Conv2d(c, 8 * c, 2, padding=0, bias=True, seed=s[0])  # 2 x 2 patches: 4c filters and their negations
    whiten.weight.requires_grad = False
    if whiten_bias == "zeros":
        whiten.bias.data[...] = 0
    layers = {
        "whiten": whiten,
        "gelu0": GELU(),
        "block1": _airbench_block(8 * c, w1, s[1], momentum, bn_eps, residual),
        "block2": _airbench_block(w1, w2, s[2], momentum, bn_eps, residual),
        "block3": _airbench_block(w2, w3, s[3], momentum, bn_eps, residual),
        "pool": MaxPool2d(3),
        "flatten": Flatten(),
        "fc": Linear(w3, num_classes, bias=False, seed=s[4]),
        "scale": Scale(1.0 / w3 if scaling_factor is None else scaling_factor),
    }
    if head_std is not None:
        if not head_std > 0:
            raise ValueError(f"{name}: head_std must be positive (the head weights' standard deviation), got "
                             f"{head_std!r}")
        fc = layers["fc"].weight
        # the factor from the host copy: the same bits on every device (a GPU sums in another order)
        fc.data *= fc.data.dtype.type(head_std / float(asnumpy(fc.data).std()))
    return Sequential(layers)


# The airbench networks' published widths, their constructors' defaults.
PUBLISHED_WIDTHS = {"airbench94": (64, 256, 256), "airbench96": (128, 384, 512)}


def airbench94(widths=PUBLISHED_WIDTHS["airbench94"], num_classes=10, seed=0, batchnorm_momentum=0.6, bn_eps=1e-12,
               scaling_factor=1 / 9, head_std=None, whiten_bias="zeros", in_channels=3):
    """The airbench94 network (Keller Jordan), for 3 x 32 x 32 input (``in_channels`` x H x W: the
    whitening conv takes ``8 * in_channels`` filters; 28 x 28 images pool to 1 x 1 as well):

    ==========  ====================================================  ===========
    name        layers                                                output
    ==========  ====================================================  ===========
    whiten      conv2x2 (24 filters: 12 whitening filters and their   24 x 31 x 31
                negations, frozen; bias trained), GELU
    block1..3   conv3x3 - maxpool2 - bn+gelu - conv3x3 - bn+gelu      w x 15/7/3
    pool        maxpool3 over the 3x3 map                             w3
    fc, scale   linear (no bias), times ``scaling_factor``            num_classes
    ==========  ====================================================  ===========

    ``widths`` (64, 256, 256) as published (airbench95: 128, 384, 384); tests use smaller ones.
    The head: airbench94's is ``scaling_factor`` 1/9 on a linear layer of the default
    (Kaiming-uniform) init; airbench94_muon's divides by its input width (``scaling_factor=None``: 1 / widths[2]) and
    starts from weights rescaled to a standard deviation of 1 (``head_std=1.0``), which its head lr
    was tuned for (with airbench94's head that lr diverges), and its whitening bias starts from
    PyTorch's default draw (``whiten_bias='uniform'``) where airbench94 zeroes it.
    ``batchnorm_momentum`` is the recipe's 0.6 weight on the running statistics (PyTorch/gpuconv
    momentum 1 - 0.6 = 0.4), ``bn_eps`` its 1e-12. The whitening weights are only a placeholder
    until :func:`init_whitening` sets them from training images (``gpuconv train`` does)."""
    return _airbench("airbench94", widths, num_classes, seed, batchnorm_momentum, bn_eps, scaling_factor, head_std,
                     residual=False, whiten_bias=whiten_bias, in_channels=in_channels)


def airbench96(widths=PUBLISHED_WIDTHS["airbench96"], num_classes=10, seed=0, batchnorm_momentum=0.9, bn_eps=1e-12,
               scaling_factor=1 / 9, head_std=None, in_channels=3):
    """airbench96's network (Keller Jordan; 96.03% mean on CIFAR-10 in 34.7 s on an A100): airbench94's
    whitening, pools and head, wider, and each block with a third convolution and a residual
    connection over its last two:

    ==========  ====================================================  ===========
    name        layers                                                output
    ==========  ====================================================  ===========
    whiten      conv2x2 (24 filters, frozen; bias trained), GELU      24 x 31 x 31
    block1..3   conv3x3 - maxpool2 - bn+gelu = x0;                    w x 15/7/3
                gelu(x0 + (conv3x3 - bn+gelu - conv3x3 - bn)(x0))
    pool        maxpool3 over the 3x3 map                             w3
    fc, scale   linear (no bias), times ``scaling_factor`` (1/9)      num_classes
    ==========  ====================================================  ===========

    Every conv identity-initialized (its first ``in_channels`` filters), batch norms with their
    weight frozen at 1. ``batchnorm_momentum`` 0.9 is the weight kept on the running statistics
    (the published net leaves PyTorch's default momentum, 0.1); the other arguments as
    :func:`airbench94`'s."""
    return _airbench("airbench96", widths, num_classes, seed, batchnorm_momentum, bn_eps, scaling_factor, head_std,
                     residual=True, in_channels=in_channels)


def init_whitening(conv, images, eps=5e-4, max_images=5000):
    """Set a 2x2 (k x k) whitening ``conv``'s weights from ``images`` (N, C, H, W, normalized
    floats, host or device; the first ``max_images`` are used): with ``P`` the matrix of every
    k x k patch (stride 1) flattened in (C, kh, kw) order, the eigenvectors of ``P^T P / n``
    by decreasing eigenvalue ``lambda``, each scaled by ``1 / sqrt(lambda + eps)``, as filters;
    then the same filters negated (the conv has ``2 C k^2`` filters). A dilated conv's patches are
    its taps', D pixels apart; a grouped conv is refused. Computed in float64 on the host: a
    12 x 12 covariance, summed over chunks of images."""
    from ..backend import asnumpy
    c, k = conv.in_channels, conv.kernel_size
    dil, groups = getattr(conv, "dilation", (1, 1)), getattr(conv, "groups", 1)
    if groups != 1:
        raise ValueError(f"init_whitening: the conv has groups={groups}, whose filters see a group's channels only; "
                         f"whitening decorrelates the patches of all {c} channels: use a conv with groups=1")
    d = c * k[0] * k[1]
    if conv.out_channels != 2 * d:
        raise ValueError(f"init_whitening: the conv has {conv.out_channels} filters; whitening {c} x {k[0]} x {k[1]} "
                         f"patches needs 2 * {d} = {2 * d} (each eigenvector and its negation)")
    x = asnumpy(images[:max_images])
    if x.ndim != 4 or x.shape[1] != c:
        raise ValueError(f"init_whitening: images must be (N, {c}, H, W), got shape {tuple(x.shape)}")
    cov, n = np.zeros((d, d)), 0
    for start in range(0, len(x), 500):
        chunk = np.asarray(x[start:start + 500], np.float64)
        reach = tuple(di * (ki - 1) + 1 for ki, di in zip(k, dil))  # a dilated filter's patch: taps D apart
        win = np.lib.stride_tricks.sliding_window_view(chunk, reach, axis=(2, 3))[..., ::dil[0], ::dil[1]]
        patches = win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, d)
        cov += patches.T @ patches
        n += len(patches)
    if n == 0:
        raise ValueError("init_whitening: no images given; pass training images")
    eigenvalues, eigenvectors = np.linalg.eigh(cov / n)
    order = np.argsort(eigenvalues)[::-1]
    filters = (eigenvectors[:, order].T / np.sqrt(eigenvalues[order] + eps)[:, None]).reshape(d, c, *k)
    conv.weight.data = copy_like(np.concatenate([filters, -filters]).astype(np.float32), conv.weight.data)
