"""Validate, then time, the grouped and dilated convolution kernels (kernels/conv2d_grouped.cu) at the
depthwise layers of MobileNetV2 and the grouped 3x3s of ResNeXt29 (kuangliu/pytorch-cifar's CIFAR
networks, batch 128), against PyTorch/cuDNN on the same GPU.

    python benchmarks/bench_conv2d_grouped.py                    # GPU: batch 128, fp32 NCHW and bf16 channels_last
    python benchmarks/bench_conv2d_grouped.py --json --save      # the record on stdout and under results/
    python benchmarks/bench_conv2d_grouped.py --device sim --tiny   # no GPU: validation on the host simulator

Layers: every distinct depthwise 3x3 (groups = channels, padding 1, stride 1 or 2) of MobileNetV2
on 32x32 images, ResNeXt29_32x4d's grouped 3x3s (32 groups of 4, 8 and 16 channels), one
dilated 3x3 (dilation 2, padding 2), and ResNet-18's three stride-2 3x3s (dense, groups 1: their data
gradient is the tensor-core tiles' strided one, one GEMM per phase of the stride). Each layer and direction (forward with its bias, backward-data,
backward-weight) is first checked on a 2-image slice against the float64 NumPy reference of the
same operands (the precision's rounding of the inputs included), then timed with CUDA events (the
median of five groups of calls) beside cuDNN in the same precision and layout (F.conv2d and
torch.nn.grad's conv2d_input / conv2d_weight; cudnn.benchmark on, TF32 off). Printed per row:
ms, GB/s of the ideal traffic (each input read once, the output written once: a depthwise
convolution is memory-bound), TFLOP/s (2*N*K*C/G*FH*FW*OH*OW) and the speed ratio to cuDNN
(above 1: gpuconv faster).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import ml_dtypes
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402
import gpuconv  # noqa: E402
from gpuconv import layout  # noqa: E402
from gpuconv.ops import conv2d_backward, conv2d_forward  # noqa: E402
from gpuconv.ops import conv2d_grouped as CG  # noqa: E402

NAME = "bench_conv2d_grouped"
# (label, C, K, H, stride, groups, dilation); 3x3 filters, padding = dilation
MOBILENETV2 = [(f"mbv2 dw{c}@{h}{'/2' if s == 2 else ''}", c, c, h, s, c, 1)
               for c, h, s in [(32, 32, 1), (96, 32, 1), (144, 32, 1), (144, 32, 2), (192, 16, 1), (192, 16, 2),
                               (384, 8, 1), (576, 8, 1), (576, 8, 2), (960, 4, 1)]]
RESNEXT29 = [(f"resnext g32 {c}@{h}", c, c, h, 1, 32, 1) for c, h in [(128, 32), (256, 16), (512, 8)]]
DILATED = [("dilated d2 64@16", 64, 64, 16, 1, 1, 2)]
# ResNet-18's downsampling 3x3s (groups 1: the dense convolutions, whose data gradient runs per
# phase of the stride on the tensor cores)
RESNET18_STRIDED = [(f"resnet18 {c}->{k}@{h}/2", c, k, h, 2, 1, 1) for c, k, h in [(64, 128, 32), (128, 256, 16),
                                                                                  (256, 512, 8)]]
LAYERS = MOBILENETV2 + RESNEXT29 + DILATED + RESNET18_STRIDED
TINY_LAYERS = [("dw8@6", 8, 8, 6, 1, 8, 1), ("dw8@7/2", 8, 8, 7, 2, 8, 1), ("x2 dw4@5", 4, 8, 5, 1, 4, 1),
               ("g4 16@4", 16, 8, 4, 1, 4, 1), ("d2 4@6", 4, 4, 6, 1, 1, 2), ("s2 8->16@7/2", 8, 16, 7, 2, 1, 1)]
FULL_BATCH, TINY_BATCH, CHECK_BATCH = 128, 2, 2
# precision: (dtype, channels_last, validation tolerance relative to the output's scale)
PRECISIONS = {"fp32": (np.float32, False, 1e-5), "bf16": (ml_dtypes.bfloat16, True, 1e-2)}
DIRECTIONS = ("forward", "backward_data", "backward_weight")


def make(layer, batch, prec, seed=0):
    """Host x, w, b, dy and the convolution's keywords for ``layer`` in ``prec``'s dtype."""
    _, c, k, h, s, g, d = layer
    dtype = PRECISIONS[prec][0]
    rng = np.random.default_rng(seed)
    kw = dict(stride=s, padding=d, dilation=d, groups=g, floor=True)
    x = rng.standard_normal((batch, c, h, h)).astype(dtype)
    w = (rng.standard_normal((k, c // g, 3, 3)) / np.sqrt(c // g * 9)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    oh = (h + 2 * d - 2 * d - 1) // s + 1
    dy = rng.standard_normal((batch, k, oh, oh)).astype(dtype)
    return x, w, b, dy, kw


def on_device(arrays, args, channels_last):
    """x, w, b, dy on the benchmark's device, x and dy channels_last when the precision runs so."""
    x, w, b, dy = (common.to_dev(a, args) for a in arrays)
    if channels_last:
        x, dy = layout.to_channels_last(x), layout.to_channels_last(dy)
    return x, w, b, dy


def calls(x, w, b, dy, kw):
    """gpuconv's three directions (the backward ones on a bias-free cache: no bias gradient timed)."""
    _, cache = conv2d_forward(x, w, None, **kw)
    return {"forward": lambda: conv2d_forward(x, w, b, **kw)[0],
            "backward_data": lambda: conv2d_backward(dy, cache, need_dw=False)[0],
            "backward_weight": lambda: conv2d_backward(dy, cache, need_dx=False)[1]}


