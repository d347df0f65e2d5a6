"""The NumPy/CuPy boundary: device parsing, array modules, CUDA detection, defaults, transfers."""
from __future__ import annotations

import contextvars
import dataclasses
import os
import pathlib
import types

import numpy as np
import pytest

import gpuconv
from gpuconv import backend as B
from gpuconv.layers import Linear

NO_GPU = pytest.mark.skipif(B.cuda_available(), reason="checks the behaviour without a usable GPU")


def fresh(fn, *args):
    """Run ``fn`` in an empty context: the default device is unset there, as in a new process."""
    return contextvars.Context().run(fn, *args)


# ---------------------------------------------------------------- Device
@pytest.mark.parametrize("spec, kind, index, text", [
    ("cpu", "cpu", 0, "cpu"), (" CPU ", "cpu", 0, "cpu"), ("sim", "sim", 0, "sim"),
    ("cuda", "cuda", 0, "cuda:0"), ("cuda:3", "cuda", 3, "cuda:3"), ("CUDA:1", "cuda", 1, "cuda:1"),
])
def test_device_parsing(spec, kind, index, text):
    d = B.Device(spec)
    assert (d.kind, d.index, str(d)) == (kind, index, text)
    assert repr(d) == f"Device('{text}')"
    assert B.Device(d) == d and hash(B.Device(d)) == hash(d)


def test_device_index_argument_and_immutability():
    assert B.Device("cuda", index=2) == B.Device("cuda:2")
    assert B.Device("cuda:0") == B.Device("cuda")
    with pytest.raises(dataclasses.FrozenInstanceError):
        B.Device("cpu").kind = "cuda"


@pytest.mark.parametrize("spec, exc, match", [
    ("tpu", ValueError, r"device 'tpu' is not understood: use 'cpu', 'cuda', 'cuda:N', 'sim' or 'auto'"),
    ("cpu:1", ValueError, r"only 'cuda' takes an index, as in 'cuda:1'"),
    ("cuda:x", ValueError, r"the index after ':' must be an integer"),
    ("cuda:-1", ValueError, r"the index must be >= 0"),
    (3, TypeError, r"device must be a str or Device, got int"),
])
def test_device_errors(spec, exc, match):
    with pytest.raises(exc, match=match):
        B.Device(spec)


def test_auto_picks_gpu_only_when_usable():
    assert B.Device("auto").kind == ("cuda" if B.cuda_available() else "cpu")


def test_xp_per_device():
    assert B.Device("cpu").xp is np and B.Device("sim").xp is np
    assert B.Device("cuda").is_cuda and not B.Device("sim").is_cuda


@NO_GPU
def test_cuda_device_without_gpu_says_why_and_what_to_do():
    with pytest.raises(RuntimeError, match=r"a CUDA device was asked for but .*device='cpu'.*device='sim'"):
        B.Device("cuda").xp
    with pytest.raises(RuntimeError, match=r"device='cpu'"):
        B.set_default_device("cuda")
    with pytest.raises(RuntimeError, match=r"device='cpu'"):
        with B.default_device("cuda"):
            pass  # pragma: no cover


# ---------------------------------------------------------------- CUDA detection
def test_cuda_available_is_a_bool_and_status_explains():
    ok = B.cuda_available()
    assert ok is True or ok is False
    status = B.cuda_status()
    assert isinstance(status, str) and status
    if not ok:
        assert "cupy" in status


class _BrokenRuntime:
    @staticmethod
    def getDeviceCount():
        raise RuntimeError("cudaErrorInsufficientDriver")


class _FakeCupy:
    __version__ = "0.0-fake"

    class cuda:  # noqa: N801  (mirrors cupy.cuda)
        runtime = _BrokenRuntime


def test_probe_turns_driver_errors_into_false(monkeypatch):
    monkeypatch.setattr(B, "_import_cupy", lambda: (_FakeCupy, None))
    ok, why = B._cuda_probe.__wrapped__()
    assert ok is False and "CUDA is unusable" in why and "cudaErrorInsufficientDriver" in why


