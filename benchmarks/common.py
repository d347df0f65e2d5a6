"""What every benchmark script shares: the command line, the no-GPU exit, CUDA-event timing, the
PyTorch reference setup, validation bookkeeping, the table, and the results record.

A benchmark script does, in order:

    args = common.parse(parser)                # --device cuda|sim, --tiny, --json, --save, ...
    if (rc := common.require_device(NAME, args)) is not None: return rc   # 2: cuda asked, none here
    checks = common.Checks(); checks.close("relu fwd", got, want, rtol=0)  # validate first
    if not checks.passed: ... return 1         # nothing is timed after a failed validation
    ms = common.timed(fn, args)                # CUDA events after warm-up; None on the simulator
    record = common.record(NAME, args, checks, rows, ...); return common.finish(record, args, table)

On ``--device sim`` (which needs ``--tiny``) every step runs on the host simulator at tiny sizes:
the validation is real, the timing code paths run, and no time is reported (``timed`` returns
None): the simulator is not a timing device. Records go to
``benchmarks/results/<date>-<HHMM>-<device>-<name>.json`` (``$GPUCONV_BENCH_RESULTS`` overrides the
directory) with the device, the date and the versions of everything involved.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import pathlib
import platform
import re
import subprocess
import statistics
import sys
import types
from collections import OrderedDict

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # scripts run from anywhere import the checkout's gpuconv
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import gpuconv  # noqa: E402
from gpuconv import backend as B  # noqa: E402
from gpuconv import kernels  # noqa: E402
from gpuconv import layers as L  # noqa: E402

RESULTS = HERE / "results"
NO_GPU_EXIT = 2


# ----------------------------------------------------------------------------- command line
def description(doc: str) -> str:
    """A script's ``--help`` description: its docstring's first paragraph (the first line alone
    is often half a sentence)."""
    return doc.split("\n\n")[0]


def add_arguments(p: argparse.ArgumentParser, warmup=3, repeat=20, cpu=False):
    """The options every benchmark takes; ``cpu``: ``--device cpu`` too (gpuconv's NumPy path, timed
    by the wall clock, for a script that compares it with PyTorch CPU)."""
    p.add_argument("--device", choices=("cuda", "sim", "cpu") if cpu else ("cuda", "sim"), default="cuda",
                   help="cuda: validate and time on the GPU; sim: validate on the host simulator (needs --tiny)"
                   + ("; cpu: validate and time gpuconv's NumPy path on the CPU" if cpu else ""))
    p.add_argument("--tiny", action="store_true", help="tiny sizes and few steps: a validation run, no timing claims")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed runs before timing")
    p.add_argument("--repeat", type=int, default=repeat,
                   help="timed calls, in five groups each between two CUDA events: the median group's time per call")
    p.add_argument("--json", action="store_true", help="print the record as one JSON document instead of the table")
    p.add_argument("--save", action="store_true", help=f"write the record under {RESULTS} (or $GPUCONV_BENCH_RESULTS)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    return p


def parse(p: argparse.ArgumentParser, argv=None):
    args = p.parse_args(argv)
    if args.device == "sim" and not args.tiny:
        p.error("--device sim runs kernels on the host simulator, about a microsecond per thread switch: "
                "it only validates, at tiny sizes. Add --tiny")
    if args.warmup < 0 or args.repeat < 1:
        p.error(f"--warmup {args.warmup} / --repeat {args.repeat}: need warmup >= 0 and repeat >= 1")
    return args


def require_device(name: str, args, sim_args="--device sim --tiny") -> int | None:
    """None when ``args.device`` can run here; else prints why (naming the simulator command) and
    returns the exit status 2."""
    if args.device == "cuda" and not B.cuda_available():
        print(f"{name}: no usable GPU ({B.cuda_status()}). This script runs CUDA kernels and needs a "
              f"CUDA device. Without one, check its validation on the host simulator with:\n"
              f"    python benchmarks/{name}.py {sim_args}", file=sys.stderr)
        return NO_GPU_EXIT
    return None


def device_context(args):
    """The default-device context the benchmark body runs in ('sim' makes ops run the kernels)."""
    return gpuconv.default_device(args.device)


def xp_of(args):
    return B.cupy_module() if args.device == "cuda" else np


def to_dev(a, args):
    """A host array onto the benchmark's device (setup only: counted as an upload)."""
    return B.to_device(a, "cuda") if args.device == "cuda" else np.asarray(a)


