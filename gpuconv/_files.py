"""File helpers shared by the on-disk caches (the CUDA kernel binaries, the simulator's builds)."""
from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import stat
import tempfile
import threading
import time

from . import _env


def _umask() -> int:
    """The process's umask: read from /proc on Linux (elsewhere reading it means setting it, which
    briefly affects files that other threads create)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def new_file_mode(executable: bool = False) -> int:
    """The mode ``open()`` (0666) or a linker (0777) gives a new file: less the umask, and never
    writable by every user (a cached binary others could change is not loaded, see
    :func:`trusted_binary`)."""
    return (0o777 if executable else 0o666) & ~_umask() & ~0o002


def _uid():
    return os.getuid() if hasattr(os, "getuid") else None


def shared_with_everyone(st) -> bool:
    """Whether a directory of this ``stat`` lets every user replace its files: writable by others
    and not sticky (a sticky one, as /tmp, lets each remove only their own). Never on Windows,
    whose modes say nothing of other users."""
    return _uid() is not None and bool(st.st_mode & 0o002) and not st.st_mode & stat.S_ISVTX


def untrusted_cache_dir(path) -> str | None:
    """Why the binaries of the cache directory ``path`` could be another user's to choose (None:
    they cannot, or it does not exist yet): it lets every user replace its files, or it is a
    sticky shared one whose owner, another user, may rename them."""
    uid = _uid()
    try:
        st = os.stat(path)
    except OSError:
        return None
    if shared_with_everyone(st):
        return f"{path} is writable by every user, who could replace the binaries it holds (chmod o-w)"
    if uid is not None and st.st_mode & 0o002 and st.st_uid not in (uid, 0):
        return f"{path} is writable by every user and belongs to another (uid {st.st_uid}), who may rename its files"
    return None


def make_dirs(path, durable: bool = False) -> pathlib.Path:
    """``path.mkdir(parents=True, exist_ok=True)``, the directories it creates never writable by
    every user whatever the umask (a cache or run directory of ours that others could write to
    would be refused: :func:`trusted_binary`, :func:`check_own_directory`). ``durable``: the
    directories holding the new ones are fsynced, so that a power cut cannot take a run directory
    away with the checkpoints fsynced into it."""
    path = pathlib.Path(path)
    created, p = [], path
    while not os.path.lexists(p) and p.parent != p:
        created.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    if _uid() is not None:
        for p in created:
            with contextlib.suppress(OSError):
                mode = stat.S_IMODE(os.stat(p).st_mode)
                if mode & 0o002:
                    os.chmod(p, mode & ~0o002)
    if durable:
        for p in created:  # (the deepest first: each entry is on disk before the one above is)
            fsync_dir(p.parent)
    return path


def trusted_binary(path) -> bool:
    """Whether the cached binary at ``path`` may be loaded (it is code this process runs): a
    regular file, not a link, not writable by every user, owned by this user, root or the owner of
    its directory, in a directory where others cannot replace it; in a directory every user writes
    to (a sticky one: a shared cache under /tmp), this user's or root's own only."""
    uid = _uid()
    directory = os.path.dirname(os.fspath(path)) or "."
    try:
        st, dst = os.lstat(path), os.stat(directory)
    except OSError:
        return False
    if uid is None:  # Windows: no POSIX owners or modes to go by
        return stat.S_ISREG(st.st_mode)
    if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o002 or untrusted_cache_dir(directory):
        return False
    # in a sticky shared directory (its owner trusted) any user may add files: only ours and root's count
    return st.st_uid in ((uid, 0) if dst.st_mode & 0o002 else (uid, 0, dst.st_uid))


CACHE_LIMIT_MB = 2048  # per cache directory; $GPUCONV_CACHE_LIMIT_MB overrides (0: no limit)
CACHE_KEEP_S = 3600.0   # a file used within the last hour is never pruned (another process may be loading it)


def mark_used(path) -> None:
    """Record a cache hit in the file's modification time, which the pruning reads as its last
    use (access times are not kept on most mounts). Another user's file stays as it is."""
    with contextlib.suppress(OSError):
        os.utime(path)


def cache_limit() -> int | None:
    """Bytes a kernel cache directory may hold before its least recently used binaries are deleted:
    $GPUCONV_CACHE_LIMIT_MB (0: no limit), else 2 GiB."""
    mib = _env.mebibytes("GPUCONV_CACHE_LIMIT_MB", CACHE_LIMIT_MB)
    return None if mib is None else mib << 20


