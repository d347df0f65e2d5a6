"""The ``gpuconv`` command: ``train``, ``evaluate``, ``predict``, ``summary``, ``info``,
``precompile``, ``bench``.

    gpuconv train --data DIR                      # three_layer_convnet, about a minute on a CPU
    gpuconv train --model fast --device cuda --data DIR --out runs/fast
    gpuconv train --recipe airbench94 --device cuda --data DIR --out runs/airbench
    gpuconv evaluate --checkpoint runs/fast/checkpoint.npz --data DIR --json --tta 2
    gpuconv info

Hyperparameters live in ``gpuconv.recipes.RECIPES`` (one recipe per model name); a flag
overrides one value. ``train --resume``
reads the run's settings back from its checkpoint, so ``gpuconv train --out DIR --resume`` is
enough to continue an interrupted run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import runpy
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from . import _env
from ._console import CONSOLE, command_line, silence
from ._files import directory_lock
from .counter_rng import SEED_LIMIT
from .data.augment import CIFAR10_MEAN, CIFAR10_STD
from .recipes import DEFAULTS, RECIPES, get_recipe

# name -> (constructor in gpuconv.models, its extra keyword arguments).
MODELS = {"seed": ("seed_net", {}), "three_layer": ("three_layer_convnet", {}), "fast": ("fast_net", {}),
          "resnet18": ("resnet18", {}), "senet18": ("senet18", {}), "mobilenetv2": ("mobilenetv2", {}),
          "airbench94": ("airbench94", {}), "airbench96": ("airbench96", {})}
AIRBENCH_MODELS = ("airbench94", "airbench96")  # the networks of three widths that --width scales
WIDTH_MODELS = ("fast", "resnet18")  # the networks of one width (their recipe's) that --width sets
# kuangliu/pytorch-cifar's networks, trained by his main.py's recipe (SGD without Nesterov, cosine without warmup)
KUANGLIU_MODELS = ("resnet18", "senet18", "mobilenetv2")

# Each model's recipe (gpuconv.recipes.RECIPES) gives its defaults.
MODEL_DEFAULTS = {name: get_recipe(name) for name in MODELS}
# Settings a resumed run takes from its checkpoint unless given again on the command line.
RESUMABLE = ("recipe", "model", "epochs", "batch_size", "lr", "weight_decay", "momentum", "schedule",
             "label_smoothing", "augment", "cutout", "width", "seed", "limit", "val_split", "precision", "tta",
             "autotune")
PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
# A run stopped by Ctrl-C or SIGTERM whose checkpoint could not be written: sysexits.h's EX_IOERR,
# apart from a saved stop (128 + the signal) and from an error (1).
EXIT_STOPPED_UNSAVED = 74
EXIT_STATUSES = ("Exit status: 0 when the run is done; 130 (Ctrl-C) or 143 (SIGTERM) when it was stopped and its "
                 "checkpoint saved (continue with --resume; 130 also after a second signal, which stops at once without "
                 "saving); 74 when it was stopped but that checkpoint could not be "
                 "written (a full disk: the steps since the checkpoint on disk are lost); 1 on an error; 2 on a bad "
                 "command line.")
WIDTH_HELP = ("channel width of fast_net or of resnet18's first stage (default 64; resnet18's stages W, 2W, 4W, 8W), "
              "or of an airbench network's first block, the others "
              "in the recipe's ratio (airbench94: W, 4W, 4W; airbench95: W, 3W, 3W; airbench96: W, 3W, 4W)")
PRECISION_HELP = ("fp32 (strict float32), tf32 (float32 with TF32 convolutions), bf16 or fp16 (mixed precision: "
                  "float32 master weights, low-precision compute; fp16 with loss scaling), or auto (bf16 on a GPU "
                  "with bfloat16 tensor cores, compute capability >= 8.0; fp16 on 7.5, a T4; else fp32). Default: "
                  "the recipe's "
                  "(auto for fast, resnet18, senet18, mobilenetv2 and the airbench recipes; fp32 for the others)")


def _say(*parts):
    print(*parts, file=CONSOLE, flush=True)


def _program():
    """The words that run this gpuconv again, for a command printed to be pasted: ``gpuconv`` where
    the shell finds this very script by that name; else the path it was started by (``make train``
    runs ``.venv/bin/gpuconv``, which no activated environment has put on PATH: a bare ``gpuconv``
    would not be found, or would be another install's); ``python -m gpuconv`` with this interpreter
    when it was started so. Called from Python (``main(argv)``): ``gpuconv``."""
    def found_as(path):  # (abspath, not realpath: a venv's python links to the one outside it)
        on_path = shutil.which(Path(path).name)
        same = on_path and os.path.normcase(os.path.abspath(on_path)) in {
            os.path.normcase(os.path.abspath(path) + ext) for ext in ("", ".exe")}  # (Windows: gpuconv.EXE)
        return Path(path).name if same else str(path)

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name == "gpuconv.__main__" and sys.executable:
        return [found_as(sys.executable), "-m", "gpuconv"]
    script = sys.argv[0] if sys.argv else ""
    # (pip's Windows launcher, gpuconv.exe, gives its path without '.exe': the shells run it so)
    if Path(script).stem == "gpuconv" and (os.path.isfile(script) or os.path.isfile(script + ".exe")):
        return [found_as(script)]
    return ["gpuconv"]


# ----------------------------------------------------------------------------- argument parsing
def _int_from(low, what, high=None):
    """An argparse type: an int >= ``low`` (and < ``high``), else an error naming ``what`` it must be."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value >= high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


_positive_int = _int_from(1, "a positive integer (1, 2, 3, ...)")
_nonneg_int = _int_from(0, "an integer >= 0 (0, 1, 2, ...)")
_seed = _int_from(0, f"a seed: an integer in [0, 2**64) (0 ... {SEED_LIMIT - 1})", high=SEED_LIMIT)


def _number(text, low, high=None, high_open=False, what=""):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    ok = math.isfinite(value) and value >= low and (high is None or (value < high if high_open else value <= high))
    if not ok:
        bound = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}{')' if high_open else ']'}"
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number {bound}{what}")
    return value


def _learning_rate(text):
    value = _number(text, 0.0, what=", e.g. 0.02")
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a learning rate of 0 trains nothing; give a positive number")
    return value


def _nonneg(text):
    return _number(text, 0.0)


def _momentum(text):
    return _number(text, 0.0, 1.0, high_open=True, what=" (0.9 is usual)")


def _smoothing(text):
    return _number(text, 0.0, 1.0, high_open=True, what=" (0 disables it, 0.1-0.2 is usual)")


def _device(text):
    from . import backend
    try:
        backend.Device(text)
    except (ValueError, TypeError) as exc:
        where = " (from $GPUCONV_DEVICE, the default of --device)" if text == os.environ.get("GPUCONV_DEVICE") else ""
        raise argparse.ArgumentTypeError(f"{exc}{where}") from None
    return text


