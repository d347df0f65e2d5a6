"""The trainer's checkpoints: what one holds (every array and generator a run needs to go on bit for bit),
written atomically under the output directory's lock, and the resume from one."""
from __future__ import annotations

import contextlib
import errno
import os
import warnings
from pathlib import Path

import numpy as np

from .. import backend, checkpoint as ckpt, kernels
from .._console import command_line
from .._files import BINARY, NOFOLLOW, WRITE_FIXES, restated
from ..graphs import REPLAYED_WAY_OUT
from ._errors import TrainingDiverged


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


class _Checkpoints:
    """Checkpoints: what a checkpoint holds, written atomically, and the exact resume from one.
    A part of :class:`Trainer`."""

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
        from ..plots import plot_curves
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
