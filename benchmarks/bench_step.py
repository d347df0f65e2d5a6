"""Training-step benchmark: images/s of one full step (forward, softmax cross-entropy, backward,
SGD with Nesterov momentum and weight decay) of fast_net and three_layer_convnet, gpuconv against
the identical PyTorch network and optimizer (eager), same batch size, fp32 with TF32 off.

    python benchmarks/bench_step.py                   # GPU: batch 512, 10 warm-up + 40 timed steps
    python benchmarks/bench_step.py --json --save
    python benchmarks/bench_step.py --device sim --tiny  # no GPU: validation on the host simulator

Validation first: one step from the same weights against a float64 NumPy copy of the model
(loss and every gradient within 1e-3 relative, every parameter after the SGD update within 1e-5)
and, when torch runs, against the PyTorch mirror (loss and gradients within 1e-3: float32 through
batch norm). Then ``--warmup + --repeat`` steps run on fresh weights; the last ``--repeat`` are
timed as PyTorch's are (common.cuda_time: five groups between CUDA events, the median group).
Along the way two device-residency checks, both required to pass:
``gpuconv.backend.transfers`` stays at zero host transfers in either direction during the steps,
CuPy's memory pool does not grow between step 3 and the last step (``used_bytes`` and
``total_bytes``: buffers are reused, not reallocated), and two more steps run under
``gpuconv.syncguard.no_sync``, which fails if the host waits for the GPU at all (``float()``,
``.item()``, ``bool()``, CuPy's own readbacks: syncs the transfer count cannot see). Then the
same step replayed as a CUDA graph (gpuconv.graphs, what ``gpuconv train --cuda-graph`` runs), not
for fp16: its parameters after the warm-up steps checked bit for bit against eager steps from the
same weights, then timed (``graph_ms``). The target: fast_net >= 1.0x PyTorch.
"""
from __future__ import annotations

import argparse
import functools
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402
import gpuconv  # noqa: E402
from gpuconv import backend as B  # noqa: E402
from gpuconv import amp, models, ops, syncguard  # noqa: E402
from gpuconv.optim import SGD  # noqa: E402

NAME = "bench_step"
GUARDED_STEPS = 2  # after the timed ones, under syncguard.no_sync (which holds the stream meanwhile)
HYPER = {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
# name -> (factory, input (C, H, W)), full size and --tiny
MODELS = {
    "fast_net": ((lambda: models.fast_net(width=64), (3, 32, 32)),
                 (lambda: models.fast_net(width=2), (3, 32, 32))),
    "three_layer_convnet": ((lambda: models.three_layer_convnet(), (3, 32, 32)),
                            (lambda: models.three_layer_convnet(num_filters=4, hidden_dim=8, input_dim=(3, 16, 16)),
                             (3, 16, 16))),
}
POOL_CHECK_STEP = 3


def batch_data(shape, batch, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *shape)).astype(np.float32), rng.integers(0, 10, batch).astype(np.int64)


def make_step(model, opt, precision="fp32"):
    """``step(x, y)``: one training step in ``precision`` (gpuconv.amp.training_step, the trainer's
    own step); returns the loss (a 0-d device array: nothing is read back)."""
    scaler = amp.LossScaler() if precision == "fp16" else None

    def step(x, y):
        return amp.training_step(model, opt, x, y, precision, scaler)[0]
    return step


def torch_mirror(torch, model, device="cuda"):
    """The identical torch.nn network with the same weights on ``device`` (common.torch_mirror)."""
    return common.torch_mirror(torch, model).to(device)


