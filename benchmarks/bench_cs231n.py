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

``--gradcheck`` times the other thing a student waits for, on the CPU (no device; ``--device`` is
not used): a notebook's float64 gradient checks (``eval_numerical_gradient`` over every parameter,
two forwards per entry, thousands of calls on a few numbers each) of the assignment's tiny
FullyConnectedNet (plain, with reg 0 and 3.14, and with batch norm) and ThreeLayerConvNet, written
as a student does (the 2019 edition's solution, tests/cs231n_editions), run once on the student's
own NumPy layers and once on the same package after ``redirect()``. Validation: both runs' losses
and analytic gradients agree to 1e-9 relative (a bias before batch norm, whose gradient is 0 up
to rounding, to 1e-12 absolute) and every check's relative error on gpuconv is under the 1e-2 the
notebooks accept for whole networks. Times: the median of ``--repeat`` runs of each check after
``--warmup``, in the process's CPU seconds (single-threaded work on a few numbers, steadier than
the wall clock on a shared machine; the wall clock's are in the record too); ``overhead``:
redirected / NumPy (1 would cost nothing). ``--tiny``: the fully connected nets, each run once.

    python benchmarks/bench_cs231n.py --gradcheck --json --save
"""
from __future__ import annotations

import argparse
import contextlib
import pathlib
import shutil
import statistics
import sys
import tempfile
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


# ----------------------------------------------------------------------------- --gradcheck
EDITIONS = common.REPO / "tests" / "cs231n_editions"
GRADCHECK_EDITION = 2019
# The notebooks' models, tiny as there: (name, constructor keywords, input shape, classes, h)
GRADCHECK_MODELS = (
    ("fc", {"hidden_dims": [7, 8], "input_dim": 6, "num_classes": 4, "weight_scale": 5e-2}, (2, 6), 4, 1e-5),
    ("fc_batchnorm", {"hidden_dims": [7, 8], "input_dim": 6, "num_classes": 4, "weight_scale": 5e-2,
                      "normalization": "batchnorm"}, (2, 6), 4, 1e-5),
    ("cnn", {"input_dim": (3, 8, 8), "num_filters": 3, "filter_size": 3, "hidden_dim": 7, "weight_scale": 1e-2},
     (2, 3, 8, 8), 10, 1e-6),
)


@contextlib.contextmanager
def student_package(root, redirect):
    """The edition's student ``cs231n`` package importable (from a copy under ``root``), its layer
    modules redirected to gpuconv or not; the imports undone on exit."""
    pkg = root / ("gpuconv" if redirect else "numpy")
    shutil.copytree(EDITIONS / "common", pkg)
    shutil.copytree(EDITIONS / str(GRADCHECK_EDITION), pkg, dirs_exist_ok=True)

    def drop():
        for k in [k for k in sys.modules if k == "cs231n" or k.startswith("cs231n.")]:
            del sys.modules[k]
    drop()
    sys.path.insert(0, str(pkg))
    hook = cs.redirect("cs231n", edition=GRADCHECK_EDITION) if redirect else None
    try:
        import cs231n.classifiers.cnn
        import cs231n.classifiers.fc_net
        import cs231n.gradient_check
        yield cs231n
    finally:
        if hook is not None:
            hook.remove()
        sys.path.remove(str(pkg))
        drop()


def gradient_check(pkg, name, kwargs, x_shape, classes, h, reg):
    """The notebook's check of one model: ``loss, grads, errors`` (rel_error per parameter)."""
    rng = np.random.default_rng(231)
    X, y = rng.standard_normal(x_shape), rng.integers(0, classes, x_shape[0])
    np.random.seed(231)  # the student's constructors draw from NumPy's global generator
    if name == "cnn":
        model = pkg.classifiers.cnn.ThreeLayerConvNet(reg=reg, dtype=np.float64, **kwargs)
    else:
        model = pkg.classifiers.fc_net.FullyConnectedNet(reg=reg, dtype=np.float64, **kwargs)
    loss, grads = model.loss(X, y)
    errors = {}
    for k in sorted(grads):
        num = pkg.gradient_check.eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[k],
                                                         verbose=False, h=h)
        errors[k] = float(np.max(np.abs(num - grads[k]) / np.maximum(1e-8, np.abs(num) + np.abs(grads[k]))))
    return float(loss), grads, errors


