"""Bounded memos: dicts of results by key (a launch's plan by geometry, an argument check passed by
signature) that start over when full, so a program meeting new keys without end (shapes that
change every call) keeps a bounded number of them."""
from __future__ import annotations

SIZE = 1024  # entries a memo keeps (a network meets a few dozen geometries); past it, it starts over


def remember(memo: dict, key, value, size: int = SIZE):
    """``memo[key] = value``, the memo emptied first when it holds ``size`` entries; returns ``value``."""
    if len(memo) >= size:
        memo.clear()
    memo[key] = value
    return value
