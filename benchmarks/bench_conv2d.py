"""Validate, then time, every conv2d kernel variant at CIFAR layer sizes, against PyTorch/cuDNN.

    python benchmarks/bench_conv2d.py                 # GPU: batch 512, 3x3 convs, padding 1
    python benchmarks/bench_conv2d.py --json          # the same, one JSON document on stdout
    python benchmarks/bench_conv2d.py --validate-only --target sim   # no GPU: tiny layers, simulator

Each variant (v1: one thread per output, v2: 64x64-tile implicit GEMM, v3: 128x128-tile implicit
GEMM with 256 threads) of each direction (forward, backward-data, backward-weight),
as listed in ``gpuconv.kernels.VARIANTS``, is first checked against the float64 NumPy reference on a
4-image slice of the layer (full channel counts, so every tile edge of the real shape is hit),
then timed with CUDA events over --repeat launches after --warmup. PyTorch runs the same
shapes on the same GPU in fp32 with TF32 off (cudnn.benchmark on, so it picks its best
algorithm) when it is importable. Printed: ms per call, TFLOP/s (2*N*K*C*FH*FW*OH*OW per
direction) and the ratio to cuDNN, and per direction which variant was fastest on each layer
(the evidence for changing a default in gpuconv/kernels.py). v1 is timed over at most 3 calls
after 1 warm-up: one call takes tens of milliseconds at batch 512. ``--layers fast_net`` runs
every distinct conv of fast_net (a superset of the four CIFAR layers). Results go to
benchmarks/results/conv2d-<gpu>-<date>.json with the device, the date and the versions of
everything involved.
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # benchmarks/common.py

import common  # noqa: E402  (puts the checkout on sys.path too)
from common import cuda_time, environment, torch_module  # noqa: E402,F401  (shared; re-exported)
from gpuconv import backend as B  # noqa: E402
from gpuconv import kernels  # noqa: E402
from gpuconv.ops import _launch_conv2d as LC  # noqa: E402
from gpuconv.ops import conv2d as conv_ref  # noqa: E402

# (in channels, out channels, image size) of the CIFAR layers named in issue 3; 3x3, stride 1, pad 1.
CIFAR_LAYERS = [(3, 64, 32), (64, 128, 32), (128, 256, 16), (256, 512, 8)]
TINY_LAYERS = [(3, 4, 8), (4, 9, 6), (8, 16, 4), (16, 33, 2)]  # the simulator's stand-ins


def fast_net_layers(width=64):
    """The distinct 3x3 convolutions of ``fast_net(width)`` (a superset of CIFAR_LAYERS at width 64:
    it adds 128->128 @16 and 512->512 @4), the layers whose speed decides the training step."""
    import bench_ops  # here, not at the top: bench_ops imports this module
    return bench_ops.fast_net_shapes(width)[2]
DIRECTIONS = {"forward": "conv2d_forward", "backward_data": "conv2d_backward_data",
              "backward_weight": "conv2d_backward_weight"}
VARIANTS = tuple(dict.fromkeys(v for f in DIRECTIONS.values() for v in kernels.VARIANTS[f][0]))  # v1, v2, v3


def family_variants(family, variants=None):
    """The variants of ``family`` to run: all it has, or those of ``variants`` it has."""
    have = kernels.VARIANTS[family][0]
    return have if variants is None else tuple(v for v in variants if v in have)
STRIDE, PAD, FILT = (1, 1), (1, 1), 3
RESULTS = common.RESULTS


def flops(n, c, k, h):
    return 2.0 * n * k * c * FILT * FILT * h * h  # OH = OW = H at stride 1, padding 1


def make_layer(n, c, k, h, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    w = (rng.standard_normal((k, c, FILT, FILT)) / np.sqrt(c * FILT * FILT)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    dy = rng.standard_normal((n, k, h, h)).astype(np.float32)
    return x, w, b, dy


def run_direction(direction, x, w, b, dy, target):
    if direction == "forward":
        return LC.conv2d_forward_kernel(x, w, b, STRIDE, PAD, target=target)[0]
    if direction == "backward_data":
        return LC.conv2d_backward_data_kernel(dy, w, x.shape, STRIDE, PAD, target=target)
    return LC.conv2d_backward_weight_kernel(dy, x, w.shape, STRIDE, PAD, target=target)


def reference(direction, x, w, b, dy):
    """float64 NumPy: gpuconv's own reference path (im2col + BLAS), never a kernel."""
    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, w, b, dy))
    y, cache = conv_ref._conv2d_forward_reference(x64, w64, b64, STRIDE, PAD)
    if direction == "forward":
        return y
    dx, dw, _ = conv_ref._conv2d_backward_reference(dy64, cache)
    return dx if direction == "backward_data" else dw


