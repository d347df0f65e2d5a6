"""The trainer: :class:`Trainer` and its settings, its parts a module each."""
from __future__ import annotations

import numbers
import warnings
from pathlib import Path

import numpy as np

from .. import amp, backend, checkpoint as ckpt, kernels
from ..counter_rng import check_seed
from ..monitor import GPUMonitor
from ._checkpointing import _Checkpoints
from ._evaluation import _Evaluation
from ._fit import _Fit
from ._history import _History
from ._step import _Step


class Trainer(_Step, _Checkpoints, _History, _Fit, _Evaluation):
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
            from ..precision import get_precision
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
