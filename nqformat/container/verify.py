"""Deep verification of an open ``.nq`` file: everything ``open`` does not check up front.

Section and blob CRCs (§3.2, §7.1; step 13 of §11), zero padding between sections and blobs
(§3.2, §7.1) and after the last code of a packed blob (§7.3), decompression (§8), finite
parameters (§7.2) and the range of every recomposed code (§7.3). The bytes of a part-bit-only
file from ``part_end`` on are not checked (§9: ignored). Problems are returned, not raised, so
a tool can list them all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nqformat.container import spec
from nqformat.container.dequant import check_params_finite
from nqformat.container.source import crc_range
from nqformat.container.spec import Kind, Section
from nqformat.errors import NQError

if TYPE_CHECKING:
    from nqformat.container.header import TensorInfo
    from nqformat.container.reader import NQFile

__all__ = ["Problem", "find_problems", "group_by_tensor"]

_BLOBS = (Section.DATA, Section.HIGH, Section.LOW)


@dataclass(frozen=True)
class Problem:
    """One failed check: ``tensor`` is the tensor it concerns (None for sections/padding)."""

    message: str
    tensor: str | None = None

    def __str__(self) -> str:
        return self.message if self.tensor is None else f"{self.tensor}: {self.message}"


def group_by_tensor(problems: Iterable[Problem]) -> list[str]:
    """One line per section problem and one per tensor, naming the tensor once and joining its
    problems with ``; `` (first-seen order), for a report a person reads."""
    lines: list[str | list[str]] = []
    by_tensor: dict[str, list[str]] = {}
    for p in problems:
        if p.tensor is None:
            lines.append(p.message)
        elif p.tensor in by_tensor:
            by_tensor[p.tensor].append(p.message)
        else:
            by_tensor[p.tensor] = [p.message]
            lines.append([p.tensor])
    return [
        line if isinstance(line, str) else f"{line[0]}: {'; '.join(by_tensor[line[0]])}"
        for line in lines
    ]


def find_problems(f: NQFile) -> list[Problem]:
    """Check everything present in ``f`` (LOW too unless the file is part-bit-only)."""
    f._check_open()
    src, pre = f._src, f._pre
    problems: list[Problem] = []
    present = [Section.DATA, Section.HIGH] + ([] if f.part_only else [Section.LOW])
    was_resident = f.low_resident
    if not f.part_only and not was_resident:
        low = pre.sections[Section.LOW]
        src.map(f._LOW_MAP, low.offset, low.end)
    try:
        for which in present:
            entry = pre.sections[which]
            key = f._LOW_MAP if which is Section.LOW else f._PART_MAP
            actual = crc_range(src, key, entry.offset, entry.length)
            if actual != entry.crc:
                problems.append(
                    Problem(
                        f"{which.name} section CRC is {entry.crc:#010x}, computed {actual:#010x}"
                    )
                )
        problems.extend(_padding(f, present))
        qmin, qmax = spec.code_range(f.n)
        for info in f.tensors():
            for which in _BLOBS:
                if which not in present or (which is not Section.DATA and info.kind is Kind.RAW):
                    continue
                try:
                    stored = f._blob(info, which, force_check=True, named=False)
                    if which is Section.DATA and info.kind is Kind.NESTED:
                        check_params_finite(np.frombuffer(stored, "<f4"), "data blob")
                except NQError as exc:
                    problems.append(Problem(str(exc), info.name))
                    continue
                if which is not Section.DATA:
                    problems.extend(_pad_bits(f, info, which, stored))
            if info.kind is Kind.NESTED and Section.LOW in present:
                try:
                    q = f.codes(info.name, "full")
                except NQError:
                    continue  # already reported above
                if q.size and (int(q.min()) < qmin or int(q.max()) > qmax):
                    problems.append(
                        Problem(
                            f"recomposed codes span [{int(q.min())}, {int(q.max())}], outside "
                            f"the {f.n}-bit range (§7.3)",
                            info.name,
                        )
                    )
        if f._header.levels is not None:
            problems.extend(_level_problems(f))
    finally:
        if not f.part_only and not was_resident:
            src.unmap(f._LOW_MAP)
    return problems


def _level_problems(f: NQFile) -> list[Problem]:
    """The residual levels of a LEVELS file that the file reaches (§14.4 step 14): each R_j's
    CRC, its blobs' CRCs and pad bits, the zero padding in and between the R_j, and the range
    of every q_j. Level 1's blobs and the top level's range are checked above when LOW is
    present."""
    lv = f._header.levels
    assert lv is not None
    src = f._src
    problems: list[Problem] = []
    top = len(f.available_levels) - 1
    nested = [t for t in f.tensors() if t.kind is Kind.NESTED]
    cursor = f.part_end
    for j in range(1, top + 1):
        entry = lv.residuals[j - 1]
        key = f"verify-level{j}"
        src.map(key, entry.offset, entry.end)
        try:
            actual = crc_range(src, key, entry.offset, entry.length)
            if actual != entry.crc:
                problems.append(
                    Problem(f"level {j} CRC is {entry.crc:#010x}, computed {actual:#010x}")
                )
            # before R_1 is the padding before LOW (checked above when all of LOW is present)
            gaps = [(f"before level {j}" if j > 1 else "before LOW", cursor, entry.offset)]
            blob_cursor = entry.offset
            width = lv.widths[j] - lv.widths[j - 1] + 1
            for info in nested:
                ref = info.low if j == 1 else info.levels[j - 2]
                gaps.append((f"in level {j} before {info.name!r}", blob_cursor, ref.offset))
                blob_cursor = ref.end
                if j == 1 and not f.part_only:
                    continue  # checked with LOW above
                stored = src.view(key, ref.offset, ref.length)
                if (actual := spec.crc32(stored)) != ref.crc:
                    problems.append(
                        Problem(
                            f"level {j} blob CRC is {ref.crc:#010x}, computed {actual:#010x}",
                            info.name,
                        )
                    )
                    continue
                try:
                    blob = f._residual_blob(info, j)
                except NQError as exc:
                    problems.append(Problem(str(exc), info.name))
                    continue
                used = (info.numel * width) % 8
                if used and len(blob) and blob[-1] >> used:
                    problems.append(
                        Problem(
                            f"level {j} blob has nonzero pad bits after its last code", info.name
                        )
                    )
            if j > 1 or f.part_only:
                for what, start, end in gaps:
                    if end > start and any(src.pread(start, end - start)):
                        problems.append(Problem(f"padding {what} ([{start}, {end})) is not zero"))
        finally:
            src.unmap(key)
        cursor = entry.end
    for j in range(1, top + 1):
        if j == len(lv.widths) - 1 and not f.part_only:
            continue  # the full-bit range is checked above
        qmin, qmax = spec.code_range(lv.widths[j])
        for info in nested:
            try:
                q = f.level_codes(info.name, lv.widths[j])
            except NQError:
                continue  # reported above
            if q.size and (int(q.min()) < qmin or int(q.max()) > qmax):
                problems.append(
                    Problem(
                        f"level {j} codes span [{int(q.min())}, {int(q.max())}], outside the "
                        f"{lv.widths[j]}-bit range (§14.3)",
                        info.name,
                    )
                )
    return problems


def _pad_bits(f: NQFile, info: TensorInfo, which: Section, blob: memoryview) -> list[Problem]:
    """The bits after the last code of a packed blob must be zero (§7.3)."""
    width = f.h if which is Section.HIGH else f.levels[1] - f.levels[0] + 1
    used = (info.numel * width) % 8
    if used and len(blob) and blob[-1] >> used:
        return [
            Problem(f"{which.name} blob has nonzero pad bits after its last code (§7.3)", info.name)
        ]
    return []


def _padding(f: NQFile, present: list[Section]) -> list[Problem]:
    """Padding between header, sections and blobs must be zero (§3.2, §7.1)."""
    problems = []
    gaps: list[tuple[str, int, int]] = []
    sections = f._pre.sections
    gaps.append(("before DATA", f.header_end, sections[Section.DATA].offset))
    gaps.append(("before HIGH", sections[Section.DATA].end, sections[Section.HIGH].offset))
    if Section.LOW in present:
        gaps.append(("before LOW", f.part_end, sections[Section.LOW].offset))
    for which in present:
        cursor = sections[which].offset
        for info in f.tensors():
            if which is not Section.DATA and info.kind is Kind.RAW:
                continue
            ref = {Section.DATA: info.data, Section.HIGH: info.high, Section.LOW: info.low}[which]
            gaps.append((f"in {which.name} before {info.name!r}", cursor, ref.offset))
            cursor = ref.end
    for what, start, end in gaps:
        if end <= start:
            continue
        inside_part = sections[Section.DATA].offset <= start and end <= f.part_end
        inside_low = sections[Section.LOW].offset <= start and Section.LOW in present
        if inside_part or inside_low:
            key = f._PART_MAP if inside_part else f._LOW_MAP
            data = bytes(f._src.view(key, start, end - start))
        else:  # between header and DATA, or between part_end and LOW: not mapped
            data = f._src.pread(start, end - start)
        if any(data):
            problems.append(Problem(f"padding {what} ([{start}, {end})) is not zero"))
    return problems
