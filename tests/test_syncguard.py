"""syncguard.no_sync: a block that makes the host wait for the device fails, naming where.

The GPU form holds the stream with kernels/stream_hold.cu and watches the host from a thread;
here the watchdog is driven by a stand-in device (an Event that only the release sets), the kernel
runs on the simulator, and the 'sim' form counts readbacks. The real GPU case is marked gpu."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import gpuconv
from gpuconv import backend as B
from gpuconv import kernels, models, ops
from gpuconv.optim import SGD
from gpuconv.syncguard import DeviceSynchronized, no_sync, watchdog


def test_watchdog_names_the_line_that_waited_and_lets_the_device_go():
    device_free = threading.Event()  # a held stream: a synchronizing call waits until released
    t0 = time.perf_counter()
    with watchdog("the step", 0.2, device_free.set) as report:
        device_free.wait()  # the host waits for the device here
    assert time.perf_counter() - t0 < 5
    with pytest.raises(DeviceSynchronized, match=r"(?s)the step made the host wait for the device.*"
                                                 r"device_free\.wait\(\)  # the host waits"):
        report.raise_if_failed()


def test_watchdog_passes_a_block_that_never_waits():
    released = threading.Event()
    with watchdog("the step", 5.0, released.set) as report:
        sum(range(1000))
    report.raise_if_failed()
    assert released.is_set()  # the device is let go after the block in every case


def test_stream_hold_kernel_releases_and_times_out_on_the_simulator():
    release, timed_out = np.array([1], np.int32), np.array([7], np.int32)
    args = (release, timed_out, np.int64(50_000))
    kernels.launch("stream_hold", "stream_hold", np.float32, "sim", (1, 1, 1), (1, 1, 1), args)
    assert timed_out[0] == 0
    release[0] = 0  # never released: it gives up after max_ns and says so
    kernels.launch("stream_hold", "stream_hold", np.float32, "sim", (1, 1, 1), (1, 1, 1), args)
    assert timed_out[0] == 1


def _step(net, opt, x, labels):
    opt.zero_grad()
    loss, dlogits = ops.softmax_cross_entropy(net(x), labels)
    net.backward(dlogits, need_dx=False)
    opt.step()
    return loss


def test_sim_guard_passes_a_resident_step_and_fails_a_readback():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    labels = np.array([1, 2])
    with gpuconv.default_device("sim"):
        net = models.seed_net(input_dim=(3, 8, 8))
        opt = SGD(net.parameters(), lr=0.1, momentum=0.9)
        with no_sync("a training step"):
            loss = _step(net, opt, x, labels)
        with pytest.raises(DeviceSynchronized, match=r"a logged step copied between host and device on 'sim' "
                                                     r"\(1 readbacks, 0 uploads\)"):
            with no_sync("a logged step"):
                gpuconv.item(_step(net, opt, x, labels))
    assert np.isfinite(float(loss))


def test_cpu_has_nothing_to_guard():
    with no_sync(device="cpu"):
        gpuconv.item(np.ones(()))


@pytest.mark.gpu
@pytest.mark.skipif(not B.cuda_available(), reason=f"no GPU: {B.cuda_status()}")
def test_gpu_guard_catches_implicit_syncs_and_passes_a_resident_step():
    cp = B.cupy_module()
    with gpuconv.default_device("cuda"):
        net = models.seed_net(input_dim=(3, 8, 8))
        opt = SGD(net.parameters(), lr=0.1, momentum=0.9)
        x = cp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32))
        labels = cp.asarray(np.array([1, 2]))
        for _ in range(2):  # warm-up: kernels compiled and loaded outside the guard (the first
            _step(net, opt, x, labels)  # step creates the momentum buffers, the second adds to them)
        with no_sync("a training step", timeout=5.0):
            loss = _step(net, opt, x, labels)
        for name, sync in [("float", lambda: float(loss)), ("item", lambda: loss.item()),
                           ("bool", lambda: bool(loss > 0)), ("get", lambda: loss.get())]:
            with pytest.raises(DeviceSynchronized, match=r"made the host wait for the device"):
                with no_sync(f"{name}()", timeout=1.0):
                    sync()
