"""The trainer's records: metrics.jsonl (trimmed to a resumed checkpoint), best.npz, the curves, and GPU
telemetry."""
from __future__ import annotations

import json
import os
import re
import time

import numpy as np

from .. import backend, checkpoint as ckpt
from .._files import BINARY, NOFOLLOW, fsync_dir, make_dirs, new_file_mode, write_atomic
from ..monitor import GPUMonitor, metrics_fields


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


class _History:
    """The metrics history (metrics.jsonl, best.npz, the curves) and the GPU telemetry.
    A part of :class:`Trainer`."""

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

    # The run's files (write_atomic's temporaries of them: '.<name>.' + mkstemp's 8 characters + '.tmp')
    RUN_FILES = ("checkpoint.npz", "best.npz", "metrics.jsonl", "curves.png")
    _PARTIAL = re.compile(r"^\.(%s)\.[a-z0-9_]{8}\.tmp$" % "|".join(map(re.escape, RUN_FILES)))

    def _remove_partial_writes(self):
        """The temporary files of writes a run killed mid-write left in out_dir (SIGKILL, the OOM killer,
        a power cut: a checkpoint's size each, hidden, kept forever and filling the disk run after run),
        removed while this fit holds the directory's lock (no other run writes there)."""
        try:
            entries = list(os.scandir(self.out_dir))
        except FileNotFoundError:
            return
        for entry in entries:
            if self._PARTIAL.match(entry.name) and not entry.is_dir(follow_symlinks=False):
                try:
                    os.unlink(entry.path)  # (a link is removed, never followed)
                except FileNotFoundError:
                    pass

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
