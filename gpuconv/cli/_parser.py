"""The command line: ``build_parser`` and the argparse types that refuse a bad value before any
data loads, naming the value and the rule."""
from __future__ import annotations

import argparse
import difflib
import math
import os

from ..counter_rng import SEED_LIMIT
from ..recipes import RECIPES, get_recipe
from . import _models, _splits


PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
EXIT_STATUSES = ("Exit status: 0 when the run is done; 130 (Ctrl-C) or 143 (SIGTERM) when it was stopped and its "
                 "checkpoint saved (continue with --resume; 130 also after a second signal, which stops at once without "
                 "saving); 74 when it was stopped but that checkpoint could not be "
                 "written (a full disk: the steps since the checkpoint on disk are lost); 1 on an error; 2 on a bad "
                 "command line.")
WIDTH_HELP = ("channel width of fast_net or of a ResNet's first stage (default 64; resnet18-152 and "
              "preact_resnet18-152: stages of W, 2W, 4W, 8W planes), "
              "or of an airbench network's first block, the others "
              "in the recipe's ratio (airbench94: W, 4W, 4W; airbench95: W, 3W, 3W; airbench96 and "
              "airbench96_faster: W, 3W, 4W, the latter's proxy W/4, W/2, W/2)")
PRECISION_HELP = ("fp32 (strict float32), tf32 (float32 with TF32 convolutions), bf16 or fp16 (mixed precision: "
                  "float32 master weights, low-precision compute; fp16 with loss scaling), or auto (bf16 on a GPU "
                  "with bfloat16 tensor cores, compute capability >= 8.0; fp16 on 7.5, a T4; else fp32). Default: "
                  "the recipe's "
                  f"(auto for fast, the airbench recipes and kuangliu's ({', '.join(_models.KUANGLIU_MODELS)}); "
                  "fp32 for the others)")


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
    from .. import backend
    try:
        backend.Device(text)
    except (ValueError, TypeError) as exc:
        where = " (from $GPUCONV_DEVICE, the default of --device)" if text == os.environ.get("GPUCONV_DEVICE") else ""
        raise argparse.ArgumentTypeError(f"{exc}{where}") from None
    return text


def command_device(text, given=False):
    """``--device``'s value as a Device; a GPU asked for where none is usable is a RuntimeError in the
    command line's words (``--device cpu``, not the API's ``device='cpu'``). ``given``: the value is
    not $GPUCONV_DEVICE's default (``--device`` was given, or a resumed run's checkpoint named it)."""
    from .. import backend
    device = backend.Device(text)
    if device.is_cuda and not backend.cuda_available():
        from_env = not given and text == os.environ.get("GPUCONV_DEVICE")
        where = " (from $GPUCONV_DEVICE, the default of --device)" if from_env else ""
        raise RuntimeError(f"--device {text}{where} asks for a GPU, but {backend.cuda_status()}. Use --device cpu "
                           "(NumPy), --device sim (the CUDA kernels on the host simulator) or --device auto (a GPU "
                           "when one is usable, else the CPU)")
    return device


def _arch(text):
    """An argparse type: an NVRTC target, sm_NN or compute_NN (sm_90a: Hopper's arch-specific one)."""
    from .. import kernels
    try:
        kernels.arch_capability(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


class _Given(argparse.Action):
    """Stores the flag's value and that it was given (``<dest>_given``): a resumed run keeps its own
    value of a setting whose flag has a default of its own ($GPUCONV_DEVICE's) unless it is given, and
    an error names $GPUCONV_DEVICE only where the value came from it."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


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
        _splits.parse_val_split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--val-split ")) from None
    return text


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose 'invalid choice' error names the choice a typo was probably meant
    as (``--model resnet-18``, ``--model ResNet18``: 'resnet18'; ``gpuconv trian``: 'train') before the
    list of all of them. Its subcommands' parsers are of this class too."""

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices and isinstance(value, str):
            names = [str(c) for c in action.choices]
            close = difflib.get_close_matches(value.lower(), names, n=1, cutoff=0.6)
            if close:
                raise argparse.ArgumentError(action, f"invalid choice: {value!r}; did you mean {close[0]!r}? "
                                                     f"(choose from {', '.join(map(repr, names))})")
        super()._check_value(action, value)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    p = _Parser(prog="gpuconv", description="Convolutional networks on NumPy and CuPy.")
    p.add_argument("--version", action="version", version=f"gpuconv {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{train,evaluate,predict,summary,info,precompile,bench}")
    sub.required = True

    t = sub.add_parser("train", help="train a model on CIFAR-10",
                       description="Train on CIFAR-10; writes OUT/checkpoint.npz (latest), OUT/best.npz (the best "
                                   "validation epoch; none with --val-split none), OUT/metrics.jsonl and OUT/curves.png.",
                       epilog=EXIT_STATUSES)
    t.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="a model and its hyperparameters (gpuconv.recipes.RECIPES); flags override its values "
                        "(default: the recipe of --model, else three_layer). airbench96_faster trains each step on "
                        "the half of its batch that a proxy network, run over the whole run first, finds hardest")
    t.add_argument("--model", choices=sorted(_models.MODELS), default=None,
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
                   help=f"momentum, Nesterov when > 0, except in kuangliu's recipes "
                        f"({', '.join(_models.KUANGLIU_MODELS)}: plain momentum, as his) (SGD's; airbench94_muon's "
                        f"is Muon's, its SGD groups keeping the recipe's 0.85) "
                        f"(default per recipe: {_defaults('momentum')})")
    t.add_argument("--schedule", choices=("onecycle", "cosine", "triangular", "linear", "constant"), default=None,
                   help=f"learning-rate schedule; cosine warms up over the first 5%% of the steps, except in "
                        f"kuangliu's recipes (default per recipe: {_defaults('schedule')})")
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
    t.add_argument("--device", type=_device, default=_default_device(), action=_Given,
                   help="cpu | cuda | cuda:N | sim | auto (default: a resumed run's own, else $GPUCONV_DEVICE, else "
                        "auto = a GPU if usable)")
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
    e.add_argument("--device", type=_device, default=_default_device(), action=_Given,
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
    pr.add_argument("--device", type=_device, default=_default_device(), action=_Given,
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
    sm.add_argument("--model", choices=sorted(_models.MODELS), default=None,
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
    b.add_argument("args", nargs=argparse.REMAINDER,
                   help="arguments passed to the script (`gpuconv bench --quick`: to the default one)")
    for command in sub._choices_actions:  # a command's own --help says what it does, as `gpuconv --help` does
        parser = sub.choices[command.dest]
        if parser.description is None:
            parser.description = f"{command.help[0].upper()}{command.help[1:]}."
    return p
