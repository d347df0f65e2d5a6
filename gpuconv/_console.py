"""The console the command line and the trainer write their progress and messages to."""
from __future__ import annotations

import errno
import os
import shlex
import subprocess
import sys


def command_line(words, windows=None) -> str:
    """``words`` as one line to paste into the shell: quoted for a POSIX shell (``shlex.join``),
    or on Windows (``windows``: default, whether this is Windows) as cmd.exe splits a line, double
    quotes around a word with a space or a quote and none otherwise (``subprocess.list2cmdline``),
    which PowerShell reads alike but for a quoted first word (a program path with a space, which
    it runs as ``& "..."``); shlex's single quotes, around every word with a backslash (every
    Windows path), are part of the word to cmd.exe and make a first word an expression to PowerShell."""
    windows = os.name == "nt" if windows is None else windows
    return subprocess.list2cmdline([str(w) for w in words]) if windows else shlex.join(str(w) for w in words)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def silence(stream) -> None:
    """Point ``stream``'s file descriptor at /dev/null (its reader is gone): later writes, and the
    interpreter's last flush, succeed instead of raising BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


class _Console:
    """Where the trainer's progress goes (``sys.stderr`` as it is at each write). A write that
    fails (the reading end of a pipe gone, as with ``nohup gpuconv train ... | tee log`` after the
    ssh session dropped; a closed terminal) points stderr at /dev/null and training goes on: it
    still saves its checkpoints, where an uncaught BrokenPipeError would end the run without one."""

    _failed = None  # the stream whose write failed: given up on while it is sys.stderr

    @property
    def broken(self) -> bool:
        """Whether the current sys.stderr failed a write (a stream put in its place is written to:
        a notebook or a test that swapped a closed one in once does not silence later runs)."""
        return self._failed is not None and self._failed is sys.stderr

    def _guard(self, op):
        if self.broken or sys.stderr is None:  # None: started with stderr closed (2>&-), or pythonw
            return None
        try:
            return op()
        except BlockingIOError:  # a full non-blocking pipe: this line is dropped, the next may pass
            return None
        except (OSError, ValueError) as exc:  # ValueError: a closed stream
            if isinstance(exc, OSError) and exc.errno not in (errno.EPIPE, errno.EIO, errno.EBADF):
                raise
            self._failed = sys.stderr
            silence(sys.stderr)
            return None

    def write(self, text):
        self._guard(lambda: sys.stderr.write(text))
        return len(text)

    def flush(self):
        self._guard(lambda: sys.stderr.flush())

    def isatty(self):
        return not self.broken and sys.stderr is not None and _is_terminal(sys.stderr)

    def __getattr__(self, name):  # fileno, encoding, ... for tqdm
        return getattr(sys.stderr, name)


CONSOLE = _Console()
