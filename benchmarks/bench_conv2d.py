"""Validate, then time, every conv2d kernel variant at CIFAR layer sizes, against PyTorch/cuDNN.

    python benchmarks/bench_conv2d.py                 # GPU: batch 512, 3x3 convs, padding 1
    python benchmarks/bench_conv2d.py --json          # the same, one JSON document on stdout
    python benchmarks/bench_conv2d.py --precisions bf16 --variants v2 tc   # a subset
    python benchmarks/bench_conv2d.py --validate-only --target sim   # no GPU: tiny layers, simulator

Precisions (``--precisions``, default fp32, tf32 and bf16):
  fp32  float32, strict: v1 (one thread per output), v2 (64x64-tile implicit GEMM), v3 (128x128
        tiles, 256 threads); cuDNN with TF32 off; NCHW.
  tf32  float32 arrays, TF32 multiplicands: v2, v3 (CUDA cores, TF32-rounded operands), tc,
        tc128, tc128w (tensor cores, m16n8k8, 64x64 and 128x128 tiles, the last in 4 warps of
        64x64), tcwg, tcwg256, tcwgn64, tcwgm64 (Hopper's wgmma m64nNk8); cuDNN with TF32 on;
        channels_last.
  bf16  bfloat16 arrays: v2, v3, tc, tc128 and tc128w (tensor cores, mma.sync m16n8k16), tcwg,
        tcwg256, tcwgn64 and tcwgm64 (128x128, 128x256, 256x64 and 64x128 tiles on Hopper's wgmma
        m64nNk16; tc128 or tc on other GPUs); cuDNN in bfloat16; channels_last.
  fp16  float16 arrays, the same variants as bf16 (m16n8k16 .f16; on a Turing GPU such as the T4,
        the only tensor-core type it has, each as two m16n8k8); cuDNN in float16; channels_last.
        Not in the default list: ``--precisions fp16`` (the GPU to run it on is a T4).
  bf16_nchw, tf32_nchw  the tensor-core tiles fed NCHW arrays, as a user who never calls
        to_channels_last runs them: each call converts x or dy to NHWC (kernels/layout.cu: the
        channels padded and, in TF32, rounded in the same pass) and its output back, inside the
        timed call; cuDNN in NCHW. Not in the default list (the battery runs them at the CIFAR
        layers, tc128 and tcwg: ``--precisions bf16_nchw tf32_nchw``); the record's name ends in -nchw.
Each variant of each direction (forward, backward-data, backward-weight), as listed in
``gpuconv.kernels.VARIANTS``, is first checked against the float64 convolution of its operands as
the precision takes them on a 4-image slice of the layer (full channel counts, so every tile edge
of the real shape is hit; the weight gradient's reduction split in parts, as at the full batch), within gpuconv.gradcheck's bound for the reduction length (twice that
on a GPU, whose tensor cores truncate), then timed with CUDA events over --repeat launches after
--warmup. PyTorch runs the same shapes, precision and layout on the same GPU (cudnn.benchmark
on, so it picks its best algorithm) when it is importable. Printed: ms per call, TFLOP/s
(2*N*K*C*FH*FW*OH*OW per direction) and the ratio to cuDNN, and per precision and direction
which variant was fastest on each layer (the evidence for changing a default in
gpuconv/kernels/_families.py). v1 is timed over at most 3 calls after 1 warm-up: one call takes tens of
milliseconds at batch 512. ``--layers fast_net`` runs every distinct conv of fast_net (a superset
of the four CIFAR layers), ``--layers airbench94`` (``airbench96``) those of that recipe's network.
Results go to benchmarks/results/conv2d-<gpu>-<date>-<HHMM>.json with the device, the date and the
versions of everything involved.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # benchmarks/common.py

import common  # noqa: E402  (puts the checkout on sys.path too)
from common import cuda_time, environment, torch_module  # noqa: E402,F401  (shared; re-exported)
import gpuconv  # noqa: E402
from gpuconv import backend as B  # noqa: E402
from gpuconv import kernels, precision  # noqa: E402
from gpuconv.gradcheck import reduction_tolerance, within_tolerance  # noqa: E402
from gpuconv.ops import _launch_conv2d as LC  # noqa: E402
from gpuconv.ops import conv2d as conv_ref  # noqa: E402

# (in channels, out channels, image size) of the CIFAR layers named in issue 3; 3x3, stride 1, pad 1.
CIFAR_LAYERS = [(3, 64, 32), (64, 128, 32), (128, 256, 16), (256, 512, 8)]
TINY_LAYERS = [(3, 4, 8), (4, 9, 6), (8, 16, 4), (16, 33, 2)]  # the simulator's stand-ins


def network_layers(net):
    """The distinct 3x3 convolutions (stride 1, padding 1) of ``net`` on CIFAR images, in forward
    order, as (C_in, C_out, H): the layers whose speed decides its training step."""
    from gpuconv import layers as L
    from gpuconv.summary import summarize
    convs = dict(net.named_modules())
    out, c, h = [], 3, 32
    for row in summarize(net, (3, 32, 32)):
        layer = convs.get(row["name"])
        if isinstance(layer, L.Conv2d) and (layer.kernel_size, layer.stride, layer.padding) == ((3, 3), (1, 1), (1, 1)):
            if (c, layer.out_channels, h) not in out:
                out.append((c, layer.out_channels, h))
        if len(row["shape"]) == 3:  # (C, H, W); the head's rows are flat
            c, h = row["shape"][0], row["shape"][1]
    return out


def fast_net_layers(width=64):
    """fast_net(width)'s convolutions (a superset of CIFAR_LAYERS at width 64: it adds 128->128 @16
    and 512->512 @4)."""
    from gpuconv import models
    return network_layers(models.fast_net(width=width))


def airbench94_layers():
    """The airbench94 network's 3x3 convolutions (its 2x2 whitening conv aside)."""
    from gpuconv import models
    return network_layers(models.airbench94())


