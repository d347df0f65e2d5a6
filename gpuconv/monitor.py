"""GPU telemetry through NVML (the ``nvidia-ml-py`` package, imported as ``pynvml``).

A :class:`GPUMonitor` samples name, memory, utilization, temperature and power in a daemon
thread every ``interval`` seconds, so the training loop only reads the latest sample
(:meth:`GPUMonitor.snapshot`) and never waits on the driver. Where NVML is missing or fails
to initialize (no NVIDIA driver, a CPU-only machine) everything still works: ``available``
is False, ``reason`` says "no NVIDIA GPU (...)" and ``snapshot()`` returns None.

``pynvml`` is imported lazily, inside the functions, so importing gpuconv never touches the
driver and tests can inject a fake module through ``sys.modules``.
"""
from __future__ import annotations

import threading
import time

GiB = float(1 << 30)


def _nvml():
    """The pynvml module initialized, or raise RuntimeError saying why there is no NVIDIA GPU."""
    try:
        import pynvml
    except Exception as exc:  # ImportError, or a broken install
        raise RuntimeError(f"no NVIDIA GPU telemetry: nvidia-ml-py is not importable "
                           f"({type(exc).__name__}: {exc}); pip install nvidia-ml-py") from None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded on CPU-only machines
        raise RuntimeError(f"no NVIDIA GPU (NVML did not initialize: {exc or type(exc).__name__})") from None
    return pynvml


def _text(value) -> str:
    # Older pynvml releases return bytes for names.
    return value.decode() if isinstance(value, bytes) else str(value)


def _handle(nvml, index: int, pci_bus_id: str | None = None):
    # CUDA device N and NVML device N differ under CUDA_VISIBLE_DEVICES; the PCI bus id is
    # the same in both numberings, so prefer it when the caller knows it.
    if pci_bus_id:
        try:
            return nvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id)
        except Exception:
            pass
    return nvml.nvmlDeviceGetHandleByIndex(index)


def sample(nvml, handle, index: int = 0) -> dict:
    """One reading of a device. Fields a GPU does not report (power on some boards) are absent."""
    out = {"index": index, "name": _text(nvml.nvmlDeviceGetName(handle)), "time": time.time()}
    readers = {
        "memory": lambda: nvml.nvmlDeviceGetMemoryInfo(handle),
        "util": lambda: nvml.nvmlDeviceGetUtilizationRates(handle),
        "temperature_c": lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
        "power_w": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,  # NVML reports milliwatts
        "power_limit_w": lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
    }
    for key, read in readers.items():
        try:
            value = read()
        except Exception:  # NVML_ERROR_NOT_SUPPORTED and friends: leave the field out
            continue
        if key == "memory":
            out["memory_used_gib"] = value.used / GiB
            out["memory_total_gib"] = value.total / GiB
        elif key == "util":
            out["utilization_pct"] = float(value.gpu)
            out["memory_utilization_pct"] = float(value.memory)
        else:
            out[key] = float(value)
    return out


def format_snapshot(snap: dict | None) -> str:
    """A short line for a progress bar or a terminal: 'H100 | 87% | 12.3/80.0 GiB | 64C | 310W'."""
    if not snap:
        return "no NVIDIA GPU"
    parts = [snap.get("name", "GPU")]
    if "utilization_pct" in snap:
        parts.append(f"{snap['utilization_pct']:.0f}%")
    if "memory_used_gib" in snap:
        parts.append(f"{snap['memory_used_gib']:.1f}/{snap['memory_total_gib']:.1f} GiB")
    if "temperature_c" in snap:
        parts.append(f"{snap['temperature_c']:.0f}C")
    if "power_w" in snap:
        limit = f"/{snap['power_limit_w']:.0f}" if "power_limit_w" in snap else ""
        parts.append(f"{snap['power_w']:.0f}{limit}W")
    return " | ".join(parts)


def metrics_fields(snap: dict | None) -> dict:
    """The telemetry columns of a metrics.jsonl record (prefixed 'gpu_'), empty without a GPU."""
    if not snap:
        return {}
    keys = ("utilization_pct", "memory_used_gib", "memory_total_gib", "temperature_c", "power_w")
    fields = {f"gpu_{k}": round(float(snap[k]), 3) for k in keys if k in snap}
    fields["gpu_name"] = snap.get("name")
    return fields


def query_all() -> tuple[list[dict], str | None]:
    """A reading of every NVIDIA GPU, and None; or ([], reason) where there is none."""
    try:
        nvml = _nvml()
    except RuntimeError as exc:
        return [], str(exc)
    try:
        count = nvml.nvmlDeviceGetCount()
        if count < 1:
            return [], "no NVIDIA GPU (NVML sees 0 devices)"
        return [sample(nvml, nvml.nvmlDeviceGetHandleByIndex(i), i) for i in range(count)], None
    except Exception as exc:
        return [], f"no NVIDIA GPU (NVML query failed: {exc or type(exc).__name__})"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


class GPUMonitor:
    """Samples one GPU in a background thread; ``snapshot()`` returns the latest reading.

    >>> with GPUMonitor(index=0, interval=1.0) as mon:
    ...     train()
    ...     print(format_snapshot(mon.snapshot()))

    Without a GPU ``available`` is False and ``reason`` says why; ``snapshot()`` is None."""

    def __init__(self, index: int = 0, interval: float = 1.0, pci_bus_id: str | None = None):
        if interval <= 0:
            raise ValueError(f"interval={interval!r}: the sampling interval must be > 0 seconds, e.g. 1.0")
        self.index = int(index)
        self.interval = float(interval)
        self.pci_bus_id = pci_bus_id
        self.available = False
        self.reason = "not started"
        self.samples = 0
        self._nvml = self._handle = None
        self._latest: dict | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> GPUMonitor:
        if self._thread is not None:
            return self
        try:
            self._nvml = _nvml()
            self._handle = _handle(self._nvml, self.index, self.pci_bus_id)
            self._store(sample(self._nvml, self._handle, self.index))
        except Exception as exc:
            self._shutdown()
            self.available = False
            self.reason = str(exc) if isinstance(exc, RuntimeError) else \
                f"no NVIDIA GPU (NVML device {self.index}: {exc or type(exc).__name__})"
            return self
        self.available, self.reason = True, "ok"
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gpuconv-gpu-monitor", daemon=True)
        self._thread.start()
        return self

    def _store(self, snap: dict):
        with self._lock:
            self._latest = snap
            self.samples += 1

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self._store(sample(self._nvml, self._handle, self.index))
            except Exception as exc:  # a transient NVML error must never kill training
                self.reason = f"last NVML sample failed: {exc}"

    def snapshot(self) -> dict | None:
        """The latest reading (a dict copy), or None without a GPU."""
        with self._lock:
            return dict(self._latest) if self._latest is not None else None

    def _shutdown(self):
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
        self._nvml = self._handle = None

    def stop(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=max(5.0, 2 * self.interval))
            self._thread = None
        self._shutdown()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def __repr__(self):
        state = format_snapshot(self.snapshot()) if self.available else self.reason
        return f"GPUMonitor(index={self.index}, interval={self.interval}: {state})"
