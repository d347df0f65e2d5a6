"""Argument checks shared by the ops: every bad input is rejected before any work is done.

Each error names the argument, the value it got, the rule it broke and how to fix it.
"""
from __future__ import annotations

from collections import namedtuple

import functools
import numbers

import numpy as np

from .._memo import remember  # noqa: F401  (the ops import it from here)
from ..precision import DTYPE_NAMES, DTYPES, compute_dtype


def check_array(name, a):
    """``a`` must be a NumPy or CuPy array (anything with a NumPy dtype, a shape and ``ndim``): a
    tensor of another library (PyTorch's) has a dtype of its own, which no check would understand."""
    if type(a) is np.ndarray:  # the common case first: every op checks every array
        return a
    if not (isinstance(getattr(a, "dtype", None), np.dtype) and hasattr(a, "shape") and hasattr(a, "ndim")) \
            or isinstance(a, np.generic):
        if hasattr(a, "dtype") and hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch.Tensor
            raise TypeError(f"{name} must be a numpy or cupy array, got {type(a).__module__}.{type(a).__name__} "
                            f"({a.dtype}): convert it first, e.g. {name} = {name}.detach().cpu().numpy() (a CUDA "
                            f"tensor stays on its GPU as cupy.from_dlpack({name}))")
        dtype = "np.int64" if name in ("labels", "y") else "np.float32"  # class indices, or values
        raise TypeError(f"{name} must be a numpy or cupy array, got {type(a).__name__}: "
                        f"wrap it first, e.g. {name} = np.asarray({name}, dtype={dtype})")
    return a


def check_float(name, a):
    """``a`` must be a float64, float32 (the default), bfloat16 or float16 array (gpuconv.precision)."""
    if type(a) is not np.ndarray:  # (check_array's own first test, without the call per array)
        check_array(name, a)
    if a.dtype not in DTYPES:
        raise TypeError(f"{name} has dtype {a.dtype}, but ops take {DTYPE_NAMES} arrays (float32 is the "
                        f"default, float64 for gradient checks): convert it with {name}.astype(np.float32)")
    return a


class DtypeMismatchError(TypeError):
    """Arrays of one op have different dtypes (an op runs in one precision)."""


def check_same_dtype(ref_name, ref, **others):
    """All of ``others`` (None skipped) share ``ref``'s dtype: a kernel runs in one element type
    (:class:`DtypeMismatchError`, a TypeError, otherwise)."""
    for name, a in others.items():
        if a is None:
            continue
        check_float(name, a)
        if a.dtype != ref.dtype:
            raise DtypeMismatchError(f"{name} has dtype {a.dtype} but {ref_name} has dtype {ref.dtype}: an op runs in "
                            f"one precision, so cast one of them, e.g. {name}.astype({ref_name}.dtype) (for mixed "
                            "precision keep the float32 master copy and pass its cast)")


def check_dy_dtype(dy, dtype):
    """The output gradient ``dy`` has ``dtype``, the forward output's (:class:`DtypeMismatchError`
    otherwise: a backward runs in its forward's precision and returns dx in it)."""
    if dy.dtype != dtype:
        raise DtypeMismatchError(f"dy has dtype {dy.dtype} but the forward's output had dtype {np.dtype(dtype)}: "
                                 f"a backward runs in its forward's precision, so pass dy.astype({np.dtype(dtype)})")


def check_compute_dtype(ref_name, ref, why, **others):
    """All of ``others`` (None skipped) have the dtype ``ref``'s values are computed in: float64
    for float64, float32 for the rest (``why`` says what keeps them there);
    :class:`DtypeMismatchError` otherwise, as for :func:`check_same_dtype`."""
    want = compute_dtype(ref.dtype)
    for name, a in others.items():
        if a is None:
            continue
        check_float(name, a)
        if a.dtype != want:
            raise DtypeMismatchError(f"{name} has dtype {a.dtype} but {ref_name} has dtype {ref.dtype}: {why}, so "
                                     f"{name} must be {want} for a {ref.dtype} {ref_name}: pass {name}.astype(np.{want})")


