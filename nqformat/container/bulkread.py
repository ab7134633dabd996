"""Many blobs in few reads, as a part of :class:`~nqformat.container.reader.NQFile`: what the
codes-resident runtime reads at load (DATA and HIGH) and at an upgrade (LOW). Every blob is
still checked against its own CRC (§11 step 13) before it is used, many in one call
(:func:`nqformat.fused.crc32_ranges`), so a model with hundreds of small blobs does not pay a
read and a CRC call per blob."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from nqformat import fused
from nqformat.container import spec
from nqformat.container.header import TensorInfo
from nqformat.container.source import ByteSource
from nqformat.container.spec import Codec, Section
from nqformat.errors import ChecksumError, NQError

__all__ = ["BLOB_READ_PIECE", "BulkReads", "low_crc_error"]

#: the most bytes :meth:`BulkReads.blobs` reads at once (one blob larger than this is read
#: alone): a larger transient read of DATA would grow the heap past what malloc gives back,
#: which showed as resident memory of a codes-resident module (Lite0: +0.9 MB for a 0.7 MB DATA)
BLOB_READ_PIECE = 1 << 17


def low_crc_error(expected: int, actual: int) -> ChecksumError:
    """The whole-LOW rule's failure (§11 step 13): no L code of the file may be used."""
    return ChecksumError(
        f"LOW CRC is {expected:#010x}, computed {actual:#010x}: the full-bit data is corrupt "
        "(§11 step 13)"
    )


