"""Training recipes: each a model plus the hyperparameters it trains with, in one commented dict.

``gpuconv train --recipe NAME`` (or ``--model NAME``: every model has the recipe of its name)
starts from ``RECIPES[NAME]``; a flag such as ``--epochs`` or ``--batch-size`` overrides one value.

Keys of a recipe:
  model            the network (``gpuconv.models`` constructor and its keyword arguments: see
                   ``cli.MODELS``)
  model_kwargs     keyword arguments of that constructor the recipe sets (airbench94_muon: its
                   head, see :func:`gpuconv.models.airbench94`)
  epochs, batch_size
  optimizer        'sgd': SGD with ``lr``, ``weight_decay`` and ``momentum`` as given, Nesterov
                   unless ``nesterov`` is False, the batch's MEAN loss. 'airbench': the same SGD with airbench's decoupled
                   hyperparameters (:func:`airbench_param_groups`): ``lr`` and ``weight_decay``
                   per 1024 examples, independent of the momentum and of each other, batch-norm
                   biases at ``bias_scaler`` times the lr. 'muon': airbench94_muon's pair
                   (:func:`muon_optimizer`): Muon at ``lr`` for the conv filters, Nesterov SGD
                   for the biases (``bias_lr``) and the head (``head_lr``).
  schedule         'onecycle', 'cosine', 'constant', 'triangular' (:class:`optim.TriangularLR`) or
                   'linear' (a straight decay to 0)
  schedule_kwargs  arguments of the schedule the recipe sets (the triangle's ``warmup_fraction``,
                   ``start``, ``peak``, ``end``; the cosine's ``warmup_fraction``, 0.05 unless
                   given); dropped when ``--schedule`` picks another
  label_smoothing
  augment          random crops of the image padded by ``padding`` pixels (``padding_mode``
                   'zeros' or 'reflect') and horizontal flips (``flip`` 'random' per image and
                   epoch, or 'alternate': drawn once, every image flipped the other way each epoch)
  cutout           with augment, the side of a square set to the mean color in every training
                   image, drawn per image and epoch (0: none)
  drop_last        True: each epoch leaves out the last, partial batch (as airbench does: with a
                   mean loss and an lr set per batch_size images, a partial batch's step would
                   weigh each of its images batch_size / len times as much)
  lookahead        None, or the steps between updates of the weight average
                   (:mod:`gpuconv.lookahead`, airbench's decay schedule)
  whiten_bias_epochs  epochs during which the whitening conv's bias trains (then it is frozen)
  whiten_bias_lr   'schedule': the whitening bias's lr follows the run's schedule (airbench94,
                   whose bias is in the main group); 'decay': a group of its own whose lr falls
                   linearly from its initial value to 0 over the whitening bias's epochs
                   (airbench94_muon)
  tta              the test-time augmentation level of the final evaluation (0, 1, 2)
  select           None, or data selection by a proxy network (:mod:`gpuconv.selection`), a dict:
                   ``keep`` the share of each batch the main network trains on (the images of the
                   highest loss under the proxy), ``train_every`` the proxy's steps between its
                   updates, ``widths``, ``batchnorm_momentum`` and ``scaling_factor`` of the proxy
                   (an airbench94 network, its widths scaled with --width as the main network's);
                   the proxy trains with the recipe's optimizer, schedule and label smoothing, its
                   whitening bias frozen, without lookahead
  precision        'fp32', 'tf32', 'bf16', 'fp16', or 'auto': bf16 on a GPU with bfloat16 tensor
                   cores, fp16 on one with float16 tensor cores alone (a T4), fp32 on the CPU, the
                   simulator and older GPUs (:func:`amp.resolve_precision`);
                   the speed recipes say 'auto' (airbench94 itself trains in float16)
"""
from __future__ import annotations

