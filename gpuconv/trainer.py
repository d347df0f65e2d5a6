"""Training and evaluation: a device-resident step, checkpoints, resume, Ctrl-C, telemetry.

The step (:meth:`Trainer.train_step`) launches work only: forward, loss, backward, optimizer
and schedule steps, and two writes into a small device buffer (this step's mean loss and
correct count). Nothing is read back to the host there. Once per ``log_every`` steps, and at
the end of an epoch, the buffer comes back in ONE readback (:meth:`Trainer._flush`): that
updates the progress bar (loss, accuracy, images/s), appends a line to ``metrics.jsonl``,
and is where a NaN/Inf loss is found and named by step. Checkpoints are written only after a
flush found every loss finite, of finite weights, and at an epoch's end only after a finite
validation loss: a divergence keeps the last checkpoint that passed. (A step checkpoint holds
the weights after that step's update, which no loss has measured yet: a resume that diverges at
once says the learning rate is too high for them.)

Resume is bit-identical: a checkpoint holds parameters, buffers, optimizer and schedule
state, the epoch, the step within it, the loader's state as it was when that epoch began and
every ``numpy.random.Generator`` the model and loader hold. Resuming mid-epoch replays the
loader up to the saved batch (same shuffle, same augmentation draws) without training on it.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import numbers
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import amp, backend, kernels
from ._console import CONSOLE, _is_terminal, command_line
from ._files import (BINARY, NOFOLLOW, WRITE_FIXES, directory_lock, fsync_dir, make_dirs, new_file_mode, restated,
                     write_atomic)
from . import checkpoint as ckpt
from .counter_rng import check_seed
from .graphs import REPLAYED_WAY_OUT
from .monitor import GPUMonitor, format_snapshot, metrics_fields
from .optim import _matmul
from .ops._checks import check_array


class TrainingDiverged(FloatingPointError):
    """The loss (training or validation) or the weights became NaN or Inf; ``step`` is the first bad
    step, ``checkpoint`` the last one written (None: none was)."""

    def __init__(self, message, step=None, checkpoint=None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM (a scheduler's preemption, ``timeout``): the current step
    finished and (with an ``out_dir``) a checkpoint was saved. ``signal`` names which came.
    ``save_error``: the OSError that kept that checkpoint from being written (a full disk), else
    None; then ``checkpoint`` is None and the steps since the checkpoint on disk are lost."""

    def __init__(self, message, checkpoint=None, epoch=None, step=None, signal=signal.SIGINT, save_error=None):
        super().__init__(message)
        self.message, self.checkpoint, self.epoch, self.step = message, checkpoint, epoch, step
        self.signal, self.save_error = signal, save_error

    def __str__(self):
        return self.message


class GPUOutOfMemory(MemoryError):
    """Out of (GPU) memory, with the batch size, what the pool holds, and what to try."""


def _gib(nbytes) -> str:
    return f"{nbytes / float(1 << 30):.2f} GiB"


def oom_message(exc, batch_size=None, pool=None, checkpoint=None, where="training step") -> str:
    """The message for an out-of-memory error; ``pool`` is a CuPy memory pool (or look-alike)."""
    gpu = type(exc).__name__ == "OutOfMemoryError"
    lines = [f"out of {'GPU' if gpu else 'host'} memory in the {where}"
             + (f" with batch size {batch_size}" if batch_size else "") + f": {exc}"]
    if gpu and pool is None:
        cp = backend.cupy_module()
        pool = cp.get_default_memory_pool() if cp is not None else None
    if pool is not None:
        try:
            lines.append(f"the CuPy memory pool holds {_gib(pool.total_bytes())}, "
                         f"{_gib(pool.used_bytes())} of it in use by live arrays")
        except Exception:
            pass
    fix = "try a smaller batch"
    if batch_size and batch_size > 1:
        fix = f"try --batch-size {max(1, batch_size // 2)} (half of {batch_size})"
    lines.append(fix + ", a narrower model (--width for fast_net), or close other processes using "
                 + ("the GPU (see nvidia-smi)" if gpu else "memory"))
    if checkpoint is not None and Path(checkpoint).exists():
        lines.append(f"training state is not lost: the last checkpoint stands at {checkpoint}; "
                     "continue from it with --resume")
    return "; ".join(lines)


# How an exhausted GPU shows up besides CuPy's OutOfMemoryError (a MemoryError): cuBLAS failing
# to allocate its workspace, or the driver/runtime refusing memory at a launch.
_OOM_MARKERS = ("CUBLAS_STATUS_ALLOC_FAILED", "CUDA_ERROR_OUT_OF_MEMORY", "cudaErrorMemoryAllocation",
                "CUSOLVER_STATUS_ALLOC_FAILED", "out of memory")


def _check_batches(loader, name):
    """``(images, labels)`` passed where an iterable of batches goes would iterate over the images
    (an unpacking error about values): named, with what to pass instead."""
    if isinstance(loader, (tuple, list)) and len(loader) == 2 and all(hasattr(a, "ndim") for a in loader):
        shapes = " and ".join(str(tuple(a.shape)) for a in loader)
        raise TypeError(f"{name} is a pair of arrays ({shapes}), not an iterable of (x, y) batches: wrap them in a "
                        "loader, e.g. gpuconv.data.DeviceLoader(images, labels, batch_size=64) for uint8 images, "
                        "or pass a list of (x, y) batches")


def _is_oom(exc) -> bool:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return type(exc).__module__.split(".")[0] in ("cupy", "cupy_backends") and any(
        m.lower() in str(exc).lower() for m in _OOM_MARKERS)