def torch_calls(torch, x, w, b, dy, kw, prec):
    if prec == "bf16":  # DLPack has no bfloat16 in every version: hand the bits over
        tx, tw, tb, tdy = (torch.from_dlpack(a.view(np.uint16)).view(torch.bfloat16) for a in (x, w, b, dy))
    else:
        tx, tw, tb, tdy = (torch.from_dlpack(a) for a in (x, w, b, dy))
    if PRECISIONS[prec][1]:
        tx, tw, tdy = (t.contiguous(memory_format=torch.channels_last) for t in (tx, tw, tdy))
    F, grad = torch.nn.functional, torch.nn.grad
    conv = dict(stride=kw["stride"], padding=kw["padding"], dilation=kw["dilation"], groups=kw["groups"])
    return {"forward": lambda: F.conv2d(tx, tw, tb, **conv),
            "backward_data": lambda: grad.conv2d_input(tx.shape, tw, tdy, **conv),
            "backward_weight": lambda: grad.conv2d_weight(tx, tw.shape, tdy, **conv)}


def validate(checks, layers, args, precisions):
    """Each direction of each layer on a CHECK_BATCH slice against the float64 reference."""
    for layer in layers:
        for prec in precisions:
            dtype, cl, tol = PRECISIONS[prec]
            x, w, b, dy, kw = make(layer, CHECK_BATCH, prec, seed=1)
            f64 = [a.astype(np.float64) for a in (x, w, b, dy)]
            with gpuconv.default_device("cpu"):
                ry, rcache = conv2d_forward(*f64[:3], **kw)
                rdx, rdw, _ = conv2d_backward(f64[3], rcache)
            X, W, Bb, DY = on_device((x, w, b, dy), args, cl)
            got = {d: fn() for d, fn in calls(X, W, Bb, DY, kw).items()}
            for d, want in zip(DIRECTIONS, (ry, rdx, rdw)):  # (error relative to the output's scale)
                checks.close(f"{layer[0]} {prec} {d}", common.host(got[d]).astype(np.float64), want, tol)


def traffic(layer, batch, itemsize, oh):
    """Bytes each direction must move at least: its inputs read once, its output written once."""
    _, c, k, h, s, g, d = layer
    x, y, w = batch * c * h * h, batch * k * oh * oh, k * (c // g) * 9
    return {"forward": (x + w + k + y) * itemsize, "backward_data": (y + w + x) * itemsize,
            "backward_weight": (x + y + w) * itemsize}


def benchmark(args, layers, batch, precisions, torch):
    rows = []
    for layer in layers:
        for prec in precisions:
            dtype, cl, _ = PRECISIONS[prec]
            x, w, b, dy, kw = make(layer, batch, prec)
            X, W, Bb, DY = on_device((x, w, b, dy), args, cl)
            ours = calls(X, W, Bb, DY, kw)
            theirs = torch_calls(torch, X, W, Bb, DY, kw, prec) if torch is not None else {}
            _, c, k, h, s, g, d = layer
            oh = dy.shape[2]
            flop = 2 * batch * k * (c // g) * 9 * oh * oh
            nbytes = traffic(layer, batch, np.dtype(dtype).itemsize, oh)
            for direction in DIRECTIONS:
                ms = common.timed(ours[direction], args)
                torch_ms = common.timed(theirs[direction], args) if direction in theirs else None
                rows.append({"layer": layer[0], "precision": prec, "direction": direction, "batch": batch,
                             "channels": c, "filters": k, "size": h, "stride": s, "groups": g, "dilation": d,
                             "ms": ms, "torch_ms": torch_ms, "bytes": nbytes[direction], "flop": flop,
                             "gbs": common.ratio(nbytes[direction] / 1e6, ms),
                             "tflops": common.ratio(flop / 1e9, ms), "vs_cudnn": common.ratio(torch_ms, ms)})
    return rows


def table(rec):
    common.print_table(rec["results"], [("layer", "layer", ""), ("precision", "prec", ""),
                                        ("direction", "direction", ""), ("ms", "ms", ".3f"),
                                        ("gbs", "GB/s", ".0f"), ("tflops", "TFLOP/s", ".2f"),
                                        ("torch_ms", "cuDNN ms", ".3f"), ("vs_cudnn", "vs cuDNN", ".2f")],
                       title=f"grouped/dilated conv2d, batch {rec['batch']} (vs cuDNN: above 1 is faster)")


def main(argv=None):
    p = common.add_arguments(argparse.ArgumentParser(description=common.description(__doc__)), warmup=3, repeat=20)
    p.add_argument("--precisions", nargs="+", choices=tuple(PRECISIONS), default=list(PRECISIONS))
    p.add_argument("--batch", type=int, default=None, help=f"images per batch (default {FULL_BATCH}; "
                                                           f"{TINY_BATCH} with --tiny)")
    args = common.parse(p, argv)
    rc = common.require_device(NAME, args)
    if rc is not None:
        return rc
    layers = TINY_LAYERS if args.tiny else LAYERS
    batch = args.batch or (TINY_BATCH if args.tiny else FULL_BATCH)
    checks = common.Checks()
    with common.device_context(args):
        validate(checks, layers, args, args.precisions)
        if not checks.passed:
            return common.failed_validation(NAME, checks, args)
        rows = benchmark(args, layers, batch, args.precisions, common.torch_module(args))
    rec = common.record(NAME, args, checks, rows, batch=batch)
    return common.finish(rec, args, table)


if __name__ == "__main__":
    sys.exit(main())
