"""The networks ``--model`` names (``MODELS``, ``build_model``) and a recipe's optimizer, schedule and
training extras for one of them (``_recipe_setup``)."""
from __future__ import annotations

import numpy as np

from ..data.augment import CIFAR10_MEAN, CIFAR10_STD
from ..recipes import get_recipe
from . import _output


# name -> (constructor in gpuconv.models, its extra keyword arguments).
MODELS = {"seed": ("seed_net", {}), "three_layer": ("three_layer_convnet", {}), "fast": ("fast_net", {}),
          "resnet18": ("resnet18", {}), "senet18": ("senet18", {}), "mobilenetv2": ("mobilenetv2", {}),
          "shufflenetv2": ("shufflenetv2", {}), "efficientnetb0": ("efficientnetb0", {}),
          "simpledla": ("simpledla", {}),
          "vgg19": ("vgg", {"vgg_name": "VGG19"}), "preact_resnet18": ("preact_resnet18", {}),
          "mobilenet": ("mobilenet", {}), "resnext29": ("resnext29", {}), "googlenet": ("googlenet", {}),
          "densenet121": ("densenet121", {}), "regnetx_200mf": ("regnet", {"regnet_name": "RegNetX_200MF"}),
          "shufflenetg2": ("shufflenet", {"groups": 2}), "shufflenetg3": ("shufflenet", {"groups": 3}),
          "lenet": ("lenet", {}), "dla": ("dla", {}), "pnasneta": ("pnasnet", {"cell_type": "A"}),
          "pnasnetb": ("pnasnet", {"cell_type": "B"}),
          **{name: (name, {}) for name in ("resnet34", "resnet50", "resnet101", "resnet152", "preact_resnet34",
                                           "preact_resnet50", "preact_resnet101", "preact_resnet152")},
          "dpn26": ("dpn26", {}), "dpn92": ("dpn92", {}), "densenet169": ("densenet169", {}),
          "densenet201": ("densenet201", {}), "densenet161": ("densenet161", {}),
          "airbench94": ("airbench94", {}), "airbench96": ("airbench96", {})}
AIRBENCH_MODELS = ("airbench94", "airbench96")  # the networks of three widths that --width scales
# the networks of one width (their recipe's) that --width sets
WIDTH_MODELS = ("fast", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "preact_resnet18",
                "preact_resnet34", "preact_resnet50", "preact_resnet101", "preact_resnet152")
# kuangliu/pytorch-cifar's networks, trained by his main.py's recipe (SGD without Nesterov, cosine without warmup)
KUANGLIU_MODELS = ("resnet18", "senet18", "mobilenetv2", "shufflenetv2", "efficientnetb0", "simpledla", "vgg19",
                   "preact_resnet18", "mobilenet", "resnext29", "googlenet", "densenet121", "regnetx_200mf",
                   "resnet34", "resnet50", "resnet101", "resnet152", "preact_resnet34", "preact_resnet50",
                   "preact_resnet101", "preact_resnet152", "shufflenetg2", "shufflenetg3", "lenet", "dla", "pnasneta",
                   "pnasnetb", "dpn26", "dpn92", "densenet169", "densenet201", "densenet161")

# Each model's recipe (gpuconv.recipes.RECIPES) gives its defaults.
MODEL_DEFAULTS = {name: get_recipe(name) for name in MODELS}


def build_model(name, seed=0, width=None, model_kwargs=None):
    """(model, config) where config is JSON and rebuilds the model (see ``model_from_config``);
    ``model_kwargs``: a recipe's arguments of the constructor."""
    if name not in MODELS:
        raise ValueError(f"model {name!r} is not known: use one of {', '.join(sorted(MODELS))}")
    fn_name, kwargs = MODELS[name]
    kwargs = dict(kwargs, **(model_kwargs or {}), seed=int(seed))
    if name in WIDTH_MODELS:
        kwargs["width"] = int(width or MODEL_DEFAULTS[name]["width"])
    if name in AIRBENCH_MODELS and width:  # the recipe's widths scaled down, for quick runs
        kwargs["widths"] = airbench_widths(name, width, model_kwargs)
    config = {"model": name, "constructor": fn_name, "kwargs": kwargs}
    return model_from_config(config), config


