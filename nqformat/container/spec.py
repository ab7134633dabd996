"""Constants and fixed-width structures of the ``.nq`` format, version 1.0 (``spec/nq-v1.md``).

Every number the format defines lives here once, next to the spec section it comes from. The
dataclasses pack to and unpack from bytes with :mod:`struct` only; they do not validate (the
reader does that, in the order of spec §11), so a malformed file can still be represented and
reported precisely.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nqformat.errors import LimitError

__all__ = [
    "BLOB_ALIGN",
    "BLOB_REF_DTYPE",
    "BLOB_REF_SIZE",
    "DEFAULT_READ_BUDGET",
    "FORMAT_VERSION",
    "INDEX_OFFSET",
    "LEVELS_MINOR",
    "LEVEL_COUNT_OFFSET",
    "LEVEL_WIDTHS_OFFSET",
    "MAGIC",
    "MAX_DIMS",
    "MAX_HEADER_END",
    "MAX_LEVELS",
    "MAX_META_DEPTH",
    "MAX_META_INT",
    "MAX_META_LENGTH",
    "MAX_META_VALUES",
    "MAX_N",
    "MAX_NAME_LENGTH",
    "MAX_NUMEL",
    "MAX_OFFSET",
    "MAX_TENSOR_COUNT",
    "MIN_H",
    "MIN_LEVELS",
    "MIN_N",
    "NESTED_PARAM_ARRAYS",
    "PARAM_ITEMSIZE",
    "PREAMBLE_CRC_OFFSET",
    "PREAMBLE_SIZE",
    "RECORD_DTYPE",
    "RECORD_SIZE",
    "SECTION_ALIGN",
    "SECTION_COUNT",
    "SECTION_ENTRY_SIZE",
    "SECTION_TABLE_OFFSET",
    "VERSION_MAJOR",
    "VERSION_MINOR",
    "ZSTD_MAX_RATIO",
    "ZSTD_MAX_WINDOW",
    "ZSTD_SLACK_BYTES",
    "ZSTD_SLACK_DIVISOR",
    "BlobRef",
    "Codec",
    "DType",
    "IncompatFlag",
    "Kind",
    "LevelDecl",
    "Preamble",
    "Section",
    "SectionEntry",
    "TensorRecord",
    "align",
    "bits_valid",
    "canonical_offsets",
    "code_range",
    "crc32",
    "header_end",
    "level_offsets",
    "levels_length",
    "max_zstd_length",
    "min_zstd_length",
    "numel",
    "packed_length",
    "params_length",
    "raw_blob_length",
]

# --- §3.1 preamble ------------------------------------------------------------------------------
MAGIC = b"\x89NQF\r\n\x1a\n"  # §3.1: high bit, CR LF, SUB, LF catch text-mode mangling
VERSION_MAJOR = 1  # §3.1, §12
VERSION_MINOR = 0  # §3.1, §12
FORMAT_VERSION = (VERSION_MAJOR, VERSION_MINOR)
PREAMBLE_SIZE = 256  # §3.1
PREAMBLE_CRC_OFFSET = 252  # §3.1: CRC-32 of bytes 0..251, stored at 252..255
MIN_N = 2  # §3.1: 2 <= n <= 8
MAX_N = 8  # §3.1
MIN_H = 1  # §3.1: 1 <= h <= n - 1
MIN_LEVELS = 3  # §14.1: a LEVELS file has 3 <= level_count <= 8 (two levels are a 1.0 file)
MAX_LEVELS = 8  # §14.1: one level per width 1..8 at most
LEVELS_MINOR = 1  # §14.1: a writer sets version_minor = 1 in a LEVELS file
LEVEL_COUNT_OFFSET = 232  # §14.1: u8 level_count
LEVEL_WIDTHS_OFFSET = 233  # §14.1: u8 widths[8]

# --- §3.2 section table -------------------------------------------------------------------------
SECTION_TABLE_OFFSET = 64  # §3.2
SECTION_ENTRY_SIZE = 24  # §3.2
SECTION_COUNT = 6  # §3.2
SECTION_ALIGN = 4096  # §3.2: DATA, HIGH and LOW start on 4096-byte boundaries
INDEX_OFFSET = PREAMBLE_SIZE  # §3.2: INDEX.offset = 256

# --- §4 INDEX records ---------------------------------------------------------------------------
RECORD_SIZE = 160  # §4
BLOB_REF_SIZE = 24  # §4
MAX_DIMS = 8  # §4, §10
NESTED_PARAM_ARRAYS = 4  # §4.2, §7.2: scale_full, offset_full, scale_part, offset_part
PARAM_ITEMSIZE = 4  # §4.2: each parameter array is float32[C]

# --- §7.1 blob placement ------------------------------------------------------------------------
BLOB_ALIGN = 64  # §7.1: every blob starts at a multiple of 64 bytes inside its section

# --- §8 compression -----------------------------------------------------------------------------
ZSTD_SLACK_DIVISOR = 128  # §8: stored length <= raw + raw // 128 + 1024
ZSTD_SLACK_BYTES = 1024  # §8
#: §8: no zstd frame regenerates more than 32768 bytes per stored byte (a block of at most
#: 128 KiB costs at least 4 bytes), so a codec-1 blob is at least ceil(raw / 32768) bytes
ZSTD_MAX_RATIO = 32768
#: §8: largest Window_Size a codec-1 frame may declare (for a single-segment frame, its content
#: size): libzstd's default decoding limit, checked from the frame header before allocating
ZSTD_MAX_WINDOW = 1 << 27

# --- §10 limits ---------------------------------------------------------------------------------
MAX_TENSOR_COUNT = 1 << 20  # §10: 1,048,576
MAX_HEADER_END = 256 << 20  # §10: preamble + INDEX + NAMES + META <= 256 MiB
MAX_META_LENGTH = 16 << 20  # §6, §10: 16 MiB
MAX_META_DEPTH = 64  # §6: JSON nesting depth
MAX_META_VALUES = 1 << 20  # §6, §10: values and member names in META
MAX_META_INT = 1 << 53  # §6: largest magnitude of a META integer
MAX_NAME_LENGTH = 1024  # §5, §10
MAX_NUMEL = 1 << 48  # §10
MAX_OFFSET = (1 << 63) - 1  # §10: any offset or length
#: §10 read budget: the Python reader's default bound on the bytes one read allocates; real
#: models' largest tensors are far below it (ResNet-101's largest: 9 MiB of float32)
DEFAULT_READ_BUDGET = 4 << 30


class Kind(enum.IntEnum):
    """Tensor kind, INDEX record byte 12 (§4)."""

    RAW = 0
    NESTED = 1


class DType(enum.IntEnum):
    """Element type codes, INDEX record byte 13 (§4.1). Codes are never reused."""

    F32 = 1
    F16 = 2
    BF16 = 3
    F64 = 4
    I8 = 5
    U8 = 6
    I16 = 7
    I32 = 8
    I64 = 9
    BOOL = 10

    @property
    def itemsize(self) -> int:
        """Bytes per element (§4.1)."""
        return _ITEMSIZE[self]

    @property
    def is_float(self) -> bool:
        """True for the dtypes a NESTED tensor may declare (§4.1)."""
        return self in (DType.F32, DType.F16, DType.BF16, DType.F64)

    @property
    def np_dtype(self) -> np.dtype:
        """The little-endian numpy dtype of the stored elements.

        numpy has no bfloat16, so BF16 elements are exposed as their uint16 bit patterns (the
        high half of a binary32); ``torch.from_numpy(a).view(torch.bfloat16)`` restores them.
        """
        return _NP_DTYPE_OBJ[self]  # built once: readers ask per tensor

    @classmethod
    def from_numpy(cls, dtype: np.dtype) -> DType:
        """The code for a numpy dtype; KeyError where the format has none (e.g. uint16)."""
        dtype = np.dtype(dtype)
        key = "bool" if dtype.kind == "b" else dtype.newbyteorder("<").str
        return _FROM_NP[key]


_ITEMSIZE = {
    DType.F32: 4,
    DType.F16: 2,
    DType.BF16: 2,
    DType.F64: 8,
    DType.I8: 1,
    DType.U8: 1,
    DType.I16: 2,
    DType.I32: 4,
    DType.I64: 8,
    DType.BOOL: 1,
}
_NP_DTYPE = {
    DType.F32: "<f4",
    DType.F16: "<f2",
    DType.BF16: "<u2",
    DType.F64: "<f8",
    DType.I8: "|i1",
    DType.U8: "|u1",
    DType.I16: "<i2",
    DType.I32: "<i4",
    DType.I64: "<i8",
    DType.BOOL: "|b1",
}
_NP_DTYPE_OBJ = {k: np.dtype(v) for k, v in _NP_DTYPE.items()}
# BF16 has no numpy dtype of its own, so it is never inferred from an array.
_FROM_NP = {
    np.dtype(v).str if k is not DType.BOOL else "bool": k
    for k, v in _NP_DTYPE.items()
    if k is not DType.BF16
}


class Codec(enum.IntEnum):
    """Blob codec, blob reference byte 20 (§4, §8)."""

    NONE = 0
    ZSTD = 1


class Section(enum.IntEnum):
    """Section table entries, in their fixed order (§3.2)."""

    INDEX = 0
    NAMES = 1
    META = 2
    DATA = 3
    HIGH = 4
    LOW = 5


class IncompatFlag(enum.IntFlag):
    """``incompat_flags`` bits (§3.3): a reader rejects any bit it does not implement."""

    ZSTD = 1 << 0
    LEVELS = 1 << 1  # §14: several nested levels (version 1.1)

    @classmethod
    def known_mask(cls) -> int:
        """All bits this implementation understands."""
        mask = 0
        for flag in cls:
            mask |= int(flag)
        return mask


def align(x: int, a: int) -> int:
    """Smallest multiple of ``a`` that is >= ``x`` (§2)."""
    return -(-x // a) * a


def crc32(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32/ISO-HDLC as in zlib and PNG (§2); ``value`` continues a running CRC."""
    return zlib.crc32(data, value) & 0xFFFFFFFF


