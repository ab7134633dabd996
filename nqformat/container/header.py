"""Validation of a ``.nq`` preamble and header in the order of spec §11 (steps 1-12).

Everything here works on bytes already read: :func:`parse_header` is given the 256-byte preamble
and a ``read(offset, length)`` callable, checks every size against the real file size with exact
integer arithmetic before it asks for the header, and returns a :class:`Header`. Step 11 (the
INDEX records) has a fast path that checks the whole INDEX as numpy arrays and names no error,
and a record-by-record walk that runs only when the fast path finds a problem: the walk alone
names errors, so their codes and order are those of §11. Both use the same spec rules
(:func:`~nqformat.container.spec.packed_length`, ``max_zstd_length``, ``numel``, ...).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nqformat.container import metajson, spec
from nqformat.container.spec import (
    BlobRef,
    Codec,
    DType,
    IncompatFlag,
    Kind,
    LevelDecl,
    Preamble,
    Section,
    SectionEntry,
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
    TruncatedError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)

__all__ = ["Header", "Levels", "TensorInfo", "check_meta", "parse_header"]

#: ``read(offset, length)``: file bytes (see :class:`~nqformat.container.source.ByteSource`)
ReadFn = Callable[[int, int], bytes]


@dataclass(frozen=True, slots=True)
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
    #: a LEVELS file's NESTED record: its blobs of residual levels 2 .. m-1 (§14.2)
    levels: tuple[BlobRef, ...] = ()

    @property
    def np_dtype(self) -> np.dtype:
        """dtype of ``NQFile.read``: float32 for NESTED, the stored dtype for RAW (BF16 as
        uint16 bit patterns)."""
        return np.dtype(np.float32) if self.kind is Kind.NESTED else self.dtype.np_dtype


@dataclass(frozen=True)
class Levels:
    """The validated level table of a LEVELS file (§14): widths coarsest first, and the
    residual levels R_1 .. R_(m-1) inside LOW."""

    widths: tuple[int, ...]
    residuals: tuple[SectionEntry, ...]
    part_end: int
    refs_offset: int  # where the per-record blob references start in the file (§14.2)

    @property
    def ends(self) -> tuple[int, ...]:
        """The byte end of every level: part_end, then each R_j's end (§14.2)."""
        return (self.part_end, *(r.end for r in self.residuals))


@dataclass(frozen=True)
class Header:
    """A validated preamble and header (§3-§6): everything ``open`` learns before data."""

    preamble: Preamble
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, Any]
    header_end: int
    part_only: bool
    levels: Levels | None = None


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
    decl = _level_decl(pre)
    # step 7: limits, before any arithmetic that a C reader could overflow
    if pre.tensor_count > spec.MAX_TENSOR_COUNT:
        raise LimitError(f"tensor_count {pre.tensor_count} exceeds {spec.MAX_TENSOR_COUNT} (§10)")
    for which, entry in zip(Section, pre.sections, strict=True):
        for what, value in (("offset", entry.offset), ("length", entry.length)):
            if value > spec.MAX_OFFSET:
                raise LimitError(f"{which.name}.{what} {value} exceeds 2^63-1 (§10)")
    levels_len = 0
    if decl is not None:
        for what, value in (("offset", decl.entry.offset), ("length", decl.entry.length)):
            if value > spec.MAX_OFFSET:
                raise LimitError(f"LEVELS.{what} {value} exceeds 2^63-1 (§10, §14.4)")
        levels_len = decl.entry.length
    for what, value in (("part_end", pre.part_end), ("full_end", pre.full_end)):
        if value > spec.MAX_OFFSET:
            raise LimitError(f"{what} {value} exceeds 2^63-1 (§10)")
    meta_len = pre.sections[Section.META].length
    if meta_len > spec.MAX_META_LENGTH:
        raise LimitError(f"META.length {meta_len} exceeds 16 MiB (§10)")
    header_end = spec.header_end(pre.tensor_count, pre.sections[Section.NAMES].length, meta_len)
    header_end += levels_len
    if header_end > spec.MAX_HEADER_END:
        raise LimitError(f"header_end {header_end} exceeds 256 MiB (§10)")
    # step 8: the canonical layout (§3.2)
    expected = spec.canonical_offsets([entry.length for entry in pre.sections], levels_len)
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
    if decl is not None:
        meta_end = pre.sections[Section.META].end
        if decl.entry.offset != meta_end:
            raise LayoutError(f"LEVELS.offset is {decl.entry.offset}, expected {meta_end} (§14.2)")
        want = spec.levels_length(decl.count, pre.tensor_count)
        if decl.entry.length != want:
            raise LayoutError(f"LEVELS.length is {decl.entry.length}, expected {want} (§14.2)")
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


