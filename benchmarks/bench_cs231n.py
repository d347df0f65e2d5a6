"""The CS231n drop-in: seconds per training iteration of a student-style ThreeLayerConvNet (NumPy
weights in float32, float64 images, as the assignment's notebook feeds it) through
``gpuconv.compat.cs231n``, on the CPU and under ``use_device('cuda')``, with NumPy in and out.

    python benchmarks/bench_cs231n.py                     # GPU: batch 50, 2 warm-up + 5 timed iterations
    python benchmarks/bench_cs231n.py --json --save
    python benchmarks/bench_cs231n.py --device sim --tiny  # no GPU: validation on the host simulator

An iteration is what the assignment's Solver does: ``model.loss(X, y)`` (forward and backward through
the layer_utils sandwiches) and one Adam update per parameter on the host. Validation first: one
iteration on the device against the CPU (loss and every gradient within 1e-9 relative: both compute
in float64), and a second forward with unchanged weights reusing every parameter's device copy
(no parameter upload). Times are wall-clock per iteration (host work, transfers and kernels: what
a student waits for), CPU against device; on the simulator nothing is timed.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402
import gpuconv.compat.cs231n as cs  # noqa: E402

NAME = "bench_cs231n"
FULL = {"batch": 50, "input_dim": (3, 32, 32), "num_filters": 32, "filter_size": 7, "hidden_dim": 100}
TINY = {"batch": 2, "input_dim": (3, 8, 8), "num_filters": 2, "filter_size": 3, "hidden_dim": 4}


class StudentConvNet:
    """conv-relu-pool, affine-relu, affine, softmax, written as a student's classifiers/cnn.py is."""

    def __init__(self, input_dim, num_filters, filter_size, hidden_dim, num_classes=10, weight_scale=1e-2,
                 dtype=np.float32):
        c, h, w = input_dim
        rng = np.random.default_rng(231)
        self.params = {"W1": weight_scale * rng.standard_normal((num_filters, c, filter_size, filter_size)),
                       "b1": np.zeros(num_filters),
                       "W2": weight_scale * rng.standard_normal((num_filters * (h // 2) * (w // 2), hidden_dim)),
                       "b2": np.zeros(hidden_dim),
                       "W3": weight_scale * rng.standard_normal((hidden_dim, num_classes)),
                       "b3": np.zeros(num_classes)}
        self.params = {k: v.astype(dtype) for k, v in self.params.items()}

    def loss(self, X, y=None):
        p = self.params
        conv_param = {"stride": 1, "pad": (p["W1"].shape[2] - 1) // 2}
        pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
        h1, c1 = cs.conv_relu_pool_forward(X, p["W1"], p["b1"], conv_param, pool_param)
        h2, c2 = cs.affine_relu_forward(h1, p["W2"], p["b2"])
        scores, c3 = cs.affine_forward(h2, p["W3"], p["b3"])
        if y is None:
            return scores
        loss, ds = cs.softmax_loss(scores, y)
        grads = {}
        dh2, grads["W3"], grads["b3"] = cs.affine_backward(ds, c3)
        dh1, grads["W2"], grads["b2"] = cs.affine_relu_backward(dh2, c2)
        _, grads["W1"], grads["b1"] = cs.conv_relu_pool_backward(dh1, c1)
        return loss, grads


def iteration(model, configs, X, y):
    loss, grads = model.loss(X, y)
    for k, w in model.params.items():
        model.params[k], configs[k] = cs.adam(w, grads[k], configs[k])
    return loss


def per_iteration_s(device, sizes, X, y, args):
    model = StudentConvNet(**{k: v for k, v in sizes.items() if k != "batch"})
    configs = {k: {"learning_rate": 1e-3} for k in model.params}
    with cs.use_device(device):
        for _ in range(args.warmup):
            iteration(model, configs, X, y)
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            iteration(model, configs, X, y)
        return (time.perf_counter() - t0) / args.repeat


def validate(sizes, X, y, args, checks):
    ref_model = StudentConvNet(**{k: v for k, v in sizes.items() if k != "batch"})
    ref_loss, ref_grads = ref_model.loss(X, y)
    model = StudentConvNet(**{k: v for k, v in sizes.items() if k != "batch"})
    cs.param_store.clear()
    cs.device_stats.reset()
    with cs.use_device(args.device):
        loss, grads = model.loss(X, y)
        uploads = cs.device_stats.param_uploads
        model.loss(X)                                    # the same weights again: every copy reused
        reused = cs.device_stats.param_uploads == uploads and cs.device_stats.param_hits > 0
    checks.add("loss is a Python float", isinstance(loss, float), detail=type(loss).__name__)
    checks.close("loss vs CPU", np.float64(loss), np.float64(ref_loss), rtol=1e-9)
    for k in ref_grads:
        checks.add(f"d{k} is a NumPy array", type(grads[k]) is np.ndarray, detail=type(grads[k]).__name__)
        checks.close(f"d{k} vs CPU", grads[k], ref_grads[k], rtol=1e-9)
    checks.add("unchanged weights: no parameter uploaded again", reused,
               detail=f"{cs.device_stats.param_uploads} uploads, {cs.device_stats.param_hits} reuses")


def main(argv=None):
    p = common.add_arguments(argparse.ArgumentParser(description=common.description(__doc__)), warmup=2, repeat=5)
    args = common.parse(p, argv)
    rc = common.require_device(NAME, args)
    if rc is not None:
        return rc
    sizes = TINY if args.tiny else FULL
    rng = np.random.default_rng(0)
    X = rng.standard_normal((sizes["batch"], *sizes["input_dim"]))     # float64, as the notebook's data
    y = rng.integers(0, 10, sizes["batch"])
    checks = common.Checks()
    validate(sizes, X, y, args, checks)
    if not checks.passed:
        return common.failed_validation(NAME, checks, args)
    cpu_s = dev_s = None
    if args.device == "cuda":
        cpu_s = per_iteration_s("cpu", sizes, X, y, args)
        dev_s = per_iteration_s("cuda", sizes, X, y, args)
    else:
        per_iteration_s(args.device, sizes, X, y, argparse.Namespace(warmup=0, repeat=1))
    results = {"cpu_s_per_iteration": cpu_s, "device_s_per_iteration": dev_s,
               "speedup": common.ratio(cpu_s, dev_s), **{k: v for k, v in sizes.items()}}
    rec = common.record(NAME, args, checks, results)

    def table(r):
        res = r["results"]
        common.print_table([res], [("batch", "batch", "d"), ("cpu_s_per_iteration", "CPU s/iter", ".4f"),
                                   ("device_s_per_iteration", "device s/iter", ".4f"), ("speedup", "speedup", ".1f")],
                           title="CS231n ThreeLayerConvNet, NumPy in and out (compat.cs231n)")
    return common.finish(rec, args, table)


if __name__ == "__main__":
    sys.exit(main())
