"""Model-zoo training-step benchmark: images/s of one step (forward, softmax cross-entropy, backward,
SGD with momentum 0.9 and weight decay 5e-4, kuangliu's recipe) of the networks ``gpuconv train
--model`` offers, gpuconv against the same network in PyTorch eager (common.torch_mirror: the same
structure and weights), same batch, fp32 (TF32 off) and bf16 (gpuconv's mixed precision vs
torch.autocast with channels_last), on the GPU; on the CPU, gpuconv's NumPy path against PyTorch CPU
in fp32.

    python benchmarks/bench_models.py                               # GPU: the default models, batch 128
    python benchmarks/bench_models.py --models resnet18 densenet121 --precisions bf16 --save
    python benchmarks/bench_models.py --device cpu --batch 32 --models fast resnet18 --repeat 3
    python benchmarks/bench_models.py --device sim --tiny --models fast   # no GPU: validation only

Validation first, per model and precision: one step from the same weights (the optimizer not
applied) on ``--validate-batch`` images (8), against the mirror in float64 (PyTorch, on the
benchmark's device; without torch, gpuconv's own float64 NumPy path): the loss within 1e-3
relative (bf16: 3e-2) and the gradient as a whole (every parameter's, one vector) within 1e-2 in
the L2 norm (bf16: 5e-2), or no further from float64 than twice PyTorch's own step in that
precision is (without torch, the loss alone is checked in bf16, the error recorded). The worst
single parameter is recorded, not checked: at a batch of 8 a ReLU input within float32 rounding of
zero flips its mask, and batch norm's backward spreads that one flip over the layer (shufflenetv2
in fp32: one parameter 4% off float64, the whole gradient 0.4%); a low precision leaves the
gradients that nearly cancel (a bias before a batch norm's) no correct digit; the exact check of
the two networks' sameness is tests/test_torch_mirror.py's, in float64. A network that fails is
not timed; the others are, and the exit status is 1. Then ``--warmup`` + ``--repeat`` steps on
fresh weights at ``--batch``: on the GPU timed as bench_step's (common.cuda_time, the median of
five groups), on the CPU by the wall clock (the median step), on the simulator run but not timed.
``speed_vs_torch``: PyTorch's time / gpuconv's (above 1, gpuconv is faster). ``--tiny``: the
narrow versions of the networks (width 4 where the constructor has one), batch 2. With ``--save``
the record is written after each network (a run cut short keeps those it finished).
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402
import gpuconv  # noqa: E402
from gpuconv import amp, ops  # noqa: E402
from gpuconv.cli._models import AIRBENCH_MODELS, MODELS, WIDTH_MODELS, build_model  # noqa: E402
from gpuconv.optim import SGD  # noqa: E402

NAME = "bench_models"
HYPER = {"lr": 0.01, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4}  # kuangliu's main.py
DEFAULT_MODELS = ("resnet18", "resnet50", "mobilenetv2", "shufflenetv2", "efficientnetb0", "densenet121",
                  "simpledla", "pnasnetb", "vgg19", "airbench94", "fast")
# --tiny: the narrower versions the constructors offer (width 4 for the networks --width scales)
TINY_KWARGS = {"densenet121": {"growth_rate": 4}, "resnext29": {"cardinality": 2, "bottleneck_width": 4},
               "shufflenetv2": {"net_size": 0.5}}
# (loss, gradient) tolerances against float64, relative to each array's scale
TOLERANCE = {"fp32": (1e-3, 1e-2), "tf32": (1e-2, 2e-2), "bf16": (3e-2, 5e-2), "fp16": (1e-2, 3e-2)}


def factory(name, tiny, seed=0):
    """A function building the network ``name`` (the same weights at every call)."""
    width = 4 if tiny and (name in WIDTH_MODELS or name in AIRBENCH_MODELS) else None
    kwargs = TINY_KWARGS.get(name) if tiny else None
    return lambda: build_model(name, seed=seed, width=width, model_kwargs=kwargs)[0]


def batch_data(batch, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, batch).astype(np.int64)


class _NoUpdate:
    """An optimizer for amp.training_step that zeroes the gradients and applies none (validation)."""

    def __init__(self, model):
        self.model, self.params = model, model.parameters()

    def zero_grad(self):
        self.model.zero_grad()

    def step(self, skip=None):
        pass


def _worst(grads, ref):
    """(largest error of ``grads`` against ``ref``, the parameter it is in): max |g - ref| over each
    parameter's scale, max |ref|, but at least 1e-3 of the largest gradient in the network (a
    gradient that is zero but for rounding, a batch norm's bias before another batch norm, has no
    scale of its own: relative to itself any precision's error is of order 1e9)."""
    ref = {n: np.asarray(common.host(ref[n]), np.float64) for n in grads}  # (a frozen parameter has none)
    floor = 1e-3 * max(float(np.max(np.abs(r))) if r.size else 0.0 for r in ref.values())

    def err(g, r):
        g = np.asarray(common.host(g), np.float64)
        if g.shape != r.shape:
            return float("inf")
        return float(np.max(np.abs(g - r))) / max(float(np.max(np.abs(r))), floor, 1e-30) if r.size else 0.0
    return max((err(g, ref[n]), n) for n, g in grads.items())