def _generators(obj, prefix):
    """(name, Generator) for every NumPy Generator held in ``obj``'s attributes, directly or in a
    dict attribute: a data loader's, whatever class it is (layers name theirs through
    :meth:`gpuconv.layers.Layer.named_generators`)."""
    found = []
    for attr, value in sorted(vars(obj).items()) if hasattr(obj, "__dict__") else []:
        if isinstance(value, np.random.Generator):
            found.append((f"{prefix}.{attr}", value))
        elif isinstance(value, dict):
            found += [(f"{prefix}.{attr}.{k}", v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
                      if isinstance(v, np.random.Generator)]
    return found




def _metrics_record(line: str):
    """The record a line of metrics.jsonl holds, or None for a line that holds none of ours: cut off
    by a crash, or damaged (not a JSON object, a step or epoch that is not a whole number, a loss
    or accuracy that is not a number), which the resume's trim, the best epoch and the curves
    could not read."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(rec, dict) or (rec.get("kind") == "epoch" and "epoch" not in rec):
        return None
    for key in ("step", "epoch"):
        if key in rec and (isinstance(rec[key], bool) or not isinstance(rec[key], int)):
            return None
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        if rec.get(key) is not None and (isinstance(rec[key], bool) or not isinstance(rec[key], (int, float))):
            return None
    return rec


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel: its output area redraws a progress bar (tqdm.auto's
    widget, or text frames without ipywidgets) though stderr there is no terminal."""
    ipython = sys.modules.get("IPython")
    try:
        shell = ipython.get_ipython() if ipython is not None else None
    except Exception:  # noqa: BLE001  (an IPython that is half imported or shut down)
        return False
    return type(shell).__name__ == "ZMQInteractiveShell"


def _lrs_text(record):
    """A record's lr for a line of text: the groups' where they differ from ``lr`` (a recipe's batch
    norm biases at 64 times the lr, a Chain's members), else ``lr``."""
    groups = record.get("group_lrs") or [record["lr"]]
    if all(lr == record["lr"] for lr in groups):
        return f"{record['lr']:.4g}"
    return "/".join(f"{lr:.4g}" for lr in groups) + " (groups)"


class Trainer:
    """Fits a model with an optimizer (and optionally a per-step schedule).

    ``progress``: True (a bar per epoch and a summary line after it), ``'epoch'`` (the summary
    lines only, for logs), False (quiet). ``out_dir`` receives ``checkpoint.npz`` (the latest),
    ``best.npz`` (the epoch with the best validation accuracy; none without validation data),
    ``metrics.jsonl`` and ``curves.png`` (where matplotlib imports; a warning where it does
    not); without it nothing is written. Each record (``history``, ``metrics.jsonl``) holds ``lr``,
    ``optimizer.lr`` (the schedule's value: the lr of the groups without one of their own, a Chain's
    factor on its members' lrs), and ``group_lrs``, each parameter group's lr as
    ``optimizer.param_groups[i]['lr']`` reads it, both those of the step that comes next.
    ``checkpoint_every`` is ``'epoch'``, a number of steps, or None (save
    only on Ctrl-C). ``config`` (JSON-able) is stored in the checkpoint as ``meta/config`` so
    a tool can rebuild the model (a resume keeps the checkpoint's when none is given).
    ``monitor``: 'auto' samples GPU telemetry when the model is on CUDA; True/False force it; a
    :class:`GPUMonitor` is used as given. ``seed`` seeds the trainer's own generator ``self.rng``
    (saved and restored with the checkpoint, for code that extends the trainer); the model and
    the loader take their own seeds, so runs repeat exactly.
    ``precision``: 'fp32', 'tf32', 'bf16', 'fp16' or 'auto' (:mod:`gpuconv.amp`: bf16 where the
    model's parameters are on a GPU with bfloat16 tensor cores, fp16 on one with float16 tensor
    cores alone (a T4), else fp32; default: the float32
    mode in effect, :func:`gpuconv.get_precision`); fp16 scales the loss with ``loss_scaler``
    (default: a :class:`gpuconv.amp.LossScaler`; ``trainer.precision`` set to 'fp16' later, as in
    ``epoch_start``, brings a fresh one, set to another precision drops it).
    ``lookahead``: a :class:`gpuconv.lookahead.Lookahead` updated every ``lookahead.every`` steps
    with airbench's decay over ``total_steps`` (the run's step count), and a last time with decay
    1 at step ``total_steps``; saved with the checkpoint. ``epoch_start``: called with the
    0-based epoch before each epoch trains (a resumed one too), e.g. to freeze a parameter.
    ``cuda_graph``: replay the step as a CUDA graph (:class:`gpuconv.graphs.StepGraph`; on 'cuda',
    where a step's launches cost more host time than its kernels take; elsewhere the same path
    runs the step itself). Captured at each epoch's second step; SGD, Muon, Adam, AdamW or a Chain of them;
    fp16's loss scale and overflow skips stay on the device (the scaler updates its arrays in
    place); dropout layers read their mask keys from the device, written before each step from
    their own generators (the eager run's masks). A number a kernel takes by value (the optimizer's hyperparameters, batch
    norm's momentum and eps, Scale's factor, LPPool2d's norm_type, LeakyReLU's negative_slope, ``label_smoothing``,
    ``precision``) and which
    parameters train (``requires_grad``) change, layers or parameter groups are added, and a state is loaded (the model's, the optimizer's,
    :meth:`load_checkpoint`), before the fit or in ``epoch_start``; during a graphed epoch, they are
    refused.
    ``autotune``: measure each convolution's "auto" variant at its first training step
    (:func:`gpuconv.kernels.autotuning`); 'auto' (default) does on 'cuda' unless an enclosing
    ``kernels.autotuning()`` block or ``$GPUCONV_AUTOTUNE`` says otherwise, True/False force it. The choices go into the checkpoint,
    and a resumed run that autotunes takes them, so it continues bit for bit (one that does not is warned).
    ``last_validation``: after a fit(), :meth:`evaluate`'s result (test-time augmentation level 0) of the
    validation after its last epoch, on the weights it returned with; None when that fit validated no epoch
    (no ``val``, nothing left to train, or stopped by an error before the epoch's validation).
    """

    def __init__(self, model, optimizer, scheduler=None, out_dir=None, label_smoothing=0.0, log_every=50,
                 seed=0, progress=True, checkpoint_every="epoch", config=None, monitor="auto", precision=None,
                 loss_scaler=None, lookahead=None, total_steps=None, epoch_start=None, cuda_graph=False,
                 autotune="auto"):
        if autotune not in ("auto", True, False):
            raise ValueError(f"autotune={autotune!r}: use 'auto' (on for GPU runs), True or False")
        if autotune == "auto":
            kernels.autotune_enabled()  # an unreadable $GPUCONV_AUTOTUNE is an error now, not at the first step
        self.autotune = autotune
        if lookahead is not None and (isinstance(total_steps, bool) or not (isinstance(total_steps, int)
                                                                          and total_steps >= 1)):
            raise ValueError(f"lookahead needs total_steps (the run's optimizer steps, >= 1), got {total_steps!r}")
        if lookahead is not None and total_steps < lookahead.every:
            warnings.warn(f"lookahead: its first update comes at step every={lookahead.every}, after the run's last "
                          f"step (total_steps={total_steps}), so the average stays the initial weights and the last "
                          "update (decay 1) puts the model back on them: the run trains nothing. Train at least "
                          f"{lookahead.every} steps (more epochs or images, a smaller batch) or without lookahead",
                          RuntimeWarning, stacklevel=2)
        self.lookahead, self.total_steps, self.epoch_start = lookahead, total_steps, epoch_start
        if isinstance(log_every, bool) or not (isinstance(log_every, int) and log_every >= 1):
            raise ValueError(f"log_every={log_every!r}: must be an int >= 1 (steps between readbacks), e.g. 50")
        if not (isinstance(progress, bool) or progress == "epoch"):
            raise ValueError(f"progress={progress!r}: use True (a bar per epoch and a summary line after it), "
                             "'epoch' (the summary lines only, for logs) or False (quiet)")
        if not (isinstance(monitor, (bool, GPUMonitor)) or monitor == "auto"):
            raise ValueError(f"monitor={monitor!r}: use 'auto' (GPU telemetry when the model is on CUDA), True or "
                             "False (always, never), or a gpuconv.monitor.GPUMonitor")
        if not all(callable(getattr(optimizer, m, None)) for m in ("step", "zero_grad")):
            raise TypeError(f"optimizer={optimizer!r}: the Trainer needs an optimizer over the model's parameters, "
                            "e.g. gpuconv.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)")
        if scheduler is not None and getattr(scheduler, "optimizer", optimizer) is not optimizer:
            raise ValueError(f"scheduler={scheduler!r} drives another optimizer than optimizer={optimizer!r}: its "
                             "steps would set that one's lr, not the one that trains; build the schedule over the "
                             "optimizer you pass")
        if lookahead is not None and getattr(lookahead, "model", model) is not model:
            raise ValueError(f"lookahead={lookahead!r} averages another model than the one trained: its updates "
                             "would leave this one as it is; build it over the model you pass, Lookahead(model)")
        if callable(getattr(model, "parameters", None)) and isinstance(getattr(optimizer, "params", None), list):
            mine = {id(p) for p in model.parameters()}
            if not any(id(p) in mine for p in optimizer.params):
                raise ValueError(f"optimizer={optimizer!r} holds none of the model's parameters: it would train "
                                 "another model's; build it over model.parameters()")
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) \
                or not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing!r}: must be in [0, 1), e.g. 0.1")
        if isinstance(checkpoint_every, bool) or not (checkpoint_every in ("epoch", None) or (
                isinstance(checkpoint_every, int) and checkpoint_every > 0)):  # (True would save at every step)
            raise ValueError(f"checkpoint_every={checkpoint_every!r}: use 'epoch', a positive number of steps, "
                             "or None (save only on Ctrl-C)")
        if precision is None:  # the float32 compute mode in effect ('fp32', or 'tf32' after set_precision)
            from .precision import get_precision
            precision = get_precision()
        if precision == "auto":  # decided by the device the model's parameters live on
            params = model.parameters()
            precision = amp.resolve_precision("auto", backend.device_of(params[0].data) if params else None)
        if loss_scaler is not None and precision != "fp16":
            raise ValueError(f"loss_scaler is for precision='fp16' (bf16 has float32's range), not {precision!r}")
        self.scaler = loss_scaler
        self.precision = precision  # (fp16 without loss_scaler gets a fresh LossScaler)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self._graph = self._step_graph(cuda_graph)
        # ('~/runs/x' from Python: the home directory, as the shell gives --out and as load_cifar10 takes its
        # root, not a directory named '~' in the working directory)
        self.out_dir = Path(out_dir).expanduser() if out_dir is not None else None
        self.label_smoothing = float(label_smoothing)
        self.log_every, self.progress = log_every, progress
        self.checkpoint_every, self.config = checkpoint_every, config
        self.seed = None if seed is None else check_seed(seed)
        self.rng = np.random.default_rng(self.seed)  # the trainer's own stream, saved with the rest
        self.monitor_mode, self.monitor = monitor, None
        self.epoch = 0          # completed epochs
        self.epoch_step = 0     # batches done in the current, incomplete epoch
        self.step = 0           # optimizer steps in total
        self.elapsed = 0.0      # seconds of fit() across resumes
        self.history: list[dict] = []
        self.last_validation = None  # see the class's docstring
        self._buf = None
        self._stop_requested = False
        self._loader_state = None
        self._lock = None  # while fit holds out_dir's lock: (its lock file, that file's stat)
        self._checkpointed = False  # whether out_dir holds a checkpoint of this run (resumed from, or written)

    def __repr__(self):
        model = type(self.model).__name__
        if callable(getattr(self.model, "num_parameters", None)):
            model += f" ({self.model.num_parameters():,} parameters)"
        extras = "".join(f", {name}={value!r}" for name, value in
                         (("scheduler", self.scheduler), ("lookahead", self.lookahead)) if value is not None)
        out = f"'{self.out_dir}'" if self.out_dir is not None else None
        return (f"Trainer(model={model}, optimizer={self.optimizer!r}{extras}, precision={self.precision!r}, "
                f"epoch={self.epoch}, step={self.step}, out_dir={out})")

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint_path(self):
        return self.out_dir / ckpt.CHECKPOINT_NAME if self.out_dir is not None else None

    @property
    def metrics_path(self):
        return self.out_dir / "metrics.jsonl" if self.out_dir is not None else None

    # ------------------------------------------------------------------ the step
    def _graph_holds(self) -> bool:
        """Whether a captured step (gpuconv.graphs) holds the optimizer and the model now."""
        return getattr(self, "_graph", None) is not None and self._graph.holds

    def _refuse_replayed(self, name, old, value):
        if self._graph_holds() and value != old:
            raise RuntimeError(f"Trainer: {name} cannot change while " + REPLAYED_WAY_OUT)

    @property
    def precision(self):
        return self._precision

    @precision.setter
    def precision(self, value):
        # The step's casts and kernels follow it: a CUDA graph replays the captured ones (gpuconv.graphs).
        value = amp.check_precision(value)
        self._refuse_replayed("precision", getattr(self, "_precision", None), value)
        self._precision = value
        # fp16 trains with a loss scaler, the others without: a switch (in epoch_start, say) brings one or drops it
        if value != "fp16":
            self.scaler = None
        elif getattr(self, "scaler", None) is None:
            self.scaler = amp.LossScaler()

    @property
    def label_smoothing(self):
        return self._label_smoothing

    @label_smoothing.setter
    def label_smoothing(self, value):
        # The loss kernel takes it by value: a CUDA graph replays the captured one (gpuconv.graphs).
        self._refuse_replayed("label_smoothing", getattr(self, "_label_smoothing", None), float(value))
        self._label_smoothing = float(value)

    def _xp(self):
        params = self.model.parameters()
        return backend.get_array_module(params[0].data) if params else np

    def _step_graph(self, wanted):
        """The StepGraph of ``cuda_graph=True``, after refusing what a replay would freeze."""
        if not wanted:
            return None
        from .graphs import StepGraph
        self._check_graphable()
        return StepGraph.for_optimizer(self._eager_step, self.optimizer, self.model)

    def _check_graphable(self):
        """Refuse what a replayed step would freeze (when the Trainer is built, and at each epoch's
        start: the code before the fit or ``epoch_start`` may have set another optimizer)."""
        from .optim import replays_schedule
        why = None
        if not replays_schedule(self.optimizer):
            why = (f"the optimizer is {type(self.optimizer).__name__}; a replayed step reads only SGD's, Muon's, "
                   "Adam's and AdamW's learning rates (and Adam's step count) from the device (other optimizers' "
                   "per-step values would be frozen at the capture)")
        if why is not None:
            raise ValueError(f"cuda_graph=True: {why}; train without it (cuda_graph=False, no --cuda-graph)")

    def _eager_step(self, x, y):
        # "auto": an enclosing autotuning() block's word or $GPUCONV_AUTOTUNE's, else on for a GPU
        on = self.autotune if self.autotune != "auto" else kernels.autotune_enabled(backend.is_cupy_array(x))
        with kernels.autotuning(on):
            return amp.training_step(self.model, self.optimizer, x, y, self.precision, self.scaler,
                                     self.label_smoothing, count_correct=True)

    def train_step(self, x, y):
        """One optimizer step on a batch already on the device. Reads nothing back.

        The batch's mean loss and correct count go into row ``self._pending`` of the interval
        buffer, to be read back by the next flush."""
        xp = backend.get_array_module(x, y)
        if self._buf is None or backend.get_array_module(self._buf) is not xp:
            # (a row past the steps': fp16's loss scale, read back with their losses)
            self._buf = xp.zeros((self.log_every + 1, 2), dtype=np.float64)
            self._pending, self._pending_n = 0, []
        if self._pending >= self.log_every:
            raise RuntimeError(f"{self._pending} steps are waiting for a readback: call Trainer._flush() "
                               f"at least every log_every={self.log_every} steps")
        loss, _, correct = (self._graph or self._eager_step)(x, y)
        if self.scheduler is not None:
            self.scheduler.step()
        if self.lookahead is not None:
            self._lookahead_step(self.step + 1)
        self._buf[self._pending, 0] = loss
        self._buf[self._pending, 1] = correct  # counted by the loss's launch
        self._pending += 1
        self._pending_n.append(int(x.shape[0]))  # shapes are host metadata: no sync
        self.step += 1

    def _lookahead_step(self, step):
        from .lookahead import airbench_decay
        if step % self.lookahead.every == 0 and step <= self.total_steps:
            self.lookahead.update(airbench_decay(step, self.total_steps))
        if step == self.total_steps:
            self.lookahead.update(1.0)  # the model ends on the average

    def _flush(self):
        """Read the pending steps' losses back (one transfer); raise on NaN/Inf; return stats."""
        k = getattr(self, "_pending", 0)
        if k == 0:
            return None
        scaled = self.scaler is not None and self.scaler.scale_ is not None
        if scaled:  # copied on the device into the interval's one transfer: no readback of its own
            self._buf[k, 0] = self.scaler.scale_
        vals = backend.asnumpy(self._buf[:k + scaled])
        scale, vals = (float(vals[k, 0]) if scaled else None), vals[:k]
        self._scale_read = (self.step, scale)  # (the metrics' loss_scale at this step: no readback of its own)
        counts = np.asarray(self._pending_n, dtype=np.float64)
        first_step = self.step - k + 1
        self._pending, self._pending_n = 0, []
        bad = np.flatnonzero(~np.isfinite(vals[:, 0]))
        if bad.size:
            step = first_step + int(bad[0])
            batch = self.epoch_step - k + int(bad[0]) + 1
            self._diverged(f"the training loss became {vals[bad[0], 0]} at step {step} (epoch {self.epoch + 1}, batch "
                           f"{batch}), found at the readback of steps {first_step}-{self.step} (log_every="
                           f"{self.log_every})", step)
        if scaled:
            if not scale >= float(np.finfo(np.float32).tiny):
                self._diverged(f"fp16's loss scale fell to {scale:g} by step {self.step}, below float32's normal "
                               "range: the gradients overflowed float16 at every scale tried, and from here every "
                               "step trains nothing, for good (scaled gradients vanish in float16, 1/scale "
                               "overflows, the steps are skipped); bf16 (--precision bf16), with float32's range, "
                               "needs no loss scale", self.step)
        n = counts.sum()
        return {"loss": float((vals[:, 0] * counts).sum() / n), "correct": float(vals[:, 1].sum()),
                "n": float(n), "steps": k}

    # ------------------------------------------------------------------ checkpoints
    def _rng_owners(self, loader=None):
        owners = [("trainer.rng", self.rng)]
        if hasattr(self.model, "named_generators"):
            owners += self.model.named_generators("model")
        else:  # a model of the user's own that is not a gpuconv Layer
            owners += _generators(self.model, "model")
        if loader is not None:
            owners += _generators(loader, "loader")
        return owners

    def _capture_loader(self, loader):
        """The loader's state (and RNG states) now, before it starts an epoch."""
        state = {}
        if hasattr(loader, "state_dict"):
            state.update(ckpt.flatten_tree("loader", loader.state_dict()))
        for name, gen in _generators(loader, "loader"):
            state[f"rng/{name}"] = ckpt.rng_state(gen)
        return state

    def state_arrays(self) -> dict:
        """Everything a checkpoint holds, as flat host arrays."""
        arrays = self._restorable()
        arrays.update(self._loader_state or {})  # the loader as its epoch began
        arrays.update({"meta/format": np.asarray(ckpt.FORMAT, np.int64),
                       "meta/epoch": np.asarray(self.epoch, np.int64),
                       "meta/epoch_step": np.asarray(self.epoch_step, np.int64),
                       "meta/step": np.asarray(self.step, np.int64),
                       "meta/elapsed": np.asarray(self.elapsed, np.float64),
                       # The running sums of the epoch in progress (loss * n, correct, n, seconds), so
                       # a resumed epoch reports the whole epoch, as an uninterrupted run does.
                       "meta/epoch_sums": np.asarray([self._ep[k] for k in ("loss", "correct", "n", "t")]
                                                     if self.epoch_step and getattr(self, "_ep", None)
                                                     else [0.0] * 4, np.float64),
                       "meta/precision": np.asarray(self.precision),
                       "meta/config": ckpt.pack_json(self.config or {})})
        tuned = kernels.tuned_variants()
        if tuned:  # the convolutions' measured variants: a resumed run sums in the same orders
            arrays["meta/autotune"] = ckpt.pack_json(tuned)
        return arrays

    def save_checkpoint(self, path=None):
        """Write the training state to ``path`` (default ``out_dir/checkpoint.npz``) atomically;
        :class:`TrainingDiverged` instead when the weights are no longer finite (the file on disk,
        a good one, is kept)."""
        path = Path(path).expanduser() if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("save_checkpoint() needs a path, or out_dir= when the Trainer is built")
        arrays = self.state_arrays()
        bad = [k[len("model/"):] for k, v in arrays.items()
               if k.startswith("model/") and v.dtype.kind == "f" and not np.isfinite(v).all()]
        if bad:
            self._diverged(f"the model's weights became NaN or Inf ({', '.join(bad[:3])}"
                           f"{', ...' if len(bad) > 3 else ''}) by step {self.step}", self.step)
        if path == self.checkpoint_path:
            self._sync_metrics()  # (its own error names metrics.jsonl)
        with self._writing(path):
            saved = ckpt.save_checkpoint(path, arrays)
        self._checkpointed = self._checkpointed or path == self.checkpoint_path
        return saved

    def _sync_metrics(self):
        """fsync ``metrics.jsonl`` before a checkpoint is written (which is fsynced, and its directory):
        after a power cut the lines of the steps a checkpoint holds are on disk as it is, not lost
        (appends are written back later, lines a resume would never write again)."""
        if self.metrics_path is None:
            return
        with self._writing(self.metrics_path):
            try:  # (for writing: Windows' fsync refuses a descriptor opened to read)
                fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | NOFOLLOW | BINARY)
            except FileNotFoundError:
                return
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # How to go on after a write failed, by its errno: the disk's causes (WRITE_FIXES), and a run
    # directory that refused a write it took before
    _WRITE_FIXES = {**WRITE_FIXES,
                    errno.EROFS: "its file system is read-only now (remounted so after disk errors?): check the disk "
                                 "and remount it read-write",
                    errno.EACCES: "make its directory writable to you", errno.EPERM: "make its directory writable to you"}

    @contextlib.contextmanager
    def _writing(self, path):
        """Around a write of the run's file ``path``: an OSError there (a full disk, a directory made
        read-only or removed, a failing disk) says which file, which checkpoint is kept and how to go
        on; it keeps the original's type and errno (and chains it)."""
        self._check_lock()
        try:
            yield
        except OSError as exc:
            what, fix = exc.strerror or str(exc), self._WRITE_FIXES.get(exc.errno, "fix what stopped the write")
            saved = self._checkpoint_position()
            if self.out_dir is None:  # (save_checkpoint(path) of a Trainer that writes no run)
                way_on = fix
            elif saved:
                way_on = f"the checkpoint {saved} is intact at {self.checkpoint_path}: {fix}, then continue with {self._resume_how()}"
            else:
                way_on = f"no checkpoint of this run is on disk yet: {fix}, then train again"
            raise restated(exc, f"could not write {path} at step {self.step} ({what}); {way_on}") from exc

    def _check_lock(self):
        """Before fit writes into out_dir: the lock file it took must still be there. A directory
        removed (`rm -rf`) or moved away would otherwise be made again by the next write, a new
        directory that no lock holds, where a second run could start beside this one."""
        if self._lock is None:
            return
        lock, held = self._lock
        try:
            if os.path.samestat(os.stat(lock), held):
                return
        except FileNotFoundError:
            pass
        if not self.out_dir.is_dir():
            way_on = ("where you moved it, continue with `gpuconv train ... --out NEW_DIR --resume` or "
                      "Trainer(out_dir=NEW_DIR).fit(..., resume=True); where it was deleted, train again"
                      if self._checkpointed else "no checkpoint of this run had been written there: train again")
            message = (f"the run directory {self.out_dir} was removed or moved while this run trained: it stops at "
                       f"step {self.step} rather than make a new one that no lock holds; {way_on}")
        else:
            message = (f"the lock file {lock} of this run was removed while it trained (another run may be writing to "
                       f"{self.out_dir} now): this run stops at step {self.step} rather than write beside it; once "
                       f"no other run is there, continue with {self._resume_how()}")
        raise restated(FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(lock)), message)

    def _resume_how(self):
        """The two ways to continue this run, its --out quoted as a shell splits it."""
        return f"`gpuconv train ... --out {command_line([self.out_dir])} --resume` or Trainer.fit(..., resume=True)"

    def _checkpoint_position(self):
        """Where the run's checkpoint on disk stands ("of epoch 2's end (step 40)"), None without one."""
        if self.checkpoint_path is None:
            return None
        try:
            with np.load(self.checkpoint_path, allow_pickle=False) as z:  # (reads these three entries alone)
                epoch, epoch_step, step = (int(z[f"meta/{k}"]) for k in ("epoch", "epoch_step", "step"))
        except Exception:  # noqa: BLE001  (none there, or one that is not a run's: nothing to promise)
            return None
        return (f"of epoch {epoch}'s end (step {step})" if not epoch_step
                else f"of epoch {epoch + 1}, batch {epoch_step} (step {step})")

    def _diverged(self, what, step):
        """Raise :class:`TrainingDiverged`: ``what`` happened at ``step``; the checkpoint on disk is kept."""
        kept = self.checkpoint_path is not None and self.checkpoint_path.exists()
        best = self.best_path is not None and self.best_path.exists()
        where = (f"the last checkpoint that passed is kept at {self.checkpoint_path} (if a resume from it diverges "
                 "at once, its weights are already too far: start over)" if kept
                 else f"no checkpoint was written (checkpoint_every=None), but the best epoch's is kept at "
                      f"{self.best_path}" if best else "no checkpoint had been written yet")
        raise TrainingDiverged(f"{what}; {where}. Lower the learning rate (--lr), or check the inputs for NaN/Inf and "
                               "the labels for values outside the classes (on a GPU a bad label makes the loss NaN "
                               "instead of raising; gpuconv.ops.check_labels finds it)", step=step,
                               checkpoint=self.checkpoint_path if kept else None)

    def _restorable(self, loader=None) -> dict:
        """What :meth:`_restore` sets, as it is now, in host arrays: a checkpoint's training state (with
        the live ``loader``'s), or what undoes a restore that failed."""
        arrays = {f"model/{k}": np.asarray(v) for k, v in self.model.state_dict().items()}
        arrays.update(ckpt.flatten_tree("optim", self.optimizer.state_dict()))
        for key, part in (("sched", self.scheduler), ("amp", self.scaler)):
            if part is not None:
                arrays.update(ckpt.flatten_tree(key, part.state_dict()))
        if self.lookahead is not None:
            arrays.update({f"look/{k}": v for k, v in self.lookahead.state_dict().items()})
        for name, gen in self._rng_owners():
            arrays[f"rng/{name}"] = ckpt.rng_state(gen)
        if loader is not None:
            arrays.update(self._capture_loader(loader))
        arrays["meta/lr"] = np.asarray(float(self.optimizer.lr), np.float64)
        return arrays

    def _restore(self, arrays, loader=None):
        """Model, optimizer, schedule, scaler, lookahead, lr, RNGs and ``loader`` from ``arrays``."""
        self.model.load_state_dict(ckpt.section(arrays, "model"))
        self.optimizer.load_state_dict(ckpt.unflatten_tree("optim", arrays))
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt.unflatten_tree("sched", arrays))
        if self.scaler is not None and "amp/__tree__" in arrays:  # else a run switched to fp16: a fresh scale
            self.scaler.load_state_dict(ckpt.unflatten_tree("amp", arrays))
        if self.lookahead is not None:
            self.lookahead.load_state_dict(ckpt.section(arrays, "look"))
        self.optimizer.lr = float(arrays["meta/lr"])  # the lr the next step uses, whatever the schedule does
        for name, gen in self._rng_owners(loader):
            if f"rng/{name}" in arrays:
                ckpt.set_rng_state(gen, arrays[f"rng/{name}"])
        if loader is not None and hasattr(loader, "load_state_dict") and "loader/__tree__" in arrays:
            loader.load_state_dict(ckpt.unflatten_tree("loader", arrays))

    def load_checkpoint(self, path=None, loader=None):
        """Restore model, optimizer, schedule, counters and RNGs from a checkpoint. All or nothing:
        a checkpoint that does not fit this Trainer (another optimizer, no schedule state where it
        has a scheduler, another loader) raises with the Trainer and ``loader`` as they were."""
        if self._graph_holds():  # a callback's load during a graphed epoch
            raise RuntimeError("Trainer.load_checkpoint: the training state cannot be replaced while " + REPLAYED_WAY_OUT)
        path = Path(path) if path is not None else self.checkpoint_path
        arrays = ckpt.load_checkpoint(path)
        if self.scheduler is not None and "sched/__tree__" not in arrays:
            raise ValueError(f"checkpoint {path} has no schedule state but this Trainer has a scheduler: "
                             "resume with the same setup as the run that wrote it")
        if self.lookahead is not None and not any(k.startswith("look/") for k in arrays):
            raise ValueError(f"checkpoint {path} has no lookahead average but this Trainer has a lookahead: the run "
                             "that wrote it trained without one; resume with the same setup (no lookahead=)")
        tuned = ckpt.unpack_json(arrays["meta/autotune"]) if "meta/autotune" in arrays else None
        if tuned is not None:  # checked before anything is restored, as the rest is
            try:
                tuned = kernels.check_tuned_variants(tuned)
            except ValueError as exc:
                raise ValueError(f"checkpoint {path} records an autotuned kernel variant this gpuconv does not have "
                                 f"({exc}): it was written by another gpuconv version; continue it with that "
                                 "version, or train into a new --out") from None
        before = self._restorable(loader)
        try:
            self._restore(arrays, loader)
        except BaseException:
            self._restore(before, loader)
            raise
        self._loader_state = {k: v for k, v in arrays.items()
                              if k.startswith("loader/") or k.startswith("rng/loader.")}
        self.epoch, self.epoch_step = int(arrays["meta/epoch"]), int(arrays["meta/epoch_step"])
        self.step, self.elapsed = int(arrays["meta/step"]), float(arrays["meta/elapsed"])
        sums = arrays.get("meta/epoch_sums")  # absent in checkpoints of older versions
        self._resumed_sums = (dict(zip(("loss", "correct", "n", "t"), map(float, sums)))
                              if sums is not None and self.epoch_step else None)
        # The settings the run goes on with, if given; a run saved without any ({}) goes on without, as it
        # began: an empty dict would take the loader's normalization (_record_preprocess), and the resumed
        # run's checkpoints would differ from those of the run left uninterrupted.
        self.config = self.config or ckpt.read_config(arrays) or None
        if tuned is not None:
            kernels.load_tuned_variants(tuned)
            params = self.model.parameters()  # (on the CPU no kernels run, so no variants either)
            # as the step decides it (_eager_step): 'auto' is on for a GPU, off on the simulator
            on_gpu = bool(params) and backend.is_cupy_array(params[0].data)
            off = self.autotune is False or (self.autotune == "auto" and not kernels.autotune_enabled(on_gpu))
            if tuned and off and params and backend.kernel_target(params[0].data) is not None:
                warnings.warn(f"checkpoint {path} records the convolutions' autotuned variants, but this run does "
                              "not autotune (autotune=False, GPUCONV_AUTOTUNE=0, or 'auto' off a GPU), so its "
                              "convolutions take the default rule's variants, which sum in other orders: it goes on "
                              "close to, not bit for bit as, the run it continues; autotune (autotune=True, "
                              "--autotune on) to take the recorded variants", RuntimeWarning, stacklevel=2)
        return arrays

    @property
    def best_path(self):
        return self.out_dir / "best.npz" if self.out_dir is not None else None

    def _after_epoch_files(self, record):
        """``best.npz``: the checkpoint of the epoch with the best validation accuracy so far (as
        the latest checkpoint is, a whole training state); ``curves.png``: the curves so far."""
        from .plots import plot_curves
        accs = [r.get("val_acc") for r in self.history if r.get("val_acc") is not None]
        if record.get("val_acc") is not None and record["val_acc"] >= max(accs):
            if self.checkpoint_every is not None and self.checkpoint_path.exists():
                with self._writing(self.best_path):
                    ckpt.copy_checkpoint(self.checkpoint_path, self.best_path)  # just written: no second readback
            else:  # (as the latest checkpoint: never of weights gone NaN or Inf)
                self.save_checkpoint(self.best_path)
        try:
            with self._writing(self.out_dir / "curves.png"):
                plot_curves(self.history, self.out_dir / "curves.png")
        except ImportError as exc:  # matplotlib missing (a machine's bare interpreter): the run goes on
            if not getattr(self, "_curves_warned", False):
                self._curves_warned = True
                warnings.warn(f"{self.out_dir / 'curves.png'} is not drawn: matplotlib is not importable ({exc}); "
                              "the training, its checkpoints and metrics.jsonl go on without it (pip install "
                              "matplotlib for the curves)", RuntimeWarning, stacklevel=2)

    # ------------------------------------------------------------------ metrics history
    def _write_metrics(self, record):
        if self.metrics_path is None:
            return
        with self._writing(self.metrics_path):
            make_dirs(self.metrics_path.parent)
            # never through a link (a planted one would append the records to the file it points at)
            fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NOFOLLOW | BINARY, new_file_mode())
            with os.fdopen(fd, "ab") as f:  # one "\n" per line on every platform, as _trim_metrics rewrites them
                f.write((json.dumps(record, allow_nan=True) + "\n").encode())

    def _trim_metrics(self):
        """Drop lines written after the checkpoint we resume from (a crash left them behind)."""
        if self.metrics_path is None or not self.metrics_path.exists():
            return
        kept = []
        if self.metrics_path.is_symlink():
            raise PermissionError(f"{self.metrics_path} is a symbolic link, which gpuconv does not read or write "
                                  "through: remove it, or choose another --out")
        with os.fdopen(os.open(self.metrics_path, os.O_RDONLY | NOFOLLOW | BINARY), "rb") as f:
            text = f.read().decode("utf-8", "replace")
        for line in text.splitlines():
            rec = _metrics_record(line)
            if rec is None:
                continue  # a line cut off by a crash, or damaged
            # An epoch's line written after the checkpoint of its last step (a kill between that line
            # and the epoch's own save) has the checkpoint's step but an epoch the checkpoint has not done.
            after = rec.get("step", 0) > self.step or (rec.get("kind") == "epoch" and rec.get("epoch", 0) > self.epoch)
            if not after:
                kept.append(rec)
        with self._writing(self.metrics_path):
            write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept).encode(), durable=True)
        self.history = [r for r in kept if r.get("kind") == "epoch"]

    def _repair_best(self):
        """After a resume from an epoch's checkpoint: ``best.npz`` is that epoch's when its validation
        accuracy is the best so far (a kill between the checkpoint and the copy left the older one)."""
        accs = [(r.get("val_acc"), r["epoch"]) for r in self.history if r.get("val_acc") is not None]
        if (not accs or self.epoch_step or self.best_path is None or not self.checkpoint_path.exists()
                or max(accs)[1] != self.epoch):  # ties go to the later epoch, as _after_epoch_files does
            return
        try:
            best = int(ckpt.load_checkpoint(self.best_path)["meta/epoch"]) if self.best_path.exists() else None
        except ValueError:  # damaged (truncated, not an .npz): the checkpoint, of the same epoch, replaces it
            self._say(f"{self.best_path} is damaged, no checkpoint gpuconv can read: written again from "
                      f"{self.checkpoint_path}, of epoch {self.epoch}, the best so far")
            best = None
        if best != self.epoch:
            with self._writing(self.best_path):
                ckpt.copy_checkpoint(self.checkpoint_path, self.best_path)

    def _set_aside_previous_run(self):
        """A fresh run into a directory that holds another run's files: they move together into
        ``previous-<time they were last written>/``, so that none of them is taken for this run's
        (its best.npz, its curves) and none is lost (its checkpoint, had --resume been forgotten,
        even twice)."""
        files = [p for p in (self.checkpoint_path, self.best_path, self.metrics_path, self.out_dir / "curves.png")
                 if p.exists()]
        if not files:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(max(p.stat().st_mtime for p in files)))
        aside, k = self.out_dir / f"previous-{stamp}", 1
        while aside.exists():
            k += 1
            aside = self.out_dir / f"previous-{stamp}-{k}"
        aside.mkdir()
        for p in files:
            os.replace(p, aside / p.name)
        for directory in (aside, self.out_dir):  # durable before this run's first checkpoint is: a power cut
            fsync_dir(directory)                  # must not keep the new names and lose the old run's moved ones
        self._say(f"{self.out_dir} held another run's files ({', '.join(p.name for p in files)}): moved to {aside} "
                  "(pass --resume, in Python fit(..., resume=True), to continue a run instead)")

    def _telemetry(self):
        fields = metrics_fields(self.monitor.snapshot()) if self.monitor is not None else {}
        cp = backend.cupy_module()
        if cp is not None and self._xp() is cp:
            # Pool size per interval: it should stop growing after the first steps.
            fields["pool_total_gib"] = round(cp.get_default_memory_pool().total_bytes() / float(1 << 30), 4)
        if self.scaler is not None:
            # fp16's loss scale: halved at each step skipped for an overflow, so a run whose steps
            # are all skipped (a flat loss) shows a scale falling toward 0
            read = getattr(self, "_scale_read", None)
            fields["loss_scale"] = read[1] if read and read[0] == self.step and read[1] is not None \
                else self.scaler.current_scale
        return fields

    def _start_monitor(self):
        if isinstance(self.monitor_mode, GPUMonitor):
            self.monitor = self.monitor_mode.start()
            return
        on_cuda = self._xp() is not np
        if self.monitor_mode is True or (self.monitor_mode == "auto" and on_cuda):
            index, bus = 0, None
            if on_cuda:
                index = backend.device_of(self.model.parameters()[0].data).index
                try:
                    bus = backend.cupy_module().cuda.Device(index).pci_bus_id
                except Exception:
                    bus = None
            self.monitor = GPUMonitor(index=index, interval=1.0, pci_bus_id=bus).start()
            if not self.monitor.available:
                self.monitor = None

    # ------------------------------------------------------------------ Ctrl-C and SIGTERM
    STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def _on_stop_signal(self, signum, frame):
        if self._stop_requested:  # a second signal: stop now, without saving
            kept = self.checkpoint_path if self.checkpoint_path is not None and self.checkpoint_path.exists() else None
            raise KeyboardInterrupt(f"stopped at once; the last checkpoint on disk is {kept}" if kept else
                                    "stopped at once; no checkpoint was written")
        self._stop_requested = signum
        now = "the validation pass" if getattr(self, "_validating", False) else "the current step"
        # In a notebook SIGINT is the kernel's interrupt (its stop button, or I, I); Ctrl-C there copies text
        notebook = _in_notebook()
        if signum == signal.SIGINT:
            what, again = (("kernel interrupted", "interrupt the kernel again") if notebook
                           else ("Ctrl-C", "press Ctrl-C again"))
        else:
            what = signal.Signals(signum).name
            again = f"a second {what} or " + ("a kernel interrupt" if notebook else "Ctrl-C")
        CONSOLE.write(f"\n{what}: finishing {now}, then saving a checkpoint ({again} to stop at once without "
                      "saving)\n")

    def _interrupt(self):
        try:
            saved, failed = self.save_checkpoint() if self.out_dir is not None else None, None
        except OSError as exc:  # (said by _writing: the file, the checkpoint that is intact, the way on)
            saved, failed = None, exc
        # fit() again on this Trainer (without resume=True) continues the epoch: its sums go on
        self._resumed_sums = dict(self._ep) if self.epoch_step else None
        where = (f"checkpoint saved to {saved}; resume with {self._resume_how()}" if saved
                 else "no out_dir was given, so nothing was saved to disk; fit(...) again on this Trainer continues "
                      "the run in this process")
        signum = self._stop_requested if self._stop_requested in self.STOP_SIGNALS else signal.SIGINT
        how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        if self.epoch >= self._fit_epochs and not self.epoch_step:  # the signal came after the last step
            at, where = (f"after its last epoch ({self.epoch} of {self._fit_epochs}, step {self.step}): the run is "
                         "complete", f"checkpoint saved to {saved}" if saved else "no out_dir was given, so nothing "
                         "was saved")
        else:
            at = f"at epoch {self.epoch + 1}, batch {self.epoch_step} (step {self.step})"
        if failed is not None:
            raise TrainingInterrupted(f"training {how} {at}; its progress was NOT saved: {failed}", epoch=self.epoch,
                                      step=self.step, signal=signum, save_error=failed) from failed
        raise TrainingInterrupted(f"training {how} {at}; {where}", checkpoint=saved, epoch=self.epoch,
                                  step=self.step, signal=signum)

    # ------------------------------------------------------------------ fit
    def fit(self, train_loader, epochs, val=None, resume=False):
        """Train until ``epochs`` epochs are complete; returns the per-epoch history (list of dicts).

        ``resume=True`` continues from ``out_dir/checkpoint.npz`` when it exists (else starts
        fresh and says so). With an ``out_dir`` the fit holds that directory's lock, as ``gpuconv
        train`` does: a fit while another process trains into it raises
        ``gpuconv._files.DirectoryLocked`` naming that process. Raises :class:`TrainingDiverged` on
        a NaN/Inf loss, :class:`TrainingInterrupted` after Ctrl-C (checkpoint saved),
        :class:`GPUOutOfMemory`, and an OSError naming the file and the intact checkpoint when a
        write of the run's files fails (a full disk)."""
        if isinstance(epochs, bool) or not (isinstance(epochs, int) and epochs >= 1):
            raise ValueError(f"epochs={epochs!r}: must be an int >= 1")
        _check_batches(train_loader, "train_loader")
        _check_batches(val, "val")
        if resume and self.out_dir is None:
            raise ValueError("resume=True needs out_dir=, the directory holding checkpoint.npz")
        # out_dir's lock, as `gpuconv train` takes it (and holds it around this fit): another process's
        # run into the same directory is refused, not interleaved with this one's checkpoints
        with (directory_lock(self.out_dir, "gpuconv training run", reentrant=True) if self.out_dir is not None
              else contextlib.nullcontext()) as lock:
            self._lock = None if lock is None else (lock, os.stat(lock))
            try:
                # The model's GPU current (a no-op on the host): CuPy allocates the optimizer's state, the
                # step's loss buffer and every array between the kernels on its current device, and refuses
                # (or reads across the bus) arrays of another, so a model on cuda:1 trained while cuda:0 is
                # current failed at its first step.
                with backend.parameters_device_context(self.model.parameters()):
                    return self._fit(train_loader, epochs, val, resume)
            finally:
                self._lock = None

    def _fit(self, train_loader, epochs, val, resume):
        if resume:
            if self.checkpoint_path.exists():
                self.load_checkpoint(loader=train_loader)
                self._checkpointed = True
                self._trim_metrics()
                self._repair_best()
                self._say(f"resuming from {self.checkpoint_path}: {self.epoch} epoch(s) and "
                          f"{self.epoch_step} batch(es) done, step {self.step}")
            else:
                self._say(f"no checkpoint at {self.checkpoint_path}: starting from scratch")
        self._fit_epochs = epochs
        self.last_validation = None  # (and at each epoch: the result of weights no longer there is dropped)
        self._record_preprocess(train_loader)
        if self.epoch >= epochs:
            self._say(f"nothing to do: {self.epoch} epoch(s) already done (epochs={epochs})")
            return self.history
        self._check_schedule_length(train_loader, epochs)
        if not resume and self.out_dir is not None and self.step == 0:
            self._set_aside_previous_run()
        if self.lookahead is not None and hasattr(train_loader, "__len__") \
                and epochs * len(train_loader) != self.total_steps:
            warnings.warn(f"lookahead: total_steps={self.total_steps}, but this fit runs {epochs} x "
                          f"{len(train_loader)} = {epochs * len(train_loader)} steps: the final average lands at step "
                          f"{self.total_steps} "
                          "(give the Trainer total_steps=epochs * len(loader))", stacklevel=3)
        handler_set = threading.current_thread() is threading.main_thread()
        # (a signal the process was started ignoring stays ignored, as Python leaves an ignored SIGINT:
        # a job a script started in the background, whose Ctrl-C is meant for the foreground)
        old_handlers = {sig: signal.signal(sig, self._on_stop_signal) for sig in self.STOP_SIGNALS
                        if signal.getsignal(sig) != signal.SIG_IGN} if handler_set else {}
        self._stop_requested = False
        try:  # (the monitor's start too: a failure there restores the signal handlers below)
            self._start_monitor()
            if callable(getattr(self.model, "train", None)):
                with amp.model_lock(self.model):  # not in the middle of another thread's evaluation
                    self.model.train()  # left in eval mode (a cell that looked at predictions) it keeps no caches for backward
            self._t0 = time.perf_counter() - self.elapsed
            while self.epoch < epochs:
                self.last_validation = None
                self._run_epoch(train_loader, epochs)
                n = self._ep["n"]  # 0 only when a resume found the epoch's batches all done
                record = {"kind": "epoch", "epoch": self.epoch + 1, "step": self.step,
                          "train_loss": self._ep["loss"] / n if n else None,
                          "train_acc": self._ep["correct"] / n if n else None,
                          **self._lr_record(), "images_per_s": n / max(self._ep["t"], 1e-9)}
                if val is not None:
                    self._validating = True
                    try:
                        ev = self.evaluate(val)
                    finally:
                        self._validating = False
                    if not math.isfinite(ev["loss"]):  # finite logits give a finite loss: the weights diverged
                        self._diverged(f"the validation loss became {ev['loss']} after epoch {self.epoch + 1}",
                                       self.step)
                    record.update(val_loss=ev["loss"], val_acc=ev["accuracy"], val_n=ev["n"])
                    self.last_validation = ev
                self.epoch, self.epoch_step = self.epoch + 1, 0
                self.elapsed = time.perf_counter() - self._t0
                record.update(elapsed_s=round(self.elapsed, 3), **self._telemetry())
                self._report_epoch(record)
                self._loader_state = self._capture_loader(train_loader)  # = its state when the next epoch begins
                if self.out_dir is not None and self.checkpoint_every is not None:
                    self.save_checkpoint()
                if self.out_dir is not None:
                    self._after_epoch_files(record)
                if self._stop_requested:
                    self._interrupt()
        except Exception as exc:
            if _is_oom(exc):
                bs = getattr(train_loader, "batch_size", None)
                raise GPUOutOfMemory(oom_message(exc, bs, checkpoint=self.checkpoint_path)) from exc
            raise
        finally:
            if self.epoch_step and getattr(self, "_ep", None) is not None and getattr(self, "_resumed_sums", None) is None:
                # fit() again after an error (a loader's, a validation pass's) continues the epoch: its sums go on
                self._resumed_sums = dict(self._ep)
            if self._graph is not None:
                self._graph.release()  # the optimizer outlives the fit as it was
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            if self.monitor is not None and not isinstance(self.monitor_mode, GPUMonitor):
                self.monitor.stop()
            self.monitor = None
        return self.history

    def _record_preprocess(self, loader):
        """A run's config without the normalization its images had (written by hand, not by `gpuconv
        train`) gets the training loader's mean and std: the checkpoint's model then predicts with
        them (gpuconv.load_model), not with CIFAR-10's. One without ``input_size`` gets the (height,
        width) of the loader's images: a network whose constructor takes no ``input_dim`` (airbench94
        or airbench96 on 28x28 images) then predicts images of that size, not 32x32 ones."""
        if not isinstance(self.config, dict):
            return
        mean, std = getattr(loader, "mean", None), getattr(loader, "std", None)
        if "preprocess" not in self.config and isinstance(mean, tuple) and isinstance(std, tuple):
            self.config = {**self.config, "preprocess": {"mean": list(mean), "std": list(std)}}  # (not the caller's dict)
        images = getattr(loader, "images", None)
        if "input_size" not in self.config and getattr(images, "ndim", None) == 4:
            self.config = {**self.config, "input_size": [int(v) for v in images.shape[2:]]}

    def _check_schedule_length(self, loader, epochs):
        """A schedule that refuses steps past its end (OneCycleLR) would stop the fit there, after an
        optimizer step it did not count: such a fit is refused before its first step instead."""
        sched = self.scheduler
        if sched is None or not hasattr(loader, "__len__") or not callable(getattr(sched, "lr_at", None)) \
                or not isinstance(getattr(sched, "last_step", None), int):
            return
        steps = (epochs - self.epoch) * len(loader) - self.epoch_step
        try:
            sched.lr_at(sched.last_step + steps)
        except ValueError:
            raise ValueError(
                f"fit(epochs={epochs}) would run {steps} more steps, to step {sched.last_step + steps}, past the end of "
                f"its {type(sched).__name__} (total_steps={getattr(sched, 'total_steps', None)}, at step "
                f"{sched.last_step} now); nothing was trained. A schedule that has run its course cannot go on: "
                "build a new model, optimizer and schedule for a new run, or give the schedule "
                "total_steps=epochs * len(loader)") from None

    def _run_epoch(self, loader, epochs):
        skip, replay = self.epoch_step, self.epoch_step
        if self._graph is not None:
            self._graph.release()  # the callback may change a hyperparameter: the optimizer is free meanwhile
        if self.epoch_start is not None:
            self.epoch_start(self.epoch)
        if self._graph is not None:
            self._check_graphable()
            self._graph.reset()  # the callback may have changed the step (a parameter frozen): capture anew
        if skip == 0 or self._loader_state is None:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(self.epoch)
            # Saved with any mid-epoch checkpoint: a resume restores it, then skips `skip` batches.
            self._loader_state = self._capture_loader(loader)
        if skip and hasattr(loader, "set_epoch"):
            try:
                loader.set_epoch(self.epoch, start_batch=skip)  # DeviceLoader starts mid-epoch directly
                replay = 0
            except TypeError:
                loader.set_epoch(self.epoch)  # a loader without start_batch: replay the skipped batches
        self._ep = {"loss": 0.0, "correct": 0.0, "n": 0.0, "t": 0.0}
        if skip and getattr(self, "_resumed_sums", None):  # the part of this epoch trained before the stop
            self._ep = dict(self._resumed_sums)
        self._resumed_sums = None
        total = len(loader) if hasattr(loader, "__len__") else None
        bar = self._bar(total, skip, epochs)
        t_last = time.perf_counter()
        b = None
        try:
            for b, (x, y) in enumerate(loader, start=skip - replay):
                if b < skip:
                    continue  # replaying a resumed epoch: same shuffle and augmentation draws, no training
                self.train_step(x, y)
                self.epoch_step = b + 1
                if bar is not None:
                    bar.update(1)
                due = self._pending >= self.log_every
                save_due = (isinstance(self.checkpoint_every, int) and self.out_dir is not None
                            and self.step % self.checkpoint_every == 0)
                if due or save_due or self._stop_requested:
                    t_last = self._log_interval(bar, t_last)
                if save_due:
                    self.save_checkpoint()
                if self._stop_requested:
                    self._interrupt()
            if b is None and skip == 0:  # not one batch: an epoch would pass untrained, its loss None
                raise ValueError(f"the training loader yielded no batches in epoch {self.epoch + 1} (len {total}): "
                                 "fit needs a loader with at least one batch of images")
            self._log_interval(bar, t_last)
        finally:
            if bar is not None:
                bar.close()

    def _log_interval(self, bar, t_last):
        stats = self._flush()
        now = time.perf_counter()
        if stats is None:
            return t_last
        dt = now - t_last
        for key in ("loss", "correct", "n"):
            self._ep[key] += stats[key] * (1 if key != "loss" else stats["n"])
        self._ep["t"] += dt
        rec = {"kind": "interval", "epoch": self.epoch + 1, "step": self.step, "train_loss": stats["loss"],
               "train_acc": stats["correct"] / stats["n"], **self._lr_record(),
               "images_per_s": stats["n"] / max(dt, 1e-9),
               "elapsed_s": round(now - self._t0, 3), **self._telemetry()}
        self._write_metrics(rec)
        if bar is None and self._plain_intervals():
            print(f"epoch {rec['epoch']} step {rec['step']}: loss {rec['train_loss']:.4f} acc {rec['train_acc']:.4f} "
                  f"lr {_lrs_text(rec)} | {rec['images_per_s']:.0f} img/s", file=CONSOLE, flush=True)
        if bar is not None:
            post = {"loss": f"{rec['train_loss']:.3f}", "acc": f"{rec['train_acc']:.3f}",
                    "img/s": f"{rec['images_per_s']:.0f}"}
            if self.monitor is not None:
                post["gpu"] = format_snapshot(self.monitor.snapshot())
            bar.set_postfix(post, refresh=False)
        return now

    def _lr_record(self):
        """The metrics' learning rates: ``lr``, ``optimizer.lr`` (the value the schedule sets: the
        lr of the groups that set none of their own, a Chain's factor on its members' lrs), and
        ``group_lrs``, each parameter group's, as ``optimizer.param_groups[i]['lr']`` reads it (the
        lr its next step takes), where the optimizer has groups."""
        out = {"lr": float(self.optimizer.lr)}
        groups = getattr(self.optimizer, "param_groups", None)
        if isinstance(groups, list) and all(isinstance(g, Mapping) and "lr" in g for g in groups):
            out["group_lrs"] = [float(g["lr"]) for g in groups]
        return out

    def _plain_intervals(self):
        """Progress on, but stderr is no terminal (a pipe, a log file) nor a notebook's output: a
        plain line per log interval instead of progress-bar frames."""
        return self.progress is True and not (_is_terminal(sys.stderr) or _in_notebook())

    def _bar(self, total, initial, epochs):
        if not self.progress or self.progress == "epoch" or self._plain_intervals():
            return None
        from tqdm.auto import tqdm
        return tqdm(total=total, initial=initial, desc=f"epoch {self.epoch + 1}/{epochs}", unit="batch",
                    dynamic_ncols=True, leave=True, file=CONSOLE)

    def _say(self, text):
        # Rare, one-time notes (resuming, nothing to do): printed even without a progress bar.
        print(text, file=CONSOLE, flush=True)

    def _report_epoch(self, record):
        self.history.append(record)
        self._write_metrics(record)
        if self.progress:
            text = f"epoch {record['epoch']}:"
            if record["train_loss"] is not None:
                text += f" train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}"
            if "val_acc" in record:
                text += f" | val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}"
            text += f" | {record['images_per_s']:.0f} img/s | {record['elapsed_s']:.1f}s"
            print(text, file=CONSOLE, flush=True)

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, loader, tta=0, precision=None):
        """Loss, accuracy, per-class accuracy and confusion matrix (rows: true class, cols: predicted).

        Sums stay on the device; one readback at the end. ``tta``: test-time augmentation level
        (:func:`tta_logits`; True is level 1). In the trainer's precision unless ``precision`` says."""
        return evaluate(self.model, loader, tta=tta, precision=precision or self.precision)