def validate_step(name, factory, x, y, args, checks, torch=None):
    """One step on the benchmark's device against float64 NumPy and, with ``torch``, the torch
    mirror (on the GPU; on the simulator a CPU torch, as a second reference).

    Gradients: within 1e-3 of float64 NumPy (relative to each array's scale), or, where float32
    itself is worse off than that (batch norm's cancellations and max pooling's near-ties grow
    with width and depth), no further from it than twice PyTorch's float32 gradients are. The
    SGD step is checked on its own: the parameters after it against float64 SGD applied to this
    device's own gradients."""
    model = factory()
    with gpuconv.default_device("cpu"):
        ref, stepped = factory().astype(np.float64), factory().astype(np.float64)
    ref.load_state_dict(model.state_dict())
    stepped.load_state_dict(model.state_dict())
    tdev = "cuda" if args.device == "cuda" else "cpu"
    tm = torch_mirror(torch, model, tdev) if torch is not None else None
    xd, yd = common.to_dev(x, args), common.to_dev(y, args)
    opt = SGD(model.parameters(), **HYPER)
    loss = make_step(model, opt)(xd, yd)
    with gpuconv.default_device("cpu"):  # the NumPy reference path, never the kernels (even on 'sim')
        ref_loss, dref = ops.softmax_cross_entropy(ref(x.astype(np.float64)), y)
        ref.backward(dref)
    checks.close(f"{name} loss vs float64 NumPy", loss, ref_loss, 1e-3)
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}

    def worst(grads):  # (largest error against the float64 gradients, the parameter it is in)
        return max((common.rel_err(g, ref_grads[n]), n) for n, g in grads.items())

    ours = worst({n: p.grad for n, p in model.named_parameters()})
    tol, detail = 1e-3, None
    if tm is not None:
        tx, ty = torch.from_numpy(x).to(tdev), torch.from_numpy(y).to(tdev)
        tloss = torch.nn.functional.cross_entropy(tm(tx), ty)
        tloss.backward()
        checks.close(f"{name} loss vs PyTorch", loss, tloss.item(), 1e-3)
        tgrads = {n: p.grad.detach().cpu().numpy() for n, p in tm.named_parameters()}
        missing = sorted(set(ref_grads) - set(tgrads))
        if missing:
            checks.add(f"{name} parameter names match the torch mirror", False, detail=f"missing {missing}")
        else:
            theirs = worst(tgrads)
            between = max((common.rel_err(p.grad, tgrads[n]), n) for n, p in model.named_parameters())
            tol = max(tol, 2 * theirs[0])
            detail = (f"PyTorch float32 vs float64: {theirs[0]:.3g} ({theirs[1]}); gpuconv vs PyTorch: "
                      f"{between[0]:.3g} ({between[1]})")
    checks.add(f"{name} gradients vs float64 NumPy (worst: {ours[1]})", ours[0] <= tol, ours[0], tol, detail=detail)
    with gpuconv.default_device("cpu"):  # float64 SGD on this device's gradients
        for (n, p), (_, q) in zip(model.named_parameters(), stepped.named_parameters()):
            q.grad = np.asarray(common.host(p.grad), np.float64)
        SGD(stepped.parameters(), **HYPER).step()
    want = dict(stepped.named_parameters())
    err = max((common.rel_err(p.data, want[n].data), n) for n, p in model.named_parameters())
    checks.add(f"{name} parameters after the SGD step (worst: {err[1]})", err[0] <= 1e-5, err[0], 1e-5)


def pool_usage(args):
    if args.device != "cuda":
        return None
    pool = B.cupy_module().get_default_memory_pool()
    return {"used_bytes": int(pool.used_bytes()), "total_bytes": int(pool.total_bytes())}


def guarded_steps(step, n):
    """Run ``n`` more steps, each under its own :func:`gpuconv.syncguard.no_sync` (a guard holds
    the stream, and the launches queued behind it must fit the device's launch queue); None when
    none of them made the host wait for the device, else the guard's message (where it waited)."""
    try:
        for i in range(n):
            with syncguard.no_sync(f"training step {i + 1} of {n} guarded"):
                step()
    except syncguard.DeviceSynchronized as exc:
        return str(exc)
    return None


def validate_precision(name, factory, x, y, precision, args, checks):
    """One step in ``precision`` against the float64 NumPy loss: the low-precision path computes
    the same loss to its format's precision (the kernels' own tests are exact to the rule)."""
    model = factory()
    with gpuconv.default_device("cpu"):
        ref = factory().astype(np.float64)
        ref.load_state_dict(model.state_dict())
        ref_loss, _ = ops.softmax_cross_entropy(ref(x.astype(np.float64)), y)
    loss = make_step(model, SGD(model.parameters(), **HYPER), precision)(common.to_dev(x, args), common.to_dev(y, args))
    checks.close(f"{name} {precision} loss vs float64 NumPy", loss, ref_loss, 3e-2)


def steps_ms(step, args):
    """Milliseconds per step of ``args.repeat`` more steps: on a GPU the statistic PyTorch's side
    is timed with (common.cuda_time: the median of five groups, so a host stall stays in one
    group, not in the ratio); None on the simulator, where the steps still run."""
    if args.device == "cuda":
        return common.cuda_time(step, 0, args.repeat)
    for _ in range(args.repeat):
        step()
    return None


