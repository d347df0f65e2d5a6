"""``gpuconv.nn.init``: PyTorch's parameter initializers (``nn.init.kaiming_normal_(m.weight,
mode='fan_out', nonlinearity='relu')`` in a loop over ``model.modules()``).

Each fills a :class:`~gpuconv.layers.Parameter` (or a NumPy/CuPy float array) in place, on its
device and in its dtype, and returns it, as PyTorch's do. The formulas are PyTorch's (fans from
the shape: ``fan_in = shape[1] * prod(shape[2:])``, ``fan_out = shape[0] * prod(shape[2:])``);
the draws come from NumPy's global generator, as the layers' seeds do, so ``np.random.seed(s)``
first makes them reproducible (PyTorch's ``torch.manual_seed`` role; the values differ from
PyTorch's, whose generator is its own). Values are drawn in float64 on the host, then rounded
once into the parameter's dtype."""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from .backend import array_device_context, copy_like
from .layers import Parameter
from .ops._checks import check_float

__all__ = ["calculate_gain", "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "xavier_uniform_",
           "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_"]

_LINEAR = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
           "sigmoid")


def calculate_gain(nonlinearity, param=None):
    """PyTorch's recommended gain for ``nonlinearity``: 1 for linear maps and sigmoid, 5/3 for
    tanh, sqrt(2) for relu, sqrt(2 / (1 + slope^2)) for leaky_relu (``param``: the slope, 0.01 by
    default), 3/4 for selu."""
    if nonlinearity in _LINEAR:
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, numbers.Real):
            raise ValueError(f"calculate_gain('leaky_relu', param): param is the negative slope, a number, got "
                             f"{param!r}")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}; one of "
                     f"{', '.join(_LINEAR + ('tanh', 'relu', 'leaky_relu', 'selu'))}")


def _data(tensor, what):
    if isinstance(tensor, Parameter):
        return tensor.data
    try:
        return check_float("tensor", tensor)
    except TypeError as exc:
        raise TypeError(f"nn.init.{what}: {exc} (or pass a gpuconv Parameter, e.g. m.weight)") from None


def _fill(tensor, what, draw):
    """``tensor``'s array overwritten in place with ``draw(shape)`` (float64 host values)."""
    data = _data(tensor, what)
    values = np.asarray(draw(tuple(data.shape)), dtype=np.float64)
    with array_device_context((data,)):
        data[...] = copy_like(np.broadcast_to(values, data.shape), data)
    return tensor


def _fans(data, what):
    if data.ndim < 2:
        raise ValueError(f"nn.init.{what}: fan in and fan out need a weight of 2 or more dimensions "
                         f"(Linear's (out, in), Conv2d's (out, in, kh, kw)), got shape {tuple(data.shape)}; "
                         f"initialize a bias with uniform_ or constant_")
    receptive = int(np.prod(data.shape[2:])) if data.ndim > 2 else 1
    return data.shape[1] * receptive, data.shape[0] * receptive


def _number(what, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"nn.init.{what}: {name} must be a finite number, got {value!r}")
    return float(value)


