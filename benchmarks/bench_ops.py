"""Per-op benchmark at the layer sizes of fast_net: pooling and ReLU as achieved GB/s against a
device-to-device copy of the same bytes, and conv2d forward / backward-data / backward-weight per
layer against cuDNN.

    python benchmarks/bench_ops.py                    # GPU: fast_net (width 64), batch 512
    python benchmarks/bench_ops.py --json --save      # the record on stdout and under results/
    python benchmarks/bench_ops.py --device sim --tiny   # no GPU: validation on the host simulator

Shapes come from walking ``gpuconv.models.fast_net(width)``: every distinct ReLU input, max-pool
input (2x2 and the final 4x4) and 3x3 convolution. Validation first: ReLU and max pooling
forward and backward must equal the NumPy reference bit for bit (on 4-image slices of each
shape), and the convolutions pass ``bench_conv2d.validate`` (float64 reference, every variant).
Then CUDA events time each op after warm-up. Bytes counted are the ideal traffic: ReLU forward
reads x and writes y, backward reads dy and x and writes dx; max pooling forward reads x and
writes y and the int32 switches, backward reads dy and the switches and writes dx; batch norm
(training, at every ReLU input: in fast_net each follows a batch norm of the same shape; float32
NCHW and bfloat16 channels_last, the training step's precision and layout) forward reads x once
and writes y, backward reads dy and x (the cache keeps x, not a float32 xhat) and writes dx (the
kernels read x three times in the forward and dy and x twice in the backward: vs copy shows what
the two-pass reductions cost); group norm likewise (at the same shapes and cases, 32 groups or
as many as the channels allow, gcd(32, C): GroupNorm(32, C) of small-batch ResNets; its kernels
read x three times in the forward and dy and x twice in the backward), against PyTorch's
native_group_norm and its backward on the same GPU; the channel gate of a squeeze-and-excitation
block (y = gate * x, one gate value per (n, c); at the same shapes and cases) forward reads x and
writes y, its gate gradient reads dy and x, its data gradient (the pool's gradient added per
plane, ``pooled=``) reads dy and writes dx, against PyTorch's ``x * gate``, ``(dy * x).sum((2, 3))``
and ``dy * gate``. The copy
baseline is ``cudaMemcpyAsync`` device-to-device moving the same bytes (half read, half written);
the issue's target is >= 80% of it. The loss (softmax cross-entropy, airbench94's logits) is
timed as one launch, as the array form it replaced and as PyTorch's forward + backward: at 10
classes all three are launch-bound, and each row's host_ms says how much. Convolutions report TFLOP/s (2*N*K*C*9*H*W per direction,
fp32, TF32 off on both sides) and the speed ratio to cuDNN, per direction and per layer
(forward + both backwards; target >= 0.8x).
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys

import ml_dtypes
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_conv2d  # noqa: E402
import common  # noqa: E402
import gpuconv  # noqa: E402
from gpuconv import models  # noqa: E402
from gpuconv import layers as L  # noqa: E402
from gpuconv.ops import _launch_batchnorm as LB  # noqa: E402
from gpuconv.ops import _launch_channel_gate as LCGATE  # noqa: E402
from gpuconv.ops import _launch_groupnorm as LGN  # noqa: E402
from gpuconv.ops import _launch_lp_pool2d as LPL  # noqa: E402
from gpuconv.ops import _launch_pool2d as LP  # noqa: E402
from gpuconv.ops import _launch_relu as LR  # noqa: E402
from gpuconv.ops import batchnorm as BN  # noqa: E402
from gpuconv.ops import channel_gate as CGATE  # noqa: E402
from gpuconv.ops import groupnorm as GN  # noqa: E402
from gpuconv.ops import lp_pool2d as LPP  # noqa: E402
from gpuconv.ops import _pool2d_reference as P  # noqa: E402
from gpuconv.ops import relu as R  # noqa: E402

NAME = "bench_ops"
FULL = {"width": 64, "batch": 512}
TINY = {"width": 1, "batch": 2}
CHECK_BATCH = 4  # images per validation slice (full channel and spatial sizes)
# Batch norm: (dtype, channels_last) per timed case; float32 NCHW as the other rows, and the
# bfloat16 channels_last of the training step.
BN_CASES = ((np.float32, False), (ml_dtypes.bfloat16, True))


# ----------------------------------------------------------------------------- shapes
def fast_net_shapes(width):
    """Distinct per-image shapes of fast_net's ops: relu [(C, H, W)], pool [((C, H, W), k)],
    conv [(C_in, C_out, H)] (bench_conv2d.fast_net_layers: all are 3x3, stride 1, padding 1)."""
    relu, pool = [], []

    def walk(layer, shape):
        if isinstance(layer, L.Sequential):
            for child in layer.children():
                shape = walk(child, shape)
            return shape
        if isinstance(layer, L.Residual):
            walk(layer.inner, shape)
            return shape
        c, h, w = shape
        if isinstance(layer, L.Conv2d):
            if (layer.kernel_size, layer.stride, layer.padding) != ((3, 3), (1, 1), (1, 1)):
                raise ValueError(f"fast_net has a conv other than 3x3/1/1: {layer}")
            return (layer.out_channels, h, w)
        if isinstance(layer, L.MaxPool2d):
            ks = layer.kernel_size if isinstance(layer.kernel_size, tuple) else (layer.kernel_size,) * 2
            if ks[0] != ks[1] or layer.stride not in (None, ks[0], ks):
                raise ValueError(f"fast_net has a pooling other than k x k, stride k: {layer}")
            k = int(ks[0])
            pool.append((shape, k))
            return (c, h // k, w // k)
        if isinstance(layer, L.ReLU) or (isinstance(layer, L.BatchNorm2d) and layer.activation == "relu"):
            relu.append(shape)  # fast_net's ReLUs are its batch norms' fused activations
        return shape  # batch norm, flatten, linear, scale: not benchmarked here

    walk(models.fast_net(width=width), (3, 32, 32))
    uniq = lambda xs: list(dict.fromkeys(xs))  # noqa: E731  (order kept)
    return uniq(relu), uniq(pool), bench_conv2d.fast_net_layers(width)


def relu_bytes(shape, direction):
    return (2 if direction == "forward" else 3) * int(np.prod(shape)) * 4


def pool_bytes(shape, k, direction, itemsize=4):
    """Ideal traffic, the same both ways: x (or dx) and y (or dy) in the data type, the int32 switches."""
    n, c, h, w = shape
    return (n * c * h * w + n * c * (h // k) * (w // k)) * itemsize + n * c * (h // k) * (w // k) * 4


def lp_pool_bytes(shape, k, direction):
    n, c, h, w = shape
    big, small = n * c * h * w, n * c * (h // k) * (w // k)
    # forward reads x, writes y; backward reads dy, x, y and writes dx
    return (big + small if direction == "forward" else 2 * big + 2 * small) * 4


# ----------------------------------------------------------------------------- validation
def validate(args, relu_shapes, pool_shapes, conv_layers, checks):
    target = args.device
    rng = np.random.default_rng(0)
    batch = CHECK_BATCH if not args.tiny else TINY["batch"]
    for shape in relu_shapes:
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        y, cache = LR.relu_forward_kernel(common.to_dev(x, args), target=target)
        ry, rcache = R._relu_forward_reference(x)
        checks.exact(f"relu forward {shape}", y, ry)
        dx = LR.relu_backward_kernel(common.to_dev(dy, args), cache, target=target)
        checks.exact(f"relu backward {shape}", dx, R._relu_backward_reference(dy, rcache))
    for shape, k in pool_shapes:
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        y, cache = LP.max_pool2d_forward_kernel(common.to_dev(x, args), (k, k), (k, k), target=target)
        ry, rcache = P._max_pool2d_forward_reference(x, (k, k), (k, k))
        checks.exact(f"max_pool{k} forward {shape}", y, ry)
        checks.exact(f"max_pool{k} switches {shape}", cache.argmax, rcache.argmax)
        dy = rng.standard_normal(ry.shape).astype(np.float32)
        dx = LP.max_pool2d_backward_kernel(common.to_dev(dy, args), cache, target=target)
        checks.exact(f"max_pool{k} backward {shape}", dx, P._max_pool2d_backward_reference(dy, rcache))
        # bfloat16 channels_last, as mixed precision runs it (the _vec kernels where C allows)
        xb, dyb = x.astype(ml_dtypes.bfloat16), dy.astype(ml_dtypes.bfloat16)
        y, cache = LP.max_pool2d_forward_kernel(gpuconv.to_channels_last(common.to_dev(xb, args)), (k, k), (k, k),
                                                target=target)
        rby, rbcache = P._max_pool2d_forward_reference(xb, (k, k), (k, k))
        checks.exact(f"max_pool{k} bf16 channels_last forward {shape}", y, rby)
        dx = LP.max_pool2d_backward_kernel(gpuconv.to_channels_last(common.to_dev(dyb, args)), cache, target=target)
        checks.exact(f"max_pool{k} bf16 channels_last backward {shape}", dx,
                     P._max_pool2d_backward_reference(dyb, rbcache))
        y, cache = LPL.lp_pool2d_forward_kernel(common.to_dev(x, args), 2.0, (k, k), (k, k), target=target)
        ry, rcache = LPP._lp_pool2d_forward_reference(x, 2.0, (k, k), (k, k))
        checks.close(f"lp_pool{k} (L2) forward {shape}", y, ry, 1e-6)
        dx = LPL.lp_pool2d_backward_kernel(common.to_dev(dy, args), cache, target=target)
        checks.close(f"lp_pool{k} (L2) backward {shape}", dx, LPP._lp_pool2d_backward_reference(dy, rcache), 1e-5)
    for shape in relu_shapes:  # batch norm at the same shapes (fast_net: conv -> batch norm -> ReLU)
        for dtype, cl in BN_CASES:
            x = rng.standard_normal((batch, *shape)).astype(dtype)
            dy = rng.standard_normal(x.shape).astype(dtype)
            c = shape[0]
            g, b = np.ones(c, np.float32), np.zeros(c, np.float32)
            X, DY = (gpuconv.to_channels_last(common.to_dev(a, args)) if cl else common.to_dev(a, args)
                     for a in (x, dy))
            y, cache = LB.batchnorm2d_forward_kernel(X, common.to_dev(g, args), common.to_dev(b, args), None, None,
                                                     True, 0.1, 1e-5, target=target)
            ry, rcache = BN._batchnorm2d_forward_reference(x, g, b, None, None, True, 0.1, 1e-5)
            rtol = 1e-5 if dtype == np.float32 else 2.0 ** -7  # statistics summed in another order; bf16 y
            tag = f"batchnorm {np.dtype(dtype).name}{' channels_last' if cl else ''}"
            checks.close(f"{tag} forward {shape}", y, ry, rtol)
            dx, _, _ = LB.batchnorm2d_backward_kernel(DY, cache, target=target)
            checks.close(f"{tag} backward {shape}", dx, BN._batchnorm2d_backward_reference(dy, rcache)[0], 10 * rtol)
    for shape in relu_shapes:  # group norm at the same shapes and cases (the rows timed below)
        for dtype, cl in BN_CASES:
            x = (rng.standard_normal((batch, *shape)) + 3).astype(dtype)
            dy = rng.standard_normal(x.shape).astype(dtype)
            c, groups = shape[0], math.gcd(32, shape[0])
            w, b = rng.uniform(0.5, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
            X, DY = (gpuconv.to_channels_last(common.to_dev(a, args)) if cl else common.to_dev(a, args)
                     for a in (x, dy))
            y, cache = LGN.groupnorm_forward_kernel(X, groups, common.to_dev(w, args), common.to_dev(b, args), 1e-5,
                                                    target=target)
            ry, rcache = GN._groupnorm_forward_reference(x, groups, w, b, 1e-5)
            rtol = 1e-5 if dtype == np.float32 else 2.0 ** -7  # statistics summed in another order; bf16 y
            tag = f"groupnorm G={groups} {np.dtype(dtype).name}{' channels_last' if cl else ''}"
            checks.close(f"{tag} forward {shape}", y, ry, rtol)
            dx, dw, db = LGN.groupnorm_backward_kernel(DY, cache, target=target)
            rdx, rdw, rdb = GN._groupnorm_backward_reference(dy, rcache)
            checks.close(f"{tag} backward dx {shape}", dx, rdx, 10 * rtol)
            checks.close(f"{tag} backward dweight {shape}", dw, rdw, 1e-4)
    for shape in relu_shapes:  # the channel gate at the same shapes and cases: the reference's bits
        for dtype, cl in BN_CASES:
            x, dy = (rng.standard_normal((batch, *shape)).astype(dtype) for _ in range(2))
            gate, pooled = (rng.uniform(0, 1, (batch, shape[0], 1, 1)).astype(dtype) for _ in range(2))
            X, DY = (gpuconv.to_channels_last(common.to_dev(a, args)) if cl else common.to_dev(a, args)
                     for a in (x, dy))
            tag = f"channel_gate {np.dtype(dtype).name}{' channels_last' if cl else ''}"
            y, cache = LCGATE.channel_gate_forward_kernel(X, common.to_dev(gate, args), target=target)
            ry, rcache = CGATE._channel_gate_forward_reference(x, gate)
            checks.exact(f"{tag} forward {shape}", y, ry)
            dgate = LCGATE.channel_gate_backward_gate_kernel(DY, cache, target=target)
            checks.exact(f"{tag} gate gradient {shape}", dgate, CGATE._channel_gate_backward_gate_reference(dy, rcache))
            dx = LCGATE.channel_gate_backward_data_kernel(DY, cache, None, common.to_dev(pooled, args), target=target)
            checks.exact(f"{tag} data gradient {shape}", dx,
                         CGATE._channel_gate_backward_data_reference(dy, rcache, None, pooled))
    for shape in relu_shapes:  # the layout conversions (kernels/layout.cu on a GPU): values as bits
        for dtype in (np.float32, ml_dtypes.bfloat16):
            x = rng.standard_normal((4, *shape)).astype(dtype)
            last = gpuconv.to_channels_last(common.to_dev(x, args))
            bits = [np.ascontiguousarray(common.host(a)).view(np.uint8) for a in (last, gpuconv.to_contiguous(last))]
            same = all(np.array_equal(b, x.view(np.uint8)) for b in bits)
            checks.add(f"layout {np.dtype(dtype).name} {(4, *shape)} both ways", same and gpuconv.layout.nhwc_memory(last))
    failures = bench_conv2d.validate(conv_layers, batch, target)
    checks.add(f"conv2d every variant and direction on {len(conv_layers)} layers (bench_conv2d.validate)",
               not failures, detail="; ".join(failures) or None)


# ----------------------------------------------------------------------------- timing
def copy_gbs(nbytes, args):
    """GB/s of a device-to-device copy moving ``nbytes`` (nbytes/2 read + nbytes/2 written)."""
    xp = common.xp_of(args)
    half = max(1, nbytes // 2)
    src, dst = xp.empty(half, dtype=np.uint8), xp.empty(half, dtype=np.uint8)
    if args.device == "cuda":
        copy = lambda: dst.data.copy_from_device_async(src.data, half)  # noqa: E731
    else:
        copy = lambda: np.copyto(dst, src)  # noqa: E731
    ms = common.timed(copy, args)
    return 2 * half / ms / 1e6 if ms else None


def memory_rows(args, relu_shapes, pool_shapes, batch, torch):
    rng = np.random.default_rng(1)
    rows = []
    target = args.device
    for shape in relu_shapes:
        x = common.to_dev(rng.standard_normal((batch, *shape)).astype(np.float32), args)
        dy = common.to_dev(rng.standard_normal((batch, *shape)).astype(np.float32), args)
        _, cache = LR.relu_forward_kernel(x, target=target)
        calls = {"forward": lambda: LR.relu_forward_kernel(x, target=target),
                 "backward": lambda: LR.relu_backward_kernel(dy, cache, target=target)}
        tcalls = {}
        if torch is not None:
            tx, tdy = torch.from_dlpack(x), torch.from_dlpack(dy)
            tcalls = {"forward": lambda: torch.relu(tx),
                      "backward": lambda: torch.ops.aten.threshold_backward(tdy, tx, 0)}
        for direction, fn in calls.items():
            rows.append(_memory_row(f"relu {direction}", (batch, *shape), relu_bytes((batch, *shape), direction),
                                    fn, tcalls.get(direction), args))
    for shape, k in pool_shapes:
        full = (batch, *shape)
        x = common.to_dev(rng.standard_normal(full).astype(np.float32), args)
        tx = torch.from_dlpack(x) if torch is not None else None
        rows += _max_pool_rows(x, tx, k, "", args, torch)
        # mixed precision's layout: bfloat16, channels_last (the torch side as its users run it)
        rows += _max_pool_rows(*_bf16_channels_last(x, tx, torch, args), k, " bf16 cl", args, torch)
        dy = common.xp_of(args).ones((batch, shape[0], shape[1] // k, shape[2] // k), np.float32)
        y, cache = LPL.lp_pool2d_forward_kernel(x, 2.0, (k, k), (k, k), target=target)
        calls = {"forward": lambda: LPL.lp_pool2d_forward_kernel(x, 2.0, (k, k), (k, k), target=target),
                 "backward": lambda: LPL.lp_pool2d_backward_kernel(dy, cache, target=target)}
        tcalls = {"forward": lambda: torch.nn.functional.lp_pool2d(tx, 2.0, k, k)} if torch is not None else {}
        for direction, fn in calls.items():
            rows.append(_memory_row(f"lp_pool{k} {direction}", full, lp_pool_bytes(full, k, direction), fn,
                                    tcalls.get(direction), args))
    rows += loss_rows(args, 2 * batch, torch)
    if not args.tiny:  # airbench94's first pool: 64 x 31 x 31 -> 15 x 15 in floor mode, batch 1024
        x = common.to_dev(rng.standard_normal((1024, 64, 31, 31)).astype(np.float32), args)
        tx = torch.from_dlpack(x) if torch is not None else None
        rows += _max_pool_rows(*_bf16_channels_last(x, tx, torch, args), 2, " bf16 cl floor", args, torch, floor=True)
    return rows


def loss_rows(args, n, torch):
    """Softmax cross-entropy with airbench94's smoothing on (n, 10) bfloat16 logits (the airbench94
    step's, batch 1024 at the default batch): loss and dlogits, the one-launch kernel against the
    array form (CuPy's elementwise operations and reductions, what ran before the kernel) and
    PyTorch's cross_entropy forward + backward. Bytes: the logits read and dlogits written."""
    from gpuconv.ops import _launch_loss as LL  # noqa: PLC0415
    from gpuconv.ops import loss as L  # noqa: PLC0415
    rng = np.random.default_rng(3)
    z = common.to_dev(rng.standard_normal((n, 10)).astype(ml_dtypes.bfloat16), args)
    y = common.to_dev(rng.integers(0, 10, n), args)
    nbytes = 2 * int(z.nbytes)
    tfn = None
    if torch is not None:
        tz = torch.from_dlpack(common.to_dev(common.host(z).astype(np.float32), args)).to(torch.bfloat16)
        tz.requires_grad_(True)
        ty = torch.from_dlpack(y)
        tfn = lambda: torch.autograd.grad(  # noqa: E731
            torch.nn.functional.cross_entropy(tz.float(), ty, label_smoothing=0.2), tz)
    return [_memory_row("softmax_xent bf16", (n, 10), nbytes,
                        lambda: LL.softmax_cross_entropy_kernel(z, y, 0.2, target=args.device), tfn, args),
            _memory_row("softmax_xent bf16 (array form)", (n, 10), nbytes,
                        lambda: L._softmax_cross_entropy_reference(z, y, 0.2), tfn, args)]


def _bf16_channels_last(x, tx, torch, args):
    """float32 ``x`` (and PyTorch's ``tx``) as bfloat16 channels_last (the torch side converted
    there, as bfloat16 through DLPack is not in every version)."""
    xb = gpuconv.to_channels_last(common.to_dev(common.host(x).astype(ml_dtypes.bfloat16), args))
    return xb, (tx.to(torch.bfloat16).contiguous(memory_format=torch.channels_last) if tx is not None else None)


def _max_pool_rows(x, tx, k, label, args, torch, floor=False):
    """Forward and backward rows of a k x k max pool of ``x`` (float32 NCHW or bfloat16
    channels_last; ``floor``: PyTorch's size rule), PyTorch's on ``tx`` (the same values, dtype
    and layout; None: no torch)."""
    target, full = args.device, tuple(x.shape)
    y, cache = LP.max_pool2d_forward_kernel(x, (k, k), (k, k), floor, target=target)
    dy = gpuconv.layout.like(x, common.xp_of(args).ones(y.shape, x.dtype))
    calls = {"forward": lambda: LP.max_pool2d_forward_kernel(x, (k, k), (k, k), floor, target=target),
             "backward": lambda: LP.max_pool2d_backward_kernel(dy, cache, target=target)}
    tcalls = {}
    if tx is not None:
        tdy = torch.ones_like(torch.nn.functional.max_pool2d(tx, k, k))
        _, tidx = torch.nn.functional.max_pool2d(tx, k, k, return_indices=True)
        tcalls = {"forward": lambda: torch.nn.functional.max_pool2d(tx, k, k, return_indices=True),
                  "backward": lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                      tdy, tx, [k, k], [k, k], [0, 0], [1, 1], False, tidx)}
    return [_memory_row(f"max_pool{k}{label} {direction}", full, pool_bytes(full, k, direction, x.itemsize), fn,
                        tcalls.get(direction), args) for direction, fn in calls.items()]


