"""``gpuconv predict`` (image files or .npy arrays classified by a checkpoint) and ``gpuconv summary``
(a network's layers, shapes, parameters and FLOPs)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..recipes import get_recipe
from . import _evaluate, _models, _output, _parser


def cmd_predict(args) -> int:
    from .. import backend
    from ..amp import resolve_precision
    from ..inference import load_images, load_model
    device = _parser.command_device(args.device, getattr(args, "device_given", False))
    precision = None if args.precision is None else resolve_precision(args.precision, device)
    with backend.default_device(device):
        model = load_model(args.checkpoint)
        images, sources = load_images(args.inputs, model.input_dim)  # the size and channels its network takes
        # (each source as load_images names it: '~/x.npy' is the home directory's)
        named = {s for s, _ in sources}
        for empty in dict.fromkeys(p for p in args.inputs if str(Path(p).expanduser()) not in named):
            # (else: no line, no word)
            _output._say(f"note: {empty} holds an array of 0 images: nothing to predict for it")
        probs = model.predict(images, precision=precision, tta=args.tta)
        labels = probs.argmax(axis=1)
    k = min(args.top, probs.shape[1])
    rows = []
    for i, ((source, index), p, label) in enumerate(zip(sources, probs, labels)):
        order = np.argsort(-p, kind="stable")[:k]
        rows.append({"source": source, "index": index, "label": model.classes[label], "label_index": int(label),
                     "top": [[model.classes[j], round(float(p[j]), 6)] for j in order]})
    if args.json:
        print(_evaluate._json({"predictions": rows}))
        return 0
    for r in rows:
        where = (r["source"] if r["index"] == 0 and not r["source"].lower().endswith(".npy")  # as load_images tells them
                 else f"{r['source']}[{r['index']}]")
        print(f"{where}: {r['label']}  (" + ", ".join(f"{c} {p:.3f}" for c, p in r["top"]) + ")")
    return 0


def _warn_unused_width(model, width):
    if width is not None and model not in (*_models.WIDTH_MODELS, *_models.AIRBENCH_MODELS):
        _output._say("warning: --width sets fast_net's, the ResNets' and the airbench networks' channel widths; the "
                     f"{model} model ignores it")


def cmd_summary(args) -> int:
    recipe = get_recipe(args.recipe or args.model or "three_layer")
    name = args.model or recipe["model"]
    _warn_unused_width(name, args.width)
    # the recipe's constructor arguments are for its own network, as in train
    model, _ = _models.build_model(name, width=args.width,
                                   model_kwargs=recipe["model_kwargs"] if name == recipe["model"] else None)
    print(model.summary((3, 32, 32)))
    if recipe.get("select") and name == recipe["model"]:  # the network that selects its images
        print("\nproxy (data selection: each step trains on the images of the highest loss under it)")
        print(_models.build_proxy(recipe, width=args.width).summary((3, 32, 32)))
    return 0