def _whole(grads, ref):
    """||grads - ref|| / ||ref||, every parameter's gradient one vector (float64)."""
    diff = total = 0.0
    for n, g in grads.items():
        g, r = (np.asarray(common.host(a), np.float64) for a in (g, ref[n]))
        diff, total = diff + float(np.sum((g - r) ** 2)), total + float(np.sum(r ** 2))
    return float(np.sqrt(diff / max(total, 1e-300)))


def _grad_error(grads, ref):
    """(the whole gradient's L2 error, the worst parameter's error and name: reported, not checked)."""
    worst = _worst(grads, ref)
    return _whole(grads, ref), f"worst parameter {worst[1]}: {worst[0]:.3g}"


def _torch_grads(torch, tm, x, y, tdev, precision):
    """Loss and {name: gradient} of one step of the torch module ``tm`` in ``precision`` (autocast)."""
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    tx, ty = torch.from_numpy(x).to(tdev), torch.from_numpy(y).to(tdev)
    if low is not None and tdev == "cuda":
        tm, tx = tm.to(memory_format=torch.channels_last), tx.contiguous(memory_format=torch.channels_last)
    tm.zero_grad(set_to_none=True)
    with torch.autocast(tdev, dtype=low or torch.float32, enabled=low is not None):
        loss = torch.nn.functional.cross_entropy(tm(tx.to(next(tm.parameters()).dtype)), ty)
    loss.backward()
    return loss.item(), {n: p.grad.detach().to(torch.float64).cpu().numpy() for n, p in tm.named_parameters()
                         if p.grad is not None}


def validate(name, make, precision, args, checks, torch):
    """One step in ``precision`` from the same weights against float64 (see the module's docstring)."""
    x, y = batch_data(args.validate_batch, seed=1)
    tdev = "cuda" if args.device == "cuda" else "cpu"
    model = make()
    loss = amp.training_step(model, _NoUpdate(model), common.to_dev(x, args), common.to_dev(y, args), precision)[0]
    ours = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    loss_tol, grad_tol = TOLERANCE[precision]
    detail = None
    if torch is not None:  # the float64 reference: the mirror in float64 on the benchmark's device
        ref = common.torch_mirror(torch, make(), same_dropout=True).double().to(tdev)
        ref_loss, ref_grads = _torch_grads(torch, ref, x.astype(np.float64), y, tdev, "fp32")
        theirs_model = common.torch_mirror(torch, make(), same_dropout=True).to(tdev)
        t_loss, t_grads = _torch_grads(torch, theirs_model, x, y, tdev, precision)
        missing = sorted(set(ours) - set(t_grads))
        if missing:
            checks.add(f"{name} {precision}: the torch mirror has every parameter", False, detail=f"missing {missing}")
            return
        theirs = _grad_error({n: t_grads[n] for n in ours}, ref_grads)
        grad_tol = max(grad_tol, 2 * theirs[0])
        loss_tol = max(loss_tol, 2 * common.rel_err(t_loss, ref_loss))
        detail = f"PyTorch {precision} vs float64: loss {common.rel_err(t_loss, ref_loss):.3g}, " \
                 f"gradients {theirs[0]:.3g} ({theirs[1]})"
    else:  # gpuconv's own float64 NumPy path
        with gpuconv.default_device("cpu"):
            ref_model = make().astype(np.float64)
            ref_loss, dlogits = ops.softmax_cross_entropy(ref_model(x.astype(np.float64)), y)
            ref_model.backward(dlogits)
            ref_grads = {n: p.grad for n, p in ref_model.named_parameters()}
    err = _grad_error(ours, ref_grads)
    if torch is None and precision != "fp32":  # nothing says how far this precision's gradients may be
        checks.add(f"{name} {precision}: loss vs float64", common.rel_err(loss, ref_loss) <= loss_tol,
                   common.rel_err(loss, ref_loss), loss_tol,
                   detail=f"gradients not checked without PyTorch's {precision} step to measure the precision by: "
                          f"{err[0]:.3g} from float64 in L2 ({err[1]})")
        return
    checks.add(f"{name} {precision}: loss vs float64", common.rel_err(loss, ref_loss) <= loss_tol,
               common.rel_err(loss, ref_loss), loss_tol)
    checks.add(f"{name} {precision}: gradients vs float64 (L2 over every parameter)", err[0] <= grad_tol, err[0],
               grad_tol, detail=f"{err[1]}" + (f"; {detail}" if detail else ""))


