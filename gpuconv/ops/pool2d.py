"""2-D max and average pooling over NCHW tensors (stride defaults to the kernel size; optional padding,
PyTorch's: at most half the window, -inf for max pooling, zeros for the average, counted in its divisor
unless ``count_include_pad=False``).

Precision (gpuconv.precision): a bfloat16/float16 input is upcast to float32, pooled there, and
each output rounded once to its dtype; a maximum is one of the inputs, so max pooling is exact
in every dtype (a zero maximum is +0.0, whichever signed zeros tied), and an average is a
float32 sum times the float32 reciprocal, rounded once.

Caches (shared with the kernel launchers, see ``_dispatch``; defined with the NumPy reference in
``_pool2d_reference.py``, which loops over the window taps, and imported from here):
``MaxPool2dCache(x_shape, kernel_size, stride, argmax)`` where ``argmax`` is int32 of the output's
shape holding the window-local index ``kh * KW + kw`` of each maximum (the "switches"; ties go to
the first tap in row-major order; a NaN in a window makes its output NaN and takes the switch,
the first NaN in tap order as ``np.argmax`` picks it, so the gradient goes to an input the
output is, as in PyTorch; where two NaNs share a window PyTorch picks the last), and
``AvgPool2dCache(x_shape, kernel_size, stride)``; sizes are (h, w) pairs. Both end in
``channels_last``: whether x was (gpuconv.layout), so that dx comes back in x's layout even where
dy cannot tell (1x1 outputs, whose two layouts are the same memory), and ``dtype``: x's, which
dy must have (None: not checked), then ``padding`` ((h, w), default (0, 0)); the average's cache
last ``count_include_pad``. With padding a switch counts the window's taps padded cells included (tap
``kh * KW + kw`` of the window at (oh*S - P, ow*S - P)), and never points at a padded cell: where
every input of a window is -inf, the first in-bounds tap takes it (PyTorch's choice as well).
"""
from __future__ import annotations

from .. import backend, layout
from . import _dispatch
from ._checks import (cached, check_bool, check_cache, check_dy_dtype, check_float, check_floor, check_rank,
                      checked_once, exactly_bool, only_defaults, output_hw, pair, plain, signature, torch_positions)
from ._pool2d_reference import (AvgPool2dCache, MaxPool2dCache, _avg_pool2d_backward_reference,
                                _avg_pool2d_forward_reference, _max_pool2d_backward_reference,
                                _max_pool2d_forward_reference)


def max_pool2d_forward(x, kernel_size=2, stride=None, floor=False, *, padding=0, dilation=1, ceil_mode=False,
                       return_indices=False):
    """``y, cache``: the maximum of each KH x KW window, of shape (N, C, OH, OW). ``floor``: see
    :func:`pooled_hw` (sizes the windows do not tile are an error without it). F.max_pool2d's
    other keywords are taken at their defaults only, as by MaxPool2d (the switches are in the cache).
    ``padding``: an int or (h, w) pair of -inf rows and columns around the input, at most half the window."""
    if type(floor) is not bool:  # (F.max_pool2d's order: its padding here?)
        torch_positions("max_pool2d_forward", "F.max_pool2d", floor=(floor, "padding", 0))
    if (dilation, ceil_mode, return_indices) != (1, False, False):
        only_defaults("max_pool2d_forward", dilation=(dilation, (1, 1)), ceil_mode=(ceil_mode, False),
                      return_indices=(return_indices, False))
    kernel_size, stride, padding = _check_pool_args(x, kernel_size, stride, floor, padding)
    target = backend.kernel_target(x)
    return _dispatch.call("max_pool2d_forward", target, _max_pool2d_forward_reference, x, kernel_size, stride,
                          bool(floor), padding)


def max_pool2d_backward(dy, cache):
    """``dx``: each ``dy`` entry routed to the input pixel that won its window."""
    check_cache(cache, MaxPool2dCache, "max_pool2d_forward")
    _check_pool_dy(dy, cache)
    target = backend.kernel_target(dy, cache.argmax, names=("dy", cached("argmax")))
    dx = _dispatch.call("max_pool2d_backward", target, _max_pool2d_backward_reference, dy, cache)
    return layout.to_channels_last(dx) if cache.channels_last else dx


