"""``gpuconv train``: the run's settings (flags over a resumed checkpoint's over the recipe's,
``_settings``), the checks made before the data loads, and the run itself (``_train``)."""
from __future__ import annotations

import math
from pathlib import Path

from .._console import command_line
from .._files import directory_lock
from ..data.augment import CIFAR10_MEAN, CIFAR10_STD
from ..recipes import DEFAULTS, get_recipe
from . import _evaluate, _info, _models, _output, _parser, _predict, _splits


# Settings a resumed run takes from its checkpoint unless given again on the command line.
RESUMABLE = ("recipe", "model", "epochs", "batch_size", "lr", "weight_decay", "momentum", "schedule",
             "label_smoothing", "augment", "cutout", "width", "seed", "limit", "val_split", "precision", "tta",
             "autotune")
# A run stopped by Ctrl-C or SIGTERM whose checkpoint could not be written: sysexits.h's EX_IOERR,
# apart from a saved stop (128 + the signal) and from an error (1).
EXIT_STOPPED_UNSAVED = 74


def _stored_config(args) -> dict:
    """The config of the run ``--resume`` continues (read once: settings and data come from it), or {}."""
    from ..checkpoint import CHECKPOINT_NAME, load_checkpoint, read_config
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
    from ..checkpoint import load_checkpoint
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
    from ..amp import resolve_precision
    from ..checkpoint import CHECKPOINT_NAME
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
            value = _splits.parse_val_split(value)
            old = tuple(old) if isinstance(old, list) else old
            if value == "auto":
                continue
        if key == "epochs" and stored.get("schedule") == "constant" and not stored.get("lookahead"):
            continue  # a constant learning rate can run for more epochs (a lookahead's decay cannot)
        if key == "precision":
            if old is not None and value != old:
                _output._say(f"note: {ckpt_path} was trained in {old}; continuing in {value} (its weights are float32 "
                             "masters, so any precision can continue them)")
            continue
        if key == "tta":  # evaluation only: the training goes on as it was
            if old is not None and value != old:
                _output._say(f"note: {ckpt_path} was set to a final evaluation at test-time augmentation level {old}; "
                             f"evaluating at --tta {value} instead, which the checkpoint now records")
            continue
        if key == "width" and old is None and stored.get("model") in _models.WIDTH_MODELS:
            old = _models.MODEL_DEFAULTS[stored["model"]]["width"]  # a recipe without a width built it at its own
        if key == "width" and old is None and stored.get("model") in _models.AIRBENCH_MODELS:
            # the run's network at its recipe's widths: a --width that builds another cannot load its weights
            widths = _models.airbench_widths(stored["model"], None, stored.get("model_kwargs"))
            if _models.airbench_widths(stored["model"], value, stored.get("model_kwargs")) == widths:
                continue
            old = widths[0]  # the first block's width, as --width gives it
        if key == "autotune":
            if old is not None and value != old:
                _output._say(f"note: {ckpt_path} was trained with --autotune {old}; continuing with --autotune "
                             f"{value}, whose convolution variants may sum in other orders (close to, not bit for bit "
                             "as, the run)")
            continue
        if old is not None and value != old:
            flag = "--" + key.replace("_", "-")
            why = ""
            if key == "epochs":
                why = (" (its lookahead's weight average was laid out over that many epochs)"
                       if stored.get("schedule") == "constant" else
                       " (its learning-rate schedule was laid out for that many epochs)")
            if key == "val_split":  # as the flag is written: batch5, 0.1
                old, value = _evaluate._val_split_flag(old), _evaluate._val_split_flag(value)
            was, given_now = f"{flag} {old}", f"{flag} {value}"
            if isinstance(value, bool):  # --augment / --no-augment, not "--augment False"
                was, given_now = (f"--{'' if v else 'no-'}{key.replace('_', '-')}" for v in (old, value))
                flag = given_now
            raise ValueError(f"--resume: {ckpt_path} holds a run with {was}{why}, but {given_now} was "
                             f"given; drop {flag} to continue that run, or train into a new --out")


