"""gpuconv: convolutional networks on NumPy and CuPy, with custom CUDA kernels.

The array type decides where work runs: NumPy arrays use the NumPy reference (or the CUDA
kernels on the host simulator under ``Device('sim')``), CuPy arrays run the CUDA kernels.
"""
from .backend import (Device, asnumpy, cuda_available, cuda_status, default_device, device_of,
                      get_array_module, get_default_device, item, set_default_device, to_device)

__version__ = "0.1.0"

__all__ = ["Device", "asnumpy", "cuda_available", "cuda_status", "default_device", "device_of",
           "get_array_module", "get_default_device", "item", "set_default_device", "to_device",
           "__version__"]
