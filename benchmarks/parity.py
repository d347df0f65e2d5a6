"""Accuracy parity: the same network, schedule, seed and batches trained with gpuconv on a device
and on the CPU reach the same accuracy within noise, and the device's loss curve tracks the CPU's.

    python benchmarks/parity.py --save                    # GPU vs CPU, three_layer, 8 epochs, seeds 0 1
    python benchmarks/parity.py --device sim --tiny       # the same checks on the host simulator, tiny
    python benchmarks/parity.py --device sim --model seed --epochs 4 --save   # simulator, all images

Each run is the user's own command, ``python -m gpuconv train`` (on real images: the CIFAR-10
subset in ``../shared/data/cifar10-subset`` unless ``--data`` or ``$GPUCONV_DATA`` says
otherwise), with ``--log-every 1`` so every step's loss is recorded. For every seed the device
run is compared with the CPU run:

- ``step 1 loss``: the same weights on the same batch; only float rounding differs (rtol 1e-4).
- ``steps 1-5 loss``: still the same trajectory before rounding differences grow (rtol 1e-3).
- ``epoch losses``: every epoch's mean training loss, device vs CPU, within the spread between
  CPU runs of different seeds (the noise of the recipe), or 2% of the loss when that is larger.
- ``accuracy``: final held-out accuracy, device vs CPU, within the noise: the larger of three
  binomial standard errors of the held-out set and the spread between CPU seeds.

The record (``--save``: ``benchmarks/results/<date>-<device>-parity.json``) holds every curve.
Exit status: 0 when every check passed, 1 when one failed, 2 when the device is not there.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import common  # noqa: F401  (puts the checkout on sys.path)
from common import B, Checks, REPO

NAME = "parity"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-subset"
FULL = dict(model="three_layer", epochs=8, batch_size=None, limit=None, val_split="auto")
TINY = dict(model="seed", epochs=2, batch_size=32, limit=96, val_split="0.02")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "sim"), default="cuda", help="the device compared with the CPU")
    p.add_argument("--tiny", action="store_true",
                   help=f"a quick run ({TINY}); --device sim needs it or an explicit --model")
    p.add_argument("--data", default=None, help=f"CIFAR-10 directory (default $GPUCONV_DATA, else {DEFAULT_DATA})")
    p.add_argument("--model", default=None, help=f"gpuconv train --model (default {FULL['model']})")
    p.add_argument("--epochs", type=int, default=None, help=f"default {FULL['epochs']}")
    p.add_argument("--limit", type=int, default=None, help="train on N images only (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="seeds to run on both devices (default 0 1; two or more give the noise)")
    p.add_argument("--json", action="store_true", help="print the record as JSON instead of the table")
    p.add_argument("--save", action="store_true", help="write the record under benchmarks/results/")
    p.add_argument("--keep", default=None, help="keep each run's output directory under this folder")
    return p


def settings(args):
    s = dict(TINY if args.tiny else FULL)
    for key in ("model", "epochs", "limit"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    return s


def data_dir(args) -> pathlib.Path:
    path = pathlib.Path(args.data or os.environ.get("GPUCONV_DATA") or DEFAULT_DATA)
    if not path.exists():
        raise SystemExit(f"{NAME}: no CIFAR-10 data at {path}: pass --data DIR (a cifar-10-batches-py "
                         "directory or its parent) or set GPUCONV_DATA")
    return path


def train(device, seed, s, data, out):
    """One ``gpuconv train`` run; its per-step losses, per-epoch records and final accuracy."""
    cmd = [sys.executable, "-m", "gpuconv", "train", "--device", device, "--data", str(data), "--out", str(out),
           "--model", s["model"], "--epochs", str(s["epochs"]), "--seed", str(seed), "--val-split", s["val_split"],
           "--log-every", "1", "--no-progress"]
    for key in ("batch_size", "limit"):
        if s[key] is not None:
            cmd += ["--" + key.replace("_", "-"), str(s[key])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [json.loads(x) for x in (pathlib.Path(out) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r.get("kind") == "interval"]
    epochs = [r for r in lines if r.get("kind") == "epoch"]
    accuracy = next(float(x.split()[-1]) for x in proc.stdout.splitlines() if x.startswith("accuracy "))
    n_val = epochs[-1].get("val_n") if epochs else None
    return {"device": device, "seed": seed, "seconds": round(seconds, 2), "accuracy": accuracy, "n_val": n_val,
            "step_loss": [r["train_loss"] for r in steps], "epoch_loss": [r["train_loss"] for r in epochs],
            "epoch_val_acc": [r.get("val_acc") for r in epochs]}


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def compare(runs, device, checks: Checks):
    """Checks per seed; returns the noise figures used."""
    cpu = {r["seed"]: r for r in runs if r["device"] == "cpu"}
    dev = {r["seed"]: r for r in runs if r["device"] == device}
    accs = [r["accuracy"] for r in cpu.values()]
    n_val = next(iter(cpu.values()))["n_val"] or 1
    p = sum(accs) / len(accs)
    se = math.sqrt(max(p * (1 - p), 1e-6) / n_val)
    seed_spread_acc = max(accs) - min(accs) if len(accs) > 1 else None
    acc_tol = max(3 * se, seed_spread_acc or 0.0)
    epoch_spread = ([max(c["epoch_loss"][e] for c in cpu.values()) - min(c["epoch_loss"][e] for c in cpu.values())
                     for e in range(len(next(iter(cpu.values()))["epoch_loss"]))] if len(cpu) > 1 else None)
    for seed in sorted(cpu):
        c, d = cpu[seed], dev[seed]
        checks.add(f"seed {seed}: same number of steps", len(c["step_loss"]) == len(d["step_loss"]) > 0,
                   detail=f"cpu {len(c['step_loss'])}, {device} {len(d['step_loss'])}")
        if not c["step_loss"] or not d["step_loss"]:
            continue
        checks.close(f"seed {seed}: step 1 loss", d["step_loss"][0], c["step_loss"][0], 1e-4)
        first = max(rel(x, y) for x, y in zip(d["step_loss"][:5], c["step_loss"][:5]))
        checks.add(f"seed {seed}: steps 1-5 loss", first <= 1e-3, first, 1e-3)
        worst, worst_tol = 0.0, None
        ok = True
        for e, (x, y) in enumerate(zip(d["epoch_loss"], c["epoch_loss"])):
            tol = max(epoch_spread[e] if epoch_spread else 0.0, 0.02 * abs(y))
            ok &= abs(x - y) <= tol
            if worst_tol is None or abs(x - y) / tol > worst / worst_tol:
                worst, worst_tol = abs(x - y), tol
        checks.add(f"seed {seed}: epoch losses", ok, worst, worst_tol)
        checks.add(f"seed {seed}: held-out accuracy", abs(d["accuracy"] - c["accuracy"]) <= acc_tol,
                   abs(d["accuracy"] - c["accuracy"]), acc_tol)
    return {"n_val": n_val, "binomial_se": se, "seed_spread_accuracy": seed_spread_acc,
            "accuracy_tolerance": acc_tol, "seed_spread_epoch_loss": epoch_spread}


def table(rec):
    s = rec["settings"]
    print(f"parity: {s['model']}, {s['epochs']} epochs, CPU vs {rec['environment']['device']} "
          f"({rec['noise']['n_val']} held-out images)")
    print(f"{'seed':>4} {'device':>8} {'accuracy':>9} {'final loss':>11} {'seconds':>8}")
    for r in rec["runs"]:
        loss = r["epoch_loss"][-1] if r["epoch_loss"] else float("nan")
        print(f"{r['seed']:>4} {r['device']:>8} {r['accuracy']:>9.4f} {loss:>11.4f} {r['seconds']:>8.1f}")
    n = rec["noise"]
    print(f"noise: 3 binomial SE = {3 * n['binomial_se']:.4f}, CPU seed spread = {n['seed_spread_accuracy']}; "
          f"accuracy tolerance {n['accuracy_tolerance']:.4f}")
    for c in rec["validation"]["checks"]:
        err = "" if c["error"] is None else f"  {c['error']:.3g} (tolerance {c['tolerance']:.3g})"
        print(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['name']}{err}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "sim" and not args.tiny and args.model is None:
        parser.error("--device sim trains on the host simulator, tens to hundreds of images/s: add --tiny, "
                     "or name a small model (--model seed) and --epochs/--limit to size the run")
    if (rc := common.require_device(NAME, argparse.Namespace(device=args.device))) is not None:
        return rc
    s = settings(args)
    data = data_dir(args)
    runs = []
    with tempfile.TemporaryDirectory(prefix="gpuconv-parity-") as tmp:
        root = pathlib.Path(args.keep) if args.keep else pathlib.Path(tmp)
        for seed in args.seeds:
            for device in ("cpu", args.device):
                runs.append(train(device, seed, s, data, root / f"{device}-seed{seed}"))
                print(f"{NAME}: {device} seed {seed}: accuracy {runs[-1]['accuracy']:.4f} "
                      f"in {runs[-1]['seconds']:.1f}s", file=sys.stderr)
    checks = Checks()
    noise = compare(runs, args.device, checks)
    rec = {"benchmark": NAME, "environment": common.environment(args.device, use_torch=False), "tiny": bool(args.tiny),
           "timed": False, "settings": {**s, "seeds": args.seeds, "data": str(data)},
           "validation": checks.as_dict(), "noise": noise, "runs": runs}
    if args.json:
        print(json.dumps(rec, indent=2, default=common._json_default))
    else:
        table(rec)
    if args.save:
        print(f"wrote {common.save_record(rec, NAME)}", file=sys.stderr)
    if not checks.passed:
        print(f"{NAME}: the device does not match the CPU:\n  " + "\n  ".join(checks.failures()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
