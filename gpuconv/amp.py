"""Mixed-precision training: float32 masters, low-precision compute, loss scaling on the device.

A training precision is one of:
- ``'fp32'``: float32 everywhere, strict IEEE (the default; reproducible);
- ``'tf32'``: float32 arrays, with conv2d and linear rounding their inputs to TF32 inside the
  GEMM (:func:`gpuconv.precision_mode`, like PyTorch's ``allow_tf32``);
- ``'auto'`` (:func:`resolve_precision`): ``'bf16'`` on a GPU with bfloat16 tensor cores
  (compute capability 8.0 or newer), ``'fp16'`` on one with float16 tensor cores only (7.5: a
  T4, an RTX 20xx; with the loss scaler), ``'fp32'`` anywhere else (the CPU, the simulator,
  older GPUs); what the speed recipes (fast, the airbench ones) train in;
- ``'bf16'`` / ``'fp16'``: the parameters stay float32 masters, held and updated by the
  optimizer; once per step each conv/linear parameter is cast to the low precision on the
  device (:func:`cast_parameters`), the batch too, and forward and backward compute with those
  copies (ops multiply and add in float32 and round once, see :mod:`gpuconv.precision`).
  Gradients come back in the low precision and are accumulated in float32
  (:meth:`gpuconv.layers.Parameter.accumulate`); the optimizer applies them in float32. Batch
  norm keeps float32 parameters and statistics, group norm float32 parameters; the loss is
  computed in float32.

fp16's range is narrow (largest 65504, smallest normal 6.1e-5), so small gradients would flush
to zero: fp16 training scales the loss by ``S`` before the backward (:class:`LossScaler`), and
unscales the float32 gradients after it. ``S`` adapts as PyTorch's GradScaler does: halved after
a step whose gradients overflowed (that step is skipped), doubled after ``growth_interval``
clean steps. All of it is decided on the device, with no readback per step: the skip is a
device-side select in :meth:`gpuconv.optim.Optimizer.step`. bf16 has float32's range and needs
no scaling.
"""
from __future__ import annotations

import contextlib
import threading
import weakref

import numpy as np

from . import backend, kernels, layout, precision
from .ops import _launch_conv2d_tc as tc
from .ops._checks import DtypeMismatchError, check_array

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
CAST_TENSORS = kernels.defines("amp.cu")["CAST_TENSORS"]  # parameters per launch of cast_parameters


def channels_last_for(precision: str) -> bool:
    """Whether activations should be channels_last (gpuconv.layout) in ``precision``: yes where the
    convolutions run on tensor cores (tf32, bf16, fp16), whose kernels read NHWC memory and would
    otherwise convert every NCHW input and output; no in strict fp32 (CUDA-core kernels, NCHW).
    The trainer's loaders and the benchmarks follow it; the values are the same either way."""
    return check_precision(precision) != "fp32"


def compute_dtype(precision: str):
    """The dtype forward and backward compute in for ``precision`` (float32 for fp32/tf32)."""
    check_precision(precision)
    if precision == "bf16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(np.float16 if precision == "fp16" else np.float32)


def resolve_precision(precision, device=None) -> str:
    """``precision`` checked, with ``'auto'`` made concrete for ``device`` (a
    :class:`gpuconv.backend.Device` or its spec; default: the default device): ``'bf16'`` on a
    CUDA device of compute capability 8.0 or newer, whose tensor cores multiply bfloat16 (the
    convolutions 4-5x faster than strict float32 there, to float32's accuracy: RESULTS.md);
    ``'fp16'`` on one of 7.5 (Turing: a T4, an RTX 20xx), whose tensor cores multiply float16
    alone (65 TFLOP/s on a T4 against 8 in float32; the trainer scales the loss for fp16's range,
    :class:`LossScaler`); else ``'fp32'``: NumPy and the simulator compute the low precisions in
    software, and older GPUs have no tensor cores for them (:func:`gpuconv.kernels.tensor_cores_available`)."""
    if precision != "auto":
        check_precision(precision)
        if precision == "bf16":
            _check_cupy_bfloat16(device)
        return precision
    device = backend.get_default_device() if device is None else backend.Device(device)
    if not device.is_cuda:
        return "fp32"
    cc = int(backend.require_cupy().cuda.Device(device.index).compute_capability)
    if cc >= kernels.TENSOR_CORE_MIN_CC["bfloat16"]:
        _check_cupy_bfloat16(device, auto=True)
        return "bf16"
    return "fp16" if cc >= kernels.TENSOR_CORE_MIN_CC["float16"] else "fp32"


