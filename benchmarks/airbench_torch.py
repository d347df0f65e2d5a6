"""The airbench recipes in PyTorch eager: the baseline gpuconv's ``--recipe airbench94`` (and
airbench95, airbench96) is timed against (benchmarks/bench_airbench.py), written from the recipe's
description, in airbench's own
arithmetic where gpuconv has its own (a summed loss with airbench's per-1024-example lr and weight
decay; gpuconv converts them for a mean loss), so the validation that both take the same first
steps also checks that conversion.

What it trains is ``gpuconv.recipes.RECIPES['airbench94']`` step for step:

- the network of ``gpuconv.models.airbench94`` with the same parameter names (weights can be
  copied across): a frozen 2x2 whitening conv from the training patches' eigenvectors and their
  negations, three conv-pool-BN-GELU-conv-BN-GELU blocks with dirac initialization, BN weights
  frozen at 1, a 3x3 max pool, a bias-free linear head times 1/9;
- Nesterov SGD in two groups (BN biases at 64x the lr), airbench's decoupled weight decay; the
  triangular schedule (0.2 -> 1 at 23% of the steps -> 0.07); label smoothing 0.2; the whitening
  bias trained for the first 3 epochs only; the lookahead average every 5 steps with decay
  ``0.95**5 * (step/total)**3`` and a last pull onto the average;
- the data set uploaded once, on the device each epoch: a random 2-pixel translation with
  reflect padding and horizontal flips that alternate per image and epoch, a fresh shuffle, the
  last partial batch left out (the recipe's drop_last, as gpuconv's loader does it).

``--recipe airbench95``: the same, widths 128/384/384, 15 epochs at lr 10. ``--recipe airbench96``
(``RECIPES``): airbench96's network (each block conv - pool - BN - GELU, then a residual connection
over conv - BN - GELU - conv - BN, then GELU; widths 128/384/512; PyTorch's default BN momentum),
37 epochs at lr 9 and weight decay 0.012, the lr from 0.2 to 1 over 10% of the steps and then to
0, 4-pixel translations and a 12-pixel cutout (a square of each augmented image zeroed).
``--recipe airbench94_muon``: airbench94's network with the muon script's head and whitening bias,
8 epochs of batch 2000, Muon on the filters and SGD on the rest, linear decays, no lookahead.
``--recipe airbench96_faster``: airbench96's for 45 epochs, each step on the half of its batch
that a proxy network selects (:func:`proxy_step`: every image's loss, the hardest by
:func:`select_hardest`, every 4th step a step of SGD on their summed loss).

Precision: 'fp32' (TF32 left as the caller set it) or 'bf16' (autocast, channels_last; BN in
float32, as under gpuconv's mixed precision). Standalone use, on synthetic images:

    python benchmarks/airbench_torch.py --images 50000 --precision bf16
    python benchmarks/airbench_torch.py --recipe airbench96 --images 50000 --precision bf16
    python benchmarks/airbench_torch.py --data ../shared/data/cifar10-subset/cifar-10-batches-py \
        --precision fp32 --epochs 20 --batch-size 256 --seed 0    # accuracy on the held-out batch
"""
from __future__ import annotations

import argparse
import collections
import pathlib
import sys
import time

import numpy as np

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
HYPER = dict(epochs=10, batch_size=1024, optimizer="airbench", lr=11.5, weight_decay=0.0153, momentum=0.85,
             bias_scaler=64.0, label_smoothing=0.2, padding=2, lookahead_every=5, whiten_bias_epochs=3,
             whiten_bias="zeros", widths=(64, 256, 256), bn_momentum=0.4, bn_eps=1e-12, scale=1 / 9, head_std=None,
             warmup_fraction=0.23, lr_start=0.2, lr_end=0.07, cutout=0, residual=False)