class BulkReads:
    """Mixin of :class:`~nqformat.container.reader.NQFile`; it uses the file's byte source,
    preamble, CRC bookkeeping and single-blob read (``_blob``)."""

    _src: ByteSource
    _pre: Any
    _verify_blobs: bool
    _checked: set[Any]
    _PART_MAP: str
    _LOW_MAP: str
    max_bytes: int
    # and NQFile's _check_open, _check_has_low, _drop_streamed_low, _release_levels, _blob,
    # page_in_low and low_resident

    def blobs(
        self, infos: Iterable[TensorInfo], which: Section, *, piece: int | None = BLOB_READ_PIECE
    ) -> list[memoryview]:
        """The stored bytes of the DATA or HIGH blobs of ``infos`` (in their order), as
        :meth:`_blob` gives each: CRC-checked (§11 step 13, when verifying) and decompressed;
        read as :meth:`blob_pieces` reads them (the views share their piece's memory), the
        blobs it leaves out one by one through :meth:`_blob`."""
        infos = list(infos)
        out: list[memoryview | None] = [None] * len(infos)
        for data, first, rows in self.blob_pieces(infos, which, piece=piece):
            for i in rows:
                ref = infos[i].data if which is Section.DATA else infos[i].high
                out[i] = data[ref.offset - first : ref.offset + ref.length - first]
        return [
            view if view is not None else self._blob(info, which)
            for info, view in zip(infos, out, strict=True)
        ]

    def blob_pieces(
        self, infos: list[TensorInfo], which: Section, *, piece: int | None = BLOB_READ_PIECE
    ) -> Iterator[tuple[memoryview, int, list[int]]]:
        """Many DATA or HIGH blobs at once (the codes runtime's load): ``(bytes, file offset
        of bytes[0], rows)`` per read, ``rows`` the positions in ``infos`` of the blobs it
        holds, each checked against its own CRC (§11 step 13, when verifying) in one call
        (``nqformat.fused.crc32_ranges``) before it is yielded. Neighbouring uncompressed
        blobs share one read of up to ``piece`` bytes (a larger blob alone; None: up to the
        read budget, for bytes that stay, as HIGH does in a codes-resident module).
        Compressed, empty and over-budget (§10) blobs are in no piece: :meth:`_blob` reads
        them."""
        size = self.max_bytes if piece is None else piece
        self._check_open()
        if which is Section.LOW:
            raise NQError("blobs() reads DATA or HIGH; LOW is paged in (page_in_low)")
        refs = [info.data if which is Section.DATA else info.high for info in infos]
        # plain Python lists, not numpy scalars: a per-blob numpy index cost more than the read
        offsets = [r.offset for r in refs]
        ends = [r.offset + r.length for r in refs]
        budget = self.max_bytes
        order = sorted(
            (i for i, r in enumerate(refs) if r.codec == Codec.NONE and 0 < r.length <= budget),
            key=offsets.__getitem__,
        )
        start = 0
        while start < len(order):
            first = offsets[order[start]]
            stop = start + 1
            while stop < len(order) and ends[order[stop]] - first <= size:
                stop += 1
            rows = order[start:stop]
            data = self._src.view(self._PART_MAP, first, ends[rows[-1]] - first)
            if self._verify_blobs:
                self._check_piece(infos, refs, rows, first, data, which)
            yield data, first, rows
            start = stop

    def _check_piece(
        self,
        infos: list[TensorInfo],
        refs: list[spec.BlobRef],
        rows: list[int],
        first: int,
        piece: memoryview,
        which: Section,
    ) -> None:
        """Each blob of ``rows`` (read in one ``piece`` from file offset ``first``) against its
        own CRC (§11 step 13), all in one call; blobs checked before are skipped."""
        checked = self._checked
        if checked:
            rows = [i for i in rows if (infos[i].index, which) not in checked]
        table = np.array([(refs[i].offset - first, refs[i].length) for i in rows], np.uint64)
        table = table.reshape(len(rows), 2)
        actual = fused.crc32_ranges(piece, table[:, 0], table[:, 1]).tolist()
        for i, crc in zip(rows, actual, strict=True):
            if crc != refs[i].crc:
                raise ChecksumError(
                    f"{infos[i].name!r}: {which.name} blob CRC is {refs[i].crc:#010x}, "
                    f"computed {crc:#010x} (§7.1)"
                )
        checked.update([(infos[i].index, which) for i in rows])

    def low_blobs(self, infos: Iterable[TensorInfo]) -> tuple[list[memoryview], int]:
        """Page LOW in with one read and give the LOW blobs of ``infos`` (NESTED tensors, in
        their order) as views of it, the bytes a codes-resident module keeps in full mode.
        When verifying, ``LOW.crc`` is checked over the read first (the whole-LOW rule, §11
        step 13), then each blob's own CRC, one call each. Returns the views and the bytes
        paged in (as :meth:`page_in_low`). LOW already resident, or larger than the read
        budget (§10): paged in as :meth:`page_in_low` does, its blobs read one by one."""
        self._check_open()
        self._check_has_low()
        infos = list(infos)
        low = self._pre.sections[Section.LOW]
        if self.low_resident or not 0 < low.length <= self.max_bytes:
            paged = self.page_in_low()
            return [self._blob(info, Section.LOW) for info in infos], paged
        self._drop_streamed_low()  # the whole section supersedes blobs checked alone
        self._src.map(self._LOW_MAP, low.offset, low.end)
        try:
            data = self._src.view(self._LOW_MAP, low.offset, low.length)
            if self._verify_blobs:
                whole = fused.crc32_ranges(data, np.zeros(1, np.uint64), np.full(1, low.length))
                if int(whole[0]) != low.crc:
                    raise low_crc_error(low.crc, int(whole[0]))
                rows = list(range(len(infos)))
                refs = [info.low for info in infos]
                self._check_piece(infos, refs, rows, low.offset, data, Section.LOW)
        except BaseException:
            self._src.unmap(self._LOW_MAP)
            raise
        paged = low.length - self._release_levels()  # all of LOW supersedes levels paged in
        views = [
            data[info.low.offset - low.offset : info.low.offset + info.low.length - low.offset]
            if info.low.codec == Codec.NONE
            else self._blob(info, Section.LOW)  # checked above; decompressed here
            for info in infos
        ]
        return views, paged
