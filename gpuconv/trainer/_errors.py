"""How a training run fails, by name: a diverged loss, a stop on request, the GPU's memory exhausted."""
from __future__ import annotations

import signal
from pathlib import Path

from .. import backend


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