def bits_valid(n: int, h: int) -> bool:
    """True when ``n``/``h`` are a storable bit-width pair: 2 <= n <= 8, 1 <= h <= n - 1 (§3.1)."""
    return MIN_N <= n <= MAX_N and MIN_H <= h <= n - 1


#: The rule :func:`bits_valid` checks, for error messages.
BITS_RULE = f"{MIN_N} <= n <= {MAX_N} and {MIN_H} <= h <= n - 1"


def code_range(width: int) -> tuple[int, int]:
    """Inclusive range of a ``width``-bit two's-complement code (§7.3): H has width h, L has
    width l + 1, the recomposed q has width n."""
    return -(1 << (width - 1)), (1 << (width - 1)) - 1


def packed_length(count: int, width: int) -> int:
    """Bytes of ``count`` codes of ``width`` bits back to back: ceil(count * width / 8) (§7.3)."""
    return (count * width + 7) // 8


def params_length(channels: int, levels: int = 2) -> int:
    """Bytes of a NESTED tensor's DATA blob: four float32 arrays of ``channels`` (§4.2), or
    two per level in a file of ``levels`` > 2 levels (§14.3)."""
    return NESTED_PARAM_ARRAYS // 2 * levels * PARAM_ITEMSIZE * channels


def levels_length(level_count: int, tensor_count: int) -> int:
    """LEVELS.length (§14.2): m - 1 level entries, then m - 2 blob references per record."""
    return SECTION_ENTRY_SIZE * (level_count - 1) + BLOB_REF_SIZE * (level_count - 2) * tensor_count