def wall_ms(step, args):
    """Milliseconds per step on the CPU: the median of ``args.repeat`` steps after ``args.warmup``."""
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def steps_ms(step, args):
    if args.device == "cuda":
        return common.cuda_time(step, args.warmup, args.repeat)
    if args.device == "cpu":
        return wall_ms(step, args)
    return common.timed(step, args)  # the simulator: the steps run, no time


def run_gpuconv(make, x, y, args, precision):
    model = make()
    opt = SGD(model.parameters(), **HYPER)
    xd, yd = common.to_dev(x, args), common.to_dev(y, args)
    if amp.channels_last_for(precision) and args.device != "cpu":  # as the trainer's loader delivers them
        xd = gpuconv.to_channels_last(xd)
    last = {}

    def step():
        last["loss"] = amp.training_step(model, opt, xd, yd, precision)[0]
    ms = steps_ms(step, args)
    return ms, gpuconv.item(last["loss"])


def run_torch(torch, make, x, y, args, precision):
    """The same step in PyTorch eager, as its users run each precision (bench_step's run_torch)."""
    tdev = "cuda" if args.device == "cuda" else "cpu"
    tm = common.torch_mirror(torch, make()).to(tdev)
    tx, ty = torch.from_numpy(x).to(tdev), torch.from_numpy(y).to(tdev)
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if low is not None and tdev == "cuda":
        tm, tx = tm.to(memory_format=torch.channels_last), tx.contiguous(memory_format=torch.channels_last)
    topt = torch.optim.SGD(tm.parameters(), **HYPER)
    last = {}

    def step():
        topt.zero_grad(set_to_none=True)
        with torch.autocast(tdev, dtype=low or torch.float32, enabled=low is not None):
            loss = torch.nn.functional.cross_entropy(tm(tx), ty)
        loss.backward()
        topt.step()
        last["loss"] = loss
    if tdev == "cuda":
        with common.torch_tf32(torch, precision == "tf32"):
            ms = common.cuda_time(step, args.warmup, args.repeat)
    else:
        ms = wall_ms(step, args)
    return ms, float(last["loss"].item())


def table(rec):
    env = rec["environment"]
    print(f"{env['device']}  training step (SGD momentum 0.9, weight decay 5e-4) of the model zoo, gpuconv vs "
          "PyTorch eager (the same network and weights); bf16: gpuconv mixed precision vs torch.autocast + channels_last")
    common.print_table(rec["results"], [
        ("model", "model", ""), ("precision", "precision", ""), ("batch", "batch", "d"),
        ("parameters", "params", "d"), ("ms", "ms/step", ".2f"), ("images_per_s", "img/s", ".0f"),
        ("torch_ms", "torch ms", ".2f"), ("torch_images_per_s", "torch img/s", ".0f"),
        ("speed_vs_torch", "vs torch", ".2f"), ("validated", "validated", "")])
    print("vs torch = PyTorch's time / gpuconv's (above 1: gpuconv is faster)")