def _level_decl(pre: Preamble) -> LevelDecl | None:
    """Step 6 for a LEVELS file (§14.1): level_count and widths; None without the flag."""
    if not pre.incompat_flags & IncompatFlag.LEVELS:
        return None
    decl = LevelDecl.from_preamble(pre)
    m = decl.count
    if not spec.MIN_LEVELS <= m <= spec.MAX_LEVELS:
        raise InvalidHeaderError(
            f"level_count is {m}, expected {spec.MIN_LEVELS}..{spec.MAX_LEVELS} (§14.1)"
        )
    widths = decl.widths
    increasing = all(a < b for a, b in itertools.pairwise(widths))
    if widths[0] != pre.h or widths[-1] != pre.n or not increasing or any(decl.widths_raw[m:]):
        raise InvalidHeaderError(
            f"level widths {tuple(decl.widths_raw)} (count {m}) must rise strictly from h={pre.h} "
            f"to n={pre.n}, zero after (§14.1)"
        )
    return decl


def _check_header_crcs(pre: Preamble, header: bytes, decl: LevelDecl | None = None) -> None:
    """Step 10: CRCs of INDEX, NAMES, META (and LEVELS, §14.4); ``header`` holds file bytes
    [0, header_end)."""
    entries = [(which.name, pre.sections[which]) for which in Section if which <= Section.META]
    if decl is not None:
        entries.append(("LEVELS", decl.entry))
    for name, entry in entries:
        actual = spec.crc32(header[entry.offset : entry.end])
        if actual != entry.crc:
            raise ChecksumError(f"{name} CRC is {entry.crc:#010x}, computed {actual:#010x} (§3.2)")


def _check_level_entries(pre: Preamble, header: bytes, decl: LevelDecl) -> Levels:
    """Step 10a (§14.4): the residual levels R_1 .. R_(m-1) tile LOW, each 4096-aligned."""
    cursor = pre.sections[Section.LOW].offset
    entries = []
    for j in range(1, decl.count):
        at = decl.entry.offset + (j - 1) * spec.SECTION_ENTRY_SIZE
        entry = SectionEntry.unpack(header[at : at + spec.SECTION_ENTRY_SIZE])
        if any(entry.reserved):
            raise InvalidHeaderError(f"level {j} entry: reserved bytes are not zero (§14.2)")
        for what, value in (("offset", entry.offset), ("length", entry.length)):
            if value > spec.MAX_OFFSET:
                raise LimitError(f"level {j} {what} {value} exceeds 2^63-1 (§14.4)")
        expect = spec.align(cursor, spec.SECTION_ALIGN)
        if entry.offset != expect:
            raise LayoutError(f"level {j} starts at {entry.offset}, expected {expect} (§14.2)")
        cursor = entry.end
        entries.append(entry)
    if cursor != pre.full_end:
        raise LayoutError(f"the last level ends at {cursor}, not full_end {pre.full_end} (§14.2)")
    refs_at = decl.entry.offset + (decl.count - 1) * spec.SECTION_ENTRY_SIZE
    return Levels(decl.widths, tuple(entries), pre.part_end, refs_at)


