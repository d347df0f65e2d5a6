"""The trainer's step: forward, loss, backward and the updates, launched with nothing read back, eager or
replayed as a CUDA graph (:mod:`gpuconv.graphs`); the settings a replay holds fixed."""
from __future__ import annotations

import numpy as np

from .. import amp, backend, kernels
from ..graphs import REPLAYED_WAY_OUT


class _Step:
    """The step: one batch's forward, backward and updates, eager or replayed as a CUDA graph.
    A part of :class:`Trainer`."""

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
        from ..graphs import StepGraph
        self._check_graphable()
        return StepGraph.for_optimizer(self._eager_step, self.optimizer, self.model)

    def _check_graphable(self):
        """Refuse what a replayed step would freeze (when the Trainer is built, and at each epoch's
        start: the code before the fit or ``epoch_start`` may have set another optimizer)."""
        from ..optim import replays_schedule
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
        from ..lookahead import airbench_decay
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
