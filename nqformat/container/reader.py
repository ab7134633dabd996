"""Lazy reader of ``.nq`` files (spec ``spec/nq-v1.md``): numpy + stdlib, zstandard lazily.

``open(path)`` reads the preamble and header only and validates them in the order of spec §11
with exact integer arithmetic against the real file size before anything else is allocated.
Blob bytes are reached through :class:`_Source`, one read-only mmap of ``[DATA.offset,
part_end)`` and, only when the LOW section is paged in, a second one of LOW; it counts every
byte requested so that tests can prove the part-bit model never touches LOW.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
import json
import mmap
import os
import pathlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import numpy as np

from nqformat import bitpack
from nqformat.container import spec
from nqformat.container.spec import (
    BlobRef,
    Codec,
    DType,
    IncompatFlag,
    Kind,
    Preamble,
    Section,
    TensorRecord,
)
from nqformat.errors import (
    BadMagicError,
    ChecksumError,
    DuplicateNameError,
    InvalidHeaderError,
    InvalidNameError,
    LayoutError,
    LimitError,
    MetadataError,
    NQError,
    PartOnlyError,
    TruncatedError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)

__all__ = [
    "ChannelParams",
    "NQFile",
    "SectionInfo",
    "TensorInfo",
    "TensorNotFoundError",
    "open",
    "parse_header",
]


class TensorNotFoundError(NQError, KeyError):
    """No tensor of that name in the file (also a KeyError)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class TensorInfo:
    """What the INDEX says about one tensor (§4)."""

    name: str
    kind: Kind
    dtype: DType
    shape: tuple[int, ...]
    numel: int
    data: BlobRef
    high: BlobRef
    low: BlobRef
    index: int

    @property
    def np_dtype(self) -> np.dtype:
        """dtype of ``NQFile.read``: float32 for NESTED, the stored dtype for RAW (BF16 as
        uint16 bit patterns)."""
        return np.dtype(np.float32) if self.kind is Kind.NESTED else self.dtype.np_dtype


@dataclass(frozen=True)
class ChannelParams:
    """Per-output-channel dequantization parameters of a NESTED tensor (§7.2)."""

    scale_full: np.ndarray
    offset_full: np.ndarray
    scale_part: np.ndarray
    offset_part: np.ndarray


@dataclass(frozen=True)
class SectionInfo:
    """One section table entry (§3.2), with its name."""

    name: str
    offset: int
    length: int
    crc: int


@dataclass(frozen=True)
class Header:
    """A validated preamble and header (§3-§6): everything ``open`` learns before data."""

    preamble: Preamble
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, Any]
    header_end: int
    part_only: bool


# --- validation, spec §11 ----------------------------------------------------------------------


def _check_preamble(buf: bytes, size: int) -> Preamble:
    """Steps 1-9 of §11 on the 256-byte preamble and the real file ``size``."""
    if size < spec.PREAMBLE_SIZE or len(buf) < spec.PREAMBLE_SIZE:
        raise TruncatedError(
            f"file is {size} bytes; a .nq file has at least the {spec.PREAMBLE_SIZE}-byte "
            "preamble (§3.1)"
        )
    if buf[:8] != spec.MAGIC:
        raise BadMagicError(f"magic is {bytes(buf[:8])!r}, expected {spec.MAGIC!r} (§3.1)")
    pre = Preamble.unpack(buf)
    if pre.version_major != spec.VERSION_MAJOR:
        raise UnsupportedVersionError(
            f"format version {pre.version_major}.{pre.version_minor}; this reader implements "
            f"major version {spec.VERSION_MAJOR} (§12)"
        )
    actual = spec.crc32(buf[: spec.PREAMBLE_CRC_OFFSET])
    if actual != pre.crc:
        raise ChecksumError(f"preamble_crc is {pre.crc:#010x}, computed {actual:#010x} (§3.1)")
    unknown = pre.incompat_flags & ~IncompatFlag.known_mask()
    if unknown:
        raise UnsupportedFeatureError(
            f"incompat_flags has unknown bits {unknown:#x}; this reader cannot read the file (§3.3)"
        )
    if not spec.bits_valid(pre.n, pre.h):
        raise InvalidHeaderError(f"need {spec.BITS_RULE}, got n={pre.n}, h={pre.h}")
    # step 7: limits, before any arithmetic that a C reader could overflow
    if pre.tensor_count > spec.MAX_TENSOR_COUNT:
        raise LimitError(f"tensor_count {pre.tensor_count} exceeds {spec.MAX_TENSOR_COUNT} (§10)")
    for which, entry in zip(Section, pre.sections, strict=True):
        for what, value in (("offset", entry.offset), ("length", entry.length)):
            if value > spec.MAX_OFFSET:
                raise LimitError(f"{which.name}.{what} {value} exceeds 2^63-1 (§10)")
    for what, value in (("part_end", pre.part_end), ("full_end", pre.full_end)):
        if value > spec.MAX_OFFSET:
            raise LimitError(f"{what} {value} exceeds 2^63-1 (§10)")
    meta_len = pre.sections[Section.META].length
    if meta_len > spec.MAX_META_LENGTH:
        raise LimitError(f"META.length {meta_len} exceeds 16 MiB (§10)")
    header_end = spec.header_end(pre.tensor_count, pre.sections[Section.NAMES].length, meta_len)
    if header_end > spec.MAX_HEADER_END:
        raise LimitError(f"header_end {header_end} exceeds 256 MiB (§10)")
    # step 8: the canonical layout (§3.2)
    expected = spec.canonical_offsets([entry.length for entry in pre.sections])
    for which, entry in zip(Section, pre.sections, strict=True):
        if which is Section.INDEX and entry.length != spec.RECORD_SIZE * pre.tensor_count:
            raise LayoutError(
                f"INDEX.length is {entry.length}, expected 160 * tensor_count = "
                f"{spec.RECORD_SIZE * pre.tensor_count} (§3.2)"
            )
        if entry.offset != expected[which]:
            raise LayoutError(
                f"{which.name}.offset is {entry.offset}, expected {expected[which]} (§3.2)"
            )
    part_end = pre.sections[Section.HIGH].end
    full_end = pre.sections[Section.LOW].end
    if pre.part_end != part_end:
        raise LayoutError(f"part_end is {pre.part_end}, expected HIGH end {part_end} (§3.2)")
    if pre.full_end != full_end:
        raise LayoutError(f"full_end is {pre.full_end}, expected LOW end {full_end} (§3.2)")
    # step 9: the real size
    if size < header_end or size < part_end:
        raise TruncatedError(
            f"file is {size} bytes but its part-bit prefix needs {part_end} (§9); it was cut short"
        )
    if size > full_end:
        raise LayoutError(
            f"file is {size} bytes, {size - full_end} more than full_end {full_end}: nothing "
            "may follow the LOW section (§9)"
        )
    return pre