RECIPES = {
    "airbench94": HYPER,
    "airbench95": dict(HYPER, epochs=15, lr=10.0, widths=(128, 384, 384)),
    "airbench96": dict(HYPER, epochs=37, lr=9.0, weight_decay=0.012, padding=4, cutout=12, widths=(128, 384, 512),
                       bn_momentum=0.1, warmup_fraction=0.1, lr_end=0.0, residual=True),
    # Muon on the filters (lr 0.24, Nesterov momentum 0.6, the weights renormalized before each
    # step), Nesterov SGD (momentum 0.85) on the biases (0.053 per example; the whitening bias
    # in a group of its own, its lr decaying to 0 over its 3 epochs) and the head (0.67), weight
    # decay 2e-6 per example and step on those; everything else decays linearly to 0; no
    # lookahead; the head divided by its width from unit-std weights, the whitening bias from
    # PyTorch's default draw.
    "airbench94_muon": dict(HYPER, epochs=8, batch_size=2000, optimizer="muon", lr=0.24, muon_momentum=0.6,
                            bias_lr=0.053, head_lr=0.67, momentum=0.85, weight_decay=2e-6, lookahead_every=None,
                            whiten_bias="uniform", whiten_bias_decay=True, scale=None, head_std=1.0,
                            warmup_fraction=0.0, lr_end=0.0),
}
# airbench96_faster: airbench96's, 45 epochs, each step trained on keep_fraction of its batch, the
# images a proxy network (airbench94's blocks at proxy_widths, PyTorch's default BN momentum, its
# whitening bias frozen) finds hardest; the proxy trains at every proxy_train_every-th step
# (proxy_step, select_hardest).
AIRBENCH96_FASTER = RECIPES["airbench96_faster"] = dict(RECIPES["airbench96"], epochs=45, keep_fraction=0.5,
                                                        proxy_widths=(32, 64, 64), proxy_train_every=4)


def torch_layers(torch):
    """(Scale, Residual): the modules of gpuconv's layers that torch.nn lacks, ``x * factor`` and
    ``x + inner(x)`` (``shortcut(x) + inner(x)`` with a shortcut; benchmarks/common.py's torch mirror
    of gpuconv networks builds with them too)."""
    nn = torch.nn

    class Scale(nn.Module):
        def __init__(self, factor):
            super().__init__()
            self.factor = factor

        def forward(self, x):
            return x * self.factor

    class Residual(nn.Module):
        def __init__(self, inner, shortcut=None):
            super().__init__()
            self.inner = inner
            self.shortcut = shortcut

        def forward(self, x):
            return (x if self.shortcut is None else self.shortcut(x)) + self.inner(x)

    return Scale, Residual


def build(torch, widths=None, num_classes=10, h=None):
    """The recipe ``h``'s network (airbench94's by default), parameter names as in
    ``gpuconv.models.airbench94`` / ``airbench96``."""
    h = HYPER if h is None else h
    widths = h["widths"] if widths is None else widths
    nn = torch.nn
    Scale, Residual = torch_layers(torch)

    def block(c_in, c_out):
        def conv(c):  # airbench: dirac_(w[:w.size(1)]), each conv's own inputs
            layer = nn.Conv2d(c, c_out, 3, padding="same", bias=False)
            torch.nn.init.dirac_(layer.weight.data[:layer.in_channels])
            return layer

        def norm():
            layer = nn.BatchNorm2d(c_out, momentum=h["bn_momentum"], eps=h["bn_eps"])
            layer.weight.requires_grad = False
            return layer

        layers = collections.OrderedDict(conv1=conv(c_in), pool=nn.MaxPool2d(2), norm1=norm(), gelu1=nn.GELU())
        if not h["residual"]:
            layers.update(conv2=conv(c_out), norm2=norm(), gelu2=nn.GELU())
        else:
            layers.update(res=Residual(nn.Sequential(collections.OrderedDict(
                conv2=conv(c_out), norm2=norm(), gelu2=nn.GELU(), conv3=conv(c_out), norm3=norm()))),
                gelu=nn.GELU())
        return nn.Sequential(layers)

    w1, w2, w3 = widths
    whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
    whiten.weight.requires_grad = False
    if h["whiten_bias"] == "zeros":  # airbench94's; the muon script keeps PyTorch's default draw
        torch.nn.init.zeros_(whiten.bias)
    fc = nn.Linear(w3, num_classes, bias=False)
    if h["head_std"]:  # the muon script's head: unit-std weights, divided by its width
        fc.weight.data *= h["head_std"] / fc.weight.data.std()
    return nn.Sequential(collections.OrderedDict(
        whiten=whiten, gelu0=nn.GELU(), block1=block(24, w1), block2=block(w1, w2), block3=block(w2, w3),
        pool=nn.MaxPool2d(3), flatten=nn.Flatten(), fc=fc, scale=Scale(h["scale"] or 1 / w3)))