def test_probe_without_cupy(monkeypatch):
    monkeypatch.setattr(B, "_import_cupy", lambda: (None, "cupy is not importable (ImportError: x)"))
    ok, why = B._cuda_probe.__wrapped__()
    assert ok is False and "make install EXTRAS=dev,cuda12" in why and "cupy-cuda12x nvidia-cuda-nvrtc-cu12" in why


# ---------------------------------------------------------------- get_array_module
def test_get_array_module_numpy_and_ignored_arguments():
    assert B.get_array_module(np.ones(2), None, 3, 2.5, np.float32(1)) is np
    assert B.get_array_module() is np


def test_numpy_arrays_are_answered_without_the_cupy_lookup(monkeypatch):
    """Every op asks get_array_module / kernel_target several times a call: NumPy arrays (and None)
    need no CuPy import nor isinstance check against cupy.ndarray; anything else still asks."""
    def no_lookup():
        raise AssertionError("cupy_module() asked for NumPy arrays")
    monkeypatch.setattr(B, "cupy_module", no_lookup)
    x = np.ones((2, 3))
    assert B.get_array_module(x, None, x.T, names=("x", "b", "w")) is np
    with gpuconv.default_device("cpu"):
        assert B.kernel_target(x, None, x) is None
    with gpuconv.default_device("sim"):
        assert B.kernel_target(x, None) == "sim"
    with pytest.raises(AssertionError, match="cupy_module"):  # a scalar among them: the full check
        B.get_array_module(x, 3)


class _FakeCupyArray:
    def __init__(self, gpu=0):
        self.data = type("FakeMemoryPointer", (), {"device_id": gpu})()  # what cupy's a.device.id reads


def test_mixing_numpy_and_cupy_is_a_type_error(monkeypatch):
    monkeypatch.setattr(B, "is_cupy_array", lambda a: isinstance(a, _FakeCupyArray))
    monkeypatch.setattr(B, "cupy_module", lambda: "cupy")
    with pytest.raises(gpuconv.DeviceMismatchError, match=r"argument 0 is a numpy.ndarray \(host\) and argument 2 is "
                                                          r"a cupy.ndarray \(GPU\): put both on one device first"):
        B.get_array_module(np.ones(1), None, _FakeCupyArray())
    assert issubclass(gpuconv.DeviceMismatchError, TypeError)  # what callers caught before it had a name
    assert B.get_array_module(_FakeCupyArray(1), _FakeCupyArray(1)) == "cupy"
    with pytest.raises(gpuconv.DeviceMismatchError, match=r"argument 0 is on cuda:0 and argument 1 on cuda:1: put "
                                                          r"both on one GPU first, e.g. gpuconv.to_device\(x, 'cuda:0'\)"):
        B.get_array_module(_FakeCupyArray(0), _FakeCupyArray(1))


def test_cupy_arrays_are_told_with_one_module_lookup_and_their_gpus_read_once(monkeypatch):
    """get_array_module over several CuPy arrays looks the module up once (not again per array
    through is_cupy_array) and reads each array's GPU once; array_device_context too (its Device from
    the module looked up). A predicate a test stands in for is_cupy_array is still the one asked."""
    class FakeArray:
        def __init__(self, gpu=0):
            self.gpu = gpu

    made = []
    fake = types.SimpleNamespace(ndarray=FakeArray, cuda=types.SimpleNamespace(Device=lambda i: made.append(i) or i))
    lookups, ids = [], []
    monkeypatch.setattr(B, "cupy_module", lambda: lookups.append(1) or fake)
    monkeypatch.setattr(B, "device_id", lambda a: ids.append(a) or a.gpu)
    arrays = [FakeArray(), FakeArray(), FakeArray()]
    assert B.get_array_module(*arrays, None, 2.0) is fake
    assert len(lookups) == 1 and len(ids) == len(arrays)
    with pytest.raises(gpuconv.DeviceMismatchError, match="argument 0 is on cuda:0 and argument 1 on cuda:1"):
        B.get_array_module(FakeArray(0), FakeArray(1))
    lookups.clear()
    assert B.array_device_context((np.zeros(1), FakeArray(1))) == 1 and made == [1] and len(lookups) == 1
    monkeypatch.setattr(B, "is_cupy_array", lambda a: False)  # a test's own predicate decides
    assert B.get_array_module(*arrays) is np