def main(argv=None):
    p = common.add_arguments(argparse.ArgumentParser(description=common.description(__doc__)), warmup=5, repeat=20,
                             cpu=True)
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(DEFAULT_MODELS), metavar="MODEL",
                   help=f"networks of `gpuconv train --model` (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--batch", type=int, default=None, help="images per timed step (default 128; --tiny: 2)")
    p.add_argument("--validate-batch", type=int, default=None,
                   help="images of the validation step (default 8)")
    p.add_argument("--precisions", nargs="+", choices=amp.PRECISIONS, default=None,
                   help="default fp32 bf16 on the GPU and the simulator, fp32 on the CPU (its only precision)")
    p.add_argument("--threads", type=int, default=None, help="PyTorch's CPU threads (--device cpu; default its own)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--tiny" in argv and not any(a.startswith(("--warmup", "--repeat")) for a in argv):
        argv += ["--warmup", "1", "--repeat", "1"]
    args = common.parse(p, argv)
    rc = common.require_device(NAME, args, "--device sim --tiny --models fast")
    if rc is not None:
        return rc
    args.batch = args.batch or (2 if args.tiny else 128)
    args.validate_batch = args.validate_batch or 8
    if args.batch < 2 or args.validate_batch < 2:
        p.error("--batch and --validate-batch must be >= 2 (batch norm needs two samples)")
    precisions = args.precisions or (["fp32"] if args.device == "cpu" else ["fp32", "bf16"])
    if args.device == "cpu" and precisions != ["fp32"]:
        p.error("--device cpu runs gpuconv's NumPy path, in fp32 only: drop --precisions or give fp32")
    torch = common.torch_module(args, cpu_ok=args.device == "cpu")  # the timed comparison
    vtorch = common.torch_module(args, cpu_ok=True)  # the float64 reference (a CPU torch on the simulator)
    for t in {id(t): t for t in (torch, vtorch) if t is not None}.values():
        if args.threads and args.device != "cuda":
            t.set_num_threads(args.threads)
    checks = common.Checks()
    rows = []
    rec = common.record(NAME, args, checks, rows, hyperparameters=HYPER, validate_batch=args.validate_batch,
                        torch_version=None if vtorch is None else vtorch.__version__,
                        torch_threads=None if torch is None or args.device == "cuda" else torch.get_num_threads(),
                        complete=False)
    rec["timed"] = args.device in ("cuda", "cpu")  # the CPU by the wall clock
    x, y = batch_data(args.batch, seed=2)
    with common.device_context(args):
        for name in args.models:  # each model validated, then timed; the record saved after each
            make = factory(name, args.tiny)
            first = len(checks.items)
            for precision in precisions:
                validate(name, make, precision, args, checks, vtorch)
            if not all(c["ok"] for c in checks.items[first:]):  # not timed; the others still are
                rows.extend({"model": name, "precision": precision, "batch": args.batch, "validated": False}
                            for precision in precisions)
                print(f"{name}: validation failed; not timed", file=sys.stderr)
                continue
            params = int(sum(q.data.size for q in make().parameters()))
            for precision in precisions:
                ms, loss = run_gpuconv(make, x, y, args, precision)
                t_ms, t_loss = run_torch(torch, make, x, y, args, precision) if torch is not None else (None, None)
                checks.add(f"{name} {precision}: loss finite after {args.warmup + args.repeat} steps",
                           np.isfinite(loss), detail=f"loss {loss}")
                rows.append({"model": name, "precision": precision, "batch": args.batch, "validated": True,
                             "parameters": params, "ms": ms, "images_per_s": args.batch * 1000 / ms if ms else None,
                             "torch_ms": t_ms, "torch_images_per_s": args.batch * 1000 / t_ms if t_ms else None,
                             "speed_vs_torch": common.ratio(t_ms, ms), "final_loss": loss, "torch_final_loss": t_loss})
            if args.save and name != args.models[-1]:  # a run cut short keeps the models it finished
                rec["validation"] = checks.as_dict()
                common.save_record(rec, NAME)
    rec["validation"], rec["complete"] = checks.as_dict(), True
    return common.finish(rec, args, table, checks)  # exit 1 when a check failed; the record stands


if __name__ == "__main__":
    sys.exit(main())
