"""Where a training step's time goes: milliseconds per layer kind, forward and backward, of a
gpuconv training step on the GPU, in each precision.

    python benchmarks/profile_step.py                       # GPU: fast_net, batch 512, fp32 and bf16
    python benchmarks/profile_step.py --json --save
    python benchmarks/profile_step.py --models fast_net airbench94   # airbench94 at its batch 1024
    python benchmarks/profile_step.py --precisions bf16 --host-top 25  # and the host's costliest functions
    python benchmarks/profile_step.py --device sim --tiny   # no GPU: the mechanics, no times
    python benchmarks/profile_step.py --device sim --tiny --stub-kernels --batch 8 --host-top 25
        # no GPU: the Python host work of a step alone (the simulator's kernels do nothing)

The step is gpuconv.amp.training_step, the trainer's. Two CUDA events are recorded around every
leaf layer's forward and backward and around the whole step; events only record, so nothing
syncs inside a step, and the times are read once after the last one. Per layer kind (Conv2d,
BatchNorm2d, ...) the record holds the forward and backward milliseconds per step, and per leaf
layer (``per_layer``: which convolution, say, in the order the layers ran); what no
layer accounts for (the loss, the parameter casts of mixed precision, the residual additions,
the optimizer, Python between the launches) is the remainder of the step's time. bench_step times the step against
PyTorch; this says which part of gpuconv's step to work on. The record also counts the kernels one
step launches (``launches_per_step``, by name; on the simulator too), beside which CuPy's own
operations (a few casts, copies and fills; the data gradient's filter repacks outside mixed
precision) add launches on a GPU.

With ``--stub-kernels`` (the simulator only) the step is also run with every simulator kernel call
made a no-op, after the validated steps: what remains is the host work of the layers, the
launchers and the optimizer, the Python a GPU step pays before CuPy's own submit. The record's
``host_stubbed`` holds, per model and precision, the function calls per step as cProfile counts
them (``calls_per_step``; ``python_calls_per_step``: those of Python functions, without builtins
and C methods) and the milliseconds per step of this CPU, wall and the thread's CPU time
(``ms_per_step``, ``cpu_ms_per_step``: the best of ``--repeat`` rounds of ``STUB_STEPS`` steps,
without the profiler); ``--host-top`` then profiles the stubbed step. The
weights after stubbed steps are garbage: nothing is checked after them.

Validation: the profiled step computes the same loss as an unprofiled one from the same weights
(the wrapping changes nothing), and every leaf layer ran forward and backward in each step.
"""
from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
import time
from collections import Counter, defaultdict

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
import gpuconv  # noqa: E402
from gpuconv import amp  # noqa: E402
from gpuconv import backend as B  # noqa: E402
from gpuconv import kernels  # noqa: E402
from gpuconv.optim import SGD  # noqa: E402

from bench_step import HYPER, MODELS, batch_data  # noqa: E402

NAME = "profile_step"
PER_LAYER_TOP = 10  # layers the table shows per model and precision (the record keeps them all)
STUB_STEPS = 20  # steps per timed round with --stub-kernels


def _airbench(width=None):
    from gpuconv import cli  # noqa: PLC0415
    return cli.build_model("airbench94", width=width)[0]


# bench_step's models and the airbench94 recipe's network (timed against PyTorch by
# bench_airbench; here only where its step's time goes), with the batch each trains at.
PROFILED = {**{name: (*MODELS[name], 512) for name in MODELS},
            "airbench94": ((_airbench, (3, 32, 32)), (lambda: _airbench(width=2), (3, 32, 32)), 1024)}