def avg_pool2d_forward(x, kernel_size=2, stride=None, floor=False, *, padding=0, ceil_mode=False,
                       count_include_pad=True, divisor_override=None):
    """``y, cache``: the mean of each KH x KW window, of shape (N, C, OH, OW); ``floor`` as for
    max pooling; ``padding`` zeros around the input (at most half the window), which count in the
    divisor (kh * kw) with ``count_include_pad=True``, PyTorch's default, and not with False (each
    window divides by its in-bounds taps); F.avg_pool2d's other keywords at their defaults only."""
    if type(floor) is not bool:  # (F.avg_pool2d's order: its padding here?)
        torch_positions("avg_pool2d_forward", "F.avg_pool2d", floor=(floor, "padding", 0))
    if (ceil_mode, divisor_override) != (False, None):
        only_defaults("avg_pool2d_forward", ceil_mode=(ceil_mode, False), divisor_override=(divisor_override, None))
    count_include_pad = check_bool("count_include_pad", count_include_pad)
    kernel_size, stride, padding = _check_pool_args(x, kernel_size, stride, floor, padding)
    target = backend.kernel_target(x)
    return _dispatch.call("avg_pool2d_forward", target, _avg_pool2d_forward_reference, x, kernel_size, stride,
                          bool(floor), padding, count_include_pad or padding == (0, 0))


def avg_pool2d_backward(dy, cache):
    """``dx``: each ``dy`` entry spread evenly over its window."""
    check_cache(cache, AvgPool2dCache, "avg_pool2d_forward")
    _check_pool_dy(dy, cache)
    target = backend.kernel_target(dy)
    dx = _dispatch.call("avg_pool2d_backward", target, _avg_pool2d_backward_reference, dy, cache)
    return layout.to_channels_last(dx) if cache.channels_last else dx


def pooled_hw(x_shape, kernel_size, stride, floor=False, padding=(0, 0)):
    """(OH, OW) of a pooling of an NCHW input. ``floor=False``: ``(H - F)/S + 1`` must be a whole
    number (no silent cropping: the error says which size does not fit, and offers floor=True);
    ``floor=True``: PyTorch's default rule, ``floor((H - F)/S) + 1`` windows, the rows and columns
    past the last window taking no part (their gradient is 0). The window must fit the input either way.
    ``padding`` (h, w) adds 2P to H and W: ``(H + 2P - F)/S + 1``."""
    return output_hw(x_shape, kernel_size, stride, None if tuple(padding) == (0, 0) else padding, floor=bool(floor))


# _check_pool_args's answers, by what its checks read (x's type, shape and dtype, the other
# arguments' values, of exactly the types a key stands for); errors are not memoized
_CHECKED: dict = {}


def _check_pool_args(x, kernel_size, stride, floor=False, padding=None):
    """(kernel_size, stride), and the padding as a checked (h, w) pair after them where one is given;
    memoized (a network, or a gradient check, pools the same few geometries at every call)."""
    return checked_once(_CHECKED,
                        lambda: (signature(x), plain(kernel_size), plain(stride), exactly_bool(floor), plain(padding)),
                        lambda: _checked_pool_args(x, kernel_size, stride, floor, padding))


def _checked_pool_args(x, kernel_size, stride, floor, padding):
    check_floor(floor)
    check_float("x", x)
    check_rank("x", x, 4, "N, C, H, W")
    kernel_size = pair("kernel_size", kernel_size, minimum=1)
    stride = kernel_size if stride is None else pair("stride", stride, minimum=1)
    pad = (0, 0) if padding is None or (type(padding) is int and padding == 0) else \
        check_pool_padding(padding, kernel_size)
    pooled_hw(x.shape, kernel_size, stride, floor, pad)
    return (kernel_size, stride) if padding is None else (kernel_size, stride, pad)


def check_pool_padding(padding, kernel_size):
    """``padding`` as an (h, w) pair, each at most half its window (PyTorch's rule: a wider padding
    would make windows of padding only)."""
    pad = pair("padding", padding, minimum=0)
    if pad[0] > kernel_size[0] // 2 or pad[1] > kernel_size[1] // 2:
        half = (kernel_size[0] // 2, kernel_size[1] // 2)
        raise ValueError(f"padding={padding!r} is more than half of kernel_size={kernel_size}: pooling padding must be "
                         f"at most kernel_size // 2 in each direction (PyTorch's rule: pad should be at most half of "
                         f"effective kernel size), here at most {half[0] if half[0] == half[1] else half}")
    return pad


def _check_pool_dy(dy, cache):
    check_float("dy", dy)
    n, c, h, w = cache.x_shape
    # The floor rule: the forward checked the exact one when it was asked to, and both agree then.
    expected = (n, c) + pooled_hw(cache.x_shape, cache.kernel_size, cache.stride, True, cache.padding)
    if tuple(dy.shape) != expected:
        raise ValueError(f"dy must have the forward output's shape {expected}, got {tuple(dy.shape)}")
    if cache.dtype is not None:
        check_dy_dtype(dy, cache.dtype)


# This op's CUDA kernel launchers, for the 'cuda' and 'sim' targets; last, as they import the names above.
from . import _launch_pool2d  # noqa: E402,F401  (registration)
