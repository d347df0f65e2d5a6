"""One CS231n function call: its dtype (NumPy's promotion), its device, its cache.

Every layer function opens a :class:`Call` on its array arguments. The call picks the compute
dtype as NumPy would (``np.result_type`` of the arrays; integer and bool arrays count as
float64, as NumPy's arithmetic with floats makes them), casts every array to it (gpuconv.ops
take one dtype per op, strictly), and decides where the work runs:

- no device set (``use_device('cpu')``): where the arrays are, results stay there;
- a device set and NumPy arguments: arrays are copied to the device (parameters through the
  store), the ops run there, results come back as NumPy arrays;
- inside another call (the ``layer_utils`` sandwiches): on that call's device, with nothing
  copied back until the outer call returns.
"""
from __future__ import annotations

import contextvars

import numpy as np

from . import _device

_inner: contextvars.ContextVar = contextvars.ContextVar("cs231n_inner_device", default=None)
_CURRENT = object()


def promote(*items):
    """NumPy's result dtype of the arrays (and dtypes) given, as a floating type in the machine's
    byte order (as NumPy's arithmetic gives it: a '>f8' array read from a big-endian file computes)."""
    dt = None
    for a in items:  # the common case first: NumPy arrays (and dtypes) of one native float dtype
        if a is None:
            continue
        d = a.dtype if type(a) is np.ndarray else a if isinstance(a, np.dtype) else None
        if d is None or (dt is not None and d is not dt):
            break
        dt = d
    else:
        if dt is not None and dt.kind == "f" and dt.isnative:
            return dt
    for a in items:
        if not (a is None or isinstance(a, (int, float, bool, np.dtype, type))
                or isinstance(getattr(a, "dtype", None), np.dtype)):
            not_an_array(a)
    dtypes = [np.dtype(a) if isinstance(a, (np.dtype, type)) else a.dtype for a in items
              if a is not None and not isinstance(a, (int, float, bool))]
    if all(d == dtypes[0] for d in dtypes) and dtypes[0].kind not in "biucOSUM":
        # one float dtype: kept (bfloat16, whose kind is 'V', included), in native byte order
        return dtypes[0] if dtypes[0].isnative else dtypes[0].newbyteorder("=")
    dt = np.result_type(*dtypes)
    if dt.kind in "biu":
        dt = np.result_type(dt, np.float64)
    if dt.kind != "f":
        raise TypeError(f"the CS231n functions compute on real numbers; got arrays of dtypes "
                        f"{sorted({str(d) for d in dtypes})}: cast them with .astype(np.float64)")
    return dt


def is_array(a) -> bool:
    """Whether ``a`` is a NumPy or CuPy array (anything with a NumPy dtype and a shape)."""
    return type(a) is np.ndarray or (isinstance(getattr(a, "dtype", None), np.dtype) and hasattr(a, "shape")
                                     and not isinstance(a, np.generic))


def check_arrays(**named):
    """Each of ``named`` (None skipped) is an array: a list of numbers, a Python or NumPy scalar or a
    PyTorch tensor is a TypeError naming it, before a shape or dtype of it is read."""
    for name, a in named.items():
        if a is not None and not is_array(a):
            not_an_array(a, name)


def not_an_array(a, name=None):
    """A TypeError for ``a``, given where the CS231n functions take an array (a list of numbers, a
    scalar, a PyTorch tensor), naming ``name`` where the caller knows it."""
    what = f"{name} must be a NumPy (or CuPy) array" if name else "the CS231n functions take NumPy (or CuPy) arrays"
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch.Tensor
        fix = f"convert it first, e.g. {name or 'x'}.detach().cpu().numpy()"
    else:
        fix = f"wrap it first, e.g. np.asarray({name or 'x'}, dtype=np.float64)"
    kind = type(a).__name__ if type(a).__module__ == "builtins" else f"{type(a).__module__}.{type(a).__name__}"
    raise TypeError(f"{what}, got {kind}: {fix}")


def cache_items(cache, forward, items):
    """``cache`` (what ``forward`` returned as its second value: a tuple of ``items``, names joined
    by ', ') as a tuple of at least that many items; else a TypeError naming what it should be (a
    backward given another layer's cache, or None, would fail inside, unpacking it)."""
    n = items.count(",") + 1
    if not isinstance(cache, tuple) or len(cache) < n:
        got = f"a {len(cache)}-tuple" if isinstance(cache, tuple) else type(cache).__name__
        raise TypeError(f"cache must be what {forward} returned as its second value, ({items}), got {got}: "
                        f"call out, cache = {forward}(...) and pass that cache")
    return cache