def batchnorm_bytes(shape, dtype, direction):
    """Ideal traffic: forward reads x, writes y; backward reads dy and x (xhat is recomputed from
    x), writes dx (the per-channel vectors are negligible)."""
    return int(np.prod(shape)) * (2 if direction == "forward" else 3) * np.dtype(dtype).itemsize


def batchnorm_rows(args, relu_shapes, batch, torch):
    rng = np.random.default_rng(2)
    rows, target = [], args.device
    for shape in relu_shapes:
        full, c = (batch, *shape), shape[0]
        for dtype, cl in BN_CASES:
            x = common.to_dev(rng.standard_normal(full).astype(dtype), args)
            dy = common.to_dev(rng.standard_normal(full).astype(dtype), args)
            if cl:
                x, dy = gpuconv.to_channels_last(x), gpuconv.to_channels_last(dy)
            g, b = common.to_dev(np.ones(c, np.float32), args), common.to_dev(np.zeros(c, np.float32), args)
            rm, rv = common.to_dev(np.zeros(c, np.float32), args), common.to_dev(np.ones(c, np.float32), args)
            fwd = lambda: LB.batchnorm2d_forward_kernel(x, g, b, rm, rv, True, 0.1, 1e-5, target=target)  # noqa: E731
            _, cache = fwd()
            calls = {"forward": fwd, "backward": lambda: LB.batchnorm2d_backward_kernel(dy, cache, target=target)}
            tcalls = {}
            if torch is not None and dtype == np.float32:  # bfloat16 through DLPack: not every version
                tx, tg, tb = torch.from_dlpack(x), torch.from_dlpack(g), torch.from_dlpack(b)
                trm, trv = torch.from_dlpack(rm.copy()), torch.from_dlpack(rv.copy())
                tcalls = {"forward": lambda: torch.nn.functional.batch_norm(tx, trm, trv, tg, tb,
                                                                            training=True)}
            name = f"batchnorm {'bf16 cl' if cl else 'fp32'} {{}}"
            for direction, fn in calls.items():
                rows.append(_memory_row(name.format(direction), full, batchnorm_bytes(full, dtype, direction), fn,
                                        tcalls.get(direction), args))
    return rows