CUPY_BFLOAT16_NUMPY = (2, 1, 2)  # CuPy holds ml_dtypes' bfloat16 arrays only with this NumPy or newer


def _check_cupy_bfloat16(device, auto=False):
    """bf16 on a CUDA device needs NumPy >= 2.1.2: CuPy registers ml_dtypes' bfloat16 only from that
    NumPy on, and before it refuses every bf16 array ("Unsupported dtype bfloat16") at the first
    upload. Said here, with the fix, instead."""
    device = backend.get_default_device() if device is None else backend.Device(device)
    if not device.is_cuda:
        return
    have = tuple(int(p) if p.isdigit() else 0 for p in np.__version__.split(".")[:3])
    if have < CUPY_BFLOAT16_NUMPY:
        raise RuntimeError(f"precision bf16{' (what auto chooses on this GPU)' if auto else ''} on {device} needs "
                           f"NumPy >= 2.1.2, whose bfloat16 CuPy can hold; this is NumPy {np.__version__}: "
                           "pip install -U 'numpy>=2.1.2' (the gpuconv[cuda12]/[cuda13] extras require it), or "
                           "train with --precision fp16 or fp32")


def check_precision(precision, where="precision"):
    if precision not in PRECISIONS:
        raise ValueError(f"{where}={precision!r}: use one of {', '.join(PRECISIONS)} (fp32: strict float32; "
                         "tf32: float32 with TF32 convolutions; bf16/fp16: mixed precision with float32 masters), "
                         "or 'auto' where a device decides it (amp.resolve_precision)")
    return precision


def cast_parameters(model, dtype, backward: bool = True):
    """Give every low-precision-capable parameter of ``model`` (conv and linear weights and
    biases) a ``.compute`` copy in ``dtype``, cast on its device; None (or float32) clears them.
    On a kernel target ('cuda', 'sim') float32 masters are cast to bfloat16/float16 by
    kernels/amp.cu, several per launch (the bits of ``astype``), and the copies of 4-D filters are
    channels_last (OHWI memory, gpuconv.layout), the order the tensor-core convolutions read
    them in, so the forward takes them without a repacking copy (a grouped or dilated Conv2d's
    filters: OIHW, as kernels/conv2d_grouped.cu reads them, which would otherwise repack an OHWI
    copy in the forward and again in the backward of every step); the same launches write each
    filter also as the tensor-core data gradient reads it (CRSK, K padded to the kernels' 16-byte
    piece; ``_launch_conv2d_tc.pack_for_data_gradient``), which it would otherwise repack per
    call (``backward=False``, for evaluation, a GPU without tensor cores, or a grouped or dilated
    Conv2d's filters, which kernels/conv2d_grouped.cu reads unpacked: not; with
    ``backward=False`` still for a ConvTranspose2d's filters, whose forward is that data
    gradient). Anything else is cast by ``astype``."""
    _cast_each(_low_precision_parameters(model), dtype, backward)


class _Parameters(list):
    """The parameters to cast, and ``forward_packed``: the ids of those whose layer's forward reads
    the data gradient's packing of them (a transposed convolution's, which is a data gradient);
    ``unpacked``: of those no kernel reads packed (a grouped or dilated Conv2d's filters)."""
    forward_packed = frozenset()
    unpacked = frozenset()


