"""The pooling layers: max, average and power-average pooling over fixed windows (``MaxPool2d``,
``AvgPool2d``, ``LPPool2d``, on the arguments ``_Pool2d`` checks for them), and adaptive average
and max pooling to an output size (``AdaptiveAvgPool2d``, ``AdaptiveMaxPool2d``)."""
from __future__ import annotations

from .. import ops
from ..ops._checks import check_array, check_bool, check_floor
from ..ops._checks import only_defaults as _only
from ._construct import _Replayed, _int, _pair
from .module import Layer


class _Pool2d(Layer):
    """What max and average pooling share: the arguments (``stride`` defaults to ``kernel_size``)
    and the printout. A common base, so that an AvgPool2d is not an ``isinstance`` MaxPool2d."""

    _registers_attributes = False

    def __init__(self, kernel_size, stride=None, floor=False, padding=0):
        super().__init__()
        self.floor = check_floor(floor)
        k = _pair("kernel_size", kernel_size, 1)
        if stride is not None:
            _pair("stride", stride, 1)
        from ..ops.pool2d import check_pool_padding
        self._padding = check_pool_padding(padding, k)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def extra_repr(self):
        # The stride in effect, as PyTorch prints it (None means "the kernel size"); a padding when there is one.
        stride = self.kernel_size if self.stride is None else self.stride
        padding = "" if self._padding == (0, 0) else f", padding={self.padding}"
        return f"kernel_size={self.kernel_size}, stride={stride}{padding}" + (", floor=True" if self.floor else "")


class MaxPool2d(_Pool2d):
    """Max pooling; ``stride`` defaults to ``kernel_size``. Gradients go to the argmax of each window.

    ``floor=False`` (the default) rejects sizes the windows do not tile (no silent cropping);
    ``floor=True`` takes PyTorch's default rule, ``floor((H + 2P - F) / S) + 1`` windows: the rows and
    columns past the last window are dropped (a 2x2 pool takes 31x31 to 15x15) and get a zero
    gradient. ``padding`` (an int or (h, w) pair, at most ``kernel_size // 2``): -inf around the
    input, which no window takes as its maximum (``MaxPool2d(3, 1, padding=1)`` keeps H and W, the
    pool branch of an Inception block; ``MaxPool2d(3, 2, padding=1, floor=True)``, the ResNet stem's)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False, *,
                 floor=False):
        _only("MaxPool2d", dilation=(dilation, (1, 1)), return_indices=(return_indices, False),
              ceil_mode=(ceil_mode, False))
        super().__init__(kernel_size, stride, floor, padding)

    def forward(self, x):
        y, cache = ops.max_pool2d_forward(x, kernel_size=self.kernel_size, stride=self.stride, floor=self.floor,
                                          padding=self.padding)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return ops.max_pool2d_backward(dy, self._take_cache())


class LPPool2d(_Pool2d):
    """Power-average pooling, PyTorch's ``nn.LPPool2d(norm_type, kernel_size, stride=None)``:
    ``(sum of x^p)^(1/p)`` over each window, the p-norm of non-negative windows (``norm_type=2``: the
    L2 norm; no absolute value is taken, as in PyTorch: :func:`gpuconv.ops.lp_pool2d_forward`);
    ``stride`` defaults to ``kernel_size``; ``floor`` as for :class:`MaxPool2d`."""

    norm_type = _Replayed()

    def __init__(self, norm_type, kernel_size, stride=None, ceil_mode=False, *, floor=False):
        _only("LPPool2d", ceil_mode=(ceil_mode, False))
        super().__init__(kernel_size, stride, floor)
        from ..ops.lp_pool2d import check_norm
        self.norm_type = check_norm(norm_type)

    def forward(self, x):
        y, cache = ops.lp_pool2d_forward(x, self.norm_type, kernel_size=self.kernel_size, stride=self.stride,
                                         floor=self.floor)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return ops.lp_pool2d_backward(dy, self._take_cache())

    def extra_repr(self):
        return f"norm_type={self.norm_type:g}, " + super().extra_repr()


class AvgPool2d(_Pool2d):
    """Average pooling; ``stride`` defaults to ``kernel_size``; ``floor`` and ``padding`` as for
    :class:`MaxPool2d`, the padding zeros, counted in the divisor (``kernel_size`` taps) with
    ``count_include_pad=True`` (PyTorch's default) and not with False (each window's in-bounds taps)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None, *, floor=False):
        _only("AvgPool2d", ceil_mode=(ceil_mode, False), divisor_override=(divisor_override, None))
        super().__init__(kernel_size, stride, floor, padding)
        self.count_include_pad = check_bool("count_include_pad", count_include_pad)

    def forward(self, x):
        y, cache = ops.avg_pool2d_forward(x, kernel_size=self.kernel_size, stride=self.stride, floor=self.floor,
                                          padding=self.padding, count_include_pad=self.count_include_pad)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return ops.avg_pool2d_backward(dy, self._take_cache())

    def extra_repr(self):
        return super().extra_repr() + ("" if self.count_include_pad else ", count_include_pad=False")


class _AdaptivePool2d(Layer):
    """What adaptive average and max pooling share: ``output_size`` (an int, or an (h, w) pair
    whose None entries keep the input's size) and the ops (``_pool``: their name), which take
    PyTorch's windows for any output size (:mod:`gpuconv.ops.adaptive_pool2d`)."""

    _pool: str = ""

    _registers_attributes = False

    def __init__(self, output_size):
        super().__init__()
        pair = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        if len(pair) != 2:
            raise ValueError(f"{type(self).__name__}: output_size must be an int or an (h, w) pair, "
                             f"got {output_size!r}")
        self.output_size = tuple(None if v is None else _int("output_size", v, 1) for v in pair)

    def forward(self, x):
        check_array("x", x)
        y, cache = getattr(ops, f"adaptive_{self._pool}_forward")(x, self.output_size)
        self._keep(cache)
        return y

    def backward(self, dy, need_dx=True):
        return getattr(ops, f"adaptive_{self._pool}_backward")(dy, self._take_cache())

    def extra_repr(self):
        size = self.output_size
        return f"output_size={size[0] if size[0] == size[1] else size}"


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """PyTorch's ``nn.AdaptiveAvgPool2d(output_size)``: ``AdaptiveAvgPool2d(1)`` is global average
    pooling (a ResNet's last pool); output sizes that divide the input pool equal windows (average
    pooling with a window and stride of ``H // OH`` by ``W // OW``), others PyTorch's windows of
    different sizes."""

    _pool = "avg_pool2d"


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """PyTorch's ``nn.AdaptiveMaxPool2d(output_size)``, windows as :class:`AdaptiveAvgPool2d`'s
    (``return_indices=False`` only)."""

    _pool = "max_pool2d"

    def __init__(self, output_size, return_indices=False):
        _only("AdaptiveMaxPool2d", return_indices=(return_indices, False))
        super().__init__(output_size)