def groupnorm_rows(args, relu_shapes, batch, torch):
    """Group norm forward and backward at the ReLU shapes, GroupNorm(gcd(32, C), C), against
    PyTorch's native_group_norm and native_group_norm_backward (float32: bfloat16 through DLPack is
    not in every version). Bytes as batch norm's (:func:`batchnorm_bytes`)."""
    rng = np.random.default_rng(3)
    rows, target = [], args.device
    for shape in relu_shapes:
        full, c, groups = (batch, *shape), shape[0], math.gcd(32, shape[0])
        for dtype, cl in BN_CASES:
            x = common.to_dev(rng.standard_normal(full).astype(dtype), args)
            dy = common.to_dev(rng.standard_normal(full).astype(dtype), args)
            if cl:
                x, dy = gpuconv.to_channels_last(x), gpuconv.to_channels_last(dy)
            w, b = common.to_dev(np.ones(c, np.float32), args), common.to_dev(np.zeros(c, np.float32), args)
            fwd = lambda: LGN.groupnorm_forward_kernel(x, groups, w, b, 1e-5, target=target)  # noqa: E731
            _, cache = fwd()
            calls = {"forward": fwd, "backward": lambda: LGN.groupnorm_backward_kernel(dy, cache, target=target)}
            tcalls = {}
            if torch is not None and dtype == np.float32:
                tx, tdy, tw, tb = (torch.from_dlpack(a) for a in (x, dy, w, b))
                hw = int(np.prod(shape[1:]))
                _, tmean, trstd = torch.ops.aten.native_group_norm(tx, tw, tb, batch, c, hw, groups, 1e-5)
                tcalls = {"forward": lambda: torch.ops.aten.native_group_norm(tx, tw, tb, batch, c, hw, groups, 1e-5),
                          "backward": lambda: torch.ops.aten.native_group_norm_backward(
                              tdy, tx, tmean, trstd, tw, batch, c, hw, groups, [True, True, True])}
            name = f"groupnorm G={groups} {'bf16 cl' if cl else 'fp32'} {{}}"
            for direction, fn in calls.items():
                rows.append(_memory_row(name.format(direction), full, batchnorm_bytes(full, dtype, direction), fn,
                                        tcalls.get(direction), args))
    return rows