def run_gpuconv(factory, x, y, args, precision="fp32"):
    """Warm-up + timed steps on fresh weights; the residency checks along the way."""
    model = factory()
    xd, yd = common.to_dev(x, args), common.to_dev(y, args)
    if amp.channels_last_for(precision):  # as the trainer's loader delivers batches in this precision
        xd = gpuconv.to_channels_last(xd)
    step = functools.partial(make_step(model, SGD(model.parameters(), **HYPER), precision), xd, yd)
    total = args.warmup + args.repeat
    B.transfers.reset()
    run = {"steps": 0, "loss": None, "at_check": None}

    def counted():
        run["loss"] = step()
        run["steps"] += 1
        if run["steps"] == POOL_CHECK_STEP:
            run["at_check"] = pool_usage(args)
    for _ in range(args.warmup):
        counted()
    ms = steps_ms(counted, args)
    loss, at_check = run["loss"], run["at_check"]
    transfers = {"device_to_host": B.transfers.device_to_host, "host_to_device": B.transfers.host_to_device}
    synced = guarded_steps(step, GUARDED_STEPS)
    at_end = pool_usage(args)
    final_loss = gpuconv.item(loss)  # the one readback, after the counted steps
    stable = None
    if at_check is not None and at_end is not None:
        stable = at_end["used_bytes"] <= at_check["used_bytes"] and at_end["total_bytes"] <= at_check["total_bytes"]
    return {"ms": ms, "steps": total, "transfers": transfers,
            "sync_in_step": synced, "pool_at_step3": at_check, "pool_at_end": at_end, "pool_stable": stable, "final_loss": final_loss}


def run_graph(factory, x, y, args, precision, checks, name):
    """The same step replayed as a CUDA graph (gpuconv.graphs.StepGraph, the trainer's
    ``cuda_graph=True``): checked first against eager steps from the same weights (parameters
    after ``args.warmup`` steps, bit for bit), then timed; None where the check fails or raises."""
    from gpuconv.graphs import StepGraph  # noqa: PLC0415
    xd, yd = common.to_dev(x, args), common.to_dev(y, args)
    if amp.channels_last_for(precision):
        xd = gpuconv.to_channels_last(xd)
    steps = max(args.warmup, 3)  # eager, capture, and at least one replay

    def build(graph):
        model = factory()
        opt = SGD(model.parameters(), **HYPER)
        if not graph:
            return model, functools.partial(make_step(model, opt, precision), xd, yd)
        g = StepGraph.for_optimizer(lambda a, b: amp.training_step(model, opt, a, b, precision)[0], opt)
        return model, functools.partial(g, xd, yd)

    label = f"{name}: cuda-graph steps give the eager steps' parameters ({steps} steps, bit for bit)"
    try:
        (eager, estep), (graphed, gstep) = build(False), build(True)
        for _ in range(steps):
            estep()
            gstep()
        worst = max(float(np.max(np.abs(common.host(p.data).astype(np.float64) - common.host(q.data))))
                    for p, q in zip(eager.parameters(), graphed.parameters()))
    except Exception as exc:  # noqa: BLE001 - a GPU-only failure of the capture, named in the record
        checks.add(label, False, detail=f"{type(exc).__name__}: {exc}"[:500])
        return None
    checks.add(label, worst == 0.0, worst, 0.0)
    if worst != 0.0 or args.device != "cuda":
        return None
    return steps_ms(gstep, args)


def run_torch(torch, factory, x, y, args, precision="fp32"):
    """The same step in PyTorch eager, as its users run each precision: fp32 with TF32 off; tf32
    with TF32 on; bf16/fp16 under torch.autocast with channels_last (fp16 with a GradScaler)."""
    tm = torch_mirror(torch, factory())
    tx, ty = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if low is not None:
        tm, tx = tm.to(memory_format=torch.channels_last), tx.contiguous(memory_format=torch.channels_last)
    topt = torch.optim.SGD(tm.parameters(), lr=HYPER["lr"], momentum=HYPER["momentum"], nesterov=HYPER["nesterov"],
                           weight_decay=HYPER["weight_decay"])
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def step():
        topt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=low or torch.float32, enabled=low is not None):
            loss = torch.nn.functional.cross_entropy(tm(tx), ty)
        if scaler is None:
            loss.backward()
            topt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(topt)
            scaler.update()
    with common.torch_tf32(torch, precision == "tf32"):
        return common.cuda_time(step, args.warmup, args.repeat)


