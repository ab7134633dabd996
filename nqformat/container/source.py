"""The reader's file layer: every byte a :class:`~nqformat.container.reader.NQFile` sees comes
through a :class:`ByteSource`.

:class:`FileSource` serves a local file with ``pread`` only: a "map" is a window the reader
may read (``[DATA.offset, part_end)`` from open, LOW only once it is paged in), and every view
is a bounded ``pread`` into memory of its own. It never memory-maps the file, because a mapping
of bytes another process then truncates kills the reader with SIGBUS on the next access (spec
§10: a file that changes while it is open); a read past the file's current end is a
:class:`~nqformat.errors.TruncatedError` instead. It counts every byte requested, so that tests
can prove the part-bit model never touches LOW. Another source (an HTTP range reader, say) only
has to implement the same small interface.
"""

from __future__ import annotations

import os
from typing import Protocol

from nqformat.container import spec
from nqformat.errors import LayoutError, TruncatedError

__all__ = ["CRC_CHUNK", "ByteSource", "FileSource", "crc_range"]

#: bytes per view when a whole section's CRC is computed: bounds that check's memory
CRC_CHUNK = 16 << 20


class ByteSource(Protocol):
    """What the reader needs of a file: its size, positioned reads and named zero-copy views.

    ``map(key, start, end)`` makes bytes ``[start, end)`` available to ``view`` under ``key``
    (a file maps them, a remote source may fetch them); ``unmap(key)`` drops them again.
    ``bytes_read`` sums every byte requested through ``pread`` and ``view``; ``max_end`` is
    the end of the furthest range requested.
    """

    size: int
    bytes_read: int
    max_end: int

    def pread(self, offset: int, length: int) -> bytes: ...

    def map(self, key: str, start: int, end: int) -> None: ...

    def unmap(self, key: str) -> None: ...

    def mapped(self, key: str) -> bool: ...

    def view(self, key: str, offset: int, length: int) -> memoryview: ...

    def close(self) -> None: ...


class FileSource:
    """A local file, read with ``os.pread`` only (see :class:`ByteSource` and the module doc)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            self.size = os.fstat(self._fd).st_size
        except OSError:
            os.close(self._fd)
            raise
        self._maps: dict[str, tuple[int, int]] = {}
        self.bytes_read = 0
        self.max_end = 0

    def pread(self, offset: int, length: int) -> bytes:
        """File bytes ``[offset, offset + length)``; fewer where the file ends before."""
        self._count(offset, length)
        chunks = []
        while length:
            chunk = _pread(self._fd, length, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def map(self, key: str, start: int, end: int) -> None:
        """Let ``view`` read file bytes [start, end) under ``key`` (nothing is read yet)."""
        self._maps[key] = (start, end)

    def unmap(self, key: str) -> None:
        self._maps.pop(key, None)

    def mapped(self, key: str) -> bool:
        return key in self._maps

    def view(self, key: str, offset: int, length: int) -> memoryview:
        """File bytes [offset, offset+length) inside window ``key``, read now; TruncatedError
        when the file no longer has them (it was cut while open, §10)."""
        start, end = self._maps[key]
        if offset < start or offset + length > end:
            raise LayoutError(f"bytes [{offset}, {offset + length}) lie outside map {key}")
        data = self.pread(offset, length)
        if len(data) != length:
            raise TruncatedError(
                f"the file ends at {offset + len(data)} but bytes up to {offset + length} were "
                "there when it was opened: it was truncated while open (§10)"
            )
        return memoryview(data)

    def _count(self, offset: int, length: int) -> None:
        self.bytes_read += length
        self.max_end = max(self.max_end, offset + length)

    def close(self) -> None:
        for key in list(self._maps):
            self.unmap(key)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def crc_range(src: ByteSource, key: str, offset: int, length: int) -> int:
    """CRC-32 of bytes [offset, offset+length) of window ``key``, read in pieces of at most
    :data:`CRC_CHUNK` bytes, so a whole-section check never holds the section in memory."""
    crc = 0
    end = offset + length
    while offset < end:
        step = min(CRC_CHUNK, end - offset)
        crc = spec.crc32(src.view(key, offset, step), crc)
        offset += step
    return crc


def _pread(fd: int, length: int, offset: int) -> bytes:
    """os.pread where the OS has it (POSIX); seek + read elsewhere (Windows)."""
    if hasattr(os, "pread"):
        return os.pread(fd, length, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, length)