class LayerClock:
    """Events around every leaf layer's forward and backward and around each step ('cuda');
    on the simulator the same wrapping with no events (calls are still counted)."""

    def __init__(self, model, cuda):
        self.cuda = cuda
        self.marks = []  # (layer name, kind, direction, start event, stop event)
        self.calls = defaultdict(int)
        self.leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
        for name, layer in self.leaves:
            self._wrap(layer, name, "forward")
            self._wrap(layer, name, "backward")

    def _event(self):
        if not self.cuda:
            return None
        e = B.cupy_module().cuda.Event()
        e.record()
        return e

    def _wrap(self, layer, name, direction):
        inner = getattr(layer, direction)
        kind = type(layer).__name__

        def timed(*args, **kw):
            start = self._event()
            out = inner(*args, **kw)
            self.marks.append((name, kind, direction, start, self._event()))
            self.calls[(name, direction)] += 1
            return out
        setattr(layer, direction, timed)  # an instance attribute: __call__ and call_backward find it

    def unwrap(self):
        for _, layer in self.leaves:
            for direction in ("forward", "backward"):
                vars(layer).pop(direction, None)

    def per_layer(self, steps):
        """{name: {"kind", "forward": ms, "backward": ms}} per step, leaves in the order they first
        ran (None for the times on the simulator)."""
        out = {}
        for name, kind, direction, start, stop in self.marks:
            row = out.setdefault(name, {"kind": kind, "forward": 0.0, "backward": 0.0})
            if self.cuda:
                row[direction] += B.cupy_module().cuda.get_elapsed_time(start, stop) / steps
            else:
                row[direction] = None
        return out

    def per_kind(self, steps):
        """{kind: {"forward": ms, "backward": ms, "layers": n}} per step (None on the simulator)."""
        out = {}
        for row in self.per_layer(steps).values():
            kind = out.setdefault(row["kind"], {"forward": 0.0, "backward": 0.0, "layers": 0})
            kind["layers"] += 1
            for direction in ("forward", "backward"):
                kind[direction] = None if row[direction] is None else kind[direction] + row[direction]
        return out


def profile(factory, x, y, precision, args, checks, label):
    model = factory()
    reference = factory()
    reference.load_state_dict(model.state_dict())
    xd, yd = common.to_dev(x, args), common.to_dev(y, args)
    if amp.channels_last_for(precision):
        xd = gpuconv.to_channels_last(xd)
    step = common_step(model, precision)
    for _ in range(args.warmup):
        step(xd, yd)
    plain = common_step(reference, precision)
    for _ in range(args.warmup):
        plain(xd, yd)
    clock = LayerClock(model, args.device == "cuda")
    with common.EventTimer(args) as t:
        for _ in range(args.repeat):
            loss = step(xd, yd)
    for _ in range(args.repeat):
        want = plain(xd, yd)
    clock.unwrap()
    # Host time to submit a step (no synchronization; the layers unwrapped): near the step's GPU
    # time, the GPU waited on Python and the per-layer split shows launch gaps, not kernels.
    host_ms = common.host_submit_ms(lambda: step(xd, yd), args)
    with kernels.launch_log() as log:  # what one step launches: our kernels, by name
        step(xd, yd)
    launches = dict(sorted(Counter(log.names).items()))
    stubbed = None
    with stubbed_sim_kernels(args.stub_kernels):  # the last steps: the weights are garbage after them
        if args.stub_kernels:
            stubbed = stubbed_host(lambda: step(xd, yd), args.repeat)
        host_top = host_functions(lambda: step(xd, yd), args.repeat, args.host_top) if args.host_top else None
    checks.close(f"{label}: the profiled step's loss equals an unprofiled one", loss, want, 1e-6)
    missing = [(n, d) for n, _ in clock.leaves for d in ("forward", "backward") if clock.calls[(n, d)] != args.repeat]
    checks.add(f"{label}: every leaf layer ran forward and backward in every step", not missing,
               detail=f"not every step: {missing[:5]}" if missing else None)
    kinds = clock.per_kind(args.repeat)
    step_ms = t.ms / args.repeat if t.ms is not None else None
    layers_ms = sum(v["forward"] + v["backward"] for v in kinds.values()) if step_ms is not None else None
    rows = [{"model": label.split()[0], "precision": precision, "kind": k, "layers": v["layers"],
             "forward_ms": v["forward"], "backward_ms": v["backward"],
             "share": (v["forward"] + v["backward"]) / step_ms if step_ms else None} for k, v in sorted(kinds.items())]
    rows.append({"model": label.split()[0], "precision": precision, "kind": "(rest of the step)", "layers": None,
                 "forward_ms": None, "backward_ms": step_ms - layers_ms if step_ms is not None else None,
                 "share": (step_ms - layers_ms) / step_ms if step_ms else None})
    per_layer = [{"layer": n, "kind": v["kind"], "forward_ms": v["forward"], "backward_ms": v["backward"]}
                 for n, v in clock.per_layer(args.repeat).items()]
    return rows, step_ms, host_ms, host_top, launches, per_layer, stubbed