def host(a):
    return None if a is None else (a.get() if B.is_cupy_array(a) else np.asarray(a))


# ----------------------------------------------------------------------------- timing
def cuda_time(fn, warmup, repeat, groups=5):
    """Milliseconds per call of ``fn`` on the current stream: ``warmup`` untimed calls, then
    ``repeat`` calls in ``groups`` back-to-back groups, each between two CUDA events (launch
    overhead included, as a training loop pays it); the median group's time per call.

    One mean over all the calls let a single host stall (a garbage collection, a page fault, the
    machine's other work) of 100-200 ms inflate a 0.8 ms kernel's figure tenfold; the median of
    groups keeps such a stall to one group. ``last_spread`` holds the slowest group over the median
    of the latest call, so a benchmark can flag a noisy row."""
    cp = B.cupy_module()
    for _ in range(warmup):
        fn()
    groups = max(1, min(groups, repeat))
    sizes = [repeat // groups + (1 if g < repeat % groups else 0) for g in range(groups)]
    events = [cp.cuda.Event() for _ in range(groups + 1)]
    events[0].record()
    for g, n in enumerate(sizes):
        for _ in range(n):
            fn()
        events[g + 1].record()
    events[-1].synchronize()
    per_call = [cp.cuda.get_elapsed_time(events[g], events[g + 1]) / n for g, n in enumerate(sizes)]
    median = statistics.median(per_call)
    cuda_time.last_spread = max(per_call) / median if median > 0 else 1.0
    return median


cuda_time.last_spread = 1.0


def host_submit_ms(fn, args, repeat=None):
    """Milliseconds of host time per call to *submit* ``fn`` (no synchronization inside the
    loop): the launch overhead. Where it reaches the GPU time per call, the GPU waited on the
    host and the GPU figure measures Python and launches, not the kernel. None on the simulator."""
    if args.device != "cuda":
        return None
    import time
    repeat = args.repeat if repeat is None else repeat
    B.cupy_module().cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    ms = (time.perf_counter() - t0) * 1e3 / repeat
    B.cupy_module().cuda.Device().synchronize()
    return ms


def timed(fn, args, warmup=None, repeat=None):
    """``cuda_time`` on 'cuda'; on 'sim' the same calls run (one warm-up, one repeat) and None comes
    back: simulator times mean nothing."""
    warmup = args.warmup if warmup is None else warmup
    repeat = args.repeat if repeat is None else repeat
    if args.device == "cuda":
        return cuda_time(fn, warmup, repeat)
    for _ in range(min(warmup, 1) + 1):
        fn()
    return None


class EventTimer:
    """A stretch of GPU work measured between two CUDA events (``with EventTimer(args) as t: ...``;
    ``t.ms`` after the block, None on the simulator)."""

    def __init__(self, args):
        self.cuda = args.device == "cuda"
        self.ms = None

    def __enter__(self):
        if self.cuda:
            cp = B.cupy_module()
            self._start, self._stop = cp.cuda.Event(), cp.cuda.Event()
            self._start.record()
        return self

    def __exit__(self, *exc):
        if self.cuda and exc[0] is None:
            self._stop.record()
            self._stop.synchronize()
            self.ms = B.cupy_module().cuda.get_elapsed_time(self._start, self._stop)
        return False


def ratio(num, den):
    return num / den if num is not None and den else None


# ----------------------------------------------------------------------------- PyTorch
@contextlib.contextmanager
def torch_tf32(torch, on):
    """TF32 for PyTorch's convolutions and matmuls inside the block (off again after it)."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(on)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def torch_module(args=None, cpu_ok=False):
    """torch set up for a fair fp32 comparison (TF32 off for convolutions and matmuls, cuDNN
    autotuning on), or None: not importable, no CUDA in torch, ``--no-torch``, or the simulator.
    ``cpu_ok``: on the simulator, a CPU torch too (a validation reference, never timed)."""
    if args is not None and (args.no_torch or (args.device != "cuda" and not cpu_ok)):
        return None
    try:
        import torch
    except Exception:
        return None
    if args is not None and args.device != "cuda":
        return torch
    if not torch.cuda.is_available():
        return None
    torch.backends.cudnn.allow_tf32 = False  # fp32 against fp32: TF32 would change the arithmetic
    torch.backends.cuda.matmul.allow_tf32 = False
    # torch >= 2.9 also has per-backend precision settings (convolutions default to "tf32"); the
    # legacy flags above map onto them, and naming IEEE explicitly leaves no doubt.
    for owner in (getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul):
        if owner is not None and hasattr(owner, "fp32_precision"):
            try:
                owner.fp32_precision = "ieee"
            except Exception:  # a torch that rejects it: the legacy flags above stand
                pass
    torch.backends.cudnn.benchmark = True
    return torch


def torch_tf32_settings(torch):
    """What torch will do with fp32 convolutions and matmuls (recorded beside the timings). The
    newer per-backend ``fp32_precision`` is read where it exists; some torch versions refuse to
    read the legacy flags once it is set, so nothing here may throw away a finished benchmark."""
    out = {}
    for key, owner, legacy in (("cudnn_conv", getattr(torch.backends.cudnn, "conv", None), torch.backends.cudnn),
                               ("matmul", torch.backends.cuda.matmul, torch.backends.cuda.matmul)):
        try:
            if owner is not None and hasattr(owner, "fp32_precision"):
                out[f"{key}_fp32_precision"] = str(owner.fp32_precision)
            else:
                out[f"{key}_allow_tf32"] = bool(legacy.allow_tf32)
        except Exception as exc:  # noqa: BLE001  (recorded, not raised)
            out[key] = f"unreadable: {type(exc).__name__}: {exc}"
    return out


# ----------------------------------------------------------------------------- the torch mirror
def torch_mirror(torch, layer, same_dropout=False):
    """A torch.nn module with the same structure and the same weights (float32) as the gpuconv
    layer or network ``layer``, its parameters and buffers named by gpuconv's state dict keys (so
    gradients compare by name), frozen parameters frozen. Every layer the ``gpuconv train --model``
    networks use has a counterpart: containers (Sequential, Residual with or without a shortcut,
    Concat, DualPath, SqueezeExcitation), convolutions (groups, dilation, 'same', padding modes; gpuconv's
    ``floor`` is PyTorch's only rule), pools (padding, count_include_pad, adaptive, LP), batch norm
    with its fused activation, group norm, the activations, Dropout, and the shape layers.

    ``same_dropout``: each Dropout draws gpuconv's masks (the next keys of a copy of the layer's
    generator, hashed as gpuconv.ops.dropout does, on the host), so one training step of the two
    networks from the same weights is the same computation; else ``nn.Dropout`` (for timing)."""
    nn, M = torch.nn, _mirror_modules(torch)
    if isinstance(layer, L.Sequential):
        return nn.Sequential(OrderedDict((name, torch_mirror(torch, child, same_dropout))
                                         for name, child in layer.named_children()))
    if isinstance(layer, L.Residual):
        return M.Residual(torch_mirror(torch, layer.inner, same_dropout),
                          None if layer.shortcut is None else torch_mirror(torch, layer.shortcut, same_dropout))
    if isinstance(layer, L.Concat):
        return M.Concat(OrderedDict((name, torch_mirror(torch, child, same_dropout))
                                    for name, child in layer.named_children()))
    if isinstance(layer, L.DualPath):  # its residual path's layers (or ``residual``) and ``shortcut``, by name
        children = OrderedDict((name, torch_mirror(torch, child, same_dropout))
                               for name, child in layer.named_children())
        return M.DualPath(children, layer.shortcut is not None, layer.split, layer.activation)
    if isinstance(layer, L.SqueezeExcitation):
        return M.SqueezeExcitation(OrderedDict((name, torch_mirror(torch, child, same_dropout))
                                               for name, child in layer.named_children()), layer._gate)
    simple = {L.Identity: lambda: nn.Identity(), L.ReLU: lambda: nn.ReLU(), L.GELU: lambda: nn.GELU(),
              L.SiLU: lambda: nn.SiLU(), L.Sigmoid: lambda: nn.Sigmoid(), L.Tanh: lambda: nn.Tanh(),
              L.Flatten: lambda: nn.Flatten(),
              L.LeakyReLU: lambda: nn.LeakyReLU(layer.negative_slope),
              L.Scale: lambda: M.Scale(layer.factor),
              L.Unflatten: lambda: nn.Unflatten(layer.dim, layer.unflattened_size),
              L.ChannelShuffle: lambda: M.ChannelShuffle(layer.groups),
              L.Narrow: lambda: M.Narrow(layer.dim, layer.start, layer.length),
              L.MaxPool2d: lambda: nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding),
              L.AvgPool2d: lambda: nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding,
                                                count_include_pad=layer.count_include_pad),
              L.LPPool2d: lambda: nn.LPPool2d(layer.norm_type, layer.kernel_size, layer.stride),
              L.AdaptiveAvgPool2d: lambda: nn.AdaptiveAvgPool2d(layer.output_size),
              L.AdaptiveMaxPool2d: lambda: nn.AdaptiveMaxPool2d(layer.output_size)}
    if type(layer) in simple:
        return simple[type(layer)]()
    if isinstance(layer, L.Dropout):
        return M.SameMaskDropout(layer) if same_dropout else nn.Dropout(layer.p)
    if isinstance(layer, L.Conv2d):
        m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                      layer.dilation, layer.groups, bias=layer.bias is not None, padding_mode=layer.padding_mode)
    elif isinstance(layer, L.ConvTranspose2d):
        m = nn.ConvTranspose2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                               layer.output_padding, layer.groups, bias=layer.bias is not None,
                               dilation=layer.dilation)
    elif isinstance(layer, L.Linear):
        m = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    elif isinstance(layer, L.BatchNorm2d):
        m = M.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
        if layer.activation not in M.ACTIVATIONS:
            raise TypeError(f"torch_mirror: no torch counterpart for batch norm's fused activation {layer.activation!r}")
        m.activation = M.ACTIVATIONS[layer.activation]
        with torch.no_grad():
            m.running_mean.copy_(_torch_array(torch, layer.running_mean))
            m.running_var.copy_(_torch_array(torch, layer.running_var))
    elif isinstance(layer, L.GroupNorm):
        m = nn.GroupNorm(layer.num_groups, layer.num_channels, eps=layer.eps, affine=layer.affine)
        if layer.affine and layer.bias is None:  # GroupNorm(..., bias=False): a weight alone
            m.bias = None
    else:
        raise TypeError(f"torch_mirror: no torch counterpart for {type(layer).__name__}; add one to "
                        "benchmarks/common.py (torch_mirror)")
    with torch.no_grad():
        for name, p in m.named_parameters(recurse=False):  # frozen stays frozen (airbench's whitening, BN scales)
            src = getattr(layer, name)
            p.copy_(_torch_array(torch, src.data))
            p.requires_grad_(src.requires_grad)
    return m


def _torch_array(torch, a):
    return torch.from_numpy(np.array(gpuconv.asnumpy(a), dtype=np.float32))


_MIRROR_MODULES = {}


def _mirror_modules(torch):
    """The torch modules of gpuconv layers that torch.nn lacks (made once per torch module)."""
    if id(torch) in _MIRROR_MODULES:
        return _MIRROR_MODULES[id(torch)]
    nn, F = torch.nn, torch.nn.functional
    from airbench_torch import torch_layers  # noqa: PLC0415  (the PyTorch airbench baseline's, in this folder)
    Scale, Residual = torch_layers(torch)  # x * factor; shortcut(x) + inner(x), the identity without a shortcut

    class Concat(nn.Module):  # the branches' outputs joined along the channels, named as gpuconv's
        def __init__(self, branches):
            super().__init__()
            for name, m in branches.items():
                self.add_module(name, m)

        def forward(self, x):
            return torch.cat([m(x) for m in self.children()], 1)

    class DualPath(nn.Module):  # cat([s[:, :d] + r[:, :d], s[:, d:], r[:, d:]], 1), s = shortcut(x) or x
        def __init__(self, children, has_shortcut, split, activation):
            super().__init__()
            for name, m in children.items():
                self.add_module(name, m)
            self.path = [name for name in children if not (has_shortcut and name == "shortcut")]
            self.has_shortcut, self.split, self.activation = has_shortcut, split, activation

        def forward(self, x):
            r = x
            for name in self.path:
                r = getattr(self, name)(r)
            s, d = (self.shortcut(x) if self.has_shortcut else x), self.split
            y = torch.cat([s[:, :d] + r[:, :d], s[:, d:], r[:, d:]], 1)
            return F.relu(y) if self.activation == "relu" else y

    class SqueezeExcitation(nn.Module):  # torchvision's: x * scale_activation(fc2(activation(fc1(avgpool(x)))))
        def __init__(self, children, gate):
            super().__init__()
            for name, m in children.items():
                self.add_module(name, m)
            self.gate = tuple(gate)

        def forward(self, x):
            s = x
            for name in self.gate:
                s = getattr(self, name)(s)
            return x * s

    class ChannelShuffle(nn.Module):
        def __init__(self, groups):
            super().__init__()
            self.groups = groups

        def forward(self, x):
            n, c, h, w = x.shape
            return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    class Narrow(nn.Module):
        def __init__(self, dim, start, length):
            super().__init__()
            self.dim, self.start, self.length = dim, start, length

        def forward(self, x):
            return x.narrow(self.dim, self.start, self.length)

    class BatchNorm2d(nn.BatchNorm2d):  # with gpuconv's fused activation after it (same parameter names)
        activation = None

        def forward(self, x):
            y = super().forward(x)
            return y if self.activation is None else self.activation(y)

    class SameMaskDropout(nn.Module):
        """gpuconv's Dropout masks: the keys a copy of the layer's generator draws next, hashed on the host."""

        def __init__(self, layer):
            super().__init__()
            self.p, self.rng = layer.p, copy.deepcopy(layer._rng())

        def forward(self, x):
            if not self.training or self.p == 0:
                return x
            from gpuconv.ops.dropout import draw_key, keep_bits, keep_scale
            keep = keep_bits(draw_key(self.rng), self.p, tuple(x.shape))
            mask = keep.astype(np.float64) * float(keep_scale(self.p, np.float64))
            return x * torch.from_numpy(mask).to(device=x.device, dtype=x.dtype)

    mods = types.SimpleNamespace(Scale=Scale, Residual=Residual, Concat=Concat, DualPath=DualPath,
                                 SqueezeExcitation=SqueezeExcitation,
                                 ChannelShuffle=ChannelShuffle, Narrow=Narrow, BatchNorm2d=BatchNorm2d,
                                 SameMaskDropout=SameMaskDropout,
                                 ACTIVATIONS={None: None, "relu": F.relu, "gelu": F.gelu})
    _MIRROR_MODULES[id(torch)] = mods
    return mods


# ----------------------------------------------------------------------------- validation
def rel_err(got, want) -> float:
    """max |got - want| / max |want|: an error relative to the array's scale."""
    got, want = np.asarray(host(got), np.float64), np.asarray(host(want), np.float64)
    if got.shape != want.shape:
        return float("inf")
    if got.size == 0:
        return 0.0
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))


