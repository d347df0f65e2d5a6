"""End-to-end benchmark: seconds per epoch of fast_net on 50,000 synthetic CIFAR-shaped uint8
images, device-resident: DeviceLoader (shuffle, random crop with padding 4, flip, normalize on the
device: the fused kernel) feeding a full training step per batch.

    python benchmarks/bench_epoch.py                  # GPU: 50,000 images, batch 512, 1 timed epoch
    python benchmarks/bench_epoch.py --json --save
    python benchmarks/bench_epoch.py --device sim --tiny   # no GPU: validation on the host simulator

Validation first: the loader's first batch from the fused kernel equals, bit for bit, both the
array-module path on the same device (``fused=False``) and the NumPy reference pipeline
(``crop_flip`` + ``normalize`` on the host, fed the loader's own draws); one training step
matches a float64 NumPy copy of the model (bench_step's check). Then a few warm-up steps, and the
epoch is timed between CUDA events: loader and steps together, no host sync inside. Reported
beside it: the loader alone for one epoch (fused kernel vs the array path: what fusion buys), and
PyTorch training the identical network on the same device-resident batches (handed over with
DLPack, zero-copy), i.e. the same epoch with cuDNN doing the math.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_step  # noqa: E402
import common  # noqa: E402
import gpuconv  # noqa: E402
from gpuconv import backend as B  # noqa: E402
from gpuconv import models, syncguard  # noqa: E402
from gpuconv.data import DeviceLoader, crop_flip, normalize  # noqa: E402
from gpuconv.optim import SGD  # noqa: E402

NAME = "bench_epoch"
FULL = {"images": 50_000, "batch": 512, "width": 64}
TINY = {"images": 24, "batch": 8, "width": 2}


def synthetic(n, seed=0):
    """n uint8 CIFAR-shaped images and labels (timing does not care what they show)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def loader_for(images, labels, batch, args, **kw):
    return DeviceLoader(images, labels, batch, shuffle=True, augment=True, seed=0, device=args.device, **kw)


def validate(images, labels, batch, width, args, checks):
    fused = loader_for(images, labels, batch, args)
    plain = loader_for(images, labels, batch, args, fused=False)
    checks.add("loader runs the fused kernel", fused.kernel_target() == args.device,
               detail=f"kernel target {fused.kernel_target()!r}")
    xf, yf = next(iter(fused))
    xp_, yp = next(iter(plain))
    checks.exact("fused batch == array path batch (same device)", xf, xp_)
    checks.exact("fused labels == array path labels", yf, yp)
    order, oy, ox, flip = (common.host(a) for a in fused.epoch_plan(0))
    idx = order[:batch]
    want = normalize(crop_flip(images[idx], oy[:batch], ox[:batch], flip[:batch], fused.padding))
    checks.exact("fused batch == NumPy reference pipeline", xf, want)
    factory = lambda: models.fast_net(width=width)  # noqa: E731
    bench_step.validate_step("fast_net", factory, common.host(xf)[:16], labels[idx][:16], args, checks,
                             common.torch_module(args, cpu_ok=True))


def run_epoch(loader, step_fn, args):
    """One pass over ``loader``: ``step_fn(x, y)`` per batch; (ms or None, batches, last loss)."""
    loss, batches = None, 0
    with common.EventTimer(args) as t:
        for x, y in loader:
            loss = step_fn(x, y)
            batches += 1
    return t.ms, batches, loss


def guarded_batches(loader, step_fn, n):
    """The first ``n`` batches of a new epoch (its plan, the loader and the steps) under
    :func:`gpuconv.syncguard.no_sync`: None when the host never waited for the device, else where."""
    loader.set_epoch(98)
    batches = iter(loader)
    try:
        for i in range(n):  # one guard per batch: the launches queued behind a guard must fit the launch queue
            with syncguard.no_sync(f"batch {i + 1} of a new epoch (loader + training step)"):
                x, y = next(batches)
                step_fn(x, y)
    except syncguard.DeviceSynchronized as exc:
        return str(exc)
    return None


def torch_step(torch, tm):
    topt = torch.optim.SGD(tm.parameters(), **{k: v for k, v in bench_step.HYPER.items()})

    def step(x, y):
        topt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(tm(torch.from_dlpack(x)), torch.from_dlpack(y))
        loss.backward()
        topt.step()
        return loss
    return step


def warm(loader, step_fn, steps):
    """A few steps (kernel compiles, cuDNN autotuning, pool warm-up) outside the timed epoch."""
    loader.set_epoch(99)
    for i, (x, y) in enumerate(loader):
        if i >= steps:
            break
        step_fn(x, y)
    B.synchronize()