def init_whitening(torch, conv, images, eps=5e-4):
    """Whitening filters from the 2x2 patches of ``images`` (normalized, N x 3 x H x W, the first
    5000 used), on the device: the covariance's eigenvectors by decreasing eigenvalue, each over
    sqrt(eigenvalue + eps), then the same negated."""
    x = images[:5000].double()
    c, (kh, kw) = x.shape[1], conv.kernel_size
    patches = x.unfold(2, kh, 1).unfold(3, kw, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw)
    values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
    values, vectors = values.flip(0), vectors.flip(1)
    filters = (vectors.T / torch.sqrt(values + eps)[:, None]).reshape(-1, c, kh, kw)
    conv.weight.data[:] = torch.cat([filters, -filters]).to(conv.weight.dtype)


def optimizer(torch, model, batch_size, h=None):
    """The recipe's optimizers, a list, each group's starting lr kept as its ``initial_lr``
    (:func:`set_lrs`). airbench's SGD: lr and weight decay per 1024 examples for a SUMMED loss,
    divided by how much Nesterov momentum amplifies a step; BN biases at ``bias_scaler`` times the
    lr; every group decays its weights by the same amount per step whatever its lr. The muon
    recipe: :class:`Muon` on the filters and SGD on the rest, in the published script's groups."""
    h = HYPER if h is None else h
    opts = _muon_pair(torch, model, batch_size, h) if h["optimizer"] == "muon" else [_sgd(torch, model, batch_size, h)]
    for o in opts:
        for g in o.param_groups:
            g["initial_lr"] = g["lr"]
    return opts


def _muon_pair(torch, model, batch_size, h):
    named = [(n, p) for n, p in model.named_parameters() if n != "whiten.weight"]  # frozen for good
    decay = h["weight_decay"] * batch_size
    groups = [dict(params=[model.whiten.bias], lr=h["bias_lr"], weight_decay=decay / h["bias_lr"],
                   own_decay=h["whiten_bias_decay"]),
              dict(params=[p for n, p in named if ".norm" in n], lr=h["bias_lr"], weight_decay=decay / h["bias_lr"]),
              dict(params=[model.fc.weight], lr=h["head_lr"], weight_decay=decay / h["head_lr"])]
    filters = [p for _, p in named if p.dim() == 4]
    return [torch.optim.SGD(groups, momentum=h["momentum"], nesterov=True),
            Muon(torch, filters, lr=h["lr"], momentum=h["muon_momentum"])]