class _OnGpu(np.ndarray):
    """A NumPy array the backend takes for a CuPy one (with is_cupy_array patched): one argument of
    an op 'on the GPU' while the others stay on the host."""


def _gpu(a):
    return np.asarray(a).view(_OnGpu)


_X = np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)
_W, _B, _LW = np.ones((3, 4, 3, 3), np.float32), np.ones(3, np.float32), np.ones((5, 144), np.float32)
_C4 = np.ones(4, np.float32)
_LOGITS, _LABELS = np.ones((3, 4), np.float32), np.array([0, 1, 2])
# Each array argument of each op (a backward's dy against the arrays its cache holds) in turn on
# the other device: make(ops) runs the forwards a backward needs, on the host, and returns the call.
MIXED_DEVICE_CALLS = {
    "conv2d w": lambda o: lambda: o.conv2d_forward(_X, _gpu(_W), _B, 1, 1),
    "conv2d b": lambda o: lambda: o.conv2d_forward(_X, _W, _gpu(_B), 1, 1),
    "conv2d dy": lambda o: (lambda c: lambda: o.conv2d_backward(_gpu(np.ones((2, 3, 6, 6), np.float32)), c))(
        o.conv2d_forward(_X, _W, _B, 1, 1)[1]),
    "linear w": lambda o: lambda: o.linear_forward(_X, _gpu(_LW), None),
    "linear b": lambda o: lambda: o.linear_forward(_X, _LW, _gpu(np.ones(5, np.float32))),
    "linear dy": lambda o: (lambda c: lambda: o.linear_backward(_gpu(np.ones((2, 5), np.float32)), c))(
        o.linear_forward(_X, _LW, None)[1]),
    "batchnorm gamma": lambda o: lambda: o.batchnorm2d_forward(_X, _gpu(_C4), _C4 * 0, None, None),
    "batchnorm beta": lambda o: lambda: o.batchnorm2d_forward(_X, _C4, _gpu(_C4 * 0), None, None),
    "batchnorm running_mean": lambda o: lambda: o.batchnorm2d_forward(_X, _C4, _C4 * 0, _gpu(_C4 * 0), _C4.copy()),
    "batchnorm running_var": lambda o: lambda: o.batchnorm2d_forward(_X, _C4, _C4 * 0, _C4 * 0, _gpu(_C4.copy())),
    "batchnorm dy": lambda o: (lambda c: lambda: o.batchnorm2d_backward(_gpu(_X), c))(
        o.batchnorm2d_forward(_X, _C4, _C4 * 0, None, None)[1]),
    "loss labels": lambda o: lambda: o.softmax_cross_entropy(_LOGITS, _gpu(_LABELS)),
    "loss weight": lambda o: lambda: o.softmax_cross_entropy(_LOGITS, _LABELS, weight=_gpu(_C4)),
    "loss grad_scale": lambda o: lambda: o.softmax_cross_entropy(_LOGITS, _LABELS, grad_scale=_gpu(np.float32(2))),
    "relu dy": lambda o: (lambda c: lambda: o.relu_backward(_gpu(_X), c))(o.relu_forward(_X)[1]),
    "gelu dy": lambda o: (lambda c: lambda: o.gelu_backward(_gpu(_X), c))(o.gelu_forward(_X)[1]),
    "leaky_relu dy": lambda o: (lambda c: lambda: o.leaky_relu_backward(_gpu(_X), c))(o.leaky_relu_forward(_X)[1]),
    "sigmoid dy": lambda o: (lambda c: lambda: o.sigmoid_backward(_gpu(_X), c))(o.sigmoid_forward(_X)[1]),
    "tanh dy": lambda o: (lambda c: lambda: o.tanh_backward(_gpu(_X), c))(o.tanh_forward(_X)[1]),
    "silu dy": lambda o: (lambda c: lambda: o.silu_backward(_gpu(_X), c))(o.silu_forward(_X)[1]),
    "dropout dy": lambda o: (lambda c: lambda: o.dropout_backward(_gpu(_X), c))(o.dropout_forward(_X, 0.5, key=1)[1]),
    "max_pool2d dy": lambda o: (lambda c: lambda: o.max_pool2d_backward(_gpu(np.ones((2, 4, 3, 3), np.float32)), c))(
        o.max_pool2d_forward(_X, 2)[1]),
    "lp_pool2d dy": lambda o: (lambda c: lambda: o.lp_pool2d_backward(_gpu(np.ones((2, 4, 3, 3), np.float32)), c))(
        o.lp_pool2d_forward(np.abs(_X), 2, 2)[1]),
    "adaptive_max_pool2d dy": lambda o: (
        lambda c: lambda: o.adaptive_max_pool2d_backward(_gpu(np.ones((2, 4, 4, 4), np.float32)), c))(
        o.adaptive_max_pool2d_forward(_X, 4)[1]),
}

