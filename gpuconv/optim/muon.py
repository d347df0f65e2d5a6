"""Muon, momentum orthogonalized by Newton-Schulz iterations (:func:`newton_schulz`), for matrices
and filter banks; its matrix products run on gpuconv's own GEMM kernels on 'cuda' and 'sim'
(:func:`_matmul`), so that a step a CUDA graph captures holds no cuBLAS call."""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module, kernel_target
from ..ops._checks import check_bool
from .optimizer import Optimizer, _nonneg


NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g, steps=3, eps=1e-7):
    """An approximate orthogonalization of the matrix ``g`` (rows x columns): ``steps`` quintic
    Newton-Schulz iterations ``X = a X + (b A + c A^2) X``, ``A = X X^T``, from ``g / ||g||_F``
    (Muon's coefficients, chosen for speed over exactness: the singular values land roughly in
    [0.5, 1.5] rather than at 1). Computed in float32 (float64 for float64 input), whatever the
    storage type, per gpuconv's precision rule (airbench runs it in bfloat16); on 'cuda' and
    'sim' the products run on gpuconv's GEMM kernels."""
    xp = get_array_module(g)
    dt = np.float64 if g.dtype == np.float64 else np.float32
    x = g.astype(dt)
    x = x / (xp.sqrt(xp.sum(x * x)) + dt(eps))
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    a, b, c = (dt(v) for v in NS_COEFFS)
    for _ in range(steps):
        A = _matmul(x, x.T)
        x = a * x + _matmul(b * A + c * _matmul(A, A), x)
    return x.T if tall else x


def _matmul(p, q):
    """``p @ q`` (2-D): on 'cuda' and 'sim' through gpuconv's own GEMM kernels in strict float32
    (float64 for float64; the linear layer's), so that no cuBLAS call sits in a step a CUDA graph
    captures (CuPy refuses one there), nor anywhere on a GPU (the cuda12/cuda13 installs, CuPy and
    NVRTC, have no cuBLAS); NumPy's matmul elsewhere."""
    if kernel_target(p, q) is None:
        return p @ q
    from ..ops import linear_forward
    return linear_forward(get_array_module(p).ascontiguousarray(p), get_array_module(q).ascontiguousarray(q.T),
                          precision="fp32")[0]


class Muon(Optimizer):
    """Muon (momentum orthogonalized by Newton-Schulz), as airbench94_muon uses it for the conv
    filters: ``b = momentum * b + g``; ``g = g + momentum * b`` (Nesterov) or ``b``; with
    ``normalize`` the weight is first rescaled to ``||p||_F = sqrt(p.shape[0])``; then
    ``p -= lr * newton_schulz(g.reshape(p.shape[0], -1))``. For parameters of 2 or more
    dimensions (a filter bank is a matrix of rows ``out_channels``); give the biases, the batch
    norm shifts and the head to an SGD."""

    _hyper = ("momentum", "nesterov", "steps", "normalize")
    _slots = ("momentum_buffer",)

    device_lrs = True

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, steps=3, normalize=True):
        super().__init__(params, lr)
        for i, p in enumerate(self.params):
            self._check_param(i, p)
        self.momentum = _nonneg("momentum", momentum)
        self.nesterov = check_bool("nesterov", nesterov)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1 (Newton-Schulz iterations), got {steps!r}")
        self.steps, self.normalize = int(steps), check_bool("normalize", normalize)
        self._finish_groups()

    def _check_param(self, index, p):
        if len(p.shape) < 2:
            raise ValueError(f"Muon: params[{index}] ({p.name!r}) has shape {tuple(p.shape)}; Muon orthogonalizes "
                             "matrices and filter banks (2 or more dimensions): give 1-D parameters to SGD")

    def _check_group(self, gi):
        self._check_nesterov(gi)
        if self._groups[gi].get("steps", self.steps) < 1:
            raise ValueError(f"Muon: parameter group {gi}'s steps must be >= 1 (Newton-Schulz iterations)")

    def _update(self, p, state, h):
        xp = get_array_module(p.data)
        g = p.grad
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = xp.zeros_like(g)
        buf *= h["momentum"]
        buf += g
        g = g + h["momentum"] * buf if h["nesterov"] else buf
        if h["normalize"]:
            # (a weight of all zeros, which has no direction to keep, is left as it is)
            norm = xp.sqrt(xp.sum(p.data.astype(np.float64) ** 2))
            p.data *= xp.where(norm > 0, math.sqrt(p.shape[0]) / xp.where(norm > 0, norm, 1.0), 1.0).astype(p.dtype)
        update = newton_schulz(g.reshape(g.shape[0], -1), steps=int(h["steps"])).reshape(g.shape)
        # On 'cuda'/'sim' the lr is the group's device value (write_lrs), rounded to the update's
        # type as a Python float would be: the same bits, and a replayed step follows the schedule.
        lr = h["lr"] if self._lrs is None else self._lr_of[id(p)].astype(update.dtype)
        p.data -= (lr * update).astype(p.dtype)
