"""``gpuconv.nn``: the layers under the name PyTorch users reach for (``from gpuconv import nn``),
PyTorch's initializers as ``nn.init`` (:mod:`gpuconv.init`) and its gradient clipping as
``nn.utils`` (``nn.utils.clip_grad_norm_``, ``nn.utils.clip_grad_value_``)."""
import sys as _sys

from . import init  # noqa: F401
from ._namespace import namespace as _namespace
from .layers import *  # noqa: F401,F403
from .layers import __all__  # noqa: F401
from .layers import clip_grad_norm_ as _clip_grad_norm_
from .layers import clip_grad_value_ as _clip_grad_value_

_sys.modules[__name__ + ".init"] = init  # (from gpuconv.nn.init import kaiming_normal_, as from torch.nn.init)
utils = _namespace(__name__ + ".utils", "``gpuconv.nn.utils``: PyTorch's ``torch.nn.utils`` names that gpuconv "
                   "has: gradient clipping, on the gradients' device.",
                   {"clip_grad_norm_": _clip_grad_norm_, "clip_grad_value_": _clip_grad_value_})
