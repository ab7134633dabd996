"""A small static file server with byte ranges, for tests, examples and benchmarks.

It serves the files of one folder on 127.0.0.1 (stdlib ``http.server``, HTTP/1.1 keep-alive),
honours one ``Range: bytes=a-b`` per request with 206 and ``Content-Range`` (RFC 9110 §14),
sends ``ETag``/``Last-Modified`` derived from the file's size and mtime (as nginx does), and
logs every response with the bytes of body it sent, so a test can prove what a client
transferred. It can also simulate a slow link (a rate limit and a round-trip delay per request
and per new connection) and misbehave on purpose (ignore Range, claim a Content-Encoding).

Not a production server: it exists so that the HTTP path is tested against real sockets, and
to try a URL locally (``python -m http.server`` ignores ``Range``, which the client refuses)::

    python -m nqformat.remote.server FOLDER [--port 8000] [--mbit 20] [--rtt-ms 100]
"""

from __future__ import annotations

import email.utils
import http.server
import pathlib
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Logged", "RangeServer", "serve"]

LOOPBACK = "127.0.0.1"
_CHUNK = 64 * 1024
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_SOCKET_TIMEOUT_S = 30.0  # a stalled client cannot hold a server thread forever


@dataclass(frozen=True)
class Logged:
    """One response: the file asked for, the Range header (or None), status, body bytes sent."""

    name: str
    range: str | None
    status: int
    sent: int


@dataclass
class RangeServer:
    """Settings and log of a running server (see :func:`serve`). Change the settings at any
    time; they apply to the next request."""

    root: pathlib.Path
    url: str = ""
    rate_bytes_per_s: float | None = None  # None: as fast as loopback goes
    rtt_s: float = 0.0  # added before each response and on each new connection
    honour_range: bool = True
    content_encoding: str | None = None
    fail_next: int = 0  # answer this many next requests with 503 (to test retries)
    cut_next: int | None = None  # close the next response after this many body bytes
    overrun: int = 0  # send this many bytes past every range (Content-Length says so too)
    log: list[Logged] = field(default_factory=list)
    connections: int = 0
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _in_flight: int = 0  # responses begun and not yet logged
    # log slots are taken when a request arrives, so the log is in arrival order even when the
    # thread of an earlier response records after that of a later one (two connections)
    _issued: int = 0  # slots handed out
    _logged: int = 0  # slots below this one are in the log
    _pending: dict[int, Logged] = field(default_factory=dict)  # recorded, not yet in the log

    def url_of(self, name: str) -> str:
        return f"{self.url}/{name}"

    def bytes_sent(self) -> int:
        return sum(e.sent for e in self.requests())

    def requests(self) -> list[Logged]:
        """The log, once every response already begun is logged (a client can have read a
        whole body before the server thread gets to record it)."""
        with self._lock:
            self._lock.wait_for(lambda: self._in_flight == 0, timeout=_SOCKET_TIMEOUT_S)
            return list(self.log)

    def _begin(self) -> int:
        with self._lock:
            self._in_flight += 1
            self._issued += 1
            return self._issued - 1

    def _record(self, slot: int, entry: Logged) -> None:
        with self._lock:
            self._pending[slot] = entry
            self._in_flight -= 1
            while self._logged in self._pending:
                self.log.append(self._pending.pop(self._logged))
                self._logged += 1
            self._lock.notify_all()

    def clear(self) -> None:
        with self._lock:
            self.log.clear()
            self.connections = 0