class Checks:
    """Validation results: each check a dict (name, error, tolerance, ok); ``passed`` when all are."""

    def __init__(self):
        self.items = []

    def add(self, name, ok, error=None, tolerance=None, detail=None):
        item = {"name": name, "ok": bool(ok), "error": error, "tolerance": tolerance}
        if detail:
            item["detail"] = detail
        self.items.append(item)
        return bool(ok)

    def exact(self, name, got, want):
        g, w = host(got), host(want)
        same = g.shape == w.shape and g.dtype == w.dtype and np.array_equal(g, w, equal_nan=True)
        return self.add(name, same, 0.0 if same else rel_err(g, w), 0.0,
                        None if same else f"shape {g.shape} {g.dtype} vs {w.shape} {w.dtype}")

    def close(self, name, got, want, rtol):
        err = rel_err(got, want)
        return self.add(name, err <= rtol, err, rtol)

    @property
    def passed(self):
        return bool(self.items) and all(i["ok"] for i in self.items)

    def failures(self):
        def why(i):
            # A check added with ok alone (no error, no tolerance) is stated by its name and detail.
            measured = "" if i["error"] is None else f": error {i['error']:.3g} > tolerance {i['tolerance']:.3g}"
            return i["name"] + measured + (f" ({i['detail']})" if i.get("detail") else "")
        return [why(i) for i in self.items if not i["ok"]]

    def as_dict(self):
        return {"passed": self.passed, "checks": self.items}


