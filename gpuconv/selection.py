"""Data selection by a proxy network (airbench96_faster): each step trains on the part of its batch
that a small network finds hardest.

:class:`Proxy` is the small network with its optimizer and schedule. At every step of the run it
sees the step's whole batch (the same augmented batches as the main run: the loader's plan is a
function of its seed and the epoch), computes each image's loss in training mode (batch norm's
running statistics move), and picks the ``keep`` images of the highest loss
(:func:`select_hardest`). Every ``train_every``-th step (``step % train_every == 0``) it also trains
on the mean loss of those images; the schedule steps at every step.

:class:`SelectedLoader` wraps the run's loader: before the first epoch it runs the proxy over every
step of the run (the proxy phase) and keeps the selection, a ``(steps, keep)`` table of batch
positions, on the device; then each batch it yields is the loader's batch at those positions. The
table is part of the loader's state (``state_dict``, one bit per image of each step), so a
checkpoint holds it and a resumed run trains on the same images without running the proxy again.
Nothing is read back during the proxy phase except its losses, once, at its end (the report, and a
NaN named by step).
"""
from __future__ import annotations

import contextlib
import time

import numpy as np

from . import amp, backend, layout, precision
from .backend import get_array_module


def selected_count(batch, keep) -> int:
    """How many of a batch of ``batch`` images the main network trains on: ``keep`` of them (a
    share in (0, 1]), rounded to the nearest, at least 1 (512 of 1024 for 0.5)."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ValueError(f"select keep={keep!r} must be the share of each batch trained on, in (0, 1], e.g. 0.5")
    return max(1, int(round(batch * float(keep))))


def select_hardest(losses, k):
    """The positions of the ``k`` largest of the (N,) ``losses``, in ascending order, computed where
    the losses are. Ties go to the lower position, and a NaN counts as the largest, so the choice is
    a function of the losses alone, the same on NumPy and CuPy (a stable sort of the negated losses)."""
    xp = get_array_module(losses)
    n = losses.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"select_hardest: k={k} must be in 1..{n} (the batch's rows)")
    key = -xp.where(xp.isnan(losses), xp.asarray(np.inf, losses.dtype), losses)  # (a NaN first, as the hardest)
    order = xp.argsort(key, kind="stable")
    return xp.sort(order[:k])


def take_rows(x, rows):
    """``x[rows]`` along the batch axis, keeping ``x``'s memory layout (an NHWC batch stays NHWC).
    A bfloat16 batch is gathered as its 16-bit patterns (a copy: the same bits, through CuPy's
    integer indexing rather than its experimental bfloat16 support)."""
    bits = x.dtype == precision.bfloat16
    if bits:
        x = x.view(np.uint16)
    out = x.transpose(layout.NHWC)[rows].transpose(layout.NCHW) if layout.is_channels_last(x) else x[rows]
    return out.view(precision.bfloat16) if bits else out


class Proxy:
    """The selecting network: ``model`` trained by ``optimizer`` (and ``scheduler``, stepped at
    every step) on the mean loss of the ``keep`` hardest images of every ``train_every``-th batch,
    with ``label_smoothing``, in ``precision`` ('fp16' runs in 'fp32': the proxy has no loss
    scaler; None: the model is called on the batch as it is, a float64 model in a check)."""

    def __init__(self, model, optimizer, scheduler=None, keep=0.5, train_every=4, label_smoothing=0.0,
                 precision="fp32"):
        if isinstance(train_every, bool) or not (isinstance(train_every, int) and train_every >= 1):
            raise ValueError(f"train_every={train_every!r}: must be an int >= 1 (the proxy trains at the steps "
                             "step % train_every == 0)")
        selected_count(1, keep)  # (checks it)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.keep, self.train_every, self.label_smoothing = keep, train_every, float(label_smoothing)
        # (None: the model runs on the batch as given, e.g. a float64 model in a check)
        self.precision = (None if precision is None else "fp32" if precision == "fp16"
                          else amp.check_precision(precision))

    def device_context(self):
        """The proxy's GPU current, as a context (a no-op on the host): CuPy allocates and launches on
        its current device, whatever the arrays' (:func:`gpuconv.backend.parameters_device_context`)."""
        first = self.optimizer.params[:1] if hasattr(self.optimizer, "params") else self.model.parameters()[:1]
        return backend.parameters_device_context(first)

    def step(self, x, y, step):
        """The proxy's step ``step`` (0-based) on the batch ``(x, y)``: returns ``(rows, losses)``,
        the selected positions (ascending) and every image's loss, on the device. Reads nothing back."""
        from .layers import call_backward, input_is_data
        from .layers.passes import _drop_caches
        from .ops import softmax_cross_entropy
        trains = step % self.train_every == 0
        k = selected_count(int(x.shape[0]), self.keep)
        with self.device_context():
            if trains:
                self.optimizer.zero_grad()
            with (amp.autocast(self.model, self.precision, backward=trains) if self.precision is not None
                  else contextlib.nullcontext(x.dtype)) as dt:
                with input_is_data(self.model):
                    logits = self.model(amp.cast_input(x, dt))
                losses, _ = softmax_cross_entropy(logits, y, label_smoothing=self.label_smoothing, reduction="none")
                rows = select_hardest(losses, k)
                if trains:  # the mean loss of the selected rows: the others' labels ignored (gradient 0, not counted)
                    xp = get_array_module(y)
                    chosen = xp.zeros(y.shape, bool)
                    chosen[rows] = True
                    _, dlogits = softmax_cross_entropy(logits, xp.where(chosen, y, -1), ignore_index=-1,
                                                       label_smoothing=self.label_smoothing)
                    call_backward(self.model, dlogits, need_dx=False)
                else:
                    _drop_caches(self.model)  # a forward alone: nothing waits for a backward
            if trains:
                self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return rows, losses