def Muon(torch, params, lr, momentum, steps=3):
    """Muon as the airbench94_muon script steps it: Nesterov momentum (buffer from zero), the
    weights renormalized to norm sqrt(rows), then ``p -= lr * NS(g)``, NS being ``steps``
    quintic Newton-Schulz iterations from ``g / ||g||`` (rows x the rest). Computed in float32,
    as gpuconv's ``optim.newton_schulz`` (the script uses bfloat16)."""
    coeffs = (3.4445, -4.7750, 2.0315)

    def orthogonalize(g, eps=1e-7):
        x = g.float()
        x = x / (x.norm() + eps)
        tall = x.shape[0] > x.shape[1]
        if tall:
            x = x.T
        a, b, c = coeffs
        for _ in range(steps):
            A = x @ x.T
            x = a * x + (b * A + c * (A @ A)) @ x
        return x.T if tall else x

    class _Muon(torch.optim.Optimizer):
        @torch.no_grad()
        def step(self):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p.grad)
                    buf = state["momentum_buffer"]
                    buf.mul_(group["momentum"]).add_(p.grad)
                    g = p.grad.add(buf, alpha=group["momentum"])
                    p.mul_(len(p) ** 0.5 / p.norm())
                    p.add_(orthogonalize(g.reshape(len(g), -1)).view(g.shape).to(p.dtype), alpha=-group["lr"])

    return _Muon(params, dict(lr=lr, momentum=momentum))


def set_lrs(opts, step, total, bias_steps, h):
    """Every group's lr for ``step`` of ``total``: its initial lr times the schedule's factor, or
    (the muon recipe's whitening bias) times a linear decay to 0 over ``bias_steps``."""
    for o in opts:
        for g in o.param_groups:
            f = max(0.0, 1 - step / bias_steps) if g.get("own_decay") else lr_factor(step, total, h)
            g["lr"] = g["initial_lr"] * f


def _sgd(torch, model, batch_size, h):
    kilostep = 1024 * (1 + 1 / (1 - h["momentum"]))
    lr = h["lr"] / kilostep
    decay = h["weight_decay"] * batch_size / kilostep
    named = [(n, p) for n, p in model.named_parameters() if n != "whiten.weight"]  # frozen for good
    norm = [p for n, p in named if ".norm" in n]
    other = [p for n, p in named if ".norm" not in n]
    bias_lr = lr * h["bias_scaler"]
    groups = [dict(params=norm, lr=bias_lr, weight_decay=decay / bias_lr),
              dict(params=other, lr=lr, weight_decay=decay / lr)]
    return torch.optim.SGD(groups, momentum=h["momentum"], nesterov=True)


def lr_factor(step, total, h=None):
    """The triangular schedule: 0.2 -> 1 over the first 23% of the steps -> 0.07 at the end
    (airbench96: over 10%, then to 0; the muon recipe: from 1 straight down to 0)."""
    h = HYPER if h is None else h
    warmup = int(total * h["warmup_fraction"])
    if step < warmup:
        f = step / warmup
        return h["lr_start"] * (1 - f) + f
    f = min(1.0, (step - warmup) / max(1, total - warmup))
    return (1 - f) + h["lr_end"] * f


class Lookahead:
    """The weight average (parameters and float buffers) the model is pulled back onto."""

    def __init__(self, torch, model):
        self.torch = torch
        self.tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.ema = [t.detach().clone() for t in self.tensors]

    def update(self, decay):
        with self.torch.no_grad():
            for w, e in zip(self.tensors, self.ema):
                e.lerp_(w, 1 - decay)
                w.copy_(e)


def decay_at(step, total):
    return 0.95 ** 5 * (step / total) ** 3