def prune_cache(directory, names, limit_bytes: int | None, keep_s: float = CACHE_KEEP_S) -> int:
    """Deletes the least recently used files of ``directory`` whose names match ``names`` (a
    compiled regular expression: only the cache's own files, whatever else the directory holds)
    once they total more than ``limit_bytes``, oldest first, down to three quarters of it. Files
    used within ``keep_s`` seconds stay; a file this user may not delete is skipped. Returns the
    bytes freed. ``limit_bytes`` None (``cache_limit()`` of 0): no limit."""
    if limit_bytes is None:
        return 0
    entries, total = [], 0
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if not names.match(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    entries.append((st.st_mtime, st.st_size, entry.path))
                    total += st.st_size
    except OSError:
        return 0
    if total <= limit_bytes:
        return 0
    cutoff, target, freed = time.time() - keep_s, limit_bytes * 3 // 4, 0
    for mtime, size, path in sorted(entries):
        if total - freed <= target or mtime > cutoff:
            break
        try:
            os.unlink(path)
        except OSError:
            continue
        freed += size
    return freed


def chmod_like_a_new_file(fd, path: pathlib.Path) -> None:
    """Give the temporary file ``fd`` that will replace ``path`` the mode ``path`` has, else the one
    ``open()`` would give (0666 less the umask): mkstemp creates it 0600, and after the rename a
    checkpoint, a plot or a shared kernel cache would be unreadable to the group and others."""
    if not hasattr(os, "fchmod"):  # Windows: no POSIX modes to fix
        return
    try:
        mode = path.stat().st_mode & 0o775  # (never writable by every user)
    except OSError:
        mode = new_file_mode()
    os.fchmod(fd, mode)


_private_dirs: dict = {}


def private_temp_dir(name: str, create: bool = True) -> pathlib.Path | None:
    """A directory of this user's alone under the system's temporary one, for caches that have
    nowhere else to go: ``<tmp>/<name>-<uid>``, made 0700, kept across processes; where that path
    is taken (another user's directory, which could plant binaries for us to load, or a file), a
    fresh one for this process. ``create`` False: None where no process has made it yet."""
    if name in _private_dirs:
        return _private_dirs[name]
    uid = _uid()
    path = pathlib.Path(tempfile.gettempdir()) / f"{name}-{uid or 0}"
    if not create and not os.path.lexists(path):
        return None
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(path)  # not through a link: another user's link could be turned elsewhere later
        ours = stat.S_ISDIR(st.st_mode) and (uid is None or (st.st_uid == uid and not st.st_mode & 0o022))
    except OSError:
        ours = False
    if not ours:
        path = pathlib.Path(tempfile.mkdtemp(prefix=f"{name}-"))
    _private_dirs[name] = path
    return path


def write_atomic(path: pathlib.Path, data, durable: bool = False) -> pathlib.Path:
    """Write ``data`` (bytes, or a function writing into the binary file it is given) to ``path``
    through a hidden temporary file in the same directory and ``os.replace``: a concurrent reader
    sees no file or the whole file, never part of one; the file gets the mode a plain write would
    give it. ``durable``: the file and then the rename are fsynced before returning, so that a
    power cut leaves the old file or the new one (checkpoints); caches skip that cost."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        chmod_like_a_new_file(fd, path)
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def fsync_dir(directory: pathlib.Path) -> None:
    """Make the renames and new names in ``directory`` durable (a power cut keeps them)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


LOCK_NAME = ".gpuconv-train.lock"
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # opening a link fails (ELOOP) instead of writing where it points
BINARY = getattr(os, "O_BINARY", 0)  # Windows: os.open's descriptors otherwise turn each "\n" written into "\r\n"


def restated(exc: OSError, message: str) -> OSError:
    """``exc`` told as ``message`` (what was being written, and the way on), of its type
    (PermissionError, ...) and errno, so that the except clauses that sort errors still do;
    ``str()`` of it is the message alone. Raise it ``from exc``."""
    try:
        err = type(exc)(message)
    except TypeError:  # a subclass with a constructor of its own
        err = OSError(message)
    err.errno = exc.errno  # (not strerror: with it, str() would be "[Errno N] strerror")
    return err


# How to go on after a write failed, by its errno, where the cause is the disk's (errno.EDQUOT: not
# on every platform); the callers add the fixes of their own for a directory that refuses the write.
WRITE_FIXES = {errno.ENOSPC: "free space on its disk", getattr(errno, "EDQUOT", -1): "free space in your disk quota",
               errno.EIO: "the disk reported an input/output error: check it (dmesg)",
               errno.ELOOP: "it is a symbolic link, which gpuconv does not write through: remove it"}


def _unwritable(directory, exc: OSError) -> OSError:
    fix = WRITE_FIXES.get(exc.errno, "make it writable to you (a read-only mount?)")
    return restated(exc, f"cannot write into {directory} ({exc.strerror or exc}): {fix}, or train into another --out")


def check_own_directory(directory: pathlib.Path) -> None:
    """A run directory must not be writable by every user, who could plant links there named as
    the run's files and have it overwrite, or copy, files of this user's (a PermissionError
    saying so; a directory made by gpuconv never is, see :func:`make_dirs`). Another user's
    directory that this user may write to (a colleague's, a container's bind mount) is taken: the
    run opens no file there through a link."""
    st = os.stat(directory)
    if _uid() is not None and st.st_mode & 0o002:
        raise PermissionError(f"{directory} is writable by every user, who could plant links there to files of "
                              f"yours: choose another --out, or chmod o-w {directory}")


class DirectoryLocked(RuntimeError):
    """Another live process holds the run directory's lock."""


_WINDOWS_LOCK_BYTE = 1 << 30  # past anything the file holds: a Windows lock also bars reading the bytes it covers


def _lock_nonblocking(fd: int) -> None:
    """Lock the open file ``fd`` for this process, not waiting: BlockingIOError when another holds
    it. ``flock`` where there is one; on Windows (no fcntl) msvcrt's lock of one byte past the
    holder's name, which the lock would otherwise make unreadable to the process it refuses. Both
    end with the process that held them."""
    try:
        import fcntl
    except ImportError:
        import msvcrt
        os.lseek(fd, _WINDOWS_LOCK_BYTE, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EDEADLK):  # (EDEADLOCK: the region is locked)
                raise BlockingIOError(exc.errno, str(exc)) from None
            raise
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _holder(path: pathlib.Path) -> str:
    """Who the lock file says holds it ("pid P on host H"), for the message."""
    try:
        fields = path.read_text().split()
    except OSError:
        fields = []
    if not fields:
        return "a process"
    return f"pid {fields[0]}" + (f" on {fields[1]}" if len(fields) > 1 else "")


_held: dict = {}  # the run directories this process holds locked: real path -> (thread, token)


@contextlib.contextmanager
def directory_lock(directory: pathlib.Path, what: str = "gpuconv train", reentrant: bool = False):
    """Hold ``directory``'s lock for the block: a second process that tries while this one runs
    gets :class:`DirectoryLocked` naming it, instead of interleaving its files with ours.
    ``reentrant``: where this thread holds the lock already (``gpuconv train`` around its
    ``Trainer.fit``), the block runs under that hold.

    The lock is the kernel's (``flock`` on the lock file; on Windows, msvcrt's), not a pid written down: it holds
    across containers and pid namespaces on one machine, across machines on a file system that
    supports it (NFS through its lock manager), and it ends with the process that held it, however
    that process died (nothing stale to take over). The file names its holder for the message."""
    import socket

    directory = pathlib.Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file, not a directory: give --out a directory path")
    try:
        make_dirs(directory, durable=True)
    except OSError as exc:
        raise _unwritable(directory, exc) from exc
    check_own_directory(directory)
    path, key = directory / LOCK_NAME, os.path.realpath(directory)
    if reentrant and _held.get(key, (None,))[0] == threading.get_ident():
        yield path
        return
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR | NOFOLLOW, 0o644)
        except OSError as exc:
            if not os.path.islink(path):
                raise _unwritable(directory, exc) from exc
            raise PermissionError(f"{path} is a symbolic link, which gpuconv does not write through: remove it, "
                                  "or choose another --out") from exc
        try:
            _lock_nonblocking(fd)
        except BlockingIOError:
            os.close(fd)
            raise DirectoryLocked(f"another {what} ({_holder(path)}) is writing to {directory}: wait for it to "
                                  "finish, or choose another --out") from None
        except OSError as exc:  # a file system without locks
            os.close(fd)
            raise DirectoryLocked(f"could not lock {path} ({exc}): this file system takes no locks; choose an "
                                  "--out on a local disk") from None
        # A holder that finished unlinked the file it locked: ours must still be the one at ``path``.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    token = object()
    try:
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except OSError as exc:
            raise _unwritable(directory, exc) from exc
        _held[key] = (threading.get_ident(), token)
        yield path
    finally:
        if _held.get(key, (None, None))[1] is token:
            del _held[key]
        with contextlib.suppress(OSError):  # ours only (someone may have removed it and another run made one)
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                path.unlink()  # while still locked: a waiter then finds a new file, never this one
        os.close(fd)