#: a blob slot of a record: DATA, HIGH, LOW, or "L<j>" for residual level j >= 2 (§14.2)
Slot = Section | str


def _slot_name(slot: Slot) -> str:
    return slot.name if isinstance(slot, Section) else f"level {slot[1:]}"


def _slot_bounds(pre: Preamble, levels: Levels | None) -> dict[Slot, tuple[int, int]]:
    """Where each slot's blobs live: its section, or in a LEVELS file R_1 for LOW and R_j for
    level j (§14.2)."""
    bounds: dict[Slot, tuple[int, int]] = {
        which: (pre.sections[which].offset, pre.sections[which].end)
        for which in (Section.DATA, Section.HIGH, Section.LOW)
    }
    if levels is not None:
        for j, entry in enumerate(levels.residuals, start=1):
            bounds[Section.LOW if j == 1 else f"L{j}"] = (entry.offset, entry.end)
    return bounds


def _slot_width(pre: Preamble, levels: Levels | None, slot: Slot) -> int:
    """Bits per code of a HIGH, LOW or level slot (§7.3, §14.1)."""
    if slot is Section.HIGH:
        return pre.h
    if levels is None:
        return pre.n - pre.h + 1
    j = 1 if slot is Section.LOW else int(str(slot)[1:])
    return levels.widths[j] - levels.widths[j - 1] + 1


def _check_records(
    pre: Preamble, header: bytes, levels: Levels | None = None
) -> tuple[TensorInfo, ...]:
    """Step 11: every INDEX record. The whole INDEX is checked as one array first; only when
    that finds a problem (or a value too large for its 64-bit arithmetic) does the record-by-
    record walk run, and it alone reports errors, so their codes and order are those of §11."""
    fast = _records_vectorised(pre, header, levels)
    return fast if fast is not None else _check_records_each(pre, header, levels)


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