def level_offsets(low_offset: int, lengths: Sequence[int]) -> tuple[int, ...]:
    """Offsets of the residual levels R_1 ... R_(m-1) inside LOW given their lengths: R_1 at
    LOW.offset, each next one on the next 4096 boundary (§14.2)."""
    offsets = []
    cursor = low_offset
    for length in lengths:
        offset = align(cursor, SECTION_ALIGN)
        offsets.append(offset)
        cursor = offset + length
    return tuple(offsets)


def numel(dims: Sequence[int]) -> int:
    """Exact element count of a shape; LimitError when a dimension, or the product of the
    nonzero dimensions, exceeds 2^48 (§4, §10), whatever the order of dims. (A zero-size tensor
    must still have a shape an array library with 64-bit sizes can represent.)"""
    if any(d > MAX_NUMEL for d in dims):
        raise LimitError(f"dimension in {tuple(dims)} exceeds 2^48 (§10)")
    nonzero = 1
    for d in dims:
        nonzero *= d or 1
    if nonzero > MAX_NUMEL:
        raise LimitError(
            f"shape {tuple(dims)}: its nonzero dimensions multiply to {nonzero}, more than 2^48 "
            "(§4, §10)"
        )
    return 0 if 0 in dims else nonzero


def header_end(tensor_count: int, names_length: int, meta_length: int) -> int:
    """End of preamble + INDEX + NAMES + META, the bytes read before any data (§3.2, §10)."""
    return INDEX_OFFSET + RECORD_SIZE * tensor_count + names_length + meta_length


