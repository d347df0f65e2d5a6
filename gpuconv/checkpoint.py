"""Checkpoints as plain ``.npz`` files: readable with NumPy alone, never pickled.

Layout (every key flat, every value a non-object NumPy array):

``model/<name>``        parameters and buffers (``model.state_dict()``)
``optim/...``           optimizer state; ``optim/__tree__`` holds its structure as JSON
``sched/...``           schedule position, same encoding
``loader/...``          data loader position, same encoding (when the loader has one)
``rng/<owner>``         a ``numpy.random.Generator`` state as JSON in a uint8 array
``meta/epoch``, ``meta/step``, ``meta/epoch_step``, ``meta/config`` (JSON), ``meta/format``
``meta/autotune``       the convolutions' autotuned variants (JSON), when the run tuned any

Nested state (dicts, lists, scalars) is flattened by :func:`flatten_tree`: arrays become their
own keys, numbers become 0-d arrays (so ``np.load(path)['sched/last_step']`` is readable), and
the structure is JSON, from which :func:`unflatten_tree` rebuilds the exact Python types.
Loading uses ``allow_pickle=False``: a crafted file cannot run code.

Writes are atomic (temporary file in the same directory, fsync, ``os.replace``, fsync of the
directory), so a crash or Ctrl-C mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np

from ._files import make_dirs, write_atomic
from .backend import to_device

FORMAT = 1
CHECKPOINT_NAME = "checkpoint.npz"


# ----------------------------------------------------------------------------- JSON in arrays
def pack_json(obj) -> np.ndarray:
    """``obj`` as UTF-8 JSON bytes in a uint8 array (JSON ints are exact at any size)."""
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode("utf-8"), dtype=np.uint8).copy()


def unpack_json(arr):
    return json.loads(np.asarray(arr, dtype=np.uint8).tobytes().decode("utf-8"))


# ----------------------------------------------------------------------------- nested state
def flatten_tree(prefix: str, obj) -> dict[str, np.ndarray]:
    """Flat ``{prefix/...: array}`` for a nested state (dicts, lists, tuples, arrays, scalars)."""
    arrays: dict[str, np.ndarray] = {}

    def leaf_key(path):
        key = "/".join([prefix, *path]) if path else f"{prefix}/_"
        base, n = key, 1
        while key in arrays or key.endswith("/__tree__"):  # keys holding '/' could collide
            key, n = f"{base}#{n}", n + 1
        return key

    def enc(o, path):
        if isinstance(o, dict):
            return {"d": [[k if isinstance(k, (str, int, float, bool)) or k is None else str(k),
                           enc(v, path + [str(k)])] for k, v in o.items()]}
        if isinstance(o, (list, tuple)):
            return {"l" if isinstance(o, list) else "t": [enc(v, path + [str(i)]) for i, v in enumerate(o)]}
        if o is None or isinstance(o, str):
            return {"v": o}
        if isinstance(o, bool):
            return {"v": o}
        if isinstance(o, int) and -2**63 <= o < 2**63:
            key = leaf_key(path)
            arrays[key] = np.asarray(o, dtype=np.int64)
            return {"i": key}
        if isinstance(o, int):
            return {"v": o}
        if isinstance(o, float):
            key = leaf_key(path)
            arrays[key] = np.asarray(o, dtype=np.float64)  # float64 round-trips a Python float exactly
            return {"f": key}
        if isinstance(o, np.generic):
            key = leaf_key(path)
            arrays[key] = np.asarray(o)
            return {"s": key}
        if isinstance(o, np.ndarray) or hasattr(o, "__array__"):
            a = to_device(o, "cpu")  # a CuPy array is read back (a counted readback)
            if a.dtype == object:
                raise TypeError(f"checkpoint entry {prefix}/{'/'.join(path)} is an object array, which would "
                                "need pickle: store numbers or strings instead")
            key = leaf_key(path)
            arrays[key] = a
            return {"a": key}
        raise TypeError(f"checkpoint entry {prefix}/{'/'.join(path)} has type {type(o).__name__}, which a "
                        "checkpoint cannot hold without pickle: use arrays, numbers, strings, lists or dicts")

    arrays[f"{prefix}/__tree__"] = pack_json(enc(obj, []))
    return arrays


def unflatten_tree(prefix: str, arrays) -> object:
    """Rebuild what :func:`flatten_tree` stored under ``prefix``."""
    tree = unpack_json(arrays[f"{prefix}/__tree__"])

    def dec(node):
        (tag, value), = node.items()
        if tag == "d":
            return {k: dec(v) for k, v in value}
        if tag == "l":
            return [dec(v) for v in value]
        if tag == "t":
            return tuple(dec(v) for v in value)
        if tag == "v":
            return value
        if tag == "i":
            return int(arrays[value])
        if tag == "f":
            return float(arrays[value])
        if tag == "s":
            return np.asarray(arrays[value])[()]
        if tag == "a":
            return np.array(arrays[value])
        raise ValueError(f"checkpoint tree {prefix}/__tree__ has an unknown node tag {tag!r}")

    return dec(tree)


# ----------------------------------------------------------------------------- RNG state
def _jsonable(o):
    # MT19937 and Philox keep arrays in their state; PCG64 only (big) ints.
    if isinstance(o, dict):
        return {k: _jsonable(v) for k, v in o.items()}
    if isinstance(o, np.ndarray):
        return {"__ndarray__": o.tolist(), "dtype": o.dtype.str}
    if isinstance(o, np.generic):
        return o.item()
    return o


def _from_jsonable(o):
    if isinstance(o, dict):
        if set(o) == {"__ndarray__", "dtype"}:
            return np.asarray(o["__ndarray__"], dtype=np.dtype(o["dtype"]))
        return {k: _from_jsonable(v) for k, v in o.items()}
    return o


def rng_state(gen) -> np.ndarray:
    """A ``numpy.random.Generator``'s (or BitGenerator's) state as JSON in a uint8 array."""
    bitgen = getattr(gen, "bit_generator", gen)
    return pack_json(_jsonable(bitgen.state))


def set_rng_state(gen, arr) -> None:
    bitgen = getattr(gen, "bit_generator", gen)
    state = _from_jsonable(unpack_json(arr))
    if state.get("bit_generator") != type(bitgen).__name__:
        raise ValueError(f"checkpoint RNG state is for {state.get('bit_generator')!r} but the generator "
                         f"is {type(bitgen).__name__}: build the generator the same way as when saving")
    bitgen.state = state


# ----------------------------------------------------------------------------- files
def save_checkpoint(path, arrays: dict) -> Path:
    """Write ``arrays`` to ``path`` as an ``.npz``, atomically; returns the path."""
    clean = {}
    for key, value in arrays.items():
        a = to_device(value, "cpu")
        if a.dtype == object:
            raise TypeError(f"checkpoint entry {key!r} is an object array: checkpoints never pickle; "
                            "convert it to numbers, or to JSON with gpuconv.checkpoint.pack_json")
        clean[key] = a
    return _write_durably(Path(path), lambda f: np.savez(f, **clean))


def copy_checkpoint(src, dst) -> Path:
    """A copy of the checkpoint file ``src`` at ``dst``, written as atomically as a save."""
    def copy(f):
        with open(src, "rb") as source:
            shutil.copyfileobj(source, f)
    return _write_durably(Path(dst), copy)


def _write_durably(path: Path, write) -> Path:
    """``write(file)`` into a temporary file beside ``path``, fsync, then rename over ``path``."""
    make_dirs(path.parent, durable=True)
    return write_atomic(path, write, durable=True)


def load_checkpoint(path) -> dict[str, np.ndarray]:
    """All arrays of a checkpoint, read with ``allow_pickle=False``."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist: pass the checkpoint.npz that "
                                "`gpuconv train --out DIR` wrote (DIR/checkpoint.npz)")
    with open(path, "rb") as f:
        head = f.read(6)
    if not head.startswith(b"PK"):  # every .npz is a zip archive
        what = ("a pickle, which is never loaded because it can run code" if head[:1] == b"\x80"
                else "an empty file" if not head else f"not an .npz archive (it starts with {head!r})")
        raise ValueError(f"checkpoint {path} is {what}: pass the checkpoint.npz that `gpuconv train` wrote; "
                         "gpuconv writes checkpoints atomically, so a damaged one was changed afterwards")
    try:
        _check_expansion(path)
    except (zipfile.BadZipFile, EOFError, OSError):
        pass  # a damaged archive: np.load's failure below says so
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ValueError(f"checkpoint {path} is truncated or not an .npz file ({exc}): use an intact "
                         "copy, or retrain; gpuconv writes checkpoints atomically, so the file was "
                         "damaged afterwards") from None
    except ValueError as exc:  # object arrays need pickle
        raise ValueError(f"checkpoint {path} holds pickled objects ({exc}); gpuconv checkpoints never do, "
                         "and pickles are not loaded because they can run code") from None
    if "meta/format" not in arrays:
        raise ValueError(f"{path} is an .npz file but not a gpuconv checkpoint (no 'meta/format' entry)")
    if int(arrays["meta/format"]) > FORMAT:
        raise ValueError(f"checkpoint {path} has format {int(arrays['meta/format'])}, newer than this gpuconv "
                         f"reads ({FORMAT}): upgrade gpuconv")
    return arrays