def airbench_widths(name, width=None, model_kwargs=None):
    """An airbench network's three widths: the recipe's (``model_kwargs``) or else the published
    ones, scaled so that the first block is ``width`` wide (None: as they are)."""
    from ..models import PUBLISHED_WIDTHS
    base = (model_kwargs or {}).get("widths") or PUBLISHED_WIDTHS[name]
    return [int(b) if not width else int(width) * int(b) // int(base[0]) for b in base]


def model_from_config(config):
    from ..models import from_config
    return from_config(config)


def _schedule(name, optimizer, lr, total_steps, kwargs=None):
    """The schedule ``name`` over ``total_steps``; ``kwargs``: a recipe's arguments of it (airbench96's
    triangle: ``warmup_fraction``, ``end``)."""
    from ..optim import CosineLR, OneCycleLR, TriangularLR
    kwargs = kwargs or {}
    if name == "cosine" and set(kwargs) - {"warmup_fraction"}:
        raise ValueError(f"schedule 'cosine' takes warmup_fraction alone (the share of the steps warming up, 0.05 by "
                         f"default), got {kwargs}")
    if kwargs and name not in ("triangular", "cosine"):
        raise ValueError(f"schedule {name!r} takes no arguments, got {kwargs}")
    if name == "onecycle":
        return OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.25)  # a quarter rising
    if name == "cosine":  # a 5% linear warmup unless the recipe says (resnet18: none, as kuangliu's)
        fraction = kwargs.get("warmup_fraction")
        if fraction is not None and not (isinstance(fraction, (int, float)) and 0 <= fraction < 1):
            raise ValueError(f"schedule 'cosine': warmup_fraction must be a number in [0, 1), got {fraction!r}")
        warmup = max(1, total_steps // 20) if fraction is None else int(total_steps * fraction)
        # (a run of one step has no room to warm up: it steps at the full lr)
        return CosineLR(optimizer, total_steps=total_steps, warmup_steps=min(warmup, total_steps - 1))
    if name == "triangular":
        return TriangularLR(optimizer, total_steps=total_steps, **kwargs)
    if name == "linear":  # a straight decay to 0
        return TriangularLR(optimizer, total_steps=total_steps, warmup_fraction=0.0, peak=1.0, end=0.0)
    return None


def drop_last(s, n):
    """Whether the training loader leaves out each epoch's partial batch: as the recipe says, while
    the images fill one batch at least (a smaller set trains on its one partial batch)."""
    return bool(s.get("drop_last")) and s["batch_size"] <= n


def _recipe_setup(s, model, images, steps_per_epoch):
    """(optimizer, schedule, Trainer keyword arguments) for the settings ``s`` and a loader of
    ``steps_per_epoch``: the recipe's optimizer and schedule over ``s['epochs']``, its whitening
    initialization (from ``images``, the uint8 training images), lookahead and whitening-bias
    epochs (and the whitening bias's own lr decay, ``whiten_bias_lr``)."""
    from ..models import init_whitening
    from ..optim import SGD
    from ..recipes import airbench_param_groups, muon_optimizer
    total_steps = s["epochs"] * steps_per_epoch
    whiten = model._layers.get("whiten") if hasattr(model, "_layers") else None
    own_bias = whiten is not None and whiten.bias is not None and s["whiten_bias_lr"] == "decay"
    if s["whiten_bias_lr"] not in ("schedule", "decay"):
        raise ValueError(f"whiten_bias_lr {s['whiten_bias_lr']!r} must be 'schedule' or 'decay'")
    if own_bias and s["optimizer"] != "muon":
        raise ValueError("whiten_bias_lr 'decay' needs the whitening bias in a group of its own: the 'muon' "
                         "optimizer gives it one")
    if whiten is not None:  # from the training images, as the loader normalizes them
        from ..data import normalize
        init_whitening(whiten, normalize(images[:5000], CIFAR10_MEAN, CIFAR10_STD, np.float32))
    if s["optimizer"] == "airbench":
        # with data selection the loss is the mean over the selected images, summed in airbench's form
        mean_over = selection_count(s, len(images)) if s.get("select") else None
        groups, lr = airbench_param_groups(model, s["lr"], s["weight_decay"], s["momentum"], s["batch_size"],
                                           s["bias_scaler"], mean_over=mean_over)
        opt = SGD(groups, lr=lr, momentum=s["momentum"], nesterov=True)
    elif s["optimizer"] == "muon":
        opt = muon_optimizer(model, s["lr"], s["momentum"], s["bias_lr"], s["head_lr"], s["sgd_momentum"],
                             s["weight_decay"], s["batch_size"], separate=[whiten.bias] if own_bias else ())
    else:
        opt = SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"],
                  nesterov=bool(s["nesterov"]) and s["momentum"] > 0,
                  weight_decay=s["weight_decay"])
    sched = _schedule(s["schedule"], opt, opt.lr, total_steps, s["schedule_kwargs"])
    if own_bias and sched is None:
        _output._say("note: with --schedule constant the whitening bias's lr stays constant too (the recipe decays it)")
    elif own_bias:  # a linear decay to 0 over the whitening bias's own steps, then frozen
        bias_steps = max(1, int(s["whiten_bias_epochs"]) * steps_per_epoch)
        sched.own_schedule([whiten.bias], lambda step: max(0.0, 1.0 - step / bias_steps))
    extras = {}
    if s["lookahead"]:
        from ..lookahead import Lookahead
        extras.update(lookahead=Lookahead(model, every=int(s["lookahead"])), total_steps=total_steps)
    if whiten is not None and whiten.bias is not None:
        epochs = int(s["whiten_bias_epochs"])

        def epoch_start(epoch):  # the whitening bias trains for the first epochs only
            whiten.bias.requires_grad = epoch < epochs
        extras["epoch_start"] = epoch_start
    return opt, sched, extras