@contextlib.contextmanager
def stubbed_sim_kernels(on=True):
    """Inside, every simulator kernel call returns at once (``on``; else nothing changes): a step's
    host work without the kernels' execution. Floating-point warnings of the garbage the untouched
    outputs hold are silenced."""
    if not on:
        yield
        return
    from gpuconv.hostsim import _launch  # noqa: PLC0415
    real = _launch.SimKernel.__call__
    _launch.SimKernel.__call__ = lambda self, grid, block, args, shared_mem=0, reverse=None, stack_size=None: None
    try:
        with np.errstate(all="ignore"):
            yield
    finally:
        _launch.SimKernel.__call__ = real


def stubbed_host(fn, rounds):
    """Host work of ``fn`` (a step, kernels stubbed): ``{"calls_per_step", "python_calls_per_step",
    "ms_per_step", "cpu_ms_per_step"}``, the calls counted by cProfile over STUB_STEPS steps, the
    wall and the thread's CPU time the best of ``rounds`` rounds of STUB_STEPS steps without the
    profiler (the CPU time is the steadier figure on a machine other processes share)."""
    import cProfile  # noqa: PLC0415
    import pstats  # noqa: PLC0415
    fn()  # first-call memos filled
    best = cpu = float("inf")
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(STUB_STEPS):
            fn()
        best = min(best, (time.perf_counter() - t0) * 1e3 / STUB_STEPS)
        cpu = min(cpu, (time.thread_time() - c0) * 1e3 / STUB_STEPS)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(STUB_STEPS):
        fn()
    prof.disable()
    stats = pstats.Stats(prof).stats
    return {"calls_per_step": sum(v[1] for v in stats.values()) / STUB_STEPS,
            "python_calls_per_step": sum(v[1] for (f, _, _), v in stats.items() if f != "~") / STUB_STEPS,
            "ms_per_step": best, "cpu_ms_per_step": cpu}


def host_functions(fn, steps, top):
    """Where a step's host time goes: ``fn`` run ``steps`` times under cProfile, the ``top``
    functions by their own time (tottime), each with calls and own/cumulative milliseconds per
    step. Kernel execution on the simulator shows up as its own entries; on 'cuda' launches are
    asynchronous, so this is Python and the CUDA driver's launch calls."""
    import cProfile  # noqa: PLC0415
    import pstats  # noqa: PLC0415
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        fn()
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (primitive calls, calls, tottime, cumtime, callers)}
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    return [{"function": f"{pathlib.Path(f).name}:{line}({name})" if line else name,
             "calls_per_step": calls / steps, "own_ms_per_step": tt * 1e3 / steps, "cum_ms_per_step": ct * 1e3 / steps}
            for (f, line, name), (_, calls, tt, ct, _) in rows]


def common_step(model, precision):
    opt = SGD(model.parameters(), **HYPER)
    return lambda x, y: amp.training_step(model, opt, x, y, precision)[0]


