"""GPU telemetry: 'no NVIDIA GPU' where NVML is absent or fails, real readings from a fake NVML."""
from __future__ import annotations

import sys
import time
import types

import pytest

from gpuconv import monitor


class FakeNVMLError(Exception):
    pass


def fake_pynvml(fail_init=False, power_supported=True, count=1):
    """A stand-in for the pynvml module: a GPU whose utilization rises by 10 each reading."""
    m = types.ModuleType("pynvml")
    m.NVML_TEMPERATURE_GPU = 0
    m.state = {"init": 0, "shutdown": 0, "util_reads": 0}

    def init():
        if fail_init:
            raise FakeNVMLError("NVML Shared Library Not Found")
        m.state["init"] += 1

    def util(h):
        m.state["util_reads"] += 1
        return types.SimpleNamespace(gpu=min(10 * m.state["util_reads"], 100), memory=30)

    def power(h):
        if not power_supported:
            raise FakeNVMLError("Not Supported")
        return 312_500  # milliwatts

    m.nvmlInit = init
    m.nvmlShutdown = lambda: m.state.__setitem__("shutdown", m.state["shutdown"] + 1)
    m.nvmlDeviceGetCount = lambda: count
    m.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    m.nvmlDeviceGetHandleByPciBusId = lambda bus: ("bus", bus)
    m.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=12 * 2**30, total=80 * 2**30, free=68 * 2**30)
    m.nvmlDeviceGetUtilizationRates = util
    m.nvmlDeviceGetTemperature = lambda h, sensor: 64
    m.nvmlDeviceGetPowerUsage = power
    m.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    return m


def test_without_nvml_everything_says_no_nvidia_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    mon = monitor.GPUMonitor().start()
    assert not mon.available and "nvidia-ml-py" in mon.reason
    assert mon.snapshot() is None
    mon.stop()
    gpus, why = monitor.query_all()
    assert gpus == [] and why.startswith("no NVIDIA GPU")
    assert monitor.format_snapshot(None) == "no NVIDIA GPU"
    assert monitor.metrics_fields(None) == {}


def test_nvml_that_fails_to_initialize_means_no_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(fail_init=True))
    with monitor.GPUMonitor(interval=0.01) as mon:
        assert not mon.available
        assert "no NVIDIA GPU" in mon.reason and "Not Found" in mon.reason
        assert mon.snapshot() is None
    assert monitor.query_all()[1].startswith("no NVIDIA GPU")


def test_this_machine_reports_no_gpu_without_raising():
    # The real pynvml is installed here, but there is no driver: must not raise.
    gpus, why = monitor.query_all()
    if gpus:
        pytest.skip("an NVIDIA GPU is present")
    assert "no NVIDIA GPU" in why


def test_sample_and_format_from_a_fake_gpu(monkeypatch):
    fake = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpus, why = monitor.query_all()
    assert why is None and len(gpus) == 1
    g = gpus[0]
    assert g["name"] == "NVIDIA H100 80GB HBM3"  # bytes decoded
    assert g["memory_used_gib"] == pytest.approx(12.0) and g["memory_total_gib"] == pytest.approx(80.0)
    assert g["temperature_c"] == 64 and g["power_w"] == pytest.approx(312.5) and g["power_limit_w"] == 700
    text = monitor.format_snapshot(g)
    assert text == "NVIDIA H100 80GB HBM3 | 10% | 12.0/80.0 GiB | 64C | 312/700W"
    fields = monitor.metrics_fields(g)
    assert fields["gpu_utilization_pct"] == 10 and fields["gpu_power_w"] == 312.5
    assert fields["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert fake.state["shutdown"] == 1  # query_all releases NVML


def test_unsupported_fields_are_left_out(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(power_supported=False))
    g = monitor.query_all()[0][0]
    assert "power_w" not in g and "utilization_pct" in g
    assert "W" not in monitor.format_snapshot(g).split("|")[-1]


def test_background_thread_keeps_sampling_without_blocking(monkeypatch):
    fake = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    mon = monitor.GPUMonitor(index=0, interval=0.01, pci_bus_id="00000000:18:00.0")
    t0 = time.perf_counter()
    mon.start()
    assert time.perf_counter() - t0 < 1.0
    assert mon.available and mon.reason == "ok"
    first = mon.snapshot()
    deadline = time.time() + 5
    while mon.samples < 4 and time.time() < deadline:
        time.sleep(0.01)
    later = mon.snapshot()
    mon.stop()
    assert mon.samples >= 4
    assert later["utilization_pct"] > first["utilization_pct"]  # fresh readings, not the first one
    assert later["time"] >= first["time"]
    assert fake.state["shutdown"] == 1
    n = mon.samples
    time.sleep(0.05)
    assert mon.samples == n  # the thread has stopped
    snap = mon.snapshot()
    snap["name"] = "changed"
    assert mon.snapshot()["name"] != "changed"  # snapshot() returns a copy


def test_a_failing_sample_does_not_kill_the_thread(monkeypatch):
    fake = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with monitor.GPUMonitor(interval=0.01) as mon:
        fake.nvmlDeviceGetName = lambda h: (_ for _ in ()).throw(FakeNVMLError("GPU is lost"))
        deadline = time.time() + 5
        while "GPU is lost" not in mon.reason and time.time() < deadline:
            time.sleep(0.01)
        assert "GPU is lost" in mon.reason
        assert mon.snapshot() is not None  # the last good reading stays
        assert mon._thread.is_alive()


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval"):
        monitor.GPUMonitor(interval=0)