class Call:
    """``with Call(x, w, b) as c:`` then ``c.arg(x)``, ``c.param(w)``, ``c.out(y)``, ``c.cache(...)``.

    ``device`` pins where a backward runs (its forward's device, from the cache); ``dtype`` is a
    floor for the promotion."""

    __slots__ = ("dtype", "device", "host_io", "inner", "_ctx", "_token")

    def __init__(self, *arrays, dtype=None, device=_CURRENT):
        self.dtype = promote(*arrays) if dtype is None else promote(*arrays, dtype)  # (None is skipped)
        inner = _inner.get()
        if inner is not None:
            self.device, self.host_io, self.inner = inner, False, True
        else:
            mode = _device._mode if device is _CURRENT else device  # (current_device(), without the call)
            self.host_io = mode is not None and isinstance(next(a for a in arrays if a is not None), np.ndarray)
            self.device = mode if self.host_io else None
            self.inner = False
        self._ctx = self._token = None

    def __enter__(self):
        if self.host_io:
            self._ctx = _device.context(self.device)
            self._ctx.__enter__()
            self._token = _inner.set(self.device)
        return self

    def __exit__(self, *exc):
        if self._token is not None:
            _inner.reset(self._token)
            self._ctx.__exit__(*exc)
        return False

    def arg(self, a):
        """An array argument on this call's device, in its dtype."""
        if a is None:
            return None
        if self.host_io:
            return _device.upload(a, self.dtype, self.device)
        if self.inner:
            return _device.to_inner(a, self.dtype, self.device)
        return a if a.dtype == self.dtype else a.astype(self.dtype)

    def labels(self, y):
        """An integer array argument on this call's device, in its own dtype."""
        if self.device is not None and self.device.is_cuda and isinstance(y, np.ndarray):
            return _device.upload(y, y.dtype, self.device)
        return y

    def param(self, a):
        """A parameter: as :meth:`arg`, but its device copy is kept between calls."""
        if a is not None and self.host_io and isinstance(a, np.ndarray):
            return _device.store.get(a, self.dtype, self.device)
        return self.arg(a)

    def out(self, a):
        """A result as the caller gets it: a NumPy array when the call took NumPy arrays."""
        if a is None or not self.host_io:
            return a
        return _device.download(a)

    def cache(self, items, ops_cache):
        """A :class:`Cache` holding ``items`` (the assignment's layout) and the op's cache."""
        return Cache(items, ops_cache, self.dtype, self.device if (self.host_io or self.inner) else None)


class Cache(tuple):
    """A CS231n-shaped cache tuple that also carries the ``gpuconv.ops`` cache as ``.ops``, the
    dtype it was computed in and the device it lives on (None: the arrays' own)."""

    def __new__(cls, items, ops_cache=None, dtype=None, device=None):
        self = tuple.__new__(cls, items)
        self.__dict__ = {"ops": ops_cache, "dtype": dtype, "device": device}  # (one dict, not three stores)
        return self


def plain_dtype(*arrays):
    """The dtype of ``arrays`` (None skipped) where a :class:`Call` on them would change nothing,
    else None. That is a host call (no device set, not inside another call) on NumPy arrays of
    one native float dtype, the notebook's float64 gradient checks: each array passes as it is,
    each result comes back as it is, and the cache, ``Cache(items, ops_cache, dtype)``, has no
    device. A layer then calls the op without opening the call (a few microseconds of a layer
    that computes on a few numbers)."""
    if _device._mode is not None or _inner.get() is not None:
        return None
    dt = None
    for a in arrays:
        if a is None:
            continue
        if type(a) is not np.ndarray or (dt is not None and a.dtype is not dt):
            return None
        dt = a.dtype
    return dt if dt is not None and dt.kind == "f" and dt.isnative else None


def plain_backward(dout, cache):
    """The forward's ops cache where :func:`backward_call` would open a :class:`Call` that changes
    nothing, else None: ``cache`` is a forward's own Cache of host arrays (it has no device), and
    ``dout`` a NumPy array of its very dtype, not inside another call."""
    ops_cache = getattr(cache, "ops", None)
    if (ops_cache is None or cache.device is not None or type(dout) is not np.ndarray
            or dout.dtype is not cache.dtype or _inner.get() is not None):
        return None
    return ops_cache


