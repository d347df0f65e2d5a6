"""The launch log: which kernels ran, and which ops fell back to their reference."""
from __future__ import annotations

import contextlib
import contextvars
from typing import NamedTuple

from . import _sources


class Launch(NamedTuple):
    """One kernel launch: its entry point, grid, block, target ('cuda' or 'sim') and build
    ('float', 'float+tf32', 'double', 'bfloat16', 'float16': the precision it ran in)."""
    name: str
    grid: tuple
    block: tuple
    target: str
    build: str = "float"


class LaunchLog(list):
    """The :class:`Launch` records of every kernel launched while :func:`launch_log` was open, in
    order, and in ``dispatches`` one ``(op, target, path)`` per op dispatched on a kernel target,
    where ``path`` is 'kernel' (its launcher ran), 'reference' (an op without kernels: its
    NumPy/CuPy reference ran), or a fallback of an op that has kernels: 'declined' (its launcher
    did not take the case) or 'no-launcher' (none registered for this target)."""

    def __init__(self):
        super().__init__()
        self.dispatches = []

    @property
    def names(self) -> list:
        return [rec.name for rec in self]

    def clear(self):
        super().clear()
        self.dispatches.clear()


_launch_logs: contextvars.ContextVar[tuple] = contextvars.ContextVar("gpuconv_launch_logs", default=())


@contextlib.contextmanager
def launch_log():
    """``with launch_log() as log: ...`` collects every launch on 'cuda' and 'sim' in ``log``
    (nested logs each see the launches of their block), so a caller can tell that the kernels
    ran, and which variant, rather than a reference path."""
    log = LaunchLog()
    token = _launch_logs.set(_launch_logs.get() + (log,))
    try:
        yield log
    finally:
        _launch_logs.reset(token)


def _log_launch(kernel, grid, block, target, dtype, tf32):
    rec = Launch(kernel, tuple(int(g) for g in grid), tuple(int(b) for b in block), target,
                 _sources._label(dtype, tf32))
    for log in _launch_logs.get():
        log.append(rec)


def fallbacks(log: LaunchLog) -> list:
    """The dispatches in ``log`` where an op that has kernels ran its reference instead."""
    return [d for d in log.dispatches if d[2] in ("declined", "no-launcher")]


def log_dispatch(op_name: str, target: str, path: str):
    """Note in the open launch logs that ``op_name`` ran on ``target`` by ``path``."""
    for log in _launch_logs.get():
        log.dispatches.append((op_name, target, path))