# The arrays each call's DeviceMismatchError names: (the host one, the one 'on the GPU'),
# the cache's as the backward's caller knows them.
MIXED_DEVICE_NAMES = {
    "conv2d w": ("x", "w"),
    "conv2d b": ("x", "b"),
    "conv2d dy": ("the forward's x (in the cache)", "dy"),
    "linear w": ("x", "w"),
    "linear b": ("x", "b"),
    "linear dy": ("the forward's x (in the cache)", "dy"),
    "batchnorm gamma": ("x", "gamma"),
    "batchnorm beta": ("x", "beta"),
    "batchnorm running_mean": ("x", "running_mean"),
    "batchnorm running_var": ("x", "running_var"),
    "batchnorm dy": ("the forward's x (in the cache)", "dy"),
    "loss labels": ("logits", "labels"),
    "loss weight": ("logits", "weight"),
    "loss grad_scale": ("logits", "grad_scale"),
    "relu dy": ("the forward's x (in the cache)", "dy"),
    "gelu dy": ("the forward's x (in the cache)", "dy"),
    "leaky_relu dy": ("the forward's x (in the cache)", "dy"),
    "sigmoid dy": ("the forward's y (in the cache)", "dy"),
    "tanh dy": ("the forward's y (in the cache)", "dy"),
    "silu dy": ("the forward's x (in the cache)", "dy"),
    "dropout dy": ("the forward's mask (in the cache)", "dy"),
    "max_pool2d dy": ("the forward's argmax (in the cache)", "dy"),
    "lp_pool2d dy": ("the forward's x (in the cache)", "dy"),
    "adaptive_max_pool2d dy": ("the forward's argmax (in the cache)", "dy"),
}


@pytest.mark.parametrize("device", ["cpu", "sim"])
@pytest.mark.parametrize("call", list(MIXED_DEVICE_CALLS))
def test_every_op_refuses_arrays_on_two_devices(monkeypatch, call, device):
    """Every array an op reads (its parameters, batch norm's running statistics, the loss's labels,
    class weights and loss scale, a backward's dy against its cache) is in its device check: one on
    the GPU beside host arrays is a DeviceMismatchError naming both arrays as the caller knows them
    and saying how to move one, before any work, whether the host arrays would have run the
    reference ('cpu') or the kernels ('sim')."""
    from gpuconv import ops
    with gpuconv.default_device(device):
        mixed = MIXED_DEVICE_CALLS[call](ops)
        monkeypatch.setattr(B, "is_cupy_array", lambda a: isinstance(a, _OnGpu))
        monkeypatch.setattr(B, "cupy_module", lambda: "cupy")
        host, gpu = MIXED_DEVICE_NAMES[call]
        with pytest.raises(gpuconv.DeviceMismatchError) as info:
            mixed()
    assert str(info.value).startswith(f"{host} is a numpy.ndarray (host) and {gpu} is a cupy.ndarray (GPU): put both "
                                      "on one device first, e.g. gpuconv.to_device("), str(info.value)


