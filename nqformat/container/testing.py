"""Tools to forge ``.nq`` bytes for tests and conformance vectors (numpy + stdlib only).

Malformed-input tests need files that are wrong in exactly one way and right in every other,
in particular with valid CRCs, so that a reader's deeper checks are reached. These helpers
rewrite fields of an existing file and recompute the CRCs of the preamble and header sections.
They do not validate anything.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

from nqformat.container import spec
from nqformat.container.spec import BlobRef, Preamble, Section, SectionEntry, TensorRecord
from nqformat.errors import NQError

__all__ = [
    "fix_crcs",
    "preamble_of",
    "record_of",
    "replace_blob",
    "replace_level_blob",
    "replace_level_entry",
    "replace_meta",
    "replace_preamble",
    "replace_record",
    "replace_section",
    "section_bytes",
]


def preamble_of(raw: bytes) -> Preamble:
    return Preamble.unpack(raw[: spec.PREAMBLE_SIZE])


def section_bytes(raw: bytes, which: Section) -> bytes:
    entry = preamble_of(raw).section(which)
    return raw[entry.offset : entry.end]


def record_of(raw: bytes, index: int) -> TensorRecord:
    start = spec.INDEX_OFFSET + index * spec.RECORD_SIZE
    return TensorRecord.unpack(raw[start : start + spec.RECORD_SIZE])


def fix_crcs(raw: bytes | bytearray, *, data: bool = False) -> bytes:
    """Recompute INDEX, NAMES and META CRCs (and DATA/HIGH/LOW with ``data``), then the
    preamble CRC. Sections that lie outside ``raw`` keep their stored CRC."""
    buf = bytearray(raw)
    pre = preamble_of(bytes(buf))
    which_all = list(Section) if data else [Section.INDEX, Section.NAMES, Section.META]
    sections = list(pre.sections)
    for which in which_all:
        entry = sections[which]
        if entry.end <= len(buf):
            crc = spec.crc32(buf[entry.offset : entry.end])
            sections[which] = dataclasses.replace(entry, crc=crc)
    pre = dataclasses.replace(pre, sections=tuple(sections))
    if pre.incompat_flags & spec.IncompatFlag.LEVELS:
        pre = _fix_levels(buf, pre, data)
    buf[: spec.PREAMBLE_SIZE] = pre.pack()
    return bytes(buf)


def _fix_levels(buf: bytearray, pre: Preamble, data: bool) -> Preamble:
    """Recompute the level entries' CRCs (with ``data``) and the LEVELS CRC (§14) in ``buf``;
    returns the preamble with the new LEVELS CRC. Parts outside ``buf`` are left alone."""
    decl = spec.LevelDecl.from_preamble(pre)
    table = decl.entry
    if table.end > len(buf) or not 1 <= decl.count <= spec.MAX_LEVELS:
        return pre
    if data:
        for j in range(decl.count - 1):
            at = table.offset + j * spec.SECTION_ENTRY_SIZE
            entry = SectionEntry.unpack(bytes(buf[at : at + spec.SECTION_ENTRY_SIZE]))
            if entry.end <= len(buf):
                crc = spec.crc32(buf[entry.offset : entry.end])
                buf[at : at + spec.SECTION_ENTRY_SIZE] = dataclasses.replace(entry, crc=crc).pack()
    table = dataclasses.replace(table, crc=spec.crc32(buf[table.offset : table.end]))
    decl = dataclasses.replace(decl, entry=table)
    return dataclasses.replace(pre, reserved=pre.reserved[:14] + decl.pack())


def replace_level_entry(raw: bytes, j: int, **changes: Any) -> bytes:
    """Change the level entry of residual level ``j`` >= 1 in LEVELS (§14.2); CRCs fixed."""
    decl = spec.LevelDecl.from_preamble(preamble_of(raw))
    at = decl.entry.offset + (j - 1) * spec.SECTION_ENTRY_SIZE
    entry = dataclasses.replace(
        SectionEntry.unpack(raw[at : at + spec.SECTION_ENTRY_SIZE]), **changes
    )
    return fix_crcs(raw[:at] + entry.pack() + raw[at + spec.SECTION_ENTRY_SIZE :])


def replace_level_blob(raw: bytes, index: int, j: int, **changes: Any) -> bytes:
    """Change record ``index``'s blob reference of residual level ``j`` >= 2 (§14.2)."""
    pre = preamble_of(raw)
    decl = spec.LevelDecl.from_preamble(pre)
    m = decl.count
    at = decl.entry.offset + (m - 1) * spec.SECTION_ENTRY_SIZE
    at += (index * (m - 2) + j - 2) * spec.BLOB_REF_SIZE
    ref = dataclasses.replace(BlobRef.unpack(raw[at : at + spec.BLOB_REF_SIZE]), **changes)
    return fix_crcs(raw[:at] + ref.pack() + raw[at + spec.BLOB_REF_SIZE :])


def replace_preamble(raw: bytes, *, fix: bool = True, **changes: Any) -> bytes:
    """Change preamble fields (``Preamble`` attribute names); CRCs recomputed unless ``fix``
    is False, in which case the stored preamble CRC is kept."""
    pre = dataclasses.replace(preamble_of(raw), **changes)
    packed = pre.pack()
    if not fix:
        packed = packed[: spec.PREAMBLE_CRC_OFFSET] + struct.pack("<I", pre.crc)
    out = packed + raw[spec.PREAMBLE_SIZE :]
    return fix_crcs(out) if fix else out


def replace_section(raw: bytes, which: Section, **changes: Any) -> bytes:
    """Change one section table entry (``offset``, ``length``, ``crc``); preamble CRC fixed."""
    pre = preamble_of(raw)
    sections = list(pre.sections)
    sections[which] = dataclasses.replace(sections[which], **changes)
    return dataclasses.replace(pre, sections=tuple(sections)).pack() + raw[spec.PREAMBLE_SIZE :]


def replace_record(raw: bytes, index: int, **changes: Any) -> bytes:
    """Change fields of INDEX record ``index``; header CRCs recomputed."""
    rec = dataclasses.replace(record_of(raw, index), **changes)
    start = spec.INDEX_OFFSET + index * spec.RECORD_SIZE
    return fix_crcs(raw[:start] + rec.pack() + raw[start + spec.RECORD_SIZE :])


def replace_blob(raw: bytes, index: int, which: str, **changes: Any) -> bytes:
    """Change the ``which`` ("data", "high", "low") blob reference of record ``index``."""
    rec = record_of(raw, index)
    blob: BlobRef = dataclasses.replace(getattr(rec, which), **changes)
    return replace_record(raw, index, **{which: blob})


def replace_meta(raw: bytes, meta: bytes) -> bytes:
    """Put ``meta`` in place of META, padded with JSON whitespace to the same length (so the
    layout does not move); the new text must not be longer than the old one."""
    entry: SectionEntry = preamble_of(raw).section(Section.META)
    if len(meta) > entry.length:
        raise NQError(f"new META of {len(meta)} bytes is longer than the old {entry.length}")
    meta = meta + b" " * (entry.length - len(meta))
    return fix_crcs(raw[: entry.offset] + meta + raw[entry.end :])
