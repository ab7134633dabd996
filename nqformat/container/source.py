"""The reader's file layer: every byte a :class:`~nqformat.container.reader.NQFile` sees comes
through a :class:`ByteSource`.

:class:`FileSource` serves a local file with ``pread`` and read-only mmaps of whole ranges (the
reader maps ``[DATA.offset, part_end)`` at open and LOW only when it is paged in). It counts every
byte requested, so that tests can prove the part-bit model never touches LOW. Another source (an
HTTP range reader, say) only has to implement the same small interface.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from typing import Protocol

from nqformat.errors import LayoutError

__all__ = ["ByteSource", "FileSource"]


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
    """A local file: ``os.pread`` plus read-only mmaps of whole ranges (see :class:`ByteSource`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            self.size = os.fstat(self._fd).st_size
        except OSError:
            os.close(self._fd)
            raise
        self._maps: dict[str, tuple[int, int, mmap.mmap | memoryview]] = {}
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
        """Map file bytes [start, end) read-only under ``key`` (nothing is read yet)."""
        if end <= start:
            self._maps[key] = (start, end, memoryview(b""))
            return
        base = start - start % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(self._fd, end - base, access=mmap.ACCESS_READ, offset=base)
        self._maps[key] = (base, end, mapped)

    def unmap(self, key: str) -> None:
        entry = self._maps.pop(key, None)
        if entry is not None and isinstance(entry[2], mmap.mmap):
            # arrays may still view it; the mapping then goes away with the last of them
            with contextlib.suppress(BufferError):
                entry[2].close()

    def mapped(self, key: str) -> bool:
        return key in self._maps

    def view(self, key: str, offset: int, length: int) -> memoryview:
        """Zero-copy view of file bytes [offset, offset+length) inside map ``key``."""
        base, end, mapped = self._maps[key]
        if offset < base or offset + length > end:
            raise LayoutError(f"bytes [{offset}, {offset + length}) lie outside map {key}")
        self._count(offset, length)
        return memoryview(mapped)[offset - base : offset - base + length]

    def _count(self, offset: int, length: int) -> None:
        self.bytes_read += length
        self.max_end = max(self.max_end, offset + length)

    def close(self) -> None:
        for key in list(self._maps):
            self.unmap(key)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _pread(fd: int, length: int, offset: int) -> bytes:
    """os.pread where the OS has it (POSIX); seek + read elsewhere (Windows)."""
    if hasattr(os, "pread"):
        return os.pread(fd, length, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, length)
