"""Shard keys for file names: distinct for any name a file system allows, stable, readable where they can be.

A key names one sample inside the shards. webdataset splits a member name at the first
dot after the last slash (``cats__tabby.png`` -> key ``cats__tabby``, extension ``png``),
so a key holds no ``.`` and no ``/``; shard tools and shells read keys best in
``[A-Za-z0-9_-]``. The rule, for a relative path without extension:

- a name of ASCII characters only keeps the readable slug it always had: each folder and
  the name with every run of other characters as ``_``, joined by ``__``
  (``cats/tabby 01`` -> ``cats__tabby_01``), so shards written before keep their keys;
- a name with any other character (any script, accents, bytes that are not UTF-8) gets the
  slug of its letters with accents taken off, then ``-`` and 16 hex digits of a hash of the
  exact name (``café`` -> ``cafe-…``, ``猫`` -> ``_-…``): names that differ only in accents,
  or only in Unicode normalisation (NFC ``é`` against NFD ``e`` + accent), get
  different keys, and a name gets the same key on every run and machine.

Case is kept, so ``Cat`` and ``cat`` differ. Two ASCII names with one slug (``a b`` and
``a_b``) are told apart by :func:`unique_keys`, which gives each of them the hashed form.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable

_UNSAFE_KEY_CHARACTERS = re.compile(r"[^A-Za-z0-9_\-]+")
_FOLDER_SEPARATOR = re.compile(r"[/\\]")
# Latin letters NFKD leaves whole (no accent to take off), spelt as their languages spell them in ASCII.
_LETTERS_OF_THEIR_OWN = str.maketrans({
    "Æ": "AE", "æ": "ae", "Ø": "O", "ø": "o", "Œ": "OE", "œ": "oe", "ß": "ss", "Ł": "L", "ł": "l",
    "Đ": "D", "đ": "d", "Þ": "Th", "þ": "th", "ı": "i",
})
# 64 bits: among a million names of one slug (a folder of names in one script), a shared
# hash has odds of about 3 in 100 million; the writer still names any key used twice.
HASH_DIGITS = 16


def _slug(name: str) -> str:
    parts = [_UNSAFE_KEY_CHARACTERS.sub("_", part).strip("_") or "_" for part in _FOLDER_SEPARATOR.split(name) if part]
    return "__".join(parts) or "_"


def name_hash(name: str) -> str:
    """:data:`HASH_DIGITS` hex digits of a hash of the exact name (its UTF-8 bytes; undecodable bytes as they were)."""
    data = name.encode("utf-8", "surrogateescape")
    return hashlib.blake2b(data, digest_size=HASH_DIGITS // 2).hexdigest()


def hashed_key(name: str) -> str:
    """The slug of ``name`` with accents taken off, ``-`` and :func:`name_hash`: distinct for any two names."""
    # NFKD splits an accented letter into the letter and its accent; the accent is not ASCII.
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace").translate(_LETTERS_OF_THEIR_OWN)
    folded = unicodedata.normalize("NFKD", text)
    readable = "".join(character for character in folded if character.isascii())
    return f"{_slug(readable)}-{name_hash(name)}"


def make_key(name: str) -> str:
    """A shard key from a relative path without extension (see the module docstring).

    ``"cats/tabby 01"`` -> ``"cats__tabby_01"``; ``"animaux/café"`` -> ``"animaux__cafe-<16 hex>"``.
    """
    if name.isascii():
        return _slug(name)
    return hashed_key(name)


def unique_keys(names: Iterable[str]) -> dict[str, str]:
    """Each distinct name -> its key by :func:`make_key`, or by :func:`hashed_key` where two names share one.

    Deterministic for a given set of names: the same folder gives the same keys on every run.
    """
    keys = {name: make_key(name) for name in names}
    sharing: dict[str, list[str]] = defaultdict(list)
    for name, key in keys.items():
        sharing[key].append(name)
    for group in sharing.values():
        if len(group) > 1:
            for name in group:
                keys[name] = hashed_key(name)
    return keys


__all__ = ["HASH_DIGITS", "hashed_key", "make_key", "name_hash", "unique_keys"]