def _low_precision_parameters(model) -> list:
    """The parameters :func:`cast_parameters` gives compute copies, in the model's order."""
    out, forward_packed, unpacked = _Parameters(), set(), set()
    for m in model.modules():
        names = getattr(m, "_low_precision_params", ())
        if not names:
            continue
        packs = unpacks = None  # (each layer's lists asked once, where it has such a parameter)
        for name in names:
            p = getattr(m, name, None)
            if p is not None:
                out.append(p)
                if packs is None:
                    packs = getattr(m, "_forward_reads_data_gradient_filters", ())
                    unpacks = getattr(m, "_filters_read_unpacked", ())
                if name in packs:
                    forward_packed.add(id(p))
                if name in unpacks:
                    unpacked.add(id(p))
    if forward_packed:
        out.forward_packed = frozenset(forward_packed)
    if unpacked:
        out.unpacked = frozenset(unpacked)
    return out


def _cast_each(params, dtype, backward: bool = True):
    """:func:`cast_parameters` over the list ``params`` (:func:`_low_precision_parameters`'s): a
    step casts and clears the same parameters, from one walk of the model."""
    dt = None if dtype is None else np.dtype(dtype)
    forward_packed, unpacked = getattr(params, "forward_packed", ()), getattr(params, "unpacked", ())
    batch, cores = [], {}
    for p in params:
        if p.compute is not None:
            tc.forget_packed(p.compute)
        data = p.data
        if dt is None or dt == data.dtype:
            p.compute = None
            continue
        target = _castable(data, dt)
        if not target:
            p.compute = data.astype(dt)
            continue
        # data's GPU (kernels.array_device's answer: on 'cuda' data is a CuPy array), None on the simulator
        device = backend.device_id(data) if target == "cuda" else None
        pack = (backward or id(p) in forward_packed) and id(p) not in unpacked and data.ndim == 4
        if pack:  # where the tensor cores read the packing: asked once per device in a call
            where = (type(data), device)
            pack = cores.get(where)
            if pack is None:
                pack = cores[where] = bool(_tensor_cores(data, dt))
        nhwc = id(p) not in unpacked
        if target == "cuda":
            cp = backend.cupy_module()
            with cp.cuda.Device(device):  # CuPy allocates on the current device
                p.compute, packed = _copies(cp, data, dt, pack, nhwc)
        else:
            p.compute, packed = _copies(np, data, dt, pack, nhwc)
        batch.append((data, p.compute, 0, device))
        if packed is not None:
            tc.pack_for_data_gradient(p.compute, packed)
            batch.append((data, packed, data.shape[0], device))
        while len(batch) >= CAST_TENSORS:
            _launch_cast(batch[:CAST_TENSORS])
            batch = batch[CAST_TENSORS:]
    if batch:
        _launch_cast(batch)


def _copies(xp, data, dt, pack, nhwc=True):
    """The new (empty) compute copy of ``data`` in ``dt`` (channels_last for 4-D filters, unless
    ``nhwc`` is False: OIHW) and, with ``pack`` (4-D filters the tensor cores read), its data
    gradient's packing (else None)."""
    compute = layout.empty(xp, data.shape, dt, channels_last=nhwc) if data.ndim == 4 else xp.empty(data.shape, dt)
    return compute, _data_gradient_filters(xp, data, dt) if pack else None


def _tensor_cores(data, dtype) -> bool:
    """Whether ``data``'s device runs the tensor-core convolutions of ``dtype``, the only readers of
    the data gradient's packed filters (a V100's bf16/fp16 and a T4's bf16 convolutions run on
    CUDA cores)."""
    return kernels.tensor_cores_for(backend.kernel_target(data), lambda: kernels.array_device([data]), dtype)