class Loader:
    """Device-resident CIFAR batches with airbench's augmentation, one epoch per iteration."""

    def __init__(self, torch, images_u8, labels, batch_size, device, padding=2, seed=0, channels_last=False,
                 drop_last=True, cutout=0):
        self.torch, self.batch_size, self.padding, self.drop_last = torch, batch_size, padding, drop_last
        self.cutout = cutout
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        x = torch.as_tensor(images_u8, device=device).float() / 255
        mean = torch.tensor(CIFAR10_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR10_STD, device=device).view(1, 3, 1, 1)
        self.images = (x - mean) / std
        self.labels = torch.as_tensor(labels, device=device).long()
        self.flip = torch.rand(len(x), device=device, generator=self.gen) < 0.5  # alternates per epoch
        self.channels_last = channels_last
        self.epoch = 0

    def __len__(self):
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def augmented(self, epoch):
        torch, p, x = self.torch, self.padding, self.images
        n, c, h, w = x.shape
        padded = torch.nn.functional.pad(x, (p, p, p, p), mode="reflect")
        dy = torch.randint(0, 2 * p + 1, (n,), device=x.device, generator=self.gen)
        dx = torch.randint(0, 2 * p + 1, (n,), device=x.device, generator=self.gen)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w + 2 * p)
        out = padded.gather(2, rows)
        flip = self.flip ^ bool(epoch % 2)
        cols = dx[:, None] + torch.arange(w, device=x.device)
        cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :].expand(n, c, h, w)
        out = out.gather(3, cols)
        if self.cutout:  # airbench96: a square of each augmented image zeroed, its corner uniform
            s = self.cutout
            cy = torch.randint(0, h - s + 1, (n,), device=x.device, generator=self.gen)
            cx = torch.randint(0, w - s + 1, (n,), device=x.device, generator=self.gen)
            ry = torch.arange(h, device=x.device)[None, :] - cy[:, None]
            rx = torch.arange(w, device=x.device)[None, :] - cx[:, None]
            inside = ((ry >= 0) & (ry < s))[:, None, :, None] & ((rx >= 0) & (rx < s))[:, None, None, :]
            out = out.masked_fill(inside, 0)
        return out

    def __iter__(self):
        torch = self.torch
        x = self.augmented(self.epoch)
        order = torch.randperm(len(x), device=x.device, generator=self.gen)
        self.epoch += 1
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            xb = x[idx]
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, self.labels[idx]


def loss_of(torch, model, x, y, precision, smoothing=0.2):
    """The SUMMED label-smoothed cross entropy (airbench's form) in float32 (float64 for a float64
    model), under autocast for bf16."""
    if precision == "bf16":
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            logits = model(x)
    else:
        logits = model(x)
    if logits.dtype != torch.float64:  # (a float64 model, a check's, keeps its precision)
        logits = logits.float()
    return torch.nn.functional.cross_entropy(logits, y, label_smoothing=smoothing, reduction="sum")