def _check_header_crcs(pre: Preamble, header: bytes) -> None:
    """Step 10: CRCs of INDEX, NAMES, META; ``header`` holds file bytes [0, header_end)."""
    for which in (Section.INDEX, Section.NAMES, Section.META):
        entry = pre.sections[which]
        actual = spec.crc32(header[entry.offset : entry.end])
        if actual != entry.crc:
            raise ChecksumError(
                f"{which.name} CRC is {entry.crc:#010x}, computed {actual:#010x} (§3.2)"
            )


def _check_records(pre: Preamble, header: bytes) -> tuple[TensorInfo, ...]:
    """Step 11: every INDEX record. The whole INDEX is checked as one array first; only when
    that finds a problem (or a value too large for its 64-bit arithmetic) does the record-by-
    record walk run, and it alone reports errors, so their codes and order are those of §11."""
    fast = _records_vectorised(pre, header)
    return fast if fast is not None else _check_records_each(pre, header)


#: 256-entry tables over the dtype byte: defined codes, float codes, element sizes (§4.1)
_DTYPE_DEFINED = np.zeros(256, dtype=bool)
_DTYPE_FLOAT = np.zeros(256, dtype=bool)
_DTYPE_ITEMSIZE = np.zeros(256, dtype=np.uint64)
for _d in DType:
    _DTYPE_DEFINED[_d] = True
    _DTYPE_FLOAT[_d] = _d.is_float
    _DTYPE_ITEMSIZE[_d] = _d.itemsize
del _d
#: offsets and lengths above this take the record-by-record path: below it, end = offset +
#: length and its 64-byte alignment cannot overflow uint64
_VECTOR_SAFE = 1 << 62
_ZERO_REF = BlobRef()