def channel_gate_rows(args, relu_shapes, batch, torch):
    """The channel gate's three kernels at the ReLU shapes (a squeeze-and-excitation block's gate
    on every activation), against PyTorch's array forms (float32). Bytes: two activation-sized
    arrays each (the (N, C) gates negligible)."""
    rng = np.random.default_rng(4)
    rows, target = [], args.device
    for shape in relu_shapes:
        full = (batch, *shape)
        for dtype, cl in BN_CASES:
            x, dy = (common.to_dev(rng.standard_normal(full).astype(dtype), args) for _ in range(2))
            if cl:
                x, dy = gpuconv.to_channels_last(x), gpuconv.to_channels_last(dy)
            gate, pooled = (common.to_dev(rng.uniform(0, 1, (batch, shape[0], 1, 1)).astype(dtype), args)
                            for _ in range(2))
            fwd = lambda: LCGATE.channel_gate_forward_kernel(x, gate, target=target)  # noqa: E731
            _, cache = fwd()
            calls = {"forward": fwd,
                     "gate gradient": lambda: LCGATE.channel_gate_backward_gate_kernel(dy, cache, target=target),
                     "data gradient": lambda: LCGATE.channel_gate_backward_data_kernel(dy, cache, None, pooled,
                                                                                       target=target)}
            tcalls = {}
            if torch is not None and dtype == np.float32:
                tx, tdy, tg = (torch.from_dlpack(a) for a in (x, dy, gate))
                tcalls = {"forward": lambda: tx * tg, "gate gradient": lambda: (tdy * tx).sum((2, 3)),
                          "data gradient": lambda: tdy * tg}
            name = f"channel_gate {'bf16 cl' if cl else 'fp32'} {{}}"
            nbytes = 2 * int(np.prod(full)) * np.dtype(dtype).itemsize
            for direction, fn in calls.items():
                rows.append(_memory_row(name.format(direction), full, nbytes, fn, tcalls.get(direction), args))
    return rows