def gradcheck_runs(args):
    """Each check's result and times, ``{(model, reg): {"numpy": ..., "gpuconv": ...}}``."""
    cases = [(m, reg) for m in GRADCHECK_MODELS for reg in ((0.0, 3.14) if m[0] == "fc" else (0.0,))]
    if args.tiny:  # the fully connected nets once each: seconds, for a validation run
        cases = [(m, reg) for m, reg in cases if m[0] != "cnn" and reg == 0.0]
    out = {(m[0], reg): {} for m, reg in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("numpy", "gpuconv"):
            with student_package(pathlib.Path(tmp), redirect=side == "gpuconv") as pkg:
                for m, reg in cases:
                    wall, cpu = [], []
                    for i in range(args.warmup + args.repeat):
                        t0, c0 = time.perf_counter(), time.process_time()
                        result = gradient_check(pkg, *m, reg)
                        if i >= args.warmup:
                            wall.append(time.perf_counter() - t0)
                            cpu.append(time.process_time() - c0)
                    out[(m[0], reg)][side] = (result, wall, cpu)
    return out


def _noise(model, param):
    """A hidden layer's bias before batch norm: its gradient is 0 (the mean takes the bias away) up
    to rounding, so a relative error of it compares noise with noise (the notebooks skip it too)."""
    return model == "fc_batchnorm" and param in ("b1", "b2")


def gradcheck_main(args):
    args.device = "cpu"  # (the record's environment: NumPy on the host, both sides)
    if args.tiny:
        args.warmup, args.repeat = 0, 1
    checks = common.Checks()
    runs = gradcheck_runs(args)
    rows = []
    for (model, reg), sides in runs.items():
        (loss_n, grads_n, err_n), t_n, cpu_n = sides["numpy"]
        (loss_g, grads_g, err_g), t_g, cpu_g = sides["gpuconv"]
        what = f"{model} reg={reg}"
        checks.close(f"{what}: loss vs the student's NumPy", np.float64(loss_g), np.float64(loss_n), rtol=1e-9)
        for k in grads_n:
            if _noise(model, k):  # both rounding noise about 0: compared absolutely
                err = float(np.max(np.abs(grads_g[k] - grads_n[k])))
                checks.add(f"{what}: d{k} vs the student's NumPy (absolute: a bias before batch norm)", err <= 1e-12,
                           err, 1e-12)
            else:
                checks.close(f"{what}: d{k} vs the student's NumPy", grads_g[k], grads_n[k], rtol=1e-9)
        worst = max(e for k, e in err_g.items() if not _noise(model, k))
        checks.add(f"{what}: every gradient check passes on gpuconv (rel_error < 1e-2)", worst < 1e-2, worst, 1e-2)
        med = statistics.median
        rows.append({"model": model, "reg": reg, "calls_of_loss": 1 + 2 * sum(g.size for g in grads_n.values()),
                     "numpy_s": med(t_n), "gpuconv_s": med(t_g), "numpy_cpu_s": med(cpu_n), "gpuconv_cpu_s": med(cpu_g),
                     "worst_rel_error": worst})
    if not checks.passed:
        return common.failed_validation(NAME, checks, args)
    keys = ("calls_of_loss", "numpy_s", "gpuconv_s", "numpy_cpu_s", "gpuconv_cpu_s")
    rows.append({"model": "all", "reg": None, **{k: sum(r[k] for r in rows) for k in keys}})
    for r in rows:
        r["overhead"] = common.ratio(r["gpuconv_cpu_s"], r["numpy_cpu_s"])
        r["overhead_wall"] = common.ratio(r["gpuconv_s"], r["numpy_s"])
    rec = common.record(NAME, args, checks, rows, mode="gradcheck", edition=GRADCHECK_EDITION)
    rec["timed"] = True  # by the wall clock, on the host

    def table(r):
        common.print_table(r["results"], [("model", "model", "s"), ("reg", "reg", "g"),
                                          ("calls_of_loss", "loss calls", "d"), ("numpy_cpu_s", "NumPy s", ".4f"),
                                          ("gpuconv_cpu_s", "redirected s", ".4f"),
                                          ("overhead", "redirected/NumPy", ".2f"), ("overhead_wall", "(wall)", ".2f")],
                           title="CS231n float64 gradient checks on the CPU: the student's NumPy layers vs redirect()")
    return common.finish(rec, args, table)


def main(argv=None):
    p = common.add_arguments(argparse.ArgumentParser(description=common.description(__doc__)), warmup=2, repeat=5)
    p.add_argument("--gradcheck", action="store_true",
                   help="time a notebook's float64 gradient checks on the CPU, the student's NumPy layers against "
                        "redirect() (--device is not used)")
    args = common.parse(p, argv)
    if args.gradcheck:
        return gradcheck_main(args)
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
