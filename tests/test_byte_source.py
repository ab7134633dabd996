"""NQFile reads only through its ByteSource, so another source can stand in for the file."""

from __future__ import annotations

import pathlib

import numpy as np

import nqformat
from nqformat.container.reader import NQFile
from nqformat.container.source import FileSource


class _Recording(FileSource):
    """A FileSource that records the ranges asked of it."""

    def __init__(self, path: pathlib.Path) -> None:
        super().__init__(path)
        self.preads: list[tuple[int, int]] = []
        self.closed = False

    def pread(self, offset: int, length: int) -> bytes:
        self.preads.append((offset, length))
        return super().pread(offset, length)

    def close(self) -> None:
        self.closed = True
        super().close()


def test_a_given_source_serves_every_byte_and_is_closed(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "m.nq"
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    with nqformat.NQWriter(path, n=4, h=2, metadata={}) as w:
        w.add_raw("t", values)
    src = _Recording(path)
    with NQFile(tmp_path / "label-only.nq", source=src) as f:
        assert np.array_equal(f.read("t"), values)
        assert f.file_size == path.stat().st_size
        assert f.bytes_read == src.bytes_read > 0
    assert src.preads[0] == (0, 256)  # the preamble first (§11 step 1)
    assert src.closed
