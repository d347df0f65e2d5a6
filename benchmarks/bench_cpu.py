"""CPU benchmark of the NumPy path: validate, then time; PyTorch CPU beside it when installed.

Cases (batch ``--batch``, CIFAR-10 sizes, float32):
  conv2d forward + backward (dx, dw, db) at the convolutions of seed_net, three_layer_convnet
      and ResNet-9 (fast_net at width 64), and depthwise 3x3 layers of MobileNetV2 (groups = C);
  max pooling forward + backward (2x2 and the overlapping 3x3 stride 2);
  one full training step (forward, softmax cross-entropy, backward, SGD with Nesterov momentum)
      of three_layer_convnet, a narrow fast_net (``--width``) and airbench94's network
      (``--models`` picks among them; ``--per-layer`` adds where gpuconv's step spends its time:
      milliseconds per leaf layer, forward and backward, the minimum over ``--repeats`` steps).

Every case is checked before it is timed: against PyTorch when ``import torch`` works (the same
weights copied in), else against an independent float64 NumPy reference (convolution and
pooling written out tap by tap here; the models run again in float64). Times are the median of
``--repeats`` runs after ``--warmup`` runs (the JSON also has the minimum of each). GFLOP/s
counts 2 flops per multiply-add (a conv forward+backward is 3 GEMMs of the forward's size);
pooling rates count window comparisons.
The ratio is gpuconv time / PyTorch time (below 1: gpuconv is faster). The issue's target: within
2x of PyTorch on conv2d forward+backward.

    python benchmarks/bench_cpu.py                 # the table
    python benchmarks/bench_cpu.py --quick         # small batch, fewer cases (a smoke run)
    python benchmarks/bench_cpu.py --json out.json # also the results as JSON ('-' for stdout)
    python benchmarks/bench_cpu.py --threads 1     # one BLAS/torch thread (stable on a busy machine)
    python benchmarks/bench_cpu.py --threads 1 --only train --models airbench94 --batch 256 --per-layer
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone


def _threads_from_argv(argv):
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return None


# BLAS reads its thread count when it loads, so --threads must act before numpy is imported.
# One thread each is the fair setting on a shared machine: a multithreaded OpenBLAS on
# oversubscribed cores spins and can run 10x slower than one thread.
_THREADS = _threads_from_argv(sys.argv[1:]) if __name__ == "__main__" else None
if _THREADS is not None:
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _THREADS

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/common.py

import gpuconv  # noqa: E402
from common import description, rel_err, torch_mirror  # noqa: E402  (rel_err: max |got - want| / max |want|)
from gpuconv import layers as L  # noqa: E402
from gpuconv import models, ops  # noqa: E402
from gpuconv.optim import SGD  # noqa: E402

# (name, in channels, out channels, image size, filter, padding[, stride, groups])
CONV_CASES = [
    ("seed_net conv 3->12 3x3", 3, 12, 32, 3, 1),
    ("three_layer conv 3->32 7x7", 3, 32, 32, 7, 3),
    ("resnet9 prep 3->64 3x3", 3, 64, 32, 3, 1),
    ("resnet9 layer1 64->128 3x3", 64, 128, 32, 3, 1),
    ("resnet9 res1 128->128 3x3", 128, 128, 16, 3, 1),
    ("resnet9 layer2 128->256 3x3", 128, 256, 16, 3, 1),
    ("resnet9 layer3 256->512 3x3", 256, 512, 8, 3, 1),
    ("resnet9 res3 512->512 3x3", 512, 512, 4, 3, 1),
    ("mobilenetv2 dw 144ch@32 3x3", 144, 144, 32, 3, 1, 1, 144),
    ("mobilenetv2 dw 144ch@32 3x3 s2", 144, 144, 32, 3, 1, 2, 144),
    ("mobilenetv2 dw 192ch@16 3x3", 192, 192, 16, 3, 1, 1, 192),
    ("mobilenetv2 dw 384ch@8 3x3", 384, 384, 8, 3, 1, 1, 384),
    ("mobilenetv2 dw 960ch@4 3x3", 960, 960, 4, 3, 1, 1, 960),
]
# (name, channels, image size, kernel, stride)
POOL_CASES = [
    ("maxpool 2x2 128ch @32", 128, 32, 2, 2),
    ("maxpool 3x3 s2 64ch @33", 64, 33, 3, 2),
]
TRAIN_MODELS = ("three_layer_convnet", "fast_net", "airbench94")
QUICK_CONV = {"three_layer conv 3->32 7x7", "resnet9 res1 128->128 3x3", "mobilenetv2 dw 384ch@8 3x3"}
QUICK_POOL = {"maxpool 2x2 128ch @32"}


# ----------------------------------------------------------------------------- timing
def time_row(row, ours, theirs, args):
    """Median (and minimum) times of ``ours`` and ``theirs`` (None: no torch) into ``row``.

    Each side runs as its own block (warm-up, then the timed repeats), never alternating run by
    run: both libraries leave their worker threads spinning for a while after a call, and on 2
    cores that spinning steals the other side's CPU (alternating, PyTorch's three_layer_convnet
    step measured 53 ms instead of 20)."""
    for key, fn in (("gpuconv", ours), ("torch", theirs)):
        if fn is None:
            continue
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        row[f"{key}_s"] = statistics.median(times)
        row[f"{key}_min_s"] = min(times)
    return row


# ----------------------------------------------------------------------------- float64 references
def conv_reference(x, w, b, pad, dy, stride=1, groups=1):
    """Direct convolution, one tensordot per filter tap (per group), in float64: y, dx, dw, db."""
    x, w, b, dy = (a.astype(np.float64) for a in (x, w, b, dy))
    n, c, h, wd = x.shape
    k, cg, fh, fw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))).reshape(n, groups, cg, h + 2 * pad, wd + 2 * pad)
    oh, ow = dy.shape[2:]
    wg, dyg = w.reshape(groups, k // groups, cg, fh, fw), dy.reshape(n, groups, k // groups, oh, ow)
    y = np.zeros((n, groups, k // groups, oh, ow))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(wg)
    for i in range(fh):
        for j in range(fw):
            taps = (slice(i, i + stride * (oh - 1) + 1, stride), slice(j, j + stride * (ow - 1) + 1, stride))
            patch = xp[(Ellipsis,) + taps]
            y += np.einsum("gkc,ngchw->ngkhw", wg[..., i, j], patch, optimize=True)
            dw[..., i, j] = np.einsum("ngkhw,ngchw->gkc", dyg, patch, optimize=True)
            dxp[(Ellipsis,) + taps] += np.einsum("gkc,ngkhw->ngchw", wg[..., i, j], dyg, optimize=True)
    y = y.reshape(n, k, oh, ow) + b[None, :, None, None]
    dx = dxp.reshape(n, c, h + 2 * pad, wd + 2 * pad)[:, :, pad:pad + h, pad:pad + wd]
    return y, dx, dw.reshape(w.shape), dy.sum(axis=(0, 2, 3))


def max_pool_reference(x, k, s, dy):
    """Max pooling by explicit window loops over the (few) output positions' taps, float64."""
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    win = np.stack([x[:, :, i:i + s * oh:s, j:j + s * ow:s] for i in range(k) for j in range(k)])
    y = win.max(axis=0)
    first = np.argmax(win == y, axis=0)  # the first tap attaining the max (ties: row-major first)
    dx = np.zeros_like(x, dtype=np.float64)
    for t in range(k * k):
        i, j = divmod(t, k)
        dx[:, :, i:i + s * oh:s, j:j + s * ow:s] += np.where(first == t, dy, 0.0)
    return y, dx


