"""Shared fixtures: one test body runs on every backend present.

``backend`` is parametrized over 'numpy' (the reference), 'sim' (the CUDA kernels on the host
simulator) and 'cupy' (a real GPU; skipped when none answers). A test takes ``backend``,
builds its inputs with NumPy, moves them with ``backend.asarray`` and compares with the
NumPy reference computed under 'numpy'.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import gpuconv
from gpuconv import _env
from gpuconv import backend as B
from gpuconv import kernels

REPO = pathlib.Path(__file__).resolve().parents[1]
SUBSET = pathlib.Path(os.environ.get(
    "GPUCONV_TEST_DATA", REPO.parent / "shared" / "data" / "cifar10-subset" / "cifar-10-batches-py"))


@pytest.fixture(autouse=True)
def fresh_launch_plans(monkeypatch):
    """Each test starts with empty convolution launch plans and variant choices, and those it made
    go with it: a test that stands in for a GPU (monkeypatching kernels.tensor_cores_for, a grid
    limit, the occupancy) plans under its stand-ins, and leaves no plan made under them behind."""
    from gpuconv.ops import _launch_conv2d, _launch_conv2d_tc
    monkeypatch.setattr(_launch_conv2d_tc, "_PLANS", {})
    monkeypatch.setattr(_launch_conv2d, "_CHOSEN", {})


@contextlib.contextmanager
def lock_held_elsewhere(directory):
    """Another process holding ``directory``'s run lock (as a running ``gpuconv train`` does),
    its ``Popen`` yielded once it holds it; SIGKILLed on exit."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from gpuconv._files import directory_lock\n"
        f"with directory_lock({str(directory)!r}):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def fake_cupy_second_gpu(monkeypatch, array_type=None):
    """CuPy faked for a check of which GPU is current while work is done: arrays of ``array_type``
    (a NumPy subclass; a plain one when None) stand for CuPy arrays, all of them on cuda:1, and
    ``cupy.cuda.Device(i)`` as a context makes GPU ``i`` current in ``current[0]`` (GPU 0 at
    first), the previous one again after. Returns ``(cupy, current)``; ``cupy.ndarray`` is the
    array type."""
    import types
    if array_type is None:
        class array_type(np.ndarray):
            pass
    current = [0]

    class Device:
        def __init__(self, i=None):
            self.id = current[0] if i is None else i

        def __enter__(self):
            self.prev, current[0] = current[0], self.id
            return self

        def __exit__(self, *exc):
            current[0] = self.prev

    cupy = types.SimpleNamespace(ndarray=array_type, cuda=types.SimpleNamespace(Device=Device))
    monkeypatch.setattr(B, "_import_cupy", lambda: (cupy, None))
    monkeypatch.setattr(B, "device_id", lambda a: 1)
    return cupy, current


class FakeSecondGpu:
    """:func:`fake_cupy_second_gpu` whose module records its calls: arrays ``on(a)`` (a NumPy
    subclass) live on cuda:1, GPU 0 is current (``current[0]``) until a ``cuda.Device`` context
    changes it, and ``calls`` records ``(name, current GPU)`` for every function taken from the fake
    module (an ``xp.empty``, an ``xp.isfinite``), every ufunc on its arrays (``a + b``: 'add') and
    reshape, and ``(kernel, GPU)`` for every gpuconv kernel launched on 'cuda' (run on the simulator
    instead), so a test sees on which GPU CuPy would have allocated and launched."""

    def __init__(self, monkeypatch):
        import types
        self.calls = calls = []

        class OnGpu(np.ndarray):
            def __array_wrap__(self, obj, context=None, return_scalar=False):
                if context is not None:
                    calls.append((context[0].__name__, current[0]))
                return np.asarray(obj).view(type(self))  # a reduction gives a 0-d array, as CuPy's do

            def reshape(self, *shape, **kwargs):  # (a copy where the memory order needs one)
                calls.append(("reshape", current[0]))
                return super().reshape(*shape, **kwargs)

        self.OnGpu = OnGpu
        cupy, self.current = fake_cupy_second_gpu(monkeypatch, OnGpu)
        current = self.current

        class Module(types.SimpleNamespace):
            def __getattr__(self, name):  # (attributes not set: NumPy's function, its call recorded)
                def call(*args, **kwargs):
                    calls.append((name, current[0]))
                    out = getattr(np, name)(*args, **kwargs)
                    return np.asarray(out).view(OnGpu) if isinstance(out, (np.ndarray, np.generic)) else out
                return call

        module = Module(**vars(cupy))
        monkeypatch.setattr(B, "_import_cupy", lambda: (module, None))

        # gpuconv's kernels launched on 'cuda' run on the simulator, recorded as (kernel, the GPU the
        # launch makes current: its device argument, else its first array's)
        from gpuconv import kernels
        from gpuconv.kernels import _launching
        real_launch = _launching.launch

        def launch(op_file, kernel, dtype, target, grid, block, args, shared_mem=0, device=None, tf32=False):
            if target == "cuda":
                calls.append((kernel, _launching.array_device(args) if device is None else device))
                target = "sim"
            real_launch(op_file, kernel, dtype, target, grid, block, args, shared_mem=shared_mem, tf32=tf32)

        for launching in (_launching, kernels):
            monkeypatch.setattr(launching, "launch", launch)

    def on(self, a):
        return np.asarray(a).view(self.OnGpu)


