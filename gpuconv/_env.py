"""Settings read from environment variables: yes/no flags and sizes, one reading rule for each kind."""
from __future__ import annotations

import functools
import os

_ON = ("1", "true", "yes", "on")

# os.environ's own storage (CPython's _Environ keeps its items in a dict of encoded keys that every
# change made through os.environ updates): read directly, a variable asked at every kernel launch
# costs one dict lookup instead of os.environ.get's four Python calls. Anything else (another
# interpreter, os.environ replaced by another mapping) reads through os.environ.get.
_environ = os.environ
_data = getattr(_environ, "_data", None)
_encode, _decode = getattr(_environ, "encodekey", None), getattr(_environ, "decodevalue", None)
_keys: dict = {}


def get(name: str) -> str | None:
    """``os.environ.get(name)``, read without its Mapping machinery where that is safe."""
    if os.environ is not _environ or not isinstance(_data, dict) or _encode is None or _decode is None:
        return os.environ.get(name)
    key = _keys.get(name)
    if key is None:
        key = _keys[name] = _encode(name)
    raw = _data.get(key)
    return None if raw is None else _decode(raw)


def reader(name: str):
    """A function of no arguments that answers, at each call, a value equal to its earlier answers
    exactly while ``$name`` keeps its value (the variable's stored bytes, or its value): what a memo
    that must follow a change of the variable keys by, read at every kernel launch. Where ``os.environ``
    is CPython's own, a call is a single dictionary look-up with no Python frame; the caller checks
    ``os.environ is _environ`` first (a mapping that replaced os.environ is read with :func:`get`)."""
    if not isinstance(_data, dict) or _encode is None:
        return lambda: get(name)
    return functools.partial(_data.get, _encode(name))


_OFF = ("", "0", "false", "no", "off")


def flag(name: str, default: bool = False) -> bool:
    """``$name`` as a yes/no setting: 1/true/yes/on or 0/false/no/off (any case; empty is off),
    ``default`` when unset; any other value is an error naming the variable."""
    raw = get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(f"{name}={raw!r}: give 1 (or true, yes, on) to turn it on, 0 (or false, no, off) to turn it off")


def mebibytes(name: str, default: int) -> int | None:
    """``$name`` as a size in MiB (a whole number; 0 means no limit, returned as None), ``default``
    when unset or empty; anything else is an error naming the variable."""
    raw = (get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{name}={raw!r}: give a whole number of MiB (e.g. {default}), or 0 for no limit")
    return value or None