# ----------------------------------------------------------------------------- torch mirror
def load_torch(enabled, threads=None):
    if not enabled:
        return None
    try:
        import torch
    except Exception:  # not installed, or a broken install: the NumPy-only run still stands
        return None
    if threads:
        torch.set_num_threads(threads)
    return torch


# ----------------------------------------------------------------------------- cases
def conv_case(name, c, k, hw, f, pad, stride=1, groups=1, *, args, torch):
    rng = np.random.default_rng(0)
    n, cg = args.batch, c // groups
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    bound = 1 / np.sqrt(cg * f * f)
    w = rng.uniform(-bound, bound, (k, cg, f, f)).astype(np.float32)
    b = rng.uniform(-bound, bound, k).astype(np.float32)
    o = (hw + 2 * pad - f) // stride + 1
    dy = rng.standard_normal((n, k, o, o)).astype(np.float32)

    def ours():
        y, cache = ops.conv2d_forward(x, w, b, stride=stride, padding=pad, floor=True, groups=groups)
        return (y,) + tuple(ops.conv2d_backward(dy, cache))

    got = ours()
    if torch is not None:
        xt, wt, bt = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
        yt = torch.nn.functional.conv2d(xt, wt, bt, stride, pad, 1, groups)
        yt.backward(torch.from_numpy(dy))
        want, check = (yt.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()), "torch"
    else:
        want, check = conv_reference(x, w, b, pad, dy, stride, groups), "float64"
    err = max(rel_err(g, r) for g, r in zip(got, want))
    flops = 3 * 2.0 * n * k * cg * f * f * dy.shape[2] * dy.shape[3]
    more = (f" s{stride}" if stride > 1 else "") + (f" groups {groups}" if groups > 1 else "")
    row = {"case": name, "kind": "conv2d fwd+bwd", "shape": f"{n}x{c}x{hw}x{hw} * {k}x{cg}x{f}x{f}{more}",
           "flops": flops, "check": check, "max_rel_err": err, "ok": err < 1e-4}
    theirs = None
    if torch is not None:
        def theirs():
            xt.grad = wt.grad = bt.grad = None
            torch.nn.functional.conv2d(xt, wt, bt, stride, pad, 1, groups).backward(torch.from_numpy(dy))
    return time_row(row, ours, theirs, args)