# ----------------------------------------------------------------------------- records
def _git_commit():
    """HEAD's short hash, with "-dirty" when tracked files differ from it (as ``git describe
    --dirty`` writes it): the code that ran was not that commit's. None outside a checkout."""
    def git(*argv):
        return subprocess.run(["git", *argv], capture_output=True, text=True, cwd=REPO, timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD") or None
        if commit and git("status", "--porcelain", "--untracked-files=no"):
            commit += "-dirty"
        return commit
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device="cuda", use_torch=True):
    """Device name, date and versions (gpuconv, cupy, CUDA runtime and driver, and with
    ``use_torch`` torch and cuDNN: a run without torch does not import it)."""
    torch = torch_module() if device == "cuda" and use_torch else None
    cp = B.cupy_module()
    name = "host simulator (gpuconv.hostsim)" if device == "sim" else f"cpu ({os.cpu_count()} cores)"
    env = {"device": name, "device_kind": device, "sms": None,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "gpuconv": gpuconv.__version__, "git_commit": _git_commit(),
           "cupy": getattr(cp, "__version__", None), "cuda_runtime": None, "cuda_driver": None,
           "torch": None, "cudnn": None, "python": platform.python_version(), "numpy": np.__version__,
           "host": platform.node(),
           "kernel_variants": os.environ.get("GPUCONV_KERNEL_VARIANTS") or None,  # variants forced for the run
           # "auto" convolutions chosen by measurement: GPUCONV_AUTOTUNE, or a Trainer's own (a table exists)
           "autotune": kernels.autotune_enabled() or bool(kernels.tuned_variants())}
    if device == "cuda":
        dev = cp.cuda.Device()
        props = cp.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"]
        env.update(device=name.decode() if isinstance(name, bytes) else name, sms=kernels.sm_count("cuda", dev.id),
                   memory_bytes=int(props["totalGlobalMem"]), cuda_runtime=cp.cuda.runtime.runtimeGetVersion(),
                   cuda_driver=cp.cuda.runtime.driverGetVersion())
        if torch is not None:
            env.update(torch=torch.__version__, cudnn=torch.backends.cudnn.version(),
                       torch_cuda=torch.version.cuda, torch_tf32=torch_tf32_settings(torch))
    return env