RECIPES = {
    # Small nets without batch norm: OneCycle up to lr 0.02 trains them in a handful of epochs on
    # the 5k-image subset (0.05 measured to stall seed_net on small runs).
    "seed": dict(model="seed", epochs=8, batch_size=64, optimizer="sgd", lr=0.02, weight_decay=5e-4, momentum=0.9,
                 schedule="onecycle", label_smoothing=0.0, augment=False, lookahead=None, tta=0),
    "three_layer": dict(model="three_layer", epochs=8, batch_size=64, optimizer="sgd", lr=0.02, weight_decay=5e-4,
                        momentum=0.9, schedule="onecycle", label_smoothing=0.0, augment=False, lookahead=None,
                        tta=0),
    # The ResNet-9 recipe of "How to train your ResNet" (batch 512, peak lr 0.4, weight decay 5e-4,
    # label smoothing 0.2, crop + flip), written for a mean (not summed) batch loss.
    "fast": dict(model="fast", epochs=16, batch_size=512, optimizer="sgd", lr=0.4, weight_decay=5e-4, momentum=0.9,
                 schedule="onecycle", label_smoothing=0.2, augment=True, padding=4, padding_mode="zeros", flip="random",
                 lookahead=None, tta=0, width=64, precision="auto"),
    # The CIFAR ResNet-18 baseline as kuangliu/pytorch-cifar's main.py trains it (about 95% on
    # CIFAR-10): SGD with momentum 0.9, not Nesterov, lr 0.1 and weight decay 5e-4 (its
    # optim.SGD(..., lr=0.1, momentum=0.9, weight_decay=5e-4)); cosine annealing from 0.1 to 0 over
    # the run with no warmup (its CosineAnnealingLR(T_max=200), stepped per epoch; here per batch,
    # the same curve sampled finer); 200 epochs (its T_max and run length); batch 128 (its
    # trainloader); random crop with 4 zero pixels of padding and random horizontal flip (its
    # RandomCrop(32, padding=4), RandomHorizontalFlip()); no label smoothing, lookahead or TTA.
    # kuangliu trains in float32: 'auto' is bf16 on a GPU with bfloat16 tensor cores, as the
    # other GPU-sized recipes (--precision fp32 for kuangliu's arithmetic); width 64 is the
    # published net (--width scales it for quick runs).
    "resnet18": dict(model="resnet18", epochs=200, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4,
                     momentum=0.9, nesterov=False, schedule="cosine", schedule_kwargs=dict(warmup_fraction=0.0),
                     label_smoothing=0.0, augment=True, padding=4, padding_mode="zeros", flip="random",
                     lookahead=None, tta=0, width=64, precision="auto"),
    # kuangliu/pytorch-cifar's MobileNetV2 as the same main.py trains it: resnet18's recipe above
    # (SGD lr 0.1, momentum 0.9 without Nesterov, weight decay 5e-4 on every parameter, cosine to 0
    # over 200 epochs without warmup, batch 128, crop (pad 4) + flip); his net has no width.
    "mobilenetv2": dict(model="mobilenetv2", epochs=200, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4,
                        momentum=0.9, nesterov=False, schedule="cosine", schedule_kwargs=dict(warmup_fraction=0.0),
                        label_smoothing=0.0, augment=True, padding=4, padding_mode="zeros", flip="random",
                        lookahead=None, tta=0, precision="auto"),
    # kuangliu/pytorch-cifar's SENet18 as the same main.py trains it: resnet18's recipe (SGD lr 0.1,
    # momentum 0.9 without Nesterov, weight decay 5e-4 on every parameter, the gates' included,
    # cosine to 0 over 200 epochs without warmup, batch 128, crop (pad 4) + flip); no width.
    "senet18": dict(model="senet18", epochs=200, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4,
                    momentum=0.9, nesterov=False, schedule="cosine", schedule_kwargs=dict(warmup_fraction=0.0),
                    label_smoothing=0.0, augment=True, padding=4, padding_mode="zeros", flip="random",
                    lookahead=None, tta=0, precision="auto"),
    # kuangliu/pytorch-cifar's ShuffleNetV2(1) as the same main.py trains it: resnet18's recipe (SGD
    # lr 0.1, momentum 0.9 without Nesterov, weight decay 5e-4 on every parameter, cosine to 0 over
    # 200 epochs without warmup, batch 128, crop (pad 4) + flip); net_size 1, his main.py's.
    "shufflenetv2": dict(model="shufflenetv2", epochs=200, batch_size=128, optimizer="sgd", lr=0.1,
                         weight_decay=5e-4, momentum=0.9, nesterov=False, schedule="cosine",
                         schedule_kwargs=dict(warmup_fraction=0.0), label_smoothing=0.0, augment=True, padding=4,
                         padding_mode="zeros", flip="random", lookahead=None, tta=0, precision="auto"),
    # kuangliu/pytorch-cifar's EfficientNetB0 as the same main.py trains it: resnet18's recipe (SGD lr
    # 0.1, momentum 0.9 without Nesterov, weight decay 5e-4 on every parameter, cosine to 0 over 200
    # epochs without warmup, batch 128, crop (pad 4) + flip); the net's own dropout 0.2; no width.
    "efficientnetb0": dict(model="efficientnetb0", epochs=200, batch_size=128, optimizer="sgd", lr=0.1,
                           weight_decay=5e-4, momentum=0.9, nesterov=False, schedule="cosine",
                           schedule_kwargs=dict(warmup_fraction=0.0), label_smoothing=0.0, augment=True, padding=4,
                           padding_mode="zeros", flip="random", lookahead=None, tta=0, precision="auto"),
    # kuangliu/pytorch-cifar's SimpleDLA, the net his main.py trains, with that main.py's recipe, as
    # resnet18's (SGD lr 0.1, momentum 0.9 without Nesterov, weight decay 5e-4 on every parameter,
    # cosine to 0 over 200 epochs without warmup, batch 128, crop (pad 4) + flip); no width.
    "simpledla": dict(model="simpledla", epochs=200, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4,
                      momentum=0.9, nesterov=False, schedule="cosine", schedule_kwargs=dict(warmup_fraction=0.0),
                      label_smoothing=0.0, augment=True, padding=4, padding_mode="zeros", flip="random",
                      lookahead=None, tta=0, precision="auto"),
    # More of kuangliu/pytorch-cifar's networks, each with his main.py's recipe, as resnet18's (SGD lr
    # 0.1, momentum 0.9 without Nesterov, weight decay 5e-4 on every parameter, cosine to 0 over 200
    # epochs without warmup, batch 128, crop (pad 4) + flip): VGG('VGG19'), MobileNet(),
    # ResNeXt29_2x64d(), GoogLeNet(), DenseNet121(), RegNetX_200MF(), ShuffleNetG2(), ShuffleNetG3(),
    # LeNet(), DLA(), PNASNetA(), PNASNetB(), DPN26(), DPN92() and DenseNet169/201/161(), which have
    # no width; his
    # ResNet34-152 and PreActResNet18-152, whose width (64, his) --width sets as resnet18's.
    **{name: dict(model=name, epochs=200, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4, momentum=0.9,
                  nesterov=False, schedule="cosine", schedule_kwargs=dict(warmup_fraction=0.0), label_smoothing=0.0,
                  augment=True, padding=4, padding_mode="zeros", flip="random", lookahead=None, tta=0,
                  precision="auto", **({"width": 64} if "resnet" in name else {}))
       for name in ("vgg19", "mobilenet", "resnext29", "googlenet", "densenet121", "regnetx_200mf",
                    "shufflenetg2", "shufflenetg3", "lenet", "dla", "pnasneta", "pnasnetb", "dpn26", "dpn92",
                    "densenet169", "densenet201", "densenet161",
                    "resnet34", "resnet50", "resnet101", "resnet152", "preact_resnet18", "preact_resnet34",
                    "preact_resnet50", "preact_resnet101", "preact_resnet152")},
    # Keller Jordan's airbench94 (arXiv 2404.00498; 94.01% mean on CIFAR-10 in 3.83 s on an A100).
    # The published run stops at 9.9 epochs; gpuconv trains whole epochs, so 10 with the schedule
    # laid out over them. lr 11.5 and weight decay 0.0153 are per 1024 examples in airbench's
    # decoupled form (see airbench_param_groups); momentum 0.85; BN biases at 64x the lr.
    "airbench94": dict(model="airbench94", epochs=10, batch_size=1024, optimizer="airbench", lr=11.5,
                       weight_decay=0.0153, momentum=0.85, bias_scaler=64.0, schedule="triangular",
                       label_smoothing=0.2, augment=True, padding=2, padding_mode="reflect", flip="alternate",
                       drop_last=True, lookahead=5, whiten_bias_epochs=3, tta=2, precision="auto"),
    # airbench95 (95.01% mean in 10.4 s on an A100): airbench94's network and recipe, wider
    # (128, 384, 384), 15 epochs at lr 10.0.
    "airbench95": dict(model="airbench94", model_kwargs=dict(widths=[128, 384, 384]), epochs=15, batch_size=1024,
                       optimizer="airbench", lr=10.0, weight_decay=0.0153, momentum=0.85, bias_scaler=64.0,
                       schedule="triangular", label_smoothing=0.2, augment=True, padding=2, padding_mode="reflect",
                       flip="alternate", drop_last=True, lookahead=5, whiten_bias_epochs=3, tta=2, precision="auto"),
    # airbench96 (96.03% mean in 34.7 s on an A100): airbench96's network (a third conv and a
    # residual connection per block, widths 128/384/512), 37 epochs at lr 9.0 and weight decay 0.012
    # (per 1024 examples), a warmup of 10% of the steps from 0.2 to 1 and then a decay to 0,
    # 4-pixel reflect translations and 12-pixel cutout.
    "airbench96": dict(model="airbench96", epochs=37, batch_size=1024, optimizer="airbench", lr=9.0,
                       weight_decay=0.012, momentum=0.85, bias_scaler=64.0, schedule="triangular",
                       schedule_kwargs=dict(warmup_fraction=0.1, start=0.2, peak=1.0, end=0.0), label_smoothing=0.2,
                       augment=True, padding=4, padding_mode="reflect", flip="alternate", cutout=12, drop_last=True,
                       lookahead=5, whiten_bias_epochs=3, tta=2, precision="auto"),
    # airbench96_faster (96.0% mean in 27.3 s on an A100, against airbench96's 34.7 s): airbench96's
    # network, optimizer, schedule, augmentation, lookahead and TTA, 45 epochs, each step trained on
    # half its batch, the 512 of its 1024 images that a small proxy network finds hardest. The proxy
    # (airbench94's blocks at widths 32/64/64, PyTorch's default BN momentum, head 1/9, its whitening
    # bias frozen from the start, no lookahead) sees the same batches, computes each image's
    # label-smoothed loss in training mode and selects the 512 highest; at every 4th step it also
    # trains on their summed loss with the same optimizer and schedule (the schedule stepping at every
    # step). Both networks' loss is the sum over the 512 with lr and weight decay per 1024 examples, as
    # published (a step as large as airbench96's on a whole batch). The whitening bias of the main
    # network trains for 3 epochs as airbench96's (the published script's freeze compares the epoch
    # with 3 * steps_per_epoch and never fires, so there it trains throughout).
    "airbench96_faster": dict(model="airbench96", epochs=45, batch_size=1024, optimizer="airbench", lr=9.0,
                              weight_decay=0.012, momentum=0.85, bias_scaler=64.0, schedule="triangular",
                              schedule_kwargs=dict(warmup_fraction=0.1, start=0.2, peak=1.0, end=0.0),
                              label_smoothing=0.2, augment=True, padding=4, padding_mode="reflect", flip="alternate",
                              cutout=12, drop_last=True, lookahead=5, whiten_bias_epochs=3, tta=2, precision="auto",
                              select=dict(keep=0.5, train_every=4, widths=[32, 64, 64], batchnorm_momentum=0.9,
                                          scaling_factor=1 / 9)),
    # airbench94_muon (2.59 s on an A100, 94.01% mean): the same network, 8 epochs of batch 2000,
    # Muon (lr 0.24, momentum 0.6, 3 Newton-Schulz steps) on the conv filters and Nesterov SGD
    # (momentum 0.85) on the biases (lr 0.053) and the head (lr 0.67), with weight decay 2e-6 per
    # example and step; these lrs are the published ones for a SUMMED loss (muon_optimizer
    # converts them), all decaying linearly to 0, no lookahead. Its network's head divides by
    # its width (256) and starts from unit-std weights, where airbench94's multiplies by 1/9: the
    # head lr is for that head; its whitening bias starts from PyTorch's default draw (airbench94
    # zeroes it) and its lr decays linearly to 0 over its own 3 epochs (whiten_bias_lr 'decay').
    "airbench94_muon": dict(model="airbench94", model_kwargs=dict(scaling_factor=None, head_std=1.0,
                                                                  whiten_bias="uniform"),
                            epochs=8, batch_size=2000, optimizer="muon", lr=0.24, momentum=0.6,
                            bias_lr=0.053, head_lr=0.67, sgd_momentum=0.85, weight_decay=2e-6, schedule="linear",
                            label_smoothing=0.2, augment=True, padding=2, padding_mode="reflect", flip="alternate",
                            drop_last=True, lookahead=None, whiten_bias_epochs=3, whiten_bias_lr="decay", tta=2,
                            precision="auto"),
}

