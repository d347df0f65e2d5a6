"""Where the CUDA kernels plug into the ops, without touching the op logic.

Every public op validates its arguments, asks ``backend.kernel_target(...)`` where it runs,
and then calls :func:`call`: a launcher registered for ``(op_name, target)`` runs the op with
the kernels, otherwise the NumPy/CuPy reference does. A launcher takes exactly the arguments
the op's ``_<op>_reference`` takes (already validated and normalized: strides and paddings as
``(h, w)`` pairs) plus the keyword ``target`` ('cuda' or 'sim'), and returns exactly what the
reference returns, caches included, so a forward on one path and a backward on the other
stay compatible. A launcher may return ``NotImplemented`` to decline a case it does not
cover (an odd shape, a size past int indexing); the reference then runs, and the launch log
calls it a fallback (which the backend tests fail on 'sim').

    from gpuconv.ops._dispatch import register_launcher

    @register_launcher("relu_forward")
    def relu_forward_kernel(x, *, target):
        ...

Which ops have kernels. conv2d (grouped and dilated ones too: conv2d_grouped_*; and conv_transpose2d,
on conv2d's kernels, grouped or dilated on conv2d_grouped's), max/avg/LP pooling, ReLU, GELU,
LeakyReLU, Sigmoid, Tanh, SiLU, the scaling, the channel gate, dropout, batchnorm2d, groupnorm, softmax_cross_entropy
and linear (bfloat16/float16 on the tensor-core GEMM, float32 and float64 as 1x1 convolutions) have
launchers (kernels/*.cu), on 'cuda' and on 'sim'. So on 'sim' every ``kernels/*.cu`` kernel runs on
the simulator, and the rest of a training step (the few array operations between the ops) is plain
NumPy, exactly as on 'cuda' it is plain CuPy, with no library GEMM (cuBLAS), which CuPy would refuse
inside a CUDA graph capture.

Layouts. Ops keep the layout they are given (gpuconv.layout): when an op's first 4-D array
argument is channels_last, its activation result (y, or dx) comes back channels_last, whichever
path ran
(a kernel that reads NHWC memory returns them so at no cost; a path that computes in NCHW pays a
conversion, which the launch log cannot hide from a benchmark).

Devices. On 'cuda' the launcher or reference runs with the arrays' GPU as CuPy's current device,
so outputs are allocated where the inputs live (CuPy allocates on the current device, which is
not switched by ``Device('cuda:1')`` alone).
"""
from __future__ import annotations

import numpy as np

from .. import kernels, layout
from ..kernels._log import _launch_logs
from ..backend import array_device_context, kernel_target
from ._checks import cached, check_float, check_same_dtype

_TARGETS = ("cuda", "sim")
_LAUNCHERS: dict[tuple[str, str], object] = {}


def register_launcher(op_name, targets=_TARGETS):
    """Decorator: ``fn`` runs ``op_name`` (e.g. 'conv2d_forward') on the given kernel targets."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    for t in targets:
        if t not in _TARGETS:
            raise ValueError(f"targets: {t!r} is not a kernel target; use 'cuda' and/or 'sim'")

    def decorate(fn):
        for t in targets:
            _LAUNCHERS[(op_name, t)] = fn
        return fn

    return decorate


def unregister_launcher(op_name, targets=_TARGETS):
    """Remove launchers (tests use this to compare both paths)."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    for t in targets:
        _LAUNCHERS.pop((op_name, t), None)


def get_launcher(op_name, target):
    """The launcher for ``op_name`` on ``target``, or None (no target, or nothing registered)."""
    if target is None:
        return None
    return _LAUNCHERS.get((op_name, target))


def call(op_name, target, reference, *args):
    """Run ``op_name``: its launcher when one is registered for ``target``, else ``reference``
    (on 'cuda', with the arrays' device current)."""
    if target is None:  # the NumPy reference (no launcher is looked for: there is no kernel target)
        return _keep_layout(args, reference(*args))
    if target == "cuda":
        with array_device_context(args):
            return _run(op_name, target, reference, args)
    return _run(op_name, target, reference, args)


def call_elementwise(op_name, reference, x, *scalars):
    """An elementwise op's forward (ReLU, GELU, the scaling): ``x`` checked, then :func:`call` on
    ``x``'s target with ``x`` and ``scalars``. The reference returns ``(y, cache)``."""
    check_float("x", x)
    return call(op_name, kernel_target(x), reference, x, *scalars)


def call_elementwise_backward(op_name, reference, dy, cache, saved="x"):
    """Its backward: ``dy`` checked against the array the forward kept, ``cache.x`` (its input) or,
    with ``saved='y'``, ``cache.y`` (its output: Sigmoid's and Tanh's), in shape and dtype, then
    :func:`call` on their target."""
    check_float("dy", dy)
    a = getattr(cache, saved)
    if tuple(dy.shape) != tuple(a.shape):
        which = "input" if saved == "x" else "output"
        raise ValueError(f"dy must have the forward {which}'s shape {tuple(a.shape)}, got {tuple(dy.shape)}")
    if dy.dtype != a.dtype:  # (check_same_dtype's test, its error only where it fails)
        check_same_dtype(saved, a, dy=dy)
    return call(op_name, kernel_target(dy, a, names=("dy", cached(saved))), reference, dy, cache)


def _run(op_name, target, reference, args):
    """``op_name`` on the kernel target ``target`` (not None): its launcher, else ``reference``."""
    launcher = _LAUNCHERS.get((op_name, target))  # get_launcher(op_name, target)
    if launcher is not None:
        out = launcher(*args, target=target)
        if out is not NotImplemented:
            if _launch_logs.get():  # (log_dispatch's loop, asked only where a launch log is open)
                kernels.log_dispatch(op_name, target, "kernel")
            return _keep_layout(args, out)
    # the launch log tells a kernel op that fell back from one that has none
    path = ("declined" if launcher is not None else "no-launcher" if has_kernels(op_name) else "reference")
    kernels.log_dispatch(op_name, target, path)
    return _keep_layout(args, reference(*args))


def _keep_layout(args, out):
    """``out`` with its activation (the result itself, or the first of a tuple: y of (y, cache),
    dx of (dx, dw, db)) channels_last when the first 4-D array among ``args`` is. Parameter
    gradients keep the parameters' own layout."""
    # An activation in NHWC memory already is what a channels_last ``args`` asks for, and any other
    # is left as it is: answered without looking at ``args`` (layout.nhwc_memory_of's test, read
    # off NumPy's flags for a NumPy array, off the shape-and-strides memo for another).
    y = out[0] if type(out) is tuple else out
    if type(y) is np.ndarray:
        if y.ndim != 4 or (not y.flags.c_contiguous and y.transpose(layout.NHWC).flags.c_contiguous):
            return out
    elif getattr(y, "ndim", None) != 4 or layout._orders_by_strides(y.shape, y.strides, y.itemsize)[1]:
        return out
    for ref in args:  # the first 4-D array
        if getattr(ref, "ndim", None) == 4:
            break
    else:
        return out
    if (type(ref) is np.ndarray and ref.flags.c_contiguous) or not layout.is_channels_last(ref):
        return out  # (NumPy's C-contiguous flag: NCHW, answered without a call)
    if type(out) is tuple:
        return (layout.nhwc_memory_of(out[0]),) + out[1:]
    return layout.nhwc_memory_of(out)


def has_kernels(op_name) -> bool:
    """Whether ``op_name`` has a launcher on some kernel target (its kernels should run there)."""
    return any(get_launcher(op_name, t) is not None for t in _TARGETS)