def _arch(text):
    """An argparse type: an NVRTC target, sm_NN or compute_NN (sm_90a: Hopper's arch-specific one)."""
    from . import kernels
    try:
        kernels.arch_capability(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _default_device():
    """$GPUCONV_DEVICE, as the API honours it, else 'auto' (a GPU when one is usable)."""
    return os.environ.get("GPUCONV_DEVICE") or "auto"


def _defaults(key):
    """Each recipe's value of ``key`` (``--recipe airbench95`` has defaults of its own, not its model's)."""
    return ", ".join(f"{name} {get_recipe(name)[key]}" for name in RECIPES)


def _tta(text):
    if text not in ("0", "1", "2"):
        # `predict --tta cat.png`: a bare --tta takes the input after it as its level
        hint = f"; write the level before an input: --tta 1 {text}" if os.path.exists(text) else ""
        raise argparse.ArgumentTypeError(f"{text!r} is not a test-time augmentation level: 0 (none), 1 (mirror) or "
                                         f"2 (mirror + 1-pixel translations){hint}")
    return int(text)


def _val_split(text):
    """An argparse type: a --val-split value as written, once it parses (a typo fails now, before the
    data set loads or downloads, as a bad command line)."""
    try:
        parse_val_split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--val-split ")) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(prog="gpuconv", description="Convolutional networks on NumPy and CuPy.")
    p.add_argument("--version", action="version", version=f"gpuconv {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{train,evaluate,predict,summary,info,precompile,bench}")
    sub.required = True

    t = sub.add_parser("train", help="train a model on CIFAR-10",
                       description="Train on CIFAR-10; writes OUT/checkpoint.npz (latest), OUT/best.npz (the best "
                                   "validation epoch; none with --val-split none), OUT/metrics.jsonl and OUT/curves.png.",
                       epilog=EXIT_STATUSES)
    t.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="a model and its hyperparameters (gpuconv.recipes.RECIPES); flags override its values "
                        "(default: the recipe of --model, else three_layer)")
    t.add_argument("--model", choices=sorted(MODELS), default=None,
                   help="network (default: the recipe's, else three_layer)")
    t.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"passes over the training set (default per recipe: {_defaults('epochs')})")
    t.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"images per step (default per recipe: {_defaults('batch_size')})")
    t.add_argument("--lr", type=_learning_rate, default=None,
                   help=f"peak learning rate of the schedule; the airbench recipes' is per 1024 examples, "
                        f"not per step, and airbench94_muon's is Muon's, on the conv filters "
                        f"(default per recipe: {_defaults('lr')})")
    t.add_argument("--weight-decay", type=_nonneg, default=None,
                   help=f"weight decay: L2 added to the gradient; the airbench recipes' per 1024 examples, "
                        f"decoupled from the lr, airbench94_muon's per example "
                        f"(default per recipe: {_defaults('weight_decay')})")
    t.add_argument("--momentum", type=_momentum, default=None,
                   help=f"momentum, Nesterov when > 0, except in the resnet18, senet18 and mobilenetv2 recipes (plain "
                        f"momentum, as kuangliu's) (SGD's; airbench94_muon's is Muon's, its SGD groups "
                        f"keeping the recipe's 0.85) (default per recipe: {_defaults('momentum')})")
    t.add_argument("--schedule", choices=("onecycle", "cosine", "triangular", "linear", "constant"), default=None,
                   help=f"learning-rate schedule; cosine warms up over the first 5%% of the steps, except in the resnet18 "
                        f", senet18 and mobilenetv2 recipes (default per recipe: {_defaults('schedule')})")
    t.add_argument("--label-smoothing", type=_smoothing, default=None,
                   help=f"label smoothing of the loss's targets (default per recipe: {_defaults('label_smoothing')})")
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop + horizontal flip on the device, padded and flipped as the recipe says "
                        f"(default per recipe: {_defaults('augment')})")
    t.add_argument("--cutout", type=_int_from(0, "a cutout side: 0 to 32 pixels (the images are 32x32)", high=33),
                   default=None,
                   help="with --augment, a square of this side set to the mean color in every training image, "
                        f"drawn per image and epoch; 0 for none (default per recipe: {_defaults('cutout')})")
    t.add_argument("--tta", type=_tta, default=None,
                   help=f"test-time augmentation level of the final evaluation: 0, 1 or 2 (default per recipe: "
                        f"{_defaults('tta')}; a resumed run's own, or the one given, which its checkpoint records)")
    t.add_argument("--width", type=_positive_int, default=None,
                   help=WIDTH_HELP)
    t.add_argument("--device", type=_device, default=_default_device(),
                   help="cpu | cuda | cuda:N | sim | auto (default: $GPUCONV_DEVICE, else auto = a GPU if usable)")
    t.add_argument("--data", default=None, help="CIFAR-10 directory or tarball (a resumed run: else the data it "
                   "trained on, where it still is; else $GPUCONV_DATA when set, else ~/.cache/gpuconv; downloaded "
                   "there when absent)")
    # (expanded as the Trainer expands its out_dir: --out=~/runs/x, whose ~ no shell expands after '=')
    t.add_argument("--out", type=os.path.expanduser, default="runs/latest",
                   help="output directory (default runs/latest)")
    resume = t.add_mutually_exclusive_group()  # one or the other: both together started a new run
    resume.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz (an error if there is none)")
    resume.add_argument("--resume-if-exists", action="store_true",
                   help="continue from OUT/checkpoint.npz when it exists, else start a new run (for job scripts "
                        "that are restarted after a preemption)")
    t.add_argument("--seed", type=_seed, default=None, help="seed for init, shuffling, augmentation (default 0)")
    t.add_argument("--limit", type=_positive_int, default=None, help="use only N training images, a seeded sample (quick runs; default: all)")
    t.add_argument("--val-split", type=_val_split, default=None,
                   help="validation data: 'auto' (test_batch, else hold out data_batch_5, else 10%%), "
                        "'test', 'batchK' (hold out data_batch_K), a fraction like 0.1, or 'none' (default auto)")
    t.add_argument("--precision", choices=PRECISIONS, default=None, help=PRECISION_HELP)
    t.add_argument("--log-every", type=_positive_int, default=50, help="steps between loss readbacks (default 50)")
    t.add_argument("--cuda-graph", action="store_true",
                   help="replay each training step as a CUDA graph (a step's launches cost more host time than a "
                        "GPU takes to run them in bf16); SGD and Muon recipes")
    t.add_argument("--autotune", choices=("auto", "on", "off"), default=None,
                   help="time each convolution's kernel variants at its first step and run the fastest, on a GPU "
                        "(on sim and cpu it does nothing) (default auto: on a GPU; a resumed run as it was set)")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar, one line per epoch (default: a bar on a terminal, a line per log interval "
                        "when piped)")

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on test_batch (or the held-out split)")
    e.add_argument("--checkpoint", required=True, help="a checkpoint.npz written by `gpuconv train`")
    e.add_argument("--data", default=None, help="CIFAR-10 directory or tarball (else the data the run trained "
                   "on, where it still is; else $GPUCONV_DATA when set, else ~/.cache/gpuconv; downloaded there "
                   "when absent); without test_batch, the split held out in training")
    e.add_argument("--device", type=_device, default=_default_device(),
                   help="cpu | cuda | cuda:N | sim | auto (default: $GPUCONV_DEVICE, else auto)")
    e.add_argument("--batch-size", type=_positive_int, default=500, help="images per forward pass (default 500)")
    e.add_argument("--tta", type=_tta, nargs="?", const=1, default=None,
                   help="test-time augmentation: 0 none, 1 (or --tta alone) the mean with the mirrored image, 2 also "
                        "the 1-pixel translations of both (airbench's six views); default: the level the run "
                        "evaluated at, its --tta, else its recipe's (2 for the airbench recipes, else 0)")
    e.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="compute precision (default: the one the checkpoint was trained in; auto: bf16 on a GPU "
                        "with bfloat16 tensor cores, compute capability >= 8.0; fp16 on 7.5, a T4; else fp32)")
    e.add_argument("--json", action="store_true", help="print one JSON object (accuracy in [0, 1])")

    pr = sub.add_parser("predict", help="classify image files or .npy arrays with a trained checkpoint",
                        description="Classify images with a checkpoint of `gpuconv train`: PNG/JPEG files (any size: "
                                    "turned upright as their EXIF orientation says, converted to RGB, or to "
                                    "grayscale for a one-channel network, and resized to the network's input, "
                                    "32x32 for CIFAR-10's) or .npy uint8 arrays (N, H, W, C).")
    pr.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or .npy arrays")
    pr.add_argument("--checkpoint", required=True, help="a checkpoint.npz written by `gpuconv train`")
    pr.add_argument("--top", type=_positive_int, default=1, help="the K most likely classes per image (default 1)")
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    pr.add_argument("--device", type=_device, default=_default_device(),
                    help="cpu | cuda | cuda:N | sim | auto (default: $GPUCONV_DEVICE, else auto)")
    pr.add_argument("--precision", choices=PRECISIONS, default=None,
                    help="compute precision (default: the one the checkpoint was trained in; auto: bf16 on a GPU "
                         "with bfloat16 tensor cores, compute capability >= 8.0; fp16 on 7.5, a T4; else fp32)")
    pr.add_argument("--tta", type=_tta, nargs="?", const=1, default=None,
                    help="test-time augmentation as `gpuconv evaluate --tta` (default: the level the run "
                         "evaluated at, its --tta, else its recipe's)")

    sm = sub.add_parser("summary", help="a model's layers, output shapes, parameters and FLOPs")
    sm.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                    help="the network `gpuconv train --recipe` trains (airbench95's widths, airbench94_muon's head)")
    sm.add_argument("--model", choices=sorted(MODELS), default=None,
                    help="network (default: the recipe's, else three_layer)")
    sm.add_argument("--width", type=_positive_int, default=None,
                    help=WIDTH_HELP)

    sub.add_parser("info", help="versions, devices, CUDA and GPU telemetry")

    pc = sub.add_parser("precompile", help="compile every kernel for this GPU now, in parallel (else each "
                                           "compiles at its first use)")
    pc.add_argument("--device", type=int, default=None, help="the GPU (default: the current one, 0)")
    pc.add_argument("--arch", type=_arch, default=None,
                    help="build for this NVRTC target instead (e.g. sm_90, sm_80): no GPU needed")
    pc.add_argument("--jobs", type=_positive_int, default=None, help="compiles at once (default: one per CPU core)")

    b = sub.add_parser("bench", help="run a benchmark script of a source checkout (benchmarks/)")
    b.add_argument("name", nargs="?", default=None, help="bench_<name>.py (default: cpu, or conv2d on a GPU)")
    b.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    for command in sub._choices_actions:  # a command's own --help says what it does, as `gpuconv --help` does
        parser = sub.choices[command.dest]
        if parser.description is None:
            parser.description = f"{command.help[0].upper()}{command.help[1:]}."
    return p