def canonical_offsets(lengths: Sequence[int], levels: int = 0) -> tuple[int, ...]:
    """The offset of every section (in :class:`Section` order) given their lengths: INDEX at
    256, NAMES and META straight after, DATA, HIGH and LOW each on the next 4096 boundary (§3.2).
    ``levels`` is LEVELS.length (§14.2), which sits between META and DATA."""
    index, names, meta, data, high, _low = lengths
    names_off = INDEX_OFFSET + index
    meta_off = names_off + names
    data_off = align(meta_off + meta + levels, SECTION_ALIGN)
    high_off = align(data_off + data, SECTION_ALIGN)
    low_off = align(high_off + high, SECTION_ALIGN)
    return (INDEX_OFFSET, names_off, meta_off, data_off, high_off, low_off)


def raw_blob_length(
    kind: Kind,
    which: Section,
    dtype: DType,
    dims: tuple[int, ...],
    n: int,
    h: int,
    widths: Sequence[int] = (),
) -> int:
    """Uncompressed length of a blob (§4.2); ``which`` is DATA, HIGH or LOW. ``dims`` must
    already be within the limits (LimitError otherwise, as :func:`numel`). ``widths`` are the
    level widths of a LEVELS file (§14): DATA then holds two arrays per level and LOW the
    level-1 residual."""
    count = numel(dims)
    if kind is Kind.RAW:
        return count * dtype.itemsize if which is Section.DATA else 0
    if which is Section.DATA:
        return params_length(dims[0], max(2, len(widths)))
    if which is Section.HIGH:
        return packed_length(count, h)
    return packed_length(count, (widths[1] if widths else n) - h + 1)


def max_zstd_length(raw_length: int) -> int:
    """Largest stored length a codec-1 blob of ``raw_length`` may have (§8)."""
    return raw_length + raw_length // ZSTD_SLACK_DIVISOR + ZSTD_SLACK_BYTES