@pytest.mark.gpu
@pytest.mark.skipif(not B.cuda_available(), reason=f"no GPU: {B.cuda_status()}")
def test_mixing_real_arrays_on_gpu():
    cp = B.cupy_module()
    with pytest.raises(TypeError, match="numpy.ndarray"):
        B.get_array_module(cp.ones(1), np.ones(1))
    assert B.get_array_module(cp.ones(1)) is cp


# ---------------------------------------------------------------- default device
def test_default_device_context_nests_and_restores():
    before = B.get_default_device()
    with gpuconv.default_device("sim") as d:
        assert d == B.Device("sim") and B.get_default_device() == d
        with gpuconv.default_device("cpu"):
            assert B.get_default_device().kind == "cpu"
        assert B.get_default_device().kind == "sim"
    assert B.get_default_device() == before


def test_default_device_restored_after_an_exception():
    before = B.get_default_device()
    with pytest.raises(KeyError):
        with gpuconv.default_device("sim"):
            raise KeyError("boom")
    assert B.get_default_device() == before


@pytest.mark.parametrize("env, kind", [(None, "cpu"), ("", "cpu"), ("sim", "sim"), ("cpu", "cpu")])
def test_default_device_from_environment(monkeypatch, env, kind):
    if env is None:
        monkeypatch.delenv("GPUCONV_DEVICE", raising=False)
    else:
        monkeypatch.setenv("GPUCONV_DEVICE", env)
    assert fresh(B.get_default_device).kind == kind


def test_bad_environment_variable_is_named(monkeypatch):
    monkeypatch.setenv("GPUCONV_DEVICE", "gpu0")
    with pytest.raises(ValueError, match=r"environment variable GPUCONV_DEVICE: device 'gpu0' is not understood"):
        fresh(B.get_default_device)


def test_a_gpu_named_by_the_environment_without_one_names_the_variable(monkeypatch):
    """GPUCONV_DEVICE=cuda on a machine without a usable GPU: the error says to change the variable
    (no device= argument was given that could be changed)."""
    monkeypatch.setattr(B, "cuda_available", lambda: False)
    monkeypatch.setattr(B, "cuda_status", lambda: "no NVIDIA GPU driver found")
    monkeypatch.setenv("GPUCONV_DEVICE", "cuda:1")
    with pytest.raises(RuntimeError, match=r"GPUCONV_DEVICE=cuda:1 makes cuda:1 the default device, but no NVIDIA "
                                           r"GPU driver found\. Set GPUCONV_DEVICE=cpu .* or unset it"):
        fresh(B.get_default_device)


def test_set_default_device_in_its_own_context():
    def body():
        B.set_default_device("sim")
        return B.get_default_device()
    assert fresh(body) == B.Device("sim")


def test_kernel_target_follows_default_device():
    x = np.ones(3)
    with gpuconv.default_device("cpu"):
        assert B.kernel_target(x) is None
    with gpuconv.default_device("sim"):
        assert B.kernel_target(x, None) == "sim"


# ---------------------------------------------------------------- transfers
def test_readbacks_are_counted_on_sim_only():
    x = np.arange(4.0)
    with gpuconv.default_device("cpu"):
        B.transfers.reset()
        B.asnumpy(x)
        assert B.item(x[1:2]) == 1.0
        assert (B.transfers.device_to_host, B.transfers.host_to_device) == (0, 0)
    with gpuconv.default_device("sim"):
        B.transfers.reset()
        assert B.asnumpy(x) is not None
        assert B.item(np.array(2.5)) == 2.5
        assert B.transfers.device_to_host == 2
        assert B.asnumpy(None) is None and B.item(3) == 3.0  # nothing to read back
        assert B.transfers.device_to_host == 2
        B.transfers.reset()
        assert B.transfers.device_to_host == 0


def test_to_device_on_host_and_device_of():
    with gpuconv.default_device("cpu"):
        B.transfers.reset()
        a = B.to_device([1.0, 2.0])
        assert isinstance(a, np.ndarray) and a.tolist() == [1.0, 2.0]
        assert B.transfers.host_to_device == 0
        # 'sim' is a default-device mode: asked for under another default, its ops would run NumPy's
        with pytest.raises(RuntimeError, match=r"device 'sim' was asked for while the default device is .*cpu"):
            B.to_device(a, "sim")
        with pytest.raises(RuntimeError, match="set_default_device"):
            Linear(2, 2).to("sim")
    with gpuconv.default_device("sim"):
        assert B.to_device(a, "sim") is a
    assert B.device_of(np.ones(1)) == B.Device("cpu")
    B.synchronize()  # a no-op without a GPU; must not raise
    B.synchronize(np.ones(1))