def pool_case(name, c, hw, k, s, args, torch):
    rng = np.random.default_rng(1)
    n = args.batch
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    o = (hw - k) // s + 1
    dy = rng.standard_normal((n, c, o, o)).astype(np.float32)

    def ours():
        y, cache = ops.max_pool2d_forward(x, kernel_size=k, stride=s)
        return y, ops.max_pool2d_backward(dy, cache)

    got = ours()
    if torch is not None:
        xt = torch.from_numpy(x).requires_grad_()
        yt = torch.nn.functional.max_pool2d(xt, k, s)
        yt.backward(torch.from_numpy(dy))
        want, check = (yt.detach().numpy(), xt.grad.numpy()), "torch"
    else:
        want, check = max_pool_reference(x, k, s, dy), "float64"
    err = max(rel_err(g, r) for g, r in zip(got, want))
    row = {"case": name, "kind": "max_pool2d fwd+bwd", "shape": f"{n}x{c}x{hw}x{hw} k{k} s{s}",
           "flops": float(n * c * o * o * k * k), "check": check, "max_rel_err": err, "ok": err < 1e-6}
    theirs = None
    if torch is not None:
        def theirs():
            xt.grad = None
            torch.nn.functional.max_pool2d(xt, k, s).backward(torch.from_numpy(dy))
    return time_row(row, ours, theirs, args)


def forward_flops(layer, x):
    """(y, multiply-add flops of the convolutions and linear layers) for one forward."""
    if isinstance(layer, L.Sequential):
        total = 0.0
        for child in layer:
            x, f = forward_flops(child, x)
            total += f
        return x, total
    if isinstance(layer, L.Residual):
        y, f = forward_flops(layer.inner, x)
        return x + y, f
    y = layer(x)
    if isinstance(layer, L.Conv2d):
        kh, kw = layer.kernel_size
        return y, 2.0 * y.size * layer.in_channels * kh * kw
    if isinstance(layer, L.Linear):
        return y, 2.0 * y.size * layer.in_features
    return y, 0.0


