"""gpuconv: convolutional networks on NumPy and CuPy, with custom CUDA kernels.

The array type decides where work runs: NumPy arrays use the NumPy reference (or the CUDA
kernels on the host simulator under ``Device('sim')``), CuPy arrays run the CUDA kernels.
Arrays are float32 (default), float64, bfloat16 (``gpuconv.bfloat16``) or float16; the precision
rule and the TF32 mode (``set_precision``/``get_precision``/``precision_mode``) are in
:mod:`gpuconv.precision`. Activations may be channels_last (NHWC memory, still NCHW-shaped:
``to_channels_last``), the layout the tensor-core convolutions read; see :mod:`gpuconv.layout`.
"""
from .backend import (Device, DeviceMismatchError, asnumpy, cuda_available, cuda_status, default_device,
                      device_of, get_array_module, get_default_device, item, set_default_device, to_device)
from .layout import is_channels_last, to_channels_last, to_contiguous
from .ops._checks import DtypeMismatchError
from .precision import bfloat16, get_precision, precision_mode, set_precision

__version__ = "0.1.0"


def load_model(path, device=None):
    """The trained model of a ``gpuconv train`` checkpoint: ``load_model(p).predict(uint8_images)``
    gives class probabilities (see :mod:`gpuconv.inference`)."""
    from .inference import load_model as _load
    return _load(path, device)


# The submodules, imported at their first use as attributes (``import gpuconv; gpuconv.nn.Conv2d``,
# as ``torch.nn``), so that ``import gpuconv`` stays light.
_SUBMODULES = ("amp", "checkpoint", "cli", "compat", "data", "gradcheck", "graphs", "hostsim", "inference", "kernels",
               "layers", "layout", "lookahead", "models", "monitor", "nn", "ops", "optim", "plots", "precision", "recipes",
               "summary", "syncguard", "trainer")


def __getattr__(name):
    if name in _SUBMODULES:
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'gpuconv' has no attribute {name!r}")


__all__ = ["Device", "DeviceMismatchError", "DtypeMismatchError", "asnumpy", "cuda_available", "cuda_status", "default_device", "device_of",
           "get_array_module", "get_default_device", "item", "set_default_device", "to_device",
           "is_channels_last", "to_channels_last", "to_contiguous", "bfloat16", "get_precision", "precision_mode", "set_precision", "load_model", "__version__"]
