"""The reads of a file of several nested levels (spec §14), as a part of :class:`NQFile`:
level codes, parameters and values, paging residual levels in and out, and their read costs.
A 1.0 file answers with its two levels (part = HIGH, full = HIGH and LOW)."""

from __future__ import annotations

from typing import Any

import numpy as np

from nqformat import bitpack
from nqformat.container import spec
from nqformat.container.costs import blob_cost
from nqformat.container.dequant import Scratch as _Scratch
from nqformat.container.dequant import dequantize as _dequantize
from nqformat.container.dequant import zstd_decompress as _zstd_decompress
from nqformat.container.header import Header, TensorInfo
from nqformat.container.source import ByteSource, crc_range
from nqformat.container.spec import Codec, Section
from nqformat.errors import ChecksumError, NQError, PartOnlyError

__all__ = ["LevelReads", "level_map"]


def level_map(j: int) -> str:
    """The source's map key of residual level j of a LEVELS file (§14.2)."""
    return f"level{j}"


class LevelReads:
    """Mixin of :class:`~nqformat.container.reader.NQFile` for §14 files; it uses the file's
    header, byte source, blob and budget checks."""

    _header: Header
    _src: ByteSource
    _verify_blobs: bool
    _checked: set[Any]
    _LOW_MAP: str

    def level_params(self, name: str, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset) float32[C] of the level of width ``bits`` (§7.2, §14.3)."""
        info = self._nested(name)
        return self._level_pair(info, self._level_of("part", bits))

    def level_codes(self, name: str, bits: int) -> np.ndarray:
        """The recomposed codes q_j (int16, the tensor's shape) of the level of width ``bits``:
        H for the lowest level, q_j = q_(j-1) * 2^d_j + L_j above it (§7.3, §14.3)."""
        info = self._nested(name)
        level = self._level_of("part", bits)
        if self._header.levels is None:
            if level == 0:
                return self._unpack(info, Section.HIGH, self.h).astype(np.int16)
            return self.codes(name, "full")
        self._check_level_present(level)  # §11 step 13: part_only before the budget
        self._check_budget(info, self._level_cost(info, level), f"level_codes({bits})")
        return self._level_codes(info, level, _Scratch()).copy()

    def page_in_level(self, bits: int) -> int:
        """Map the residual levels up to width ``bits`` and check their CRCs (whole-level rule,
        §14.4 step 13); returns the bytes paged in. PartOnlyError if the file ends before that
        level's end. In a 1.0 file the top level is all of LOW (:meth:`page_in_low`)."""
        self._check_open()
        level = self._level_of("part", bits)
        lv = self._header.levels
        if lv is None:
            return self.page_in_low() if level else 0
        self._check_level_present(level)
        paged = 0
        for j in range(1, level + 1):
            key = level_map(j)
            if self.low_resident or self._src.mapped(key):
                continue
            entry = lv.residuals[j - 1]
            self._src.map(key, entry.offset, entry.end)
            if self._verify_blobs and entry.length:
                actual = crc_range(self._src, key, entry.offset, entry.length)
                if actual != entry.crc:
                    self._src.unmap(key)
                    raise ChecksumError(
                        f"level {j} CRC is {entry.crc:#010x}, computed {actual:#010x}: the "
                        f"{lv.widths[j]}-bit data is corrupt (§14.4 step 13)"
                    )
            paged += entry.length
        return paged

    def _release_levels(self) -> int:
        """Unmap the residual levels paged in one by one (§14); returns their bytes."""
        lv = self._header.levels
        released = 0
        for j, entry in enumerate(lv.residuals if lv is not None else (), start=1):
            if self._src.mapped(level_map(j)):
                self._src.unmap(level_map(j))
                released += entry.length
        return released

    @property
    def _widths(self) -> tuple[int, ...]:
        lv = self._header.levels
        return lv.widths if lv is not None else ()

    def _level_of(self, mode: str, bits: int | None) -> int:
        """The level index (0 = coarsest) of ``bits``, or of ``mode`` when bits is None."""
        widths = self.levels
        if bits is None:
            return 0 if mode == "part" else len(widths) - 1
        if isinstance(bits, bool) or bits not in widths:
            raise NQError(f"bits={bits!r} is not one of this file's levels {widths}")
        return widths.index(bits)

    def _check_level_present(self, level: int) -> None:
        end = self.level_ends[level]
        if self.file_size < end:
            raise PartOnlyError(
                f"{self._where} ends at byte {self.file_size}, before the end {end} of its "
                f"{self.levels[level]}-bit level: it serves only {self.available_levels} (§14.2)"
            )

    def _level_pair(self, info: TensorInfo, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Level ``level``'s (scale, offset): arrays in §14.3 order full, part, 1 .. m-2."""
        arr = np.frombuffer(self._blob(info, Section.DATA), dtype="<f4")
        c = info.shape[0]
        last = len(self.levels) - 1
        slot = 0 if level == last else 1 if level == 0 else level + 1
        return arr[2 * slot * c : (2 * slot + 1) * c], arr[(2 * slot + 1) * c : (2 * slot + 2) * c]

    def _residual_blob(self, info: TensorInfo, j: int) -> memoryview:
        """Level ``j``'s residual blob (j >= 1), CRC-checked and decompressed (§14.2)."""
        lv = self._header.levels
        assert lv is not None
        ref = info.low if j == 1 else info.levels[j - 2]
        if self.low_resident:
            key = self._LOW_MAP
        else:
            self.page_in_level(lv.widths[j])
            key = level_map(j)
        stored = self._src.view(key, ref.offset, ref.length)
        slot = (info.index, f"L{j}")
        if self._verify_blobs and slot not in self._checked:
            actual = spec.crc32(stored)
            if actual != ref.crc:
                raise ChecksumError(
                    f"{info.name!r}: level {j} blob CRC is {ref.crc:#010x}, computed "
                    f"{actual:#010x} (§7.1)"
                )
            self._checked.add(slot)  # type: ignore[arg-type]
        if ref.codec == Codec.NONE:
            return stored
        raw_len = spec.packed_length(info.numel, lv.widths[j] - lv.widths[j - 1] + 1)
        return memoryview(_zstd_decompress(stored, raw_len, f"{info.name!r} level {j}"))

    def _level_cost(self, info: TensorInfo, level: int) -> int:
        """Upper bound on the bytes a level read allocates (§10): the blobs, one int8 code
        buffer, the int16 codes and the float32 values (decompressed blobs included)."""
        cost = blob_cost(info, Section.DATA, self.n, self.h, self._widths)
        cost += blob_cost(info, Section.HIGH, self.n, self.h, self._widths)
        widths = self.levels
        for j in range(1, level + 1):
            ref = info.low if j == 1 else info.levels[j - 2]
            raw = spec.packed_length(info.numel, widths[j] - widths[j - 1] + 1)
            cost += ref.length + (raw if ref.codec != Codec.NONE else 0)
        return cost + info.numel * (1 + 2 + 4)

    def _level_codes(self, info: TensorInfo, level: int, scratch: _Scratch) -> np.ndarray:
        """q_level (int16, scratch) from H and the residuals 1 .. level (§14.3)."""
        widths = self.levels
        self._check_level_present(level)
        q = scratch.int16(info.numel)
        high = self._unpack(info, Section.HIGH, widths[0], scratch.int8(info.numel, 0))
        np.copyto(q, high.reshape(-1), casting="unsafe")
        for j in range(1, level + 1):
            d = widths[j] - widths[j - 1]
            buf = np.frombuffer(self._residual_blob(info, j), dtype=np.uint8)
            low = bitpack.unpack(buf, d + 1, info.numel, out=scratch.int8(info.numel, 1))
            np.left_shift(q, d, out=q)
            np.add(q, low, out=q, dtype=np.int16)  # exact: |q_j| < 2^8
        return q.reshape(info.shape)

    def _read_level(self, info: TensorInfo, level: int, out: np.ndarray | None) -> np.ndarray:
        """read() of a level above the coarsest in a LEVELS file (numpy path, §14.3)."""
        self._check_level_present(level)
        self._check_budget(info, self._level_cost(info, level), f"read(bits={self.levels[level]})")
        scale, offset = self._level_pair(info, level)
        codes = self._level_codes(info, level, self._scratch())
        values = _dequantize(codes, scale, offset, info.shape, out=out)
        return values if out is None else out
