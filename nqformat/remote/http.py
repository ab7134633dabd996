"""Byte ranges of one URL over HTTP(S), with urllib3.

Why urllib3: it is the engine under ``requests`` (so usually installed already), it pools
keep-alive connections, retries with exponential backoff (``Retry``) and separates connect and
read timeouts (``Timeout``), and it hands over the raw body (``decode_content=False``) with the
response headers untouched, so this module can insist on what progressive loading needs: a 206
with exactly the range asked, no ``Content-Encoding``, and the same file every time. fsspec's
HTTP filesystem, by contrast, quietly downloads the whole file when a server ignores ``Range``.

A response that breaks off mid-body (reset, read timeout) is resumed from the last byte
received, with the same backoff; each resumed response is checked like the first.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import urllib3
from urllib3.exceptions import HTTPError as _Urllib3Error
from urllib3.util.retry import Retry

from nqformat.remote import is_url
from nqformat.remote.errors import (
    ContentEncodingError,
    RangeNotSupportedError,
    RemoteChangedError,
    RemoteError,
)

__all__ = ["HTTPRangeClient", "Validators"]

CHUNK = 256 * 1024  # bytes read from the socket at a time (and the progress granularity)


@dataclass(frozen=True)
class Validators:
    """What identifies one version of the remote file: ``size`` always, ``etag`` and
    ``last_modified`` when the server sends them."""

    size: int
    etag: str | None = None
    last_modified: str | None = None

    def differs(self, other: Validators) -> str | None:
        """Why ``other`` is another file than this one, or None if it is the same."""
        if other.size != self.size:
            return f"its size changed from {self.size} to {other.size} bytes"
        if self.etag and other.etag and self.etag != other.etag:
            return f"its ETag changed from {self.etag} to {other.etag}"
        if self.last_modified and other.last_modified and self.last_modified != other.last_modified:
            return f"its Last-Modified changed from {self.last_modified} to {other.last_modified}"
        return None


def _content_range(value: str | None) -> tuple[int, int, int] | None:
    """``bytes a-b/total`` -> (a, b + 1, total); None if absent or of another form."""
    if not value or not value.startswith("bytes ") or "/" not in value:
        return None
    span, _, total = value[6:].partition("/")
    first, _, last = span.partition("-")
    try:
        return int(first), int(last) + 1, int(total)
    except ValueError:
        return None


class HTTPRangeClient:
    """GETs byte ranges of ``url``; every response must be a 206 of the file first seen (or of
    ``expect``, the validators of a cached copy)."""

    def __init__(
        self,
        url: str,
        *,
        expect: Validators | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.25,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not is_url(url):
            raise RemoteError(f"not an http(s) URL: {url!r}", url)
        self.url = url
        self.validators = expect
        self.retries = retries
        self.backoff = backoff
        self.requests = 0  # responses received (retries included)
        self.bytes_received = 0  # body bytes received
        self._headers = {"Accept-Encoding": "identity", **(headers or {})}
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=timeout)
        self._retry = Retry(
            total=retries,
            backoff_factor=backoff,
            status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=frozenset({"GET"}),
            raise_on_status=False,  # the last response is ours to report
            respect_retry_after_header=True,
        )
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=2, retries=self._retry)

    def close(self) -> None:
        self._pool.clear()

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` (fewer only where the file ends first)."""
        return b"".join(self.stream(start, end))

    def stream(self, start: int, end: int) -> Iterator[bytes]:
        """Chunks of bytes ``[start, end)`` as they arrive. ``end`` past the end of the file is
        clipped to it (the first response tells the size)."""
        pos, failures = start, 0
        while pos < end:
            resp = self._open(pos, end)
            if resp is None:  # 416 at pos: the file ends there
                return
            try:
                _, stop, _ = _content_range(resp.headers.get("Content-Range"))  # type: ignore[misc]
                end = min(end, stop)
                for chunk in resp.stream(CHUNK, decode_content=False):
                    if len(chunk) > end - pos:  # never more than asked, whatever is sent
                        chunk = chunk[: end - pos]
                    pos += len(chunk)
                    self.bytes_received += len(chunk)
                    yield chunk
                    if pos >= end:
                        break
                if pos < end:
                    raise _Truncated()
            except (_Urllib3Error, _Truncated, OSError) as exc:
                failures += 1
                if failures > self.retries:
                    raise RemoteError(
                        f"{self.url}: the response broke off at byte {pos} of [{start}, {end}) "
                        f"{failures} times ({exc.__class__.__name__}: {exc})",
                        self.url,
                    ) from None
                time.sleep(self.backoff * 2 ** (failures - 1))
            finally:
                if pos >= end and resp.length_remaining == 0:
                    resp.release_conn()  # body fully read: the connection goes back to the pool
                else:
                    resp.close()  # unread bytes on it: never reuse it

    def _open(self, start: int, end: int) -> urllib3.BaseHTTPResponse | None:
        """One checked 206 response for ``[start, end)``; None if the server says 416 for a
        range starting at the end of the file."""
        headers = {**self._headers, "Range": f"bytes={start}-{end - 1}"}
        try:
            resp = self._pool.request(
                "GET",
                self.url,
                headers=headers,
                preload_content=False,
                decode_content=False,
                timeout=self._timeout,
                redirect=True,
            )
        except _Urllib3Error as exc:
            reason = getattr(exc, "reason", None) or exc
            raise RemoteError(
                f"{self.url}: request failed after retries: {reason}", self.url
            ) from None
        self.requests += 1
        try:
            return self._check(resp, start, end)
        except BaseException:
            resp.close()  # never read a body we refuse (it may be the whole file)
            raise

    def _check(
        self, resp: urllib3.BaseHTTPResponse, start: int, end: int
    ) -> urllib3.BaseHTTPResponse | None:
        status = resp.status
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if status == 416:
            total = _content_range(resp.headers.get("Content-Range", "").replace("*", "0-0"))
            size = total[2] if total else None
            if size is not None and start >= size:
                self._pin(Validators(size, resp.headers.get("ETag"), None), start)
                resp.close()
                return None
            raise RemoteError(f"{self.url}: range [{start}, {end}) not satisfiable (416)", self.url)
        if status == 200:
            raise RangeNotSupportedError(
                f"{self.url}: the server ignored the Range header and started sending the whole "
                f"file (status 200, Content-Length {resp.headers.get('Content-Length', '?')}); "
                "progressive loading needs a server that honours byte ranges (HTTP 206)",
                self.url,
            )
        if status != 206:
            raise RemoteError(f"{self.url}: HTTP {status} {resp.reason or ''}".rstrip(), self.url)
        if encoding not in ("", "identity"):
            raise ContentEncodingError(
                f"{self.url}: the server applied Content-Encoding {encoding!r} to a range "
                "request; serve .nq files without compression (they are compressed already "
                "where it pays, spec §8)",
                self.url,
            )
        got = _content_range(resp.headers.get("Content-Range"))
        if got is None or got[0] != start or got[1] > end or got[1] <= start:
            raise RangeNotSupportedError(
                f"{self.url}: asked for bytes [{start}, {end}) but the server answered "
                f"Content-Range {resp.headers.get('Content-Range')!r}",
                self.url,
            )
        length = resp.headers.get("Content-Length")
        if length is not None and length.strip() != str(got[1] - got[0]):
            raise RangeNotSupportedError(
                f"{self.url}: Content-Range {resp.headers['Content-Range']!r} but Content-Length "
                f"{length}: the response is not the range it claims",
                self.url,
            )
        seen = Validators(got[2], resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
        self._pin(seen, start)
        if got[1] < min(end, got[2]):
            raise RangeNotSupportedError(
                f"{self.url}: asked for bytes [{start}, {end}) but got only up to {got[1]}",
                self.url,
            )
        return resp

    def _pin(self, seen: Validators, start: int) -> None:
        if self.validators is None:
            self.validators = seen
            return
        why = self.validators.differs(seen)
        if why is not None:
            raise RemoteChangedError(
                f"{self.url} changed between requests ({why}) while reading from byte {start}: "
                "bytes of two versions cannot be mixed; open it again",
                self.url,
            )


class _Truncated(Exception):
    """The body ended before the range did."""
