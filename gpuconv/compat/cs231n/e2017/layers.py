"""``cs231n/layers.py`` of the 2017 edition on gpuconv: no layer or group norm, and dropout's ``p``
is the probability of DROPPING a unit (mask ``(np.random.rand(*x.shape) >= p) / (1 - p)``)."""
from __future__ import annotations

from .._basic import (affine_backward, affine_forward, conv_backward_naive, conv_forward_naive,
                      max_pool_backward_naive, max_pool_forward_naive, relu_backward, relu_forward, softmax_loss,
                      svm_loss)
from .._norm import (batchnorm_backward, batchnorm_backward_alt, batchnorm_forward, dropout_backward,
                     spatial_batchnorm_backward, spatial_batchnorm_forward)
from .._norm import dropout_forward_2017 as dropout_forward

__all__ = [
    "affine_forward", "affine_backward", "relu_forward", "relu_backward",
    "batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt", "dropout_forward", "dropout_backward",
    "conv_forward_naive", "conv_backward_naive", "max_pool_forward_naive", "max_pool_backward_naive",
    "spatial_batchnorm_forward", "spatial_batchnorm_backward", "svm_loss", "softmax_loss",
]
