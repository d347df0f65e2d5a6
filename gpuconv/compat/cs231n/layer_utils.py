"""``cs231n/layer_utils.py`` on gpuconv: the assignment's "sandwich" layers.

Each is the assignment's composition of :mod:`.layers` and :mod:`.fast_layers` functions, with
the assignment's nested caches (``(fc_cache, relu_cache)``, ``(conv_cache, relu_cache)``,
``(conv_cache, bn_cache, relu_cache)``, ``(conv_cache, relu_cache, pool_cache)``). Under
``use_device('cuda')`` a sandwich is one trip to the device: its inputs go up once, the
intermediate activations stay there (so their caches hold device arrays), and only the output
comes back; hand these caches to the backward functions here.
"""
from __future__ import annotations

from ._basic import affine_backward, affine_forward, relu_backward, relu_forward, conv_backward
from ._call import Call, plain_dtype
from ._norm import spatial_batchnorm_backward, spatial_batchnorm_forward
from .fast_layers import conv_backward_fast, conv_forward_fast, max_pool_backward_fast, max_pool_forward_fast

__all__ = [
    "affine_relu_forward", "affine_relu_backward", "conv_relu_forward", "conv_relu_backward",
    "conv_bn_relu_forward", "conv_bn_relu_backward", "conv_relu_pool_forward", "conv_relu_pool_backward",
]


def _rehost(cache, items):
    """A sub-cache whose items are the caller's own arrays (the device copies stay in ``.ops``)."""
    return type(cache).__new__(type(cache), items, *_lazy_of(cache), cache.ops, cache.dtype, cache.device)


def _lazy_of(cache):
    return (cache._lazy,) if hasattr(cache, "_lazy") else ()


def _plain(dout, first_cache):
    """Whether a sandwich's backward would open a Call that changes nothing (a host float ``dout``,
    its forward on the host). Then, as where its forward took :func:`plain_dtype`'s path, the
    layers are called directly: their own calls hold the caller's arrays already, with no device
    copies to keep apart (the sub-caches a Call's path rebuilds around the caller's arrays)."""
    return getattr(first_cache, "device", None) is None and plain_dtype(dout) is not None


def affine_relu_forward(x, w, b):
    """Affine then ReLU; cache ``(fc_cache, relu_cache)``."""
    if plain_dtype(x, w, b) is not None:  # the layers called directly (see _plain)
        a, fc_cache = affine_forward(x, w, b)
        out, relu_cache = relu_forward(a)
        return out, (fc_cache, relu_cache)
    with Call(x, w, b) as c:
        a, fc_cache = affine_forward(c.arg(x), c.param(w), c.param(b))
        out, relu_cache = relu_forward(a)
        return c.out(out), (_rehost(fc_cache, (x, w, b)), relu_cache)


def affine_relu_backward(dout, cache):
    """``dx, dw, db`` for ``affine_relu_forward``."""
    fc_cache, relu_cache = cache
    if _plain(dout, fc_cache):
        return affine_backward(relu_backward(dout, relu_cache), fc_cache)
    with Call(dout, device=getattr(fc_cache, "device", None)) as c:
        dx, dw, db = affine_backward(relu_backward(c.arg(dout), relu_cache), fc_cache)
        return c.out(dx), c.out(dw), c.out(db)


def conv_relu_forward(x, w, b, conv_param):
    """Convolution then ReLU; cache ``(conv_cache, relu_cache)``."""
    if plain_dtype(x, w, b) is not None:
        a, conv_cache = conv_forward_fast(x, w, b, conv_param)
        out, relu_cache = relu_forward(a)
        return out, (conv_cache, relu_cache)
    with Call(x, w, b) as c:
        a, conv_cache = conv_forward_fast(c.arg(x), c.param(w), c.param(b), conv_param)
        out, relu_cache = relu_forward(a)
        return c.out(out), (_rehost(conv_cache, (x, w, b, conv_param)), relu_cache)