def _bound(name, value):
    """A bound of trunc_normal_: a number, or an infinity leaving that side open (as PyTorch takes it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise TypeError(f"nn.init.trunc_normal_: {name} must be a number (-inf or inf leaves that side open), got "
                        f"{value!r}")
    return float(value)


def uniform_(tensor, a=0.0, b=1.0):
    """Values from U(a, b)."""
    a, b = _number("uniform_", "a", a), _number("uniform_", "b", b)
    if not a <= b:
        raise ValueError(f"nn.init.uniform_: a must be <= b, got a={a}, b={b}")
    return _fill(tensor, "uniform_", lambda shape: np.random.uniform(a, b, size=shape))


def normal_(tensor, mean=0.0, std=1.0):
    """Values from N(mean, std^2)."""
    mean, std = _number("normal_", "mean", mean), _number("normal_", "std", std)
    if std < 0:
        raise ValueError(f"nn.init.normal_: std must be >= 0, got {std}")
    return _fill(tensor, "normal_", lambda shape: np.random.normal(mean, std, size=shape))


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
    """Values from N(mean, std^2) truncated to [a, b], bounds in absolute units (not in stds: the
    default [-2, 2] leaves ``std=0.02``, a vision transformer's, untruncated in effect), by
    PyTorch's rejection sampling: where the window holds more than 30% of the normal's mass, draws
    out of [a, b] are drawn again; where it holds less, uniform draws in [a, b] are kept with
    probability pdf(x) / pdf(mode). An infinite bound leaves that side open (``a=0, b=math.inf``:
    a half-normal), as in PyTorch, where the window holds enough of the mass for the first
    sampler. As PyTorch's, it warns when ``mean`` lies more than 2 std outside [a, b] (the draws
    then take long)."""
    mean, std = _number("trunc_normal_", "mean", mean), _number("trunc_normal_", "std", std)
    a, b = _bound("a", a), _bound("b", b)
    if std <= 0:
        raise ValueError(f"nn.init.trunc_normal_: std must be > 0, got {std}")
    if not a < b:
        raise ValueError(f"nn.init.trunc_normal_: the bounds must have a < b (absolute values, e.g. a=-2 * std, "
                         f"b=2 * std), got a={a}, b={b}")
    if mean < a - 2 * std or mean > b + 2 * std:
        warnings.warn("mean is more than 2 std from [a, b] in nn.init.trunc_normal_. The distribution of values may "
                      "be incorrect.", stacklevel=2)

    def cdf(x):
        return (1.0 + math.erf((x - mean) / (std * math.sqrt(2.0)))) / 2.0

    def draw(shape):
        if cdf(b) - cdf(a) > 0.3:
            out = np.random.normal(mean, std, size=shape)
            redo = (out < a) | (out > b)
            while redo.any():
                out[redo] = np.random.normal(mean, std, size=int(redo.sum()))
                redo = (out < a) | (out > b)
            return out
        if math.isinf(a) or math.isinf(b):
            raise ValueError(f"nn.init.trunc_normal_: [a, b] = [{a}, {b}] holds {cdf(b) - cdf(a):.1%} of the normal's "
                             f"mass (mean={mean}, std={std}), too little for redrawing normal values, and PyTorch's "
                             f"sampler for that case draws uniformly in [a, b], which needs both bounds finite: give a "
                             f"finite bound in place of {'a' if math.isinf(a) else 'b'}={a if math.isinf(a) else b}")
        log_peak = -0.5 * ((max(a, min(mean, b)) - mean) / std) ** 2

        def rejected(x):
            return np.log(np.random.uniform(size=x.shape)) > -0.5 * ((x - mean) / std) ** 2 - log_peak

        out = np.random.uniform(a, b, size=shape)
        redo = rejected(out)
        while redo.any():
            out[redo] = np.random.uniform(a, b, size=int(redo.sum()))
            redo[redo] = rejected(out[redo])
        return out

    return _fill(tensor, "trunc_normal_", draw)


def constant_(tensor, val):
    """Every value ``val``."""
    val = _number("constant_", "val", val)
    return _fill(tensor, "constant_", lambda shape: np.full(shape, val))


def ones_(tensor):
    return _fill(tensor, "ones_", np.ones)


def zeros_(tensor):
    return _fill(tensor, "zeros_", np.zeros)


def xavier_uniform_(tensor, gain=1.0):
    """Glorot's: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(_data(tensor, "xavier_uniform_"), "xavier_uniform_")
    bound = _number("xavier_uniform_", "gain", gain) * math.sqrt(6.0 / (fan_in + fan_out))
    return _fill(tensor, "xavier_uniform_", lambda shape: np.random.uniform(-bound, bound, size=shape))


def xavier_normal_(tensor, gain=1.0):
    """Glorot's: N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(_data(tensor, "xavier_normal_"), "xavier_normal_")
    std = _number("xavier_normal_", "gain", gain) * math.sqrt(2.0 / (fan_in + fan_out))
    return _fill(tensor, "xavier_normal_", lambda shape: np.random.normal(0.0, std, size=shape))


def _kaiming_std(tensor, what, a, mode, nonlinearity):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"nn.init.{what}: mode must be 'fan_in' (the forward pass's scale) or 'fan_out' (the "
                         f"backward pass's), got {mode!r}")
    fan_in, fan_out = _fans(_data(tensor, what), what)
    return calculate_gain(nonlinearity, a) / math.sqrt(fan_in if mode == "fan_in" else fan_out)


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    """He's: U(-bound, bound) with bound = sqrt(3) * gain / sqrt(fan) (``a``: leaky_relu's slope).
    gpuconv's layers start from ``a=sqrt(5)``, PyTorch's default for Conv2d and Linear."""
    bound = math.sqrt(3.0) * _kaiming_std(tensor, "kaiming_uniform_", a, mode, nonlinearity)
    return _fill(tensor, "kaiming_uniform_", lambda shape: np.random.uniform(-bound, bound, size=shape))


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    """He's: N(0, std^2) with std = gain / sqrt(fan), e.g. ``mode='fan_out', nonlinearity='relu'``
    for the convolutions of a ResNet."""
    std = _kaiming_std(tensor, "kaiming_normal_", a, mode, nonlinearity)
    return _fill(tensor, "kaiming_normal_", lambda shape: np.random.normal(0.0, std, size=shape))


def orthogonal_(tensor, gain=1.0):
    """A (semi-)orthogonal matrix times ``gain`` (Saxe et al., 2013), as PyTorch's: the trailing
    dimensions flattened (a convolution's (out, in * kh * kw)), Q of the QR factorization of a
    standard normal matrix of that shape (transposed where it is wide), each column's sign set so
    that R's diagonal is positive (Q then uniform over the orthogonal matrices). An empty tensor is
    left as it is."""
    data = _data(tensor, "orthogonal_")
    gain = _number("orthogonal_", "gain", gain)
    if data.ndim < 2:
        raise ValueError(f"nn.init.orthogonal_: needs a weight of 2 or more dimensions (Linear's (out, in), "
                         f"Conv2d's (out, in, kh, kw)), got shape {tuple(data.shape)}")
    if data.size == 0:
        return tensor

    def draw(shape):
        rows = shape[0]
        cols = int(np.prod(shape)) // rows
        flat = np.random.normal(0.0, 1.0, size=(rows, cols))
        wide = rows < cols
        q, r = np.linalg.qr(flat.T if wide else flat)
        q *= np.sign(np.diag(r))
        return (gain * (q.T if wide else q)).reshape(shape)

    return _fill(tensor, "orthogonal_", draw)