def table(rec):
    print(f"{rec['environment']['device']}  where a training step's time goes (ms per step; "
          "backward_ms of '(rest of the step)': loss, casts, optimizer, gaps)")
    common.print_table(rec["results"], [
        ("model", "model", ""), ("precision", "precision", ""), ("kind", "layer kind", ""), ("layers", "layers", ""),
        ("forward_ms", "fwd ms", ".2f"), ("backward_ms", "bwd ms", ".2f"), ("share", "share", ".0%")])
    for label, ms in rec["step_ms"].items():
        host = rec["host_submit_ms"].get(label)
        if ms is not None and host is not None:
            print(f"{label}: step {ms:.2f} ms on the GPU, {host:.2f} ms of host time to submit it"
                  + (" (host-bound: the split above is partly launch gaps)" if host > 0.8 * ms else ""))
    for label, counts in rec.get("launches_per_step", {}).items():
        print(f"{label}: {sum(counts.values())} kernel launches per step ("
              + ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])) + ")")
    for label, layers in rec.get("per_layer", {}).items():
        timed = [r for r in layers if r["forward_ms"] is not None]
        if timed:
            print(f"{label}: the costliest layers (ms per step, forward + backward)")
            common.print_table(sorted(timed, key=lambda r: -(r["forward_ms"] + r["backward_ms"]))[:PER_LAYER_TOP],
                               [("layer", "layer", ""), ("kind", "kind", ""), ("forward_ms", "fwd ms", ".3f"),
                                ("backward_ms", "bwd ms", ".3f")])
    for label, host in rec.get("host_stubbed", {}).items():
        print(f"{label}, kernels stubbed: {host['calls_per_step']:.0f} function calls per step "
              f"({host['python_calls_per_step']:.0f} of Python functions), {host['ms_per_step']:.3f} ms per step "
              f"of host time on this CPU, {host['cpu_ms_per_step']:.3f} ms of its CPU time (best of {rec['repeat']} "
              f"rounds of {STUB_STEPS} steps)")
    for label, top in rec["host_functions"].items():
        print(f"{label}: the host's costliest functions (cProfile, per step)")
        common.print_table(top, [("function", "function", ""), ("calls_per_step", "calls", ".0f"),
                                 ("own_ms_per_step", "own ms", ".3f"), ("cum_ms_per_step", "cum ms", ".3f")])


def main(argv=None):
    p = common.add_arguments(argparse.ArgumentParser(description=common.description(__doc__)), warmup=3, repeat=5)
    p.add_argument("--batch", type=int, default=None,
                   help="images per step (default: the model's, 512, airbench94 1024; --tiny: 4)")
    p.add_argument("--models", nargs="+", choices=sorted(PROFILED), default=["fast_net"])
    p.add_argument("--precisions", nargs="+", choices=amp.PRECISIONS, default=["fp32", "bf16"])
    p.add_argument("--host-top", type=int, default=0, metavar="N",
                   help="also profile the step's host time (cProfile) and record its N costliest functions")
    p.add_argument("--stub-kernels", action="store_true",
                   help="(--device sim) also measure the step's host work with the simulator's kernels stubbed out: "
                        "function calls and ms per step (host_stubbed); --host-top then profiles that")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--tiny" in argv and not any(a.startswith(("--warmup", "--repeat")) for a in argv):
        argv += ["--warmup", "1", "--repeat", "2"]
    args = common.parse(p, argv)
    if args.stub_kernels and args.device != "sim":
        p.error("--stub-kernels stubs the host simulator's kernels: add --device sim --tiny")
    rc = common.require_device(NAME, args)
    if rc is not None:
        return rc
    checks, rows, steps, batches, hosts, tops, launches, layers, stubs = common.Checks(), [], {}, {}, {}, {}, {}, {}, {}
    with common.device_context(args):
        for name in args.models:
            factory, shape = PROFILED[name][1 if args.tiny else 0]
            batches[name] = batch = args.batch or (4 if args.tiny else PROFILED[name][2])
            x, y = batch_data(shape, batch, seed=3)
            for precision in args.precisions:
                label = f"{name} {precision}"
                got, steps[label], hosts[label], tops[label], launches[label], layers[label], stubbed = profile(
                    factory, x, y, precision, args, checks, label)
                if stubbed is not None:
                    stubs[label] = stubbed
                rows += [dict(r, batch=batch) for r in got]
    rec = common.record(NAME, args, checks, rows, batch=batches, step_ms=steps, host_submit_ms=hosts,
                        host_functions={k: v for k, v in tops.items() if v is not None}, launches_per_step=launches,
                        per_layer=layers, **({"host_stubbed": stubs} if stubs else {}))
    return common.finish(rec, args, table, checks)  # the record stands when a check failed: exit 1


if __name__ == "__main__":
    sys.exit(main())
