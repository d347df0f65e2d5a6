"""CuPy faked on the CPU for the 'cupy' cases of the suite (GPUCONV_FAKE_CUPY=1, tests/conftest.py): a
stand-in that finds a test's own faults, and those of the ops' Python path on 'cuda', before a GPU
runs them. It is no GPU run: the kernels run on the host simulator, and what a NumPy subclass
cannot show of CuPy (below) passes or fails here alone."""
from __future__ import annotations

import sys

import numpy as np

from conftest import FakeSecondGpu
from gpuconv import backend as B

FAKE_CUPY_STATUS = "CuPy faked on the CPU (GPUCONV_FAKE_CUPY=1): not a GPU"
# CuPy's functions whose new array follows its input's memory order (order='K'); its others make C-ordered ones
_K_ORDER = {"empty_like", "zeros_like", "ones_like", "full_like", "copy", "array", "asarray", "asanyarray"}
# modules that may read a fake CuPy array as NumPy's: NumPy's own, the launch on the simulator, the fake
_SIMULATOR = ("numpy", "gpuconv.kernels", "gpuconv.hostsim", "conftest", "fake_cupy", "test_layout")


def install_fake_cupy(monkeypatch):
    """The 'cupy' backend on the CPU: :class:`FakeSecondGpu`'s arrays (NumPy subclasses) as CuPy
    arrays on cuda:0 (the current GPU), with CuPy's ufunc results (C-contiguous) and every kernel
    launch on 'cuda' run on the simulator (test_layout._fake_gpu_kernels_on_the_simulator), and as
    much of CuPy's strictness as a NumPy subclass can show: a ufunc or a NumPy function given a
    fake CuPy array and a NumPy one is a TypeError (CuPy takes no NumPy array in a kernel); a NumPy
    function reaches CuPy's of its name only where CuPy has one (``__array_function__``), and the
    fake module offers only the names CuPy 14 has; ``np.asarray`` (``np.array``, ...) of a fake CuPy
    array called from gpuconv's ops or a test, and the np.testing comparisons given one, are refused
    (CuPy's ``__array__`` refuses an implicit conversion), as are the ndarray attributes CuPy's lacks
    (``ctypes``, ``resize``, ``setflags``, ...). ``isinstance(a, np.ndarray)`` still holds
    here, and CuPy-only APIs the fake lacks (streams, raw kernels, memory pools) fail here alone.
    Returns the FakeSecondGpu."""
    import functools
    import types

    import cupy as real_cupy  # (importable without a GPU: its names and dispatch, not its kernels)
    from test_layout import _fake_gpu_kernels_on_the_simulator
    gpu = FakeSecondGpu(monkeypatch)
    _fake_gpu_kernels_on_the_simulator(gpu, monkeypatch)
    OnGpu, current = gpu.OnGpu, gpu.current
    monkeypatch.setattr(B, "device_id", lambda a: 0)
    monkeypatch.setattr(OnGpu, "data", property(
        lambda a: type("MemoryPointer", (), {"ptr": a.__array_interface__["data"][0], "device_id": 0})()))
    monkeypatch.setattr(B, "_cuda_probe", lambda: (True, FAKE_CUPY_STATUS))

    def host(a):
        return np.array(a.view(np.ndarray) if isinstance(a, np.ndarray) else a)

    def plain(a):  # a NumPy array that is not a fake CuPy one
        return isinstance(a, np.ndarray) and not isinstance(a, OnGpu)

    def on_gpu(out):
        if isinstance(out, (tuple, list)):
            return type(out)(on_gpu(o) for o in out)
        return out.view(OnGpu) if isinstance(out, np.ndarray) and not isinstance(out, OnGpu) else out

    getitem = OnGpu.__getitem__
    monkeypatch.setattr(OnGpu, "__getitem__", lambda a, key: on_gpu(  # one element: a 0-d array, as CuPy's
        np.asarray(r) if isinstance(r := getitem(a, key), np.generic) else r))
    monkeypatch.setattr(OnGpu, "__reduce__", lambda a: (fake_cupy_array, (host(a),)), raising=False)
    OnGpu.__name__ = "ndarray"  # (type(a).__name__ in messages: cupy.ndarray's; the class is this test's own)
    monkeypatch.setattr(OnGpu, "get", lambda a, stream=None, order="C", out=None, blocking=True: host(a),
                        raising=False)
    ufunc = OnGpu.__array_ufunc__

    def array_ufunc(self, uf, method, *inputs, out=None, **kwargs):
        if any(plain(a) for a in inputs + tuple(out or ())):
            raise TypeError(f"Unsupported type {np.ndarray} (fake CuPy: a NumPy array in CuPy's {uf.__name__})")
        result = ufunc(self, uf, method, *inputs, out=out, **kwargs)
        if out is None and method in ("reduce", "accumulate") and getattr(result, "ndim", 0) > 1:
            result = np.ascontiguousarray(result.view(np.ndarray)).view(OnGpu)  # (CuPy's reductions: C-ordered)
        return result

    def array_function(self, func, types_, args, kwargs):
        try:  # CuPy's own lookup (cupy/_core/core.pyx __array_function__)
            cupy_func = getattr(functools.reduce(getattr, func.__module__.split(".")[1:], real_cupy), func.__name__)
        except AttributeError:
            return NotImplemented
        flat = [a for arg in args for a in (arg if isinstance(arg, (tuple, list)) else (arg,))]
        if any(plain(a) for a in flat):
            raise TypeError(f"fake CuPy: a NumPy array passed to cupy.{func.__name__} by numpy.{func.__name__}")
        del cupy_func
        out = func(*unwrap(args), **unwrap(kwargs))  # (NumPy's, on plain views: no dispatch inside)
        if func.__name__ not in _K_ORDER and isinstance(out, np.ndarray) and out.ndim > 1 and not any(
                isinstance(a, np.ndarray) and np.may_share_memory(out, unwrap(a)) for a in flat):
            out = np.ascontiguousarray(out)  # a new array of CuPy's: C-ordered (NumPy's concatenate, where keep
        return on_gpu(out)                   # a channels_last input's layout)

    def unwrap(a):
        if isinstance(a, dict):
            return {k: unwrap(v) for k, v in a.items()}
        if isinstance(a, (tuple, list)):
            return type(a)(unwrap(v) for v in a)
        return a.view(np.ndarray) if isinstance(a, OnGpu) else a

    monkeypatch.setattr(OnGpu, "__array_ufunc__", array_ufunc)
    monkeypatch.setattr(OnGpu, "__array_function__", array_function, raising=False)

    def refusing(check):
        def f(*args, **kwargs):
            if any(isinstance(a, OnGpu) for a in args[:2]):
                raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
                                "construct a NumPy array explicitly. (fake CuPy: np.testing given a CuPy array)")
            return check(*args, **kwargs)
        return f

    for name in ("assert_allclose", "assert_array_equal", "assert_array_almost_equal", "assert_equal",
                 "assert_array_less", "assert_almost_equal", "assert_array_max_ulp"):
        monkeypatch.setattr(np.testing, name, refusing(getattr(np.testing, name)))

    def converting(convert):  # CuPy's __array__ refusal, to gpuconv's ops and the tests (not the simulator's launch)
        def f(a, *args, **kwargs):
            if isinstance(a, OnGpu):
                caller = sys._getframe(1).f_globals.get("__name__", "")
                if not caller.startswith(_SIMULATOR):
                    raise TypeError(f"Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
                                    f"construct a NumPy array explicitly. (fake CuPy: numpy.{convert.__name__} of a "
                                    f"CuPy array in {caller})")
            return convert(a, *args, **kwargs)
        return f

    for name in ("asarray", "asanyarray", "array", "ascontiguousarray", "asfortranarray"):
        monkeypatch.setattr(np, name, converting(getattr(np, name)))

    def numpy_only(name):  # an ndarray attribute cupy.ndarray lacks, to gpuconv's ops and the tests
        def get(a):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if not caller.startswith(_SIMULATOR):
                raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r} (fake CuPy, in {caller})")
            return getattr(a.view(np.ndarray), name)
        return property(get)

    for name in ("ctypes", "getfield", "resize", "setfield", "setflags", "to_device"):
        setattr(OnGpu, name, numpy_only(name))  # (the class is this test's own)

    class Device:
        def __init__(self, i=None):
            self.id = current[0] if i is None else int(i)

        def use(self):
            current[0] = self.id

        def synchronize(self):
            pass

        def __enter__(self):
            self.prev, current[0] = current[0], self.id
            return self

        def __exit__(self, *exc):
            current[0] = self.prev

    # device arrays a launcher keeps from call to call start empty: one test's fake arrays (its own
    # class) would be plain NumPy arrays to the next test's
    from gpuconv.ops import _launch_conv2d_tc
    monkeypatch.setattr(_launch_conv2d_tc, "_TAP_ORDERS", {})
    module = B._import_cupy()[0]
    module.cuda = types.SimpleNamespace(Device=Device, runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    module.__version__ = "fake"
    module.asnumpy = lambda a, stream=None, order="C", out=None, blocking=True: (
        host(a) if isinstance(a, np.ndarray) else np.asarray(a))

    def asarray(a, dtype=None, order=None, *, blocking=False):  # a host array copied, a GPU one kept
        if isinstance(a, OnGpu) and (dtype is None or np.dtype(dtype) == a.dtype) and order is None:
            return a
        return np.array(a.view(np.ndarray) if isinstance(a, np.ndarray) else a, dtype=dtype,
                        order=order or "K").view(OnGpu)

    module.asarray = asarray
    module.array = lambda a, dtype=None, copy=True, order="K", **kw: asarray(np.array(
        a.view(np.ndarray) if isinstance(a, np.ndarray) else a, dtype=dtype, order=order))
    module.get_array_module = lambda *arrays: module if any(isinstance(a, OnGpu) for a in arrays) else np
    numpy_name = type(module).__getattr__

    def getattr_(self, name):  # only CuPy's names; its dtypes and constants as NumPy's
        if not hasattr(real_cupy, name):
            raise AttributeError(f"module 'cupy' has no attribute {name!r} (fake CuPy)")
        if not hasattr(np, name):
            raise AttributeError(f"cupy.{name} is CuPy's own: the fake has none")
        value = getattr(np, name)
        if isinstance(value, types.ModuleType):
            return Namespace(value, getattr(real_cupy, name))
        if isinstance(value, type) or not callable(value):
            return value
        return numpy_name(self, name)

    class Namespace:  # a submodule (cupy.lib.stride_tricks, cupy.linalg): NumPy's functions of CuPy's names
        def __init__(self, np_module, cupy_module):
            self.np_module, self.cupy_module = np_module, cupy_module

        def __getattr__(self, name):
            if not hasattr(self.cupy_module, name):
                raise AttributeError(f"module {self.cupy_module.__name__!r} has no attribute {name!r} (fake CuPy)")
            if not hasattr(self.np_module, name):
                raise AttributeError(f"{self.cupy_module.__name__}.{name} is CuPy's own: the fake has none")
            value = getattr(self.np_module, name)
            if isinstance(value, types.ModuleType):
                return Namespace(value, getattr(self.cupy_module, name))
            if isinstance(value, type) or not callable(value):
                return value
            return lambda *args, **kwargs: on_gpu(value(*unwrap(args), **unwrap(kwargs)))

    monkeypatch.setattr(type(module), "__getattr__", getattr_)
    return gpu


def fake_cupy_array(host):
    """A pickled fake CuPy array unpickled: on the fake GPU again."""
    return np.array(host).view(B.cupy_module().ndarray)
