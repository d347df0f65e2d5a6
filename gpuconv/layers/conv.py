"""The convolution layers, ``Conv2d`` (with PyTorch's padding modes) and ``ConvTranspose2d``, and
what they share: the channel, kernel, stride, dilation and groups checks, and the backward that
accumulates the filters' and the bias's gradients."""
from __future__ import annotations

import numbers

from .. import ops
from ..ops._checks import check_array, check_floor, conv_padding, same_padding_sides, whole_float_hint
from ..ops._checks import only_defaults as _only
from ._construct import (_Replayed, _bias_uniform, _factory, _int, _kaiming_uniform, _layer_rng, _on_default_device,
                         _pair, _with_bias)
from .module import Layer
from .parameter import Parameter


def _convolution_geometry(layer, in_channels, out_channels, kernel_size, stride, dilation, groups):
    """Conv2d's and ConvTranspose2d's channel counts, kernel size, stride, dilation and groups, checked
    and set on ``layer``: groups must divide both channel counts."""
    layer.in_channels = _int("in_channels", in_channels, 1)
    layer.out_channels = _int("out_channels", out_channels, 1)
    layer.kernel_size = _pair("kernel_size", kernel_size, 1)
    layer.stride = _pair("stride", stride, 1)
    layer.dilation = _pair("dilation", dilation, 1)
    layer.groups = _int("groups", groups, 1)
    for name, channels in (("in_channels", layer.in_channels), ("out_channels", layer.out_channels)):
        if channels % layer.groups:
            raise ValueError(f"{type(layer).__name__}: groups={layer.groups} must divide {name}={channels} (each "
                             f"group takes {name} // groups channels): choose groups among the divisors of both "
                             "channel counts")


def _convolution_backward(layer, backward, dy, need_dx, cache=None):
    """Conv2d's and ConvTranspose2d's backward: ``backward`` (their op's) of ``cache`` (None: the
    layer's). Frozen filters: no dw. Otherwise dw comes in the master's dtype (a bf16/fp16 dw
    widened as the kernel writes it: no cast to accumulate it)."""
    cache = layer._take_cache() if cache is None else cache
    dx, dw, db = backward(dy, cache, need_dx=need_dx, need_dw=layer.weight.requires_grad,
                          dw_dtype=layer.weight.data.dtype)
    if dw is not None:
        layer.weight.accumulate(dw)
    if layer.bias is not None:
        layer.bias.accumulate(db)
    return dx


