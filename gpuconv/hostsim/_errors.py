"""Exceptions raised by the host simulator."""
from __future__ import annotations


class SimulatorError(RuntimeError):
    """A kernel failed on the host simulator (setup, __trap, a sanitized module in a plain process)."""


class CompileError(SimulatorError):
    """g++ rejected the kernel source; the message carries g++'s diagnostics (file:line from #line)."""

    def __init__(self, message: str, compiler_output: str = ""):
        super().__init__(message)
        self.compiler_output = compiler_output


class BarrierDivergence(SimulatorError):
    """Threads of a block disagreed at __syncthreads or a warp collective (the GPU would hang
    or compute garbage); the message names the block, the threads and the barrier's line."""