SELECT_KEYS = ("keep", "train_every", "widths", "batchnorm_momentum", "scaling_factor")


def _check_select(s):
    if s.get("optimizer") != "airbench":
        raise ValueError(f"select (data selection by a proxy) trains the proxy with airbench's optimizer: the recipe's "
                         f"optimizer is {s.get('optimizer')!r}, use 'airbench'")
    select = s["select"]
    if not isinstance(select, dict) or set(select) != set(SELECT_KEYS):
        raise ValueError(f"select must be a dict of {', '.join(SELECT_KEYS)}, got {select!r}")
    return select


def selection_count(s, n):
    """The images of each batch (of ``n`` training images) the main network trains on."""
    from ..selection import selected_count
    return selected_count(min(s["batch_size"], n), _check_select(s)["keep"])


def proxy_widths(s, width=None):
    """The proxy's three widths: the recipe's, scaled as --width scales the main network (its first
    block's width over the recipe's)."""
    select = _check_select(s)
    if not width or s["model"] not in AIRBENCH_MODELS:  # (another network's --width is its own)
        return [int(w) for w in select["widths"]]
    base = airbench_widths(s["model"], None, s.get("model_kwargs"))[0]
    return [max(1, int(w) * int(width) // base) for w in select["widths"]]


def build_proxy(s, seed=0, width=None):
    """The recipe's proxy network (an airbench94 network, its whitening bias frozen): its own seed,
    drawn from the run's, so the two networks start apart."""
    from ..models import airbench94
    select = _check_select(s)
    proxy_seed = int(np.random.SeedSequence([int(seed)], spawn_key=(1,)).generate_state(1, np.uint64)[0])
    net = airbench94(widths=proxy_widths(s, width), seed=proxy_seed,
                     batchnorm_momentum=select["batchnorm_momentum"], scaling_factor=select["scaling_factor"])
    net["whiten"].bias.requires_grad = False
    return net


def selection_loader(s, loader, images, width=None, precision="fp32", report=None, proxy=None):
    """``loader`` wrapped in a :class:`gpuconv.selection.SelectedLoader` for the recipe's ``select``: the
    proxy (``build_proxy``, on the default device, or ``proxy`` as given) whitened from ``images``,
    with the recipe's optimizer (the loss summed over the selected images at the lr per 1024
    examples), its schedule over the run's steps, its label smoothing, in ``precision``."""
    from ..data import normalize
    from ..models import init_whitening
    from ..optim import SGD
    from ..recipes import airbench_param_groups
    from ..selection import Proxy, SelectedLoader
    select = _check_select(s)
    net = build_proxy(s, s.get("seed", 0), width) if proxy is None else proxy
    init_whitening(net["whiten"], normalize(images[:5000], CIFAR10_MEAN, CIFAR10_STD, np.float32))
    k = selection_count(s, len(images))
    groups, lr = airbench_param_groups(net, s["lr"], s["weight_decay"], s["momentum"], s["batch_size"],
                                       s["bias_scaler"], mean_over=k)
    opt = SGD(groups, lr=lr, momentum=s["momentum"], nesterov=True)
    sched = _schedule(s["schedule"], opt, opt.lr, s["epochs"] * len(loader), s["schedule_kwargs"])
    proxy = Proxy(net, opt, sched, keep=select["keep"], train_every=int(select["train_every"]),
                  label_smoothing=s["label_smoothing"], precision=precision)
    return SelectedLoader(loader, proxy, s["epochs"], report=report)
