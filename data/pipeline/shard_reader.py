"""Shard specs as people write them, and reading raw samples out of tar shards.

A shard spec is a string or a list of strings. Each string may be:

- a path or URL with brace ranges or lists: ``train-{000000..000127}.tar``, ``{a,b}.tar``;
- several specs joined by ``::`` (as open_clip and webdataset accept);
- a ``pipe:`` command whose standard output is a tar stream:
  ``pipe:aws s3 cp s3://bucket/train-{000..009}.tar -``, ``pipe:cat file.tar``;
- a directory: every ``.tar`` file in it, sorted by name.

Local files that do not exist are dropped with a warning (crawled data sets often
miss a few shard numbers); a spec with no shard left is an error. URLs other than
local paths are not checked in advance: ``http(s)://`` URLs and ``pipe:`` commands
are read with bounded waits and tries (:mod:`multimodal.data.pipeline.remote`), other schemes
(``s3://`` ...) by webdataset's ``gopen``.

:func:`read_shard` yields the samples of one shard as dicts of raw bytes keyed by
extension (``{"__key__": "000001", "jpg": b"...", "txt": b"..."}``) and reports
what went wrong instead of raising, so a pipeline can count bad shards and go on.
Shards are parsed by :func:`iterate_tar`
(plain or gzip-compressed tar), grouped into samples by webdataset's key rule.
"""
from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import braceexpand
import webdataset
from webdataset.tariterators import base_plus_ext

from multimodal.data.pipeline.remote import FETCHED_PREFIXES, RemoteConfig, is_fetched

logger = logging.getLogger(__name__)

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# The schemes a Download reads, and those webdataset's gopen opens; anything else with "://" is passed
# to gopen too, unchecked.
_REMOTE_PREFIXES = (*FETCHED_PREFIXES, "s3://", "gs://", "ais://", "hf://", "sftp://", "ftp://")


def is_remote(url: str) -> bool:
    """A shard read through a command (``pipe:``) or over a network: not a local file to check or peek into."""
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
            if not is_remote(piece) and Path(_local_path(piece)).is_dir():
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
        missing = [url for url in urls if not is_remote(url) and not os.path.exists(_local_path(url))]
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


# Reading tar streams -------------------------------------------------------------------------

_BLOCK = 512
_GZIP_MAGIC = b"\x1f\x8b"
_REGULAR_FILE_TYPES = (b"0", b"\0", b"7")


class TarFormatError(ValueError):
    """The bytes are not a tar archive (or one cut short)."""


def _read_exact(stream, size: int) -> bytes:
    """``size`` bytes, fewer only at the end of the stream (pipes may return short reads)."""
    data = stream.read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    remaining = size - len(data)
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


class _Prefixed:
    """A stream whose first bytes were already read."""

    def __init__(self, prefix: bytes, stream) -> None:
        self.prefix, self.stream = prefix, stream

    def read(self, size: int = -1) -> bytes:
        if not self.prefix:
            return self.stream.read(size)
        if size < 0:
            data, self.prefix = self.prefix + self.stream.read(), b""
            return data
        data, self.prefix = self.prefix[:size], self.prefix[size:]
        return data if len(data) == size else data + self.stream.read(size - len(data))


def _octal(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"not a tar archive: bad {what} field {field!r}") from None