TTA_LEVELS = (0, 1, 2)


def check_tta(tta) -> int:
    """The level of ``tta`` (True is 1, False 0); a ValueError naming the levels otherwise."""
    level = int(tta) if isinstance(tta, (bool, int, np.integer)) else None
    if level not in TTA_LEVELS:
        raise ValueError(f"tta={tta!r} must be a test-time augmentation level: 0 (none), 1 (mirror) or 2 "
                         "(mirror + 1-pixel translations)")
    return level


def tta_logits(model, x, level):
    """``model``'s logits for the batch ``x`` with test-time augmentation (airbench's levels):
    0 the image alone; 1 the mean of the image and its mirror; 2 half that, plus half the mean
    of the same pair translated one pixel up-left and one down-right (reflect padding), six
    views in all."""
    from . import layout
    xp = backend.get_array_module(x)

    def mirror(a):
        return (model(a) + model(layout.like(a, xp.ascontiguousarray(a[..., ::-1])))) * 0.5

    if level == 0:
        return model(x)
    logits = mirror(x)
    if level == 1:
        return logits
    h, w = x.shape[2], x.shape[3]
    padded = xp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    shifted = [layout.like(x, xp.ascontiguousarray(padded[:, :, dy:dy + h, dx:dx + w])) for dy, dx in ((0, 0), (2, 2))]
    return logits * 0.5 + (mirror(shifted[0]) + mirror(shifted[1])) * 0.25