def conv_relu_backward(dout, cache):
    """``dx, dw, db`` for ``conv_relu_forward``."""
    conv_cache, relu_cache = cache
    if _plain(dout, conv_cache):
        return conv_backward_fast(relu_backward(dout, relu_cache), conv_cache)
    with Call(dout, device=getattr(conv_cache, "device", None)) as c:
        dx, dw, db = conv_backward_fast(relu_backward(c.arg(dout), relu_cache), conv_cache)
        return c.out(dx), c.out(dw), c.out(db)


def conv_bn_relu_forward(x, w, b, gamma, beta, conv_param, bn_param):
    """Convolution, spatial batch norm, ReLU; cache ``(conv_cache, bn_cache, relu_cache)``."""
    if plain_dtype(x, w, b, gamma, beta) is not None:  # the layers called directly (see _plain)
        a, conv_cache = conv_forward_fast(x, w, b, conv_param)
        an, bn_cache = spatial_batchnorm_forward(a, gamma, beta, bn_param)
        out, relu_cache = relu_forward(an)
        return out, (conv_cache, bn_cache, relu_cache)
    with Call(x, w, b, gamma, beta) as c:
        a, conv_cache = conv_forward_fast(c.arg(x), c.param(w), c.param(b), conv_param)
        an, bn_cache = spatial_batchnorm_forward(a, c.param(gamma), c.param(beta), bn_param)
        out, relu_cache = relu_forward(an)
        bn_cache = _rehost(bn_cache, (bn_cache[0], gamma, beta))
        return c.out(out), (_rehost(conv_cache, (x, w, b, conv_param)), bn_cache, relu_cache)


def conv_bn_relu_backward(dout, cache):
    """``dx, dw, db, dgamma, dbeta`` for ``conv_bn_relu_forward``."""
    conv_cache, bn_cache, relu_cache = cache
    if _plain(dout, conv_cache):
        da, dgamma, dbeta = spatial_batchnorm_backward(relu_backward(dout, relu_cache), bn_cache)
        return (*conv_backward_fast(da, conv_cache), dgamma, dbeta)
    with Call(dout, device=getattr(conv_cache, "device", None)) as c:
        dan = relu_backward(c.arg(dout), relu_cache)
        da, dgamma, dbeta = spatial_batchnorm_backward(dan, bn_cache)
        dx, dw, db = conv_backward_fast(da, conv_cache)
        return c.out(dx), c.out(dw), c.out(db), c.out(dgamma), c.out(dbeta)


def conv_relu_pool_forward(x, w, b, conv_param, pool_param):
    """Convolution, ReLU, max pooling; cache ``(conv_cache, relu_cache, pool_cache)``."""
    if plain_dtype(x, w, b) is not None:
        a, conv_cache = conv_forward_fast(x, w, b, conv_param)
        s, relu_cache = relu_forward(a)
        out, pool_cache = max_pool_forward_fast(s, pool_param)
        return out, (conv_cache, relu_cache, pool_cache)
    with Call(x, w, b) as c:
        a, conv_cache = conv_forward_fast(c.arg(x), c.param(w), c.param(b), conv_param)
        s, relu_cache = relu_forward(a)
        out, pool_cache = max_pool_forward_fast(s, pool_param)
        return c.out(out), (_rehost(conv_cache, (x, w, b, conv_param)), relu_cache, pool_cache)


def conv_relu_pool_backward(dout, cache):
    """``dx, dw, db`` for ``conv_relu_pool_forward``."""
    return conv_relu_pool_backward_to(dout, cache, need_dx=True)


def conv_relu_pool_backward_to(dout, cache, need_dx):
    """As conv_relu_pool_backward; ``need_dx=False`` skips the input gradient (dx is None)."""
    conv_cache, relu_cache, pool_cache = cache
    if _plain(dout, conv_cache):
        ds = max_pool_backward_fast(dout, pool_cache)
        return conv_backward(relu_backward(ds, relu_cache), conv_cache, need_dx=need_dx)
    with Call(dout, device=getattr(conv_cache, "device", None)) as c:
        ds = max_pool_backward_fast(c.arg(dout), pool_cache)
        dx, dw, db = conv_backward(relu_backward(ds, relu_cache), conv_cache, need_dx=need_dx)
        return c.out(dx), c.out(dw), c.out(db)