def slug(text):
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower() or "unknown"


def results_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("GPUCONV_BENCH_RESULTS") or RESULTS)


def stamp(env) -> str:
    """``YYYY-MM-DD-HHMM`` (UTC) of a record's environment: two runs on one day keep two records."""
    return f"{env['date'][:10]}-{env['date'][11:13]}{env['date'][14:16]}"


def save_record(record, name, filename=None) -> pathlib.Path:
    """Write ``record`` as ``<date>-<HHMM>-<device>-<name>.json`` (or ``filename``) in
    :func:`results_dir`."""
    out_dir = results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    env = record["environment"]
    if filename is None:  # a run with forced or tuned variants beside the plain one of the same minute
        how = "".join(f"-{tag}" for tag, on in (("variants", env.get("kernel_variants")),
                                                ("autotune", env.get("autotune"))) if on)
        filename = f"{stamp(env)}-{slug(env['device'])}-{name}{how}.json"
    path = out_dir / filename
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def record(name, args, checks: Checks, results, **extra):
    rec = {"benchmark": name, "environment": environment(args.device, not args.no_torch), "tiny": bool(args.tiny),
           "timed": args.device == "cuda", "warmup": args.warmup, "repeat": args.repeat,
           "validation": checks.as_dict(), "results": results, **extra}
    if kernels.tuned_variants():  # what autotuning chose, and the times it chose by
        rec["autotune"] = {"chosen": kernels.tuned_variants(), "times_ms": kernels.tuning_times()}
    return rec


