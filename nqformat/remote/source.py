"""The reader's file layer for an http(s) URL: a local prefix of the file, extended on demand.

:class:`RemoteSource` is a :class:`~nqformat.container.source.FileSource` over the cached prefix
(see :mod:`nqformat.remote.cache`) whose ``pread`` and ``map`` first make sure the prefix reaches
the end of the range asked, fetching only the missing bytes with one range request. The reader
asks, in order, for the preamble, the header, ``[DATA.offset, part_end)`` and (only when LOW is
paged in) ``[LOW.offset, full_end)``, so the part-bit model costs three requests and nothing at
or past ``part_end`` (spec §9). ``advise(start, end)`` announces a sequential read: the next
request then runs to ``end`` and is consumed as it arrives (streamed LOW, spec §11 step 13).
"""

from __future__ import annotations

import os
import pathlib
import threading
from collections.abc import Iterator

from nqformat.container import spec
from nqformat.container.source import FileSource
from nqformat.remote.cache import CacheEntry, default_cache_dir
from nqformat.remote.http import HTTPRangeClient, Validators

__all__ = ["RemoteSource"]


class RemoteSource(FileSource):
    """Byte source of one URL (see the module docstring). ``size`` is the remote file's size;
    ``bytes_fetched`` and ``requests`` count the network traffic; ``from_cache`` says whether
    the prefix held bytes from an earlier session when it was opened."""

    def __init__(
        self,
        url: str,
        *,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        retries: int = 4,
    ) -> None:
        root = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.url = url
        self._entry = CacheEntry(url, root if cache else None, temporary=not cache)
        self._stream: Iterator[bytes] | None = None
        self._stream_pos = 0  # file offset of the next byte the open request delivers
        self._stream_end = 0
        self._advised = 0
        self._append = -1
        self._lock = threading.Lock()  # one thread of this opener extends the prefix at a time
        self._client: HTTPRangeClient | None = None
        try:
            with self._entry.locked():
                expect = self._entry.validators()
                if expect is None or self._entry.prefix_length() > expect.size:
                    self._entry.reset()
                    expect = None
                self.from_cache = expect is not None and self._entry.prefix_length() > 0
                self._client = HTTPRangeClient(url, expect=expect, timeout=timeout, retries=retries)
                self._append = os.open(self._entry.data, os.O_WRONLY | os.O_APPEND)
                self._have = self._entry.prefix_length()
                if expect is None:
                    # first contact: the preamble's request also tells the file's size
                    # (Content-Range) and its validators, which pin every later request to
                    # this version
                    self._size = 1 << 62  # not known yet; the response clips the range
                    self._extend_locked(spec.PREAMBLE_SIZE)
                assert self._client.validators is not None
                self._size = self._client.validators.size
                self._entry.save_validators(self._client.validators)
            super().__init__(self._entry.data)
        except BaseException:
            self._close_remote()
            raise
        self.size = self._size  # the remote file's, not the local prefix's

    @property
    def validators(self) -> Validators | None:
        assert self._client is not None
        return self._client.validators

    @property
    def bytes_fetched(self) -> int:
        assert self._client is not None
        return self._client.bytes_received

    @property
    def requests(self) -> int:
        assert self._client is not None
        return self._client.requests

    @property
    def prefix_length(self) -> int:
        """Bytes of the file held locally (from the start)."""
        return self._have

    def forget(self) -> None:
        """Drop the cached prefix and validators (after :meth:`close`)."""
        with self._entry.locked():
            self._entry.reset()

    def advise(self, start: int, end: int) -> None:
        """A sequential read of ``[start, end)`` follows: fetch it as one request."""
        self._advised = max(self._advised, min(end, self._size))

    def pread(self, offset: int, length: int) -> bytes:
        self._ensure(offset + length)
        return super().pread(offset, length)

    def map(self, key: str, start: int, end: int) -> None:
        self._ensure(end)
        super().map(key, start, end)

    def _ensure(self, end: int) -> None:
        """Extend the local prefix to ``min(end, size)`` bytes."""
        if self._have >= min(end, self._size):
            return  # already local: no lock on the common path
        with self._lock, self._entry.locked():
            self._extend_locked(end)

    def _extend_locked(self, end: int) -> None:
        """:meth:`_ensure`, holding the entry's lock."""
        assert self._client is not None
        # another opener of this URL may have extended the shared prefix meanwhile
        self._have = os.fstat(self._append).st_size
        if self._stream is not None and self._stream_pos != self._have:
            self._stream.close()  # it would deliver bytes the prefix already has
            self._stream = None
        end = min(end, self._size)
        while self._have < end:
            if self._stream is None:
                self._stream_end = max(end, self._advised)
                self._stream = self._client.stream(self._have, self._stream_end)
                self._stream_pos = self._have
            chunk = next(self._stream, None)
            if chunk is None:  # this request is done
                self._stream = None
                if self._stream_end >= end:
                    break  # it covered `end`: the file is shorter than the range asked
                continue  # a request advised earlier ended before `end`: ask for the rest
            view = memoryview(chunk)
            while view:
                written = os.write(self._append, view)
                view = view[written:]
            self._have += len(chunk)
            self._stream_pos += len(chunk)
        if self._stream is not None and self._have >= self._stream_end:
            self._stream.close()
            self._stream = None

    def __enter__(self) -> RemoteSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        super().close()
        self._close_remote()

    def _close_remote(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._append >= 0:
            os.close(self._append)
            self._append = -1
        if self._client is not None:
            self._client.close()
        self._entry.discard_if_temporary()