class Conv2d(Layer):
    """2-D convolution over NCHW input with OIHW weights (``gpuconv.ops.conv2d_forward``).

    ``padding`` is an int, an (h, w) pair, or as in PyTorch ``'valid'`` (0) or ``'same'``
    (output size = input size, at stride 1 only): k - 1 zeros along each axis, (k - 1) // 2
    before and the rest after. ``layer.padding`` is then the (h, w) pair of an odd kernel
    size, ``(k - 1) // 2`` on every side, and for an even one (more zeros after than before) the
    string ``'same'``, as PyTorch keeps it; the op pads such an input itself (a copy of it).

    ``floor=False`` (the default) rejects sizes the windows do not tile, ``(H - F + 2P)/S + 1`` not
    whole (no silent cropping); ``floor=True`` takes PyTorch's rule, ``floor((H - F + 2P)/S) + 1``:
    a ResNet's stride-2 convolutions (3x3 with padding 1, or 1x1) take 32x32 to 16x16, the input
    rows and columns no window reaches getting a zero gradient.

    ``dilation`` spaces the filter taps (a 3x3 filter at dilation 2 reaches 5x5 pixels, which take
    F's place in the size rule and in 'same'); ``groups`` splits the channels into groups that see
    only their own filters, as in PyTorch: ``groups=in_channels`` is a depthwise convolution
    (MobileNet), ``groups=32`` a ResNeXt block's. ``weight`` is then (out_channels,
    in_channels // groups, kh, kw), PyTorch's shape, initialized with fan_in = in_channels // groups * kh * kw.

    ``padding_mode`` is PyTorch's: 'zeros' (the default), or 'reflect', 'replicate' or 'circular',
    with which the input is first padded by ``padding`` in that mode (``gpuconv.ops.pad_forward``,
    F.pad's) and then convolved without padding, as PyTorch does ('same' included); reflect
    padding must be smaller than the input's height and width, circular at most them."""

    _registers_attributes = False
    _param_names = ("weight", "bias")
    _low_precision_params = ("weight", "bias")
    # The kernels take them by value: a change while a captured step holds the layer is refused.
    stride, padding, dilation, groups = _Replayed(), _Replayed(), _Replayed(), _Replayed()

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None, *, floor=False, seed=None):
        super().__init__()
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"Conv2d: padding_mode must be one of {_PADDING_MODES}, but got padding_mode="
                             f"{padding_mode!r} (PyTorch's modes; 'zeros' pads zeros, the others pad with F.pad's "
                             "mode of that name)")
        self.padding_mode = padding_mode
        self.floor = check_floor(floor)
        _convolution_geometry(self, in_channels, out_channels, kernel_size, stride, dilation, groups)
        padding = conv_padding(padding, self.kernel_size, self.stride, self.dilation)
        self.padding = padding if isinstance(padding, str) else _pair("padding", padding, 0)  # (str: 'same', even k)
        fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        rng = _layer_rng(seed)
        shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        w = _kaiming_uniform(rng, shape, fan_in)
        self.weight = Parameter(_on_default_device(w), "weight")
        self.bias = (Parameter(_on_default_device(_bias_uniform(rng, self.out_channels, fan_in)), "bias")
                     if _with_bias(bias) else None)
        _factory(self, device, dtype)

    def forward(self, x):
        state = self.__dict__  # (the _Replayed numbers read as their descriptor does: no call each, every step)
        padding, pad_cache = state["padding"], None
        if self.padding_mode != "zeros":  # padded first in the mode, then convolved without padding
            x, pad_cache = ops.pad_forward(x, self._reversed_padding_repeated_twice, self.padding_mode)
            padding = 0
        bias = self.bias
        y, cache = ops.conv2d_forward(x, self.weight.value, None if bias is None else bias.value,
                                      stride=state["stride"], padding=padding, floor=self.floor,
                                      dilation=state["dilation"], groups=state["groups"])
        self._keep(cache if pad_cache is None else (cache, pad_cache))
        return y

    @property
    def _reversed_padding_repeated_twice(self):
        """The padding as F.pad takes it, (left, right, top, bottom), PyTorch's attribute: 'same' (of
        an even extent d*(k - 1) + 1) puts (e - 1) // 2 before and the rest after."""
        if isinstance(self.padding, str):
            extent = tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))
            (top, bottom), (left, right) = same_padding_sides(extent)
            return (left, right, top, bottom)
        return (self.padding[1], self.padding[1], self.padding[0], self.padding[0])

    @property
    def _filters_read_unpacked(self):
        """gpuconv.amp packs no data-gradient copy of these: a grouped or dilated convolution runs
        kernels/conv2d_grouped.cu, which reads the filters as they are (the packing is conv2d.cu's)."""
        return ("weight",) if self.groups != 1 or self.dilation != (1, 1) else ()

    def backward(self, dy, need_dx=True):
        if self.padding_mode == "zeros":
            return _convolution_backward(self, ops.conv2d_backward, dy, need_dx)
        conv_cache, pad_cache = self._take_cache()  # the convolution's backward, then the padding's
        dx = _convolution_backward(self, ops.conv2d_backward, dy, need_dx, cache=conv_cache)
        return None if dx is None else ops.pad_backward(dx, pad_cache)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}" + (f", dilation={self.dilation}" if self.dilation != (1, 1) else "")
                + (f", groups={self.groups}" if self.groups != 1 else "")
                + f", bias={self.bias is not None}"
                + (f", padding_mode={self.padding_mode}" if self.padding_mode != "zeros" else "")
                + (", floor=True" if self.floor else ""))