def failed_validation(name, checks: Checks, args) -> int:
    """Report a failed validation (stderr, and the record with --json) and return exit status 1."""
    print(f"{name}: validation failed; nothing timed:\n  " + "\n  ".join(checks.failures()), file=sys.stderr)
    if args.json:
        print(json.dumps(record(name, args, checks, []), indent=2, default=_json_default))
    return 1


def finish(rec, args, table, checks: Checks | None = None) -> int:
    """Print the record (``--json``) or ``table(rec)``; write it with ``--save``. Exit status 0,
    or 1 when ``checks`` (checked along the run, after the validation) failed: the record stands,
    the failures go to stderr."""
    if args.json:
        print(json.dumps(rec, indent=2, default=_json_default))
    else:
        table(rec)
        if not rec["timed"]:
            print("(host simulator: validation only; no times are reported)")
    if args.save:
        print(f"wrote {save_record(rec, rec['benchmark'])}", file=sys.stderr)
    if checks is not None and not checks.passed:
        print(f"{rec['benchmark']}: " + "; ".join(checks.failures()), file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- tables
def fmt(value, spec):
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(value, spec)


def print_table(rows, columns, title=None, file=None):
    """``columns``: (key, header, format spec) triples; None cells print as '-'."""
    file = file or sys.stdout
    if title:
        print(title, file=file)
    cells = [[fmt(r.get(k), spec) for k, _, spec in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _) in enumerate(columns)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, ((_, h, _), w) in enumerate(zip(columns, widths))),
          file=file)
    for c in cells:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))), file=file)