def evaluate(model, loader, tta=0, precision="fp32"):
    """Evaluate ``model`` on ``loader`` (see :meth:`Trainer.evaluate`), computing in ``precision``
    (a model trained in one precision evaluates in any other: its parameters are float32; 'auto':
    the one the device of its parameters computes best, as in :class:`Trainer`)."""
    level = check_tta(tta)
    if precision == "auto":
        params = model.parameters()
        precision = amp.resolve_precision("auto", backend.device_of(params[0].data) if params else None)
    _check_batches(loader, "loader")
    with amp.model_lock(model):  # it switches the shared model to eval mode and back
        with backend.parameters_device_context(model.parameters()):  # (as Trainer.fit)
            return _evaluate(model, loader, level, precision)


def _evaluate(model, loader, level, precision):
    from .layers import switch_to_eval
    from .ops import softmax_cross_entropy
    restore = switch_to_eval(model)  # afterwards every layer's mode and training cache as they were
    loss_sum = conf = None
    classes = n = 0
    try:
        for x, y in loader:
            check_array("x", x)  # (before its shape is read)
            if x.shape[0] == 0 and len(y) == 0:  # an empty batch (the last of a filtered data set) counts nothing
                continue
            xp = backend.get_array_module(x, y)
            with amp.autocast(model, precision, backward=False) as dt:
                x = amp.cast_input(x, dt)
                logits = tta_logits(model, x, level)
            logits = logits.astype(np.float32, copy=False)  # scores compared in float32
            loss, _ = softmax_cross_entropy(logits, y)
            if conf is None:
                classes = int(logits.shape[1])
                loss_sum = xp.zeros((), dtype=np.float64)
                conf = xp.zeros((classes, classes), dtype=np.int64)
                class_ids = xp.arange(classes)
            loss_sum += loss * x.shape[0]
            # Confusion counts as one-hot(true)^T @ one-hot(predicted): no bincount, which on CuPy
            # reads the largest index back to size its output (a sync per batch). Exact: a batch's
            # counts are integers below 2^24. A label outside [0, classes) is counted nowhere. The
            # product is gpuconv's GEMM on a kernel device: CuPy's matmul is cuBLAS, which the
            # cuda12/cuda13 installs (CuPy and NVRTC alone) lack.
            true = (y[:, None] == class_ids).astype(np.float32)
            pred = (xp.argmax(logits, axis=1)[:, None] == class_ids).astype(np.float32)
            conf += _matmul(true.T, pred).astype(np.int64)
            n += int(x.shape[0])
    except Exception as exc:
        if _is_oom(exc):
            raise GPUOutOfMemory(oom_message(exc, getattr(loader, "batch_size", None), where="evaluation")) from exc
        raise
    finally:
        restore()
    if conf is None:
        raise ValueError("evaluate(): the loader yielded no images (no batches, or only empty ones); give it at least "
                         "one image")
    xp = backend.get_array_module(conf)
    host = backend.asnumpy(xp.concatenate([loss_sum.reshape(1), conf.reshape(-1).astype(np.float64)]))  # one readback
    confusion = host[1:].round().astype(np.int64).reshape(classes, classes)
    support = confusion.sum(axis=1)
    per_class = [float(confusion[i, i] / support[i]) if support[i] else math.nan for i in range(classes)]
    return {"loss": float(host[0] / n), "accuracy": float(np.trace(confusion) / n), "per_class": per_class,
            "confusion": confusion, "n": n}