@pytest.fixture
def fake_second_gpu(monkeypatch):
    return FakeSecondGpu(monkeypatch)


def forked_exit(child) -> str:
    """Runs ``child()`` (an exit code) in a forked process, killed after 10 s; how it ended
    ('exit N' or 'signal N'): the fork tests' way to see a child hang on a lock it inherited held."""
    import signal
    pid = os.fork()
    if pid == 0:
        code = 4
        try:
            signal.alarm(10)  # a child that hangs ends by SIGALRM
            code = child()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return f"exit {os.WEXITSTATUS(status)}" if os.WIFEXITED(status) else f"signal {os.WTERMSIG(status)}"

# GPUCONV_REQUIRE_GPU=1 (the GPU battery, benchmarks/run_gpu.sh): a GPU test that skips has failed,
# so a machine whose CUDA is unusable cannot pass the GPU suite by skipping all of it.
REQUIRE_GPU = _env.flag("GPUCONV_REQUIRE_GPU")
# ... except a case this GPU cannot run (a format its tensor cores lack: a T4's bfloat16 and TF32),
# skipped by skip_without_tensor_cores with this reason: a launch of it would not build (or trap).
NOT_ON_THIS_GPU = "not on this GPU: "

# GPUCONV_FAKE_CUPY=1: a CPU stand-in for the 'cupy' cases, NOT a GPU run. The 'cupy' backend's
# cases (shown as 'cupy-fake', without the gpu mark), and the GPU cases of a test's own 'cuda'
# parameter, run with CuPy faked (tests/fake_cupy.py, kernels on the simulator): to
# find a test's own faults, and those of the ops' Python path on 'cuda', before a GPU runs them.
# Never the default; refused together with GPUCONV_REQUIRE_GPU. Run e.g.
#   GPUCONV_FAKE_CUPY=1 python -m pytest -n 0 tests/test_pool2d.py -k cupy
FAKE_CUPY = _env.flag("GPUCONV_FAKE_CUPY")
if FAKE_CUPY and REQUIRE_GPU:
    raise pytest.UsageError("GPUCONV_FAKE_CUPY=1 fakes CuPy on the CPU: it is no GPU run, unset it with "
                            "GPUCONV_REQUIRE_GPU=1")


def check_linear_and_adjoint(backend, forward, backward, x1, x2, w, rng):
    """A convolution-like op's linearity in x and its adjoint identity <y, g> = <x, dX(g)> =
    <w, dW(g)> in float64: ``forward(x, w)`` gives (y, cache) on ``backend``, ``backward(g, cache)``
    (dx, dw, ...). Returns y for x1 (NumPy), g and <y, g>, for a test's further identities."""
    import numpy as np
    import pytest
    y1, cache = forward(backend.asarray(x1), backend.asarray(w))
    y2, _ = forward(backend.asarray(x2), backend.asarray(w))
    y12, _ = forward(backend.asarray(3.0 * x1 - x2), backend.asarray(w))
    y1, y2 = backend.asnumpy(y1), backend.asnumpy(y2)
    np.testing.assert_allclose(backend.asnumpy(y12), 3.0 * y1 - y2, rtol=1e-10, atol=1e-10)
    g = rng.standard_normal(y1.shape)
    dx, dw = backward(backend.asarray(g), cache)[:2]
    lhs = float(np.sum(y1 * g))
    assert lhs == pytest.approx(float(np.sum(x1 * backend.asnumpy(dx))), rel=1e-9, abs=1e-9)
    assert lhs == pytest.approx(float(np.sum(w * backend.asnumpy(dw))), rel=1e-9, abs=1e-9)
    return y1, g, lhs


def nvrtc_or_skip():
    """Skips a test that compiles with NVRTC where CuPy's binding or the NVRTC library is missing
    (CuPy 14 imports the binding without the library: kernels.nvrtc_binding loads it)."""
    try:
        kernels.nvrtc_binding()
    except ImportError as exc:
        pytest.skip(f"no NVRTC: {exc}")


def skip_without_tensor_cores(target, dtype, tf32=False, device=None):
    """Skips a 'cuda' case of a tensor-core kernel (mma.sync in ``dtype``; ``tf32``: float32 in
    TF32 mode) on a GPU whose tensor cores do not multiply that format."""
    if target == "cuda" and not kernels.tensor_cores_available("cuda", device, dtype, tf32):
        fmt = "TF32" if tf32 else np.dtype(dtype).name
        cc = kernels.tensor_core_min_cc(dtype, tf32)
        pytest.skip(f"{NOT_ON_THIS_GPU}its tensor cores do not multiply {fmt} (compute capability "
                    f"{cc // 10}.{cc % 10} does)")