def test_synchronize_waits_for_every_stream_of_the_arrays_gpu(monkeypatch):
    """synchronize waits for the whole device (cudaDeviceSynchronize), not the legacy default
    stream alone, whose wait leaves out non-blocking streams; an array's own GPU, not the current
    one. CuPy is faked."""
    waited = []

    class Device:
        def __init__(self, i=None):
            self.i = 0 if i is None else i

        def synchronize(self):
            waited.append(("device", self.i))

    class FakeArray(np.ndarray):
        pass

    stream = types.SimpleNamespace(null=types.SimpleNamespace(synchronize=lambda: waited.append(("null stream",))))
    fake = types.SimpleNamespace(ndarray=FakeArray, cuda=types.SimpleNamespace(Device=Device, Stream=stream))
    monkeypatch.setattr(B, "_import_cupy", lambda: (fake, None))
    monkeypatch.setattr(B, "cuda_available", lambda: True)
    monkeypatch.setattr(B, "device_id", lambda a: 3)
    B.synchronize()
    B.synchronize(np.ones(2).view(FakeArray))
    B.synchronize(np.ones(2))  # NumPy: nothing to wait for
    assert waited == [("device", 0), ("device", 3)]


def test_host_copy_and_copy_like_never_alias():
    """The state-dict helpers: a saved copy must not change with the live array, and a loaded
    value takes the live array's dtype as a fresh array."""
    live = np.arange(3, dtype=np.float32)
    saved = B.host_copy(live)
    live += 1
    assert saved.tolist() == [0.0, 1.0, 2.0] and saved.dtype == np.float32
    loaded = B.copy_like(saved, np.zeros(3, np.float64))
    assert loaded.dtype == np.float64 and loaded.tolist() == [0.0, 1.0, 2.0]
    assert not np.shares_memory(loaded, saved)
    same = B.copy_like(saved, np.zeros(3, np.float32))
    assert same.dtype == np.float32 and not np.shares_memory(same, saved)


@pytest.mark.gpu
@pytest.mark.skipif(not B.cuda_available(), reason=f"no GPU: {B.cuda_status()}")
def test_round_trip_to_gpu_is_counted():
    B.transfers.reset()
    g = B.to_device(np.arange(3.0), "cuda")
    assert B.is_cupy_array(g) and B.device_of(g).is_cuda
    assert B.transfers.host_to_device == 1
    assert B.asnumpy(g).tolist() == [0.0, 1.0, 2.0]
    assert B.transfers.device_to_host == 1


def test_cuda_default_device_becomes_cupys_current_device_and_is_restored(monkeypatch):
    """CuPy allocates on its current device: 'cuda:1' as the default must make GPU 1 current
    (else optimizer state and losses land on GPU 0), and leaving the block restores GPU 0."""
    import types

    current = {"id": 0}

    class FakeDevice:
        def __init__(self, index=None):
            self.id = current["id"] if index is None else index

        def use(self):
            current["id"] = self.id

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=FakeDevice))
    monkeypatch.setattr(B, "require_cupy", lambda: fake)
    with B.default_device("cuda:1") as dev:
        assert str(dev) == "cuda:1" and current["id"] == 1
        with B.default_device("cpu"):
            assert current["id"] == 1  # a CPU block leaves CuPy's device alone
    assert current["id"] == 0


@NO_GPU
def test_the_gpu_suite_cannot_pass_by_skipping(tmp_path):
    """Under GPUCONV_REQUIRE_GPU=1 (the GPU battery) a GPU test that skips is a failure, so an
    unusable CUDA fails the run instead of passing it with every cupy case skipped."""
    import subprocess
    import sys
    repo = pathlib.Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
           "tests/test_relu.py::test_hand_values"]
    env = dict(os.environ, GPUCONV_REQUIRE_GPU="1")
    strict = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert strict.returncode != 0 and "this GPU test skipped instead of running" in strict.stdout
    env["GPUCONV_REQUIRE_GPU"] = "0"
    lenient = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert lenient.returncode == 0 and "1 skipped" in lenient.stdout


