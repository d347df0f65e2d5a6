"""``Dropout``: inverted dropout whose masks come from one seeded NumPy generator on every
device, with the mask key read from the device while a captured CUDA graph holds the layer."""
from __future__ import annotations

import numbers

import numpy as np

from .. import ops
from ..backend import device_id, get_array_module
from ..counter_rng import check_seed
from ._construct import _Replayed, _check_inplace, _layer_rng
from .module import Layer


class Dropout(Layer):
    """Inverted dropout: in training, zero each value with probability ``p`` and scale the rest
    by 1/(1-p); identity in eval mode. ``seed`` (an int) makes the masks reproducible; ``inplace``,
    as PyTorch spells it, changes nothing (the output is a new array).

    The layer owns ONE ``numpy.random.Generator`` (seeded by ``seed``) whatever the device: each
    training forward draws one 64-bit key from it on the host, and the mask is a hash of (key,
    element index) computed where the data lives (see :mod:`gpuconv.ops.dropout`). So the same
    seed gives the same masks on 'cpu', 'sim' and 'cuda', and the trainer's checkpoints save and
    restore the generator (under ``rng/model.<name>._rngs.numpy``) for a bit-exact resume.

    A step replayed as a CUDA graph (:class:`gpuconv.graphs.StepGraph`) runs no Python, so a key
    drawn in the forward would be the capture's at every replay. While such a graph holds the
    layer, its training forward draws nothing: it reads the key from a one-element device array,
    which :meth:`write_key` fills before each step with the next key of the same generator. The
    keys, hence the masks, are the eager run's, one per step, and a checkpoint's generator resumes
    them exactly."""

    _registers_attributes = False
    p = _Replayed()  # a change while a captured step holds the layer is refused (the kernel takes it by value)
    _key_at = None          # write_key's one-element uint64 array: the key the training forward reads on the device
    _key_on_device = False  # whether the training forward reads _key_at (a captured step holds the layer)
    _key_written = False    # whether write_key wrote a key that no forward has read yet

    def __init__(self, p=0.5, inplace=False, *, seed=None):
        super().__init__()
        _check_inplace("Dropout", inplace)
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout(p={p!r}): p is the DROP probability and must be in [0, 1) "
                             "(p=1 would leave nothing to rescale); use p=0.5 for the usual rate")
        if seed is not None:
            seed = check_seed(seed)
        self.p, self.seed = float(p), seed
        # Under the name checkpoints have always used (named_generators: "_rngs.numpy").
        self._rngs = {"numpy": _layer_rng(seed)}

    def _own_generators(self):
        return [("_rngs.numpy", self._rngs["numpy"])]

    def _rng(self, xp=None):
        """The mask-key generator (``xp`` is accepted for the trainer's call and ignored: one
        NumPy generator serves NumPy and CuPy inputs)."""
        return self._rngs["numpy"]

    def forward(self, x):
        if self._key_on_device and self.training and self.p > 0:
            y, cache = ops.dropout_forward(x, p=self.p, key_at=self._written_key())
        else:
            rng = self._rng() if self.training else None
            y, cache = ops.dropout_forward(x, p=self.p, training=self.training, rng=rng)
        self._keep(cache)
        return y

    def key_on_device(self, on=True):
        """Make the training forward read its mask key from the device array :meth:`write_key`
        fills (``on``), or draw it itself again (``on=False``). A captured step's owner
        (``StepGraph.for_optimizer``) switches it on while it holds the layer and off at release."""
        self._key_on_device = bool(on)
        self._key_written = False

    def write_key(self, xp=np):
        """Draw the next mask key from the layer's generator (the draw an eager training forward
        makes) and write it into the one-element uint64 array of ``xp`` (numpy, or cupy on the
        current GPU) that the training forward reads while :meth:`key_on_device` is on: a fill,
        launched with the key as its argument, no host-to-device transfer. Called before each
        step, outside a captured graph, so that every replay reads a new key."""
        from ..ops.dropout import draw_key
        key = draw_key(self._rng())
        if self._key_at is None or get_array_module(self._key_at) is not xp \
                or (xp is not np and device_id(self._key_at) != xp.cuda.Device().id):  # (a model moved to another GPU)
            self._key_at = xp.zeros(1, np.uint64)
        self._key_at.fill(key)
        self._key_written = True

    def _written_key(self):
        if not self._key_written:
            raise RuntimeError(
                "Dropout: its mask key is read from the device (key_on_device: a captured training step holds "
                "the layer), but no key was written for this forward: call write_key() before each step (the "
                "graph's before does), and use a Dropout layer once per forward pass (a second use would "
                "reuse the key, hence the mask; give each place a Dropout of its own)")
        self._key_written = False
        return self._key_at

    def __getstate__(self):
        # A copy is held by no graph: it draws its keys itself, and makes its own key array.
        state = super().__getstate__()
        for name in ("_key_at", "_key_on_device", "_key_written"):
            state.pop(name, None)
        return state

    def backward(self, dy, need_dx=True):
        return ops.dropout_backward(dy, self._take_cache())

    def extra_repr(self):
        return f"p={self.p}"