def table(rec):
    env = rec["environment"]
    r = rec["results"]
    print(f"{env['device']}  fast_net width {rec['width']}, {rec['images']} images, batch {rec['batch']}, "
          "augment on (crop pad 4 + flip), fp32 (TF32 off)")
    common.print_table([
        {"what": "epoch: loader + training steps", "s": r["epoch_s"], "torch_s": r["torch_epoch_s"],
         "ratio": r["speed_vs_torch"], "img_s": r["images_per_s"]},
        {"what": "loader alone, fused kernel", "s": r["loader_fused_s"], "img_s": r["loader_fused_images_per_s"]},
        {"what": "loader alone, array path", "s": r["loader_array_s"], "ratio_fusion": r["fusion_speedup"]},
    ], [("what", "", ""), ("s", "s/epoch", ".3f"), ("img_s", "img/s", ".0f"), ("torch_s", "torch s/epoch", ".3f"),
        ("ratio", "vs torch", ".2f"), ("ratio_fusion", "fused speedup", ".2f")])


def main(argv=None):
    p = common.add_arguments(argparse.ArgumentParser(description=common.description(__doc__)), warmup=5, repeat=1)
    p.add_argument("--images", type=int, default=None, help="synthetic images (default 50,000; --tiny: 24)")
    p.add_argument("--batch", type=int, default=None, help="images per batch (default 512; --tiny: 8)")
    p.add_argument("--width", type=int, default=None, help="fast_net width (default 64; --tiny: 2)")
    args = common.parse(p, argv)
    rc = common.require_device(NAME, args)
    if rc is not None:
        return rc
    sizes = TINY if args.tiny else FULL
    n, batch, width = args.images or sizes["images"], args.batch or sizes["batch"], args.width or sizes["width"]
    images, labels = synthetic(n)
    checks = common.Checks()
    with common.device_context(args):
        validate(images[: max(batch * 2, 32)], labels[: max(batch * 2, 32)], batch, width, args, checks)
        if not checks.passed:
            return common.failed_validation(NAME, checks, args)
        loader = loader_for(images, labels, batch, args)  # the one upload of the data set
        model = models.fast_net(width=width)
        step = bench_step.make_step(model, SGD(model.parameters(), **bench_step.HYPER))
        warm(loader, step, args.warmup)
        epoch_ms, loss = [], None
        B.transfers.reset()
        for e in range(args.repeat):
            loader.set_epoch(e)
            ms, batches, loss = run_epoch(loader, step, args)
            epoch_ms.append(ms)
        transfers = B.transfers.device_to_host + B.transfers.host_to_device
        synced = guarded_batches(loader, step, 3)
        final_loss = gpuconv.item(loss)
        checks.add(f"no host transfer during {args.repeat} epoch(s)", transfers == 0, float(transfers), 0.0)
        checks.add("no host-device synchronization in 3 guarded batches (loader + step)", synced is None,
                   detail=synced)
        checks.add("loss finite after the timed epoch(s)", np.isfinite(final_loss), detail=f"loss {final_loss}")

        loader_only = {}
        for label, kw in (("fused", {}), ("array", {"fused": False})):
            lo = loader_for(images, labels, batch, args, **kw) if kw else loader
            warm(lo, lambda x, y: None, 2)
            lo.set_epoch(0)
            loader_only[label] = run_epoch(lo, lambda x, y: None, args)[0]

        torch = common.torch_module(args)
        torch_ms = None
        if torch is not None:
            tm = bench_step.torch_mirror(torch, models.fast_net(width=width))
            tstep = torch_step(torch, tm)
            warm(loader, tstep, args.warmup)
            loader.set_epoch(0)
            torch_ms = run_epoch(loader, tstep, args)[0]

    sec = lambda ms: ms / 1000 if ms is not None else None  # noqa: E731
    epoch_s = sec(min(epoch_ms)) if epoch_ms[0] is not None else None
    results = {"epoch_s": epoch_s, "epochs_timed": args.repeat, "batches_per_epoch": batches,
               "images_per_s": n / epoch_s if epoch_s else None, "final_loss": final_loss,
               "host_transfers": transfers, "torch_epoch_s": sec(torch_ms),
               "speed_vs_torch": common.ratio(sec(torch_ms), epoch_s),
               "loader_fused_s": sec(loader_only["fused"]), "loader_array_s": sec(loader_only["array"]),
               "loader_fused_images_per_s": n / sec(loader_only["fused"]) if loader_only["fused"] else None,
               "fusion_speedup": common.ratio(loader_only["array"], loader_only["fused"])}
    rec = common.record(NAME, args, checks, results, images=n, batch=batch, width=width,
                        hyperparameters=bench_step.HYPER)
    return common.finish(rec, args, table, checks)  # the record stands when a check failed: exit 1


if __name__ == "__main__":
    sys.exit(main())