# What a recipe leaves out takes these values.
DEFAULTS = dict(optimizer="sgd", nesterov=True, padding=4, padding_mode="zeros", flip="random", drop_last=False, lookahead=None, tta=0,
                whiten_bias_epochs=0, whiten_bias_lr="schedule", bias_scaler=1.0, precision="fp32", model_kwargs={}, schedule_kwargs={}, cutout=0,
                select=None)


def get_recipe(name):
    """``RECIPES[name]`` over :data:`DEFAULTS`, a fresh dict (a ValueError naming the recipes for
    any other name)."""
    if name not in RECIPES:
        raise ValueError(f"recipe {name!r} is not known: use one of {', '.join(sorted(RECIPES))}")
    return dict(DEFAULTS, **RECIPES[name])


def airbench_param_groups(model, lr, weight_decay, momentum, batch_size, bias_scaler=64.0, mean_over=None):
    """SGD parameter groups with airbench's decoupled hyperparameters, for a MEAN batch loss.

    airbench divides its lr (per 1024 examples) by ``1024 * (1 + 1 / (1 - momentum))`` (how much
    Nesterov steps outgrow the gradients) for a SUMMED loss; a mean loss is ``batch_size`` times
    smaller, so the per-step lr here is that times ``batch_size``. The weight decay per step is
    ``weight_decay * batch_size / kilostep`` for every trainable parameter, whatever its lr, so
    each group's (coupled) SGD weight_decay is that divided by the group's lr. Batch-norm biases
    (the parameters of BatchNorm2d layers) get ``bias_scaler`` times the lr; frozen parameters
    stay in the groups (a whitening bias is switched on and off by epoch). ``mean_over``: the images
    the mean loss is taken over when it is not the batch (airbench96_faster's selected 512 of 1024:
    its loss is summed over them at the lr per 1024 examples), the weight decay still per
    ``batch_size``."""
    from .layers import BatchNorm2d
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    step_lr = lr / kilostep * (batch_size if mean_over is None else mean_over)
    decay = weight_decay * batch_size / kilostep
    norm_ids = {id(p) for _, m in model.named_modules() if isinstance(m, BatchNorm2d) for p in m.parameters()}
    norm = [p for p in model.parameters() if id(p) in norm_ids]
    other = [p for p in model.parameters() if id(p) not in norm_ids]
    bias_lr = step_lr * bias_scaler
    groups = [{"params": other, "lr": step_lr, "weight_decay": decay / step_lr}]
    if norm:
        groups.insert(0, {"params": norm, "lr": bias_lr, "weight_decay": decay / bias_lr})
    return groups, step_lr