class SelectedLoader:
    """``loader``'s batches, each cut to the rows ``proxy`` selects: ``(x[rows], y[rows])``.

    The selection covers ``epochs`` epochs of ``len(loader)`` steps; it is made at the first
    ``set_epoch`` or iteration (the proxy phase, :meth:`select`) unless a state loaded first brought
    it. Every batch of the loader must have the same size (a loader that drops its last, partial
    batch, or one batch per epoch). ``report``: called once after the proxy phase with its records
    (one per epoch: the mean loss of every image and of the selected ones, the proxy's steps and
    trained steps) and its seconds."""

    def __init__(self, loader, proxy, epochs, report=None):
        if isinstance(epochs, bool) or not (isinstance(epochs, int) and epochs >= 1):
            raise ValueError(f"epochs={epochs!r}: must be an int >= 1 (the epochs the selection covers)")
        for name in ("set_epoch", "state_dict", "load_state_dict"):
            if not callable(getattr(loader, name, None)):
                raise TypeError(f"SelectedLoader needs a loader with set_epoch, state_dict and load_state_dict (a "
                                f"gpuconv.data.DeviceLoader), got {type(loader).__name__} without {name}")
        n, bs = loader.num_samples, loader.batch_size
        if not (loader.drop_last or n % bs == 0 or bs >= n):
            raise ValueError(f"SelectedLoader: the loader's last batch holds {n % bs} of {bs} images; the selection "
                             "keeps the same number of each batch: use drop_last=True")
        self.inner, self.proxy, self.epochs, self.report = loader, proxy, epochs, report
        self.batch = min(bs, n)
        self.keep = selected_count(self.batch, proxy.keep)
        self.rows = None          # (steps, keep) on the device, once selected
        self._host_bits = None    # its host copy, for the checkpoints (state_dict)
        self.records = []         # the proxy phase's, per epoch

    # what the trainer and the CLI read from a loader
    def __len__(self):
        return len(self.inner)

    @property
    def steps(self):
        return self.epochs * len(self.inner)

    @property
    def batch_size(self):
        return self.inner.batch_size

    @property
    def mean(self):
        return self.inner.mean

    @property
    def std(self):
        return self.inner.std

    @property
    def images(self):
        return self.inner.images

    def set_epoch(self, epoch, start_batch=0):
        if self.rows is None:
            self.select()
        self.inner.set_epoch(epoch, start_batch)

    def prepare(self, stop=None, progress=None):
        """The proxy phase (:meth:`select`) unless the selection is made. ``stop``: asked after each
        of the proxy's steps; when it answers true the phase ends there with nothing selected (it
        runs again from the start at the next ``prepare``, ``set_epoch`` or iteration): how the
        Trainer stops a run at a Ctrl-C or SIGTERM in this phase without waiting for its end.
        ``progress``: called after each of the proxy's steps (the Trainer's progress bar), of
        :attr:`steps`."""
        if self.rows is None:
            self.select(stop, progress)

    def state_dict(self) -> dict:
        """The loader's state and the selection, host arrays: each step's selected positions as a
        bitmask over its batch (``numpy.packbits`` of a (steps, batch) mask, little bit order; one bit
        an image: 128 bytes a step of 1024), None before the proxy phase."""
        if self.rows is not None and self._host_bits is None:
            mask = np.zeros((self.steps, self.batch), bool)
            np.put_along_axis(mask, backend.asnumpy(self.rows), True, axis=1)
            self._host_bits = np.packbits(mask, axis=1, bitorder="little")
        return {"loader": self.inner.state_dict(), "selected": self._host_bits, "batch": self.batch,
                "keep": self.keep}

    def load_state_dict(self, state: dict):
        if "loader" not in state or "selected" not in state:
            raise KeyError(f"SelectedLoader.load_state_dict: the state has {sorted(state)}, not 'loader' and "
                           "'selected': pass the dict SelectedLoader.state_dict() returned (a checkpoint of a run "
                           "trained with data selection)")
        bits, rows = state["selected"], None
        if bits is not None:
            bits = np.asarray(bits, np.uint8)
            mask = np.unpackbits(bits, axis=1, count=self.batch, bitorder="little").astype(bool) \
                if bits.ndim == 2 and bits.shape[1] == -(-self.batch // 8) else None
            if (mask is None or state.get("batch") != self.batch or mask.shape[0] != self.steps
                    or not (mask.sum(axis=1) == self.keep).all()):
                raise ValueError(f"SelectedLoader.load_state_dict: the selection is of {state.get('keep')} of "
                                 f"{state.get('batch')} images at each of {len(bits)} steps, but this run selects "
                                 f"{self.keep} of {self.batch} at each of {self.steps} steps ({self.epochs} epochs of "
                                 f"{len(self.inner)}): resume with the same data, batch size and epochs as the run "
                                 "that wrote it")
            rows = np.nonzero(mask)[1].reshape(self.steps, self.keep)  # (ascending in each row)
        self.inner.load_state_dict(state["loader"])
        self.rows = None if rows is None else backend.to_device(rows, self.inner.device)
        self._host_bits = bits

    def select(self, stop=None, progress=None):
        """The proxy phase: the proxy's step on every batch of the run, in order; keeps the selection.
        The loader's own state is left as it was. ``stop``, ``progress``: as :meth:`prepare`'s."""
        from .trainer import TrainingDiverged
        saved = self.inner.state_dict()
        t0 = time.perf_counter()
        per_epoch, picked, stats = len(self.inner), [], []
        # the proxy's GPU current throughout (the statistics and the tables are made on it, not on the
        # current device, when the proxy is on another: a phase run outside Trainer.fit, say)
        with self.proxy.device_context():
            try:
                for epoch in range(self.epochs):
                    self.inner.set_epoch(epoch)
                    b = -1
                    for b, (x, y) in enumerate(self.inner):
                        rows, losses = self.proxy.step(x, y, epoch * per_epoch + b)
                        picked.append(rows)
                        stats.append(get_array_module(losses).stack([losses.mean(), losses[rows].mean()]))
                        if progress is not None:
                            progress()
                        if stop is not None and stop():
                            return
                    if b + 1 != per_epoch:
                        raise RuntimeError(f"SelectedLoader: epoch {epoch + 1} of the loader gave {b + 1} batches, "
                                           f"not its length {per_epoch}")
            finally:
                self.inner.load_state_dict(saved)
            xp = get_array_module(picked[0])
            values = backend.asnumpy(xp.stack(stats)).astype(np.float64)  # the phase's one readback
            rows = xp.stack(picked).astype(np.int64)
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if bad.size:
            raise TrainingDiverged(f"the data-selection proxy's loss became {values[bad[0], 0]} at its step "
                                   f"{int(bad[0]) + 1}: it selects nothing meaningful from there; lower the "
                                   "learning rate (--lr)", step=int(bad[0]) + 1)
        self.rows = rows
        self._host_bits = None
        seconds = time.perf_counter() - t0
        self.records = []
        for epoch in range(self.epochs):
            part = values[epoch * per_epoch:(epoch + 1) * per_epoch]
            steps = range(epoch * per_epoch, (epoch + 1) * per_epoch)
            self.records.append({"kind": "proxy", "epoch": epoch + 1, "proxy_steps": per_epoch,
                                 "proxy_trained_steps": sum(s % self.proxy.train_every == 0 for s in steps),
                                 "proxy_loss": float(part[:, 0].mean()),
                                 "proxy_selected_loss": float(part[:, 1].mean()),
                                 "selected": self.keep, "batch": self.batch, "proxy_elapsed_s": round(seconds, 3)})
        if self.report is not None:
            self.report(self.records, seconds)

    def __iter__(self):
        if self.rows is None:
            self.select()
        epoch, start = self.inner.epoch, self.inner.start_batch
        if epoch >= self.epochs:
            raise ValueError(f"SelectedLoader: epoch {epoch + 1} is past the {self.epochs} epochs the selection "
                             "covers: train for at most that many (the proxy selected for the run's length)")
        per_epoch = len(self.inner)
        for b, (x, y) in enumerate(self.inner, start=start):
            with backend.array_device_context((x,)):  # (the gathers on the batch's GPU, not the current one)
                rows = self.rows[epoch * per_epoch + b]
                batch = take_rows(x, rows), y[rows]
            yield batch

    def __repr__(self):
        return f"SelectedLoader({self.inner!r}, {self.keep} of each {self.batch}, {self.epochs} epochs)"