class PlainCall:
    """What a :class:`Call` is where :func:`plain_dtype` (:func:`plain_backward`) finds that it
    would change nothing: arrays pass as they are (one of another dtype cast to the call's, as
    :meth:`Call.arg` does), results come back as they are, caches have no device; entering it does
    nothing. One per dtype, shared (it holds nothing of a call): see :func:`open_call`."""

    __slots__ = ("dtype",)
    host_io = inner = False
    device = None

    def __init__(self, dtype):
        self.dtype = dtype

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def arg(self, a):
        if a is None:
            return None
        return a if a.dtype == self.dtype else a.astype(self.dtype)

    param = arg

    def labels(self, y):
        return y

    def out(self, a):
        return a

    def cache(self, items, ops_cache):
        return Cache(items, ops_cache, self.dtype, None)


_PLAIN: dict = {}


def _plain_call(dtype):
    call = _PLAIN.get(dtype)
    if call is None:
        call = _PLAIN[dtype] = PlainCall(dtype)
    return call


def open_call(*arrays):
    """``Call(*arrays)``, or where :func:`plain_dtype` finds that it would change nothing (the
    notebook's float64 gradient checks), the shared :class:`PlainCall` of that dtype: a layer on a
    few numbers then skips the call's promotion and device lookups (a few microseconds a call)."""
    dt = plain_dtype(*arrays)
    return Call(*arrays) if dt is None else _plain_call(dt)


def open_backward(dout, cache):
    """``Call(dout, dtype=cache.dtype, device=cache.device)`` for a backward given its forward's own
    cache, or the :class:`PlainCall` of its dtype where :func:`plain_backward` finds that the call
    would change nothing."""
    if plain_backward(dout, cache) is not None:
        return _plain_call(cache.dtype)
    return Call(dout, dtype=cache.dtype, device=cache.device)


def backward_call(dout, cache, rebuild, *more):
    """``(call, ops_cache)`` for a backward: on the forward's device and dtype when ``cache`` is
    a forward's own cache and ``dout`` promotes to its dtype; otherwise the forward is run again
    (``rebuild(dtype)`` returns a fresh Cache): for hand-built tuples, or a wider ``dout``."""
    if not more:
        ops_cache = plain_backward(dout, cache)
        if ops_cache is not None:  # (a Call would change nothing)
            return _plain_call(cache.dtype), ops_cache
    ops_cache = getattr(cache, "ops", None)
    if ops_cache is not None:
        dt = promote(dout, cache.dtype, *more)
        if dt == cache.dtype:
            return Call(dout, *more, dtype=dt, device=cache.device), ops_cache
    else:
        arrays = [a for a in cache if isinstance(a, np.ndarray) or hasattr(a, "__cuda_array_interface__")]
        dt = promote(dout, *more, *arrays)
    fresh = rebuild(dt)
    return Call(dout, *more, dtype=fresh.dtype, device=fresh.device), fresh.ops


def cast_all(dtype, *arrays):
    """Arrays cast to ``dtype`` (a rebuilt forward in a wider dtype)."""
    return tuple(a if a is None or not hasattr(a, "astype") else a.astype(dtype, copy=False) for a in arrays)


class LazyCache(Cache):
    """A :class:`Cache` whose trailing items are computed on first access: the assignment's fast
    layers cache an im2col matrix that only a student's own backward would read, and that costs
    as much memory as a convolution's whole work, so it is built only when someone reads it."""

    def __new__(cls, items, lazy, ops_cache=None, dtype=None, device=None):
        self = super().__new__(cls, items, ops_cache, dtype, device)
        self._lazy, self._done = tuple(lazy), {}
        return self

    def __len__(self):
        return tuple.__len__(self) + len(self._lazy)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(len(self))))
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"cache index {i} out of range: the cache holds {n} items")
        i %= n
        stored = tuple.__len__(self)
        if i < stored:
            return tuple.__getitem__(self, i)
        if i not in self._done:
            self._done[i] = self._lazy[i - stored](self)
        return self._done[i]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __reduce__(self):
        # The assignment's caches are plain tuples that copy.deepcopy and pickle take (a model
        # keeping its caches, deep-copied as the best one); copied, this one is a plain Cache of
        # all its items, the lazy ones built now (the functions building them do not pickle).
        return Cache, (tuple(self), self.ops, self.dtype, self.device)

    def __repr__(self):
        return f"{type(self).__name__}({len(self)} items)"