def _castable(data, dt):
    """The kernel target ('cuda', 'sim') that casts ``data`` to ``dt`` (cast_parameters), or None:
    ``astype`` does."""
    if dt in (precision.bfloat16, precision.float16) and data.dtype == np.float32 and data.flags.c_contiguous:
        return backend.kernel_target(data)
    return None


def _data_gradient_filters(xp, w, dt):
    """An empty (C, FH, FW, K padded to 8) array for the data gradient's copy of the OIHW filters
    ``w`` in ``dt`` (None for anything but 4-D filters)."""
    if w.ndim != 4:
        return None
    k, c, fh, fw = w.shape
    return xp.empty((c, fh, fw, tc.padded_channels(k, dt)), dt)


def _launch_cast(batch):
    """cast_parameters over up to CAST_TENSORS ``(src, dst, rows, device)`` slots, a launch per
    device (src's: :func:`gpuconv.kernels.array_device`) and dtype (:func:`gpuconv.kernels.launch_slots`).
    A 4-D ``dst`` is channels_last: written in its NHWC memory order from the OIHW ``src`` (an OIHW
    ``dst`` in order); with ``rows`` (the filters' count) ``dst`` is the data gradient's (C, FH, FW,
    K padded) copy."""
    groups = {}
    for src, dst, rows, device in batch:  # one launch per (device, dtype): a model is on one, in practice
        groups.setdefault((device, dst.dtype), []).append((src, dst, rows))
    for (device, dt), items in groups.items():
        slots = []
        for src, dst, rows in items:
            # (a 4-D dst neither channels_last nor the packing, OIHW, is a copy in order: inner 1;
            # one whose two layouts are one memory, either way)
            transposed = src.ndim == 4 and (rows > 0 or layout.is_channels_last(dst))
            key = (src.shape, dst.size, rows, transposed)
            sizes = _CAST_SIZES.get(key)
            if sizes is None:  # (the size arguments as NumPy scalars, made once per parameter shape)
                inner, taps = (src.shape[1], src.shape[2] * src.shape[3]) if transposed else (1, 1)
                sizes = (np.int64(dst.size), np.int32(inner), np.int32(taps), np.int32(rows))
                if len(_CAST_SIZES) >= 4096:
                    _CAST_SIZES.clear()
                _CAST_SIZES[key] = sizes
            slots.append((src, layout.memory_order(dst)) + sizes)
        src0, dst0, _ = items[0]
        kernels.launch_slots("amp", "cast_parameters", dt, backend.kernel_target(src0), slots,
                             [dst.size for _, dst, _ in items], CAST_TENSORS,
                             (src0, layout.memory_order(dst0)) + _IDLE_SIZES, device=device)


_CAST_SIZES: dict = {}  # (src shape, dst size, rows) -> a cast slot's size arguments
_IDLE_SIZES = (np.int64(0), np.int32(1), np.int32(1), np.int32(0))  # an unused slot's


@contextlib.contextmanager
def autocast(model, precision: str, backward: bool = True):
    """Forward/backward of ``model`` in ``precision`` inside the block: the parameters' compute
    copies for bf16/fp16 (cleared afterwards), the TF32 mode for tf32. Yields the compute dtype,
    which the caller casts its input batch to. ``backward=False`` (evaluation, inference): no
    copies for a backward pass."""
    from .precision import precision_mode
    dt = compute_dtype(precision)
    low = dt != np.float32
    with model_lock(model):  # the copies live on the shared parameters: one block at a time
        params = _low_precision_parameters(model) if low else []
        try:
            if low:  # (inside: copies made before a failure, an out-of-memory, are cleared too)
                _cast_each(params, dt, backward)
            with precision_mode("tf32" if precision == "tf32" else "fp32"):
                yield dt
        except DtypeMismatchError as exc:
            # the batch was cast to float32: a float64 model's first layer would say to pass float64,
            # which the caller did (looked at only on failure: no walk of the model per step)
            wide = None if low else next((p for p in model.parameters() if p.data.dtype != np.float32), None)
            if wide is None:
                raise
            raise DtypeMismatchError(f"precision {precision!r} computes in float32, but the model's parameter "
                                     f"{wide.name!r} is {wide.data.dtype}: convert the model with "
                                     "model.astype(np.float32) (a float64 model is for gradient checks: call it "
                                     "directly, model(x.astype(np.float64)))") from exc
        finally:
            if low:
                _cast_each(params, None)