# ----------------------------------------------------------------------------- data splits
def parse_val_split(text):
    """'auto' | 'test' | 'none' | ('batch', k) | ('fraction', f)."""
    text = (text or "auto").strip().lower()
    if text in ("auto", "test", "none"):
        return text
    if text.startswith("batch") and text[5:].isdigit():
        return ("batch", int(text[5:]))
    try:
        frac = float(text)
    except ValueError:
        frac = None
    if frac is not None and 0 < frac < 1:
        return ("fraction", frac)
    raise ValueError(f"--val-split {text!r} is not understood: use auto, test, none, batch5 (hold out "
                     "data_batch_5) or a fraction strictly between 0 and 1 such as 0.1")


def resolve_split(cifar, spec, seed=0):
    """(train Split, val Split or None, description, recorded spec) for a --val-split value."""
    from .data import train_val_split
    spec = parse_val_split(spec) if isinstance(spec, str) or spec is None else spec
    if isinstance(spec, list):
        spec = tuple(spec)
    if spec == "auto":
        if cifar.test is not None:
            spec = "test"
        elif len(cifar.train.batch_sizes) >= 5:
            spec = ("batch", 5)
        else:
            spec = ("fraction", 0.1)
    if spec == "none":
        return cifar.train, None, "no validation split", "none"
    if spec == "test":
        if cifar.test is None:
            raise ValueError(f"--val-split test: {cifar.root} has no test_batch; use --val-split auto, batch5 "
                             "or a fraction like 0.1")
        return cifar.train, cifar.test, f"test_batch ({len(cifar.test)} images)", "test"
    kind, value = spec
    if kind == "batch":
        batches = len(cifar.train.batch_sizes)
        if not 1 <= value <= batches:
            raise ValueError(f"--val-split batch{value}: {cifar.root} has training batches data_batch_1..{batches}: "
                             f"use batch1..batch{batches}, or a fraction such as 0.1")
        train, val = train_val_split(cifar.train, val_batch=value)
        return train, val, f"data_batch_{value} held out of training ({len(val)} images)", ["batch", value]
    train, val = train_val_split(cifar.train, val_fraction=value, seed=seed)
    return train, val, f"a seeded {value:g} of the training images held out ({len(val)} images)", ["fraction", value]


def _limit(split, n, seed):
    """A seeded random subset of n images (kept in file order), so classes stay balanced."""
    from .data import Split
    if n is None or n >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    return Split(split.images[idx], split.labels[idx])


def _load_data(data, quiet_no_test=True):
    from .data import load_cifar10
    with warnings.catch_warnings():
        if quiet_no_test:  # we say what we do about a missing test batch ourselves
            warnings.filterwarnings("ignore", message=".*no test batch.*")
        return load_cifar10(data)