def min_zstd_length(raw_length: int) -> int:
    """Smallest stored length a codec-1 blob of ``raw_length`` may have (§8): no zstd frame is
    shorter, so a shorter blob cannot be what it claims."""
    return max(1, -(-raw_length // ZSTD_MAX_RATIO))


# --- fixed-width structures ---------------------------------------------------------------------

_SECTION_ENTRY = struct.Struct("<QQI4s")  # §3.2: offset, length, crc, reserved
_PREAMBLE_HEAD = struct.Struct("<8sHHIQQBB6sQQ8s")  # §3.1 bytes 0..63
_BLOB_REF = struct.Struct("<QQIB3s")  # §4: offset, length, crc, codec, reserved
_RECORD_HEAD = struct.Struct("<QIBBBB8Q")  # §4 bytes 0..79
_ZERO24 = bytes(BLOB_REF_SIZE)

#: §4 blob reference and INDEX record as numpy structured dtypes (the same little-endian layout
#: as the structs above), so that a reader can view the whole INDEX as one array.
BLOB_REF_DTYPE = np.dtype(
    [("offset", "<u8"), ("length", "<u8"), ("crc", "<u4"), ("codec", "u1"), ("reserved", "3u1")]
)
RECORD_DTYPE = np.dtype(
    [
        ("name_offset", "<u8"),
        ("name_length", "<u4"),
        ("kind", "u1"),
        ("dtype", "u1"),
        ("ndim", "u1"),
        ("reserved0", "u1"),
        ("dims", "<u8", (MAX_DIMS,)),
        ("data", BLOB_REF_DTYPE),
        ("high", BLOB_REF_DTYPE),
        ("low", BLOB_REF_DTYPE),
        ("reserved1", "u1", (8,)),
    ]
)

assert _PREAMBLE_HEAD.size == SECTION_TABLE_OFFSET  # internal consistency of this module
assert _SECTION_ENTRY.size == SECTION_ENTRY_SIZE
assert _BLOB_REF.size == BLOB_REF_SIZE
assert _RECORD_HEAD.size + 3 * BLOB_REF_SIZE + 8 == RECORD_SIZE
assert BLOB_REF_DTYPE.itemsize == BLOB_REF_SIZE
assert RECORD_DTYPE.itemsize == RECORD_SIZE


@dataclass(frozen=True)
class SectionEntry:
    """One 24-byte section table entry (§3.2)."""

    offset: int
    length: int
    crc: int
    reserved: bytes = bytes(4)

    @property
    def end(self) -> int:
        return self.offset + self.length

    def pack(self) -> bytes:
        return _SECTION_ENTRY.pack(self.offset, self.length, self.crc, self.reserved)

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> SectionEntry:
        return cls(*_SECTION_ENTRY.unpack(buf))


@dataclass(frozen=True)
class Preamble:
    """The 256-byte preamble (§3.1). ``pack`` computes ``preamble_crc``."""

    tensor_count: int
    n: int
    h: int
    part_end: int
    full_end: int
    sections: tuple[SectionEntry, ...]
    incompat_flags: int = 0
    compat_flags: int = 0
    version_major: int = VERSION_MAJOR
    version_minor: int = VERSION_MINOR
    magic: bytes = MAGIC
    crc: int = 0  # as stored; ignored by pack
    reserved: bytes = field(default=bytes(6 + 8 + 44), repr=False)  # bytes 34..39, 56..63, 208..251

    def section(self, which: Section) -> SectionEntry:
        return self.sections[which]

    def pack(self) -> bytes:
        head = _PREAMBLE_HEAD.pack(
            self.magic,
            self.version_major,
            self.version_minor,
            self.tensor_count,
            self.incompat_flags,
            self.compat_flags,
            self.n,
            self.h,
            self.reserved[0:6],
            self.part_end,
            self.full_end,
            self.reserved[6:14],
        )
        body = head + b"".join(s.pack() for s in self.sections) + self.reserved[14:58]
        return body + struct.pack("<I", crc32(body))

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> Preamble:
        """Parse 256 bytes; checks nothing (the reader validates in §11 order)."""
        (magic, vmaj, vmin, count, incompat, compat, n, h, r1, part_end, full_end, r2) = (
            _PREAMBLE_HEAD.unpack_from(buf, 0)
        )
        sections = tuple(
            SectionEntry.unpack(
                buf[SECTION_TABLE_OFFSET + i * SECTION_ENTRY_SIZE :][:SECTION_ENTRY_SIZE]
            )
            for i in range(SECTION_COUNT)
        )
        table_end = SECTION_TABLE_OFFSET + SECTION_COUNT * SECTION_ENTRY_SIZE
        r3 = bytes(buf[table_end:PREAMBLE_CRC_OFFSET])
        (crc,) = struct.unpack_from("<I", buf, PREAMBLE_CRC_OFFSET)
        return cls(
            tensor_count=count,
            n=n,
            h=h,
            part_end=part_end,
            full_end=full_end,
            sections=sections,
            incompat_flags=incompat,
            compat_flags=compat,
            version_major=vmaj,
            version_minor=vmin,
            magic=magic,
            crc=crc,
            reserved=r1 + r2 + r3,
        )


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A 24-byte blob reference inside an INDEX record (§4)."""

    offset: int = 0
    length: int = 0
    crc: int = 0
    codec: int = Codec.NONE
    reserved: bytes = bytes(3)

    @property
    def end(self) -> int:
        return self.offset + self.length

    def pack(self) -> bytes:
        return _BLOB_REF.pack(self.offset, self.length, self.crc, self.codec, self.reserved)

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> BlobRef:
        return cls(*_BLOB_REF.unpack(buf))

    def is_zero(self) -> bool:
        return self.pack() == _ZERO24


@dataclass(frozen=True)
class TensorRecord:
    """A 160-byte INDEX record (§4). ``kind``/``dtype`` stay plain ints so that invalid codes
    can be parsed and reported."""

    name_offset: int
    name_length: int
    kind: int
    dtype: int
    ndim: int
    dims: tuple[int, ...]  # always 8 entries, as stored
    data: BlobRef
    high: BlobRef = BlobRef()
    low: BlobRef = BlobRef()
    reserved: bytes = bytes(1 + 8)  # byte 15 and bytes 152..159

    @property
    def shape(self) -> tuple[int, ...]:
        return self.dims[: self.ndim]

    def pack(self) -> bytes:
        dims = tuple(self.dims) + (0,) * (MAX_DIMS - len(self.dims))
        head = _RECORD_HEAD.pack(
            self.name_offset,
            self.name_length,
            self.kind,
            self.dtype,
            self.ndim,
            self.reserved[0],
            *dims,
        )
        return head + self.data.pack() + self.high.pack() + self.low.pack() + self.reserved[1:9]

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> TensorRecord:
        """Parse 160 bytes; checks nothing."""
        name_offset, name_length, kind, dtype, ndim, r0, *dims = _RECORD_HEAD.unpack_from(buf, 0)
        base = _RECORD_HEAD.size
        blobs = [
            BlobRef.unpack(buf[base + i * BLOB_REF_SIZE : base + (i + 1) * BLOB_REF_SIZE])
            for i in range(3)
        ]
        tail = bytes(buf[base + 3 * BLOB_REF_SIZE : RECORD_SIZE])
        return cls(
            name_offset,
            name_length,
            kind,
            dtype,
            ndim,
            tuple(dims),
            blobs[0],
            blobs[1],
            blobs[2],
            bytes([r0]) + tail,
        )


#: §14.1: preamble bytes 208..251 in a LEVELS file: entry 6 (LEVELS), level_count, widths[8]
_LEVEL_DECL = struct.Struct("<QQI4sB8s11s")
_LEVEL_DECL_AT = SECTION_TABLE_OFFSET + SECTION_COUNT * SECTION_ENTRY_SIZE  # 208
assert _LEVEL_DECL.size == PREAMBLE_CRC_OFFSET - _LEVEL_DECL_AT
assert _LEVEL_DECL_AT + SECTION_ENTRY_SIZE == LEVEL_COUNT_OFFSET == LEVEL_WIDTHS_OFFSET - 1


@dataclass(frozen=True)
class LevelDecl:
    """The level declaration of a LEVELS file (§14.1): the LEVELS section entry, ``level_count``
    and ``widths`` (8 bytes as stored), kept in the preamble's bytes 208..251."""

    entry: SectionEntry
    count: int
    widths_raw: bytes

    @property
    def widths(self) -> tuple[int, ...]:
        """The declared widths, coarsest first (``count`` of them)."""
        return tuple(self.widths_raw[: self.count])

    def pack(self) -> bytes:
        """The 44 bytes at 208..251 (the last 11 reserved and zero)."""
        e = self.entry
        return _LEVEL_DECL.pack(
            e.offset, e.length, e.crc, e.reserved, self.count, self.widths_raw, bytes(11)
        )

    @classmethod
    def of(cls, entry: SectionEntry, widths: Sequence[int]) -> LevelDecl:
        return cls(entry, len(widths), bytes(widths) + bytes(MAX_LEVELS - len(widths)))

    @classmethod
    def from_preamble(cls, pre: Preamble) -> LevelDecl:
        """Parse bytes 208..251 of ``pre`` (its reserved tail); checks nothing."""
        off, length, crc, res, count, widths, _ = _LEVEL_DECL.unpack(pre.reserved[14:58])
        return cls(SectionEntry(off, length, crc, res), count, widths)