_model_locks: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_model_locks_guard = threading.Lock()


def model_lock(model) -> threading.RLock:
    """The lock that :func:`autocast` and evaluation hold on ``model``: both change state of the
    shared model (its parameters' compute copies, its train/eval mode), so threads that predict
    or evaluate with one model take turns instead of reading each other's half-made copies."""
    with _model_locks_guard:
        try:
            lock = _model_locks.get(model)
            if lock is None:
                lock = _model_locks[model] = threading.RLock()
        except TypeError:  # a model of the user's own that is unhashable or takes no weak reference
            lock = _SHARED_LOCK
        return lock


_SHARED_LOCK = threading.RLock()


class LossScaler:
    """Dynamic loss scaling, all on the device (PyTorch GradScaler's rule and defaults).

    Per step: the loss gradient is multiplied by ``S`` (:meth:`factor` passed to the loss as
    ``softmax_cross_entropy(..., grad_scale=...)``, which scales it before rounding it to
    float16; or :meth:`scale` on a loss gradient of one's own); after the backward
    :meth:`unscale` divides the float32 gradients by ``S`` and returns a 0-d boolean device
    array, true when any of them is Inf/NaN; the optimizer skips the step on the device where
    it is true (``optimizer.step(skip=found_inf)``); :meth:`update` then halves ``S`` (overflow)
    or doubles it after ``growth_interval`` clean steps in a row. ``state_dict`` holds ``S``
    and the clean-step count, so a resumed run scales exactly as the uninterrupted one."""

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        # The scale is kept in float32, and unscale multiplies by its reciprocal: an init_scale past
        # float32's largest value is inf (backing off keeps it inf), one below its smallest normal value
        # is 0 or has an infinite reciprocal; either way every step would be skipped, for good.
        f32 = np.finfo(np.float32)
        if not (float(f32.tiny) <= init_scale <= float(f32.max) and growth_factor > 1 and 0 < backoff_factor < 1
                and growth_interval >= 1):
            raise ValueError(f"LossScaler(init_scale={init_scale!r}, growth_factor={growth_factor!r}, "
                             f"backoff_factor={backoff_factor!r}, growth_interval={growth_interval!r}): need "
                             "1.2e-38 <= init_scale <= 3.4e38 (a normal float32; 2**16 is the usual start), "
                             "growth_factor > 1, 0 < backoff_factor < 1, growth_interval >= 1")
        self.init_scale, self.growth_factor = float(init_scale), float(growth_factor)
        self.backoff_factor, self.growth_interval = float(backoff_factor), int(growth_interval)
        self.scale_ = None    # 0-d float32 on the device, created at the first use
        self.tracker = None   # 0-d int32: clean steps since the last change of scale

    def _ensure(self, like):
        """``S`` and the clean-step count where ``like`` lives: made at the first use, moved (not
        restarted) when the scaler is used for a model in another place, the host or another GPU
        (CuPy refuses another GPU's array in a kernel, and the scaler has no device of its own)."""
        dev = backend.device_of(like)
        if self.scale_ is None:
            self.scale_ = backend.to_device(np.asarray(self.init_scale, np.float32), dev)
            self.tracker = backend.to_device(np.asarray(0, np.int32), dev)
        elif backend.device_of(self.scale_) != dev:
            self.scale_ = backend.to_device(self.scale_, dev)
            self.tracker = backend.to_device(self.tracker, dev)

    def factor(self, like):
        """``S``: a 0-d float32 array on ``like``'s device, for the loss's ``grad_scale``."""
        self._ensure(like)
        return self.scale_

    def scale(self, dloss):
        """``dloss * S``, computed in float32 and rounded once to ``dloss``'s dtype. A float16
        ``dloss`` was rounded before it was scaled: what lay below float16's range is lost
        already; the loss's ``grad_scale`` (:meth:`factor`) scales before that rounding."""
        self._ensure(dloss)
        with backend.array_device_context((dloss,)):  # (CuPy allocates on its current device)
            return (dloss.astype(np.float32) * self.scale_).astype(dloss.dtype)

    def unscale(self, params):
        """Divide every ``.grad`` by ``S`` in place; a 0-d bool device array: any non-finite?"""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            raise ValueError("LossScaler.unscale: no parameter has a gradient; call it after the backward")
        self._ensure(grads[0])
        xp = backend.get_array_module(grads[0])
        with backend.array_device_context(grads[:1]):  # the flags on the gradients' GPU, not the current one
            inv = (1.0 / self.scale_).astype(np.float32)
            # One flag per gradient written into a vector, not a stack of flags: CuPy joins more than 8
            # arrays in one kernel whose table of their addresses it uploads from the host, which the
            # capture of a CUDA graph (gpuconv.graphs) refuses.
            finite = xp.empty(len(grads), dtype=bool)
            for i, g in enumerate(grads):
                g *= inv.astype(g.dtype)
                finite[i] = xp.isfinite(g).all()
            return ~finite.all()

    def update(self, found_inf):
        """The next step's ``S``: backed off after an overflow, grown after a clean run, unless
        growing would overflow float32 (as PyTorch's GradScaler: an infinite S would turn every
        gradient into inf or NaN, every later step skipped, for good)."""
        xp = backend.get_array_module(found_inf)
        with backend.array_device_context((found_inf, self.scale_)):  # (CuPy allocates on its current device)
            self._update(xp, found_inf)

    def _update(self, xp, found_inf):
        grown = self.tracker + 1
        grow = grown >= self.growth_interval
        with np.errstate(over="ignore"):  # (an overflow to inf is what the isfinite below catches)
            larger = self.scale_ * np.float32(self.growth_factor)
        scale = xp.where(found_inf, self.scale_ * np.float32(self.backoff_factor),
                         xp.where(grow & xp.isfinite(larger), larger, self.scale_))
        # In place: a step replayed as a CUDA graph (gpuconv.graphs) reads and writes the arrays of
        # its capture; new ones would leave every replay the captured step's S.
        xp.copyto(self.scale_, scale.astype(np.float32))
        xp.copyto(self.tracker, xp.where(found_inf | grow, 0, grown).astype(np.int32))

    @property
    def current_scale(self) -> float:
        """``S`` as a Python float (a readback: for logs and tests, not for the step)."""
        return self.init_scale if self.scale_ is None else float(backend.asnumpy(self.scale_))

    def __repr__(self):
        return (f"LossScaler(scale={self.current_scale}, growth_factor={self.growth_factor}, "
                f"backoff_factor={self.backoff_factor}, growth_interval={self.growth_interval})")

    def state_dict(self):
        return {"scaler": "LossScaler", "scale": self.current_scale,
                "tracker": 0 if self.tracker is None else int(backend.asnumpy(self.tracker)),
                "init_scale": self.init_scale, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval}

    def load_state_dict(self, d):
        from .optim import _check_saved_by, _scalar
        _check_saved_by(self, d, "scaler")
        for name in ("init_scale", "growth_factor", "backoff_factor"):
            setattr(self, name, float(_scalar(d[name])))
        self.growth_interval = int(_scalar(d["growth_interval"]))
        scale, tracker = float(_scalar(d["scale"])), int(_scalar(d["tracker"]))
        if self.scale_ is None:
            self.scale_ = np.asarray(scale, np.float32)   # moved to the device at first use
            self.tracker = np.asarray(tracker, np.int32)
            return
        # Into the arrays the scaler has, as PyTorch's GradScaler fills its own: a step replayed as a
        # CUDA graph reads and writes the arrays of its capture (a fill is a launch, no host copy).
        with backend.array_device_context((self.scale_,)):
            self.scale_.fill(np.float32(scale))
            self.tracker.fill(np.int32(tracker))