def train_case(name, make_model, args, torch):
    rng = np.random.default_rng(2)
    n = args.batch
    x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, n)
    model = make_model()
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def forward_backward(m):
        m.zero_grad()
        loss, dlogits = ops.softmax_cross_entropy(m(x), labels)
        m.backward(dlogits, need_dx=False)  # as PyTorch: the input needs no gradient
        return loss

    if torch is not None:
        tm = torch_mirror(torch, model)
        xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
        tloss = torch.nn.functional.cross_entropy(tm(xt), yt)
        tloss.backward()
        loss = forward_backward(model)
        tgrads = dict(tm.named_parameters())
        err = rel_err(loss, tloss.item())
        for pname, p in model.named_parameters():
            if p.requires_grad:
                err = max(err, rel_err(p.grad, tgrads[pname].grad.numpy()))
        check, tol = "torch", 1e-3  # gradients of a deep float32 net through batch norm
    else:
        ref = make_model().astype(np.float64)
        ref.load_state_dict(model.state_dict())
        loss = forward_backward(model)
        ref_loss, dref = ops.softmax_cross_entropy(ref(x.astype(np.float64)), labels)
        ref.backward(dref)
        refgrads = dict(ref.named_parameters())
        err = rel_err(loss, ref_loss)
        for pname, p in model.named_parameters():
            if p.requires_grad:
                err = max(err, rel_err(p.grad, refgrads[pname].grad))
        check, tol = "float64", 1e-3
    _, fwd = forward_flops(make_model(), x)

    def ours():
        forward_backward(model)
        opt.step()

    row = {"case": name, "kind": "train step", "shape": f"batch {n}", "flops": 3 * fwd, "check": check,
           "max_rel_err": err, "ok": err < tol}
    theirs = None
    if torch is not None:
        topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

        def theirs():
            topt.zero_grad()
            torch.nn.functional.cross_entropy(tm(xt), yt).backward()
            topt.step()
    time_row(row, ours, theirs, args)
    if args.per_layer:
        row["per_layer_ms"] = per_layer_times(model, ours, args.repeats)
    return row


def per_layer_times(model, step, repeats):
    """{leaf layer name: {"kind", "forward": ms, "backward": ms}}: time.perf_counter around every
    leaf layer's forward and backward during ``repeats`` calls of ``step``, the minimum of each
    (what no layer accounts for, the loss and the optimizer, is the step's time less their sum)."""
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    times, current = {}, {}

    def wrap(layer, name, direction):
        inner = getattr(layer, direction)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            out = inner(*a, **kw)
            current[name, direction] = current.get((name, direction), 0.0) + time.perf_counter() - t0
            return out
        setattr(layer, direction, timed)  # an instance attribute, removed below

    for name, layer in leaves:
        wrap(layer, name, "forward")
        wrap(layer, name, "backward")
    try:
        for _ in range(repeats):
            current.clear()
            step()
            for key, s in current.items():
                times[key] = min(times.get(key, s), s)
    finally:
        for _, layer in leaves:
            vars(layer).pop("forward", None)
            vars(layer).pop("backward", None)
    return {name: {"kind": type(layer).__name__, "forward": 1e3 * times.get((name, "forward"), 0.0),
                   "backward": 1e3 * times.get((name, "backward"), 0.0)} for name, layer in leaves}


def print_per_layer(rows):
    for r in rows:
        layers = r.get("per_layer_ms")
        if not layers:
            continue
        total = sum(v["forward"] + v["backward"] for v in layers.values())
        print(f"\n{r['case']} ({r['shape']}): gpuconv step {1e3 * r['gpuconv_min_s']:.1f} ms (min), "
              f"{total:.1f} ms in the layers; ms per step by layer kind, then the costliest layers")
        kinds = {}
        for v in layers.values():
            k = kinds.setdefault(v["kind"], [0.0, 0.0])
            k[0] += v["forward"]
            k[1] += v["backward"]
        for kind, (f, b) in sorted(kinds.items(), key=lambda kv: -sum(kv[1])):
            print(f"  {kind:<12} forward {f:9.2f}  backward {b:9.2f}  ({100 * (f + b) / total:4.1f}%)")
        top = sorted(layers.items(), key=lambda kv: -(kv[1]["forward"] + kv[1]["backward"]))[:8]
        for name, v in top:
            print(f"  {name:<20} {v['kind']:<12} forward {v['forward']:9.2f}  backward {v['backward']:9.2f}")


# ----------------------------------------------------------------------------- report
def cpu_model():
    """The CPU's model name (``lscpu``'s), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    """1-minute load average, or None where the OS has none: on a shared machine it says how
    much the times can be trusted (above the core count, other work is competing)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def print_table(rows, header):
    print(header)
    cols = ["case", "shape", "check", "err", "gpuconv ms", "GFLOP/s", "torch ms", "GFLOP/s", "ratio"]
    lines = []
    for r in rows:
        t_ours, t_torch = r["gpuconv_s"], r.get("torch_s")
        lines.append([r["case"], r["shape"], r["check"] + ("" if r["ok"] else " FAIL"), f"{r['max_rel_err']:.1e}",
                      f"{1e3 * t_ours:.2f}", f"{r['flops'] / t_ours / 1e9:.2f}",
                      "-" if t_torch is None else f"{1e3 * t_torch:.2f}",
                      "-" if t_torch is None else f"{r['flops'] / t_torch / 1e9:.2f}",
                      "-" if t_torch is None else f"{t_ours / t_torch:.2f}x"])
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:{'<' if i < 3 else '>'}{w}}}" for i, w in enumerate(widths))
    print(fmt.format(*cols))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print(fmt.format(*line))
    print("ratio = gpuconv time / PyTorch time; pooling 'GFLOP/s' counts window comparisons")


