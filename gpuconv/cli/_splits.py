"""The data a command reads: the CIFAR-10 directory, and the validation split that ``--val-split``
names (``parse_val_split``, ``resolve_split``)."""
from __future__ import annotations

import warnings

import numpy as np


def parse_val_split(text):
    """'auto' | 'test' | 'none' | ('batch', k) | ('fraction', f)."""
    text = (text or "auto").strip().lower()
    if text in ("auto", "test", "none"):
        return text
    if text.startswith("batch") and text[5:].isdigit():
        return ("batch", int(text[5:]))
    try:
        frac = float(text)
    except ValueError:
        frac = None
    if frac is not None and 0 < frac < 1:
        return ("fraction", frac)
    raise ValueError(f"--val-split {text!r} is not understood: use auto, test, none, batch5 (hold out "
                     "data_batch_5) or a fraction strictly between 0 and 1 such as 0.1")


def resolve_split(cifar, spec, seed=0):
    """(train Split, val Split or None, description, recorded spec) for a --val-split value."""
    from ..data import train_val_split
    spec = parse_val_split(spec) if isinstance(spec, str) or spec is None else spec
    if isinstance(spec, list):
        spec = tuple(spec)
    if spec == "auto":
        if cifar.test is not None:
            spec = "test"
        elif len(cifar.train.batch_sizes) >= 5:
            spec = ("batch", 5)
        else:
            spec = ("fraction", 0.1)
    if spec == "none":
        return cifar.train, None, "no validation split", "none"
    if spec == "test":
        if cifar.test is None:
            raise ValueError(f"--val-split test: {cifar.root} has no test_batch; use --val-split auto, batch5 "
                             "or a fraction like 0.1")
        return cifar.train, cifar.test, f"test_batch ({len(cifar.test)} images)", "test"
    kind, value = spec
    if kind == "batch":
        batches = len(cifar.train.batch_sizes)
        if not 1 <= value <= batches:
            raise ValueError(f"--val-split batch{value}: {cifar.root} has training batches data_batch_1..{batches}: "
                             f"use batch1..batch{batches}, or a fraction such as 0.1")
        train, val = train_val_split(cifar.train, val_batch=value)
        return train, val, f"data_batch_{value} held out of training ({len(val)} images)", ["batch", value]
    train, val = train_val_split(cifar.train, val_fraction=value, seed=seed)
    return train, val, f"a seeded {value:g} of the training images held out ({len(val)} images)", ["fraction", value]


def _limit(split, n, seed):
    """A seeded random subset of n images (kept in file order), so classes stay balanced."""
    from ..data import Split
    if n is None or n >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    return Split(split.images[idx], split.labels[idx])


def _load_data(data, quiet_no_test=True):
    from ..data import load_cifar10
    with warnings.catch_warnings():
        if quiet_no_test:  # we say what we do about a missing test batch ourselves
            warnings.filterwarnings("ignore", message=".*no test batch.*")
        return load_cifar10(data)
