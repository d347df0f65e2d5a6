"""Fetching the official CIFAR-10 tarball: a progress bar, an MD5 check, an atomic write.

The bytes go to a temporary file in the destination directory and are renamed into place
only once the MD5 matches, so an interrupted or corrupted download never leaves a file that
a later run would take for the data set.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import socket
import tempfile
import urllib.error
import urllib.request

from .errors import DownloadError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
TARBALL_NAME = "cifar-10-python.tar.gz"
_CHUNK = 1 << 20


def _md5_of(path: pathlib.Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _fix(url: str, target: pathlib.Path) -> str:
    return (f"To fix: check the network (or a proxy via $https_proxy) and retry, or download {url} by "
            f"hand to {target} (or extract it anywhere and pass --data DIR / set GPUCONV_DATA=DIR)")


def _stream(response, out, total, progress: bool, desc: str) -> tuple[int, str]:
    """Copy the response body into ``out``; returns (bytes written, md5 hex)."""
    from tqdm import tqdm  # a dependency; imported here so loading data never pays for it

    h = hashlib.md5()
    n = 0
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
              disable=not progress, leave=False) as bar:
        for block in iter(lambda: response.read(_CHUNK), b""):
            out.write(block)
            h.update(block)
            n += len(block)
            bar.update(len(block))
    return n, h.hexdigest()


def download_cifar10(dest, url: str = CIFAR10_URL, md5: str | None = CIFAR10_MD5, *,
                     progress: bool = True, timeout: float = 60.0) -> pathlib.Path:
    """Download ``url`` to ``dest/cifar-10-python.tar.gz`` and return that path.

    An existing file with the right MD5 is reused. ``md5=None`` skips the check (only for
    mirrors whose checksum is unknown). Raises DownloadError naming the URL, what failed and
    what to do."""
    dest = pathlib.Path(dest).expanduser()
    target = dest / TARBALL_NAME
    if target.is_file() and md5 is not None and _md5_of(target) == md5:
        return target
    try:
        dest.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{TARBALL_NAME}.", suffix=".part", dir=dest)
    except OSError as exc:
        raise DownloadError(f"cannot write the download of {url} into {dest} ({exc}). "
                            f"{_fix(url, target)}") from exc
    tmp = pathlib.Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    n, digest = _stream(response, out, total, progress, TARBALL_NAME)
            except urllib.error.HTTPError as exc:
                raise DownloadError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}. "
                                    f"{_fix(url, target)}") from exc
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DownloadError(f"downloading {url} failed: {reason}. {_fix(url, target)}") from exc
            except OSError as exc:  # disk full, read errors on a file:// URL
                raise DownloadError(f"downloading {url} into {tmp} failed: {exc}. {_fix(url, target)}") from exc
            if total is not None and n != total:
                raise DownloadError(f"downloading {url} stopped after {n} of {total} bytes (connection "
                                    f"cut). {_fix(url, target)}")
            if md5 is not None and digest != md5.lower():
                raise DownloadError(f"downloading {url}: the {n} bytes received have MD5 {digest}, not the "
                                    f"expected {md5} (a truncated or altered file, or a proxy's error "
                                    f"page). It was discarded. {_fix(url, target)}")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:  # including KeyboardInterrupt: never leave a .part file behind
        tmp.unlink(missing_ok=True)
        raise
    return target
