"""Integers derived from names and numbers, identical in every process and every Python run.

Python's ``hash()`` of a string changes from one interpreter to the next; data that
must come out the same everywhere (the demo's bytes, a shard writer's split, the
shuffles of a training stream) derives its random seeds from here instead.
"""
from __future__ import annotations

import hashlib


def stable_int(*parts: object) -> int:
    """A 64-bit integer from ``parts`` (joined by ':' as text), e.g. ``stable_int("shuffle", seed, epoch)``."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def stable_fraction(*parts: object) -> float:
    """A number in [0, 1) from ``parts``: the same split decision for a key wherever it is made."""
    return stable_int(*parts) / 2**64