def main(argv=None):
    p = argparse.ArgumentParser(description=description(__doc__))
    p.add_argument("--batch", type=int, default=32, help="batch size of every case (default 32)")
    p.add_argument("--width", type=int, default=16, help="fast_net width for the training step (default 16)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per case; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--quick", action="store_true", help="batch 8, a subset of the cases, 3 repeats")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for BLAS (OpenBLAS/MKL/OpenMP) and torch; default: their own defaults")
    p.add_argument("--only", choices=["conv", "pool", "train"], action="append",
                   help="run only these groups (repeatable)")
    p.add_argument("--models", nargs="+", choices=TRAIN_MODELS, default=list(TRAIN_MODELS),
                   help="the training steps to time (default: all three)")
    p.add_argument("--per-layer", action="store_true",
                   help="also time gpuconv's training steps layer by layer (forward and backward of each leaf layer)")
    p.add_argument("--json", metavar="PATH", nargs="?", const="-",
                   help="also write the results as JSON to PATH ('-' or no value: stdout)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = min(args.batch, 8), min(args.repeats, 3)
    if args.batch < 2:
        p.error("--batch must be >= 2 (batch norm needs two samples)")
    groups = set(args.only or ["conv", "pool", "train"])
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.threads is not None and os.environ.get("OPENBLAS_NUM_THREADS") != str(args.threads):
        print("note: --threads sets the BLAS thread count only when this file runs as a script", file=sys.stderr)
    torch = load_torch(not args.no_torch, args.threads)
    # As `gpuconv train` on the CPU: freed arrays' memory kept for the next step (both libraries'
    # allocations go through glibc here, so both sides get it).
    from gpuconv._hostmem import keep_freed_memory
    keep_freed_memory()
    load_before = load_average()

    with gpuconv.default_device("cpu"):
        rows = []
        if "conv" in groups:
            rows += [conv_case(*c, args=args, torch=torch) for c in CONV_CASES if not args.quick or c[0] in QUICK_CONV]
        if "pool" in groups:
            rows += [pool_case(*c, args=args, torch=torch) for c in POOL_CASES if not args.quick or c[0] in QUICK_POOL]
        if "train" in groups:
            if "three_layer_convnet" in args.models:
                rows.append(train_case("three_layer_convnet", models.three_layer_convnet, args, torch))
            if "fast_net" in args.models:
                rows.append(train_case(f"fast_net width {args.width}", lambda: models.fast_net(width=args.width),
                                       args, torch))
            if "airbench94" in args.models:
                rows.append(train_case("airbench94", models.airbench94, args, torch))

    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
           "numpy": np.__version__, "gpuconv": gpuconv.__version__, "cpu": cpu_model(),
           "cpu_count": os.cpu_count(), "load_average_1min": [load_before, load_average()],
           "threads": args.threads, "torch": None if torch is None else torch.__version__,
           "torch_threads": None if torch is None else torch.get_num_threads(), "batch": args.batch,
           "repeats": args.repeats, "warmup": args.warmup}
    header = (f"gpuconv {env['gpuconv']} NumPy path on {env['cpu_count']} CPU(s), numpy {env['numpy']}, "
              f"torch {env['torch'] or ('not used (--no-torch)' if args.no_torch else 'not installed')}; "
              f"threads {args.threads or 'default'}; batch {args.batch}, "
              f"median of {args.repeats}; {env['cpu']}; load average {load_before} -> {env['load_average_1min'][1]}")
    if args.json == "-":
        print(json.dumps({"env": env, "results": rows}, indent=1))
    else:
        print_table(rows, header)
        print_per_layer(rows)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"env": env, "results": rows}, fh, indent=1)
    failed = [r["case"] for r in rows if not r["ok"]]
    if failed:
        print(f"validation FAILED for: {', '.join(failed)} (times of those rows are not meaningful)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
