"""File helpers shared by the on-disk caches (the CUDA kernel binaries, the simulator's builds)."""
from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile


def chmod_like_a_new_file(fd, path: pathlib.Path) -> None:
    """Give the temporary file ``fd`` that will replace ``path`` the mode ``path`` has, else the one
    ``open()`` would give (0666 less the umask): mkstemp creates it 0600, and after the rename a
    checkpoint, a plot or a shared kernel cache would be unreadable to the group and others."""
    if not hasattr(os, "fchmod"):  # Windows: no POSIX modes to fix
        return
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.fchmod(fd, mode)


def write_atomic(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``:
    a concurrent reader sees no file or the whole file, never part of one; the file gets the mode a
    plain write would give it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        chmod_like_a_new_file(fd, path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


LOCK_NAME = ".gpuconv-train.lock"


class DirectoryLocked(RuntimeError):
    """Another live process holds the run directory's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def directory_lock(directory: pathlib.Path, what: str = "gpuconv train"):
    """Hold ``directory``'s lock file for the block: a second process that tries while this one
    runs gets :class:`DirectoryLocked` naming it, instead of interleaving its files with ours. A
    lock left by a process that died (its pid is gone) is taken over."""
    directory = pathlib.Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file, not a directory: give --out a directory path")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pid = None
            if pid is not None and pid != os.getpid() and _alive(pid) and attempt == 0:
                raise DirectoryLocked(f"another {what} (pid {pid}) is writing to {directory}: wait for it to finish, "
                                      f"or choose another --out (remove {path} if that process is gone)") from None
            with contextlib.suppress(FileNotFoundError):  # a dead owner's lock: take it over
                path.unlink()
    else:
        raise DirectoryLocked(f"could not take the lock {path}; remove it if no {what} is running")
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