def layout_rows(args, relu_shapes, batch, torch):
    """The memory-layout conversions at the first three ReLU shapes (an NCHW activation fed to the tensor-core
    convolutions, their output returned to NCHW), float32 and bfloat16: to_channels_last and
    to_contiguous (kernels/layout.cu on a GPU) against CuPy's transposing copy (what ran before the
    kernel) and PyTorch's ``contiguous(memory_format=...)``. Bytes: the array read and written."""
    rng = np.random.default_rng(5)
    rows, xp = [], common.xp_of(args)
    for shape in relu_shapes[:3]:  # (the largest maps: the rows' time is the battery's)
        full = (batch, *shape)
        for dtype in (np.float32, ml_dtypes.bfloat16):
            x = common.to_dev(rng.standard_normal(full).astype(dtype), args)
            last = gpuconv.to_channels_last(x)
            name = f"layout {np.dtype(dtype).name} {{}}"
            tx = tlast = None
            if torch is not None:
                tx = torch.from_dlpack(common.to_dev(common.host(x).astype(np.float32), args))
                tx = tx.to(torch.bfloat16) if dtype != np.float32 else tx
                tlast = tx.contiguous(memory_format=torch.channels_last)
            nbytes = 2 * int(x.nbytes)
            rows.append(_memory_row(name.format("to channels_last"), full, nbytes,
                                    lambda: gpuconv.to_channels_last(x),
                                    (lambda: tx.contiguous(memory_format=torch.channels_last)) if tx is not None
                                    else None, args))
            rows.append(_memory_row(name.format("to channels_last (CuPy's copy)"), full, nbytes,
                                    lambda: xp.ascontiguousarray(x.transpose(0, 2, 3, 1)), None, args))
            rows.append(_memory_row(name.format("to NCHW"), full, nbytes, lambda: gpuconv.to_contiguous(last),
                                    (lambda: tlast.contiguous()) if tlast is not None else None, args))
            rows.append(_memory_row(name.format("to NCHW (CuPy's copy)"), full, nbytes,
                                    lambda: xp.ascontiguousarray(last), None, args))
    return rows