def pytest_collection_modifyitems(config, items):
    """The whole suite (no paths named) starts with the tests marked slow (10 s and more each): on
    a 2-core machine a sanitizer build started last ran alone while the other worker idled. Named
    paths keep their order (the GPU battery hands out its first hardware runs first).
    GPUCONV_FAKE_CUPY=1: a GPU case of a test's own parameter ('cuda', not the backend fixture's)
    runs on the fake too, its gpu mark and no-GPU skip taken off."""
    if FAKE_CUPY:
        for item in items:
            params = getattr(getattr(item, "callspec", None), "params", {})
            if item.get_closest_marker("gpu") is not None and "cuda" in params.values():
                item.own_markers = [m for m in item.own_markers if m.name != "gpu" and not (
                    m.name == "skipif" and str(m.kwargs.get("reason", "")).startswith("no GPU"))]
                item.stash[_FAKE_CUPY_CASE] = True
            lacks = item.get_closest_marker("real_cupy")
            if lacks is not None and (item.stash.get(_FAKE_CUPY_CASE, False) or params.get("backend") == "cupy"):
                item.add_marker(pytest.mark.skip(reason=f"needs CuPy's {lacks.args[0]}, which the CPU stand-in "
                                                        "(GPUCONV_FAKE_CUPY=1) lacks: a GPU runs it"))
    if getattr(config, "args_source", None) == pytest.Config.ArgsSource.TESTPATHS:
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: else as collected


_FAKE_CUPY_CASE = pytest.StashKey[bool]()


def pytest_report_header(config):
    if FAKE_CUPY:
        return ("GPUCONV_FAKE_CUPY=1: the 'cupy' backend's cases ('cupy-fake') and the GPU cases of a 'cuda' "
                "parameter run with CuPy faked on the CPU (kernels on the simulator): NOT a GPU run")


@pytest.fixture(autouse=True)
def _fake_cupy_for_a_cuda_parameter(request):
    """GPUCONV_FAKE_CUPY=1: CuPy faked for a 'cuda' case of a test's own parameter."""
    if request.node.stash.get(_FAKE_CUPY_CASE, False):
        from fake_cupy import install_fake_cupy
        install_fake_cupy(request.getfixturevalue("monkeypatch"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_GPU and report.skipped and item.get_closest_marker("gpu") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if NOT_ON_THIS_GPU in reason:
            return
        report.outcome = "failed"
        report.longrepr = f"GPUCONV_REQUIRE_GPU=1: this GPU test skipped instead of running ({reason})"


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

    def assert_kernels_ran(self, *families):
        """On 'sim' and 'cupy', a kernel of each family (a launch name prefix such as
        'conv2d_forward') ran in this test; on 'numpy', no kernel ran."""
        names = self.launches.names
        if self.name == "numpy":
            assert names == [], f"numpy backend launched kernels: {names}"
            return
        for family in families:
            assert any(n.startswith(family) for n in names), f"no {family} kernel ran on {self.name}: {names}"

    def __repr__(self):
        return self.name


def _backend_params():
    cupy = pytest.param("cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(not B.cuda_available(),
                                                                           reason=f"no GPU: {B.cuda_status()}")])
    if FAKE_CUPY:  # (the CPU stand-in: no gpu mark, its own id)
        cupy = pytest.param("cupy", id="cupy-fake")
    return [pytest.param("numpy"), pytest.param("sim"), cupy]


@pytest.fixture(params=_backend_params())
def backend(request):
    """The backend, its default device set, every launch of the test in ``backend.launches``.
    On 'sim' and 'cupy' an op that has kernels must run them: a test in which such an op fell
    back to its NumPy/CuPy reference fails, whatever it compared."""
    if request.param == "cupy" and FAKE_CUPY:
        from fake_cupy import install_fake_cupy
        install_fake_cupy(request.getfixturevalue("monkeypatch"))
    be = Backend(request.param)
    with gpuconv.default_device(be.device), kernels.launch_log() as log:
        be.launches = log
        yield be
    if be.name != "numpy" and kernels.fallbacks(log):
        pytest.fail(f"on {be.name} these kernel ops ran their reference instead of the kernels: "
                    f"{sorted(set(kernels.fallbacks(log)))}")


@pytest.fixture(autouse=False)
def subset_dir():
    if not (SUBSET / "data_batch_1").exists():
        pytest.fail(f"the CIFAR-10 subset is missing at {SUBSET}: set GPUCONV_TEST_DATA to its "
                    "cifar-10-batches-py directory")
    return SUBSET


@pytest.fixture
def launches():
    """Every kernel launch of the test (``gpuconv.kernels.launch_log``): ``.names`` in order."""
    with kernels.launch_log() as log:
        yield log
