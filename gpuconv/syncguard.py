"""A guard that fails loudly when host code waits for the GPU: ``with no_sync(): step()``.

A device-resident training step must never synchronize the host with the GPU: every readback
(``float(loss)``, ``.item()``, ``bool(array)``, ``.get()``, CuPy routines that read a size or a
value back, a blocking copy) stalls the launch pipeline once per step. Counting our own
transfers (:data:`gpuconv.backend.transfers`) cannot see syncs made inside CuPy or by Python's
conversions, and ``cupyx.allow_synchronize(False)`` cannot either: it is deprecated, and CuPy 14
no longer declares its synchronizations to it, so it detects nothing.

How it works on 'cuda'. Before the block, one thread of ``kernels/stream_hold.cu`` is launched on
the current stream and spins until the host releases it through mapped pinned memory. Everything
the block enqueues waits behind it. Host code that only enqueues runs on; host code that
synchronizes waits for a stream that cannot move. A watchdog thread that fires after ``timeout``
seconds records where the host is stuck (the main thread's Python stack), then releases the GPU
so that the call returns; the kernel also gives up by itself after ``timeout`` plus a margin
(and says so), for a sync that holds the GIL. Either way the block fails with
:class:`DeviceSynchronized` naming the line that synchronized.

Limits: the block's own host work must take less than ``timeout`` (a first call that compiles
kernels takes longer: warm up first); and while the GPU is held, the launch queue (about a
thousand kernels) fills, after which a launch blocks too: guard one training step at a time (a
ResNet-9 step enqueues several hundred kernels; two of them in one block filled it on an H200).

On 'sim' the simulator's readbacks through :mod:`gpuconv.backend` are counted, and a nonzero
count fails the block the same way; on 'cpu' there is no device and nothing to check.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
import threading
import time
import traceback

import numpy as np

from . import backend

MARGIN_NS = 2_000_000_000  # the kernel's own bound, past the watchdog's: ``timeout`` + 2 s


class DeviceSynchronized(RuntimeError):
    """Host code inside :func:`no_sync` waited for the device."""


@contextlib.contextmanager
def no_sync(what: str = "the guarded block", timeout: float = 10.0, device=None):
    """Fail with :class:`DeviceSynchronized` if the block makes the host wait for the device.
    ``device``: 'cuda[:i]', 'sim' or 'cpu' (default: the default device)."""
    dev = backend.Device(device) if device is not None else backend.get_default_device()
    if dev.is_cuda:
        with _held_stream(dev.index, what, timeout):
            yield
    elif dev.kind == "sim":
        before = (backend.transfers.device_to_host, backend.transfers.host_to_device)
        yield
        after = (backend.transfers.device_to_host, backend.transfers.host_to_device)
        if after != before:
            raise DeviceSynchronized(
                f"{what} copied between host and device on 'sim' ({after[0] - before[0]} readbacks, "
                f"{after[1] - before[1]} uploads): on a GPU each is a synchronization. Keep the values "
                "on the device and read them back once per log interval")
    else:
        yield


@functools.lru_cache(maxsize=None)
def _flags(device: int):
    """Two int32 words of mapped pinned memory for ``device``: (release, timed_out), as ctypes
    views and the pointer the kernel gets (the same address on the device: unified addressing)."""
    cp = backend.require_cupy()
    rt = cp.cuda.runtime
    with cp.cuda.Device(device):
        ptr = rt.hostAlloc(8, rt.hostAllocMapped | rt.hostAllocPortable)  # kept for the process
    return ctypes.c_int32.from_address(ptr), ctypes.c_int32.from_address(ptr + 4), ptr


@contextlib.contextmanager
def _held_stream(device: int, what: str, timeout: float):
    from . import kernels
    cp = backend.require_cupy()
    release, timed_out, ptr = _flags(device)
    release.value, timed_out.value = 0, 0
    with cp.cuda.Device(device):
        kernels.launch("stream_hold", "stream_hold", np.float32, "cuda", (1, 1, 1), (1, 1, 1),
                       (np.uint64(ptr), np.uint64(ptr + 4), np.int64(int(timeout * 1e9) + MARGIN_NS)),
                       device=device)

        def let_go():
            release.value = 1

        with watchdog(what, timeout, let_go) as report, kernels.sync_forbidden():  # no autotuning waits here
            yield
        cp.cuda.get_current_stream().synchronize()  # outside the block: the hold has ended
    if timed_out.value and not report.stuck:
        report.fail(f"{what} made the host wait for the device: the stream stayed held for {timeout + MARGIN_NS / 1e9:.0f} s "
                    "(a synchronization that kept Python's lock, so no stack could be taken)")
    report.raise_if_failed()


class _Report:
    def __init__(self, what):
        self.what, self.stuck, self.message = what, None, None

    def fail(self, message):
        self.message = message

    def raise_if_failed(self):
        if self.message:
            raise DeviceSynchronized(self.message)


@contextlib.contextmanager
def watchdog(what: str, timeout: float, let_go):
    """Run the block; if it has not finished after ``timeout`` seconds, take the calling thread's
    stack, call ``let_go()`` (which must unblock a host waiting on the device) and fail the block
    afterwards, naming where it waited. The host-side half of :func:`no_sync`."""
    report = _Report(what)
    caller = threading.get_ident()
    done = threading.Event()

    def watch():
        if done.wait(timeout):
            return
        frame = sys._current_frames().get(caller)
        report.stuck = "".join(traceback.format_stack(frame)[-6:]) if frame is not None else "(no stack)"
        let_go()

    thread = threading.Thread(target=watch, name="gpuconv-no-sync-watchdog", daemon=True)
    t0 = time.perf_counter()
    thread.start()
    try:
        yield report
    finally:
        done.set()
        let_go()
        thread.join()
    if report.stuck:
        report.fail(f"{report.what} made the host wait for the device (still running after {timeout:g} s, "
                    f"{time.perf_counter() - t0:.1f} s in all): a readback (float(), .item(), bool(), .get()), a "
                    f"synchronize or a blocking copy; or the block queued more launches than the device's "
                    f"launch queue holds (about a thousand: guard less at once). The host was waiting "
                    f"here:\n{report.stuck}Keep such values on the device and read them back once per log "
                    "interval")