def cast_input(x, dt):
    """The batch ``x`` in the compute dtype ``dt``: a floating array (any of gpuconv's dtypes), cast
    when it is not already ``dt``. Raw pixels are refused: cast, a uint8 image trains on values
    100x too large, its loss in the hundreds, with no error anywhere."""
    check_array("x", x)  # a list of images, a torch tensor: named, not an AttributeError on .dtype
    if x.dtype not in precision.DTYPES:
        if np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"the batch has dtype {x.dtype}: a network takes normalized float images, not raw pixels; "
                            "normalize them first (gpuconv.data.normalize(images), or a gpuconv.data.DeviceLoader, "
                            "which does it on the device)")
        raise TypeError(f"the batch has dtype {x.dtype}, but a network takes {precision.DTYPE_NAMES} images: "
                        "convert it, e.g. x.astype(np.float32)")
    return x if x.dtype == dt else x.astype(dt)


def training_step(model, optimizer, x, y, precision="fp32", scaler=None, label_smoothing=0.0,
                  count_correct=False):
    """One optimizer step of ``model`` on the batch ``(x, y)`` in ``precision``: forward, float32
    loss, backward (the input gets no gradient), then the update, with ``scaler`` (fp16) scaling
    the loss gradient and skipping an overflowed step on the device. Returns ``(loss, logits)``
    as device arrays: nothing is read back; with ``count_correct``, ``(loss, logits, correct)``,
    the batch's right predictions counted by the loss's own launch. The step the trainer and the
    benchmarks run."""
    from .layers import call_backward, input_is_data
    from .ops import softmax_cross_entropy
    # The parameters' GPU current (a no-op on the host): CuPy makes the loss, the scaler's flags and
    # every temporary between the kernels on its current device, so a model on cuda:1 stepped while
    # cuda:0 was current made them on GPU 0, which its kernels refused. (The optimizer's list of
    # parameters: model.parameters() walks the model, some 0.1 ms a step for airbench94.)
    first = optimizer.params[:1] if hasattr(optimizer, "params") else model.parameters()[:1]
    with backend.parameters_device_context(first):
        optimizer.zero_grad()
        with autocast(model, precision) as dt:
            with input_is_data(model):
                logits = model(cast_input(x, dt))
            with _scaled_gradients(scaler):
                loss, dlogits, *correct = softmax_cross_entropy(  # float32 loss; dlogits scaled, then rounded
                    logits, y, label_smoothing=label_smoothing, count_correct=count_correct,
                    grad_scale=None if scaler is None else scaler.factor(logits))
                call_backward(model, dlogits, need_dx=False)
        if scaler is None:
            optimizer.step()
        else:  # the float32 gradients unscaled; an overflowed step leaves everything as it was
            with _scaled_gradients(scaler):
                found_inf = scaler.unscale(optimizer.params)
                optimizer.step(skip=found_inf)
            scaler.update(found_inf)
        return (loss, logits, *correct)


def _scaled_gradients(scaler):
    """Where the loss scaler's gradients may overflow float16 by design (their infs and NaNs are what
    :meth:`LossScaler.unscale` finds, and the step is skipped): NumPy's overflow and invalid-value
    warnings silenced there alone. The forward's stay: an overflow there is no scale's doing."""
    return np.errstate(over="ignore", invalid="ignore") if scaler is not None else contextlib.nullcontext()