# ----------------------------------------------------------------------------- models
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
    from .models import PUBLISHED_WIDTHS
    base = (model_kwargs or {}).get("widths") or PUBLISHED_WIDTHS[name]
    return [int(b) if not width else int(width) * int(b) // int(base[0]) for b in base]


def model_from_config(config):
    from .models import from_config
    return from_config(config)


def _schedule(name, optimizer, lr, total_steps, kwargs=None):
    """The schedule ``name`` over ``total_steps``; ``kwargs``: a recipe's arguments of it (airbench96's
    triangle: ``warmup_fraction``, ``end``)."""
    from .optim import CosineLR, OneCycleLR, TriangularLR
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
    from .models import init_whitening
    from .optim import SGD
    from .recipes import airbench_param_groups, muon_optimizer
    total_steps = s["epochs"] * steps_per_epoch
    whiten = model._layers.get("whiten") if hasattr(model, "_layers") else None
    own_bias = whiten is not None and whiten.bias is not None and s["whiten_bias_lr"] == "decay"
    if s["whiten_bias_lr"] not in ("schedule", "decay"):
        raise ValueError(f"whiten_bias_lr {s['whiten_bias_lr']!r} must be 'schedule' or 'decay'")
    if own_bias and s["optimizer"] != "muon":
        raise ValueError("whiten_bias_lr 'decay' needs the whitening bias in a group of its own: the 'muon' "
                         "optimizer gives it one")
    if whiten is not None:  # from the training images, as the loader normalizes them
        from .data import normalize
        init_whitening(whiten, normalize(images[:5000], CIFAR10_MEAN, CIFAR10_STD, np.float32))
    if s["optimizer"] == "airbench":
        groups, lr = airbench_param_groups(model, s["lr"], s["weight_decay"], s["momentum"], s["batch_size"],
                                           s["bias_scaler"])
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
        _say("note: with --schedule constant the whitening bias's lr stays constant too (the recipe decays it)")
    elif own_bias:  # a linear decay to 0 over the whitening bias's own steps, then frozen
        bias_steps = max(1, int(s["whiten_bias_epochs"]) * steps_per_epoch)
        sched.own_schedule([whiten.bias], lambda step: max(0.0, 1.0 - step / bias_steps))
    extras = {}
    if s["lookahead"]:
        from .lookahead import Lookahead
        extras.update(lookahead=Lookahead(model, every=int(s["lookahead"])), total_steps=total_steps)
    if whiten is not None and whiten.bias is not None:
        epochs = int(s["whiten_bias_epochs"])

        def epoch_start(epoch):  # the whitening bias trains for the first epochs only
            whiten.bias.requires_grad = epoch < epochs
        extras["epoch_start"] = epoch_start
    return opt, sched, extras


# ----------------------------------------------------------------------------- train
def _stored_config(args) -> dict:
    """The config of the run ``--resume`` continues (read once: settings and data come from it), or {}."""
    from .checkpoint import CHECKPOINT_NAME, load_checkpoint, read_config
    path = Path(args.out) / CHECKPOINT_NAME
    if not (args.resume and path.exists()):
        return {}
    try:
        config = read_config(load_checkpoint(path))
    except ValueError as exc:  # damaged: the run's best.npz, a whole training state too, may take over
        raise ValueError(f"{exc}{_best_instead(path)}") from None
    if "model" not in config and "train_args" not in config:  # checked before the data loads (or downloads)
        raise ValueError(f"--resume: {path} was not written by `gpuconv train` but by Trainer.fit in Python (its "
                         "config records no recipe, flags or data), so the network, optimizer and images to "
                         "continue it with are not known here: continue it in Python, trainer.fit(loader, epochs, "
                         "resume=True) with the same setup, or train into a new --out")
    return config


def _best_instead(path) -> str:
    """For a damaged checkpoint ``path``: how to continue from the run's best.npz where it is intact."""
    from .checkpoint import load_checkpoint
    best = Path(path).with_name("best.npz")
    try:
        epoch = int(load_checkpoint(best)["meta/epoch"])
    except (OSError, ValueError, KeyError):
        return ""
    return (f". {best} is intact, the training state of epoch {epoch}: to continue the run from there (the epochs "
            f"after it trained again), `{command_line(['cp', best, path])}` and --resume")


def _settings(args, device=None, stored_config=None):
    """The run's settings: flags given > the checkpoint's (with --resume; ``stored_config``, read
    here when not given) > the model's defaults; the precision 'auto' made concrete for ``device``
    (default: ``--device``'s)."""
    from .amp import resolve_precision
    from .checkpoint import CHECKPOINT_NAME
    device = args.device if device is None else device
    given = {k: getattr(args, k) for k in RESUMABLE if getattr(args, k, None) is not None}
    if "precision" in given:
        given["precision"] = resolve_precision(given["precision"], device)
    ckpt_path = Path(args.out) / CHECKPOINT_NAME
    stored = (_stored_config(args) if stored_config is None else stored_config).get("train_args", {})
    recipe = given.get("recipe") or stored.get("recipe") or given.get("model") or stored.get("model") or "three_layer"
    model = given.get("model") or stored.get("model") or get_recipe(recipe)["model"]
    if stored:
        _check_resume_flags(given, stored, ckpt_path)
    s = dict(get_recipe(recipe), seed=0, limit=None, val_split="auto", recipe=recipe, autotune="auto")
    if model != s["model"]:  # the recipe's constructor arguments are for its own network
        s["model_kwargs"] = {}
    s["model"] = model
    s.update({k: v for k, v in stored.items() if k in RESUMABLE})
    if stored:  # the run goes on as it was set up, whatever the recipe says now; a setting older
        # versions did not record had the default's behavior then (it came with the setting)
        s.update({k: stored.get(k, DEFAULTS.get(k, s[k])) for k in get_recipe(recipe) if k not in RESUMABLE})
        s.update({k: v for k, v in DEFAULTS.items() if k in RESUMABLE and k not in stored})
    s.update(given)
    if s["schedule"] != get_recipe(recipe)["schedule"]:  # the recipe's schedule arguments are for its own
        s["schedule_kwargs"] = {}
    s["precision"] = resolve_precision(s["precision"], device)
    return s


def _check_resume_flags(given, stored, ckpt_path):
    """A resumed run continues the saved one: its data, model and schedule cannot change midway
    (the optimizer and schedule state in the checkpoint would silently override new values)."""
    for key, value in given.items():
        old = stored.get(key)
        if key == "val_split":
            value = parse_val_split(value)
            old = tuple(old) if isinstance(old, list) else old
            if value == "auto":
                continue
        if key == "epochs" and stored.get("schedule") == "constant" and not stored.get("lookahead"):
            continue  # a constant learning rate can run for more epochs (a lookahead's decay cannot)
        if key == "precision":
            if old is not None and value != old:
                _say(f"note: {ckpt_path} was trained in {old}; continuing in {value} (its weights are float32 "
                     "masters, so any precision can continue them)")
            continue
        if key == "tta":  # evaluation only: the training goes on as it was
            if old is not None and value != old:
                _say(f"note: {ckpt_path} was set to a final evaluation at test-time augmentation level {old}; "
                     f"evaluating at --tta {value} instead, which the checkpoint now records")
            continue
        if key == "width" and old is None and stored.get("model") in WIDTH_MODELS:
            old = MODEL_DEFAULTS[stored["model"]]["width"]  # a recipe without a width built it at its own
        if key == "width" and old is None and stored.get("model") in AIRBENCH_MODELS:
            # the run's network at its recipe's widths: a --width that builds another cannot load its weights
            widths = airbench_widths(stored["model"], None, stored.get("model_kwargs"))
            if airbench_widths(stored["model"], value, stored.get("model_kwargs")) == widths:
                continue
            old = widths[0]  # the first block's width, as --width gives it
        if key == "autotune":
            if old is not None and value != old:
                _say(f"note: {ckpt_path} was trained with --autotune {old}; continuing with --autotune {value}, "
                     "whose convolution variants may sum in other orders (close to, not bit for bit as, the run)")
            continue
        if old is not None and value != old:
            flag = "--" + key.replace("_", "-")
            why = ""
            if key == "epochs":
                why = (" (its lookahead's weight average was laid out over that many epochs)"
                       if stored.get("schedule") == "constant" else
                       " (its learning-rate schedule was laid out for that many epochs)")
            if key == "val_split":  # as the flag is written: batch5, 0.1
                old, value = _val_split_flag(old), _val_split_flag(value)
            was, given_now = f"{flag} {old}", f"{flag} {value}"
            if isinstance(value, bool):  # --augment / --no-augment, not "--augment False"
                was, given_now = (f"--{'' if v else 'no-'}{key.replace('_', '-')}" for v in (old, value))
                flag = given_now
            raise ValueError(f"--resume: {ckpt_path} holds a run with {was}{why}, but {given_now} was "
                             f"given; drop {flag} to continue that run, or train into a new --out")


def _note_autotune_off_gpu(autotune, device):
    """--autotune on (given, or the resumed run's) times kernel variants on a GPU alone: elsewhere it
    would change nothing without a word."""
    if autotune != "on" or device.is_cuda:
        return
    why = ("the simulator's timings say nothing about a GPU's, so its convolutions run the default rule's variants"
           if device.kind == "sim" else "the NumPy path has no kernel variants to choose from")
    _say(f"note: --autotune on times the convolutions' kernel variants on a GPU; on {device} it does nothing: {why}")


def cmd_train(args) -> int:
    """Checks what can be checked before the data set loads, then trains holding OUT's lock."""
    from .checkpoint import CHECKPOINT_NAME
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise NotADirectoryError(f"--out {args.out} is a file, not a directory: give a directory path")
    checkpoint_exists = (Path(args.out) / CHECKPOINT_NAME).exists()
    if args.resume_if_exists:
        args.resume = checkpoint_exists
    elif args.resume and not checkpoint_exists:
        raise FileNotFoundError(f"--resume: {Path(args.out) / CHECKPOINT_NAME} does not exist, so there is no run to "
                                "continue there; drop --resume to start a new run, or use --resume-if-exists")
    created = not Path(args.out).exists()
    try:
        with directory_lock(args.out):  # (its Trainer.fit takes it again, under this hold)
            return _train(args)
    finally:  # a run that failed before writing anything leaves no empty --out behind
        if created and Path(args.out).is_dir() and not any(Path(args.out).iterdir()):
            Path(args.out).rmdir()


def _train(args) -> int:
    from . import amp, backend, kernels
    from .data import DeviceLoader
    from .trainer import Trainer, TrainingDiverged, TrainingInterrupted, GPUOutOfMemory

    device = backend.Device(args.device)
    stored = _stored_config(args)
    s = _settings(args, device, stored)
    kernels.check_environment(autotune=s["autotune"] == "auto")  # a typo there fails now, not after the data loads
    if device.is_cuda:
        backend.require_cupy()
    if device.kind == "cpu":  # the NumPy path: freed arrays' memory kept for the next step (gpuconv._hostmem)
        from ._hostmem import keep_freed_memory
        keep_freed_memory()
    if device.kind == "sim":
        _say("note: --device sim runs the CUDA kernels on the host simulator, one fiber per GPU thread: tens of "
             "images/s, meant for checking the kernels (--device cpu trains with NumPy, a hundred times faster)")
    if args.cuda_graph and not device.is_cuda:
        _say(f"note: --cuda-graph replays steps on a GPU; on {device} each step runs as it is")
    _note_autotune_off_gpu(s["autotune"], device)
    recorded = stored.get("data")  # the training data the run recorded (None: written before runs did)
    data = _runs_data(args.data, recorded, "resuming on")
    cifar = _load_data(data)
    if cifar.train is None:
        raise FileNotFoundError(f"{cifar.root} holds test_batch alone, no training batches (data_batch_1..5): it "
                                "is enough to evaluate a checkpoint, not to train. Point --data at the full release")
    train, val, val_desc, val_spec = resolve_split(cifar, s["val_split"], seed=s["seed"])
    s["val_split"] = val_spec
    if cifar.test is None and val is not None:
        _say(f"{cifar.root} has no test_batch: validating on {val_desc}")
    if s["limit"] is not None and s["limit"] > len(train):
        _say(f"note: --limit {s['limit']} is more than the {len(train)} training images there are: training on all "
             f"{len(train)}")
    train = _limit(train, s["limit"], s["seed"])
    trained_on = {"path": str(Path(cifar.root).resolve()), "train_images": len(train),
                  "fingerprint": train.fingerprint()}
    if recorded and recorded.get("fingerprint") != trained_on["fingerprint"]:
        raise ValueError(f"--resume: {args.out} holds a run trained on {recorded['train_images']} images from "
                         f"{recorded['path']}, but the training images found now ({len(train)} from {cifar.root}) "
                         f"are not those: pass --data {command_line([recorded['path']])} (or a copy of it) to continue "
                         "that run, or train into a new --out")
    if s["optimizer"] == "airbench" and s["batch_size"] > len(train):
        _say(f"note: the {s['recipe']} recipe's lr and weight decay are per 1024 examples, scaled to batch "
             f"{s['batch_size']}")
    _warn_unused_width(s["model"], getattr(args, "width", None))
    if s["cutout"] and not s["augment"]:
        _say(f"warning: --cutout {s['cutout']} applies with augmentation only, which this run has off (--augment)")
    if s["batch_size"] > len(train):
        _say(f"warning: --batch-size {s['batch_size']} is larger than the {len(train)} training images: each epoch is "
             f"one step of {len(train)} images")
    suggest = 1 << max(4, (max(1, len(train) // 8)).bit_length() - 1)  # a power of two giving >= 8 steps
    if s["model"] in (*WIDTH_MODELS, *KUANGLIU_MODELS) and s["batch_size"] > len(train) // 8 and suggest < s["batch_size"]:
        _say(f"note: batch size {s['batch_size']} gives only {math.ceil(len(train) / s['batch_size'])} steps per "
             f"epoch on {len(train)} images; --batch-size {suggest} suits a subset this small better")
    epochs = f"{s['epochs']} epoch{'' if s['epochs'] == 1 else 's'}"
    _say(f"training {s['model']} (recipe {s['recipe']}) on {device} ({len(train)} images, {epochs}, batch {s['batch_size']}, "
         f"lr {s['lr']}, {s['schedule']}, {s['precision']}); validation: {val_desc}; output: {args.out}")

    if device.is_cuda:
        precompile_for(device.index, s["precision"])
    with backend.default_device(device):
        model, config = build_model(s["model"], seed=s["seed"], width=s.get("width"), model_kwargs=s["model_kwargs"])
        config["train_args"] = s
        config["data"] = trained_on
        config["classes"] = list(cifar.classes)
        config["preprocess"] = {"mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)}  # what the loaders apply
        nhwc = amp.channels_last_for(s["precision"])  # the layout the tensor-core convolutions read
        train_loader = DeviceLoader(train.images, train.labels, s["batch_size"], shuffle=True,
                                    augment=s["augment"], seed=s["seed"], device=device, channels_last=nhwc,
                                    dtype=amp.compute_dtype(s["precision"]),  # the step's dtype: no cast per step
                                    padding=s["padding"], padding_mode=s["padding_mode"], flip=s["flip"],
                                    cutout=s["cutout"] if s["augment"] else 0,  # (warned above: it needs --augment)
                                    drop_last=drop_last(s, len(train)))
        val_loader = (DeviceLoader(val.images, val.labels, 500, shuffle=False, augment=False, device=device,
                                   channels_last=nhwc) if val is not None else None)
        opt, sched, extras = _recipe_setup(s, model, train.images, len(train_loader))
        trainer = Trainer(model, opt, sched, out_dir=args.out, label_smoothing=s["label_smoothing"],
                          log_every=args.log_every, seed=s["seed"], progress="epoch" if args.no_progress else True,
                          config=config, precision=s["precision"], cuda_graph=args.cuda_graph,
                          autotune={"auto": "auto", "on": True, "off": False}[s["autotune"]], **extras)
        # quoted as a shell reads it: an --out or --data with spaces or quotes is pasted back whole
        resume_cmd = command_line([*_program(), "train", "--out", str(args.out), "--resume",
                                   *(["--data", str(data)] if data else [])])
        try:
            trainer.fit(train_loader, s["epochs"], val=val_loader, resume=args.resume)
        except TrainingInterrupted as exc:
            if exc.save_error is not None:  # (its message names the file, the checkpoint intact, the way on)
                kept = trainer.checkpoint_path.exists()
                _say(f"\nerror: {exc.message}" + (f"\nResume with: {resume_cmd}" if kept else ""))
                return EXIT_STOPPED_UNSAVED
            _say(f"\n{exc.message.split(';')[0]}; checkpoint saved to {exc.checkpoint}.\nResume with: {resume_cmd}")
            return 128 + int(exc.signal)  # 130 after Ctrl-C, 143 after SIGTERM, as the shell reports them
        except (TrainingDiverged, GPUOutOfMemory) as exc:
            _say(f"error: {exc}")
            return 1
        if val_loader is not None:
            # fit() validated the weights it returned with on these images in this precision: at level
            # 0 that is the final evaluation, not to be run twice
            result = trainer.last_validation
            if s["tta"] or result is None:  # (None: a resumed run with nothing left to train)
                result = trainer.evaluate(val_loader, tta=s["tta"])
            _say(f"final validation ({val_desc}, test-time augmentation level {s['tta']}): loss {result['loss']:.4f}")
            print(f"accuracy {result['accuracy']:.4f}")  # the one accuracy line, on stdout for scripts
        elif trainer.history:
            print(f"train accuracy {trainer.history[-1]['train_acc']:.4f}")
        if args.resume and stored.get("train_args", {}).get("tta", 0) != s["tta"]:
            for path in (trainer.checkpoint_path, trainer.best_path):  # best.npz: the same run's
                if path.exists():
                    _record_tta(path, s["tta"])
        _say(f"checkpoint: {trainer.checkpoint_path}; metrics: {trainer.metrics_path}")
    return 0


def _record_tta(path, tta):
    """The checkpoint at ``path`` records ``tta`` as its run's final evaluation level: a resume that
    changed --tta with nothing left to train wrote no checkpoint, and best.npz may be an epoch's from
    before the resume. Every other entry stays as it was."""
    from .checkpoint import load_checkpoint, pack_json, read_config, save_checkpoint
    arrays = load_checkpoint(path)
    config = read_config(arrays)
    if config.get("train_args", {}).get("tta", 0) != tta:
        config.setdefault("train_args", {})["tta"] = tta
        arrays["meta/config"] = pack_json(config)
        save_checkpoint(path, arrays)


# ----------------------------------------------------------------------------- evaluate
def _runs_data(data, recorded, doing):
    """The data a command on a run's checkpoint loads: ``--data`` when given, else the data the run
    recorded training on (``recorded``, None for a checkpoint written before runs recorded it) where
    it still is, said with ``doing`` (a resumed run continues on its own images, an evaluation scores
    the split it held out, not whatever $GPUCONV_DATA or the cache holds), else None (the search)."""
    if data is None and recorded and Path(recorded["path"]).exists():
        data = recorded["path"]
        _say(f"{doing} the run's data: {data} (--data picks other data)")
    return data


def cmd_evaluate(args) -> int:
    from . import amp, backend
    from .checkpoint import load_checkpoint, read_config, section
    from .data import DeviceLoader
    from .inference import recorded_input_dim, recorded_tta
    from .trainer import evaluate

    arrays = load_checkpoint(args.checkpoint)
    config = read_config(arrays)
    if "constructor" not in config:
        raise ValueError(f"{args.checkpoint} has no model config (meta/config): it was not written by "
                         "`gpuconv train`, nor by a Trainer given config={'constructor': ..., 'kwargs': ...}; rebuild "
                         "the model in Python and call Trainer.evaluate")
    input_dim = recorded_input_dim(config)
    if input_dim != (3, 32, 32):  # (a Trainer.fit run on other images: CIFAR-10's would fail inside a layer)
        raise ValueError(f"{args.checkpoint}: its network takes {'x'.join(map(str, input_dim))} images, and gpuconv "
                         "evaluate scores CIFAR-10's 3x32x32 ones: evaluate it on its own images in Python, "
                         "gpuconv.trainer.evaluate(model.net, DeviceLoader(images, labels, 500, shuffle=False, "
                         "mean=model.mean, std=model.std)) with model = gpuconv.load_model(checkpoint)")
    preprocess = config.get("preprocess", {})  # (a Trainer.fit run's own normalization, else CIFAR-10's)
    mean, std = preprocess.get("mean", CIFAR10_MEAN), preprocess.get("std", CIFAR10_STD)
    device = backend.Device(args.device)
    with backend.default_device(device):  # the weights are checked against the model before any data loads
        model = model_from_config(config)
        model.load_state_dict(section(arrays, "model"))
    cifar = _load_data(_runs_data(args.data, config.get("data"), "evaluating on"))
    if cifar.test is not None:
        images, labels, split_desc = cifar.test.images, cifar.test.labels, f"test_batch ({len(cifar.test)} images)"
        split_name, held_out = "test_batch", True
    elif "model" not in config and "train_args" not in config:  # a Trainer.fit run: its split is not recorded
        _, val, _, split_name = resolve_split(cifar, "auto")
        images, labels, held_out = val.images, val.labels, None
        split_desc = f"{_split_name(split_name)} ({len(val)} images)"
        _say(f"warning: {cifar.root} has no test_batch, and this checkpoint (written by Trainer.fit, not `gpuconv "
             f"train`) does not record which training images it held out: evaluating on {split_desc}, a held-out "
             "score only if the run kept those images out of its training")
    else:
        spec = config.get("train_args", {}).get("val_split", "auto")
        # Trained on every training image (--val-split none), or with test_batch as validation: no
        # part of these training batches was held out, so a score on them is not a held-out score.
        held_out = spec not in ("none", "test")
        _, val, split_desc, split_name = resolve_split(cifar, spec if held_out else "auto",
                                                       seed=config.get("train_args", {}).get("seed", 0))
        images, labels = val.images, val.labels
        if not held_out:
            split_desc = f"{_split_name(split_name)} ({len(val)} images)"
        if held_out:
            _say(f"{cifar.root} has no test_batch: evaluating on {split_desc}, as held out in training")
        else:
            limit = config.get("train_args", {}).get("limit")
            past = f"--limit {limit} takes all {len(cifar.train)} there are, " if limit else ""
            sampled = limit and limit < len(cifar.train)  # (a limit past the images trains on all of them)
            how = (f"trained on a seeded sample of {limit} of the training images, these among them (--limit {limit}, "
                   f"--val-split {spec}): evaluating on {split_desc}, some of which it TRAINED on" if sampled else
                   f"trained on every training image ({past}--val-split {spec}): evaluating on {split_desc}, which it "
                   "TRAINED on")
            _say(f"warning: {cifar.root} has no test_batch, and this checkpoint {how}. This is not a held-out score; "
                 "evaluate on a directory with test_batch for one")
    with backend.default_device(device):
        precision = amp.resolve_precision(args.precision or config.get("train_args", {}).get("precision", "fp32"),
                                          device)
        loader = DeviceLoader(images, labels, args.batch_size, shuffle=False, augment=False, device=device,
                              mean=mean, std=std, channels_last=amp.channels_last_for(precision))
        tta = recorded_tta(config) if args.tta is None else args.tta
        result = evaluate(model, loader, tta=tta, precision=precision)
    classes = config.get("classes") or list(cifar.classes)
    name = config.get("model") or config["constructor"]  # (a Trainer.fit run's config names its constructor)
    recipe = config.get("train_args", {}).get("recipe")
    label = name if recipe in (None, name) else f"{name} (recipe {recipe})"  # (airbench94_muon trains airbench94)
    per_class = {c: (None if math.isnan(a) else a) for c, a in zip(classes, result["per_class"])}
    # an interrupted run's checkpoint holds the steps it took into its next epoch too
    epoch, epoch_step = int(arrays["meta/epoch"]), int(arrays.get("meta/epoch_step", 0))
    if args.json:
        print(_json({"accuracy": result["accuracy"], "loss": result["loss"], "n": result["n"], "precision": precision,
                          "tta": tta,
                          "split": split_desc, "split_name": _split_name(split_name), "held_out": held_out, "model": name, "recipe": recipe, "epoch": epoch,
                          "epoch_step": epoch_step,
                          "checkpoint": str(args.checkpoint), "classes": classes, "per_class": per_class,
                          "confusion": result["confusion"].tolist()}))
        return 0
    level = f"test-time augmentation level {tta}" + (" (the run's)" if args.tta is None and tta else "")
    steps = f" and {epoch_step} step(s) of epoch {epoch + 1}" if epoch_step else ""
    told = {True: "", False: " (NOT held out: trained on)", None: " (held out or not: the run did not record it)"}
    print(f"{label} after {epoch} epoch(s){steps}, on {split_desc}{told[held_out]}, in {precision}, {level}")
    print(f"accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  ({result['n']} images)")
    print("per class: " + ", ".join(f"{c} {'-' if a is None else f'{a:.3f}'}" for c, a in per_class.items()))
    width = max(len(c) for c in classes)
    print("confusion (rows: true, columns: predicted):")
    print(" " * (width + 1) + " ".join(f"{c[:5]:>5}" for c in classes))
    for c, row in zip(classes, result["confusion"]):
        print(f"{c:>{width}} " + " ".join(f"{v:5d}" for v in row))
    return 0


def _json(obj) -> str:
    """``obj`` as strict JSON: a NaN or infinite number (the loss or probabilities of a model whose
    logits overflowed) is null, where json.dumps would write NaN/Infinity, which JSON readers refuse."""
    def finite(o):
        if isinstance(o, float):
            return o if math.isfinite(o) else None
        if isinstance(o, dict):
            return {k: finite(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [finite(v) for v in o]
        return o
    return json.dumps(finite(obj), allow_nan=False)


def _val_split_flag(spec) -> str:
    """A parsed --val-split as the flag writes it: 'test', 'none', 'batch5', '0.1'."""
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return f"batch{spec[1]}" if spec[0] == "batch" else f"{spec[1]:g}"
    return str(spec)


def _split_name(spec) -> str:
    """A split's short name for JSON: 'test_batch', 'data_batch_5', 'fraction_0.1'."""
    if spec in ("test", "test_batch"):
        return "test_batch"
    if isinstance(spec, (tuple, list)) and spec and spec[0] == "batch":
        return f"data_batch_{spec[1]}"
    if isinstance(spec, (tuple, list)) and spec and spec[0] == "fraction":
        return f"fraction_{spec[1]}"
    return str(spec)


# ----------------------------------------------------------------------------- predict, summary
def cmd_predict(args) -> int:
    from . import backend
    from .amp import resolve_precision
    from .inference import load_images, load_model
    device = backend.Device(args.device)
    precision = None if args.precision is None else resolve_precision(args.precision, device)
    with backend.default_device(device):
        model = load_model(args.checkpoint)
        images, sources = load_images(args.inputs, model.input_dim)  # the size and channels its network takes
        # (each source as load_images names it: '~/x.npy' is the home directory's)
        named = {s for s, _ in sources}
        for empty in dict.fromkeys(p for p in args.inputs if str(Path(p).expanduser()) not in named):
            _say(f"note: {empty} holds an array of 0 images: nothing to predict for it")  # (else: no line, no word)
        probs = model.predict(images, precision=precision, tta=args.tta)
        labels = probs.argmax(axis=1)
    k = min(args.top, probs.shape[1])
    rows = []
    for i, ((source, index), p, label) in enumerate(zip(sources, probs, labels)):
        order = np.argsort(-p, kind="stable")[:k]
        rows.append({"source": source, "index": index, "label": model.classes[label], "label_index": int(label),
                     "top": [[model.classes[j], round(float(p[j]), 6)] for j in order]})
    if args.json:
        print(_json({"predictions": rows}))
        return 0
    for r in rows:
        where = (r["source"] if r["index"] == 0 and not r["source"].lower().endswith(".npy")  # as load_images tells them
                 else f"{r['source']}[{r['index']}]")
        print(f"{where}: {r['label']}  (" + ", ".join(f"{c} {p:.3f}" for c, p in r["top"]) + ")")
    return 0


def _warn_unused_width(model, width):
    if width is not None and model not in (*WIDTH_MODELS, *AIRBENCH_MODELS):
        _say(f"warning: --width sets fast_net's, resnet18's and the airbench networks' channel widths; the {model} model "
             "ignores it")


def cmd_summary(args) -> int:
    recipe = get_recipe(args.recipe or args.model or "three_layer")
    name = args.model or recipe["model"]
    _warn_unused_width(name, args.width)
    # the recipe's constructor arguments are for its own network, as in train
    model, _ = build_model(name, width=args.width, model_kwargs=recipe["model_kwargs"] if name == recipe["model"] else None)
    print(model.summary((3, 32, 32)))
    return 0


# ----------------------------------------------------------------------------- info
def _version(dist):
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def info_lines() -> list[str]:
    import gpuconv
    from . import backend
    from .monitor import format_snapshot, query_all
    lines = [f"gpuconv {gpuconv.__version__} ({Path(gpuconv.__file__).parent})",
             f"python {platform.python_version()} ({sys.executable}) on {platform.platform()}",
             f"numpy {np.__version__}"]
    cp = backend.cupy_module()
    if cp is not None:
        lines.append(f"cupy {cp.__version__}")
    else:
        lines.append(f"cupy: not available ({backend._import_cupy()[1]})")
    for dist in ("tqdm", "nvidia-ml-py"):
        lines.append(f"{dist} {_version(dist) or 'not installed'}")
    lines.append(f"CUDA: {'works' if backend.cuda_available() else 'not usable'} - {backend.cuda_status()}")
    if backend.cuda_available():
        for i in range(cp.cuda.runtime.getDeviceCount()):
            props = cp.cuda.runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            lines.append(f"  cuda:{i} {name}, {props['totalGlobalMem'] / 2**30:.1f} GiB, "
                         f"compute {props['major']}.{props['minor']}")
    from .hostsim._build import CompileError, compiler
    try:
        cxx = compiler()
        sim = f"{cxx} at {shutil.which(cxx)}"
    except CompileError as exc:
        cxx, sim = None, f"not usable - {exc}"
    lines.append(f"sim (CUDA kernels on the host simulator): {sim}")
    lines.append(f"devices: cpu{', sim' if cxx else ''}{', cuda' if backend.cuda_available() else ''}; default "
                 f"{backend.get_default_device()} (GPUCONV_DEVICE={os.environ.get('GPUCONV_DEVICE', 'unset')}); "
                 f"'auto' means {backend.Device('auto')}")
    from .amp import resolve_precision
    lines.append(f"precision 'auto' (the speed recipes' default) means {resolve_precision('auto', 'auto')} on "
                 f"{backend.Device('auto')}")
    gpus, why = query_all()
    if gpus:
        lines += [f"  NVML gpu {g['index']}: {format_snapshot(g)}" for g in gpus]
    else:
        lines.append(f"telemetry: {why}")
    try:
        from .data import default_cache_dir, find_data_dir
        lines.append(f"CIFAR-10 data: {find_data_dir()}")
    except Exception as exc:
        # the one place searched: $GPUCONV_DATA when set (a wrong one is the usual cause), else the cache
        env = os.environ.get("GPUCONV_DATA")
        try:
            where = f"$GPUCONV_DATA ({env})" if env else str(default_cache_dir())
        except Exception:  # noqa: BLE001  (no home directory)
            where = "the cache (no home directory)"
        lines.append(f"CIFAR-10 data: none found yet in {where} ({type(exc).__name__}); `gpuconv train` downloads "
                     "it there, or pass --data DIR / set GPUCONV_DATA to the data")
    return lines


def cmd_info(args) -> int:
    print("\n".join(info_lines()))
    return 0


def precompile_for(device: int, precision_name: str):
    """The kernel builds a run in ``precision_name`` launches, compiled for GPU ``device`` at once,
    one per CPU core, before its first step: a machine's first run compiles them (some 10 s each
    for the tensor-core convolutions, one after the other when left to their first use), later
    runs find them in the disk cache."""
    from . import amp, kernels
    start = time.perf_counter()
    try:
        records = kernels.precompile(device, dtypes=(amp.compute_dtype(precision_name), np.float32),
                                     tf32=precision_name == "tf32")
    except Exception as exc:  # noqa: BLE001  (a build the run may never launch: its first use will say)
        _say(f"note: compiling the kernels ahead failed ({type(exc).__name__}: {str(exc)[:300]}); each compiles "
             "at its first use instead")
        return
    built = sum(not r["cached"] for r in records)
    if built:
        _say(f"compiled {built} kernel builds for this GPU in {time.perf_counter() - start:.1f} s (once: "
             f"they are kept in {kernels.cuda_cache_dir()})")


def cmd_precompile(args) -> int:
    from . import backend, kernels
    if args.arch is None and not backend.cuda_available():
        _say(f"gpuconv precompile: no GPU to compile for ({backend.cuda_status()}); name its target with --arch "
             "(sm_90 for an H100/H200, sm_80 for an A100)")
        return 1
    # (a first run compiles for minutes and lists the builds at the end: said now, it is not taken for a hang)
    _say(f"compiling the kernel builds for {args.arch or f'GPU {args.device or 0}'}, {args.jobs or os.cpu_count() or 1} "
         "at a time (minutes the first time, seconds once they are cached); each is listed when all are done")
    start = time.perf_counter()
    try:
        records = kernels.precompile(args.device, arch=args.arch, jobs=args.jobs)
    except ImportError as exc:  # --arch without a GPU: NVRTC's binding comes with CuPy
        _say(f"gpuconv precompile: NVRTC could not be imported ({exc}); install CuPy and NVRTC: from a checkout "
             "`make install EXTRAS=dev,nvrtc`, or pip install cupy-cuda13x nvidia-cuda-nvrtc")
        return 1
    for r in records:
        print(f"{r['file']:12s} {r['build']:11s} {r['arch']:8s} "
              + ("in the cache" if r["cached"] else f"compiled in {r['seconds']:.1f} s"))
    built = sum(not r["cached"] for r in records)
    print(f"{len(records)} builds, {built} compiled, in {time.perf_counter() - start:.1f} s; cache: {kernels.cuda_cache_dir()}")
    lost = sum(not r["stored"] for r in records)
    if lost:
        _say(f"gpuconv precompile: {lost} of the builds could not be stored in {kernels.cuda_cache_dir()} (not "
             "writable): processes find them only in a temporary directory, or compile them again; set "
             "GPUCONV_CUDA_CACHE to a writable directory")
        return 1
    return 0


# ----------------------------------------------------------------------------- bench
def benchmarks_dir() -> Path | None:
    here = Path(__file__).resolve().parent.parent / "benchmarks"
    return here if here.is_dir() else None


def cmd_bench(args) -> int:
    from . import backend
    bdir = benchmarks_dir()
    available = sorted(p.stem[len("bench_"):] for p in bdir.glob("bench_*.py")) if bdir else []
    if not available:
        _say("gpuconv bench runs the scripts in benchmarks/ of a source checkout, and none was found next to "
             f"the installed package ({Path(__file__).resolve().parent}). Clone the repository and run "
             "`gpuconv bench` (or `python benchmarks/bench_cpu.py`) from there.")
        return 2
    name = args.name or ("conv2d" if backend.cuda_available() and "conv2d" in available else "cpu")
    name = name[len("bench_"):] if name.startswith("bench_") else name.removesuffix(".py")
    if name not in available:
        _say(f"no benchmark {name!r} in {bdir}; available: {', '.join(available)}")
        return 2
    script = bdir / f"bench_{name}.py"
    old_argv = sys.argv
    sys.argv = [str(script), *[a for a in args.args if a != "--"]]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
    return 0


# ----------------------------------------------------------------------------- entry point
COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "summary": cmd_summary,
            "info": cmd_info, "precompile": cmd_precompile, "bench": cmd_bench}


def _format_warning(message, category, filename, lineno, line=None):
    """A Python warning as the command's own warnings read: its message, not the file, line and
    source code of gpuconv that raised it (GPUCONV_DEBUG=1 shows those)."""
    return f"warning: {message}\n"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # (read once, before the command: a typo there is named as any error is, not a traceback)
        debug = _env.flag("GPUCONV_DEBUG")
    except ValueError as exc:
        _say(f"gpuconv {args.command}: error: {exc}")
        return 1
    formatwarning = warnings.formatwarning
    if not debug:
        warnings.formatwarning = _format_warning
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt as exc:  # outside the trainer's own handling (loading data, a second Ctrl-C)
        _say(f"interrupted{': ' + str(exc) if str(exc) else ''}")
        return 130
    except BrokenPipeError:  # the reader of our output left (`gpuconv info | head -1`): as SIGPIPE would
        silence(sys.stdout)
        return 141
    except (ValueError, TypeError, KeyError, OSError, RuntimeError, MemoryError) as exc:  # KeyError: state-dict keys
        if debug:
            raise  # the full traceback, for bug reports
        _say(f"gpuconv {args.command}: error: {exc} (set GPUCONV_DEBUG=1 for a traceback)")
        return 1
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