def airbench96_layers():
    """The airbench96 network's 3x3 convolutions (its 2x2 whitening conv aside)."""
    from gpuconv import models
    return network_layers(models.airbench96())


DIRECTIONS = {"forward": "conv2d_forward", "backward_data": "conv2d_backward_data",
              "backward_weight": "conv2d_backward_weight"}
VARIANTS = tuple(dict.fromkeys(v for f in DIRECTIONS.values() for v in kernels.VARIANTS[f][0]))  # v1, v2, v3, tc
# precision -> (array dtype, TF32 multiplicands, channels_last, the variants that compute in it)
PRECISIONS = {"fp32": (np.float32, False, False, ("v1", "v2", "v3")),
              "tf32": (np.float32, True, True, ("v2", "v3") + kernels.TC_VARIANTS),
              "bf16": (precision.bfloat16, False, True, ("v2", "v3") + kernels.TC_VARIANTS),
              "fp16": (np.float16, False, True, ("v2", "v3") + kernels.TC_VARIANTS),
              # the tensor-core tiles fed NCHW arrays: each call converts its operands and its output
              "bf16_nchw": (precision.bfloat16, False, False, kernels.TC_VARIANTS),
              "tf32_nchw": (np.float32, True, False, kernels.TC_VARIANTS)}
DEFAULT_PRECISIONS = ("fp32", "tf32", "bf16")


def family_variants(family, variants=None, prec="fp32", target="sim"):
    """The variants of ``family`` to run in precision ``prec`` on ``target``: all it has there,
    or those of ``variants`` among them; only those that run as themselves there
    (:func:`gpuconv.kernels.runs_as`: no wgmma tile off Hopper or under ``GPUCONV_WGMMA=0``, no
    tensor-core tile where the GPU has no tensor cores for the precision: bf16 and TF32 below
    compute capability 8.0), as a row would time another tile under its name."""
    dtype, tf32 = PRECISIONS[prec][:2]
    have = tuple(v for v in kernels.VARIANTS[family][0] if v in PRECISIONS[prec][3]
                 and kernels.runs_as(v, target, dtype=dtype, tf32=tf32) == v)
    return have if variants is None else tuple(v for v in variants if v in have)
