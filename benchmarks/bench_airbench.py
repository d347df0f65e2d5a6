"""An airbench recipe end to end: seconds for gpuconv's ``--recipe airbench94`` (or ``--recipe
airbench95``, ``airbench96``, ``airbench94_muon``, ``airbench96_faster``) to train on 50,000 synthetic CIFAR-shaped
images, against the same recipe in PyTorch eager (benchmarks/airbench_torch.py) on the same GPU,
in the same precision.

    python benchmarks/bench_airbench.py                      # GPU: fp32 (TF32 off) and bf16
    python benchmarks/bench_airbench.py --precisions bf16 --json --save
    python benchmarks/bench_airbench.py --recipe airbench96 --precisions bf16 --repeat 1
    python benchmarks/bench_airbench.py --device sim --tiny  # no GPU: the validation on the simulator

Validation first, from one set of weights copied into both networks (PyTorch on the CPU when
gpuconv runs on the simulator): the training-mode logits of a batch, then the parameters after
three of the recipe's optimizer steps (its parameter groups, decoupled weight decay, the
schedule's first lrs, label smoothing; gpuconv with a mean loss, the baseline in airbench's
summed form), then four epochs of the same batches (loss and parameters). Then per precision, each side: one untimed warm-up run on a slice of the images
(kernel compiles, cuDNN autotuning for the full and the last partial batch), then the timed runs:
wall-clock seconds from the upload of the images (uint8, once) to the synchronized end of the
last step, the whitening initialization included, evaluation excluded. gpuconv trains through the
same pieces ``gpuconv train --recipe airbench94`` uses (the recipe's optimizer, schedule,
lookahead and whitening, the fused augmentation loader, the Trainer), writing no checkpoints; a
second gpuconv row replays each step as a CUDA graph (``gpuconv train --cuda-graph``), checked
first to give the eager run's parameters bit for bit after two short epochs (the whitening bias
frozen in the second, whose step is captured anew).
The images are random, so the loss says only that training ran (it stays near ln 10); accuracy
is the real subset's business (the battery's airbench stage).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import airbench_torch  # noqa: E402
import common  # noqa: E402
from bench_epoch import synthetic  # noqa: E402
from gpuconv import amp, cli  # noqa: E402
from gpuconv import backend as B  # noqa: E402
from gpuconv.data import DeviceLoader, normalize  # noqa: E402
from gpuconv.recipes import get_recipe  # noqa: E402
from gpuconv.trainer import Trainer  # noqa: E402

NAME = "bench_airbench"
RECIPES = ("airbench94", "airbench95", "airbench96", "airbench94_muon", "airbench96_faster")
FULL = {"images": 50_000, "width": None}  # the published widths
TINY = {"images": 40, "width": 2, "batch": 16, "epochs": 2}


def recipe(args):
    r = get_recipe(args.recipe)
    r["name"] = args.recipe
    if args.tiny:
        r.update(batch_size=TINY["batch"], epochs=TINY["epochs"])
    if args.epochs:
        r["epochs"] = args.epochs
    return r


def widths_of(r, width):
    """The recipe's network's widths with its first block at ``width`` (None: the recipe's)."""
    return tuple(cli.airbench_widths(r["model"], width, r["model_kwargs"]))


def torch_recipe(r):
    return airbench_torch.RECIPES[r["name"]]


def mean_over(r, n):
    """The images of a batch (of ``n`` training images) the recipe's lr is per: its batch, or the
    images a proxy selects from it (gpuconv's mean loss over them is the baseline's sum times
    lr / that count)."""
    return cli.selection_count(r, n) if r.get("select") else r["batch_size"]


def unselected(h):
    """The baseline's recipe ``h`` without data selection: for batches already selected."""
    return {k: v for k, v in h.items() if k not in ("keep_fraction", "proxy_widths", "proxy_train_every")}


def gpuconv_setup(images, labels, r, precision, device, width, cuda_graph=False):
    """model, loader, optimizer, schedule, Trainer: what ``gpuconv train --recipe`` builds
    (``--cuda-graph`` with ``cuda_graph``)."""
    model, _ = cli.build_model(r["model"], seed=0, width=width, model_kwargs=r["model_kwargs"])
    loader = DeviceLoader(images, labels, r["batch_size"], shuffle=True, augment=r["augment"], seed=0, device=device,
                          channels_last=amp.channels_last_for(precision), dtype=amp.compute_dtype(precision),
                          padding=r["padding"], padding_mode=r["padding_mode"], flip=r["flip"], cutout=r["cutout"],
                          drop_last=cli.drop_last(r, len(images)))
    if r.get("select"):  # each step on the images a proxy network selects: the proxy's run is timed too
        loader = cli.selection_loader(r, loader, images, width=width, precision=precision)
    opt, sched, extras = cli._recipe_setup(r, model, images, len(loader))
    trainer = Trainer(model, opt, sched, label_smoothing=r["label_smoothing"], progress=False, monitor=False,
                      precision=precision, cuda_graph=cuda_graph, **extras)
    return model, loader, trainer


def run_gpuconv(images, labels, r, precision, args, width, cuda_graph=False):
    """(seconds, last epoch's mean loss): upload, whitening, every epoch, synchronized."""
    B.synchronize()
    t0 = time.perf_counter()
    with common.device_context(args):
        _, loader, trainer = gpuconv_setup(images, labels, r, precision, args.device, width, cuda_graph)
        trainer.fit(loader, r["epochs"])
    B.synchronize()
    return time.perf_counter() - t0, trainer.history[-1]["train_loss"]


def run_graph(images, labels, r, precision, args, width):
    """run_gpuconv with every step after an epoch's first replayed as a CUDA graph."""
    return run_gpuconv(images, labels, r, precision, args, width, cuda_graph=True)


GRAPH_EPOCHS = 2  # the whitening bias trains in the first and is frozen in the second: a new capture


def validate_graph(images, labels, r, args, precisions, width):
    """The graph path trains as the eager one: the parameters after two short epochs (the recipe's
    schedule, and its lookahead updated every step; the whitening bias trained in the first epoch
    and frozen in the second, so that the second epoch's step, captured anew, is checked too), bit
    for bit, per precision; on
    a GPU the graphed run must have captured once per epoch. A Checks of its own: a graph path that
    fails (or raises) is reported and left untimed, and the eager and PyTorch timings still run."""
    checks = common.Checks()
    # The lookahead updated every step: at the recipe's every 5, the last update (decay 1) puts the
    # model back on the average of step 5 or of the start, and the steps after it (the second epoch's
    # capture, a run of under 5 steps whole) would reach no compared parameter.
    rg = dict(r, epochs=GRAPH_EPOCHS, whiten_bias_epochs=1, lookahead=1 if r.get("lookahead") else None)
    for prec in precisions:
        name = (f"{prec}: cuda-graph steps give the eager steps' parameters ({GRAPH_EPOCHS} epochs, the whitening "
                "bias frozen in the second, bit for bit)")
        try:
            params = []
            for graph in (False, True):
                with common.device_context(args):
                    model, loader, trainer = gpuconv_setup(images, labels, rg, prec, args.device, width, graph)
                    trainer.fit(loader, GRAPH_EPOCHS)
                    params.append({n: common.host(p.data) for n, p in model.named_parameters()})
            captures = trainer._graph.captures
        except Exception as exc:  # noqa: BLE001 - a GPU-only failure of the capture, named in the record
            checks.add(name, False, detail=f"{type(exc).__name__}: {exc}"[:500])
            continue
        worst = max(float(np.max(np.abs(params[0][n].astype(np.float64) - params[1][n]))) for n in params[0])
        if args.device == "cuda" and captures != GRAPH_EPOCHS:
            checks.add(name, False, worst, 0.0, detail=f"{captures} captures in {GRAPH_EPOCHS} epochs, not one per "
                                                       "epoch: the frozen bias's epoch was not captured anew")
            continue
        checks.add(name, worst == 0.0, worst, 0.0)
    return checks


def torch_device(args):
    return "cuda" if args.device == "cuda" else "cpu"


def run_torch(torch, images, labels, r, precision, args, width):
    _, seconds, loss = airbench_torch.train(torch, images, labels, torch_device(args), precision, r["epochs"],
                                            r["batch_size"], widths=widths_of(r, width),
                                            drop_last=cli.drop_last(r, len(images)), h=torch_recipe(r))
    return seconds, loss


def copy_to_torch(torch, model, tmodel):
    """gpuconv's parameters and buffers into the PyTorch network of the same names."""
    state = tmodel.state_dict()
    arrays = [(name, p.data) for name, p in model.named_parameters()] + list(model.named_buffers())
    for name, arr in arrays:
        value = torch.as_tensor(np.ascontiguousarray(common.host(arr)), dtype=state[name].dtype)
        state[name].copy_(value.to(state[name].device))


def validate(images, labels, r, args, checks, torch, width):
    """The baseline is the same network and optimizer: logits (``checks``), then three steps'
    parameters (returned as a Checks of its own: max pooling's near-ties can route a gradient
    differently on cuDNN, so the caller reports that one without withholding the timing)."""
    steps = common.Checks()
    if torch is None:  # nothing to compare with: the record says so (baseline None), no check claims it
        return steps
    n = min(len(images), 2 * r["batch_size"], 64)
    with common.device_context(args):
        model, loader, trainer = gpuconv_setup(images, labels, r, "fp32", args.device, width)
        tmodel = airbench_torch.build(torch, widths_of(r, width), h=torch_recipe(r)).to(torch_device(args))
        copy_to_torch(torch, model, tmodel)
        x = normalize(images[:n]).astype(np.float32)
        y = labels[:n]
        tx = torch.as_tensor(x, device=torch_device(args))
        ty = torch.as_tensor(y, device=torch_device(args))
        xd, yd = common.to_dev(x, args), common.to_dev(y, args)
        model.train()
        got = common.host(model(xd))
        want = tmodel(tx).detach().cpu().numpy()
        checks.close("training-mode logits == PyTorch's (same weights, fp32)", got, want, rtol=1e-4)
        # The recipe's steps on one batch: the trainer's step vs airbench's summed-loss SGD.
        copy_to_torch(torch, model, tmodel)  # the forward above moved the running statistics alike
        topts = airbench_torch.optimizer(torch, tmodel, r["batch_size"], torch_recipe(r))
        total = r["epochs"] * len(loader)
        if total <= 3:  # the lookahead's last pull onto the average comes at the last step
            raise ValueError(f"bench_airbench: the validation takes 3 steps of a schedule of {total}; give it more "
                             "images or epochs")
        for step in range(3):
            trainer.train_step(xd, yd)
            airbench_torch.set_lrs(topts, step, total, r["whiten_bias_epochs"] * len(loader), torch_recipe(r))
            loss = airbench_torch.loss_of(torch, tmodel, tx, ty, "fp32") * (mean_over(r, len(images)) / n)
            tmodel.zero_grad(set_to_none=True)
            loss.backward()
            for o in topts:
                o.step()
        tstate = tmodel.state_dict()
        worst, where = 0.0, None
        for name, p in model.named_parameters():
            err = common.rel_err(common.host(p.data), tstate[name].detach().cpu().numpy())
            if err > worst:
                worst, where = err, name
        steps.add("parameters after 3 recipe steps == PyTorch's (mean loss vs airbench's summed form)",
                  worst <= 1e-3, worst, 1e-3, detail=f"largest at {where}")
    validate_epochs(images, labels, r, args, steps, torch, width)
    return steps


def validate_epochs(images, labels, r, args, steps, torch, width, epochs=4):
    """The two recipes over whole epochs on the same batches: gpuconv's Trainer.fit (the epoch
    callbacks' whitening-bias freeze, the lookahead, the schedule across epochs), its loader's
    augmented batches recorded and fed to the baseline's training loop from the same weights.
    The last epoch's mean loss and the parameters must agree (float32 rounding apart). With data
    selection the batches recorded are the rows the proxy chose, which the baseline trains on as
    they are (the proxies' own agreement is tests/test_selection.py's)."""
    n = min(len(images), 4 * r["batch_size"])
    rr = dict(r, epochs=epochs)
    recorded = []

    class Recording:  # gpuconv's loader, its batches kept (on the host) as they are trained on
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def set_epoch(self, epoch):
            self.inner.set_epoch(epoch)
            recorded.append([])

        def __iter__(self):
            for x, y in self.inner:
                recorded[-1].append((common.host(x), common.host(y)))
                yield x, y

        def __getattr__(self, name):
            return getattr(self.inner, name)

    with common.device_context(args):
        model, loader, trainer = gpuconv_setup(images[:n], labels[:n], rr, "fp32", args.device, width)
        tmodel = airbench_torch.build(torch, widths_of(r, width), h=torch_recipe(r)).to(torch_device(args))
        copy_to_torch(torch, model, tmodel)  # after gpuconv's whitening: the same start
        trainer.fit(Recording(loader), epochs)
        ours = trainer.history[-1]["train_loss"]
    dev = torch_device(args)
    batches = [[(torch.as_tensor(x, device=dev), torch.as_tensor(y, device=dev)) for x, y in e] for e in recorded]
    _, _, theirs = airbench_torch.train(torch, images[:n], labels[:n], dev, "fp32", epochs, r["batch_size"],
                                        widths_of(r, width), model=tmodel, batches=batches,
                                        h=unselected(torch_recipe(r)))
    tstate = tmodel.state_dict()
    worst, where = max((common.rel_err(common.host(p.data), tstate[name].detach().cpu().numpy()), name)
                       for name, p in model.named_parameters())
    loss_err = abs(ours - theirs) / abs(theirs)
    steps.add(f"{epochs} epochs on the same batches: last epoch's loss == PyTorch's", loss_err <= 1e-4, loss_err,
              1e-4, detail=f"gpuconv {ours!r}, PyTorch {theirs!r}")
    steps.add(f"{epochs} epochs on the same batches: parameters == PyTorch's", worst <= 1e-2, worst, 1e-2,
              detail=f"largest at {where}")


def table(rec):
    env = rec["environment"]
    print(f"{env['device']}  recipe {rec['recipe']['name']}: {rec['images']} synthetic images, {rec['epochs']} "
          f"epochs of batch {rec['batch_size']}, widths {rec['widths']}; seconds from upload to the last step "
          "(whitening included)")
    rows = []
    for prec, r in rec["results"].items():
        rows.append({"precision": prec, "s": r["gpuconv_s"], "torch_s": r["torch_s"], "ratio": r["speed_vs_torch"],
                     "graph_s": r.get("graph_s"), "gratio": r.get("graph_speed_vs_torch"),
                     "img_s": r["gpuconv_images_per_s"], "loss": r["gpuconv_loss"], "tloss": r["torch_loss"]})
    common.print_table(rows, [("precision", "precision", ""), ("s", "gpuconv s", ".2f"), ("img_s", "img/s", ".0f"),
                              ("graph_s", "graph s", ".2f"), ("torch_s", "torch s", ".2f"),
                              ("ratio", "vs torch", ".2f"), ("gratio", "graph vs torch", ".2f"),
                              ("loss", "loss", ".3f"), ("tloss", "torch loss", ".3f")])


def parser():
    p = common.add_arguments(argparse.ArgumentParser(description=common.description(__doc__)), warmup=1, repeat=1)
    p.add_argument("--images", type=int, default=None, help="synthetic images (default 50,000; --tiny: 40)")
    p.add_argument("--recipe", choices=RECIPES, default="airbench94")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's; --tiny: 2)")
    p.add_argument("--width", type=int, default=None,
                   help="first block's width, the others in the recipe's ratio (default: as published; --tiny: 2)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32 (TF32 off), bf16")
    return p


def main(argv=None):
    p = parser()
    args = common.parse(p, argv)
    rc = common.require_device(NAME, args)
    if rc is not None:
        return rc
    precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    bad = [s for s in precisions if s not in ("fp32", "bf16")]
    if bad:
        p.error(f"--precisions: {bad} not known; use fp32 and/or bf16")
    sizes = TINY if args.tiny else FULL
    n, width = args.images or sizes["images"], args.width or sizes["width"]
    r = recipe(args)
    images, labels = synthetic(n)
    torch = common.torch_module(args, cpu_ok=True)
    checks = common.Checks()
    steps = validate(images, labels, r, args, checks, torch, width)
    if torch is not None and not checks.passed:  # without torch there is nothing to validate against
        return common.failed_validation(NAME, checks, args)
    warm_n = min(n, 2 * r["batch_size"] + n % r["batch_size"])  # the full and the last partial batch shapes
    graph_n = min(n, max(warm_n, 4 * r["batch_size"]))
    graph_checks = validate_graph(images[:graph_n], labels[:graph_n], r, args, precisions, width)
    graph_ok = {c["name"].split(":")[0]: c["ok"] for c in graph_checks.as_dict()["checks"]}
    for c in steps.as_dict()["checks"] + graph_checks.as_dict()["checks"]:
        checks.add(c["name"], c["ok"], c.get("error"), c.get("tolerance"), detail=c.get("detail"))
    warm_r = dict(r, epochs=1)
    name = NAME if args.recipe == "airbench94" else f"{NAME}-{args.recipe}"  # its own record file
    results = {}
    for prec in precisions:
        res = {}
        for side, fn in (("gpuconv", run_gpuconv), ("graph", run_graph), ("torch", run_torch)):
            if side == "torch" and torch is None or side == "graph" and not graph_ok.get(prec):
                res.update({f"{side}_s": None, f"{side}_loss": None})
                continue
            for _ in range(args.warmup):
                fn(*((torch,) if side == "torch" else ()), images[:warm_n], labels[:warm_n], warm_r, prec, args, width)
            runs = [fn(*((torch,) if side == "torch" else ()), images, labels, r, prec, args, width)
                    for _ in range(args.repeat)]
            timed = args.device == "cuda"
            # as each side ends, not only in the table at the end: a run cut short keeps what it timed
            print(f"{name} {prec} {side}: " + (f"{min(s for s, _ in runs):.2f} s, " if timed else "")
                  + f"last epoch's loss {common.fmt(runs[-1][1], '.4f')}", file=sys.stderr, flush=True)
            res[f"{side}_runs_s"] = [s for s, _ in runs] if timed else None
            res[f"{side}_s"] = min(s for s, _ in runs) if timed else None
            res[f"{side}_loss"] = runs[-1][1]
            checks.add(f"{prec} {side}: final loss finite", bool(np.isfinite(runs[-1][1])), detail=f"{runs[-1][1]}")
        res["speed_vs_torch"] = common.ratio(res["torch_s"], res["gpuconv_s"])
        res["graph_speed_vs_torch"] = common.ratio(res["torch_s"], res["graph_s"])
        res["gpuconv_images_per_s"] = n * r["epochs"] / res["gpuconv_s"] if res["gpuconv_s"] else None
        results[prec] = res
    extra = {"baseline": ("benchmarks/airbench_torch.py, PyTorch " + torch.__version__) if torch is not None
             else None}
    if torch is not None and args.device == "cuda":
        extra["torch_fp32"] = common.torch_tf32_settings(torch)
    rec = common.record(name, args, checks, results, images=n, epochs=r["epochs"], batch_size=r["batch_size"],
                        width=width, widths=list(widths_of(r, width)),
                        recipe={k: v for k, v in r.items() if k != "model"}, **extra)
    return common.finish(rec, args, table, checks)


if __name__ == "__main__":
    sys.exit(main())