# A compressed archive may unpack to this many times its size (and past _EXPANSION_FLOOR bytes)
# before it is refused unread: gpuconv writes checkpoints uncompressed (np.savez, 1x), and trained
# float weights deflate by a few percent, while a "zip bomb" of zeros inflates about 1000x.
_EXPANSION_RATIO = 50
_EXPANSION_FLOOR = 1 << 28


def _check_expansion(path: Path) -> None:
    """Refuse an archive whose members would unpack to far more memory than the file's size,
    reading only the zip directory (a file from elsewhere must not fill the machine's memory)."""
    with zipfile.ZipFile(path) as z:
        unpacked = sum(info.file_size for info in z.infolist())
    size = path.stat().st_size
    if unpacked > max(_EXPANSION_FLOOR, _EXPANSION_RATIO * size):
        raise ValueError(f"checkpoint {path} would unpack {size:,} bytes into {unpacked:,} ({unpacked / size:.0f}x): "
                         "not loaded, as such an archive is built to exhaust memory; gpuconv writes checkpoints "
                         "uncompressed, so save yours with np.savez (not savez_compressed) if it is genuine")


def section(arrays, prefix: str) -> dict[str, np.ndarray]:
    """The entries under ``prefix/`` with the prefix removed (e.g. the model's state dict)."""
    head = prefix.rstrip("/") + "/"
    return {k[len(head):]: v for k, v in arrays.items() if k.startswith(head)}


def read_config(arrays) -> dict:
    """The JSON config stored by the trainer/CLI (model name and constructor args), or {}."""
    return unpack_json(arrays["meta/config"]) if "meta/config" in arrays else {}