def _memory_row(op, shape, nbytes, fn, tfn, args):
    ms = common.timed(fn, args)
    host_ms = common.host_submit_ms(fn, args)
    t_ms = common.timed(tfn, args) if tfn is not None else None
    gbs = nbytes / ms / 1e6 if ms else None
    cgbs = copy_gbs(nbytes, args)
    return {"op": op, "shape": "x".join(map(str, shape)), "bytes": nbytes, "ms": ms, "gbs": gbs, "copy_gbs": cgbs,
            "vs_copy": common.ratio(gbs, cgbs), "torch_ms": t_ms, "speed_vs_torch": common.ratio(t_ms, ms),
            "target_vs_copy": 0.8, "host_ms": host_ms,
            # The host's submit time per call reaching 90% of the GPU time: the GPU waited on Python.
            "launch_bound": None if ms is None else bool(host_ms >= 0.9 * ms)}


def conv_rows(args, conv_layers, batch, torch):
    """The variants gpuconv runs by default, per layer and direction ("auto" made concrete by the
    channel rule: kernels.variant names no variant to time), against cuDNN."""
    if args.device != "cuda":
        return []  # bench_conv2d.benchmark times on the GPU only; the simulator validated above
    rows = []
    for c, k, h in conv_layers:
        chosen = {d: bench_conv2d.default_variant(f, "fp32", c, k) for d, f in bench_conv2d.DIRECTIONS.items()}
        timed = bench_conv2d.benchmark(batch, args.warmup, args.repeat, use_torch=torch is not None,
                                       layers=[(c, k, h)], variants=tuple(dict.fromkeys(chosen.values())))
        rows += [r for r in timed if r["variant"] == chosen[r["direction"]]]
    for r in rows:
        r["op"] = f"conv2d {r['direction']}"
    return rows