def check_rank(name, a, ndim, layout=None):
    """``a.ndim == ndim``; ``layout`` (e.g. 'NCHW') makes the message say what each axis means."""
    if a.ndim != ndim:
        what = f" ({layout})" if layout else ""
        # A batch of data may lack its batch axis; a parameter of the wrong rank is another array.
        fix = (f"e.g. {name}[None] adds a leading batch axis" if a.ndim == ndim - 1 and name in ("x", "dy", "images")
               else f"give an array laid out as {layout}" if layout else "reshape it")
        raise ValueError(f"{name} must have {ndim} dimensions{what}, got shape {tuple(a.shape)} "
                         f"with {a.ndim}: {fix}")
    return a


def check_shape(name, a, shape, why):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({why}), got {tuple(a.shape)}")
    return a


def whole_float_hint(v) -> str:
    """For a whole float where an int belongs (or a pair holding one): how it came about and the fix."""
    values = v if isinstance(v, (tuple, list)) else (v,)
    if any(isinstance(e, float) and e.is_integer() for e in values):
        return ("; a float, as / gives in Python 3 (code written for Python 2, e.g. (filter_size - 1) / 2): "
                "divide with // instead, e.g. (filter_size - 1) // 2")
    return ""


_INT_MAX = 2**31 - 1


def pair(name, v, minimum=0):
    """An int or an (h, w) pair of ints, each >= ``minimum``, as a tuple ``(h, w)``."""
    if type(v) is int and minimum <= v <= _INT_MAX:  # a plain int (a CS231n conv_param's), answered first
        return (v, v)
    if (type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int and min(v) >= minimum
            and max(v) <= _INT_MAX):
        return v  # a layer's own pair, checked at every call: answered without the abstract-class checks
    if isinstance(v, (numbers.Integral,)) and not isinstance(v, bool):
        hw = (int(v), int(v))
    elif (isinstance(v, (tuple, list)) and len(v) == 2
          and all(isinstance(e, numbers.Integral) and not isinstance(e, bool) for e in v)):
        hw = (int(v[0]), int(v[1]))
    else:
        raise TypeError(f"{name} must be an int or an (h, w) pair of ints, got {v!r}{whole_float_hint(v)}")
    if min(hw) < minimum:
        raise ValueError(f"{name} must be >= {minimum} in both directions, got {v!r}")
    if max(hw) > _INT_MAX:  # the kernels take it as an int
        fix = "; a stride as large as the (padded) input gives the same single window" if name == "stride" else ""
        raise ValueError(f"{name} must be at most 2**31 - 1 (the kernels take it as an int), got {v!r}{fix}")
    return hw


def only_defaults(where, **given):
    """PyTorch arguments gpuconv takes at their default value only: ``name=(value, default)``.
    Accepted as PyTorch spells them (so a layer's positional arguments mean what they mean there,
    and an op takes F.conv2d's or F.max_pool2d's keywords), refused by name otherwise."""
    for name, (value, default) in given.items():
        if default is None:  # (an array compares elementwise)
            same = value is None
        else:
            same = value == default if not isinstance(default, tuple) else pair(name, value, 0) == default
        if not same:
            shown = f"<{type(value).__name__}>" if hasattr(value, "shape") else repr(value)
            raise ValueError(f"{where}({name}={shown}) is not supported: gpuconv's {where} computes with "
                             f"{name}={default!r} only")


def torch_positions(where, torch_op, **given):
    """``name=(value, torch_name, default)``: a number given as ``where``'s ``name`` (a precision
    or a switch, never a number) where ``torch_op`` takes ``torch_name`` at the same position
    (F.conv2d's dilation where conv2d_forward takes precision) is that argument of PyTorch's, called
    in its order: refused naming the keyword that gives it. Any other value is left to ``name``'s
    own check."""
    for name, (value, torch_name, default) in given.items():
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{where}({name}={value!r}): a number where {torch_op} takes {torch_name}; gpuconv's "
                            f"{where} takes {name} at that position, and {torch_name} by keyword only "
                            f"({torch_name}={default!r})")