def train(torch, images_u8, labels, device="cuda", precision="fp32", epochs=None, batch_size=None, widths=None, seed=0,
          model=None, drop_last=True, batches=None, h=None, proxy=None):
    """The whole recipe from uploaded images to the trained model: (model, seconds, the last
    epoch's mean loss). The seconds run from the upload to the last step, synchronized (whitening
    init included); the loss is summed on the device and read once, at the end. ``batches``:
    per epoch, the (x, y) tensors to train on instead of this loader's (a check feeds it another
    loader's augmented batches). ``h``: the recipe (``RECIPES``; airbench94's by default), whose
    epochs, batch size and widths the others default to. A recipe with data selection
    (``AIRBENCH96_FASTER``) runs its proxy (``proxy``: a network of :func:`build_proxy`, else one
    built and whitened here) on each batch and trains the model on the rows it selects, with the
    same summed loss and lr per 1024 examples (the published script runs the proxy over the whole
    run first; it sees the same batches either way). The mean loss returned is over the images
    trained on."""
    h = HYPER if h is None else h
    epochs = h["epochs"] if epochs is None else epochs
    batch_size = h["batch_size"] if batch_size is None else batch_size
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    torch.manual_seed(seed)
    sync()
    t0 = time.perf_counter()
    channels_last = precision == "bf16"
    loader = Loader(torch, images_u8, labels, batch_size, device, padding=h["padding"], seed=seed,
                    channels_last=channels_last, drop_last=drop_last and batch_size <= len(labels), cutout=h["cutout"])
    if model is None:
        model = build(torch, widths, h=h).to(device)
        init_whitening(torch, model.whiten, loader.images)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opts = optimizer(torch, model, batch_size, h)
    selecting = "keep_fraction" in h
    if selecting:
        if proxy is None:
            proxy = build_proxy(torch, h=h).to(device)
            init_whitening(torch, proxy.whiten, loader.images)
        if channels_last:
            proxy = proxy.to(memory_format=torch.channels_last)
        proxy_opts = optimizer(torch, proxy, batch_size, proxy_recipe(h))
        proxy.train()
    per_epoch = len(loader) if batches is None else len(batches[0])
    total = epochs * len(loader) if batches is None else sum(len(b) for b in batches)
    average = Lookahead(torch, model) if h["lookahead_every"] else None
    step = 0
    model.train()
    for epoch in range(epochs):
        model.whiten.bias.requires_grad = epoch < h["whiten_bias_epochs"]
        loss_sum, trained = torch.zeros((), device=device), 0
        for x, y in (loader if batches is None else batches[epoch]):
            if selecting:
                k = max(1, int(round(len(y) * h["keep_fraction"])))
                rows, _ = proxy_step(torch, proxy, proxy_opts, x, y, step, total, proxy_recipe(h), k, precision)
                x, y = x[rows], y[rows]
            trained += len(y)
            set_lrs(opts, step, total, h["whiten_bias_epochs"] * per_epoch, h)
            loss = loss_of(torch, model, x, y, precision)
            model.zero_grad(set_to_none=True)
            loss.backward()
            for o in opts:
                o.step()
            loss_sum += loss.detach()
            step += 1
            if average is not None and step % h["lookahead_every"] == 0:
                average.update(decay_at(step, total))
    if average is not None:
        average.update(1.0)
    sync()
    seconds = time.perf_counter() - t0
    return model, seconds, float(loss_sum) / trained


def proxy_recipe(h):
    """The proxy network's recipe of ``h`` (airbench96_faster): airbench94's blocks (no residual
    connection) at ``h['proxy_widths']``, PyTorch's default BN momentum, the rest as ``h``."""
    return dict(h, widths=tuple(h["proxy_widths"]), residual=False, bn_momentum=0.1)


def build_proxy(torch, widths=None, h=None):
    """The proxy network of ``h``, its whitening bias frozen from the start (it is in no optimizer
    step: no gradient reaches it)."""
    model = build(torch, widths, h=proxy_recipe(h))
    model.whiten.bias.requires_grad = False
    return model


def select_hardest(torch, losses, k):
    """The positions of the ``k`` highest ``losses``, ascending; equal losses go to the lower
    position (a stable sort of the negated losses). The published script takes
    ``losses.argsort()[-k:]`` as a boolean mask, the same set where no two losses tie."""
    return torch.sort(torch.sort(-losses, stable=True).indices[:k]).values


def proxy_step(torch, model, opts, x, y, step, total, h, k, precision="fp32"):
    """The proxy's step ``step`` of ``total`` on the batch (x, y), as airbench96_faster's proxy run:
    the forward in training mode (BN statistics move), each image's label-smoothed loss, the ``k``
    highest selected; at the steps ``step % proxy_train_every == 0`` the SUMMED loss of those trains
    it (airbench's SGD, :func:`optimizer` over the whole batch's size), the lr at the schedule's
    ``step``; under autocast for bf16. Returns (selected positions, every image's loss)."""
    set_lrs(opts, step, total, 1, h)
    trains = step % h["proxy_train_every"] == 0
    with torch.set_grad_enabled(trains):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x)
        logits = logits.float() if precision == "bf16" else logits  # (a float64 check stays float64)
        losses = torch.nn.functional.cross_entropy(logits, y, label_smoothing=h["label_smoothing"],
                                                   reduction="none")
    rows = select_hardest(torch, losses.detach(), k)
    if trains:
        model.zero_grad(set_to_none=True)
        losses[rows].sum().backward()
        for o in opts:
            o.step()
    return rows, losses.detach()