def _handler(state: RangeServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a client's pool reuses the connection
        timeout = _SOCKET_TIMEOUT_S

        def setup(self) -> None:
            super().setup()
            with state._lock:
                state.connections += 1
            if state.rtt_s:
                time.sleep(state.rtt_s)  # the TCP handshake of a new connection

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, *, body: bool) -> None:
            slot = state._begin()
            entry = Logged(self.path, self.headers.get("Range"), 500, 0)
            try:
                entry = self._respond(body)
            finally:
                state._record(slot, entry)

        def _respond(self, body: bool) -> Logged:
            name = self.path.lstrip("/").split("?", 1)[0]
            path = (state.root / name).resolve()
            header = self.headers.get("Range")
            if state.rtt_s:
                time.sleep(state.rtt_s)  # request up, first byte down
            if not name or path.parent != state.root.resolve() or not path.is_file():
                return self._empty(404, name)
            with state._lock:
                fail, state.fail_next = state.fail_next > 0, max(state.fail_next - 1, 0)
                cut, state.cut_next = state.cut_next, None
            if fail:
                return self._empty(503, name)
            stat = path.stat()
            size = stat.st_size
            etag = f'"{stat.st_mtime_ns:x}-{size:x}"'
            start, end, status = 0, size, 200
            if header is not None and state.honour_range:
                m = _RANGE.match(header.strip())
                if m is None:
                    return self._empty(416, name, size)
                start = int(m.group(1))
                end = min(int(m.group(2)) + 1, size) if m.group(2) else size
                if start >= size or end <= start:
                    return self._empty(416, name, size)
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes" if state.honour_range else "none")
            # a broken server, on purpose: more bytes than the range (and a matching length)
            end_sent = min(end + state.overrun, size) if status == 206 else end
            self.send_header("Content-Length", str(end_sent - start))
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
            if state.content_encoding:
                self.send_header("Content-Encoding", state.content_encoding)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            sent = 0
            if body:
                sent = self._copy(path, start, end_sent if cut is None else min(end, start + cut))
            if cut is not None:
                self.close_connection = True  # the client sees a body cut short
            return Logged(name, header, status, sent)

        def _copy(self, path: pathlib.Path, start: int, end: int) -> int:
            sent = 0
            began = time.perf_counter()
            with path.open("rb") as f:
                f.seek(start)
                while sent < end - start:
                    chunk = f.read(min(_CHUNK, end - start - sent))
                    if not chunk:
                        break
                    try:
                        self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        break  # the client went away (for instance after a Range error)
                    sent += len(chunk)
                    if state.rate_bytes_per_s:
                        due = began + sent / state.rate_bytes_per_s
                        delay = due - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
            return sent

        def _empty(self, status: int, name: str, size: int | None = None) -> Logged:
            self.send_response(status)
            if size is not None:
                self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return Logged(name, self.headers.get("Range"), status, 0)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the log above is the record; stderr noise helps nobody

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that hangs up (after refusing a response) is not news
        super().handle_error(request, client_address)  # type: ignore[arg-type]


@contextmanager
def serve(root: str | pathlib.Path, port: int = 0, **settings: Any) -> Iterator[RangeServer]:
    """Serve the files of folder ``root`` on 127.0.0.1:``port`` (0: an ephemeral one) until the
    block ends. ``settings`` are :class:`RangeServer` fields (``rate_bytes_per_s``, ``rtt_s``,
    ...)."""
    state = RangeServer(pathlib.Path(root), **settings)
    server = _Server((LOOPBACK, port), _handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True  # never outlives the process, even if the client crashes
    thread.start()
    host, port = server.server_address[:2]
    state.url = f"http://{host}:{port}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=_SOCKET_TIMEOUT_S)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Serve a folder on 127.0.0.1 with byte ranges.")
    parser.add_argument("folder", type=pathlib.Path)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--mbit", type=float, help="rate limit, Mbit/s (default: none)")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="added per request")
    args = parser.parse_args(argv)
    rate = args.mbit * 1e6 / 8 if args.mbit else None
    with serve(args.folder, args.port, rate_bytes_per_s=rate, rtt_s=args.rtt_ms / 1000) as srv:
        print(f"serving {args.folder} at {srv.url}/ (Ctrl-C stops)", flush=True)
        with suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