def _resumed_device(args, stored) -> bool:
    """A resumed run trains on the device its run asked for (``--device``, or $GPUCONV_DEVICE then),
    which its checkpoint records, unless ``--device`` is given: its resume command (which names no
    device) continues it on the same one, not on another that sums in other orders (a run on the CPU
    of a GPU machine went on on the GPU, one on cuda:1 on cuda:0). Sets ``args.device``; returns
    whether the device is the recorded one."""
    recorded = stored.get("train_args", {}).get("device")
    if recorded is None:  # a run of a version that recorded no device, or no resume
        return False
    if not getattr(args, "device_given", False):
        args.device = recorded
        return True
    if args.device != recorded:
        _output._say(f"note: the run in {args.out} trained with --device {recorded}; continuing on --device "
                     f"{args.device}: the same batches, with sums in other orders (close to, not bit for bit as, "
                     "the run)")
    return False


def _note_autotune_off_gpu(autotune, device):
    """--autotune on (given, or the resumed run's) times kernel variants on a GPU alone: elsewhere it
    would change nothing without a word."""
    if autotune != "on" or device.is_cuda:
        return
    why = ("the simulator's timings say nothing about a GPU's, so its convolutions run the default rule's variants"
           if device.kind == "sim" else "the NumPy path has no kernel variants to choose from")
    _output._say(f"note: --autotune on times the convolutions' kernel variants on a GPU; on {device} it does nothing: "
                 f"{why}")


