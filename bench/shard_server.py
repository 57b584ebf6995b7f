"""A loopback HTTP server for shards, with a store's latency, a per-connection bandwidth and scripted faults.

Serves the files of one folder on ``127.0.0.1`` (a free port), as an object store or
a web server would: ``Content-Length``, ``Range`` requests answered with 206. Each
response waits ``first_byte_delay`` seconds before its first byte and sends at most
``bandwidth`` bytes per second on each connection. A file may be given a fault
(:data:`FAULTS`):

- ``stall``: sends half the file, then nothing (until the server stops);
- ``404``: answers ``404 Not Found``;
- ``500-then-ok``: answers ``500 Internal Server Error`` to the first request, then serves;
- ``cut``: sends half the file and closes the connection, every time (a request for
  the rest gets nothing and is closed too);
- ``cut-once``: the same to the first request only, then serves.

``ranges=False`` makes it a server that ignores ``Range`` and always sends the whole file.

Used by ``python -m bench remote`` and the remote-shard tests; it stops with its
``with`` block, and never waits longer than ``max_stall`` seconds in a stall.
"""
from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

FAULTS = ("stall", "404", "500-then-ok", "cut", "cut-once")
_CHUNK = 1 << 16


class ShardServer:
    """``with ShardServer(folder, faults={"b.tar": "stall"}) as server: server.url("a.tar")``."""

    def __init__(self, folder: str | Path, *, first_byte_delay: float = 0.0, bandwidth: float | None = None,
                 faults: dict[str, str] | None = None, max_stall: float = 600.0, ranges: bool = True) -> None:
        self.folder = Path(folder)
        self.ranges = ranges
        self.first_byte_delay, self.bandwidth, self.max_stall = first_byte_delay, bandwidth, max_stall
        self.faults = dict(faults or {})
        unknown = {name: fault for name, fault in self.faults.items() if fault not in FAULTS}
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {FAULTS}")
        self.requests: list[tuple[str, str | None]] = []  # (file name, Range header) of each request
        self.in_flight = self.most_in_flight = 0  # responses being sent now, and the most at once
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> ShardServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def free_port() -> int:
    """A loopback port nothing listens on (for a refused connection)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _handler_class(server: ShardServer) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: tests and benchmarks print their own lines
            pass

        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            with server._lock:
                server.in_flight += 1
                server.most_in_flight = max(server.most_in_flight, server.in_flight)
            try:
                self._respond()
            finally:
                with server._lock:
                    server.in_flight -= 1

        def _respond(self) -> None:
            name = self.path.lstrip("/")
            range_header = self.headers.get("Range")
            with server._lock:  # concurrent requests for one file: exactly one of them is its first
                server.requests.append((name, range_header))
                first = sum(1 for n, _ in server.requests if n == name) == 1
            range_header = range_header if server.ranges else None
            fault = server.faults.get(name)
            path = server.folder / name
            if fault == "404" or not path.is_file():
                self._status(404, "Not Found")
                return
            if fault == "500-then-ok" and first:
                self._status(500, "Internal Server Error")
                return
            data = path.read_bytes()
            start = int(range_header.split("=")[1].split("-")[0]) if range_header else 0
            body_end = len(data) // 2 if fault in ("stall", "cut") or (fault == "cut-once" and first) else len(data)
            if range_header:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if server.first_byte_delay:
                time.sleep(server.first_byte_delay)
            self._send(data[start:max(start, body_end)])
            if fault == "stall":
                server.stopping.wait(server.max_stall)
            self.close_connection = True

        def _status(self, code: int, message: str) -> None:
            body = f"{code} {message}\n".encode()
            self.send_response(code, message)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send(self, body: bytes) -> None:
            """Sends ``body`` no faster than the bandwidth allows (in chunks, sleeping to keep to the pace)."""
            start = time.perf_counter()
            for offset in range(0, len(body), _CHUNK):
                if server.stopping.is_set():
                    return
                try:
                    self.wfile.write(body[offset:offset + _CHUNK])
                except OSError:
                    return  # the reader went away
                if server.bandwidth:
                    ahead = (offset + _CHUNK) / server.bandwidth - (time.perf_counter() - start)
                    if ahead > 0:
                        time.sleep(ahead)

    return Handler


__all__ = ["FAULTS", "ShardServer", "free_port"]
