"""Reading one shard from elsewhere (``http(s)://``, ``pipe:`` commands) so that no read can hang for ever.

A :class:`Download` fetches one shard into memory on a thread of its own, and says
in words what went wrong. Every wait is bounded:

- a try that brings no byte for ``stall_timeout`` seconds is abandoned ("no data for
  60 s"): the socket's timeout, or for a command a watchdog that kills it;
- connection errors ("connection refused"), HTTP 5xx, stalls and cut connections are
  tried again, ``retries`` times, after ``backoff`` seconds doubled each time; an
  HTTP server that takes ``Range`` requests continues from the byte reached, any
  other read starts again and the bytes already held are skipped;
- HTTP 4xx ("HTTP 404 Not Found") is not tried again, nor a command that exits with an
  error ("command failed with exit status 22: curl: (22) ... 404"): only the command
  knows whether its failure may pass, and most have their own retries (``curl --retry``).

A read that failed for good keeps the bytes it got: the samples in them are kept by
the reader (:mod:`multimodal.data.pipeline.fetch_ahead`). A command's failure names its exit
status and the last line it wrote to standard error. With the defaults a shard costs at
most about two minutes: four tries of 30 s without data, and 1 + 2 + 4 s between them.

Local files and the schemes webdataset's ``gopen`` opens (``s3://`` and others) are not
read here; give those as ``pipe:`` commands (``pipe:aws s3 cp s3://bucket/x.tar -``) to
get the same guarantees.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import http.client
import math
import os
import select
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass

import webdataset

FETCHED_PREFIXES = ("http://", "https://", "pipe:")
_CHUNK = 1 << 16
_MAX_REDIRECTS = 5


def is_fetched(url: str) -> bool:
    """A shard read by a :class:`Download` (HTTP(S) or a ``pipe:`` command), not opened as a file."""
    return url.startswith(FETCHED_PREFIXES)


@dataclass
class RemoteConfig:
    """How shards from elsewhere are read (``--data.remote.stall_timeout 60`` and so on).

    - ``stall_timeout``: seconds without a byte after which a try is abandoned.
    - ``retries``: tries after the first, for connection errors, HTTP 5xx, stalls and cuts.
    - ``backoff``: seconds before the first retry, doubled before each next one.
    - ``fetch_ahead``: shards each loader worker (or process) downloads at once, ahead of
      the one it reads; the batches of whichever is ready go on.
    - ``memory_mb``: no new shard is fetched ahead while the shards held in memory by one
      worker exceed this (one at least is always read).
    - ``retry_failed_after``: seconds during which a shard that failed for good is
      skipped at once when it is drawn again, with the same reason.
    """

    stall_timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0
    fetch_ahead: int = 4
    memory_mb: float = 1024.0
    retry_failed_after: float = 600.0

    def __post_init__(self) -> None:
        for name, unit in (("stall_timeout", "seconds"), ("memory_mb", "megabytes")):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"data.remote.{name} must be a positive number of {unit}, got {value!r}")
        for name in ("backoff", "retry_failed_after"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"data.remote.{name} must be 0 or more seconds, got {value!r}")
        if self.retries < 0:
            raise ValueError(f"data.remote.retries must be 0 or more (tries after the first), got {self.retries}")
        if self.fetch_ahead < 1:
            raise ValueError(f"data.remote.fetch_ahead must be at least 1 (shards downloaded at once), got {self.fetch_ahead}")


class FetchError(Exception):
    """One try failed: ``message`` in words; ``retry``: whether another try may succeed."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.message, self.retry = message, retry


def seconds(value: float) -> str:
    """``60 s``, ``0.5 s``."""
    return f"{value:g} s"


def size_pair(done: int, total: int | None) -> str:
    """``0.8 of 1.5 MB`` (or ``20480 of 40960 bytes`` below 1 MB, where tenths of a MB say little)."""
    largest = total if total is not None else done
    if largest < 1_000_000:
        return f"{done} of {total} bytes" if total is not None else f"{done} bytes"
    return f"{done / 1e6:.1f} of {total / 1e6:.1f} MB" if total is not None else f"{done / 1e6:.1f} MB"