def table(rec):
    env = rec["environment"]
    print(f"{env['device']}  training step, SGD nesterov momentum 0.9, weight decay 5e-4; fp32 with TF32 off, "
          "bf16/fp16: gpuconv mixed precision vs torch.autocast + channels_last")
    common.print_table(rec["results"], [
        ("model", "model", ""), ("precision", "precision", ""), ("batch", "batch", "d"), ("ms", "ms/step", ".2f"), ("images_per_s", "img/s", ".0f"),
        ("torch_ms", "torch ms", ".2f"), ("torch_images_per_s", "torch img/s", ".0f"),
        ("speed_vs_torch", "vs torch", ".2f"), ("graph_ms", "graph ms", ".2f"),
        ("graph_speed_vs_torch", "graph vs torch", ".2f"), ("pool_stable", "pool stable", ""),
        ("host_transfers", "transfers", "d")])


def main(argv=None):
    p = common.add_arguments(argparse.ArgumentParser(description=common.description(__doc__)), warmup=10, repeat=40)
    p.add_argument("--batch", type=int, default=None, help="images per step (default 512; --tiny: 4)")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    p.add_argument("--precisions", nargs="+", choices=amp.PRECISIONS, default=["fp32", "bf16"],
                   help="training precisions to time (default fp32 bf16; PyTorch runs each as its users do)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--tiny" in argv and not any(a.startswith(("--warmup", "--repeat")) for a in argv):
        argv += ["--warmup", "3", "--repeat", "2"]  # 5 steps: the pool check at step 3, then 2 more
    args = common.parse(p, argv)
    rc = common.require_device(NAME, args)
    if rc is not None:
        return rc
    batch = args.batch or (4 if args.tiny else 512)
    checks = common.Checks()
    rows = []
    with common.device_context(args):
        torch = common.torch_module(args)
        vtorch = common.torch_module(args, cpu_ok=True)
        for name in args.models:
            factory, shape = MODELS[name][1 if args.tiny else 0]
            x, y = batch_data(shape, batch if args.device == "sim" else min(batch, 16), seed=1)
            validate_step(name, factory, x, y, args, checks, vtorch)
            for precision in args.precisions:
                if precision != "fp32":
                    validate_precision(name, factory, x, y, precision, args, checks)
        if not checks.passed:
            return common.failed_validation(NAME, checks, args)
        for name, precision in ((n, p) for n in args.models for p in args.precisions):
            factory, shape = MODELS[name][1 if args.tiny else 0]
            x, y = batch_data(shape, batch, seed=2)
            res = run_gpuconv(factory, x, y, args, precision)
            t_ms = run_torch(torch, factory, x, y, args, precision) if torch is not None else None
            g_ms = run_graph(factory, x, y, args, precision, checks, f"{name} {precision}") \
                if precision != "fp16" else None
            name_p, name = name, f"{name} {precision}"
            host_transfers = res["transfers"]["device_to_host"] + res["transfers"]["host_to_device"]
            checks.add(f"{name}: no host transfer during {res['steps']} steps", host_transfers == 0,
                       float(host_transfers), 0.0, detail=str(res["transfers"]))
            checks.add(f"{name}: no host-device synchronization in {GUARDED_STEPS} guarded steps",
                       res["sync_in_step"] is None, detail=res["sync_in_step"])
            if res["pool_stable"] is not None:
                checks.add(f"{name}: memory pool does not grow from step {POOL_CHECK_STEP} to step {res['steps']}",
                           res["pool_stable"], detail=f"{res['pool_at_step3']} -> {res['pool_at_end']}")
            checks.add(f"{name}: loss finite after {res['steps']} steps", np.isfinite(res["final_loss"]),
                       detail=f"loss {res['final_loss']}")
            rows.append({"model": name_p, "precision": precision, "batch": batch, **res, "host_transfers": host_transfers,
                         "images_per_s": batch * 1000 / res["ms"] if res["ms"] else None, "torch_ms": t_ms,
                         "torch_images_per_s": batch * 1000 / t_ms if t_ms else None,
                         "speed_vs_torch": common.ratio(t_ms, res["ms"]), "graph_ms": g_ms,
                         "graph_speed_vs_torch": common.ratio(t_ms, g_ms),
                         "target_vs_torch": 1.0 if name_p == "fast_net" else None})
    rec = common.record(NAME, args, checks, rows, hyperparameters=HYPER, pool_check_step=POOL_CHECK_STEP)
    return common.finish(rec, args, table, checks)  # the record stands when a check failed: exit 1


if __name__ == "__main__":
    sys.exit(main())
