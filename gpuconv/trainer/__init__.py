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

The package holds one part a module: ``_core`` (:class:`Trainer`: its settings, its output
paths), ``_step`` (the step, eager or replayed as a CUDA graph), ``_checkpointing`` (what a
checkpoint holds, the atomic write, the exact resume), ``_history`` (metrics.jsonl, best.npz, the
curves, GPU telemetry), ``_fit`` (the epochs, validation, progress, Ctrl-C and SIGTERM),
``_evaluation`` (evaluation with test-time augmentation) and ``_errors`` (how a run fails, by
name). :class:`Trainer` takes the classes of ``_step`` to ``_evaluation`` as its bases. Import
the names from ``gpuconv.trainer``: it holds every one of its modules' names, and an assignment
to one of them (a test's monkeypatch) reaches the module that uses it (:mod:`gpuconv._package`).
"""
from __future__ import annotations

from .. import _package
from . import _checkpointing, _core, _errors, _evaluation, _fit, _history, _step

_package.gather(__name__, _errors, _step, _checkpointing, _history, _fit, _evaluation, _core)