def conv_layer_summary(rows):
    """Per layer: forward + backward-data + backward-weight of the default variants vs cuDNN."""
    out = {}
    for r in rows:
        s = out.setdefault(r["layer"], {"layer": r["layer"], "ms": 0.0, "torch_ms": 0.0})
        s["ms"] += r["ms"]
        s["torch_ms"] = s["torch_ms"] + r["torch_ms"] if r["torch_ms"] is not None and s["torch_ms"] is not None \
            else None
    for s in out.values():
        s["speed_vs_torch"] = common.ratio(s["torch_ms"], s["ms"])
        s["meets_0.8x"] = None if s["speed_vs_torch"] is None else s["speed_vs_torch"] >= 0.8
    return list(out.values())


def table(rec):
    env = rec["environment"]
    print(f"{env['device']}  fast_net width {rec['width']}, batch {rec['batch']}, fp32 (TF32 off) unless a row names "
          "its dtype")
    common.print_table(rec["results"]["memory"], [
        ("op", "op", ""), ("shape", "shape", ""), ("ms", "ms", ".4f"), ("gbs", "GB/s", ".0f"),
        ("copy_gbs", "copy GB/s", ".0f"), ("vs_copy", "vs copy", ".2f"), ("torch_ms", "torch ms", ".4f"),
        ("speed_vs_torch", "vs torch", ".2f"), ("host_ms", "host ms", ".4f"), ("launch_bound", "launch-bound", "")])
    if any(r.get("launch_bound") for r in rec["results"]["memory"]):
        print("launch-bound rows: the host's time to submit a call reached the GPU's time per call, so their GB/s "
              "measure Python and launch overhead rather than the kernel")
    if rec["results"]["conv2d"]:
        print()
        common.print_table(rec["results"]["conv2d"], [
            ("layer", "conv layer", ""), ("direction", "direction", ""), ("variant", "var", ""), ("ms", "ms", ".3f"),
            ("tflops", "TFLOP/s", ".2f"), ("torch_ms", "cuDNN ms", ".3f"), ("torch_tflops", "TFLOP/s", ".2f"),
            ("speed_vs_torch", "vs cuDNN", ".2f")])
        print()
        common.print_table(rec["results"]["conv2d_layers"], [
            ("layer", "conv layer (fwd+bwd)", ""), ("ms", "ms", ".3f"), ("torch_ms", "cuDNN ms", ".3f"),
            ("speed_vs_torch", "vs cuDNN", ".2f"), ("meets_0.8x", ">=0.8x", "")])