def conv_padding(padding, kernel_size, stride, dilation=(1, 1)):
    """PyTorch's string paddings of a convolution as numbers (anything else unchanged, for
    :func:`pair` to check): 'valid' is 0; 'same' keeps the spatial size at stride 1: (e - 1) // 2
    on every side where every extent e = d*(k - 1) + 1 (the kernel size k at dilation d) is odd,
    and the string 'same' itself where one is even, whose zeros are not the same on both sides
    (:func:`same_padding_sides`). ``kernel_size``, ``stride`` and ``dilation`` are (h, w) pairs."""
    if not isinstance(padding, str):
        return padding
    if padding == "valid":
        return 0
    if padding != "same":
        raise ValueError(f"padding={padding!r}: use an int, an (h, w) pair, 'valid' or 'same'")
    extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel_size, dilation))
    if stride != (1, 1):
        # PyTorch refuses it too: no padding keeps the size of a strided convolution's output.
        pads = tuple((e - 1) // 2 for e in extent)
        dilated = tuple(dilation) != (1, 1)
        raise ValueError(f"padding='same' needs stride 1 (as in PyTorch: a strided convolution's output is smaller "
                         f"whatever the padding), got kernel_size={tuple(kernel_size)}, stride={tuple(stride)}"
                         + (f", dilation={tuple(dilation)}" if dilated else "") + ": give the padding as a number, "
                         f"e.g. padding={pads if pads[0] != pads[1] else pads[0]} "
                         + ("((e - 1) // 2 of the extent e = d*(k - 1) + 1, " if dilated else "((k - 1) // 2, ")
                         + "what 'same' pads at stride 1), with floor=True where the sizes do not divide")
    if extent[0] % 2 == 0 or extent[1] % 2 == 0:
        return "same"
    return ((extent[0] - 1) // 2, (extent[1] - 1) // 2)


def same_padding_sides(kernel_size):
    """The zeros padding='same' adds at stride 1, as PyTorch adds them: ``((top, bottom), (left,
    right))``, ``k - 1`` along each axis, ``(k - 1) // 2`` before and the rest (one more, for an
    even ``k``) after."""
    return tuple(((k - 1) // 2, k // 2) for k in kernel_size)


def conv_output_size(in_size, filt, stride, pad, axis_name="width", padded=True, floor=None):
    """``(W - F + 2P)/S + 1``, which must be a whole number >= 1 (CS231n's rule: no silent cropping),
    or with ``floor`` PyTorch's ``floor((W - F + 2P)/S) + 1`` (the rows or columns past the last
    window take no part; None: an op that has no such option, whose message does not offer it).
    The message names the axis's own letter (H for the height);
    ``padded=False`` (a pooling without padding) drops P from the rule and from the fix.
    Memoized per value and type (every convolution and pooling launch asks the memo, through
    :func:`output_hw`, which skips this function's argument checks; errors are not kept), so an
    answer has the type it would have had computed."""
    for name, v, minimum in (("in_size", in_size, 0), ("filt", filt, 1), ("stride", stride, 1), ("pad", pad, 0)):
        whole = isinstance(v, numbers.Integral) or (getattr(v, "ndim", None) == 0 and v.dtype.kind in "iu")
        if isinstance(v, (bool, np.bool_)) or not whole:
            raise TypeError(f"conv_output_size: {name} must be an int, got {v!r}{whole_float_hint(v)}")
        if v < minimum:
            raise ValueError(f"conv_output_size: {name} must be >= {minimum}, got {v}")
    try:
        return _conv_output_size(in_size, filt, stride, pad, axis_name, padded, floor)
    except TypeError:  # an unhashable size (a 0-d array), or an error of the rule's own: computed as given
        return _conv_output_size.__wrapped__(in_size, filt, stride, pad, axis_name, padded, floor)


@functools.lru_cache(maxsize=4096, typed=True)
def _conv_output_size(in_size, filt, stride, pad, axis_name, padded, floor=None):
    A = "H" if axis_name == "height" else "W"
    span = in_size - filt + 2 * pad
    rule, values = ((f"({A} - F + 2P)/S + 1", f"({in_size} - {filt} + 2*{pad})/{stride} + 1") if padded
                    else (f"({A} - F)/S + 1", f"({in_size} - {filt})/{stride} + 1"))
    sizes = f"input size {A}={in_size}, {'filter' if padded else 'window'} F={filt}, stride S={stride}" + \
        (f", padding P={pad}" if padded else "")
    if span < 0:
        fix = "use a smaller filter or more padding" if padded else "use a smaller window or a larger input"
        raise ValueError(f"the {'filter' if padded else 'window'} does not fit along the {axis_name}: {sizes} give "
                         f"{rule} = {values} = {span / stride + 1:g} < 1; {fix}")
    if span % stride and not floor:
        fix = (f"change the padding or stride so that {A} - F + 2P is divisible by S" if padded else
               f"choose a stride that divides {A} - F = {span} (or crop or pad the input to another size; max "
               f"and average pooling also take padding=P, which adds 2P to {A})")
        left, unit = span % stride, "row" if A == "H" else "column"
        fix += "" if floor is None else (f", or pass floor=True for PyTorch's rule, floor({rule[:-4]}) + 1 = {span // stride + 1} (the last "
                f"{left} {unit}{'s' if left > 1 else ''} of the {'padded ' if padded else ''}input, which no window "
                "reaches, take no part)")
        quotient = f"{span / stride + 1:g}"
        if float(quotient).is_integer():  # too close to a whole number to show as a decimal
            quotient = f"{span}/{stride} + 1"
        raise ValueError(f"the sizes do not fit along the {axis_name}: {sizes} give {rule} = {values} = "
                         f"{quotient}, not an integer; {fix}")
    return check_output_extent(span // stride + 1, axis_name, "use less padding or a larger stride")


def check_output_extent(size, axis_name, fix):
    """``size``, an output's size along one axis (the height or width), which the kernels take as an
    int: at most 2**31 - 1, refused before a launch would fail to pass it (or the reference try to
    allocate an array of that many rows); ``fix`` says what brings it down."""
    if size > _INT_MAX:
        raise ValueError(f"the output would be {size} along the {axis_name}, past 2**31 - 1 (the kernels take sizes "
                         f"as int): {fix}")
    return size


def output_hw(x_shape, filt_hw, stride, padding=None, floor=None):
    """(OH, OW) for an NCHW input, checked along both axes; ``padding`` None: an op without padding;
    ``floor``: PyTorch's rule (see :func:`conv_output_size`; None: the op has no floor option)."""
    padded = padding is not None
    ph, pw = padding if padded else (0, 0)
    try:  # conv_output_size's memo, asked directly (every conv and pool asks, at every call)
        return (_conv_output_size(x_shape[2], filt_hw[0], stride[0], ph, "height", padded, floor),
                _conv_output_size(x_shape[3], filt_hw[1], stride[1], pw, "width", padded, floor))
    except TypeError:  # as conv_output_size handles it
        return (conv_output_size(x_shape[2], filt_hw[0], stride[0], ph, "height", padded, floor),
                conv_output_size(x_shape[3], filt_hw[1], stride[1], pw, "width", padded, floor))


def check_bool(name, value, hint="") -> bool:
    """``value`` as a bool: True or False (NumPy's too) only; a word from a config file would be
    true whatever it says (``bool("no")`` is True), a number would pass for a switch."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}{hint}")
    return bool(value)


def check_floor(floor) -> bool:
    """``floor`` as a bool: True or False only (``floor="no"`` would be true)."""
    return check_bool("floor", floor)


@functools.lru_cache(maxsize=None)  # (backwards name their cached arrays at every call, for an error they rarely raise)
def cached(name: str) -> str:
    """How an error names an array a backward takes from its forward's cache (a device check's
    names: :func:`gpuconv.backend.kernel_target`)."""
    return f"the forward's {name} (in the cache)"


def check_cache(cache, cls, forward):
    """``cache`` is what ``forward`` returned (a ``cls``): a backward given another object would
    fail inside, reading a field it does not have."""
    if not isinstance(cache, cls):
        raise TypeError(f"cache must be the {cls.__name__} that {forward} returned, got {type(cache).__name__}: pass "
                        f"the second value of y, cache = {forward}(...)")


def cache_type(name: str, fields: str, module: str, defaults=None):
    """The namedtuple type of an op's cache (``module``: the defining module's ``__name__``, where
    pickle finds it), printed by :func:`cache_repr`."""
    base = namedtuple(name, fields, defaults=defaults, module=module)
    return type(name, (base,), {"__slots__": (), "__repr__": cache_repr, "__module__": module})


def cache_repr(cache) -> str:
    """A cache's fields with each array shown as its dtype and shape (a whole activation printed
    fills a notebook's output)."""
    def show(v):
        return f"array(shape={tuple(v.shape)}, dtype={v.dtype})" if hasattr(v, "shape") and hasattr(v, "dtype") \
            else repr(v)
    return f"{type(cache).__name__}(" + ", ".join(f"{k}={show(v)}" for k, v in zip(cache._fields, cache)) + ")"


class Unkeyed(Exception):
    """An argument that no memo key stands for (its checks run at every call): see :func:`plain`."""


def plain(v):
    """``v`` as part of a memo key of checks passed, where its value alone decides them: None, an
    int, a str or an (h, w) pair of ints, of exactly those types (1.0, True and np.int64(1) equal 1
    and hash alike, but 1.0 and True are refused where 1 passes); anything else raises
    :class:`Unkeyed`."""
    t = type(v)
    if v is None or t is int or t is str or (t is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int):
        return v
    raise Unkeyed


def signature(a):
    """What an array's checks read of it, as a memo key: type, shape and dtype (None for None);
    an AttributeError for an object that is not an array (whose checks then run, and fail)."""
    return None if a is None else (type(a), a.shape, a.dtype)


# A memo of checks passed holds them by signature (remember, from gpuconv._memo). Errors are never
# kept, so a bad call is checked, and refused, every time.
_MISSING = object()


def checked_once(memo: dict, make_key, check):
    """``check()``'s answer, kept in ``memo`` under ``make_key()`` once it has passed, for checks that
    read only what the key holds (:func:`signature`, :func:`plain`): a network, or a gradient check,
    calls an op with the same few geometries over and over. A key that cannot be made (AttributeError:
    not an array; TypeError: an unhashable value; :class:`Unkeyed`: a value no key stands for) runs
    ``check`` at every call; an error is never kept."""
    try:
        key = make_key()
        hit = memo.get(key, _MISSING)
    except (AttributeError, TypeError, Unkeyed):
        return check()
    if hit is not _MISSING:
        return hit
    return remember(memo, key, check())


def exactly_bool(*values):
    """``values``, for a memo key, where each is exactly a bool (1 == True: a key would let 1 pass);
    else :class:`Unkeyed`."""
    if any(type(v) is not bool for v in values):
        raise Unkeyed
    return values


def check_bias(b, w, per):
    """``b`` is None or holds one value per row of ``w`` (``per`` names what a row is)."""
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"b must have shape ({w.shape[0]},), one bias per {per} of w {tuple(w.shape)}, "
                         f"got {tuple(b.shape)}")
