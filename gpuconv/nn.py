"""``gpuconv.nn``: the layers under the name PyTorch users reach for (``from gpuconv import nn``),
and PyTorch's initializers as ``nn.init`` (:mod:`gpuconv.init`)."""
from . import init  # noqa: F401
from .layers import *  # noqa: F401,F403
from .layers import __all__  # noqa: F401
