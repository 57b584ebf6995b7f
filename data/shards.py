"""Shard specs as people write them, and reading raw samples out of tar shards.

A shard spec is a string or a list of strings. Each string may be:

- a path or URL with brace ranges or lists: ``train-{000000..000127}.tar``, ``{a,b}.tar``;
- several specs joined by ``::`` (as open_clip and webdataset accept);
- a ``pipe:`` command whose standard output is a tar stream:
  ``pipe:aws s3 cp s3://bucket/train-{000..009}.tar -``, ``pipe:cat file.tar``;
- a directory: every ``.tar`` file in it, sorted by name.

Local files that do not exist are dropped with a warning (crawled data sets often
miss a few shard numbers); a spec with no shard left is an error. URLs other than
local paths (``pipe:``, ``s3://``, ``http(s)://`` ...) are opened by webdataset's
``gopen`` and not checked in advance.

:func:`read_shard` yields the samples of one shard as dicts of raw bytes keyed by
extension (``{"__key__": "000001", "jpg": b"...", "txt": b"..."}``) and reports
what went wrong instead of raising, so a pipeline can count bad shards and go on.
"""
from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import braceexpand
import webdataset
from webdataset.tariterators import base_plus_ext, tar_file_iterator

logger = logging.getLogger(__name__)

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# Schemes webdataset's gopen opens; anything else with "://" is passed to it too, unchecked.
_REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "ais://", "hf://", "sftp://", "ftp://")


def _is_remote(url: str) -> bool:
    return url.startswith(_REMOTE_PREFIXES) or "://" in url.split(" ", 1)[0]


def _local_path(url: str) -> str:
    return url[len("file:") :] if url.startswith("file:") else url


def expand_shards(spec: str | Sequence[str], *, check_exists: bool = True) -> list[str]:
    """A shard spec -> the list of shard URLs, in the order written.

    See the module docstring for the forms accepted. Raises ValueError when the spec
    is empty, a directory holds no tar file, or no shard is left after dropping
    missing local files (which are logged as a warning, with examples).
    """
    if isinstance(spec, (str, os.PathLike)):
        parts = [str(spec)]
    elif isinstance(spec, Sequence):
        parts = [str(part) for part in spec]
    else:
        raise TypeError(f"a shard spec is a string or a list of strings, got {type(spec).__name__}")
    urls: list[str] = []
    for part in parts:
        for piece in part.split("::"):
            piece = piece.strip()
            if not piece:
                continue
            if not _is_remote(piece) and Path(_local_path(piece)).is_dir():
                directory = Path(_local_path(piece))
                found = sorted(str(p) for p in directory.iterdir() if p.name.endswith(SHARD_SUFFIXES) and p.is_file())
                if not found:
                    raise ValueError(f"shard directory {directory} holds no {'/'.join(SHARD_SUFFIXES)} file")
                urls.extend(found)
            else:
                urls.extend(braceexpand.braceexpand(piece))
    if not urls:
        raise ValueError(f"shard spec {spec!r} names no shard")
    if check_exists:
        missing = [url for url in urls if not _is_remote(url) and not os.path.exists(_local_path(url))]
        if missing:
            urls = [url for url in urls if url not in set(missing)]
            if not urls:
                raise ValueError(
                    f"none of the {len(missing)} shards of {spec!r} exists (first: {missing[0]}); check the path"
                )
            logger.warning(
                "%d of %d shards of %r do not exist and are left out (first: %s)",
                len(missing),
                len(missing) + len(urls),
                spec,
                missing[0],
            )
    return urls


@dataclass
class ShardProblem:
    """What went wrong reading one shard: ``reason`` is one of
    ``"unreadable_shard"`` (cannot be opened, or not a tar), ``"empty_shard"`` (a tar
    with no sample, or an empty file) or ``"truncated_shard"`` (a read error after
    some samples; those already read are kept)."""

    url: str
    reason: str
    message: str
    samples_read: int


def read_shard(url: str, problems: list[ShardProblem]) -> Iterator[dict]:
    """Yields the samples of one tar shard, grouping consecutive files by key.

    A sample is ``{"__key__": key, "__url__": url, ext: bytes, ...}`` with lower-case
    extensions (everything after the first dot of the file's base name, as
    webdataset splits them). Files named ``__*__`` are metadata and skipped. When the
    shard cannot be read, a :class:`ShardProblem` is appended to ``problems`` (and the
    sample being assembled when a read failed is dropped); nothing is raised.
    """
    samples_read = 0
    stream = None
    abandoned = False
    try:
        stream = webdataset.gopen(url, "rb")
        current: dict | None = None
        for member in tar_file_iterator(stream):
            key, extension = base_plus_ext(member["fname"])
            if key is None or (key.startswith("__") and key.endswith("__")):
                continue
            extension = extension.lower()
            if current is None or current["__key__"] != key:
                if current is not None:
                    samples_read += 1
                    yield current
                current = {"__key__": key, "__url__": url}
            if extension in current:
                logger.warning("shard %s: sample %s has two %r files; the first is kept", url, key, extension)
                continue
            current[extension] = member["data"]
        if current is not None:
            samples_read += 1
            yield current
        if samples_read == 0:
            problems.append(ShardProblem(url, "empty_shard", "the tar holds no sample", 0))
    except GeneratorExit:  # the reader stopped early (end of an epoch): not a problem of the shard
        abandoned = True
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as error:
        message = str(error)
        if samples_read == 0 and "empty file" in message:
            problems.append(ShardProblem(url, "empty_shard", "the file is empty", 0))
        else:
            reason = "truncated_shard" if samples_read else "unreadable_shard"
            problems.append(ShardProblem(url, reason, f"{type(error).__name__}: {message}", samples_read))
    finally:
        if stream is not None:
            try:
                stream.close()
            except Exception as error:  # a pipe: command's exit status surfaces here
                if not abandoned and (not problems or problems[-1].url != url):
                    problems.append(
                        ShardProblem(url, "unreadable_shard", f"{type(error).__name__}: {error}", samples_read)
                    )


__all__ = ["SHARD_SUFFIXES", "ShardProblem", "expand_shards", "read_shard"]