def _pax_records(data: bytes) -> dict[str, str]:
    """``"%d key=value\n"`` records of a pax extended header."""
    records, position = {}, 0
    while position < len(data) and data[position] != 0:
        space = data.index(b" ", position)
        length = int(data[position:space])
        key, _, value = data[space + 1 : position + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += length
    return records


def iterate_tar(stream) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file in a tar stream, in order; gzip-compressed tars too.

    Reads ustar, pax (long names and sizes) and GNU (``L`` long names, base-256
    sizes) headers, checking each header's checksum, so a file that is not a tar is
    reported as such on its first block. Python's ``tarfile`` parses the same
    archives at about a tenth of the speed, which made reading a shard cost as much
    CPU as decoding its JPEGs. Raises :class:`TarFormatError` for a stream that is
    empty, is not a tar, or ends inside a member.
    """
    first = _read_exact(stream, _BLOCK)
    if not first:
        raise TarFormatError("the file is empty")
    if first.startswith(_GZIP_MAGIC):
        stream = gzip.GzipFile(fileobj=_Prefixed(first, stream), mode="rb")
        first = _read_exact(stream, _BLOCK)
    header: bytes | None = first
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        if header is None:
            header = _read_exact(stream, _BLOCK)
        if not header:
            return  # no end-of-archive blocks: accepted, as tar itself does
        if len(header) < _BLOCK:
            raise TarFormatError("unexpected end of data inside a header")
        if header.count(0) == _BLOCK:
            return  # end-of-archive block
        stored_checksum = _octal(header[148:156], "checksum")
        # The checksum field counts as eight spaces; old tars summed signed bytes.
        unsigned = sum(header) - sum(header[148:156]) + 8 * 32
        if stored_checksum != unsigned and stored_checksum != unsigned - 256 * sum(b >= 128 for b in header):
            raise TarFormatError("not a tar archive (a header checksum does not match)")
        kind = header[156:157]
        name = pax.get("path") or long_name or _header_name(header)
        size = int(pax["size"]) if "size" in pax else _octal(header[124:136], "size")
        data = _read_exact(stream, size)
        if len(data) < size:
            raise TarFormatError(f"unexpected end of data: {len(data)} of {size} bytes of {name}")
        padding = -size % _BLOCK
        if padding and len(_read_exact(stream, padding)) < padding:
            raise TarFormatError(f"unexpected end of data after {name}")
        header = None
        if kind == b"x":
            pax = _pax_records(data)
        elif kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind != b"g":  # a global pax header applies to nothing we read
            if kind in _REGULAR_FILE_TYPES:
                yield name, data
            long_name, pax = None, {}


def _header_name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


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


def tar_samples(stream, url: str) -> Iterator[dict]:
    """The samples of a tar stream, grouping consecutive files by key; raises what the stream or parser raises.

    A sample is ``{"__key__": key, "__url__": url, ext: bytes, ...}`` with lower-case
    extensions (everything after the first dot of the file's base name, as
    webdataset splits them). Files named ``__*__`` are metadata and skipped.
    """
    current: dict | None = None
    for name, data in iterate_tar(stream):
        key, extension = base_plus_ext(name)
        if key is None or (key.startswith("__") and key.endswith("__")):
            continue
        extension = extension.lower()
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key, "__url__": url}
        if extension in current:
            logger.warning("shard %s: sample %s has two %r files; the first is kept", url, key, extension)
            continue
        current[extension] = data
    if current is not None:
        yield current


def read_problem(url: str, error: Exception | None, samples_read: int) -> ShardProblem | None:
    """The :class:`ShardProblem` of a shard whose reading ended with ``error`` (None: it ended well)."""
    if error is None:
        return ShardProblem(url, "empty_shard", "the tar holds no sample", 0) if samples_read == 0 else None
    message = str(error)
    if samples_read == 0 and message == "the file is empty":
        return ShardProblem(url, "empty_shard", message, 0)
    reason = "truncated_shard" if samples_read else "unreadable_shard"
    return ShardProblem(url, reason, f"{type(error).__name__}: {message}", samples_read)


def read_shard(url: str, problems: list[ShardProblem], remote: RemoteConfig | None = None) -> Iterator[dict]:
    """Yields the samples of one tar shard (see :func:`tar_samples`).

    When the shard cannot be read, a :class:`ShardProblem` is appended to ``problems``
    (and the sample being assembled when a read failed is dropped); nothing is raised.
    Shards over HTTP(S) and from ``pipe:`` commands are read with bounded waits and
    tries (:mod:`multimodal.data.pipeline.remote`; ``remote``: its
    :class:`multimodal.data.pipeline.remote.RemoteConfig`, None: the defaults), anything else
    with webdataset's ``gopen``.
    """
    if is_fetched(url):
        yield from _fetched_shard(url, problems, remote or RemoteConfig())
        return
    samples_read = 0
    stream = None
    abandoned = False
    try:
        stream = webdataset.gopen(url, "rb")
        failure: Exception | None = None
        try:
            for sample in tar_samples(stream, url):
                samples_read += 1
                yield sample
        except (OSError, EOFError, ValueError) as error:  # TarFormatError is a ValueError; gzip raises OSError
            failure = error
        problem = read_problem(url, failure, samples_read)
        if problem is not None:
            problems.append(problem)
    except GeneratorExit:  # the reader stopped early (end of an epoch): not a problem of the shard
        abandoned = True
        raise
    except (OSError, EOFError, ValueError) as error:  # gopen itself failed
        problems.append(read_problem(url, error, samples_read))
    finally:
        if stream is not None:
            try:
                stream.close()
            except Exception as error:  # a pipe: command's exit status surfaces here
                if not abandoned and (not problems or problems[-1].url != url):
                    problems.append(
                        ShardProblem(url, "unreadable_shard", f"{type(error).__name__}: {error}", samples_read)
                    )


def _fetched_shard(url: str, problems: list[ShardProblem], remote: RemoteConfig) -> Iterator[dict]:
    from multimodal.data.pipeline.fetch_ahead import FetchAhead  # imports this module

    for _, _, sample, shard_problems in FetchAhead(iter([(0, url)]), remote).reads():
        if sample is not None:
            yield sample
        else:
            problems.extend(shard_problems)


__all__ = [
    "SHARD_SUFFIXES", "ShardProblem", "TarFormatError", "expand_shards", "is_remote", "iterate_tar", "read_problem",
    "read_shard", "tar_samples",
]