def muon_optimizer(model, lr, momentum, bias_lr, head_lr, sgd_momentum, weight_decay, batch_size, separate=()):
    """airbench94_muon's optimizers as one :class:`optim.Chain`, for a MEAN batch loss: Muon
    (``lr``, Nesterov ``momentum``) on every trainable parameter of 4 dimensions (the conv
    filters; Muon's update does not depend on the gradient's scale), and Nesterov SGD on the rest:
    biases (1-D) at ``bias_lr``, the head at ``head_lr``. The SGD lrs are per example (airbench
    sums its loss), so the per-step lr is ``lr * batch_size``; the weight decay is
    ``weight_decay * batch_size`` per step for every SGD parameter, whatever its lr. Biases in
    ``separate`` (the whitening bias) get a group each of their own, first, at ``bias_lr``, so
    that a schedule can drive them apart (:meth:`optim.LRSchedule.own_schedule`)."""
    from .optim import SGD, Chain, Muon
    params = model.parameters()
    filters = [p for p in params if len(p.shape) == 4 and p.requires_grad]
    apart = {id(p) for p in separate}
    biases = [p for p in params if len(p.shape) == 1 and id(p) not in apart]
    head = [p for p in params if len(p.shape) == 2]
    decay = weight_decay * batch_size
    groups = [{"params": g, "lr": r * batch_size, "weight_decay": decay / (r * batch_size)}
              for g, r in [([p], bias_lr) for p in separate] + [(biases, bias_lr), (head, head_lr)] if g]
    sgd = SGD(groups, lr=groups[0]["lr"], momentum=sgd_momentum, nesterov=True)
    return Chain(Muon(filters, lr=lr, momentum=momentum, nesterov=True), sgd)