def _records_vectorised(
    pre: Preamble, header: bytes, levels: Levels | None = None
) -> tuple[TensorInfo, ...] | None:
    """Step 11 for the whole INDEX at once: the TensorInfos if every record passes every check
    of :func:`_check_records_each`, else None (never an error: the caller then walks the
    records to report the first problem exactly)."""
    count = pre.tensor_count
    index = pre.sections[Section.INDEX]
    names = pre.sections[Section.NAMES]
    recs = np.frombuffer(header, dtype=spec.RECORD_DTYPE, count=count, offset=index.offset)
    kind, dtype, ndim, dims = recs["kind"], recs["dtype"], recs["ndim"], recs["dims"]
    refs: dict[Slot, np.ndarray] = {
        Section.DATA: recs["data"],
        Section.HIGH: recs["high"],
        Section.LOW: recs["low"],
    }
    m = len(levels.widths) if levels is not None else 2
    if levels is not None:
        table = np.frombuffer(
            header, dtype=spec.BLOB_REF_DTYPE, count=count * (m - 2), offset=levels.refs_offset
        ).reshape(count, m - 2)
        for j in range(2, m):
            refs[f"L{j}"] = table[:, j - 2]
    coded = [slot for slot in refs if slot is not Section.DATA]
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
    for which in coded:
        ref = refs[which][~nested]
        if ref["offset"].any() or ref["length"].any() or ref["crc"].any() or ref["codec"].any():
            return None
    flags_zstd = bool(pre.incompat_flags & IncompatFlag.ZSTD)
    used: dict[Slot, Any] = {Section.DATA: slice(None), **dict.fromkeys(coded, nested)}
    any_zstd = False
    for which, rows in used.items():
        codec = refs[which]["codec"][rows]
        if (codec > Codec.ZSTD).any():
            return None
        any_zstd = any_zstd or bool((codec == Codec.ZSTD).any())
    if any_zstd != flags_zstd:
        return None
    # 11b: element counts: the product of the nonzero dims, each partial product kept <= 2^48
    # (§4, §10), and 0 where a used dim is 0
    if (dims > spec.MAX_NUMEL).any():
        return None
    numel = np.ones(count, dtype=np.uint64)
    for d in np.where(past | (dims == 0), np.uint64(1), dims).T:
        if (numel > spec.MAX_NUMEL // d).any():
            return None
        numel *= d
    numel[((dims == 0) & ~past).any(axis=1)] = 0
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
            spec.params_length(dims[:, 0], m),
            numel * _DTYPE_ITEMSIZE[dtype],
        ),
    }
    for which in coded:
        raw_len[which] = spec.packed_length(numel, np.uint64(_slot_width(pre, levels, which)))
    bounds = _slot_bounds(pre, levels)
    align = np.uint64(spec.BLOB_ALIGN - 1)
    for which, rows in used.items():
        ref = refs[which][rows]
        offset, length, codec = ref["offset"], ref["length"], ref["codec"]
        expect_len = raw_len[which][rows]
        section = SectionEntry(bounds[which][0], bounds[which][1] - bounds[which][0], 0)
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
        limit = spec.max_zstd_length(expect_len[packed])
        ratio = np.uint64(spec.ZSTD_MAX_RATIO)  # ceil division; raw lengths are <= 2^51
        least = np.maximum((expect_len[packed] + ratio - np.uint64(1)) // ratio, np.uint64(1))
        if ((length[packed] < least) | (length[packed] > limit)).any():
            return None
        if (int(end[-1]) if end.size else section.offset) != section.end:
            return None
    infos = _infos(recs, text, numel)
    if levels is None:
        return infos
    extra = [_refs_of(refs[f"L{j}"]) for j in range(2, m)]
    return tuple(
        dataclasses.replace(info, levels=tuple(col[i] for col in extra))
        if info.kind is Kind.NESTED
        else info
        for i, info in enumerate(infos)
    )


def _refs_of(ref: np.ndarray) -> list[BlobRef]:
    """BlobRefs of a column of blob references (all-zero ones share one object)."""
    offsets = ref["offset"].tolist()
    used = [i for i, o in enumerate(offsets) if o]
    columns = [ref[k][used].tolist() for k in ("offset", "length", "crc", "codec")]
    out = [_ZERO_REF] * len(offsets)
    for i, blob in zip(used, _build(BlobRef, *columns, [_NO_RESERVED] * len(used)), strict=True):
        out[i] = blob
    return out


_KINDS = {int(k): k for k in Kind}
_DTYPES = {int(d): d for d in DType}
_NO_RESERVED = bytes(3)  # a BlobRef's reserved bytes, checked zero (§4)
_drain = collections.deque(maxlen=0).extend


def _build(cls: type, *columns: Any) -> list[Any]:
    """Objects of the slotted frozen dataclass ``cls``, one column per field in field order:
    each slot written through its descriptor a column at a time (``map``, in C), not by
    ``__init__``'s ``__setattr__`` per field. Lite0's ~700 INDEX objects took 0.5 ms of a 2 ms
    open that way; a few times less now."""
    objs = [object.__new__(cls) for _ in range(len(columns[0]))]
    for field, column in zip(dataclasses.fields(cls), columns, strict=True):
        _drain(map(cls.__dict__[field.name].__set__, objs, column))
    return objs


def _infos(recs: np.ndarray, names: list[str], numel: np.ndarray) -> tuple[TensorInfo, ...]:
    """TensorInfos of records already checked by :func:`_records_vectorised`."""
    kinds = [_KINDS[k] for k in recs["kind"].tolist()]
    dtypes = [_DTYPES[d] for d in recs["dtype"].tolist()]
    ndims = recs["ndim"].tolist()
    shapes = [tuple(d[:k]) for d, k in zip(recs["dims"].tolist(), ndims, strict=True)]
    # RAW records' high/low references are all zero (checked): they share one object
    refs = [_refs_of(recs[field]) for field in ("data", "high", "low")]
    count = len(names)
    columns = (names, kinds, dtypes, shapes, numel.tolist(), *refs, range(count), [()] * count)
    return tuple(_build(TensorInfo, *columns))


def _check_records_each(
    pre: Preamble, header: bytes, levels: Levels | None = None
) -> tuple[TensorInfo, ...]:
    """Step 11: every INDEX record, in order; the first problem raises its §11 error."""
    index_off = pre.sections[Section.INDEX].offset
    names = pre.sections[Section.NAMES]
    flags_zstd = bool(pre.incompat_flags & IncompatFlag.ZSTD)
    m = len(levels.widths) if levels is not None else 2
    bounds = _slot_bounds(pre, levels)
    cursors: dict[Slot, int] = {slot: start for slot, (start, _end) in bounds.items()}
    name_cursor = 0
    seen: set[bytes] = set()
    any_zstd = False
    infos: list[TensorInfo] = []
    for i in range(pre.tensor_count):
        start = index_off + i * spec.RECORD_SIZE
        rec = TensorRecord.unpack(header[start : start + spec.RECORD_SIZE])
        where = f"record {i}"
        blobs: dict[Slot, BlobRef] = {
            Section.DATA: rec.data,
            Section.HIGH: rec.high,
            Section.LOW: rec.low,
        }
        if levels is not None:
            for j in range(2, m):
                at = levels.refs_offset + (i * (m - 2) + j - 2) * spec.BLOB_REF_SIZE
                blobs[f"L{j}"] = BlobRef.unpack(header[at : at + spec.BLOB_REF_SIZE])
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
        used = tuple(blobs) if kind is Kind.NESTED else (Section.DATA,)
        coded = [b for slot, b in blobs.items() if slot is not Section.DATA]
        if kind is Kind.RAW and not all(b.is_zero() for b in coded):
            raise InvalidHeaderError(f"{where}: a RAW record's high/low references must be zero")
        for which in used:
            codec = blobs[which].codec
            what = _slot_name(which)
            if codec > Codec.ZSTD:
                raise UnsupportedFeatureError(f"{where}: {what} blob codec {codec} (§8)")
            if codec == Codec.ZSTD:
                if not flags_zstd:
                    raise InvalidHeaderError(
                        f"{where}: {what} blob is zstd but incompat flag ZSTD is clear (§3.3)"
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
            what = _slot_name(which)
            expect_off = spec.align(cursors[which], spec.BLOB_ALIGN)
            if isinstance(which, Section):
                widths = levels.widths if levels is not None else ()
                raw_len = spec.raw_blob_length(kind, which, dtype, shape, pre.n, pre.h, widths)
            else:
                raw_len = spec.packed_length(numel, _slot_width(pre, levels, which))
            if ref.offset != expect_off:
                raise LayoutError(
                    f"{where} {name!r}: {what} blob at {ref.offset}, expected {expect_off} (§7.1)"
                )
            if ref.codec == Codec.NONE and ref.length != raw_len:
                raise LayoutError(
                    f"{where} {name!r}: {what} blob is {ref.length} bytes, expected "
                    f"{raw_len} (§4.2)"
                )
            if ref.codec == Codec.ZSTD and not (
                spec.min_zstd_length(raw_len) <= ref.length <= spec.max_zstd_length(raw_len)
            ):
                raise LayoutError(
                    f"{where} {name!r}: zstd {what} blob of {ref.length} bytes for "
                    f"{raw_len} raw bytes: no zstd frame is shorter than 1/{spec.ZSTD_MAX_RATIO} "
                    "of its content, nor much longer (§8)"
                )
            section_end = bounds[which][1]
            if ref.end > section_end:
                raise LayoutError(
                    f"{where} {name!r}: {what} blob ends at {ref.end}, past the section "
                    f"end {section_end} (§7.1)"
                )
            cursors[which] = ref.end
        extra = tuple(blobs[f"L{j}"] for j in range(2, m)) if kind is Kind.NESTED else ()
        infos.append(
            TensorInfo(
                name, kind, dtype, shape, numel, rec.data, rec.high, rec.low, index=i, levels=extra
            )
        )
    if name_cursor != names.length:
        raise LayoutError(f"NAMES is {names.length} bytes but the names use {name_cursor} (§5)")
    for which, cursor in cursors.items():
        section_end = bounds[which][1]
        if cursor != section_end:
            raise LayoutError(
                f"{_slot_name(which)} section ends at {section_end} but its last blob ends at "
                f"{cursor} (§7.1)"
            )
    if flags_zstd and not any_zstd:
        raise InvalidHeaderError("incompat flag ZSTD is set but no blob is compressed (§3.3)")
    return tuple(infos)


#: digits of the largest META integer magnitude, 2^53 (§6): a longer integer is out of range
#: without converting it (int() of a long digit string is quadratic, and refused past 4300)
_META_INT_DIGITS = len(str(spec.MAX_META_INT))


def _meta_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    value = int(text) if digits <= _META_INT_DIGITS else spec.MAX_META_INT + 1
    if abs(value) > spec.MAX_META_INT:
        raise MetadataError(f"META integer {text[:40]}... is outside +-2^53 (§6)")
    return value


def _meta_float(text: str) -> float:
    value = float(text)  # correctly rounded, linear in the length
    if not math.isfinite(value):
        raise MetadataError(f"META number {text[:40]} does not round to a finite binary64 (§6)")
    return value


def check_meta(raw: bytes) -> dict[str, Any]:
    """Step 12: META is a UTF-8 JSON object, no duplicate keys, depth <= 64, at most 2^20
    values and member names, numbers in range (§6). Depth and size are found by a linear scan
    first (:func:`metajson.json_shape`), so the parser never meets a deep nest and never builds
    more than 2^20 objects, whatever the 16 MiB hold."""
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"META is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    shape = metajson.json_shape(raw)
    if shape.depth > spec.MAX_META_DEPTH:
        raise MetadataError(f"META nests deeper than {spec.MAX_META_DEPTH} levels (§6)")
    if shape.values > spec.MAX_META_VALUES:
        raise MetadataError(
            f"META has {shape.values} values and member names, more than {spec.MAX_META_VALUES} "
            "(§6)"
        )

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)  # in C; a dict shorter than the list means a duplicate key
        seen: set[str] = set()
        for key, _ in items if len(obj) != len(items) else ():
            if key in seen:
                raise MetadataError(f"META has duplicate key {key!r} (§6)")
            seen.add(key)
        return obj

    def no_constant(name: str) -> Any:
        raise MetadataError(f"META contains {name}, which is not JSON (RFC 8259)")

    try:
        value = json.loads(
            text,
            object_pairs_hook=pairs,
            parse_constant=no_constant,
            parse_int=_meta_int,
            parse_float=_meta_float,
        )
    except MetadataError:
        raise
    except (ValueError, RecursionError) as exc:
        raise MetadataError(f"META is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MetadataError(f"META must be a JSON object, got {type(value).__name__}")
    return value


def parse_header(preamble: bytes, read: ReadFn, size: int) -> Header:
    """Validate preamble and header (§11 steps 1-12). ``read(offset, length)`` returns file
    bytes; it is called once, for ``[0, header_end)``, after every size was checked."""
    pre = _check_preamble(preamble, size)
    decl = _level_decl(pre)
    header_end = pre.sections[Section.META].end if decl is None else decl.entry.end
    header = bytes(read(0, header_end))
    if len(header) != header_end:
        raise TruncatedError(f"could read only {len(header)} of {header_end} header bytes")
    _check_header_crcs(pre, header, decl)
    levels = None if decl is None else _check_level_entries(pre, header, decl)
    tensors = _check_records(pre, header, levels)
    meta = pre.sections[Section.META]
    metadata = check_meta(header[meta.offset : meta.end])
    part_only = size < pre.full_end
    return Header(pre, tensors, metadata, header_end, part_only=part_only, levels=levels)
