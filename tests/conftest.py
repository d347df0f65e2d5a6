"""Shared fixtures: one test body runs on every backend present.

``backend`` is parametrized over 'numpy' (the reference), 'sim' (the CUDA kernels on the host
simulator) and 'cupy' (a real GPU; skipped when none answers). A test takes ``backend``,
builds its inputs with NumPy, moves them with ``backend.asarray`` and compares with the
NumPy reference computed under 'numpy'.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

import gpuconv
from gpuconv import backend as B
from gpuconv import kernels

REPO = pathlib.Path(__file__).resolve().parents[1]
SUBSET = pathlib.Path(os.environ.get(
    "GPUCONV_TEST_DATA", REPO.parent / "shared" / "data" / "cifar10-subset" / "cifar-10-batches-py"))


class Backend:
    def __init__(self, name):
        self.name = name
        self.device = {"numpy": "cpu", "sim": "sim", "cupy": "cuda"}[name]
        self.xp = B.cupy_module() if name == "cupy" else np

    def asarray(self, a):
        return None if a is None else self.xp.asarray(a)

    def asnumpy(self, a):
        if a is None:
            return None
        return a.get() if B.is_cupy_array(a) else np.asarray(a)

    def __repr__(self):
        return self.name


def _backend_params():
    return [pytest.param("numpy"), pytest.param("sim"),
            pytest.param("cupy", marks=[pytest.mark.gpu,
                                        pytest.mark.skipif(not B.cuda_available(),
                                                           reason=f"no GPU: {B.cuda_status()}")])]


@pytest.fixture(params=_backend_params())
def backend(request):
    be = Backend(request.param)
    with gpuconv.default_device(be.device):
        yield be


@pytest.fixture(autouse=False)
def subset_dir():
    if not (SUBSET / "data_batch_1").exists():
        pytest.fail(f"the CIFAR-10 subset is missing at {SUBSET}: set GPUCONV_TEST_DATA to its "
                    "cifar-10-batches-py directory")
    return SUBSET


class LaunchLog(list):
    """The names of the kernels launched through ``gpuconv.kernels.launch``, in order;
    ``detail`` holds (name, grid, block) of each."""

    def __init__(self):
        super().__init__()
        self.detail = []

    def clear(self):
        super().clear()
        self.detail.clear()


@pytest.fixture
def launches(monkeypatch):
    """Records every kernel launch of the test (the launches still run)."""
    log = LaunchLog()
    real = kernels.launch

    def recording(op_file, kernel, dtype, target, grid, block, *args, **kw):
        log.append(kernel)
        log.detail.append((kernel, tuple(grid), tuple(block)))
        return real(op_file, kernel, dtype, target, grid, block, *args, **kw)

    monkeypatch.setattr(kernels, "launch", recording)
    return log
