"""``cs231n/layers.py`` on gpuconv (2018 edition on): the assignment's layer functions.

Same names, arguments, parameter dicts and return values; the arithmetic is :mod:`gpuconv.ops`'
(see :mod:`gpuconv.compat.cs231n` for dtypes, devices and caches). ``dropout_forward``'s ``p`` is
the probability of keeping a unit; the 2017 edition's names and semantics are in
``gpuconv.compat.cs231n.e2017.layers``.
"""
from __future__ import annotations

from ._basic import (affine_backward, affine_forward, conv_backward_naive, conv_forward_naive,
                     max_pool_backward_naive, max_pool_forward_naive, relu_backward, relu_forward, softmax_loss,
                     svm_loss)
from ._norm import (batchnorm_backward, batchnorm_backward_alt, batchnorm_forward, dropout_backward,
                    dropout_forward, layernorm_backward, layernorm_forward, spatial_batchnorm_backward,
                    spatial_batchnorm_forward, spatial_groupnorm_backward, spatial_groupnorm_forward)

__all__ = [
    "affine_forward", "affine_backward", "relu_forward", "relu_backward",
    "batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt",
    "layernorm_forward", "layernorm_backward", "dropout_forward", "dropout_backward",
    "conv_forward_naive", "conv_backward_naive", "max_pool_forward_naive", "max_pool_backward_naive",
    "spatial_batchnorm_forward", "spatial_batchnorm_backward",
    "spatial_groupnorm_forward", "spatial_groupnorm_backward",
    "svm_loss", "softmax_loss",
]
