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

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

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
    TruncatedError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)

__all__ = ["Header", "TensorInfo", "parse_header"]

#: ``read(offset, length)``: file bytes (see :class:`~nqformat.container.source.ByteSource`)
ReadFn = Callable[[int, int], bytes]


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
            spec.params_length(dims[:, 0]),
            numel * _DTYPE_ITEMSIZE[dtype],
        ),
        Section.HIGH: spec.packed_length(numel, np.uint64(pre.h)),
        Section.LOW: spec.packed_length(numel, np.uint64(pre.n - pre.h + 1)),
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
        limit = spec.max_zstd_length(expect_len[packed])
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


def parse_header(preamble: bytes, read: ReadFn, size: int) -> Header:
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
