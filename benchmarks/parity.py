"""Accuracy parity: the same network, schedule, seed and batches trained with gpuconv on a device
and on the CPU reach the same accuracy within noise, and the device's loss curve tracks the CPU's.

    python benchmarks/parity.py --save                    # GPU vs CPU, three_layer, 8 epochs, seeds 0 1
    python benchmarks/parity.py --device sim --tiny       # the same checks on the host simulator, tiny
    python benchmarks/parity.py --device sim --model seed --epochs 4 --save   # simulator, all images
    python benchmarks/parity.py --device cpu --precision bf16 --seeds 0 1 2 --save  # bf16 vs fp32 training
    python benchmarks/parity.py --device sim --tiny --model airbench94 --width 2   # the recipe's kernels
    python benchmarks/parity.py --device sim --tiny --recipe airbench94_muon --width 8   # Muon, NS on the kernels

``--precision`` trains the compared run in that precision (``gpuconv train --precision``) while
the CPU reference stays strict float32: the same checks then say that mixed-precision training
reaches the float32 accuracy within the seed spread (the first steps' tolerances widen with the
format's unit roundoff u: step 1 within max(1e-4, 8u), steps 1-5 within max(1e-3, 16u)).

Each run is the user's own command, ``python -m gpuconv train`` (on real images: the CIFAR-10
subset in ``../shared/data/cifar10-subset`` unless ``--data`` or ``$GPUCONV_DATA`` says
otherwise), with ``--log-every 1`` so every step's loss is recorded. For every seed the device
run is compared with the CPU run:

- ``step 1 loss``: the same weights on the same batch (the loader's shuffle and augmentation are
  counter-based, the same on every device); only float rounding differs (rtol 1e-4).
- ``steps 1-5 loss``: still the same trajectory before rounding differences grow (rtol 1e-3).
- ``epoch losses``: every epoch's mean training loss, device vs CPU. Training is chaotic:
  rounding-level differences grow to seed-level ones within a few hundred steps, so the bound is
  the noise of the recipe, 3x the CPU's seed-to-seed spread of the epoch losses (RMS over the
  epochs), and at least 5% of the loss.
- ``accuracy``: final held-out accuracy, device vs CPU, within 0.03 or twice the CPU's
  seed-to-seed spread, whichever is larger.

A run that fails (or the device run's absence) is a failed check, not a crash. The CPU and the
device run of a seed run side by side. The record (``--save``:
``benchmarks/results/<date>-<HHMM>-<device>-parity.json``, rewritten after every seed, so a run cut
off by a time limit keeps what it measured; ``complete`` says whether every run finished) holds
every curve. Exit status: 0 when every check passed, 1 when one failed, 2 when the device is
not there.
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
from concurrent.futures import ThreadPoolExecutor

import common  # noqa: F401  (puts the checkout on sys.path)
from common import Checks, REPO

NAME = "parity"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-subset"
FULL = dict(model="three_layer", epochs=8, batch_size=None, limit=None, val_split="auto", width=None)
TINY = dict(model="seed", epochs=2, batch_size=32, limit=96, val_split="0.02", width=None)


def build_parser():
    p = argparse.ArgumentParser(description=common.description(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "sim", "cpu"), default="cuda",
                   help="the device compared with the CPU (cpu: with --precision, the precision alone differs)")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16", "fp16"), default="fp32",
                   help="the compared run's training precision; the CPU reference is fp32 (default fp32)")
    p.add_argument("--tiny", action="store_true",
                   help=f"a quick run ({TINY}); --device sim needs it or an explicit --model")
    p.add_argument("--data", default=None, help=f"CIFAR-10 directory (default $GPUCONV_DATA, else {DEFAULT_DATA})")
    p.add_argument("--model", default=None, help=f"gpuconv train --model (default {FULL['model']})")
    p.add_argument("--recipe", default=None, help="gpuconv train --recipe (its network unless --model says)")
    p.add_argument("--epochs", type=int, default=None, help=f"default {FULL['epochs']}")
    p.add_argument("--limit", type=int, default=None, help="train on N images only (default: all)")
    p.add_argument("--width", type=int, default=None, help="gpuconv train --width (fast_net, airbench94)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="seeds to run on both devices (default 0 1; two or more give the noise)")
    p.add_argument("--json", action="store_true", help="print the record as JSON instead of the table")
    p.add_argument("--save", action="store_true", help="write the record under benchmarks/results/")
    p.add_argument("--keep", default=None, help="keep each run's output directory under this folder")
    return p


def settings(args):
    s = dict(TINY if args.tiny else FULL)
    for key in ("model", "epochs", "limit", "width"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    s["recipe"] = args.recipe
    if args.recipe and args.model is None:
        from gpuconv.recipes import get_recipe
        s["model"] = get_recipe(args.recipe)["model"]
    return s


def data_dir(args) -> pathlib.Path:
    path = pathlib.Path(args.data or os.environ.get("GPUCONV_DATA") or DEFAULT_DATA)
    if not path.exists():
        raise SystemExit(f"{NAME}: no CIFAR-10 data at {path}: pass --data DIR (a cifar-10-batches-py "
                         "directory or its parent) or set GPUCONV_DATA")
    return path


def train(device, seed, s, data, out, precision="fp32"):
    """One ``gpuconv train`` run: its per-step losses, per-epoch records and final accuracy, or
    (a run that failed) its exit status and the tail of its output under ``error``."""
    cmd = [sys.executable, "-m", "gpuconv", "train", "--device", device, "--data", str(data), "--out", str(out),
           "--model", s["model"], "--epochs", str(s["epochs"]), "--seed", str(seed), "--val-split", s["val_split"],
           "--log-every", "1", "--no-progress", "--precision", precision]
    if s.get("recipe"):
        cmd += ["--recipe", s["recipe"]]
    for key in ("batch_size", "limit", "width"):
        if s.get(key) is not None:
            cmd += ["--" + key.replace("_", "-"), str(s[key])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    run = {"device": device, "precision": precision, "seed": seed, "seconds": round(time.perf_counter() - t0, 2)}
    accuracy = [float(x.split()[-1]) for x in proc.stdout.splitlines() if x.startswith("accuracy ")]
    metrics = pathlib.Path(out) / "metrics.jsonl"
    if proc.returncode != 0 or not accuracy or not metrics.exists():
        return {**run, "error": f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr[-2000:]}"}
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    steps = [r for r in lines if r.get("kind") == "interval"]
    epochs = [r for r in lines if r.get("kind") == "epoch"]
    return {**run, "accuracy": accuracy[-1], "n_val": epochs[-1].get("val_n") if epochs else None,
            "step_loss": [r["train_loss"] for r in steps], "epoch_loss": [r["train_loss"] for r in epochs],
            "epoch_val_acc": [r.get("val_acc") for r in epochs]}


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


# Tolerances. The first steps run the same weights on the same batches (the loader's plan is
# counter-based, the same on every device): only rounding differs. Later the runs drift apart
# (training is chaotic: rounding-level differences grow to seed-level ones within a few hundred
# steps), so an epoch's loss is held to the noise between seeds: 3x the CPU's seed-to-seed
# spread pooled over the epochs (RMS), at least 5% of the loss; and the accuracy to 0.03 or
# twice the CPU seed spread, whichever is larger.
STEP1_RTOL, FIRST_STEPS, FIRST_STEPS_RTOL = 1e-4, 5, 1e-3
EPOCH_SPREAD_FACTOR, EPOCH_MIN_RTOL = 3.0, 0.05
ACC_MIN_TOL, ACC_SPREAD_FACTOR = 0.03, 2.0
UNIT_ROUNDOFF = {"fp32": 2.0 ** -24, "tf32": 2.0 ** -11, "bf16": 2.0 ** -8, "fp16": 2.0 ** -11}


def first_step_tolerances(precision):
    """(step 1, steps 1-5) relative tolerances: rounding of float32 vs float32, or of a narrower format."""
    u = UNIT_ROUNDOFF[precision]
    return max(STEP1_RTOL, 8 * u), max(FIRST_STEPS_RTOL, 16 * u)


def is_reference(r):
    return r["device"] == "cpu" and r.get("precision", "fp32") == "fp32"


def compare(runs, device, checks: Checks, precision="fp32"):
    """Checks per seed; returns the noise figures used."""
    for r in runs:
        if "error" in r:
            checks.add(f"seed {r['seed']}: {r['device']} {r.get('precision', 'fp32')} run", False,
                       detail=r["error"][-500:])
    good = [r for r in runs if "error" not in r]
    cpu = {r["seed"]: r for r in good if is_reference(r)}
    dev = {r["seed"]: r for r in good if not is_reference(r)}
    step1_rtol, first_rtol = first_step_tolerances(precision)
    if not cpu:
        checks.add("a CPU run to compare with", False)
        return {}
    accs = [r["accuracy"] for r in cpu.values()]
    n_val = next(iter(cpu.values()))["n_val"] or 1
    p = sum(accs) / len(accs)
    se = math.sqrt(max(p * (1 - p), 1e-6) / n_val)
    seed_spread_acc = max(accs) - min(accs) if len(accs) > 1 else None
    acc_tol = max(ACC_MIN_TOL, ACC_SPREAD_FACTOR * (seed_spread_acc or 0.0))
    n_epochs = min(len(c["epoch_loss"]) for c in cpu.values())
    spreads = ([max(c["epoch_loss"][e] for c in cpu.values()) - min(c["epoch_loss"][e] for c in cpu.values())
                for e in range(n_epochs)] if len(cpu) > 1 else None)
    pooled = math.sqrt(sum(s * s for s in spreads) / len(spreads)) if spreads else 0.0
    for seed in sorted(set(cpu) & set(dev)):
        c, d = cpu[seed], dev[seed]
        checks.add(f"seed {seed}: same number of steps", len(c["step_loss"]) == len(d["step_loss"]) > 0,
                   detail=f"cpu {len(c['step_loss'])}, {device} {len(d['step_loss'])}")
        if not c["step_loss"] or not d["step_loss"]:
            continue
        checks.close(f"seed {seed}: step 1 loss", d["step_loss"][0], c["step_loss"][0], step1_rtol)
        first = max(rel(x, y) for x, y in zip(d["step_loss"][:FIRST_STEPS], c["step_loss"][:FIRST_STEPS]))
        checks.add(f"seed {seed}: steps 1-{FIRST_STEPS} loss", first <= first_rtol, first, first_rtol)
        worst = None
        for x, y in zip(d["epoch_loss"], c["epoch_loss"]):
            diff, tol = abs(x - y), max(EPOCH_SPREAD_FACTOR * pooled, EPOCH_MIN_RTOL * abs(y))
            if worst is None or diff / tol > worst[0] / worst[1]:
                worst = (diff, tol)
        checks.add(f"seed {seed}: epoch losses", worst is not None and worst[0] <= worst[1], *(worst or (None, None)))
        checks.add(f"seed {seed}: held-out accuracy", abs(d["accuracy"] - c["accuracy"]) <= acc_tol,
                   abs(d["accuracy"] - c["accuracy"]), acc_tol)
    return {"n_val": n_val, "binomial_se": se, "seed_spread_accuracy": seed_spread_acc,
            "accuracy_tolerance": acc_tol, "seed_spread_epoch_loss": spreads, "pooled_epoch_spread": pooled}


def table(rec):
    s = rec["settings"]
    n = rec["noise"]
    print(f"parity: {s['model']}{' (recipe ' + s['recipe'] + ')' if s.get('recipe') else ''}, {s['epochs']} epochs, CPU fp32 vs {rec['environment']['device']} "
          f"{s.get('precision', 'fp32')} ({n.get('n_val')} held-out images)")
    print(f"{'seed':>4} {'device':>8} {'precision':>9} {'accuracy':>9} {'final loss':>11} {'seconds':>8}")
    for r in rec["runs"]:
        prec = r.get("precision", "fp32")
        if "error" in r:
            print(f"{r['seed']:>4} {r['device']:>8} {prec:>9}    FAILED {'':>11} {r['seconds']:>8.1f}")
            continue
        loss = r["epoch_loss"][-1] if r["epoch_loss"] else float("nan")
        print(f"{r['seed']:>4} {r['device']:>8} {prec:>9} {r['accuracy']:>9.4f} {loss:>11.4f} {r['seconds']:>8.1f}")
    if n:
        print(f"noise: CPU seed spread of the accuracy {n['seed_spread_accuracy']}, of the epoch losses (RMS) "
              f"{n['pooled_epoch_spread']:.4f}; accuracy tolerance {n['accuracy_tolerance']:.4f}")
    for c in rec["validation"]["checks"]:
        err = "" if c["error"] is None else f"  {c['error']:.3g} (tolerance {c['tolerance']:.3g})"
        print(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['name']}{err}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "cpu" and args.precision == "fp32":
        parser.error("--device cpu compares the CPU with itself: give --precision tf32|bf16|fp16")
    if args.device == "sim" and not args.tiny and args.model is None:
        parser.error("--device sim trains on the host simulator, tens to hundreds of images/s: add --tiny, "
                     "or name a small model (--model seed) and --epochs/--limit to size the run")
    if (rc := common.require_device(NAME, argparse.Namespace(device=args.device))) is not None:
        return rc
    s = settings(args)
    data = data_dir(args)
    runs, rec, path = [], None, None
    with tempfile.TemporaryDirectory(prefix="gpuconv-parity-") as tmp, ThreadPoolExecutor(2) as pool:
        root = pathlib.Path(args.keep) if args.keep else pathlib.Path(tmp)
        for seed in args.seeds:  # the CPU run and the device run of a seed side by side
            jobs = (("cpu", "fp32"), (args.device, args.precision))
            pair = pool.map(lambda job: train(job[0], seed, s, data, root / f"{job[0]}-{job[1]}-seed{seed}", job[1]),
                            jobs)
            for run in pair:
                runs.append(run)
                what = f"accuracy {run['accuracy']:.4f}" if "error" not in run else "FAILED"
                print(f"{NAME}: {run['device']} {run['precision']} seed {seed}: {what} in {run['seconds']:.1f}s",
                      file=sys.stderr)
            rec, checks = record(args, s, data, runs)
            if args.save:  # after every seed: a run cut off by a time limit keeps what it measured
                # one file, named by the first save's minute: a run crossing a minute rewrites it
                path = common.save_record(rec, NAME if args.precision == "fp32" else f"{NAME}-{args.precision}",
                                          filename=path.name if path else None)
    if args.json:
        print(json.dumps(rec, indent=2, default=common._json_default))
    else:
        table(rec)
    if args.save:
        print(f"wrote {path}", file=sys.stderr)
    if not checks.passed:
        print(f"{NAME}: the device does not match the CPU:\n  " + "\n  ".join(checks.failures()), file=sys.stderr)
        return 1
    return 0


def record(args, s, data, runs):
    checks = Checks()
    noise = compare(runs, args.device, checks, args.precision)
    step1_rtol, first_rtol = first_step_tolerances(args.precision)
    return {"benchmark": NAME, "environment": common.environment(args.device, use_torch=False),
            "tiny": bool(args.tiny), "timed": False, "complete": len(runs) == 2 * len(args.seeds),
            "settings": {**s, "seeds": args.seeds, "data": str(data), "precision": args.precision}, "tolerances": {
                "step1_rtol": step1_rtol, "first_steps": FIRST_STEPS, "first_steps_rtol": first_rtol,
                "epoch_spread_factor": EPOCH_SPREAD_FACTOR, "epoch_min_rtol": EPOCH_MIN_RTOL,
                "accuracy_min": ACC_MIN_TOL, "accuracy_spread_factor": ACC_SPREAD_FACTOR},
            "validation": checks.as_dict(), "noise": noise, "runs": runs}, checks


if __name__ == "__main__":
    sys.exit(main())