def validate(layers, batch, target, variants=None):
    """Every variant and direction against NumPy; returns a list of failure strings (empty: all good)."""
    to = (lambda a: B.cupy_module().asarray(a)) if target == "cuda" else (lambda a: a)
    failures = []
    for c, k, h in layers:
        x, w, b, dy = make_layer(batch, c, k, h, seed=c + k)
        for direction, family in DIRECTIONS.items():
            ref = reference(direction, x, w, b, dy)
            reduction = {"forward": c * FILT * FILT, "backward_data": k * FILT * FILT,
                         "backward_weight": batch * h * h}[direction]
            for var in family_variants(family, variants):
                with kernels.use_variant(**{family: var}):
                    got = run_direction(direction, to(x), to(w), to(b), to(dy), target)
                got = got.get() if B.is_cupy_array(got) else got
                err = np.abs(got - ref) - (1e-4 * np.abs(ref) + 2e-6 * reduction)
                if got.shape != ref.shape or (err > 0).any():
                    failures.append(f"{c}->{k} at {h}x{h} {direction} {var}: max |error| "
                                    f"{np.abs(got - ref).max():.3g} beyond rtol 1e-4, atol {2e-6 * reduction:.3g}")
    return failures


def torch_calls(torch, x, w, b, dy):
    tx, tw, tb, tdy = (torch.from_dlpack(a) for a in (x, w, b, dy))
    F, grad = torch.nn.functional, torch.nn.grad
    return {"forward": lambda: F.conv2d(tx, tw, tb, stride=STRIDE, padding=PAD),
            "backward_data": lambda: grad.conv2d_input(tx.shape, tw, tdy, stride=STRIDE, padding=PAD),
            "backward_weight": lambda: grad.conv2d_weight(tx, tw.shape, tdy, stride=STRIDE, padding=PAD)}


def benchmark(batch, warmup, repeat, use_torch=True, layers=CIFAR_LAYERS, variants=None):
    """Rows of (layer, direction, variant) timings on the GPU, with cuDNN's beside each."""
    cp = B.cupy_module()
    torch = torch_module() if use_torch else None
    rows = []
    for c, k, h in layers:
        x, w, b, dy = (cp.asarray(a) for a in make_layer(batch, c, k, h))
        tcalls = torch_calls(torch, x, w, b, dy) if torch else {}
        for direction, family in DIRECTIONS.items():
            gflop = flops(batch, c, k, h) / 1e9
            t_ms = None
            if torch:
                with torch.no_grad():
                    t_ms = cuda_time(tcalls[direction], warmup, repeat)  # torch shares CuPy's null stream
            for var in family_variants(family, variants):
                # v1 (one thread per output) takes tens of ms per call at batch 512: few calls suffice.
                w_n, r_n = (min(warmup, 1), max(1, min(repeat, 3))) if var == "v1" else (warmup, repeat)
                with kernels.use_variant(**{family: var}):
                    ms = cuda_time(lambda: run_direction(direction, x, w, b, dy, "cuda"), w_n, r_n)
                rows.append({"layer": f"{c}->{k} @{h}x{h}", "batch": batch, "direction": direction, "variant": var,
                             "ms": ms, "tflops": gflop / ms, "torch_ms": t_ms,
                             "torch_tflops": gflop / t_ms if t_ms else None,
                             "speed_vs_torch": t_ms / ms if t_ms else None})
    return rows