def _records_vectorised(pre: Preamble, header: bytes) -> tuple[TensorInfo, ...] | None:
    """Step 11 for the whole INDEX at once: the TensorInfos if every record passes every check
    of :func:`_check_records_each`, else None (never an error: the caller then walks the
    records to report the first problem exactly)."""
    count = pre.tensor_count
    index = pre.sections[Section.INDEX]
    names = pre.sections[Section.NAMES]
    recs = np.frombuffer(header, dtype=spec.RECORD_DTYPE, count=count, offset=index.offset)
    kind, dtype, ndim, dims = recs["kind"], recs["dtype"], recs["ndim"], recs["dims"]
    refs = {Section.DATA: recs["data"], Section.HIGH: recs["high"], Section.LOW: recs["low"]}
    nested = kind == Kind.NESTED
    # 11a: reserved bytes, enumerated fields, dims, unused references, codecs
    if recs["reserved0"].any() or recs["reserved1"].any():
        return None
    if any(ref["reserved"].any() for ref in refs.values()):
        return None
    if (kind > Kind.NESTED).any() or not _DTYPE_DEFINED[dtype].all():
        return None
    if (nested & ~_DTYPE_FLOAT[dtype]).any():
        return None
    if (ndim > spec.MAX_DIMS).any() or (nested & (ndim == 0)).any():
        return None
    past = np.arange(spec.MAX_DIMS) >= ndim[:, None]
    if dims[past].any():
        return None
    for which in (Section.HIGH, Section.LOW):
        ref = refs[which][~nested]
        if ref["offset"].any() or ref["length"].any() or ref["crc"].any() or ref["codec"].any():
            return None
    flags_zstd = bool(pre.incompat_flags & IncompatFlag.ZSTD)
    used = {Section.DATA: slice(None), Section.HIGH: nested, Section.LOW: nested}
    any_zstd = False
    for which, rows in used.items():
        codec = refs[which]["codec"][rows]
        if (codec > Codec.ZSTD).any():
            return None
        any_zstd = any_zstd or bool((codec == Codec.ZSTD).any())
    if any_zstd != flags_zstd:
        return None
    # 11b: element counts, each partial product kept <= 2^48 (a zero dim after a large prefix
    # is left to the record walk, which multiplies exactly)
    if (dims > spec.MAX_NUMEL).any():
        return None
    numel = np.ones(count, dtype=np.uint64)
    for d in np.where(past, np.uint64(1), dims).T:
        if (numel > spec.MAX_NUMEL // np.maximum(d, np.uint64(1))).any():
            return None
        numel *= d
    # 11c: names, back to back in NAMES, valid UTF-8, distinct
    lengths = recs["name_length"].astype(np.int64)
    if ((lengths < 1) | (lengths > spec.MAX_NAME_LENGTH)).any():
        return None
    ends = np.cumsum(lengths)
    if (recs["name_offset"] != (ends - lengths).astype(np.uint64)).any():
        return None
    if (ends[-1] if count else 0) != names.length:
        return None
    blob = header[names.offset : names.end]
    bounds = [0, *ends.tolist()]
    raw_names = [blob[a:b] for a, b in itertools.pairwise(bounds)]
    if len(set(raw_names)) != count:
        return None
    try:
        text = [raw.decode("utf-8", errors="strict") for raw in raw_names]
    except UnicodeDecodeError:
        return None
    # 11d: blob placement and lengths, each section's blobs back to back in record order
    raw_len = {
        Section.DATA: np.where(
            nested,
            np.uint64(spec.NESTED_PARAM_ARRAYS * 4) * dims[:, 0],
            numel * _DTYPE_ITEMSIZE[dtype],
        ),
        Section.HIGH: (numel * np.uint64(pre.h) + np.uint64(7)) // np.uint64(8),
        Section.LOW: (numel * np.uint64(pre.n - pre.h + 1) + np.uint64(7)) // np.uint64(8),
    }
    align = np.uint64(spec.BLOB_ALIGN - 1)
    for which, rows in used.items():
        ref = refs[which][rows]
        offset, length, codec = ref["offset"], ref["length"], ref["codec"]
        expect_len = raw_len[which][rows]
        section = pre.sections[which]
        if (offset >= _VECTOR_SAFE).any() or (length >= _VECTOR_SAFE).any():
            return None
        end = offset + length
        expect = np.empty_like(offset)
        if expect.size:
            expect[0] = spec.align(section.offset, spec.BLOB_ALIGN)
            expect[1:] = (end[:-1] + align) & ~align
        if (offset != expect).any() or (end > section.end).any():
            return None
        plain = codec == Codec.NONE
        if (length[plain] != expect_len[plain]).any():
            return None
        packed = ~plain
        limit = expect_len[packed]
        limit = limit + limit // np.uint64(spec.ZSTD_SLACK_DIVISOR) + spec.ZSTD_SLACK_BYTES
        if ((length[packed] < 1) | (length[packed] > limit)).any():
            return None
        if (int(end[-1]) if end.size else section.offset) != section.end:
            return None
    return _infos(recs, text, numel)


_KINDS = {int(k): k for k in Kind}
_DTYPES = {int(d): d for d in DType}


def _infos(recs: np.ndarray, names: list[str], numel: np.ndarray) -> tuple[TensorInfo, ...]:
    """TensorInfos of records already checked by :func:`_records_vectorised`."""
    kinds = [_KINDS[k] for k in recs["kind"].tolist()]
    dtypes = [_DTYPES[d] for d in recs["dtype"].tolist()]
    ndims = recs["ndim"].tolist()
    shapes = [tuple(d[:k]) for d, k in zip(recs["dims"].tolist(), ndims, strict=True)]
    refs = []
    for field in ("data", "high", "low"):
        ref = recs[field]
        rows = zip(
            ref["offset"].tolist(),
            ref["length"].tolist(),
            ref["crc"].tolist(),
            ref["codec"].tolist(),
            strict=True,
        )
        # RAW records' high/low references are all zero (checked): share one object
        refs.append([BlobRef(o, n, c, k) if o else _ZERO_REF for o, n, c, k in rows])
    return tuple(
        TensorInfo(name, kind, dtype, shape, count, data, high, low, index=i)
        for i, (name, kind, dtype, shape, count, data, high, low) in enumerate(
            zip(names, kinds, dtypes, shapes, numel.tolist(), *refs, strict=True)
        )
    )


def _check_records_each(pre: Preamble, header: bytes) -> tuple[TensorInfo, ...]:
    """Step 11: every INDEX record, in order; the first problem raises its §11 error."""
    index_off = pre.sections[Section.INDEX].offset
    names = pre.sections[Section.NAMES]
    flags_zstd = bool(pre.incompat_flags & IncompatFlag.ZSTD)
    cursors = {
        which: pre.sections[which].offset for which in (Section.DATA, Section.HIGH, Section.LOW)
    }
    name_cursor = 0
    seen: set[bytes] = set()
    any_zstd = False
    infos: list[TensorInfo] = []
    for i in range(pre.tensor_count):
        start = index_off + i * spec.RECORD_SIZE
        rec = TensorRecord.unpack(header[start : start + spec.RECORD_SIZE])
        where = f"record {i}"
        blobs = {Section.DATA: rec.data, Section.HIGH: rec.high, Section.LOW: rec.low}
        # 11a: reserved bytes and enumerated fields
        if any(rec.reserved) or any(any(b.reserved) for b in blobs.values()):
            raise InvalidHeaderError(f"{where}: reserved bytes are not zero (§4)")
        if rec.kind not in (Kind.RAW, Kind.NESTED):
            raise InvalidHeaderError(f"{where}: kind {rec.kind} is not 0 (RAW) or 1 (NESTED)")
        kind = Kind(rec.kind)
        if rec.dtype not in DType._value2member_map_:
            raise InvalidHeaderError(f"{where}: dtype code {rec.dtype} is not defined (§4.1)")
        dtype = DType(rec.dtype)
        if kind is Kind.NESTED and not dtype.is_float:
            raise InvalidHeaderError(f"{where}: NESTED dtype must be a float, got {dtype.name}")
        if rec.ndim > spec.MAX_DIMS:
            raise InvalidHeaderError(f"{where}: ndim {rec.ndim} exceeds 8 (§4)")
        if kind is Kind.NESTED and rec.ndim == 0:
            raise InvalidHeaderError(f"{where}: a NESTED tensor needs ndim >= 1 (§4)")
        if any(rec.dims[rec.ndim :]):
            raise InvalidHeaderError(f"{where}: dims past ndim={rec.ndim} are not zero (§4)")
        used = (Section.DATA, Section.HIGH, Section.LOW) if kind is Kind.NESTED else (Section.DATA,)
        if kind is Kind.RAW and not (rec.high.is_zero() and rec.low.is_zero()):
            raise InvalidHeaderError(f"{where}: a RAW record's high/low references must be zero")
        for which in used:
            codec = blobs[which].codec
            if codec > Codec.ZSTD:
                raise UnsupportedFeatureError(f"{where}: {which.name} blob codec {codec} (§8)")
            if codec == Codec.ZSTD:
                if not flags_zstd:
                    raise InvalidHeaderError(
                        f"{where}: {which.name} blob is zstd but incompat flag ZSTD is clear (§3.3)"
                    )
                any_zstd = True
        # 11b: element count
        shape = rec.shape
        numel = spec.numel(shape)
        # 11c: name
        if not 1 <= rec.name_length <= spec.MAX_NAME_LENGTH:
            raise InvalidNameError(f"{where}: name_length {rec.name_length} not in 1..1024 (§5)")
        if rec.name_offset != name_cursor or name_cursor + rec.name_length > names.length:
            raise LayoutError(
                f"{where}: name at [{rec.name_offset}, +{rec.name_length}) but expected offset "
                f"{name_cursor} inside NAMES of {names.length} bytes (§5)"
            )
        raw_name = header[names.offset + name_cursor : names.offset + name_cursor + rec.name_length]
        name_cursor += rec.name_length
        try:
            name = raw_name.decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            raise InvalidNameError(f"{where}: name is not valid UTF-8 ({exc.reason})") from None
        if raw_name in seen:
            raise DuplicateNameError(f"{where}: duplicate tensor name {name!r} (§5)")
        seen.add(raw_name)
        # 11d: blob placement and lengths (§4.2, §7.1, §8)
        for which in used:
            ref = blobs[which]
            expect_off = spec.align(cursors[which], spec.BLOB_ALIGN)
            raw_len = spec.raw_blob_length(kind, which, dtype, shape, pre.n, pre.h)
            if ref.offset != expect_off:
                raise LayoutError(
                    f"{where} {name!r}: {which.name} blob at {ref.offset}, expected {expect_off} "
                    "(§7.1)"
                )
            if ref.codec == Codec.NONE and ref.length != raw_len:
                raise LayoutError(
                    f"{where} {name!r}: {which.name} blob is {ref.length} bytes, expected "
                    f"{raw_len} (§4.2)"
                )
            if ref.codec == Codec.ZSTD and not 1 <= ref.length <= spec.max_zstd_length(raw_len):
                raise LayoutError(
                    f"{where} {name!r}: zstd {which.name} blob of {ref.length} bytes for "
                    f"{raw_len} raw bytes (§8)"
                )
            section = pre.sections[which]
            if ref.end > section.end:
                raise LayoutError(
                    f"{where} {name!r}: {which.name} blob ends at {ref.end}, past the section "
                    f"end {section.end} (§7.1)"
                )
            cursors[which] = ref.end
        infos.append(
            TensorInfo(name, kind, dtype, shape, numel, rec.data, rec.high, rec.low, index=i)
        )
    if name_cursor != names.length:
        raise LayoutError(f"NAMES is {names.length} bytes but the names use {name_cursor} (§5)")
    for which, cursor in cursors.items():
        section = pre.sections[which]
        if cursor != section.end:
            raise LayoutError(
                f"{which.name} section ends at {section.end} but its last blob ends at {cursor} "
                "(§7.1)"
            )
    if flags_zstd and not any_zstd:
        raise InvalidHeaderError("incompat flag ZSTD is set but no blob is compressed (§3.3)")
    return tuple(infos)


def _check_meta(raw: bytes) -> dict[str, Any]:
    """Step 12: META is a UTF-8 JSON object, no duplicate keys, depth <= 64 (§6)."""
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"META is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    # Depth first, without recursion, so that json.loads never meets a deep nest.
    if spec.json_depth(raw) > spec.MAX_META_DEPTH:
        raise MetadataError(f"META nests deeper than {spec.MAX_META_DEPTH} levels (§6)")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in items:
            if key in obj:
                raise MetadataError(f"META has duplicate key {key!r} (§6)")
            obj[key] = value
        return obj

    def no_constant(name: str) -> Any:
        raise MetadataError(f"META contains {name}, which is not JSON (RFC 8259)")

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_constant=no_constant)
    except MetadataError:
        raise
    except (ValueError, RecursionError) as exc:
        raise MetadataError(f"META is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MetadataError(f"META must be a JSON object, got {type(value).__name__}")
    return value


def parse_header(preamble: bytes, read: Any, size: int) -> Header:
    """Validate preamble and header (§11 steps 1-12). ``read(offset, length)`` returns file
    bytes; it is called once, for ``[0, header_end)``, after every size was checked."""
    pre = _check_preamble(preamble, size)
    header_end = pre.sections[Section.META].end
    header = bytes(read(0, header_end))
    if len(header) != header_end:
        raise TruncatedError(f"could read only {len(header)} of {header_end} header bytes")
    _check_header_crcs(pre, header)
    tensors = _check_records(pre, header)
    meta = pre.sections[Section.META]
    metadata = _check_meta(header[meta.offset : meta.end])
    return Header(pre, tensors, metadata, header_end, part_only=size < pre.full_end)


# --- file access -------------------------------------------------------------------------------


class _Source:
    """The reader's only access to file bytes: preads, plus read-only mmaps of whole ranges.

    ``bytes_read`` sums every byte requested; ``max_end`` is the furthest offset requested.
    """

    def __init__(self, path: pathlib.Path) -> None:
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


_PART_MAP = "part"  # DATA and HIGH: [DATA.offset, part_end)
_LOW_MAP = "low"  # LOW: [LOW.offset, full_end)


class NQFile:
    """An open ``.nq`` file; use :func:`open`. Everything but the header is read lazily."""

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = True) -> None:
        self.path = pathlib.Path(path)
        self._verify_blobs = verify
        self._src = _Source(self.path)
        try:
            self.file_size = self._src.size
            pre_bytes = self._src.pread(0, min(self.file_size, spec.PREAMBLE_SIZE))
            self._header = parse_header(pre_bytes, self._src.pread, self.file_size)
            pre = self._header.preamble
            self._src.map(_PART_MAP, pre.sections[Section.DATA].offset, pre.part_end)
        except BaseException:
            self._src.close()
            raise
        self._pre = pre
        self._by_name = {t.name: t for t in self._header.tensors}
        self._checked: set[tuple[int, Section]] = set()
        self._scratch_local = threading.local()
        self._closed = False

    # --- attributes -----------------------------------------------------------------------------

    @property
    def n(self) -> int:
        return self._pre.n

    @property
    def h(self) -> int:
        return self._pre.h

    @property
    def l(self) -> int:  # noqa: E743 - the paper's name for n - h
        return self._pre.n - self._pre.h

    @property
    def version(self) -> tuple[int, int]:
        return (self._pre.version_major, self._pre.version_minor)

    @property
    def metadata(self) -> dict[str, Any]:
        return self._header.metadata

    @property
    def part_only(self) -> bool:
        """True when the file ends before ``full_end``: only the part-bit model is present."""
        return self._header.part_only

    @property
    def part_end(self) -> int:
        return self._pre.part_end

    @property
    def full_end(self) -> int:
        return self._pre.full_end

    @property
    def header_end(self) -> int:
        return self._header.header_end

    @property
    def incompat_flags(self) -> int:
        return self._pre.incompat_flags

    @property
    def bytes_read(self) -> int:
        """Bytes requested through the file layer so far (preamble, header, blobs, LOW)."""
        return self._src.bytes_read

    @property
    def max_offset_read(self) -> int:
        """End of the furthest byte range requested so far."""
        return self._src.max_end

    @property
    def low_resident(self) -> bool:
        return self._src.mapped(_LOW_MAP)

    # --- index ----------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return [t.name for t in self._header.tensors]

    def tensors(self) -> list[TensorInfo]:
        return list(self._header.tensors)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._by_name[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._by_name, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise TensorNotFoundError(f"no tensor {name!r} in {self.path}{hint}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._header.tensors)

    def sections(self) -> list[SectionInfo]:
        return [
            SectionInfo(which.name, e.offset, e.length, e.crc)
            for which, e in zip(Section, self._pre.sections, strict=True)
        ]

    # --- data -----------------------------------------------------------------------------------

    def read(
        self,
        name: str,
        mode: Literal["part", "full"] = "part",
        *,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """The tensor's values: NESTED dequantized to float32 (§7.2), RAW as stored (a read-only
        view for uncompressed blobs).

        With ``out`` (a writeable C-contiguous array of the tensor's shape and of
        ``info(name).np_dtype``) the values are written there and ``out`` is returned: a NESTED
        tensor is dequantized straight into it, with no float32 temporary. The integer codes go
        through scratch buffers this file keeps (per thread, as large as the largest tensor's
        codes) until :meth:`release_buffers` or :meth:`close`."""
        info = self.info(name)
        if mode not in ("part", "full"):
            raise NQError(f"mode must be 'part' or 'full', got {mode!r}")
        if out is not None:
            _check_out(out, info)
        if info.kind is Kind.RAW:
            data = self._blob(info, Section.DATA)
            stored = np.frombuffer(data, dtype=info.dtype.np_dtype).reshape(info.shape)
            if out is None:
                return stored
            np.copyto(out, stored)
            return out
        scratch = self._scratch()
        params = self.params(name)
        if mode == "part":
            codes = self._unpack(info, Section.HIGH, self.h, scratch.int8(info.numel, 0))
            scale, offset = params.scale_part, params.offset_part
        else:
            codes = self._full_codes(info, scratch)
            scale, offset = params.scale_full, params.offset_full
        values = _dequantize(codes, scale, offset, info.shape, out=out)
        return values if out is None else out

    def codes(self, name: str, part: Literal["high", "low", "full"] = "full") -> np.ndarray:
        """Integer codes of a NESTED tensor in its shape: H or L (int8), q = H*2^l + L (int16)."""
        info = self._nested(name)
        if part not in ("high", "low", "full"):
            raise NQError(f"part must be 'high', 'low' or 'full', got {part!r}")
        if part == "high":
            return self._unpack(info, Section.HIGH, self.h)
        if part == "low":
            return self._unpack(info, Section.LOW, self.l + 1)
        return self._full_codes(info, _Scratch())  # a fresh scratch: the caller owns it

    def params(self, name: str) -> ChannelParams:
        info = self._nested(name)
        arr = np.frombuffer(self._blob(info, Section.DATA), dtype="<f4")
        c = info.shape[0]
        return ChannelParams(arr[0:c], arr[c : 2 * c], arr[2 * c : 3 * c], arr[3 * c : 4 * c])

    def page_in_low(self) -> int:
        """Map LOW and check ``LOW.crc`` (when verifying); returns the bytes paged in."""
        self._check_open()
        if self.part_only:
            raise PartOnlyError(
                f"{self.path} is a part-bit-only file ({self.file_size} of {self.full_end} bytes):"
                " it has no LOW section, so only mode='part' is available (§9)"
            )
        if self.low_resident:
            return 0
        low = self._pre.sections[Section.LOW]
        self._src.map(_LOW_MAP, low.offset, low.end)
        if self._verify_blobs and low.length:
            actual = spec.crc32(self._src.view(_LOW_MAP, low.offset, low.length))
            if actual != low.crc:
                self._src.unmap(_LOW_MAP)
                raise ChecksumError(
                    f"LOW CRC is {low.crc:#010x}, computed {actual:#010x}: the full-bit data is "
                    "corrupt (§11 step 13)"
                )
            for info in self._header.tensors:
                if info.kind is Kind.NESTED:
                    self._checked.discard((info.index, Section.LOW))
        return low.length

    def release_buffers(self) -> None:
        """Drop the code buffers ``read`` reuses (up to four bytes per element of the largest
        nested tensor); the next read makes new ones. For long-lived open files."""
        self._scratch_local = threading.local()

    def release_low(self) -> int:
        """Unmap LOW again; returns the bytes released (0 if it was not resident)."""
        if not self.low_resident:
            return 0
        self._src.unmap(_LOW_MAP)
        return self._pre.sections[Section.LOW].length

    def verify(self) -> list[str]:
        """Check everything present: section and blob CRCs, zero padding, decompression, code
        ranges. Returns a list of problems (empty = valid). LOW is checked when present."""
        self._check_open()
        problems: list[str] = []
        present = [Section.DATA, Section.HIGH] + ([] if self.part_only else [Section.LOW])
        was_resident = self.low_resident
        if not self.part_only and not was_resident:
            low = self._pre.sections[Section.LOW]
            self._src.map(_LOW_MAP, low.offset, low.end)
        try:
            for which in present:
                entry = self._pre.sections[which]
                key = _LOW_MAP if which is Section.LOW else _PART_MAP
                actual = spec.crc32(self._src.view(key, entry.offset, entry.length))
                if actual != entry.crc:
                    problems.append(
                        f"{which.name} section CRC is {entry.crc:#010x}, computed {actual:#010x}"
                    )
            problems.extend(self._verify_padding(present))
            qmin, qmax = spec.code_range(self.n)
            for info in self._header.tensors:
                for which in (Section.DATA, Section.HIGH, Section.LOW):
                    if which not in present or (
                        which is not Section.DATA and info.kind is Kind.RAW
                    ):
                        continue
                    try:
                        stored = self._blob(info, which, force_check=True)
                    except NQError as exc:
                        problems.append(f"{info.name}: {exc}")
                        continue
                    if which is not Section.DATA:
                        problems.extend(self._verify_pad_bits(info, which, stored))
                if info.kind is Kind.NESTED and Section.LOW in present:
                    try:
                        q = self.codes(info.name, "full")
                    except NQError:
                        continue  # already reported above
                    if q.size and (int(q.min()) < qmin or int(q.max()) > qmax):
                        problems.append(
                            f"{info.name}: recomposed codes span [{int(q.min())}, "
                            f"{int(q.max())}], outside the {self.n}-bit range (§7.3)"
                        )
        finally:
            if not self.part_only and not was_resident:
                self._src.unmap(_LOW_MAP)
        return problems

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.release_buffers()
            self._src.close()

    def __enter__(self) -> NQFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "part-only" if self.part_only else "full"
        return (
            f"<NQFile {str(self.path)!r} n={self.n} h={self.h} tensors={len(self)} {mode}"
            f"{' closed' if self._closed else ''}>"
        )

    # --- internals ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise NQError(f"{self.path} is closed")

    def _nested(self, name: str) -> TensorInfo:
        info = self.info(name)
        if info.kind is not Kind.NESTED:
            raise NQError(f"{name!r} is a RAW tensor: it has no codes or channel parameters")
        return info

    def _blob(self, info: TensorInfo, which: Section, *, force_check: bool = False) -> memoryview:
        """Stored bytes of one blob, CRC-checked (§11 step 13) and decompressed."""
        self._check_open()
        if which is Section.DATA:
            ref, key = info.data, _PART_MAP
        elif which is Section.HIGH:
            ref, key = info.high, _PART_MAP
        else:
            ref, key = info.low, _LOW_MAP
            if not self.low_resident:
                self.page_in_low()
        stored = self._src.view(key, ref.offset, ref.length)
        if force_check or (self._verify_blobs and (info.index, which) not in self._checked):
            actual = spec.crc32(stored)
            if actual != ref.crc:
                raise ChecksumError(
                    f"{info.name!r}: {which.name} blob CRC is {ref.crc:#010x}, computed "
                    f"{actual:#010x} (§7.1)"
                )
            self._checked.add((info.index, which))
        if ref.codec == Codec.NONE:
            return stored
        raw_len = spec.raw_blob_length(info.kind, which, info.dtype, info.shape, self.n, self.h)
        return memoryview(_zstd_decompress(stored, raw_len, f"{info.name!r} {which.name}"))

    def _unpack(
        self, info: TensorInfo, which: Section, width: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        buf = np.frombuffer(self._blob(info, which), dtype=np.uint8)
        return bitpack.unpack(buf, width, info.numel, out=out).reshape(info.shape)

    def _full_codes(self, info: TensorInfo, scratch: _Scratch) -> np.ndarray:
        """q = H * 2^l + L (§7.3) in a scratch int16 array of the tensor's shape."""
        low = self._unpack(info, Section.LOW, self.l + 1, scratch.int8(info.numel, 1))
        high = self._unpack(info, Section.HIGH, self.h, scratch.int8(info.numel, 0))
        full = scratch.int16(info.numel).reshape(info.shape)
        # H * 2^l + L is exact in int16 since |q| < 2^8 (forced: int8 could wrap)
        np.left_shift(high, self.l, out=full, dtype=np.int16)
        np.add(full, low, out=full, dtype=np.int16)
        return full

    def _scratch(self) -> _Scratch:
        scratch = getattr(self._scratch_local, "buffers", None)
        if scratch is None:
            scratch = self._scratch_local.buffers = _Scratch()
        return scratch

    def _verify_pad_bits(self, info: TensorInfo, which: Section, blob: memoryview) -> list[str]:
        """The bits after the last code of a packed blob must be zero (§7.3)."""
        width = self.h if which is Section.HIGH else self.l + 1
        used = (info.numel * width) % 8
        if used and len(blob) and blob[-1] >> used:
            return [
                f"{info.name}: {which.name} blob has nonzero pad bits after its last code (§7.3)"
            ]
        return []

    def _verify_padding(self, present: list[Section]) -> list[str]:
        """Padding between header, sections and blobs must be zero (§3.2, §7.1)."""
        problems = []
        gaps: list[tuple[str, int, int]] = []
        sections = self._pre.sections
        gaps.append(("before DATA", self.header_end, sections[Section.DATA].offset))
        gaps.append(("before HIGH", sections[Section.DATA].end, sections[Section.HIGH].offset))
        if Section.LOW in present:
            gaps.append(("before LOW", self.part_end, sections[Section.LOW].offset))
        for which in present:
            cursor = sections[which].offset
            for info in self._header.tensors:
                if which is not Section.DATA and info.kind is Kind.RAW:
                    continue
                ref = {Section.DATA: info.data, Section.HIGH: info.high, Section.LOW: info.low}[
                    which
                ]
                gaps.append((f"in {which.name} before {info.name!r}", cursor, ref.offset))
                cursor = ref.end
        for what, start, end in gaps:
            if end <= start:
                continue
            inside_part = sections[Section.DATA].offset <= start and end <= self.part_end
            inside_low = sections[Section.LOW].offset <= start and Section.LOW in present
            if inside_part or inside_low:
                key = _PART_MAP if inside_part else _LOW_MAP
                data = bytes(self._src.view(key, start, end - start))
            else:  # between header and DATA, or between part_end and LOW: not mapped
                data = self._src.pread(start, end - start)
            if any(data):
                problems.append(f"padding {what} ([{start}, {end})) is not zero")
        return problems


def _dequantize(
    codes: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    shape: tuple[int, ...],
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """w = fl32(fl32(float32(code) * scale[c]) + offset[c]) per output channel c (§7.2), into
    ``out`` (C-contiguous float32 of ``shape``) when given."""
    channels = shape[0]
    per = codes.size // channels if channels else 0
    dst = None if out is None else out.reshape(channels, per)
    # The int -> float32 cast is exact and happens inside the multiply (no extra pass); the
    # product is rounded to float32 here ...
    w = np.multiply(
        codes.reshape(channels, per), scale.reshape(channels, 1), out=dst, dtype=np.float32
    )
    np.add(w, offset.reshape(channels, 1), out=w)  # ... and the sum here: never a fused FMA
    return w.reshape(shape)


class _Scratch:
    """Reusable code buffers (int8 slots and one int16), grown to the largest tensor seen: the
    codes of one tensor live only until it is dequantized, and reusing warm memory saves the
    page faults of a fresh array per tensor."""

    def __init__(self) -> None:
        self._int8: dict[int, np.ndarray] = {}
        self._int16 = np.empty(0, dtype=np.int16)

    def int8(self, count: int, slot: int) -> np.ndarray:
        buf = self._int8.get(slot)
        if buf is None or buf.size < count:
            buf = self._int8[slot] = np.empty(count, dtype=np.int8)
        return buf[:count]

    def int16(self, count: int) -> np.ndarray:
        if self._int16.size < count:
            self._int16 = np.empty(count, dtype=np.int16)
        return self._int16[:count]


def _check_out(out: object, info: TensorInfo) -> None:
    """``read(out=...)`` needs an array it can write the tensor's values into as they are."""
    if not isinstance(out, np.ndarray):
        raise NQError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != info.np_dtype or out.shape != info.shape:
        raise NQError(
            f"out for {info.name!r} must be {info.np_dtype} of shape {info.shape}, got "
            f"{out.dtype} of shape {out.shape}"
        )
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise NQError(f"out for {info.name!r} must be writeable and C-contiguous")


def _zstd_decompress(stored: memoryview, raw_len: int, what: str) -> bytes:
    """One zstd frame whose declared content size is exactly ``raw_len`` (§8)."""
    import zstandard  # lazily: uncompressed files never need it

    try:
        declared = zstandard.frame_content_size(bytes(stored[:18]))
    except zstandard.ZstdError as exc:
        raise LayoutError(f"{what}: not a zstd frame ({exc}) (§8)") from None
    if declared != raw_len:
        raise LayoutError(
            f"{what}: zstd frame declares {declared} content bytes, expected {raw_len} (§8)"
        )
    dobj = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = dobj.decompress(bytes(stored))
    except zstandard.ZstdError as exc:
        raise LayoutError(f"{what}: zstd decompression failed ({exc}) (§8)") from None
    if not dobj.eof or dobj.unused_data or len(out) != raw_len:
        raise LayoutError(
            f"{what}: zstd blob must be exactly one complete frame of {raw_len} bytes (§8)"
        )
    return out


def open(path: str | os.PathLike[str], *, verify: bool = True) -> NQFile:
    """Open a ``.nq`` file lazily (a context manager). ``verify`` checks each blob's CRC when
    it is first read and ``LOW.crc`` when LOW is paged in; the header is always checked."""
    return NQFile(path, verify=verify)