def _connection_words(error: OSError) -> str:
    """An OS error of a connection in words: ``connection refused``, ``connection reset``, the resolver's message."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, socket.gaierror):
        return f"host not found ({error.strerror})"
    return error.strerror or str(error) or type(error).__name__


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if os.name == "posix" else None
_PR_SET_PDEATHSIG = 1


def exit_with_parent() -> None:
    """Linux: this process is killed when the one that started it dies (a killed run leaves no reader behind)."""
    if _libc is not None and hasattr(_libc, "prctl"):
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _command_start() -> None:  # runs in the command's process, between fork and exec
    exit_with_parent()


class Download:
    """One shard fetched into ``data`` on a daemon thread, with bounded tries (see the module docstring).

    ``condition`` (shared by the downloads of one reader) is notified whenever bytes
    arrive or the state changes. When ``done``, ``error`` is None or the reason it
    failed for good, in words; ``data`` holds every byte received, in order, either way.
    ``tries`` counts the tries begun, ``waiting`` is true between them; ``last_progress``
    is when a byte last came.
    """

    def __init__(self, url: str, config: RemoteConfig, condition: threading.Condition) -> None:
        self.url, self.config, self.condition = url, config, condition
        self.data = bytearray()
        self.total: int | None = None
        self.error: str | None = None
        self.done = False
        self.waiting = False
        self.tries = 0
        self.last_progress = time.monotonic()
        self._cancelled = False
        self._socket: socket.socket | None = None
        self._process: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, name=f"download {url[:80]}", daemon=True)

    def start(self) -> Download:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Stops the download: its connection is shut, its command killed; the thread then ends by itself."""
        with self.condition:
            self._cancelled = True
            self.condition.notify_all()
        sock, process = self._socket, self._process
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if process is not None:
            _kill(process)

    # The tries

    def _run(self) -> None:
        tries, error = 0, None
        while not self._cancelled:
            tries += 1
            self.tries = tries
            try:
                if self.url.startswith("pipe:"):
                    self._pipe_try()
                elif self.url.startswith(("http://", "https://")):
                    self._http_try()
                else:
                    self._file_try()
                error = None
                break
            except FetchError as failure:
                error = failure.message if tries == 1 else f"{failure.message} ({tries} tries)"
                if not failure.retry or tries > self.config.retries:
                    break
            self._wait(self.config.backoff * 2 ** (tries - 1))
        with self.condition:
            self.error = error or ("cancelled" if self._cancelled else None)
            self.done = True
            self.condition.notify_all()

    def _wait(self, delay: float) -> None:
        deadline = time.monotonic() + delay
        with self.condition:
            self.waiting = True
            self.condition.notify_all()
            while not self._cancelled and time.monotonic() < deadline:
                self.condition.wait(deadline - time.monotonic())
            self.waiting = False
            self.last_progress = time.monotonic()  # a new try starts: its patience starts too

    def _receive(self, chunk: bytes, skip: int) -> int:
        """Appends ``chunk`` less its first ``skip`` bytes (held already); returns the bytes still to skip."""
        now = time.monotonic()
        with self.condition:
            self.last_progress = now
            if skip < len(chunk):
                self.data += chunk[skip:] if skip else chunk
                self.condition.notify_all()
        return max(0, skip - len(chunk))

    # HTTP(S)

    def _http_try(self) -> None:
        url = self.url
        for _ in range(_MAX_REDIRECTS + 1):
            connection, response = self._request(url)
            try:
                location = response.getheader("Location")
                if response.status in (301, 302, 303, 307, 308) and location:
                    url = urllib.parse.urljoin(url, location)
                    continue
                skip = self._check_response(response)
                self._read_body(response, skip)
                return
            finally:
                self._socket = None
                connection.close()
        raise FetchError(f"more than {_MAX_REDIRECTS} redirects", retry=False)

    def _request(self, url: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        parts = urllib.parse.urlsplit(url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        # The socket's timeout bounds every wait for a byte: connecting, the headers, the body.
        connection = kind(parts.hostname, parts.port, timeout=self.config.stall_timeout)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Range": f"bytes={len(self.data)}-"} if self.data else {}
        try:
            connection.connect()
            self._socket = connection.sock
            if self._cancelled:
                raise FetchError("cancelled", retry=False)
            connection.request("GET", path, headers=headers)
            return connection, connection.getresponse()
        except TimeoutError:  # socket.timeout is TimeoutError from Python 3.10 on
            connection.close()
            raise FetchError(f"no data for {seconds(self.config.stall_timeout)}", retry=True) from None
        except http.client.RemoteDisconnected:
            connection.close()
            raise FetchError("connection closed before a response", retry=True) from None
        except OSError as error:
            connection.close()
            raise FetchError(_connection_words(error), retry=True) from None
        except http.client.HTTPException as error:
            connection.close()
            raise FetchError(f"bad HTTP response ({type(error).__name__}: {error})", retry=True) from None

    def _check_response(self, response: http.client.HTTPResponse) -> int:
        """Refuses an error status; returns how many bytes of the body are held already (to skip)."""
        status = response.status
        if status >= 400 or status not in (200, 206):
            retry = status >= 500 or status == 429  # the server's trouble, or too many requests: may pass
            raise FetchError(f"HTTP {status} {response.reason}".rstrip(), retry=retry)
        held = len(self.data)
        if status == 206:  # Content-Range: bytes START-END/TOTAL
            content_range = response.getheader("Content-Range", "")
            span, _, total = content_range.rpartition("/")
            start = int(span.split()[-1].split("-")[0]) if span else 0
            if total.isdigit():
                self.total = int(total)
            if start > held:
                raise FetchError(f"the server resumed at byte {start}, not {held}", retry=False)
            return held - start
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit():
            self.total = int(length)
        return held  # the server sent the whole shard again

    def _read_body(self, response: http.client.HTTPResponse, skip: int) -> None:
        try:
            while True:
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                skip = self._receive(chunk, skip)
        except TimeoutError:
            raise FetchError(f"no data for {seconds(self.config.stall_timeout)}", retry=True) from None
        except (OSError, http.client.HTTPException):
            if self._cancelled:
                raise FetchError("cancelled", retry=False) from None
            raise FetchError(f"connection cut after {size_pair(len(self.data), self.total)}", retry=True) from None
        if self._cancelled:
            raise FetchError("cancelled", retry=False)
        if self.total is not None and len(self.data) < self.total:
            raise FetchError(f"connection cut after {size_pair(len(self.data), self.total)}", retry=True)

    # Anything else (a local file beside remote shards in one source): opened as webdataset opens it

    def _file_try(self) -> None:
        try:
            with webdataset.gopen(self.url, "rb") as stream:
                skip = len(self.data)
                while chunk := stream.read(_CHUNK):
                    skip = self._receive(chunk, skip)
        except OSError as error:
            raise FetchError(f"cannot read it ({error.strerror or error})", retry=False) from None

    # pipe: commands

    def _pipe_try(self) -> None:
        command = self.url[len("pipe:"):]
        process = subprocess.Popen(
            command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_command_start,
        )
        self._process = process
        last_line: list[str] = []
        reader = threading.Thread(target=_last_line, args=(process.stderr, last_line), daemon=True)
        reader.start()
        try:
            self._read_command(process, skip=len(self.data))
            returncode = process.wait(timeout=self.config.stall_timeout)
        except subprocess.TimeoutExpired:
            _kill(process)
            raise FetchError(f"the command did not exit {seconds(self.config.stall_timeout)} after its output ended",
                             retry=True) from None
        finally:
            if process.poll() is None:
                _kill(process)
            process.stdout.close()
            reader.join(timeout=1.0)
            self._process = None
        if self._cancelled:
            raise FetchError("cancelled", retry=False)
        if returncode != 0:
            how = f"exit status {returncode}" if returncode > 0 else f"signal {-returncode}"
            said = f": {last_line[0]}" if last_line else " and wrote nothing to standard error"
            # Not tried again: only the command knows whether its failure may pass (curl --retry, aws's retries).
            raise FetchError(f"command failed with {how}{said}", retry=False)

    def _read_command(self, process: subprocess.Popen, skip: int) -> None:
        """Reads the command's output until it ends; a watchdog kills it after ``stall_timeout`` without a byte."""
        descriptor = process.stdout.fileno()
        while True:
            ready, _, _ = select.select([descriptor], [], [], self.config.stall_timeout)
            if not ready:
                _kill(process)
                raise FetchError(f"no data for {seconds(self.config.stall_timeout)}", retry=True)
            chunk = os.read(descriptor, _CHUNK)
            if not chunk:
                return
            skip = self._receive(chunk, skip)


def _last_line(stream, holder: list[str]) -> None:
    """Keeps the last non-empty line of ``stream`` in ``holder[0]`` until the stream ends."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").strip()
        if line:
            holder[:] = [line]
    stream.close()


def _kill(process: subprocess.Popen) -> None:
    """Kills the command and everything it started (its own session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


__all__ = ["Download", "FETCHED_PREFIXES", "FetchError", "RemoteConfig", "exit_with_parent", "is_fetched", "size_pair"]