def cmd_train(args) -> int:
    """Checks what can be checked before the data set loads, then trains holding OUT's lock."""
    from ..checkpoint import CHECKPOINT_NAME
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
    from .. import amp, backend, kernels
    from ..data import DeviceLoader
    from ..trainer import Trainer, TrainingDiverged, TrainingInterrupted, GPUOutOfMemory

    stored = _stored_config(args)
    recorded_device = _resumed_device(args, stored)
    try:
        device = _parser.command_device(args.device, recorded_device or getattr(args, "device_given", False))
    except RuntimeError as exc:
        if not recorded_device:
            raise
        raise RuntimeError(f"{exc} (--device {args.device} is the device the run trained on, which its checkpoint "
                           "records: give --device cpu or sim to continue it here, close to, not bit for bit as, "
                           "the run)") from None
    s = _settings(args, device, stored)
    s["device"] = args.device  # as asked for ('auto' stays 'auto'): a resume without --device runs there again
    kernels.check_environment(autotune=s["autotune"] == "auto")  # a typo there fails now, not after the data loads
    if device.kind == "cpu":  # the NumPy path: freed arrays' memory kept for the next step (gpuconv._hostmem)
        from .._hostmem import keep_freed_memory
        keep_freed_memory()
    if device.kind == "sim":
        _output._say("note: --device sim runs the CUDA kernels on the host simulator, one fiber per GPU thread: tens "
                     "of images/s, meant for checking the kernels (--device cpu trains with NumPy, a hundred times "
                     "faster)")
    if args.cuda_graph and not device.is_cuda:
        _output._say(f"note: --cuda-graph replays steps on a GPU; on {device} each step runs as it is")
    _note_autotune_off_gpu(s["autotune"], device)
    recorded = stored.get("data")  # the training data the run recorded (None: written before runs did)
    data = _evaluate._runs_data(args.data, recorded, "resuming on")
    cifar = _splits._load_data(data)
    if cifar.train is None:
        raise FileNotFoundError(f"{cifar.root} holds test_batch alone, no training batches (data_batch_1..5): it "
                                "is enough to evaluate a checkpoint, not to train. Point --data at the full release")
    train, val, val_desc, val_spec = _splits.resolve_split(cifar, s["val_split"], seed=s["seed"])
    s["val_split"] = val_spec
    if cifar.test is None and val is not None:
        _output._say(f"{cifar.root} has no test_batch: validating on {val_desc}")
    if s["limit"] is not None and s["limit"] > len(train):
        _output._say(f"note: --limit {s['limit']} is more than the {len(train)} training images there are: training on "
                     f"all {len(train)}")
    train = _splits._limit(train, s["limit"], s["seed"])
    trained_on = {"path": str(Path(cifar.root).resolve()), "train_images": len(train),
                  "fingerprint": train.fingerprint()}
    if recorded and recorded.get("fingerprint") != trained_on["fingerprint"]:
        raise ValueError(f"--resume: {args.out} holds a run trained on {recorded['train_images']} images from "
                         f"{recorded['path']}, but the training images found now ({len(train)} from {cifar.root}) "
                         f"are not those: pass --data {command_line([recorded['path']])} (or a copy of it) to continue "
                         "that run, or train into a new --out")
    if s["optimizer"] == "airbench" and s["batch_size"] > len(train):
        _output._say(f"note: the {s['recipe']} recipe's lr and weight decay are per 1024 examples, scaled to batch "
                     f"{s['batch_size']}")
    _predict._warn_unused_width(s["model"], getattr(args, "width", None))
    if s["cutout"] and not s["augment"]:
        _output._say(f"warning: --cutout {s['cutout']} applies with augmentation only, which this run has off "
                     "(--augment)")
    if s["batch_size"] > len(train):
        _output._say(f"warning: --batch-size {s['batch_size']} is larger than the {len(train)} training images: each "
                     f"epoch is one step of {len(train)} images")
    suggest = 1 << max(4, (max(1, len(train) // 8)).bit_length() - 1)  # a power of two giving >= 8 steps
    if (s["model"] in (*_models.WIDTH_MODELS, *_models.KUANGLIU_MODELS) and s["batch_size"] > len(train) // 8
            and suggest < s["batch_size"]):
        _output._say(f"note: batch size {s['batch_size']} gives only {math.ceil(len(train) / s['batch_size'])} steps "
                     f"per epoch on {len(train)} images; --batch-size {suggest} suits a subset this small better")
    epochs = f"{s['epochs']} epoch{'' if s['epochs'] == 1 else 's'}"
    if s.get("select"):
        _output._say(f"data selection: each step trains on the {_models.selection_count(s, len(train))} of its "
                     f"{min(s['batch_size'], len(train))} images of the highest loss under a proxy network (widths "
                     f"{_models.proxy_widths(s, s.get('width'))}), which runs over the whole run first")
    _output._say(f"training {s['model']} (recipe {s['recipe']}) on {device} ({len(train)} images, {epochs}, batch "
                 f"{s['batch_size']}, lr {s['lr']}, {s['schedule']}, {s['precision']}); validation: {val_desc}; "
                 f"output: {args.out}")

    if device.is_cuda:
        _info.precompile_for(device.index, s["precision"])
    with backend.default_device(device):
        model, config = _models.build_model(s["model"], seed=s["seed"], width=s.get("width"),
                                            model_kwargs=s["model_kwargs"])
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
                                    drop_last=_models.drop_last(s, len(train)))
        val_loader = (DeviceLoader(val.images, val.labels, 500, shuffle=False, augment=False, device=device,
                                   channels_last=nhwc) if val is not None else None)
        if s.get("select"):  # each step trains on the images a proxy network selects (gpuconv.selection)
            train_loader = _models.selection_loader(s, train_loader, train.images, width=s.get("width"),
                                                    precision=s["precision"],
                                                    report=lambda records, seconds: _proxy_report(trainer, records,
                                                                                                  seconds))
        opt, sched, extras = _models._recipe_setup(s, model, train.images, len(train_loader))
        trainer = Trainer(model, opt, sched, out_dir=args.out, label_smoothing=s["label_smoothing"],
                          log_every=args.log_every, seed=s["seed"], progress="epoch" if args.no_progress else True,
                          config=config, precision=s["precision"], cuda_graph=args.cuda_graph,
                          autotune={"auto": "auto", "on": True, "off": False}[s["autotune"]], **extras)
        # quoted as a shell reads it: an --out or --data with spaces or quotes is pasted back whole
        resume_cmd = command_line([*_output._program(), "train", "--out", str(args.out), "--resume",
                                   *(["--data", str(data)] if data else [])])
        try:
            trainer.fit(train_loader, s["epochs"], val=val_loader, resume=args.resume)
        except TrainingInterrupted as exc:
            if exc.save_error is not None:  # (its message names the file, the checkpoint intact, the way on)
                kept = trainer.checkpoint_path.exists()
                _output._say(f"\nerror: {exc.message}" + (f"\nResume with: {resume_cmd}" if kept else ""))
                return EXIT_STOPPED_UNSAVED
            _output._say(f"\n{exc.message.split(';')[0]}; checkpoint saved to {exc.checkpoint}.\nResume with: "
                         f"{resume_cmd}")
            return 128 + int(exc.signal)  # 130 after Ctrl-C, 143 after SIGTERM, as the shell reports them
        except (TrainingDiverged, GPUOutOfMemory) as exc:
            _output._say(f"error: {exc}")
            return 1
        if val_loader is not None:
            # fit() validated the weights it returned with on these images in this precision: at level
            # 0 that is the final evaluation, not to be run twice
            result = trainer.last_validation
            if s["tta"] or result is None:  # (None: a resumed run with nothing left to train)
                result = trainer.evaluate(val_loader, tta=s["tta"])
            _output._say(f"final validation ({val_desc}, test-time augmentation level {s['tta']}): loss "
                         f"{result['loss']:.4f}")
            print(f"accuracy {result['accuracy']:.4f}")  # the one accuracy line, on stdout for scripts
        elif trainer.history:
            print(f"train accuracy {trainer.history[-1]['train_acc']:.4f}")
        if args.resume and stored.get("train_args", {}).get("tta", 0) != s["tta"]:
            for path in (trainer.checkpoint_path, trainer.best_path):  # best.npz: the same run's
                if path.exists():
                    _record_tta(path, s["tta"])
        _output._say(f"checkpoint: {trainer.checkpoint_path}; metrics: {trainer.metrics_path}")
    return 0


def _proxy_report(trainer, records, seconds):
    """The proxy phase of a run with data selection: a record per epoch in metrics.jsonl (kind
    'proxy'), a line in the log."""
    for record in records:
        trainer._write_metrics(record)
    first, last = records[0], records[-1]
    steps = sum(r["proxy_steps"] for r in records)
    trained = sum(r["proxy_trained_steps"] for r in records)
    _output._say(f"data selection: the proxy ran {steps} steps ({trained} of them trained it) in {seconds:.1f}s; its "
                 f"loss per image {first['proxy_loss']:.4f} -> {last['proxy_loss']:.4f} over the epochs, "
                 f"{first['proxy_selected_loss']:.4f} -> {last['proxy_selected_loss']:.4f} on the {last['selected']} "
                 f"of each {last['batch']} selected")


def _record_tta(path, tta):
    """The checkpoint at ``path`` records ``tta`` as its run's final evaluation level: a resume that
    changed --tta with nothing left to train wrote no checkpoint, and best.npz may be an epoch's from
    before the resume. Every other entry stays as it was."""
    from ..checkpoint import load_checkpoint, pack_json, read_config, save_checkpoint
    arrays = load_checkpoint(path)
    config = read_config(arrays)
    if config.get("train_args", {}).get("tta", 0) != tta:
        config.setdefault("train_args", {})["tta"] = tta
        arrays["meta/config"] = pack_json(config)
        save_checkpoint(path, arrays)