_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class ConvTranspose2d(Layer):
    """2-D transposed convolution (``gpuconv.ops.conv_transpose2d_forward``), PyTorch's
    ``nn.ConvTranspose2d``: weight (in_channels, out_channels // groups, kH, kW), output size
    ``(H - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1``
    (``output_padding`` < ``stride`` or < ``dilation`` picks one of the sizes a stride-``stride``
    convolution takes to H). ``groups`` splits the channels as Conv2d's (``groups=in_channels``:
    depthwise); both channel counts must be multiples of it. Initialized as PyTorch's:
    kaiming_uniform_(a=sqrt(5)) with the fan-in PyTorch computes from this weight's dim 1,
    out_channels // groups * kH * kW, and the bias bound 1/sqrt of it. ``forward(x,
    output_size=(OH, OW))`` (or (N, C, OH, OW)) takes that size instead, as PyTorch's, giving the
    output_padding of that call. ``padding_mode`` is taken at its default only."""

    _registers_attributes = False
    _param_names = ("weight", "bias")
    _low_precision_params = ("weight", "bias")
    _forward_reads_data_gradient_filters = ("weight",)  # (gpuconv.amp packs them for evaluation too)
    # The kernels take them by value: a change while a captured step holds the layer is refused.
    stride, padding, output_padding, dilation, groups = _Replayed(), _Replayed(), _Replayed(), _Replayed(), _Replayed()

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", device=None, dtype=None, *, seed=None):
        super().__init__()
        _only("ConvTranspose2d", padding_mode=(padding_mode, "zeros"))
        _convolution_geometry(self, in_channels, out_channels, kernel_size, stride, dilation, groups)
        if isinstance(padding, str):
            raise ValueError(f"ConvTranspose2d(padding={padding!r}): an int or an (h, w) pair, as in PyTorch (no "
                             "'same' or 'valid' for a transposed convolution)")
        self.padding = _pair("padding", padding, 0)
        self.output_padding = _pair("output_padding", output_padding, 0)
        if any(op >= s and op >= d for op, s, d in zip(self.output_padding, self.stride, self.dilation)):
            raise ValueError(f"ConvTranspose2d(output_padding={output_padding!r}): output_padding must be smaller "
                             f"than stride={self.stride} or than dilation={self.dilation} along each axis, as in "
                             "PyTorch; use output_padding=0 at stride 1 and dilation 1")
        cout = self.out_channels // self.groups  # PyTorch's fan-in: weight dim 1 * kH * kW
        fan_in = cout * self.kernel_size[0] * self.kernel_size[1]
        rng = _layer_rng(seed)
        w = _kaiming_uniform(rng, (self.in_channels, cout) + self.kernel_size, fan_in)
        self.weight = Parameter(_on_default_device(w), "weight")
        self.bias = (Parameter(_on_default_device(_bias_uniform(rng, self.out_channels, fan_in)), "bias")
                     if _with_bias(bias) else None)
        _factory(self, device, dtype)

    def forward(self, x, output_size=None):
        output_padding = self.output_padding if output_size is None else self._output_padding(x, output_size)
        y, cache = ops.conv_transpose2d_forward(x, self.weight.value, None if self.bias is None else self.bias.value,
                                                self.stride, self.padding, output_padding, groups=self.groups,
                                                dilation=self.dilation)
        self._keep(cache)
        return y

    def _output_padding(self, x, output_size):
        """The output_padding that gives ``output_size`` (PyTorch's ``forward(x, output_size)``)."""
        check_array("x", x)
        if not isinstance(output_size, (tuple, list)):
            raise TypeError(f"ConvTranspose2d: output_size must be (OH, OW) or (N, C, OH, OW), got {output_size!r}")
        if len(output_size) not in (2, 4):  # PyTorch's error for another length is a ValueError
            raise ValueError(f"ConvTranspose2d: output_size must have 2 elements (OH, OW) or 4 (N, C, OH, OW), got "
                             f"{len(output_size)}: {tuple(output_size)!r}")
        size = tuple(output_size)[-2:]
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in size):  # np.int64 too
            raise TypeError(f"ConvTranspose2d: output_size must hold ints, (OH, OW) or (N, C, OH, OW), got "
                            f"{output_size!r}{whole_float_hint(size)}")
        size = tuple(int(v) for v in size)
        pads = []
        for axis, have, want, k, s, p, d in zip(("height", "width"), x.shape[2:], size, self.kernel_size,
                                                self.stride, self.padding, self.dilation):
            smallest = (have - 1) * s - 2 * p + d * (k - 1) + 1
            if not smallest <= want < smallest + s:
                raise ValueError(f"ConvTranspose2d: output_size {want} along the {axis} is out of reach: this layer "
                                 f"gives {smallest} to {smallest + s - 1} from an input of {have} (stride {s}, padding "
                                 f"{p}, kernel {k}" + (f", dilation {d})" if d != 1 else ")"))
            pads.append(want - smallest)
        return tuple(pads)

    def backward(self, dy, need_dx=True):
        return _convolution_backward(self, ops.conv_transpose2d_backward, dy, need_dx)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}"
                + (f", output_padding={self.output_padding}" if any(self.output_padding) else "")
                + (f", dilation={self.dilation}" if self.dilation != (1, 1) else "")
                + (f", groups={self.groups}" if self.groups != 1 else "") + f", bias={self.bias is not None}")