def test_submodules_are_attributes_imported_at_first_use():
    """``import gpuconv; gpuconv.nn.Conv2d`` as ``torch.nn``; ``import gpuconv`` alone imports none of them."""
    import subprocess
    import sys
    code = ("import sys, gpuconv; assert 'gpuconv.trainer' not in sys.modules and 'gpuconv.layers' not in sys.modules; "
            "from gpuconv.layers import Conv2d; assert gpuconv.nn.Conv2d is Conv2d and gpuconv.optim.SGD and gpuconv.amp\n"
            "try:\n    gpuconv.nope\nexcept AttributeError as e:\n    assert \"no attribute 'nope'\" in str(e)\n"
            "else:\n    raise SystemExit('gpuconv.nope did not raise')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=pathlib.Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr


def test_every_top_level_entry_point_has_a_docstring():
    """``help(gpuconv.set_default_device)`` and the rest of ``gpuconv.__all__`` say what they do."""
    import inspect
    undocumented = [name for name in gpuconv.__all__
                    if callable(getattr(gpuconv, name)) and getattr(gpuconv, name).__module__.startswith("gpuconv")
                    and not inspect.getdoc(getattr(gpuconv, name))]
    assert undocumented == []
    assert "'auto'" in inspect.getdoc(gpuconv.set_default_device)


@pytest.mark.parametrize("shape", [(2,), (1, 3), (0,)])
def test_item_refuses_arrays_of_other_than_one_element(shape):
    # A (2,) array used to give its first element, as if it were the number asked for.
    with pytest.raises(ValueError, match=r"reads one number.*elements"):
        B.item(np.ones(shape))
    assert B.item(np.ones((1, 1))) == 1.0


def test_copy_like_copies_onto_the_live_arrays_gpu(monkeypatch):
    """CuPy's astype makes its copy on the current device: a state loaded into a model on cuda:1
    while cuda:0 was current (load_state_dict outside default_device('cuda:1')) came back on GPU 0,
    or failed there. The copy is made with the live array's GPU current. CuPy is faked: the arrays
    'on cuda:1' are a NumPy subclass whose astype records the current device."""
    from conftest import fake_cupy_second_gpu
    made_on = []

    class OnGpu(np.ndarray):
        def astype(self, dtype, *args, **kwargs):
            made_on.append(current[0])
            return np.asarray(self).astype(dtype, *args, **kwargs).view(OnGpu)

    _, current = fake_cupy_second_gpu(monkeypatch, OnGpu)
    monkeypatch.setattr(B, "cuda_available", lambda: True)
    live = np.zeros(3, np.float32).view(OnGpu)
    loaded = B.copy_like(np.arange(3, dtype=np.float32).view(OnGpu), live)
    assert made_on == [1] and current == [0]
    assert type(loaded) is OnGpu and loaded.tolist() == [0.0, 1.0, 2.0]


def test_a_gpu_index_past_the_visible_ones_is_named(monkeypatch):
    """'cuda:3' on a machine showing CuPy one GPU failed with CuPy's bare 'invalid device ordinal';
    the error names the device, the GPUs there are and CUDA_VISIBLE_DEVICES' renumbering."""
    used = []

    class FakeDevice:
        def __init__(self, index=None):
            self.id = 0 if index is None else index

        def use(self):
            used.append(self.id)

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=FakeDevice,
                                                            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1)))
    monkeypatch.setattr(B, "require_cupy", lambda: fake)
    with pytest.raises(ValueError, match=r"device 'cuda:3': CuPy sees 1 CUDA device\(s\), cuda:0 to cuda:0; .*"
                                         r"CUDA_VISIBLE_DEVICES"):
        B.set_default_device("cuda:3")
    with B.default_device("cuda:0"):
        assert used == [0]