def tta_logits(torch, model, x, level):
    """Test-time augmentation as ``gpuconv.trainer.tta_logits`` does it: 0 the image; 1 the mean
    with its mirror; 2 half that plus half the mirrored pair translated one pixel up-left and one
    down-right (reflect padding)."""
    def mirror(a):
        return (model(a) + model(a.flip(-1))) * 0.5

    if level == 0:
        return model(x)
    logits = mirror(x)
    if level == 1:
        return logits
    h, w = x.shape[2:]
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[:, :, dy:dy + h, dx:dx + w] for dy, dx in ((0, 0), (2, 2))]
    return logits * 0.5 + (mirror(shifted[0]) + mirror(shifted[1])) * 0.25


def accuracy(torch, model, images_u8, labels, device, level, batch=500):
    """Held-out accuracy of ``model`` (eval mode) at TTA ``level``."""
    mean = torch.tensor(CIFAR10_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=device).view(1, 3, 1, 1)
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(labels), batch):
            x = (torch.as_tensor(images_u8[i:i + batch], device=device).float() / 255 - mean) / std
            pred = tta_logits(torch, model, x, level).argmax(1).cpu().numpy()
            correct += int((pred == np.asarray(labels[i:i + batch])).sum())
    return correct / len(labels)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # the first paragraph
    p.add_argument("--recipe", choices=sorted(RECIPES), default="airbench94")
    p.add_argument("--images", type=int, default=50_000, help="synthetic CIFAR-shaped images")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's (1024)")
    p.add_argument("--width", type=int, default=None,
                   help="the first block's width, the others in the recipe's ratio (default: the published widths)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None,
                   help="a cifar-10-batches-py folder: train on data_batch_1-4, report the accuracy on data_batch_5 "
                        "at TTA 0, 1, 2 (the split gpuconv train uses when the folder has no test_batch)")
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError as exc:  # after the arguments: --help needs no torch
        p.exit(2, f"airbench_torch.py: the PyTorch baseline needs torch, which cannot be imported ({exc}): "
                  "pip install torch (a CUDA build to time it on a GPU)\n")
    h = RECIPES[args.recipe]
    args.epochs = h["epochs"] if args.epochs is None else args.epochs
    args.batch_size = h["batch_size"] if args.batch_size is None else args.batch_size
    widths = h["widths"] if args.width is None else tuple(args.width * w // h["widths"][0] for w in h["widths"])
    if args.width is not None and "proxy_widths" in h:  # the proxy scaled alike, as gpuconv's --width scales it
        h = dict(h, proxy_widths=tuple(max(1, args.width * w // h["widths"][0]) for w in h["proxy_widths"]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    if args.data:  # gpuconv's own reader and split, so that both sides train and score on the same images
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
        from gpuconv.cli import resolve_split
        from gpuconv.data import load_cifar10
        train_split, held, _, _ = resolve_split(load_cifar10(args.data, download=False), "batch5")
        images, labels, held_x, held_y = train_split.images, train_split.labels, held.images, held.labels
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (args.images, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, args.images)
    model, seconds, loss = train(torch, images, labels, device, args.precision, args.epochs, args.batch_size,
                                 widths=widths, seed=args.seed, h=h)
    if args.data:
        accs = [accuracy(torch, model, held_x, held_y, device, level) for level in (0, 1, 2)]
        print(f"held out (data_batch_5, {len(held_y)} images), seed {args.seed}: accuracy at TTA 0/1/2 "
              + " / ".join(f"{a:.4f}" for a in accs))
    print(f"{args.recipe} (widths {widths}) in PyTorch eager on {device}, {args.precision}: {len(labels)} images, "
          f"{args.epochs} epochs "
          f"of batch {args.batch_size} in {seconds:.2f} s (whitening included; on a GPU the first run includes "
          f"cuDNN's autotuning), last epoch's loss {loss:.4f}")


if __name__ == "__main__":
    main()
