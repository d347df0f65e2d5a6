"""``gpuconv evaluate``: a checkpoint scored on test_batch, or on the split its run held out; and
the JSON and split names the commands print."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..data.augment import CIFAR10_MEAN, CIFAR10_STD
from . import _models, _output, _parser, _splits


def _runs_data(data, recorded, doing):
    """The data a command on a run's checkpoint loads: ``--data`` when given, else the data the run
    recorded training on (``recorded``, None for a checkpoint written before runs recorded it) where
    it still is, said with ``doing`` (a resumed run continues on its own images, an evaluation scores
    the split it held out, not whatever $GPUCONV_DATA or the cache holds), else None (the search)."""
    if data is None and recorded and Path(recorded["path"]).exists():
        data = recorded["path"]
        _output._say(f"{doing} the run's data: {data} (--data picks other data)")
    return data


def cmd_evaluate(args) -> int:
    from .. import amp, backend
    from ..checkpoint import load_checkpoint, read_config, section
    from ..data import DeviceLoader
    from ..inference import recorded_input_dim, recorded_tta
    from ..trainer import evaluate

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
    device = _parser.command_device(args.device, getattr(args, "device_given", False))
    with backend.default_device(device):  # the weights are checked against the model before any data loads
        model = _models.model_from_config(config)
        model.load_state_dict(section(arrays, "model"))
    cifar = _splits._load_data(_runs_data(args.data, config.get("data"), "evaluating on"))
    if cifar.test is not None:
        images, labels, split_desc = cifar.test.images, cifar.test.labels, f"test_batch ({len(cifar.test)} images)"
        split_name, held_out = "test_batch", True
    elif "model" not in config and "train_args" not in config:  # a Trainer.fit run: its split is not recorded
        _, val, _, split_name = _splits.resolve_split(cifar, "auto")
        images, labels, held_out = val.images, val.labels, None
        split_desc = f"{_split_name(split_name)} ({len(val)} images)"
        _output._say(f"warning: {cifar.root} has no test_batch, and this checkpoint (written by Trainer.fit, not "
                     f"`gpuconv train`) does not record which training images it held out: evaluating on {split_desc}, "
                     "a held-out score only if the run kept those images out of its training")
    else:
        spec = config.get("train_args", {}).get("val_split", "auto")
        # Trained on every training image (--val-split none), or with test_batch as validation: no
        # part of these training batches was held out, so a score on them is not a held-out score.
        held_out = spec not in ("none", "test")
        _, val, split_desc, split_name = _splits.resolve_split(cifar, spec if held_out else "auto",
                                                               seed=config.get("train_args", {}).get("seed", 0))
        images, labels = val.images, val.labels
        if not held_out:
            split_desc = f"{_split_name(split_name)} ({len(val)} images)"
        if held_out:
            _output._say(f"{cifar.root} has no test_batch: evaluating on {split_desc}, as held out in training")
        else:
            limit = config.get("train_args", {}).get("limit")
            past = f"--limit {limit} takes all {len(cifar.train)} there are, " if limit else ""
            sampled = limit and limit < len(cifar.train)  # (a limit past the images trains on all of them)
            how = (f"trained on a seeded sample of {limit} of the training images, these among them (--limit {limit}, "
                   f"--val-split {spec}): evaluating on {split_desc}, some of which it TRAINED on" if sampled else
                   f"trained on every training image ({past}--val-split {spec}): evaluating on {split_desc}, which it "
                   "TRAINED on")
            _output._say(f"warning: {cifar.root} has no test_batch, and this checkpoint {how}. This is not a held-out "
                         "score; evaluate on a directory with test_batch for one")
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
