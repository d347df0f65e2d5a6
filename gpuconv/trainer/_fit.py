"""The trainer's fit: epochs of steps, validation, the readbacks and progress, and a stop on Ctrl-C or
SIGTERM that saves a checkpoint first."""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Mapping

from .. import amp, backend
from .._console import CONSOLE, _is_terminal
from .._files import directory_lock
from ..monitor import GPUMonitor, format_snapshot
from ._errors import GPUOutOfMemory, TrainingInterrupted, _check_batches, _is_oom, oom_message


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


class _Fit:
    """fit(): epochs of steps, validation, progress, and a stop on Ctrl-C or SIGTERM that loses no work.
    A part of :class:`Trainer`."""

    STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def _on_stop_signal(self, signum, frame):
        if self._stop_requested:  # a second signal: stop now, without saving
            kept = self.checkpoint_path if self.checkpoint_path is not None and self.checkpoint_path.exists() else None
            raise KeyboardInterrupt(f"stopped at once; the last checkpoint on disk is {kept}" if kept else
                                    "stopped at once; no checkpoint was written")
        self._stop_requested = signum
        now = ("the validation pass" if getattr(self, "_validating", False) else
               "the loader's preparation (a data-selection proxy's pass) at its current step"
               if getattr(self, "_preparing", False) else "the current step")
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
        if self.out_dir is not None:
            self._remove_partial_writes()
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
        self._prepare(loader)
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

    def _prepare(self, loader):
        """A loader's work before its first batch (``prepare(stop)``: a SelectedLoader's proxy
        phase, minutes on a CPU), stopped at its next step by a Ctrl-C or SIGTERM, which then
        saves the checkpoint as a stop between steps does (the phase runs again on resume)."""
        prepare = getattr(loader, "prepare", None)
        if not callable(prepare):
            return
        bars = []  # made at the first step reported: a loader already prepared shows none

        def progress():
            if not bars:
                bars.append(self._bar(getattr(loader, "steps", None), 0, None, desc="data selection (proxy)",
                                      unit="step"))
            if bars[0] is not None:
                bars[0].update(1)
                if bars[0].total is not None and bars[0].n >= bars[0].total:
                    bars[0].close()  # before the loader's report of the phase
        self._preparing = True
        try:
            prepare(stop=lambda: bool(self._stop_requested), progress=progress)
        finally:
            self._preparing = False
            if bars and bars[0] is not None:
                bars[0].close()
        if self._stop_requested:
            self._interrupt()

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

    def _bar(self, total, initial, epochs, desc=None, unit="batch"):
        if not self.progress or self.progress == "epoch" or self._plain_intervals():
            return None
        from tqdm.auto import tqdm
        return tqdm(total=total, initial=initial, desc=desc or f"epoch {self.epoch + 1}/{epochs}", unit=unit,
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
