"""Functional ops, forward and backward, written once for NumPy and CuPy arrays.

Each ``*_forward`` returns ``(y, cache)`` and each ``*_backward`` takes ``(dy, cache)``; NCHW
tensors, OIHW weights, float32 by default, float64 for gradient checks, bfloat16 and float16 by
the precision rule of :mod:`gpuconv.precision` (computed in float32, rounded once); conv2d and
linear also take ``precision='tf32'`` on float32. Every op validates
its arguments, then runs a CUDA kernel launcher when one is registered for the arrays' target
(see ``gpuconv.ops._dispatch``), else the NumPy/CuPy reference beside it.
"""
from ._checks import conv_output_size
from ._dispatch import get_launcher, register_launcher
from .activations import (LeakyReluCache, SigmoidCache, SiluCache, TanhCache, leaky_relu_backward, leaky_relu_forward,
                          sigmoid_backward, sigmoid_forward, silu_backward, silu_forward, tanh_backward, tanh_forward)
from .adaptive_pool2d import (AdaptivePool2dCache, adaptive_avg_pool2d_backward, adaptive_avg_pool2d_forward,
                              adaptive_max_pool2d_backward, adaptive_max_pool2d_forward)
from .channel_gate import (ChannelGateCache, channel_gate_backward_data, channel_gate_backward_gate,
                           channel_gate_forward)
from .channel_shuffle import ChannelShuffleCache, channel_shuffle_backward, channel_shuffle_forward
from .batchnorm import BatchNorm2dCache, batchnorm2d_backward, batchnorm2d_forward
from .conv2d import Conv2dCache, conv2d_backward, conv2d_forward
from .conv_transpose2d import ConvTranspose2dCache, conv_transpose2d_backward, conv_transpose2d_forward
from .dropout import DropoutCache, dropout_backward, dropout_forward
from .gelu import GeluCache, gelu_backward, gelu_forward
from .groupnorm import GroupNormCache, groupnorm_backward, groupnorm_forward
from .linear import LinearCache, linear_backward, linear_forward
from .loss import check_labels, softmax_cross_entropy
from .lp_pool2d import LPPool2dCache, lp_pool2d_backward, lp_pool2d_forward
from .narrow import NarrowCache, narrow_backward, narrow_forward
from .pad import PadCache, pad_backward, pad_forward
from .pool2d import (AvgPool2dCache, MaxPool2dCache, avg_pool2d_backward, avg_pool2d_forward,
                     max_pool2d_backward, max_pool2d_forward)
from .relu import ReluCache, relu_backward, relu_forward
from .scale import ScaleCache, scale_backward, scale_forward

__all__ = [
    "conv2d_forward", "conv2d_backward", "conv_transpose2d_forward", "conv_transpose2d_backward",
    "ConvTranspose2dCache",
    "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
    "lp_pool2d_forward", "lp_pool2d_backward", "LPPool2dCache",
    "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward", "adaptive_max_pool2d_forward",
    "adaptive_max_pool2d_backward", "AdaptivePool2dCache",
    "relu_forward", "relu_backward",
    "gelu_forward", "gelu_backward", "GeluCache",
    "leaky_relu_forward", "leaky_relu_backward", "LeakyReluCache",
    "sigmoid_forward", "sigmoid_backward", "SigmoidCache",
    "tanh_forward", "tanh_backward", "TanhCache", "silu_forward", "silu_backward", "SiluCache",
    "scale_forward", "scale_backward", "ScaleCache",
    "pad_forward", "pad_backward", "PadCache",
    "channel_shuffle_forward", "channel_shuffle_backward", "ChannelShuffleCache",
    "narrow_forward", "narrow_backward", "NarrowCache",
    "channel_gate_forward", "channel_gate_backward_gate", "channel_gate_backward_data", "ChannelGateCache",
    "linear_forward", "linear_backward",
    "softmax_cross_entropy",
    "check_labels",
    "batchnorm2d_forward", "batchnorm2d_backward",
    "groupnorm_forward", "groupnorm_backward", "GroupNormCache",
    "dropout_forward", "dropout_backward",
    "Conv2dCache", "MaxPool2dCache", "AvgPool2dCache", "ReluCache", "LinearCache", "BatchNorm2dCache",
    "DropoutCache",
    "conv_output_size", "register_launcher", "get_launcher",
]