STRIDE, PAD, FILT = (1, 1), (1, 1), 3
RESULTS = common.RESULTS


def flops(n, c, k, h):
    return 2.0 * n * k * c * FILT * FILT * h * h  # OH = OW = H at stride 1, padding 1


def make_layer(n, c, k, h, seed=0, prec="fp32"):
    """x, w, b, dy of one layer in precision ``prec``'s dtype (host arrays, NCHW)."""
    dtype = PRECISIONS[prec][0]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, h)).astype(dtype)
    w = (rng.standard_normal((k, c, FILT, FILT)) / np.sqrt(c * FILT * FILT)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    dy = rng.standard_normal((n, k, h, h)).astype(dtype)
    return x, w, b, dy


def on_device(arrays, target, prec):
    """The layer's arrays where ``target`` runs, x and dy channels_last where ``prec`` says."""
    to = (lambda a: B.cupy_module().asarray(a)) if target == "cuda" else (lambda a: a)
    x, w, b, dy = (to(a) for a in arrays)
    if PRECISIONS[prec][2]:
        x, dy = gpuconv.to_channels_last(x), gpuconv.to_channels_last(dy)
    return x, w, b, dy


def run_direction(direction, x, w, b, dy, target, tf32=False):
    if direction == "forward":
        return LC.conv2d_forward_kernel(x, w, b, STRIDE, PAD, tf32, target=target)[0]
    if direction == "backward_data":
        return LC.conv2d_backward_data_kernel(dy, w, x.shape, STRIDE, PAD, tf32, target=target, like=x)
    return LC.conv2d_backward_weight_kernel(dy, x, w.shape, STRIDE, PAD, tf32, target=target)


def reference(direction, x, w, b, dy, tf32=False):
    """(result, sum of the terms' magnitudes, reduction length) in float64 NumPy: gpuconv's own
    reference path (im2col + BLAS, never a kernel) on the operands as the precision takes them
    (bfloat16 widened exactly, TF32 rounded)."""
    x64, w64, dy64 = (np.asarray(a, np.float64) for a in precision.multiplicands(tf32, x, w, dy))
    b64 = np.asarray(b, np.float64)
    out = []
    for f in (lambda a: a, np.abs):
        y, cache = conv_ref._conv2d_forward_reference(f(x64), f(w64), f(b64), STRIDE, PAD)
        if direction == "forward":
            out.append(y)
        else:
            dx, dw, _ = conv_ref._conv2d_backward_reference(f(dy64), cache)
            out.append(dx if direction == "backward_data" else dw)
    n, c, h = x.shape[0], x.shape[1], x.shape[2]
    length = {"forward": c * FILT * FILT + 1, "backward_data": w.shape[0] * FILT * FILT,
              "backward_weight": n * h * h}[direction]
    return out[0], out[1], length


class Failure(str):
    """A validation failure's message, and ``key``: the (precision, direction, variant) that failed."""

    def __new__(cls, key, message):
        self = super().__new__(cls, message)
        self.key = key
        return self


# The backward-weight reduction splits by its length, N*OH*OW positions, at least this many per
# split in validation: a 4-image slice of a late layer (64 positions at 4x4) would otherwise run
# unsplit while the batch-512 timing splits it, and the split path would be timed unchecked.
VALIDATE_SPLIT_CHUNK = 8


def validate(layers, batch, target, variants=None, precisions=("fp32",)):
    """Every variant and direction in each precision against the float64 reference, within the
    derived bound (twice it on a GPU); returns a list of failure strings (empty: all good)."""
    chunk, LC.MIN_SPLIT_CHUNK = LC.MIN_SPLIT_CHUNK, min(LC.MIN_SPLIT_CHUNK, VALIDATE_SPLIT_CHUNK)
    try:
        return _validate(layers, batch, target, variants, precisions)
    finally:
        LC.MIN_SPLIT_CHUNK = chunk


def _validate(layers, batch, target, variants, precisions):
    failures = []
    for prec in precisions:
        dtype, tf32 = PRECISIONS[prec][:2]
        for c, k, h in layers:
            arrays = make_layer(batch, c, k, h, seed=c + k, prec=prec)
            dev = on_device(arrays, target, prec)
            for direction, family in DIRECTIONS.items():
                ref, mag, length = reference(direction, *arrays, tf32=tf32)
                tol = (2.0 if target == "cuda" else 1.0) * reduction_tolerance(mag, ref, length, dtype)
                for var in family_variants(family, variants, prec, target):
                    try:
                        with kernels.use_variant(**{family: var}), kernels.use_variant("tf32", **{family: var}):
                            got = run_direction(direction, *dev, target, tf32)
                    except Exception as exc:  # noqa: BLE001 - a failure like a wrong result
                        failures.append(Failure((prec, direction, var), f"{prec} {c}->{k} at {h}x{h} {direction} "
                                                f"{var}: raised {type(exc).__name__}: {exc}"))
                        continue
                    got = np.asarray(got.get() if B.is_cupy_array(got) else got, np.float64)
                    ok, worst = within_tolerance(got, ref, tol) if got.shape == ref.shape else (False, float("inf"))
                    if not ok:
                        failures.append(Failure((prec, direction, var), f"{prec} {c}->{k} at {h}x{h} {direction} "
                                                f"{var}: max |error| {worst:.3g} x the derived bound "
                                                f"(reduction of {length})"))
    return failures


def torch_calls(torch, x, w, b, dy, prec="fp32"):
    """cuDNN through PyTorch in ``prec``: TF32 allowed only for 'tf32'; bfloat16 tensors for
    'bf16', float16 for 'fp16'; channels_last memory (input, weight and gradient) where the precision runs it."""
    torch.backends.cudnn.allow_tf32 = PRECISIONS[prec][1]
    torch.backends.cuda.matmul.allow_tf32 = PRECISIONS[prec][1]
    if PRECISIONS[prec][0] == precision.bfloat16:  # DLPack has no bfloat16 in every version: hand the bits over
        tx, tw, tb, tdy = (torch.from_dlpack(a.view(np.uint16)).view(torch.bfloat16) for a in (x, w, b, dy))
    else:
        tx, tw, tb, tdy = (torch.from_dlpack(a) for a in (x, w, b, dy))
    if PRECISIONS[prec][2]:  # the weight too, as model.to(memory_format=torch.channels_last) leaves it: PyTorch
        # picks a convolution's layout from input and weight, and the data gradient's input is a
        # shape alone, so an NCHW weight would run cuDNN's backward-data in NCHW (dy copied there)
        tx, tw, tdy = (t.contiguous(memory_format=torch.channels_last) for t in (tx, tw, tdy))
    F, grad = torch.nn.functional, torch.nn.grad
    return {"forward": lambda: F.conv2d(tx, tw, tb, stride=STRIDE, padding=PAD),
            "backward_data": lambda: grad.conv2d_input(tx.shape, tw, tdy, stride=STRIDE, padding=PAD),
            "backward_weight": lambda: grad.conv2d_weight(tx, tw.shape, tdy, stride=STRIDE, padding=PAD)}


def benchmark(batch, warmup, repeat, use_torch=True, layers=CIFAR_LAYERS, variants=None, precisions=("fp32",),
              wrong=frozenset()):
    """Rows of (precision, layer, direction, variant) timings on the GPU, with cuDNN's beside each;
    each row is printed as it is measured (a run cut short still shows them). ``wrong``: the
    (precision, direction, variant) that failed validation, not timed."""
    torch = torch_module() if use_torch else None
    rows = []
    for prec in precisions:
        tf32 = PRECISIONS[prec][1]
        for c, k, h in layers:
            x, w, b, dy = on_device(make_layer(batch, c, k, h, prec=prec), "cuda", prec)
            tcalls = torch_calls(torch, x, w, b, dy, prec) if torch else {}
            for direction, family in DIRECTIONS.items():
                gflop = flops(batch, c, k, h) / 1e9
                t_ms = None
                if torch:
                    with torch.no_grad():
                        t_ms = cuda_time(tcalls[direction], warmup, repeat)  # torch shares CuPy's null stream
                for var in family_variants(family, variants, prec, "cuda"):
                    if (prec, direction, var) in wrong:
                        continue
                    # v1 (one thread per output) takes tens of ms per call at batch 512: few calls suffice.
                    w_n, r_n = (min(warmup, 1), max(1, min(repeat, 3))) if var == "v1" else (warmup, repeat)
                    with kernels.use_variant(**{family: var}), kernels.use_variant("tf32", **{family: var}):
                        ms = cuda_time(lambda: run_direction(direction, x, w, b, dy, "cuda", tf32), w_n, r_n)
                    spread = cuda_time.last_spread  # slowest timing group over the median: a stall shows here
                    rows.append({"precision": prec, "layout": "channels_last" if PRECISIONS[prec][2] else "nchw",
                                 "layer": layer_label(c, k, h), "batch": batch, "direction": direction,
                                 "variant": var, "ms": ms, "tflops": gflop / ms, "torch_ms": t_ms,
                                 "torch_tflops": gflop / t_ms if t_ms else None,
                                 "speed_vs_torch": t_ms / ms if t_ms else None, "spread": spread})
                    print(f"{prec} {c}->{k} @{h} {direction} {var}: {ms:.3f} ms {gflop / ms:.1f} TFLOP/s"
                          + (f", cuDNN {t_ms:.3f} ms ({t_ms / ms:.2f}x)" if t_ms else "")
                          + (f" [noisy: slowest group {spread:.1f}x the median]" if spread > 1.5 else ""), flush=True)
    return rows


def fastest(rows):
    """{precision: {direction: {layer: fastest variant}}}: what the GPU says each default should be."""
    best = {}
    for r in rows:
        per = best.setdefault(r.get("precision", "fp32"), {}).setdefault(r["direction"], {})
        cur = per.get(r["layer"])
        if cur is None or r["ms"] < cur[1]:
            per[r["layer"]] = (r["variant"], r["ms"])
    return {p: {d: {layer: v for layer, (v, _) in per.items()} for d, per in dirs.items()} for p, dirs in best.items()}


def default_variant(family, prec, c, k):
    """The variant gpuconv runs today for ``family`` in precision ``prec`` at a C -> K layer
    (the default picks by the GEMM's output channels: K, or C for the data gradient)."""
    dtype, tf32 = PRECISIONS[prec][:2]
    return kernels.resolve(family, dtype, tf32, c if family == "conv2d_backward_data" else k)


def layer_label(c, k, h):
    return f"{c}->{k} @{h}x{h}"


def print_table(rows):
    print(f"{'prec':5s} {'layer':16s} {'direction':16s} {'var':3s} {'ms':>9s} {'TFLOP/s':>8s} {'cuDNN ms':>9s} "
          f"{'TFLOP/s':>8s} {'vs cuDNN':>8s}")
    for r in rows:
        t = (f"{r['torch_ms']:9.3f} {r['torch_tflops']:8.2f} {r['speed_vs_torch']:7.2f}x" if r["torch_ms"]
             else f"{'-':>9s} {'-':>8s} {'-':>8s}")
        print(f"{r.get('precision', 'fp32'):5s} {r['layer']:16s} {r['direction']:16s} {r['variant']:3s} "
              f"{r['ms']:9.3f} {r['tflops']:8.2f} {t}")


def main(argv=None):
    p = argparse.ArgumentParser(description=common.description(__doc__))
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print the results as one JSON document")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch/cuDNN comparison")
    p.add_argument("--no-save", action="store_true", help=f"do not write a record under {RESULTS}")
    p.add_argument("--layers", choices=("cifar", "fast_net", "airbench94", "airbench96"), default="cifar",
                   help="cifar: the four CIFAR layers; fast_net: every distinct conv of fast_net (width 64); "
                        "airbench94 (airbench96): every distinct 3x3 conv of that network (time them at its --batch "
                        "1024)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                   help="variants to validate and time (default: every variant of every direction)")
    p.add_argument("--precisions", nargs="+", choices=tuple(PRECISIONS), default=list(DEFAULT_PRECISIONS),
                   help="fp32 (strict, NCHW), tf32 (TF32 multiplicands, channels_last), bf16, fp16 (channels_last), "
                        "bf16_nchw, tf32_nchw (the tensor-core tiles on NCHW arrays); default: fp32 tf32 bf16")
    p.add_argument("--validate-only", action="store_true", help="check every variant against NumPy, time nothing")
    p.add_argument("--target", choices=("cuda", "sim"), default="cuda",
                   help="where --validate-only runs ('sim': tiny layers on the host simulator, no GPU needed)")
    args = p.parse_args(argv)

    if args.target == "sim":
        if not args.validate_only:
            p.error("--target sim only validates (the simulator is not a timing device): add --validate-only")
        failures = validate(TINY_LAYERS, 2, "sim", args.variants, args.precisions)
        print("\n".join(failures) or f"all conv2d variants match NumPy on {len(TINY_LAYERS)} tiny layers (simulator)")
        return 1 if failures else 0
    if not B.cuda_available():
        print(f"bench_conv2d: no usable GPU ({B.cuda_status()}). This benchmark times the CUDA kernels and "
              "needs one. Without a GPU, check its validation logic on the host simulator with:\n"
              "    python benchmarks/bench_conv2d.py --validate-only --target sim", file=sys.stderr)
        return 2

    layers = {"cifar": lambda: CIFAR_LAYERS, "fast_net": fast_net_layers,
              "airbench94": airbench94_layers, "airbench96": airbench96_layers}[args.layers]()
    failures = validate(layers, 4, "cuda", args.variants, args.precisions)
    if failures:
        # A variant that computes a wrong result is never timed; the others still are (and the
        # run still fails): one GPU call shows every variant's state at once.
        print("validation failed (these are not timed):\n" + "\n".join(failures), file=sys.stderr, flush=True)
    if args.validate_only:
        print(f"{'some' if failures else 'all'} conv2d variants match NumPy at the layer sizes (4-image slices)")
        return 1 if failures else 0
    wrong = {f.key for f in failures}
    rows = benchmark(args.batch, args.warmup, args.repeat, use_torch=not args.no_torch, layers=layers,
                     variants=args.variants, precisions=args.precisions, wrong=wrong)
    record = {"benchmark": "conv2d", "environment": environment(use_torch=not args.no_torch), "layers": args.layers,
              "batch": args.batch, "stride": STRIDE,
              "padding": PAD, "filter": FILT, "validation_failures": failures,
              "defaults": {p: {d: {layer_label(c, k, h): default_variant(f, p, c, k) for c, k, h in layers}
                               for d, f in DIRECTIONS.items()} for p in args.precisions},
              "fastest": fastest(rows), "results": rows}
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"{record['environment']['device']}, batch {args.batch}, 3x3 pad 1")
        print_table(rows)
        for prec, dirs in record["fastest"].items():
            for direction, per in dirs.items():
                default = record["defaults"][prec][direction]
                print(f"fastest {prec} {direction}: "
                      + ", ".join(f"{layer} {v}" + ("" if default.get(layer) == v else f" (default {default.get(layer)})")
                                  for layer, v in per.items()))
    if not args.no_save:
        # conv2d-<gpu>-<date>-<HHMM>.json: the name notebooks/04_kernels.ipynb looks for (the
        # airbench networks' layers' runs of the same minute beside it, -airbench94, -airbench96)
        tag = f"-{args.layers}" if args.layers.startswith("airbench") else ""
        tag += "-nchw" if all(p.endswith("_nchw") for p in args.precisions) else ""
        name = f"conv2d-{common.slug(record['environment']['device'])}-{common.stamp(record['environment'])}{tag}.json"
        print(f"wrote {common.save_record(record, 'conv2d', filename=name)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