def main(argv=None):
    p = common.add_arguments(argparse.ArgumentParser(description=common.description(__doc__)), warmup=3, repeat=20)
    p.add_argument("--batch", type=int, default=None, help="images per batch (default 512; --tiny: 2)")
    p.add_argument("--width", type=int, default=None, help="fast_net width (default 64; --tiny: 1)")
    p.add_argument("--skip-conv", action="store_true", help="pooling and ReLU only")
    args = common.parse(p, argv)
    rc = common.require_device(NAME, args)
    if rc is not None:
        return rc
    sizes = TINY if args.tiny else FULL
    batch, width = args.batch or sizes["batch"], args.width or sizes["width"]
    relu_shapes, pool_shapes, conv_layers = fast_net_shapes(width)
    if args.skip_conv:
        conv_layers = []
    checks = common.Checks()
    with common.device_context(args):
        validate(args, relu_shapes, pool_shapes, conv_layers, checks)
        if not checks.passed:
            return common.failed_validation(NAME, checks, args)
        torch = common.torch_module(args)
        memory = memory_rows(args, relu_shapes, pool_shapes, batch, torch)
        memory += batchnorm_rows(args, relu_shapes, batch, torch)
        memory += groupnorm_rows(args, relu_shapes, batch, torch)
        memory += channel_gate_rows(args, relu_shapes, batch, torch)
        memory += layout_rows(args, relu_shapes, batch, torch)
        conv = conv_rows(args, conv_layers, batch, torch)
    results = {"memory": memory, "conv2d": conv, "conv2d_layers": conv_layer_summary(conv)}
    rec = common.record(NAME, args, checks, results, width=width, batch=batch,
                        targets={"pool_relu_vs_copy": 0.8, "conv2d_fwd_bwd_vs_cudnn": 0.8})
    return common.finish(rec, args, table)


if __name__ == "__main__":
    sys.exit(main())
