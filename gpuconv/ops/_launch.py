"""Registers the CUDA kernel launchers of every op (imported at the end of gpuconv.ops).

Each ``_launch_<op>.py`` sits beside ``<op>.py`` and registers, through
:func:`gpuconv.ops._dispatch.register_launcher`, the kernels for the 'cuda' and 'sim' targets.
"""
from . import (_launch_batchnorm, _launch_conv2d, _launch_dropout, _launch_gelu, _launch_pool2d,  # noqa: F401
               _launch_relu)  # (registration side effects)