def fastest(rows):
    """{direction: {layer: fastest variant}}: what the GPU says each default should be."""
    best = {}
    for r in rows:
        cur = best.setdefault(r["direction"], {}).get(r["layer"])
        if cur is None or r["ms"] < cur[1]:
            best[r["direction"]][r["layer"]] = (r["variant"], r["ms"])
    return {d: {layer: v for layer, (v, _) in per.items()} for d, per in best.items()}


def print_table(rows):
    print(f"{'layer':16s} {'direction':16s} {'var':3s} {'ms':>9s} {'TFLOP/s':>8s} {'cuDNN ms':>9s} "
          f"{'TFLOP/s':>8s} {'vs cuDNN':>8s}")
    for r in rows:
        t = (f"{r['torch_ms']:9.3f} {r['torch_tflops']:8.2f} {r['speed_vs_torch']:7.2f}x" if r["torch_ms"]
             else f"{'-':>9s} {'-':>8s} {'-':>8s}")
        print(f"{r['layer']:16s} {r['direction']:16s} {r['variant']:3s} {r['ms']:9.3f} {r['tflops']:8.2f} {t}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print the results as one JSON document")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch/cuDNN comparison")
    p.add_argument("--no-save", action="store_true", help=f"do not write a record under {RESULTS}")
    p.add_argument("--layers", choices=("cifar", "fast_net"), default="cifar",
                   help="cifar: the four layers of issue 3; fast_net: every distinct conv of fast_net (width 64)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                   help="variants to validate and time (default: every variant of every direction)")
    p.add_argument("--validate-only", action="store_true", help="check every variant against NumPy, time nothing")
    p.add_argument("--target", choices=("cuda", "sim"), default="cuda",
                   help="where --validate-only runs ('sim': tiny layers on the host simulator, no GPU needed)")
    args = p.parse_args(argv)

    if args.target == "sim":
        if not args.validate_only:
            p.error("--target sim only validates (the simulator is not a timing device): add --validate-only")
        failures = validate(TINY_LAYERS, 2, "sim", args.variants)
        print("\n".join(failures) or f"all conv2d variants match NumPy on {len(TINY_LAYERS)} tiny layers (simulator)")
        return 1 if failures else 0
    if not B.cuda_available():
        print(f"bench_conv2d: no usable GPU ({B.cuda_status()}). This benchmark times the CUDA kernels and "
              "needs one. Without a GPU, check its validation logic on the host simulator with:\n"
              "    python benchmarks/bench_conv2d.py --validate-only --target sim", file=sys.stderr)
        return 2

    layers = CIFAR_LAYERS if args.layers == "cifar" else fast_net_layers()
    failures = validate(layers, 4, "cuda", args.variants)
    if failures:
        print("validation failed; nothing timed:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    if args.validate_only:
        print("all conv2d variants match NumPy at the CIFAR layer sizes (4-image slices)")
        return 0
    rows = benchmark(args.batch, args.warmup, args.repeat, use_torch=not args.no_torch, layers=layers,
                     variants=args.variants)
    record = {"benchmark": "conv2d", "environment": environment(use_torch=not args.no_torch), "stride": STRIDE,
              "padding": PAD, "filter": FILT, "defaults": {d: kernels.variant(f) for d, f in DIRECTIONS.items()},
              "fastest": fastest(rows), "results": rows}
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"{record['environment']['device']}, batch {args.batch}, 3x3 pad 1, fp32 (TF32 off)")
        print_table(rows)
        for direction, per in record["fastest"].items():
            print(f"fastest {direction} (default {record['defaults'][direction]}): "
                  + ", ".join(f"{layer} {v}" for layer, v in per.items()))
    if not args.no_save:
        # conv2d-<gpu>-<date>.json: the name notebooks/04_kernels.ipynb looks for.
        name = f"conv2d-{common.slug(record['environment']['device'])}-{datetime.date.today().isoformat()}.json"
        print(f"wrote {common.save_record(record, 'conv2d', filename=name)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
